//! The router's per-request decision: match, apply the rule's filters, pick a backend, apply the
//! backend's filters. Pure, so every outcome is testable natively; the shell only carries it out.

use crate::actions::{HeaderOp, RedirectSource, modify_path, redirect};
use crate::config::RouterConfig;
use crate::hostname::normalize_host;
use crate::random::pick_weighted;
use crate::request::Request;
use crate::table::{Filter, Matched, RouteTable};

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Answer it here (no route, no usable backend, or a redirect).
    Reply(LocalReply),
    /// Send it on.
    Forward(Forward),
}

/// A response the filter sends itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// A routed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// `namespace/name/rule-index`, for `tidegate.route`; `None` for a request to a Service
    /// that no route applies to (it goes to the Service as it is).
    pub route: Option<String>,
    /// For `tidegate.cluster`.
    pub cluster: String,
    /// Request header edits, in order (`:authority` and `:path` for rewrites included).
    pub request_ops: Vec<HeaderOp>,
    /// Response header edits, to apply when the response headers arrive.
    pub response_ops: Vec<HeaderOp>,
}

/// The compiled router configuration.
#[derive(Debug, Default)]
pub struct Router {
    table: RouteTable,
}

impl Router {
    /// Compiles a configuration; warnings name what was ignored and why.
    pub fn new(config: &RouterConfig) -> (Self, Vec<String>) {
        let (table, warnings) = RouteTable::compile(config);
        (Router { table }, warnings)
    }

    /// Parses and compiles the JSON the host passes to `proxy_on_configure`. An empty buffer is
    /// an empty configuration (every request gets 404).
    pub fn from_json(json: &[u8]) -> Result<(Self, Vec<String>), serde_json::Error> {
        if json.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::new(&RouterConfig::default()));
        }
        let config: RouterConfig = serde_json::from_slice(json)?;
        Ok(Self::new(&config))
    }

    /// Decides what happens to `req`. `random` picks among weighted backends.
    pub fn decide(&self, req: &Request, random: u64) -> Decision {
        let matched = match &req.service {
            Some(service) => {
                // East-west (GAMMA): the Service port's routes, chosen by the client's namespace.
                let port = req.listener_port.unwrap_or_default();
                let Some(routes) = self
                    .table
                    .service_routes(service, port, req.source_namespace.as_deref())
                else {
                    return Decision::Forward(Forward {
                        route: None,
                        cluster: format!("{service}:{port}"),
                        request_ops: Vec::new(),
                        response_ops: Vec::new(),
                    });
                };
                routes.find(req)
            }
            None => self.table.find(req),
        };
        let Some(matched) = matched else {
            return Decision::Reply(reply(404, "no route matches this request"));
        };
        let mut state = Rewritten::new(req);
        if let Some(reply) = state.apply(&matched.rule.filters, req, &matched) {
            return Decision::Reply(reply);
        }
        let backends = &matched.rule.backends;
        let Some(backend) = pick_weighted(backends.iter().map(|b| b.weight), random).and_then(|i| backends.get(i))
        else {
            // No backendRefs, or only zero weights: the Gateway API asks for a 500.
            return Decision::Reply(reply(500, "the matched route has no backend to send to"));
        };
        let Some(cluster) = &backend.cluster else {
            // The share of traffic of a backendRef that does not resolve gets a 500.
            return Decision::Reply(reply(500, "the chosen backend of the matched route does not resolve"));
        };
        if let Some(reply) = state.apply(&backend.filters, req, &matched) {
            return Decision::Reply(reply);
        }
        Decision::Forward(Forward {
            route: Some(format!("{}/{}", matched.route.id, matched.rule.index)),
            cluster: cluster.clone(),
            request_ops: state.request_ops,
            response_ops: state.response_ops,
        })
    }
}

fn reply(status: u16, body: &str) -> LocalReply {
    LocalReply {
        status,
        headers: vec![("content-type".into(), "text/plain".into())],
        body: format!("{body}\n"),
    }
}

/// The request as the filters applied so far left it.
struct Rewritten {
    authority: String,
    path: Vec<u8>,
    request_ops: Vec<HeaderOp>,
    response_ops: Vec<HeaderOp>,
}

impl Rewritten {
    fn new(req: &Request) -> Self {
        Rewritten {
            authority: req.authority.clone(),
            path: req.path.clone(),
            request_ops: Vec::new(),
            response_ops: Vec::new(),
        }
    }

    /// Applies filters in order; a redirect ends the request with a local reply.
    fn apply(&mut self, filters: &[Filter], req: &Request, matched: &Matched<'_>) -> Option<LocalReply> {
        let prefix = matched.matcher.path.replaceable_prefix();
        for filter in filters {
            match filter {
                Filter::RequestHeaders(ops) => self.request_ops.extend(ops.iter().cloned()),
                Filter::ResponseHeaders(ops) => self.response_ops.extend(ops.iter().cloned()),
                Filter::Redirect(redirect_filter) => {
                    let default_scheme = if matched.listener.is_https() { "https" } else { "http" };
                    let host = normalize_host(&self.authority);
                    let src = RedirectSource {
                        scheme: req.scheme.as_deref().unwrap_or(default_scheme),
                        host: &host,
                        path: &self.path,
                        matched_prefix: prefix,
                        listener_port: matched.listener.port,
                    };
                    let (status, location) = redirect(redirect_filter, &src);
                    return Some(LocalReply {
                        status,
                        headers: vec![("location".into(), location)],
                        body: String::new(),
                    });
                }
                Filter::Rewrite(rewrite) => {
                    if let Some(hostname) = &rewrite.hostname {
                        self.authority = hostname.clone();
                        self.request_ops
                            .push(HeaderOp::Set(":authority".into(), hostname.as_bytes().to_vec()));
                        // A host that keeps HTTP/1's Host beside :authority must see both change.
                        if req.header("host").is_some() {
                            self.request_ops
                                .push(HeaderOp::Set("host".into(), hostname.as_bytes().to_vec()));
                        }
                    }
                    if let Some(modifier) = &rewrite.path {
                        self.path = modify_path(&self.path, modifier, prefix);
                        self.request_ops.push(HeaderOp::Set(":path".into(), self.path.clone()));
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests;
