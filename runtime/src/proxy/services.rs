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

use std::sync::Arc;

use crate::snapshot::{Snapshot, UpstreamProtocol};
use crate::wasm::HostServices;
use crate::wasm::codec::serialize_map;

/// The foreign function answering a cluster's endpoints.
pub const ENDPOINTS_FUNCTION: &str = "tidegate.endpoints";

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
