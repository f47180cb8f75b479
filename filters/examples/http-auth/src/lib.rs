//! A filter written against the plain `proxy-wasm` crate, as authorization filters for Envoy or
//! Istio are (Envoy's `ext_authz` pattern, and proxy-wasm's `http_auth_random` example): each
//! request is held while an authorization service is asked through an HTTP callout; a 200 lets
//! it through (copying the headers the service names into the request), any other answer is
//! returned to the client as 403, and a failed or timed-out call as 503.
//!
//! Configuration (JSON, through `proxy_on_configure`):
//! ```json
//! {"cluster": "auth/authz:80", "path": "/check", "authority": "authz.auth",
//!  "timeout_ms": 2000, "forward": ["authorization"], "copy_to_request": ["x-auth-user"]}
//! ```
#![cfg(target_arch = "wasm32")]

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: None }) });
}}

#[derive(Deserialize)]
struct Config {
    cluster: String,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default = "default_authority")]
    authority: String,
    #[serde(default = "default_timeout")]
    timeout_ms: u64,
    #[serde(default)]
    forward: Vec<String>,
    #[serde(default)]
    copy_to_request: Vec<String>,
}

fn default_path() -> String {
    "/check".into()
}

fn default_authority() -> String {
    "authz".into()
}

fn default_timeout() -> u64 {
    2000
}

struct Root {
    config: Option<Rc<Config>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match serde_json::from_slice::<Config>(&bytes) {
            Ok(config) => {
                self.config = Some(Rc::new(config));
                true
            }
            Err(e) => {
                proxy_wasm::hostcalls::log(LogLevel::Error, &format!("bad configuration: {e}")).ok();
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Check {
            config: self.config.clone()?,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Check {
    config: Rc<Config>,
}

impl HttpContext for Check {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let config = self.config.clone();
        let original_path = self.get_http_request_header(":path").unwrap_or_default();
        let original_method = self.get_http_request_header(":method").unwrap_or_default();
        let forwarded: Vec<(String, String)> = config
            .forward
            .iter()
            .filter_map(|name| Some((name.clone(), self.get_http_request_header(name)?)))
            .collect();
        let mut headers: Vec<(&str, &str)> = vec![
            (":method", "GET"),
            (":path", &config.path),
            (":authority", &config.authority),
            ("x-original-path", &original_path),
            ("x-original-method", &original_method),
        ];
        headers.extend(forwarded.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let timeout = Duration::from_millis(config.timeout_ms);
        match self.dispatch_http_call(&config.cluster, headers, None, vec![], timeout) {
            Ok(_token) => Action::Pause,
            Err(status) => {
                proxy_wasm::hostcalls::log(LogLevel::Warn, &format!("cannot call {}: {status:?}", config.cluster)).ok();
                self.send_http_response(
                    503,
                    vec![("x-auth", "unavailable")],
                    Some(b"authorization service unavailable\n"),
                );
                Action::Pause
            }
        }
    }
}

impl Context for Check {
    fn on_http_call_response(&mut self, _token_id: u32, num_headers: usize, body_size: usize, _num_trailers: usize) {
        if num_headers == 0 {
            self.send_http_response(
                503,
                vec![("x-auth", "unavailable")],
                Some(b"authorization service unavailable\n"),
            );
            return;
        }
        if self.get_http_call_response_header(":status").as_deref() == Some("200") {
            let config = self.config.clone();
            for name in &config.copy_to_request {
                if let Some(value) = self.get_http_call_response_header(name) {
                    self.set_http_request_header(name, Some(&value));
                }
            }
            self.resume_http_request();
            return;
        }
        let body = self.get_http_call_response_body(0, body_size).unwrap_or_default();
        let body = if body.is_empty() { b"denied\n".to_vec() } else { body };
        self.send_http_response(403, vec![("x-auth", "denied")], Some(&body));
    }
}
