//! Network filters (WasmFilter `type: NETWORK`) on TCP connections: proxy-wasm stream contexts.
//!
//! A connection opens a context in each filter whose scope takes it, in chain order, and runs
//! `proxy_on_new_connection`. Data from the client goes through `proxy_on_downstream_data` in
//! chain order, data from the upstream through `proxy_on_upstream_data` in reverse order; each
//! filter reads and may rewrite the bytes (`DOWNSTREAM_DATA` / `UPSTREAM_DATA`). A filter that
//! pauses keeps what it got, and gets it again with the next bytes (as Envoy's
//! `StopIterationAndBuffer`), so it can wait for a whole message; at the end of a direction
//! everything still held goes on. `proxy_close_stream` from any callback closes the connection
//! (both sides reset). Each side's close is reported (`proxy_on_downstream_connection_close`,
//! `proxy_on_upstream_connection_close`), then the contexts end (`proxy_on_done`, `proxy_on_log`,
//! `proxy_on_delete`).
//!
//! A pause in `proxy_on_new_connection` holds the connection (nothing is connected or read, the
//! later filters are not asked yet) until the filter continues it with `proxy_continue_stream`
//! — typically from the answer of an HTTP callout — or closes it
//! ([`Chain::poll_resumed`]).
//!
//! A failure applies the filter's policy: FailClosed resets the connection, FailOpen leaves the
//! filter out of it from then on.

use bytes::Bytes;

use super::{Abort, Chain, FilterSlot};
use crate::translate::wasmfilters::FilterScope;
use crate::wasm::{BodyBuffer, FilterAction, HttpExchange, PeerType};

/// A connection's contexts in the network filters that take it.
pub struct Connection {
    /// What the filters read (properties) and the data they are handed.
    pub ex: HttpExchange,
    contexts: Vec<L4Context>,
    /// Filters in scope whose context is not open yet (a filter before them paused).
    unopened: Vec<usize>,
    /// The context (index into `contexts`) that paused in `proxy_on_new_connection`.
    paused: Option<usize>,
    finished: bool,
}

struct L4Context {
    slot: usize,
    ctx: u32,
    incarnation: u64,
    /// Left out after a fail-open failure.
    skipped: bool,
    /// Per direction (downstream, upstream): what the filter paused on, handed to it again with
    /// the next bytes.
    held: [BodyBuffer; 2],
}

/// Which side's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// From the client.
    Downstream,
    /// From the upstream.
    Upstream,
}

impl Side {
    /// Where this side's bytes are handed to filters (`DOWNSTREAM_DATA` is the exchange's
    /// request body, `UPSTREAM_DATA` its response body).
    fn data(self, ex: &mut HttpExchange) -> &mut BodyBuffer {
        match self {
            Side::Downstream => &mut ex.request_body,
            Side::Upstream => &mut ex.response_body,
        }
    }

    fn index(self) -> usize {
        match self {
            Side::Downstream => 0,
            Side::Upstream => 1,
        }
    }
}

impl Connection {
    /// Whether any filter took the connection (none: nothing to run, the bytes may be spliced).
    pub fn is_empty(&self) -> bool {
        self.contexts.is_empty()
    }

    /// Whether a filter holds the connection in `proxy_on_new_connection`.
    pub fn is_paused(&self) -> bool {
        self.paused.is_some()
    }
}

impl Chain {
    /// Opens contexts for a new connection in the filters `takes` says are in scope, and runs
    /// `proxy_on_new_connection` in each. An error (a filter closed the connection, or failed
    /// closed) comes with the connection, whose contexts must still be finished.
    pub fn connect(&self, ex: HttpExchange, takes: impl Fn(&FilterScope) -> bool) -> (Connection, Result<(), Abort>) {
        let unopened = (0..self.slots.len())
            .filter(|&index| self.slots[index].scope.as_deref().is_none_or(&takes))
            .collect();
        let mut connection = Connection {
            ex,
            contexts: Vec::new(),
            unopened,
            paused: None,
            finished: false,
        };
        let opened = self.open(&mut connection);
        (connection, opened)
    }

    /// Opens the contexts not opened yet, in order, until one pauses.
    fn open(&self, connection: &mut Connection) -> Result<(), Abort> {
        while !connection.unopened.is_empty() {
            let index = connection.unopened.remove(0);
            let slot = &self.slots[index];
            let created = slot.instance.borrow_mut().create_stream_context();
            let ctx = match created {
                Ok(ctx) => ctx,
                Err(e) => {
                    self.l4_failure(slot, e.to_string(), true)?;
                    continue;
                }
            };
            connection.contexts.push(L4Context {
                slot: index,
                ctx,
                incarnation: slot.incarnation.get(),
                skipped: false,
                held: Default::default(),
            });
            let k = connection.contexts.len() - 1;
            let result = slot.instance.borrow_mut().on_new_connection(ctx, &mut connection.ex);
            let paused = matches!(result, Ok(FilterAction::Pause));
            self.after_l4_callback(connection, k, result.map(|_| ()))?;
            if paused && !connection.contexts[k].skipped {
                connection.paused = Some(k);
                return Ok(());
            }
        }
        Ok(())
    }

    /// Waits for the filter holding the connection to continue it (then the later filters see
    /// it) or close it. Ready at once when nothing holds it.
    pub fn poll_resumed(
        &self,
        c: &mut Connection,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Abort>> {
        use std::task::Poll;
        while let Some(k) = c.paused {
            let context = &c.contexts[k];
            let key = (context.slot, context.ctx);
            if self.slots[context.slot].incarnation.get() != context.incarnation {
                // The VM holding it failed and was replaced: its failure policy decides.
                c.paused = None;
                self.waiting.borrow_mut().remove(&key);
                if let Err(abort) = self.live_context(c, k) {
                    return Poll::Ready(Err(abort));
                }
                continue;
            }
            let actions = self.external.borrow_mut().remove(&key);
            match actions {
                Some(actions) if actions.close_downstream || actions.close_upstream => {
                    self.waiting.borrow_mut().remove(&key);
                    let filter = self.slots[context.slot].module.name().to_string();
                    return Poll::Ready(Err(Abort::Reset { filter }));
                }
                Some(actions) if actions.resume_downstream || actions.resume_upstream => {
                    self.waiting.borrow_mut().remove(&key);
                    c.paused = None;
                    if let Err(abort) = self.open(c) {
                        return Poll::Ready(Err(abort));
                    }
                }
                _ => {
                    self.waiting.borrow_mut().insert(key, cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Runs bytes from one side through the filters (chain order from the client, reverse
    /// order from the upstream) and returns what goes on to the other side. `end_of_stream`:
    /// that side sent its last bytes (everything held is released).
    pub fn connection_data(
        &self,
        c: &mut Connection,
        side: Side,
        bytes: Bytes,
        end_of_stream: bool,
    ) -> Result<Bytes, Abort> {
        let order: Vec<usize> = match side {
            Side::Downstream => (0..c.contexts.len()).collect(),
            Side::Upstream => (0..c.contexts.len()).rev().collect(),
        };
        let mut data = bytes;
        for k in order {
            let ctx = match c.contexts[k].skipped {
                true => None,
                false => self.live_context(c, k)?,
            };
            let Some(ctx) = ctx else {
                // Left out (after a fail-open failure): what it held goes on first, in order.
                let held = std::mem::take(&mut c.contexts[k].held[side.index()]);
                if !held.is_empty() {
                    let mut joined = held;
                    joined.append(data);
                    data = joined.take();
                }
                continue;
            };
            let slot = &self.slots[c.contexts[k].slot];
            let mut buffer = std::mem::take(&mut c.contexts[k].held[side.index()]);
            buffer.append(data);
            *side.data(&mut c.ex) = buffer;
            let result = {
                let mut instance = slot.instance.borrow_mut();
                match side {
                    Side::Downstream => instance.on_downstream_data(ctx, &mut c.ex, end_of_stream),
                    Side::Upstream => instance.on_upstream_data(ctx, &mut c.ex, end_of_stream),
                }
            };
            let mut out = std::mem::take(side.data(&mut c.ex));
            let action = match result {
                Ok(action) => action,
                Err(e) => {
                    // Fail-open: the filter is left out and the bytes go on.
                    c.contexts[k].skipped = true;
                    self.l4_failure(slot, e.to_string(), true)?;
                    data = out.take();
                    continue;
                }
            };
            self.after_l4_callback(c, k, Ok::<(), String>(()))?;
            if action == FilterAction::Pause && !end_of_stream {
                // Held until the next bytes come (or the end), up to the chain's buffer limit.
                if out.len() > self.buffer_limit {
                    let filter = slot.module.name().to_string();
                    tracing::warn!(%filter, held = out.len(), limit = self.buffer_limit, "a network filter held more than the buffer limit; connection reset");
                    let direction = match side {
                        Side::Downstream => super::Direction::Request,
                        Side::Upstream => super::Direction::Response,
                    };
                    self.metrics.body_buffer_limit(&filter, direction.name());
                    return Err(Abort::BufferLimit { filter, direction });
                }
                c.contexts[k].held[side.index()] = out;
                return Ok(Bytes::new());
            }
            data = out.take();
        }
        Ok(data)
    }

    /// Tells every filter that one side of the connection closed (`peer`: who closed it).
    pub fn connection_closed(&self, c: &mut Connection, side: Side, peer: PeerType) {
        for k in 0..c.contexts.len() {
            if c.contexts[k].skipped {
                continue;
            }
            let Ok(Some(ctx)) = self.live_context(c, k) else {
                continue;
            };
            let slot = &self.slots[c.contexts[k].slot];
            let result = {
                let mut instance = slot.instance.borrow_mut();
                match side {
                    Side::Downstream => instance.on_downstream_close(ctx, peer),
                    Side::Upstream => instance.on_upstream_close(ctx, peer),
                }
            };
            // The connection is ending anyway: a failure is only counted and logged.
            let _ = self.after_l4_callback(c, k, result);
        }
    }

    /// Ends every context of the connection (done, log, delete). Runs once.
    pub fn finish_connection(&self, c: &mut Connection) {
        if std::mem::replace(&mut c.finished, true) {
            return;
        }
        c.ex.request_body = BodyBuffer::default();
        c.ex.response_body = BodyBuffer::default();
        for k in 0..c.contexts.len() {
            let context = &c.contexts[k];
            let slot = &self.slots[context.slot];
            self.waiting.borrow_mut().remove(&(context.slot, context.ctx));
            self.external.borrow_mut().remove(&(context.slot, context.ctx));
            if slot.incarnation.get() == context.incarnation {
                slot.instance.borrow_mut().finish_http_context(context.ctx, &mut c.ex);
                self.collect(context.slot, None);
            }
        }
    }

    /// The context of filter `k`, or `None` when its VM was replaced after a failure (then its
    /// failure policy applies once).
    fn live_context(&self, c: &mut Connection, k: usize) -> Result<Option<u32>, Abort> {
        let context = &c.contexts[k];
        let slot = &self.slots[context.slot];
        if slot.incarnation.get() == context.incarnation {
            return Ok(Some(context.ctx));
        }
        c.contexts[k].skipped = true;
        let error = "its VM was replaced after a failure, losing this connection's context".to_string();
        self.l4_failure(slot, error, false).map(|()| None)
    }

    /// After a callback of filter `k`: callouts sent, a close asked for applied, a failure's
    /// policy applied.
    fn after_l4_callback<E: ToString>(&self, c: &mut Connection, k: usize, result: Result<(), E>) -> Result<(), Abort> {
        let slot = &self.slots[c.contexts[k].slot];
        if let Err(e) = result {
            c.contexts[k].skipped = true;
            return self.l4_failure(slot, e.to_string(), true);
        }
        let actions = slot.instance.borrow_mut().take_stream_actions();
        self.collect(c.contexts[k].slot, None);
        if actions.close_downstream || actions.close_upstream {
            let filter = slot.module.name().to_string();
            tracing::debug!(%filter, "filter closed the connection");
            return Err(Abort::Reset { filter });
        }
        Ok(())
    }

    /// Applies a filter's failure policy to the connection: FailClosed ends it, FailOpen goes on
    /// without the filter.
    fn l4_failure(&self, slot: &FilterSlot, error: String, count: bool) -> Result<(), Abort> {
        match self.failed(slot, error, count) {
            Some(abort) => Err(abort),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::{Arc, LazyLock};

    use super::*;
    use crate::metrics::Metrics;
    use crate::proxy::chain::{ChainFilter, FailurePolicy};
    use crate::wasm::{ConnectionProperties, SandboxLimits, WasmRuntime};

    static RUNTIME: LazyLock<WasmRuntime> = LazyLock::new(|| WasmRuntime::with_max_instances(8).expect("engine"));

    /// The `tcp-guard` example (a plain proxy-wasm network filter) with `config`.
    fn tcp_guard(config: &str) -> Chain {
        let path = Path::new(env!("TIDEGATE_EXAMPLE_FILTERS")).join("tcp_guard.wasm");
        let wasm = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let filter = ChainFilter {
            module: RUNTIME.load("tcp-guard", &wasm).expect("loads"),
            config: Arc::from(config.as_bytes()),
            limits: SandboxLimits::default(),
            failure_policy: FailurePolicy::FailClosed,
            scope: Some(Arc::new(FilterScope {
                services: vec!["mesh/raw".into()],
                ..Default::default()
            })),
        };
        Chain::start(&[filter], Arc::new(Metrics::new())).expect("starts")
    }

    fn from(client: &str) -> HttpExchange {
        HttpExchange {
            connection: Some(Arc::new(ConnectionProperties {
                entries: vec![("source.address", client.as_bytes().to_vec())],
            })),
            ..Default::default()
        }
    }

    #[test]
    fn data_goes_through_the_filter_each_way_and_contexts_end() {
        let chain = tcp_guard(r#"{"upper": true}"#);
        let (mut c, opened) = chain.connect(from("10.0.0.1:40000"), |s| s.applies_to_connection("mesh/raw"));
        assert!(opened.is_ok());
        assert!(!c.is_empty());
        let up = chain.connection_data(&mut c, Side::Downstream, Bytes::from_static(b"hello"), false);
        assert_eq!(up.unwrap(), Bytes::from_static(b"HELLO"), "rewritten on the way up");
        let down = chain.connection_data(&mut c, Side::Upstream, Bytes::from_static(b"hi there"), false);
        assert_eq!(
            down.unwrap(),
            Bytes::from_static(b"hi there"),
            "untouched on the way down"
        );
        let end = chain.connection_data(&mut c, Side::Downstream, Bytes::new(), true);
        assert_eq!(end.unwrap(), Bytes::new());
        chain.connection_closed(&mut c, Side::Downstream, PeerType::Remote);
        assert_eq!(chain.open_contexts(), 1);
        chain.finish_connection(&mut c);
        chain.finish_connection(&mut c);
        assert_eq!(chain.open_contexts(), 0, "the context ended once");
    }

    #[test]
    fn a_filter_closing_the_connection_refuses_it() {
        let chain = tcp_guard(r#"{"deny": ["10.0.0.9"]}"#);
        let (mut c, opened) = chain.connect(from("10.0.0.9:40000"), |s| s.applies_to_connection("mesh/raw"));
        assert!(matches!(opened, Err(Abort::Reset { .. })), "{opened:?}");
        chain.finish_connection(&mut c);
        assert_eq!(chain.open_contexts(), 0);
        let (_, allowed) = chain.connect(from("10.0.0.1:40000"), |s| s.applies_to_connection("mesh/raw"));
        assert!(allowed.is_ok());
    }

    #[test]
    fn the_stand_in_for_a_network_filter_that_did_not_load_closes_connections() {
        let filter = ChainFilter {
            module: RUNTIME
                .load("unavailable", crate::filters::UNAVAILABLE_WASM)
                .expect("loads"),
            config: Arc::from(&b"network:filter mesh/guard is unavailable: no such file\n"[..]),
            limits: SandboxLimits::default(),
            failure_policy: FailurePolicy::FailClosed,
            scope: None,
        };
        let metrics = Arc::new(Metrics::new());
        let chain = Chain::start(&[filter], metrics.clone()).expect("starts");
        for _ in 0..2 {
            let (mut c, opened) = chain.connect(from("10.0.0.1:40000"), |_| true);
            assert!(matches!(opened, Err(Abort::Reset { .. })), "{opened:?}");
            chain.finish_connection(&mut c);
        }
        assert_eq!(chain.open_contexts(), 0);
        assert!(
            !metrics
                .encode()
                .contains("tidegate_filter_failures_total{filter=\"unavailable\"} "),
            "closing is not a failure of the stand-in"
        );
    }

    #[test]
    fn connections_out_of_scope_open_no_context() {
        let chain = tcp_guard("{}");
        let (c, opened) = chain.connect(from("10.0.0.1:40000"), |s| s.applies_to_connection("mesh/other"));
        assert!(opened.is_ok());
        assert!(c.is_empty());
        assert_eq!(chain.open_contexts(), 0);
    }
}

#[cfg(test)]
mod hold_tests {
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};

    use super::*;
    use crate::metrics::Metrics;
    use crate::proxy::chain::FailurePolicy;
    use crate::proxy::chain::tests::{auth_env, guest};

    /// A network filter that holds every new connection until the answer of its callout, then
    /// continues it (`continue`) or closes it.
    fn holder(then: &str) -> Chain {
        let stream = if then == "continue" {
            "$continue_stream"
        } else {
            "$close_stream"
        };
        let callbacks = format!(
            r#"
  (func (export "proxy_on_new_connection") (param $ctx i32) (result i32)
    (drop (call $call_auth))
    (i32.const 1))
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
    (drop (call {stream} (i32.const 2))))
"#
        );
        Chain::start_with(
            &[guest("holder", &callbacks, FailurePolicy::FailClosed)],
            Arc::new(Metrics::new()),
            auth_env(),
        )
        .expect("chain starts")
    }

    #[test]
    fn a_paused_connection_waits_for_the_filter_to_continue_it() {
        let chain = holder("continue");
        let (mut c, opened) = chain.connect(HttpExchange::default(), |_| true);
        assert!(opened.is_ok());
        assert!(c.is_paused(), "held in proxy_on_new_connection");
        let mut cx = Context::from_waker(Waker::noop());
        assert!(chain.poll_resumed(&mut c, &mut cx).is_pending(), "nothing answered yet");
        // The callout's answer (a failure: no callout sender here) reaches the filter in the
        // background, and the filter continues the connection.
        assert!(chain.poll_background(&mut cx));
        assert!(matches!(chain.poll_resumed(&mut c, &mut cx), Poll::Ready(Ok(()))));
        assert!(!c.is_paused());
        chain.finish_connection(&mut c);
        assert_eq!(chain.open_contexts(), 0);
    }

    #[test]
    fn a_paused_connection_the_filter_closes_is_refused() {
        let chain = holder("close");
        let (mut c, opened) = chain.connect(HttpExchange::default(), |_| true);
        assert!(opened.is_ok() && c.is_paused());
        let mut cx = Context::from_waker(Waker::noop());
        assert!(chain.poll_resumed(&mut c, &mut cx).is_pending());
        assert!(chain.poll_background(&mut cx));
        assert!(matches!(
            chain.poll_resumed(&mut c, &mut cx),
            Poll::Ready(Err(Abort::Reset { .. }))
        ));
        chain.finish_connection(&mut c);
        assert_eq!(chain.open_contexts(), 0);
    }
}
