//! The filter chain of one worker for one configuration generation: one VM per filter, a
//! context per request. A filter that traps, overruns its deadline or its memory cap is
//! handled by its failure policy (FailClosed: the request is answered with 500, or reset once
//! the response has started; FailOpen: the filter is skipped for the rest of that request),
//! counted, logged, and its VM is replaced.
//!
//! # How a request flows through the filters (proxy-wasm semantics, as Envoy implements them)
//!
//! A request is a [`Stream`]: the [`HttpExchange`] the filters act on plus, per direction, one
//! *stage* per filter. The request runs the filters in chain order, the response in reverse
//! order and only through the filters that saw the request headers. Events enter the first
//! stage and move stage by stage, synchronously (guest calls never block):
//!
//! - **headers**: `on_*_headers`. `Continue` passes them on. `Pause` *holds* them at that
//!   filter (Envoy's `StopIteration`): later filters see neither headers nor body until it
//!   continues, and the body that arrives meanwhile is buffered there and handed to the same
//!   filter's body callback, whose `Continue` releases the headers and the buffered body.
//! - **data** (one frame, `end_of_stream` when it is the last): `on_*_body(size, eos)` over the
//!   frame. `Continue` passes it (as the filter may have changed it) on. `Pause` buffers it
//!   (Envoy's `StopIterationAndBuffer`): the next frame is appended and the filter is called
//!   again with the *cumulative* size, until it continues.
//! - **trailers**: `on_*_trailers`, with whatever the filter buffered readable as the body.
//!   A filter may also create trailers in its last body callback; they then follow the body.
//!
//! At the end of the stream (a data frame with `end_of_stream`, or trailers), a filter that
//! still pauses is released, unless something can still resume it: an HTTP callout it made for
//! this request, or one its VM made from the root context (a filter may resume requests from
//! there). Then the stream waits: [`Chain::poll_events`] delivers the callout's answer
//! (`proxy_on_http_call_response`, with the request in hand) and applies what the filter did
//! (resume, local reply, reset). A filter that, once nothing is in flight any more, still holds
//! the stream has left it with nothing that could resume it: that is a filter failure, handled
//! by its failure policy (Envoy would hang the request until its timeout).
//!
//! While a filter waits for its own callouts, the stream stays held whatever its body
//! callbacks answer: a `Continue` from the body callback of an authorization filter whose check
//! is still in flight does not let the request past it (Envoy would release the headers there).
//! What comes out of the last stage is queued ([`Stream::pop_frame`]) for the next hop; the
//! headers come out once ([`Stream::headers_out`]), and the proxy forwards them only then.
//!
//! Buffering happens only where a filter holds data, in the stage's [`BodyBuffer`]: a received
//! chunk is kept as hyper's `Bytes` (no copy) unless it must be appended to or a filter writes
//! it. All bytes buffered in one direction of a stream are capped at [`MAX_BUFFERED_BODY`]
//! (request over it: 413; response: 500, or a reset once the response started).
//!
//! # What it costs when no filter cares
//!
//! [`Chain::cares`] says, from the exports each module was loaded with, whether any filter of
//! the chain has a body or trailers callback for a direction. When none has and no filter held
//! the headers, the proxy passes hyper's body through untouched: no wrapper, no per-frame work,
//! contexts finished right after the response headers (as before bodies were filtered).
//!
//! Filters built with a proxy-wasm SDK export every callback, whether or not they override it,
//! so for them the chain cannot know in advance and calls the body callback of each filter for
//! each frame, as Envoy does. That is one guest call per frame per filter (the SDK's default
//! returns `Continue` without a hostcall; the frame is not copied, only lent): measured with the
//! standard router and balancer (test `body_frame_overhead`), a few hundred nanoseconds per frame
//! for the two, against the microseconds hyper spends per frame. The alternative, guessing that
//! a filter which continued the first frame will continue the rest, would break filters that
//! look for something later in a stream, so the chain does not guess.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use hyper::HeaderMap;
use hyper::body::Frame;
use hyper::header::{HeaderName, HeaderValue};

mod l4;

pub use self::l4::{Connection, Side};
use super::callout::{CalloutSender, PendingCallout};
use crate::metrics::Metrics;
use crate::translate::wasmfilters::FilterScope;
use crate::wasm::{
    BodyBuffer, BodyCallbacks, CalloutRequest, CalloutResponse, FilterAction, FilterInstance, FilterModule, HeaderList,
    HttpExchange, InstanceEnv, QueueReady, SandboxLimits, StreamActions, WasmError,
};

/// The most body bytes one direction of a stream may have buffered at a time (by filters that
/// paused, or hold the headers), summed over the filters of the chain.
///
/// 1 MiB, Envoy's default buffer limit (`per_connection_buffer_limit_bytes`): filters that need a
/// whole body (rewriting, inspection, signature checks) handle API payloads far below it, while a
/// worker serving a thousand such streams at once still holds at most ~1 GiB. Larger bodies
/// should be streamed (a filter that continues each frame buffers nothing).
pub const MAX_BUFFERED_BODY: usize = 1024 * 1024;

/// What to do when a filter fails (`spec.failurePolicy` of a WasmFilter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// The request fails with 500 (the default, and always for the standard filters).
    #[default]
    FailClosed,
    /// The filter is skipped and the request goes on without it.
    FailOpen,
}

/// One filter as the chain is asked to run it.
#[derive(Clone)]
pub struct ChainFilter {
    pub module: FilterModule,
    pub config: Arc<[u8]>,
    pub limits: SandboxLimits,
    pub failure_policy: FailurePolicy,
    /// Which requests the filter applies to (`None`: every request, as the standard filters).
    pub scope: Option<Arc<FilterScope>>,
}

/// One filter of the chain: its module, its configuration, and this worker's VM.
struct FilterSlot {
    module: FilterModule,
    config: Arc<[u8]>,
    limits: SandboxLimits,
    failure_policy: FailurePolicy,
    scope: Option<Arc<FilterScope>>,
    /// The body and trailer callbacks the module exports.
    callbacks: BodyCallbacks,
    instance: RefCell<FilterInstance>,
    /// Bumped when the VM is replaced, so contexts of the old VM are not finished on the new one.
    incarnation: Cell<u64>,
    /// When the filter's next `proxy_on_tick` is due, once it asked for ticks.
    next_tick: Cell<Option<Instant>>,
}

/// What a chain's VMs are embedded in: host services, the queue waker, the callout sender.
#[derive(Clone, Default)]
pub struct ChainEnv {
    pub instance: InstanceEnv,
    /// Sends HTTP callouts; without one every callout fails (unit tests).
    pub callouts: Option<Rc<CalloutSender>>,
}

/// A callout whose answer goes to a VM's root context (or to a context whose request is not
/// waiting for it): delivered by the worker's background driver ([`Chain::poll_background`]).
struct BackgroundCallout {
    slot: usize,
    incarnation: u64,
    ctx: u32,
    token: u32,
    pending: Rc<PendingCallout>,
}

/// A callout made for a request, delivered while the request waits ([`Chain::poll_events`]).
struct StreamCallout {
    direction: Direction,
    k: usize,
    ctx: u32,
    incarnation: u64,
    token: u32,
    pending: Rc<PendingCallout>,
}

/// A filter chain ready to serve requests on this worker.
pub struct Chain {
    slots: Vec<FilterSlot>,
    metrics: Arc<Metrics>,
    /// Whether any filter has a request (response) body or trailers callback.
    cares: [bool; 2],
    buffer_limit: usize,
    env: ChainEnv,
    background: RefCell<Vec<BackgroundCallout>>,
    background_waker: RefCell<Option<Waker>>,
    /// Held requests waiting to be resumed, by (slot, context): who to wake.
    waiting: RefCell<HashMap<(usize, u32), Waker>>,
    /// Stream actions other contexts took on those requests, until the request polls.
    external: RefCell<HashMap<(usize, u32), StreamActions>>,
}

/// Which way a stream's data flows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Downstream → upstream: chain order.
    Request,
    /// Upstream → downstream: reverse order.
    Response,
}

impl Direction {
    fn index(self) -> usize {
        match self {
            Direction::Request => 0,
            Direction::Response => 1,
        }
    }

    /// The label used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Request => "request",
            Direction::Response => "response",
        }
    }
}

/// Why a stream stopped. Once a stream is aborted every later call answers the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Abort {
    /// A filter answered locally: `Stream::ex.local_reply` holds the answer.
    LocalReply,
    /// A fail-closed filter failed: 500, or a reset once the response has started.
    Failed { filter: String, error: String },
    /// More than the buffer limit was buffered for a filter: 413 for a request, 500 for a
    /// response (or a reset once it started).
    BufferLimit { filter: String, direction: Direction },
    /// A filter reset the stream (`proxy_close_stream`).
    Reset { filter: String },
    /// A filter changed the length of a body whose `content-length` had already been sent: the
    /// stream is reset rather than sent with a wrong length.
    BodyLength { filter: String, direction: Direction },
}

impl std::fmt::Display for Abort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Abort::LocalReply => write!(f, "a filter answered locally"),
            Abort::Failed { filter, error } => write!(f, "filter {filter} failed: {error}"),
            Abort::BufferLimit { filter, direction } => write!(
                f,
                "the {} body buffered for filter {filter} exceeds the buffer limit",
                direction.name()
            ),
            Abort::Reset { filter } => write!(f, "filter {filter} reset the stream"),
            Abort::BodyLength { filter, direction } => write!(
                f,
                "filter {filter} changed the length of a {} body whose content-length was already sent",
                direction.name()
            ),
        }
    }
}

impl std::error::Error for Abort {}

/// One request as the chain sees it.
pub struct Stream {
    /// What the filters act on.
    pub ex: HttpExchange,
    flows: [Flow; 2],
    aborted: Option<Abort>,
    finished: bool,
    /// Callouts the filters made for this request, in flight.
    callouts: Vec<StreamCallout>,
}

/// One direction of a stream.
#[derive(Default)]
struct Flow {
    stages: Vec<Stage>,
    /// The headers came out of the last filter.
    headers_out: bool,
    /// Frames out of the last filter, for the next hop.
    out: VecDeque<Frame<Bytes>>,
    /// The end of the stream came out of the last filter.
    ended: bool,
    /// Body bytes that came out of the last filter.
    out_bytes: u64,
    /// The first filter (slot) that changed the body.
    modified_by: Option<usize>,
    /// The `content-length` the next hop was told, when the proxy sent one.
    declared_length: Option<u64>,
}

/// One filter in one direction of a stream.
struct Stage {
    slot: usize,
    /// The context, once the request headers reached the filter, and the VM incarnation it
    /// belongs to.
    ctx: Option<(u32, u64)>,
    /// The filter failed open: the rest of the stream passes it by.
    skipped: bool,
    /// The filter paused on the headers and has not continued yet.
    held: bool,
    /// The filter paused on the body: what follows is appended to `buffer`.
    buffering: bool,
    buffer: BodyBuffer,
    /// Callouts this filter made for the request, not answered yet.
    waiting: u32,
    /// The end of the stream reached this (held or buffering) stage.
    saw_end: bool,
    /// The headers it holds ended the stream (a request without body).
    headers_end: bool,
    /// Trailers reached it while it held the stream; they follow when it resumes.
    trailers_pending: bool,
}

impl Stage {
    fn new(slot: usize, ctx: Option<(u32, u64)>) -> Self {
        Self {
            slot,
            ctx,
            skipped: false,
            held: false,
            buffering: false,
            buffer: BodyBuffer::default(),
            waiting: 0,
            saw_end: false,
            headers_end: false,
            trailers_pending: false,
        }
    }

    fn holds(&self) -> bool {
        self.held || self.buffering
    }
}

/// An event entering a stage.
enum Event {
    Headers { end_of_stream: bool },
    Data { bytes: Bytes, end_of_stream: bool },
    Trailers,
}

/// A callback to run on one stage.
#[derive(Clone, Copy)]
enum Callback {
    Headers { end_of_stream: bool },
    Body { end_of_stream: bool },
    Trailers,
}

/// What a stage's filter said.
enum Step {
    Continue,
    Pause,
    /// It failed open (or its context was lost): pass it by.
    Skip,
}

// === impl Chain ===

impl Chain {
    /// Starts one VM per filter. Fails if a fail-closed filter cannot start (a fail-open one is
    /// left out, with an error logged and counted).
    #[cfg(test)]
    pub fn start(filters: &[ChainFilter], metrics: Arc<Metrics>) -> Result<Self, WasmError> {
        Self::start_with(filters, metrics, ChainEnv::default())
    }

    /// [`start`](Self::start) with the VMs embedded in `env` (host services, queues, callouts).
    pub fn start_with(filters: &[ChainFilter], metrics: Arc<Metrics>, env: ChainEnv) -> Result<Self, WasmError> {
        let mut slots = Vec::with_capacity(filters.len());
        for filter in filters {
            let started = FilterInstance::start_with(&filter.module, &filter.config, &filter.limits, &env.instance);
            let instance = match started {
                Ok(instance) => instance,
                Err(e) if filter.failure_policy == FailurePolicy::FailOpen => {
                    tracing::error!(filter = filter.module.name(), error = %e, "filter cannot start; skipped (failurePolicy FailOpen)");
                    metrics.filter_failure(filter.module.name());
                    continue;
                }
                Err(e) => return Err(e),
            };
            slots.push(FilterSlot {
                module: filter.module.clone(),
                config: filter.config.clone(),
                limits: filter.limits.clone(),
                failure_policy: filter.failure_policy,
                scope: filter.scope.clone(),
                callbacks: filter.module.body_callbacks(),
                instance: RefCell::new(instance),
                incarnation: Cell::new(0),
                next_tick: Cell::new(None),
            });
        }
        let cares = [
            slots.iter().any(|s| s.callbacks.request()),
            slots.iter().any(|s| s.callbacks.response()),
        ];
        let chain = Self {
            slots,
            metrics,
            cares,
            buffer_limit: MAX_BUFFERED_BODY,
            env,
            background: RefCell::default(),
            background_waker: RefCell::default(),
            waiting: RefCell::default(),
            external: RefCell::default(),
        };
        // Callouts made while starting (from proxy_on_configure) go to the root contexts.
        for index in 0..chain.slots.len() {
            chain.collect(index, None);
        }
        Ok(chain)
    }

    /// The same chain with another buffer limit (tests).
    #[cfg(test)]
    pub fn with_buffer_limit(mut self, limit: usize) -> Self {
        self.buffer_limit = limit;
        self
    }

    /// HTTP contexts open in the chain's VMs (tests: none may leak).
    #[cfg(test)]
    pub fn open_contexts(&self) -> usize {
        self.slots
            .iter()
            .map(|slot| slot.instance.borrow().open_contexts())
            .sum()
    }

    /// Whether any filter has a body or trailers callback for `direction`. When none has (and
    /// no filter holds the headers) the proxy passes that body through untouched.
    pub fn cares(&self, direction: Direction) -> bool {
        self.cares[direction.index()]
    }

    /// A new request over `ex`. Its request headers go in with [`headers`](Self::headers).
    pub fn stream(&self, ex: HttpExchange) -> Stream {
        let request = Flow {
            stages: (0..self.slots.len()).map(|slot| Stage::new(slot, None)).collect(),
            ..Flow::default()
        };
        Stream {
            ex,
            flows: [request, Flow::default()],
            aborted: None,
            finished: false,
            callouts: Vec::new(),
        }
    }

    /// The headers of `direction` (in `s.ex`) enter the chain. For the request this opens a
    /// context in each filter they reach; for the response it runs the filters that saw the
    /// request headers, in reverse order.
    pub fn headers(&self, s: &mut Stream, direction: Direction, end_of_stream: bool) -> Result<(), Abort> {
        if direction == Direction::Response {
            let stages = s.flows[0]
                .stages
                .iter()
                .rev()
                .filter(|stage| stage.ctx.is_some() && !stage.skipped)
                .map(|stage| Stage::new(stage.slot, stage.ctx))
                .collect();
            s.flows[1] = Flow {
                stages,
                ..Flow::default()
            };
        }
        self.enter(s, direction, Event::Headers { end_of_stream })
    }

    /// A data frame of `direction` enters the chain.
    pub fn data(&self, s: &mut Stream, direction: Direction, bytes: Bytes, end_of_stream: bool) -> Result<(), Abort> {
        self.enter(s, direction, Event::Data { bytes, end_of_stream })
    }

    /// The trailers of `direction` enter the chain (they end the stream).
    pub fn trailers(&self, s: &mut Stream, direction: Direction, trailers: HeaderList) -> Result<(), Abort> {
        *trailers_of(&mut s.ex, direction) = trailers;
        self.enter(s, direction, Event::Trailers)
    }

    /// Delivers the ticks that are due (`proxy_on_tick`, at each filter's own period) and says
    /// when the next one is due (`None`: no filter asked for ticks). A tick that fails is
    /// counted and logged and the VM replaced; no request is involved, so no policy applies.
    pub fn tick(&self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        for (index, slot) in self.slots.iter().enumerate() {
            let Some(period) = slot.instance.borrow().tick_period() else {
                slot.next_tick.set(None);
                continue;
            };
            let due = *slot.next_tick.get().get_or_insert(now + period);
            let due = if due <= now {
                let result = slot.instance.borrow_mut().on_tick();
                match result {
                    Ok(()) => self.collect(index, None),
                    Err(error) => {
                        self.metrics.filter_failure(slot.module.name());
                        tracing::error!(filter = slot.module.name(), %error, "proxy_on_tick failed");
                        self.replace_if_broken(slot);
                    }
                }
                now + period
            } else {
                due
            };
            slot.next_tick.set(Some(due));
            next = Some(next.map_or(due, |n| n.min(due)));
        }
        next
    }

    /// Ends every context the request opened (done, log, delete). Runs once.
    pub fn finish(&self, s: &mut Stream) {
        if std::mem::replace(&mut s.finished, true) {
            return;
        }
        // Large buffers are not needed for logging.
        s.ex.request_body = BodyBuffer::default();
        s.ex.response_body = BodyBuffer::default();
        // Callouts still in flight are cancelled, as Envoy cancels them with their context.
        for callout in std::mem::take(&mut s.callouts) {
            let slot = &self.slots[s.flows[callout.direction.index()].stages[callout.k].slot];
            if slot.incarnation.get() == callout.incarnation {
                slot.instance.borrow_mut().cancel_callout(callout.token);
            }
        }
        for flow in &s.flows {
            for stage in &flow.stages {
                if let Some((ctx, _)) = stage.ctx {
                    self.waiting.borrow_mut().remove(&(stage.slot, ctx));
                    self.external.borrow_mut().remove(&(stage.slot, ctx));
                }
            }
        }
        for index in (0..s.flows[0].stages.len()).rev() {
            let stage = &s.flows[0].stages[index];
            let (slot, ctx) = (stage.slot, stage.ctx);
            let Some((ctx, incarnation)) = ctx else { continue };
            let slot = &self.slots[slot];
            if slot.incarnation.get() == incarnation {
                let mut instance = slot.instance.borrow_mut();
                instance.finish_http_context(ctx, &mut s.ex);
                // A context that is gone gets no answers: drop what it asked for at the end.
                for callout in instance.take_callouts() {
                    instance.cancel_callout(callout.token);
                }
                // The request is answered; a failure in on_done/on_log is still the filter's.
                let failed = instance.is_broken();
                drop(instance);
                if failed {
                    self.metrics.filter_failure(slot.module.name());
                }
                self.replace_if_broken(slot);
            }
        }
    }

    fn enter(&self, s: &mut Stream, direction: Direction, event: Event) -> Result<(), Abort> {
        if let Some(abort) = &s.aborted {
            return Err(abort.clone());
        }
        let result = self.push(s, direction, 0, event);
        if let Err(abort) = &result {
            record_abort(s, abort);
        }
        result
    }

    /// Hands `event` to stage `k` of `direction` (past the last stage: out of the chain).
    fn push(&self, s: &mut Stream, direction: Direction, k: usize, event: Event) -> Result<(), Abort> {
        if k == s.flows[direction.index()].stages.len() {
            return self.emit(s, direction, event);
        }
        match event {
            Event::Headers { end_of_stream } => {
                // A user filter sees only requests in its scope; the rest of the stream
                // (body, trailers, response) passes it by.
                if direction == Direction::Request && !self.in_scope(s, k) {
                    s.flows[0].stages[k].skipped = true;
                    return self.push(s, direction, k + 1, Event::Headers { end_of_stream });
                }
                match self.run(s, direction, k, Callback::Headers { end_of_stream })? {
                    Step::Pause if !end_of_stream || self.may_resume(s, direction, k) => {
                        let stage = &mut s.flows[direction.index()].stages[k];
                        stage.held = true;
                        stage.saw_end = end_of_stream;
                        stage.headers_end = end_of_stream;
                        Ok(())
                    }
                    step => {
                        if matches!(step, Step::Pause) {
                            self.released_at_end(direction, k, s);
                        }
                        self.push(s, direction, k + 1, Event::Headers { end_of_stream })
                    }
                }
            }
            Event::Data { bytes, end_of_stream } => self.data_at(s, direction, k, bytes, end_of_stream),
            Event::Trailers => self.trailers_at(s, direction, k),
        }
    }

    /// Whether the filter of request stage `k` applies to this request. Route and cluster are
    /// those the router has chosen by the time the request reaches the stage.
    fn in_scope(&self, s: &Stream, k: usize) -> bool {
        let Some(scope) = &self.slots[s.flows[0].stages[k].slot].scope else {
            return true;
        };
        let property = |name: &str| s.ex.property(name).and_then(|v| std::str::from_utf8(v).ok());
        let gateways = property("tidegate.gateways").unwrap_or_default();
        scope.applies(
            gateways,
            property("tidegate.service"),
            property("tidegate.route"),
            property("tidegate.cluster"),
        )
    }

    fn data_at(
        &self,
        s: &mut Stream,
        direction: Direction,
        k: usize,
        bytes: Bytes,
        end_of_stream: bool,
    ) -> Result<(), Abort> {
        let stage = &mut s.flows[direction.index()].stages[k];
        let has_callback = self.has_body_callback(stage.slot, direction);
        let holding = stage.held || stage.buffering;
        if stage.skipped || (!holding && !has_callback) {
            return self.push(s, direction, k + 1, Event::Data { bytes, end_of_stream });
        }
        stage.buffer.append(bytes);
        if holding {
            self.check_limit(s, direction, k)?;
        }
        let step = if has_callback {
            self.run(s, direction, k, Callback::Body { end_of_stream })?
        } else {
            // An absent callback continues.
            Step::Continue
        };
        let stage = &s.flows[direction.index()].stages[k];
        let hold = match step {
            Step::Pause => !end_of_stream || self.may_resume(s, direction, k),
            // Waiting for its own callouts, a filter keeps holding what it holds.
            Step::Continue => stage.held && stage.waiting > 0,
            Step::Skip => false,
        };
        match step {
            _ if hold => {
                let stage = &mut s.flows[direction.index()].stages[k];
                stage.buffering = true;
                stage.saw_end = end_of_stream;
                stage.trailers_pending = end_of_stream && !trailers_of(&mut s.ex, direction).is_empty();
                self.check_limit(s, direction, k)
            }
            step => {
                if matches!(step, Step::Pause) {
                    self.released_at_end(direction, k, s);
                }
                // Trailers the filter created in its last body callback follow the body.
                let created_trailers = end_of_stream && !trailers_of(&mut s.ex, direction).is_empty();
                self.release(s, direction, k, !created_trailers && end_of_stream)?;
                if created_trailers {
                    self.push(s, direction, k + 1, Event::Trailers)?;
                }
                Ok(())
            }
        }
    }

    fn trailers_at(&self, s: &mut Stream, direction: Direction, k: usize) -> Result<(), Abort> {
        let stage = &s.flows[direction.index()].stages[k];
        let slot = &self.slots[stage.slot];
        let has_callback = match direction {
            Direction::Request => slot.callbacks.request_trailers,
            Direction::Response => slot.callbacks.response_trailers,
        };
        let mut paused = false;
        if !stage.skipped && has_callback {
            paused = matches!(self.run(s, direction, k, Callback::Trailers)?, Step::Pause);
        }
        let stage = &s.flows[direction.index()].stages[k];
        let waiting = stage.holds() && stage.waiting > 0;
        if !stage.skipped && ((paused && self.may_resume(s, direction, k)) || waiting) {
            let stage = &mut s.flows[direction.index()].stages[k];
            stage.buffering |= !stage.held;
            stage.saw_end = true;
            stage.trailers_pending = true;
            return Ok(());
        }
        if paused {
            // The end of the stream, and nothing can resume the filter: it is released.
            self.released_at_end(direction, k, s);
        }
        self.release(s, direction, k, false)?;
        self.push(s, direction, k + 1, Event::Trailers)
    }

    /// Passes on what stage `k` holds: its held headers, then its buffered body (with
    /// `end_of_stream`; an empty body only when it carries the end).
    fn release(&self, s: &mut Stream, direction: Direction, k: usize, end_of_stream: bool) -> Result<(), Abort> {
        let stage = &mut s.flows[direction.index()].stages[k];
        stage.buffering = false;
        let held = std::mem::take(&mut stage.held);
        let bytes = stage.buffer.take();
        if held {
            self.push(s, direction, k + 1, Event::Headers { end_of_stream: false })?;
        }
        if !bytes.is_empty() || end_of_stream {
            self.push(s, direction, k + 1, Event::Data { bytes, end_of_stream })?;
        }
        Ok(())
    }

    /// Whether something can still resume the filter of stage `k` once the stream ended: a
    /// callout it made for this request, or one its VM made elsewhere (its root context may
    /// resume requests).
    fn may_resume(&self, s: &Stream, direction: Direction, k: usize) -> bool {
        let stage = &s.flows[direction.index()].stages[k];
        stage.waiting > 0 || self.background.borrow().iter().any(|b| b.slot == stage.slot)
    }

    /// Takes what the VM of slot `index` asked for during its last callback: callouts to send
    /// (those of `stream`'s context are the request's; the rest are background), and stream
    /// actions on other contexts, routed to their requests.
    fn collect(&self, index: usize, stream: Option<(&mut Stream, Direction, usize)>) {
        let (callouts, others) = {
            let mut instance = self.slots[index].instance.borrow_mut();
            (instance.take_callouts(), instance.take_other_actions())
        };
        self.route(index, others);
        if !callouts.is_empty() {
            self.dispatch(index, stream, callouts);
        }
    }

    fn dispatch(
        &self,
        index: usize,
        mut stream: Option<(&mut Stream, Direction, usize)>,
        callouts: Vec<CalloutRequest>,
    ) {
        let incarnation = self.slots[index].incarnation.get();
        for request in callouts {
            let (ctx, token) = (request.context, request.token);
            let pending = match &self.env.callouts {
                Some(sender) => sender.send(request),
                None => PendingCallout::failed(),
            };
            if let Some((s, direction, k)) = stream.as_mut() {
                let stage = &mut s.flows[direction.index()].stages[*k];
                if stage.ctx.map(|(c, _)| c) == Some(ctx) {
                    stage.waiting += 1;
                    s.callouts.push(StreamCallout {
                        direction: *direction,
                        k: *k,
                        ctx,
                        incarnation,
                        token,
                        pending,
                    });
                    continue;
                }
            }
            self.background.borrow_mut().push(BackgroundCallout {
                slot: index,
                incarnation,
                ctx,
                token,
                pending,
            });
            if let Some(waker) = self.background_waker.borrow_mut().take() {
                waker.wake();
            }
        }
    }

    /// Stream actions a VM took on contexts other than its running callback's: each goes to
    /// the request of that context if it is held and waiting, which is woken to apply it.
    fn route(&self, index: usize, actions: Vec<(u32, StreamActions)>) {
        for (ctx, actions) in actions {
            let key = (index, ctx);
            let Some(waker) = self.waiting.borrow().get(&key).cloned() else {
                tracing::debug!(
                    filter = self.slots[index].module.name(),
                    context = ctx,
                    "stream action on a context that is not waiting; ignored"
                );
                continue;
            };
            let mut external = self.external.borrow_mut();
            let entry = external.entry(key).or_default();
            entry.resume_request |= actions.resume_request;
            entry.resume_response |= actions.resume_response;
            entry.reset_request |= actions.reset_request;
            entry.reset_response |= actions.reset_response;
            entry.resume_downstream |= actions.resume_downstream;
            entry.resume_upstream |= actions.resume_upstream;
            entry.close_downstream |= actions.close_downstream;
            entry.close_upstream |= actions.close_upstream;
            waker.wake();
        }
    }

    /// Delivers what arrived for this request while filters hold it: callout answers, and
    /// resumes (or resets) from other contexts; registers `cx` to be woken for the rest.
    /// Returns whether anything was delivered (the caller looks at the stream again).
    pub fn poll_events(&self, s: &mut Stream, cx: &mut Context<'_>) -> Result<bool, Abort> {
        if let Some(abort) = &s.aborted {
            return Err(abort.clone());
        }
        let result = self.poll_events_inner(s, cx);
        if let Err(abort) = &result {
            record_abort(s, abort);
        }
        result
    }

    fn poll_events_inner(&self, s: &mut Stream, cx: &mut Context<'_>) -> Result<bool, Abort> {
        let mut delivered = false;
        let mut i = 0;
        while i < s.callouts.len() {
            match s.callouts[i].pending.poll(cx) {
                Poll::Ready(response) => {
                    let callout = s.callouts.remove(i);
                    self.deliver(s, callout, response)?;
                    delivered = true;
                }
                Poll::Pending => i += 1,
            }
        }
        for direction in [Direction::Request, Direction::Response] {
            for k in 0..s.flows[direction.index()].stages.len() {
                let stage = &s.flows[direction.index()].stages[k];
                let (true, Some((ctx, _))) = (stage.holds(), stage.ctx) else {
                    continue;
                };
                let key = (stage.slot, ctx);
                let external = self.external.borrow_mut().remove(&key);
                if let Some(actions) = external {
                    self.waiting.borrow_mut().remove(&key);
                    delivered = true;
                    if actions.reset_request || actions.reset_response {
                        let filter = self.slots[key.0].module.name().to_string();
                        return Err(Abort::Reset { filter });
                    }
                    let resumed = match direction {
                        Direction::Request => actions.resume_request,
                        Direction::Response => actions.resume_response,
                    };
                    if resumed {
                        self.resume_stage(s, direction, k)?;
                        continue;
                    }
                }
                let stage = &s.flows[direction.index()].stages[k];
                if stage.holds() && stage.saw_end && !self.may_resume(s, direction, k) {
                    delivered = true;
                    self.stuck(s, direction, k)?;
                    continue;
                }
                self.waiting.borrow_mut().insert(key, cx.waker().clone());
            }
        }
        Ok(delivered)
    }

    /// Whether the stream waits for something only the filters can bring (a callout answer or a
    /// resume), rather than for more of the previous hop's input.
    pub fn waits_for_filters(&self, s: &Stream) -> bool {
        !s.callouts.is_empty()
            || s.flows.iter().any(|flow| {
                flow.stages
                    .iter()
                    .any(|stage| stage.holds() && self.background.borrow().iter().any(|b| b.slot == stage.slot))
            })
    }

    /// The answer to a callout of stage `k` reaches its filter.
    fn deliver(&self, s: &mut Stream, callout: StreamCallout, response: Option<CalloutResponse>) -> Result<(), Abort> {
        let (direction, k) = (callout.direction, callout.k);
        let stage = &mut s.flows[direction.index()].stages[k];
        stage.waiting = stage.waiting.saturating_sub(1);
        let index = stage.slot;
        let slot = &self.slots[index];
        if slot.incarnation.get() != callout.incarnation || stage.skipped {
            // Its VM was replaced (the context is gone), or the filter failed open meanwhile.
            return Ok(());
        }
        let (result, actions) = {
            let mut instance = slot.instance.borrow_mut();
            let result = instance.on_http_call_response(callout.ctx, callout.token, response, Some(&mut s.ex));
            (result, instance.take_stream_actions())
        };
        if let Err(e) = result {
            self.on_failure(s, direction, k, e.to_string(), true)?;
            return self.resume_stage(s, direction, k);
        }
        self.collect(index, Some((s, direction, k)));
        if s.ex.local_reply.is_some() {
            return Err(Abort::LocalReply);
        }
        if actions.reset_request || actions.reset_response {
            return Err(Abort::Reset {
                filter: slot.module.name().to_string(),
            });
        }
        let resumed = match direction {
            Direction::Request => actions.resume_request,
            Direction::Response => actions.resume_response,
        };
        if resumed {
            self.resume_stage(s, direction, k)?;
        }
        Ok(())
    }

    /// The filter of stage `k` resumed: what it holds goes on (headers, buffered body, and the
    /// end or the trailers if they reached it).
    fn resume_stage(&self, s: &mut Stream, direction: Direction, k: usize) -> Result<(), Abort> {
        let stage = &mut s.flows[direction.index()].stages[k];
        if !stage.holds() {
            return Ok(());
        }
        if let Some((ctx, _)) = stage.ctx {
            self.waiting.borrow_mut().remove(&(stage.slot, ctx));
        }
        let (end, trailers) = (stage.saw_end, std::mem::take(&mut stage.trailers_pending));
        if stage.held && stage.headers_end && stage.buffer.is_empty() {
            stage.held = false;
            stage.buffering = false;
            return self.push(s, direction, k + 1, Event::Headers { end_of_stream: true });
        }
        self.release(s, direction, k, end && !trailers)?;
        if trailers {
            self.push(s, direction, k + 1, Event::Trailers)?;
        }
        Ok(())
    }

    /// The filter of stage `k` holds a stream that ended, and nothing it waited for is left:
    /// nothing will ever resume it. A failure of the filter, by its policy.
    fn stuck(&self, s: &mut Stream, direction: Direction, k: usize) -> Result<(), Abort> {
        let error = format!(
            "it paused the {} and left nothing in flight that could resume it",
            direction.name()
        );
        self.on_failure(s, direction, k, error, true)?;
        self.resume_stage(s, direction, k)
    }

    /// Delivers the answers of background callouts (to root contexts) that arrived; registers
    /// `cx` for the rest. Returns whether anything was delivered.
    pub fn poll_background(&self, cx: &mut Context<'_>) -> bool {
        *self.background_waker.borrow_mut() = Some(cx.waker().clone());
        let mut delivered = false;
        loop {
            let ready = {
                let mut background = self.background.borrow_mut();
                let mut found = None;
                for (i, callout) in background.iter().enumerate() {
                    if let Poll::Ready(response) = callout.pending.poll(cx) {
                        found = Some((i, response));
                        break;
                    }
                }
                found.map(|(i, response)| (background.remove(i), response))
            };
            let Some((callout, response)) = ready else { break };
            delivered = true;
            let slot = &self.slots[callout.slot];
            if slot.incarnation.get() != callout.incarnation {
                continue;
            }
            let result = slot
                .instance
                .borrow_mut()
                .on_http_call_response(callout.ctx, callout.token, response, None);
            match result {
                Ok(_) => {
                    // What the answer made the filter do to its own context (an L4 connection
                    // held in `proxy_on_new_connection` resumes or closes) goes to that context.
                    let own = slot.instance.borrow_mut().take_stream_actions();
                    if own != StreamActions::default() {
                        self.route(callout.slot, vec![(callout.ctx, own)]);
                    }
                    self.collect(callout.slot, None)
                }
                Err(error) => {
                    self.metrics.filter_failure(slot.module.name());
                    tracing::error!(filter = slot.module.name(), %error, "proxy_on_http_call_response failed");
                    self.replace_if_broken(slot);
                }
            }
            // Requests held by this filter may now be stuck: let them look.
            for ((index, _), waker) in self.waiting.borrow().iter() {
                if *index == callout.slot {
                    waker.wake_by_ref();
                }
            }
        }
        delivered
    }

    /// `proxy_on_queue_ready` for the VM that consumes the queue, if it is one of this chain's.
    pub fn on_queue_ready(&self, ready: QueueReady) -> bool {
        let Some(index) = self
            .slots
            .iter()
            .position(|slot| slot.instance.borrow().id() == ready.instance)
        else {
            return false;
        };
        let slot = &self.slots[index];
        let result = slot.instance.borrow_mut().on_queue_ready(ready.queue);
        match result {
            Ok(()) => self.collect(index, None),
            Err(error) => {
                self.metrics.filter_failure(slot.module.name());
                tracing::error!(filter = slot.module.name(), %error, "proxy_on_queue_ready failed");
                self.replace_if_broken(slot);
            }
        }
        true
    }

    fn released_at_end(&self, direction: Direction, k: usize, s: &Stream) {
        let slot = s.flows[direction.index()].stages[k].slot;
        tracing::debug!(
            filter = self.slots[slot].module.name(),
            direction = direction.name(),
            "filter paused at the end of the stream; nothing can resume it later, so it continues"
        );
    }

    /// Out of the last stage: queued for the next hop.
    fn emit(&self, s: &mut Stream, direction: Direction, event: Event) -> Result<(), Abort> {
        let Stream { ex, flows, .. } = s;
        let flow = &mut flows[direction.index()];
        match event {
            Event::Headers { end_of_stream } => {
                flow.headers_out = true;
                flow.ended |= end_of_stream;
            }
            Event::Data { bytes, end_of_stream } => {
                flow.out_bytes += bytes.len() as u64;
                self.check_length(flow, direction, end_of_stream)?;
                if !bytes.is_empty() {
                    flow.out.push_back(Frame::data(bytes));
                }
                flow.ended |= end_of_stream;
            }
            Event::Trailers => {
                self.check_length(flow, direction, true)?;
                let trailers = header_map(trailers_of(ex, direction));
                if !trailers.is_empty() {
                    flow.out.push_back(Frame::trailers(trailers));
                }
                flow.ended = true;
            }
        }
        Ok(())
    }

    /// A body a filter changed must still match the `content-length` the next hop was told.
    fn check_length(&self, flow: &Flow, direction: Direction, end: bool) -> Result<(), Abort> {
        let (Some(declared), Some(slot)) = (flow.declared_length, flow.modified_by) else {
            return Ok(());
        };
        if flow.out_bytes > declared || (end && flow.out_bytes != declared) {
            let filter = self.slots[slot].module.name().to_string();
            tracing::warn!(%filter, direction = direction.name(), declared, sent = flow.out_bytes, "a filter changed the length of a body after its content-length was sent; resetting the stream (remove content-length in the headers callback to change a streamed body)");
            return Err(Abort::BodyLength { filter, direction });
        }
        Ok(())
    }

    fn has_body_callback(&self, slot: usize, direction: Direction) -> bool {
        let callbacks = &self.slots[slot].callbacks;
        match direction {
            Direction::Request => callbacks.request_body,
            Direction::Response => callbacks.response_body,
        }
    }

    fn check_limit(&self, s: &mut Stream, direction: Direction, k: usize) -> Result<(), Abort> {
        let flow = &s.flows[direction.index()];
        let buffered: usize = flow.stages.iter().map(|stage| stage.buffer.len()).sum();
        if buffered <= self.buffer_limit {
            return Ok(());
        }
        let filter = self.slots[flow.stages[k].slot].module.name().to_string();
        tracing::warn!(%filter, direction = direction.name(), buffered, limit = self.buffer_limit, "body buffer limit exceeded");
        self.metrics.body_buffer_limit(&filter, direction.name());
        Err(Abort::BufferLimit { filter, direction })
    }

    /// Runs one callback of stage `k`, then applies what the filter asked for (a local reply, a
    /// reset) and its failure policy.
    fn run(&self, s: &mut Stream, direction: Direction, k: usize, callback: Callback) -> Result<Step, Abort> {
        let (slot_index, ctx) = {
            let stage = &s.flows[direction.index()].stages[k];
            (stage.slot, stage.ctx)
        };
        let slot = &self.slots[slot_index];
        let ctx = match ctx {
            Some((ctx, incarnation)) if incarnation == slot.incarnation.get() => ctx,
            Some(_) => {
                // Another request crashed this VM: the filter's state for this request is gone.
                let error = "its VM was replaced after a failure, losing this request's context".to_string();
                return self.on_failure(s, direction, k, error, false);
            }
            None => {
                let created = slot.instance.borrow_mut().create_http_context();
                match created {
                    Ok(ctx) => {
                        let stage = &mut s.flows[direction.index()].stages[k];
                        stage.ctx = Some((ctx, slot.incarnation.get()));
                        ctx
                    }
                    Err(e) => return self.on_failure(s, direction, k, e.to_string(), true),
                }
            }
        };
        let (result, actions) = {
            let mut instance = slot.instance.borrow_mut();
            let ex = &mut s.ex;
            let result = match (direction, callback) {
                (Direction::Request, Callback::Headers { end_of_stream }) => {
                    instance.on_request_headers(ctx, ex, end_of_stream)
                }
                (Direction::Response, Callback::Headers { end_of_stream }) => {
                    instance.on_response_headers(ctx, ex, end_of_stream)
                }
                (_, Callback::Body { .. } | Callback::Trailers) => {
                    let stage = &mut s.flows[direction.index()].stages[k];
                    let body = body_of(ex, direction);
                    *body = std::mem::take(&mut stage.buffer);
                    let result = match (direction, callback) {
                        (Direction::Request, Callback::Body { end_of_stream }) => {
                            instance.on_request_body(ctx, ex, end_of_stream)
                        }
                        (Direction::Response, Callback::Body { end_of_stream }) => {
                            instance.on_response_body(ctx, ex, end_of_stream)
                        }
                        (Direction::Request, _) => instance.on_request_trailers(ctx, ex),
                        (Direction::Response, _) => instance.on_response_trailers(ctx, ex),
                    };
                    stage.buffer = std::mem::take(body_of(ex, direction));
                    if stage.buffer.take_modified() {
                        let flow = &mut s.flows[direction.index()];
                        flow.modified_by.get_or_insert(slot_index);
                    }
                    result
                }
            };
            (result, instance.take_stream_actions())
        };
        let action = match result {
            Ok(action) => action,
            Err(e) => return self.on_failure(s, direction, k, e.to_string(), true),
        };
        self.collect(slot_index, Some((s, direction, k)));
        if s.ex.local_reply.is_some() {
            return Err(Abort::LocalReply);
        }
        if actions.reset_request || actions.reset_response {
            let filter = slot.module.name().to_string();
            tracing::debug!(%filter, direction = direction.name(), "filter reset the stream");
            return Err(Abort::Reset { filter });
        }
        Ok(match action {
            FilterAction::Continue => Step::Continue,
            FilterAction::Pause => Step::Pause,
        })
    }

    /// Applies the failure policy of stage `k`'s filter: abort the stream, or skip the filter
    /// (releasing nothing yet: the caller passes the event on, and `Skip` makes it release what
    /// the stage holds).
    fn on_failure(
        &self,
        s: &mut Stream,
        direction: Direction,
        k: usize,
        error: String,
        count: bool,
    ) -> Result<Step, Abort> {
        let slot = &self.slots[s.flows[direction.index()].stages[k].slot];
        match self.failed(slot, error, count) {
            Some(abort) => Err(abort),
            None => {
                s.flows[direction.index()].stages[k].skipped = true;
                Ok(Step::Skip)
            }
        }
    }

    /// Counts and logs a failure, replaces a broken VM, and applies the slot's failure policy:
    /// `Some(abort)` to fail the request, `None` to go on without the filter.
    fn failed(&self, slot: &FilterSlot, error: String, count: bool) -> Option<Abort> {
        let filter = slot.module.name().to_string();
        if count {
            self.metrics.filter_failure(&filter);
        }
        self.replace_if_broken(slot);
        match slot.failure_policy {
            FailurePolicy::FailClosed => {
                tracing::error!(%filter, %error, "filter failed; failing the request (failurePolicy FailClosed)");
                Some(Abort::Failed { filter, error })
            }
            FailurePolicy::FailOpen => {
                tracing::warn!(%filter, %error, "filter failed; skipping it (failurePolicy FailOpen)");
                None
            }
        }
    }

    /// A VM that trapped is poisoned: build a fresh one from the same module and config.
    fn replace_if_broken(&self, slot: &FilterSlot) {
        if !slot.instance.borrow().is_broken() {
            return;
        }
        match FilterInstance::start_with(&slot.module, &slot.config, &slot.limits, &self.env.instance) {
            Ok(fresh) => {
                *slot.instance.borrow_mut() = fresh;
                slot.incarnation.set(slot.incarnation.get() + 1);
                tracing::warn!(filter = slot.module.name(), "replaced a broken filter VM");
            }
            Err(e) => tracing::error!(filter = slot.module.name(), error = %e, "could not replace a broken filter VM"),
        }
    }
}

// === impl Stream ===

impl Stream {
    /// Whether the headers of `direction` came out of the chain (every filter let them through).
    pub fn headers_out(&self, direction: Direction) -> bool {
        self.flows[direction.index()].headers_out
    }

    /// Whether the end of `direction`'s stream came out of the chain.
    pub fn ended(&self, direction: Direction) -> bool {
        self.flows[direction.index()].ended
    }

    /// The next frame out of the chain for the next hop.
    pub fn pop_frame(&mut self, direction: Direction) -> Option<Frame<Bytes>> {
        self.flows[direction.index()].out.pop_front()
    }

    /// Whether nothing is queued and the end came out: the body is over.
    pub fn is_end_stream(&self, direction: Direction) -> bool {
        let flow = &self.flows[direction.index()];
        flow.ended && flow.out.is_empty()
    }

    /// The length of what is queued, once the end came out of the chain and no trailers
    /// follow (what is left of the body for the next hop; with trailers HTTP/1.1 must chunk, so
    /// the length is not offered).
    pub fn queued_length(&self, direction: Direction) -> Option<u64> {
        let flow = &self.flows[direction.index()];
        if !flow.ended || flow.out.iter().any(|frame| frame.is_trailers()) {
            return None;
        }
        Some(
            flow.out
                .iter()
                .filter_map(|frame| frame.data_ref())
                .map(|data| data.len() as u64)
                .sum(),
        )
    }

    /// The body length, once all of it came out of the chain.
    pub fn complete_length(&self, direction: Direction) -> Option<u64> {
        let flow = &self.flows[direction.index()];
        flow.ended.then_some(flow.out_bytes)
    }

    /// Whether a filter changed the body of `direction`.
    pub fn modified(&self, direction: Direction) -> bool {
        self.flows[direction.index()].modified_by.is_some()
    }

    /// Records the `content-length` sent with `direction`'s headers, so that a filter changing
    /// the body's length afterwards resets the stream instead of sending a wrong length.
    pub fn set_declared_length(&mut self, direction: Direction, length: Option<u64>) {
        self.flows[direction.index()].declared_length = length;
    }

    /// Why the stream stopped, if it did.
    pub fn aborted(&self) -> Option<&Abort> {
        self.aborted.as_ref()
    }
}

/// Marks the stream stopped: every later call answers `abort`, and nothing more is forwarded,
/// so what filters buffered is let go.
fn record_abort(s: &mut Stream, abort: &Abort) {
    s.aborted = Some(abort.clone());
    for flow in &mut s.flows {
        for stage in &mut flow.stages {
            stage.buffer = BodyBuffer::default();
        }
    }
}

fn body_of(ex: &mut HttpExchange, direction: Direction) -> &mut BodyBuffer {
    match direction {
        Direction::Request => &mut ex.request_body,
        Direction::Response => &mut ex.response_body,
    }
}

fn trailers_of(ex: &mut HttpExchange, direction: Direction) -> &mut HeaderList {
    match direction {
        Direction::Request => &mut ex.request_trailers,
        Direction::Response => &mut ex.response_trailers,
    }
}

/// Trailers for hyper (names and values were validated when filters set them; anything hyper
/// would refuse anyway is dropped).
fn header_map(list: &HeaderList) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(list.len());
    for (name, value) in list.iter() {
        if name.starts_with(':') {
            continue;
        }
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_bytes(value)) {
            map.append(name, value);
        }
    }
    map
}

#[cfg(test)]
mod tests {
    //! Chain behaviour that mutation testing found unchecked (runtime/tests/MUTATION.md), driven
    //! through the chain's own API with WAT guests; the request flow over real HTTP is tested in
    //! `proxy::http::tests`.

    use std::sync::LazyLock;
    use std::time::Duration;

    use super::*;
    use crate::wasm::{HostServices, WasmRuntime};

    static RUNTIME: LazyLock<WasmRuntime> = LazyLock::new(|| WasmRuntime::with_max_instances(20).expect("engine"));

    /// The headers of a complete callout (`:method`, `:path`, `:authority`), serialized.
    fn callout_headers() -> Vec<u8> {
        let pairs = [(":method", "GET"), (":path", "/check"), (":authority", "auth")];
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (name, value) in pairs {
            out.extend((name.len() as u32).to_le_bytes());
            out.extend((value.len() as u32).to_le_bytes());
        }
        for (name, value) in pairs {
            out.extend(name.as_bytes());
            out.push(0);
            out.extend(value.as_bytes());
            out.push(0);
        }
        out
    }

    /// A WAT guest with a bump allocator; `$call_auth` makes a callout to `outbound|80||auth.svc`.
    pub(super) fn guest(name: &str, callbacks: &str, failure_policy: FailurePolicy) -> ChainFilter {
        let headers = callout_headers();
        let escaped: String = headers.iter().map(|b| format!("\\{b:02x}")).collect();
        let text = format!(
            r#"(module
  (import "env" "proxy_set_tick_period_milliseconds" (func $set_tick (param i32) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue_stream (param i32) (result i32)))
  (import "env" "proxy_close_stream" (func $close_stream (param i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_effective_context (param i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 0x10000))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $p))
  (func (export "proxy_abi_version_0_2_1"))
  (data (i32.const 0x1000) "outbound|80||auth.svc")
  (data (i32.const 0x1040) "BODY")
  (data (i32.const 0x1100) "{escaped}")
  (func $call_auth (result i32)
    (call $http_call (i32.const 0x1000) (i32.const 21) (i32.const 0x1100) (i32.const {len})
      (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 0x80)))
{callbacks}
)"#,
            len = headers.len()
        );
        let wasm = wat::parse_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        ChainFilter {
            module: RUNTIME.load(name, &wasm).unwrap_or_else(|e| panic!("load {name}: {e}")),
            config: Arc::from(&b""[..]),
            limits: SandboxLimits::default(),
            failure_policy,
            scope: None,
        }
    }

    /// Host services that know the `auth` upstream.
    struct AuthUpstream;

    impl HostServices for AuthUpstream {
        fn upstream(&self, upstream: &str) -> Option<Arc<str>> {
            (upstream == "outbound|80||auth.svc").then(|| "auth/auth:80".into())
        }

        fn foreign_function(&self, _name: &str, _args: &[u8]) -> Option<Result<Vec<u8>, ()>> {
            None
        }
    }

    /// A u32 the guest of slot `index` stored at `at`.
    fn guest_u32(chain: &Chain, index: usize, at: usize) -> u32 {
        let instance = chain.slots[index].instance.borrow();
        let mem = instance.guest_memory();
        u32::from_le_bytes(mem[at..at + 4].try_into().expect("4 bytes"))
    }

    #[test]
    fn a_filter_that_cannot_start_is_left_out_when_fail_open_and_fails_the_chain_when_fail_closed() {
        let refuses = r#"(func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 0))"#;
        let metrics = Arc::new(Metrics::new());
        let chain = Chain::start(
            &[guest("refuses-open", refuses, FailurePolicy::FailOpen)],
            metrics.clone(),
        )
        .expect("a fail-open filter that cannot start is skipped");
        assert_eq!(chain.slots.len(), 0);
        let mut s = chain.stream(HttpExchange::default());
        chain
            .headers(&mut s, Direction::Request, true)
            .expect("nothing in the way");
        assert!(s.headers_out(Direction::Request));
        assert!(
            Chain::start(&[guest("refuses-closed", refuses, FailurePolicy::FailClosed)], metrics).is_err(),
            "a fail-closed filter that cannot start fails the chain"
        );
    }

    #[test]
    fn ticks_are_delivered_when_due_and_the_next_deadline_is_reported() {
        let ticking = r#"
  (global $ticks (mut i32) (i32.const 0))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $set_tick (i32.const 100)))
    (i32.const 1))
  (func (export "proxy_on_tick") (param i32)
    (global.set $ticks (i32.add (global.get $ticks) (i32.const 1)))
    (i32.store (i32.const 0x200) (global.get $ticks)))
"#;
        let metrics = Arc::new(Metrics::new());
        let chain = Chain::start(
            &[
                guest("ticking", ticking, FailurePolicy::FailClosed),
                guest("quiet", "", FailurePolicy::FailClosed),
            ],
            metrics.clone(),
        )
        .expect("chain starts");
        let period = Duration::from_millis(100);
        let t0 = Instant::now();
        assert_eq!(chain.tick(t0), Some(t0 + period), "the first tick is a period away");
        assert_eq!(chain.tick(t0 + period / 2), Some(t0 + period), "not due yet");
        assert_eq!(guest_u32(&chain, 0, 0x200), 0);
        assert_eq!(chain.tick(t0 + period), Some(t0 + 2 * period), "due: delivered");
        assert_eq!(guest_u32(&chain, 0, 0x200), 1);

        let quiet = Chain::start(&[guest("quiet-alone", "", FailurePolicy::FailClosed)], metrics).expect("starts");
        assert_eq!(quiet.tick(t0), None, "no filter asked for ticks");
    }

    #[test]
    fn trailers_pass_a_filter_that_continued_with_its_callout_in_flight() {
        let checks = r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (i32.store (i32.const 0x200) (call $call_auth))
    (i32.const 0))
"#;
        let env = ChainEnv {
            instance: InstanceEnv {
                services: Some(Arc::new(AuthUpstream)),
                queue_waker: None,
            },
            callouts: None,
        };
        let chain = Chain::start_with(
            &[guest("checks", checks, FailurePolicy::FailClosed)],
            Arc::new(Metrics::new()),
            env,
        )
        .expect("chain starts");
        let mut s = chain.stream(HttpExchange::default());
        chain.headers(&mut s, Direction::Request, false).expect("headers");
        assert_eq!(guest_u32(&chain, 0, 0x200), 0, "the callout was made");
        assert_eq!(s.callouts.len(), 1);
        assert!(s.headers_out(Direction::Request), "the filter continued");
        chain
            .data(&mut s, Direction::Request, Bytes::from_static(b"body"), false)
            .expect("data");
        chain
            .trailers(&mut s, Direction::Request, HeaderList::from_pairs([("x-end", "1")]))
            .expect("trailers");
        assert!(
            s.ended(Direction::Request),
            "the filter holds nothing, so its callout holds nothing back"
        );
        chain.finish(&mut s);
        assert_eq!(chain.open_contexts(), 0);
    }

    #[test]
    fn a_filter_out_of_scope_is_passed_by() {
        let marks = r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (i32.store (i32.const 0x200) (i32.const 1))
    (i32.const 0))
"#;
        let mut scoped = guest("scoped", marks, FailurePolicy::FailClosed);
        scoped.scope = Some(Arc::new(FilterScope {
            gateways: vec!["other/gw".into()],
            routes: Vec::new(),
            services: Vec::new(),
            namespaces: Vec::new(),
        }));
        let chain = Chain::start(&[scoped], Arc::new(Metrics::new())).expect("chain starts");
        let mut ex = HttpExchange::default();
        ex.properties.set("tidegate.gateways", "ns/gw");
        let mut s = chain.stream(ex);
        chain.headers(&mut s, Direction::Request, true).expect("headers");
        assert!(s.headers_out(Direction::Request));
        assert_eq!(guest_u32(&chain, 0, 0x200), 0, "the filter did not run");
        chain.finish(&mut s);

        let mut ex = HttpExchange::default();
        ex.properties.set("tidegate.gateways", "ns/gw,other/gw");
        let mut s = chain.stream(ex);
        chain.headers(&mut s, Direction::Request, true).expect("headers");
        assert_eq!(guest_u32(&chain, 0, 0x200), 1, "in scope: it ran");
        chain.finish(&mut s);
    }

    #[test]
    fn the_end_of_a_body_reaches_the_next_filter_as_the_end_not_as_trailers() {
        let records = r#"
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
    (i32.store (i32.const 0x200) (i32.add (i32.const 1) (local.get 2)))
    (i32.const 0))
  (func (export "proxy_on_request_trailers") (param i32 i32) (result i32)
    (i32.store (i32.const 0x204) (i32.const 1))
    (i32.const 0))
"#;
        let chain = Chain::start(
            &[
                guest("first", records, FailurePolicy::FailClosed),
                guest("second", records, FailurePolicy::FailClosed),
            ],
            Arc::new(Metrics::new()),
        )
        .expect("chain starts");
        let mut s = chain.stream(HttpExchange::default());
        chain.headers(&mut s, Direction::Request, false).expect("headers");
        chain
            .data(&mut s, Direction::Request, Bytes::from_static(b"body"), true)
            .expect("data");
        for index in 0..2 {
            assert_eq!(guest_u32(&chain, index, 0x200), 2, "filter {index} saw end_of_stream");
            assert_eq!(guest_u32(&chain, index, 0x204), 0, "filter {index} got no trailers");
        }
        assert!(s.ended(Direction::Request));
        chain.finish(&mut s);
    }

    #[test]
    fn trailers_wait_at_a_filter_whose_callout_is_in_flight() {
        // Holds the headers for its callout; its trailers callback continues, yet the trailers
        // wait behind the held headers.
        let holds = r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $call_auth))
    (i32.const 1))
  (func (export "proxy_on_request_trailers") (param i32 i32) (result i32)
    (i32.const 0))
"#;
        // Continues its headers after the callout, then pauses on the trailers.
        let pauses = r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $call_auth))
    (i32.const 0))
  (func (export "proxy_on_request_trailers") (param i32 i32) (result i32)
    (i32.const 1))
"#;
        for (name, callbacks, headers_out) in [("holds", holds, false), ("pauses", pauses, true)] {
            let env = ChainEnv {
                instance: InstanceEnv {
                    services: Some(Arc::new(AuthUpstream)),
                    queue_waker: None,
                },
                callouts: None,
            };
            let chain = Chain::start_with(
                &[guest(name, callbacks, FailurePolicy::FailClosed)],
                Arc::new(Metrics::new()),
                env,
            )
            .expect("chain starts");
            let mut s = chain.stream(HttpExchange::default());
            chain.headers(&mut s, Direction::Request, false).expect("headers");
            assert_eq!(s.headers_out(Direction::Request), headers_out, "{name}");
            chain
                .trailers(&mut s, Direction::Request, HeaderList::from_pairs([("x-end", "1")]))
                .expect("trailers");
            assert!(!s.ended(Direction::Request), "{name}: the trailers wait");
            let stage = &s.flows[0].stages[0];
            assert!(stage.holds() && stage.trailers_pending, "{name}: the stage holds them");
            // An answer that has not arrived yet: the poll registers for it and returns.
            s.callouts[0].pending = Rc::new(PendingCallout::default());
            let mut cx = Context::from_waker(Waker::noop());
            assert_eq!(chain.poll_events(&mut s, &mut cx), Ok(false), "{name}");
            assert!(!s.ended(Direction::Request) && chain.waits_for_filters(&s), "{name}");
            chain.finish(&mut s);
        }
    }

    pub(super) fn auth_env() -> ChainEnv {
        ChainEnv {
            instance: InstanceEnv {
                services: Some(Arc::new(AuthUpstream)),
                queue_waker: None,
            },
            callouts: None,
        }
    }

    #[test]
    fn a_callout_answer_resumes_what_the_filter_held() {
        // Without a sender every callout fails at once: the answer (no headers) is delivered by
        // the next poll, and the filter resumes the request from its callback.
        let checks = r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $call_auth))
    (i32.const 1))
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
    (i32.store (i32.const 0x200) (i32.add (i32.const 1) (local.get 2)))
    (drop (call $continue_stream (i32.const 0))))
  (func (export "proxy_on_request_trailers") (param i32 i32) (result i32)
    (i32.store (i32.const 0x204) (i32.add (i32.const 1) (i32.load (i32.const 0x204))))
    (i32.const 0))
"#;
        let chain = Chain::start_with(
            &[guest("checks-then-resumes", checks, FailurePolicy::FailClosed)],
            Arc::new(Metrics::new()),
            auth_env(),
        )
        .expect("chain starts");
        let mut cx = Context::from_waker(Waker::noop());

        // Headers and body held while the callout is in flight.
        let mut s = chain.stream(HttpExchange::default());
        chain.headers(&mut s, Direction::Request, false).expect("headers");
        assert!(!s.headers_out(Direction::Request));
        assert!(chain.waits_for_filters(&s), "a callout is in flight");
        chain
            .data(&mut s, Direction::Request, Bytes::from_static(b"body"), true)
            .expect("data");
        assert!(!s.ended(Direction::Request));
        assert_eq!(chain.poll_events(&mut s, &mut cx), Ok(true), "the answer was delivered");
        assert_eq!(guest_u32(&chain, 0, 0x200), 1, "a failed callout has no headers");
        assert!(s.headers_out(Direction::Request) && s.ended(Direction::Request));
        assert_eq!(s.complete_length(Direction::Request), Some(4));
        let frame = s.pop_frame(Direction::Request).expect("the body");
        assert_eq!(frame.into_data().ok().as_deref(), Some(&b"body"[..]));
        assert!(!chain.waits_for_filters(&s));
        chain.finish(&mut s);

        // Headers that end the request, held and resumed: they go on with the end.
        let mut s = chain.stream(HttpExchange::default());
        chain.headers(&mut s, Direction::Request, true).expect("headers");
        assert!(!s.headers_out(Direction::Request));
        assert_eq!(chain.poll_events(&mut s, &mut cx), Ok(true));
        assert!(s.headers_out(Direction::Request) && s.ended(Direction::Request));
        assert!(s.pop_frame(Direction::Request).is_none());
        chain.finish(&mut s);

        // Resumed before any body arrived: the headers go on, the stream does not end.
        let mut s = chain.stream(HttpExchange::default());
        chain.headers(&mut s, Direction::Request, false).expect("headers");
        assert_eq!(chain.poll_events(&mut s, &mut cx), Ok(true));
        assert!(s.headers_out(Direction::Request));
        assert!(!s.ended(Direction::Request), "the body is still to come");
        chain
            .data(&mut s, Direction::Request, Bytes::from_static(b"later"), true)
            .expect("data");
        assert!(s.ended(Direction::Request));
        chain.finish(&mut s);

        // Trailers that reached it while it held the request follow the body, once.
        let mut s = chain.stream(HttpExchange::default());
        chain.headers(&mut s, Direction::Request, false).expect("headers");
        chain
            .data(&mut s, Direction::Request, Bytes::from_static(b"body"), false)
            .expect("data");
        chain
            .trailers(&mut s, Direction::Request, HeaderList::from_pairs([("x-end", "1")]))
            .expect("trailers");
        assert_eq!(guest_u32(&chain, 0, 0x204), 1, "the trailers callback ran");
        assert_eq!(chain.poll_events(&mut s, &mut cx), Ok(true));
        assert!(s.ended(Direction::Request));
        assert_eq!(guest_u32(&chain, 0, 0x204), 1, "and only once");
        let frames: Vec<_> = std::iter::from_fn(|| s.pop_frame(Direction::Request)).collect();
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert!(frames[0].is_data() && frames[1].is_trailers(), "{frames:?}");
        chain.finish(&mut s);
        assert_eq!(chain.open_contexts(), 0);
    }

    #[test]
    fn a_held_request_without_callouts_waits_for_input_not_for_filters() {
        let pauses = r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (i32.const 1))
"#;
        let chain = Chain::start(
            &[guest("pauses", pauses, FailurePolicy::FailClosed)],
            Arc::new(Metrics::new()),
        )
        .expect("chain starts");
        let mut s = chain.stream(HttpExchange::default());
        chain.headers(&mut s, Direction::Request, false).expect("headers");
        assert!(!s.headers_out(Direction::Request));
        assert!(!chain.waits_for_filters(&s), "the body will release it");
        chain.finish(&mut s);
    }

    #[test]
    fn another_context_may_resume_or_reset_a_held_request() {
        // The request context keeps its id at 0x300 and pauses; the tick resumes it (or resets
        // its response) through proxy_set_effective_context.
        let template = r#"
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $set_tick (i32.const 10)))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (i32.store (i32.const 0x300) (local.get 0))
    (i32.const 1))
  (func (export "proxy_on_tick") (param i32)
    (drop (call $set_effective_context (i32.load (i32.const 0x300))))
    (drop (ACTION)))
"#;
        for (name, action) in [
            ("resumer", "call $continue_stream (i32.const 0)"),
            ("resetter", "call $close_stream (i32.const 1)"),
        ] {
            let chain = Chain::start(
                &[guest(
                    name,
                    &template.replace("ACTION", action),
                    FailurePolicy::FailClosed,
                )],
                Arc::new(Metrics::new()),
            )
            .expect("chain starts");
            let mut cx = Context::from_waker(Waker::noop());
            let mut s = chain.stream(HttpExchange::default());
            chain.headers(&mut s, Direction::Request, false).expect("headers");
            assert_eq!(chain.poll_events(&mut s, &mut cx), Ok(false), "{name}: nothing yet");
            let now = Instant::now();
            let due = chain.tick(now).expect("a tick is due later");
            chain.tick(due);
            let polled = chain.poll_events(&mut s, &mut cx);
            if name == "resumer" {
                assert_eq!(polled, Ok(true), "{name}");
                assert!(s.headers_out(Direction::Request), "{name}: resumed");
            } else {
                assert_eq!(
                    polled,
                    Err(Abort::Reset {
                        filter: name.to_string()
                    }),
                    "{name}"
                );
            }
            chain.finish(&mut s);
        }
    }

    #[test]
    fn callouts_made_by_the_root_context_are_delivered_in_the_background() {
        let configure = r#"
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (drop (call $call_auth))
    (i32.const 1))
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
    (i32.store (i32.const 0x200) (i32.const 1)))
"#;
        let chain = Chain::start_with(
            &[guest("root-caller", configure, FailurePolicy::FailClosed)],
            Arc::new(Metrics::new()),
            auth_env(),
        )
        .expect("chain starts");
        let mut cx = Context::from_waker(Waker::noop());
        assert!(chain.poll_background(&mut cx), "the answer was delivered");
        assert_eq!(guest_u32(&chain, 0, 0x200), 1);
        assert!(!chain.poll_background(&mut cx), "nothing else in flight");
        assert!(
            !chain.on_queue_ready(QueueReady {
                instance: u64::MAX,
                queue: 1
            }),
            "a queue consumed by no VM of this chain"
        );
    }

    #[test]
    fn a_replaced_vm_does_not_finish_contexts_of_the_old_one() {
        // Traps on headers that end the request; fine otherwise.
        let crashy = r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (if (local.get 2) (then (unreachable)))
    (i32.const 0))
"#;
        let chain = Chain::start(
            &[guest("crashy", crashy, FailurePolicy::FailOpen)],
            Arc::new(Metrics::new()),
        )
        .expect("chain starts");
        let mut first = chain.stream(HttpExchange::default());
        chain.headers(&mut first, Direction::Request, true).expect("fail open");
        assert_eq!(chain.slots[0].incarnation.get(), 1, "the broken VM was replaced");
        let mut second = chain.stream(HttpExchange::default());
        chain.headers(&mut second, Direction::Request, false).expect("headers");
        assert_eq!(chain.open_contexts(), 1);
        // The first request's context belonged to the old VM: finishing it leaves the new
        // VM's contexts (which may reuse its id) alone.
        chain.finish(&mut first);
        assert_eq!(chain.open_contexts(), 1, "the second request's context is still open");
        chain.finish(&mut second);
        assert_eq!(chain.open_contexts(), 0);
    }

    #[test]
    fn a_changed_body_must_keep_the_declared_length() {
        // Replaces every non-empty body frame with "BODY".
        let uppercases = r#"
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
    (if (local.get 1)
      (then (drop (call $set_buffer (i32.const 0) (i32.const 0) (local.get 1) (i32.const 0x1040) (i32.const 4)))))
    (i32.const 0))
"#;
        let chain = Chain::start(
            &[guest("uppercases", uppercases, FailurePolicy::FailClosed)],
            Arc::new(Metrics::new()),
        )
        .expect("chain starts");

        // Same length, told in advance: fine, up to and including the end.
        let mut s = chain.stream(HttpExchange::default());
        chain.headers(&mut s, Direction::Request, false).expect("headers");
        s.set_declared_length(Direction::Request, Some(4));
        chain
            .data(&mut s, Direction::Request, Bytes::from_static(b"body"), false)
            .expect("as long as declared");
        assert!(s.modified(Direction::Request));
        chain
            .data(&mut s, Direction::Request, Bytes::new(), true)
            .expect("the end at the declared length");
        chain.finish(&mut s);

        // Shorter than declared at the end: reset rather than send a wrong length.
        let mut s = chain.stream(HttpExchange::default());
        chain.headers(&mut s, Direction::Request, false).expect("headers");
        s.set_declared_length(Direction::Request, Some(6));
        let abort = chain
            .data(&mut s, Direction::Request, Bytes::from_static(b"body"), true)
            .expect_err("4 bytes where 6 were declared");
        assert_eq!(
            abort,
            Abort::BodyLength {
                filter: "uppercases".into(),
                direction: Direction::Request
            }
        );
        chain.finish(&mut s);
    }
}
