//! What route filters do to a request: header edits, path modifiers and redirect `Location`s.
//! Pure functions; the shell turns [`HeaderOp`]s into hostcalls.

use crate::config::{HttpHeaderFilter, HttpPathModifier, HttpRequestRedirectFilter, PathModifierType};
use crate::request::split_query;

/// One edit of a header map, in the terms of the proxy-wasm ABI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    /// Replace every value of the header with this one (`proxy_replace_header_map_value`).
    Set(String, Vec<u8>),
    /// Append one more value, keeping the existing ones (`proxy_add_header_map_value`): what
    /// Envoy does for `add`, and what a client sees as `old,new` once repeated values are folded.
    Add(String, Vec<u8>),
    /// Remove every value (`proxy_remove_header_map_value`).
    Remove(String),
}

/// The edits of one `HTTPHeaderFilter`: removals first, then `set`, then `add`. Envoy removes
/// before it adds, so a name both removed and added ends up with the added value; `set` before
/// `add` lets a filter that does both on one name keep both values.
///
/// Pseudo-headers (`:path`, …) are not headers for the Gateway API, and editing them here would
/// corrupt the request, so names starting with `:` are skipped.
pub fn header_ops(filter: &HttpHeaderFilter) -> Vec<HeaderOp> {
    let valid = |name: &str| !name.is_empty() && !name.starts_with(':');
    let mut ops = Vec::with_capacity(filter.remove.len() + filter.set.len() + filter.add.len());
    ops.extend(
        filter
            .remove
            .iter()
            .filter(|n| valid(n))
            .map(|n| HeaderOp::Remove(n.to_ascii_lowercase())),
    );
    ops.extend(
        filter
            .set
            .iter()
            .filter(|h| valid(&h.name))
            .map(|h| HeaderOp::Set(h.name.to_ascii_lowercase(), h.value.as_bytes().to_vec())),
    );
    ops.extend(
        filter
            .add
            .iter()
            .filter(|h| valid(&h.name))
            .map(|h| HeaderOp::Add(h.name.to_ascii_lowercase(), h.value.as_bytes().to_vec())),
    );
    ops
}

/// Applies edits to a header list the way a proxy-wasm host applies the hostcalls (names compare
/// case-insensitively). The shell does not use it; tests and anyone modelling the host do.
pub fn apply_ops(headers: &mut Vec<(String, Vec<u8>)>, ops: &[HeaderOp]) {
    for op in ops {
        match op {
            HeaderOp::Set(name, value) => {
                headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
                headers.push((name.clone(), value.clone()));
            }
            HeaderOp::Add(name, value) => headers.push((name.clone(), value.clone())),
            HeaderOp::Remove(name) => headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name)),
        }
    }
}

/// Applies an `HTTPPathModifier` to `path` (path and query) and keeps the query.
///
/// `prefix` is what the route matched (see `PathMatcher::replaceable_prefix`, trailing `/`
/// already removed). `ReplacePrefixMatch` follows the Gateway API table: the remainder after the
/// prefix is kept on a segment boundary, and a trailing `/` of the replacement never doubles a
/// slash (`/foo/bar` with prefix `/foo` → `/xyz/` gives `/xyz/bar`). Without a prefix (a regex
/// match) the path is left as it is.
pub fn modify_path(path: &[u8], modifier: &HttpPathModifier, prefix: Option<&[u8]>) -> Vec<u8> {
    let (path_only, query) = split_query(path);
    let mut out = match modifier.kind {
        PathModifierType::ReplaceFullPath => modifier.replace_full_path.as_deref().unwrap_or("/").as_bytes().to_vec(),
        PathModifierType::ReplacePrefixMatch => {
            let replacement = modifier.replace_prefix_match.as_deref().unwrap_or("/");
            match prefix {
                Some(prefix) if path_only.starts_with(prefix) => {
                    let rest = &path_only[prefix.len()..];
                    let mut out = replacement.trim_end_matches('/').as_bytes().to_vec();
                    out.extend_from_slice(rest);
                    out
                }
                _ => path_only.to_vec(),
            }
        }
    };
    if out.first() != Some(&b'/') {
        out.insert(0, b'/');
    }
    if let Some(query) = query {
        out.push(b'?');
        out.extend_from_slice(query);
    }
    out
}

/// What a redirect needs to know about the request it answers.
#[derive(Debug, Clone)]
pub struct RedirectSource<'a> {
    /// The request scheme (`http` or `https`).
    pub scheme: &'a str,
    /// The request host, without port.
    pub host: &'a str,
    /// The request path and query, after any earlier filter of the rule.
    pub path: &'a [u8],
    /// The prefix the route matched, for `ReplacePrefixMatch`.
    pub matched_prefix: Option<&'a [u8]>,
    /// The Gateway listener port the request arrived on.
    pub listener_port: u16,
}

/// The status and `Location` of a `RequestRedirect` filter.
pub fn redirect(filter: &HttpRequestRedirectFilter, src: &RedirectSource<'_>) -> (u16, String) {
    let status = filter.status_code.unwrap_or(302);
    let scheme = filter
        .scheme
        .as_deref()
        .map(str::to_ascii_lowercase)
        .unwrap_or_else(|| src.scheme.to_string());
    let host = filter.hostname.as_deref().unwrap_or(src.host);
    // Gateway API: an explicit port wins; else a redirect scheme implies its well-known port
    // (falling back to the listener port for a scheme without one); else the listener port.
    let port = match (filter.port, &filter.scheme) {
        (Some(port), _) => port,
        (None, Some(_)) => well_known_port(&scheme).unwrap_or(src.listener_port),
        (None, None) => src.listener_port,
    };
    let path = match &filter.path {
        Some(modifier) => modify_path(src.path, modifier, src.matched_prefix),
        None => src.path.to_vec(),
    };
    let path = location_safe(&path);
    if host.is_empty() {
        // No host to put in an absolute URL (an HTTP/1.0 request without Host): a relative
        // Location is still valid (RFC 9110 §10.2.2), though it cannot change scheme or port.
        return (status, path);
    }
    let location = if well_known_port(&scheme) == Some(port) {
        format!("{scheme}://{host}{path}")
    } else {
        format!("{scheme}://{host}:{port}{path}")
    };
    (status, location)
}

/// The port a URL of `scheme` leaves implicit.
pub fn well_known_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// A path as a `Location` header can carry it: bytes that are not visible ASCII (controls, space,
/// raw UTF-8) are percent-encoded, so the header is always valid.
fn location_safe(path: &[u8]) -> String {
    let mut out = String::with_capacity(path.len());
    for &b in path {
        if (0x21..0x7f).contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HttpHeader;

    fn prefix_mod(replacement: &str) -> HttpPathModifier {
        HttpPathModifier {
            kind: PathModifierType::ReplacePrefixMatch,
            replace_full_path: None,
            replace_prefix_match: Some(replacement.into()),
        }
    }

    fn full_mod(replacement: &str) -> HttpPathModifier {
        HttpPathModifier {
            kind: PathModifierType::ReplaceFullPath,
            replace_full_path: Some(replacement.into()),
            replace_prefix_match: None,
        }
    }

    #[test]
    fn replace_prefix_match_follows_the_gateway_api_table() {
        // (request path, prefix match value, replacement, expected) — the table in the
        // HTTPPathModifier documentation, plus query handling.
        let cases: &[(&str, &str, &str, &str)] = &[
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
            (
                "/original-prefix/lemon",
                "/original-prefix",
                "/replacement-prefix",
                "/replacement-prefix/lemon",
            ),
            (
                "/path-and-host",
                "/path-and-host",
                "/replacement-prefix",
                "/replacement-prefix",
            ),
            ("/anything", "/", "/pre", "/pre/anything"),
            ("/foo/bar?a=1&b", "/foo", "/xyz", "/xyz/bar?a=1&b"),
        ];
        for (path, prefix, replacement, expected) in cases {
            let prefix = prefix.trim_end_matches('/').as_bytes();
            let got = modify_path(path.as_bytes(), &prefix_mod(replacement), Some(prefix));
            assert_eq!(
                String::from_utf8_lossy(&got),
                *expected,
                "{path} prefix {prefix:?} → {replacement}"
            );
        }
    }

    #[test]
    fn replace_prefix_match_leaves_a_path_without_the_prefix_alone() {
        // Only a path that starts with the matched prefix has it replaced; anything else (the
        // decision never passes one, but the function must not cut at a foreign offset) is kept.
        assert_eq!(
            modify_path(b"/other/x?q", &prefix_mod("/new"), Some(b"/foo")),
            b"/other/x?q"
        );
        assert_eq!(modify_path(b"/f", &prefix_mod("/new"), Some(b"/foo")), b"/f");
    }

    #[test]
    fn replace_full_path_keeps_query() {
        assert_eq!(
            modify_path(b"/full/path/original", &full_mod("/full-path-replacement"), None),
            b"/full-path-replacement"
        );
        assert_eq!(modify_path(b"/x?q=1", &full_mod("/y"), None), b"/y?q=1");
        // Without a prefix (regex match) ReplacePrefixMatch leaves the path alone.
        assert_eq!(modify_path(b"/x?q=1", &prefix_mod("/y"), None), b"/x?q=1");
    }

    #[test]
    fn header_ops_remove_then_set_then_add() {
        let filter = HttpHeaderFilter {
            set: vec![HttpHeader {
                name: "X-Set".into(),
                value: "s".into(),
            }],
            add: vec![
                HttpHeader {
                    name: "X-Add".into(),
                    value: "a".into(),
                },
                HttpHeader {
                    name: ":path".into(),
                    value: "/evil".into(),
                },
            ],
            remove: vec!["X-Remove".into()],
        };
        let ops = header_ops(&filter);
        assert_eq!(
            ops,
            vec![
                HeaderOp::Remove("x-remove".into()),
                HeaderOp::Set("x-set".into(), b"s".to_vec()),
                HeaderOp::Add("x-add".into(), b"a".to_vec())
            ]
        );
        let mut headers = vec![
            ("X-Set".to_string(), b"old".to_vec()),
            ("x-add".to_string(), b"old".to_vec()),
            ("x-REMOVE".to_string(), b"gone".to_vec()),
        ];
        apply_ops(&mut headers, &ops);
        assert_eq!(
            headers,
            vec![
                ("x-add".to_string(), b"old".to_vec()),
                ("x-set".to_string(), b"s".to_vec()),
                ("x-add".to_string(), b"a".to_vec())
            ]
        );
    }

    fn src<'a>(path: &'a str, prefix: Option<&'a str>) -> RedirectSource<'a> {
        RedirectSource {
            scheme: "http",
            host: "127.0.0.1",
            path: path.as_bytes(),
            matched_prefix: prefix.map(str::as_bytes),
            listener_port: 80,
        }
    }

    #[test]
    fn redirect_ports_follow_the_gateway_api_rules() {
        let r = |scheme: Option<&str>, port: Option<u16>, listener_port: u16| {
            let filter = HttpRequestRedirectFilter {
                scheme: scheme.map(Into::into),
                port,
                ..Default::default()
            };
            redirect(
                &filter,
                &RedirectSource {
                    listener_port,
                    ..src("/p", None)
                },
            )
            .1
        };
        assert_eq!(r(None, None, 80), "http://127.0.0.1/p");
        assert_eq!(r(None, None, 8080), "http://127.0.0.1:8080/p");
        assert_eq!(r(Some("https"), None, 80), "https://127.0.0.1/p");
        assert_eq!(
            r(Some("https"), None, 8080),
            "https://127.0.0.1/p",
            "scheme implies its well-known port"
        );
        assert_eq!(r(Some("http"), None, 8443), "http://127.0.0.1/p");
        assert_eq!(r(None, Some(8083), 80), "http://127.0.0.1:8083/p");
        assert_eq!(r(Some("https"), Some(443), 80), "https://127.0.0.1/p");
        assert_eq!(r(Some("https"), Some(80), 80), "https://127.0.0.1:80/p");
        assert_eq!(
            r(Some("ftp"), None, 8080),
            "ftp://127.0.0.1:8080/p",
            "no well-known port: listener port"
        );
    }

    #[test]
    fn redirect_status_host_path_and_query() {
        let filter = HttpRequestRedirectFilter {
            hostname: Some("example.org".into()),
            status_code: Some(301),
            path: Some(prefix_mod("/replacement-prefix")),
            ..Default::default()
        };
        let (status, location) = redirect(&filter, &src("/path-and-status/x?y=1", Some("/path-and-status")));
        assert_eq!(status, 301);
        assert_eq!(location, "http://example.org/replacement-prefix/x?y=1");
        let (status, location) = redirect(&HttpRequestRedirectFilter::default(), &src("/see-other", None));
        assert_eq!((status, location.as_str()), (302, "http://127.0.0.1/see-other"));
    }

    #[test]
    fn redirect_location_is_always_a_valid_header_value() {
        let (_, location) = redirect(&HttpRequestRedirectFilter::default(), &src("/caf\u{e9} x\r\n", None));
        assert_eq!(location, "http://127.0.0.1/caf%C3%A9%20x%0D%0A");
        let no_host = RedirectSource {
            host: "",
            ..src("/p", None)
        };
        assert_eq!(redirect(&HttpRequestRedirectFilter::default(), &no_host).1, "/p");
    }
}
