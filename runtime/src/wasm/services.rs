//! What the proxy around a VM offers it beyond the request in hand: which upstreams HTTP
//! callouts may reach, and tidegate's host services (`proxy_call_foreign_function`).
//!
//! The WASM host knows nothing of clusters or snapshots; the proxy hands each VM an
//! [`HostServices`] when it starts it ([`InstanceEnv`]). A VM started without one (unit tests,
//! the filter test harness by default) can make no callouts (`BAD_ARGUMENT`: no such upstream)
//! and finds no host service (`NOT_FOUND`).

use std::sync::Arc;
use std::time::Duration;

use super::exchange::HeaderList;
use super::queue::QueueWaker;

/// Services of the proxy, shared by the VMs of one configuration generation.
pub trait HostServices: Send + Sync {
    /// The cluster a callout to `upstream` goes to, as the filter named it (tidegate's
    /// `namespace/service:port`, or one of the aliases the proxy accepts), or `None` when no
    /// such upstream exists (the hostcall then answers `BAD_ARGUMENT`, as Envoy does for an
    /// unknown cluster).
    fn upstream(&self, upstream: &str) -> Option<Arc<str>>;

    /// Answers the host service `name` (`tidegate.<service>`) called with `args`: `None` when no
    /// such service exists (`NOT_FOUND`), `Some(Err(()))` when the arguments are wrong
    /// (`BAD_ARGUMENT`).
    fn foreign_function(&self, name: &str, args: &[u8]) -> Option<Result<Vec<u8>, ()>>;
}

/// How a VM is embedded: its host services and where to report queue activity.
#[derive(Clone, Default)]
pub struct InstanceEnv {
    pub services: Option<Arc<dyn HostServices>>,
    /// Told when an item is enqueued on a queue this VM registered (see [`super::queue`]).
    pub queue_waker: Option<QueueWaker>,
}

/// An HTTP callout a filter asked for (`proxy_http_call`), for the proxy to send. Its answer
/// goes back with [`FilterInstance::on_http_call_response`](super::FilterInstance::on_http_call_response).
#[derive(Clone, Debug)]
pub struct CalloutRequest {
    /// The token the filter got back; it names the answer.
    pub token: u32,
    /// The context that made the call (the SDKs route the answer to it).
    pub context: u32,
    /// The cluster, as [`HostServices::upstream`] resolved it.
    pub cluster: Arc<str>,
    /// Request headers, `:method`, `:path` and `:authority` among them.
    pub headers: HeaderList,
    pub body: Vec<u8>,
    pub trailers: HeaderList,
    /// How long the whole call may take; past it the filter gets a failed call.
    pub timeout: Duration,
}

/// The answer to a callout: headers (`:status` first), body and trailers.
#[derive(Clone, Debug, Default)]
pub struct CalloutResponse {
    pub headers: HeaderList,
    pub body: Vec<u8>,
    pub trailers: HeaderList,
}
