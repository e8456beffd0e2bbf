//! [`Future`] types.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::sync::OwnedSemaphorePermit;

use super::Error;
use super::pacing::Pacer;
use super::shared::SharedPacer;
use crate::BoxError;
use crate::NotSent;

pin_project! {
    /// Response future of the [`Concurrency`](super::Concurrency) service.
    ///
    /// Holds the permit until the response head arrives (or the call fails), then learns from
    /// the response's rate-limit headers.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        // `None`: the call was refused (reject mode) and never reached the inner service.
        #[pin]
        inner: Option<F>,
        permit: Option<OwnedSemaphorePermit>,
        pacer: Option<Arc<Pacer>>,
        fleet: Option<Arc<dyn SharedPacer>>,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(
        inner: F,
        permit: OwnedSemaphorePermit,
        pacer: Option<Arc<Pacer>>,
        fleet: Option<Arc<dyn SharedPacer>>,
    ) -> Self {
        ResponseFuture {
            inner: Some(inner),
            permit: Some(permit),
            pacer,
            fleet,
        }
    }

    pub(super) fn overloaded() -> Self {
        ResponseFuture {
            inner: None,
            permit: None,
            pacer: None,
            fleet: None,
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
        let this = self.project();
        let Some(inner) = this.inner.as_pin_mut() else {
            return Poll::Ready(Err(NotSent::new(Error::Overloaded).into()));
        };
        let output = ready!(inner.poll(cx));
        // Release the permit now rather than when the future is dropped: the caller may keep
        // the future around after it completes.
        drop(this.permit.take());
        if let Ok(response) = &output {
            if let Some(pacer) = this.pacer.as_ref() {
                pacer.observe(response.status(), response.headers());
            }
            if let Some(fleet) = this.fleet.as_ref() {
                fleet.observe(response.status(), response.headers());
            }
        }
        Poll::Ready(output.map_err(Into::into))
    }
}
