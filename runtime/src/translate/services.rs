//! Services as kube-proxy serves them, for the captured L4 path: every TCP and UDP Service port's
//! frontends (its ClusterIPs, externalIPs, load-balancer IPs and NodePort) and, for each, the
//! endpoints its traffic policies allow from this node.
//!
//! Endpoint choice follows kube-proxy:
//! - ready endpoints; when none is ready, the ones still serving while terminating (so a
//!   rollout's last pods keep answering until they stop);
//! - `internalTrafficPolicy: Local` (ClusterIPs) and `externalTrafficPolicy: Local` (the other
//!   frontends, for clients outside this node's pods): only this node's endpoints, and none
//!   (refused) when it has none;
//! - clients on this node's pods reaching an external frontend use every endpoint, as
//!   kube-proxy short-circuits them to the cluster-wide set;
//! - `trafficDistribution` (`PreferClose`, `PreferSameZone`, `PreferSameNode`): the endpoints
//!   the EndpointSlice hints give this node's zone (or this node), when every endpoint has
//!   hints and some are for here; otherwise all of them.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::config::ObjectStore;
use crate::config::objects::{Endpoint, EndpointSlice, Object, SERVICE_NAME_LABEL, Service, ZONE_LABEL};
use crate::snapshot::{ConnectionProtocol, Frontend, FrontendKind, L4Endpoint, ServiceTable};

/// kube-proxy's default `sessionAffinityConfig.clientIP.timeoutSeconds` (three hours).
const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

/// EndpointSlices by the Service they belong to (`namespace`, `name`): built once per
/// translation, so finding a Service's endpoints never scans every slice.
#[derive(Debug, Default)]
pub(crate) struct EndpointIndex<'a> {
    slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
}

impl<'a> EndpointIndex<'a> {
    pub(crate) fn new(store: &'a ObjectStore) -> Self {
        let mut slices: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for object in store.of_kind("EndpointSlice") {
            let Object::EndpointSlice(slice) = object else { continue };
            let Some(service) = slice.metadata.labels.get(SERVICE_NAME_LABEL) else {
                continue;
            };
            let namespace = slice.metadata.namespace.as_deref().unwrap_or("default");
            slices.entry((namespace, service.as_str())).or_default().push(slice);
        }
        Self { slices }
    }

    /// Every endpoint address of one Service port. A slice port is matched to the Service port
    /// by name (Kubernetes semantics: this is how named targetPorts resolve, each pod's
    /// number in its own slice), so endpoints may listen on different ports.
    pub(crate) fn candidates(&self, namespace: &str, service: &str, port_name: &str) -> Vec<Candidate<'a>> {
        let mut out: Vec<Candidate> = Vec::new();
        for slice in self.slices.get(&(namespace, service)).into_iter().flatten() {
            let Some(target) = slice
                .ports
                .iter()
                .find(|p| p.name.as_deref().unwrap_or_default() == port_name)
                .and_then(|p| p.port)
            else {
                continue;
            };
            for endpoint in &slice.endpoints {
                for address in &endpoint.addresses {
                    let Ok(ip) = address.parse::<IpAddr>() else { continue };
                    let addr = SocketAddr::new(ip, target);
                    if !out.iter().any(|c| c.addr == addr) {
                        out.push(Candidate { addr, endpoint });
                    }
                }
            }
        }
        out
    }
}

/// One endpoint address with the EndpointSlice entry it came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Candidate<'a> {
    pub(crate) addr: SocketAddr,
    pub(crate) endpoint: &'a Endpoint,
}

impl Candidate<'_> {
    /// Kubernetes: a nil `ready` means ready.
    fn ready(&self) -> bool {
        self.endpoint.conditions.ready != Some(false)
    }

    /// A nil `serving` means what `ready` says; a nil `terminating` means not terminating.
    fn serving_terminating(&self) -> bool {
        let conditions = &self.endpoint.conditions;
        conditions.serving.unwrap_or(self.ready()) && conditions.terminating == Some(true)
    }
}

/// The endpoints to use out of `candidates`: the ready ones, or, when none is ready, those
/// serving while terminating.
pub(crate) fn usable<'a>(candidates: &[Candidate<'a>]) -> Vec<Candidate<'a>> {
    let ready: Vec<Candidate> = candidates.iter().filter(|c| c.ready()).copied().collect();
    if !ready.is_empty() {
        return ready;
    }
    candidates.iter().filter(|c| c.serving_terminating()).copied().collect()
}

/// Where this node is: its name (endpoints' `nodeName`) and zone (its Node's label).
#[derive(Debug, Clone, Default)]
pub(crate) struct Here {
    pub(crate) node: Option<String>,
    pub(crate) zone: Option<String>,
}

impl Here {
    pub(crate) fn new(store: &ObjectStore, node: Option<&str>) -> Self {
        let zone = node.and_then(|name| match store.get("Node", "", name) {
            Some(Object::Node(n)) => n.metadata.labels.get(ZONE_LABEL).cloned(),
            _ => None,
        });
        Self {
            node: node.map(str::to_string),
            zone,
        }
    }

    fn is_local(&self, endpoint: &Endpoint) -> bool {
        self.node.is_some() && endpoint.node_name == self.node
    }
}

/// The cluster-wide endpoints after `trafficDistribution`.
fn distributed<'a>(service: &Service, here: &Here, all: Vec<Candidate<'a>>) -> Vec<Candidate<'a>> {
    let Some(distribution) = service.spec.traffic_distribution.as_deref() else {
        return all;
    };
    let hinted = |wanted: &dyn Fn(&Candidate) -> Option<bool>| -> Option<Vec<Candidate<'a>>> {
        // Hints are used only when every endpoint has them (as kube-proxy does: a slice the
        // controller has not hinted yet must not starve the others).
        let mut chosen = Vec::new();
        for candidate in &all {
            if wanted(candidate)? {
                chosen.push(*candidate);
            }
        }
        (!chosen.is_empty()).then_some(chosen)
    };
    let by_zone = || {
        let zone = here.zone.as_deref()?;
        hinted(&|c: &Candidate| {
            let hints = c.endpoint.hints.as_ref().filter(|h| !h.for_zones.is_empty())?;
            Some(hints.for_zones.iter().any(|z| z.name == zone))
        })
    };
    let by_node = || {
        let node = here.node.as_deref()?;
        hinted(&|c: &Candidate| {
            let hints = c.endpoint.hints.as_ref().filter(|h| !h.for_nodes.is_empty())?;
            Some(hints.for_nodes.iter().any(|n| n.name == node))
        })
    };
    let chosen = match distribution {
        "PreferSameNode" => by_node().or_else(by_zone),
        "PreferClose" | "PreferSameZone" => by_zone(),
        _ => None,
    };
    chosen.unwrap_or(all)
}

/// Frontends of every TCP port of every Service. `mesh`: the Service ports routes attach to.
pub(crate) fn service_table(
    store: &ObjectStore,
    index: &EndpointIndex,
    here: &Here,
    mesh: &super::mesh::MeshRoutes,
) -> ServiceTable {
    let mut table = ServiceTable::default();
    for object in store.of_kind("Service") {
        let Object::Service(service) = object else { continue };
        let spec = &service.spec;
        if spec.kind.as_deref() == Some("ExternalName") {
            continue;
        }
        let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
        let name = &service.metadata.name;
        let cluster_ips = cluster_ips(service);
        table.virtual_ips.extend(cluster_ips.iter().copied());
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            spec.session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .unwrap_or(DEFAULT_AFFINITY_SECONDS)
        });
        let external_ips = parse_ips(&spec.external_ips);
        let balancer_ips = parse_ips(
            service
                .status
                .load_balancer
                .ingress
                .iter()
                .filter_map(|i| i.ip.as_ref()),
        );
        for port in &spec.ports {
            let udp = match port.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => false,
                "UDP" => true,
                _ => continue,
            };
            let candidates = usable_subsets(
                index.candidates(namespace, name, port.name.as_deref().unwrap_or_default()),
                here,
            );
            let cluster_wide = to_l4(&distributed(service, here, candidates.all.clone()), here);
            let local = to_l4(&candidates.local, here);
            let internal = if spec.internal_traffic_policy.as_deref() == Some("Local") {
                local.clone()
            } else {
                cluster_wide.clone()
            };
            let external = if spec.external_traffic_policy.as_deref() == Some("Local") {
                local
            } else {
                cluster_wide.clone()
            };
            let service_key = format!("{namespace}/{name}");
            let protocol = if udp {
                ConnectionProtocol::Tcp
            } else {
                connection_protocol(port)
            };
            let routed = !udp && mesh.has_routes(&service_key, port.port);
            let frontend = |kind: FrontendKind| {
                Arc::new(Frontend {
                    service: service_key.clone(),
                    cluster: format!("{service_key}:{}", port.port),
                    port: port.port,
                    kind,
                    protocol,
                    routed,
                    // ClusterIPs obey internalTrafficPolicy for every client; the other
                    // frontends obey externalTrafficPolicy for clients from outside and give
                    // this node's pods every endpoint.
                    from_pods: if kind == FrontendKind::ClusterIp {
                        internal.clone()
                    } else {
                        cluster_wide.clone()
                    },
                    from_outside: if kind == FrontendKind::ClusterIp {
                        internal.clone()
                    } else {
                        external.clone()
                    },
                    affinity_seconds: affinity,
                })
            };
            let by_address = if udp {
                &mut table.udp_by_address
            } else {
                &mut table.by_address
            };
            let cluster_ip = frontend(FrontendKind::ClusterIp);
            for ip in &cluster_ips {
                by_address.insert(SocketAddr::new(*ip, port.port), cluster_ip.clone());
            }
            if !external_ips.is_empty() {
                let shared = frontend(FrontendKind::ExternalIp);
                for ip in &external_ips {
                    by_address.insert(SocketAddr::new(*ip, port.port), shared.clone());
                }
            }
            if spec.kind.as_deref() == Some("LoadBalancer") && !balancer_ips.is_empty() {
                let shared = frontend(FrontendKind::LoadBalancer);
                for ip in &balancer_ips {
                    by_address.insert(SocketAddr::new(*ip, port.port), shared.clone());
                }
            }
            if let Some(node_port) = port.node_port
                && matches!(spec.kind.as_deref(), Some("NodePort" | "LoadBalancer"))
            {
                let node_ports = if udp {
                    &mut table.udp_node_ports
                } else {
                    &mut table.node_ports
                };
                node_ports.insert(node_port, frontend(FrontendKind::NodePort));
            }
        }
    }
    table
}

/// Ports of protocols where the server speaks first (SMTP, DNS, MySQL, PostgreSQL, Redis,
/// MongoDB and others Istio and Linkerd list): waiting for the client's first bytes would stall
/// them, so an undeclared one of these takes the L4 path at once.
const SERVER_FIRST_PORTS: &[u16] = &[25, 53, 587, 3306, 4444, 5432, 6379, 9300, 11211, 27017];

/// What a Service port speaks: its `appProtocol` when set (it replaces the name), else its name
/// up to the first `-` (`http-web`), as Istio reads them; Kubernetes' `kubernetes.io/h2c` and
/// `kubernetes.io/ws` are HTTP, `kubernetes.io/wss` is TLS. Unknown or absent: detect, except
/// on server-first ports.
pub(crate) fn connection_protocol(port: &crate::config::objects::ServicePort) -> ConnectionProtocol {
    let declared = port
        .app_protocol
        .as_deref()
        .or(port.name.as_deref())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let protocol = match declared.as_str() {
        "kubernetes.io/h2c" | "kubernetes.io/ws" => Some(ConnectionProtocol::Http),
        "kubernetes.io/wss" | "linkerd.io/opaque" | "linkerd.io/tcp" => Some(ConnectionProtocol::Tcp),
        other => match other.split('-').next().unwrap_or_default() {
            "http" | "http2" | "h2c" | "grpc" => Some(ConnectionProtocol::Http),
            "tcp" | "tls" | "https" | "mongo" | "redis" | "mysql" | "udp" => Some(ConnectionProtocol::Tcp),
            _ => None,
        },
    };
    protocol.unwrap_or(if SERVER_FIRST_PORTS.contains(&port.port) {
        ConnectionProtocol::Tcp
    } else {
        ConnectionProtocol::Detect
    })
}

/// Usable endpoints cluster-wide and on this node, each chosen on its own (a node whose
/// local endpoints are all terminating still uses them under a Local policy).
struct Subsets<'a> {
    all: Vec<Candidate<'a>>,
    local: Vec<Candidate<'a>>,
}

fn usable_subsets<'a>(candidates: Vec<Candidate<'a>>, here: &Here) -> Subsets<'a> {
    let local: Vec<Candidate> = candidates
        .iter()
        .filter(|c| here.is_local(c.endpoint))
        .copied()
        .collect();
    Subsets {
        all: usable(&candidates),
        local: usable(&local),
    }
}

fn to_l4(candidates: &[Candidate], here: &Here) -> Vec<L4Endpoint> {
    candidates
        .iter()
        .map(|c| L4Endpoint {
            addr: c.addr,
            local: here.is_local(c.endpoint),
        })
        .collect()
}

/// A Service's virtual IPs (`clusterIP` and `clusterIPs`); none for a headless one (`None`).
pub(crate) fn cluster_ips(service: &Service) -> Vec<IpAddr> {
    let spec = &service.spec;
    parse_ips(spec.cluster_ip.iter().chain(&spec.cluster_ips))
}

fn parse_ips<'a>(values: impl IntoIterator<Item = &'a String>) -> Vec<IpAddr> {
    let mut ips: BTreeSet<IpAddr> = BTreeSet::new();
    let mut ordered = Vec::new();
    for value in values {
        if let Ok(ip) = value.parse::<IpAddr>()
            && ips.insert(ip)
        {
            ordered.push(ip);
        }
    }
    ordered
}
