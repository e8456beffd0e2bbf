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
//! | the store cannot be reached | 503, handler not called (or called anyway with [`fail_open`](ServerIdempotencyLayer::fail_open)) |
//!
//! Every error body is JSON: `{"error": "<code>", "message": "<what happened and what to do>"}`.
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
//! the limit on routes with large responses.
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
//! # Crashes and cancellations
//!
//! A request that is abandoned while its handler runs (the process crashed, or the client hung up
//! and the server dropped the request) leaves its key locked until the lock expires (30 s by
//! default, [`lock_ttl`](ServerIdempotencyLayer::lock_ttl)); until then repeats get 409, after
//! that the next request with the key runs the handler. Choose a lock longer than your slowest
//! handler: a lock that expires while the first handler still runs lets a second one start.
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

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::request::Parts;
use http::{HeaderValue, Method, Request, Response, StatusCode};
use tokio::time::Instant;
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

use super::client::DEFAULT_RETENTION;
use super::store::{Claim, IdempotencyStore, StoreError, StoredResponse};
use super::{Fingerprint, IDEMPOTENCY_KEY, IdempotencyKey, MemoryStore};
use crate::body::DEFAULT_REPLAY_LIMIT;
use crate::{Body, BoxError, Metrics};

/// The default lock: a request that runs (or was abandoned) longer than 30 s can be taken over.
pub const DEFAULT_SERVER_LOCK_TTL: Duration = Duration::from_secs(30);

/// The default longest key: 255 characters, as Stripe.
pub const DEFAULT_MAX_KEY_LEN: usize = 255;

type KeyFn = Arc<dyn Fn(&Parts, &Bytes) -> Option<String> + Send + Sync>;
type ScopeFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// What a request does when it finds its key in flight.
#[derive(Debug, Clone, Copy)]
enum InFlight {
    Reject,
    Wait(Duration),
}

/// Server-side idempotency for axum and any tower HTTP server. See the [module docs](self).
#[derive(Clone)]
pub struct ServerIdempotencyLayer {
    config: Config,
}

#[derive(Clone)]
struct Config {
    store: Arc<dyn IdempotencyStore>,
    metrics: Metrics,
    methods: Vec<Method>,
    require_key: bool,
    max_key_len: usize,
    body_limit: usize,
    response_limit: usize,
    lock_ttl: Duration,
    retention: Duration,
    in_flight: InFlight,
    fail_open: bool,
    should_store: fn(StatusCode) -> bool,
    key_from: Option<KeyFn>,
    scope: Option<ScopeFn>,
}

impl ServerIdempotencyLayer {
    /// A layer for POST and PATCH with its own [`MemoryStore`] (one process; use the Redis store
    /// for several), keys optional, 409 for a key in flight, 24 h retention, 30 s lock.
    #[must_use]
    pub fn new() -> Self {
        ServerIdempotencyLayer {
            config: Config {
                store: Arc::new(MemoryStore::new()),
                metrics: Metrics::new(),
                methods: vec![Method::POST, Method::PATCH],
                require_key: false,
                max_key_len: DEFAULT_MAX_KEY_LEN,
                body_limit: DEFAULT_REPLAY_LIMIT,
                response_limit: DEFAULT_REPLAY_LIMIT,
                lock_ttl: DEFAULT_SERVER_LOCK_TTL,
                retention: DEFAULT_RETENTION,
                in_flight: InFlight::Reject,
                fail_open: false,
                should_store,
                key_from: None,
                scope: None,
            },
        }
    }

    /// The store (an `Arc<dyn IdempotencyStore>` is accepted too). Every service made by this
    /// layer shares it; servers behind one load balancer share a Redis store.
    #[must_use]
    pub fn store(mut self, store: impl IdempotencyStore) -> Self {
        self.config.store = Arc::new(store);
        self
    }

    /// Counters to feed: replays, and waits that ended in a replay (joins).
    #[must_use]
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.config.metrics = metrics;
        self
    }

    /// The methods the layer guards (default POST and PATCH); other requests pass through.
    #[must_use]
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.config.methods = methods.into_iter().collect();
        self
    }

    /// Whether a guarded request without a key is refused with 400 (default: no, it passes
    /// through unguarded).
    #[must_use]
    pub fn require_key(mut self, require: bool) -> Self {
        self.config.require_key = require;
        self
    }

    /// The longest key accepted, in characters (default 255); longer keys get 400.
    #[must_use]
    pub fn max_key_len(mut self, len: usize) -> Self {
        self.config.max_key_len = len;
        self
    }

    /// The largest request body read to fingerprint it (default 1 MiB); larger ones get 413.
    #[must_use]
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.config.body_limit = bytes;
        self
    }

    /// The largest response body stored (default 1 MiB); see the [module docs](self).
    #[must_use]
    pub fn response_limit(mut self, bytes: usize) -> Self {
        self.config.response_limit = bytes;
        self
    }

    /// How long a key stays locked by a request that has not finished (default 30 s).
    #[must_use]
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.config.lock_ttl = ttl;
        self
    }

    /// How long responses are kept for replay (default 24 hours).
    #[must_use]
    pub fn retention(mut self, retention: Duration) -> Self {
        self.config.retention = retention;
        self
    }

    /// Instead of answering 409 at once, a request that finds its key in flight waits up to
    /// `timeout` for the first one and answers with its response (409 if it has not finished by
    /// then). If the first one ends without a stored response, the waiter runs the handler
    /// itself.
    #[must_use]
    pub fn wait_in_flight(mut self, timeout: Duration) -> Self {
        self.config.in_flight = InFlight::Wait(timeout);
        self
    }

    /// Whether the handler is called, without idempotency, when the store cannot be reached
    /// (default: no, such requests get 503). Failing open keeps a service up through a store
    /// outage at the price of possible duplicates.
    #[must_use]
    pub fn fail_open(mut self, fail_open: bool) -> Self {
        self.config.fail_open = fail_open;
        self
    }

    /// Which responses are stored (default [`should_store`]). Responses not stored release the
    /// key, so a repeat runs the handler again.
    #[must_use]
    pub fn store_if(mut self, rule: fn(StatusCode) -> bool) -> Self {
        self.config.should_store = rule;
        self
    }

    /// Where else to find the key when the `Idempotency-Key` header is absent: `f` gets the
    /// request head and its body (read in full), for APIs that carry the key in the body.
    ///
    /// ```
    /// use genesys_tower::idempotency::server::ServerIdempotencyLayer;
    ///
    /// let layer = ServerIdempotencyLayer::new().key_from(|_head, body| {
    ///     let json: serde_json::Value = serde_json::from_slice(body).ok()?;
    ///     Some(json.get("idempotency_key")?.as_str()?.to_owned())
    /// });
    /// # drop(layer);
    /// ```
    #[must_use]
    pub fn key_from(
        mut self,
        f: impl Fn(&Parts, &Bytes) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.config.key_from = Some(Arc::new(f));
        self
    }

    /// Keys live in the namespace `f` returns for a request (the authenticated client, say), so
    /// that two clients who pick the same key never see each other's responses.
    #[must_use]
    pub fn scope(mut self, f: impl Fn(&Parts) -> Option<String> + Send + Sync + 'static) -> Self {
        self.config.scope = Some(Arc::new(f));
        self
    }
}

impl Default for ServerIdempotencyLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for ServerIdempotencyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        f.debug_struct("ServerIdempotencyLayer")
            .field("methods", &c.methods)
            .field("require_key", &c.require_key)
            .field("max_key_len", &c.max_key_len)
            .field("lock_ttl", &c.lock_ttl)
            .field("retention", &c.retention)
            .field("in_flight", &c.in_flight)
            .field("fail_open", &c.fail_open)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for ServerIdempotencyLayer {
    type Service = ServerIdempotency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerIdempotency {
            inner,
            config: Arc::new(self.config.clone()),
        }
    }
}

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

/// The future of [`ServerIdempotency`].
pub struct ResponseFuture<E> {
    inner: Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>,
}

impl<E> Future for ResponseFuture<E> {
    type Output = Result<Response<Body>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<E> fmt::Debug for ResponseFuture<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
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
    type Future = ResponseFuture<S::Error>;

    /// Always ready: requests answered by the layer (replays, refusals) never reach the inner
    /// service, so its readiness is awaited in the call, only when the handler runs.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let inner = self.inner.clone();
        let config = self.config.clone();
        ResponseFuture {
            inner: Box::pin(handle(config, inner, req)),
        }
    }
}

async fn handle<S, ReqB, ResB>(
    config: Arc<Config>,
    inner: S,
    req: Request<ReqB>,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send,
    ReqB: http_body::Body<Data = Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    if !config.methods.contains(req.method()) {
        return call(inner, req.map(Body::new)).await;
    }
    let (mut parts, body) = req.into_parts();
    let mut keys = parts.headers.get_all(IDEMPOTENCY_KEY).iter();
    let (first, second) = (keys.next(), keys.next());
    if second.is_some() {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            "idempotency_key_invalid",
            "send one Idempotency-Key header, not several".to_owned(),
        ));
    }
    let header_key = match first.map(HeaderValue::to_str) {
        None => None,
        Some(Ok(text)) => Some(text.to_owned()),
        Some(Err(_)) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "idempotency_key_invalid",
                "the Idempotency-Key must be visible ASCII (a UUID is a good key)".to_owned(),
            ));
        }
    };
    if header_key.is_none() && config.key_from.is_none() {
        if config.require_key {
            return Ok(missing_key(&parts.method));
        }
        return call(inner, Request::from_parts(parts, Body::new(body))).await;
    }

    let body = match Body::new(body).buffer(config.body_limit).await {
        Ok(body) => body,
        Err(e) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                "request_body_unreadable",
                format!("the request body could not be read: {e}"),
            ));
        }
    };
    // A body that arrived whole may be past the limit too: the limit is the endpoint's promise.
    let within_limit = body.as_bytes().filter(|b| b.len() <= config.body_limit);
    let Some(bytes) = within_limit.cloned() else {
        if header_key.is_none() && !config.require_key {
            // No key in the header, and the body is too large to look for one: not guarded.
            return call(inner, Request::from_parts(parts, body)).await;
        }
        return Ok(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_body_too_large",
            format!(
                "the request body is larger than {} bytes, the most this endpoint reads for an \
                 idempotent request",
                config.body_limit
            ),
        ));
    };
    let key = header_key.or_else(|| config.key_from.as_ref().and_then(|f| f(&parts, &bytes)));
    let Some(key) = key else {
        if config.require_key {
            return Ok(missing_key(&parts.method));
        }
        return call(inner, Request::from_parts(parts, Body::from_bytes(bytes))).await;
    };
    if key.is_empty() || key.chars().count() > config.max_key_len {
        return Ok(error(
            StatusCode::BAD_REQUEST,
            "idempotency_key_invalid",
            format!(
                "the Idempotency-Key must be 1 to {} characters long",
                config.max_key_len
            ),
        ));
    }

    let fingerprint = Fingerprint::of(&parts.method, &parts.uri, &bytes);
    let store_key = match config.scope.as_ref().and_then(|f| f(&parts)) {
        // Length-prefixed so that no scope and key pair can spell another.
        Some(scope) => format!("{}:{scope}:{key}", scope.len()),
        None => key.clone(),
    };
    parts.extensions.insert(IdempotencyKey::new(key.clone()));
    let request = Request::from_parts(parts, Body::from_bytes(bytes));

    let deadline = match config.in_flight {
        InFlight::Wait(timeout) => Some(crate::time::from_now(timeout)),
        InFlight::Reject => None,
    };
    let mut waited = false;
    loop {
        let claim = match config
            .store
            .claim(&store_key, fingerprint, config.lock_ttl)
            .await
        {
            Ok(claim) => claim,
            Err(e) => return store_failed(&config, inner, request, e).await,
        };
        match claim {
            Claim::Acquired(token) => {
                let response = call(inner, request).await;
                let response = match response {
                    Ok(response) => response,
                    Err(e) => {
                        release(&config, &store_key, &token).await;
                        return Err(e);
                    }
                };
                let (head, body) = response.into_parts();
                let body = match body.buffer(config.response_limit).await {
                    Ok(body) => body,
                    Err(e) => {
                        // The handler's body failed: pass the failure on, remember nothing.
                        release(&config, &store_key, &token).await;
                        return Ok(Response::from_parts(head, failed_body(e)));
                    }
                };
                // A body already in memory may exceed the limit too: the limit bounds the store.
                let bytes = body.as_bytes().filter(|b| b.len() <= config.response_limit);
                match bytes {
                    Some(bytes) if (config.should_store)(head.status) => {
                        let stored =
                            StoredResponse::new(head.status, head.headers.clone(), bytes.clone());
                        match config
                            .store
                            .complete(&store_key, &token, stored, config.retention)
                            .await
                        {
                            Ok(true) => {}
                            Ok(false) => tracing::warn!(
                                "idempotency lock expired while the handler ran; response not \
                                 stored (raise lock_ttl above the slowest handler)"
                            ),
                            Err(e) => tracing::warn!(error = %e, "response not stored"),
                        }
                    }
                    Some(_) => release(&config, &store_key, &token).await,
                    None => {
                        tracing::warn!(
                            limit = config.response_limit,
                            "response too large to store; a repeat will run the handler again"
                        );
                        release(&config, &store_key, &token).await;
                    }
                }
                return Ok(Response::from_parts(head, body));
            }
            Claim::Completed(stored) => {
                tracing::debug!(status = %stored.status(), waited, "idempotent replay");
                if waited {
                    config.metrics.record_idempotent_join();
                } else {
                    config.metrics.record_idempotent_replay();
                }
                return Ok(stored.to_replay());
            }
            Claim::Mismatch => {
                tracing::debug!("idempotency key reused with another payload: 422");
                return Ok(error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this Idempotency-Key was already used for a different request (method, \
                     path or body differ): use a new key for a new operation"
                        .to_owned(),
                ));
            }
            Claim::InFlight => {
                let now = Instant::now();
                match deadline {
                    Some(deadline) if now < deadline => {
                        waited = true;
                        if let Err(e) = config.store.wait(&store_key, deadline - now).await {
                            return store_failed(&config, inner, request, e).await;
                        }
                    }
                    _ => {
                        tracing::debug!("idempotency key in flight: 409");
                        let mut response = error(
                            StatusCode::CONFLICT,
                            "idempotency_request_in_progress",
                            "a request with this Idempotency-Key is still being processed: \
                             retry later with the same key to get its response"
                                .to_owned(),
                        );
                        response
                            .headers_mut()
                            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                        return Ok(response);
                    }
                }
            }
        }
    }
}

async fn call<S, ResB>(inner: S, req: Request<Body>) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<ResB>>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    Ok(inner.oneshot(req).await?.map(Body::new))
}

async fn store_failed<S, ResB>(
    config: &Config,
    inner: S,
    request: Request<Body>,
    e: StoreError,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<ResB>>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    if config.fail_open {
        tracing::warn!(error = %e, "idempotency store failed; handling the request without it");
        return call(inner, request).await;
    }
    tracing::error!(error = %e, "idempotency store failed; request refused");
    Ok(error(
        StatusCode::SERVICE_UNAVAILABLE,
        "idempotency_store_unavailable",
        format!("{e}; the request was not processed: retry later with the same key"),
    ))
}

async fn release(config: &Config, key: &str, token: &super::ClaimToken) {
    if let Err(e) = config.store.release(key, token).await {
        // The lock will expire on its own.
        tracing::warn!(error = %e, "idempotency key not released");
    }
}

fn failed_body(e: BoxError) -> Body {
    let frames = futures_util::stream::iter([Err::<http_body::Frame<Bytes>, BoxError>(e)]);
    Body::new(http_body_util::StreamBody::new(frames))
}

fn missing_key(method: &Method) -> Response<Body> {
    error(
        StatusCode::BAD_REQUEST,
        "idempotency_key_missing",
        format!(
            "this endpoint requires an Idempotency-Key header on {method} requests: send a \
             unique key (a UUID) per operation, and the same key when you retry it"
        ),
    )
}

fn error(status: StatusCode, code: &str, message: String) -> Response<Body> {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
