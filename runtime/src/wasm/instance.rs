//! One filter VM: a `Store` and its `Instance`, driven through the proxy-wasm callbacks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use wasmtime::{Instance, Store, Trap, TypedFunc, WasmBacktrace};

use super::abi::wasi::ProcExit;
use super::exchange::HttpExchange;
use super::host::{HostState, Phase};
use super::services::{CalloutRequest, CalloutResponse, InstanceEnv};
use super::{FilterModule, LIFECYCLE_MIN_TIMEOUT, SandboxLimits, WasmError, ticks_for};

/// The id of the root (plugin) context; HTTP contexts are numbered after it.
pub(crate) const ROOT_CONTEXT_ID: u32 = 1;

/// Instance ids, unique in the process (shared queues name their consumer by it).
static NEXT_INSTANCE_ID: AtomicU64 = AtomicU64::new(1);

/// What a filter asked the proxy to do with the stream after a header, body or trailers
/// callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterAction {
    /// Go on with the next filter (proxy-wasm `CONTINUE`).
    Continue,
    /// Hold the stream until the filter resumes it (`PAUSE`). From a body callback this is
    /// Envoy's `StopIterationAndBuffer`: the proxy buffers what follows and calls again with
    /// everything buffered. If the filter set [`HttpExchange::local_reply`], the proxy answers
    /// with it instead.
    Pause,
}

/// Stream operations a filter asked for during callbacks (`proxy_continue_stream`,
/// `proxy_close_stream`), applied by the proxy afterwards, as the C++ host defers them.
///
/// A `continue_stream` for the stream of the running header, body or trailers callback is
/// folded into its [`FilterAction`] (a pause the filter already resumed is reported as
/// `Continue`); the rest is collected here until [`FilterInstance::take_stream_actions`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamActions {
    /// The filter resumed the request (`proxy_continue_stream(HTTP_REQUEST)`).
    pub resume_request: bool,
    /// The filter resumed the response.
    pub resume_response: bool,
    /// The filter reset the request (`proxy_close_stream(HTTP_REQUEST)`): reset the stream.
    pub reset_request: bool,
    /// The filter reset the response.
    pub reset_response: bool,
    /// L4: the filter resumed the data from the client (`proxy_continue_stream(DOWNSTREAM)`).
    pub resume_downstream: bool,
    /// L4: the filter resumed the data from the upstream.
    pub resume_upstream: bool,
    /// L4: the filter closed the client's connection (`proxy_close_stream(DOWNSTREAM)`).
    pub close_downstream: bool,
    /// L4: the filter closed the upstream connection.
    pub close_upstream: bool,
}

/// Which side closed an L4 connection (`proxy_peer_type_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerType {
    Unknown = 0,
    /// This end closed it.
    Local = 1,
    /// The other end closed it.
    Remote = 2,
}

/// `proxy_on_http_call_response(ctx, token, headers, body_size, trailers)`.
type CallResponseArgs = (i32, i32, i32, i32, i32);

/// The callbacks a module exports, resolved once per instance (their signatures were checked
/// when the module was loaded, so a missing entry means "not exported": skipped).
struct Callbacks {
    on_context_create: Option<TypedFunc<(i32, i32), ()>>,
    on_vm_start: Option<TypedFunc<(i32, i32), i32>>,
    on_configure: Option<TypedFunc<(i32, i32), i32>>,
    on_request_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_response_headers: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_request_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_request_trailers: Option<TypedFunc<(i32, i32), i32>>,
    on_response_body: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_response_trailers: Option<TypedFunc<(i32, i32), i32>>,
    on_done: Option<TypedFunc<i32, i32>>,
    on_log: Option<TypedFunc<i32, ()>>,
    on_delete: Option<TypedFunc<i32, ()>>,
    on_tick: Option<TypedFunc<i32, ()>>,
    on_http_call_response: Option<TypedFunc<CallResponseArgs, ()>>,
    on_queue_ready: Option<TypedFunc<(i32, i32), ()>>,
    on_new_connection: Option<TypedFunc<i32, i32>>,
    on_downstream_data: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_upstream_data: Option<TypedFunc<(i32, i32, i32), i32>>,
    on_downstream_connection_close: Option<TypedFunc<(i32, i32), ()>>,
    on_upstream_connection_close: Option<TypedFunc<(i32, i32), ()>>,
}

impl Callbacks {
    fn resolve(instance: &Instance, store: &mut Store<HostState>) -> Self {
        Self {
            on_context_create: instance.get_typed_func(&mut *store, "proxy_on_context_create").ok(),
            on_vm_start: instance.get_typed_func(&mut *store, "proxy_on_vm_start").ok(),
            on_configure: instance.get_typed_func(&mut *store, "proxy_on_configure").ok(),
            on_request_headers: instance.get_typed_func(&mut *store, "proxy_on_request_headers").ok(),
            on_response_headers: instance.get_typed_func(&mut *store, "proxy_on_response_headers").ok(),
            on_request_body: instance.get_typed_func(&mut *store, "proxy_on_request_body").ok(),
            on_request_trailers: instance.get_typed_func(&mut *store, "proxy_on_request_trailers").ok(),
            on_response_body: instance.get_typed_func(&mut *store, "proxy_on_response_body").ok(),
            on_response_trailers: instance.get_typed_func(&mut *store, "proxy_on_response_trailers").ok(),
            on_done: instance.get_typed_func(&mut *store, "proxy_on_done").ok(),
            on_log: instance.get_typed_func(&mut *store, "proxy_on_log").ok(),
            on_delete: instance.get_typed_func(&mut *store, "proxy_on_delete").ok(),
            on_tick: instance.get_typed_func(&mut *store, "proxy_on_tick").ok(),
            on_http_call_response: instance.get_typed_func(&mut *store, "proxy_on_http_call_response").ok(),
            on_queue_ready: instance.get_typed_func(&mut *store, "proxy_on_queue_ready").ok(),
            on_new_connection: instance.get_typed_func(&mut *store, "proxy_on_new_connection").ok(),
            on_downstream_data: instance.get_typed_func(&mut *store, "proxy_on_downstream_data").ok(),
            on_upstream_data: instance.get_typed_func(&mut *store, "proxy_on_upstream_data").ok(),
            on_downstream_connection_close: instance
                .get_typed_func(&mut *store, "proxy_on_downstream_connection_close")
                .ok(),
            on_upstream_connection_close: instance
                .get_typed_func(&mut *store, "proxy_on_upstream_connection_close")
                .ok(),
        }
    }
}

/// One filter VM (a wasmtime `Store` plus its `Instance`) with its root context configured.
///
/// Used from one worker thread: each callback runs to completion on the caller's thread (no
/// async, no locks), with the exchange moved into the store for its duration. The proxy keeps
/// one instance per filter per worker and opens one HTTP context per request
/// ([`create_http_context`](Self::create_http_context) … [`finish_http_context`](Self::finish_http_context)),
/// as Envoy does: about a microsecond per request for a small filter, against ~30 µs to build
/// and configure a fresh instance.
///
/// After a trap, a deadline or the memory cap the instance is [broken](Self::is_broken): every
/// later call fails with [`WasmError::Broken`] without running guest code, and the proxy builds
/// a new one with [`start`](Self::start).
pub struct FilterInstance {
    store: Store<HostState>,
    module: FilterModule,
    callbacks: Callbacks,
    next_id: u32,
    call_timeout: Duration,
    call_ticks: u64,
    memory_limit: u64,
    broken: bool,
}

// === impl FilterInstance ===

impl FilterInstance {
    /// Instantiates `module` and brings its root context up: `_initialize` (then `main(0, 0)`
    /// if exported) or else `_start`, `proxy_on_context_create(root, 0)`,
    /// `proxy_on_vm_start(root, 0)` and `proxy_on_configure(root, plugin_config.len())`, the
    /// filter reading `plugin_config` through `PLUGIN_CONFIGURATION`.
    ///
    /// These lifecycle calls get `max(limits.call_timeout, 1 s)` each (parsing a large route
    /// table may take longer than a request callback may); the memory cap applies from the
    /// start. `proc_exit(0)` from `_start` counts as a normal return (TinyGo's runtime exits
    /// after `main`); any other `proc_exit` is a trap.
    ///
    /// # Errors
    /// [`WasmError::ConfigureRejected`] if `proxy_on_configure` returns false,
    /// [`WasmError::VmStartRejected`] if `proxy_on_vm_start` does, the trap, deadline and memory
    /// errors of the calls, and [`WasmError::Instantiate`] if no instance slot is free.
    pub fn start(module: &FilterModule, plugin_config: &[u8], limits: &SandboxLimits) -> Result<Self, WasmError> {
        Self::start_with(module, plugin_config, limits, &InstanceEnv::default())
    }

    /// [`start`](Self::start) embedded in a proxy: `env` says which upstreams callouts may
    /// reach, answers host services, and is told of shared-queue items for this VM.
    pub fn start_with(
        module: &FilterModule,
        plugin_config: &[u8],
        limits: &SandboxLimits,
        env: &InstanceEnv,
    ) -> Result<Self, WasmError> {
        let inner = &module.inner;
        let memory_bytes = usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX);
        let mut state = HostState::new(
            inner.name.clone(),
            memory_bytes,
            plugin_config.to_vec(),
            ROOT_CONTEXT_ID,
        );
        state.instance_id = NEXT_INSTANCE_ID.fetch_add(1, Ordering::Relaxed);
        state.services = env.services.clone();
        state.queue_waker = env.queue_waker.clone();
        let mut store = Store::new(&inner.runtime.engine, state);
        store.limiter(|state| &mut state.limiter);
        store.epoch_deadline_trap();
        let lifecycle_timeout = limits.call_timeout.max(LIFECYCLE_MIN_TIMEOUT);
        store.set_epoch_deadline(ticks_for(lifecycle_timeout));
        store.data_mut().phase = Phase::Lifecycle;

        let instance = match inner.pre.instantiate(&mut store) {
            Ok(instance) => instance,
            Err(e) => {
                let is_trap = e.is::<Trap>() || e.is::<ProcExit>();
                let error = classify(&mut store, e, &inner.name, lifecycle_timeout, limits.memory_bytes);
                return Err(match error {
                    WasmError::Trap { filter, message } if !is_trap => WasmError::Instantiate { filter, message },
                    other => other,
                });
            }
        };
        let memory = instance.get_memory(&mut store, "memory");
        let allocator = ["proxy_on_memory_allocate", "malloc"]
            .iter()
            .find_map(|name| instance.get_typed_func::<i32, i32>(&mut store, name).ok());
        let initialize = instance.get_typed_func::<(), ()>(&mut store, "_initialize").ok();
        let main = instance.get_typed_func::<(i32, i32), i32>(&mut store, "main").ok();
        let entry = instance.get_typed_func::<(), ()>(&mut store, "_start").ok();
        let callbacks = Callbacks::resolve(&instance, &mut store);
        let state = store.data_mut();
        state.memory = memory;
        state.allocator = allocator;

        let mut this = Self {
            store,
            module: module.clone(),
            callbacks,
            next_id: ROOT_CONTEXT_ID + 1,
            call_timeout: limits.call_timeout,
            call_ticks: ticks_for(limits.call_timeout),
            memory_limit: limits.memory_bytes,
            broken: false,
        };
        let config_len = plugin_config.len() as i32;
        let outcome = this.invoke(
            Phase::Lifecycle,
            ROOT_CONTEXT_ID,
            None,
            lifecycle_timeout,
            |store, cb| {
                if let Some(initialize) = initialize {
                    initialize.call(&mut *store, ())?;
                    if let Some(main) = main {
                        main.call(&mut *store, (0, 0))?;
                    }
                } else if let Some(entry) = entry {
                    match entry.call(&mut *store, ()) {
                        Err(e) if e.downcast_ref::<ProcExit>() == Some(&ProcExit(0)) => {}
                        other => other?,
                    }
                }
                let root = ROOT_CONTEXT_ID as i32;
                if let Some(f) = &cb.on_context_create {
                    f.call(&mut *store, (root, 0))?;
                }
                if let Some(f) = &cb.on_vm_start
                    && f.call(&mut *store, (root, 0))? == 0
                {
                    return Ok(Err(Rejected::VmStart));
                }
                if let Some(f) = &cb.on_configure
                    && f.call(&mut *store, (root, config_len))? == 0
                {
                    return Ok(Err(Rejected::Configure));
                }
                Ok(Ok(()))
            },
        )?;
        let filter = this.name().to_string();
        match outcome {
            Ok(()) => Ok(this),
            Err(Rejected::VmStart) => Err(WasmError::VmStartRejected { filter }),
            Err(Rejected::Configure) => Err(WasmError::ConfigureRejected { filter }),
        }
    }

    /// This instance's id, unique in the process ([`QueueReady::instance`](super::QueueReady)).
    pub fn id(&self) -> u64 {
        self.store.data().instance_id
    }

    /// The filter's name (as given to [`WasmRuntime::load`](super::WasmRuntime::load)).
    pub fn name(&self) -> &str {
        self.module.name()
    }

    /// The module this instance runs.
    pub fn module(&self) -> &FilterModule {
        &self.module
    }

    /// Whether a trap, deadline or memory cap made this instance unusable.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// The tick period the filter asked for (`proxy_set_tick_period_milliseconds`), if any;
    /// the worker calls [`on_tick`](Self::on_tick) at this period.
    pub fn tick_period(&self) -> Option<Duration> {
        match self.store.data().tick_period_ms {
            0 => None,
            ms => Some(Duration::from_millis(ms.into())),
        }
    }

    /// The size of the filter's linear memory in bytes (it only grows; recycle the instance to
    /// return it).
    pub fn memory_size(&self) -> usize {
        self.store.data().memory.map_or(0, |m| m.data_size(&self.store))
    }

    /// How many HTTP contexts are open (created and not finished, including those waiting for
    /// `proxy_done`).
    pub fn open_contexts(&self) -> usize {
        self.store.data().live.len()
    }

    /// The stream actions collected since the last call (see [`StreamActions`]).
    pub fn take_stream_actions(&mut self) -> StreamActions {
        std::mem::take(&mut self.store.data_mut().actions)
    }

    /// The HTTP callouts the filter made since the last call, for the proxy to send; each
    /// answer goes back through [`on_http_call_response`](Self::on_http_call_response).
    pub fn take_callouts(&mut self) -> Vec<CalloutRequest> {
        std::mem::take(&mut self.store.data_mut().callout_outbox)
    }

    /// Stream actions the filter took on contexts other than the request of the callback that
    /// ran (e.g. a root context resuming the requests that waited for its callout), by context.
    pub fn take_other_actions(&mut self) -> Vec<(u32, StreamActions)> {
        std::mem::take(&mut self.store.data_mut().other_actions)
    }

    /// Forgets callout `token`: its answer will not be delivered (its request is gone).
    pub fn cancel_callout(&mut self, token: u32) {
        self.store.data_mut().callouts_in_flight.remove(&token);
    }

    /// Whether context `ctx` is open (created, and not finished).
    pub fn is_open(&self, ctx: u32) -> bool {
        let state = self.store.data();
        state.live.contains(&ctx) && !state.pending_done.contains(&ctx)
    }

    /// Delivers the answer to callout `token` (`None`: it failed or timed out, delivered as
    /// Envoy does, with no headers) to context `ctx`, which made it:
    /// `proxy_on_http_call_response(ctx, token, headers, body_size, trailers)`. `ex` is that
    /// context's request when it is still in flight (the filter may change it, resume it or
    /// answer it); a context that is gone no longer gets answers, as in Envoy.
    ///
    /// Returns whether the callback ran. The filter's stream actions are collected as after any
    /// callback ([`take_stream_actions`](Self::take_stream_actions) for `ex`'s request).
    pub fn on_http_call_response(
        &mut self,
        ctx: u32,
        token: u32,
        response: Option<CalloutResponse>,
        ex: Option<&mut HttpExchange>,
    ) -> Result<bool, WasmError> {
        if self.broken {
            return Err(self.broken_error());
        }
        let state = self.store.data_mut();
        if !state.callouts_in_flight.remove(&token) {
            return Ok(false);
        }
        let root = state.root_id;
        let open = state.live.contains(&ctx) && !state.pending_done.contains(&ctx);
        if ctx != root && !open {
            return Ok(false);
        }
        let Some(callback) = self.callbacks.on_http_call_response.clone() else {
            return Ok(false);
        };
        let (headers, body, trailers) = response.as_ref().map_or((0, 0, 0), |r| {
            (
                clamp_size(r.headers.len()),
                clamp_size(r.body.len()),
                clamp_size(r.trailers.len()),
            )
        });
        state.callout_response = response;
        let timeout = self.call_timeout;
        let result = self.invoke(Phase::CalloutResponse, ctx, ex, timeout, |store, _| {
            callback.call(store, (ctx as i32, token as i32, headers, body, trailers))
        });
        self.store.data_mut().callout_response = None;
        result?;
        self.complete_deferred();
        Ok(true)
    }

    /// `proxy_on_queue_ready(root, queue)`: an item waits on a queue this VM registered.
    pub fn on_queue_ready(&mut self, queue: u32) -> Result<(), WasmError> {
        let Some(callback) = self.callbacks.on_queue_ready.clone() else {
            return Ok(());
        };
        let root = self.store.data().root_id;
        let timeout = self.call_timeout;
        self.invoke(Phase::Lifecycle, root, None, timeout, |store, _| {
            callback.call(store, (root as i32, queue as i32))
        })?;
        self.complete_deferred();
        Ok(())
    }

    /// Opens a stream (L4) context for a new connection. Contexts are created the same way
    /// whatever they are for (`proxy_on_context_create(id, root)`; the SDKs ask the root context
    /// which kind to make); end it with [`finish_http_context`](Self::finish_http_context).
    pub fn create_stream_context(&mut self) -> Result<u32, WasmError> {
        self.create_http_context()
    }

    /// `proxy_on_new_connection(ctx)`: a client connected. `Pause` holds the connection's data
    /// until the filter resumes it.
    pub fn on_new_connection(&mut self, ctx: u32, ex: &mut HttpExchange) -> Result<FilterAction, WasmError> {
        self.check_open(ctx)?;
        let timeout = self.call_timeout;
        let action = self.invoke(Phase::Lifecycle, ctx, Some(ex), timeout, |store, cb| {
            match &cb.on_new_connection {
                Some(f) => f.call(store, ctx as i32),
                None => Ok(0),
            }
        })?;
        self.complete_deferred();
        Ok(fold(action, &mut self.store.data_mut().actions.resume_downstream))
    }

    /// `proxy_on_downstream_data(ctx, size, end_of_stream)` over `ex.request_body`
    /// (`DOWNSTREAM_DATA`: the bytes, or all buffered since the filter paused), which the filter
    /// may read and change. `Pause` buffers what follows, as for HTTP bodies.
    pub fn on_downstream_data(
        &mut self,
        ctx: u32,
        ex: &mut HttpExchange,
        end_of_stream: bool,
    ) -> Result<FilterAction, WasmError> {
        let size = clamp_size(ex.request_body.len());
        self.l4_data(Phase::DownstreamData, ctx, ex, end_of_stream, size)
    }

    /// `proxy_on_upstream_data(ctx, size, end_of_stream)` over `ex.response_body`
    /// (`UPSTREAM_DATA`).
    pub fn on_upstream_data(
        &mut self,
        ctx: u32,
        ex: &mut HttpExchange,
        end_of_stream: bool,
    ) -> Result<FilterAction, WasmError> {
        let size = clamp_size(ex.response_body.len());
        self.l4_data(Phase::UpstreamData, ctx, ex, end_of_stream, size)
    }

    /// `proxy_on_downstream_connection_close(ctx, peer)`: the client's side closed.
    pub fn on_downstream_close(&mut self, ctx: u32, peer: PeerType) -> Result<(), WasmError> {
        self.l4_close(ctx, peer, true)
    }

    /// `proxy_on_upstream_connection_close(ctx, peer)`: the upstream's side closed.
    pub fn on_upstream_close(&mut self, ctx: u32, peer: PeerType) -> Result<(), WasmError> {
        self.l4_close(ctx, peer, false)
    }

    fn l4_data(
        &mut self,
        phase: Phase,
        ctx: u32,
        ex: &mut HttpExchange,
        end_of_stream: bool,
        size: i32,
    ) -> Result<FilterAction, WasmError> {
        self.check_open(ctx)?;
        let downstream = phase == Phase::DownstreamData;
        self.store.data_mut().end_of_stream = end_of_stream;
        let timeout = self.call_timeout;
        let action = self.invoke(phase, ctx, Some(ex), timeout, |store, cb| {
            let callback = if downstream {
                &cb.on_downstream_data
            } else {
                &cb.on_upstream_data
            };
            match callback {
                Some(f) => f.call(store, (ctx as i32, size, end_of_stream as i32)),
                None => Ok(0),
            }
        });
        self.store.data_mut().end_of_stream = false;
        let action = action?;
        self.complete_deferred();
        let actions = &mut self.store.data_mut().actions;
        let flag = if downstream {
            &mut actions.resume_downstream
        } else {
            &mut actions.resume_upstream
        };
        Ok(fold(action, flag))
    }

    fn l4_close(&mut self, ctx: u32, peer: PeerType, downstream: bool) -> Result<(), WasmError> {
        self.check_open(ctx)?;
        let timeout = self.call_timeout;
        self.invoke(Phase::Lifecycle, ctx, None, timeout, |store, cb| {
            let callback = if downstream {
                &cb.on_downstream_connection_close
            } else {
                &cb.on_upstream_connection_close
            };
            match callback {
                Some(f) => f.call(store, (ctx as i32, peer as i32)),
                None => Ok(()),
            }
        })?;
        self.complete_deferred();
        Ok(())
    }

    /// Opens an HTTP context for a new request (`proxy_on_context_create(id, root)`) and returns
    /// its id, unique among this instance's open contexts.
    pub fn create_http_context(&mut self) -> Result<u32, WasmError> {
        if self.broken {
            return Err(self.broken_error());
        }
        let id = self.next_context_id();
        self.store.data_mut().live.insert(id);
        let timeout = self.call_timeout;
        let created = self.invoke(Phase::Lifecycle, id, None, timeout, |store, cb| {
            match &cb.on_context_create {
                Some(f) => f.call(store, (id as i32, ROOT_CONTEXT_ID as i32)),
                None => Ok(()),
            }
        });
        if created.is_err() {
            self.store.data_mut().live.remove(&id);
        }
        created.map(|()| id)
    }

    /// Runs `proxy_on_request_headers` on context `ctx` over `ex` (the request headers may be
    /// read and changed; a local reply may be set).
    pub fn on_request_headers(
        &mut self,
        ctx: u32,
        ex: &mut HttpExchange,
        end_of_stream: bool,
    ) -> Result<FilterAction, WasmError> {
        self.check_open(ctx)?;
        let headers = ex.request_headers.len() as i32;
        let timeout = self.call_timeout;
        // Only a resume made during this callback folds into its action; keep earlier ones.
        let earlier = std::mem::take(&mut self.store.data_mut().actions.resume_request);
        let action = self.invoke(Phase::RequestHeaders, ctx, Some(ex), timeout, |store, cb| {
            match &cb.on_request_headers {
                Some(f) => f.call(store, (ctx as i32, headers, end_of_stream as i32)),
                None => Ok(0),
            }
        })?;
        self.complete_deferred();
        let actions = &mut self.store.data_mut().actions;
        let action = fold(action, &mut actions.resume_request);
        actions.resume_request |= earlier;
        Ok(action)
    }

    /// Runs `proxy_on_response_headers` on context `ctx` over `ex` (the response headers may be
    /// read and changed; a local reply may still replace the response).
    pub fn on_response_headers(
        &mut self,
        ctx: u32,
        ex: &mut HttpExchange,
        end_of_stream: bool,
    ) -> Result<FilterAction, WasmError> {
        self.check_open(ctx)?;
        let headers = ex.response_headers.len() as i32;
        let timeout = self.call_timeout;
        // Only a resume made during this callback folds into its action; keep earlier ones.
        let earlier = std::mem::take(&mut self.store.data_mut().actions.resume_response);
        let action = self.invoke(Phase::ResponseHeaders, ctx, Some(ex), timeout, |store, cb| {
            match &cb.on_response_headers {
                Some(f) => f.call(store, (ctx as i32, headers, end_of_stream as i32)),
                None => Ok(0),
            }
        })?;
        self.complete_deferred();
        let actions = &mut self.store.data_mut().actions;
        let action = fold(action, &mut actions.resume_response);
        actions.resume_response |= earlier;
        Ok(action)
    }

    /// Runs `proxy_on_request_body(ctx, body_size, end_of_stream)` over `ex`, where
    /// `ex.request_body` holds what the filter sees (`HTTP_REQUEST_BODY`): the new chunk, or
    /// everything buffered for it since it paused, so `body_size` is `ex.request_body.len()`
    /// (cumulative while paused, as Envoy passes it). The filter may change the body, the request
    /// headers (they take effect if the proxy still holds them) and, when `end_of_stream`, create
    /// request trailers. An absent callback continues.
    pub fn on_request_body(
        &mut self,
        ctx: u32,
        ex: &mut HttpExchange,
        end_of_stream: bool,
    ) -> Result<FilterAction, WasmError> {
        let size = clamp_size(ex.request_body.len());
        self.stream_callback(Phase::RequestBody, ctx, ex, end_of_stream, |store, cb| {
            match &cb.on_request_body {
                Some(f) => f.call(store, (ctx as i32, size, end_of_stream as i32)),
                None => Ok(0),
            }
        })
    }

    /// Runs `proxy_on_request_trailers(ctx, num_trailers)` over `ex` (`ex.request_trailers` is
    /// readable and writable; `ex.request_body` holds what the host buffered for the filter, if
    /// it had paused). An absent callback continues.
    pub fn on_request_trailers(&mut self, ctx: u32, ex: &mut HttpExchange) -> Result<FilterAction, WasmError> {
        let count = clamp_size(ex.request_trailers.len());
        self.stream_callback(Phase::RequestTrailers, ctx, ex, true, |store, cb| {
            match &cb.on_request_trailers {
                Some(f) => f.call(store, (ctx as i32, count)),
                None => Ok(0),
            }
        })
    }

    /// Runs `proxy_on_response_body(ctx, body_size, end_of_stream)` over `ex`, as
    /// [`on_request_body`](Self::on_request_body) does for the request (`ex.response_body`).
    pub fn on_response_body(
        &mut self,
        ctx: u32,
        ex: &mut HttpExchange,
        end_of_stream: bool,
    ) -> Result<FilterAction, WasmError> {
        let size = clamp_size(ex.response_body.len());
        self.stream_callback(Phase::ResponseBody, ctx, ex, end_of_stream, |store, cb| {
            match &cb.on_response_body {
                Some(f) => f.call(store, (ctx as i32, size, end_of_stream as i32)),
                None => Ok(0),
            }
        })
    }

    /// Runs `proxy_on_response_trailers(ctx, num_trailers)` over `ex` (`ex.response_trailers`).
    pub fn on_response_trailers(&mut self, ctx: u32, ex: &mut HttpExchange) -> Result<FilterAction, WasmError> {
        let count = clamp_size(ex.response_trailers.len());
        self.stream_callback(Phase::ResponseTrailers, ctx, ex, true, |store, cb| {
            match &cb.on_response_trailers {
                Some(f) => f.call(store, (ctx as i32, count)),
                None => Ok(0),
            }
        })
    }

    /// Ends context `ctx`: `proxy_on_done`, then, if it returns true, `proxy_on_log` and
    /// `proxy_on_delete` (the headers in `ex` are readable throughout). If `proxy_on_done`
    /// returns false the context stays open until the filter calls `proxy_done` (then
    /// `proxy_on_log` runs without a request). Errors are logged with the filter's name and
    /// mark the instance broken; they are not returned, since the request is over.
    pub fn finish_http_context(&mut self, ctx: u32, ex: &mut HttpExchange) {
        if self.broken || !self.store.data().live.contains(&ctx) || self.store.data().pending_done.contains(&ctx) {
            return;
        }
        let timeout = self.call_timeout;
        let finished = self.invoke(Phase::Finish, ctx, Some(ex), timeout, |store, cb| {
            let done = match &cb.on_done {
                Some(f) => f.call(&mut *store, ctx as i32)? != 0,
                None => true,
            };
            if done {
                log_and_delete(store, cb, ctx)?;
            }
            Ok(done)
        });
        match finished {
            Ok(true) => {
                self.store.data_mut().live.remove(&ctx);
            }
            Ok(false) => {
                self.store.data_mut().pending_done.insert(ctx);
            }
            Err(error) => {
                tracing::error!(filter = self.name(), context = ctx, %error, "finishing an HTTP context failed; the instance is broken");
            }
        }
        self.complete_deferred();
    }

    /// `proxy_on_tick` on the root context. A filter without the export ignores ticks.
    pub fn on_tick(&mut self) -> Result<(), WasmError> {
        let Some(on_tick) = self.callbacks.on_tick.clone() else {
            return Ok(());
        };
        let root = self.store.data().root_id;
        let timeout = self.call_timeout;
        // A tick runs on the root context, like the lifecycle callbacks: no request is current.
        self.invoke(Phase::Lifecycle, root, None, timeout, |store, _| {
            on_tick.call(store, root as i32)
        })?;
        self.complete_deferred();
        Ok(())
    }

    /// The guest's linear memory, for tests that check what hostcalls wrote.
    #[cfg(test)]
    pub(crate) fn guest_memory(&self) -> &[u8] {
        self.store.data().memory.map_or(&[], |m| m.data(&self.store))
    }

    // --- internals ---

    fn next_context_id(&mut self) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.checked_add(1).unwrap_or(ROOT_CONTEXT_ID + 1);
            let state = self.store.data();
            if id > ROOT_CONTEXT_ID && !state.live.contains(&id) {
                return id;
            }
        }
    }

    fn broken_error(&self) -> WasmError {
        WasmError::Broken {
            filter: self.name().to_string(),
        }
    }

    fn check_open(&self, ctx: u32) -> Result<(), WasmError> {
        if self.broken {
            return Err(self.broken_error());
        }
        let state = self.store.data();
        if !state.live.contains(&ctx) || state.pending_done.contains(&ctx) {
            return Err(WasmError::UnknownContext {
                filter: self.name().to_string(),
                context: ctx,
            });
        }
        Ok(())
    }

    /// Runs guest code for one callback: sets the deadline, moves the exchange in (and back,
    /// also on error), and turns a failure into a precise error, marking the instance broken.
    fn invoke<R>(
        &mut self,
        phase: Phase,
        ctx: u32,
        mut ex: Option<&mut HttpExchange>,
        timeout: Duration,
        call: impl FnOnce(&mut Store<HostState>, &Callbacks) -> wasmtime::Result<R>,
    ) -> Result<R, WasmError> {
        if self.broken {
            return Err(self.broken_error());
        }
        let ticks = if timeout == self.call_timeout {
            self.call_ticks
        } else {
            ticks_for(timeout)
        };
        self.store.set_epoch_deadline(ticks);
        let state = self.store.data_mut();
        state.phase = phase;
        state.effective_ctx = ctx;
        if let Some(ex) = ex.as_deref_mut() {
            state.exchange = std::mem::take(ex);
            state.exchange_ctx = Some(ctx);
        }

        let result = call(&mut self.store, &self.callbacks);

        let state = self.store.data_mut();
        if let Some(ex) = ex {
            *ex = std::mem::take(&mut state.exchange);
        }
        state.exchange_ctx = None;
        state.phase = Phase::Idle;
        state.effective_ctx = state.root_id;
        result.map_err(|e| {
            self.broken = true;
            classify(&mut self.store, e, self.module.name(), timeout, self.memory_limit)
        })
    }

    /// A body or trailers callback: like the header callbacks, a `proxy_continue_stream` of the
    /// same direction made during the call folds into its action; earlier ones are kept.
    fn stream_callback(
        &mut self,
        phase: Phase,
        ctx: u32,
        ex: &mut HttpExchange,
        end_of_stream: bool,
        call: impl FnOnce(&mut Store<HostState>, &Callbacks) -> wasmtime::Result<i32>,
    ) -> Result<FilterAction, WasmError> {
        self.check_open(ctx)?;
        let request = matches!(phase, Phase::RequestBody | Phase::RequestTrailers);
        let state = self.store.data_mut();
        state.end_of_stream = end_of_stream;
        let earlier = std::mem::take(resume_flag(&mut state.actions, request));
        let timeout = self.call_timeout;
        let action = self.invoke(phase, ctx, Some(ex), timeout, call);
        self.store.data_mut().end_of_stream = false;
        let action = action?;
        self.complete_deferred();
        let flag = resume_flag(&mut self.store.data_mut().actions, request);
        let action = fold(action, flag);
        *flag |= earlier;
        Ok(action)
    }

    /// Finishes contexts that called `proxy_done` during the last callback.
    fn complete_deferred(&mut self) {
        if self.broken {
            return;
        }
        while let Some(ctx) = self.store.data_mut().done_requested.pop() {
            let state = self.store.data_mut();
            state.pending_done.remove(&ctx);
            let timeout = self.call_timeout;
            let result = self.invoke(Phase::Finish, ctx, None, timeout, |store, cb| {
                log_and_delete(store, cb, ctx)
            });
            self.store.data_mut().live.remove(&ctx);
            if let Err(error) = result {
                tracing::error!(filter = self.name(), context = ctx, %error, "finishing a context after proxy_done failed; the instance is broken");
                return;
            }
        }
    }
}

impl Drop for FilterInstance {
    fn drop(&mut self) {
        super::queue::release(self.id());
    }
}

impl std::fmt::Debug for FilterInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterInstance")
            .field("filter", &self.name())
            .field("broken", &self.broken)
            .field("open_contexts", &self.open_contexts())
            .finish_non_exhaustive()
    }
}

enum Rejected {
    VmStart,
    Configure,
}

fn log_and_delete(store: &mut Store<HostState>, cb: &Callbacks, ctx: u32) -> wasmtime::Result<()> {
    if let Some(f) = &cb.on_log {
        f.call(&mut *store, ctx as i32)?;
    }
    if let Some(f) = &cb.on_delete {
        f.call(&mut *store, ctx as i32)?;
    }
    Ok(())
}

/// The resume flag of one direction.
fn resume_flag(actions: &mut StreamActions, request: bool) -> &mut bool {
    if request {
        &mut actions.resume_request
    } else {
        &mut actions.resume_response
    }
}

/// A size or count as the ABI's i32 (bodies are capped far below 2 GiB; saturate anyway).
fn clamp_size(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// The action of a header callback: proxy-wasm `CONTINUE` is 0 and anything else stops, as in
/// the C++ host; a stop the filter resumed during the same callback (`resumed`) is a continue.
fn fold(action: i32, resumed: &mut bool) -> FilterAction {
    // The flag is consumed either way: that resume is now reflected in the action.
    let resumed = std::mem::take(resumed);
    if action == 0 || resumed {
        FilterAction::Continue
    } else {
        FilterAction::Pause
    }
}

/// Turns a failed call into the error the proxy acts on.
fn classify(
    store: &mut Store<HostState>,
    error: wasmtime::Error,
    filter: &str,
    timeout: Duration,
    memory_limit: u64,
) -> WasmError {
    let filter = filter.to_string();
    if let Some(requested) = store.data_mut().limiter.exceeded.take() {
        return WasmError::MemoryLimit {
            filter,
            limit: memory_limit,
            requested: requested as u64,
        };
    }
    if error.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return WasmError::Deadline { filter, timeout };
    }
    WasmError::Trap {
        filter,
        message: describe(&error),
    }
}

/// The trap, its context (e.g. the faulting wasm address) and the guest backtrace.
fn describe(error: &wasmtime::Error) -> String {
    let backtrace = error.downcast_ref::<WasmBacktrace>().map(|bt| bt.to_string());
    let mut message = error
        .chain()
        .map(|cause| cause.to_string())
        .filter(|cause| Some(cause) != backtrace.as_ref())
        .collect::<Vec<_>>()
        .join(": ");
    if let Some(backtrace) = backtrace {
        message.push('\n');
        message.push_str(&backtrace);
    }
    message
}
