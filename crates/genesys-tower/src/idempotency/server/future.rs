//! The future of [`ServerIdempotency`](super::ServerIdempotency).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::util::Oneshot;
use tower_service::Service;

use crate::{Body, BoxError};

type Guarded<E> = Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>;

pin_project! {
    /// The response future of [`ServerIdempotency`](super::ServerIdempotency) over the service
    /// `S`.
    ///
    /// A request of a method the layer does not guard (a GET) goes to the handler in this future
    /// as it is, without an allocation; a guarded one (claim, run, store, replay) is one boxed
    /// `async` state machine, small next to the store's round trip.
    pub struct ResponseFuture<S>
    where
        S: Service<Request<Body>>,
    {
        #[pin]
        kind: Kind<S>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S>
    where
        S: Service<Request<Body>>,
    {
        Pass { #[pin] call: Oneshot<S, Request<Body>> },
        Guarded { future: Guarded<S::Error> },
    }
}

impl<S: Service<Request<Body>>> ResponseFuture<S> {
    pub(super) fn pass(call: Oneshot<S, Request<Body>>) -> Self {
        ResponseFuture {
            kind: Kind::Pass { call },
        }
    }

    pub(super) fn guarded(
        future: impl Future<Output = Result<Response<Body>, S::Error>> + Send + 'static,
    ) -> Self {
        ResponseFuture {
            kind: Kind::Guarded {
                future: Box::pin(future),
            },
        }
    }
}

impl<S, ResB> Future for ResponseFuture<S>
where
    S: Service<Request<Body>, Response = Response<ResB>>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Output = Result<Response<Body>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Pass { call } => Poll::Ready(ready!(call.poll(cx)).map(|r| r.map(Body::new))),
            KindProj::Guarded { future } => future.as_mut().poll(cx),
        }
    }
}

impl<S: Service<Request<Body>>> fmt::Debug for ResponseFuture<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::Pass { .. } => "pass",
            Kind::Guarded { .. } => "guarded",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}
