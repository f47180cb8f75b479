//! Local replies: `proxy_send_local_response`.
//!
//! The reply is recorded in [`HttpExchange::local_reply`](crate::wasm::HttpExchange) and sent by
//! the proxy after the callback returns (the C++ host defers it the same way), so a hostcall
//! never re-enters the proxy's state machine. It is allowed in the request's header, body and
//! trailer callbacks, and in `proxy_on_http_call_response` of a context whose request waits
//! (an authorization filter answering 403 after its check), while the response headers have not been sent downstream
//! ([`HttpExchange::response_sent`](crate::wasm::HttpExchange)). Anywhere else
//! (`proxy_on_configure`, `proxy_on_log`, another context, a response body callback once the
//! response is streaming) it is `BAD_ARGUMENT`.
//! A second reply in the same request replaces the first.

use wasmtime::{Caller, Linker};

use super::{ENV, Status, status};
use crate::wasm::codec::{SerializedMap, valid_header_name, valid_header_value};
use crate::wasm::exchange::LocalReply;
use crate::wasm::host::{HostState, Phase};
use crate::wasm::memory::{bytes, with_memory};

use super::headers::{MAX_HEADER_NAME, MAX_HEADER_VALUE, MAX_HEADERS};

/// The largest local reply body (an error page, a redirect note). Bounds the copy into the host.
pub(crate) const MAX_LOCAL_REPLY_BODY: usize = 1024 * 1024;
/// The longest details string kept for logs.
const MAX_DETAILS: usize = 1024;

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(ENV, "proxy_send_local_response", proxy_send_local_response)?;
    Ok(())
}

#[allow(clippy::too_many_arguments, reason = "the ABI's signature")]
fn proxy_send_local_response(
    mut caller: Caller<'_, HostState>,
    status_code: i32,
    details_ptr: i32,
    details_len: i32,
    body_ptr: i32,
    body_len: i32,
    headers_ptr: i32,
    headers_len: i32,
    grpc_status: i32,
) -> i32 {
    status(with_memory(&mut caller, |mem, state| {
        let details = bytes(mem, details_ptr, details_len)?;
        let body = bytes(mem, body_ptr, body_len)?;
        let headers = bytes(mem, headers_ptr, headers_len)?;
        if !matches!(
            state.phase,
            Phase::RequestHeaders
                | Phase::RequestBody
                | Phase::RequestTrailers
                | Phase::ResponseHeaders
                | Phase::ResponseBody
                | Phase::ResponseTrailers
                | Phase::CalloutResponse
        ) {
            return Err(Status::BadArgument);
        }
        let ex = state.exchange_mut().ok_or(Status::BadArgument)?;
        if ex.response_sent {
            return Err(Status::BadArgument);
        }
        let status = u16::try_from(status_code)
            .ok()
            .filter(|s| (100..=999).contains(s))
            .ok_or(Status::BadArgument)?;
        if body.len() > MAX_LOCAL_REPLY_BODY {
            return Err(Status::BadArgument);
        }
        let pairs = SerializedMap::parse(headers).map_err(|_| Status::BadArgument)?;
        if pairs.len() > MAX_HEADERS {
            return Err(Status::BadArgument);
        }
        let mut list = Vec::with_capacity(pairs.len());
        for (name, value) in pairs.iter() {
            if name.len() > MAX_HEADER_NAME
                || !valid_header_name(name)
                || value.len() > MAX_HEADER_VALUE
                || !valid_header_value(value)
            {
                return Err(Status::BadArgument);
            }
            list.push((String::from_utf8_lossy(name).to_ascii_lowercase(), value.to_vec()));
        }
        let details = &details[..details.len().min(MAX_DETAILS)];
        ex.local_reply = Some(LocalReply {
            status,
            headers: list,
            body: body.to_vec(),
            details: String::from_utf8_lossy(details).into_owned(),
            // The SDK passes -1 (u32::MAX on the wire) for plain HTTP replies.
            grpc_status: (grpc_status >= 0).then_some(grpc_status),
        });
        Ok(())
    }))
}
