//! GAMMA: HTTPRoutes whose parentRef is a Service (Gateway API GEP-1294, "xRoutes Mesh
//! Binding"). Such a route applies to east-west requests sent to the Service's frontend (its
//! ClusterIP), chosen by that address and never by `hostnames`:
//!
//! - `port` on the parentRef scopes the route to that Service port, `sectionName` to the port of
//!   that name; with neither, to every port;
//! - a route in the Service's namespace is a producer route, for clients of every namespace; a
//!   route in another namespace is a consumer route, for clients of its own namespace only, and
//!   replaces the producer routes for them (the two sets are never merged);
//! - a Service parent must have a ClusterIP (headless and ExternalName Services cannot be);
//! - backendRefs of mesh routes need no ReferenceGrant across namespaces: a mesh route
//!   augments a Service that is already reachable, it exposes nothing new.

use std::collections::BTreeMap;

use tidegate_router::config::{self as router, ServiceRoutes};

use super::services::cluster_ips;
use crate::config::ObjectStore;
use crate::config::objects::{Object, ParentReference, Service};

/// The routes attached to each Service port.
#[derive(Debug, Default)]
pub(super) struct MeshRoutes {
    /// By (`namespace/name`, port).
    by_port: BTreeMap<(String, u16), ServiceRoutes>,
}

impl MeshRoutes {
    /// Whether any route is attached to port `port` of Service `service` (`namespace/name`).
    pub(super) fn has_routes(&self, service: &str, port: u16) -> bool {
        self.by_port.contains_key(&(service.to_string(), port))
    }

    /// The router's configuration for the Service ports with routes.
    pub(super) fn into_config(self) -> Vec<ServiceRoutes> {
        self.by_port.into_values().collect()
    }
}

/// Whether a parentRef names a Service (group `""`, or `core` as some docs write it).
pub(super) fn is_service_parent(parent_ref: &ParentReference) -> bool {
    matches!(parent_ref.group.as_deref(), Some("" | "core")) && parent_ref.kind.as_deref() == Some("Service")
}

/// Attaches `route` (namespace `namespace`, its rules already resolved) to the Service ports
/// `parent_ref` selects, or says why it cannot (the reason and a message for status).
pub(super) fn attach(
    store: &ObjectStore,
    route: router::Route,
    parent_ref: &ParentReference,
    mesh: &mut MeshRoutes,
) -> Result<(), (&'static str, String)> {
    use super::status::reason::NO_MATCHING_PARENT;
    let namespace = route.namespace.clone();
    let service_ns = parent_ref.namespace.clone().unwrap_or_else(|| namespace.clone());
    let key = format!("{service_ns}/{}", parent_ref.name);
    let Some(Object::Service(service)) = store.get("Service", &service_ns, &parent_ref.name) else {
        return Err((
            NO_MATCHING_PARENT,
            format!("Service {key} does not exist; fix parentRefs"),
        ));
    };
    if service.spec.kind.as_deref() == Some("ExternalName") || cluster_ips(service).is_empty() {
        return Err((
            NO_MATCHING_PARENT,
            format!(
                "Service {key} has no ClusterIP (headless or ExternalName); a mesh route needs a ClusterIP Service as its parent"
            ),
        ));
    }
    let ports = selected_ports(service, parent_ref);
    if ports.is_empty() {
        return Err((
            NO_MATCHING_PARENT,
            format!(
                "Service {key} has no TCP port{}{}; fix parentRefs",
                parent_ref
                    .section_name
                    .as_ref()
                    .map(|s| format!(" named {s:?}"))
                    .unwrap_or_default(),
                parent_ref.port.map(|p| format!(" {p}")).unwrap_or_default()
            ),
        ));
    }
    for port in ports {
        let entry = mesh
            .by_port
            .entry((key.clone(), port))
            .or_insert_with(|| ServiceRoutes {
                service: key.clone(),
                port,
                ..Default::default()
            });
        let set = if namespace == service_ns {
            &mut entry.producer
        } else {
            entry.consumers.entry(namespace.clone()).or_default()
        };
        if !set
            .iter()
            .any(|r| r.name == route.name && r.namespace == route.namespace)
        {
            set.push(route.clone());
        }
    }
    Ok(())
}

/// The TCP ports of `service` a parentRef selects by `port` and `sectionName` (both must
/// match when both are set; neither selects every port).
fn selected_ports(service: &Service, parent_ref: &ParentReference) -> Vec<u16> {
    service
        .spec
        .ports
        .iter()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter(|p| parent_ref.port.is_none_or(|port| port == p.port))
        .filter(|p| {
            parent_ref
                .section_name
                .as_ref()
                .is_none_or(|name| p.name.as_ref() == Some(name))
        })
        .map(|p| p.port)
        .collect()
}

#[cfg(test)]
mod tests;
