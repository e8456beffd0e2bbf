//! Idempotency keys stable across retries, a response store, and the server-side twin.
//!
//! TODO: full docs.

mod client;
mod fingerprint;
mod memory;
#[cfg(feature = "redis")]
mod redis;
pub mod server;
mod store;

use std::fmt;

use http::HeaderName;

pub use client::{
    DEFAULT_CLIENT_LOCK_TTL, DEFAULT_RETENTION, Error, Idempotency, IdempotencyLayer,
    ResponseFuture, is_final,
};
pub use fingerprint::{Fingerprint, ParseFingerprintError};
pub use memory::{DEFAULT_MEMORY_CAPACITY, MemoryStore};
#[cfg(feature = "redis")]
pub use redis::RedisStore;
pub use store::{Claim, ClaimToken, IdempotencyStore, StoreError, StoreFuture, StoredResponse};

/// The `Idempotency-Key` request header.
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

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
pub struct IdempotencyKey(pub String);

impl IdempotencyKey {
    /// A key.
    pub fn new(key: impl Into<String>) -> Self {
        IdempotencyKey(key.into())
    }

    /// A new random key (UUID v4).
    pub fn random() -> Self {
        IdempotencyKey(uuid::Uuid::new_v4().to_string())
    }

    /// The key.
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
