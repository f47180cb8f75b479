//! `tidegate echo`: the echo backend of the Gateway API conformance suite.
//!
//! A faithful re-implementation of kubernetes-sigs/gateway-api-conformance-images `echo-basic`
//! (HTTP part), so that conformance cases and demos can run against real processes without
//! container images:
//!
//! - every request on the HTTP/1.1 port is answered with a JSON description of the request
//!   (`path` = RequestURI, `host`, `method`, `proto`, `headers` with Go-canonical names, `httpPort`,
//!   `namespace`, `ingress`, `service`, `pod`), `Content-Type: application/json`;
//! - `?delay=<Go duration>` sleeps before answering;
//! - the request header `X-Echo-Set-Header: N1:v1,N2:v2` copies pairs into the response headers;
//! - `/status/NNN` answers NNN, `/health` answers `OK`;
//! - `/ws` with a WebSocket handshake (HTTP/1.1 `Upgrade: websocket`) switches protocols and
//!   echoes every message back (see `websocket`);
//! - `/retry/...?uuid=U&succeedAfter=N[&responseCode=C][&delayRetry=D]` fails the first N attempts
//!   per uuid with status C, or with a TCP reset when C is absent, then echoes;
//! - each echoed request logs `Echoing back request made to <RequestURI> to client (<addr>)` on
//!   stdout (flushed), which the conformance mirror checks read;
//! - the optional h2c port serves cleartext HTTP/2 with prior knowledge (and rejects plain
//!   HTTP/1.1 requests, as echo-basic does).
//!
//! At start it prints `Starting server, listening on port <port> (http)` (and `(h2c)`) with the
//! port actually bound, so a caller may pass port 0 and read the port from stdout.

mod websocket;

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HOST, LOCATION, UPGRADE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Mutex, Notify};
use tokio::task::JoinSet;

/// Where and as whom the echo backend serves.
#[derive(Debug, Clone)]
pub struct EchoOptions {
    /// HTTP/1.1 listener (echo-basic's port 3000).
    pub listen: SocketAddr,
    /// Cleartext HTTP/2 (prior knowledge) listener (echo-basic's port 3001).
    pub h2c_listen: Option<SocketAddr>,
    /// UDP socket: each datagram is answered with `pod=<pod> peer=<ip> port=<port>`, the
    /// client address it came from.
    pub udp_listen: Option<SocketAddr>,
    /// Reported as `namespace` (echo-basic's `NAMESPACE`).
    pub namespace: String,
    /// Reported as `pod` (echo-basic's `POD_NAME`).
    pub pod: String,
    /// Reported as `service` (echo-basic's `SERVICE_NAME`).
    pub service: String,
}

/// Binds the listeners and serves until the returned future is dropped (which also aborts every
/// open connection). Bind errors name the address.
pub async fn serve(opts: EchoOptions) -> io::Result<()> {
    let http = bind(opts.listen, "http").await?;
    let h2c = match opts.h2c_listen {
        Some(addr) => Some(bind(addr, "h2c").await?),
        None => None,
    };
    let udp = match opts.udp_listen {
        Some(addr) => Some(
            tokio::net::UdpSocket::bind(addr)
                .await
                .map_err(|err| io::Error::new(err.kind(), format!("echo: cannot listen (udp) on {addr}: {err}")))?,
        ),
        None => None,
    };
    let http_port = http.local_addr()?.port();
    announce(http_port, "http");
    if let Some(listener) = &h2c {
        announce(listener.local_addr()?.port(), "h2c");
    }
    if let Some(socket) = &udp {
        announce(socket.local_addr()?.port(), "udp");
    }
    let udp = serve_udp(udp, opts.pod.clone());
    tokio::pin!(udp);

    let shared = Arc::new(Shared {
        context: Context {
            namespace: opts.namespace,
            ingress: String::new(),
            service: opts.service,
            pod: opts.pod,
        },
        http_port: http_port.to_string(),
        retries: Mutex::new(RetryState::default()),
    });

    // Connections live in this set, so dropping the serve future aborts them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = http.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_http1(stream, peer, shared.clone()));
                }
                Err(err) => accept_failed(err, "http").await,
            },
            accepted = accept_optional(h2c.as_ref()) => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(serve_h2c(stream, peer, shared.clone()));
                }
                Err(err) => accept_failed(err, "h2c").await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = &mut udp => {}
        }
    }
}

/// Answers every datagram with the client address it came from (never returns; pending
/// without a socket).
async fn serve_udp(socket: Option<tokio::net::UdpSocket>, pod: String) {
    let Some(socket) = socket else {
        return std::future::pending().await;
    };
    let mut buf = vec![0u8; 65_535];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((_, peer)) => {
                let answer = format!("pod={pod} peer={} port={}\n", peer.ip(), peer.port());
                let _ = socket.send_to(answer.as_bytes(), peer).await;
                print_line(&format!("Echoing back a datagram to client ({peer})"));
            }
            Err(err) => {
                // An ICMP error for an earlier answer: not the socket's end.
                tracing::debug!(error = %err, "echo: UDP receive failed");
            }
        }
    }
}

async fn bind(addr: SocketAddr, what: &str) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|err| io::Error::new(err.kind(), format!("echo: cannot listen ({what}) on {addr}: {err}")))
}

async fn accept_optional(listener: Option<&TcpListener>) -> io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

async fn accept_failed(err: io::Error, what: &str) {
    // Typically EMFILE/ENFILE: back off a little instead of spinning.
    tracing::warn!(error = %err, "echo: accept failed on the {what} listener");
    tokio::time::sleep(Duration::from_millis(50)).await;
}

fn announce(port: u16, what: &str) {
    print_line(&format!("Starting server, listening on port {port} ({what})"));
}

/// Writes one line to stdout and flushes it (log readers depend on seeing it promptly).
fn print_line(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

struct Shared {
    context: Context,
    http_port: String,
    retries: Mutex<RetryState>,
}

#[derive(Debug, Clone, Serialize)]
struct Context {
    namespace: String,
    ingress: String,
    service: String,
    pod: String,
}

/// The JSON body, field for field (and in the same order) as echo-basic's `RequestAssertions`.
#[derive(Serialize)]
struct RequestAssertions<'a> {
    path: &'a str,
    host: &'a str,
    method: &'a str,
    proto: &'a str,
    headers: BTreeMap<String, Vec<String>>,
    #[serde(rename = "httpPort")]
    http_port: &'a str,
    #[serde(flatten)]
    context: &'a Context,
}

type Body = Full<Bytes>;

/// What a handler decided: an HTTP response, or resetting the TCP connection.
enum Outcome {
    Respond(Response<Body>),
    Reset,
}

async fn serve_http1(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    // A second descriptor of the same socket, to set SO_LINGER=0 when a handler asks for a reset
    // (hyper owns the stream itself).
    let dup: Option<OwnedFd> = stream.as_fd().try_clone_to_owned().ok();
    let reset = Arc::new(Notify::new());
    let service = {
        let reset = reset.clone();
        service_fn(move |req: Request<Incoming>| {
            let shared = shared.clone();
            let reset = reset.clone();
            async move {
                match handle_http(req, peer, &shared).await {
                    Outcome::Respond(resp) => Ok::<_, Infallible>(resp),
                    Outcome::Reset => {
                        reset.notify_one();
                        std::future::pending().await
                    }
                }
            }
        })
    };
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::select! {
        _ = connection => {}
        _ = reset.notified() => {
            if let Some(fd) = &dup {
                let _ = socket2::SockRef::from(fd).set_linger(Some(Duration::ZERO));
            }
        }
    }
    // The connection (and its descriptor) is dropped; closing the last descriptor with a zero
    // linger sends the RST.
    drop(dup);
}

async fn serve_h2c(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle_h2c(req, peer, &shared).await) }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let _ = builder.serve_connection(TokioIo::new(stream), service).await;
}

/// One access-log line per request, at debug level (`TIDEGATE_LOG=tidegate::echo=debug`), so a
/// test can tell which requests reached this backend without paying for it under load.
fn log_request(req: &Request<Incoming>, peer: SocketAddr) {
    tracing::debug!(target: "tidegate::echo", method = %req.method(), uri = %req.uri(), %peer, "request");
}

async fn handle_h2c(req: Request<Incoming>, peer: SocketAddr, shared: &Shared) -> Response<Body> {
    log_request(&req, peer);
    let upgrade_h2c = req.headers().get(UPGRADE).is_some_and(|v| v.as_bytes() == b"h2c");
    if req.version() != Version::HTTP_2 && !upgrade_h2c {
        return text(StatusCode::BAD_REQUEST, "Expected h2c request");
    }
    echo(&req, peer, shared).await
}

async fn handle_http(mut req: Request<Incoming>, peer: SocketAddr, shared: &Shared) -> Outcome {
    log_request(&req, peer);
    if req.version() == Version::HTTP_11 && !req.headers().contains_key(HOST) {
        return Outcome::Respond(text(
            StatusCode::BAD_REQUEST,
            "Bad Request: missing required Host header",
        ));
    }
    if req.method() == Method::OPTIONS && req.uri() == "*" {
        return Outcome::Respond(empty(StatusCode::OK));
    }
    match mux_route(req.uri().path(), req.uri().query()) {
        MuxRoute::Redirect(location) => Outcome::Respond(moved_permanently(req.method(), &location)),
        MuxRoute::Health => Outcome::Respond(text(StatusCode::OK, "OK")),
        MuxRoute::WebSocket => {
            let wants_ws = req
                .headers()
                .get(UPGRADE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
            if !wants_ws {
                return Outcome::Respond(empty(StatusCode::BAD_REQUEST));
            }
            Outcome::Respond(websocket::answer(&mut req))
        }
        MuxRoute::Status => Outcome::Respond(status_handler(&request_uri(&req))),
        MuxRoute::Retry => retry_handler(&req, peer, shared).await,
        MuxRoute::Echo => Outcome::Respond(echo(&req, peer, shared).await),
    }
}

/// `/status/NNN`: the RequestURI must be exactly that (no query), else 400.
fn status_handler(request_uri: &str) -> Response<Body> {
    let code = request_uri
        .strip_prefix("/status/")
        .filter(|digits| digits.len() == 3 && digits.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|digits| digits.parse::<u16>().ok());
    match code {
        Some(code) => match StatusCode::from_u16(code) {
            // Go writes a 1xx as informational and then 200 when the handler returns.
            Ok(status) if status.is_informational() => empty(StatusCode::OK),
            Ok(status) => empty(status),
            Err(_) => empty(StatusCode::BAD_REQUEST),
        },
        None => empty(StatusCode::BAD_REQUEST),
    }
}

async fn retry_handler(req: &Request<Incoming>, peer: SocketAddr, shared: &Shared) -> Outcome {
    let query = req.uri().query().unwrap_or("");
    let uuid = query_value(query, "uuid").unwrap_or_default();
    if uuid.is_empty() {
        return Outcome::Respond(text(StatusCode::BAD_REQUEST, "uuid is required"));
    }
    let Some(succeed_after) = query_value(query, "succeedAfter").and_then(|v| go_atoi(&v)) else {
        return Outcome::Respond(text(StatusCode::BAD_REQUEST, "succeedAfter is required"));
    };
    let response_code = query_value(query, "responseCode").and_then(|v| go_atoi(&v));

    // As echo-basic: the lock is held for the whole request, delays included, so attempts of
    // one backend are serialized.
    let mut retries = shared.retries.lock().await;
    if retries.should_fail(&uuid, succeed_after) {
        if let Some(delay) = query_value(query, "delayRetry").filter(|d| !d.is_empty()) {
            match parse_go_duration(&delay) {
                Ok(nanos) => sleep_nanos(nanos).await,
                Err(msg) => return Outcome::Respond(process_error(&msg)),
            }
        }
        return match response_code {
            None => Outcome::Reset,
            Some(code) => match u16::try_from(code).ok().map(StatusCode::from_u16) {
                Some(Ok(status)) if status.is_informational() => Outcome::Respond(empty(StatusCode::OK)),
                Some(Ok(status)) => Outcome::Respond(empty(status)),
                // Go panics on an invalid WriteHeader code and the connection is torn down.
                _ => Outcome::Reset,
            },
        };
    }
    let response = echo(req, peer, shared).await;
    drop(retries);
    Outcome::Respond(response)
}

async fn echo(req: &Request<Incoming>, peer: SocketAddr, shared: &Shared) -> Response<Body> {
    let uri = request_uri(req);
    print_line(&format!("Echoing back request made to {uri} to client ({peer})"));

    if let Some(delay) = query_value(req.uri().query().unwrap_or(""), "delay").filter(|d| !d.is_empty()) {
        match parse_go_duration(&delay) {
            Ok(nanos) => sleep_nanos(nanos).await,
            Err(msg) => return process_error(&msg),
        }
    }

    let host = request_host(req);
    let assertions = RequestAssertions {
        path: &uri,
        host: &host,
        method: req.method().as_str(),
        proto: proto(req.version()),
        headers: echoed_headers(req.version(), req.headers()),
        http_port: &shared.http_port,
        context: &shared.context,
    };
    let body = match to_json_indented(&assertions) {
        Ok(body) => body,
        Err(err) => return process_error(&err.to_string()),
    };

    let mut resp = Response::new(Full::new(Bytes::from(body)));
    let set_values: Vec<String> = req
        .headers()
        .get_all("x-echo-set-header")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    for (name, value) in parse_echo_set_headers(&set_values) {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value.trim()),
        ) else {
            // Go's server drops header fields it cannot write; so do we.
            continue;
        };
        resp.headers_mut().append(name, value);
    }
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    resp
}

fn to_json_indented(value: &impl Serialize) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(512);
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b" ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    value.serialize(&mut ser)?;
    Ok(out)
}

/// Go's `r.RequestURI`: the request target as sent (origin form: path with query; absolute form:
/// the whole URI); for HTTP/2, `:path`.
fn request_uri<B>(req: &Request<B>) -> String {
    let uri = req.uri();
    if req.version() != Version::HTTP_2 && uri.scheme().is_some() {
        return uri.to_string();
    }
    match uri.path_and_query() {
        Some(pq) => pq.as_str().to_owned(),
        None => uri.to_string(),
    }
}

/// Go's `r.Host`: `:authority` (HTTP/2) or the absolute-form URI's host, else the Host header.
fn request_host<B>(req: &Request<B>) -> String {
    if let Some(authority) = req.uri().authority() {
        return authority.as_str().to_owned();
    }
    req.headers()
        .get(HOST)
        .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
        .unwrap_or_default()
}

fn proto(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// Go's `r.Header`: every field but Host (and, for HTTP/1, Transfer-Encoding), names in Go
/// canonical form, values in arrival order.
fn echoed_headers(version: Version, headers: &HeaderMap) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in headers {
        if name == HOST || (version != Version::HTTP_2 && name == http::header::TRANSFER_ENCODING) {
            continue;
        }
        out.entry(go_canonical_header_key(name.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    out
}

/// Go's `textproto.CanonicalMIMEHeaderKey`: `content-type` → `Content-Type`; names with bytes that
/// are not token characters are returned unchanged.
pub fn go_canonical_header_key(name: &str) -> String {
    let is_token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !name.bytes().all(is_token) {
        return name.to_owned();
    }
    let mut upper = true;
    name.bytes()
        .map(|b| {
            let c = if upper {
                b.to_ascii_uppercase()
            } else {
                b.to_ascii_lowercase()
            };
            upper = b == b'-';
            c as char
        })
        .collect()
}

/// Parses `X-Echo-Set-Header` values (`N1:v1,N2:v2`, possibly several header lines) the way
/// echo-basic does: pairs are trimmed, split at the first `:`, and a repeated name (same
/// spelling) gets `,value` appended to its first value. Order of first appearance is kept.
/// Values are trimmed when written (as Go's header writer does).
pub fn parse_echo_set_headers(values: &[String]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for list in values {
        for pair in list.split(',') {
            let pair = pair.trim();
            let (name, value) = pair.split_once(':').unwrap_or((pair, ""));
            // Go checks `len(w.Header()[name]) == 0`: any earlier value (even empty) is
            // appended to.
            match out.iter_mut().find(|(n, _)| n == name) {
                Some((_, existing)) => {
                    existing.push(',');
                    existing.push_str(value.trim());
                }
                None => out.push((name.to_owned(), value.to_owned())),
            }
        }
    }
    out
}

/// Per-uuid attempt counter of the retry simulation.
#[derive(Debug, Default)]
pub struct RetryState {
    attempts: HashMap<String, i64>,
}

impl RetryState {
    /// Records an attempt for `uuid`; true while fewer than `succeed_after` attempts failed.
    pub fn should_fail(&mut self, uuid: &str, succeed_after: i64) -> bool {
        let attempts = self.attempts.entry(uuid.to_owned()).or_insert(0);
        if *attempts < succeed_after {
            *attempts += 1;
            true
        } else {
            false
        }
    }
}

/// Go's `strconv.Atoi` (64-bit int): optional sign, decimal digits only.
pub fn go_atoi(s: &str) -> Option<i64> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<i64>().ok()
}

/// Go's `time.ParseDuration`, in nanoseconds (may be negative). Errors carry Go's message.
pub fn parse_go_duration(orig: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {orig:?}");
    let mut s = orig;
    let mut negative = false;
    if let Some(rest) = s.strip_prefix('-') {
        negative = true;
        s = rest;
    } else if let Some(rest) = s.strip_prefix('+') {
        s = rest;
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u64 = 0;
    while !s.is_empty() {
        let bytes = s.as_bytes();
        if !bytes.first().is_some_and(|b| *b == b'.' || b.is_ascii_digit()) {
            return Err(invalid());
        }
        // Integer part.
        let int_len = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
        let mut value: u64 = 0;
        for &b in &bytes[..int_len] {
            value = value
                .checked_mul(10)
                .and_then(|v| v.checked_add(u64::from(b - b'0')))
                .ok_or_else(invalid)?;
        }
        s = &s[int_len..];
        // Fraction.
        let mut fraction: u64 = 0;
        let mut scale: f64 = 1.0;
        let mut frac_len = 0;
        if let Some(rest) = s.strip_prefix('.') {
            s = rest;
            frac_len = s.bytes().take_while(|b| b.is_ascii_digit()).count();
            let mut overflow = false;
            for b in s[..frac_len].bytes() {
                if overflow {
                    continue;
                }
                match fraction
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(u64::from(b - b'0')))
                {
                    Some(v) if v < (1 << 63) => {
                        fraction = v;
                        scale *= 10.0;
                    }
                    _ => overflow = true,
                }
            }
            s = &s[frac_len..];
        }
        if int_len == 0 && frac_len == 0 {
            return Err(invalid());
        }
        // Unit.
        let unit_len = s
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(s.len(), |(i, _)| i);
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {orig:?}"));
        }
        let unit = &s[..unit_len];
        s = &s[unit_len..];
        let unit_nanos: u64 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(format!("time: unknown unit {unit:?} in duration {orig:?}")),
        };
        let mut part = value.checked_mul(unit_nanos).ok_or_else(invalid)?;
        if fraction > 0 {
            // Go: v += uint64(float64(f) * (float64(unit) / scale))
            part = part
                .checked_add((fraction as f64 * (unit_nanos as f64 / scale)) as u64)
                .ok_or_else(invalid)?;
        }
        total = total.checked_add(part).ok_or_else(invalid)?;
        if total > i64::MAX as u64 + u64::from(negative) {
            return Err(invalid());
        }
    }
    if negative {
        Ok((total as i64).wrapping_neg())
    } else {
        i64::try_from(total).map_err(|_| invalid())
    }
}

async fn sleep_nanos(nanos: i64) {
    if let Ok(nanos) = u64::try_from(nanos) {
        tokio::time::sleep(Duration::from_nanos(nanos)).await;
    }
}

/// The first value of `key` in a raw query string, decoded like Go's `url.ParseQuery` (entries
/// containing `;` or bad escapes are skipped).
pub fn query_value(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter(|part| !part.is_empty() && !part.contains(';'))
        .filter_map(|part| {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            Some((query_unescape(k)?, query_unescape(v)?))
        })
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// Go's `url.QueryUnescape`: `+` is a space, `%XX` a byte; None on a malformed escape.
pub fn query_unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

/// Where Go's `ServeMux` (behind echo-basic's `preserveSlashes`) sends a request.
#[derive(Debug, PartialEq, Eq)]
pub enum MuxRoute {
    /// 301 to this location (a non-clean path, or `/status` → `/status/`).
    Redirect(String),
    Health,
    WebSocket,
    Status,
    Retry,
    Echo,
}

/// Routes a raw request path like echo-basic: `//` is collapsed first, then the path is cleaned
/// (a differing path is redirected), then `/health`, `/ws`, `/status/…`, `/retry/…` or `/`.
pub fn mux_route(raw_path: &str, raw_query: Option<&str>) -> MuxRoute {
    let with_query = |path: &str| match raw_query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    };
    let path = raw_path.replace("//", "/");
    let cleaned = clean_path(&path);
    if cleaned == "/status" || cleaned == "/retry" {
        return MuxRoute::Redirect(with_query(&format!("{cleaned}/")));
    }
    if cleaned != path {
        return MuxRoute::Redirect(with_query(&cleaned));
    }
    match cleaned.as_str() {
        "/health" => MuxRoute::Health,
        "/ws" => MuxRoute::WebSocket,
        p if p.starts_with("/status/") => MuxRoute::Status,
        p if p.starts_with("/retry/") => MuxRoute::Retry,
        _ => MuxRoute::Echo,
    }
}

/// Go's `net/http.cleanPath`: `path.Clean` of a rooted path, keeping a trailing slash.
pub fn clean_path(p: &str) -> String {
    if p.is_empty() {
        return "/".to_owned();
    }
    let mut parts: Vec<&str> = Vec::new();
    for segment in p.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let mut cleaned = format!("/{}", parts.join("/"));
    if p.ends_with('/') && cleaned != "/" {
        cleaned.push('/');
    }
    cleaned
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_owned())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

fn moved_permanently(method: &Method, location: &str) -> Response<Body> {
    let Ok(location_value) = HeaderValue::from_str(location) else {
        return empty(StatusCode::BAD_REQUEST);
    };
    let mut resp = if method == Method::GET {
        let escaped = location
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&#34;")
            .replace('\'', "&#39;");
        let mut resp = text(
            StatusCode::MOVED_PERMANENTLY,
            &format!("<a href=\"{escaped}\">Moved Permanently</a>.\n\n"),
        );
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        resp
    } else {
        empty(StatusCode::MOVED_PERMANENTLY)
    };
    resp.headers_mut().insert(LOCATION, location_value);
    resp
}

/// echo-basic's `processError`: `{"message": ...}` as JSON, status 500.
fn process_error(message: &str) -> Response<Body> {
    let body = serde_json::json!({ "message": message }).to_string();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    let headers = resp.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(parse_go_duration("1s"), Ok(1_000_000_000));
        assert_eq!(parse_go_duration("+1s"), Ok(1_000_000_000));
        assert_eq!(parse_go_duration("-1.5s"), Ok(-1_500_000_000));
        assert_eq!(parse_go_duration("100ms"), Ok(100_000_000));
        assert_eq!(parse_go_duration("1h2m3s"), Ok(3_723_000_000_000));
        assert_eq!(parse_go_duration("1.5h"), Ok(5_400_000_000_000));
        assert_eq!(parse_go_duration(".5s"), Ok(500_000_000));
        assert_eq!(parse_go_duration("5.s"), Ok(5_000_000_000));
        assert_eq!(parse_go_duration("3us"), Ok(3_000));
        assert_eq!(parse_go_duration("3\u{b5}s"), Ok(3_000));
        assert_eq!(parse_go_duration("3\u{3bc}s"), Ok(3_000));
        assert_eq!(parse_go_duration("7ns"), Ok(7));
        assert_eq!(parse_go_duration("2562047h"), Ok(2_562_047 * 3_600_000_000_000));
        assert_eq!(parse_go_duration("-9223372036854775808ns"), Ok(i64::MIN));
    }

    #[test]
    fn bad_durations_are_rejected_with_go_messages() {
        assert_eq!(parse_go_duration(""), Err("time: invalid duration \"\"".to_owned()));
        assert_eq!(
            parse_go_duration("1"),
            Err("time: missing unit in duration \"1\"".to_owned())
        );
        assert_eq!(
            parse_go_duration("1x"),
            Err("time: unknown unit \"x\" in duration \"1x\"".to_owned())
        );
        assert!(parse_go_duration("s").is_err());
        assert!(parse_go_duration(".s").is_err());
        assert!(parse_go_duration("-").is_err());
        assert!(parse_go_duration("1s ").is_err());
        assert!(parse_go_duration("9223372036854775808ns").is_err());
        assert!(parse_go_duration("3000000h").is_err());
    }

    #[test]
    fn echo_set_header_pairs() {
        let parsed = parse_echo_set_headers(&["Some-Other-Header:val,X-Header-Set:v2".to_owned()]);
        assert_eq!(
            parsed,
            vec![
                ("Some-Other-Header".to_owned(), "val".to_owned()),
                ("X-Header-Set".to_owned(), "v2".to_owned()),
            ]
        );
        // Empty header (upstream sends it on every request) yields one empty pair, dropped later.
        assert_eq!(
            parse_echo_set_headers(&[String::new()]),
            vec![(String::new(), String::new())]
        );
        // Repeats append with a comma; spaces around pairs are trimmed; several lines merge.
        let parsed = parse_echo_set_headers(&[" A:1 , A: 2".to_owned(), "B:x:y,A:3".to_owned(), "C".to_owned()]);
        assert_eq!(
            parsed,
            vec![
                ("A".to_owned(), "1,2,3".to_owned()),
                ("B".to_owned(), "x:y".to_owned()),
                ("C".to_owned(), String::new()),
            ]
        );
        // Names are case-sensitive as Go map keys.
        assert_eq!(parse_echo_set_headers(&["a:1,A:2".to_owned()]).len(), 2);
    }

    #[test]
    fn retry_state_counts_per_uuid() {
        let mut state = RetryState::default();
        assert!(state.should_fail("u1", 2));
        assert!(state.should_fail("u1", 2));
        assert!(!state.should_fail("u1", 2));
        assert!(!state.should_fail("u1", 2));
        assert!(state.should_fail("u2", 1));
        assert!(!state.should_fail("u2", 1));
        assert!(!state.should_fail("u3", 0));
        assert!(!state.should_fail("u4", -1));
    }

    #[test]
    fn atoi_like_go() {
        assert_eq!(go_atoi("3"), Some(3));
        assert_eq!(go_atoi("+3"), Some(3));
        assert_eq!(go_atoi("-3"), Some(-3));
        assert_eq!(go_atoi(""), None);
        assert_eq!(go_atoi(" 3"), None);
        assert_eq!(go_atoi("3a"), None);
        assert_eq!(go_atoi("-"), None);
    }

    #[test]
    fn canonical_header_keys() {
        assert_eq!(go_canonical_header_key("content-type"), "Content-Type");
        assert_eq!(go_canonical_header_key("x-header-SET"), "X-Header-Set");
        assert_eq!(go_canonical_header_key("origin"), "Origin");
        assert_eq!(go_canonical_header_key("a--b"), "A--B");
        assert_eq!(go_canonical_header_key("has space"), "has space");
    }

    #[test]
    fn query_values() {
        assert_eq!(query_value("delay=1s", "delay").as_deref(), Some("1s"));
        assert_eq!(query_value("a=1&delay=2s&delay=3s", "delay").as_deref(), Some("2s"));
        assert_eq!(query_value("a=%31+2", "a").as_deref(), Some("1 2"));
        assert_eq!(query_value("a=%zz&a=ok", "a").as_deref(), Some("ok"));
        assert_eq!(query_value("a=1;b=2&a=3", "a").as_deref(), Some("3"));
        assert_eq!(query_value("flag", "flag").as_deref(), Some(""));
        assert_eq!(query_value("", "delay"), None);
    }

    #[test]
    fn mux_routes_like_echo_basic() {
        assert_eq!(mux_route("/", None), MuxRoute::Echo);
        assert_eq!(mux_route("/foo/bar", Some("x=1")), MuxRoute::Echo);
        assert_eq!(mux_route("/health", None), MuxRoute::Health);
        assert_eq!(mux_route("/ws", None), MuxRoute::WebSocket);
        assert_eq!(mux_route("/status/404", None), MuxRoute::Status);
        assert_eq!(mux_route("/retry/x", Some("uuid=1")), MuxRoute::Retry);
        assert_eq!(
            mux_route("/status", Some("a=1")),
            MuxRoute::Redirect("/status/?a=1".to_owned())
        );
        // `//` is collapsed before routing (preserveSlashes), so it is not redirected...
        assert_eq!(mux_route("/foo//bar", None), MuxRoute::Echo);
        // ...but other unclean paths are.
        assert_eq!(
            mux_route("/a/./b/../c", Some("q")),
            MuxRoute::Redirect("/a/c?q".to_owned())
        );
        assert_eq!(mux_route("/a///b", None), MuxRoute::Redirect("/a/b".to_owned()));
    }

    #[test]
    fn clean_paths() {
        assert_eq!(clean_path(""), "/");
        assert_eq!(clean_path("/"), "/");
        assert_eq!(clean_path("/a/b/"), "/a/b/");
        assert_eq!(clean_path("/a/../../b"), "/b");
        assert_eq!(clean_path("/a/./"), "/a/");
        assert_eq!(clean_path("/.."), "/");
    }

    #[test]
    fn status_paths() {
        assert_eq!(status_handler("/status/404").status(), StatusCode::NOT_FOUND);
        assert_eq!(status_handler("/status/503").status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status_handler("/status/404?x=1").status(), StatusCode::BAD_REQUEST);
        assert_eq!(status_handler("/status/44").status(), StatusCode::BAD_REQUEST);
        assert_eq!(status_handler("/status/abc").status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn json_shape_matches_echo_basic() {
        let ctx = Context {
            namespace: "ns".into(),
            ingress: String::new(),
            service: "svc".into(),
            pod: "pod-1".into(),
        };
        let mut headers = BTreeMap::new();
        headers.insert("X-A".to_owned(), vec!["1".to_owned(), "2".to_owned()]);
        let body = to_json_indented(&RequestAssertions {
            path: "/p?q=1",
            host: "example.com",
            method: "GET",
            proto: "HTTP/1.1",
            headers,
            http_port: "3000",
            context: &ctx,
        })
        .expect("serializes");
        let text = String::from_utf8(body).expect("utf8");
        assert!(text.starts_with("{\n \"path\": \"/p?q=1\",\n \"host\""), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        let keys: Vec<&str> = v.as_object().expect("object").keys().map(String::as_str).collect();
        // serde_json's Map is sorted; just check the set of fields.
        let mut expected = vec![
            "headers",
            "host",
            "httpPort",
            "ingress",
            "method",
            "namespace",
            "path",
            "pod",
            "proto",
            "service",
        ];
        expected.sort_unstable();
        assert_eq!(keys, expected);
        assert_eq!(v["headers"]["X-A"], serde_json::json!(["1", "2"]));
        assert_eq!(v["pod"], "pod-1");
    }
}
