//! tidegate: a per-node Kubernetes proxy whose routing, load balancing and policy are sandboxed
//! WASM filters (proxy-wasm ABI v0.2.1).
//!
//! Data flow: config source → [`config::ObjectStore`] → [`translate`] (pure) → [`snapshot`] →
//! [`proxy`] workers, each running the standard filters ([`filters`]) in the [`wasm`] host.

pub mod admin;
pub mod admission;
pub mod app;
pub mod capture;
pub mod cli;
pub mod commands;
pub mod config;
pub mod demo;
pub mod echo;
pub mod external_names;
pub mod filters;
pub mod metrics;
pub mod modules;
pub mod proxy;
pub mod scaffold;
pub mod snapshot;
pub mod translate;
pub mod wasm;
