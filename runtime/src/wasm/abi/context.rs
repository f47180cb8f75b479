//! Contexts and streams: `proxy_continue_stream`, `proxy_close_stream`,
//! `proxy_set_effective_context`, `proxy_done`.
//!
//! Stream actions are deferred, as in the C++ host: they are recorded during the callback and
//! the proxy applies them afterwards (see
//! [`FilterInstance::take_stream_actions`](crate::wasm::FilterInstance::take_stream_actions)), so
//! no hostcall re-enters the proxy (L4 streams too: `DOWNSTREAM`/`UPSTREAM` resume or close the
//! connection's sides). An action on the request of the running callback folds into
//! its result; one on another context (a root context resuming the requests that waited for
//! its callout) is kept apart for the proxy to route to that request.
//!
//! `proxy_set_effective_context` accepts only this VM's own contexts (the root context and open
//! HTTP contexts); switching to a context whose request is not the one of the running callback
//! makes request hostcalls see no request, so a filter can never reach another request's state.

use wasmtime::{Caller, Linker};

use super::stream_type::{DOWNSTREAM, HTTP_REQUEST, HTTP_RESPONSE, UPSTREAM};
use super::{ENV, Status};
use crate::wasm::host::HostState;

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(ENV, "proxy_continue_stream", proxy_continue_stream)?;
    linker.func_wrap(ENV, "proxy_close_stream", proxy_close_stream)?;
    linker.func_wrap(ENV, "proxy_set_effective_context", proxy_set_effective_context)?;
    linker.func_wrap(ENV, "proxy_done", proxy_done)?;
    Ok(())
}

fn proxy_continue_stream(mut caller: Caller<'_, HostState>, stream: i32) -> i32 {
    let actions = caller.data_mut().actions_of_effective();
    match stream {
        HTTP_REQUEST => actions.resume_request = true,
        HTTP_RESPONSE => actions.resume_response = true,
        DOWNSTREAM => actions.resume_downstream = true,
        UPSTREAM => actions.resume_upstream = true,
        _ => return Status::BadArgument as i32,
    }
    Status::Ok as i32
}

fn proxy_close_stream(mut caller: Caller<'_, HostState>, stream: i32) -> i32 {
    let actions = caller.data_mut().actions_of_effective();
    match stream {
        HTTP_REQUEST => actions.reset_request = true,
        HTTP_RESPONSE => actions.reset_response = true,
        DOWNSTREAM => actions.close_downstream = true,
        UPSTREAM => actions.close_upstream = true,
        _ => return Status::BadArgument as i32,
    }
    Status::Ok as i32
}

fn proxy_set_effective_context(mut caller: Caller<'_, HostState>, context_id: i32) -> i32 {
    let state = caller.data_mut();
    let id = context_id as u32;
    if !state.knows_context(id) {
        return Status::BadArgument as i32;
    }
    state.effective_ctx = id;
    Status::Ok as i32
}

fn proxy_done(mut caller: Caller<'_, HostState>) -> i32 {
    let state = caller.data_mut();
    let id = state.effective_ctx;
    if !state.pending_done.contains(&id) {
        return Status::NotFound as i32;
    }
    if !state.done_requested.contains(&id) {
        state.done_requested.push(id);
    }
    Status::Ok as i32
}
