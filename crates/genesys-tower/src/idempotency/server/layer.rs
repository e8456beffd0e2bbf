//! [`ServerIdempotencyLayer`] and its configuration.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::request::Parts;
use http::{Method, StatusCode};
use tokio::sync::Semaphore;
use tower_layer::Layer;

use super::super::client::DEFAULT_RETENTION;
use super::super::{IdempotencyStore, MemoryStore};
use super::{ServerIdempotency, should_store};
use crate::Metrics;
use crate::body::DEFAULT_REPLAY_LIMIT;

/// The default lease of a claim: renewed every 10 s while the handler runs, so a claim whose
/// process died ends within 30 s.
pub const DEFAULT_SERVER_LOCK_TTL: Duration = Duration::from_secs(30);

/// The default store timeout: a store call that has not answered in 2 s fails.
pub const DEFAULT_STORE_TIMEOUT: Duration = Duration::from_secs(2);

/// How many answers may wait in the background for a store that could not be reached.
const PENDING_ANSWERS: usize = 256;

/// The default longest key: 255 characters, as Stripe.
pub const DEFAULT_MAX_KEY_LEN: usize = 255;

type KeyFn = Arc<dyn Fn(&Parts, &Bytes) -> Option<String> + Send + Sync>;
type ScopeFn = Arc<dyn Fn(&Parts) -> Option<String> + Send + Sync>;

/// What a request does when it finds its key in flight.
#[derive(Debug, Clone, Copy)]
pub(super) enum InFlight {
    Reject,
    Wait(Duration),
}

/// Server-side idempotency for axum and any tower HTTP server. See the [module docs](super).
#[derive(Clone)]
pub struct ServerIdempotencyLayer {
    pub(super) config: Config,
}

#[derive(Clone)]
pub(super) struct Config {
    pub(super) store: Arc<dyn IdempotencyStore>,
    pub(super) metrics: Metrics,
    pub(super) methods: Vec<Method>,
    pub(super) require_key: bool,
    pub(super) max_key_len: usize,
    pub(super) body_limit: usize,
    pub(super) response_limit: usize,
    pub(super) lock_ttl: Duration,
    pub(super) retention: Duration,
    pub(super) in_flight: InFlight,
    pub(super) fail_open: bool,
    pub(super) store_timeout: Duration,
    pub(super) rerun_abandoned: bool,
    /// Bounds the answers kept in memory while the store is unreachable.
    pub(super) pending: Arc<Semaphore>,
    pub(super) should_store: fn(StatusCode) -> bool,
    pub(super) key_from: Option<KeyFn>,
    pub(super) scope: Option<ScopeFn>,
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
                store_timeout: DEFAULT_STORE_TIMEOUT,
                rerun_abandoned: false,
                pending: Arc::new(Semaphore::new(PENDING_ANSWERS)),
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

    /// The largest response body stored (default 1 MiB); see the [module docs](super).
    #[must_use]
    pub fn response_limit(mut self, bytes: usize) -> Self {
        self.config.response_limit = bytes;
        self
    }

    /// The lease of a claim (default 30 s): the layer renews it every third of it while the
    /// handler runs, so the lease bounds how long a key stays in flight after its process died
    /// or lost the store, not how long a handler may run.
    #[must_use]
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.config.lock_ttl = ttl;
        self
    }

    /// How long a store call may take (default 2 s) before the request gets 503. A claim that
    /// reaches the store after half this time (a Redis that was paused) locks nothing.
    #[must_use]
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.config.store_timeout = timeout;
        self
    }

    /// Whether a key whose claim was abandoned (its process died, hung or lost the store while
    /// the handler ran, or the handler failed without an answer, and no response was stored)
    /// runs again once the claim's lease ends (default: no). By default it is held until the
    /// retention ends, and repeats get 409 `idempotency_outcome_unknown`, because the first run
    /// may have had its effect. Say yes only for handlers that are safe to run twice.
    #[must_use]
    pub fn rerun_abandoned(mut self, rerun: bool) -> Self {
        self.config.rerun_abandoned = rerun;
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
    /// that two clients who pick the same key never see each other's responses. Requests for
    /// which `f` returns `None` share one namespace of their own, apart from every client's.
    ///
    /// Set it on any service with more than one caller. Without it every caller shares one
    /// namespace: a caller who sends another's key with the same request is answered with the
    /// other's stored response, headers and body included (a secret it returned, a cookie it
    /// set). Name the caller by what stays the same across its retries, its client id or
    /// account, not by its bearer token: a token refreshed between two attempts would
    /// otherwise put the retry in another namespace, where the handler runs again.
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
            .field("store_timeout", &c.store_timeout)
            .field("rerun_abandoned", &c.rerun_abandoned)
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
