//! `extra_checks`: the statistical and repeated checks upstream runs after the plain requests
//! (weighted backends, fractional mirroring, per-backend header filters), with the numbers the
//! case gives.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt;

use super::case::{Case, CaseRequest, Expect, ExtraCheck, split_ns_name};
use super::exec::{self, MIRROR_ID_PARAM};
use super::fixture::Fixture;
use super::util;

/// Runs one extra check of `case`.
pub async fn run(fx: &Fixture, case: &Case, check: &ExtraCheck) -> Result<(), String> {
    match check.check.as_str() {
        "weighted_distribution" => {
            let (req, exp) = template(case, check)?;
            weighted_distribution(fx, check, req, exp).await
        }
        "backend_header_matches_serving_backend" => {
            let (req, exp) = template(case, check)?;
            backend_header_matches(fx, check, req, exp).await
        }
        "mirror_percentage" => {
            for (req, exp) in case.requests.iter().zip(&case.expect) {
                if exp.mirrored_to.iter().any(|m| m.percent.is_some()) {
                    mirror_percentage(fx, check, req, exp).await?;
                }
            }
            Ok(())
        }
        other => Err(format!("unknown extra check {other:?}")),
    }
}

fn template<'a>(case: &'a Case, check: &ExtraCheck) -> Result<(&'a CaseRequest, &'a Expect), String> {
    let id = check.request_template_id.unwrap_or(0);
    let req = case
        .requests
        .iter()
        .find(|r| r.id == id)
        .ok_or_else(|| format!("{}: no request with id {id}", check.check))?;
    let exp = case
        .expect
        .iter()
        .find(|e| e.id == id)
        .ok_or_else(|| format!("{}: no expect with id {id}", check.check))?;
    Ok((req, exp))
}

/// Upstream's `extractBackendName`: a pod name without its two generated suffixes.
pub fn backend_of_pod(pod: &str) -> String {
    let parts: Vec<&str> = pod.split('-').collect();
    if parts.len() < 3 {
        return pod.to_owned();
    }
    parts[..parts.len() - 2].join("-")
}

/// Upstream's `AddRandomEntropy`: a random delay up to 1 s, a random `X-Jitter` header, or both.
async fn entropy() -> Vec<(String, String)> {
    let choice = util::random_below(3);
    if choice != 1 {
        tokio::time::sleep(Duration::from_millis(util::random_below(1000))).await;
    }
    if choice != 0 {
        vec![("X-Jitter".to_owned(), util::random_below(10_000).to_string())]
    } else {
        Vec::new()
    }
}

/// Checks observed backend counts against expected fractions (upstream's
/// `TestWeightedDistribution`).
pub fn evaluate_distribution(
    seen: &BTreeMap<String, u32>,
    total: u32,
    expected: &BTreeMap<String, f64>,
    tolerance: f64,
) -> Result<(), String> {
    let mut errors = Vec::new();
    let active = expected.values().filter(|w| **w > 0.0).count();
    if seen.len() != active {
        errors.push(format!(
            "expected {active} backends to receive traffic, got {} ({seen:?})",
            seen.len()
        ));
    }
    for (backend, want) in expected {
        let got = seen.get(backend).copied();
        if got.is_none() && *want != 0.0 {
            errors.push(format!("backend {backend:?} received no traffic"));
            continue;
        }
        let fraction = f64::from(got.unwrap_or(0)) / f64::from(total.max(1));
        if (fraction - want).abs() > tolerance {
            errors.push(format!(
                "backend {backend:?} got {fraction:.3} of the traffic, expected {want} ±{tolerance}"
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        errors.sort();
        Err(errors.join("; "))
    }
}

async fn weighted_distribution(
    fx: &Fixture,
    check: &ExtraCheck,
    req: &CaseRequest,
    exp: &Expect,
) -> Result<(), String> {
    let total = check.total_requests.unwrap_or(500);
    let concurrency = check.concurrency.unwrap_or(10).max(1) as usize;
    let tolerance = check.tolerance_abs_fraction.unwrap_or(0.05);
    let max_attempts = check.max_attempts.unwrap_or(10).max(1);
    let mut last = String::new();
    for attempt in 1..=max_attempts {
        let results: Vec<Result<String, String>> = futures::stream::iter(0..total)
            .map(|_| async {
                let jitter = entropy().await;
                let obs = exec::attempt(fx, req, exp, None, &jitter).await?;
                let backend = backend_of_pod(&obs.echoed.pod);
                if check.expected_fractions.contains_key(&backend) {
                    Ok(backend)
                } else {
                    Err(format!(
                        "request was handled by an unexpected pod {:?} (backend {backend:?})",
                        obs.echoed.pod
                    ))
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let mut seen: BTreeMap<String, u32> = BTreeMap::new();
        let mut error = None;
        for r in results {
            match r {
                Ok(backend) => *seen.entry(backend).or_default() += 1,
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        let outcome = match error {
            Some(e) => Err(format!("error while sending requests: {e}")),
            None => evaluate_distribution(&seen, total, &check.expected_fractions, tolerance),
        };
        match outcome {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("attempt {attempt}/{max_attempts}: {e}"),
        }
    }
    Err(format!("weighted distribution: {last}"))
}

async fn backend_header_matches(
    fx: &Fixture,
    check: &ExtraCheck,
    req: &CaseRequest,
    exp: &Expect,
) -> Result<(), String> {
    let repetitions = check.repetitions.unwrap_or(100);
    for i in 0..repetitions {
        let obs = exec::attempt(fx, req, exp, None, &[])
            .await
            .map_err(|e| format!("repetition {i}: {e}"))?;
        let values = obs.echoed.header("Backend").cloned().unwrap_or_default();
        if values.len() != 1 {
            return Err(format!(
                "repetition {i}: expected exactly one Backend header at the backend, got {values:?} (pod {:?})",
                obs.echoed.pod
            ));
        }
        if !obs.echoed.pod.starts_with(&values[0]) {
            return Err(format!(
                "repetition {i}: Backend header {:?} but served by pod {:?}",
                values[0], obs.echoed.pod
            ));
        }
    }
    Ok(())
}

/// Is `count` mirrored copies out of `total` consistent with `percent`%?
pub fn mirror_count_within(count: usize, total: u32, percent: f64, std_devs: f64) -> Result<(), String> {
    let n = f64::from(total);
    let p = (percent / 100.0).clamp(0.0, 1.0);
    let mean = n * p;
    let sd = (n * p * (1.0 - p)).sqrt();
    let (low, high) = (mean - std_devs * sd, mean + std_devs * sd);
    let c = count as f64;
    if c >= low && c <= high {
        Ok(())
    } else {
        Err(format!(
            "{count} of {total} requests mirrored, expected {mean:.1} ± {:.1} ({percent}%)",
            std_devs * sd
        ))
    }
}

async fn mirror_percentage(fx: &Fixture, check: &ExtraCheck, req: &CaseRequest, exp: &Expect) -> Result<(), String> {
    let total = check.total_requests.unwrap_or(500);
    let concurrency = check.concurrency.unwrap_or(10).max(1) as usize;
    let max_attempts = check.max_attempts.unwrap_or(5).max(1);
    let std_devs = check.tolerance_std_devs.unwrap_or(3.0);
    let (gw_ns, _) = split_ns_name(&req.gateway, "default");
    let mut last = String::new();
    for attempt in 1..=max_attempts {
        let id = util::random_uuid();
        let path = exec::with_query_param(req.path(), MIRROR_ID_PARAM, &id);
        let marker = exec::echo_log_marker(&path);
        let errors: Vec<String> = futures::stream::iter(0..total)
            .map(|_| async { exec::attempt(fx, req, exp, Some(&id), &[]).await.err() })
            .buffer_unordered(concurrency)
            .filter_map(|e| async move { e })
            .collect()
            .await;
        if let Some(e) = errors.first() {
            last = format!(
                "attempt {attempt}/{max_attempts}: {} of {total} requests failed, first: {e}",
                errors.len()
            );
            continue;
        }
        let mut failure = None;
        for m in exp.mirrored_to.iter().filter(|m| m.percent.is_some()) {
            let ns = m.namespace.as_deref().unwrap_or(gw_ns);
            let pods = fx.pods_of_service(ns, &m.name);
            if pods.is_empty() {
                return Err(format!("mirror target {ns}/{}: no echo pods behind it", m.name));
            }
            // Mirrored copies are asynchronous: wait until the count stops moving (≤ 10 s).
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut count = exec::count_log_lines(&pods, &marker);
            let mut stable_since = Instant::now();
            while Instant::now() < deadline && stable_since.elapsed() < Duration::from_secs(1) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let now = exec::count_log_lines(&pods, &marker);
                if now != count {
                    count = now;
                    stable_since = Instant::now();
                }
            }
            if let Err(e) = mirror_count_within(count, total, m.percent.unwrap_or(100.0), std_devs) {
                failure = Some(format!("mirror {ns}/{} for {}: {e}", m.name, req.path()));
                break;
            }
        }
        match failure {
            None => return Ok(()),
            Some(e) => last = format!("attempt {attempt}/{max_attempts}: {e}"),
        }
    }
    Err(format!("mirror percentage: {last}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_drop_two_suffixes() {
        assert_eq!(backend_of_pod("infra-backend-v1-7d9f8c6b5-x2k4q"), "infra-backend-v1");
        assert_eq!(backend_of_pod("a-b"), "a-b");
        assert_eq!(backend_of_pod(""), "");
    }

    #[test]
    fn distribution_rules() {
        let expected = BTreeMap::from([("v1".to_owned(), 0.7), ("v2".to_owned(), 0.3), ("v3".to_owned(), 0.0)]);
        let seen = BTreeMap::from([("v1".to_owned(), 352), ("v2".to_owned(), 148)]);
        assert_eq!(evaluate_distribution(&seen, 500, &expected, 0.05), Ok(()));
        let skewed = BTreeMap::from([("v1".to_owned(), 400), ("v2".to_owned(), 100)]);
        assert!(evaluate_distribution(&skewed, 500, &expected, 0.05).is_err());
        let missing = BTreeMap::from([("v1".to_owned(), 500)]);
        assert!(evaluate_distribution(&missing, 500, &expected, 0.05).is_err());
        let zero_seen = BTreeMap::from([("v1".to_owned(), 350), ("v2".to_owned(), 149), ("v3".to_owned(), 1)]);
        assert!(
            evaluate_distribution(&zero_seen, 500, &expected, 0.05).is_err(),
            "a zero-weight backend must not be seen"
        );
    }

    #[test]
    fn mirror_band() {
        // 500 × 20%: mean 100, sd ≈ 8.94, band ≈ [73.2, 126.8].
        assert!(mirror_count_within(100, 500, 20.0, 3.0).is_ok());
        assert!(mirror_count_within(74, 500, 20.0, 3.0).is_ok());
        assert!(mirror_count_within(72, 500, 20.0, 3.0).is_err());
        assert!(mirror_count_within(130, 500, 20.0, 3.0).is_err());
        assert!(mirror_count_within(500, 500, 100.0, 3.0).is_ok());
        assert!(mirror_count_within(499, 500, 100.0, 3.0).is_err());
    }
}
