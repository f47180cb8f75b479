//! Gateway API status, computed: the same conditions a cluster would see on the objects.

use serde::Serialize;

use crate::config::objects::ParentReference;

/// One object's computed status.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    pub api_version: String,
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
    pub status: serde_json::Value,
}

/// `metav1.Condition`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub observed_generation: i64,
    pub last_transition_time: String,
}

/// Builds conditions that share a generation and a timestamp.
#[derive(Debug, Clone)]
pub struct Conditions {
    generation: i64,
    now: String,
    pub list: Vec<Condition>,
}

impl Conditions {
    pub fn new(generation: Option<i64>, now: &str) -> Self {
        Self {
            generation: generation.unwrap_or(1),
            now: now.to_string(),
            list: Vec::new(),
        }
    }

    pub fn set(&mut self, kind: &str, ok: bool, reason: &str, message: impl Into<String>) {
        let condition = Condition {
            kind: kind.to_string(),
            status: if ok { "True" } else { "False" }.to_string(),
            reason: reason.to_string(),
            message: message.into(),
            observed_generation: self.generation,
            last_transition_time: self.now.clone(),
        };
        match self.list.iter_mut().find(|c| c.kind == kind) {
            Some(existing) => *existing = condition,
            None => self.list.push(condition),
        }
    }

    pub fn is_true(&self, kind: &str) -> bool {
        self.list.iter().any(|c| c.kind == kind && c.status == "True")
    }
}

/// `status.listeners[]` of a Gateway.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    pub name: String,
    pub supported_kinds: Vec<serde_json::Value>,
    pub attached_routes: u32,
    pub conditions: Vec<Condition>,
}

/// `status.parents[]` of a route.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    pub parent_ref: ParentReference,
    pub controller_name: String,
    pub conditions: Vec<Condition>,
}

/// Condition types and reasons, as the Gateway API spells them.
pub mod reason {
    pub const ACCEPTED: &str = "Accepted";
    pub const PROGRAMMED: &str = "Programmed";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const CONFLICTED: &str = "Conflicted";
    pub const NO_CONFLICTS: &str = "NoConflicts";
    pub const INVALID: &str = "Invalid";
    pub const INVALID_PARAMETERS: &str = "InvalidParameters";
    pub const LISTENERS_NOT_VALID: &str = "ListenersNotValid";
    pub const UNSUPPORTED_PROTOCOL: &str = "UnsupportedProtocol";
    pub const PROTOCOL_CONFLICT: &str = "ProtocolConflict";
    pub const HOSTNAME_CONFLICT: &str = "HostnameConflict";
    pub const INVALID_CERTIFICATE_REF: &str = "InvalidCertificateRef";
    pub const INVALID_ROUTE_KINDS: &str = "InvalidRouteKinds";
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
    pub const NO_MATCHING_PARENT: &str = "NoMatchingParent";
    pub const NOT_ALLOWED_BY_LISTENERS: &str = "NotAllowedByListeners";
    pub const NO_MATCHING_LISTENER_HOSTNAME: &str = "NoMatchingListenerHostname";
    pub const UNSUPPORTED_VALUE: &str = "UnsupportedValue";
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    pub const INVALID_KIND: &str = "InvalidKind";
    pub const UNSUPPORTED_PROTOCOL_BACKEND: &str = "UnsupportedProtocol";
}
