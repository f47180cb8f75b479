//! Tests of the WASM host with hand-written WAT guests.
//!
//! Guests record hostcall statuses and returned `(ptr, len)` pairs in a results area of their
//! memory (`$rec`, `$keep`); the tests read it back and assert in Rust, which keeps the WAT small
//! and the failures readable.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use super::*;
use crate::wasm::codec::{self, SerializedMap};

/// One engine for the whole test binary (each engine reserves address space for its pool).
static RUNTIME: LazyLock<WasmRuntime> = LazyLock::new(|| WasmRuntime::with_max_instances(200).expect("engine"));

const RESULTS: usize = 0x100;
const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const BAD_ARGUMENT: u32 = 2;
const INVALID_MEMORY_ACCESS: u32 = 6;
const EMPTY: u32 = 7;
const CAS_MISMATCH: u32 = 8;
const INTERNAL_FAILURE: u32 = 10;
const WASI_BADF: u32 = 8;
const WASI_FAULT: u32 = 21;
const WASI_INVAL: u32 = 28;

/// The imports the test guests use (a subset; [`every_abi_import_links`] checks them all).
const IMPORTS: &str = r#"
  (import "env" "proxy_log" (func $log (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_log_level" (func $get_log_level (param i32) (result i32)))
  (import "env" "proxy_get_current_time_nanoseconds" (func $now (param i32) (result i32)))
  (import "env" "proxy_set_tick_period_milliseconds" (func $set_tick (param i32) (result i32)))
  (import "env" "proxy_get_buffer_bytes" (func $get_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_buffer_bytes" (func $set_buffer (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_pairs" (func $get_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_set_header_map_pairs" (func $set_pairs (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_add_header_map_value" (func $add_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_replace_header_map_value" (func $replace_header (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_remove_header_map_value" (func $remove_header (param i32 i32 i32) (result i32)))
  (import "env" "proxy_get_header_map_size" (func $get_map_size (param i32 i32) (result i32)))
  (import "env" "proxy_continue_stream" (func $continue_stream (param i32) (result i32)))
  (import "env" "proxy_close_stream" (func $close_stream (param i32) (result i32)))
  (import "env" "proxy_send_local_response" (func $send_local_response (param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_property" (func $get_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_property" (func $set_property (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_set_effective_context" (func $set_effective_context (param i32) (result i32)))
  (import "env" "proxy_done" (func $done (result i32)))
  (import "env" "proxy_set_shared_data" (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_shared_data" (func $get_shared (param i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_define_metric" (func $define_metric (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_increment_metric" (func $increment_metric (param i32 i64) (result i32)))
  (import "env" "proxy_record_metric" (func $record_metric (param i32 i64) (result i32)))
  (import "env" "proxy_get_metric" (func $get_metric (param i32 i32) (result i32)))
  (import "env" "proxy_http_call" (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_call" (func $grpc_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_get_status" (func $get_status (param i32 i32 i32) (result i32)))
  (import "env" "proxy_call_foreign_function" (func $ffi (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_register_shared_queue" (func $register_queue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_dequeue_shared_queue" (func $dequeue (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "random_get" (func $random_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "clock_time_get" (func $clock_time_get (param i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "args_sizes_get" (func $args_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $environ_sizes_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_prestat_get" (func $fd_prestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
"#;

/// A bump allocator that grows memory as needed.
const BUMP_ALLOCATOR: &str = r#"
  (global $heap (mut i32) (i32.const 0x10000))
  (func $alloc (export "proxy_on_memory_allocate") (param $size i32) (result i32)
    (local $ptr i32) (local $end i32)
    (local.set $ptr (global.get $heap))
    (local.set $end (i32.add (local.get $ptr) (local.get $size)))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 0x10000)))
      (then (drop (memory.grow (i32.add (i32.const 1)
        (i32.shr_u (i32.sub (local.get $end) (i32.mul (memory.size) (i32.const 0x10000))) (i32.const 16)))))))
    (global.set $heap (i32.add (local.get $end) (i32.const 8)))
    (local.get $ptr))
"#;

/// `$rec(slot, v)` stores a result; `$keep(slot)` stores the returned (ptr, len) at slot, slot+1.
const HELPERS: &str = r#"
  (func $rec (param $slot i32) (param $v i32)
    (i32.store (i32.add (i32.const 0x100) (i32.shl (local.get $slot) (i32.const 2))) (local.get $v)))
  (func $keep (param $slot i32)
    (call $rec (local.get $slot) (i32.load (i32.const 0x80)))
    (call $rec (i32.add (local.get $slot) (i32.const 1)) (i32.load (i32.const 0x84))))
  (func (export "proxy_abi_version_0_2_1"))
"#;

/// Builds a guest: constant data is placed with [`Wat::s`], callbacks come in `body`.
struct Wat {
    data: String,
    next: u32,
    pages: u32,
    allocator: String,
}

impl Wat {
    fn new() -> Self {
        Self {
            data: String::new(),
            next: 0x1000,
            pages: 2,
            allocator: BUMP_ALLOCATOR.to_string(),
        }
    }

    /// Places `bytes` in a data segment; returns `(i32.const ptr) (i32.const len)`.
    fn s(&mut self, bytes: impl AsRef<[u8]>) -> String {
        let (at, len) = self.place(bytes.as_ref());
        format!("(i32.const {at}) (i32.const {len})")
    }

    /// Places `bytes` in a data segment; returns `(ptr, len)`.
    fn place(&mut self, bytes: &[u8]) -> (u32, usize) {
        let at = self.next;
        self.next += (bytes.len() as u32 + 8) & !7;
        assert!(self.next < 0x10000, "test data overflows its area");
        let mut escaped = String::new();
        for &b in bytes {
            if b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ' {
                escaped.push(b as char);
            } else {
                escaped.push_str(&format!("\\{b:02x}"));
            }
        }
        self.data
            .push_str(&format!("  (data (i32.const {at}) \"{escaped}\")\n"));
        (at, bytes.len())
    }

    fn module(&self, body: &str) -> Vec<u8> {
        let wat = format!(
            "(module\n{IMPORTS}\n  (memory (export \"memory\") {pages})\n{alloc}\n{HELPERS}\n{data}\n{body}\n)",
            pages = self.pages,
            alloc = self.allocator,
            data = self.data
        );
        match wat::parse_str(&wat) {
            Ok(wasm) => wasm,
            Err(e) => panic!("invalid test WAT: {e}\n{wat}"),
        }
    }
}

fn load(name: &str, wasm: &[u8]) -> FilterModule {
    RUNTIME.load(name, wasm).unwrap_or_else(|e| panic!("load {name}: {e}"))
}

fn start(name: &str, wasm: &[u8], config: &[u8]) -> FilterInstance {
    FilterInstance::start(&load(name, wasm), config, &SandboxLimits::default())
        .unwrap_or_else(|e| panic!("start {name}: {e}"))
}

fn slot(instance: &FilterInstance, i: usize) -> u32 {
    let mem = instance.guest_memory();
    let at = RESULTS + 4 * i;
    u32::from_le_bytes([mem[at], mem[at + 1], mem[at + 2], mem[at + 3]])
}

/// The bytes a hostcall returned, kept by `$keep(i)`.
fn kept(instance: &FilterInstance, i: usize) -> Vec<u8> {
    let (ptr, len) = (slot(instance, i) as usize, slot(instance, i + 1) as usize);
    instance.guest_memory()[ptr..ptr + len].to_vec()
}

fn request() -> HttpExchange {
    let mut ex = HttpExchange {
        request_headers: HeaderList::from_pairs([
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "example.com"),
            (":path", "/api/v1?page=2"),
            ("x-user", "alice"),
            ("x-remove", "1"),
            ("x-remove", "2"),
            ("x-empty", ""),
        ]),
        ..Default::default()
    };
    ex.properties.set("source.address", "10.0.0.7:5555");
    ex.properties.set("tidegate.listener_port", "8080");
    ex
}

/// Runs one request through on_request_headers and finish.
fn run_request(instance: &mut FilterInstance, ex: &mut HttpExchange) -> Result<FilterAction, WasmError> {
    let ctx = instance.create_http_context()?;
    let action = instance.on_request_headers(ctx, ex, true);
    instance.finish_http_context(ctx, ex);
    action
}

// === loading ===

#[test]
fn start_runs_the_lifecycle_and_reads_the_plugin_configuration() {
    let w = Wat::new();
    let body = r#"
  (func (export "_initialize") (call $rec (i32.const 20) (i32.const 1)))
  (func (export "proxy_on_context_create") (param $ctx i32) (param $parent i32)
    (call $rec (i32.const 21) (local.get $ctx)) (call $rec (i32.const 22) (local.get $parent)))
  (func (export "proxy_on_vm_start") (param $root i32) (param $size i32) (result i32)
    (call $rec (i32.const 23) (local.get $size)) (i32.const 1))
  (func (export "proxy_on_configure") (param $root i32) (param $size i32) (result i32)
    (call $rec (i32.const 0) (local.get $root))
    (call $rec (i32.const 1) (local.get $size))
    (call $rec (i32.const 2) (call $get_buffer (i32.const 7) (i32.const 0) (local.get $size) (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 3))
    (call $rec (i32.const 5) (call $get_buffer (i32.const 6) (i32.const 0) (i32.const -1) (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 6))
    (call $rec (i32.const 8) (call $get_buffer (i32.const 7) (i32.const 4) (i32.const 3) (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 9))
    (call $rec (i32.const 11) (call $get_buffer (i32.const 7) (i32.const 1000) (i32.const 3) (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 12))
    (call $rec (i32.const 14) (call $set_buffer (i32.const 7) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
    (i32.const 1))
"#;
    let config = br#"{"routes":[]}"#;
    let instance = start("lifecycle", &w.module(body), config);
    assert_eq!(slot(&instance, 20), 1, "_initialize ran");
    assert_eq!(
        (slot(&instance, 21), slot(&instance, 22)),
        (1, 0),
        "root context created with parent 0"
    );
    assert_eq!(slot(&instance, 23), 0, "no VM configuration");
    assert_eq!(slot(&instance, 0), 1);
    assert_eq!(slot(&instance, 1), config.len() as u32);
    assert_eq!(slot(&instance, 2), OK);
    assert_eq!(kept(&instance, 3), config);
    assert_eq!(
        (slot(&instance, 5), slot(&instance, 6), slot(&instance, 7)),
        (OK, 0, 0),
        "empty buffer is (0, 0)"
    );
    assert_eq!((slot(&instance, 8), kept(&instance, 9)), (OK, config[4..7].to_vec()));
    assert_eq!(
        (slot(&instance, 11), slot(&instance, 12), slot(&instance, 13)),
        (OK, 0, 0),
        "window past the end is empty"
    );
    assert_eq!(slot(&instance, 14), NOT_FOUND, "configuration is read-only");
    assert!(!instance.is_broken());
    assert_eq!(instance.name(), "lifecycle");
}

#[test]
fn load_reports_sha256_and_name() {
    let wasm = Wat::new().module("");
    let module = load("hashed", &wasm);
    assert_eq!(module.name(), "hashed");
    assert_eq!(module.sha256().len(), 64);
    assert!(
        module
            .sha256()
            .chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_eq!(load("hashed-again", &wasm).sha256(), module.sha256());
}

#[test]
fn configure_and_vm_start_can_reject() {
    let wasm = Wat::new().module(r#"(func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 0))"#);
    let err = FilterInstance::start(&load("rejects-config", &wasm), b"{}", &SandboxLimits::default()).unwrap_err();
    assert!(
        matches!(&err, WasmError::ConfigureRejected { filter } if filter == "rejects-config"),
        "{err}"
    );
    assert!(err.to_string().contains("spec.config"), "{err}");

    let wasm = Wat::new().module(r#"(func (export "proxy_on_vm_start") (param i32 i32) (result i32) (i32.const 0))"#);
    let err = FilterInstance::start(&load("rejects-vm", &wasm), b"", &SandboxLimits::default()).unwrap_err();
    assert!(matches!(err, WasmError::VmStartRejected { .. }), "{err}");
}

#[test]
fn not_webassembly_fails_to_compile() {
    let err = RUNTIME.load("garbage", b"definitely not wasm").unwrap_err();
    assert!(
        matches!(&err, WasmError::Compile { filter, .. } if filter == "garbage"),
        "{err}"
    );
}

#[test]
fn unknown_imports_are_named() {
    let wasm = wat::parse_str(
        r#"(module
          (import "env" "proxy_evil" (func (param i32) (result i32)))
          (import "js" "alert" (func))
          (import "env" "proxy_log" (func (param i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (func (export "proxy_abi_version_0_2_1")))"#,
    )
    .unwrap();
    let err = RUNTIME.load("importer", &wasm).unwrap_err();
    let WasmError::MissingImport { filter, imports } = &err else {
        panic!("{err}")
    };
    assert_eq!(filter, "importer");
    assert_eq!(imports.len(), 2, "{imports:?}");
    let text = err.to_string();
    assert!(
        text.contains("`env::proxy_evil` (func (i32) -> i32)") && text.contains("`js::alert`"),
        "{text}"
    );
}

#[test]
fn an_import_with_the_wrong_signature_fails_to_link() {
    let wasm = wat::parse_str(
        r#"(module
          (import "env" "proxy_log" (func (param i32) (result i32)))
          (func (export "proxy_abi_version_0_2_1")))"#,
    )
    .unwrap();
    let err = RUNTIME.load("bad-sig", &wasm).unwrap_err();
    assert!(matches!(err, WasmError::Link { .. }), "{err}");
    assert!(err.to_string().contains("proxy_log"), "{err}");
}

#[test]
fn the_abi_version_marker_is_required() {
    let err = RUNTIME
        .load("no-marker", &wat::parse_str("(module)").unwrap())
        .unwrap_err();
    assert!(matches!(err, WasmError::AbiVersion { .. }), "{err}");
    let old = wat::parse_str(r#"(module (func (export "proxy_abi_version_0_1_0")))"#).unwrap();
    let err = RUNTIME.load("old-abi", &old).unwrap_err();
    assert!(err.to_string().contains("proxy_abi_version_0_1_0"), "{err}");
    let v020 = wat::parse_str(r#"(module (func (export "proxy_abi_version_0_2_0")))"#).unwrap();
    RUNTIME.load("abi-0-2-0", &v020).expect("v0.2.0 is accepted");
}

#[test]
fn callbacks_with_the_wrong_signature_are_refused() {
    let wasm =
        Wat::new().module(r#"(func (export "proxy_on_request_headers") (param i32 i32) (result i32) (i32.const 0))"#);
    let err = RUNTIME.load("bad-callback", &wasm).unwrap_err();
    let WasmError::BadExport {
        export,
        expected,
        found,
        ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(export, "proxy_on_request_headers");
    assert_eq!(expected, "(i32, i32, i32) -> i32");
    assert_eq!(found, "(i32, i32) -> i32");
}

/// Every proxy-wasm v0.2.1 host function and every WASI preview 1 function, with the exact
/// signatures guests import.
#[test]
fn every_abi_import_links() {
    const ENV: &[(&str, &str)] = &[
        ("proxy_log", "(param i32 i32 i32) (result i32)"),
        ("proxy_get_log_level", "(param i32) (result i32)"),
        ("proxy_get_current_time_nanoseconds", "(param i32) (result i32)"),
        ("proxy_set_tick_period_milliseconds", "(param i32) (result i32)"),
        ("proxy_get_buffer_bytes", "(param i32 i32 i32 i32 i32) (result i32)"),
        ("proxy_set_buffer_bytes", "(param i32 i32 i32 i32 i32) (result i32)"),
        ("proxy_get_buffer_status", "(param i32 i32 i32) (result i32)"),
        ("proxy_get_header_map_pairs", "(param i32 i32 i32) (result i32)"),
        ("proxy_set_header_map_pairs", "(param i32 i32 i32) (result i32)"),
        ("proxy_get_header_map_value", "(param i32 i32 i32 i32 i32) (result i32)"),
        ("proxy_add_header_map_value", "(param i32 i32 i32 i32 i32) (result i32)"),
        (
            "proxy_replace_header_map_value",
            "(param i32 i32 i32 i32 i32) (result i32)",
        ),
        ("proxy_remove_header_map_value", "(param i32 i32 i32) (result i32)"),
        ("proxy_get_header_map_size", "(param i32 i32) (result i32)"),
        ("proxy_continue_stream", "(param i32) (result i32)"),
        ("proxy_close_stream", "(param i32) (result i32)"),
        (
            "proxy_send_local_response",
            "(param i32 i32 i32 i32 i32 i32 i32 i32) (result i32)",
        ),
        ("proxy_get_property", "(param i32 i32 i32 i32) (result i32)"),
        ("proxy_set_property", "(param i32 i32 i32 i32) (result i32)"),
        (
            "proxy_http_call",
            "(param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)",
        ),
        ("proxy_get_status", "(param i32 i32 i32) (result i32)"),
        ("proxy_set_effective_context", "(param i32) (result i32)"),
        ("proxy_done", "(result i32)"),
        ("proxy_set_shared_data", "(param i32 i32 i32 i32 i32) (result i32)"),
        ("proxy_get_shared_data", "(param i32 i32 i32 i32 i32) (result i32)"),
        ("proxy_register_shared_queue", "(param i32 i32 i32) (result i32)"),
        ("proxy_resolve_shared_queue", "(param i32 i32 i32 i32 i32) (result i32)"),
        ("proxy_enqueue_shared_queue", "(param i32 i32 i32) (result i32)"),
        ("proxy_dequeue_shared_queue", "(param i32 i32 i32) (result i32)"),
        (
            "proxy_grpc_call",
            "(param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)",
        ),
        (
            "proxy_grpc_stream",
            "(param i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)",
        ),
        ("proxy_grpc_send", "(param i32 i32 i32 i32) (result i32)"),
        ("proxy_grpc_cancel", "(param i32) (result i32)"),
        ("proxy_grpc_close", "(param i32) (result i32)"),
        ("proxy_define_metric", "(param i32 i32 i32 i32) (result i32)"),
        ("proxy_increment_metric", "(param i32 i64) (result i32)"),
        ("proxy_record_metric", "(param i32 i64) (result i32)"),
        ("proxy_get_metric", "(param i32 i32) (result i32)"),
        (
            "proxy_call_foreign_function",
            "(param i32 i32 i32 i32 i32 i32) (result i32)",
        ),
    ];
    const WASI: &[(&str, &str)] = &[
        ("args_get", "(param i32 i32) (result i32)"),
        ("args_sizes_get", "(param i32 i32) (result i32)"),
        ("environ_get", "(param i32 i32) (result i32)"),
        ("environ_sizes_get", "(param i32 i32) (result i32)"),
        ("clock_res_get", "(param i32 i32) (result i32)"),
        ("clock_time_get", "(param i32 i64 i32) (result i32)"),
        ("fd_advise", "(param i32 i64 i64 i32) (result i32)"),
        ("fd_allocate", "(param i32 i64 i64) (result i32)"),
        ("fd_close", "(param i32) (result i32)"),
        ("fd_datasync", "(param i32) (result i32)"),
        ("fd_fdstat_get", "(param i32 i32) (result i32)"),
        ("fd_fdstat_set_flags", "(param i32 i32) (result i32)"),
        ("fd_fdstat_set_rights", "(param i32 i64 i64) (result i32)"),
        ("fd_filestat_get", "(param i32 i32) (result i32)"),
        ("fd_filestat_set_size", "(param i32 i64) (result i32)"),
        ("fd_filestat_set_times", "(param i32 i64 i64 i32) (result i32)"),
        ("fd_pread", "(param i32 i32 i32 i64 i32) (result i32)"),
        ("fd_prestat_get", "(param i32 i32) (result i32)"),
        ("fd_prestat_dir_name", "(param i32 i32 i32) (result i32)"),
        ("fd_pwrite", "(param i32 i32 i32 i64 i32) (result i32)"),
        ("fd_read", "(param i32 i32 i32 i32) (result i32)"),
        ("fd_readdir", "(param i32 i32 i32 i64 i32) (result i32)"),
        ("fd_renumber", "(param i32 i32) (result i32)"),
        ("fd_seek", "(param i32 i64 i32 i32) (result i32)"),
        ("fd_sync", "(param i32) (result i32)"),
        ("fd_tell", "(param i32 i32) (result i32)"),
        ("fd_write", "(param i32 i32 i32 i32) (result i32)"),
        ("path_create_directory", "(param i32 i32 i32) (result i32)"),
        ("path_filestat_get", "(param i32 i32 i32 i32 i32) (result i32)"),
        (
            "path_filestat_set_times",
            "(param i32 i32 i32 i32 i64 i64 i32) (result i32)",
        ),
        ("path_link", "(param i32 i32 i32 i32 i32 i32 i32) (result i32)"),
        ("path_open", "(param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)"),
        ("path_readlink", "(param i32 i32 i32 i32 i32 i32) (result i32)"),
        ("path_remove_directory", "(param i32 i32 i32) (result i32)"),
        ("path_rename", "(param i32 i32 i32 i32 i32 i32) (result i32)"),
        ("path_symlink", "(param i32 i32 i32 i32 i32) (result i32)"),
        ("path_unlink_file", "(param i32 i32 i32) (result i32)"),
        ("poll_oneoff", "(param i32 i32 i32 i32) (result i32)"),
        ("proc_exit", "(param i32)"),
        ("proc_raise", "(param i32) (result i32)"),
        ("sched_yield", "(result i32)"),
        ("random_get", "(param i32 i32) (result i32)"),
        ("sock_accept", "(param i32 i32 i32) (result i32)"),
        ("sock_recv", "(param i32 i32 i32 i32 i32 i32) (result i32)"),
        ("sock_send", "(param i32 i32 i32 i32 i32) (result i32)"),
        ("sock_shutdown", "(param i32 i32) (result i32)"),
    ];
    assert_eq!(ENV.len(), 39, "proxy-wasm v0.2.1 defines 39 host functions");
    assert_eq!(WASI.len(), 46, "wasi_snapshot_preview1 has 46 functions");
    let mut imports = String::new();
    for (module, list) in [("env", ENV), ("wasi_snapshot_preview1", WASI)] {
        for (name, sig) in list {
            imports.push_str(&format!("(import \"{module}\" \"{name}\" (func {sig}))\n"));
        }
    }
    let wasm = wat::parse_str(format!(
        "(module {imports} (memory (export \"memory\") 1) (func (export \"proxy_abi_version_0_2_1\")))"
    ))
    .unwrap();
    let module = load("all-imports", &wasm);
    FilterInstance::start(&module, b"", &SandboxLimits::default()).expect("starts");
    // And nothing else is provided.
    assert_eq!(RUNTIME.inner.provided.len(), ENV.len() + WASI.len());
}

// === HTTP callbacks ===

#[test]
fn request_header_hostcalls_read_and_change_the_request() {
    let mut w = Wat::new();
    let body = format!(
        r#"
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (call $rec (i32.const 0) (local.get $ctx))
    (call $rec (i32.const 1) (local.get $n))
    (call $rec (i32.const 2) (local.get $eos))
    (call $rec (i32.const 3) (call $get_header (i32.const 0) {path} (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 4))
    (call $rec (i32.const 6) (call $get_header (i32.const 0) {x_user_upper} (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 7))
    (call $rec (i32.const 9) (call $get_header (i32.const 0) {missing} (i32.const 0x80) (i32.const 0x84)))
    (call $rec (i32.const 10) (call $get_header (i32.const 0) {x_empty} (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 11))
    (call $rec (i32.const 13) (call $replace_header (i32.const 0) {x_tidegate} {yes}))
    (call $rec (i32.const 14) (call $replace_header (i32.const 0) {x_user} {bob}))
    (call $rec (i32.const 15) (call $add_header (i32.const 0) {x_multi} {a}))
    (call $rec (i32.const 16) (call $add_header (i32.const 0) {x_multi} {b}))
    (call $rec (i32.const 17) (call $remove_header (i32.const 0) {x_remove}))
    (call $rec (i32.const 18) (call $remove_header (i32.const 0) {missing}))
    (call $rec (i32.const 19) (call $set_property {cluster_path} {backend}))
    (call $rec (i32.const 20) (call $get_property {request_path} (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 21))
    (call $rec (i32.const 23) (call $get_property {source_address} (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 24))
    (call $rec (i32.const 26) (call $get_property {plugin_name} (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 27))
    (call $rec (i32.const 29) (call $get_property {url_path} (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 30))
    (call $rec (i32.const 32) (call $get_property {query} (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 33))
    (call $rec (i32.const 35) (call $get_property {header_prop} (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 36))
    (call $rec (i32.const 38) (call $get_property {cluster_path} (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 39))
    (call $rec (i32.const 41) (call $get_pairs (i32.const 0) (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 42))
    (call $rec (i32.const 44) (call $get_map_size (i32.const 0) (i32.const 0x90)))
    (call $rec (i32.const 45) (i32.load (i32.const 0x90)))
    (call $rec (i32.const 46) (call $get_property {unknown} (i32.const 0x80) (i32.const 0x84)))
    (call $rec (i32.const 47) (call $get_property {response_code} (i32.const 0x80) (i32.const 0x84)))
    (call $rec (i32.const 48) (call $get_pairs (i32.const 2) (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 49))
    (call $rec (i32.const 51) (call $get_pairs (i32.const 1) (i32.const 0x80) (i32.const 0x84)))
    (call $rec (i32.const 52) (call $add_header (i32.const 1) {x_multi} {a}))
    (call $rec (i32.const 53) (call $get_pairs (i32.const 5) (i32.const 0x80) (i32.const 0x84)))
    (call $rec (i32.const 54) (call $get_pairs (i32.const 99) (i32.const 0x80) (i32.const 0x84)))
    (i32.const 0))
"#,
        path = w.s(":path"),
        x_user_upper = w.s("X-User"),
        missing = w.s("x-missing"),
        x_empty = w.s("x-empty"),
        x_tidegate = w.s("x-tidegate"),
        yes = w.s("yes"),
        x_user = w.s("x-user"),
        bob = w.s("bob"),
        x_multi = w.s("x-multi"),
        a = w.s("a"),
        b = w.s("b"),
        x_remove = w.s("x-remove"),
        cluster_path = w.s("tidegate\0cluster"),
        backend = w.s("backend-a"),
        request_path = w.s("request\0path"),
        source_address = w.s("source\0address"),
        plugin_name = w.s("plugin_name"),
        url_path = w.s("request\0url_path"),
        query = w.s("request\0query"),
        header_prop = w.s("request\0headers\0x-user"),
        unknown = w.s("no\0such\0property"),
        response_code = w.s("response\0code"),
    );
    let mut instance = start("probe", &w.module(&body), b"");
    let mut ex = request();
    let ctx = instance.create_http_context().unwrap();
    assert_eq!(
        instance.on_request_headers(ctx, &mut ex, true).unwrap(),
        FilterAction::Continue
    );

    assert_eq!(
        (slot(&instance, 0), slot(&instance, 1), slot(&instance, 2)),
        (ctx, 8, 1)
    );
    assert_eq!(
        (slot(&instance, 3), kept(&instance, 4)),
        (OK, b"/api/v1?page=2".to_vec())
    );
    assert_eq!(
        (slot(&instance, 6), kept(&instance, 7)),
        (OK, b"alice".to_vec()),
        "names are case-insensitive"
    );
    assert_eq!(slot(&instance, 9), NOT_FOUND);
    assert_eq!(
        (slot(&instance, 10), slot(&instance, 11), slot(&instance, 12)),
        (OK, 0, 0),
        "empty value is OK with (0, 0)"
    );
    for i in 13..=19 {
        assert_eq!(slot(&instance, i), OK, "slot {i}");
    }
    assert_eq!(kept(&instance, 21), b"/api/v1?page=2");
    assert_eq!(kept(&instance, 24), b"10.0.0.7:5555", "host-set property");
    assert_eq!(kept(&instance, 27), b"probe");
    assert_eq!(kept(&instance, 30), b"/api/v1");
    assert_eq!(kept(&instance, 33), b"page=2");
    assert_eq!(kept(&instance, 36), b"bob", "derived from the header just replaced");
    assert_eq!(kept(&instance, 39), b"backend-a", "a property the filter set");
    assert_eq!(slot(&instance, 41), OK);
    let pairs = kept(&instance, 42);
    let map = SerializedMap::parse(&pairs).expect("valid serialization");
    let names: Vec<&[u8]> = map.iter().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        [
            &b":method"[..],
            b":scheme",
            b":authority",
            b":path",
            b"x-user",
            b"x-empty",
            b"x-tidegate",
            b"x-multi",
            b"x-multi"
        ]
    );
    assert_eq!((slot(&instance, 44), slot(&instance, 45) as usize), (OK, pairs.len()));
    assert_eq!(slot(&instance, 46), NOT_FOUND, "unknown property");
    assert_eq!(slot(&instance, 47), NOT_FOUND, "no response yet");
    assert_eq!(
        (slot(&instance, 48), slot(&instance, 49), slot(&instance, 50)),
        (OK, 0, 0),
        "empty response headers"
    );
    assert_eq!(slot(&instance, 51), OK, "trailers read as empty");
    assert_eq!(slot(&instance, 52), BAD_ARGUMENT, "trailers are not writable yet");
    assert_eq!(slot(&instance, 53), BAD_ARGUMENT, "gRPC metadata is not available");
    assert_eq!(slot(&instance, 54), BAD_ARGUMENT, "unknown map");

    // The exchange came back with the changes.
    let h = &ex.request_headers;
    assert_eq!(h.get("x-tidegate"), Some(&b"yes"[..]));
    assert_eq!(h.get("x-user"), Some(&b"bob"[..]));
    assert_eq!(h.get_all("x-multi").collect::<Vec<_>>(), [b"a", b"b"]);
    assert_eq!(h.get("x-remove"), None);
    assert_eq!(ex.properties.get("tidegate.cluster"), Some(&b"backend-a"[..]));
    assert_eq!(ex.local_reply, None);
    instance.finish_http_context(ctx, &mut ex);
    assert_eq!(instance.open_contexts(), 0);
}

#[test]
fn response_headers_and_response_code() {
    let mut w = Wat::new();
    let body = format!(
        r#"
  (func (export "proxy_on_response_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (call $rec (i32.const 0) (local.get $n))
    (call $rec (i32.const 1) (call $get_header (i32.const 2) {status} (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 2))
    (call $rec (i32.const 4) (call $get_property {code} (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 5))
    (call $rec (i32.const 7) (call $replace_header (i32.const 2) {server} {tidegate}))
    (call $rec (i32.const 8) (call $get_header (i32.const 0) {path} (i32.const 0x80) (i32.const 0x84)))
    (call $rec (i32.const 9) (call $get_property {resp_header} (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 10))
    (call $rec (i32.const 12) (call $get_property {cluster_name} (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 13))
    (call $rec (i32.const 15) (call $get_property {request_size} (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 16))
    (i32.const 0))
"#,
        cluster_name = w.s("cluster_name"),
        request_size = w.s("request\0size"),
        status = w.s(":status"),
        code = w.s("response\0code"),
        server = w.s("server"),
        tidegate = w.s("tidegate"),
        path = w.s(":path"),
        resp_header = w.s("response\0headers\0content-type"),
    );
    let mut instance = start("response", &w.module(&body), b"");
    let mut ex = request();
    ex.request_headers.add("content-length", "42");
    ex.properties.set("tidegate.cluster", "ns/web:80");
    let ctx = instance.create_http_context().unwrap();
    assert_eq!(
        instance.on_request_headers(ctx, &mut ex, true).unwrap(),
        FilterAction::Continue,
        "absent callback continues"
    );
    ex.response_headers =
        HeaderList::from_pairs([(":status", "404"), ("server", "nginx"), ("content-type", "text/plain")]);
    assert_eq!(
        instance.on_response_headers(ctx, &mut ex, false).unwrap(),
        FilterAction::Continue
    );
    assert_eq!(slot(&instance, 0), 3);
    assert_eq!(kept(&instance, 2), b"404");
    assert_eq!(
        (slot(&instance, 4), kept(&instance, 5)),
        (OK, 404i64.to_le_bytes().to_vec()),
        "ints are 8-byte LE"
    );
    assert_eq!(slot(&instance, 7), OK);
    assert_eq!(slot(&instance, 8), OK, "request headers stay readable");
    assert_eq!(kept(&instance, 10), b"text/plain");
    assert_eq!(
        (slot(&instance, 12), kept(&instance, 13)),
        (OK, b"ns/web:80".to_vec()),
        "Envoy's cluster_name"
    );
    assert_eq!(
        (slot(&instance, 15), kept(&instance, 16)),
        (OK, 42i64.to_le_bytes().to_vec())
    );
    assert_eq!(ex.response_headers.get("server"), Some(&b"tidegate"[..]));
    instance.finish_http_context(ctx, &mut ex);
}

#[test]
fn local_reply_is_recorded_for_the_proxy() {
    let mut w = Wat::new();
    let headers = {
        let mut out = Vec::new();
        codec::serialize_map(
            &[
                ("Content-Type".into(), b"text/plain".to_vec()),
                ("x-reason".into(), b"denied".to_vec()),
            ],
            &mut out,
        );
        out
    };
    let body = format!(
        r#"
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (call $rec (i32.const 0) (call $send_local_response (i32.const 403) {details} {body} {headers} (i32.const -1)))
    (call $rec (i32.const 1) (call $send_local_response (i32.const 99) {details} {body} {headers} (i32.const -1)))
    (call $rec (i32.const 2) (call $send_local_response (i32.const 403) {details} {body} {bad_headers} (i32.const -1)))
    (i32.const 1))
  (func (export "proxy_on_log") (param $ctx i32)
    (call $rec (i32.const 3) (call $send_local_response (i32.const 500) {details} {body} {headers} (i32.const 7))))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (call $rec (i32.const 4) (call $send_local_response (i32.const 500) {details} {body} {headers} (i32.const 7)))
    (i32.const 1))
"#,
        details = w.s("policy_denied"),
        body = w.s("forbidden\n"),
        headers = w.s(&headers),
        bad_headers = w.s(b"\x01\x00\x00"),
    );
    let mut instance = start("replier", &w.module(&body), b"");
    assert_eq!(slot(&instance, 4), BAD_ARGUMENT, "no local reply outside a request");
    let mut ex = request();
    let ctx = instance.create_http_context().unwrap();
    assert_eq!(
        instance.on_request_headers(ctx, &mut ex, true).unwrap(),
        FilterAction::Pause
    );
    assert_eq!(slot(&instance, 0), OK);
    assert_eq!(slot(&instance, 1), BAD_ARGUMENT, "status out of range");
    assert_eq!(slot(&instance, 2), BAD_ARGUMENT, "malformed header map");
    let reply = ex.local_reply.clone().expect("reply recorded");
    assert_eq!(reply.status, 403);
    assert_eq!(reply.body, b"forbidden\n");
    assert_eq!(reply.details, "policy_denied");
    assert_eq!(reply.grpc_status, None);
    assert_eq!(
        reply.headers,
        vec![
            ("content-type".to_string(), b"text/plain".to_vec()),
            ("x-reason".to_string(), b"denied".to_vec())
        ]
    );
    instance.finish_http_context(ctx, &mut ex);
    assert_eq!(slot(&instance, 3), BAD_ARGUMENT, "too late once the response is sent");
    assert_eq!(ex.local_reply.map(|r| r.status), Some(403), "the first reply stands");
}

#[test]
fn outside_a_request_there_is_no_request_state() {
    let mut w = Wat::new();
    let body = format!(
        r#"
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (call $rec (i32.const 0) (call $get_header (i32.const 0) {path} (i32.const 0x80) (i32.const 0x84)))
    (call $rec (i32.const 1) (call $get_pairs (i32.const 0) (i32.const 0x80) (i32.const 0x84)))
    (call $rec (i32.const 2) (call $replace_header (i32.const 0) {path} {path}))
    (call $rec (i32.const 3) (call $get_property {request_path} (i32.const 0x80) (i32.const 0x84)))
    (call $rec (i32.const 4) (call $set_property {cluster} {path}))
    (call $rec (i32.const 5) (call $get_property {plugin_root_id} (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 6))
    (i32.const 1))
"#,
        path = w.s(":path"),
        request_path = w.s("request\0path"),
        cluster = w.s("tidegate\0cluster"),
        plugin_root_id = w.s("plugin_root_id"),
    );
    let instance = start("no-request", &w.module(&body), b"");
    assert_eq!(slot(&instance, 0), BAD_ARGUMENT, "header map not available");
    assert_eq!(slot(&instance, 1), BAD_ARGUMENT);
    assert_eq!(slot(&instance, 2), BAD_ARGUMENT);
    assert_eq!(slot(&instance, 3), NOT_FOUND, "request property outside a request");
    assert_eq!(slot(&instance, 4), NOT_FOUND, "nowhere to set it");
    assert_eq!((slot(&instance, 5), kept(&instance, 6)), (OK, b"no-request".to_vec()));
}

#[test]
fn requests_never_see_each_other() {
    let mut w = Wat::new();
    let body = format!(
        r#"
  (func (export "proxy_on_request_headers") (param $ctx i32) (param $n i32) (param $eos i32) (result i32)
    (call $rec (i32.const 0) (call $get_header (i32.const 0) {secret} (i32.const 0x80) (i32.const 0x84)))
    (call $rec (i32.const 1) (call $get_property {mark} (i32.const 0x80) (i32.const 0x84)))
    (drop (call $set_property {mark} {secret}))
    (i32.const 0))
"#,
        secret = w.s("x-secret"),
        mark = w.s("tidegate\0mark"),
    );
    let mut instance = start("isolation", &w.module(&body), b"");
    let mut first = request();
    first.request_headers.add("x-secret", "s3cr3t");
    run_request(&mut instance, &mut first).unwrap();
    assert_eq!((slot(&instance, 0), slot(&instance, 1)), (OK, NOT_FOUND));
    assert_eq!(first.properties.get("tidegate.mark"), Some(&b"x-secret"[..]));

    let mut second = request();
    run_request(&mut instance, &mut second).unwrap();
    assert_eq!(slot(&instance, 0), NOT_FOUND, "the first request's header is gone");
    assert_eq!(slot(&instance, 1), NOT_FOUND, "the first request's property is gone");
}

#[test]
fn contexts_follow_the_lifecycle() {
    // Each callback appends (kind, ctx) to a log at 0x400.
    let body = r#"
  (global $n (mut i32) (i32.const 0))
  (func $event (param $kind i32) (param $ctx i32)
    (i32.store (i32.add (i32.const 0x400) (i32.shl (global.get $n) (i32.const 3))) (local.get $kind))
    (i32.store (i32.add (i32.const 0x404) (i32.shl (global.get $n) (i32.const 3))) (local.get $ctx))
    (global.set $n (i32.add (global.get $n) (i32.const 1))))
  (func (export "proxy_on_context_create") (param $ctx i32) (param $parent i32) (call $event (i32.const 1) (local.get $ctx)))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32) (call $event (i32.const 2) (local.get $ctx)) (i32.const 0))
  (func (export "proxy_on_response_headers") (param $ctx i32) (param i32 i32) (result i32) (call $event (i32.const 3) (local.get $ctx)) (i32.const 0))
  (func (export "proxy_on_done") (param $ctx i32) (result i32) (call $event (i32.const 4) (local.get $ctx)) (i32.const 1))
  (func (export "proxy_on_log") (param $ctx i32) (call $event (i32.const 5) (local.get $ctx)))
  (func (export "proxy_on_delete") (param $ctx i32) (call $event (i32.const 6) (local.get $ctx)))
"#;
    let mut instance = start("lifecycle-order", &Wat::new().module(body), b"");
    let mut ex = request();
    let a = instance.create_http_context().unwrap();
    let b = instance.create_http_context().unwrap();
    assert_ne!(a, b);
    assert!(a > 1 && b > 1, "HTTP contexts never reuse the root id");
    instance.on_request_headers(a, &mut ex, true).unwrap();
    instance.on_response_headers(a, &mut ex, true).unwrap();
    instance.finish_http_context(a, &mut ex);
    instance.finish_http_context(b, &mut ex);
    let mem = instance.guest_memory();
    let events: Vec<(u32, u32)> = (0..10)
        .map(|i| {
            let at = 0x400 + i * 8;
            let word = |o: usize| u32::from_le_bytes([mem[o], mem[o + 1], mem[o + 2], mem[o + 3]]);
            (word(at), word(at + 4))
        })
        .collect();
    assert_eq!(
        events,
        [
            (1, 1),
            (1, a),
            (1, b),
            (2, a),
            (3, a),
            (4, a),
            (5, a),
            (6, a),
            (4, b),
            (5, b)
        ]
    );
    assert_eq!(instance.open_contexts(), 0);
    let err = instance.on_request_headers(a, &mut ex, true).unwrap_err();
    assert!(
        matches!(err, WasmError::UnknownContext { context, .. } if context == a),
        "{err}"
    );
}

#[test]
fn on_done_false_waits_for_proxy_done() {
    // on_done says "not yet" for the first context; the second request's callback switches to it
    // and calls proxy_done, after which the host logs and deletes it.
    let body = r#"
  (global $first (mut i32) (i32.const 0))
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (if (global.get $first)
      (then
        (call $rec (i32.const 0) (call $done))
        (call $rec (i32.const 1) (call $set_effective_context (i32.const 12345)))
        (call $rec (i32.const 2) (call $set_effective_context (global.get $first)))
        (call $rec (i32.const 3) (call $done))
        (call $rec (i32.const 4) (call $get_pairs (i32.const 0) (i32.const 0x80) (i32.const 0x84))))
      (else (global.set $first (local.get $ctx))))
    (i32.const 0))
  (func (export "proxy_on_done") (param $ctx i32) (result i32) (i32.ne (local.get $ctx) (global.get $first)))
  (func (export "proxy_on_log") (param $ctx i32) (call $rec (i32.const 10) (local.get $ctx)))
  (func (export "proxy_on_delete") (param $ctx i32) (call $rec (i32.const 11) (local.get $ctx)))
"#;
    let mut instance = start("deferred-done", &Wat::new().module(body), b"");
    let mut ex = request();
    let first = instance.create_http_context().unwrap();
    instance.on_request_headers(first, &mut ex, true).unwrap();
    instance.finish_http_context(first, &mut ex);
    assert_eq!(instance.open_contexts(), 1, "waiting for proxy_done");
    assert_eq!(slot(&instance, 11), 0, "not deleted yet");
    let second = instance.create_http_context().unwrap();
    instance.on_request_headers(second, &mut ex, true).unwrap();
    assert_eq!(slot(&instance, 0), NOT_FOUND, "the second context is not pending");
    assert_eq!(slot(&instance, 1), BAD_ARGUMENT, "unknown context");
    assert_eq!(slot(&instance, 2), OK);
    assert_eq!(slot(&instance, 3), OK);
    assert_eq!(
        slot(&instance, 4),
        BAD_ARGUMENT,
        "after switching away, this request's headers are out of reach"
    );
    assert_eq!(
        (slot(&instance, 10), slot(&instance, 11)),
        (first, first),
        "logged and deleted after proxy_done"
    );
    instance.finish_http_context(second, &mut ex);
    assert_eq!(instance.open_contexts(), 0);
    assert_eq!(
        ex.request_headers.get(":path"),
        Some(&b"/api/v1?page=2"[..]),
        "the exchange came back"
    );
}

#[test]
fn stream_actions_are_deferred() {
    let body = r#"
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (call $rec (i32.const 0) (call $continue_stream (i32.const 0)))
    (call $rec (i32.const 1) (call $close_stream (i32.const 1)))
    (call $rec (i32.const 2) (call $continue_stream (i32.const 2)))
    (call $rec (i32.const 3) (call $continue_stream (i32.const 9)))
    (call $rec (i32.const 4) (call $close_stream (i32.const 3)))
    (i32.const 1))
"#;
    let mut instance = start("streams", &Wat::new().module(body), b"");
    let mut ex = request();
    let ctx = instance.create_http_context().unwrap();
    assert_eq!(
        instance.on_request_headers(ctx, &mut ex, true).unwrap(),
        FilterAction::Continue,
        "a resumed pause continues"
    );
    assert_eq!((slot(&instance, 0), slot(&instance, 1)), (OK, OK));
    assert_eq!(slot(&instance, 2), OK, "L4: resume the client's data");
    assert_eq!(slot(&instance, 3), BAD_ARGUMENT);
    assert_eq!(slot(&instance, 4), OK, "L4: close the upstream side");
    let actions = instance.take_stream_actions();
    assert_eq!(
        actions,
        StreamActions {
            reset_response: true,
            resume_downstream: true,
            close_upstream: true,
            ..Default::default()
        }
    );
    assert_eq!(instance.take_stream_actions(), StreamActions::default());
    instance.finish_http_context(ctx, &mut ex);
}

// === bodies and trailers ===

#[test]
fn body_buffer_reads_are_windows_clamped_to_the_body() {
    let mut w = Wat::new();
    let body = format!(
        r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $rec (i32.const 30) (call $get_buffer (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 0x80) (i32.const 0x84)))
    (call $rec (i32.const 31) (call $set_buffer (i32.const 0) (i32.const 0) (i32.const 0) {x}))
    (i32.const 0))
  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (call $rec (i32.const 0) (local.get $size))
    (call $rec (i32.const 1) (local.get $eos))
    (call $rec (i32.const 2) (call $get_buffer (i32.const 0) (i32.const 0) (local.get $size) (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 3))
    (call $rec (i32.const 5) (call $get_buffer (i32.const 0) (i32.const 6) (i32.const 3) (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 6))
    (call $rec (i32.const 8) (call $get_buffer (i32.const 0) (i32.const 1000) (i32.const 10) (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 9))
    (call $rec (i32.const 11) (call $get_buffer (i32.const 0) (i32.const 6) (i32.const -1) (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 12))
    (call $rec (i32.const 14) (call $get_buffer (i32.const 1) (i32.const 0) (i32.const 10) (i32.const 0x80) (i32.const 0x84)))
    (call $rec (i32.const 15) (call $get_buffer (i32.const 0) (i32.const 0) (i32.const 10) (i32.const 0x80) (i32.const 0x70000)))
    (i32.const 1))
"#,
        x = w.s("x"),
    );
    let mut instance = start("body-reads", &w.module(&body), b"");
    let mut ex = request();
    let ctx = instance.create_http_context().unwrap();
    instance.on_request_headers(ctx, &mut ex, false).unwrap();
    assert_eq!(slot(&instance, 30), NOT_FOUND, "no body in a header callback");
    assert_eq!(slot(&instance, 31), NOT_FOUND);
    ex.request_body = BodyBuffer::new(bytes::Bytes::from_static(b"hello world"));
    assert_eq!(
        instance.on_request_body(ctx, &mut ex, false).unwrap(),
        FilterAction::Pause
    );
    assert_eq!(
        (slot(&instance, 0), slot(&instance, 1)),
        (11, 0),
        "body_size, end_of_stream"
    );
    assert_eq!((slot(&instance, 2), kept(&instance, 3)), (OK, b"hello world".to_vec()));
    assert_eq!(
        (slot(&instance, 5), kept(&instance, 6)),
        (OK, b"wor".to_vec()),
        "a window"
    );
    assert_eq!(
        (slot(&instance, 8), slot(&instance, 9), slot(&instance, 10)),
        (OK, 0, 0),
        "past the end: empty"
    );
    assert_eq!(
        (slot(&instance, 11), kept(&instance, 12)),
        (OK, b"world".to_vec()),
        "clamped"
    );
    assert_eq!(slot(&instance, 14), NOT_FOUND, "no response body in a request callback");
    assert_eq!(slot(&instance, 15), INVALID_MEMORY_ACCESS);
    assert_eq!(ex.request_body.as_slice(), b"hello world", "the buffer came back");
    assert!(!ex.request_body.is_modified(), "reads do not modify");
    instance.finish_http_context(ctx, &mut ex);
}

#[test]
fn body_buffer_writes_prepend_append_and_replace() {
    let mut w = Wat::new();
    let body = format!(
        r#"
  (func (export "proxy_on_response_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    ;; "hello world" -> "<hello world" -> "<hello world>" -> "<HELLO world>" -> "<HELLO there>"
    (call $rec (i32.const 0) (call $set_buffer (i32.const 1) (i32.const 0) (i32.const 0) {lt}))
    (call $rec (i32.const 1) (call $set_buffer (i32.const 1) (i32.const 1000) (i32.const 0) {gt}))
    (call $rec (i32.const 2) (call $set_buffer (i32.const 1) (i32.const 1) (i32.const 5) {upper}))
    (call $rec (i32.const 3) (call $set_buffer (i32.const 1) (i32.const 7) (i32.const 1000) {there}))
    (call $rec (i32.const 4) (call $set_buffer (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 0x7fff0000) (i32.const 4)))
    (call $rec (i32.const 5) (call $set_buffer (i32.const 0) (i32.const 0) (i32.const 0) {lt}))
    (call $rec (i32.const 6) (call $set_buffer (i32.const 7) (i32.const 0) (i32.const 0) {lt}))
    (call $rec (i32.const 7) (call $get_buffer (i32.const 1) (i32.const 0) (i32.const 100) (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 8))
    (i32.const 0))
  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    ;; replacing everything, including with nothing
    (call $rec (i32.const 20) (call $set_buffer (i32.const 0) (i32.const 0) (local.get $size) {replaced}))
    (i32.const 0))
"#,
        lt = w.s("<"),
        gt = w.s(">"),
        upper = w.s("HELLO"),
        there = w.s("there>"),
        replaced = w.s("replaced"),
    );
    let mut instance = start("body-writes", &w.module(&body), b"");
    assert_eq!(
        instance.module().body_callbacks(),
        BodyCallbacks {
            request_body: true,
            response_body: true,
            ..Default::default()
        },
        "exports are recorded at load"
    );
    let mut ex = request();
    let ctx = instance.create_http_context().unwrap();
    ex.response_body = BodyBuffer::new(bytes::Bytes::from_static(b"hello world"));
    assert_eq!(
        instance.on_response_body(ctx, &mut ex, true).unwrap(),
        FilterAction::Continue
    );
    assert_eq!(
        (0..4).map(|i| slot(&instance, i)).collect::<Vec<_>>(),
        [OK, OK, OK, OK],
        "prepend, append, replace, replace to the end"
    );
    assert_eq!(slot(&instance, 4), INVALID_MEMORY_ACCESS);
    assert_eq!(slot(&instance, 5), NOT_FOUND, "no request body in a response callback");
    assert_eq!(slot(&instance, 6), NOT_FOUND, "configuration is read-only");
    assert_eq!(kept(&instance, 8), b"<HELLO there>", "the filter reads its own writes");
    assert_eq!(ex.response_body.as_slice(), b"<HELLO there>");
    assert!(ex.response_body.is_modified());

    ex.request_body = BodyBuffer::new(bytes::Bytes::from_static(b"original body"));
    instance.on_request_body(ctx, &mut ex, true).unwrap();
    assert_eq!(slot(&instance, 20), OK);
    assert_eq!(ex.request_body.as_slice(), b"replaced");
    instance.finish_http_context(ctx, &mut ex);
}

#[test]
fn body_buffer_splice_semantics() {
    let mut b = BodyBuffer::new(bytes::Bytes::from_static(b"abc"));
    b.append(bytes::Bytes::from_static(b"def"));
    assert_eq!(
        (b.as_slice(), b.is_modified()),
        (&b"abcdef"[..], false),
        "arrivals are not changes"
    );
    b.splice(0, 0, b"<");
    assert_eq!(b.as_slice(), b"<abcdef");
    b.splice(100, 5, b">");
    assert_eq!(b.as_slice(), b"<abcdef>");
    b.splice(1, 3, b"X");
    assert_eq!(b.as_slice(), b"<Xdef>");
    b.splice(2, 100, b"");
    assert_eq!(b.as_slice(), b"<X");
    b.splice(0, 2, b"");
    assert!(b.is_empty() && b.is_modified());
    assert!(b.take_modified() && !b.is_modified());
    let mut c = BodyBuffer::default();
    c.append(bytes::Bytes::from_static(b"zero-copy"));
    assert_eq!(c.take(), bytes::Bytes::from_static(b"zero-copy"));
    assert!(c.is_empty());
}

#[test]
fn trailers_are_readable_and_writable_in_their_callbacks() {
    let mut w = Wat::new();
    let body = format!(
        r#"
  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (call $rec (i32.add (i32.const 0) (local.get $eos)) (call $add_header (i32.const 1) {x_added} {yes}))
    (i32.const 0))
  (func (export "proxy_on_request_trailers") (param $ctx i32) (param $n i32) (result i32)
    (call $rec (i32.const 2) (local.get $n))
    (call $rec (i32.const 3) (call $get_header (i32.const 1) {grpc_status} (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 4))
    (call $rec (i32.const 6) (call $replace_header (i32.const 1) {grpc_status} {seven}))
    (call $rec (i32.const 7) (call $remove_header (i32.const 1) {x_remove}))
    (call $rec (i32.const 8) (call $add_header (i32.const 3) {x_added} {yes}))
    (call $rec (i32.const 9) (call $get_buffer (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 10))
    (call $rec (i32.const 12) (call $set_buffer (i32.const 0) (i32.const 100) (i32.const 0) {tail}))
    (call $rec (i32.const 13) (call $add_header (i32.const 1) {bad_name} {yes}))
    (i32.const 1))
  (func (export "proxy_on_response_headers") (param i32 i32 i32) (result i32)
    (call $rec (i32.const 14) (call $get_header (i32.const 1) {grpc_status} (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 15))
    (call $rec (i32.const 17) (call $add_header (i32.const 3) {x_added} {yes}))
    (i32.const 0))
  (func (export "proxy_on_response_trailers") (param $ctx i32) (param $n i32) (result i32)
    (call $rec (i32.const 18) (local.get $n))
    (call $rec (i32.const 19) (call $add_header (i32.const 3) {x_response} {yes}))
    (call $rec (i32.const 20) (call $get_map_size (i32.const 3) (i32.const 0x80)))
    (call $rec (i32.const 21) (call $get_pairs (i32.const 3) (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 22))
    (i32.const 0))
"#,
        x_added = w.s("x-added"),
        yes = w.s("yes"),
        grpc_status = w.s("grpc-status"),
        seven = w.s("7"),
        x_remove = w.s("x-remove"),
        tail = w.s("+tail"),
        bad_name = w.s("bad name"),
        x_response = w.s("x-response"),
    );
    let mut instance = start("trailers", &w.module(&body), b"");
    assert_eq!(
        instance.module().body_callbacks(),
        BodyCallbacks {
            request_body: true,
            request_trailers: true,
            response_body: false,
            response_trailers: true,
        }
    );
    let mut ex = request();
    let ctx = instance.create_http_context().unwrap();
    instance.on_request_headers(ctx, &mut ex, false).unwrap();
    ex.request_body = BodyBuffer::new(bytes::Bytes::from_static(b"chunk"));
    instance.on_request_body(ctx, &mut ex, false).unwrap();
    assert_eq!(
        slot(&instance, 0),
        BAD_ARGUMENT,
        "no trailers from a body callback that is not the last"
    );
    assert!(ex.request_trailers.is_empty());
    instance.on_request_body(ctx, &mut ex, true).unwrap();
    assert_eq!(slot(&instance, 1), OK, "the last body callback may create trailers");
    assert_eq!(ex.request_trailers.get("x-added"), Some(&b"yes"[..]));

    ex.request_trailers = HeaderList::from_pairs([("grpc-status", "0"), ("x-remove", "1")]);
    ex.request_body = BodyBuffer::new(bytes::Bytes::from_static(b"buffered"));
    assert_eq!(instance.on_request_trailers(ctx, &mut ex).unwrap(), FilterAction::Pause);
    assert_eq!(slot(&instance, 2), 2, "num_trailers");
    assert_eq!((slot(&instance, 3), kept(&instance, 4)), (OK, b"0".to_vec()));
    assert_eq!((slot(&instance, 6), slot(&instance, 7)), (OK, OK));
    assert_eq!(
        slot(&instance, 8),
        BAD_ARGUMENT,
        "response trailers are not writable in a request callback"
    );
    assert_eq!(
        (slot(&instance, 9), kept(&instance, 10)),
        (OK, b"buffered".to_vec()),
        "the body stays readable"
    );
    assert_eq!(slot(&instance, 12), OK, "and writable");
    assert_eq!(slot(&instance, 13), BAD_ARGUMENT);
    assert_eq!(ex.request_trailers, HeaderList::from_pairs([("grpc-status", "7")]));
    assert_eq!(ex.request_body.as_slice(), b"buffered+tail");

    ex.response_headers = HeaderList::from_pairs([(":status", "200")]);
    instance.on_response_headers(ctx, &mut ex, false).unwrap();
    assert_eq!(
        (slot(&instance, 14), kept(&instance, 15)),
        (OK, b"7".to_vec()),
        "readable anywhere"
    );
    assert_eq!(slot(&instance, 17), BAD_ARGUMENT, "not writable from a header callback");
    ex.response_trailers = HeaderList::from_pairs([("grpc-status", "0")]);
    instance.on_response_trailers(ctx, &mut ex).unwrap();
    assert_eq!((slot(&instance, 18), slot(&instance, 19)), (1, OK));
    let mut expected = Vec::new();
    codec::serialize_map(
        &[
            ("grpc-status".into(), b"0".to_vec()),
            ("x-response".into(), b"yes".to_vec()),
        ],
        &mut expected,
    );
    assert_eq!(slot(&instance, 20), OK);
    assert_eq!((slot(&instance, 21), kept(&instance, 22)), (OK, expected));
    instance.finish_http_context(ctx, &mut ex);
    assert!(!instance.is_broken());
}

#[test]
fn body_callbacks_fold_resumes_and_may_answer_locally_until_the_response_is_sent() {
    let mut w = Wat::new();
    let body = format!(
        r#"
  (func (export "proxy_on_request_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (call $rec (i32.const 0) (call $continue_stream (i32.const 0)))
    (i32.const 1))
  (func (export "proxy_on_response_body") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (call $rec (i32.add (i32.const 1) (local.get $eos)) (call $send_local_response (i32.const 413) {details} {reply} (i32.const 0) (i32.const 0) (i32.const -1)))
    (call $rec (i32.const 3) (call $continue_stream (i32.const 0)))
    (call $rec (i32.const 4) (call $close_stream (i32.const 1)))
    (i32.const 1))
"#,
        details = w.s("too_big"),
        reply = w.s("no\n"),
    );
    let mut instance = start("resumer", &w.module(&body), b"");
    let mut ex = request();
    let ctx = instance.create_http_context().unwrap();
    assert_eq!(
        instance.on_request_body(ctx, &mut ex, false).unwrap(),
        FilterAction::Continue,
        "a pause resumed during the call continues"
    );
    assert_eq!(instance.take_stream_actions(), StreamActions::default());
    assert_eq!(
        instance.on_response_body(ctx, &mut ex, false).unwrap(),
        FilterAction::Pause,
        "a resume of the other direction does not fold"
    );
    assert_eq!(slot(&instance, 1), OK, "a local reply while the response is not sent");
    assert_eq!(ex.local_reply.as_ref().map(|r| r.status), Some(413));
    assert_eq!(
        instance.take_stream_actions(),
        StreamActions {
            resume_request: true,
            reset_response: true,
            ..Default::default()
        }
    );
    ex.local_reply = None;
    ex.response_sent = true;
    instance.on_response_body(ctx, &mut ex, true).unwrap();
    assert_eq!(
        slot(&instance, 2),
        BAD_ARGUMENT,
        "too late once the response headers went out"
    );
    assert_eq!(ex.local_reply, None);
    instance.finish_http_context(ctx, &mut ex);
}

#[test]
fn a_trap_in_a_body_callback_breaks_the_instance_and_returns_the_body() {
    let body = r#"
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32)
    unreachable)
"#;
    let mut instance = start("body-trap", &Wat::new().module(body), b"");
    let mut ex = request();
    let ctx = instance.create_http_context().unwrap();
    ex.request_body = BodyBuffer::new(bytes::Bytes::from_static(b"kept"));
    let error = instance.on_request_body(ctx, &mut ex, true).unwrap_err();
    assert!(error.is_crash(), "{error}");
    assert!(instance.is_broken());
    assert_eq!(ex.request_body.as_slice(), b"kept");
}

/// Host overhead of one body callback that continues, on a warm instance: the standard
/// router and balancer, built with the SDK, export every callback (run with `--ignored
/// --nocapture`).
#[test]
#[ignore = "timing, not a check"]
fn body_frame_overhead() {
    let trivial = Wat::new().module(
        r#"
  (func (export "proxy_on_request_body") (param i32 i32 i32) (result i32) (i32.const 0))
"#,
    );
    for (name, wasm, config) in [
        ("trivial WAT guest (host cost)", &trivial[..], &b""[..]),
        ("router", crate::filters::ROUTER_WASM, &b"{}"[..]),
        ("balancer", crate::filters::BALANCER_WASM, &b"{}"[..]),
    ] {
        let module = load(name, wasm);
        let Ok(mut instance) = FilterInstance::start(&module, config, &SandboxLimits::default()) else {
            println!("{name}: does not start with an empty configuration; skipped");
            continue;
        };
        let mut ex = request();
        let ctx = instance.create_http_context().unwrap();
        let _ = instance.on_request_headers(ctx, &mut ex, false);
        let chunk = bytes::Bytes::from(vec![b'x'; 16 * 1024]);
        let n = 200_000;
        let began = Instant::now();
        for _ in 0..n {
            ex.request_body = BodyBuffer::new(chunk.clone());
            instance.on_request_body(ctx, &mut ex, false).unwrap();
            let _ = instance.take_stream_actions();
        }
        println!("{name}: {:?} per 16 KiB body frame", began.elapsed() / n);
        instance.finish_http_context(ctx, &mut ex);
    }
}

// === hostile guests ===

#[test]
fn an_endless_loop_hits_the_deadline_and_breaks_the_instance() {
    let body = r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (loop $spin (br $spin)) (i32.const 0))"#;
    let module = load("spinner", &Wat::new().module(body));
    let limits = SandboxLimits {
        call_timeout: Duration::from_millis(20),
        ..Default::default()
    };
    let mut instance = FilterInstance::start(&module, b"", &limits).unwrap();
    let mut ex = request();
    let ctx = instance.create_http_context().unwrap();
    let began = Instant::now();
    let err = instance.on_request_headers(ctx, &mut ex, true).unwrap_err();
    let took = began.elapsed();
    assert!(
        matches!(&err, WasmError::Deadline { filter, timeout } if filter == "spinner" && *timeout == Duration::from_millis(20)),
        "{err}"
    );
    assert!(err.is_timeout() && err.is_crash());
    assert!(
        took >= Duration::from_millis(20) && took < Duration::from_secs(2),
        "took {took:?}"
    );
    assert!(instance.is_broken());
    assert_eq!(
        ex.request_headers.get(":path"),
        Some(&b"/api/v1?page=2"[..]),
        "the exchange is returned on error"
    );
    assert!(matches!(
        instance.on_request_headers(ctx, &mut ex, true),
        Err(WasmError::Broken { .. })
    ));
    assert!(matches!(instance.create_http_context(), Err(WasmError::Broken { .. })));
    instance.finish_http_context(ctx, &mut ex); // no panic, no guest code
    // A fresh instance of the same module works.
    let mut fresh = FilterInstance::start(&module, b"", &limits).unwrap();
    assert!(!fresh.is_broken());
    assert!(fresh.create_http_context().is_ok());
}

#[test]
fn lifecycle_calls_have_a_deadline_too() {
    let body =
        r#"(func (export "proxy_on_configure") (param i32 i32) (result i32) (loop $spin (br $spin)) (i32.const 1))"#;
    let limits = SandboxLimits {
        call_timeout: Duration::from_millis(5),
        ..Default::default()
    };
    let began = Instant::now();
    let err = FilterInstance::start(&load("slow-configure", &Wat::new().module(body)), b"", &limits).unwrap_err();
    assert!(
        matches!(&err, WasmError::Deadline { timeout, .. } if *timeout == LIFECYCLE_MIN_TIMEOUT),
        "{err}"
    );
    assert!(began.elapsed() < Duration::from_secs(5));
}

#[test]
fn growing_memory_past_the_cap_is_a_memory_limit_error() {
    let body = r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (loop $grow (br_if $grow (i32.ne (memory.grow (i32.const 1)) (i32.const -1))))
    unreachable)
"#;
    let limits = SandboxLimits {
        memory_bytes: 1024 * 1024,
        ..Default::default()
    };
    let mut instance = FilterInstance::start(&load("hog", &Wat::new().module(body)), b"", &limits).unwrap();
    let mut ex = request();
    let err = run_request(&mut instance, &mut ex).unwrap_err();
    assert!(
        matches!(&err, WasmError::MemoryLimit { filter, limit, requested } if filter == "hog" && *limit == 1024 * 1024 && *requested == 1024 * 1024 + 65536),
        "{err}"
    );
    assert!(instance.is_broken());
    assert!(instance.memory_size() <= 1024 * 1024);
}

#[test]
fn an_initial_memory_over_the_cap_fails_to_start() {
    let mut w = Wat::new();
    w.pages = 32; // 2 MiB
    let limits = SandboxLimits {
        memory_bytes: 1024 * 1024,
        ..Default::default()
    };
    let err = FilterInstance::start(&load("fat", &w.module("")), b"", &limits).unwrap_err();
    assert!(
        matches!(err, WasmError::MemoryLimit { requested: 2097152, .. }),
        "{err}"
    );
}

#[test]
fn unreachable_is_a_trap_with_a_backtrace() {
    let body = r#"
  (func $explode unreachable)
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32) (call $explode) (i32.const 0))
"#;
    let mut instance = start("crasher", &Wat::new().module(body), b"");
    let mut ex = request();
    let err = run_request(&mut instance, &mut ex).unwrap_err();
    let WasmError::Trap { filter, message } = &err else {
        panic!("{err}")
    };
    assert_eq!(filter, "crasher");
    assert!(message.contains("unreachable"), "{message}");
    assert!(
        message.contains("explode"),
        "backtrace names the guest function: {message}"
    );
    assert!(instance.is_broken());
    assert_eq!(ex.request_headers.len(), 8, "the exchange is returned on error");
}

#[test]
fn bad_guest_pointers_get_statuses_never_a_host_panic() {
    let mut w = Wat::new();
    let body = format!(
        r#"
  (func (export "proxy_on_request_headers") (param $ctx i32) (param i32 i32) (result i32)
    (call $rec (i32.const 0) (call $log (i32.const 2) (i32.const 0xfffffff0) (i32.const 100)))
    (call $rec (i32.const 1) (call $log (i32.const 2) (i32.const 0) (i32.const 0x7fffffff)))
    (call $rec (i32.const 2) (call $get_header (i32.const 0) {path} (i32.const 0xfffffffc) (i32.const 0x84)))
    (call $rec (i32.const 3) (call $get_header (i32.const 0) (i32.const 0x20000) (i32.const 5) (i32.const 0x80) (i32.const 0x84)))
    (call $rec (i32.const 4) (call $replace_header (i32.const 0) {path} (i32.const 0) (i32.const -1)))
    (call $rec (i32.const 5) (call $set_pairs (i32.const 0) (i32.const -8) (i32.const 16)))
    (call $rec (i32.const 6) (call $get_property (i32.const 0xffff0000) (i32.const 4) (i32.const 0x80) (i32.const 0x84)))
    (call $rec (i32.const 7) (call $set_property {path} (i32.const 100) (i32.const 0x7fffffff)))
    (call $rec (i32.const 8) (call $send_local_response (i32.const 403) (i32.const 0) (i32.const 0) (i32.const 0x1ffff) (i32.const 2) (i32.const 0) (i32.const 0) (i32.const -1)))
    (call $rec (i32.const 9) (call $set_shared {path} (i32.const 0x10000) (i32.const 0x10001) (i32.const 0)))
    (call $rec (i32.const 10) (call $get_buffer (i32.const 7) (i32.const 0) (i32.const 10) (i32.const 0x80) (i32.const 0x20000)))
    (call $rec (i32.const 11) (call $define_metric (i32.const 0) (i32.const 0) (i32.const 0x30000) (i32.const 0x80)))
    (call $rec (i32.const 12) (call $http_call (i32.const 0) (i32.const 0x30000) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0x80)))
    (call $rec (i32.const 13) (call $get_pairs (i32.const 0) (i32.const 0x80) (i32.const 0x1fffe)))
    (call $rec (i32.const 14) (call $now (i32.const 0x1fffc)))
    (call $rec (i32.const 15) (call $get_log_level (i32.const -1)))
    (call $rec (i32.const 16) (call $fd_write (i32.const 1) (i32.const 0x1fff8) (i32.const 2) (i32.const 0x80)))
    (call $rec (i32.const 17) (call $random_get (i32.const 0x1fff0) (i32.const 32)))
    (call $rec (i32.const 18) (call $random_get (i32.const 0) (i32.const 0x7fffffff)))
    (call $rec (i32.const 19) (call $clock_time_get (i32.const 0) (i64.const 0) (i32.const 0x1fffc)))
    (call $rec (i32.const 20) (call $args_sizes_get (i32.const 0x80) (i32.const 0x7ffffff0)))
    (call $rec (i32.const 21) (call $get_shared {path} (i32.const 0x80) (i32.const 0x84) (i32.const 0x1fffe)))
    (call $rec (i32.const 22) (call $ffi (i32.const 0x7fffffff) (i32.const 0x7fffffff) (i32.const 0) (i32.const 0) (i32.const 0x80) (i32.const 0x84)))
    (call $rec (i32.const 23) (call $get_metric (i32.const 1) (i32.const 0x1fffc)))
    (call $rec (i32.const 24) (call $log (i32.const 9) (i32.const 0) (i32.const 0)))
    (i32.const 0))
"#,
        path = w.s(":path"),
    );
    let mut instance = start("pointers", &w.module(&body), b"{}");
    let mut ex = request();
    let before = ex.clone();
    assert_eq!(run_request(&mut instance, &mut ex).unwrap(), FilterAction::Continue);
    for i in 0..=15 {
        assert_eq!(slot(&instance, i), INVALID_MEMORY_ACCESS, "slot {i}");
    }
    assert_eq!(slot(&instance, 16), WASI_FAULT, "fd_write iovecs out of memory");
    assert_eq!(slot(&instance, 17), WASI_FAULT, "random_get buffer out of memory");
    assert_eq!(slot(&instance, 18), WASI_INVAL, "random_get absurd length");
    assert_eq!(slot(&instance, 19), WASI_FAULT);
    assert_eq!(slot(&instance, 20), WASI_FAULT);
    assert_eq!(slot(&instance, 21), INVALID_MEMORY_ACCESS, "CAS slot out of memory");
    assert_eq!(slot(&instance, 22), INVALID_MEMORY_ACCESS);
    // Metric 1 may not exist or belong to another filter: either way NOT_FOUND comes first.
    assert!([INVALID_MEMORY_ACCESS, NOT_FOUND].contains(&slot(&instance, 23)));
    assert_eq!(slot(&instance, 24), BAD_ARGUMENT, "unknown log level");
    assert!(!instance.is_broken(), "bad pointers do not break the instance");
    assert_eq!(ex.request_headers, before.request_headers, "nothing changed");
    assert_eq!(ex.local_reply, None);
}

#[test]
fn a_bogus_allocator_cannot_make_the_host_write_out_of_bounds() {
    for (name, allocator) in [
        ("alloc-past-end", "(i32.const 0xfffffff0)"),
        ("alloc-null", "(i32.const 0)"),
        (
            "alloc-straddles-end",
            "(i32.sub (i32.mul (memory.size) (i32.const 0x10000)) (i32.const 2))",
        ),
    ] {
        let mut w = Wat::new();
        w.allocator = format!(r#"(func (export "proxy_on_memory_allocate") (param i32) (result i32) {allocator})"#);
        let body = format!(
            r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $rec (i32.const 0) (call $get_header (i32.const 0) {path} (i32.const 0x80) (i32.const 0x84)))
    (call $rec (i32.const 1) (call $get_pairs (i32.const 0) (i32.const 0x80) (i32.const 0x84)))
    (i32.const 0))
"#,
            path = w.s(":path"),
        );
        let mut instance = start(name, &w.module(&body), b"");
        let mut ex = request();
        run_request(&mut instance, &mut ex).unwrap();
        assert_eq!(
            (slot(&instance, 0), slot(&instance, 1)),
            (INVALID_MEMORY_ACCESS, INVALID_MEMORY_ACCESS),
            "{name}"
        );
        assert!(!instance.is_broken());
    }

    // An allocator that traps is the guest's crash.
    let mut w = Wat::new();
    w.allocator =
        r#"(func $bad_alloc (export "proxy_on_memory_allocate") (param i32) (result i32) unreachable)"#.to_string();
    let body = format!(
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             (drop (call $get_header (i32.const 0) {path} (i32.const 0x80) (i32.const 0x84))) (i32.const 0))"#,
        path = w.s(":path"),
    );
    let mut instance = start("alloc-traps", &w.module(&body), b"");
    let err = run_request(&mut instance, &mut request()).unwrap_err();
    assert!(
        matches!(&err, WasmError::Trap { message, .. } if message.contains("bad_alloc")),
        "{err}"
    );
}

#[test]
fn a_reentrant_allocator_is_refused() {
    // The allocator itself asks for a header value, which would need the allocator again.
    let mut w = Wat::new();
    let path = w.s(":path");
    w.allocator = format!(
        r#"
  (global $heap (mut i32) (i32.const 0x10000))
  (func (export "proxy_on_memory_allocate") (param $size i32) (result i32) (local $ptr i32)
    (call $rec (i32.const 5) (call $get_header (i32.const 0) {path} (i32.const 0x88) (i32.const 0x8c)))
    (local.set $ptr (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $ptr))
"#
    );
    let body = format!(
        r#"(func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
             (call $rec (i32.const 0) (call $get_header (i32.const 0) {path} (i32.const 0x80) (i32.const 0x84)))
             (call $keep (i32.const 1))
             (i32.const 0))"#
    );
    let mut instance = start("reentrant", &w.module(&body), b"");
    run_request(&mut instance, &mut request()).unwrap();
    assert_eq!(slot(&instance, 5), INTERNAL_FAILURE, "no recursion into the allocator");
    assert_eq!(
        (slot(&instance, 0), kept(&instance, 1)),
        (OK, b"/api/v1?page=2".to_vec())
    );
}

#[test]
fn header_injection_and_malformed_maps_are_refused() {
    let mut w = Wat::new();
    let mut good = Vec::new();
    codec::serialize_map(
        &[
            (":path".into(), b"/rewritten".to_vec()),
            ("X-Added".into(), b"1".to_vec()),
        ],
        &mut good,
    );
    let mut crlf = Vec::new();
    codec::serialize_map(&[("x-evil".into(), b"a\r\nset-cookie: pwned".to_vec())], &mut crlf);
    let body = format!(
        r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $rec (i32.const 0) (call $replace_header (i32.const 0) {evil} {crlf_value}))
    (call $rec (i32.const 1) (call $add_header (i32.const 0) {bad_name} {ok}))
    (call $rec (i32.const 2) (call $set_pairs (i32.const 0) {garbage}))
    (call $rec (i32.const 3) (call $set_pairs (i32.const 0) {crlf}))
    (call $rec (i32.const 4) (call $set_pairs (i32.const 0) {good}))
    (i32.const 0))
"#,
        evil = w.s("x-evil"),
        crlf_value = w.s("a\r\nset-cookie: pwned"),
        bad_name = w.s("bad name"),
        ok = w.s("ok"),
        garbage = w.s(b"\x05\x00\x00\x00\x01"),
        crlf = w.s(&crlf),
        good = w.s(&good),
    );
    let mut instance = start("injector", &w.module(&body), b"");
    let mut ex = request();
    run_request(&mut instance, &mut ex).unwrap();
    assert_eq!(
        [
            slot(&instance, 0),
            slot(&instance, 1),
            slot(&instance, 2),
            slot(&instance, 3)
        ],
        [BAD_ARGUMENT; 4]
    );
    assert_eq!(slot(&instance, 4), OK);
    assert_eq!(
        ex.request_headers,
        HeaderList::from_pairs([(":path", "/rewritten"), ("x-added", "1")]),
        "replaced whole, names lowercased"
    );
}

#[test]
fn read_only_properties_cannot_be_forged() {
    let mut w = Wat::new();
    let body = format!(
        r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $rec (i32.const 0) (call $set_property {source} {value}))
    (call $rec (i32.const 1) (call $set_property {plugin} {value}))
    (call $rec (i32.const 2) (call $set_property {endpoint} {value}))
    (call $rec (i32.const 3) (call $set_property {endpoint} (i32.const 0) (i32.const 0)))
    (call $rec (i32.const 4) (call $set_property {listener} {value}))
    (i32.const 0))
"#,
        source = w.s("source\0address"),
        plugin = w.s("plugin_name"),
        endpoint = w.s("tidegate\0endpoint"),
        listener = w.s("tidegate\0listener_port"),
        value = w.s("6.6.6.6:1"),
    );
    let mut instance = start("forger", &w.module(&body), b"");
    let mut ex = request();
    ex.properties.set("tidegate.endpoint", "old");
    run_request(&mut instance, &mut ex).unwrap();
    assert_eq!((slot(&instance, 0), slot(&instance, 1)), (NOT_FOUND, NOT_FOUND));
    assert_eq!(
        (slot(&instance, 2), slot(&instance, 3), slot(&instance, 4)),
        (OK, OK, OK)
    );
    assert_eq!(ex.properties.get("source.address"), Some(&b"10.0.0.7:5555"[..]));
    assert_eq!(
        ex.properties.get("tidegate.endpoint"),
        None,
        "an empty value removes the property"
    );
    assert_eq!(
        ex.properties.get("tidegate.listener_port"),
        Some(&b"6.6.6.6:1"[..]),
        "tidegate.* stays writable"
    );
}

// === process-wide state ===

#[test]
fn shared_data_is_shared_between_instances_of_a_filter() {
    let mut w = Wat::new();
    let body = format!(
        r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $rec (i32.const 0) (call $get_shared {key} (i32.const 0x80) (i32.const 0x84) (i32.const 0x88)))
    (call $keep (i32.const 1))
    (call $rec (i32.const 3) (i32.load (i32.const 0x88)))
    (call $rec (i32.const 4) (call $set_shared {key} {value} (i32.load (i32.const 0x88))))
    (call $rec (i32.const 5) (call $set_shared {key} {value} (i32.const 0xdead)))
    (i32.const 0))
"#,
        key = w.s("counter"),
        value = w.s("v"),
    );
    let wasm = w.module(&body);
    let mut a = start("shared-data-filter", &wasm, b"");
    let mut b = start("shared-data-filter", &wasm, b"");
    let mut other = start("shared-data-other", &wasm, b"");

    run_request(&mut a, &mut request()).unwrap();
    assert_eq!(slot(&a, 0), NOT_FOUND);
    assert_eq!(slot(&a, 4), OK, "a new key is written whatever the CAS");
    assert_eq!(slot(&a, 5), CAS_MISMATCH);

    run_request(&mut b, &mut request()).unwrap();
    assert_eq!(
        (slot(&b, 0), kept(&b, 1)),
        (OK, b"v".to_vec()),
        "another instance of the filter sees it"
    );
    assert_ne!(slot(&b, 3), 0, "with a CAS");
    assert_eq!(slot(&b, 4), OK, "matching CAS");

    run_request(&mut other, &mut request()).unwrap();
    assert_eq!(slot(&other, 0), NOT_FOUND, "another filter has its own namespace");
}

#[test]
fn metrics_are_defined_once_and_exported() {
    let mut w = Wat::new();
    let body = format!(
        r#"
  (global $id (mut i32) (i32.const 0))
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (call $rec (i32.const 0) (call $define_metric (i32.const 0) {name} (i32.const 0x90)))
    (global.set $id (i32.load (i32.const 0x90)))
    (call $rec (i32.const 1) (call $define_metric (i32.const 7) {name} (i32.const 0x90)))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $rec (i32.const 2) (call $increment_metric (global.get $id) (i64.const 5)))
    (call $rec (i32.const 3) (call $increment_metric (global.get $id) (i64.const -1)))
    (call $rec (i32.const 4) (call $get_metric (global.get $id) (i32.const 0x98)))
    (call $rec (i32.const 5) (i32.load (i32.const 0x98)))
    (call $rec (i32.const 6) (call $increment_metric (i32.const 999999) (i64.const 1)))
    (call $rec (i32.const 7) (call $record_metric (global.get $id) (i64.const 100)))
    (i32.const 0))
"#,
        name = w.s("hits"),
    );
    let wasm = w.module(&body);
    let mut a = start("metrics-filter", &wasm, b"");
    let mut b = start("metrics-filter", &wasm, b"");
    assert_eq!((slot(&a, 0), slot(&a, 1)), (OK, BAD_ARGUMENT));
    run_request(&mut a, &mut request()).unwrap();
    assert_eq!(
        (slot(&a, 2), slot(&a, 3), slot(&a, 4), slot(&a, 5)),
        (OK, BAD_ARGUMENT, OK, 5)
    );
    assert_eq!(slot(&a, 6), NOT_FOUND);
    assert_eq!(slot(&a, 7), OK);
    run_request(&mut b, &mut request()).unwrap();
    assert_eq!(slot(&b, 5), 105, "both instances share the metric");
    let sample = metrics_snapshot()
        .into_iter()
        .find(|s| s.filter == "metrics-filter" && s.name == "hits")
        .expect("exported");
    assert_eq!(sample.value, MetricValue::Counter(100));
    assert_eq!(sample.value.kind(), MetricKind::Counter);
}

// === stubs and WASI ===

#[test]
fn callouts_queues_and_host_services_without_a_proxy_answer_spec_statuses() {
    let mut w = Wat::new();
    let mut call_headers = Vec::new();
    codec::serialize_map(
        &[
            (":method".into(), b"GET".to_vec()),
            (":path".into(), b"/".to_vec()),
            (":authority".into(), b"auth".to_vec()),
        ],
        &mut call_headers,
    );
    let mut no_path = Vec::new();
    codec::serialize_map(&[(":method".into(), b"GET".to_vec())], &mut no_path);
    let body = format!(
        r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $rec (i32.const 0) (call $http_call {upstream} {call_headers} (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 0x80)))
    (call $rec (i32.const 1) (call $http_call {upstream} {no_path} (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 0x80)))
    (call $rec (i32.const 2) (call $grpc_call {upstream} {upstream} {upstream} (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 0x80)))
    (call $rec (i32.const 3) (call $get_status (i32.const 0x80) (i32.const 0x84) (i32.const 0x88)))
    (call $rec (i32.const 4) (call $ffi {upstream} (i32.const 0) (i32.const 0) (i32.const 0x80) (i32.const 0x84)))
    (call $rec (i32.const 5) (call $register_queue {upstream} (i32.const 0x80)))
    (call $rec (i32.const 6) (call $dequeue (i32.load (i32.const 0x80)) (i32.const 0x90) (i32.const 0x94)))
    (call $rec (i32.const 7) (call $get_buffer (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 0x80) (i32.const 0x84)))
    (call $rec (i32.const 8) (call $get_buffer (i32.const 99) (i32.const 0) (i32.const 100) (i32.const 0x80) (i32.const 0x84)))
    (call $rec (i32.const 9) (call $set_tick (i32.const 500)))
    (call $rec (i32.const 10) (call $done))
    (call $rec (i32.const 11) (call $set_buffer (i32.const 1) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)))
    (i32.const 0))
"#,
        upstream = w.s("outbound|80||auth.svc"),
        call_headers = w.s(&call_headers),
        no_path = w.s(&no_path),
    );
    let mut instance = start("stubs", &w.module(&body), b"");
    assert_eq!(instance.tick_period(), None);
    run_request(&mut instance, &mut request()).unwrap();
    assert_eq!(
        slot(&instance, 0),
        BAD_ARGUMENT,
        "without a proxy around the VM no upstream exists"
    );
    assert_eq!(
        slot(&instance, 1),
        BAD_ARGUMENT,
        "headers must have :method, :path and :authority"
    );
    assert_eq!(
        slot(&instance, 2),
        INTERNAL_FAILURE,
        "gRPC callouts are not implemented"
    );
    assert_eq!(slot(&instance, 3), NOT_FOUND);
    assert_eq!(slot(&instance, 4), NOT_FOUND, "no host services without a proxy");
    assert_eq!(slot(&instance, 5), OK, "queues are process-wide");
    assert_eq!(slot(&instance, 6), EMPTY, "a new queue is empty");
    assert_eq!(slot(&instance, 7), NOT_FOUND, "bodies are not available");
    assert_eq!(slot(&instance, 8), BAD_ARGUMENT, "unknown buffer");
    assert_eq!(slot(&instance, 9), OK);
    assert_eq!(slot(&instance, 10), NOT_FOUND, "nothing pending");
    assert_eq!(slot(&instance, 11), NOT_FOUND);
    assert_eq!(instance.tick_period(), Some(Duration::from_millis(500)));
    assert!(!instance.is_broken());
}

/// Host services that know one upstream and no foreign function.
struct OneUpstream;

impl crate::wasm::services::HostServices for OneUpstream {
    fn upstream(&self, upstream: &str) -> Option<std::sync::Arc<str>> {
        (upstream == "outbound|80||auth.svc").then(|| "auth/auth:80".into())
    }

    fn foreign_function(&self, _name: &str, _args: &[u8]) -> Option<Result<Vec<u8>, ()>> {
        None
    }
}

#[test]
fn a_callout_to_a_known_upstream_needs_method_path_and_authority() {
    let map = |pairs: &[(&str, &str)]| {
        let mut out = Vec::new();
        let pairs: Vec<(String, Vec<u8>)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        codec::serialize_map(&pairs, &mut out);
        out
    };
    let complete = [(":method", "GET"), (":path", "/check"), (":authority", "auth")];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("complete", map(&complete)),
        ("no :method", map(&[(":path", "/check"), (":authority", "auth")])),
        ("no :path", map(&[(":method", "GET"), (":authority", "auth")])),
        ("no :authority", map(&[(":method", "GET"), (":path", "/check")])),
        (
            "empty :path",
            map(&[(":method", "GET"), (":path", ""), (":authority", "auth")]),
        ),
        (
            "empty :authority",
            map(&[(":method", "GET"), (":path", "/check"), (":authority", "")]),
        ),
    ];
    let mut w = Wat::new();
    let upstream = w.s("outbound|80||auth.svc");
    let unknown = w.s("outbound|80||nowhere.svc");
    let mut calls = String::new();
    for (i, (_, headers)) in cases.iter().enumerate() {
        let headers = w.s(headers);
        calls.push_str(&format!(
            "    (call $rec (i32.const {i}) (call $http_call {upstream} {headers} (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 0x80)))\n"
        ));
    }
    let complete_headers = w.s(map(&complete));
    let n = cases.len();
    let body = format!(
        r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
{calls}    (call $rec (i32.const {n}) (call $http_call {unknown} {complete_headers} (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 0x80)))
    (i32.const 0))
"#
    );
    let module = load("callout-headers", &w.module(&body));
    let env = crate::wasm::services::InstanceEnv {
        services: Some(std::sync::Arc::new(OneUpstream)),
        queue_waker: None,
    };
    let mut instance =
        FilterInstance::start_with(&module, b"", &SandboxLimits::default(), &env).unwrap_or_else(|e| panic!("{e}"));
    let mut ex = request();
    let ctx = instance.create_http_context().unwrap();
    instance.on_request_headers(ctx, &mut ex, true).unwrap();
    let sent = instance.take_callouts();
    instance.finish_http_context(ctx, &mut ex);
    for (i, (what, _)) in cases.iter().enumerate() {
        let expected = if i == 0 { OK } else { BAD_ARGUMENT };
        assert_eq!(slot(&instance, i), expected, "a callout with {what}");
    }
    assert_eq!(slot(&instance, n), BAD_ARGUMENT, "an unknown upstream");
    assert_eq!(sent.len(), 1, "only the complete call is queued: {sent:?}");
    assert_eq!(&*sent[0].cluster, "auth/auth:80");
    assert_eq!(sent[0].headers.get(":path"), Some(&b"/check"[..]));
    assert_eq!(sent[0].timeout, Duration::from_millis(1000));
}

#[test]
fn wasi_basics() {
    let mut w = Wat::new();
    let (line_ptr, line_len) = w.place(b"hello from the guest\n");
    let body = format!(
        r#"
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    ;; one iovec at 0x300 pointing at the line
    (i32.store (i32.const 0x300) (i32.const {line_ptr}))
    (i32.store (i32.const 0x304) (i32.const {line_len}))
    (call $rec (i32.const 0) (call $fd_write (i32.const 1) (i32.const 0x300) (i32.const 1) (i32.const 0x90)))
    (call $rec (i32.const 1) (i32.load (i32.const 0x90)))
    (call $rec (i32.const 2) (call $fd_write (i32.const 5) (i32.const 0x300) (i32.const 1) (i32.const 0x90)))
    (i32.store (i32.const 0xa0) (i32.const 77))
    (i32.store (i32.const 0xa4) (i32.const 77))
    (call $rec (i32.const 3) (call $args_sizes_get (i32.const 0xa0) (i32.const 0xa4)))
    (call $rec (i32.const 4) (i32.add (i32.load (i32.const 0xa0)) (i32.load (i32.const 0xa4))))
    (call $rec (i32.const 5) (call $environ_sizes_get (i32.const 0xa0) (i32.const 0xa4)))
    (call $rec (i32.const 6) (call $clock_time_get (i32.const 0) (i64.const 1) (i32.const 0xa8)))
    (call $rec (i32.const 7) (i32.wrap_i64 (i64.div_u (i64.load (i32.const 0xa8)) (i64.const 1000000000000000000))))
    (call $rec (i32.const 8) (call $clock_time_get (i32.const 2) (i64.const 1) (i32.const 0xa8)))
    (call $rec (i32.const 9) (call $random_get (i32.const 0x380) (i32.const 32)))
    (call $rec (i32.const 10) (call $fd_prestat_get (i32.const 3) (i32.const 0xa0)))
    (call $rec (i32.const 11) (call $now (i32.const 0xb0)))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $proc_exit (i32.const 3))
    (i32.const 0))
"#,
    );
    let mut instance = start("wasi", &w.module(&body), b"");
    assert_eq!(
        (slot(&instance, 0), slot(&instance, 1)),
        (0, 21),
        "stdout is logged, all bytes written"
    );
    assert_eq!(slot(&instance, 2), WASI_BADF);
    assert_eq!(
        (slot(&instance, 3), slot(&instance, 4), slot(&instance, 5)),
        (0, 0, 0),
        "no args, no environment"
    );
    assert_eq!(
        (slot(&instance, 6), slot(&instance, 7)),
        (0, 1),
        "realtime clock is in this century"
    );
    assert_eq!(slot(&instance, 8), 58, "CPU clocks are not supported");
    assert_eq!(slot(&instance, 9), 0);
    assert!(
        instance.guest_memory()[0x380..0x3a0].iter().any(|&b| b != 0),
        "random bytes"
    );
    assert_eq!(slot(&instance, 10), WASI_BADF, "no preopens");
    assert_eq!(slot(&instance, 11), OK);
    let err = run_request(&mut instance, &mut request()).unwrap_err();
    assert!(
        matches!(&err, WasmError::Trap { message, .. } if message.contains("proc_exit(3)")),
        "{err}"
    );
}

#[test]
fn proc_exit_zero_from_start_is_a_normal_return() {
    let wasm = wat::parse_str(
        r#"(module
          (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
          (memory (export "memory") 1)
          (global $started (mut i32) (i32.const 0))
          (func (export "_start") (global.set $started (i32.const 1)) (call $exit (i32.const 0)))
          (func (export "proxy_on_vm_start") (param i32 i32) (result i32) (global.get $started))
          (func (export "proxy_abi_version_0_2_1")))"#,
    )
    .unwrap();
    start("tinygo-like", &wasm, b"");
}

#[test]
fn header_list_semantics() {
    let mut h = HeaderList::from_pairs([("A", "1"), ("b", "2"), ("a", "3"), ("c", "4"), ("A", "5")]);
    assert_eq!(
        h.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        ["a", "b", "a", "c", "a"],
        "stored lowercase"
    );
    assert_eq!(h.get("A"), Some(&b"1"[..]));
    assert_eq!(h.get_all("a").count(), 3);
    h.set("a", "x");
    assert_eq!(
        h.iter().collect::<Vec<_>>(),
        [("a", &b"x"[..]), ("b", b"2"), ("c", b"4")],
        "set keeps the first position"
    );
    h.set("New", "n");
    assert_eq!(h.get("new"), Some(&b"n"[..]));
    assert!(h.remove("B"));
    assert!(!h.remove("b"));
    assert_eq!(h.len(), 3);
    let mut p = PropertyMap::new();
    p.set("tidegate.cluster", "a");
    p.set("tidegate.cluster", "b");
    assert_eq!((p.get("tidegate.cluster"), p.len()), (Some(&b"b"[..]), 1));
    assert_eq!(p.remove("tidegate.cluster"), Some(b"b".to_vec()));
    assert!(p.is_empty());
}

#[test]
fn shared_types_are_thread_safe() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<WasmRuntime>();
    send_sync::<FilterModule>();
    send::<FilterInstance>();
    send_sync::<WasmError>();
    send_sync::<HttpExchange>();
}

#[test]
fn deadline_ticks_never_fire_early() {
    assert_eq!(ticks_for(Duration::from_millis(100)), 102);
    assert_eq!(ticks_for(Duration::from_micros(1500)), 4);
    assert_eq!(ticks_for(Duration::ZERO), 2);
    let limits = SandboxLimits::default();
    assert_eq!(
        (limits.memory_bytes, limits.call_timeout),
        (64 << 20, Duration::from_millis(100))
    );
}

// === the standard filters ===

/// Runs one request through `on_request_headers` of a started standard filter.
fn decide(instance: &mut FilterInstance, ex: &mut HttpExchange) -> FilterAction {
    let ctx = instance.create_http_context().unwrap();
    let action = instance.on_request_headers(ctx, ex, true);
    instance.finish_http_context(ctx, ex);
    action.unwrap_or_else(|e| panic!("{e}"))
}

fn property(ex: &HttpExchange, path: &str) -> Option<String> {
    ex.property(path).map(|v| String::from_utf8_lossy(v).into_owned())
}

#[test]
fn the_standard_router_answers_404_without_routes_and_routes_by_its_configuration() {
    let module = load("router", crate::filters::ROUTER_WASM);
    let mut empty = FilterInstance::start(&module, b"{}", &SandboxLimits::default()).unwrap_or_else(|e| panic!("{e}"));
    let mut ex = request();
    assert_eq!(
        decide(&mut empty, &mut ex),
        FilterAction::Pause,
        "a local reply pauses the stream"
    );
    assert_eq!(ex.local_reply.as_ref().map(|r| r.status), Some(404));
    assert_eq!(property(&ex, "tidegate.cluster"), None);

    let config = br#"{"listeners": [{"gateway": "default/gw", "name": "http", "port": 8080, "protocol": "HTTP",
        "routes": [{"namespace": "default", "name": "api",
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                       "backends": [{"cluster": "default/api:80"}]}]}]}]}"#;
    let mut router =
        FilterInstance::start(&module, config, &SandboxLimits::default()).unwrap_or_else(|e| panic!("{e}"));
    let mut ex = request();
    assert_eq!(decide(&mut router, &mut ex), FilterAction::Continue);
    assert!(ex.local_reply.is_none(), "{:?}", ex.local_reply);
    assert_eq!(property(&ex, "tidegate.cluster").as_deref(), Some("default/api:80"));
    let mut other = request();
    other.request_headers.set(":path", "/other");
    assert_eq!(decide(&mut router, &mut other), FilterAction::Pause);
    assert_eq!(other.local_reply.as_ref().map(|r| r.status), Some(404));
    assert!(!router.is_broken() && !empty.is_broken());

    match FilterInstance::start(&module, br#"{"listeners": 5}"#, &SandboxLimits::default()) {
        Err(WasmError::ConfigureRejected { .. }) => {}
        other => panic!(
            "an invalid router configuration must be rejected, got {:?}",
            other.map(|_| ())
        ),
    }
}

#[test]
fn the_standard_balancer_picks_round_robin_and_answers_503_without_endpoints() {
    let module = load("balancer", crate::filters::BALANCER_WASM);
    let config = br#"{"clusters": {
        "default/api:80": {"endpoints": ["10.0.0.1:80", "10.0.0.2:80"]},
        "default/empty:80": {"endpoints": []}}}"#;
    let mut balancer =
        FilterInstance::start(&module, config, &SandboxLimits::default()).unwrap_or_else(|e| panic!("{e}"));

    let mut unrouted = request();
    assert_eq!(
        decide(&mut balancer, &mut unrouted),
        FilterAction::Continue,
        "nothing routed: untouched"
    );
    assert_eq!(property(&unrouted, "tidegate.endpoint"), None);
    assert!(unrouted.local_reply.is_none());

    let mut picked = Vec::new();
    for _ in 0..4 {
        let mut ex = request();
        ex.properties.set("tidegate.cluster", "default/api:80");
        assert_eq!(decide(&mut balancer, &mut ex), FilterAction::Continue);
        assert!(ex.local_reply.is_none(), "{:?}", ex.local_reply);
        picked.push(property(&ex, "tidegate.endpoint").expect("an endpoint is chosen"));
    }
    assert_ne!(picked[0], picked[1], "round robin alternates: {picked:?}");
    assert_eq!(
        (&picked[0], &picked[1]),
        (&picked[2], &picked[3]),
        "and goes round: {picked:?}"
    );
    let mut sorted = picked[..2].to_vec();
    sorted.sort();
    assert_eq!(sorted, ["10.0.0.1:80", "10.0.0.2:80"]);

    for cluster in ["default/empty:80", "default/unknown:80"] {
        let mut ex = request();
        ex.properties.set("tidegate.cluster", cluster);
        assert_eq!(decide(&mut balancer, &mut ex), FilterAction::Pause, "{cluster}");
        assert_eq!(ex.local_reply.as_ref().map(|r| r.status), Some(503), "{cluster}");
        assert_eq!(property(&ex, "tidegate.endpoint"), None, "{cluster}");
    }
    assert!(!balancer.is_broken());

    match FilterInstance::start(&module, br#"{"clusters": []}"#, &SandboxLimits::default()) {
        Err(WasmError::ConfigureRejected { .. }) => {}
        other => panic!(
            "an invalid balancer configuration must be rejected, got {:?}",
            other.map(|_| ())
        ),
    }
}

/// Host overhead per request on a warm instance (run with `--ignored --nocapture`).
#[test]
#[ignore = "timing, not a check"]
fn per_request_overhead() {
    let mut w = Wat::new();
    let body = format!(
        r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (drop (call $get_header (i32.const 0) {path} (i32.const 0x80) (i32.const 0x84)))
    (drop (call $replace_header (i32.const 0) {name} {value}))
    (global.set $heap (i32.const 0x10000))
    (i32.const 0))
  (func (export "proxy_on_done") (param i32) (result i32) (i32.const 1))
"#,
        path = w.s(":path"),
        name = w.s("x-tidegate"),
        value = w.s("yes"),
    );
    let mut instance = start("bench", &w.module(&body), b"");
    let mut ex = request();
    let n = 200_000;
    let began = Instant::now();
    for _ in 0..n {
        let ctx = instance.create_http_context().unwrap();
        instance.on_request_headers(ctx, &mut ex, true).unwrap();
        instance.finish_http_context(ctx, &mut ex);
    }
    println!(
        "{:?} per request (context create, request headers with 2 hostcalls, done/log/delete)",
        began.elapsed() / n
    );
}

#[test]
fn stream_contexts_see_and_rewrite_l4_data_both_ways() {
    let mut w = Wat::new();
    let prefix = w.s(b"[tidegate]");
    let body = format!(
        r#"
  (func (export "proxy_on_new_connection") (param $ctx i32) (result i32)
    (call $rec (i32.const 0) (local.get $ctx))
    (i32.const 0))
  (func (export "proxy_on_downstream_data") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (call $rec (i32.const 1) (local.get $size))
    (call $rec (i32.const 2) (local.get $eos))
    ;; prepend a marker to the client's bytes
    (call $rec (i32.const 3) (call $set_buffer (i32.const 2) (i32.const 0) (i32.const 0) {prefix}))
    ;; the HTTP body is not the L4 data
    (call $rec (i32.const 4) (call $get_buffer (i32.const 0) (i32.const 0) (i32.const 100) (i32.const 0x80) (i32.const 0x84)))
    (i32.const 0))
  (func (export "proxy_on_upstream_data") (param $ctx i32) (param $size i32) (param $eos i32) (result i32)
    (call $rec (i32.const 5) (call $get_buffer (i32.const 3) (i32.const 0) (local.get $size) (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 6))
    ;; hold the upstream's bytes until more arrive
    (i32.const 1))
  (func (export "proxy_on_downstream_connection_close") (param $ctx i32) (param $peer i32)
    (call $rec (i32.const 8) (local.get $peer)))
  (func (export "proxy_on_upstream_connection_close") (param $ctx i32) (param $peer i32)
    (call $rec (i32.const 9) (local.get $peer)))
"#
    );
    let mut instance = start("l4", &w.module(&body), b"");
    let mut ex = HttpExchange::default();
    let ctx = instance.create_stream_context().unwrap();
    assert_eq!(
        instance.on_new_connection(ctx, &mut ex).unwrap(),
        FilterAction::Continue
    );
    assert_eq!(slot(&instance, 0), ctx);

    ex.request_body = BodyBuffer::new(bytes::Bytes::from_static(b"HELLO\n"));
    assert_eq!(
        instance.on_downstream_data(ctx, &mut ex, false).unwrap(),
        FilterAction::Continue
    );
    assert_eq!((slot(&instance, 1), slot(&instance, 2)), (6, 0));
    assert_eq!(slot(&instance, 3), OK);
    assert_eq!(
        slot(&instance, 4),
        NOT_FOUND,
        "HTTP_REQUEST_BODY is not served to an L4 callback"
    );
    assert_eq!(ex.request_body.as_slice(), b"[tidegate]HELLO\n");

    ex.response_body = BodyBuffer::new(bytes::Bytes::from_static(b"WORLD"));
    assert_eq!(
        instance.on_upstream_data(ctx, &mut ex, true).unwrap(),
        FilterAction::Pause
    );
    assert_eq!(slot(&instance, 5), OK);
    assert_eq!(kept(&instance, 6), b"WORLD");

    instance.on_downstream_close(ctx, PeerType::Remote).unwrap();
    instance.on_upstream_close(ctx, PeerType::Local).unwrap();
    assert_eq!((slot(&instance, 8), slot(&instance, 9)), (2, 1));
    instance.finish_http_context(ctx, &mut ex);
    assert_eq!(instance.open_contexts(), 0);
    assert!(!instance.is_broken());
}

// === Found by mutation testing (runtime/tests/MUTATION.md) ===

/// [`Wat::module`] with imports [`IMPORTS`] leaves out.
fn module_with_more_imports(w: &Wat, extra: &str, body: &str) -> Vec<u8> {
    let wat = format!(
        "(module\n{IMPORTS}\n{extra}\n  (memory (export \"memory\") {pages})\n{alloc}\n{HELPERS}\n{data}\n{body}\n)",
        pages = w.pages,
        alloc = w.allocator,
        data = w.data
    );
    wat::parse_str(&wat).unwrap_or_else(|e| panic!("invalid test WAT: {e}\n{wat}"))
}

/// A little-endian u64 the guest stored at `at`.
fn guest_u64_at(instance: &FilterInstance, at: usize) -> u64 {
    let mem = instance.guest_memory();
    u64::from_le_bytes(mem[at..at + 8].try_into().expect("8 bytes"))
}

#[test]
fn grpc_streams_check_their_arguments_then_fail_as_unimplemented() {
    let mut w = Wat::new();
    let extra = r#"
  (import "env" "proxy_grpc_stream" (func $grpc_stream (param i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_send" (func $grpc_send (param i32 i32 i32 i32) (result i32)))
  (import "env" "proxy_grpc_cancel" (func $grpc_cancel (param i32) (result i32)))
  (import "env" "proxy_grpc_close" (func $grpc_close (param i32) (result i32)))"#;
    let body = format!(
        r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $rec (i32.const 0) (call $grpc_stream {s} {s} {s} (i32.const 0) (i32.const 0) (i32.const 0x80)))
    (call $rec (i32.const 1) (call $grpc_stream {s} {s} {s} (i32.const 0) (i32.const 0) (i32.const -4)))
    (call $rec (i32.const 2) (call $grpc_stream (i32.const -1) (i32.const 8) {s} {s} (i32.const 0) (i32.const 0) (i32.const 0x80)))
    (call $rec (i32.const 3) (call $grpc_send (i32.const 1) {s} (i32.const 0)))
    (call $rec (i32.const 4) (call $grpc_send (i32.const 1) (i32.const -1) (i32.const 8) (i32.const 0)))
    (call $rec (i32.const 5) (call $grpc_cancel (i32.const 1)))
    (call $rec (i32.const 6) (call $grpc_close (i32.const 1)))
    (i32.const 0))
"#,
        s = w.s("svc"),
    );
    let mut instance = start("grpc-stream", &module_with_more_imports(&w, extra, &body), b"");
    run_request(&mut instance, &mut request()).unwrap();
    assert_eq!(slot(&instance, 0), INTERNAL_FAILURE, "gRPC streams are not implemented");
    assert_eq!(
        slot(&instance, 1),
        INVALID_MEMORY_ACCESS,
        "the token slot is checked first"
    );
    assert_eq!(slot(&instance, 2), INVALID_MEMORY_ACCESS, "so are the strings");
    assert_eq!(slot(&instance, 3), NOT_FOUND, "no stream exists to send on");
    assert_eq!(slot(&instance, 4), INVALID_MEMORY_ACCESS);
    assert_eq!((slot(&instance, 5), slot(&instance, 6)), (NOT_FOUND, NOT_FOUND));
    assert!(!instance.is_broken());
}

#[test]
fn a_callout_answer_is_readable_headers_and_trailers_alike() {
    let mut w = Wat::new();
    let mut call_headers = Vec::new();
    codec::serialize_map(
        &[
            (":method".into(), b"GET".to_vec()),
            (":path".into(), b"/".to_vec()),
            (":authority".into(), b"auth".to_vec()),
        ],
        &mut call_headers,
    );
    let body = format!(
        r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $rec (i32.const 0) (call $http_call {upstream} {call_headers} (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 0x80)))
    (i32.const 1))
  (func (export "proxy_on_http_call_response") (param i32 i32 i32 i32 i32)
    (call $rec (i32.const 1) (call $get_header (i32.const 6) {status} (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 2))
    (call $rec (i32.const 4) (call $get_header (i32.const 7) {check} (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 5)))
"#,
        upstream = w.s("outbound|80||auth.svc"),
        call_headers = w.s(&call_headers),
        status = w.s(":status"),
        check = w.s("x-check"),
    );
    let module = load("callout-answer", &w.module(&body));
    let env = crate::wasm::services::InstanceEnv {
        services: Some(std::sync::Arc::new(OneUpstream)),
        queue_waker: None,
    };
    let mut instance =
        FilterInstance::start_with(&module, b"", &SandboxLimits::default(), &env).unwrap_or_else(|e| panic!("{e}"));
    let mut ex = request();
    let ctx = instance.create_http_context().unwrap();
    assert_eq!(
        instance.on_request_headers(ctx, &mut ex, true).unwrap(),
        FilterAction::Pause
    );
    assert_eq!(slot(&instance, 0), OK);
    let sent = instance.take_callouts();
    assert_eq!(sent.len(), 1, "{sent:?}");
    let answer = CalloutResponse {
        headers: HeaderList::from_pairs([(":status", "200")]),
        body: Vec::new(),
        trailers: HeaderList::from_pairs([("x-check", "passed")]),
    };
    assert!(
        instance
            .on_http_call_response(ctx, sent[0].token, Some(answer), Some(&mut ex))
            .unwrap()
    );
    assert_eq!(slot(&instance, 1), OK);
    assert_eq!(kept(&instance, 2), b"200");
    assert_eq!(
        slot(&instance, 4),
        OK,
        "HTTP_CALL_RESPONSE_TRAILERS is readable in the callback"
    );
    assert_eq!(kept(&instance, 5), b"passed");
    instance.finish_http_context(ctx, &mut ex);
    assert_eq!(instance.open_contexts(), 0);
}

#[test]
fn a_local_reply_body_may_be_exactly_the_limit() {
    let max = crate::wasm::abi::local_reply::MAX_LOCAL_REPLY_BODY;
    let mut w = Wat::new();
    // The body is read from 0x20000; 20 pages leave room for the limit past it.
    w.pages = 20;
    let body = format!(
        r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $rec (i32.const 0) (call $send_local_response (i32.const 200) (i32.const 0) (i32.const 0) (i32.const 0x20000) (i32.const {over}) (i32.const 0) (i32.const 0) (i32.const -1)))
    (call $rec (i32.const 1) (call $send_local_response (i32.const 200) (i32.const 0) (i32.const 0) (i32.const 0x20000) (i32.const {max}) (i32.const 0) (i32.const 0) (i32.const -1)))
    (i32.const 1))
"#,
        over = max + 1,
    );
    let mut instance = start("big-reply", &w.module(&body), b"");
    let mut ex = request();
    run_request(&mut instance, &mut ex).unwrap();
    assert_eq!(slot(&instance, 0), BAD_ARGUMENT, "one byte over the limit");
    assert_eq!(slot(&instance, 1), OK, "the limit itself is allowed");
    assert_eq!(ex.local_reply.expect("reply recorded").body.len(), max);
}

#[test]
fn the_wasi_monotonic_clock_advances() {
    let w = Wat::new();
    let body = r#"
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (call $rec (i32.const 0) (call $clock_time_get (i32.const 1) (i64.const 1) (i32.const 0x400)))
    (i32.const 1))
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $rec (i32.const 1) (call $clock_time_get (i32.const 1) (i64.const 1) (i32.const 0x408)))
    (i32.const 0))
"#;
    let mut instance = start("monotonic", &w.module(body), b"");
    std::thread::sleep(Duration::from_millis(5));
    run_request(&mut instance, &mut request()).unwrap();
    assert_eq!((slot(&instance, 0), slot(&instance, 1)), (0, 0));
    let (first, second) = (guest_u64_at(&instance, 0x400), guest_u64_at(&instance, 0x408));
    assert!(
        second >= first + 5_000_000,
        "monotonic {first} then {second} across a 5 ms sleep"
    );
}

#[test]
fn an_item_enqueued_on_a_registered_queue_is_dequeued_once() {
    let mut w = Wat::new();
    let extra = r#"
  (import "env" "proxy_enqueue_shared_queue" (func $enqueue (param i32 i32 i32) (result i32)))
  (import "env" "proxy_resolve_shared_queue" (func $resolve_queue (param i32 i32 i32 i32 i32) (result i32)))"#;
    let body = format!(
        r#"
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (call $rec (i32.const 0) (call $register_queue {name} (i32.const 0x90)))
    (call $rec (i32.const 1) (call $enqueue (i32.load (i32.const 0x90)) {item}))
    (call $rec (i32.const 2) (call $dequeue (i32.load (i32.const 0x90)) (i32.const 0x80) (i32.const 0x84)))
    (call $keep (i32.const 3))
    (call $rec (i32.const 5) (call $dequeue (i32.load (i32.const 0x90)) (i32.const 0x80) (i32.const 0x84)))
    (call $rec (i32.const 6) (call $resolve_queue (i32.const 0) (i32.const 0) {name} (i32.const 0x94)))
    (call $rec (i32.const 7) (i32.eq (i32.load (i32.const 0x90)) (i32.load (i32.const 0x94))))
    (call $rec (i32.const 8) (call $enqueue (i32.const 0x7fff0000) {item}))
    (i32.const 1))
"#,
        name = w.s("mutation-tests-queue"),
        item = w.s("item-1"),
    );
    let instance = start("queue-roundtrip", &module_with_more_imports(&w, extra, &body), b"");
    assert_eq!(slot(&instance, 0), OK);
    assert_eq!(slot(&instance, 1), OK, "enqueue on a registered queue");
    assert_eq!(slot(&instance, 2), OK);
    assert_eq!(kept(&instance, 3), b"item-1");
    assert_eq!(slot(&instance, 5), EMPTY, "the item is taken once");
    assert_eq!(
        (slot(&instance, 6), slot(&instance, 7)),
        (OK, 1),
        "resolve finds the same queue"
    );
    assert_eq!(slot(&instance, 8), NOT_FOUND, "no such queue");
}

#[test]
fn wasi_bounds_and_descriptors_in_detail() {
    let max = crate::wasm::abi::wasi::MAX_RANDOM;
    let mut w = Wat::new();
    // random_get writes up to the limit at 0x20000: 4 pages hold it.
    w.pages = 4;
    let (ab_ptr, ab_len) = w.place(b"ab");
    let (cde_ptr, cde_len) = w.place(b"cde");
    let extra = r#"
  (import "wasi_snapshot_preview1" "fd_fdstat_get" (func $fd_fdstat_get (param i32 i32) (result i32)))"#;
    let body = format!(
        r#"
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (call $rec (i32.const 0) (call $random_get (i32.const 0x20000) (i32.const {max})))
    (call $rec (i32.const 1) (call $random_get (i32.const 0x20000) (i32.const {over})))
    ;; two iovecs of different lengths at 0x300
    (i32.store (i32.const 0x300) (i32.const {ab_ptr}))
    (i32.store (i32.const 0x304) (i32.const {ab_len}))
    (i32.store (i32.const 0x308) (i32.const {cde_ptr}))
    (i32.store (i32.const 0x30c) (i32.const {cde_len}))
    (call $rec (i32.const 2) (call $fd_write (i32.const 2) (i32.const 0x300) (i32.const 2) (i32.const 0x90)))
    (call $rec (i32.const 3) (i32.load (i32.const 0x90)))
    (call $rec (i32.const 4) (call $fd_fdstat_get (i32.const 1) (i32.const 0x400)))
    (call $rec (i32.const 5) (call $fd_fdstat_get (i32.const 0) (i32.const 0x420)))
    (call $rec (i32.const 6) (call $fd_fdstat_get (i32.const 7) (i32.const 0x440)))
    (call $rec (i32.const 7) (call $fd_fdstat_get (i32.const 1) (i32.const -8)))
    (i32.const 1))
"#,
        over = max + 1,
    );
    let instance = start("wasi-detail", &module_with_more_imports(&w, extra, &body), b"");
    assert_eq!(slot(&instance, 0), 0, "random_get of exactly the limit");
    assert_eq!(slot(&instance, 1), WASI_INVAL, "one byte over it");
    assert_eq!(
        (slot(&instance, 2), slot(&instance, 3)),
        (0, 5),
        "both iovecs are counted"
    );
    assert_eq!(slot(&instance, 4), 0);
    let mem = instance.guest_memory();
    assert_eq!(mem[0x400], 2, "stdout is a character device");
    assert_eq!(guest_u64_at(&instance, 0x408), 1 << 6, "writable");
    assert_eq!(slot(&instance, 5), 0);
    assert_eq!(guest_u64_at(&instance, 0x428), 1 << 1, "stdin is readable");
    assert_eq!(slot(&instance, 6), WASI_BADF);
    assert_eq!(slot(&instance, 7), WASI_FAULT);
}

#[test]
fn shared_data_accounting_survives_overwrites() {
    use crate::wasm::abi::shared_data::{MAX_BYTES_PER_VM, MAX_VALUE, set};
    let vm: std::sync::Arc<str> = std::sync::Arc::from("mutation-tests-shared-data-accounting");
    let value = vec![0u8; MAX_VALUE];
    set(&vm, b"a", &value, 0).unwrap();
    set(&vm, b"b", &value, 0).unwrap();
    set(&vm, b"s", b"1", 0).unwrap();
    // Overwriting a value replaces its bytes in the VM's total; it neither adds nor loses any.
    for _ in 0..3 {
        set(&vm, b"a", &value, 0).unwrap();
    }
    // So exactly as many new 1 MiB entries fit as the true total leaves room for.
    let used = 2 * (1 + MAX_VALUE) + 2;
    let room = (MAX_BYTES_PER_VM - used) / (3 + MAX_VALUE);
    let mut stored = 0;
    while set(&vm, format!("k{stored:02}").as_bytes(), &value, 0).is_ok() {
        stored += 1;
        assert!(stored <= room, "more fits than the limit allows");
    }
    assert_eq!(stored, room);
    // An overwrite that would grow the total past the limit is refused too.
    let left = MAX_BYTES_PER_VM - used - room * (3 + MAX_VALUE);
    assert!(left < MAX_VALUE - 1, "the test needs less room left than the growth");
    assert!(set(&vm, b"s", &value, 0).is_err());
    assert_eq!(&*crate::wasm::abi::shared_data::get(&vm, b"s").expect("kept").0, b"1");
}

#[test]
fn metric_names_and_local_reply_headers_may_reach_their_limits() {
    use crate::wasm::abi::headers::MAX_HEADERS;
    use crate::wasm::abi::metrics::{MAX_NAME, define};
    let filter: std::sync::Arc<str> = std::sync::Arc::from("mutation-tests-metric-names");
    assert!(define(&filter, MetricKind::Counter, &"m".repeat(MAX_NAME)).is_ok());
    assert!(define(&filter, MetricKind::Counter, &"m".repeat(MAX_NAME + 1)).is_err());

    let headers = |n: usize| {
        let pairs: Vec<(String, Vec<u8>)> = (0..n).map(|i| (format!("h{i}"), b"v".to_vec())).collect();
        let mut out = Vec::new();
        codec::serialize_map(&pairs, &mut out);
        out
    };
    let mut w = Wat::new();
    let body = format!(
        r#"
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    (call $rec (i32.const 0) (call $send_local_response (i32.const 403) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) {over} (i32.const -1)))
    (call $rec (i32.const 1) (call $send_local_response (i32.const 403) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) {max} (i32.const -1)))
    (i32.const 1))
"#,
        over = w.s(headers(MAX_HEADERS + 1)),
        max = w.s(headers(MAX_HEADERS)),
    );
    let mut instance = start("many-headers", &w.module(&body), b"");
    let mut ex = request();
    run_request(&mut instance, &mut ex).unwrap();
    assert_eq!(slot(&instance, 0), BAD_ARGUMENT, "one header over the limit");
    assert_eq!(slot(&instance, 1), OK, "the limit itself is allowed");
    assert_eq!(ex.local_reply.expect("reply recorded").headers.len(), MAX_HEADERS);
}

#[test]
fn the_log_level_filters_see_is_the_host_s() {
    let w = Wat::new();
    let body = r#"
  (func (export "proxy_on_configure") (param i32 i32) (result i32)
    (call $rec (i32.const 0) (call $get_log_level (i32.const 0x90)))
    (call $rec (i32.const 1) (i32.load (i32.const 0x90)))
    (i32.const 1))
"#;
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::sink)
        .finish();
    let instance = tracing::subscriber::with_default(subscriber, || start("log-level", &w.module(body), b""));
    assert_eq!(slot(&instance, 0), OK);
    assert_eq!(slot(&instance, 1), 3, "WARN");
}
