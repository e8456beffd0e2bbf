//! The future of the client-side [`Idempotency`](super::Idempotency) service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::ServiceExt;
use tower_service::Service;

use super::IdempotencyKey;
use crate::BoxError;

type Keyed<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

pin_project! {
    /// The response future of [`Idempotency`](super::Idempotency) over the service `S`; the
    /// response keeps the body type of the service below.
    ///
    /// A request the layer leaves alone (a GET without a key), and one that gets a key of the
    /// layer's own (nothing to look up or store), go to the service below in this future,
    /// without an allocation or a clone of that service, when it is ready at once; one that has
    /// to wait for it, and a call with the caller's key (claim, join, store, replay), is one
    /// boxed `async` state machine.
    pub struct ResponseFuture<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        #[pin]
        kind: Kind<S, ReqB>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        // Sent to the service below, which was ready at once.
        Direct {
            #[pin]
            future: S::Future,
            // The key to name on the response, when the layer made one up.
            key: Option<IdempotencyKey>,
        },
        // Everything else: one boxed `async` state machine.
        Keyed { future: Keyed<S::Response> },
    }
}

impl<S: Service<Request<ReqB>>, ReqB> ResponseFuture<S, ReqB> {
    /// Sends `req` on `inner`, the layer's own instance of the service below, which the layer's
    /// `poll_ready` does not reserve (the layer is always ready). It is asked here, with a waker
    /// that wakes no one, as nothing waits on this answer: ready at once, it takes the request
    /// and its future is kept in place, nothing cloned. Otherwise the instance goes with the
    /// request, and with whatever its `poll_ready` registered (a place in a semaphore's queue, a
    /// pacing timer), into a boxed call that asks again with the caller's waker; a fresh clone
    /// takes its place, so that nothing reserved below stays with the layer between calls.
    pub(super) fn direct<ResB>(
        inner: &mut S,
        req: Request<ReqB>,
        key: Option<IdempotencyKey>,
    ) -> Self
    where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
        S::Future: Send,
        S::Error: Into<BoxError>,
        ReqB: Send + 'static,
        ResB: Send + 'static,
    {
        match inner.poll_ready(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(())) => ResponseFuture {
                kind: Kind::Direct {
                    future: inner.call(req),
                    key,
                },
            },
            // The error is the call's; the instance that gave it is dropped, and the next call
            // goes to a clone of it, as every call did before.
            Poll::Ready(Err(e)) => {
                *inner = inner.clone();
                Self::keyed(std::future::ready(Err(e.into())))
            }
            Poll::Pending => {
                let fresh = inner.clone();
                let waiting = std::mem::replace(inner, fresh);
                Self::keyed(async move {
                    let mut response = waiting.oneshot(req).await.map_err(Into::into)?;
                    if let Some(key) = key {
                        response.extensions_mut().insert(key);
                    }
                    Ok(response)
                })
            }
        }
    }

    pub(super) fn keyed(
        future: impl Future<Output = Result<S::Response, BoxError>> + Send + 'static,
    ) -> Self {
        ResponseFuture {
            kind: Kind::Keyed {
                future: Box::pin(future),
            },
        }
    }
}

impl<S, ReqB, ResB> Future for ResponseFuture<S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ResB>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Direct { future, key } => {
                let mut response = ready!(future.poll(cx)).map_err(Into::into)?;
                if let Some(key) = key.take() {
                    response.extensions_mut().insert(key);
                }
                Poll::Ready(Ok(response))
            }
            KindProj::Keyed { future } => future.as_mut().poll(cx),
        }
    }
}

impl<S: Service<Request<ReqB>>, ReqB> fmt::Debug for ResponseFuture<S, ReqB> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Direct { .. } => "direct",
            Kind::Keyed { .. } => "keyed",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}
