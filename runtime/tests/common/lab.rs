//! A network-namespace lab: one node namespace and pod namespaces wired to it with veth pairs
//! and Calico-style /32 routes (see research/peers-lab.md). Pods' default route points into the
//! node, so a ClusterIP that nobody owns reaches the node's prerouting hook, where the capture
//! sees it.
//!
//! Every lab has unique names (`tg-<pid>-<n>-...`) and its own subnet, so tests run in
//! parallel; it is deleted on drop (also on panic), and labs of a killed earlier test run are
//! deleted when the next one starts. Needs root, `ip` and `nft`; without them the test fails
//! with a message saying so (CI runs as root and installs them).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tidegate");
const PREFIX: &str = "tg-";

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// A pod: its namespace and address.
#[derive(Debug, Clone)]
pub struct Pod {
    pub netns: String,
    pub ip: String,
}

pub struct Lab {
    /// `tg-<pid>-<n>`: every namespace and interface name starts with it.
    pub name: String,
    pub node: String,
    /// The node's address on every pod link (the pods' gateway).
    pub node_ip: String,
    /// `10.X.Y.0/24`, this lab's own pod network.
    pub pod_cidr: String,
    pub pods: Vec<Pod>,
    pub dir: tempfile::TempDir,
}

impl Lab {
    /// A node namespace and `pods` pod namespaces (addresses .2, .3, ...).
    pub fn new(pods: usize) -> Self {
        require_root_and_tools();
        remove_leftovers();
        let pid = std::process::id();
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{pid}-{n}");
        // Unique per lab, so parallel labs never share addresses.
        let net = format!("10.{}.{}", 64 + pid % 128, n % 250);
        let mut lab = Self {
            node: format!("{name}-node"),
            node_ip: format!("{net}.1"),
            pod_cidr: format!("{net}.0/24"),
            pods: Vec::new(),
            dir: tempfile::tempdir().expect("temp dir"),
            name,
        };
        sh(&["ip", "netns", "add", &lab.node]);
        sh(&["ip", "-n", &lab.node, "link", "set", "lo", "up"]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &lab.node,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        for i in 0..pods {
            let pod = Pod {
                netns: format!("{}-pod{i}", lab.name),
                ip: format!("{net}.{}", i + 2),
            };
            // Registered first, so a failure below still deletes it.
            lab.pods.push(pod.clone());
            let veth = format!("{}v{i}", short(&lab.name));
            sh(&["ip", "netns", "add", &pod.netns]);
            sh(&["ip", "-n", &pod.netns, "link", "set", "lo", "up"]);
            sh(&[
                "ip", "-n", &lab.node, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                &pod.netns,
            ]);
            sh(&[
                "ip",
                "-n",
                &lab.node,
                "addr",
                "add",
                &format!("{}/32", lab.node_ip),
                "dev",
                &veth,
            ]);
            sh(&["ip", "-n", &lab.node, "link", "set", &veth, "up"]);
            sh(&[
                "ip",
                "-n",
                &lab.node,
                "route",
                "add",
                &format!("{}/32", pod.ip),
                "dev",
                &veth,
            ]);
            sh(&[
                "ip",
                "-n",
                &pod.netns,
                "addr",
                "add",
                &format!("{}/32", pod.ip),
                "dev",
                "eth0",
            ]);
            sh(&["ip", "-n", &pod.netns, "link", "set", "eth0", "up"]);
            sh(&[
                "ip",
                "-n",
                &pod.netns,
                "route",
                "add",
                &format!("{}/32", lab.node_ip),
                "dev",
                "eth0",
            ]);
            sh(&[
                "ip",
                "-n",
                &pod.netns,
                "route",
                "add",
                "default",
                "via",
                &lab.node_ip,
                "dev",
                "eth0",
            ]);
        }
        lab
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs a command in `netns` to completion.
    pub fn exec(&self, netns: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", netns])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {netns} {args:?}: {e}"))
    }

    /// Starts a program in `netns` (`env` first, so variables can be set), logging to
    /// `<dir>/<log>.log`. `ip netns exec` and `env` exec the program, so the child's pid is the
    /// program's own.
    pub fn spawn(&self, netns: &str, log: &str, vars: &[&str], args: &[&str]) -> Proc {
        let path = self.path(&format!("{log}.log"));
        let file = std::fs::File::create(&path).expect("create log file");
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "env"])
            .args(vars)
            .args(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log handle"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {args:?} in {netns}: {e}"));
        Proc {
            child: Some(child),
            name: log.to_string(),
            log: path,
        }
    }

    /// nftables tables in the node namespace, one per line (`table ip tidegate`).
    pub fn node_tables(&self) -> String {
        stdout(&self.exec(&self.node, &["nft", "list", "tables"]))
    }

    /// The node namespace's policy-routing rules (`ip rule`).
    pub fn node_rules(&self) -> String {
        stdout(&self.exec(&self.node, &["ip", "-4", "rule"]))
    }

    /// Routes of one routing table of the node namespace.
    pub fn node_routes(&self, table: &str) -> String {
        stdout(&self.exec(&self.node, &["ip", "-4", "route", "show", "table", table]))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let mut namespaces: Vec<String> = self.pods.iter().map(|p| p.netns.clone()).collect();
        namespaces.push(self.node.clone());
        for netns in namespaces {
            delete_netns(&netns);
        }
    }
}

/// A process in a namespace: killed when dropped; its log is printed when a test fails.
pub struct Proc {
    child: Option<Child>,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `text`.
    pub fn wait_for_log(&self, text: &str, limit: Duration) {
        let start = Instant::now();
        while !self.log().contains(text) {
            assert!(
                start.elapsed() < limit,
                "{} did not log {text:?} within {limit:?}; log:\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (`TERM`, `KILL`, ...) and waits for the exit; returns the exit status.
    pub fn stop(&mut self, signal: &str, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("process still running");
        sh(&["kill", &format!("-{signal}"), &child.id().to_string()]);
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait for child") {
                return status;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not exit within {limit:?} of SIG{signal}; log:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.name, self.log());
        }
    }
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs a command that must succeed.
fn sh(args: &[&str]) {
    let output = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Interface names have at most 15 bytes: `tg<pid><n>` without dashes, plus `v<i>`.
fn short(name: &str) -> String {
    let compact: String = name.chars().filter(|c| *c != '-').collect();
    compact
        .chars()
        .rev()
        .take(12)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}

/// Kills what still runs in a namespace, then deletes it (veths, rules and routes go with it).
fn delete_netns(netns: &str) {
    if let Ok(output) = Command::new("ip").args(["netns", "pids", netns]).output() {
        for pid in stdout(&output).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", netns]).status();
}

/// Deletes the labs of test runs that were killed (their pid is no longer alive).
fn remove_leftovers() {
    let Ok(output) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in stdout(&output).lines() {
        let Some(netns) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = netns
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing {netns}, left by a killed test run (pid {pid})");
            delete_netns(netns);
        }
    }
}

fn require_root_and_tools() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1))
        == Some("0");
    assert!(
        root,
        "the node-capture lab tests build network namespaces and need root: run them as root (CI does)"
    );
    for (tool, package) in [
        ("ip", "iproute2"),
        ("nft", "nftables"),
        ("curl", "curl"),
        ("setpriv", "util-linux"),
    ] {
        let found = Command::new("sh")
            .args([
                "-c",
                &format!("command -v {tool} || test -x /usr/sbin/{tool} || test -x /sbin/{tool}"),
            ])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "the node-capture lab tests need `{tool}`: apt-get install {package}"
        );
    }
}
