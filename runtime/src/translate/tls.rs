//! Turning a `kubernetes.io/tls` Secret into a certificate rustls can serve.

use std::sync::Arc;

use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use crate::config::objects::Secret;

/// Parses `tls.crt` and `tls.key` (base64 `data`, or plain `stringData`). The error says what
/// is wrong in words a user can act on.
pub fn certified_key(secret: &Secret) -> Result<Arc<CertifiedKey>, String> {
    let crt = secret_value(secret, "tls.crt")?;
    let key = secret_value(secret, "tls.key")?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&crt)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt is not a PEM certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no PEM certificate".to_string());
    }
    let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| format!("tls.key is not a PEM private key: {e}"))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("tls.key is not a supported key type (RSA, ECDSA P-256/P-384, Ed25519): {e}"))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified
        .keys_match()
        .map_err(|e| format!("tls.key does not match the certificate in tls.crt: {e}"))?;
    Ok(Arc::new(certified))
}

fn secret_value(secret: &Secret, key: &str) -> Result<Vec<u8>, String> {
    if let Some(plain) = secret.string_data.get(key) {
        return Ok(plain.as_bytes().to_vec());
    }
    let encoded = secret
        .data
        .get(key)
        .ok_or_else(|| format!("the Secret has no `{key}` entry"))?;
    base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|e| format!("`data.{key}` is not valid base64: {e}"))
}
