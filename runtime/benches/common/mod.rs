//! Shared by the benchmarks: pinned child processes, the echo backend, tidegate with its
//! configuration directory (and N `noop` user filters), nginx, wrk, and the proxy's CPU time.
//! Each bench includes it with `mod common;` and uses part of it.
#![allow(dead_code)]

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tidegate");
/// Where build.rs left the example filters (`noop.wasm`, …).
pub const EXAMPLES: &str = env!("TIDEGATE_EXAMPLE_FILTERS");

/// The CPU the proxy under test runs on; wrk and the echo backend share the other one.
pub const PROXY_CPU: &str = "0";
pub const CLIENT_CPU: &str = "1";

/// A child process, killed when dropped (also on panic). Its output goes to `log`.
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `program args` pinned to `cpu` with `taskset` (which execs it: the pid is the
    /// program's own), stdout and stderr to `<log_dir>/<name>.log`.
    pub fn pinned(name: &str, cpu: &str, program: &str, args: &[&str], log_dir: &Path) -> Self {
        Self::spawn(name, cpu, program, args, log_dir, true)
    }

    /// As [`pinned`](Self::pinned), but stdout is discarded (only stderr is logged).
    pub fn pinned_quiet(name: &str, cpu: &str, program: &str, args: &[&str], log_dir: &Path) -> Self {
        Self::spawn(name, cpu, program, args, log_dir, false)
    }

    fn spawn(name: &str, cpu: &str, program: &str, args: &[&str], log_dir: &Path, stdout: bool) -> Self {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let stdout = match stdout {
            true => Stdio::from(file.try_clone().expect("clone a log handle")),
            false => Stdio::null(),
        };
        let child = Command::new("taskset")
            .args(["-c", cpu, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {program} with taskset (util-linux): {e}"));
        Self {
            child,
            name: name.to_string(),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the process (SIGSTOP): a stopped proxy takes no CPU time, so the one under
    /// measurement has its core to itself while the others keep their state and connections.
    pub fn pause(&mut self) {
        self.signal("-STOP");
    }

    /// Lets a [paused](Self::pause) process run again (SIGCONT).
    pub fn resume(&mut self) {
        self.signal("-CONT");
    }

    fn signal(&mut self, signal: &str) {
        self.check_alive();
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .unwrap_or_else(|e| panic!("run kill: {e}"));
        assert!(status.success(), "kill {signal} {} ({}) failed", self.pid(), self.name);
    }

    /// Panics with the process's log if it exited.
    pub fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.name, self.log());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// An unsigned setting from the environment, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a whole number")),
        Err(_) => default,
    }
}

pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    }
}

pub fn wait_for_port(port: u16, proc: &mut Proc) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        proc.check_alive();
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{} does not listen on {port}:\n{}", proc.name, proc.log());
}

/// `GET path` over HTTP/1.0 with std only: (status, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.get(9..12)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// Polls `check` every 20 ms for up to 30 s; panics with `what` and the process's log otherwise.
pub fn eventually(proc: &mut Proc, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if check() {
            return;
        }
        proc.check_alive();
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not happen within 30 s:\n{}", proc.log());
}

/// The echo backend (`tidegate echo`) on the client CPU.
pub fn start_echo(log_dir: &Path) -> (Proc, u16) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    // It prints a line per request on stdout: discarded.
    let mut echo = Proc::pinned_quiet(
        "echo",
        CLIENT_CPU,
        BIN,
        &["echo", "--listen", &listen, "--pod", "bench-0"],
        log_dir,
    );
    wait_for_port(port, &mut echo);
    (echo, port)
}

/// The Gateway (port 80, served at 80 + offset), one HTTPRoute to Service `echo`, whose one
/// endpoint is the echo backend.
pub fn gateway_config(echo_port: u16) -> String {
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
endpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]
ports: [{{name: http, port: {echo_port}}}]
"#
    )
}

/// A WasmFilter attaching `modules/noop.wasm` to the Gateway, before the router.
pub fn noop_filter(name: &str) -> String {
    format!(
        r#"apiVersion: tidegate.dev/v1alpha1
kind: WasmFilter
metadata: {{name: {name}, namespace: bench}}
spec:
  module: {{file: modules/noop.wasm}}
  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: gw}}]
  phase: PreRouting
"#
    )
}

pub fn noop_wasm_path() -> PathBuf {
    Path::new(EXAMPLES).join("noop.wasm")
}

/// Writes the configuration directory of a tidegate with `filters` noop user filters.
pub fn write_tidegate_config(dir: &Path, echo_port: u16, filters: usize) {
    std::fs::create_dir_all(dir.join("modules")).expect("config dir");
    std::fs::write(dir.join("bench.yaml"), gateway_config(echo_port)).expect("write bench.yaml");
    if filters > 0 {
        let source = noop_wasm_path();
        std::fs::copy(&source, dir.join("modules/noop.wasm"))
            .unwrap_or_else(|e| panic!("copy {}: {e}", source.display()));
    }
    for i in 1..=filters {
        std::fs::write(dir.join(format!("noop-{i}.yaml")), noop_filter(&format!("noop-{i}"))).expect("write filter");
    }
}

/// A running tidegate (one worker, pinned to the proxy CPU) with `filters` noop user filters.
pub struct Tidegate {
    pub proc: Proc,
    pub admin: String,
    pub port: u16,
}

impl Tidegate {
    /// Starts it and returns once `/ready` answers 200, every WasmFilter is `Programmed` in
    /// `/status`, and a request through the Gateway reaches the echo backend.
    pub fn start(work_dir: &Path, echo_port: u16, filters: usize) -> Self {
        let config = work_dir.join(format!("config-{filters}"));
        let _ = std::fs::remove_dir_all(&config);
        write_tidegate_config(&config, echo_port, filters);
        let port = free_port();
        let offset = (port - 80).to_string();
        let admin = format!("127.0.0.1:{}", free_port());
        let mut proc = Proc::pinned(
            &format!("tidegate-{filters}"),
            PROXY_CPU,
            BIN,
            &[
                "run",
                "--config-dir",
                config.to_str().expect("utf-8 path"),
                "--admin",
                &admin,
                "--listen-address",
                "127.0.0.1",
                "--port-offset",
                &offset,
                "--workers",
                "1",
            ],
            work_dir,
        );
        eventually(&mut proc, "tidegate /ready", || {
            http_get(&admin, "/ready").is_some_and(|(s, _)| s == 200)
        });
        eventually(&mut proc, "all WasmFilters Programmed", || {
            programmed_filters(&admin) == Some(filters)
        });
        let gateway = format!("127.0.0.1:{port}");
        eventually(&mut proc, "a 200 from the echo backend through the Gateway", || {
            http_get(&gateway, "/bench").is_some_and(|(s, body)| s == 200 && body.contains("bench-0"))
        });
        Self { proc, admin, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/bench", self.port)
    }
}

/// How many WasmFilter objects `/status` reports with `Programmed: True`; `None` while any
/// WasmFilter is not (yet) programmed or the admin server does not answer.
pub fn programmed_filters(admin: &str) -> Option<usize> {
    let (status, body) = http_get(admin, "/status")?;
    if status != 200 {
        return None;
    }
    let json: serde_json::Value = serde_json::from_str(&body).ok()?;
    let mut programmed = 0;
    for object in json["objects"].as_array()? {
        if object["kind"] != "WasmFilter" {
            continue;
        }
        let ok = object["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Programmed" && c["status"] == "True");
        if !ok {
            return None;
        }
        programmed += 1;
    }
    Some(programmed)
}

/// nginx as a reverse proxy to the echo backend, with a keep-alive upstream pool, in a single
/// process (`master_process off`) pinned to the proxy CPU, so its pid is the one doing the work.
pub fn start_nginx(work_dir: &Path, echo_port: u16) -> (Proc, u16) {
    let port = free_port();
    let conf = work_dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process off; worker_processes 1; pid {pid}; error_log stderr;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off;\n\
             client_body_temp_path {tmp}; proxy_temp_path {tmp}; fastcgi_temp_path {tmp}; uwsgi_temp_path {tmp}; scgi_temp_path {tmp};\n\
             upstream echo {{ server 127.0.0.1:{echo_port}; keepalive 32; }}\n\
             server {{ listen 127.0.0.1:{port}; location / {{ proxy_pass http://echo; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}\n",
            pid = work_dir.join("nginx.pid").display(),
            tmp = work_dir.display(),
        ),
    )
    .expect("write nginx.conf");
    let mut nginx = Proc::pinned(
        "nginx",
        PROXY_CPU,
        "nginx",
        &[
            "-c",
            conf.to_str().expect("utf-8 path"),
            "-p",
            work_dir.to_str().expect("utf-8 path"),
        ],
        work_dir,
    );
    wait_for_port(port, &mut nginx);
    let addr = format!("127.0.0.1:{port}");
    eventually(&mut nginx, "a 200 from the echo backend through nginx", || {
        http_get(&addr, "/bench").is_some_and(|(s, body)| s == 200 && body.contains("bench-0"))
    });
    (nginx, port)
}

/// User + system CPU time of a process (all its threads) so far, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis are
    // state (3), …, utime (14), stime (15).
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return f64::NAN;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (ticks(11) + ticks(12)) / clock_ticks_per_second()
}

/// Busy time (everything but idle and iowait, including steal) of CPU `cpu` so far, from
/// `/proc/stat`, in seconds.
pub fn core_busy_seconds(cpu: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return f64::NAN;
    };
    let label = format!("cpu{cpu}");
    let Some(line) = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label.as_str()))
    else {
        return f64::NAN;
    };
    let ticks: Vec<f64> = line.split_whitespace().skip(1).filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user)
    let busy: f64 = ticks
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    busy / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// One wrk measurement.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: f64,
    /// CPU time of the proxy process per request, in microseconds (NaN for `direct`).
    pub cpu_us_per_request: f64,
    /// The proxy's CPU time over the wall time of the run (1.0 = its core was always busy).
    pub cpu_busy: f64,
    /// The proxy CPU's busy time not spent by the proxy process, over the wall time: other
    /// processes (a compiler), interrupts, or the hypervisor (steal). Near 0 on a quiet machine.
    pub foreign_busy: f64,
}

/// How long wrk runs and with how many connections.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub warmup_seconds: u64,
    pub seconds: u64,
    pub connections: u64,
}

impl Load {
    /// From `BENCH_WARMUP_SECONDS` (1), `BENCH_SECONDS` (`seconds`), `BENCH_CONNECTIONS` (4).
    pub fn from_env(seconds: u64) -> Self {
        Self {
            warmup_seconds: env_u64("BENCH_WARMUP_SECONDS", 1),
            seconds: env_u64("BENCH_SECONDS", seconds),
            connections: env_u64("BENCH_CONNECTIONS", 4),
        }
    }
}

/// Warms up, then runs wrk (one thread, on the client CPU) against `url`, measuring the CPU
/// time `proxy_pid` spends meanwhile. Panics if any response was not 2xx/3xx or a socket failed.
pub fn wrk(url: &str, load: Load, proxy_pid: Option<u32>) -> Measured {
    wrk_in(None, url, &[], load, proxy_pid)
}

/// As [`wrk`], run inside network namespace `netns` when given, with extra wrk arguments.
pub fn wrk_in(netns: Option<&str>, url: &str, extra: &[&str], load: Load, proxy_pid: Option<u32>) -> Measured {
    let run_wrk = |url: &str, seconds: u64, connections: u64| run_wrk(netns, url, extra, seconds, connections);
    if load.warmup_seconds > 0 {
        run_wrk(url, load.warmup_seconds, load.connections);
    }
    let cpu_before = proxy_pid.map(cpu_seconds);
    let core_before = core_busy_seconds(PROXY_CPU);
    let began = Instant::now();
    let text = run_wrk(url, load.seconds, load.connections);
    let wall = began.elapsed().as_secs_f64();
    let core = core_busy_seconds(PROXY_CPU) - core_before;
    let cpu = match (proxy_pid, cpu_before) {
        (Some(pid), Some(before)) => cpu_seconds(pid) - before,
        _ => f64::NAN,
    };
    if let Some(line) = text
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses") || l.contains("Socket errors"))
    {
        panic!("wrk against {url} saw failures ({}):\n{text}", line.trim());
    }
    let field = |prefix: &str| -> f64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|v| v.trim().to_string()))
            .map(|v| parse_value(&v))
            .unwrap_or(f64::NAN)
    };
    // "  123456 requests in 10.00s, 45.67MB read"
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or(f64::NAN);
    let measured = Measured {
        rps: field("Requests/sec:"),
        p50_ms: field("50%"),
        p99_ms: field("99%"),
        requests,
        cpu_us_per_request: cpu / requests * 1e6,
        cpu_busy: cpu / wall,
        foreign_busy: ((core - if cpu.is_nan() { 0.0 } else { cpu }) / wall).max(0.0),
    };
    if measured.rps.is_nan() || measured.requests.is_nan() {
        panic!("could not read wrk's report:\n{text}");
    }
    measured
}

fn run_wrk(netns: Option<&str>, url: &str, extra: &[&str], seconds: u64, connections: u64) -> String {
    let mut command = match netns {
        Some(netns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", netns, "taskset"]);
            command
        }
        None => Command::new("taskset"),
    };
    let output = command
        .args(["-c", CLIENT_CPU, "wrk", "-t1"])
        .args(extra)
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .args(["--latency", url])
        .output()
        .unwrap_or_else(|e| panic!("run wrk (apt-get install -y wrk): {e}"));
    if !output.status.success() {
        panic!(
            "wrk failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// wrk prints latencies as `1.23ms` / `456.00us` / `1.20s`; returns milliseconds.
fn parse_value(v: &str) -> f64 {
    let v = v.split_whitespace().next().unwrap_or(v);
    for (suffix, scale) in [("us", 0.001), ("ms", 1.0), ("m", 60_000.0), ("s", 1000.0)] {
        if let Some(number) = v.strip_suffix(suffix) {
            return number.parse::<f64>().map(|n| n * scale).unwrap_or(f64::NAN);
        }
    }
    v.parse().unwrap_or(f64::NAN)
}

/// The machine, for the report: CPU model, `nproc`, load average.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    // Counted from /proc/cpuinfo: a pinned process sees only its own CPU as available.
    let cpus = std::fs::read_to_string("/proc/cpuinfo")
        .map(|t| t.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    format!("{model}, {cpus} CPUs, load average {load}")
}

/// A scratch directory removed when dropped.
pub struct WorkDir(pub PathBuf);

impl WorkDir {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("tidegate-bench-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the bench directory");
        Self(dir)
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
