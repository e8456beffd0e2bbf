//! The retry policy and its builder.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{Method, request};
use metrics::SharedString;

use super::backoff::{Backoff, Jitter, JitterStrategy};
use super::budget::RetryBudget;
use super::classify::{Classify, DefaultClassifier, RetrySafety};
use crate::body::DEFAULT_REPLAY_LIMIT;

pub use crate::headers::IDEMPOTENCY_KEY;

type KeyPredicate = dyn Fn(&request::Parts) -> bool + Send + Sync;
type SafetyRule = dyn Fn(&request::Parts) -> Option<RetrySafety> + Send + Sync;

/// What to retry, how long to wait, and when to stop.
///
/// Built with [`RetryPolicy::builder`]; [`RetryPolicy::default`] has the defaults below. Cheap to
/// clone: clones share one [`RetryBudget`] and one seeded random sequence, so every
/// [`Retry`](super::Retry) service made from one policy draws on the same budget.
///
/// | setting | default |
/// | --- | --- |
/// | [`max_attempts`](RetryPolicyBuilder::max_attempts) | 4 (the first attempt and 3 retries) |
/// | [`base_delay`](RetryPolicyBuilder::base_delay) | 500 ms |
/// | [`factor`](RetryPolicyBuilder::factor) | 2 |
/// | [`max_delay`](RetryPolicyBuilder::max_delay) | 30 s |
/// | [`jitter`](RetryPolicyBuilder::jitter) | [`Jitter::Full`] |
/// | [`max_retry_after`](RetryPolicyBuilder::max_retry_after) | 180 s (as the Genesys Cloud SDKs) |
/// | [`retry_after_spread`](RetryPolicyBuilder::retry_after_spread) | up to 10 % of the hint, at most 1 s |
/// | [`budget`](RetryPolicyBuilder::budget) | [`RetryBudget::new`] (20 % of requests, 1/s, burst 100) |
/// | [`deadline`](RetryPolicyBuilder::deadline) | none |
/// | [`classifier`](RetryPolicyBuilder::classifier) | [`DefaultClassifier`] (500 not retried) |
/// | [`honours_idempotency_keys`](RetryPolicyBuilder::honours_idempotency_keys) | no target |
/// | [`safety`](RetryPolicyBuilder::safety) | none (each request's own [`RetrySafety`] mark) |
/// | [`replay_limit`](RetryPolicyBuilder::replay_limit) | 1 MiB |
/// | [`seed`](RetryPolicyBuilder::seed) | none (seeded from the operating system) |
///
/// ```
/// use std::time::Duration;
/// use genesys_tower::retry::{DefaultClassifier, Jitter, RetryPolicy};
///
/// let policy = RetryPolicy::builder()
///     .max_attempts(5)
///     .base_delay(Duration::from_millis(200))
///     .jitter(Jitter::Equal)
///     .deadline(Duration::from_secs(60))
///     .classifier(DefaultClassifier::new().retry_500(true))
///     // Our ingestion endpoint deduplicates by Idempotency-Key: POSTs to it may be replayed.
///     .honours_idempotency_keys(|req| req.uri.path().starts_with("/api/v2/ingestion"))
///     .build();
/// assert_eq!(policy.max_attempts(), 5);
/// ```
#[derive(Clone)]
pub struct RetryPolicy {
    inner: Arc<Inner>,
}

struct Inner {
    max_attempts: u32,
    base: Duration,
    factor: f64,
    cap: Duration,
    jitter: Arc<dyn JitterStrategy>,
    max_retry_after: Duration,
    spread_ratio: f64,
    spread_max: Duration,
    budget: Option<Arc<RetryBudget>>,
    deadline: Option<Duration>,
    classifier: Arc<dyn Classify>,
    honours_keys: Option<Arc<KeyPredicate>>,
    safety: Option<Arc<SafetyRule>>,
    replay_limit: usize,
    seed: Option<u64>,
    version: SharedString,
    calls: AtomicU64,
}

impl RetryPolicy {
    /// A builder with the defaults listed above.
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder {
            max_attempts: 4,
            base: Duration::from_millis(500),
            factor: 2.0,
            cap: Duration::from_secs(30),
            jitter: Arc::new(Jitter::Full),
            max_retry_after: Duration::from_secs(180),
            spread_ratio: 0.1,
            spread_max: Duration::from_secs(1),
            budget: Some(Arc::new(RetryBudget::new())),
            deadline: None,
            classifier: Arc::new(DefaultClassifier::new()),
            honours_keys: None,
            safety: None,
            replay_limit: DEFAULT_REPLAY_LIMIT,
            seed: None,
            version: SharedString::const_str("default"),
        }
    }

    /// Attempts per call, the first included.
    #[must_use]
    pub fn max_attempts(&self) -> u32 {
        self.inner.max_attempts
    }

    /// The longest server hint the layer waits for.
    #[must_use]
    pub fn max_retry_after(&self) -> Duration {
        self.inner.max_retry_after
    }

    /// The total deadline across attempts, if any.
    #[must_use]
    pub fn deadline(&self) -> Option<Duration> {
        self.inner.deadline
    }

    /// The bound up to which a streaming request body is buffered so it can be replayed.
    #[must_use]
    pub fn replay_limit(&self) -> usize {
        self.inner.replay_limit
    }

    /// The shared retry budget, if the policy has one.
    #[must_use]
    pub fn budget(&self) -> Option<&RetryBudget> {
        self.inner.budget.as_deref()
    }

    /// The policy's name, set by [`RetryPolicyBuilder::version`].
    #[must_use]
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    pub(crate) fn version_label(&self) -> &SharedString {
        &self.inner.version
    }

    /// The classifier.
    #[must_use]
    pub fn classifier(&self) -> &dyn Classify {
        &*self.inner.classifier
    }

    /// A fresh backoff schedule with this policy's settings. With a [`seed`](RetryPolicyBuilder::seed),
    /// it is seeded with exactly that seed: the delays of the first call made through a
    /// [`Retry`](super::Retry) service built from this policy are the delays of this schedule.
    #[must_use]
    pub fn backoff(&self) -> Backoff {
        self.backoff_with_seed(self.inner.seed)
    }

    pub(crate) fn backoff_with_seed(&self, seed: Option<u64>) -> Backoff {
        let i = &self.inner;
        let backoff = Backoff::new(i.base, i.factor, i.cap).jitter_arc(i.jitter.clone());
        match seed {
            Some(seed) => backoff.seed(seed),
            None => backoff,
        }
    }

    /// Whether `other` is the same policy (one seed counter, one budget), not an equal one.
    #[cfg(test)]
    pub(super) fn is_same(&self, other: &RetryPolicy) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The seed of the next call's schedule: the policy's seed for the first call, then values
    /// derived from it in call order, so that concurrent calls do not move in lockstep.
    pub(crate) fn next_call_seed(&self) -> Option<u64> {
        let seed = self.inner.seed?;
        let n = self.inner.calls.fetch_add(1, Ordering::Relaxed);
        Some(seed.wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
    }

    /// The extra delay above a `Retry-After` floor may be at most this much.
    pub(crate) fn spread_for(&self, hint: Duration) -> Duration {
        // Not `mul_f64`: it panics when the product rounds past `Duration::MAX`.
        Duration::try_from_secs_f64(hint.as_secs_f64() * self.inner.spread_ratio)
            .unwrap_or(self.inner.spread_max)
            .min(self.inner.spread_max)
    }

    /// The safety the policy's [`safety`](RetryPolicyBuilder::safety) rule gives this request, if
    /// it has a rule and the rule answers.
    #[must_use]
    pub fn safety_for(&self, request: &request::Parts) -> Option<RetrySafety> {
        self.inner.safety.as_ref().and_then(|rule| rule(request))
    }

    /// Whether this request may be sent again after an ambiguous failure (one where it may have
    /// been applied): never when marked [`RetrySafety::Unsafe`]; otherwise when its method is
    /// idempotent (GET, HEAD, OPTIONS, PUT, DELETE, TRACE), when marked
    /// [`RetrySafety::Idempotent`], or when it carries an `Idempotency-Key` and the target honours
    /// keys (marked [`RetrySafety::KeyHonoured`], or per
    /// [`honours_idempotency_keys`](RetryPolicyBuilder::honours_idempotency_keys)).
    pub fn may_replay(&self, request: &request::Parts) -> bool {
        let safety = request.extensions.get::<RetrySafety>().copied();
        if safety == Some(RetrySafety::Unsafe) {
            return false;
        }
        if safety == Some(RetrySafety::Idempotent) || is_idempotent(&request.method) {
            return true;
        }
        request.headers.contains_key(IDEMPOTENCY_KEY)
            && (safety == Some(RetrySafety::KeyHonoured)
                || self.inner.honours_keys.as_ref().is_some_and(|f| f(request)))
    }
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let i = &self.inner;
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &i.max_attempts)
            .field("base_delay", &i.base)
            .field("factor", &i.factor)
            .field("max_delay", &i.cap)
            .field("jitter", &i.jitter)
            .field("max_retry_after", &i.max_retry_after)
            .field("budget", &i.budget)
            .field("deadline", &i.deadline)
            .field("honours_idempotency_keys", &i.honours_keys.is_some())
            .field("safety_rule", &i.safety.is_some())
            .field("replay_limit", &i.replay_limit)
            .field("seeded", &i.seed.is_some())
            .field("version", &&*i.version)
            .finish_non_exhaustive()
    }
}

/// Builds a [`RetryPolicy`]; start with [`RetryPolicy::builder`].
#[must_use]
pub struct RetryPolicyBuilder {
    max_attempts: u32,
    base: Duration,
    factor: f64,
    cap: Duration,
    jitter: Arc<dyn JitterStrategy>,
    max_retry_after: Duration,
    spread_ratio: f64,
    spread_max: Duration,
    budget: Option<Arc<RetryBudget>>,
    deadline: Option<Duration>,
    classifier: Arc<dyn Classify>,
    honours_keys: Option<Arc<KeyPredicate>>,
    safety: Option<Arc<SafetyRule>>,
    replay_limit: usize,
    seed: Option<u64>,
    version: SharedString,
}

impl RetryPolicyBuilder {
    /// Attempts per call, the first included (default 4). 1 disables retries; 0 is taken as 1
    /// by [`build`](Self::build) and refused by [`try_build`](Self::try_build).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The first backoff delay, before jitter (default 500 ms).
    pub fn base_delay(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// The growth of the delay per retry (default 2). Below 1, or not a number, is taken as 1 by
    /// [`build`](Self::build) and refused by [`try_build`](Self::try_build).
    pub fn factor(mut self, factor: f64) -> Self {
        self.factor = factor;
        self
    }

    /// The cap on a backoff delay (default 30 s). A server's hint may exceed it, up to
    /// [`max_retry_after`](Self::max_retry_after).
    pub fn max_delay(mut self, cap: Duration) -> Self {
        self.cap = cap;
        self
    }

    /// The jitter: one of [`Jitter`]'s modes (default [`Jitter::Full`]) or a [`JitterStrategy`]
    /// of your own.
    pub fn jitter(mut self, jitter: impl JitterStrategy) -> Self {
        self.jitter = Arc::new(jitter);
        self
    }

    /// The longest server hint (`Retry-After`, rate-limit reset) the layer waits for (default 180
    /// s). A longer hint ends the call at once with an [`Error`](super::Error) of kind
    /// [`RetryAfterTooLong`](super::ErrorKind::RetryAfterTooLong) that carries the hint.
    pub fn max_retry_after(mut self, max: Duration) -> Self {
        self.max_retry_after = max;
        self
    }

    /// The spread added above a server hint, so that clients released by the same hint do not
    /// all return at the same instant: a uniform extra delay of up to `ratio` of the hint, and at
    /// most `max` (default: 10 %, at most 1 s). The extra is added only when the hint is the
    /// floor, that is when it is longer than the jittered backoff delay. `(0.0, Duration::ZERO)`
    /// waits exactly the hint. A ratio outside 0 to 1, or not a number, is brought within by
    /// [`build`](Self::build) (not a number is 0) and refused by [`try_build`](Self::try_build).
    pub fn retry_after_spread(mut self, ratio: f64, max: Duration) -> Self {
        self.spread_ratio = ratio;
        self.spread_max = max;
        self
    }

    /// The retry budget (default [`RetryBudget::new`]). It is shared by every service built from
    /// the policy.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(Arc::new(budget));
        self
    }

    /// Shares an existing budget, for instance between the policies of several routes.
    pub fn shared_budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = Some(budget);
        self
    }

    /// No retry budget: only [`max_attempts`](Self::max_attempts) bounds retries. Not advised
    /// against a server that may fail as a whole.
    pub fn no_budget(mut self) -> Self {
        self.budget = None;
        self
    }

    /// A total deadline across attempts, counted from the call (default none). No attempt starts
    /// after it: when the next delay, or the server's hint, would pass it, the call ends at once
    /// with an [`Error`](super::Error) of kind
    /// [`DeadlineExceeded`](super::ErrorKind::DeadlineExceeded); so it does, at the deadline,
    /// when the service below is still not ready for the retry (a concurrency permit, a pacing
    /// window). An attempt in flight is not cut short: put a timeout layer above the retry
    /// layer for that.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// The classifier (default [`DefaultClassifier`]).
    pub fn classifier(mut self, classifier: impl Classify) -> Self {
        self.classifier = Arc::new(classifier);
        self
    }

    /// Which targets deduplicate by `Idempotency-Key`, decided from the request's head. A
    /// non-idempotent request that carries a key and that this predicate accepts is replayed after
    /// an ambiguous failure. Default: no target (a key alone proves nothing: the server must
    /// honour it). [`RetrySafety::KeyHonoured`] on a request says the same for one request.
    pub fn honours_idempotency_keys(
        mut self,
        predicate: impl Fn(&request::Parts) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.honours_keys = Some(Arc::new(predicate));
        self
    }

    /// Decides requests' [`RetrySafety`] from their head, ahead of their own mark: where the rule
    /// answers, the retry layer puts its answer on the request before the first attempt, in place
    /// of any mark the caller set, so that the classifier, the layers below and the replay
    /// decision all see it; where it answers `None`, the request keeps its own. Per-route safety
    /// from configuration: an operator corrects a route without a rebuild (a canary may too).
    ///
    /// ```
    /// use genesys_tower::retry::{RetryPolicy, RetrySafety};
    /// use http::Method;
    ///
    /// // Our conversation tags are set with a version: a replay is refused with 409.
    /// let policy = RetryPolicy::builder()
    ///     .safety(|req| {
    ///         (req.method == Method::PATCH && req.uri.path().starts_with("/api/v2/tags/"))
    ///             .then_some(RetrySafety::Idempotent)
    ///     })
    ///     .build();
    /// # let _ = policy;
    /// ```
    pub fn safety(
        mut self,
        rule: impl Fn(&request::Parts) -> Option<RetrySafety> + Send + Sync + 'static,
    ) -> Self {
        self.safety = Some(Arc::new(rule));
        self
    }

    /// The bound up to which a streaming request body is buffered so that it can be replayed
    /// (default 1 MiB). A longer body is sent once, as it streams, and never retried.
    pub fn replay_limit(mut self, limit: usize) -> Self {
        self.replay_limit = limit;
        self
    }

    /// Seeds the random source of the delays, so that they are reproducible (tests,
    /// simulations). See [`RetryPolicy::backoff`].
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// A name for this policy (default `default`): the `policy_version` label of the
    /// [metrics](crate::metrics) and a field of the call span, so that two versions of a policy
    /// can be compared side by side.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = SharedString::from_owned(version.into());
        self
    }

    /// The policy, or every setting that is out of range, each with its name and what is
    /// allowed: `max_attempts` 0, a `factor` below 1 or not a number, a `max_delay` below the
    /// `base_delay`, a spread ratio outside 0 to 1, a zero `max_retry_after` or `deadline`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use genesys_tower::retry::RetryPolicy;
    ///
    /// let err = RetryPolicy::builder()
    ///     .max_attempts(0)
    ///     .base_delay(Duration::from_millis(100))
    ///     .max_delay(Duration::from_millis(50))
    ///     .try_build()
    ///     .unwrap_err();
    /// assert_eq!(err.problems().len(), 2);
    /// assert!(err.to_string().contains("max_delay: 50ms is below base_delay (100ms)"));
    /// ```
    pub fn try_build(self) -> Result<RetryPolicy, PolicyError> {
        let mut problems = Vec::new();
        let mut problem = |field: &'static str, message: String| {
            problems.push(PolicyProblem { field, message });
        };
        if self.max_attempts == 0 {
            problem(
                "max_attempts",
                "0 is below 1 (1 sends once and never retries)".to_owned(),
            );
        }
        if !(self.factor.is_finite() && self.factor >= 1.0) {
            problem(
                "factor",
                format!("{} is not a number of 1 or more", self.factor),
            );
        }
        if self.cap < self.base {
            problem(
                "max_delay",
                format!("{:?} is below base_delay ({:?})", self.cap, self.base),
            );
        }
        if !(0.0..=1.0).contains(&self.spread_ratio) {
            problem(
                "retry_after_spread",
                format!("the ratio {} is outside 0 to 1", self.spread_ratio),
            );
        }
        if self.max_retry_after.is_zero() {
            problem(
                "max_retry_after",
                "0s would refuse every server hint; give at least 1s".to_owned(),
            );
        }
        if self.deadline.is_some_and(|d| d.is_zero()) {
            problem(
                "deadline",
                "0s leaves no time for an attempt; leave it unset for no deadline".to_owned(),
            );
        }
        if problems.is_empty() {
            Ok(self.build())
        } else {
            Err(PolicyError { problems })
        }
    }

    /// The policy, with out-of-range settings brought within range (`max_attempts` 0 is 1, a
    /// `factor` below 1 is 1, a spread ratio is clamped to 0 to 1). Use
    /// [`try_build`](Self::try_build) to be told instead.
    #[must_use]
    pub fn build(self) -> RetryPolicy {
        let spread_ratio = if self.spread_ratio.is_nan() {
            0.0
        } else {
            self.spread_ratio.clamp(0.0, 1.0)
        };
        RetryPolicy {
            inner: Arc::new(Inner {
                max_attempts: self.max_attempts.max(1),
                base: self.base,
                factor: self.factor,
                cap: self.cap,
                jitter: self.jitter.clone(),
                max_retry_after: self.max_retry_after,
                spread_ratio,
                spread_max: self.spread_max,
                budget: self.budget,
                deadline: self.deadline,
                classifier: self.classifier,
                honours_keys: self.honours_keys,
                safety: self.safety,
                replay_limit: self.replay_limit,
                seed: self.seed,
                version: self.version,
                calls: AtomicU64::new(0),
            }),
        }
    }
}

/// Why [`RetryPolicyBuilder::try_build`] refused the settings: every setting out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    problems: Vec<PolicyProblem>,
}

/// One setting out of range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    /// The builder method's name, e.g. `max_delay`.
    pub field: &'static str,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl PolicyError {
    /// Every problem, in the order of the builder's settings.
    #[must_use]
    pub fn problems(&self) -> &[PolicyProblem] {
        &self.problems
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid retry policy: ")?;
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", p.field, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyError {}

impl fmt::Debug for RetryPolicyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryPolicyBuilder")
            .field("max_attempts", &self.max_attempts)
            .field("base_delay", &self.base)
            .field("max_delay", &self.cap)
            .field("jitter", &self.jitter)
            .finish_non_exhaustive()
    }
}
