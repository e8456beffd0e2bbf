//! Whether a unit's request left: what a unit stopped in flight (a second Ctrl-C, the end of the
//! grace after an interrupt) is recorded as.
//!
//! A unit stopped before any request of it that could change data was handed to the network
//! (one waiting for pacing, for a permit, for the login host, or for a retry after an answer
//! that says nothing was done) was surely not applied: it is listed as not sent, and a re-run
//! sends it. Any other is recorded as outcome unknown, as before.
//!
//! The job's client sends through [`Watch`], at the bottom of its stack, just above the network.
//! Each unit's task runs in a [`Departures::scope`]; `Watch` counts there every request that may
//! change data (not of a safe method, `GET` or `HEAD` say, and sent to the API: with a bearer
//! token, so that a token request to the login host is not counted) and takes it off again
//! when its answer says it was not processed (a 429 or a 503, which the stack sends again
//! whatever the method, or a 401, which its auth layer sends again with a new token) or its
//! error says it never reached a server. A final answer such as a 409 leaves it counted: in doubt
//! errs on the safe side. A unit is not sent only while its count is
//! zero. A deliverer says it sends only through such a client with
//! [`Deliver::watches_departures`](crate::job::Deliver::watches_departures), which the deliverers
//! holding a [`Watched`] client do.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};

use genesys_client::{GenesysClient, GenesysClientBuilder, GenesysError};
use genesys_tower::{Body, BoxError};
use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_service::Service;

tokio::task_local! {
    /// The count of the unit whose task is running.
    static DEPARTED: Arc<AtomicU32>;
}

/// One unit's requests that may have changed data: see the [module docs](self).
#[derive(Debug, Clone, Default)]
pub(crate) struct Departures(Arc<AtomicU32>);

impl Departures {
    /// Runs `future` (a unit's delivery) with its requests counted here.
    pub(crate) async fn scope<F: Future>(&self, future: F) -> F::Output {
        DEPARTED.scope(self.0.clone(), future).await
    }

    /// Whether a request that may have changed data left, and no answer said it was not
    /// processed.
    pub(crate) fn in_doubt(&self) -> bool {
        self.0.load(Ordering::Acquire) > 0
    }
}

/// Counts a request of the running unit as gone (for a deliverer with no client of its own,
/// in tests). Returns what [`undo`] takes.
pub(crate) fn leave() -> Option<Arc<AtomicU32>> {
    let count = DEPARTED.try_with(Arc::clone).ok()?;
    count.fetch_add(1, Ordering::AcqRel);
    Some(count)
}

/// Takes a request counted by [`leave`] off again: its answer says it was not processed.
fn undo(count: &AtomicU32) {
    // Never below zero: each undo follows its own leave.
    let _ = count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
}

/// Whether `request` may change data at the API: see the [module docs](self).
fn may_change_data<B>(request: &Request<B>) -> bool {
    !request.method().is_safe()
        && request
            .headers()
            .get(AUTHORIZATION)
            .is_some_and(|v| v.as_bytes().starts_with(b"Bearer "))
}

/// Whether `outcome` says that its request was not processed.
fn not_processed<B>(outcome: &Result<Response<B>, BoxError>) -> bool {
    match outcome {
        Ok(response) => matches!(
            response.status(),
            StatusCode::TOO_MANY_REQUESTS
                | StatusCode::UNAUTHORIZED
                | StatusCode::SERVICE_UNAVAILABLE
        ),
        Err(e) => genesys_tower::error::never_sent(&**e),
    }
}

/// The service below a job's client's stack: counts its unit's requests (see the
/// [module docs](self)).
#[derive(Clone)]
pub(crate) struct Watch<S>(S);

impl<S, B> Service<Request<Body>> for Watch<S>
where
    S: Service<Request<Body>, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = Watched<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        // Counted before it is handed on: from here on, it may leave.
        let count = may_change_data(&request).then(leave).flatten();
        Watched {
            future: self.0.call(request),
            count,
        }
    }
}

pin_project! {
    /// The future of [`Watch`].
    pub(crate) struct Watched<F> {
        #[pin]
        future: F,
        count: Option<Arc<AtomicU32>>,
    }
}

impl<F, B, E> Future for Watched<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = std::task::ready!(this.future.poll(cx)).map_err(Into::into);
        if let Some(count) = this.count.take()
            && not_processed(&outcome)
        {
            undo(&count);
        }
        Poll::Ready(outcome)
    }
}

/// A client whose requests go through [`Watch`]: the only kind a deliverer that says it
/// [watches departures](crate::job::Deliver::watches_departures) holds.
#[derive(Debug, Clone)]
pub(crate) struct WatchedClient(GenesysClient);

impl WatchedClient {
    /// Builds `builder`'s client over its own HTTP client (its proxy, certificates and connect
    /// timeout) watched.
    pub(crate) fn build(builder: GenesysClientBuilder) -> Result<WatchedClient, GenesysError> {
        let http = builder.http_service()?;
        WatchedClient::over(builder, http)
    }

    /// Builds `builder`'s client over `leaf`, watched.
    pub(crate) fn over<S, B>(
        builder: GenesysClientBuilder,
        leaf: S,
    ) -> Result<WatchedClient, GenesysError>
    where
        S: Service<Request<Body>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        builder.service(Watch(leaf)).build().map(WatchedClient)
    }
}

impl std::ops::Deref for WatchedClient {
    type Target = GenesysClient;

    fn deref(&self) -> &GenesysClient {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;

    /// A service that answers every request with `status` (or a refused connection, for 0).
    #[derive(Clone)]
    struct Answers(u16);

    impl Service<Request<Body>> for Answers {
        type Response = Response<Body>;
        type Error = BoxError;
        type Future = std::future::Ready<Result<Response<Body>, BoxError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<Body>) -> Self::Future {
            std::future::ready(match self.0 {
                0 => Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused).into()),
                status => {
                    let mut response = Response::new(Body::empty());
                    *response.status_mut() = StatusCode::from_u16(status).unwrap();
                    Ok(response)
                }
            })
        }
    }

    fn request(method: Method, authorization: &str) -> Request<Body> {
        Request::builder()
            .method(method)
            .uri("http://api.test/api/v2/x")
            .header(AUTHORIZATION, authorization)
            .body(Body::empty())
            .unwrap()
    }

    /// Sends `request` through `Watch` over `Answers(status)` in a unit's scope, and says
    /// whether the unit is in doubt after it.
    async fn in_doubt_after(status: u16, request: Request<Body>) -> bool {
        let unit = Departures::default();
        let mut watch = Watch(Answers(status));
        // Called inside the scope, as a unit's task calls its client's stack.
        let _ = unit.scope(async move { watch.call(request).await }).await;
        unit.in_doubt()
    }

    #[tokio::test]
    async fn a_write_to_the_api_is_in_doubt_unless_its_answer_says_it_was_not_processed() {
        for (status, doubt) in [
            (200, true),
            (500, true),
            (502, true),
            (504, true),
            (409, true),
        ] {
            assert_eq!(
                in_doubt_after(status, request(Method::POST, "Bearer t")).await,
                doubt,
                "{status}"
            );
        }
        for status in [429, 401, 503, 0] {
            assert!(
                !in_doubt_after(status, request(Method::PATCH, "Bearer t")).await,
                "{status}: not processed"
            );
        }
    }

    #[tokio::test]
    async fn reads_and_token_requests_are_not_counted() {
        assert!(!in_doubt_after(200, request(Method::GET, "Bearer t")).await);
        assert!(!in_doubt_after(200, request(Method::POST, "Basic Y2xpZW50OnNlY3JldA==")).await);
    }

    #[tokio::test]
    async fn a_request_dropped_on_its_way_stays_in_doubt() {
        let unit = Departures::default();
        let mut watch = Watch(Never);
        let future = unit.scope(async move {
            let watched = watch.call(request(Method::POST, "Bearer t"));
            // Dropped before its answer: the request may have left.
            drop(watched);
        });
        future.await;
        assert!(unit.in_doubt());
    }

    /// A service whose answers never come.
    struct Never;

    impl Service<Request<Body>> for Never {
        type Response = Response<Body>;
        type Error = BoxError;
        type Future = std::future::Pending<Result<Response<Body>, BoxError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: Request<Body>) -> Self::Future {
            std::future::pending()
        }
    }
}
