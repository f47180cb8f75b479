//! `body-rewrite`: replaces a word in request and response bodies and reports how many
//! replacements it made in a trailer. A plain proxy-wasm filter (the `proxy-wasm` crate, no
//! tidegate SDK), so it runs unchanged in Envoy; tidegate's tests use it to drive bodies,
//! buffering and trailers through the host.
//!
//! Configuration (plugin configuration, one `key=value` per line, all optional):
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `from` | `hello` | the word to replace (bytes, case-sensitive) |
//! | `to` | `howdy` | what replaces it |
//! | `trailer` | `x-body-rewrites` | trailer that carries the count; empty: add none |
//! | `hold_headers` | `true` | pause the headers until the body is rewritten, so the proxy can send the right `content-length`; `false`: drop `content-length` and let the headers go first (the proxy then chunks) |
//!
//! Per direction the filter pauses every body frame (the host buffers, and calls again with the
//! cumulative size) until the end of the stream. The end is either the last body frame, where
//! it rewrites the body and *creates* the trailer, or the trailers, where it rewrites the body
//! the host buffered for it and *adds* to the trailers. A body over the host's buffer limit
//! fails the stream there (Envoy answers 413, tidegate too).

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { config: Config::default() }) });
}}

#[derive(Clone)]
struct Config {
    from: Vec<u8>,
    to: Vec<u8>,
    trailer: String,
    hold_headers: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            from: b"hello".to_vec(),
            to: b"howdy".to_vec(),
            trailer: "x-body-rewrites".to_string(),
            hold_headers: true,
        }
    }
}

impl Config {
    fn parse(text: &str) -> Result<Self, String> {
        let mut config = Config::default();
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (key, value) = line
                .split_once('=')
                .ok_or_else(|| format!("`{line}` is not key=value"))?;
            match key.trim() {
                "from" if !value.is_empty() => config.from = value.as_bytes().to_vec(),
                "from" => return Err("`from` must not be empty".to_string()),
                "to" => config.to = value.as_bytes().to_vec(),
                "trailer" => config.trailer = value.trim().to_ascii_lowercase(),
                "hold_headers" => config.hold_headers = value.trim() != "false",
                other => return Err(format!("unknown key `{other}`")),
            }
        }
        Ok(config)
    }
}

struct Root {
    config: Config,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _size: usize) -> bool {
        let text = self.get_plugin_configuration().unwrap_or_default();
        match Config::parse(&String::from_utf8_lossy(&text)) {
            Ok(config) => {
                self.config = config;
                true
            }
            Err(e) => {
                log::error!("body-rewrite: bad configuration: {e}");
                false
            }
        }
    }

    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Rewrite {
            config: self.config.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Rewrite {
    config: Config,
}

impl Context for Rewrite {}

/// Replaces every `from` in `body` by `to`; `None` when there is none.
fn replace(body: &[u8], from: &[u8], to: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut out = Vec::with_capacity(body.len());
    let mut count = 0;
    let mut i = 0;
    while i < body.len() {
        if body[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
            count += 1;
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    (count > 0).then_some((out, count))
}

#[derive(Clone, Copy)]
enum Direction {
    Request,
    Response,
}

impl Rewrite {
    /// Rewrites everything buffered for this direction; returns the count.
    fn rewrite(&self, direction: Direction) -> usize {
        let body = match direction {
            Direction::Request => self.get_http_request_body(0, usize::MAX),
            Direction::Response => self.get_http_response_body(0, usize::MAX),
        }
        .unwrap_or_default();
        let Some((rewritten, count)) = replace(&body, &self.config.from, &self.config.to) else {
            return 0;
        };
        match direction {
            Direction::Request => self.set_http_request_body(0, body.len(), &rewritten),
            Direction::Response => self.set_http_response_body(0, body.len(), &rewritten),
        }
        count
    }

    fn add_trailer(&self, direction: Direction, count: usize) {
        if self.config.trailer.is_empty() {
            return;
        }
        let value = count.to_string();
        match direction {
            Direction::Request => self.add_http_request_trailer(&self.config.trailer, &value),
            Direction::Response => self.add_http_response_trailer(&self.config.trailer, &value),
        }
    }

    fn on_body(&self, direction: Direction, end_of_stream: bool) -> Action {
        if !end_of_stream {
            // The host buffers; the next call sees everything so far.
            return Action::Pause;
        }
        let count = self.rewrite(direction);
        self.add_trailer(direction, count);
        Action::Continue
    }

    fn on_trailers(&self, direction: Direction) -> Action {
        // The stream ends with trailers: the body was buffered for us (we paused every frame).
        let count = self.rewrite(direction);
        self.add_trailer(direction, count);
        Action::Continue
    }
}

impl HttpContext for Rewrite {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        if end_of_stream || self.config.hold_headers {
            // No body, or hold the headers until the body is rewritten (the proxy then sends
            // the new length).
            return if end_of_stream { Action::Continue } else { Action::Pause };
        }
        self.set_http_request_header("content-length", None);
        Action::Continue
    }

    fn on_http_request_body(&mut self, _body_size: usize, end_of_stream: bool) -> Action {
        self.on_body(Direction::Request, end_of_stream)
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        self.on_trailers(Direction::Request)
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        if end_of_stream {
            return Action::Continue;
        }
        if self.config.hold_headers {
            return Action::Pause;
        }
        self.set_http_response_header("content-length", None);
        Action::Continue
    }

    fn on_http_response_body(&mut self, _body_size: usize, end_of_stream: bool) -> Action {
        self.on_body(Direction::Response, end_of_stream)
    }

    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        self.on_trailers(Direction::Response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_every_occurrence() {
        assert_eq!(
            replace(b"hello, hello world", b"hello", b"howdy"),
            Some((b"howdy, howdy world".to_vec(), 2))
        );
        assert_eq!(replace(b"nothing here", b"hello", b"howdy"), None);
        assert_eq!(replace(b"hellhello", b"hello", b"X"), Some((b"hellX".to_vec(), 1)));
    }

    #[test]
    fn configuration() {
        let config = Config::parse("from=a\nto=bb\ntrailer=\nhold_headers=false\n").unwrap();
        assert_eq!((config.from, config.to), (b"a".to_vec(), b"bb".to_vec()));
        assert!(config.trailer.is_empty() && !config.hold_headers);
        assert!(Config::parse("from=").is_err());
        assert!(Config::parse("colour=blue").is_err());
        assert!(Config::parse("").unwrap().hold_headers);
    }
}
