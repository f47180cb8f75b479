//! Who is talking to whom: the addresses of the request's two ends, and the workloads behind
//! them.
//!
//! **Addresses** come from the standard proxy-wasm properties `source.address` (the client, as
//! the proxy sees it: with `--capture`, the pod's own address) and `destination.address` (the
//! address the client connected to), which tidegate sets on every request. They work today.
//!
//! **Workloads** (a pod's namespace, name, service account and labels) come from the host
//! service `tidegate.workload`, reached through `proxy_call_foreign_function`, which knows the
//! Pods of the configuration (in standalone mode: Pod objects in the config directory, matched
//! by `status.podIP`/`status.podIPs`). An address no pod has gives `None`, as does a host
//! without the service.
//!
//! The `tidegate.workload` contract: the argument is an IP address as text (`10.0.0.7`;
//! `ip:port` is accepted too); the answer is a proxy-wasm map (the ABI's header-map
//! serialization) with the keys `namespace`, `name`, `service_account` and one `label/<key>` per
//! pod label. Any other answer, malformed or not, is `None`. Nothing here ever panics.

use std::net::{IpAddr, SocketAddr};

use crate::decision::get_string;
use crate::sys;

/// Property path of the client's address (`ip:port`).
pub const SOURCE_ADDRESS: [&str; 2] = ["source", "address"];
/// Property path of the address the client connected to (`ip:port`).
pub const DESTINATION_ADDRESS: [&str; 2] = ["destination", "address"];
/// The host service that answers a workload's identity.
pub const WORKLOAD_FUNCTION: &str = "tidegate.workload";

/// A Kubernetes workload (a pod) as the host knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Workload {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's service account, if the host reported one.
    pub service_account: Option<String>,
    /// The pod's labels, in the order the host gave them.
    pub labels: Vec<(String, String)>,
}

// === impl Workload ===

impl Workload {
    /// The value of label `key`.
    ///
    /// ```no_run
    /// let is_frontend = tidegate_sdk::source_workload()
    ///     .is_some_and(|w| w.label("app") == Some("frontend"));
    /// # let _ = is_frontend;
    /// ```
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// Decodes a `tidegate.workload` answer; `None` without `namespace` and `name`.
    pub(crate) fn from_pairs(pairs: Vec<(String, String)>) -> Option<Self> {
        let mut workload = Workload::default();
        for (key, value) in pairs {
            match key.as_str() {
                "namespace" => workload.namespace = value,
                "name" => workload.name = value,
                "service_account" => workload.service_account = Some(value).filter(|v| !v.is_empty()),
                _ => {
                    if let Some(label) = key.strip_prefix("label/") {
                        workload.labels.push((label.to_string(), value));
                    }
                }
            }
        }
        (!workload.namespace.is_empty() && !workload.name.is_empty()).then_some(workload)
    }
}

/// The client's address (`source.address`): the downstream peer of the connection.
///
/// ```no_run
/// if let Some(client) = tidegate_sdk::source_address() {
///     let local = client.ip().is_loopback();
///     # let _ = local;
/// }
/// ```
pub fn source_address() -> Option<SocketAddr> {
    get_string(&SOURCE_ADDRESS)?.parse().ok()
}

/// The address the client connected to (`destination.address`): the Gateway listener's
/// address, or with `--capture` the original destination (a Service VIP or a pod).
///
/// ```no_run
/// let port = tidegate_sdk::destination_address().map(|a| a.port());
/// # let _ = port;
/// ```
pub fn destination_address() -> Option<SocketAddr> {
    get_string(&DESTINATION_ADDRESS)?.parse().ok()
}

/// The workload that sent the request; `None` when the client is not a pod the host knows.
///
/// ```no_run
/// match tidegate_sdk::source_workload() {
///     Some(w) => tidegate_sdk::log::info!("from {}/{}", w.namespace, w.name),
///     None => tidegate_sdk::log::info!("from outside the cluster"),
/// }
/// ```
pub fn source_workload() -> Option<Workload> {
    workload(source_address()?.ip())
}

/// The workload the request was sent to; `None` when it is not a pod the host knows.
///
/// ```no_run
/// let namespace = tidegate_sdk::destination_workload().map(|w| w.namespace);
/// # let _ = namespace;
/// ```
pub fn destination_workload() -> Option<Workload> {
    workload(destination_address()?.ip())
}

/// The workload at `ip`, asked of the host service `tidegate.workload`; `None` when no pod has
/// that address, outside tidegate, and on any error.
///
/// ```no_run
/// let peer = tidegate_sdk::workload("10.0.0.7".parse().unwrap());
/// # let _ = peer;
/// ```
pub fn workload(ip: IpAddr) -> Option<Workload> {
    let answer = sys::call_foreign_function(WORKLOAD_FUNCTION, ip.to_string().as_bytes())
        .ok()
        .flatten()?;
    Workload::from_pairs(sys::deserialize_map(&answer)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_answers_decode() {
        let answer = sys::serialize_map(&[
            ("namespace", "demo"),
            ("name", "echo-v1-0"),
            ("service_account", "echo"),
            ("label/app", "echo"),
            ("label/version", "v1"),
            ("future-key", "ignored"),
        ]);
        let workload = Workload::from_pairs(sys::deserialize_map(&answer).expect("well formed")).expect("complete");
        assert_eq!(workload.namespace, "demo");
        assert_eq!(workload.name, "echo-v1-0");
        assert_eq!(workload.service_account.as_deref(), Some("echo"));
        assert_eq!(workload.label("version"), Some("v1"));
        assert_eq!(workload.label("missing"), None);
        assert_eq!(Workload::from_pairs(vec![("namespace".into(), "demo".into())]), None);
    }

    #[test]
    fn natively_there_is_no_identity() {
        assert_eq!(source_address(), None);
        assert_eq!(destination_address(), None);
        assert_eq!(source_workload(), None);
        assert_eq!(destination_workload(), None);
        assert_eq!(workload(IpAddr::from([10, 0, 0, 7])), None);
    }
}
