//! Error types. `GuardError` is a refusal by the guard (nothing was sent to the
//! refused destination); `FetchError` is the outcome of a whole request.

use std::error::Error as StdError;
use std::net::IpAddr;

/// Why the guard refused a destination. Also travels, boxed, through reqwest
/// (from the DNS resolver and the redirect policy) and is recovered from the
/// error's `source()` chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    #[error("URL scheme '{0}' is not allowed (only http and https)")]
    Scheme(String),
    #[error("URL has no host")]
    EmptyHost,
    #[error("destination {host} resolves to blocked address {addr}: {reason}")]
    Blocked { host: String, addr: IpAddr, reason: &'static str },
    #[error("DNS resolution of {host} failed, refusing to connect: {message}")]
    Dns { host: String, message: String },
    #[error("too many redirects (limit {limit})")]
    TooManyRedirects { limit: usize },
}

/// The outcome of a failed [`crate::Guard::send`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The guard refused the request or one of its redirect hops; no
    /// connection was made to the refused destination.
    #[error("request blocked by SSRF guard: {0}")]
    Security(#[from] GuardError),
    /// The connect timeout or the overall request timeout elapsed.
    #[error("request timed out")]
    Timeout,
    /// The response body exceeded the size cap; reading was aborted.
    #[error("response body exceeds the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// The caller's request could not be built (bad header name or value).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// Connection, TLS or protocol failure.
    #[error("transport error: {0}")]
    Transport(String),
}

impl FetchError {
    /// True when the guard refused the request (a security failure, not a
    /// flaky network).
    pub fn is_security(&self) -> bool {
        matches!(self, FetchError::Security(_))
    }

    /// A stable machine-readable code for APIs, events and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            FetchError::Security(_) => "ssrf_blocked",
            FetchError::Timeout => "timeout",
            FetchError::TooLarge { .. } => "response_too_large",
            FetchError::InvalidRequest(_) => "invalid_request",
            FetchError::Transport(_) => "transport",
        }
    }

    /// Classifies a reqwest error. Guard refusals raised inside reqwest (by the
    /// resolver or the redirect policy) are found by walking `source()`, so
    /// they are reported as security errors rather than transport noise.
    pub(crate) fn from_reqwest(err: &reqwest::Error) -> Self {
        if let Some(guard) = find_guard_error(err) {
            return FetchError::Security(guard.clone());
        }
        if err.is_timeout() {
            return FetchError::Timeout;
        }
        FetchError::Transport(error_chain(err))
    }
}

/// The first `GuardError` in `err`'s source chain, including `err` itself.
pub fn find_guard_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a GuardError> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(g) = e.downcast_ref::<GuardError>() {
            return Some(g);
        }
        cur = e.source();
    }
    None
}

/// reqwest's top-level message is terse ("error sending request"); the cause
/// (connection refused, TLS failure…) is further down the chain.
fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let msg = e.to_string();
        if !out.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = e.source();
    }
    out
}
