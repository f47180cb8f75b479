//! The balancer's configuration: what the host hands to `proxy_on_configure` as JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Every cluster the router may choose, with its endpoints.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BalancerConfig {
    /// Cluster name (as the router writes it to `tidegate.cluster`) → cluster.
    #[serde(default)]
    pub clusters: BTreeMap<String, Cluster>,
}

/// One cluster: a Service port and the endpoints behind it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Cluster {
    /// Load-balancing algorithm; only `RoundRobin` exists today.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Endpoints (`ip:port`); only ready ones are listed.
    #[serde(default)]
    pub endpoints: Vec<String>,
}

/// How an endpoint is chosen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Algorithm {
    #[default]
    RoundRobin,
}
