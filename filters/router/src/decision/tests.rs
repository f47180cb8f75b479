//! Decisions for the Gateway API conformance cases, transcribed from
//! `shared/conformance/gateway-api/HTTPRoute*.json`: each test is one case file, with its
//! HTTPRoute as the host would hand it over (backendRefs resolved to clusters named after the
//! Service) and its request/expectation pairs.
//!
//! A request without a host in the case file is sent with `127.0.0.1:8080`, the gateway address
//! the conformance client would put in `Host`.

use serde_json::{Value, json};

use super::*;
use crate::actions::apply_ops;

const GATEWAY_ADDR: &str = "127.0.0.1:8080";

/// One gateway with one HTTP listener on port 80 and these routes.
fn router(routes: Value) -> Router {
    router_with(
        json!({"listeners": [{"gateway": "gateway-conformance-infra/same-namespace", "name": "http", "port": 80, "protocol": "HTTP", "routes": routes}]}),
    )
}

fn router_with(config: Value) -> Router {
    let config: RouterConfig = serde_json::from_value(config).expect("valid config");
    let (router, warnings) = Router::new(&config);
    assert!(warnings.is_empty(), "{warnings:?}");
    router
}

fn route(name: &str, rules: Value) -> Value {
    json!({"namespace": "gateway-conformance-infra", "name": name, "rules": rules})
}

fn prefix(p: &str) -> Value {
    json!([{"path": {"type": "PathPrefix", "value": p}}])
}

fn backend(cluster: &str) -> Value {
    json!([{"cluster": cluster}])
}

/// A request of a case file.
#[derive(Clone, Copy)]
struct Req<'a> {
    method: &'a str,
    host: &'a str,
    path: &'a str,
    headers: &'a [(&'a str, &'a str)],
}

fn get(path: &str) -> Req<'_> {
    Req {
        method: "GET",
        host: "",
        path,
        headers: &[],
    }
}

impl<'a> Req<'a> {
    fn method(self, method: &'a str) -> Self {
        Req { method, ..self }
    }
    fn host(self, host: &'a str) -> Self {
        Req { host, ..self }
    }
    fn headers(self, headers: &'a [(&'a str, &'a str)]) -> Self {
        Req { headers, ..self }
    }

    fn pairs(&self) -> Vec<(String, Vec<u8>)> {
        let host = if self.host.is_empty() { GATEWAY_ADDR } else { self.host };
        let mut pairs = vec![
            (":method".to_string(), self.method.as_bytes().to_vec()),
            (":scheme".to_string(), b"http".to_vec()),
            (":authority".to_string(), host.as_bytes().to_vec()),
            (":path".to_string(), self.path.as_bytes().to_vec()),
        ];
        pairs.extend(self.headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())));
        pairs
    }

    fn build(&self) -> Request {
        Request::new(Some(80), None, self.pairs())
    }
}

type Pairs<'a> = &'a [(&'a str, &'a str)];

/// The expected outcome of a case.
#[derive(Clone, Default)]
struct Expect<'a> {
    /// 200 = forwarded to `cluster`.
    status: u16,
    cluster: &'a str,
    path: Option<&'a str>,
    host: Option<&'a str>,
    headers: &'a [(&'a str, &'a str)],
    absent: &'a [&'a str],
    location: Option<&'a str>,
    /// (headers the backend sets, expected after the filter, expected absent)
    response: Option<(Pairs<'a>, Pairs<'a>, &'a [&'a str])>,
}

fn to(cluster: &str) -> Expect<'_> {
    Expect {
        status: 200,
        cluster,
        ..Default::default()
    }
}

fn status<'a>(status: u16) -> Expect<'a> {
    Expect {
        status,
        ..Default::default()
    }
}

fn redirect(status: u16, location: &str) -> Expect<'_> {
    Expect {
        status,
        location: Some(location),
        ..Default::default()
    }
}

impl<'a> Expect<'a> {
    fn path(self, path: &'a str) -> Self {
        Expect {
            path: Some(path),
            ..self
        }
    }
    fn host(self, host: &'a str) -> Self {
        Expect {
            host: Some(host),
            ..self
        }
    }
    fn headers(self, headers: &'a [(&'a str, &'a str)]) -> Self {
        Expect { headers, ..self }
    }
    fn absent(self, absent: &'a [&'a str]) -> Self {
        Expect { absent, ..self }
    }
    fn response(self, set_by_backend: Pairs<'a>, expected: Pairs<'a>, absent: &'a [&'a str]) -> Self {
        Expect {
            response: Some((set_by_backend, expected, absent)),
            ..self
        }
    }
}

/// Folds repeated headers as the conformance client does (values joined with `,`).
fn folded(headers: &[(String, Vec<u8>)], name: &str) -> Option<String> {
    let values: Vec<String> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

fn check(router: &Router, cases: &[(Req<'_>, Expect<'_>)]) {
    for (i, (req, expect)) in cases.iter().enumerate() {
        let what = format!("case {i}: {} {} {:?}", req.method, req.path, req.headers);
        let decision = router.decide(&req.build(), 0);
        match decision {
            Decision::Reply(reply) => {
                assert_eq!(reply.status, expect.status, "{what}: {reply:?}");
                let location = reply
                    .headers
                    .iter()
                    .find(|(n, _)| n == "location")
                    .map(|(_, v)| v.as_str());
                assert_eq!(location, expect.location, "{what}");
            }
            Decision::Forward(fwd) => {
                assert_eq!(expect.status, 200, "{what}: forwarded to {fwd:?}");
                assert_eq!(fwd.cluster, expect.cluster, "{what}");
                let mut at_backend = req.pairs();
                apply_ops(&mut at_backend, &fwd.request_ops);
                assert_eq!(
                    folded(&at_backend, ":path").as_deref(),
                    Some(expect.path.unwrap_or(req.path)),
                    "{what}: path at backend"
                );
                if let Some(host) = expect.host {
                    assert_eq!(
                        folded(&at_backend, ":authority").as_deref(),
                        Some(host),
                        "{what}: host at backend"
                    );
                }
                assert_eq!(folded(&at_backend, ":method").as_deref(), Some(req.method), "{what}");
                for (name, value) in expect.headers {
                    assert_eq!(
                        folded(&at_backend, name).as_deref(),
                        Some(*value),
                        "{what}: request header {name}"
                    );
                }
                for name in expect.absent {
                    assert_eq!(
                        folded(&at_backend, name),
                        None,
                        "{what}: request header {name} must be absent"
                    );
                }
                let (set, expected, absent) = expect.response.unwrap_or((&[], &[], &[]));
                let mut response: Vec<(String, Vec<u8>)> = set
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
                    .collect();
                apply_ops(&mut response, &fwd.response_ops);
                for (name, value) in expected {
                    assert_eq!(
                        folded(&response, name).as_deref(),
                        Some(*value),
                        "{what}: response header {name}"
                    );
                }
                for name in absent {
                    assert_eq!(
                        folded(&response, name),
                        None,
                        "{what}: response header {name} must be absent"
                    );
                }
            }
        }
    }
}

#[test]
fn http_route_simple_same_namespace() {
    let r = router(json!([route(
        "gateway-conformance-infra-test",
        json!([{"backends": backend("infra-backend-v1")}])
    )]));
    check(&r, &[(get("/"), to("infra-backend-v1"))]);
    let Decision::Forward(fwd) = r.decide(&get("/").build(), 0) else {
        panic!("must forward")
    };
    assert_eq!(
        fwd.route.as_deref(),
        Some("gateway-conformance-infra/gateway-conformance-infra-test/0")
    );
}

#[test]
fn http_route_matching() {
    let r = router(json!([route(
        "matching",
        json!([
            {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}, {"headers": [{"name": "version", "value": "one"}]}], "backends": backend("infra-backend-v1")},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}, {"headers": [{"name": "version", "value": "two"}]}], "backends": backend("infra-backend-v2")},
        ])
    )]));
    check(
        &r,
        &[
            (get("/"), to("infra-backend-v1")),
            (get("/example"), to("infra-backend-v1")),
            (
                get("/").headers(&[("Version", "one")]),
                to("infra-backend-v1").headers(&[("Version", "one")]),
            ),
            (get("/v2"), to("infra-backend-v2")),
            (get("/v2/example"), to("infra-backend-v2")),
            (
                get("/").headers(&[("Version", "two")]),
                to("infra-backend-v2").headers(&[("Version", "two")]),
            ),
            (get("/v2/"), to("infra-backend-v2")),
            (get("/v2example"), to("infra-backend-v1")),
            (get("/foo/v2/example"), to("infra-backend-v1")),
        ],
    );
}

#[test]
fn http_route_exact_path_matching() {
    let r = router(json!([route(
        "exact-matching",
        json!([
            {"matches": [{"path": {"type": "Exact", "value": "/one"}}], "backends": backend("infra-backend-v1")},
            {"matches": [{"path": {"type": "Exact", "value": "/two"}}], "backends": backend("infra-backend-v2")},
        ])
    )]));
    check(
        &r,
        &[
            (get("/one"), to("infra-backend-v1")),
            (get("/two"), to("infra-backend-v2")),
            (get("/"), status(404)),
            (get("/one/example"), status(404)),
            (get("/two/"), status(404)),
            (get("/Two"), status(404)),
        ],
    );
}

#[test]
fn http_route_header_matching() {
    let h = |pairs: &[(&str, &str)]| {
        json!(
            pairs
                .iter()
                .map(|(n, v)| json!({"name": n, "value": v}))
                .collect::<Vec<_>>()
        )
    };
    let r = router(json!([route(
        "header-matching",
        json!([
            {"matches": [{"headers": h(&[("version", "one")])}], "backends": backend("infra-backend-v1")},
            {"matches": [{"headers": h(&[("version", "two")])}], "backends": backend("infra-backend-v2")},
            {"matches": [{"headers": h(&[("version", "two"), ("color", "orange")])}], "backends": backend("infra-backend-v1")},
            {"matches": [{"headers": h(&[("color", "blue")])}, {"headers": h(&[("color", "green")])}], "backends": backend("infra-backend-v1")},
            {"matches": [{"headers": h(&[("color", "red")])}, {"headers": h(&[("color", "yellow")])}], "backends": backend("infra-backend-v2")},
        ])
    )]));
    let v1 = "infra-backend-v1";
    let v2 = "infra-backend-v2";
    check(
        &r,
        &[
            (get("/").headers(&[("Version", "one")]), to(v1)),
            (get("/").headers(&[("Version", "two")]), to(v2)),
            (get("/").headers(&[("Version", "two"), ("Color", "orange")]), to(v1)),
            (get("/").headers(&[("Version", "two"), ("Color", "blue")]), to(v2)),
            (get("/").headers(&[("Color", "orange")]), status(404)),
            (get("/").headers(&[("Some-Other-Header", "one")]), status(404)),
            (get("/").headers(&[("Color", "blue")]), to(v1)),
            (get("/").headers(&[("Color", "green")]), to(v1)),
            (get("/").headers(&[("Color", "red")]), to(v2)),
            (get("/").headers(&[("Color", "yellow")]), to(v2)),
            (get("/").headers(&[("Color", "purple")]), status(404)),
        ],
    );
}

#[test]
fn http_route_method_matching() {
    let r = router(json!([route(
        "method-matching",
        json!([
            {"matches": [{"method": "POST"}], "backends": backend("infra-backend-v1")},
            {"matches": [{"method": "GET"}], "backends": backend("infra-backend-v2")},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/path1"}, "method": "GET"}], "backends": backend("infra-backend-v1")},
            {"matches": [{"headers": [{"name": "version", "value": "one"}], "method": "PUT"}], "backends": backend("infra-backend-v2")},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/path2"}, "headers": [{"name": "version", "value": "two"}], "method": "POST"}], "backends": backend("infra-backend-v3")},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/path3"}, "method": "PATCH"},
                         {"path": {"type": "PathPrefix", "value": "/path4"}, "headers": [{"name": "version", "value": "three"}], "method": "DELETE"}], "backends": backend("infra-backend-v1")},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/path5"}}], "backends": backend("infra-backend-v1")},
            {"matches": [{"method": "PATCH"}], "backends": backend("infra-backend-v2")},
            {"matches": [{"headers": [{"name": "version", "value": "four"}]}], "backends": backend("infra-backend-v3")},
        ])
    )]));
    let (v1, v2, v3) = ("infra-backend-v1", "infra-backend-v2", "infra-backend-v3");
    check(
        &r,
        &[
            (get("/").method("POST"), to(v1)),
            (get("/"), to(v2)),
            (get("/").method("HEAD"), status(404)),
            (get("/path1"), to(v1)),
            (get("/").method("PUT").headers(&[("version", "one")]), to(v2)),
            (get("/path2").method("POST").headers(&[("version", "two")]), to(v3)),
            (get("/path3").method("PATCH"), to(v1)),
            (get("/path4").method("DELETE").headers(&[("version", "three")]), to(v1)),
            (get("/").method("PUT"), status(404)),
            (get("/path4").method("DELETE"), status(404)),
            (get("/path5").method("PATCH"), to(v1)),
            (get("/").method("PATCH").headers(&[("version", "four")]), to(v2)),
        ],
    );
}

#[test]
fn http_route_query_param_matching() {
    // Upstream HTTPRouteQueryParamMatching (not among the transcribed files): same shape.
    let q = |pairs: &[(&str, &str)]| {
        json!(
            pairs
                .iter()
                .map(|(n, v)| json!({"name": n, "value": v}))
                .collect::<Vec<_>>()
        )
    };
    let r = router(json!([route(
        "query-param-matching",
        json!([
            {"matches": [{"queryParams": q(&[("animal", "whale")])}], "backends": backend("infra-backend-v1")},
            {"matches": [{"queryParams": q(&[("animal", "dolphin")])}], "backends": backend("infra-backend-v2")},
            {"matches": [{"queryParams": q(&[("animal", "dolphin"), ("color", "blue")])}, {"queryParams": q(&[("ANIMAL", "Whale")])}], "backends": backend("infra-backend-v3")},
        ])
    )]));
    let (v1, v2, v3) = ("infra-backend-v1", "infra-backend-v2", "infra-backend-v3");
    check(
        &r,
        &[
            (get("/?animal=whale"), to(v1)),
            (get("/?animal=dolphin"), to(v2)),
            (get("/?animal=dolphin&color=blue"), to(v3)),
            (get("/?ANIMAL=Whale"), to(v3)),
            (get("/?animal=dolphin&color=yellow"), to(v2)),
            (get("/?color=blue"), status(404)),
            (get("/?ANIMAL=whale"), status(404)),
            (get("/"), status(404)),
        ],
    );
}

#[test]
fn http_route_listener_hostname_matching() {
    let l = |name: &str, hostname: &str, cluster: &str| {
        json!({"gateway": "gateway-conformance-infra/httproute-listener-hostname-matching", "name": name, "port": 80, "protocol": "HTTP",
               "hostname": hostname, "routes": [route(&format!("route-{name}"), json!([{"backends": backend(cluster)}]))]})
    };
    let r = router_with(json!({"listeners": [
        l("listener-1", "bar.com", "infra-backend-v1"),
        l("listener-2", "foo.bar.com", "infra-backend-v2"),
        l("listener-3", "*.bar.com", "infra-backend-v3"),
        l("listener-4", "*.foo.com", "infra-backend-v3"),
    ]}));
    check(
        &r,
        &[
            (get("/").host("bar.com"), to("infra-backend-v1").host("bar.com")),
            (get("/").host("foo.bar.com"), to("infra-backend-v2").host("foo.bar.com")),
            (get("/").host("baz.bar.com"), to("infra-backend-v3").host("baz.bar.com")),
            (get("/").host("boo.bar.com"), to("infra-backend-v3").host("boo.bar.com")),
            (
                get("/").host("multiple.prefixes.bar.com"),
                to("infra-backend-v3").host("multiple.prefixes.bar.com"),
            ),
            (
                get("/").host("multiple.prefixes.foo.com"),
                to("infra-backend-v3").host("multiple.prefixes.foo.com"),
            ),
            (get("/").host("foo.com"), status(404)),
            (get("/").host("no.matching.host"), status(404)),
        ],
    );
}

/// The rules of HTTPRouteRequestHeaderModifier, with the filter on the rule or on the backendRef
/// (HTTPRouteBackendRequestHeaderModifier reuses the same requests and expectations).
fn request_header_modifier_rules(on_backend: bool) -> Value {
    let rule = |path: &str, modifier: Value| {
        let filters = json!([{"type": "RequestHeaderModifier", "requestHeaderModifier": modifier}]);
        if on_backend {
            json!({"matches": prefix(path), "backends": [{"cluster": "infra-backend-v1", "filters": filters}]})
        } else {
            json!({"matches": prefix(path), "filters": filters, "backends": backend("infra-backend-v1")})
        }
    };
    json!([
        rule(
            "/set",
            json!({"set": [{"name": "X-Header-Set", "value": "set-overwrites-values"}]})
        ),
        rule(
            "/add",
            json!({"add": [{"name": "X-Header-Add", "value": "add-appends-values"}]})
        ),
        rule("/remove", json!({"remove": ["X-Header-Remove"]})),
        rule(
            "/multiple",
            json!({
            "set": [{"name": "X-Header-Set-1", "value": "header-set-1"}, {"name": "X-Header-Set-2", "value": "header-set-2"}],
            "add": [{"name": "X-Header-Add-1", "value": "header-add-1"}, {"name": "X-Header-Add-2", "value": "header-add-2"}, {"name": "X-Header-Add-3", "value": "header-add-3"}],
            "remove": ["X-Header-Remove-1", "X-Header-Remove-2"]})
        ),
        rule(
            "/case-insensitivity",
            json!({
            "set": [{"name": "X-Header-Set", "value": "header-set"}],
            "add": [{"name": "X-Header-Add", "value": "header-add"}],
            "remove": ["X-Header-Remove"]})
        ),
    ])
}

fn check_request_header_modifier(r: &Router) {
    let v1 = "infra-backend-v1";
    check(
        r,
        &[
            (
                get("/set").headers(&[("Some-Other-Header", "val")]),
                to(v1).headers(&[("Some-Other-Header", "val"), ("X-Header-Set", "set-overwrites-values")]),
            ),
            (
                get("/set").headers(&[("Some-Other-Header", "val"), ("X-Header-Set", "some-other-value")]),
                to(v1).headers(&[("Some-Other-Header", "val"), ("X-Header-Set", "set-overwrites-values")]),
            ),
            (
                get("/add").headers(&[("Some-Other-Header", "val")]),
                to(v1).headers(&[("Some-Other-Header", "val"), ("X-Header-Add", "add-appends-values")]),
            ),
            (
                get("/add").headers(&[("Some-Other-Header", "val"), ("X-Header-Add", "some-other-value")]),
                to(v1).headers(&[
                    ("Some-Other-Header", "val"),
                    ("X-Header-Add", "some-other-value,add-appends-values"),
                ]),
            ),
            (
                get("/remove").headers(&[("X-Header-Remove", "val")]),
                to(v1).absent(&["X-Header-Remove"]),
            ),
            (
                get("/multiple").headers(&[
                    ("X-Header-Set-2", "set-val-2"),
                    ("X-Header-Add-2", "add-val-2"),
                    ("X-Header-Remove-2", "remove-val-2"),
                    ("Another-Header", "another-header-val"),
                ]),
                to(v1)
                    .headers(&[
                        ("X-Header-Set-1", "header-set-1"),
                        ("X-Header-Set-2", "header-set-2"),
                        ("X-Header-Add-1", "header-add-1"),
                        ("X-Header-Add-2", "add-val-2,header-add-2"),
                        ("X-Header-Add-3", "header-add-3"),
                        ("Another-Header", "another-header-val"),
                    ])
                    .absent(&["X-Header-Remove-1", "X-Header-Remove-2"]),
            ),
            (
                get("/case-insensitivity").headers(&[
                    ("x-header-set", "original-val-set"),
                    ("x-header-add", "original-val-add"),
                    ("x-header-remove", "original-val-remove"),
                    ("Another-Header", "another-header-val"),
                ]),
                to(v1)
                    .headers(&[
                        ("X-Header-Set", "header-set"),
                        ("X-Header-Add", "original-val-add,header-add"),
                        ("Another-Header", "another-header-val"),
                    ])
                    .absent(&["x-header-remove", "X-Header-Remove"]),
            ),
        ],
    );
}

#[test]
fn http_route_request_header_modifier() {
    check_request_header_modifier(&router(json!([route(
        "request-header-modifier",
        request_header_modifier_rules(false)
    )])));
}

#[test]
fn http_route_backend_request_header_modifier() {
    check_request_header_modifier(&router(json!([route(
        "request-header-modifier",
        request_header_modifier_rules(true)
    )])));
}

#[test]
fn http_route_response_header_modifier() {
    let rule = |path: &str, filters: Value| json!({"matches": prefix(path), "filters": filters, "backends": backend("infra-backend-v1")});
    let resp = |modifier: Value| json!([{"type": "ResponseHeaderModifier", "responseHeaderModifier": modifier}]);
    let r = router(json!([route(
        "response-header-modifier",
        json!([
            rule(
                "/set",
                resp(json!({"set": [{"name": "X-Header-Set", "value": "set-overwrites-values"}]}))
            ),
            rule(
                "/add",
                resp(json!({"add": [{"name": "X-Header-Add", "value": "add-appends-values"}]}))
            ),
            rule("/remove", resp(json!({"remove": ["X-Header-Remove"]}))),
            rule(
                "/multiple",
                resp(json!({
            "set": [{"name": "X-Header-Set-1", "value": "header-set-1"}, {"name": "X-Header-Set-2", "value": "header-set-2"}],
            "add": [{"name": "X-Header-Add-1", "value": "header-add-1"}, {"name": "X-Header-Add-2", "value": "header-add-2"}, {"name": "X-Header-Add-3", "value": "header-add-3"}],
            "remove": ["X-Header-Remove-1", "X-Header-Remove-2"]}))
            ),
            rule(
                "/case-insensitivity",
                resp(json!({
            "set": [{"name": "X-Header-Set", "value": "header-set"}],
            "add": [{"name": "X-Header-Add", "value": "header-add"}, {"name": "x-lowercase-add", "value": "lowercase-add"},
                    {"name": "x-Mixedcase-ADD-1", "value": "mixedcase-add-1"}, {"name": "X-mixeDcase-add-2", "value": "mixedcase-add-2"},
                    {"name": "X-UPPERCASE-ADD", "value": "uppercase-add"}],
            "remove": ["X-Header-Remove"]}))
            ),
            rule(
                "/response-and-request-header-modifiers",
                json!([
                    {"type": "ResponseHeaderModifier", "responseHeaderModifier": {
                        "set": [{"name": "X-Header-Set-1", "value": "header-set-1"}, {"name": "X-Header-Set-2", "value": "header-set-2"}],
                        "add": [{"name": "X-Header-Add-1", "value": "header-add-1"}, {"name": "X-Header-Add-2", "value": "header-add-2"}],
                        "remove": ["X-Header-Remove-1", "X-Header-Remove-2"]}},
                    {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                        "set": [{"name": "X-Header-Set", "value": "set-overwrites-values"}],
                        "add": [{"name": "X-Header-Add", "value": "header-val-1"}, {"name": "X-Header-Add-Append", "value": "header-val-2"}],
                        "remove": ["X-Header-Remove"]}},
                ])
            ),
        ])
    )]));
    let v1 = "infra-backend-v1";
    check(
        &r,
        &[
            (
                get("/set"),
                to(v1).response(
                    &[("Some-Other-Header", "val")],
                    &[("Some-Other-Header", "val"), ("X-Header-Set", "set-overwrites-values")],
                    &[],
                ),
            ),
            (
                get("/set"),
                to(v1).response(
                    &[("Some-Other-Header", "val"), ("X-Header-Set", "some-other-value")],
                    &[("Some-Other-Header", "val"), ("X-Header-Set", "set-overwrites-values")],
                    &[],
                ),
            ),
            (
                get("/add"),
                to(v1).response(
                    &[("Some-Other-Header", "val")],
                    &[("Some-Other-Header", "val"), ("X-Header-Add", "add-appends-values")],
                    &[],
                ),
            ),
            (
                get("/add"),
                to(v1).response(
                    &[("Some-Other-Header", "val"), ("X-Header-Add", "some-other-value")],
                    &[
                        ("Some-Other-Header", "val"),
                        ("X-Header-Add", "some-other-value,add-appends-values"),
                    ],
                    &[],
                ),
            ),
            (
                get("/remove"),
                to(v1).response(&[("X-Header-Remove", "val")], &[], &["X-Header-Remove"]),
            ),
            (
                get("/multiple"),
                to(v1).response(
                    &[
                        ("X-Header-Set-2", "set-val-2"),
                        ("X-Header-Add-2", "add-val-2"),
                        ("X-Header-Remove-2", "remove-val-2"),
                        ("Another-Header", "another-header-val"),
                        ("X-Header-Remove-1", "val"),
                    ],
                    &[
                        ("X-Header-Set-1", "header-set-1"),
                        ("X-Header-Set-2", "header-set-2"),
                        ("X-Header-Add-1", "header-add-1"),
                        ("X-Header-Add-2", "add-val-2,header-add-2"),
                        ("X-Header-Add-3", "header-add-3"),
                        ("Another-Header", "another-header-val"),
                    ],
                    &["X-Header-Remove-1", "X-Header-Remove-2"],
                ),
            ),
            (
                get("/case-insensitivity"),
                to(v1).response(
                    &[
                        ("x-header-set", "original-val-set"),
                        ("x-header-add", "original-val-add"),
                        ("x-header-remove", "original-val-remove"),
                        ("Another-Header", "another-header-val"),
                    ],
                    &[
                        ("X-Header-Set", "header-set"),
                        ("X-Header-Add", "original-val-add,header-add"),
                        ("X-Lowercase-Add", "lowercase-add"),
                        ("X-Mixedcase-Add-1", "mixedcase-add-1"),
                        ("X-Mixedcase-Add-2", "mixedcase-add-2"),
                        ("X-Uppercase-Add", "uppercase-add"),
                        ("Another-Header", "another-header-val"),
                    ],
                    &["x-header-remove", "X-Header-Remove"],
                ),
            ),
            (
                get("/response-and-request-header-modifiers").headers(&[
                    ("X-Header-Remove", "remove-val"),
                    ("X-Header-Add-Append", "append-val-1"),
                    ("X-Header-Echo", "echo"),
                ]),
                to(v1)
                    .headers(&[
                        ("X-Header-Add", "header-val-1"),
                        ("X-Header-Set", "set-overwrites-values"),
                        ("X-Header-Add-Append", "append-val-1,header-val-2"),
                        ("X-Header-Echo", "echo"),
                    ])
                    .absent(&["X-Header-Remove"])
                    .response(
                        &[
                            ("X-Header-Set-2", "set-val-2"),
                            ("X-Header-Add-2", "add-val-2"),
                            ("X-Header-Remove-2", "remove-val-2"),
                            ("Another-Header", "another-header-val"),
                            ("X-Header-Remove-1", "remove-val-1"),
                            ("X-Header-Echo", "echo"),
                        ],
                        &[
                            ("X-Header-Set-1", "header-set-1"),
                            ("X-Header-Set-2", "header-set-2"),
                            ("X-Header-Add-1", "header-add-1"),
                            ("X-Header-Add-2", "add-val-2,header-add-2"),
                            ("Another-Header", "another-header-val"),
                            ("X-Header-Echo", "echo"),
                        ],
                        &["X-Header-Remove-1", "X-Header-Remove-2"],
                    ),
            ),
        ],
    );
}

fn redirect_rule(path: &str, redirect: Value) -> Value {
    json!({"matches": prefix(path), "filters": [{"type": "RequestRedirect", "requestRedirect": redirect}]})
}

#[test]
fn http_route_redirect_host_and_status() {
    let r = router(json!([route(
        "redirect-host-and-status",
        json!([
            redirect_rule("/hostname-redirect", json!({"hostname": "example.org"})),
            redirect_rule(
                "/host-and-status",
                json!({"statusCode": 301, "hostname": "example.org"})
            ),
        ])
    )]));
    check(
        &r,
        &[
            (
                get("/hostname-redirect"),
                redirect(302, "http://example.org/hostname-redirect"),
            ),
            (
                get("/host-and-status"),
                redirect(301, "http://example.org/host-and-status"),
            ),
        ],
    );
}

#[test]
fn http_route_redirect_path() {
    let pfx = |r: &str| json!({"type": "ReplacePrefixMatch", "replacePrefixMatch": r});
    let full = |r: &str| json!({"type": "ReplaceFullPath", "replaceFullPath": r});
    let r = router(json!([route(
        "redirect-path",
        json!([
            redirect_rule("/original-prefix", json!({"path": pfx("/replacement-prefix")})),
            redirect_rule("/full", json!({"path": full("/full-path-replacement")})),
            redirect_rule(
                "/path-and-host",
                json!({"hostname": "example.org", "path": pfx("/replacement-prefix")})
            ),
            redirect_rule(
                "/path-and-status",
                json!({"path": pfx("/replacement-prefix"), "statusCode": 301})
            ),
            redirect_rule(
                "/full-path-and-host",
                json!({"hostname": "example.org", "path": full("/replacement-full")})
            ),
            redirect_rule(
                "/full-path-and-status",
                json!({"path": full("/replacement-full"), "statusCode": 301})
            ),
        ])
    )]));
    check(
        &r,
        &[
            (
                get("/original-prefix/lemon"),
                redirect(302, "http://127.0.0.1/replacement-prefix/lemon"),
            ),
            (
                get("/full/path/original"),
                redirect(302, "http://127.0.0.1/full-path-replacement"),
            ),
            (
                get("/path-and-host"),
                redirect(302, "http://example.org/replacement-prefix"),
            ),
            (
                get("/path-and-status"),
                redirect(301, "http://127.0.0.1/replacement-prefix"),
            ),
            (
                get("/full-path-and-host"),
                redirect(302, "http://example.org/replacement-full"),
            ),
            (
                get("/full-path-and-status"),
                redirect(301, "http://127.0.0.1/replacement-full"),
            ),
            // Not upstream: the query string survives a redirect, as with Envoy.
            (
                get("/original-prefix/lemon?x=1"),
                redirect(302, "http://127.0.0.1/replacement-prefix/lemon?x=1"),
            ),
        ],
    );
}

#[test]
fn http_route_redirect_port() {
    let r = router(json!([route(
        "redirect-port",
        json!([
            redirect_rule("/port", json!({"port": 8083})),
            redirect_rule("/port-and-host", json!({"hostname": "example.org", "port": 8083})),
            redirect_rule("/port-and-status", json!({"port": 8083, "statusCode": 301})),
            redirect_rule(
                "/port-and-host-and-status",
                json!({"port": 8083, "hostname": "example.org", "statusCode": 302})
            ),
        ])
    )]));
    check(
        &r,
        &[
            (get("/port"), redirect(302, "http://127.0.0.1:8083/port")),
            (
                get("/port-and-host"),
                redirect(302, "http://example.org:8083/port-and-host"),
            ),
            (
                get("/port-and-status"),
                redirect(301, "http://127.0.0.1:8083/port-and-status"),
            ),
            (
                get("/port-and-host-and-status"),
                redirect(302, "http://example.org:8083/port-and-host-and-status"),
            ),
        ],
    );
}

#[test]
fn http_route_redirect_scheme() {
    let r = router(json!([route(
        "redirect-scheme",
        json!([
            redirect_rule("/scheme", json!({"scheme": "https"})),
            redirect_rule(
                "/scheme-and-host",
                json!({"hostname": "example.org", "scheme": "https"})
            ),
            redirect_rule("/scheme-and-status", json!({"scheme": "https", "statusCode": 301})),
            redirect_rule(
                "/scheme-and-host-and-status",
                json!({"scheme": "https", "statusCode": 302, "hostname": "example.org"})
            ),
        ])
    )]));
    check(
        &r,
        &[
            (get("/scheme"), redirect(302, "https://127.0.0.1/scheme")),
            (
                get("/scheme-and-host"),
                redirect(302, "https://example.org/scheme-and-host"),
            ),
            (
                get("/scheme-and-status"),
                redirect(301, "https://127.0.0.1/scheme-and-status"),
            ),
            (
                get("/scheme-and-host-and-status"),
                redirect(302, "https://example.org/scheme-and-host-and-status"),
            ),
        ],
    );
}

#[test]
fn http_route_303_and_backend_request_redirect() {
    let r = router(json!([
        route(
            "303-redirect",
            json!([redirect_rule("/see-other", json!({"statusCode": 303}))])
        ),
        route(
            "backend-request-redirect",
            json!([
                {"matches": prefix("/full"), "backends": [{"cluster": "infra-backend-v1", "filters": [
                    {"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/redirected-full"}}}]}]},
                {"matches": prefix("/prefix"), "backends": [{"cluster": "infra-backend-v1", "filters": [
                    {"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/redirected-prefix"}}}]}]},
            ])
        ),
    ]));
    check(
        &r,
        &[
            (
                get("/see-other").method("POST"),
                redirect(303, "http://127.0.0.1/see-other"),
            ),
            (get("/full/original"), redirect(302, "http://127.0.0.1/redirected-full")),
            (
                get("/prefix/original"),
                redirect(302, "http://127.0.0.1/redirected-prefix/original"),
            ),
        ],
    );
}

#[test]
fn http_route_rewrite_host_and_backend_url_rewrite() {
    let rewrite = |v: Value| json!({"type": "URLRewrite", "urlRewrite": v});
    let r = router(json!([
        {"namespace": "gateway-conformance-infra", "name": "rewrite-host", "hostnames": ["rewrite.example"], "rules": [
            {"matches": prefix("/one"), "filters": [rewrite(json!({"hostname": "one.example.org"}))], "backends": backend("infra-backend-v1")},
            {"filters": [rewrite(json!({"hostname": "example.org"}))], "backends": backend("infra-backend-v2")},
            {"matches": prefix("/rewrite-host-and-modify-headers"), "filters": [
                rewrite(json!({"hostname": "test.example.org"})),
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {
                    "set": [{"name": "X-Header-Set", "value": "set-overwrites-values"}],
                    "add": [{"name": "X-Header-Add", "value": "header-val-1"}, {"name": "X-Header-Add-Append", "value": "header-val-2"}],
                    "remove": ["X-Header-Remove"]}}], "backends": backend("infra-backend-v2")},
        ]},
        route("backend-url-rewrite", json!([
            {"matches": prefix("/full"), "backends": [{"cluster": "infra-backend-v1", "filters": [
                rewrite(json!({"path": {"type": "ReplaceFullPath", "replaceFullPath": "/rewritten-full"}}))]}]},
            {"matches": prefix("/prefix"), "backends": [{"cluster": "infra-backend-v1", "filters": [
                rewrite(json!({"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/rewritten-prefix"}}))]}]},
        ])),
    ]));
    check(
        &r,
        &[
            (
                get("/one").host("rewrite.example"),
                to("infra-backend-v1").host("one.example.org"),
            ),
            (
                get("/two").host("rewrite.example"),
                to("infra-backend-v2").host("example.org"),
            ),
            (
                get("/rewrite-host-and-modify-headers")
                    .host("rewrite.example")
                    .headers(&[
                        ("X-Header-Remove", "remove-val"),
                        ("X-Header-Add-Append", "append-val-1"),
                    ]),
                to("infra-backend-v2")
                    .host("test.example.org")
                    .headers(&[
                        ("X-Header-Add", "header-val-1"),
                        ("X-Header-Add-Append", "append-val-1,header-val-2"),
                        ("X-Header-Set", "set-overwrites-values"),
                    ])
                    .absent(&["X-Header-Remove"]),
            ),
            (get("/full/original"), to("infra-backend-v1").path("/rewritten-full")),
            (
                get("/prefix/original"),
                to("infra-backend-v1").path("/rewritten-prefix/original"),
            ),
            (
                get("/prefix/original?q=1"),
                to("infra-backend-v1").path("/rewritten-prefix/original?q=1"),
            ),
        ],
    );
}

#[test]
fn http_route_no_backend_refs_and_unresolved_backend() {
    let r = router(json!([
        route(
            "omitted-backendrefs",
            json!([
                {"matches": [{"path": {"type": "Exact", "value": "/omitted-no-forward"}}]},
                {"matches": [{"path": {"type": "Exact", "value": "/empty-no-forward"}}], "backends": []},
                {"matches": prefix("/"), "backends": backend("infra-backend-v1")},
            ])
        ),
        // HTTPRouteInvalidNonExistentBackendRef: the host passes the backendRef unresolved.
        route(
            "invalid-nonexistent-backend-ref",
            json!([{"matches": prefix("/nonexistent"), "backends": [{"weight": 1}]}])
        ),
        route(
            "zero-weights",
            json!([{"matches": prefix("/zero"), "backends": [{"cluster": "infra-backend-v1", "weight": 0}]}])
        ),
    ]));
    check(
        &r,
        &[
            (get("/forward"), to("infra-backend-v1")),
            (get("/omitted-no-forward"), status(500)),
            (get("/empty-no-forward"), status(500)),
            (get("/nonexistent"), status(500)),
            (get("/zero"), status(500)),
        ],
    );
}

#[test]
fn http_route_weight_distribution() {
    // HTTPRouteWeight: 500 requests, each backend within ±0.05 of 0.7 / 0.3 / 0.
    let r = router(json!([route(
        "weighted-backends",
        json!([{"backends": [
        {"cluster": "infra-backend-v1", "weight": 70}, {"cluster": "infra-backend-v2", "weight": 30}, {"cluster": "infra-backend-v3", "weight": 0}]}])
    )]));
    let mut rng = crate::random::XorShift::new(7);
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    let total = 500;
    for _ in 0..total {
        let Decision::Forward(fwd) = r.decide(&get("/").build(), rng.next_u64()) else {
            panic!("must forward")
        };
        *counts.entry(fwd.cluster).or_default() += 1;
    }
    let frac = |c: &str| counts.get(c).copied().unwrap_or(0) as f64 / total as f64;
    assert!((frac("infra-backend-v1") - 0.7).abs() <= 0.05, "{counts:?}");
    assert!((frac("infra-backend-v2") - 0.3).abs() <= 0.05, "{counts:?}");
    assert_eq!(frac("infra-backend-v3"), 0.0, "{counts:?}");
}

#[test]
fn backend_filters_follow_the_chosen_backend() {
    // HTTPRouteRequestHeaderModifierBackendWeights: the header names the backend that got it.
    let set = |v: &str| json!([{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "Backend", "value": v}]}}]);
    let r = router(json!([route(
        "request-header-modifier-backend-weights",
        json!([{"backends": [
        {"cluster": "infra-backend-v1", "weight": 10, "filters": set("infra-backend-v1")},
        {"cluster": "infra-backend-v2", "weight": 10, "filters": set("infra-backend-v2")}]}])
    )]));
    let mut rng = crate::random::XorShift::new(3);
    for _ in 0..100 {
        let Decision::Forward(fwd) = r.decide(&get("/").build(), rng.next_u64()) else {
            panic!("must forward")
        };
        let mut headers = get("/").pairs();
        apply_ops(&mut headers, &fwd.request_ops);
        assert_eq!(folded(&headers, "backend"), Some(fwd.cluster.clone()));
    }
}

#[test]
fn https_listener_redirect_defaults() {
    // Without :scheme the listener protocol decides; 443 is left out of the Location.
    let r = router_with(
        json!({"listeners": [{"gateway": "g/g", "name": "https", "port": 443, "protocol": "HTTPS", "routes": [
        route("r", json!([redirect_rule("/", json!({"hostname": "example.org"}))]))]}]}),
    );
    let req = Request::new(
        Some(443),
        None,
        vec![
            (":path".into(), b"/x".to_vec()),
            (":authority".into(), b"h.test".to_vec()),
        ],
    );
    let Decision::Reply(reply) = r.decide(&req, 0) else {
        panic!("must redirect")
    };
    assert_eq!(
        reply.headers,
        vec![("location".to_string(), "https://example.org/x".to_string())]
    );
}

#[test]
fn hostile_input_never_panics() {
    let r = router(json!([route(
        "r",
        json!([
            {"matches": [{"path": {"type": "RegularExpression", "value": "/a.*"}, "headers": [{"type": "RegularExpression", "name": "x", "value": ".*"}],
                          "queryParams": [{"name": "q", "value": "v"}]}],
             "filters": [{"type": "URLRewrite", "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/b"}}}],
             "backends": backend("c")},
            redirect_rule("/r", json!({"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/s"}})),
        ])
    )]));
    let huge = vec![b'a'; 1 << 20];
    let inputs: Vec<Vec<(String, Vec<u8>)>> = vec![
        vec![],
        vec![
            (":path".into(), b"\xff\xfe?q=v%zz%".to_vec()),
            ("x".into(), b"\x00\xff".to_vec()),
        ],
        vec![
            (":path".into(), [b"/a".as_slice(), &huge, b"?q=v"].concat()),
            ("x".into(), huge.clone()),
        ],
        vec![
            (":path".into(), b"/r/\xe2\x82".to_vec()),
            (":authority".into(), b"[::1".to_vec()),
            (":scheme".into(), b"\xff".to_vec()),
        ],
        vec![
            (":path".into(), b"?".to_vec()),
            (":authority".into(), b":::@@@:".to_vec()),
            (":method".into(), huge.clone()),
        ],
    ];
    for pairs in inputs {
        for port in [None, Some(80), Some(0), Some(u16::MAX)] {
            let _ = r.decide(&Request::new(port, Some("\u{0}".into()), pairs.clone()), u64::MAX);
        }
    }
    let req = Request::new(
        Some(80),
        None,
        vec![
            (":path".into(), b"/r/\xe2\x82 x".to_vec()),
            (":authority".into(), b"h".to_vec()),
        ],
    );
    let Decision::Reply(reply) = r.decide(&req, 0) else {
        panic!("must redirect")
    };
    assert_eq!(reply.headers[0].1, "http://h/s/%E2%82%20x");
}

#[test]
fn invalid_and_empty_configurations() {
    assert!(Router::from_json(b"{not json").is_err());
    assert!(
        Router::from_json(br#"{"listeners": [{"name": "x"}]}"#).is_err(),
        "required fields are required"
    );
    let (empty, warnings) = Router::from_json(b"  ").expect("empty is valid");
    assert!(warnings.is_empty());
    assert_eq!(
        empty.decide(&get("/").build(), 0),
        Decision::Reply(reply(404, "no route matches this request"))
    );
}

/// GAMMA (GEP-1294): routes attached to Service ports, as the mesh conformance cases use them.
mod mesh {
    use super::*;

    /// A request captured on its way to `service` port `port` from a pod in `namespace`.
    fn east_west(req: Req<'_>, service: &str, port: u16, namespace: Option<&str>) -> Request {
        let mut request = Request::new(Some(port), None, req.pairs());
        request.service = Some(service.into());
        request.source_namespace = namespace.map(str::to_string);
        request
    }

    fn cluster_of(decision: Decision) -> Result<(Option<String>, String), u16> {
        match decision {
            Decision::Forward(f) => Ok((f.route, f.cluster)),
            Decision::Reply(r) => Err(r.status),
        }
    }

    /// Producer routes on `mesh/echo` port 80 (and none on 8080), a consumer route from
    /// namespace `consumer` on the same port.
    fn mesh_router() -> Router {
        router_with(json!({"services": [
            {"service": "mesh/echo", "port": 80,
             "producer": [
                {"namespace": "mesh", "name": "split", "hostnames": ["only.example"], "rules": [
                    {"matches": [{"path": {"type": "Exact", "value": "/v1"}}], "backends": [{"cluster": "mesh/echo-v1:8080"}]},
                    {"matches": [{"path": {"type": "Exact", "value": "/v2"}}], "backends": [{"cluster": "mesh/echo-v2:8080"}]}
                ]}
             ],
             "consumers": {"consumer": [
                {"namespace": "consumer", "name": "mine", "rules": [{"backends": [{"cluster": "mesh/echo-v2:8080"}]}]}
             ]}}
        ]}))
    }

    #[test]
    fn producer_routes_match_by_the_service_not_the_host() {
        let r = mesh_router();
        // `hostnames` are ignored: the Service address chose the routes.
        for host in ["echo", "echo-v1.mesh", "only.example"] {
            let req = east_west(get("/v1").host(host), "mesh/echo", 80, Some("client"));
            assert_eq!(
                cluster_of(r.decide(&req, 0)),
                Ok((Some("mesh/split/0".into()), "mesh/echo-v1:8080".into())),
                "host {host}"
            );
        }
        let req = east_west(get("/v2"), "mesh/echo", 80, None);
        assert_eq!(
            cluster_of(r.decide(&req, 0)),
            Ok((Some("mesh/split/1".into()), "mesh/echo-v2:8080".into()))
        );
    }

    #[test]
    fn a_port_with_routes_answers_404_when_none_matches() {
        let r = mesh_router();
        let req = east_west(get("/other"), "mesh/echo", 80, Some("client"));
        assert_eq!(cluster_of(r.decide(&req, 0)), Err(404));
    }

    #[test]
    fn a_port_or_service_without_routes_goes_to_the_service_itself() {
        let r = mesh_router();
        let req = east_west(get("/v1"), "mesh/echo", 8080, Some("client"));
        assert_eq!(cluster_of(r.decide(&req, 0)), Ok((None, "mesh/echo:8080".into())));
        let req = east_west(get("/v1"), "mesh/other", 80, Some("client"));
        assert_eq!(cluster_of(r.decide(&req, 0)), Ok((None, "mesh/other:80".into())));
    }

    #[test]
    fn consumer_routes_replace_producer_routes_for_their_namespace_only() {
        let r = mesh_router();
        let req = east_west(get("/v1"), "mesh/echo", 80, Some("consumer"));
        assert_eq!(
            cluster_of(r.decide(&req, 0)),
            Ok((Some("consumer/mine/0".into()), "mesh/echo-v2:8080".into()))
        );
        // Not merged: the consumer namespace does not see the producer's /v1 rule, and a path
        // only the producer routes would refuse is served by the consumer route.
        let req = east_west(get("/other"), "mesh/echo", 80, Some("consumer"));
        assert_eq!(
            cluster_of(r.decide(&req, 0)),
            Ok((Some("consumer/mine/0".into()), "mesh/echo-v2:8080".into()))
        );
        let req = east_west(get("/other"), "mesh/echo", 80, Some("elsewhere"));
        assert_eq!(cluster_of(r.decide(&req, 0)), Err(404));
    }

    #[test]
    fn gateway_listeners_do_not_serve_east_west_requests() {
        let r = router_with(json!({
            "listeners": [{"gateway": "infra/gw", "name": "http", "port": 80, "protocol": "HTTP",
                "routes": [route("edge", json!([{"backends": backend("infra/web:80")}]))]}]
        }));
        let req = east_west(get("/"), "mesh/echo", 80, None);
        assert_eq!(cluster_of(r.decide(&req, 0)), Ok((None, "mesh/echo:80".into())));
        // And a Gateway request never sees Service routes.
        let r = mesh_router();
        assert_eq!(cluster_of(r.decide(&get("/v1").build(), 0)), Err(404));
    }

    #[test]
    fn a_redirect_on_a_service_route_defaults_to_the_service_port() {
        let r = router_with(json!({"services": [{"service": "mesh/echo", "port": 8080, "producer": [
            {"namespace": "mesh", "name": "redirect", "rules": [{"filters": [
                {"type": "RequestRedirect", "requestRedirect": {"hostname": "example.org"}}
            ]}]}
        ]}]}));
        let req = east_west(get("/path"), "mesh/echo", 8080, None);
        match r.decide(&req, 0) {
            Decision::Reply(reply) => {
                assert_eq!(reply.status, 302);
                assert!(
                    reply
                        .headers
                        .contains(&("location".into(), "http://example.org:8080/path".into())),
                    "{:?}",
                    reply.headers
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
