//! Foreign functions: `proxy_call_foreign_function`.
//!
//! tidegate's host services will be reached here as `tidegate.<name>` (see DESIGN.md). None is
//! registered yet: after checking guest memory, every name answers `NOT_FOUND`, which the Rust
//! SDK returns as `Err(Status::NotFound)`.

use wasmtime::{Caller, Linker};

use super::{ENV, Status, status};
use crate::wasm::host::HostState;
use crate::wasm::memory::{bytes, range, with_memory};

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
) -> i32 {
    status(with_memory(&mut caller, |mem, _| {
        bytes(mem, name_ptr, name_len)?;
        bytes(mem, args_ptr, args_len)?;
        range(mem.len(), ret_ptr, 4)?;
        range(mem.len(), ret_len, 4)?;
        Err(Status::NotFound)
    }))
}
