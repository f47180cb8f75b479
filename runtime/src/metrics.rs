//! Process metrics in Prometheus text format (`/metrics`).
//!
//! Hot-path counters are plain atomics created up front (no family lookups, so no locks per
//! request); labelled families are used only for rare events (errors, filter failures).

use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FilterLabel {
    filter: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FilterDirectionLabel {
    filter: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// Every metric the process exports.
pub struct Metrics {
    registry: Registry,
    requests_by_class: [Counter; 5],
    connections: Counter,
    filter_failures: Family<FilterLabel, Counter>,
    body_buffer_limits: Family<FilterDirectionLabel, Counter>,
    config_errors: Family<KindLabel, Counter>,
    config_errors_current: Gauge,
    config_reloads: Counter,
    config_rejected: Counter,
    snapshot_version: Gauge<i64, AtomicI64>,
    bind_errors: Counter,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tidegate");
        let requests = Family::<ClassLabel, Counter>::default();
        let requests_by_class =
            ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| requests.get_or_create(&ClassLabel { class }).clone());
        registry.register(
            "http_requests",
            "Downstream HTTP requests answered, by status class",
            requests,
        );
        let connections = Counter::default();
        registry.register(
            "downstream_connections",
            "Downstream connections accepted",
            connections.clone(),
        );
        let filter_failures = Family::<FilterLabel, Counter>::default();
        registry.register(
            "filter_failures",
            "Filter calls that trapped, overran their deadline or memory cap, or misbehaved",
            filter_failures.clone(),
        );
        let body_buffer_limits = Family::<FilterDirectionLabel, Counter>::default();
        registry.register(
            "body_buffer_limit",
            "Streams failed because a filter made the proxy buffer more body than the limit (request: 413, response: 500 or reset)",
            body_buffer_limits.clone(),
        );
        let config_errors = Family::<KindLabel, Counter>::default();
        registry.register(
            "config_errors",
            "Configuration problems found (parse, invalid, duplicate), counted per load",
            config_errors.clone(),
        );
        let config_errors_current = Gauge::default();
        registry.register(
            "config_errors_current",
            "Configuration problems in the current configuration",
            config_errors_current.clone(),
        );
        let config_reloads = Counter::default();
        registry.register(
            "config_reloads",
            "Configuration versions published",
            config_reloads.clone(),
        );
        let config_rejected = Counter::default();
        registry.register(
            "config_rejected",
            "Configuration versions a filter rejected on a worker (the previous one kept serving)",
            config_rejected.clone(),
        );
        let snapshot_version = Gauge::<i64, AtomicI64>::default();
        registry.register(
            "config_version",
            "Version of the published configuration",
            snapshot_version.clone(),
        );
        let bind_errors = Counter::default();
        registry.register(
            "listener_bind_errors",
            "Listener ports that could not be bound",
            bind_errors.clone(),
        );
        Self {
            registry,
            requests_by_class,
            connections,
            filter_failures,
            body_buffer_limits,
            config_errors,
            config_errors_current,
            config_reloads,
            config_rejected,
            snapshot_version,
            bind_errors,
        }
    }

    pub fn request_done(&self, status: u16) {
        let index = (status / 100).clamp(1, 5) as usize - 1;
        self.requests_by_class[index].inc();
    }

    pub fn connection_accepted(&self) {
        self.connections.inc();
    }

    pub fn filter_failure(&self, filter: &str) {
        self.filter_failures
            .get_or_create(&FilterLabel {
                filter: filter.to_string(),
            })
            .inc();
    }

    /// A stream went over the body buffer limit for `filter` (`direction`: request or response).
    pub fn body_buffer_limit(&self, filter: &str, direction: &'static str) {
        self.body_buffer_limits
            .get_or_create(&FilterDirectionLabel {
                filter: filter.to_string(),
                direction,
            })
            .inc();
    }

    pub fn config_loaded(&self, version: u64, errors: &[crate::config::ConfigError]) {
        self.config_reloads.inc();
        self.snapshot_version.set(version as i64);
        self.config_errors_current.set(errors.len() as i64);
        for error in errors {
            self.config_errors
                .get_or_create(&KindLabel {
                    kind: error.kind().to_string(),
                })
                .inc();
        }
    }

    pub fn config_rejected(&self) {
        self.config_rejected.inc();
    }

    pub fn bind_error(&self) {
        self.bind_errors.inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
