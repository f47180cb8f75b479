//! `Filter::build`: compiles a filter crate to `wasm32-wasip1` with cargo.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, PoisonError};

use crate::Error;

/// The target filters are built for.
pub const WASM_TARGET: &str = "wasm32-wasip1";

/// Overrides where `Filter::build` puts its build (default: `$CARGO_TARGET_DIR/tidegate-testing`,
/// else `<crate>/target/tidegate-testing`).
pub const TARGET_DIR_ENV: &str = "TIDEGATE_TESTING_TARGET_DIR";

/// Variables of the enclosing cargo run that must not leak into the nested build: it has its own
/// target, target directory and flags.
const SCRUBBED_ENV: &[&str] = &[
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_MAKEFLAGS",
    "RUSTC_WORKSPACE_WRAPPER",
];

/// Modules built by this process, by manifest: every test of a crate asks for the same one, and
/// the lock makes concurrent tests wait for one build instead of starting several.
static BUILT: Mutex<Option<HashMap<PathBuf, PathBuf>>> = Mutex::new(None);

pub(crate) fn build(manifest_dir: &Path, target_dir: Option<&Path>) -> Result<PathBuf, Error> {
    let manifest = manifest_dir.join("Cargo.toml");
    if !manifest.is_file() {
        return Err(Error::NoManifest {
            dir: manifest_dir.to_path_buf(),
        });
    }
    let manifest = manifest.canonicalize().unwrap_or(manifest);
    let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
    let built = built.get_or_insert_with(HashMap::new);
    if let Some(wasm) = built.get(&manifest) {
        return Ok(wasm.clone());
    }
    let target_dir = target_dir.map_or_else(|| default_target_dir(&manifest), Path::to_path_buf);
    let wasm = cargo_build(&manifest, &target_dir)?;
    built.insert(manifest, wasm.clone());
    Ok(wasm)
}

fn default_target_dir(manifest: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os(TARGET_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.parent().unwrap_or(Path::new(".")).join("target"));
    // A directory of its own: the `cargo test` that runs this may hold the lock on `target/`.
    base.join("tidegate-testing")
}

fn cargo_build(manifest: &Path, target_dir: &Path) -> Result<PathBuf, Error> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let mut command = Command::new(&cargo);
    command
        .arg("build")
        .arg("--manifest-path")
        .arg(manifest)
        .args(["--lib", "--release", "--target", WASM_TARGET])
        .arg("--target-dir")
        .arg(target_dir)
        .arg("--message-format=json-render-diagnostics")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = manifest.parent() {
        // So a rust-toolchain.toml next to the crate picks the toolchain, as for the author.
        command.current_dir(dir);
    }
    for var in SCRUBBED_ENV {
        command.env_remove(var);
    }
    let output = command.output().map_err(|source| Error::CargoMissing {
        cargo: cargo.to_string_lossy().into_owned(),
        source,
    })?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        if target_missing(&stderr) {
            return Err(Error::TargetMissing {
                manifest: manifest.to_path_buf(),
            });
        }
        return Err(Error::BuildFailed {
            manifest: manifest.to_path_buf(),
            status: output.status.to_string(),
            output: stderr,
        });
    }
    if stderr.contains("warning") {
        // Shown with the test's output (libtest captures it unless the test fails).
        eprintln!("{stderr}");
    }
    wasm_artifact(&String::from_utf8_lossy(&output.stdout), manifest).ok_or_else(|| Error::NoWasm {
        manifest: manifest.to_path_buf(),
    })
}

/// Whether cargo's output says the target's standard library is missing.
fn target_missing(stderr: &str) -> bool {
    stderr.contains("target may not be installed")
        || stderr.contains("can't find crate for `core`")
        || stderr.contains("can't find crate for `std`")
}

/// The `.wasm` of `manifest`'s cdylib among cargo's JSON messages.
fn wasm_artifact(messages: &str, manifest: &Path) -> Option<PathBuf> {
    let mut fallback = None;
    for line in messages.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        let is_cdylib = message["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"));
        if !is_cdylib {
            continue;
        }
        let Some(wasm) = message["filenames"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
            .find(|f| f.ends_with(".wasm"))
        else {
            continue;
        };
        let ours = message["manifest_path"]
            .as_str()
            .is_some_and(|m| Path::new(m).canonicalize().ok().as_deref() == Some(manifest));
        if ours {
            return Some(PathBuf::from(wasm));
        }
        fallback = Some(PathBuf::from(wasm));
    }
    fallback
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cdylib_among_cargo_messages() {
        let dir = tempfile::tempdir().expect("temp dir");
        let manifest = dir.path().join("Cargo.toml");
        std::fs::write(&manifest, "").expect("write");
        let manifest = manifest.canonicalize().expect("canonical");
        let messages = [
            serde_json::json!({"reason": "compiler-artifact", "manifest_path": "/elsewhere/Cargo.toml",
                "target": {"kind": ["lib"]}, "filenames": ["/t/libserde.rlib"]}),
            serde_json::json!({"reason": "compiler-artifact", "manifest_path": manifest,
                "target": {"kind": ["cdylib"]}, "filenames": ["/t/wasm32-wasip1/release/my_filter.wasm"]}),
            serde_json::json!({"reason": "build-finished", "success": true}),
        ]
        .iter()
        .map(|m| m.to_string())
        .collect::<Vec<_>>()
        .join("\n");
        assert_eq!(
            wasm_artifact(&messages, &manifest),
            Some(PathBuf::from("/t/wasm32-wasip1/release/my_filter.wasm"))
        );
        assert_eq!(wasm_artifact("not json\n", &manifest), None);
    }

    #[test]
    fn recognises_a_missing_target() {
        assert!(target_missing(
            "error[E0463]: can't find crate for `core`\n  = note: the `wasm32-wasip1` target may not be installed"
        ));
        assert!(!target_missing("error[E0308]: mismatched types"));
    }

    #[test]
    fn a_directory_without_a_manifest_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let error = build(dir.path(), None).expect_err("no Cargo.toml");
        assert!(error.to_string().contains("CARGO_MANIFEST_DIR"), "{error}");
    }
}
