//! Failures surface as the proxy sees them: the host's error, and a fresh VM afterwards.

use std::time::Duration;

use tidegate_testing::{Error, Filter, Request, SandboxLimits, WasmError};

/// A minimal proxy-wasm module whose request callback runs `body`.
fn module(body: &str) -> Vec<u8> {
    let wat = format!(
        r#"(module
  (memory (export "memory") 1)
  (global $next (mut i32) (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $size)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $headers i32) (param $eos i32) (result i32)
    {body}))"#
    );
    wat::parse_str(&wat).expect("valid WAT")
}

#[test]
fn a_trap_is_reported_and_the_vm_replaced() {
    // Traps on the first request of each VM (a flag in its memory).
    let wasm = module(
        "(if (i32.eqz (i32.load (i32.const 0))) (then (i32.store (i32.const 0) (i32.const 1)) (unreachable))) (i32.const 0)",
    );
    let mut host = Filter::from_bytes("trapper", wasm.clone()).config("");
    let error = host.try_request(Request::get("/")).expect_err("traps");
    assert!(matches!(error, Error::Filter(WasmError::Trap { .. })), "{error}");
    // A fresh VM traps again (its memory is new); the broken one would answer `Broken`.
    let again = host.try_request(Request::get("/")).expect_err("a fresh VM traps too");
    assert!(matches!(again, Error::Filter(WasmError::Trap { .. })), "{again}");

    let mut host = Filter::from_bytes("passer", module("(i32.const 0)")).config("");
    assert!(host.request(Request::get("/")).forwarded);
}

#[test]
fn the_call_timeout_applies() {
    // Shorter and longer than the default (100 ms): each filter is stopped at its own limit, and
    // never before it (a deadline that fell back to the default fails one of the two).
    for timeout in [Duration::from_millis(10), Duration::from_millis(300)] {
        assert_ne!(timeout, SandboxLimits::default().call_timeout);
        let limits = SandboxLimits {
            call_timeout: timeout,
            ..SandboxLimits::default()
        };
        let mut host = Filter::from_bytes("spinner", module("(loop $spin (br $spin)) (i32.const 0)"))
            .limits(limits)
            .config("");
        let started = std::time::Instant::now();
        let error = host.try_request(Request::get("/")).expect_err("deadline");
        let ran = started.elapsed();
        match &error {
            Error::Filter(WasmError::Deadline {
                filter,
                timeout: reported,
            }) => {
                assert_eq!(filter, "spinner", "the error names the filter: {error}");
                assert_eq!(*reported, timeout, "{error}");
            }
            other => panic!("expected the {timeout:?} deadline, got: {other}"),
        }
        assert!(ran >= timeout, "stopped after {ran:?}, before its {timeout:?} limit");
        assert!(
            error.to_string().contains("spinner"),
            "the error names the filter: {error}"
        );
    }
}

#[test]
#[should_panic(expected = "trapper")]
fn request_panics_with_the_hosts_message() {
    let mut host = Filter::from_bytes("trapper", module("(unreachable)")).config("");
    host.request(Request::get("/"));
}

#[test]
fn a_missing_module_file_is_a_clear_error() {
    let error = Filter::load("/nonexistent/filter.wasm")
        .try_config("")
        .expect_err("no file");
    assert!(error.to_string().contains("/nonexistent/filter.wasm"), "{error}");
}
