//! L4 connections through a filter's stream context, as the proxy drives them: a new
//! connection, then the bytes of each side (`DOWNSTREAM_DATA` from the client, `UPSTREAM_DATA`
//! from the upstream), then the close events.

use bytes::Bytes;
use tidegate::wasm::{BodyBuffer, FilterAction, HttpExchange, PeerType};

use crate::error::Error;
use crate::host::TestHost;

/// What the filter did with one piece of data.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DataOutcome {
    /// What the data callback returned.
    pub action: FilterAction,
    /// The bytes the filter let through to the other side (everything it had buffered, as it
    /// changed them), empty while it pauses.
    pub passed: Vec<u8>,
    /// The filter closed the client's side (`proxy_close_stream(DOWNSTREAM)`).
    pub close_downstream: bool,
    /// The filter closed the upstream side.
    pub close_upstream: bool,
}

/// One L4 connection through the filter (see [`TestHost::connection`]). Dropping it closes
/// both sides and ends the context.
pub struct Connection<'h> {
    host: &'h mut TestHost,
    ctx: u32,
    ex: HttpExchange,
    /// What the filter holds per side while it pauses.
    held: [BodyBuffer; 2],
    /// What `on_new_connection` returned.
    pub action: FilterAction,
    ended: bool,
}

impl<'h> Connection<'h> {
    pub(crate) fn open(host: &'h mut TestHost) -> Result<Self, Error> {
        let ctx = host.guard(|instance| instance.create_stream_context())?;
        let mut ex = HttpExchange::default();
        let action = host.guard(|instance| instance.on_new_connection(ctx, &mut ex))?;
        host.instance_mut().take_stream_actions();
        Ok(Self {
            host,
            ctx,
            ex,
            held: [BodyBuffer::default(), BodyBuffer::default()],
            action,
            ended: false,
        })
    }

    /// Bytes from the client (`proxy_on_downstream_data`); `end` when the client finished.
    pub fn downstream(&mut self, bytes: &[u8], end: bool) -> Result<DataOutcome, Error> {
        self.data(0, bytes, end)
    }

    /// Bytes from the upstream (`proxy_on_upstream_data`).
    pub fn upstream(&mut self, bytes: &[u8], end: bool) -> Result<DataOutcome, Error> {
        self.data(1, bytes, end)
    }

    fn data(&mut self, side: usize, bytes: &[u8], end: bool) -> Result<DataOutcome, Error> {
        let (ctx, ex) = (self.ctx, &mut self.ex);
        let mut buffer = std::mem::take(&mut self.held[side]);
        buffer.append(Bytes::copy_from_slice(bytes));
        let action = if side == 0 {
            ex.request_body = buffer;
            let action = self.host.guard(|instance| instance.on_downstream_data(ctx, ex, end));
            buffer = std::mem::take(&mut ex.request_body);
            action
        } else {
            ex.response_body = buffer;
            let action = self.host.guard(|instance| instance.on_upstream_data(ctx, ex, end));
            buffer = std::mem::take(&mut ex.response_body);
            action
        }?;
        let actions = self.host.instance_mut().take_stream_actions();
        let passed = match action {
            FilterAction::Continue => buffer.take().to_vec(),
            FilterAction::Pause => {
                self.held[side] = buffer;
                Vec::new()
            }
        };
        Ok(DataOutcome {
            action,
            passed,
            close_downstream: actions.close_downstream,
            close_upstream: actions.close_upstream,
        })
    }

    /// Both sides close (the client first, as seen from the proxy) and the context ends.
    pub fn close(mut self) -> Result<(), Error> {
        self.end()
    }

    fn end(&mut self) -> Result<(), Error> {
        if std::mem::replace(&mut self.ended, true) {
            return Ok(());
        }
        let ctx = self.ctx;
        let closed = self
            .host
            .guard(|instance| instance.on_downstream_close(ctx, PeerType::Remote))
            .and_then(|()| {
                self.host
                    .guard(|instance| instance.on_upstream_close(ctx, PeerType::Local))
            });
        self.host.instance_mut().finish_http_context(ctx, &mut self.ex);
        closed
    }
}

impl Drop for Connection<'_> {
    fn drop(&mut self) {
        let _ = self.end();
    }
}
