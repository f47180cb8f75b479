//! Logging and clocks: `proxy_log`, `proxy_get_log_level`, `proxy_get_current_time_nanoseconds`.
//!
//! Filter logs go to `tracing` with target `tidegate::filter` and the field `filter=<name>`, so
//! `RUST_LOG=tidegate::filter=debug` turns them up without touching the host's own logs.

use std::time::{SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker};

use super::{ENV, Status, status};
use crate::wasm::host::HostState;
use crate::wasm::memory::{bytes, with_memory, write_u32, write_u64};

/// The longest message logged as is; longer ones are cut (and say so). Keeps one call from
/// formatting megabytes into the host's log pipeline.
pub(crate) const MAX_LOG_MESSAGE: usize = 16 * 1024;

/// `proxy_log_level_t`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
    Critical,
}

impl LogLevel {
    fn from_abi(level: i32) -> Option<Self> {
        Some(match level {
            0 => Self::Trace,
            1 => Self::Debug,
            2 => Self::Info,
            3 => Self::Warn,
            4 => Self::Error,
            5 => Self::Critical,
            _ => return None,
        })
    }
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(ENV, "proxy_log", proxy_log)?;
    linker.func_wrap(ENV, "proxy_get_log_level", proxy_get_log_level)?;
    linker.func_wrap(
        ENV,
        "proxy_get_current_time_nanoseconds",
        proxy_get_current_time_nanoseconds,
    )?;
    Ok(())
}

fn proxy_log(mut caller: Caller<'_, HostState>, level: i32, msg_ptr: i32, msg_len: i32) -> i32 {
    let Some(level) = LogLevel::from_abi(level) else {
        return Status::BadArgument as i32;
    };
    status(with_memory(&mut caller, |mem, state| {
        emit(level, &state.filter, bytes(mem, msg_ptr, msg_len)?);
        Ok(())
    }))
}

/// Logs `msg` for `filter` at `level` (target `tidegate::filter`).
pub(crate) fn emit(level: LogLevel, filter: &str, msg: &[u8]) {
    let cut = msg.len().saturating_sub(MAX_LOG_MESSAGE);
    let msg = &msg[..msg.len() - cut];
    // Formatting only happens if the event is enabled.
    macro_rules! event {
        ($level:expr) => {
            if cut == 0 {
                tracing::event!(target: "tidegate::filter", $level, filter, "{}", String::from_utf8_lossy(msg).trim_end_matches('\n'))
            } else {
                tracing::event!(target: "tidegate::filter", $level, filter, truncated_bytes = cut, "{}", String::from_utf8_lossy(msg))
            }
        };
    }
    match level {
        LogLevel::Trace => event!(tracing::Level::TRACE),
        LogLevel::Debug => event!(tracing::Level::DEBUG),
        LogLevel::Info => event!(tracing::Level::INFO),
        LogLevel::Warn => event!(tracing::Level::WARN),
        LogLevel::Error | LogLevel::Critical => event!(tracing::Level::ERROR),
    }
}

/// The most verbose level enabled for `tidegate::filter`, so filters skip building messages the
/// host would drop. (The answer can go stale if the host's filter changes; the spec allows it.)
fn current_level() -> u32 {
    macro_rules! enabled {
        ($level:expr) => {
            tracing::enabled!(target: "tidegate::filter", $level)
        };
    }
    if enabled!(tracing::Level::TRACE) {
        0
    } else if enabled!(tracing::Level::DEBUG) {
        1
    } else if enabled!(tracing::Level::INFO) {
        2
    } else if enabled!(tracing::Level::WARN) {
        3
    } else if enabled!(tracing::Level::ERROR) {
        4
    } else {
        5
    }
}

fn proxy_get_log_level(mut caller: Caller<'_, HostState>, ret_level: i32) -> i32 {
    let level = current_level();
    status(with_memory(&mut caller, |mem, _| write_u32(mem, ret_level, level)))
}

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn proxy_get_current_time_nanoseconds(mut caller: Caller<'_, HostState>, ret_time: i32) -> i32 {
    let now = now_unix_nanos();
    status(with_memory(&mut caller, |mem, _| write_u64(mem, ret_time, now)))
}
