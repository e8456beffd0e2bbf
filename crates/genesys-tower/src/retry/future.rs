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

use super::call::{Attempt, Call, Last, Next};
use super::decide::Outcome;
use crate::BoxError;
use crate::body::ReplayBody;

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
            #[pin]
            future: S::Future,
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
    /// The first attempt of `call`, sent on `inner` (ready) as the future is made, so that the
    /// inner service's future is written where it stays rather than moved into place.
    #[inline(always)]
    pub(super) fn first(inner: &mut S, request: Request<B>, attempt: Attempt, call: Call) -> Self
    where
        S: Clone + Send + 'static,
    {
        ResponseFuture {
            kind: Kind::First {
                future: attempt.send(inner, request),
                attempt: Some(attempt),
                // After the call: the spare, when it has to be made, is made from the service as
                // its call left it.
                call: {
                    call.fill_spare(inner);
                    Some(call)
                },
                body: PhantomData,
            },
        }
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
            let (call, service, delay, last) = match kind.as_mut().project() {
                KindProj::Boxed { future } => return future.as_mut().poll(cx),
                KindProj::First {
                    future,
                    attempt,
                    call,
                    ..
                } => {
                    let (Some(attempt_ref), Some(call_ref)) = (attempt.as_ref(), call.as_ref())
                    else {
                        return Poll::Ready(Err("the retry layer's future was polled after it \
                                                completed"
                            .into()));
                    };
                    let outcome = {
                        let _call = call_ref.span.enter();
                        let _attempt = attempt_ref.span.enter();
                        ready!(future.poll(cx))
                    };
                    // From here the first attempt is over: a later poll finds no attempt, even
                    // if deciding what follows panics (the classifier is the user's code). The
                    // call is worked on where it lies: it is moved (into the boxed rest of the
                    // call) only when a retry is decided.
                    let (Some(attempt), Some(call_ref)) = (attempt.take(), call.as_mut()) else {
                        return Poll::Ready(Err("the retry layer's future lost its call".into()));
                    };
                    let entered = call_ref.span.clone().entered();
                    let (decision, last) = match outcome {
                        Ok(response) => {
                            let status = response.status();
                            let decision = call_ref
                                .judge(Outcome::Response(status, response.headers()), &attempt);
                            if call_ref.returns_as_is(decision) {
                                // The common end: the response goes back where it came from,
                                // without a move through the decision.
                                drop(entered);
                                drop(attempt);
                                call_ref.record_end(Some(status), None);
                                *call = None;
                                return Poll::Ready(Ok(response));
                            }
                            (decision, Last::Response(response))
                        }
                        Err(error) => {
                            let error: BoxError = error.into();
                            let decision = call_ref.judge(Outcome::Error(&*error), &attempt);
                            (decision, Last::Error(error))
                        }
                    };
                    let next = call_ref.conclude(decision, last);
                    drop(entered);
                    drop(attempt);
                    let (delay, last) = match next {
                        Next::Done(result) => {
                            let result = call_ref.finish(result);
                            *call = None;
                            return Poll::Ready(result);
                        }
                        Next::Retry { delay, last } => (delay, last),
                    };
                    let Some(call) = call.take() else {
                        return Poll::Ready(Err("the retry layer's future lost its call".into()));
                    };
                    let Some(service) = call.spare::<S>() else {
                        return Poll::Ready(Err(
                            "the retry layer has no service to send a retry on".into(),
                        ));
                    };
                    (call, service, delay, last)
                }
            };
            let span = call.span.clone();
            kind.set(Kind::Boxed {
                future: Box::pin(
                    call.attempts::<S, B, R>(service, Some((delay, last)))
                        .instrument(span),
                ),
            });
        }
    }
}

impl<S, B> fmt::Debug for ResponseFuture<S, B>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
