//! Filters that reach beyond the request, end to end with the real binary and real peers:
//! authorization through an HTTP callout to a cluster (nginx as the authorization service), and
//! a shared queue fed by requests on every worker and drained by one. Both filters are written
//! with the plain `proxy-wasm` crate, as filters for Envoy or Istio are.

use std::net::TcpListener;
use std::time::{Duration, Instant};

#[path = "common/env.rs"]
mod env;

use env::{
    Backend, Env, Proc, copy_module, curl, free_port, gateway, header_at_backend, http_get, metric, route, service,
    start_nginx, wasm_filter,
};

/// nginx answering `/check` as an authorization service: 200 with `x-auth-user` for the right
/// bearer token, 403 with a reason otherwise.
fn start_auth_service(env: &Env, port: u16) -> Proc {
    let server = format!(
        r#"
    server {{
        listen 127.0.0.1:{port};
        location = /check {{
            if ($http_authorization = "Bearer good-token") {{
                add_header x-auth-user alice always;
                return 200 "ok\n";
            }}
            return 403 "no valid token for $http_x_original_method $http_x_original_path\n";
        }}
    }}
"#
    );
    start_nginx(env, "nginx", &server, &[port])
}

fn auth_filter(name: &str, route: &str, cluster: &str, timeout_ms: u64) -> String {
    wasm_filter(
        name,
        "http-auth.wasm",
        &format!(
            "  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: {route}}}]\n  phase: PostRouting\n  config:\n    cluster: {cluster}\n    path: /check\n    authority: authz.ns\n    timeout_ms: {timeout_ms}\n    forward: [authorization]\n    copy_to_request: [x-auth-user]\n"
        ),
    )
}

#[test]
fn authorization_through_an_http_callout_to_a_cluster() {
    let (mut env, backends) = Env::new(&["web-0"]);
    let nginx_port = free_port();
    let _nginx = start_auth_service(&env, nginx_port);
    // A peer that accepts connections and never answers: the callout must time out.
    let black_hole = TcpListener::bind("127.0.0.1:0").expect("bind");
    let black_hole_port = black_hole.local_addr().expect("addr").port();
    let nowhere_port = free_port();

    env.write("gateway.yaml", &gateway(""));
    env.write("web.yaml", &service("web", None, &[&backends[0]], false));
    let peer = |pod: &'static str, http: u16| Backend { pod, http, h2c: 0 };
    env.write(
        "authz.yaml",
        &service("authz", None, &[&peer("authz-0", nginx_port)], false),
    );
    env.write(
        "silent.yaml",
        &service("silent", None, &[&peer("silent-0", black_hole_port)], false),
    );
    env.write(
        "down.yaml",
        &service("down", None, &[&peer("down-0", nowhere_port)], false),
    );
    env.write(
        "routes.yaml",
        &[
            route("open", "/", "web"),
            route("secure", "/secure", "web"),
            route("slow", "/slow", "web"),
            route("broken", "/broken", "web"),
        ]
        .join("---\n"),
    );
    copy_module(&env, "http_auth", "http-auth.wasm");
    // Envoy-style and Istio-style cluster names reach the same Service.
    env.write(
        "auth.yaml",
        &auth_filter("auth", "secure", "authz.ns.svc.cluster.local:8080", 2000),
    );
    env.write("slow.yaml", &auth_filter("auth-slow", "slow", "ns/silent:8080", 300));
    env.write(
        "down.yaml",
        &auth_filter("auth-down", "broken", "outbound|8080||down.ns.svc.cluster.local", 2000),
    );
    env.start();

    // Allowed: the service's answer header reaches the backend.
    let allowed = curl(&["-H", "authorization: Bearer good-token", &env.url(80, "/secure/a")]);
    assert_eq!(allowed.status, 200, "{}\n{}", allowed.headers, allowed.body);
    assert_eq!(
        header_at_backend(&allowed.body, "X-Auth-User").as_deref(),
        Some("alice")
    );

    // Denied: the client gets the service's reason, and the backend never sees the request.
    let denied = curl(&["-H", "authorization: Bearer stolen", &env.url(80, "/secure/b?x=1")]);
    assert_eq!(denied.status, 403, "{}", denied.body);
    assert!(
        denied.headers.to_ascii_lowercase().contains("x-auth: denied"),
        "{}",
        denied.headers
    );
    assert_eq!(denied.body, "no valid token for GET /secure/b?x=1\n");
    let anonymous = curl(&[&env.url(80, "/secure")]);
    assert_eq!(anonymous.status, 403);

    // A request with a body waits for the check too, body and all.
    let upload = curl(&[
        "-H",
        "authorization: Bearer good-token",
        "--data-binary",
        "payload-123",
        &env.url(80, "/secure/upload"),
    ]);
    assert_eq!(upload.status, 200, "{}", upload.body);
    assert_eq!(header_at_backend(&upload.body, "Content-Length").as_deref(), Some("11"));
    let rejected_upload = curl(&["--data-binary", "payload-123", &env.url(80, "/secure/upload")]);
    assert_eq!(rejected_upload.status, 403);

    // Many at once, over both workers: every request gets its own answer.
    let handles: Vec<_> = (0..24)
        .map(|i| {
            let url = env.url(80, &format!("/secure/{i}"));
            std::thread::spawn(move || {
                let token = if i % 2 == 0 { "good-token" } else { "bad" };
                let auth = format!("authorization: Bearer {token}");
                (i, curl(&["-H", &auth, &url]).status)
            })
        })
        .collect();
    for handle in handles {
        let (i, status) = handle.join().expect("client thread");
        assert_eq!(status, if i % 2 == 0 { 200 } else { 403 }, "request {i}");
    }

    // The service does not answer in time: the filter gets a failed call and answers 503, no
    // sooner than its 300 ms timeout (an instant failure is another bug) and well before the
    // 2 s of the other filters or the 60 s default (a timeout ignored or taken from elsewhere).
    let started = Instant::now();
    let slow = curl(&["-H", "authorization: Bearer good-token", &env.url(80, "/slow")]);
    let waited = started.elapsed();
    assert_eq!(slow.status, 503, "{}", slow.body);
    assert!(
        slow.headers.to_ascii_lowercase().contains("x-auth: unavailable"),
        "the filter answered, after a failed call: {}",
        slow.headers
    );
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(1500),
        "the callout's own 300 ms timeout applies, took {waited:?}"
    );
    // The service is down: a failed call, 503.
    let down = curl(&["-H", "authorization: Bearer good-token", &env.url(80, "/broken")]);
    assert_eq!(down.status, 503, "{}", down.body);
    assert!(down.headers.to_ascii_lowercase().contains("x-auth: unavailable"));

    // Routes without the filter never wait for it.
    assert_eq!(curl(&[&env.url(80, "/")]).status, 200);

    // The backend saw the allowed requests and none of the denied ones (its access log; the
    // request to "/" above was answered, so everything before it has been logged).
    let seen = env.requests_at("web-0");
    let seen_target = |target: &str| seen.iter().filter(|r| r.split(' ').nth(1) == Some(target)).count();
    assert_eq!(seen_target("/secure/a"), 1, "{seen:?}");
    assert_eq!(seen_target("/secure/upload"), 1, "only the authorized upload: {seen:?}");
    assert!(seen.contains(&"POST /secure/upload".to_string()), "{seen:?}");
    for denied in ["/secure/b?x=1", "/secure"] {
        assert_eq!(
            seen_target(denied),
            0,
            "the denied {denied} reached the backend: {seen:?}"
        );
    }
    for i in 0..24 {
        let expected = usize::from(i % 2 == 0);
        assert_eq!(seen_target(&format!("/secure/{i}")), expected, "request {i}: {seen:?}");
    }
    assert_eq!(seen_target("/slow"), 0, "{seen:?}");
    assert_eq!(seen_target("/broken"), 0, "{seen:?}");
    assert_eq!(metric(&env, "tidegate_filter_failures_total{filter=\"ns/auth\"}"), 0.0);
    assert_eq!(http_get(&env.admin, "/healthz").map(|(s, _)| s), Some(200));
    drop(black_hole);
}

#[test]
fn a_shared_queue_fed_on_every_worker_is_drained_by_its_consumer() {
    let (mut env, backends) = Env::new(&["web-0"]);
    env.write("gateway.yaml", &gateway(""));
    env.write("web.yaml", &service("web", None, &[&backends[0]], false));
    env.write("routes.yaml", &route("web", "/", "web"));
    copy_module(&env, "shared_queue", "shared-queue.wasm");
    env.write(
        "queue.yaml",
        &wasm_filter(
            "queue",
            "shared-queue.wasm",
            "  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]\n",
        ),
    );
    env.start();

    // Separate connections, so the kernel spreads them over both workers.
    let total: u64 = 40;
    for i in 1..=total {
        let response = curl(&[&env.url(80, &format!("/queue/{i}"))]);
        assert_eq!(response.status, 200, "{}", response.body);
    }
    let expected_sum = total * (total + 1) / 2;
    let mut last = (String::new(), String::new());
    env.eventually(Duration::from_secs(10), "the consumer drains every item", || {
        let response = curl(&[&env.url(80, "/queue/0")]);
        let header = |name: &str| {
            response
                .headers
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        last = (header("x-queue-drained"), header("x-queue-sum"));
        // Each probe enqueues /queue/0 too (adding 0 to the sum).
        last.1 == expected_sum.to_string() && last.0.parse::<u64>().is_ok_and(|n| n >= total)
    });
    let log = env.tidegate.as_ref().map(|p| p.log()).unwrap_or_default();
    assert!(
        !log.contains("resolve_shared_queue"),
        "every request found the queue: {log}"
    );
    assert!(!log.contains("enqueue:"), "no enqueue failed: {log}");
}

#[test]
fn host_services_tell_a_filter_who_calls_and_where_a_cluster_runs() {
    let (mut env, backends) = Env::new(&["web-0", "web-1"]);
    env.write("gateway.yaml", &gateway(""));
    env.write("web.yaml", &service("web", None, &[&backends[0], &backends[1]], false));
    env.write("routes.yaml", &route("web", "/", "web"));
    // The client (curl on loopback) is this pod, as a captured pod's address would be.
    env.write(
        "client.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: client-0, namespace: shop, labels: {app: cart}}\nspec: {serviceAccountName: cart-sa}\nstatus: {podIP: 127.0.0.1}\n",
    );
    copy_module(&env, "identity", "identity.wasm");
    env.write(
        "identity.yaml",
        &wasm_filter(
            "identity",
            "identity.wasm",
            "  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: gw}]\n  phase: PostRouting\n",
        ),
    );
    env.start();

    let response = curl(&[&env.url(80, "/")]);
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(
        header_at_backend(&response.body, "X-Source-Workload").as_deref(),
        Some("shop/client-0")
    );
    assert_eq!(
        header_at_backend(&response.body, "X-Source-Account").as_deref(),
        Some("cart-sa")
    );
    assert_eq!(
        header_at_backend(&response.body, "X-Source-App").as_deref(),
        Some("cart")
    );
    let endpoints = header_at_backend(&response.body, "X-Cluster-Endpoints").unwrap_or_default();
    let mut endpoints: Vec<&str> = endpoints.split(',').collect();
    endpoints.sort();
    let mut expected = vec![
        format!("127.0.0.1:{}", backends[0].http),
        format!("127.0.0.1:{}", backends[1].http),
    ];
    expected.sort();
    assert_eq!(endpoints, expected);

    // The Pod goes away: the filter hears that the caller is unknown.
    std::fs::remove_file(env.config_dir().join("client.yaml")).expect("remove the Pod");
    env.eventually(Duration::from_secs(5), "the workload is forgotten", || {
        let response = curl(&[&env.url(80, "/")]);
        header_at_backend(&response.body, "X-Source-Workload").as_deref() == Some("unknown")
    });
}
