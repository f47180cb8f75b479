//! Foreign functions: `proxy_call_foreign_function`, tidegate's extension point for host
//! services (`tidegate.<name>`, see DESIGN.md), answered by the VM's
//! [`HostServices`](crate::wasm::HostServices).
//!
//! An unknown name is `NOT_FOUND` (the Rust SDK returns it as `Err(Status::NotFound)`), wrong
//! arguments are `BAD_ARGUMENT`, and the answer is copied into a guest allocation (`(0, 0)` when
//! empty).

use wasmtime::{Caller, Linker};

use super::{ENV, Status, trappable};
use crate::wasm::host::HostState;
use crate::wasm::memory::{bytes, return_bytes};

/// The longest function name.
const MAX_NAME: usize = 256;

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(ENV, "proxy_call_foreign_function", proxy_call_foreign_function)?;
    Ok(())
}

fn proxy_call_foreign_function(
    mut caller: Caller<'_, HostState>,
    name_ptr: i32,
    name_len: i32,
    args_ptr: i32,
    args_len: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> wasmtime::Result<i32> {
    trappable(return_bytes(&mut caller, ret_ptr, ret_len, |mem, state, out| {
        let name = bytes(mem, name_ptr, name_len)?;
        let args = bytes(mem, args_ptr, args_len)?;
        if name.len() > MAX_NAME {
            return Err(Status::BadArgument);
        }
        let name = std::str::from_utf8(name).map_err(|_| Status::NotFound)?;
        let services = state.services.as_ref().ok_or(Status::NotFound)?;
        match services.foreign_function(name, args) {
            None => Err(Status::NotFound),
            Some(Err(())) => Err(Status::BadArgument),
            Some(Ok(answer)) => {
                out.extend_from_slice(&answer);
                Ok(())
            }
        }
    }))
}
