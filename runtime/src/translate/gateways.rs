//! GatewayClasses and Gateways: which are ours, which listeners are valid, their status, and
//! the ports they make the data plane serve.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use serde_json::json;

use super::status::{Conditions, ListenerStatus, ObjectStatus, reason};
use super::{CONTROLLER_NAME, TranslateOptions, tls};
use crate::config::ObjectStore;
use crate::config::objects::{GATEWAY_GROUP, Gateway, GatewayListener, Object, ReferenceGrant};
use crate::snapshot::{ListenerCertificate, PortPlan, PortProtocol};

/// Names of the GatewayClasses whose controller is tidegate.
pub(super) fn our_classes(
    store: &ObjectStore,
    options: &TranslateOptions,
    statuses: &mut Vec<ObjectStatus>,
) -> BTreeSet<String> {
    let mut ours = BTreeSet::new();
    for object in store.of_kind("GatewayClass") {
        let Object::GatewayClass(class) = object else { continue };
        if class.spec.controller_name != CONTROLLER_NAME {
            continue;
        }
        ours.insert(class.metadata.name.clone());
        let mut conditions = Conditions::new(class.metadata.generation, &options.now);
        conditions.set(
            reason::ACCEPTED,
            true,
            reason::ACCEPTED,
            "tidegate serves Gateways of this class",
        );
        statuses.push(ObjectStatus {
            api_version: format!("{GATEWAY_GROUP}/v1"),
            kind: "GatewayClass".into(),
            namespace: String::new(),
            name: class.metadata.name.clone(),
            status: json!({ "conditions": conditions.list }),
        });
    }
    ours
}

/// A Gateway tidegate serves, with its listeners' verdicts.
#[derive(Debug, Clone)]
pub(crate) struct GatewayPlan {
    /// `namespace/name`.
    pub key: String,
    pub namespace: String,
    pub name: String,
    generation: Option<i64>,
    /// Whether `spec.addresses` chose the address.
    requested_address: bool,
    /// The address this Gateway is served on.
    pub address: IpAddr,
    /// Why a requested `spec.addresses` entry could not be used, if one could not.
    address_problem: Option<String>,
    pub listeners: Vec<ListenerPlan>,
}

#[derive(Debug, Clone)]
pub(crate) struct ListenerPlan {
    pub spec: GatewayListener,
    pub conditions: Conditions,
    pub attached_routes: u32,
    certificate: Option<Arc<CertifiedKey>>,
    supported_kinds: Vec<String>,
}

impl ListenerPlan {
    pub fn programmed(&self) -> bool {
        self.conditions.is_true(reason::PROGRAMMED)
    }

    pub fn accepts_kind(&self, kind: &str) -> bool {
        self.supported_kinds.iter().any(|k| k == kind)
    }
}

/// Gateways whose class is ours. In standalone mode the directory is tidegate's own, so a
/// Gateway whose class has no GatewayClass object is served too; a class owned by another
/// controller is left alone.
pub(super) fn translate_gateways(
    store: &ObjectStore,
    classes: &BTreeSet<String>,
    options: &TranslateOptions,
) -> Vec<GatewayPlan> {
    let mut plans = Vec::new();
    for object in store.of_kind("Gateway") {
        let Object::Gateway(gateway) = object else { continue };
        let class = &gateway.spec.gateway_class_name;
        let foreign = store.get("GatewayClass", "", class).is_some() && !classes.contains(class);
        if foreign {
            continue;
        }
        plans.push(plan_gateway(store, gateway, options));
    }
    assign_addresses(&mut plans, options);
    mark_conflicts(&mut plans);
    plans
}

/// `spec.addresses` first, then the pool (if any), then the default address.
fn assign_addresses(plans: &mut [GatewayPlan], options: &TranslateOptions) {
    let mut taken: BTreeSet<IpAddr> = plans
        .iter()
        .filter(|p| p.requested_address)
        .map(|p| p.address)
        .collect();
    let Some(pool) = &options.address_pool else { return };
    for plan in plans
        .iter_mut()
        .filter(|p| !p.requested_address && p.address_problem.is_none())
    {
        if let Some(address) = pool.assign(&plan.key, &taken) {
            plan.address = address;
            taken.insert(address);
        }
    }
}

fn plan_gateway(store: &ObjectStore, gateway: &Gateway, options: &TranslateOptions) -> GatewayPlan {
    let namespace = gateway.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    let mut listeners = Vec::new();
    for spec in &gateway.spec.listeners {
        let mut conditions = Conditions::new(gateway.metadata.generation, &options.now);
        let mut certificate = None;
        let protocol_ok = matches!(spec.protocol.as_str(), "HTTP" | "HTTPS");
        if protocol_ok {
            conditions.set(reason::ACCEPTED, true, reason::ACCEPTED, "listener is valid");
        } else {
            conditions.set(
                reason::ACCEPTED,
                false,
                reason::UNSUPPORTED_PROTOCOL,
                format!("protocol {:?} is not supported yet; use HTTP or HTTPS", spec.protocol),
            );
        }
        conditions.set(
            reason::RESOLVED_REFS,
            true,
            reason::RESOLVED_REFS,
            "all references resolved",
        );
        let supported_kinds = supported_kinds(spec, &mut conditions);
        if spec.protocol == "HTTPS" {
            match listener_certificate(store, &namespace, spec) {
                Ok(key) => certificate = Some(key),
                Err((why, message)) => conditions.set(reason::RESOLVED_REFS, false, why, message),
            }
        }
        conditions.set(reason::CONFLICTED, false, reason::NO_CONFLICTS, "no conflicts");
        listeners.push(ListenerPlan {
            spec: spec.clone(),
            conditions,
            attached_routes: 0,
            certificate,
            supported_kinds,
        });
    }
    for listener in &mut listeners {
        update_programmed(listener);
    }
    let (address, requested_address, address_problem) = match gateway.spec.addresses.first() {
        None => (options.address, false, None),
        Some(requested) => match (
            requested.kind.as_deref().unwrap_or("IPAddress"),
            requested.value.parse::<IpAddr>(),
        ) {
            ("IPAddress", Ok(ip)) => (ip, true, None),
            (kind, _) => (
                options.address,
                false,
                Some(format!(
                    "spec.addresses: {kind} {:?} cannot be served; use an IPAddress this node owns",
                    requested.value
                )),
            ),
        },
    };
    GatewayPlan {
        key: format!("{namespace}/{}", gateway.metadata.name),
        namespace,
        name: gateway.metadata.name.clone(),
        generation: gateway.metadata.generation,
        requested_address,
        address,
        address_problem,
        listeners,
    }
}

fn update_programmed(listener: &mut ListenerPlan) {
    let ok = listener.conditions.is_true(reason::ACCEPTED)
        && listener.conditions.is_true(reason::RESOLVED_REFS)
        && !listener.conditions.is_true(reason::CONFLICTED);
    if ok {
        listener
            .conditions
            .set(reason::PROGRAMMED, true, reason::PROGRAMMED, "listener is served");
    } else {
        listener.conditions.set(
            reason::PROGRAMMED,
            false,
            reason::INVALID,
            "listener is not served; see its other conditions",
        );
    }
}

/// Route kinds the listener accepts; records InvalidRouteKinds for kinds tidegate lacks.
fn supported_kinds(spec: &GatewayListener, conditions: &mut Conditions) -> Vec<String> {
    let Some(allowed) = spec.allowed_routes.as_ref().filter(|a| !a.kinds.is_empty()) else {
        return vec!["HTTPRoute".to_string()];
    };
    let mut kinds = Vec::new();
    for kind in &allowed.kinds {
        let group = kind.group.as_deref().unwrap_or(GATEWAY_GROUP);
        if group == GATEWAY_GROUP && kind.kind == "HTTPRoute" {
            kinds.push(kind.kind.clone());
        } else {
            conditions.set(
                reason::RESOLVED_REFS,
                false,
                reason::INVALID_ROUTE_KINDS,
                format!(
                    "route kind {group}/{} is not supported on {} listeners; use HTTPRoute",
                    kind.kind, spec.protocol
                ),
            );
        }
    }
    kinds
}

fn listener_certificate(
    store: &ObjectStore,
    namespace: &str,
    spec: &GatewayListener,
) -> Result<Arc<CertifiedKey>, (&'static str, String)> {
    let tls = spec.tls.as_ref().ok_or((
        reason::INVALID_CERTIFICATE_REF,
        "an HTTPS listener needs tls.certificateRefs naming a kubernetes.io/tls Secret".to_string(),
    ))?;
    if tls.mode.as_deref().is_some_and(|m| m != "Terminate") {
        return Err((
            reason::INVALID_CERTIFICATE_REF,
            "tls.mode Passthrough is not supported on HTTPS listeners; use Terminate".into(),
        ));
    }
    let cert_ref = tls.certificate_refs.first().ok_or((
        reason::INVALID_CERTIFICATE_REF,
        "tls.certificateRefs is empty; name a kubernetes.io/tls Secret".to_string(),
    ))?;
    let group = cert_ref.group.as_deref().unwrap_or("");
    let kind = cert_ref.kind.as_deref().unwrap_or("Secret");
    if !group.is_empty() || kind != "Secret" {
        return Err((
            reason::INVALID_CERTIFICATE_REF,
            format!("certificateRef kind {group}/{kind} is not supported; use a core Secret"),
        ));
    }
    let secret_namespace = cert_ref.namespace.as_deref().unwrap_or(namespace);
    if secret_namespace != namespace
        && !reference_granted(
            store,
            secret_namespace,
            GATEWAY_GROUP,
            "Gateway",
            namespace,
            "",
            "Secret",
            &cert_ref.name,
        )
    {
        return Err((
            reason::REF_NOT_PERMITTED,
            format!(
                "Secret {secret_namespace}/{} is in another namespace and no ReferenceGrant there allows it",
                cert_ref.name
            ),
        ));
    }
    let Some(Object::Secret(secret)) = store.get("Secret", secret_namespace, &cert_ref.name) else {
        return Err((
            reason::INVALID_CERTIFICATE_REF,
            format!("Secret {secret_namespace}/{} does not exist", cert_ref.name),
        ));
    };
    tls::certified_key(secret).map_err(|e| {
        (
            reason::INVALID_CERTIFICATE_REF,
            format!("Secret {secret_namespace}/{}: {e}", cert_ref.name),
        )
    })
}

/// Whether a ReferenceGrant in `to_namespace` lets `from_kind` objects of `from_namespace`
/// refer to the `to_kind` named `to_name` there.
#[allow(clippy::too_many_arguments)]
pub(super) fn reference_granted(
    store: &ObjectStore,
    to_namespace: &str,
    from_group: &str,
    from_kind: &str,
    from_namespace: &str,
    to_group: &str,
    to_kind: &str,
    to_name: &str,
) -> bool {
    store.of_kind("ReferenceGrant").any(|object| {
        let Object::ReferenceGrant(ReferenceGrant { metadata, spec }) = object else {
            return false;
        };
        metadata.namespace.as_deref().unwrap_or("default") == to_namespace
            && spec
                .from
                .iter()
                .any(|f| f.group == from_group && f.kind == from_kind && f.namespace == from_namespace)
            && spec
                .to
                .iter()
                .any(|t| t.group == to_group && t.kind == to_kind && t.name.as_deref().is_none_or(|n| n == to_name))
    })
}

/// Listeners that cannot be served together: two protocols on one address and port, or the
/// same hostname twice there. Gateways sharing an address share its ports, so this spans them.
fn mark_conflicts(plans: &mut [GatewayPlan]) {
    let mut first_protocol: BTreeMap<(IpAddr, u16), String> = BTreeMap::new();
    let mut seen_hosts: BTreeMap<(IpAddr, u16, String), usize> = BTreeMap::new();
    for plan in plans.iter_mut() {
        let address = plan.address;
        for listener in plan
            .listeners
            .iter_mut()
            .filter(|l| l.conditions.is_true(reason::ACCEPTED))
        {
            let port = listener.spec.port;
            let protocol = first_protocol
                .entry((address, port))
                .or_insert_with(|| listener.spec.protocol.clone());
            if *protocol != listener.spec.protocol {
                listener.conditions.set(
                    reason::CONFLICTED,
                    true,
                    reason::PROTOCOL_CONFLICT,
                    format!(
                        "port {port} already serves {protocol}; use another port for {}",
                        listener.spec.protocol
                    ),
                );
            } else {
                let host = listener.spec.hostname.clone().unwrap_or_default();
                let count = seen_hosts.entry((address, port, host.clone())).or_default();
                *count += 1;
                if *count > 1 {
                    listener.conditions.set(
                        reason::CONFLICTED,
                        true,
                        reason::HOSTNAME_CONFLICT,
                        format!("another listener on port {port} already has hostname {host:?}"),
                    );
                }
            }
            update_programmed(listener);
        }
    }
}

impl GatewayPlan {
    pub(super) fn status(&self, options: &TranslateOptions) -> ObjectStatus {
        let listeners: Vec<ListenerStatus> = self
            .listeners
            .iter()
            .map(|l| ListenerStatus {
                name: l.spec.name.clone(),
                supported_kinds: l
                    .supported_kinds
                    .iter()
                    .map(|k| json!({"group": GATEWAY_GROUP, "kind": k}))
                    .collect(),
                attached_routes: l.attached_routes,
                conditions: l.conditions.list.clone(),
            })
            .collect();
        let mut conditions = Conditions::new(self.generation, &options.now);
        let accepted = self.listeners.iter().any(|l| l.conditions.is_true(reason::ACCEPTED));
        if let Some(problem) = &self.address_problem {
            conditions.set(reason::ACCEPTED, false, "UnsupportedAddress", problem.clone());
        } else if accepted {
            conditions.set(reason::ACCEPTED, true, reason::ACCEPTED, "tidegate serves this Gateway");
        } else {
            conditions.set(
                reason::ACCEPTED,
                false,
                reason::LISTENERS_NOT_VALID,
                "no listener is valid; see status.listeners",
            );
        }
        if self.listeners.iter().any(|l| l.programmed()) {
            conditions.set(reason::PROGRAMMED, true, reason::PROGRAMMED, "listeners are served");
        } else {
            conditions.set(
                reason::PROGRAMMED,
                false,
                reason::INVALID,
                "no listener is served; see status.listeners",
            );
        }
        ObjectStatus {
            api_version: format!("{GATEWAY_GROUP}/v1"),
            kind: "Gateway".into(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            status: json!({
                "addresses": [{"type": "IPAddress", "value": self.address.to_string()}],
                "conditions": conditions.list,
                "listeners": listeners,
            }),
        }
    }
}

/// The sockets the data plane binds: one per (address, port) of a programmed listener.
pub(super) fn port_plans(plans: &[GatewayPlan]) -> Vec<PortPlan> {
    let mut ports: BTreeMap<(IpAddr, u16), PortPlan> = BTreeMap::new();
    for plan in plans.iter().filter(|p| p.address_problem.is_none()) {
        for listener in plan.listeners.iter().filter(|l| l.programmed()) {
            let protocol = if listener.spec.protocol == "HTTPS" {
                PortProtocol::Https
            } else {
                PortProtocol::Http
            };
            let entry = ports
                .entry((plan.address, listener.spec.port))
                .or_insert_with(|| PortPlan {
                    address: plan.address,
                    port: listener.spec.port,
                    gateways: Vec::new(),
                    protocol,
                    certificates: Vec::new(),
                });
            if !entry.gateways.contains(&plan.key) {
                entry.gateways.push(plan.key.clone());
            }
            if let Some(key) = &listener.certificate {
                entry.certificates.push(ListenerCertificate {
                    listener: format!("{}/{}", plan.key, listener.spec.name),
                    hostname: listener.spec.hostname.clone(),
                    key: key.clone(),
                });
            }
        }
    }
    ports.into_values().collect()
}
