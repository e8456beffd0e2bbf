//! Client-side pacing shared by every clone: a sliding-window log of request starts, holds read
//! from rate-limit headers and 429 responses, and a rate that adapts to what the server says
//! (its quota is a hint, then additive increase and multiplicative decrease).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use self::log::Log;
use crate::headers::{RateLimitHints, Window};
use crate::per_thread::{SHARDS, shard};

/// At most `requests` starts in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    pub(crate) requests: u64,
    pub(crate) window: Duration,
}

impl Rate {
    /// Whether `self` allows fewer requests per unit of time than `other`.
    fn slower_than(self, other: Rate) -> bool {
        u128::from(self.requests).saturating_mul(other.window.as_nanos())
            < u128::from(other.requests).saturating_mul(self.window.as_nanos())
    }
}

/// Learned policies longer than this are left to the holds: pacing a daily quota with a log of
/// every start would cost memory for no gain.
pub(super) const MAX_LEARNED_WINDOW: Duration = Duration::from_secs(3600);
/// Learned quotas above this are ignored for the same reason.
const MAX_LEARNED_REQUESTS: u64 = 100_000;
/// Longer windows and holds are cut to this, so that adding them to an `Instant` cannot overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);
/// The most starts a thread takes from the log at once (see [`Credit`]).
const MAX_BATCH: u64 = 16;
/// A batch is taken only while the log has room for this many batches of its size: far from
/// the limit. Nearer to it, every start is recorded one by one, at its own instant.
const ROOM_PER_BATCH: u64 = 128;
/// How long a thread's batch of starts stays usable. Its starts are recorded at the end of this
/// lease, the latest instant any of them can be used: each is in the log for at least as long
/// as it would be on its own, so no window ever holds more starts than the rate allows.
const LEASE: Duration = Duration::from_millis(1);

#[derive(Debug)]
pub(crate) struct Pacer {
    configured: Option<Rate>,
    /// A rate that learning never exceeds.
    ceiling: Option<Rate>,
    learn: bool,
    reserve: u64,
    max_hold: Duration,
    /// Nothing can hold a start: no rate in force and no hold. Then a start takes no clock read
    /// and no lock (a learning pacer that has not heard of a quota yet, the common case against
    /// a server that sends no rate-limit headers). Written under the state's lock only, each
    /// time the state changes, so it always tells the state as the last writer left it.
    quiet: AtomicBool,
    /// Changes (under the state's lock) whenever a response changes the hold or the rate in
    /// force: every batch of starts taken before is void. (The rate raised at the end of a good
    /// period, and a hold that ran out, only loosen the limit: batches stay good.)
    epoch: AtomicU64,
    /// Whether the rate in force is high enough for batches, at least twice
    /// [`ROOM_PER_BATCH`] starts per window (checked before a shard's lane is looked at, so
    /// that a lower rate costs no lane lock).
    batching: AtomicBool,
    state: Mutex<State>,
    /// The starts the threads took from the log ahead of time, one lane per shard of threads,
    /// each on cache lines of its own: far from the limit, a start is taken from the lane of
    /// the thread's shard, without the state's lock that every thread shares.
    lanes: [Lane; SHARDS],
}

/// A shard's [`Credit`], on a pair of cache lines of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Lane(Mutex<Credit>);

/// Starts recorded in the log ahead of time, for the threads of one shard to use until
/// `until`.
///
/// The log records a batch at the end of its lease, which is later than any of its starts can
/// be used: a batch's start stays in the log at least as long as it would if recorded when
/// used, so the rate holds in every window (for any window, take the last batch the log
/// admitted among those with a start in it: every other such batch was still in the log then,
/// and the log admits a batch only while every start in it fits the rate). Batches are taken
/// only far from the limit (room for [`ROOM_PER_BATCH`] batches), and grow (doubling up to
/// [`MAX_BATCH`]) only for a shard that used its last one up before it lapsed, so a thread
/// that starts seldom records each start on its own. The unused starts of a batch that lapsed
/// or was voided go back to the window (and out of the learning period's count) when its
/// shard next takes a batch, or when another shard finds the window full.
#[derive(Debug, Default)]
struct Credit {
    left: u64,
    /// The end of the lease (`None`: none taken yet).
    until: Option<Instant>,
    /// The instant the log recorded the batch at.
    at: Option<Instant>,
    /// The pacer's epoch when the batch was taken.
    epoch: u64,
    /// The size of this lane's last batch.
    size: u64,
}

#[derive(Debug, Default)]
struct State {
    /// Start times inside the current window, oldest first.
    starts: Log,
    /// The rate in force: the configured one at first, then what the server's answers make of
    /// it (see [`Learning`]). `None`: no pacing (holds still apply).
    rate: Option<Rate>,
    /// No request starts before this instant.
    hold_until: Option<Instant>,
    learning: Learning,
}

/// What the pacer learns over time. The server's quota is a hint, not a ceiling: it sets the
/// rate, which then moves by additive increase (a period of the rate's window with no 429, in
/// which requests waited for the pacer and the server's own count said there was room) and
/// multiplicative decrease (a 429: half, at most once per window, never below what the previous
/// period delivered without a 429).
#[derive(Debug, Default)]
struct Learning {
    /// The longest reset each quota's windows reported: their length, inferred (a window that
    /// never says more than 1 s to its reset is not a minute long). Kept per quota (`None`: a
    /// window that names none), for the last [`QUOTAS_KEPT`] quotas seen, so that a window of
    /// another limiter (an hourly one, another API's) does not stretch this one's for good.
    longest_resets: Vec<(Option<u64>, Duration)>,
    /// The hint last applied, so that the same hint does not reset the rate again.
    hint: Option<Rate>,
    /// How much the rate rises per good period.
    step: u64,
    /// The server's count in the last answer that gave one.
    last_count: Option<u64>,
    /// The current accounting period (one window of the rate in force).
    period_start: Option<Instant>,
    period_starts: u64,
    period_429: bool,
    period_waited: bool,
    /// The fewest requests the server said remained, in this period.
    period_min_remaining: Option<u64>,
    /// Starts in the previous period, when it saw no 429.
    last_good: Option<u64>,
    /// When the rate was last cut.
    last_cut: Option<Instant>,
}

/// How many quotas' inferred windows a pacer keeps.
const QUOTAS_KEPT: usize = 8;

impl Learning {
    /// Records a reset reported by a window of `quota`. A quota not seen before starts from its
    /// first reset, as the first answer does: what is left of its window, which later answers
    /// lengthen (taking another quota's window for its own could stretch or shrink it).
    fn record_reset(&mut self, quota: Option<u64>, reset: Duration) {
        let longest = match self.longest_resets.iter().position(|(q, _)| *q == quota) {
            Some(i) => self.longest_resets.remove(i).1.max(reset),
            None => {
                if self.longest_resets.len() == QUOTAS_KEPT {
                    // The quota seen least lately.
                    self.longest_resets.remove(0);
                }
                reset
            }
        };
        // Last: the quotas seen most lately are kept.
        self.longest_resets.push((quota, longest));
    }

    /// The window length inferred for `quota`'s windows.
    fn longest_reset(&self, quota: Option<u64>) -> Option<Duration> {
        self.longest_resets
            .iter()
            .find(|(q, _)| *q == quota)
            .map(|(_, longest)| *longest)
    }
}

impl Pacer {
    #[cfg(test)]
    pub(crate) fn new(
        configured: Option<Rate>,
        learn: bool,
        reserve: u64,
        max_hold: Duration,
    ) -> Self {
        Self::with_ceiling(configured, None, learn, reserve, max_hold)
    }

    pub(crate) fn with_ceiling(
        configured: Option<Rate>,
        ceiling: Option<Rate>,
        learn: bool,
        reserve: u64,
        max_hold: Duration,
    ) -> Self {
        let clamp = |rate: Rate| Rate {
            requests: rate.requests,
            window: rate.window.min(MAX_DURATION),
        };
        let ceiling = ceiling.map(clamp);
        let configured = configured.map(clamp).or(ceiling);
        Pacer {
            configured,
            ceiling,
            learn,
            reserve,
            max_hold: max_hold.min(MAX_DURATION),
            quiet: AtomicBool::new(configured.is_none()),
            epoch: AtomicU64::new(0),
            batching: AtomicBool::new(
                configured.is_some_and(|rate| rate.requests >= 2 * ROOM_PER_BATCH),
            ),
            lanes: Default::default(),
            state: Mutex::new(State {
                rate: configured,
                learning: Learning {
                    step: configured.map_or(1, |r| step_for(r.requests)),
                    ..Learning::default()
                },
                ..State::default()
            }),
        }
    }

    /// Whether requests can ever be held (there is something to check before each start).
    pub(crate) fn is_active(&self) -> bool {
        self.configured.is_some() || self.ceiling.is_some() || self.learn
    }

    /// The rate in force, within the ceiling.
    fn effective(&self, state: &State) -> Option<Rate> {
        match (state.rate, self.ceiling) {
            (Some(rate), Some(ceiling)) => Some(if ceiling.slower_than(rate) {
                ceiling
            } else {
                rate
            }),
            (rate, ceiling) => rate.or(ceiling),
        }
    }

    pub(crate) fn learns(&self) -> bool {
        self.learn
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements, so a panic elsewhere cannot corrupt it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The rate in force now (for tests and debugging).
    #[cfg(test)]
    pub(crate) fn rate(&self) -> Option<Rate> {
        let state = self.lock();
        self.effective(&state)
    }

    /// Records what [`quiet`](Self::quiet) says, after a change of the state under its lock.
    fn settle(&self, state: &State) {
        // `configured` already holds the ceiling when no rate was configured, and the rate in
        // force is never dropped once set: `rate` is `None` only without either.
        let quiet = state.rate.is_none() && state.hold_until.is_none();
        self.quiet.store(quiet, Ordering::Release);
    }

    /// Records a start now, or tells when to try again.
    pub(crate) fn try_start(&self) -> Result<(), Instant> {
        // A start racing with a response that sets a hold is taken as if it came first.
        if self.quiet.load(Ordering::Acquire) {
            return Ok(());
        }
        // The clock read of the call this start is for, when a layer above lends it.
        self.try_start_at(crate::time::now(), shard())
    }

    /// [`try_start`](Self::try_start) at `now`, for a thread of `shard`.
    fn try_start_at(&self, now: Instant, shard: usize) -> Result<(), Instant> {
        // The shard's lane, while the rate in force is high enough for batches; held to the
        // end, so that two threads of a shard never take a batch each where one would do.
        let mut lane = self.batching.load(Ordering::Relaxed).then(|| {
            self.lanes[shard % SHARDS]
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        });
        let mut grow = 1;
        if let Some(credit) = lane.as_deref_mut() {
            let fresh = credit.epoch == self.epoch.load(Ordering::Acquire)
                && credit.until.is_some_and(|until| now <= until);
            if fresh && credit.left > 0 {
                credit.left -= 1;
                return Ok(());
            }
            // Used up before it lapsed: the shard starts often enough for a larger batch.
            if fresh {
                grow = credit.size.saturating_mul(2).clamp(1, MAX_BATCH);
            }
        }
        let mut state = self.lock();
        if let Some(credit) = lane.as_deref_mut().filter(|credit| credit.left > 0) {
            // A batch that lapsed or was voided gives its unused starts back to the window.
            Self::give_back(&mut state, credit);
        }
        self.roll(&mut state, now);
        if let Some(until) = state.hold_until {
            if until > now {
                return Err(until);
            }
            state.hold_until = None;
            self.settle(&state);
        }
        let Some(rate) = self.effective(&state) else {
            return Ok(());
        };
        // Starts at or before `cutoff` have left the window (none has when the clock has not
        // run for a window yet).
        if let Some(cutoff) = now.checked_sub(rate.window) {
            state.starts.expire(cutoff);
        }
        // `requests` is at least 1 (checked where it is set).
        let n = rate.requests.max(1);
        // Written only when it changes: every start reads the line it is on.
        let batching = rate.requests >= 2 * ROOM_PER_BATCH;
        if self.batching.load(Ordering::Relaxed) != batching {
            self.batching.store(batching, Ordering::Relaxed);
        }
        if state.starts.len() >= n {
            // At the limit: the unused starts of other shards' lapsed batches are not starts.
            self.reclaim(&mut state, now, shard);
        }
        if state.starts.len() >= n
            && let Some(oldest) = state.starts.nth_newest(n)
        {
            state.learning.period_waited = true;
            return Err(crate::time::after(oldest, rate.window));
        }
        let room = n.saturating_sub(state.starts.len());
        let size = match lane {
            Some(_) => grow.min(room / ROOM_PER_BATCH).max(1),
            None => 1,
        };
        let until = crate::time::after(now, LEASE);
        // A batch is recorded at the end of its lease; the log stays in order (an entry later
        // than its instant only stays longer).
        let at = if size > 1 { until } else { now };
        let at = state.starts.newest().map_or(at, |last| at.max(last));
        state.starts.record(at, size, rate.window);
        state.learning.period_starts = state.learning.period_starts.saturating_add(size);
        if let Some(credit) = lane.as_deref_mut() {
            *credit = Credit {
                left: size - 1,
                until: Some(until),
                at: Some(at),
                epoch: self.epoch.load(Ordering::Acquire),
                size,
            };
        }
        Ok(())
    }

    /// Gives back the unused starts of every other shard's batch that can no longer be used
    /// (lapsed at `now`, or voided). A lane busy now is skipped: its shard is taking a start.
    #[cold]
    fn reclaim(&self, state: &mut State, now: Instant, shard: usize) {
        let epoch = self.epoch.load(Ordering::Acquire);
        for (i, lane) in self.lanes.iter().enumerate() {
            if i == shard % SHARDS {
                continue;
            }
            // Never waits: the lane's own thread may hold it while it waits for the state.
            let Ok(mut credit) = lane.0.try_lock() else {
                continue;
            };
            let usable = credit.epoch == epoch && credit.until.is_some_and(|until| now <= until);
            if credit.left > 0 && !usable {
                Self::give_back(state, &mut credit);
            }
        }
    }

    /// Takes the unused starts of `credit`'s batch (which can no longer be used) out of the
    /// log and out of the period's count.
    fn give_back(state: &mut State, credit: &mut Credit) {
        let (left, Some(at)) = (std::mem::take(&mut credit.left), credit.at) else {
            return;
        };
        let taken = state.starts.give_back(at, left);
        state.learning.period_starts = state.learning.period_starts.saturating_sub(taken);
    }

    /// Ends the accounting period when a window of the rate in force has passed.
    fn roll(&self, state: &mut State, now: Instant) {
        let Some(rate) = state.rate else { return };
        let start = *state.learning.period_start.get_or_insert(now);
        if now
            .checked_sub(rate.window)
            .is_some_and(|cutoff| start <= cutoff)
        {
            self.finish_period(state, now);
        }
    }

    /// Closes the current period: remembers what it delivered without a 429, and raises the
    /// rate by one step when it was good (no 429), requests waited for the pacer, and the
    /// server's count said there was room.
    fn finish_period(&self, state: &mut State, now: Instant) {
        let l = &mut state.learning;
        l.last_good = (!l.period_429 && l.period_starts > 0).then_some(l.period_starts);
        let room = l.period_min_remaining.is_some_and(|r| r > self.reserve);
        let below_ceiling = match (state.rate, self.ceiling) {
            (Some(rate), Some(ceiling)) => rate.slower_than(ceiling),
            _ => true,
        };
        if self.learn
            && !l.period_429
            && l.period_waited
            && room
            && below_ceiling
            && let Some(rate) = state.rate.as_mut()
            && rate.requests < MAX_LEARNED_REQUESTS
        {
            rate.requests = rate
                .requests
                .saturating_add(l.step.max(1))
                .min(MAX_LEARNED_REQUESTS);
            tracing::debug!(
                requests = rate.requests,
                window_ms = u64::try_from(rate.window.as_millis()).unwrap_or(u64::MAX),
                "pacing: no 429 and the server has room; raising the rate"
            );
        }
        l.period_start = Some(now);
        l.period_starts = 0;
        l.period_429 = false;
        l.period_waited = false;
        l.period_min_remaining = None;
    }

    /// Learns from a response: holds new requests when the server says the window is (nearly)
    /// spent or answered 429, and adapts the rate (see [`Learning`]).
    pub(crate) fn observe(&self, status: StatusCode, headers: &HeaderMap) {
        // Most answers say nothing about the quota: then there is nothing to learn or hold,
        // and no clock, lock or parse is worth its cost.
        if status != StatusCode::TOO_MANY_REQUESTS && !headers.keys().any(is_rate_limit_field) {
            return;
        }
        self.observe_hints(status, &RateLimitHints::parse(headers, SystemTime::now()));
    }

    pub(crate) fn observe_hints(&self, status: StatusCode, hints: &RateLimitHints) {
        // A hint longer than the caller would wait (a daily quota's Retry-After of hours) is not
        // waited out here: every call would stall, then meet the same answer. New requests go
        // on to the server, whose 429 the retry layer turns into an error that carries the hint
        // at once (`max_retry_after`). Shorter hints of the same response still hold.
        let mut hold = Duration::ZERO;
        let mut consider = |h: Duration| {
            if h > self.max_hold {
                tracing::debug!(
                    status = status.as_u16(),
                    hold_ms = u64::try_from(h.as_millis()).unwrap_or(u64::MAX),
                    "rate limit hint longer than max_hold: not holding requests for it"
                );
            } else {
                hold = hold.max(h);
            }
        };
        for window in hints.windows() {
            if window.remaining <= self.reserve {
                consider(window.reset);
            }
        }
        let limited = status == StatusCode::TOO_MANY_REQUESTS;
        if limited {
            // The retry layer's own hint (the same reading of the same headers): no request
            // starts before the retry layer would retry.
            if let Some(after) = hints.hint(true) {
                consider(after);
            }
        }

        let now = Instant::now();
        let mut state = self.lock();
        let before = (state.hold_until, self.effective(&state));
        if !hold.is_zero() {
            let until = crate::time::after(now, hold);
            if state.hold_until.is_none_or(|h| h < until) {
                state.hold_until = Some(until);
                tracing::debug!(
                    status = status.as_u16(),
                    hold_ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX),
                    "rate limit nearly spent: holding new requests until the window resets"
                );
            }
        }
        if self.learn {
            self.learn_from(&mut state, now, limited, hints);
        }
        if (state.hold_until, self.effective(&state)) != before {
            // The batches of starts taken under the old hold or rate are void.
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        self.settle(&state);
    }

    fn learn_from(&self, state: &mut State, now: Instant, limited: bool, hints: &RateLimitHints) {
        // The quota a window's quota hint is read from (`inin-ratelimit-allowed`,
        // `RateLimit-Limit`); its inferred length is kept under the window's own quota (`None`
        // for an IETF item, which names none), so that no other window's reset is taken for it.
        let quota_of = |w: &Window| w.quota.or(hints.inin.allowed).or(hints.legacy.limit);
        // The window's length, inferred from the longest reset its quota's windows reported.
        let first_window = hints.windows().next();
        for window in hints.windows() {
            let reset = window.reset.max(Duration::from_secs(1));
            let l = &mut state.learning;
            // A reset past the longest window learned (a daily quota's) names no window this
            // pacer can pace: recorded, it would void every inference after it.
            if reset <= MAX_LEARNED_WINDOW {
                l.record_reset(window.quota, reset);
            }
            l.period_min_remaining = Some(
                l.period_min_remaining
                    .map_or(window.remaining, |r| r.min(window.remaining)),
            );
        }

        // The quota hint: a published policy (quota and window), else the quota of a window
        // (`inin-ratelimit-allowed`, `RateLimit-Limit`) over the inferred window length.
        let learnable = |r: &Rate| {
            r.requests > 0
                && r.requests <= MAX_LEARNED_REQUESTS
                && !r.window.is_zero()
                && r.window <= MAX_LEARNED_WINDOW
        };
        // The slowest of the policies this pacer can pace: a daily quota's next to a minute's
        // leaves the minute's to learn.
        let hint = hints
            .policies
            .iter()
            .map(|p| Rate {
                requests: p.quota,
                window: p.window,
            })
            .filter(learnable)
            .reduce(|a, b| if b.slower_than(a) { b } else { a })
            .or_else(|| {
                // A window that resets past the longest one learned (a daily quota's) is not the
                // window whose length was inferred: its quota says nothing about that one.
                if first_window.is_some_and(|w| w.reset > MAX_LEARNED_WINDOW) {
                    return None;
                }
                let first = first_window.as_ref()?;
                Some(Rate {
                    requests: quota_of(first)?,
                    window: state.learning.longest_reset(first.quota)?,
                })
                .filter(learnable)
            });
        if let Some(hint) = hint
            && state.learning.hint != Some(hint)
        {
            tracing::debug!(
                requests = hint.requests,
                window_ms = u64::try_from(hint.window.as_millis()).unwrap_or(u64::MAX),
                "learned a rate limit hint from the server; pacing from it"
            );
            state.learning.hint = Some(hint);
            state.learning.step = step_for(hint.requests);
            // Within the ceiling, so that a cut on a 429 starts from the rate really in force.
            state.rate = Some(match self.ceiling {
                Some(ceiling) if ceiling.slower_than(hint) => ceiling,
                _ => hint,
            });
            // A fresh start: the last period was paced at another rate.
            let l = &mut state.learning;
            l.period_start = Some(now);
            l.period_starts = 0;
            l.period_429 = false;
            l.period_waited = false;
            l.period_min_remaining = None;
            l.last_good = None;
        }

        // A count that falls means a window boundary passed: align the period with it (once the
        // period is at least half over, so that late answers from the old window do not count).
        if let Some(window) = first_window
            && let Some(quota) = window.quota
        {
            let count = quota.saturating_sub(window.remaining);
            let fell = state.learning.last_count.is_some_and(|last| count < last);
            state.learning.last_count = Some(count);
            if fell
                && let (Some(rate), Some(start)) = (state.rate, state.learning.period_start)
                && now.saturating_duration_since(start) >= rate.window / 2
            {
                self.finish_period(state, now);
            }
        }

        if limited {
            state.learning.period_429 = true;
            let Some(rate) = state.rate.as_mut() else {
                return;
            };
            let l = &mut state.learning;
            if l.last_cut
                .is_some_and(|at| now < crate::time::after(at, rate.window))
            {
                return;
            }
            let floor = l.last_good.unwrap_or(1).max(1);
            let cut = (rate.requests / 2).max(floor);
            if cut < rate.requests {
                rate.requests = cut;
                l.last_cut = Some(now);
                tracing::debug!(
                    requests = rate.requests,
                    window_ms = u64::try_from(rate.window.as_millis()).unwrap_or(u64::MAX),
                    "pacing: 429; cutting the rate"
                );
            }
        }
    }
}

/// Whether a response header is one the pacer reads: `Retry-After`, the IETF `RateLimit` fields
/// and the older `RateLimit-*` ones, Genesys's `inin-ratelimit-*`.
fn is_rate_limit_field(name: &http::HeaderName) -> bool {
    // Told apart by the first byte first: every response has such headers as `date` and
    // `content-length`, which one comparison sets aside.
    let name = name.as_str().as_bytes();
    match name.first() {
        Some(b'r') => name == b"retry-after" || name.starts_with(b"ratelimit"),
        Some(b'i') => name.starts_with(b"inin-ratelimit"),
        _ => false,
    }
}

/// The additive step for a quota: a tenth of it, at least 1.
fn step_for(quota: u64) -> u64 {
    (quota / 10).max(1)
}

mod log;
#[cfg(test)]
mod tests;
