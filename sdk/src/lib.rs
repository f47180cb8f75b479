//! Write tidegate WASM filters in Rust.
//!
//! `tidegate-sdk` re-exports the [`proxy_wasm`] crate (0.2.5, ABI v0.2.1), so a filter written
//! for Envoy or Istio builds unchanged against it, and adds typed helpers for tidegate's own
//! extension points. Those go through the ABI's escape hatches (properties under `tidegate.*`
//! and `proxy_call_foreign_function("tidegate.*")`), not a new ABI, so a filter built with this
//! SDK still loads in any proxy-wasm host: there the helpers return `None`.
//!
//! New here? [`guide`] walks from `tidegate filter new` to a filter running in front of a
//! Gateway in ten minutes, and documents the phases, callbacks, failure policy and limits.
//!
//! # Helpers
//!
//! Call them from an HTTP callback (`on_http_request_headers`, `on_http_response_headers`, …)
//! of the request they are about. What a reader returns depends on the filter's **phase**
//! (`spec.phase` of its WasmFilter): policy → `PrePolicy`/`PreRouting` filters → router →
//! `PostRouting` filters → balancer → `PostBalancing` filters.
//!
//! | helper | what | from phase | today |
//! |---|---|---|---|
//! | [`listener_port`] | the Gateway listener port the request arrived on | any | ✓ |
//! | [`gateway`] | the Gateway (`namespace/name`) it arrived on | any | ✓ |
//! | [`route`] / [`set_route`] | the HTTPRoute rule chosen (`namespace/name/rule`) | `PostRouting` | ✓ |
//! | [`cluster`] / [`set_cluster`] | the cluster chosen (`namespace/service:port`) | `PostRouting` | ✓ |
//! | [`endpoint`] / [`set_endpoint`] | the endpoint chosen (`ip:port`) | `PostBalancing` | ✓ |
//! | [`Verdict`] | allow, or deny with a local reply | any | ✓ |
//! | [`source_address`] / [`destination_address`] | the two ends of the connection | any | ✓ |
//! | [`source_workload`] / [`destination_workload`] / [`workload`] | a pod's namespace, name, service account, labels | any | ✓ (pods the configuration knows) |
//! | [`endpoints`] | the ready endpoints of a cluster | any | ✓ (every Service port) |
//! | [`proxy_wasm`], [`log`] | the whole proxy-wasm SDK, and the `log` macros it logs through | any | ✓ |
//!
//! Every helper is infallible in the sense that matters inside a VM: **none panics**, whatever
//! the host answers (a panic aborts the VM, and its requests fail by the filter's failure
//! policy). Readers return `None` when the value is not there; writers log a refusal at `warn`;
//! [`Verdict::apply`] logs at `error`. The helpers call the host through their own declarations of
//! the imports they use, because `proxy_wasm::hostcalls` panics on statuses it does not
//! expect.
//!
//! # Testing
//!
//! Two levels, both ordinary `cargo test`:
//! - Keep decisions in plain functions that return plain data ([`Verdict`], a header value) and
//!   unit-test them natively. The helpers compile natively too and, with no host, read `None`
//!   and write nothing, so code that calls them runs in a native test without a host.
//! - Run the compiled `.wasm` in tidegate's real host with the `tidegate-testing` crate
//!   (`sdk/testing`): `Filter::build`, `Filter::load(path).config(json)`,
//!   `host.request(Request::get("/"))` → what a request looks like after your filter.
//!
//! # Stability
//!
//! tidegate is pre-1.0 and so is this crate; within that, these are the promises:
//! - **Stable**: the names and signatures of the helpers above, the property names and formats
//!   in [`decision`], and the rule that a helper never panics.
//! - **Not stable yet**: the wire format of the `tidegate.workload` and `tidegate.endpoints`
//!   host services (documented in [`identity`] and [`discovery`]), the fields of [`Workload`] and [`Endpoint`] (both `#[non_exhaustive]`:
//!   more may come), the text of log messages, and the `details` string of a denial's reply.
//! - The re-exported [`proxy_wasm`] is pinned to 0.2.5 and moves only with a tidegate release.
//!
//! # Build
//!
//! A filter crate is a `cdylib` built with `cargo build --target wasm32-wasip1 --release`
//! (`rustup target add wasm32-wasip1` once); `tidegate filter new NAME` writes one. This crate
//! also builds natively, for the unit tests above.
#![deny(missing_docs)]
#![deny(unsafe_code)]
#![doc(test(attr(deny(warnings))))]

pub use log;
pub use proxy_wasm;

pub mod decision;
pub mod discovery;
pub mod identity;
#[allow(unsafe_code, reason = "the only module that calls host imports")]
mod sys;
pub mod verdict;

/// The filter author's guide: a ten-minute tutorial, then the phase model, callbacks, failure
/// policy and limits (`sdk/README.md`).
#[doc = include_str!("../README.md")]
pub mod guide {}

pub use self::decision::{cluster, endpoint, gateway, listener_port, route, set_cluster, set_endpoint, set_route};
pub use self::discovery::{Endpoint, endpoints};
pub use self::identity::{
    Workload, destination_address, destination_workload, source_address, source_workload, workload,
};
pub use self::verdict::{Denial, Verdict};
