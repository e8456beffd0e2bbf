//! [`RedisTokenCache`]: one token for a fleet of processes, kept in Redis (feature `redis`).

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Script;
use redis::aio::ConnectionManager;
use tokio::time::Instant;

use super::token::{Token, TokenSource};
use crate::BoxError;

/// Deletes the shared token only if it is still the one given (so that a process that was
/// refused a token does not delete the new one another process just stored).
static FORGET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// The shared record and the key's own time to live (ms; negative: none), read at once.
static READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local record = redis.call('GET', KEYS[1])
if not record then return nil end
return {record, redis.call('PTTL', KEYS[1])}
",
    )
});

/// Drops the fetch lock, only if it is still ours.
static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// How long a shared token must still live to be handed out.
const MIN_LIFETIME: Duration = Duration::from_secs(5);

/// One token for a fleet of processes: a [`TokenSource`] that keeps the token of an inner
/// source in Redis, so that N processes with the same OAuth client fetch one token between them
/// instead of N (the login host's own rate limit is small), with one fetch for the whole fleet
/// when it expires or the API refuses it.
///
/// For each fetch the [`AuthLayer`](super::AuthLayer) asks for:
///
/// - a token in Redis that this process has not been given yet is handed out at once (another
///   process fetched it);
/// - the token this process was given last means this process wants a new one (it is about to
///   expire, or the API answered 401): it is deleted from Redis (only if it is still there, so
///   a newer one is never deleted), then
/// - one process takes a lock in Redis (`SET NX PX`) and fetches from the inner source; the
///   others wait for its token (polling every 50 ms, for at most the lock's lifetime).
///
/// When Redis cannot be reached (or does not answer within 2 s), or the fetching process does
/// not store a token in time, the process fetches from its inner source itself and says so once
/// in the log: a fleet never stalls on Redis.
///
/// The token is stored in Redis as it is (with its expiry), under the key you give: keep that
/// Redis private, as you would the client secret. It never reaches a log or `Debug` output.
///
/// ```no_run
/// use genesys_tower::auth::{AuthLayer, RedisTokenCache, Token, token_source_fn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), genesys_tower::BoxError> {
/// let login = token_source_fn(|| async { Ok(Token::new("from the login host", None)) });
/// let shared = RedisTokenCache::open("redis://127.0.0.1:6379", "token:my-org:my-client", login)?;
/// let layer = AuthLayer::new(shared);
/// # drop(layer);
/// # Ok(()) }
/// ```
pub struct RedisTokenCache<S> {
    inner: S,
    conn: ConnectionManager,
    key: Arc<str>,
    lock_key: Arc<str>,
    lock_ttl: Duration,
    timeout: Duration,
    /// The value of the token this process was handed last.
    last: Mutex<Option<Arc<str>>>,
    degraded: AtomicBool,
}

impl<S: TokenSource> RedisTokenCache<S> {
    /// A cache of `inner`'s token under `key` in the Redis at `url`, connecting lazily (building
    /// it never fails because Redis is down). Call it inside a Tokio runtime.
    pub fn open(url: &str, key: impl Into<String>, inner: S) -> Result<Self, BoxError> {
        let conn =
            crate::redis_conn::connect(url, "RedisTokenCache::open", Duration::from_secs(2))?;
        Ok(Self::from_connection_manager(conn, key, inner))
    }

    /// A cache over a connection manager you configured yourself.
    pub fn from_connection_manager(
        conn: ConnectionManager,
        key: impl Into<String>,
        inner: S,
    ) -> Self {
        let key = key.into();
        RedisTokenCache {
            inner,
            conn,
            lock_key: Arc::from(format!("{key}:fetching")),
            key: Arc::from(key),
            lock_ttl: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
            last: Mutex::new(None),
            degraded: AtomicBool::new(false),
        }
    }

    /// How long one process may take to fetch the fleet's token before the others fetch their
    /// own (default 10 s; taken as at least 100 ms and at most an hour). A fetch through this
    /// cache may wait that long and then fetch: the auth layer's
    /// [`fetch_timeout`](crate::auth::AuthLayer::fetch_timeout) must leave room for both.
    #[must_use]
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl.clamp(Duration::from_millis(100), Duration::from_secs(3600));
        self
    }

    /// Whether this process fetched its own token last time because Redis could not be reached.
    #[must_use]
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    fn last(&self) -> Option<Arc<str>> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn remember(&self, token: &Token) {
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::from(token.secret()));
    }

    async fn bounded<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, BoxError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(format!("redis: {e}").into()),
            Err(_) => Err(format!("no answer from Redis within {:?}", self.timeout).into()),
        }
    }

    /// The shared token, if there is one this process has not been given yet and it lives long
    /// enough. Forgets the one this process was given last.
    async fn read(&self) -> Result<Option<Token>, BoxError> {
        let mut conn = self.conn.clone();
        let read: Option<(String, i64)> = self
            .bounded(READ.key(&*self.key).invoke_async(&mut conn))
            .await?;
        let (stored, ttl_ms) = match read {
            Some((record, ttl_ms)) => (Some(record), ttl_ms),
            None => (None, -1),
        };
        let Some((expires_ms, value)) = stored.as_deref().and_then(|s| s.split_once('\n')) else {
            return Ok(None);
        };
        if self.last().as_deref() == Some(value) {
            // This process wants a new token: the one it has is expiring or was refused.
            let mut forget = FORGET.key(&*self.key);
            forget.arg(stored.as_deref().unwrap_or_default());
            self.bounded(forget.invoke_async::<i64>(&mut conn)).await?;
            return Ok(None);
        }
        // The key lives as long as the token it holds (it is stored so): a bound that, unlike
        // the expiry in the record (the storing process's wall clock), no clock can skew.
        let ttl = u64::try_from(ttl_ms)
            .ok()
            .filter(|&ms| ms > 0)
            .map(Duration::from_millis);
        let lifetime = match (expires_ms.parse::<u64>(), ttl) {
            // No expiry given by the source.
            (Ok(0), _) => None,
            // The key's time to live alone: the record's expiry is on the storing process's
            // clock, and a clock of this process ahead of that one would cut the token short
            // (and, under the minimum, have this process fetch another for the whole fleet).
            (Ok(_), Some(ttl)) => {
                if ttl < MIN_LIFETIME {
                    return Ok(None);
                }
                Some(ttl)
            }
            // An expiry on a key that never expires, or no number: not a record this cache
            // wrote; this process fetches its own.
            (Ok(_), None) | (Err(_), _) => return Ok(None),
        };
        Ok(Some(Token::new(value, lifetime)))
    }

    /// Fetches from the inner source under the fleet's lock, and stores the token for the others.
    async fn fetch_for_the_fleet(&self, lock_id: &str) -> Result<Token, BoxError> {
        let token = self.inner.fetch().await;
        let mut conn = self.conn.clone();
        if let Ok(token) = &token {
            let expires_ms = token
                .lifetime()
                .map_or(0, |l| unix_ms(SystemTime::now()).saturating_add(millis(l)));
            let record = format!("{expires_ms}\n{}", token.secret());
            let mut set = redis::cmd("SET");
            set.arg(&*self.key).arg(record);
            if let Some(lifetime) = token.lifetime() {
                set.arg("PX").arg(millis(lifetime).max(1));
            }
            if let Err(e) = self.bounded(set.query_async::<()>(&mut conn)).await {
                tracing::warn!(error = %e, "shared token not stored: the others fetch their own");
            }
        }
        self.unlock(lock_id).await;
        token
    }

    /// Lets the fetch lock go, if it is still ours (it expires on its own otherwise).
    async fn unlock(&self, lock_id: &str) {
        let mut conn = self.conn.clone();
        let mut unlock = UNLOCK.key(&*self.lock_key);
        unlock.arg(lock_id);
        let _ = self.bounded(unlock.invoke_async::<i64>(&mut conn)).await;
    }

    async fn fetch_shared(&self) -> Result<Result<Token, BoxError>, BoxError> {
        let deadline = crate::time::after(Instant::now(), self.lock_ttl);
        let lock_id = uuid::Uuid::new_v4().simple().to_string();
        loop {
            if let Some(token) = self.read().await? {
                return Ok(Ok(token));
            }
            let mut conn = self.conn.clone();
            let mut lock = redis::cmd("SET");
            lock.arg(&*self.lock_key)
                .arg(&lock_id)
                .arg("NX")
                .arg("PX")
                .arg(millis(self.lock_ttl));
            let locked: Option<String> = self.bounded(lock.query_async(&mut conn)).await?;
            if locked.is_some() {
                // Another process may have stored a token and let the lock go between our look
                // and our lock: look again before fetching.
                if let Some(token) = self.read().await? {
                    self.unlock(&lock_id).await;
                    return Ok(Ok(token));
                }
                return Ok(self.fetch_for_the_fleet(&lock_id).await);
            }
            if Instant::now() >= deadline {
                return Err("no token from the process fetching it for the fleet in time".into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl<S: TokenSource> TokenSource for RedisTokenCache<S> {
    async fn fetch(&self) -> Result<Token, BoxError> {
        let token = match self.fetch_shared().await {
            Ok(fetched) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!(key = %self.key, "shared token: Redis reached again");
                }
                fetched?
            }
            Err(e) => {
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        key = %self.key,
                        error = %e,
                        "shared token: fetching this process's own token"
                    );
                }
                self.inner.fetch().await?
            }
        };
        self.remember(&token);
        Ok(token)
    }
}

impl<S> fmt::Debug for RedisTokenCache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No token, and no connection settings (they may hold a password).
        f.debug_struct("RedisTokenCache")
            .field("key", &self.key)
            .field("lock_ttl", &self.lock_ttl)
            .field("degraded", &self.degraded.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}
