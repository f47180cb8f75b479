//! A hostile filter for sandbox tests, written with the plain `proxy-wasm` crate.
//!
//! Per request, the request header `x-hostile` picks the misbehaviour:
//! - `loop` (or `loop-request-headers`): never returns from `on_http_request_headers`;
//! - `trap`: panics there (`unreachable` with `panic = "abort"`);
//! - `grow`: allocates until the memory cap;
//! - `huge-header`: asks the host to add a 64 MiB request header;
//! - `bad-pointer`: passes a pointer outside its memory to a hostcall, then goes on and reports
//!   the status it got in the request header `x-bad-pointer-status`;
//! - `loop-request-body`, `loop-request-trailers`, `loop-response-headers`,
//!   `loop-response-body`, `loop-response-trailers`, `loop-done`, `loop-log`: never returns
//!   from that callback of this request (`loop-done` and `loop-log` run after the answer);
//! - `arm-context-create`: the next `proxy_on_context_create` of this filter, in any of its VMs
//!   (the flag is in shared data), never returns; the request that arms it passes;
//! - `arm-tick`: likewise for the next `proxy_on_tick` (with `tick=<ms>` configured), armed in
//!   `on_log`, once the arming request has been answered. VMs that
//!   start after that tick looped (its replacement) count their own ticks in a shared counter,
//!   which responses report in `x-hostile-replacement-ticks`.
//!
//! Anything else passes through. Responses the filter sees get `x-hostile-survived: yes`.
//!
//! The plugin configuration (a string, words separated by spaces or commas):
//! - `loop-vm-start`, `loop-configure`: never returns from `proxy_on_vm_start` or
//!   `proxy_on_configure`;
//! - `tick=<ms>`: asks for a tick every `<ms>` milliseconds.
#![cfg(target_arch = "wasm32")]

use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, Status};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root::default()) });
}}

/// Shared-data keys (one namespace per filter: different WasmFilters never see each other's).
const ARM_CONTEXT_CREATE: &str = "hostile.arm-context-create";
const TICK_LOOP: &str = "hostile.tick-loop";
const REPLACEMENT_TICKS: &str = "hostile.replacement-ticks";

/// Runs until the host interrupts it.
fn spin() -> ! {
    let mut n: u64 = 0;
    loop {
        n = std::hint::black_box(n.wrapping_add(1));
    }
}

fn shared(key: &str) -> (Option<Vec<u8>>, Option<u32>) {
    proxy_wasm::hostcalls::get_shared_data(key).unwrap_or((None, None))
}

/// Adds one to a shared counter (compare-and-swap: every worker runs its own VM).
fn increment(key: &str) {
    loop {
        let (value, cas) = shared(key);
        let next = read_u64(value) + 1;
        match proxy_wasm::hostcalls::set_shared_data(key, Some(&next.to_le_bytes()), cas) {
            Err(Status::CasMismatch) => continue,
            _ => return,
        }
    }
}

fn read_u64(value: Option<Vec<u8>>) -> u64 {
    value
        .and_then(|v| v.try_into().ok())
        .map(u64::from_le_bytes)
        .unwrap_or(0)
}

#[derive(Default)]
struct Root {
    /// This VM started after an armed tick looped (so it replaced the VM that looped).
    born_after_loop: bool,
}

impl Root {
    fn words(&self) -> Vec<String> {
        let config = self.get_plugin_configuration().unwrap_or_default();
        String::from_utf8_lossy(&config)
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect()
    }
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _vm_configuration_size: usize) -> bool {
        if self.words().iter().any(|w| w == "loop-vm-start") {
            spin();
        }
        true
    }

    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let words = self.words();
        if words.iter().any(|w| w == "loop-configure") {
            spin();
        }
        if let Some(ms) = words
            .iter()
            .find_map(|w| w.strip_prefix("tick="))
            .and_then(|ms| ms.parse().ok())
        {
            self.set_tick_period(Duration::from_millis(ms));
        }
        self.born_after_loop = shared(TICK_LOOP).0.as_deref() == Some(b"fired");
        true
    }

    fn on_tick(&mut self) {
        if self.born_after_loop {
            increment(REPLACEMENT_TICKS);
            return;
        }
        // Only the VM whose compare-and-swap wins loops.
        let (value, cas) = shared(TICK_LOOP);
        if value.as_deref() == Some(b"armed") && self.set_shared_data(TICK_LOOP, Some(b"fired"), cas).is_ok() {
            spin();
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let (value, cas) = shared(ARM_CONTEXT_CREATE);
        if value.as_deref() == Some(b"armed") && self.set_shared_data(ARM_CONTEXT_CREATE, Some(b"fired"), cas).is_ok() {
            spin();
        }
        Some(Box::new(Stream::default()))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

#[derive(Default)]
struct Stream {
    /// The request's `x-hostile` header.
    choice: String,
}

impl Stream {
    fn chose(&self, misbehaviour: &str) -> bool {
        self.choice == misbehaviour
    }
}

impl Context for Stream {
    fn on_done(&mut self) -> bool {
        if self.chose("loop-done") {
            spin();
        }
        true
    }
}

extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.choice = self.get_http_request_header("x-hostile").unwrap_or_default();
        match self.choice.as_str() {
            "loop" | "loop-request-headers" => spin(),
            "trap" => panic!("hostile filter: deliberate trap"),
            "grow" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            "huge-header" => {
                let value = "x".repeat(64 << 20);
                self.add_http_request_header("x-huge", &value);
            }
            "bad-pointer" => {
                // The host must refuse (INVALID_MEMORY_ACCESS), not crash.
                let status = unsafe { proxy_log(2, 0xFFFF_FF00usize as *const u8, 4096) };
                self.set_http_request_header("x-bad-pointer-status", Some(&status.to_string()));
            }
            "arm-context-create" => {
                let _ = self.set_shared_data(ARM_CONTEXT_CREATE, Some(b"armed"), None);
            }
            _ => {}
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        if self.chose("loop-request-body") {
            spin();
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        if self.chose("loop-request-trailers") {
            spin();
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if self.chose("loop-response-headers") {
            spin();
        }
        self.set_http_response_header("x-hostile-survived", Some("yes"));
        let ticks = read_u64(shared(REPLACEMENT_TICKS).0);
        self.set_http_response_header("x-hostile-replacement-ticks", Some(&ticks.to_string()));
        Action::Continue
    }

    fn on_http_response_body(&mut self, _body_size: usize, _end_of_stream: bool) -> Action {
        if self.chose("loop-response-body") {
            spin();
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        if self.chose("loop-response-trailers") {
            spin();
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        if self.chose("loop-log") {
            spin();
        }
        // Armed only once this request has been answered: a tick that looped while the arming
        // request was still in its VM would take the request down with the VM.
        if self.chose("arm-tick") {
            let _ = self.set_shared_data(TICK_LOOP, Some(b"armed"), None);
        }
    }
}
