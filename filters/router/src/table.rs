//! The route table: [`RouterConfig`] compiled once per configuration into listeners whose
//! matches are already sorted by Gateway API precedence, so a request only walks a list.
//!
//! Precedence (first difference wins):
//! 1. the listener: on the request's port, the one whose hostname matches the host most
//!    specifically (exact, then the longest wildcard, then none);
//! 2. on that listener, the route hostname that matches the host most specifically
//!    (characters of a non-wildcard hostname, then characters of the hostname) — this depends
//!    on the request, so it is the only part computed per request;
//! 3. the match: Exact path, longest PathPrefix, RegularExpression; then a method; then more
//!    headers; then more query params;
//! 4. the oldest route (`creationTimestamp`), then `namespace/name` alphabetically;
//! 5. rule order, then match order within the rule.
//!
//! Steps 3–5 do not depend on the request, so each listener keeps its matches sorted by them.

use std::cmp::Reverse;
use std::collections::HashMap;

use crate::actions::{HeaderOp, header_ops};
use crate::config::{
    HttpRequestRedirectFilter, HttpRouteFilter, HttpUrlRewriteFilter, Listener, Route, RouterConfig, ServiceRoutes,
    filter_type,
};
use crate::hostname::{HostPattern, HostSpecificity, ListenerSpecificity, RouteHosts};
use crate::matching::{MatchRank, Matcher};
use crate::request::Request;
use crate::timestamp::parse_rfc3339;

/// The compiled configuration.
#[derive(Debug, Default)]
pub struct RouteTable {
    listeners: Vec<CompiledListener>,
    /// GAMMA: by Service (`namespace/name`), its ports that have routes.
    services: HashMap<String, Vec<CompiledService>>,
}

/// The routes attached to one Service port, each set compiled as a listener of its own that
/// matches every host (meshes match a Service by its address, never by `hostnames`).
#[derive(Debug)]
struct CompiledService {
    port: u16,
    producer: Option<CompiledListener>,
    consumers: HashMap<String, CompiledListener>,
}

impl CompiledService {
    fn compile(service: &ServiceRoutes, warnings: &mut Vec<String>) -> Self {
        let listener = |routes: &[Route], warnings: &mut Vec<String>| {
            let routes = routes
                .iter()
                .map(|r| Route {
                    hostnames: Vec::new(),
                    ..r.clone()
                })
                .collect();
            let listener = Listener {
                gateway: service.service.clone(),
                name: String::new(),
                port: service.port,
                protocol: "HTTP".into(),
                hostname: None,
                routes,
            };
            CompiledListener::compile(&listener, warnings)
        };
        CompiledService {
            port: service.port,
            producer: (!service.producer.is_empty()).then(|| listener(&service.producer, warnings)),
            consumers: service
                .consumers
                .iter()
                .filter(|(_, routes)| !routes.is_empty())
                .map(|(namespace, routes)| (namespace.clone(), listener(routes, warnings)))
                .collect(),
        }
    }
}

/// One Gateway listener with its routes.
#[derive(Debug)]
pub struct CompiledListener {
    pub gateway: String,
    pub name: String,
    pub port: u16,
    pub protocol: String,
    hostname: Option<HostPattern>,
    routes: Vec<CompiledRoute>,
    /// Every match of every rule of every route, sorted by steps 3–5 of the precedence.
    entries: Vec<Entry>,
}

/// An HTTPRoute as attached to one listener.
#[derive(Debug)]
pub struct CompiledRoute {
    /// `namespace/name`.
    pub id: String,
    hosts: RouteHosts,
    pub rules: Vec<CompiledRule>,
}

/// One rule of a route.
#[derive(Debug)]
pub struct CompiledRule {
    /// Position in the route's `rules`, as reported in `tidegate.route`.
    pub index: usize,
    pub filters: Vec<Filter>,
    pub backends: Vec<CompiledBackend>,
}

/// A resolved backendRef.
#[derive(Debug)]
pub struct CompiledBackend {
    pub cluster: Option<String>,
    pub weight: u32,
    pub filters: Vec<Filter>,
}

/// A route filter, ready to apply.
#[derive(Debug, Clone)]
pub enum Filter {
    RequestHeaders(Vec<HeaderOp>),
    ResponseHeaders(Vec<HeaderOp>),
    Redirect(HttpRequestRedirectFilter),
    Rewrite(HttpUrlRewriteFilter),
}

#[derive(Debug)]
struct Entry {
    route: usize,
    rule: usize,
    matcher: Matcher,
}

/// The rule a request matched, with everything needed to act on it.
#[derive(Debug, Clone, Copy)]
pub struct Matched<'a> {
    pub listener: &'a CompiledListener,
    pub route: &'a CompiledRoute,
    pub rule: &'a CompiledRule,
    pub matcher: &'a Matcher,
}

impl RouteTable {
    /// Compiles the configuration. Problems that do not stop the rest from working (an invalid
    /// regex, an unsupported filter) are returned as warnings naming the route.
    pub fn compile(config: &RouterConfig) -> (Self, Vec<String>) {
        let mut warnings = Vec::new();
        let listeners = config
            .listeners
            .iter()
            .map(|l| CompiledListener::compile(l, &mut warnings))
            .collect();
        let mut services: HashMap<String, Vec<CompiledService>> = HashMap::new();
        for service in &config.services {
            services
                .entry(service.service.clone())
                .or_default()
                .push(CompiledService::compile(service, &mut warnings));
        }
        (RouteTable { listeners, services }, warnings)
    }

    /// The routes that serve a request to Service `service` on `port` from a client in
    /// `client_namespace`: that namespace's consumer routes when it has any, else the
    /// producer routes. `None` when no route applies: the request goes to the Service itself.
    pub fn service_routes(
        &self,
        service: &str,
        port: u16,
        client_namespace: Option<&str>,
    ) -> Option<&CompiledListener> {
        let compiled = self.services.get(service)?.iter().find(|s| s.port == port)?;
        client_namespace
            .and_then(|namespace| compiled.consumers.get(namespace))
            .or(compiled.producer.as_ref())
    }

    /// The listener that serves `req`, if any.
    pub fn select_listener(&self, req: &Request) -> Option<&CompiledListener> {
        let mut best: Option<(ListenerSpecificity, &CompiledListener)> = None;
        for listener in &self.listeners {
            if req.listener_port.is_some_and(|p| p != listener.port)
                || req.gateway.as_deref().is_some_and(|g| g != listener.gateway)
            {
                continue;
            }
            let specificity = match &listener.hostname {
                None => ListenerSpecificity::Any,
                Some(h) if h.matches(&req.host) => h.listener_specificity(),
                Some(_) => continue,
            };
            // Strictly greater: on a tie (two Gateways on one port, when the host did not say
            // which one) the first listener in the configuration keeps the request.
            if best.is_none_or(|(b, _)| specificity > b) {
                best = Some((specificity, listener));
            }
        }
        best.map(|(_, l)| l)
    }

    /// The rule that serves `req`, if any.
    pub fn find(&self, req: &Request) -> Option<Matched<'_>> {
        let listener = self.select_listener(req)?;
        listener.find(req)
    }
}

impl CompiledListener {
    fn compile(listener: &Listener, warnings: &mut Vec<String>) -> Self {
        let hostname = listener.hostname.as_deref().and_then(HostPattern::parse);
        let mut routes = Vec::new();
        // (rank, age, route id) per entry, kept beside the entries for the sort.
        let mut keyed: Vec<(Entry, SortKey)> = Vec::new();
        for route in &listener.routes {
            let id = format!("{}/{}", route.namespace, route.name);
            let Some(hosts) = RouteHosts::for_listener(&route.hostnames, hostname.as_ref()) else {
                // Gateway API: no hostname in common with the listener → the route does not
                // apply there (the host reports that in the route's status).
                continue;
            };
            let route_index = routes.len();
            let age = route.creation_timestamp.as_deref().and_then(parse_rfc3339);
            if route.creation_timestamp.is_some() && age.is_none() {
                warnings.push(format!(
                    "route {id}: unparsable creationTimestamp; it ranks as the newest"
                ));
            }
            let rules = compile_rules(route, &id, warnings, |rule, matcher| {
                let key = SortKey {
                    rank: Reverse(matcher.rank()),
                    age: AgeKey(age),
                    id: id.clone(),
                };
                keyed.push((
                    Entry {
                        route: route_index,
                        rule,
                        matcher,
                    },
                    key,
                ));
            });
            routes.push(CompiledRoute { id, hosts, rules });
        }
        // Stable: equal keys (same route) keep rule order, then match order.
        keyed.sort_by(|a, b| a.1.cmp(&b.1));
        CompiledListener {
            gateway: listener.gateway.clone(),
            name: listener.name.clone(),
            port: listener.port,
            protocol: listener.protocol.clone(),
            hostname,
            routes,
            entries: keyed.into_iter().map(|(e, _)| e).collect(),
        }
    }

    /// Whether this listener terminates TLS (the scheme a request has when `:scheme` is missing).
    pub fn is_https(&self) -> bool {
        self.protocol.eq_ignore_ascii_case("HTTPS")
    }

    /// The rule of this listener's routes that serves `req`, if any.
    pub fn find(&self, req: &Request) -> Option<Matched<'_>> {
        // Host specificity per route, computed on first use: most requests touch few routes.
        let mut host_match: Vec<Option<Option<HostSpecificity>>> = vec![None; self.routes.len()];
        let mut best: Option<(HostSpecificity, &Entry)> = None;
        for entry in &self.entries {
            let Some(route) = self.routes.get(entry.route) else {
                continue;
            };
            let Some(cached) = host_match.get_mut(entry.route) else {
                continue;
            };
            let Some(specificity) = *cached.get_or_insert_with(|| route.hosts.specificity(&req.host)) else {
                continue;
            };
            // Entries are in precedence order, so an entry only displaces the current best with a
            // strictly more specific hostname.
            if best.is_some_and(|(b, _)| specificity <= b) {
                continue;
            }
            if entry.matcher.matches(req) {
                best = Some((specificity, entry));
            }
        }
        let (_, entry) = best?;
        let route = self.routes.get(entry.route)?;
        let rule = route.rules.get(entry.rule)?;
        Some(Matched {
            listener: self,
            route,
            rule,
            matcher: &entry.matcher,
        })
    }
}

/// Steps 3–5 of the precedence, smallest first.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SortKey {
    rank: Reverse<MatchRank>,
    age: AgeKey,
    id: String,
}

/// Older first; a route without a (parsable) timestamp after every route with one.
#[derive(Debug, PartialEq, Eq)]
struct AgeKey(Option<(i64, u32)>);

impl PartialOrd for AgeKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for AgeKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        match (self.0, other.0) {
            (Some(a), Some(b)) => a.cmp(&b),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        }
    }
}

/// Compiles a route's rules, calling `on_match(rule_index, matcher)` for each of their matches.
fn compile_rules(
    route: &Route,
    id: &str,
    warnings: &mut Vec<String>,
    mut on_match: impl FnMut(usize, Matcher),
) -> Vec<CompiledRule> {
    let mut rules = Vec::with_capacity(route.rules.len());
    for (index, rule) in route.rules.iter().enumerate() {
        let mut rule_warnings = Vec::new();
        if rule.matches.is_empty() {
            on_match(index, Matcher::default_match());
        }
        for m in &rule.matches {
            on_match(index, Matcher::compile(m, &mut rule_warnings));
        }
        let filters = compile_filters(&rule.filters, &mut rule_warnings);
        let backends = rule
            .backends
            .iter()
            .map(|b| CompiledBackend {
                cluster: b.cluster.clone(),
                weight: b.weight,
                filters: compile_filters(&b.filters, &mut rule_warnings),
            })
            .collect();
        warnings.extend(
            rule_warnings
                .into_iter()
                .map(|w| format!("route {id} rule {index}: {w}")),
        );
        rules.push(CompiledRule {
            index,
            filters,
            backends,
        });
    }
    rules
}

fn compile_filters(filters: &[HttpRouteFilter], warnings: &mut Vec<String>) -> Vec<Filter> {
    let mut out = Vec::with_capacity(filters.len());
    for f in filters {
        let compiled = match f.kind.as_str() {
            filter_type::REQUEST_HEADER_MODIFIER => f
                .request_header_modifier
                .as_ref()
                .map(|h| Filter::RequestHeaders(header_ops(h))),
            filter_type::RESPONSE_HEADER_MODIFIER => f
                .response_header_modifier
                .as_ref()
                .map(|h| Filter::ResponseHeaders(header_ops(h))),
            filter_type::REQUEST_REDIRECT => f.request_redirect.clone().map(Filter::Redirect),
            filter_type::URL_REWRITE => f.url_rewrite.clone().map(Filter::Rewrite),
            other => {
                // Mirrors, CORS and extension refs are not implemented by this filter; serving
                // the request without them beats failing it.
                warnings.push(format!(
                    "filter type {other:?} is not supported by the router and is ignored"
                ));
                continue;
            }
        };
        match compiled {
            Some(filter) => out.push(filter),
            None => warnings.push(format!(
                "filter type {:?} has no matching configuration member and is ignored",
                f.kind
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests;
