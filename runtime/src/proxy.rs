//! The data plane: worker threads, listeners, the HTTP server, the filter chain and upstreams.
//!
//! Workers follow the Envoy model: N threads, each with its own current-thread tokio runtime,
//! its own WASM instances and its own upstream pools; a connection stays on the worker that
//! accepted it (every worker binds every port with SO_REUSEPORT and the kernel spreads
//! connections). This keeps wasmtime stores single-threaded with no locks on the hot path.

mod callout;
mod captured;
mod chain;
pub mod detect;
mod http;
mod listener;
mod pick;
mod published;
pub(crate) mod services;
mod sockopt;
mod splice;
pub mod tcp;
mod tls;
pub mod udp;
mod upstream;
mod worker;

pub use self::published::{Published, Publisher};
pub use self::worker::{DataPlane, DataPlaneOptions};
