//! Metrics: `proxy_define_metric`, `proxy_increment_metric`, `proxy_record_metric`,
//! `proxy_get_metric`, and [`metrics_snapshot`] for the admin `/metrics` endpoint.
//!
//! One process-wide registry. A metric is identified by (filter name, metric name): every
//! instance of a filter (one per worker) that defines `requests` gets the same id and adds to the
//! same value, while two filters defining `requests` get two metrics, which the admin endpoint
//! tells apart with a `filter` label. Values are atomics: after a VM's first use of an id
//! (one read lock to find it), increments touch no lock at all.
//!
//! Semantics follow Envoy: counters only go up (`increment` with a negative delta is
//! `BAD_ARGUMENT`; `record` sets them), gauges go both ways, and `record` on a histogram adds an
//! observation (`increment` and `get` on a histogram are `BAD_ARGUMENT`). Defining the same name
//! with another type is `BAD_ARGUMENT`. Names are UTF-8, 1 to [`MAX_NAME`] bytes; a filter may
//! define at most [`MAX_METRICS_PER_FILTER`] metrics (more: `BAD_ARGUMENT`), which bounds the
//! series a filter can add to `/metrics`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, PoisonError, RwLock};

use wasmtime::{Caller, Linker};

use super::{ENV, Status, status};
use crate::wasm::host::HostState;
use crate::wasm::memory::{bytes, with_memory, write_u32, write_u64};

/// The longest metric name.
pub(crate) const MAX_NAME: usize = 256;
/// The most metrics one filter may define.
pub(crate) const MAX_METRICS_PER_FILTER: usize = 1000;

/// Upper bounds of histogram buckets (Envoy's defaults, in the unit the filter records).
pub const HISTOGRAM_BUCKETS: [u64; 19] = [
    1,
    5,
    10,
    25,
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    30_000,
    60_000,
    300_000,
    600_000,
    1_800_000,
    3_600_000,
    u64::MAX,
];

/// The kind of a filter metric (`proxy_metric_type_t`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricKind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution of recorded values.
    Histogram,
}

impl MetricKind {
    fn from_abi(kind: i32) -> Option<Self> {
        Some(match kind {
            0 => Self::Counter,
            1 => Self::Gauge,
            2 => Self::Histogram,
            _ => return None,
        })
    }
}

/// One filter metric's current value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricSample {
    /// The filter (VM id) that defined it.
    pub filter: String,
    /// The name the filter gave it (free text; the exporter sanitizes it).
    pub name: String,
    /// Its value.
    pub value: MetricValue,
}

/// The value of a [`MetricSample`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricValue {
    /// A counter.
    Counter(u64),
    /// A gauge.
    Gauge(i64),
    /// A histogram.
    Histogram {
        /// How many values were recorded.
        count: u64,
        /// Their sum (wrapping).
        sum: u64,
        /// `(upper bound, cumulative count)` per bucket of [`HISTOGRAM_BUCKETS`]; the last bound
        /// is `u64::MAX` (Prometheus' `+Inf`).
        buckets: Vec<(u64, u64)>,
    },
}

impl MetricValue {
    /// The kind of this value.
    pub fn kind(&self) -> MetricKind {
        match self {
            Self::Counter(_) => MetricKind::Counter,
            Self::Gauge(_) => MetricKind::Gauge,
            Self::Histogram { .. } => MetricKind::Histogram,
        }
    }
}

/// One metric in the registry.
pub(crate) struct Metric {
    filter: Arc<str>,
    name: Box<str>,
    cell: Cell,
}

enum Cell {
    Counter(AtomicU64),
    Gauge(AtomicI64),
    Histogram {
        count: AtomicU64,
        sum: AtomicU64,
        buckets: [AtomicU64; HISTOGRAM_BUCKETS.len()],
    },
}

impl Metric {
    fn new(filter: Arc<str>, name: &str, kind: MetricKind) -> Self {
        let cell = match kind {
            MetricKind::Counter => Cell::Counter(AtomicU64::new(0)),
            MetricKind::Gauge => Cell::Gauge(AtomicI64::new(0)),
            MetricKind::Histogram => Cell::Histogram {
                count: AtomicU64::new(0),
                sum: AtomicU64::new(0),
                buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            },
        };
        Self {
            filter,
            name: name.into(),
            cell,
        }
    }

    fn kind(&self) -> MetricKind {
        match self.cell {
            Cell::Counter(_) => MetricKind::Counter,
            Cell::Gauge(_) => MetricKind::Gauge,
            Cell::Histogram { .. } => MetricKind::Histogram,
        }
    }

    fn increment(&self, delta: i64) -> Result<(), Status> {
        match &self.cell {
            Cell::Counter(v) => {
                let delta = u64::try_from(delta).map_err(|_| Status::BadArgument)?;
                v.fetch_add(delta, Ordering::Relaxed);
            }
            Cell::Gauge(v) => {
                v.fetch_add(delta, Ordering::Relaxed);
            }
            Cell::Histogram { .. } => return Err(Status::BadArgument),
        }
        Ok(())
    }

    fn record(&self, value: u64) {
        match &self.cell {
            Cell::Counter(v) => v.store(value, Ordering::Relaxed),
            Cell::Gauge(v) => v.store(value as i64, Ordering::Relaxed),
            Cell::Histogram { count, sum, buckets } => {
                let bucket = HISTOGRAM_BUCKETS
                    .iter()
                    .position(|&bound| value <= bound)
                    .unwrap_or(HISTOGRAM_BUCKETS.len() - 1);
                buckets[bucket].fetch_add(1, Ordering::Relaxed);
                sum.fetch_add(value, Ordering::Relaxed);
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn get(&self) -> Result<u64, Status> {
        match &self.cell {
            Cell::Counter(v) => Ok(v.load(Ordering::Relaxed)),
            Cell::Gauge(v) => Ok(v.load(Ordering::Relaxed) as u64),
            Cell::Histogram { .. } => Err(Status::BadArgument),
        }
    }

    fn sample(&self) -> MetricSample {
        let value = match &self.cell {
            Cell::Counter(v) => MetricValue::Counter(v.load(Ordering::Relaxed)),
            Cell::Gauge(v) => MetricValue::Gauge(v.load(Ordering::Relaxed)),
            Cell::Histogram { count, sum, buckets } => {
                let mut cumulative = 0;
                let buckets = HISTOGRAM_BUCKETS
                    .iter()
                    .zip(buckets)
                    .map(|(&bound, n)| {
                        cumulative += n.load(Ordering::Relaxed);
                        (bound, cumulative)
                    })
                    .collect();
                MetricValue::Histogram {
                    count: count.load(Ordering::Relaxed),
                    sum: sum.load(Ordering::Relaxed),
                    buckets,
                }
            }
        };
        MetricSample {
            filter: self.filter.to_string(),
            name: self.name.to_string(),
            value,
        }
    }
}

#[derive(Default)]
struct Registry {
    /// Index + 1 is the metric id.
    metrics: Vec<Arc<Metric>>,
    by_name: HashMap<(Arc<str>, Box<str>), u32>,
    per_filter: HashMap<Arc<str>, usize>,
}

static REGISTRY: LazyLock<RwLock<Registry>> = LazyLock::new(Default::default);

/// Every filter metric's current value, in definition order.
pub fn metrics_snapshot() -> Vec<MetricSample> {
    let registry = REGISTRY.read().unwrap_or_else(PoisonError::into_inner);
    registry.metrics.iter().map(|m| m.sample()).collect()
}

/// The id of `filter`'s metric `name`, defining it if needed.
pub(crate) fn define(filter: &Arc<str>, kind: MetricKind, name: &str) -> Result<u32, Status> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(Status::BadArgument);
    }
    let key = (filter.clone(), Box::<str>::from(name));
    if let Some(&id) = REGISTRY
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .by_name
        .get(&key)
    {
        return check_kind(id, kind);
    }
    let mut registry = REGISTRY.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(&id) = registry.by_name.get(&key) {
        drop(registry);
        return check_kind(id, kind);
    }
    let defined = registry.per_filter.entry(filter.clone()).or_default();
    if *defined >= MAX_METRICS_PER_FILTER {
        return Err(Status::BadArgument);
    }
    *defined += 1;
    let id = u32::try_from(registry.metrics.len() + 1).map_err(|_| Status::BadArgument)?;
    registry.metrics.push(Arc::new(Metric::new(filter.clone(), name, kind)));
    registry.by_name.insert(key, id);
    Ok(id)
}

fn check_kind(id: u32, kind: MetricKind) -> Result<u32, Status> {
    match lookup(id) {
        Some(metric) if metric.kind() == kind => Ok(id),
        _ => Err(Status::BadArgument),
    }
}

fn lookup(id: u32) -> Option<Arc<Metric>> {
    let index = (id as usize).checked_sub(1)?;
    REGISTRY
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .metrics
        .get(index)
        .cloned()
}

/// The metric `id` if `state`'s filter defined it: from the VM's cache, else the registry.
/// A VM can only use ids of its own filter.
fn metric(state: &mut HostState, id: i32) -> Result<Arc<Metric>, Status> {
    let index = (id as u32 as usize).checked_sub(1).ok_or(Status::NotFound)?;
    if let Some(Some(metric)) = state.metrics.get(index) {
        return Ok(metric.clone());
    }
    let metric = lookup(id as u32)
        .filter(|m| m.filter == state.filter)
        .ok_or(Status::NotFound)?;
    if state.metrics.len() <= index {
        state.metrics.resize(index + 1, None);
    }
    state.metrics[index] = Some(metric.clone());
    Ok(metric)
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(ENV, "proxy_define_metric", proxy_define_metric)?;
    linker.func_wrap(ENV, "proxy_increment_metric", proxy_increment_metric)?;
    linker.func_wrap(ENV, "proxy_record_metric", proxy_record_metric)?;
    linker.func_wrap(ENV, "proxy_get_metric", proxy_get_metric)?;
    Ok(())
}

fn proxy_define_metric(mut caller: Caller<'_, HostState>, kind: i32, name_ptr: i32, name_len: i32, ret_id: i32) -> i32 {
    status(with_memory(&mut caller, |mem, state| {
        let kind = MetricKind::from_abi(kind).ok_or(Status::BadArgument)?;
        let name = std::str::from_utf8(bytes(mem, name_ptr, name_len)?).map_err(|_| Status::BadArgument)?;
        crate::wasm::memory::range(mem.len(), ret_id, 4)?;
        let id = define(&state.filter, kind, name)?;
        write_u32(mem, ret_id, id)
    }))
}

fn proxy_increment_metric(mut caller: Caller<'_, HostState>, id: i32, delta: i64) -> i32 {
    status(metric(caller.data_mut(), id).and_then(|m| m.increment(delta)))
}

fn proxy_record_metric(mut caller: Caller<'_, HostState>, id: i32, value: i64) -> i32 {
    status(metric(caller.data_mut(), id).map(|m| m.record(value as u64)))
}

fn proxy_get_metric(mut caller: Caller<'_, HostState>, id: i32, ret_value: i32) -> i32 {
    status(with_memory(&mut caller, |mem, state| {
        let value = metric(state, id)?.get()?;
        write_u64(mem, ret_value, value)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(filter: &str, name: &str) -> MetricValue {
        metrics_snapshot()
            .into_iter()
            .find(|s| s.filter == filter && s.name == name)
            .map(|s| s.value)
            .expect("defined")
    }

    #[test]
    fn registry_semantics() {
        let filter: Arc<str> = Arc::from("metrics-unit-test");
        let counter = define(&filter, MetricKind::Counter, "requests").unwrap();
        assert_eq!(
            define(&filter, MetricKind::Counter, "requests"),
            Ok(counter),
            "same id for the same name"
        );
        assert_eq!(
            define(&filter, MetricKind::Gauge, "requests"),
            Err(Status::BadArgument),
            "kind clash"
        );
        let other = define(&Arc::from("metrics-unit-test-2"), MetricKind::Counter, "requests").unwrap();
        assert_ne!(other, counter, "metrics are per filter");
        assert_eq!(define(&filter, MetricKind::Counter, ""), Err(Status::BadArgument));

        let m = lookup(counter).unwrap();
        m.increment(2).unwrap();
        m.increment(3).unwrap();
        assert_eq!(m.increment(-1), Err(Status::BadArgument));
        assert_eq!(m.get(), Ok(5));
        assert_eq!(sample("metrics-unit-test", "requests"), MetricValue::Counter(5));

        let gauge = lookup(define(&filter, MetricKind::Gauge, "inflight").unwrap()).unwrap();
        gauge.increment(3).unwrap();
        gauge.increment(-5).unwrap();
        assert_eq!(sample("metrics-unit-test", "inflight"), MetricValue::Gauge(-2));
        gauge.record(7);
        assert_eq!(gauge.get(), Ok(7));

        let histogram = lookup(define(&filter, MetricKind::Histogram, "latency_ms").unwrap()).unwrap();
        for v in [1, 3, 7, 7_000_000] {
            histogram.record(v);
        }
        assert_eq!(histogram.get(), Err(Status::BadArgument));
        assert_eq!(histogram.increment(1), Err(Status::BadArgument));
        let MetricValue::Histogram { count, sum, buckets } = sample("metrics-unit-test", "latency_ms") else {
            panic!("histogram")
        };
        assert_eq!((count, sum), (4, 7_000_011));
        assert_eq!(buckets[0], (1, 1));
        assert_eq!(buckets[1], (5, 2));
        assert_eq!(buckets[2], (10, 3));
        assert_eq!(buckets.last(), Some(&(u64::MAX, 4)));
    }
}
