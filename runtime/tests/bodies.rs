//! Bodies and trailers through the filter chain.
//!
//! - The `body-rewrite` example filter (`filters/examples/body-rewrite`, the plain `proxy-wasm`
//!   0.2.5 crate, no tidegate SDK) is built for wasm32-wasip1 and driven through the public
//!   `tidegate::wasm` API the way the proxy drives it: pausing bodies while the host buffers,
//!   cumulative sizes, rewriting the buffer, creating and extending trailers.
//! - The real `tidegate` binary in standalone mode with an in-test upstream that reports what it
//!   received: the standard router and balancer (built with the SDK, so they export every body
//!   and trailer callback and see every frame) must pass large bodies and HTTP/2 and chunked
//!   HTTP/1.1 trailers intact both ways; and the same filter attached by a WasmFilter object
//!   rewrites bodies, fixes `content-length`, adds trailers and enforces the buffer limit.
//!
//! More cases (failure policies, resets, local replies from body callbacks, length checks) run
//! in-process against the request flow itself: `runtime/src/proxy/http/tests.rs`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::OnceLock;

#[path = "common/env.rs"]
mod env;
#[path = "common/upstream.rs"]
mod upstream;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::{HeaderMap, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tidegate::wasm::{BodyBuffer, FilterAction, FilterInstance, HeaderList, HttpExchange, SandboxLimits, WasmRuntime};

use env::{Env, gateway, http_get};
use upstream::{Frames, Seen, Upstream, echo, frames, header_map};

// === the body-rewrite filter through the wasm API ===

/// Builds `filters/examples/body-rewrite` (once), into `target/examples`.
fn body_rewrite_wasm() -> &'static [u8] {
    // Built by runtime/build.rs together with the standard filters.
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| {
        let path = Path::new(env!("TIDEGATE_EXAMPLE_FILTERS")).join("body_rewrite.wasm");
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    })
}

fn runtime() -> &'static WasmRuntime {
    static RUNTIME: OnceLock<WasmRuntime> = OnceLock::new();
    RUNTIME.get_or_init(|| WasmRuntime::with_max_instances(20).expect("engine"))
}

fn instance(config: &str) -> FilterInstance {
    let module = runtime()
        .load("body-rewrite", body_rewrite_wasm())
        .unwrap_or_else(|e| panic!("{e}"));
    FilterInstance::start(&module, config.as_bytes(), &SandboxLimits::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn exchange() -> HttpExchange {
    HttpExchange {
        request_headers: HeaderList::from_pairs([
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "app.test"),
            (":path", "/"),
            ("content-length", "16"),
        ]),
        ..Default::default()
    }
}

#[test]
fn the_filter_exports_every_body_and_trailer_callback() {
    let module = runtime()
        .load("body-rewrite", body_rewrite_wasm())
        .unwrap_or_else(|e| panic!("{e}"));
    let callbacks = module.body_callbacks();
    assert!(
        callbacks.request_body && callbacks.request_trailers && callbacks.response_body && callbacks.response_trailers,
        "{callbacks:?}"
    );
    let rejected = FilterInstance::start(&module, b"colour=blue", &SandboxLimits::default());
    assert!(rejected.is_err(), "a bad configuration is refused");
}

#[test]
fn a_paused_request_body_is_buffered_rewritten_and_gets_a_trailer() {
    let mut filter = instance("");
    let mut ex = exchange();
    let ctx = filter.create_http_context().expect("context");
    assert_eq!(
        filter.on_request_headers(ctx, &mut ex, false).expect("headers"),
        FilterAction::Pause,
        "the filter holds the headers until it has rewritten the body"
    );
    // The host buffers for the paused filter and calls again with everything so far.
    ex.request_body = BodyBuffer::new(Bytes::from_static(b"hel"));
    assert_eq!(
        filter.on_request_body(ctx, &mut ex, false).expect("body"),
        FilterAction::Pause
    );
    assert_eq!(ex.request_body.as_slice(), b"hel", "nothing rewritten before the end");
    ex.request_body.append(Bytes::from_static(b"lo, hello"));
    ex.request_body.append(Bytes::from_static(b" you"));
    assert_eq!(
        filter.on_request_body(ctx, &mut ex, true).expect("last body"),
        FilterAction::Continue
    );
    assert_eq!(ex.request_body.as_slice(), b"howdy, howdy you");
    assert!(ex.request_body.is_modified());
    assert_eq!(
        ex.request_trailers,
        HeaderList::from_pairs([("x-body-rewrites", "2")]),
        "trailers created in the last body callback"
    );
    filter.finish_http_context(ctx, &mut ex);
    assert_eq!(filter.open_contexts(), 0);
    assert!(!filter.is_broken());
}

#[test]
fn a_response_ending_with_trailers_is_rewritten_in_the_trailers_callback() {
    let mut filter = instance("from=secret\nto=[redacted]\ntrailer=x-redactions");
    let mut ex = exchange();
    let ctx = filter.create_http_context().expect("context");
    assert_eq!(
        filter.on_request_headers(ctx, &mut ex, true).expect("headers"),
        FilterAction::Continue
    );
    ex.response_headers = HeaderList::from_pairs([(":status", "200"), ("content-length", "20")]);
    assert_eq!(
        filter.on_response_headers(ctx, &mut ex, false).expect("headers"),
        FilterAction::Pause
    );
    ex.response_body = BodyBuffer::new(Bytes::from_static(b"the secret is: secret"));
    assert_eq!(
        filter.on_response_body(ctx, &mut ex, false).expect("body"),
        FilterAction::Pause
    );
    // gRPC style: the stream ends with trailers, never with an end-of-stream body frame.
    ex.response_trailers = HeaderList::from_pairs([("grpc-status", "0")]);
    assert_eq!(
        filter.on_response_trailers(ctx, &mut ex).expect("trailers"),
        FilterAction::Continue
    );
    assert_eq!(ex.response_body.as_slice(), b"the [redacted] is: [redacted]");
    assert_eq!(
        ex.response_trailers,
        HeaderList::from_pairs([("grpc-status", "0"), ("x-redactions", "2")])
    );
    filter.finish_http_context(ctx, &mut ex);
}

#[test]
fn without_holding_headers_the_filter_drops_content_length() {
    let mut filter = instance("hold_headers=false\ntrailer=");
    let mut ex = exchange();
    let ctx = filter.create_http_context().expect("context");
    assert_eq!(
        filter.on_request_headers(ctx, &mut ex, false).expect("headers"),
        FilterAction::Continue
    );
    assert_eq!(ex.request_headers.get("content-length"), None);
    ex.request_body = BodyBuffer::new(Bytes::from_static(b"hello"));
    assert_eq!(
        filter.on_request_body(ctx, &mut ex, true).expect("body"),
        FilterAction::Continue
    );
    assert_eq!(ex.request_body.as_slice(), b"howdy");
    assert!(ex.request_trailers.is_empty(), "no trailer configured");
    filter.finish_http_context(ctx, &mut ex);
}

// === the standard chain end to end (real binary) ===

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
}

async fn send(addr: SocketAddr, h2: bool, request: Request<Frames>) -> Got {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect to tidegate");
    let io = TokioIo::new(stream);
    let response = if h2 {
        let (mut sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .expect("h2 handshake");
        tokio::spawn(connection);
        sender.send_request(request).await.expect("h2 request")
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(io).await.expect("h1 handshake");
        tokio::spawn(connection);
        sender.send_request(request).await.expect("h1 request")
    };
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.expect("response body");
    Got {
        status: parts.status.as_u16(),
        headers: parts.headers,
        trailers: collected.trailers().cloned(),
        body: collected.to_bytes(),
    }
}

fn post(
    h2: bool,
    path: &str,
    chunks: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    headers: &[(&'static str, &str)],
) -> Request<Frames> {
    let mut list: Vec<Frame<Bytes>> = chunks.into_iter().map(Frame::data).collect();
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

fn routes() -> &'static str {
    r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: ns}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /h1}}]
    backendRefs: [{name: web, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /h2c}}]
    backendRefs: [{name: web-h2c, port: 8080}]
"#
}

fn service(name: &str, app_protocol: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  ports: [{{name: http, port: 8080, targetPort: 3000{app_protocol}}}]\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-0, namespace: ns, labels: {{kubernetes.io/service-name: {name}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]\nports: [{{name: http, port: {port}}}]\n"
    )
}

/// tidegate in front of the scripted upstream (the standard echo, with a content-length unless
/// it sends trailers): `/h1` over HTTP/1.1, `/h2c` over h2c; with `filter`, the `body-rewrite`
/// module and a WasmFilter with that configuration are added.
fn start(filter: Option<&str>) -> (Env, Upstream, SocketAddr) {
    let upstream = Upstream::start(|seen: &Seen| echo(seen).sized());
    let (mut env, _) = Env::new(&[]);
    env.write("gateway.yaml", &gateway(""));
    env.write("routes.yaml", routes());
    env.write("web.yaml", &service("web", "", upstream.port()));
    env.write(
        "web-h2c.yaml",
        &service("web-h2c", ", appProtocol: kubernetes.io/h2c", upstream.port()),
    );
    if let Some(config) = filter {
        let modules = env.config_dir().join("modules");
        std::fs::create_dir_all(&modules).expect("modules dir");
        std::fs::write(modules.join("body-rewrite.wasm"), body_rewrite_wasm()).expect("write module");
        env.write(
            "filter.yaml",
            &format!(
                "apiVersion: tidegate.dev/v1alpha1\nkind: WasmFilter\nmetadata: {{name: body-rewrite, namespace: ns}}\nspec:\n  module: {{file: modules/body-rewrite.wasm}}\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: gw}}]\n  config: {config:?}\n"
            ),
        );
    }
    env.start();
    let proxy: SocketAddr = format!("127.0.0.1:{}", 80 + env.offset).parse().expect("addr");
    (env, upstream, proxy)
}

fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("client runtime")
}

#[test]
fn the_standard_chain_streams_bodies_and_trailers_both_ways() {
    let (_env, upstream, proxy) = start(None);
    client_runtime().block_on(async {
        // A large body in many frames, with a content-length, over HTTP/1.1 to HTTP/1.1.
        let chunk = Bytes::from((0..16 * 1024).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let chunks: Vec<Bytes> = (0..40).map(|_| chunk.clone()).collect();
        let total = chunk.len() * chunks.len();
        let expected: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let got = send(
            proxy,
            false,
            post(
                false,
                "/h1",
                chunks.clone(),
                None,
                &[("content-length", &total.to_string())],
            ),
        )
        .await;
        assert_eq!(got.status, 200);
        assert_eq!(got.header("x-seen-content-length"), total.to_string());
        assert!(
            got.body == expected,
            "the body came back intact ({} bytes)",
            got.body.len()
        );
        assert_eq!(got.header("content-length"), total.to_string());
        let seen = upstream.seen().pop().expect("the upstream got the request");
        assert_eq!(seen.version, hyper::Version::HTTP_11);
        assert!(
            seen.body.as_ref().is_ok_and(|body| *body == expected),
            "the upstream got the body intact"
        );

        // Trailers both ways: HTTP/2 to h2c and to HTTP/1.1, chunked HTTP/1.1 to h2c. An
        // HTTP/1.1 hop carries only trailers announced in a `trailer` header (hyper's rule, and
        // RFC 9110 §6.6.2's advice), so the clients announce theirs.
        for (path, h2) in [("/h2c", true), ("/h1", true), ("/h2c", false)] {
            let headers: &[(&'static str, &str)] =
                &[("x-want-trailers", "1"), ("te", "trailers"), ("trailer", "x-client")];
            let got = send(
                proxy,
                h2,
                post(
                    h2,
                    path,
                    vec![Bytes::from_static(b"part one, "), Bytes::from_static(b"part two")],
                    Some(header_map(&[("x-client", "1")])),
                    headers,
                ),
            )
            .await;
            let case = format!("{path} over {}", if h2 { "HTTP/2" } else { "HTTP/1.1" });
            assert_eq!(got.status, 200, "{case}");
            assert_eq!(got.body, Bytes::from_static(b"part one, part two"), "{case}");
            assert_eq!(got.header("x-seen-trailers"), "x-client=1", "{case}");
            let seen = upstream.seen().pop().expect("the upstream got the request");
            let version = if path == "/h2c" {
                hyper::Version::HTTP_2
            } else {
                hyper::Version::HTTP_11
            };
            assert_eq!(seen.version, version, "{case}: the route's protocol upstream");
            assert_eq!(seen.body, Ok(Bytes::from_static(b"part one, part two")), "{case}");
            let trailers = got.trailers.unwrap_or_else(|| panic!("{case}: no response trailers"));
            assert_eq!(
                trailers.get("x-upstream").map(|v| v.as_bytes()),
                Some(&b"done"[..]),
                "{case}"
            );
        }
    });
}

#[test]
fn a_wasmfilter_rewrites_bodies_and_adds_trailers_end_to_end() {
    let (env, upstream, proxy) = start(Some("to=good morning"));
    client_runtime().block_on(async {
        // HTTP/1.1: the filter holds the headers, rewrites, and creates a trailer, so the
        // request goes on chunked, announcing it.
        let got = send(
            proxy,
            false,
            post(
                false,
                "/h1",
                vec![Bytes::from_static(b"hel"), Bytes::from_static(b"lo world")],
                None,
                &[("content-length", "11")],
            ),
        )
        .await;
        assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
        assert_eq!(got.header("x-seen-content-length"), "none");
        assert_eq!(got.header("x-seen-trailers"), "x-body-rewrites=1");
        assert_eq!(got.body, Bytes::from_static(b"good morning world"));
        let seen = upstream.seen().pop().expect("the upstream got the request");
        assert_eq!(seen.body, Ok(Bytes::from_static(b"good morning world")));
        assert_eq!(seen.trailer_list(), "x-body-rewrites=1");

        // HTTP/2 with trailers: the filter rewrites in its trailers callback and adds to them,
        // both ways.
        let got = send(
            proxy,
            true,
            post(
                true,
                "/h2c",
                vec![Bytes::from_static(b"hello, "), Bytes::from_static(b"hello")],
                Some(header_map(&[("x-client", "1")])),
                &[("x-want-trailers", "1")],
            ),
        )
        .await;
        assert_eq!(got.status, 200);
        assert_eq!(got.header("x-seen-trailers"), "x-body-rewrites=2;x-client=1");
        assert_eq!(got.body, Bytes::from_static(b"good morning, good morning"));
        let trailers = got.trailers.expect("response trailers");
        assert_eq!(trailers.get("x-upstream").map(|v| v.as_bytes()), Some(&b"done"[..]));
        assert_eq!(trailers.get("x-body-rewrites").map(|v| v.as_bytes()), Some(&b"0"[..]));

        // Over the buffer limit (1 MiB): 413, counted.
        let chunk = Bytes::from(vec![b'a'; 64 * 1024]);
        let got = send(proxy, true, post(true, "/h2c", vec![chunk; 20], None, &[])).await;
        assert_eq!(got.status, 413, "{}", String::from_utf8_lossy(&got.body));
        assert!(
            upstream
                .seen()
                .iter()
                .all(|seen| seen.body.as_ref().map_or(true, |b| b.len() < 1024 * 1024)),
            "no body over the limit reached the upstream"
        );
    });
    let (_, metrics) = http_get(&env.admin, "/metrics").expect("admin /metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tidegate_body_buffer_limit_total{")
                && l.contains("direction=\"request\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
}
