//! The immutable plan the data plane serves: what to listen on, the filters' configurations
//! and the clusters. Built by [`crate::translate`], swapped atomically, read once per
//! connection and request (a request sees one snapshot from start to end).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use serde::Serialize;
use tidegate_balancer::config::BalancerConfig;
use tidegate_router::config::RouterConfig;

/// One version of the whole plan.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Snapshot {
    /// Increases by one with every translation that changed something.
    pub version: u64,
    /// One entry per port some Gateway listener serves.
    pub ports: Vec<PortPlan>,
    /// Configuration of the router filter (sent to `proxy_on_configure`).
    pub router: RouterConfig,
    /// Configuration of the balancer filter (sent to `proxy_on_configure`).
    pub balancer: BalancerConfig,
    /// How to talk to each cluster the router may choose.
    pub clusters: BTreeMap<String, ClusterPlan>,
    /// User filters (WasmFilter objects), in chain order.
    pub filters: Vec<crate::translate::wasmfilters::UserFilterPlan>,
    /// Pods by address, for the `tidegate.workload` host service.
    pub workloads: BTreeMap<IpAddr, Workload>,
    /// Service frontends for the captured L4 path.
    pub services: ServiceTable,
}

/// Every TCP and UDP Service port's frontends, as kube-proxy serves them.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ServiceTable {
    /// By virtual address: ClusterIPs, externalIPs and load-balancer IPs, with the port.
    pub by_address: BTreeMap<SocketAddr, Arc<Frontend>>,
    /// The same for UDP ports.
    pub udp_by_address: BTreeMap<SocketAddr, Arc<Frontend>>,
    /// By TCP node port (served on the node's own addresses).
    pub node_ports: BTreeMap<u16, Arc<Frontend>>,
    /// By UDP node port.
    pub udp_node_ports: BTreeMap<u16, Arc<Frontend>>,
    /// Every ClusterIP: a port no Service has on one is refused, as kube-proxy rejects it.
    pub virtual_ips: BTreeSet<IpAddr>,
}

/// One way into a Service port, with the endpoints its traffic policies allow from this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Frontend {
    /// `namespace/name`.
    pub service: String,
    /// `namespace/name:port`.
    pub cluster: String,
    /// The Service port (a node port's frontend serves this port of the Service).
    pub port: u16,
    pub kind: FrontendKind,
    /// What the port speaks, which decides between the L7 chain and the L4 path.
    pub protocol: ConnectionProtocol,
    /// HTTPRoutes are attached to this Service port (GAMMA): HTTP to it is routed by them even
    /// when the Service itself has no endpoints.
    pub routed: bool,
    /// For clients on this node's pod networks.
    pub from_pods: Vec<L4Endpoint>,
    /// For every other client (externalTrafficPolicy applies).
    pub from_outside: Vec<L4Endpoint>,
    /// `sessionAffinity: ClientIP`: how long a client stays on its endpoint after its last
    /// connection.
    pub affinity_seconds: Option<u32>,
}

impl Frontend {
    /// The endpoints for a client: `from_pod`, one of this node's pods.
    pub fn endpoints_for(&self, from_pod: bool) -> &[L4Endpoint] {
        if from_pod { &self.from_pods } else { &self.from_outside }
    }
}

/// What a Service port speaks, from its `appProtocol` (else its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ConnectionProtocol {
    /// HTTP/1.1 or HTTP/2 (cleartext): through the L7 chain.
    Http,
    /// Anything else, declared (`tcp`, `tls`, a server-first port…): the L4 path.
    Tcp,
    /// Undeclared: the first bytes decide (HTTP/1.x request line or the HTTP/2 preface).
    Detect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FrontendKind {
    ClusterIp,
    ExternalIp,
    LoadBalancer,
    NodePort,
}

/// An endpoint of the L4 path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct L4Endpoint {
    pub addr: SocketAddr,
    /// Runs on this node (its replies come back through this node whatever the client).
    pub local: bool,
}

/// A pod as filters see it (`tidegate.workload`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Workload {
    pub namespace: String,
    pub name: String,
    pub service_account: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// What to serve on one port (the Gateway's port, before any `--port-offset`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PortPlan {
    /// The address this port is bound on (the Gateways' address).
    pub address: IpAddr,
    pub port: u16,
    /// `namespace/name` of the Gateways served here (several when they share an address).
    pub gateways: Vec<String>,
    pub protocol: PortProtocol,
    /// Certificates of the HTTPS listeners on this port, chosen by SNI.
    pub certificates: Vec<ListenerCertificate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PortProtocol {
    Http,
    Https,
}

impl PortProtocol {
    pub fn scheme(self) -> &'static str {
        match self {
            PortProtocol::Http => "http",
            PortProtocol::Https => "https",
        }
    }
}

/// The certificate of one HTTPS listener.
#[derive(Clone, Serialize)]
pub struct ListenerCertificate {
    /// `namespace/gateway/listener`.
    pub listener: String,
    /// The listener hostname (`None` = any SNI, the fallback certificate).
    pub hostname: Option<String>,
    #[serde(skip)]
    pub key: Arc<CertifiedKey>,
}

impl PartialEq for ListenerCertificate {
    fn eq(&self, other: &Self) -> bool {
        self.listener == other.listener && self.hostname == other.hostname && Arc::ptr_eq(&self.key, &other.key)
    }
}

impl fmt::Debug for ListenerCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerCertificate")
            .field("listener", &self.listener)
            .field("hostname", &self.hostname)
            .finish()
    }
}

/// How to reach one cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterPlan {
    pub protocol: UpstreamProtocol,
    pub endpoints: Vec<SocketAddr>,
    /// An ExternalName Service's DNS name and the port asked for: the endpoints are its
    /// addresses, resolved by the control plane ([`crate::external_names`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_name: Option<(String, u16)>,
}

/// The protocol spoken to a cluster's endpoints (from the Service port's appProtocol).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum UpstreamProtocol {
    Http1,
    /// HTTP/2 with prior knowledge (`appProtocol: kubernetes.io/h2c`).
    H2c,
}
