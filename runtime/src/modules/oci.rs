//! Pulling a module from an OCI registry (`spec.module.oci`) with the distribution API: the
//! manifest (OCI image manifest or Docker v2), then the module's blob, verified by digest.
//!
//! Two image formats are understood, as Istio does:
//! - the Wasm OCI artifact: a layer of media type `application/vnd.module.wasm.content.layer.v1+wasm`
//!   holding the module itself (what `oras push` or `wasm-to-oci` produce);
//! - Istio's compat format: one layer that is a tar archive containing `plugin.wasm`. Only
//!   uncompressed tar layers are read; gzip-compressed ones are refused with an error that says
//!   how to publish the module instead.
//!
//! Registries on loopback addresses and `localhost` are spoken to over plain HTTP, all others
//! over HTTPS. Anonymous access is supported, including the Bearer token flow public registries
//! use (a 401 with `WWW-Authenticate: Bearer realm=...` → token → retry); credentials are not.

use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, StatusCode, Uri};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::http as client;

/// The media type of a layer that is a Wasm module.
pub const WASM_LAYER: &str = "application/vnd.module.wasm.content.layer.v1+wasm";
#[cfg(test)]
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
#[cfg(test)]
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// The manifests asked for (an index is recognized to refuse it with a precise error).
const ACCEPT_MANIFESTS: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// A parsed image reference: `[registry/]repository[:tag][@sha256:digest]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` as written (`docker.io` when the reference names none).
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<64 hex>`.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses a reference as `docker pull` does (an optional `oci://` prefix is allowed, as in
    /// Istio's WasmPlugin). Only sha256 digests are accepted.
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text.strip_prefix("oci://").unwrap_or(text);
        if rest.is_empty() {
            return Err("is empty; give a reference like registry.example.com/filters/name:v1".into());
        }
        let (rest, digest) = match rest.split_once('@') {
            Some((name, digest)) => {
                let hex = digest.strip_prefix("sha256:").ok_or_else(|| {
                    format!("digest {digest:?}: only sha256 digests are supported (sha256:<64 hex digits>)")
                })?;
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("digest {digest:?} is not sha256:<64 hex digits>"));
                }
                (name, Some(format!("sha256:{}", hex.to_ascii_lowercase())))
            }
            None => (rest, None),
        };
        let (registry, path) = match rest.split_once('/') {
            Some((first, path)) if first.contains(['.', ':']) || first == "localhost" => (first.to_string(), path),
            _ => ("docker.io".to_string(), rest),
        };
        let (repository, tag) = match path.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag.to_string())),
            _ => (path, None),
        };
        if let Some(tag) = &tag {
            let valid = !tag.is_empty()
                && tag.len() <= 128
                && !tag.starts_with(['.', '-'])
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !valid {
                return Err(format!(
                    "tag {tag:?} is not valid (letters, digits, `_`, `.`, `-`, at most 128)"
                ));
            }
        }
        let valid_component = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'))
                && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
        };
        if !repository.split('/').all(valid_component) {
            return Err(format!(
                "repository {repository:?} is not valid (lowercase letters, digits and `._-`, components separated by `/`)"
            ));
        }
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_string()
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// What the manifest is asked for by: the digest when pinned, else the tag (`latest` by default).
    pub fn manifest_reference(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }

    /// `http://host:port` for registries on this machine, `https://host` otherwise (Docker Hub's
    /// API lives at registry-1.docker.io).
    pub fn base_url(&self) -> String {
        let host = if self.registry == "docker.io" {
            "registry-1.docker.io"
        } else {
            self.registry.as_str()
        };
        let scheme = if is_local(host) { "http" } else { "https" };
        format!("{scheme}://{host}")
    }
}

/// Whether `host[:port]` is `localhost` or a loopback address.
fn is_local(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map(|(name, _)| name).unwrap_or(rest)
    } else {
        host.rsplit_once(':').map(|(name, _)| name).unwrap_or(host)
    };
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A content descriptor of a manifest.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    #[serde(default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: Option<u64>,
}

/// An image manifest (OCI or Docker v2), or an index (refused).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// Which layer holds the module, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleLayer {
    /// The layer is the module.
    Wasm(Descriptor),
    /// The layer is a tar archive with `plugin.wasm` in it.
    Tar(Descriptor),
}

/// Parses a manifest and picks the module's layer. `content_type` is the answer's header.
pub fn module_layer(body: &[u8], content_type: Option<&str>) -> Result<ModuleLayer, String> {
    let manifest: Manifest =
        serde_json::from_slice(body).map_err(|e| format!("the manifest is not valid JSON ({e})"))?;
    let media_type = manifest
        .media_type
        .as_deref()
        .or(content_type.map(|c| c.split(';').next().unwrap_or(c).trim()))
        .unwrap_or_default();
    if media_type == OCI_INDEX || media_type == DOCKER_LIST || !manifest.manifests.is_empty() {
        return Err(format!(
            "the reference names an image index ({media_type}), not one image; reference the image's manifest by its digest"
        ));
    }
    if let Some(layer) = manifest.layers.iter().find(|l| l.media_type == WASM_LAYER) {
        return Ok(ModuleLayer::Wasm(layer.clone()));
    }
    match manifest.layers.as_slice() {
        [layer] if layer.media_type.contains("tar") => Ok(ModuleLayer::Tar(layer.clone())),
        [] => Err("the image has no layers".into()),
        layers => Err(format!(
            "no layer of media type {WASM_LAYER}, and not a single tar layer with plugin.wasm (layers: {}); push the module as a Wasm OCI artifact",
            layers
                .iter()
                .map(|l| l.media_type.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `Bearer realm="https://auth.example/token",service="registry",scope="repository:x:pull"`.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, mut rest) = match header.split_once(char::is_whitespace) {
        Some((scheme, rest)) => (scheme, rest.trim_start()),
        None => (header, ""),
    };
    if scheme.is_empty() {
        return None;
    }
    let mut params = Vec::new();
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=')?;
        let name = name.trim().trim_start_matches(',').trim();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end?..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.push((name.to_string(), value));
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge {
        scheme: scheme.to_string(),
        params,
    })
}

/// The URL asking the token service of a Bearer challenge for a pull token.
pub fn token_url(challenge: &Challenge, repository: &str) -> Result<String, String> {
    let realm = challenge
        .param("realm")
        .ok_or("the registry's Bearer challenge has no realm")?;
    let scope = challenge
        .param("scope")
        .map(str::to_string)
        .unwrap_or_else(|| format!("repository:{repository}:pull"));
    let mut url = realm.to_string();
    let mut separator = if realm.contains('?') { '&' } else { '?' };
    if let Some(service) = challenge.param("service") {
        url.push_str(&format!("{separator}service={}", client::encode_query_value(service)));
        separator = '&';
    }
    url.push_str(&format!("{separator}scope={}", client::encode_query_value(&scope)));
    Ok(url)
}

/// Reads the token out of a token service's answer (`token` or `access_token`).
pub fn parse_token(body: &[u8]) -> Result<String, String> {
    #[derive(Deserialize)]
    struct TokenAnswer {
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        access_token: Option<String>,
    }
    let answer: TokenAnswer =
        serde_json::from_slice(body).map_err(|e| format!("the token service's answer is not JSON ({e})"))?;
    answer
        .token
        .or(answer.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| "the token service's answer has no token".into())
}

/// Extracts `plugin.wasm` from an uncompressed tar archive.
pub fn plugin_from_tar(archive: &[u8]) -> Result<Vec<u8>, String> {
    if archive.starts_with(&[0x1f, 0x8b]) {
        return Err(format!(
            "the image is in Istio's compat format with a gzip-compressed layer, which is not supported; push the module as a Wasm OCI artifact (one layer of media type {WASM_LAYER}, e.g. `oras push REF plugin.wasm:{WASM_LAYER}`) or as an uncompressed tar layer"
        ));
    }
    let mut offset = 0;
    while offset + 512 <= archive.len() {
        let header = &archive[offset..offset + 512];
        if header.iter().all(|b| *b == 0) {
            break;
        }
        let field = |range: std::ops::Range<usize>| {
            let bytes = &header[range];
            let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
            String::from_utf8_lossy(&bytes[..end]).into_owned()
        };
        let name = field(0..100);
        let prefix = if &header[257..262] == b"ustar" {
            field(345..500)
        } else {
            String::new()
        };
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let size_text = field(124..136);
        let size = u64::from_str_radix(size_text.trim(), 8)
            .map_err(|_| format!("the tar layer is damaged (entry size {size_text:?})"))?;
        let size = usize::try_from(size).map_err(|_| "the tar layer is damaged (entry too large)".to_string())?;
        let start = offset + 512;
        let end = start
            .checked_add(size)
            .filter(|end| *end <= archive.len())
            .ok_or("the tar layer is truncated")?;
        let kind = header[156];
        if matches!(kind, b'0' | 0) && path.trim_start_matches("./") == "plugin.wasm" {
            return Ok(archive[start..end].to_vec());
        }
        offset = start + size.div_ceil(512) * 512;
    }
    Err("the tar layer has no plugin.wasm".into())
}

/// sha256 of `bytes` as `sha256:<hex>`.
fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", super::hex(&Sha256::digest(bytes)))
}

/// Pulls the module of `reference`.
pub async fn pull(text: &str) -> Result<Bytes, String> {
    let reference = Reference::parse(text)?;
    let mut session = Session {
        reference: &reference,
        token: None,
    };
    let base = reference.base_url();
    let manifest_url = format!(
        "{base}/v2/{}/manifests/{}",
        reference.repository,
        reference.manifest_reference()
    );
    let accept = HeaderValue::from_static(ACCEPT_MANIFESTS);
    let manifest = session.get(&manifest_url, Some(accept), "manifest").await?;
    if let Some(digest) = &reference.digest {
        let actual = digest_of(&manifest.body);
        if actual != *digest {
            return Err(format!(
                "the registry answered a manifest with digest {actual} for {digest}; check the registry"
            ));
        }
    }
    let layer = module_layer(&manifest.body, manifest.header(&CONTENT_TYPE))?;
    let descriptor = match &layer {
        ModuleLayer::Wasm(d) | ModuleLayer::Tar(d) => d,
    };
    if descriptor.size.is_some_and(|size| size > client::MAX_BODY_BYTES as u64) {
        return Err(format!(
            "the module layer is {} bytes, more than the {} MiB a module may be",
            descriptor.size.unwrap_or_default(),
            client::MAX_BODY_BYTES >> 20
        ));
    }
    if !descriptor.digest.starts_with("sha256:") {
        return Err(format!(
            "layer digest {} is not sha256; only sha256 digests are supported",
            descriptor.digest
        ));
    }
    let blob_url = format!("{base}/v2/{}/blobs/{}", reference.repository, descriptor.digest);
    let blob = session.get(&blob_url, None, "module layer").await?;
    let actual = digest_of(&blob.body);
    if actual != descriptor.digest {
        return Err(format!(
            "the module layer has digest {actual} but the manifest says {}; the registry's content is damaged",
            descriptor.digest
        ));
    }
    match layer {
        ModuleLayer::Wasm(_) => Ok(blob.body),
        ModuleLayer::Tar(_) => plugin_from_tar(&blob.body).map(Bytes::from),
    }
}

/// Requests to one registry for one repository, with the Bearer token once one was needed.
struct Session<'a> {
    reference: &'a Reference,
    token: Option<String>,
}

impl Session<'_> {
    async fn get(&mut self, url: &str, accept: Option<HeaderValue>, what: &str) -> Result<client::Response, String> {
        let uri = client::parse_url(url)?;
        let mut retried = false;
        loop {
            let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
            if let Some(accept) = &accept {
                headers.push((ACCEPT, accept.clone()));
            }
            if let Some(token) = &self.token {
                let value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .map_err(|_| "the token service gave a token that is not a valid header".to_string())?;
                headers.push((AUTHORIZATION, value));
            }
            let response = client::get_following(&uri, &headers).await?;
            if response.status == StatusCode::UNAUTHORIZED && !retried {
                let challenge = response
                    .header(&WWW_AUTHENTICATE)
                    .and_then(parse_challenge)
                    .filter(|c| c.scheme.eq_ignore_ascii_case("bearer"));
                let Some(challenge) = challenge else {
                    return Err(format!(
                        "the registry requires credentials for the {what} ({}); only anonymous pulls are supported: make the repository public",
                        response.status_text()
                    ));
                };
                self.token = Some(self.fetch_token(&challenge).await?);
                retried = true;
                continue;
            }
            if !response.status.is_success() {
                return Err(format!(
                    "GET {what} {}: {}; {}",
                    response.url,
                    registry_error(&response),
                    match response.status {
                        StatusCode::NOT_FOUND => "check the repository, tag or digest",
                        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN =>
                            "only anonymous pulls are supported: make the repository public",
                        _ => "check the registry",
                    }
                ));
            }
            return Ok(response);
        }
    }

    async fn fetch_token(&self, challenge: &Challenge) -> Result<String, String> {
        let url = token_url(challenge, &self.reference.repository)?;
        let uri: Uri = client::parse_url(&url).map_err(|e| format!("the registry's token realm: {e}"))?;
        let response = client::get_following(&uri, &[]).await?;
        if !response.status.is_success() {
            return Err(format!(
                "the token service {url} answered {}; only anonymous pulls are supported: make the repository public",
                response.status_text()
            ));
        }
        parse_token(&response.body)
    }
}

/// `HTTP 404 Not Found (MANIFEST_UNKNOWN: manifest unknown)` from a registry's error answer.
fn registry_error(response: &client::Response) -> String {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let status = format!(
        "HTTP {} {}",
        response.status.as_u16(),
        response.status.canonical_reason().unwrap_or_default()
    );
    match serde_json::from_slice::<Errors>(&response.body) {
        Ok(errors) if !errors.errors.is_empty() => {
            let details = errors
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.code, e.message))
                .collect::<Vec<_>>()
                .join("; ");
            format!("{status} ({details})")
        }
        _ => response.status_text(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_like_docker() {
        let r = Reference::parse("127.0.0.1:5000/filters/header-rewrite:v1").expect("parses");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "filters/header-rewrite");
        assert_eq!(r.manifest_reference(), "v1");
        assert_eq!(r.base_url(), "http://127.0.0.1:5000");

        let digest = "a".repeat(64);
        let r = Reference::parse(&format!("oci://ghcr.io/org/f@sha256:{}", digest.to_uppercase())).expect("parses");
        assert_eq!(r.registry, "ghcr.io");
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_reference(), format!("sha256:{digest}"));
        assert_eq!(r.base_url(), "https://ghcr.io");

        let r = Reference::parse("istio/wasm-filter").expect("parses");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "istio/wasm-filter");
        assert_eq!(r.manifest_reference(), "latest");
        assert_eq!(r.base_url(), "https://registry-1.docker.io");
        assert_eq!(Reference::parse("nginx:1").expect("parses").repository, "library/nginx");

        let r = Reference::parse("localhost:5000/f:v1@sha256:".to_string().as_str());
        assert!(r.is_err(), "a short digest is refused");
        assert_eq!(
            Reference::parse("localhost/f").expect("parses").base_url(),
            "http://localhost"
        );
        assert_eq!(
            Reference::parse("[::1]:5000/f").expect("parses").base_url(),
            "http://[::1]:5000"
        );
        assert!(Reference::parse("registry.test/Upper/case").is_err());
        assert!(
            Reference::parse("registry.test/f@md5:abc")
                .unwrap_err()
                .contains("sha256")
        );
        assert!(Reference::parse("registry.test/f:bad tag").is_err());
        assert!(Reference::parse("").is_err());
    }

    #[test]
    fn manifests_pick_the_wasm_layer_or_a_single_tar_layer() {
        let wasm = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/vnd.wasm.config.v0+json",
               "config":{{"mediaType":"application/vnd.wasm.config.v0+json","digest":"sha256:c","size":2}},
               "layers":[{{"mediaType":"{WASM_LAYER}","digest":"sha256:w","size":10}}]}}"#
        );
        match module_layer(wasm.as_bytes(), None).expect("a wasm layer") {
            ModuleLayer::Wasm(d) => assert_eq!(d.digest, "sha256:w"),
            other => panic!("{other:?}"),
        }
        let compat = r#"{"schemaVersion":2,"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"sha256:t"}]}"#;
        assert!(matches!(
            module_layer(compat.as_bytes(), Some(DOCKER_MANIFEST)),
            Ok(ModuleLayer::Tar(_))
        ));
        let index = format!(r#"{{"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"x","digest":"sha256:m"}}]}}"#);
        assert!(
            module_layer(index.as_bytes(), None)
                .unwrap_err()
                .contains("image index")
        );
        let two = r#"{"layers":[{"mediaType":"a","digest":"sha256:1"},{"mediaType":"b","digest":"sha256:2"}]}"#;
        let error = module_layer(two.as_bytes(), None).unwrap_err();
        assert!(error.contains(WASM_LAYER) && error.contains("a, b"), "{error}");
        assert!(module_layer(b"not json", None).unwrap_err().contains("not valid JSON"));
    }

    #[test]
    fn bearer_challenges_and_token_urls() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/x:pull""#,
        )
        .expect("parses");
        assert_eq!(c.scheme, "Bearer");
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(
            token_url(&c, "library/x").expect("url"),
            "https://auth.docker.io/token?service=registry.docker.io&scope=repository:library/x:pull"
        );
        let c = parse_challenge(r#"Bearer realm="https://ghcr.io/token?x=1", service=ghcr.io"#).expect("parses");
        assert_eq!(c.param("service"), Some("ghcr.io"));
        assert_eq!(
            token_url(&c, "org/f").expect("url"),
            "https://ghcr.io/token?x=1&service=ghcr.io&scope=repository:org/f:pull"
        );
        let c = parse_challenge(r#"Basic realm="Registry Realm""#).expect("parses");
        assert_eq!(c.scheme, "Basic");
        assert_eq!(c.param("realm"), Some("Registry Realm"));
        assert!(token_url(&parse_challenge("Bearer").expect("parses"), "f").is_err());
        assert_eq!(parse_token(br#"{"token":"t1"}"#), Ok("t1".into()));
        assert_eq!(parse_token(br#"{"access_token":"t2"}"#), Ok("t2".into()));
        assert!(parse_token(b"{}").is_err());
    }

    fn tar_entry(name: &str, data: &[u8]) -> Vec<u8> {
        let mut header = [0u8; 512];
        header[..name.len()].copy_from_slice(name.as_bytes());
        let size = format!("{:011o}\0", data.len());
        header[124..136].copy_from_slice(size.as_bytes());
        header[156] = b'0';
        header[257..262].copy_from_slice(b"ustar");
        let mut entry = header.to_vec();
        entry.extend_from_slice(data);
        entry.resize(512 + data.len().div_ceil(512) * 512, 0);
        entry
    }

    #[test]
    fn plugin_wasm_is_read_from_an_uncompressed_tar() {
        let mut archive = tar_entry("README", &[b'x'; 700]);
        archive.extend(tar_entry("./plugin.wasm", b"\0asm\x01\0\0\0"));
        archive.extend([0u8; 1024]);
        assert_eq!(plugin_from_tar(&archive), Ok(b"\0asm\x01\0\0\0".to_vec()));
        assert!(
            plugin_from_tar(&tar_entry("other", b"x"))
                .unwrap_err()
                .contains("no plugin.wasm")
        );
        assert!(plugin_from_tar(&[0x1f, 0x8b, 8, 0]).unwrap_err().contains("gzip"));
        let mut truncated = tar_entry("plugin.wasm", &[1; 600]);
        truncated.truncate(700);
        assert!(plugin_from_tar(&truncated).unwrap_err().contains("truncated"));
    }
}
