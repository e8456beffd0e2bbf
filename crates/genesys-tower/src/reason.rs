//! [`RetryReason`], apart from both the retry layer that decides it and the counters that count
//! it, so that neither module depends on the other for it. Re-exported as
//! [`retry::RetryReason`](crate::retry::RetryReason) and [`metrics::RetryReason`](crate::metrics::RetryReason).

use std::fmt;

use serde::Serialize;

/// Why an attempt was retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RetryReason {
    /// The connection failed before the request was sent.
    Connect,
    /// The attempt failed after the request may have reached the server (timeout, reset), and the
    /// request was safe to send again.
    Ambiguous,
    /// 408 Request Timeout.
    RequestTimeout,
    /// 429 Too Many Requests.
    RateLimited,
    /// A 5xx status the policy retries (500, 502, 503, 504).
    ServerError,
}

impl RetryReason {
    /// A short name for logs and reports.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Connect => "connect",
            RetryReason::Ambiguous => "ambiguous",
            RetryReason::RequestTimeout => "request_timeout",
            RetryReason::RateLimited => "rate_limited",
            RetryReason::ServerError => "server_error",
        }
    }
}

impl fmt::Display for RetryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
