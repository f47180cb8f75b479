//! The conformance suite driver: one case at a time, each in its own fixture; results as lines,
//! a summary, and `target/conformance/summary.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::case::{Case, cases_dir, load_cases};
use super::exec;
use super::extra;
use super::fixture::Fixture;
use super::status;
use super::util;

/// Status checks are retried until they pass or this much time has passed.
const STATUS_TIMEOUT: Duration = Duration::from_secs(30);
/// A safety net over a whole case; every wait inside has its own, shorter, bound.
const CASE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    pub name: String,
    pub result: &'static str,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub cases: Vec<CaseResult>,
}

/// Writes a line to the real stderr, bypassing libtest's output capture, so progress shows
/// while the suite runs.
pub fn say(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
}

/// Why a case cannot be driven by this runner, if it cannot.
pub fn skip_reason(case: &Case) -> Option<String> {
    if case.requests.iter().any(|r| r.is_grpc()) {
        return Some("gRPC requests: the runner has no gRPC client yet".to_owned());
    }
    None
}

/// Runs one case to its outcome.
pub async fn run_case(case: &Case) -> Outcome {
    if let Some(reason) = skip_reason(case) {
        return Outcome::Skip(reason);
    }
    match tokio::time::timeout(CASE_TIMEOUT, drive(case)).await {
        Ok(Ok(())) => Outcome::Pass,
        Ok(Err(reason)) => Outcome::Fail(reason),
        Err(_) => Outcome::Fail(format!("case did not finish within {CASE_TIMEOUT:?}")),
    }
}

async fn drive(case: &Case) -> Result<(), String> {
    let expects: BTreeMap<u64, _> = case.expect.iter().map(|e| (e.id, e)).collect();
    for r in &case.requests {
        if !expects.contains_key(&r.id) {
            return Err(format!("case data: request {} has no expect", r.id));
        }
    }

    let mut fx = Fixture::prepare(case).await.map_err(|e| format!("setup: {e}"))?;
    fx.start_tidegate().await?;

    check_status(&fx, case).await?;

    let all_steps: Vec<_> = case.steps.iter().chain(&case.later_steps).collect();
    let mut step_numbers: BTreeSet<u32> = case.requests.iter().map(|r| r.step.unwrap_or(0)).collect();
    step_numbers.extend(all_steps.iter().map(|s| s.step));
    for step in step_numbers {
        for s in all_steps.iter().filter(|s| s.step == step) {
            // Step 0's "apply_manifests" is the initial state, already written.
            if step == 0 && s.action == "apply_manifests" && s.manifests.is_empty() {
                continue;
            }
            fx.apply_step(s).map_err(|e| format!("step {step}: {e}"))?;
        }
        for req in case.requests.iter().filter(|r| r.step.unwrap_or(0) == step) {
            let exp = expects[&req.id];
            exec::run_request(&fx, req, exp).await.map_err(|e| {
                let step_note = if step > 0 {
                    format!(" (step {step})")
                } else {
                    String::new()
                };
                format!("{}{step_note}: {e}", req.describe())
            })?;
        }
    }

    for check in &case.extra_checks {
        extra::run(&fx, case, check)
            .await
            .map_err(|e| format!("extra check {}: {e}", check.check))?;
    }
    Ok(())
}

/// All status checks must pass together, retried until `STATUS_TIMEOUT`.
async fn check_status(fx: &Fixture, case: &Case) -> Result<(), String> {
    if case.status_checks.is_empty() {
        return Ok(());
    }
    let deadline = Instant::now() + STATUS_TIMEOUT;
    let spec = |gw: &str| fx.spec_listener_names(gw);
    loop {
        let outcome = match fx.fetch_status().await {
            Ok(doc) => case.status_checks.iter().try_for_each(|c| {
                status::evaluate(c, &doc, &spec).map_err(|e| format!("status check {}: {e}", c.check))
            }),
            Err(e) => Err(format!("status: {e}")),
        };
        match outcome {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("{e} (still failing after {STATUS_TIMEOUT:?})"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Names listed in the expected-pass file (one per line, `#` comments).
pub fn parse_expected_pass(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

pub fn expected_pass_file() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/conformance-expected-pass.txt"
    ))
}

/// The suite: selected cases, results, summary file. Returns the results and the names of
/// expected-to-pass cases that did not pass.
pub async fn run_suite() -> Result<(Vec<CaseResult>, Vec<String>), String> {
    let dir = cases_dir();
    let cases = load_cases(&dir)?;
    let filter: Option<BTreeSet<String>> = std::env::var("TIDEGATE_CONFORMANCE_CASES").ok().map(|v| {
        v.split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    });
    if let Some(filter) = &filter {
        // A misspelled name would otherwise run nothing and pass.
        let unknown: Vec<&str> = filter
            .iter()
            .filter(|name| !cases.iter().any(|c| &&c.name == name))
            .map(String::as_str)
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "TIDEGATE_CONFORMANCE_CASES names unknown case(s) {} (case names are the file names in {} without .json)",
                unknown.join(", "),
                dir.display()
            ));
        }
        if filter.is_empty() {
            return Err("TIDEGATE_CONFORMANCE_CASES is set but names no case".to_string());
        }
    }
    let selected: Vec<&Case> = cases
        .iter()
        .filter(|c| filter.as_ref().is_none_or(|f| f.contains(&c.name)))
        .collect();
    say(&format!(
        "conformance: {} case(s) from {}",
        selected.len(),
        dir.display()
    ));

    let mut results = Vec::new();
    for case in selected {
        let outcome = run_case(case).await;
        let (result, reason, line) = match &outcome {
            Outcome::Pass => ("pass", String::new(), format!("PASS {}", case.name)),
            Outcome::Fail(r) => ("fail", r.clone(), format!("FAIL {}: {r}", case.name)),
            Outcome::Skip(r) => ("skip", r.clone(), format!("SKIP {}: {r}", case.name)),
        };
        say(&line.replace('\n', " | "));
        results.push(CaseResult {
            name: case.name.clone(),
            result,
            reason,
        });
    }
    let count = |r: &str| results.iter().filter(|c| c.result == r).count();
    say(&format!(
        "{} passed, {} failed, {} skipped",
        count("pass"),
        count("fail"),
        count("skip")
    ));
    write_summary(&results)?;

    let expected_text = std::fs::read_to_string(expected_pass_file())
        .map_err(|e| format!("cannot read {}: {e}", expected_pass_file().display()))?;
    let default_dir = std::env::var_os("TIDEGATE_CONFORMANCE_DIR").is_none();
    let mut missing = Vec::new();
    for name in parse_expected_pass(&expected_text) {
        match results.iter().find(|r| r.name == name) {
            Some(r) if r.result == "pass" => {}
            Some(r) => missing.push(format!("{name} ({}: {})", r.result, r.reason)),
            // Not run: filtered out, or not in an overriding directory. With the shipped
            // suite and no filter, a listed name must exist.
            None if filter.is_none() && default_dir => missing.push(format!("{name} (no such case)")),
            None => {}
        }
    }
    Ok((results, missing))
}

fn write_summary(results: &[CaseResult]) -> Result<(), String> {
    let dir = util::target_dir().join("conformance");
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let path = dir.join("summary.json");
    let json = serde_json::to_string_pretty(&Summary {
        cases: results.to_vec(),
    })
    .map_err(|e| e.to_string())?;
    std::fs::write(&path, json + "\n").map_err(|e| format!("write {}: {e}", path.display()))?;
    say(&format!("summary: {}", path.display()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_pass_file_parses() {
        let names = parse_expected_pass("# header\nA\n  B  # why\n\n#C\n");
        assert_eq!(names, vec!["A".to_owned(), "B".to_owned()]);
        let shipped = std::fs::read_to_string(expected_pass_file()).expect("expected-pass file exists");
        assert!(!parse_expected_pass(&shipped).is_empty());
    }
}
