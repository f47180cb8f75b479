//! L4 connections through a stream context: bytes both ways, pauses, and closing a side.

use tidegate_testing::{Filter, FilterAction};

/// An L4 filter: upper-cases nothing, but prefixes each client chunk with `>` (through
/// `proxy_set_buffer_bytes`), holds upstream bytes until the upstream ends, and closes the
/// upstream side when the client sends `QUIT`.
fn module() -> Vec<u8> {
    let wat = r#"(module
  (import "env" "proxy_set_buffer_bytes" (func $set_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_close_stream" (func $close_stream (param i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) ">")
  (global $next (mut i32) (i32.const 1024))
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $at i32)
    (local.set $at (global.get $next))
    (global.set $next (i32.add (global.get $next) (local.get $size)))
    (local.get $at))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_new_connection") (param i32) (result i32) (i32.const 0))
  (func (export "proxy_on_downstream_data") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    ;; QUIT (first four bytes) closes the upstream side
    (drop (call $get_buffer (i32.const 2) (i32.const 0) (i32.const 4) (i32.const 32) (i32.const 36)))
    (if (i32.and (i32.eq (i32.load (i32.const 36)) (i32.const 4))
                 (i32.eq (i32.load (i32.load (i32.const 32))) (i32.const 0x54495551)))
      (then (drop (call $close_stream (i32.const 3)))))
    (drop (call $set_buffer (i32.const 2) (i32.const 0) (i32.const 0) (i32.const 16) (i32.const 1)))
    (i32.const 0))
  (func (export "proxy_on_upstream_data") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (i32.eqz (local.get $eos))))"#;
    wat::parse_str(wat).expect("valid WAT")
}

#[test]
fn data_flows_both_ways_through_the_stream_context() {
    let mut host = Filter::from_bytes("l4", module()).config("");
    let mut connection = host.connection().expect("connection");
    assert_eq!(connection.action, FilterAction::Continue);

    let first = connection.downstream(b"hello", false).unwrap();
    assert_eq!(first.passed, b">hello");
    assert!(!first.close_upstream);

    // The filter holds upstream bytes until the upstream ends, then passes them all.
    let held = connection.upstream(b"wor", false).unwrap();
    assert_eq!(held.action, FilterAction::Pause);
    assert!(held.passed.is_empty());
    let all = connection.upstream(b"ld", true).unwrap();
    assert_eq!(all.passed, b"world");

    let quit = connection.downstream(b"QUIT", true).unwrap();
    assert!(quit.close_upstream, "the filter closed the upstream side");
    assert_eq!(quit.passed, b">QUIT");
    connection.close().unwrap();
    assert_eq!(host.instance().open_contexts(), 0, "the context ended");
}
