//! One reading of every header a server uses to say "slow down" or "come back later".
//!
//! The retry layer, the concurrency layer's pacer and `genesys-client` all read headers through
//! this module, so they can never read the same response differently. [`RateLimitHints::parse`]
//! reads every field at once into one struct:
//!
//! | field | what it says |
//! | --- | --- |
//! | `Retry-After` (RFC 9110 §10.2.3) | delta-seconds (`120`) or an HTTP-date in any of the three formats RFC 9110 accepts (IMF-fixdate `Sun, 06 Nov 1994 08:49:37 GMT`, the obsolete RFC 850 `Sunday, 06-Nov-94 08:49:37 GMT`, asctime `Sun Nov  6 08:49:37 1994`); a date in the past is zero |
//! | `inin-ratelimit-allowed`, `-count`, `-reset` (Genesys Cloud) | the window's quota, the requests used in it, the seconds until it resets |
//! | `RateLimit` (IETF draft 10 and later) | items `"name";r=REMAINING;t=SECONDS_TO_RESET` |
//! | `RateLimit-Policy` (IETF) | items `"name";q=QUOTA;w=WINDOW_SECONDS` (older drafts: `100;w=60`) |
//! | `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` (older IETF drafts) | the quota (optionally with `;w=` policies), what remains, seconds to reset |
//!
//! Numbers are strict: ASCII digits only (no sign, no fraction, no exponent), surrounded at most
//! by spaces and horizontal tabs (HTTP's optional whitespace; Unicode whitespace is not
//! whitespace here). Structured-field integers have at most 15 digits, as RFC 8941 says; a
//! delta-seconds too large for the clock saturates. Malformed values are ignored (as the
//! specifications ask), never an error, and no input makes anything here panic.
//!
//! # The retry hint
//!
//! [`hint`] (and [`RateLimitHints::hint`]) gives the retry layer its floor, by precedence (the
//! first valid one wins):
//!
//! 1. `Retry-After`;
//! 2. the IETF `RateLimit` field's `t`: when several items are listed, those whose quota is
//!    spent (`r=0`) are preferred, and the longest `t` among them is taken; else the older drafts'
//!    `RateLimit-Reset`;
//! 3. `inin-ratelimit-reset`.
//!
//! The retry layer reads `Retry-After` on every response it retries, and the rate-limit fields
//! only on a 429: on a 503 the window reset says nothing about when the server recovers. The
//! pacer holds new requests on a 429 until the same hint has passed (or longer, when a window it
//! reads is spent), so a request it lets out never comes before the retry layer's own retry.

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use http::header::RETRY_AFTER;

/// The `Idempotency-Key` request header: the one constant the idempotency and retry layers
/// share (re-exported by both modules).
pub const IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");

/// Genesys Cloud's header: the quota of the current rate-limit window.
pub const ININ_RATELIMIT_ALLOWED: &str = "inin-ratelimit-allowed";

/// Genesys Cloud's header: the requests counted in the current rate-limit window.
pub const ININ_RATELIMIT_COUNT: &str = "inin-ratelimit-count";

/// Genesys Cloud's header: seconds until the current rate-limit window resets.
pub const ININ_RATELIMIT_RESET: &str = "inin-ratelimit-reset";

/// The IETF `RateLimit-Policy` field: the quota policies (`q` requests per `w` seconds).
pub const RATELIMIT_POLICY: &str = "ratelimit-policy";

/// The older IETF drafts' field: the quota (optionally followed by `;w=` policies).
pub const RATELIMIT_LIMIT: &str = "ratelimit-limit";

/// The older IETF drafts' field: the requests that remain in the window.
pub const RATELIMIT_REMAINING: &str = "ratelimit-remaining";

/// The IETF `RateLimit` field (draft 10 and later).
pub const RATELIMIT: &str = "ratelimit";

/// The older IETF drafts' field: seconds until the quota resets.
pub const RATELIMIT_RESET: &str = "ratelimit-reset";

/// The hint a response carries, by the precedence described in the [module docs](self#the-retry-hint):
/// `Retry-After`, then (when `rate_limit_fields` is true) `RateLimit`, `RateLimit-Reset` and
/// `inin-ratelimit-reset`. `now` is the wall clock, against which an HTTP-date is read.
///
/// The same as `RateLimitHints::parse(headers, now).hint(rate_limit_fields)`.
#[must_use]
pub fn hint(headers: &HeaderMap, now: SystemTime, rate_limit_fields: bool) -> Option<Duration> {
    RateLimitHints::parse(headers, now).hint(rate_limit_fields)
}

/// Everything one response says about rate limits, read by the rules of the
/// [module docs](self). Absent or malformed fields are `None` (or empty).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use genesys_tower::headers::RateLimitHints;
/// use http::{HeaderMap, HeaderValue};
///
/// let mut headers = HeaderMap::new();
/// headers.insert("inin-ratelimit-allowed", HeaderValue::from_static("300"));
/// headers.insert("inin-ratelimit-count", HeaderValue::from_static("299"));
/// headers.insert("inin-ratelimit-reset", HeaderValue::from_static("38"));
/// let hints = RateLimitHints::parse(&headers, SystemTime::now());
/// assert_eq!(hints.inin.allowed, Some(300));
/// let window = hints.windows().next().unwrap();
/// assert_eq!((window.remaining, window.reset), (1, Duration::from_secs(38)));
/// assert_eq!(hints.hint(true), Some(Duration::from_secs(38)));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RateLimitHints {
    /// `Retry-After`, as a duration from the `now` given to [`parse`](Self::parse).
    pub retry_after: Option<Duration>,
    /// Genesys Cloud's `inin-ratelimit-*` fields.
    pub inin: IninRateLimit,
    /// The items of the IETF `RateLimit` field that have a valid `t`.
    pub ratelimit: Vec<RateLimitItem>,
    /// The quota policies: the IETF `RateLimit-Policy` items, and the older `RateLimit-Limit`
    /// items that name a window (`100;w=60`).
    pub policies: Vec<QuotaPolicy>,
    /// The older IETF drafts' `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`.
    pub legacy: LegacyRateLimit,
}

/// Genesys Cloud's `inin-ratelimit-allowed`, `-count` and `-reset`, each when valid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IninRateLimit {
    /// The quota of the window (`inin-ratelimit-allowed`); its length is not given.
    pub allowed: Option<u64>,
    /// Requests counted in the window so far (`inin-ratelimit-count`).
    pub count: Option<u64>,
    /// Time until the window resets (`inin-ratelimit-reset`).
    pub reset: Option<Duration>,
}

/// The older IETF drafts' fields, each when valid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LegacyRateLimit {
    /// The quota (`RateLimit-Limit`, its first number).
    pub limit: Option<u64>,
    /// The requests that remain (`RateLimit-Remaining`).
    pub remaining: Option<u64>,
    /// The time until the quota resets (`RateLimit-Reset`).
    pub reset: Option<Duration>,
}

/// A quota policy: at most `quota` requests per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuotaPolicy {
    /// Requests allowed in a window.
    pub quota: u64,
    /// The window's length.
    pub window: Duration,
}

impl QuotaPolicy {
    /// Whether `self` allows fewer requests per unit of time than `other`.
    #[must_use]
    pub fn slower_than(self, other: QuotaPolicy) -> bool {
        u128::from(self.quota).saturating_mul(other.window.as_nanos())
            < u128::from(other.quota).saturating_mul(self.window.as_nanos())
    }
}

/// A window a response reported: how many requests remain in it and when it resets (and its
/// quota, when the same field gave it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Requests that remain.
    pub remaining: u64,
    /// Time until the window resets.
    pub reset: Duration,
    /// The window's quota, when known (`inin-ratelimit-allowed`, `RateLimit-Limit`).
    pub quota: Option<u64>,
}

impl RateLimitHints {
    /// Reads every rate-limit field of `headers`; `now` is the wall clock against which an
    /// HTTP-date `Retry-After` is read.
    pub fn parse(headers: &HeaderMap, now: SystemTime) -> Self {
        let ratelimit = headers
            .get_all(RATELIMIT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(parse_ratelimit)
            .collect();
        let mut policies: Vec<QuotaPolicy> = headers
            .get_all(RATELIMIT_POLICY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(parse_policies)
            .collect();
        let limit_field = headers
            .get_all(RATELIMIT_LIMIT)
            .iter()
            .find_map(|v| v.to_str().ok());
        let mut legacy_limit = None;
        if let Some(value) = limit_field {
            // `100` or `100, 100;w=60, 1000;w=3600`: the first number is the quota.
            let items = split_outside_quotes(value, ',');
            legacy_limit = items
                .first()
                .and_then(|first| split_outside_quotes(first, ';').first().copied())
                .and_then(|n| parse_sf_integer(trim_ows(n)));
            policies.extend(items.into_iter().filter_map(parse_policy));
        }
        RateLimitHints {
            retry_after: retry_after(headers, now),
            inin: IninRateLimit {
                allowed: integer_field(headers, ININ_RATELIMIT_ALLOWED),
                count: integer_field(headers, ININ_RATELIMIT_COUNT),
                reset: seconds_field(headers, ININ_RATELIMIT_RESET),
            },
            ratelimit,
            policies,
            legacy: LegacyRateLimit {
                limit: legacy_limit,
                remaining: integer_field(headers, RATELIMIT_REMAINING),
                reset: seconds_field(headers, RATELIMIT_RESET),
            },
        }
    }

    /// The retry layer's hint, by the precedence of the [module docs](self#the-retry-hint):
    /// `Retry-After`, then (when `rate_limit_fields` is true) `RateLimit`, `RateLimit-Reset`
    /// and `inin-ratelimit-reset`.
    #[must_use]
    pub fn hint(&self, rate_limit_fields: bool) -> Option<Duration> {
        self.retry_after.or_else(|| {
            rate_limit_fields
                .then(|| self.ratelimit_reset().or(self.inin.reset))
                .flatten()
        })
    }

    /// The time until the quota resets: from the IETF `RateLimit` items (spent ones first, then
    /// the longest `t`), else `RateLimit-Reset`.
    #[must_use]
    pub fn ratelimit_reset(&self) -> Option<Duration> {
        self.ratelimit
            .iter()
            .map(|item| (item.remaining == Some(0), item.reset))
            .max()
            .map(|(_, reset)| reset)
            .or(self.legacy.reset)
    }

    /// The windows whose remaining requests and reset are both known: Genesys's (remaining =
    /// allowed - count), the IETF `RateLimit` item with the fewest remaining, and the older
    /// drafts' fields.
    pub fn windows(&self) -> impl Iterator<Item = Window> + '_ {
        let inin = match (self.inin.allowed, self.inin.count, self.inin.reset) {
            (Some(allowed), Some(count), Some(reset)) => Some(Window {
                remaining: allowed.saturating_sub(count),
                reset,
                quota: Some(allowed),
            }),
            _ => None,
        };
        let ietf = self
            .ratelimit
            .iter()
            .filter_map(|item| {
                Some(Window {
                    remaining: item.remaining?,
                    reset: item.reset,
                    quota: None,
                })
            })
            .min_by_key(|w| w.remaining);
        let legacy = match (self.legacy.remaining, self.legacy.reset) {
            (Some(remaining), Some(reset)) => Some(Window {
                remaining,
                reset,
                quota: self.legacy.limit,
            }),
            _ => None,
        };
        [inin, ietf, legacy].into_iter().flatten()
    }

    /// The slowest of the published quota policies.
    #[must_use]
    pub fn slowest_policy(&self) -> Option<QuotaPolicy> {
        self.policies
            .iter()
            .copied()
            .reduce(|a, b| if b.slower_than(a) { b } else { a })
    }
}

/// The first valid `Retry-After` value, as a duration from `now`.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use genesys_tower::headers::retry_after;
/// use http::{HeaderMap, HeaderValue};
///
/// let mut headers = HeaderMap::new();
/// headers.insert("retry-after", HeaderValue::from_static("7"));
/// assert_eq!(retry_after(&headers, SystemTime::now()), Some(Duration::from_secs(7)));
///
/// headers.insert("retry-after", HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"));
/// assert_eq!(retry_after(&headers, SystemTime::now()), Some(Duration::ZERO)); // in the past
///
/// // A date counts from the answer's `Date`, the server's clock, when there is one (and it
/// // is within a day of this clock): here this clock is 3 minutes ahead of the server's.
/// headers.insert("date", HeaderValue::from_static("Sun, 06 Nov 1994 08:49:07 GMT"));
/// let clock = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_747 + 180);
/// assert_eq!(retry_after(&headers, clock), Some(Duration::from_secs(30)));
/// headers.remove("date");
///
/// headers.insert("retry-after", HeaderValue::from_static("soon"));
/// assert_eq!(retry_after(&headers, SystemTime::now()), None); // malformed: ignored
/// ```
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let mut values = headers.get_all(RETRY_AFTER).iter().peekable();
    // Most answers have none: nothing else is read for them.
    values.peek()?;
    // A date is counted from the answer's own `Date` when it has one: both are the server's
    // clock, so a client whose clock is off by minutes still waits what the server meant.
    // A `Date` a day or more away from this clock is not believed (a proxy whose own clock is
    // wrong may write it): the date is then counted from this clock.
    let believable = |date: &SystemTime| {
        let apart = date
            .duration_since(now)
            .or_else(|_| now.duration_since(*date))
            .unwrap_or(Duration::MAX);
        apart < Duration::from_secs(86_400)
    };
    let now = headers
        .get(http::header::DATE)
        .and_then(|v| httpdate::parse_http_date(v.to_str().ok()?).ok())
        .filter(believable)
        .unwrap_or(now);
    values.find_map(|v| parse_retry_after(v.as_bytes(), now))
}

/// Parses one `Retry-After` value: delta-seconds or an HTTP-date (any of the three formats).
#[must_use]
pub fn parse_retry_after(value: &[u8], now: SystemTime) -> Option<Duration> {
    let value = trim_ows(std::str::from_utf8(value).ok()?);
    if let Some(delay) = parse_delta_seconds(value) {
        return Some(delay);
    }
    let date = httpdate::parse_http_date(value).ok()?;
    // A date in the past means "now".
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The first valid `inin-ratelimit-reset` value (whole seconds).
#[must_use]
pub fn inin_ratelimit_reset(headers: &HeaderMap) -> Option<Duration> {
    seconds_field(headers, ININ_RATELIMIT_RESET)
}

/// The time until the quota resets, from the IETF `RateLimit` field's `t` parameter, or else from
/// the older drafts' `RateLimit-Reset` field.
#[must_use]
pub fn ratelimit_reset(headers: &HeaderMap) -> Option<Duration> {
    RateLimitHints::parse(headers, SystemTime::UNIX_EPOCH).ratelimit_reset()
}

/// One item of a `RateLimit` field that has a valid `t` parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitItem {
    /// The policy name (a string or a token), without quotes.
    pub name: String,
    /// The remaining quota (`r`), when given.
    pub remaining: Option<u64>,
    /// The time until the quota resets (`t`).
    pub reset: Duration,
}

/// Parses a `RateLimit` field value into its items. Items without a valid `t` (a non-negative
/// integer), or otherwise malformed, are left out; the others are kept.
///
/// ```
/// use std::time::Duration;
/// use genesys_tower::headers::parse_ratelimit;
///
/// let items = parse_ratelimit(r#""default";r=0;t=30, "burst";r=5;t=1, broken;t=x"#);
/// assert_eq!(items.len(), 2);
/// assert_eq!(items[0].name, "default");
/// assert_eq!(items[0].remaining, Some(0));
/// assert_eq!(items[0].reset, Duration::from_secs(30));
/// ```
pub fn parse_ratelimit(value: &str) -> Vec<RateLimitItem> {
    split_outside_quotes(value, ',')
        .into_iter()
        .filter_map(parse_ratelimit_item)
        .collect()
}

fn parse_ratelimit_item(item: &str) -> Option<RateLimitItem> {
    let mut parts = split_outside_quotes(item, ';').into_iter();
    let name = parse_name(trim_ows(parts.next()?))?;
    let mut remaining = None;
    let mut reset = None;
    for param in parts {
        let (key, value) = trim_ows(param).split_once('=')?;
        match trim_ows(key) {
            "r" => remaining = Some(parse_sf_integer(trim_ows(value))?),
            "t" => reset = Some(Duration::from_secs(parse_sf_integer(trim_ows(value))?)),
            _ => {}
        }
    }
    Some(RateLimitItem {
        name,
        remaining,
        reset: reset?,
    })
}

/// Parses a `RateLimit-Policy` field value into its policies that give both a quota (`q`, or a
/// leading integer in the older drafts' form `100;w=60`) and a window (`w`, seconds above 0).
///
/// ```
/// use std::time::Duration;
/// use genesys_tower::headers::parse_policies;
///
/// let p = parse_policies(r#""default";q=100;w=60, 10;w=1, "bad";q=5"#);
/// assert_eq!(p.len(), 2);
/// assert_eq!((p[0].quota, p[0].window), (100, Duration::from_secs(60)));
/// assert_eq!((p[1].quota, p[1].window), (10, Duration::from_secs(1)));
/// ```
pub fn parse_policies(value: &str) -> Vec<QuotaPolicy> {
    split_outside_quotes(value, ',')
        .into_iter()
        .filter_map(parse_policy)
        .collect()
}

fn parse_policy(item: &str) -> Option<QuotaPolicy> {
    let mut parts = split_outside_quotes(item, ';').into_iter();
    let first = trim_ows(parts.next()?);
    // Draft 10: a name; older drafts: the quota itself.
    let mut quota = match parse_sf_integer(first) {
        Some(n) => Some(n),
        None => {
            parse_name(first)?;
            None
        }
    };
    let mut window = None;
    for param in parts {
        let (key, value) = trim_ows(param).split_once('=')?;
        match trim_ows(key) {
            "q" => quota = Some(parse_sf_integer(trim_ows(value))?),
            "w" => window = Some(parse_sf_integer(trim_ows(value))?),
            _ => {}
        }
    }
    let (quota, window) = (quota?, window?);
    (quota > 0 && window > 0).then(|| QuotaPolicy {
        quota,
        window: Duration::from_secs(window),
    })
}

/// A structured-field string (`"name"`, with `\"` and `\\` escapes) or a token.
fn parse_name(s: &str) -> Option<String> {
    if let Some(rest) = s.strip_prefix('"') {
        let inner = rest.strip_suffix('"')?;
        let mut out = String::with_capacity(inner.len());
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => out.push(chars.next()?),
                '"' => return None,
                c => out.push(c),
            }
        }
        Some(out)
    } else {
        let token_char = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~:/".contains(c);
        let first = s.chars().next()?;
        (first.is_ascii_alphabetic() || first == '*')
            .then_some(())
            .filter(|()| s.chars().all(token_char))
            .map(|()| s.to_owned())
    }
}

/// A non-negative structured-field integer: at most 15 digits.
fn parse_sf_integer(s: &str) -> Option<u64> {
    (!s.is_empty() && s.len() <= 15 && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// Splits on `sep` outside double-quoted strings (a backslash escapes inside a string).
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_string = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if in_string {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
        } else if c == sep {
            out.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    out.push(&s[start..]);
    out
}

/// The first valid non-negative integer of the field `name` (ASCII digits; saturating).
fn integer_field(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get_all(name).iter().find_map(|v| {
        let s = trim_ows(std::str::from_utf8(v.as_bytes()).ok()?);
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().unwrap_or(u64::MAX))
    })
}

fn seconds_field(headers: &HeaderMap, name: &str) -> Option<Duration> {
    headers
        .get_all(name)
        .iter()
        .find_map(|v| parse_delta_seconds(trim_ows(std::str::from_utf8(v.as_bytes()).ok()?)))
}

/// Strips HTTP's optional whitespace (spaces and horizontal tabs) and nothing else: Unicode
/// whitespace is not whitespace in a header.
#[must_use]
pub fn trim_ows(s: &str) -> &str {
    s.trim_matches(|c| c == ' ' || c == '\t')
}

/// `1*DIGIT`; a number too large for the clock saturates (it is far beyond any sane maximum).
fn parse_delta_seconds(s: &str) -> Option<Duration> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Duration::from_secs(s.parse().unwrap_or(u64::MAX)))
}

#[cfg(test)]
mod tests;
