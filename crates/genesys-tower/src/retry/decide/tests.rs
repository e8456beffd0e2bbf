//! The decision rules one by one, without a service, a clock or a sleep.

use std::io;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, request};
use tokio::time::Instant;

use super::{Clock, Decision, Outcome, State, decide};
use crate::retry::{
    Classification, Classify, DefaultClassifier, ErrorKind, Jitter, RetryPolicy,
    RetryPolicyBuilder, RetryReason,
};

const SECOND: Duration = Duration::from_secs(1);

/// Clocks stopped at one moment.
struct Fixed(Instant, SystemTime);

impl Clock for Fixed {
    fn now(&self) -> Instant {
        self.0
    }
    fn wall(&self) -> SystemTime {
        self.1
    }
}

fn policy() -> RetryPolicyBuilder {
    RetryPolicy::builder()
        .jitter(Jitter::None)
        .base_delay(SECOND)
        .max_attempts(3)
}

fn parts(method: Method) -> request::Parts {
    Request::builder()
        .method(method)
        .uri("http://api.test/x")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

/// The decision after attempt number `attempts` of a call with `deadline_in` left.
fn after(
    policy: &RetryPolicy,
    attempts: u32,
    method: Method,
    outcome: Outcome<'_>,
    deadline_in: Option<Duration>,
) -> Decision {
    let now = Instant::now();
    let mut state = State::new(deadline_in.map(|d| (now, d)), true, Some(7));
    state.attempts = attempts;
    decide(
        policy,
        &mut state,
        &parts(method),
        outcome,
        &Fixed(now, SystemTime::now()),
    )
}

fn status(code: u16, headers: &HeaderMap) -> Outcome<'_> {
    Outcome::Response(StatusCode::from_u16(code).unwrap(), headers)
}

fn retry_after(secs: &'static str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("retry-after", HeaderValue::from_static(secs));
    h
}

#[test]
fn success_and_other_4xx_are_returned_as_they_are() {
    let p = policy().build();
    let none = HeaderMap::new();
    for code in [200, 201, 400, 404, 409] {
        assert_eq!(
            after(&p, 1, Method::POST, status(code, &none), None),
            Decision::Return
        );
    }
}

#[test]
fn a_503_is_retried_after_the_backoff_until_the_attempts_run_out() {
    let p = policy().build();
    let none = HeaderMap::new();
    assert_eq!(
        after(&p, 1, Method::POST, status(503, &none), None),
        Decision::Retry {
            reason: RetryReason::ServerError,
            delay: SECOND
        }
    );
    assert_eq!(
        after(&p, 3, Method::POST, status(503, &none), None),
        Decision::Stop {
            kind: ErrorKind::AttemptsExhausted,
            reason: Some(RetryReason::ServerError)
        }
    );
}

#[test]
fn retry_after_is_a_floor_with_a_small_spread_above_it() {
    let p = policy().build();
    let h = retry_after("5");
    let Decision::Retry { reason, delay } = after(&p, 1, Method::GET, status(429, &h), None) else {
        panic!("a 429 is retried")
    };
    assert_eq!(reason, RetryReason::RateLimited);
    assert!(
        delay >= 5 * SECOND && delay <= 5 * SECOND + SECOND / 2,
        "{delay:?}"
    );
}

#[test]
fn a_hint_past_the_cap_or_the_deadline_ends_the_call_with_the_hint() {
    let p = policy().max_retry_after(60 * SECOND).build();
    let h = retry_after("600");
    assert_eq!(
        after(&p, 1, Method::GET, status(429, &h), None),
        Decision::Fail {
            kind: ErrorKind::RetryAfterTooLong,
            retry_after: Some(600 * SECOND),
            limit: 60 * SECOND
        }
    );
    let h = retry_after("30");
    assert_eq!(
        after(&p, 1, Method::GET, status(503, &h), Some(10 * SECOND)),
        Decision::Fail {
            kind: ErrorKind::DeadlineExceeded,
            retry_after: Some(30 * SECOND),
            limit: 10 * SECOND
        }
    );
}

#[test]
fn a_backoff_past_the_deadline_ends_the_call_but_a_hint_that_fits_is_kept() {
    let p = policy().base_delay(4 * SECOND).build();
    let none = HeaderMap::new();
    assert_eq!(
        after(&p, 1, Method::GET, status(503, &none), Some(SECOND)),
        Decision::Fail {
            kind: ErrorKind::DeadlineExceeded,
            retry_after: None,
            limit: SECOND
        }
    );
    // A hint of 2 s with 2 s left: the spread above the hint is trimmed, the hint is not.
    let p = policy().base_delay(SECOND).build();
    let h = retry_after("2");
    assert_eq!(
        after(&p, 1, Method::GET, status(503, &h), Some(2 * SECOND)),
        Decision::Retry {
            reason: RetryReason::ServerError,
            delay: 2 * SECOND
        }
    );
}

/// With no time left, no retry, whatever the hint (`Retry-After: 0`, a date in the past, one
/// that would fit): the attempts do not go out back to back past the deadline. With time left,
/// a hint that fits keeps the call going until the deadline, a backoff longer than the time
/// left trimmed to it.
#[test]
fn no_retry_once_the_deadline_is_past_whatever_the_hint() {
    let zero = retry_after("0");
    let p = policy().build();
    for h in [&zero, &retry_after("2")] {
        assert_eq!(
            after(&p, 1, Method::GET, status(503, h), Some(Duration::ZERO)),
            Decision::Fail {
                kind: ErrorKind::DeadlineExceeded,
                retry_after: if h == &zero { None } else { Some(2 * SECOND) },
                limit: Duration::ZERO
            }
        );
    }
    let p = policy().base_delay(4 * SECOND).build();
    assert_eq!(
        after(&p, 1, Method::GET, status(503, &zero), Some(SECOND)),
        Decision::Retry {
            reason: RetryReason::ServerError,
            delay: SECOND
        }
    );
}

/// The spread above a hint never takes the wait past the longest hint the policy waits for.
#[test]
fn the_spread_above_a_hint_stops_at_the_longest_hint_waited_for() {
    let p = policy()
        .retry_after_spread(1.0, SECOND)
        .max_retry_after(5 * SECOND)
        .build();
    assert_eq!(
        after(&p, 1, Method::GET, status(429, &retry_after("5")), None),
        Decision::Retry {
            reason: RetryReason::RateLimited,
            delay: 5 * SECOND
        }
    );
}

#[test]
fn an_ambiguous_error_is_replayed_only_when_the_request_is_safe_to_send_twice() {
    let p = policy().build();
    let reset = io::Error::from(io::ErrorKind::ConnectionReset);
    assert_eq!(
        after(&p, 1, Method::POST, Outcome::Error(&reset), None),
        Decision::Stop {
            kind: ErrorKind::OutcomeUnknown,
            reason: None
        }
    );
    assert_eq!(
        after(&p, 1, Method::PUT, Outcome::Error(&reset), None),
        Decision::Retry {
            reason: RetryReason::Ambiguous,
            delay: SECOND
        }
    );
    let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
    assert_eq!(
        after(&p, 1, Method::POST, Outcome::Error(&refused), None),
        Decision::Retry {
            reason: RetryReason::Connect,
            delay: SECOND
        }
    );
}

#[test]
fn a_408_goes_back_to_a_post_and_is_replayed_for_a_get() {
    let p = policy().build();
    let none = HeaderMap::new();
    assert_eq!(
        after(&p, 1, Method::POST, status(408, &none), None),
        Decision::Return
    );
    assert_eq!(
        after(&p, 1, Method::GET, status(408, &none), None),
        Decision::Retry {
            reason: RetryReason::RequestTimeout,
            delay: SECOND
        }
    );
}

#[test]
fn a_413_is_never_resent_whatever_the_classifier_says() {
    struct Everything;
    impl Classify for Everything {
        fn classify_response(
            &self,
            _: &request::Parts,
            _: StatusCode,
            _: &HeaderMap,
        ) -> Classification {
            Classification::Retry(RetryReason::ServerError)
        }
        fn classify_error(
            &self,
            _: &request::Parts,
            _: &(dyn std::error::Error + 'static),
        ) -> Classification {
            Classification::Retry(RetryReason::ServerError)
        }
    }
    let p = policy().classifier(Everything).build();
    let none = HeaderMap::new();
    assert_eq!(
        after(&p, 1, Method::GET, status(413, &none), None),
        Decision::Return
    );
    assert!(matches!(
        after(&p, 1, Method::GET, status(400, &none), None),
        Decision::Retry { .. }
    ));
}

#[test]
fn a_body_that_cannot_be_sent_again_returns_the_outcome_as_it_came() {
    let p = policy().build();
    let none = HeaderMap::new();
    let now = Instant::now();
    let mut state = State::new(None, false, None);
    state.attempts = 1;
    let d = decide(
        &p,
        &mut state,
        &parts(Method::GET),
        status(503, &none),
        &Fixed(now, SystemTime::now()),
    );
    assert_eq!(d, Decision::Return);
}

#[test]
fn successive_retries_follow_the_backoff_schedule() {
    let p = policy().max_attempts(5).build();
    let none = HeaderMap::new();
    let now = Instant::now();
    let mut state = State::new(None, true, None);
    let mut delays = Vec::new();
    for attempt in 1..5 {
        state.attempts = attempt;
        match decide(
            &p,
            &mut state,
            &parts(Method::GET),
            status(502, &none),
            &Fixed(now, SystemTime::now()),
        ) {
            Decision::Retry { delay, .. } => delays.push(delay.as_secs()),
            other => panic!("attempt {attempt}: {other:?}"),
        }
    }
    assert_eq!(delays, [1, 2, 4, 8]);
}

#[test]
fn the_retried_statuses_are_the_listed_ones_and_nothing_else() {
    let listed = DefaultClassifier::new()
        .retry_statuses([429, 500, 507].map(|s| StatusCode::from_u16(s).unwrap()))
        .unwrap();
    let p = policy().classifier(listed).build();
    let none = HeaderMap::new();
    for (code, reason) in [
        (429, RetryReason::RateLimited),
        (500, RetryReason::ServerError),
        (507, RetryReason::ServerError),
    ] {
        assert_eq!(
            after(&p, 1, Method::POST, status(code, &none), None),
            Decision::Retry {
                reason,
                delay: SECOND
            },
            "{code}"
        );
    }
    // Left out of the list: returned at once, even the default's 503.
    for code in [502, 503, 504, 501] {
        assert_eq!(
            after(&p, 1, Method::GET, status(code, &none), None),
            Decision::Return,
            "{code}"
        );
    }
    // A 408 keeps its own rule: ambiguous, replayed for a GET only.
    assert!(matches!(
        after(&p, 1, Method::GET, status(408, &none), None),
        Decision::Retry { .. }
    ));
}

#[test]
fn statuses_that_another_attempt_cannot_change_are_refused_with_the_reason() {
    for (code, says) in [
        (409, "only 429 and 500 to 599"),
        (404, "only 429 and 500 to 599"),
        (408, "always ambiguous"),
        (413, "never retried"),
        (200, "only 429 and 500 to 599"),
    ] {
        let status = StatusCode::from_u16(code).unwrap();
        let err = DefaultClassifier::new()
            .retry_statuses([StatusCode::TOO_MANY_REQUESTS, status])
            .unwrap_err();
        assert_eq!(err.0, status);
        assert!(err.to_string().contains(says), "{code}: {err}");
    }
}

#[test]
fn retry_500_adds_and_removes_500_alone() {
    let none = HeaderMap::new();
    let with = policy()
        .classifier(DefaultClassifier::new().retry_500(true))
        .build();
    let without = policy()
        .classifier(DefaultClassifier::new().retry_500(true).retry_500(false))
        .build();
    assert!(matches!(
        after(&with, 1, Method::GET, status(500, &none), None),
        Decision::Retry { .. }
    ));
    assert_eq!(
        after(&without, 1, Method::GET, status(500, &none), None),
        Decision::Return
    );
    for p in [&with, &without] {
        assert!(matches!(
            after(p, 1, Method::GET, status(503, &none), None),
            Decision::Retry { .. }
        ));
    }
}
