//! The future of [`Auth`](super::Auth).
//!
//! When the token is at hand and the body in memory, a call is the inner service's own future,
//! polled in place: no boxed `async` state machine (a reference to the layer's shared state,
//! which holds a spare clone of the inner service, is kept for a re-send after a 401). Only a
//! call that must wait (for a token, or to read a streaming body into memory) or that is
//! answered 401 and sent again goes through one boxed `async` block.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{Shared, Token, TokenSource};
use crate::BoxError;
use crate::body::{Body, ReplayBody};
use crate::per_thread::{Handle, PerThread};

type Boxed<R> = Pin<Box<dyn Future<Output = Result<R, BoxError>> + Send>>;

pin_project! {
    /// The response future of [`Auth`](super::Auth). `S` is the service below, `B` the request
    /// body and `T` the token source.
    pub struct ResponseFuture<S, B, T>
    where
        S: Service<Request<B>>,
    {
        #[pin]
        kind: Kind<S, B, T>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<S, B, T>
    where
        S: Service<Request<B>>,
    {
        // The request went straight to the service below; `resend` is what a 401 needs.
        Direct {
            #[pin]
            future: S::Future,
            resend: Option<Resend<S, T>>,
            body: PhantomData<fn() -> B>,
        },
        // Waiting for a token, buffering a body, or sending again after a 401.
        Boxed {
            future: Boxed<S::Response>,
        },
    }
}

/// What sending a request again after a 401 needs: the layer's shared state (with its spare
/// service, cloned only when a 401 calls for the re-send), the request's head as it came
/// (without the token), the token it carried, and a copy of its body.
pub(crate) struct Resend<S, T> {
    pub(crate) parts: http::request::Parts,
    pub(crate) body: Body,
    pub(crate) shared: Handle<Shared<S, T>>,
    pub(crate) token: Token,
}

impl<S, B, T> ResponseFuture<S, B, T>
where
    S: Service<Request<B>>,
{
    /// Sends the request on `inner` (ready) with the token, as the future is made: the copy
    /// for a re-send (when `resend` gives a copy of the body) is taken first,
    /// without the token, and the inner service's future is written where it stays rather than
    /// moved into place.
    #[inline(always)]
    pub(super) fn send(
        inner: &mut S,
        shared: &PerThread<Shared<S, T>>,
        mut parts: http::request::Parts,
        body: B,
        token: super::cache::Cached,
        resend: Option<Body>,
    ) -> Self {
        ResponseFuture {
            kind: Kind::Direct {
                // Fields are made in the order written: the copy before the token goes in.
                resend: resend.map(|body| Resend {
                    parts: parts.clone(),
                    body,
                    shared: shared.handle(),
                    token: token.token,
                }),
                future: {
                    parts
                        .headers
                        .insert(http::header::AUTHORIZATION, token.header);
                    inner.call(Request::from_parts(parts, body))
                },
                body: PhantomData,
            },
        }
    }

    pub(super) fn direct(future: S::Future, resend: Option<Resend<S, T>>) -> Self {
        ResponseFuture {
            kind: Kind::Direct {
                future,
                resend,
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

impl<S, B, T, R> Future for ResponseFuture<S, B, T>
where
    S: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    B: ReplayBody,
    T: TokenSource,
    R: Send + 'static,
{
    type Output = Result<Response<R>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        loop {
            let resend = match kind.as_mut().project() {
                KindProj::Boxed { future } => return future.as_mut().poll(cx),
                KindProj::Direct { future, resend, .. } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    if response.status() != StatusCode::UNAUTHORIZED {
                        return Poll::Ready(Ok(response));
                    }
                    let Some(resend) = resend.take() else {
                        tracing::debug!(
                            "401 for a request outside the token's scope, or whose body cannot \
                             be sent again: returned as is"
                        );
                        return Poll::Ready(Ok(response));
                    };
                    (resend, response)
                }
            };
            let (resend, response) = resend;
            kind.set(Kind::Boxed {
                future: Box::pin(resend.after_401::<B, R>(response)),
            });
        }
    }
}

impl<S, B, T> fmt::Debug for ResponseFuture<S, B, T>
where
    S: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
