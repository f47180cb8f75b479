//! The WASM host: runs proxy-wasm (ABI v0.2.1) filters in wasmtime, sandboxed.
//!
//! Routing, balancing and policy are proxy-wasm filters, and so are users' own; this module is
//! the host they run in. Unmodified filters built with the `proxy-wasm` Rust SDK 0.2.x (for
//! `wasm32-wasip1` or `wasm32-unknown-unknown`) run as they would in Envoy.
//!
//! # Core concepts
//!
//! - [`WasmRuntime`]: one per process. Owns the wasmtime `Engine` (Cranelift, pooling instance
//!   allocator with copy-on-write memory images, epoch interruption) and the one `Linker` with
//!   every host function, built once and shared by every store. Creating it reserves virtual
//!   address space for the whole instance pool and starts the epoch ticker thread. Cheap to
//!   clone (`Arc`), `Send + Sync`.
//! - [`FilterModule`]: a compiled, validated, pre-linked module (`InstancePre`). Expensive to
//!   build (Cranelift: ~0.1 s for a 150 KiB filter, ~0.9 s for the 880 KiB standard router), so
//!   build it once per module and share it: `Clone + Send + Sync`. Loading fails early and
//!   precisely: not WebAssembly, no proxy-wasm ABI marker, an import tidegate does not provide, a
//!   callback with the wrong signature.
//! - [`FilterInstance`]: one VM (`Store` + `Instance`) with its root context configured. About
//!   30 µs to start from a pooled slot (mostly the guest's own initialisation), so keep one per
//!   filter per worker and reuse it for every request; it is used from one thread only.
//! - [`HttpExchange`]: the request a callback acts on. It is moved into the store for the call
//!   and back afterwards, so hostcalls need no locks and a request never sees another's state.
//!
//! A request costs one context: [`FilterInstance::create_http_context`],
//! [`on_request_headers`](FilterInstance::on_request_headers),
//! [`on_response_headers`](FilterInstance::on_response_headers),
//! [`finish_http_context`](FilterInstance::finish_http_context). Measured on a warm instance:
//! ~0.4 µs for a trivial guest making two header hostcalls (test `per_request_overhead`), ~5 µs
//! for the standard router answering 404 (its own matching included).
//!
//! Bodies and trailers: [`on_request_body`](FilterInstance::on_request_body),
//! [`on_request_trailers`](FilterInstance::on_request_trailers) and their response twins run
//! over the [`BodyBuffer`] and trailer lists of the exchange; the proxy owns the buffering (a
//! paused filter is called again with everything buffered) and decides whether to call them at
//! all: [`FilterModule::body_callbacks`] says, from the module's exports, which ones a filter
//! has, so a chain without any keeps passing bodies through untouched.
//!
//! # Sandbox
//!
//! - **CPU time**: each callback gets a deadline ([`SandboxLimits::call_timeout`]), enforced by
//!   epoch interruption: a ticker thread advances the engine's epoch every [`EPOCH_TICK`]
//!   (1 ms) and compiled code checks it at function entries and loop back-edges. Cost: one
//!   thread waking 1000 times a second, and a load + compare in guest loops (≤ 5 % in the
//!   research benchmark, `shared/research/wasm-abi.md` §4.3);
//!   the tick bounds the precision (a deadline never fires before `timeout`, and typically 1-2 ms
//!   after it, later only if the ticker thread is starved). A hostcall is never interrupted, but
//!   none blocks.
//! - **Memory**: a `ResourceLimiter` caps linear memory at [`SandboxLimits::memory_bytes`]; a
//!   `memory.grow` past it traps. Tables are capped too; host-side copies are bounded by named
//!   constants in each ABI area (header counts, property and shared-data sizes, log length).
//! - **Failure**: a trap (a Rust panic with `panic = "abort"`, `unreachable`, an out-of-bounds
//!   access), a deadline or the memory cap returns a precise [`WasmError`] and leaves the
//!   instance [broken](FilterInstance::is_broken); the proxy applies the filter's failure policy
//!   and starts a new instance. A hostile guest cannot make a hostcall panic: every pointer is
//!   checked and refused with `INVALID_MEMORY_ACCESS`.
//!
//! Not limited: the wasmtime metadata of an instance (a few KiB), and compile time at load.
//!
//! # Threading
//!
//! `WasmRuntime` and `FilterModule` are shared across threads; a `FilterInstance` belongs to one
//! worker thread (it is `Send`, so it can be built elsewhere and moved there). Callbacks are
//! synchronous and never block. Process-wide state is limited to the shared-data store, the
//! shared-queue registry ([`queue`]) and the metrics registry ([`metrics_snapshot`]), all behind
//! short locks never held while guest code runs. HTTP callouts never block either: a callback
//! queues them ([`FilterInstance::take_callouts`]) and the proxy delivers the answer later
//! ([`FilterInstance::on_http_call_response`]) on the same thread.
//!
//! # ABI coverage
//!
//! Every v0.2.1 import and all of WASI preview 1 link; what is implemented and what answers a
//! "not available" status is listed in the `abi` module (HTTP/gRPC callouts, queues and foreign
//! functions reach the proxy through [`InstanceEnv`]; L4 stream contexts are driven through
//! [`FilterInstance::on_new_connection`] and its siblings; gRPC callouts are not built).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::{
    Config, Engine, ExternType, FuncType, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, Store, ValType,
};

mod abi;
mod cache;
pub(crate) mod codec;
mod error;
mod exchange;
mod host;
mod instance;
mod memory;
pub mod queue;
mod services;

pub use self::abi::metrics::{HISTOGRAM_BUCKETS, MetricKind, MetricSample, MetricValue, metrics_snapshot};
pub use self::error::WasmError;
pub use self::exchange::{BodyBuffer, ConnectionProperties, HeaderList, HttpExchange, LocalReply, PropertyMap};
pub use self::instance::{FilterAction, FilterInstance, PeerType, StreamActions};
pub use self::queue::{QueueReady, QueueWaker};
pub use self::services::{CalloutRequest, CalloutResponse, HostServices, InstanceEnv};

use self::host::HostState;

/// How often the epoch ticker advances the engine's epoch: the resolution of call deadlines.
///
/// 1 ms: call timeouts are configured in tens of milliseconds (`callTimeout: 50ms`), so a
/// 1 ms tick keeps them within a few percent, while the cost stays negligible: one thread
/// waking 1000 times a second (a few microseconds of CPU each), and the checks compiled into
/// guest code cost the same whatever the tick. A 10 ms tick would make a 20 ms timeout fire
/// anywhere up to 50 % late; a 100 µs tick would wake the ticker ten times as often for
/// precision nobody configures.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Instance slots in the pool by default. A slot holds one [`FilterInstance`]; size it for
/// workers × filters × 2 (a replacement generation while the old one drains). Each slot reserves
/// about 4 GiB of virtual address space (not memory) so guest code runs without bounds checks;
/// 1000 slots take ~4 TiB of the 128 TiB x86-64 user address space.
pub const DEFAULT_MAX_INSTANCES: u32 = 1000;

/// The floor of the time budget of lifecycle calls (`_initialize`, `proxy_on_vm_start`,
/// `proxy_on_configure`), which may parse large configurations.
pub const LIFECYCLE_MIN_TIMEOUT: Duration = Duration::from_secs(1);

/// The epoch ticks for a deadline of `timeout`: rounded up, plus two: one for the partial tick
/// in progress when the deadline is set, one for the ticker's jitter (two increments of its
/// drift-free schedule can be less than a tick apart, never their sum over a run). So a
/// deadline never fires early, and typically fires 1-2 ms late.
pub(crate) fn ticks_for(timeout: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos().max(1);
    (timeout.as_nanos().div_ceil(tick) as u64).saturating_add(2)
}

/// Per-instance limits (from a WasmFilter's `spec.limits`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxLimits {
    /// The cap on the filter's linear memory, in bytes.
    ///
    /// Default 64 MiB: a Rust proxy-wasm filter idles at ~1-2 MiB and a router holding a large
    /// route table needs a few MiB, so 64 MiB leaves an order of magnitude of headroom while
    /// 100 instances (workers × filters) still fit in a node's memory budget even at the cap.
    pub memory_bytes: u64,
    /// The time one callback may run before it is interrupted.
    ///
    /// Default 100 ms: a filter's per-request callbacks take microseconds, so a call that runs
    /// 100 ms is stuck (or hostile) and is holding up every request of its worker; the limit is
    /// loose enough never to hit a healthy filter on a loaded node.
    pub call_timeout: Duration,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            memory_bytes: 64 * 1024 * 1024,
            call_timeout: Duration::from_millis(100),
        }
    }
}

/// The process-wide WASM engine (see the [module docs](self)).
#[derive(Clone)]
pub struct WasmRuntime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<HostState>,
    /// Every `(module, name)` the linker defines, for precise missing-import errors.
    provided: HashSet<(String, String)>,
    stop_ticker: Arc<AtomicBool>,
    /// Compiled modules on disk (see [`cache`]); `None` compiles every time.
    cache: Option<cache::ModuleCache>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        // The ticker exits within a tick; modules and instances hold this `Arc`, so no deadline
        // can be pending any more.
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

// === impl WasmRuntime ===

impl WasmRuntime {
    /// The engine with [`DEFAULT_MAX_INSTANCES`] instance slots.
    pub fn new() -> Result<Self, WasmError> {
        Self::with_max_instances(DEFAULT_MAX_INSTANCES)
    }

    /// The engine with room for `max_instances` live [`FilterInstance`]s.
    pub fn with_max_instances(max_instances: u32) -> Result<Self, WasmError> {
        let engine_error = |message: String| WasmError::Engine { message };
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(max_instances)
            .total_memories(max_instances)
            .total_tables(max_instances);
        let mut config = Config::new();
        config
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| engine_error(error_chain(&e)))?;

        let mut linker = Linker::new(&engine);
        abi::add_to_linker(&mut linker).map_err(|e| engine_error(error_chain(&e)))?;
        let provided = {
            let mut store = Store::new(
                &engine,
                HostState::new(Arc::from(""), 0, Vec::new(), instance::ROOT_CONTEXT_ID),
            );
            linker
                .iter(&mut store)
                .map(|(module, name, _)| (module.to_owned(), name.to_owned()))
                .collect()
        };

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let ticker = (engine.clone(), stop_ticker.clone());
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                // A drift-free schedule (sleep overshoot does not accumulate), restarted rather
                // than caught up when the ticker falls a whole tick behind: increments never
                // come in bursts, which is what lets `ticks_for` promise a deadline never fires
                // early.
                let (engine, stop) = ticker;
                let mut next = std::time::Instant::now() + EPOCH_TICK;
                while !stop.load(Ordering::Relaxed) {
                    let now = std::time::Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                    engine.increment_epoch();
                    next += EPOCH_TICK;
                    let now = std::time::Instant::now();
                    if now >= next {
                        next = now + EPOCH_TICK;
                    }
                }
            })
            .map_err(|e| engine_error(format!("could not start the epoch ticker thread: {e}")))?;

        Ok(Self {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                provided,
                stop_ticker,
                cache: cache::ModuleCache::default_location(),
            }),
        })
    }

    /// Compiles and validates `wasm` as the filter `name`, and pre-links it.
    ///
    /// Checks, in order: the bytes are WebAssembly that compiles; the module declares proxy-wasm
    /// ABI v0.2.0 or v0.2.1 (`proxy_abi_version_0_2_*`); every import is one tidegate provides
    /// (all are named in the error otherwise); every proxy-wasm callback it exports has the
    /// ABI's signature.
    pub fn load(&self, name: &str, wasm: &[u8]) -> Result<FilterModule, WasmError> {
        let filter = || name.to_string();
        let sha256 = hex(&Sha256::digest(wasm));
        let compiled = match &self.inner.cache {
            Some(cache) => cache.load_or_compile(&self.inner.engine, wasm, &sha256),
            None => Module::new(&self.inner.engine, wasm),
        };
        let module = compiled.map_err(|e| WasmError::Compile {
            filter: filter(),
            message: error_chain(&e),
        })?;
        check_abi_version(name, &module)?;
        check_imports(name, &module, &self.inner.provided)?;
        check_exports(name, &module)?;
        let body_callbacks = BodyCallbacks::of(&module);
        let pre = self
            .inner
            .linker
            .instantiate_pre(&module)
            .map_err(|e| WasmError::Link {
                filter: filter(),
                message: error_chain(&e),
            })?;
        Ok(FilterModule {
            inner: Arc::new(ModuleInner {
                name: Arc::from(name),
                sha256,
                pre,
                body_callbacks,
                runtime: self.inner.clone(),
            }),
        })
    }
}

impl std::fmt::Debug for WasmRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmRuntime").finish_non_exhaustive()
    }
}

/// A compiled, validated and pre-linked filter module (see the [module docs](self)).
#[derive(Clone)]
pub struct FilterModule {
    inner: Arc<ModuleInner>,
}

struct ModuleInner {
    name: Arc<str>,
    sha256: String,
    pre: InstancePre<HostState>,
    body_callbacks: BodyCallbacks,
    runtime: Arc<RuntimeInner>,
}

/// Which body and trailer callbacks a module exports (checked once, when it is loaded).
///
/// A filter without them behaves exactly as if they returned `CONTINUE`, so a proxy whose
/// chain has none for a direction passes that direction's body through without looking at a
/// frame. Filters built with the proxy-wasm SDKs (Rust, Go, C++) export every callback through
/// their dispatcher whether or not the filter overrides them, so for those this says "yes" and
/// the proxy pays one guest call per frame (see `proxy::chain`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BodyCallbacks {
    /// `proxy_on_request_body`.
    pub request_body: bool,
    /// `proxy_on_request_trailers`.
    pub request_trailers: bool,
    /// `proxy_on_response_body`.
    pub response_body: bool,
    /// `proxy_on_response_trailers`.
    pub response_trailers: bool,
}

impl BodyCallbacks {
    fn of(module: &Module) -> Self {
        let exports = |name: &str| module.get_export(name).is_some();
        Self {
            request_body: exports("proxy_on_request_body"),
            request_trailers: exports("proxy_on_request_trailers"),
            response_body: exports("proxy_on_response_body"),
            response_trailers: exports("proxy_on_response_trailers"),
        }
    }

    /// Whether the filter has a request body or request trailers callback.
    pub fn request(&self) -> bool {
        self.request_body || self.request_trailers
    }

    /// Whether the filter has a response body or response trailers callback.
    pub fn response(&self) -> bool {
        self.response_body || self.response_trailers
    }
}

// === impl FilterModule ===

impl FilterModule {
    /// Whether both are the same loaded module (not merely equal bytes).
    pub fn is(&self, other: &FilterModule) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The filter's name: the `filter` field of its logs, its VM id (shared data and metrics).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The SHA-256 of the module's bytes, lowercase hex (what `spec.module.sha256` pins).
    pub fn sha256(&self) -> &str {
        &self.inner.sha256
    }

    /// The body and trailer callbacks the module exports.
    pub fn body_callbacks(&self) -> BodyCallbacks {
        self.inner.body_callbacks
    }
}

impl std::fmt::Debug for FilterModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FilterModule")
            .field("name", &self.name())
            .field("sha256", &self.sha256())
            .finish()
    }
}

// === load-time checks ===

/// The signatures of the module exports the ABI defines (spec v0.2.1 and the Rust SDK's
/// dispatcher), written as wasmtime types: `(params) -> result`.
const EXPORTS: &[(&str, &str)] = &[
    ("_initialize", "() -> ()"),
    ("_start", "() -> ()"),
    ("main", "(i32, i32) -> i32"),
    ("proxy_on_memory_allocate", "(i32) -> i32"),
    ("malloc", "(i32) -> i32"),
    ("proxy_on_context_create", "(i32, i32) -> ()"),
    ("proxy_on_vm_start", "(i32, i32) -> i32"),
    ("proxy_on_configure", "(i32, i32) -> i32"),
    ("proxy_on_tick", "(i32) -> ()"),
    ("proxy_on_queue_ready", "(i32, i32) -> ()"),
    ("proxy_on_new_connection", "(i32) -> i32"),
    ("proxy_on_downstream_data", "(i32, i32, i32) -> i32"),
    ("proxy_on_upstream_data", "(i32, i32, i32) -> i32"),
    ("proxy_on_downstream_connection_close", "(i32, i32) -> ()"),
    ("proxy_on_upstream_connection_close", "(i32, i32) -> ()"),
    ("proxy_on_request_headers", "(i32, i32, i32) -> i32"),
    ("proxy_on_request_body", "(i32, i32, i32) -> i32"),
    ("proxy_on_request_trailers", "(i32, i32) -> i32"),
    ("proxy_on_response_headers", "(i32, i32, i32) -> i32"),
    ("proxy_on_response_body", "(i32, i32, i32) -> i32"),
    ("proxy_on_response_trailers", "(i32, i32) -> i32"),
    ("proxy_on_http_call_response", "(i32, i32, i32, i32, i32) -> ()"),
    ("proxy_on_grpc_receive_initial_metadata", "(i32, i32, i32) -> ()"),
    ("proxy_on_grpc_receive", "(i32, i32, i32) -> ()"),
    ("proxy_on_grpc_receive_trailing_metadata", "(i32, i32, i32) -> ()"),
    ("proxy_on_grpc_close", "(i32, i32, i32) -> ()"),
    ("proxy_on_foreign_function", "(i32, i32, i32) -> ()"),
    ("proxy_on_done", "(i32) -> i32"),
    ("proxy_on_log", "(i32) -> ()"),
    ("proxy_on_delete", "(i32) -> ()"),
];

const ABI_VERSIONS: &[&str] = &["proxy_abi_version_0_2_1", "proxy_abi_version_0_2_0"];

fn check_abi_version(filter: &str, module: &Module) -> Result<(), WasmError> {
    if module.exports().any(|e| ABI_VERSIONS.contains(&e.name())) {
        return Ok(());
    }
    let declared: Vec<&str> = module
        .exports()
        .map(|e| e.name())
        .filter(|n| n.starts_with("proxy_abi_version_"))
        .collect();
    let found = if declared.is_empty() {
        "the module exports no `proxy_abi_version_*` marker, so it is not a proxy-wasm filter".to_string()
    } else {
        format!(
            "the module declares {}, which tidegate does not speak",
            declared.join(", ")
        )
    };
    Err(WasmError::AbiVersion {
        filter: filter.to_string(),
        found,
    })
}

fn check_imports(filter: &str, module: &Module, provided: &HashSet<(String, String)>) -> Result<(), WasmError> {
    let mut missing = Vec::new();
    for import in module.imports() {
        if !provided.contains(&(import.module().to_string(), import.name().to_string())) {
            missing.push(format!(
                "`{}::{}` ({})",
                import.module(),
                import.name(),
                describe_extern(&import.ty())
            ));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(WasmError::MissingImport {
            filter: filter.to_string(),
            imports: missing,
        })
    }
}

fn check_exports(filter: &str, module: &Module) -> Result<(), WasmError> {
    for export in module.exports() {
        let Some(&(_, expected)) = EXPORTS.iter().find(|(name, _)| *name == export.name()) else {
            continue;
        };
        let found = match export.ty() {
            ExternType::Func(ty) => signature(&ty),
            other => describe_extern(&other),
        };
        if found != expected {
            return Err(WasmError::BadExport {
                filter: filter.to_string(),
                export: export.name().to_string(),
                expected: expected.to_string(),
                found,
            });
        }
    }
    Ok(())
}

fn signature(ty: &FuncType) -> String {
    fn list(types: impl Iterator<Item = ValType>) -> String {
        types
            .map(|t| match t {
                ValType::I32 => "i32",
                ValType::I64 => "i64",
                ValType::F32 => "f32",
                ValType::F64 => "f64",
                ValType::V128 => "v128",
                ValType::Ref(_) => "ref",
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
    let results = list(ty.results());
    format!(
        "({}) -> {}",
        list(ty.params()),
        if ty.results().len() == 1 {
            results
        } else {
            format!("({results})")
        }
    )
}

fn describe_extern(ty: &ExternType) -> String {
    match ty {
        ExternType::Func(f) => format!("func {}", signature(f)),
        ExternType::Global(_) => "global".to_string(),
        ExternType::Table(_) => "table".to_string(),
        ExternType::Memory(_) => "memory".to_string(),
        ExternType::Tag(_) => "tag".to_string(),
    }
}

fn error_chain(error: &wasmtime::Error) -> String {
    error
        .chain()
        .map(|cause| cause.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

#[cfg(test)]
mod tests;
