//! Connections the node capture sends to the workers: where each goes and in which protocol.
//!
//! Every worker accepts on its own transparent listeners (SO_REUSEPORT), so a captured
//! connection is served on the thread that owns the filter VMs, like a Gateway's. Per
//! connection, once, against the worker's current snapshot:
//!
//! 1. the original destination (the accepted socket's local address) names a Service frontend,
//!    a ClusterIP port no Service has (refused), or anything else (passed through);
//! 2. a ClusterIP frontend reached by one of this node's pods is east-west traffic: its port's
//!    protocol decides — HTTP goes through the HTTP chain, where the router applies the
//!    Service's HTTPRoutes (GAMMA) or sends the request to the Service itself; TCP takes the L4
//!    path; undeclared ports are detected from the client's first bytes ([`super::detect`]);
//!    (a Service with `sessionAffinity: ClientIP` and no route takes the L4 path, which pins
//!    its connections to one endpoint per client);
//! 3. everything else (node ports, external and load-balancer IPs, clients from outside, pod
//!    addresses) takes the L4 path, as kube-proxy serves it.
//!
//! A Service port with no endpoint and no route is refused at once (TCP reset) without waiting
//! for detection; one declared HTTP answers 503 per request instead. NETWORK filters targeting
//! the Service see the connection before any of this, whichever path it then takes.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use super::detect::{self, Detected};
use super::http::ConnectionInfo;
use super::listener;
use super::tcp::{self, Destination, Entry, Filtered, L4State};
use super::worker::{Generation, Worker};
use crate::metrics::{Detection, L4Outcome};
use crate::snapshot::{ConnectionProtocol, Frontend, FrontendKind, Snapshot};
use crate::wasm::{ConnectionProperties, HttpExchange};

/// How long a NETWORK filter may hold a new connection (waiting for a callout) before it is
/// reset.
const HOLD_LIMIT: Duration = Duration::from_secs(60);

/// Accepts on one of this worker's transparent listeners until the process exits.
pub(super) async fn accept_loop(listener: TcpListener, entry: Entry, worker: Rc<Worker>, l4: Arc<L4State>) {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    loop {
        let (stream, peer) = listener::accept(&listener).await;
        tokio::task::spawn_local(serve(stream, peer, entry, port, worker.clone(), l4.clone()));
    }
}

/// What a captured connection becomes.
enum Plan {
    /// Through the HTTP chain, as a request to this Service frontend.
    Http(Arc<Frontend>),
    /// The L4 path.
    L4(Destination),
}

async fn serve(stream: TcpStream, peer: SocketAddr, entry: Entry, port: u16, worker: Rc<Worker>, l4: Arc<L4State>) {
    let _ = stream.set_nodelay(true);
    let Ok(original) = stream.local_addr() else { return };
    let from_pod = l4.picker.is_local_pod(peer.ip());
    // Where it goes follows the latest configuration even when a filter rejected it (the
    // worker then keeps its previous filters, but Services and endpoints move on). Before the
    // first version nothing is a Service: pods' connections pass through.
    let snapshot = worker.latest_snapshot();
    let destination = tcp::destination(&snapshot, entry, original, from_pod);
    // NETWORK filters see every connection to their Services first, whatever it speaks, so
    // none can be bypassed by sending HTTP.
    // What filters read of the connection, built once and only when some filter will.
    let mut info = None;
    let filters = match &destination {
        Destination::Service { frontend, .. } => match worker.current() {
            Some(generation) if generation.network.is_some() => {
                let properties = info
                    .get_or_insert_with(|| connection_info(peer, original, frontend, &snapshot))
                    .properties
                    .clone();
                match network_filters(generation, frontend, properties) {
                    None => None,
                    Some(Err(refused)) => return refuse(stream, refused, &l4),
                    Some(Ok(filters)) => match hold(filters, peer, original).await {
                        Ok(filters) => Some(filters),
                        Err(refused) => return refuse(stream, refused, &l4),
                    },
                }
            }
            _ => None,
        },
        _ => None,
    };
    match plan(destination, &stream, &l4).await {
        Plan::Http(frontend) => {
            tracing::debug!(%peer, %original, service = frontend.service, "east-west HTTP");
            l4.metrics.l4_connection(L4Outcome::Http);
            let info = info.unwrap_or_else(|| connection_info(peer, original, &frontend, &snapshot));
            drop(snapshot);
            listener::serve_http(stream, Rc::new(info), worker).await;
            // The filters' contexts end with the connection (their data callbacks do not run:
            // the HTTP chain carries the bytes).
            drop(filters);
        }
        Plan::L4(destination) => {
            drop(snapshot);
            tcp::forward_to(stream, peer, original, destination, port, &l4, filters).await
        }
    }
}

/// Resets a connection a NETWORK filter refused (its contexts end as `refused` drops).
fn refuse(stream: TcpStream, refused: Filtered, l4: &L4State) {
    l4.metrics.l4_connection(L4Outcome::FilterClosed);
    tcp::reset(stream);
    drop(refused);
}

/// Waits while a NETWORK filter holds the new connection (for a callout's answer): `Err` when
/// it closes it, or holds it past [`HOLD_LIMIT`].
async fn hold(mut filters: Filtered, peer: SocketAddr, original: SocketAddr) -> Result<Filtered, Filtered> {
    if !filters.connection.is_paused() {
        return Ok(filters);
    }
    let generation = filters.generation.clone();
    let Some(chain) = generation.network.as_ref() else {
        return Ok(filters);
    };
    let resumed = std::future::poll_fn(|cx| chain.poll_resumed(&mut filters.connection, cx));
    match tokio::time::timeout(HOLD_LIMIT, resumed).await {
        Ok(Ok(())) => Ok(filters),
        Ok(Err(abort)) => {
            tracing::debug!(%peer, %original, %abort, "a network filter refused the connection");
            Err(filters)
        }
        Err(_) => {
            tracing::warn!(%peer, %original, limit = ?HOLD_LIMIT, "a network filter held the connection too long; reset");
            Err(filters)
        }
    }
}

/// Opens the connection in the NETWORK filters whose scope takes its Service: `None` when none
/// does (the bytes are spliced), `Err` when one closed it.
fn network_filters(
    generation: Rc<Generation>,
    frontend: &Frontend,
    properties: Arc<ConnectionProperties>,
) -> Option<Result<Filtered, Filtered>> {
    let chain = generation.network.as_ref()?;
    let mut ex = HttpExchange {
        connection: Some(properties),
        ..Default::default()
    };
    // The Service port is the cluster an L4 connection goes to (no router picks one).
    ex.properties.set("tidegate.cluster", frontend.cluster.clone());
    let (connection, opened) = chain.connect(ex, |scope| scope.applies_to_connection(&frontend.service));
    if connection.is_empty() && opened.is_ok() {
        return None;
    }
    let filtered = Filtered { generation, connection };
    Some(match opened {
        Ok(()) => Ok(filtered),
        Err(abort) => {
            tracing::debug!(service = frontend.service, %abort, "a network filter refused the connection");
            Err(filtered)
        }
    })
}

/// Decides HTTP or L4 (see the module docs), detecting the protocol when the port does not say.
async fn plan(destination: Destination, stream: &TcpStream, l4: &L4State) -> Plan {
    let Destination::Service { frontend, from_pod } = &destination else {
        return Plan::L4(destination);
    };
    let east_west = *from_pod && frontend.kind == FrontendKind::ClusterIp;
    if !east_west {
        return Plan::L4(destination);
    }
    let refused_anyway = frontend.endpoints_for(true).is_empty() && !frontend.routed;
    // ClientIP affinity pins connections, which only the L4 path does; a Service port with
    // routes is routed per request instead.
    if frontend.affinity_seconds.is_some() && !frontend.routed {
        return Plan::L4(destination);
    }
    match frontend.protocol {
        ConnectionProtocol::Http => Plan::Http(frontend.clone()),
        ConnectionProtocol::Tcp => Plan::L4(destination),
        // Without an endpoint or a route the connection is refused whatever it speaks:
        // at once, rather than after waiting for the client's first bytes.
        ConnectionProtocol::Detect if refused_anyway => Plan::L4(destination),
        ConnectionProtocol::Detect => {
            let detected = detect::detect(stream, l4.detect_timeout).await;
            l4.metrics.protocol_detected(match detected {
                Detected::Http => Detection::Http,
                Detected::Other | Detected::Closed => Detection::Tcp,
                Detected::Timeout => Detection::Timeout,
            });
            match detected {
                Detected::Http => Plan::Http(frontend.clone()),
                _ => Plan::L4(destination),
            }
        }
    }
}

/// The connection as filters see it (the HTTP chain, and NETWORK filters): no Gateway; the Service frontend, its port and the
/// client pod's namespace instead. Upstream connections leave from the client's address (it is
/// one of this node's pods, so replies come back here).
fn connection_info(peer: SocketAddr, original: SocketAddr, frontend: &Frontend, snapshot: &Snapshot) -> ConnectionInfo {
    ConnectionInfo {
        id: super::listener::next_connection_id(),
        gateway_port: frontend.port,
        gateway: None,
        gateways: String::new(),
        scheme: "http",
        remote: peer,
        local: original,
        tls: None,
        service: Some(frontend.service.clone()),
        source_namespace: snapshot.workloads.get(&peer.ip()).map(|w| w.namespace.clone()),
        upstream_source: Some(peer.ip()),
        properties: Default::default(),
    }
    .with_properties()
}
