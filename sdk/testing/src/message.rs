//! What a test sends through the filter (`Request`, `Response`, `Config`) and what it gets back
//! (`Outcome`).

use tidegate::wasm::{FilterAction, HeaderList, HttpExchange, LocalReply, PropertyMap};

/// How one direction went through the filter (see `TestHost`).
#[derive(Debug)]
pub(crate) struct Flow {
    pub(crate) action: FilterAction,
    pub(crate) headers_out: bool,
    pub(crate) body_out: Vec<u8>,
    pub(crate) reset: bool,
}

/// The listener port a [`Request`] arrives on unless [`Request::listener_port`] says otherwise
/// (the quickstart Gateway's HTTP listener).
pub const DEFAULT_LISTENER_PORT: u16 = 8080;
/// The `:authority` of a [`Request`] unless [`Request::authority`] says otherwise.
pub const DEFAULT_AUTHORITY: &str = "example.com";
/// The client address (`source.address`) of a [`Request`] unless [`Request::source`] says
/// otherwise.
pub const DEFAULT_SOURCE: &str = "127.0.0.1:40000";
/// The address the client connected to (`destination.address`) unless
/// [`Request::destination`] says otherwise.
pub const DEFAULT_DESTINATION: &str = "127.0.0.1:8080";

/// A filter's configuration, as a WasmFilter's `spec.config` reaches `proxy_on_configure`.
///
/// From a [`serde_json::Value`]: an object or array is serialized to JSON, a string is passed
/// as its raw bytes (Envoy's StringValue), `null` as no configuration; exactly what tidegate does
/// with `spec.config`. From `&str`, `String` or bytes: passed as they are (so a JSON text works
/// too).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config(pub Vec<u8>);

impl From<serde_json::Value> for Config {
    fn from(value: serde_json::Value) -> Self {
        match value {
            serde_json::Value::Null => Config(Vec::new()),
            serde_json::Value::String(text) => Config(text.into_bytes()),
            other => Config(other.to_string().into_bytes()),
        }
    }
}

impl From<&str> for Config {
    fn from(text: &str) -> Self {
        Config(text.as_bytes().to_vec())
    }
}

impl From<String> for Config {
    fn from(text: String) -> Self {
        Config(text.into_bytes())
    }
}

impl From<&[u8]> for Config {
    fn from(bytes: &[u8]) -> Self {
        Config(bytes.to_vec())
    }
}

impl From<Vec<u8>> for Config {
    fn from(bytes: Vec<u8>) -> Self {
        Config(bytes)
    }
}

/// A downstream request as tidegate hands it to the filter chain.
///
/// Built like the proxy builds it: pseudo-headers first (`:method`, `:scheme`, `:authority`,
/// `:path`), then the headers in order, and the properties the host sets on every request
/// (`tidegate.listener_port`, `source.address`, `destination.address`, `request.protocol`).
/// Properties the router or balancer would have written (`tidegate.route`, `tidegate.cluster`,
/// `tidegate.endpoint`) are absent unless set, which is what a `PreRouting` filter sees; set them
/// to test a `PostRouting` or `PostBalancing` filter.
///
/// ```
/// use tidegate_testing::Request;
/// let request = Request::post("/api/orders")
///     .header("content-type", "application/json")
///     .authority("shop.example.com")
///     .cluster("demo/orders:80"); // as the router would have chosen
/// # let _ = request;
/// ```
#[derive(Clone, Debug)]
pub struct Request {
    method: String,
    path: String,
    scheme: String,
    authority: String,
    headers: Vec<(String, Vec<u8>)>,
    properties: PropertyMap,
    body: Body,
}

/// The body and trailers that follow a message's headers.
#[derive(Clone, Debug)]
pub(crate) struct Body {
    /// Data frames, in order.
    pub(crate) chunks: Vec<Vec<u8>>,
    /// Trailers; they end the stream when present.
    pub(crate) trailers: Option<Vec<(String, Vec<u8>)>>,
    /// Whether the stream ends after what is given (else more would follow).
    pub(crate) ends: bool,
}

impl Body {
    fn new() -> Self {
        Self {
            chunks: Vec::new(),
            trailers: None,
            ends: true,
        }
    }

    /// Whether the headers end the stream.
    pub(crate) fn headers_end(&self) -> bool {
        self.ends && self.chunks.is_empty() && self.trailers.is_none()
    }

    pub(crate) fn trailer_list(trailers: Vec<(String, Vec<u8>)>) -> HeaderList {
        HeaderList::from_pairs(trailers)
    }
}

// === impl Request ===

impl Request {
    /// A request with `method` for `path` (path and query, e.g. `/search?q=x`).
    pub fn new(method: &str, path: &str) -> Self {
        let mut properties = PropertyMap::new();
        properties.set("tidegate.listener_port", DEFAULT_LISTENER_PORT.to_string());
        properties.set("source.address", DEFAULT_SOURCE);
        properties.set("destination.address", DEFAULT_DESTINATION);
        properties.set("request.protocol", "HTTP/1.1");
        Self {
            method: method.to_string(),
            path: path.to_string(),
            scheme: "http".to_string(),
            authority: DEFAULT_AUTHORITY.to_string(),
            headers: Vec::new(),
            properties,
            body: Body::new(),
        }
    }

    /// `GET path`.
    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    /// `POST path` (give it a [`body`](Self::body)).
    pub fn post(path: &str) -> Self {
        Self::new("POST", path)
    }

    /// Adds a header (kept in order; duplicates are kept).
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// Sets `:authority` (default [`DEFAULT_AUTHORITY`]).
    pub fn authority(mut self, authority: &str) -> Self {
        self.authority = authority.to_string();
        self
    }

    /// Sets `:scheme` (default `http`).
    pub fn scheme(mut self, scheme: &str) -> Self {
        self.scheme = scheme.to_string();
        self
    }

    /// Sets a property by dotted path (`tidegate.route`, `source.address`, anything).
    pub fn property(mut self, path: &str, value: impl Into<Vec<u8>>) -> Self {
        self.properties.set(path, value);
        self
    }

    /// The Gateway listener port (`tidegate.listener_port`; default [`DEFAULT_LISTENER_PORT`]).
    pub fn listener_port(self, port: u16) -> Self {
        self.property("tidegate.listener_port", port.to_string())
    }

    /// The Gateway, `namespace/name` (`tidegate.gateway`; default: not set).
    pub fn gateway(self, gateway: &str) -> Self {
        self.property("tidegate.gateway", gateway)
    }

    /// The client address, `ip:port` (`source.address`; default [`DEFAULT_SOURCE`]).
    pub fn source(self, addr: &str) -> Self {
        self.property("source.address", addr)
    }

    /// The address connected to, `ip:port` (`destination.address`; default
    /// [`DEFAULT_DESTINATION`]).
    pub fn destination(self, addr: &str) -> Self {
        self.property("destination.address", addr)
    }

    /// The route the router chose (`tidegate.route`, `namespace/name/rule`).
    pub fn route(self, route: &str) -> Self {
        self.property("tidegate.route", route)
    }

    /// The cluster the router chose (`tidegate.cluster`, `namespace/service:port`).
    pub fn cluster(self, cluster: &str) -> Self {
        self.property("tidegate.cluster", cluster)
    }

    /// The endpoint the balancer chose (`tidegate.endpoint`, `ip:port`).
    pub fn endpoint(self, endpoint: &str) -> Self {
        self.property("tidegate.endpoint", endpoint)
    }

    /// Adds a body frame (call it again for more frames). The filter's body callback sees each
    /// frame, or everything it buffered while it paused, as in the proxy.
    pub fn body(mut self, chunk: impl Into<Vec<u8>>) -> Self {
        self.body.chunks.push(chunk.into());
        self
    }

    /// Adds a trailer; trailers follow the body and end the stream.
    pub fn trailer(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.body
            .trailers
            .get_or_insert_with(Vec::new)
            .push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// Whether the stream ends after the headers, frames and trailers given (default `true`).
    /// `false` leaves it open, as when more of the body has yet to arrive: a filter that paused
    /// then still holds the request, and [`Outcome::forwarded`] is `false`.
    pub fn end_of_stream(mut self, end_of_stream: bool) -> Self {
        self.body.ends = end_of_stream;
        self
    }

    pub(crate) fn into_parts(mut self) -> (HttpExchange, Body) {
        let body = std::mem::replace(&mut self.body, Body::new());
        (self.into_exchange(), body)
    }

    fn into_exchange(self) -> HttpExchange {
        let mut headers = HeaderList::with_capacity(4 + self.headers.len());
        headers.add(":method", self.method);
        headers.add(":scheme", self.scheme);
        headers.add(":authority", self.authority);
        headers.add(":path", self.path);
        for (name, value) in self.headers {
            headers.add(&name, value);
        }
        HttpExchange {
            request_headers: headers,
            properties: self.properties,
            ..HttpExchange::default()
        }
    }
}

/// An upstream response, for the response phase ([`TestHost::response`](crate::TestHost::response)).
///
/// ```
/// use tidegate_testing::Response;
/// let response = Response::new(404).header("content-type", "text/html");
/// # let _ = response;
/// ```
#[derive(Clone, Debug)]
pub struct Response {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Body,
}

// === impl Response ===

impl Response {
    /// A response with `status` and no body (add one with [`body`](Self::body)).
    pub fn new(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Body::new(),
        }
    }

    /// `200 OK`.
    pub fn ok() -> Self {
        Self::new(200)
    }

    /// Adds a header (kept in order).
    pub fn header(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// Adds a body frame (call it again for more frames).
    pub fn body(mut self, chunk: impl Into<Vec<u8>>) -> Self {
        self.body.chunks.push(chunk.into());
        self
    }

    /// Adds a trailer; trailers follow the body and end the stream.
    pub fn trailer(mut self, name: &str, value: impl Into<Vec<u8>>) -> Self {
        self.body
            .trailers
            .get_or_insert_with(Vec::new)
            .push((name.to_ascii_lowercase(), value.into()));
        self
    }

    /// Whether the stream ends after what is given (default `true`); see
    /// [`Request::end_of_stream`].
    pub fn end_of_stream(mut self, end_of_stream: bool) -> Self {
        self.body.ends = end_of_stream;
        self
    }

    pub(crate) fn into_parts(mut self) -> (HeaderList, Body) {
        let body = std::mem::replace(&mut self.body, Body::new());
        (self.into_headers(), body)
    }

    fn into_headers(self) -> HeaderList {
        let mut headers = HeaderList::with_capacity(1 + self.headers.len());
        headers.add(":status", self.status.to_string());
        for (name, value) in self.headers {
            headers.add(&name, value);
        }
        headers
    }
}

/// What the filter did with a request (or a response) in one direction.
///
/// `forwarded` is what most tests assert first: `true` when the filter let the message go on to
/// the next hop; `false` when it answered locally (`local_reply` is set), reset the stream
/// (`reset`), or still holds the message (it paused and the stream has not ended, see
/// [`Request::end_of_stream`]). A pause at the end of the stream is released, as in the proxy:
/// nothing could resume it later.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Outcome {
    /// The message went on to the next hop: no local reply, no reset, not held.
    pub forwarded: bool,
    /// What the headers callback returned.
    pub action: FilterAction,
    /// The request headers after the filter (pseudo-headers first).
    pub request_headers: HeaderList,
    /// The response headers after the filter (`:status` first); empty in the request phase.
    pub response_headers: HeaderList,
    /// The body the filter passed on in this direction (its frames joined; what it changed
    /// included).
    pub body: Vec<u8>,
    /// The trailers after the filter in this direction (given, or created by the filter in its
    /// last body callback).
    pub trailers: HeaderList,
    /// The local reply the filter sent, if any.
    pub local_reply: Option<LocalReply>,
    /// The filter reset the stream (`proxy_close_stream`).
    pub reset: bool,
    /// The request's properties after the filter (host-set ones included).
    pub properties: PropertyMap,
}

// === impl Outcome ===

impl Outcome {
    pub(crate) fn new(flow: Flow, ex: &HttpExchange, trailers: &HeaderList) -> Self {
        Self {
            forwarded: flow.headers_out && !flow.reset && ex.local_reply.is_none(),
            action: flow.action,
            request_headers: ex.request_headers.clone(),
            response_headers: ex.response_headers.clone(),
            body: flow.body_out,
            trailers: trailers.clone(),
            local_reply: ex.local_reply.clone(),
            reset: flow.reset,
            properties: ex.properties.clone(),
        }
    }

    /// The body passed on, as text (lossy).
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first value of trailer `name`, as text.
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first value of request header `name`, as text (`None` if absent or not UTF-8).
    pub fn request_header(&self, name: &str) -> Option<&str> {
        self.request_headers.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The first value of response header `name`, as text.
    pub fn response_header(&self, name: &str) -> Option<&str> {
        self.response_headers
            .get(name)
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The property at dotted `path`, as text (e.g. `tidegate.cluster`).
    pub fn property(&self, path: &str) -> Option<&str> {
        self.properties.get(path).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The status of the local reply, if the filter sent one.
    pub fn status(&self) -> Option<u16> {
        self.local_reply.as_ref().map(|r| r.status)
    }

    /// The body of the local reply as text (lossy), if the filter sent one.
    pub fn reply_body(&self) -> Option<String> {
        self.local_reply
            .as_ref()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
    }

    /// The first value of header `name` of the local reply.
    pub fn reply_header(&self, name: &str) -> Option<&str> {
        let reply = self.local_reply.as_ref()?;
        reply
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_follow_the_wasmfilter_rules() {
        assert_eq!(Config::from(serde_json::json!({"a": 1})).0, br#"{"a":1}"#);
        assert_eq!(Config::from(serde_json::json!([1])).0, b"[1]");
        assert_eq!(Config::from(serde_json::json!("raw text")).0, b"raw text");
        assert_eq!(Config::from(serde_json::Value::Null).0, b"");
        assert_eq!(Config::from(r#"{"a":1}"#).0, br#"{"a":1}"#);
    }

    #[test]
    fn requests_look_as_the_proxy_builds_them() {
        let (ex, body) = Request::get("/x?y=1")
            .header("X-User", "ann")
            .cluster("demo/a:80")
            .into_parts();
        assert!(body.headers_end());
        let (_, body) = Request::post("/").body("a").trailer("X-Sum", "1").into_parts();
        assert!(!body.headers_end());
        assert_eq!(body.chunks, [b"a".to_vec()]);
        let names: Vec<&str> = ex.request_headers.iter().map(|(n, _)| n).collect();
        assert_eq!(names, [":method", ":scheme", ":authority", ":path", "x-user"]);
        assert_eq!(ex.request_headers.get(":path"), Some(&b"/x?y=1"[..]));
        assert_eq!(ex.properties.get("tidegate.listener_port"), Some(&b"8080"[..]));
        assert_eq!(ex.properties.get("tidegate.cluster"), Some(&b"demo/a:80"[..]));
        assert_eq!(ex.properties.get("tidegate.route"), None);
        let (headers, _) = Response::new(503).header("Retry-After", "1").into_parts();
        assert_eq!(headers.get(":status"), Some(&b"503"[..]));
        assert_eq!(headers.get("retry-after"), Some(&b"1"[..]));
    }
}
