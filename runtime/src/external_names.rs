//! ExternalName Services as route backends: the control plane resolves their DNS names and
//! puts the addresses in the snapshot as the cluster's endpoints, so the data plane never
//! waits on DNS during a request.
//!
//! Each name is looked up again every [`REFRESH`] (the system resolver gives no TTL); a new
//! configuration version is published only when an answer changed. A lookup that fails or
//! times out keeps the last addresses it had (a DNS hiccup must not take a working backend
//! away); a name never resolved has no endpoint, so its requests get 503.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::snapshot::Snapshot;

/// How often a name is looked up again.
pub const REFRESH: Duration = Duration::from_secs(30);
/// How long one lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// The last answer for each (name, port).
#[derive(Debug, Default)]
pub struct ExternalNames {
    answers: BTreeMap<(String, u16), Answer>,
}

#[derive(Debug)]
struct Answer {
    addresses: Vec<SocketAddr>,
    at: Instant,
}

impl ExternalNames {
    /// Fills the endpoints of every ExternalName cluster of `snapshot` (the router's balancer
    /// configuration too), looking up names not seen yet. Names no longer used are forgotten.
    pub async fn fill(&mut self, snapshot: &mut Snapshot) {
        let wanted: Vec<(String, u16)> = snapshot
            .clusters
            .values()
            .filter_map(|plan| plan.external_name.clone())
            .collect();
        self.answers.retain(|key, _| wanted.contains(key));
        let new: Vec<&(String, u16)> = wanted.iter().filter(|k| !self.answers.contains_key(*k)).collect();
        // All at once: one slow name must not hold the others (or the next version) back.
        let answers = futures::future::join_all(new.iter().map(|(name, port)| lookup(name, *port))).await;
        for (key, addresses) in new.into_iter().zip(answers) {
            self.answers.insert(
                key.clone(),
                Answer {
                    addresses: addresses.unwrap_or_default(),
                    at: Instant::now(),
                },
            );
        }
        for (name, plan) in snapshot.clusters.iter_mut() {
            let Some(key) = &plan.external_name else { continue };
            let addresses = self.answers.get(key).map(|a| a.addresses.clone()).unwrap_or_default();
            if let Some(cluster) = snapshot.balancer.clusters.get_mut(name) {
                cluster.endpoints = addresses.iter().map(SocketAddr::to_string).collect();
            }
            plan.endpoints = addresses;
        }
    }

    /// Looks up again the names whose answer is older than [`REFRESH`]; true when an answer
    /// changed (the caller then publishes a new version).
    pub async fn refresh(&mut self) -> bool {
        let mut changed = false;
        let due: Vec<(String, u16)> = self
            .answers
            .iter()
            .filter(|(_, a)| a.at.elapsed() >= REFRESH)
            .map(|(k, _)| k.clone())
            .collect();
        let answers = futures::future::join_all(due.iter().map(|(name, port)| lookup(name, *port))).await;
        for (key, fresh) in due.into_iter().zip(answers) {
            let Some(answer) = self.answers.get_mut(&key) else {
                continue;
            };
            answer.at = Instant::now();
            if let Some(addresses) = fresh
                && addresses != answer.addresses
            {
                tracing::info!(
                    name = key.0,
                    port = key.1,
                    ?addresses,
                    "ExternalName resolves to new addresses"
                );
                answer.addresses = addresses;
                changed = true;
            }
        }
        changed
    }
}

/// The addresses of `name:port`, sorted (so answers compare whatever order DNS gives); `None`
/// when the lookup fails or times out.
async fn lookup(name: &str, port: u16) -> Option<Vec<SocketAddr>> {
    match tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((name, port))).await {
        Ok(Ok(addresses)) => {
            let mut addresses: Vec<SocketAddr> = addresses.collect();
            addresses.sort();
            addresses.dedup();
            Some(addresses)
        }
        Ok(Err(e)) => {
            tracing::warn!(name, port, error = %e, "cannot resolve the ExternalName Service's name");
            None
        }
        Err(_) => {
            tracing::warn!(name, port, timeout = ?LOOKUP_TIMEOUT, "resolving the ExternalName Service's name timed out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{ClusterPlan, UpstreamProtocol};

    fn snapshot(names: &[(&str, &str, u16)]) -> Snapshot {
        let mut snapshot = Snapshot::default();
        for (cluster, name, port) in names {
            snapshot.clusters.insert(
                cluster.to_string(),
                ClusterPlan {
                    protocol: UpstreamProtocol::Http1,
                    endpoints: vec![],
                    external_name: Some((name.to_string(), *port)),
                },
            );
            snapshot
                .balancer
                .clusters
                .insert(cluster.to_string(), Default::default());
        }
        snapshot
    }

    #[tokio::test]
    async fn names_become_endpoints_of_the_cluster_and_the_balancer() {
        let mut names = ExternalNames::default();
        let mut snapshot = snapshot(&[("ns/ext:8080", "127.0.0.1", 8080), ("ns/bad:80", "", 80)]);
        names.fill(&mut snapshot).await;
        assert_eq!(
            snapshot.clusters["ns/ext:8080"].endpoints,
            ["127.0.0.1:8080".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(snapshot.balancer.clusters["ns/ext:8080"].endpoints, ["127.0.0.1:8080"]);
        assert!(snapshot.clusters["ns/bad:80"].endpoints.is_empty());
        // Nothing is due yet, so nothing changes; a name no longer used is forgotten.
        assert!(!names.refresh().await);
        let mut fewer = self::snapshot(&[("ns/ext:8080", "127.0.0.1", 8080)]);
        names.fill(&mut fewer).await;
        assert_eq!(names.answers.len(), 1);
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_the_last_addresses_and_a_new_answer_is_a_change() {
        let mut names = ExternalNames::default();
        let mut snapshot = snapshot(&[("ns/ext:8080", "127.0.0.1", 8080)]);
        names.fill(&mut snapshot).await;
        let key = ("127.0.0.1".to_string(), 8080);
        let stale = Instant::now() - REFRESH;
        // Same answer when due: no change.
        names.answers.get_mut(&key).unwrap().at = stale;
        assert!(!names.refresh().await);
        // A different answer than the one held: a change, and the new addresses are used.
        let answer = names.answers.get_mut(&key).unwrap();
        answer.at = stale;
        answer.addresses = vec!["10.0.0.1:8080".parse().unwrap()];
        assert!(names.refresh().await);
        names.fill(&mut snapshot).await;
        assert_eq!(
            snapshot.clusters["ns/ext:8080"].endpoints,
            ["127.0.0.1:8080".parse::<SocketAddr>().unwrap()]
        );
        // A lookup that fails keeps what it had.
        // (An empty name fails in the resolver itself: no query leaves the machine.)
        names.answers.insert(
            (String::new(), 80),
            Answer {
                addresses: vec!["10.0.0.2:80".parse().unwrap()],
                at: stale,
            },
        );
        assert!(!names.refresh().await);
        assert_eq!(
            names.answers[&(String::new(), 80)].addresses,
            ["10.0.0.2:80".parse::<SocketAddr>().unwrap()]
        );
    }
}
