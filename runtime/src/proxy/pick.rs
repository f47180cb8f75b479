//! Choosing a Service endpoint on the L4 path (TCP and UDP alike): round robin, or the
//! client's endpoint under `sessionAffinity: ClientIP`; and whether the upstream side keeps the
//! client's address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::capture::PodCidr;
use crate::snapshot::{Frontend, L4Endpoint};

/// Affinity entries are swept for expiry once the table holds this many.
const AFFINITY_SWEEP_AT: usize = 4096;

/// What every L4 thread shares.
#[derive(Debug)]
pub struct Picker {
    /// This node's pod networks: their clients' replies always come back through the node.
    pod_cidrs: Vec<PodCidr>,
    /// Round-robin position.
    next: AtomicUsize,
    affinity: Affinity,
}

impl Picker {
    pub fn new(pod_cidrs: Vec<PodCidr>) -> Self {
        Self {
            pod_cidrs,
            next: AtomicUsize::new(0),
            affinity: Affinity::default(),
        }
    }

    /// Whether `client` is one of this node's pods.
    pub fn is_local_pod(&self, client: IpAddr) -> bool {
        match client {
            IpAddr::V4(ip) => self.pod_cidrs.iter().any(|c| c.contains(ip)),
            IpAddr::V6(_) => false,
        }
    }

    /// `endpoints` (not empty) in the order to try them: the client's remembered endpoint
    /// first under ClientIP affinity, else from the next round-robin position.
    pub fn order(&self, frontend: &Frontend, client: IpAddr, endpoints: &[L4Endpoint]) -> Vec<L4Endpoint> {
        if endpoints.is_empty() {
            return Vec::new();
        }
        let first = self
            .affinity
            .remembered(frontend, client, endpoints)
            .unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed) % endpoints.len());
        endpoints[first..].iter().chain(&endpoints[..first]).copied().collect()
    }

    /// Records that `client` reached `endpoint` (for ClientIP affinity).
    pub fn chosen(&self, frontend: &Frontend, client: IpAddr, endpoint: SocketAddr) {
        self.affinity.remember(frontend, client, endpoint);
    }

    /// Whether the upstream side may keep the client's address: only when the endpoint's
    /// replies come back through this node (it runs here, or the client is one of this node's
    /// pods, whose network the cluster routes here). Otherwise the node's own address is used,
    /// as kube-proxy masquerades, or the replies would bypass the node. Never when the endpoint
    /// is the client itself (hairpin): a packet from its own address is dropped as martian.
    pub fn keep_source(&self, endpoint: &L4Endpoint, from_pod: bool, client: IpAddr) -> bool {
        (endpoint.local || from_pod) && endpoint.addr.ip() != client
    }
}

/// `sessionAffinity: ClientIP`: the endpoint each client last reached on each Service port,
/// kept for the Service's timeout after that connection. Shared by every L4 thread, and kept
/// across configuration versions (an endpoint that is gone is simply not found again).
#[derive(Debug, Default)]
struct Affinity {
    table: Mutex<HashMap<(String, IpAddr), Remembered>>,
}

/// A client's endpoint on one Service port: (endpoint, last connection, timeout).
type Remembered = (SocketAddr, Instant, Duration);

impl Affinity {
    /// The position in `endpoints` of the client's remembered endpoint, if it has one that is
    /// still there and has not expired.
    fn remembered(&self, frontend: &Frontend, client: IpAddr, endpoints: &[L4Endpoint]) -> Option<usize> {
        let timeout = Duration::from_secs(u64::from(frontend.affinity_seconds?));
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let (addr, at, _) = table.get(&(frontend.cluster.clone(), client))?;
        if at.elapsed() > timeout {
            return None;
        }
        endpoints.iter().position(|e| e.addr == *addr)
    }

    fn remember(&self, frontend: &Frontend, client: IpAddr, endpoint: SocketAddr) {
        let Some(seconds) = frontend.affinity_seconds else {
            return;
        };
        let timeout = Duration::from_secs(u64::from(seconds));
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if table.len() >= AFFINITY_SWEEP_AT {
            table.retain(|_, (_, at, timeout)| at.elapsed() <= *timeout);
        }
        table.insert((frontend.cluster.clone(), client), (endpoint, Instant::now(), timeout));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::FrontendKind;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn frontend(affinity_seconds: Option<u32>) -> Frontend {
        Frontend {
            service: "ns/web".into(),
            cluster: "ns/web:80".into(),
            port: 80,
            kind: FrontendKind::ClusterIp,
            protocol: crate::snapshot::ConnectionProtocol::Tcp,
            routed: false,
            from_pods: vec![],
            from_outside: vec![],
            affinity_seconds,
        }
    }

    fn l4(list: &[&str]) -> Vec<L4Endpoint> {
        list.iter()
            .map(|a| L4Endpoint {
                addr: addr(a),
                local: false,
            })
            .collect()
    }

    #[test]
    fn client_ip_affinity_remembers_the_endpoint_per_client_and_service_port() {
        let affinity = Affinity::default();
        let sticky = frontend(Some(60));
        let endpoints = l4(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        let client: IpAddr = "10.244.0.9".parse().unwrap();
        assert_eq!(affinity.remembered(&sticky, client, &endpoints), None);
        affinity.remember(&sticky, client, addr("10.0.0.2:80"));
        assert_eq!(affinity.remembered(&sticky, client, &endpoints), Some(1));
        // Another client, or the endpoint gone from the Service: nothing remembered.
        assert_eq!(
            affinity.remembered(&sticky, "10.244.0.8".parse().unwrap(), &endpoints),
            None
        );
        assert_eq!(
            affinity.remembered(&sticky, client, &l4(&["10.0.0.1:80", "10.0.0.3:80"])),
            None
        );
        // A Service without affinity neither remembers nor finds anything.
        let plain = frontend(None);
        affinity.remember(&plain, "10.244.0.7".parse().unwrap(), addr("10.0.0.3:80"));
        assert_eq!(affinity.remembered(&plain, client, &endpoints), None);
        assert_eq!(affinity.table.lock().unwrap().len(), 1);
    }

    #[test]
    fn client_ip_affinity_expires_after_the_timeout() {
        let affinity = Affinity::default();
        let sticky = frontend(Some(0));
        let endpoints = l4(&["10.0.0.1:80"]);
        let client: IpAddr = "10.244.0.9".parse().unwrap();
        affinity.remember(&sticky, client, addr("10.0.0.1:80"));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(affinity.remembered(&sticky, client, &endpoints), None);
    }

    #[test]
    fn order_rotates_and_puts_the_remembered_endpoint_first() {
        let picker = Picker::new(vec!["10.244.0.0/24".parse().unwrap()]);
        let endpoints = l4(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
        let client: IpAddr = "10.244.0.9".parse().unwrap();
        let plain = frontend(None);
        let firsts: Vec<SocketAddr> = (0..3)
            .map(|_| picker.order(&plain, client, &endpoints)[0].addr)
            .collect();
        assert_eq!(firsts, endpoints.iter().map(|e| e.addr).collect::<Vec<_>>());
        assert_eq!(
            picker.order(&plain, client, &endpoints).len(),
            3,
            "every endpoint stays a fallback"
        );
        let sticky = frontend(Some(60));
        picker.chosen(&sticky, client, addr("10.0.0.3:80"));
        for _ in 0..3 {
            assert_eq!(picker.order(&sticky, client, &endpoints)[0].addr, addr("10.0.0.3:80"));
        }
        assert!(picker.order(&plain, client, &[]).is_empty());
    }

    #[test]
    fn the_source_is_kept_only_where_replies_return_through_the_node() {
        let picker = Picker::new(vec!["10.244.0.0/24".parse().unwrap()]);
        assert!(picker.is_local_pod("10.244.0.9".parse().unwrap()));
        assert!(!picker.is_local_pod("10.244.1.9".parse().unwrap()));
        assert!(!picker.is_local_pod("fd00::1".parse().unwrap()));
        let local = L4Endpoint {
            addr: addr("10.244.0.3:80"),
            local: true,
        };
        let remote = L4Endpoint {
            addr: addr("10.244.1.3:80"),
            local: false,
        };
        let client = "10.0.0.99".parse().unwrap();
        assert!(picker.keep_source(&local, false, client));
        assert!(picker.keep_source(&remote, true, client));
        assert!(!picker.keep_source(&remote, false, client));
        assert!(!picker.keep_source(&local, true, local.addr.ip()), "hairpin");
    }
}
