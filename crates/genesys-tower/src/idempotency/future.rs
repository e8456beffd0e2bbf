//! The future of the client-side [`Idempotency`](super::Idempotency) service.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::util::Oneshot;
use tower_service::Service;

use super::IdempotencyKey;
use crate::BoxError;

type Keyed<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

pin_project! {
    /// The response future of [`Idempotency`](super::Idempotency) over the service `S`; the
    /// response keeps the body type of the service below.
    ///
    /// A request the layer leaves alone (a GET without a key), and one that gets a key of the
    /// layer's own (nothing to look up or store), go to the service in this future without an
    /// allocation; a call with the caller's key (claim, join, store, replay) is one boxed
    /// `async` state machine.
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
        Direct {
            #[pin]
            call: Oneshot<S, Request<ReqB>>,
            // The key to name on the response, when the layer made one up.
            key: Option<IdempotencyKey>,
        },
        Keyed { future: Keyed<S::Response> },
    }
}

impl<S: Service<Request<ReqB>>, ReqB> ResponseFuture<S, ReqB> {
    pub(super) fn direct(call: Oneshot<S, Request<ReqB>>, key: Option<IdempotencyKey>) -> Self {
        ResponseFuture {
            kind: Kind::Direct { call, key },
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
            KindProj::Direct { call, key } => {
                let mut response = ready!(call.poll(cx)).map_err(Into::into)?;
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
