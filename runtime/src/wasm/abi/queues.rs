//! Shared queues: `proxy_register_shared_queue`, `proxy_resolve_shared_queue`,
//! `proxy_enqueue_shared_queue`, `proxy_dequeue_shared_queue`, over the process-wide registry
//! in [`crate::wasm::queue`] (Envoy's semantics: the registering VM consumes and gets
//! `proxy_on_queue_ready`; every VM may resolve and enqueue).
//!
//! Statuses as Envoy answers them: resolving or using an unknown queue is `NOT_FOUND`,
//! dequeuing from an empty one `EMPTY`; an enqueue past the queue's bounds is
//! `INTERNAL_FAILURE`. An empty VM id in `proxy_resolve_shared_queue` means the caller's own.

use wasmtime::{Caller, Linker};

use super::{ENV, Status, status, trappable};
use crate::wasm::host::HostState;
use crate::wasm::memory::{bytes, range, return_bytes, with_memory, write_u32};
use crate::wasm::queue::{self, QueueError};

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(ENV, "proxy_register_shared_queue", proxy_register_shared_queue)?;
    linker.func_wrap(ENV, "proxy_resolve_shared_queue", proxy_resolve_shared_queue)?;
    linker.func_wrap(ENV, "proxy_enqueue_shared_queue", proxy_enqueue_shared_queue)?;
    linker.func_wrap(ENV, "proxy_dequeue_shared_queue", proxy_dequeue_shared_queue)?;
    Ok(())
}

/// The longest queue name.
const MAX_NAME: usize = 1024;

fn name(raw: &[u8]) -> Result<&str, Status> {
    if raw.len() > MAX_NAME {
        return Err(Status::BadArgument);
    }
    std::str::from_utf8(raw).map_err(|_| Status::BadArgument)
}

fn status_of(error: QueueError) -> Status {
    match error {
        QueueError::NotFound => Status::NotFound,
        QueueError::Empty => Status::Empty,
        QueueError::Full => Status::InternalFailure,
    }
}

fn proxy_register_shared_queue(mut caller: Caller<'_, HostState>, name_ptr: i32, name_len: i32, ret_id: i32) -> i32 {
    status(with_memory(&mut caller, |mem, state| {
        let queue_name = name(bytes(mem, name_ptr, name_len)?)?;
        range(mem.len(), ret_id, 4)?;
        let id = queue::register(&state.filter, queue_name, state.instance_id, state.queue_waker.clone());
        write_u32(mem, ret_id, id)
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
    status(with_memory(&mut caller, |mem, state| {
        let vm_id = name(bytes(mem, vm_ptr, vm_len)?)?;
        let queue_name = name(bytes(mem, name_ptr, name_len)?)?;
        range(mem.len(), ret_id, 4)?;
        let vm_id = if vm_id.is_empty() { &*state.filter } else { vm_id };
        let id = queue::resolve(vm_id, queue_name).ok_or(Status::NotFound)?;
        write_u32(mem, ret_id, id)
    }))
}

fn proxy_enqueue_shared_queue(mut caller: Caller<'_, HostState>, queue_id: i32, value_ptr: i32, value_len: i32) -> i32 {
    status(with_memory(&mut caller, |mem, _| {
        let item = bytes(mem, value_ptr, value_len)?.to_vec();
        queue::enqueue(queue_id as u32, item).map_err(status_of)
    }))
}

fn proxy_dequeue_shared_queue(
    mut caller: Caller<'_, HostState>,
    queue_id: i32,
    ret_ptr: i32,
    ret_len: i32,
) -> wasmtime::Result<i32> {
    // The item is taken only once the return slots are known good (`return_bytes` checks them
    // first); if the guest allocator then fails, the item is lost with the failed call, as in
    // Envoy, whose dequeue also removes before copying out.
    trappable(return_bytes(&mut caller, ret_ptr, ret_len, |_, _, out| {
        let item = queue::dequeue(queue_id as u32).map_err(status_of)?;
        out.extend_from_slice(&item);
        Ok(())
    }))
}
