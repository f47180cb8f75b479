//! Hostile modules, end to end with the real binary: the `hostile` example filter (plain
//! `proxy-wasm` crate, `filters/examples/hostile`) never returns from one callback at a time,
//! with `limits: {callTimeout: 50ms}`, and each time:
//! - the client sees what the filter's failure policy promises (FailClosed: 500 while the
//!   response has not started, a broken response once it has; FailOpen: the filter is skipped);
//! - the failure is counted in `tidegate_filter_failures_total{filter="ns/<name>"}` and logged
//!   with the filter's name, and the VM is replaced: the next request through the filter works;
//! - other routes keep serving (a bystander client requests an unrelated route for the whole
//!   test and must never fail), and the process stays up (`/healthz`).
//!
//! Per-request callbacks are chosen by the request header `x-hostile`; the context-creation and
//! tick loops are armed by a request (a flag in the filter's shared data); `proxy_on_vm_start`
//! and `proxy_on_configure` loops by the plugin configuration (`spec.config`). Trap, memory
//! growth, huge headers and bad pointers in `on_request_headers` are covered by
//! `wasmfilter.rs`.
//!
//! curl 7.88 cannot send request trailers and the echo backend sends no response trailers, so
//! the two trailer callbacks are driven with a hyper HTTP/2 client through the scripted test
//! upstream (`common/upstream.rs`), which reports the trailers it received and sends trailers
//! on request.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[path = "common/env.rs"]
mod env;
#[path = "common/upstream.rs"]
mod upstream;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::{HeaderMap, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};

use env::{Backend, Env, copy_module, curl_statuses, gateway, http_get, route, service};
use upstream::{Upstream, frames, header_map};

// === configuration ===

/// A WasmFilter running the hostile module on `routes` (PostRouting, so after the router chose
/// the route), with a 50 ms budget per callback.
fn hostile_filter(name: &str, routes: &[&str], policy: &str, config: &str) -> String {
    let targets = routes
        .iter()
        .map(|r| format!("{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: {r}}}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "apiVersion: tidegate.dev/v1alpha1\nkind: WasmFilter\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  module: {{file: modules/hostile.wasm}}\n  targetRefs: [{targets}]\n  phase: PostRouting\n  failurePolicy: {policy}\n  limits: {{callTimeout: 50ms}}\n  config: {config:?}\n"
    )
}

fn routes(names: &[&str]) -> String {
    names
        .iter()
        .map(|name| route(name, &format!("/{name}"), "web"))
        .collect::<Vec<_>>()
        .join("---\n")
}

// === observing the process ===

fn metric(env: &Env, series: &str) -> u64 {
    env::metric(env, series) as u64
}

fn failures(env: &Env, filter: &str) -> u64 {
    metric(
        env,
        &format!("tidegate_filter_failures_total{{filter=\"ns/{filter}\"}}"),
    )
}

fn rejected(env: &Env) -> u64 {
    metric(env, "tidegate_config_rejected_total")
}

/// Lines of tidegate's log that contain every one of `parts`.
fn log_lines(env: &Env, parts: &[&str]) -> usize {
    env.tidegate
        .as_ref()
        .expect("tidegate runs")
        .log()
        .lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .count()
}

/// A value of the process expected to settle at `expected`.
struct Settles<'a> {
    what: String,
    expected: u64,
    value: Box<dyn Fn() -> u64 + 'a>,
}

impl<'a> Settles<'a> {
    fn new(what: String, expected: u64, value: impl Fn() -> u64 + 'a) -> Self {
        Self {
            what,
            expected,
            value: Box::new(value),
        }
    }
}

/// How long settled values must stay put, and how often they are read meanwhile.
const QUIET: Duration = Duration::from_millis(300);
const POLL: Duration = Duration::from_millis(50);

/// Waits until every value reaches what it is expected to be (what the process does after a
/// response, such as finishing contexts and logging, runs asynchronously), failing at once when
/// one goes past it; then requires every one to stay exactly there for [`QUIET`], so that a
/// late duplicate fails this case instead of slipping into the next case's baseline.
fn settle(values: &[Settles<'_>]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut reached = true;
        for v in values {
            let now = (v.value)();
            assert!(now <= v.expected, "{}: {now}, past the expected {}", v.what, v.expected);
            reached &= now == v.expected;
        }
        if reached {
            break;
        }
        if Instant::now() >= deadline {
            let state: Vec<String> = values
                .iter()
                .map(|v| format!("{}: {} of {}", v.what, (v.value)(), v.expected))
                .collect();
            panic!("not settled within 5 s: {}", state.join("; "));
        }
        std::thread::sleep(POLL);
    }
    let quiet = Instant::now() + QUIET;
    while Instant::now() < quiet {
        std::thread::sleep(POLL);
        for v in values {
            assert_eq!(
                (v.value)(),
                v.expected,
                "{}: stays at {} once reached",
                v.what,
                v.expected
            );
        }
    }
}

fn alive(env: &Env) {
    assert_eq!(
        http_get(&env.admin, "/healthz").map(|(s, _)| s),
        Some(200),
        "the process is alive"
    );
}

/// A client requesting an unrelated route for the whole test: none of its requests may fail.
struct Bystander {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(usize, Vec<u16>)>>,
}

impl Bystander {
    fn start(url: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut requests, mut failed) = (0, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    // Two requests on one connection, then a new connection: both workers serve.
                    let statuses = curl_statuses(&["-o", "/dev/null", &url, "-o", "/dev/null", &url]);
                    requests += statuses.len();
                    failed.extend(statuses.into_iter().filter(|s| *s != 200));
                    std::thread::sleep(Duration::from_millis(10));
                }
                (requests, failed)
            })
        };
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let thread = self.thread.take().expect("running");
        let (requests, failed) = thread.join().expect("bystander thread");
        assert!(requests > 0, "the bystander made requests");
        assert!(
            failed.is_empty(),
            "requests to an unrelated route failed while filters misbehaved: {failed:?} of {requests}"
        );
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// === curl ===

/// One transfer of a curl run.
#[derive(Debug)]
struct Transfer {
    status: u16,
    /// curl's exit code for this transfer (0: complete).
    exit: i32,
    /// New connections this transfer opened (0: it reused the previous transfer's connection,
    /// so the same worker, hence the same filter VM, served both).
    connects: u32,
    /// Response headers, lowercased.
    headers: String,
    body: String,
}

impl Transfer {
    fn survived(&self) -> bool {
        self.headers.contains("x-hostile-survived: yes")
    }
}

/// Runs the transfers in one curl process (`--next` between them), so they share a connection
/// when the server keeps it open.
fn curl(transfers: &[&[&str]]) -> Vec<Transfer> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new("curl");
    for (i, args) in transfers.iter().enumerate() {
        if i > 0 {
            command.arg("--next");
        }
        command
            .args(["-sS", "--max-time", "10", "-o"])
            .arg(dir.path().join(format!("body-{i}")))
            .arg("-D")
            .arg(dir.path().join(format!("headers-{i}")))
            .args(["-w", "%{http_code} %{exitcode} %{num_connects}\\n"])
            .args(*args);
    }
    let output = command.output().expect("run curl (install curl)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        transfers.len(),
        "one line per transfer: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            let mut fields = line.split_whitespace().map(|f| f.parse::<i64>().unwrap_or(-1));
            let mut next = || fields.next().unwrap_or(-1);
            let read = |name: &str| std::fs::read_to_string(dir.path().join(format!("{name}-{i}"))).unwrap_or_default();
            Transfer {
                status: next() as u16,
                exit: next() as i32,
                connects: next() as u32,
                headers: read("headers").to_ascii_lowercase(),
                body: read("body"),
            }
        })
        .collect()
}

fn get(url: &str, extra: &[&str]) -> Transfer {
    let mut args = extra.to_vec();
    args.push(url);
    curl(&[&args]).remove(0)
}

// === the HTTP/2 client ===

/// What an HTTP/2 client got.
#[derive(Debug)]
struct Got {
    /// 0 when the stream was reset before the response headers.
    status: u16,
    headers: HeaderMap,
    /// The body and trailers, or why reading them failed.
    rest: Result<(Bytes, Option<HeaderMap>), String>,
}

/// POSTs `body` with the trailer `x-client: 1` over HTTP/2 (prior knowledge) to tidegate.
fn post_h2(proxy: SocketAddr, path: &str, headers: &[(&'static str, &str)]) -> Got {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(proxy)
            .await
            .expect("connect to tidegate");
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        tokio::spawn(connection);
        let body = frames(vec![
            Frame::data(Bytes::from_static(b"hello")),
            Frame::trailers(header_map(&[("x-client", "1")])),
        ]);
        let mut request = Request::post(format!("http://app.test{path}"))
            .body(body)
            .expect("request");
        for (name, value) in headers {
            request
                .headers_mut()
                .append(*name, value.parse().expect("header value"));
        }
        let sent = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
            .await
            .expect("an answer within 10 s");
        let response = match sent {
            Ok(response) => response,
            // The stream was reset before any response headers.
            Err(e) => {
                return Got {
                    status: 0,
                    headers: HeaderMap::new(),
                    rest: Err(format!("{e:?}")),
                };
            }
        };
        let (parts, body) = response.into_parts();
        let rest = match tokio::time::timeout(Duration::from_secs(10), body.collect())
            .await
            .expect("the body ends within 10 s")
        {
            Ok(collected) => {
                let trailers = collected.trailers().cloned();
                Ok((collected.to_bytes(), trailers))
            }
            Err(e) => Err(format!("{e:?}")),
        };
        Got {
            status: parts.status.as_u16(),
            headers: parts.headers,
            rest,
        }
    })
}

// === per-failure checks ===

/// What the log and metrics said about `filter` before a misbehaviour.
struct Before {
    failures: u64,
    logged: usize,
    replaced: usize,
}

const FAIL_CLOSED_LOG: &str = "filter failed; failing the request (failurePolicy FailClosed)";
const FAIL_OPEN_LOG: &str = "filter failed; skipping it (failurePolicy FailOpen)";
const DEADLINE: &str = "ran longer than its time limit of 50ms";
const REPLACED_LOG: &str = "replaced a broken filter VM";

fn before(env: &Env, filter: &str, message: &str) -> Before {
    let name = format!("ns/{filter}");
    Before {
        failures: failures(env, filter),
        logged: log_lines(env, &[message, &name, DEADLINE]),
        replaced: log_lines(env, &[REPLACED_LOG, &name]),
    }
}

/// One failure of `filter` was counted, logged with its name, the error (the deadline) and
/// `message`, and its VM was replaced.
fn failed_once(env: &Env, case: &str, filter: &str, message: &str, before: &Before) {
    let mut values = logged_and_replaced_values(env, case, filter, message, before);
    values.push(Settles::new(
        format!("{case}: failures counted for ns/{filter}"),
        before.failures + 1,
        move || failures(env, filter),
    ));
    settle(&values);
}

fn logged_and_replaced(env: &Env, case: &str, filter: &str, message: &str, before: &Before) {
    settle(&logged_and_replaced_values(env, case, filter, message, before));
}

fn logged_and_replaced_values<'a>(
    env: &'a Env,
    case: &str,
    filter: &str,
    message: &'a str,
    before: &Before,
) -> Vec<Settles<'a>> {
    let name = format!("ns/{filter}");
    let replaced = name.clone();
    vec![
        Settles::new(
            format!("{case}: log lines `{message}` for {name}"),
            before.logged as u64 + 1,
            move || log_lines(env, &[message, &name, DEADLINE]) as u64,
        ),
        Settles::new(
            format!("{case}: VMs of {replaced} replaced"),
            before.replaced as u64 + 1,
            move || log_lines(env, &[REPLACED_LOG, &replaced]) as u64,
        ),
    ]
}

/// Another route and the admin server answer.
fn others_serve(env: &Env, case: &str) {
    let stable = get(&env.url(80, "/stable"), &[]);
    assert_eq!((stable.status, stable.exit), (200, 0), "{case}: another route serves");
    alive(env);
}

fn start_env(files: &[(&str, String)], extra_backend: Option<Backend>) -> (Env, Bystander) {
    let (mut env, backends) = Env::new(&["web-0"]);
    env.write("gateway.yaml", &gateway(""));
    env.write("web.yaml", &service("web", None, &[&backends[0]], false));
    if let Some(backend) = extra_backend {
        env.write(
            "upstream.yaml",
            &service("upstream", Some("kubernetes.io/h2c"), &[&backend], true),
        );
    }
    copy_module(&env, "hostile", "hostile.wasm");
    for (name, text) in files {
        env.write(name, text);
    }
    env.start();
    let bystander = Bystander::start(env.url(80, "/stable"));
    (env, bystander)
}

// === the tests ===

/// Loops in every callback a request goes through: context creation, request headers, body
/// and trailers, response headers, body and trailers.
#[test]
fn a_loop_in_any_request_callback_fails_by_policy_and_the_vm_is_replaced() {
    // The standard echo: it reports the request trailers it got (`x-seen-trailers`), sends
    // trailers on request (`x-want-trailers`) and the body after the headers
    // (`x-body-after-ms`).
    let upstream = Upstream::echo();
    let upstream_backend = Backend {
        pod: "upstream-0",
        http: upstream.port(),
        h2c: upstream.port(),
    };
    let upstream_routes = [
        route("upstream-closed", "/upstream-closed", "upstream"),
        route("upstream-open", "/upstream-open", "upstream"),
    ]
    .join("---\n");
    let (env, bystander) = start_env(
        &[
            ("routes.yaml", routes(&["stable", "closed", "open"])),
            ("upstream-routes.yaml", upstream_routes),
            (
                "closed.yaml",
                hostile_filter("hostile-closed", &["closed", "upstream-closed"], "FailClosed", ""),
            ),
            (
                "open.yaml",
                hostile_filter("hostile-open", &["open", "upstream-open"], "FailOpen", ""),
            ),
        ],
        Some(upstream_backend),
    );
    let proxy: SocketAddr = format!("127.0.0.1:{}", 80 + env.offset).parse().expect("addr");

    for (filter, policy) in [("hostile-closed", "FailClosed"), ("hostile-open", "FailOpen")] {
        let closed = policy == "FailClosed";
        let message = if closed { FAIL_CLOSED_LOG } else { FAIL_OPEN_LOG };
        let path = if closed { "/closed" } else { "/open" };
        let url = env.url(80, path);
        let upstream_path = if closed { "/upstream-closed" } else { "/upstream-open" };
        let refused = format!("filter ns/{filter} failed\n");

        // Callbacks that run before the response started, driven with curl. Each hostile
        // request is followed by a normal one on the same connection, so by the same worker and
        // the VM that replaced the one that looped.
        for (callback, hostile) in [
            ("proxy_on_context_create", "arm-context-create"),
            ("proxy_on_request_headers", "loop-request-headers"),
            ("proxy_on_request_body", "loop-request-body"),
            ("proxy_on_response_headers", "loop-response-headers"),
        ] {
            let case = format!("{policy} {callback}");
            let was = before(&env, filter, message);
            let header = format!("x-hostile: {hostile}");
            let mut hostile_request: Vec<&str> = vec!["-H", &header, &url];
            if callback == "proxy_on_request_body" {
                hostile_request.extend(["--data-binary", "hello"]);
            }
            let mut transfers: Vec<&[&str]> = vec![&hostile_request];
            // The context-creation loop is armed by one request and fires on the next one.
            let plain: &[&str] = &[&url];
            if callback == "proxy_on_context_create" {
                transfers.push(plain);
            }
            transfers.push(plain);
            let got = curl(&transfers);
            let (failing, next) = (&got[got.len() - 2], &got[got.len() - 1]);
            if callback == "proxy_on_context_create" {
                assert_eq!(got[0].status, 200, "{case}: arming passes");
            }
            assert_eq!(failing.exit, 0, "{case}: a complete answer: {failing:?}");
            if closed {
                assert_eq!(failing.status, 500, "{case}: {failing:?}");
                assert_eq!(failing.body, refused, "{case}");
            } else {
                assert_eq!(failing.status, 200, "{case}: the filter is skipped: {failing:?}");
                assert!(
                    env::json(&failing.body)["path"] == path,
                    "{case}: the backend answered: {}",
                    failing.body
                );
                // Skipped for the rest of the request, so it does not see the response either.
                assert!(!failing.survived(), "{case}: {}", failing.headers);
            }
            assert_eq!(
                (next.status, next.connects),
                (200, 0),
                "{case}: the next request on the same connection: {next:?}"
            );
            assert!(next.survived(), "{case}: the replacement VM serves: {}", next.headers);
            failed_once(&env, &case, filter, message, &was);
            others_serve(&env, &case);
        }

        // proxy_on_response_body, with the echo backend, whose small answer (head and body)
        // arrives in one piece: the first body frame is already there when hyper buffers the
        // response head and polls the body in the same pass, so it reaches the filter before
        // anything is flushed (the usual case for small responses).
        let case = format!("{policy} proxy_on_response_body");
        let was = before(&env, filter, message);
        let got = get(&url, &["-H", "x-hostile: loop-response-body"]);
        if closed {
            // The failure closes the connection with nothing written: no status for curl, which
            // exits with 52 ("Empty reply from server").
            assert_eq!((got.status, got.exit), (0, 52), "{case}: {got:?}");
        } else {
            assert_eq!((got.status, got.exit), (200, 0), "{case}: {got:?}");
            assert!(
                env::json(&got.body)["path"] == path,
                "{case}: the whole body arrived: {}",
                got.body
            );
            // Its headers callback ran before the body one looped.
            assert!(got.survived(), "{case}: {}", got.headers);
        }
        failed_once(&env, &case, filter, message, &was);
        // The connection was closed (FailClosed): the next request may go to either worker.
        let next = get(&url, &[]);
        assert_eq!((next.status, next.exit), (200, 0), "{case}: the filter serves again");
        assert!(next.survived(), "{case}: {}", next.headers);
        others_serve(&env, &case);

        // proxy_on_response_body once the response has visibly started: the in-test upstream
        // sends its headers at once and the body 300 ms later, so tidegate has flushed the
        // status line and headers to the client when the body reaches the filter.
        let case = format!("{policy} proxy_on_response_body (body after the headers)");
        let was = before(&env, filter, message);
        let got = get(
            &env.url(80, upstream_path),
            &[
                "-H",
                "x-hostile: loop-response-body",
                "-H",
                "x-body-after-ms: 300",
                "--data-binary",
                "hello",
            ],
        );
        assert_eq!(got.status, 200, "{case}: the response started: {got:?}");
        assert!(got.survived(), "{case}: {}", got.headers);
        if closed {
            // The failure cuts the chunked response: curl exits with 18 ("transfer closed with
            // outstanding read data remaining") after no byte of body.
            assert_eq!(got.exit, 18, "{case}: {got:?}");
            assert!(
                got.headers.contains("transfer-encoding: chunked"),
                "{case}: {}",
                got.headers
            );
            assert_eq!(got.body, "", "{case}");
        } else {
            assert_eq!((got.exit, got.body.as_str()), (0, "hello"), "{case}: {got:?}");
        }
        failed_once(&env, &case, filter, message, &was);
        others_serve(&env, &case);

        // Trailers, over HTTP/2 through the in-test upstream.
        let case = format!("{policy} proxy_on_request_trailers");
        let was = before(&env, filter, message);
        let got = post_h2(proxy, upstream_path, &[("x-hostile", "loop-request-trailers")]);
        if closed {
            // The request trailers come before the upstream can answer: a plain 500.
            assert_eq!(got.status, 500, "{case}: {got:?}");
            let (body, _) = got.rest.as_ref().expect("a complete 500");
            assert_eq!(body, refused.as_bytes(), "{case}");
        } else {
            assert_eq!(got.status, 200, "{case}: {got:?}");
            assert_eq!(
                got.headers.get("x-seen-trailers").map(|v| v.as_bytes()),
                Some(&b"x-client=1"[..]),
                "{case}: the trailers reached the upstream"
            );
            let (body, _) = got.rest.as_ref().expect("a complete response");
            assert_eq!(body, "hello", "{case}");
            assert!(!got.headers.contains_key("x-hostile-survived"), "{case}: skipped");
        }
        failed_once(&env, &case, filter, message, &was);
        others_serve(&env, &case);

        // proxy_on_response_trailers: as for the body, first with the whole response arriving
        // at once, then with the headers flushed to the client before the rest comes.
        for delayed in [false, true] {
            let case = if delayed {
                format!("{policy} proxy_on_response_trailers (body after the headers)")
            } else {
                format!("{policy} proxy_on_response_trailers")
            };
            let was = before(&env, filter, message);
            let mut headers = vec![("x-hostile", "loop-response-trailers"), ("x-want-trailers", "1")];
            if delayed {
                headers.push(("x-body-after-ms", "300"));
            }
            let got = post_h2(proxy, upstream_path, &headers);
            if closed && !delayed {
                // The failure resets the HTTP/2 stream (INTERNAL_ERROR) before hyper sent
                // anything of it: resetting a stream drops its queued frames, so the client
                // gets the reset instead of response headers.
                assert_eq!(got.status, 0, "{case}: {got:?}");
                let error = got.rest.as_ref().expect_err("reset");
                assert!(error.contains("INTERNAL_ERROR"), "{case}: {error}");
            } else if closed {
                // The headers were out: the client has a 200, then its body read fails on the
                // reset.
                assert_eq!(got.status, 200, "{case}: {got:?}");
                assert!(got.headers.contains_key("x-hostile-survived"), "{case}: {got:?}");
                let error = got.rest.as_ref().expect_err("reset");
                assert!(error.contains("INTERNAL_ERROR"), "{case}: {error}");
            } else {
                assert_eq!(got.status, 200, "{case}: {got:?}");
                // Its response headers callback ran before the trailers one looped.
                assert!(got.headers.contains_key("x-hostile-survived"), "{case}: {got:?}");
                let (body, trailers) = got.rest.as_ref().expect("a complete response");
                assert_eq!(body, "hello", "{case}");
                assert_eq!(
                    trailers
                        .as_ref()
                        .and_then(|t| t.get("x-upstream"))
                        .map(|v| v.as_bytes()),
                    Some(&b"done"[..]),
                    "{case}: the trailers arrive, unfiltered"
                );
            }
            failed_once(&env, &case, filter, message, &was);
            others_serve(&env, &case);
        }
        let next = post_h2(proxy, upstream_path, &[("x-want-trailers", "1")]);
        assert_eq!(next.status, 200, "{case}: the filter serves again: {next:?}");
        assert!(next.rest.is_ok(), "{case}: {next:?}");
        others_serve(&env, &case);
    }
    bystander.finish();
}

/// Loops once the answer is sent (`proxy_on_done`, `proxy_on_log`): the request can no longer
/// fail, so the client keeps its whole answer whatever the policy; the failure is logged with
/// the filter's name, the VM replaced, and the failure counted like any other.
#[test]
fn a_loop_after_the_answer_is_logged_counted_and_the_vm_is_replaced() {
    let (env, bystander) = start_env(
        &[
            ("routes.yaml", routes(&["stable", "closed", "open"])),
            (
                "closed.yaml",
                hostile_filter("after-closed", &["closed"], "FailClosed", ""),
            ),
            ("open.yaml", hostile_filter("after-open", &["open"], "FailOpen", "")),
        ],
        None,
    );
    const FINISH_LOG: &str = "finishing an HTTP context failed; the instance is broken";
    let callbacks = [("proxy_on_done", "loop-done"), ("proxy_on_log", "loop-log")];
    let mut counted = Vec::new();
    for (filter, path) in [("after-closed", "/closed"), ("after-open", "/open")] {
        let url = env.url(80, path);
        let failures_before = failures(&env, filter);
        for (callback, hostile) in callbacks {
            let case = format!("{filter} {callback}");
            let was = before(&env, filter, FINISH_LOG);
            let header = format!("x-hostile: {hostile}");
            let got = curl(&[&["-H", &header, &url], &[&url]]);
            // The client had its whole answer before the filter looped.
            assert_eq!((got[0].status, got[0].exit), (200, 0), "{case}: {:?}", got[0]);
            assert!(got[0].survived(), "{case}: {}", got[0].headers);
            assert!(
                env::json(&got[0].body)["path"] == path,
                "{case}: the whole body: {}",
                got[0].body
            );
            assert_eq!(
                (got[1].status, got[1].exit, got[1].connects),
                (200, 0, 0),
                "{case}: the next request on the same connection: {:?}",
                got[1]
            );
            assert!(
                got[1].survived(),
                "{case}: the replacement VM serves: {}",
                got[1].headers
            );
            logged_and_replaced(&env, &case, filter, FINISH_LOG, &was);
            others_serve(&env, &case);
        }
        counted.push((filter, failures_before, failures(&env, filter)));
    }
    bystander.finish();
    for (filter, before, after) in counted {
        assert_eq!(
            after,
            before + callbacks.len() as u64,
            "tidegate_filter_failures_total{{filter=\"ns/{filter}\"}} counts the loops in proxy_on_done and proxy_on_log"
        );
    }
}

/// A loop in `proxy_on_tick`, armed by a request: the next tick of the filter (in whichever of
/// its VMs wins the flag) never returns. No request is involved, so no policy applies; the
/// failure is counted and logged, and the VM is replaced and gets ticks in turn.
#[test]
fn a_loop_in_a_tick_is_counted_and_the_vm_is_replaced() {
    let (env, bystander) = start_env(
        &[
            ("routes.yaml", routes(&["stable", "ticking"])),
            (
                "ticking.yaml",
                hostile_filter("ticking", &["ticking"], "FailClosed", "tick=20"),
            ),
        ],
        None,
    );
    let case = "proxy_on_tick";
    let was = before(&env, "ticking", "proxy_on_tick failed");
    let url = env.url(80, "/ticking");
    let armed = get(&url, &["-H", "x-hostile: arm-tick"]);
    assert_eq!((armed.status, armed.exit), (200, 0), "{case}: {armed:?}");
    failed_once(&env, case, "ticking", "proxy_on_tick failed", &was);
    // The VM that replaced it gets ticks (the others started before the loop, so only it
    // counts them).
    let replacement_ticks = |t: &Transfer| -> u64 {
        t.headers
            .lines()
            .find_map(|l| l.strip_prefix("x-hostile-replacement-ticks: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no x-hostile-replacement-ticks in {}", t.headers))
    };
    env.eventually(Duration::from_secs(5), "ticks delivered to the replacement VM", || {
        let got = get(&url, &[]);
        assert_eq!((got.status, got.exit), (200, 0), "{case}: {got:?}");
        replacement_ticks(&got) >= 3
    });
    assert_eq!(failures(&env, "ticking"), was.failures + 1, "{case}: it looped once");
    others_serve(&env, case);
    bystander.finish();
}

/// Loops in `proxy_on_vm_start` and `proxy_on_configure`. The control plane starts each user
/// filter once before publishing a version (with the lifecycle budget: callTimeout, but at least
/// 1 s), so a filter that cannot start is held back on its own:
///
/// - the rest of the edit applies (a route added in the same file serves);
/// - a filter that never started has nothing to run: FailClosed stands in a 500 for the routes in
///   its scope, FailOpen leaves it out;
/// - a filter that started before keeps its last configuration running;
/// - it is counted once (not per worker), its WasmFilter says `Programmed=False/StartFailed` with
///   the reason, no version is rejected, and no worker stalls (the bystander sees no failure).
#[test]
fn a_loop_when_a_vm_starts_holds_back_only_that_filter() {
    let (env, bystander) = start_env(&[("routes.yaml", routes(&["stable", "lc"]))], None);
    let served = |path: &str| get(&env.url(80, path), &[]);
    let programmed = |filter: &str| -> (String, String, String) {
        let status = env.status();
        status["objects"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|o| o["kind"] == "WasmFilter" && o["name"] == filter)
            .flat_map(|o| o["status"]["conditions"].as_array().cloned().unwrap_or_default())
            .find(|c| c["type"] == "Programmed")
            .map(|c| {
                let text = |k: &str| c[k].as_str().unwrap_or_default().to_string();
                (text("status"), text("reason"), text("message"))
            })
            .unwrap_or_default()
    };
    let rejected_before = rejected(&env);
    let mut version = 0;
    for (callback, config) in [
        ("proxy_on_vm_start", "loop-vm-start"),
        ("proxy_on_configure", "loop-configure"),
    ] {
        for policy in ["FailClosed", "FailOpen"] {
            version += 1;
            let filter = format!("{config}-{}", policy.to_ascii_lowercase());
            let case = format!("{policy} {callback}");
            let failures_before = failures(&env, &filter);
            let route_name = format!("after-{version}");
            // One file, so the filter and the new route are in the same version.
            env.write(
                "lifecycle.yaml",
                &[
                    hostile_filter(&filter, &["lc"], policy, config),
                    route(&route_name, &format!("/{route_name}"), "web"),
                ]
                .join("---\n"),
            );
            env.eventually(
                Duration::from_secs(10),
                &format!("{case}: the rest of the edit applies"),
                || served(&format!("/{route_name}")).status == 200,
            );
            settle(&[Settles::new(
                format!("{case}: failures counted once"),
                failures_before + 1,
                || failures(&env, &filter),
            )]);
            let lc = served("/lc");
            if policy == "FailClosed" {
                assert_eq!(lc.status, 500, "{case}: nothing runs in its place: {}", lc.body);
                assert!(lc.body.contains(&format!("ns/{filter}")), "{case}: {}", lc.body);
            } else {
                assert_eq!(lc.status, 200, "{case}: the filter is left out");
                assert!(!lc.survived(), "{case}: the filter is left out");
            }
            let (status, reason, message) = programmed(&filter);
            assert_eq!(
                (status.as_str(), reason.as_str()),
                ("False", "StartFailed"),
                "{case}: {message}"
            );
            assert!(message.contains("nothing runs in its place"), "{case}: {message}");
            assert_eq!(
                log_lines(&env, &["cannot start with its spec.config", &format!("ns/{filter}")]),
                1,
                "{case}: logged once, with the filter's name"
            );
            others_serve(&env, &case);
        }

        // A filter that started before keeps running its last configuration.
        version += 1;
        let filter = format!("{config}-kept");
        let case = format!("last good {callback}");
        env.write("lifecycle.yaml", &hostile_filter(&filter, &["lc"], "FailClosed", ""));
        env.eventually(Duration::from_secs(10), &format!("{case}: the filter runs"), || {
            served("/lc").survived()
        });
        let route_name = format!("after-{version}");
        env.write(
            "lifecycle.yaml",
            &[
                hostile_filter(&filter, &["lc"], "FailClosed", config),
                route(&route_name, &format!("/{route_name}"), "web"),
            ]
            .join("---\n"),
        );
        env.eventually(
            Duration::from_secs(10),
            &format!("{case}: the rest of the edit applies"),
            || served(&format!("/{route_name}")).status == 200,
        );
        let lc = served("/lc");
        assert_eq!(lc.status, 200, "{case}: {}", lc.body);
        assert!(lc.survived(), "{case}: the last configuration keeps running");
        let (status, reason, message) = programmed(&filter);
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "StartFailed"),
            "{case}: {message}"
        );
        assert!(
            message.contains("last configuration that started keeps running"),
            "{case}: {message}"
        );
        others_serve(&env, &case);
        std::fs::remove_file(env.config_dir().join("lifecycle.yaml")).expect("remove lifecycle.yaml");
        env.eventually(Duration::from_secs(5), "the version without the filter", || {
            served(&format!("/{route_name}")).status == 404
        });
    }
    assert_eq!(rejected(&env), rejected_before, "no version was rejected");
    alive(&env);
    bystander.finish();
}
