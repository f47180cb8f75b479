//! HTTP and gRPC callouts: `proxy_http_call`, `proxy_grpc_call`, `proxy_grpc_stream`,
//! `proxy_grpc_send`, `proxy_grpc_cancel`, `proxy_grpc_close`, `proxy_get_status`.
//!
//! `proxy_http_call` checks its arguments as Envoy does (guest memory → `INVALID_MEMORY_ACCESS`;
//! no `:method`, `:path` or `:authority`, a malformed header map, a header the proxy could not
//! send, or an upstream that is no cluster → `BAD_ARGUMENT`), returns a token at once and queues
//! the request in the VM's outbox; the proxy sends it after the callback returns and delivers
//! the answer later on the same VM, to the context that made the call
//! (`proxy_on_http_call_response`), where the answer is readable as `HTTP_CALL_RESPONSE_HEADERS`,
//! `HTTP_CALL_RESPONSE_BODY` and `HTTP_CALL_RESPONSE_TRAILERS`. A VM may have at most
//! [`MAX_CALLOUTS_IN_FLIGHT`] calls outstanding (more: `INTERNAL_FAILURE`).
//!
//! gRPC callouts are not implemented: `proxy_grpc_call` and `proxy_grpc_stream` answer
//! `INTERNAL_FAILURE` (the status the Rust SDK returns as an error; `UNIMPLEMENTED` would make
//! its wrappers panic) and log, once per VM, that tidegate does not implement them; operations
//! on a gRPC token are `NOT_FOUND` (no such call). `proxy_get_status` (the gRPC status of a
//! finished call) is `NOT_FOUND` for the same reason.

use std::time::Duration;

use wasmtime::{Caller, Linker};

use super::{ENV, Status, status};
use crate::wasm::codec::{SerializedMap, valid_header_name, valid_header_value};
use crate::wasm::exchange::HeaderList;
use crate::wasm::host::HostState;
use crate::wasm::memory::{bytes, range, with_memory, write_u32};
use crate::wasm::services::CalloutRequest;

/// Calls one VM may have outstanding.
pub(crate) const MAX_CALLOUTS_IN_FLIGHT: usize = 1024;
/// The largest callout request body.
pub(crate) const MAX_CALLOUT_BODY: usize = 1024 * 1024;
/// The deadline of a callout whose filter gave none (`timeout_ms` 0), and the most any may ask.
pub(crate) const MAX_CALLOUT_TIMEOUT: Duration = Duration::from_secs(60);

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

fn grpc_unimplemented(state: &mut HostState, what: &str) {
    if !std::mem::replace(&mut state.warned_grpc, true) {
        tracing::warn!(target: "tidegate::filter", filter = &*state.filter, "{what}: gRPC callouts are not implemented by tidegate; the call fails (INTERNAL_FAILURE)");
    }
}

/// A header map for a callout: every name a token, every value sendable.
fn callout_headers(serialized: &[u8]) -> Result<HeaderList, Status> {
    let pairs = SerializedMap::parse(serialized).map_err(|_| Status::BadArgument)?;
    let mut list = HeaderList::with_capacity(pairs.len());
    for (name, value) in pairs.iter() {
        if !valid_header_name(name) || !valid_header_value(value) {
            return Err(Status::BadArgument);
        }
        let name = std::str::from_utf8(name).map_err(|_| Status::BadArgument)?;
        list.add(&name.to_ascii_lowercase(), value.to_vec());
    }
    Ok(list)
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
    timeout_ms: i32,
    ret_token: i32,
) -> i32 {
    status(with_memory(&mut caller, |mem, state| {
        let upstream = bytes(mem, upstream_ptr, upstream_len)?;
        let headers = callout_headers(bytes(mem, headers_ptr, headers_len)?)?;
        let body = bytes(mem, body_ptr, body_len)?.to_vec();
        let trailers = callout_headers(bytes(mem, trailers_ptr, trailers_len)?)?;
        range(mem.len(), ret_token, 4)?;
        for required in [":method", ":path", ":authority"] {
            if headers.get(required).is_none_or(|value| value.is_empty()) {
                return Err(Status::BadArgument);
            }
        }
        if body.len() > MAX_CALLOUT_BODY {
            return Err(Status::BadArgument);
        }
        let upstream = std::str::from_utf8(upstream).map_err(|_| Status::BadArgument)?;
        let Some(cluster) = state.services.as_ref().and_then(|s| s.upstream(upstream)) else {
            tracing::debug!(target: "tidegate::filter", filter = &*state.filter, upstream, "proxy_http_call to an unknown upstream (BAD_ARGUMENT); name a Service port as namespace/service:port");
            return Err(Status::BadArgument);
        };
        if state.callouts_in_flight.len() >= MAX_CALLOUTS_IN_FLIGHT {
            return Err(Status::InternalFailure);
        }
        let token = state.next_callout_token();
        write_u32(mem, ret_token, token)?;
        let timeout = match timeout_ms as u32 {
            0 => MAX_CALLOUT_TIMEOUT,
            ms => Duration::from_millis(ms.into()).min(MAX_CALLOUT_TIMEOUT),
        };
        state.callouts_in_flight.insert(token);
        state.callout_outbox.push(CalloutRequest {
            token,
            context: state.effective_ctx,
            cluster,
            headers,
            body,
            trailers,
            timeout,
        });
        Ok(())
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
        grpc_unimplemented(state, "proxy_grpc_call");
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
        grpc_unimplemented(state, "proxy_grpc_stream");
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
