//! What can go wrong building, loading or running a filter under test.

use std::path::PathBuf;

use tidegate::wasm::WasmError;

/// An error of the test harness. `Display` says what failed and what would fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `Filter::build` was given a directory without a `Cargo.toml`.
    #[error(
        "no Cargo.toml in {dir}: Filter::build takes the filter crate's directory, \
         usually env!(\"CARGO_MANIFEST_DIR\")"
    )]
    NoManifest {
        /// The directory given.
        dir: PathBuf,
    },
    /// cargo could not be started.
    #[error("could not run `{cargo}` to build the filter: {source}")]
    CargoMissing {
        /// The cargo command tried (`$CARGO`, else `cargo`).
        cargo: String,
        /// Why it could not start.
        source: std::io::Error,
    },
    /// The toolchain building the filter has no `wasm32-wasip1` standard library.
    #[error(
        "the wasm32-wasip1 target is not installed for the toolchain that builds {manifest}; \
         install it with: rustup target add wasm32-wasip1"
    )]
    TargetMissing {
        /// The filter's manifest.
        manifest: PathBuf,
    },
    /// `cargo build --target wasm32-wasip1 --release` failed (the compiler's output is included).
    #[error("building {manifest} for wasm32-wasip1 failed ({status}):\n{output}")]
    BuildFailed {
        /// The filter's manifest.
        manifest: PathBuf,
        /// cargo's exit status.
        status: String,
        /// What cargo printed on stderr.
        output: String,
    },
    /// The build succeeded but produced no `.wasm`.
    #[error(
        "building {manifest} produced no .wasm: a filter crate needs `crate-type = [\"cdylib\"]` \
         in the [lib] section of its Cargo.toml"
    )]
    NoWasm {
        /// The filter's manifest.
        manifest: PathBuf,
    },
    /// The module file could not be read.
    #[error("reading the filter module {path}: {source}")]
    Read {
        /// The path given to `Filter::load`.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The host refused or failed the filter: it does not load, rejects its configuration, or
    /// trapped, overran its deadline or its memory cap during a callback.
    #[error(transparent)]
    Filter(#[from] WasmError),
    /// The harness was used out of order (for example `response` before `request`).
    #[error("{0}")]
    Usage(String),
}
