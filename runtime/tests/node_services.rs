//! Services of every type through `tidegate run --capture`, in a two-node network-namespace
//! lab: tidegate on node A (`node-a`) with three pods (a client and two echo backends), node B
//! with two echo pods, and node B itself as a client from outside the pod networks.
//!
//! What kube-proxy users rely on, checked with real curl and the backends' view of the client:
//! NodePorts, externalIPs and load-balancer IPs reached from outside, externalTrafficPolicy
//! (Cluster: every endpoint, the client address kept where replies come back through node A and
//! the node's address otherwise; Local: only node A's endpoints, the client kept, refused when
//! there are none), the pods' short-circuit to every endpoint, ClusterIPs with round robin,
//! ClientIP affinity, internalTrafficPolicy Local, serving-terminating endpoints, and Services
//! added while running. The Service ports are named `tcp`, so pods' connections take the L4 path
//! too (east-west HTTP through the HTTP chain is `node_mesh.rs`). Needs root, `ip`, `nft` and `curl` (CI runs as root and installs them).

#[path = "common/lab.rs"]
mod lab;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use lab::{Lab, Proc};

/// One Service and its EndpointSlice, whose one port is `tcp` 8080: `endpoints` are
/// (address, node, extra endpoint fields).
fn service(name: &str, spec: &str, status: &str, endpoints: &[(&str, &str, &str)]) -> String {
    service_with_slice_ports(name, spec, status, "[{name: tcp, port: 8080}]", endpoints)
}

/// As [`service`], with the EndpointSlice's `ports` given.
fn service_with_slice_ports(
    name: &str,
    spec: &str,
    status: &str,
    slice_ports: &str,
    endpoints: &[(&str, &str, &str)],
) -> String {
    let endpoints: String = endpoints
        .iter()
        .map(|(ip, node, extra)| format!("\n- {{addresses: [{ip}], nodeName: {node}{extra}}}"))
        .collect();
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
{spec}
status: {status}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: {slice_ports}
endpoints:{endpoints}
---
"#
    )
}

/// The lab with its echo backends: `a1`, `a2` on node A, `b1`, `b2` on node B.
struct Backends {
    lab: Lab,
    echoes: Vec<Proc>,
}

impl Backends {
    fn start() -> Self {
        let lab = Lab::two_nodes(3, 2);
        let remote = lab.remote.clone().expect("two nodes");
        let echoes = vec![
            lab.echo(&lab.pods[1], 8080, "a1"),
            lab.echo(&lab.pods[2], 8080, "a2"),
            lab.echo(&remote.pods[0], 8080, "b1"),
            lab.echo(&remote.pods[1], 8080, "b2"),
        ];
        Self { lab, echoes }
    }

    /// (address, node) of an echo pod by name.
    fn endpoint(&self, name: &str) -> (&str, &str) {
        let remote = self.lab.remote.as_ref().expect("two nodes");
        match name {
            "a1" => (self.lab.pods[1].ip.as_str(), "node-a"),
            "a2" => (self.lab.pods[2].ip.as_str(), "node-a"),
            "b1" => (remote.pods[0].ip.as_str(), "node-b"),
            "b2" => (remote.pods[1].ip.as_str(), "node-b"),
            other => panic!("no pod {other}"),
        }
    }

    fn endpoints(&self, names: &[&str]) -> Vec<(&str, &str, &str)> {
        names
            .iter()
            .map(|n| {
                let (ip, node) = self.endpoint(n);
                (ip, node, "")
            })
            .collect()
    }

    fn echo(&self, name: &str) -> &Proc {
        self.echoes
            .iter()
            .find(|e| e.name == format!("echo-{name}"))
            .expect("echo pod")
    }

    /// The client addresses each echo pod saw, by pod name (pods that saw none left out).
    fn clients(&self) -> Vec<(String, BTreeSet<String>)> {
        ["a1", "a2", "b1", "b2"]
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    self.echo(n).clients_seen().into_iter().collect::<BTreeSet<_>>(),
                )
            })
            .filter(|(_, seen)| !seen.is_empty())
            .collect()
    }

    /// The pods that answer `count` requests from `netns` to `url`.
    fn answering(&self, netns: &str, url: &str, count: usize) -> BTreeSet<String> {
        (0..count).map(|_| self.lab.curl(netns, url).echoed_by()).collect()
    }

    fn node_b(&self) -> String {
        self.lab.remote.as_ref().expect("two nodes").netns.clone()
    }

    fn node_b_ip(&self) -> String {
        self.lab.remote.as_ref().expect("two nodes").ip.clone()
    }
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn clients(entries: &[(&str, &[&str])]) -> Vec<(String, BTreeSet<String>)> {
    entries.iter().map(|(pod, seen)| (pod.to_string(), set(seen))).collect()
}

const EXTERNAL_IP: &str = "198.51.100.10";
const BALANCER_IP: &str = "198.51.100.11";

#[test]
fn node_ports_external_ips_and_load_balancers_obey_the_external_traffic_policy() {
    let b = Backends::start();
    let lab = &b.lab;
    let node_b = b.node_b();
    let node_b_ip = b.node_b_ip();
    let pod0 = lab.pods[0].clone();
    let config = [
        service(
            "np-cluster",
            "  type: NodePort\n  clusterIP: 10.96.72.1\n  ports: [{name: tcp, port: 80, nodePort: 30080}]",
            "{}",
            &b.endpoints(&["a1", "b1"]),
        ),
        service(
            "np-local",
            "  type: NodePort\n  clusterIP: 10.96.72.2\n  externalTrafficPolicy: Local\n  ports: [{name: tcp, port: 80, nodePort: 30081}]",
            "{}",
            &b.endpoints(&["a2", "b2"]),
        ),
        service(
            "external",
            &format!("  clusterIP: 10.96.72.3\n  externalIPs: [{EXTERNAL_IP}]\n  ports: [{{name: tcp, port: 80}}]"),
            "{}",
            &b.endpoints(&["a1"]),
        ),
        service(
            "balanced",
            "  type: LoadBalancer\n  clusterIP: 10.96.72.4\n  externalTrafficPolicy: Local\n  ports: [{name: tcp, port: 80, nodePort: 30083}]",
            &format!("{{loadBalancer: {{ingress: [{{ip: {BALANCER_IP}}}]}}}}"),
            &b.endpoints(&["b2"]),
        ),
    ]
    .concat();
    let tidegate = lab.tidegate("tidegate", &[("services.yaml", config)], &["--node-name", "node-a"]);
    // Node B routes the external and load-balancer addresses to node A, as a router would.
    for ip in [EXTERNAL_IP, BALANCER_IP] {
        let routed = lab.exec(
            &node_b,
            &["ip", "route", "add", &format!("{ip}/32"), "via", &lab.node_ip],
        );
        assert!(routed.status.success(), "{}", String::from_utf8_lossy(&routed.stderr));
    }
    let node_port = |port: u16| format!("http://{}:{port}/", lab.node_ip);

    // externalTrafficPolicy Cluster, from outside: both nodes' endpoints. Node A's endpoint
    // sees the client (its replies come back through node A); node B's sees node A, as behind
    // kube-proxy's masquerade, or its replies would bypass node A.
    assert_eq!(b.answering(&node_b, &node_port(30080), 4), set(&["a1", "b1"]));
    assert_eq!(b.clients(), clients(&[("a1", &[&node_b_ip]), ("b1", &[&lab.node_ip])]));

    // externalTrafficPolicy Local, from outside: only node A's endpoint, client kept.
    assert_eq!(b.answering(&node_b, &node_port(30081), 4), set(&["a2"]));
    assert_eq!(b.echo("a2").clients_seen(), vec![node_b_ip.clone(); 4]);
    // From node A's own pods: every endpoint (kube-proxy's short-circuit), client kept.
    assert_eq!(b.answering(&pod0.netns, &node_port(30081), 4), set(&["a2", "b2"]));
    assert_eq!(b.echo("b2").clients_seen(), vec![pod0.ip.clone(); 2]);

    // An externalIP from outside.
    let before = b.echo("a1").clients_seen().len();
    assert_eq!(b.answering(&node_b, &format!("http://{EXTERNAL_IP}/"), 2), set(&["a1"]));
    assert_eq!(
        b.echo("a1").clients_seen()[before..],
        [node_b_ip.clone(), node_b_ip.clone()]
    );

    // A load-balancer IP with externalTrafficPolicy Local and no endpoint on node A: refused
    // from outside (on its node port too), served to node A's pods.
    lab.curl(&node_b, &format!("http://{BALANCER_IP}/")).assert_refused();
    lab.curl(&node_b, &node_port(30083)).assert_refused();
    assert_eq!(
        b.answering(&pod0.netns, &format!("http://{BALANCER_IP}/"), 1),
        set(&["b2"])
    );

    // A node port nobody serves is not captured: the node refuses it itself.
    lab.curl(&node_b, &node_port(30099)).assert_refused();

    // A NodePort Service added while running is reachable from outside once its version is
    // served (the capture's set follows the configuration).
    let added = service(
        "np-added",
        "  type: NodePort\n  clusterIP: 10.96.72.5\n  ports: [{name: tcp, port: 80, nodePort: 30082}]",
        "{}",
        &b.endpoints(&["a2"]),
    );
    std::fs::write(lab.path("config").join("added.yaml"), added).expect("write added.yaml");
    let start = Instant::now();
    loop {
        let got = lab.curl(&node_b, &node_port(30082));
        if got.code == 0 {
            assert_eq!(got.echoed_by(), "a2");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the added NodePort never answered: {got:?}\n{}",
            tidegate.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cluster_ips_round_robin_stick_by_client_ip_and_keep_to_local_and_serving_endpoints() {
    let b = Backends::start();
    let lab = &b.lab;
    let pod0 = lab.pods[0].clone();
    let (a1_ip, _) = b.endpoint("a1");
    let (a2_ip, _) = b.endpoint("a2");
    let config = [
        service(
            "spread",
            "  clusterIP: 10.96.73.1\n  ports: [{name: tcp, port: 80, targetPort: web}]",
            "{}",
            &b.endpoints(&["a1", "a2", "b1"]),
        ),
        service(
            "sticky",
            "  clusterIP: 10.96.73.2\n  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 300}}\n  ports: [{name: tcp, port: 80}]",
            "{}",
            &b.endpoints(&["a1", "a2", "b1"]),
        ),
        service(
            "local-only",
            "  clusterIP: 10.96.73.3\n  internalTrafficPolicy: Local\n  ports: [{name: tcp, port: 80}]",
            "{}",
            &b.endpoints(&["b1", "b2"]),
        ),
        service(
            "rollout",
            "  clusterIP: 10.96.73.4\n  ports: [{name: tcp, port: 80}]",
            "{}",
            &[
                (a1_ip, "node-a", ", conditions: {ready: false, serving: true, terminating: true}"),
                (a2_ip, "node-a", ", conditions: {ready: false}"),
            ],
        ),
    ]
    .concat();
    let _tidegate = lab.tidegate("tidegate", &[("services.yaml", config)], &["--node-name", "node-a"]);
    let cluster_ip = |ip: &str| format!("http://{ip}/");

    // Round robin over both nodes' endpoints; the remote endpoint sees the client pod too
    // (the cluster routes node A's pod network back to node A).
    assert_eq!(
        b.answering(&pod0.netns, &cluster_ip("10.96.73.1"), 6),
        set(&["a1", "a2", "b1"])
    );
    assert_eq!(
        b.clients(),
        clients(&[("a1", &[&pod0.ip]), ("a2", &[&pod0.ip]), ("b1", &[&pod0.ip])])
    );

    // ClientIP affinity: every connection of the client lands on one endpoint; another
    // client is placed on its own.
    let sticky = b.answering(&pod0.netns, &cluster_ip("10.96.73.2"), 6);
    assert_eq!(sticky.len(), 1, "affinity broken: {sticky:?}");
    let other_client = b.answering(&lab.pods[1].netns, &cluster_ip("10.96.73.2"), 4);
    assert_eq!(other_client.len(), 1, "affinity broken: {other_client:?}");

    // internalTrafficPolicy Local with endpoints only on node B: refused at once.
    let refused = lab.curl(&pod0.netns, &cluster_ip("10.96.73.3"));
    refused.assert_refused();
    assert!(refused.took < Duration::from_secs(2), "{refused:?}");

    // No ready endpoint: the one serving while terminating answers, never the unready one.
    assert_eq!(b.answering(&pod0.netns, &cluster_ip("10.96.73.4"), 4), set(&["a1"]));
}

const UDP_EXTERNAL_IP: &str = "198.51.100.20";

#[test]
fn udp_to_a_service_is_forwarded_per_flow() {
    let b = Backends::start();
    let lab = &b.lab;
    let remote = lab.remote.clone().expect("two nodes");
    let node_b = b.node_b();
    let node_b_ip = b.node_b_ip();
    let pod0 = lab.pods[0].clone();
    let _servers = [
        lab.udp_echo(&lab.pods[1], 9053, "a1"),
        lab.udp_echo(&remote.pods[0], 9053, "b1"),
    ];
    let (a1_ip, _) = b.endpoint("a1");
    let (b1_ip, _) = b.endpoint("b1");
    const DNS_SLICE_PORTS: &str = "[{name: dns, port: 9053, protocol: UDP}]";
    let config = service_with_slice_ports(
        "dns",
        &format!(
            "  type: NodePort\n  clusterIP: 10.96.74.1\n  externalIPs: [{UDP_EXTERNAL_IP}]\n  externalTrafficPolicy: Local\n  ports: [{{name: dns, port: 53, protocol: UDP, nodePort: 30053}}, {{name: dns-tcp, port: 53, protocol: TCP, nodePort: 30054}}]"
        ),
        "{}",
        DNS_SLICE_PORTS,
        &[(a1_ip, "node-a", ""), (b1_ip, "node-b", "")],
    ) + "apiVersion: v1\nkind: Service\nmetadata: {name: silent, namespace: default}\nspec:\n  clusterIP: 10.96.74.2\n  ports: [{port: 53, protocol: UDP}]\n";
    let tidegate = lab.tidegate("tidegate", &[("services.yaml", config)], &["--node-name", "node-a"]);
    let routed = lab.exec(
        &node_b,
        &[
            "ip",
            "route",
            "add",
            &format!("{UDP_EXTERNAL_IP}/32"),
            "via",
            &lab.node_ip,
        ],
    );
    assert!(routed.status.success(), "{}", String::from_utf8_lossy(&routed.stderr));
    let query = |netns: &str, target: &str, datagrams: usize| {
        lab.udp_query(netns, target, datagrams, Duration::from_millis(200))
    };

    // Each query is a new flow: round robin over both nodes' endpoints; the client pod's
    // address is kept on both (its replies come back through node A).
    let mut answered = BTreeSet::new();
    for _ in 0..4 {
        let replies = query(&pod0.netns, "10.96.74.1:53", 1);
        assert_eq!(replies.len(), 1, "one reply per query: {replies:?}\n{}", tidegate.log());
        let fields: Vec<&str> = replies[0].split(' ').collect();
        assert_eq!(fields[1], format!("peer={}", pod0.ip), "{replies:?}");
        answered.insert(fields[0].to_string());
    }
    assert_eq!(answered, set(&["pod=a1", "pod=b1"]));

    // Datagrams of one flow (one client socket) stay on its endpoint; the later ones reach the
    // flow's own socket rather than the shared one.
    let replies = query(&pod0.netns, "10.96.74.1:53", 3);
    assert_eq!(replies.len(), 3, "{replies:?}\n{}", tidegate.log());
    assert!(
        replies.iter().all(|r| r == &replies[0]),
        "a flow changed endpoints or source ports: {replies:?}"
    );

    // From outside, to the externalIP (externalTrafficPolicy Local): only node A's endpoint,
    // which sees the client.
    let mut seen = BTreeSet::new();
    for _ in 0..4 {
        let replies = query(&node_b, &format!("{UDP_EXTERNAL_IP}:53"), 1);
        assert_eq!(replies.len(), 1, "{replies:?}\n{}", tidegate.log());
        let (pod_and_peer, _port) = replies[0].rsplit_once(' ').expect("pod=.. peer=.. port=..");
        seen.insert(pod_and_peer.to_string());
    }
    assert_eq!(seen, set(&[&format!("pod=a1 peer={node_b_ip}")]));

    // The UDP node port, from outside: the same.
    let replies = query(&node_b, &format!("{}:30053", lab.node_ip), 2);
    assert_eq!(
        replies
            .iter()
            .map(|r| r.rsplit_once(' ').map(|(p, _)| p).unwrap_or(r))
            .collect::<Vec<_>>(),
        vec![format!("pod=a1 peer={node_b_ip}"); 2],
        "{}",
        tidegate.log()
    );

    // No endpoint: the datagram is dropped, and nothing answers.
    assert_eq!(query(&pod0.netns, "10.96.74.2:53", 1), Vec::<String>::new());
    // A flow whose endpoint goes away ends with the version that removes it: the client's
    // next datagram starts a flow to the current endpoint (a DNS client must not keep
    // talking to a pod that is gone).
    let moving = |pod: &str| {
        let (ip, node) = b.endpoint(pod);
        service_with_slice_ports(
            "moving",
            "  clusterIP: 10.96.74.3\n  ports: [{name: dns, port: 53, protocol: UDP}]",
            "{}",
            DNS_SLICE_PORTS,
            &[(ip, node, "")],
        )
    };
    let loaded = || tidegate.log().matches("configuration in effect").count();
    // Written whole and renamed into place, as editors and ConfigMap volumes do, so no version
    // is read from a half-written file.
    let write_moving = |pod: &str| {
        let staged = lab.path("moving.yaml.staged");
        std::fs::write(&staged, moving(pod)).expect("write moving.yaml");
        std::fs::rename(&staged, lab.path("config").join("moving.yaml")).expect("rename moving.yaml");
    };
    let before = loaded();
    write_moving("a1");
    let start = std::time::Instant::now();
    while loaded() == before {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "moving.yaml was never loaded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let replies = std::thread::scope(|scope| {
        let flow = scope.spawn(|| lab.udp_query(&pod0.netns, "10.96.74.3:53", 16, Duration::from_millis(250)));
        std::thread::sleep(Duration::from_millis(750));
        write_moving("b1");
        flow.join().expect("the UDP client")
    });
    let pods: Vec<&str> = replies
        .iter()
        .map(|r| r.split(' ').next().unwrap_or_default())
        .collect();
    let switched = pods.iter().position(|p| *p == "pod=b1").unwrap_or(pods.len());
    assert!(
        switched > 0 && switched < pods.len() && pods[switched..].iter().all(|p| *p == "pod=b1"),
        "the flow should move from a1 to b1 once, for good: {pods:?}\n{}",
        tidegate.log()
    );
    assert!(pods[..switched].iter().all(|p| *p == "pod=a1"), "{pods:?}");

    let udp = |outcome: &str| lab.metric(&format!("tidegate_l4_udp_flows_total{{outcome=\"{outcome}\"}}"));
    assert_eq!(
        ["opened", "no_endpoint", "no_such_port", "failed"].map(udp),
        [12.0, 1.0, 0.0, 0.0],
        "UDP flows by outcome"
    );
}
