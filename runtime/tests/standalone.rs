//! Standalone mode end to end: the real `tidegate` binary, real `tidegate echo` backends and
//! real `curl` as the client. Covers HTTP/1.1, h2c and TLS (h1 + h2 by ALPN) downstream, h1 and
//! h2c upstream, live edits without failed requests, and bad input that keeps the last good
//! configuration serving.

use std::time::Duration;

use base64::Engine as _;

#[path = "common/env.rs"]
mod env;

use env::{Env, curl, curl_statuses, gateway, http_get, json, route, service};

#[test]
fn serves_http1_h2c_and_tls_to_h1_and_h2c_upstreams() {
    let (mut env, backends) = Env::new(&["web-0"]);
    // A CA and a leaf for app.test, served from a kubernetes.io/tls Secret.
    let ca_key = rcgen::KeyPair::generate().expect("ca key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    // A subject of its own, or the leaf (rcgen's default subject too) would look self-signed.
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tidegate test CA");
    let ca = ca_params.clone().self_signed(&ca_key).expect("ca cert");
    let issuer = rcgen::Issuer::new(ca_params, &ca_key);
    let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
    let leaf = rcgen::CertificateParams::new(vec!["app.test".to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf cert");
    let ca_file = env.dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write ca");
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    env.write(
        "gateway.yaml",
        &gateway("  - {name: https, protocol: HTTPS, port: 443, hostname: app.test, tls: {certificateRefs: [{name: app-tls}]}}\n"),
    );
    env.write(
        "secret.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\nmetadata: {{name: app-tls, namespace: ns}}\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
            b64(leaf.pem()),
            b64(leaf_key.serialize_pem())
        ),
    );
    env.write("web.yaml", &service("web", None, &[&backends[0]], false));
    env.write(
        "grpcish.yaml",
        &service("web-h2c", Some("kubernetes.io/h2c"), &[&backends[0]], true),
    );
    env.write(
        "routes.yaml",
        &format!("{}---\n{}", route("web", "/", "web"), route("h2c", "/h2c", "web-h2c")),
    );
    // An ExternalName Service as a backend: its name is resolved (here a numeric name, so no
    // query leaves the machine) and the backendRef's port is the port reached.
    env.write(
        "external.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: outside, namespace: ns}}\nspec: {{type: ExternalName, externalName: 127.0.0.1}}\n---\n{}",
            route("external", "/external", "outside").replace("port: 8080", &format!("port: {}", backends[0].http))
        ),
    );
    env.start();

    let plain = curl(&[&env.url(80, "/hello?x=1")]);
    assert_eq!(plain.status, 200, "{}{}", plain.headers, plain.body);
    let echoed = json(&plain.body);
    assert_eq!(echoed["namespace"], "ns");
    assert_eq!(echoed["pod"], "web-0");
    assert_eq!(echoed["path"], "/hello?x=1");
    assert_eq!(echoed["proto"], "HTTP/1.1", "upstream is HTTP/1.1 by default");

    let external = curl(&[&env.url(80, "/external/x")]);
    assert_eq!(external.status, 200, "{}{}", external.headers, external.body);
    assert_eq!(json(&external.body)["path"], "/external/x");

    let h2c = curl(&["--http2-prior-knowledge", &env.url(80, "/hello")]);
    assert_eq!((h2c.status, h2c.http_version.as_str()), (200, "2"), "{}", h2c.headers);
    assert_eq!(json(&h2c.body)["pod"], "web-0");

    let upstream_h2c = curl(&[&env.url(80, "/h2c/x")]);
    assert_eq!(upstream_h2c.status, 200, "{}", upstream_h2c.body);
    assert_eq!(
        json(&upstream_h2c.body)["proto"],
        "HTTP/2.0",
        "appProtocol kubernetes.io/h2c speaks HTTP/2 upstream"
    );

    let port = 443 + env.offset;
    let resolve = format!("app.test:{port}:127.0.0.1");
    let url = format!("https://app.test:{port}/secure");
    let ca = ca_file.to_str().expect("utf-8 path");
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let tls = curl(&["--cacert", ca, "--resolve", &resolve, flag, &url]);
        assert_eq!(
            (tls.status, tls.http_version.as_str()),
            (200, version),
            "{}{}",
            tls.headers,
            tls.body
        );
        assert_eq!(json(&tls.body)["path"], "/secure");
    }
}

#[test]
fn edits_apply_live_without_failing_requests_and_bad_input_keeps_last_good() {
    let (mut env, backends) = Env::new(&["web-0", "api-0"]);
    env.write("gateway.yaml", &gateway(""));
    env.write("web.yaml", &service("web", None, &[&backends[0]], false));
    env.write("api.yaml", &service("api", None, &[&backends[1]], false));
    env.write("routes.yaml", &route("web", "/", "web"));
    env.start();
    assert_eq!(json(&curl(&[&env.url(80, "/api/x")]).body)["pod"], "web-0");

    // Requests keep flowing while the configuration changes under them.
    let url = env.url(80, "/");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Three requests on one keep-alive connection, then one over h2c. (curl 7.88
                // cannot reuse a prior-knowledge h2c connection for a second URL.)
                let keep_alive = [
                    "-o",
                    "/dev/null",
                    &url,
                    "-o",
                    "/dev/null",
                    &url,
                    "-o",
                    "/dev/null",
                    &url,
                ];
                let statuses = curl_statuses(&keep_alive).into_iter().chain(curl_statuses(&[
                    "--http2-prior-knowledge",
                    "-o",
                    "/dev/null",
                    &url,
                ]));
                for status in statuses {
                    if status == 200 { ok += 1 } else { failed.push(status) }
                }
                // Paced: steady traffic, not a loop that saturates both cores and so
                // measures the machine instead of how fast an edit applies.
                std::thread::sleep(Duration::from_millis(25));
            }
            (ok, failed)
        })
    };

    // An edit takes effect within a second.
    env.write(
        "routes.yaml",
        &format!("{}---\n{}", route("web", "/", "web"), route("api", "/api", "api")),
    );
    let took = env.eventually(Duration::from_secs(3), "the /api route", || {
        curl(&[&env.url(80, "/api/x")]).body.contains("\"api-0\"")
    });
    assert!(took < Duration::from_secs(2), "edit applied after {took:?}");

    // A file that does not parse: reported with file, document, line and column; the rest serves.
    env.write("broken.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: x\n");
    env.eventually(Duration::from_secs(3), "the parse error in /status", || {
        env.status()["errors"].as_array().is_some_and(|e| !e.is_empty())
    });
    let message = env.status()["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("broken.yaml") && message.contains("document 1") && message.contains("line"),
        "{message}"
    );
    assert_eq!(
        json(&curl(&[&env.url(80, "/api/x")]).body)["pod"],
        "api-0",
        "good config keeps serving"
    );

    // An invalid edit of a served object keeps its last good version.
    env.write(
        "routes.yaml",
        &format!(
            "{}---\n{}",
            route("web", "/", "web"),
            route("api", "/api", "api").replace("port: 8080", "port: eighty")
        ),
    );
    env.eventually(Duration::from_secs(3), "the invalid-object error", || {
        env.status()["errors"].as_array().is_some_and(|e| {
            e.iter().any(|e| {
                e["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("spec.rules[0].backendRefs[0].port")
            })
        })
    });
    assert_eq!(
        json(&curl(&[&env.url(80, "/api/x")]).body)["pod"],
        "api-0",
        "last good route keeps serving"
    );
    let metrics = http_get(&env.admin, "/metrics").expect("metrics").1;
    assert!(
        metrics.contains("tidegate_config_errors_total{kind=\"parse\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tidegate_config_errors_total{kind=\"invalid\"}"),
        "{metrics}"
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed) = load.join().expect("load thread");
    assert!(ok > 0, "the load loop made requests");
    assert!(
        failed.is_empty(),
        "requests failed during reloads: {failed:?} ({ok} ok)"
    );

    // No route matches: the router answers 404.
    env.write("routes.yaml", &route("api", "/api", "api"));
    env.eventually(Duration::from_secs(3), "the 404 for unrouted paths", || {
        curl(&[&env.url(80, "/nothing")]).status == 404
    });
}
