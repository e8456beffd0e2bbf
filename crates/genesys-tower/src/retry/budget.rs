//! A retry budget: retries as a bounded share of requests, shared by every clone of the service.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Token precision: one token is this many units, so ratios are exact to 0.001.
const UNIT: u64 = 1000;

/// A token bucket that bounds retries to a share of requests.
///
/// # Why a budget and not only a maximum of attempts?
///
/// A maximum of 4 attempts is a bound per request, not per client: when the server is down, every
/// request makes its 4 attempts and the client sends four times its normal load to a server that is
/// already failing. A budget bounds retries across all requests: each request deposits
/// `retry_ratio` of a token (0.2 by default: one retry for every five requests), each retry
/// withdraws one, and when the bucket is empty requests are not retried. A slow trickle
/// (`min_per_sec`) keeps a client that sends few requests able to retry at all.
///
/// Defaults: `retry_ratio` 0.2, `min_per_sec` 1, `max_tokens` 100 (the bucket starts full). In an
/// outage of `n` requests over `t` seconds this allows at most `100 + 0.2 n + t` retries, against
/// `3 n` with 4 attempts and no budget.
///
/// # Why not tower's `TpsBudget`?
///
/// tower's `TpsBudget` turns the retry percentage into a whole number of deposits per withdrawal
/// (`1 / percent`, truncated), so 30 % behaves as 33 % and 15 % as 16.7 % (tower issue 857), and
/// it panics on a time-to-live outside 1 to 60 seconds. This bucket keeps tokens in thousandths,
/// so any ratio is exact to 0.001, and it takes any input without panicking (out-of-range values
/// are clamped, as documented on each method). It reads the tokio clock, so it follows a paused
/// clock in tests.
///
/// ```
/// use genesys_tower::retry::RetryBudget;
///
/// let budget = RetryBudget::new().retry_ratio(0.3).max_tokens(10).min_per_sec(0);
/// for _ in 0..10 {
///     budget.deposit();
/// }
/// // Full at 10 tokens, then 10 retries; the 11th is refused.
/// assert!((0..10).all(|_| budget.withdraw()));
/// assert!(!budget.withdraw());
/// ```
pub struct RetryBudget {
    deposit: u64,
    refill_per_sec: u64,
    max: u64,
    state: Mutex<State>,
    /// The balance is at its maximum: a deposit would change nothing, so it takes no lock and
    /// reads no clock (the steady state of a healthy client: no retries, every request a
    /// deposit).
    full: AtomicBool,
}

struct State {
    balance: u64,
    updated: Instant,
}

impl RetryBudget {
    /// A budget with the default settings: `retry_ratio` 0.2, `min_per_sec` 1, `max_tokens` 100.
    #[must_use]
    pub fn new() -> Self {
        let max = 100 * UNIT;
        RetryBudget {
            deposit: UNIT / 5,
            refill_per_sec: UNIT,
            max,
            state: Mutex::new(State {
                balance: max,
                updated: Instant::now(),
            }),
            full: AtomicBool::new(true),
        }
    }

    /// Retries allowed per request (0.2 = one retry per five requests). Clamped to `[0, 1000]`;
    /// not-a-number is taken as 0. Exact to 0.001.
    #[must_use]
    pub fn retry_ratio(mut self, ratio: f64) -> Self {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1000.0)
        };
        // In [0, 1e6]: the conversion is exact enough and cannot overflow.
        self.deposit = (ratio * UNIT as f64).round() as u64;
        self
    }

    /// Retries allowed per second whatever the traffic, so that a quiet client can still retry.
    #[must_use]
    pub fn min_per_sec(mut self, per_sec: u32) -> Self {
        self.refill_per_sec = u64::from(per_sec) * UNIT;
        self
    }

    /// The most retries the bucket can hold, and what it starts with: the burst of retries allowed
    /// before the ratio and the trickle bound them.
    #[must_use]
    pub fn max_tokens(mut self, tokens: u32) -> Self {
        self.max = u64::from(tokens) * UNIT;
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        state.balance = self.max;
        self
    }

    /// Records one request: adds `retry_ratio` of a token.
    #[inline]
    pub fn deposit(&self) {
        // Capped at the maximum anyway; the trickle time it skips would be capped too.
        if !self.full.load(Ordering::Acquire) {
            self.add_deposit();
        }
    }

    #[inline(never)]
    fn add_deposit(&self) {
        self.update(|balance, max, deposit| Some(((balance + deposit).min(max), ())));
    }

    /// Takes one token for a retry; `false` when the budget is spent (do not retry).
    pub fn withdraw(&self) -> bool {
        self.update(|balance, _, _| balance.checked_sub(UNIT).map(|b| (b, ())))
            .is_some()
    }

    /// The retries the bucket allows now (whole tokens).
    pub fn available(&self) -> u64 {
        self.update(|balance, _, _| Some((balance, balance / UNIT)))
            .unwrap_or(0)
    }

    fn update<T>(&self, f: impl FnOnce(u64, u64, u64) -> Option<(u64, T)>) -> Option<T> {
        // A poisoned lock only means another thread panicked mid-update of two integers;
        // the values are still usable.
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(state.updated);
        let (balance, used) = refill(state.balance, elapsed, self.refill_per_sec, self.max);
        state.balance = balance;
        // Only the time turned into tokens is spent: the remainder carries over, so that calls
        // closer together than one unit still add up to the trickle.
        state.updated += used;
        let outcome = f(state.balance, self.max, self.deposit);
        if let Some((balance, _)) = &outcome {
            state.balance = *balance;
        }
        self.full
            .store(state.balance >= self.max, Ordering::Release);
        outcome.map(|(_, out)| out)
    }
}

/// The balance after `elapsed` of trickle, and how much of `elapsed` that used up: all of it when
/// the bucket is full or there is no trickle, else just the time the whole units added stand for.
fn refill(balance: u64, elapsed: Duration, per_sec: u64, max: u64) -> (u64, Duration) {
    const NANOS: u128 = 1_000_000_000;
    let added = (elapsed.as_nanos() * u128::from(per_sec)) / NANOS;
    let added = u64::try_from(added).unwrap_or(u64::MAX);
    let balance = balance.saturating_add(added);
    if per_sec == 0 || balance >= max {
        return (max.min(balance), elapsed);
    }
    // added < max here, so this fits; it is at most `elapsed`.
    let used = u128::from(added) * NANOS / u128::from(per_sec);
    let used = Duration::from_nanos(u64::try_from(used).unwrap_or(u64::MAX)).min(elapsed);
    (balance, used)
}

/// The budget works wherever tower's retry budgets do: in a `tower::retry::Policy` of your own,
/// for instance, so one budget can be shared by our retry layer and tower's.
///
/// ```
/// use tower::retry::budget::Budget;
/// use genesys_tower::retry::RetryBudget;
///
/// fn spend(budget: &impl Budget) -> bool {
///     budget.deposit();
///     budget.withdraw()
/// }
/// assert!(spend(&RetryBudget::new()));
/// ```
impl tower::retry::budget::Budget for RetryBudget {
    fn deposit(&self) {
        RetryBudget::deposit(self);
    }

    fn withdraw(&self) -> bool {
        RetryBudget::withdraw(self)
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("retry_ratio", &(self.deposit as f64 / UNIT as f64))
            .field("min_per_sec", &(self.refill_per_sec / UNIT))
            .field("max_tokens", &(self.max / UNIT))
            .field("available", &self.available())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fractional_ratio_is_exact() {
        // 30 % of 1000 requests: exactly 300 retries (tower's TpsBudget would allow 333).
        let budget = RetryBudget::new()
            .retry_ratio(0.3)
            .max_tokens(1000)
            .min_per_sec(0);
        while budget.withdraw() {}
        for _ in 0..1000 {
            budget.deposit();
        }
        let mut retries = 0;
        while budget.withdraw() {
            retries += 1;
        }
        assert_eq!(retries, 300);
    }

    #[tokio::test(start_paused = true)]
    async fn trickle_refills_with_time() {
        let budget = RetryBudget::new().max_tokens(2).min_per_sec(1);
        assert!(budget.withdraw() && budget.withdraw() && !budget.withdraw());
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn trickle_adds_up_across_calls_closer_than_one_unit() {
        // One token a second is one unit a millisecond: calls every 0.4 ms must still refill.
        let budget = RetryBudget::new().max_tokens(2).min_per_sec(1);
        assert!(budget.withdraw() && budget.withdraw() && !budget.withdraw());
        for _ in 0..2600 {
            tokio::time::advance(Duration::from_micros(400)).await;
            // `available` refills without depositing.
            let _ = budget.available();
        }
        // 1.04 s of trickle: one whole token, not zero.
        assert!(budget.withdraw());
        assert!(!budget.withdraw());
    }
}
