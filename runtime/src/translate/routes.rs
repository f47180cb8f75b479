//! HTTPRoutes: attaching them to listeners (parentRefs, allowedRoutes, hostnames), resolving
//! their backendRefs to clusters, and their status.

use std::collections::BTreeMap;

use serde_json::json;
use tidegate_router::config::{self as router, filter_type};

use super::gateways::{GatewayPlan, reference_granted};
use super::mesh::{self, MeshRoutes};
use super::status::{Conditions, ObjectStatus, RouteParentStatus, reason};
use super::{CONTROLLER_NAME, ClusterRegistry, TranslateOptions};
use crate::config::ObjectStore;
use crate::config::objects::{GATEWAY_GROUP, HttpBackendRef, HttpRoute, Object, ParentReference};

/// Routes attached to each listener, keyed by (`namespace/gateway`, listener name).
#[derive(Debug, Default)]
pub(super) struct AttachedRoutes {
    by_listener: BTreeMap<(String, String), Vec<router::Route>>,
}

impl AttachedRoutes {
    pub(super) fn attached_to(&self, gateway: &str, listener: &str) -> Vec<router::Route> {
        self.by_listener
            .get(&(gateway.to_string(), listener.to_string()))
            .cloned()
            .unwrap_or_default()
    }
}

const SUPPORTED_FILTERS: &[&str] = &[
    filter_type::REQUEST_HEADER_MODIFIER,
    filter_type::RESPONSE_HEADER_MODIFIER,
    filter_type::REQUEST_REDIRECT,
    filter_type::URL_REWRITE,
];

pub(super) fn translate_routes(
    store: &ObjectStore,
    gateways: &mut [GatewayPlan],
    clusters: &mut ClusterRegistry,
    options: &TranslateOptions,
    statuses: &mut Vec<ObjectStatus>,
) -> (AttachedRoutes, MeshRoutes) {
    let mut attached = AttachedRoutes::default();
    let mut mesh_routes = MeshRoutes::default();
    for object in store.of_kind("HTTPRoute") {
        let Object::HttpRoute(route) = object else { continue };
        let namespace = route.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let (rules, resolved) = resolve_rules(store, route, &namespace, clusters, true);
        let unsupported = unsupported_filter(route);
        let mut parents = Vec::new();
        for parent_ref in &route.spec.parent_refs {
            if mesh::is_service_parent(parent_ref) {
                // Mesh routes resolve backendRefs without ReferenceGrants (see `mesh`).
                let (rules, resolved) = resolve_rules(store, route, &namespace, clusters, false);
                let mut conditions = Conditions::new(route.metadata.generation, &options.now);
                let as_attached = router::Route {
                    namespace: namespace.clone(),
                    name: route.metadata.name.clone(),
                    creation_timestamp: route.metadata.creation_timestamp.clone(),
                    hostnames: Vec::new(),
                    rules,
                };
                match &unsupported {
                    Some(message) => {
                        conditions.set(reason::ACCEPTED, false, reason::UNSUPPORTED_VALUE, message.clone())
                    }
                    None => match mesh::attach(store, as_attached, parent_ref, &mut mesh_routes) {
                        Ok(()) => conditions.set(
                            reason::ACCEPTED,
                            true,
                            reason::ACCEPTED,
                            "route is attached to the Service",
                        ),
                        Err((why, message)) => conditions.set(reason::ACCEPTED, false, why, message),
                    },
                }
                set_resolved(&mut conditions, &resolved);
                parents.push(RouteParentStatus {
                    parent_ref: parent_ref.clone(),
                    controller_name: CONTROLLER_NAME.to_string(),
                    conditions: conditions.list,
                });
                continue;
            }
            let group = parent_ref.group.as_deref().unwrap_or(GATEWAY_GROUP);
            let kind = parent_ref.kind.as_deref().unwrap_or("Gateway");
            if group != GATEWAY_GROUP || kind != "Gateway" {
                continue;
            }
            let gateway_ns = parent_ref.namespace.clone().unwrap_or_else(|| namespace.clone());
            let gateway_key = format!("{gateway_ns}/{}", parent_ref.name);
            // A parent that is not one of our Gateways belongs to another controller: no status.
            let Some(gateway) = gateways.iter_mut().find(|g| g.key == gateway_key) else {
                continue;
            };
            let mut conditions = Conditions::new(route.metadata.generation, &options.now);
            match attach(store, route, &namespace, parent_ref, gateway) {
                Err((why, message)) => conditions.set(reason::ACCEPTED, false, why, message),
                Ok(_) if unsupported.is_some() => conditions.set(
                    reason::ACCEPTED,
                    false,
                    reason::UNSUPPORTED_VALUE,
                    unsupported.clone().unwrap_or_default(),
                ),
                Ok(listeners) => {
                    conditions.set(reason::ACCEPTED, true, reason::ACCEPTED, "route is attached");
                    for index in listeners {
                        let listener = &mut gateway.listeners[index];
                        listener.attached_routes += 1;
                        let entry = attached
                            .by_listener
                            .entry((gateway_key.clone(), listener.spec.name.clone()))
                            .or_default();
                        if !entry
                            .iter()
                            .any(|r| r.namespace == namespace && r.name == route.metadata.name)
                        {
                            entry.push(router::Route {
                                namespace: namespace.clone(),
                                name: route.metadata.name.clone(),
                                creation_timestamp: route.metadata.creation_timestamp.clone(),
                                hostnames: route.spec.hostnames.clone(),
                                rules: rules.clone(),
                            });
                        }
                    }
                }
            }
            set_resolved(&mut conditions, &resolved);
            parents.push(RouteParentStatus {
                parent_ref: parent_ref.clone(),
                controller_name: CONTROLLER_NAME.to_string(),
                conditions: conditions.list,
            });
        }
        if !parents.is_empty() {
            statuses.push(ObjectStatus {
                api_version: format!("{GATEWAY_GROUP}/v1"),
                kind: "HTTPRoute".into(),
                namespace: namespace.clone(),
                name: route.metadata.name.clone(),
                status: json!({ "parents": parents }),
            });
        }
    }
    (attached, mesh_routes)
}

fn set_resolved(conditions: &mut Conditions, resolved: &Result<(), (&'static str, String)>) {
    match resolved {
        Ok(()) => conditions.set(
            reason::RESOLVED_REFS,
            true,
            reason::RESOLVED_REFS,
            "all backendRefs resolved",
        ),
        Err((why, message)) => conditions.set(reason::RESOLVED_REFS, false, why, message.clone()),
    }
}

/// The listeners of `gateway` the route attaches to through `parent_ref`, or why none.
fn attach(
    store: &ObjectStore,
    route: &HttpRoute,
    namespace: &str,
    parent_ref: &ParentReference,
    gateway: &GatewayPlan,
) -> Result<Vec<usize>, (&'static str, String)> {
    let named: Vec<usize> = gateway
        .listeners
        .iter()
        .enumerate()
        .filter(|(_, l)| parent_ref.section_name.as_ref().is_none_or(|s| *s == l.spec.name))
        .filter(|(_, l)| parent_ref.port.is_none_or(|p| p == l.spec.port))
        .map(|(i, _)| i)
        .collect();
    if named.is_empty() {
        return Err((
            reason::NO_MATCHING_PARENT,
            format!(
                "Gateway {} has no listener{}{}; fix parentRefs",
                gateway.key,
                parent_ref
                    .section_name
                    .as_ref()
                    .map(|s| format!(" named {s:?}"))
                    .unwrap_or_default(),
                parent_ref.port.map(|p| format!(" on port {p}")).unwrap_or_default()
            ),
        ));
    }
    let programmed: Vec<usize> = named
        .into_iter()
        .filter(|&i| gateway.listeners[i].programmed())
        .collect();
    if programmed.is_empty() {
        return Err((
            reason::NOT_ALLOWED_BY_LISTENERS,
            format!(
                "the listeners of Gateway {} this route names are not served (see the Gateway's status.listeners)",
                gateway.key
            ),
        ));
    }
    let allowed: Vec<usize> = programmed
        .into_iter()
        .filter(|&i| gateway.listeners[i].accepts_kind("HTTPRoute"))
        .filter(|&i| namespace_allowed(store, gateway, i, namespace))
        .collect();
    if allowed.is_empty() {
        return Err((
            reason::NOT_ALLOWED_BY_LISTENERS,
            format!(
                "the listeners of Gateway {} this route names do not allow HTTPRoutes from namespace {namespace} (see their allowedRoutes)",
                gateway.key
            ),
        ));
    }
    let matching: Vec<usize> = allowed
        .into_iter()
        .filter(|&i| hostnames_intersect(gateway.listeners[i].spec.hostname.as_deref(), &route.spec.hostnames))
        .collect();
    if matching.is_empty() {
        return Err((
            reason::NO_MATCHING_LISTENER_HOSTNAME,
            format!(
                "none of the route's hostnames {:?} matches a listener hostname of Gateway {}",
                route.spec.hostnames, gateway.key
            ),
        ));
    }
    Ok(matching)
}

fn namespace_allowed(store: &ObjectStore, gateway: &GatewayPlan, index: usize, namespace: &str) -> bool {
    let from = gateway.listeners[index]
        .spec
        .allowed_routes
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    match from.and_then(|n| n.from.as_deref()).unwrap_or("Same") {
        "All" => true,
        "Selector" => {
            let labels = match store.get("Namespace", "", namespace) {
                Some(Object::Namespace(ns)) => ns.metadata.labels.clone(),
                _ => Default::default(),
            };
            from.and_then(|n| n.selector.as_ref())
                .is_some_and(|s| s.matches(&labels))
        }
        _ => namespace == gateway.namespace,
    }
}

/// Gateway API hostname intersection between a listener and a route.
pub(super) fn hostnames_intersect(listener: Option<&str>, route: &[String]) -> bool {
    let Some(listener) = listener else { return true };
    route.is_empty() || route.iter().any(|h| hostname_pair_matches(listener, h))
}

fn hostname_pair_matches(a: &str, b: &str) -> bool {
    if a.eq_ignore_ascii_case(b) {
        return true;
    }
    let covers = |wild: &str, other: &str| {
        wild.strip_prefix('*').is_some_and(|suffix| {
            other.len() > suffix.len() && other.to_ascii_lowercase().ends_with(&suffix.to_ascii_lowercase())
        })
    };
    covers(a, b) || covers(b, a)
}

fn unsupported_filter(route: &HttpRoute) -> Option<String> {
    for (index, rule) in route.spec.rules.iter().enumerate() {
        let filters = rule
            .filters
            .iter()
            .chain(rule.backend_refs.iter().flat_map(|b| b.filters.iter()));
        for filter in filters {
            if !SUPPORTED_FILTERS.contains(&filter.kind.as_str()) {
                return Some(format!(
                    "rule {index}: filter type {:?} is not supported yet (supported: {}); remove it",
                    filter.kind,
                    SUPPORTED_FILTERS.join(", ")
                ));
            }
        }
    }
    None
}

/// The route's rules with backendRefs resolved, and the first resolution problem if any.
/// `needs_grant`: a Service in another namespace needs a ReferenceGrant (Gateway parents).
fn resolve_rules(
    store: &ObjectStore,
    route: &HttpRoute,
    namespace: &str,
    clusters: &mut ClusterRegistry,
    needs_grant: bool,
) -> (Vec<router::Rule>, Result<(), (&'static str, String)>) {
    let mut problem = Ok(());
    let rules = route
        .spec
        .rules
        .iter()
        .map(|rule| router::Rule {
            matches: rule.matches.clone(),
            filters: rule.filters.clone(),
            backends: rule
                .backend_refs
                .iter()
                .map(|backend_ref| {
                    let cluster = match resolve_backend(store, namespace, backend_ref, clusters, needs_grant) {
                        Ok(cluster) => Some(cluster),
                        Err(e) => {
                            if problem.is_ok() {
                                problem = Err(e);
                            }
                            None
                        }
                    };
                    router::Backend {
                        cluster,
                        weight: backend_ref.weight.unwrap_or(1),
                        filters: backend_ref.filters.clone(),
                    }
                })
                .collect(),
        })
        .collect();
    (rules, problem)
}

fn resolve_backend(
    store: &ObjectStore,
    namespace: &str,
    backend_ref: &HttpBackendRef,
    clusters: &mut ClusterRegistry,
    needs_grant: bool,
) -> Result<String, (&'static str, String)> {
    let group = backend_ref.group.as_deref().unwrap_or("");
    let kind = backend_ref.kind.as_deref().unwrap_or("Service");
    if !group.is_empty() || kind != "Service" {
        return Err((
            reason::INVALID_KIND,
            format!(
                "backendRef {group}/{kind} {} is not supported; use a Service",
                backend_ref.name
            ),
        ));
    }
    let service_ns = backend_ref.namespace.as_deref().unwrap_or(namespace);
    if needs_grant
        && service_ns != namespace
        && !reference_granted(
            store,
            service_ns,
            GATEWAY_GROUP,
            "HTTPRoute",
            namespace,
            "",
            "Service",
            &backend_ref.name,
        )
    {
        return Err((
            reason::REF_NOT_PERMITTED,
            format!(
                "Service {service_ns}/{} is in another namespace and no ReferenceGrant there allows it",
                backend_ref.name
            ),
        ));
    }
    let Some(Object::Service(service)) = store.get("Service", service_ns, &backend_ref.name) else {
        return Err((
            reason::BACKEND_NOT_FOUND,
            format!("Service {service_ns}/{} does not exist", backend_ref.name),
        ));
    };
    let Some(port) = backend_ref.port else {
        return Err((
            reason::BACKEND_NOT_FOUND,
            format!("backendRef to Service {service_ns}/{} needs a port", backend_ref.name),
        ));
    };
    // An ExternalName Service is a DNS name: the backendRef's port is the port to reach it on.
    let external_name = service.spec.kind.as_deref() == Some("ExternalName");
    if !external_name && !service.spec.ports.iter().any(|p| p.port == port) {
        return Err((
            reason::BACKEND_NOT_FOUND,
            format!("Service {service_ns}/{} has no port {port}", backend_ref.name),
        ));
    }
    Ok(clusters.cluster_for(service_ns, &backend_ref.name, port))
}
