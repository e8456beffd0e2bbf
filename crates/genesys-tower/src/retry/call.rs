//! One call through the retry layer: its state, each attempt, what follows an attempt, and how
//! the call ends. The layer's future drives it: the first attempt in place, the rest (waits and
//! further attempts) in one boxed `async` block, taken only when a retry is decided.

use std::time::Duration;

use bytes::Buf;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_service::Service;
use tracing::{Instrument, Span};

use super::decide::{Decision, Outcome, State, SystemClock, decide};
use super::{DRAIN_LIMIT, Error, ErrorKind, RetryInfo, Shared, span};
use crate::body::{self, ReplayBody};
use crate::metrics::CallMetrics;
use crate::per_thread::{self, Handle, PerThread};
use crate::{Body, BoxError};

/// The last outcome of an attempt.
pub(crate) enum Last<R> {
    Response(Response<R>),
    Error(BoxError),
}

impl<R> Last<R> {
    pub(super) fn outcome(&self) -> Outcome<'_> {
        match self {
            Last::Response(response) => Outcome::Response(response.status(), response.headers()),
            Last::Error(error) => Outcome::Error(&**error),
        }
    }
}

/// What follows an attempt.
pub(super) enum Next<R> {
    /// The call is over.
    Done(Result<Response<R>, BoxError>),
    /// Another attempt after `delay`; `last` is read (drained) meanwhile.
    Retry { delay: Duration, last: Last<R> },
}

/// An attempt in flight: its span, and when it was sent (for the latency histogram).
pub(crate) struct Attempt {
    pub(crate) span: Span,
    sent: Option<Instant>,
}

impl Attempt {
    /// Sends `request` on `service`, which is ready, in the attempt's span: a layer below may do
    /// its work (and log) in `call`, before its future is polled.
    #[inline(always)]
    pub(crate) fn send<S, B>(&self, service: &mut S, request: Request<B>) -> S::Future
    where
        S: Service<Request<B>>,
    {
        let _entered = self.span.enter();
        service.call(request)
    }
}

/// A call in progress: what every attempt shares.
pub(crate) struct Call {
    shared: Handle<Shared>,
    pub(crate) parts: http::request::Parts,
    /// The body: in memory, cloned for every attempt (`state.replayable`), or a stream too long
    /// to hold, taken by the one attempt it can go with.
    body: Option<Body>,
    pub(crate) span: Span,
    metrics: CallMetrics,
    started: Instant,
    state: State,
}

impl Call {
    /// Starts a call, at `started`, on the layer's state `shared`, made in `slot` where it
    /// stays (the request head is moved once, into its place): with the policy a switch picks
    /// for it, when one is set (kept to the call's end), its jitter seed, and its span (made
    /// here, so that its parent is the caller's span).
    #[inline(always)]
    pub(crate) fn begin<'a>(
        slot: &'a mut Option<Call>,
        shared: &PerThread<Shared>,
        mut parts: http::request::Parts,
        started: Instant,
    ) -> &'a mut Call {
        let (shared, span, metrics, state) = Call::start(shared, &mut parts);
        slot.insert(Call {
            shared,
            parts,
            body: None,
            span,
            metrics,
            started,
            state,
        })
    }

    /// The first attempt of a call whose `body` is in memory: the request to send and the
    /// attempt, counted.
    pub(crate) fn first_attempt<B: ReplayBody>(
        &mut self,
        body: Body,
    ) -> Result<(Request<B>, Attempt), BoxError> {
        self.set_body(body);
        self.count_attempt();
        self.next_attempt::<B>()
    }

    /// Starts a call: the policy (a switch's pick), the span, the version tag while a canary
    /// runs, the policy's safety rule, the counters, the budget's deposit. Everything but the
    /// head, which the caller moves into the call.
    #[inline(always)]
    fn start(
        shared: &PerThread<Shared>,
        parts: &mut http::request::Parts,
    ) -> (Handle<Shared>, Span, CallMetrics, State) {
        let shared = match &shared.switch {
            None => shared.handle(),
            Some(switch) => {
                let (policy, tag) = switch.pick();
                per_thread::handle_of(Shared {
                    policy,
                    metrics: shared.metrics.clone(),
                    switch: Some(switch.clone()),
                    tag: tag.cloned(),
                    spare: shared.spare.clone(),
                })
            }
        };
        let seed = shared.policy.next_call_seed();
        let span = span::call(parts, &shared.policy);
        let policy = &shared.policy;
        if let Some(tag) = &shared.tag
            && let Ok(value) = http::HeaderValue::from_str(policy.version())
        {
            parts.headers.insert(tag.clone(), value);
        }
        if let Some(safety) = policy.safety_for(parts) {
            parts.extensions.insert(safety);
        }
        let metrics = CallMetrics::start(parts, policy.version_label());
        shared.metrics.record_request();
        if let Some(budget) = policy.budget() {
            budget.deposit();
        }
        (shared, span, metrics, State::new(None, false, seed))
    }

    /// Makes sure the layer has a spare service, from `inner` if it has none (the first call,
    /// or the first after `get_mut`): from `inner` as the call that asks left it, so that a
    /// reservation its `poll_ready` made and its `call` used is not in the copy.
    pub(crate) fn fill_spare<S: Clone + Send + 'static>(&self, inner: &S) {
        self.shared.fill_spare(inner);
    }

    /// A service for the attempts after the first: a clone of the layer's spare.
    pub(crate) fn spare<S: Clone + 'static>(&self) -> Option<S> {
        self.shared.take_spare()
    }

    /// A copy of the body, when it is in memory (for a re-send after a 401 by the stack).
    #[cfg(all(feature = "auth", feature = "idempotency"))]
    pub(crate) fn body_copy(&self) -> Option<Body> {
        self.body.as_ref().and_then(Body::try_clone)
    }

    /// The body, as every attempt will take it: in memory, or a stream sent once.
    pub(super) fn set_body(&mut self, body: Body) {
        self.state.replayable = body.is_replayable();
        self.body = Some(body);
        self.state.deadline = self.shared.policy.deadline().map(|d| (self.started, d));
    }

    /// Sends the next attempt on `service`, which is ready.
    pub(super) fn send<S, B>(&mut self, service: &mut S) -> Result<(S::Future, Attempt), BoxError>
    where
        S: Service<Request<B>>,
        B: ReplayBody,
    {
        let (request, attempt) = self.next_attempt::<B>()?;
        let future = attempt.send(service, request);
        Ok((future, attempt))
    }

    /// The next attempt's request, and the attempt (its span, counted as sent): the caller
    /// sends it with [`Attempt::send`].
    pub(super) fn next_attempt<B: ReplayBody>(
        &mut self,
    ) -> Result<(Request<B>, Attempt), BoxError> {
        let body = if self.state.replayable {
            self.body.as_ref().and_then(Body::try_clone)
        } else {
            self.body.take()
        }
        .unwrap_or_default();
        let body = body::rebuild::<B>(body)?;
        self.shared.metrics.record_attempt();
        let span = span::attempt(&self.span, self.state.attempts);
        let sent = self.metrics.attempt_start();
        Ok((
            Request::from_parts(self.parts.clone(), body),
            Attempt { span, sent },
        ))
    }

    /// Counts the attempt and decides what follows it.
    pub(super) fn after<R>(&mut self, last: Last<R>, attempt: &Attempt) -> Next<R> {
        let decision = self.judge(last.outcome(), attempt);
        self.conclude(decision, last)
    }

    /// Counts the attempt and decides what follows it, from its outcome seen in place: a
    /// response that goes back as it is is never moved for the decision.
    pub(super) fn judge(&mut self, outcome: Outcome<'_>, attempt: &Attempt) -> Decision {
        let policy = &self.shared.policy;
        let metrics = &self.shared.metrics;
        let status = outcome.status();
        self.state.last_status = status;
        self.metrics.attempt(status, attempt.sent);
        span::attempt_outcome(
            &attempt.span,
            match outcome {
                Outcome::Response(status, headers) => Ok((status, headers)),
                Outcome::Error(error) => Err(error),
            },
        );
        if status == Some(StatusCode::TOO_MANY_REQUESTS) {
            metrics.record_rate_limited_response();
        }
        let mut decision = decide(policy, &mut self.state, &self.parts, outcome, &SystemClock);
        if let Decision::Retry { reason, .. } = decision
            && policy.budget().is_some_and(|budget| !budget.withdraw())
        {
            metrics.record_budget_refusal();
            self.metrics.budget_refusal();
            decision = Decision::Stop {
                kind: ErrorKind::BudgetExhausted,
                reason: Some(reason),
            };
        }
        span::decision(&attempt.span, decision);
        // Checked here first: most programs log no debug events, and the check is one load.
        if tracing::level_enabled!(tracing::Level::DEBUG) {
            attempt
                .span
                .in_scope(|| trace(&self.state, outcome, decision));
        }
        if let Decision::Retry { reason, .. } = decision {
            metrics.record_retry(reason);
            self.metrics.retry(reason);
        }
        decision
    }

    /// What follows `decision` on the attempt's outcome.
    pub(super) fn conclude<R>(&self, decision: Decision, last: Last<R>) -> Next<R> {
        match decision {
            Decision::Retry { delay, .. } => Next::Retry { delay, last },
            decision => Next::Done(end(decision, last, &self.parts, &self.state)),
        }
    }

    /// Whether `decision` hands a response back as it came: a final answer, or one not retried,
    /// at the first attempt (later ones, and one that may hide an applied request, carry a
    /// [`RetryInfo`]).
    pub(super) fn returns_as_is(&self, decision: Decision) -> bool {
        matches!(decision, Decision::Return | Decision::Stop { .. }) && plain(&self.state)
    }

    /// The whole call, for a body that may have to be read into memory first.
    pub(super) async fn run<S, B, R>(
        mut self,
        service: S,
        body: Body,
    ) -> Result<Response<R>, BoxError>
    where
        S: Service<Request<B>, Response = Response<R>>,
        S::Error: Into<BoxError>,
        B: ReplayBody,
        R: http_body::Body,
    {
        match body.buffer(self.shared.policy.replay_limit()).await {
            Ok(body) => self.set_body(body),
            Err(e) => return self.finish(Err(e)),
        }
        self.attempts(service, None).await
    }

    /// Attempts until the call ends: after `pending` (a retry decided already: its delay, and
    /// the outcome to drain meanwhile), or from the first attempt.
    pub(super) async fn attempts<S, B, R>(
        mut self,
        mut service: S,
        mut pending: Option<(Duration, Last<R>)>,
    ) -> Result<Response<R>, BoxError>
    where
        S: Service<Request<B>, Response = Response<R>>,
        S::Error: Into<BoxError>,
        B: ReplayBody,
        R: http_body::Body,
    {
        let result = loop {
            if let Some((delay, last)) = pending.take() {
                let wake = crate::time::from_now(delay);
                if let Last::Response(response) = last {
                    // Read the dropped body while we wait anyway; never wait longer for it.
                    let _ = tokio::time::timeout_at(wake, drain(response.into_body())).await;
                }
                tokio::time::sleep_until(wake).await;
                self.state.waited = self.state.waited.saturating_add(delay);
            }
            if self.state.attempts > 0 {
                // What the service below makes a retry wait for (a concurrency permit, a pacing
                // window) counts against the deadline too: no attempt starts after it.
                match self.ready_in_time(&mut service).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => break Err(e.into()),
                    Err(passed) => break Err(passed),
                }
            }
            self.state.attempts += 1;
            let (future, attempt) = match self.send::<S, B>(&mut service) {
                Ok(sent) => sent,
                Err(e) => break Err(e),
            };
            let last = match future.instrument(attempt.span.clone()).await {
                Ok(response) => Last::Response(response),
                Err(error) => Last::Error(error.into()),
            };
            match self.after(last, &attempt) {
                Next::Done(result) => break result,
                Next::Retry { delay, last } => pending = Some((delay, last)),
            }
        };
        // A later attempt that could not be sent (the service below not ready, the body not
        // rebuilt) after one that may have been applied: the outcome is unknown, as in `end`.
        let result = match result {
            Err(e) if self.state.maybe_applied && crate::error::find::<Error>(&*e).is_none() => {
                Err(Error::new(ErrorKind::OutcomeUnknown, self.state.attempts)
                    .with_source(Some(e))
                    .with_maybe_applied(true)
                    .with_method(self.parts.method.clone())
                    .into())
            }
            result => result,
        };
        self.finish(result)
    }

    /// Waits for `service` to be ready for the next attempt, until the call's deadline when it
    /// has one; past it, the error the call ends with (nothing more was sent).
    async fn ready_in_time<'s, S, B>(
        &self,
        service: &'s mut S,
    ) -> Result<Result<&'s mut S, S::Error>, BoxError>
    where
        S: Service<Request<B>>,
    {
        let Some((started, total)) = self.state.deadline else {
            return Ok(service.ready().await);
        };
        tokio::time::timeout_at(crate::time::after(started, total), service.ready())
            .await
            .map_err(|_| {
                Error::new(ErrorKind::DeadlineExceeded, self.state.attempts)
                    .with_status(self.state.last_status)
                    .with_maybe_applied(self.state.maybe_applied)
                    .with_method(self.parts.method.clone())
                    .into()
            })
    }

    /// Counts the attempt that is about to be sent (the first of a call goes through here too).
    pub(super) fn count_attempt(&mut self) {
        self.state.attempts += 1;
    }

    /// Records how the call ended, and hands its result on.
    pub(crate) fn finish<R>(
        &self,
        result: Result<Response<R>, BoxError>,
    ) -> Result<Response<R>, BoxError> {
        match &result {
            Ok(response) => self.record_end(Some(response.status()), None),
            Err(error) => self.record_end(None, Some(error)),
        }
        result
    }

    /// Records how the call ended: with a response of `status`, or with `error`.
    pub(super) fn record_end(&self, status: Option<StatusCode>, error: Option<&BoxError>) {
        let policy = &self.shared.policy;
        self.metrics.finish(status);
        if let Some(switch) = &self.shared.switch {
            let succeeded =
                status.is_some_and(|s| !s.is_server_error() && s != StatusCode::TOO_MANY_REQUESTS);
            switch.record(policy.version(), succeeded, self.started.elapsed());
        }
        let error = error.map(|e| crate::error::find::<Error>(&**e).map(Error::kind));
        span::end(
            &self.span,
            status,
            error,
            self.state.attempts,
            self.state.waited,
        );
    }
}

/// Whether the call's response carries no [`RetryInfo`]: answered at the first attempt, with
/// no wait, and not judged as an answer that may hide an applied request.
fn plain(state: &State) -> bool {
    state.attempts <= 1 && state.waited.is_zero() && !state.maybe_applied
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
            // A first-try answer carries none: `RetryInfo::of` reads its absence as one attempt,
            // and the common case allocates no extension map for it.
            if !plain(state) {
                response.extensions_mut().insert(RetryInfo {
                    attempts: state.attempts,
                    waited: state.waited,
                    maybe_applied: state.maybe_applied,
                });
            }
            return Ok(response);
        }
        // After an attempt that may have been applied, the call's outcome is unknown whatever
        // this last error is: said by the layer's error, with this one as its source.
        (Decision::Return, Last::Error(error)) if state.maybe_applied => {
            Error::new(ErrorKind::OutcomeUnknown, state.attempts)
                .with_source(Some(error))
                .with_maybe_applied(true)
        }
        (Decision::Return, Last::Error(error)) => return Err(error),
        (Decision::Stop { kind, .. }, Last::Error(error)) => Error::new(kind, state.attempts)
            .with_source(Some(error))
            .with_maybe_applied(state.maybe_applied),
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
                .with_limit(limit)
                .with_maybe_applied(state.maybe_applied);
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
fn trace(state: &State, outcome: Outcome<'_>, decision: Decision) {
    let attempt = state.attempts;
    let (status, error) = match outcome {
        Outcome::Response(status, _) => (Some(status.as_u16()), None),
        Outcome::Error(error) => (None, Some(tracing::field::display(error))),
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
