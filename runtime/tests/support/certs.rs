//! Test PKI: one CA per case, leaf certificates for the TLS Secrets the suite generates at run
//! time; the client trusts exactly that CA.

use std::sync::Arc;

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use serde_json::{Value, json};

pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

/// A leaf certificate and its key, PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    pub fn new() -> Result<TestCa, String> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "tidegate conformance test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
        Ok(TestCa {
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A server certificate for `dns_names` (wildcards such as `*.org` allowed), signed by
    /// this CA.
    pub fn leaf(&self, dns_names: &[String]) -> Result<Leaf, String> {
        let mut params = CertificateParams::new(dns_names.to_vec()).map_err(|e| e.to_string())?;
        let cn = dns_names
            .iter()
            .find(|n| !n.starts_with('*'))
            .or(dns_names.first())
            .cloned()
            .unwrap_or_else(|| "tidegate-test".to_owned());
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        let key = KeyPair::generate().map_err(|e| e.to_string())?;
        let cert = params.signed_by(&key, &self.issuer).map_err(|e| e.to_string())?;
        Ok(Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A root store trusting only this CA.
    pub fn roots(&self) -> Result<Arc<RootCertStore>, String> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.der.clone())
            .map_err(|e| format!("cannot trust the test CA: {e}"))?;
        Ok(Arc::new(roots))
    }
}

/// A `kubernetes.io/tls` Secret holding `leaf`.
pub fn tls_secret(namespace: &str, name: &str, leaf: &Leaf) -> Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace},
        "data": {
            "tls.crt": b64.encode(leaf.cert_pem.as_bytes()),
            "tls.key": b64.encode(leaf.key_pem.as_bytes()),
        },
    })
}

/// The DNS SANs a generated object's `how` text lists (`... DNS SANs ["*", "*.org"] ...`).
pub fn sans_from_description(how: &str) -> Option<Vec<String>> {
    let start = how.find("SANs")?;
    let rest = &how[start..];
    let open = rest.find('[')?;
    let close = rest[open..].find(']')? + open;
    serde_json::from_str::<Vec<String>>(&rest[open..=close]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sans_are_read_from_the_description() {
        let how = "created by the suite at setup (not in YAML): self-signed server certificate+key \
                   with DNS SANs [\"*\", \"*.org\", \"*.wildcard.org\"]; clients trust exactly \
                   this certificate";
        assert_eq!(
            sans_from_description(how),
            Some(vec!["*".into(), "*.org".into(), "*.wildcard.org".into()])
        );
        assert_eq!(sans_from_description("nothing here"), None);
    }

    #[test]
    fn leaf_is_signed_and_encoded() {
        let ca = TestCa::new().expect("ca");
        let leaf = ca.leaf(&["*".into(), "*.org".into()]).expect("leaf");
        assert!(leaf.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(leaf.key_pem.contains("PRIVATE KEY"));
        let secret = tls_secret("ns", "s", &leaf);
        assert_eq!(secret["type"], "kubernetes.io/tls");
        assert!(secret["data"]["tls.crt"].as_str().is_some());
        assert!(ca.roots().is_ok());
    }
}
