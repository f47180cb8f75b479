//! Translate: objects → [`Snapshot`] + computed status. A pure function: no I/O, no clock
//! (the caller passes the time stamped on conditions), so every case is a unit test.
//!
//! Invalid objects get status conditions and are left out; they never take down good config.

mod addresses;
mod gateways;
mod mesh;
mod routes;
mod services;
pub mod status;
mod tls;
pub mod wasmfilters;

use std::collections::BTreeMap;
use std::net::IpAddr;

use tidegate_balancer::config::{BalancerConfig, Cluster};
use tidegate_router::config::RouterConfig;

use crate::config::ObjectStore;
use crate::config::objects::{Object, Service};
use crate::snapshot::{ClusterPlan, Snapshot, UpstreamProtocol, Workload};

pub use self::addresses::AddressPool;
pub use self::status::ObjectStatus;

/// The GatewayClass controller name tidegate answers to.
pub const CONTROLLER_NAME: &str = "tidegate.dev/gateway-controller";

/// What translation needs besides the objects.
#[derive(Debug, Clone)]
pub struct TranslateOptions {
    /// The address Gateways are served on unless they ask for one (`spec.addresses`) or the
    /// address pool gives them their own.
    pub address: IpAddr,
    /// When set, every Gateway without `spec.addresses` gets its own address from this pool,
    /// so several Gateways can serve the same port (as they would on a cluster).
    pub address_pool: Option<AddressPool>,
    /// Relative `spec.module.file` paths of WasmFilters are resolved against this directory.
    pub config_dir: Option<std::path::PathBuf>,
    /// RFC 3339 time stamped on conditions as `lastTransitionTime`.
    pub now: String,
    /// This node's name (`--node-name`): endpoints with this `nodeName` are local, for the
    /// Local traffic policies and `trafficDistribution`.
    pub node_name: Option<String>,
}

/// The result of one translation.
#[derive(Debug, Clone, Default)]
pub struct Translation {
    /// The plan (its `version` is set by whoever publishes it).
    pub snapshot: Snapshot,
    /// Status of every object tidegate is responsible for.
    pub statuses: Vec<ObjectStatus>,
}

/// Objects → plan + status.
pub fn translate(store: &ObjectStore, options: &TranslateOptions) -> Translation {
    let mut statuses = Vec::new();
    let classes = gateways::our_classes(store, options, &mut statuses);
    let mut gateways = gateways::translate_gateways(store, &classes, options);
    let mut clusters = ClusterRegistry::default();
    let (routes, mesh_routes) = routes::translate_routes(store, &mut gateways, &mut clusters, options, &mut statuses);

    let mut router = RouterConfig::default();
    for gateway in &gateways {
        for listener in gateway.listeners.iter().filter(|l| l.programmed()) {
            router.listeners.push(tidegate_router::config::Listener {
                gateway: gateway.key.clone(),
                name: listener.spec.name.clone(),
                port: listener.spec.port,
                protocol: listener.spec.protocol.clone(),
                hostname: listener.spec.hostname.clone(),
                routes: routes.attached_to(&gateway.key, &listener.spec.name),
            });
        }
    }
    let ports = gateways::port_plans(&gateways);
    statuses.extend(gateways.iter().map(|g| g.status(options)));

    // Every Service port is a cluster, not only route backends: filters send callouts to
    // Services (an authorization service) and may steer requests to any of them.
    for object in store.of_kind("Service") {
        let Object::Service(service) = object else { continue };
        let namespace = service.metadata.namespace.as_deref().unwrap_or("default");
        for port in &service.spec.ports {
            clusters.cluster_for(namespace, &service.metadata.name, port.port);
        }
    }
    let endpoints = services::EndpointIndex::new(store);
    let here = services::Here::new(store, options.node_name.as_deref());
    let service_table = services::service_table(store, &endpoints, &here, &mesh_routes);
    router.services = mesh_routes.into_config();
    // A Service reached through the HTTP path uses the endpoints a pod on this node reaching
    // its ClusterIP would (internalTrafficPolicy, trafficDistribution), east-west or from a
    // Gateway alike.
    let internal: BTreeMap<&str, Vec<std::net::SocketAddr>> = service_table
        .by_address
        .values()
        .filter(|f| f.kind == crate::snapshot::FrontendKind::ClusterIp)
        .map(|f| (f.cluster.as_str(), f.from_pods.iter().map(|e| e.addr).collect()))
        .collect();
    let (balancer, cluster_plans) = clusters.resolve(store, &endpoints, &internal);
    let filters = wasmfilters::translate_wasm_filters(store, options, &mut statuses);
    Translation {
        snapshot: Snapshot {
            version: 0,
            ports,
            router,
            balancer,
            clusters: cluster_plans,
            filters,
            workloads: workloads(store),
            services: service_table,
        },
        statuses,
    }
}

/// Pods by each of their addresses.
fn workloads(store: &ObjectStore) -> BTreeMap<IpAddr, Workload> {
    let mut workloads = BTreeMap::new();
    for object in store.of_kind("Pod") {
        let Object::Pod(pod) = object else { continue };
        let workload = Workload {
            namespace: pod.metadata.namespace.clone().unwrap_or_else(|| "default".into()),
            name: pod.metadata.name.clone(),
            service_account: pod.spec.service_account_name.clone(),
            labels: pod.metadata.labels.clone(),
        };
        let addresses = pod.status.pod_ip.iter().chain(pod.status.pod_ips.iter().map(|p| &p.ip));
        for address in addresses {
            if let Ok(ip) = address.parse::<IpAddr>() {
                workloads.insert(ip, workload.clone());
            }
        }
    }
    workloads
}

/// The clusters routes refer to: one per (Service, port).
#[derive(Debug, Default)]
pub(crate) struct ClusterRegistry {
    /// cluster name → (namespace, service, port)
    wanted: BTreeMap<String, (String, String, u16)>,
}

impl ClusterRegistry {
    /// Registers a Service port and returns the cluster name the router will write.
    pub(crate) fn cluster_for(&mut self, namespace: &str, service: &str, port: u16) -> String {
        let name = format!("{namespace}/{service}:{port}");
        self.wanted
            .insert(name.clone(), (namespace.to_string(), service.to_string(), port));
        name
    }

    /// `internal`: by cluster, the endpoints its ClusterIP frontend serves this node's pods;
    /// they replace the Service's usable endpoints (headless Services have none there).
    fn resolve(
        self,
        store: &ObjectStore,
        endpoints: &services::EndpointIndex,
        internal: &BTreeMap<&str, Vec<std::net::SocketAddr>>,
    ) -> (BalancerConfig, BTreeMap<String, ClusterPlan>) {
        let mut balancer = BalancerConfig::default();
        let mut plans = BTreeMap::new();
        for (name, (namespace, service_name, port)) in self.wanted {
            let Some(Object::Service(service)) = store.get("Service", &namespace, &service_name) else {
                continue;
            };
            let mut plan = cluster_plan(endpoints, service, &namespace, port);
            if let Some(internal) = internal.get(name.as_str()) {
                plan.endpoints = internal.clone();
            }
            balancer.clusters.insert(
                name.clone(),
                Cluster {
                    endpoints: plan.endpoints.iter().map(|e| e.to_string()).collect(),
                    ..Default::default()
                },
            );
            plans.insert(name, plan);
        }
        (balancer, plans)
    }
}

/// Endpoints of one Service port: the ready ones, or the serving-terminating ones when none is
/// ready (see [`services`]). An ExternalName Service has none here: the control plane resolves
/// its name.
fn cluster_plan(endpoints: &services::EndpointIndex, service: &Service, namespace: &str, port: u16) -> ClusterPlan {
    let service_port = service.spec.ports.iter().find(|p| p.port == port);
    let port_name = service_port.and_then(|p| p.name.as_deref()).unwrap_or_default();
    let protocol = match service_port.and_then(|p| p.app_protocol.as_deref()) {
        Some("kubernetes.io/h2c") => UpstreamProtocol::H2c,
        _ => UpstreamProtocol::Http1,
    };
    if service.spec.kind.as_deref() == Some("ExternalName") {
        return ClusterPlan {
            protocol,
            endpoints: Vec::new(),
            external_name: service.spec.external_name.clone().map(|name| (name, port)),
        };
    }
    let candidates = endpoints.candidates(namespace, &service.metadata.name, port_name);
    ClusterPlan {
        protocol,
        endpoints: services::usable(&candidates).iter().map(|c| c.addr).collect(),
        external_name: None,
    }
}

#[cfg(test)]
mod tests;
