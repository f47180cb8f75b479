//! Errors of the WASM host. Each names the filter and says what would fix it.

use std::time::Duration;

/// What went wrong loading or running a filter.
///
/// The variants after [`WasmError::Link`] come from running a filter. [`Trap`](WasmError::Trap),
/// [`Deadline`](WasmError::Deadline) and [`MemoryLimit`](WasmError::MemoryLimit) leave the
/// instance broken ([`FilterInstance::is_broken`](super::FilterInstance::is_broken)): the proxy
/// applies the filter's failure policy to the request and builds a new instance.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    /// The process-wide engine could not be created (pooling allocator reservation, ticker thread).
    #[error(
        "could not start the WASM engine: {message} (the pooling allocator reserves virtual address \
         space for every instance slot: check `ulimit -v` and vm.overcommit settings)"
    )]
    Engine {
        /// What failed.
        message: String,
    },
    /// The module is not valid WebAssembly, or Cranelift could not compile it.
    #[error(
        "filter `{filter}`: the module is not a valid WebAssembly binary or failed to compile: {message}. \
         Build it with `cargo build --target wasm32-wasip1 --release` against proxy-wasm 0.2.x (tidegate-sdk)"
    )]
    Compile {
        /// The filter's name.
        filter: String,
        /// The compiler's message.
        message: String,
    },
    /// The module imports host functions or other items tidegate does not provide.
    #[error(
        "filter `{filter}`: the module imports {} which tidegate does not provide. tidegate provides the \
         proxy-wasm ABI v0.2.1 (`env::proxy_*`) and WASI preview 1 (`wasi_snapshot_preview1::*`); rebuild \
         the filter without the other imports (e.g. do not depend on crates that need a JS or Emscripten host)",
        .imports.join(", ")
    )]
    MissingImport {
        /// The filter's name.
        filter: String,
        /// Each missing import as `module::name (type)`.
        imports: Vec<String>,
    },
    /// The module does not declare a proxy-wasm ABI version tidegate speaks.
    #[error(
        "filter `{filter}`: {found}; tidegate runs proxy-wasm ABI v0.2.0 and v0.2.1 filters, which export \
         `proxy_abi_version_0_2_1` (or `_0_2_0`). Build the filter with the proxy-wasm 0.2.x SDK (tidegate-sdk)"
    )]
    AbiVersion {
        /// The filter's name.
        filter: String,
        /// What the module declares.
        found: String,
    },
    /// A proxy-wasm callback the module exports has the wrong signature.
    #[error(
        "filter `{filter}`: export `{export}` has type {found} but proxy-wasm ABI v0.2.1 expects {expected}; \
         rebuild the filter against proxy-wasm 0.2.x"
    )]
    BadExport {
        /// The filter's name.
        filter: String,
        /// The export's name.
        export: String,
        /// The signature the ABI defines.
        expected: String,
        /// The signature the module has.
        found: String,
    },
    /// Linking failed after the import names matched (an import has the wrong signature).
    #[error("filter `{filter}`: could not link the module against tidegate's host functions: {message}")]
    Link {
        /// The filter's name.
        filter: String,
        /// wasmtime's message, naming the import.
        message: String,
    },
    /// A new instance could not be created (instance pool exhausted, table too large, …).
    #[error(
        "filter `{filter}`: could not create an instance: {message}. If the instance pool is exhausted, \
         fewer workers or filters are needed, or a larger pool (WasmRuntime::with_max_instances)"
    )]
    Instantiate {
        /// The filter's name.
        filter: String,
        /// wasmtime's message.
        message: String,
    },
    /// The filter trapped (a Rust panic with `panic = "abort"`, `unreachable`, an out-of-bounds
    /// access, `proc_exit`, a stack overflow, …).
    #[error("filter `{filter}` crashed: {message}")]
    Trap {
        /// The filter's name.
        filter: String,
        /// The trap and, when known, the guest backtrace.
        message: String,
    },
    /// A callback ran past its time budget and was interrupted.
    #[error(
        "filter `{filter}` ran longer than its time limit of {timeout:?} in one call and was stopped; \
         raise `spec.limits.callTimeout` of its WasmFilter or make the filter cheaper per request"
    )]
    Deadline {
        /// The filter's name.
        filter: String,
        /// The budget that was exceeded.
        timeout: Duration,
    },
    /// The filter's linear memory would have grown past its cap.
    #[error(
        "filter `{filter}` needed {requested} bytes of memory, over its limit of {limit} bytes; raise \
         `spec.limits.memory` of its WasmFilter or reduce what the filter keeps in memory"
    )]
    MemoryLimit {
        /// The filter's name.
        filter: String,
        /// The cap in bytes.
        limit: u64,
        /// The size the filter asked for, in bytes.
        requested: u64,
    },
    /// `proxy_on_vm_start` returned false.
    #[error("filter `{filter}` refused to start (proxy_on_vm_start returned false); see its log lines above")]
    VmStartRejected {
        /// The filter's name.
        filter: String,
    },
    /// `proxy_on_configure` returned false: the filter rejected its configuration.
    #[error(
        "filter `{filter}` rejected its configuration (proxy_on_configure returned false); check \
         `spec.config` of its WasmFilter against the filter's documentation and its log lines above"
    )]
    ConfigureRejected {
        /// The filter's name.
        filter: String,
    },
    /// The instance failed earlier (trap, deadline, memory cap) and cannot run guest code again.
    #[error("filter `{filter}`: this instance failed earlier and cannot be used; start a new FilterInstance")]
    Broken {
        /// The filter's name.
        filter: String,
    },
    /// A context id that this instance did not create (or already finished).
    #[error("filter `{filter}`: context {context} is not open on this instance (a host bug)")]
    UnknownContext {
        /// The filter's name.
        filter: String,
        /// The context id.
        context: u32,
    },
}

// === impl WasmError ===

impl WasmError {
    /// The filter the error is about, if any.
    pub fn filter(&self) -> Option<&str> {
        match self {
            Self::Engine { .. } => None,
            Self::Compile { filter, .. }
            | Self::MissingImport { filter, .. }
            | Self::AbiVersion { filter, .. }
            | Self::BadExport { filter, .. }
            | Self::Link { filter, .. }
            | Self::Instantiate { filter, .. }
            | Self::Trap { filter, .. }
            | Self::Deadline { filter, .. }
            | Self::MemoryLimit { filter, .. }
            | Self::VmStartRejected { filter }
            | Self::ConfigureRejected { filter }
            | Self::Broken { filter }
            | Self::UnknownContext { filter, .. } => Some(filter),
        }
    }

    /// Whether the error came from running guest code that failed (trap, deadline, memory cap):
    /// the kind the spec asks hosts to count and rate-limit.
    pub fn is_crash(&self) -> bool {
        matches!(
            self,
            Self::Trap { .. } | Self::Deadline { .. } | Self::MemoryLimit { .. }
        )
    }

    /// Whether the error is a per-call deadline.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Deadline { .. })
    }
}
