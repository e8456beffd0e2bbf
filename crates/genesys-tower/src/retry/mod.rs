//! Retries: classification, backoff with jitter, `Retry-After` as a floor, a retry budget and a
//! total deadline.
//!
//! [`RetryLayer`] wraps any `Service<http::Request<B>>` whose responses are
//! `http::Response<_>`: a hyper-util client, a `tower::service_fn`, an axum `Router`. It takes
//! `Request<B>` and hands the same `Request<B>` to the service below, for every attempt, for any
//! body `B` it can rebuild: a [`ReplayBody`] (`Full<Bytes>`,
//! `String`, [`Body`], ...). The response is the inner service's, body type included.
//!
//! ```
//! use std::convert::Infallible;
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//!
//! use genesys_tower::retry::{RetryInfo, RetryLayer, RetryPolicy};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), genesys_tower::BoxError> {
//! // A service that fails once with 503, then answers.
//! let calls = Arc::new(AtomicU32::new(0));
//! let flaky = service_fn(move |_req: Request<String>| {
//!     let n = calls.fetch_add(1, Ordering::Relaxed);
//!     async move {
//!         let status = if n == 0 { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
//!         Ok::<_, Infallible>(Response::builder().status(status).body(String::new()).unwrap())
//!     }
//! });
//!
//! let service = ServiceBuilder::new()
//!     .layer(RetryLayer::new(RetryPolicy::default()))
//!     .service(flaky);
//!
//! let response = service
//!     .oneshot(Request::get("http://example.com/users").body(String::new())?)
//!     .await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! let info = response.extensions().get::<RetryInfo>().unwrap();
//! assert_eq!(info.attempts, 2);
//! # Ok(())
//! # }
//! ```
//!
//! # What is retried
//!
//! A [`Classify`] implementation ([`DefaultClassifier`] by default) sorts each outcome into
//! final, retry, or *ambiguous*. Connection failures before sending, 429, 502, 503 and 504
//! are retried whatever the method: the request was not sent, or the server answered. Other 4xx
//! are never retried. An error after the request may have reached the server (a timeout, a
//! reset) is ambiguous: it may have been applied, so it is replayed only when the request is safe
//! to send twice ([`RetryPolicy::may_replay`]: an idempotent method, a [`RetrySafety`] mark, or an
//! `Idempotency-Key` the target honours). Otherwise the call ends with an [`Error`] of kind
//! [`ErrorKind::OutcomeUnknown`] that says so: a possible duplicate never becomes a silent one.
//!
//! A 408 is ambiguous too: a timeout middleware below this layer (tower-http's `TimeoutLayer`)
//! answers its own timeout with a 408 that no server sent, after the request may have been
//! applied. An ambiguous *response* of a request that is not safe to replay is returned to the
//! caller as it is (a POST answered 408 gets that 408, once); see [`Classification::Ambiguous`].
//!
//! # How long to wait
//!
//! A [`Backoff`] schedule (exponential from 500 ms by 2, capped at 30 s, [`Jitter::Full`]) gives
//! the delay. A server's hint ([`headers`]: `Retry-After`, and on a 429 the `RateLimit` and
//! `inin-ratelimit-reset` fields) is a floor: the delay is `max(backoff, hint)`, plus a small
//! spread above the hint (up to 10 %, at most 1 s) so that clients released by the same hint do
//! not return together. A hint over `max_retry_after` (180 s), or past the total deadline, ends
//! the call at once with an [`Error`] that carries the hint.
//!
//! # Why a budget
//!
//! `max_attempts` bounds retries per request; in an outage every request makes all its attempts
//! and the client multiplies the load on a failing server. A [`RetryBudget`], shared by every
//! clone of the service, bounds retries to a share of requests. A retry it refuses returns the
//! last response as it is (or the last error, wrapped in an [`Error`] of kind
//! [`ErrorKind::BudgetExhausted`]) and counts in
//! [`MetricsSnapshot::budget_refusals`](crate::metrics::MetricsSnapshot::budget_refusals).
//!
//! # Bodies
//!
//! The request body is turned into a [`Body`] ([`ReplayBody::into_replay`]) and buffered with
//! [`Body::buffer`] up to `replay_limit` (1 MiB): a body already in memory costs nothing and is
//! replayed by reference count; a streaming body that fits is read into memory first. Each
//! attempt gets a body of the caller's type rebuilt from it ([`ReplayBody::from_replay`]). A
//! longer streaming body is sent once, as it streams, and that request is never retried, so no
//! part of a body is sent twice (a service below that takes only whole bodies, such as
//! `Full<Bytes>`, cannot take such a stream: the call then ends with a
//! [`NotReplayable`](crate::body::NotReplayable) error and nothing is sent).
//!
//! # Dropped responses
//!
//! A response that is retried is not returned to anyone. Its body is read and discarded, up to
//! 64 KiB, during the backoff wait (never making the wait longer), so that an HTTP/1 connection
//! can go back to the pool instead of being closed; a longer or slower body is dropped when the
//! wait ends, which closes that connection.
//!
//! # Observability
//!
//! The final response carries a [`RetryInfo`] extension (attempts, time spent waiting). Each
//! attempt emits a `tracing` event at DEBUG level with the attempt number, the status or error,
//! and for a retry the delay and the [`RetryReason`]; headers are never logged. The [`Metrics`]
//! given to [`RetryLayer::metrics`] count requests, attempts, retries by reason, 429 responses
//! and budget refusals.
//!
//! # tower manners, and why not tower's `retry::Policy`
//!
//! [`Retry`] is `Clone` (the state it shares, budget and counters, is behind `Arc`s) and needs
//! the inner service to be `Clone`. `poll_ready` polls the inner service; `call` then takes that
//! ready service for the first attempt and leaves a fresh clone in its place (the clone-and-swap
//! of tower's own middleware), so whatever the inner service reserved in `poll_ready` (a
//! concurrency permit, say) is the one the first attempt uses. Later attempts wait for
//! readiness again on the same service before they are sent, so under a concurrency layer no
//! permit is held while the call sleeps.
//!
//! tower's `retry::Retry` and its `Policy` trait were considered. They are not used because:
//! the request must first be turned into a replayable [`Body`], which needs an `async` step
//! (buffering a stream) that `Policy::clone_request` cannot take; draining the dropped response during the
//! backoff needs the response by value, where `Policy::retry` sees `&mut Result`; and attempts,
//! deadline, hint and budget read more plainly as one loop than as a policy plus wrappers.
//! tower's `TpsBudget` is not reused either; [`RetryBudget`] says why.
//!
//! [`Metrics`]: crate::Metrics
//! [`ReplayBody::into_replay`]: crate::body::ReplayBody::into_replay
//! [`ReplayBody::from_replay`]: crate::body::ReplayBody::from_replay

mod backoff;
mod budget;
mod classify;
mod decide;
mod error;
pub mod future;
/// The header module the retry layer reads with; it moved to [`crate::headers`], shared with the
/// pacer and the client, and is re-exported here under its old path.
pub use crate::headers;
mod layer;
mod policy;
mod span;
mod switch;

use std::mem;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;
use tracing::{Instrument, Span};

pub use self::backoff::{Backoff, Jitter, JitterStrategy, Step};
pub use self::budget::RetryBudget;
pub use self::classify::{
    Classification, Classify, DefaultClassifier, RetrySafety, StatusNotRetryable,
};
pub use self::error::{Error, ErrorKind};
pub use self::future::ResponseFuture;
pub use self::layer::RetryLayer;
pub use self::policy::{
    IDEMPOTENCY_KEY, PolicyError, PolicyProblem, RetryPolicy, RetryPolicyBuilder,
};
pub use self::switch::{PolicySwitch, VersionOutcomes};
pub use crate::reason::RetryReason;

use self::decide::{Decision, Outcome, State, SystemClock, decide};
use crate::body::{self, ReplayBody};
use crate::metrics::CallMetrics;
use crate::{Body, BoxError, Metrics};

/// How much of a dropped response's body is read so that its connection can be reused.
const DRAIN_LIMIT: usize = 64 * 1024;

/// Retries requests to the inner service by a [`RetryPolicy`]. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    /// The policy and the counters, behind one `Arc`: one reference count per call.
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    policy: RetryPolicy,
    metrics: Metrics,
    /// Where each call's policy comes from, when it is changed live.
    switch: Option<PolicySwitch>,
    /// The header this call's attempts carry its policy's version in (a canary runs).
    tag: Option<http::HeaderName>,
}

/// The response extension that says how a call went: attempts sent and time spent waiting
/// between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct RetryInfo {
    /// Attempts sent, the first included (1 when the call was not retried).
    pub attempts: u32,
    /// Time spent in backoff between attempts (not the time of the attempts themselves).
    pub waited: Duration,
}

impl<S> Retry<S> {
    /// Wraps `inner`, retrying by `policy`, with counters of its own.
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        Retry {
            inner,
            shared: Arc::new(Shared {
                policy,
                metrics: Metrics::new(),
                switch: None,
                tag: None,
            }),
        }
    }

    /// Takes each call's policy from `switch` instead (changed live, a canary on a share of
    /// the calls); the policy given to [`new`](Self::new) is then not used.
    #[must_use]
    pub fn switch(mut self, switch: PolicySwitch) -> Self {
        self.shared = Arc::new(Shared {
            policy: self.shared.policy.clone(),
            metrics: self.shared.metrics.clone(),
            switch: Some(switch),
            tag: None,
        });
        self
    }

    /// Counts into `metrics` instead.
    #[must_use]
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.shared = Arc::new(Shared {
            policy: self.shared.policy.clone(),
            metrics,
            switch: self.shared.switch.clone(),
            tag: None,
        });
        self
    }

    /// The counters this service feeds.
    pub fn metrics_handle(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.shared.policy
    }

    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, ResBody> Service<Request<B>> for Retry<S>
where
    // First, so that a body the layer cannot replay is named in the compiler's error.
    B: ReplayBody,
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    ResBody: http_body::Body + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<Response<ResBody>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        // The ready service goes to the first attempt; its clone waits for the next call.
        let clone = self.inner.clone();
        let ready = mem::replace(&mut self.inner, clone);
        // A switched policy is chosen when the call starts, and kept to its end.
        let shared = match &self.shared.switch {
            None => self.shared.clone(),
            Some(switch) => {
                let (policy, tag) = switch.pick();
                Arc::new(Shared {
                    policy,
                    metrics: self.shared.metrics.clone(),
                    switch: Some(switch.clone()),
                    tag: tag.cloned(),
                })
            }
        };
        let call = Call {
            seed: shared.policy.next_call_seed(),
            shared,
        };
        // Made here, so that its parent is the caller's span.
        let (parts, body) = request.into_parts();
        let span = span::call(&parts, &call.shared.policy);
        ResponseFuture::new(call.run(ready, parts, body, span.clone()).instrument(span))
    }
}

/// The last outcome of an attempt.
enum Last<R> {
    Response(Response<R>),
    Error(BoxError),
}

impl<R> Last<R> {
    fn outcome(&self) -> Outcome<'_> {
        match self {
            Last::Response(response) => Outcome::Response(response.status(), response.headers()),
            Last::Error(error) => Outcome::Error(&**error),
        }
    }
}

struct Call {
    shared: Arc<Shared>,
    seed: Option<u64>,
}

impl Call {
    /// Sends, waits and sends again while [`decide`] says so; then records how the call ended.
    async fn run<S, B, R>(
        self,
        mut service: S,
        mut parts: http::request::Parts,
        body: B,
        call_span: Span,
    ) -> Result<Response<R>, BoxError>
    where
        S: Service<Request<B>, Response = Response<R>> + Send,
        S::Error: Into<BoxError>,
        B: ReplayBody,
        R: http_body::Body + Send,
    {
        let Call { shared, seed } = self;
        let Shared {
            policy,
            metrics,
            switch,
            tag,
        } = &*shared;
        if let Some(tag) = tag
            && let Ok(value) = http::HeaderValue::from_str(policy.version())
        {
            parts.headers.insert(tag.clone(), value);
        }
        if let Some(safety) = policy.safety_for(&parts) {
            parts.extensions.insert(safety);
        }
        let call_metrics = CallMetrics::start(&parts, policy.version_label());
        let started = Instant::now();
        metrics.record_request();
        if let Some(budget) = policy.budget() {
            budget.deposit();
        }
        let mut state = State::new(None, false, seed);

        // One block that every way out of the call leaves with its result, so that the call is
        // recorded once, whichever it was.
        let result = 'call: {
            let body = match body.into_replay().buffer(policy.replay_limit()).await {
                Ok(body) => body,
                Err(e) => break 'call Err(e),
            };
            // A replayable body is cloned for every attempt; a stream past the limit goes once.
            let (template, mut once) = if body.is_replayable() {
                (Some(body), None)
            } else {
                (None, Some(body))
            };
            state.deadline = policy.deadline().map(|d| crate::time::after(started, d));
            state.replayable = template.is_some();

            loop {
                state.attempts += 1;
                if state.attempts > 1
                    && let Err(e) = service.ready().await
                {
                    break 'call Err(e.into());
                }
                let attempt_body = template
                    .as_ref()
                    .and_then(Body::try_clone)
                    .or_else(|| once.take())
                    .unwrap_or_default();
                let attempt_body = match body::rebuild::<B>(attempt_body) {
                    Ok(body) => body,
                    Err(e) => break 'call Err(e.into()),
                };
                metrics.record_attempt();
                let attempt_span = span::attempt(&call_span, state.attempts);
                let sent = call_metrics.attempt_start();
                // The call itself in the attempt's span too: a layer below may do its work (and
                // log) in `call`, before its future is polled.
                let last = match attempt_span
                    .in_scope(|| service.call(Request::from_parts(parts.clone(), attempt_body)))
                    .instrument(attempt_span.clone())
                    .await
                {
                    Ok(response) => Last::Response(response),
                    Err(error) => Last::Error(error.into()),
                };
                let status = last.outcome().status();
                call_metrics.attempt(status, sent);
                span::attempt_outcome(
                    &attempt_span,
                    match &last {
                        Last::Response(r) => Ok((r.status(), r.headers())),
                        Last::Error(e) => Err(&**e),
                    },
                );
                if status == Some(StatusCode::TOO_MANY_REQUESTS) {
                    metrics.record_rate_limited_response();
                }

                let mut decision = decide(policy, &mut state, &parts, last.outcome(), &SystemClock);
                if let Decision::Retry { reason, .. } = decision
                    && policy.budget().is_some_and(|budget| !budget.withdraw())
                {
                    metrics.record_budget_refusal();
                    call_metrics.budget_refusal();
                    decision = Decision::Stop {
                        kind: ErrorKind::BudgetExhausted,
                        reason: Some(reason),
                    };
                }
                span::decision(&attempt_span, decision);
                attempt_span.in_scope(|| trace(&state, &last, decision));
                let Decision::Retry { reason, delay } = decision else {
                    break 'call end(decision, last, &parts, &state);
                };

                metrics.record_retry(reason);
                call_metrics.retry(reason);
                let wake = crate::time::from_now(delay);
                if let Last::Response(response) = last {
                    // Read the dropped body while we wait anyway; never wait longer for it.
                    let _ = tokio::time::timeout_at(wake, drain(response.into_body())).await;
                }
                tokio::time::sleep_until(wake).await;
                state.waited = state.waited.saturating_add(delay);
            }
        };

        let status = result.as_ref().ok().map(Response::status);
        call_metrics.finish(status);
        if let Some(switch) = switch {
            let succeeded =
                status.is_some_and(|s| !s.is_server_error() && s != StatusCode::TOO_MANY_REQUESTS);
            switch.record(policy.version(), succeeded, started.elapsed());
        }
        let error = result
            .as_ref()
            .err()
            .map(|e| crate::error::find::<Error>(&**e).map(Error::kind));
        span::end(&call_span, status, error, state.attempts, state.waited);
        result
    }
}

/// What the caller gets when the call ends.
fn end<R>(
    decision: Decision,
    last: Last<R>,
    request: &http::request::Parts,
    state: &State,
) -> Result<Response<R>, BoxError> {
    let error = match (decision, last) {
        (Decision::Return | Decision::Stop { .. }, Last::Response(mut response)) => {
            response.extensions_mut().insert(RetryInfo {
                attempts: state.attempts,
                waited: state.waited,
            });
            return Ok(response);
        }
        (Decision::Return, Last::Error(error)) => return Err(error),
        (Decision::Stop { kind, .. }, Last::Error(error)) => {
            Error::new(kind, state.attempts).with_source(Some(error))
        }
        (
            Decision::Fail {
                kind,
                retry_after,
                limit,
            },
            last,
        ) => {
            let error = Error::new(kind, state.attempts)
                .with_status(last.outcome().status())
                .with_retry_after(retry_after)
                .with_limit(limit);
            match last {
                Last::Response(_) => error,
                Last::Error(source) => error.with_source(Some(source)),
            }
        }
        (Decision::Retry { .. }, _) => unreachable!("a retry does not end the call"),
    };
    Err(error.with_method(request.method.clone()).into())
}

/// One DEBUG event per attempt: its number, status or error, and what follows. Headers are never
/// logged.
fn trace<R>(state: &State, last: &Last<R>, decision: Decision) {
    let attempt = state.attempts;
    let (status, error) = match last {
        Last::Response(response) => (Some(response.status().as_u16()), None),
        Last::Error(error) => (None, Some(tracing::field::display(error))),
    };
    match decision {
        Decision::Return => tracing::debug!(attempt, status, error, "attempt done"),
        Decision::Stop {
            kind: ErrorKind::OutcomeUnknown,
            ..
        } => tracing::debug!(
            attempt,
            error,
            "attempt failed after the request may have been sent; outcome unknown"
        ),
        Decision::Stop { kind, reason } => tracing::debug!(
            attempt,
            status,
            error,
            reason = reason.map(tracing::field::display),
            stopped = ?kind,
            "attempt failed; not retried"
        ),
        Decision::Fail {
            kind,
            retry_after,
            limit,
        } => tracing::debug!(
            attempt,
            status,
            error,
            stopped = ?kind,
            hint_s = retry_after.map(|h| h.as_secs()),
            limit_ms = limit.as_millis() as u64,
            "attempt failed; call ended by the server's hint or the deadline"
        ),
        Decision::Retry { reason, delay } => tracing::debug!(
            attempt,
            status,
            error,
            delay_ms = delay.as_millis() as u64,
            reason = %reason,
            "attempt failed; retrying"
        ),
    }
}

/// Reads and discards up to [`DRAIN_LIMIT`] bytes of a body, so that its connection can be reused.
async fn drain<R: http_body::Body>(body: R) {
    let mut body = std::pin::pin!(body);
    let mut read = 0usize;
    while read <= DRAIN_LIMIT {
        match body.as_mut().frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    read = read.saturating_add(data.remaining());
                }
            }
            _ => break,
        }
    }
}
