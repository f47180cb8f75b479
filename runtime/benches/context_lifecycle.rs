//! One HTTP context lifecycle in the WASM host, timed on warm instances: the `noop` user filter,
//! and the standard router + balancer (the chain of tidegate with no user filter) for
//! comparison. Its peer, measured in the same run: tidegate itself under wrk, with 0 and with 5
//! noop filters, whose CPU time per request puts the lifecycle in proportion. See
//! benches/README.md.
//!
//! The two alternate, round by round, so both see the same state of the machine: each round
//! times every variant (`BENCH_MICRO_PER_ROUND` (2) × `BENCH_ROUND_MS` (200) ms each, after a
//! 300 ms calibration at start), then runs wrk against tidegate with 0 and with 5 filters.
//!
//! Settings (environment): `BENCH_ROUNDS` (8), `BENCH_MICRO_PER_ROUND`, `BENCH_ROUND_MS`, and
//! for the end-to-end peer (`BENCH_E2E=0` skips it) `BENCH_SECONDS` (3), `BENCH_WARMUP_SECONDS`
//! (1), `BENCH_CONNECTIONS` (4).

mod common;

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Load, Tidegate, WorkDir, median};
use tidegate::config::dir::DirSource;
use tidegate::translate::{TranslateOptions, translate};
use tidegate::wasm::{BodyBuffer, FilterAction, FilterInstance, HeaderList, HttpExchange, SandboxLimits, WasmRuntime};

/// The end-to-end peer compares tidegate with no user filter and with this many noop filters.
const E2E_FILTERS: usize = 5;

/// About as large as the echo backend's JSON answer to wrk's request through the Gateway.
const RESPONSE_BODY_BYTES: usize = 300;

/// One chain of filter instances, driven as the proxy drives a GET request: a context per
/// filter, the request headers in chain order (the request has no body), the response headers
/// and then `frames` response body frames in reverse order, and the end of each context.
struct Variant {
    name: &'static str,
    chain: Vec<FilterInstance>,
    frames: usize,
    ex: HttpExchange,
    contexts: Vec<u32>,
    /// ns per lifecycle, one per timed round.
    rounds: Vec<f64>,
    iterations: u64,
}

impl Variant {
    fn new(name: &'static str, chain: Vec<FilterInstance>, frames: usize, ex: &HttpExchange) -> Self {
        Self {
            name,
            chain,
            frames,
            ex: ex.clone(),
            contexts: Vec::new(),
            rounds: Vec::new(),
            iterations: 1,
        }
    }

    fn lifecycle(&mut self, body: &Bytes) {
        let frames = self.frames;
        let Self {
            chain, ex, contexts, ..
        } = self;
        contexts.clear();
        for filter in chain.iter_mut() {
            contexts.push(filter.create_http_context().expect("create_http_context"));
        }
        for (filter, &ctx) in chain.iter_mut().zip(contexts.iter()) {
            let action = filter.on_request_headers(ctx, ex, true).expect("on_request_headers");
            assert_eq!(action, FilterAction::Continue, "{}", filter.name());
        }
        for (filter, &ctx) in chain.iter_mut().zip(contexts.iter()).rev() {
            let action = filter
                .on_response_headers(ctx, ex, frames == 0)
                .expect("on_response_headers");
            assert_eq!(action, FilterAction::Continue, "{}", filter.name());
        }
        for frame in 0..frames {
            ex.response_body = BodyBuffer::new(body.clone());
            let last = frame + 1 == frames;
            for (filter, &ctx) in chain.iter_mut().zip(contexts.iter()).rev() {
                let action = filter.on_response_body(ctx, ex, last).expect("on_response_body");
                assert_eq!(action, FilterAction::Continue, "{}", filter.name());
            }
        }
        for (filter, &ctx) in chain.iter_mut().zip(contexts.iter()) {
            filter.finish_http_context(ctx, ex);
        }
        for filter in chain.iter() {
            assert!(!filter.is_broken(), "{} broke", filter.name());
        }
        black_box(&self.ex);
    }

    /// Runs lifecycles for `duration` and sets the iterations of a timed round from the rate.
    fn calibrate(&mut self, body: &Bytes, warmup: Duration, round: Duration) {
        let began = Instant::now();
        let mut n = 0u64;
        while began.elapsed() < warmup {
            self.lifecycle(body);
            n += 1;
        }
        let per = began.elapsed().as_secs_f64() / n as f64;
        self.iterations = ((round.as_secs_f64() / per) as u64).max(100);
    }

    fn round(&mut self, body: &Bytes) {
        let began = Instant::now();
        for _ in 0..self.iterations {
            self.lifecycle(body);
        }
        self.rounds
            .push(began.elapsed().as_nanos() as f64 / self.iterations as f64);
    }

    fn median_ns(&self) -> f64 {
        median(&self.rounds)
    }
}

fn main() {
    pin_to_proxy_cpu();
    let rounds = common::env_u64("BENCH_ROUNDS", 8).max(1) as usize;
    let micro_per_round = common::env_u64("BENCH_MICRO_PER_ROUND", 2).max(1);
    let round_time = Duration::from_millis(common::env_u64("BENCH_ROUND_MS", 200));
    let load = Load::from_env(3);
    let e2e = common::env_u64("BENCH_E2E", 1) != 0;
    let work = WorkDir::new("lifecycle");
    println!("machine: {}", common::machine());
    println!(
        "{rounds} rounds, each: {micro_per_round} × ~{} ms of lifecycles per variant (variants interleaved, on CPU {}){}",
        round_time.as_millis(),
        common::PROXY_CPU,
        if e2e {
            format!(
                ", then tidegate with 0 and with {E2E_FILTERS} noop filters under wrk -t1 -c{} for {} s each after {} s warm-up (tidegate on CPU {}, wrk and echo on CPU {})",
                load.connections,
                load.seconds,
                load.warmup_seconds,
                common::PROXY_CPU,
                common::CLIENT_CPU
            )
        } else {
            String::new()
        }
    );

    let runtime = WasmRuntime::with_max_instances(32).expect("the WASM engine");
    let limits = SandboxLimits::default();
    let noop_bytes = std::fs::read(common::noop_wasm_path()).expect("read noop.wasm (built by runtime/build.rs)");
    let noop = runtime.load("noop", &noop_bytes).expect("load noop.wasm");
    let router = runtime
        .load("router", tidegate::filters::ROUTER_WASM)
        .expect("load the router");
    let balancer = runtime
        .load("balancer", tidegate::filters::BALANCER_WASM)
        .expect("load the balancer");
    let (router_config, balancer_config, gateway) = standard_configs(&work);
    let start = |module, config: &[u8]| FilterInstance::start(module, config, &limits).expect("start a filter");

    let ex = exchange(&gateway);
    let body = Bytes::from(vec![b'x'; RESPONSE_BODY_BYTES]);
    let mut variants = vec![
        Variant::new("noop, headers only", vec![start(&noop, b"")], 0, &ex),
        Variant::new("noop, + 1 response body frame", vec![start(&noop, b"")], 1, &ex),
        Variant::new(
            "5 × noop, + 1 body frame",
            (0..5).map(|_| start(&noop, b"")).collect(),
            1,
            &ex,
        ),
        Variant::new(
            "router + balancer, + 1 body frame",
            vec![start(&router, &router_config), start(&balancer, &balancer_config)],
            1,
            &ex,
        ),
    ];
    const NOOP: usize = 1;
    let standard = variants.len() - 1;
    // The standard chain must take the real path (route, cluster, endpoint), not a 404.
    variants[standard].lifecycle(&body);
    for property in ["tidegate.cluster", "tidegate.endpoint"] {
        let ex = &variants[standard].ex;
        assert!(
            ex.properties.get(property).is_some(),
            "the router and balancer did not set {property}: {:?}",
            ex.properties
        );
        assert!(ex.local_reply.is_none(), "{:?}", ex.local_reply);
    }
    for v in &mut variants {
        v.calibrate(&body, Duration::from_millis(300), round_time);
    }

    let mut peer = e2e.then(|| EndToEnd::start(&work));
    // Per round: each variant's mean ns over the round's micro rounds; tidegate's CPU µs per
    // request with 0 and with E2E_FILTERS filters.
    let mut micro: Vec<Vec<f64>> = Vec::new();
    let mut e2e_rounds: Vec<(f64, f64)> = Vec::new();
    let (mut own, mut core, mut wall) = (0.0, 0.0, 0.0);
    for round in 0..rounds {
        let own_before = common::cpu_seconds(std::process::id());
        let core_before = common::core_busy_seconds(common::PROXY_CPU);
        let began = Instant::now();
        let first = variants[0].rounds.len();
        for _ in 0..micro_per_round {
            for v in &mut variants {
                v.round(&body);
            }
        }
        wall += began.elapsed().as_secs_f64();
        core += common::core_busy_seconds(common::PROXY_CPU) - core_before;
        own += common::cpu_seconds(std::process::id()) - own_before;
        micro.push(
            variants
                .iter()
                .map(|v| v.rounds[first..].iter().sum::<f64>() / (v.rounds.len() - first) as f64)
                .collect(),
        );
        let noop_ns = micro[round][NOOP];
        if let Some(peer) = peer.as_mut() {
            // Alternate which goes first.
            let (none, some) = if round % 2 == 0 {
                let none = peer.measure(0, load);
                (none, peer.measure(1, load))
            } else {
                let some = peer.measure(1, load);
                (peer.measure(0, load), some)
            };
            println!(
                "round {}: noop lifecycle {noop_ns:.0} ns; tidegate CPU/request {:.0} ns with 0 filters, {:.0} ns with {E2E_FILTERS}",
                round + 1,
                none * 1000.0,
                some * 1000.0
            );
            e2e_rounds.push((none, some));
        } else {
            println!("round {}: noop lifecycle {noop_ns:.0} ns", round + 1);
        }
    }
    let foreign = (core - own) / wall;
    println!(
        "CPU {} busy with anything but this benchmark during the lifecycle loops: {:.0} %{}",
        common::PROXY_CPU,
        foreign.max(0.0) * 100.0,
        if foreign > 0.05 { " (NOT a quiet machine)" } else { "" }
    );

    // Medians over the rounds of per-round values.
    let over_rounds = |f: &dyn Fn(usize) -> f64| median(&(0..rounds).map(f).collect::<Vec<_>>());
    let has_peer = !e2e_rounds.is_empty();
    let tg0_ns = |r: usize| e2e_rounds[r].0 * 1000.0;
    println!("\n| lifecycle | ns (median) | rounds min–max | ÷ router + balancer | ÷ tidegate-0 CPU/request |");
    println!("|---|---:|---:|---:|---:|");
    for (i, v) in variants.iter().enumerate() {
        let min = v.rounds.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.rounds.iter().copied().fold(0.0, f64::max);
        let of_standard = over_rounds(&|r| micro[r][i] / micro[r][standard]);
        let of_request = match has_peer {
            true => format!("{:.1} %", over_rounds(&|r| micro[r][i] / tg0_ns(r)) * 100.0),
            false => "–".into(),
        };
        println!(
            "| {} | {:.0} | {min:.0}–{max:.0} | {of_standard:.2} | {of_request} |",
            v.name,
            v.median_ns()
        );
    }
    if has_peer {
        let per_filter: Vec<f64> = e2e_rounds
            .iter()
            .map(|(none, some)| (some - none) / E2E_FILTERS as f64 * 1000.0)
            .collect();
        let marginal_ns = median(&per_filter);
        let min = per_filter.iter().copied().fold(f64::INFINITY, f64::min);
        let max = per_filter.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let noop_ns = variants[NOOP].median_ns();
        println!("\nend to end, same rounds (tidegate --workers 1 under wrk; process CPU time per request, median):");
        println!("  tidegate, 0 filters: {:.0} ns/request", over_rounds(&tg0_ns));
        println!(
            "  tidegate, {E2E_FILTERS} filters: {:.0} ns/request",
            over_rounds(&|r| e2e_rounds[r].1 * 1000.0)
        );
        println!(
            "  each noop filter adds {marginal_ns:.0} ns/request end to end (rounds: {min:.0} to {max:.0}); its lifecycle in the host is {noop_ns:.0} ns, {:.0} % of that (ratio of the medians)",
            noop_ns / marginal_ns * 100.0
        );
    }
}

/// Runs the rest of the benchmark pinned to the proxy CPU (the micro-benchmark runs where the
/// proxy runs in the end-to-end part), by re-running itself under `taskset`.
fn pin_to_proxy_cpu() {
    if std::env::var_os("TIDEGATE_BENCH_PINNED").is_some() {
        return;
    }
    let exe = std::env::current_exe().expect("the bench's own path");
    let status = Command::new("taskset")
        .args(["-c", common::PROXY_CPU])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .env("TIDEGATE_BENCH_PINNED", "1")
        .status()
        .unwrap_or_else(|e| panic!("run taskset (util-linux): {e}"));
    std::process::exit(status.code().unwrap_or(1));
}

/// The router's and balancer's configurations for the bench Gateway, translated from the same
/// YAML the end-to-end part serves, and the Gateway's `namespace/name`.
fn standard_configs(work: &WorkDir) -> (Vec<u8>, Vec<u8>, String) {
    let dir = work.0.join("translate");
    common::write_tidegate_config(&dir, 3000, 0);
    let store = DirSource::new(&dir).poll().expect("the first poll yields the objects");
    let translation = translate(
        &store,
        &TranslateOptions {
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            address_pool: None,
            config_dir: Some(dir.clone()),
            now: "2025-01-01T00:00:00Z".into(),
            node_name: None,
        },
    );
    let snapshot = translation.snapshot;
    let gateway = snapshot
        .ports
        .first()
        .and_then(|p| p.gateways.first())
        .cloned()
        .expect("the bench Gateway serves a port");
    (
        serde_json::to_vec(&snapshot.router).expect("router config"),
        serde_json::to_vec(&snapshot.balancer).expect("balancer config"),
        gateway,
    )
}

/// The exchange the proxy builds for wrk's `GET /bench` (see `proxy::http::exchange_for`),
/// with the echo backend's response headers.
fn exchange(gateway: &str) -> HttpExchange {
    let mut ex = HttpExchange {
        request_headers: HeaderList::from_pairs([
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "127.0.0.1:8080"),
            (":path", "/bench"),
        ]),
        response_headers: HeaderList::from_pairs([
            (":status", "200"),
            ("content-type", "application/json"),
            ("x-content-type-options", "nosniff"),
            ("content-length", RESPONSE_BODY_BYTES.to_string().as_str()),
            ("date", "Wed, 01 Jan 2025 00:00:00 GMT"),
        ]),
        ..Default::default()
    };
    ex.properties.set("tidegate.listener_port", "80");
    ex.properties.set("tidegate.gateways", gateway);
    ex.properties.set("tidegate.gateway", gateway);
    ex.properties.set("source.address", "127.0.0.1:40000");
    ex.properties.set("destination.address", "127.0.0.1:8080");
    ex.properties.set("request.protocol", "HTTP/1.1");
    ex
}

/// tidegate with 0 and with [`E2E_FILTERS`] noop filters, both up for the whole run, the one
/// not under measurement stopped (SIGSTOP) so it takes no CPU.
struct EndToEnd {
    proxies: [(usize, Tidegate); 2],
    _echo: common::Proc,
}

impl EndToEnd {
    fn start(work: &WorkDir) -> Self {
        let (echo, echo_port) = common::start_echo(&work.0);
        let proxies = [0, E2E_FILTERS].map(|filters| {
            let mut tidegate = Tidegate::start(&work.0, echo_port, filters);
            tidegate.proc.pause();
            (filters, tidegate)
        });
        Self { proxies, _echo: echo }
    }

    /// Runs wrk against proxy `k` (0: no filter, 1: E2E_FILTERS): its CPU µs per request.
    fn measure(&mut self, k: usize, load: Load) -> f64 {
        let (filters, tidegate) = &mut self.proxies[k];
        tidegate.proc.resume();
        let measured = common::wrk(&tidegate.url(), load, Some(tidegate.proc.pid()));
        tidegate.proc.pause();
        if measured.foreign_busy > 0.05 {
            println!(
                "  (with {filters} filters: CPU {} was {:.0} % busy with other work)",
                common::PROXY_CPU,
                measured.foreign_busy * 100.0
            );
        }
        measured.cpu_us_per_request
    }
}
