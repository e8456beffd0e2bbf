//! The whole stack as configuration: a TOML (or JSON) file a user can load, check and change
//! without a rebuild. See `docs/configuration.md` for every key, its default, its bounds and why.
//!
//! ```
//! use genesys_client::config::StackConfig;
//!
//! let config = StackConfig::from_toml(r#"
//!     [retry]
//!     max_attempts = 5
//!     base_delay = "250ms"
//!     max_delay = "20s"
//!     jitter = "equal"
//!
//!     [concurrency]
//!     limit = 16
//! "#).unwrap();
//! assert_eq!(config.retry.max_attempts, 5);
//!
//! // Every mistake at once, each with its path and what is allowed.
//! let err = StackConfig::from_toml(r#"
//!     [retry]
//!     max_attempts = 0
//!     base_delay = "500ms"
//!     max_delay = "50ms"
//! "#).unwrap_err();
//! let text = err.to_string();
//! assert!(text.contains("retry.max_attempts: 0 is outside 1 to 10"), "{text}");
//! assert!(text.contains("retry.max_delay: 50ms is below retry.base_delay (500ms)"), "{text}");
//! ```

use std::fmt;
use std::path::Path;
use std::time::Duration;

use genesys_tower::retry::{DefaultClassifier, Jitter, RetryBudget, RetryPolicy};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::GenesysClassifier;
use crate::defaults::{
    DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_BODY_IDLE_TIMEOUT, DEFAULT_DEADLINE, DEFAULT_MAX_ERROR_BODY,
    DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_RESPONSE_BODY,
};

/// The most attempts a file may ask for (seed 004's bound: ten).
pub const MAX_ATTEMPTS: u32 = 10;
/// The shortest delay a file may set, outside a test profile: shorter retries only add load.
pub const MIN_DELAY: Duration = Duration::from_millis(100);
/// The longest file this crate reads.
const MAX_FILE: u64 = 1024 * 1024;

/// A duration written as text (`"500ms"`, `"30s"`, `"2m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(text.trim())
            .map(Dur)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "{text:?} is not a duration ({e}); write it as \"500ms\", \"30s\" or \"2m\""
                ))
            })
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(self.0).to_string())
    }
}

impl JsonSchema for Dur {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration: a number and a unit, e.g. \"500ms\", \"30s\", \"2m\", \"1h\".",
            "pattern": "^\\s*[0-9]+(\\.[0-9]+)?\\s*[a-zµ]+(\\s*[0-9]+(\\.[0-9]+)?\\s*[a-zµ]+)*\\s*$"
        })
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

/// The jitter mode of the backoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JitterMode {
    /// Uniform between 0 and the delay (the default).
    Full,
    /// Half the delay, plus uniform up to the other half.
    Equal,
    /// Uniform between the base and three times the previous delay.
    Decorrelated,
    /// No randomness (tests only: clients released together return together).
    None,
}

impl JitterMode {
    /// The retry layer's jitter for this mode.
    #[must_use]
    pub fn jitter(self) -> Jitter {
        match self {
            JitterMode::Full => Jitter::Full,
            JitterMode::Equal => Jitter::Equal,
            JitterMode::Decorrelated => Jitter::Decorrelated,
            JitterMode::None => Jitter::None,
        }
    }
}

/// The whole stack's settings. Every section and key is optional; what is left out keeps the
/// client's default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct StackConfig {
    /// `"test"` allows delays under 100 ms (tests against a simulator); unset is production.
    /// Any other value is refused.
    pub profile: Option<String>,
    /// The retry layer.
    pub retry: RetryConfig,
    /// The token cache.
    pub auth: AuthConfig,
    /// The in-flight limit.
    pub concurrency: ConcurrencyConfig,
    /// Client-side pacing.
    pub pacing: PacingConfig,
    /// Timeouts.
    pub timeouts: TimeoutsConfig,
    /// Response body limits.
    pub bodies: BodiesConfig,
    /// The idempotency layer.
    pub idempotency: IdempotencyConfig,
}

/// `[retry]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryConfig {
    /// Attempts per call, the first included: 1 to 10 (default 4).
    pub max_attempts: u32,
    /// The first backoff delay (default 500ms).
    pub base_delay: Dur,
    /// The growth per retry: 1 to 10 (default 2).
    pub factor: f64,
    /// The cap on a backoff delay, at least `base_delay` (default 30s).
    pub max_delay: Dur,
    /// The jitter mode (default `full`).
    pub jitter: JitterMode,
    /// The longest server hint waited for: 1s to 1h (default 180s).
    pub max_retry_after: Dur,
    /// The total time a call may take, every attempt and wait included (default 300s).
    pub deadline: Dur,
    /// Whether a 500 is retried (default false: a 500 is more often a bug than a blip). The
    /// same as listing 500 in `statuses`.
    pub retry_500: bool,
    /// The statuses retried: 429 and any of 500 to 599 (default 429, 502, 503, 504). 408 is
    /// always ambiguous and 413 never retried, so neither can be listed.
    pub statuses: Vec<u16>,
    /// Whether 500, 502 and 504 count as ambiguous, replayed only for requests safe to send
    /// twice (default false: the server answered).
    pub ambiguous_gateway_errors: bool,
    /// Per-route safety: whether a request may be sent again after an ambiguous failure, by
    /// method and path template; the first rule that matches wins over the code's own mark.
    pub routes: Vec<RouteRule>,
    /// The retry budget; `enabled = false` leaves only `max_attempts` to bound retries.
    pub budget: BudgetConfig,
    /// A name for this policy, the `policy_version` label of the metrics (default `default`).
    pub version: String,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 4,
            base_delay: Dur(Duration::from_millis(500)),
            factor: 2.0,
            max_delay: Dur(Duration::from_secs(30)),
            jitter: JitterMode::Full,
            max_retry_after: Dur(Duration::from_secs(180)),
            deadline: Dur(DEFAULT_DEADLINE),
            retry_500: false,
            statuses: vec![429, 502, 503, 504],
            ambiguous_gateway_errors: false,
            routes: Vec::new(),
            budget: BudgetConfig::default(),
            version: "default".to_owned(),
        }
    }
}

/// One `[[retry.routes]]` rule: the retry safety of the requests of one method to one path
/// template.
///
/// ```toml
/// [[retry.routes]]
/// method = "PATCH"
/// route = "/api/v2/users/{userId}"
/// safety = "idempotent"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRule {
    /// The method (`GET`, `POST`, ...), or `*` for any.
    pub method: String,
    /// The path template, `{name}` standing for one segment: `/api/v2/users/{userId}`.
    pub route: String,
    /// Whether such a request may be sent again after an ambiguous failure.
    pub safety: Safety,
}

/// [`RetrySafety`](genesys_tower::retry::RetrySafety) as configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Safety {
    /// Safe to send twice, whatever the method (a conditional write).
    Idempotent,
    /// The target deduplicates by `Idempotency-Key`: replayed when the request carries one.
    KeyHonoured,
    /// Never replayed after an ambiguous failure, even for an idempotent method.
    Unsafe,
}

impl Safety {
    /// The retry layer's mark.
    #[must_use]
    pub fn retry_safety(self) -> genesys_tower::retry::RetrySafety {
        use genesys_tower::retry::RetrySafety;
        match self {
            Safety::Idempotent => RetrySafety::Idempotent,
            Safety::KeyHonoured => RetrySafety::KeyHonoured,
            Safety::Unsafe => RetrySafety::Unsafe,
        }
    }
}

/// The methods a rule may name.
const RULE_METHODS: &[&str] = &[
    "*", "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS",
];
/// The methods the idempotency layer may give a key.
const KEYED_METHODS: &[&str] = &["POST", "PATCH", "PUT", "DELETE"];
/// The most `[[retry.routes]]` rules (each request is matched against them in turn).
const MAX_ROUTE_RULES: usize = 64;

/// `[retry.budget]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BudgetConfig {
    /// Whether retries are bounded by a budget (default true).
    pub enabled: bool,
    /// Retries allowed per request: 0 to 1 (default 0.2).
    pub retry_ratio: f64,
    /// Retries allowed per second whatever the traffic: 0 to 1000 (default 1).
    pub min_per_sec: u32,
    /// The most retries the budget holds: 1 to 100000 (default 100).
    pub max_tokens: u32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            enabled: true,
            retry_ratio: 0.2,
            min_per_sec: 1,
            max_tokens: 100,
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct AuthConfig {
    /// How long before its expiry a token is refreshed: 0s to 1h (default 60s).
    pub refresh_margin: Dur,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            refresh_margin: Dur(Duration::from_secs(60)),
        }
    }
}

/// What a request does when every permit is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Wait for a permit (the default).
    Wait,
    /// Fail at once, nothing sent.
    Reject,
}

/// `[concurrency]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ConcurrencyConfig {
    /// Requests in flight at once: 1 to 1024 (default 16).
    pub limit: u32,
    /// Wait or reject when full (default `wait`).
    pub when_full: WhenFull,
}

impl Default for ConcurrencyConfig {
    fn default() -> Self {
        ConcurrencyConfig {
            limit: u32::try_from(DEFAULT_MAX_IN_FLIGHT).unwrap_or(16),
            when_full: WhenFull::Wait,
        }
    }
}

/// `[pacing]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PacingConfig {
    /// A ceiling, `"N/SECS"` (e.g. `"300/60"`): at most N requests per SECS seconds. Unset: the
    /// pacing learns from the server.
    pub rate: Option<String>,
}

/// `[timeouts]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TimeoutsConfig {
    /// One attempt, body included: 1s to 10m (default 60s).
    pub attempt: Dur,
    /// The longest pause between two chunks of a response body: 1s to 10m (default 30s).
    pub body_idle: Dur,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            attempt: Dur(DEFAULT_ATTEMPT_TIMEOUT),
            body_idle: Dur(DEFAULT_BODY_IDLE_TIMEOUT),
        }
    }
}

/// `[bodies]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BodiesConfig {
    /// The largest success body read, in bytes: 1 KiB to 1 GiB (default 16 MiB).
    pub max_response: u64,
    /// The largest error body read, in bytes: 1 KiB to 16 MiB (default 64 KiB).
    pub max_error: u64,
}

impl Default for BodiesConfig {
    fn default() -> Self {
        BodiesConfig {
            max_response: DEFAULT_MAX_RESPONSE_BODY as u64,
            max_error: DEFAULT_MAX_ERROR_BODY as u64,
        }
    }
}

/// `[idempotency]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct IdempotencyConfig {
    /// Whether the layer is in the stack (default true).
    pub enabled: bool,
    /// The methods that get an `Idempotency-Key` when the caller gave none: any of POST, PATCH,
    /// PUT, DELETE (default POST and PATCH).
    pub methods: Vec<String>,
    /// Where keys and final responses are kept: `memory` (the default, this process only) or a
    /// Redis URL without credentials, `redis://HOST:PORT[/DB]`, shared by every process that
    /// names it.
    pub store: String,
    /// The environment variable that holds the Redis store's password, if it needs one (a
    /// password is never written in the file).
    pub store_password_env: Option<String>,
    /// How long final responses are kept for a repeat: 1m to 7d (default 24h).
    pub retention: Dur,
    /// The lease of a call's claim on its key, renewed while the call runs: how long a claim
    /// outlives a process that died with it: 1s to 1h, at least 10s with a Redis store (default
    /// 5m).
    pub lock_ttl: Dur,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        IdempotencyConfig {
            enabled: true,
            methods: vec!["POST".to_owned(), "PATCH".to_owned()],
            store: "memory".to_owned(),
            store_password_env: None,
            retention: Dur(genesys_tower::idempotency::DEFAULT_RETENTION),
            lock_ttl: Dur(genesys_tower::idempotency::DEFAULT_CLIENT_LOCK_TTL),
        }
    }
}

impl IdempotencyConfig {
    /// The Redis URL of the store, if it is one.
    #[must_use]
    pub fn redis_url(&self) -> Option<&str> {
        let store = self.store.trim();
        store.starts_with("redis://").then_some(store)
    }
}

/// One setting out of bounds, or a file that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The key's path, e.g. `retry.max_delay`; empty for the file as a whole.
    pub path: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// Every problem of a configuration, found at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    problems: Vec<ConfigProblem>,
}

impl ConfigError {
    fn one(path: &str, message: impl Into<String>) -> Self {
        ConfigError {
            problems: vec![ConfigProblem {
                path: path.to_owned(),
                message: message.into(),
            }],
        }
    }

    /// Every problem.
    #[must_use]
    pub fn problems(&self) -> &[ConfigProblem] {
        &self.problems
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            if p.path.is_empty() {
                f.write_str(&p.message)?;
            } else {
                write!(f, "{}: {}", p.path, p.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// A configuration file's text, bounded, and whether it is JSON (by its extension).
fn read_file(path: &Path) -> Result<(String, bool), ConfigError> {
    let shown = path.display();
    let file = std::fs::File::open(path)
        .map_err(|e| ConfigError::one("", format!("{shown}: cannot be read: {e}")))?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, MAX_FILE + 1), &mut text)
        .map_err(|e| ConfigError::one("", format!("{shown}: cannot be read as UTF-8: {e}")))?;
    if text.len() as u64 > MAX_FILE {
        return Err(ConfigError::one(
            "",
            format!("{shown}: larger than {MAX_FILE} bytes; a configuration is a few lines"),
        ));
    }
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    Ok((text, json))
}

impl StackConfig {
    /// Reads a file: TOML, or JSON when its name ends in `.json`. Every problem is reported at
    /// once.
    pub fn from_path(path: &Path) -> Result<StackConfig, ConfigError> {
        let (text, json) = read_file(path)?;
        let parsed = if json {
            StackConfig::from_json(&text)
        } else {
            StackConfig::from_toml(&text)
        };
        parsed.map_err(|mut e| {
            for p in &mut e.problems {
                if p.path.is_empty() {
                    p.message = format!("{}: {}", path.display(), p.message);
                }
            }
            e
        })
    }

    /// Parses TOML and checks every bound.
    pub fn from_toml(text: &str) -> Result<StackConfig, ConfigError> {
        let config: StackConfig =
            toml::from_str(text).map_err(|e| ConfigError::one("", e.message().to_owned()))?;
        config.validate()?;
        Ok(config)
    }

    /// Parses JSON and checks every bound.
    pub fn from_json(text: &str) -> Result<StackConfig, ConfigError> {
        let config: StackConfig =
            serde_json::from_str(text).map_err(|e| ConfigError::one("", e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The JSON Schema of the file (the same for TOML and JSON), generated from these types:
    /// `docs/configuration.schema.json` is this, and a test keeps the two the same.
    #[must_use]
    pub fn json_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(StackConfig)).unwrap_or_default()
    }

    /// Whether this is a test profile (delays under 100 ms allowed).
    #[must_use]
    pub fn is_test_profile(&self) -> bool {
        self.profile.as_deref() == Some("test")
    }

    /// Checks every bound, and reports every value out of bounds at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut bad = |path: &str, message: String| {
            problems.push(ConfigProblem {
                path: path.to_owned(),
                message,
            });
        };
        if let Some(profile) = self.profile.as_deref().filter(|p| *p != "test") {
            bad(
                "profile",
                format!(
                    "{profile:?} is not a value of this key: \"test\" allows test delays, and \
                     nothing else is (a profile of the file is chosen with --profile or \
                     GCX_PROFILE)"
                ),
            );
        }
        let r = &self.retry;
        if !(1..=MAX_ATTEMPTS).contains(&r.max_attempts) {
            bad(
                "retry.max_attempts",
                format!("{} is outside 1 to {MAX_ATTEMPTS}", r.max_attempts),
            );
        }
        let min_delay = if self.is_test_profile() {
            Duration::from_millis(1)
        } else {
            MIN_DELAY
        };
        if r.base_delay.0 < min_delay {
            bad(
                "retry.base_delay",
                format!(
                    "{} is below {} (shorter retries only add load; profile = \"test\" allows \
                     down to 1ms)",
                    r.base_delay,
                    Dur(min_delay)
                ),
            );
        }
        if !(r.factor.is_finite() && (1.0..=10.0).contains(&r.factor)) {
            bad("retry.factor", format!("{} is outside 1 to 10", r.factor));
        }
        if r.max_delay < r.base_delay {
            bad(
                "retry.max_delay",
                format!(
                    "{} is below retry.base_delay ({})",
                    r.max_delay, r.base_delay
                ),
            );
        }
        if r.max_delay.0 > Duration::from_secs(3600) {
            bad("retry.max_delay", format!("{} is above 1h", r.max_delay));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&r.max_retry_after.0) {
            bad(
                "retry.max_retry_after",
                format!("{} is outside 1s to 1h", r.max_retry_after),
            );
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(86_400)).contains(&r.deadline.0) {
            bad(
                "retry.deadline",
                format!("{} is outside 1s to 24h", r.deadline),
            );
        }
        if r.version.is_empty() || r.version.len() > 64 {
            bad(
                "retry.version",
                "give a name of 1 to 64 characters".to_owned(),
            );
        }
        statuses_problems(r, &mut bad);
        routes_problems(&r.routes, &mut bad);
        let b = &r.budget;
        if !(b.retry_ratio.is_finite() && (0.0..=1.0).contains(&b.retry_ratio)) {
            bad(
                "retry.budget.retry_ratio",
                format!("{} is outside 0 to 1", b.retry_ratio),
            );
        }
        if b.min_per_sec > 1000 {
            bad(
                "retry.budget.min_per_sec",
                format!("{} is above 1000", b.min_per_sec),
            );
        }
        if !(1..=100_000).contains(&b.max_tokens) {
            bad(
                "retry.budget.max_tokens",
                format!("{} is outside 1 to 100000", b.max_tokens),
            );
        }
        if self.auth.refresh_margin.0 > Duration::from_secs(3600) {
            bad(
                "auth.refresh_margin",
                format!("{} is above 1h", self.auth.refresh_margin),
            );
        }
        if !(1..=1024).contains(&self.concurrency.limit) {
            bad(
                "concurrency.limit",
                format!("{} is outside 1 to 1024", self.concurrency.limit),
            );
        }
        if let Some(rate) = &self.pacing.rate
            && let Err(e) = parse_rate(rate)
        {
            bad("pacing.rate", e);
        }
        for (path, d) in [
            ("timeouts.attempt", self.timeouts.attempt),
            ("timeouts.body_idle", self.timeouts.body_idle),
        ] {
            if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&d.0) {
                bad(path, format!("{d} is outside 1s to 10m"));
            }
        }
        if !(1024..=1 << 30).contains(&self.bodies.max_response) {
            bad(
                "bodies.max_response",
                format!(
                    "{} is outside 1024 to 1073741824 bytes",
                    self.bodies.max_response
                ),
            );
        }
        if !(1024..=16 << 20).contains(&self.bodies.max_error) {
            bad(
                "bodies.max_error",
                format!(
                    "{} is outside 1024 to 16777216 bytes",
                    self.bodies.max_error
                ),
            );
        }
        idempotency_problems(&self.idempotency, &mut bad);
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The retry policy the `[retry]` section describes, with the client's classifier.
    #[must_use]
    pub fn retry_policy(&self) -> RetryPolicy {
        let builder = self.retry_policy_builder();
        match self.retry_budget() {
            Some(budget) => builder.budget(budget),
            None => builder.no_budget(),
        }
        .build()
    }

    /// The retry budget the `[retry.budget]` section describes (`None` when it is off).
    #[must_use]
    pub fn retry_budget(&self) -> Option<RetryBudget> {
        let b = &self.retry.budget;
        b.enabled.then(|| {
            RetryBudget::new()
                .retry_ratio(b.retry_ratio)
                .min_per_sec(b.min_per_sec)
                .max_tokens(b.max_tokens)
        })
    }

    /// The `[retry]` section as a policy builder, without its budget: for policies that share
    /// one budget (a stable policy and its canary, say), with
    /// [`shared_budget`](genesys_tower::retry::RetryPolicyBuilder::shared_budget).
    pub fn retry_policy_builder(&self) -> genesys_tower::retry::RetryPolicyBuilder {
        let r = &self.retry;
        let jitter = r.jitter.jitter();
        let builder = RetryPolicy::builder().classifier(GenesysClassifier::with(self.classifier()));
        let builder = if r.routes.is_empty() {
            builder
        } else {
            let rules = route_rules(&r.routes);
            builder.safety(move |request| {
                let path = request.uri.path();
                rules
                    .iter()
                    .find(|(method, route, _)| {
                        method.as_ref().is_none_or(|m| *m == request.method)
                            && crate::routes::matches(path, route)
                    })
                    .map(|&(_, _, safety)| safety)
            })
        };
        builder
            .max_attempts(r.max_attempts)
            .base_delay(r.base_delay.0)
            .factor(r.factor)
            .max_delay(r.max_delay.0)
            .jitter(jitter)
            .max_retry_after(r.max_retry_after.0)
            .deadline(r.deadline.0)
            .version(r.version.clone())
            .no_budget()
    }

    /// The classification `[retry]` describes: its statuses, 500 per `retry_500`, and whether
    /// gateway errors are ambiguous. A status the file may not list was refused when it was
    /// loaded; here it is left out.
    #[must_use]
    pub fn classifier(&self) -> DefaultClassifier {
        let r = &self.retry;
        let statuses = r
            .statuses
            .iter()
            .filter_map(|&s| http::StatusCode::from_u16(s).ok())
            .filter(|s| DefaultClassifier::new().retry_statuses([*s]).is_ok());
        let listed = DefaultClassifier::new()
            .retry_statuses(statuses)
            .unwrap_or_default();
        let classifier = if r.retry_500 {
            listed.retry_500(true)
        } else {
            listed
        };
        classifier.ambiguous_gateway_errors(r.ambiguous_gateway_errors)
    }

    /// The idempotency layer `[idempotency]` describes, its store aside (see
    /// [`IdempotencyConfig::redis_url`]).
    #[must_use]
    pub fn idempotency_layer(&self) -> genesys_tower::idempotency::IdempotencyLayer {
        let i = &self.idempotency;
        genesys_tower::idempotency::IdempotencyLayer::new()
            .methods(
                i.methods
                    .iter()
                    .filter_map(|m| http::Method::from_bytes(m.trim().as_bytes()).ok()),
            )
            .retention(i.retention.0)
            .lock_ttl(i.lock_ttl.0)
    }

    /// The pacing ceiling, if `[pacing] rate` is set.
    #[must_use]
    pub fn pacing_rate(&self) -> Option<(u64, Duration)> {
        self.pacing.rate.as_deref().and_then(|r| parse_rate(r).ok())
    }
}

/// `retry.statuses`: each one the classifier can retry, none twice.
fn statuses_problems(r: &RetryConfig, bad: &mut impl FnMut(&str, String)) {
    let mut seen = std::collections::BTreeSet::new();
    for &code in &r.statuses {
        let refused = match http::StatusCode::from_u16(code) {
            Ok(status) => DefaultClassifier::new()
                .retry_statuses([status])
                .err()
                .map(|e| e.to_string()),
            Err(_) => Some(format!("{code} is not an HTTP status (100 to 999)")),
        };
        if let Some(why) = refused {
            bad("retry.statuses", why);
        } else if !seen.insert(code) {
            bad("retry.statuses", format!("{code} is listed twice"));
        }
    }
}

/// `retry.routes`: known methods, well-formed templates, no rule twice.
fn routes_problems(rules: &[RouteRule], bad: &mut impl FnMut(&str, String)) {
    if rules.len() > MAX_ROUTE_RULES {
        bad(
            "retry.routes",
            format!(
                "{} rules; at most {MAX_ROUTE_RULES} (each request is matched against them in \
                 turn)",
                rules.len()
            ),
        );
    }
    for (i, rule) in rules.iter().enumerate() {
        if !RULE_METHODS.contains(&rule.method.as_str()) {
            bad(
                &format!("retry.routes[{i}].method"),
                format!(
                    "{:?} is not one of {} (in capitals)",
                    rule.method,
                    RULE_METHODS.join(", ")
                ),
            );
        }
        if let Err(why) = crate::routes::check_template(&rule.route) {
            bad(
                &format!("retry.routes[{i}].route"),
                format!("{:?} {why}", rule.route),
            );
        }
        // An earlier rule that covers every request this one would match leaves it unused.
        let shadow = rules[..i].iter().position(|earlier| {
            (earlier.method == "*" || earlier.method == rule.method)
                && crate::routes::matches(&rule.route, &earlier.route)
        });
        if let Some(j) = shadow {
            bad(
                &format!("retry.routes[{i}]"),
                format!(
                    "{} {} is never used: retry.routes[{j}] ({} {}) matches every request it \
                     would, and the first rule that matches wins; put the narrower rule first",
                    rule.method, rule.route, rules[j].method, rules[j].route
                ),
            );
        }
    }
}

/// The rules as the policy matches them: the method (`None` for any), the template, the mark.
fn route_rules(
    rules: &[RouteRule],
) -> Vec<(
    Option<http::Method>,
    String,
    genesys_tower::retry::RetrySafety,
)> {
    // A rule whose method is not one (possible only in a configuration built in code and never
    // validated) is left out rather than taken for "any method".
    rules
        .iter()
        .filter_map(|rule| {
            let method = match rule.method.as_str() {
                "*" => None,
                m if RULE_METHODS.contains(&m) => {
                    Some(http::Method::from_bytes(m.as_bytes()).ok()?)
                }
                _ => return None,
            };
            Some((method, rule.route.clone(), rule.safety.retry_safety()))
        })
        .collect()
}

/// The shortest `idempotency.lock_ttl` with a Redis store: a claim is renewed every third of
/// it, over the network.
const REDIS_LOCK_TTL_MIN: Duration = Duration::from_secs(10);

/// `[idempotency]`: known methods, a store this crate can open, bounded durations.
fn idempotency_problems(i: &IdempotencyConfig, bad: &mut impl FnMut(&str, String)) {
    let mut seen = std::collections::BTreeSet::new();
    for method in &i.methods {
        if !KEYED_METHODS.contains(&method.as_str()) {
            bad(
                "idempotency.methods",
                format!(
                    "{method:?} is not one of {} (in capitals; a GET needs no key)",
                    KEYED_METHODS.join(", ")
                ),
            );
        } else if !seen.insert(method.as_str()) {
            bad("idempotency.methods", format!("{method} is listed twice"));
        }
    }
    let store = i.store.trim();
    if store != "memory" {
        match i.redis_url() {
            None => bad(
                "idempotency.store",
                format!(
                    "{:?} is neither \"memory\" nor a redis:// URL (TLS, rediss://, is not \
                     built in: reach a TLS Redis through a local tunnel)",
                    redact_userinfo(store)
                ),
            ),
            Some(url) => {
                let authority = url
                    .split_once("://")
                    .map_or("", |(_, rest)| rest.split('/').next().unwrap_or(""));
                // Any `@` at all: a password may hold a `/`, which would hide it from the
                // authority.
                if url.contains(['@', '?', '#']) {
                    bad(
                        "idempotency.store",
                        "a URL with credentials or options is refused (it would be shown and \
                         stored): write redis://HOST:PORT[/DB] and name the variable that holds \
                         the password in idempotency.store_password_env"
                            .to_owned(),
                    );
                } else if authority.is_empty() {
                    bad(
                        "idempotency.store",
                        format!("{url:?} has no host: write redis://HOST:PORT[/DB]"),
                    );
                }
            }
        }
    }
    if let Some(name) = &i.store_password_env {
        if i.redis_url().is_none() {
            bad(
                "idempotency.store_password_env",
                "is for a Redis store; idempotency.store is not one".to_owned(),
            );
        } else if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bad(
                "idempotency.store_password_env",
                format!("{name:?} is not an environment variable's name (letters, digits and _)"),
            );
        }
    }
    if !(Duration::from_secs(60)..=Duration::from_secs(7 * 86_400)).contains(&i.retention.0) {
        bad(
            "idempotency.retention",
            format!("{} is outside 1m to 7days", i.retention),
        );
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&i.lock_ttl.0) {
        bad(
            "idempotency.lock_ttl",
            format!("{} is outside 1s to 1h", i.lock_ttl),
        );
    } else if i.redis_url().is_some() && i.lock_ttl.0 < REDIS_LOCK_TTL_MIN {
        bad(
            "idempotency.lock_ttl",
            format!(
                "{} is below 10s with a Redis store: a call's claim is renewed every third of it \
                 over the network, and one renewal too late lets another process send the call \
                 again; raise lock_ttl to 10s or more",
                i.lock_ttl
            ),
        );
    }
}

/// A URL without its `user:password@` (for messages: a value may hold a password).
pub(crate) fn redact_userinfo(text: &str) -> String {
    match text.split_once("://") {
        // The credentials end at the last `@` (a password may hold a `/` or an `@`).
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((_, host)) => format!("{scheme}://…@{host}"),
            None => text.to_owned(),
        },
        None => text.to_owned(),
    }
}

/// `"N/SECS"`: at least 1 request in a window of 1 s to 1 day.
fn parse_rate(text: &str) -> Result<(u64, Duration), String> {
    let bad =
        || format!("{text:?} is not N/SECS with N at least 1 and SECS 1 to 86400, e.g. \"300/60\"");
    let (n, secs) = text.trim().split_once('/').ok_or_else(bad)?;
    let n: u64 = n.trim().parse().map_err(|_| bad())?;
    let secs: u64 = secs.trim().parse().map_err(|_| bad())?;
    if n == 0 || !(1..=86_400).contains(&secs) {
        return Err(bad());
    }
    Ok((n, Duration::from_secs(secs)))
}

mod layers;
#[cfg(test)]
mod tests;

pub use layers::{Layered, Origin};
