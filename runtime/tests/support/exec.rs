//! Sending a case's requests with upstream's client behaviour and eventual-consistency policy.

use std::future::Future;
use std::time::{Duration, Instant};

use super::case::{CaseRequest, Expect, MirrorRef, split_ns_name};
use super::client::{self, ClientRequest, TlsTarget};
use super::compare::{Observed, Sent, compare};
use super::fixture::{EchoPod, Fixture};
use super::util;

/// Upstream's default `TimeoutConfig.RequestTimeout`.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Upstream's default `MaxTimeToConsistency`.
pub const MAX_TIME_TO_CONSISTENCY: Duration = Duration::from_secs(30);
/// Upstream's default `RequiredConsecutiveSuccesses`.
pub const REQUIRED_CONSECUTIVE_SUCCESSES: u32 = 3;
/// The query parameter upstream appends to make mirrored requests recognisable in logs.
pub const MIRROR_ID_PARAM: &str = "gateway-api-conformance-request-id";

/// Upstream's `CalculateHost`: the gateway address without the port when it is the scheme's
/// default.
pub fn calculate_host(ip: &str, port: u16, scheme: &str) -> String {
    let ip = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_owned()
    };
    match (scheme.to_ascii_lowercase().as_str(), port) {
        ("http", 80) | ("https", 443) => ip,
        _ => format!("{ip}:{port}"),
    }
}

/// Appends `name=value` to a path's query.
pub fn with_query_param(path: &str, name: &str, value: &str) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}{name}={value}")
}

/// The log line echo-basic writes for a request to `path`.
pub fn echo_log_marker(path: &str) -> String {
    format!("Echoing back request made to {path} to client")
}

/// One request ready to send, with its expectation specialised for this attempt.
pub struct Prepared {
    pub client: ClientRequest,
    pub sent: Sent,
    pub expect: Expect,
}

/// Builds one attempt of `req`: a fresh `{UUID}`, the optional mirror id appended to the path
/// (and to the expected backend path), the Host header upstream would send, and the
/// `X-Echo-Set-Header` header upstream always sends.
pub fn prepare(
    fx: &Fixture,
    req: &CaseRequest,
    exp: &Expect,
    mirror_id: Option<&str>,
    extra_headers: &[(String, String)],
) -> Result<Prepared, String> {
    let uuid = util::random_uuid();
    let mut path = req.path().replace("{UUID}", &uuid);
    let mut expect = exp.clone();
    expect.path_at_backend = exp.path_at_backend.as_ref().map(|p| p.replace("{UUID}", &uuid));
    if let Some(id) = mirror_id {
        path = with_query_param(&path, MIRROR_ID_PARAM, id);
        expect.path_at_backend = expect
            .path_at_backend
            .map(|p| with_query_param(&p, MIRROR_ID_PARAM, id));
    }

    let scheme = req.scheme.to_ascii_lowercase();
    let gateway_ip = fx.gateway_ip(&req.gateway).to_string();
    let url_host = calculate_host(&gateway_ip, req.listener_port, &scheme);
    let host = match req.host.as_deref() {
        Some(h) if !h.is_empty() => h.to_owned(),
        _ => url_host.clone(),
    };
    let tls = if scheme == "https" {
        let sni = match req.sni.as_deref() {
            Some(s) if !s.is_empty() => s.to_owned(),
            _ => host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h).to_owned(),
        };
        Some(TlsTarget {
            sni,
            roots: fx.roots.clone(),
        })
    } else {
        None
    };
    let http2 = matches!(req.protocol.as_deref(), Some("H2") | Some("H2C_PRIOR_KNOWLEDGE"));

    let mut headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|(k, v)| (tidegate::echo::go_canonical_header_key(k), v.clone()))
        .collect();
    let set_header = req
        .backend_set_response_headers
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join(",");
    headers.push(("X-Echo-Set-Header".to_owned(), set_header));
    headers.extend(extra_headers.iter().cloned());

    let method = req.method().to_owned();
    Ok(Prepared {
        client: ClientRequest {
            connect: fx.listener_addr(&req.gateway, req.listener_port),
            tls,
            http2,
            host,
            method: method.clone(),
            path: path.clone(),
            headers,
        },
        sent: Sent {
            scheme,
            method,
            path,
            url_host,
        },
        expect,
    })
}

/// One round trip of `req`, compared with `exp`.
pub async fn attempt(
    fx: &Fixture,
    req: &CaseRequest,
    exp: &Expect,
    mirror_id: Option<&str>,
    extra_headers: &[(String, String)],
) -> Result<Observed, String> {
    let p = prepare(fx, req, exp, mirror_id, extra_headers)?;
    let resp = client::send(&p.client, REQUEST_TIMEOUT)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let obs = Observed::from_response(&resp, &p.sent.method)?;
    let location = resp
        .headers
        .get(http::header::LOCATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    compare(&p.sent, &obs, &p.expect, location.as_deref())?;
    Ok(obs)
}

/// Upstream's `AwaitConvergence`: `f` must pass `threshold` times in a row within `max`; a
/// failure waits a second before retrying. `Err` carries the last failure.
pub async fn await_convergence<F, Fut>(threshold: u32, max: Duration, mut f: F) -> Result<u32, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    let deadline = start + max;
    let mut successes = 0;
    let mut attempts = 0;
    let mut last_err = String::from("never attempted");
    loop {
        if Instant::now() >= deadline {
            return Err(format!(
                "{last_err} (not consistent after {attempts} attempts in {:.0?})",
                start.elapsed()
            ));
        }
        attempts += 1;
        match f().await {
            Ok(()) => {
                successes += 1;
                if successes >= threshold {
                    return Ok(attempts);
                }
            }
            Err(e) => {
                successes = 0;
                last_err = e;
                let remaining = deadline.saturating_duration_since(Instant::now());
                tokio::time::sleep(remaining.min(Duration::from_secs(1))).await;
            }
        }
    }
}

/// A request of the case, with upstream's eventual-consistency policy, then its mirror check.
pub async fn run_request(fx: &Fixture, req: &CaseRequest, exp: &Expect) -> Result<(), String> {
    let plain_mirrors: Vec<MirrorRef> = exp
        .mirrored_to
        .iter()
        .filter(|m| m.percent.is_none())
        .cloned()
        .collect();
    let mirror_id = (!plain_mirrors.is_empty()).then(util::random_uuid);
    await_convergence(REQUIRED_CONSECUTIVE_SUCCESSES, MAX_TIME_TO_CONSISTENCY, || async {
        attempt(fx, req, exp, mirror_id.as_deref(), &[]).await.map(|_| ())
    })
    .await?;
    if let Some(id) = &mirror_id {
        let path = with_query_param(req.path(), MIRROR_ID_PARAM, id);
        let (gw_ns, _) = split_ns_name(&req.gateway, "default");
        check_mirrors(fx, &path, &plain_mirrors, gw_ns).await?;
    }
    Ok(())
}

/// Every mirror Service must have logged the request to `path` (within the request timeout).
pub async fn check_mirrors(fx: &Fixture, path: &str, mirrors: &[MirrorRef], default_ns: &str) -> Result<(), String> {
    let marker = echo_log_marker(path);
    for m in mirrors {
        let ns = m.namespace.as_deref().unwrap_or(default_ns);
        let pods = fx.pods_of_service(ns, &m.name);
        if pods.is_empty() {
            return Err(format!("mirror target {ns}/{}: no echo pods behind it", m.name));
        }
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        loop {
            if count_log_lines(&pods, &marker) > 0 {
                break;
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "mirror target {ns}/{} never logged {marker:?} within {REQUEST_TIMEOUT:?}",
                    m.name
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// How many stdout lines of `pods` contain `marker` (the path is followed by " to client", so
/// a longer path with the same prefix does not count).
pub fn count_log_lines(pods: &[&EchoPod], marker: &str) -> usize {
    pods.iter().map(|p| p.proc.stdout.count(|l| l.contains(marker))).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_like_upstream() {
        assert_eq!(calculate_host("127.0.0.1", 80, "http"), "127.0.0.1");
        assert_eq!(calculate_host("127.0.0.1", 8080, "http"), "127.0.0.1:8080");
        assert_eq!(calculate_host("127.0.0.1", 443, "https"), "127.0.0.1");
        assert_eq!(calculate_host("127.0.0.1", 443, "http"), "127.0.0.1:443");
        assert_eq!(calculate_host("::1", 80, "HTTP"), "[::1]");
    }

    #[test]
    fn query_params_append() {
        assert_eq!(with_query_param("/m", "id", "1"), "/m?id=1");
        assert_eq!(with_query_param("/m?a=b", "id", "1"), "/m?a=b&id=1");
    }

    #[tokio::test]
    async fn convergence_needs_consecutive_successes() {
        use std::cell::Cell;
        let calls = Cell::new(0u32);
        // fail, ok, fail, ok, ok, ok
        let pattern = [false, true, false, true, true, true];
        let result = await_convergence(3, Duration::from_secs(10), || {
            let i = calls.get();
            calls.set(i + 1);
            let ok = pattern.get(i as usize).copied().unwrap_or(true);
            async move { if ok { Ok(()) } else { Err(format!("fail {i}")) } }
        })
        .await;
        assert_eq!(result, Ok(6));

        let result = await_convergence(3, Duration::from_millis(300), || async {
            Err::<(), _>("always".to_owned())
        })
        .await;
        let err = result.expect_err("times out");
        assert!(err.starts_with("always"), "{err}");
    }
}
