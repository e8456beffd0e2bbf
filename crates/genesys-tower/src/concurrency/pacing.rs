//! Client-side pacing shared by every clone: a sliding-window log of request starts, and holds
//! learned from rate-limit headers and 429 responses.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use crate::headers::RateLimitHints;

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
const MAX_LEARNED_WINDOW: Duration = Duration::from_secs(3600);
/// Learned quotas above this are ignored for the same reason.
const MAX_LEARNED_REQUESTS: u64 = 100_000;
/// Longer windows and holds are cut to this, so that adding them to an `Instant` cannot overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug)]
pub(crate) struct Pacer {
    configured: Option<Rate>,
    learn: bool,
    reserve: u64,
    max_hold: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Start times inside the current window, oldest first.
    starts: VecDeque<Instant>,
    /// The slowest rate the server has published.
    learned: Option<Rate>,
    /// No request starts before this instant.
    hold_until: Option<Instant>,
}

impl Pacer {
    pub(crate) fn new(
        configured: Option<Rate>,
        learn: bool,
        reserve: u64,
        max_hold: Duration,
    ) -> Self {
        Pacer {
            configured: configured.map(|rate| Rate {
                requests: rate.requests,
                window: rate.window.min(MAX_DURATION),
            }),
            learn,
            reserve,
            max_hold: max_hold.min(MAX_DURATION),
            state: Mutex::new(State::default()),
        }
    }

    /// Whether requests can ever be held (there is something to check before each start).
    pub(crate) fn is_active(&self) -> bool {
        self.configured.is_some() || self.learn
    }

    pub(crate) fn learns(&self) -> bool {
        self.learn
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent between statements, so a panic elsewhere cannot corrupt it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn effective(&self, state: &State) -> Option<Rate> {
        match (self.configured, state.learned) {
            (Some(c), Some(l)) => Some(if l.slower_than(c) { l } else { c }),
            (c, l) => c.or(l),
        }
    }

    /// Records a start now, or tells when to try again.
    pub(crate) fn try_start(&self) -> Result<(), Instant> {
        let now = Instant::now();
        let mut state = self.lock();
        if let Some(until) = state.hold_until {
            if until > now {
                return Err(until);
            }
            state.hold_until = None;
        }
        let Some(rate) = self.effective(&state) else {
            return Ok(());
        };
        while state
            .starts
            .front()
            .is_some_and(|&start| start + rate.window <= now)
        {
            state.starts.pop_front();
        }
        // `requests` is at least 1 (checked where it is set), and the log never holds more
        // entries than fit in memory (see MAX_LEARNED_REQUESTS).
        let n = usize::try_from(rate.requests).unwrap_or(usize::MAX);
        if state.starts.len() >= n {
            return Err(state.starts[state.starts.len() - n] + rate.window);
        }
        state.starts.push_back(now);
        Ok(())
    }

    /// Learns from a response: holds new requests when the server says the window is (nearly)
    /// spent or answered 429, and lowers the rate to a published policy.
    pub(crate) fn observe(&self, status: StatusCode, headers: &HeaderMap) {
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
        if status == StatusCode::TOO_MANY_REQUESTS {
            // The retry layer's own hint (the same reading of the same headers): no request
            // starts before the retry layer would retry.
            if let Some(after) = hints.hint(true) {
                consider(after);
            }
        }

        let learned = hints
            .slowest_policy()
            .map(|p| Rate {
                requests: p.quota,
                window: p.window,
            })
            .or_else(|| {
                let allowed = hints.inin.allowed?;
                let window = self.configured?.window;
                Some(Rate {
                    requests: allowed,
                    window,
                })
            });
        let learned = learned.filter(|r| {
            r.requests > 0
                && r.requests <= MAX_LEARNED_REQUESTS
                && !r.window.is_zero()
                && r.window <= MAX_LEARNED_WINDOW
        });

        if hold.is_zero() && learned.is_none() {
            return;
        }
        let now = Instant::now();
        let mut state = self.lock();
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
        if let Some(rate) = learned
            && state.learned != Some(rate)
        {
            tracing::debug!(
                requests = rate.requests,
                window_ms = u64::try_from(rate.window.as_millis()).unwrap_or(u64::MAX),
                "learned a rate limit from the server"
            );
            state.learned = Some(rate);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(2000))]

        #[test]
        fn any_header_values_are_observed_without_panic(
            values in proptest::collection::vec(proptest::collection::vec(0u8..=255, 0..48), 9),
        ) {
            let names = [
                "inin-ratelimit-allowed", "inin-ratelimit-count", "inin-ratelimit-reset",
                "ratelimit", "ratelimit-policy", "ratelimit-remaining", "ratelimit-reset",
                "ratelimit-limit", "retry-after",
            ];
            let mut map = HeaderMap::new();
            for (name, value) in names.iter().zip(&values) {
                if let Ok(value) = HeaderValue::from_bytes(value) {
                    map.append(*name, value);
                }
            }
            let pacer = Pacer::new(
                Some(Rate { requests: u64::MAX, window: Duration::MAX }),
                true,
                u64::MAX,
                Duration::MAX,
            );
            pacer.observe(StatusCode::TOO_MANY_REQUESTS, &map);
            pacer.observe(StatusCode::OK, &map);
        }
    }

    fn header_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            (0u64..100_000).prop_map(|n| n.to_string()),
            "[ \t]{0,2}[0-9]{1,20}[ \t]{0,2}",
            Just("Sun, 06 Nov 1994 08:49:37 GMT".to_owned()),
            Just("Sunday, 06-Nov-94 08:49:37 GMT".to_owned()),
            Just("Sun Nov  6 08:49:37 1994".to_owned()),
            "[-+ 0-9a-z;=,\"]{0,24}",
            "[a-z]{1,5}(;r=[0-9]{1,3})?(;t=[0-9]{1,4})?(, [a-z]{1,5};r=[0-9]{1,3};t=[0-9]{1,4})?",
            "\\PC{0,12}",
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(3000))]

        /// The retry layer and the pacer read the same 429 the same way: the pacer lets no
        /// request start before the retry layer's hint has passed, and (when no window it reads
        /// is spent) holds exactly that long.
        #[test]
        fn the_pacer_holds_exactly_the_retry_layers_hint(
            values in proptest::collection::vec(proptest::option::of(header_value()), 9),
        ) {
            let names = [
                "retry-after", "inin-ratelimit-allowed", "inin-ratelimit-count",
                "inin-ratelimit-reset", "ratelimit", "ratelimit-policy", "ratelimit-remaining",
                "ratelimit-reset", "ratelimit-limit",
            ];
            let mut map = HeaderMap::new();
            for (name, value) in names.iter().zip(&values) {
                if let Some(value) = value
                    && let Ok(value) = HeaderValue::from_str(value)
                {
                    map.append(*name, value);
                }
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            let (hint, spent, hold) = rt.block_on(async {
                let max_hold = Duration::from_secs(86_400);
                let pacer = Pacer::new(None, true, 0, max_hold);
                let now = Instant::now();
                pacer.observe(StatusCode::TOO_MANY_REQUESTS, &map);
                let hint = crate::headers::hint(&map, SystemTime::now(), true)
                    .filter(|h| *h <= max_hold);
                let hints = RateLimitHints::parse(&map, SystemTime::now());
                let spent = hints
                    .windows()
                    .filter(|w| w.remaining == 0)
                    .map(|w| w.reset)
                    .max()
                    .filter(|h| *h <= max_hold);
                let hold = match pacer.try_start() {
                    Ok(()) => Duration::ZERO,
                    Err(until) => until - now,
                };
                (hint, spent, hold)
            });
            let hint = hint.unwrap_or_default();
            proptest::prop_assert!(hold >= hint, "hold {hold:?} < hint {hint:?}");
            if spent.is_none() {
                proptest::prop_assert_eq!(hold, hint);
            } else {
                proptest::prop_assert_eq!(hold, hint.max(spent.unwrap_or_default()));
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn huge_values_do_not_overflow() {
        let pacer = Pacer::new(
            Some(Rate {
                requests: 1,
                window: Duration::MAX,
            }),
            true,
            0,
            Duration::MAX,
        );
        assert!(pacer.try_start().is_ok());
        assert!(pacer.try_start().is_err());
        pacer.observe(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "18446744073709551615")]),
        );
        assert!(pacer.try_start().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_policy_sets_the_rate_and_a_plus_sign_is_not_a_number() {
        let pacer = Pacer::new(None, true, 0, Duration::from_secs(180));
        pacer.observe(
            StatusCode::TOO_MANY_REQUESTS,
            &headers(&[("retry-after", "+5"), ("ratelimit-policy", "2;w=+1")]),
        );
        // Neither `+5` nor `w=+1` is read: no hold, no rate.
        assert!(pacer.try_start().is_ok());
        assert!(pacer.try_start().is_ok());
        assert!(pacer.try_start().is_ok());
        pacer.observe(
            StatusCode::OK,
            &headers(&[("ratelimit-policy", "\"a\";q=2;w=1")]),
        );
        assert!(pacer.try_start().is_ok());
        assert!(pacer.try_start().is_ok());
        assert!(pacer.try_start().is_err());
    }
}
