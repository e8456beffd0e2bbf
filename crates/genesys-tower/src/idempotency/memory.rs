//! An in-memory store: bounded, with expiry.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use moka::sync::Cache;
use tokio::sync::watch;
use tokio::time::Instant;

use super::Fingerprint;
use super::store::{
    Claim, ClaimOptions, ClaimToken, IdempotencyStore, StoreError, StoreFuture, StoredResponse,
};

/// The default bound of a [`MemoryStore`]: 64 MiB of stored responses.
pub const DEFAULT_MEMORY_CAPACITY: u64 = 64 * 1024 * 1024;

/// The most keys a [`MemoryStore`] holds claimed at once, abandoned claims included (about
/// 50 MiB of them at most): past it, a claim of a new key fails with a [`StoreError`] (the
/// server layer answers 503) rather than grow without bound.
pub const MAX_CLAIMED_KEYS: usize = 100_000;

/// The most keys a [`MemoryStore`] keeps whose response it dropped for room before their
/// retention ended: one per KiB of its capacity (about a quarter of it, at a few hundred bytes
/// a key), at least 256, at most this. Past it, the key dropped longest ago is forgotten (the
/// store warns once): a repeat with it would run again.
pub const MAX_EVICTED_KEYS: usize = 100_000;

/// How often a full store looks for held claims whose hold ended, at most.
const FULL_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// An in-memory [`IdempotencyStore`] for one process: completed responses in a bounded cache
/// ([moka], weighed by response size, least recently used entries evicted first), each kept for the
/// retention its layer asks for; in-flight claims in a map beside it, at most
/// [`MAX_CLAIMED_KEYS`] of them.
///
/// A response evicted for room before its retention ends leaves its key behind, until that
/// retention ends: a request with the key is then answered [`Claim::Evicted`] (the server layer
/// answers 409), never run again. One key per KiB of capacity is kept so (see
/// [`MAX_EVICTED_KEYS`]); past that, the oldest is forgotten, with a warning. Give the store
/// room for the responses of a retention's worth of keys to keep them all.
///
/// Clones share the same records. Waiting callers are woken the moment a key completes or is
/// released, not by polling. Lock and retention deadlines follow tokio's clock, so they can be
/// tested on a paused clock.
///
/// For several processes behind one load balancer use the Redis store (feature `redis`).
///
/// ```
/// use genesys_tower::idempotency::{IdempotencyLayer, MemoryStore};
///
/// let store = MemoryStore::with_capacity(16 * 1024 * 1024);
/// let layer = IdempotencyLayer::new().store(store.clone());
/// # drop(layer);
/// ```
///
/// [moka]: https://docs.rs/moka
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    completed: Cache<String, Arc<Completed>>,
    in_flight: Mutex<HashMap<String, Lock>>,
    /// Keys whose response was evicted for room before their retention ended (filled by the
    /// cache's eviction listener).
    evicted: Arc<Mutex<Evicted>>,
    /// When full, the earliest a claim looks through every held claim again for ones whose
    /// hold ended (taken with `in_flight` held): a full store refuses new keys in constant time.
    next_full_sweep: Mutex<Option<Instant>>,
}

struct Completed {
    fingerprint: Fingerprint,
    response: StoredResponse,
    expires_at: Instant,
    retention: Duration,
}

struct Lock {
    token: ClaimToken,
    /// Until then the owner is presumed at work.
    lease_until: Instant,
    /// Until then an abandoned claim is kept (`Claim::Abandoned`); then the key is absent.
    hold_until: Instant,
    // Dropped when the lock goes: every waiter's receiver then wakes.
    changed: watch::Sender<()>,
}

/// Expires completed entries after their own retention (on moka's clock; reads also check
/// tokio's clock, see `get_live`).
struct Retention;

impl moka::Expiry<String, Arc<Completed>> for Retention {
    fn expire_after_create(
        &self,
        _key: &String,
        value: &Arc<Completed>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.retention)
    }
}

impl MemoryStore {
    /// A store bounded to [`DEFAULT_MEMORY_CAPACITY`] bytes of responses.
    #[must_use]
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_MEMORY_CAPACITY)
    }

    /// A store bounded to `max_bytes` of responses (body and headers). When full, the responses
    /// least recently used are evicted, and their keys kept until their retention ends (see
    /// the type's docs).
    #[must_use]
    pub fn with_capacity(max_bytes: u64) -> Self {
        let most = usize::try_from(max_bytes / 1024)
            .unwrap_or(usize::MAX)
            .clamp(256, MAX_EVICTED_KEYS);
        let evicted = Arc::new(Mutex::new(Evicted::new(most)));
        let listener = evicted.clone();
        let completed = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, value: &Arc<Completed>| {
                u32::try_from(key.len() + value.response.size()).unwrap_or(u32::MAX)
            })
            .expire_after(Retention)
            // Least recently used first. moka's default (TinyLFU) admits a new entry only when
            // it was asked for more often than the ones it would evict: a full store would then
            // turn away the answer just completed, the one a retry after a lost response asks
            // for next, and run its request again.
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .eviction_listener(move |key: Arc<String>, value: Arc<Completed>, cause| {
                if cause == moka::notification::RemovalCause::Size {
                    lock(&listener).keep(&key, value.fingerprint, value.expires_at);
                }
            })
            .build();
        MemoryStore {
            inner: Arc::new(Inner {
                completed,
                in_flight: Mutex::new(HashMap::new()),
                evicted,
                next_full_sweep: Mutex::new(None),
            }),
        }
    }

    /// The number of keys completed and kept (approximate: evictions run lazily).
    #[must_use]
    pub fn completed_len(&self) -> u64 {
        // Under the claims' lock: an eviction this runs is never half seen by a claim (the
        // response gone, its key not yet kept).
        let _locks = self.locks();
        self.inner.completed.run_pending_tasks();
        self.inner.completed.entry_count()
    }

    /// The number of keys in flight (claimed and neither completed nor released).
    #[must_use]
    pub fn in_flight_len(&self) -> usize {
        let now = Instant::now();
        self.locks()
            .values()
            .filter(|l| l.lease_until > now)
            .count()
    }

    fn locks(&self) -> MutexGuard<'_, HashMap<String, Lock>> {
        lock(&self.inner.in_flight)
    }

    /// The fingerprint of `key` if its response was evicted and its retention has not ended.
    fn evicted(&self, key: &str, now: Instant) -> Option<Fingerprint> {
        lock(&self.inner.evicted).get(key, now)
    }

    fn get_live(&self, key: &str, now: Instant) -> Option<Arc<Completed>> {
        let completed = self.inner.completed.get(key)?;
        if completed.expires_at <= now {
            self.inner.completed.invalidate(key);
            return None;
        }
        Some(completed)
    }

    fn claim_now(
        &self,
        key: &str,
        fingerprint: Fingerprint,
        options: ClaimOptions,
    ) -> Result<Claim, StoreError> {
        let now = Instant::now();
        // One mutex orders every claim, completion and release, so a key cannot be completed
        // between our look at the cache and our look at the locks.
        let mut locks = self.locks();
        if let Some(completed) = self.get_live(key, now) {
            return Ok(if completed.fingerprint == fingerprint {
                Claim::Completed(completed.response.clone())
            } else {
                Claim::Mismatch
            });
        }
        if let Some(lock) = locks.get(key).filter(|l| l.hold_until > now) {
            return Ok(if lock.token.fingerprint() != fingerprint {
                Claim::Mismatch
            } else if lock.lease_until > now {
                Claim::InFlight
            } else {
                Claim::Abandoned
            });
        }
        if let Some(done) = self.evicted(key, now) {
            return Ok(if done == fingerprint {
                Claim::Evicted
            } else {
                Claim::Mismatch
            });
        }
        // Absent, or abandoned and no longer held: the key is ours.
        if locks.len() >= 1024 && locks.len().is_power_of_two() {
            // Keep abandoned claims from piling up; amortised over the map's growth.
            locks.retain(|_, l| l.hold_until > now);
        }
        if locks.len() >= MAX_CLAIMED_KEYS && !locks.contains_key(key) {
            let mut next = self
                .inner
                .next_full_sweep
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if next.is_none_or(|at| at <= now) {
                locks.retain(|_, l| l.hold_until > now);
                *next = Some(crate::time::after(now, FULL_SWEEP_EVERY));
            }
            drop(next);
            if locks.len() >= MAX_CLAIMED_KEYS {
                return Err(StoreError::new(format!(
                    "{MAX_CLAIMED_KEYS} keys are claimed (or held as abandoned) in this process's \
                     idempotency store; new keys are refused until some complete or their hold \
                     ends (calls dropped mid-way leave their key held: see the layer's retention)"
                )));
            }
        }
        let token = ClaimToken::new(fingerprint);
        let (lease_until, hold_until) = lease(now, options);
        locks.insert(
            key.to_owned(),
            Lock {
                token: token.clone(),
                lease_until,
                hold_until,
                changed: watch::channel(()).0,
            },
        );
        Ok(Claim::Acquired(token))
    }

    fn complete_now(
        &self,
        key: &str,
        token: &ClaimToken,
        response: StoredResponse,
        retention: Duration,
    ) -> bool {
        let now = Instant::now();
        let mut locks = self.locks();
        // Ours, lease ended or not; or no record at all (nobody else holds the key).
        let ours = match locks.get(key) {
            Some(lock) => lock.token == *token,
            None => self.get_live(key, now).is_none() && self.evicted(key, now).is_none(),
        };
        if !ours {
            return false;
        }
        self.inner.completed.insert(
            key.to_owned(),
            Arc::new(Completed {
                fingerprint: token.fingerprint(),
                response,
                expires_at: crate::time::after(now, retention),
                retention,
            }),
        );
        locks.remove(key);
        true
    }

    fn renew_now(&self, key: &str, token: &ClaimToken, options: ClaimOptions) -> bool {
        let mut locks = self.locks();
        let Some(lock) = locks.get_mut(key).filter(|l| l.token == *token) else {
            return false;
        };
        (lock.lease_until, lock.hold_until) = lease(Instant::now(), options);
        true
    }

    fn release_now(&self, key: &str, token: &ClaimToken) {
        let mut locks = self.locks();
        if locks.get(key).is_some_and(|l| l.token == *token) {
            locks.remove(key);
        }
    }
}

/// The keys whose responses were evicted for room, until their retention ends: at most `most`,
/// the one evicted longest ago forgotten first.
struct Evicted {
    /// Each key's fingerprint, when its retention ends, and the number of its place in `order`.
    keys: HashMap<Arc<str>, (Fingerprint, Instant, u64)>,
    /// The keys in the order they were evicted, each with its number: an entry whose number is
    /// not its key's in `keys` is stale (the key expired, or was evicted again since).
    order: std::collections::VecDeque<(Arc<str>, u64)>,
    next: u64,
    most: usize,
    /// When `keep` may next look through every key for expired ones.
    next_sweep: Option<Instant>,
    warned: bool,
}

impl Evicted {
    fn new(most: usize) -> Self {
        Evicted {
            keys: HashMap::new(),
            order: std::collections::VecDeque::new(),
            next: 0,
            most,
            next_sweep: None,
            warned: false,
        }
    }

    fn get(&mut self, key: &str, now: Instant) -> Option<Fingerprint> {
        match self.keys.get(key) {
            Some((fingerprint, until, _)) if *until > now => Some(*fingerprint),
            Some(_) => {
                self.keys.remove(key);
                None
            }
            None => None,
        }
    }

    /// Keeps `key`, evicted now, until `until`. At the bound, the expired keys go first (looked
    /// for at most once a second: eviction order is not expiry order), then the one evicted
    /// longest ago.
    fn keep(&mut self, key: &str, fingerprint: Fingerprint, until: Instant) {
        let now = Instant::now();
        if self.keys.len() >= self.most && self.next_sweep.is_none_or(|at| at <= now) {
            self.keys.retain(|_, (_, ends, _)| *ends > now);
            self.next_sweep = Some(crate::time::after(now, FULL_SWEEP_EVERY));
        }
        while self.keys.len() >= self.most {
            let Some((oldest, number)) = self.order.pop_front() else {
                break;
            };
            if self.keys.get(&oldest).is_some_and(|(_, _, n)| *n == number) {
                self.keys.remove(&oldest);
                if !self.warned {
                    self.warned = true;
                    tracing::warn!(
                        kept = self.most,
                        "idempotency store: the keys of responses dropped for room are \
                         forgotten past this many; a repeat with one would run again: give \
                         the store more room"
                    );
                }
            }
        }
        // Stale entries (keys expired or evicted again) are dropped from the front, and all of
        // them once they are as many as the live ones: `order` stays within twice the bound.
        while self
            .order
            .front()
            .is_some_and(|(k, n)| self.keys.get(k).is_none_or(|(_, _, m)| m != n))
        {
            self.order.pop_front();
        }
        if self.order.len() >= 2 * self.most {
            let keys = &self.keys;
            self.order
                .retain(|(k, n)| keys.get(k).is_some_and(|(_, _, m)| m == n));
        }
        let key: Arc<str> = Arc::from(key);
        let number = self.next;
        self.next = self.next.wrapping_add(1);
        self.keys.insert(key.clone(), (fingerprint, until, number));
        self.order.push_back((key, number));
    }
}

/// `mutex`, locked. A panic while holding one cannot leave its map half-updated (every update
/// is one insert, remove or retain), so a poisoned lock is safe to use.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// When a lease taken at `now` ends, and when its claim stops being held.
fn lease(now: Instant, options: ClaimOptions) -> (Instant, Instant) {
    let lease_until = crate::time::after(now, options.lease());
    (lease_until, crate::time::after(lease_until, options.hold()))
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("completed", &self.inner.completed.entry_count())
            .field("max_bytes", &self.inner.completed.policy().max_capacity())
            .finish()
    }
}

impl IdempotencyStore for MemoryStore {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        fingerprint: Fingerprint,
        options: ClaimOptions,
    ) -> StoreFuture<'a, Claim> {
        let claim = self.claim_now(key, fingerprint, options);
        Box::pin(async move { claim })
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        token: &'a ClaimToken,
        options: ClaimOptions,
    ) -> StoreFuture<'a, bool> {
        let renewed = self.renew_now(key, token, options);
        Box::pin(async move { Ok(renewed) })
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: &'a ClaimToken,
        response: StoredResponse,
        retention: Duration,
    ) -> StoreFuture<'a, bool> {
        let stored = self.complete_now(key, token, response, retention);
        Box::pin(async move { Ok(stored) })
    }

    fn release<'a>(&'a self, key: &'a str, token: &'a ClaimToken) -> StoreFuture<'a, ()> {
        self.release_now(key, token);
        Box::pin(async { Ok(()) })
    }

    fn wait<'a>(&'a self, key: &'a str, max_wait: Duration) -> StoreFuture<'a, ()> {
        let watched = self.locks().get(key).map(|l| {
            let until = l.lease_until.min(crate::time::from_now(max_wait));
            (l.changed.subscribe(), until)
        });
        Box::pin(async move {
            if let Some((mut changed, until)) = watched {
                // Wakes when the lock is dropped (completed or released) or when it expires.
                let _ = tokio::time::timeout_at(until, changed.changed()).await;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, Method, StatusCode};

    fn fp(body: &str) -> Fingerprint {
        Fingerprint::of(&Method::POST, &"/x".parse().unwrap(), body.as_bytes())
    }

    fn ok() -> StoredResponse {
        StoredResponse::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(b"done"),
        )
    }

    /// A full store makes room for the newest answer: a key completed a moment ago is the one
    /// a retry after a lost response asks for next, so it must not be the one left out.
    #[tokio::test]
    async fn a_full_store_keeps_the_newest_answers() {
        let body = Bytes::from(vec![b'x'; 1024]);
        // Room for about 8 answers of 1 KiB.
        let store = MemoryStore::with_capacity(8 * 1100);
        let lock = Duration::from_secs(30);
        let retention = Duration::from_secs(3600);
        for i in 0..40 {
            let key = format!("k{i}");
            let Claim::Acquired(token) = store.claim(&key, fp("a"), lock.into()).await.unwrap()
            else {
                panic!("{key} is new");
            };
            let response = StoredResponse::new(StatusCode::OK, HeaderMap::new(), body.clone());
            assert!(
                store
                    .complete(&key, &token, response, retention)
                    .await
                    .unwrap()
            );
            store.inner.completed.run_pending_tasks();
            assert!(
                matches!(
                    store.claim(&key, fp("a"), lock.into()).await.unwrap(),
                    Claim::Completed(_)
                ),
                "{key}, just completed, is replayed"
            );
        }
        assert!(store.completed_len() <= 8, "the bound holds");
        // The keys whose answers made room are still known: never run again, within their
        // retention.
        for i in 0..30 {
            let key = format!("k{i}");
            assert!(
                matches!(
                    store.claim(&key, fp("a"), lock.into()).await.unwrap(),
                    Claim::Evicted
                ),
                "{key}, evicted, is not new"
            );
            assert!(matches!(
                store.claim(&key, fp("b"), lock.into()).await.unwrap(),
                Claim::Mismatch
            ));
        }
    }

    /// An evicted key is kept until its retention ends, then is new again; past the bound, the
    /// one evicted longest ago is forgotten, and new keys are still taken.
    #[tokio::test(start_paused = true)]
    async fn evicted_keys_are_kept_for_their_retention_and_bounded() {
        let store = MemoryStore::with_capacity(4 * 1100);
        let lock = Duration::from_secs(30);
        let retention = Duration::from_secs(3600);
        for i in 0..20 {
            let key = format!("k{i}");
            let Claim::Acquired(token) = store.claim(&key, fp("a"), lock.into()).await.unwrap()
            else {
                panic!("{key} is new");
            };
            let response = StoredResponse::new(
                StatusCode::OK,
                HeaderMap::new(),
                Bytes::from(vec![b'x'; 1024]),
            );
            assert!(
                store
                    .complete(&key, &token, response, retention)
                    .await
                    .unwrap()
            );
        }
        assert!(store.completed_len() < 20, "answers were dropped for room");
        assert!(matches!(
            store.claim("k0", fp("a"), lock.into()).await.unwrap(),
            Claim::Evicted
        ));
        tokio::time::advance(retention + Duration::from_secs(1)).await;
        assert!(matches!(
            store.claim("k0", fp("a"), lock.into()).await.unwrap(),
            Claim::Acquired(_)
        ));

        // 256 kept at most for this small store: the first of 300 is forgotten, the last kept.
        let until = crate::time::after(Instant::now(), retention);
        {
            let mut evicted = lock_evicted(&store);
            for i in 0..300 {
                evicted.keep(&format!("e{i}"), fp("a"), until);
            }
            assert_eq!(evicted.keys.len(), 256);
            assert!(evicted.order.len() <= 2 * 256);
        }
        assert!(matches!(
            store.claim("e0", fp("a"), lock.into()).await.unwrap(),
            Claim::Acquired(_)
        ));
        assert!(matches!(
            store.claim("e299", fp("a"), lock.into()).await.unwrap(),
            Claim::Evicted
        ));
        assert!(matches!(
            store.claim("new", fp("a"), lock.into()).await.unwrap(),
            Claim::Acquired(_)
        ));
    }

    /// Expired keys make room before live ones, wherever they are in eviction order; a key
    /// evicted again is not forgotten for its earlier eviction.
    #[tokio::test(start_paused = true)]
    async fn expired_evicted_keys_make_room_before_live_ones() {
        let mut evicted = Evicted::new(256);
        let now = Instant::now();
        let long = crate::time::after(now, Duration::from_secs(3600));
        let short = crate::time::after(now, Duration::from_secs(1));
        evicted.keep("live", fp("a"), long);
        evicted.keep("again", fp("a"), short);
        for i in 0..253 {
            evicted.keep(&format!("e{i}"), fp("a"), short);
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        let now = Instant::now();
        assert_eq!(evicted.get("again", now), None, "expired");
        let long = crate::time::after(now, Duration::from_secs(3600));
        evicted.keep("again", fp("a"), long);
        evicted.keep("n1", fp("a"), long);
        evicted.keep("n2", fp("a"), long);
        for key in ["live", "again", "n1", "n2"] {
            assert!(evicted.get(key, now).is_some(), "{key} is kept");
        }
        // Full of live keys: the one evicted longest ago goes first.
        for i in 0..300 {
            evicted.keep(&format!("x{i}"), fp("a"), long);
        }
        assert_eq!(evicted.keys.len(), 256);
        assert!(evicted.get("live", now).is_none());
        assert!(evicted.get("x299", now).is_some());
    }

    fn lock_evicted(store: &MemoryStore) -> MutexGuard<'_, Evicted> {
        lock(&store.inner.evicted)
    }

    /// Claims that are never settled (calls dropped mid-way) fill the store only up to its
    /// bound: past it a new key is refused with an error, until held claims end.
    #[tokio::test(start_paused = true)]
    async fn claims_never_settled_stop_at_the_bound() {
        let store = MemoryStore::new();
        let options =
            ClaimOptions::new(Duration::from_secs(30)).hold_abandoned(Duration::from_secs(3600));
        for i in 0..MAX_CLAIMED_KEYS {
            let claim = store.claim_now(&format!("k{i}"), fp("a"), options).unwrap();
            assert!(matches!(claim, Claim::Acquired(_)));
        }
        let e = store.claim("one-more", fp("a"), options).await.unwrap_err();
        assert!(e.to_string().contains("keys are claimed"), "{e}");
        // A key already held still gets its answer.
        assert!(matches!(
            store.claim("k0", fp("a"), options).await.unwrap(),
            Claim::InFlight
        ));
        tokio::time::advance(Duration::from_secs(30 + 3600 + 1)).await;
        assert!(matches!(
            store.claim("one-more", fp("a"), options).await.unwrap(),
            Claim::Acquired(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn claim_complete_replay_and_expiry() {
        let store = MemoryStore::new();
        let lock = Duration::from_secs(30);
        let Claim::Acquired(token) = store.claim("k", fp("a"), lock.into()).await.unwrap() else {
            panic!("a new key is acquired");
        };
        assert!(matches!(
            store.claim("k", fp("a"), lock.into()).await.unwrap(),
            Claim::InFlight
        ));
        assert!(matches!(
            store.claim("k", fp("b"), lock.into()).await.unwrap(),
            Claim::Mismatch
        ));
        let retention = Duration::from_secs(60);
        assert!(store.complete("k", &token, ok(), retention).await.unwrap());
        match store.claim("k", fp("a"), lock.into()).await.unwrap() {
            Claim::Completed(r) => assert_eq!(r.body().as_ref(), b"done"),
            other => panic!("expected the stored response, got {other:?}"),
        }
        assert!(matches!(
            store.claim("k", fp("b"), lock.into()).await.unwrap(),
            Claim::Mismatch
        ));
        tokio::time::advance(retention).await;
        assert!(matches!(
            store.claim("k", fp("b"), lock.into()).await.unwrap(),
            Claim::Acquired(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn expired_lock_is_taken_over_and_the_old_owner_cannot_complete() {
        let store = MemoryStore::new();
        let lock = Duration::from_secs(30);
        let Claim::Acquired(old) = store.claim("k", fp("a"), lock.into()).await.unwrap() else {
            panic!("a new key is acquired");
        };
        tokio::time::advance(lock - Duration::from_millis(1)).await;
        assert!(matches!(
            store.claim("k", fp("a"), lock.into()).await.unwrap(),
            Claim::InFlight
        ));
        tokio::time::advance(Duration::from_millis(1)).await;
        let Claim::Acquired(new) = store.claim("k", fp("a"), lock.into()).await.unwrap() else {
            panic!("an expired lock is taken over");
        };
        let day = Duration::from_secs(86_400);
        assert!(!store.complete("k", &old, ok(), day).await.unwrap());
        store.release("k", &old).await.unwrap();
        assert_eq!(
            store.in_flight_len(),
            1,
            "the old owner cannot release the new lock"
        );
        assert!(store.complete("k", &new, ok(), day).await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_claim_is_abandoned_after_its_lease_until_its_hold_ends() {
        let store = MemoryStore::new();
        let options =
            ClaimOptions::new(Duration::from_secs(10)).hold_abandoned(Duration::from_secs(100));
        let Claim::Acquired(token) = store.claim("k", fp("a"), options).await.unwrap() else {
            panic!("a new key is acquired");
        };
        tokio::time::advance(Duration::from_secs(8)).await;
        assert!(store.renew("k", &token, options).await.unwrap());
        tokio::time::advance(Duration::from_secs(8)).await;
        assert!(matches!(
            store.claim("k", fp("a"), options).await.unwrap(),
            Claim::InFlight
        ));
        // Past the renewed lease (8 + 10 s).
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(matches!(
            store.claim("k", fp("a"), options).await.unwrap(),
            Claim::Abandoned
        ));
        assert!(matches!(
            store.claim("k", fp("b"), options).await.unwrap(),
            Claim::Mismatch
        ));
        // Past the hold: the key is new again, and the old owner's claim is gone.
        tokio::time::advance(Duration::from_secs(100)).await;
        assert!(matches!(
            store.claim("k", fp("a"), options).await.unwrap(),
            Claim::Acquired(_)
        ));
        assert!(!store.renew("k", &token, options).await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn an_owner_past_its_lease_still_stores_its_answer() {
        let store = MemoryStore::new();
        let options =
            ClaimOptions::new(Duration::from_secs(10)).hold_abandoned(Duration::from_secs(100));
        let Claim::Acquired(token) = store.claim("k", fp("a"), options).await.unwrap() else {
            panic!("a new key is acquired");
        };
        tokio::time::advance(Duration::from_secs(50)).await;
        let day = Duration::from_secs(86_400);
        assert!(store.complete("k", &token, ok(), day).await.unwrap());
        assert!(matches!(
            store.claim("k", fp("a"), options).await.unwrap(),
            Claim::Completed(_)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_wake_when_the_key_completes() {
        let store = MemoryStore::new();
        let Claim::Acquired(token) = store
            .claim("k", fp("a"), Duration::from_secs(30).into())
            .await
            .unwrap()
        else {
            panic!("a new key is acquired");
        };
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move {
                let start = Instant::now();
                store.wait("k", Duration::from_secs(3600)).await.unwrap();
                start.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            store
                .complete("k", &token, ok(), Duration::from_secs(60))
                .await
                .unwrap()
        );
        assert_eq!(waiter.await.unwrap(), Duration::from_secs(2));
    }
}
