//! The `WasmFilter` custom resource (`tidegate.dev/v1alpha1`): a user filter, where its module
//! comes from, what it applies to, where it sits in the chain, and its sandbox.
//!
//! These Rust types are the source of truth: `crds/wasmfilter.yaml` is generated from them
//! (`TIDEGATE_UPDATE_CRDS=1 cargo test --release -p tidegate --lib crd`) and a test fails when
//! the two differ.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A WebAssembly filter attached to Gateways, routes, Services or whole namespaces.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "tidegate.dev",
    version = "v1alpha1",
    kind = "WasmFilter",
    namespaced,
    shortname = "wf",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".spec.phase"}"#,
    printcolumn = r#"{"name":"Priority","type":"integer","jsonPath":".spec.priority"}"#,
    printcolumn = r#"{"name":"FailurePolicy","type":"string","jsonPath":".spec.failurePolicy"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct WasmFilterSpec {
    /// Where the compiled module (a proxy-wasm ABI v0.2.x `.wasm`) comes from.
    pub module: ModuleSource,
    /// What the filter applies to. Empty: every Gateway and route in the WasmFilter's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<TargetRef>,
    /// `HTTP` (default): the filter sees HTTP requests (proxy-wasm HTTP contexts). `NETWORK`:
    /// it sees TCP connections to the Services it targets (stream contexts:
    /// `proxy_on_new_connection`, downstream and upstream data, close), as Istio's WasmPlugin
    /// `type: NETWORK`.
    #[serde(default, rename = "type")]
    pub filter_type: FilterType,
    /// Where the filter runs relative to the standard policy, router and balancer filters.
    #[serde(default)]
    pub phase: Phase,
    /// Order within the phase: higher runs first; ties are broken by namespace/name.
    #[serde(default)]
    pub priority: i32,
    /// What happens to a request when the filter fails (trap, deadline, memory cap, or a module
    /// that cannot be loaded).
    #[serde(default)]
    pub failure_policy: FailurePolicyKind,
    /// Handed to `proxy_on_configure`: JSON when an object or array; the raw bytes when a
    /// string (as Envoy's StringValue configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "any_json")]
    pub config: Option<serde_json::Value>,
    /// Sandbox limits for the filter's VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
}

/// Exactly one of `file`, `http`, `oci`, `configMap`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModuleSource {
    /// A path on the node: absolute, or relative to the configuration directory in standalone mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// An `http://` or `https://` URL (server certificates checked against the node's trusted
    /// roots), fetched by the proxy in the background and retried with backoff until it
    /// succeeds. Fetched once per URL and `sha256`: the content is taken to be immutable, so
    /// publish a new module under a new URL, or change `sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// An OCI image reference (`registry/repository:tag` or `...@sha256:<digest>`; an `oci://`
    /// prefix is allowed): a Wasm OCI artifact (a layer of media type
    /// `application/vnd.module.wasm.content.layer.v1+wasm`) or an image with one uncompressed tar
    /// layer holding `plugin.wasm`. Pulled anonymously (HTTPS, or plain HTTP for registries on
    /// localhost), in the background, once per reference and `sha256`, like `http`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<String>,
    /// A key of `binaryData` of a ConfigMap in the WasmFilter's namespace
    /// (`kubectl create configmap NAME --from-file=KEY=filter.wasm`); edits of the ConfigMap
    /// reload the module.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapKeyRef>,
    /// Expected sha256 of the module (hex); a module with another digest is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// A key of a ConfigMap.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ConfigMapKeyRef {
    pub name: String,
    pub key: String,
}

/// An object the filter applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TargetRef {
    /// `gateway.networking.k8s.io` for Gateway and HTTPRoute, `""` (core) for Service and Namespace.
    #[serde(default)]
    pub group: String,
    /// `Gateway`, `HTTPRoute`, `Service` or `Namespace`.
    pub kind: String,
    /// The object's name (for `Namespace`, the namespace). Gateways, routes and Services are
    /// looked up in the WasmFilter's namespace.
    pub name: String,
}

/// What a filter sees: HTTP requests, or TCP connections.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FilterType {
    #[default]
    #[serde(rename = "HTTP")]
    Http,
    #[serde(rename = "NETWORK")]
    Network,
}

/// Where in the chain a filter runs: policy → user filters → router → balancer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Phase {
    /// Before the standard policy filter.
    PrePolicy,
    /// After policy, before the router: sees the request as the client sent it.
    #[default]
    PreRouting,
    /// After the router, before the balancer: sees `tidegate.route` and `tidegate.cluster`.
    PostRouting,
    /// After the balancer: sees `tidegate.endpoint`.
    PostBalancing,
}

/// `FailClosed` (default): the request fails with 500. `FailOpen`: the filter is skipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FailurePolicyKind {
    #[default]
    FailClosed,
    FailOpen,
}

/// Sandbox limits.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Linear-memory cap, a Kubernetes quantity (`32Mi`, `64M`, `1Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    /// Time one callback may run, a Gateway API duration (`50ms`, `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_timeout: Option<String>,
}

fn any_json(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-preserve-unknown-fields": true })
}

/// Parses a Kubernetes quantity into bytes (`32Mi`, `64M`, `1Gi`, `1048576`).
pub fn parse_quantity(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a quantity like 32Mi"))?;
    let scale: u64 = match suffix {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        _ => {
            return Err(format!(
                "{text:?}: unknown suffix {suffix:?}; use Ki, Mi, Gi, k, M or G"
            ));
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses a Gateway API duration (`50ms`, `1s`, `1m`, `1h`, combined like `1m30s`).
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{text:?} is not a duration like 50ms or 1s");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = std::time::Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let value: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (std::time::Duration::from_millis(1), 2)
        } else if rest.starts_with('s') {
            (std::time::Duration::from_secs(1), 1)
        } else if rest.starts_with('m') {
            (std::time::Duration::from_secs(60), 1)
        } else if rest.starts_with('h') {
            (std::time::Duration::from_secs(3600), 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        total += unit * u32::try_from(value).map_err(|_| bad())?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt as _;

    use super::*;

    const CRD_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds/wasmfilter.yaml");

    fn generated() -> String {
        let yaml = serde_yaml::to_string(&WasmFilter::crd()).expect("the CRD serializes");
        format!(
            "# Generated from runtime/src/config/wasmfilter.rs; do not edit.\n# Regenerate: TIDEGATE_UPDATE_CRDS=1 cargo test --release -p tidegate --lib crd\n{yaml}"
        )
    }

    #[test]
    fn crd_yaml_matches_the_rust_types() {
        let generated = generated();
        if std::env::var_os("TIDEGATE_UPDATE_CRDS").is_some() {
            std::fs::write(CRD_FILE, &generated).expect("write crds/wasmfilter.yaml");
        }
        let checked_in = std::fs::read_to_string(CRD_FILE).unwrap_or_default();
        assert!(
            checked_in == generated,
            "crds/wasmfilter.yaml differs from the Rust types; regenerate it with: \
             TIDEGATE_UPDATE_CRDS=1 cargo test --release -p tidegate --lib crd"
        );
    }

    #[test]
    fn quantities_and_durations() {
        assert_eq!(parse_quantity("32Mi"), Ok(32 << 20));
        assert_eq!(parse_quantity("1G"), Ok(1_000_000_000));
        assert_eq!(parse_quantity("4096"), Ok(4096));
        assert!(parse_quantity("32MB").is_err());
        assert_eq!(parse_duration("50ms"), Ok(std::time::Duration::from_millis(50)));
        assert_eq!(parse_duration("1m30s"), Ok(std::time::Duration::from_secs(90)));
        assert!(parse_duration("5 seconds").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn spec_defaults() {
        let spec: WasmFilterSpec =
            serde_json::from_value(serde_json::json!({"module": {"file": "f.wasm"}})).expect("parses");
        assert_eq!(spec.phase, Phase::PreRouting);
        assert_eq!(spec.failure_policy, FailurePolicyKind::FailClosed);
        assert_eq!(spec.priority, 0);
    }
}
