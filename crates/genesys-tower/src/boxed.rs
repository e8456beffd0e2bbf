//! The response future of a layer whose call is one `async` state machine (the retry layer;
//! it re-exports it as its own `ResponseFuture`).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::BoxError;

/// A layer's response future: the whole call (waiting for a token or a claim, buffering the body,
/// every attempt and the waits between them) as one boxed `async` state machine, one allocation
/// per call, small next to a network call. `R` is the response, of the body type the service
/// below answers with.
pub struct ResponseFuture<R> {
    inner: Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>,
}

impl<R> ResponseFuture<R> {
    pub(crate) fn new(future: impl Future<Output = Result<R, BoxError>> + Send + 'static) -> Self {
        ResponseFuture {
            inner: Box::pin(future),
        }
    }
}

impl<R> Future for ResponseFuture<R> {
    type Output = Result<R, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<R> fmt::Debug for ResponseFuture<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
