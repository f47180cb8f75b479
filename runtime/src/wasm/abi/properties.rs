//! Properties: `proxy_get_property`, `proxy_set_property`.
//!
//! A read looks in the request's [`PropertyMap`](crate::wasm::PropertyMap) first (values the host
//! set, e.g. `tidegate.listener_port`, `source.address`, `request.protocol`, and values filters
//! set, e.g. `tidegate.cluster`), then in the properties derived from the request:
//!
//! | path | value |
//! |---|---|
//! | `plugin_name`, `plugin_root_id`, `plugin_vm_id` | the filter's name (readable in every callback) |
//! | `request.path`, `request.method`, `request.scheme` | `:path`, `:method`, `:scheme` |
//! | `request.host` | `:authority` (or `host`) |
//! | `request.url_path`, `request.query` | `:path` before / after the first `?` |
//! | `request.useragent`, `request.referer`, `request.id` | `user-agent`, `referer`, `x-request-id` |
//! | `request.headers.<name>`, `response.headers.<name>` | the first value of that header |
//! | `response.code` | `:status` as an 8-byte little-endian integer (Envoy's encoding of ints) |
//! | `request.size` | `content-length`, as an integer |
//! | `cluster_name`, `route_name` | the cluster and route the router chose (`tidegate.cluster`, `tidegate.route`) |
//!
//! Then in the connection's properties, built once per connection (see `proxy::listener`):
//! `source.address`, `source.port`, `destination.address`, `destination.port`, `connection.id`,
//! `connection.mtls`, `connection.requested_server_name` and `connection.tls_version` (on HTTPS),
//! `tidegate.listener_port`, `tidegate.gateways`, `tidegate.gateway`. The proxy sets per request
//! `request.protocol`, `request.time` (int64 nanoseconds) and `upstream.address` (once the
//! request is sent on); filters set the `tidegate.*` properties of the route decision.
//!
//! Anything else is `NOT_FOUND` (never `UNIMPLEMENTED`: the Rust SDK panics on it). Request
//! properties exist only inside an HTTP callback; in `proxy_on_configure` they are `NOT_FOUND`.
//!
//! Paths arrive as NUL-separated segments and match the dotted keys segment for segment. A
//! filter may set any path except the host-owned namespaces (`source.*`, `destination.*`,
//! `connection.*`, `upstream.*`, `request.*`, `response.*`, `plugin_*`), which answer `NOT_FOUND`
//! so a user filter cannot make later filters see a forged client address. Setting an empty
//! value removes the property. Sets outside an HTTP callback answer `NOT_FOUND`.

use wasmtime::{Caller, Linker};

use super::{ENV, Status, status, trappable};
use crate::wasm::codec::dotted_path;
use crate::wasm::exchange::HttpExchange;
use crate::wasm::host::HostState;
use crate::wasm::memory::{bytes, return_bytes, with_memory};

/// The longest property path looked up; longer ones are `NOT_FOUND`.
pub(crate) const MAX_PROPERTY_PATH: usize = 4096;
/// The largest property value a filter may set.
pub(crate) const MAX_PROPERTY_VALUE: usize = 64 * 1024;
/// The most properties one request may carry (setting a new one past it is `BAD_ARGUMENT`).
pub(crate) const MAX_PROPERTIES: usize = 256;

/// Namespaces only the host writes.
const READ_ONLY: &[&str] = &[
    "source.",
    "destination.",
    "connection.",
    "upstream.",
    "request.",
    "response.",
    "plugin_",
];

/// Properties that are a request header.
const REQUEST_HEADERS: &[(&str, &str)] = &[
    ("request.path", ":path"),
    ("request.method", ":method"),
    ("request.scheme", ":scheme"),
    ("request.useragent", "user-agent"),
    ("request.referer", "referer"),
    ("request.id", "x-request-id"),
];

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(ENV, "proxy_get_property", proxy_get_property)?;
    linker.func_wrap(ENV, "proxy_set_property", proxy_set_property)?;
    Ok(())
}

/// Whether the guest path `raw` (NUL-separated) names the dotted `key`.
fn path_eq(raw: &[u8], key: &str) -> bool {
    raw.len() == key.len()
        && raw
            .iter()
            .zip(key.bytes())
            .all(|(&a, b)| a == b || (a == 0 && b == b'.'))
}

/// The rest of `raw` after the dotted `prefix`, if it starts with it.
fn strip_path_prefix<'a>(raw: &'a [u8], prefix: &str) -> Option<&'a [u8]> {
    let head = raw.get(..prefix.len())?;
    path_eq(head, prefix).then(|| &raw[prefix.len()..])
}

fn proxy_get_property(
    mut caller: Caller<'_, HostState>,
    path_ptr: i32,
    path_len: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> wasmtime::Result<i32> {
    trappable(return_bytes(&mut caller, ret_ptr, ret_len, |mem, state, out| {
        let raw = bytes(mem, path_ptr, path_len)?;
        if raw.is_empty() || raw.len() > MAX_PROPERTY_PATH {
            return Err(Status::NotFound);
        }
        let value = lookup(state, raw)?;
        value.write(out);
        Ok(())
    }))
}

/// A property value, borrowed from the host state or computed.
enum Value<'a> {
    Bytes(&'a [u8]),
    Int(i64),
}

impl Value<'_> {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Value::Bytes(b) => out.extend_from_slice(b),
            Value::Int(i) => out.extend_from_slice(&i.to_le_bytes()),
        }
    }
}

fn lookup<'a>(state: &'a HostState, raw: &[u8]) -> Result<Value<'a>, Status> {
    if path_eq(raw, "plugin_name") || path_eq(raw, "plugin_root_id") || path_eq(raw, "plugin_vm_id") {
        return Ok(Value::Bytes(state.filter.as_bytes()));
    }
    let ex = state.exchange().ok_or(Status::NotFound)?;
    if let Some((_, value)) = ex.properties.iter().find(|(k, _)| path_eq(raw, k)) {
        return Ok(Value::Bytes(value));
    }
    if let Some(connection) = ex.connection.as_deref()
        && let Some((_, value)) = connection.entries.iter().find(|(k, _)| path_eq(raw, k))
    {
        return Ok(Value::Bytes(value));
    }
    derived(ex, raw).ok_or(Status::NotFound)
}

fn derived<'a>(ex: &'a HttpExchange, raw: &[u8]) -> Option<Value<'a>> {
    let req = &ex.request_headers;
    if let Some(&(_, header)) = REQUEST_HEADERS.iter().find(|(key, _)| path_eq(raw, key)) {
        return req.get(header).map(Value::Bytes);
    }
    if path_eq(raw, "request.host") {
        return req.get(":authority").or_else(|| req.get("host")).map(Value::Bytes);
    }
    if path_eq(raw, "request.url_path") {
        let path = req.get(":path")?;
        return Some(Value::Bytes(path.split(|&b| b == b'?').next().unwrap_or(path)));
    }
    if path_eq(raw, "request.query") {
        let path = req.get(":path")?;
        let at = path.iter().position(|&b| b == b'?')?;
        return Some(Value::Bytes(&path[at + 1..]));
    }
    if path_eq(raw, "request.size") {
        let length = std::str::from_utf8(req.get("content-length")?)
            .ok()?
            .trim()
            .parse::<i64>()
            .ok()?;
        return Some(Value::Int(length));
    }
    if path_eq(raw, "cluster_name") {
        return ex.properties.get("tidegate.cluster").map(Value::Bytes);
    }
    if path_eq(raw, "route_name") {
        return ex.properties.get("tidegate.route").map(Value::Bytes);
    }
    if path_eq(raw, "response.code") {
        let code = std::str::from_utf8(ex.response_headers.get(":status")?)
            .ok()?
            .parse::<i64>()
            .ok()?;
        return Some(Value::Int(code));
    }
    if let Some(name) = strip_path_prefix(raw, "request.headers.") {
        return req.get_bytes(name).map(Value::Bytes);
    }
    if let Some(name) = strip_path_prefix(raw, "response.headers.") {
        return ex.response_headers.get_bytes(name).map(Value::Bytes);
    }
    None
}

fn proxy_set_property(
    mut caller: Caller<'_, HostState>,
    path_ptr: i32,
    path_len: i32,
    value_ptr: i32,
    value_len: i32,
) -> i32 {
    status(with_memory(&mut caller, |mem, state| {
        let raw = bytes(mem, path_ptr, path_len)?;
        let value = bytes(mem, value_ptr, value_len)?;
        if raw.is_empty() || raw.len() > MAX_PROPERTY_PATH {
            return Err(Status::NotFound);
        }
        let mut key = std::mem::take(&mut state.path);
        let result = set(state, raw, value, &mut key);
        state.path = key;
        result
    }))
}

fn set(state: &mut HostState, raw: &[u8], value: &[u8], key: &mut String) -> Result<(), Status> {
    let key = dotted_path(raw, key).ok_or(Status::NotFound)?;
    if READ_ONLY.iter().any(|prefix| key.starts_with(prefix)) {
        return Err(Status::NotFound);
    }
    let properties = &mut state.exchange_mut().ok_or(Status::NotFound)?.properties;
    if value.is_empty() {
        properties.remove(key);
        return Ok(());
    }
    if value.len() > MAX_PROPERTY_VALUE || (properties.len() >= MAX_PROPERTIES && properties.get(key).is_none()) {
        return Err(Status::BadArgument);
    }
    properties.set_bytes(key, value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_match_segment_for_segment() {
        assert!(path_eq(b"tidegate\0cluster", "tidegate.cluster"));
        assert!(path_eq(b"tidegate.cluster", "tidegate.cluster"));
        assert!(!path_eq(b"tidegate\0cluste", "tidegate.cluster"));
        assert!(!path_eq(b"tidegate.cluster", "tidegate\0cluster"));
        assert_eq!(
            strip_path_prefix(b"request\0headers\0x-user", "request.headers."),
            Some(&b"x-user"[..])
        );
        assert_eq!(strip_path_prefix(b"request\0head", "request.headers."), None);
    }
}
