//! The admin HTTP server (default 127.0.0.1:15000): `/ready`, `/healthz`, `/metrics`,
//! `/config_dump`, `/status`. It runs on the control-plane runtime, never on a worker, so a
//! slow scrape cannot add latency to traffic.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

use crate::metrics::Metrics;
use crate::proxy::{DataPlane, Publisher};

/// What the admin endpoints read.
pub struct AdminState {
    pub publisher: Publisher,
    pub data_plane: DataPlane,
    pub metrics: Arc<Metrics>,
}

impl AdminState {
    /// Ready once every worker serves the configuration published first (or a later one).
    pub fn is_ready(&self) -> bool {
        let published = self.publisher.current().snapshot.version;
        published > 0 && self.data_plane.serving_version() >= published.min(1)
    }
}

pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&request, &state)) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let _ = builder.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

fn route(request: &Request<hyper::body::Incoming>, state: &AdminState) -> Response<Full<Bytes>> {
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/ready" if state.is_ready() => text(StatusCode::OK, "ready\n".into()),
        "/ready" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no configuration is served yet\n".into(),
        ),
        "/metrics" => {
            let mut response = text(StatusCode::OK, state.metrics.encode());
            response.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
            );
            response
        }
        "/config_dump" => {
            let published = state.publisher.current();
            json_response(&json!({
                "version": published.snapshot.version,
                "servingVersion": state.data_plane.serving_version(),
                "snapshot": &*published.snapshot,
                "errors": published.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
            }))
        }
        "/status" => {
            let published = state.publisher.current();
            json_response(&json!({
                "version": published.snapshot.version,
                "objects": published.statuses,
                "errors": published.errors.iter().map(|e| json!({"object": e.object_key(), "kind": e.kind(), "message": e.to_string()})).collect::<Vec<_>>(),
            }))
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "unknown path; try /ready /healthz /metrics /config_dump /status\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

fn json_response(value: &serde_json::Value) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}
