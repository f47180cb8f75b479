//! The conformance case format of `shared/conformance/README.md`, as serde types.
//! The model carries every field of the format, also those the runner only reports or
//! deliberately ignores (`ignored_upstream_fields`, `notes`, gRPC fields...).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

/// One `gateway-api/*.json` file.
#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default)]
    pub manifests: Vec<Value>,
    #[serde(default)]
    pub runtime_generated_objects: Vec<GeneratedObject>,
    #[serde(default)]
    pub steps: Vec<Step>,
    #[serde(default)]
    pub later_steps: Vec<Step>,
    #[serde(default)]
    pub requests: Vec<CaseRequest>,
    #[serde(default)]
    pub expect: Vec<Expect>,
    #[serde(default)]
    pub status_checks: Vec<StatusCheck>,
    #[serde(default)]
    pub extra_checks: Vec<ExtraCheck>,
    #[serde(default)]
    pub notes: Vec<String>,
}

/// An object upstream generates at run time (TLS Secrets).
#[derive(Debug, Clone, Deserialize)]
pub struct GeneratedObject {
    pub kind: String,
    #[serde(rename = "type", default)]
    pub type_: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default)]
    pub how: String,
}

/// A mid-case mutation.
#[derive(Debug, Clone, Deserialize)]
pub struct Step {
    pub step: u32,
    pub action: String,
    #[serde(default)]
    pub object: Option<Value>,
    #[serde(default)]
    pub manifests: Vec<Value>,
    #[serde(default)]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CaseRequest {
    pub id: u64,
    /// `namespace/name` of the Gateway.
    pub gateway: String,
    pub listener_port: u16,
    /// `http`, `https` or `grpc`.
    pub scheme: String,
    #[serde(default)]
    pub sni: Option<String>,
    /// Host header; empty or absent = the gateway address.
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `H2` (HTTP/2 over TLS), `H2C_PRIOR_KNOWLEDGE`; absent = HTTP/1.1.
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub follow_redirects: Option<bool>,
    #[serde(default)]
    pub backend_set_response_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub case_name: Option<String>,
    #[serde(default)]
    pub step: Option<u32>,
    #[serde(default)]
    pub grpc_service: Option<String>,
    #[serde(default)]
    pub grpc_method: Option<String>,
}

impl CaseRequest {
    pub fn method(&self) -> &str {
        match self.method.as_deref() {
            Some(m) if !m.is_empty() => m,
            _ => "GET",
        }
    }

    pub fn path(&self) -> &str {
        match self.path.as_deref() {
            Some(p) if !p.is_empty() => p,
            _ => "/",
        }
    }

    pub fn is_grpc(&self) -> bool {
        self.scheme.eq_ignore_ascii_case("grpc") || self.grpc_service.is_some()
    }

    /// A short human description for failure messages.
    pub fn describe(&self) -> String {
        let host = match self.host.as_deref() {
            Some(h) if !h.is_empty() => format!(" host={h}"),
            _ => String::new(),
        };
        let name = self.case_name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default();
        format!(
            "request {} [{} {}://…:{}{}{}{}]{}",
            self.id,
            self.method(),
            self.scheme,
            self.listener_port,
            self.path(),
            host,
            self.protocol.as_deref().map(|p| format!(" {p}")).unwrap_or_default(),
            name
        )
    }
}

/// `{name, namespace}` of the Service/Deployment that must serve a request.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct BackendRef {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MirrorRef {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub percent: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RedirectExpect {
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub port: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Expect {
    pub id: u64,
    /// Acceptable status codes (default `[200]`).
    #[serde(default)]
    pub status: Option<Vec<u16>>,
    /// Absent and `null` mean the same: namespace `""` and any pod.
    #[serde(default)]
    pub backend: Option<BackendRef>,
    #[serde(default)]
    pub answered_by_gateway: bool,
    #[serde(default)]
    pub method_at_backend: Option<String>,
    #[serde(default)]
    pub path_at_backend: Option<String>,
    #[serde(default)]
    pub host_at_backend: Option<String>,
    #[serde(default)]
    pub request_headers_at_backend: BTreeMap<String, String>,
    #[serde(default)]
    pub absent_headers: Vec<String>,
    #[serde(default)]
    pub response_headers: BTreeMap<String, String>,
    #[serde(default)]
    pub response_header_alternatives: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub absent_response_headers: Vec<String>,
    #[serde(default)]
    pub ignore_whitespace_in_response_headers: bool,
    #[serde(default)]
    pub redirect: Option<RedirectExpect>,
    #[serde(default)]
    pub redirect_location: Option<String>,
    #[serde(default)]
    pub mirrored_to: Vec<MirrorRef>,
    #[serde(default)]
    pub ignored_upstream_fields: Option<Value>,
    #[serde(default)]
    pub grpc_status: Option<Value>,
    #[serde(default)]
    pub fully_qualified_method_at_backend: Option<String>,
}

impl Expect {
    pub fn statuses(&self) -> Vec<u16> {
        match &self.status {
            Some(s) if !s.is_empty() => s.clone(),
            _ => vec![200],
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StatusCheck {
    pub check: String,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub route: Option<String>,
    #[serde(default)]
    pub routes: Vec<String>,
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub section_names: Vec<String>,
    #[serde(default)]
    pub condition: Option<Condition>,
    #[serde(default)]
    pub meaning: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ExtraCheck {
    pub check: String,
    #[serde(default)]
    pub request_template_id: Option<u64>,
    #[serde(default)]
    pub total_requests: Option<u32>,
    #[serde(default)]
    pub concurrency: Option<u32>,
    #[serde(default)]
    pub tolerance_abs_fraction: Option<f64>,
    #[serde(default)]
    pub tolerance_std_devs: Option<f64>,
    #[serde(default)]
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub expected_fractions: BTreeMap<String, f64>,
    #[serde(default)]
    pub per_request: bool,
    #[serde(default)]
    pub repetitions: Option<u32>,
    #[serde(default)]
    pub meaning: Option<String>,
}

/// `namespace/name` → (namespace, name); a bare name gets `default_ns`.
pub fn split_ns_name<'a>(s: &'a str, default_ns: &'a str) -> (&'a str, &'a str) {
    match s.split_once('/') {
        Some((ns, name)) => (ns, name),
        None => (default_ns, s),
    }
}

/// The directory holding the case files: `TIDEGATE_CONFORMANCE_DIR`, else the shared suite.
pub fn cases_dir() -> PathBuf {
    match std::env::var_os("TIDEGATE_CONFORMANCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/conformance")).join("gateway-api"),
    }
}

/// Every `*.json` case in `dir`, sorted by file name.
pub fn load_cases(dir: &Path) -> Result<Vec<Case>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            serde_json::from_str::<Case>(&text).map_err(|e| format!("{} is not a valid case: {e}", path.display()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shipped_case_parses() {
        let dir = cases_dir();
        assert!(
            dir.is_dir(),
            "the Gateway API conformance cases are not at {}: check out the shared conformance data beside the repository or set TIDEGATE_CONFORMANCE_DIR",
            dir.display()
        );
        let cases = load_cases(&dir).expect("cases parse");
        assert!(!cases.is_empty());
        for case in &cases {
            assert_eq!(
                case.requests.len(),
                case.expect.len(),
                "{}: requests and expect pair up",
                case.name
            );
            for (r, e) in case.requests.iter().zip(&case.expect) {
                assert_eq!(r.id, e.id, "{}: ids pair up", case.name);
            }
        }
    }

    #[test]
    fn backend_null_and_absent_are_equal() {
        let a: Expect = serde_json::from_str(r#"{"id":0,"backend":null}"#).expect("parses");
        let b: Expect = serde_json::from_str(r#"{"id":0}"#).expect("parses");
        assert!(a.backend.is_none() && b.backend.is_none());
        assert_eq!(a.statuses(), vec![200]);
    }
}
