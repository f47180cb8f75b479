//! Real traffic through the request flow: an in-process echo upstream (HTTP/1.1 and h2c), the
//! proxy's own `proxy()` behind a hyper server, and hyper clients (HTTP/1.1 and HTTP/2), all on
//! one current-thread runtime as a worker runs them. The filters are the `body-rewrite` example
//! (the plain proxy-wasm crate, built from `filters/examples/body-rewrite`) and small WAT guests
//! for routing and failures.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, LazyLock, OnceLock};

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use super::{ConnectionInfo, proxy};
use crate::metrics::Metrics;
use crate::proxy::chain::{Chain, ChainFilter, Direction, FailurePolicy};
use crate::proxy::published::Published;
use crate::proxy::upstream::Upstreams;
use crate::proxy::worker::{Generation, LocalExec};
use crate::snapshot::{ClusterPlan, Snapshot, UpstreamProtocol};
use crate::wasm::{FilterModule, SandboxLimits, WasmRuntime};

static RUNTIME: LazyLock<WasmRuntime> = LazyLock::new(|| WasmRuntime::with_max_instances(100).expect("engine"));

/// The `body-rewrite` example, built once per test binary with its own target directory (the
/// outer `cargo test` holds the lock on the main one).
fn body_rewrite_wasm() -> &'static [u8] {
    // Built by runtime/build.rs together with the standard filters.
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| {
        let path = Path::new(env!("TIDEGATE_EXAMPLE_FILTERS")).join("body_rewrite.wasm");
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    })
}

fn module(name: &str, wasm: &[u8]) -> FilterModule {
    RUNTIME.load(name, wasm).unwrap_or_else(|e| panic!("load {name}: {e}"))
}

fn filter(module: FilterModule, config: &str, failure_policy: FailurePolicy) -> ChainFilter {
    ChainFilter {
        module,
        config: Arc::from(config.as_bytes()),
        limits: SandboxLimits::default(),
        failure_policy,
        scope: None,
    }
}

fn rewrite(config: &str) -> ChainFilter {
    filter(
        module("body-rewrite", body_rewrite_wasm()),
        config,
        FailurePolicy::FailClosed,
    )
}

/// A WAT guest with a bump allocator and the given callbacks.
fn wat(callbacks: &str) -> Vec<u8> {
    let text = format!(
        r#"(module
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_property" (func $set_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_close_stream" (func $close_stream (param i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $send_local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 0x10000))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $p))
  (func (export "proxy_abi_version_0_2_1"))
  (data (i32.const 0x1000) "tidegate\00cluster")
  (data (i32.const 0x1020) "tidegate\00endpoint")
  (data (i32.const 0x1040) "echo")
  (data (i32.const 0x1060) "denied\n")
  (data (i32.const 0x1070) "!")
{callbacks}
)"#
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The route: cluster `echo`, endpoint from the plugin configuration. No body callbacks.
fn router(endpoint: SocketAddr) -> ChainFilter {
    let wasm = wat(r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (global.set $heap (i32.const 0x10000))
    (drop (call $get_buffer (i32.const 7) (i32.const 0) (i32.const 100) (i32.const 0x80) (i32.const 0x84)))
    (drop (call $set_property (i32.const 0x1000) (i32.const 16) (i32.const 0x1040) (i32.const 4)))
    (drop (call $set_property (i32.const 0x1020) (i32.const 17) (i32.load (i32.const 0x80)) (i32.load (i32.const 0x84))))
    (i32.const 0))
"#);
    filter(
        module("router", &wasm),
        &endpoint.to_string(),
        FailurePolicy::FailClosed,
    )
}

fn guest(name: &str, callbacks: &str, failure_policy: FailurePolicy) -> ChainFilter {
    filter(module(name, &wat(callbacks)), "", failure_policy)
}

/// Runs `test` on a current-thread runtime with a `LocalSet`, as a worker does.
fn run<F: Future<Output = ()>>(test: impl FnOnce() -> F) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local
        .block_on(&runtime, async move {
            tokio::time::timeout(std::time::Duration::from_secs(30), test()).await
        })
        .expect("the test timed out");
}

type Frames = StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

fn frames(frames: Vec<Frame<Bytes>>) -> Frames {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = frames.into_iter().map(Ok).collect();
    StreamBody::new(futures::stream::iter(frames))
}

fn map(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, value.parse().expect("header value"));
    }
    map
}

/// The upstream: `/big/N` answers N bytes of `x` in 16 KiB frames (with a content-length);
/// anything else echoes the request body after `hello from upstream: `, and tells in headers what
/// it received (`x-seen-*`). With `x-want-trailers` it ends the response with an `x-upstream`
/// trailer.
async fn echo(request: Request<Incoming>) -> Result<Response<Frames>, Infallible> {
    let (parts, body) = request.into_parts();
    if let Some(n) = parts.uri.path().strip_prefix("/big/") {
        let n: usize = n.parse().unwrap_or(0);
        let chunks: Vec<Frame<Bytes>> = (0..n)
            .step_by(16 * 1024)
            .map(|at| Frame::data(Bytes::from(vec![b'x'; (n - at).min(16 * 1024)])))
            .collect();
        let mut response = Response::new(frames(chunks));
        response.headers_mut().insert("content-length", n.into());
        return Ok(response);
    }
    let collected = match body.collect().await {
        Ok(collected) => collected,
        Err(e) => {
            let mut response = Response::new(frames(vec![Frame::data(Bytes::from(e.to_string()))]));
            *response.status_mut() = hyper::StatusCode::BAD_REQUEST;
            return Ok(response);
        }
    };
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let body = collected.to_bytes();
    let seen = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_string()
    };
    let mut seen_trailers: Vec<String> = trailers
        .iter()
        .map(|(n, v)| format!("{n}={}", v.to_str().unwrap_or("?")))
        .collect();
    seen_trailers.sort();
    let mut out = b"hello from upstream: ".to_vec();
    out.extend_from_slice(&body);
    let want_trailers = parts.headers.contains_key("x-want-trailers");
    let mut response_frames = vec![Frame::data(Bytes::from(out.clone()))];
    if want_trailers {
        response_frames.push(Frame::trailers(map(&[("x-upstream", "done")])));
    }
    let mut response = Response::new(frames(response_frames));
    let headers = response.headers_mut();
    headers.insert("x-seen-content-length", seen("content-length").parse().expect("value"));
    headers.insert(
        "x-seen-transfer-encoding",
        seen("transfer-encoding").parse().expect("value"),
    );
    headers.insert("x-seen-trailer", seen("trailer").parse().expect("value"));
    headers.insert("x-seen-te", seen("te").parse().expect("value"));
    headers.insert(
        "x-seen-trailers",
        if seen_trailers.is_empty() {
            "none".to_string()
        } else {
            seen_trailers.join(";")
        }
        .parse()
        .expect("value"),
    );
    if want_trailers {
        headers.insert("trailer", "x-upstream".parse().expect("value"));
    } else {
        headers.insert("content-length", out.len().into());
    }
    Ok(response)
}

/// Serves `service` (HTTP/1.1 and HTTP/2 with prior knowledge) on a fresh loopback port.
async fn serve<S, F, B>(service: S) -> SocketAddr
where
    S: Fn(Request<Incoming>) -> F + Clone + 'static,
    F: Future<Output = Result<Response<B>, super::StreamReset>> + 'static,
    B: hyper::body::Body<Data = Bytes> + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::task::spawn_local(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service.clone();
            tokio::task::spawn_local(async move {
                let mut builder = hyper_util::server::conn::auto::Builder::new(LocalExec);
                builder.http1().timer(TokioTimer::new());
                builder.http2().timer(TokioTimer::new());
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service_fn(service))
                    .await;
            });
        }
    });
    addr
}

struct Harness {
    proxy: SocketAddr,
    metrics: Arc<Metrics>,
}

/// Starts an echo upstream and the proxy with `filters` (then the router) in front of it.
async fn harness(
    filters: Vec<ChainFilter>,
    protocol: UpstreamProtocol,
    buffer_limit: Option<usize>,
) -> (Harness, Rc<Generation>) {
    let upstream = serve(|request| async move { echo(request).await.map_err(|never| match never {}) }).await;
    let mut filters = filters;
    filters.push(router(upstream));
    let metrics = Arc::new(Metrics::new());
    let mut chain = Chain::start(&filters, metrics.clone()).expect("chain starts");
    if let Some(limit) = buffer_limit {
        chain = chain.with_buffer_limit(limit);
    }
    let mut snapshot = Snapshot::default();
    snapshot.clusters.insert(
        "echo".to_string(),
        ClusterPlan {
            protocol,
            endpoints: vec![upstream],
        },
    );
    let published = Arc::new(Published {
        snapshot: Arc::new(snapshot),
        ..Published::default()
    });
    let generation = Rc::new(Generation { published, chain });
    let upstreams = Upstreams::default();
    let shared = generation.clone();
    let proxy_addr = serve(move |request| {
        let generation = shared.clone();
        let upstreams = upstreams.clone();
        async move {
            let info = ConnectionInfo {
                id: 1,
                gateway_port: 80,
                gateway: None,
                gateways: String::new(),
                scheme: "http",
                remote: "127.0.0.1:1".parse().expect("addr"),
                local: "127.0.0.1:80".parse().expect("addr"),
                tls: None,
                properties: Default::default(),
            }
            .with_properties();
            proxy(request, &info, generation, &upstreams).await
        }
    })
    .await;
    (
        Harness {
            proxy: proxy_addr,
            metrics,
        },
        generation,
    )
}

/// A response as the client got it; `Err` when the stream failed (reset, closed).
#[derive(Debug)]
struct Got {
    status: u16,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
}

impl Got {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("(absent)")
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn send(addr: SocketAddr, h2: bool, request: Request<Frames>) -> Result<Got, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let io = TokioIo::new(stream);
    let response = if h2 {
        let (mut sender, connection) = hyper::client::conn::http2::Builder::new(LocalExec)
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::task::spawn_local(connection);
        sender.send_request(request).await.map_err(|e| e.to_string())?
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| e.to_string())?;
        tokio::task::spawn_local(connection);
        sender.send_request(request).await.map_err(|e| e.to_string())?
    };
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.map_err(|e| format!("body: {e}"))?;
    Ok(Got {
        status: parts.status.as_u16(),
        headers: parts.headers,
        trailers: collected.trailers().cloned(),
        body: collected.to_bytes(),
    })
}

/// A POST of `chunks` (one frame each), then `trailers` if any.
fn post(
    h2: bool,
    path: &str,
    chunks: &[&str],
    trailers: Option<HeaderMap>,
    headers: &[(&'static str, &str)],
) -> Request<Frames> {
    let mut list: Vec<Frame<Bytes>> = chunks
        .iter()
        .map(|c| Frame::data(Bytes::copy_from_slice(c.as_bytes())))
        .collect();
    if let Some(trailers) = trailers {
        list.push(Frame::trailers(trailers));
    }
    let uri = if h2 {
        format!("http://app.test{path}")
    } else {
        path.to_string()
    };
    let mut request = Request::post(uri).body(frames(list)).expect("request");
    if !h2 {
        request.headers_mut().insert("host", "app.test".parse().expect("value"));
    }
    for (name, value) in headers {
        request.headers_mut().append(*name, value.parse().expect("value"));
    }
    request
}

fn get(h2: bool, path: &str) -> Request<Frames> {
    let mut request = post(h2, path, &[], None, &[]);
    *request.method_mut() = hyper::Method::GET;
    request
}

// === tests ===

#[test]
fn a_held_request_is_rewritten_and_gets_its_new_content_length() {
    run(|| async {
        let (h, _) = harness(vec![rewrite("trailer=")], UpstreamProtocol::Http1, None).await;
        let body = "say hello to hello";
        let got = send(
            h.proxy,
            false,
            post(
                false,
                "/",
                &["say hel", "lo to hello"],
                None,
                &[("content-length", "18")],
            ),
        )
        .await
        .expect("response");
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(body.len(), 18);
        assert_eq!(got.header("x-seen-content-length"), "18", "howdy is as long as hello");
        assert_eq!(got.text(), "howdy from upstream: say howdy to howdy");
        assert_eq!(
            got.header("content-length"),
            "39",
            "the response was held and re-measured"
        );
    });
}

#[test]
fn a_rewrite_that_changes_the_length_fixes_content_length_both_ways() {
    run(|| async {
        let (h, _) = harness(
            vec![rewrite("to=good morning\ntrailer=")],
            UpstreamProtocol::Http1,
            None,
        )
        .await;
        let got = send(
            h.proxy,
            false,
            post(false, "/", &["hello"], None, &[("content-length", "5")]),
        )
        .await
        .expect("response");
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.header("x-seen-content-length"), "12");
        assert_eq!(got.header("x-seen-transfer-encoding"), "none");
        assert_eq!(got.text(), "good morning from upstream: good morning");
        assert_eq!(got.header("content-length"), "40");
    });
}

#[test]
fn trailers_a_filter_creates_reach_an_http1_upstream() {
    run(|| async {
        let (h, _) = harness(vec![rewrite("")], UpstreamProtocol::Http1, None).await;
        let got = send(
            h.proxy,
            false,
            post(false, "/", &["hello, ", "hello"], None, &[("content-length", "12")]),
        )
        .await
        .expect("response");
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(
            got.header("x-seen-content-length"),
            "none",
            "trailers need chunked encoding"
        );
        assert_eq!(got.header("x-seen-transfer-encoding"), "chunked");
        assert_eq!(got.header("x-seen-trailer"), "x-body-rewrites");
        assert_eq!(got.header("x-seen-trailers"), "x-body-rewrites=2");
        assert_eq!(got.text(), "howdy from upstream: howdy, howdy");
    });
}

#[test]
fn http2_trailers_flow_both_ways_and_the_filter_adds_to_them() {
    run(|| async {
        let (h, _) = harness(vec![rewrite("")], UpstreamProtocol::H2c, None).await;
        let got = send(
            h.proxy,
            true,
            post(
                true,
                "/",
                &["hello ", "world"],
                Some(map(&[("x-client", "1")])),
                &[("x-want-trailers", "1")],
            ),
        )
        .await
        .expect("response");
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(
            got.header("x-seen-trailers"),
            "x-body-rewrites=1;x-client=1",
            "the filter added to the client's trailers in on_request_trailers"
        );
        assert_eq!(got.text(), "howdy from upstream: howdy world");
        let trailers = got.trailers.expect("response trailers");
        assert_eq!(trailers.get("x-upstream").map(|v| v.as_bytes()), Some(&b"done"[..]));
        assert_eq!(
            trailers.get("x-body-rewrites").map(|v| v.as_bytes()),
            Some(&b"1"[..]),
            "the upstream's own hello"
        );
    });
}

#[test]
fn http1_chunked_trailers_pass_through_when_no_filter_cares() {
    run(|| async {
        let (h, generation) = harness(vec![], UpstreamProtocol::Http1, None).await;
        assert!(!generation.chain.cares(Direction::Request) && !generation.chain.cares(Direction::Response));
        let got = send(
            h.proxy,
            false,
            post(
                false,
                "/",
                &["streamed ", "as is"],
                Some(map(&[("x-client", "1")])),
                &[("trailer", "x-client"), ("te", "trailers"), ("x-want-trailers", "1")],
            ),
        )
        .await
        .expect("response");
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.header("x-seen-trailers"), "x-client=1");
        assert_eq!(got.header("x-seen-te"), "trailers");
        assert_eq!(got.text(), "hello from upstream: streamed as is");
        let trailers = got.trailers.expect("response trailers over HTTP/1.1 with TE: trailers");
        assert_eq!(trailers.get("x-upstream").map(|v| v.as_bytes()), Some(&b"done"[..]));
    });
}

#[test]
fn a_streaming_rewrite_drops_content_length_and_is_chunked() {
    run(|| async {
        let (h, _) = harness(
            vec![rewrite("hold_headers=false\ntrailer=")],
            UpstreamProtocol::Http1,
            None,
        )
        .await;
        let got = send(
            h.proxy,
            false,
            post(false, "/", &["oh hello"], None, &[("content-length", "8")]),
        )
        .await
        .expect("response");
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.header("x-seen-content-length"), "none");
        assert_eq!(got.header("x-seen-transfer-encoding"), "chunked");
        assert_eq!(got.text(), "howdy from upstream: oh howdy");
        assert_eq!(got.header("content-length"), "(absent)");
        assert_eq!(got.header("transfer-encoding"), "chunked");
    });
}

#[test]
fn the_buffer_limit_answers_413_for_requests_and_500_for_responses() {
    run(|| async {
        let (h, _) = harness(vec![rewrite("trailer=")], UpstreamProtocol::Http1, Some(4096)).await;
        let big = "x".repeat(3000);
        let got = send(h.proxy, false, post(false, "/", &[&big, &big], None, &[]))
            .await
            .expect("response");
        assert_eq!(got.status, 413, "{}", got.text());
        assert!(got.text().contains("body-rewrite"), "{}", got.text());
        let got = send(h.proxy, false, get(false, "/big/10000")).await.expect("response");
        assert_eq!(got.status, 500, "{}", got.text());
        let small = send(h.proxy, false, post(false, "/", &["hello"], None, &[]))
            .await
            .expect("response");
        assert_eq!(
            (small.status, small.text().as_str()),
            (200, "howdy from upstream: howdy")
        );
        let metrics = h.metrics.encode();
        for direction in ["request", "response"] {
            let line =
                format!("tidegate_body_buffer_limit_total{{filter=\"body-rewrite\",direction=\"{direction}\"}} 1");
            assert!(metrics.contains(&line), "{line} in\n{metrics}");
        }

        // Once the response headers went out, the limit can only reset the stream.
        let (h, _) = harness(
            vec![rewrite("hold_headers=false\ntrailer=")],
            UpstreamProtocol::Http1,
            Some(4096),
        )
        .await;
        for h2 in [false, true] {
            // Several frames: the filter pauses on the first, so the proxy buffers.
            let outcome = send(h.proxy, h2, get(h2, "/big/100000")).await;
            assert!(
                outcome.is_err(),
                "{:?}",
                outcome.map(|got| (got.status, got.body.len()))
            );
        }
    });
}

const TRAP_REQUEST_BODY: &str = r#"
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) unreachable)
"#;
const TRAP_RESPONSE_BODY: &str = r#"
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) unreachable)
"#;

#[test]
fn a_fail_closed_body_failure_is_500_before_the_response_and_a_reset_after() {
    run(|| async {
        let (h, _) = harness(
            vec![guest("trap-request", TRAP_REQUEST_BODY, FailurePolicy::FailClosed)],
            UpstreamProtocol::Http1,
            None,
        )
        .await;
        let got = send(h.proxy, false, post(false, "/", &["a", "b"], None, &[]))
            .await
            .expect("an answer");
        assert_eq!(got.status, 500, "{}", got.text());
        assert!(got.text().contains("trap-request"));
        assert!(
            h.metrics
                .encode()
                .contains("tidegate_filter_failures_total{filter=\"trap-request\"} 1")
        );

        let (h, _) = harness(
            vec![guest("trap-response", TRAP_RESPONSE_BODY, FailurePolicy::FailClosed)],
            UpstreamProtocol::Http1,
            None,
        )
        .await;
        for h2 in [false, true] {
            let outcome = send(h.proxy, h2, post(h2, "/", &["a"], None, &[])).await;
            assert!(
                outcome.is_err(),
                "the response had started: the stream is reset, not answered ({outcome:?})"
            );
        }
    });
}

#[test]
fn a_fail_open_body_failure_skips_the_filter() {
    run(|| async {
        let (h, _) = harness(
            vec![
                guest("trap-request", TRAP_REQUEST_BODY, FailurePolicy::FailOpen),
                guest("trap-response", TRAP_RESPONSE_BODY, FailurePolicy::FailOpen),
            ],
            UpstreamProtocol::H2c,
            None,
        )
        .await;
        for h2 in [false, true] {
            let got = send(h.proxy, h2, post(h2, "/", &["intact ", "body"], None, &[]))
                .await
                .expect("response");
            assert_eq!(
                (got.status, got.text().as_str()),
                (200, "hello from upstream: intact body")
            );
        }
    });
}

#[test]
fn a_body_callback_may_answer_locally_or_reset_the_stream() {
    run(|| async {
        let deny = r#"
  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (if (local.get $eos) (then
      (drop (call $send_local_response (i32.const 403) (i32.const 0) (i32.const 0) (i32.const 0x1060) (i32.const 7) (i32.const 0) (i32.const 0) (i32.const -1)))
      (return (i32.const 1))))
    (i32.const 0))
"#;
        let (h, _) = harness(
            vec![guest("deny", deny, FailurePolicy::FailClosed)],
            UpstreamProtocol::Http1,
            None,
        )
        .await;
        let got = send(h.proxy, false, post(false, "/", &["x"], None, &[]))
            .await
            .expect("response");
        assert_eq!((got.status, got.text().as_str()), (403, "denied\n"));

        // With a gRPC status, the reply is a gRPC trailers-only response, as Envoy sends it.
        let grpc_deny = deny.replace("(i32.const -1)", "(i32.const 16)");
        let (h, _) = harness(
            vec![guest("grpc-deny", &grpc_deny, FailurePolicy::FailClosed)],
            UpstreamProtocol::Http1,
            None,
        )
        .await;
        let got = send(h.proxy, true, post(true, "/", &["x"], None, &[]))
            .await
            .expect("response");
        assert_eq!(got.status, 200);
        assert_eq!(got.header("content-type"), "application/grpc");
        assert_eq!(got.header("grpc-status"), "16");
        assert_eq!(got.header("grpc-message"), "denied");
        assert_eq!(got.text(), "");

        let reset = r#"
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32)
    (drop (call $close_stream (i32.const 1)))
    (i32.const 0))
"#;
        let (h, _) = harness(
            vec![guest("reset", reset, FailurePolicy::FailClosed)],
            UpstreamProtocol::Http1,
            None,
        )
        .await;
        for h2 in [false, true] {
            let outcome = send(h.proxy, h2, post(h2, "/", &["x"], None, &[])).await;
            assert!(outcome.is_err(), "{outcome:?}");
        }
    });
}

#[test]
fn a_header_pause_without_body_callbacks_is_released_by_the_body_or_its_end() {
    run(|| async {
        let hold = r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (i32.const 1))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32) (i32.const 1))
"#;
        let (h, generation) = harness(
            vec![guest("hold", hold, FailurePolicy::FailClosed)],
            UpstreamProtocol::Http1,
            None,
        )
        .await;
        assert!(!generation.chain.cares(Direction::Request));
        for h2 in [false, true] {
            let got = send(h.proxy, h2, get(h2, "/")).await.expect("response");
            assert_eq!((got.status, got.text().as_str()), (200, "hello from upstream: "));
            let got = send(h.proxy, h2, post(h2, "/", &["some ", "body"], None, &[]))
                .await
                .expect("response");
            assert_eq!(
                (got.status, got.text().as_str()),
                (200, "hello from upstream: some body")
            );
        }
    });
}

#[test]
fn many_requests_reuse_the_filter_contexts_cleanly() {
    run(|| async {
        let (h, generation) = harness(vec![rewrite("")], UpstreamProtocol::H2c, None).await;
        for i in 0..50 {
            let h2 = i % 2 == 0;
            let got = send(h.proxy, h2, post(h2, "/", &["hello"], None, &[]))
                .await
                .expect("response");
            assert_eq!(got.status, 200);
        }
        // Every context ended (done, log, delete) once its streams were over.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let open = generation.chain.open_contexts();
        assert_eq!(open, 0, "contexts leaked");
    });
}

#[test]
fn a_length_change_after_content_length_went_out_resets_instead_of_lying() {
    run(|| async {
        // Appends "!" to every frame of both bodies, continuing: the headers (and any
        // content-length) went on before the body was changed.
        let append = r#"
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
    (drop (call $set_buffer (i32.const 0) (i32.const -1) (i32.const 0) (i32.const 0x1070) (i32.const 1)))
    (i32.const 0))
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32)
    (drop (call $set_buffer (i32.const 1) (i32.const -1) (i32.const 0) (i32.const 0x1070) (i32.const 1)))
    (i32.const 0))
"#;
        let (h, _) = harness(
            vec![guest("append", append, FailurePolicy::FailClosed)],
            UpstreamProtocol::Http1,
            None,
        )
        .await;
        // With a content-length on the request: the upstream must not get a wrong length.
        let outcome = send(
            h.proxy,
            false,
            post(false, "/", &["abc"], None, &[("content-length", "3")]),
        )
        .await;
        assert!(outcome.is_err(), "{outcome:?}");
        // Chunked: no length to contradict, so the request goes; the echo's response has a
        // content-length, which the appended byte would contradict: reset.
        for h2 in [false, true] {
            let outcome = send(h.proxy, h2, post(h2, "/", &["abc"], None, &[])).await;
            assert!(outcome.is_err(), "{outcome:?}");
        }
    });
}
