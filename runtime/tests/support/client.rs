//! A minimal HTTP client on hyper's connection API, so the tests control exactly what goes on the
//! wire: the TCP address, the Host header / `:authority`, TLS SNI and ALPN, HTTP/1.1 vs HTTP/2
//! (TLS or cleartext prior knowledge). One connection per request (as upstream, which disables
//! keep-alives); redirects are never followed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

/// TLS parameters of a request.
#[derive(Clone)]
pub struct TlsTarget {
    pub sni: String,
    pub roots: Arc<RootCertStore>,
}

/// Everything that defines one request on the wire.
#[derive(Clone)]
pub struct ClientRequest {
    /// Where to connect (the real, offset port).
    pub connect: SocketAddr,
    pub tls: Option<TlsTarget>,
    /// HTTP/2: over TLS with ALPN `h2`, or cleartext with prior knowledge.
    pub http2: bool,
    /// Host header (HTTP/1.1) or `:authority` (HTTP/2).
    pub host: String,
    pub method: String,
    /// Path with query.
    pub path: String,
    /// Extra headers, sent in this order.
    pub headers: Vec<(String, String)>,
}

impl ClientRequest {
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }
}

#[derive(Debug, Clone)]
pub struct ClientResponse {
    pub status: u16,
    #[allow(dead_code)] // asserted by the echo tests
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Sends `req` on a fresh connection; the whole exchange (connect, TLS, response, body) must
/// finish within `timeout`.
pub async fn send(req: &ClientRequest, timeout: Duration) -> Result<ClientResponse, String> {
    match tokio::time::timeout(timeout, send_inner(req)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no complete response within {timeout:?}")),
    }
}

async fn send_inner(req: &ClientRequest) -> Result<ClientResponse, String> {
    let tcp = TcpStream::connect(req.connect)
        .await
        .map_err(|e| format!("connect {}: {e}", req.connect))?;
    let _ = tcp.set_nodelay(true);
    match &req.tls {
        None => exchange(TokioIo::new(tcp), req).await,
        Some(tls) => {
            let mut config =
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .map_err(|e| format!("tls config: {e}"))?
                    .with_root_certificates(tls.roots.clone())
                    .with_no_client_auth();
            config.alpn_protocols = if req.http2 {
                vec![b"h2".to_vec()]
            } else {
                vec![b"http/1.1".to_vec()]
            };
            let server_name =
                ServerName::try_from(tls.sni.clone()).map_err(|e| format!("invalid SNI {:?}: {e}", tls.sni))?;
            let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(server_name, tcp)
                .await
                .map_err(|e| format!("TLS handshake (SNI {}): {e}", tls.sni))?;
            if req.http2 {
                let alpn = stream.get_ref().1.alpn_protocol();
                if alpn != Some(b"h2".as_slice()) {
                    return Err(format!(
                        "server did not negotiate h2 (ALPN {:?})",
                        alpn.map(String::from_utf8_lossy)
                    ));
                }
            }
            exchange(TokioIo::new(stream), req).await
        }
    }
}

/// Aborts the connection task when the exchange ends, however it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn exchange<IO>(io: IO, req: &ClientRequest) -> Result<ClientResponse, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let method = Method::from_bytes(req.method.as_bytes()).map_err(|e| format!("bad method: {e}"))?;
    let mut headers = HeaderMap::new();
    for (name, value) in &req.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("bad header name {name:?}: {e}"))?;
        let value = HeaderValue::from_str(value).map_err(|e| format!("bad header value {value:?}: {e}"))?;
        // Go's Header.Set: one value per name.
        headers.insert(name, value);
    }

    let response = if req.http2 {
        let uri: Uri = format!("{}://{}{}", req.scheme(), req.host, req.path)
            .parse()
            .map_err(|e| format!("bad :authority/path {:?}{:?}: {e}", req.host, req.path))?;
        let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake::<_, Empty<Bytes>>(io)
            .await
            .map_err(|e| format!("HTTP/2 handshake: {}", chain(&e)))?;
        let _task = AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .version(Version::HTTP_2)
            .body(Empty::new())
            .map_err(|e| format!("request: {e}"))?;
        *request.headers_mut() = headers;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP/2 request: {}", chain(&e)))?;
        collect(response).await?
    } else {
        let uri: Uri = req.path.parse().map_err(|e| format!("bad path {:?}: {e}", req.path))?;
        let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
            .title_case_headers(true)
            .handshake::<_, Empty<Bytes>>(io)
            .await
            .map_err(|e| format!("HTTP/1.1 handshake: {}", chain(&e)))?;
        let _task = AbortOnDrop(tokio::spawn(async move {
            let _ = connection.await;
        }));
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Empty::new())
            .map_err(|e| format!("request: {e}"))?;
        let host = HeaderValue::from_str(&req.host).map_err(|e| format!("bad Host {:?}: {e}", req.host))?;
        request.headers_mut().insert(http::header::HOST, host);
        for (name, value) in headers {
            if let Some(name) = name {
                request.headers_mut().insert(name, value);
            }
        }
        request
            .headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("HTTP/1.1 request: {}", chain(&e)))?;
        collect(response).await?
    };
    Ok(response)
}

async fn collect(response: http::Response<hyper::body::Incoming>) -> Result<ClientResponse, String> {
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("reading the response body: {}", chain(&e)))?
        .to_bytes();
    Ok(ClientResponse {
        status: parts.status.as_u16(),
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// An error with its sources (hyper's top-level messages alone say little: "connection error").
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
