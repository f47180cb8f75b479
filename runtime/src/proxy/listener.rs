//! Listening sockets and accepted connections: TLS termination, then HTTP/1.1 or HTTP/2
//! (ALPN on TLS, prior knowledge on plain ports).

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

use super::http::{self, ConnectionInfo, TlsInfo};
use super::worker::{LocalExec, Worker};
use crate::snapshot::PortProtocol;

/// Connection ids (`connection.id`), unique in the process.
static NEXT_CONNECTION_ID: AtomicU64 = AtomicU64::new(1);

/// A new connection id.
pub(super) fn next_connection_id() -> u64 {
    NEXT_CONNECTION_ID.fetch_add(1, Ordering::Relaxed)
}

/// How long a client may take to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send request headers (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds with SO_REUSEPORT so every worker gets its own accept queue on the same port.
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// The next accepted connection. Failures (out of file descriptors and similar) are logged and
/// retried after a pause instead of spinning.
pub(super) async fn accept(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

pub async fn accept_loop(listener: TcpListener, address: IpAddr, gateway_port: u16, worker: Rc<Worker>) {
    loop {
        let (stream, remote) = accept(&listener).await;
        let _ = stream.set_nodelay(true);
        worker.metrics.connection_accepted();
        tokio::task::spawn_local(serve_connection(stream, remote, address, gateway_port, worker.clone()));
    }
}

async fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    address: IpAddr,
    gateway_port: u16,
    worker: Rc<Worker>,
) {
    let Some(generation) = worker.current() else { return };
    let Some(plan) = generation
        .published
        .snapshot
        .ports
        .iter()
        .find(|p| p.address == address && p.port == gateway_port)
    else {
        return;
    };
    let local = stream.local_addr().unwrap_or(remote);
    // When exactly one Gateway owns this socket the router needs no guessing.
    let gateway = (plan.gateways.len() == 1).then(|| plan.gateways[0].clone());
    let info = ConnectionInfo {
        id: next_connection_id(),
        gateway_port,
        gateway,
        gateways: plan.gateways.join(","),
        scheme: plan.protocol.scheme(),
        remote,
        local,
        tls: None,
        service: None,
        source_namespace: None,
        upstream_source: None,
        properties: Default::default(),
    };
    let protocol = plan.protocol;
    let tls = match protocol {
        PortProtocol::Https => generation.published.tls.get(&(address, gateway_port)).cloned(),
        PortProtocol::Http => None,
    };
    // Requests read the current generation themselves: a long connection must not keep the
    // generation it was accepted on (its VMs and snapshot) alive.
    drop(generation);
    match protocol {
        PortProtocol::Http => serve_http(stream, Rc::new(info.with_properties()), worker).await,
        PortProtocol::Https => {
            let Some(config) = tls else {
                return;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let session = tls.get_ref().1;
                    let tls_info = TlsInfo {
                        server_name: session.server_name().map(str::to_string),
                        version: match session.protocol_version() {
                            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                            _ => "",
                        },
                    };
                    let info = ConnectionInfo {
                        tls: Some(tls_info),
                        ..info
                    };
                    serve_http(tls, Rc::new(info.with_properties()), worker).await
                }
                Ok(Err(e)) => tracing::debug!(%remote, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%remote, "TLS handshake timed out"),
            }
        }
    }
}

pub(super) async fn serve_http<IO>(io: IO, info: Rc<ConnectionInfo>, worker: Rc<Worker>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| http::handle(request, info.clone(), worker.clone()));
    let mut builder = auto::Builder::new(LocalExec);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    // With upgrades: a 101 from upstream hands the connection over to a tunnel (WebSocket).
    if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(io), service).await {
        tracing::debug!(error = %e, "downstream connection ended with an error");
    }
}
