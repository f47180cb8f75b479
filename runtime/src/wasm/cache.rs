//! An on-disk cache of compiled modules, so a restart (or a test starting the binary) does not
//! pay Cranelift again: compiling the standard router takes about a second, loading its
//! compiled artifact well under a millisecond.
//!
//! Entries are keyed by the module's sha256 and the engine's compatibility hash (wasmtime
//! version, target, settings), written to a temporary name and renamed into place, and only
//! ever read back by this process' own code. A broken or stale entry is recompiled.

use std::hash::{Hash as _, Hasher as _};
use std::path::{Path, PathBuf};

use wasmtime::{Engine, Module};

/// Where compiled modules are kept.
#[derive(Debug, Clone)]
pub struct ModuleCache {
    dir: PathBuf,
}

impl ModuleCache {
    /// `$TIDEGATE_CACHE_DIR`, else `$XDG_CACHE_HOME/tidegate/modules`, else
    /// `$HOME/.cache/tidegate/modules`; `None` when none is set or `TIDEGATE_CACHE_DIR` is empty.
    pub fn default_location() -> Option<Self> {
        let dir = match std::env::var_os("TIDEGATE_CACHE_DIR") {
            Some(dir) if dir.is_empty() => return None,
            Some(dir) => PathBuf::from(dir),
            None => std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".cache")))?
                .join("tidegate/modules"),
        };
        Some(Self { dir })
    }

    /// The compiled module for `wasm` (whose sha256 is `sha256`), from the cache when possible.
    pub fn load_or_compile(&self, engine: &Engine, wasm: &[u8], sha256: &str) -> wasmtime::Result<Module> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let path = self.dir.join(format!("{sha256}-{:016x}.cwasm", hasher.finish()));
        if path.is_file() {
            // SAFETY: the file was written by `Module::serialize` of this same engine
            // configuration (the compatibility hash is part of its name) into a directory this
            // process owns; wasmtime additionally checks the artifact's header and version.
            match unsafe { Module::deserialize_file(engine, &path) } {
                Ok(module) => return Ok(module),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "ignoring a broken compiled-module cache entry")
                }
            }
        }
        let module = Module::new(engine, wasm)?;
        if let Err(e) = self.store(&path, &module) {
            tracing::debug!(path = %path.display(), error = %e, "could not cache a compiled module");
        }
        Ok(module)
    }

    fn store(&self, path: &Path, module: &Module) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let bytes = module.serialize().map_err(std::io::Error::other)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)
    }
}
