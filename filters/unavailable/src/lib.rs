//! Stands in for a fail-closed user filter whose module cannot be loaded (missing file, not
//! WebAssembly, wrong digest): every request in the filter's scope is answered 500, with the
//! reason the host passes as this filter's configuration. Keeping this a filter means the
//! chain's scope and ordering rules apply to it exactly as to the module it replaces.
//!
//! In place of a NETWORK filter the host prefixes the reason with [`NETWORK_PREFIX`]: every
//! connection in scope is then closed at once, and the reason logged.

/// Prefix of the configuration that makes this a network (stream) filter.
pub const NETWORK_PREFIX: &[u8] = b"network:";

#[cfg(target_arch = "wasm32")]
mod shell {
    use tidegate_sdk::proxy_wasm;
    use tidegate_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext, StreamContext};
    use tidegate_sdk::proxy_wasm::types::{Action, ContextType, LogLevel};

    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { reason: Vec::new() }) });
    }}

    struct Root {
        reason: Vec<u8>,
    }

    impl Context for Root {}

    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            self.reason = self.get_plugin_configuration().unwrap_or_default();
            true
        }

        fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Stream {
                reason: self.reason.clone(),
            }))
        }

        fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
            Some(Box::new(Connection {
                reason: self.reason[super::NETWORK_PREFIX.len()..].to_vec(),
            }))
        }

        fn get_type(&self) -> Option<ContextType> {
            Some(match self.reason.starts_with(super::NETWORK_PREFIX) {
                true => ContextType::StreamContext,
                false => ContextType::HttpContext,
            })
        }
    }

    struct Connection {
        reason: Vec<u8>,
    }

    impl Context for Connection {}

    impl StreamContext for Connection {
        fn on_new_connection(&mut self) -> Action {
            let reason = String::from_utf8_lossy(&self.reason);
            proxy_wasm::hostcalls::log(LogLevel::Warn, &format!("connection closed: {}", reason.trim_end())).ok();
            self.close_downstream();
            Action::Pause
        }
    }

    struct Stream {
        reason: Vec<u8>,
    }

    impl Context for Stream {}

    impl HttpContext for Stream {
        fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
            self.send_http_response(
                500,
                vec![("content-type", "text/plain; charset=utf-8")],
                Some(&self.reason),
            );
            Action::Pause
        }
    }
}
