//! [`Future`] types.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;

use super::{Error, Permit};
use crate::BoxError;
use crate::NotSent;

pin_project! {
    /// Response future of the [`Concurrency`](super::Concurrency) service.
    ///
    /// Holds the permit until the response head arrives (or the call fails), then learns from
    /// the response's rate-limit headers.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        // `None`: the call was refused (reject mode) and never reached the inner service, or
        // its answer was given.
        #[pin]
        inner: Option<F>,
        // The permit, and through it the pacers the response is shown to.
        permit: Option<Permit>,
        // The answer was given: a later poll gets an error, not a poll of a finished future.
        done: bool,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(inner: F, permit: Permit) -> Self {
        ResponseFuture {
            inner: Some(inner),
            permit: Some(permit),
            done: false,
        }
    }

    pub(super) fn overloaded() -> Self {
        ResponseFuture {
            inner: None,
            permit: None,
            done: false,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<http::Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            if *this.done {
                return Poll::Ready(Err("the concurrency layer's future was polled after it \
                                        completed"
                    .into()));
            }
            return Poll::Ready(Err(NotSent::new(Error::Overloaded).into()));
        };
        let output = ready!(inner.poll(cx));
        this.inner.set(None);
        *this.done = true;
        // Release the permit now rather than when the future is dropped: the caller may keep
        // the future around after it completes.
        let shared = this.permit.take().and_then(Permit::release);
        if let (Ok(response), Some(shared)) = (&output, shared) {
            if shared.pacer.learns() {
                shared.pacer.observe(response.status(), response.headers());
            }
            if let Some(fleet) = shared.fleet.as_ref() {
                fleet.observe(response.status(), response.headers());
            }
        }
        Poll::Ready(output.map_err(Into::into))
    }
}
