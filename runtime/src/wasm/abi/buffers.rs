//! Buffers: `proxy_get_buffer_bytes`, `proxy_set_buffer_bytes`, `proxy_get_buffer_status`.
//!
//! Served:
//! - `VM_CONFIGURATION` (always empty: tidegate has no VM configuration) and
//!   `PLUGIN_CONFIGURATION` (the bytes given to
//!   [`FilterInstance::start`](crate::wasm::FilterInstance::start)), readable in any callback, as
//!   in Envoy, and read-only (`NOT_FOUND` on set).
//! - `HTTP_REQUEST_BODY` during `proxy_on_request_body` and `proxy_on_request_trailers`, and
//!   `HTTP_RESPONSE_BODY` during the response twins: the chunk of the call, or everything the
//!   host buffered for the filter since it paused (see
//!   [`BodyBuffer`](crate::wasm::BodyBuffer)). Readable and writable; anywhere else (a header
//!   callback, `proxy_on_log`, another context) they answer `NOT_FOUND`, as Envoy does when it
//!   has no buffer, which the Rust SDK turns into `None`.
//!
//! - `HTTP_CALL_RESPONSE_BODY` during `proxy_on_http_call_response`: the callout's answer,
//!   read-only.
//! - `DOWNSTREAM_DATA` during `proxy_on_downstream_data` and `UPSTREAM_DATA` during
//!   `proxy_on_upstream_data` (L4 stream contexts): the bytes of the call, or everything
//!   buffered since the filter paused; readable and writable.
//!
//! gRPC messages and foreign-function arguments are not served: `NOT_FOUND`. Ids past `FOREIGN_FUNCTION_ARGUMENTS` are `BAD_ARGUMENT`.
//!
//! Reads copy the window `[start, start + max_size)` clamped to the buffer (a window past the
//! end is empty, returned as `(0, 0)`), as the C++ host does. Writes follow
//! [`BodyBuffer::splice`](crate::wasm::BodyBuffer::splice): `(0, 0)` prepends, `start >= len`
//! appends, anything else replaces `size` bytes at `start` (Envoy supports only the first two
//! and the whole-buffer replace, and refuses the rest with `BAD_ARGUMENT`, which makes an SDK
//! filter panic; doing the general splice is the strictly more useful answer). A write that
//! would grow a body past [`MAX_GUEST_COPY`] is `BAD_ARGUMENT`; the proxy's buffer limit applies
//! to what it buffers.

use wasmtime::{Caller, Linker};

use super::buffer_type::{
    DOWNSTREAM_DATA, FOREIGN_FUNCTION_ARGUMENTS, HTTP_CALL_RESPONSE_BODY, HTTP_REQUEST_BODY, HTTP_RESPONSE_BODY,
    PLUGIN_CONFIGURATION, UPSTREAM_DATA, VM_CONFIGURATION,
};

/// `GRPC_RECEIVE_BUFFER`: messages of gRPC callouts, which tidegate does not make.
const GRPC_RECEIVE_BUFFER: i32 = 5;
use super::{ENV, Status, status};
use crate::wasm::exchange::BodyBuffer;
use crate::wasm::host::{HostState, Phase};
use crate::wasm::memory::{MAX_GUEST_COPY, bytes, copy_to_guest, memory, range, with_memory, write_u32};

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(ENV, "proxy_get_buffer_bytes", proxy_get_buffer_bytes)?;
    linker.func_wrap(ENV, "proxy_set_buffer_bytes", proxy_set_buffer_bytes)?;
    linker.func_wrap(ENV, "proxy_get_buffer_status", proxy_get_buffer_status)?;
    Ok(())
}

/// A buffer id tidegate serves.
#[derive(Clone, Copy)]
enum Buffer {
    Vm,
    Plugin,
    RequestBody,
    ResponseBody,
    CalloutBody,
    /// L4: bytes from the client (kept in the exchange's request body).
    Downstream,
    /// L4: bytes from the upstream (kept in the exchange's response body).
    Upstream,
}

/// Which buffer `buffer` names, or the status for any other id.
fn buffer_of(buffer: i32) -> Result<Buffer, Status> {
    match buffer {
        VM_CONFIGURATION => Ok(Buffer::Vm),
        PLUGIN_CONFIGURATION => Ok(Buffer::Plugin),
        HTTP_REQUEST_BODY => Ok(Buffer::RequestBody),
        HTTP_RESPONSE_BODY => Ok(Buffer::ResponseBody),
        HTTP_CALL_RESPONSE_BODY => Ok(Buffer::CalloutBody),
        DOWNSTREAM_DATA => Ok(Buffer::Downstream),
        UPSTREAM_DATA => Ok(Buffer::Upstream),
        // gRPC messages, foreign-function arguments: not served.
        GRPC_RECEIVE_BUFFER | FOREIGN_FUNCTION_ARGUMENTS => Err(Status::NotFound),
        _ => Err(Status::BadArgument),
    }
}

/// The body `which` names, if the running callback may see it.
fn body_of(state: &mut HostState, which: Buffer) -> Result<&mut BodyBuffer, Status> {
    let phase = state.phase;
    let ex = state.exchange_mut().ok_or(Status::NotFound)?;
    match (which, phase) {
        (Buffer::RequestBody, Phase::RequestBody | Phase::RequestTrailers) => Ok(&mut ex.request_body),
        (Buffer::ResponseBody, Phase::ResponseBody | Phase::ResponseTrailers) => Ok(&mut ex.response_body),
        (Buffer::Downstream, Phase::DownstreamData) => Ok(&mut ex.request_body),
        (Buffer::Upstream, Phase::UpstreamData) => Ok(&mut ex.response_body),
        _ => Err(Status::NotFound),
    }
}

/// The bytes of a buffer, moved out of the host state (so the guest allocator, which is guest
/// code, can run while they are copied in), and put back by [`restore`].
enum Taken {
    Config(Vec<u8>),
    Body(BodyBuffer),
}

impl Taken {
    fn as_slice(&self) -> &[u8] {
        match self {
            Taken::Config(bytes) => bytes,
            Taken::Body(body) => body.as_slice(),
        }
    }
}

fn take(state: &mut HostState, which: Buffer) -> Result<Taken, Status> {
    Ok(match which {
        Buffer::Vm => Taken::Config(std::mem::take(&mut state.vm_config)),
        Buffer::Plugin => Taken::Config(std::mem::take(&mut state.plugin_config)),
        Buffer::CalloutBody => match &mut state.callout_response {
            Some(response) => Taken::Config(std::mem::take(&mut response.body)),
            None => return Err(Status::NotFound),
        },
        Buffer::RequestBody | Buffer::ResponseBody | Buffer::Downstream | Buffer::Upstream => {
            Taken::Body(std::mem::take(body_of(state, which)?))
        }
    })
}

/// Puts back what [`take`] moved out. The body goes straight back into the exchange (not
/// through the effective context, which the allocator could have switched).
fn restore(state: &mut HostState, which: Buffer, taken: Taken) {
    match (which, taken) {
        (Buffer::Vm, Taken::Config(bytes)) => state.vm_config = bytes,
        (Buffer::Plugin, Taken::Config(bytes)) => state.plugin_config = bytes,
        (Buffer::CalloutBody, Taken::Config(bytes)) => {
            if let Some(response) = &mut state.callout_response {
                response.body = bytes;
            }
        }
        (Buffer::RequestBody | Buffer::Downstream, Taken::Body(body)) => state.exchange.request_body = body,
        (Buffer::ResponseBody | Buffer::Upstream, Taken::Body(body)) => state.exchange.response_body = body,
        _ => {}
    }
}

fn proxy_get_buffer_bytes(
    mut caller: Caller<'_, HostState>,
    buffer: i32,
    start: i32,
    max_size: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> wasmtime::Result<i32> {
    let which = match buffer_of(buffer) {
        Ok(which) => which,
        Err(s) => return Ok(s as i32),
    };
    let mem = match memory(&caller) {
        Ok(mem) => mem,
        Err(s) => return Ok(s as i32),
    };
    let mem_len = mem.data_size(&caller);
    if range(mem_len, ret_ptr, 4).is_err() || range(mem_len, ret_len, 4).is_err() {
        return Ok(Status::InvalidMemoryAccess as i32);
    }
    // Moved out while the guest allocator runs (nothing can change it), so it is copied once,
    // straight into the guest. Like the C++ host, a window past the end is clamped, and an
    // empty one is returned as (0, 0).
    let taken = match take(caller.data_mut(), which) {
        Ok(taken) => taken,
        Err(s) => return Ok(s as i32),
    };
    let data = taken.as_slice();
    let start = (start as u32 as usize).min(data.len());
    let end = start.saturating_add(max_size as u32 as usize).min(data.len());
    let result = copy_to_guest(&mut caller, mem, &data[start..end], ret_ptr, ret_len);
    restore(caller.data_mut(), which, taken);
    result.map(status)
}

fn proxy_set_buffer_bytes(
    mut caller: Caller<'_, HostState>,
    buffer: i32,
    start: i32,
    size: i32,
    ptr: i32,
    len: i32,
) -> i32 {
    let which = match buffer_of(buffer) {
        Ok(Buffer::Vm | Buffer::Plugin | Buffer::CalloutBody) => return Status::NotFound as i32,
        Ok(which) => which,
        Err(s) => return s as i32,
    };
    status(with_memory(&mut caller, |mem, state| {
        let data = bytes(mem, ptr, len)?;
        let body = body_of(state, which)?;
        let (start, size) = (start as u32 as usize, size as u32 as usize);
        let kept = body.len().saturating_sub(size.min(body.len().saturating_sub(start)));
        if kept.saturating_add(data.len()) > MAX_GUEST_COPY {
            return Err(Status::BadArgument);
        }
        body.splice(start, size, data);
        Ok(())
    }))
}

fn proxy_get_buffer_status(mut caller: Caller<'_, HostState>, buffer: i32, ret_size: i32, ret_flags: i32) -> i32 {
    let which = match buffer_of(buffer) {
        Ok(which) => which,
        Err(s) => return s as i32,
    };
    status(with_memory(&mut caller, |mem, state| {
        let size = match which {
            Buffer::Vm => state.vm_config.len(),
            Buffer::Plugin => state.plugin_config.len(),
            Buffer::CalloutBody => state.callout_response.as_ref().ok_or(Status::NotFound)?.body.len(),
            Buffer::RequestBody | Buffer::ResponseBody | Buffer::Downstream | Buffer::Upstream => {
                body_of(state, which)?.len()
            }
        };
        range(mem.len(), ret_flags, 4)?;
        write_u32(mem, ret_size, size as u32)?;
        write_u32(mem, ret_flags, 0)
    }))
}
