//! A scripted upstream for the tests: a real HTTP/1.1 and h2c (prior knowledge) server on one
//! loopback port, on its own thread and runtime, that records every request it gets and answers
//! each one as a script says: status, headers, body frames, trailers, waits between frames, and a
//! reset in the middle of the body.
//!
//! Included with `#[path]` by the integration tests (`runtime/tests/*.rs`) and by the request
//! flow's unit tests (`runtime/src/proxy/http/tests.rs`), so it uses only crates the `tidegate`
//! library itself depends on. Not every user needs everything.
//!
//! ```ignore
//! let upstream = Upstream::start(|seen: &Seen| echo(seen).sized());
//! let slow = Upstream::start(|_: &Seen| Reply::new(200).wait(Duration::from_millis(300)).data("late"));
//! ```
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body of frames known in advance (what clients send in the tests).
pub type Frames = StreamBody<futures::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

pub fn frames(frames: Vec<Frame<Bytes>>) -> Frames {
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = frames.into_iter().map(Ok).collect();
    StreamBody::new(futures::stream::iter(frames))
}

pub fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            value.parse().expect("header value"),
        );
    }
    map
}

/// A request as the upstream received it (the whole body read, or why reading it failed).
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Result<Bytes, String>,
    pub trailers: Option<HeaderMap>,
}

impl Seen {
    pub fn path(&self) -> &str {
        self.uri.path()
    }

    /// A request header as text, `"none"` when absent.
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_else(|| "none".to_string())
    }

    /// The request trailers as `name=value` pairs, sorted and joined with `;` (`"none"`).
    pub fn trailer_list(&self) -> String {
        let mut pairs: Vec<String> = self
            .trailers
            .iter()
            .flatten()
            .map(|(n, v)| format!("{n}={}", String::from_utf8_lossy(v.as_bytes())))
            .collect();
        if pairs.is_empty() {
            return "none".to_string();
        }
        pairs.sort();
        pairs.join(";")
    }
}

/// One step of a scripted response body.
#[derive(Debug, Clone)]
pub enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    /// Nothing for this long (the headers, and any frames before, are out meanwhile).
    Wait(Duration),
    /// The body fails here: hyper resets the HTTP/2 stream (`INTERNAL_ERROR`) or closes the
    /// HTTP/1.1 connection.
    Reset,
}

/// A scripted response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub steps: Vec<Step>,
    /// Send `content-length` (the sum of the data frames) when the body ends cleanly without
    /// trailers.
    pub sized: bool,
}

impl Reply {
    pub fn new(status: u16) -> Self {
        Self {
            status: StatusCode::from_u16(status).expect("status"),
            headers: HeaderMap::new(),
            steps: Vec::new(),
            sized: false,
        }
    }

    pub fn header(mut self, name: &str, value: impl AsRef<str>) -> Self {
        self.headers.append(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value.as_ref()).expect("header value"),
        );
        self
    }

    /// One data frame (none when `bytes` is empty).
    pub fn data(mut self, bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        if !bytes.is_empty() {
            self.steps.push(Step::Data(bytes));
        }
        self
    }

    /// `total` bytes of `byte` in frames of at most `frame` bytes.
    pub fn filled(mut self, byte: u8, total: usize, frame: usize) -> Self {
        for at in (0..total).step_by(frame.max(1)) {
            self.steps
                .push(Step::Data(Bytes::from(vec![byte; (total - at).min(frame)])));
        }
        self
    }

    /// Ends the body with trailers, announced in a `trailer` header (which HTTP/1.1 needs).
    pub fn trailers(mut self, pairs: &[(&str, &str)]) -> Self {
        let names: Vec<&str> = pairs.iter().map(|(n, _)| *n).collect();
        self = self.header("trailer", names.join(", "));
        self.steps.push(Step::Trailers(header_map(pairs)));
        self
    }

    pub fn wait(mut self, time: Duration) -> Self {
        if !time.is_zero() {
            self.steps.push(Step::Wait(time));
        }
        self
    }

    pub fn reset(mut self) -> Self {
        self.steps.push(Step::Reset);
        self
    }

    pub fn sized(mut self) -> Self {
        self.sized = true;
        self
    }

    fn into_response(self) -> Response<UnsyncBoxBody<Bytes, BoxError>> {
        let Reply {
            status,
            mut headers,
            steps,
            sized,
        } = self;
        let clean = !steps.iter().any(|s| matches!(s, Step::Trailers(_) | Step::Reset));
        if sized && clean && !headers.contains_key("content-length") {
            let length: usize = steps
                .iter()
                .map(|s| match s {
                    Step::Data(bytes) => bytes.len(),
                    _ => 0,
                })
                .sum();
            headers.insert("content-length", length.into());
        }
        if steps.is_empty() {
            // Ends with the headers (HTTP/2: END_STREAM on HEADERS).
            let empty = http_body_util::Empty::<Bytes>::new().map_err(|never| match never {});
            let mut response = Response::new(BodyExt::boxed_unsync(empty));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            return response;
        }
        let body = futures::stream::unfold(steps.into_iter(), |mut steps| async move {
            loop {
                let frame = match steps.next()? {
                    Step::Wait(time) => {
                        tokio::time::sleep(time).await;
                        continue;
                    }
                    Step::Data(bytes) => Ok(Frame::data(bytes)),
                    Step::Trailers(trailers) => Ok(Frame::trailers(trailers)),
                    Step::Reset => Err(BoxError::from("the script resets the response here")),
                };
                return Some((frame, steps));
            }
        });
        let mut response = Response::new(BodyExt::boxed_unsync(StreamBody::new(body)));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }
}

/// The delay a request asks for with `x-body-after-ms: N`.
pub fn body_after(seen: &Seen) -> Option<Duration> {
    let ms = seen.headers.get("x-body-after-ms")?.to_str().ok()?.parse().ok()?;
    Some(Duration::from_millis(ms))
}

/// The standard echo: [`echo_after`] with no prefix.
pub fn echo(seen: &Seen) -> Reply {
    echo_after("", seen)
}

/// 200 with `prefix` and the request body, telling in headers what it received:
/// `x-seen-content-length`, `x-seen-transfer-encoding`, `x-seen-trailer`, `x-seen-te` (each
/// `none` when absent) and `x-seen-trailers` ([`Seen::trailer_list`]). Request headers script it:
/// - `x-want-trailers`: the body ends with the trailer `x-upstream: done`;
/// - `x-body-after-ms: N`: the headers go at once, the body N ms later.
///
/// A request body that failed is answered 400 with the error.
pub fn echo_after(prefix: &str, seen: &Seen) -> Reply {
    let body = match &seen.body {
        Ok(body) => body,
        Err(e) => return Reply::new(400).data(format!("the upstream could not read the request body: {e}")),
    };
    let mut reply = Reply::new(200)
        .header("x-seen-content-length", seen.header("content-length"))
        .header("x-seen-transfer-encoding", seen.header("transfer-encoding"))
        .header("x-seen-trailer", seen.header("trailer"))
        .header("x-seen-te", seen.header("te"))
        .header("x-seen-trailers", seen.trailer_list());
    if let Some(delay) = body_after(seen) {
        reply = reply.wait(delay);
    }
    let mut out = prefix.as_bytes().to_vec();
    out.extend_from_slice(body);
    reply = reply.data(out);
    if seen.headers.contains_key("x-want-trailers") {
        reply = reply.trailers(&[("x-upstream", "done")]);
    }
    reply
}

type Script = dyn Fn(&Seen) -> Reply + Send + Sync;

/// The running upstream; stops (and its connections close) when dropped.
pub struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    /// Starts answering every request with `script` (called once the request body was read).
    pub fn start(script: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the test upstream");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let recorded = seen.clone();
        let thread = std::thread::Builder::new()
            .name(format!("test-upstream-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("upstream runtime");
                runtime.block_on(serve(listener, script, recorded, stopped));
            })
            .expect("start the upstream thread");
        Self {
            addr,
            seen,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The standard [`echo`].
    pub fn echo() -> Self {
        Self::start(echo)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every request received so far, in the order their bodies ended.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    script: Arc<Script>,
    recorded: Arc<Mutex<Vec<Seen>>>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => return,
            },
        };
        let (script, recorded) = (script.clone(), recorded.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let (script, recorded) = (script.clone(), recorded.clone());
                async move {
                    let seen = read(request).await;
                    let reply = script(&seen);
                    recorded.lock().expect("seen").push(seen);
                    Ok::<_, Infallible>(reply.into_response())
                }
            });
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder.http1().timer(TokioTimer::new());
            builder.http2().timer(TokioTimer::new());
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn read(request: Request<Incoming>) -> Seen {
    let (parts, body) = request.into_parts();
    let (body, trailers) = match body.collect().await {
        Ok(collected) => {
            let trailers = collected.trailers().cloned();
            (Ok(collected.to_bytes()), trailers)
        }
        Err(e) => (Err(e.to_string()), None),
    };
    Seen {
        method: parts.method,
        uri: parts.uri,
        version: parts.version,
        headers: parts.headers,
        body,
        trailers,
    }
}
