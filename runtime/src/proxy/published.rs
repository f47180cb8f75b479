//! What the control plane hands to workers: a snapshot plus everything derived from it that is
//! costly to build (filter configuration bytes, TLS server configs), built once, not per worker.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::sync::watch;

use super::tls;
use crate::config::ConfigError;
use crate::modules::ResolvedFilter;
use crate::snapshot::{PortProtocol, Snapshot};
use crate::translate::ObjectStatus;

/// One published version of the configuration.
#[derive(Debug, Default)]
pub struct Published {
    pub snapshot: Arc<Snapshot>,
    /// JSON handed to the router's `proxy_on_configure`.
    pub router_config: Arc<[u8]>,
    /// JSON handed to the balancer's `proxy_on_configure`.
    pub balancer_config: Arc<[u8]>,
    /// TLS server configuration per HTTPS socket (address, Gateway port number).
    pub tls: BTreeMap<(IpAddr, u16), Arc<rustls::ServerConfig>>,
    /// User filters in chain order, with their modules (or why a module could not be loaded).
    pub user_filters: Vec<ResolvedFilter>,
    pub statuses: Vec<ObjectStatus>,
    pub errors: Vec<ConfigError>,
}

impl Published {
    pub fn new(
        snapshot: Snapshot,
        user_filters: Vec<ResolvedFilter>,
        statuses: Vec<ObjectStatus>,
        errors: Vec<ConfigError>,
    ) -> Self {
        // Serializing plain data cannot fail; an empty config would make the filters 404.
        let router_config = serde_json::to_vec(&snapshot.router).unwrap_or_default().into();
        let balancer_config = serde_json::to_vec(&snapshot.balancer).unwrap_or_default().into();
        let tls = snapshot
            .ports
            .iter()
            .filter(|p| p.protocol == PortProtocol::Https)
            .map(|p| ((p.address, p.port), tls::server_config(&p.certificates)))
            .collect();
        Self {
            snapshot: Arc::new(snapshot),
            router_config,
            balancer_config,
            tls,
            user_filters,
            statuses,
            errors,
        }
    }
}

/// The sending side: the control plane publishes, every worker watches.
#[derive(Debug, Clone)]
pub struct Publisher {
    tx: watch::Sender<Arc<Published>>,
}

impl Publisher {
    pub fn new() -> Self {
        let (tx, _) = watch::channel(Arc::new(Published::default()));
        Self { tx }
    }

    pub fn publish(&self, published: Published) {
        self.tx.send_replace(Arc::new(published));
    }

    pub fn current(&self) -> Arc<Published> {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.tx.subscribe()
    }
}

impl Default for Publisher {
    fn default() -> Self {
        Self::new()
    }
}
