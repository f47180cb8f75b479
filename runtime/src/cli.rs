//! The command line (a contract: scripts, docs and users rely on it; see DESIGN.md).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "tidegate",
    version,
    about = "A per-node Kubernetes proxy whose routing, balancing and policy are sandboxed WASM filters"
)]
pub struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text", env = "TIDEGATE_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Standalone: serve the Kubernetes YAML in DIR, watching it for changes.
    Run(RunArgs),
    /// The quickstart: examples/quickstart with demo backends; prints what to curl.
    Demo(DemoArgs),
    /// The echo backend of the Gateway API conformance suite.
    Echo(EchoArgs),
    /// Parse and translate DIR, print every object's status, exit 1 on errors.
    Validate {
        /// Directory of Kubernetes YAML/JSON.
        dir: PathBuf,
    },
    /// Filter authoring: `tidegate filter new NAME` scaffolds a filter crate.
    #[command(subcommand)]
    Filter(FilterCommand),
    /// Print the computed Gateway API status of a running tidegate as a table.
    Status {
        /// Admin address of the running tidegate.
        #[arg(long, default_value = "127.0.0.1:15000")]
        admin: SocketAddr,
    },
}

#[derive(Debug, Subcommand)]
pub enum FilterCommand {
    /// Scaffold a filter crate (Cargo.toml, src/lib.rs, a test) that builds with tidegate-sdk.
    New(FilterNewArgs),
}

#[derive(Debug, clap::Args)]
pub struct FilterNewArgs {
    /// Crate name (also the directory created, unless --dir is given).
    pub name: String,
    /// Directory to create (default: ./NAME).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Path of the tidegate checkout whose sdk/ the crate depends on (default: the one this
    /// binary was built from).
    #[arg(long)]
    pub tidegate_path: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Directory of Kubernetes YAML/JSON to serve (watched; edits apply within a second).
    #[arg(long)]
    pub config_dir: PathBuf,
    /// Admin HTTP server address.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Address Gateways are served on, unless spec.addresses or --address-pool gives them another.
    #[arg(long, default_value = "0.0.0.0")]
    pub listen_address: IpAddr,
    /// Added to every Gateway listener port when binding (e.g. 8000 serves port 80 on 8080).
    #[arg(long, default_value_t = 0)]
    pub port_offset: u16,
    /// Give every Gateway without spec.addresses its own address from this IPv4 CIDR (e.g.
    /// 127.0.100.0/24), so Gateways can share a port as they do on a cluster.
    #[arg(long)]
    pub address_pool: Option<crate::translate::AddressPool>,
    /// Worker threads (default: one per CPU).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Install the node's transparent capture (an nftables table of tidegate's own, TPROXY and
    /// policy routing; needs root) for the --pod-cidr networks, and remove it on exit.
    #[arg(long, requires = "pod_cidr")]
    pub capture: bool,
    /// A pod network whose TCP is captured (with --capture; repeat for several).
    #[arg(long = "pod-cidr", value_name = "CIDR", requires = "capture")]
    pub pod_cidr: Vec<crate::capture::PodCidr>,
    /// Port of the transparent listener that captured connections are sent to.
    #[arg(long, value_name = "PORT", default_value_t = crate::capture::DEFAULT_PORT)]
    pub capture_port: u16,
    /// Port of the transparent listener for connections addressed to the node itself
    /// (NodePorts).
    #[arg(long, value_name = "PORT", default_value_t = crate::capture::DEFAULT_INBOUND_PORT)]
    pub capture_inbound_port: u16,
    /// With --capture: how long a pod's connection to a Service port that declares no protocol
    /// (no appProtocol, no protocol-prefixed name) may take to send its first bytes before it
    /// is forwarded as plain TCP instead of HTTP (e.g. 500ms, 2s).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = crate::config::wasmfilter::parse_duration)]
    pub protocol_detect_timeout: std::time::Duration,
    /// This node's name, as EndpointSlices' `nodeName` gives it: endpoints on it are local
    /// (traffic policies Local, trafficDistribution). Default: $NODE_NAME, else the host name.
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Admin HTTP server address.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Address the quickstart Gateway binds to.
    #[arg(long, default_value = "127.0.0.1")]
    pub listen_address: IpAddr,
}

#[derive(Debug, clap::Args)]
pub struct EchoArgs {
    /// HTTP/1.1 address to serve.
    #[arg(long)]
    pub listen: SocketAddr,
    /// h2c (HTTP/2 prior knowledge) address to serve.
    #[arg(long)]
    pub h2c_listen: Option<SocketAddr>,
    /// UDP address to serve: each datagram is answered with the client address it came from.
    #[arg(long)]
    pub udp_listen: Option<SocketAddr>,
    /// Namespace reported in responses.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Pod name reported in responses.
    #[arg(long, default_value = "echo")]
    pub pod: String,
    /// Service name reported in responses.
    #[arg(long, default_value = "")]
    pub service: String,
}
