//! Requests/s, latency and proxy CPU per request, all in one run: direct to the backend, nginx,
//! and tidegate with 0, 1 and 5 empty (`noop`) user filters. See benches/README.md.
//!
//! Settings (environment): `BENCH_SECONDS` (3) per measurement, `BENCH_WARMUP_SECONDS` (1)
//! before each, `BENCH_CONNECTIONS` (4), `BENCH_ROUNDS` (10).

mod common;

use common::{Load, Measured, Proc, Tidegate, WorkDir, median};

/// tidegate is measured with these numbers of noop user filters (0 must be first).
const FILTER_COUNTS: [usize; 3] = [0, 1, 5];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Flow {
    Direct,
    Nginx,
    Tidegate(usize),
}

impl Flow {
    fn name(self) -> String {
        match self {
            Flow::Direct => "direct".into(),
            Flow::Nginx => "nginx".into(),
            Flow::Tidegate(1) => "tidegate, 1 filter".into(),
            Flow::Tidegate(n) => format!("tidegate, {n} filters"),
        }
    }
}

fn main() {
    let load = Load::from_env(3);
    let rounds = common::env_u64("BENCH_ROUNDS", 10).max(1) as usize;
    let work = WorkDir::new("http");
    let flows: Vec<Flow> = [Flow::Direct, Flow::Nginx]
        .into_iter()
        .chain(FILTER_COUNTS.iter().map(|&n| Flow::Tidegate(n)))
        .collect();
    println!("machine: {}", common::machine());
    println!(
        "{rounds} round(s) × {} flows, {} s each after {} s warm-up, wrk -t1 -c{}; proxy on CPU {}, wrk and the echo backend on CPU {}",
        flows.len(),
        load.seconds,
        load.warmup_seconds,
        load.connections,
        common::PROXY_CPU,
        common::CLIENT_CPU
    );

    let (mut echo, echo_port) = common::start_echo(&work.0);
    // Every proxy runs from the start and stays up (no start-up in the measurements, the same
    // process in every round); all but the one under measurement are stopped (SIGSTOP).
    let mut proxies: Vec<Option<Proc>> = Vec::new();
    let mut urls: Vec<String> = Vec::new();
    for &flow in &flows {
        match start(flow, &work, echo_port) {
            Some((mut proc, port)) => {
                proc.pause();
                proxies.push(Some(proc));
                urls.push(format!("http://127.0.0.1:{port}/bench"));
            }
            None => {
                proxies.push(None);
                urls.push(format!("http://127.0.0.1:{echo_port}/bench"));
            }
        }
    }
    // results[round][flow]
    let mut results: Vec<Vec<Option<Measured>>> = vec![vec![None; flows.len()]; rounds];
    println!(
        "\n{:<5} {:<22} {:>10} {:>9} {:>9} {:>12} {:>6} {:>7}",
        "round", "flow", "req/s", "p50 ms", "p99 ms", "CPU µs/req", "busy", "others"
    );
    for (round, row) in results.iter_mut().enumerate() {
        // Each round starts with another flow, so no flow always runs first or last.
        for k in 0..flows.len() {
            let i = (k + round) % flows.len();
            let flow = flows[i];
            let pid = proxies[i].as_mut().map(|p| {
                p.resume();
                p.pid()
            });
            let measured = common::wrk(&urls[i], load, pid);
            if let Some(p) = proxies[i].as_mut() {
                p.pause();
            }
            echo.check_alive();
            let (cpu, busy) = match measured.cpu_us_per_request.is_nan() {
                true => ("–".to_string(), "–".to_string()),
                false => (
                    format!("{:.2}", measured.cpu_us_per_request),
                    format!("{:.0}%", measured.cpu_busy * 100.0),
                ),
            };
            println!(
                "{:<5} {:<22} {:>10.0} {:>9.3} {:>9.3} {:>12} {:>6} {:>6.0}%",
                round + 1,
                flow.name(),
                measured.rps,
                measured.p50_ms,
                measured.p99_ms,
                cpu,
                busy,
                measured.foreign_busy * 100.0
            );
            row[i] = Some(measured);
        }
    }
    report(&flows, &results);
    let foreign = results
        .iter()
        .flatten()
        .flatten()
        .map(|m| m.foreign_busy)
        .fold(0.0, f64::max);
    println!(
        "\nbusy: the proxy's CPU time ÷ wall time; others: CPU {}'s busy time not spent by the proxy (other processes, interrupts, steal) ÷ wall time, at most {:.0} % in this run{}",
        common::PROXY_CPU,
        foreign * 100.0,
        if foreign > 0.05 {
            ": NOT a quiet machine, compare with care"
        } else {
            ""
        }
    );
}

/// Starts the flow's proxy, ready to serve (`None` for `direct`), and the port it serves on.
fn start(flow: Flow, work: &WorkDir, echo_port: u16) -> Option<(Proc, u16)> {
    match flow {
        Flow::Direct => None,
        Flow::Nginx => Some(common::start_nginx(&work.0, echo_port)),
        Flow::Tidegate(filters) => {
            let tidegate = Tidegate::start(&work.0, echo_port, filters);
            let port = tidegate.port;
            Some((tidegate.proc, port))
        }
    }
}

/// Medians over the rounds; each ratio is taken within a round, then its median reported, with
/// the range over the rounds where the spread matters.
fn report(flows: &[Flow], results: &[Vec<Option<Measured>>]) {
    let at = |round: &Vec<Option<Measured>>, flow: Flow| -> Measured {
        let i = flows.iter().position(|f| *f == flow).expect("a measured flow");
        round[i].expect("every flow measured in every round")
    };
    // (median, min, max) over the rounds of a per-round value.
    let spread = |f: &dyn Fn(&Vec<Option<Measured>>) -> f64| {
        let values: Vec<f64> = results.iter().map(f).collect();
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (median(&values), min, max)
    };
    let med = |f: &dyn Fn(&Vec<Option<Measured>>) -> f64| spread(f).0;
    let ranged = |(m, lo, hi): (f64, f64, f64)| format!("{m:.2} ({lo:.2}–{hi:.2})");

    println!(
        "\nmedian of {} round(s); ratios are taken within each round, then their median (and range over the rounds):\n",
        results.len()
    );
    println!(
        "| flow | req/s | p50 ms | p99 ms | proxy CPU µs/req | req/s ÷ direct | p99 ÷ direct | req/s ÷ tidegate-0 | p50 ÷ tidegate-0 | CPU/req ÷ tidegate-0 |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let tg0 = Flow::Tidegate(0);
    for &flow in flows {
        let m = |f: fn(&Measured) -> f64| med(&|r| f(&at(r, flow)));
        let vs_direct = |f: fn(&Measured) -> f64| med(&|r| f(&at(r, flow)) / f(&at(r, Flow::Direct)));
        let vs_tg0 = |f: fn(&Measured) -> f64| match flow {
            Flow::Tidegate(n) if n > 0 => ranged(spread(&|r| f(&at(r, flow)) / f(&at(r, tg0)))),
            Flow::Tidegate(_) => "1".into(),
            _ => "–".into(),
        };
        let cpu = m(|x| x.cpu_us_per_request);
        println!(
            "| {} | {:.0} | {:.3} | {:.3} | {} | {:.2} | {:.2} | {} | {} | {} |",
            flow.name(),
            m(|x| x.rps),
            m(|x| x.p50_ms),
            m(|x| x.p99_ms),
            if cpu.is_nan() {
                "–".into()
            } else {
                format!("{cpu:.1}")
            },
            vs_direct(|x| x.rps),
            vs_direct(|x| x.p99_ms),
            vs_tg0(|x| x.rps),
            vs_tg0(|x| x.p50_ms),
            vs_tg0(|x| x.cpu_us_per_request),
        );
    }
    let tg0_vs_nginx = spread(&|r| at(r, tg0).cpu_us_per_request / at(r, Flow::Nginx).cpu_us_per_request);
    println!(
        "\nproxy CPU per request, tidegate (0 filters) ÷ nginx: {}",
        ranged(tg0_vs_nginx)
    );
    for &n in FILTER_COUNTS.iter().filter(|&&n| n > 0) {
        let added = |r: &Vec<Option<Measured>>| {
            (at(r, Flow::Tidegate(n)).cpu_us_per_request - at(r, tg0).cpu_us_per_request) / n as f64
        };
        let per_filter = spread(&added);
        let share = med(&|r| added(r) / at(r, tg0).cpu_us_per_request);
        println!(
            "with {n} noop filter(s), each adds {} µs of proxy CPU per request = {:.1} % of tidegate's own (0 filters)",
            ranged(per_filter),
            share * 100.0
        );
    }
}
