//! Checked access to guest memory: the only place hostcalls touch it.
//!
//! Every `(ptr, len)` a guest passes is checked against the current memory size with 64-bit
//! arithmetic (no wrap-around) and refused with `INVALID_MEMORY_ACCESS`, never a host panic.
//! Values go back to the guest the way the ABI prescribes: the host calls the guest allocator,
//! checks the pointer it returned, copies the bytes in and writes `(ptr, len)` to the guest's
//! return slots; the guest owns (and frees) the buffer.

use wasmtime::{Caller, Memory};

use super::abi::Status;
use super::host::{HostState, SCRATCH_KEEP};

/// The most bytes one hostcall copies into the guest (a header map, a property, a config
/// buffer). Well above any real header block; a larger value is refused with `BAD_ARGUMENT`
/// rather than growing the guest towards its memory cap in one call.
pub(crate) const MAX_GUEST_COPY: usize = 16 * 1024 * 1024;

/// The range `ptr..ptr + len` if it lies inside memory of `mem_len` bytes.
#[inline]
pub(crate) fn range(mem_len: usize, ptr: i32, len: u64) -> Result<std::ops::Range<usize>, Status> {
    let start = ptr as u32 as u64;
    let end = start.checked_add(len).ok_or(Status::InvalidMemoryAccess)?;
    if end > mem_len as u64 {
        return Err(Status::InvalidMemoryAccess);
    }
    Ok(start as usize..end as usize)
}

/// The guest bytes at `(ptr, len)`.
#[inline]
pub(crate) fn bytes(mem: &[u8], ptr: i32, len: i32) -> Result<&[u8], Status> {
    let r = range(mem.len(), ptr, len as u32 as u64)?;
    Ok(&mem[r])
}

/// Writes a little-endian u32 at `ptr`.
#[inline]
pub(crate) fn write_u32(mem: &mut [u8], ptr: i32, value: u32) -> Result<(), Status> {
    let r = range(mem.len(), ptr, 4)?;
    mem[r].copy_from_slice(&value.to_le_bytes());
    Ok(())
}

/// Writes a little-endian u64 at `ptr`.
#[inline]
pub(crate) fn write_u64(mem: &mut [u8], ptr: i32, value: u64) -> Result<(), Status> {
    let r = range(mem.len(), ptr, 8)?;
    mem[r].copy_from_slice(&value.to_le_bytes());
    Ok(())
}

/// Reads a little-endian u32 at `ptr`.
#[inline]
pub(crate) fn read_u32(mem: &[u8], ptr: i32) -> Result<u32, Status> {
    let r = range(mem.len(), ptr, 4)?;
    let b = &mem[r];
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The guest's memory, or `INVALID_MEMORY_ACCESS` if the module exports none.
#[inline]
pub(crate) fn memory(caller: &Caller<'_, HostState>) -> Result<Memory, Status> {
    caller.data().memory.ok_or(Status::InvalidMemoryAccess)
}

/// Runs `f` over guest memory (read-only) and the host state.
#[inline]
pub(crate) fn with_memory<R>(
    caller: &mut Caller<'_, HostState>,
    f: impl FnOnce(&mut [u8], &mut HostState) -> Result<R, Status>,
) -> Result<R, Status> {
    let mem = memory(caller)?;
    let (data, state) = mem.data_and_store_mut(caller);
    f(data, state)
}

/// Allocates `size` bytes in the guest and returns the checked pointer.
///
/// Fails with `INVALID_MEMORY_ACCESS` when the module has no allocator, the allocator returns 0
/// or a range outside memory (a bogus allocator cannot make the host write out of bounds), and
/// with `INTERNAL_FAILURE` when called re-entrantly from inside the allocator. A trap inside the
/// allocator (including the deadline) propagates as the outer `Err`.
pub(crate) fn guest_alloc(caller: &mut Caller<'_, HostState>, size: usize) -> wasmtime::Result<Result<u32, Status>> {
    let state = caller.data();
    let (Some(alloc), Some(mem)) = (state.allocator.clone(), state.memory) else {
        return Ok(Err(Status::InvalidMemoryAccess));
    };
    if state.in_allocator {
        return Ok(Err(Status::InternalFailure));
    }
    let Ok(size_arg) = i32::try_from(size) else {
        return Ok(Err(Status::BadArgument));
    };
    caller.data_mut().in_allocator = true;
    let result = alloc.call(&mut *caller, size_arg);
    caller.data_mut().in_allocator = false;
    let ptr = result?;
    if ptr == 0 {
        return Ok(Err(Status::InvalidMemoryAccess));
    }
    if range(mem.data_size(&*caller), ptr, size as u64).is_err() {
        return Ok(Err(Status::InvalidMemoryAccess));
    }
    Ok(Ok(ptr as u32))
}

/// Returns bytes to the guest: `fill` (given guest memory, read-only, and the host state)
/// writes them into a reused host buffer, then they are copied into a guest allocation whose
/// `(ptr, len)` go to `ret_ptr`/`ret_len`. Copying out first means nothing the guest allocator
/// does (it is guest code, and may call hostcalls) can change the value half-way.
///
/// Empty values are returned as `(0, 0)` without calling the allocator, as the C++ host does
/// (the Rust SDK reads a null pointer as "empty"/`None`). The return slots are checked before
/// anything is allocated, so a bad slot leaks no guest memory.
pub(crate) fn return_bytes(
    caller: &mut Caller<'_, HostState>,
    ret_ptr: i32,
    ret_len: i32,
    fill: impl FnOnce(&[u8], &HostState, &mut Vec<u8>) -> Result<(), Status>,
) -> wasmtime::Result<Result<(), Status>> {
    let mem = match memory(caller) {
        Ok(mem) => mem,
        Err(status) => return Ok(Err(status)),
    };
    let mem_len = mem.data_size(&*caller);
    if range(mem_len, ret_ptr, 4).is_err() || range(mem_len, ret_len, 4).is_err() {
        return Ok(Err(Status::InvalidMemoryAccess));
    }
    let mut buf = std::mem::take(&mut caller.data_mut().scratch);
    buf.clear();
    let (data, state) = mem.data_and_store_mut(&mut *caller);
    let result = match fill(data, state, &mut buf) {
        Ok(()) => copy_to_guest(caller, mem, &buf, ret_ptr, ret_len),
        Err(status) => Ok(Err(status)),
    };
    if buf.capacity() <= SCRATCH_KEEP {
        caller.data_mut().scratch = buf;
    }
    result
}

/// Copies `value` into a new guest allocation and writes its `(ptr, len)`.
pub(crate) fn copy_to_guest(
    caller: &mut Caller<'_, HostState>,
    mem: Memory,
    value: &[u8],
    ret_ptr: i32,
    ret_len: i32,
) -> wasmtime::Result<Result<(), Status>> {
    if value.len() > MAX_GUEST_COPY {
        return Ok(Err(Status::BadArgument));
    }
    let ptr = if value.is_empty() {
        0
    } else {
        match guest_alloc(caller, value.len())? {
            Ok(ptr) => ptr,
            Err(status) => return Ok(Err(status)),
        }
    };
    let data = mem.data_mut(&mut *caller);
    let written = (|| {
        if !value.is_empty() {
            let r = range(data.len(), ptr as i32, value.len() as u64)?;
            data[r].copy_from_slice(value);
        }
        write_u32(data, ret_ptr, ptr)?;
        write_u32(data, ret_len, value.len() as u32)
    })();
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_checks_never_wrap() {
        assert_eq!(range(100, 0, 100), Ok(0..100));
        assert_eq!(range(100, 99, 1), Ok(99..100));
        assert_eq!(range(100, 100, 0), Ok(100..100));
        assert_eq!(range(100, 100, 1), Err(Status::InvalidMemoryAccess));
        assert_eq!(range(100, -1, 2), Err(Status::InvalidMemoryAccess)); // 0xffff_ffff + 2
        assert_eq!(range(100, 1, u32::MAX as u64), Err(Status::InvalidMemoryAccess));
        assert_eq!(bytes(&[1, 2, 3], 1, -1), Err(Status::InvalidMemoryAccess)); // len 0xffff_ffff
    }

    #[test]
    fn little_endian_writes() {
        let mut mem = [0u8; 12];
        write_u32(&mut mem, 0, 0x0403_0201).unwrap();
        write_u64(&mut mem, 4, 0x0807_0605_0403_0201).unwrap();
        assert_eq!(mem, [1, 2, 3, 4, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(read_u32(&mem, 0), Ok(0x0403_0201));
        assert_eq!(write_u32(&mut mem, 9, 1), Err(Status::InvalidMemoryAccess));
        assert_eq!(write_u64(&mut mem, 5, 1), Err(Status::InvalidMemoryAccess));
    }
}
