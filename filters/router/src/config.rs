//! The router's configuration: what the host hands to `proxy_on_configure` as JSON.
//!
//! The match and filter types are the Gateway API HTTPRoute types with their upstream JSON names,
//! so the host parses HTTPRoute objects straight into them and passes rules through unchanged;
//! only `backendRefs` are replaced by resolved [`Backend`]s.

use serde::{Deserialize, Serialize};

/// Everything the router needs: every Gateway listener served by this process, with the routes
/// attached to it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouterConfig {
    /// Listeners in no particular order; several may share a port.
    #[serde(default)]
    pub listeners: Vec<Listener>,
    /// GAMMA: the Service ports that have HTTPRoutes attached (parentRef kind `Service`). A
    /// request to a Service frontend (`tidegate.service`) whose port has none goes to the
    /// Service itself, as if there were no mesh.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceRoutes>,
}

/// The HTTPRoutes attached to one Service port (Gateway API GEP-1294, "xRoutes Mesh Binding").
/// They apply to requests whose destination is the Service's frontend, whatever their Host.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRoutes {
    /// `namespace/name` of the Service.
    pub service: String,
    pub port: u16,
    /// Routes in the Service's own namespace: they serve clients of every namespace that has
    /// no consumer routes of its own for this port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub producer: Vec<Route>,
    /// Routes from other namespaces, by that namespace: they serve only clients in it, and
    /// replace the producer routes for them (the two sets are never merged).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub consumers: std::collections::BTreeMap<String, Vec<Route>>,
}

/// One Gateway listener and the routes attached to it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    /// `namespace/name` of the Gateway.
    pub gateway: String,
    /// The listener's name (its sectionName).
    pub name: String,
    /// The listener's port as written in the Gateway (the host may bind another port in tests).
    pub port: u16,
    /// `HTTP` or `HTTPS`.
    pub protocol: String,
    /// The listener hostname (may start with `*.`); `None` matches every host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Routes attached to this listener (already checked for allowedRoutes and parentRefs).
    #[serde(default)]
    pub routes: Vec<Route>,
}

/// An HTTPRoute, as attached to one listener.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Route {
    pub namespace: String,
    pub name: String,
    /// RFC 3339 creation timestamp; older routes win ties (Gateway API precedence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// `spec.hostnames` as written (the router intersects them with the listener hostname).
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// One HTTPRoute rule.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// Empty means one match of path prefix `/`.
    #[serde(default)]
    pub matches: Vec<HttpRouteMatch>,
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
    /// Resolved backendRefs. Empty (and no redirect filter) means the rule answers 500.
    #[serde(default)]
    pub backends: Vec<Backend>,
}

/// A resolved backendRef.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    /// The cluster to send to; `None` when the backendRef does not resolve (the share of
    /// requests it would get is answered with 500, as the Gateway API requires).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Relative weight (default 1); 0 never receives traffic.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Filters of the backendRef itself, applied after the rule's filters.
    #[serde(default)]
    pub filters: Vec<HttpRouteFilter>,
}

fn default_weight() -> u32 {
    1
}

// --- Gateway API HTTPRoute types, upstream JSON names ---

/// `HTTPRouteMatch`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HttpHeaderMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<HttpQueryParamMatch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// `HTTPPathMatch`; `type` defaults to `PathPrefix` and `value` to `/`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpPathMatch {
    #[serde(rename = "type", default = "default_path_match_type")]
    pub kind: PathMatchType,
    #[serde(default = "default_path_value")]
    pub value: String,
}

impl Default for HttpPathMatch {
    fn default() -> Self {
        Self {
            kind: PathMatchType::PathPrefix,
            value: "/".to_string(),
        }
    }
}

fn default_path_match_type() -> PathMatchType {
    PathMatchType::PathPrefix
}

fn default_path_value() -> String {
    "/".to_string()
}

/// `PathMatchType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathMatchType {
    Exact,
    PathPrefix,
    RegularExpression,
}

/// `HeaderMatchType` / `QueryParamMatchType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum ValueMatchType {
    #[default]
    Exact,
    RegularExpression,
}

/// `HTTPHeaderMatch`; names compare case-insensitively.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpHeaderMatch {
    #[serde(rename = "type", default)]
    pub kind: ValueMatchType,
    pub name: String,
    pub value: String,
}

/// `HTTPQueryParamMatch`; names compare exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpQueryParamMatch {
    #[serde(rename = "type", default)]
    pub kind: ValueMatchType,
    pub name: String,
    pub value: String,
}

/// `HTTPRouteFilter`: `type` says which of the optional members is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteFilter {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HttpHeaderFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HttpHeaderFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<HttpRequestRedirectFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<HttpUrlRewriteFilter>,
}

/// Filter type names the router implements.
pub mod filter_type {
    pub const REQUEST_HEADER_MODIFIER: &str = "RequestHeaderModifier";
    pub const RESPONSE_HEADER_MODIFIER: &str = "ResponseHeaderModifier";
    pub const REQUEST_REDIRECT: &str = "RequestRedirect";
    pub const URL_REWRITE: &str = "URLRewrite";
}

/// `HTTPHeaderFilter`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpHeaderFilter {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HttpHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HttpHeader>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// `HTTPHeader`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpHeader {
    pub name: String,
    pub value: String,
}

/// `HTTPRequestRedirectFilter`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRequestRedirectFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathModifier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Defaults to 302.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
}

/// `HTTPURLRewriteFilter`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpUrlRewriteFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<HttpPathModifier>,
}

/// `HTTPPathModifier`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpPathModifier {
    #[serde(rename = "type")]
    pub kind: PathModifierType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

/// `HTTPPathModifierType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathModifierType {
    ReplaceFullPath,
    ReplacePrefixMatch,
}
