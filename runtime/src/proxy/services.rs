//! The host services a worker offers the filters of one configuration generation (see
//! [`HostServices`]): which clusters HTTP callouts may reach, and `tidegate.endpoints`.
//!
//! Callout upstreams are Service ports, named as tidegate names clusters,
//! `namespace/service:port`. Filters written for Envoy or Istio name them otherwise, so these are
//! accepted too: `service.namespace.svc.cluster.local:port` (and the shorter
//! `service.namespace.svc:port`, `service.namespace:port`) and Istio's
//! `outbound|port||service.namespace.svc.cluster.local`.
//!
//! `tidegate.endpoints` (argument: a cluster name, in any of those forms) answers the ready
//! endpoints of the cluster as a proxy-wasm map (the ABI's header-map serialization): one entry
//! per endpoint, key `ip:port`, value its attributes as `key=value` pairs joined by `&`
//! (`protocol=h2c` for HTTP/2 clusters; empty otherwise). An unknown cluster is `BAD_ARGUMENT`.
//!
//! `tidegate.workload` (argument: an IP address as text, e.g. from `source.address` without the
//! port) answers the pod with that address as a proxy-wasm map: `namespace`, `name`,
//! `service_account` (when set) and one `label/<key>` per label. An address no pod has answers
//! nothing (an empty map); an argument that is no IP address is `BAD_ARGUMENT`.

use std::sync::Arc;

use crate::snapshot::{Snapshot, UpstreamProtocol};
use crate::wasm::HostServices;
use crate::wasm::codec::serialize_map;

/// The foreign function answering a cluster's endpoints.
pub const ENDPOINTS_FUNCTION: &str = "tidegate.endpoints";
/// The foreign function answering who a pod address is.
pub const WORKLOAD_FUNCTION: &str = "tidegate.workload";

/// Host services over one snapshot.
pub struct SnapshotServices {
    snapshot: Arc<Snapshot>,
}

impl SnapshotServices {
    pub fn new(snapshot: Arc<Snapshot>) -> Self {
        Self { snapshot }
    }

    /// The canonical name of cluster `name`, if the snapshot has it.
    fn cluster(&self, name: &str) -> Option<String> {
        let canonical = canonical_cluster(name)?;
        self.snapshot.clusters.contains_key(&canonical).then_some(canonical)
    }
}

impl HostServices for SnapshotServices {
    fn upstream(&self, upstream: &str) -> Option<Arc<str>> {
        self.cluster(upstream).map(Arc::from)
    }

    fn foreign_function(&self, name: &str, args: &[u8]) -> Option<Result<Vec<u8>, ()>> {
        match name {
            ENDPOINTS_FUNCTION => Some(self.endpoints(args)),
            WORKLOAD_FUNCTION => Some(self.workload(args)),
            _ => None,
        }
    }
}

impl SnapshotServices {
    fn endpoints(&self, args: &[u8]) -> Result<Vec<u8>, ()> {
        let name = std::str::from_utf8(args).map_err(|_| ())?;
        let cluster = self.cluster(name.trim()).ok_or(())?;
        let plan = &self.snapshot.clusters[&cluster];
        let attributes = match plan.protocol {
            UpstreamProtocol::H2c => b"protocol=h2c".to_vec(),
            UpstreamProtocol::Http1 => Vec::new(),
        };
        let entries: Vec<(String, Vec<u8>)> = plan
            .endpoints
            .iter()
            .map(|endpoint| (endpoint.to_string(), attributes.clone()))
            .collect();
        let mut out = Vec::new();
        if !entries.is_empty() {
            serialize_map(&entries, &mut out);
        }
        Ok(out)
    }
}

impl SnapshotServices {
    fn workload(&self, args: &[u8]) -> Result<Vec<u8>, ()> {
        let address = std::str::from_utf8(args).map_err(|_| ())?.trim();
        // Accept `ip:port` too (what `source.address` holds), and bracketed IPv6.
        let ip = address
            .parse::<std::net::IpAddr>()
            .or_else(|_| address.parse::<std::net::SocketAddr>().map(|a| a.ip()))
            .map_err(|_| ())?;
        let Some(workload) = self.snapshot.workloads.get(&ip) else {
            return Ok(Vec::new());
        };
        let mut entries = vec![
            ("namespace".to_string(), workload.namespace.clone().into_bytes()),
            ("name".to_string(), workload.name.clone().into_bytes()),
        ];
        if let Some(account) = &workload.service_account {
            entries.push(("service_account".to_string(), account.clone().into_bytes()));
        }
        for (key, value) in &workload.labels {
            entries.push((format!("label/{key}"), value.clone().into_bytes()));
        }
        let mut out = Vec::new();
        serialize_map(&entries, &mut out);
        Ok(out)
    }
}

/// `namespace/service:port` for any accepted spelling of a Service port.
pub fn canonical_cluster(name: &str) -> Option<String> {
    if let Some((namespace, rest)) = name.split_once('/') {
        let (service, port) = rest.rsplit_once(':')?;
        port.parse::<u16>().ok()?;
        return (!namespace.is_empty() && !service.is_empty()).then(|| name.to_string());
    }
    // Istio: outbound|80||service.namespace.svc.cluster.local
    if let Some(rest) = name.strip_prefix("outbound|") {
        let mut parts = rest.split('|');
        let port = parts.next()?.parse::<u16>().ok()?;
        let host = parts.nth(1)?;
        return from_host(host, port);
    }
    let (host, port) = name.rsplit_once(':')?;
    from_host(host, port.parse().ok()?)
}

fn from_host(host: &str, port: u16) -> Option<String> {
    let host = host
        .strip_suffix(".svc.cluster.local")
        .or_else(|| host.strip_suffix(".svc"))
        .unwrap_or(host);
    let (service, namespace) = host.split_once('.')?;
    if service.is_empty() || namespace.is_empty() || namespace.contains('.') {
        return None;
    }
    Some(format!("{namespace}/{service}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{ClusterPlan, Workload};

    fn services() -> SnapshotServices {
        let mut snapshot = Snapshot::default();
        snapshot.clusters.insert(
            "auth/authz:8080".into(),
            ClusterPlan {
                protocol: UpstreamProtocol::H2c,
                endpoints: vec!["10.0.0.5:9000".parse().unwrap(), "10.0.0.6:9000".parse().unwrap()],
                external_name: None,
            },
        );
        snapshot.workloads.insert(
            "10.0.0.7".parse().unwrap(),
            Workload {
                namespace: "shop".into(),
                name: "cart-0".into(),
                service_account: Some("cart".into()),
                labels: [("app".to_string(), "cart".to_string())].into(),
            },
        );
        SnapshotServices::new(Arc::new(snapshot))
    }

    fn map(bytes: &[u8]) -> Vec<(String, String)> {
        crate::wasm::codec::SerializedMap::parse(bytes)
            .unwrap()
            .iter()
            .map(|(k, v)| (String::from_utf8_lossy(k).into(), String::from_utf8_lossy(v).into()))
            .collect()
    }

    #[test]
    fn host_services_answer_endpoints_and_workloads() {
        let services = services();
        assert_eq!(
            services.upstream("authz.auth.svc.cluster.local:8080").as_deref(),
            Some("auth/authz:8080")
        );
        assert_eq!(services.upstream("auth/other:8080"), None);
        let endpoints = services
            .foreign_function(ENDPOINTS_FUNCTION, b"auth/authz:8080")
            .unwrap()
            .unwrap();
        assert_eq!(
            map(&endpoints),
            [
                ("10.0.0.5:9000".to_string(), "protocol=h2c".to_string()),
                ("10.0.0.6:9000".to_string(), "protocol=h2c".to_string())
            ]
        );
        assert_eq!(
            services.foreign_function(ENDPOINTS_FUNCTION, b"auth/nope:1"),
            Some(Err(()))
        );
        let workload = services
            .foreign_function(WORKLOAD_FUNCTION, b"10.0.0.7:41234")
            .unwrap()
            .unwrap();
        assert_eq!(
            map(&workload),
            [
                ("namespace".to_string(), "shop".to_string()),
                ("name".to_string(), "cart-0".to_string()),
                ("service_account".to_string(), "cart".to_string()),
                ("label/app".to_string(), "cart".to_string())
            ]
        );
        assert_eq!(
            services.foreign_function(WORKLOAD_FUNCTION, b"10.9.9.9"),
            Some(Ok(Vec::new()))
        );
        assert_eq!(
            services.foreign_function(WORKLOAD_FUNCTION, b"not-an-ip"),
            Some(Err(()))
        );
        assert_eq!(services.foreign_function("tidegate.nothing", b""), None);
    }

    #[test]
    fn cluster_names_as_envoy_and_istio_filters_write_them() {
        for name in [
            "auth/authz:8080",
            "authz.auth.svc.cluster.local:8080",
            "authz.auth.svc:8080",
            "authz.auth:8080",
            "outbound|8080||authz.auth.svc.cluster.local",
        ] {
            assert_eq!(canonical_cluster(name).as_deref(), Some("auth/authz:8080"), "{name}");
        }
        for bad in [
            "authz",
            "authz:80",
            "auth/authz",
            "auth/authz:http",
            "a.b.c:80",
            "outbound|x||a.b",
        ] {
            assert_eq!(canonical_cluster(bad), None, "{bad}");
        }
    }
}
