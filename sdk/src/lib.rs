//! Write tidegate WASM filters in Rust.
//!
//! `tidegate-sdk` re-exports the [`proxy_wasm`] crate (ABI v0.2.1), so every filter written for
//! Envoy or Istio builds unchanged against it, and adds typed helpers for tidegate's own extension
//! points. Those go through the ABI's escape hatch, properties under `tidegate.*`, so a filter
//! built with this SDK still loads in any proxy-wasm host (the helpers then return `None`).
//!
//! | property            | who writes it | meaning                                                  |
//! |---------------------|---------------|----------------------------------------------------------|
//! | `tidegate.listener_port` | host     | the Gateway listener port the request arrived on         |
//! | `tidegate.route`    | router        | `namespace/name/rule` of the chosen HTTPRoute rule       |
//! | `tidegate.cluster`  | router        | the cluster (Service port) the request goes to           |
//! | `tidegate.endpoint` | balancer      | `ip:port` of the endpoint the host connects to           |
#![deny(missing_docs)]

pub use proxy_wasm;

pub mod decision;

pub use self::decision::{cluster, endpoint, listener_port, route, set_cluster, set_endpoint, set_route};
