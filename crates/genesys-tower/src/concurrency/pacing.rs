//! Client-side pacing shared by every clone: a sliding-window log of request starts, and holds
//! learned from rate-limit headers and 429 responses.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

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
        let hints = Hints::parse(headers);
        let mut hold = Duration::ZERO;
        for window in hints.windows.iter().flatten() {
            if window.remaining <= self.reserve {
                hold = hold.max(window.reset);
            }
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            // Retry-After wins; without it, the reset of any window the server reported.
            let reset = hints.windows.iter().flatten().map(|w| w.reset).max();
            if let Some(after) = hints.retry_after.or(reset) {
                hold = hold.max(after);
            }
        }
        // A hold longer than the caller would wait (a daily quota's Retry-After of hours) is not
        // waited out here: every call would stall, then meet the same answer. New requests go
        // on to the server, whose 429 the retry layer turns into an error that carries the hint
        // at once (`max_retry_after`).
        if hold > self.max_hold {
            tracing::debug!(
                status = status.as_u16(),
                hold_ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX),
                "rate limit hint longer than max_hold: not holding requests for it"
            );
            hold = Duration::ZERO;
        }

        let learned = hints.policy.or_else(|| {
            let allowed = hints.allowed?;
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
            let until = now + hold;
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

/// A window the server reported: how many requests remain and when it resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    remaining: u64,
    reset: Duration,
}

/// What one response says about rate limits. Malformed fields are ignored.
#[derive(Debug, Default, PartialEq, Eq)]
struct Hints {
    /// From `inin-ratelimit-*`, from the IETF `RateLimit` field and from the older
    /// `RateLimit-Remaining` / `RateLimit-Reset` fields.
    windows: [Option<Window>; 3],
    /// `inin-ratelimit-allowed`: the quota of the window, length not given.
    allowed: Option<u64>,
    /// The slowest quota of the IETF `RateLimit-Policy` field.
    policy: Option<Rate>,
    retry_after: Option<Duration>,
}

impl Hints {
    fn parse(headers: &HeaderMap) -> Hints {
        let allowed = int_header(headers, "inin-ratelimit-allowed");
        let inin = match (
            allowed,
            int_header(headers, "inin-ratelimit-count"),
            int_header(headers, "inin-ratelimit-reset"),
        ) {
            (Some(allowed), Some(count), Some(reset)) => Some(Window {
                remaining: allowed.saturating_sub(count),
                reset: Duration::from_secs(reset),
            }),
            _ => None,
        };
        let legacy = match (
            int_header(headers, "ratelimit-remaining"),
            int_header(headers, "ratelimit-reset"),
        ) {
            (Some(remaining), Some(reset)) => Some(Window {
                remaining,
                reset: Duration::from_secs(reset),
            }),
            _ => None,
        };
        let ietf = headers
            .get_all("ratelimit")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(split_list)
            .filter_map(|member| {
                let remaining = param(member, &["r", "remaining"])?;
                let reset = param(member, &["t", "reset"])?;
                Some(Window {
                    remaining,
                    reset: Duration::from_secs(reset),
                })
            })
            .min_by_key(|w| w.remaining);
        let policy = headers
            .get_all("ratelimit-policy")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(split_list)
            .filter_map(|member| {
                // Draft 10: `"name";q=100;w=60`; older drafts: `100;w=60`.
                let requests = param(member, &["q"]).or_else(|| {
                    let first = member.split(';').next()?.trim();
                    first.parse().ok()
                })?;
                let window = param(member, &["w"])?;
                Some(Rate {
                    requests,
                    window: Duration::from_secs(window),
                })
            })
            .reduce(|a, b| if b.slower_than(a) { b } else { a });
        Hints {
            windows: [inin, ietf, legacy],
            allowed,
            policy,
            retry_after: headers
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(retry_after),
        }
    }
}

fn int_header(headers: &HeaderMap, name: &str) -> Option<u64> {
    let v = crate::retry::headers::trim_ows(headers.get(name)?.to_str().ok()?);
    (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
        .then(|| v.parse().ok())
        .flatten()
}

/// Splits a structured-field list on commas outside quoted strings.
fn split_list(value: &str) -> impl Iterator<Item = &str> {
    let mut members = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in value.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                members.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    members.push(&value[start..]);
    members.into_iter().map(str::trim).filter(|m| !m.is_empty())
}

/// The integer value of the first parameter of `member` named one of `keys`. A quoted name
/// holding `;` or `=` is skipped over, since parameters come after it.
fn param(member: &str, keys: &[&str]) -> Option<u64> {
    let params = match member.strip_prefix('"') {
        Some(rest) => {
            let mut escaped = false;
            let end = rest.char_indices().find_map(|(i, c)| match c {
                _ if escaped => {
                    escaped = false;
                    None
                }
                '\\' => {
                    escaped = true;
                    None
                }
                '"' => Some(i),
                _ => None,
            })?;
            &rest[end + 1..]
        }
        None => member,
    };
    params.split(';').find_map(|p| {
        let (key, value) = p.split_once('=')?;
        keys.contains(&key.trim().to_ascii_lowercase().as_str())
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// RFC 9110 `Retry-After`: delay-seconds or an HTTP-date (a date in the past is zero).
fn retry_after(value: &str) -> Option<Duration> {
    let value = crate::retry::headers::trim_ows(value);
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        let secs = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(
        date.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
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

    #[test]
    fn genesys_headers() {
        let h = Hints::parse(&headers(&[
            ("inin-ratelimit-allowed", "300"),
            ("inin-ratelimit-count", "299"),
            ("inin-ratelimit-reset", "38"),
        ]));
        assert_eq!(
            h.windows[0],
            Some(Window {
                remaining: 1,
                reset: Duration::from_secs(38)
            })
        );
        assert_eq!(h.allowed, Some(300));
    }

    #[test]
    fn ietf_headers() {
        let h = Hints::parse(&headers(&[
            ("ratelimit", "\"a;b,c\";r=50;t=30, \"burst\";r=2;t=1"),
            ("ratelimit-policy", "\"a\";q=100;w=60, \"burst\";q=10;w=1"),
        ]));
        assert_eq!(
            h.windows[1],
            Some(Window {
                remaining: 2,
                reset: Duration::from_secs(1)
            })
        );
        assert_eq!(
            h.policy,
            Some(Rate {
                requests: 100,
                window: Duration::from_secs(60)
            })
        );
        let old = Hints::parse(&headers(&[
            ("ratelimit-policy", "10;w=1"),
            ("ratelimit-remaining", "0"),
            ("ratelimit-reset", "7"),
        ]));
        assert_eq!(old.policy.map(|p| p.requests), Some(10));
        assert_eq!(
            old.windows[2].map(|w| w.reset),
            Some(Duration::from_secs(7))
        );
    }

    #[test]
    fn malformed_is_ignored() {
        let h = Hints::parse(&headers(&[
            ("inin-ratelimit-allowed", "lots"),
            ("inin-ratelimit-count", "-1"),
            ("inin-ratelimit-reset", ""),
            ("ratelimit", "\"unterminated;r=1;t=2"),
            ("ratelimit-policy", ";;;,,=,q=,w=x"),
            ("retry-after", "soon"),
        ]));
        assert_eq!(h, Hints::default());
    }

    proptest::proptest! {
        #[test]
        fn any_header_values_parse_without_panic(
            values in proptest::collection::vec(proptest::collection::vec(0u8..=255, 0..48), 8),
        ) {
            let names = [
                "inin-ratelimit-allowed", "inin-ratelimit-count", "inin-ratelimit-reset",
                "ratelimit", "ratelimit-policy", "ratelimit-remaining", "ratelimit-reset",
                "retry-after",
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
            let _ = Hints::parse(&map);
        }

        #[test]
        fn any_structured_text_parses_without_panic(text in "\\PC*") {
            for member in split_list(&text) {
                let _ = param(member, &["r", "t", "q", "w"]);
            }
            let _ = retry_after(&text);
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

    #[test]
    fn retry_after_forms() {
        assert_eq!(retry_after(" 12 "), Some(Duration::from_secs(12)));
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("-3"), None);
    }
}
