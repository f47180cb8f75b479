//! HTTP callouts (`proxy_http_call`): sent by the worker whose filter made them, through its
//! upstream pools, to an endpoint of the named cluster, under the filter's timeout; the answer
//! (or the failure) waits in a [`PendingCallout`] until the chain delivers it to the filter.
//!
//! Endpoints are taken round robin per worker. The request carries the filter's headers (the
//! `:authority` becomes the Host), its body, and `content-length`; trailers are not sent (a
//! callout body is sent whole, and no filter we know of sends callout trailers). The answer's
//! body is read whole, up to [`MAX_CALLOUT_RESPONSE`]: a larger one fails the call, as a
//! call that cannot be delivered.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::header::{CONTENT_LENGTH, HOST, HeaderName, HeaderValue};
use hyper::{Request, Uri};

use super::http::ProxyBody;
use super::upstream::Upstreams;
use crate::snapshot::{Snapshot, UpstreamProtocol};
use crate::wasm::{CalloutRequest, CalloutResponse, HeaderList};

/// The largest callout answer body delivered to a filter (Envoy's default buffer limit).
pub const MAX_CALLOUT_RESPONSE: usize = 1024 * 1024;

/// A callout in flight: its answer once it arrived (`Some(None)`: the call failed).
#[derive(Default)]
pub struct PendingCallout {
    result: RefCell<Option<Option<CalloutResponse>>>,
    waker: RefCell<Option<Waker>>,
}

impl PendingCallout {
    /// A callout that failed before it was sent.
    pub fn failed() -> Rc<Self> {
        let pending = Rc::new(Self::default());
        pending.complete(None);
        pending
    }

    fn complete(&self, result: Option<CalloutResponse>) {
        *self.result.borrow_mut() = Some(result);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// The answer, once it arrived; otherwise `cx` is woken when it does.
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<Option<CalloutResponse>> {
        match self.result.borrow_mut().take() {
            Some(result) => Poll::Ready(result),
            None => {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Sends the callouts of one configuration generation on one worker.
pub struct CalloutSender {
    upstreams: Upstreams,
    snapshot: Arc<Snapshot>,
    next_endpoint: Cell<usize>,
}

impl CalloutSender {
    pub fn new(upstreams: Upstreams, snapshot: Arc<Snapshot>) -> Self {
        Self {
            upstreams,
            snapshot,
            next_endpoint: Cell::new(0),
        }
    }

    /// Starts `request` on this worker and returns where its answer will be.
    pub fn send(&self, request: CalloutRequest) -> Rc<PendingCallout> {
        let pending = Rc::new(PendingCallout::default());
        let target = self.snapshot.clusters.get(&*request.cluster).and_then(|plan| {
            if plan.endpoints.is_empty() {
                return None;
            }
            let n = self.next_endpoint.get();
            self.next_endpoint.set(n.wrapping_add(1));
            Some((plan.endpoints[n % plan.endpoints.len()], plan.protocol))
        });
        let Some((endpoint, protocol)) = target else {
            tracing::debug!(
                cluster = &*request.cluster,
                "callout to a cluster with no ready endpoint"
            );
            pending.complete(None);
            return pending;
        };
        let upstreams = self.upstreams.clone();
        let task = pending.clone();
        tokio::task::spawn_local(async move {
            let cluster = request.cluster.clone();
            let timeout = request.timeout;
            let call = call(upstreams, endpoint, protocol, request);
            let result = match tokio::time::timeout(timeout, call).await {
                Ok(Ok(response)) => Some(response),
                Ok(Err(error)) => {
                    tracing::debug!(cluster = &*cluster, %endpoint, %error, "callout failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(cluster = &*cluster, %endpoint, ?timeout, "callout timed out");
                    None
                }
            };
            task.complete(result);
        });
        pending
    }
}

async fn call(
    upstreams: Upstreams,
    endpoint: std::net::SocketAddr,
    protocol: UpstreamProtocol,
    request: CalloutRequest,
) -> Result<CalloutResponse, String> {
    let text = |name: &str| {
        request
            .headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    let (method, path, authority) = (text(":method"), text(":path"), text(":authority"));
    let uri: Uri = match protocol {
        UpstreamProtocol::Http1 => path.parse(),
        UpstreamProtocol::H2c => format!("http://{authority}{path}").parse(),
    }
    .map_err(|e| format!("invalid :path {path:?}: {e}"))?;
    let mut builder = Request::builder().method(method.as_str()).uri(uri);
    let headers = builder.headers_mut().ok_or("invalid :method")?;
    for (name, value) in request.headers.iter() {
        if name.starts_with(':') {
            continue;
        }
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value)) {
            headers.append(name, value);
        }
    }
    if protocol == UpstreamProtocol::Http1 {
        let host = HeaderValue::from_str(&authority).map_err(|_| "invalid :authority")?;
        headers.insert(HOST, host);
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(request.body.len()));
    let body = match request.body.is_empty() {
        true => ProxyBody::Empty,
        false => ProxyBody::Full(Some(Bytes::from(request.body))),
    };
    let request = builder.body(body).map_err(|e| e.to_string())?;
    let response = upstreams
        .send(None, endpoint, protocol, request)
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let collected = http_body_util::Limited::new(body, MAX_CALLOUT_RESPONSE)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?;
    let trailers = collected.trailers().map(header_list).unwrap_or_default();
    let mut headers = HeaderList::with_capacity(parts.headers.len() + 1);
    headers.add(":status", parts.status.as_str().as_bytes().to_vec());
    for (name, value) in &parts.headers {
        headers.add(name.as_str(), value.as_bytes().to_vec());
    }
    Ok(CalloutResponse {
        headers,
        body: collected.to_bytes().to_vec(),
        trailers,
    })
}

fn header_list(map: &hyper::HeaderMap) -> HeaderList {
    let mut list = HeaderList::with_capacity(map.len());
    for (name, value) in map {
        list.add(name.as_str(), value.as_bytes().to_vec());
    }
    list
}
