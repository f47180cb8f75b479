//! tidegate's standard balancer filter: picks an endpoint of the cluster the router chose.
//!
//! The host hands the filter a [`config::BalancerConfig`] (every cluster with its ready
//! endpoints) through `proxy_on_configure`. Per request the filter reads `tidegate.cluster`,
//! asks that cluster's [`picker::Picker`] for an endpoint and writes it to `tidegate.endpoint`;
//! a cluster that is unknown or has no endpoint gets a local 503.
//!
//! | module        | what it does                                                       |
//! |---------------|--------------------------------------------------------------------|
//! | [`config`]    | the JSON contract with the host                                    |
//! | [`picker`]    | the `Picker` trait and one module per algorithm (round robin)      |
//! | [`balancer`]  | clusters with their pickers: the per-request choice                |
//!
//! On wasm32 a private `shell` module adds the proxy-wasm root and HTTP contexts.
#![forbid(unsafe_code)]

pub mod balancer;
pub mod config;
pub mod picker;

#[cfg(target_arch = "wasm32")]
mod shell;

pub use self::balancer::{Balancer, NoEndpoint};
