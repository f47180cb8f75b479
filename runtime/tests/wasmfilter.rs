//! WasmFilter objects in standalone mode, end to end with the real binary: user filters built
//! with the plain `proxy-wasm` crate (as for Envoy or Istio) attached to a Gateway or a route,
//! live edits of their configuration and module, chain phases, failure policies, and hostile
//! modules that must never take other routes or the process down.

use std::time::Duration;

#[path = "common/env.rs"]
mod env;

use env::{
    Env, conditions, copy_module, curl, curl_statuses, gateway, header_at_backend, http_get, metric, route, service,
    wasm_filter,
};

fn routes() -> String {
    [
        route("web", "/", "web"),
        route("api", "/api", "web"),
        route("closed", "/closed", "web"),
        route("open", "/open", "web"),
    ]
    .join("---\n")
}

#[test]
fn gateway_filter_edits_apply_live_and_status_reports_the_module() {
    let (mut env, backends) = Env::new(&["web-0"]);
    env.write("gateway.yaml", &gateway(""));
    env.write("web.yaml", &service("web", None, &[&backends[0]], false));
    env.write("routes.yaml", &routes());
    copy_module(&env, "header_rewrite", "header-rewrite.wasm");
    let spec = |value: &str| {
        format!(
            "  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: gw}}]\n  config: {{request_headers: [[x-added, {value}]], response_headers: [[x-resp, {value}]]}}\n"
        )
    };
    env.write(
        "filter.yaml",
        &wasm_filter("rewrite", "header-rewrite.wasm", &spec("one")),
    );
    env.start();

    let response = curl(&[&env.url(80, "/x")]);
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(header_at_backend(&response.body, "X-Added").as_deref(), Some("one"));
    assert!(
        response.headers.to_ascii_lowercase().contains("x-resp: one"),
        "{}",
        response.headers
    );
    // The filter's own metric is exported, labelled with the filter.
    let metrics = http_get(&env.admin, "/metrics").expect("metrics").1;
    assert!(
        metrics.contains("tidegate_wasm_header_rewrite_requests_total{filter=\"ns/rewrite\"}"),
        "{metrics}"
    );
    let initial = conditions(&env, "rewrite");
    for kind in ["Accepted", "ResolvedRefs", "Programmed"] {
        assert!(
            initial.iter().any(|(t, s, _)| t == kind && s == "True"),
            "{kind} in {initial:?}"
        );
    }

    // Requests keep flowing while the filter's configuration and module change under them.
    // Until `may_deny` is set (just before the configuration that requires a token is written)
    // every request must succeed; after it, only the filter's own 403 is acceptable.
    let url = env.url(80, "/");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let may_deny = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, may_deny) = (stop.clone(), may_deny.clone());
        std::thread::spawn(move || {
            let mut failed = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let deny_allowed = may_deny.load(std::sync::atomic::Ordering::SeqCst);
                failed.extend(
                    curl_statuses(&["-o", "/dev/null", &url, "-o", "/dev/null", &url])
                        .into_iter()
                        .filter(|s| *s != 200)
                        .map(|s| (s, deny_allowed)),
                );
                // Paced, so the edit's latency is not measured on a saturated machine.
                std::thread::sleep(Duration::from_millis(25));
            }
            failed
        })
    };
    env.write(
        "filter.yaml",
        &wasm_filter("rewrite", "header-rewrite.wasm", &spec("two")),
    );
    let took = env.eventually(Duration::from_secs(3), "the new filter config", || {
        header_at_backend(&curl(&[&env.url(80, "/x")]).body, "X-Added").as_deref() == Some("two")
    });
    assert!(took < Duration::from_secs(2), "config edit applied after {took:?}");

    // A config that requires a token: the filter answers 403 itself.
    may_deny.store(true, std::sync::atomic::Ordering::SeqCst);
    env.write(
        "filter.yaml",
        &wasm_filter(
            "rewrite",
            "header-rewrite.wasm",
            "  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]\n  config: {require: x-token}\n",
        ),
    );
    env.eventually(Duration::from_secs(3), "the 403 without a token", || {
        curl(&[&env.url(80, "/x")]).status == 403
    });
    assert_eq!(curl(&["-H", "x-token: t", &env.url(80, "/x")]).status, 200);
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let failed = load.join().expect("load thread");
    // Requests to / without a token are answered 403 by the filter once it requires one, and
    // never before that configuration was written.
    assert!(
        failed.iter().all(|(s, deny_allowed)| *s == 403 && *deny_allowed),
        "requests failed during filter reloads (status, after the token config): {failed:?}"
    );

    // Replacing the module file takes effect too: swap in a module that is not proxy-wasm.
    std::fs::write(env.config_dir().join("modules/header-rewrite.wasm.tmp"), b"not wasm").expect("write");
    std::fs::rename(
        env.config_dir().join("modules/header-rewrite.wasm.tmp"),
        env.config_dir().join("modules/header-rewrite.wasm"),
    )
    .expect("rename");
    env.eventually(Duration::from_secs(3), "the module error in status", || {
        conditions(&env, "rewrite")
            .iter()
            .any(|(t, s, m)| t == "Programmed" && s == "False" && m.contains("rewrite"))
    });
    // FailClosed (the default): a filter whose module cannot load fails the requests it covers.
    assert_eq!(curl(&["-H", "x-token: t", &env.url(80, "/x")]).status, 500);
    copy_module(&env, "header_rewrite", "header-rewrite.wasm");
    env.eventually(Duration::from_secs(3), "the repaired module", || {
        curl(&["-H", "x-token: t", &env.url(80, "/x")]).status == 200
    });
}

#[test]
fn phases_and_targets_scope_filters_to_routes() {
    let (mut env, backends) = Env::new(&["web-0"]);
    env.write("gateway.yaml", &gateway(""));
    env.write("web.yaml", &service("web", None, &[&backends[0]], false));
    env.write("routes.yaml", &routes());
    copy_module(&env, "header_rewrite", "header-rewrite.wasm");
    env.write(
        "api-only.yaml",
        &wasm_filter(
            "api-only",
            "header-rewrite.wasm",
            "  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}]\n  phase: PostRouting\n  config: {request_headers: [[x-api, \"yes\"]]}\n",
        ),
    );
    env.write(
        "misplaced.yaml",
        &wasm_filter(
            "misplaced",
            "header-rewrite.wasm",
            "  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: api}]\n  phase: PreRouting\n",
        ),
    );
    env.start();
    assert_eq!(
        header_at_backend(&curl(&[&env.url(80, "/api/x")]).body, "X-Api").as_deref(),
        Some("yes")
    );
    assert_eq!(
        header_at_backend(&curl(&[&env.url(80, "/other")]).body, "X-Api"),
        None,
        "other routes are out of scope"
    );
    let misplaced = conditions(&env, "misplaced");
    assert!(
        misplaced
            .iter()
            .any(|(t, s, m)| t == "Accepted" && s == "False" && m.contains("PostRouting")),
        "a route target before routing is refused with a fix: {misplaced:?}"
    );
}

#[test]
fn hostile_filters_fail_by_policy_and_never_take_the_process_down() {
    let (mut env, backends) = Env::new(&["web-0"]);
    env.write("gateway.yaml", &gateway(""));
    env.write("web.yaml", &service("web", None, &[&backends[0]], false));
    env.write("routes.yaml", &routes());
    copy_module(&env, "hostile", "hostile.wasm");
    let hostile = |name: &str, target: &str, policy: &str| {
        wasm_filter(
            name,
            "hostile.wasm",
            &format!(
                "  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: {target}}}]\n  phase: PostRouting\n  failurePolicy: {policy}\n  limits: {{memory: 16Mi, callTimeout: 50ms}}\n"
            ),
        )
    };
    env.write("closed.yaml", &hostile("hostile-closed", "closed", "FailClosed"));
    env.write("open.yaml", &hostile("hostile-open", "open", "FailOpen"));
    env.write(
        "missing.yaml",
        &wasm_filter(
            "missing-open",
            "does-not-exist.wasm",
            "  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: open}]\n  phase: PostRouting\n  failurePolicy: FailOpen\n",
        ),
    );
    env.start();

    for misbehaviour in ["loop", "trap", "grow", "huge-header"] {
        let header = format!("x-hostile: {misbehaviour}");
        let closed = curl(&["-H", &header, &env.url(80, "/closed")]);
        assert_eq!(
            closed.status, 500,
            "{misbehaviour}: FailClosed answers 500: {}",
            closed.body
        );
        let open = curl(&["-H", &header, &env.url(80, "/open")]);
        assert_eq!(
            open.status, 200,
            "{misbehaviour}: FailOpen skips the filter: {}",
            open.body
        );
        assert_eq!(
            curl(&[&env.url(80, "/")]).status,
            200,
            "{misbehaviour}: other routes keep serving"
        );
    }
    // A pointer outside the module's memory is refused, and the filter goes on.
    let bad_pointer = curl(&["-H", "x-hostile: bad-pointer", &env.url(80, "/closed")]);
    assert_eq!(bad_pointer.status, 200, "{}", bad_pointer.body);
    assert_eq!(
        header_at_backend(&bad_pointer.body, "X-Bad-Pointer-Status").as_deref(),
        Some("6"),
        "INVALID_MEMORY_ACCESS"
    );
    // The VMs were replaced: well-behaved requests through the same filters work.
    let fine = curl(&[&env.url(80, "/closed")]);
    assert_eq!(fine.status, 200);
    assert!(
        fine.headers.to_ascii_lowercase().contains("x-hostile-survived: yes"),
        "{}",
        fine.headers
    );

    // Each misbehaviour failed exactly one request on each filter: counted once, per filter,
    // whatever its policy.
    for filter in ["ns/hostile-closed", "ns/hostile-open"] {
        let sample = format!("tidegate_filter_failures_total{{filter=\"{filter}\"}}");
        env.eventually(Duration::from_secs(3), &format!("{filter}: 4 failures"), || {
            metric(&env, &sample) >= 4.0
        });
        std::thread::sleep(Duration::from_millis(300));
        let metrics = http_get(&env.admin, "/metrics").expect("metrics").1;
        assert_eq!(
            metric(&env, &sample),
            4.0,
            "{filter}: one failure per misbehaviour: {metrics}"
        );
    }
    assert_eq!(
        http_get(&env.admin, "/healthz").map(|(s, _)| s),
        Some(200),
        "the process is alive"
    );
    let missing = conditions(&env, "missing-open");
    assert!(
        missing
            .iter()
            .any(|(t, s, m)| t == "Programmed" && s == "False" && m.contains("does-not-exist.wasm")),
        "{missing:?}"
    );
}

#[test]
fn ticks_and_shared_data_work_across_workers() {
    let (mut env, backends) = Env::new(&["web-0"]);
    env.write("gateway.yaml", &gateway(""));
    env.write("web.yaml", &service("web", None, &[&backends[0]], false));
    env.write("routes.yaml", &routes());
    copy_module(&env, "tick_counter", "tick-counter.wasm");
    env.write(
        "ticks.yaml",
        &wasm_filter(
            "ticks",
            "tick-counter.wasm",
            "  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]\n",
        ),
    );
    env.start();
    let header = |response: &env::Curl, name: &str| -> u64 {
        response
            .headers
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix(&format!("{name}: "))
                    .map(|v| v.trim().to_string())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in {}", response.headers))
    };
    // Ticks arrive on their own (every 50 ms, in each worker's VM).
    let first = header(&curl(&[&env.url(80, "/")]), "x-ticks");
    env.eventually(Duration::from_secs(10), "five more ticks", || {
        header(&curl(&[&env.url(80, "/")]), "x-ticks") >= first + 5
    });
    // Every request counts once in the shared counter, whichever worker's VM serves it
    // (each curl is a new connection; the kernel spreads them over the workers).
    let counts: Vec<u64> = (0..12)
        .map(|_| header(&curl(&[&env.url(80, "/")]), "x-requests"))
        .collect();
    let mut sorted = counts.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        counts.len(),
        "no two requests got the same count: {counts:?}"
    );
    assert!(counts.windows(2).all(|w| w[0] < w[1]), "counts increase: {counts:?}");
}
