use crate::snapshot::{ConnectionProtocol, FrontendKind};
use crate::translate::tests::{options, status_of, store_from};
use crate::translate::translate;

const MESH: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: mesh}
spec:
  clusterIP: 10.96.0.10
  ports:
  - {name: http, port: 80, targetPort: 8080, appProtocol: http}
  - {name: alt, port: 8080}
  - {name: tcp, port: 9090}
  - {name: db, port: 5432}
---
apiVersion: v1
kind: Service
metadata: {name: echo-v1, namespace: mesh}
spec:
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: mesh}
spec:
  clusterIP: None
  ports: [{port: 80}]
"#;

fn route(namespace: &str, name: &str, parent: &str) -> String {
    format!(
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: {namespace}}}
spec:
  hostnames: [ignored.example]
  parentRefs: [{parent}]
  rules:
  - backendRefs: [{{name: echo-v1, namespace: mesh, port: 8080}}]
"#
    )
}

fn accepted(t: &crate::translate::Translation, name: &str) -> Vec<(String, String)> {
    status_of(t, "HTTPRoute", name)["parents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let c = p["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "Accepted")
                .unwrap();
            (
                c["status"].as_str().unwrap().to_string(),
                c["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_service_parent_attaches_to_the_ports_it_names() {
    let yaml = format!(
        "{MESH}{}{}",
        route("mesh", "port80", "{group: '', kind: Service, name: echo, port: 80}"),
        route("mesh", "all", "{group: core, kind: Service, name: echo-v1}")
    );
    let t = translate(&store_from(&yaml), &options());
    let services = &t.snapshot.router.services;
    let on = |service: &str, port: u16| services.iter().find(|s| s.service == service && s.port == port);
    let echo80 = on("mesh/echo", 80).expect("port 80 has the route");
    assert_eq!(echo80.producer.len(), 1);
    assert!(echo80.producer[0].hostnames.is_empty(), "meshes ignore hostnames");
    assert_eq!(
        echo80.producer[0].rules[0].backends[0].cluster.as_deref(),
        Some("mesh/echo-v1:8080")
    );
    assert!(on("mesh/echo", 8080).is_none(), "port scopes the route");
    assert!(on("mesh/echo-v1", 8080).is_some(), "no port: every port");
    assert_eq!(accepted(&t, "port80"), vec![("True".into(), "Accepted".into())]);
    assert_eq!(accepted(&t, "all"), vec![("True".into(), "Accepted".into())]);
    // The frontends know which ports are routed.
    let frontend = &t.snapshot.services.by_address[&"10.96.0.10:80".parse().unwrap()];
    assert!(frontend.routed);
    assert!(!t.snapshot.services.by_address[&"10.96.0.10:8080".parse().unwrap()].routed);
}

#[test]
fn consumer_routes_are_kept_apart_by_namespace_and_need_no_reference_grant() {
    let yaml = format!(
        "{MESH}{}{}",
        route("mesh", "producer", "{group: '', kind: Service, name: echo, port: 80}"),
        route(
            "client",
            "consumer",
            "{group: '', kind: Service, name: echo, namespace: mesh, port: 80}"
        )
    );
    let t = translate(&store_from(&yaml), &options());
    let echo80 = t
        .snapshot
        .router
        .services
        .iter()
        .find(|s| s.service == "mesh/echo" && s.port == 80)
        .unwrap();
    assert_eq!(
        echo80.producer.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["producer"]
    );
    assert_eq!(echo80.consumers["client"][0].name, "consumer");
    assert_eq!(
        echo80.consumers["client"][0].rules[0].backends[0].cluster.as_deref(),
        Some("mesh/echo-v1:8080"),
        "a mesh route's backendRef across namespaces resolves without a ReferenceGrant"
    );
}

#[test]
fn parents_without_a_cluster_ip_or_the_named_port_are_refused() {
    let yaml = format!(
        "{MESH}{}{}{}",
        route("mesh", "headless", "{group: '', kind: Service, name: headless}"),
        route("mesh", "missing", "{group: '', kind: Service, name: nothing}"),
        route("mesh", "noport", "{group: '', kind: Service, name: echo, port: 81}")
    );
    let t = translate(&store_from(&yaml), &options());
    for name in ["headless", "missing", "noport"] {
        assert_eq!(
            accepted(&t, name),
            vec![("False".into(), "NoMatchingParent".into())],
            "{name}"
        );
    }
    assert!(t.snapshot.router.services.is_empty());
}

#[test]
fn ports_say_what_they_speak_by_app_protocol_then_name() {
    let t = translate(&store_from(MESH), &options());
    let protocol = |addr: &str| t.snapshot.services.by_address[&addr.parse().unwrap()].protocol;
    assert_eq!(protocol("10.96.0.10:80"), ConnectionProtocol::Http, "appProtocol: http");
    assert_eq!(
        protocol("10.96.0.10:8080"),
        ConnectionProtocol::Detect,
        "name alt: detect"
    );
    assert_eq!(protocol("10.96.0.10:9090"), ConnectionProtocol::Tcp, "name tcp");
    assert_eq!(
        protocol("10.96.0.10:5432"),
        ConnectionProtocol::Tcp,
        "a server-first port"
    );
    assert_eq!(protocol("10.96.0.11:8080"), ConnectionProtocol::Http, "name http");
    assert_eq!(
        t.snapshot.services.by_address[&"10.96.0.10:80".parse().unwrap()].kind,
        FrontendKind::ClusterIp
    );
}

#[test]
fn app_protocol_replaces_the_name() {
    use crate::config::objects::ServicePort;
    use crate::translate::services::connection_protocol;
    let port = |name: Option<&str>, app: Option<&str>, number: u16| ServicePort {
        name: name.map(str::to_string),
        port: number,
        app_protocol: app.map(str::to_string),
        ..Default::default()
    };
    let cases = [
        (Some("http"), Some("tcp"), 80, ConnectionProtocol::Tcp),
        (Some("tcp"), Some("kubernetes.io/h2c"), 80, ConnectionProtocol::Http),
        (None, Some("kubernetes.io/ws"), 80, ConnectionProtocol::Http),
        (None, Some("kubernetes.io/wss"), 443, ConnectionProtocol::Tcp),
        (Some("grpc-api"), None, 7070, ConnectionProtocol::Http),
        (Some("http2"), None, 80, ConnectionProtocol::Http),
        (Some("HTTPS"), None, 443, ConnectionProtocol::Tcp),
        (Some("web"), None, 80, ConnectionProtocol::Detect),
        (None, Some("example.com/custom"), 80, ConnectionProtocol::Detect),
        (None, None, 6379, ConnectionProtocol::Tcp),
        (None, None, 3000, ConnectionProtocol::Detect),
    ];
    for (name, app, number, expected) in cases {
        assert_eq!(
            connection_protocol(&port(name, app, number)),
            expected,
            "{name:?} {app:?} {number}"
        );
    }
}
