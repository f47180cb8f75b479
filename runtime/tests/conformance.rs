//! Gateway API conformance, from the case data in `shared/conformance/gateway-api/` (see its
//! README): every case runs against the real `tidegate run` and real `tidegate echo` backends.
//!
//! `cargo test --release --test conformance` runs all cases (one line each, a summary, and
//! `target/conformance/summary.json`). The test fails iff a case listed in
//! `tests/conformance-expected-pass.txt` does not pass.
//!
//! Environment: `TIDEGATE_CONFORMANCE_CASES=Name1,Name2` runs only those cases;
//! `TIDEGATE_CONFORMANCE_DIR=DIR` reads the case files from DIR instead.

mod support;

#[test]
fn gateway_api_conformance() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let (_results, not_passing) = runtime
        .block_on(support::runner::run_suite())
        .unwrap_or_else(|e| panic!("conformance suite could not run: {e}"));
    assert!(
        not_passing.is_empty(),
        "cases expected to pass did not:\n  {}",
        not_passing.join("\n  ")
    );
}
