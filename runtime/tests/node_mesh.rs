//! East-west HTTP through `tidegate run --capture`: pods' connections to Service ports that
//! speak HTTP (declared by `appProtocol` or the port name, or detected from the first bytes) go
//! through the HTTP chain, where HTTPRoutes attached to a Service (GAMMA) route them; other
//! ports, and other bytes on undeclared ports, take the L4 path.
//!
//! The lab: one node namespace running tidegate, a client pod in namespace `client`, two echo
//! pods (`v1`, `v2`), a client pod in namespace `consumer` (which has its own route), and a pod
//! that runs a server-first protocol. Checked with real curl and socat: routing by the Service
//! address whatever the Host, 404 when a Service's routes match nothing, the Service itself when
//! it has no route, consumer routes for their namespace only, 503 for an HTTP Service without
//! endpoints, the backend's view of the client (its own address, no X-Forwarded-For), pod IPs
//! never routed, WebSocket upgrades, protocol detection with its TCP fallback and its timeout
//! for server-first protocols, and a NETWORK WasmFilter on a Service's TCP connections. Needs root, `ip`, `nft`, `curl` and `socat` (CI runs as root and installs them).

#[path = "common/lab.rs"]
mod lab;

use std::time::{Duration, Instant};

use lab::{BIN, Lab, Pod, stdout};

const ECHO: &str = "10.96.80.1";
const ECHO_V1: &str = "10.96.80.2";
const ECHO_V2: &str = "10.96.80.3";
const EMPTY: &str = "10.96.80.4";
const SMTP: &str = "10.96.80.5";
const RAW: &str = "10.96.80.6";
const H2: &str = "10.96.80.7";

/// The `tcp-guard` example NETWORK filter on Service `raw`: refuses `deny`, upper-cases what
/// clients send.
fn tcp_guard(deny: &str) -> String {
    let module = std::path::Path::new(env!("TIDEGATE_EXAMPLE_FILTERS")).join("tcp_guard.wasm");
    format!(
        r#"apiVersion: tidegate.dev/v1alpha1
kind: WasmFilter
metadata: {{name: guard, namespace: mesh}}
spec:
  type: NETWORK
  module: {{file: {}}}
  targetRefs: [{{group: "", kind: Service, name: raw}}]
  config: {{deny: ["{deny}"], upper: true}}
---
"#,
        module.display()
    )
}

/// A Pod object, so tidegate knows the client's namespace.
fn pod(name: &str, namespace: &str, ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {namespace}}}\nstatus: {{podIP: {ip}}}\n---\n"
    )
}

/// A Service in namespace `mesh` with one EndpointSlice: `ports` are the Service's, `slice` the
/// slice's, `endpoints` addresses.
fn service(name: &str, cluster_ip: &str, ports: &str, slice: &str, endpoints: &[&str]) -> String {
    let endpoints: String = endpoints.iter().map(|ip| format!("\n- addresses: [{ip}]")).collect();
    let endpoints = if endpoints.is_empty() {
        " []".to_string()
    } else {
        endpoints
    };
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: mesh}}
spec:
  clusterIP: {cluster_ip}
  ports: {ports}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: mesh, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: {slice}
endpoints:{endpoints}
---
"#
    )
}

/// Producer routes on `echo` port 80, a consumer route from namespace `consumer`.
const ROUTES: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: split, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  hostnames: [not-the-host.example]
  rules:
  - matches: [{path: {type: Exact, value: /v2}}]
    backendRefs: [{name: echo-v2, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /v1}}]
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-route, value: split}]}
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-mesh, value: "yes"}]}
    backendRefs: [{name: echo-v1, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mine, namespace: consumer}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, namespace: mesh, port: 80}]
  rules:
  - backendRefs: [{name: echo-v2, namespace: mesh, port: 8080}]
"#;

/// What curl got: status, response headers (lowercased names) and the body.
struct Reply {
    status: u16,
    headers: String,
    body: String,
}

impl Reply {
    /// The echo pod that answered (a 200 from `tidegate echo`).
    #[track_caller]
    fn pod(&self) -> String {
        assert_eq!(self.status, 200, "not a 200: {} {}", self.headers, self.body);
        self.json()["pod"].as_str().unwrap_or_default().to_string()
    }

    #[track_caller]
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// curl from `pod` with extra arguments.
fn get(lab: &Lab, pod: &Pod, url: &str, extra: &[&str]) -> Reply {
    let mut args = vec!["curl", "-sS", "--max-time", "5", "-D", "-", url];
    args.extend(extra);
    let output = lab.exec(&pod.netns, &args);
    assert!(
        output.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = stdout(&output);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text}"));
    Reply {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

#[test]
fn east_west_http_is_routed_by_the_services_routes_and_other_bytes_take_the_l4_path() {
    // Pods: 0 client (namespace client), 1 echo v1, 2 echo v2, 3 client (namespace consumer),
    // 4 a server-first service.
    let lab = Lab::new(5);
    let [client, v1, v2, consumer, smtp] = [0, 1, 2, 3, 4].map(|i| lab.pods[i].clone());
    let echo_v1 = lab.echo(&v1, 8080, "v1");
    let _echo_v2 = lab.echo(&v2, 8080, "v2");
    let h2c_echo = lab.spawn(
        &v2.netns,
        "echo-v2-h2c",
        &[],
        &[
            BIN,
            "echo",
            "--listen",
            &format!("{}:8082", v2.ip),
            "--h2c-listen",
            &format!("{}:9090", v2.ip),
            "--pod",
            "v2-h2c",
        ],
    );
    h2c_echo.wait_for_log("listening on port 9090 (h2c)", lab::STARTUP);
    // A server that speaks first, as SMTP does.
    let _smtp_server = lab.spawn(
        &smtp.netns,
        "smtp",
        &[],
        &[
            "socat",
            &format!("TCP-LISTEN:2525,bind={},fork,reuseaddr", smtp.ip),
            "SYSTEM:echo 220 ready",
        ],
    );
    // A byte echo (cat) behind Service `raw`, whose TCP connections a NETWORK filter sees.
    let _cat_server = lab.spawn(
        &smtp.netns,
        "cat",
        &[],
        &[
            "socat",
            &format!("TCP-LISTEN:7000,bind={},fork,reuseaddr", smtp.ip),
            "EXEC:cat",
        ],
    );
    let config = [
        pod("client", "client", &client.ip),
        pod("consumer", "consumer", &consumer.ip),
        service(
            "echo",
            ECHO,
            "[{name: web, port: 80, targetPort: 8080, appProtocol: http}, {name: alt, port: 8080}]",
            "[{name: web, port: 8080}, {name: alt, port: 8080}]",
            &[&v1.ip],
        ),
        service(
            "echo-v1",
            ECHO_V1,
            "[{name: http, port: 8080}]",
            "[{name: http, port: 8080}]",
            &[&v1.ip],
        ),
        service(
            "echo-v2",
            ECHO_V2,
            "[{name: http, port: 8080}]",
            "[{name: http, port: 8080}]",
            &[&v2.ip],
        ),
        service(
            "empty",
            EMPTY,
            "[{name: http, port: 80}]",
            "[{name: http, port: 80}]",
            &[],
        ),
        service(
            "smtp",
            SMTP,
            "[{name: mail, port: 2525}]",
            "[{name: mail, port: 2525}]",
            &[&smtp.ip],
        ),
        service(
            "raw",
            RAW,
            "[{name: tcp-raw, port: 7000}]",
            "[{name: tcp-raw, port: 7000}]",
            &[&smtp.ip],
        ),
        tcp_guard(&consumer.ip),
        service("h2", H2, "[{port: 9090}]", "[{port: 9090}]", &[&v2.ip]),
        ROUTES.to_string(),
    ]
    .concat();
    let tidegate = lab.tidegate(
        "tidegate",
        &[("mesh.yaml", config)],
        &["--protocol-detect-timeout", "300ms"],
    );
    let url = |ip: &str, port: u16, path: &str| format!("http://{ip}:{port}{path}");

    // The producer routes apply by the Service address, whatever the Host says (and the
    // route's hostnames are ignored).
    let routed = get(&lab, &client, &url(ECHO, 80, "/v1/a"), &["-H", "Host: echo-v2"]);
    assert_eq!(routed.pod(), "v1");
    assert!(routed.headers.contains("x-route: split"), "{}", routed.headers);
    let json = routed.json();
    assert_eq!(json["headers"]["X-Mesh"], serde_json::json!(["yes"]), "{json}");
    assert_eq!(json["host"], "echo-v2", "the Host is passed on as sent");
    // Transparent: no X-Forwarded-For, and the backend sees the client pod's own address.
    assert!(json["headers"].get("X-Forwarded-For").is_none(), "{json}");
    assert_eq!(echo_v1.clients_seen(), vec![client.ip.clone()]);
    assert_eq!(get(&lab, &client, &url(ECHO, 80, "/v2"), &[]).pod(), "v2");
    // Routes attached, none matches: 404 from the mesh.
    assert_eq!(get(&lab, &client, &url(ECHO, 80, "/elsewhere"), &[]).status, 404);

    // The consumer namespace's route replaces the producer routes for its clients only.
    assert_eq!(get(&lab, &consumer, &url(ECHO, 80, "/v1/a"), &[]).pod(), "v2");
    assert_eq!(get(&lab, &consumer, &url(ECHO, 80, "/elsewhere"), &[]).pod(), "v2");

    // A port without routes, undeclared: detected as HTTP, sent to the Service itself.
    assert_eq!(get(&lab, &client, &url(ECHO, 8080, "/elsewhere"), &[]).pod(), "v1");
    // A Service without routes, declared HTTP by its port name.
    assert_eq!(get(&lab, &client, &url(ECHO_V2, 8080, "/"), &[]).pod(), "v2");
    // A pod's address is never routed: straight through.
    let direct = get(&lab, &client, &url(&v1.ip, 8080, "/v2"), &[]);
    assert_eq!(direct.pod(), "v1");
    assert!(!direct.headers.contains("x-route"), "{}", direct.headers);
    // An HTTP Service without endpoints answers 503.
    assert_eq!(get(&lab, &client, &url(EMPTY, 80, "/"), &[]).status, 503);
    // A pod reaching itself through its Service (hairpin): served, from the node's address
    // (a packet from its own address would be dropped as martian).
    let seen_before = echo_v1.clients_seen().len();
    assert_eq!(get(&lab, &v1, &url(ECHO_V1, 8080, "/"), &[]).pod(), "v1");
    assert_eq!(
        &echo_v1.clients_seen()[seen_before..],
        std::slice::from_ref(&lab.node_ip)
    );
    // HTTP/2 with prior knowledge (as gRPC clients speak) is detected as HTTP too, and goes on
    // to the backend as HTTP/2.
    let h2 = get(&lab, &client, &url(H2, 9090, "/"), &["--http2-prior-knowledge"]);
    assert_eq!(h2.pod(), "v2-h2c");
    assert_eq!(
        h2.json()["proto"],
        "HTTP/2.0",
        "the backend is spoken to as the client spoke"
    );
    assert!(h2.headers.starts_with("http/2 200"), "{}", h2.headers);

    // A WebSocket: the upgrade goes through the HTTP chain, then frames flow both ways (the
    // first one sent right behind the handshake).
    let handshake = "GET /ws HTTP/1.1\\r\\nHost: echo-v2\\r\\nConnection: Upgrade\\r\\nUpgrade: websocket\\r\\n\
                     Sec-WebSocket-Version: 13\\r\\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\n\\r\\n";
    let websocket = lab.exec(
        &client.netns,
        &[
            "sh",
            "-c",
            &format!("(printf '{handshake}'; printf '\\201\\205\\000\\000\\000\\000hello'; sleep 1) | socat -t2 - TCP:{ECHO_V2}:8080"),
        ],
    );
    let answer = String::from_utf8_lossy(&websocket.stdout).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 101"), "{answer}");
    assert!(
        answer.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{answer}"
    );
    assert!(
        websocket.stdout.windows(7).any(|w| w == b"\x81\x05hello"),
        "no echoed frame: {answer}"
    );

    // Other bytes on the undeclared port: forwarded untouched at L4 (the echo backend answers
    // its own 400 to them, not tidegate).
    let opaque = lab.exec(
        &client.netns,
        &[
            "sh",
            "-c",
            &format!("printf 'HELLO THERE\\r\\n\\r\\n' | socat -t2 - TCP:{ECHO}:8080"),
        ],
    );
    assert!(stdout(&opaque).starts_with("HTTP/1.1 400"), "{}", stdout(&opaque));

    // A server-first protocol on an undeclared port: after the detection timeout the
    // connection is forwarded at L4, and the server's greeting arrives.
    let start = Instant::now();
    let greeting = lab.exec(
        &client.netns,
        &["sh", "-c", &format!("sleep 2 | socat -t1 - TCP:{SMTP}:2525")],
    );
    assert!(stdout(&greeting).contains("220 ready"), "{:?}", greeting);
    assert!(start.elapsed() < Duration::from_secs(10));

    // A NETWORK filter on Service `raw` sees its TCP connections: the bytes a client sends are
    // upper-cased on the way (the cat echo sends them back), a denied client is refused at
    // once, and the filter's contexts end with the connections (it logs their byte counts).
    let raw = lab.exec(
        &client.netns,
        &["sh", "-c", &format!("printf hello | socat -t2 - TCP:{RAW}:7000")],
    );
    assert_eq!(stdout(&raw), "HELLO", "{raw:?}");
    let denied = lab.exec(
        &consumer.netns,
        &["sh", "-c", &format!("printf hello | socat -t2 - TCP:{RAW}:7000")],
    );
    assert_eq!(stdout(&denied), "", "{denied:?}");
    let start = Instant::now();
    while !tidegate.log().contains(&format!("tcp-guard: {}:", client.ip)) {
        assert!(start.elapsed() < Duration::from_secs(5), "{}", tidegate.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = tidegate.log();
    assert!(log.contains("sent 5 bytes, received 5 bytes"), "{log}");
    assert!(log.contains(&format!("tcp-guard: refusing {}:", consumer.ip)), "{log}");

    let detected = |result: &str| lab.metric(&format!("tidegate_protocol_detections_total{{result=\"{result}\"}}"));
    assert_eq!(["http", "tcp", "timeout"].map(detected), [2.0, 1.0, 1.0]);
    let l4 = |outcome: &str| lab.metric(&format!("tidegate_l4_connections_total{{outcome=\"{outcome}\"}}"));
    // Eleven connections through the HTTP chain; the opaque, the server-first and the
    // filtered ones forwarded; the pod-to-pod one passed through; the denied one closed by the
    // filter.
    assert_eq!(
        ["http", "forwarded", "passed_through", "filter_closed"].map(l4),
        [11.0, 3.0, 1.0, 1.0]
    );
    assert!(
        tidegate.log().contains("east-west HTTP"),
        "no east-west HTTP logged:\n{}",
        tidegate.log()
    );
}
