//! A hostile filter for sandbox tests. The request header `x-hostile` picks the misbehaviour:
//! `loop` (never returns), `trap` (panics, i.e. `unreachable`), `grow` (allocates until the
//! memory cap), `huge-header` (asks the host to add a 64 MiB header), `bad-pointer` (passes a
//! pointer outside its memory to a hostcall, then continues). Anything else passes through.
#![cfg(target_arch = "wasm32")]

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream;

impl Context for Stream {}

extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        match self.get_http_request_header("x-hostile").as_deref() {
            Some("loop") => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Some("trap") => panic!("hostile filter: deliberate trap"),
            Some("grow") => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Some("huge-header") => {
                let value = "x".repeat(64 << 20);
                self.add_http_request_header("x-huge", &value);
            }
            Some("bad-pointer") => {
                // The host must refuse (INVALID_MEMORY_ACCESS), not crash.
                let status = unsafe { proxy_log(2, 0xFFFF_FF00usize as *const u8, 4096) };
                self.set_http_request_header("x-bad-pointer-status", Some(&status.to_string()));
            }
            _ => {}
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.set_http_response_header("x-hostile-survived", Some("yes"));
        Action::Continue
    }
}
