//! A Redis store, shared by several processes (feature `redis`).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::Script;
use redis::aio::ConnectionManager;

use super::Fingerprint;
use super::store::{
    Claim, ClaimOptions, ClaimToken, IdempotencyStore, StoreError, StoreFuture, StoredResponse,
};

/// Claims a key in one atomic step. In order:
///
/// 1. a claim that arrives after its caller's deadline (Redis was paused, the command waited in
///    a socket buffer) does nothing: `late`;
/// 2. the store's epoch: a hash without expiry, created by the first claim. If a store that knew
///    an epoch finds none or another one, Redis lost its data: the epoch is marked lost, with a
///    quarantine during which absent keys are refused (`lost`), because they may have been
///    completed before. Marked once per epoch, so that a store that learns of the loss after an
///    operator lifted the quarantine does not start another;
/// 3. a record that is there is returned (`found`), for the caller to read;
/// 4. otherwise the key is locked under a lease, with an expiry of lease plus hold.
///
/// Every answer carries the epoch and Redis's clock (ms), from which the store learns the offset
/// between its clock and Redis's.
static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local clock = string.format('%.0f', now)
local deadline = tonumber(ARGV[4])
if deadline > 0 and now > deadline then return {'late', '', clock, ''} end
local epoch = redis.call('HGET', KEYS[2], 'id')
if not epoch then
  epoch = ARGV[6]
  redis.call('HSET', KEYS[2], 'id', epoch, 'quarantine_until', '0')
end
if ARGV[5] ~= '' and ARGV[5] ~= epoch and redis.call('HGET', KEYS[2], 'lost') ~= '1' then
  redis.call('HSET', KEYS[2], 'lost', '1', 'quarantine_until', string.format('%.0f', now + tonumber(ARGV[7])))
end
local record = redis.call('GET', KEYS[1])
if record then return {'found', epoch, clock, record} end
local quarantine = tonumber(redis.call('HGET', KEYS[2], 'quarantine_until')) or 0
if now < quarantine then return {'lost', epoch, clock, ''} end
local lease = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1] .. string.format('%.0f', now + lease), 'PX', lease + tonumber(ARGV[3]))
return {'acquired', epoch, clock, ''}
",
    )
});

/// Extends our lease, or puts our claim back if the record is gone (Redis lost it while we
/// worked: nobody else holds the key, and we are still at work). A renewal that reaches Redis
/// after its deadline (it waited in a paused server) does nothing, and says so (-1): its owner
/// may be done, or may renew again.
/// Every answer carries Redis's clock (ms), as a claim's does.
static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local clock = string.format('%.0f', now)
local deadline = tonumber(ARGV[4])
if deadline > 0 and now > deadline then return {-1, clock} end
local record = redis.call('GET', KEYS[1])
if record and string.sub(record, 1, #ARGV[1]) ~= ARGV[1] then return {0, clock} end
local lease = tonumber(ARGV[2])
redis.call('SET', KEYS[1], ARGV[1] .. string.format('%.0f', now + lease), 'PX', lease + tonumber(ARGV[3]))
return {1, clock}
",
    )
});

/// Replaces our claim with the response, lease ended or not; or writes it if the record is gone.
static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local record = redis.call('GET', KEYS[1])
if record and string.sub(record, 1, #ARGV[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
",
    )
});

/// Deletes our claim, only while it is still ours.
const RELEASE_SCRIPT: &str = r"
local record = redis.call('GET', KEYS[1])
if not record or string.sub(record, 1, #ARGV[1]) ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
";
static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_SCRIPT));

/// The default quarantine after Redis lost its records: 24 hours, the default retention.
pub const DEFAULT_LOSS_QUARANTINE: Duration = Duration::from_secs(24 * 3600);

/// An [`IdempotencyStore`] in Redis, so that several server processes behind one load balancer
/// agree on every key.
///
/// Each key is one Redis string under a prefix (`idempotency:` by default):
///
/// - claimed: `lock\n<fingerprint>\n<claim id>\n<lease end, ms>`, expiring after the lease plus
///   the hold of an abandoned claim ([`ClaimOptions`]);
/// - completed: `done\n<fingerprint>\n<response>`, with the retention as its expiry;
///   the response is [`StoredResponse::encode`]d (a JSON head line, then the raw body).
///
/// Claim, renew, complete and release are Lua scripts, each one atomic round trip on Redis's own
/// clock; complete and release act only on the caller's own claim, so a worker that lost its
/// claim cannot overwrite the one that took over. Callers waiting for a key in flight poll it
/// (every 25 ms by default, [`poll_interval`](RedisStore::poll_interval)).
///
/// # Faults
///
/// - **Redis unreachable or paused:** every call fails with a [`StoreError`] quickly (a 1 s
///   connect timeout and a 2 s response timeout by default), which the server layer turns into
///   503. A claim that reaches Redis after its caller's deadline ([`ClaimOptions::not_after`]:
///   Redis was paused and ran the queued command when it resumed) does nothing, so it locks no
///   key. The deadline is compared on Redis's clock: the store learns the offset between the
///   clocks from every answer.
/// - **Redis lost its data** (restarted without persistence, flushed, failed over to a replica
///   that had not received the last writes): the store keeps an *epoch* record under the prefix.
///   A store that knew the epoch and finds it gone knows that every record was lost; for the
///   quarantine that follows ([`loss_quarantine`](RedisStore::loss_quarantine), 24 h by default)
///   a claim of a key that has no record is answered [`Claim::Lost`] rather than run, because the
///   key may have been completed before the loss. [`end_quarantine`](RedisStore::end_quarantine)
///   lifts it once an operator has checked. Three losses cannot be seen this way: one while no
///   process using the prefix was running, one seen first by a process that started after it
///   (it knows no epoch yet), and a failover to a replica that had the epoch record but not the
///   last records. Only persistence prevents the first two; the third needs each write to be
///   on a replica before it is answered, which this store does not ask Redis for (`WAIT`).
/// - **Persistence:** the exactly-once promise holds across a restart of Redis only if its data
///   survives it: `appendonly yes`, with `appendfsync always` to survive a crash of the machine
///   (with `everysec`, the last second of writes may be lost), and a `maxmemory-policy` of
///   `noeviction` (any other policy may evict records before their time).
///   [`durability`](RedisStore::durability) reads these settings;
///   [`open`](RedisStore::open) checks them once in the background and logs a warning when
///   they fall short.
///
/// On Redis Cluster, put a hash tag in the prefix (`{orders}:idem:`): each claim touches the
/// key's record and the epoch record, which must live in one slot.
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
    loss_quarantine: Duration,
    state: Arc<State>,
}

/// What a store learns from Redis's answers, shared by its clones.
struct State {
    /// The epoch this store knows; empty before the first answer.
    epoch: Mutex<String>,
    /// Redis's clock minus ours, in ms.
    offset_ms: AtomicI64,
    offset_known: AtomicBool,
}

impl State {
    fn new() -> Self {
        State {
            epoch: Mutex::new(String::new()),
            offset_ms: AtomicI64::new(0),
            offset_known: AtomicBool::new(false),
        }
    }
}

impl RedisStore {
    /// A store over the Redis at `url` (`redis://host:port/db`), connecting lazily: building it
    /// never fails because Redis is down; calls do. Call it inside a Tokio runtime.
    ///
    /// In the background, it reads Redis's persistence settings once and logs a warning when
    /// they cannot keep the exactly-once promise across a restart ([`durability`]).
    ///
    /// [`durability`]: RedisStore::durability
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let conn = crate::redis_conn::connect(url, "RedisStore::open", Duration::from_secs(2))
            .map_err(StoreError::new)?;
        let store = Self::from_connection_manager(conn);
        let checked = store.clone();
        // `connect` checked that a runtime is there.
        tokio::spawn(async move { checked.warn_if_not_durable().await });
        Ok(store)
    }

    /// A store over a connection manager you configured yourself.
    #[must_use]
    pub fn from_connection_manager(conn: ConnectionManager) -> Self {
        RedisStore {
            conn,
            prefix: Arc::from("idempotency:"),
            poll_interval: Duration::from_millis(25),
            loss_quarantine: DEFAULT_LOSS_QUARANTINE,
            state: Arc::new(State::new()),
        }
    }

    /// The prefix of every key this store writes (default `idempotency:`). Give each service
    /// its own, so that their keys never meet.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Arc::from(prefix.into());
        // Another prefix has an epoch of its own: what this store learned does not apply.
        self.state = Arc::new(State::new());
        self
    }

    /// How often a caller waiting for a key in flight looks again (default 25 ms).
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How long, after this store sees that Redis lost its records, keys without a record are
    /// refused ([`Claim::Lost`]) instead of run (default 24 hours). Make it the longest retention
    /// of the layers using this prefix: past it, every lost record would have expired anyway.
    /// `Duration::ZERO` only logs the loss and carries on, accepting that a key completed before
    /// the loss runs again.
    #[must_use]
    pub fn loss_quarantine(mut self, quarantine: Duration) -> Self {
        self.loss_quarantine = quarantine;
        self
    }

    /// Ends a quarantine after a loss, for every process using this prefix: keys without a
    /// record run again. Call it once the work done before the loss has been checked.
    pub async fn end_quarantine(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("HSET")
            .arg(self.epoch_key())
            .arg("quarantine_until")
            .arg(0)
            .query_async::<i64>(&mut conn)
            .await
            .map_err(redis_error)?;
        Ok(())
    }

    /// Reads the Redis settings that decide whether records survive a restart of Redis.
    pub async fn durability(&self) -> Result<Durability, StoreError> {
        let mut conn = self.conn.clone();
        let mut get = async |name: &str| -> Result<Option<String>, StoreError> {
            let pairs: Vec<String> = redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async(&mut conn)
                .await
                .map_err(redis_error)?;
            Ok(pairs.get(1).cloned())
        };
        Ok(Durability {
            appendonly: get("appendonly").await?,
            appendfsync: get("appendfsync").await?,
            maxmemory_policy: get("maxmemory-policy").await?,
        })
    }

    async fn warn_if_not_durable(&self) {
        match self.durability().await {
            Ok(durability) => {
                for problem in durability.problems() {
                    tracing::warn!(prefix = %self.prefix, "idempotency store: {problem}");
                }
            }
            Err(e) => tracing::warn!(
                error = %e,
                "idempotency store: could not read Redis's persistence settings (CONFIG GET); \
                 make sure appendonly is yes and maxmemory-policy is noeviction"
            ),
        }
    }

    fn redis_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn epoch_key(&self) -> String {
        // A NUL byte: no key read from a header can spell it.
        format!("{}\0genesys-tower:epoch", self.prefix)
    }

    /// A deadline on our clock, in ms on Redis's clock; 0 for none (or while the offset
    /// between the clocks is not known yet).
    fn redis_deadline(&self, deadline: Option<SystemTime>) -> i64 {
        match deadline {
            Some(deadline) if self.state.offset_known.load(Ordering::Relaxed) => {
                unix_ms(deadline).saturating_add(self.state.offset_ms.load(Ordering::Relaxed))
            }
            _ => 0,
        }
    }

    /// Whether `deadline` (on our clock) is not past at `redis_now`, by the offset known now.
    fn in_time(&self, deadline: Option<SystemTime>, redis_now: i64) -> bool {
        let deadline = self.redis_deadline(deadline);
        deadline == 0 || redis_now <= deadline
    }

    /// Learns the epoch (none: `""`) and the clock offset from an answer.
    fn learn(&self, epoch: &str, redis_now: i64) {
        let offset = redis_now.saturating_sub(unix_ms(SystemTime::now()));
        self.state.offset_ms.store(offset, Ordering::Relaxed);
        self.state.offset_known.store(true, Ordering::Relaxed);
        if epoch.is_empty() {
            return;
        }
        let mut known = self
            .state
            .epoch
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *known != epoch {
            if !known.is_empty() {
                tracing::error!(
                    prefix = %self.prefix,
                    quarantine_s = self.loss_quarantine.as_secs(),
                    "Redis lost the idempotency records (restarted without persistence, flushed \
                     or failed over): keys without a record are refused during the quarantine, \
                     because they may have been completed before the loss"
                );
            }
            epoch.clone_into(&mut known);
        }
    }

    fn known_epoch(&self) -> String {
        self.state
            .epoch
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// Redis's persistence settings, as [`RedisStore::durability`] read them (`None`: not reported).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Durability {
    /// `appendonly`: `yes` keeps every write in the append-only file.
    pub appendonly: Option<String>,
    /// `appendfsync`: `always` survives a crash of the machine, `everysec` may lose the last
    /// second of writes, `no` leaves it to the OS.
    pub appendfsync: Option<String>,
    /// `maxmemory-policy`: only `noeviction` never drops a record before its expiry.
    pub maxmemory_policy: Option<String>,
}

impl Durability {
    /// What falls short of the exactly-once promise, one sentence each (empty: nothing).
    #[must_use]
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.appendonly.as_deref() != Some("yes") {
            problems.push(
                "Redis runs without the append-only file (appendonly is not yes): a restart \
                 loses every record, and the store can refuse keys for a quarantine but not \
                 recover them; set appendonly yes"
                    .to_owned(),
            );
        } else if self.appendfsync.as_deref() != Some("always") {
            problems.push(format!(
                "appendfsync is {}: a crash of Redis's machine may lose the last writes \
                 (records of completed requests); set appendfsync always for exactly-once",
                self.appendfsync.as_deref().unwrap_or("unknown")
            ));
        }
        if self.maxmemory_policy.as_deref() != Some("noeviction") {
            problems.push(format!(
                "maxmemory-policy is {}: Redis may evict records before their expiry, and an \
                 evicted key runs again; set maxmemory-policy noeviction",
                self.maxmemory_policy.as_deref().unwrap_or("unknown")
            ));
        }
        problems
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection's settings may hold a password: left out.
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("poll_interval", &self.poll_interval)
            .field("loss_quarantine", &self.loss_quarantine)
            .finish_non_exhaustive()
    }
}

/// The longest duration sent to Redis: a hundred years, so that sums in the scripts stay exact
/// integers and `PX` stays valid however long a retention the caller asks for.
const LONGEST: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn millis(d: Duration) -> u64 {
    // PX 0 is an error in Redis; a lock of less than a millisecond is one millisecond.
    u64::try_from(d.min(LONGEST).as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Like [`millis`], zero allowed.
fn millis_or_zero(d: Duration) -> u64 {
    u64::try_from(d.min(LONGEST).as_millis()).unwrap_or(u64::MAX)
}

fn unix_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What a claim record starts with; the lease's end follows.
fn lock_prefix(token: &ClaimToken) -> String {
    format!("lock\n{}\n{}\n", token.fingerprint(), token.id())
}

fn redis_error(e: redis::RedisError) -> StoreError {
    StoreError::new(format!("redis: {e}"))
}

/// Reads a record found under a key, at `now` on Redis's clock.
fn parse(record: &[u8], fingerprint: Fingerprint, now: i64) -> Result<Claim, StoreError> {
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
        b"lock\n" | b"done\n" if stored != fingerprint => Ok(Claim::Mismatch),
        b"lock\n" => {
            // `<claim id>\n<lease end>`; a record of an earlier version has no lease end and
            // expires with its lock.
            let lease_end = rest
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| {
                    std::str::from_utf8(&rest[i + 1..])
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                        .ok_or_else(malformed)
                })
                .transpose()?;
            match lease_end {
                Some(end) if end <= now => Ok(Claim::Abandoned),
                _ => Ok(Claim::InFlight),
            }
        }
        b"done\n" => StoredResponse::decode(rest).map(Claim::Completed),
        _ => Err(malformed()),
    }
}

/// A claim script's answer: `[code, epoch, Redis's clock, record]`.
type ClaimAnswer = (String, String, String, Vec<u8>);

/// Redis's clock in an answer (ms since the epoch).
fn redis_clock(clock: &str) -> Result<i64, StoreError> {
    clock
        .parse()
        .map_err(|_| StoreError::new(format!("redis answered a clock of {clock:?}")))
}

/// Releases, in the background, a claim whose answer never reached its caller: `prefix` is the
/// claim's, `None` once the answer is handed over.
struct ReleaseOnDrop {
    conn: ConnectionManager,
    key: String,
    prefix: Option<String>,
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        let Some(prefix) = self.prefix.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (mut conn, key) = (self.conn.clone(), std::mem::take(&mut self.key));
        // Sent after the claim on the same connection, so run after it, and before anything
        // sent later (a retry's claim): a claim made is deleted, one never made (or another's)
        // is left as it is. Sent whole (`EVAL`), so that a Redis that lacks the script in its
        // cache does not make it a second round trip, after what was sent meanwhile.
        runtime.spawn(async move {
            let released: Result<i64, _> = redis::cmd("EVAL")
                .arg(RELEASE_SCRIPT)
                .arg(1)
                .arg(key)
                .arg(prefix)
                .query_async(&mut conn)
                .await;
            if let Err(e) = released {
                tracing::debug!(
                    "could not release a claim whose answer was lost ({e}); it ends with its lease"
                );
            }
        });
    }
}

impl IdempotencyStore for RedisStore {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        fingerprint: Fingerprint,
        options: ClaimOptions,
    ) -> StoreFuture<'a, Claim> {
        Box::pin(async move {
            let token = ClaimToken::new(fingerprint);
            let mut conn = self.conn.clone();
            // Until its answer is in the caller's hands, a claim that may have been made is
            // released if this future is dropped (the caller gone) or fails (the reply lost):
            // no one would ever own it, and the key would wait out its lease.
            let mut unowned = ReleaseOnDrop {
                conn: self.conn.clone(),
                key: self.redis_key(key),
                prefix: Some(lock_prefix(&token)),
            };
            let mut asked = 0;
            let (code, record, now) = loop {
                asked += 1;
                let (code, epoch, clock, record): ClaimAnswer = CLAIM
                    .key(self.redis_key(key))
                    .key(self.epoch_key())
                    .arg(lock_prefix(&token))
                    .arg(millis(options.lease()))
                    .arg(millis_or_zero(options.hold()))
                    .arg(self.redis_deadline(options.deadline()))
                    .arg(self.known_epoch())
                    .arg(uuid::Uuid::new_v4().simple().to_string())
                    .arg(millis_or_zero(self.loss_quarantine))
                    .invoke_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
                let now = redis_clock(&clock)?;
                self.learn(&epoch, now);
                if code == "late" && asked == 1 && self.in_time(options.deadline(), now) {
                    // Late by the offset learned before, in time by the one just learned: this
                    // machine's clock was stepped (or Redis's), nothing was paused. Once more.
                    continue;
                }
                break (code, record, now);
            };
            // Made and handed over, or not made at all.
            unowned.prefix = None;
            match code.as_str() {
                "acquired" => Ok(Claim::Acquired(token)),
                "found" => parse(&record, fingerprint, now),
                "lost" => Ok(Claim::Lost),
                "late" => Err(StoreError::new(
                    "the claim reached Redis after its deadline (Redis was paused or slow) and \
                     was not made",
                )),
                other => Err(StoreError::new(format!(
                    "redis answered {other:?} to a claim"
                ))),
            }
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        token: &'a ClaimToken,
        options: ClaimOptions,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let mut asked = 0;
            let renewed = loop {
                asked += 1;
                let (renewed, clock): (i64, String) = RENEW
                    .key(self.redis_key(key))
                    .arg(lock_prefix(token))
                    .arg(millis(options.lease()))
                    .arg(millis_or_zero(options.hold()))
                    .arg(self.redis_deadline(options.deadline()))
                    .invoke_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
                let now = redis_clock(&clock)?;
                self.learn("", now);
                // As a claim: late only by a stepped clock, asked once more.
                if renewed == -1 && asked == 1 && self.in_time(options.deadline(), now) {
                    continue;
                }
                break renewed;
            };
            match renewed {
                // Late: nothing was done, and the claim may still be ours. Not a loss of the
                // claim, which would stop its owner renewing it.
                -1 => Err(StoreError::new(
                    "the renewal reached Redis after its deadline (a paused or slow server); \
                     nothing was renewed",
                )),
                n => Ok(n == 1),
            }
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
                .arg(lock_prefix(token))
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
                .arg(lock_prefix(token))
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

    /// This machine's clock stepped back after the store learned Redis's (an NTP correction, a
    /// virtual machine restored): claims and renewals reached Redis late by the offset known,
    /// and a renewal never learned better, so a lease lapsed mid-request. Asked once more by the
    /// offset their answer gives, they go through; one late by Redis's clock is still refused.
    /// With a real Redis (`REDIS_URL`, default `redis://127.0.0.1:6379`).
    #[tokio::test]
    async fn a_stepped_clock_makes_no_claim_or_renewal_late() {
        let url =
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
        let prefix = format!("gt-test-step-{}:", uuid::Uuid::new_v4().simple());
        let store = RedisStore::open(&url).unwrap().prefix(prefix);
        let fp = Fingerprint::of(&Method::POST, &"/x".parse().unwrap(), b"{}");
        let within = |d: SystemTime| ClaimOptions::new(Duration::from_secs(30)).not_after(d);
        // Far enough for a loaded machine; the steps below are longer.
        let soon = || within(SystemTime::now() + Duration::from_secs(20));
        let Claim::Acquired(token) = store.claim("a", fp, soon()).await.unwrap() else {
            panic!("claimed")
        };
        // The clock steps back a minute: the offset known is a minute short.
        store.state.offset_ms.fetch_sub(60_000, Ordering::Relaxed);
        assert!(store.renew("a", &token, soon()).await.unwrap(), "renewed");
        store.state.offset_ms.fetch_sub(60_000, Ordering::Relaxed);
        let claimed = store.claim("b", fp, soon()).await.unwrap();
        assert!(matches!(claimed, Claim::Acquired(_)), "{claimed:?}");
        let past = SystemTime::now() - Duration::from_secs(5);
        assert!(store.claim("c", fp, within(past)).await.is_err(), "late");
        assert!(
            store.renew("a", &token, within(past)).await.is_err(),
            "late"
        );
        let client = redis::Client::open(url).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let keys = [
            store.redis_key("a"),
            store.redis_key("b"),
            store.epoch_key(),
        ];
        let _: () = redis::cmd("DEL")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }

    #[test]
    fn records_parse_back() {
        let fp = Fingerprint::of(&Method::POST, &"/x".parse().unwrap(), b"{}");
        let other = Fingerprint::of(&Method::POST, &"/y".parse().unwrap(), b"{}");
        let token = ClaimToken::new(fp);
        let lock = format!("{}1000", lock_prefix(&token));
        assert!(matches!(
            parse(lock.as_bytes(), fp, 999),
            Ok(Claim::InFlight)
        ));
        assert!(matches!(
            parse(lock.as_bytes(), fp, 1000),
            Ok(Claim::Abandoned)
        ));
        assert!(matches!(
            parse(lock.as_bytes(), other, 0),
            Ok(Claim::Mismatch)
        ));
        // A lock of an earlier version, without its lease's end: in flight until it expires.
        let old = format!("lock\n{fp}\n{}", token.id());
        assert!(matches!(parse(old.as_bytes(), fp, 0), Ok(Claim::InFlight)));
        assert!(parse(format!("{}soon", lock_prefix(&token)).as_bytes(), fp, 0).is_err());

        let response = StoredResponse::new(StatusCode::OK, HeaderMap::new(), Bytes::from("ok\n"));
        let mut done = format!("done\n{fp}\n").into_bytes();
        done.extend_from_slice(&response.encode());
        match parse(&done, fp, 0) {
            Ok(Claim::Completed(r)) => assert_eq!(r, response),
            other => panic!("expected the response, got {other:?}"),
        }
        assert!(parse(b"something else", fp, 0).is_err());
    }
}
