//! The standard filters, compiled to wasm32-wasip1 by build.rs and shipped inside the binary.

/// The router: Gateway API HTTPRoute matching and route filters.
pub const ROUTER_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tidegate_router.wasm"));
/// Stands in for a fail-closed user filter whose module cannot be loaded: answers 500 with the
/// reason given as its configuration.
pub const UNAVAILABLE_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tidegate_unavailable.wasm"));
/// The balancer: picks an endpoint of the routed cluster.
pub const BALANCER_WASM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tidegate_balancer.wasm"));
