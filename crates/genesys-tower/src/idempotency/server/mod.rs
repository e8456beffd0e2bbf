//! The server-side layer: the IETF `Idempotency-Key` draft for axum and any tower HTTP server.
//!
//! [`ServerIdempotencyLayer`] sits in front of handlers whose effect must happen once per key,
//! whatever the callers retry:
//!
//! | request | answer |
//! | --- | --- |
//! | no key, on a route that requires one ([`require_key`](ServerIdempotencyLayer::require_key)) | 400, JSON body saying so |
//! | key empty, longer than 255 characters (configurable), not visible ASCII, or sent twice | 400 |
//! | body larger than the body limit (1 MiB by default) | 413 |
//! | new key | the handler runs; its response is stored if [`should_store`] (or your rule) says so |
//! | same key, different method, path, query or body | 422, handler not called |
//! | same key while the first request is still running | 409 with `Retry-After: 1`, or wait for it ([`wait_in_flight`](ServerIdempotencyLayer::wait_in_flight)) |
//! | same key after completion | the original status, headers and body, plus `Idempotent-Replayed: true` |
//! | same key, first request abandoned (its server died or lost the store mid-request, its handler failed without an answer, no response kept) | 409 `idempotency_outcome_unknown` until the retention ends, handler not called (or run again with [`rerun_abandoned`](ServerIdempotencyLayer::rerun_abandoned)) |
//! | the store cannot be reached, or does not answer within the [store timeout](ServerIdempotencyLayer::store_timeout) | 503, handler not called (or called anyway with [`fail_open`](ServerIdempotencyLayer::fail_open)) |
//! | the store lost its records recently (Redis restarted without persistence) and has none for the key | 503 `idempotency_store_lost`, handler not called (see `RedisStore`) |
//!
//! Every error body is JSON: `{"error": "<code>", "message": "<what happened and what to do>"}`.
//!
//! Keys are the callers' own choice: on a service with more than one caller, give each its own
//! namespace with [`scope`](ServerIdempotencyLayer::scope), or a caller who sends another's key
//! and request is answered with the other's stored response.
//!
//! # What is stored
//!
//! Following Stripe's practice, a response is stored (and replayed) unless the request did not get
//! processed: see [`should_store`]. In short, 400, 401, 403, 408, 409, 422, 429 and 503 are not
//! stored (the request failed validation or authorization, conflicted, or was turned away), so the
//! caller can fix the request and retry it with the same key. Everything else is stored, *500
//! included*: a handler that failed halfway may have had part of its effect, and running it again
//! could apply that part twice. Use [`store_if`](ServerIdempotencyLayer::store_if) for another rule.
//!
//! A response body larger than the response limit (1 MiB by default) is passed to the caller as
//! it streams and is not stored; the key is released, so a repeat runs the handler again: raise
//! the limit on routes with large responses. The layer holds a body back until it passes the
//! limit or ends, so a response that streams slowly (server-sent events, progress) reaches the
//! caller only then: leave such routes out of the layer.
//!
//! The [`MemoryStore`](super::MemoryStore) (the default) holds at most its capacity of
//! responses (64 MiB by default). Past it, the least recently used responses are dropped, but
//! their keys are kept until their retention ends: a repeat is answered 409
//! `idempotency_response_evicted` (the request was processed; its response is gone), never run
//! again (one such key per KiB of the store's capacity is kept; past that, the oldest is
//! forgotten, with a warning). Give the store room for a retention's worth of responses to
//! replay them all.
//!
//! # Several instances
//!
//! Give every instance the same Redis store (feature `redis`) and the same prefix: the claim is
//! atomic in Redis, so one instance runs the handler and the others answer 409, or, with
//! [`wait_in_flight`](ServerIdempotencyLayer::wait_in_flight), poll the store until the response
//! is there and answer with it. Wait mode suits callers that do not retry on 409 (each caller
//! then gets its key's response at once); it holds a connection per waiting request, bounded by
//! the wait timeout.
//!
//! # Crashes, cancellations and store faults
//!
//! The claim on a key is a lease ([`lock_ttl`](ServerIdempotencyLayer::lock_ttl), 30 s by
//! default) that the layer renews every third of it while the handler runs, so a slow handler
//! keeps its key. A request that stops without storing a response leaves an *abandoned* claim:
//! its process crashed, the client hung up and the server dropped the request mid-handler, the
//! handler failed without an answer (its service returned an error, or its response body failed
//! halfway, unless the status is one [`should_store`] turns away), or the store could not be
//! reached when the response was ready. A service that was never ready, or that refused the
//! request with a [`NotSent`](crate::NotSent) error (a full concurrency limit's, a refusal of
//! your own) or tower's load shedder's `Overloaded`, frees the key at once: nothing ran. Any
//! other error after the handler started holds the key: mark a refusal of your own with
//! `NotSent`. Within the lease, repeats get 409 "in progress"; after it, nobody can know
//! whether the handler had its effect, so by default the claim is held until the retention
//! ends and repeats get 409 `idempotency_outcome_unknown`: the key never runs twice.
//! [`rerun_abandoned`](ServerIdempotencyLayer::rerun_abandoned) runs such keys again instead,
//! for handlers that are safe to repeat. Held claims count against the memory store's bound
//! ([`MAX_CLAIMED_KEYS`](super::MAX_CLAIMED_KEYS)) until their retention ends: a caller that
//! sends requests with new keys and hangs up mid-handler can fill it, after which new keys are
//! refused (503). Limit each caller's rate in front of the layer, and give it a
//! [`scope`](ServerIdempotencyLayer::scope) per caller.
//!
//! A response the store could not take (the connection to Redis dropped as it was stored) is
//! still given to the caller, and kept in memory to be stored when the store answers again,
//! retried with backoff for 15 minutes (at most 256 such responses at once); once it lands,
//! repeats get it as a replay. A claim or a renewal that reaches the store after half the store
//! timeout (a Redis that was paused runs its queued commands when it resumes) does nothing, so a
//! request answered 503 leaves no lock behind. A claim made whose answer then reaches no one (it
//! came back past the store timeout, or the client hung up while it was on its way) is released
//! by the `RedisStore` in the background, so that its key, whose handler never ran, is free
//! again as soon as Redis runs the release.
//!
//! # Example
//!
//! ```
//! use axum::{Router, routing::post};
//! use genesys_tower::idempotency::server::ServerIdempotencyLayer;
//! use http::{Request, StatusCode};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let app = Router::new()
//!     .route("/orders", post(|body: String| async move { (StatusCode::CREATED, body) }))
//!     .layer(ServerIdempotencyLayer::new().require_key(true));
//!
//! let order = |key: &str| {
//!     Request::post("/orders")
//!         .header("idempotency-key", key)
//!         .body(axum::body::Body::from("{\"qty\":1}"))
//!         .unwrap()
//! };
//! let first = app.clone().oneshot(order("order-42")).await.unwrap();
//! assert_eq!(first.status(), StatusCode::CREATED);
//! let again = app.clone().oneshot(order("order-42")).await.unwrap();
//! assert_eq!(again.status(), StatusCode::CREATED);
//! assert_eq!(again.headers()["idempotent-replayed"], "true");
//!
//! let no_key = Request::post("/orders").body(axum::body::Body::empty()).unwrap();
//! assert_eq!(app.oneshot(no_key).await.unwrap().status(), StatusCode::BAD_REQUEST);
//! # }
//! ```

mod answer;
mod future;
mod handle;
mod layer;
mod lease;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use tower::ServiceExt;
use tower_service::Service;

pub use self::future::ResponseFuture;
use self::layer::Config;
pub use self::layer::{
    DEFAULT_MAX_KEY_LEN, DEFAULT_SERVER_LOCK_TTL, DEFAULT_STORE_TIMEOUT, ServerIdempotencyLayer,
};
use crate::{Body, BoxError};

/// Whether a response is stored by default.
///
/// Not stored, so that the caller can retry with the same key: 400 Bad Request, 401
/// Unauthorized, 403 Forbidden, 408 Request Timeout, 409 Conflict, 422 Unprocessable Content
/// (the request failed validation or authorization, or conflicted), 429 Too Many Requests and 503
/// Service Unavailable (the request was turned away before it was processed), and 1xx.
/// Everything else is stored and replayed, 500 included, because a failure halfway may have had
/// part of its effect.
#[must_use]
pub fn should_store(status: StatusCode) -> bool {
    !status.is_informational()
        && !matches!(
            status,
            StatusCode::BAD_REQUEST
                | StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
                | StatusCode::REQUEST_TIMEOUT
                | StatusCode::CONFLICT
                | StatusCode::UNPROCESSABLE_ENTITY
                | StatusCode::TOO_MANY_REQUESTS
                | StatusCode::SERVICE_UNAVAILABLE
        )
}

/// The service made by [`ServerIdempotencyLayer`].
#[derive(Clone)]
pub struct ServerIdempotency<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> ServerIdempotency<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for ServerIdempotency<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerIdempotency")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ServerIdempotency<S>
where
    S: Service<Request<Body>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Send + 'static,
    ReqB: http_body::Body<Data = Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S>;

    /// Always ready: requests answered by the layer (replays, refusals) never reach the inner
    /// service, so its readiness is awaited in the call, only when the handler runs.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let inner = self.inner.clone();
        if !self.config.methods.contains(req.method()) {
            // Not guarded (a GET): straight to the handler, in a future that does not box.
            return ResponseFuture::pass(inner.oneshot(req.map(Body::new)));
        }
        ResponseFuture::guarded(handle::handle(self.config.clone(), inner, req))
    }
}
