//! The filter tutorial (`sdk/README.md`), step by step, with the real binary, real cargo, the
//! real echo backend and curl: scaffold a filter, build it for wasm32-wasip1, run its tests,
//! serve it in front of the quickstart Gateway, and change its configuration live.
//!
//! Differences from the tutorial, all for running beside other tests: the crate lives in a
//! temporary directory; cargo builds into one shared directory, `target/tutorial` (so a second
//! run is incremental: the first compiles tidegate's host for the crate's tests, minutes; later
//! ones take seconds), which is why `spec.module.file` is adjusted; the echo backend and the
//! admin server use free ports; and the Gateway's ports are shifted with `--port-offset`.

use std::io::Read as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "common/env.rs"]
mod env;

use env::{BIN, Proc, free_port, port_offset};
const CHECKOUT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// `target/tutorial`: shared by runs, beside the workspace's own builds.
fn shared_target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), Path::to_path_buf)
        .join("tutorial")
}

/// Runs a step's command to completion; panics with its output if it fails.
fn step(what: &str, command: &mut Command) -> Output {
    let began = Instant::now();
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: could not start: {e}"));
    eprintln!("tutorial: {what}: {:.1?}", began.elapsed());
    assert!(
        output.status.success(),
        "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `cargo ARGS` in the crate, building into the shared target directory.
fn cargo(crate_dir: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command
        .args(args)
        .current_dir(crate_dir)
        .env("CARGO_TARGET_DIR", shared_target_dir());
    // This test runs under cargo; none of its build settings are the tutorial's.
    for var in [
        "CARGO_BUILD_TARGET",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        command.env_remove(var);
    }
    command
}

/// A status line and headers from `curl -si`.
struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

fn curl(url: &str, headers: &[&str]) -> Reply {
    let mut command = Command::new("curl");
    command.args(["-si", "--max-time", "5", url]);
    for header in headers {
        command.args(["-H", header]);
    }
    let output = command.output().expect("run curl (is it installed?)");
    let text = String::from_utf8_lossy(&output.stdout).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Reply {
        status,
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn ready(admin: &str) -> bool {
    use std::io::Write as _;
    let Ok(mut stream) = TcpStream::connect(admin) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"GET /ready HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
}

/// Polls `check` until it holds or `limit` passes; returns the last reply either way.
fn eventually(limit: Duration, mut attempt: impl FnMut() -> Reply, check: impl Fn(&Reply) -> bool) -> Reply {
    let began = Instant::now();
    loop {
        let reply = attempt();
        if check(&reply) || began.elapsed() > limit {
            return reply;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn backends_yaml(port: u16) -> String {
    ["echo-v1", "echo-v2"]
        .iter()
        .map(|service| {
            format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {service}, namespace: demo, labels: {{kubernetes.io/service-name: {service}}}}}\naddressType: IPv4\nendpoints: [{{addresses: [127.0.0.1], conditions: {{ready: true}}}}]\nports: [{{name: http, port: {port}}}]\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Replaces the `file:` of wasmfilter.yaml, keeping the rest of the line.
fn with_module_file(yaml: &str, file: &Path) -> String {
    let quoted = serde_json::to_string(&file.display().to_string()).expect("a string serializes");
    yaml.lines()
        .map(|line| match line.trim_start().strip_prefix("file:") {
            Some(rest) => {
                let indent = &line[..line.len() - line.trim_start().len()];
                let comment = rest.find('#').map(|i| format!("   {}", &rest[i..])).unwrap_or_default();
                format!("{indent}file: {quoted}{comment}")
            }
            None => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// Rewrites a config file the way an editor does (write, then rename over it).
fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).expect("read config");
    assert!(text.contains(from), "{} has no {from:?}:\n{text}", path.display());
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text.replacen(from, to, 1)).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

#[test]
fn the_filter_tutorial_works_as_written() {
    let began = Instant::now();
    let work = tempfile::tempdir().expect("temp dir");
    let crate_dir = work.path().join("hello-filter");
    let logs = work.path().join("logs");
    std::fs::create_dir_all(&logs).expect("logs dir");

    // 1. Scaffold.
    step(
        "tidegate filter new hello-filter",
        Command::new(BIN)
            .args(["filter", "new", "hello-filter", "--dir"])
            .arg(&crate_dir),
    );
    for file in [
        "Cargo.toml",
        "src/lib.rs",
        "tests/filter.rs",
        "README.md",
        ".gitignore",
        "wasmfilter.yaml",
    ] {
        assert!(crate_dir.join(file).is_file(), "scaffold wrote no {file}");
    }

    // 3. Build, with no warnings.
    let build = step(
        "cargo build --target wasm32-wasip1 --release",
        &mut cargo(&crate_dir, &["build", "--target", "wasm32-wasip1", "--release"]),
    );
    let build_log = String::from_utf8_lossy(&build.stderr);
    assert!(
        !build_log.contains("warning"),
        "the scaffolded filter builds with warnings:\n{build_log}"
    );
    let wasm = shared_target_dir().join("wasm32-wasip1/release/hello_filter.wasm");
    let size = std::fs::metadata(&wasm).map(|m| m.len()).unwrap_or(0);
    assert!(size > 0, "no module at {}", wasm.display());
    eprintln!("tutorial: hello_filter.wasm is {} KiB", size / 1024);

    // 4. Test.
    let test = step("cargo test", &mut cargo(&crate_dir, &["test"]));
    let test_log = String::from_utf8_lossy(&test.stdout);
    assert!(
        test_log.contains("test result: ok. 3 passed"),
        "tests/filter.rs did not run:\n{test_log}"
    );

    // 5. Run: the quickstart, the WasmFilter (with `file` adjusted), an echo backend.
    let config = work.path().join("config");
    std::fs::create_dir_all(&config).expect("config dir");
    for file in ["gateway.yaml", "routes.yaml", "services.yaml"] {
        let from = Path::new(CHECKOUT).join("examples/quickstart").join(file);
        std::fs::copy(&from, config.join(file)).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
    let wasmfilter = std::fs::read_to_string(crate_dir.join("wasmfilter.yaml")).expect("wasmfilter.yaml");
    std::fs::write(config.join("wasmfilter.yaml"), with_module_file(&wasmfilter, &wasm)).expect("write");
    let echo_port = free_port();
    std::fs::write(config.join("backends.yaml"), backends_yaml(echo_port)).expect("write");

    let echo_listen = format!("127.0.0.1:{echo_port}");
    let _echo = Proc::start(
        "echo",
        &["echo", "--listen", &echo_listen, "--namespace", "demo"],
        &logs,
    );
    let admin = format!("127.0.0.1:{}", free_port());
    // The quickstart's listeners (8080, 8443) on free ports.
    let offset = port_offset(&[8080, 8443]);
    let _tidegate = Proc::start(
        "tidegate",
        &[
            "run",
            "--config-dir",
            config.to_str().expect("utf-8 path"),
            "--listen-address",
            "127.0.0.1",
            "--admin",
            &admin,
            "--port-offset",
            &offset.to_string(),
        ],
        &logs,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready(&admin) {
        assert!(Instant::now() < deadline, "tidegate run did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let url = format!("http://127.0.0.1:{}/", 8080 + offset);

    let reply = eventually(
        Duration::from_secs(10),
        || curl(&url, &[]),
        |r| r.header("x-hello").is_some(),
    );
    assert_eq!(reply.status, 200, "{}\n{}", reply.head, reply.body);
    assert_eq!(
        reply.header("x-hello"),
        Some("world"),
        "the WasmFilter did not take effect:\n{}",
        reply.head
    );

    // 6. Change it live: the header's value, then a required header.
    let file = config.join("wasmfilter.yaml");
    edit(&file, "value: world", "value: tidegate");
    let reply = eventually(
        Duration::from_secs(10),
        || curl(&url, &[]),
        |r| r.header("x-hello") == Some("tidegate"),
    );
    assert_eq!(
        reply.header("x-hello"),
        Some("tidegate"),
        "the edit did not apply:\n{}",
        reply.head
    );

    edit(&file, "value: tidegate}", "value: tidegate, requireHeader: x-user}");
    let denied = eventually(Duration::from_secs(10), || curl(&url, &[]), |r| r.status == 403);
    assert_eq!(denied.status, 403, "{}\n{}", denied.head, denied.body);
    assert_eq!(denied.body, "missing required header x-user\n");
    let allowed = curl(&url, &["x-user: ann"]);
    assert_eq!(allowed.status, 200, "{}\n{}", allowed.head, allowed.body);
    assert_eq!(allowed.header("x-hello"), Some("tidegate"));

    // A configuration the filter rejects does not apply; the previous one keeps serving, and
    // `tidegate status` says why (the tutorial's promise). Waiting for the status first proves
    // the edit was processed, not merely not yet seen.
    assert!(
        filter_status(&admin).contains("Programmed=True"),
        "before the rejected edit: {}",
        filter_status(&admin)
    );
    edit(&file, "value: tidegate, ", "");
    let began_waiting = Instant::now();
    let mut line = filter_status(&admin);
    while !line.contains("Programmed=False(StartFailed)") && began_waiting.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        line = filter_status(&admin);
    }
    assert!(
        line.contains("Programmed=False(StartFailed)"),
        "the WasmFilter's status does not say the configuration was refused: {line}"
    );
    let kept = curl(&url, &["x-user: ann"]);
    assert_eq!(kept.status, 200, "{}\n{}", kept.head, kept.body);
    assert_eq!(
        kept.header("x-hello"),
        Some("tidegate"),
        "the rejected configuration applied"
    );
    assert_eq!(curl(&url, &[]).status, 403);

    eprintln!("tutorial: every step passed in {:.1?}", began.elapsed());
}

/// The WasmFilter's line of `tidegate status` (the command the tutorial tells authors to run).
fn filter_status(admin: &str) -> String {
    let output = Command::new(BIN)
        .args(["status", "--admin", admin])
        .stdin(Stdio::null())
        .output()
        .expect("run tidegate status");
    assert!(output.status.success(), "tidegate status: {output:?}");
    let table = String::from_utf8_lossy(&output.stdout).into_owned();
    table
        .lines()
        .find(|l| l.starts_with("WasmFilter "))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no WasmFilter in `tidegate status`:\n{table}"))
}

#[test]
fn the_module_file_is_adjusted_in_place() {
    let yaml = "spec:\n  module:\n    file: target/x.wasm   # absolute, or relative\n  phase: PreRouting\n";
    assert_eq!(
        with_module_file(yaml, Path::new("/t/x.wasm")),
        "spec:\n  module:\n    file: \"/t/x.wasm\"   # absolute, or relative\n  phase: PreRouting\n"
    );
}
