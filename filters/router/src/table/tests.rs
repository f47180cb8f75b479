//! Listener selection and match precedence.

use serde_json::{Value, json};

use super::*;

fn table(config: Value) -> RouteTable {
    let config: RouterConfig = serde_json::from_value(config).expect("valid config");
    let (table, warnings) = RouteTable::compile(&config);
    assert!(warnings.is_empty(), "{warnings:?}");
    table
}

fn req(port: Option<u16>, host: &str, path: &str) -> Request {
    Request::new(
        port,
        None,
        vec![
            (":authority".into(), host.as_bytes().to_vec()),
            (":path".into(), path.as_bytes().to_vec()),
            (":method".into(), b"GET".to_vec()),
        ],
    )
}

/// `namespace/name/rule` of the match, or `None`.
fn found(t: &RouteTable, r: &Request) -> Option<String> {
    t.find(r).map(|m| format!("{}/{}", m.route.id, m.rule.index))
}

fn route(name: &str, hostnames: Value, rules: Value) -> Value {
    json!({"namespace": "ns", "name": name, "hostnames": hostnames, "rules": rules})
}

fn any_rule() -> Value {
    json!([{"backends": [{"cluster": "c"}]}])
}

#[test]
fn listener_hostname_matching_case() {
    // HTTPRouteListenerHostnameMatching: four listeners on port 80.
    let l = |name: &str, hostname: &str| {
        json!({"gateway": "infra/gw", "name": name, "port": 80, "protocol": "HTTP", "hostname": hostname,
               "routes": [route(name, json!([]), any_rule())]})
    };
    let t = table(
        json!({"listeners": [l("listener-1", "bar.com"), l("listener-2", "foo.bar.com"), l("listener-3", "*.bar.com"), l("listener-4", "*.foo.com")]}),
    );
    let cases: &[(&str, Option<&str>)] = &[
        ("bar.com", Some("listener-1")),
        ("foo.bar.com", Some("listener-2")),
        ("baz.bar.com", Some("listener-3")),
        ("boo.bar.com", Some("listener-3")),
        ("multiple.prefixes.bar.com", Some("listener-3")),
        ("multiple.prefixes.foo.com", Some("listener-4")),
        ("FOO.BAR.COM:80", Some("listener-2")),
        ("foo.com", None),
        ("no.matching.host", None),
        ("", None),
    ];
    for (host, expected) in cases {
        let got = t.select_listener(&req(Some(80), host, "/")).map(|l| l.name.as_str());
        assert_eq!(got, *expected, "host {host:?}");
        assert_eq!(
            found(&t, &req(Some(80), host, "/")),
            expected.map(|n| format!("ns/{n}/0"))
        );
    }
    assert!(
        t.select_listener(&req(Some(8080), "bar.com", "/")).is_none(),
        "port must match"
    );
}

#[test]
fn longer_wildcard_listener_wins() {
    let l = |name: &str, hostname: &str| json!({"gateway": "g/g", "name": name, "port": 80, "protocol": "HTTP", "hostname": hostname});
    let t = table(json!({"listeners": [
        {"gateway": "g/g", "name": "any", "port": 80, "protocol": "HTTP"},
        l("short", "*.com"), l("long", "*.example.com")
    ]}));
    let name = |host: &str| t.select_listener(&req(Some(80), host, "/")).map(|l| l.name.clone());
    assert_eq!(name("a.example.com").as_deref(), Some("long"));
    assert_eq!(name("a.other.com").as_deref(), Some("short"));
    assert_eq!(name("a.org").as_deref(), Some("any"));
}

#[test]
fn gateway_property_separates_gateways_on_one_port() {
    // HTTPRouteMultipleGateways: two Gateways, both with an HTTP listener on port 80.
    let t = table(json!({"listeners": [
        {"gateway": "infra/same-namespace", "name": "http", "port": 80, "protocol": "HTTP", "routes": [
            route("multiple-gateways-shared-route", json!([]), json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/shared"}}], "backends": [{"cluster": "v1"}]}])),
            route("same-namespace-dedicated-route", json!([]), json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backends": [{"cluster": "v2"}]}])),
        ]},
        {"gateway": "infra/all-namespaces", "name": "http", "port": 80, "protocol": "HTTP", "routes": [
            route("multiple-gateways-shared-route", json!([]), json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/shared"}}], "backends": [{"cluster": "v1"}]}])),
            route("all-namespaces-dedicated-route", json!([]), json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backends": [{"cluster": "v3"}]}])),
        ]},
    ]}));
    let on = |gateway: &str, path: &str| {
        let mut r = req(Some(80), "127.0.0.1:8080", path);
        r.gateway = Some(gateway.into());
        found(&t, &r)
    };
    assert_eq!(
        on("infra/same-namespace", "/shared").as_deref(),
        Some("ns/multiple-gateways-shared-route/0")
    );
    assert_eq!(
        on("infra/same-namespace", "/").as_deref(),
        Some("ns/same-namespace-dedicated-route/0")
    );
    assert_eq!(
        on("infra/all-namespaces", "/shared").as_deref(),
        Some("ns/multiple-gateways-shared-route/0")
    );
    assert_eq!(
        on("infra/all-namespaces", "/").as_deref(),
        Some("ns/all-namespaces-dedicated-route/0")
    );
    assert_eq!(on("infra/unknown", "/"), None);
    // Without the property the first Gateway in the configuration serves the port.
    assert_eq!(
        found(&t, &req(Some(80), "h", "/")).as_deref(),
        Some("ns/same-namespace-dedicated-route/0")
    );
    // Without a port every listener is a candidate.
    assert_eq!(
        found(&t, &req(None, "h", "/")).as_deref(),
        Some("ns/same-namespace-dedicated-route/0")
    );
}

#[test]
fn route_hostname_specificity_comes_before_path() {
    let t = table(
        json!({"listeners": [{"gateway": "g/g", "name": "l", "port": 80, "protocol": "HTTP", "routes": [
            route("wild", json!(["*.example.com"]), json!([{"matches": [{"path": {"type": "Exact", "value": "/x"}}], "backends": [{"cluster": "c"}]}])),
            route("exact", json!(["foo.example.com"]), json!([{"backends": [{"cluster": "c"}]}])),
            route("none", json!([]), json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/only-here"}}], "backends": [{"cluster": "c"}]}])),
            route("elsewhere", json!(["other.org"]), json!([{"backends": [{"cluster": "c"}]}])),
        ]}]}),
    );
    assert_eq!(
        found(&t, &req(Some(80), "foo.example.com", "/x")).as_deref(),
        Some("ns/exact/0")
    );
    assert_eq!(
        found(&t, &req(Some(80), "bar.example.com", "/x")).as_deref(),
        Some("ns/wild/0")
    );
    // A route that does not match the host at all is never chosen, however good its path.
    assert_eq!(found(&t, &req(Some(80), "bar.example.com", "/y")), None);
    assert_eq!(
        found(&t, &req(Some(80), "bar.example.com", "/only-here")).as_deref(),
        Some("ns/none/0")
    );
    assert_eq!(
        found(&t, &req(Some(80), "other.org", "/x")).as_deref(),
        Some("ns/elsewhere/0")
    );
}

#[test]
fn route_without_common_hostname_is_not_attached() {
    let t = table(
        json!({"listeners": [{"gateway": "g/g", "name": "l", "port": 80, "protocol": "HTTP", "hostname": "*.example.com", "routes": [
            route("off", json!(["example.org"]), any_rule()),
            route("narrow", json!(["*.example.com", "a.example.org"]), any_rule()),
        ]}]}),
    );
    assert_eq!(
        found(&t, &req(Some(80), "x.example.com", "/")).as_deref(),
        Some("ns/narrow/0")
    );
    assert_eq!(found(&t, &req(Some(80), "example.org", "/")), None);
    assert_eq!(
        found(&t, &req(Some(80), "a.example.org", "/")),
        None,
        "listener hostname excludes it"
    );
}

#[test]
fn ties_go_to_the_oldest_route_then_alphabetical_then_rule_and_match_order() {
    let r = |name: &str, ts: Option<&str>| {
        json!({"namespace": "ns", "name": name, "creationTimestamp": ts, "rules": [
            {"matches": [{"path": {"type": "PathPrefix", "value": "/a"}}], "backends": [{"cluster": name}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/b"}}, {"path": {"type": "PathPrefix", "value": "/a"}}], "backends": [{"cluster": name}]},
        ]})
    };
    let listener = |routes: Vec<Value>| {
        table(json!({"listeners": [{"gateway": "g/g", "name": "l", "port": 80, "protocol": "HTTP", "routes": routes}]}))
    };
    let t = listener(vec![
        r("zz-new", Some("2024-02-01T00:00:00Z")),
        r("aa-newest", None),
        r("mm-old", Some("2024-01-01T00:00:00Z")),
    ]);
    assert_eq!(found(&t, &req(Some(80), "h", "/a")).as_deref(), Some("ns/mm-old/0"));
    let t = listener(vec![
        r("zz", Some("2024-01-01T00:00:00Z")),
        r("aa", Some("2024-01-01T00:00:00Z")),
    ]);
    assert_eq!(found(&t, &req(Some(80), "h", "/a")).as_deref(), Some("ns/aa/0"));
    let t = listener(vec![r("zz", None), r("aa", None)]);
    assert_eq!(found(&t, &req(Some(80), "h", "/a")).as_deref(), Some("ns/aa/0"));
    assert_eq!(found(&t, &req(Some(80), "h", "/b")).as_deref(), Some("ns/aa/1"));
}

#[test]
fn precedence_is_across_routes_before_age() {
    // A newer route with a longer prefix beats an older one with a shorter prefix.
    let t = table(
        json!({"listeners": [{"gateway": "g/g", "name": "l", "port": 80, "protocol": "HTTP", "routes": [
            {"namespace": "ns", "name": "old", "creationTimestamp": "2020-01-01T00:00:00Z", "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}], "backends": [{"cluster": "c"}]}]},
            {"namespace": "ns", "name": "new", "creationTimestamp": "2024-01-01T00:00:00Z", "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/api/v2"}}], "backends": [{"cluster": "c"}]}]},
            {"namespace": "ns", "name": "regex", "rules": [{"matches": [{"path": {"type": "RegularExpression", "value": "/api/v2/.*"}}], "backends": [{"cluster": "c"}]}]},
        ]}]}),
    );
    assert_eq!(found(&t, &req(Some(80), "h", "/api/v2/x")).as_deref(), Some("ns/new/0"));
    assert_eq!(found(&t, &req(Some(80), "h", "/api/v1")).as_deref(), Some("ns/old/0"));
}

#[test]
fn warnings_name_the_route_and_rule() {
    let config: RouterConfig = serde_json::from_value(json!({"listeners": [{"gateway": "g/g", "name": "l", "port": 80, "protocol": "HTTP", "routes": [
        {"namespace": "ns", "name": "r", "creationTimestamp": "not a time", "rules": [
            {"matches": [{"path": {"type": "RegularExpression", "value": "(("}}], "filters": [{"type": "RequestMirror"}, {"type": "URLRewrite"}]}
        ]}
    ]}]}))
    .expect("valid config");
    let (_, warnings) = RouteTable::compile(&config);
    assert_eq!(warnings.len(), 4, "{warnings:?}");
    assert!(warnings.iter().all(|w| w.starts_with("route ns/r")), "{warnings:?}");
}

#[test]
fn a_path_match_without_a_value_means_slash() {
    // HTTPPathMatch.value defaults to `/`, for either type: an Exact match without a value
    // matches the root only.
    let path: crate::config::HttpPathMatch = serde_json::from_value(json!({"type": "Exact"})).expect("valid match");
    assert_eq!(path.value, "/");
    let t = table(
        json!({"listeners": [{"gateway": "g/g", "name": "l", "port": 80, "protocol": "HTTP", "routes": [
            {"namespace": "ns", "name": "root", "rules": [{"matches": [{"path": {"type": "Exact"}}], "backends": [{"cluster": "c"}]}]},
        ]}]}),
    );
    assert_eq!(found(&t, &req(Some(80), "h", "/")).as_deref(), Some("ns/root/0"));
    assert_eq!(found(&t, &req(Some(80), "h", "/x")), None);
}

#[test]
fn age_partial_order_agrees_with_the_total_order() {
    // Older first, and a route without a timestamp after every route with one, whichever of
    // the two comparisons is used.
    let (old, new, none) = (AgeKey(Some((1, 0))), AgeKey(Some((2, 0))), AgeKey(None));
    assert!(old < new);
    assert!(new < none);
    assert_eq!(none.partial_cmp(&AgeKey(None)), Some(std::cmp::Ordering::Equal));
}
