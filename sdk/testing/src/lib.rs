//! Test tidegate WASM filters with ordinary `#[test]`s.
//!
//! A filter's pure logic is best unit-tested natively; this crate tests the rest: the compiled
//! `.wasm`, in **tidegate's real host** (the same wasmtime engine, hostcalls, sandbox limits and
//! callback order as the proxy), with requests you describe in a line.
//!
//! ```no_run
//! use tidegate_testing::{Filter, Request, Response};
//!
//! #[test]
//! fn adds_the_configured_header() {
//!     // Compiles this crate for wasm32-wasip1 (once per test run) and starts it.
//!     let wasm = Filter::build(env!("CARGO_MANIFEST_DIR")).expect("the filter builds");
//!     let mut host = Filter::load(wasm).config(r#"{"header": "x-hello", "value": "world"}"#);
//!
//!     let request = host.request(Request::get("/").header("x-user", "ann"));
//!     assert!(request.forwarded);
//!
//!     let response = host.response(Response::ok());
//!     assert_eq!(response.response_header("x-hello"), Some("world"));
//! }
//! ```
//!
//! # Core concepts
//!
//! - [`Filter`]: a module to test. [`Filter::build`] runs `cargo build --target wasm32-wasip1
//!   --release` on a crate and returns its `.wasm` (with a clear error when the target is not
//!   installed); [`Filter::load`] takes a path, [`Filter::from_bytes`] bytes (for example
//!   `tidegate::filters::ROUTER_WASM`, the standard router).
//! - [`TestHost`]: the filter started with a configuration ([`Filter::config`]), as a WasmFilter's
//!   `spec.config` would start it. One VM, reused for every request, as the proxy reuses it.
//! - [`Request`] / [`Response`]: what the proxy would hand the filter: headers in the proxy's
//!   order and the properties it sets (`tidegate.listener_port`, `source.address`, …). Add
//!   `tidegate.route`/`tidegate.cluster`/`tidegate.endpoint` to test a filter that runs after
//!   the router or the balancer.
//! - [`Outcome`]: what the filter did: `forwarded`, the headers, body, trailers and properties
//!   after it, and its local reply if it answered.
//!
//! The filter's log lines (`log::info!` in the guest) go to the test's output, which libtest
//! shows for failing tests (`cargo test -- --nocapture` shows all). `TIDEGATE_LOG` sets the
//! level (default `info`), as for the proxy.
//!
//! # Bodies and trailers
//!
//! [`Request::body`] and [`Response::body`] add data frames, [`Request::trailer`] and
//! [`Response::trailer`] trailers. The filter sees them as in the proxy: each frame in its body
//! callback, or, while it returns `Pause`, everything buffered so far (the cumulative size, as
//! Envoy passes it); the trailers with the buffered body readable; a pause at the end of the
//! stream is released. [`Outcome::body`] and [`Outcome::trailers`] are what it passed on.
//!
//! # Not covered yet
//!
//! HTTP callouts and ticks (the host does not deliver them yet). A test runs one filter; to test
//! a chain, feed one [`Outcome`]'s headers and properties into the next filter's [`Request`].
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod cargo;
mod connection;
mod error;
mod host;
mod message;

pub use self::cargo::{TARGET_DIR_ENV, WASM_TARGET};
pub use self::connection::{Connection, DataOutcome};
pub use self::error::Error;
pub use self::host::{Filter, TestHost};
pub use self::message::{
    Config, DEFAULT_AUTHORITY, DEFAULT_DESTINATION, DEFAULT_LISTENER_PORT, DEFAULT_SOURCE, Outcome, Request, Response,
};
pub use tidegate::wasm::{FilterAction, HeaderList, LocalReply, PropertyMap, SandboxLimits, WasmError};

/// Sends the host's log lines (the filters' included) to the test output, once per process.
fn init_logging() {
    use std::sync::Once;
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_env("TIDEGATE_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        // Fails when the test binary installed its own subscriber; that one is used then.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
    });
}
