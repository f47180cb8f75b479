//! `tidegate demo`: the quickstart. Serves examples/quickstart (built into the binary) with
//! demo backends started in-process, a self-signed certificate for the HTTPS listener, and
//! prints what to curl. Everything runs through the same path as `tidegate run`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use base64::Engine as _;

use crate::app::{self, RunOptions};
use crate::cli::DemoArgs;
use crate::echo::{self, EchoOptions};

const QUICKSTART: &[(&str, &str)] = &[
    ("gateway.yaml", include_str!("../../examples/quickstart/gateway.yaml")),
    ("routes.yaml", include_str!("../../examples/quickstart/routes.yaml")),
    ("services.yaml", include_str!("../../examples/quickstart/services.yaml")),
];

/// Demo backends: (Service, pods).
const BACKENDS: &[(&str, usize)] = &[("echo-v1", 2), ("echo-v2", 1)];

pub fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("tidegate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _cleanup = RemoveOnDrop(dir.clone());
    for (name, text) in QUICKSTART {
        std::fs::write(dir.join(name), text).with_context(|| format!("writing {name}"))?;
    }
    std::fs::write(dir.join("tls-secret.yaml"), tls_secret()?).context("writing the demo certificate")?;

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let slices = start_backends(args.listen_address).await?;
        std::fs::write(dir.join("endpointslices.yaml"), slices).context("writing EndpointSlices")?;
        let options = RunOptions {
            config_dir: dir.clone(),
            admin: args.admin,
            listen_address: args.listen_address,
            address_pool: None,
            port_offset: 0,
            workers: 2,
            capture: None,
            node_name: None,
            protocol_detect_timeout: crate::proxy::detect::DEFAULT_TIMEOUT,
        };
        tokio::spawn(print_when_ready(args.admin, args.listen_address, dir.clone()));
        app::run(options, crate::commands::shutdown_signal()).await
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Starts every demo pod on a free loopback port and returns their EndpointSlices.
async fn start_backends(ip: IpAddr) -> anyhow::Result<String> {
    let mut slices = String::new();
    for (service, pods) in BACKENDS {
        for index in 0..*pods {
            let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0))
                .context("finding a free port for a demo backend")?;
            let addr = listener.local_addr()?;
            drop(listener);
            let pod = format!("{service}-{index}");
            let options = EchoOptions {
                listen: addr,
                h2c_listen: None,
                udp_listen: None,
                namespace: "demo".into(),
                pod: pod.clone(),
                service: service.to_string(),
            };
            tokio::spawn(async move {
                if let Err(e) = echo::serve(options).await {
                    tracing::error!(%addr, error = %e, "demo backend stopped");
                }
            });
            slices.push_str(&format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {pod}\n  namespace: demo\n  labels:\n    kubernetes.io/service-name: {service}\naddressType: IPv4\nendpoints:\n- addresses: [\"{}\"]\n  conditions: {{ready: true}}\nports:\n- name: http\n  port: {}\n---\n",
                addr.ip(),
                addr.port()
            ));
        }
    }
    Ok(slices)
}

/// A self-signed certificate for the HTTPS listener's hostnames, as a kubernetes.io/tls Secret.
fn tls_secret() -> anyhow::Result<String> {
    let names = vec!["app.demo.test".to_string(), "*.demo.test".to_string()];
    let certified = rcgen::generate_simple_self_signed(names).context("generating the demo certificate")?;
    let b64 = |s: String| base64::engine::general_purpose::STANDARD.encode(s);
    Ok(format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: demo-tls\n  namespace: demo\ntype: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b64(certified.cert.pem()),
        b64(certified.signing_key.serialize_pem())
    ))
}

async fn print_when_ready(admin: SocketAddr, ip: IpAddr, dir: PathBuf) {
    for _ in 0..100 {
        if ready(admin).await {
            let http = SocketAddr::new(ip, 8080);
            println!(
                "\ntidegate quickstart is running (config: {dir}).\n\n\
                 Try:\n\
                 \x20 curl -i http://{http}/                                  # echo-v1 answers (JSON echo of your request)\n\
                 \x20 curl -i -H 'x-canary: yes' http://{http}/               # header match: echo-v2\n\
                 \x20 curl -i http://{http}/api/orders                        # 90/10 split, x-gateway added, x-served-by on the response\n\
                 \x20 curl -i http://{http}/old                               # 301 redirect to /api\n\
                 \x20 curl -ik --resolve app.demo.test:8443:{ip} https://app.demo.test:8443/   # HTTPS (self-signed), h2 by ALPN\n\
                 \x20 curl -i --http2-prior-knowledge http://{http}/          # HTTP/2 cleartext\n\n\
                 Admin: http://{admin}/status  /config_dump  /metrics   (or: tidegate status --admin {admin})\n\
                 Edit the YAML in {dir} and watch it apply live. Ctrl-C stops.\n",
                dir = dir.display()
            );
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    eprintln!("tidegate did not become ready within 10 s; see the log above");
}

async fn ready(admin: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut stream) = tokio::net::TcpStream::connect(admin).await else {
        return false;
    };
    if stream.write_all(b"GET /ready HTTP/1.0\r\n\r\n").await.is_err() {
        return false;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    response.starts_with(b"HTTP/1.0 200") || response.starts_with(b"HTTP/1.1 200")
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(Path::new(&self.0));
    }
}
