//! A shared in-flight limit and client-side pacing learned from rate-limit headers.
//!
//! [`ConcurrencyLayer`] does three things for the service below it, with one state shared by
//! every clone of the service (and every service made by the same layer):
//!
//! - **An in-flight limit.** Each call of the inner service holds one permit, from the moment
//!   `poll_ready` reserves it until the response head arrives or the call fails (a response
//!   body still streaming holds none). Under the retry
//!   layer a call is one *attempt*, so no permit is held while a request sleeps in backoff.
//!   Callers beyond the limit wait for a permit (in `poll_ready`); with
//!   [`reject_when_full`](ConcurrencyLayer::reject_when_full) they get [`Error::Overloaded`] at
//!   once instead, and nothing is sent.
//! - **Pacing.** With [`pacing(n, window)`](ConcurrencyLayer::pacing), at most `n` calls start in
//!   any period of length `window`.
//! - **Learning from the server.** Rate-limit headers and 429 responses hold new requests back
//!   until the server's window resets, instead of letting them collect 429s.
//!
//! Several processes under one quota (pods of a service, `gcx` workers) share their pacing
//! through a [`SharedPacer`] ([`shared_pacing`](ConcurrencyLayer::shared_pacing)): `RedisPacer`
//! (feature `redis`) keeps one GCRA per key in Redis, shares 429 holds and learned quotas with
//! the fleet, and paces each process at its share when Redis cannot be reached.
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use genesys_tower::concurrency::ConcurrencyLayer;
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), genesys_tower::BoxError> {
//! let client = service_fn(|_req: Request<String>| async {
//!     Ok::<_, Infallible>(Response::new(String::from("ok")))
//! });
//! let client = ServiceBuilder::new()
//!     .layer(ConcurrencyLayer::new(5).pacing(300, Duration::from_secs(60)))
//!     .service(client);
//!
//! // Clones share the limit: hand one to each task.
//! let response = client.clone().oneshot(Request::new(String::new())).await?;
//! assert_eq!(response.into_body(), "ok");
//! # Ok(())
//! # }
//! ```
//!
//! # Why not tower's `ConcurrencyLimit`?
//!
//! tower's `ConcurrencyLimit` is per instance unless it is given a shared semaphore
//! (`GlobalConcurrencyLimitLayer`), it only waits (it cannot refuse), it keeps the permit until its
//! response future is dropped, and it knows nothing of rate limits. This service follows its design
//! (a shared semaphore, the permit taken in `poll_ready` and used by `call`) and adds the rest, so
//! that one permit check and one pacing check run per call. Its semaphore is its own: fair to
//! waiters as tokio's is (first come, first served, no newcomer passing a waiter), but it takes and
//! gives back a permit with one atomic operation each while no one waits, where tokio's locks its
//! list of waiters on every release.
//!
//! # Pacing
//!
//! The pacer keeps the start times of the last `n` calls (a sliding-window log): a call may start
//! when fewer than `n` calls started in the last `window`, otherwise it waits until the oldest of
//! them leaves the window. So a burst of up to `n` goes out at once, and no period of length
//! `window` ever sees more than `n` starts, whichever way the server aligns its own windows.
//! A call waits for its pacing slot *after* it has its permit, so the start it records is the
//! moment the inner service is called. Waiting uses tokio's clock, so a paused clock in tests
//! makes it instant and exact.
//!
//! Far from the limit (room in the window for many more starts), threads that start calls often
//! take their starts from the log in small batches, one batch at a time per shard of threads,
//! used without the lock every thread shares. A batch is recorded at the end of its short lease
//! (1 ms), the latest moment any of its starts can be used, so each start stays in the log at
//! least as long as if it were recorded on its own, and the rule above holds in every window.
//! Near the limit, and for a thread that starts less than once a lease, each start is recorded
//! at its own instant. A hold, or a new rate learned from a response, voids every batch at once;
//! the unused starts of a batch that lapsed or was voided go back to the window.
//!
//! The log's memory is bounded whatever the rate: past 65,536 starts in it, starts less than a
//! 65,536th of the window apart are kept as one group, logged at its latest start (so each stays
//! in the log a little longer than its window, never shorter). A ceiling of millions per window,
//! meant to be out of reach, keeps a few megabytes at most, where a log of every start would
//! grow with each one.
//!
//! # Learning from the server
//!
//! After each response (on by default; see
//! [`learn_from_responses`](ConcurrencyLayer::learn_from_responses)) the layer reads the
//! response's headers with [`crate::headers`], the same reading the retry layer uses:
//!
//! - `inin-ratelimit-allowed`, `inin-ratelimit-count`, `inin-ratelimit-reset` (Genesys Cloud:
//!   the window's quota, the requests used in it, seconds until it resets);
//! - the IETF `RateLimit` field (`r=` remaining, `t=` seconds to reset; the older
//!   `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` fields too) and
//!   `RateLimit-Policy` (`q=` quota, `w=` window in seconds);
//! - on a 429, the retry layer's hint ([`headers::hint`](crate::headers::hint): `Retry-After`,
//!   then the rate-limit resets).
//!
//! When a window has at most [`rate_limit_reserve`](ConcurrencyLayer::rate_limit_reserve)
//! requests left (1 by default), or a 429 arrives with a hint, no new call starts until that time
//! has passed; on a 429 that is never before the retry layer's own retry. A time beyond
//! [`max_hold`](ConcurrencyLayer::max_hold) (180 s by default, the retry layer's default
//! `max_retry_after`) sets no hold: the retry layer ends such calls at once with the hint instead
//! of letting each stall. Calls already waiting for a pacing slot see a hold too. A 429 that gives
//! no time sets no hold: the retry layer's backoff handles it. Malformed fields are ignored.
//!
//! # Adaptive pacing: the server's quota is a hint, not a ceiling
//!
//! The configured rate ([`pacing`](ConcurrencyLayer::pacing)) is where pacing starts. With
//! learning on, the rate then follows what the server says:
//!
//! - **The window is inferred, not assumed.** Its length is the longest reset the windows of
//!   its quota have reported (`inin-ratelimit-reset`, `RateLimit` `t=`, `RateLimit-Reset`): a
//!   server whose resets never exceed 1 s has a 1-second window, whatever the configured one,
//!   and a window of another quota (another limiter's, an hourly one) does not stretch it. A
//!   `RateLimit-Policy` gives quota and window outright.
//! - **The quota is a hint.** A published quota (`RateLimit-Policy`, or `inin-ratelimit-allowed`
//!   / `RateLimit-Limit` over the inferred window) becomes the rate when it first arrives or
//!   changes, faster or slower than the configured one.
//! - **Additive increase.** After each period of one window with no 429, in which calls waited for
//!   the pacer and the server's own count said there was room (more than the reserve remained
//!   throughout), the rate rises by a tenth of the quota hint (at least 1).
//! - **Multiplicative decrease.** A 429 halves the rate, at most once per window, and never below
//!   what the previous period delivered without a 429.
//! - A count that falls means a window boundary passed: the pacer's periods align with it.
//!
//! A limit of your own is [`max_rate`](ConcurrencyLayer::max_rate): learning never goes above
//! it. With learning off
//! ([`learn_from_responses(false)`](ConcurrencyLayer::learn_from_responses)), the configured
//! rate is fixed and no hold is taken from the server's answers.
//!
//! # Errors
//!
//! The service's error is a [`BoxError`]: the inner service's error, or an [`Error`] of this
//! module.

mod error;
mod future;
mod layer;
mod limit;
mod pacing;
#[cfg(feature = "redis")]
mod redis;
mod shared;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, PoisonError};
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use tokio::time::Sleep;
use tower_layer::Layer;
use tower_service::Service;

pub use self::error::Error;
pub use self::future::ResponseFuture;
pub use self::layer::{ConcurrencyLayer, InvalidRate};
#[cfg(feature = "redis")]
pub use self::redis::RedisPacer;
pub use self::shared::{AcquireFuture, SharedPacer};

use self::limit::{Acquire, Limit};
use self::pacing::Pacer;
use crate::per_thread::{Handle, PerThread};
use crate::{BoxError, Metrics};

/// A permit of the layer's in-flight limit, held through the layer's shared state (the calling
/// thread's copy of it): the one reference count a call takes, for its permit, its pacer and
/// its fleet's pacer alike. Gives the permit back when dropped.
#[derive(Debug)]
pub(crate) struct Permit(Option<Handle<Shared>>);

impl Permit {
    /// Holds a permit taken from `shared`'s limit.
    fn held(shared: &PerThread<Shared>) -> Permit {
        Permit(Some(shared.handle()))
    }

    /// Gives the permit back, and keeps the layer's shared state (the pacers a response is
    /// shown to).
    pub(crate) fn release(mut self) -> Option<Handle<Shared>> {
        let shared = self.0.take()?;
        shared.limit.release();
        Some(shared)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(shared) = &self.0 {
            shared.limit.release();
        }
    }
}

/// State shared by every clone of the service. Kept with a copy per thread ([`PerThread`]): a
/// clone must share whatever a call changes (the limit, the pacers, the counters); a test
/// names each field.
#[derive(Debug, Clone)]
pub(crate) struct Shared {
    limit: Arc<Limit>,
    max_in_flight: usize,
    reject: bool,
    pacer: Arc<Pacer>,
    /// Pacing shared with other processes, after this one's own.
    fleet: Option<Arc<dyn SharedPacer>>,
    metrics: Metrics,
}

/// Limits the calls in flight and paces their starts, with state shared by every clone. Made by
/// [`ConcurrencyLayer`]; see the [module docs](self).
pub struct Concurrency<S> {
    inner: S,
    shared: Arc<PerThread<Shared>>,
    /// Taken in `poll_ready`, handed to the response future by `call`.
    permit: Option<Permit>,
    /// Waiting for a permit.
    acquire: Option<Acquire>,
    /// The pacer has recorded this call's start.
    paced: bool,
    /// This call already counted as a pacing wait.
    waited: bool,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Waiting for the shared pacer (in a mutex only so that the service stays `Sync`: it is
    /// reached through `&mut self`, never locked).
    fleet_wait: Option<std::sync::Mutex<AcquireFuture>>,
    /// The shared pacer let this call start.
    fleet_paced: bool,
    /// Reject mode found no permit: `call` answers with `Error::Overloaded`.
    overloaded: bool,
}

impl<S> Concurrency<S> {
    /// Wraps `inner` with a limit of `max_in_flight` calls, waiting for a permit when full; the
    /// same as `ConcurrencyLayer::new(max_in_flight).layer(inner)`.
    pub fn new(inner: S, max_in_flight: usize) -> Self {
        ConcurrencyLayer::new(max_in_flight).layer(inner)
    }

    fn from_shared(inner: S, shared: Arc<PerThread<Shared>>) -> Self {
        Concurrency {
            inner,
            shared,
            permit: None,
            acquire: None,
            paced: false,
            waited: false,
            sleep: None,
            fleet_wait: None,
            fleet_paced: false,
            overloaded: false,
        }
    }

    /// The permits not in use right now (shared by every clone).
    pub fn available_permits(&self) -> usize {
        self.shared.limit.available_permits()
    }

    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn poll_permit(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.permit.is_some() {
            return Poll::Ready(());
        }
        if self.acquire.is_none() {
            // The fast path takes a free permit without allocating.
            if self.shared.limit.try_acquire() {
                // Given back by `Permit`'s drop.
                self.permit = Some(Permit::held(&self.shared));
                return Poll::Ready(());
            }
            if self.shared.reject {
                self.overloaded = true;
                return Poll::Ready(());
            }
            self.acquire = Some(self.shared.limit.clone().acquire());
        }
        if let Some(acquire) = self.acquire.as_mut() {
            ready!(Pin::new(acquire).poll(cx));
            self.acquire = None;
            // Given back by `Permit`'s drop.
            self.permit = Some(Permit::held(&self.shared));
        }
        Poll::Ready(())
    }

    fn poll_pacing(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        ready!(self.poll_local_pacing(cx));
        self.poll_fleet_pacing(cx)
    }

    fn poll_fleet_pacing(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let Some(fleet) = self.shared.fleet.as_ref().filter(|_| !self.fleet_paced) else {
            return Poll::Ready(());
        };
        let wait = self
            .fleet_wait
            .get_or_insert_with(|| std::sync::Mutex::new(fleet.acquire()));
        let wait = wait.get_mut().unwrap_or_else(PoisonError::into_inner);
        if wait.as_mut().poll(cx).is_pending() {
            if !self.waited {
                self.waited = true;
                self.shared.metrics.record_pacing_wait();
            }
            return Poll::Pending;
        }
        self.fleet_wait = None;
        self.fleet_paced = true;
        Poll::Ready(())
    }

    fn poll_local_pacing(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.paced || !self.shared.pacer.is_active() {
            return Poll::Ready(());
        }
        loop {
            match self.shared.pacer.try_start() {
                Ok(()) => {
                    self.paced = true;
                    self.sleep = None;
                    return Poll::Ready(());
                }
                Err(until) => {
                    if !self.waited {
                        self.waited = true;
                        self.shared.metrics.record_pacing_wait();
                        tracing::trace!(
                            wait_ms = until
                                .saturating_duration_since(tokio::time::Instant::now())
                                .as_millis() as u64,
                            "pacing: request held back"
                        );
                    }
                    match self.sleep.as_mut() {
                        Some(sleep) => sleep.as_mut().reset(until),
                        None => self.sleep = Some(Box::pin(tokio::time::sleep_until(until))),
                    }
                    if let Some(sleep) = self.sleep.as_mut() {
                        ready!(sleep.as_mut().poll(cx));
                    }
                }
            }
        }
    }
}

impl<S, B, ResBody> Service<Request<B>> for Concurrency<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Error: Into<BoxError>,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // A refusal decided by an earlier poll is looked at again: a permit may be free now.
        self.overloaded = false;
        ready!(self.poll_permit(cx));
        if self.overloaded {
            // `call` refuses at once; the inner service is not asked.
            return Poll::Ready(Ok(()));
        }
        ready!(self.poll_pacing(cx));
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        if std::mem::take(&mut self.overloaded) {
            self.shared.metrics.record_concurrency_rejection();
            tracing::debug!(
                max_in_flight = self.shared.max_in_flight,
                "concurrency limit reached: request refused"
            );
            return ResponseFuture::overloaded();
        }
        let permit = self
            .permit
            .take()
            .expect("Concurrency: poll_ready must return Ready before call");
        self.paced = false;
        self.fleet_paced = false;
        self.waited = false;
        ResponseFuture::new(self.inner.call(request), permit)
    }
}

impl<S: Clone> Clone for Concurrency<S> {
    fn clone(&self) -> Self {
        // A clone shares the limit but holds no permit of its own yet.
        Concurrency::from_shared(self.inner.clone(), self.shared.clone())
    }
}

impl<S: fmt::Debug> fmt::Debug for Concurrency<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Concurrency")
            .field("inner", &self.inner)
            .field("max_in_flight", &self.shared.max_in_flight)
            .field("available_permits", &self.available_permits())
            .field("holds_permit", &self.permit.is_some())
            .finish()
    }
}

#[cfg(test)]
mod shared_tests {
    use std::time::Duration;

    use http::{HeaderMap, StatusCode};

    use super::*;

    #[derive(Debug)]
    struct Fleet;

    impl SharedPacer for Fleet {
        fn acquire(&self) -> AcquireFuture {
            Box::pin(std::future::ready(()))
        }

        fn observe(&self, _: StatusCode, _: &HeaderMap) {}
    }

    /// A thread's copy of the layer's state shares everything a call changes with the state
    /// and every other copy: each field is named, so a new one must say how it is shared.
    #[test]
    fn a_threads_copy_of_the_state_shares_everything_a_call_changes() {
        let service = ConcurrencyLayer::new(4)
            .pacing(10, Duration::from_secs(1))
            .shared_pacing(Fleet)
            .layer(());
        let state = &service.shared;
        let copy = state.handle_in(1);
        let Shared {
            limit,
            max_in_flight,
            reject,
            pacer,
            fleet,
            metrics,
        } = &**copy;
        assert!(Arc::ptr_eq(limit, &state.limit), "the permits");
        assert_eq!(
            (*max_in_flight, *reject),
            (state.max_in_flight, state.reject),
            "values no call changes"
        );
        assert!(Arc::ptr_eq(pacer, &state.pacer), "the pacer");
        let (Some(fleet), Some(original)) = (fleet, &state.fleet) else {
            panic!("the fleet's pacer is in the copy");
        };
        assert!(Arc::ptr_eq(fleet, original), "the fleet's pacer");
        assert!(metrics.is_same(&state.metrics), "the counters");
    }
}
