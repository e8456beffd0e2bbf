//! Pacing shared beyond one process: the trait a fleet-wide pacer implements.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use http::{HeaderMap, StatusCode};

/// What [`SharedPacer::acquire`] returns: a future that completes when the request may start.
pub type AcquireFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Pacing shared by several processes (a fleet of pods, or several `gcx` workers) that call one
/// API under one quota, so that together they never exceed it.
///
/// The [`ConcurrencyLayer`](super::ConcurrencyLayer) asks it for each request, after its own
/// pacer and limit ([`shared_pacing`](super::ConcurrencyLayer::shared_pacing)), and shows it
/// every response. `RedisPacer` (feature `redis`) is the implementation over Redis.
///
/// An implementation never fails a request: when its shared state cannot be reached, it paces
/// locally, at its share of the quota, and says so in the log.
pub trait SharedPacer: fmt::Debug + Send + Sync + 'static {
    /// Takes one start from the shared quota: completes when the request may start. Dropped
    /// before then, the start may still count against the quota.
    fn acquire(&self) -> AcquireFuture;

    /// Sees a response, to share what it says about the quota (a 429's `Retry-After`, a quota
    /// policy) with the rest of the fleet. Must not block.
    fn observe(&self, status: StatusCode, headers: &HeaderMap);
}

impl<T: SharedPacer + ?Sized> SharedPacer for std::sync::Arc<T> {
    fn acquire(&self) -> AcquireFuture {
        (**self).acquire()
    }

    fn observe(&self, status: StatusCode, headers: &HeaderMap) {
        (**self).observe(status, headers);
    }
}
