//! [`RedisPacer`]: one quota for a fleet of processes, kept in Redis (feature `redis`).

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use redis::Script;
use redis::aio::ConnectionManager;
use tokio::time::Instant;

use super::pacing::{MAX_LEARNED_WINDOW, Pacer, Rate};
use super::shared::{AcquireFuture, SharedPacer};
use crate::BoxError;
use crate::headers::RateLimitHints;

/// The start of every script: Redis's clock now, in µs, as `now`, and the key's times moved back
/// by as much as that clock went back since the key was last written (`at`). Redis's clock is
/// the wall clock of its host, which an NTP step, a resumed virtual machine or a failover to
/// another host can move back: without this, a fleet would wait out the step on reservations
/// and holds that lie that much further ahead than the fleet wrote them.
macro_rules! clock_prelude {
    () => {
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local at = tonumber(redis.call('HGET', KEYS[1], 'at') or '0') or 0
if at > now then
  local back = at - now
  for _, field in ipairs({'tat', 'hold_until', 'interval_until'}) do
    local v = tonumber(redis.call('HGET', KEYS[1], field) or '')
    if v then redis.call('HSET', KEYS[1], field, string.format('%.0f', v - back)) end
  end
end
redis.call('HSET', KEYS[1], 'at', string.format('%.0f', now))
"
    };
}

/// GCRA (the generic cell rate algorithm) on Redis's clock, in microseconds, in its reserving
/// form: each call takes the next start the quota allows (within the burst tolerance of the
/// key's theoretical arrival time, `tat`, and not before a fleet-wide hold from a 429), moves
/// `tat` on by one interval, and answers how long to wait for that start. One round trip per
/// request, and starts handed out in order while the queue is within the horizon (below). A
/// slower interval learned from the server's headers is read from the same hash.
///
/// No start is reserved more than `ARGV[3]` µs ahead (the horizon): past it the call reserves
/// nothing and answers, negative, how long until there is room. So a queue of callers who gave
/// up waiting cannot push every later start further and further away. A `tat` or a hold past
/// anything this script or `HOLD` writes (a foreign writer, a damaged key) is not waited for:
/// for `tat`, past the horizon and `burst` intervals of `ARGV[4]` µs, the longest interval any
/// process's rate may have (so that no process's reservations look damaged to another's).
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        clock_prelude!(),
        r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local horizon = tonumber(ARGV[3])
local learned = tonumber(redis.call('HGET', KEYS[1], 'interval') or '0') or 0
local learned_until = tonumber(redis.call('HGET', KEYS[1], 'interval_until') or '0') or 0
if learned > interval and now < learned_until then interval = learned end
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or '0') or 0
if tat < now then tat = now end
local longest = tonumber(ARGV[4]) or interval
if horizon and tat > now + horizon + longest * burst then tat = now end
local start = tat - interval * (burst - 1)
if start < now then start = now end
local hold = tonumber(redis.call('HGET', KEYS[1], 'hold_until') or '0') or 0
if horizon and hold > now + horizon then hold = 0 end
if hold > start then
  start = hold
  if tat < hold then tat = hold end
end
if horizon and start - now > horizon then
  return -(start - now - horizon)
end
tat = tat + interval
redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', tat))
redis.call('PEXPIRE', KEYS[1], math.ceil((tat - now) / 1000) + 3600000)
return start - now
",
    ))
});

/// Holds the whole fleet until `now + ARGV[1]` µs (a 429's hint), never shortening a hold or
/// the key's life (reservations may run further ahead than an hour).
static HOLD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        clock_prelude!(),
        r"
local hold = now + tonumber(ARGV[1])
local current = tonumber(redis.call('HGET', KEYS[1], 'hold_until') or '0') or 0
if hold > current then redis.call('HSET', KEYS[1], 'hold_until', string.format('%.0f', hold)) end
local ttl = 3600000 + math.ceil(tonumber(ARGV[1]) / 1000)
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
",
    ))
});

/// Sets a slower interval (µs) learned from the server's quota policy, for ARGV[2] µs.
static LEARN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        clock_prelude!(),
        r"
redis.call('HSET', KEYS[1], 'interval', ARGV[1], 'interval_until', string.format('%.0f', now + tonumber(ARGV[2])))
local ttl = 3600000 + math.ceil(tonumber(ARGV[2]) / 1000)
if redis.call('PTTL', KEYS[1]) < ttl then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
",
    ))
});

/// The share of the quota a fleet aims at by default.
const DEFAULT_HEADROOM: f64 = 0.95;

/// The longest interval between two starts a configured rate can ask for.
const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// The longest interval learned from a response's quota policy.
const MAX_LEARNED_INTERVAL: Duration = Duration::from_secs(60);

/// How long a quota learned from headers is applied before the configured one is trusted again.
const LEARNED_FOR: Duration = Duration::from_secs(3600);
/// The longest [`RedisPacer::learned_for`].
const MAX_LEARNED_FOR: Duration = Duration::from_secs(86_400);
/// The longest fleet-wide hold a 429 can set.
const MAX_HOLD: Duration = Duration::from_secs(180);
/// How far ahead a start may be reserved, and the longest one wait lasts: the longest hold.
const HORIZON: Duration = MAX_HOLD;
/// A 429 without a hint holds the fleet this long.
const DEFAULT_HOLD: Duration = Duration::from_secs(1);

/// One quota for a fleet of processes, paced in Redis: a [`SharedPacer`] for
/// [`ConcurrencyLayer::shared_pacing`](super::ConcurrencyLayer::shared_pacing).
///
/// Every process that uses the same key shares `requests` per `window`: each start reserves the
/// next free slot in one atomic GCRA step (a Lua script, on Redis's clock), then waits for it,
/// so the fleet together starts at most one request per `window / requests` (after a
/// [`burst`](RedisPacer::burst)), in order, with one round trip per request. Key it the way the
/// server counts: Genesys Cloud limits per OAuth client and per organisation, so
/// `pacing:{org id}:{client id}` for a per-client limit.
///
/// No start is reserved more than 180 s ahead (the longest hold): when the fleet's queue is
/// longer, a request reserves nothing and asks again when there is room. A caller who gives
/// up waiting (a timeout, a dropped call) then leaves at most that much of the quota unused,
/// and the queue cannot grow past it, however many callers come and go. The requests past the
/// horizon ask again together as room frees up (about one call to Redis each per interval), and
/// are not served in the order they came.
///
/// What the fleet learns is shared too: a 429 holds every process for its hint (`Retry-After`,
/// else the rate-limit fields' reset, as the retry layer reads them; 1 s without one), unless
/// the hint is past 180 s (a daily quota's), which holds no one; and a quota policy of at most
/// an hour in the response headers that is slower than the configured rate is applied by all
/// for an hour.
///
/// When Redis cannot be reached (or does not answer within the
/// [`timeout`](RedisPacer::timeout), 500 ms by default), the process paces on its own at its
/// share of the quota, `requests / expected processes` per `window`
/// ([`expected_processes`](RedisPacer::expected_processes)), logs a warning once, and goes back
/// to the shared pace when Redis answers again. It never stops pacing.
///
/// ```no_run
/// use std::time::Duration;
/// use genesys_tower::concurrency::{ConcurrencyLayer, RedisPacer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), genesys_tower::BoxError> {
/// // 20 pods share the org's 300 requests a minute.
/// let fleet = RedisPacer::open("redis://127.0.0.1:6379", "pacing:my-org", 300, Duration::from_secs(60))?
///     .expected_processes(20);
/// let layer = ConcurrencyLayer::new(16).shared_pacing(fleet);
/// # drop(layer);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisPacer {
    conn: ConnectionManager,
    key: Arc<str>,
    rate: Rate,
    headroom: f64,
    burst: u64,
    processes: u64,
    timeout: Duration,
    fallback: Arc<Pacer>,
    degraded: Arc<AtomicBool>,
    /// How long a quota learned from a response's policy is applied fleet-wide.
    learned_for: Duration,
    /// The interval (µs) last shared from a response's quota policy, and when: shared again
    /// once a quarter of `learned_for` has passed (Redis forgets it after `learned_for`, or
    /// sooner when it restarts), or at the next response when sharing it failed.
    learned: Arc<Mutex<Option<(u64, Instant)>>>,
}

impl RedisPacer {
    /// A pacer for `requests` per `window` under `key`, over the Redis at `url`, connecting
    /// lazily (building it never fails because Redis is down). Call it inside a Tokio runtime.
    pub fn open(
        url: &str,
        key: impl Into<String>,
        requests: u64,
        window: Duration,
    ) -> Result<Self, BoxError> {
        let conn = crate::redis_conn::connect(url, "RedisPacer::open", Duration::from_secs(1))?;
        Self::from_connection_manager(conn, key, requests, window)
    }

    /// A pacer over a connection manager you configured yourself.
    pub fn from_connection_manager(
        conn: ConnectionManager,
        key: impl Into<String>,
        requests: u64,
        window: Duration,
    ) -> Result<Self, BoxError> {
        if requests == 0 || window.is_zero() {
            return Err(format!(
                "a shared pacing rate needs at least 1 request in a window longer than 0, got \
                 {requests} per {window:?}"
            )
            .into());
        }
        let rate = Rate { requests, window };
        let mut pacer = RedisPacer {
            conn,
            key: Arc::from(key.into()),
            rate,
            headroom: DEFAULT_HEADROOM,
            burst: 1,
            processes: 1,
            timeout: Duration::from_millis(500),
            fallback: Arc::new(Pacer::with_ceiling(Some(rate), None, false, 0, MAX_HOLD)),
            degraded: Arc::new(AtomicBool::new(false)),
            learned_for: LEARNED_FOR,
            learned: Arc::new(Mutex::new(None)),
        };
        pacer.rebuild_fallback();
        Ok(pacer)
    }

    /// How many processes share the quota (default 1): when Redis cannot be reached, this one
    /// paces alone at `requests / n` per window (at least 1).
    #[must_use]
    pub fn expected_processes(mut self, n: u64) -> Self {
        self.processes = n.max(1);
        self.rebuild_fallback();
        self
    }

    /// The share of the quota the fleet aims at (default 0.95, at least 0.1, at most 1). Starts
    /// evenly spaced at the full quota still meet 429s: a request delayed on its way lands in
    /// the server's next window, which then counts one too many, and each 429 holds the fleet
    /// for its `Retry-After` (a whole second at least on Genesys Cloud). A little room costs
    /// less than that; `fleet`'s benchmark measures both.
    #[must_use]
    pub fn headroom(mut self, fraction: f64) -> Self {
        self.headroom = if fraction.is_finite() {
            fraction.clamp(0.1, 1.0)
        } else {
            DEFAULT_HEADROOM
        };
        self
    }

    /// How many starts may happen back to back before the pace applies (default 1: evenly
    /// spaced). The fleet's most in any window is `requests` plus `burst - 1`.
    #[must_use]
    pub fn burst(mut self, burst: u64) -> Self {
        self.burst = burst.max(1);
        self
    }

    /// How long a start waits for Redis before this process paces on its own (default 500 ms).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long a slower quota learned from a response's `RateLimit-Policy` (or Genesys's
    /// own fields) paces the whole fleet (default 1 h, at least 1 s): after it the configured
    /// rate is trusted again, unless a process still sees the slower quota and shares it
    /// again, as each does every quarter of this while it sees it.
    #[must_use]
    pub fn learned_for(mut self, period: Duration) -> Self {
        self.learned_for = period.clamp(Duration::from_secs(1), MAX_LEARNED_FOR);
        self
    }

    /// Whether this process is pacing on its own because Redis could not be reached.
    #[must_use]
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    fn rebuild_fallback(&mut self) {
        let share = Rate {
            requests: (self.rate.requests / self.processes).max(1),
            window: self.rate.window,
        };
        self.fallback = Arc::new(Pacer::with_ceiling(Some(share), None, false, 0, MAX_HOLD));
    }

    /// The interval between two starts of the fleet, in µs (at least 1), within the headroom.
    fn interval_us(&self) -> u64 {
        let exact = micros(self.rate.window) / self.rate.requests.max(1);
        // At least 0.1, so at most ten times the exact interval; capped, so that the scripts'
        // sums stay exact integers.
        ((exact as f64 / self.headroom) as u64).clamp(1, micros(MAX_INTERVAL))
    }

    /// Reserves the fleet's next start: how long to wait for it, or, when it lies past the
    /// horizon, how long until one can be reserved (each at most [`HORIZON`]).
    async fn acquire_shared(&self) -> Result<Slot, BoxError> {
        let mut conn = self.conn.clone();
        let mut invocation = ACQUIRE.key(&*self.key);
        invocation
            .arg(self.interval_us().max(1))
            .arg(self.burst)
            .arg(micros(HORIZON))
            .arg(micros(MAX_INTERVAL));
        let answer = tokio::time::timeout(self.timeout, invocation.invoke_async::<i64>(&mut conn))
            .await
            .map_err(|_| format!("no answer from Redis within {:?}", self.timeout))?
            .map_err(|e| format!("redis: {e}"))?;
        let wait = |us: u64| Duration::from_micros(us).min(HORIZON);
        Ok(match u64::try_from(answer) {
            Ok(us) => Slot::Reserved(wait(us)),
            Err(_) => Slot::Later(wait(answer.unsigned_abs())),
        })
    }

    async fn acquire_local(&self) {
        while let Err(until) = self.fallback.try_start() {
            tokio::time::sleep_until(until).await;
        }
    }

    /// Runs a fire-and-forget script on the key; `failed` runs if it could not be.
    fn share(
        &self,
        script: &'static Script,
        args: [u64; 2],
        failed: impl FnOnce() + Send + 'static,
    ) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut conn = self.conn.clone();
        let key = self.key.clone();
        let timeout = self.timeout;
        runtime.spawn(async move {
            let mut invocation = script.key(&*key);
            invocation.arg(args[0]).arg(args[1]);
            match tokio::time::timeout(timeout, invocation.invoke_async::<i64>(&mut conn)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "shared pacing: hint not shared");
                    failed();
                }
                Err(_) => {
                    tracing::debug!("shared pacing: hint not shared (timed out)");
                    failed();
                }
            }
        });
    }
}

/// What [`ACQUIRE`] answered.
enum Slot {
    /// A start, this long from now.
    Reserved(Duration),
    /// No start within the horizon: ask again after this long.
    Later(Duration),
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl SharedPacer for RedisPacer {
    fn acquire(&self) -> AcquireFuture {
        let this = self.clone();
        Box::pin(async move {
            loop {
                let slot = this.acquire_shared().await;
                if slot.is_ok() && this.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!(key = %this.key, "shared pacing: Redis reached again");
                }
                match slot {
                    Ok(Slot::Reserved(wait)) => {
                        if !wait.is_zero() {
                            tokio::time::sleep(wait).await;
                        }
                        return;
                    }
                    // The fleet's queue reaches past the horizon: no start is taken now (one
                    // would be lost if this caller gave up), it is asked for again later.
                    Ok(Slot::Later(after)) => tokio::time::sleep(after).await,
                    Err(e) => {
                        this.degrade(&e);
                        this.acquire_local().await;
                        return;
                    }
                }
            }
        })
    }

    fn observe(&self, status: StatusCode, headers: &HeaderMap) {
        self.observe_hints(status, headers);
    }
}

impl RedisPacer {
    /// Redis could not be reached: said once, until it is reached again.
    fn degrade(&self, e: &BoxError) {
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                key = %self.key,
                error = %e,
                share = (self.rate.requests / self.processes).max(1),
                window_s = self.rate.window.as_secs_f64(),
                "shared pacing: Redis unreachable, pacing this process alone at its share of \
                 the quota"
            );
        }
    }

    /// What a response says about the quota, shared with the fleet.
    fn observe_hints(&self, status: StatusCode, headers: &HeaderMap) {
        let limited = status == StatusCode::TOO_MANY_REQUESTS;
        if !limited
            && !headers
                .keys()
                .any(|name| name.as_str().contains("ratelimit"))
        {
            return;
        }
        let hints = RateLimitHints::parse(headers, SystemTime::now());
        if limited {
            // The retry layer's reading of the same headers. A hint past the longest hold (a
            // daily quota's) holds no one, as in a process's own pacer: each call meets the
            // 429, whose hint the retry layer returns at once, rather than the fleet stalling.
            match hints.hint(true).unwrap_or(DEFAULT_HOLD) {
                hold if hold <= MAX_HOLD => self.share(&HOLD, [micros(hold), 0], || {}),
                hold => tracing::debug!(
                    hold_ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX),
                    "rate limit hint longer than the fleet's longest hold: not holding for it"
                ),
            }
        }
        // The slowest quota policy the server published, if slower than ours.
        let slowest = hints
            .policies
            .iter()
            // A daily quota is not paced request by request (that would stall the fleet for
            // hours between two starts, or pace it for a day): such policies are left to the
            // 429s and their holds.
            .filter(|p| p.quota > 0 && !p.window.is_zero() && p.window <= MAX_LEARNED_WINDOW)
            .map(|p| ((micros(p.window) / p.quota) as f64 / self.headroom) as u64)
            .max()
            .filter(|&i| i <= micros(MAX_LEARNED_INTERVAL));
        let Some(interval) = slowest.filter(|&i| i > self.interval_us()) else {
            return;
        };
        let now = Instant::now();
        {
            let mut learned = self.learned.lock().unwrap_or_else(PoisonError::into_inner);
            let fresh = learned.is_some_and(|(shared, at)| {
                shared == interval && now.saturating_duration_since(at) < self.learned_for / 4
            });
            if fresh {
                return;
            }
            *learned = Some((interval, now));
        }
        let learned = self.learned.clone();
        self.share(&LEARN, [interval, micros(self.learned_for)], move || {
            // Shared again at the next response that shows it.
            *learned.lock().unwrap_or_else(PoisonError::into_inner) = None;
        });
    }
}

impl fmt::Debug for RedisPacer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The connection's settings may hold a password: left out.
        f.debug_struct("RedisPacer")
            .field("key", &self.key)
            .field("requests", &self.rate.requests)
            .field("window", &self.rate.window)
            .field("headroom", &self.headroom)
            .field("burst", &self.burst)
            .field("expected_processes", &self.processes)
            .field("degraded", &self.is_degraded())
            .finish_non_exhaustive()
    }
}
