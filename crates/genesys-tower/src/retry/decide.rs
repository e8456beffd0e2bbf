//! The retry decision: from the policy, the call's state and one attempt's outcome, what to do
//! next. No I/O, no clock read, no sleep: the loop in [`super::Call::run`] sends, drains and
//! waits; this module only decides, so every rule can be tested on its own.

use std::error::Error as StdError;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode, request};
use tokio::time::Instant;

use super::RetryReason;
use super::{Backoff, Classification, ErrorKind, RetryPolicy, headers};

/// What the call knows between attempts.
#[derive(Debug)]
pub(super) struct State {
    /// Attempts sent so far, the last one included.
    pub(super) attempts: u32,
    /// Time spent in backoff so far.
    pub(super) waited: Duration,
    /// When the call started, and the policy's total deadline from then: the instant it must
    /// end by is worked out only when a retry is weighed, which most calls never do.
    pub(super) deadline: Option<(Instant, Duration)>,
    /// Whether the body can be sent again (false for a stream past the replay limit).
    pub(super) replayable: bool,
    /// An attempt failed after the request may have reached the server, and the request was
    /// safe to send again: it may have been applied, whatever the later attempts get.
    pub(super) maybe_applied: bool,
    /// The status of the last attempt's response (`None`: no attempt yet, or an error).
    pub(super) last_status: Option<http::StatusCode>,
    /// The call's backoff schedule, made at its first retry (boxed: most calls never retry,
    /// and the state is moved with the call).
    backoff: Option<Box<Backoff>>,
    seed: Option<u64>,
}

impl State {
    pub(super) fn new(
        deadline: Option<(Instant, Duration)>,
        replayable: bool,
        seed: Option<u64>,
    ) -> Self {
        State {
            attempts: 0,
            waited: Duration::ZERO,
            deadline,
            replayable,
            maybe_applied: false,
            last_status: None,
            backoff: None,
            seed,
        }
    }
}

/// One attempt's outcome, as the decision sees it (the response's head, not its body).
#[derive(Debug, Clone, Copy)]
pub(super) enum Outcome<'a> {
    Response(StatusCode, &'a HeaderMap),
    Error(&'a (dyn StdError + 'static)),
}

impl Outcome<'_> {
    pub(super) fn status(&self) -> Option<StatusCode> {
        match self {
            Outcome::Response(status, _) => Some(*status),
            Outcome::Error(_) => None,
        }
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Give the caller the outcome as it came: a final one, or one whose body cannot be sent
    /// again.
    Return,
    /// Not retried: a response goes back as it is; an error goes back inside an
    /// [`Error`](super::Error) of this kind.
    Stop {
        kind: ErrorKind,
        reason: Option<RetryReason>,
    },
    /// End with an [`Error`](super::Error) of this kind, even after a response: the server's
    /// hint, or the deadline, rules out another attempt.
    Fail {
        kind: ErrorKind,
        retry_after: Option<Duration>,
        limit: Duration,
    },
    /// Send again after `delay`, if the budget allows.
    Retry {
        reason: RetryReason,
        delay: Duration,
    },
}

/// The clocks a decision may read: the monotonic one for the deadline, the wall clock for
/// `Retry-After` dates. Read only when a rule needs them, so that a call that succeeds at once
/// reads neither; tests give fixed ones.
pub(super) trait Clock {
    fn now(&self) -> Instant;
    fn wall(&self) -> SystemTime;
}

/// The system's clocks (tokio's monotonic clock, so that a paused test clock applies).
pub(super) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn wall(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// Decides what follows an attempt, reading `clock` at the end of the attempt if it must.
pub(super) fn decide(
    policy: &RetryPolicy,
    state: &mut State,
    request: &request::Parts,
    outcome: Outcome<'_>,
    clock: &impl Clock,
) -> Decision {
    let reason = match classify(policy, request, outcome) {
        Classification::Final => return Decision::Return,
        Classification::Retry(reason) => reason,
        // Possibly applied, and not safe to send twice: an error says the outcome is unknown;
        // a response (a 408, a gateway's 502) already says so by its status.
        Classification::Ambiguous if !policy.may_replay(request) => {
            return match outcome {
                Outcome::Error(_) => Decision::Stop {
                    kind: ErrorKind::OutcomeUnknown,
                    reason: None,
                },
                // Returned as it is, with a `RetryInfo` that says the request may have been
                // applied (the status alone does not say it was judged so).
                Outcome::Response(..) => {
                    state.maybe_applied = true;
                    Decision::Return
                }
            };
        }
        Classification::Ambiguous if outcome.status() == Some(StatusCode::REQUEST_TIMEOUT) => {
            state.maybe_applied = true;
            RetryReason::RequestTimeout
        }
        Classification::Ambiguous => {
            state.maybe_applied = true;
            RetryReason::Ambiguous
        }
    };
    if state.attempts >= policy.max_attempts() {
        return Decision::Stop {
            kind: ErrorKind::AttemptsExhausted,
            reason: Some(reason),
        };
    }
    if !state.replayable {
        return Decision::Return;
    }
    let hint = match outcome {
        Outcome::Response(status, headers) => headers::hint(
            headers,
            clock.wall(),
            status == StatusCode::TOO_MANY_REQUESTS,
        ),
        Outcome::Error(_) => None,
    };
    if let Some(hint) = hint.filter(|h| *h > policy.max_retry_after()) {
        return Decision::Fail {
            kind: ErrorKind::RetryAfterTooLong,
            retry_after: Some(hint),
            limit: policy.max_retry_after(),
        };
    }

    let backoff = state
        .backoff
        .get_or_insert_with(|| Box::new(policy.backoff_with_seed(state.seed)));
    let mut delay = backoff.next_delay();
    // The server's hint, when it is the floor of the wait (not a shorter one the backoff
    // already waits past): the spread above it never takes the wait past the longest hint
    // the policy waits for.
    if let Some(hint) = hint.filter(|h| *h >= delay) {
        delay = hint
            .saturating_add(backoff.spread(policy.spread_for(hint)))
            .min(policy.max_retry_after());
    }
    // tokio's timers tick in whole milliseconds: round up, so that `waited` is what the call
    // really waits.
    delay = ceil_millis(delay);
    if let Some((started, total)) = state.deadline {
        let left = crate::time::after(started, total).saturating_duration_since(clock.now());
        if let Some(hint) = hint.filter(|h| *h > left) {
            return Decision::Fail {
                kind: ErrorKind::DeadlineExceeded,
                retry_after: Some(hint),
                limit: left,
            };
        }
        if delay > left || left.is_zero() {
            // A hint that fits: the wait is trimmed to what is left (the spread above the hint,
            // or a backoff longer than it), and the server's wait is kept. Without a hint, a
            // backoff past what is left ends the call, and so does no time left at all.
            if hint.is_none() || left.is_zero() {
                return Decision::Fail {
                    kind: ErrorKind::DeadlineExceeded,
                    retry_after: None,
                    limit: left,
                };
            }
            delay = left;
        }
    }
    Decision::Retry { reason, delay }
}

fn classify(
    policy: &RetryPolicy,
    request: &request::Parts,
    outcome: Outcome<'_>,
) -> Classification {
    match outcome {
        // A 413 is never re-sent, whatever the classifier says: the same request would be
        // refused again, and re-sending a large body only adds load.
        Outcome::Response(StatusCode::PAYLOAD_TOO_LARGE, _) => Classification::Final,
        Outcome::Response(status, headers) => policy
            .classifier()
            .classify_response(request, status, headers),
        Outcome::Error(error) => policy.classifier().classify_error(request, error),
    }
}

fn ceil_millis(d: Duration) -> Duration {
    let sub_ms = d.subsec_nanos() % 1_000_000;
    if sub_ms == 0 {
        d
    } else {
        d.saturating_add(Duration::from_nanos(u64::from(1_000_000 - sub_ms)))
    }
}

#[cfg(test)]
mod tests;
