//! What the host knows about a cluster: its endpoints.
//!
//! The endpoints of a cluster come from the host service `tidegate.endpoints`, reached through
//! `proxy_call_foreign_function`. Every Service port the configuration knows is a cluster (not
//! only route backends). Outside tidegate (another proxy, a harness without host services) the
//! call answers `NOT_FOUND` and [`endpoints`] returns `None`.
//!
//! The `tidegate.endpoints` contract: the argument is a cluster name (`namespace/service:port`,
//! as [`cluster`](crate::cluster) returns it; `service.namespace.svc.cluster.local:port` is
//! accepted too); an unknown cluster is `BAD_ARGUMENT` (`None` here); the answer
//! is a proxy-wasm map (the ABI's header-map serialization) with one entry per ready endpoint:
//! the key is its `ip:port`, the value its attributes as `key=value` pairs joined by `&`
//! (`zone=eu-west-1a&active=3`; may be empty). An empty map is a cluster with no ready
//! endpoint. Any other answer is `None`. Nothing here ever panics.

use std::net::SocketAddr;

use crate::sys;

/// The host service that answers a cluster's endpoints.
pub const ENDPOINTS_FUNCTION: &str = "tidegate.endpoints";

/// One ready endpoint of a cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Endpoint {
    /// Where the host connects to.
    pub address: SocketAddr,
    /// What the host knows about it, e.g. `zone` (topology zone) or `active` (requests in
    /// flight from this node), in the order given.
    pub attributes: Vec<(String, String)>,
}

// === impl Endpoint ===

impl Endpoint {
    /// The value of attribute `key`.
    ///
    /// ```no_run
    /// let local = tidegate_sdk::endpoints("demo/echo-v1:80")
    ///     .unwrap_or_default()
    ///     .into_iter()
    ///     .filter(|e| e.attribute("zone") == Some("eu-west-1a"))
    ///     .count();
    /// # let _ = local;
    /// ```
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn parse(address: &str, attributes: &str) -> Option<Self> {
        let attributes = attributes
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| match pair.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (pair.to_string(), String::new()),
            })
            .collect();
        Some(Endpoint {
            address: address.parse().ok()?,
            attributes,
        })
    }
}

/// The ready endpoints of `cluster` (`namespace/service:port`); `None` for a cluster the host
/// does not know, outside tidegate, and on any error.
///
/// ```no_run
/// if let Some(cluster) = tidegate_sdk::cluster() {
///     match tidegate_sdk::endpoints(&cluster) {
///         Some(all) if all.is_empty() => { /* no ready endpoint: answer 503 yourself? */ }
///         Some(all) => tidegate_sdk::set_endpoint(&all[0].address.to_string()),
///         None => { /* leave it to the balancer */ }
///     }
/// }
/// ```
pub fn endpoints(cluster: &str) -> Option<Vec<Endpoint>> {
    // An answer without data is an empty map: a known cluster with no ready endpoint.
    let answer = sys::call_foreign_function(ENDPOINTS_FUNCTION, cluster.as_bytes())
        .ok()?
        .unwrap_or_default();
    sys::deserialize_map(&answer)?
        .iter()
        .map(|(address, attributes)| Endpoint::parse(address, attributes))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_entries_decode() {
        let e = Endpoint::parse("10.0.0.7:3000", "zone=a&active=3&flag").expect("valid");
        assert_eq!(e.address, SocketAddr::from(([10, 0, 0, 7], 3000)));
        assert_eq!(e.attribute("zone"), Some("a"));
        assert_eq!(e.attribute("active"), Some("3"));
        assert_eq!(e.attribute("flag"), Some(""));
        assert_eq!(Endpoint::parse("[::1]:80", "").map(|e| e.attributes), Some(Vec::new()));
        assert_eq!(Endpoint::parse("not-an-address", ""), None);
    }

    #[test]
    fn natively_there_are_no_endpoints() {
        assert_eq!(endpoints("demo/echo-v1:80"), None);
    }
}
