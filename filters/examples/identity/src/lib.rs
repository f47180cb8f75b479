//! A filter written with `tidegate-sdk` that uses the host services: it tells the backend who
//! is calling (`x-source-workload: namespace/name`, `x-source-account`, `x-source-app` from the
//! pod's `app` label, through `tidegate.workload`) and which endpoints the chosen cluster has
//! (`x-cluster-endpoints`, through `tidegate.endpoints`). Place it `PostRouting`, so the cluster
//! is chosen.
#![cfg(target_arch = "wasm32")]

use tidegate_sdk::proxy_wasm;
use tidegate_sdk::proxy_wasm::traits::{Context, HttpContext, RootContext};
use tidegate_sdk::proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Identity))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Identity;

impl Context for Identity {}

impl HttpContext for Identity {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        match tidegate_sdk::source_workload() {
            Some(workload) => {
                let name = format!("{}/{}", workload.namespace, workload.name);
                self.set_http_request_header("x-source-workload", Some(&name));
                let account = workload.service_account.clone().unwrap_or_default();
                self.set_http_request_header("x-source-account", Some(&account));
                let app = workload.labels.iter().find(|(k, _)| k == "app").map(|(_, v)| v.clone());
                self.set_http_request_header("x-source-app", app.as_deref());
            }
            None => self.set_http_request_header("x-source-workload", Some("unknown")),
        }
        if let Some(cluster) = tidegate_sdk::cluster() {
            let endpoints = tidegate_sdk::endpoints(&cluster)
                .map(|list| list.iter().map(|e| e.address.to_string()).collect::<Vec<_>>().join(","))
                .unwrap_or_else(|| "none".into());
            self.set_http_request_header("x-cluster-endpoints", Some(&endpoints));
        }
        Action::Continue
    }
}
