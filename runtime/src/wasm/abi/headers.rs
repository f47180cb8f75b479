//! HTTP fields: `proxy_get_header_map_pairs`, `proxy_set_header_map_pairs`,
//! `proxy_get_header_map_value`, `proxy_add_header_map_value`, `proxy_replace_header_map_value`,
//! `proxy_remove_header_map_value`, `proxy_get_header_map_size`.
//!
//! They act on the request of the running callback only (see
//! [`HostState::exchange`](crate::wasm::host::HostState)). Outside one (in `proxy_on_configure`,
//! or after switching to another context) a map is "not available", which Envoy and this host
//! answer with `BAD_ARGUMENT`. Request and response headers are readable in every HTTP
//! callback (the response list is empty until the upstream answered) and writable too: a change
//! after the headers were sent simply has no effect, as in Envoy. Trailers are readable in every
//! HTTP callback (empty while there are none) and writable in the trailers callback of their
//! direction, and in its last body callback (`end_of_stream`), where adding one creates the
//! trailers, as Envoy allows; elsewhere a write is `BAD_ARGUMENT` (Envoy's answer too). The
//! headers and trailers of a callout's answer are readable (not writable) during
//! `proxy_on_http_call_response`; gRPC metadata is never available (no gRPC callouts).
//!
//! Names are compared case-insensitively and stored lowercase. A name must be a token (or a
//! `:pseudo` token) and a value must have no control characters but tab, so a filter can neither
//! inject a header through CR/LF nor hand the proxy a field it could not send: such calls get
//! `BAD_ARGUMENT`. Empty values are returned as `OK` with `(0, 0)`, which the SDK reads as `""`.

use wasmtime::{Caller, Linker};

use super::map_type::{
    HTTP_CALL_RESPONSE_HEADERS, HTTP_CALL_RESPONSE_TRAILERS, HTTP_REQUEST_HEADERS, HTTP_REQUEST_TRAILERS,
    HTTP_RESPONSE_HEADERS, HTTP_RESPONSE_TRAILERS,
};
use super::{ENV, Status, status, trappable};
use crate::wasm::codec::{SerializedMap, serialize_map, serialized_map_size, valid_header_name, valid_header_value};
use crate::wasm::exchange::{HeaderList, HttpExchange};
use crate::wasm::host::{HostState, Phase};
use crate::wasm::memory::{MAX_GUEST_COPY, bytes, return_bytes, with_memory, write_u32};

/// The most entries a filter can make a header list hold (adding past it is `BAD_ARGUMENT`).
/// With [`MAX_HEADER_VALUE`] it bounds what one request's filters can make the host store.
pub(crate) const MAX_HEADERS: usize = 1024;
/// The longest header value a filter may set.
pub(crate) const MAX_HEADER_VALUE: usize = 64 * 1024;
/// The longest header name a filter may set.
pub(crate) const MAX_HEADER_NAME: usize = 1024;

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(ENV, "proxy_get_header_map_pairs", proxy_get_header_map_pairs)?;
    linker.func_wrap(ENV, "proxy_set_header_map_pairs", proxy_set_header_map_pairs)?;
    linker.func_wrap(ENV, "proxy_get_header_map_value", proxy_get_header_map_value)?;
    linker.func_wrap(ENV, "proxy_add_header_map_value", proxy_add_header_map_value)?;
    linker.func_wrap(ENV, "proxy_replace_header_map_value", proxy_replace_header_map_value)?;
    linker.func_wrap(ENV, "proxy_remove_header_map_value", proxy_remove_header_map_value)?;
    linker.func_wrap(ENV, "proxy_get_header_map_size", proxy_get_header_map_size)?;
    Ok(())
}

/// A map id as tidegate serves it.
#[derive(Clone, Copy)]
enum Map {
    RequestHeaders,
    ResponseHeaders,
    RequestTrailers,
    ResponseTrailers,
    CalloutHeaders,
    CalloutTrailers,
}

fn map_of(map_type: i32) -> Result<Map, Status> {
    match map_type {
        HTTP_REQUEST_HEADERS => Ok(Map::RequestHeaders),
        HTTP_RESPONSE_HEADERS => Ok(Map::ResponseHeaders),
        HTTP_REQUEST_TRAILERS => Ok(Map::RequestTrailers),
        HTTP_RESPONSE_TRAILERS => Ok(Map::ResponseTrailers),
        HTTP_CALL_RESPONSE_HEADERS => Ok(Map::CalloutHeaders),
        HTTP_CALL_RESPONSE_TRAILERS => Ok(Map::CalloutTrailers),
        // gRPC metadata: no gRPC callouts, so never available.
        _ => Err(Status::BadArgument),
    }
}

/// The list to read.
fn readable(state: &HostState, map: Map) -> Result<&HeaderList, Status> {
    if let Map::CalloutHeaders | Map::CalloutTrailers = map {
        let response = state.callout_response.as_ref().ok_or(Status::BadArgument)?;
        return Ok(match map {
            Map::CalloutHeaders => &response.headers,
            _ => &response.trailers,
        });
    }
    let ex = state.exchange().ok_or(Status::BadArgument)?;
    Ok(match map {
        Map::RequestHeaders => &ex.request_headers,
        Map::ResponseHeaders => &ex.response_headers,
        Map::RequestTrailers => &ex.request_trailers,
        Map::ResponseTrailers => &ex.response_trailers,
        Map::CalloutHeaders | Map::CalloutTrailers => unreachable!("answered above"),
    })
}

fn writable(state: &mut HostState, map: Map) -> Result<&mut HeaderList, Status> {
    let (phase, end_of_stream) = (state.phase, state.end_of_stream);
    let ex: &mut HttpExchange = state.exchange_mut().ok_or(Status::BadArgument)?;
    match map {
        Map::RequestHeaders => Ok(&mut ex.request_headers),
        Map::ResponseHeaders => Ok(&mut ex.response_headers),
        Map::RequestTrailers => match phase {
            Phase::RequestTrailers => Ok(&mut ex.request_trailers),
            Phase::RequestBody if end_of_stream => Ok(&mut ex.request_trailers),
            _ => Err(Status::BadArgument),
        },
        Map::ResponseTrailers => match phase {
            Phase::ResponseTrailers => Ok(&mut ex.response_trailers),
            Phase::ResponseBody if end_of_stream => Ok(&mut ex.response_trailers),
            _ => Err(Status::BadArgument),
        },
        // A callout's answer is the filter's to read, not to change.
        Map::CalloutHeaders | Map::CalloutTrailers => Err(Status::BadArgument),
    }
}

/// A field name the guest wants to set, validated.
fn name(raw: &[u8]) -> Result<&str, Status> {
    if raw.len() > MAX_HEADER_NAME || !valid_header_name(raw) {
        return Err(Status::BadArgument);
    }
    // A token is ASCII, so this never fails.
    std::str::from_utf8(raw).map_err(|_| Status::BadArgument)
}

fn value(raw: &[u8]) -> Result<&[u8], Status> {
    if raw.len() > MAX_HEADER_VALUE || !valid_header_value(raw) {
        return Err(Status::BadArgument);
    }
    Ok(raw)
}

fn proxy_get_header_map_pairs(
    mut caller: Caller<'_, HostState>,
    map_type: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> wasmtime::Result<i32> {
    let map = match map_of(map_type) {
        Ok(map) => map,
        Err(s) => return Ok(s as i32),
    };
    trappable(return_bytes(&mut caller, ret_ptr, ret_len, |_, state, out| {
        let list = readable(state, map)?;
        if list.is_empty() {
            return Ok(());
        }
        match serialized_map_size(list.entries()) {
            Some(size) if size <= MAX_GUEST_COPY => {
                serialize_map(list.entries(), out);
                Ok(())
            }
            _ => Err(Status::BadArgument),
        }
    }))
}

fn proxy_set_header_map_pairs(mut caller: Caller<'_, HostState>, map_type: i32, ptr: i32, len: i32) -> i32 {
    status(with_memory(&mut caller, |mem, state| {
        let map = map_of(map_type)?;
        let serialized = bytes(mem, ptr, len)?;
        let list = writable(state, map)?;
        let pairs = SerializedMap::parse(serialized).map_err(|_| Status::BadArgument)?;
        if pairs.len() > MAX_HEADERS {
            return Err(Status::BadArgument);
        }
        let mut entries = Vec::with_capacity(pairs.len());
        for (n, v) in pairs.iter() {
            entries.push((name(n)?.to_ascii_lowercase(), value(v)?.to_vec()));
        }
        list.replace_all(entries);
        Ok(())
    }))
}

fn proxy_get_header_map_value(
    mut caller: Caller<'_, HostState>,
    map_type: i32,
    key_ptr: i32,
    key_len: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> wasmtime::Result<i32> {
    let map = match map_of(map_type) {
        Ok(map) => map,
        Err(s) => return Ok(s as i32),
    };
    trappable(return_bytes(&mut caller, ret_ptr, ret_len, |mem, state, out| {
        let key = bytes(mem, key_ptr, key_len)?;
        let found = readable(state, map)?.get_bytes(key).ok_or(Status::NotFound)?;
        out.extend_from_slice(found);
        Ok(())
    }))
}

fn proxy_add_header_map_value(
    mut caller: Caller<'_, HostState>,
    map_type: i32,
    key_ptr: i32,
    key_len: i32,
    value_ptr: i32,
    value_len: i32,
) -> i32 {
    status(with_memory(&mut caller, |mem, state| {
        let map = map_of(map_type)?;
        let (key, val) = (bytes(mem, key_ptr, key_len)?, bytes(mem, value_ptr, value_len)?);
        let list = writable(state, map)?;
        let (key, val) = (name(key)?, value(val)?);
        if list.len() >= MAX_HEADERS {
            return Err(Status::BadArgument);
        }
        list.add(key, val);
        Ok(())
    }))
}

fn proxy_replace_header_map_value(
    mut caller: Caller<'_, HostState>,
    map_type: i32,
    key_ptr: i32,
    key_len: i32,
    value_ptr: i32,
    value_len: i32,
) -> i32 {
    status(with_memory(&mut caller, |mem, state| {
        let map = map_of(map_type)?;
        let (key, val) = (bytes(mem, key_ptr, key_len)?, bytes(mem, value_ptr, value_len)?);
        let list = writable(state, map)?;
        let (key, val) = (name(key)?, value(val)?);
        if list.len() >= MAX_HEADERS && list.get(key).is_none() {
            return Err(Status::BadArgument);
        }
        list.set_bytes(key, val);
        Ok(())
    }))
}

fn proxy_remove_header_map_value(mut caller: Caller<'_, HostState>, map_type: i32, key_ptr: i32, key_len: i32) -> i32 {
    status(with_memory(&mut caller, |mem, state| {
        let map = map_of(map_type)?;
        let key = bytes(mem, key_ptr, key_len)?;
        writable(state, map)?.remove_bytes(key);
        Ok(())
    }))
}

fn proxy_get_header_map_size(mut caller: Caller<'_, HostState>, map_type: i32, ret_size: i32) -> i32 {
    status(with_memory(&mut caller, |mem, state| {
        let map = map_of(map_type)?;
        let list = readable(state, map)?;
        let size = if list.is_empty() {
            0
        } else {
            serialized_map_size(list.entries()).ok_or(Status::BadArgument)?
        };
        write_u32(mem, ret_size, size as u32)
    }))
}
