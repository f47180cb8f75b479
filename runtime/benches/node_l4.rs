//! The node proxy's L4 path against no proxy at all, in a network-namespace lab (as root):
//! pod 0 is the client, pod 1 the server (iperf3 and `tidegate echo`). Each round measures
//! the uncaptured path (pod 0 → pod 1's address, no tidegate running, the kernel forwards) and
//! the captured one (pod 0 → a ClusterIP, tidegate with `--capture` picks pod 1 and splices):
//!
//! - iperf3 throughput (one TCP stream);
//! - new TCP connections per second (wrk with `Connection: close`: one request per connection);
//! - HTTP requests per second over keep-alive connections, carried by the L4 path (a Service
//!   port named `tcp-http`) and by the HTTP chain (a port named `http`: router and balancer
//!   filters, the client's address kept upstream).
//!
//! tidegate runs on CPU 0 (`taskset`); the client and the server run on CPU 1. Rounds alternate
//! the two paths so drift on this shared machine hits both. Method and results:
//! benches/README.md. `BENCH_ROUNDS` (5), `BENCH_SECONDS` (5).

#[path = "../tests/common/lab.rs"]
mod lab;

mod common;

use std::time::Duration;

use common::{CLIENT_CPU, Load, PROXY_CPU, cpu_seconds, env_u64, median, wrk_in};
use lab::{BIN, Lab, Proc};

const CLUSTER_IP: &str = "10.96.80.1";

fn config(server_ip: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata: {{name: bench, namespace: default}}
spec:
  clusterIP: {CLUSTER_IP}
  ports: [{{name: tcp-iperf, port: 5201}}, {{name: tcp-http, port: 80}}, {{name: http, port: 8000}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: bench-1, namespace: default, labels: {{kubernetes.io/service-name: bench}}}}
addressType: IPv4
ports: [{{name: tcp-iperf, port: 5202}}, {{name: tcp-http, port: 8081}}, {{name: http, port: 8081}}]
endpoints:
- addresses: [{server_ip}]
"#
    )
}

/// Reads one number of a round.
type Metric = fn(&Round) -> f64;

/// One round's numbers for one path.
#[derive(Debug, Default, Clone, Copy)]
struct Round {
    gbit_per_s: f64,
    connections_per_s: f64,
    keepalive_rps: f64,
    /// Keep-alive requests/s through the HTTP chain (uncaptured: the same as `keepalive_rps`).
    l7_keepalive_rps: f64,
    /// tidegate's CPU microseconds per request through the HTTP chain (NaN uncaptured).
    l7_cpu_us_per_request: f64,
    /// tidegate's CPU seconds per GB moved by iperf3 (NaN uncaptured).
    cpu_s_per_gb: f64,
    /// tidegate's CPU microseconds per new connection (NaN uncaptured).
    cpu_us_per_connection: f64,
    /// tidegate's CPU over wall time during the keep-alive run (1.0: its core was saturated).
    keepalive_cpu_busy: f64,
}

fn iperf(lab: &Lab, target: &str, port: u16, seconds: u64) -> f64 {
    let output = lab.exec(
        &lab.pods[0].netns,
        &[
            "taskset",
            "-c",
            CLIENT_CPU,
            "iperf3",
            "-c",
            target,
            "-p",
            &port.to_string(),
            "-t",
            &seconds.to_string(),
            "-J",
        ],
    );
    let text = lab::stdout(&output);
    let report: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("iperf3 report ({e}):\n{text}"));
    report["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no throughput in the iperf3 report:\n{text}"))
        / 1e9
}

fn measure(lab: &Lab, target: &str, tidegate: Option<u32>, seconds: u64) -> Round {
    let cpu = |pid: Option<u32>| pid.map(cpu_seconds).unwrap_or(f64::NAN);
    let before = cpu(tidegate);
    // The uncaptured path uses its own server ports, so neither path meets the other's
    // connections in TIME_WAIT on the server (their TCP timestamps come from another network
    // namespace, and PAWS would hold a reused port back for a second).
    let captured = target == CLUSTER_IP;
    // The ClusterIP's port 5201 leads to the server's 5202.
    let gbit_per_s = iperf(lab, target, 5201, seconds);
    let iperf_cpu = cpu(tidegate) - before;
    let load = Load {
        warmup_seconds: 1,
        seconds,
        connections: 16,
    };
    let url = if captured {
        format!("http://{target}:80/")
    } else {
        format!("http://{target}:8080/")
    };
    let netns = Some(lab.pods[0].netns.as_str());
    let closing = wrk_in(netns, &url, &["-H", "Connection: close"], load, tidegate);
    let keepalive = wrk_in(netns, &url, &[], load, tidegate);
    let l7 = if captured {
        wrk_in(netns, &format!("http://{target}:8000/"), &[], load, tidegate)
    } else {
        keepalive
    };
    Round {
        gbit_per_s,
        connections_per_s: closing.rps,
        keepalive_rps: keepalive.rps,
        l7_keepalive_rps: l7.rps,
        l7_cpu_us_per_request: l7.cpu_us_per_request,
        cpu_s_per_gb: iperf_cpu / (gbit_per_s * seconds as f64 / 8.0),
        cpu_us_per_connection: closing.cpu_us_per_request,
        keepalive_cpu_busy: keepalive.cpu_busy,
    }
}

fn start_tidegate(lab: &Lab) -> Proc {
    let config_dir = lab.path("config");
    let tidegate = lab.spawn(
        &lab.node,
        "tidegate",
        &["TIDEGATE_LOG=warn,tidegate::app=info"],
        &[
            "taskset",
            "-c",
            PROXY_CPU,
            BIN,
            "run",
            "--config-dir",
            config_dir.to_str().expect("utf-8 path"),
            "--capture",
            "--pod-cidr",
            &lab.pod_cidr,
            "--workers",
            "1",
            "--admin",
            "127.0.0.1:15000",
        ],
    );
    tidegate.wait_for_log("configuration in effect", Duration::from_secs(30));
    tidegate
}

fn main() {
    let rounds = env_u64("BENCH_ROUNDS", 5);
    let seconds = env_u64("BENCH_SECONDS", 5);
    let lab = Lab::new(2);
    let server = lab.pods[1].clone();
    std::fs::create_dir_all(lab.path("config")).expect("config dir");
    std::fs::write(lab.path("config").join("bench.yaml"), config(&server.ip)).expect("config");
    // 5201 and 8080 for the uncaptured path, 5202 and 8081 behind the ClusterIP.
    let servers: Vec<Proc> = [5201, 5202]
        .iter()
        .map(|port| {
            let port = port.to_string();
            lab.spawn(
                &server.netns,
                &format!("iperf3-{port}"),
                &[],
                &["taskset", "-c", CLIENT_CPU, "iperf3", "-s", "-p", &port],
            )
        })
        .chain([8080, 8081].iter().map(|port| {
            lab.spawn(
                &server.netns,
                &format!("echo-{port}"),
                &["TIDEGATE_LOG=warn"],
                &[
                    "taskset",
                    "-c",
                    CLIENT_CPU,
                    BIN,
                    "echo",
                    "--listen",
                    &format!("{}:{port}", server.ip),
                ],
            )
        }))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(servers.len(), 4);
    println!("{}", common::machine());
    let (mut direct, mut captured) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let d = measure(&lab, &server.ip, None, seconds);
        let mut tidegate = start_tidegate(&lab);
        let c = measure(&lab, CLUSTER_IP, Some(tidegate.pid()), seconds);
        tidegate.stop("TERM", Duration::from_secs(10));
        println!("round {round}: uncaptured {d:?}\n         captured   {c:?}");
        direct.push(d);
        captured.push(c);
    }
    let med = |rounds: &[Round], f: Metric| median(&rounds.iter().map(f).collect::<Vec<_>>());
    println!("\n| metric (median of {rounds} rounds, {seconds} s each) | uncaptured | captured | ratio |");
    println!("|---|---:|---:|---:|");
    let rows: [(&str, Metric); 4] = [
        ("iperf3 throughput, Gbit/s", |r| r.gbit_per_s),
        ("new TCP connections/s (HTTP, Connection: close)", |r| {
            r.connections_per_s
        }),
        ("HTTP requests/s, keep-alive, 16 connections, L4 path", |r| {
            r.keepalive_rps
        }),
        ("HTTP requests/s, keep-alive, 16 connections, HTTP chain", |r| {
            r.l7_keepalive_rps
        }),
    ];
    for (name, f) in rows {
        let (d, c) = (med(&direct, f), med(&captured, f));
        println!("| {name} | {d:.1} | {c:.1} | {:.2} |", c / d);
    }
    println!(
        "\ntidegate CPU: {:.3} s per GB forwarded, {:.1} µs per new connection, {:.0} % of its core busy in the L4 keep-alive run, {:.1} µs per request through the HTTP chain",
        med(&captured, |r| r.cpu_s_per_gb),
        med(&captured, |r| r.cpu_us_per_connection),
        med(&captured, |r| r.keepalive_cpu_busy) * 100.0,
        med(&captured, |r| r.l7_cpu_us_per_request)
    );
}
