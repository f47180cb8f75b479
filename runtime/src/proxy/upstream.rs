//! Upstream connection pools of one worker: keep-alive HTTP/1.1, and HTTP/2 with prior
//! knowledge for clusters whose Service port says `appProtocol: kubernetes.io/h2c`.
//!
//! The pools are keyed by endpoint address, not by URL: the filters choose the endpoint and
//! the Host / `:authority` independently (URLRewrite), which a URL-keyed client cannot express.
//! And by source address: east-west requests leave from their client pod's address
//! (IP_TRANSPARENT), so the backend sees who called it, and never share a connection with
//! another client's.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::http::ProxyBody;
use super::worker::LocalExec;
use crate::snapshot::UpstreamProtocol;

/// How long a TCP connect to an endpoint may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect to {endpoint} failed: {source}")]
    Connect {
        endpoint: SocketAddr,
        source: std::io::Error,
    },
    #[error("connect to {endpoint} timed out after {CONNECT_TIMEOUT:?}")]
    ConnectTimeout { endpoint: SocketAddr },
    #[error("HTTP handshake with {endpoint} failed: {source}")]
    Handshake { endpoint: SocketAddr, source: hyper::Error },
    #[error("request to {endpoint} failed: {source}")]
    Request { endpoint: SocketAddr, source: hyper::Error },
}

/// The pools of one worker (single-threaded: no locks). Cloning shares the pools.
///
/// Request bodies are [`ProxyBody`]: hyper's own `Incoming` when no filter looks at the body,
/// or the filtered stream (which is `!Send`: it shares the request's state with the response;
/// connections run on this worker through `spawn_local`, so that is fine).
#[derive(Default, Clone)]
pub struct Upstreams {
    http1_idle: Rc<RefCell<HashMap<PoolKey, Vec<http1::SendRequest<ProxyBody>>>>>,
    h2: Rc<RefCell<HashMap<PoolKey, http2::SendRequest<ProxyBody>>>>,
}

/// Connections are shared by requests to one endpoint from one source (`None`: the node's).
type PoolKey = (Option<IpAddr>, SocketAddr);

/// The source a connection to `endpoint` leaves from: `source`, except when that is the
/// endpoint itself (hairpin: a packet from its own address is dropped as martian, so it comes
/// from the node's address, as kube-proxy masquerades hairpin traffic).
fn pool_key(source: Option<IpAddr>, endpoint: SocketAddr) -> PoolKey {
    (source.filter(|s| *s != endpoint.ip()), endpoint)
}

impl Upstreams {
    /// Sends `request` to `endpoint`, from `source` when given (else from the node's address).
    /// For HTTP/1.1 the URI must be origin-form with a Host header; for HTTP/2 it must be
    /// absolute (its authority becomes `:authority`).
    pub async fn send(
        &self,
        source: Option<IpAddr>,
        endpoint: SocketAddr,
        protocol: UpstreamProtocol,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let key = pool_key(source, endpoint);
        match protocol {
            UpstreamProtocol::Http1 => self.send_http1(key, request).await,
            UpstreamProtocol::H2c => self.send_h2(key, request).await,
        }
    }

    async fn send_http1(&self, key: PoolKey, request: Request<ProxyBody>) -> Result<Response<Incoming>, UpstreamError> {
        let endpoint = key.1;
        let mut sender = match self.idle_http1(key) {
            Some(sender) => sender,
            None => {
                let io = connect(key).await?;
                let (sender, connection) = http1::Builder::new()
                    .handshake(io)
                    .await
                    .map_err(|source| UpstreamError::Handshake { endpoint, source })?;
                tokio::task::spawn_local(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(%endpoint, error = %e, "upstream HTTP/1.1 connection ended");
                    }
                });
                sender
            }
        };
        let response = sender
            .send_request(request)
            .await
            .map_err(|source| UpstreamError::Request { endpoint, source })?;
        // The connection is reusable once the response body has been read; park it then.
        let pools = self.clone();
        tokio::task::spawn_local(async move {
            if sender.ready().await.is_ok() {
                let mut idle = pools.http1_idle.borrow_mut();
                let list = idle.entry(key).or_default();
                if list.len() < MAX_IDLE_PER_ENDPOINT {
                    list.push(sender);
                }
            }
        });
        Ok(response)
    }

    /// Sends a request that asks for a protocol upgrade, on a new HTTP/1.1 connection of its
    /// own (never pooled): after a 101 the connection is the tunnel.
    pub async fn send_upgrade(
        &self,
        source: Option<IpAddr>,
        endpoint: SocketAddr,
        request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let io = connect(pool_key(source, endpoint)).await?;
        let (mut sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|source| UpstreamError::Handshake { endpoint, source })?;
        tokio::task::spawn_local(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(%endpoint, error = %e, "upstream upgraded connection ended");
            }
        });
        sender
            .send_request(request)
            .await
            .map_err(|source| UpstreamError::Request { endpoint, source })
    }

    fn idle_http1(&self, key: PoolKey) -> Option<http1::SendRequest<ProxyBody>> {
        let mut idle = self.http1_idle.borrow_mut();
        let list = idle.get_mut(&key)?;
        while let Some(sender) = list.pop() {
            if sender.is_ready() && !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    async fn send_h2(&self, key: PoolKey, request: Request<ProxyBody>) -> Result<Response<Incoming>, UpstreamError> {
        let endpoint = key.1;
        let existing = self.h2.borrow().get(&key).filter(|s| !s.is_closed()).cloned();
        let mut sender = match existing {
            Some(sender) => sender,
            None => {
                let io = connect(key).await?;
                let (sender, connection) = http2::Builder::new(LocalExec)
                    .timer(TokioTimer::new())
                    .handshake(io)
                    .await
                    .map_err(|source| UpstreamError::Handshake { endpoint, source })?;
                tokio::task::spawn_local(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(%endpoint, error = %e, "upstream HTTP/2 connection ended");
                    }
                });
                self.h2.borrow_mut().insert(key, sender.clone());
                sender
            }
        };
        sender
            .ready()
            .await
            .map_err(|source| UpstreamError::Request { endpoint, source })?;
        sender
            .send_request(request)
            .await
            .map_err(|source| UpstreamError::Request { endpoint, source })
    }
}

async fn connect((source, endpoint): PoolKey) -> Result<TokioIo<TcpStream>, UpstreamError> {
    let stream = match source {
        None => tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout { endpoint })?,
        Some(_) => match super::tcp::connect(source, endpoint, CONNECT_TIMEOUT).await {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err(UpstreamError::ConnectTimeout { endpoint });
            }
            connected => connected,
        },
    }
    .map_err(|source| UpstreamError::Connect { endpoint, source })?;
    let _ = stream.set_nodelay(true);
    Ok(TokioIo::new(stream))
}
