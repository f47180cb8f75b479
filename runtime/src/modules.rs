//! Loading user filter modules (WasmFilter `spec.module`): read, verify the pinned sha256,
//! compile (through the on-disk cache), and notice when a module file changes so the new
//! module is published without a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::SystemTime;

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
    /// Keyed by (file, filter name): the name is part of the module (logs, metrics).
    entries: HashMap<(PathBuf, String), Entry>,
}

impl ModuleRegistry {
    pub fn new(runtime: WasmRuntime) -> Self {
        Self {
            runtime,
            entries: HashMap::new(),
        }
    }

    /// The module of every plan, loading only what is new or changed on disk.
    pub fn resolve(&mut self, plans: &[UserFilterPlan]) -> Vec<ResolvedFilter> {
        let mut wanted = Vec::new();
        let resolved = plans
            .iter()
            .map(|plan| {
                let ModuleLocation::File(path) = &plan.module;
                let key = (path.clone(), plan.name.clone());
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
                wanted.push(key.clone());
                let module = self
                    .entries
                    .get(&key)
                    .map(|e| e.module.clone())
                    .unwrap_or_else(|| Err("not loaded".into()));
                let module = module.and_then(|m| check_digest(plan, m));
                ResolvedFilter {
                    plan: plan.clone(),
                    module,
                }
            })
            .collect();
        self.entries.retain(|key, _| wanted.contains(key));
        resolved
    }

    /// Whether a module file changed (or appeared, or vanished) since it was loaded.
    pub fn changed(&self) -> bool {
        self.entries
            .iter()
            .any(|((path, _), entry)| stamp_of(path) != entry.stamp)
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
