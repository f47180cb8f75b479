//! The captured L4 path: the transparent listener that `--capture` sends pod TCP to, and plain
//! TCP forwarding to a Service's endpoints or, for any other destination, to the original one.
//!
//! The accepted socket's local address is the original destination (TPROXY does not rewrite
//! packets). The upstream socket is IP_TRANSPARENT and bound to the client pod's address, so
//! the endpoint sees the real client; the capture's `socket transparent` rule brings the
//! replies back to it. Each connection reads the snapshot once, when it is accepted.
//!
//! The endpoint is picked round robin here; the balancer filter's stream context will decide
//! once the L4 path runs proxy-wasm stream contexts.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

use super::published::{Published, Publisher};
use crate::snapshot::Snapshot;

/// How long connecting to one endpoint may take before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a captured connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A Service port: these endpoints (empty: no endpoint, refuse at once).
    Service {
        cluster: String,
        endpoints: Vec<SocketAddr>,
    },
    /// A ClusterIP, on a port the Service does not have: refused (as kube-proxy rejects it).
    NoSuchPort,
    /// Anything else (a pod's own address): straight through to the original destination.
    PassThrough(SocketAddr),
}

/// Where a connection to `original` goes under `snapshot`.
pub fn destination(snapshot: &Snapshot, original: SocketAddr) -> Destination {
    if let Some(cluster) = snapshot.service_addresses.get(&original) {
        let endpoints = snapshot
            .clusters
            .get(cluster)
            .map(|c| c.endpoints.clone())
            .unwrap_or_default();
        return Destination::Service {
            cluster: cluster.clone(),
            endpoints,
        };
    }
    let ip = original.ip();
    if snapshot.service_addresses.keys().any(|a| a.ip() == ip) {
        return Destination::NoSuchPort;
    }
    Destination::PassThrough(original)
}

/// Binds `count` IP_TRANSPARENT listeners on `0.0.0.0:port` (SO_REUSEPORT: one per thread).
/// Done before the capture is installed, so no captured connection finds nobody listening.
pub fn bind_transparent(port: u16, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
    (0..count.max(1))
        .map(|_| {
            let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
            socket.set_ip_transparent_v4(true)?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            socket.set_nonblocking(true)?;
            socket.bind(&addr.into())?;
            socket.listen(1024)?;
            Ok(socket.into())
        })
        .collect()
}

/// Serves the listeners, each on its own thread with a current-thread runtime (the workers'
/// model), until the process exits.
pub fn start(listeners: Vec<std::net::TcpListener>, publisher: &Publisher) -> io::Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    for (id, listener) in listeners.into_iter().enumerate() {
        let rx = publisher.subscribe();
        let next = next.clone();
        std::thread::Builder::new()
            .name(format!("tidegate-l4-{id}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::error!(thread = id, error = %e, "cannot start an L4 runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => accept_loop(listener, rx, next).await,
                        Err(e) => tracing::error!(error = %e, "cannot serve the transparent listener"),
                    }
                });
            })?;
    }
    Ok(())
}

async fn accept_loop(listener: TcpListener, rx: watch::Receiver<Arc<Published>>, next: Arc<AtomicUsize>) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    loop {
        let (stream, client) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let snapshot = rx.borrow().snapshot.clone();
        tokio::spawn(serve(stream, client, snapshot, port, next.clone()));
    }
}

async fn serve(client: TcpStream, peer: SocketAddr, snapshot: Arc<Snapshot>, port: u16, next: Arc<AtomicUsize>) {
    let _ = client.set_nodelay(true);
    let Ok(original) = client.local_addr() else { return };
    let candidates = match destination(&snapshot, original) {
        Destination::Service { cluster, endpoints } if endpoints.is_empty() => {
            tracing::debug!(%peer, %original, cluster, "no endpoint: connection refused");
            return reset(client);
        }
        Destination::Service { endpoints, .. } => {
            let start = next.fetch_add(1, Ordering::Relaxed) % endpoints.len();
            endpoints[start..].iter().chain(&endpoints[..start]).copied().collect()
        }
        Destination::NoSuchPort => {
            tracing::debug!(%peer, %original, "no Service port at this ClusterIP: connection refused");
            return reset(client);
        }
        // Someone connected to the listener itself rather than being captured; forwarding
        // would connect back to it without end.
        Destination::PassThrough(addr) if addr.port() == port => {
            tracing::debug!(%peer, %original, "connection to the capture port itself: refused");
            return reset(client);
        }
        Destination::PassThrough(addr) => vec![addr],
    };
    for endpoint in candidates {
        match connect_as(peer.ip(), endpoint).await {
            Ok(upstream) => {
                tracing::debug!(%peer, %original, %endpoint, "forwarding");
                return forward(client, upstream).await;
            }
            Err(e) => {
                tracing::debug!(%peer, %original, %endpoint, error = %e, "cannot connect; trying the next endpoint")
            }
        }
    }
    tracing::debug!(%peer, %original, "no endpoint accepted the connection");
    reset(client);
}

/// Connects to `endpoint` from `client`'s address (IP_TRANSPARENT), within the timeout.
async fn connect_as(client: IpAddr, endpoint: SocketAddr) -> io::Result<TcpStream> {
    let domain = Domain::for_address(endpoint);
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    let source_kept = client.is_ipv4() == endpoint.is_ipv4();
    if source_kept {
        match client {
            IpAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
            IpAddr::V6(_) => socket.set_ip_transparent_v6(true)?,
        }
        socket.bind(&SocketAddr::new(client, 0).into())?;
    }
    socket.set_nonblocking(true)?;
    let socket = TcpSocket::from_std_stream(socket.into());
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(endpoint))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Copies both ways; each side's end of stream is passed on as a half-close (FIN).
async fn forward(mut client: TcpStream, mut upstream: TcpStream) {
    if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        tracing::debug!(error = %e, "connection ended with an error");
        // Pass a reset on rather than pretending a clean end.
        reset(client);
        reset(upstream);
    }
}

/// Closes with RST (SO_LINGER 0), as a refused connection looks to the client.
fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ObjectStore;
    use crate::config::store::{Format, parse_file};
    use crate::translate::{TranslateOptions, translate};

    fn snapshot(yaml: &str) -> Snapshot {
        let parsed = parse_file("test.yaml", yaml, Format::Yaml);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let mut store = ObjectStore::default();
        for object in parsed.objects {
            store.objects.insert(object.key(), object);
        }
        let options = TranslateOptions {
            address: [127, 0, 0, 1].into(),
            address_pool: None,
            config_dir: None,
            now: "2026-01-01T00:00:00Z".into(),
        };
        translate(&store, &options).snapshot
    }

    const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns}
spec:
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80}, {name: dns, port: 53, protocol: UDP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: ns, labels: {kubernetes.io/service-name: web}}
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [10.244.0.3]
- addresses: [10.244.0.4]
  conditions: {ready: false}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: ns}
spec:
  clusterIP: 10.96.0.11
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: ns}
spec:
  clusterIP: None
  ports: [{port: 80}]
"#;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_cluster_ip_port_goes_to_the_ready_endpoints() {
        let snapshot = snapshot(SERVICES);
        assert_eq!(
            destination(&snapshot, addr("10.96.0.10:80")),
            Destination::Service {
                cluster: "ns/web:80".into(),
                endpoints: vec![addr("10.244.0.3:8080")],
            }
        );
    }

    #[test]
    fn a_service_without_endpoints_has_none_to_offer() {
        let snapshot = snapshot(SERVICES);
        assert_eq!(
            destination(&snapshot, addr("10.96.0.11:80")),
            Destination::Service {
                cluster: "ns/empty:80".into(),
                endpoints: vec![],
            }
        );
    }

    #[test]
    fn other_ports_of_a_cluster_ip_and_udp_ports_are_refused() {
        let snapshot = snapshot(SERVICES);
        assert_eq!(destination(&snapshot, addr("10.96.0.10:81")), Destination::NoSuchPort);
        // The UDP port is no TCP Service port.
        assert_eq!(destination(&snapshot, addr("10.96.0.10:53")), Destination::NoSuchPort);
    }

    #[test]
    fn pod_addresses_and_headless_services_pass_through() {
        let snapshot = snapshot(SERVICES);
        assert_eq!(
            destination(&snapshot, addr("10.244.0.3:8080")),
            Destination::PassThrough(addr("10.244.0.3:8080"))
        );
        assert_eq!(snapshot.service_addresses.len(), 2, "{:?}", snapshot.service_addresses);
    }

    #[test]
    fn the_snapshot_with_service_addresses_serializes() {
        let json = serde_json::to_value(snapshot(SERVICES)).unwrap();
        assert_eq!(json["service_addresses"]["10.96.0.10:80"], "ns/web:80");
    }
}
