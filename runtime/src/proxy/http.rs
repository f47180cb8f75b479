//! One HTTP request: build the exchange the filters see, run the chain, forward to the
//! endpoint the filters chose (or answer locally), run the response phase.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HOST, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode, Uri, Version};

use super::chain::{OpenContexts, RequestOutcome};
use super::worker::Worker;
use crate::snapshot::UpstreamProtocol;
use crate::wasm::{HeaderList, HttpExchange};

pub type ResponseBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// What a request knows about the connection it came on.
#[derive(Debug)]
pub struct ConnectionInfo {
    /// The Gateway listener port (before `--port-offset`).
    pub gateway_port: u16,
    /// `namespace/name` of the Gateway, when the socket belongs to exactly one.
    pub gateway: Option<String>,
    pub scheme: &'static str,
    pub remote: SocketAddr,
    pub local: SocketAddr,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1): never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
];

pub async fn handle(
    request: Request<Incoming>,
    info: Rc<ConnectionInfo>,
    worker: Rc<Worker>,
) -> Result<Response<ResponseBody>, Infallible> {
    let response = proxy(request, &info, &worker).await;
    worker.metrics.request_done(response.status().as_u16());
    Ok(response)
}

async fn proxy(request: Request<Incoming>, info: &ConnectionInfo, worker: &Rc<Worker>) -> Response<ResponseBody> {
    let Some(generation) = worker.current() else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "no configuration is loaded yet\n");
    };
    let (parts, body) = request.into_parts();
    let mut ex = exchange_for(&parts, info);
    let mut open = OpenContexts::default();
    let chain = &generation.chain;
    let end_of_stream = hyper::body::Body::is_end_stream(&body);

    match chain.on_request_headers(&mut ex, end_of_stream, &mut open) {
        RequestOutcome::Forward => {}
        RequestOutcome::LocalReply => {
            let response = local_reply(&mut ex);
            chain.finish(&mut ex, open);
            return response;
        }
        RequestOutcome::Failed { filter, .. } => {
            chain.finish(&mut ex, open);
            return plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("filter {filter} failed\n"));
        }
    }

    let target = decision(&ex, &generation.published.snapshot);
    let (endpoint, protocol) = match target {
        Ok(target) => target,
        Err((status, message)) => {
            chain.finish(&mut ex, open);
            return plain(status, &message);
        }
    };
    let upstream_request = match upstream_request(&ex, &parts, body, endpoint, protocol, info) {
        Ok(request) => request,
        Err(message) => {
            chain.finish(&mut ex, open);
            return plain(StatusCode::BAD_REQUEST, &message);
        }
    };
    drop(parts);
    let upstream_response = match worker.upstreams.send(endpoint, protocol, upstream_request).await {
        Ok(response) => response,
        Err(e) => {
            tracing::debug!(error = %e, "upstream request failed");
            chain.finish(&mut ex, open);
            return plain(StatusCode::SERVICE_UNAVAILABLE, &format!("upstream unavailable: {e}\n"));
        }
    };
    let (mut parts, body) = upstream_response.into_parts();
    ex.response_headers = response_header_list(&parts);
    let end_of_stream = hyper::body::Body::is_end_stream(&body);
    if let Err((filter, _)) = chain.on_response_headers(&mut ex, end_of_stream, &open) {
        chain.finish(&mut ex, open);
        return plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("filter {filter} failed\n"));
    }
    if let Some(reply) = ex.local_reply.is_some().then(|| local_reply(&mut ex)) {
        chain.finish(&mut ex, open);
        return reply;
    }
    apply_response_headers(&ex.response_headers, &mut parts);
    chain.finish(&mut ex, open);
    Response::from_parts(parts, body.boxed_unsync())
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
    ex.properties
        .set("tidegate.listener_port", info.gateway_port.to_string());
    if let Some(gateway) = &info.gateway {
        ex.properties.set("tidegate.gateway", gateway.clone());
    }
    ex.properties.set("source.address", info.remote.to_string());
    ex.properties.set("destination.address", info.local.to_string());
    ex.properties.set("request.protocol", version_name(parts.version));
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

fn upstream_request(
    ex: &HttpExchange,
    parts: &hyper::http::request::Parts,
    body: Incoming,
    endpoint: SocketAddr,
    protocol: UpstreamProtocol,
    info: &ConnectionInfo,
) -> Result<Request<Incoming>, String> {
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
    if protocol == UpstreamProtocol::Http1 && !authority.is_empty() {
        let host =
            HeaderValue::from_str(&authority).map_err(|_| "the Host is not a valid header value\n".to_string())?;
        upstream_headers.insert(HOST, host);
    }
    append_forwarded(upstream_headers, info);
    builder
        .body(body)
        .map_err(|e| format!("invalid request after filtering: {e}\n"))
}

/// X-Forwarded-For / X-Forwarded-Proto, as every gateway sets them.
fn append_forwarded(headers: &mut hyper::HeaderMap, info: &ConnectionInfo) {
    let client = info.remote.ip().to_string();
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(existing) => format!("{existing}, {client}"),
        None => client,
    };
    if let Ok(value) = HeaderValue::from_str(&xff) {
        headers.insert("x-forwarded-for", value);
    }
    headers.insert("x-forwarded-proto", HeaderValue::from_static(info.scheme));
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
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(full(Bytes::from(reply.body)));
    *response.status_mut() = status;
    for (name, value) in reply.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(&value)) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

fn full(bytes: Bytes) -> ResponseBody {
    if bytes.is_empty() {
        return Empty::new().map_err(|never: Infallible| match never {}).boxed_unsync();
    }
    Full::new(bytes)
        .map_err(|never: Infallible| match never {})
        .boxed_unsync()
}

fn plain(status: StatusCode, message: &str) -> Response<ResponseBody> {
    let mut response = Response::new(full(Bytes::from(message.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
