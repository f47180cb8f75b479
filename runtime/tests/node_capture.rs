//! `tidegate run --capture` in a network-namespace lab: the real binary inside a node namespace,
//! `tidegate echo` in a pod, real curl in another. A ClusterIP that nobody owns reaches its
//! endpoint through the capture with the client pod's address kept; a Service without
//! endpoints is refused at once; pod-to-pod traffic passes through; the capture is removed on
//! SIGTERM, and a capture left by a SIGKILLed run is removed at the next start. Needs root,
//! `ip`, `nft` and `curl` (CI runs as root and installs them).

#[path = "common/lab.rs"]
mod lab;

use std::time::Duration;

use lab::{BIN, Curl, Lab, Proc};

const CLUSTER_IP: &str = "10.96.71.10";
const EMPTY_CLUSTER_IP: &str = "10.96.71.11";

/// The Service with the echo pod as its endpoint (and, when given, a pod where nothing
/// listens, which refuses), and a Service with no endpoint at all.
fn services(backend_ip: &str, refusing_ip: Option<&str>) -> String {
    let refusing = refusing_ip
        .map(|ip| format!("\n- addresses: [{ip}]"))
        .unwrap_or_default();
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIP: {CLUSTER_IP}
  ports: [{{name: tcp, port: 80, targetPort: 8080}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-1, namespace: default, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
ports: [{{name: tcp, port: 8080}}]
endpoints:
- addresses: [{backend_ip}]{refusing}
---
apiVersion: v1
kind: Service
metadata: {{name: empty, namespace: default}}
spec:
  clusterIP: {EMPTY_CLUSTER_IP}
  ports: [{{port: 80}}]
"#
    )
}

/// The echo backend in pod 1, listening on its pod address.
fn start_echo(lab: &Lab) -> Proc {
    lab.echo(&lab.pods[1], 8080, "echo")
}

/// tidegate with the capture, in the node namespace; returns once the configuration is served.
fn start_tidegate(lab: &Lab, log: &str) -> Proc {
    let refusing = lab.pods.get(2).map(|p| p.ip.as_str());
    lab.tidegate(log, &[("services.yaml", services(&lab.pods[1].ip, refusing))], &[])
}

/// curl in the client pod (pod 0).
fn curl(lab: &Lab, url: &str) -> Curl {
    lab.curl(&lab.pods[0].netns, url)
}

fn assert_capture_gone(lab: &Lab) {
    assert!(
        !lab.node_tables().contains("tidegate"),
        "table left: {}",
        lab.node_tables()
    );
    assert!(
        !lab.node_rules().contains("0x7467"),
        "ip rule left: {}",
        lab.node_rules()
    );
    assert_eq!(lab.node_routes("7467").trim(), "", "route left in table 7467");
}

#[test]
fn cluster_ip_tcp_reaches_an_endpoint_with_the_client_address_kept() {
    // Pod 0 is the client, pod 1 the echo backend, pod 2 an endpoint where nothing listens.
    let lab = Lab::new(3);
    let client_ip = lab.pods[0].ip.clone();
    let echo = start_echo(&lab);
    // Somebody else's table and rule on the node: tidegate must leave them alone.
    let foreign = lab.exec(&lab.node, &["nft", "add", "table", "ip", "someone-else"]);
    assert!(foreign.status.success());
    let foreign = lab.exec(&lab.node, &["ip", "rule", "add", "fwmark", "0x1", "lookup", "100"]);
    assert!(foreign.status.success());
    let mut tidegate = start_tidegate(&lab, "tidegate");
    assert!(lab.node_tables().contains("table ip tidegate"), "{}", lab.node_tables());
    assert!(
        lab.node_rules().contains("fwmark 0x7467 lookup 7467"),
        "{}",
        lab.node_rules()
    );

    // ClusterIP → the ready endpoint; the backend sees the client pod, not the node.
    let first = curl(&lab, &format!("http://{CLUSTER_IP}/"));
    assert_eq!(first.echoed_by(), "echo");
    assert!(first.out.contains("\"host\": \"10.96.71.10\""), "{first:?}");
    assert_eq!(echo.clients_seen(), vec![client_ip.clone()]);
    assert!(
        tidegate
            .log()
            .contains(&format!("original={CLUSTER_IP}:80 endpoint={}:8080", lab.pods[1].ip)),
        "tidegate did not forward it:\n{}",
        tidegate.log()
    );

    // An endpoint that refuses is skipped: whichever endpoint round robin starts with, every
    // connection reaches the echo pod.
    for _ in 0..3 {
        curl(&lab, &format!("http://{CLUSTER_IP}/")).echoed_by();
    }
    assert_eq!(echo.clients_seen(), vec![client_ip.clone(); 4]);
    assert!(
        tidegate.log().contains("trying the next endpoint"),
        "the refusing endpoint was never tried:\n{}",
        tidegate.log()
    );

    // A Service without endpoints: reset at once, no timeout.
    let refused = curl(&lab, &format!("http://{EMPTY_CLUSTER_IP}/"));
    refused.assert_refused();
    assert!(
        refused.took < Duration::from_secs(2),
        "refusing took {:?}",
        refused.took
    );

    // A port the ClusterIP does not serve: refused too.
    curl(&lab, &format!("http://{CLUSTER_IP}:81/")).assert_refused();

    // Pod to pod: captured, and passed through to the original destination, client kept.
    let direct = format!("http://{}:8080/", lab.pods[1].ip);
    curl(&lab, &direct).echoed_by();
    assert_eq!(echo.clients_seen(), vec![client_ip.clone(); 5]);
    assert!(
        tidegate
            .log()
            .contains(&format!("original={ip}:8080 endpoint={ip}:8080", ip = lab.pods[1].ip)),
        "pod-to-pod traffic was not captured:\n{}",
        tidegate.log()
    );

    // Every outcome is counted.
    let l4 = |outcome: &str| lab.metric(&format!("tidegate_l4_connections_total{{outcome=\"{outcome}\"}}"));
    assert_eq!(
        [
            "forwarded",
            "passed_through",
            "no_endpoint",
            "no_such_port",
            "connect_failed"
        ]
        .map(l4),
        [4.0, 1.0, 1.0, 1.0, 0.0]
    );

    // SIGTERM: the capture goes, somebody else's table and rule stay, and pods still talk.
    let status = tidegate.stop("TERM", Duration::from_secs(10));
    assert!(status.success(), "tidegate exited with {status}:\n{}", tidegate.log());
    assert!(tidegate.log().contains("capture removed"), "{}", tidegate.log());
    assert_capture_gone(&lab);
    assert!(lab.node_tables().contains("someone-else"), "{}", lab.node_tables());
    assert!(
        lab.node_rules().contains("fwmark 0x1 lookup 100"),
        "{}",
        lab.node_rules()
    );
    curl(&lab, &direct).echoed_by();
}

#[test]
fn a_capture_left_by_a_killed_run_is_removed_at_the_next_start() {
    let lab = Lab::new(2);
    let echo = start_echo(&lab);
    let mut killed = start_tidegate(&lab, "tidegate-killed");
    let status = killed.stop("KILL", Duration::from_secs(10));
    assert!(!status.success());
    // SIGKILL leaves everything behind.
    assert!(lab.node_tables().contains("table ip tidegate"), "{}", lab.node_tables());
    assert!(lab.node_rules().contains("fwmark 0x7467"), "{}", lab.node_rules());

    let mut tidegate = start_tidegate(&lab, "tidegate");
    assert!(
        tidegate
            .log()
            .contains("removed the capture an earlier tidegate run left behind"),
        "{}",
        tidegate.log()
    );
    // One table and one rule, not two.
    assert_eq!(lab.node_tables().matches("table ip tidegate").count(), 1);
    assert_eq!(
        lab.node_rules().matches("fwmark 0x7467").count(),
        1,
        "{}",
        lab.node_rules()
    );
    curl(&lab, &format!("http://{CLUSTER_IP}/")).echoed_by();
    assert_eq!(echo.clients_seen(), vec![lab.pods[0].ip.clone()]);

    let status = tidegate.stop("INT", Duration::from_secs(10));
    assert!(status.success(), "tidegate exited with {status}:\n{}", tidegate.log());
    assert_capture_gone(&lab);
}

#[test]
fn capture_without_privileges_says_what_is_missing() {
    let lab = Lab::new(0);
    let config = lab.path("config");
    std::fs::create_dir_all(&config).expect("config dir");
    // As nobody, with no capabilities.
    let output = lab.exec(
        &lab.node,
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            BIN,
            "run",
            "--config-dir",
            config.to_str().expect("utf-8 path"),
            "--capture",
            "--pod-cidr",
            &lab.pod_cidr,
            "--admin",
            "127.0.0.1:15000",
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "tidegate ran without privileges: {stderr}");
    assert!(stderr.contains("CAP_NET_ADMIN") && stderr.contains("root"), "{stderr}");
    assert!(!lab.node_tables().contains("tidegate"));

    // --capture without a pod network is refused by the command line.
    let output = lab.exec(
        &lab.node,
        &[
            BIN,
            "run",
            "--config-dir",
            config.to_str().expect("utf-8 path"),
            "--capture",
        ],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("--pod-cidr"), "{stderr}");
}

#[test]
fn labs_left_by_a_killed_test_run_are_removed() {
    // A namespace named like a lab of a process that no longer exists.
    let mut gone = std::process::Command::new("true").spawn().expect("run true");
    let dead_pid = gone.id();
    gone.wait().expect("wait for true");
    let leftover = format!("tg-{dead_pid}-0-node");
    let made = std::process::Command::new("ip")
        .args(["netns", "add", &leftover])
        .status()
        .expect("ip netns add");
    assert!(made.success());
    let _lab = Lab::new(0);
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let list = lab::stdout(&list);
    if list.contains(&leftover) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &leftover])
            .status();
        panic!("{leftover} was not removed: {list}");
    }
}
