//! Fetching remote modules (`spec.module.http`, `spec.module.oci`) in the background.
//!
//! Fetches run on their own thread with a small current-thread tokio runtime, started on the
//! first remote module. Not on the control plane's runtime: the registry is also resolved
//! outside of it (`tidegate validate`, tests), and a fetch's CPU work (TLS, hashing up to
//! 64 MiB) then never delays the control loop, the admin server or status; not on a worker,
//! so traffic never waits for a download. The control loop only looks at each fetch's state
//! (never waits for one) and learns through [`Fetcher::changed`] that one finished.
//!
//! Each (source, pinned sha256) is fetched once: a URL's or a tag's content is taken to be
//! immutable while the WasmFilter names it, as Istio's module cache does. To roll out a new
//! module, change the URL or tag, or pin its `sha256` (a new pin is a new fetch). A fetch that
//! fails is retried with backoff (1 s doubling to 60 s) until it succeeds or the source is no
//! longer wanted; each failure is reported with its precise cause.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};

/// A fetch attempt's time limit (connect, redirects, registry token and download together).
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(120);
/// The first retry delay; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Where a remote module comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    Http(String),
    Oci(String),
}

impl std::fmt::Display for Source {
    /// The WasmFilter field and its value, as messages name them: `spec.module.http URL`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Http(url) => write!(f, "spec.module.http {url}"),
            Source::Oci(reference) => write!(f, "spec.module.oci {reference}"),
        }
    }
}

impl Source {
    fn location(&self) -> &str {
        match self {
            Source::Http(s) | Source::Oci(s) => s,
        }
    }
}

/// One fetch: a source and the digest its WasmFilter pins, if any.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FetchKey {
    pub source: Source,
    pub sha256: Option<String>,
}

/// What the control loop sees of a fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    Ready(Bytes),
    /// Not there (yet): the message says why, for the WasmFilter's status.
    Pending(String),
}

#[derive(Debug, Default)]
struct JobState {
    module: Option<Bytes>,
    attempts: u32,
    last_error: Option<String>,
    next_retry: Option<Duration>,
}

struct Job {
    state: Arc<Mutex<JobState>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The background fetches of the current WasmFilters.
#[derive(Default)]
pub struct Fetcher {
    changed: Arc<AtomicBool>,
    runtime: Option<Result<FetchRuntime, String>>,
    jobs: HashMap<FetchKey, Job>,
    /// The last module fetched from each source, kept while a WasmFilter names the source.
    last_good: HashMap<Source, Bytes>,
}

/// The fetch thread's runtime; dropping it stops the thread and every fetch on it.
struct FetchRuntime {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Fetcher {
    /// Whether a fetch finished (or failed an attempt) since [`Self::clear_changed`].
    pub fn changed(&self) -> bool {
        self.changed.load(Ordering::Acquire)
    }

    pub fn clear_changed(&self) {
        self.changed.store(false, Ordering::Release);
    }

    /// The state of the fetch of `key`, starting it if it is new.
    pub fn want(&mut self, key: &FetchKey) -> Fetched {
        if !self.jobs.contains_key(key) {
            let job = self.start(key);
            self.jobs.insert(key.clone(), job);
        }
        let Some(job) = self.jobs.get(key) else {
            return Fetched::Pending(format!("{}: not loaded yet", key.source));
        };
        let state = job.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(module) = &state.module {
            self.last_good.insert(key.source.clone(), module.clone());
            return Fetched::Ready(module.clone());
        }
        Fetched::Pending(match &state.last_error {
            None => format!("{}: not loaded yet: fetching {}", key.source, key.source.location()),
            Some(error) => format!(
                "{}: {error} (attempt {} failed; trying again in {}s)",
                key.source,
                state.attempts,
                state.next_retry.unwrap_or_default().as_secs()
            ),
        })
    }

    /// The last module fetched from `source`, if any.
    pub fn last_good(&self, source: &Source) -> Option<Bytes> {
        self.last_good.get(source).cloned()
    }

    /// Stops the fetches no WasmFilter wants any more and forgets their modules.
    pub fn retain(&mut self, wanted: &HashSet<FetchKey>) {
        self.jobs.retain(|key, _| wanted.contains(key));
        self.last_good
            .retain(|source, _| wanted.iter().any(|key| key.source == *source));
    }

    fn start(&mut self, key: &FetchKey) -> Job {
        let state = Arc::new(Mutex::new(JobState::default()));
        let handle = match self.runtime.get_or_insert_with(FetchRuntime::start) {
            Ok(runtime) => runtime.handle.clone(),
            Err(e) => {
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                s.last_error = Some(format!("cannot start the module fetcher: {e}"));
                drop(s);
                return Job { state, task: None };
            }
        };
        tracing::info!(source = %key.source, "fetching filter module");
        let task = handle.spawn(fetch_until_done(key.clone(), state.clone(), self.changed.clone()));
        Job {
            state,
            task: Some(task),
        }
    }
}

impl FetchRuntime {
    fn start() -> Result<Self, String> {
        let (handle_tx, handle_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("module-fetch".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => {
                        let _ = handle_tx.send(Ok(runtime.handle().clone()));
                        // Runs the fetches until the registry is dropped.
                        runtime.block_on(async {
                            let _ = stopped.await;
                        });
                    }
                    Err(e) => {
                        let _ = handle_tx.send(Err(e.to_string()));
                    }
                }
            })
            .map_err(|e| format!("cannot start a thread: {e}"))?;
        let handle = handle_rx
            .recv()
            .map_err(|_| "the fetch thread ended at once".to_string())??;
        Ok(Self { handle, _stop: stop })
    }
}

/// Fetches until it succeeds, with backoff between failed attempts.
async fn fetch_until_done(key: FetchKey, state: Arc<Mutex<JobState>>, changed: Arc<AtomicBool>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let result = match tokio::time::timeout(ATTEMPT_TIMEOUT, fetch_once(&key.source)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "timed out after {}s; check that the server is reachable and answers",
                ATTEMPT_TIMEOUT.as_secs()
            )),
        };
        let result = result.and_then(|bytes| check_pin(&key, bytes));
        let done = {
            let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
            s.attempts += 1;
            match result {
                Ok(bytes) => {
                    tracing::info!(source = %key.source, bytes = bytes.len(), attempts = s.attempts, "fetched filter module");
                    s.module = Some(bytes);
                    s.last_error = None;
                    true
                }
                Err(error) => {
                    tracing::warn!(source = %key.source, attempt = s.attempts, retry_in = ?backoff, %error, "cannot fetch filter module");
                    s.last_error = Some(error);
                    s.next_retry = Some(backoff);
                    false
                }
            }
        };
        changed.store(true, Ordering::Release);
        if done {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn fetch_once(source: &Source) -> Result<Bytes, String> {
    match source {
        Source::Http(url) => {
            let uri = super::http::parse_url(url)?;
            let response = super::http::get_following(&uri, &[]).await?;
            if !response.status.is_success() {
                return Err(format!(
                    "{}; check the URL, or publish the module there",
                    response.status_text()
                ));
            }
            Ok(response.body)
        }
        Source::Oci(reference) => super::oci::pull(reference).await,
    }
}

/// A module whose digest is not the pinned one is a failed fetch (the server may be fixed).
fn check_pin(key: &FetchKey, bytes: Bytes) -> Result<Bytes, String> {
    let Some(expected) = &key.sha256 else {
        return Ok(bytes);
    };
    let actual = super::hex(&Sha256::digest(&bytes));
    if actual == *expected {
        Ok(bytes)
    } else {
        Err(format!(
            "the module fetched has sha256 {actual} but spec.module.sha256 is {expected}; update the digest or the module"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_digests_are_checked_and_sources_named_by_field() {
        let key = |sha256: Option<&str>| FetchKey {
            source: Source::Http("http://a.test/f.wasm".into()),
            sha256: sha256.map(str::to_string),
        };
        let bytes = Bytes::from_static(b"module");
        let sha = super::super::hex(&Sha256::digest(b"module"));
        assert!(check_pin(&key(None), bytes.clone()).is_ok());
        assert!(check_pin(&key(Some(&sha)), bytes.clone()).is_ok());
        let error = check_pin(&key(Some(&"0".repeat(64))), bytes).unwrap_err();
        assert!(
            error.contains(&format!("has sha256 {sha} but spec.module.sha256 is 000")),
            "{error}"
        );
        assert_eq!(key(None).source.to_string(), "spec.module.http http://a.test/f.wasm");
        assert_eq!(
            Source::Oci("r.test/f:v1".into()).to_string(),
            "spec.module.oci r.test/f:v1"
        );
    }

    #[test]
    fn a_fetch_is_pending_until_it_completes_and_stops_when_unwanted() {
        let mut fetcher = Fetcher::default();
        // A server that accepts (the kernel completes the handshake) but never answers: the
        // fetch stays in flight, so the first answer is deterministic.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/f.wasm", silent.local_addr().expect("address"));
        let hanging = FetchKey {
            source: Source::Http(url.clone()),
            sha256: None,
        };
        assert_eq!(
            fetcher.want(&hanging),
            Fetched::Pending(format!("spec.module.http {url}: not loaded yet: fetching {url}"))
        );
        // Nothing listens on port 9 of the loopback address: the fetch fails and is retried
        // (the refusal may come back before `want` does, so only the failure is waited for).
        let key = FetchKey {
            source: Source::Http("http://127.0.0.1:9/f.wasm".into()),
            sha256: None,
        };
        assert!(matches!(fetcher.want(&key), Fetched::Pending(_)));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !fetcher.changed() {
            assert!(std::time::Instant::now() < deadline, "the failed attempt is reported");
            std::thread::sleep(Duration::from_millis(10));
        }
        fetcher.clear_changed();
        let Fetched::Pending(message) = fetcher.want(&key) else {
            panic!("no module")
        };
        assert!(
            message.contains("cannot connect to 127.0.0.1:9")
                && message.contains("attempt 1 failed; trying again in 1s"),
            "{message}"
        );
        fetcher.retain(&HashSet::new());
        assert!(fetcher.jobs.is_empty());
    }
}
