//! tidegate's standard router filter: Gateway API HTTPRoute matching and route filters.
//!
//! The host hands the filter a [`config::RouterConfig`] (every listener with its attached
//! routes) through `proxy_on_configure`. Per request the filter reads the listener port
//! (`tidegate.listener_port`), the pseudo-headers and headers, and either answers locally (404
//! when nothing matches, 500 when the rule has no usable backend, a redirect) or edits the request
//! and records the route and cluster (`tidegate.route`, `tidegate.cluster`) for the balancer.
//!
//! Everything but the proxy-wasm glue is plain Rust, tested natively:
//!
//! | module        | what it does                                                          |
//! |---------------|-----------------------------------------------------------------------|
//! | [`config`]    | the JSON contract with the host                                       |
//! | [`hostname`]  | hostname patterns, listener/route intersection, specificity           |
//! | [`request`]   | the request view: pseudo-headers, headers, query parameters            |
//! | [`matching`]  | one compiled `HTTPRouteMatch` and its precedence rank                  |
//! | [`table`]     | the configuration compiled into precedence-sorted lookup tables       |
//! | [`actions`]   | header edits, path modifiers, redirect `Location`s                    |
//! | [`random`]    | xorshift and weighted choice                                          |
//! | [`decision`]  | the per-request decision tying the above together                     |
//!
//! On wasm32 a private `shell` module adds the proxy-wasm root and HTTP contexts.
#![forbid(unsafe_code)]

pub mod actions;
pub mod config;
pub mod decision;
pub mod hostname;
pub mod matching;
pub mod random;
pub mod request;
pub mod table;
mod timestamp;

#[cfg(target_arch = "wasm32")]
mod shell;

pub use self::decision::{Decision, Forward, LocalReply, Router};
pub use self::request::Request;
