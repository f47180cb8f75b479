//! WasmFilter objects → the user filters of the plan: where the module is, what it applies to,
//! where it runs and its sandbox. Loading the module is I/O and happens after translation
//! (see `crate::modules`); this only validates and resolves.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use serde::Serialize;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::TranslateOptions;
use super::status::{Conditions, ObjectStatus, reason};
use crate::config::ObjectStore;
use crate::config::objects::{ConfigMap, GATEWAY_GROUP, Object, WasmFilterObject};
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
    /// `type: NETWORK`: the filter sees TCP connections (stream contexts), not HTTP requests.
    pub network: bool,
}

/// Where a module is read from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub enum ModuleLocation {
    File(PathBuf),
    /// `spec.module.configMap`: the module as the ConfigMap holds it when translating (so an
    /// edit of the ConfigMap reloads it), or why it cannot be read from it.
    ConfigMap {
        /// `namespace/name` of the ConfigMap.
        object: String,
        key: String,
        content: Result<ModuleBytes, String>,
    },
    /// `spec.module.http`: an `http://` or `https://` URL, fetched in the background.
    Http(String),
    /// `spec.module.oci`: an image reference, pulled in the background.
    Oci(String),
}

/// Module bytes carried in the plan; compared, hashed and shown (`/config_dump`) by digest.
#[derive(Clone)]
pub struct ModuleBytes {
    pub bytes: Arc<[u8]>,
    /// sha256 of `bytes`, hex.
    pub sha256: String,
}

impl ModuleBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        let sha256 = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        Self {
            bytes: bytes.into(),
            sha256,
        }
    }
}

impl PartialEq for ModuleBytes {
    fn eq(&self, other: &Self) -> bool {
        self.sha256 == other.sha256
    }
}

impl Eq for ModuleBytes {}

impl std::hash::Hash for ModuleBytes {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.sha256.hash(state);
    }
}

impl std::fmt::Debug for ModuleBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ModuleBytes({} bytes, sha256 {})", self.bytes.len(), self.sha256)
    }
}

impl Serialize for ModuleBytes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        json!({ "sha256": self.sha256, "size": self.bytes.len() }).serialize(serializer)
    }
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
        match plan(store, filter, &namespace, options.config_dir.as_deref()) {
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

fn plan(
    store: &ObjectStore,
    filter: &WasmFilterObject,
    namespace: &str,
    config_dir: Option<&Path>,
) -> Result<UserFilterPlan, String> {
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
        (None, Some(url), None, None) => {
            crate::modules::http::parse_url(url).map_err(|e| format!("spec.module.http: {e}"))?;
            ModuleLocation::Http(url.clone())
        }
        (None, None, Some(reference), None) => {
            crate::modules::oci::Reference::parse(reference)
                .map_err(|e| format!("spec.module.oci {reference:?}: {e}"))?;
            ModuleLocation::Oci(reference.clone())
        }
        (None, None, None, Some(config_map)) => {
            if config_map.name.is_empty() || config_map.key.is_empty() {
                return Err("spec.module.configMap: set both name and key".into());
            }
            ModuleLocation::ConfigMap {
                object: format!("{namespace}/{}", config_map.name),
                key: config_map.key.clone(),
                content: config_map_module(store, namespace, &config_map.name, &config_map.key),
            }
        }
        (None, None, None, None) => return Err("spec.module: set one of file, http, oci, configMap".into()),
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
        network: spec.filter_type == wasmfilter::FilterType::Network,
    })
}

/// The module in `binaryData[key]` of ConfigMap `namespace/name`, or what is wrong with it.
fn config_map_module(store: &ObjectStore, namespace: &str, name: &str, key: &str) -> Result<ModuleBytes, String> {
    let field = "spec.module.configMap";
    let Some(Object::ConfigMap(config_map)) = store.get("ConfigMap", namespace, name) else {
        return Err(format!(
            "{field}: ConfigMap {namespace}/{name} not found; create it in the WasmFilter's namespace (kubectl create configmap {name} -n {namespace} --from-file={key}=FILTER.wasm) or fix {field}.name"
        ));
    };
    let Some(encoded) = config_map.binary_data.get(key) else {
        return Err(missing_key(config_map, namespace, name, key));
    };
    // Kubernetes writes one line; YAML written by hand may wrap it.
    let compact: String = encoded.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = base64::engine::general_purpose::STANDARD.decode(compact).map_err(|e| {
        format!(
            "{field}: ConfigMap {namespace}/{name} binaryData.{key} is not valid base64 ({e}); recreate it with kubectl create configmap --from-file"
        )
    })?;
    Ok(ModuleBytes::new(bytes))
}

fn missing_key(config_map: &ConfigMap, namespace: &str, name: &str, key: &str) -> String {
    let field = "spec.module.configMap";
    if config_map.data.contains_key(key) {
        return format!(
            "{field}: ConfigMap {namespace}/{name} has key {key} in data, which holds text; a module is binary: put it in binaryData (kubectl create configmap --from-file does)"
        );
    }
    let keys: Vec<&str> = config_map.binary_data.keys().map(String::as_str).collect();
    format!(
        "{field}: ConfigMap {namespace}/{name} has no key {key} in binaryData (keys: {}); fix {field}.key or add the module under that key",
        if keys.is_empty() {
            "none".to_string()
        } else {
            keys.join(", ")
        }
    )
}

fn scope(spec: &wasmfilter::WasmFilterSpec, namespace: &str) -> Result<FilterScope, String> {
    let mut scope = FilterScope::default();
    if spec.target_refs.is_empty() {
        scope.namespaces.push(namespace.to_string());
        return Ok(scope);
    }
    let after_routing = matches!(spec.phase, Phase::PostRouting | Phase::PostBalancing);
    let network = spec.filter_type == wasmfilter::FilterType::Network;
    for (index, target) in spec.target_refs.iter().enumerate() {
        let qualified = format!("{namespace}/{}", target.name);
        match (target.group.as_str(), target.kind.as_str()) {
            ("", "Service") if network => scope.services.push(qualified),
            (GATEWAY_GROUP, _) if network => {
                return Err(format!(
                    "spec.targetRefs[{index}]: a NETWORK filter sees TCP connections to Services; target a core Service or Namespace, or make it an HTTP filter"
                ));
            }
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
    /// Whether a TCP connection to Service `service` (`namespace/name`) is in a NETWORK
    /// filter's scope: the Service is a target, or its namespace is.
    pub fn applies_to_connection(&self, service: &str) -> bool {
        let namespace = service.split('/').next().unwrap_or_default();
        self.services.iter().any(|s| s == service) || self.namespaces.iter().any(|n| n == namespace)
    }

    /// Whether a request is in scope. `gateways` are the Gateways owning the socket the request
    /// came in on, comma-separated (the `tidegate.gateways` property); `frontend` the Service
    /// whose frontend an east-west request was sent to (`tidegate.service`); `route`
    /// (`namespace/name/rule`) and `cluster` (`namespace/service:port`) are known once the
    /// router has run. A Service target matches requests to its frontend and requests routed
    /// to it.
    pub fn applies(&self, gateways: &str, frontend: Option<&str>, route: Option<&str>, cluster: Option<&str>) -> bool {
        // Per request: compare borrowed slices, allocate nothing.
        let in_namespaces = |qualified: &str| {
            let namespace = qualified.split('/').next().unwrap_or_default();
            self.namespaces.iter().any(|n| n == namespace)
        };
        let gateway_match = gateways
            .split(',')
            .filter(|g| !g.is_empty())
            .any(|g| self.gateways.iter().any(|t| t == g) || in_namespaces(g));
        let route_name = route.map(|r| r.rsplit_once('/').map(|(name, _)| name).unwrap_or(r));
        let route_match = route_name.is_some_and(|r| self.routes.iter().any(|t| t == r) || in_namespaces(r));
        let service = cluster.map(|c| c.rsplit_once(':').map(|(service, _)| service).unwrap_or(c));
        let service_match = service
            .into_iter()
            .chain(frontend)
            .any(|s| self.services.iter().any(|t| t == s));
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
        assert!(scope.applies("infra/gw", None, None, None));
        assert!(!scope.applies("infra/other", None, None, None));
        assert!(
            scope.applies("team/any", None, None, None),
            "a namespace target covers its Gateways"
        );
        assert!(scope.applies("infra/other", None, Some("app/web/0"), None));
        assert!(
            scope.applies("infra/other", None, Some("team/r/1"), None),
            "and its routes"
        );
        assert!(!scope.applies("infra/other", None, Some("app/webby/0"), None));
        assert!(scope.applies("infra/other", None, None, Some("app/api:8080")));
        assert!(!scope.applies("infra/other", None, None, Some("app/apix:8080")));
        // East-west: a request to the Service's frontend, before any route chose a cluster.
        assert!(scope.applies("", Some("app/api"), None, None));
        assert!(!scope.applies("", Some("app/apix"), None, None));
    }
}
