//! Retries: classification, backoff with jitter, `Retry-After` as a floor, a retry budget and a
//! total deadline.
//!
//! [`RetryLayer`] wraps any `Service<http::Request<B>>` whose responses are
//! `http::Response<_>`: a hyper-util client, a `tower::service_fn`, an axum `Router`. It takes
//! `Request<B>` and hands the same `Request<B>` to the service below, for every attempt, for any
//! body `B` it can rebuild: a [`ReplayBody`] (`Full<Bytes>`,
//! `String`, [`Body`](crate::Body), ...). The response is the inner service's, body type included.
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
//! assert_eq!(RetryInfo::of(response.extensions()).attempts, 2);
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
//! The request body is turned into a [`Body`](crate::Body) ([`ReplayBody::into_replay`]) and buffered with
//! [`Body::buffer`](crate::Body::buffer) up to `replay_limit` (1 MiB): a body already in memory costs nothing and is
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
//! A final response that took more than one attempt carries a [`RetryInfo`] extension
//! (attempts, time spent waiting; [`RetryInfo::of`] reads it, one attempt when it is absent). Each
//! attempt emits a `tracing` event at DEBUG level with the attempt number, the status or error,
//! and for a retry the delay and the [`RetryReason`]; headers are never logged. The [`Metrics`]
//! given to [`RetryLayer::metrics`] count requests, attempts, retries by reason, 429 responses
//! and budget refusals.
//!
//! # tower manners, and why not tower's `retry::Policy`
//!
//! [`Retry`] is `Clone` (the state it shares, budget and counters, is behind `Arc`s) and needs
//! the inner service to be `Clone`. `poll_ready` polls the inner service, and the first attempt
//! goes to that ready service, so whatever it reserved in `poll_ready` (a concurrency permit,
//! say) is the one the first attempt uses. For a body in memory (the common case) `call` starts
//! the call and hands the first attempt to the service below at once (as hyper's own client
//! does, the work begins in `call`: a response future dropped unpolled has still been counted,
//! and the service below has its request), and the response future is that service's own,
//! polled in place: a call that is not retried boxes nothing. Later attempts run in one boxed
//! future on a clone of the service. A streaming body is first read into memory in the response
//! future, which takes the ready service along (a fresh clone left in its place, the
//! clone-and-swap of tower's own middleware) for every attempt. Every attempt after the first
//! waits for readiness again before it is sent, so under a concurrency layer no permit is held
//! while the call sleeps.
//!
//! The response future is `Unpin` when the service below's is (pin it, as with most of tower's
//! futures, to poll it by hand).
//!
//! tower's `retry::Retry` and its `Policy` trait were considered. They are not used because:
//! the request must first be turned into a replayable [`Body`](crate::Body), which needs an `async` step
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
mod call;
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

use std::any::Any;
use std::fmt;
use std::mem;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use tower_service::Service;
use tracing::Instrument;

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

#[cfg(all(feature = "auth", feature = "idempotency"))]
pub(crate) use self::call::Attempt;
pub(crate) use self::call::Call;
#[cfg(all(feature = "auth", feature = "idempotency"))]
pub(crate) use self::future::{AfterFirst, after_first, after_judged, judge_first, rest_of_call};
use crate::body::ReplayBody;
use crate::per_thread::PerThread;
use crate::spare;
use crate::{BoxError, Metrics};

/// How much of a dropped response's body is read so that its connection can be reused.
const DRAIN_LIMIT: usize = 64 * 1024;

/// Retries requests to the inner service by a [`RetryPolicy`]. See the [module docs](self).
#[derive(Clone)]
pub struct Retry<S> {
    inner: S,
    /// The policy, the counters and the spare service, shared with a copy per thread: one
    /// reference count per call, of the calling thread's copy (with a policy switch, each call
    /// has state of its own, one `Arc` more).
    shared: Arc<PerThread<Shared>>,
}

impl<S: fmt::Debug> fmt::Debug for Retry<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retry")
            .field("inner", &self.inner)
            .field("policy", &self.shared.policy)
            .field("switch", &self.shared.switch)
            .finish_non_exhaustive()
    }
}

/// What every call of the layer shares. Kept with a copy per thread ([`PerThread`]): a clone
/// must share whatever a call changes (the policy's seed counter and budget, the counters, the
/// switch, the spare's cell); a test names each field.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    policy: RetryPolicy,
    metrics: Metrics,
    /// Where each call's policy comes from, when it is changed live.
    switch: Option<PolicySwitch>,
    /// The header this call's attempts carry its policy's version in (a canary runs).
    tag: Option<http::HeaderName>,
    /// What the attempts after a call's first are sent on: a clone of the inner service
    /// (`spare::Shared<S>`, `S` erased so that a call's state is not generic), made by the
    /// first call and cloned again only when a retry is decided.
    spare: Spare,
}

/// The cell of a layer's spare service: shared by the clones of the layer's service, by the
/// per-thread copies of its state, and by a switched policy's per-call state.
type Spare = Arc<OnceLock<Box<dyn Any + Send + Sync>>>;

impl Shared {
    /// The same policy and counters, with `spare` for the spare service.
    fn with_spare(&self, spare: Spare) -> Shared {
        Shared {
            policy: self.policy.clone(),
            metrics: self.metrics.clone(),
            switch: self.switch.clone(),
            tag: self.tag.clone(),
            spare,
        }
    }

    /// Makes sure the spare is there, from `inner` if it is not (a load once it is).
    fn fill_spare<S: Clone + Send + 'static>(&self, inner: &S) {
        self.spare.get_or_init(|| Box::new(spare::shared(inner)));
    }

    /// A service for an attempt after the first: a clone of the spare, when it is there and is
    /// a service of type `S` (it is: the cell is filled by the layer's own calls).
    fn take_spare<S: Clone + 'static>(&self) -> Option<S> {
        let spare = self.spare.get()?.downcast_ref::<spare::Shared<S>>()?;
        Some(spare::take(spare))
    }
}

/// The response extension that says how a call went: attempts sent and time spent waiting
/// between them. Read it with [`RetryInfo::of`].
///
/// Only a response that took more than one attempt, or waited, or that may hide an applied
/// request (an ambiguous answer, such as a gateway's 502 to a request not safe to send twice,
/// returned as it is) carries it: a call answered at the first try, the common case, costs no
/// allocation for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct RetryInfo {
    /// Attempts sent, the first included (1 when the call was not retried).
    pub attempts: u32,
    /// Time spent in backoff between attempts (not the time of the attempts themselves).
    pub waited: Duration,
    /// Whether an attempt may have been applied by the server although its outcome was not
    /// seen: it failed after the request may have reached the server (a reset, a timeout, a
    /// 408), and the request was sent again as safe to send twice; or this response is itself
    /// such an answer, returned as it is because the request is not safe to send twice. The
    /// request may then have taken effect even when this response is an error: send it again
    /// only with the same `Idempotency-Key`, or after checking.
    pub maybe_applied: bool,
}

impl RetryInfo {
    /// How the call behind a response went, from the response's extensions: its `RetryInfo`,
    /// or one attempt and no wait when it carries none (the call was not retried).
    ///
    /// ```
    /// use genesys_tower::retry::RetryInfo;
    ///
    /// let response = http::Response::new(());
    /// assert_eq!(RetryInfo::of(response.extensions()).attempts, 1);
    /// ```
    #[must_use]
    pub fn of(extensions: &http::Extensions) -> RetryInfo {
        extensions.get::<RetryInfo>().copied().unwrap_or(RetryInfo {
            attempts: 1,
            waited: Duration::ZERO,
            maybe_applied: false,
        })
    }
}

impl<S: Clone> Retry<S> {
    /// Wraps `inner`, retrying by `policy`, with counters of its own.
    pub fn new(inner: S, policy: RetryPolicy) -> Self {
        Retry {
            inner,
            shared: Arc::new(PerThread::new(Shared {
                policy,
                metrics: Metrics::new(),
                switch: None,
                tag: None,
                spare: Spare::default(),
            })),
        }
    }
}

impl<S> Retry<S> {
    /// Takes each call's policy from `switch` instead (changed live, a canary on a share of
    /// the calls); the policy given to [`new`](Self::new) is then not used.
    #[must_use]
    pub fn switch(mut self, switch: PolicySwitch) -> Self {
        self.shared = Arc::new(PerThread::new(Shared {
            policy: self.shared.policy.clone(),
            metrics: self.shared.metrics.clone(),
            switch: Some(switch),
            tag: None,
            spare: self.shared.spare.clone(),
        }));
        self
    }

    /// Counts into `metrics` instead.
    #[must_use]
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.shared = Arc::new(PerThread::new(Shared {
            policy: self.shared.policy.clone(),
            metrics,
            switch: self.shared.switch.clone(),
            tag: None,
            spare: self.shared.spare.clone(),
        }));
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
        // Retries take a clone of the inner service as it is after the change: this service
        // and the clones made from it from now on share a new, empty spare.
        self.shared = Arc::new(PerThread::new(self.shared.with_spare(Spare::default())));
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
    type Future = ResponseFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (parts, body) = request.into_parts();
        self.call_replay(parts, body.into_replay())
    }
}

impl<S> Retry<S> {
    /// A call of a request whose body the caller already turned into a [`Body`](crate::Body)
    /// (a stream is read into memory here, as for any request).
    #[inline(always)]
    pub(crate) fn call_replay<B, ResBody>(
        &mut self,
        parts: http::request::Parts,
        body: crate::Body,
    ) -> ResponseFuture<S, B>
    where
        B: ReplayBody,
        S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
        ResBody: http_body::Body + Send + 'static,
    {
        if body.is_replayable() {
            // The common case: the first attempt goes to the ready service at once, and its
            // future is polled in place; a clone of the service takes any attempt after it.
            return ResponseFuture::first(&mut self.inner, &self.shared, parts, body);
        }
        // A stream: read into memory (up to the replay limit) before the first attempt. The
        // ready service goes with the call; a fresh clone waits for the next call.
        let mut slot = None;
        let span = Call::begin(&mut slot, &self.shared, parts, tokio::time::Instant::now())
            .span
            .clone();
        let Some(call) = slot else {
            return ResponseFuture::boxed(std::future::ready(Err(
                "the retry layer's call was not made".into(),
            )));
        };
        let clone = self.inner.clone();
        let ready = mem::replace(&mut self.inner, clone);
        ResponseFuture::boxed(call.run::<S, B, ResBody>(ready, body).instrument(span))
    }
}

impl<S> Retry<S> {
    /// The layer's service from its parts (for [`Stack`](crate::stack::Stack), which runs the
    /// layer's role itself and hands it the calls it does not take).
    #[cfg(all(feature = "auth", feature = "idempotency"))]
    pub(crate) fn from_parts(inner: S, shared: Arc<PerThread<Shared>>) -> Self {
        Retry { inner, shared }
    }

    /// The inner service and the layer's shared state.
    #[cfg(all(feature = "auth", feature = "idempotency"))]
    pub(crate) fn into_parts(self) -> (S, Arc<PerThread<Shared>>) {
        (self.inner, self.shared)
    }
}

impl<S: Clone + Send + 'static> Retry<S> {
    /// The service with its spare made now, from its inner service, rather than by its first
    /// call.
    #[cfg(all(feature = "auth", feature = "idempotency"))]
    pub(crate) fn with_spare(self) -> Self {
        self.shared.fill_spare(&self.inner);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread's copy of the layer's state shares everything a call changes with the state
    /// and every other copy: each field is named, so a new one must say how it is shared.
    #[test]
    fn a_threads_copy_of_the_state_shares_everything_a_call_changes() {
        let state = PerThread::new(Shared {
            policy: RetryPolicy::default(),
            metrics: Metrics::new(),
            switch: Some(PolicySwitch::new(RetryPolicy::default(), None)),
            tag: Some(http::HeaderName::from_static("x-policy-version")),
            spare: Spare::default(),
        });
        let copy = state.handle_in(1);
        let Shared {
            policy,
            metrics,
            switch,
            tag,
            spare,
        } = &**copy;
        assert!(policy.is_same(&state.policy), "the policy");
        assert!(metrics.is_same(&state.metrics), "the counters");
        let (Some(switch), Some(original)) = (switch, &state.switch) else {
            panic!("the switch is in the copy");
        };
        assert!(switch.is_same(original), "the switch");
        assert_eq!(tag, &state.tag, "a value no call changes");
        assert!(Arc::ptr_eq(spare, &state.spare), "the spare's cell");
    }

    /// The first attempt is sent with the call's clock read lent to the layers below (the auth
    /// layer's look at its token), for the time of their `call` only.
    #[tokio::test]
    async fn the_first_attempt_is_sent_with_the_calls_clock_read_lent() {
        use tower::ServiceExt;
        use tower_layer::Layer;
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        #[derive(Clone)]
        struct Below(Arc<std::sync::Mutex<Vec<bool>>>);
        impl Service<Request<crate::Body>> for Below {
            type Response = Response<crate::Body>;
            type Error = BoxError;
            type Future = std::future::Ready<Result<Self::Response, BoxError>>;
            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
                Poll::Ready(Ok(()))
            }
            fn call(&mut self, _: Request<crate::Body>) -> Self::Future {
                self.0.lock().unwrap().push(crate::time::is_lent());
                std::future::ready(Ok(Response::new(crate::Body::empty())))
            }
        }
        let retry = RetryLayer::new(RetryPolicy::default()).layer(Below(seen.clone()));
        let request = Request::get("http://api.test/")
            .body(crate::Body::empty())
            .unwrap();
        retry.oneshot(request).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), [true]);
        assert!(!crate::time::is_lent(), "taken back after the call");
    }
}
