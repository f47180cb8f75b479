//! A filter written against the plain `proxy-wasm` crate that uses a shared queue as Envoy
//! filters do: every worker's root context registers queue `events` (the last one to register
//! consumes it); each request resolves it and enqueues its path; the consumer drains the queue
//! in `proxy_on_queue_ready` and keeps, in shared data, how many items it drained (`drained`)
//! and the sum of the numbers that end their paths (`sum`, e.g. `/queue/7` adds 7). Responses
//! carry both as `x-queue-drained` and `x-queue-sum`, so a test can see the queue at work.
#![cfg(target_arch = "wasm32")]

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

const QUEUE: &str = "events";

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { queue: None }) });
}}

struct Root {
    queue: Option<u32>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        match hostcalls::register_shared_queue(QUEUE) {
            Ok(id) => {
                self.queue = Some(id);
                true
            }
            Err(status) => {
                hostcalls::log(LogLevel::Error, &format!("register_shared_queue: {status:?}")).ok();
                false
            }
        }
    }

    fn on_queue_ready(&mut self, queue_id: u32) {
        while let Ok(Some(item)) = hostcalls::dequeue_shared_queue(queue_id) {
            let n: u64 = String::from_utf8_lossy(&item)
                .rsplit('/')
                .next()
                .and_then(|last| last.parse().ok())
                .unwrap_or(0);
            add("drained", 1);
            add("sum", n);
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Adds `n` to the decimal counter `key` in shared data (only the consumer writes, but CAS
/// keeps it right even if a second consumer existed).
fn add(key: &str, n: u64) {
    loop {
        let (value, cas) = hostcalls::get_shared_data(key).unwrap_or((None, None));
        let current: u64 = value
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let next = (current + n).to_string();
        if hostcalls::set_shared_data(key, Some(next.as_bytes()), cas).is_ok() {
            return;
        }
    }
}

fn read(key: &str) -> String {
    hostcalls::get_shared_data(key)
        .ok()
        .and_then(|(value, _)| value)
        .and_then(|v| String::from_utf8(v).ok())
        .unwrap_or_else(|| "0".into())
}

struct Stream;

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let path = self.get_http_request_header(":path").unwrap_or_default();
        // An empty VM id names this filter's own VM.
        match hostcalls::resolve_shared_queue("", QUEUE) {
            Ok(Some(id)) => {
                if let Err(status) = hostcalls::enqueue_shared_queue(id, Some(path.as_bytes())) {
                    hostcalls::log(LogLevel::Warn, &format!("enqueue: {status:?}")).ok();
                }
            }
            other => {
                hostcalls::log(LogLevel::Warn, &format!("resolve_shared_queue: {other:?}")).ok();
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        self.set_http_response_header("x-queue-drained", Some(&read("drained")));
        self.set_http_response_header("x-queue-sum", Some(&read("sum")));
        Action::Continue
    }
}
