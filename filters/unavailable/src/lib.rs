//! Stands in for a fail-closed user filter whose module cannot be loaded (missing file, not
//! WebAssembly, wrong digest): every request in the filter's scope is answered 500, with the
//! reason the host passes as this filter's configuration. Keeping this a filter means the
//! chain's scope and ordering rules apply to it exactly as to the module it replaces.

#[cfg(target_arch = "wasm32")]
mod shell {
    use tidegate_sdk::proxy_wasm;
    use tidegate_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
    use tidegate_sdk::proxy_wasm::types::{Action, ContextType};

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

        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
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
