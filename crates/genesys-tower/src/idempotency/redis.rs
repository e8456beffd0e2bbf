//! A Redis store, shared by several processes (feature `redis`).

use std::fmt;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::Fingerprint;
use super::store::{Claim, ClaimToken, IdempotencyStore, StoreError, StoreFuture, StoredResponse};

/// Takes the key if it is absent (`SET NX PX`: the lock expires on its own if its owner dies),
/// otherwise returns what is there, in one atomic step.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return '' end
return redis.call('GET', KEYS[1])
",
    )
});

/// Replaces our lock with the response, only while the lock is still ours.
static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
",
    )
});

/// Deletes our lock, only while it is still ours.
static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
",
    )
});

/// An [`IdempotencyStore`] in Redis, so that several server processes behind one load balancer
/// agree on every key.
///
/// Each key is one Redis string under a prefix (`idempotency:` by default):
///
/// - claimed: `lock\n<fingerprint>\n<claim id>`, set with `SET NX PX <lock ttl>`. If its owner
///   crashes, Redis expires the lock and the next claim takes the key over;
/// - completed: `done\n<fingerprint>\n<response>`, with the retention as its expiry;
///   the response is [`StoredResponse::encode`]d (a JSON head line, then the raw body).
///
/// Claim, complete and release are Lua scripts, each one atomic round trip; complete and release
/// act only while the caller's lock is still there, so a worker whose lock expired cannot
/// overwrite the one that took over. Callers waiting for a key in flight poll it (every 25 ms by
/// default, [`poll_interval`](RedisStore::poll_interval)).
///
/// When Redis cannot be reached, every call fails with a [`StoreError`] quickly (a 1 s connect
/// timeout and a 2 s response timeout by default), which the server layer turns into 503.
///
/// ```no_run
/// use genesys_tower::idempotency::RedisStore;
/// use genesys_tower::idempotency::server::ServerIdempotencyLayer;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::open("redis://127.0.0.1:6379")?.prefix("orders-api:idem:");
/// let layer = ServerIdempotencyLayer::new().store(store).require_key(true);
/// # drop(layer);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: Arc<str>,
    poll_interval: Duration,
}

impl RedisStore {
    /// A store over the Redis at `url` (`redis://host:port/db`), connecting lazily: building it
    /// never fails because Redis is down; calls do. Call it inside a Tokio runtime.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        // The connection manager spawns its task at once: say so rather than panic.
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(StoreError::new(
                "RedisStore::open must be called inside a Tokio runtime",
            ));
        }
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::new(format!("invalid Redis URL: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| StoreError::new(format!("redis: {e}")))?;
        Ok(Self::from_connection_manager(conn))
    }

    /// A store over a connection manager you configured yourself.
    #[must_use]
    pub fn from_connection_manager(conn: ConnectionManager) -> Self {
        RedisStore {
            conn,
            prefix: Arc::from("idempotency:"),
            poll_interval: Duration::from_millis(25),
        }
    }

    /// The prefix of every key this store writes (default `idempotency:`). Give each service
    /// its own, so that their keys never meet.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Arc::from(prefix.into());
        self
    }

    /// How often a caller waiting for a key in flight looks again (default 25 ms).
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    fn redis_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection's settings may hold a password: left out.
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> u64 {
    // PX 0 is an error in Redis; a lock of less than a millisecond is one millisecond.
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn lock_record(token: &ClaimToken) -> String {
    format!("lock\n{}\n{}", token.fingerprint(), token.id())
}

fn redis_error(e: redis::RedisError) -> StoreError {
    StoreError::new(format!("redis: {e}"))
}

fn parse(record: &[u8], fingerprint: Fingerprint) -> Result<Claim, StoreError> {
    let malformed = || {
        StoreError::new(
            "redis holds a record this store did not write under its prefix (give the store a \
             prefix of its own)",
        )
    };
    let (tag, rest) = record.split_at_checked(5).ok_or_else(malformed)?;
    let (fp, rest) = rest.split_at_checked(33).ok_or_else(malformed)?;
    let stored: Fingerprint = std::str::from_utf8(&fp[..32])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(malformed)?;
    if fp[32] != b'\n' {
        return Err(malformed());
    }
    match tag {
        b"lock\n" if stored == fingerprint => Ok(Claim::InFlight),
        b"done\n" if stored == fingerprint => StoredResponse::decode(rest).map(Claim::Completed),
        b"lock\n" | b"done\n" => Ok(Claim::Mismatch),
        _ => Err(malformed()),
    }
}

impl IdempotencyStore for RedisStore {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        fingerprint: Fingerprint,
        lock_ttl: Duration,
    ) -> StoreFuture<'a, Claim> {
        Box::pin(async move {
            let token = ClaimToken::new(fingerprint);
            let mut conn = self.conn.clone();
            let record: Vec<u8> = CLAIM
                .key(self.redis_key(key))
                .arg(lock_record(&token))
                .arg(millis(lock_ttl))
                .invoke_async(&mut conn)
                .await
                .map_err(redis_error)?;
            if record.is_empty() {
                return Ok(Claim::Acquired(token));
            }
            parse(&record, fingerprint)
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: &'a ClaimToken,
        response: StoredResponse,
        retention: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut done = format!("done\n{}\n", token.fingerprint()).into_bytes();
            done.extend_from_slice(&response.encode());
            let mut conn = self.conn.clone();
            let stored: i64 = COMPLETE
                .key(self.redis_key(key))
                .arg(lock_record(token))
                .arg(done)
                .arg(millis(retention))
                .invoke_async(&mut conn)
                .await
                .map_err(redis_error)?;
            Ok(stored == 1)
        })
    }

    fn release<'a>(&'a self, key: &'a str, token: &'a ClaimToken) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let _: i64 = RELEASE
                .key(self.redis_key(key))
                .arg(lock_record(token))
                .invoke_async(&mut conn)
                .await
                .map_err(redis_error)?;
            Ok(())
        })
    }

    fn wait<'a>(&'a self, _key: &'a str, max_wait: Duration) -> StoreFuture<'a, ()> {
        let pause = self.poll_interval.min(max_wait);
        Box::pin(async move {
            tokio::time::sleep(pause).await;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http::{HeaderMap, Method, StatusCode};

    #[test]
    fn records_parse_back() {
        let fp = Fingerprint::of(&Method::POST, &"/x".parse().unwrap(), b"{}");
        let other = Fingerprint::of(&Method::POST, &"/y".parse().unwrap(), b"{}");
        let token = ClaimToken::new(fp);
        let lock = lock_record(&token);
        assert!(matches!(parse(lock.as_bytes(), fp), Ok(Claim::InFlight)));
        assert!(matches!(parse(lock.as_bytes(), other), Ok(Claim::Mismatch)));

        let response = StoredResponse::new(StatusCode::OK, HeaderMap::new(), Bytes::from("ok\n"));
        let mut done = format!("done\n{fp}\n").into_bytes();
        done.extend_from_slice(&response.encode());
        match parse(&done, fp) {
            Ok(Claim::Completed(r)) => assert_eq!(r, response),
            other => panic!("expected the response, got {other:?}"),
        }
        assert!(parse(b"something else", fp).is_err());
    }
}
