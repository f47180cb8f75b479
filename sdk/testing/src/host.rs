//! `Filter` (a module to test) and `TestHost` (it, running in tidegate's host).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use crate::connection::Connection;
use bytes::Bytes;
use tidegate::wasm::{
    BodyBuffer, FilterAction, FilterInstance, FilterModule, HeaderList, HttpExchange, SandboxLimits, WasmRuntime,
};

use crate::message::{Body, Config, Flow, Outcome, Request, Response};
use crate::{Error, cargo};

/// Instance slots of the harness' engine. One [`TestHost`] holds one; a test binary runs a few
/// tests at a time, and each slot reserves address space (not memory), so a few dozen suffice.
const MAX_INSTANCES: u32 = 64;

/// A filter module to test: from a file ([`Filter::load`]), from bytes ([`Filter::from_bytes`]),
/// or built from source first ([`Filter::build`]).
#[derive(Clone, Debug)]
pub struct Filter {
    name: String,
    source: Source,
    limits: SandboxLimits,
}

#[derive(Clone, Debug)]
enum Source {
    Path(PathBuf),
    Bytes(Arc<[u8]>),
}

// === impl Filter ===

impl Filter {
    /// Builds the filter crate in `manifest_dir` with `cargo build --lib --release --target
    /// wasm32-wasip1` and returns the path of its `.wasm`.
    ///
    /// The build goes to a target directory of its own (`$CARGO_TARGET_DIR/tidegate-testing`,
    /// else `<crate>/target/tidegate-testing`; `TIDEGATE_TESTING_TARGET_DIR` overrides), since
    /// the `cargo test` running the caller may hold the lock on the usual one. Within one test
    /// process a crate is built once; concurrent callers wait for that build.
    ///
    /// # Errors
    /// [`Error::TargetMissing`] (with the `rustup target add wasm32-wasip1` to run),
    /// [`Error::BuildFailed`] with the compiler's output, [`Error::NoWasm`] when the crate is not
    /// a `cdylib`, [`Error::NoManifest`], [`Error::CargoMissing`].
    ///
    /// ```no_run
    /// use tidegate_testing::Filter;
    /// let wasm = Filter::build(env!("CARGO_MANIFEST_DIR")).expect("the filter builds");
    /// let mut host = Filter::load(wasm).config(r#"{"header": "x-hello", "value": "world"}"#);
    /// # let _ = &mut host;
    /// ```
    pub fn build(manifest_dir: impl AsRef<Path>) -> Result<PathBuf, Error> {
        cargo::build(manifest_dir.as_ref(), None)
    }

    /// [`build`](Self::build) into `target_dir`, for example one shared by several filter
    /// crates so that their common dependencies compile once.
    pub fn build_in(manifest_dir: impl AsRef<Path>, target_dir: impl AsRef<Path>) -> Result<PathBuf, Error> {
        cargo::build(manifest_dir.as_ref(), Some(target_dir.as_ref()))
    }

    /// The module at `path` (a `.wasm`). It is read and compiled when configured.
    pub fn load(path: impl AsRef<Path>) -> Filter {
        let path = path.as_ref().to_path_buf();
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "filter".to_string());
        Filter {
            name,
            source: Source::Path(path),
            limits: SandboxLimits::default(),
        }
    }

    /// The module `wasm`, named `name` (its name in logs and its VM id).
    ///
    /// ```no_run
    /// use tidegate_testing::Filter;
    /// let router = Filter::from_bytes("router", tidegate::filters::ROUTER_WASM);
    /// # let _ = router;
    /// ```
    pub fn from_bytes(name: &str, wasm: impl Into<Vec<u8>>) -> Filter {
        Filter {
            name: name.to_string(),
            source: Source::Bytes(Arc::from(wasm.into())),
            limits: SandboxLimits::default(),
        }
    }

    /// Renames the filter (default: the file name without `.wasm`).
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// The sandbox limits (default: tidegate's, 64 MiB and 100 ms per call), as a WasmFilter's
    /// `spec.limits` would set them.
    pub fn limits(mut self, limits: SandboxLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Starts the filter with `config` (see [`Config`]) and returns the host to send requests
    /// through.
    ///
    /// # Panics
    /// When the module does not load or the filter rejects its configuration, with the host's
    /// error; use [`try_config`](Self::try_config) to test that.
    #[track_caller]
    pub fn config(self, config: impl Into<Config>) -> TestHost {
        match self.try_config(config) {
            Ok(host) => host,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`config`](Self::config) that returns the error instead of panicking: assert that a bad
    /// configuration is refused with `matches!(e, Error::Filter(WasmError::ConfigureRejected { .. }))`.
    pub fn try_config(self, config: impl Into<Config>) -> Result<TestHost, Error> {
        crate::init_logging();
        let module = self.module()?;
        let config = config.into().0;
        let instance = FilterInstance::start(&module, &config, &self.limits)?;
        Ok(TestHost {
            module,
            config,
            limits: self.limits,
            instance,
            open: None,
        })
    }

    fn module(&self) -> Result<FilterModule, Error> {
        let bytes: Arc<[u8]> = match &self.source {
            Source::Bytes(bytes) => bytes.clone(),
            Source::Path(path) => Arc::from(std::fs::read(path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?),
        };
        static MODULES: Mutex<Option<HashMap<ModuleKey, FilterModule>>> = Mutex::new(None);
        let mut hasher = DefaultHasher::new();
        bytes.hash(&mut hasher);
        let key = (self.name.clone(), hasher.finish(), bytes.len());
        // Held while compiling: parallel tests wait for one compilation of a module.
        let mut modules = MODULES.lock().unwrap_or_else(PoisonError::into_inner);
        let modules = modules.get_or_insert_with(HashMap::new);
        if let Some(module) = modules.get(&key) {
            return Ok(module.clone());
        }
        let module = runtime()?.load(&self.name, &bytes)?;
        modules.insert(key, module.clone());
        Ok(module)
    }
}

/// A compiled module's identity in this process: its name, and a hash and the length of its bytes.
type ModuleKey = (String, u64, usize);

fn runtime() -> Result<&'static WasmRuntime, Error> {
    static RUNTIME: OnceLock<WasmRuntime> = OnceLock::new();
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let runtime = WasmRuntime::with_max_instances(MAX_INSTANCES)?;
    Ok(RUNTIME.get_or_init(|| runtime))
}

/// One filter VM in tidegate's real host, configured, taking requests one at a time.
///
/// [`request`](Self::request) runs `proxy_on_request_headers` on a new HTTP context, as the
/// proxy does for each request; if the filter let the request through, the context stays open
/// for [`response`](Self::response), which runs `proxy_on_response_headers` and ends it. The
/// next `request` ends a context left open. A local reply ends the request (the filter's
/// response callback does not run, as in the proxy).
///
/// When a callback fails (trap, deadline, memory cap), `request`/`response` panic with the
/// host's error, and [`try_request`](Self::try_request)/[`try_response`](Self::try_response)
/// return it; either way the VM is replaced by a fresh one with the same configuration, as the
/// proxy replaces it, so the next request runs normally.
pub struct TestHost {
    module: FilterModule,
    config: Vec<u8>,
    limits: SandboxLimits,
    instance: FilterInstance,
    open: Option<(u32, HttpExchange)>,
}

// === impl TestHost ===

impl TestHost {
    /// Runs the request phase for `request` and returns what the filter did.
    ///
    /// ```no_run
    /// use tidegate_testing::{Filter, Request};
    /// # let wasm = Filter::build(env!("CARGO_MANIFEST_DIR")).unwrap();
    /// let mut host = Filter::load(wasm).config(r#"{"header": "x-hello", "value": "world", "requireHeader": "x-user"}"#);
    /// let denied = host.request(Request::get("/"));
    /// assert!(!denied.forwarded);
    /// assert_eq!(denied.status(), Some(403));
    /// assert!(host.request(Request::get("/").header("x-user", "ann")).forwarded);
    /// ```
    ///
    /// # Panics
    /// When the filter fails; see [`try_request`](Self::try_request).
    #[track_caller]
    pub fn request(&mut self, request: Request) -> Outcome {
        match self.try_request(request) {
            Ok(outcome) => outcome,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`request`](Self::request) that returns a failure of the filter as [`Error::Filter`].
    pub fn try_request(&mut self, request: Request) -> Result<Outcome, Error> {
        self.finish_open();
        let (mut ex, body) = request.into_parts();
        let ctx = self.guard(|instance| instance.create_http_context())?;
        let flow = match self.run(ctx, &mut ex, Direction::Request, body) {
            Ok(flow) => flow,
            Err(e) => {
                self.instance.finish_http_context(ctx, &mut ex);
                return Err(e);
            }
        };
        let outcome = Outcome::new(flow, &ex, &ex.request_trailers);
        if outcome.forwarded {
            self.open = Some((ctx, ex));
        } else {
            self.instance.finish_http_context(ctx, &mut ex);
        }
        Ok(outcome)
    }

    /// Runs the response phase of the last request, forwarded by the filter, with `response` as
    /// the upstream's answer, ends that request, and returns what the filter did.
    ///
    /// ```no_run
    /// use tidegate_testing::{Filter, Request, Response};
    /// # let wasm = Filter::build(env!("CARGO_MANIFEST_DIR")).unwrap();
    /// let mut host = Filter::load(wasm).config(r#"{"header": "x-hello", "value": "world"}"#);
    /// host.request(Request::get("/"));
    /// let response = host.response(Response::ok().body("hello\n"));
    /// assert_eq!(response.response_header("x-hello"), Some("world"));
    /// assert_eq!(response.body, b"hello\n");
    /// ```
    ///
    /// # Panics
    /// When the filter fails, or when no forwarded request is waiting for its response.
    #[track_caller]
    pub fn response(&mut self, response: Response) -> Outcome {
        match self.try_response(response) {
            Ok(outcome) => outcome,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`response`](Self::response) that returns errors instead of panicking.
    pub fn try_response(&mut self, response: Response) -> Result<Outcome, Error> {
        let Some((ctx, mut ex)) = self.open.take() else {
            return Err(Error::Usage(
                "response() needs a request the filter forwarded: call request() first (a request \
                 the filter answered locally has no response phase)"
                    .to_string(),
            ));
        };
        let (headers, body) = response.into_parts();
        ex.response_headers = headers;
        let flow = self.run(ctx, &mut ex, Direction::Response, body);
        self.instance.finish_http_context(ctx, &mut ex);
        Ok(Outcome::new(flow?, &ex, &ex.response_trailers))
    }

    /// The filter VM, e.g. to read [`memory_size`](FilterInstance::memory_size).
    pub fn instance(&self) -> &FilterInstance {
        &self.instance
    }

    pub(crate) fn instance_mut(&mut self) -> &mut FilterInstance {
        &mut self.instance
    }

    /// Opens an L4 connection through the filter's stream context (`proxy_on_new_connection`);
    /// feed it bytes from either side and close it.
    ///
    /// ```no_run
    /// use tidegate_testing::Filter;
    /// # let wasm = Filter::build(env!("CARGO_MANIFEST_DIR")).unwrap();
    /// let mut host = Filter::load(wasm).config("");
    /// let mut connection = host.connection().unwrap();
    /// let sent = connection.downstream(b"PING\r\n", false).unwrap();
    /// assert_eq!(sent.passed, b"PING\r\n");
    /// connection.close().unwrap();
    /// ```
    pub fn connection(&mut self) -> Result<Connection<'_>, Error> {
        self.finish_open();
        Connection::open(self)
    }

    /// Runs `call` on the instance; after a failure, replaces the broken VM as the proxy would.
    pub(crate) fn guard<T>(
        &mut self,
        call: impl FnOnce(&mut FilterInstance) -> Result<T, tidegate::wasm::WasmError>,
    ) -> Result<T, Error> {
        let result = call(&mut self.instance);
        if self.instance.is_broken() {
            self.open = None;
            self.instance = FilterInstance::start(&self.module, &self.config, &self.limits)?;
        }
        Ok(result?)
    }

    /// Runs one direction through the filter as a stage of the proxy's chain does: headers,
    /// then each body frame (buffered while the filter pauses, the callback seeing everything
    /// buffered), then trailers; a pause at the end of the stream is released.
    fn run(&mut self, ctx: u32, ex: &mut HttpExchange, direction: Direction, body: Body) -> Result<Flow, Error> {
        let headers_end = body.headers_end();
        let action = self.guard(|instance| match direction {
            Direction::Request => instance.on_request_headers(ctx, ex, headers_end),
            Direction::Response => instance.on_response_headers(ctx, ex, headers_end),
        })?;
        let mut flow = Flow {
            action,
            headers_out: false,
            body_out: Vec::new(),
            reset: false,
        };
        if self.stopped(ex, &mut flow) {
            return Ok(flow);
        }
        let mut held = action == FilterAction::Pause && !headers_end;
        let mut buffer = BodyBuffer::default();
        let frames = body.chunks.len();
        for (index, chunk) in body.chunks.into_iter().enumerate() {
            let end = body.ends && body.trailers.is_none() && index + 1 == frames;
            buffer.append(Bytes::from(chunk));
            *body_of(ex, direction) = std::mem::take(&mut buffer);
            let step = self.guard(|instance| match direction {
                Direction::Request => instance.on_request_body(ctx, ex, end),
                Direction::Response => instance.on_response_body(ctx, ex, end),
            });
            buffer = std::mem::take(body_of(ex, direction));
            if self.stopped(ex, &mut flow) {
                return Ok(flow);
            }
            if step? == FilterAction::Pause && !end {
                continue;
            }
            held = false;
            flow.body_out.extend_from_slice(&buffer.take());
        }
        if let Some(trailers) = body.trailers {
            *trailers_of(ex, direction) = Body::trailer_list(trailers);
            *body_of(ex, direction) = std::mem::take(&mut buffer);
            let step = self.guard(|instance| match direction {
                Direction::Request => instance.on_request_trailers(ctx, ex),
                Direction::Response => instance.on_response_trailers(ctx, ex),
            });
            buffer = std::mem::take(body_of(ex, direction));
            if self.stopped(ex, &mut flow) {
                return Ok(flow);
            }
            step?;
            held = false;
            flow.body_out.extend_from_slice(&buffer.take());
        }
        flow.headers_out = !held;
        Ok(flow)
    }

    /// Whether the filter answered locally or reset the stream in the last callback.
    fn stopped(&mut self, ex: &HttpExchange, flow: &mut Flow) -> bool {
        let actions = self.instance.take_stream_actions();
        flow.reset |= actions.reset_request || actions.reset_response;
        ex.local_reply.is_some() || flow.reset
    }

    fn finish_open(&mut self) {
        if let Some((ctx, mut ex)) = self.open.take() {
            self.instance.finish_http_context(ctx, &mut ex);
        }
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.finish_open();
    }
}

impl std::fmt::Debug for TestHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHost")
            .field("filter", &self.module.name())
            .field("open_request", &self.open.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Direction {
    Request,
    Response,
}

fn body_of(ex: &mut HttpExchange, direction: Direction) -> &mut BodyBuffer {
    match direction {
        Direction::Request => &mut ex.request_body,
        Direction::Response => &mut ex.response_body,
    }
}

fn trailers_of(ex: &mut HttpExchange, direction: Direction) -> &mut HeaderList {
    match direction {
        Direction::Request => &mut ex.request_trailers,
        Direction::Response => &mut ex.response_trailers,
    }
}
