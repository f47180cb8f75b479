//! HTTP and gRPC callouts: `proxy_http_call`, `proxy_grpc_call`, `proxy_grpc_stream`,
//! `proxy_grpc_send`, `proxy_grpc_cancel`, `proxy_grpc_close`, `proxy_get_status`.
//!
//! Not built yet. The calls check their arguments as the spec says (guest memory →
//! `INVALID_MEMORY_ACCESS`; an HTTP call without `:method`, `:path` and `:authority`, or with a
//! malformed header map → `BAD_ARGUMENT`) and then fail the way a host that could not send the
//! request does, with statuses the Rust SDK returns as errors instead of panicking:
//! `proxy_http_call`, `proxy_grpc_call` and `proxy_grpc_stream` → `INTERNAL_FAILURE`; operations
//! on a gRPC token → `NOT_FOUND` (no such call); `proxy_get_status` → `NOT_FOUND` (no callout
//! response is being delivered). When callouts land, each returns a token and the response is
//! delivered later on the same instance (`proxy_on_http_call_response`).

use wasmtime::{Caller, Linker};

use super::{ENV, Status, status};
use crate::wasm::codec::SerializedMap;
use crate::wasm::host::HostState;
use crate::wasm::memory::{bytes, range, with_memory};

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(ENV, "proxy_http_call", proxy_http_call)?;
    linker.func_wrap(ENV, "proxy_grpc_call", proxy_grpc_call)?;
    linker.func_wrap(ENV, "proxy_grpc_stream", proxy_grpc_stream)?;
    linker.func_wrap(ENV, "proxy_grpc_send", proxy_grpc_send)?;
    linker.func_wrap(ENV, "proxy_grpc_cancel", |_: Caller<'_, HostState>, _token: i32| {
        Status::NotFound as i32
    })?;
    linker.func_wrap(ENV, "proxy_grpc_close", |_: Caller<'_, HostState>, _token: i32| {
        Status::NotFound as i32
    })?;
    linker.func_wrap(ENV, "proxy_get_status", proxy_get_status)?;
    Ok(())
}

fn not_available(filter: &str, what: &str) {
    tracing::debug!(target: "tidegate::filter", filter, "{what} is not available in tidegate yet");
}

#[allow(clippy::too_many_arguments, reason = "the ABI's signature")]
fn proxy_http_call(
    mut caller: Caller<'_, HostState>,
    upstream_ptr: i32,
    upstream_len: i32,
    headers_ptr: i32,
    headers_len: i32,
    body_ptr: i32,
    body_len: i32,
    trailers_ptr: i32,
    trailers_len: i32,
    _timeout_ms: i32,
    ret_token: i32,
) -> i32 {
    status(with_memory(&mut caller, |mem, state| {
        bytes(mem, upstream_ptr, upstream_len)?;
        let headers = bytes(mem, headers_ptr, headers_len)?;
        bytes(mem, body_ptr, body_len)?;
        let trailers = bytes(mem, trailers_ptr, trailers_len)?;
        range(mem.len(), ret_token, 4)?;
        let headers = SerializedMap::parse(headers).map_err(|_| Status::BadArgument)?;
        SerializedMap::parse(trailers).map_err(|_| Status::BadArgument)?;
        for required in [&b":method"[..], b":path", b":authority"] {
            if !headers
                .iter()
                .any(|(name, value)| name == required && !value.is_empty())
            {
                return Err(Status::BadArgument);
            }
        }
        not_available(&state.filter, "proxy_http_call");
        Err(Status::InternalFailure)
    }))
}

#[allow(clippy::too_many_arguments, reason = "the ABI's signature")]
fn proxy_grpc_call(
    mut caller: Caller<'_, HostState>,
    upstream_ptr: i32,
    upstream_len: i32,
    service_ptr: i32,
    service_len: i32,
    method_ptr: i32,
    method_len: i32,
    metadata_ptr: i32,
    metadata_len: i32,
    message_ptr: i32,
    message_len: i32,
    _timeout_ms: i32,
    ret_token: i32,
) -> i32 {
    status(with_memory(&mut caller, |mem, state| {
        for (ptr, len) in [
            (upstream_ptr, upstream_len),
            (service_ptr, service_len),
            (method_ptr, method_len),
            (metadata_ptr, metadata_len),
            (message_ptr, message_len),
        ] {
            bytes(mem, ptr, len)?;
        }
        range(mem.len(), ret_token, 4)?;
        not_available(&state.filter, "proxy_grpc_call");
        Err(Status::InternalFailure)
    }))
}

#[allow(clippy::too_many_arguments, reason = "the ABI's signature")]
fn proxy_grpc_stream(
    mut caller: Caller<'_, HostState>,
    upstream_ptr: i32,
    upstream_len: i32,
    service_ptr: i32,
    service_len: i32,
    method_ptr: i32,
    method_len: i32,
    metadata_ptr: i32,
    metadata_len: i32,
    ret_token: i32,
) -> i32 {
    status(with_memory(&mut caller, |mem, state| {
        for (ptr, len) in [
            (upstream_ptr, upstream_len),
            (service_ptr, service_len),
            (method_ptr, method_len),
            (metadata_ptr, metadata_len),
        ] {
            bytes(mem, ptr, len)?;
        }
        range(mem.len(), ret_token, 4)?;
        not_available(&state.filter, "proxy_grpc_stream");
        Err(Status::InternalFailure)
    }))
}

fn proxy_grpc_send(
    mut caller: Caller<'_, HostState>,
    _token: i32,
    message_ptr: i32,
    message_len: i32,
    _end_stream: i32,
) -> i32 {
    status(with_memory(&mut caller, |mem, _| {
        bytes(mem, message_ptr, message_len)?;
        Err(Status::NotFound)
    }))
}

fn proxy_get_status(_caller: Caller<'_, HostState>, _ret_code: i32, _ret_msg_ptr: i32, _ret_msg_len: i32) -> i32 {
    Status::NotFound as i32
}
