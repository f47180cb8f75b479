//! Builds the standard filters (`filters/router`, `filters/balancer`) for wasm32-wasip1 so the
//! binary ships them (`include_bytes!` in `src/filters.rs`).
//!
//! The example filters under `filters/examples` are built in the same run (a few seconds) and
//! left in OUT_DIR, whose path the crate's tests read from `TIDEGATE_EXAMPLE_FILTERS`.
//!
//! This runs a nested `cargo build` with its own target directory: the outer build holds the lock
//! on the main one, and the filters need another target and profile anyway.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (package, artifact): the standard filters the binary ships, then the example filters the
/// tests attach through WasmFilter objects (found through `TIDEGATE_EXAMPLE_FILTERS`).
const FILTERS: &[(&str, &str)] = &[
    ("tidegate-router", "tidegate_router"),
    ("tidegate-balancer", "tidegate_balancer"),
    ("tidegate-unavailable", "tidegate_unavailable"),
    ("body-rewrite", "body_rewrite"),
    ("header-rewrite", "header_rewrite"),
    ("hostile", "hostile"),
    ("http-auth", "http_auth"),
    ("identity", "identity"),
    ("noop", "noop"),
    ("shared-queue", "shared_queue"),
    ("tcp-guard", "tcp_guard"),
    ("tick-counter", "tick_counter"),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .expect("runtime/ sits in the workspace")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // target/<profile>/build/tidegate-<hash>/out → target/<profile>/wasm-filters
    let target_dir = out_dir
        .ancestors()
        .nth(3)
        .map(|p| p.join("wasm-filters"))
        .unwrap_or_else(|| out_dir.join("wasm-filters"));

    for dir in ["filters", "sdk"] {
        rerun_if_changed_tree(&workspace.join(dir));
    }
    println!("cargo:rerun-if-changed={}", workspace.join("Cargo.lock").display());

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args(["build", "--target", "wasm32-wasip1", "--profile", "wasm"])
        .arg("--target-dir")
        .arg(&target_dir);
    for (package, _) in FILTERS {
        cmd.args(["-p", package]);
    }
    // The outer build's flags are for the host target; none of them applies to wasm.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("could not run cargo to build the standard filters: {e}"));
    if !status.success() {
        panic!(
            "building the standard WASM filters failed (see above). If the error says the target \
             wasm32-wasip1 is not installed, run: rustup target add wasm32-wasip1"
        );
    }
    for (_, artifact) in FILTERS {
        let wasm = target_dir.join("wasm32-wasip1/wasm").join(format!("{artifact}.wasm"));
        let dest = out_dir.join(format!("{artifact}.wasm"));
        std::fs::copy(&wasm, &dest).unwrap_or_else(|e| panic!("copy {} → {}: {e}", wasm.display(), dest.display()));
    }
    println!("cargo:rustc-env=TIDEGATE_EXAMPLE_FILTERS={}", out_dir.display());
}

fn rerun_if_changed_tree(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.file_name().is_some_and(|n| n == "target") {
            continue;
        }
        if path.is_dir() {
            rerun_if_changed_tree(&path);
        } else {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
