//! The filter chain of one worker for one configuration generation: one VM per filter, a
//! context per request. Standard filters fail closed: a filter that traps, overruns its
//! deadline or its memory cap answers the request with 500, and its VM is replaced.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use crate::metrics::Metrics;
use crate::wasm::{FilterAction, FilterInstance, FilterModule, HttpExchange, SandboxLimits, WasmError};

/// One filter of the chain: its module, its configuration, and this worker's VM.
struct FilterSlot {
    module: FilterModule,
    config: Arc<[u8]>,
    instance: RefCell<FilterInstance>,
    /// Bumped when the VM is replaced, so contexts of the old VM are not finished on the new one.
    incarnation: Cell<u64>,
}

/// A filter chain ready to serve requests on this worker.
pub struct Chain {
    slots: Vec<FilterSlot>,
    limits: SandboxLimits,
    metrics: Arc<Metrics>,
}

/// The contexts one request opened, to be finished after the response.
#[derive(Debug, Default)]
pub struct OpenContexts {
    entries: Vec<(usize, u64, u32)>,
}

/// How the request phase of the chain ended.
#[derive(Debug)]
pub enum RequestOutcome {
    /// Every filter continued: the host makes the upstream request.
    Forward,
    /// A filter answered locally (`ex.local_reply` holds the answer).
    LocalReply,
    /// A filter failed; the request is answered with 500.
    Failed { filter: String, error: String },
}

impl Chain {
    /// Starts one VM per filter. Fails if any filter rejects its configuration.
    pub fn start(
        filters: &[(FilterModule, Arc<[u8]>)],
        limits: SandboxLimits,
        metrics: Arc<Metrics>,
    ) -> Result<Self, WasmError> {
        let mut slots = Vec::with_capacity(filters.len());
        for (module, config) in filters {
            let instance = FilterInstance::start(module, config, &limits)?;
            slots.push(FilterSlot {
                module: module.clone(),
                config: config.clone(),
                instance: RefCell::new(instance),
                incarnation: Cell::new(0),
            });
        }
        Ok(Self { slots, limits, metrics })
    }

    /// Runs `on_request_headers` through the chain in order until a filter answers or fails.
    pub fn on_request_headers(
        &self,
        ex: &mut HttpExchange,
        end_of_stream: bool,
        open: &mut OpenContexts,
    ) -> RequestOutcome {
        for (index, slot) in self.slots.iter().enumerate() {
            let result = {
                let mut instance = slot.instance.borrow_mut();
                instance.create_http_context().and_then(|ctx| {
                    open.entries.push((index, slot.incarnation.get(), ctx));
                    instance.on_request_headers(ctx, ex, end_of_stream)
                })
            };
            match result {
                Ok(_) if ex.local_reply.is_some() => return RequestOutcome::LocalReply,
                Ok(FilterAction::Continue) => {}
                Ok(FilterAction::Pause) => {
                    // Pausing needs a resumption (callouts, bodies) that is not built yet, so a
                    // pause would hang the request: treat it as a failure of that filter.
                    return self.failed(slot, "paused the request, which is not supported yet".to_string());
                }
                Err(e) => return self.failed(slot, e.to_string()),
            }
        }
        RequestOutcome::Forward
    }

    /// Runs `on_response_headers` through the filters that saw the request, in reverse order.
    pub fn on_response_headers(
        &self,
        ex: &mut HttpExchange,
        end_of_stream: bool,
        open: &OpenContexts,
    ) -> Result<(), (String, String)> {
        for &(index, incarnation, ctx) in open.entries.iter().rev() {
            let slot = &self.slots[index];
            if slot.incarnation.get() != incarnation {
                continue;
            }
            let result = slot.instance.borrow_mut().on_response_headers(ctx, ex, end_of_stream);
            if let Err(e) = result {
                let RequestOutcome::Failed { filter, error } = self.failed(slot, e.to_string()) else {
                    unreachable!()
                };
                return Err((filter, error));
            }
        }
        Ok(())
    }

    /// Ends every context the request opened (done, log, delete).
    pub fn finish(&self, ex: &mut HttpExchange, open: OpenContexts) {
        for (index, incarnation, ctx) in open.entries.into_iter().rev() {
            let slot = &self.slots[index];
            if slot.incarnation.get() == incarnation {
                slot.instance.borrow_mut().finish_http_context(ctx, ex);
                self.replace_if_broken(slot);
            }
        }
    }

    fn failed(&self, slot: &FilterSlot, error: String) -> RequestOutcome {
        let filter = slot.module.name().to_string();
        tracing::error!(%filter, %error, "filter failed; answering 500 (failurePolicy FailClosed)");
        self.metrics.filter_failure(&filter);
        self.replace_if_broken(slot);
        RequestOutcome::Failed { filter, error }
    }

    /// A VM that trapped is poisoned: build a fresh one from the same module and config.
    fn replace_if_broken(&self, slot: &FilterSlot) {
        if !slot.instance.borrow().is_broken() {
            return;
        }
        match FilterInstance::start(&slot.module, &slot.config, &self.limits) {
            Ok(fresh) => {
                *slot.instance.borrow_mut() = fresh;
                slot.incarnation.set(slot.incarnation.get() + 1);
                tracing::warn!(filter = slot.module.name(), "replaced a broken filter VM");
            }
            Err(e) => tracing::error!(filter = slot.module.name(), error = %e, "could not replace a broken filter VM"),
        }
    }
}
