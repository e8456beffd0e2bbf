//! Exponential backoff with jitter, usable on its own; the jitter is a trait, [`JitterStrategy`],
//! so a strategy of your own plugs into the schedule and the retry policy.

use std::fmt;
use std::sync::Arc;
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

/// How one backoff delay is drawn from the exponential schedule: the built-in modes are [`Jitter`]'s;
/// implement it for a strategy of your own and give it to [`Backoff::jitter`] or
/// [`RetryPolicyBuilder::jitter`](super::RetryPolicyBuilder::jitter).
///
/// ```
/// use std::time::Duration;
/// use genesys_tower::retry::{Backoff, JitterStrategy, Step};
///
/// /// Three quarters of the exponential delay, plus up to a quarter.
/// #[derive(Debug)]
/// struct ThreeQuarters;
///
/// impl JitterStrategy for ThreeQuarters {
///     fn delay(&self, step: &mut Step<'_>) -> Duration {
///         let d = step.exponential();
///         d * 3 / 4 + step.uniform(Duration::ZERO, d / 4)
///     }
/// }
///
/// let delays: Vec<Duration> = Backoff::new(Duration::from_millis(400), 2.0, Duration::from_secs(10))
///     .jitter(ThreeQuarters)
///     .seed(1)
///     .take(3)
///     .collect();
/// assert!(delays[0] >= Duration::from_millis(300) && delays[0] <= Duration::from_millis(400));
/// assert!(delays[2] >= Duration::from_millis(1200));
/// ```
pub trait JitterStrategy: fmt::Debug + Send + Sync + 'static {
    /// The next delay. The schedule keeps it within `[0, cap]` whatever this returns.
    fn delay(&self, step: &mut Step<'_>) -> Duration;
}

/// What a [`JitterStrategy`] draws a delay from: the schedule's state and its random source.
#[derive(Debug)]
pub struct Step<'a> {
    exponential: Duration,
    base: Duration,
    cap: Duration,
    previous: Duration,
    rng: &'a mut SmallRng,
}

impl Step<'_> {
    /// `min(cap, base * factor^n)` for the `n`-th retry (from 0).
    #[must_use]
    pub fn exponential(&self) -> Duration {
        self.exponential
    }

    /// The schedule's first delay.
    #[must_use]
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The schedule's cap.
    #[must_use]
    pub fn cap(&self) -> Duration {
        self.cap
    }

    /// The delay this strategy gave last time (`base` before the first).
    #[must_use]
    pub fn previous(&self) -> Duration {
        self.previous
    }

    /// A uniform draw in `[low, high]` from the schedule's (possibly seeded) random source; `low`
    /// when `high <= low`.
    pub fn uniform(&mut self, low: Duration, high: Duration) -> Duration {
        if high <= low {
            return low;
        }
        Duration::from_nanos(self.rng.random_range(nanos(low)..=nanos(high)))
    }
}

impl JitterStrategy for Jitter {
    fn delay(&self, step: &mut Step<'_>) -> Duration {
        let exp = step.exponential();
        match self {
            Jitter::None => exp,
            Jitter::Full => step.uniform(Duration::ZERO, exp),
            Jitter::Equal => {
                let half = exp / 2;
                half + step.uniform(Duration::ZERO, exp - half)
            }
            Jitter::Decorrelated => {
                let high = step.previous().saturating_mul(3).max(step.base());
                step.uniform(step.base(), high).min(step.cap())
            }
        }
    }
}

/// A schedule of backoff delays: exponential growth from a base by a factor, capped, randomised by
/// a [`JitterStrategy`] ([`Jitter::Full`] unless told otherwise).
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
    jitter: Arc<dyn JitterStrategy>,
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
            jitter: Arc::new(Jitter::Full),
            retry: 0,
            previous: base,
            rng: SmallRng::from_os_rng(),
        }
    }

    /// Sets the jitter: one of [`Jitter`]'s modes, or a [`JitterStrategy`] of your own.
    #[must_use]
    pub fn jitter(mut self, jitter: impl JitterStrategy) -> Self {
        self.jitter = Arc::new(jitter);
        self
    }

    /// Sets a shared jitter strategy (as a [`RetryPolicy`](super::RetryPolicy) holds it).
    #[must_use]
    pub fn jitter_arc(mut self, jitter: Arc<dyn JitterStrategy>) -> Self {
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
        let exponential = self.exponential(self.retry);
        self.retry = self.retry.saturating_add(1);
        let mut step = Step {
            exponential,
            base: self.base,
            cap: self.cap,
            previous: self.previous,
            rng: &mut self.rng,
        };
        let delay = self.jitter.delay(&mut step).min(self.cap);
        self.previous = delay;
        delay
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
        Step {
            exponential: Duration::ZERO,
            base: self.base,
            cap: self.cap,
            previous: self.previous,
            rng: &mut self.rng,
        }
        .uniform(Duration::ZERO, max)
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
