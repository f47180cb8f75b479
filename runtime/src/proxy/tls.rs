//! TLS termination for HTTPS listeners: one rustls config per port, the certificate chosen by
//! SNI across the listeners sharing that port.

use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::snapshot::ListenerCertificate;

/// A server config offering h2 and http/1.1 by ALPN.
pub fn server_config(certificates: &[ListenerCertificate]) -> Arc<rustls::ServerConfig> {
    let resolver = SniResolver {
        certificates: certificates
            .iter()
            .map(|c| (c.hostname.clone(), c.key.clone()))
            .collect(),
    };
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

#[derive(Debug)]
struct SniResolver {
    certificates: Vec<(Option<String>, Arc<CertifiedKey>)>,
}

impl SniResolver {
    /// Gateway API listener precedence: exact hostname, then the longest wildcard, then a
    /// listener without hostname. A client without SNI gets the catch-all (or the first).
    fn pick(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let catch_all = || {
            self.certificates
                .iter()
                .find(|(h, _)| h.is_none())
                .map(|(_, k)| k.clone())
        };
        let Some(sni) = sni else {
            return catch_all().or_else(|| self.certificates.first().map(|(_, k)| k.clone()));
        };
        let sni = sni.to_ascii_lowercase();
        if let Some((_, key)) = self
            .certificates
            .iter()
            .find(|(h, _)| h.as_deref().is_some_and(|h| h.eq_ignore_ascii_case(&sni)))
        {
            return Some(key.clone());
        }
        let wildcard = self
            .certificates
            .iter()
            .filter_map(|(h, k)| {
                let suffix = h.as_deref()?.strip_prefix('*')?;
                (sni.len() > suffix.len() && sni.ends_with(&suffix.to_ascii_lowercase())).then_some((suffix.len(), k))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, k)| k.clone());
        wildcard.or_else(catch_all)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(client_hello.server_name())
    }
}
