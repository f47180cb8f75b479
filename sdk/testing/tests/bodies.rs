//! Bodies and trailers go through the filter as through a stage of the proxy's chain.

use tidegate_testing::{Filter, Request, Response, TestHost};

/// A proxy-wasm module that pauses request headers when a body follows, buffers the request
/// body until its end and replaces it with `REPLACED`, and adds a trailer `x-seen: yes` to the
/// request trailers. The response passes untouched.
fn rewriter() -> TestHost {
    let wat = r#"(module
  (import "env" "proxy_set_buffer_bytes" (func $set_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "REPLACED")
  (data (i32.const 32) "x-seen")
  (data (i32.const 48) "yes")
  (global $next (mut i32) (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $size)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $headers i32) (param $eos i32) (result i32)
    (if (result i32) (local.get $eos) (then (i32.const 0)) (else (i32.const 1))))
  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (if (i32.eqz (local.get $eos)) (then (return (i32.const 1))))
    (drop (call $set_buffer (i32.const 0) (i32.const 0) (local.get $size) (i32.const 16) (i32.const 8)))
    (i32.const 0))
  (func (export "proxy_on_request_trailers") (param $ctx i32) (param $n i32) (result i32)
    (drop (call $add_header (i32.const 1) (i32.const 32) (i32.const 6) (i32.const 48) (i32.const 3)))
    (i32.const 0)))"#;
    Filter::from_bytes("rewriter", wat::parse_str(wat).expect("valid WAT")).config("")
}

#[test]
fn a_paused_body_is_buffered_until_its_end() {
    let mut host = rewriter();
    let outcome = host.request(Request::post("/upload").body("ab").body("cd"));
    assert!(outcome.forwarded, "{outcome:?}");
    assert_eq!(
        outcome.body_text(),
        "REPLACED",
        "the filter saw and replaced the whole body"
    );

    let response = host.response(Response::ok().body("untouched"));
    assert_eq!(response.body, b"untouched");
}

#[test]
fn trailers_follow_the_body() {
    let mut host = rewriter();
    let outcome = host.request(Request::post("/").body("x").trailer("x-checksum", "1"));
    assert!(outcome.forwarded);
    // The trailers ended the stream: the body callback never saw its end, so the buffered body
    // is released as it was.
    assert_eq!(outcome.body_text(), "x");
    assert_eq!(outcome.trailer("x-checksum"), Some("1"));
    assert_eq!(outcome.trailer("x-seen"), Some("yes"));
}

#[test]
fn a_stream_that_has_not_ended_stays_held() {
    let mut host = rewriter();
    let outcome = host.request(Request::post("/").body("partial").end_of_stream(false));
    assert!(!outcome.forwarded, "the filter still holds the headers and the body");
    assert!(outcome.body.is_empty());
    assert!(
        host.try_response(Response::ok()).is_err(),
        "no response to a request still held"
    );

    // Headers alone, ending the stream: the filter continues at once.
    assert!(host.request(Request::get("/")).forwarded);
}
