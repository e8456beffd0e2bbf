//! Exponential backoff with jitter, usable on its own.

use std::fmt;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// How a backoff delay is randomised.
///
/// With `n` the retry number (0 for the first retry) and `d = min(cap, base * factor^n)`:
///
/// | mode | delay |
/// | --- | --- |
/// | [`None`](Jitter::None) | `d` |
/// | [`Full`](Jitter::Full) | uniform in `[0, d]` |
/// | [`Equal`](Jitter::Equal) | `d / 2` + uniform in `[0, d / 2]` |
/// | [`Decorrelated`](Jitter::Decorrelated) | `min(cap, uniform in [base, 3 * previous])`, the first `previous` being `base` |
///
/// These are the four strategies of the well-known contention experiment on backoff and jitter
/// (see the benchmarks): full jitter spreads clients best for the fewest calls, which is why it is
/// the default. Decorrelated jitter does not use `factor`; its growth comes from the `3 *
/// previous` bound, as in the experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Jitter {
    /// No randomness: every client that failed together retries together.
    None,
    /// Uniform between zero and the exponential delay (the default).
    #[default]
    Full,
    /// Half the exponential delay, plus uniform over the other half.
    Equal,
    /// Uniform between the base and three times the previous delay, capped.
    Decorrelated,
}

/// A schedule of backoff delays: exponential growth from a base by a factor, capped, randomised by
/// a [`Jitter`] mode.
///
/// [`RetryPolicy`](super::RetryPolicy) uses one per call; it is public so that the same schedule can
/// be driven in simulated time (the benchmarks do) or used by code that retries by hand. Every delay
/// is within `[0, cap]`. With [`seed`](Backoff::seed) the delays are exactly reproducible for a given
/// build.
///
/// ```
/// use std::time::Duration;
/// use genesys_tower::retry::{Backoff, Jitter};
///
/// let delays: Vec<Duration> = Backoff::new(Duration::from_millis(500), 2.0, Duration::from_secs(3))
///     .jitter(Jitter::None)
///     .take(5)
///     .collect();
/// assert_eq!(
///     delays,
///     [500, 1000, 2000, 3000, 3000].map(Duration::from_millis)
/// );
///
/// // Seeded: the same seed gives the same delays.
/// let a = Backoff::new(Duration::from_millis(5), 2.0, Duration::from_secs(2)).seed(7);
/// let b = a.clone();
/// assert!(a.take(10).eq(b.take(10)));
/// ```
#[derive(Clone)]
pub struct Backoff {
    base: Duration,
    factor: f64,
    cap: Duration,
    jitter: Jitter,
    retry: u32,
    previous: Duration,
    rng: SmallRng,
}

impl fmt::Debug for Backoff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backoff")
            .field("base", &self.base)
            .field("factor", &self.factor)
            .field("cap", &self.cap)
            .field("jitter", &self.jitter)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Backoff {
    /// A schedule starting at `base`, growing by `factor` (at least 1; a factor below 1, or not a
    /// number, is taken as 1) up to `cap`, with [`Jitter::Full`], seeded from the operating system.
    #[must_use]
    pub fn new(base: Duration, factor: f64, cap: Duration) -> Self {
        Backoff {
            base,
            factor: sane_factor(factor),
            cap,
            jitter: Jitter::Full,
            retry: 0,
            previous: base,
            rng: SmallRng::from_os_rng(),
        }
    }

    /// Sets the jitter mode.
    #[must_use]
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Seeds the random source, so that the delays are reproducible.
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.rng = SmallRng::seed_from_u64(seed);
        self
    }

    /// The delay before the next retry; each call moves the schedule one step on.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self.exponential(self.retry);
        self.retry = self.retry.saturating_add(1);
        match self.jitter {
            Jitter::None => exp,
            Jitter::Full => self.uniform(Duration::ZERO, exp),
            Jitter::Equal => {
                let half = exp / 2;
                half + self.uniform(Duration::ZERO, exp - half)
            }
            Jitter::Decorrelated => {
                let high = self.previous.saturating_mul(3).max(self.base);
                let delay = self.uniform(self.base, high).min(self.cap);
                self.previous = delay;
                delay
            }
        }
    }

    /// Starts the schedule again from the base delay (the random source is not reset).
    pub fn reset(&mut self) {
        self.retry = 0;
        self.previous = self.base;
    }

    /// How many delays this schedule has given since it was made or reset.
    #[must_use]
    pub fn retries(&self) -> u32 {
        self.retry
    }

    /// A uniform extra delay in `[0, max]`, drawn from this schedule's random source: the small
    /// jitter a retry layer adds above a `Retry-After` floor.
    pub fn spread(&mut self, max: Duration) -> Duration {
        self.uniform(Duration::ZERO, max)
    }

    /// `min(cap, base * factor^retry)`, without overflow or panics.
    fn exponential(&self, retry: u32) -> Duration {
        if self.base.is_zero() {
            return Duration::ZERO;
        }
        let exponent = i32::try_from(retry).unwrap_or(i32::MAX);
        let secs = self.base.as_secs_f64() * self.factor.powi(exponent);
        if !secs.is_finite() || secs >= self.cap.as_secs_f64() {
            return self.cap;
        }
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.cap)
            .min(self.cap)
    }

    fn uniform(&mut self, low: Duration, high: Duration) -> Duration {
        if high <= low {
            return low;
        }
        let low_ns = nanos(low);
        let high_ns = nanos(high);
        Duration::from_nanos(self.rng.random_range(low_ns..=high_ns))
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    /// Never ends: a schedule always has a next delay. Bound it with `take`.
    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

fn sane_factor(factor: f64) -> f64 {
    if factor.is_nan() || factor < 1.0 {
        1.0
    } else {
        factor
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_jitter_stays_in_the_upper_half() {
        let mut b = Backoff::new(Duration::from_secs(1), 2.0, Duration::from_secs(8))
            .jitter(Jitter::Equal)
            .seed(1);
        for n in 0..6u32 {
            let exp = Duration::from_secs(1u64 << n.min(3));
            let d = b.next_delay();
            assert!(d >= exp / 2 && d <= exp, "{d:?} for {exp:?}");
        }
    }

    #[test]
    fn decorrelated_starts_at_base_and_respects_cap() {
        let base = Duration::from_millis(5);
        let cap = Duration::from_millis(2000);
        let mut b = Backoff::new(base, 2.0, cap)
            .jitter(Jitter::Decorrelated)
            .seed(9);
        let first = b.next_delay();
        assert!(first >= base && first <= base * 3);
        assert!(b.take(200).all(|d| d >= base && d <= cap));
    }

    #[test]
    fn huge_factor_and_retry_count_saturate_at_cap() {
        let cap = Duration::from_secs(30);
        let mut b = Backoff::new(Duration::from_secs(1), f64::INFINITY, cap).jitter(Jitter::None);
        assert_eq!(b.next_delay(), Duration::from_secs(1));
        assert_eq!(b.next_delay(), cap);
    }
}
