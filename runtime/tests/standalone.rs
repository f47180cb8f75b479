//! Standalone mode end to end: the real `tidegate` binary, real `tidegate echo` backends and
//! real `curl` as the client. Covers HTTP/1.1, h2c and TLS (h1 + h2 by ALPN) downstream, h1 and
//! h2c upstream, live edits without failed requests, and bad input that keeps the last good
//! configuration serving.

use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

const BIN: &str = env!("CARGO_BIN_EXE_tidegate");

/// A child process killed when the test ends (also on panic).
struct Proc {
    child: Child,
    name: String,
    log: PathBuf,
}

impl Proc {
    fn start(name: &str, args: &[&str], log_dir: &Path) -> Self {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("create log file");
        let child = Command::new(BIN)
            .args(args)
            .stdout(file.try_clone().expect("clone log handle"))
            .stderr(file)
            .stdin(Stdio::null())
            .spawn()
            .expect("start tidegate");
        Self {
            child,
            name: name.to_string(),
            log,
        }
    }

    fn log(&self) -> String {
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("local addr")
        .port()
}

/// GET over plain HTTP/1.1 with std only (used for the admin server).
fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
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

struct Curl {
    status: u16,
    headers: String,
    body: String,
    http_version: String,
}

fn curl(args: &[&str]) -> Curl {
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
fn curl_statuses(args: &[&str]) -> Vec<u16> {
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

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// One test environment: a config dir, echo backends and a running tidegate.
struct Env {
    admin: String,
    offset: u16,
    tidegate: Option<Proc>,
    _echoes: Vec<Proc>,
    // Last: fields drop in order, and the processes' logs live in this directory.
    dir: tempfile::TempDir,
}

struct Backend {
    pod: &'static str,
    http: u16,
    h2c: u16,
}

impl Env {
    fn new(backends: &[&'static str]) -> (Self, Vec<Backend>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).expect("logs dir");
        let mut echoes = Vec::new();
        let mut ports = Vec::new();
        for pod in backends {
            let (http, h2c) = (free_port(), free_port());
            let listen = format!("127.0.0.1:{http}");
            let h2c_listen = format!("127.0.0.1:{h2c}");
            echoes.push(Proc::start(
                pod,
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
                &logs,
            ));
            ports.push(Backend { pod, http, h2c });
        }
        // Port 80 of the Gateway is bound at 80 + offset.
        let offset = free_port() - 80;
        let env = Env {
            dir,
            admin: format!("127.0.0.1:{}", free_port()),
            offset,
            _echoes: echoes,
            tidegate: None,
        };
        (env, ports)
    }

    fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    fn write(&self, name: &str, text: &str) {
        let dir = self.config_dir();
        std::fs::create_dir_all(&dir).expect("config dir");
        // Write then rename, as editors and ConfigMap volumes do, so a half-written file is never read.
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, dir.join(name)).expect("rename config");
    }

    fn start(&mut self) {
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
        self.tidegate = Some(Proc::start("tidegate", &args, &self.dir.path().join("logs")));
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

    fn url(&self, gateway_port: u16, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", gateway_port + self.offset)
    }

    fn status(&self) -> serde_json::Value {
        json(&http_get(&self.admin, "/status").expect("admin /status").1)
    }

    /// Polls until `check` holds (config edits apply asynchronously), at most `limit`.
    fn eventually(&self, limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
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

fn gateway(extra_listeners: &str) -> String {
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

fn service(name: &str, app_protocol: Option<&str>, backends: &[&Backend], h2c: bool) -> String {
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

fn route(name: &str, path: &str, service: &str) -> String {
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

#[test]
fn serves_http1_h2c_and_tls_to_h1_and_h2c_upstreams() {
    let (mut env, backends) = Env::new(&["web-0"]);
    // A CA and a leaf for app.test, served from a kubernetes.io/tls Secret.
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // A subject of its own, or the leaf (rcgen's default subject too) would look self-signed.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tidegate test CA");
    let ca = ca_params.clone().self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf = rcgen::CertificateParams::new(vec!["app.test".to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf cert");
    let ca_file = env.dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write ca");
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    env.write(
        "gateway.yaml",
        &gateway("  - {name: https, protocol: HTTPS, port: 443, hostname: app.test, tls: {certificateRefs: [{name: app-tls}]}}\n"),
    );
    env.write(
        "secret.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: app-tls, namespace: ns}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
            b64(leaf.pem()),
            b64(leaf_key.serialize_pem())
        ),
    );
    env.write("web.yaml", &service("web", None, &[&backends[0]], false));
    env.write(
        "grpcish.yaml",
        &service("web-h2c", Some("kubernetes.io/h2c"), &[&backends[0]], true),
    );
    env.write(
        "routes.yaml",
        &format!("{}---\n{}", route("web", "/", "web"), route("h2c", "/h2c", "web-h2c")),
    );
    env.start();

    let plain = curl(&[&env.url(80, "/hello?x=1")]);
    assert_eq!(plain.status, 200, "{}{}", plain.headers, plain.body);
    let echoed = json(&plain.body);
    assert_eq!(echoed["namespace"], "ns");
    assert_eq!(echoed["pod"], "web-0");
    assert_eq!(echoed["path"], "/hello?x=1");
    assert_eq!(echoed["proto"], "HTTP/1.1", "upstream is HTTP/1.1 by default");

    let h2c = curl(&["--http2-prior-knowledge", &env.url(80, "/hello")]);
    assert_eq!((h2c.status, h2c.http_version.as_str()), (200, "2"), "{}", h2c.headers);
    assert_eq!(json(&h2c.body)["pod"], "web-0");

    let upstream_h2c = curl(&[&env.url(80, "/h2c/x")]);
    assert_eq!(upstream_h2c.status, 200, "{}", upstream_h2c.body);
    assert_eq!(
        json(&upstream_h2c.body)["proto"],
        "HTTP/2.0",
        "appProtocol kubernetes.io/h2c speaks HTTP/2 upstream"
    );

    let port = 443 + env.offset;
    let resolve = format!("app.test:{port}:127.0.0.1");
    let url = format!("https://app.test:{port}/secure");
    let ca = ca_file.to_str().expect("utf-8 path");
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let tls = curl(&["--cacert", ca, "--resolve", &resolve, flag, &url]);
        assert_eq!(
            (tls.status, tls.http_version.as_str()),
            (200, version),
            "{}{}",
            tls.headers,
            tls.body
        );
        assert_eq!(json(&tls.body)["path"], "/secure");
    }
}

#[test]
fn edits_apply_live_without_failing_requests_and_bad_input_keeps_last_good() {
    let (mut env, backends) = Env::new(&["web-0", "api-0"]);
    env.write("gateway.yaml", &gateway(""));
    env.write("web.yaml", &service("web", None, &[&backends[0]], false));
    env.write("api.yaml", &service("api", None, &[&backends[1]], false));
    env.write("routes.yaml", &route("web", "/", "web"));
    env.start();
    assert_eq!(json(&curl(&[&env.url(80, "/api/x")]).body)["pod"], "web-0");

    // Requests keep flowing while the configuration changes under them.
    let url = env.url(80, "/");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Three requests on one keep-alive connection, then one over h2c. (curl 7.88
                // cannot reuse a prior-knowledge h2c connection for a second URL.)
                let keep_alive = [
                    "-o",
                    "/dev/null",
                    &url,
                    "-o",
                    "/dev/null",
                    &url,
                    "-o",
                    "/dev/null",
                    &url,
                ];
                let statuses = curl_statuses(&keep_alive).into_iter().chain(curl_statuses(&[
                    "--http2-prior-knowledge",
                    "-o",
                    "/dev/null",
                    &url,
                ]));
                for status in statuses {
                    if status == 200 { ok += 1 } else { failed.push(status) }
                }
            }
            (ok, failed)
        })
    };

    // An edit takes effect within a second.
    env.write(
        "routes.yaml",
        &format!("{}---\n{}", route("web", "/", "web"), route("api", "/api", "api")),
    );
    let took = env.eventually(Duration::from_secs(3), "the /api route", || {
        curl(&[&env.url(80, "/api/x")]).body.contains("\"api-0\"")
    });
    assert!(took < Duration::from_secs(2), "edit applied after {took:?}");

    // A file that does not parse: reported with file, document, line and column; the rest serves.
    env.write("broken.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: x\n");
    env.eventually(Duration::from_secs(3), "the parse error in /status", || {
        env.status()["errors"].as_array().is_some_and(|e| !e.is_empty())
    });
    let message = env.status()["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("broken.yaml") && message.contains("document 1") && message.contains("line"),
        "{message}"
    );
    assert_eq!(
        json(&curl(&[&env.url(80, "/api/x")]).body)["pod"],
        "api-0",
        "good config keeps serving"
    );

    // An invalid edit of a served object keeps its last good version.
    env.write(
        "routes.yaml",
        &format!(
            "{}---\n{}",
            route("web", "/", "web"),
            route("api", "/api", "api").replace("port: 8080", "port: eighty")
        ),
    );
    env.eventually(Duration::from_secs(3), "the invalid-object error", || {
        env.status()["errors"].as_array().is_some_and(|e| {
            e.iter().any(|e| {
                e["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("spec.rules[0].backendRefs[0].port")
            })
        })
    });
    assert_eq!(
        json(&curl(&[&env.url(80, "/api/x")]).body)["pod"],
        "api-0",
        "last good route keeps serving"
    );
    let metrics = http_get(&env.admin, "/metrics").expect("metrics").1;
    assert!(
        metrics.contains("tidegate_config_errors_total{kind=\"parse\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tidegate_config_errors_total{kind=\"invalid\"}"),
        "{metrics}"
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.join().expect("load thread");
    assert!(ok > 0, "the load loop made requests");
    assert!(
        failed.is_empty(),
        "requests failed during reloads: {failed:?} ({ok} ok)"
    );

    // No route matches: the router answers 404.
    env.write("routes.yaml", &route("api", "/api", "api"));
    env.eventually(Duration::from_secs(3), "the 404 for unrouted paths", || {
        curl(&[&env.url(80, "/nothing")]).status == 404
    });
}
