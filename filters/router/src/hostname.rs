//! Hostnames as the Gateway API defines them: exact names and `*.suffix` wildcards, the
//! intersection of a route's hostnames with its listener's, and how specific a match is.
//!
//! Everything here works on lowercase ASCII: hostnames compare case-insensitively (RFC 4343), so
//! config names are lowercased once at configure time and the request host once per request.

/// One hostname of a listener or a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `foo.example.com`.
    Exact(String),
    /// `*.example.com`, stored as its suffix `.example.com`: it matches any host that ends with
    /// the suffix and has at least one more character (so not `example.com` itself).
    Wildcard(String),
}

impl HostPattern {
    /// Parses a hostname as written in a Gateway or an HTTPRoute. `None` for an empty name.
    pub fn parse(name: &str) -> Option<Self> {
        let name = name.trim().to_ascii_lowercase();
        let name = name.strip_suffix('.').unwrap_or(&name);
        if name.is_empty() {
            return None;
        }
        match name.strip_prefix('*') {
            // A bare `*` (not valid Gateway API) is kept as "any non-empty host" rather than
            // being dropped, which would silently widen a route to every host.
            Some(suffix) if suffix.is_empty() || suffix.starts_with('.') => Some(Self::Wildcard(suffix.to_string())),
            _ => Some(Self::Exact(name.to_string())),
        }
    }

    /// Whether `host` (already normalized by [`normalize_host`]) is covered by this pattern.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(name) => host == name,
            Self::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix.as_str()),
        }
    }

    /// The length of the name as written (`*.example.com` counts its `*`).
    fn len(&self) -> usize {
        match self {
            Self::Exact(name) => name.len(),
            Self::Wildcard(suffix) => suffix.len() + 1,
        }
    }

    /// How specifically this pattern matches a host it matches, for listener selection:
    /// any exact name beats any wildcard, and a longer wildcard beats a shorter one.
    pub fn listener_specificity(&self) -> ListenerSpecificity {
        match self {
            Self::Exact(_) => ListenerSpecificity::Exact,
            Self::Wildcard(suffix) => ListenerSpecificity::Wildcard(suffix.len()),
        }
    }

    /// How specifically this pattern matches a host it matches, for route precedence:
    /// characters in a matching non-wildcard hostname, then characters in the matching hostname.
    pub fn route_specificity(&self) -> HostSpecificity {
        match self {
            Self::Exact(name) => HostSpecificity {
                exact_chars: name.len(),
                chars: name.len(),
            },
            Self::Wildcard(_) => HostSpecificity {
                exact_chars: 0,
                chars: self.len(),
            },
        }
    }

    /// The hostnames a route hostname `self` serves on a listener whose hostname is `listener`
    /// (Gateway API: the more specific of the two when one covers the other, else nothing).
    pub fn intersect(&self, listener: Option<&HostPattern>) -> Option<HostPattern> {
        let Some(listener) = listener else {
            return Some(self.clone());
        };
        match (self, listener) {
            (Self::Exact(route), Self::Exact(l)) => (route == l).then(|| self.clone()),
            (Self::Exact(route), Self::Wildcard(_)) => listener.matches(route).then(|| self.clone()),
            (Self::Wildcard(_), Self::Exact(l)) => self.matches(l).then(|| listener.clone()),
            (Self::Wildcard(route), Self::Wildcard(l)) => {
                if route.ends_with(l.as_str()) {
                    Some(self.clone())
                } else if l.ends_with(route.as_str()) {
                    Some(listener.clone())
                } else {
                    None
                }
            }
        }
    }
}

/// How a listener's hostname matched the request host; larger is more specific.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ListenerSpecificity {
    /// The listener has no hostname.
    Any,
    /// A wildcard, with the length of its suffix.
    Wildcard(usize),
    /// An exact hostname.
    Exact,
}

/// How a route's hostname matched the request host; larger is more specific. A route without
/// hostnames on a listener without one matches with zero on both counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostSpecificity {
    /// Characters of the matching hostname when it is not a wildcard, else 0.
    pub exact_chars: usize,
    /// Characters of the matching hostname.
    pub chars: usize,
}

/// The hostnames a route serves on one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteHosts {
    /// Neither the route nor the listener restricts the host.
    Any,
    /// Only these (never empty).
    Only(Vec<HostPattern>),
}

impl RouteHosts {
    /// Intersects a route's `spec.hostnames` with its listener's hostname. `None` when the route
    /// names hostnames and none of them overlaps the listener's: the route does not apply there.
    pub fn for_listener(route_hostnames: &[String], listener: Option<&HostPattern>) -> Option<Self> {
        let patterns: Vec<HostPattern> = route_hostnames.iter().filter_map(|h| HostPattern::parse(h)).collect();
        if patterns.is_empty() {
            return Some(match listener {
                Some(l) => Self::Only(vec![l.clone()]),
                None => Self::Any,
            });
        }
        let mut served: Vec<HostPattern> = Vec::new();
        for pattern in patterns.iter().filter_map(|p| p.intersect(listener)) {
            if !served.contains(&pattern) {
                served.push(pattern);
            }
        }
        (!served.is_empty()).then_some(Self::Only(served))
    }

    /// The most specific of these hostnames that matches `host`, or `None` if none does.
    pub fn specificity(&self, host: &str) -> Option<HostSpecificity> {
        match self {
            Self::Any => Some(HostSpecificity::default()),
            Self::Only(patterns) => patterns
                .iter()
                .filter(|p| p.matches(host))
                .map(HostPattern::route_specificity)
                .max(),
        }
    }
}

/// The host part of an `:authority` (or `Host`) value: without userinfo and port, lowercased,
/// without a trailing dot. IPv6 literals keep their brackets (`[::1]:80` → `[::1]`).
pub fn normalize_host(authority: &str) -> String {
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    host.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        HostPattern::parse(s).expect("valid pattern")
    }

    #[test]
    fn wildcard_needs_at_least_one_more_label() {
        let w = p("*.example.com");
        assert!(w.matches("foo.example.com"));
        assert!(w.matches("a.b.example.com"));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("fooexample.com"));
        assert!(p("Foo.Example.COM").matches("foo.example.com"));
    }

    #[test]
    fn only_a_leading_star_label_is_a_wildcard() {
        // `*foo.example.com` is not a wildcard (the `*` must be a whole label): it stays an exact
        // name that no real host equals.
        assert_eq!(p("*foo.example.com"), HostPattern::Exact("*foo.example.com".into()));
        assert!(!p("*foo.example.com").matches("barfoo.example.com"));
        assert_eq!(p("*"), HostPattern::Wildcard(String::new()));
    }

    #[test]
    fn wildcard_never_matches_its_bare_suffix() {
        // The wildcard label must cover at least one character: a host equal to the suffix
        // (`.example.com`, or the empty host for a bare `*`) is not matched.
        assert!(!p("*.example.com").matches(".example.com"));
        assert!(!p("*").matches(""));
        assert!(p("*").matches("a"));
    }

    #[test]
    fn normalize_strips_port_userinfo_and_case() {
        assert_eq!(normalize_host("Foo.Example.com:8080"), "foo.example.com");
        assert_eq!(normalize_host("127.0.0.1:80"), "127.0.0.1");
        assert_eq!(normalize_host("[::1]:8080"), "[::1]");
        assert_eq!(normalize_host("[::1]"), "[::1]");
        assert_eq!(normalize_host("user@host.test:1"), "host.test");
        assert_eq!(normalize_host("host.test."), "host.test");
        assert_eq!(normalize_host(""), "");
        assert_eq!(normalize_host("weird:port"), "weird:port");
    }

    #[test]
    fn listener_specificity_orders_exact_then_longest_wildcard() {
        assert!(p("foo.bar.com").listener_specificity() > p("*.bar.com").listener_specificity());
        assert!(p("*.foo.bar.com").listener_specificity() > p("*.bar.com").listener_specificity());
        assert!(p("*.bar.com").listener_specificity() > ListenerSpecificity::Any);
    }

    #[test]
    fn intersection_follows_gateway_api() {
        // (route, listener, expected)
        let cases: &[(&str, Option<&str>, Option<&str>)] = &[
            ("foo.example.com", None, Some("foo.example.com")),
            ("foo.example.com", Some("foo.example.com"), Some("foo.example.com")),
            ("foo.example.com", Some("bar.example.com"), None),
            ("foo.example.com", Some("*.example.com"), Some("foo.example.com")),
            ("example.com", Some("*.example.com"), None),
            ("*.example.com", Some("foo.example.com"), Some("foo.example.com")),
            ("*.example.com", Some("example.com"), None),
            ("*.example.com", Some("*.example.com"), Some("*.example.com")),
            ("*.foo.example.com", Some("*.example.com"), Some("*.foo.example.com")),
            ("*.example.com", Some("*.foo.example.com"), Some("*.foo.example.com")),
            ("*.example.com", Some("*.example.org"), None),
        ];
        for (route, listener, expected) in cases {
            let listener = listener.map(p);
            let got = p(route).intersect(listener.as_ref());
            assert_eq!(got, expected.map(p), "route {route} on listener {listener:?}");
        }
    }

    #[test]
    fn route_hosts_for_listener() {
        let l = p("*.example.com");
        assert_eq!(RouteHosts::for_listener(&[], None), Some(RouteHosts::Any));
        assert_eq!(
            RouteHosts::for_listener(&[], Some(&l)),
            Some(RouteHosts::Only(vec![l.clone()]))
        );
        assert_eq!(RouteHosts::for_listener(&["other.org".into()], Some(&l)), None);
        let hosts = RouteHosts::for_listener(&["a.example.com".into(), "other.org".into()], Some(&l));
        assert_eq!(hosts, Some(RouteHosts::Only(vec![p("a.example.com")])));
    }

    #[test]
    fn route_specificity_prefers_exact_then_longer() {
        let hosts = RouteHosts::Only(vec![p("*.example.com"), p("foo.example.com")]);
        assert_eq!(
            hosts.specificity("foo.example.com"),
            Some(HostSpecificity {
                exact_chars: 15,
                chars: 15
            })
        );
        assert_eq!(
            hosts.specificity("bar.example.com"),
            Some(HostSpecificity {
                exact_chars: 0,
                chars: 13
            })
        );
        assert_eq!(hosts.specificity("example.com"), None);
        assert!(p("foo.example.com").route_specificity() > p("*.foo.example.com").route_specificity());
        assert!(p("*.foo.example.com").route_specificity() > p("*.example.com").route_specificity());
        assert!(p("*.example.com").route_specificity() > HostSpecificity::default());
    }
}
