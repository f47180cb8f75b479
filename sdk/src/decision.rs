//! The routing decision a request carries through the filter chain.
//!
//! The router writes the route and the cluster, the balancer writes the endpoint, and the host
//! connects to that endpoint once the chain has run. Any filter may read them, and a filter placed
//! after the router may overwrite them (for example to steer a canary).

use proxy_wasm::hostcalls;

/// Property path of the listener port the request arrived on (written by the host).
pub const LISTENER_PORT: [&str; 2] = ["tidegate", "listener_port"];
/// Property path of the chosen route (`namespace/name/rule-index`).
pub const ROUTE: [&str; 2] = ["tidegate", "route"];
/// Property path of the chosen cluster.
pub const CLUSTER: [&str; 2] = ["tidegate", "cluster"];
/// Property path of the chosen endpoint (`ip:port`).
pub const ENDPOINT: [&str; 2] = ["tidegate", "endpoint"];

fn get_string(path: [&str; 2]) -> Option<String> {
    let bytes = hostcalls::get_property(path.to_vec()).ok()??;
    String::from_utf8(bytes).ok()
}

/// Call only from an HTTP callback: proxy-wasm 0.2.5 panics on any status but OK, and hosts
/// accept properties only while a request is current.
fn set_string(path: [&str; 2], value: &str) {
    let _ = hostcalls::set_property(path.to_vec(), Some(value.as_bytes()));
}

/// The Gateway listener port the current request arrived on, as the Gateway spec names it
/// (the port a redirect must default to), or `None` outside tidegate.
pub fn listener_port() -> Option<u16> {
    get_string(LISTENER_PORT)?.parse().ok()
}

/// The route chosen for the current request, if the router has run.
pub fn route() -> Option<String> {
    get_string(ROUTE)
}

/// Records the route chosen for the current request.
pub fn set_route(name: &str) {
    set_string(ROUTE, name)
}

/// The cluster chosen for the current request, if the router has run.
pub fn cluster() -> Option<String> {
    get_string(CLUSTER)
}

/// Sends the current request to `cluster` (a name from the balancer's configuration).
pub fn set_cluster(name: &str) {
    set_string(CLUSTER, name)
}

/// The endpoint chosen for the current request, if the balancer has run.
pub fn endpoint() -> Option<String> {
    get_string(ENDPOINT)
}

/// Sends the current request to `addr` (`ip:port`, one of the cluster's endpoints).
pub fn set_endpoint(addr: &str) {
    set_string(ENDPOINT, addr)
}
