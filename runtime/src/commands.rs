//! What each subcommand does. `anyhow` lives here, at the binary's edge.

use std::io::{Read as _, Write as _};
use std::process::ExitCode;

use anyhow::Context as _;

use crate::app::{self, RunOptions};
use crate::cli::{Command, RunArgs};
use crate::config::dir::DirSource;
use crate::translate::{self, ObjectStatus, TranslateOptions};

pub fn execute(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run(args) => run(args),
        Command::Demo(args) => crate::demo::run(args),
        Command::Echo(args) => echo(args),
        Command::Validate { dir } => validate(&dir),
        Command::Status { admin } => status(admin),
        Command::Filter(crate::cli::FilterCommand::New(args)) => crate::scaffold::new_filter(&args),
    }
}

/// The control plane runs on the main thread's current-thread runtime; workers have their own.
fn control_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the control-plane runtime")
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let options = RunOptions {
        config_dir: args.config_dir,
        admin: args.admin,
        listen_address: args.listen_address,
        address_pool: args.address_pool,
        port_offset: args.port_offset,
        workers,
        capture: args.capture.then_some(crate::capture::CapturePlan {
            pod_cidrs: args.pod_cidr,
            port: args.capture_port,
            inbound_port: args.capture_inbound_port,
        }),
        node_name: args.node_name.or_else(host_name),
        protocol_detect_timeout: args.protocol_detect_timeout,
    };
    control_runtime()?.block_on(app::run(options, shutdown_signal()))?;
    Ok(ExitCode::SUCCESS)
}

/// The kernel's host name (what the kubelet registers as the node name by default).
fn host_name() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_lowercase())
        .filter(|name| !name.is_empty())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = ctrl_c.await;
}

fn echo(args: crate::cli::EchoArgs) -> anyhow::Result<ExitCode> {
    let options = crate::echo::EchoOptions {
        listen: args.listen,
        h2c_listen: args.h2c_listen,
        udp_listen: args.udp_listen,
        namespace: args.namespace,
        pod: args.pod,
        service: args.service,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        tokio::select! {
            result = crate::echo::serve(options) => result.context("echo server failed"),
            _ = shutdown_signal() => Ok(()),
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

fn validate(dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(dir.is_dir(), "{} is not a directory", dir.display());
    let store = DirSource::new(dir).poll().unwrap_or_default();
    let translation = translate::translate(
        &store,
        &TranslateOptions {
            address: [0, 0, 0, 0].into(),
            address_pool: None,
            config_dir: Some(dir.to_path_buf()),
            now: app::rfc3339(std::time::SystemTime::now()),
            node_name: None,
        },
    );
    let mut out = std::io::stdout().lock();
    print_statuses(&mut out, &translation.statuses)?;
    let mut problems = store.errors.len();
    for error in &store.errors {
        writeln!(out, "ERROR {error}")?;
    }
    for status in &translation.statuses {
        for (_, condition) in false_conditions(&status.status) {
            problems += 1;
            writeln!(out, "ERROR {} {}: {condition}", status.kind, qualified(status))?;
        }
    }
    writeln!(out, "{} objects, {problems} problems", store.objects.len())?;
    Ok(if problems > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn status(admin: std::net::SocketAddr) -> anyhow::Result<ExitCode> {
    let mut stream = std::net::TcpStream::connect(admin)
        .with_context(|| format!("cannot reach tidegate's admin server at {admin}; is it running? (--admin)"))?;
    write!(stream, "GET /status HTTP/1.0\r\nHost: {admin}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    let value: serde_json::Value =
        serde_json::from_str(body).context("the admin server answered something that is not status JSON")?;
    let statuses: Vec<ObjectStatus> = value["objects"]
        .as_array()
        .map(|objects| {
            objects
                .iter()
                .map(|o| ObjectStatus {
                    api_version: o["apiVersion"].as_str().unwrap_or_default().into(),
                    kind: o["kind"].as_str().unwrap_or_default().into(),
                    namespace: o["namespace"].as_str().unwrap_or_default().into(),
                    name: o["name"].as_str().unwrap_or_default().into(),
                    status: o["status"].clone(),
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = std::io::stdout().lock();
    writeln!(out, "configuration version {}", value["version"])?;
    print_statuses(&mut out, &statuses)?;
    for error in value["errors"].as_array().into_iter().flatten() {
        writeln!(out, "ERROR {}", error["message"].as_str().unwrap_or_default())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn qualified(status: &ObjectStatus) -> String {
    if status.namespace.is_empty() {
        status.name.clone()
    } else {
        format!("{}/{}", status.namespace, status.name)
    }
}

/// One line per object: its kind, name and top-level conditions (per parent for routes).
fn print_statuses(out: &mut impl std::io::Write, statuses: &[ObjectStatus]) -> std::io::Result<()> {
    writeln!(out, "{:<14} {:<48} CONDITIONS", "KIND", "NAME")?;
    for status in statuses {
        let conditions = summarize(&status.status);
        writeln!(out, "{:<14} {:<48} {}", status.kind, qualified(status), conditions)?;
    }
    Ok(())
}

fn summarize(status: &serde_json::Value) -> String {
    let list = |conditions: &serde_json::Value| {
        conditions
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                format!(
                    "{}={}({})",
                    c["type"].as_str().unwrap_or("?"),
                    c["status"].as_str().unwrap_or("?"),
                    c["reason"].as_str().unwrap_or("?")
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    if let Some(parents) = status["parents"].as_array() {
        return parents
            .iter()
            .map(|p| {
                format!(
                    "[{}] {}",
                    p["parentRef"]["name"].as_str().unwrap_or("?"),
                    list(&p["conditions"])
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
    }
    list(&status["conditions"])
}

/// Every condition with status False, with where it sits.
fn false_conditions(status: &serde_json::Value) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut scan = |scope: String, conditions: &serde_json::Value| {
        for c in conditions.as_array().into_iter().flatten() {
            // Conflicted=False is the healthy state; every other condition is healthy when True.
            if c["status"] == "False" && c["type"] != "Conflicted" {
                found.push((
                    scope.clone(),
                    format!(
                        "{scope}{}={} ({}): {}",
                        c["type"].as_str().unwrap_or("?"),
                        "False",
                        c["reason"].as_str().unwrap_or("?"),
                        c["message"].as_str().unwrap_or("")
                    ),
                ));
            }
        }
    };
    scan(String::new(), &status["conditions"]);
    for l in status["listeners"].as_array().into_iter().flatten() {
        scan(
            format!("listener {}: ", l["name"].as_str().unwrap_or("?")),
            &l["conditions"],
        );
    }
    for p in status["parents"].as_array().into_iter().flatten() {
        scan(
            format!("parent {}: ", p["parentRef"]["name"].as_str().unwrap_or("?")),
            &p["conditions"],
        );
    }
    found
}
