//! Shared by the standalone-mode integration tests: child-process guards, a running tidegate
//! with its config directory and echo backends, curl as the client, config builders.
//! Included with `#[path]`, so every test file gets its own copy; not all use everything.
#![allow(dead_code)]

use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tidegate");

/// A child process killed when the test ends (also on panic).
pub struct Proc {
    pub child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    /// Starts the tidegate binary.
    pub fn start(name: &str, args: &[&str], log_dir: &Path) -> Self {
        Self::start_program(name, BIN, args, log_dir)
    }

    /// Starts another program (a peer: nginx, ...), logging to `log_dir/name.log`.
    pub fn start_program(name: &str, program: &str, args: &[&str], log_dir: &Path) -> Self {
        Self::start_program_with_env(name, program, args, &[], log_dir)
    }

    /// [`start_program`](Self::start_program) with extra environment variables.
    pub fn start_program_with_env(
        name: &str,
        program: &str,
        args: &[&str],
        vars: &[(&str, &Path)],
        log_dir: &Path,
    ) -> Self {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("create log file");
        let child = Command::new(program)
            .args(args)
            .envs(vars.iter().copied())
            .stdout(file.try_clone().expect("clone log handle"))
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {program}: {e}"));
        Self {
            child,
            name: name.to_string(),
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.name, self.log());
        }
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// A `--port-offset` that puts every Gateway port in `ports` on a free loopback port below the
/// kernel's ephemeral range (32768+): ports there are never handed to client connections or to
/// `free_port`, so nothing can take them between this check and tidegate's bind, whereas an
/// offset next to an ephemeral port collides with whatever connection the kernel places there.
pub fn port_offset(ports: &[u16]) -> u16 {
    const LOW: u32 = 10_000;
    const EPHEMERAL: u32 = 32_768;
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let highest = u32::from(ports.iter().copied().max().unwrap_or(0));
    let span = EPHEMERAL - LOW - highest;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // Different processes and calls start at different places; then walk with a stride prime
    // to the span so every offset is tried before one repeats.
    let mut candidate = (std::process::id() ^ nanos ^ call.wrapping_mul(2_654_435_761)) % span;
    for _ in 0..span.min(2_000) {
        let offset = u16::try_from(LOW + candidate).expect("below 32768");
        let free = ports
            .iter()
            .all(|p| TcpListener::bind(("127.0.0.1", p + offset)).is_ok());
        if free {
            return offset;
        }
        candidate = (candidate + 7_919) % span;
    }
    panic!("no port offset leaves {ports:?} free below the ephemeral port range");
}

/// GET over plain HTTP/1.1 with std only (used for the admin server).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
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

pub struct Curl {
    pub status: u16,
    pub headers: String,
    pub body: String,
    pub http_version: String,
}

pub fn curl(args: &[&str]) -> Curl {
    let marker = "\n--tidegate-test--";
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D", "/dev/stderr", "-w"])
        .arg(format!("{marker}%{{http_code}} %{{http_version}}"))
        .args(args)
        .output()
        .expect("run curl (install curl)");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, tail) = stdout.rsplit_once(marker).unwrap_or((&stdout, "000 0"));
    let mut tail = tail.split_whitespace();
    Curl {
        status: tail.next().and_then(|s| s.parse().ok()).unwrap_or(0),
        http_version: tail.next().unwrap_or_default().to_string(),
        headers: String::from_utf8_lossy(&output.stderr).into_owned(),
        body: body.to_string(),
    }
}

/// Status of every transfer of one curl run (several URLs reuse one connection).
pub fn curl_statuses(args: &[&str]) -> Vec<u16> {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-w", "%{http_code}\n"])
        .args(args)
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap_or(0))
        .collect()
}

pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// One test environment: a config dir, echo backends and a running tidegate.
pub struct Env {
    pub admin: String,
    pub offset: u16,
    pub tidegate: Option<Proc>,
    pub _echoes: Vec<Proc>,
    // Last: fields drop in order, and the processes' logs live in this directory.
    pub dir: tempfile::TempDir,
}

/// The echo backends log every request they receive (see [`Env::requests_at`]).
const ECHO_ACCESS_LOG: &str = "info,tidegate::echo=debug";

pub struct Backend {
    pub pod: &'static str,
    pub http: u16,
    pub h2c: u16,
}

impl Env {
    pub fn new(backends: &[&'static str]) -> (Self, Vec<Backend>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).expect("logs dir");
        let mut echoes = Vec::new();
        let mut ports = Vec::new();
        for pod in backends {
            let (http, h2c) = (free_port(), free_port());
            let listen = format!("127.0.0.1:{http}");
            let h2c_listen = format!("127.0.0.1:{h2c}");
            echoes.push(Proc::start_program_with_env(
                pod,
                BIN,
                &[
                    "echo",
                    "--listen",
                    &listen,
                    "--h2c-listen",
                    &h2c_listen,
                    "--namespace",
                    "ns",
                    "--pod",
                    pod,
                ],
                &[("TIDEGATE_LOG", Path::new(ECHO_ACCESS_LOG))],
                &logs,
            ));
            ports.push(Backend { pod, http, h2c });
        }
        // Gateway port P is bound at P + offset (the tests' Gateways use 80 and 443).
        let offset = port_offset(&[80, 443]);
        let env = Env {
            dir,
            admin: format!("127.0.0.1:{}", free_port()),
            offset,
            _echoes: echoes,
            tidegate: None,
        };
        (env, ports)
    }

    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    pub fn write(&self, name: &str, text: &str) {
        let dir = self.config_dir();
        std::fs::create_dir_all(&dir).expect("config dir");
        // Write then rename, as editors and ConfigMap volumes do, so a half-written file is never read.
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, dir.join(name)).expect("rename config");
    }

    pub fn start(&mut self) {
        self.start_with_env(&[]);
    }

    /// [`start`](Self::start) with extra environment variables (e.g. `SSL_CERT_FILE`).
    pub fn start_with_env(&mut self, vars: &[(&str, &Path)]) {
        let offset = self.offset.to_string();
        let config = self.config_dir();
        let args = [
            "run",
            "--config-dir",
            config.to_str().expect("utf-8 path"),
            "--admin",
            &self.admin,
            "--listen-address",
            "127.0.0.1",
            "--port-offset",
            &offset,
            "--workers",
            "2",
        ];
        let logs = self.dir.path().join("logs");
        self.tidegate = Some(Proc::start_program_with_env("tidegate", BIN, &args, vars, &logs));
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if http_get(&self.admin, "/ready").is_some_and(|(s, _)| s == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "tidegate did not become ready:\n{}",
            self.tidegate.as_ref().map(|p| p.log()).unwrap_or_default()
        );
    }

    /// The request targets (`METHOD uri`) echo backend `pod` received so far, in order.
    pub fn requests_at(&self, pod: &str) -> Vec<String> {
        let echo = self
            ._echoes
            .iter()
            .find(|p| p.name == pod)
            .unwrap_or_else(|| panic!("no echo backend {pod}"));
        echo.log()
            .lines()
            .filter(|line| line.contains("tidegate::echo") && line.contains(" request "))
            .map(|line| {
                let field = |name: &str| {
                    line.split_whitespace()
                        .find_map(|w| w.strip_prefix(name))
                        .unwrap_or_default()
                        .to_string()
                };
                format!("{} {}", field("method="), field("uri="))
            })
            .collect()
    }

    pub fn url(&self, gateway_port: u16, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", gateway_port + self.offset)
    }

    pub fn status(&self) -> serde_json::Value {
        json(&http_get(&self.admin, "/status").expect("admin /status").1)
    }

    /// Polls until `check` holds (config edits apply asynchronously), at most `limit`.
    pub fn eventually(&self, limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
        let start = Instant::now();
        while start.elapsed() < limit {
            if check() {
                return start.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{what} did not happen within {limit:?}");
    }
}

pub fn gateway(extra_listeners: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: ns}}
spec:
  gatewayClassName: tidegate
  listeners:
  - {{name: http, protocol: HTTP, port: 80}}
{extra_listeners}"#
    )
}

pub fn service(name: &str, app_protocol: Option<&str>, backends: &[&Backend], h2c: bool) -> String {
    let app_protocol = app_protocol.map(|p| format!(", appProtocol: {p}")).unwrap_or_default();
    let mut text = format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  ports: [{{name: http, port: 8080, targetPort: 3000{app_protocol}}}]\n"
    );
    for backend in backends {
        let port = if h2c { backend.h2c } else { backend.http };
        text.push_str(&format!(
            "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-{pod}, namespace: ns, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]\nports: [{{name: http, port: {port}}}]\n",
            pod = backend.pod
        ));
    }
    text
}

pub fn route(name: &str, path: &str, service: &str) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}, namespace: ns}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: {path}}}}}]
    backendRefs: [{{name: {service}, port: 8080}}]
"#
    )
}

/// The example filters built for the tests (see runtime/build.rs).
pub const EXAMPLES: &str = env!("TIDEGATE_EXAMPLE_FILTERS");

/// Copies example filter `artifact` into the config dir as `modules/<as_name>` (atomically).
pub fn copy_module(env: &Env, artifact: &str, as_name: &str) {
    let dir = env.config_dir().join("modules");
    std::fs::create_dir_all(&dir).expect("modules dir");
    let source = Path::new(EXAMPLES).join(format!("{artifact}.wasm"));
    let tmp = dir.join(format!(".{as_name}.tmp"));
    std::fs::copy(&source, &tmp).unwrap_or_else(|e| panic!("copy {}: {e}", source.display()));
    std::fs::rename(&tmp, dir.join(as_name)).expect("rename module");
}

/// A WasmFilter `ns/name` running `modules/<module>`, with the rest of its spec.
pub fn wasm_filter(name: &str, module: &str, spec: &str) -> String {
    format!(
        "apiVersion: tidegate.dev/v1alpha1\nkind: WasmFilter\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  module: {{file: modules/{module}}}\n{spec}"
    )
}

/// A request header as the echo backend saw it (values joined by commas).
pub fn header_at_backend(body: &str, name: &str) -> Option<String> {
    let echoed = json(body);
    echoed["headers"][name]
        .as_array()
        .map(|v| v.iter().filter_map(|s| s.as_str()).collect::<Vec<_>>().join(","))
}

/// The value of a counter or gauge sample on the admin /metrics (0 when absent).
pub fn metric(env: &Env, sample: &str) -> f64 {
    let metrics = http_get(&env.admin, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default();
    metrics
        .lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The path of a peer program, asserting it is installed (CI installs it with apt).
pub fn peer(path: &str, package: &str) -> String {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: these tests need real peers; install them with `apt-get install {package}`"
    );
    path.to_string()
}

/// Waits until something listens on loopback `port`, or fails with `proc`'s log.
pub fn wait_for_port(port: u16, proc: &Proc) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{} did not start: {}", proc.name, proc.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (type, status, message) of a WasmFilter's conditions in the admin `/status`.
pub fn conditions(env: &Env, name: &str) -> Vec<(String, String, String)> {
    let status = env.status();
    status["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["kind"] == "WasmFilter" && o["name"] == name)
        .flat_map(|o| o["status"]["conditions"].as_array().cloned().unwrap_or_default())
        .map(|c| {
            (
                c["type"].as_str().unwrap_or_default().to_string(),
                c["status"].as_str().unwrap_or_default().to_string(),
                c["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// nginx (unprivileged, in the test's directory `name`) with the `server` blocks given.
pub fn start_nginx(env: &Env, name: &str, servers: &str, ports: &[u16]) -> Proc {
    let program = peer("/usr/sbin/nginx", "nginx-light");
    let dir = env.dir.path().join(name);
    std::fs::create_dir_all(&dir).expect("nginx dir");
    let d = dir.display();
    let conf = format!(
        r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
{servers}
}}
"#
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("write nginx.conf");
    let nginx = Proc::start_program(
        name,
        &program,
        &["-c", path.to_str().expect("utf-8"), "-p", &d.to_string()],
        &env.dir.path().join("logs"),
    );
    for port in ports {
        wait_for_port(*port, &nginx);
    }
    nginx
}
