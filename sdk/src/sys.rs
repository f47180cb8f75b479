//! The five proxy-wasm imports the helpers call, declared here rather than reached through
//! `proxy_wasm::hostcalls`, so that no status a host answers can make a helper panic.
//!
//! `proxy-wasm` 0.2.5 panics on any status its wrapper does not expect (`set_property` accepts
//! only `OK`, `call_foreign_function` panics on `UNIMPLEMENTED`, `send_http_response` on
//! anything but `OK`), and with `panic = "abort"` that panic is a trap that takes the whole VM
//! down. These wrappers return the status instead. They link to the same `env` imports as the
//! `proxy-wasm` crate (an import is identified by module and name, so the module imports each
//! function once).
//!
//! Off wasm32 (a filter's native unit tests) there is no host: reads answer `NOT_FOUND` and
//! writes are refused the same way, so a helper called natively returns `None` or does nothing.
//!
//! This is the only module of the crate with `unsafe` code.

/// A `proxy_status_t` other than `OK`, as the host answered it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Status(pub(crate) u32);

impl Status {
    pub(crate) const NOT_FOUND: Status = Status(1);

    /// The spec's name for the status, for log messages.
    pub(crate) fn name(self) -> &'static str {
        match self.0 {
            1 => "NOT_FOUND",
            2 => "BAD_ARGUMENT",
            3 => "SERIALIZATION_FAILURE",
            4 => "PARSE_FAILURE",
            6 => "INVALID_MEMORY_ACCESS",
            7 => "EMPTY",
            8 => "CAS_MISMATCH",
            10 => "INTERNAL_FAILURE",
            12 => "UNIMPLEMENTED",
            _ => "an unknown status",
        }
    }
}

/// Reads the property at `path`: `Ok(None)` when the host has none (`NOT_FOUND`).
pub(crate) fn get_property(path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
    let path = path.join("\0");
    match imp::get_property(path.as_bytes()) {
        Err(Status::NOT_FOUND) => Ok(None),
        other => other,
    }
}

/// Writes the property at `path`.
pub(crate) fn set_property(path: &[&str], value: &[u8]) -> Result<(), Status> {
    let path = path.join("\0");
    imp::set_property(path.as_bytes(), value)
}

/// Calls the host's foreign function `name` with `args`: `Ok(None)` when the function answered
/// without data, `Err(NOT_FOUND)` when the host does not provide it.
pub(crate) fn call_foreign_function(name: &str, args: &[u8]) -> Result<Option<Vec<u8>>, Status> {
    imp::call_foreign_function(name.as_bytes(), args)
}

/// Answers the current request with a local reply (`grpc_status` -1: plain HTTP).
pub(crate) fn send_local_response(
    status: u32,
    details: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> Result<(), Status> {
    imp::send_local_response(status, details.as_bytes(), body, &serialize_map(headers))
}

/// Resets the current request's stream (`proxy_close_stream(HTTP_REQUEST)`).
pub(crate) fn close_request() -> Result<(), Status> {
    imp::close_stream(0)
}

/// A header map in the ABI's serialization (spec "Serialization"): `u32` count, `count` ×
/// (`u32` name length, `u32` value length), then each name and value followed by a NUL.
pub(crate) fn serialize_map(pairs: &[(&str, &str)]) -> Vec<u8> {
    let size = 4 + pairs.iter().map(|(n, v)| 10 + n.len() + v.len()).sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (name, value) in pairs {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

/// Parses a map in the ABI's serialization; `None` when `bytes` is malformed (never panics).
/// An empty input is an empty map.
pub(crate) fn deserialize_map(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let read_u32 = |at: usize| -> Option<usize> {
        let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
        usize::try_from(u32::from_le_bytes(raw)).ok()
    };
    let count = read_u32(0)?;
    // Each pair takes at least 10 bytes (two lengths, two NULs): refuse counts the input
    // cannot hold before allocating for them.
    if count > bytes.len() / 10 {
        return None;
    }
    let mut pairs = Vec::with_capacity(count);
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    for index in 0..count {
        let name_len = read_u32(4 + index * 8)?;
        let value_len = read_u32(8 + index * 8)?;
        let name = bytes.get(data..data.checked_add(name_len)?)?;
        data = data.checked_add(name_len)?;
        if bytes.get(data) != Some(&0) {
            return None;
        }
        data += 1;
        let value = bytes.get(data..data.checked_add(value_len)?)?;
        data = data.checked_add(value_len)?;
        if bytes.get(data) != Some(&0) {
            return None;
        }
        data += 1;
        pairs.push((
            String::from_utf8(name.to_vec()).ok()?,
            String::from_utf8(value.to_vec()).ok()?,
        ));
    }
    Some(pairs)
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use std::ptr::{null, null_mut};

    use super::Status;

    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        fn proxy_get_property(
            path_data: *const u8,
            path_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        fn proxy_set_property(path_data: *const u8, path_size: usize, value_data: *const u8, value_size: usize) -> u32;
        fn proxy_call_foreign_function(
            function_name_data: *const u8,
            function_name_size: usize,
            arguments_data: *const u8,
            arguments_size: usize,
            results_data: *mut *mut u8,
            results_size: *mut usize,
        ) -> u32;
        fn proxy_close_stream(stream_type: u32) -> u32;
        fn proxy_send_local_response(
            status_code: u32,
            status_code_details_data: *const u8,
            status_code_details_size: usize,
            body_data: *const u8,
            body_size: usize,
            headers_data: *const u8,
            headers_size: usize,
            grpc_status: i32,
        ) -> u32;
    }

    fn status(raw: u32) -> Result<(), Status> {
        if raw == 0 { Ok(()) } else { Err(Status(raw)) }
    }

    /// Takes ownership of a buffer the host wrote into guest memory. The host allocated it
    /// through the SDK's `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes), so
    /// it is freed as a `Vec` of that length and capacity, as `proxy-wasm` itself does.
    fn take(data: *mut u8, size: usize) -> Option<Vec<u8>> {
        if data.is_null() {
            return None;
        }
        // SAFETY: `data` was returned by the host for this call, points to `size` bytes
        // allocated by `proxy_on_memory_allocate(size)` and is owned by nobody else.
        Some(unsafe { Vec::from_raw_parts(data, size, size) })
    }

    pub(super) fn get_property(path: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        let mut data = null_mut();
        let mut size = 0;
        // SAFETY: the pointers are valid for the call; the host writes only the two out-slots.
        let raw = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut size) };
        status(raw)?;
        Ok(take(data, size))
    }

    pub(super) fn set_property(path: &[u8], value: &[u8]) -> Result<(), Status> {
        // SAFETY: the host only reads the two buffers during the call.
        status(unsafe { proxy_set_property(path.as_ptr(), path.len(), value.as_ptr(), value.len()) })
    }

    pub(super) fn call_foreign_function(name: &[u8], args: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        let mut data = null_mut();
        let mut size = 0;
        let args_ptr = if args.is_empty() { null() } else { args.as_ptr() };
        // SAFETY: as for `get_property`.
        let raw = unsafe {
            proxy_call_foreign_function(name.as_ptr(), name.len(), args_ptr, args.len(), &mut data, &mut size)
        };
        status(raw)?;
        Ok(take(data, size))
    }

    pub(super) fn close_stream(stream_type: u32) -> Result<(), Status> {
        // SAFETY: no pointers.
        status(unsafe { proxy_close_stream(stream_type) })
    }

    pub(super) fn send_local_response(
        status_code: u32,
        details: &[u8],
        body: &[u8],
        headers: &[u8],
    ) -> Result<(), Status> {
        // SAFETY: the host only reads the three buffers during the call.
        let raw = unsafe {
            proxy_send_local_response(
                status_code,
                details.as_ptr(),
                details.len(),
                body.as_ptr(),
                body.len(),
                headers.as_ptr(),
                headers.len(),
                -1,
            )
        };
        status(raw)
    }
}

/// No host off wasm32: every read is `NOT_FOUND`, every write is refused with it.
#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::Status;

    pub(super) fn get_property(_path: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        Err(Status::NOT_FOUND)
    }

    pub(super) fn set_property(_path: &[u8], _value: &[u8]) -> Result<(), Status> {
        Err(Status::NOT_FOUND)
    }

    pub(super) fn call_foreign_function(_name: &[u8], _args: &[u8]) -> Result<Option<Vec<u8>>, Status> {
        Err(Status::NOT_FOUND)
    }

    pub(super) fn close_stream(_stream_type: u32) -> Result<(), Status> {
        Err(Status::NOT_FOUND)
    }

    pub(super) fn send_local_response(
        _status: u32,
        _details: &[u8],
        _body: &[u8],
        _headers: &[u8],
    ) -> Result<(), Status> {
        Err(Status::NOT_FOUND)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_round_trip() {
        let pairs = [("namespace", "demo"), ("label/app", ""), ("name", "echo-0")];
        let bytes = serialize_map(&pairs);
        let back = deserialize_map(&bytes).expect("well formed");
        assert_eq!(
            back,
            pairs
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn map_matches_the_sdk_test_vector() {
        // `{":method": "GET"}` from proxy-wasm's own tests.
        let bytes = serialize_map(&[(":method", "GET")]);
        assert_eq!(
            bytes,
            [
                1, 0, 0, 0, 7, 0, 0, 0, 3, 0, 0, 0, b':', b'm', b'e', b't', b'h', b'o', b'd', 0, b'G', b'E', b'T', 0
            ]
        );
        assert_eq!(deserialize_map(&[]), Some(Vec::new()));
        assert_eq!(deserialize_map(&[0, 0, 0, 0]), Some(Vec::new()));
    }

    #[test]
    fn malformed_maps_are_refused_not_panicked_on() {
        let good = serialize_map(&[("a", "b")]);
        for cut in 1..good.len() {
            assert_eq!(deserialize_map(&good[..cut]), None, "cut at {cut}");
        }
        assert_eq!(deserialize_map(&[255, 255, 255, 255]), None);
        let mut missing_nul = good.clone();
        missing_nul[13] = b'x';
        assert_eq!(deserialize_map(&missing_nul), None);
        let mut huge_len = good;
        huge_len[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(deserialize_map(&huge_len), None);
    }

    #[test]
    fn natively_there_is_no_host() {
        assert_eq!(get_property(&["tidegate", "route"]), Ok(None));
        assert_eq!(set_property(&["tidegate", "route"], b"x"), Err(Status::NOT_FOUND));
        assert_eq!(
            call_foreign_function("tidegate.endpoints", b"x"),
            Err(Status::NOT_FOUND)
        );
        assert_eq!(send_local_response(403, "", b"", &[]), Err(Status::NOT_FOUND));
        assert_eq!(close_request(), Err(Status::NOT_FOUND));
    }
}
