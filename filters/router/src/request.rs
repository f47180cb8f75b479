//! The router's view of one request: what the host gives it, parsed once.
//!
//! Header values and the path stay bytes: HTTP allows obs-text (bytes ≥ 0x80) in values and
//! some clients send raw UTF-8 in paths, and a lossy conversion would both mis-match and corrupt
//! a rewritten path. Only the host is converted to text, since hostnames are ASCII by definition.

use crate::hostname::normalize_host;

/// A request as the router sees it.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// `tidegate.listener_port`: the Gateway listener port as written in the Gateway.
    pub listener_port: Option<u16>,
    /// `tidegate.gateway` (`namespace/name`), when the host says which Gateway the request
    /// arrived on; it tells apart two Gateways with listeners on the same port.
    pub gateway: Option<String>,
    /// `tidegate.service` (`namespace/name`): the request was captured on its way to this
    /// Service's frontend (east-west), so the Service's routes apply, not a Gateway's.
    pub service: Option<String>,
    /// `tidegate.source_namespace`: the client pod's namespace (chooses consumer routes).
    pub source_namespace: Option<String>,
    /// `:method`.
    pub method: Vec<u8>,
    /// `:scheme`, lowercased, when present.
    pub scheme: Option<String>,
    /// `:authority` (or `Host`) as received, port included.
    pub authority: String,
    /// The host of `authority`, normalized for matching.
    pub host: String,
    /// `:path` as received: path and query.
    pub path: Vec<u8>,
    /// Every non-pseudo header, in order, names lowercased.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Request {
    /// Builds the view from the request header map (pseudo-headers included) and the
    /// properties the host sets. Missing pseudo-headers become empty values, never an error.
    pub fn new(listener_port: Option<u16>, gateway: Option<String>, pairs: Vec<(String, Vec<u8>)>) -> Self {
        let mut req = Request {
            listener_port,
            gateway,
            ..Request::default()
        };
        let mut authority: Option<Vec<u8>> = None;
        let mut host_header: Option<Vec<u8>> = None;
        for (name, value) in pairs {
            match name.as_str() {
                ":method" => req.method = value,
                ":scheme" => req.scheme = Some(String::from_utf8_lossy(&value).to_ascii_lowercase()),
                ":authority" => authority = Some(value),
                ":path" => req.path = value,
                _ if name.starts_with(':') => {}
                _ => {
                    let name = name.to_ascii_lowercase();
                    if name == "host" && host_header.is_none() {
                        host_header = Some(value.clone());
                    }
                    req.headers.push((name, value));
                }
            }
        }
        // HTTP/1 hosts may give `Host` only; `:authority` wins when both exist, as in HTTP/2.
        let authority = authority.filter(|a| !a.is_empty()).or(host_header).unwrap_or_default();
        req.authority = String::from_utf8_lossy(&authority).into_owned();
        req.host = normalize_host(&req.authority);
        req
    }

    /// The path without its query.
    pub fn path_only(&self) -> &[u8] {
        split_query(&self.path).0
    }

    /// Every value of header `name` (case-insensitive) joined with `,`, as HTTP allows a repeated
    /// header to be folded; `None` when the header is absent.
    pub fn header(&self, name: &str) -> Option<Vec<u8>> {
        let mut joined: Option<Vec<u8>> = None;
        for (n, v) in &self.headers {
            if n.eq_ignore_ascii_case(name) {
                match &mut joined {
                    None => joined = Some(v.clone()),
                    Some(j) => {
                        j.push(b',');
                        j.extend_from_slice(v);
                    }
                }
            }
        }
        joined
    }
}

/// Splits `path?query` at the first `?`; the query excludes the `?` and is `None` when absent.
pub fn split_query(path: &[u8]) -> (&[u8], Option<&[u8]>) {
    match path.iter().position(|&b| b == b'?') {
        Some(i) => (&path[..i], Some(&path[i + 1..])),
        None => (path, None),
    }
}

/// Query parameters in order, names and values percent-decoded (`+` is kept: it only means a
/// space in form bodies, and RFC 3986 query strings give it no special meaning).
pub fn query_params(query: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    query
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| match pair.iter().position(|&b| b == b'=') {
            Some(i) => (percent_decode(&pair[..i]), percent_decode(&pair[i + 1..])),
            None => (percent_decode(pair), Vec::new()),
        })
        .collect()
}

/// Decodes `%XX` escapes; a malformed escape is kept literally.
pub fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%'
            && let (Some(h), Some(l)) = (
                input.get(i + 1).and_then(|&b| hex(b)),
                input.get(i + 2).and_then(|&b| hex(b)),
            )
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
        list.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect()
    }

    #[test]
    fn reads_pseudo_headers_and_folds_repeats() {
        let req = Request::new(
            Some(80),
            None,
            pairs(&[
                (":method", b"GET"),
                (":scheme", b"HTTP"),
                (":authority", b"Foo.Test:8080"),
                (":path", b"/a/b?x=1"),
                ("X-Multi", b"one"),
                ("x-multi", b"two"),
                ("bin", b"\xff\xfe"),
            ]),
        );
        assert_eq!(req.method, b"GET");
        assert_eq!(req.scheme.as_deref(), Some("http"));
        assert_eq!(req.host, "foo.test");
        assert_eq!(req.path_only(), b"/a/b");
        assert_eq!(req.header("X-MULTI").as_deref(), Some(&b"one,two"[..]));
        assert_eq!(req.header("bin").as_deref(), Some(&b"\xff\xfe"[..]));
        assert_eq!(req.header("absent"), None);
    }

    #[test]
    fn host_header_stands_in_for_missing_authority() {
        let req = Request::new(None, None, pairs(&[("Host", b"h.test:1")]));
        assert_eq!(req.host, "h.test");
        let empty = Request::new(None, None, Vec::new());
        assert_eq!(empty.host, "");
        assert_eq!(empty.path_only(), b"");
    }

    #[test]
    fn percent_escapes_decode_in_either_case() {
        // Every hex digit class, lower and upper case: `%aF` is 0xAF, `%Fa` is 0xFA.
        assert_eq!(
            percent_decode(b"%2f%2F%aF%Fa%09%00"),
            [0x2F, 0x2F, 0xAF, 0xFA, 0x09, 0x00]
        );
        assert_eq!(
            percent_decode(b"%ab%cd%ef%AB%CD%EF"),
            [0xAB, 0xCD, 0xEF, 0xAB, 0xCD, 0xEF]
        );
    }

    #[test]
    fn query_parsing_and_decoding() {
        assert_eq!(split_query(b"/p?a=1?b"), (&b"/p"[..], Some(&b"a=1?b"[..])));
        let q = query_params(b"a=1&b&&c=x%20y&%ZZ=%4");
        assert_eq!(
            q,
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"".to_vec()),
                (b"c".to_vec(), b"x y".to_vec()),
                (b"%ZZ".to_vec(), b"%4".to_vec()),
            ]
        );
    }
}
