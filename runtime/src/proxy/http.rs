//! One HTTP request: build the exchange the filters see, run the chain over the request
//! headers, body and trailers, forward to the endpoint the filters chose (or answer locally),
//! and run the response through the chain the same way.
//!
//! Bodies: when no filter of the chain has a body or trailers callback for a direction (and
//! none held the headers) that body goes through as hyper's own [`Incoming`], untouched.
//! Otherwise it becomes a [`FilteredBody`]: each frame the next hop asks for is read from the
//! previous hop and pushed through the chain (see `chain`), and what comes out is forwarded. A
//! filter that holds the headers makes the proxy read (and buffer) the body first; the headers
//! go on only when every filter let them through, with `content-length` fixed when a filter
//! changed a body that is complete by then (set to the new length) or still streaming
//! (removed: HTTP/1.1 then chunks it).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HOST, HeaderName, HeaderValue, TE};
use hyper::{HeaderMap, Request, Response, StatusCode, Uri, Version};

use super::chain::{Abort, Direction, Stream};
use super::upstream::Upstreams;
use super::worker::{Generation, Worker};
use crate::snapshot::UpstreamProtocol;
use crate::wasm::{ConnectionProperties, HeaderList, HttpExchange};

/// The body of a downstream response (and of an upstream request).
pub type ResponseBody = ProxyBody;

/// What is sent on: nothing, a local answer, a body passed through, or a filtered one.
pub enum ProxyBody {
    Empty,
    Full(Option<Bytes>),
    /// Passed through untouched: no filter cares about it.
    Incoming(Incoming),
    /// A response passed through while the request body still streams through filters: a
    /// request-side failure must still reset the response (one flag check per frame).
    Watched(Incoming, Rc<Shared>),
    Filtered(FilteredBody),
}

/// Why a body stopped.
#[derive(Debug)]
pub enum BodyError {
    /// The previous hop's body failed (the client or the upstream went away).
    Inner(hyper::Error),
    /// The filter chain stopped the stream.
    Abort(Abort),
    /// The chain took the whole input without ending its output (a bug; never spins).
    Stalled,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Inner(e) => write!(f, "{e}"),
            BodyError::Abort(abort) => write!(f, "{abort}"),
            BodyError::Stalled => write!(f, "the filter chain ended its input without ending its output"),
        }
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BodyError::Inner(e) => Some(e),
            BodyError::Abort(abort) => Some(abort),
            BodyError::Stalled => None,
        }
    }
}

/// A stream reset instead of a response (hyper closes the HTTP/1.1 connection, or resets the
/// HTTP/2 stream).
#[derive(Debug)]
pub struct StreamReset(String);

impl std::fmt::Display for StreamReset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "stream reset: {}", self.0)
    }
}

impl std::error::Error for StreamReset {}

/// What a request knows about the connection it came on.
#[derive(Debug)]
pub struct ConnectionInfo {
    /// Unique in the process (`connection.id`).
    pub id: u64,
    /// The Gateway listener port (before `--port-offset`).
    pub gateway_port: u16,
    /// `namespace/name` of the Gateway, when the socket belongs to exactly one.
    pub gateway: Option<String>,
    /// `namespace/name` of every Gateway owning the socket, comma-separated (filter scopes).
    pub gateways: String,
    pub scheme: &'static str,
    pub remote: SocketAddr,
    pub local: SocketAddr,
    /// The TLS session, on HTTPS ports.
    pub tls: Option<TlsInfo>,
    /// East-west: the Service (`namespace/name`) whose frontend the capture took this
    /// connection from (`gateway_port` is then the Service port).
    pub service: Option<String>,
    /// East-west: the client pod's namespace, when the client is a known pod.
    pub source_namespace: Option<String>,
    /// Upstream connections leave from this address (the client's, kept for the backend).
    pub upstream_source: Option<std::net::IpAddr>,
    /// What filters read of the connection, built once ([`ConnectionInfo::with_properties`]).
    pub properties: std::sync::Arc<ConnectionProperties>,
}

impl ConnectionInfo {
    /// Computes the properties filters read of the connection (call once the facts are
    /// complete, after the TLS handshake), in Envoy's names and encodings: strings as bytes,
    /// integers as 8-byte little-endian int64, booleans as one byte.
    pub fn with_properties(mut self) -> Self {
        let int = |n: i64| n.to_le_bytes().to_vec();
        let mut entries = vec![
            ("tidegate.listener_port", self.gateway_port.to_string().into_bytes()),
            ("tidegate.gateways", self.gateways.clone().into_bytes()),
            ("source.address", self.remote.to_string().into_bytes()),
            ("source.port", int(self.remote.port().into())),
            ("destination.address", self.local.to_string().into_bytes()),
            ("destination.port", int(self.local.port().into())),
            ("connection.id", int(self.id as i64)),
            ("connection.mtls", vec![0u8]),
        ];
        if let Some(gateway) = &self.gateway {
            entries.push(("tidegate.gateway", gateway.clone().into_bytes()));
        }
        if let Some(service) = &self.service {
            entries.push(("tidegate.service", service.clone().into_bytes()));
        }
        if let Some(namespace) = &self.source_namespace {
            entries.push(("tidegate.source_namespace", namespace.clone().into_bytes()));
        }
        if let Some(tls) = &self.tls {
            if let Some(name) = &tls.server_name {
                entries.push(("connection.requested_server_name", name.clone().into_bytes()));
            }
            entries.push(("connection.tls_version", tls.version.as_bytes().to_vec()));
        }
        self.properties = std::sync::Arc::new(ConnectionProperties { entries });
        self
    }
}

/// What the TLS handshake settled.
#[derive(Debug)]
pub struct TlsInfo {
    /// The SNI the client asked for.
    pub server_name: Option<String>,
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1): never forwarded as they came. (`te: trailers` is
/// re-added upstream when the client sent it, so an HTTP/1.1 upstream may send trailers;
/// `trailer` is end-to-end and forwarded, since HTTP/1.1 needs it to send trailers.)
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
];

pub async fn handle(
    request: Request<Incoming>,
    info: Rc<ConnectionInfo>,
    worker: Rc<Worker>,
) -> Result<Response<ResponseBody>, StreamReset> {
    let Some(generation) = worker.current() else {
        let response = plain(StatusCode::SERVICE_UNAVAILABLE, "no configuration is loaded yet\n");
        worker.metrics.request_done(response.status().as_u16());
        return Ok(response);
    };
    let result = proxy(request, &info, generation, &worker.upstreams).await;
    match &result {
        Ok(response) => worker.metrics.request_done(response.status().as_u16()),
        Err(reset) => tracing::debug!(%reset, "resetting the downstream stream"),
    }
    result
}

/// The per-request state shared by the handler and the bodies in flight: the upstream request
/// body is polled by the upstream connection's task and the response body by the downstream
/// one, all on this worker's thread. The filter contexts end (`proxy_on_done`, `proxy_on_log`)
/// when the last of them lets go.
pub(super) struct Shared {
    generation: Rc<Generation>,
    stream: RefCell<Stream>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.generation.chain.finish(self.stream.get_mut());
    }
}

async fn proxy(
    mut request: Request<Incoming>,
    info: &ConnectionInfo,
    generation: Rc<Generation>,
    upstreams: &Upstreams,
) -> Result<Response<ResponseBody>, StreamReset> {
    let upgrade = requested_upgrade(&request).map(|protocol| Upgrade {
        protocol,
        downstream: hyper::upgrade::on(&mut request),
    });
    let (parts, body) = request.into_parts();
    let chain = &generation.chain;
    let end_of_stream = body.is_end_stream();
    let shared = Rc::new(Shared {
        stream: RefCell::new(chain.stream(exchange_for(&parts, info))),
        generation: generation.clone(),
    });
    let entered = chain.headers(&mut shared.stream.borrow_mut(), Direction::Request, end_of_stream);
    if let Err(abort) = entered {
        return answer(&shared, abort);
    }
    let request_body = match body_for(&shared, Direction::Request, body).await {
        Ok(body) => body,
        Err(BodyError::Abort(abort)) => return answer(&shared, abort),
        Err(e) => {
            return Ok(plain(
                StatusCode::BAD_REQUEST,
                &format!("the request body could not be read: {e}\n"),
            ));
        }
    };

    let built = {
        let mut s = shared.stream.borrow_mut();
        fix_length(&mut s, Direction::Request);
        decision(&s.ex, &generation.published.snapshot).and_then(|(endpoint, protocol)| {
            // East-west, a client speaking HTTP/2 (gRPC) talks to a backend that does: keep it.
            let protocol = if info.service.is_some() && parts.version == Version::HTTP_2 {
                UpstreamProtocol::H2c
            } else {
                protocol
            };
            let upgrade = upgrade.as_ref().map(|u| &u.protocol);
            upstream_request(&s.ex, &parts, request_body, endpoint, protocol, info, upgrade)
                .map(|request| (endpoint, protocol, request))
                .map_err(|message| (StatusCode::BAD_REQUEST, message))
        })
    };
    let (endpoint, protocol, upstream_request) = match built {
        Ok(built) => built,
        Err((status, message)) => return Ok(plain(status, &message)),
    };
    // Response filters see where the request went.
    shared
        .stream
        .borrow_mut()
        .ex
        .properties
        .set("upstream.address", endpoint.to_string());
    drop(parts);
    let sent = match &upgrade {
        // An upgrade gets a connection of its own, which becomes the tunnel.
        Some(_) => {
            upstreams
                .send_upgrade(info.upstream_source, endpoint, upstream_request)
                .await
        }
        None => {
            upstreams
                .send(info.upstream_source, endpoint, protocol, upstream_request)
                .await
        }
    };
    // A filter may have stopped the request while its body streamed upstream.
    let aborted = shared.stream.borrow().aborted().cloned();
    if let Some(abort) = aborted {
        return answer(&shared, abort);
    }
    let mut upstream_response = match sent {
        Ok(response) => response,
        Err(e) => {
            tracing::debug!(error = %e, "upstream request failed");
            return Ok(plain(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("upstream unavailable: {e}\n"),
            ));
        }
    };

    // The upstream switched protocols: once the 101 has been through the response filters
    // (and still is a 101) and both sides have upgraded, bytes flow between them untouched.
    let switched = match upgrade {
        Some(upgrade) if upstream_response.status() == StatusCode::SWITCHING_PROTOCOLS => {
            let protocol = upstream_response
                .headers()
                .get(hyper::header::UPGRADE)
                .cloned()
                .unwrap_or(upgrade.protocol);
            let upstream = hyper::upgrade::on(&mut upstream_response);
            Some((upgrade.downstream, upstream, protocol))
        }
        _ => None,
    };
    let (mut parts, body) = upstream_response.into_parts();
    let end_of_stream = body.is_end_stream();
    let entered = {
        let mut s = shared.stream.borrow_mut();
        s.ex.response_headers = response_header_list(&parts);
        chain.headers(&mut s, Direction::Response, end_of_stream)
    };
    if let Err(abort) = entered {
        return answer(&shared, abort);
    }
    let response_body = match body_for(&shared, Direction::Response, body).await {
        Ok(body) => body,
        Err(BodyError::Abort(abort)) => return answer(&shared, abort),
        Err(e) => {
            return Ok(plain(
                StatusCode::BAD_GATEWAY,
                &format!("the upstream response body could not be read: {e}\n"),
            ));
        }
    };
    let mut s = shared.stream.borrow_mut();
    fix_length(&mut s, Direction::Response);
    apply_response_headers(&s.ex.response_headers, &mut parts);
    if let Some((downstream, upstream, protocol)) = switched
        && parts.status == StatusCode::SWITCHING_PROTOCOLS
    {
        tokio::task::spawn_local(tunnel(downstream, upstream));
        // Hop-by-hop, so removed above; a 101 needs them.
        parts
            .headers
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(hyper::header::UPGRADE, protocol);
    }
    s.ex.response_sent = true;
    Ok(Response::from_parts(parts, response_body))
}

/// The body to send on for `direction`, once the chain let its headers through: hyper's own
/// when no filter cares, nothing when it already ended, the filtered stream otherwise.
async fn body_for(shared: &Rc<Shared>, direction: Direction, body: Incoming) -> Result<ProxyBody, BodyError> {
    let (passthrough, watch) = {
        let s = shared.stream.borrow();
        let passthrough = s.headers_out(direction) && !shared.generation.chain.cares(direction);
        // A response passed through while filters still see the request body.
        let watch = direction == Direction::Response
            && shared.generation.chain.cares(Direction::Request)
            && !s.ended(Direction::Request);
        (passthrough, watch)
    };
    if passthrough && watch {
        return Ok(ProxyBody::Watched(body, shared.clone()));
    }
    if passthrough {
        return Ok(ProxyBody::Incoming(body));
    }
    // A body that already ended (its headers carried the end) gives nothing more to read; a
    // filter holding such a stream waits for its callouts instead.
    let inner = (!body.is_end_stream()).then_some(body);
    let mut filtered = FilteredBody {
        shared: shared.clone(),
        direction,
        inner,
        errored: false,
    };
    std::future::poll_fn(|cx| filtered.poll_headers(cx)).await?;
    if filtered.shared.stream.borrow().is_end_stream(direction) {
        return Ok(ProxyBody::Empty);
    }
    Ok(ProxyBody::Filtered(filtered))
}

/// Answers a stream the chain stopped before the response started.
fn answer(shared: &Shared, abort: Abort) -> Result<Response<ResponseBody>, StreamReset> {
    Ok(match abort {
        Abort::LocalReply => local_reply(&mut shared.stream.borrow_mut().ex),
        Abort::Failed { filter, .. } => plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("filter {filter} failed\n")),
        Abort::BufferLimit {
            filter,
            direction: Direction::Request,
        } => plain(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the request body is larger than filter {filter} may buffer\n"),
        ),
        Abort::BufferLimit {
            filter,
            direction: Direction::Response,
        } => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("the response body is larger than filter {filter} may buffer\n"),
        ),
        abort @ (Abort::Reset { .. } | Abort::BodyLength { .. }) => return Err(StreamReset(abort.to_string())),
    })
}

/// Fixes `content-length` once `direction`'s headers came out of the chain:
/// - a body a filter changed gets its new length when all of it is known by now, and no
///   `content-length` otherwise (HTTP/1.1 then chunks it; HTTP/2 needs none);
/// - trailers known by now are announced (`trailer`, which HTTP/1.1 needs to send them, and no
///   `content-length`, since they need chunked encoding).
///
/// Then records the length the next hop is told, so a later change of length resets the stream.
fn fix_length(s: &mut Stream, direction: Direction) {
    let complete = s.complete_length(direction);
    let modified = s.modified(direction);
    let ex = &mut s.ex;
    let (headers, trailers) = match direction {
        Direction::Request => (&mut ex.request_headers, &ex.request_trailers),
        Direction::Response => (&mut ex.response_headers, &ex.response_trailers),
    };
    if !trailers.is_empty() {
        headers.remove("content-length");
        if headers.get("trailer").is_none() {
            let names: Vec<&str> = trailers.iter().map(|(name, _)| name).collect();
            headers.set("trailer", names.join(", "));
        }
    } else if modified {
        match complete {
            Some(length) => headers.set("content-length", length.to_string()),
            None => {
                headers.remove("content-length");
            }
        }
    }
    let no_body = direction == Direction::Response
        && (ex.request_headers.get(":method") == Some(b"HEAD")
            || matches!(ex.response_headers.get(":status"), Some(b"204" | b"304")));
    let declared = if no_body {
        None
    } else {
        let headers = match direction {
            Direction::Request => &ex.request_headers,
            Direction::Response => &ex.response_headers,
        };
        headers
            .get("content-length")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    s.set_declared_length(direction, declared);
}

/// A body pushed through the filter chain frame by frame (see the module docs).
pub struct FilteredBody {
    shared: Rc<Shared>,
    direction: Direction,
    /// The previous hop's body, until its end went into the chain.
    inner: Option<Incoming>,
    /// The abort was reported once.
    errored: bool,
}

impl FilteredBody {
    /// Reads (and pushes through the chain) until the headers came out of it.
    fn poll_headers(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BodyError>> {
        loop {
            {
                let s = self.shared.stream.borrow();
                if let Some(abort) = s.aborted() {
                    return Poll::Ready(Err(BodyError::Abort(abort.clone())));
                }
                if s.headers_out(self.direction) {
                    return Poll::Ready(Ok(()));
                }
            }
            ready!(self.advance(cx))?;
        }
    }

    /// Moves the stream on by one step: delivers what filters were waiting for (callout
    /// answers, resumes), or else reads one frame of the previous hop's body. Pending when
    /// neither has anything yet (both wake this task).
    fn advance(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BodyError>> {
        let chain = &self.shared.generation.chain;
        {
            let mut s = self.shared.stream.borrow_mut();
            if chain.poll_events(&mut s, cx).map_err(BodyError::Abort)? {
                return Poll::Ready(Ok(()));
            }
            if self.inner.is_none() && chain.waits_for_filters(&s) {
                return Poll::Pending;
            }
        }
        self.pump(cx)
    }

    /// Reads one frame of the previous hop's body and pushes it through the chain.
    fn pump(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BodyError>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(Err(BodyError::Stalled));
        };
        let frame = ready!(Pin::new(&mut *inner).poll_frame(cx));
        let end_of_stream = inner.is_end_stream();
        let chain = &self.shared.generation.chain;
        let mut s = self.shared.stream.borrow_mut();
        let fed = match frame {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(bytes) => {
                    if end_of_stream {
                        self.inner = None;
                    }
                    chain.data(&mut s, self.direction, bytes, end_of_stream)
                }
                Err(frame) => match frame.into_trailers() {
                    Ok(trailers) => {
                        self.inner = None;
                        chain.trailers(&mut s, self.direction, header_list(&trailers))
                    }
                    // A frame kind this proxy does not know: nothing to forward.
                    Err(_) => Ok(()),
                },
            },
            Some(Err(e)) => {
                self.inner = None;
                return Poll::Ready(Err(BodyError::Inner(e)));
            }
            None => {
                self.inner = None;
                chain.data(&mut s, self.direction, Bytes::new(), true)
            }
        };
        Poll::Ready(fed.map_err(BodyError::Abort))
    }
}

impl Body for FilteredBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        loop {
            {
                let mut s = this.shared.stream.borrow_mut();
                if let Some(abort) = s.aborted() {
                    if std::mem::replace(&mut this.errored, true) {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(BodyError::Abort(abort.clone()))));
                }
                if let Some(frame) = s.pop_frame(this.direction) {
                    return Poll::Ready(Some(Ok(frame)));
                }
                if s.ended(this.direction) {
                    return Poll::Ready(None);
                }
            }
            if let Err(e) = ready!(this.advance(cx)) {
                this.errored = true;
                return Poll::Ready(Some(Err(e)));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.shared.stream.borrow().is_end_stream(self.direction)
    }

    fn size_hint(&self) -> SizeHint {
        match self.shared.stream.borrow().queued_length(self.direction) {
            Some(length) => SizeHint::with_exact(length),
            None => SizeHint::default(),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ProxyBody::Empty => Poll::Ready(None),
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Incoming(body) => Pin::new(body).poll_frame(cx).map_err(BodyError::Inner),
            ProxyBody::Watched(body, shared) => {
                if let Some(abort) = shared.stream.borrow().aborted() {
                    return Poll::Ready(Some(Err(BodyError::Abort(abort.clone()))));
                }
                Pin::new(body).poll_frame(cx).map_err(BodyError::Inner)
            }
            ProxyBody::Filtered(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Full(bytes) => bytes.is_none(),
            ProxyBody::Incoming(body) | ProxyBody::Watched(body, _) => body.is_end_stream(),
            ProxyBody::Filtered(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Incoming(body) | ProxyBody::Watched(body, _) => body.size_hint(),
            ProxyBody::Filtered(body) => body.size_hint(),
        }
    }
}

fn header_list(map: &HeaderMap) -> HeaderList {
    let mut list = HeaderList::with_capacity(map.len());
    for (name, value) in map {
        list.add(name.as_str(), value.as_bytes().to_vec());
    }
    list
}

/// The request as the filters see it: pseudo-headers first, then the regular headers.
fn exchange_for(parts: &hyper::http::request::Parts, info: &ConnectionInfo) -> HttpExchange {
    let mut headers = HeaderList::default();
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().as_bytes().to_vec())
        .or_else(|| parts.headers.get(HOST).map(|h| h.as_bytes().to_vec()))
        .unwrap_or_default();
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    headers.add(":method", parts.method.as_str().as_bytes().to_vec());
    headers.add(":scheme", info.scheme.as_bytes().to_vec());
    headers.add(":authority", authority);
    headers.add(":path", path.as_bytes().to_vec());
    for (name, value) in &parts.headers {
        if name == HOST {
            continue;
        }
        headers.add(name.as_str(), value.as_bytes().to_vec());
    }
    let mut ex = HttpExchange {
        request_headers: headers,
        ..Default::default()
    };
    ex.connection = Some(info.properties.clone());
    ex.properties.set("request.protocol", version_name(parts.version));
    // Envoy's encoding of timestamps: int64 nanoseconds since the epoch, little-endian.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
    ex.properties.set("request.time", now.to_le_bytes().to_vec());
    ex
}

fn version_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// The endpoint and protocol the filters chose.
fn decision(
    ex: &HttpExchange,
    snapshot: &crate::snapshot::Snapshot,
) -> Result<(SocketAddr, UpstreamProtocol), (StatusCode, String)> {
    let Some(cluster) = ex
        .properties
        .get("tidegate.cluster")
        .map(|c| String::from_utf8_lossy(c).into_owned())
    else {
        return Err((
            StatusCode::NOT_FOUND,
            "no route chose a backend for this request\n".into(),
        ));
    };
    let Some(plan) = snapshot.clusters.get(&cluster) else {
        return Err((
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the chosen cluster {cluster} does not exist\n"),
        ));
    };
    let Some(endpoint) = ex.properties.get("tidegate.endpoint") else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no endpoint was chosen for cluster {cluster}\n"),
        ));
    };
    let endpoint = std::str::from_utf8(endpoint)
        .ok()
        .and_then(|e| e.parse::<SocketAddr>().ok())
        .ok_or_else(|| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "a filter chose an endpoint that is not ip:port\n".to_string(),
            )
        })?;
    Ok((endpoint, plan.protocol))
}

/// An HTTP/1.1 protocol upgrade the client asked for (WebSocket and the like).
struct Upgrade {
    /// The `Upgrade` header's value.
    protocol: HeaderValue,
    /// The client's connection, once the 101 has been sent.
    downstream: hyper::upgrade::OnUpgrade,
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` with `Upgrade`).
/// Never `h2c`: this proxy speaks HTTP/2 itself, so that upgrade is not passed on.
fn requested_upgrade(request: &Request<Incoming>) -> Option<HeaderValue> {
    if request.version() != Version::HTTP_11 {
        return None;
    }
    let headers = request.headers();
    let asks = headers.get_all(hyper::header::CONNECTION).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    let protocol = headers.get(hyper::header::UPGRADE)?;
    (asks && !protocol.as_bytes().eq_ignore_ascii_case(b"h2c")).then(|| protocol.clone())
}

/// Carries bytes both ways between the two upgraded connections until either side ends.
async fn tunnel(downstream: hyper::upgrade::OnUpgrade, upstream: hyper::upgrade::OnUpgrade) {
    let (downstream, upstream) = match tokio::try_join!(downstream, upstream) {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!(error = %e, "a protocol upgrade did not complete");
            return;
        }
    };
    let mut downstream = hyper_util::rt::TokioIo::new(downstream);
    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
        Ok((up, down)) => tracing::trace!(up, down, "upgraded connection ended"),
        Err(e) => tracing::debug!(error = %e, "upgraded connection ended with an error"),
    }
}

fn upstream_request(
    ex: &HttpExchange,
    parts: &hyper::http::request::Parts,
    body: ProxyBody,
    endpoint: SocketAddr,
    protocol: UpstreamProtocol,
    info: &ConnectionInfo,
    upgrade: Option<&HeaderValue>,
) -> Result<Request<ProxyBody>, String> {
    if upgrade.is_some() && protocol == UpstreamProtocol::H2c {
        return Err("upgrading a connection to an HTTP/2 upstream is not supported\n".into());
    }
    let headers = &ex.request_headers;
    let text = |name: &str| headers.get(name).map(|v| String::from_utf8_lossy(v).into_owned());
    let method = text(":method").unwrap_or_else(|| parts.method.to_string());
    let path = text(":path")
        .filter(|p| p.starts_with('/'))
        .unwrap_or_else(|| "/".into());
    let authority = text(":authority").unwrap_or_default();
    let uri: Uri = match protocol {
        UpstreamProtocol::Http1 => path.parse(),
        // HTTP/2 carries the Host as `:authority`, which hyper takes from the URI.
        UpstreamProtocol::H2c => format!(
            "http://{}{path}",
            if authority.is_empty() {
                endpoint.to_string()
            } else {
                authority.clone()
            }
        )
        .parse(),
    }
    .map_err(|e| format!("the request target {path:?} is not valid after filtering: {e}\n"))?;
    let mut builder = Request::builder().method(method.as_str()).uri(uri);
    let upstream_headers = builder.headers_mut().ok_or("invalid method\n")?;
    for (name, value) in headers.iter() {
        if name.starts_with(':') || HOP_BY_HOP.contains(&name) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value)) {
            upstream_headers.append(name, value);
        }
    }
    let accepts_trailers = headers.get_all("te").any(|value| {
        value
            .split(|&b| b == b',')
            .any(|v| v.trim_ascii().eq_ignore_ascii_case(b"trailers"))
    });
    if accepts_trailers {
        upstream_headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    if protocol == UpstreamProtocol::Http1 && !authority.is_empty() {
        let host =
            HeaderValue::from_str(&authority).map_err(|_| "the Host is not a valid header value\n".to_string())?;
        upstream_headers.insert(HOST, host);
    }
    append_forwarded(upstream_headers, info);
    if let Some(upgrade) = upgrade {
        upstream_headers.insert(hyper::header::CONNECTION, HeaderValue::from_static("upgrade"));
        upstream_headers.insert(hyper::header::UPGRADE, upgrade.clone());
    }
    builder
        .body(body)
        .map_err(|e| format!("invalid request after filtering: {e}\n"))
}

/// X-Forwarded-For / X-Forwarded-Proto, as every gateway sets them. East-west the proxy is
/// transparent (as Istio's and Linkerd's are): the backend sees the client's own address, and
/// both headers are left as the client sent them.
fn append_forwarded(headers: &mut hyper::HeaderMap, info: &ConnectionInfo) {
    if info.service.is_some() {
        return;
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static(info.scheme));
    let client = info.remote.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(existing) => format!("{existing}, {client}"),
        None => client,
    };
    if let Ok(value) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", value);
    }
}

fn response_header_list(parts: &hyper::http::response::Parts) -> HeaderList {
    let mut list = HeaderList::default();
    list.add(":status", parts.status.as_str().as_bytes().to_vec());
    for (name, value) in &parts.headers {
        list.add(name.as_str(), value.as_bytes().to_vec());
    }
    list
}

/// Writes the filtered response headers back (status included).
fn apply_response_headers(list: &HeaderList, parts: &mut hyper::http::response::Parts) {
    let mut headers = hyper::HeaderMap::with_capacity(list.len());
    for (name, value) in list.iter() {
        if name == ":status" {
            if let Some(status) = std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse::<u16>().ok())
                .and_then(|s| StatusCode::from_u16(s).ok())
            {
                parts.status = status;
            }
            continue;
        }
        if name.starts_with(':') || HOP_BY_HOP.contains(&name) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value)) {
            headers.append(name, value);
        }
    }
    parts.headers = headers;
}

fn local_reply(ex: &mut HttpExchange) -> Response<ResponseBody> {
    let Some(reply) = ex.local_reply.take() else {
        return plain(StatusCode::INTERNAL_SERVER_ERROR, "a filter answered without a reply\n");
    };
    if let Some(code) = reply.grpc_status {
        return grpc_reply(code, &reply);
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(full(Bytes::from(reply.body)));
    *response.status_mut() = status;
    append_reply_headers(&mut response, &reply.headers);
    response
}

/// A local reply with a gRPC status, as Envoy sends it: a gRPC "trailers-only" response (HTTP
/// 200, `content-type: application/grpc`, `grpc-status`, and the body as `grpc-message`,
/// percent-encoded), which gRPC clients read as the call's status.
fn grpc_reply(code: i32, reply: &crate::wasm::LocalReply) -> Response<ResponseBody> {
    let mut response = Response::new(ProxyBody::Empty);
    append_reply_headers(&mut response, &reply.headers);
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers.insert("grpc-status", HeaderValue::from(code));
    let message = if reply.body.is_empty() {
        reply.details.as_bytes()
    } else {
        &reply.body
    };
    if !message.is_empty()
        && let Ok(value) = HeaderValue::from_str(&grpc_percent_encode(message))
    {
        headers.insert("grpc-message", value);
    }
    response
}

/// gRPC's percent-encoding of `grpc-message`: printable ASCII except `%` stays, the rest is
/// `%XX`.
fn grpc_percent_encode(message: &[u8]) -> String {
    let mut out = String::with_capacity(message.len());
    for &b in message.trim_ascii_end() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn append_reply_headers(response: &mut Response<ResponseBody>, headers: &[(String, Vec<u8>)]) {
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value)) {
            response.headers_mut().append(name, value);
        }
    }
}

fn full(bytes: Bytes) -> ResponseBody {
    if bytes.is_empty() {
        return ProxyBody::Empty;
    }
    ProxyBody::Full(Some(bytes))
}

fn plain(status: StatusCode, message: &str) -> Response<ResponseBody> {
    let mut response = Response::new(full(Bytes::from(message.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

#[cfg(test)]
mod tests;
