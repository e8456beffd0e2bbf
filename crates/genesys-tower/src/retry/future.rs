//! The future of [`Retry`](super::Retry): every attempt of one call, with the waits between them.
//!
//! The first attempt of a call whose body is in memory is the inner service's own future, polled
//! in place: a call that succeeds (or ends) at once costs no boxed `async` state machine. When
//! a retry is decided, or the body has to be read into memory first, the rest of the call is one
//! boxed `async` block.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;
use tracing::Instrument;

use std::time::Duration;

use super::call::{Attempt, Call, Last, Next};
use super::decide::{Decision, Outcome};
use crate::Body;
use crate::BoxError;
use crate::body::ReplayBody;
use crate::per_thread::PerThread;

type Boxed<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

pin_project! {
    /// The response future of [`Retry`](super::Retry). `S` is the service below and `B` the
    /// request body.
    pub struct ResponseFuture<S, B>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        kind: Kind<S, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, B>
    where
        S: Service<Request<B>>,
    {
        // The first attempt, in flight; a clone of the layer's spare service (in the call's
        // shared state) takes the attempts after it.
        First {
            // `None` only while `Retry::call` makes it.
            #[pin]
            future: Option<S::Future>,
            attempt: Option<Attempt>,
            call: Option<Call>,
            body: PhantomData<fn() -> B>,
        },
        // The rest of the call (or all of it).
        Boxed {
            future: Boxed<S::Response>,
        },
    }
}

impl<S, B> ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    /// The first attempt of a call whose body is in memory, sent on `inner` (ready). The future
    /// is made first and the call put straight into it, then the inner service's future: each
    /// is written where it stays rather than moved into place.
    #[inline(always)]
    pub(super) fn first<R>(
        inner: &mut S,
        shared: &PerThread<super::Shared>,
        parts: http::request::Parts,
        body: Body,
    ) -> Self
    where
        S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
        R: Send + 'static,
        B: ReplayBody,
    {
        let mut this = ResponseFuture {
            kind: Kind::First {
                future: None,
                attempt: None,
                call: None,
                body: PhantomData,
            },
        };
        let Kind::First {
            future,
            attempt: attempt_slot,
            call: call_slot,
            ..
        } = &mut this.kind
        else {
            // Made as the first attempt just above: never taken.
            return Self::boxed(std::future::ready(Err(
                "the retry layer's future was not made as its first attempt".into(),
            )));
        };
        let now = tokio::time::Instant::now();
        let call = Call::begin(call_slot, shared, parts, now);
        let (request, attempt) = match call.first_attempt::<B>(body) {
            Ok(first) => first,
            Err(e) => {
                let result = match call_slot.take() {
                    Some(call) => call.finish(Err(e)),
                    None => Err(e),
                };
                return Self::boxed(std::future::ready(result));
            }
        };
        // The call's clock read, lent to the layers below for the time of their `call` (the
        // auth layer's look at its token's expiry).
        *future = Some(crate::time::lend(now, || attempt.send(inner, request)));
        *attempt_slot = Some(attempt);
        // After the call: the spare, when it has to be made, is made from the service as its
        // call left it.
        call.fill_spare(inner);
        this
    }

    pub(super) fn boxed(
        future: impl Future<Output = Result<S::Response, BoxError>> + Send + 'static,
    ) -> Self {
        ResponseFuture {
            kind: Kind::Boxed {
                future: Box::pin(future),
            },
        }
    }
}

impl<S, B, R> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: ReplayBody,
    R: http_body::Body + Send + 'static,
{
    type Output = Result<Response<R>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        loop {
            let (call, delay, last) = match kind.as_mut().project() {
                KindProj::Boxed { future } => return future.as_mut().poll(cx),
                KindProj::First {
                    future,
                    attempt,
                    call,
                    ..
                } => {
                    let (Some(future), Some(attempt_ref), Some(call_ref)) =
                        (future.as_pin_mut(), attempt.as_ref(), call.as_ref())
                    else {
                        return Poll::Ready(Err("the retry layer's future was polled after it \
                                                completed"
                            .into()));
                    };
                    let outcome = {
                        let _call = call_ref.span.enter();
                        let _attempt = attempt_ref.span.enter();
                        ready!(future.poll(cx)).map_err(Into::into)
                    };
                    // From here the first attempt is over: a later poll finds no attempt, even
                    // if deciding what follows panics (the classifier is the user's code).
                    let Some(attempt) = attempt.take() else {
                        return Poll::Ready(Err("the retry layer's future lost its call".into()));
                    };
                    let Some((attempt, decision)) = judge_first(call, attempt, &outcome) else {
                        // The common end: the outcome goes back from where it lies.
                        return Poll::Ready(outcome);
                    };
                    match after_judged(call, attempt, decision, outcome) {
                        AfterFirst::Done(result) => return Poll::Ready(result),
                        AfterFirst::Retry { call, delay, last } => (call, delay, last),
                    }
                }
            };
            match rest_of_call::<S, B, R>(call, delay, last) {
                Ok(rest) => kind.set(Kind::Boxed {
                    future: Box::pin(rest),
                }),
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

/// What follows a call's first attempt.
#[allow(
    clippy::large_enum_variant,
    reason = "a return value, read at once: the large variant is the rare one, boxed right after"
)]
pub(crate) enum AfterFirst<R> {
    /// The call is over (its end recorded).
    Done(Result<Response<R>, BoxError>),
    /// A retry after `delay`; `last` is read meanwhile.
    Retry {
        call: Call,
        delay: Duration,
        last: Last<R>,
    },
}

/// Decides what follows the first attempt of the call in `slot`, from its `outcome`: the call
/// is worked on where it lies, and taken out of `slot` when it ends or a retry is decided. A
/// response that goes back as it is is never moved through the decision.
#[inline(always)]
pub(crate) fn after_first<R>(
    slot: &mut Option<Call>,
    attempt: Attempt,
    outcome: Result<Response<R>, BoxError>,
) -> AfterFirst<R> {
    match judge_first(slot, attempt, &outcome) {
        None => AfterFirst::Done(outcome),
        Some((attempt, decision)) => after_judged(slot, attempt, decision, outcome),
    }
}

/// Judges the first attempt's `outcome` where it lies. `None`: the call is over and the outcome
/// goes back as it is (the common end: a final answer at the first attempt), its end recorded.
/// Otherwise the attempt and the decision, for [`after_judged`].
#[inline(always)]
pub(crate) fn judge_first<R>(
    slot: &mut Option<Call>,
    attempt: Attempt,
    outcome: &Result<Response<R>, BoxError>,
) -> Option<(Attempt, Decision)> {
    let Some(call) = slot.as_mut() else {
        // Reported by `after_judged`.
        return Some((attempt, Decision::Return));
    };
    let entered = call.span.clone().entered();
    let decision = match outcome {
        Ok(response) => {
            let status = response.status();
            let decision = call.judge(Outcome::Response(status, response.headers()), &attempt);
            if call.returns_as_is(decision) {
                drop(entered);
                drop(attempt);
                call.record_end(Some(status), None);
                *slot = None;
                return None;
            }
            decision
        }
        Err(error) => call.judge(Outcome::Error(&**error), &attempt),
    };
    drop(entered);
    Some((attempt, decision))
}

/// What follows a first attempt that [`judge_first`] did not end: the outcome, judged, turned
/// into the call's result or a retry.
pub(crate) fn after_judged<R>(
    slot: &mut Option<Call>,
    attempt: Attempt,
    decision: Decision,
    outcome: Result<Response<R>, BoxError>,
) -> AfterFirst<R> {
    let Some(call) = slot.as_mut() else {
        return AfterFirst::Done(Err("the retry layer's future lost its call".into()));
    };
    let entered = call.span.clone().entered();
    let last = match outcome {
        Ok(response) => Last::Response(response),
        Err(error) => Last::Error(error),
    };
    let next = call.conclude(decision, last);
    drop(entered);
    drop(attempt);
    match next {
        Next::Done(result) => {
            let result = call.finish(result);
            *slot = None;
            AfterFirst::Done(result)
        }
        Next::Retry { delay, last } => match slot.take() {
            Some(call) => AfterFirst::Retry { call, delay, last },
            None => AfterFirst::Done(Err("the retry layer's future lost its call".into())),
        },
    }
}

/// The rest of a call after its first attempt: the wait of `delay` (reading `last`
/// meanwhile), then the attempts after it, on a clone of the layer's spare service `S`, in the
/// call's span.
pub(crate) fn rest_of_call<S, B, R>(
    call: Call,
    delay: Duration,
    last: Last<R>,
) -> Result<impl Future<Output = Result<Response<R>, BoxError>> + Send + 'static, BoxError>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: ReplayBody,
    R: http_body::Body + Send + 'static,
{
    let Some(service) = call.spare::<S>() else {
        return Err("the retry layer has no service to send a retry on".into());
    };
    let span = call.span.clone();
    Ok(call
        .attempts::<S, B, R>(service, Some((delay, last)))
        .instrument(span))
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
