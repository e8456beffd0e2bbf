//! Idempotency keys stable across retries, a response store, and the server-side twin.
//!
//! # Why
//!
//! A POST that timed out may or may not have reached the server. Sending it again is safe only
//! if the server can tell the second copy from a new request: the `Idempotency-Key` header (IETF
//! draft "The Idempotency-Key HTTP Header Field") names one logical operation, and a server that
//! honours it answers every copy with the first copy's response. Two halves make that work:
//!
//! - the **client** must give each logical call one key and keep it on every retry:
//!   [`IdempotencyLayer`], the outermost layer of the client stack;
//! - the **server** must remember keys and responses, across processes if it runs several:
//!   [`server::ServerIdempotencyLayer`], for axum and any tower HTTP server.
//!
//! A client-side key alone does not make a call exactly-once: only a server that deduplicates by
//! key does. The client layer still helps on its own: repeats from the caller (a user
//! double-clicking, a job re-run) are answered from its store and never sent.
//!
//! # The client layer
//!
//! [`IdempotencyLayer`] handles POST and PATCH (configurable with
//! [`methods`](IdempotencyLayer::methods)), and any request whose caller supplied a key:
//!
//! - **The key.** The caller's key wins: an [`IdempotencyKey`] request extension, else an
//!   `Idempotency-Key` header already on the request; otherwise a new UUID v4. The layer sets the
//!   header once and calls the service below once, so every retry below carries the same key.
//!   The key used is on the response as an [`IdempotencyKey`] extension.
//! - **Keys of the layer's own.** A key the layer made up is known to no one before the
//!   response names it, so such a call is sent with its key and nothing else: no fingerprint,
//!   no store, no joining, its response streamed as it comes. What follows is about keys the
//!   caller supplies (to resend the same logical call later, give it the same key).
//! - **Replay.** The request body is read (up to [`body_limit`](IdempotencyLayer::body_limit),
//!   1 MiB by default) and [`Fingerprint`]ed with the method and path. A repeat of a key whose
//!   final response is stored is answered from the store, marked `Idempotent-Replayed: true`,
//!   without calling the service.
//! - **Joining.** Concurrent calls with the same key make one call below; the others wait and
//!   get the same response (also marked replayed). If that call ends without a final response,
//!   one of the waiters sends its own copy, with the same key.
//! - **Misuse.** The same key with another method, path or body is refused with
//!   [`Error::KeyReused`] before anything is sent.
//! - **What is stored.** Final responses only ([`is_final`]): 2xx, and 4xx other than 401, 403,
//!   408, 409 and 429 (a refused credential says nothing about the operation: stored, it would
//!   answer the key long after the credential is fixed). Other statuses and errors release the
//!   key, so the next call with it is sent.
//!   A response body larger than [`response_limit`](IdempotencyLayer::response_limit) (1 MiB by
//!   default) is passed to the caller as it streams and not stored. A request body larger than
//!   the body limit is sent once with its key, without fingerprint, store or joining.
//! - **Cancellation.** A call dropped midway (a deadline above it) releases its key.
//! - **Body types.** The service below gets the caller's request body type, rebuilt from the
//!   bytes read; the caller gets the service's response body type: a fresh response is read
//!   into memory (up to the limit) and rebuilt, a stored one is rebuilt from its bytes. So both
//!   body types must be [`ReplayBody`](crate::body::ReplayBody)s; over a client that answers
//!   hyper's `Incoming`, map the response body to [`Body`](crate::Body) first.
//!
//! ```
//! use std::time::Duration;
//! use genesys_tower::idempotency::{IdempotencyKey, IdempotencyLayer, MemoryStore};
//! use genesys_tower::{Body, BoxError};
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let client = ServiceBuilder::new()
//!     .layer(
//!         IdempotencyLayer::new()
//!             .store(MemoryStore::with_capacity(16 * 1024 * 1024))
//!             .retention(Duration::from_secs(3600)),
//!     )
//!     // The retry, auth and concurrency layers go here, then the HTTP client.
//!     .service(service_fn(|req: Request<Body>| async move {
//!         assert!(req.headers().contains_key("idempotency-key"));
//!         Ok::<_, BoxError>(Response::new(Body::from("created")))
//!     }));
//!
//! let response = client
//!     .oneshot(Request::post("/orders").body(Body::from("{\"qty\":1}"))?)
//!     .await?;
//! let key = response.extensions().get::<IdempotencyKey>().expect("the key used");
//! assert_eq!(key.as_str().len(), 36);
//! # Ok(()) }
//! ```
//!
//! # Stores
//!
//! One [`IdempotencyStore`] trait serves both layers: claim a key (atomically, under a lease
//! its owner renews; a claim whose owner is gone is held as abandoned, or taken over, as the
//! [`ClaimOptions`] say), complete it with a [`StoredResponse`], or release it. Its methods return boxed futures so that the layers hold an
//! `Arc<dyn IdempotencyStore>` and carry no store type parameter.
//!
//! - [`MemoryStore`]: one process; bounded by bytes, with per-entry retention (24 h by default
//!   in both layers); waiters are woken the moment a key completes.
//! - `RedisStore` (feature `redis`): several processes behind a load balancer; Lua scripts that
//!   claim atomically, check the owner before completing or releasing, refuse claims that arrive
//!   after their deadline, and notice when Redis lost its records.

mod client;
mod fingerprint;
mod future;
mod memory;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "idempotency-server")]
#[cfg_attr(docsrs, doc(cfg(feature = "idempotency-server")))]
pub mod server;
mod store;

use std::fmt;

use http::HeaderName;

#[cfg(all(feature = "retry", feature = "auth"))]
pub(crate) use client::{Config, Route, route};
pub use client::{
    DEFAULT_CLIENT_LOCK_TTL, DEFAULT_RETENTION, Error, Idempotency, IdempotencyLayer,
    ResponseFuture, is_final,
};
pub use fingerprint::{Fingerprint, ParseFingerprintError};
pub use memory::{DEFAULT_MEMORY_CAPACITY, MAX_CLAIMED_KEYS, MAX_EVICTED_KEYS, MemoryStore};
#[cfg(feature = "redis")]
pub use redis::{DEFAULT_LOSS_QUARANTINE, Durability, RedisStore};
pub use store::{
    Claim, ClaimOptions, ClaimToken, IdempotencyStore, StoreError, StoreFuture, StoredResponse,
};

pub use crate::headers::IDEMPOTENCY_KEY;

/// The `Idempotent-Replayed` response header, `true` on a response answered from the store.
pub const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// An idempotency key, as a request extension (the caller's choice of key) and as a response
/// extension (the key the call used, generated or not).
///
/// ```
/// use genesys_tower::idempotency::IdempotencyKey;
///
/// let request = http::Request::post("/orders")
///     .extension(IdempotencyKey::new("order-42"))
///     .body(())
///     .unwrap();
/// assert_eq!(request.extensions().get::<IdempotencyKey>().unwrap().as_str(), "order-42");
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// A key.
    #[must_use]
    pub fn new(key: impl Into<String>) -> Self {
        IdempotencyKey(key.into())
    }

    /// A new random key (UUID v4).
    #[must_use]
    pub fn random() -> Self {
        IdempotencyKey(client::generated_key())
    }

    /// The key.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdempotencyKey").field(&self.0).finish()
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for IdempotencyKey {
    fn from(key: String) -> Self {
        IdempotencyKey(key)
    }
}

impl From<&str> for IdempotencyKey {
    fn from(key: &str) -> Self {
        IdempotencyKey(key.to_owned())
    }
}
