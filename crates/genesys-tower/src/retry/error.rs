//! The retry layer's own error.

use std::fmt;
use std::time::Duration;

use http::{Method, StatusCode};

use crate::BoxError;

/// Why the retry layer ended a call with an error of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// An attempt failed after the request may have reached the server (a timeout, a reset), and
    /// the request was not safe to send again: it may or may not have been applied.
    OutcomeUnknown,
    /// The server asked to wait longer than the policy's `max_retry_after`.
    RetryAfterTooLong,
    /// The next attempt could not start within the policy's total deadline.
    DeadlineExceeded,
    /// Every attempt the policy allows failed.
    AttemptsExhausted,
    /// The retry budget, shared by all requests, was spent.
    BudgetExhausted,
}

impl ErrorKind {
    /// A short name for logs, spans and reports (`outcome_unknown`, ...).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::OutcomeUnknown => "outcome_unknown",
            ErrorKind::RetryAfterTooLong => "retry_after_too_long",
            ErrorKind::DeadlineExceeded => "deadline_exceeded",
            ErrorKind::AttemptsExhausted => "attempts_exhausted",
            ErrorKind::BudgetExhausted => "budget_exhausted",
        }
    }
}

/// The error of [`Retry`](super::Retry) when it stops for a reason of its own.
///
/// Errors the policy never retries (classified as not retryable) pass through unchanged; an error
/// the layer would have retried but did not is wrapped in this type, saying why, with the last
/// attempt's error as its [`source`](std::error::Error::source). It converts into
/// [`BoxError`](crate::BoxError); get it back with `downcast_ref::<retry::Error>()`.
///
/// When the last attempt produced a response (a 503, say) and the layer stops because attempts or
/// the budget are spent, that response is returned as it is, not this error.
///
/// `Display` says why the call ended and includes the last attempt's own error text (a reset,
/// a timeout), so that a log line with just this error tells the whole story; the same error is
/// also its [`source`](std::error::Error::source) for code that walks the chain.
pub struct Error {
    kind: ErrorKind,
    attempts: u32,
    method: Option<Method>,
    status: Option<StatusCode>,
    retry_after: Option<Duration>,
    limit: Option<Duration>,
    source: Option<BoxError>,
    maybe_applied: bool,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, attempts: u32) -> Self {
        Error {
            kind,
            attempts,
            method: None,
            status: None,
            retry_after: None,
            limit: None,
            source: None,
            maybe_applied: false,
        }
    }

    pub(crate) fn with_maybe_applied(mut self, maybe_applied: bool) -> Self {
        self.maybe_applied = maybe_applied;
        self
    }

    pub(crate) fn with_method(mut self, method: Method) -> Self {
        self.method = Some(method);
        self
    }

    pub(crate) fn with_status(mut self, status: Option<StatusCode>) -> Self {
        self.status = status;
        self
    }

    pub(crate) fn with_retry_after(mut self, hint: Option<Duration>) -> Self {
        self.retry_after = hint;
        self
    }

    pub(crate) fn with_limit(mut self, limit: Duration) -> Self {
        self.limit = Some(limit);
        self
    }

    pub(crate) fn with_source(mut self, source: Option<BoxError>) -> Self {
        self.source = source;
        self
    }

    /// Why the call ended.
    #[must_use]
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Whether the request may or may not have been applied by the server
    /// ([`ErrorKind::OutcomeUnknown`]).
    #[must_use]
    pub fn is_outcome_unknown(&self) -> bool {
        self.kind == ErrorKind::OutcomeUnknown
    }

    /// Whether the request may have been applied by the server: its outcome is unknown
    /// ([`ErrorKind::OutcomeUnknown`]), or an attempt before the call ended failed after the
    /// request may have reached the server and was sent again as safe to send twice (see
    /// [`RetryInfo::maybe_applied`](super::RetryInfo::maybe_applied)). Send it again only with
    /// the same `Idempotency-Key`, or after checking.
    #[must_use]
    pub fn may_have_been_applied(&self) -> bool {
        self.kind == ErrorKind::OutcomeUnknown || self.maybe_applied
    }

    /// Attempts sent before the call ended.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The status of the last response, when the last attempt got one.
    #[must_use]
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// The server's hint (`Retry-After` or a rate-limit reset), when it ended the call.
    #[must_use]
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The limit that the hint or the next attempt would have passed: `max_retry_after`, or the
    /// time left before the total deadline.
    #[must_use]
    pub fn limit(&self) -> Option<Duration> {
        self.limit
    }

    /// The last attempt's error, when the last attempt failed without a response.
    #[must_use]
    pub fn into_source(self) -> Option<BoxError> {
        self.source
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("retry::Error")
            .field("kind", &self.kind)
            .field("attempts", &self.attempts)
            .field("method", &self.method)
            .field("status", &self.status)
            .field("retry_after", &self.retry_after)
            .field("limit", &self.limit)
            .field("source", &self.source)
            .field("maybe_applied", &self.maybe_applied)
            .finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_why(f)?;
        if self.maybe_applied && self.kind != ErrorKind::OutcomeUnknown {
            write!(
                f,
                " (an attempt failed after the request may have reached the server, so it may \
                 have been applied: send it again only with the same Idempotency-Key, or after \
                 checking)"
            )?;
        }
        Ok(())
    }
}

impl Error {
    /// Why the call ended, in words.
    fn write_why(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.attempts;
        let s = if n == 1 { "" } else { "s" };
        match self.kind {
            ErrorKind::OutcomeUnknown if self.maybe_applied => {
                write!(
                    f,
                    "outcome unknown: an earlier attempt failed after the request may have reached \
                     the server, and the last one (attempt {n}) failed too"
                )?;
                self.write_source(f)?;
                write!(
                    f,
                    "; the request may or may not have been applied: send it again only with the \
                     same Idempotency-Key, or after checking the resource's state"
                )
            }
            ErrorKind::OutcomeUnknown => {
                let method = self.method.as_ref().map_or("", Method::as_str);
                write!(
                    f,
                    "outcome unknown: the {method} request failed after it may have reached the \
                     server (attempt {n}"
                )?;
                if let Some(source) = &self.source {
                    write!(f, ": {source}")?;
                }
                write!(
                    f,
                    "), so it may or may not have been applied; it was not sent \
                     again because it is not idempotent and carries no Idempotency-Key that the \
                     target is known to honour. Check the resource's state before sending it again, \
                     or mark the request RetrySafety::Idempotent (conditional writes) or \
                     RetrySafety::KeyHonoured (keyed, deduplicated targets)"
                )
            }
            ErrorKind::RetryAfterTooLong => {
                write!(f, "the server asked to wait")?;
                if let Some(hint) = self.retry_after {
                    write!(f, " {} s", hint.as_secs())?;
                }
                if let Some(status) = self.status {
                    write!(f, " (status {status})")?;
                }
                if let Some(max) = self.limit {
                    write!(f, ", more than max_retry_after ({} s)", max.as_secs())?;
                }
                write!(
                    f,
                    "; the call ends now rather than wait. Try again later, or raise \
                     RetryPolicy's max_retry_after if such a wait is acceptable"
                )
            }
            ErrorKind::DeadlineExceeded => {
                write!(f, "the total deadline would pass before the next attempt")?;
                if let Some(hint) = self.retry_after {
                    write!(f, ": the server asked to wait {} s", hint.as_secs())?;
                    if let Some(status) = self.status {
                        write!(f, " (status {status})")?;
                    }
                }
                if let Some(left) = self.limit {
                    write!(f, ", {left:?} left")?;
                }
                write!(f, "; stopped after {n} attempt{s}")?;
                if let Some(source) = &self.source {
                    write!(f, " (the last attempt failed: {source})")?;
                }
                write!(
                    f,
                    ". Try again later, or give RetryPolicy a longer deadline"
                )
            }
            ErrorKind::AttemptsExhausted => {
                write!(
                    f,
                    "gave up after {n} attempt{s} (RetryPolicy's max_attempts); the last attempt \
                     failed"
                )?;
                self.write_source(f)
            }
            ErrorKind::BudgetExhausted => {
                write!(
                    f,
                    "not retried after {n} attempt{s}: the retry budget shared by all requests is \
                     spent (many retries recently: the server is probably failing); the last \
                     attempt failed"
                )?;
                self.write_source(f)
            }
        }
    }
}

impl Error {
    /// Writes `: <the last attempt's error>`, when there is one.
    fn write_source(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, ": {source}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| &**e as &(dyn std::error::Error + 'static))
    }
}
