//! A policy verdict: let the request through, or answer it here.
//!
//! A [`Verdict`] is plain data, so a filter's decision logic can return one and be unit-tested
//! natively (`assert_eq!(check(&req), Verdict::deny(403, "…"))`); the proxy-wasm glue then
//! carries it out with [`Verdict::apply`], which returns the [`Action`] the header callback
//! must return.

use proxy_wasm::types::Action;

use crate::sys;

/// What a policy decided about the current request.
#[must_use = "a verdict does nothing until it is applied: `return verdict.apply();`"]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let the request go on to the next filter.
    Allow,
    /// Answer the request here, without forwarding it.
    Deny(Denial),
}

/// The local reply of a [`Verdict::Deny`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// HTTP status code (for example 401, 403, 429).
    pub status: u16,
    /// Response headers, in order. [`Verdict::deny`] adds `content-type: text/plain` when the
    /// body is not empty and no `content-type` was given.
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: String,
}

// === impl Verdict ===

impl Verdict {
    /// Let the request through.
    ///
    /// ```
    /// use tidegate_sdk::Verdict;
    /// assert!(Verdict::allow().is_allowed());
    /// ```
    pub fn allow() -> Self {
        Verdict::Allow
    }

    /// Answer the request with `status` and `body` (sent as `text/plain` unless a
    /// `content-type` header is added with [`with_header`](Self::with_header)).
    ///
    /// ```
    /// use tidegate_sdk::Verdict;
    /// let verdict = Verdict::deny(403, "no access\n").with_header("x-denied-by", "my-policy");
    /// assert!(!verdict.is_allowed());
    /// assert_eq!(verdict.status(), Some(403));
    /// ```
    pub fn deny(status: u16, body: impl Into<String>) -> Self {
        Verdict::Deny(Denial {
            status,
            headers: Vec::new(),
            body: body.into(),
        })
    }

    /// Adds a header to the local reply of a denial; an `Allow` is returned unchanged.
    ///
    /// ```
    /// use tidegate_sdk::Verdict;
    /// let verdict = Verdict::deny(401, "").with_header("www-authenticate", "Bearer");
    /// # assert_eq!(Verdict::allow().with_header("x", "y"), Verdict::allow());
    /// # let _ = verdict;
    /// ```
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        if let Verdict::Deny(denial) = &mut self {
            denial.headers.push((name.into(), value.into()));
        }
        self
    }

    /// Whether the request may go on.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Verdict::Allow)
    }

    /// The status of the local reply, `None` for `Allow`.
    pub fn status(&self) -> Option<u16> {
        match self {
            Verdict::Allow => None,
            Verdict::Deny(denial) => Some(denial.status),
        }
    }

    /// Carries the verdict out, from `on_http_request_headers` (or `on_http_response_headers`,
    /// to replace the upstream's response), and returns what that callback must return:
    ///
    /// - `Allow` → [`Action::Continue`]: the next filter runs.
    /// - `Deny` → sends the local reply (`proxy_send_local_response`) and returns
    ///   [`Action::Pause`]: the host answers with the reply, and no later filter, router or
    ///   upstream sees the request. (In tidegate the filter's response callbacks do not run for a
    ///   local reply.)
    ///
    /// If the host refuses the reply (called outside a header callback, or after the response
    /// was sent), the error is logged and the request's stream is reset instead
    /// (`proxy_close_stream`): a denied request never goes through.
    ///
    /// ```no_run
    /// use tidegate_sdk::proxy_wasm::traits::{Context, HttpContext};
    /// use tidegate_sdk::proxy_wasm::types::Action;
    /// use tidegate_sdk::Verdict;
    ///
    /// pub struct RequireUser;
    /// impl Context for RequireUser {}
    /// impl HttpContext for RequireUser {
    ///     fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
    ///         let verdict = match self.get_http_request_header("x-user") {
    ///             Some(_) => Verdict::allow(),
    ///             None => Verdict::deny(401, "who are you?\n"),
    ///         };
    ///         verdict.apply()
    ///     }
    /// }
    /// # fn main() { let _ = RequireUser; }
    /// ```
    pub fn apply(self) -> Action {
        let denial = match self {
            Verdict::Allow => return Action::Continue,
            Verdict::Deny(denial) => denial,
        };
        let has_content_type = denial
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
        let mut headers: Vec<(&str, &str)> = denial.headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        if !denial.body.is_empty() && !has_content_type {
            headers.push(("content-type", "text/plain"));
        }
        if let Err(status) = sys::send_local_response(
            u32::from(denial.status),
            "denied_by_filter",
            denial.body.as_bytes(),
            &headers,
        ) {
            log::error!(
                "tidegate-sdk: the host refused the local reply {} ({}); resetting the stream instead",
                denial.status,
                status.name()
            );
            if let Err(status) = sys::close_request() {
                log::error!(
                    "tidegate-sdk: the host refused to reset the stream too ({})",
                    status.name()
                );
            }
        }
        Action::Pause
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_plain_data() {
        let deny = Verdict::deny(429, "slow down\n").with_header("retry-after", "1");
        assert_eq!(
            deny,
            Verdict::Deny(Denial {
                status: 429,
                headers: vec![("retry-after".into(), "1".into())],
                body: "slow down\n".into(),
            })
        );
        assert_eq!(deny.status(), Some(429));
        assert_eq!(Verdict::allow().status(), None);
        assert_eq!(Verdict::allow().apply(), Action::Continue);
        // Natively there is no host to send the reply to: still paused, never a panic.
        assert_eq!(deny.apply(), Action::Pause);
    }
}
