//! The proxy-wasm ABI v0.2.1 host functions, one module per area of the spec, plus the WASI
//! preview 1 functions a `wasm32-wasip1` guest imports.
//!
//! Each area has an `add_to_linker`; [`add_to_linker`] registers them all into the one `Linker`
//! every store shares. Every import of the spec is registered, even for areas tidegate does not
//! implement yet: those answer the status the spec lists (and that the Rust SDK accepts where it
//! can), so a filter that merely *links* them loads, and one that calls them fails softly.
//!
//! | area | imports | state |
//! |---|---|---|
//! | [`log`] | `proxy_log`, `proxy_get_log_level`, `proxy_get_current_time_nanoseconds` | done |
//! | [`timers`] | `proxy_set_tick_period_milliseconds` | done: the proxy delivers `proxy_on_tick` at the period |
//! | [`buffers`] | `proxy_{get,set}_buffer_bytes`, `proxy_get_buffer_status` | VM and plugin configuration; request and response bodies in body and trailer callbacks |
//! | [`headers`] | `proxy_{get,set}_header_map_pairs`, `proxy_{get,add,replace,remove}_header_map_value`, `proxy_get_header_map_size` | request and response headers and trailers |
//! | [`local_reply`] | `proxy_send_local_response` | done |
//! | [`properties`] | `proxy_{get,set}_property` | done |
//! | [`context`] | `proxy_continue_stream`, `proxy_close_stream`, `proxy_set_effective_context`, `proxy_done` | done |
//! | [`shared_data`] | `proxy_{get,set}_shared_data` | done (process-wide, per VM id, CAS) |
//! | [`metrics`] | `proxy_define_metric`, `proxy_{increment,record,get}_metric` | done (process-wide registry) |
//! | [`callouts`] | `proxy_http_call`, `proxy_grpc_{call,stream,send,cancel,close}`, `proxy_get_status` | HTTP callouts done; gRPC not implemented (`INTERNAL_FAILURE` + a log line) |
//! | [`queues`] | `proxy_{register,resolve,enqueue,dequeue}_shared_queue` | done (process-wide, Envoy's consumer model) |
//! | [`foreign`] | `proxy_call_foreign_function` | done: `tidegate.*` host services |
//! | [`wasi`] | `wasi_snapshot_preview1::*` (all 46) | stdout/stderr → log, clocks, random, empty args/env; files → `BADF` |
//!
//! Hostcalls return a [`Status`] and never trap on bad input: a guest pointer outside memory is
//! `INVALID_MEMORY_ACCESS`. They trap only when the guest's own code traps inside them (its
//! allocator), or for `proc_exit`.

use wasmtime::Linker;

use super::host::HostState;

pub(crate) mod buffers;
pub(crate) mod callouts;
pub(crate) mod context;
pub(crate) mod foreign;
pub(crate) mod headers;
pub(crate) mod local_reply;
pub(crate) mod log;
pub(crate) mod metrics;
pub(crate) mod properties;
pub(crate) mod queues;
pub(crate) mod shared_data;
pub(crate) mod timers;
pub(crate) mod wasi;

/// The import module of every proxy-wasm host function.
pub(crate) const ENV: &str = "env";

/// `proxy_status_t`.
#[allow(dead_code, reason = "the complete enum of the spec; not every value is produced yet")]
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

/// The `i32` a hostcall returns for `result`.
#[inline]
pub(crate) fn status(result: Result<(), Status>) -> i32 {
    match result {
        Ok(()) => Status::Ok as i32,
        Err(status) => status as i32,
    }
}

/// Like [`status`], for hostcalls that may also trap (they call the guest allocator).
#[inline]
pub(crate) fn trappable(result: wasmtime::Result<Result<(), Status>>) -> wasmtime::Result<i32> {
    result.map(status)
}

/// `proxy_map_type_t` values tidegate serves.
pub(crate) mod map_type {
    pub(crate) const HTTP_REQUEST_HEADERS: i32 = 0;
    pub(crate) const HTTP_REQUEST_TRAILERS: i32 = 1;
    pub(crate) const HTTP_RESPONSE_HEADERS: i32 = 2;
    pub(crate) const HTTP_RESPONSE_TRAILERS: i32 = 3;
    pub(crate) const HTTP_CALL_RESPONSE_HEADERS: i32 = 6;
    pub(crate) const HTTP_CALL_RESPONSE_TRAILERS: i32 = 7;
}

/// `proxy_buffer_type_t` values tidegate serves.
pub(crate) mod buffer_type {
    pub(crate) const HTTP_REQUEST_BODY: i32 = 0;
    pub(crate) const HTTP_RESPONSE_BODY: i32 = 1;
    pub(crate) const DOWNSTREAM_DATA: i32 = 2;
    pub(crate) const UPSTREAM_DATA: i32 = 3;
    pub(crate) const HTTP_CALL_RESPONSE_BODY: i32 = 4;
    pub(crate) const VM_CONFIGURATION: i32 = 6;
    pub(crate) const PLUGIN_CONFIGURATION: i32 = 7;
    pub(crate) const FOREIGN_FUNCTION_ARGUMENTS: i32 = 8;
}

/// `proxy_stream_type_t`.
pub(crate) mod stream_type {
    pub(crate) const HTTP_REQUEST: i32 = 0;
    pub(crate) const HTTP_RESPONSE: i32 = 1;
    pub(crate) const DOWNSTREAM: i32 = 2;
    pub(crate) const UPSTREAM: i32 = 3;
}

/// Registers every host function (proxy-wasm `env` and `wasi_snapshot_preview1`).
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    log::add_to_linker(linker)?;
    timers::add_to_linker(linker)?;
    buffers::add_to_linker(linker)?;
    headers::add_to_linker(linker)?;
    local_reply::add_to_linker(linker)?;
    properties::add_to_linker(linker)?;
    context::add_to_linker(linker)?;
    shared_data::add_to_linker(linker)?;
    metrics::add_to_linker(linker)?;
    callouts::add_to_linker(linker)?;
    queues::add_to_linker(linker)?;
    foreign::add_to_linker(linker)?;
    wasi::add_to_linker(linker)?;
    Ok(())
}
