//! Real traffic through the request flow: the shared scripted upstream (HTTP/1.1 and h2c, on its
//! own thread: `runtime/tests/common/upstream.rs`), the proxy's own `proxy()` behind a hyper
//! server, and hyper clients (HTTP/1.1 and HTTP/2), the proxy and the clients on one
//! current-thread runtime as a worker runs them. The filters are the `body-rewrite` example
//! (the plain proxy-wasm crate, built from `filters/examples/body-rewrite`) and small WAT guests
//! for failures, in front of either routing:
//! - [`Routing::Wat`]: a WAT router without body callbacks, so a chain of it alone passes bodies
//!   through untouched (hyper's own body);
//! - [`Routing::Standard`]: the standard router and balancer built into the binary, configured
//!   from translated objects and composed as a worker composes them. They export every body and
//!   trailer callback, so every body goes through the filtered path: the production path.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{HeaderMap, Request};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};

use super::{ConnectionInfo, proxy};
use crate::config::ObjectStore;
use crate::config::store::{Format, parse_file};
use crate::metrics::Metrics;
use crate::proxy::chain::{Chain, ChainFilter, Direction, FailurePolicy};
use crate::proxy::published::Published;
use crate::proxy::upstream::Upstreams;
use crate::proxy::worker::{Generation, LocalExec};
use crate::snapshot::{ClusterPlan, Snapshot, UpstreamProtocol};
use crate::translate::{TranslateOptions, translate};
use crate::wasm::{FilterModule, SandboxLimits, WasmRuntime};

#[path = "../../../tests/common/upstream.rs"]
mod upstream;

use upstream::{Frames, Reply, Seen, Upstream, echo_after, frames, header_map as map};

static RUNTIME: LazyLock<WasmRuntime> = LazyLock::new(|| WasmRuntime::with_max_instances(100).expect("engine"));

/// The `body-rewrite` example, built by runtime/build.rs together with the standard filters.
fn body_rewrite_wasm() -> &'static [u8] {
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
    filter_bytes(module, config.as_bytes(), failure_policy)
}

fn filter_bytes(module: FilterModule, config: &[u8], failure_policy: FailurePolicy) -> ChainFilter {
    ChainFilter {
        module,
        config: Arc::from(config),
        limits: SandboxLimits::default(),
        failure_policy,
        scope: None,
    }
}

fn rewrite(config: &str) -> ChainFilter {
    static MODULE: LazyLock<FilterModule> = LazyLock::new(|| module("body-rewrite", body_rewrite_wasm()));
    filter(MODULE.clone(), config, FailurePolicy::FailClosed)
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
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
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
  (data (i32.const 0x1080) "x-trap-request")
  (data (i32.const 0x10a0) "x-trap-response")
  (data (i32.const 0x10c0) "ran")
{callbacks}
)"#
    );
    wat::parse_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The WAT route: cluster `echo`, endpoint from the plugin configuration. No body callbacks.
fn wat_router(endpoint: SocketAddr) -> ChainFilter {
    static MODULE: LazyLock<FilterModule> = LazyLock::new(|| {
        module(
            "router",
            &wat(r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (global.set $heap (i32.const 0x10000))
    (drop (call $get_buffer (i32.const 7) (i32.const 0) (i32.const 100) (i32.const 0x80) (i32.const 0x84)))
    (drop (call $set_property (i32.const 0x1000) (i32.const 16) (i32.const 0x1040) (i32.const 4)))
    (drop (call $set_property (i32.const 0x1020) (i32.const 17) (i32.load (i32.const 0x80)) (i32.load (i32.const 0x84))))
    (i32.const 0))
"#),
        )
    });
    filter(MODULE.clone(), &endpoint.to_string(), FailurePolicy::FailClosed)
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
            tokio::time::timeout(Duration::from_secs(30), test()).await
        })
        .expect("the test timed out");
}

/// The upstream's script: `/empty` answers 204 without a body; `/reset` sends its headers and
/// `partial`, then fails its body 100 ms later; `/big/N` answers N bytes of `x`
/// in 16 KiB frames (with a content-length); anything else echoes the request body after
/// `hello from upstream: ` and tells in headers what it received (`x-seen-*`), with a
/// content-length unless it ends with trailers. `x-want-trailers` and `x-body-after-ms` work as
/// in [`upstream::echo_after`] (`/big/N` honours the latter).
fn script(seen: &Seen) -> Reply {
    if seen.path() == "/empty" {
        return Reply::new(204);
    }
    if seen.path() == "/reset" {
        return Reply::new(200).data("partial").wait(Duration::from_millis(100)).reset();
    }
    if let Some(n) = seen.path().strip_prefix("/big/") {
        let mut reply = Reply::new(200);
        if let Some(delay) = upstream::body_after(seen) {
            reply = reply.wait(delay);
        }
        return reply.filled(b'x', n.parse().unwrap_or(0), 16 * 1024).sized();
    }
    echo_after("hello from upstream: ", seen).sized()
}

/// Serves the proxy (HTTP/1.1 and HTTP/2 with prior knowledge) on a fresh loopback port, on
/// this thread, as a worker does.
async fn serve_proxy(generation: Rc<Generation>, info: Rc<ConnectionInfo>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let upstreams = Upstreams::default();
    tokio::task::spawn_local(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (generation, info, upstreams) = (generation.clone(), info.clone(), upstreams.clone());
            tokio::task::spawn_local(async move {
                let service = service_fn(move |request: Request<Incoming>| {
                    let (generation, info, upstreams) = (generation.clone(), info.clone(), upstreams.clone());
                    async move { proxy(request, &info, generation, &upstreams).await }
                });
                let mut builder = hyper_util::server::conn::auto::Builder::new(LocalExec);
                builder.http1().timer(TokioTimer::new());
                builder.http2().timer(TokioTimer::new());
                let _ = builder.serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    addr
}

/// How requests are routed to the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Routing {
    /// The WAT router: no body callbacks.
    Wat,
    /// The standard router and balancer, as in production.
    Standard,
}

const ROUTINGS: [Routing; 2] = [Routing::Wat, Routing::Standard];

struct Harness {
    proxy: SocketAddr,
    metrics: Arc<Metrics>,
    generation: Rc<Generation>,
    upstream: Upstream,
}

impl Harness {
    /// `tidegate_filter_failures_total{filter}` (0 when absent).
    fn failures(&self, filter: &str) -> u64 {
        let sample = format!("tidegate_filter_failures_total{{filter=\"{filter}\"}} ");
        self.metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(&sample).map(|v| v.trim().parse().expect("a count")))
            .unwrap_or(0)
    }

    /// The last request the upstream received, `/empty` probes (see [`expect_reset`]) aside.
    fn last_seen(&self) -> Seen {
        let mut seen = self.upstream.seen();
        seen.retain(|s| s.path() != "/empty");
        seen.pop().expect("the upstream got a request")
    }
}

/// The scripted upstream and the proxy with `filters` then the WAT router in front of it.
async fn harness(filters: Vec<ChainFilter>, protocol: UpstreamProtocol, buffer_limit: Option<usize>) -> Harness {
    routed(Routing::Wat, filters, protocol, buffer_limit).await
}

/// The scripted upstream and the proxy with `filters` in front of it, routed by `routing`.
async fn routed(
    routing: Routing,
    filters: Vec<ChainFilter>,
    protocol: UpstreamProtocol,
    buffer_limit: Option<usize>,
) -> Harness {
    let upstream = Upstream::start(script);
    let (published, filters, gateways) = match routing {
        Routing::Wat => {
            let mut snapshot = Snapshot::default();
            snapshot.clusters.insert(
                "echo".to_string(),
                ClusterPlan {
                    protocol,
                    endpoints: vec![upstream.addr()],
                    external_name: None,
                },
            );
            let published = Published {
                snapshot: Arc::new(snapshot),
                ..Published::default()
            };
            let mut filters = filters;
            filters.push(wat_router(upstream.addr()));
            (published, filters, Vec::new())
        }
        Routing::Standard => standard(filters, protocol, upstream.port()),
    };
    let metrics = Arc::new(Metrics::new());
    let mut chain = Chain::start(&filters, metrics.clone()).expect("chain starts");
    if let Some(limit) = buffer_limit {
        chain = chain.with_buffer_limit(limit);
    }
    let generation = Rc::new(Generation {
        published: Arc::new(published),
        chain,
        network: None,
    });
    let info = ConnectionInfo {
        id: 1,
        gateway_port: 80,
        gateway: (gateways.len() == 1).then(|| gateways[0].clone()),
        gateways: gateways.join(","),
        scheme: "http",
        remote: "127.0.0.1:1".parse().expect("addr"),
        local: "127.0.0.1:80".parse().expect("addr"),
        tls: None,
        service: None,
        source_namespace: None,
        upstream_source: None,
        properties: Default::default(),
    }
    .with_properties();
    let proxy = serve_proxy(generation.clone(), Rc::new(info)).await;
    Harness {
        proxy,
        metrics,
        generation,
        upstream,
    }
}

/// The configuration of a Gateway on port 80 with one route to a Service whose endpoint is
/// the upstream, translated as the control plane does, and the chain a worker composes for it
/// (`Worker::compose`): `user` filters, the standard router, the standard balancer. Also the
/// Gateways of the port, for the connection.
fn standard(
    user: Vec<ChainFilter>,
    protocol: UpstreamProtocol,
    port: u16,
) -> (Published, Vec<ChainFilter>, Vec<String>) {
    static ROUTER: LazyLock<FilterModule> = LazyLock::new(|| module("router", crate::filters::ROUTER_WASM));
    static BALANCER: LazyLock<FilterModule> = LazyLock::new(|| module("balancer", crate::filters::BALANCER_WASM));
    let app_protocol = match protocol {
        UpstreamProtocol::Http1 => "",
        UpstreamProtocol::H2c => ", appProtocol: kubernetes.io/h2c",
    };
    let yaml = format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: ns}}
spec:
  gatewayClassName: tidegate
  listeners: [{{name: http, protocol: HTTP, port: 80}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: ns}}
spec:
  ports: [{{name: http, port: 8080, targetPort: 3000{app_protocol}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: web-0, namespace: ns, labels: {{kubernetes.io/service-name: web}}}}
addressType: IPv4
endpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]
ports: [{{name: http, port: {port}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: ns}}
spec:
  parentRefs: [{{name: gw}}]
  rules: [{{backendRefs: [{{name: web, port: 8080}}]}}]
"#
    );
    let parsed = parse_file("standard.yaml", &yaml, Format::Yaml);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    let mut store = ObjectStore::default();
    for object in parsed.objects {
        store.objects.insert(object.key(), object);
    }
    let translation = translate(
        &store,
        &TranslateOptions {
            address: [127, 0, 0, 1].into(),
            address_pool: None,
            config_dir: None,
            now: "2026-01-01T00:00:00Z".into(),
            node_name: None,
        },
    );
    let cluster = &translation.snapshot.clusters["ns/web:8080"];
    assert_eq!(
        (cluster.protocol, cluster.endpoints.as_slice()),
        (protocol, &[SocketAddr::from(([127, 0, 0, 1], port))][..]),
        "the route leads to the upstream"
    );
    let gateways = translation.snapshot.ports[0].gateways.clone();
    let published = Published::new(translation.snapshot, Vec::new(), Vec::new(), Vec::new());
    let mut chain = user;
    chain.push(filter_bytes(
        ROUTER.clone(),
        &published.router_config,
        FailurePolicy::FailClosed,
    ));
    chain.push(filter_bytes(
        BALANCER.clone(),
        &published.balancer_config,
        FailurePolicy::FailClosed,
    ));
    (published, chain, gateways)
}

// === the client ===

/// A complete response as the client got it.
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

/// How one request ended for the client. Errors are hyper's, in `Debug` form (which names the
/// HTTP/2 reset: `Reset(StreamId(..), INTERNAL_ERROR, Remote)`).
#[derive(Debug)]
enum Outcome {
    Answered(Got),
    /// The response headers arrived, then the body failed.
    Cut {
        status: u16,
        headers: HeaderMap,
        error: String,
    },
    /// No response headers.
    Failed(String),
}

/// One client connection to the proxy.
enum Connection {
    H1(hyper::client::conn::http1::SendRequest<Frames>),
    H2(hyper::client::conn::http2::SendRequest<Frames>),
}

impl Connection {
    async fn open(addr: SocketAddr, h2: bool) -> Connection {
        let io = TokioIo::new(TcpStream::connect(addr).await.expect("connect to the proxy"));
        if h2 {
            let (sender, connection) = hyper::client::conn::http2::Builder::new(LocalExec)
                .timer(TokioTimer::new())
                .handshake(io)
                .await
                .expect("h2 handshake");
            tokio::task::spawn_local(connection);
            Connection::H2(sender)
        } else {
            let (sender, connection) = hyper::client::conn::http1::handshake(io).await.expect("h1 handshake");
            tokio::task::spawn_local(connection);
            Connection::H1(sender)
        }
    }

    async fn send(&mut self, request: Request<Frames>) -> Outcome {
        let sent = match self {
            Connection::H1(sender) => match sender.ready().await {
                Ok(()) => sender.send_request(request).await,
                Err(e) => return Outcome::Failed(format!("{e:?}")),
            },
            Connection::H2(sender) => sender.send_request(request).await,
        };
        let response = match sent {
            Ok(response) => response,
            Err(e) => return Outcome::Failed(format!("{e:?}")),
        };
        let (parts, body) = response.into_parts();
        match body.collect().await {
            Ok(collected) => Outcome::Answered(Got {
                status: parts.status.as_u16(),
                headers: parts.headers,
                trailers: collected.trailers().cloned(),
                body: collected.to_bytes(),
            }),
            Err(e) => Outcome::Cut {
                status: parts.status.as_u16(),
                headers: parts.headers,
                error: format!("{e:?}"),
            },
        }
    }

    /// Whether the server closed the connection.
    async fn closed(&mut self) -> bool {
        match self {
            Connection::H1(sender) => sender.ready().await.is_err(),
            Connection::H2(sender) => sender.ready().await.is_err(),
        }
    }
}

/// One request on a new connection: the complete response, or how it failed.
async fn send(addr: SocketAddr, h2: bool, request: Request<Frames>) -> Result<Got, String> {
    match Connection::open(addr, h2).await.send(request).await {
        Outcome::Answered(got) => Ok(got),
        other => Err(format!("{other:?}")),
    }
}

/// Whether the response must have started when the proxy resets its stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Started {
    /// The headers (a 200) arrived, then the body was cut.
    Yes,
    /// No headers arrived.
    No,
    /// Either: the proxy flushes the headers or not before the body fails.
    Either,
}

/// Sends `request` and requires the proxy to reset its stream, not answer it: over HTTP/2 with
/// `RST_STREAM(INTERNAL_ERROR)` on that stream alone, so the connection serves another request;
/// over HTTP/1.1 by closing the connection (the only way to cut a response there). Returns the
/// response headers when they arrived.
async fn expect_reset(
    addr: SocketAddr,
    h2: bool,
    request: Request<Frames>,
    started: Started,
    case: &str,
) -> Option<HeaderMap> {
    let case = format!("{case} over {}", if h2 { "HTTP/2" } else { "HTTP/1.1" });
    let mut connection = Connection::open(addr, h2).await;
    let outcome = connection.send(request).await;
    let (headers, error) = match outcome {
        Outcome::Cut { status, headers, error } if started != Started::No => {
            assert_eq!(status, 200, "{case}: the response had started: {headers:?}");
            (Some(headers), error)
        }
        Outcome::Failed(error) if started != Started::Yes => (None, error),
        other => panic!("{case}: expected a reset ({started:?} started), got {other:?}"),
    };
    if h2 {
        assert!(
            error.contains("Reset(StreamId(") && error.contains("INTERNAL_ERROR") && error.contains("Remote"),
            "{case}: the proxy resets the stream with INTERNAL_ERROR, not the connection: {error}"
        );
        let next = connection.send(get(true, "/empty")).await;
        assert!(
            matches!(&next, Outcome::Answered(got) if got.status == 204),
            "{case}: the connection serves the next request after the stream reset: {next:?}"
        );
    } else {
        assert!(
            connection.closed().await,
            "{case}: an HTTP/1.1 response is cut by closing the connection ({error})"
        );
    }
    headers
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
    get_with(h2, path, &[])
}

fn get_with(h2: bool, path: &str, headers: &[(&'static str, &str)]) -> Request<Frames> {
    let mut request = post(h2, path, &[], None, headers);
    *request.method_mut() = hyper::Method::GET;
    request
}

// === tests ===

#[test]
fn a_held_request_is_rewritten_and_gets_its_new_content_length() {
    run(|| async {
        for routing in ROUTINGS {
            let h = routed(routing, vec![rewrite("trailer=")], UpstreamProtocol::Http1, None).await;
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
            assert_eq!(got.status, 200, "{routing:?}: {}", got.text());
            assert_eq!(body.len(), 18);
            assert_eq!(
                got.header("x-seen-content-length"),
                "18",
                "{routing:?}: howdy is as long as hello"
            );
            assert_eq!(
                h.last_seen().body,
                Ok(Bytes::from_static(b"say howdy to howdy")),
                "{routing:?}"
            );
            assert_eq!(got.text(), "howdy from upstream: say howdy to howdy", "{routing:?}");
            assert_eq!(
                got.header("content-length"),
                "39",
                "{routing:?}: the response was held and re-measured"
            );
        }
    });
}

#[test]
fn a_rewrite_that_changes_the_length_fixes_content_length_both_ways() {
    run(|| async {
        for routing in ROUTINGS {
            let h = routed(
                routing,
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
            assert_eq!(got.status, 200, "{routing:?}: {}", got.text());
            assert_eq!(got.header("x-seen-content-length"), "12", "{routing:?}");
            assert_eq!(got.header("x-seen-transfer-encoding"), "none", "{routing:?}");
            assert_eq!(got.text(), "good morning from upstream: good morning", "{routing:?}");
            assert_eq!(got.header("content-length"), "40", "{routing:?}");
        }
    });
}

#[test]
fn trailers_a_filter_creates_reach_an_http1_upstream() {
    run(|| async {
        for routing in ROUTINGS {
            let h = routed(routing, vec![rewrite("")], UpstreamProtocol::Http1, None).await;
            let got = send(
                h.proxy,
                false,
                post(false, "/", &["hello, ", "hello"], None, &[("content-length", "12")]),
            )
            .await
            .expect("response");
            assert_eq!(got.status, 200, "{routing:?}: {}", got.text());
            assert_eq!(
                got.header("x-seen-content-length"),
                "none",
                "{routing:?}: trailers need chunked encoding"
            );
            assert_eq!(got.header("x-seen-transfer-encoding"), "chunked", "{routing:?}");
            assert_eq!(got.header("x-seen-trailer"), "x-body-rewrites", "{routing:?}");
            assert_eq!(got.header("x-seen-trailers"), "x-body-rewrites=2", "{routing:?}");
            assert_eq!(got.text(), "howdy from upstream: howdy, howdy", "{routing:?}");
        }
    });
}

#[test]
fn http2_trailers_flow_both_ways_and_the_filter_adds_to_them() {
    run(|| async {
        for routing in ROUTINGS {
            let h = routed(routing, vec![rewrite("")], UpstreamProtocol::H2c, None).await;
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
            assert_eq!(got.status, 200, "{routing:?}: {}", got.text());
            assert_eq!(
                got.header("x-seen-trailers"),
                "x-body-rewrites=1;x-client=1",
                "{routing:?}: the filter added to the client's trailers in on_request_trailers"
            );
            assert_eq!(got.text(), "howdy from upstream: howdy world", "{routing:?}");
            let trailers = got.trailers.expect("response trailers");
            assert_eq!(
                trailers.get("x-upstream").map(|v| v.as_bytes()),
                Some(&b"done"[..]),
                "{routing:?}"
            );
            assert_eq!(
                trailers.get("x-body-rewrites").map(|v| v.as_bytes()),
                Some(&b"1"[..]),
                "{routing:?}: the upstream's own hello"
            );
        }
    });
}

/// Client trailers to the upstream and upstream trailers to the client, with `trailer`
/// announced and `te: trailers`, untouched by the filters in the way.
async fn chunked_trailers_pass_through(h: &Harness, h2: bool, case: &str) {
    let got = send(
        h.proxy,
        h2,
        post(
            h2,
            "/",
            &["streamed ", "as is"],
            Some(map(&[("x-client", "1")])),
            &[("trailer", "x-client"), ("te", "trailers"), ("x-want-trailers", "1")],
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("{case}: {e}"));
    assert_eq!(got.status, 200, "{case}: {}", got.text());
    assert_eq!(got.header("x-seen-trailers"), "x-client=1", "{case}");
    assert_eq!(got.header("x-seen-te"), "trailers", "{case}");
    assert_eq!(got.text(), "hello from upstream: streamed as is", "{case}");
    let trailers = got
        .trailers
        .unwrap_or_else(|| panic!("{case}: response trailers (over HTTP/1.1 with TE: trailers)"));
    assert_eq!(
        trailers.get("x-upstream").map(|v| v.as_bytes()),
        Some(&b"done"[..]),
        "{case}"
    );
}

#[test]
fn http1_chunked_trailers_pass_through_when_no_filter_cares() {
    run(|| async {
        let h = harness(vec![], UpstreamProtocol::Http1, None).await;
        assert!(!h.generation.chain.cares(Direction::Request) && !h.generation.chain.cares(Direction::Response));
        chunked_trailers_pass_through(&h, false, "the WAT router alone").await;
    });
}

/// The production path: the standard router and balancer export every body and trailer
/// callback, so every body and its trailers go through the filtered path, frame by frame.
#[test]
fn trailers_pass_through_the_standard_chain_both_ways() {
    run(|| async {
        for protocol in [UpstreamProtocol::Http1, UpstreamProtocol::H2c] {
            let h = routed(Routing::Standard, vec![], protocol, None).await;
            assert!(
                h.generation.chain.cares(Direction::Request) && h.generation.chain.cares(Direction::Response),
                "the standard filters see every body"
            );
            for h2 in [false, true] {
                let case = format!(
                    "{} client to an {protocol:?} upstream through the standard chain",
                    if h2 { "HTTP/2" } else { "HTTP/1.1" }
                );
                chunked_trailers_pass_through(&h, h2, &case).await;
            }
        }
    });
}

#[test]
fn a_streaming_rewrite_drops_content_length_and_is_chunked() {
    run(|| async {
        for routing in ROUTINGS {
            let h = routed(
                routing,
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
            assert_eq!(got.status, 200, "{routing:?}: {}", got.text());
            assert_eq!(got.header("x-seen-content-length"), "none", "{routing:?}");
            assert_eq!(got.header("x-seen-transfer-encoding"), "chunked", "{routing:?}");
            assert_eq!(got.text(), "howdy from upstream: oh howdy", "{routing:?}");
            assert_eq!(got.header("content-length"), "(absent)", "{routing:?}");
            assert_eq!(got.header("transfer-encoding"), "chunked", "{routing:?}");
        }
    });
}

#[test]
fn the_buffer_limit_answers_413_for_requests_and_500_for_responses() {
    run(|| async {
        for routing in ROUTINGS {
            let h = routed(routing, vec![rewrite("trailer=")], UpstreamProtocol::Http1, Some(4096)).await;
            let big = "x".repeat(3000);
            let got = send(h.proxy, false, post(false, "/", &[&big, &big], None, &[]))
                .await
                .expect("response");
            assert_eq!(got.status, 413, "{routing:?}: {}", got.text());
            assert!(got.text().contains("body-rewrite"), "{routing:?}: {}", got.text());
            let got = send(h.proxy, false, get(false, "/big/10000")).await.expect("response");
            assert_eq!(got.status, 500, "{routing:?}: {}", got.text());
            let small = send(h.proxy, false, post(false, "/", &["hello"], None, &[]))
                .await
                .expect("response");
            assert_eq!(
                (small.status, small.text().as_str()),
                (200, "howdy from upstream: howdy"),
                "{routing:?}"
            );
            let metrics = h.metrics.encode();
            for direction in ["request", "response"] {
                let line =
                    format!("tidegate_body_buffer_limit_total{{filter=\"body-rewrite\",direction=\"{direction}\"}} 1");
                assert!(metrics.contains(&line), "{routing:?}: {line} in\n{metrics}");
            }

            // Once the response headers went out, the limit can only reset the stream. The
            // upstream sends its headers at once and the body later, so they are out.
            let h = routed(
                routing,
                vec![rewrite("hold_headers=false\ntrailer=")],
                UpstreamProtocol::Http1,
                Some(4096),
            )
            .await;
            for h2 in [false, true] {
                // Several frames: the filter pauses on the first, so the proxy buffers.
                let request = get_with(h2, "/big/100000", &[("x-body-after-ms", "100")]);
                let case = format!("{routing:?}: the response buffer limit after the headers");
                expect_reset(h.proxy, h2, request, Started::Yes, &case).await;
            }
            let line = "tidegate_body_buffer_limit_total{filter=\"body-rewrite\",direction=\"response\"} 2";
            let metrics = h.metrics.encode();
            assert!(metrics.contains(line), "{routing:?}: {line} in\n{metrics}");
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
        for routing in ROUTINGS {
            let h = routed(
                routing,
                vec![guest("trap-request", TRAP_REQUEST_BODY, FailurePolicy::FailClosed)],
                UpstreamProtocol::Http1,
                None,
            )
            .await;
            let got = send(h.proxy, false, post(false, "/", &["a", "b"], None, &[]))
                .await
                .expect("an answer");
            assert_eq!(got.status, 500, "{routing:?}: {}", got.text());
            assert!(got.text().contains("trap-request"), "{routing:?}: {}", got.text());
            assert_eq!(h.failures("trap-request"), 1, "{routing:?}");

            let h = routed(
                routing,
                vec![guest("trap-response", TRAP_RESPONSE_BODY, FailurePolicy::FailClosed)],
                UpstreamProtocol::Http1,
                None,
            )
            .await;
            let mut failures = 0;
            for h2 in [false, true] {
                // The body arriving with the headers (the proxy may not have flushed them when
                // the filter fails), then after them.
                for (started, delay) in [(Started::Either, "0"), (Started::Yes, "100")] {
                    let request = post(h2, "/", &["a"], None, &[("x-body-after-ms", delay)]);
                    let case = format!("{routing:?}: the response body failed (body after {delay} ms)");
                    expect_reset(h.proxy, h2, request, started, &case).await;
                    failures += 1;
                    assert_eq!(h.failures("trap-response"), failures, "{case}: counted");
                }
            }
        }
    });
}

const TRAP_REQUEST_BODY_AFTER_HEADERS: &str = r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $add_header (i32.const 0) (i32.const 0x1080) (i32.const 14) (i32.const 0x10c0) (i32.const 3)))
    (i32.const 0))
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) unreachable)
"#;
const TRAP_RESPONSE_BODY_AFTER_HEADERS: &str = r#"
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (drop (call $add_header (i32.const 2) (i32.const 0x10a0) (i32.const 15) (i32.const 0x10c0) (i32.const 3)))
    (i32.const 0))
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32) unreachable)
"#;

/// Each filter marks the headers it sees (`x-trap-request: ran` on the request,
/// `x-trap-response: ran` on the response), then traps in the body callback. A filter that
/// failed open is skipped for the rest of that request, but the failure is counted and its VM
/// replaced: the next request runs the headers callback again, which a broken VM could not.
#[test]
fn a_fail_open_body_failure_skips_the_filter() {
    run(|| async {
        for routing in ROUTINGS {
            let h = routed(
                routing,
                vec![
                    guest("trap-request", TRAP_REQUEST_BODY_AFTER_HEADERS, FailurePolicy::FailOpen),
                    guest(
                        "trap-response",
                        TRAP_RESPONSE_BODY_AFTER_HEADERS,
                        FailurePolicy::FailOpen,
                    ),
                ],
                UpstreamProtocol::H2c,
                None,
            )
            .await;
            for (n, h2) in [(1, false), (2, true)] {
                let case = format!("{routing:?}, request {n}");
                let got = send(h.proxy, h2, post(h2, "/", &["intact ", "body"], None, &[]))
                    .await
                    .expect("response");
                assert_eq!(
                    (got.status, got.text().as_str()),
                    (200, "hello from upstream: intact body"),
                    "{case}"
                );
                assert_eq!(
                    h.last_seen().header("x-trap-request"),
                    "ran",
                    "{case}: the request filter ran (a VM that broke before was replaced)"
                );
                assert_eq!(
                    got.header("x-trap-response"),
                    "ran",
                    "{case}: the response filter ran (a VM that broke before was replaced)"
                );
                for filter in ["trap-request", "trap-response"] {
                    assert_eq!(h.failures(filter), n, "{case}: failures of {filter} counted");
                }
            }
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
        let grpc_deny = deny.replace("(i32.const -1)", "(i32.const 16)");
        let reset = r#"
  (func (export "proxy_on_response_body") (param i32 i32 i32) (result i32)
    (drop (call $close_stream (i32.const 1)))
    (i32.const 0))
"#;
        for routing in ROUTINGS {
            let h = routed(
                routing,
                vec![guest("deny", deny, FailurePolicy::FailClosed)],
                UpstreamProtocol::Http1,
                None,
            )
            .await;
            let got = send(h.proxy, false, post(false, "/", &["x"], None, &[]))
                .await
                .expect("response");
            assert_eq!((got.status, got.text().as_str()), (403, "denied\n"), "{routing:?}");
            assert!(
                h.upstream.seen().iter().all(|seen| seen.body.is_err()),
                "{routing:?}: answered locally, the upstream got no whole request: {:?}",
                h.upstream.seen()
            );

            // With a gRPC status, the reply is a gRPC trailers-only response, as Envoy sends it.
            let h = routed(
                routing,
                vec![guest("grpc-deny", &grpc_deny, FailurePolicy::FailClosed)],
                UpstreamProtocol::Http1,
                None,
            )
            .await;
            let got = send(h.proxy, true, post(true, "/", &["x"], None, &[]))
                .await
                .expect("response");
            assert_eq!(got.status, 200, "{routing:?}");
            assert_eq!(got.header("content-type"), "application/grpc", "{routing:?}");
            assert_eq!(got.header("grpc-status"), "16", "{routing:?}");
            assert_eq!(got.header("grpc-message"), "denied", "{routing:?}");
            assert_eq!(got.text(), "", "{routing:?}");

            let h = routed(
                routing,
                vec![guest("reset", reset, FailurePolicy::FailClosed)],
                UpstreamProtocol::Http1,
                None,
            )
            .await;
            for h2 in [false, true] {
                for (started, delay) in [(Started::Either, "0"), (Started::Yes, "100")] {
                    let request = post(h2, "/", &["x"], None, &[("x-body-after-ms", delay)]);
                    let case = format!("{routing:?}: the filter reset the stream (body after {delay} ms)");
                    expect_reset(h.proxy, h2, request, started, &case).await;
                }
            }
            assert_eq!(h.failures("reset"), 0, "{routing:?}: a reset is no failure");
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
        for routing in ROUTINGS {
            let h = routed(
                routing,
                vec![guest("hold", hold, FailurePolicy::FailClosed)],
                UpstreamProtocol::Http1,
                None,
            )
            .await;
            // Alone in front of the WAT router, no filter has a body callback.
            assert_eq!(
                h.generation.chain.cares(Direction::Request),
                routing == Routing::Standard,
                "{routing:?}"
            );
            for h2 in [false, true] {
                let got = send(h.proxy, h2, get(h2, "/")).await.expect("response");
                assert_eq!(
                    (got.status, got.text().as_str()),
                    (200, "hello from upstream: "),
                    "{routing:?}"
                );
                let got = send(h.proxy, h2, post(h2, "/", &["some ", "body"], None, &[]))
                    .await
                    .expect("response");
                assert_eq!(
                    (got.status, got.text().as_str()),
                    (200, "hello from upstream: some body"),
                    "{routing:?}"
                );
            }
        }
    });
}

#[test]
fn many_requests_reuse_the_filter_contexts_cleanly() {
    run(|| async {
        for routing in ROUTINGS {
            let h = routed(routing, vec![rewrite("")], UpstreamProtocol::H2c, None).await;
            for i in 0..50 {
                let h2 = i % 2 == 0;
                let got = send(h.proxy, h2, post(h2, "/", &["hello"], None, &[]))
                    .await
                    .expect("response");
                assert_eq!(got.status, 200, "{routing:?}");
            }
            // Every context ends (done, log, delete) once its streams are over, which the
            // connections' tasks finish after the client had its answer.
            let mut open = h.generation.chain.open_contexts();
            for _ in 0..100 {
                if open == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                open = h.generation.chain.open_contexts();
            }
            assert_eq!(open, 0, "{routing:?}: contexts leaked");
        }
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
        for routing in ROUTINGS {
            let h = routed(
                routing,
                vec![guest("append", append, FailurePolicy::FailClosed)],
                UpstreamProtocol::Http1,
                None,
            )
            .await;
            // With a content-length on the request: the upstream must not get a wrong length,
            // and the client gets no answer.
            for h2 in [false, true] {
                let request = post(h2, "/", &["abc"], None, &[("content-length", "3")]);
                let case = format!("{routing:?}: the request body outgrew its content-length");
                expect_reset(h.proxy, h2, request, Started::No, &case).await;
            }
            for seen in h.upstream.seen() {
                assert!(
                    seen.body.is_err() || seen.path() == "/empty",
                    "{routing:?}: the upstream got a whole request body: {seen:?}"
                );
            }
            // Chunked: no length to contradict, so the request goes; the echo's response has a
            // content-length, which the appended byte would contradict: reset, with the
            // response headers already out or not.
            for h2 in [false, true] {
                for (started, delay) in [(Started::Either, "0"), (Started::Yes, "100")] {
                    let request = post(h2, "/", &["abc"], None, &[("x-body-after-ms", delay)]);
                    let case =
                        format!("{routing:?}: the response body outgrew its content-length (body after {delay} ms)");
                    let headers = expect_reset(h.proxy, h2, request, started, &case).await;
                    if let Some(headers) = headers {
                        assert_eq!(
                            headers.get("content-length").map(|v| v.as_bytes()),
                            Some(&b"26"[..]),
                            "{case}: the upstream's length went out"
                        );
                    }
                    // One `!` per request body callback (the end may come in a frame of its own).
                    let seen = h.last_seen().body;
                    assert!(
                        seen.as_ref()
                            .is_ok_and(|body| body.starts_with(b"abc!") && body[3..].iter().all(|b| *b == b'!')),
                        "{case}: the chunked request went on, appended to: {seen:?}"
                    );
                }
            }
        }
    });
}

/// An upstream that fails in the middle of its body: the client, who had the headers and the
/// data before the failure, sees its stream reset (HTTP/2: that stream only), whichever body
/// path the response takes and whichever protocol the upstream speaks.
#[test]
fn an_upstream_failing_mid_body_resets_the_client_stream() {
    run(|| async {
        for routing in ROUTINGS {
            for protocol in [UpstreamProtocol::Http1, UpstreamProtocol::H2c] {
                let h = routed(routing, vec![], protocol, None).await;
                for h2 in [false, true] {
                    let case = format!("{routing:?}: an {protocol:?} upstream failed mid-body");
                    let headers = expect_reset(h.proxy, h2, get(h2, "/reset"), Started::Yes, &case).await;
                    assert!(headers.is_some(), "{case}");
                }
                assert_eq!(h.failures("router"), 0, "{routing:?}: no filter failed");
            }
        }
    });
}
