//! The harness driving tidegate's standard router (`tidegate::filters::ROUTER_WASM`): the same
//! module the proxy runs, configured as the translator configures it.

use serde_json::json;
use tidegate_testing::{Error, Filter, Request, Response, TestHost, WasmError};

fn router() -> TestHost {
    let route = json!({
        "namespace": "demo",
        "name": "web",
        "rules": [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                "filters": [
                    {"type": "RequestHeaderModifier", "requestHeaderModifier": {"add": [{"name": "x-gateway", "value": "tidegate"}]}},
                    {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "x-served-by", "value": "quickstart"}]}}
                ],
                "backends": [{"cluster": "demo/echo-v1:80"}]
            },
            {
                "matches": [{"path": {"type": "Exact", "value": "/old"}}],
                "filters": [{"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplaceFullPath", "replaceFullPath": "/api"}, "statusCode": 301}}]
            }
        ]
    });
    Filter::from_bytes("router", tidegate::filters::ROUTER_WASM).config(json!({
        "listeners": [{"gateway": "demo/quickstart", "name": "http", "port": 8080, "protocol": "HTTP", "routes": [route]}]
    }))
}

#[test]
fn routes_a_request_and_edits_both_directions() {
    let mut host = router();
    let request = host.request(Request::get("/api/orders"));
    assert!(request.forwarded, "{request:?}");
    assert_eq!(request.property("tidegate.route"), Some("demo/web/0"));
    assert_eq!(request.property("tidegate.cluster"), Some("demo/echo-v1:80"));
    assert_eq!(request.request_header("x-gateway"), Some("tidegate"));
    assert_eq!(request.local_reply, None);

    let response = host.response(Response::ok());
    assert!(response.forwarded);
    assert_eq!(response.response_header("x-served-by"), Some("quickstart"));
    assert_eq!(response.response_header(":status"), Some("200"));
}

#[test]
fn answers_locally_when_it_should() {
    let mut host = router();
    let redirect = host.request(Request::get("/old"));
    assert!(!redirect.forwarded);
    assert_eq!(redirect.status(), Some(301));
    assert_eq!(redirect.reply_header("location"), Some("http://example.com:8080/api"));

    let missing = host.request(Request::get("/nothing-here"));
    assert!(!missing.forwarded);
    assert_eq!(missing.status(), Some(404));
    assert_eq!(missing.property("tidegate.cluster"), None);

    // Another listener port: no listener, no route.
    let elsewhere = host.request(Request::get("/api").listener_port(9999));
    assert_eq!(elsewhere.status(), Some(404));
}

#[test]
fn a_response_needs_a_forwarded_request() {
    let mut host = router();
    let error = host.try_response(Response::ok()).expect_err("no request yet");
    assert!(matches!(error, Error::Usage(_)), "{error}");
    host.request(Request::get("/old"));
    let error = host.try_response(Response::ok()).expect_err("answered locally");
    assert!(error.to_string().contains("answered locally"), "{error}");
}

#[test]
fn an_invalid_configuration_is_refused() {
    let error = Filter::from_bytes("router", tidegate::filters::ROUTER_WASM)
        .try_config(json!({"listeners": "not a list"}))
        .expect_err("refused");
    assert!(
        matches!(error, Error::Filter(WasmError::ConfigureRejected { .. })),
        "{error}"
    );
}
