//! The labelled metrics, through the `metrics` facade.

use std::borrow::Cow;
use std::fmt;

use http::{Method, StatusCode, request};
use metrics::SharedString;
use tokio::time::Instant;

use super::RetryReason;

/// The metric names, one constant each (see the [table](super#the-metrics)).
pub mod names {
    /// Logical calls, counted when they end.
    pub const CALLS: &str = "genesys_tower_calls_total";
    /// A call's time, every attempt and wait included, in seconds.
    pub const CALL_DURATION: &str = "genesys_tower_call_duration_seconds";
    /// Attempts sent.
    pub const ATTEMPTS: &str = "genesys_tower_attempts_total";
    /// One attempt's time, in seconds.
    pub const ATTEMPT_DURATION: &str = "genesys_tower_attempt_duration_seconds";
    /// Retries, by reason.
    pub const RETRIES: &str = "genesys_tower_retries_total";
    /// 429 responses.
    pub const RATE_LIMITED: &str = "genesys_tower_rate_limited_total";
    /// Retries the budget refused.
    pub const BUDGET_REFUSALS: &str = "genesys_tower_budget_refusals_total";
    /// Calls under way in the retry layer.
    pub const CALLS_IN_FLIGHT: &str = "genesys_tower_calls_in_flight";
    /// Tokens fetched from the token source.
    pub const TOKEN_FETCHES: &str = "genesys_tower_token_fetches_total";
    /// Re-sends after a 401 with a fresh token.
    pub const TOKEN_REFRESHES: &str = "genesys_tower_token_refreshes_total";
    /// Requests held back by pacing.
    pub const PACING_WAITS: &str = "genesys_tower_pacing_waits_total";
    /// Requests shed by the concurrency limit.
    pub const CONCURRENCY_REJECTIONS: &str = "genesys_tower_concurrency_rejections_total";
    /// Calls answered from an idempotency store.
    pub const IDEMPOTENT_REPLAYS: &str = "genesys_tower_idempotent_replays_total";
    /// Calls joined to one in flight with the same key.
    pub const IDEMPOTENT_JOINS: &str = "genesys_tower_idempotent_joins_total";
}

/// A request's route template, set as a request extension: the `route` label of the metrics and
/// the `url.template` field of the spans.
///
/// A template (`/api/v2/users/{id}`), not the raw path: raw paths carry ids, and a label per id
/// would make a series per id. Requests without it are labelled `other`. `genesys-client` sets
/// it on every request it builds.
///
/// ```
/// use genesys_tower::metrics::Route;
///
/// let mut request = http::Request::get("/api/v2/users/42").body(()).unwrap();
/// request.extensions_mut().insert(Route::new("/api/v2/users/{id}"));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Route(Cow<'static, str>);

impl Route {
    /// A route template. A `&'static str` costs nothing to label with; a `String` is cloned per
    /// metric recorded.
    pub fn new(template: impl Into<Cow<'static, str>>) -> Self {
        Route(template.into())
    }

    /// The template.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Route").field(&self.0).finish()
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a real recorder is installed, so that labels are worth building.
///
/// The facade gives no other way to ask: with none installed it hands out its no-op recorder, a
/// zero-sized type, where every real recorder holds state. A zero-sized recorder of your own is
/// taken for "none".
#[inline]
pub(crate) fn recording() -> bool {
    metrics::with_recorder(|recorder| size_of_val(recorder) != 0)
}

/// The `route` label of a request.
pub(crate) fn route_label(parts: &request::Parts) -> SharedString {
    match parts.extensions.get::<Route>() {
        Some(Route(Cow::Borrowed(s))) => SharedString::const_str(s),
        Some(Route(Cow::Owned(s))) => SharedString::from_owned(s.clone()),
        None => SharedString::const_str("other"),
    }
}

fn method_label(method: &Method) -> SharedString {
    let known = match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        // An extension method is labelled as one: its name comes from the caller.
        _ => "_OTHER",
    };
    SharedString::const_str(known)
}

/// The `outcome` label: the status class, or `error`.
pub(crate) fn outcome_label(status: Option<StatusCode>) -> &'static str {
    match status.map(|s| s.as_u16() / 100) {
        Some(1) => "1xx",
        Some(2) => "2xx",
        Some(3) => "3xx",
        Some(4) => "4xx",
        Some(5) => "5xx",
        _ => "error",
    }
}

/// The labelled metrics of one call of the retry layer. Inert (nothing built, nothing recorded)
/// when no recorder is installed. Counts the call in flight until dropped, so that a call
/// cancelled by its caller leaves the gauge too.
pub(crate) struct CallMetrics {
    /// Boxed: built only when recording, and the call's state is moved with the call.
    labels: Option<Box<Labels>>,
}

struct Labels {
    method: SharedString,
    route: SharedString,
    policy: SharedString,
    /// When the call started.
    started: Instant,
}

impl CallMetrics {
    pub(crate) fn start(parts: &request::Parts, policy_version: &SharedString) -> Self {
        let labels = recording().then(|| {
            Box::new(Labels {
                method: method_label(&parts.method),
                route: route_label(parts),
                policy: policy_version.clone(),
                started: Instant::now(),
            })
        });
        if labels.is_some() {
            metrics::gauge!(names::CALLS_IN_FLIGHT).increment(1.0);
        }
        CallMetrics { labels }
    }

    /// When an attempt starts; the clock is read only when recording.
    pub(crate) fn attempt_start(&self) -> Option<Instant> {
        self.labels.as_ref().map(|_| Instant::now())
    }

    /// The attempt started at `sent` ended, with a response of `status` or an error (`None`).
    /// Checked where it is called (inlined): most programs install no recorder.
    #[inline]
    pub(crate) fn attempt(&self, status: Option<StatusCode>, sent: Option<Instant>) {
        if let (Some(l), Some(sent)) = (&self.labels, sent) {
            Self::record_attempt(l, status, sent);
        }
    }

    #[inline(never)]
    fn record_attempt(l: &Labels, status: Option<StatusCode>, sent: Instant) {
        let elapsed = sent.elapsed();
        let outcome = outcome_label(status);
        let labels = [
            ("method", l.method.clone()),
            ("route", l.route.clone()),
            ("outcome", SharedString::const_str(outcome)),
        ];
        metrics::counter!(names::ATTEMPTS, &labels).increment(1);
        metrics::histogram!(names::ATTEMPT_DURATION, &labels).record(elapsed.as_secs_f64());
        if status == Some(StatusCode::TOO_MANY_REQUESTS) {
            metrics::counter!(names::RATE_LIMITED, &labels[..2]).increment(1);
        }
    }

    pub(crate) fn retry(&self, reason: RetryReason) {
        let Some(l) = &self.labels else { return };
        metrics::counter!(
            names::RETRIES,
            "method" => l.method.clone(),
            "route" => l.route.clone(),
            "reason" => reason.as_str(),
            "policy_version" => l.policy.clone()
        )
        .increment(1);
    }

    pub(crate) fn budget_refusal(&self) {
        let Some(l) = &self.labels else { return };
        metrics::counter!(
            names::BUDGET_REFUSALS,
            "method" => l.method.clone(),
            "route" => l.route.clone(),
            "policy_version" => l.policy.clone()
        )
        .increment(1);
    }

    /// The call ended with a response of `status`, or an error (`None`).
    #[inline]
    pub(crate) fn finish(&self, status: Option<StatusCode>) {
        if let Some(l) = &self.labels {
            Self::record_finish(l, status);
        }
    }

    #[inline(never)]
    fn record_finish(l: &Labels, status: Option<StatusCode>) {
        let labels = [
            ("method", l.method.clone()),
            ("route", l.route.clone()),
            ("outcome", SharedString::const_str(outcome_label(status))),
            ("policy_version", l.policy.clone()),
        ];
        metrics::counter!(names::CALLS, &labels).increment(1);
        metrics::histogram!(names::CALL_DURATION, &labels)
            .record(l.started.elapsed().as_secs_f64());
    }
}

impl Drop for CallMetrics {
    #[inline]
    fn drop(&mut self) {
        if self.labels.is_some() {
            leave_in_flight();
        }
    }
}

#[inline(never)]
fn leave_in_flight() {
    metrics::gauge!(names::CALLS_IN_FLIGHT).decrement(1.0);
}
