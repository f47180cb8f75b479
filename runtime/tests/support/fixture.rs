//! The world of one case: a config directory with the case's objects, one `tidegate echo` process
//! per Deployment replica, EndpointSlices pointing at them, and `tidegate run` serving it all.
//! Everything is torn down when the fixture drops (processes are killed by their guards, the
//! directory is removed).

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::RootCertStore;
use serde_json::{Value, json};

use super::case::{Case, Step, split_ns_name};
use super::certs::{TestCa, sans_from_description, tls_secret};
use super::client::{self, ClientRequest};
use super::procs::Proc;
use super::status::{CONTROLLER_NAME, StatusDoc};
use super::util;

pub const GATEWAY_CLASS: &str = "tidegate";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const ECHO_START_TIMEOUT: Duration = Duration::from_secs(15);
/// echo-basic's well-known container ports.
const ECHO_HTTP_TARGET: i64 = 3000;
const ECHO_H2C_TARGET: i64 = 3001;

/// One echo backend process standing in for one pod.
pub struct EchoPod {
    pub deployment: String,
    pub namespace: String,
    pub pod: String,
    pub http_port: u16,
    pub h2c_port: u16,
    pub proc: Proc,
}

impl EchoPod {
    /// The port this pod serves a container port (targetPort) on, if it is one of echo-basic's.
    fn port_for_target(&self, target: i64) -> Option<u16> {
        match target {
            ECHO_HTTP_TARGET => Some(self.http_port),
            ECHO_H2C_TARGET => Some(self.h2c_port),
            _ => None,
        }
    }
}

/// Kind/namespace/name of a file in the config directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ObjKey {
    kind: String,
    namespace: String,
    name: String,
}

impl ObjKey {
    fn of(object: &Value) -> ObjKey {
        ObjKey {
            kind: object["kind"].as_str().unwrap_or("").to_owned(),
            namespace: object["metadata"]["namespace"].as_str().unwrap_or("").to_owned(),
            name: object["metadata"]["name"].as_str().unwrap_or("").to_owned(),
        }
    }
}

pub struct Fixture {
    root: tempfile::TempDir,
    pub config_dir: PathBuf,
    pub echoes: Vec<EchoPod>,
    pub tidegate: Option<Proc>,
    pub admin: SocketAddr,
    pub port_offset: u16,
    pub roots: Arc<RootCertStore>,
    files: BTreeMap<ObjKey, PathBuf>,
    seq: usize,
    /// Gateway manifests by `ns/name`, for listener names and ports.
    gateways: BTreeMap<String, Value>,
    /// Gateways in order of first appearance.
    gateway_order: Vec<String>,
    /// The loopback address each Gateway is served on (see `assign_gateway_addresses`).
    gateway_ips: BTreeMap<String, Ipv4Addr>,
    /// Every Gateway listener port of the case (steps included).
    listener_ports: Vec<u16>,
    /// The case's manifests, placeholders substituted.
    manifests: Vec<Value>,
}

impl Fixture {
    /// Writes the case's objects, starts its echo backends and publishes their EndpointSlices.
    pub async fn prepare(case: &Case) -> Result<Fixture, String> {
        let mut root = tempfile::Builder::new()
            .prefix("tidegate-conformance-")
            .tempdir()
            .map_err(|e| format!("temp dir: {e}"))?;
        // TIDEGATE_CONFORMANCE_KEEP=1 keeps each case's config directory for inspection.
        if std::env::var_os("TIDEGATE_CONFORMANCE_KEEP").is_some() {
            root.disable_cleanup(true);
            super::runner::say(&format!("  {}: config in {}", case.name, root.path().display()));
        }
        let config_dir = root.path().join("config");
        std::fs::create_dir(&config_dir).map_err(|e| format!("config dir: {e}"))?;
        std::fs::create_dir(root.path().join("staging")).map_err(|e| format!("staging dir: {e}"))?;
        let ca = TestCa::new()?;
        let mut fx = Fixture {
            config_dir,
            root,
            echoes: Vec::new(),
            tidegate: None,
            admin: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)),
            port_offset: 0,
            roots: ca.roots()?,
            files: BTreeMap::new(),
            seq: 0,
            gateways: BTreeMap::new(),
            gateway_order: Vec::new(),
            gateway_ips: BTreeMap::new(),
            listener_ports: Vec::new(),
            manifests: Vec::new(),
        };

        let manifests: Vec<Value> = case.manifests.iter().map(substitute).collect();
        fx.manifests = manifests.clone();
        let step_manifests: Vec<Value> = case
            .steps
            .iter()
            .chain(&case.later_steps)
            .flat_map(step_objects)
            .collect();
        for m in manifests.iter().chain(&step_manifests) {
            fx.note_gateway(m);
        }
        fx.assign_gateway_addresses();

        fx.write_object(&json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": GATEWAY_CLASS},
            "spec": {"controllerName": CONTROLLER_NAME},
        }))?;

        let mut manual_slices = Vec::new();
        for m in &manifests {
            if m["kind"] == "EndpointSlice" && m["endpoints"].as_array().is_none_or(Vec::is_empty) {
                manual_slices.push(m.clone());
                continue;
            }
            fx.write_object(m)?;
        }

        for generated in &case.runtime_generated_objects {
            if generated.kind != "Secret" {
                return Err(format!(
                    "runtime generated object {} {} is not supported",
                    generated.kind, generated.name
                ));
            }
            // The described SANs, plus every SNI the case sends: Go accepts `*.org` for
            // `example.org`, webpki (rustls) refuses wildcards directly above a top-level
            // domain, so the names are listed explicitly as well.
            let mut sans = sans_from_description(&generated.how).unwrap_or_else(|| vec!["*".into()]);
            for sni in case.requests.iter().filter_map(|r| r.sni.as_ref()) {
                if !sans.contains(sni) {
                    sans.push(sni.clone());
                }
            }
            let leaf = ca.leaf(&sans)?;
            let ns = generated.namespace.as_deref().unwrap_or("default");
            fx.write_object(&tls_secret(ns, &generated.name, &leaf))?;
        }

        fx.start_echoes(&manifests).await?;
        fx.write_endpoint_slices(&manifests, &manual_slices)?;
        Ok(fx)
    }

    fn note_gateway(&mut self, m: &Value) {
        if m["kind"] != "Gateway" {
            return;
        }
        let key = ObjKey::of(m);
        for listener in m["spec"]["listeners"].as_array().into_iter().flatten() {
            if let Some(port) = listener["port"].as_u64().and_then(|p| u16::try_from(p).ok())
                && !self.listener_ports.contains(&port)
            {
                self.listener_ports.push(port);
            }
        }
        let id = format!("{}/{}", key.namespace, key.name);
        if !self.gateway_order.contains(&id) {
            self.gateway_order.push(id.clone());
        }
        self.gateways.insert(id, m.clone());
    }

    /// Upstream gives every Gateway its own address. Here all share the loopback interface, so
    /// when two Gateways have a listener on the same port, each Gateway gets its own loopback IP
    /// (127.0.0.1, 127.0.0.2, … in order of appearance), requested through the Gateway's
    /// `spec.addresses` (type IPAddress), and requests to that Gateway go to that IP.
    fn assign_gateway_addresses(&mut self) {
        self.gateway_ips = gateway_addresses(&self.gateway_order, &self.gateways);
    }

    /// The loopback address Gateway `ns/name` is served on.
    pub fn gateway_ip(&self, gw: &str) -> Ipv4Addr {
        let (ns, name) = split_ns_name(gw, "default");
        self.gateway_ips
            .get(&format!("{ns}/{name}"))
            .copied()
            .unwrap_or(Ipv4Addr::LOCALHOST)
    }

    /// A Gateway manifest as written: with `spec.addresses` when it needs its own address.
    fn gateway_as_written(&self, m: &Value) -> Value {
        let key = ObjKey::of(m);
        let ip = self.gateway_ip(&format!("{}/{}", key.namespace, key.name));
        let mut m = m.clone();
        if ip != Ipv4Addr::LOCALHOST && m["spec"].get("addresses").is_none() {
            m["spec"]["addresses"] = json!([{"type": "IPAddress", "value": ip.to_string()}]);
        }
        m
    }

    /// Listener names of a Gateway as its spec declares them.
    pub fn spec_listener_names(&self, gw: &str) -> Option<Vec<String>> {
        let (ns, name) = split_ns_name(gw, "default");
        let m = self.gateways.get(&format!("{ns}/{name}"))?;
        Some(
            m["spec"]["listeners"]
                .as_array()?
                .iter()
                .filter_map(|l| l["name"].as_str().map(str::to_owned))
                .collect(),
        )
    }

    /// Writes (or replaces) one object's file, atomically (staged, then renamed).
    fn write_object(&mut self, object: &Value) -> Result<(), String> {
        let gateway;
        let object = if object["kind"] == "Gateway" {
            gateway = self.gateway_as_written(object);
            &gateway
        } else {
            object
        };
        let key = ObjKey::of(object);
        let yaml = serde_yaml::to_string(object).map_err(|e| format!("YAML for {key:?}: {e}"))?;
        let path = match self.files.get(&key) {
            Some(path) => path.clone(),
            None => {
                self.seq += 1;
                let mut stem = format!("{:03}-{}-{}-{}", self.seq, key.kind, key.namespace, key.name)
                    .to_ascii_lowercase()
                    .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-' && c != '.', "_");
                stem.truncate(120);
                self.config_dir.join(format!("{stem}.yaml"))
            }
        };
        let staging = self
            .root
            .path()
            .join("staging")
            .join(path.file_name().unwrap_or_default());
        std::fs::write(&staging, yaml).map_err(|e| format!("write {}: {e}", staging.display()))?;
        std::fs::rename(&staging, &path).map_err(|e| format!("rename into {}: {e}", path.display()))?;
        self.files.insert(key, path);
        Ok(())
    }

    fn delete_object(&mut self, kind: &str, namespace: &str, name: &str) -> Result<(), String> {
        let key = ObjKey {
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        let path = self
            .files
            .remove(&key)
            .ok_or_else(|| format!("step deletes {kind} {namespace}/{name}, which was never written"))?;
        std::fs::remove_file(&path).map_err(|e| format!("remove {}: {e}", path.display()))
    }

    /// Applies one step's mutation to the config directory.
    pub fn apply_step(&mut self, step: &Step) -> Result<(), String> {
        match step.action.as_str() {
            "apply_manifests" | "apply" | "update" | "create" => {
                for object in step_objects(step) {
                    if object["kind"] == "Gateway" {
                        self.note_gateway(&object);
                    }
                    self.write_object(&object)?;
                }
                Ok(())
            }
            "delete" => {
                let object = step
                    .object
                    .as_ref()
                    .ok_or_else(|| format!("step {} deletes nothing", step.step))?;
                let kind = object["kind"].as_str().unwrap_or("");
                let name = object["name"]
                    .as_str()
                    .or_else(|| object["metadata"]["name"].as_str())
                    .unwrap_or("");
                let ns = object["namespace"]
                    .as_str()
                    .or_else(|| object["metadata"]["namespace"].as_str())
                    .unwrap_or("");
                self.delete_object(kind, ns, name)
            }
            other => Err(format!("unsupported step action {other:?} (step {})", step.step)),
        }
    }

    async fn start_echoes(&mut self, manifests: &[Value]) -> Result<(), String> {
        let services: Vec<&Value> = manifests.iter().filter(|m| m["kind"] == "Service").collect();
        let mut pending = Vec::new();
        for d in manifests.iter().filter(|m| m["kind"] == "Deployment") {
            let key = ObjKey::of(d);
            let labels = &d["spec"]["template"]["metadata"]["labels"];
            let service = services
                .iter()
                .find(|s| ObjKey::of(s).namespace == key.namespace && selects(&s["spec"]["selector"], labels))
                .map(|s| ObjKey::of(s).name)
                .unwrap_or_default();
            let replicas = d["spec"]["replicas"].as_u64().unwrap_or(1);
            let template_hash = util::random_suffix(10);
            for _ in 0..replicas {
                let pod = format!("{}-{}-{}", key.name, template_hash, util::random_suffix(5));
                let args = vec![
                    "echo".to_owned(),
                    "--listen".to_owned(),
                    "127.0.0.1:0".to_owned(),
                    "--h2c-listen".to_owned(),
                    "127.0.0.1:0".to_owned(),
                    "--namespace".to_owned(),
                    key.namespace.clone(),
                    "--pod".to_owned(),
                    pod.clone(),
                    "--service".to_owned(),
                    service.clone(),
                ];
                let proc = Proc::spawn(format!("echo {pod}"), &util::tidegate_bin(), &args, None)
                    .map_err(|e| e.to_string())?;
                pending.push((key.name.clone(), key.namespace.clone(), pod, proc));
            }
        }
        for (deployment, namespace, pod, mut proc) in pending {
            let http_port = announced_port(&mut proc, "http").await?;
            let h2c_port = announced_port(&mut proc, "h2c").await?;
            self.echoes.push(EchoPod {
                deployment,
                namespace,
                pod,
                http_port,
                h2c_port,
                proc,
            });
        }
        Ok(())
    }

    /// One EndpointSlice per (Service, selected pod): address 127.0.0.1, ports named like the
    /// Service's ports, numbered with the port that pod really listens on. Manual slices shipped
    /// empty are filled with the infra-backend-v1 pods of their namespace, as upstream does.
    fn write_endpoint_slices(&mut self, manifests: &[Value], manual: &[Value]) -> Result<(), String> {
        let deployments: Vec<&Value> = manifests.iter().filter(|m| m["kind"] == "Deployment").collect();
        let mut slices = Vec::new();
        for svc in manifests.iter().filter(|m| m["kind"] == "Service") {
            let key = ObjKey::of(svc);
            let selector = &svc["spec"]["selector"];
            if selector.as_object().is_none_or(|s| s.is_empty()) {
                continue;
            }
            for d in &deployments {
                let dkey = ObjKey::of(d);
                if dkey.namespace != key.namespace || !selects(selector, &d["spec"]["template"]["metadata"]["labels"]) {
                    continue;
                }
                for (i, pod) in self
                    .pods_of_deployment(&dkey.namespace, &dkey.name)
                    .into_iter()
                    .enumerate()
                {
                    let ports: Vec<Value> = svc["spec"]["ports"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|p| {
                            let target = target_port(p, d)?;
                            let port = pod.port_for_target(target)?;
                            let mut out = json!({
                                "name": p["name"].as_str().unwrap_or(""),
                                "port": port,
                                "protocol": p["protocol"].as_str().unwrap_or("TCP"),
                            });
                            if let Some(app) = p["appProtocol"].as_str() {
                                out["appProtocol"] = json!(app);
                            }
                            Some(out)
                        })
                        .collect();
                    slices.push(endpoint_slice(
                        &format!("{}-{}-{}", key.name, i, util::random_suffix(5)),
                        &key.namespace,
                        &key.name,
                        pod,
                        ports,
                    ));
                }
            }
        }
        for m in manual {
            let key = ObjKey::of(m);
            if m["addressType"] != "IPv4" {
                // Nothing listens on IPv6 here; keep the slice as shipped (empty).
                slices.push(m.clone());
                continue;
            }
            let service = m["metadata"]["labels"]["kubernetes.io/service-name"]
                .as_str()
                .unwrap_or("")
                .to_owned();
            for (i, pod) in self
                .pods_of_deployment(&key.namespace, "infra-backend-v1")
                .into_iter()
                .enumerate()
            {
                let ports: Vec<Value> = m["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| {
                        let port = pod.port_for_target(p["port"].as_i64()?)?;
                        let mut out = p.clone();
                        out["port"] = json!(port);
                        Some(out)
                    })
                    .collect();
                let mut slice = endpoint_slice(&format!("{}-{i}", key.name), &key.namespace, &service, pod, ports);
                if let Some(labels) = m["metadata"]["labels"].as_object() {
                    slice["metadata"]["labels"] = json!(labels);
                }
                slices.push(slice);
            }
        }
        for slice in &slices {
            self.write_object(slice)?;
        }
        Ok(())
    }

    pub fn pods_of_deployment(&self, namespace: &str, deployment: &str) -> Vec<&EchoPod> {
        self.echoes
            .iter()
            .filter(|e| e.namespace == namespace && e.deployment == deployment)
            .collect()
    }

    /// The echo pods behind Service `namespace/name` (those its EndpointSlices point at, i.e.
    /// the Deployment(s) it selects; falls back to a Deployment of the same name).
    pub fn pods_of_service(&self, namespace: &str, name: &str) -> Vec<&EchoPod> {
        let manifests = &self.manifests;
        let selector = manifests
            .iter()
            .find(|m| m["kind"] == "Service" && ObjKey::of(m).namespace == namespace && ObjKey::of(m).name == name)
            .map(|s| s["spec"]["selector"].clone());
        let deployments: Vec<String> = manifests
            .iter()
            .filter(|m| m["kind"] == "Deployment" && ObjKey::of(m).namespace == namespace)
            .filter(|d| {
                selector.as_ref().is_some_and(|s| {
                    s.as_object().is_some_and(|o| !o.is_empty())
                        && selects(s, &d["spec"]["template"]["metadata"]["labels"])
                })
            })
            .map(|d| ObjKey::of(d).name)
            .collect();
        let pods: Vec<&EchoPod> = self
            .echoes
            .iter()
            .filter(|e| e.namespace == namespace && deployments.contains(&e.deployment))
            .collect();
        if pods.is_empty() {
            self.pods_of_deployment(namespace, name)
        } else {
            pods
        }
    }

    /// Starts `tidegate run` on the config directory and waits for `/ready`. Retries with other
    /// ports when a port was taken between choosing and binding it.
    pub async fn start_tidegate(&mut self) -> Result<(), String> {
        let mut last_err = String::new();
        for _ in 0..3 {
            self.tidegate = None;
            self.port_offset = self.choose_offset()?;
            let taken: Vec<u16> = self
                .listener_ports
                .iter()
                .map(|p| p.saturating_add(self.port_offset))
                .collect();
            self.admin = SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::LOCALHOST,
                util::free_port_below_ephemeral(&taken).ok_or("no free admin port")?,
            ));
            let args = vec![
                "run".to_owned(),
                "--config-dir".to_owned(),
                self.config_dir.display().to_string(),
                "--admin".to_owned(),
                self.admin.to_string(),
                "--listen-address".to_owned(),
                "127.0.0.1".to_owned(),
                "--port-offset".to_owned(),
                self.port_offset.to_string(),
            ];
            let proc =
                Proc::spawn("tidegate run", &util::tidegate_bin(), &args, Some(400)).map_err(|e| e.to_string())?;
            self.tidegate = Some(proc);
            match self.wait_ready().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let in_use = e.contains("in use") || e.contains("AddrInUse");
                    last_err = e;
                    if !in_use {
                        break;
                    }
                }
            }
        }
        Err(last_err)
    }

    /// An offset that puts every listener port of the case on a currently free port, below
    /// the kernel's ephemeral range (32768+) so client connections cannot take those ports
    /// between the check and tidegate's bind.
    fn choose_offset(&self) -> Result<u16, String> {
        const LOW: u64 = 10_000;
        const HIGH: u64 = 32_768;
        let max = u64::from(self.listener_ports.iter().copied().max().unwrap_or(0));
        let span = HIGH.saturating_sub(max).saturating_sub(LOW);
        if span == 0 {
            return Err(format!("listener port {max} leaves no room for a port offset"));
        }
        for _ in 0..100 {
            let offset = u16::try_from(LOW + util::random_below(span)).unwrap_or(10_000);
            let ok = self.gateway_order.iter().all(|id| {
                let ip = self.gateway_ip(id);
                self.gateways[id]["spec"]["listeners"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|l| l["port"].as_u64().and_then(|p| u16::try_from(p).ok()))
                    .all(|p| util::tcp_port_free(ip, p.saturating_add(offset)))
            });
            if ok {
                return Ok(offset);
            }
        }
        Err("no port offset with all listener ports free".to_owned())
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let proc = self.tidegate.as_mut().ok_or("tidegate is not running")?;
            if let Some(status) = proc.exited() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Err(format!(
                    "tidegate run exited ({status}) before /ready: {}",
                    proc.output_tail(25)
                ));
            }
            let last = match self.admin_get("/ready").await {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => format!("/ready answered {code}: {}", body.trim()),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                let tail = self.tidegate.as_ref().map(|p| p.output_tail(25)).unwrap_or_default();
                return Err(format!("tidegate not ready within {READY_TIMEOUT:?} ({last}); {tail}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// GET on the admin server: (status, body).
    pub async fn admin_get(&self, path: &str) -> Result<(u16, String), String> {
        let req = ClientRequest {
            connect: self.admin,
            tls: None,
            http2: false,
            host: self.admin.to_string(),
            method: "GET".into(),
            path: path.into(),
            headers: Vec::new(),
        };
        let resp = client::send(&req, Duration::from_secs(5)).await?;
        Ok((resp.status, String::from_utf8_lossy(&resp.body).into_owned()))
    }

    pub async fn fetch_status(&self) -> Result<StatusDoc, String> {
        let (code, body) = self.admin_get("/status").await?;
        if code != 200 {
            return Err(format!("/status answered {code}: {}", body.trim()));
        }
        serde_json::from_str(&body).map_err(|e| format!("/status is not the expected JSON: {e}"))
    }

    /// Where a listener of Gateway `gw` written as `port` is really bound.
    pub fn listener_addr(&self, gw: &str, port: u16) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(
            self.gateway_ip(gw),
            port.saturating_add(self.port_offset),
        ))
    }
}

/// Loopback address per Gateway (`ns/name` in `order`): all 127.0.0.1, unless two Gateways
/// have a listener on the same port; then the i-th Gateway gets 127.0.0.(i+1).
fn gateway_addresses(order: &[String], gateways: &BTreeMap<String, Value>) -> BTreeMap<String, Ipv4Addr> {
    let mut owners: BTreeMap<u64, &str> = BTreeMap::new();
    let mut shared = false;
    for id in order {
        let listeners = gateways.get(id).and_then(|g| g["spec"]["listeners"].as_array());
        for port in listeners.into_iter().flatten().filter_map(|l| l["port"].as_u64()) {
            match owners.get(&port) {
                Some(owner) if *owner != id.as_str() => shared = true,
                _ => {
                    owners.insert(port, id);
                }
            }
        }
    }
    order
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let host = if shared { u8::try_from(i + 1).unwrap_or(1) } else { 1 };
            (id.clone(), Ipv4Addr::new(127, 0, 0, host))
        })
        .collect()
}

/// Replaces the upstream placeholders in a manifest.
fn substitute(manifest: &Value) -> Value {
    let text = manifest.to_string().replace("{GATEWAY_CLASS_NAME}", GATEWAY_CLASS);
    serde_json::from_str(&text).unwrap_or_else(|_| manifest.clone())
}

fn step_objects(step: &Step) -> Vec<Value> {
    let mut objects: Vec<Value> = step.manifests.iter().map(substitute).collect();
    if let Some(object) = &step.object
        && object.get("metadata").is_some()
    {
        objects.push(substitute(object));
    }
    objects
}

/// A Service selector selects a pod template when every selector label is on the template.
fn selects(selector: &Value, labels: &Value) -> bool {
    match selector.as_object() {
        Some(sel) if !sel.is_empty() => sel.iter().all(|(k, v)| labels.get(k) == Some(v)),
        _ => false,
    }
}

/// The container port a Service port targets (numbers; names resolved through the Deployment's
/// container ports; absent = the Service port).
fn target_port(service_port: &Value, deployment: &Value) -> Option<i64> {
    match &service_port["targetPort"] {
        Value::Number(n) => n.as_i64(),
        Value::String(name) => {
            if let Ok(n) = name.parse::<i64>() {
                return Some(n);
            }
            deployment["spec"]["template"]["spec"]["containers"]
                .as_array()?
                .iter()
                .flat_map(|c| c["ports"].as_array().into_iter().flatten())
                .find(|p| p["name"].as_str() == Some(name))
                .and_then(|p| p["containerPort"].as_i64())
        }
        _ => service_port["port"].as_i64(),
    }
}

fn endpoint_slice(name: &str, namespace: &str, service: &str, pod: &EchoPod, ports: Vec<Value>) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"kubernetes.io/service-name": service},
        },
        "addressType": "IPv4",
        "endpoints": [{
            "addresses": ["127.0.0.1"],
            "conditions": {"ready": true, "serving": true, "terminating": false},
            "targetRef": {"kind": "Pod", "namespace": namespace, "name": pod.pod},
        }],
        "ports": ports,
    })
}

/// Reads the port an echo process announced (`Starting server, listening on port N (what)`).
pub async fn announced_port(proc: &mut Proc, what: &str) -> Result<u16, String> {
    let suffix = format!("({what})");
    let line = proc
        .wait_for_stdout(
            |l| l.starts_with("Starting server, listening on port ") && l.ends_with(&suffix),
            ECHO_START_TIMEOUT,
        )
        .await?;
    line.trim_start_matches("Starting server, listening on port ")
        .trim_end_matches(&suffix)
        .trim()
        .parse()
        .map_err(|e| format!("{}: bad port in {line:?}: {e}", proc.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_and_target_ports() {
        let labels = json!({"app": "a", "tier": "x"});
        assert!(selects(&json!({"app": "a"}), &labels));
        assert!(!selects(&json!({"app": "b"}), &labels));
        assert!(!selects(&json!({}), &labels));
        assert!(!selects(&Value::Null, &labels));
        let d = json!({"spec": {"template": {"spec": {"containers": [{"ports": [{"name": "web", "containerPort": 3000}]}]}}}});
        assert_eq!(target_port(&json!({"port": 8080, "targetPort": 3001}), &d), Some(3001));
        assert_eq!(target_port(&json!({"port": 8080, "targetPort": "web"}), &d), Some(3000));
        assert_eq!(target_port(&json!({"port": 3000}), &d), Some(3000));
    }

    #[test]
    fn gateways_sharing_a_port_get_their_own_address() {
        let gw = |ports: &[u16]| json!({"spec": {"listeners": ports.iter().map(|p| json!({"name": "l", "port": p})).collect::<Vec<_>>()}});
        let order = vec!["ns/a".to_owned(), "ns/b".to_owned()];
        let separate = BTreeMap::from([("ns/a".to_owned(), gw(&[80])), ("ns/b".to_owned(), gw(&[8080]))]);
        let ips = gateway_addresses(&order, &separate);
        assert!(ips.values().all(|ip| *ip == Ipv4Addr::LOCALHOST));
        let shared = BTreeMap::from([("ns/a".to_owned(), gw(&[80, 443])), ("ns/b".to_owned(), gw(&[80]))]);
        let ips = gateway_addresses(&order, &shared);
        assert_eq!(ips["ns/a"], Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(ips["ns/b"], Ipv4Addr::new(127, 0, 0, 2));
        // Two listeners of one Gateway on one port (hostname-split) do not count as sharing.
        let one = BTreeMap::from([("ns/a".to_owned(), gw(&[80, 80]))]);
        assert_eq!(gateway_addresses(&order[..1], &one)["ns/a"], Ipv4Addr::LOCALHOST);
    }

    #[test]
    fn placeholders_are_replaced() {
        let m = json!({"spec": {"gatewayClassName": "{GATEWAY_CLASS_NAME}"}});
        assert_eq!(substitute(&m)["spec"]["gatewayClassName"], "tidegate");
    }
}
