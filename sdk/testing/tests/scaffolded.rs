//! `tidegate filter new` → `Filter::build` → requests through the harness: the crate a filter
//! author starts from, built for wasm32-wasip1 and run in the real host.

use std::path::PathBuf;

use serde_json::json;
use tidegate::cli::FilterNewArgs;
use tidegate_testing::{Error, Filter, Request, Response, WasmError};

/// Shared by runs, so only the scaffolded crate itself recompiles.
fn target_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("scaffolded-filters")
}

#[test]
fn the_scaffolded_filter_builds_and_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    let crate_dir = dir.path().join("hello-filter");
    let args = FilterNewArgs {
        name: "hello-filter".to_string(),
        dir: Some(crate_dir.clone()),
        tidegate_path: None,
    };
    tidegate::scaffold::new_filter(&args).expect("scaffolded");

    let wasm = Filter::build_in(&crate_dir, target_dir()).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        wasm.ends_with("wasm32-wasip1/release/hello_filter.wasm"),
        "{}",
        wasm.display()
    );
    assert_eq!(
        Filter::build_in(&crate_dir, target_dir()).expect("cached"),
        wasm,
        "a second build in the same process is the first one"
    );

    let mut host =
        Filter::load(&wasm).config(json!({"header": "x-hello", "value": "world", "requireHeader": "x-user"}));
    let denied = host.request(Request::get("/"));
    assert!(!denied.forwarded);
    assert_eq!(denied.status(), Some(403));
    assert_eq!(denied.reply_header("content-type"), Some("text/plain"));
    assert_eq!(denied.reply_body().as_deref(), Some("missing required header x-user\n"));

    assert!(host.request(Request::get("/").header("x-user", "ann")).forwarded);
    let response = host.response(Response::ok());
    assert_eq!(response.response_header("x-hello"), Some("world"));

    let error = Filter::load(&wasm)
        .try_config(json!({"value": "no header"}))
        .expect_err("refused");
    assert!(
        matches!(error, Error::Filter(WasmError::ConfigureRejected { .. })),
        "{error}"
    );
}

#[test]
fn a_crate_that_does_not_compile_reports_the_compiler() {
    let dir = tempfile::tempdir().expect("temp dir");
    let crate_dir = dir.path().join("broken");
    tidegate::scaffold::new_filter(&FilterNewArgs {
        name: "broken".to_string(),
        dir: Some(crate_dir.clone()),
        tidegate_path: None,
    })
    .expect("scaffolded");
    std::fs::write(crate_dir.join("src/lib.rs"), "pub fn f() -> u32 { \"not a number\" }\n").expect("write");
    let error = Filter::build_in(&crate_dir, target_dir()).expect_err("does not compile");
    assert!(matches!(error, Error::BuildFailed { .. }), "{error}");
    assert!(error.to_string().contains("mismatched types"), "{error}");
}
