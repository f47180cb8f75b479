//! Upstream's `CompareRoundTrip` (conformance/utils/http/http.go) over the case format's expect
//! fields, as README "Expect fields" describes them:
//!
//! - a timeout status (408/504) passes when any expected status is a timeout status;
//! - the status must be one of `status` (default `[200]`);
//! - for 200/204 the echoed request is compared (host, path, method, namespace, request headers,
//!   response headers, absent headers, pod-name prefix); the echo body is parsed only when
//!   `Content-Type` is exactly `application/json`, otherwise the echoed fields are empty and the
//!   method is the one sent;
//! - for a redirect status, `redirect` is compared with the resolved `Location`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::case::Expect;
use super::client::ClientResponse;

/// What was sent, as far as the comparison needs it.
#[derive(Debug, Clone)]
pub struct Sent {
    /// `http` or `https`.
    pub scheme: String,
    pub method: String,
    /// Path with query.
    pub path: String,
    /// The authority of the request URL upstream would have used (`127.0.0.1` or
    /// `127.0.0.1:8080`): relative `Location`s resolve against it.
    pub url_host: String,
}

/// The echo-basic JSON body, as upstream's `CapturedRequest`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Echoed {
    pub path: String,
    pub host: String,
    pub method: String,
    pub proto: String,
    pub headers: BTreeMap<String, Vec<String>>,
    #[serde(rename = "httpPort")]
    pub http_port: String,
    pub namespace: String,
    pub pod: String,
}

impl Echoed {
    /// Values of a request header as the backend saw it (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&Vec<String>> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

/// What came back, as far as the comparison needs it.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub status: u16,
    /// Response headers, lower-case names, values in order.
    pub headers: BTreeMap<String, Vec<String>>,
    /// True when the body was an echo JSON body (`Content-Type: application/json`).
    pub is_echo: bool,
    pub echoed: Echoed,
    /// First 200 bytes of a non-echo body, for messages.
    pub body_hint: String,
}

impl Observed {
    /// Builds the observation from a response the way upstream's round tripper does.
    pub fn from_response(resp: &ClientResponse, sent_method: &str) -> Result<Observed, String> {
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in &resp.headers {
            headers
                .entry(name.as_str().to_ascii_lowercase())
                .or_default()
                .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
        }
        let is_json = headers
            .get("content-type")
            .and_then(|v| v.first())
            .is_some_and(|ct| ct == "application/json");
        let (echoed, body_hint) = if is_json {
            let echoed: Echoed = serde_json::from_slice(&resp.body)
                .map_err(|e| format!("unexpected error reading response (status {}): {e}", resp.status))?;
            (echoed, String::new())
        } else {
            let hint: String = String::from_utf8_lossy(&resp.body).chars().take(200).collect();
            (
                Echoed {
                    method: sent_method.to_owned(),
                    ..Echoed::default()
                },
                hint,
            )
        };
        Ok(Observed {
            status: resp.status,
            headers,
            is_echo: is_json,
            echoed,
            body_hint,
        })
    }

    fn header(&self, name: &str) -> Option<&Vec<String>> {
        self.headers.get(&name.to_ascii_lowercase())
    }
}

pub fn is_timeout_status(code: u16) -> bool {
    code == 408 || code == 504
}

pub fn is_redirect_status(code: u16) -> bool {
    matches!(code, 300 | 301 | 302 | 303 | 304 | 305 | 307 | 308)
}

/// Upstream's comparison; `Err` carries the first mismatch.
pub fn compare(sent: &Sent, obs: &Observed, exp: &Expect, location: Option<&str>) -> Result<(), String> {
    let statuses = exp.statuses();
    if is_timeout_status(obs.status) && statuses.iter().any(|s| is_timeout_status(*s)) {
        return Ok(());
    }
    if !statuses.contains(&obs.status) {
        let mut msg = format!("expected status {statuses:?}, got {}", obs.status);
        if obs.is_echo {
            msg.push_str(&format!(" from pod {:?} (path {:?})", obs.echoed.pod, obs.echoed.path));
        } else if !obs.body_hint.trim().is_empty() {
            msg.push_str(&format!(" body {:?}", obs.body_hint.trim()));
        }
        return Err(msg);
    }

    if obs.status == 200 || obs.status == 204 {
        compare_backend(sent, obs, exp)
    } else if is_redirect_status(obs.status) {
        match &exp.redirect {
            None => Ok(()),
            Some(_) => compare_redirect(sent, obs, exp, location),
        }
    } else {
        Ok(())
    }
}

fn compare_backend(sent: &Sent, obs: &Observed, exp: &Expect) -> Result<(), String> {
    let echoed = &obs.echoed;
    if exp.answered_by_gateway && obs.is_echo {
        return Err(format!(
            "expected the gateway to answer by itself, but echo pod {:?} answered (path {:?})",
            echoed.pod, echoed.path
        ));
    }
    if let Some(host) = exp.host_at_backend.as_deref().filter(|h| !h.is_empty())
        && host != echoed.host
    {
        return Err(format!("expected host at backend {host:?}, got {:?}", echoed.host));
    }
    let path = exp.path_at_backend.as_deref().unwrap_or(&sent.path);
    if path != echoed.path {
        return Err(format!("expected path at backend {path:?}, got {:?}", echoed.path));
    }
    let method = exp
        .method_at_backend
        .as_deref()
        .filter(|m| !m.is_empty())
        .unwrap_or(&sent.method);
    if method != echoed.method {
        return Err(format!(
            "expected method at backend {method:?}, got {:?}",
            echoed.method
        ));
    }
    let namespace = exp.backend.as_ref().and_then(|b| b.namespace.as_deref()).unwrap_or("");
    if namespace != echoed.namespace {
        return Err(format!(
            "expected namespace {namespace:?}, got {:?}{}",
            echoed.namespace,
            if obs.is_echo {
                String::new()
            } else {
                " (response is not an echo body)".to_owned()
            }
        ));
    }
    if !exp.request_headers_at_backend.is_empty() && !obs.is_echo {
        return Err(format!(
            "no headers captured (response is not an echo body), expected {} request headers",
            exp.request_headers_at_backend.len()
        ));
    }
    for (name, want) in &exp.request_headers_at_backend {
        match echoed.header(name) {
            None => {
                return Err(format!(
                    "expected request header {name} at backend, it was absent (backend saw {:?})",
                    echoed.headers.keys().collect::<Vec<_>>()
                ));
            }
            Some(values) => {
                let got = values.join(",");
                if &got != want {
                    return Err(format!(
                        "expected request header {name}: {want:?} at backend, got {got:?}"
                    ));
                }
            }
        }
    }
    let squash = |s: &str| -> String {
        if exp.ignore_whitespace_in_response_headers {
            s.chars().filter(|c| !c.is_whitespace()).collect()
        } else {
            s.to_owned()
        }
    };
    for (name, want) in &exp.response_headers {
        match obs.header(name) {
            None => {
                return Err(format!(
                    "expected response header {name}: {want:?}, it was absent (got {:?})",
                    obs.headers.keys().collect::<Vec<_>>()
                ));
            }
            Some(values) => {
                let got = values.join(",");
                if squash(&got) != squash(want) {
                    return Err(format!("expected response header {name}: {want:?}, got {got:?}"));
                }
            }
        }
    }
    for (name, alternatives) in &exp.response_header_alternatives {
        match obs.header(name) {
            None => {
                return Err(format!(
                    "expected response header {name} (one of {alternatives:?}), it was absent"
                ));
            }
            Some(values) => {
                let got = values.join(",");
                if !alternatives.iter().any(|alt| squash(alt) == squash(&got)) {
                    return Err(format!(
                        "expected response header {name} to be one of {alternatives:?}, got {got:?}"
                    ));
                }
            }
        }
    }
    for name in &exp.absent_response_headers {
        if let Some(values) = obs.header(name) {
            return Err(format!("expected response header {name} to be absent, got {values:?}"));
        }
    }
    for name in &exp.absent_headers {
        if let Some(values) = echoed.header(name) {
            return Err(format!(
                "expected request header {name} to be absent at backend, got {values:?}"
            ));
        }
    }
    let prefix = exp.backend.as_ref().and_then(|b| b.name.as_deref()).unwrap_or("");
    if !echoed.pod.starts_with(prefix) {
        return Err(format!(
            "expected pod name to start with {prefix:?}, got {:?}",
            echoed.pod
        ));
    }
    Ok(())
}

fn compare_redirect(sent: &Sent, obs: &Observed, exp: &Expect, location: Option<&str>) -> Result<(), String> {
    let Some(want) = &exp.redirect else {
        return Ok(());
    };
    let Some(location) = location else {
        return Err(format!("status {} without a Location header", obs.status));
    };
    let base_path = sent.path.split('?').next().unwrap_or("/");
    let got = resolve_location(&sent.scheme, &sent.url_host, base_path, location)?;

    let want_host = want.host.as_deref().filter(|h| !h.is_empty()).unwrap_or(&got.hostname);
    if want_host != got.hostname {
        return Err(format!(
            "expected redirect host {want_host:?}, got {:?} (Location {location:?})",
            got.hostname
        ));
    }
    match want.port.as_deref().filter(|p| !p.is_empty()) {
        None => {
            let scheme = got.scheme.to_ascii_lowercase();
            if scheme == "http" && got.port != "80" && !got.port.is_empty() {
                return Err(format!(
                    "for http scheme, expected redirect port 80 or none, got {:?} (Location {location:?})",
                    got.port
                ));
            }
            if scheme == "https" && got.port != "443" && !got.port.is_empty() {
                return Err(format!(
                    "for https scheme, expected redirect port 443 or none, got {:?} (Location {location:?})",
                    got.port
                ));
            }
        }
        Some(port) => {
            if port != got.port {
                return Err(format!(
                    "expected redirect port {port:?}, got {:?} (Location {location:?})",
                    got.port
                ));
            }
        }
    }
    let want_scheme = want.scheme.as_deref().filter(|s| !s.is_empty()).unwrap_or(&sent.scheme);
    if want_scheme != got.scheme {
        return Err(format!(
            "expected redirect scheme {want_scheme:?}, got {:?} (Location {location:?})",
            got.scheme
        ));
    }
    let want_path = want.path.as_deref().filter(|p| !p.is_empty()).unwrap_or(base_path);
    if want_path != got.path {
        return Err(format!(
            "expected redirect path {want_path:?}, got {:?} (Location {location:?})",
            got.path
        ));
    }
    // The whole URL, where the case states it (the same fields, so a disagreement is a bug in
    // either the case data or the field checks above).
    if let Some(url) = &exp.redirect_location {
        let expected = resolve_location(&sent.scheme, &sent.url_host, base_path, url)?;
        if same_url(&expected) != same_url(&got) {
            return Err(format!("expected redirect to {url:?}, got Location {location:?}"));
        }
    }
    Ok(())
}

/// A resolved URL as (scheme, host, port, path), with the scheme's default port written as none.
fn same_url(url: &Resolved) -> (String, &str, &str, &str) {
    let scheme = url.scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "http" => "80",
        "https" => "443",
        _ => "",
    };
    let port = if url.port == default_port {
        ""
    } else {
        url.port.as_str()
    };
    (scheme, url.hostname.as_str(), port, url.path.as_str())
}

/// A `Location` resolved against the request URL, split like Go's `url.URL`.
#[derive(Debug, PartialEq, Eq)]
pub struct Resolved {
    pub scheme: String,
    pub hostname: String,
    pub port: String,
    /// Decoded path (Go's `URL.Path`).
    pub path: String,
}

/// Go's `resp.Location()`: `url.Parse(location)` resolved against the request URL.
pub fn resolve_location(
    base_scheme: &str,
    base_authority: &str,
    base_path: &str,
    location: &str,
) -> Result<Resolved, String> {
    let location = location.split('#').next().unwrap_or("");
    let (scheme, rest) = match split_scheme(location) {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => (base_scheme.to_owned(), location),
    };
    let has_scheme = split_scheme(location).is_some();
    let (authority, path_and_query) = if let Some(after) = rest.strip_prefix("//") {
        let end = after.find(['/', '?']).unwrap_or(after.len());
        (after[..end].to_owned(), &after[end..])
    } else if has_scheme {
        // Opaque URL such as `mailto:x`: no host, no path.
        return Ok(Resolved {
            scheme,
            hostname: String::new(),
            port: String::new(),
            path: String::new(),
        });
    } else {
        (base_authority.to_owned(), rest)
    };
    let raw_path = path_and_query.split('?').next().unwrap_or("");
    let merged = if raw_path.starts_with('/') {
        raw_path.to_owned()
    } else if raw_path.is_empty() {
        if rest.starts_with("//") {
            String::new()
        } else {
            base_path.to_owned()
        }
    } else {
        let dir = base_path.rfind('/').map_or("/", |i| &base_path[..=i]);
        format!("{dir}{raw_path}")
    };
    let path = percent_decode(&remove_dot_segments(&merged))
        .ok_or_else(|| format!("invalid escape in Location {location:?}"))?;
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let (hostname, port) = split_host_port(host_port);
    Ok(Resolved {
        scheme,
        hostname,
        port,
        path,
    })
}

fn split_scheme(s: &str) -> Option<(&str, &str)> {
    let colon = s.find(':')?;
    let scheme = &s[..colon];
    let mut chars = scheme.chars();
    let first = chars.next()?;
    if !first.is_ascii_alphabetic() || !chars.all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.') {
        return None;
    }
    Some((scheme, &s[colon + 1..]))
}

/// Go's `URL.Hostname()` / `URL.Port()`.
fn split_host_port(host: &str) -> (String, String) {
    if let Some(rest) = host.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').unwrap_or((rest, ""));
        let port = after.strip_prefix(':').unwrap_or("");
        let port = if port.bytes().all(|b| b.is_ascii_digit()) {
            port
        } else {
            ""
        };
        return (inside.to_owned(), port.to_owned());
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h.to_owned(), p.to_owned()),
        Some((h, _)) => (h.to_owned(), String::new()),
        None => (host.to_owned(), String::new()),
    }
}

/// RFC 3986 dot-segment removal (Go's `resolvePath`), keeping a trailing slash.
fn remove_dot_segments(path: &str) -> String {
    if path.is_empty() {
        return String::new();
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        match *seg {
            "." => {
                if i == last {
                    out.push("");
                }
            }
            ".." => {
                if out.len() > 1 {
                    out.pop();
                }
                if i == last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    let joined = out.join("/");
    if joined.starts_with('/') {
        joined
    } else {
        format!("/{joined}")
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::support::case::{BackendRef, RedirectExpect};

    fn sent(path: &str) -> Sent {
        Sent {
            scheme: "http".into(),
            method: "GET".into(),
            path: path.into(),
            url_host: "127.0.0.1".into(),
        }
    }

    fn echo(pod: &str, ns: &str, path: &str) -> Observed {
        Observed {
            status: 200,
            headers: BTreeMap::from([("content-type".to_owned(), vec!["application/json".to_owned()])]),
            is_echo: true,
            echoed: Echoed {
                path: path.into(),
                host: "127.0.0.1".into(),
                method: "GET".into(),
                namespace: ns.into(),
                pod: pod.into(),
                ..Echoed::default()
            },
            body_hint: String::new(),
        }
    }

    fn expect_backend(name: Option<&str>, ns: &str, path: &str) -> Expect {
        Expect {
            backend: Some(BackendRef {
                name: name.map(str::to_owned),
                namespace: Some(ns.into()),
            }),
            method_at_backend: Some("GET".into()),
            path_at_backend: Some(path.into()),
            ..Expect::default()
        }
    }

    #[test]
    fn status_must_be_listed_and_timeouts_are_interchangeable() {
        let mut exp = Expect {
            status: Some(vec![504]),
            ..Expect::default()
        };
        let mut obs = Observed {
            status: 408,
            ..Observed::default()
        };
        assert!(compare(&sent("/"), &obs, &exp, None).is_ok());
        obs.status = 500;
        let err = compare(&sent("/"), &obs, &exp, None).expect_err("500 is not 504");
        assert!(err.contains("expected status [504], got 500"), "{err}");
        exp.status = None;
        obs.status = 404;
        assert!(compare(&sent("/"), &obs, &exp, None).is_err(), "default is [200]");
        // Non-2xx, non-redirect statuses check nothing else.
        exp.status = Some(vec![404]);
        exp.backend = Some(BackendRef {
            name: Some("x".into()),
            namespace: Some("y".into()),
        });
        assert!(compare(&sent("/"), &obs, &exp, None).is_ok());
    }

    #[test]
    fn backend_pod_prefix_namespace_path_method() {
        let exp = expect_backend(Some("infra-backend-v1"), "infra", "/a?b=1");
        let ok = echo("infra-backend-v1-abc-def", "infra", "/a?b=1");
        assert!(compare(&sent("/a?b=1"), &ok, &exp, None).is_ok());

        let wrong_pod = echo("infra-backend-v2-abc-def", "infra", "/a?b=1");
        let err = compare(&sent("/a?b=1"), &wrong_pod, &exp, None).expect_err("pod");
        assert!(err.contains("pod name to start with"), "{err}");

        let wrong_ns = echo("infra-backend-v1-x-y", "other", "/a?b=1");
        assert!(
            compare(&sent("/a?b=1"), &wrong_ns, &exp, None)
                .expect_err("ns")
                .contains("namespace")
        );

        let wrong_path = echo("infra-backend-v1-x-y", "infra", "/a");
        assert!(
            compare(&sent("/a?b=1"), &wrong_path, &exp, None)
                .expect_err("path")
                .contains("path")
        );

        let mut wrong_method = echo("infra-backend-v1-x-y", "infra", "/a?b=1");
        wrong_method.echoed.method = "POST".into();
        assert!(
            compare(&sent("/a?b=1"), &wrong_method, &exp, None)
                .expect_err("method")
                .contains("method")
        );

        // name null = any pod, namespace still exact.
        let any = expect_backend(None, "infra", "/a?b=1");
        assert!(compare(&sent("/a?b=1"), &wrong_pod, &any, None).is_ok());
    }

    #[test]
    fn host_checked_only_when_expected() {
        let mut exp = expect_backend(None, "ns", "/");
        let mut obs = echo("p-1-2", "ns", "/");
        obs.echoed.host = "example.org".into();
        assert!(compare(&sent("/"), &obs, &exp, None).is_ok());
        exp.host_at_backend = Some("example.org".into());
        assert!(compare(&sent("/"), &obs, &exp, None).is_ok());
        exp.host_at_backend = Some("other.org".into());
        assert!(compare(&sent("/"), &obs, &exp, None).is_err());
    }

    #[test]
    fn non_json_responses_echo_nothing() {
        // The CORS preflight shape: backend null, path "", answered by the gateway.
        let exp = Expect {
            status: Some(vec![200, 204]),
            answered_by_gateway: true,
            method_at_backend: Some("OPTIONS".into()),
            path_at_backend: Some(String::new()),
            ..Expect::default()
        };
        let mut s = sent("/cors");
        s.method = "OPTIONS".into();
        let resp = ClientResponse {
            status: 204,
            version: http::Version::HTTP_11,
            headers: http::HeaderMap::new(),
            body: bytes::Bytes::new(),
        };
        let obs = Observed::from_response(&resp, "OPTIONS").expect("observed");
        assert!(!obs.is_echo);
        assert_eq!(obs.echoed.method, "OPTIONS");
        assert!(compare(&s, &obs, &exp, None).is_ok());

        // An echo backend answering instead fails.
        let mut echoed = echo("infra-backend-v1-a-b", "infra", "/cors");
        echoed.status = 200;
        echoed.echoed.method = "OPTIONS".into();
        assert!(
            compare(&s, &echoed, &exp, None)
                .expect_err("echo answered")
                .contains("gateway to answer")
        );

        // Content-Type must be exactly application/json for the body to count.
        let mut headers = http::HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json; charset=utf-8"),
        );
        let resp = ClientResponse {
            status: 200,
            version: http::Version::HTTP_11,
            headers,
            body: bytes::Bytes::from_static(b"{\"pod\":\"x\"}"),
        };
        let obs = Observed::from_response(&resp, "GET").expect("observed");
        assert!(!obs.is_echo);
        assert_eq!(obs.echoed.pod, "");
    }

    #[test]
    fn request_headers_case_insensitive_and_joined() {
        let mut exp = expect_backend(None, "ns", "/");
        exp.request_headers_at_backend = BTreeMap::from([("x-header-add-append".to_owned(), "a,b".to_owned())]);
        let mut obs = echo("p-1-2", "ns", "/");
        obs.echoed
            .headers
            .insert("X-Header-Add-Append".into(), vec!["a".into(), "b".into()]);
        assert!(compare(&sent("/"), &obs, &exp, None).is_ok());
        obs.echoed
            .headers
            .insert("X-Header-Add-Append".into(), vec!["a, b".into()]);
        assert!(compare(&sent("/"), &obs, &exp, None).is_err());

        exp.request_headers_at_backend.clear();
        exp.absent_headers = vec!["x-header-add-append".into()];
        assert!(
            compare(&sent("/"), &obs, &exp, None)
                .expect_err("absent")
                .contains("absent")
        );
    }

    #[test]
    fn response_headers_exact_alternatives_whitespace_absent() {
        let mut exp = expect_backend(None, "ns", "/");
        let mut obs = echo("p-1-2", "ns", "/");
        obs.headers
            .insert("x-header-add".into(), vec!["some".into(), "more".into()]);
        obs.headers
            .insert("access-control-allow-methods".into(), vec!["GET, OPTIONS".into()]);
        exp.response_headers = BTreeMap::from([("X-Header-Add".to_owned(), "some,more".to_owned())]);
        assert!(compare(&sent("/"), &obs, &exp, None).is_ok());

        exp.response_header_alternatives = BTreeMap::from([(
            "Access-Control-Allow-Methods".to_owned(),
            vec!["OPTIONS,GET".to_owned(), "GET,OPTIONS".to_owned()],
        )]);
        assert!(
            compare(&sent("/"), &obs, &exp, None).is_err(),
            "whitespace matters unless ignored"
        );
        exp.ignore_whitespace_in_response_headers = true;
        assert!(compare(&sent("/"), &obs, &exp, None).is_ok());

        exp.absent_response_headers = vec!["X-Header-Add".into()];
        assert!(compare(&sent("/"), &obs, &exp, None).is_err());
    }

    #[test]
    fn redirects_resolve_and_default() {
        let exp = Expect {
            status: Some(vec![302]),
            redirect: Some(RedirectExpect {
                scheme: Some("http".into()),
                host: None,
                port: Some(String::new()),
                path: Some("/new".into()),
            }),
            ..Expect::default()
        };
        let obs = Observed {
            status: 302,
            ..Observed::default()
        };
        let s = sent("/old?q=1");
        assert!(compare(&s, &obs, &exp, Some("http://127.0.0.1/new")).is_ok());
        assert!(compare(&s, &obs, &exp, Some("/new")).is_ok(), "relative");
        assert!(compare(&s, &obs, &exp, Some("http://127.0.0.1:80/new")).is_ok());
        let err = compare(&s, &obs, &exp, Some("http://127.0.0.1:8080/new")).expect_err("port");
        assert!(err.contains("port 80 or none"), "{err}");
        assert!(compare(&s, &obs, &exp, None).is_err(), "Location required");

        let mut host_port = exp.clone();
        host_port.redirect = Some(RedirectExpect {
            scheme: Some("https".into()),
            host: Some("example.org".into()),
            port: Some("8443".into()),
            path: None,
        });
        assert!(
            compare(&s, &obs, &host_port, Some("https://example.org:8443/old")).is_ok(),
            "path defaults to the request path without query"
        );
        assert!(compare(&s, &obs, &host_port, Some("https://example.com:8443/old")).is_err());
        assert!(compare(&s, &obs, &host_port, Some("http://example.org:8443/old")).is_err());

        // The whole URL, where the case gives it; default ports are the same as none.
        let mut with_url = exp.clone();
        with_url.redirect_location = Some("http://127.0.0.1/new".into());
        assert!(compare(&s, &obs, &with_url, Some("http://127.0.0.1:80/new")).is_ok());
        with_url.redirect_location = Some("http://127.0.0.1/elsewhere".into());
        let err = compare(&s, &obs, &with_url, Some("http://127.0.0.1/new")).expect_err("the URL differs");
        assert!(err.contains("expected redirect to"), "{err}");

        // A redirect status without a redirect expectation passes.
        let plain = Expect {
            status: Some(vec![302]),
            ..Expect::default()
        };
        assert!(compare(&s, &obs, &plain, None).is_ok());
    }

    #[test]
    fn location_resolution() {
        let r = resolve_location("http", "127.0.0.1:8080", "/a/b", "c?x=1").expect("ok");
        assert_eq!(
            r,
            Resolved {
                scheme: "http".into(),
                hostname: "127.0.0.1".into(),
                port: "8080".into(),
                path: "/a/c".into()
            }
        );
        let r = resolve_location("http", "h", "/", "HTTPS://[::1]:443/x%20y#frag").expect("ok");
        assert_eq!(r.scheme, "https");
        assert_eq!(r.hostname, "::1");
        assert_eq!(r.port, "443");
        assert_eq!(r.path, "/x y");
        let r = resolve_location("https", "h", "/p", "//other/q/../r/").expect("ok");
        assert_eq!(
            (r.scheme.as_str(), r.hostname.as_str(), r.path.as_str()),
            ("https", "other", "/r/")
        );
    }
}
