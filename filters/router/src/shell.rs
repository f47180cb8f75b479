//! The proxy-wasm glue: reads what the decision needs from the host, and carries it out.
//!
//! Phases:
//! - `on_configure` (root): parse and compile the configuration. An invalid one is refused
//!   (`false`: the host applies the filter's failure policy) and the previous table stays.
//! - `on_http_request_headers`: decide. A local reply pauses the stream (the host answers);
//!   a forward edits the request, records `tidegate.route` and `tidegate.cluster`, continues.
//! - `on_http_response_headers`: apply the matched rule's ResponseHeaderModifier edits.

use std::cell::Cell;
use std::rc::Rc;

use log::{error, warn};
use tidegate_sdk::proxy_wasm;
use tidegate_sdk::proxy_wasm::hostcalls;
use tidegate_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use tidegate_sdk::proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType};

use crate::actions::HeaderOp;
use crate::decision::{Decision, Router};
use crate::random::XorShift;
use crate::request::Request;

/// Property naming the Gateway (`namespace/name`) a request arrived on. Optional: with it, two
/// Gateways that both have a listener on one port are told apart.
const GATEWAY_PROPERTY: [&str; 2] = ["tidegate", "gateway"];
/// Property naming the Service (`namespace/name`) whose frontend a captured request was sent
/// to; set by the host for east-west traffic only.
const SERVICE_PROPERTY: [&str; 2] = ["tidegate", "service"];
/// Property naming the client pod's namespace, for east-west traffic from a known pod.
const SOURCE_NAMESPACE_PROPERTY: [&str; 2] = ["tidegate", "source_namespace"];

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(RouterRoot::default()) });
}}

#[derive(Default)]
struct RouterRoot {
    router: Rc<Router>,
    /// xorshift state; `Cell` because contexts are created through `&self`.
    rng: Cell<Option<u64>>,
}

impl Context for RouterRoot {}

impl RootContext for RouterRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let json = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, plugin_configuration_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        match Router::from_json(&json) {
            Ok((router, warnings)) => {
                for w in warnings {
                    warn!("tidegate-router: {w}");
                }
                self.router = Rc::new(router);
                true
            }
            Err(e) => {
                error!("tidegate-router: invalid configuration, keeping the previous one: {e}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let random = self.next_random(context_id);
        Some(Box::new(RouterHttp {
            router: Rc::clone(&self.router),
            random,
            response_ops: Vec::new(),
        }))
    }
}

impl RouterRoot {
    /// One random number per request, from a generator seeded once from the host clock.
    fn next_random(&self, context_id: u32) -> u64 {
        let state = self.rng.get().unwrap_or_else(|| {
            let nanos = hostcalls::get_current_time()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as u64);
            nanos ^ u64::from(context_id)
        });
        let mut rng = XorShift::new(state);
        let random = rng.next_u64();
        self.rng.set(Some(random));
        random
    }
}

struct RouterHttp {
    router: Rc<Router>,
    random: u64,
    response_ops: Vec<HeaderOp>,
}

impl Context for RouterHttp {}

impl HttpContext for RouterHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let headers = hostcalls::get_map_bytes(MapType::HttpRequestHeaders).unwrap_or_default();
        let text = |path: [&str; 2]| {
            hostcalls::get_property(path.to_vec())
                .ok()
                .flatten()
                .and_then(|b| String::from_utf8(b).ok())
        };
        let mut req = Request::new(tidegate_sdk::listener_port(), text(GATEWAY_PROPERTY), headers);
        req.service = text(SERVICE_PROPERTY);
        if req.service.is_some() {
            req.source_namespace = text(SOURCE_NAMESPACE_PROPERTY);
        }
        match self.router.decide(&req, self.random) {
            Decision::Reply(reply) => {
                let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                let body = (!reply.body.is_empty()).then_some(reply.body.as_bytes());
                self.send_http_response(u32::from(reply.status), headers, body);
                Action::Pause
            }
            Decision::Forward(forward) => {
                for op in &forward.request_ops {
                    apply(
                        op,
                        |n, v| self.set_http_request_header_bytes(n, v),
                        |n, v| self.add_http_request_header_bytes(n, v),
                    );
                }
                if let Some(route) = &forward.route {
                    tidegate_sdk::set_route(route);
                }
                tidegate_sdk::set_cluster(&forward.cluster);
                self.response_ops = forward.response_ops;
                Action::Continue
            }
        }
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        for op in &self.response_ops {
            apply(
                op,
                |n, v| self.set_http_response_header_bytes(n, v),
                |n, v| self.add_http_response_header_bytes(n, v),
            );
        }
        Action::Continue
    }
}

/// Carries out one edit with the map's `set` (replace, or remove with `None`) and `add` calls.
fn apply(op: &HeaderOp, set: impl Fn(&str, Option<&[u8]>), add: impl Fn(&str, &[u8])) {
    match op {
        HeaderOp::Set(name, value) => set(name, Some(value)),
        HeaderOp::Add(name, value) => add(name, value),
        HeaderOp::Remove(name) => set(name, None),
    }
}
