//! Shared queues: `proxy_register_shared_queue`, `proxy_resolve_shared_queue`,
//! `proxy_enqueue_shared_queue`, `proxy_dequeue_shared_queue`.
//!
//! Not built yet: after checking guest memory, every call answers `NOT_FOUND` (no such queue).
//! The Rust SDK returns that as an error from resolve/enqueue/dequeue; its `register` wrapper
//! accepts only `OK` and panics, which a filter that needs queues would hit at once, rather
//! than seeming to work while `proxy_on_queue_ready` never arrives.

use wasmtime::{Caller, Linker};

use super::{ENV, Status, status};
use crate::wasm::host::HostState;
use crate::wasm::memory::{bytes, range, with_memory};

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(ENV, "proxy_register_shared_queue", proxy_register_shared_queue)?;
    linker.func_wrap(ENV, "proxy_resolve_shared_queue", proxy_resolve_shared_queue)?;
    linker.func_wrap(ENV, "proxy_enqueue_shared_queue", proxy_enqueue_shared_queue)?;
    linker.func_wrap(ENV, "proxy_dequeue_shared_queue", proxy_dequeue_shared_queue)?;
    Ok(())
}

fn proxy_register_shared_queue(mut caller: Caller<'_, HostState>, name_ptr: i32, name_len: i32, ret_id: i32) -> i32 {
    status(with_memory(&mut caller, |mem, _| {
        bytes(mem, name_ptr, name_len)?;
        range(mem.len(), ret_id, 4)?;
        Err(Status::NotFound)
    }))
}

fn proxy_resolve_shared_queue(
    mut caller: Caller<'_, HostState>,
    vm_ptr: i32,
    vm_len: i32,
    name_ptr: i32,
    name_len: i32,
    ret_id: i32,
) -> i32 {
    status(with_memory(&mut caller, |mem, _| {
        bytes(mem, vm_ptr, vm_len)?;
        bytes(mem, name_ptr, name_len)?;
        range(mem.len(), ret_id, 4)?;
        Err(Status::NotFound)
    }))
}

fn proxy_enqueue_shared_queue(mut caller: Caller<'_, HostState>, _queue: i32, value_ptr: i32, value_len: i32) -> i32 {
    status(with_memory(&mut caller, |mem, _| {
        bytes(mem, value_ptr, value_len)?;
        Err(Status::NotFound)
    }))
}

fn proxy_dequeue_shared_queue(mut caller: Caller<'_, HostState>, _queue: i32, ret_ptr: i32, ret_len: i32) -> i32 {
    status(with_memory(&mut caller, |mem, _| {
        range(mem.len(), ret_ptr, 4)?;
        range(mem.len(), ret_len, 4)?;
        Err(Status::NotFound)
    }))
}
