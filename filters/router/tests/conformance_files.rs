//! Runs the router against the Gateway API conformance case files themselves
//! (`shared/conformance/gateway-api/*.json`, or `$TIDEGATE_CONFORMANCE_DIR`), when present.
//!
//! A small translator stands in for the host: it attaches each HTTPRoute to the Gateway
//! listeners its parentRefs name and resolves backendRefs to clusters `namespace/service:port`
//! (unresolved when the Service is not in the case). Each request is then decided by the router
//! and checked against the expectation with the upstream comparison rules (see the conformance
//! README): status, serving backend, path/host/headers at the backend, response headers, and the
//! redirect's scheme/host/port/path. Weighted cases run their distribution check.
//!
//! The unit tests in `src/decision/tests.rs` transcribe the same cases, so the logic is proven
//! even where the files are absent; this test guards against transcription mistakes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde_json::{Value, json};
use tidegate_router::actions::apply_ops;
use tidegate_router::config::RouterConfig;
use tidegate_router::random::XorShift;
use tidegate_router::{Decision, Request, Router};

const CASES: &[&str] = &[
    "HTTPRoute303Redirect",
    "HTTPRoute307Redirect",
    "HTTPRoute308Redirect",
    "HTTPRouteBackendRequestHeaderModifier",
    "HTTPRouteBackendRequestRedirect",
    "HTTPRouteBackendURLRewrite",
    "HTTPRouteExactPathMatching",
    "HTTPRouteHTTPSListener",
    "HTTPRouteHeaderMatching",
    "HTTPRouteInvalidNonExistentBackendRef",
    "HTTPRouteListenerHostnameMatching",
    "HTTPRouteListenerPortMatching",
    "HTTPRouteMatching",
    "HTTPRouteMethodMatching",
    "HTTPRouteMultipleGateways",
    "HTTPRouteNoBackendRefs",
    "HTTPRouteRedirectHostAndStatus",
    "HTTPRouteRedirectPath",
    "HTTPRouteRedirectPort",
    "HTTPRouteRedirectScheme",
    "HTTPRouteRequestHeaderModifier",
    "HTTPRouteRequestHeaderModifierBackendWeights",
    "HTTPRouteResponseHeaderModifier",
    "HTTPRouteRewriteHost",
    "HTTPRouteSimpleSameNamespace",
    "HTTPRouteWeight",
];

/// What the conformance client puts in `Host` when a case gives none.
const GATEWAY_ADDR: &str = "127.0.0.1:8080";

fn cases_dir() -> PathBuf {
    match std::env::var_os("TIDEGATE_CONFORMANCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/gateway-api"),
    }
}

#[test]
fn conformance_case_files() {
    let dir = cases_dir();
    assert!(
        dir.is_dir(),
        "the Gateway API conformance cases are not at {}: check out the shared conformance data beside the repository or set TIDEGATE_CONFORMANCE_DIR",
        dir.display()
    );
    let mut checked = 0;
    for name in CASES {
        let path = dir.join(format!("{name}.json"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let case: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        checked += run_case(name, &case);
    }
    eprintln!("{checked} conformance requests checked");
    assert!(checked > 100);
}

// === translation (the host's job, reduced to what these cases use) ===

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn of_kind<'a>(manifests: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    manifests.iter().filter(move |m| str_of(m, "kind") == Some(kind))
}

fn translate(manifests: &[Value]) -> RouterConfig {
    let id = |m: &Value| {
        format!(
            "{}/{}",
            m["metadata"]["namespace"].as_str().unwrap_or("default"),
            m["metadata"]["name"].as_str().unwrap_or("")
        )
    };
    let services: BTreeMap<String, Vec<u64>> = of_kind(manifests, "Service")
        .map(|s| {
            (
                id(s),
                s["spec"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["port"].as_u64())
                    .collect(),
            )
        })
        .collect();
    let mut listeners = Vec::new();
    for gw in of_kind(manifests, "Gateway") {
        let gw_id = id(gw);
        for l in gw["spec"]["listeners"].as_array().into_iter().flatten() {
            let mut routes = Vec::new();
            for route in of_kind(manifests, "HTTPRoute") {
                let route_ns = route["metadata"]["namespace"].as_str().unwrap_or("default");
                let attached = route["spec"]["parentRefs"].as_array().into_iter().flatten().any(|p| {
                    let ns = str_of(p, "namespace").unwrap_or(route_ns);
                    format!("{ns}/{}", str_of(p, "name").unwrap_or("")) == gw_id
                        && str_of(p, "sectionName").is_none_or(|s| Some(s) == str_of(l, "name"))
                        && p.get("port").is_none_or(|port| port == &l["port"])
                });
                if attached {
                    routes.push(translate_route(route, route_ns, &services));
                }
            }
            listeners.push(json!({
                "gateway": gw_id, "name": l["name"], "port": l["port"], "protocol": l["protocol"],
                "hostname": l.get("hostname"), "routes": routes,
            }));
        }
    }
    serde_json::from_value(json!({ "listeners": listeners })).expect("translated config parses")
}

fn translate_route(route: &Value, route_ns: &str, services: &BTreeMap<String, Vec<u64>>) -> Value {
    let rules: Vec<Value> = route["spec"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|rule| {
            let backends: Vec<Value> = rule["backendRefs"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| {
                    let ns = str_of(b, "namespace").unwrap_or(route_ns);
                    let svc = format!("{ns}/{}", str_of(b, "name").unwrap_or(""));
                    let port = b["port"].as_u64().unwrap_or(0);
                    let resolved = str_of(b, "kind").is_none_or(|k| k == "Service")
                        && ns == route_ns
                        && services.get(&svc).is_some_and(|ports| ports.contains(&port));
                    json!({
                        "cluster": if resolved { Some(format!("{svc}:{port}")) } else { None },
                        "weight": b.get("weight").cloned().unwrap_or(json!(1)),
                        "filters": b.get("filters").cloned().unwrap_or(json!([])),
                    })
                })
                .collect();
            json!({"matches": rule.get("matches").cloned().unwrap_or(json!([])), "filters": rule.get("filters").cloned().unwrap_or(json!([])), "backends": backends})
        })
        .collect();
    json!({
        "namespace": route_ns,
        "name": route["metadata"]["name"],
        "creationTimestamp": route["metadata"].get("creationTimestamp"),
        "hostnames": route["spec"].get("hostnames").cloned().unwrap_or(json!([])),
        "rules": rules,
    })
}

// === requests and expectations ===

fn request_pairs(req: &Value) -> Vec<(String, Vec<u8>)> {
    let host = str_of(req, "host").filter(|h| !h.is_empty()).unwrap_or(GATEWAY_ADDR);
    let scheme = if str_of(req, "scheme") == Some("https") {
        "https"
    } else {
        "http"
    };
    let mut pairs = vec![
        (
            ":method".to_string(),
            str_of(req, "method").unwrap_or("GET").as_bytes().to_vec(),
        ),
        (":scheme".to_string(), scheme.as_bytes().to_vec()),
        (":authority".to_string(), host.as_bytes().to_vec()),
        (
            ":path".to_string(),
            str_of(req, "path").unwrap_or("/").as_bytes().to_vec(),
        ),
    ];
    for (name, value) in req["headers"].as_object().into_iter().flatten() {
        pairs.push((name.clone(), value.as_str().unwrap_or("").as_bytes().to_vec()));
    }
    pairs
}

fn build(req: &Value) -> Request {
    let port = req["listener_port"].as_u64().and_then(|p| u16::try_from(p).ok());
    Request::new(port, str_of(req, "gateway").map(String::from), request_pairs(req))
}

fn folded(headers: &[(String, Vec<u8>)], name: &str) -> Option<String> {
    let values: Vec<String> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// The service name of a `namespace/service:port` cluster.
fn service(cluster: &str) -> (&str, &str) {
    let (ns, rest) = cluster.split_once('/').unwrap_or(("", cluster));
    (ns, rest.split_once(':').map_or(rest, |(s, _)| s))
}

fn run_case(name: &str, case: &Value) -> usize {
    let config = translate(case["manifests"].as_array().map(Vec::as_slice).unwrap_or_default());
    let (router, _warnings) = Router::new(&config);
    let requests = case["requests"].as_array().cloned().unwrap_or_default();
    let expects = case["expect"].as_array().cloned().unwrap_or_default();
    let mut checked = 0;
    for (req, expect) in requests.iter().zip(&expects) {
        let what = format!("{name} #{}: {} {}", req["id"], req["method"], req["path"]);
        check(&router, req, expect, &what, 0);
        checked += 1;
    }
    for extra in case["extra_checks"].as_array().into_iter().flatten() {
        if str_of(extra, "check") == Some("weighted_distribution") {
            check_distribution(name, &router, &requests, extra);
            checked += 1;
        }
    }
    checked
}

fn check(router: &Router, req: &Value, expect: &Value, what: &str, random: u64) -> Option<String> {
    let statuses: Vec<u64> = expect["status"]
        .as_array()
        .map_or(vec![200], |s| s.iter().filter_map(Value::as_u64).collect());
    match router.decide(&build(req), random) {
        Decision::Reply(reply) => {
            assert!(
                statuses.contains(&u64::from(reply.status)),
                "{what}: got {reply:?}, want {statuses:?}"
            );
            if let Some(redirect) = expect.get("redirect") {
                let location = reply
                    .headers
                    .iter()
                    .find(|(n, _)| n == "location")
                    .map(|(_, v)| v.clone());
                check_redirect(
                    req,
                    redirect,
                    location.as_deref().unwrap_or_else(|| panic!("{what}: no Location")),
                    what,
                );
            }
            None
        }
        Decision::Forward(fwd) => {
            assert!(
                statuses.contains(&200),
                "{what}: forwarded to {fwd:?}, want {statuses:?}"
            );
            let (ns, svc) = service(&fwd.cluster);
            if let Some(backend) = expect.get("backend").filter(|b| !b.is_null()) {
                assert_eq!(Some(ns), str_of(backend, "namespace"), "{what}: backend namespace");
                if let Some(expected) = str_of(backend, "name") {
                    assert!(svc.starts_with(expected), "{what}: served by {svc}, want {expected}");
                }
            }
            let mut at_backend = request_pairs(req);
            apply_ops(&mut at_backend, &fwd.request_ops);
            for (field, header) in [
                ("path_at_backend", ":path"),
                ("host_at_backend", ":authority"),
                ("method_at_backend", ":method"),
            ] {
                if let Some(expected) = str_of(expect, field) {
                    assert_eq!(
                        folded(&at_backend, header).as_deref(),
                        Some(expected),
                        "{what}: {field}"
                    );
                }
            }
            for (header, value) in expect["request_headers_at_backend"].as_object().into_iter().flatten() {
                assert_eq!(
                    folded(&at_backend, header).as_deref(),
                    value.as_str(),
                    "{what}: request header {header}"
                );
            }
            for header in expect["absent_headers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                assert_eq!(
                    folded(&at_backend, header),
                    None,
                    "{what}: request header {header} must be absent"
                );
            }
            let mut response: Vec<(String, Vec<u8>)> = req["backend_set_response_headers"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(n, v)| (n.clone(), v.as_str().unwrap_or("").as_bytes().to_vec()))
                .collect();
            apply_ops(&mut response, &fwd.response_ops);
            for (header, value) in expect["response_headers"].as_object().into_iter().flatten() {
                assert_eq!(
                    folded(&response, header).as_deref(),
                    value.as_str(),
                    "{what}: response header {header}"
                );
            }
            for header in expect["absent_response_headers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                assert_eq!(
                    folded(&response, header),
                    None,
                    "{what}: response header {header} must be absent"
                );
            }
            Some(svc.to_string())
        }
    }
}

/// Upstream's redirect comparison: scheme (default: the request's), host unless null, port
/// (`""` = absent or the scheme's default), path (default: the request path without query).
fn check_redirect(req: &Value, redirect: &Value, location: &str, what: &str) {
    let (scheme, rest) = location
        .split_once("://")
        .unwrap_or_else(|| panic!("{what}: relative Location {location}"));
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| (&rest[..i], &rest[i..]));
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h, p),
        None => (authority, ""),
    };
    let want_scheme = str_of(redirect, "scheme").or(str_of(req, "scheme")).unwrap_or("http");
    assert_eq!(scheme, want_scheme, "{what}: scheme of {location}");
    if let Some(want_host) = str_of(redirect, "host") {
        assert_eq!(host, want_host, "{what}: host of {location}");
    }
    match str_of(redirect, "port").unwrap_or("") {
        "" => assert!(
            port.is_empty() || (scheme == "http" && port == "80") || (scheme == "https" && port == "443"),
            "{what}: port of {location}"
        ),
        want => assert_eq!(port, want, "{what}: port of {location}"),
    }
    let request_path = str_of(req, "path").unwrap_or("/");
    let want_path =
        str_of(redirect, "path").unwrap_or_else(|| request_path.split_once('?').map_or(request_path, |(p, _)| p));
    assert_eq!(path, want_path, "{what}: path of {location}");
}

fn check_distribution(name: &str, router: &Router, requests: &[Value], extra: &Value) {
    let template = requests
        .iter()
        .find(|r| r["id"] == extra["request_template_id"])
        .unwrap_or_else(|| panic!("{name}: no template"));
    let total = extra["total_requests"].as_u64().unwrap_or(500);
    let tolerance = extra["tolerance_abs_fraction"].as_f64().unwrap_or(0.05);
    let expected: BTreeMap<String, f64> = extra["expected_fractions"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0)))
        .collect();
    let mut rng = XorShift::new(0x5eed);
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..total {
        let served = check(router, template, &json!({"status": [200]}), name, rng.next_u64())
            .unwrap_or_else(|| panic!("{name}: not forwarded"));
        *counts.entry(served).or_default() += 1;
    }
    let seen: BTreeSet<&String> = counts.keys().collect();
    for (backend, fraction) in &expected {
        let got = counts.get(backend).copied().unwrap_or(0) as f64 / total as f64;
        assert!(
            (got - fraction).abs() <= tolerance,
            "{name}: {backend} got {got}, want {fraction} (counts {counts:?})"
        );
        if *fraction == 0.0 {
            assert!(!seen.contains(backend), "{name}: {backend} has weight 0 but was seen");
        }
    }
    assert!(
        seen.iter().all(|b| expected.contains_key(*b)),
        "{name}: unexpected backend in {counts:?}"
    );
}
