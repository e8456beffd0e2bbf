//! The future of [`Retry`](super::Retry).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::BoxError;

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send + 'static>>;

/// The response future of [`Retry`](super::Retry): every attempt of one call, with the waits
/// between them.
///
/// It is one boxed `async` state machine (one allocation per call): buffering the body, attempts,
/// backoff sleeps and draining a dropped response are sequential steps that read plainly as
/// `async` code, and the allocation is small next to a network call.
pub struct ResponseFuture<T> {
    inner: BoxFuture<T>,
}

impl<T> ResponseFuture<T> {
    pub(crate) fn new(future: impl Future<Output = Result<T, BoxError>> + Send + 'static) -> Self {
        ResponseFuture {
            inner: Box::pin(future),
        }
    }
}

impl<T> Future for ResponseFuture<T> {
    type Output = Result<T, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<T> fmt::Debug for ResponseFuture<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
