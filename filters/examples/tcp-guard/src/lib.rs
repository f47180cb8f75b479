//! A network (L4) filter written against the plain `proxy-wasm` crate, as Envoy's and Istio's
//! network filters are (`type: NETWORK` in a WasmFilter): on every TCP connection it sees
//!
//! - refuses clients whose address is listed in `deny` (closes the connection at once);
//! - upper-cases the ASCII letters the client sends, when `upper` is true;
//! - counts the bytes each way, and logs them (and who closed first) when the connection ends,
//!   in the metric `tcp_guard.connections` and the log line
//!   `tcp-guard: <client> sent <n> bytes, received <m> bytes`.
//!
//! Configuration (JSON, through `proxy_on_configure`):
//! `{"deny": ["10.244.0.9"], "upper": true}`
#![cfg(target_arch = "wasm32")]

use std::rc::Rc;

use proxy_wasm::traits::{Context, RootContext, StreamContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType, PeerType};
use serde::Deserialize;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        let connections = proxy_wasm::hostcalls::define_metric(MetricType::Counter, "tcp_guard.connections").ok();
        Box::new(Root { config: Rc::new(Config::default()), connections })
    });
}}

#[derive(Default, Deserialize)]
struct Config {
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    upper: bool,
}

struct Root {
    config: Rc<Config>,
    connections: Option<u32>,
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

    fn create_stream_context(&self, _context_id: u32) -> Option<Box<dyn StreamContext>> {
        Some(Box::new(Connection {
            config: self.config.clone(),
            connections: self.connections,
            client: String::new(),
            sent: 0,
            received: 0,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::StreamContext)
    }
}

struct Connection {
    config: Rc<Config>,
    connections: Option<u32>,
    client: String,
    sent: usize,
    received: usize,
}

impl Context for Connection {}

impl StreamContext for Connection {
    fn on_new_connection(&mut self) -> Action {
        if let Some(id) = self.connections {
            proxy_wasm::hostcalls::increment_metric(id, 1).ok();
        }
        // Envoy's encoding: `ip:port` as text.
        self.client = self
            .get_property(vec!["source", "address"])
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_default();
        let ip = self.client.rsplit_once(':').map(|(ip, _)| ip).unwrap_or(&self.client);
        if self.config.deny.iter().any(|d| d == ip) {
            proxy_wasm::hostcalls::log(LogLevel::Info, &format!("tcp-guard: refusing {}", self.client)).ok();
            self.close_downstream();
            return Action::Pause;
        }
        Action::Continue
    }

    fn on_downstream_data(&mut self, data_size: usize, _end_of_stream: bool) -> Action {
        self.sent += data_size;
        if self.config.upper && data_size > 0 {
            if let Some(data) = self.get_downstream_data(0, data_size) {
                let upper = data.to_ascii_uppercase();
                self.set_downstream_data(0, data_size, &upper);
            }
        }
        Action::Continue
    }

    fn on_upstream_data(&mut self, data_size: usize, _end_of_stream: bool) -> Action {
        self.received += data_size;
        Action::Continue
    }

    fn on_downstream_close(&mut self, peer: PeerType) {
        proxy_wasm::hostcalls::log(
            LogLevel::Info,
            &format!(
                "tcp-guard: {} closed by {}",
                self.client,
                if matches!(peer, PeerType::Local) {
                    "the proxy"
                } else {
                    "the client"
                }
            ),
        )
        .ok();
    }

    fn on_log(&mut self) {
        proxy_wasm::hostcalls::log(
            LogLevel::Info,
            &format!(
                "tcp-guard: {} sent {} bytes, received {} bytes",
                self.client, self.sent, self.received
            ),
        )
        .ok();
    }
}
