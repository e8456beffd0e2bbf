//! The token cache shared by every clone: one fetch at a time, its outcome shared by everyone
//! who waited for it.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{PoisonError, RwLock, RwLockWriteGuard};
use std::time::Duration;

use http::HeaderValue;
use thread_local::ThreadLocal;
use tokio::time::Instant;

use super::error::FetchTimedOut;
use super::{Error, Token, TokenSource};
use crate::Metrics;

/// A token with its `Authorization` value, built once per token.
#[derive(Clone)]
pub(crate) struct Cached {
    pub(crate) token: Token,
    pub(crate) header: HeaderValue,
}

impl Cached {
    /// The same token and header in allocations of their own (see [`Cache::current`]).
    fn own_copy(&self) -> Cached {
        let mut header =
            HeaderValue::from_bytes(self.header.as_bytes()).unwrap_or_else(|_| self.header.clone());
        header.set_sensitive(true);
        Cached {
            token: self.token.own_copy(),
            header,
        }
    }
}

#[derive(Default)]
pub(crate) struct Cache {
    /// Written when a fetch ends or a token is refused; read by a request only when its
    /// thread's copy is out of date.
    state: RwLock<State>,
    /// Which `state.current` is in force: raised (under the write lock) whenever it changes.
    /// A request reads it, and nothing else shared, when its thread's copy is up to date.
    version: AtomicU64,
    /// Each thread's copy of the current token. Every request clones the token and its header
    /// value: from one copy shared by every thread, each clone (and its drop) would move that
    /// copy's reference count from core to core, and so would the read lock; a thread's own
    /// copy keeps both on its core. One per thread that has sent with this cache, dropped with
    /// it.
    copies: ThreadLocal<RefCell<ThreadCopy>>,
    /// Held by the one request that is fetching; the others queue behind it.
    refresh: tokio::sync::Mutex<()>,
}

/// A thread's copy of the current token, and the version it is a copy of.
struct ThreadCopy {
    /// `None` before the first copy (versions start at 0).
    version: Option<u64>,
    cached: Option<Cached>,
    /// The margin the copy was made for, and when the token is due for refresh with it
    /// (`None`: never), so that a request compares two instants rather than working the
    /// margin out again from the token's lifetime.
    margin: Duration,
    refresh_at: Option<Instant>,
}

#[derive(Default)]
struct State {
    current: Option<Cached>,
    /// Counts finished fetches, so that a waiter can tell that one finished while it waited.
    generation: u64,
    /// The outcome of the last fetch when it failed.
    last_error: Option<Error>,
    /// After a failed fetch, no other before this instant: meanwhile its error is the answer
    /// (a token that has not expired still serves).
    retry_at: Option<Instant>,
    /// Fetches failed in a row: the pause doubles with each.
    failures: u32,
}

/// The pause after the first failed fetch; it doubles with each failure in a row, up to
/// [`MAX_PAUSE`]. A source that fails at once (a revoked secret) is not called again by every
/// request that comes, which would hammer the login host as fast as requests arrive.
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause between two fetches after failures: a source that recovers is called
/// again within it, and requests that need a token fail at once meanwhile.
const MAX_PAUSE: Duration = Duration::from_secs(10);

/// The pause after `failures` failed fetches in a row (at least one).
fn pause(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_PAUSE.saturating_mul(1 << doublings).min(MAX_PAUSE)
}

#[derive(Clone, Copy)]
enum Reason {
    Missing,
    Expired,
    RefreshMargin,
    Unauthorized,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Missing => "no token yet",
            Reason::Expired => "token expired",
            Reason::RefreshMargin => "token about to expire",
            Reason::Unauthorized => "token rejected with 401",
        }
    }
}

/// The margin actually used for `token`: `margin`, but at most a fifth of the token's lifetime.
pub(crate) fn effective_margin(margin: Duration, token: &Token) -> Duration {
    token
        .lifetime()
        .map_or(margin, |lifetime| margin.min(lifetime / 5))
}

fn expired(token: &Token, now: Instant) -> bool {
    token.expires_at().is_some_and(|at| now >= at)
}

fn due(token: &Token, margin: Duration, now: Instant) -> bool {
    token
        .expires_at()
        .is_some_and(|at| crate::time::after(now, effective_margin(margin, token)) >= at)
}

/// The first instant at which `token` is [`due`] with `margin` (`None`: never).
fn refresh_at(token: &Token, margin: Duration) -> Option<Instant> {
    let at = token.expires_at()?;
    // The margin is at most a fifth of the lifetime, so this lands after the token's issue and
    // cannot underflow; `at` itself would only make the token due later, never sooner.
    Some(
        at.checked_sub(effective_margin(margin, token))
            .unwrap_or(at),
    )
}

impl Cache {
    fn lock(&self) -> RwLockWriteGuard<'_, State> {
        // Every critical section leaves the state consistent, so a poisoned lock is still sound.
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether a token is cached, and when it expires (for `Debug`, without the value).
    pub(crate) fn peek(&self) -> Option<Option<Instant>> {
        self.lock().current.as_ref().map(|c| c.token.expires_at())
    }

    /// The common case: the cached token, when there is one and it is not due for refresh yet,
    /// without waiting. Read from this thread's copy when that is of the version in force (one
    /// atomic load, no write to anything another thread reads); otherwise under the shared
    /// lock, and the thread's copy renewed.
    pub(crate) fn current(&self, margin: Duration) -> Option<Cached> {
        // The clock read of the call, when a layer above (the retry layer) lends it.
        self.current_at(margin, crate::time::now())
    }

    /// [`current`](Self::current), judged at `now` (a clock read the caller already made).
    #[inline(always)]
    pub(crate) fn current_at(&self, margin: Duration, now: Instant) -> Option<Cached> {
        let version = self.version.load(Ordering::Acquire);
        let copy = self.copies.get_or(|| {
            RefCell::new(ThreadCopy {
                version: None,
                cached: None,
                margin,
                refresh_at: None,
            })
        });
        let borrowed = copy.try_borrow();
        let up_to_date = match &borrowed {
            Ok(c) if c.version == Some(version) => {
                if c.margin == margin {
                    // The common case: one comparison, and a token due for refresh not cloned.
                    return c
                        .cached
                        .as_ref()
                        .filter(|_| c.refresh_at.is_none_or(|at| now < at))
                        .cloned();
                }
                // Another layer's margin over the same cache.
                Some(c.cached.clone())
            }
            _ => None,
        };
        // Released before the copy is renewed, which borrows it to write.
        drop(borrowed);
        let current = match up_to_date {
            Some(current) => current,
            None => self.renew_copy(copy, margin),
        };
        current.filter(|c| !due(&c.token, margin, now))
    }

    /// The current token, read under the shared lock, and this thread's `copy` of it renewed.
    #[cold]
    fn renew_copy(&self, copy: &RefCell<ThreadCopy>, margin: Duration) -> Option<Cached> {
        let (version, current) = {
            let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
            // Read under the lock, which every change of `current` holds to write both.
            let version = self.version.load(Ordering::Acquire);
            (version, state.current.as_ref().map(Cached::own_copy))
        };
        if let Ok(mut copy) = copy.try_borrow_mut() {
            *copy = ThreadCopy {
                version: Some(version),
                refresh_at: current.as_ref().and_then(|c| refresh_at(&c.token, margin)),
                margin,
                cached: current.clone(),
            };
        }
        current
    }

    /// Sets the current token (under the write lock), and makes every thread's copy out of date.
    fn set_current(&self, state: &mut State, current: Option<Cached>) {
        state.current = current;
        self.version.fetch_add(1, Ordering::Release);
    }

    /// A token to send. `rejected` is the token a request just saw refused with 401: it is
    /// dropped from the cache if it is still there, and a newer one is returned (fetched if
    /// nobody has fetched one since).
    pub(crate) async fn token<T: TokenSource>(
        &self,
        source: &T,
        margin: Duration,
        fetch_timeout: Option<Duration>,
        metrics: &Metrics,
        rejected: Option<&Token>,
    ) -> Result<Cached, Error> {
        if rejected.is_none()
            && let Some(cached) = self.current(margin)
        {
            return Ok(cached);
        }
        let (generation, still_valid, reason) = {
            let mut state = self.lock();
            if let Some(rejected) = rejected {
                // Compare values: if another request already replaced the rejected token, keep
                // the newer one.
                if state
                    .current
                    .as_ref()
                    .is_some_and(|c| c.token.same_value(rejected))
                {
                    self.set_current(&mut state, None);
                }
            }
            let now = Instant::now();
            if let (Some(at), Some(err)) = (state.retry_at, &state.last_error)
                && now < at
            {
                // A fetch failed a moment ago: not tried again before its pause is over.
                return match &state.current {
                    Some(c) if !expired(&c.token, now) => Ok(c.clone()),
                    _ => Err(err.clone()),
                };
            }
            match &state.current {
                Some(c) if !due(&c.token, margin, now) => return Ok(c.clone()),
                Some(c) if !expired(&c.token, now) => {
                    (state.generation, Some(c.clone()), Reason::RefreshMargin)
                }
                Some(_) => (state.generation, None, Reason::Expired),
                None if rejected.is_some() => (state.generation, None, Reason::Unauthorized),
                None => (state.generation, None, Reason::Missing),
            }
        };

        let _refreshing = match self.refresh.try_lock() {
            Ok(guard) => guard,
            Err(_) => match still_valid {
                // Someone is fetching already; the current token is still good meanwhile.
                Some(cached) => return Ok(cached),
                None => self.refresh.lock().await,
            },
        };

        {
            let state = self.lock();
            if state.generation != generation {
                // A fetch finished while this request waited: share its outcome, good or bad,
                // rather than fetch again.
                match (&state.current, &state.last_error) {
                    (Some(c), _) if !expired(&c.token, Instant::now()) => return Ok(c.clone()),
                    (_, Some(err)) => return Err(err.clone()),
                    // That fetch gave a token that has expired already: fetch again.
                    _ => {}
                }
            }
        }

        tracing::debug!(reason = reason.as_str(), "fetching a new access token");
        metrics.record_token_fetch();
        let fetch = source.fetch();
        let fetched = match fetch_timeout {
            None => fetch.await,
            Some(limit) => tokio::time::timeout(limit, fetch)
                .await
                .unwrap_or_else(|_| Err(Box::new(FetchTimedOut(limit)))),
        };
        let fetched = fetched.map_err(Error::token_source).and_then(|token| {
            let mut header = HeaderValue::try_from(format!("Bearer {}", token.secret()))
                .map_err(|_| Error::invalid_token())?;
            header.set_sensitive(true);
            Ok(Cached { token, header })
        });

        let mut state = self.lock();
        state.generation += 1;
        match fetched {
            Ok(cached) => {
                tracing::debug!(
                    expires_in_secs = cached.token.lifetime().map(|d| d.as_secs()),
                    "access token refreshed"
                );
                self.set_current(&mut state, Some(cached.clone()));
                state.last_error = None;
                state.retry_at = None;
                state.failures = 0;
                Ok(cached)
            }
            Err(err) => {
                state.failures = state.failures.saturating_add(1);
                let pause = pause(state.failures);
                tracing::warn!(
                    error = %err,
                    pause_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
                    "token source failed; not called again before the pause is over"
                );
                state.retry_at = Some(crate::time::from_now(pause));
                state.last_error = Some(err.clone());
                // A token that has not expired yet still serves; the first request after the
                // pause tries the source again, since the token is still due for refresh.
                match &state.current {
                    Some(c) if !expired(&c.token, Instant::now()) => Ok(c.clone()),
                    _ => Err(err),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(crate::fuzz_cases(2000)))]

        /// The instant a thread's copy keeps says what `due` says, at every instant.
        #[test]
        fn refresh_at_agrees_with_due(
            lifetime_ms in proptest::option::of(0u64..10_000_000),
            margin_ms in 0u64..10_000_000,
            at_ms in 0u64..12_000_000,
        ) {
            let token = Token::new("t", lifetime_ms.map(Duration::from_millis));
            let margin = Duration::from_millis(margin_ms);
            let now = token.issued_at() + Duration::from_millis(at_ms);
            let by_instant = refresh_at(&token, margin).is_none_or(|r| now < r);
            proptest::prop_assert_eq!(by_instant, !due(&token, margin, now));
        }
    }

    /// A cache holding a token `t` issued now for 600 s.
    fn holding_a_token_for_600_s() -> Cache {
        let cache = Cache::default();
        let token = Token::new("t", Some(Duration::from_secs(600)));
        let header = HeaderValue::from_static("Bearer t");
        {
            let mut state = cache.lock();
            cache.set_current(&mut state, Some(Cached { token, header }));
        }
        cache
    }

    /// Two layers with different margins over one cache each get their own answer.
    #[tokio::test(start_paused = true)]
    async fn each_margin_is_judged_on_its_own() {
        let cache = holding_a_token_for_600_s();
        let (short, long) = (Duration::from_secs(10), Duration::from_secs(100));
        tokio::time::advance(Duration::from_secs(550)).await;
        for _ in 0..2 {
            assert!(cache.current(short).is_some());
            assert!(cache.current(long).is_none());
        }
        tokio::time::advance(Duration::from_secs(45)).await;
        assert!(cache.current(short).is_none());
    }

    /// A thread renews its copy once per token, not once per request: the requests after the
    /// first share the copy's header bytes (an allocation of the thread's own).
    #[test]
    fn a_threads_copy_is_made_once_per_token() {
        let cache = holding_a_token_for_600_s();
        let margin = Duration::from_secs(60);
        // Kept, so that an allocation freed by one cannot be handed to the next.
        let tokens: Vec<Cached> = (0..4).filter_map(|_| cache.current(margin)).collect();
        assert_eq!(tokens.len(), 4);
        let first = tokens[0].header.as_bytes().as_ptr();
        assert!(tokens.iter().all(|c| c.header.as_bytes().as_ptr() == first));
    }

    /// The token's expiry is judged at the call's clock read when a layer above lends it.
    #[cfg(feature = "retry")]
    #[tokio::test(start_paused = true)]
    async fn a_lent_clock_read_judges_the_token() {
        let cache = holding_a_token_for_600_s();
        let margin = Duration::from_secs(60);
        let past_refresh = Instant::now() + Duration::from_secs(590);
        assert!(crate::time::lend(past_refresh, || cache.current(margin)).is_none());
        assert!(cache.current(margin).is_some(), "without a lend, the clock");
    }
}
