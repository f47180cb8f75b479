//! Wiring: config source → translate → publish → workers, plus the admin server. `tidegate run`
//! and `tidegate demo` both end up in [`run`]; tests start the real binary.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context as _;

use crate::admin::{self, AdminState};
use crate::admission::{Admission, FilterAdmission};
use crate::capture::{Capture, CapturePlan, Transport};
use crate::config::dir::{DirSource, POLL_INTERVAL};
use crate::config::{ConfigError, ObjectStore};
use crate::external_names::ExternalNames;
use crate::metrics::Metrics;
use crate::modules::{ModuleRegistry, ResolvedFilter};
use crate::proxy::services::SnapshotServices;
use crate::proxy::tcp::CaptureServing;
use crate::proxy::{DataPlane, DataPlaneOptions, Published, Publisher};
use crate::translate::{self, TranslateOptions};
use crate::wasm::InstanceEnv;
use crate::wasm::{SandboxLimits, WasmRuntime};

/// Options of `tidegate run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config_dir: PathBuf,
    pub admin: SocketAddr,
    pub listen_address: IpAddr,
    pub address_pool: Option<crate::translate::AddressPool>,
    pub port_offset: u16,
    pub workers: usize,
    /// `--capture`: install the node's capture and serve the transparent listener.
    pub capture: Option<CapturePlan>,
    /// This node's name (endpoints with this `nodeName` are local).
    pub node_name: Option<String>,
    /// How long a captured connection to a Service port that declares no protocol may take to
    /// send its first bytes before it is forwarded as TCP.
    pub protocol_detect_timeout: std::time::Duration,
}

/// Runs until `shutdown` completes.
pub async fn run(options: RunOptions, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    if options.capture.is_some() {
        // Before anything else, so a missing `nft` or missing privileges is the error shown.
        Capture::preflight()?;
    }
    let wasm = WasmRuntime::new().context("starting the WASM engine")?;
    let router = wasm
        .load("router", crate::filters::ROUTER_WASM)
        .context("loading the standard router filter")?;
    let unavailable = wasm
        .load("unavailable", crate::filters::UNAVAILABLE_WASM)
        .context("loading the standard stand-in for unloadable filters")?;
    let balancer = wasm
        .load("balancer", crate::filters::BALANCER_WASM)
        .context("loading the standard balancer filter")?;
    let metrics = Arc::new(Metrics::new());
    let publisher = Publisher::new();
    // The transparent listeners are bound before the capture sends anything to them.
    let capture_serving = match &options.capture {
        Some(plan) => {
            let bind = |port: u16, flag: &str| {
                crate::proxy::tcp::bind_transparent(port, options.workers).with_context(|| {
                    format!("cannot bind the transparent listener on port {port}; choose another with {flag}")
                })
            };
            let bind_udp = |port: u16, flag: &str| {
                crate::proxy::udp::bind_transparent(port).with_context(|| {
                    format!("cannot bind the transparent UDP socket on port {port}; choose another with {flag}")
                })
            };
            Some(CaptureServing {
                listeners: crate::proxy::tcp::Listeners {
                    outbound: bind(plan.port, "--capture-port")?,
                    inbound: bind(plan.inbound_port, "--capture-inbound-port")?,
                    udp: Some(bind_udp(plan.port, "--capture-port")?),
                    udp_inbound: Some(bind_udp(plan.inbound_port, "--capture-inbound-port")?),
                },
                pod_cidrs: plan.pod_cidrs.clone(),
                detect_timeout: options.protocol_detect_timeout,
            })
        }
        None => None,
    };
    let data_plane = DataPlane::start(
        DataPlaneOptions {
            port_offset: options.port_offset,
            workers: options.workers,
            limits: SandboxLimits::default(),
        },
        &publisher,
        vec![router, balancer, unavailable],
        metrics.clone(),
        capture_serving,
    )
    .context("starting worker threads")?;
    let admin_listener = tokio::net::TcpListener::bind(options.admin).await.with_context(|| {
        format!(
            "cannot bind the admin server on {}; choose another with --admin",
            options.admin
        )
    })?;
    tracing::info!(admin = %options.admin, config_dir = %options.config_dir.display(), "tidegate started");
    let state = Arc::new(AdminState {
        publisher: publisher.clone(),
        data_plane,
        metrics: metrics.clone(),
    });
    tokio::spawn(admin::serve(admin_listener, state.clone()));
    // The capture is removed when `capture` is dropped (on shutdown, or on an error return).
    let mut capture = match &options.capture {
        Some(plan) => Some(Capture::install(plan).context("installing the capture")?),
        None => None,
    };

    let mut source = DirSource::new(&options.config_dir);
    let translate_options = |now: String| TranslateOptions {
        address: options.listen_address,
        address_pool: options.address_pool,
        config_dir: Some(options.config_dir.clone()),
        now,
        node_name: options.node_name.clone(),
    };
    let mut modules = ModuleRegistry::new(wasm.clone());
    let mut admission = FilterAdmission::default();
    let mut current: Option<ObjectStore> = None;
    let mut version = 0u64;
    let mut previous_errors: Vec<ConfigError> = Vec::new();
    let mut captured = CapturedFrontends::default();
    let mut external_names = ExternalNames::default();
    let watch = async {
        let mut interval = tokio::time::interval(POLL_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            // A changed directory, or a changed module file of a WasmFilter, makes a new version.
            let store = match source.poll() {
                Some(store) => {
                    log_new_errors(&store, &previous_errors);
                    previous_errors = store.errors.clone();
                    current.insert(store)
                }
                None => match current.as_mut() {
                    Some(store) if modules.changed() => store,
                    // An ExternalName backend's DNS answer changed.
                    Some(store) if external_names.refresh().await => store,
                    _ => continue,
                },
            };
            version += 1;
            let mut translation = translate::translate(store, &translate_options(rfc3339(SystemTime::now())));
            external_names.fill(&mut translation.snapshot).await;
            let mut user_filters = modules.resolve(&translation.snapshot.filters);
            add_module_conditions(&mut translation.statuses, &user_filters);
            let services = SnapshotServices::new(Arc::new(translation.snapshot.clone()));
            let env = InstanceEnv {
                services: Some(Arc::new(services)),
                queue_waker: None,
            };
            let admitted = admission.admit(&mut user_filters, &env, &metrics);
            add_admission_conditions(&mut translation.statuses, &admitted);
            let mut snapshot = translation.snapshot;
            snapshot.version = version;
            tracing::info!(
                version,
                objects = store.objects.len(),
                errors = store.errors.len(),
                ports = snapshot.ports.len(),
                "configuration loaded"
            );
            metrics.config_loaded(version, &store.errors);
            let frontends = capture.is_some().then(|| snapshot.services.clone());
            publisher.publish(Published::new(
                snapshot,
                user_filters,
                translation.statuses,
                store.errors.clone(),
            ));
            // New frontends are captured only once every worker serves them, so no captured
            // connection meets a worker that does not know its Service yet.
            let served = wait_until_served(&state, version).await;
            if let (Some(capture), Some(frontends)) = (capture.as_ref(), frontends) {
                captured.apply(capture, &frontends, &metrics);
            }
            if served {
                tracing::info!(version, "configuration in effect");
            }
        }
    };
    tokio::select! {
        _ = watch => {}
        _ = shutdown => tracing::info!("shutting down"),
    }
    if let Some(capture) = capture.as_mut() {
        capture.remove().context("removing the capture")?;
    }
    Ok(())
}

/// Waits until every worker has tried `version` (a few seconds at most). True when every one
/// serves it; false when a filter rejected it somewhere (that worker keeps the one before).
async fn wait_until_served(state: &AdminState, version: u64) -> bool {
    const LIMIT: std::time::Duration = std::time::Duration::from_secs(5);
    let start = tokio::time::Instant::now();
    while state.data_plane.tried_version() < version {
        if start.elapsed() > LIMIT {
            tracing::warn!(
                version,
                "not every worker took configuration version {version} within {LIMIT:?}"
            );
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    state.data_plane.serving_version() >= version
}

/// The frontends the capture's sets hold, so they are rewritten only when they change.
#[derive(Debug, Default)]
struct CapturedFrontends {
    services: Vec<(Transport, std::net::SocketAddrV4)>,
    node_ports: Vec<(Transport, u16)>,
}

impl CapturedFrontends {
    /// Puts `snapshot`'s Service frontends in the capture's sets. Pods' connections are
    /// captured whatever the sets hold; the sets add clients outside the pod networks.
    fn apply(&mut self, capture: &Capture, table: &crate::snapshot::ServiceTable, metrics: &Metrics) {
        let tcp = table.by_address.keys().map(|a| (Transport::Tcp, a));
        let udp = table.udp_by_address.keys().map(|a| (Transport::Udp, a));
        let services: Vec<(Transport, std::net::SocketAddrV4)> = tcp
            .chain(udp)
            .filter_map(|(transport, a)| match a {
                SocketAddr::V4(a) => Some((transport, *a)),
                SocketAddr::V6(_) => None,
            })
            .collect();
        let tcp_node_ports = table.node_ports.keys().map(|p| (Transport::Tcp, *p));
        let udp_node_ports = table.udp_node_ports.keys().map(|p| (Transport::Udp, *p));
        let node_ports: Vec<(Transport, u16)> = tcp_node_ports.chain(udp_node_ports).collect();
        if services == self.services && node_ports == self.node_ports {
            return;
        }
        match capture.update_sets(&services, &node_ports) {
            Ok(()) => {
                tracing::debug!(
                    services = services.len(),
                    node_ports = node_ports.len(),
                    "capture sets updated"
                );
                self.services = services;
                self.node_ports = node_ports;
            }
            Err(e) => {
                metrics.capture_set_error();
                tracing::error!(error = %e, "cannot update the capture's Service sets; traffic from outside the pod networks to new Services is not captured")
            }
        }
    }
}

/// WasmFilter status: ResolvedRefs and Programmed say whether the module loaded.
fn add_module_conditions(statuses: &mut [translate::ObjectStatus], filters: &[ResolvedFilter]) {
    for filter in filters {
        let Some(status) = statuses
            .iter_mut()
            .find(|s| s.kind == "WasmFilter" && format!("{}/{}", s.namespace, s.name) == filter.plan.name)
        else {
            continue;
        };
        let Some(conditions) = status.status["conditions"].as_array_mut() else {
            continue;
        };
        let template = conditions.first().cloned().unwrap_or_default();
        let (ok, reason, message) = match &filter.module {
            Ok(module) => (
                true,
                "ResolvedRefs",
                format!("module loaded (sha256 {})", module.sha256()),
            ),
            Err(e) => (false, "ModuleNotLoaded", e.clone()),
        };
        for (kind, ok_reason) in [
            ("ResolvedRefs", reason),
            ("Programmed", if ok { "Programmed" } else { reason }),
        ] {
            let mut condition = template.clone();
            condition["type"] = kind.into();
            condition["status"] = if ok { "True" } else { "False" }.into();
            condition["reason"] = ok_reason.into();
            condition["message"] = message.clone().into();
            conditions.push(condition);
        }
    }
}

/// WasmFilter status: a filter that cannot start with its spec is not Programmed, and the
/// message says what runs instead.
fn add_admission_conditions(statuses: &mut [translate::ObjectStatus], admitted: &[(String, Admission)]) {
    for (name, admission) in admitted {
        let Admission::Refused { error, kept_previous } = admission else {
            continue;
        };
        let Some(status) = statuses
            .iter_mut()
            .find(|s| s.kind == "WasmFilter" && format!("{}/{}", s.namespace, s.name) == *name)
        else {
            continue;
        };
        let message = if *kept_previous {
            format!("{error}; the last configuration that started keeps running: fix spec.config or spec.limits")
        } else {
            format!(
                "{error}; nothing runs in its place, so its failurePolicy applies (FailClosed: requests in its scope get 500): fix spec.config or spec.limits"
            )
        };
        for condition in status.status["conditions"].as_array_mut().into_iter().flatten() {
            if condition["type"] == "Programmed" {
                condition["status"] = "False".into();
                condition["reason"] = "StartFailed".into();
                condition["message"] = message.clone().into();
            }
        }
    }
}

fn log_new_errors(store: &ObjectStore, previous: &[ConfigError]) {
    for error in store.errors.iter().filter(|e| !previous.contains(e)) {
        tracing::error!(
            kind = error.kind(),
            object = error.object_key().unwrap_or_default(),
            "{error}"
        );
    }
}

/// RFC 3339 UTC time (`2026-11-26T08:00:00Z`), as Kubernetes stamps conditions.
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_683_600);
        assert_eq!(rfc3339(t), "2026-11-26T09:00:00Z");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
