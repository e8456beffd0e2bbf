//! The client-side layer: a stable key per logical call, replay, and joining calls in flight.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

use super::store::{Claim, ClaimOptions, ClaimToken, IdempotencyStore, StoreError, StoredResponse};
use super::{Fingerprint, IDEMPOTENCY_KEY, IdempotencyKey, MemoryStore};
use crate::body::{DEFAULT_REPLAY_LIMIT, ReplayBody, rebuild, rebuild_response};
use crate::{Body, BoxError, Metrics};

/// The default lease of a client call's claim on its key: 5 minutes. It is renewed while the
/// call runs; a claim whose process died with it is taken over by another call with the key
/// once it ends.
pub const DEFAULT_CLIENT_LOCK_TTL: Duration = Duration::from_secs(5 * 60);

/// How long completed responses are kept by default: 24 hours.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// Gives every POST and PATCH a stable `Idempotency-Key`, answers repeats from a store, and
/// collapses concurrent calls with the same key into one. See the [module docs](super).
///
/// ```
/// use genesys_tower::idempotency::IdempotencyLayer;
/// use genesys_tower::{Body, BoxError, Metrics};
/// use http::{Request, Response};
/// use tower::{ServiceBuilder, ServiceExt, service_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), BoxError> {
/// let metrics = Metrics::new();
/// let svc = ServiceBuilder::new()
///     .layer(IdempotencyLayer::new().metrics(metrics.clone()))
///     .service(service_fn(|req: Request<Body>| async move {
///         let key = req.headers()["idempotency-key"].to_str()?.to_owned();
///         Ok::<_, BoxError>(Response::new(Body::from(format!("created with {key}"))))
///     }));
///
/// let request = || Request::post("/orders")
///     .extension(genesys_tower::idempotency::IdempotencyKey::new("order-42"))
///     .body(Body::from("{\"qty\":1}"))
///     .unwrap();
/// let first = svc.clone().oneshot(request()).await?;
/// let again = svc.oneshot(request()).await?;
/// assert_eq!(again.headers()["idempotent-replayed"], "true");
/// assert_eq!(again.into_body().collect_bytes().await?, "created with order-42");
/// assert_eq!(metrics.snapshot().idempotent_replays, 1);
/// # drop(first);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct IdempotencyLayer {
    config: Config,
}

#[derive(Clone)]
pub(crate) struct Config {
    store: Arc<dyn IdempotencyStore>,
    metrics: Metrics,
    methods: Vec<Method>,
    body_limit: usize,
    response_limit: usize,
    lock_ttl: Duration,
    retention: Duration,
}

impl IdempotencyLayer {
    /// A layer for POST and PATCH with its own [`MemoryStore`], shared by every service it makes.
    #[must_use]
    pub fn new() -> Self {
        IdempotencyLayer {
            config: Config {
                store: Arc::new(MemoryStore::new()),
                metrics: Metrics::new(),
                methods: vec![Method::POST, Method::PATCH],
                body_limit: DEFAULT_REPLAY_LIMIT,
                response_limit: DEFAULT_REPLAY_LIMIT,
                lock_ttl: DEFAULT_CLIENT_LOCK_TTL,
                retention: DEFAULT_RETENTION,
            },
        }
    }

    /// The store for keys and responses (an `Arc<dyn IdempotencyStore>` is accepted too).
    #[must_use]
    pub fn store(mut self, store: impl IdempotencyStore) -> Self {
        self.config.store = Arc::new(store);
        self
    }

    /// Counters to feed: replays and joins.
    #[must_use]
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.config.metrics = metrics;
        self
    }

    /// The counters this layer feeds (its own unless [`metrics`](Self::metrics) gave others).
    #[must_use]
    pub fn metrics_handle(&self) -> &Metrics {
        &self.config.metrics
    }

    /// The methods that get a key when the caller gave none (default: POST and PATCH). A request
    /// whose caller supplied a key is handled whatever its method.
    #[must_use]
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.config.methods = methods.into_iter().collect();
        self
    }

    /// How much of a streaming request body is read to fingerprint it (default 1 MiB). A larger
    /// body is sent once with its key, but not fingerprinted, stored or joined.
    #[must_use]
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.config.body_limit = bytes;
        self
    }

    /// How much of a response body is read to store it (default 1 MiB). A larger response is
    /// passed to the caller as it streams, and not stored: a repeat calls the service again (with
    /// the same key).
    #[must_use]
    pub fn response_limit(mut self, bytes: usize) -> Self {
        self.config.response_limit = bytes;
        self
    }

    /// The lease of a call's claim on its key (default [`DEFAULT_CLIENT_LOCK_TTL`]): renewed every
    /// third of it while the call runs, so that another call with the key waits for this one
    /// however long it takes (bound calls with a timeout, as the client's stack does, so that
    /// one that hangs does not hold its repeats for ever); a claim whose process died with it is
    /// taken over one lease later. With a store shared over the network, keep the lease long
    /// enough for a renewal to get through (the client's configuration asks for 10 s at least).
    /// The key is released at once when a call ends without a final response, or is dropped.
    #[must_use]
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.config.lock_ttl = ttl;
        self
    }

    /// How long final responses are kept for replay (default 24 hours).
    #[must_use]
    pub fn retention(mut self, retention: Duration) -> Self {
        self.config.retention = retention;
        self
    }
}

impl Default for IdempotencyLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for IdempotencyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("methods", &self.config.methods)
            .field("body_limit", &self.config.body_limit)
            .field("response_limit", &self.config.response_limit)
            .field("lock_ttl", &self.config.lock_ttl)
            .field("retention", &self.config.retention)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = Idempotency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency {
            inner,
            config: Arc::new(self.config.clone()),
        }
    }
}

/// The service made by [`IdempotencyLayer`].
#[derive(Clone)]
pub struct Idempotency<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> Idempotency<S> {
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

impl<S: fmt::Debug> fmt::Debug for Idempotency<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

pub use super::future::ResponseFuture;

impl<S, ReqB, ResB> Service<Request<ReqB>> for Idempotency<S>
where
    // First, so that a body the layer cannot replay is named in the compiler's error.
    ReqB: ReplayBody,
    ResB: ReplayBody,
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResB>;
    type Error = BoxError;
    type Future = ResponseFuture<S, ReqB>;

    /// Always ready: most calls answered from the store or joined to another never reach the
    /// inner service, so its readiness is awaited in the call, only when the request is sent.
    /// No capacity below (a concurrency permit, say) is held while a call waits for another, or
    /// between calls.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        match route(&self.config, &mut req) {
            // A request the layer leaves alone (a GET without a key) goes through in a future
            // of its own, a fraction of the size of the keyed path's, on the layer's own
            // instance of the service below when that is ready at once (see
            // `ResponseFuture::direct`); so does one with a key of the layer's own.
            Route::Pass => ResponseFuture::direct(&mut self.inner, req, None),
            Route::Generated(key) => ResponseFuture::direct(&mut self.inner, req, Some(key)),
            Route::Keyed => {
                let config = self.config.clone();
                ResponseFuture::keyed(run(config, self.inner.clone(), req))
            }
        }
    }
}

/// What the layer does with a request.
pub(crate) enum Route {
    /// Nothing: not a guarded method, and no key from the caller.
    Pass,
    /// A key of the layer's own, already in the request's `Idempotency-Key` header; the
    /// response names it (as an extension).
    Generated(IdempotencyKey),
    /// The caller's key: claimed in the store, joined or replayed.
    Keyed,
}

/// Decides what the layer does with `req`, and puts a key of the layer's own in it when it
/// makes one.
pub(crate) fn route<B>(config: &Config, req: &mut Request<B>) -> Route {
    // A head without headers (many a GET) is not hashed to look for one.
    let callers_key = req.extensions().get::<IdempotencyKey>().is_some()
        || (!req.headers().is_empty() && req.headers().contains_key(IDEMPOTENCY_KEY));
    if callers_key {
        return Route::Keyed;
    }
    if !config.methods.contains(req.method()) {
        return Route::Pass;
    }
    // A key of the layer's own: no other call can carry it before this one's response names
    // it, so there is nothing to look up, join or store. It only has to be the same on every
    // attempt below.
    // The header is what goes to the server and what the layers below read; the key goes on
    // the response alone, so that every copy of the request head below (a retry layer's, an
    // auth layer's) has no extension map to copy for it.
    let key = IdempotencyKey::new(generated_key());
    if let Ok(value) = HeaderValue::from_str(key.as_str()) {
        req.headers_mut().insert(IDEMPOTENCY_KEY, value);
    }
    Route::Generated(key)
}

impl<S> Idempotency<S> {
    /// The layer's service from its parts (for [`Stack`](crate::stack::Stack)).
    #[cfg(all(feature = "retry", feature = "auth"))]
    pub(crate) fn from_parts(inner: S, config: Arc<Config>) -> Self {
        Idempotency { inner, config }
    }
}

impl IdempotencyLayer {
    /// The layer's configuration, as its services share it.
    #[cfg(all(feature = "retry", feature = "auth"))]
    pub(crate) fn shared_config(&self) -> Arc<Config> {
        Arc::new(self.config.clone())
    }
}

/// Errors of the client-side [`IdempotencyLayer`] itself (errors of the inner service pass
/// through as they are).
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The key was already used for a different request (method, path or body differ). Nothing
    /// was sent.
    KeyReused {
        /// The key.
        key: String,
    },
    /// The key cannot be sent as a header value.
    InvalidKey {
        /// Why.
        reason: &'static str,
    },
    /// The store failed; nothing was sent.
    Store(StoreError),
    /// The request body could not be read; nothing was sent.
    Body(BoxError),
    /// The store cannot tell whether an earlier call with this key did its work (that call's
    /// claim was abandoned, or the store lost its records), and the request is not marked as
    /// one whose target deduplicates by key. Nothing was sent.
    OutcomeUnknown {
        /// The key.
        key: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::KeyReused { key } => write!(
                f,
                "idempotency key {key:?} was already used for a different request (method, path \
                 or body differ); nothing was sent: use a new key for a new operation"
            ),
            Error::InvalidKey { reason } => write!(f, "invalid idempotency key: {reason}"),
            Error::Store(e) => write!(f, "{e}; nothing was sent"),
            Error::Body(e) => write!(f, "could not read the request body to fingerprint it: {e}"),
            Error::OutcomeUnknown { key } => write!(
                f,
                "the idempotency store cannot tell whether an earlier call with key {key:?} did \
                 its work (its claim was abandoned, or the store lost its records), so the \
                 outcome is unknown; nothing was sent. Check the resource's state before sending \
                 it again; a target that deduplicates by key may take it as it is: mark the \
                 request RetrySafety::KeyHonoured to send it with its key"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Store(e) => Some(e),
            Error::Body(e) => Some(&**e),
            _ => None,
        }
    }
}

/// Whether the client layer stores a response: 2xx, and 4xx other than 401, 403, 408, 409 and
/// 429 (a refused credential, a transient answer; 3xx and 5xx are transient or incomplete too:
/// the next call with the key goes to the server).
#[must_use]
pub fn is_final(status: StatusCode) -> bool {
    status.is_success()
        || (status.is_client_error()
            && !matches!(
                status,
                StatusCode::UNAUTHORIZED
                    | StatusCode::FORBIDDEN
                    | StatusCode::REQUEST_TIMEOUT
                    | StatusCode::CONFLICT
                    | StatusCode::TOO_MANY_REQUESTS
            ))
}

/// Whether the request is marked as one whose target deduplicates by `Idempotency-Key`.
fn key_honoured(parts: &http::request::Parts) -> bool {
    #[cfg(feature = "retry")]
    {
        parts.extensions.get::<crate::retry::RetrySafety>()
            == Some(&crate::retry::RetrySafety::KeyHonoured)
    }
    #[cfg(not(feature = "retry"))]
    {
        let _ = parts;
        false
    }
}

fn caller_key<B>(req: &Request<B>) -> Result<Option<String>, Error> {
    let key = if let Some(key) = req.extensions().get::<IdempotencyKey>() {
        Some(key.as_str().to_owned())
    } else if let Some(value) = req.headers().get(IDEMPOTENCY_KEY) {
        let text = value.to_str().map_err(|_| Error::InvalidKey {
            reason: "the Idempotency-Key header is not visible ASCII",
        })?;
        Some(text.to_owned())
    } else {
        None
    };
    if key.as_deref() == Some("") {
        return Err(Error::InvalidKey {
            reason: "the key is empty",
        });
    }
    Ok(key)
}

async fn run<S, ReqB, ResB>(
    config: Arc<Config>,
    inner: S,
    req: Request<ReqB>,
) -> Result<Response<ResB>, BoxError>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqB: ReplayBody,
    ResB: ReplayBody,
{
    // `call` sends requests without a caller's key directly.
    let Some(key) = caller_key(&req)? else {
        return send(inner, req).await;
    };
    let value = HeaderValue::from_str(&key).map_err(|_| Error::InvalidKey {
        reason: "the key is not a valid header value (use visible ASCII)",
    })?;
    let (mut parts, body) = req.into_parts();
    // Set once here, above any retry: every attempt below carries the same key.
    parts.headers.insert(IDEMPOTENCY_KEY, value);
    parts.extensions.insert(IdempotencyKey::new(key.clone()));

    let body = body
        .into_replay()
        .buffer(config.body_limit)
        .await
        .map_err(Error::Body)?;
    let Some(bytes) = body.as_bytes().cloned() else {
        tracing::debug!(
            limit = config.body_limit,
            "request body too large to fingerprint: sent with its idempotency key, not stored"
        );
        let body = rebuild::<ReqB>(body)?;
        let response = send(inner, Request::from_parts(parts, body)).await?;
        return Ok(with_key(response, &key));
    };
    let fingerprint = Fingerprint::of(&parts.method, &parts.uri, &bytes);

    let mut joined = false;
    loop {
        let claim = config
            .store
            .claim(&key, fingerprint, config.lock_ttl.into())
            .await
            .map_err(Error::Store)?;
        match claim {
            Claim::Completed(stored) => {
                if joined {
                    config.metrics.record_idempotent_join();
                } else {
                    config.metrics.record_idempotent_replay();
                }
                tracing::debug!(status = %stored.status(), joined, "idempotent replay");
                let (head, body) = stored.to_replay().into_parts();
                let body = rebuild_response::<ResB>(body)?;
                return Ok(with_key(Response::from_parts(head, body), &key));
            }
            Claim::Mismatch => return Err(Error::KeyReused { key }.into()),
            Claim::Abandoned | Claim::Lost | Claim::Evicted => {
                // The store cannot tell whether this key was sent before (a claim held past its
                // owner, or records lost), or knows it was and has no response to give back. A
                // target that deduplicates by key can: a request marked so is sent with its
                // key, without a claim here. Any other might do its work twice (a data action
                // does not deduplicate): nothing is sent.
                if !key_honoured(&parts) {
                    return Err(Error::OutcomeUnknown { key }.into());
                }
                tracing::warn!("idempotency store cannot vouch for this key: sent unclaimed");
                let body = rebuild::<ReqB>(Body::from_bytes(bytes))?;
                let response = send(inner, Request::from_parts(parts, body)).await?;
                return Ok(with_key(response, &key));
            }
            Claim::InFlight => {
                // Another call with this key is running: wait for its outcome, then look again
                // (its response, or the key itself when it ended without a final response).
                joined = true;
                config
                    .store
                    .wait(&key, config.lock_ttl)
                    .await
                    .map_err(Error::Store)?;
            }
            Claim::Acquired(token) => {
                let mut guard = ReleaseOnDrop {
                    store: config.store.clone(),
                    key: key.clone(),
                    token: Some(token),
                    answer: None,
                };
                let work = async {
                    let body = rebuild::<ReqB>(Body::from_bytes(bytes))?;
                    let request = Request::from_parts(parts, body);
                    let (head, body) = send(inner, request).await?.into_parts();
                    let body = body.into_replay().buffer(config.response_limit).await?;
                    Ok::<_, BoxError>((head, body))
                };
                // The lease is renewed while the call runs (its retries, their waits, a token
                // fetch), so that a repeat waits for it however long it takes: `lock_ttl` is how
                // long a claim outlives a process that died with it, not the longest call.
                let period = (config.lock_ttl / 3).max(Duration::from_millis(10));
                let token = guard.token.clone().expect("the token is set until settled");
                // Each renewal within the period, so that one lost to a slow store does not
                // hold up the next.
                let renew = || async {
                    let renewal =
                        config
                            .store
                            .renew(&key, &token, ClaimOptions::new(config.lock_ttl));
                    tokio::time::timeout(period, renewal)
                        .await
                        .unwrap_or_else(|_| {
                            Err(StoreError::new(format!(
                                "no answer within {period:?} (a third of lock_ttl)"
                            )))
                        })
                };
                let outcome = super::store::renewing(period, renew, work).await;
                // Settled below; a drop while the store is asked (a round trip to Redis) still
                // settles, in the background, as `ReleaseOnDrop` says.
                let (head, body) = match outcome {
                    Ok(response) => response,
                    Err(e) => {
                        // No outcome: the next call with this key must reach the service.
                        if let Err(e) = config.store.release(&key, &token).await {
                            tracing::warn!(error = %e, "idempotency key not released");
                        }
                        guard.token = None;
                        return Err(e);
                    }
                };
                match body.as_bytes() {
                    Some(bytes)
                        if is_final(head.status) && bytes.len() <= config.response_limit =>
                    {
                        let stored =
                            StoredResponse::new(head.status, head.headers.clone(), bytes.clone());
                        guard.answer = Some((stored.clone(), config.retention));
                        let completed = config
                            .store
                            .complete(&key, &token, stored, config.retention)
                            .await;
                        guard.token = None;
                        match completed {
                            Ok(true) => {}
                            Ok(false) => tracing::warn!(
                                "idempotency claim lost before the response arrived (its lease \
                                 was not renewed in time); not stored"
                            ),
                            // The response is real: hand it over even if it cannot be remembered.
                            Err(e) => tracing::warn!(error = %e, "response not stored"),
                        }
                    }
                    _ => {
                        if let Err(e) = config.store.release(&key, &token).await {
                            tracing::warn!(error = %e, "idempotency key not released");
                        }
                        guard.token = None;
                    }
                }
                let body = rebuild_response::<ResB>(body)?;
                return Ok(with_key(Response::from_parts(head, body), &key));
            }
        }
    }
}

async fn send<S, ReqB, ResB>(inner: S, req: Request<ReqB>) -> Result<Response<ResB>, BoxError>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: Into<BoxError>,
{
    inner.oneshot(req).await.map_err(Into::into)
}

/// A new UUID v4 from a per-thread generator seeded by the OS (ChaCha, so keys are neither
/// guessable nor repeated), without a system call per key.
pub(super) fn generated_key() -> String {
    use std::cell::RefCell;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    thread_local! {
        static KEYS: RefCell<Option<StdRng>> = RefCell::new(StdRng::try_from_os_rng().ok());
    }
    let bytes = KEYS.with(|rng| {
        rng.borrow_mut()
            .as_mut()
            .map(|rng| rng.random::<[u8; 16]>())
    });
    let uuid = match bytes {
        Some(bytes) => uuid::Builder::from_random_bytes(bytes).into_uuid(),
        // The OS gave no seed to this thread: ask it per key.
        None => uuid::Uuid::new_v4(),
    };
    // Written into a buffer on the stack, then copied once: no formatting machinery per key.
    let mut buf = uuid::Uuid::encode_buffer();
    uuid.hyphenated().encode_lower(&mut buf).to_owned()
}

fn with_key<B>(mut response: Response<B>, key: &str) -> Response<B> {
    response
        .extensions_mut()
        .insert(IdempotencyKey::new(key.to_owned()));
    response
}

/// Releases a claim whose call ended without an outcome (an error, or the caller dropped the
/// future), so that the next call with the key is not kept waiting until the lock expires.
struct ReleaseOnDrop {
    store: Arc<dyn IdempotencyStore>,
    key: String,
    /// Set until the claim is settled.
    token: Option<ClaimToken>,
    /// The answer being stored, when the drop comes while the store is asked: stored then.
    answer: Option<(StoredResponse, Duration)>,
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        let Some(token) = self.token.take() else {
            return;
        };
        let store = self.store.clone();
        let key = std::mem::take(&mut self.key);
        let answer = self.answer.take();
        // Without a runtime the lock simply expires.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let settled = match answer {
                    // The answer came: keep it, so that a repeat gets it rather than a new run.
                    Some((stored, retention)) => store
                        .complete(&key, &token, stored, retention)
                        .await
                        .map(drop),
                    None => store.release(&key, &token).await,
                };
                if let Err(e) = settled {
                    tracing::warn!(error = %e, "idempotency key not settled");
                }
            });
        }
    }
}
