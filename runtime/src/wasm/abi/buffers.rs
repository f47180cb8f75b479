//! Buffers: `proxy_get_buffer_bytes`, `proxy_set_buffer_bytes`, `proxy_get_buffer_status`.
//!
//! Served: `VM_CONFIGURATION` (always empty: tidegate has no VM configuration) and
//! `PLUGIN_CONFIGURATION` (the bytes given to [`FilterInstance::start`](crate::wasm::FilterInstance::start)),
//! readable in any callback, as in Envoy. Bodies, L4 data, callout responses, gRPC messages and
//! foreign-function arguments are not built yet: those buffers answer `NOT_FOUND` ("not
//! available"), which the Rust SDK turns into `None`. Configuration buffers are read-only
//! (`NOT_FOUND` on set). Ids past `FOREIGN_FUNCTION_ARGUMENTS` are `BAD_ARGUMENT`.

use wasmtime::{Caller, Linker};

use super::buffer_type::{FOREIGN_FUNCTION_ARGUMENTS, PLUGIN_CONFIGURATION, VM_CONFIGURATION};
use super::{ENV, Status, status};
use crate::wasm::host::HostState;
use crate::wasm::memory::{copy_to_guest, memory, range, with_memory, write_u32};

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(ENV, "proxy_get_buffer_bytes", proxy_get_buffer_bytes)?;
    linker.func_wrap(ENV, "proxy_set_buffer_bytes", proxy_set_buffer_bytes)?;
    linker.func_wrap(ENV, "proxy_get_buffer_status", proxy_get_buffer_status)?;
    Ok(())
}

#[derive(Clone, Copy)]
enum Config {
    Vm,
    Plugin,
}

/// Which configuration buffer `buffer` names, or the status for any other id.
fn config_buffer(buffer: i32) -> Result<Config, Status> {
    match buffer {
        VM_CONFIGURATION => Ok(Config::Vm),
        PLUGIN_CONFIGURATION => Ok(Config::Plugin),
        0..=FOREIGN_FUNCTION_ARGUMENTS => Err(Status::NotFound),
        _ => Err(Status::BadArgument),
    }
}

fn config_of(state: &mut HostState, which: Config) -> &mut Vec<u8> {
    match which {
        Config::Vm => &mut state.vm_config,
        Config::Plugin => &mut state.plugin_config,
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
    let which = match config_buffer(buffer) {
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
    // The configuration is moved out while the guest allocator runs (nothing can change it), so
    // it is copied once, straight into the guest. Like the C++ host, a window past the end is
    // clamped, and an empty one is returned as (0, 0).
    let config = std::mem::take(config_of(caller.data_mut(), which));
    let start = (start as u32 as usize).min(config.len());
    let end = start.saturating_add(max_size as u32 as usize).min(config.len());
    let result = copy_to_guest(&mut caller, mem, &config[start..end], ret_ptr, ret_len);
    *config_of(caller.data_mut(), which) = config;
    result.map(status)
}

fn proxy_set_buffer_bytes(
    _caller: Caller<'_, HostState>,
    buffer: i32,
    _start: i32,
    _size: i32,
    _ptr: i32,
    _len: i32,
) -> i32 {
    match config_buffer(buffer) {
        Ok(_) => Status::NotFound as i32,
        Err(s) => s as i32,
    }
}

fn proxy_get_buffer_status(mut caller: Caller<'_, HostState>, buffer: i32, ret_size: i32, ret_flags: i32) -> i32 {
    let which = match config_buffer(buffer) {
        Ok(which) => which,
        Err(s) => return s as i32,
    };
    status(with_memory(&mut caller, |mem, state| {
        let size = config_of(state, which).len() as u32;
        range(mem.len(), ret_flags, 4)?;
        write_u32(mem, ret_size, size)?;
        write_u32(mem, ret_flags, 0)
    }))
}
