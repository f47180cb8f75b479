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
    /// `10.X.Y.0/25`, this lab's own pod network (the node's).
    pub pod_cidr: String,
    pub pods: Vec<Pod>,
    /// A second node, when asked for: its namespace, address and pods (in `10.X.Y.128/25`),
    /// linked to the first node; each node routes the other's pod network to it.
    pub remote: Option<RemoteNode>,
    pub dir: tempfile::TempDir,
}

/// The second node of a two-node lab.
#[derive(Debug, Clone)]
pub struct RemoteNode {
    pub netns: String,
    /// Its address (on the link to the first node and on its pod links).
    pub ip: String,
    pub pod_cidr: String,
    pub pods: Vec<Pod>,
}

impl Lab {
    /// A node namespace and `pods` pod namespaces (addresses .2, .3, ...).
    pub fn new(pods: usize) -> Self {
        Self::build(pods, None)
    }

    /// Two nodes: `pods` pods on the first (where tidegate runs), `remote_pods` on the second
    /// (addresses .130, .131, ...).
    pub fn two_nodes(pods: usize, remote_pods: usize) -> Self {
        Self::build(pods, Some(remote_pods))
    }

    fn build(pods: usize, remote_pods: Option<usize>) -> Self {
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
            pod_cidr: format!("{net}.0/25"),
            pods: Vec::new(),
            remote: None,
            dir: tempfile::tempdir().expect("temp dir"),
            name,
        };
        add_node(&lab.node);
        for i in 0..pods {
            let pod = Pod {
                netns: format!("{}-pod{i}", lab.name),
                ip: format!("{net}.{}", i + 2),
            };
            // Registered first, so a failure below still deletes it.
            lab.pods.push(pod.clone());
            add_pod(&lab.node, &lab.node_ip, &pod, &format!("{}v{i}", short(&lab.name)));
        }
        if let Some(remote_pods) = remote_pods {
            let mut remote = RemoteNode {
                netns: format!("{}-node2", lab.name),
                ip: format!("{net}.129"),
                pod_cidr: format!("{net}.128/25"),
                pods: Vec::new(),
            };
            lab.remote = Some(remote.clone());
            add_node(&remote.netns);
            // The link between the nodes, each end with its node's address (Calico style), and
            // each node's pod network routed to the other node.
            let (here, there) = (format!("{}n1", short(&lab.name)), format!("{}n2", short(&lab.name)));
            ip(
                &lab.node,
                &format!("link add {here} type veth peer name {there} netns {}", remote.netns),
            );
            for (netns, link, own, peer, peer_pods) in [
                (&lab.node, &here, &lab.node_ip, &remote.ip, &remote.pod_cidr),
                (&remote.netns, &there, &remote.ip, &lab.node_ip, &lab.pod_cidr),
            ] {
                ip(netns, &format!("addr add {own}/32 dev {link}"));
                ip(netns, &format!("link set {link} up"));
                ip(netns, &format!("route add {peer}/32 dev {link}"));
                ip(netns, &format!("route add {peer_pods} via {peer} dev {link}"));
            }
            for i in 0..remote_pods {
                let pod = Pod {
                    netns: format!("{}-rpod{i}", lab.name),
                    ip: format!("{net}.{}", i + 130),
                };
                remote.pods.push(pod.clone());
                lab.remote = Some(remote.clone());
                add_pod(&remote.netns, &remote.ip, &pod, &format!("{}r{i}", short(&lab.name)));
            }
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

    /// `tidegate echo` in `pod` on `port`, answering as pod `name`; returns once it listens.
    pub fn echo(&self, pod: &Pod, port: u16, name: &str) -> Proc {
        let echo = self.spawn(
            &pod.netns,
            &format!("echo-{name}"),
            &[],
            &[BIN, "echo", "--listen", &format!("{}:{port}", pod.ip), "--pod", name],
        );
        echo.wait_for_log(&format!("listening on port {port}"), STARTUP);
        echo
    }

    /// `tidegate echo` answering UDP in `pod` on `port` (and HTTP on `port`): each datagram
    /// is answered with `pod=<name> peer=<client address> port=<client port>`.
    pub fn udp_echo(&self, pod: &Pod, port: u16, name: &str) -> Proc {
        let server = self.spawn(
            &pod.netns,
            &format!("udp-{name}"),
            &[],
            &[
                BIN,
                "echo",
                "--listen",
                &format!("{}:{port}", pod.ip),
                "--udp-listen",
                &format!("{}:{port}", pod.ip),
                "--pod",
                name,
            ],
        );
        server.wait_for_log(&format!("listening on port {port} (udp)"), STARTUP);
        server
    }

    /// Sends `datagrams` from `netns` to `target` on one UDP socket (one flow), `gap` apart,
    /// and returns the replies, one per line.
    pub fn udp_query(&self, netns: &str, target: &str, datagrams: usize, gap: Duration) -> Vec<String> {
        let script = format!(
            "(for i in $(seq {datagrams}); do echo q$i; sleep {}; done) | socat -t1 - UDP4:{target}",
            gap.as_secs_f32()
        );
        let output = self.exec(netns, &["sh", "-c", &script]);
        stdout(&output).lines().map(str::to_string).collect()
    }

    /// `tidegate run --capture` in the node namespace, serving `config` (file name → text),
    /// with `extra` arguments; returns once the configuration is served.
    pub fn tidegate(&self, log: &str, config: &[(&str, String)], extra: &[&str]) -> Proc {
        let dir = self.path("config");
        std::fs::create_dir_all(&dir).expect("config dir");
        for (name, text) in config {
            std::fs::write(dir.join(name), text).expect("write config");
        }
        let mut args = vec![
            BIN,
            "run",
            "--config-dir",
            dir.to_str().expect("utf-8 path"),
            "--capture",
            "--pod-cidr",
            &self.pod_cidr,
            "--admin",
            "127.0.0.1:15000",
            "--workers",
            "1",
        ];
        args.extend(extra);
        let tidegate = self.spawn(
            &self.node,
            log,
            &["TIDEGATE_LOG=info,tidegate::proxy::tcp=debug,tidegate::proxy::captured=debug"],
            &args,
        );
        tidegate.wait_for_log("configuration in effect", STARTUP);
        tidegate
    }

    /// curl in `netns`: (exit code, body and status on its own last line, stderr, time taken).
    pub fn curl(&self, netns: &str, url: &str) -> Curl {
        let start = Instant::now();
        let output = self.exec(netns, &["curl", "-sS", "--max-time", "5", "-w", "\n%{http_code}", url]);
        Curl {
            code: output.status.code().unwrap_or(-1),
            out: stdout(&output),
            err: String::from_utf8_lossy(&output.stderr).into_owned(),
            took: start.elapsed(),
        }
    }

    /// A sample of tidegate's `/metrics` (admin on 127.0.0.1:15000 in the node namespace), by
    /// its full name with labels (`tidegate_l4_connections_total{outcome="forwarded"}`).
    pub fn metric(&self, sample: &str) -> f64 {
        let output = self.exec(&self.node, &["curl", "-sS", "http://127.0.0.1:15000/metrics"]);
        let text = stdout(&output);
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {sample} in /metrics:\n{text}"))
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
        if let Some(remote) = &self.remote {
            namespaces.extend(remote.pods.iter().map(|p| p.netns.clone()));
            namespaces.push(remote.netns.clone());
        }
        namespaces.push(self.node.clone());
        for netns in namespaces {
            delete_netns(&netns);
        }
    }
}

/// How long a process in the lab may take to start.
pub const STARTUP: Duration = Duration::from_secs(30);

/// What one curl run gave.
#[derive(Debug)]
pub struct Curl {
    pub code: i32,
    pub out: String,
    pub err: String,
    pub took: Duration,
}

impl Curl {
    /// A 200 from the echo backend; returns the pod that answered.
    #[track_caller]
    pub fn echoed_by(&self) -> String {
        assert_eq!(self.code, 0, "curl failed: {self:?}");
        assert!(self.out.ends_with("\n200"), "not a 200: {self:?}");
        let body = self.out.rsplit_once('\n').map(|(b, _)| b).unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        json["pod"].as_str().unwrap_or_default().to_string()
    }

    /// A reset: curl sees it as a refused connect (7) or as a reset after connecting (56),
    /// depending on whether the RST beats its connect() returning.
    #[track_caller]
    pub fn assert_refused(&self) {
        assert!(
            (self.code == 7 && self.err.contains("Couldn't connect"))
                || (self.code == 56 && self.err.contains("reset")),
            "expected a reset (curl 7 or 56), got {self:?}"
        );
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

    /// The client address an echo backend logged for each request (`... to client (IP:PORT)`).
    pub fn clients_seen(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| {
                l.split_once("to client (")
                    .map(|(_, rest)| rest.trim_end_matches(')').to_string())
            })
            .filter_map(|addr| addr.rsplit_once(':').map(|(ip, _)| ip.to_string()))
            .collect()
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

/// A node namespace: loopback up, forwarding on.
fn add_node(netns: &str) {
    sh(&["ip", "netns", "add", netns]);
    ip(netns, "link set lo up");
    sh(&["ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);
}

/// A pod namespace on `node`: a veth whose node end carries the node's address, a /32 route
/// each way, and the pod's default route through the node.
fn add_pod(node: &str, node_ip: &str, pod: &Pod, veth: &str) {
    sh(&["ip", "netns", "add", &pod.netns]);
    ip(&pod.netns, "link set lo up");
    ip(
        node,
        &format!("link add {veth} type veth peer name eth0 netns {}", pod.netns),
    );
    ip(node, &format!("addr add {node_ip}/32 dev {veth}"));
    ip(node, &format!("link set {veth} up"));
    ip(node, &format!("route add {}/32 dev {veth}", pod.ip));
    ip(&pod.netns, &format!("addr add {}/32 dev eth0", pod.ip));
    ip(&pod.netns, "link set eth0 up");
    ip(&pod.netns, &format!("route add {node_ip}/32 dev eth0"));
    ip(&pod.netns, &format!("route add default via {node_ip} dev eth0"));
}

/// `ip -n <netns> <words>`, which must succeed.
fn ip(netns: &str, words: &str) {
    let mut args = vec!["ip", "-n", netns];
    args.extend(words.split_whitespace());
    sh(&args);
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
        ("socat", "socat"),
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
