//! The captured L4 path: the transparent listeners that `--capture` sends TCP to, and plain
//! TCP forwarding to a Service's endpoints or, for any other destination, to the original one.
//!
//! The accepted socket's local address is the original destination (TPROXY does not rewrite
//! packets). Two listeners: the outbound one gets connections to Service frontends (ClusterIP,
//! externalIP, load-balancer IP) and pods' other connections; the inbound one gets connections
//! to node ports on the node's own addresses.
//!
//! The upstream socket keeps the client's address (IP_TRANSPARENT bind) whenever the endpoint's
//! replies come back through this node: the endpoint runs here, or the client is one of this
//! node's pods (the cluster routes their addresses here). Otherwise (a client from outside
//! reaching an endpoint on another node) the connection leaves from the node's address, as
//! kube-proxy masquerades it, or the replies would bypass this node. The capture's `socket
//! transparent` rule brings replies back to the upstream socket. Each connection reads the
//! snapshot once, when it is accepted.
//!
//! The endpoint is picked round robin (or by ClientIP affinity) here; the balancer filter's
//! stream context will decide once the L4 path runs proxy-wasm stream contexts.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

use super::chain::{Abort, Connection, Side};
use super::pick::Picker;
use super::splice::{self, Ended};
use super::worker::Generation;
use crate::capture::PodCidr;
use crate::metrics::{L4Outcome, Metrics};
use crate::snapshot::{Frontend, L4Endpoint, Snapshot};
use crate::wasm::PeerType;

/// How long connecting to one endpoint may take before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// A forwarded connection with no byte either way for this long is closed (Envoy's TCP proxy
/// default).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// The bound transparent listeners (SO_REUSEPORT: one TCP listener of each per worker).
pub struct Listeners {
    /// Service frontends and pods' connections (`--capture-port`).
    pub outbound: Vec<std::net::TcpListener>,
    /// Node ports (`--capture-inbound-port`).
    pub inbound: Vec<std::net::TcpListener>,
    /// UDP to Service frontends (`--capture-port`, UDP), served by the first worker.
    pub udp: Option<std::net::UdpSocket>,
    /// UDP to node ports (`--capture-inbound-port`, UDP), served by the first worker.
    pub udp_inbound: Option<std::net::UdpSocket>,
}

/// Which listener accepted a connection: how its original destination is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    Outbound,
    Inbound,
}

/// Where a captured connection goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A Service port; its endpoints for this client are
    /// `frontend.endpoints_for(from_pod)` (none: refuse).
    Service { frontend: Arc<Frontend>, from_pod: bool },
    /// A ClusterIP on a port the Service does not have, or a node port no Service has (any
    /// longer): refused, as kube-proxy rejects it.
    NoSuchPort,
    /// Anything else (a pod's own address): straight through to the original destination.
    PassThrough(SocketAddr),
}

/// Where a connection from `client` to `original`, accepted by `entry`, goes under `snapshot`.
/// `from_pod`: the client is one of this node's pods.
pub fn destination(snapshot: &Snapshot, entry: Entry, original: SocketAddr, from_pod: bool) -> Destination {
    let services = &snapshot.services;
    let frontend = match entry {
        Entry::Outbound => services.by_address.get(&original),
        Entry::Inbound => services.node_ports.get(&original.port()),
    };
    if let Some(frontend) = frontend {
        return Destination::Service {
            frontend: frontend.clone(),
            from_pod,
        };
    }
    match entry {
        Entry::Inbound => Destination::NoSuchPort,
        Entry::Outbound if services.virtual_ips.contains(&original.ip()) => Destination::NoSuchPort,
        Entry::Outbound => Destination::PassThrough(original),
    }
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

/// What every worker's captured connections share.
pub(super) struct L4State {
    pub(super) picker: Picker,
    pub(super) metrics: Arc<Metrics>,
    /// How long protocol detection waits for a client's first bytes.
    pub(super) detect_timeout: Duration,
}

/// What the data plane needs to serve the capture: the bound listeners (one TCP listener of
/// each kind per worker) and the node's pod networks.
pub struct CaptureServing {
    pub listeners: Listeners,
    pub pod_cidrs: Vec<PodCidr>,
    /// `--protocol-detect-timeout`.
    pub detect_timeout: Duration,
}

impl L4State {
    pub(super) fn new(serving: &CaptureServing, metrics: Arc<Metrics>) -> Self {
        Self {
            picker: Picker::new(serving.pod_cidrs.clone()),
            metrics,
            detect_timeout: serving.detect_timeout,
        }
    }
}

/// A connection's contexts in the NETWORK filters that took it, and the generation whose
/// chain they live in. Dropping it ends the contexts.
pub(super) struct Filtered {
    pub(super) generation: Rc<Generation>,
    pub(super) connection: Connection,
}

impl Filtered {
    /// Tells the filters one side closed.
    fn closed(&mut self, side: Side, peer: PeerType) {
        if let Some(chain) = self.generation.network.as_ref() {
            chain.connection_closed(&mut self.connection, side, peer);
        }
    }
}

impl Drop for Filtered {
    fn drop(&mut self) {
        if let Some(chain) = self.generation.network.as_ref() {
            chain.finish_connection(&mut self.connection);
        }
    }
}

/// Forwards a captured connection at L4 to `destination` (see [`destination`]); `port` is the
/// listener's own port. With `filters`, the bytes go through the NETWORK filters that took the
/// connection (copied, not spliced).
pub(super) async fn forward_to(
    client: TcpStream,
    peer: SocketAddr,
    original: SocketAddr,
    destination: Destination,
    port: u16,
    shared: &L4State,
    mut filters: Option<Filtered>,
) {
    let (picker, metrics) = (&shared.picker, &shared.metrics);
    let from_pod = picker.is_local_pod(peer.ip());
    let (frontend, candidates) = match destination {
        Destination::Service { frontend, from_pod } if frontend.endpoints_for(from_pod).is_empty() => {
            tracing::debug!(%peer, %original, cluster = frontend.cluster, "no endpoint: connection refused");
            metrics.l4_connection(L4Outcome::NoEndpoint);
            return reset(client);
        }
        Destination::Service { frontend, from_pod } => {
            let ordered = picker.order(&frontend, peer.ip(), frontend.endpoints_for(from_pod));
            (Some(frontend), ordered)
        }
        Destination::NoSuchPort => {
            tracing::debug!(%peer, %original, "no such Service port: connection refused");
            metrics.l4_connection(L4Outcome::NoSuchPort);
            return reset(client);
        }
        // Someone connected to the listener itself rather than being captured; forwarding
        // would connect back to it without end.
        Destination::PassThrough(addr) if addr.port() == port => {
            tracing::debug!(%peer, %original, "connection to the capture port itself: refused");
            metrics.l4_connection(L4Outcome::NoSuchPort);
            return reset(client);
        }
        Destination::PassThrough(addr) => (None, vec![L4Endpoint { addr, local: false }]),
    };
    for endpoint in candidates {
        // Replies come back through this node only if the endpoint runs here or the client is
        // one of its pods; otherwise leave from the node's own address.
        let keep_source = picker.keep_source(&endpoint, from_pod, peer.ip());
        match connect(keep_source.then_some(peer.ip()), endpoint.addr, CONNECT_TIMEOUT).await {
            Ok(upstream) => {
                match &frontend {
                    Some(frontend) => {
                        picker.chosen(frontend, peer.ip(), endpoint.addr);
                        metrics.l4_connection(L4Outcome::Forwarded);
                    }
                    None => metrics.l4_connection(L4Outcome::PassedThrough),
                }
                tracing::debug!(%peer, %original, endpoint = %endpoint.addr, keep_source, "forwarding");
                return match filters.take() {
                    Some(mut filters) => {
                        filters
                            .connection
                            .ex
                            .properties
                            .set("upstream.address", endpoint.addr.to_string());
                        forward_filtered(client, upstream, filters).await
                    }
                    None => forward(client, upstream).await,
                };
            }
            Err(e) => {
                tracing::debug!(%peer, %original, endpoint = %endpoint.addr, error = %e, "cannot connect; trying the next endpoint")
            }
        }
    }
    tracing::debug!(%peer, %original, "no endpoint accepted the connection");
    metrics.l4_connection(L4Outcome::ConnectFailed);
    reset(client);
}

/// Connects to `endpoint` within `timeout`, from `client`'s address (IP_TRANSPARENT) when
/// given, else from the node's.
pub(super) async fn connect(client: Option<IpAddr>, endpoint: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let domain = Domain::for_address(endpoint);
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    if let Some(client) = client.filter(|c| c.is_ipv4() == endpoint.is_ipv4()) {
        match client {
            IpAddr::V4(_) => socket.set_ip_transparent_v4(true)?,
            IpAddr::V6(_) => socket.set_ip_transparent_v6(true)?,
        }
        // The port is chosen at connect(), unique for the whole 4-tuple: bind() with port 0
        // would search for a port free for the address alone, slow with many connections in
        // TIME_WAIT and limited to one range for every endpoint.
        super::sockopt::enable_ip_option(&socket, libc::IP_BIND_ADDRESS_NO_PORT)?;
        socket.bind(&SocketAddr::new(client, 0).into())?;
    }
    socket.set_nonblocking(true)?;
    let socket = TcpSocket::from_std_stream(socket.into());
    let stream = tokio::time::timeout(timeout, socket.connect(endpoint))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Forwards both ways with splice(2) (half-closes passed on) until both sides end, the
/// connection idles for [`IDLE_TIMEOUT`], or one side fails (then both are reset).
async fn forward(client: TcpStream, upstream: TcpStream) {
    match splice::forward(&client, &upstream, IDLE_TIMEOUT).await {
        Ok(Ended::Closed(up, down)) => tracing::trace!(up, down, "connection ended"),
        Ok(Ended::Idle) => tracing::debug!(timeout = ?IDLE_TIMEOUT, "idle connection closed"),
        Err(e) => {
            tracing::debug!(error = %e, "connection ended with an error");
            // Pass a reset on rather than pretending a clean end.
            reset(client);
            reset(upstream);
        }
    }
}

/// Forwards both ways through the NETWORK filters: each read goes through them and what they
/// let out is written on; half-closes are passed on and reported to them. A filter closing
/// the connection, or failing closed, resets both sides.
async fn forward_filtered(mut client: TcpStream, mut upstream: TcpStream, mut filters: Filtered) {
    let result = filtered_copy(&mut client, &mut upstream, &mut filters).await;
    match result {
        Ok(FilteredEnd::Closed) => tracing::trace!("filtered connection ended"),
        Ok(FilteredEnd::Idle) => {
            tracing::debug!(timeout = ?IDLE_TIMEOUT, "idle connection closed");
            filters.closed(Side::Downstream, PeerType::Local);
        }
        Err(FilteredError::Abort(abort)) => {
            tracing::debug!(%abort, "a network filter ended the connection");
            filters.closed(Side::Downstream, PeerType::Local);
            reset(client);
            reset(upstream);
        }
        Err(FilteredError::Io(e)) => {
            tracing::debug!(error = %e, "connection ended with an error");
            reset(client);
            reset(upstream);
        }
    }
}

enum FilteredEnd {
    Closed,
    Idle,
}

enum FilteredError {
    Abort(Abort),
    Io(io::Error),
}

impl From<Abort> for FilteredError {
    fn from(abort: Abort) -> Self {
        FilteredError::Abort(abort)
    }
}

impl From<io::Error> for FilteredError {
    fn from(e: io::Error) -> Self {
        FilteredError::Io(e)
    }
}

/// One step of [`filtered_copy`].
enum Step {
    /// Bytes (or the end) read from a side.
    Read(Side, io::Result<usize>),
    /// Bytes written towards a side (`Downstream`: to the client).
    Wrote(Side, io::Result<usize>),
}

/// Reads both sides, runs what comes through the filters, and writes what they let out, each
/// direction on its own (a blocked write never stops the other direction, and a side is read
/// only while less than [`BACKLOG`] of its output waits). Half-closes go on once everything
/// before them is written.
async fn filtered_copy(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    filters: &mut Filtered,
) -> Result<FilteredEnd, FilteredError> {
    use bytes::{Buf, BytesMut};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const CHUNK: usize = 64 * 1024;
    /// Output waiting for a slow side before the other side is no longer read.
    const BACKLOG: usize = 1 << 20;
    let (mut client_read, mut client_write) = client.split();
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let (mut from_client, mut from_upstream) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let (mut to_upstream, mut to_client) = (BytesMut::new(), BytesMut::new());
    // Whether each side may still send, and whether each side was told the other ended.
    let (mut client_open, mut upstream_open) = (true, true);
    let (mut upstream_shut, mut client_shut) = (false, false);
    loop {
        if !client_open && to_upstream.is_empty() && !upstream_shut {
            upstream_write.shutdown().await?;
            upstream_shut = true;
        }
        if !upstream_open && to_client.is_empty() && !client_shut {
            client_write.shutdown().await?;
            client_shut = true;
        }
        if upstream_shut && client_shut {
            return Ok(FilteredEnd::Closed);
        }
        let step = tokio::time::timeout(IDLE_TIMEOUT, async {
            tokio::select! {
                n = client_read.read(&mut from_client), if client_open && to_upstream.len() < BACKLOG => {
                    Some(Step::Read(Side::Downstream, n))
                }
                n = upstream_read.read(&mut from_upstream), if upstream_open && to_client.len() < BACKLOG => {
                    Some(Step::Read(Side::Upstream, n))
                }
                n = upstream_write.write(&to_upstream), if !to_upstream.is_empty() => Some(Step::Wrote(Side::Upstream, n)),
                n = client_write.write(&to_client), if !to_client.is_empty() => Some(Step::Wrote(Side::Downstream, n)),
                else => None,
            }
        })
        .await;
        let step = match step {
            Err(_) => return Ok(FilteredEnd::Idle),
            Ok(None) => return Ok(FilteredEnd::Closed),
            Ok(Some(step)) => step,
        };
        match step {
            Step::Read(side, n) => {
                let n = n?;
                let input = match side {
                    Side::Downstream => &from_client[..n],
                    Side::Upstream => &from_upstream[..n],
                };
                let chain = filters
                    .generation
                    .network
                    .as_ref()
                    .expect("a filtered connection comes from a generation with network filters");
                let out =
                    chain.connection_data(&mut filters.connection, side, Bytes::copy_from_slice(input), n == 0)?;
                match side {
                    Side::Downstream => to_upstream.extend_from_slice(&out),
                    Side::Upstream => to_client.extend_from_slice(&out),
                }
                if n == 0 {
                    chain.connection_closed(&mut filters.connection, side, PeerType::Remote);
                    match side {
                        Side::Downstream => client_open = false,
                        Side::Upstream => upstream_open = false,
                    }
                }
            }
            Step::Wrote(towards, n) => {
                let n = n?;
                if n == 0 {
                    return Err(io::Error::from(io::ErrorKind::WriteZero).into());
                }
                match towards {
                    Side::Upstream => to_upstream.advance(n),
                    Side::Downstream => to_client.advance(n),
                }
            }
        }
    }
}

/// Closes with RST (SO_LINGER 0), as a refused connection looks to the client.
pub(super) fn reset(stream: TcpStream) {
    let _ = SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ObjectStore;
    use crate::config::store::{Format, parse_file};
    use crate::snapshot::FrontendKind;
    use crate::translate::{TranslateOptions, translate};

    /// The snapshot node `node-a` (zone `zone-a`, from its Node object) translates `yaml` to.
    fn snapshot(yaml: &str) -> Snapshot {
        let node = "apiVersion: v1\nkind: Node\nmetadata: {name: node-a, labels: {topology.kubernetes.io/zone: zone-a}}\n---\n";
        let parsed = parse_file("test.yaml", &format!("{node}{yaml}"), Format::Yaml);
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
            node_name: Some("node-a".into()),
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

    /// The endpoints a client gets (`from_pod`: one of this node's pods), or what else happens.
    fn endpoints(
        snapshot: &Snapshot,
        entry: Entry,
        original: &str,
        from_pod: bool,
    ) -> Result<Vec<String>, Destination> {
        match destination(snapshot, entry, addr(original), from_pod) {
            Destination::Service { frontend, from_pod } => Ok(frontend
                .endpoints_for(from_pod)
                .iter()
                .map(|e| format!("{}{}", e.addr, if e.local { " local" } else { "" }))
                .collect()),
            other => Err(other),
        }
    }

    fn outbound(snapshot: &Snapshot, original: &str) -> Result<Vec<String>, Destination> {
        endpoints(snapshot, Entry::Outbound, original, true)
    }

    #[test]
    fn a_cluster_ip_port_goes_to_the_ready_endpoints() {
        let snapshot = snapshot(SERVICES);
        assert_eq!(outbound(&snapshot, "10.96.0.10:80"), Ok(vec!["10.244.0.3:8080".into()]));
        let Destination::Service { frontend, .. } =
            destination(&snapshot, Entry::Outbound, addr("10.96.0.10:80"), true)
        else {
            panic!("a Service")
        };
        assert_eq!(
            (frontend.cluster.as_str(), frontend.kind, frontend.affinity_seconds),
            ("ns/web:80", FrontendKind::ClusterIp, None)
        );
    }

    #[test]
    fn a_service_without_endpoints_has_none_to_offer() {
        let snapshot = snapshot(SERVICES);
        assert_eq!(outbound(&snapshot, "10.96.0.11:80"), Ok(vec![]));
    }

    #[test]
    fn other_ports_of_a_cluster_ip_and_udp_ports_are_refused() {
        let snapshot = snapshot(SERVICES);
        assert_eq!(outbound(&snapshot, "10.96.0.10:81"), Err(Destination::NoSuchPort));
        // The UDP port is no TCP Service port.
        assert_eq!(outbound(&snapshot, "10.96.0.10:53"), Err(Destination::NoSuchPort));
    }

    #[test]
    fn pod_addresses_and_headless_services_pass_through() {
        let snapshot = snapshot(SERVICES);
        assert_eq!(
            outbound(&snapshot, "10.244.0.3:8080"),
            Err(Destination::PassThrough(addr("10.244.0.3:8080")))
        );
        assert_eq!(
            snapshot
                .services
                .by_address
                .keys()
                .map(|a| a.to_string())
                .collect::<Vec<_>>(),
            ["10.96.0.10:80", "10.96.0.11:80"]
        );
    }

    #[test]
    fn the_snapshot_with_service_frontends_serializes() {
        let json = serde_json::to_value(snapshot(SERVICES)).unwrap();
        assert_eq!(json["services"]["by_address"]["10.96.0.10:80"]["cluster"], "ns/web:80");
    }

    const TYPES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: lb, namespace: ns}
spec:
  type: LoadBalancer
  clusterIP: 10.96.1.1
  externalIPs: [192.0.2.10]
  ports: [{name: web, port: 80, targetPort: http, nodePort: 30080}, {name: udp, port: 81, protocol: UDP, nodePort: 30081}]
status:
  loadBalancer: {ingress: [{ip: 198.51.100.7}, {hostname: lb.example}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: lb-1, namespace: ns, labels: {kubernetes.io/service-name: lb}}
ports: [{name: web, port: 8080}]
endpoints:
- {addresses: [10.244.0.3], nodeName: node-a}
- {addresses: [10.244.1.3], nodeName: node-b}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: lb-2, namespace: ns, labels: {kubernetes.io/service-name: lb}}
ports: [{name: web, port: 9090}]
endpoints:
- {addresses: [10.244.1.4], nodeName: node-b}
---
apiVersion: v1
kind: Service
metadata: {name: np, namespace: ns}
spec:
  type: NodePort
  clusterIP: 10.96.1.2
  externalTrafficPolicy: Local
  ports: [{port: 80, nodePort: 30090}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: np-1, namespace: ns, labels: {kubernetes.io/service-name: np}}
ports: [{port: 8080}]
endpoints:
- {addresses: [10.244.0.5], nodeName: node-a}
- {addresses: [10.244.1.5], nodeName: node-b}
---
apiVersion: v1
kind: Service
metadata: {name: remote-only, namespace: ns}
spec:
  type: NodePort
  clusterIP: 10.96.1.3
  externalTrafficPolicy: Local
  internalTrafficPolicy: Local
  ports: [{port: 80, nodePort: 30091}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: remote-only-1, namespace: ns, labels: {kubernetes.io/service-name: remote-only}}
ports: [{port: 8080}]
endpoints:
- {addresses: [10.244.1.6], nodeName: node-b}
---
apiVersion: v1
kind: Service
metadata: {name: cip, namespace: ns}
spec:
  clusterIP: 10.96.1.4
  ports: [{port: 80, nodePort: 30092}]
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: ns}
spec: {type: ExternalName, externalName: example.org, ports: [{port: 80}]}
"#;

    #[test]
    fn every_frontend_of_a_load_balancer_service_and_named_target_ports() {
        let snapshot = snapshot(TYPES);
        // Per-slice ports: a named targetPort resolves to each pod's own number.
        let all = Ok(vec![
            "10.244.0.3:8080 local".to_string(),
            "10.244.1.3:8080".into(),
            "10.244.1.4:9090".into(),
        ]);
        for frontend in ["10.96.1.1:80", "192.0.2.10:80", "198.51.100.7:80"] {
            assert_eq!(outbound(&snapshot, frontend), all, "{frontend}");
            assert_eq!(
                endpoints(&snapshot, Entry::Outbound, frontend, false),
                all,
                "{frontend}"
            );
        }
        assert_eq!(endpoints(&snapshot, Entry::Inbound, "10.0.0.1:30080", false), all);
        let kind = |entry, original| match destination(&snapshot, entry, addr(original), false) {
            Destination::Service { frontend, .. } => frontend.kind,
            other => panic!("{other:?}"),
        };
        assert_eq!(kind(Entry::Outbound, "192.0.2.10:80"), FrontendKind::ExternalIp);
        assert_eq!(kind(Entry::Outbound, "198.51.100.7:80"), FrontendKind::LoadBalancer);
        assert_eq!(kind(Entry::Inbound, "10.0.0.1:30080"), FrontendKind::NodePort);
        // The UDP port's node port is not a TCP frontend (it is a UDP one); neither is a
        // ClusterIP Service's stray nodePort, nor an ExternalName Service.
        assert_eq!(
            snapshot.services.node_ports.keys().copied().collect::<Vec<_>>(),
            [30080, 30090, 30091]
        );
        assert_eq!(
            snapshot.services.udp_node_ports.keys().copied().collect::<Vec<_>>(),
            [30081]
        );
        assert_eq!(
            endpoints(&snapshot, Entry::Inbound, "10.0.0.1:30081", false),
            Err(Destination::NoSuchPort)
        );
        assert!(!snapshot.services.by_address.values().any(|f| f.service == "ns/ext"));
        // Other ports of external addresses are not Services (not captured from outside; a
        // pod's connection passes through).
        assert_eq!(
            outbound(&snapshot, "192.0.2.10:81"),
            Err(Destination::PassThrough(addr("192.0.2.10:81")))
        );
    }

    #[test]
    fn external_traffic_policy_local_keeps_outside_clients_on_this_node() {
        let snapshot = snapshot(TYPES);
        // From outside: only this node's endpoint.
        assert_eq!(
            endpoints(&snapshot, Entry::Inbound, "10.0.0.1:30090", false),
            Ok(vec!["10.244.0.5:8080 local".into()])
        );
        // This node's pods reaching the node port get every endpoint (kube-proxy's
        // short-circuit), and the ClusterIP ignores externalTrafficPolicy.
        let all = Ok(vec!["10.244.0.5:8080 local".to_string(), "10.244.1.5:8080".into()]);
        assert_eq!(endpoints(&snapshot, Entry::Inbound, "10.0.0.1:30090", true), all);
        assert_eq!(endpoints(&snapshot, Entry::Outbound, "10.96.1.2:80", false), all);
        // No local endpoint: outside clients are refused, not sent elsewhere.
        assert_eq!(
            endpoints(&snapshot, Entry::Inbound, "10.0.0.1:30091", false),
            Ok(vec![])
        );
    }

    #[test]
    fn internal_traffic_policy_local_uses_only_this_nodes_endpoints() {
        let snapshot = snapshot(TYPES);
        assert_eq!(outbound(&snapshot, "10.96.1.3:80"), Ok(vec![]));
        assert_eq!(endpoints(&snapshot, Entry::Outbound, "10.96.1.3:80", false), Ok(vec![]));
        // Pods on this node reaching the node port are not bound by the internal policy.
        assert_eq!(
            endpoints(&snapshot, Entry::Inbound, "10.0.0.1:30091", true),
            Ok(vec!["10.244.1.6:8080".into()])
        );
    }

    const CONDITIONS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: rollout, namespace: ns}
spec:
  clusterIP: 10.96.2.1
  internalTrafficPolicy: Local
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: rollout-1, namespace: ns, labels: {kubernetes.io/service-name: rollout}}
ports: [{port: 8080}]
endpoints:
- {addresses: [10.244.0.2], nodeName: node-a, conditions: {ready: false, serving: true, terminating: true}}
- {addresses: [10.244.0.3], nodeName: node-a, conditions: {ready: false, serving: false, terminating: true}}
- {addresses: [10.244.0.4], nodeName: node-a, conditions: {ready: false}}
- {addresses: [10.244.1.2], nodeName: node-b, conditions: {ready: true}}
"#;

    #[test]
    fn serving_terminating_endpoints_stand_in_when_none_is_ready() {
        let local_policy = snapshot(CONDITIONS);
        // Locally nothing is ready: the one still serving while terminating is used (not the
        // one that stopped serving, nor the one that is merely not ready).
        assert_eq!(
            outbound(&local_policy, "10.96.2.1:80"),
            Ok(vec!["10.244.0.2:8080 local".into()])
        );
        // The HTTP path uses what a pod of this node reaching the ClusterIP would: the same.
        assert_eq!(
            local_policy.clusters["ns/rollout:80"].endpoints,
            [addr("10.244.0.2:8080")]
        );
        // Without the Local policy one endpoint is ready cluster-wide, so only it is used.
        let cluster_wide = snapshot(&CONDITIONS.replace("internalTrafficPolicy: Local\n  ", ""));
        assert_eq!(
            cluster_wide.clusters["ns/rollout:80"].endpoints,
            [addr("10.244.1.2:8080")]
        );
    }

    #[test]
    fn the_http_path_falls_back_to_serving_terminating_endpoints_too() {
        let yaml = CONDITIONS
            .replace("conditions: {ready: true}", "conditions: {ready: false}")
            .replace("internalTrafficPolicy: Local\n  ", "");
        let snapshot = snapshot(&yaml);
        assert_eq!(snapshot.clusters["ns/rollout:80"].endpoints, [addr("10.244.0.2:8080")]);
    }

    const DISTRIBUTION: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: close, namespace: ns}
spec:
  clusterIP: 10.96.3.1
  trafficDistribution: PreferClose
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}
  ports: [{port: 80}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: close-1, namespace: ns, labels: {kubernetes.io/service-name: close}}
ports: [{port: 8080}]
endpoints:
- {addresses: [10.244.0.2], zone: zone-a, hints: {forZones: [{name: zone-a}]}}
- {addresses: [10.244.1.2], zone: zone-b, hints: {forZones: [{name: zone-b}]}}
- {addresses: [10.244.1.3], zone: zone-b, hints: {forZones: [{name: zone-b}, {name: zone-a}]}}
"#;

    #[test]
    fn prefer_close_uses_the_endpoints_hinted_for_this_zone() {
        let snapshot = snapshot(DISTRIBUTION);
        assert_eq!(
            outbound(&snapshot, "10.96.3.1:80"),
            Ok(vec!["10.244.0.2:8080".into(), "10.244.1.3:8080".into()])
        );
        let Destination::Service { frontend, .. } = destination(&snapshot, Entry::Outbound, addr("10.96.3.1:80"), true)
        else {
            panic!("a Service")
        };
        assert_eq!(frontend.affinity_seconds, Some(60));
    }

    #[test]
    fn prefer_close_uses_every_endpoint_when_hints_are_missing_or_elsewhere() {
        // One endpoint without hints: hints are ignored.
        let unhinted = DISTRIBUTION.replace(
            "{addresses: [10.244.1.2], zone: zone-b, hints: {forZones: [{name: zone-b}]}}",
            "{addresses: [10.244.1.2], zone: zone-b}",
        );
        assert_eq!(outbound(&snapshot(&unhinted), "10.96.3.1:80").unwrap().len(), 3);
        // No endpoint hinted for this zone: all of them.
        let elsewhere = DISTRIBUTION.replace("{name: zone-a}", "{name: zone-c}");
        assert_eq!(outbound(&snapshot(&elsewhere), "10.96.3.1:80").unwrap().len(), 3);
        // Without trafficDistribution the hints do nothing.
        let plain = DISTRIBUTION.replace("trafficDistribution: PreferClose", "");
        assert_eq!(outbound(&snapshot(&plain), "10.96.3.1:80").unwrap().len(), 3);
    }

    #[test]
    fn udp_ports_have_their_own_frontends() {
        let snapshot = snapshot(TYPES);
        let udp: Vec<String> = snapshot.services.udp_by_address.keys().map(|a| a.to_string()).collect();
        assert_eq!(udp, ["10.96.1.1:81", "192.0.2.10:81", "198.51.100.7:81"]);
        let frontend = &snapshot.services.udp_by_address[&addr("10.96.1.1:81")];
        assert_eq!(frontend.cluster, "ns/lb:81");
        // The UDP port has no endpoint port named `udp` in the slices: no endpoints.
        assert!(frontend.from_pods.is_empty());
        // TCP lookups never see UDP frontends, and the reverse.
        assert_eq!(outbound(&snapshot, "10.96.1.1:81"), Err(Destination::NoSuchPort));
        assert!(!snapshot.services.udp_by_address.contains_key(&addr("10.96.1.1:80")));
    }
}
