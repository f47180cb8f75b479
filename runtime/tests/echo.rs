//! `tidegate echo` through the real binary: the echo-basic contract the conformance cases rely on
//! (JSON shape, delay, /status, X-Echo-Set-Header, retry simulation, h2c, stdout log lines).

#[allow(dead_code)]
mod support;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::client::{self, ClientRequest, ClientResponse};
use support::procs::Proc;

struct Echo {
    proc: Proc,
    http: SocketAddr,
    h2c: SocketAddr,
}

async fn start_echo() -> Echo {
    let args: Vec<String> = [
        "echo",
        "--listen",
        "127.0.0.1:0",
        "--h2c-listen",
        "127.0.0.1:0",
        "--namespace",
        "echo-ns",
        "--pod",
        "echo-deploy-abcde12345-xyz12",
        "--service",
        "echo-svc",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut proc =
        Proc::spawn("tidegate echo", &support::util::tidegate_bin(), &args, None).expect("spawn tidegate echo");
    let http = announced(&mut proc, "http").await;
    let h2c = announced(&mut proc, "h2c").await;
    Echo { proc, http, h2c }
}

async fn announced(proc: &mut Proc, what: &str) -> SocketAddr {
    let port = support::fixture::announced_port(proc, what)
        .await
        .expect("echo announces its port");
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port))
}

fn request(addr: SocketAddr, path: &str) -> ClientRequest {
    ClientRequest {
        connect: addr,
        tls: None,
        http2: false,
        host: "example.com".into(),
        method: "GET".into(),
        path: path.into(),
        headers: Vec::new(),
    }
}

async fn send(req: &ClientRequest) -> ClientResponse {
    client::send(req, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("request {} failed: {e}", req.path))
}

fn json(resp: &ClientResponse) -> Value {
    assert_eq!(
        resp.headers.get("content-type").map(|v| v.as_bytes()),
        Some(b"application/json".as_slice())
    );
    serde_json::from_slice(&resp.body).expect("echo body is JSON")
}

#[tokio::test]
async fn echoes_the_request_as_echo_basic_does() {
    let mut echo = start_echo().await;
    let mut req = request(echo.http, "/some/path?x=1&y=two");
    req.headers.push(("x-custom-header".into(), "v1".into()));
    let resp = send(&req).await;
    assert_eq!(resp.status, 200);
    let body = json(&resp);
    assert_eq!(body["path"], "/some/path?x=1&y=two");
    assert_eq!(body["host"], "example.com");
    assert_eq!(body["method"], "GET");
    assert_eq!(body["proto"], "HTTP/1.1");
    assert_eq!(body["namespace"], "echo-ns");
    assert_eq!(body["pod"], "echo-deploy-abcde12345-xyz12");
    assert_eq!(body["service"], "echo-svc");
    assert_eq!(body["ingress"], "");
    assert_eq!(body["httpPort"], echo.http.port().to_string());
    assert!(body.get("tls").is_none());
    assert_eq!(body["headers"]["X-Custom-Header"], serde_json::json!(["v1"]));
    assert!(body["headers"].get("Host").is_none(), "Host is not echoed in headers");
    assert_eq!(
        resp.headers.get("x-content-type-options").map(|v| v.as_bytes()),
        Some(b"nosniff".as_slice())
    );

    // The log line the mirror checks read.
    let line = echo
        .proc
        .wait_for_stdout(
            |l| l.starts_with("Echoing back request made to /some/path?x=1&y=two to client (127.0.0.1:"),
            Duration::from_secs(5),
        )
        .await
        .expect("log line for the request");
    assert!(line.ends_with(')'), "{line}");

    // Other methods and paths with '//' (echo-basic preserves them).
    let mut post = request(echo.http, "//double//slash");
    post.method = "POST".into();
    let body = json(&send(&post).await);
    assert_eq!(body["method"], "POST");
    assert_eq!(body["path"], "//double//slash");
}

#[tokio::test]
async fn delay_status_and_set_header() {
    let echo = start_echo().await;

    let start = Instant::now();
    let resp = send(&request(echo.http, "/delayed?delay=300ms")).await;
    assert_eq!(resp.status, 200);
    assert!(start.elapsed() >= Duration::from_millis(300), "{:?}", start.elapsed());
    assert_eq!(json(&resp)["path"], "/delayed?delay=300ms");

    let resp = send(&request(echo.http, "/?delay=soon")).await;
    assert_eq!(resp.status, 500);
    let body: Value = serde_json::from_slice(&resp.body).expect("error JSON");
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains("invalid duration")),
        "{body}"
    );

    assert_eq!(send(&request(echo.http, "/status/503")).await.status, 503);
    assert_eq!(send(&request(echo.http, "/status/204")).await.status, 204);
    assert_eq!(send(&request(echo.http, "/status/404?x=1")).await.status, 400);
    assert_eq!(send(&request(echo.http, "/health")).await.status, 200);
    let redirect = send(&request(echo.http, "/status")).await;
    assert_eq!(redirect.status, 301);
    assert_eq!(
        redirect.headers.get("location").map(|v| v.as_bytes()),
        Some(b"/status/".as_slice())
    );

    let mut req = request(echo.http, "/set");
    req.headers.push((
        "X-Echo-Set-Header".into(),
        "Some-Other-Header:val,X-Header-Add:a, X-Header-Add: b".into(),
    ));
    let resp = send(&req).await;
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.headers.get("some-other-header").map(|v| v.as_bytes()),
        Some(b"val".as_slice())
    );
    assert_eq!(
        resp.headers.get("x-header-add").map(|v| v.as_bytes()),
        Some(b"a,b".as_slice())
    );
    // An empty X-Echo-Set-Header (upstream always sends one) sets nothing.
    let mut req = request(echo.http, "/");
    req.headers.push(("X-Echo-Set-Header".into(), String::new()));
    let resp = send(&req).await;
    assert_eq!(resp.status, 200);
    assert_eq!(json(&resp)["headers"]["X-Echo-Set-Header"], serde_json::json!([""]));
}

#[tokio::test]
async fn retry_simulation() {
    let echo = start_echo().await;
    let path = "/retry/x?responseCode=503&succeedAfter=2&uuid=u-1";
    assert_eq!(send(&request(echo.http, path)).await.status, 503);
    assert_eq!(send(&request(echo.http, path)).await.status, 503);
    let ok = send(&request(echo.http, path)).await;
    assert_eq!(ok.status, 200);
    assert_eq!(json(&ok)["path"], path);
    // Another uuid starts over.
    let other = "/retry/x?responseCode=500&succeedAfter=1&uuid=u-2";
    assert_eq!(send(&request(echo.http, other)).await.status, 500);
    assert_eq!(send(&request(echo.http, other)).await.status, 200);

    // Without responseCode the failing attempts reset the connection.
    let reset = "/retry/reset?succeedAfter=1&uuid=u-3";
    let err = client::send(&request(echo.http, reset), Duration::from_secs(10))
        .await
        .expect_err("connection reset");
    assert!(
        err.to_lowercase().contains("reset") || err.contains("closed") || err.contains("incomplete"),
        "{err}"
    );
    assert_eq!(send(&request(echo.http, reset)).await.status, 200);

    assert_eq!(send(&request(echo.http, "/retry/x?succeedAfter=1")).await.status, 400);
    assert_eq!(send(&request(echo.http, "/retry/x?uuid=u-4")).await.status, 400);

    // delayRetry delays the failing attempt.
    let start = Instant::now();
    let delayed = "/retry/d?responseCode=502&succeedAfter=1&uuid=u-5&delayRetry=200ms";
    assert_eq!(send(&request(echo.http, delayed)).await.status, 502);
    assert!(start.elapsed() >= Duration::from_millis(200));
}

#[tokio::test]
async fn h2c_prior_knowledge() {
    let echo = start_echo().await;
    let mut req = request(echo.h2c, "/h2c?delay=10ms");
    req.http2 = true;
    req.host = "h2.example".into();
    let resp = send(&req).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.version, http::Version::HTTP_2);
    let body = json(&resp);
    assert_eq!(body["proto"], "HTTP/2.0");
    assert_eq!(body["host"], "h2.example");
    assert_eq!(body["path"], "/h2c?delay=10ms");
    assert_eq!(body["pod"], "echo-deploy-abcde12345-xyz12");

    // Plain HTTP/1.1 on the h2c port is refused, as echo-basic does.
    let resp = send(&request(echo.h2c, "/")).await;
    assert_eq!(resp.status, 400);

    // HTTP/2 prior knowledge on the HTTP/1.1 port is not spoken.
    let mut wrong = request(echo.http, "/");
    wrong.http2 = true;
    assert!(client::send(&wrong, Duration::from_secs(5)).await.is_err());
}

#[tokio::test]
async fn bind_errors_name_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let err = tidegate::echo::serve(tidegate::echo::EchoOptions {
        listen: addr,
        h2c_listen: None,
        udp_listen: None,
        namespace: "ns".into(),
        pod: "p".into(),
        service: "s".into(),
    })
    .await
    .expect_err("address in use");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}
