//! The proxy-wasm glue.
//!
//! Phases:
//! - `on_configure` (root): build the pickers. An invalid configuration is refused (`false`:
//!   the host applies the filter's failure policy) and the previous one stays.
//! - `on_http_request_headers`: no `tidegate.cluster` → continue untouched (nothing was routed,
//!   e.g. the router already answered); otherwise write `tidegate.endpoint` and continue, or
//!   answer 503 when the cluster has no endpoint.
//!
//! Picker state lives in the root context and is shared by every HTTP context of the VM, so round
//! robin goes round across requests; a new configuration starts fresh pickers.

use std::cell::RefCell;
use std::rc::Rc;

use log::error;
use tidegate_sdk::proxy_wasm;
use tidegate_sdk::proxy_wasm::hostcalls;
use tidegate_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use tidegate_sdk::proxy_wasm::types::{Action, BufferType, ContextType, LogLevel};

use crate::balancer::Balancer;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(BalancerRoot::default()) });
}}

#[derive(Default)]
struct BalancerRoot {
    balancer: Rc<RefCell<Balancer>>,
}

impl Context for BalancerRoot {}

impl RootContext for BalancerRoot {
    fn on_configure(&mut self, plugin_configuration_size: usize) -> bool {
        let json = hostcalls::get_buffer(BufferType::PluginConfiguration, 0, plugin_configuration_size)
            .ok()
            .flatten()
            .unwrap_or_default();
        let seed = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        match Balancer::from_json(&json, seed) {
            Ok(balancer) => {
                self.balancer = Rc::new(RefCell::new(balancer));
                true
            }
            Err(e) => {
                error!("tidegate-balancer: invalid configuration, keeping the previous one: {e}");
                false
            }
        }
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(BalancerHttp {
            balancer: Rc::clone(&self.balancer),
        }))
    }
}

struct BalancerHttp {
    balancer: Rc<RefCell<Balancer>>,
}

impl Context for BalancerHttp {}

impl HttpContext for BalancerHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(cluster) = tidegate_sdk::cluster() else {
            return Action::Continue;
        };
        // A VM is single-threaded and no hostcall re-enters the filter, so the borrow cannot be
        // held elsewhere; failing soft (503) rather than panicking keeps that assumption cheap.
        let picked = match self.balancer.try_borrow_mut() {
            Ok(mut balancer) => balancer.pick(&cluster).map(str::to_string).map_err(|e| e.to_string()),
            Err(_) => Err(format!("no healthy endpoints for cluster {cluster}")),
        };
        match picked {
            Ok(endpoint) => {
                tidegate_sdk::set_endpoint(&endpoint);
                Action::Continue
            }
            Err(reason) => {
                let body = format!("{reason}\n");
                self.send_http_response(503, vec![("content-type", "text/plain")], Some(body.as_bytes()));
                Action::Pause
            }
        }
    }
}
