use super::*;
use crate::config::store::{Format, parse_file};

fn store_from(yaml: &str) -> ObjectStore {
    let parsed = parse_file("test.yaml", yaml, Format::Yaml);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let mut store = ObjectStore::default();
    for object in parsed.objects {
        store.objects.insert(object.key(), object);
    }
    store
}

fn options() -> TranslateOptions {
    TranslateOptions {
        address: [127, 0, 0, 1].into(),
        address_pool: None,
        config_dir: None,
        now: "2026-01-01T00:00:00Z".into(),
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

fn status_of<'a>(t: &'a Translation, kind: &str, name: &str) -> &'a serde_json::Value {
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
