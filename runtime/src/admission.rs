//! Admission of user filters on the control plane: before a version is published, each user
//! filter's VM is started once with its module, `spec.config` and limits (`proxy_on_vm_start`,
//! `proxy_on_configure`). A filter that cannot start (its `proxy_on_configure` refuses the
//! configuration, or it traps, loops or runs out of memory while starting) is reported in its
//! WasmFilter's status and counted, and only that filter is held back:
//!
//! - if it started before, its **last accepted** module, configuration and limits keep running
//!   while the rest of the edit applies (Envoy keeps the last good configuration of a listener
//!   the same way);
//! - otherwise it has nothing to run, and its failure policy decides: FailClosed stands in the
//!   `unavailable` filter (500 with the reason) for the requests in its scope, FailOpen leaves it
//!   out.
//!
//! Workers then start VMs that are known to start, so they no longer reject whole versions over
//! one filter, and a filter that loops while starting costs the control plane its lifecycle
//! budget once, instead of stalling every worker's traffic. Outcomes are cached by module
//! digest, configuration and limits, so an unchanged filter is not started again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::modules::ResolvedFilter;
use crate::wasm::{FilterInstance, InstanceEnv, SandboxLimits};

/// What was started: module digest, configuration, memory cap, call timeout.
type Key = (String, Vec<u8>, u64, Duration);

/// The outcome of admitting one filter, for its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// It started with the configuration given.
    Started,
    /// It did not; `kept_previous` says whether its last accepted configuration keeps running.
    Refused { error: String, kept_previous: bool },
}

/// Remembers what each filter last started with.
#[derive(Default)]
pub struct FilterAdmission {
    outcomes: HashMap<(String, Key), Result<(), String>>,
    accepted: HashMap<String, ResolvedFilter>,
}

impl FilterAdmission {
    /// Starts every filter whose module loaded (unless already known) and replaces those that
    /// cannot start by their last accepted version or by the module error that makes the proxy
    /// apply their failure policy. Returns the outcome per filter name.
    pub fn admit(
        &mut self,
        filters: &mut [ResolvedFilter],
        env: &InstanceEnv,
        metrics: &Arc<Metrics>,
    ) -> Vec<(String, Admission)> {
        let mut outcomes = Vec::new();
        let mut keep = HashMap::new();
        for filter in filters.iter_mut() {
            let name = filter.plan.name.clone();
            let Ok(module) = &filter.module else { continue };
            let key: Key = (
                module.sha256().to_string(),
                filter.plan.config.clone(),
                filter.plan.memory_bytes,
                filter.plan.call_timeout,
            );
            let cache_key = (name.clone(), key);
            let result = match self.outcomes.get(&cache_key) {
                Some(result) => result.clone(),
                None => {
                    let limits = SandboxLimits {
                        memory_bytes: filter.plan.memory_bytes,
                        call_timeout: filter.plan.call_timeout,
                    };
                    let started = FilterInstance::start_with(module, &filter.plan.config, &limits, env)
                        .map(drop)
                        .map_err(|e| e.to_string());
                    if let Err(error) = &started {
                        metrics.filter_failure(&name);
                        tracing::error!(filter = %name, %error, "the filter cannot start with its spec.config and limits; it is held back");
                    }
                    self.outcomes.insert(cache_key.clone(), started.clone());
                    started
                }
            };
            keep.insert(cache_key, ());
            match result {
                Ok(()) => {
                    self.accepted.insert(name.clone(), filter.clone());
                    outcomes.push((name, Admission::Started));
                }
                Err(error) => {
                    let previous = self.accepted.get(&name).filter(|p| p.module.is_ok());
                    let kept_previous = previous.is_some();
                    match previous {
                        Some(previous) => {
                            // The new targets, phase and policy apply; what runs is the last
                            // module, configuration and limits that started.
                            filter.module = previous.module.clone();
                            filter.plan.config = previous.plan.config.clone();
                            filter.plan.memory_bytes = previous.plan.memory_bytes;
                            filter.plan.call_timeout = previous.plan.call_timeout;
                        }
                        None => {
                            filter.module = Err(format!("the filter cannot start: {error}"));
                        }
                    }
                    outcomes.push((name, Admission::Refused { error, kept_previous }));
                }
            }
        }
        // Forget what no longer exists, so the caches stay the size of the configuration.
        self.outcomes.retain(|key, _| keep.contains_key(key));
        let names: Vec<&String> = filters.iter().map(|f| &f.plan.name).collect();
        self.accepted.retain(|name, _| names.contains(&name));
        outcomes
    }
}
