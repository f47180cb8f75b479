//! Worker threads: each runs a current-thread runtime, owns its filter VMs and upstream pools,
//! and follows the published configuration (building a new generation per version).

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::callout::CalloutSender;
use super::captured;
use super::chain::{Chain, ChainEnv, ChainFilter, FailurePolicy};
use super::listener;
use super::published::{Published, Publisher};
use super::services::SnapshotServices;
use super::tcp::{CaptureServing, Entry, L4State};
use super::udp;
use super::upstream::Upstreams;
use crate::config::wasmfilter::Phase;
use crate::metrics::Metrics;
use crate::modules::ResolvedFilter;
use crate::wasm::{FilterModule, InstanceEnv, QueueReady, QueueWaker, SandboxLimits};

/// How the data plane binds and runs.
#[derive(Debug, Clone)]
pub struct DataPlaneOptions {
    /// Added to every Gateway listener port when binding (lets tests and unprivileged users
    /// serve port-80 Gateways); redirects and Host defaults still use the Gateway's port.
    pub port_offset: u16,
    /// Number of worker threads.
    pub workers: usize,
    /// Sandbox limits of the standard filters.
    pub limits: SandboxLimits,
}

/// Executor that keeps hyper's connection tasks on the current worker.
#[derive(Debug, Clone, Copy)]
pub struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
{
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}

/// Handle on the running workers.
pub struct DataPlane {
    /// Per worker: the snapshot version it serves (0 = none yet).
    serving: Vec<Arc<AtomicU64>>,
    /// Per worker: the last snapshot version it tried to serve (a filter may reject one).
    tried: Vec<Arc<AtomicU64>>,
}

impl DataPlane {
    /// Starts the worker threads; they serve whatever `publisher` publishes from now on.
    /// With `capture`, every worker also accepts on its share of the transparent listeners,
    /// and the first one serves the captured UDP.
    pub fn start(
        options: DataPlaneOptions,
        publisher: &Publisher,
        modules: Vec<FilterModule>,
        metrics: Arc<Metrics>,
        capture: Option<CaptureServing>,
    ) -> std::io::Result<Self> {
        let mut serving = Vec::new();
        let mut tried = Vec::new();
        let l4 = capture.as_ref().map(|c| Arc::new(L4State::new(c, metrics.clone())));
        let (mut outbound, mut inbound, mut udp) = match capture {
            Some(c) => (
                c.listeners.outbound.into_iter(),
                c.listeners.inbound.into_iter(),
                vec![
                    (c.listeners.udp, Entry::Outbound),
                    (c.listeners.udp_inbound, Entry::Inbound),
                ],
            ),
            None => (Vec::new().into_iter(), Vec::new().into_iter(), Vec::new()),
        };
        for id in 0..options.workers.max(1) {
            let version = Arc::new(AtomicU64::new(0));
            serving.push(version.clone());
            let tried_version = Arc::new(AtomicU64::new(0));
            tried.push(tried_version.clone());
            let rx = publisher.subscribe();
            let capture = l4.clone().map(|l4| WorkerCapture {
                l4,
                outbound: outbound.next(),
                inbound: inbound.next(),
                udp: std::mem::take(&mut udp),
                published: publisher.subscribe(),
            });
            let options = options.clone();
            let modules = modules.clone();
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name(format!("tidegate-worker-{id}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            tracing::error!(worker = id, error = %e, "cannot start a worker runtime");
                            return;
                        }
                    };
                    let local = tokio::task::LocalSet::new();
                    // Shared-queue items for this worker's VMs arrive here from any thread.
                    let (queue_tx, queue_rx) = mpsc::unbounded_channel();
                    let queue_waker = QueueWaker::new(move |ready| {
                        let _ = queue_tx.send(ready);
                    });
                    let worker = Rc::new(Worker {
                        id,
                        options,
                        modules,
                        metrics,
                        upstreams: Upstreams::default(),
                        current: RefCell::new(None),
                        listeners: RefCell::new(HashMap::new()),
                        serving: version,
                        tried: tried_version,
                        queue_waker,
                        latest: RefCell::new(None),
                    });
                    local.spawn_local(worker.clone().drive_queues(queue_rx));
                    if let Some(capture) = capture {
                        let worker = worker.clone();
                        local.spawn_local(async move { capture.serve(&worker) });
                    }
                    local.block_on(&runtime, worker.run(rx));
                })?;
        }
        Ok(Self { serving, tried })
    }

    /// The lowest snapshot version every worker has tried to serve (served, or rejected by a
    /// filter and kept the one before).
    pub fn tried_version(&self) -> u64 {
        self.tried.iter().map(|v| v.load(Ordering::Acquire)).min().unwrap_or(0)
    }

    /// The lowest snapshot version any worker serves (0 until every worker serves one).
    pub fn serving_version(&self) -> u64 {
        self.serving
            .iter()
            .map(|v| v.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }
}

/// One worker's share of the capture.
struct WorkerCapture {
    l4: Arc<L4State>,
    outbound: Option<std::net::TcpListener>,
    inbound: Option<std::net::TcpListener>,
    /// The UDP sockets (the first worker's only).
    udp: Vec<(Option<std::net::UdpSocket>, Entry)>,
    published: watch::Receiver<Arc<Published>>,
}

impl WorkerCapture {
    /// Starts accepting (call inside the worker's runtime and local set).
    fn serve(self, worker: &Rc<Worker>) {
        let listeners = [(self.outbound, Entry::Outbound), (self.inbound, Entry::Inbound)];
        for (listener, entry) in listeners {
            let Some(listener) = listener else { continue };
            match tokio::net::TcpListener::from_std(listener) {
                Ok(listener) => {
                    tokio::task::spawn_local(captured::accept_loop(listener, entry, worker.clone(), self.l4.clone()));
                }
                Err(e) => tracing::error!(worker = worker.id, error = %e, "cannot serve a transparent listener"),
            }
        }
        for (socket, entry) in self.udp {
            if let Some(socket) = socket {
                tokio::task::spawn_local(udp::serve(socket, entry, self.published.clone(), self.l4.clone()));
            }
        }
    }
}

/// A user filter as the chain runs it. When its module did not load, a fail-open filter is
/// left out and a fail-closed one is replaced by the `unavailable` filter, which answers 500
/// with the reason.
fn user_chain_filter(filter: &ResolvedFilter, unavailable: &FilterModule) -> Option<ChainFilter> {
    let plan = &filter.plan;
    let failure_policy = if plan.fail_open {
        FailurePolicy::FailOpen
    } else {
        FailurePolicy::FailClosed
    };
    let (module, config) = match &filter.module {
        Ok(module) => (module.clone(), Arc::from(plan.config.as_slice())),
        Err(_) if plan.fail_open => return None,
        Err(e) => (
            unavailable.clone(),
            Arc::from(format!("filter {} is unavailable: {e}\n", plan.name).into_bytes()),
        ),
    };
    Some(ChainFilter {
        module,
        config,
        scope: Some(Arc::new(plan.scope.clone())),
        limits: SandboxLimits {
            memory_bytes: plan.memory_bytes,
            call_timeout: plan.call_timeout,
        },
        failure_policy,
    })
}

/// One configuration generation on one worker: the published config and the VMs built for it.
/// Requests hold an `Rc` to the generation they started on, so a reload never changes the
/// configuration under a request in flight.
pub struct Generation {
    pub published: Arc<Published>,
    pub chain: Chain,
    /// The NETWORK filters (stream contexts on TCP connections to Services), when any.
    pub network: Option<Chain>,
}

impl Generation {
    /// Both chains.
    fn chains(&self) -> impl Iterator<Item = &Chain> {
        std::iter::once(&self.chain).chain(self.network.as_ref())
    }
}

pub struct Worker {
    pub id: usize,
    pub options: DataPlaneOptions,
    modules: Vec<FilterModule>,
    pub metrics: Arc<Metrics>,
    pub upstreams: Upstreams,
    current: RefCell<Option<Rc<Generation>>>,
    listeners: RefCell<HashMap<(IpAddr, u16), JoinHandle<()>>>,
    serving: Arc<AtomicU64>,
    tried: Arc<AtomicU64>,
    queue_waker: QueueWaker,
    /// The latest published snapshot, whether or not it became a generation.
    latest: RefCell<Option<Arc<crate::snapshot::Snapshot>>>,
}

impl Worker {
    async fn run(self: Rc<Self>, mut rx: watch::Receiver<Arc<Published>>) {
        loop {
            let published = rx.borrow_and_update().clone();
            *self.latest.borrow_mut() = Some(published.snapshot.clone());
            if published.snapshot.version > 0 {
                self.apply(published);
            }
            if rx.changed().await.is_err() {
                break;
            }
        }
    }

    /// Drives what happens to this generation's VMs outside requests: `proxy_on_tick` at each
    /// filter's period while it is the current one, and the answers of callouts made from root
    /// contexts (or for held connections) for as long as anything still uses it. Holds the
    /// generation only while working, so a replaced one is freed once nothing uses it.
    async fn drive_background(self: Rc<Self>, generation: std::rc::Weak<Generation>) {
        /// How often to look again when no filter asked for ticks (a filter may ask later).
        const IDLE_CHECK: std::time::Duration = std::time::Duration::from_millis(250);
        loop {
            let Some(current) = generation.upgrade() else { return };
            let is_current = self.current.borrow().as_ref().is_some_and(|c| Rc::ptr_eq(c, &current));
            let now = tokio::time::Instant::now();
            let next = match is_current {
                true => current
                    .chains()
                    .filter_map(|chain| chain.tick(now.into_std()))
                    .min()
                    .map(tokio::time::Instant::from_std),
                false => None,
            };
            drop(current);
            let sleep = tokio::time::sleep_until(next.unwrap_or(now + IDLE_CHECK).min(now + IDLE_CHECK));
            let answers = std::future::poll_fn(|cx| match generation.upgrade() {
                // Every chain is polled, so each registers its waker.
                Some(current) if current.chains().fold(false, |any, c| c.poll_background(cx) | any) => {
                    std::task::Poll::Ready(())
                }
                Some(_) => std::task::Poll::Pending,
                None => std::task::Poll::Ready(()),
            });
            tokio::select! {
                () = sleep => {}
                () = answers => {}
            }
        }
    }

    /// Hands shared-queue items to the VM that consumes them (`proxy_on_queue_ready`).
    async fn drive_queues(self: Rc<Self>, mut rx: mpsc::UnboundedReceiver<QueueReady>) {
        while let Some(ready) = rx.recv().await {
            let Some(current) = self.current() else { continue };
            if !current.chains().any(|chain| chain.on_queue_ready(ready)) {
                tracing::debug!(
                    worker = self.id,
                    ?ready,
                    "queue item for a VM that is gone; it waits for the next consumer"
                );
            }
        }
    }

    /// The generation new requests start on.
    pub fn current(&self) -> Option<Rc<Generation>> {
        self.current.borrow().clone()
    }

    /// The latest published snapshot (also when a filter rejected it and the current
    /// generation is an older one); empty before the first.
    pub fn latest_snapshot(&self) -> Arc<crate::snapshot::Snapshot> {
        self.latest.borrow().clone().unwrap_or_default()
    }

    fn apply(self: &Rc<Self>, published: Arc<Published>) {
        let version = published.snapshot.version;
        let filters = self.compose(&published);
        let network_filters = self.network_filters(&published);
        let snapshot = published.snapshot.clone();
        let env = ChainEnv {
            instance: InstanceEnv {
                services: Some(Arc::new(SnapshotServices::new(snapshot.clone()))),
                queue_waker: Some(self.queue_waker.clone()),
            },
            callouts: Some(Rc::new(CalloutSender::new(self.upstreams.clone(), snapshot))),
        };
        let chains = Chain::start_with(&filters, self.metrics.clone(), env.clone()).and_then(|chain| {
            let network = match network_filters.is_empty() {
                true => None,
                false => Some(Chain::start_with(&network_filters, self.metrics.clone(), env)?),
            };
            Ok((chain, network))
        });
        match chains {
            Ok((chain, network)) => {
                let generation = Rc::new(Generation {
                    published: published.clone(),
                    chain,
                    network,
                });
                *self.current.borrow_mut() = Some(generation.clone());
                tokio::task::spawn_local(self.clone().drive_background(Rc::downgrade(&generation)));
                self.reconcile_listeners(&published);
                self.serving.store(version, Ordering::Release);
            }
            Err(e) => {
                // The last good generation keeps serving, on its own ports, and is what this
                // worker reports serving (before any good version: nothing, so not ready).
                tracing::error!(worker = self.id, version, error = %e, "a filter rejected configuration version {version}; the previous version keeps serving");
                self.metrics.config_rejected();
            }
        }
        self.tried.store(version, Ordering::Release);
    }

    /// The chain in order: user filters of PrePolicy and PreRouting (there is no standard policy
    /// filter yet), the router, PostRouting user filters, the balancer, PostBalancing ones.
    fn compose(&self, published: &Published) -> Vec<ChainFilter> {
        let standard = |module: &FilterModule, config: &Arc<[u8]>| ChainFilter {
            module: module.clone(),
            config: config.clone(),
            limits: self.options.limits.clone(),
            failure_policy: FailurePolicy::FailClosed,
            scope: None,
        };
        let (router, balancer, unavailable) = (&self.modules[0], &self.modules[1], &self.modules[2]);
        let user = |phases: &[Phase]| {
            published
                .user_filters
                .iter()
                .filter(|f| !f.plan.network && phases.contains(&f.plan.phase))
                .filter_map(|f| user_chain_filter(f, unavailable))
                .collect::<Vec<_>>()
        };
        let mut chain = user(&[Phase::PrePolicy, Phase::PreRouting]);
        chain.push(standard(router, &published.router_config));
        chain.extend(user(&[Phase::PostRouting]));
        chain.push(standard(balancer, &published.balancer_config));
        chain.extend(user(&[Phase::PostBalancing]));
        chain
    }

    /// The NETWORK filters, in priority order (they see TCP connections, so phases do not
    /// apply).
    fn network_filters(&self, published: &Published) -> Vec<ChainFilter> {
        let unavailable = &self.modules[2];
        let mut network: Vec<&ResolvedFilter> = published.user_filters.iter().filter(|f| f.plan.network).collect();
        // Higher priority first, then by name (as within a phase).
        network.sort_by(|a, b| {
            b.plan
                .priority
                .cmp(&a.plan.priority)
                .then_with(|| a.plan.name.cmp(&b.plan.name))
        });
        network
            .into_iter()
            .filter_map(|f| user_chain_filter(f, unavailable))
            .map(|mut filter| {
                // The stand-in for a module that did not load closes connections instead.
                if filter.module.is(unavailable) {
                    let mut reason = b"network:".to_vec();
                    reason.extend_from_slice(&filter.config);
                    filter.config = Arc::from(reason);
                }
                filter
            })
            .collect()
    }

    /// Binds new ports and stops accepting on removed ones (open connections finish).
    fn reconcile_listeners(self: &Rc<Self>, published: &Published) {
        let mut listeners = self.listeners.borrow_mut();
        let wanted: Vec<(IpAddr, u16)> = published.snapshot.ports.iter().map(|p| (p.address, p.port)).collect();
        listeners.retain(|key, handle| {
            let keep = wanted.contains(key);
            if !keep {
                handle.abort();
            }
            keep
        });
        for (address, port) in wanted {
            if listeners.contains_key(&(address, port)) {
                continue;
            }
            let Some(bind_port) = port.checked_add(self.options.port_offset) else {
                tracing::error!(
                    port,
                    offset = self.options.port_offset,
                    "listener port plus --port-offset exceeds 65535"
                );
                continue;
            };
            let addr = SocketAddr::new(address, bind_port);
            match listener::bind_reuseport(addr) {
                Ok(socket) => {
                    if self.id == 0 {
                        tracing::info!(%addr, gateway_port = port, "listening");
                    }
                    let handle = tokio::task::spawn_local(listener::accept_loop(socket, address, port, self.clone()));
                    listeners.insert((address, port), handle);
                }
                Err(e) => {
                    tracing::error!(%addr, error = %e, "cannot listen; is another process using this port, or is the address not on this node? (see --port-offset, --listen-address, --address-pool)");
                    self.metrics.bind_error();
                }
            }
        }
    }
}
