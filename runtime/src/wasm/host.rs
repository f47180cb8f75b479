//! The per-VM host state: the `T` of `Store<T>`, which every hostcall reaches through `Caller`.
//!
//! Host functions hold no state of their own (they are `Fn + Send + Sync` closures in the one
//! shared `Linker`); everything a hostcall reads or changes lives here, and the request it acts
//! on is moved in for the duration of one callback.

use std::collections::HashSet;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::Arc;

use wasmtime::{Memory, ResourceLimiter, TypedFunc};

use super::abi::metrics::Metric;
use super::exchange::HttpExchange;
use super::instance::StreamActions;
use super::queue::QueueWaker;
use super::services::{CalloutRequest, CalloutResponse, HostServices};

/// Table elements a filter may grow its tables to. Rust and TinyGo filters use a few hundred for
/// function pointers and never grow them; the cap only stops a hostile `table.grow` loop.
pub(crate) const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Scratch buffers larger than this are dropped after use instead of kept for the next call, so
/// one large value (a big shared-data entry) does not pin memory in every instance.
pub(crate) const SCRATCH_KEEP: usize = 64 * 1024;

/// Which callback is running: decides what the hostcalls may touch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// No guest code is running (or a hostcall runs outside any callback).
    Idle,
    /// `_initialize`/`_start`, context creation, `proxy_on_vm_start`, `proxy_on_configure`.
    Lifecycle,
    /// `proxy_on_request_headers`.
    RequestHeaders,
    /// `proxy_on_response_headers`.
    ResponseHeaders,
    /// `proxy_on_request_body` (`HostState::end_of_stream` says whether it is the last).
    RequestBody,
    /// `proxy_on_request_trailers`.
    RequestTrailers,
    /// `proxy_on_response_body`.
    ResponseBody,
    /// `proxy_on_response_trailers`.
    ResponseTrailers,
    /// `proxy_on_done`, `proxy_on_log`, `proxy_on_delete`: headers are sent, still readable.
    Finish,
    /// `proxy_on_http_call_response`: the callout's answer is readable, and the request of the
    /// context that made the call, if it is still waiting.
    CalloutResponse,
    /// `proxy_on_downstream_data` (L4): `DOWNSTREAM_DATA` is the exchange's request body.
    DownstreamData,
    /// `proxy_on_upstream_data` (L4): `UPSTREAM_DATA` is the exchange's response body.
    UpstreamData,
}

/// The memory cap of one store (`ResourceLimiter`). Growing past it traps, and the requested
/// size is remembered so the host can report a precise [`WasmError::MemoryLimit`](super::WasmError).
pub(crate) struct Limiter {
    pub(crate) memory_bytes: usize,
    pub(crate) exceeded: Option<usize>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.exceeded = Some(desired);
            return Err(wasmtime::format_err!(
                "memory limit: the filter asked for {desired} bytes of linear memory, over its cap of {} bytes",
                self.memory_bytes
            ));
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }
}

/// Randomness for `random_get`: SipHash-1-3 under a key std seeds from the OS, over a counter.
/// A keyed PRF, good for hash seeds and sampling; filters must not derive long-term secrets
/// from it.
pub(crate) struct Rng {
    key: RandomState,
    counter: u64,
}

impl Rng {
    pub(crate) fn new() -> Self {
        Self {
            key: RandomState::new(),
            counter: 0,
        }
    }

    pub(crate) fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            self.counter = self.counter.wrapping_add(1);
            let word = self.key.hash_one(self.counter).to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }
}

/// Everything one VM's hostcalls can see.
pub(crate) struct HostState {
    /// The filter's name: log field, `plugin_name`, the shared-data and metrics namespace.
    pub(crate) filter: Arc<str>,
    pub(crate) limiter: Limiter,
    /// The guest's `memory` export, cached at instantiation.
    pub(crate) memory: Option<Memory>,
    /// `proxy_on_memory_allocate` (or `malloc`), cached at instantiation.
    pub(crate) allocator: Option<TypedFunc<i32, i32>>,
    /// Set while the guest allocator runs, so a re-entrant hostcall cannot recurse into it.
    pub(crate) in_allocator: bool,
    /// Reused buffer for values copied out to the guest.
    pub(crate) scratch: Vec<u8>,
    /// Reused buffer for property paths.
    pub(crate) path: String,
    /// The request of the running callback (moved in and out by `FilterInstance`).
    pub(crate) exchange: HttpExchange,
    /// The context whose request is in `exchange`, if any.
    pub(crate) exchange_ctx: Option<u32>,
    pub(crate) phase: Phase,
    /// The `end_of_stream` argument of the running body callback: trailers may be created only
    /// in the last one.
    pub(crate) end_of_stream: bool,
    /// The context hostcalls act on (`proxy_set_effective_context` may change it).
    pub(crate) effective_ctx: u32,
    pub(crate) root_id: u32,
    /// Open HTTP contexts.
    pub(crate) live: HashSet<u32>,
    /// Contexts whose `proxy_on_done` returned false, waiting for `proxy_done`.
    pub(crate) pending_done: HashSet<u32>,
    /// Contexts that called `proxy_done` during the running callback.
    pub(crate) done_requested: Vec<u32>,
    /// `continue_stream`/`close_stream` calls since the proxy last asked.
    pub(crate) actions: StreamActions,
    pub(crate) vm_config: Vec<u8>,
    pub(crate) plugin_config: Vec<u8>,
    /// `proxy_set_tick_period_milliseconds`; 0 = no ticks.
    pub(crate) tick_period_ms: u32,
    /// Metrics this VM used, by id − 1, so metric hostcalls take no lock after the first use.
    pub(crate) metrics: Vec<Option<Arc<Metric>>>,
    pub(crate) rng: Rng,
    /// Unique among all instances of the process (names the consumer of shared queues).
    pub(crate) instance_id: u64,
    /// What the proxy offers: callout upstreams, host services.
    pub(crate) services: Option<Arc<dyn HostServices>>,
    pub(crate) queue_waker: Option<QueueWaker>,
    /// Callouts made since the proxy last collected them.
    pub(crate) callout_outbox: Vec<CalloutRequest>,
    /// Tokens of callouts not answered yet.
    pub(crate) callouts_in_flight: HashSet<u32>,
    next_callout_token: u32,
    /// The answer being delivered (`proxy_on_http_call_response`).
    pub(crate) callout_response: Option<CalloutResponse>,
    /// Stream actions on contexts other than the running callback's request (e.g. a root
    /// context resuming requests that waited for it), for the proxy to route.
    pub(crate) other_actions: Vec<(u32, StreamActions)>,
    /// The gRPC "not implemented" warning was logged.
    pub(crate) warned_grpc: bool,
}

// === impl HostState ===

impl HostState {
    pub(crate) fn new(filter: Arc<str>, memory_bytes: usize, plugin_config: Vec<u8>, root_id: u32) -> Self {
        Self {
            filter,
            limiter: Limiter {
                memory_bytes,
                exceeded: None,
            },
            memory: None,
            allocator: None,
            in_allocator: false,
            scratch: Vec::new(),
            path: String::new(),
            exchange: HttpExchange::default(),
            exchange_ctx: None,
            phase: Phase::Idle,
            end_of_stream: false,
            effective_ctx: root_id,
            root_id,
            live: HashSet::new(),
            pending_done: HashSet::new(),
            done_requested: Vec::new(),
            actions: StreamActions::default(),
            vm_config: Vec::new(),
            plugin_config,
            tick_period_ms: 0,
            metrics: Vec::new(),
            rng: Rng::new(),
            instance_id: 0,
            services: None,
            queue_waker: None,
            callout_outbox: Vec::new(),
            callouts_in_flight: HashSet::new(),
            next_callout_token: 0,
            callout_response: None,
            other_actions: Vec::new(),
            warned_grpc: false,
        }
    }

    /// A callout token not in use (never 0, which SDKs may treat as "none").
    pub(crate) fn next_callout_token(&mut self) -> u32 {
        loop {
            self.next_callout_token = self.next_callout_token.wrapping_add(1);
            let token = self.next_callout_token;
            if token != 0 && !self.callouts_in_flight.contains(&token) {
                return token;
            }
        }
    }

    /// The stream actions of the effective context: those of the running callback's request
    /// fold into its result; others are kept for the proxy to route.
    pub(crate) fn actions_of_effective(&mut self) -> &mut StreamActions {
        let ctx = self.effective_ctx;
        if self.exchange_ctx == Some(ctx) {
            return &mut self.actions;
        }
        let index = match self.other_actions.iter().position(|(c, _)| *c == ctx) {
            Some(index) => index,
            None => {
                self.other_actions.push((ctx, StreamActions::default()));
                self.other_actions.len() - 1
            }
        };
        &mut self.other_actions[index].1
    }

    /// The request the effective context may act on: only the one the running callback is
    /// for. `None` in lifecycle callbacks, and after a switch to another context.
    pub(crate) fn exchange(&self) -> Option<&HttpExchange> {
        (self.exchange_ctx == Some(self.effective_ctx)).then_some(&self.exchange)
    }

    pub(crate) fn exchange_mut(&mut self) -> Option<&mut HttpExchange> {
        (self.exchange_ctx == Some(self.effective_ctx)).then_some(&mut self.exchange)
    }

    /// Whether `id` names a context of this VM.
    pub(crate) fn knows_context(&self, id: u32) -> bool {
        id == self.root_id || self.live.contains(&id)
    }
}
