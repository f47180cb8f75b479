//! A filter written against the plain `proxy-wasm` crate, the way filters for Envoy or Istio
//! are: it adds request and response headers from its configuration, answers 403 when a
//! required request header is missing, and counts the requests it saw in the metric
//! `header_rewrite.requests`.
//!
//! Configuration (JSON, through `proxy_on_configure`):
//! `{"request_headers": [["x-a", "1"]], "response_headers": [["x-b", "2"]], "require": "x-token"}`
#![cfg(target_arch = "wasm32")]

use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        let requests = proxy_wasm::hostcalls::define_metric(MetricType::Counter, "header_rewrite.requests").ok();
        Box::new(Root { config: Rc::new(Config::default()), requests })
    });
}}

#[derive(Default, Deserialize)]
struct Config {
    #[serde(default)]
    request_headers: Vec<(String, String)>,
    #[serde(default)]
    response_headers: Vec<(String, String)>,
    #[serde(default)]
    require: Option<String>,
}

struct Root {
    config: Rc<Config>,
    requests: Option<u32>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            self.config = Rc::new(Config::default());
            return true;
        };
        match serde_json::from_slice(&bytes) {
            Ok(config) => {
                self.config = Rc::new(config);
                true
            }
            Err(e) => {
                proxy_wasm::hostcalls::log(LogLevel::Error, &format!("bad configuration: {e}")).ok();
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Stream {
            config: self.config.clone(),
            requests: self.requests,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Stream {
    config: Rc<Config>,
    requests: Option<u32>,
}

impl Context for Stream {}

impl HttpContext for Stream {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        if let Some(id) = self.requests {
            proxy_wasm::hostcalls::increment_metric(id, 1).ok();
        }
        if let Some(required) = &self.config.require {
            if self.get_http_request_header(required).is_none() {
                self.send_http_response(
                    403,
                    vec![("content-type", "text/plain")],
                    Some(format!("missing {required}\n").as_bytes()),
                );
                return Action::Pause;
            }
        }
        for (name, value) in &self.config.request_headers {
            self.add_http_request_header(name, value);
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        for (name, value) in &self.config.response_headers {
            self.set_http_response_header(name, Some(value));
        }
        Action::Continue
    }
}
