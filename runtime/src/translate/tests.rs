use super::*;
use crate::config::store::{Format, parse_file};

pub(super) fn store_from(yaml: &str) -> ObjectStore {
    let parsed = parse_file("test.yaml", yaml, Format::Yaml);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let mut store = ObjectStore::default();
    for object in parsed.objects {
        store.objects.insert(object.key(), object);
    }
    store
}

pub(super) fn options() -> TranslateOptions {
    TranslateOptions {
        address: [127, 0, 0, 1].into(),
        address_pool: None,
        config_dir: None,
        now: "2026-01-01T00:00:00Z".into(),
        node_name: None,
    }
}

const BASE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: ns}
spec:
  gatewayClassName: tidegate
  listeners:
  - {name: http, protocol: HTTP, port: 80}
  - {name: tcp, protocol: TCP, port: 9000}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns}
spec:
  ports: [{name: http, port: 8080, targetPort: 3000, appProtocol: kubernetes.io/h2c}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: ns, labels: {kubernetes.io/service-name: web}}
endpoints:
- addresses: [10.0.0.1]
- addresses: [10.0.0.2]
  conditions: {ready: false}
ports: [{name: http, port: 3000}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: route, namespace: ns}
spec:
  parentRefs: [{name: gw}]
  rules:
  - backendRefs: [{name: web, port: 8080}, {name: missing, port: 80}]
"#;

pub(super) fn status_of<'a>(t: &'a Translation, kind: &str, name: &str) -> &'a serde_json::Value {
    &t.statuses
        .iter()
        .find(|s| s.kind == kind && s.name == name)
        .expect("status present")
        .status
}

#[test]
fn route_attaches_and_backends_resolve_to_ready_endpoints() {
    let t = translate(&store_from(BASE), &options());
    assert_eq!(t.snapshot.ports.len(), 1, "only the HTTP listener is served");
    assert_eq!(t.snapshot.ports[0].port, 80);
    let listener = &t.snapshot.router.listeners[0];
    assert_eq!(listener.routes.len(), 1);
    let backends = &listener.routes[0].rules[0].backends;
    assert_eq!(backends[0].cluster.as_deref(), Some("ns/web:8080"));
    assert_eq!(
        backends[1].cluster, None,
        "a missing Service resolves to nothing (500 share)"
    );
    let cluster = &t.snapshot.clusters["ns/web:8080"];
    assert_eq!(cluster.protocol, UpstreamProtocol::H2c);
    assert_eq!(
        cluster.endpoints,
        vec!["10.0.0.1:3000".parse().expect("addr")],
        "not-ready endpoints are skipped"
    );
    assert_eq!(
        t.snapshot.balancer.clusters["ns/web:8080"].endpoints,
        vec!["10.0.0.1:3000".to_string()]
    );
}

#[test]
fn status_reports_listener_and_route_conditions() {
    let t = translate(&store_from(BASE), &options());
    let gateway = status_of(&t, "Gateway", "gw");
    assert_eq!(gateway["conditions"][0]["type"], "Accepted");
    assert_eq!(gateway["conditions"][0]["status"], "True");
    assert_eq!(gateway["listeners"][0]["attachedRoutes"], 1);
    assert_eq!(
        gateway["listeners"][1]["conditions"][0]["reason"],
        "UnsupportedProtocol"
    );
    let route = status_of(&t, "HTTPRoute", "route");
    let conditions = &route["parents"][0]["conditions"];
    assert_eq!(conditions[0]["reason"], "Accepted");
    assert_eq!(conditions[1]["type"], "ResolvedRefs");
    assert_eq!(conditions[1]["status"], "False");
    assert_eq!(conditions[1]["reason"], "BackendNotFound");
}

#[test]
fn foreign_gateway_class_is_left_alone() {
    let yaml = format!(
        "{BASE}---\napiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: tidegate}}\nspec: {{controllerName: example.com/other}}\n"
    );
    let t = translate(&store_from(&yaml), &options());
    assert!(t.snapshot.ports.is_empty());
    assert!(t.statuses.is_empty());
}

#[test]
fn section_name_that_does_not_exist_is_no_matching_parent() {
    let yaml = BASE.replace(
        "parentRefs: [{name: gw}]",
        "parentRefs: [{name: gw, sectionName: nope}]",
    );
    let t = translate(&store_from(&yaml), &options());
    let route = status_of(&t, "HTTPRoute", "route");
    assert_eq!(route["parents"][0]["conditions"][0]["reason"], "NoMatchingParent");
    assert!(t.snapshot.router.listeners[0].routes.is_empty());
}

#[test]
fn hostnames_intersect_like_the_gateway_api() {
    use super::routes::hostnames_intersect;
    let hosts = |h: &[&str]| h.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(hostnames_intersect(None, &hosts(&["a.example.com"])));
    assert!(hostnames_intersect(Some("*.example.com"), &hosts(&[])));
    assert!(hostnames_intersect(Some("*.example.com"), &hosts(&["a.example.com"])));
    assert!(hostnames_intersect(Some("a.example.com"), &hosts(&["*.example.com"])));
    assert!(!hostnames_intersect(Some("*.example.com"), &hosts(&["example.com"])));
    assert!(!hostnames_intersect(Some("a.example.com"), &hosts(&["b.example.com"])));
}

fn wasm_filter_yaml(name: &str, module: &str) -> String {
    format!(
        "---\napiVersion: tidegate.dev/v1alpha1\nkind: WasmFilter\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  module: {module}\n"
    )
}

fn accepted_condition(t: &Translation, name: &str) -> (String, String) {
    let status = status_of(t, "WasmFilter", name);
    let condition = &status["conditions"][0];
    (
        condition["status"].as_str().unwrap_or_default().to_string(),
        condition["message"].as_str().unwrap_or_default().to_string(),
    )
}

fn module_of<'a>(t: &'a Translation, name: &str) -> &'a wasmfilters::ModuleLocation {
    &t.snapshot
        .filters
        .iter()
        .find(|f| f.name == format!("ns/{name}"))
        .expect("the filter is planned")
        .module
}

#[test]
fn config_map_modules_are_read_from_binary_data() {
    use base64::Engine as _;
    use wasmfilters::ModuleLocation;
    let module = b"\0asm\x01\0\0\0";
    let encoded = base64::engine::general_purpose::STANDARD.encode(module);
    let (head, tail) = encoded.split_at(4);
    let yaml = format!(
        "{BASE}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: filters, namespace: ns}}\ndata: {{text.wasm: hello}}\nbinaryData:\n  plugin.wasm: {encoded}\n  wrapped.wasm: |\n    {head}\n    {tail}\n  broken.wasm: '!!!'\n{}{}{}{}{}{}",
        wasm_filter_yaml("good", "{configMap: {name: filters, key: plugin.wasm}}"),
        wasm_filter_yaml("wrapped", "{configMap: {name: filters, key: wrapped.wasm}}"),
        wasm_filter_yaml("no-map", "{configMap: {name: absent, key: plugin.wasm}}"),
        wasm_filter_yaml("no-key", "{configMap: {name: filters, key: other.wasm}}"),
        wasm_filter_yaml("text", "{configMap: {name: filters, key: text.wasm}}"),
        wasm_filter_yaml("broken", "{configMap: {name: filters, key: broken.wasm}}"),
    );
    let t = translate(&store_from(&yaml), &options());
    let content = |name: &str| match module_of(&t, name) {
        ModuleLocation::ConfigMap { object, content, .. } => {
            assert_eq!(object, if name == "no-map" { "ns/absent" } else { "ns/filters" });
            content.clone()
        }
        other => panic!("{other:?}"),
    };
    for name in ["good", "wrapped"] {
        let bytes = content(name).expect("the module is read");
        assert_eq!(&*bytes.bytes, module);
        assert_eq!(
            bytes.sha256,
            "93a44bbb96c751218e4c00d479e4c14358122a389acca16205b1e4d0dc5f9476"
        );
    }
    // Problems with the reference are the module's error (ResolvedRefs), not an invalid spec.
    for name in ["no-map", "no-key", "text", "broken"] {
        assert_eq!(accepted_condition(&t, name).0, "True", "{name}");
    }
    let error = content("no-map").unwrap_err();
    assert!(
        error.contains("spec.module.configMap: ConfigMap ns/absent not found")
            && error.contains("kubectl create configmap"),
        "{error}"
    );
    let error = content("no-key").unwrap_err();
    assert!(
        error.contains("no key other.wasm in binaryData (keys: broken.wasm, plugin.wasm, wrapped.wasm)"),
        "{error}"
    );
    assert!(content("text").unwrap_err().contains("in data, which holds text"));
    assert!(
        content("broken")
            .unwrap_err()
            .contains("binaryData.broken.wasm is not valid base64")
    );

    // /config_dump shows the module's digest and size, not its bytes.
    let dumped = serde_json::to_value(module_of(&t, "good")).expect("serializes");
    assert_eq!(dumped["ConfigMap"]["content"]["Ok"]["size"], module.len());
}

#[test]
fn http_and_oci_sources_are_validated_when_translating() {
    use wasmfilters::ModuleLocation;
    let yaml = format!(
        "{BASE}{}{}{}{}{}",
        wasm_filter_yaml("http", "{http: \"https://example.com/f.wasm\"}"),
        wasm_filter_yaml("oci", "{oci: \"oci://127.0.0.1:5000/filters/f:v1\"}"),
        wasm_filter_yaml("ftp", "{http: \"ftp://example.com/f.wasm\"}"),
        wasm_filter_yaml("bad-ref", "{oci: \"registry.test/Filters:v1\"}"),
        wasm_filter_yaml(
            "two",
            "{http: \"https://example.com/f.wasm\", oci: \"registry.test/f\"}"
        ),
    );
    let t = translate(&store_from(&yaml), &options());
    assert_eq!(
        module_of(&t, "http"),
        &ModuleLocation::Http("https://example.com/f.wasm".into())
    );
    assert_eq!(
        module_of(&t, "oci"),
        &ModuleLocation::Oci("oci://127.0.0.1:5000/filters/f:v1".into())
    );
    let (accepted, message) = accepted_condition(&t, "ftp");
    assert_eq!(accepted, "False");
    assert!(
        message.contains("spec.module.http") && message.contains("http:// or https://"),
        "{message}"
    );
    let (accepted, message) = accepted_condition(&t, "bad-ref");
    assert_eq!(accepted, "False");
    assert!(
        message.contains("spec.module.oci") && message.contains("lowercase"),
        "{message}"
    );
    assert!(accepted_condition(&t, "two").1.contains("exactly one"));
}

// === Found by mutation testing (runtime/tests/MUTATION.md) ===

#[test]
fn gateway_addresses_are_stable_across_releases_and_fill_the_pool() {
    // The address of a Gateway must not move between tidegate versions: the FNV-1a hash of
    // `namespace/name` picks it (values from an independent FNV-1a implementation).
    let pool: AddressPool = "127.0.100.0/24".parse().expect("pool");
    assert_eq!(
        "127.0.100.77/24".parse::<AddressPool>(),
        Ok(pool),
        "host bits are dropped"
    );
    let none = std::collections::BTreeSet::new();
    assert_eq!(pool.assign("ns/a", &none), Some([127, 0, 100, 115].into()));
    assert_eq!(pool.assign("infra/gw", &none), Some([127, 0, 100, 35].into()));
    // A /29 has six usable addresses (network and broadcast skipped): six keys get them all,
    // in order from their hash, wrapping round; a seventh gets none.
    let small: AddressPool = "10.1.2.0/29".parse().expect("pool");
    assert_eq!(small.assign("infra/gw", &none), Some([10, 1, 2, 5].into()));
    let mut taken = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let ip = small.assign("infra/gw", &taken).expect("a free address");
        assert!(taken.insert(ip), "{ip} given twice");
    }
    let expected: std::collections::BTreeSet<IpAddr> = (1..=6).map(|i| IpAddr::from([10, 1, 2, i])).collect();
    assert_eq!(taken, expected);
    assert_eq!(small.assign("infra/gw", &taken), None, "the pool is full");
}

#[test]
fn pods_are_known_by_each_of_their_addresses() {
    let yaml = format!(
        "{BASE}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: ns, labels: {{app: web}}}}\nspec:\n  serviceAccountName: web-sa\n  containers: [{{name: c, image: x}}]\nstatus:\n  podIP: 10.0.0.9\n  podIPs: [{{ip: 10.0.0.9}}, {{ip: 'fd00::9'}}]\n"
    );
    let t = translate(&store_from(&yaml), &options());
    let expected = Workload {
        namespace: "ns".into(),
        name: "client".into(),
        service_account: Some("web-sa".into()),
        labels: [("app".to_string(), "web".to_string())].into(),
    };
    assert_eq!(t.snapshot.workloads.len(), 2);
    assert_eq!(
        t.snapshot.workloads.get(&"10.0.0.9".parse().expect("ip")),
        Some(&expected)
    );
    assert_eq!(
        t.snapshot.workloads.get(&"fd00::9".parse().expect("ip")),
        Some(&expected)
    );
}

#[test]
fn endpoint_slices_of_other_services_or_namespaces_are_not_mixed_in() {
    let yaml = format!(
        "{BASE}---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-elsewhere, namespace: other, labels: {{kubernetes.io/service-name: web}}}}
endpoints: [{{addresses: [10.9.0.1]}}]
ports: [{{name: http, port: 3000}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: api-1, namespace: ns, labels: {{kubernetes.io/service-name: api}}}}
endpoints: [{{addresses: [10.9.0.2]}}]
ports: [{{name: http, port: 3000}}]
"
    );
    let t = translate(&store_from(&yaml), &options());
    assert_eq!(
        t.snapshot.clusters["ns/web:8080"].endpoints,
        vec!["10.0.0.1:3000".parse().expect("addr")],
        "only ns/web's own slices"
    );
}

#[test]
fn a_gateway_class_of_ours_is_accepted_and_its_gateways_served() {
    let yaml = format!(
        "{BASE}---\napiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {{name: tidegate}}\nspec: {{controllerName: {CONTROLLER_NAME}}}\n"
    );
    let t = translate(&store_from(&yaml), &options());
    assert_eq!(t.snapshot.ports.len(), 1, "the Gateway is served");
    let class = status_of(&t, "GatewayClass", "tidegate");
    assert_eq!(class["conditions"][0]["type"], "Accepted");
    assert_eq!(class["conditions"][0]["status"], "True");
}

#[test]
fn requested_addresses_are_kept_and_only_the_others_come_from_the_pool() {
    let gateway = |name: &str, addresses: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  gatewayClassName: tidegate\n  addresses: {addresses}\n  listeners:\n  - {{name: http, protocol: HTTP, port: 80}}\n"
        )
    };
    let yaml = [
        gateway("fixed", "[{type: IPAddress, value: 127.0.0.5}]"),
        gateway("pooled", "[]"),
        gateway("named", "[{type: Hostname, value: gw.example}]"),
    ]
    .concat();
    let mut options = options();
    options.address_pool = Some("127.0.100.0/24".parse().expect("pool"));
    let t = translate(&store_from(&yaml), &options);
    let address_of = |name: &str| {
        let key = format!("ns/{name}");
        t.snapshot
            .ports
            .iter()
            .find(|p| p.gateways.contains(&key))
            .map(|p| p.address.to_string())
    };
    assert_eq!(address_of("fixed").as_deref(), Some("127.0.0.5"), "spec.addresses wins");
    assert_eq!(
        address_of("pooled").as_deref(),
        Some("127.0.100.215"),
        "from the pool, by hash"
    );
    let named = status_of(&t, "Gateway", "named");
    assert!(
        !named.to_string().contains("127.0.100."),
        "an unusable request is not replaced from the pool: {named}"
    );
}

/// Two kubernetes.io/tls Secrets with one self-signed certificate: `ns/local` and `certs/shared`.
fn tls_secrets() -> &'static str {
    static YAML: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    YAML.get_or_init(|| {
        use base64::Engine as _;
        let certified = rcgen::generate_simple_self_signed(vec!["a.example".to_string()]).expect("certificate");
        let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
        let (crt, key) = (b64(certified.cert.pem()), b64(certified.signing_key.serialize_pem()));
        [("ns", "local"), ("certs", "shared")]
            .iter()
            .map(|(namespace, name)| {
                format!(
                    "---\napiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {namespace}}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {crt}\n  tls.key: {key}\n"
                )
            })
            .collect()
    })
}

/// Gateway `ns/tls` with the given listeners (YAML flow mappings).
fn gateway_with(listeners: &[String]) -> String {
    let listeners: String = listeners.iter().map(|l| format!("  - {l}\n")).collect();
    format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: tls, namespace: ns}}\nspec:\n  gatewayClassName: tidegate\n  listeners:\n{listeners}"
    )
}

fn https_listener(name: &str, port: u16, cert_ref: &str) -> String {
    format!("{{name: {name}, protocol: HTTPS, port: {port}, tls: {{certificateRefs: [{cert_ref}]}}}}")
}

/// (status, reason) of condition `kind` of listener `index` of Gateway `ns/tls`.
fn listener_condition(t: &Translation, index: usize, kind: &str) -> (String, String) {
    let status = status_of(t, "Gateway", "tls");
    let conditions = status["listeners"][index]["conditions"]
        .as_array()
        .expect("listener conditions");
    let condition = conditions
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {conditions:?}"));
    (
        condition["status"].as_str().unwrap_or_default().to_string(),
        condition["reason"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn certificate_refs_must_name_a_core_secret() {
    for (cert_ref, expected) in [
        ("{name: local}", ("True", "ResolvedRefs")),
        ("{kind: Secret, group: '', name: local}", ("True", "ResolvedRefs")),
        (
            "{group: example.com, kind: Secret, name: local}",
            ("False", "InvalidCertificateRef"),
        ),
        ("{kind: ConfigMap, name: local}", ("False", "InvalidCertificateRef")),
        ("{name: missing}", ("False", "InvalidCertificateRef")),
    ] {
        let yaml = format!(
            "{}{}",
            tls_secrets(),
            gateway_with(&[https_listener("https", 443, cert_ref)])
        );
        let t = translate(&store_from(&yaml), &options());
        let (status, reason) = listener_condition(&t, 0, "ResolvedRefs");
        assert_eq!((status.as_str(), reason.as_str()), expected, "{cert_ref}");
    }
}

#[test]
fn a_certificate_in_another_namespace_needs_a_reference_grant_that_matches_exactly() {
    let grant = |namespace: &str, from: &str, to: &str| {
        format!(
            "---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {{name: g, namespace: {namespace}}}\nspec:\n  from: [{from}]\n  to: [{to}]\n"
        )
    };
    let from = "{group: gateway.networking.k8s.io, kind: Gateway, namespace: ns}";
    let to = "{group: '', kind: Secret, name: shared}";
    let cases = [
        ("no grant", String::new(), "False"),
        ("a matching grant", grant("certs", from, to), "True"),
        (
            "a grant for every Secret",
            grant("certs", from, "{group: '', kind: Secret}"),
            "True",
        ),
        ("a grant in the wrong namespace", grant("ns", from, to), "False"),
        (
            "a grant from another group",
            grant("certs", "{group: '', kind: Gateway, namespace: ns}", to),
            "False",
        ),
        (
            "a grant from another kind",
            grant(
                "certs",
                "{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: ns}",
                to,
            ),
            "False",
        ),
        (
            "a grant from another namespace",
            grant(
                "certs",
                "{group: gateway.networking.k8s.io, kind: Gateway, namespace: other}",
                to,
            ),
            "False",
        ),
        (
            "a grant to another group",
            grant("certs", from, "{group: example.com, kind: Secret, name: shared}"),
            "False",
        ),
        (
            "a grant to another kind",
            grant("certs", from, "{group: '', kind: ConfigMap, name: shared}"),
            "False",
        ),
        (
            "a grant to another name",
            grant("certs", from, "{group: '', kind: Secret, name: other}"),
            "False",
        ),
    ];
    for (what, grant, expected) in cases {
        let yaml = format!(
            "{}{}{grant}",
            tls_secrets(),
            gateway_with(&[https_listener("https", 443, "{name: shared, namespace: certs}")])
        );
        let t = translate(&store_from(&yaml), &options());
        let (status, reason) = listener_condition(&t, 0, "ResolvedRefs");
        assert_eq!(status, expected, "{what}: {reason}");
        if expected == "False" {
            assert_eq!(reason, "RefNotPermitted", "{what}");
        }
    }
}

#[test]
fn listeners_sharing_a_port_conflict_on_protocol_or_hostname() {
    let yaml = format!(
        "{}{}",
        tls_secrets(),
        gateway_with(&[
            "{name: a, protocol: HTTP, port: 80, hostname: a.example}".to_string(),
            "{name: a-again, protocol: HTTP, port: 80, hostname: a.example}".to_string(),
            "{name: b, protocol: HTTP, port: 80, hostname: b.example}".to_string(),
            https_listener("tls-on-80", 80, "{name: local}"),
            https_listener("tls", 443, "{name: local}"),
        ])
    );
    let t = translate(&store_from(&yaml), &options());
    let conflicted = |index| listener_condition(&t, index, "Conflicted");
    assert_eq!(conflicted(0), ("False".into(), "NoConflicts".into()));
    assert_eq!(conflicted(1), ("True".into(), "HostnameConflict".into()));
    assert_eq!(conflicted(2), ("False".into(), "NoConflicts".into()));
    assert_eq!(conflicted(3), ("True".into(), "ProtocolConflict".into()));
    assert_eq!(conflicted(4), ("False".into(), "NoConflicts".into()));
}

#[test]
fn parent_refs_pick_gateways_and_listeners_by_group_kind_and_port() {
    for (parent_refs, attached) in [
        ("[{name: gw, port: 80}]", true),
        ("[{name: gw, port: 81}]", false),
        ("[{group: example.com, kind: Gateway, name: gw}]", false),
        (
            "[{group: gateway.networking.k8s.io, kind: ListenerSet, name: gw}]",
            false,
        ),
    ] {
        let yaml = BASE.replace("parentRefs: [{name: gw}]", &format!("parentRefs: {parent_refs}"));
        let t = translate(&store_from(&yaml), &options());
        let routes = &t.snapshot.router.listeners[0].routes;
        assert_eq!(routes.len(), usize::from(attached), "{parent_refs}");
    }
}

#[test]
fn every_route_attaches_once_per_listener() {
    let yaml = format!(
        "{BASE}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: second, namespace: ns}}\nspec:\n  parentRefs: [{{name: gw}}, {{name: gw, sectionName: http}}]\n  rules:\n  - backendRefs: [{{name: web, port: 8080}}]\n"
    );
    let t = translate(&store_from(&yaml), &options());
    let mut names: Vec<&str> = t.snapshot.router.listeners[0]
        .routes
        .iter()
        .map(|r| r.name.as_str())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["route", "second"]);
}

#[test]
fn a_route_with_an_unsupported_filter_is_not_accepted() {
    let yaml = BASE.replace(
        "  - backendRefs: [{name: web, port: 8080}, {name: missing, port: 80}]",
        "  - backendRefs: [{name: web, port: 8080}]\n    filters: [{type: CORS}]",
    );
    let t = translate(&store_from(&yaml), &options());
    let route = status_of(&t, "HTTPRoute", "route");
    assert_eq!(route["parents"][0]["conditions"][0]["status"], "False");
    assert_eq!(route["parents"][0]["conditions"][0]["reason"], "UnsupportedValue");
    assert!(t.snapshot.router.listeners[0].routes.is_empty());
}

#[test]
fn routes_from_other_namespaces_need_the_listener_to_allow_them() {
    let route = "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: visitor, namespace: other}\nspec:\n  parentRefs: [{name: gw, namespace: ns}]\n  rules:\n  - backendRefs: []\n";
    let namespace =
        |labels: &str| format!("---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: other, labels: {labels}}}\n");
    let selector = "{namespaces: {from: Selector, selector: {matchLabels: {team: a}}}}";
    for (allowed_routes, labels, accepted) in [
        (None, "{}", false),
        (Some("{namespaces: {from: Same}}"), "{}", false),
        (Some("{namespaces: {from: All}}"), "{}", true),
        (Some(selector), "{team: a}", true),
        (Some(selector), "{team: b}", false),
    ] {
        let listener = match allowed_routes {
            None => "- {name: http, protocol: HTTP, port: 80}".to_string(),
            Some(allowed) => format!("- {{name: http, protocol: HTTP, port: 80, allowedRoutes: {allowed}}}"),
        };
        let yaml = format!(
            "{}{route}{}",
            BASE.replace("- {name: http, protocol: HTTP, port: 80}", &listener),
            namespace(labels)
        );
        let t = translate(&store_from(&yaml), &options());
        let condition = &status_of(&t, "HTTPRoute", "visitor")["parents"][0]["conditions"][0];
        let expected = if accepted { "Accepted" } else { "NotAllowedByListeners" };
        assert_eq!(condition["reason"], expected, "{allowed_routes:?} {labels}");
    }
}

#[test]
fn port_plans_name_their_gateways_once_and_serve_https_with_its_certificates() {
    let yaml = format!(
        "{}{}",
        tls_secrets(),
        gateway_with(&[
            "{name: a, protocol: HTTP, port: 80, hostname: a.example}".to_string(),
            "{name: b, protocol: HTTP, port: 80, hostname: b.example}".to_string(),
            https_listener("tls", 443, "{name: local}"),
        ])
    );
    let t = translate(&store_from(&yaml), &options());
    let port = |number: u16| {
        t.snapshot
            .ports
            .iter()
            .find(|p| p.port == number)
            .unwrap_or_else(|| panic!("port {number}"))
    };
    assert_eq!(port(80).gateways, ["ns/tls"]);
    assert_eq!(port(80).protocol, crate::snapshot::PortProtocol::Http);
    assert!(port(80).certificates.is_empty());
    assert_eq!(port(443).gateways, ["ns/tls"]);
    assert_eq!(port(443).protocol, crate::snapshot::PortProtocol::Https);
    assert_eq!(port(443).certificates.len(), 1);
    assert_eq!(port(443).certificates[0].listener, "ns/tls/tls");
}

#[test]
fn wildcard_hostnames_need_a_matching_suffix_and_one_more_label() {
    use super::routes::hostnames_intersect;
    let hosts = |h: &[&str]| h.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(!hostnames_intersect(
        Some("*.example.com"),
        &hosts(&["foo.example.org"])
    ));
    assert!(!hostnames_intersect(Some("*.example.com"), &hosts(&[".example.com"])));
    assert!(hostnames_intersect(Some("*.example.com"), &hosts(&["A.Example.COM"])));
    assert!(hostnames_intersect(Some("A.EXAMPLE.COM"), &hosts(&["a.example.com"])));
}

#[test]
fn backend_refs_must_be_services_and_another_namespace_needs_a_grant() {
    let grant = "---\napiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\nmetadata: {name: g, namespace: backends}\nspec:\n  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: ns}]\n  to: [{group: '', kind: Service}]\n";
    let remote = "---\napiVersion: v1\nkind: Service\nmetadata: {name: remote, namespace: backends}\nspec:\n  ports: [{name: http, port: 80}]\n";
    for (backend, extra, expected) in [
        ("{name: web, port: 8080}", "", "ResolvedRefs"),
        (
            "{group: example.com, kind: Service, name: web, port: 8080}",
            "",
            "InvalidKind",
        ),
        ("{kind: ConfigMap, name: web, port: 8080}", "", "InvalidKind"),
        ("{name: remote, namespace: backends, port: 80}", "", "RefNotPermitted"),
        ("{name: remote, namespace: backends, port: 80}", grant, "ResolvedRefs"),
    ] {
        let yaml = format!(
            "{}{remote}{extra}",
            BASE.replace(
                "backendRefs: [{name: web, port: 8080}, {name: missing, port: 80}]",
                &format!("backendRefs: [{backend}]")
            )
        );
        let t = translate(&store_from(&yaml), &options());
        let conditions = &status_of(&t, "HTTPRoute", "route")["parents"][0]["conditions"];
        assert_eq!(conditions[1]["type"], "ResolvedRefs");
        assert_eq!(conditions[1]["reason"], expected, "{backend} {extra}");
    }
}

#[test]
fn a_module_file_is_relative_to_the_config_directory_and_one_source_is_required() {
    let yaml = [
        wasm_filter_yaml("relative", "{file: modules/f.wasm}"),
        wasm_filter_yaml("absolute", "{file: /srv/f.wasm}"),
        wasm_filter_yaml("none", "{}"),
        wasm_filter_yaml("two", "{file: f.wasm, http: \"https://example.com/f.wasm\"}"),
        wasm_filter_yaml("no-key", "{configMap: {name: filters, key: ''}}"),
        wasm_filter_yaml("no-name", "{configMap: {name: '', key: plugin.wasm}}"),
    ]
    .concat();
    let mut options = options();
    options.config_dir = Some("/etc/tidegate".into());
    let t = translate(&store_from(&yaml), &options);
    assert_eq!(
        module_of(&t, "relative"),
        &wasmfilters::ModuleLocation::File("/etc/tidegate/modules/f.wasm".into())
    );
    assert_eq!(
        module_of(&t, "absolute"),
        &wasmfilters::ModuleLocation::File("/srv/f.wasm".into())
    );
    for (name, message) in [
        ("none", "set one of file, http, oci, configMap"),
        ("two", "set exactly one of"),
        ("no-key", "set both name and key"),
        ("no-name", "set both name and key"),
    ] {
        let (status, got) = accepted_condition(&t, name);
        assert_eq!(status, "False", "{name}");
        assert!(got.contains(message), "{name}: {got}");
    }
}

#[test]
fn module_bytes_are_equal_and_hash_alike_by_content() {
    use std::hash::{BuildHasher, RandomState};
    let (a, same, other) = (
        wasmfilters::ModuleBytes::new(b"\0asm-a".to_vec()),
        wasmfilters::ModuleBytes::new(b"\0asm-a".to_vec()),
        wasmfilters::ModuleBytes::new(b"\0asm-b".to_vec()),
    );
    assert_eq!(a, same);
    assert_ne!(a, other);
    let hasher = RandomState::new();
    assert_eq!(hasher.hash_one(&a), hasher.hash_one(&same));
    assert_ne!(hasher.hash_one(&a), hasher.hash_one(&other));
}

#[test]
fn module_digests_limits_and_configuration_are_checked_and_carried() {
    let digest = "AB".repeat(32);
    let spec = |name: &str, extra: &str| {
        format!(
            "---\napiVersion: tidegate.dev/v1alpha1\nkind: WasmFilter\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  module: {{file: /srv/f.wasm{extra}}}\n"
        )
    };
    let with = |name: &str, fields: &str| {
        format!(
            "---\napiVersion: tidegate.dev/v1alpha1\nkind: WasmFilter\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  module: {{file: /srv/f.wasm}}\n{fields}"
        )
    };
    let yaml = [
        spec("pinned", &format!(", sha256: {digest}")),
        spec("short", &format!(", sha256: {}", &digest[1..])),
        spec("not-hex", &format!(", sha256: {}", "zz".repeat(32))),
        with("smallest", "  limits: {memory: 1Mi}\n  config: {header: x-hello}\n"),
        with("too-small", "  limits: {memory: 1023Ki}\n"),
        with("no-time", "  limits: {callTimeout: 0s}\n"),
        with("text", "  config: plain text\n"),
        with("open", "  failurePolicy: FailOpen\n"),
    ]
    .concat();
    let t = translate(&store_from(&yaml), &options());
    let plan = |name: &str| {
        t.snapshot
            .filters
            .iter()
            .find(|f| f.name == format!("ns/{name}"))
            .unwrap_or_else(|| panic!("{name} is planned"))
    };
    assert_eq!(plan("pinned").sha256.as_deref(), Some(&*"ab".repeat(32)), "lowercased");
    assert_eq!(plan("smallest").memory_bytes, 1 << 20, "1Mi is enough");
    assert_eq!(plan("smallest").config, br#"{"header":"x-hello"}"#);
    assert_eq!(plan("text").config, b"plain text", "a string is handed over as is");
    assert!(plan("open").fail_open && !plan("text").fail_open);
    for (name, message) in [
        ("short", "is not 64 hex digits"),
        ("not-hex", "is not 64 hex digits"),
        ("too-small", "is too little"),
        ("no-time", "callTimeout must be more than 0"),
    ] {
        let (status, got) = accepted_condition(&t, name);
        assert_eq!(status, "False", "{name}");
        assert!(got.contains(message), "{name}: {got}");
        assert!(
            t.snapshot.filters.iter().all(|f| f.name != format!("ns/{name}")),
            "{name} is not planned"
        );
    }
}

#[test]
fn target_refs_become_the_filter_scope() {
    let filter = |name: &str, phase: &str, targets: &str| {
        format!(
            "---\napiVersion: tidegate.dev/v1alpha1\nkind: WasmFilter\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  module: {{file: /srv/f.wasm}}\n  phase: {phase}\n  targetRefs: {targets}\n"
        )
    };
    let yaml = [
        filter("namespace-wide", "PreRouting", "[]"),
        filter(
            "gateway",
            "PreRouting",
            "[{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]",
        ),
        filter(
            "route",
            "PostRouting",
            "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]",
        ),
        filter("service", "PostBalancing", "[{group: '', kind: Service, name: svc}]"),
        filter("team", "PreRouting", "[{group: '', kind: Namespace, name: team}]"),
        filter(
            "route-too-early",
            "PreRouting",
            "[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}]",
        ),
        filter("pod", "PreRouting", "[{group: '', kind: Pod, name: p}]"),
    ]
    .concat();
    let t = translate(&store_from(&yaml), &options());
    let scope = |name: &str| {
        let plan = t
            .snapshot
            .filters
            .iter()
            .find(|f| f.name == format!("ns/{name}"))
            .unwrap_or_else(|| panic!("{name} is planned"));
        let s = &plan.scope;
        (
            s.gateways.clone(),
            s.routes.clone(),
            s.services.clone(),
            s.namespaces.clone(),
        )
    };
    let v = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(scope("namespace-wide"), (v(&[]), v(&[]), v(&[]), v(&["ns"])));
    assert_eq!(scope("gateway"), (v(&["ns/gw"]), v(&[]), v(&[]), v(&[])));
    assert_eq!(scope("route"), (v(&[]), v(&["ns/r"]), v(&[]), v(&[])));
    assert_eq!(scope("service"), (v(&[]), v(&[]), v(&["ns/svc"]), v(&[])));
    assert_eq!(scope("team"), (v(&[]), v(&[]), v(&[]), v(&["team"])));
    for (name, message) in [
        ("route-too-early", "only known after routing"),
        ("pod", "is not a target"),
    ] {
        let (status, got) = accepted_condition(&t, name);
        assert_eq!(status, "False", "{name}");
        assert!(got.contains(message), "{name}: {got}");
    }
}

#[test]
fn listeners_support_only_http_routes_and_terminated_tls() {
    let local = "certificateRefs: [{name: local}]";
    for (listener, resolved, kinds) in [
        (
            "{name: l, protocol: HTTP, port: 80, allowedRoutes: {kinds: [{kind: HTTPRoute}]}}".to_string(),
            ("True", "ResolvedRefs"),
            1,
        ),
        (
            "{name: l, protocol: HTTP, port: 80, allowedRoutes: {kinds: [{kind: GRPCRoute}]}}".to_string(),
            ("False", "InvalidRouteKinds"),
            0,
        ),
        (
            "{name: l, protocol: HTTP, port: 80, allowedRoutes: {kinds: [{group: example.com, kind: HTTPRoute}]}}"
                .to_string(),
            ("False", "InvalidRouteKinds"),
            0,
        ),
        (
            format!("{{name: l, protocol: HTTPS, port: 443, tls: {{mode: Terminate, {local}}}}}"),
            ("True", "ResolvedRefs"),
            1,
        ),
        (
            format!("{{name: l, protocol: HTTPS, port: 443, tls: {{mode: Passthrough, {local}}}}}"),
            ("False", "InvalidCertificateRef"),
            1,
        ),
    ] {
        let yaml = format!("{}{}", tls_secrets(), gateway_with(std::slice::from_ref(&listener)));
        let t = translate(&store_from(&yaml), &options());
        let (status, reason) = listener_condition(&t, 0, "ResolvedRefs");
        assert_eq!((status.as_str(), reason.as_str()), resolved, "{listener}");
        let supported = &status_of(&t, "Gateway", "tls")["listeners"][0]["supportedKinds"];
        assert_eq!(
            supported.as_array().map(Vec::len),
            Some(kinds),
            "{listener}: {supported}"
        );
    }
}

#[test]
fn an_external_name_service_is_a_backend_on_any_port_with_its_name_to_resolve() {
    let yaml = format!(
        "{BASE}---\napiVersion: v1\nkind: Service\nmetadata: {{name: outside, namespace: ns}}\nspec: {{type: ExternalName, externalName: api.example.com}}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: ext, namespace: ns}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - backendRefs: [{{name: outside, port: 8443}}]\n"
    );
    let t = translate(&store_from(&yaml), &options());
    let plan = &t.snapshot.clusters["ns/outside:8443"];
    assert_eq!(plan.external_name, Some(("api.example.com".to_string(), 8443)));
    assert!(plan.endpoints.is_empty(), "resolved by the control plane, not here");
    let resolved = status_of(&t, "HTTPRoute", "ext")["parents"][0]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "ResolvedRefs")
        .cloned()
        .unwrap();
    assert_eq!(resolved["status"], "True", "{resolved}");
    // Not an L4 frontend: it has no virtual address.
    assert!(
        !t.snapshot
            .services
            .by_address
            .values()
            .any(|f| f.service == "ns/outside")
    );
}

#[test]
fn network_filters_target_services_or_namespaces_in_any_phase() {
    let filter = |name: &str, fields: &str| {
        format!(
            "---\napiVersion: tidegate.dev/v1alpha1\nkind: WasmFilter\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  type: NETWORK\n  module: {{file: /srv/f.wasm}}\n{fields}"
        )
    };
    let yaml = [
        filter("on-service", "  targetRefs: [{group: '', kind: Service, name: db}]\n"),
        filter("on-namespace", ""),
        filter(
            "on-gateway",
            "  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]\n",
        ),
    ]
    .concat();
    let t = translate(&store_from(&yaml), &options());
    let plan = |name: &str| t.snapshot.filters.iter().find(|f| f.name == format!("ns/{name}"));
    let on_service = plan("on-service").expect("planned");
    assert!(on_service.network);
    assert!(on_service.scope.applies_to_connection("ns/db"));
    assert!(!on_service.scope.applies_to_connection("ns/other"));
    assert!(!on_service.scope.applies_to_connection("other/db"));
    let on_namespace = plan("on-namespace").expect("planned");
    assert!(on_namespace.scope.applies_to_connection("ns/anything"));
    assert!(!on_namespace.scope.applies_to_connection("other/anything"));
    assert!(plan("on-gateway").is_none());
    let (status, message) = accepted_condition(&t, "on-gateway");
    assert_eq!(status, "False");
    assert!(message.contains("a NETWORK filter sees TCP connections"), "{message}");
}
