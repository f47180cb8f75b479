//! Loading user filter modules (WasmFilter `spec.module`): read, verify the pinned sha256,
//! compile (through the on-disk cache), and notice when a module changes so the new module is
//! published without a restart.
//!
//! - `file`: read here; a changed file (modification time or size) is loaded again.
//! - `configMap`: the bytes come with the plan (translation reads the ConfigMap, and reruns when
//!   it changes); a missing ConfigMap or key is the module's error.
//! - `http` and `oci`: fetched in the background (see [`fetch`]); until the first fetch of a
//!   source completes the module is "not loaded yet", so the filter's failure policy applies
//!   (FailClosed: the `unavailable` stand-in answers 500; FailOpen: it is left out). When a
//!   WasmFilter moves to a new fetch of the same source (its `sha256` pin changed or was
//!   removed) the module last fetched from that source keeps serving while the new fetch runs
//!   or fails, as long as it matches the pin.
//!
//! A module that does not compile or start is an error whatever its source: the current
//! content of a file or ConfigMap is what the user asked for, and the status says what is wrong.

pub mod fetch;
pub mod http;
pub mod oci;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::SystemTime;

use self::fetch::{FetchKey, Fetched, Fetcher, Source};
use crate::translate::wasmfilters::{ModuleLocation, UserFilterPlan};
use crate::wasm::{FilterModule, WasmRuntime};

/// A user filter with its module, or why the module could not be loaded.
#[derive(Clone)]
pub struct ResolvedFilter {
    pub plan: UserFilterPlan,
    pub module: Result<FilterModule, String>,
}

impl std::fmt::Debug for ResolvedFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedFilter")
            .field("name", &self.plan.name)
            .field("loaded", &self.module.is_ok())
            .finish()
    }
}

type Stamp = Option<(SystemTime, u64)>;

struct Entry {
    stamp: Stamp,
    module: Result<FilterModule, String>,
}

/// The modules of the current WasmFilters, reloaded when their files change.
pub struct ModuleRegistry {
    runtime: WasmRuntime,
    /// File modules, keyed by (file, filter name): the name is part of the module (logs, metrics).
    entries: HashMap<(PathBuf, String), Entry>,
    /// Modules compiled from bytes (ConfigMap, http, oci), keyed by (filter name, sha256).
    compiled: HashMap<(String, String), Result<FilterModule, String>>,
    fetcher: Fetcher,
}

impl ModuleRegistry {
    pub fn new(runtime: WasmRuntime) -> Self {
        Self {
            runtime,
            entries: HashMap::new(),
            compiled: HashMap::new(),
            fetcher: Fetcher::default(),
        }
    }

    /// The module of every plan, loading only what is new or changed. Never waits for a fetch.
    pub fn resolve(&mut self, plans: &[UserFilterPlan]) -> Vec<ResolvedFilter> {
        // Cleared first: a fetch finishing from here on is seen by the next `changed()`.
        self.fetcher.clear_changed();
        let mut wanted_files = Vec::new();
        let mut wanted_compiled = HashSet::new();
        let mut wanted_fetches = HashSet::new();
        let resolved = plans
            .iter()
            .map(|plan| {
                let module = match &plan.module {
                    ModuleLocation::File(path) => {
                        let key = (path.clone(), plan.name.clone());
                        wanted_files.push(key.clone());
                        self.resolve_file(plan, path, key)
                    }
                    ModuleLocation::ConfigMap { object, key, content } => match content {
                        Ok(bytes) => {
                            let what = format!("spec.module.configMap {object} {key}");
                            wanted_compiled.insert((plan.name.clone(), bytes.sha256.clone()));
                            self.compile(plan, &what, &bytes.bytes, &bytes.sha256)
                        }
                        Err(e) => Err(e.clone()),
                    },
                    ModuleLocation::Http(location) | ModuleLocation::Oci(location) => {
                        let source = match &plan.module {
                            ModuleLocation::Oci(_) => Source::Oci(location.clone()),
                            _ => Source::Http(location.clone()),
                        };
                        let key = FetchKey {
                            source,
                            sha256: plan.sha256.clone(),
                        };
                        wanted_fetches.insert(key.clone());
                        self.resolve_remote(plan, &key, &mut wanted_compiled)
                    }
                };
                let module = module.and_then(|m| check_digest(plan, m));
                ResolvedFilter {
                    plan: plan.clone(),
                    module,
                }
            })
            .collect();
        self.entries.retain(|key, _| wanted_files.contains(key));
        self.compiled.retain(|key, _| wanted_compiled.contains(key));
        self.fetcher.retain(&wanted_fetches);
        resolved
    }

    /// Whether a module file changed (or appeared, or vanished) since it was loaded, or a
    /// background fetch finished or failed an attempt since the last [`Self::resolve`].
    pub fn changed(&self) -> bool {
        self.fetcher.changed()
            || self
                .entries
                .iter()
                .any(|((path, _), entry)| stamp_of(path) != entry.stamp)
    }

    fn resolve_file(
        &mut self,
        plan: &UserFilterPlan,
        path: &std::path::Path,
        key: (PathBuf, String),
    ) -> Result<FilterModule, String> {
        let stamp = stamp_of(path);
        let stale = self
            .entries
            .get(&key)
            .is_none_or(|e| e.stamp != stamp || stamp.is_none());
        if stale {
            let module = self.load(plan, path);
            if let Err(e) = &module {
                tracing::error!(filter = %plan.name, error = %e, "cannot load the filter's module");
            } else {
                tracing::info!(filter = %plan.name, path = %path.display(), "loaded filter module");
            }
            self.entries.insert(key.clone(), Entry { stamp, module });
        }
        self.entries
            .get(&key)
            .map(|e| e.module.clone())
            .unwrap_or_else(|| Err("not loaded".into()))
    }

    /// A fetched module; while its fetch is pending or failing, the module last fetched from
    /// the same source if it matches the pin; else why there is none.
    fn resolve_remote(
        &mut self,
        plan: &UserFilterPlan,
        key: &FetchKey,
        wanted_compiled: &mut HashSet<(String, String)>,
    ) -> Result<FilterModule, String> {
        let bytes = match self.fetcher.want(key) {
            Fetched::Ready(bytes) => bytes,
            Fetched::Pending(message) => match self.fetcher.last_good(&key.source) {
                Some(bytes) if plan.sha256.as_ref().is_none_or(|pin| *pin == sha256_hex(&bytes)) => {
                    tracing::debug!(filter = %plan.name, %message, "the module last fetched from the source keeps serving");
                    bytes
                }
                _ => return Err(message),
            },
        };
        let sha256 = sha256_hex(&bytes);
        wanted_compiled.insert((plan.name.clone(), sha256.clone()));
        self.compile(plan, &key.source.to_string(), &bytes, &sha256)
    }

    /// Compiles module bytes once per (filter, digest).
    fn compile(
        &mut self,
        plan: &UserFilterPlan,
        what: &str,
        bytes: &[u8],
        sha256: &str,
    ) -> Result<FilterModule, String> {
        let key = (plan.name.clone(), sha256.to_string());
        if let Some(module) = self.compiled.get(&key) {
            return module.clone();
        }
        let module = self.runtime.load(&plan.name, bytes).map_err(|e| format!("{what}: {e}"));
        match &module {
            Ok(_) => tracing::info!(filter = %plan.name, source = %what, %sha256, "loaded filter module"),
            Err(e) => tracing::error!(filter = %plan.name, error = %e, "cannot load the filter's module"),
        }
        self.compiled.insert(key, module.clone());
        module
    }

    fn load(&self, plan: &UserFilterPlan, path: &std::path::Path) -> Result<FilterModule, String> {
        let bytes = std::fs::read(path).map_err(|e| {
            format!(
                "spec.module.file {}: {e}; build the module or fix the path",
                path.display()
            )
        })?;
        self.runtime.load(&plan.name, &bytes).map_err(|e| e.to_string())
    }
}

/// A pinned digest must match the module actually loaded.
fn check_digest(plan: &UserFilterPlan, module: FilterModule) -> Result<FilterModule, String> {
    match &plan.sha256 {
        Some(expected) if *expected != module.sha256() => Err(format!(
            "spec.module.sha256 is {expected} but the module's sha256 is {}; update the digest or the module",
            module.sha256()
        )),
        _ => Ok(module),
    }
}

fn stamp_of(path: &std::path::Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(bytes))
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
