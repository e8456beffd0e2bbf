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
fn every_field_in_one_struct() {
    let h = headers(&[
        ("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT"),
        ("inin-ratelimit-allowed", "180"),
        ("inin-ratelimit-count", "1"),
        ("inin-ratelimit-reset", "61"),
        ("ratelimit", "\"a;b,c\";r=50;t=30, \"burst\";r=2;t=1"),
        ("ratelimit-policy", "\"a\";q=100;w=60, \"burst\";q=10;w=1"),
        ("ratelimit-limit", "100, 100;w=60, 1000;w=3600"),
        ("ratelimit-remaining", "7"),
        ("ratelimit-reset", "9"),
    ]);
    let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:00 GMT").unwrap();
    let hints = RateLimitHints::parse(&h, now);
    assert_eq!(hints.retry_after, Some(Duration::from_secs(37)));
    assert_eq!(
        hints.inin,
        IninRateLimit {
            allowed: Some(180),
            count: Some(1),
            reset: Some(Duration::from_secs(61))
        }
    );
    assert_eq!(hints.legacy.limit, Some(100));
    assert_eq!(hints.policies.len(), 4);
    assert_eq!(
        hints.slowest_policy(),
        Some(QuotaPolicy {
            quota: 1000,
            window: Duration::from_secs(3600)
        })
    );
    let windows: Vec<Window> = hints.windows().collect();
    assert_eq!(windows.len(), 3);
    assert_eq!(windows[0].remaining, 179);
    assert_eq!(windows[1].remaining, 2);
    assert_eq!(windows[2].quota, Some(100));
    assert_eq!(hints.hint(true), Some(Duration::from_secs(37)));
}

#[test]
fn signs_fractions_and_loose_names_are_not_numbers() {
    let h = headers(&[
        ("inin-ratelimit-allowed", "+40"),
        ("inin-ratelimit-count", "-1"),
        ("inin-ratelimit-reset", "1.5"),
        ("ratelimit", "a;remaining=0;reset=5"),
        ("ratelimit-policy", "a;q=+5;w=60, b;q=5;w=0, c;q=0;w=1"),
        ("ratelimit-remaining", "0x10"),
    ]);
    let hints = RateLimitHints::parse(&h, SystemTime::now());
    assert_eq!(hints, RateLimitHints::default());
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
    #![proptest_config(proptest::test_runner::Config::with_cases(crate::fuzz_cases(4000)))]

    #[test]
    fn any_bytes_parse_without_panic(value in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
        let _ = parse_retry_after(&value, SystemTime::now());
        let _ = parse_retry_after(&value, SystemTime::UNIX_EPOCH);
        if let Ok(text) = std::str::from_utf8(&value) {
            let _ = parse_ratelimit(text);
            let _ = parse_policies(text);
        }
        if let Ok(v) = http::HeaderValue::from_bytes(&value) {
            let mut map = HeaderMap::new();
            for name in [
                RETRY_AFTER.as_str(), ININ_RATELIMIT_ALLOWED, ININ_RATELIMIT_COUNT,
                ININ_RATELIMIT_RESET, RATELIMIT, RATELIMIT_POLICY, RATELIMIT_LIMIT,
                RATELIMIT_REMAINING, RATELIMIT_RESET,
            ] {
                map.append(name, v.clone());
            }
            let hints = RateLimitHints::parse(&map, SystemTime::now());
            let _ = hints.hint(true);
            let _ = hints.windows().count();
            let _ = hints.slowest_policy();
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

/// A date counts from the answer's `Date` (the server's clock), not the client's: a client
/// three minutes slow or fast still waits the 30 s meant; without a usable `Date`, from now.
#[test]
fn a_retry_after_date_counts_from_the_answers_date() {
    let server = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:07 GMT").unwrap();
    let with_date = headers(&[
        ("date", "Sun, 06 Nov 1994 08:49:07 GMT"),
        ("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT"),
    ]);
    for skew in [0i64, -180, 180] {
        let client = if skew < 0 {
            server - Duration::from_secs(skew.unsigned_abs())
        } else {
            server + Duration::from_secs(skew as u64)
        };
        assert_eq!(
            retry_after(&with_date, client),
            Some(Duration::from_secs(30)),
            "client clock {skew:+} s"
        );
    }
    let bad_date = headers(&[
        ("date", "yesterday"),
        ("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT"),
    ]);
    assert_eq!(
        retry_after(&bad_date, server),
        Some(Duration::from_secs(30))
    );
    // A `Date` a day or more from this clock (a proxy's clock set to 1970) is not believed.
    let far = headers(&[
        ("date", "Thu, 01 Jan 1970 00:00:00 GMT"),
        ("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT"),
    ]);
    assert_eq!(retry_after(&far, server), Some(Duration::from_secs(30)));
    // Seconds are seconds, whatever the `Date`.
    let seconds = headers(&[
        ("date", "Sun, 06 Nov 1994 08:49:07 GMT"),
        ("retry-after", "7"),
    ]);
    assert_eq!(
        retry_after(&seconds, SystemTime::now()),
        Some(Duration::from_secs(7))
    );
}
