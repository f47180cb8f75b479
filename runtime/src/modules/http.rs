//! A small HTTP/1.1 client for fetching modules (`spec.module.http`, OCI registries): one
//! connection per request, `http://` and `https://` (rustls, roots from the system store),
//! redirects, a bound on the body size. It runs on the module fetcher's runtime only.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, CONTENT_LENGTH, HOST, LOCATION, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};

/// The largest module (or manifest, or registry answer) read.
pub const MAX_BODY_BYTES: usize = 64 << 20;
/// How long connecting (TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Redirects followed before giving up.
pub const MAX_REDIRECTS: usize = 5;
/// The system's trusted roots (Debian's `ca-certificates`); `SSL_CERT_FILE` overrides it.
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// An answer, with the URL that gave it (after redirects).
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub url: Uri,
}

impl Response {
    pub fn header(&self, name: &HeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `HTTP 404 Not Found`, plus the start of a short text body when there is one.
    pub fn status_text(&self) -> String {
        let reason = self.status.canonical_reason().unwrap_or_default();
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(200)]);
        let body = body.trim();
        if body.is_empty() || body.starts_with('<') {
            format!("HTTP {} {reason}", self.status.as_u16())
        } else {
            format!("HTTP {} {reason} ({body})", self.status.as_u16())
        }
    }
}

/// Parses an absolute `http://` or `https://` URL.
pub fn parse_url(text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL ({e}); use an http:// or https:// URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{text:?} is not an http:// or https:// URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{text:?} has no host"));
    }
    Ok(uri)
}

/// GET, following up to [`MAX_REDIRECTS`] redirects. `Authorization` is only sent to the host
/// it was meant for (registries redirect blobs to storage that must not see the token).
pub async fn get_following(url: &Uri, headers: &[(HeaderName, HeaderValue)]) -> Result<Response, String> {
    let mut url = url.clone();
    let mut headers = headers.to_vec();
    for _ in 0..=MAX_REDIRECTS {
        let response = get(&url, &headers).await?;
        if !response.status.is_redirection() || response.status == StatusCode::NOT_MODIFIED {
            return Ok(response);
        }
        let Some(location) = response.header(&LOCATION) else {
            return Ok(response);
        };
        let next = resolve_location(&url, location)?;
        if next.authority() != url.authority() {
            headers.retain(|(name, _)| name != AUTHORIZATION);
        }
        url = next;
    }
    Err(format!("more than {MAX_REDIRECTS} redirects (last to {url})"))
}

/// The target of a `Location` header, relative to the URL that answered.
pub fn resolve_location(base: &Uri, location: &str) -> Result<Uri, String> {
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map(|a| a.as_str()).unwrap_or_default();
    let absolute = if location.starts_with("http://") || location.starts_with("https://") {
        location.to_string()
    } else if let Some(rest) = location.strip_prefix("//") {
        format!("{scheme}://{rest}")
    } else if location.starts_with('/') {
        format!("{scheme}://{authority}{location}")
    } else {
        let path = base.path();
        let dir = &path[..path.rfind('/').map(|i| i + 1).unwrap_or(0)];
        format!("{scheme}://{authority}{dir}{location}")
    };
    parse_url(&absolute).map_err(|e| format!("redirect to {location:?}: {e}"))
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One GET on a new connection; the body is read whole, at most [`MAX_BODY_BYTES`].
pub async fn get(url: &Uri, headers: &[(HeaderName, HeaderValue)]) -> Result<Response, String> {
    let https = url.scheme_str() == Some("https");
    let host = url.host().unwrap_or_default();
    let bare_host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = url.authority().map(|a| a.as_str()).unwrap_or(host).to_string();
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((bare_host, port)))
        .await
        .map_err(|_| format!("cannot connect to {authority}: timed out after {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = if https {
        let config = tls_config()?;
        let name = ServerName::try_from(bare_host.to_string())
            .map_err(|e| format!("{host:?} is not a valid TLS server name: {e}"))?;
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, tcp))
            .await
            .map_err(|_| format!("TLS handshake with {authority}: timed out after {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| format!("TLS handshake with {authority}: {e}"))?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake with {authority}: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let path = url.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut request = Request::get(path)
        .header(HOST, authority.as_str())
        .header(USER_AGENT, concat!("tidegate/", env!("CARGO_PKG_VERSION")));
    for (name, value) in headers {
        request = request.header(name, value);
    }
    let request = request
        .body(Empty::new())
        .map_err(|e| format!("cannot build a request for {url}: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let (parts, mut body) = response.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > MAX_BODY_BYTES as u64) {
        return Err(too_large(url));
    }
    let mut data = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the answer of {url}: {e}"))?;
        if let Ok(chunk) = frame.into_data() {
            if data.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(too_large(url));
            }
            data.extend_from_slice(&chunk);
        }
    }
    Ok(Response {
        status: parts.status,
        headers: parts.headers,
        body: data.freeze(),
        url: url.clone(),
    })
}

fn too_large(url: &Uri) -> String {
    format!(
        "{url} is larger than {} MiB, the most a module may be",
        MAX_BODY_BYTES >> 20
    )
}

/// The client TLS configuration: the system's roots (read once successfully, then kept).
fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: Mutex<Option<Arc<rustls::ClientConfig>>> = Mutex::new(None);
    let mut cached = CONFIG.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(config) = cached.as_ref() {
        return Ok(config.clone());
    }
    let path = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(SYSTEM_ROOTS));
    let mut roots = rustls::RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(&path).map_err(|e| {
        format!(
            "cannot read the trusted roots {}: {e}; install ca-certificates (or set SSL_CERT_FILE)",
            path.display()
        )
    })?;
    for certificate in certificates.flatten() {
        let _ = roots.add(certificate);
    }
    if roots.is_empty() {
        return Err(format!(
            "no trusted root certificates in {}; install ca-certificates (or set SSL_CERT_FILE)",
            path.display()
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let config = Arc::new(config);
    *cached = Some(config.clone());
    Ok(config)
}

/// Percent-encodes a query parameter value.
pub fn encode_query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b':' | b'/') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_redirect_targets() {
        assert!(parse_url("https://example.com/f.wasm").is_ok());
        assert!(parse_url("ftp://example.com/f.wasm").unwrap_err().contains("http://"));
        assert!(parse_url("/f.wasm").is_err());
        let base: Uri = "http://a.test:8080/dir/f.wasm?x=1".parse().expect("uri");
        let to = |l: &str| resolve_location(&base, l).expect("resolves").to_string();
        assert_eq!(to("https://b.test/x"), "https://b.test/x");
        assert_eq!(to("//c.test/y"), "http://c.test/y");
        assert_eq!(to("/z?q=1"), "http://a.test:8080/z?q=1");
        assert_eq!(to("g.wasm"), "http://a.test:8080/dir/g.wasm");
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(
            encode_query_value("repository:library/x:pull push"),
            "repository:library/x:pull%20push"
        );
        assert_eq!(encode_query_value("a&b=c"), "a%26b%3Dc");
    }

    #[test]
    fn status_text_includes_short_text_bodies_only() {
        let response = |body: &'static str| Response {
            status: StatusCode::NOT_FOUND,
            headers: HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
            url: Uri::from_static("http://a/"),
        };
        assert_eq!(response("").status_text(), "HTTP 404 Not Found");
        assert_eq!(response("<html>").status_text(), "HTTP 404 Not Found");
        assert_eq!(
            response("no such file\n").status_text(),
            "HTTP 404 Not Found (no such file)"
        );
    }
}
