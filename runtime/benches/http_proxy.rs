//! Requests/s and latency: direct vs nginx vs tidegate, in one run. See benches/README.md.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tidegate");

struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

fn spawn(cpu: &str, program: &str, args: &[&str]) -> Guard {
    let child = Command::new("taskset")
        .args(["-c", cpu, program])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {program}: {e}"));
    Guard(child)
}

fn wait_for(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on {port}");
}

struct Result {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn wrk(url: &str, seconds: u32, connections: u32) -> Result {
    let warm = Command::new("taskset")
        .args(["-c", "1", "wrk", "-t1", "-c4", "-d2s", url])
        .output();
    if warm.is_err() {
        panic!("wrk is missing: apt-get install -y wrk");
    }
    let output = Command::new("taskset")
        .args([
            "-c",
            "1",
            "wrk",
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            url,
        ])
        .output()
        .expect("run wrk");
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |prefix: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
            .map(|v| parse_value(&v))
            .unwrap_or(f64::NAN)
    };
    Result {
        rps: field("Requests/sec:"),
        p50_ms: field("50%"),
        p99_ms: field("99%"),
    }
}

/// wrk prints latencies as `1.23ms` / `456.00us` / `1.20s`.
fn parse_value(v: &str) -> f64 {
    let v = v.split_whitespace().next().unwrap_or(v);
    for (suffix, scale) in [("us", 0.001), ("ms", 1.0), ("s", 1000.0)] {
        if let Some(number) = v.strip_suffix(suffix) {
            return number.parse::<f64>().map(|n| n * scale).unwrap_or(f64::NAN);
        }
    }
    v.parse().unwrap_or(f64::NAN)
}

fn main() {
    let seconds: u32 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let connections: u32 = std::env::var("BENCH_CONNECTIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let dir = std::env::temp_dir().join(format!("tidegate-bench-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("config")).expect("bench dir");

    let echo_port = free_port();
    let _echo = spawn(
        "1",
        BIN,
        &[
            "echo",
            "--listen",
            &format!("127.0.0.1:{echo_port}"),
            "--pod",
            "bench-0",
        ],
    );
    wait_for(echo_port);

    let nginx_port = free_port();
    let nginx_conf = dir.join("nginx.conf");
    std::fs::write(
        &nginx_conf,
        format!(
            "daemon off; worker_processes 1; pid {pid}; error_log stderr;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; upstream echo {{ server 127.0.0.1:{echo_port}; keepalive 32; }}\n\
             server {{ listen 127.0.0.1:{nginx_port}; location / {{ proxy_pass http://echo; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}\n",
            pid = dir.join("nginx.pid").display()
        ),
    )
    .expect("write nginx.conf");
    let _nginx = spawn(
        "0",
        "nginx",
        &[
            "-c",
            nginx_conf.to_str().expect("utf-8"),
            "-p",
            dir.to_str().expect("utf-8"),
        ],
    );
    wait_for(nginx_port);

    let gateway_port = free_port();
    write_tidegate_config(&dir.join("config"), echo_port);
    let offset = (gateway_port - 80).to_string();
    let admin = format!("127.0.0.1:{}", free_port());
    let config = dir.join("config");
    let _tidegate = spawn(
        "0",
        BIN,
        &[
            "run",
            "--config-dir",
            config.to_str().expect("utf-8"),
            "--admin",
            &admin,
            "--listen-address",
            "127.0.0.1",
            "--port-offset",
            &offset,
            "--workers",
            "1",
        ],
    );
    wait_for(gateway_port);

    let flows = [
        ("direct", format!("http://127.0.0.1:{echo_port}/bench")),
        ("nginx", format!("http://127.0.0.1:{nginx_port}/bench")),
        ("tidegate", format!("http://127.0.0.1:{gateway_port}/bench")),
    ];
    let mut results = Vec::new();
    println!("{:<10} {:>12} {:>10} {:>10}", "flow", "req/s", "p50 ms", "p99 ms");
    for (name, url) in &flows {
        let r = wrk(url, seconds, connections);
        println!("{name:<10} {:>12.0} {:>10.3} {:>10.3}", r.rps, r.p50_ms, r.p99_ms);
        results.push(r);
    }
    let (direct, nginx, tidegate) = (&results[0], &results[1], &results[2]);
    println!("\nratios (same run):");
    println!(
        "  tidegate / nginx   req/s {:.2}   p99 {:.2}",
        tidegate.rps / nginx.rps,
        tidegate.p99_ms / nginx.p99_ms
    );
    println!(
        "  tidegate / direct  req/s {:.2}   p99 {:.2}",
        tidegate.rps / direct.rps,
        tidegate.p99_ms / direct.p99_ms
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn write_tidegate_config(dir: &Path, echo_port: u16) {
    std::fs::write(
        dir.join("bench.yaml"),
        format!(
            r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: bench}}
spec:
  gatewayClassName: tidegate
  listeners: [{{name: http, protocol: HTTP, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: echo, namespace: bench}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{backendRefs: [{{name: echo, port: 80}}]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: bench}}
spec: {{ports: [{{name: http, port: 80}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: echo-1, namespace: bench, labels: {{kubernetes.io/service-name: echo}}}}
addressType: IPv4
endpoints: [{{addresses: [127.0.0.1]}}]
ports: [{{name: http, port: {echo_port}}}]
"#
        ),
    )
    .expect("write bench config");
}
