//! WASI preview 1 (`wasi_snapshot_preview1`), as a proxy-wasm host offers it to `wasm32-wasip1`
//! guests: all 46 functions link, so any Rust, C or TinyGo runtime's imports resolve.
//!
//! | function | behaviour |
//! |---|---|
//! | `fd_write` | fd 1 → log at INFO, fd 2 → log at ERROR (target `tidegate::filter`), others `BADF` |
//! | `fd_fdstat_get` | fds 0-2 are character devices (so libc stdio writes to them); others `BADF` |
//! | `clock_time_get`, `clock_res_get` | realtime and monotonic clocks; CPU-time clocks `NOTSUP` |
//! | `random_get` | see [`Rng`](crate::wasm::host) (a keyed PRF); more than [`MAX_RANDOM`] bytes `INVAL` |
//! | `args_*`, `environ_*` | empty (the host's environment is never exposed) |
//! | `sched_yield` | success |
//! | `proc_exit` | traps: the instance is unusable afterwards (see `FilterInstance::start` for `_start`) |
//! | every other `fd_*`, `path_*` | `BADF`: there are no files (`fd_prestat_get` → `BADF` ends libc's preopen scan) |
//! | `poll_oneoff`, `proc_raise`, `sock_*` | `NOTSUP` |
//!
//! Bad guest pointers answer `FAULT`, never a trap.

use wasmtime::{Caller, Linker};

use super::log::{LogLevel, MAX_LOG_MESSAGE, emit, now_unix_nanos};
use crate::wasm::host::HostState;
use crate::wasm::memory::{bytes, range, read_u32, with_memory, write_u32, write_u64};

const WASI: &str = "wasi_snapshot_preview1";

/// `errno` values.
mod errno {
    pub(super) const SUCCESS: i32 = 0;
    pub(super) const BADF: i32 = 8;
    pub(super) const FAULT: i32 = 21;
    pub(super) const INVAL: i32 = 28;
    pub(super) const NOTSUP: i32 = 58;
}
use errno::{BADF, FAULT, INVAL, NOTSUP, SUCCESS};

/// The most bytes one `random_get` fills.
pub(crate) const MAX_RANDOM: usize = 64 * 1024;
/// The most iovecs one `fd_write` takes (Linux's `IOV_MAX`).
const MAX_IOVS: usize = 1024;

/// The trap `proc_exit` raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcExit(pub(crate) i32);

impl std::fmt::Display for ProcExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the filter called proc_exit({})", self.0)
    }
}

impl std::error::Error for ProcExit {}

/// The errno for a result of the checked memory accessors (any failure is a bad pointer).
fn errno<T>(result: Result<T, super::Status>) -> i32 {
    match result {
        Ok(_) => SUCCESS,
        Err(_) => FAULT,
    }
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    // Arguments and environment: empty.
    linker.func_wrap(WASI, "args_get", |_: i32, _: i32| SUCCESS)?;
    linker.func_wrap(WASI, "args_sizes_get", zero_sizes)?;
    linker.func_wrap(WASI, "environ_get", |_: i32, _: i32| SUCCESS)?;
    linker.func_wrap(WASI, "environ_sizes_get", zero_sizes)?;

    // Clocks and randomness.
    linker.func_wrap(WASI, "clock_res_get", clock_res_get)?;
    linker.func_wrap(WASI, "clock_time_get", clock_time_get)?;
    linker.func_wrap(WASI, "random_get", random_get)?;

    // Process.
    linker.func_wrap(WASI, "proc_exit", |code: i32| -> wasmtime::Result<()> {
        Err(wasmtime::Error::new(ProcExit(code)))
    })?;
    linker.func_wrap(WASI, "proc_raise", |_: i32| NOTSUP)?;
    linker.func_wrap(WASI, "sched_yield", || SUCCESS)?;
    linker.func_wrap(WASI, "poll_oneoff", |_: i32, _: i32, _: i32, _: i32| NOTSUP)?;

    // Standard streams.
    linker.func_wrap(WASI, "fd_write", fd_write)?;
    linker.func_wrap(WASI, "fd_fdstat_get", fd_fdstat_get)?;

    // Files: there are none.
    linker.func_wrap(WASI, "fd_advise", |_: i32, _: i64, _: i64, _: i32| BADF)?;
    linker.func_wrap(WASI, "fd_allocate", |_: i32, _: i64, _: i64| BADF)?;
    linker.func_wrap(WASI, "fd_close", |_: i32| BADF)?;
    linker.func_wrap(WASI, "fd_datasync", |_: i32| BADF)?;
    linker.func_wrap(WASI, "fd_fdstat_set_flags", |_: i32, _: i32| BADF)?;
    linker.func_wrap(WASI, "fd_fdstat_set_rights", |_: i32, _: i64, _: i64| BADF)?;
    linker.func_wrap(WASI, "fd_filestat_get", |_: i32, _: i32| BADF)?;
    linker.func_wrap(WASI, "fd_filestat_set_size", |_: i32, _: i64| BADF)?;
    linker.func_wrap(WASI, "fd_filestat_set_times", |_: i32, _: i64, _: i64, _: i32| BADF)?;
    linker.func_wrap(WASI, "fd_pread", |_: i32, _: i32, _: i32, _: i64, _: i32| BADF)?;
    linker.func_wrap(WASI, "fd_prestat_get", |_: i32, _: i32| BADF)?;
    linker.func_wrap(WASI, "fd_prestat_dir_name", |_: i32, _: i32, _: i32| BADF)?;
    linker.func_wrap(WASI, "fd_pwrite", |_: i32, _: i32, _: i32, _: i64, _: i32| BADF)?;
    linker.func_wrap(WASI, "fd_read", |_: i32, _: i32, _: i32, _: i32| BADF)?;
    linker.func_wrap(WASI, "fd_readdir", |_: i32, _: i32, _: i32, _: i64, _: i32| BADF)?;
    linker.func_wrap(WASI, "fd_renumber", |_: i32, _: i32| BADF)?;
    linker.func_wrap(WASI, "fd_seek", |_: i32, _: i64, _: i32, _: i32| BADF)?;
    linker.func_wrap(WASI, "fd_sync", |_: i32| BADF)?;
    linker.func_wrap(WASI, "fd_tell", |_: i32, _: i32| BADF)?;
    linker.func_wrap(WASI, "path_create_directory", |_: i32, _: i32, _: i32| BADF)?;
    linker.func_wrap(WASI, "path_filestat_get", |_: i32, _: i32, _: i32, _: i32, _: i32| BADF)?;
    linker.func_wrap(
        WASI,
        "path_filestat_set_times",
        |_: i32, _: i32, _: i32, _: i32, _: i64, _: i64, _: i32| BADF,
    )?;
    linker.func_wrap(
        WASI,
        "path_link",
        |_: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| BADF,
    )?;
    linker.func_wrap(
        WASI,
        "path_open",
        |_: i32, _: i32, _: i32, _: i32, _: i32, _: i64, _: i64, _: i32, _: i32| BADF,
    )?;
    linker.func_wrap(
        WASI,
        "path_readlink",
        |_: i32, _: i32, _: i32, _: i32, _: i32, _: i32| BADF,
    )?;
    linker.func_wrap(WASI, "path_remove_directory", |_: i32, _: i32, _: i32| BADF)?;
    linker.func_wrap(WASI, "path_rename", |_: i32, _: i32, _: i32, _: i32, _: i32, _: i32| {
        BADF
    })?;
    linker.func_wrap(WASI, "path_symlink", |_: i32, _: i32, _: i32, _: i32, _: i32| BADF)?;
    linker.func_wrap(WASI, "path_unlink_file", |_: i32, _: i32, _: i32| BADF)?;

    // Sockets: none.
    linker.func_wrap(WASI, "sock_accept", |_: i32, _: i32, _: i32| NOTSUP)?;
    linker.func_wrap(WASI, "sock_recv", |_: i32, _: i32, _: i32, _: i32, _: i32, _: i32| {
        NOTSUP
    })?;
    linker.func_wrap(WASI, "sock_send", |_: i32, _: i32, _: i32, _: i32, _: i32| NOTSUP)?;
    linker.func_wrap(WASI, "sock_shutdown", |_: i32, _: i32| NOTSUP)?;
    Ok(())
}

/// `args_sizes_get` / `environ_sizes_get`: zero entries, zero bytes (so `*_get` is never needed).
fn zero_sizes(mut caller: Caller<'_, HostState>, ret_count: i32, ret_size: i32) -> i32 {
    errno(with_memory(&mut caller, |mem, _| {
        range(mem.len(), ret_count, 4)?;
        write_u32(mem, ret_size, 0)?;
        write_u32(mem, ret_count, 0)
    }))
}

const CLOCK_REALTIME: i32 = 0;
const CLOCK_MONOTONIC: i32 = 1;

fn monotonic_nanos() -> u64 {
    static START: std::sync::LazyLock<std::time::Instant> = std::sync::LazyLock::new(std::time::Instant::now);
    START.elapsed().as_nanos() as u64
}

fn clock_res_get(mut caller: Caller<'_, HostState>, clock: i32, ret: i32) -> i32 {
    if !matches!(clock, CLOCK_REALTIME | CLOCK_MONOTONIC) {
        return NOTSUP;
    }
    errno(with_memory(&mut caller, |mem, _| write_u64(mem, ret, 1)))
}

fn clock_time_get(mut caller: Caller<'_, HostState>, clock: i32, _precision: i64, ret: i32) -> i32 {
    let now = match clock {
        CLOCK_REALTIME => now_unix_nanos(),
        CLOCK_MONOTONIC => monotonic_nanos(),
        _ => return NOTSUP,
    };
    errno(with_memory(&mut caller, |mem, _| write_u64(mem, ret, now)))
}

fn random_get(mut caller: Caller<'_, HostState>, buf: i32, len: i32) -> i32 {
    if len as u32 as usize > MAX_RANDOM {
        return INVAL;
    }
    errno(with_memory(&mut caller, |mem, state| {
        let r = range(mem.len(), buf, len as u32 as u64)?;
        state.rng.fill(&mut mem[r]);
        Ok(())
    }))
}

fn fd_write(mut caller: Caller<'_, HostState>, fd: i32, iovs: i32, iovs_len: i32, ret_written: i32) -> i32 {
    let level = match fd {
        1 => LogLevel::Info,
        2 => LogLevel::Error,
        _ => return BADF,
    };
    let count = iovs_len as u32 as usize;
    if count > MAX_IOVS {
        return INVAL;
    }
    let written = with_memory(&mut caller, |mem, state| {
        let table = bytes(mem, iovs, (count * 8) as i32)?;
        let mut total = 0usize;
        let mut message: Vec<u8> = Vec::new();
        let mut single: Option<&[u8]> = None;
        for i in 0..count {
            let ptr = read_u32(table, (i * 8) as i32)? as i32;
            let len = read_u32(table, (i * 8 + 4) as i32)? as i32;
            let part = bytes(mem, ptr, len)?;
            total += part.len();
            if count == 1 {
                single = Some(part);
            } else if message.len() < MAX_LOG_MESSAGE + 1 {
                message.extend_from_slice(&part[..part.len().min(MAX_LOG_MESSAGE + 1 - message.len())]);
            }
        }
        range(mem.len(), ret_written, 4)?;
        let text = single.unwrap_or(&message);
        if !text.is_empty() {
            emit(level, &state.filter, text);
        }
        write_u32(mem, ret_written, total as u32)
    });
    errno(written)
}

fn fd_fdstat_get(mut caller: Caller<'_, HostState>, fd: i32, ret: i32) -> i32 {
    const CHARACTER_DEVICE: u8 = 2;
    const RIGHT_FD_READ: u64 = 1 << 1;
    const RIGHT_FD_WRITE: u64 = 1 << 6;
    let rights = match fd {
        0 => RIGHT_FD_READ,
        1 | 2 => RIGHT_FD_WRITE,
        _ => return BADF,
    };
    errno(with_memory(&mut caller, |mem, _| {
        let r = range(mem.len(), ret, 24)?;
        let out = &mut mem[r];
        out.fill(0);
        out[0] = CHARACTER_DEVICE;
        out[8..16].copy_from_slice(&rights.to_le_bytes());
        Ok(())
    }))
}
