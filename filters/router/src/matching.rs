//! One compiled `HTTPRouteMatch`: path, method, headers and query parameters, and its rank in the
//! Gateway API precedence order.

use regex::bytes::{Regex, RegexBuilder};

use crate::config::{HttpPathMatch, HttpRouteMatch, PathMatchType, ValueMatchType};
use crate::request::{Request, query_params, split_query};

/// Upper bound on a compiled regex, so a hostile pattern in an HTTPRoute cannot exhaust the
/// filter's memory at configure time (the `regex` crate's default is 10 MiB; routes need far less).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Compiles `pattern` to match a whole value (Gateway API regex matches are full matches, as in
/// RE2's `FullMatch`), or explains why it cannot.
pub fn full_match_regex(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| format!("invalid regular expression {pattern:?}: {e}"))
}

/// A compiled path match.
#[derive(Debug, Clone)]
pub enum PathMatcher {
    Exact(Vec<u8>),
    /// The prefix without its trailing `/`, matched on segment boundaries.
    Prefix(Vec<u8>),
    Regex(Regex),
    /// A match that cannot match anything (an invalid regex): safer than matching everything.
    Never,
}

impl PathMatcher {
    fn compile(m: &HttpPathMatch, warnings: &mut Vec<String>) -> Self {
        match m.kind {
            PathMatchType::Exact => Self::Exact(m.value.as_bytes().to_vec()),
            PathMatchType::PathPrefix => Self::Prefix(m.value.trim_end_matches('/').as_bytes().to_vec()),
            PathMatchType::RegularExpression => match full_match_regex(&m.value) {
                Ok(re) => Self::Regex(re),
                Err(e) => {
                    warnings.push(format!("path match: {e}; the match never matches"));
                    Self::Never
                }
            },
        }
    }

    /// Whether `path` (without query) matches.
    pub fn matches(&self, path: &[u8]) -> bool {
        match self {
            Self::Exact(value) => path == value.as_slice(),
            Self::Prefix(prefix) => {
                // `/foo` matches `/foo`, `/foo/` and `/foo/bar`, but not `/foobar`.
                path.starts_with(prefix) && (path.len() == prefix.len() || path[prefix.len()] == b'/')
            }
            Self::Regex(re) => re.is_match(path),
            Self::Never => false,
        }
    }

    /// The part of the path a `ReplacePrefixMatch` modifier replaces: the prefix itself, or the
    /// whole path for an exact match. `None` for a regex (the Gateway API allows
    /// `ReplacePrefixMatch` only with `PathPrefix`).
    pub fn replaceable_prefix(&self) -> Option<&[u8]> {
        match self {
            Self::Exact(value) | Self::Prefix(value) => Some(value),
            Self::Regex(_) | Self::Never => None,
        }
    }

    fn rank(&self) -> PathRank {
        match self {
            Self::Exact(_) => PathRank::Exact,
            Self::Prefix(prefix) => PathRank::Prefix(prefix.len()),
            Self::Regex(_) | Self::Never => PathRank::Regex,
        }
    }
}

/// A compiled header or query-parameter value match.
#[derive(Debug, Clone)]
pub enum ValueMatcher {
    Exact(Vec<u8>),
    Regex(Regex),
    Never,
}

impl ValueMatcher {
    fn compile(kind: ValueMatchType, value: &str, what: &str, warnings: &mut Vec<String>) -> Self {
        match kind {
            ValueMatchType::Exact => Self::Exact(value.as_bytes().to_vec()),
            ValueMatchType::RegularExpression => match full_match_regex(value) {
                Ok(re) => Self::Regex(re),
                Err(e) => {
                    warnings.push(format!("{what}: {e}; the match never matches"));
                    Self::Never
                }
            },
        }
    }

    fn matches(&self, value: &[u8]) -> bool {
        match self {
            Self::Exact(expected) => value == expected.as_slice(),
            Self::Regex(re) => re.is_match(value),
            Self::Never => false,
        }
    }
}

/// How a path match ranks; larger is more specific. Exact, then the longest prefix, then regex
/// (the Gateway API leaves regex precedence to implementations; Envoy-based ones put it last).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PathRank {
    Regex,
    Prefix(usize),
    Exact,
}

/// The request-independent part of a match's precedence; larger is more specific. Field order is
/// the comparison order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MatchRank {
    pub path: PathRank,
    pub method: bool,
    pub headers: usize,
    pub query_params: usize,
}

/// A compiled `HTTPRouteMatch`.
#[derive(Debug, Clone)]
pub struct Matcher {
    pub path: PathMatcher,
    method: Option<Vec<u8>>,
    /// Lowercased names.
    headers: Vec<(String, ValueMatcher)>,
    query_params: Vec<(Vec<u8>, ValueMatcher)>,
}

impl Matcher {
    /// Compiles one match. Repeated header (case-insensitive) or query (exact) names keep only
    /// their first entry, as the Gateway API requires.
    pub fn compile(m: &HttpRouteMatch, warnings: &mut Vec<String>) -> Self {
        let path = PathMatcher::compile(&m.path.clone().unwrap_or_default(), warnings);
        let mut headers: Vec<(String, ValueMatcher)> = Vec::new();
        for h in &m.headers {
            let name = h.name.to_ascii_lowercase();
            if !headers.iter().any(|(n, _)| *n == name) {
                let matcher = ValueMatcher::compile(h.kind, &h.value, &format!("header match {:?}", h.name), warnings);
                headers.push((name, matcher));
            }
        }
        let mut query: Vec<(Vec<u8>, ValueMatcher)> = Vec::new();
        for q in &m.query_params {
            let name = q.name.as_bytes().to_vec();
            if !query.iter().any(|(n, _)| *n == name) {
                let matcher =
                    ValueMatcher::compile(q.kind, &q.value, &format!("query param match {:?}", q.name), warnings);
                query.push((name, matcher));
            }
        }
        Matcher {
            path,
            method: m.method.as_ref().map(|s| s.as_bytes().to_vec()),
            headers,
            query_params: query,
        }
    }

    /// The match used for a rule without `matches`: path prefix `/`.
    pub fn default_match() -> Self {
        Matcher {
            path: PathMatcher::Prefix(Vec::new()),
            method: None,
            headers: Vec::new(),
            query_params: Vec::new(),
        }
    }

    pub fn rank(&self) -> MatchRank {
        MatchRank {
            path: self.path.rank(),
            method: self.method.is_some(),
            headers: self.headers.len(),
            query_params: self.query_params.len(),
        }
    }

    /// Whether the request satisfies every condition of this match.
    pub fn matches(&self, req: &Request) -> bool {
        let (path, query) = split_query(&req.path);
        if !self.path.matches(path) {
            return false;
        }
        if let Some(method) = &self.method
            && req.method != *method
        {
            return false;
        }
        for (name, matcher) in &self.headers {
            match req.header(name) {
                Some(value) if matcher.matches(&value) => {}
                _ => return false,
            }
        }
        if !self.query_params.is_empty() {
            let params = query_params(query.unwrap_or_default());
            for (name, matcher) in &self.query_params {
                // The first occurrence of a repeated parameter is the one compared.
                match params.iter().find(|(n, _)| n == name) {
                    Some((_, value)) if matcher.matches(value) => {}
                    _ => return false,
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HttpHeaderMatch, HttpQueryParamMatch};

    fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> Request {
        let mut pairs = vec![
            (":method".to_string(), method.as_bytes().to_vec()),
            (":path".to_string(), path.as_bytes().to_vec()),
        ];
        pairs.extend(headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())));
        Request::new(Some(80), None, pairs)
    }

    fn path(kind: PathMatchType, value: &str) -> HttpRouteMatch {
        HttpRouteMatch {
            path: Some(HttpPathMatch {
                kind,
                value: value.into(),
            }),
            ..Default::default()
        }
    }

    fn compile(m: &HttpRouteMatch) -> Matcher {
        let mut warnings = Vec::new();
        let m = Matcher::compile(m, &mut warnings);
        assert!(warnings.is_empty(), "{warnings:?}");
        m
    }

    #[test]
    fn prefix_matches_on_segment_boundaries() {
        let cases: &[(&str, &str, bool)] = &[
            ("/foo", "/foo", true),
            ("/foo", "/foo/", true),
            ("/foo", "/foo/bar", true),
            ("/foo", "/foobar", false),
            ("/foo/", "/foo", true),
            ("/foo/", "/foo/bar", true),
            ("/foo/", "/foobar", false),
            ("/", "/anything", true),
            ("/", "/", true),
            ("/v2", "/v2example", false),
            ("/v2", "/foo/v2/example", false),
            ("/foo", "/foo?x=1", true),
            ("/foo", "/Foo", false),
        ];
        for (prefix, p, expected) in cases {
            let m = compile(&path(PathMatchType::PathPrefix, prefix));
            assert_eq!(m.matches(&req("GET", p, &[])), *expected, "prefix {prefix} vs {p}");
        }
    }

    #[test]
    fn exact_and_regex_paths_ignore_query_and_match_whole() {
        let exact = compile(&path(PathMatchType::Exact, "/one"));
        assert!(exact.matches(&req("GET", "/one?x", &[])));
        assert!(!exact.matches(&req("GET", "/one/", &[])));
        assert!(!exact.matches(&req("GET", "/One", &[])));
        let re = compile(&path(PathMatchType::RegularExpression, "/v[0-9]+"));
        assert!(re.matches(&req("GET", "/v12?q", &[])));
        assert!(!re.matches(&req("GET", "/v12/x", &[])), "regex is a full match");
        assert!(!re.matches(&req("GET", "/x/v12", &[])));
    }

    #[test]
    fn regex_dialect_covers_case_folding_and_classes_and_bounds_size() {
        let header = |value: &str| HttpRouteMatch {
            headers: vec![HttpHeaderMatch {
                kind: ValueMatchType::RegularExpression,
                name: "user-agent".into(),
                value: value.into(),
            }],
            ..Default::default()
        };
        let m = compile(&header(r"(?i)mozilla/\d+\.\d+ \pL+"));
        assert!(m.matches(&req("GET", "/", &[("User-Agent", "MOZILLA/5.0 Gecko")])));
        assert!(!m.matches(&req("GET", "/", &[("User-Agent", "curl/8.0")])));
        let mut warnings = Vec::new();
        let huge = Matcher::compile(&header("(a{1000}){1000}"), &mut warnings);
        assert_eq!(warnings.len(), 1, "over the size limit: {warnings:?}");
        assert!(!huge.matches(&req("GET", "/", &[("user-agent", "a")])));
    }

    #[test]
    fn invalid_regex_never_matches_and_warns() {
        let mut warnings = Vec::new();
        let m = Matcher::compile(&path(PathMatchType::RegularExpression, "(unclosed"), &mut warnings);
        assert_eq!(warnings.len(), 1);
        assert!(!m.matches(&req("GET", "/", &[])));
    }

    #[test]
    fn headers_case_insensitive_names_exact_values() {
        let m = compile(&HttpRouteMatch {
            headers: vec![
                HttpHeaderMatch {
                    kind: ValueMatchType::Exact,
                    name: "Version".into(),
                    value: "two".into(),
                },
                HttpHeaderMatch {
                    kind: ValueMatchType::Exact,
                    name: "version".into(),
                    value: "ignored-duplicate".into(),
                },
                HttpHeaderMatch {
                    kind: ValueMatchType::RegularExpression,
                    name: "color".into(),
                    value: "or.*".into(),
                },
            ],
            ..Default::default()
        });
        assert_eq!(m.rank().headers, 2);
        assert!(m.matches(&req("GET", "/", &[("VERSION", "two"), ("Color", "orange")])));
        assert!(!m.matches(&req("GET", "/", &[("version", "Two"), ("color", "orange")])));
        assert!(!m.matches(&req("GET", "/", &[("version", "two"), ("color", "red-orange")])));
        assert!(!m.matches(&req("GET", "/", &[("version", "two")])));
    }

    #[test]
    fn query_params_exact_names_first_occurrence() {
        let m = compile(&HttpRouteMatch {
            query_params: vec![HttpQueryParamMatch {
                kind: ValueMatchType::Exact,
                name: "animal".into(),
                value: "whale".into(),
            }],
            ..Default::default()
        });
        assert!(m.matches(&req("GET", "/?animal=whale", &[])));
        assert!(m.matches(&req("GET", "/?x=1&animal=wh%61le", &[])));
        assert!(!m.matches(&req("GET", "/?Animal=whale", &[])));
        assert!(!m.matches(&req("GET", "/?animal=dolphin&animal=whale", &[])));
        assert!(!m.matches(&req("GET", "/", &[])));
    }

    #[test]
    fn method_is_exact() {
        let m = compile(&HttpRouteMatch {
            method: Some("POST".into()),
            ..Default::default()
        });
        assert!(m.matches(&req("POST", "/", &[])));
        assert!(!m.matches(&req("post", "/", &[])));
        assert!(!m.matches(&req("GET", "/", &[])));
    }

    #[test]
    fn rank_order() {
        let exact = compile(&path(PathMatchType::Exact, "/a")).rank();
        let long = compile(&path(PathMatchType::PathPrefix, "/abc")).rank();
        let short = compile(&path(PathMatchType::PathPrefix, "/a")).rank();
        let re = compile(&path(PathMatchType::RegularExpression, "/.*")).rank();
        let method = compile(&HttpRouteMatch {
            method: Some("GET".into()),
            ..Default::default()
        })
        .rank();
        let root = Matcher::default_match().rank();
        assert!(exact > long && long > short && short > method && method > root && root > re);
    }

    #[test]
    fn missing_pseudo_headers_do_not_match_but_do_not_fail() {
        let m = compile(&path(PathMatchType::PathPrefix, "/"));
        let empty = Request::new(None, None, Vec::new());
        assert!(m.matches(&empty), "prefix / matches even an empty path");
        let exact = compile(&path(PathMatchType::Exact, "/"));
        assert!(!exact.matches(&empty));
    }
}
