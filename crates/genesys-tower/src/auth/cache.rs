//! The token cache shared by every clone: one fetch at a time, its outcome shared by everyone
//! who waited for it.

use std::sync::{PoisonError, RwLock, RwLockWriteGuard};
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use super::{Error, Token, TokenSource};
use crate::Metrics;

/// A token with its `Authorization` value, built once per token.
#[derive(Clone)]
pub(crate) struct Cached {
    pub(crate) token: Token,
    pub(crate) header: HeaderValue,
}

#[derive(Default)]
pub(crate) struct Cache {
    /// Read by every request (a shared lock: requests on several cores do not queue behind each
    /// other), written when a fetch ends or a token is refused.
    state: RwLock<State>,
    /// Held by the one request that is fetching; the others queue behind it.
    refresh: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    current: Option<Cached>,
    /// Counts finished fetches, so that a waiter can tell that one finished while it waited.
    generation: u64,
    /// The outcome of the last fetch when it failed.
    last_error: Option<Error>,
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
    /// read under the shared lock, without waiting.
    pub(crate) fn current(&self, margin: Duration) -> Option<Cached> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        state
            .current
            .as_ref()
            .filter(|c| !due(&c.token, margin, Instant::now()))
            .cloned()
    }

    /// A token to send. `rejected` is the token a request just saw refused with 401: it is
    /// dropped from the cache if it is still there, and a newer one is returned (fetched if
    /// nobody has fetched one since).
    pub(crate) async fn token<T: TokenSource>(
        &self,
        source: &T,
        margin: Duration,
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
                    state.current = None;
                }
            }
            let now = Instant::now();
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
        let fetched = source
            .fetch()
            .await
            .map_err(Error::token_source)
            .and_then(|token| {
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
                state.current = Some(cached.clone());
                state.last_error = None;
                Ok(cached)
            }
            Err(err) => {
                tracing::warn!(error = %err, "token source failed");
                state.last_error = Some(err.clone());
                // A token that has not expired yet still serves; the next request will try the
                // source again, since the token is still due for refresh.
                match &state.current {
                    Some(c) if !expired(&c.token, Instant::now()) => Ok(c.clone()),
                    _ => Err(err),
                }
            }
        }
    }
}
