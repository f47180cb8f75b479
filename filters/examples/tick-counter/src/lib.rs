//! A filter written against the plain `proxy-wasm` crate that exercises timers and shared data:
//! every 50 ms (`proxy_set_tick_period_milliseconds`) its root context adds one to the shared
//! counter `tick-counter.ticks`; every request adds one to `tick-counter.requests`. Both use
//! compare-and-swap, because each worker runs its own VM and all of them share the data. The
//! response carries both counts (`x-ticks`, `x-requests`).
#![cfg(target_arch = "wasm32")]

use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, Status};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

const TICKS: &str = "tick-counter.ticks";
const REQUESTS: &str = "tick-counter.requests";

/// Adds one to a shared u64 counter, retrying when another VM wrote in between.
fn increment(key: &str) -> u64 {
    loop {
        let (value, cas) = proxy_wasm::hostcalls::get_shared_data(key).unwrap_or((None, None));
        let current = value
            .and_then(|v| v.try_into().ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0);
        let next = current + 1;
        match proxy_wasm::hostcalls::set_shared_data(key, Some(&next.to_le_bytes()), cas) {
            Ok(()) => return next,
            Err(Status::CasMismatch) => continue,
            Err(_) => return current,
        }
    }
}

fn read(key: &str) -> u64 {
    let (value, _) = proxy_wasm::hostcalls::get_shared_data(key).unwrap_or((None, None));
    value
        .and_then(|v| v.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        self.set_tick_period(Duration::from_millis(50));
        true
    }

    fn on_tick(&mut self) {
        increment(TICKS);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream { request: 0 }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    request: u64,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.request = increment(REQUESTS);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.set_http_response_header("x-ticks", Some(&read(TICKS).to_string()));
        self.set_http_response_header("x-requests", Some(&self.request.to_string()));
        Action::Continue
    }
}
