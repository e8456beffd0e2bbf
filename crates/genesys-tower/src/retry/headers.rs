//! Reading a server's "come back later" hint from response headers.
//!
//! Three sources, in this order of precedence (the first valid one wins):
//!
//! 1. `Retry-After` (RFC 9110 §10.2.3): delta-seconds (`120`) or an HTTP-date in any of the three
//!    formats RFC 9110 accepts (IMF-fixdate `Sun, 06 Nov 1994 08:49:37 GMT`, the obsolete RFC 850
//!    `Sunday, 06-Nov-94 08:49:37 GMT` and asctime `Sun Nov  6 08:49:37 1994`). A date in the past
//!    is a hint of zero.
//! 2. The IETF `RateLimit` field (draft-ietf-httpapi-ratelimit-headers):
//!    `RateLimit: "default";r=0;t=30`, where `t` is the number of seconds until the quota resets.
//!    When several items are listed, those whose quota is spent (`r=0`) are preferred, and the
//!    longest `t` among them is taken. The older drafts' `RateLimit-Reset: 30` is read too.
//! 3. Genesys Cloud's `inin-ratelimit-reset`: seconds until the rate-limit window resets.
//!
//! Malformed values are ignored (as the specifications ask), never an error, and no input makes
//! these functions panic. The retry layer reads `Retry-After` on every response it retries, and the
//! rate-limit fields only on a 429: on a 503 the window reset says nothing about when the server
//! recovers.

use std::time::{Duration, SystemTime};

use http::HeaderMap;
use http::header::RETRY_AFTER;

/// Genesys Cloud's header: seconds until the current rate-limit window resets.
pub const ININ_RATELIMIT_RESET: &str = "inin-ratelimit-reset";

/// The IETF `RateLimit` field (draft 10 and later).
pub const RATELIMIT: &str = "ratelimit";

/// The older IETF drafts' field: seconds until the quota resets.
pub const RATELIMIT_RESET: &str = "ratelimit-reset";

/// The hint a response carries, by the precedence described in the [module docs](self):
/// `Retry-After`, then (when `rate_limit_fields` is true) `RateLimit`, `RateLimit-Reset` and
/// `inin-ratelimit-reset`. `now` is the wall clock, against which an HTTP-date is read.
pub fn hint(headers: &HeaderMap, now: SystemTime, rate_limit_fields: bool) -> Option<Duration> {
    retry_after(headers, now).or_else(|| {
        if rate_limit_fields {
            ratelimit_reset(headers).or_else(|| inin_ratelimit_reset(headers))
        } else {
            None
        }
    })
}

/// The first valid `Retry-After` value, as a duration from `now`.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use genesys_tower::retry::headers::retry_after;
/// use http::{HeaderMap, HeaderValue};
///
/// let mut headers = HeaderMap::new();
/// headers.insert("retry-after", HeaderValue::from_static("7"));
/// assert_eq!(retry_after(&headers, SystemTime::now()), Some(Duration::from_secs(7)));
///
/// headers.insert("retry-after", HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT"));
/// assert_eq!(retry_after(&headers, SystemTime::now()), Some(Duration::ZERO)); // in the past
///
/// headers.insert("retry-after", HeaderValue::from_static("soon"));
/// assert_eq!(retry_after(&headers, SystemTime::now()), None); // malformed: ignored
/// ```
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    headers
        .get_all(RETRY_AFTER)
        .iter()
        .find_map(|v| parse_retry_after(v.as_bytes(), now))
}

/// Parses one `Retry-After` value: delta-seconds or an HTTP-date (any of the three formats).
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
pub fn inin_ratelimit_reset(headers: &HeaderMap) -> Option<Duration> {
    seconds_field(headers, ININ_RATELIMIT_RESET)
}

/// The time until the quota resets, from the IETF `RateLimit` field's `t` parameter, or else from
/// the older drafts' `RateLimit-Reset` field.
pub fn ratelimit_reset(headers: &HeaderMap) -> Option<Duration> {
    let mut best: Option<(bool, Duration)> = None;
    for value in headers.get_all(RATELIMIT) {
        let Ok(value) = value.to_str() else { continue };
        for item in parse_ratelimit(value) {
            // Prefer spent quotas (r=0), then the longest wait.
            let key = (item.remaining == Some(0), item.reset);
            if best.is_none_or(|b| key > b) {
                best = Some(key);
            }
        }
    }
    best.map(|(_, reset)| reset)
        .or_else(|| seconds_field(headers, RATELIMIT_RESET))
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
/// use genesys_tower::retry::headers::parse_ratelimit;
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
    let name = parse_name(parts.next()?.trim())?;
    let mut remaining = None;
    let mut reset = None;
    for param in parts {
        let (key, value) = param.trim().split_once('=')?;
        match key.trim() {
            "r" => remaining = Some(parse_sf_integer(value.trim())?),
            "t" => reset = Some(Duration::from_secs(parse_sf_integer(value.trim())?)),
            _ => {}
        }
    }
    Some(RateLimitItem {
        name,
        remaining,
        reset: reset?,
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

fn seconds_field(headers: &HeaderMap, name: &str) -> Option<Duration> {
    headers
        .get_all(name)
        .iter()
        .find_map(|v| parse_delta_seconds(trim_ows(std::str::from_utf8(v.as_bytes()).ok()?)))
}

/// Strips HTTP's optional whitespace (spaces and horizontal tabs) and nothing else: Unicode
/// whitespace is not whitespace in a header.
pub(crate) fn trim_ows(s: &str) -> &str {
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
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn all_three_date_formats() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:00 GMT").unwrap();
        for v in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            assert_eq!(
                parse_retry_after(v.as_bytes(), now),
                Some(Duration::from_secs(37)),
                "{v}"
            );
        }
    }

    #[test]
    fn malformed_values_are_ignored() {
        let now = SystemTime::now();
        for v in [
            "",
            "-1",
            "1.5",
            "+3",
            "ten",
            "3 s",
            "Sun, 99 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(parse_retry_after(v.as_bytes(), now), None, "{v:?}");
        }
        assert_eq!(
            parse_retry_after(b" 12 ", now),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            parse_retry_after(b"99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn retry_after_wins_then_ietf_then_inin() {
        let now = SystemTime::now();
        let all = headers(&[
            ("inin-ratelimit-reset", "38"),
            ("ratelimit", "\"default\";r=0;t=20"),
            ("retry-after", "5"),
        ]);
        assert_eq!(hint(&all, now, true), Some(Duration::from_secs(5)));
        let no_ra = headers(&[
            ("inin-ratelimit-reset", "38"),
            ("ratelimit", "\"default\";r=0;t=20"),
        ]);
        assert_eq!(hint(&no_ra, now, true), Some(Duration::from_secs(20)));
        assert_eq!(hint(&no_ra, now, false), None);
        let inin = headers(&[("inin-ratelimit-reset", "38")]);
        assert_eq!(hint(&inin, now, true), Some(Duration::from_secs(38)));
    }

    #[test]
    fn ratelimit_prefers_spent_quota() {
        let h = headers(&[("ratelimit", "\"burst\";r=3;t=50, day;r=0;t=9")]);
        assert_eq!(ratelimit_reset(&h), Some(Duration::from_secs(9)));
        let h = headers(&[("ratelimit", "a;t=4, \"b,c\";t=7, broken;t=-1")]);
        assert_eq!(ratelimit_reset(&h), Some(Duration::from_secs(7)));
        let h = headers(&[("ratelimit-reset", "11")]);
        assert_eq!(ratelimit_reset(&h), Some(Duration::from_secs(11)));
    }

    #[test]
    fn only_ascii_whitespace_is_trimmed() {
        let now = SystemTime::now();
        assert_eq!(
            parse_retry_after(b"\t7 ", now),
            Some(Duration::from_secs(7))
        );
        for v in [
            "\u{a0}7",
            "7\u{2003}",
            "\u{3000}7\u{3000}",
            "\u{feff}7",
            "\n7",
            "\u{0664}",
        ] {
            assert_eq!(parse_retry_after(v.as_bytes(), now), None, "{v:?}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(4000))]

        #[test]
        fn any_bytes_parse_without_panic(value in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = parse_retry_after(&value, SystemTime::now());
            let _ = parse_retry_after(&value, SystemTime::UNIX_EPOCH);
            if let Ok(text) = std::str::from_utf8(&value) {
                let _ = parse_ratelimit(text);
            }
        }

        #[test]
        fn delta_seconds_read_back(secs in proptest::num::u64::ANY, pad in "[ \t]{0,3}") {
            let text = format!("{pad}{secs}{pad}");
            proptest::prop_assert_eq!(
                parse_retry_after(text.as_bytes(), SystemTime::now()),
                Some(Duration::from_secs(secs))
            );
        }
    }
}
