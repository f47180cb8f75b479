//! WasmFilter objects → the user filters of the plan: where the module is, what it applies to,
//! where it runs and its sandbox. Loading the module is I/O and happens after translation
//! (see `crate::modules`); this only validates and resolves.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde_json::json;

use super::TranslateOptions;
use super::status::{Conditions, ObjectStatus, reason};
use crate::config::ObjectStore;
use crate::config::objects::{GATEWAY_GROUP, Object, WasmFilterObject};
use crate::config::wasmfilter::{self, FailurePolicyKind, Phase};

/// The default memory cap of a user filter's VM.
pub const DEFAULT_MEMORY: u64 = 64 << 20;
/// The default time one callback of a user filter may run.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(100);

/// One user filter, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UserFilterPlan {
    /// `namespace/name` of the WasmFilter (also the filter's name in logs and metrics).
    pub name: String,
    pub module: ModuleLocation,
    /// Expected sha256 (hex, lowercase) of the module, if the WasmFilter pins one.
    pub sha256: Option<String>,
    pub phase: Phase,
    pub priority: i32,
    pub fail_open: bool,
    /// Bytes handed to `proxy_on_configure`.
    pub config: Vec<u8>,
    pub memory_bytes: u64,
    pub call_timeout: Duration,
    pub scope: FilterScope,
}

/// Where a module is read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum ModuleLocation {
    File(PathBuf),
}

/// What a filter applies to; a request is in scope when any entry matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FilterScope {
    /// `namespace/name` of Gateways.
    pub gateways: Vec<String>,
    /// `namespace/name` of HTTPRoutes (matched against `tidegate.route`).
    pub routes: Vec<String>,
    /// `namespace/name` of Services (matched against `tidegate.cluster`).
    pub services: Vec<String>,
    /// Namespaces: their Gateways and, after routing, their routes.
    pub namespaces: Vec<String>,
}

pub(super) fn translate_wasm_filters(
    store: &ObjectStore,
    options: &TranslateOptions,
    statuses: &mut Vec<ObjectStatus>,
) -> Vec<UserFilterPlan> {
    let mut plans = Vec::new();
    for object in store.of_kind("WasmFilter") {
        let Object::WasmFilter(filter) = object else { continue };
        let namespace = filter.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let mut conditions = Conditions::new(filter.metadata.generation, &options.now);
        match plan(filter, &namespace, options.config_dir.as_deref()) {
            Ok(plan) => {
                conditions.set(reason::ACCEPTED, true, reason::ACCEPTED, "filter is valid");
                plans.push(plan);
            }
            Err(message) => conditions.set(reason::ACCEPTED, false, reason::INVALID, message),
        }
        statuses.push(ObjectStatus {
            api_version: "tidegate.dev/v1alpha1".into(),
            kind: "WasmFilter".into(),
            namespace,
            name: filter.metadata.name.clone(),
            status: json!({ "conditions": conditions.list }),
        });
    }
    // Chain order: phase, then priority (higher first), then name.
    plans.sort_by(|a, b| {
        a.phase
            .cmp(&b.phase)
            .then(b.priority.cmp(&a.priority))
            .then(a.name.cmp(&b.name))
    });
    plans
}

fn plan(filter: &WasmFilterObject, namespace: &str, config_dir: Option<&Path>) -> Result<UserFilterPlan, String> {
    let spec = &filter.spec;
    let module = match (
        &spec.module.file,
        &spec.module.http,
        &spec.module.oci,
        &spec.module.config_map,
    ) {
        (Some(file), None, None, None) => {
            let path = PathBuf::from(file);
            let path = match config_dir {
                Some(dir) if path.is_relative() => dir.join(path),
                _ => path,
            };
            ModuleLocation::File(path)
        }
        (None, None, None, None) => return Err("spec.module: set one of file, http, oci, configMap".into()),
        (None, Some(_), None, None) | (None, None, Some(_), None) | (None, None, None, Some(_)) => {
            return Err("spec.module: only `file` sources are supported so far; copy the module to the node and use spec.module.file".into());
        }
        _ => return Err("spec.module: set exactly one of file, http, oci, configMap".into()),
    };
    let sha256 = match &spec.module.sha256 {
        Some(digest) if digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(digest.to_ascii_lowercase())
        }
        Some(digest) => return Err(format!("spec.module.sha256 {digest:?} is not 64 hex digits")),
        None => None,
    };
    let limits = spec.limits.clone().unwrap_or_default();
    let memory_bytes = match &limits.memory {
        Some(q) => wasmfilter::parse_quantity(q).map_err(|e| format!("spec.limits.memory: {e}"))?,
        None => DEFAULT_MEMORY,
    };
    if memory_bytes < (1 << 20) {
        return Err(format!(
            "spec.limits.memory: {memory_bytes} bytes is too little for any module; give at least 1Mi"
        ));
    }
    let call_timeout = match &limits.call_timeout {
        Some(d) => wasmfilter::parse_duration(d).map_err(|e| format!("spec.limits.callTimeout: {e}"))?,
        None => DEFAULT_CALL_TIMEOUT,
    };
    if call_timeout.is_zero() {
        return Err("spec.limits.callTimeout must be more than 0".into());
    }
    let config = match &spec.config {
        None | Some(serde_json::Value::Null) => Vec::new(),
        // Envoy hands a StringValue configuration over as its raw bytes.
        Some(serde_json::Value::String(text)) => text.as_bytes().to_vec(),
        Some(value) => serde_json::to_vec(value).unwrap_or_default(),
    };
    let scope = scope(spec, namespace)?;
    Ok(UserFilterPlan {
        name: format!("{namespace}/{}", filter.metadata.name),
        module,
        sha256,
        phase: spec.phase,
        priority: spec.priority,
        fail_open: spec.failure_policy == FailurePolicyKind::FailOpen,
        config,
        memory_bytes,
        call_timeout,
        scope,
    })
}

fn scope(spec: &wasmfilter::WasmFilterSpec, namespace: &str) -> Result<FilterScope, String> {
    let mut scope = FilterScope::default();
    if spec.target_refs.is_empty() {
        scope.namespaces.push(namespace.to_string());
        return Ok(scope);
    }
    let after_routing = matches!(spec.phase, Phase::PostRouting | Phase::PostBalancing);
    for (index, target) in spec.target_refs.iter().enumerate() {
        let qualified = format!("{namespace}/{}", target.name);
        match (target.group.as_str(), target.kind.as_str()) {
            (GATEWAY_GROUP, "Gateway") => scope.gateways.push(qualified),
            (GATEWAY_GROUP, "HTTPRoute") | ("", "Service") if !after_routing => {
                return Err(format!(
                    "spec.targetRefs[{index}]: a {} is only known after routing; use phase PostRouting or PostBalancing",
                    target.kind
                ));
            }
            (GATEWAY_GROUP, "HTTPRoute") => scope.routes.push(qualified),
            ("", "Service") => scope.services.push(qualified),
            ("", "Namespace") => scope.namespaces.push(target.name.clone()),
            (group, kind) => {
                return Err(format!(
                    "spec.targetRefs[{index}]: {group}/{kind} is not a target; use gateway.networking.k8s.io Gateway or HTTPRoute, or core Service or Namespace"
                ));
            }
        }
    }
    Ok(scope)
}

impl FilterScope {
    /// Whether a request is in scope. `gateways` are the Gateways owning the socket the request
    /// came in on; `route` (`namespace/name/rule`) and `cluster` (`namespace/service:port`) are
    /// known once the router has run.
    pub fn applies(&self, gateways: &[&str], route: Option<&str>, cluster: Option<&str>) -> bool {
        let namespace_of = |qualified: &str| qualified.split('/').next().unwrap_or_default().to_string();
        let gateway_match = gateways
            .iter()
            .any(|g| self.gateways.iter().any(|t| t == g) || self.namespaces.contains(&namespace_of(g)));
        let route_name = route.map(|r| r.rsplit_once('/').map(|(name, _)| name).unwrap_or(r));
        let route_match = route_name
            .is_some_and(|r| self.routes.iter().any(|t| t == r) || self.namespaces.contains(&namespace_of(r)));
        let service = cluster.map(|c| c.rsplit_once(':').map(|(service, _)| service).unwrap_or(c));
        let service_match = service.is_some_and(|s| self.services.iter().any(|t| t == s));
        gateway_match || route_match || service_match
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_matches_gateways_routes_services_and_namespaces() {
        let scope = FilterScope {
            gateways: vec!["infra/gw".into()],
            routes: vec!["app/web".into()],
            services: vec!["app/api".into()],
            namespaces: vec!["team".into()],
        };
        assert!(scope.applies(&["infra/gw"], None, None));
        assert!(!scope.applies(&["infra/other"], None, None));
        assert!(
            scope.applies(&["team/any"], None, None),
            "a namespace target covers its Gateways"
        );
        assert!(scope.applies(&["infra/other"], Some("app/web/0"), None));
        assert!(
            scope.applies(&["infra/other"], Some("team/r/1"), None),
            "and its routes"
        );
        assert!(!scope.applies(&["infra/other"], Some("app/webby/0"), None));
        assert!(scope.applies(&["infra/other"], None, Some("app/api:8080")));
        assert!(!scope.applies(&["infra/other"], None, Some("app/apix:8080")));
    }
}
