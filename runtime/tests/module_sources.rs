//! WasmFilter module sources other than a file, end to end with the real binary and real
//! peers: `configMap` (a ConfigMap's binaryData, followed live), `http` (nginx serving the
//! module) and `oci` (Debian's `docker-registry`, the CNCF distribution registry, with the module
//! pushed through the registry API). Missing peers fail the tests: install `nginx-light` (or
//! `nginx`), `docker-registry`, `curl` and `tar`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use sha2::{Digest as _, Sha256};

#[path = "common/env.rs"]
mod env;

use env::{
    EXAMPLES, Env, Proc, conditions, curl, free_port, gateway, header_at_backend, peer, route, service, start_nginx,
    wait_for_port,
};

const WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The path of a peer program, or a failure saying which package provides it.
fn module(artifact: &str) -> Vec<u8> {
    let path = Path::new(EXAMPLES).join(format!("{artifact}.wasm"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A WasmFilter `ns/name` with module source `source` (a YAML flow mapping), attached to one
/// route after routing, adding the request header `x-a: <value>`.
fn filter(name: &str, source: &str, route: &str, value: &str, extra: &str) -> String {
    format!(
        "apiVersion: tidegate.dev/v1alpha1\nkind: WasmFilter\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  module: {source}\n  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: {route}}}]\n  phase: PostRouting\n  config: {{request_headers: [[x-a, \"{value}\"]]}}\n{extra}"
    )
}

/// Waits for the WasmFilter's ResolvedRefs condition to be `status` with a message containing
/// every one of `parts`, and returns the message.
fn wait_resolved(env: &Env, name: &str, status: &str, parts: &[&str], limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let found = conditions(env, name);
        if let Some((_, _, message)) = found
            .iter()
            .find(|(t, s, m)| t == "ResolvedRefs" && s == status && parts.iter().all(|p| m.contains(p)))
        {
            return message.clone();
        }
        assert!(
            Instant::now() < deadline,
            "{name}: no ResolvedRefs={status} containing {parts:?} within {limit:?}; conditions: {found:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The `x-a` header the echo backend saw for a request to `path` (None when the request failed
/// or carried none), and the status.
fn x_a(env: &Env, path: &str) -> (u16, Option<String>) {
    let response = curl(&[&env.url(80, path)]);
    if response.status != 200 {
        return (response.status, None);
    }
    (200, header_at_backend(&response.body, "X-A"))
}

fn base_config(env: &Env, web: &env::Backend, routes: &[&str]) {
    env.write("gateway.yaml", &gateway(""));
    env.write("web.yaml", &service("web", None, &[web], false));
    let routes: Vec<String> = routes
        .iter()
        .map(|name| route(name, &format!("/{name}"), "web"))
        .collect();
    env.write("routes.yaml", &routes.join("---\n"));
}

fn config_map(name: &str, entries: &[(&str, &[u8])]) -> String {
    let mut text = format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: {name}, namespace: ns}}\nbinaryData:\n");
    for (key, bytes) in entries {
        let encoded = base64::engine::general_purpose::STANDARD.encode(bytes);
        text.push_str(&format!("  {key}: {encoded}\n"));
    }
    text
}

#[test]
fn config_map_modules_load_and_follow_edits_of_the_config_map() {
    let (mut env, backends) = Env::new(&["web-0"]);
    base_config(&env, &backends[0], &["web", "closed"]);
    let header_rewrite = module("header_rewrite");
    env.write(
        "filters-cm.yaml",
        &config_map("filters", &[("header-rewrite.wasm", &header_rewrite)]),
    );
    env.write(
        "from-map.yaml",
        &filter(
            "from-map",
            "{configMap: {name: filters, key: header-rewrite.wasm}}",
            "web",
            "1",
            "",
        ),
    );
    env.write(
        "missing-key.yaml",
        &filter(
            "missing-key",
            "{configMap: {name: filters, key: later.wasm}}",
            "closed",
            "2",
            "",
        ),
    );
    env.write(
        "missing-map.yaml",
        &filter(
            "missing-map",
            "{configMap: {name: nowhere, key: f.wasm}}",
            "closed",
            "3",
            "  failurePolicy: FailOpen\n",
        ),
    );
    env.start();

    assert_eq!(x_a(&env, "/web"), (200, Some("1".into())));
    let sha = sha256(&header_rewrite);
    wait_resolved(&env, "from-map", "True", &[&sha], Duration::from_secs(5));
    // A missing key or ConfigMap is reported on the WasmFilter with the fix; FailClosed stands
    // in a 500, FailOpen is left out.
    wait_resolved(
        &env,
        "missing-key",
        "False",
        &[
            "spec.module.configMap: ConfigMap ns/filters has no key later.wasm in binaryData (keys: header-rewrite.wasm)",
            "fix spec.module.configMap.key",
        ],
        Duration::from_secs(5),
    );
    wait_resolved(
        &env,
        "missing-map",
        "False",
        &["ConfigMap ns/nowhere not found", "kubectl create configmap nowhere"],
        Duration::from_secs(5),
    );
    let closed = curl(&[&env.url(80, "/closed")]);
    assert_eq!(closed.status, 500, "{}", closed.body);
    assert!(
        closed.body.contains("later.wasm"),
        "the stand-in says why: {}",
        closed.body
    );

    // Adding the key loads the module: the waiting filter applies, the FailOpen one stays out.
    env.write(
        "filters-cm.yaml",
        &config_map(
            "filters",
            &[
                ("header-rewrite.wasm", &header_rewrite),
                ("later.wasm", &header_rewrite),
            ],
        ),
    );
    env.eventually(Duration::from_secs(5), "the module added to the ConfigMap", || {
        x_a(&env, "/closed") == (200, Some("2".into()))
    });

    // Editing the ConfigMap swaps the module live: the noop module adds no header.
    let noop = module("noop");
    env.write(
        "filters-cm.yaml",
        &config_map(
            "filters",
            &[("header-rewrite.wasm", &noop), ("later.wasm", &header_rewrite)],
        ),
    );
    env.eventually(Duration::from_secs(5), "the edited module", || {
        x_a(&env, "/web") == (200, None)
    });
    wait_resolved(&env, "from-map", "True", &[&sha256(&noop)], Duration::from_secs(5));

    // A broken module in the ConfigMap is what the user asked for: it is reported and the
    // filter's failure policy applies (FailClosed: 500), as for a broken module file.
    env.write(
        "filters-cm.yaml",
        &config_map(
            "filters",
            &[("header-rewrite.wasm", b"not wasm"), ("later.wasm", &header_rewrite)],
        ),
    );
    let message = wait_resolved(
        &env,
        "from-map",
        "False",
        &["spec.module.configMap ns/filters header-rewrite.wasm"],
        Duration::from_secs(5),
    );
    assert!(
        conditions(&env, "from-map")
            .iter()
            .any(|(t, s, _)| t == "Programmed" && s == "False"),
        "{message}"
    );
    assert_eq!(x_a(&env, "/web").0, 500);
    assert_eq!(
        x_a(&env, "/closed"),
        (200, Some("2".into())),
        "other filters are unaffected"
    );

    // Repairing the ConfigMap repairs the filter.
    env.write(
        "filters-cm.yaml",
        &config_map(
            "filters",
            &[
                ("header-rewrite.wasm", &header_rewrite),
                ("later.wasm", &header_rewrite),
            ],
        ),
    );
    env.eventually(Duration::from_secs(5), "the repaired module", || {
        x_a(&env, "/web") == (200, Some("1".into()))
    });
}

/// PEM files of a test PKI: a CA, a server certificate for `localhost` signed by it, and one
/// signed by nobody the proxy trusts.
struct TestPki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    untrusted_cert: PathBuf,
    untrusted_key: PathBuf,
}

fn test_pki(dir: &Path) -> TestPki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    std::fs::create_dir_all(dir).expect("pki dir");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_params = || CertificateParams::new(vec!["localhost".to_string()]).expect("leaf params");
    let key = KeyPair::generate().expect("leaf key");
    let cert = leaf_params().signed_by(&key, &issuer).expect("leaf certificate");
    let untrusted_key = KeyPair::generate().expect("key");
    let untrusted = leaf_params()
        .self_signed(&untrusted_key)
        .expect("self-signed certificate");
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write PEM");
        path
    };
    TestPki {
        ca: write("ca.pem", ca_cert.pem()),
        cert: write("cert.pem", cert.pem()),
        key: write("key.pem", key.serialize_pem()),
        untrusted_cert: write("untrusted.pem", untrusted.pem()),
        untrusted_key: write("untrusted-key.pem", untrusted_key.serialize_pem()),
    }
}

/// The access log of the plain-HTTP module server (nginx's combined format).
fn module_server_access_log(env: &Env) -> std::path::PathBuf {
    env.dir.path().join("nginx").join("access.log")
}

/// How many `GET path` requests the plain-HTTP module server answered with `status`.
fn module_server_answers(env: &Env, path: &str, status: u16) -> usize {
    let log = std::fs::read_to_string(module_server_access_log(env)).unwrap_or_default();
    let request = format!("\"GET {path} HTTP/1.1\" {status} ");
    log.lines().filter(|l| l.contains(&request)).count()
}

/// nginx serving `root` as static files on `port`, and over TLS on `tls_port` (a certificate
/// the proxy trusts) and `untrusted_port` (one it does not).
fn start_module_server(env: &Env, port: u16, root: &Path, tls_port: u16, untrusted_port: u16, pki: &TestPki) -> Proc {
    let servers = format!(
        r#"
    server {{
        listen 127.0.0.1:{port};
        root {root};
        access_log {access_log};
        location = /moved.wasm {{ return 302 /header-rewrite.wasm; }}
    }}
    server {{
        listen 127.0.0.1:{tls_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        root {root};
    }}
    server {{
        listen 127.0.0.1:{untrusted_port} ssl;
        ssl_certificate {untrusted_cert};
        ssl_certificate_key {untrusted_key};
        root {root};
    }}
"#,
        root = root.display(),
        access_log = module_server_access_log(env).display(),
        cert = pki.cert.display(),
        key = pki.key.display(),
        untrusted_cert = pki.untrusted_cert.display(),
        untrusted_key = pki.untrusted_key.display(),
    );
    start_nginx(env, "nginx", &servers, &[port, tls_port, untrusted_port])
}

/// nginx in front of a registry as public registries are: `/v2/` answers 401 with a Bearer
/// challenge unless the request carries the token, which `/token` hands out anonymously for
/// the right service and scope.
fn start_token_front(env: &Env, port: u16, registry_port: u16, repository: &str) -> Proc {
    let servers = format!(
        r#"
    server {{
        listen 127.0.0.1:{port};
        location = /token {{
            default_type application/json;
            if ($arg_service != "test-registry") {{ return 400 '{{"error":"bad service"}}'; }}
            if ($arg_scope != "repository:{repository}:pull") {{ return 400 '{{"error":"bad scope"}}'; }}
            return 200 '{{"token":"anonymous-pull-token"}}';
        }}
        location /v2/ {{
            default_type application/json;
            if ($http_authorization != "Bearer anonymous-pull-token") {{
                add_header WWW-Authenticate 'Bearer realm="http://127.0.0.1:{port}/token",service="test-registry",scope="repository:{repository}:pull"' always;
                return 401 '{{"errors":[{{"code":"UNAUTHORIZED","message":"authentication required"}}]}}';
            }}
            proxy_pass http://127.0.0.1:{registry_port};
        }}
    }}
"#
    );
    start_nginx(env, "token-front", &servers, &[port])
}

#[test]
fn http_modules_are_fetched_in_the_background_and_failures_are_reported() {
    let (mut env, backends) = Env::new(&["web-0"]);
    let www = env.dir.path().join("www");
    std::fs::create_dir_all(&www).expect("www");
    let header_rewrite = module("header_rewrite");
    std::fs::write(www.join("header-rewrite.wasm"), &header_rewrite).expect("write module");
    let (port, tls_port, untrusted_port) = (free_port(), free_port(), free_port());
    let pki = test_pki(&env.dir.path().join("pki"));
    let _nginx = start_module_server(&env, port, &www, tls_port, untrusted_port, &pki);
    // A server that accepts and never answers: its fetch stays "not loaded yet".
    let black_hole = TcpListener::bind("127.0.0.1:0").expect("bind");
    let black_hole_port = black_hole.local_addr().expect("addr").port();
    let nowhere = free_port();

    base_config(
        &env,
        &backends[0],
        &["web", "moved", "closed", "open", "pinned", "slow", "tls", "untrusted"],
    );
    let url = |path: &str| format!("http://127.0.0.1:{port}/{path}");
    let sha = sha256(&header_rewrite);
    let files = [
        (
            "web",
            filter(
                "from-http",
                &format!("{{http: \"{}\", sha256: {sha}}}", url("header-rewrite.wasm")),
                "web",
                "1",
                "",
            ),
        ),
        (
            "moved",
            filter(
                "redirected",
                &format!("{{http: \"{}\"}}", url("moved.wasm")),
                "moved",
                "2",
                "",
            ),
        ),
        (
            "closed",
            filter(
                "not-found",
                &format!("{{http: \"{}\"}}", url("later.wasm")),
                "closed",
                "3",
                "",
            ),
        ),
        (
            "open",
            filter(
                "refused",
                &format!("{{http: \"http://127.0.0.1:{nowhere}/f.wasm\"}}"),
                "open",
                "4",
                "  failurePolicy: FailOpen\n",
            ),
        ),
        (
            "pinned",
            filter(
                "wrong-digest",
                &format!(
                    "{{http: \"{}\", sha256: {}}}",
                    url("header-rewrite.wasm"),
                    "0".repeat(64)
                ),
                "pinned",
                "5",
                "",
            ),
        ),
        (
            "slow",
            filter(
                "slow",
                &format!("{{http: \"http://127.0.0.1:{black_hole_port}/f.wasm\"}}"),
                "slow",
                "6",
                "",
            ),
        ),
    ];
    for (name, text) in &files {
        env.write(&format!("filter-{name}.yaml"), text);
    }
    env.write(
        "filter-tls.yaml",
        &filter(
            "over-tls",
            &format!("{{http: \"https://localhost:{tls_port}/header-rewrite.wasm\"}}"),
            "tls",
            "7",
            "",
        ),
    );
    env.write(
        "filter-untrusted.yaml",
        &filter(
            "untrusted",
            &format!("{{http: \"https://localhost:{untrusted_port}/header-rewrite.wasm\"}}"),
            "untrusted",
            "8",
            "",
        ),
    );
    env.start_with_env(&[("SSL_CERT_FILE", &pki.ca)]);

    env.eventually(Duration::from_secs(10), "the fetched module", || {
        x_a(&env, "/web") == (200, Some("1".into()))
    });
    wait_resolved(&env, "from-http", "True", &[&sha], Duration::from_secs(5));
    env.eventually(Duration::from_secs(10), "the module behind a redirect", || {
        x_a(&env, "/moved") == (200, Some("2".into()))
    });
    env.eventually(Duration::from_secs(10), "the module fetched over TLS", || {
        x_a(&env, "/tls") == (200, Some("7".into()))
    });
    wait_resolved(
        &env,
        "untrusted",
        "False",
        &[&format!(
            "TLS handshake with localhost:{untrusted_port}: invalid peer certificate"
        )],
        Duration::from_secs(10),
    );
    assert_eq!(x_a(&env, "/untrusted").0, 500);

    // Failures name the URL and the cause; FailClosed filters stand in a 500 meanwhile.
    let not_found = url("later.wasm");
    wait_resolved(
        &env,
        "not-found",
        "False",
        &[&format!("spec.module.http {not_found}: HTTP 404 Not Found"), "attempt"],
        Duration::from_secs(10),
    );
    let closed = curl(&[&env.url(80, "/closed")]);
    assert_eq!(closed.status, 500, "{}", closed.body);
    assert!(closed.body.contains("HTTP 404"), "{}", closed.body);
    wait_resolved(
        &env,
        "refused",
        "False",
        &[&format!("cannot connect to 127.0.0.1:{nowhere}"), "refused"],
        Duration::from_secs(10),
    );
    assert_eq!(
        x_a(&env, "/open"),
        (200, None),
        "a FailOpen filter without a module is left out"
    );
    wait_resolved(
        &env,
        "wrong-digest",
        "False",
        &[&format!(
            "has sha256 {sha} but spec.module.sha256 is {}",
            "0".repeat(64)
        )],
        Duration::from_secs(10),
    );
    assert_eq!(x_a(&env, "/pinned").0, 500);
    wait_resolved(
        &env,
        "slow",
        "False",
        &[&format!(
            "not loaded yet: fetching http://127.0.0.1:{black_hole_port}/f.wasm"
        )],
        Duration::from_secs(5),
    );
    assert_eq!(x_a(&env, "/slow").0, 500);

    // Failed fetches are retried with backoff: publishing the module makes the filter load.
    std::fs::write(www.join("later.wasm"), &header_rewrite).expect("write module");
    env.eventually(Duration::from_secs(30), "the module published after a 404", || {
        x_a(&env, "/closed") == (200, Some("3".into()))
    });
    assert_eq!(x_a(&env, "/web"), (200, Some("1".into())));

    // A new fetch of the same URL (the pin removed) that fails keeps the module last fetched
    // from it, here with the WasmFilter's new configuration.
    std::fs::remove_file(www.join("header-rewrite.wasm")).expect("remove module");
    env.write(
        "filter-web.yaml",
        &filter(
            "from-http",
            &format!("{{http: \"{}\"}}", url("header-rewrite.wasm")),
            "web",
            "9",
            "",
        ),
    );
    env.eventually(Duration::from_secs(5), "the new configuration", || {
        x_a(&env, "/web") == (200, Some("9".into()))
    });
    wait_resolved(&env, "from-http", "True", &[&sha], Duration::from_secs(5));
    // The refetch really happened and failed (the server's own log), more than once (backoff
    // retries), and the module fetched before still answers.
    env.eventually(Duration::from_secs(10), "the refetch is tried and retried", || {
        module_server_answers(&env, "/header-rewrite.wasm", 404) >= 2
    });
    assert!(module_server_answers(&env, "/header-rewrite.wasm", 200) >= 1);
    assert_eq!(
        x_a(&env, "/web"),
        (200, Some("9".into())),
        "the last good module keeps serving while the refetch fails"
    );
    drop(black_hole);
}

/// Debian's docker-registry on a free loopback port, storing in the test's directory.
fn start_registry(env: &Env, port: u16) -> Proc {
    let program = peer("/usr/bin/docker-registry", "docker-registry");
    let dir = env.dir.path().join("registry");
    std::fs::create_dir_all(&dir).expect("registry dir");
    let config = format!(
        "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp:\n  addr: 127.0.0.1:{port}\n",
        dir.join("data").display()
    );
    let path = dir.join("config.yml");
    std::fs::write(&path, config).expect("write registry config");
    let registry = Proc::start_program(
        "docker-registry",
        &program,
        &["serve", path.to_str().expect("utf-8")],
        &env.dir.path().join("logs"),
    );
    wait_for_port(port, &registry);
    registry
}

/// Runs curl with `args`, returning (status, headers, body); fails the test when curl fails.
fn curl_raw(args: &[&str]) -> (u16, String, String) {
    let output = Command::new(peer("/usr/bin/curl", "curl"))
        .args(["-sS", "--max-time", "10", "-D", "/dev/stderr", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    (
        status.trim().parse().unwrap_or(0),
        String::from_utf8_lossy(&output.stderr).into_owned(),
        body.to_string(),
    )
}

fn header_value(headers: &str, name: &str) -> Option<String> {
    headers.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_string())
    })
}

/// Uploads a blob with the registry API (POST an upload, PUT its content with the digest).
fn push_blob(registry: &str, repository: &str, bytes: &[u8], scratch: &Path) -> String {
    let digest = format!("sha256:{}", sha256(bytes));
    let (status, headers, body) = curl_raw(&[
        "-X",
        "POST",
        &format!("http://{registry}/v2/{repository}/blobs/uploads/"),
    ]);
    assert_eq!(status, 202, "start an upload: {headers}{body}");
    let location = header_value(&headers, "location").expect("upload Location");
    let location = if location.starts_with('/') {
        format!("http://{registry}{location}")
    } else {
        location
    };
    let separator = if location.contains('?') { '&' } else { '?' };
    let file = scratch.join(digest.replace(':', "-"));
    std::fs::write(&file, bytes).expect("write blob");
    let (status, headers, body) = curl_raw(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("{location}{separator}digest={digest}"),
    ]);
    assert_eq!(status, 201, "upload {digest}: {headers}{body}");
    digest
}

/// Pushes an OCI image manifest with one layer; returns the manifest's digest.
fn push_image(
    registry: &str,
    repository: &str,
    tag: &str,
    config_type: &str,
    layer_type: &str,
    layer: &[u8],
    scratch: &Path,
) -> String {
    let config = b"{}";
    let config_digest = push_blob(registry, repository, config, scratch);
    let layer_digest = push_blob(registry, repository, layer, scratch);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": config_type,
        "config": {"mediaType": config_type, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": layer_type, "digest": layer_digest, "size": layer.len()}],
    })
    .to_string();
    let file = scratch.join(format!("manifest-{tag}.json"));
    std::fs::write(&file, &manifest).expect("write manifest");
    let (status, headers, body) = curl_raw(&[
        "-X",
        "PUT",
        "-H",
        &format!("Content-Type: {OCI_MANIFEST}"),
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("http://{registry}/v2/{repository}/manifests/{tag}"),
    ]);
    assert_eq!(status, 201, "push manifest {tag}: {headers}{body}");
    format!("sha256:{}", sha256(manifest.as_bytes()))
}

/// A tar archive (made by `tar`) holding `plugin.wasm`, optionally gzip-compressed.
fn plugin_tar(module: &[u8], scratch: &Path, gzip: bool) -> Vec<u8> {
    let dir = scratch.join("tar");
    std::fs::create_dir_all(&dir).expect("tar dir");
    std::fs::write(dir.join("plugin.wasm"), module).expect("write plugin.wasm");
    let archive: PathBuf = scratch.join(if gzip { "layer.tar.gz" } else { "layer.tar" });
    let status = Command::new(peer("/usr/bin/tar", "tar"))
        .args([if gzip { "-czf" } else { "-cf" }])
        .arg(&archive)
        .arg("-C")
        .arg(&dir)
        .arg("plugin.wasm")
        .status()
        .expect("run tar");
    assert!(status.success(), "tar failed");
    std::fs::read(&archive).expect("read archive")
}

#[test]
fn oci_modules_are_pulled_from_a_registry() {
    let (mut env, backends) = Env::new(&["web-0"]);
    let port = free_port();
    let _registry = start_registry(&env, port);
    let registry = format!("127.0.0.1:{port}");
    let scratch = env.dir.path().join("push");
    std::fs::create_dir_all(&scratch).expect("scratch dir");
    let header_rewrite = module("header_rewrite");
    let repository = "filters/header-rewrite";
    let digest = push_image(
        &registry,
        repository,
        "v1",
        WASM_CONFIG,
        WASM_LAYER,
        &header_rewrite,
        &scratch,
    );
    // Istio's compat format: one tar layer with plugin.wasm.
    let tar = plugin_tar(&header_rewrite, &scratch, false);
    push_image(
        &registry,
        repository,
        "compat",
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.oci.image.layer.v1.tar",
        &tar,
        &scratch,
    );
    let tar_gz = plugin_tar(&header_rewrite, &scratch, true);
    push_image(
        &registry,
        repository,
        "compat-gzip",
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &tar_gz,
        &scratch,
    );

    let front_port = free_port();
    let _front = start_token_front(&env, front_port, port, repository);
    base_config(
        &env,
        &backends[0],
        &["web", "pinned", "compat", "gzip", "closed", "token"],
    );
    let oci = |reference: &str| format!("{{oci: \"{registry}/{repository}{reference}\"}}");
    env.write("by-tag.yaml", &filter("by-tag", &oci(":v1"), "web", "1", ""));
    env.write(
        "by-digest.yaml",
        &filter("by-digest", &oci(&format!("@{digest}")), "pinned", "2", ""),
    );
    env.write("compat.yaml", &filter("compat", &oci(":compat"), "compat", "3", ""));
    env.write("gzip.yaml", &filter("gzip", &oci(":compat-gzip"), "gzip", "4", ""));
    env.write(
        "missing-tag.yaml",
        &filter("missing-tag", &oci(":v2"), "closed", "5", ""),
    );
    let via_front = format!("{{oci: \"127.0.0.1:{front_port}/{repository}:v1\"}}");
    env.write("token.yaml", &filter("token", &via_front, "token", "6", ""));
    env.start();

    env.eventually(Duration::from_secs(10), "the module pulled by tag", || {
        x_a(&env, "/web") == (200, Some("1".into()))
    });
    wait_resolved(
        &env,
        "by-tag",
        "True",
        &[&sha256(&header_rewrite)],
        Duration::from_secs(5),
    );
    env.eventually(Duration::from_secs(10), "the module pulled with a Bearer token", || {
        x_a(&env, "/token") == (200, Some("6".into()))
    });
    env.eventually(Duration::from_secs(10), "the module pulled by digest", || {
        x_a(&env, "/pinned") == (200, Some("2".into()))
    });
    env.eventually(Duration::from_secs(10), "the module of the compat image", || {
        x_a(&env, "/compat") == (200, Some("3".into()))
    });
    wait_resolved(
        &env,
        "gzip",
        "False",
        &["gzip-compressed layer, which is not supported", WASM_LAYER],
        Duration::from_secs(10),
    );
    assert_eq!(x_a(&env, "/gzip").0, 500);
    let message = wait_resolved(
        &env,
        "missing-tag",
        "False",
        &[
            &format!("spec.module.oci {registry}/{repository}:v2"),
            "HTTP 404 Not Found",
            "MANIFEST_UNKNOWN",
        ],
        Duration::from_secs(10),
    );
    assert!(message.contains("check the repository, tag or digest"), "{message}");
    assert_eq!(x_a(&env, "/closed").0, 500);

    // Pushing the missing tag: the retried pull finds it.
    push_image(
        &registry,
        repository,
        "v2",
        WASM_CONFIG,
        WASM_LAYER,
        &header_rewrite,
        &scratch,
    );
    env.eventually(Duration::from_secs(30), "the module pushed after a 404", || {
        x_a(&env, "/closed") == (200, Some("5".into()))
    });
}
