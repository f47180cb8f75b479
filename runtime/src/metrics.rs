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

use crate::wasm::{MetricKind, MetricSample, MetricValue};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClassLabel {
    class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// What became of a connection the capture sent to the L4 path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4Outcome {
    /// Connected to a Service endpoint.
    Forwarded,
    /// Connected to its original destination (not a Service).
    PassedThrough,
    /// A Service port without an endpoint (for this client): reset.
    NoEndpoint,
    /// A ClusterIP port, or node port, no Service has: reset.
    NoSuchPort,
    /// No endpoint (or original destination) accepted the connection: reset.
    ConnectFailed,
    /// Sent through the HTTP chain (east-west HTTP to a Service).
    Http,
    /// Closed by a NETWORK filter, or by a failure of a fail-closed one.
    FilterClosed,
}

impl L4Outcome {
    const ALL: [L4Outcome; 7] = [
        L4Outcome::Forwarded,
        L4Outcome::PassedThrough,
        L4Outcome::NoEndpoint,
        L4Outcome::NoSuchPort,
        L4Outcome::ConnectFailed,
        L4Outcome::Http,
        L4Outcome::FilterClosed,
    ];

    fn label(self) -> &'static str {
        match self {
            L4Outcome::Forwarded => "forwarded",
            L4Outcome::PassedThrough => "passed_through",
            L4Outcome::NoEndpoint => "no_endpoint",
            L4Outcome::NoSuchPort => "no_such_port",
            L4Outcome::ConnectFailed => "connect_failed",
            L4Outcome::Http => "http",
            L4Outcome::FilterClosed => "filter_closed",
        }
    }
}

/// What protocol detection found on a captured connection to an undeclared Service port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection {
    Http,
    /// Something else (or the client closed first): the L4 path.
    Tcp,
    /// Nothing within `--protocol-detect-timeout`: the L4 path.
    Timeout,
}

impl Detection {
    const ALL: [Detection; 3] = [Detection::Http, Detection::Tcp, Detection::Timeout];

    fn label(self) -> &'static str {
        match self {
            Detection::Http => "http",
            Detection::Tcp => "tcp",
            Detection::Timeout => "timeout",
        }
    }
}

/// What became of the first datagram of a UDP flow the capture sent to the L4 path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpOutcome {
    /// A flow to a Service endpoint was opened.
    Opened,
    /// A Service port without an endpoint: dropped.
    NoEndpoint,
    /// No Service has that address and port (any longer): dropped.
    NoSuchPort,
    /// The flow's sockets could not be opened: dropped.
    Failed,
}

impl UdpOutcome {
    const ALL: [UdpOutcome; 4] = [
        UdpOutcome::Opened,
        UdpOutcome::NoEndpoint,
        UdpOutcome::NoSuchPort,
        UdpOutcome::Failed,
    ];

    fn label(self) -> &'static str {
        match self {
            UdpOutcome::Opened => "opened",
            UdpOutcome::NoEndpoint => "no_endpoint",
            UdpOutcome::NoSuchPort => "no_such_port",
            UdpOutcome::Failed => "failed",
        }
    }
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
    l4_connections: [Counter; 7],
    udp_flows: [Counter; 4],
    detections: [Counter; 3],
    capture_set_errors: Counter,
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
        let l4 = Family::<OutcomeLabel, Counter>::default();
        let l4_connections = L4Outcome::ALL.map(|o| l4.get_or_create(&OutcomeLabel { outcome: o.label() }).clone());
        registry.register(
            "l4_connections",
            "Connections the node capture took, by outcome (http: sent through the HTTP chain)",
            l4,
        );
        let detected = Family::<ResultLabel, Counter>::default();
        let detections = Detection::ALL.map(|d| detected.get_or_create(&ResultLabel { result: d.label() }).clone());
        registry.register(
            "protocol_detections",
            "Captured connections to Service ports that declare no protocol, by what their first bytes were",
            detected,
        );
        let udp = Family::<OutcomeLabel, Counter>::default();
        let udp_flows = UdpOutcome::ALL.map(|o| udp.get_or_create(&OutcomeLabel { outcome: o.label() }).clone());
        registry.register(
            "l4_udp_flows",
            "UDP flows the node capture sent to the L4 path (first datagrams), by outcome",
            udp,
        );
        let capture_set_errors = Counter::default();
        registry.register(
            "capture_set_update_errors",
            "Failed updates of the capture's Service sets (nftables)",
            capture_set_errors.clone(),
        );
        Self {
            registry,
            requests_by_class,
            l4_connections,
            udp_flows,
            detections,
            capture_set_errors,
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

    pub fn l4_connection(&self, outcome: L4Outcome) {
        self.l4_connections[outcome as usize].inc();
    }

    pub fn protocol_detected(&self, detection: Detection) {
        self.detections[detection as usize].inc();
    }

    pub fn udp_flow(&self, outcome: UdpOutcome) {
        self.udp_flows[outcome as usize].inc();
    }

    pub fn capture_set_error(&self) {
        self.capture_set_errors.inc();
    }

    /// The Prometheus text exposition of every metric, the filters' own included.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        // The registry ends the exposition with `# EOF`; the filters' metrics go before it.
        let eof = out.rfind("# EOF").unwrap_or(out.len());
        let tail = out.split_off(eof);
        encode_filter_metrics(&mut out, &crate::wasm::metrics_snapshot());
        out.push_str(&tail);
        out
    }
}

/// Metrics filters define through `proxy_define_metric`, as `tidegate_wasm_<name>` with a
/// `filter` label (the same name from two filters is one family with two label sets; a name two
/// filters define with different kinds keeps the first kind seen).
fn encode_filter_metrics(out: &mut String, samples: &[MetricSample]) {
    use std::fmt::Write as _;
    let mut families: Vec<(String, MetricKind, Vec<&MetricSample>)> = Vec::new();
    for sample in samples {
        let name = format!("tidegate_wasm_{}", sanitize(&sample.name));
        match families.iter_mut().find(|(n, _, _)| *n == name) {
            Some((_, kind, members)) if *kind == sample.value.kind() => members.push(sample),
            Some(_) => {}
            None => families.push((name, sample.value.kind(), vec![sample])),
        }
    }
    for (name, kind, members) in families {
        let type_name = match kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        };
        let _ = writeln!(out, "# TYPE {name} {type_name}");
        let _ = writeln!(out, "# HELP {name} Defined by a WASM filter.");
        for sample in members {
            let filter = escape_label(&sample.filter);
            match &sample.value {
                MetricValue::Counter(v) => {
                    let _ = writeln!(out, "{name}_total{{filter=\"{filter}\"}} {v}");
                }
                MetricValue::Gauge(v) => {
                    let _ = writeln!(out, "{name}{{filter=\"{filter}\"}} {v}");
                }
                MetricValue::Histogram { count, sum, buckets } => {
                    for (bound, cumulative) in buckets {
                        let le = if *bound == u64::MAX {
                            "+Inf".to_string()
                        } else {
                            bound.to_string()
                        };
                        let _ = writeln!(out, "{name}_bucket{{filter=\"{filter}\",le=\"{le}\"}} {cumulative}");
                    }
                    let _ = writeln!(out, "{name}_sum{{filter=\"{filter}\"}} {sum}");
                    let _ = writeln!(out, "{name}_count{{filter=\"{filter}\"}} {count}");
                }
            }
        }
    }
}

/// A Prometheus metric-name fragment: `[a-zA-Z0-9_]`, everything else becomes `_`.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' })
        .collect()
}

fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::{L4Outcome, UdpOutcome};

    #[test]
    fn outcome_counters_are_indexed_by_their_declaration_order() {
        for (i, outcome) in L4Outcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, i);
        }
        for (i, outcome) in UdpOutcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, i);
        }
        let metrics = super::Metrics::new();
        metrics.l4_connection(L4Outcome::NoSuchPort);
        metrics.udp_flow(UdpOutcome::Opened);
        let out = metrics.encode();
        assert!(
            out.contains("tidegate_l4_connections_total{outcome=\"no_such_port\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("tidegate_l4_connections_total{outcome=\"forwarded\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("tidegate_l4_udp_flows_total{outcome=\"opened\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("tidegate_capture_set_update_errors_total 0\n"), "{out}");
    }

    use super::*;

    #[test]
    fn filter_metrics_are_exported_per_family_with_a_filter_label() {
        let samples = vec![
            MetricSample {
                filter: "ns/a".into(),
                name: "requests.seen".into(),
                value: MetricValue::Counter(3),
            },
            MetricSample {
                filter: "ns/b".into(),
                name: "requests.seen".into(),
                value: MetricValue::Counter(4),
            },
            MetricSample {
                filter: "ns/a".into(),
                name: "depth".into(),
                value: MetricValue::Gauge(-2),
            },
            MetricSample {
                filter: "ns/a".into(),
                name: "latency".into(),
                value: MetricValue::Histogram {
                    count: 2,
                    sum: 7,
                    buckets: vec![(5, 1), (u64::MAX, 2)],
                },
            },
        ];
        let mut out = String::new();
        encode_filter_metrics(&mut out, &samples);
        assert!(out.contains("# TYPE tidegate_wasm_requests_seen counter\n"), "{out}");
        assert!(
            out.contains("tidegate_wasm_requests_seen_total{filter=\"ns/a\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("tidegate_wasm_requests_seen_total{filter=\"ns/b\"} 4\n"),
            "{out}"
        );
        assert!(out.contains("tidegate_wasm_depth{filter=\"ns/a\"} -2\n"), "{out}");
        assert!(
            out.contains("tidegate_wasm_latency_bucket{filter=\"ns/a\",le=\"+Inf\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("tidegate_wasm_latency_count{filter=\"ns/a\"} 2\n"),
            "{out}"
        );
        assert_eq!(
            out.matches("# TYPE tidegate_wasm_requests_seen").count(),
            1,
            "one family per name"
        );
    }

    #[test]
    fn exposition_still_ends_with_eof() {
        let metrics = Metrics::new();
        assert!(metrics.encode().trim_end().ends_with("# EOF"));
    }
}
