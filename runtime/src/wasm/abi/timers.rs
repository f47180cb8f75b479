//! Timers: `proxy_set_tick_period_milliseconds`.
//!
//! The period is stored per VM (one timer per root context, as in Envoy) and read by the proxy
//! through [`FilterInstance::tick_period`](crate::wasm::FilterInstance::tick_period). Delivering
//! `proxy_on_tick` is the proxy's job and is not built yet, so for now a filter's ticks never fire.

use wasmtime::{Caller, Linker};

use super::{ENV, Status};
use crate::wasm::host::HostState;

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        ENV,
        "proxy_set_tick_period_milliseconds",
        proxy_set_tick_period_milliseconds,
    )?;
    Ok(())
}

fn proxy_set_tick_period_milliseconds(mut caller: Caller<'_, HostState>, period_ms: i32) -> i32 {
    caller.data_mut().tick_period_ms = period_ms as u32;
    Status::Ok as i32
}
