//! The routing decision a request carries through the filter chain.
//!
//! The host writes where the request arrived (the listener port, the Gateway), the router writes
//! the route and the cluster, the balancer writes the endpoint, and the host connects to that
//! endpoint once the chain has run. Any filter may read them; a filter placed after the router
//! (phase `PostRouting`) may overwrite the cluster, for example to steer a canary, and one placed
//! after the balancer (`PostBalancing`) may overwrite the endpoint.
//!
//! Each value is a property under `tidegate.*`, stored as UTF-8 text:
//!
//! | property | written by | format | example |
//! |---|---|---|---|
//! | `tidegate.listener_port` | host | decimal port | `8080` |
//! | `tidegate.gateway` | host | `namespace/name` | `demo/quickstart` |
//! | `tidegate.route` | router | `namespace/name/rule-index` | `demo/web/1` |
//! | `tidegate.cluster` | router | `namespace/service:port` | `demo/echo-v1:80` |
//! | `tidegate.endpoint` | balancer | `ip:port` | `10.0.0.7:3000` |
//!
//! Readers return `None` when the value is not there (not written yet in this phase, or the
//! filter runs in another proxy-wasm host), and never panic. Writers must be called from an HTTP
//! callback of the current request; a write the host refuses is logged (at `warn`) and otherwise
//! ignored, never a panic.

use std::net::SocketAddr;

use crate::sys;

/// Property path of the listener port the request arrived on (written by the host).
pub const LISTENER_PORT: [&str; 2] = ["tidegate", "listener_port"];
/// Property path of the Gateway the request arrived on, `namespace/name` (written by the host).
pub const GATEWAY: [&str; 2] = ["tidegate", "gateway"];
/// Property path of the chosen route (`namespace/name/rule-index`).
pub const ROUTE: [&str; 2] = ["tidegate", "route"];
/// Property path of the chosen cluster (`namespace/service:port`).
pub const CLUSTER: [&str; 2] = ["tidegate", "cluster"];
/// Property path of the chosen endpoint (`ip:port`).
pub const ENDPOINT: [&str; 2] = ["tidegate", "endpoint"];

/// Reads a text property; `None` when absent, unreadable or not UTF-8.
pub(crate) fn get_string(path: &[&str]) -> Option<String> {
    let bytes = sys::get_property(path).ok()??;
    String::from_utf8(bytes).ok()
}

fn set_string(path: [&str; 2], value: &str) {
    if let Err(status) = sys::set_property(&path, value.as_bytes()) {
        log::warn!(
            "tidegate-sdk: the host refused to set {} ({}); set it from an HTTP callback of the request",
            path.join("."),
            status.name()
        );
    }
}

/// The Gateway listener port the current request arrived on, as the Gateway spec names it (the
/// port a redirect defaults to; with `tidegate run --port-offset` the socket's port differs).
///
/// `None` outside tidegate.
///
/// ```no_run
/// // In `on_http_request_headers`:
/// if tidegate_sdk::listener_port() == Some(8443) {
///     // arrived on the HTTPS listener
/// }
/// ```
pub fn listener_port() -> Option<u16> {
    get_string(&LISTENER_PORT)?.parse().ok()
}

/// The Gateway the current request arrived on, as `namespace/name` (`demo/quickstart`).
///
/// `None` when the listening address serves more than one Gateway (the listener port then tells
/// them apart only together with the hostname), or outside tidegate.
///
/// ```no_run
/// let internal = tidegate_sdk::gateway().is_some_and(|g| g.starts_with("internal/"));
/// # let _ = internal;
/// ```
pub fn gateway() -> Option<String> {
    get_string(&GATEWAY)
}

/// The route chosen for the current request (`namespace/name/rule-index`, e.g. `demo/web/1`:
/// the second rule of HTTPRoute `demo/web`), once the router has run (phase `PostRouting` or
/// later).
///
/// ```no_run
/// if let Some(route) = tidegate_sdk::route() {
///     tidegate_sdk::log::info!("routed by {route}");
/// }
/// ```
pub fn route() -> Option<String> {
    get_string(&ROUTE)
}

/// Records the route chosen for the current request. The standard router calls it; a filter
/// that routes by itself may too.
///
/// ```no_run
/// tidegate_sdk::set_route("demo/web/0");
/// ```
pub fn set_route(name: &str) {
    set_string(ROUTE, name)
}

/// The cluster chosen for the current request (`namespace/service:port`, e.g.
/// `demo/echo-v1:80`), once the router has run.
///
/// ```no_run
/// let to_v2 = tidegate_sdk::cluster().as_deref() == Some("demo/echo-v2:80");
/// # let _ = to_v2;
/// ```
pub fn cluster() -> Option<String> {
    get_string(&CLUSTER)
}

/// Sends the current request to `cluster` (`namespace/service:port`). The balancer picks an
/// endpoint of that cluster, so it must be one the configuration knows: a backend of some route
/// the Gateway serves; otherwise the request fails with 503. Call it after the router (phase
/// `PostRouting`), or the router overwrites it.
///
/// ```no_run
/// // A canary steered by a header, placed PostRouting:
/// if tidegate_sdk::cluster().as_deref() == Some("demo/echo-v1:80") {
///     tidegate_sdk::set_cluster("demo/echo-v2:80");
/// }
/// ```
pub fn set_cluster(name: &str) {
    set_string(CLUSTER, name)
}

/// The endpoint chosen for the current request, once the balancer has run (phase
/// `PostBalancing`). `None` also when the value is not an `ip:port`.
///
/// ```no_run
/// if let Some(addr) = tidegate_sdk::endpoint() {
///     tidegate_sdk::log::debug!("connecting to {addr}");
/// }
/// ```
pub fn endpoint() -> Option<SocketAddr> {
    get_string(&ENDPOINT)?.parse().ok()
}

/// Sends the current request to `addr` (`ip:port`). Call it after the balancer (phase
/// `PostBalancing`), or the balancer overwrites it. The host connects to exactly this address,
/// so choose one of the cluster's endpoints.
///
/// ```no_run
/// tidegate_sdk::set_endpoint("10.0.0.7:3000");
/// ```
pub fn set_endpoint(addr: &str) {
    set_string(ENDPOINT, addr)
}

#[cfg(test)]
mod tests {
    #[test]
    fn natively_every_reader_is_none_and_writers_do_nothing() {
        assert_eq!(super::listener_port(), None);
        assert_eq!(super::gateway(), None);
        assert_eq!(super::route(), None);
        assert_eq!(super::cluster(), None);
        assert_eq!(super::endpoint(), None);
        super::set_route("demo/web/0");
        super::set_cluster("demo/echo-v1:80");
        super::set_endpoint("127.0.0.1:1");
        assert_eq!(super::cluster(), None);
    }
}
