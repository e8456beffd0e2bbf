//! Deciding which outcomes are worth another attempt.

use std::error::Error as StdError;
use std::fmt;

use http::{HeaderMap, StatusCode, request};

use super::RetryReason;
use crate::NotSent;

/// What an attempt's outcome means for the retry layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Classification {
    /// Return the outcome to the caller as it is: a success, or a failure that another attempt
    /// would not change (a 400, a 404, an error of a layer that already retried).
    Final,
    /// Retry, whatever the request's method: the request was not sent (a refused connection), or
    /// the server answered that it did not process it (429, 503) or failed in a way the policy
    /// retries.
    Retry(RetryReason),
    /// The request may have reached the server and been applied (a timeout, a reset after
    /// sending, a 408 that a local timeout middleware made up). The layer retries it only when
    /// the request is safe to send twice: an idempotent method, a
    /// [`RetrySafety`](super::RetrySafety) mark, or an `Idempotency-Key` the target honours.
    /// Otherwise it is not retried, and the caller gets:
    ///
    /// - for an ambiguous **error**: an [`Error`](super::Error) of kind
    ///   [`OutcomeUnknown`](super::ErrorKind::OutcomeUnknown) that says so, with the error as its
    ///   source;
    /// - for an ambiguous **response** (a 408, or a 502/504 under
    ///   [`ambiguous_gateway_errors`](DefaultClassifier::ambiguous_gateway_errors)): that response,
    ///   as it is, after one attempt. Its status already tells the caller that the outcome is not
    ///   known; the layer does not turn a response into an error.
    Ambiguous,
}

/// Classifies each attempt's outcome. Implement it to change what is retried; the layer still
/// decides, from the request, whether an [`Ambiguous`](Classification::Ambiguous) outcome may be
/// replayed, so a classifier cannot turn a possible duplicate into a silent one by mistake.
pub trait Classify: Send + Sync + 'static {
    /// Classifies a response (the head only: the body is not read).
    fn classify_response(
        &self,
        request: &request::Parts,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Classification;

    /// Classifies an error of the service below. The error is the whole chain: walk
    /// [`source`](std::error::Error::source) to find the cause.
    fn classify_error(
        &self,
        request: &request::Parts,
        error: &(dyn StdError + 'static),
    ) -> Classification;
}

/// The default classification.
///
/// | outcome | classification |
/// | --- | --- |
/// | connection failed before sending (hyper-util's `is_connect()`, `ConnectionRefused` anywhere in the chain) | retry ([`Connect`](RetryReason::Connect)) |
/// | 408 | ambiguous (counted as [`RequestTimeout`](RetryReason::RequestTimeout) when replayed) |
/// | 429 | retry ([`RateLimited`](RetryReason::RateLimited)) |
/// | 502, 503, 504 | retry ([`ServerError`](RetryReason::ServerError)) |
/// | 500 | final, unless [`retry_500`](DefaultClassifier::retry_500) is set |
/// | another 5xx | final, unless listed in [`retry_statuses`](DefaultClassifier::retry_statuses) (which replaces the list of retried statuses, 429 included) |
/// | 413 | final, always (the retry layer itself never re-sends a request answered 413, whatever the classifier says) |
/// | any other status | final (never other 4xx: another attempt gets the same answer) |
/// | an error of an inner retry layer | final (retries are not multiplied) |
/// | a [`NotSent`] anywhere in the chain (this crate's auth and concurrency layers wrap their errors in it) | final (nothing was sent; the layer that refused already decided) |
/// | a [`read_body::Error::TooLarge`](crate::read_body::Error::TooLarge) | final (another attempt gets the same body) |
/// | a request-side [`NotReplayable`](crate::body::NotReplayable) | final (nothing was sent; another attempt fails the same way) |
/// | any other error (timeouts, resets, incomplete messages) | ambiguous |
///
/// A 408 is ambiguous, not "not processed": a server sends it when the request did not arrive in
/// time, but a timeout middleware under the retry layer (tower-http's `TimeoutLayer`,
/// `tower::timeout` mapped to a response) makes one up when *it* gave up waiting, and by then the
/// server may have applied the request. So a POST answered 408 is returned, not sent twice; a GET
/// or a request marked safe is replayed.
///
/// The other retried statuses are not ambiguous by default: the server answered. A gateway's 502 or 504 can
/// still hide an upstream that applied the request; set
/// [`ambiguous_gateway_errors`](DefaultClassifier::ambiguous_gateway_errors) to treat 500, 502 and
/// 504 as ambiguous, so that they are replayed only for requests safe to send twice.
///
/// ```
/// use genesys_tower::retry::{Classification, Classify, DefaultClassifier};
/// use genesys_tower::retry::RetryReason;
/// use http::{HeaderMap, Request, StatusCode};
///
/// let (parts, ()) = Request::post("/x").body(()).unwrap().into_parts();
/// let classify = DefaultClassifier::new();
/// let c = |s| classify.classify_response(&parts, s, &HeaderMap::new());
/// assert_eq!(c(StatusCode::TOO_MANY_REQUESTS), Classification::Retry(RetryReason::RateLimited));
/// assert_eq!(c(StatusCode::NOT_FOUND), Classification::Final);
/// assert_eq!(c(StatusCode::INTERNAL_SERVER_ERROR), Classification::Final);
/// assert_eq!(c(StatusCode::REQUEST_TIMEOUT), Classification::Ambiguous);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DefaultClassifier {
    statuses: StatusSet,
    ambiguous_gateway_errors: bool,
}

impl Default for DefaultClassifier {
    fn default() -> Self {
        DefaultClassifier {
            statuses: StatusSet::DEFAULT,
            ambiguous_gateway_errors: false,
        }
    }
}

/// The statuses a [`DefaultClassifier`] retries: 429 and any of 500 to 599.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StatusSet {
    /// 429.
    too_many_requests: bool,
    /// Bit `n` is `500 + n`.
    server: u128,
}

impl StatusSet {
    /// 429, 502, 503 and 504.
    const DEFAULT: StatusSet = StatusSet {
        too_many_requests: true,
        server: (1 << 2) | (1 << 3) | (1 << 4),
    };

    fn contains(self, status: StatusCode) -> bool {
        match status.as_u16() {
            429 => self.too_many_requests,
            s @ 500..=599 => self.server & (1 << (s - 500)) != 0,
            _ => false,
        }
    }

    fn set(&mut self, status: StatusCode, on: bool) {
        match status.as_u16() {
            429 => self.too_many_requests = on,
            s @ 500..=599 if on => self.server |= 1 << (s - 500),
            s @ 500..=599 => self.server &= !(1 << (s - 500)),
            _ => {}
        }
    }
}

/// A status [`DefaultClassifier::retry_statuses`] cannot retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusNotRetryable(pub StatusCode);

impl fmt::Display for StatusNotRetryable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.0.as_u16();
        match status {
            408 => write!(
                f,
                "408 cannot be listed: it is always ambiguous (a timeout middleware may have made \
                 it up after the request was sent), and replayed only when the request is safe to \
                 send twice"
            ),
            413 => write!(
                f,
                "413 is never retried: the same body gets the same answer; send a smaller one"
            ),
            _ => write!(
                f,
                "{status} cannot be retried: only 429 and 500 to 599 can (another attempt at a \
                 {status} gets the same answer)"
            ),
        }
    }
}

impl std::error::Error for StatusNotRetryable {}

impl DefaultClassifier {
    /// The default classification (429, 502, 503 and 504 retried; 500 not).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether to retry 500 Internal Server Error (default: no; a 500 is more often a bug than a
    /// transient failure).
    #[must_use]
    pub fn retry_500(mut self, retry: bool) -> Self {
        self.statuses.set(StatusCode::INTERNAL_SERVER_ERROR, retry);
        self
    }

    /// The statuses retried, in place of the default 429, 502, 503 and 504: 429 and any of 500
    /// to 599. Any other status is refused (another attempt would get the same answer; 408 is
    /// always [`Ambiguous`](Classification::Ambiguous), and 413 never retried).
    ///
    /// ```
    /// use genesys_tower::retry::{Classification, Classify, DefaultClassifier};
    /// use http::{HeaderMap, Request, StatusCode};
    ///
    /// // Retry 429, 500 and 503; a 502 or 504 is returned as it is.
    /// let classify = DefaultClassifier::new()
    ///     .retry_statuses([429, 500, 503].map(|s| StatusCode::from_u16(s).unwrap()))
    ///     .unwrap();
    /// let (parts, ()) = Request::get("/x").body(()).unwrap().into_parts();
    /// let c = |s| classify.classify_response(&parts, s, &HeaderMap::new());
    /// assert!(matches!(c(StatusCode::INTERNAL_SERVER_ERROR), Classification::Retry(_)));
    /// assert_eq!(c(StatusCode::BAD_GATEWAY), Classification::Final);
    ///
    /// let refused = DefaultClassifier::new().retry_statuses([StatusCode::CONFLICT]);
    /// assert!(refused.unwrap_err().to_string().contains("only 429 and 500 to 599"));
    /// ```
    pub fn retry_statuses(
        mut self,
        statuses: impl IntoIterator<Item = StatusCode>,
    ) -> Result<Self, StatusNotRetryable> {
        self.statuses = StatusSet {
            too_many_requests: false,
            server: 0,
        };
        for status in statuses {
            if !matches!(status.as_u16(), 429 | 500..=599) {
                return Err(StatusNotRetryable(status));
            }
            self.statuses.set(status, true);
        }
        Ok(self)
    }

    /// Whether a status is retried (before [`ambiguous_gateway_errors`](Self::ambiguous_gateway_errors)
    /// is applied).
    #[must_use]
    pub fn retries(&self, status: StatusCode) -> bool {
        self.statuses.contains(status)
    }

    /// Whether 500, 502 and 504 count as ambiguous (default: no).
    #[must_use]
    pub fn ambiguous_gateway_errors(mut self, ambiguous: bool) -> Self {
        self.ambiguous_gateway_errors = ambiguous;
        self
    }
}

impl Classify for DefaultClassifier {
    fn classify_response(
        &self,
        _request: &request::Parts,
        status: StatusCode,
        _headers: &HeaderMap,
    ) -> Classification {
        match status {
            // Possibly made up by a timeout middleware after the request was sent.
            StatusCode::REQUEST_TIMEOUT => Classification::Ambiguous,
            _ if !self.statuses.contains(status) => Classification::Final,
            StatusCode::TOO_MANY_REQUESTS => Classification::Retry(RetryReason::RateLimited),
            StatusCode::INTERNAL_SERVER_ERROR
            | StatusCode::BAD_GATEWAY
            | StatusCode::GATEWAY_TIMEOUT
                if self.ambiguous_gateway_errors =>
            {
                Classification::Ambiguous
            }
            _ => Classification::Retry(RetryReason::ServerError),
        }
    }

    fn classify_error(
        &self,
        _request: &request::Parts,
        error: &(dyn StdError + 'static),
    ) -> Classification {
        let mut cause = Some(error);
        while let Some(e) = cause {
            // An inner retry layer already retried. A layer that says nothing was sent (the
            // auth layer without a token, the concurrency layer shedding load, a user's own
            // layer) already decided, and the outcome is known: not worth a backoff here.
            if e.is::<super::Error>() || e.is::<NotSent>() {
                return Classification::Final;
            }
            if e.downcast_ref::<crate::read_body::Error>()
                .is_some_and(crate::read_body::Error::is_too_large)
            {
                return Classification::Final;
            }
            // A layer below could not rebuild the request body: nothing was sent, and another
            // attempt would fail the same way.
            if e.downcast_ref::<crate::body::NotReplayable>()
                .is_some_and(|e| !e.is_response())
            {
                return Classification::Final;
            }
            if crate::error::is_connect_failure(e) {
                return Classification::Retry(RetryReason::Connect);
            }
            cause = e.source();
        }
        Classification::Ambiguous
    }
}

/// Whether a request may be replayed after an ambiguous failure, set as a request extension.
///
/// Without it, the layer decides by method: GET, HEAD, OPTIONS, PUT, DELETE and TRACE are
/// idempotent (RFC 9110 §9.2.2); POST and PATCH are replayed only with an `Idempotency-Key` the
/// target honours (per [`RetryPolicyBuilder::honours_idempotency_keys`](super::RetryPolicyBuilder::honours_idempotency_keys)).
/// Only ambiguous failures are concerned: a refused connection or a 503 is retried whatever the
/// mark, because the request was not processed.
///
/// ```
/// use genesys_tower::retry::RetrySafety;
/// use http::Request;
///
/// // A PATCH that carries the entity's version cannot apply twice: a replay gets a 409.
/// let mut req = Request::patch("/api/v2/users/42").body(r#"{"version":7}"#).unwrap();
/// req.extensions_mut().insert(RetrySafety::Idempotent);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RetrySafety {
    /// Safe to send twice, whatever the method (a conditional write, with `version` or `If-Match`).
    Idempotent,
    /// The target deduplicates by `Idempotency-Key`: the request is replayed when it carries one.
    KeyHonoured,
    /// Never replay after an ambiguous failure, even for an idempotent method.
    Unsafe,
}

impl fmt::Display for RetrySafety {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RetrySafety::Idempotent => "idempotent",
            RetrySafety::KeyHonoured => "key honoured",
            RetrySafety::Unsafe => "unsafe",
        })
    }
}
