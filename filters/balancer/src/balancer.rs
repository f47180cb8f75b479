//! Clusters with their pickers: the per-request choice, independent of proxy-wasm.

use std::collections::HashMap;
use std::fmt;

use crate::config::BalancerConfig;
use crate::picker::{Picker, new_picker};

/// Why no endpoint could be chosen; the shell answers 503 with this as the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoEndpoint {
    pub cluster: String,
}

impl fmt::Display for NoEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "no healthy endpoints for cluster {}", self.cluster)
    }
}

impl std::error::Error for NoEndpoint {}

struct ClusterState {
    endpoints: Vec<String>,
    picker: Box<dyn Picker>,
}

/// Every cluster of one configuration, with its picker's state.
#[derive(Default)]
pub struct Balancer {
    clusters: HashMap<String, ClusterState>,
}

impl Balancer {
    /// Builds the pickers; `seed` varies their starting points (see [`new_picker`]).
    pub fn new(config: &BalancerConfig, seed: u64) -> Self {
        let clusters = config
            .clusters
            .iter()
            .enumerate()
            .map(|(i, (name, cluster))| {
                // One seed per cluster, so clusters sharing endpoints do not move in lockstep.
                let seed = seed.wrapping_add((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                (
                    name.clone(),
                    ClusterState {
                        endpoints: cluster.endpoints.clone(),
                        picker: new_picker(cluster.algorithm, seed),
                    },
                )
            })
            .collect();
        Balancer { clusters }
    }

    /// Parses and builds from the JSON the host passes to `proxy_on_configure` (an empty buffer
    /// is a configuration without clusters).
    pub fn from_json(json: &[u8], seed: u64) -> Result<Self, serde_json::Error> {
        if json.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let config: BalancerConfig = serde_json::from_slice(json)?;
        Ok(Self::new(&config, seed))
    }

    /// The endpoint (`ip:port`) for the next request to `cluster`.
    pub fn pick(&mut self, cluster: &str) -> Result<&str, NoEndpoint> {
        let no_endpoint = || NoEndpoint {
            cluster: cluster.to_string(),
        };
        let state = self.clusters.get_mut(cluster).ok_or_else(no_endpoint)?;
        let index = state.picker.pick(&state.endpoints).ok_or_else(no_endpoint)?;
        state.endpoints.get(index).map(String::as_str).ok_or_else(no_endpoint)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn balancer() -> Balancer {
        let config = json!({"clusters": {
            "ns/web:80": {"algorithm": "RoundRobin", "endpoints": ["10.0.0.1:8080", "10.0.0.2:8080"]},
            "ns/api:80": {"endpoints": ["10.0.1.1:9090"]},
            "ns/empty:80": {"endpoints": []},
        }});
        Balancer::from_json(config.to_string().as_bytes(), 0).expect("valid config")
    }

    #[test]
    fn round_robin_per_cluster() {
        let mut b = balancer();
        let web: Vec<String> = (0..4)
            .map(|_| b.pick("ns/web:80").expect("endpoints").to_string())
            .collect();
        assert_eq!(web[0], web[2]);
        assert_eq!(web[1], web[3]);
        assert_ne!(web[0], web[1]);
        // Another cluster's picks do not advance this one.
        let before = b.pick("ns/web:80").expect("endpoints").to_string();
        assert_eq!(b.pick("ns/api:80"), Ok("10.0.1.1:9090"));
        assert_eq!(b.pick("ns/api:80"), Ok("10.0.1.1:9090"));
        assert_ne!(b.pick("ns/web:80").expect("endpoints"), before);
    }

    #[test]
    fn unknown_or_empty_cluster_is_an_error_naming_it() {
        let mut b = balancer();
        let err = b.pick("ns/empty:80").expect_err("no endpoints");
        assert_eq!(err.to_string(), "no healthy endpoints for cluster ns/empty:80");
        assert_eq!(b.pick("nope").expect_err("unknown").cluster, "nope");
    }

    #[test]
    fn configuration_errors_and_defaults() {
        assert!(Balancer::from_json(b"{", 0).is_err());
        assert!(
            Balancer::from_json(br#"{"clusters": {"c": {"algorithm": "Magic"}}}"#, 0).is_err(),
            "unknown algorithm is refused"
        );
        let mut empty = Balancer::from_json(b"", 0).expect("empty is valid");
        assert!(empty.pick("any").is_err());
    }

    #[test]
    fn seeds_spread_starting_points() {
        let config: BalancerConfig =
            serde_json::from_value(json!({"clusters": {"c": {"endpoints": ["a:1", "b:1", "c:1", "d:1"]}}}))
                .expect("valid config");
        let firsts: std::collections::BTreeSet<String> = (0..4)
            .map(|seed| Balancer::new(&config, seed).pick("c").expect("endpoints").to_string())
            .collect();
        assert_eq!(firsts.len(), 4, "{firsts:?}");
    }
}
