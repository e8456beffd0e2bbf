//! What the simulator serves: clients, limits, seeded data, data actions, faults.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::faults::Faults;

/// The id of the data action every simulator registers unless told otherwise: it answers its
/// input unchanged and records it in the ledger.
pub const ECHO_ACTION_ID: &str = "echo";

/// In a route template, stands for the configured ingestion path.
pub(crate) const INGESTION_TEMPLATE: &str = "{ingestion}";

/// The default path of the ingestion endpoint (seed 000's; it does not exist in the public API).
pub const DEFAULT_INGESTION_PATH: &str = "/api/v2/dataexchange/ingestion";
/// The simulated organization's id, unless configured otherwise.
pub const DEFAULT_ORG_ID: &str = "5e1d0a7e-0000-4000-8000-000000000001";

/// The documented default maximum request body (`request.bytes.max`).
pub const DEFAULT_MAX_BODY_BYTES: usize = 512_000;

/// The most users a simulator seeds (each costs about a kilobyte).
pub const MAX_USERS: usize = 10_000_000;

/// The most bytes of a request body the simulator reads (a larger one is not even drained: the
/// connection is closed after the 413), and so the largest `max_body_bytes`.
pub(crate) const DRAIN_CAP: usize = 8 * 1024 * 1024;

/// The most integrations a simulator seeds.
pub const MAX_INTEGRATIONS: usize = 100_000;

/// The most records one ingestion batch may hold.
pub const DEFAULT_MAX_RECORDS: usize = 500;

/// Parses a per-token quota as `N/SECS` (requests per fixed window of whole seconds, e.g.
/// `300/60` or `40/1`), or `off` (`None`). `N` is 1 to 4294967295 and `SECS` 1 to 31536000
/// (365 days); anything else is refused with a message that says what is allowed.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(genesys_sim::parse_rate_limit("40/1"), Ok(Some((40, Duration::from_secs(1)))));
/// assert_eq!(genesys_sim::parse_rate_limit("off"), Ok(None));
/// assert!(genesys_sim::parse_rate_limit("0.5/60").is_err());
/// ```
pub fn parse_rate_limit(s: &str) -> Result<Option<(u32, Duration)>, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let shown: String = s.chars().take(40).collect();
    let err = || {
        format!(
            "`{shown}` is not N/SECS with N from 1 to {} and SECS from 1 to {} (e.g. 300/60), \
             or `off`",
            u32::MAX,
            crate::faults::MAX_DURATION.as_secs()
        )
    };
    let (n, secs) = s.split_once('/').ok_or_else(err)?;
    let n: u32 = plain_int(n).ok_or_else(err)?;
    let secs: u64 = plain_int(secs).ok_or_else(err)?;
    if n == 0 || secs == 0 || secs > crate::faults::MAX_DURATION.as_secs() {
        return Err(err());
    }
    Ok(Some((n, Duration::from_secs(secs))))
}

/// Parses a token lifetime in whole seconds, 1 to 31536000 (365 days); anything else is refused
/// with a message.
///
/// ```
/// assert!(genesys_sim::parse_token_ttl("18446744073709551615").is_err());
/// assert_eq!(genesys_sim::parse_token_ttl("300").unwrap().as_secs(), 300);
/// ```
pub fn parse_token_ttl(s: &str) -> Result<Duration, String> {
    let max = crate::faults::MAX_DURATION.as_secs();
    match plain_int::<u64>(s) {
        Some(secs) if (1..=max).contains(&secs) => Ok(Duration::from_secs(secs)),
        _ => Err(format!(
            "`{}` is not a token lifetime: give whole seconds from 1 to {max} (365 days)",
            s.chars().take(40).collect::<String>()
        )),
    }
}

/// An unsigned decimal integer of ASCII digits, with HTTP-style spaces around it.
fn plain_int<T: std::str::FromStr>(s: &str) -> Option<T> {
    let s = s.trim_matches(|c| c == ' ' || c == '\t');
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

/// How the simulator writes `Retry-After`: what real gateways do besides Genesys's whole seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryAfterFormat {
    /// Whole seconds, `Retry-After: 5` (Genesys; the default).
    #[default]
    Seconds,
    /// An IMF-fixdate, `Retry-After: Wed, 02 Dec 2026 05:00:05 GMT` (wall clock, rounded up to
    /// the next whole second so that it is never earlier than the wait it stands for).
    HttpDate,
    /// A value no parser should accept, `Retry-After: 5.0`: clients must fall back to the
    /// rate-limit headers or their own backoff.
    Malformed,
}

impl RetryAfterFormat {
    /// Parses `seconds`, `http-date` or `malformed`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "seconds" => Ok(RetryAfterFormat::Seconds),
            "http-date" => Ok(RetryAfterFormat::HttpDate),
            "malformed" => Ok(RetryAfterFormat::Malformed),
            other => Err(format!(
                "`{}` is not a Retry-After format: use seconds, http-date or malformed",
                other.chars().take(40).collect::<String>()
            )),
        }
    }

    /// The header value for a wait of `secs` seconds.
    pub(crate) fn value(self, secs: u64) -> String {
        match self {
            RetryAfterFormat::Seconds => secs.to_string(),
            RetryAfterFormat::HttpDate => {
                let now = std::time::SystemTime::now();
                let at = now
                    .checked_add(Duration::from_secs(secs.saturating_add(1)))
                    .unwrap_or(now);
                // fmt_http_date truncates to the second: a second more never undershoots.
                httpdate::fmt_http_date(at)
            }
            RetryAfterFormat::Malformed => format!("{secs}.0"),
        }
    }
}

/// Parses a share between 0 and 1 (a plain decimal), or says why not.
pub fn parse_share(s: &str) -> Result<f64, String> {
    let v = s.trim_matches(|c| c == ' ' || c == '\t');
    let plain = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    match v.parse::<f64>() {
        Ok(p) if plain && (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!(
            "`{}` is not a share: give a decimal from 0 to 1 (e.g. 0.5)",
            v.chars().take(40).collect::<String>()
        )),
    }
}

/// An OAuth client the token endpoint accepts. `Debug` never shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCredentials {
    /// The client id.
    pub id: String,
    /// The client secret.
    pub secret: String,
}

impl ClientCredentials {
    /// A client from its id and secret.
    pub fn new(id: impl Into<String>, secret: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            secret: secret.into(),
        }
    }

    /// Parses `ID:SECRET` (the secret may itself contain `:`).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some((id, secret)) if !id.is_empty() && !secret.is_empty() => Ok(Self::new(id, secret)),
            _ => Err("a client must be given as ID:SECRET, both non-empty".to_string()),
        }
    }
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Why a data action failed: answered as an ErrorBody with this status, code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionFailure {
    /// HTTP status of the failure.
    pub status: u16,
    /// Dotted error code, e.g. `bad.request`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
}

type ActionFn = dyn Fn(&Value) -> Result<Value, ActionFailure> + Send + Sync;

/// What a data action does with its input.
#[derive(Clone)]
pub enum Action {
    /// Answers the input unchanged.
    Echo,
    /// Answers this value whatever the input.
    Static(Value),
    /// Always fails with this error (nothing is recorded in the ledger).
    Fail(ActionFailure),
    /// Computes the output (or a failure) from the input.
    Custom(Arc<ActionFn>),
}

impl Action {
    /// An action computed by `f`.
    pub fn custom(
        f: impl Fn(&Value) -> Result<Value, ActionFailure> + Send + Sync + 'static,
    ) -> Self {
        Action::Custom(Arc::new(f))
    }

    pub(crate) fn run(&self, input: &Value) -> Result<Value, ActionFailure> {
        match self {
            Action::Echo => Ok(input.clone()),
            Action::Static(v) => Ok(v.clone()),
            Action::Fail(f) => Err(f.clone()),
            Action::Custom(f) => f(input),
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Action::Echo => "Echo",
            Action::Static(_) => "Static",
            Action::Fail(_) => "Fail",
            Action::Custom(_) => "Custom",
        }
    }
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Echo => f.write_str("Echo"),
            Action::Static(v) => f.debug_tuple("Static").field(v).finish(),
            Action::Fail(e) => f.debug_tuple("Fail").field(e).finish(),
            Action::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// The data actions the simulator knows, by id. The default holds [`ECHO_ACTION_ID`].
///
/// ```
/// use genesys_sim::{Action, Actions, ECHO_ACTION_ID};
/// use serde_json::json;
///
/// let actions = Actions::default().with("lookup", Action::Static(json!({"found": true})));
/// assert!(actions.get(ECHO_ACTION_ID).is_some());
/// assert!(actions.get("lookup").is_some());
/// ```
#[derive(Debug, Clone)]
pub struct Actions {
    map: HashMap<String, Action>,
}

impl Actions {
    /// No actions at all (every execute answers 404).
    pub fn empty() -> Self {
        Self {
            map: HashMap::new(),
        }
    }

    /// Adds (or replaces) an action.
    pub fn with(mut self, id: impl Into<String>, action: Action) -> Self {
        self.insert(id, action);
        self
    }

    /// Adds (or replaces) an action.
    pub fn insert(&mut self, id: impl Into<String>, action: Action) {
        self.map.insert(id.into(), action);
    }

    /// The action with this id.
    pub fn get(&self, id: &str) -> Option<&Action> {
        self.map.get(id)
    }

    /// The ids, in no particular order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(String::as_str)
    }
}

impl Default for Actions {
    fn default() -> Self {
        Self::empty().with(ECHO_ACTION_ID, Action::Echo)
    }
}

/// The default ingestion schema: seed 000's `InteractionRecord` (every field required; extra
/// fields allowed, as pydantic ignores them by default).
pub fn default_ingestion_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "InteractionRecord",
        "type": "object",
        "properties": {
            "external_id": {"type": "string"},
            "timestamp": {"type": "string"},
            "channel": {"type": "string"},
            "duration_seconds": {"type": "integer"},
            "customer_segment": {"type": "string"}
        },
        "required": ["external_id", "timestamp", "channel", "duration_seconds", "customer_segment"]
    })
}

/// The simulator's configuration. Every field has a default that matches the real service's
/// documented defaults; set fields directly or chain the builder methods.
///
/// ```
/// use std::time::Duration;
/// use genesys_sim::SimConfig;
///
/// let config = SimConfig::default()
///     .users(10)
///     .rate_limit(Some((5, Duration::from_secs(2))))
///     .faults("5xx=0.1".parse().unwrap())
///     .seed(7);
/// assert_eq!(config.users, 10);
/// ```
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Where to listen (default `127.0.0.1:0`: an ephemeral port).
    pub addr: SocketAddr,
    /// The OAuth clients accepted (default `demo-client:demo-secret`).
    pub clients: Vec<ClientCredentials>,
    /// Lifetime of issued tokens (default 86400 s, the real default).
    pub token_ttl: Duration,
    /// Per-token quota: `(requests, window)` in a fixed window (default 300 per 60 s);
    /// `None` switches the quota (and its headers) off.
    pub rate_limit: Option<(u32, Duration)>,
    /// Per-OAuth-client quota, across all of the client's tokens (default none): what a fleet of
    /// processes, each with its own token, shares. Genesys Cloud limits per client and per
    /// organisation as well as per token. Answered like the per-token quota (429 with
    /// `Retry-After`).
    pub client_rate_limit: Option<(u32, Duration)>,
    /// How many users to seed (default 1000).
    pub users: usize,
    /// How many integrations to seed (default 1), see [`crate::integration_id`].
    pub integrations: usize,
    /// Faults to inject (default none).
    pub faults: Faults,
    /// Which API requests the probability faults may hit (default: every one).
    pub faults_only_for: Option<crate::FaultTarget>,
    /// Seed for users, ids and faults (default 0).
    pub seed: u64,
    /// Send `inin-ratelimit-allowed/count/reset` (default true).
    pub ratelimit_headers: bool,
    /// The share of answers (0 to 1) that carry the `inin-ratelimit-*` headers when
    /// [`ratelimit_headers`](Self::ratelimit_headers) is on (default 1: all). Which answers do is
    /// a seeded draw per API request.
    pub ratelimit_headers_share: f64,
    /// The share of answers (0 to 1, default 0.5) that say a thing in the real API's other
    /// words for it: a 429 coded `too.many.requests.retry.after` rather than
    /// `too.many.requests`, a 401 coded `authentication.required` where `bad.credentials` is
    /// the rule (and the reverse), a stale version answered 400 `bad.request` rather than 409
    /// `general.conflict` (with the same message), a token's `token_type` spelled `Bearer`
    /// rather than `bearer`. A client that tells them apart by code or case meets both. Which
    /// answers do is a seeded draw per API request (per token for the type).
    pub code_variants: f64,
    /// How `Retry-After` is written on 429s and 503s (default whole seconds, as Genesys does).
    pub retry_after_format: RetryAfterFormat,
    /// The data actions (default: [`ECHO_ACTION_ID`]).
    pub actions: Actions,
    /// JSON Schema every ingested record must satisfy (default [`default_ingestion_schema`]).
    pub ingestion_schema: Value,
    /// Path of the ingestion endpoint (default [`DEFAULT_INGESTION_PATH`]).
    pub ingestion_path: String,
    /// The organization's id, which `GET /api/v2/tokens/me` names (default [`DEFAULT_ORG_ID`]).
    pub org_id: String,
    /// Whether the ingestion endpoint deduplicates by `Idempotency-Key` (default true, as seed
    /// 000 describes it). False makes it a real bulk endpoint of the API, none of which honours
    /// the key: every request is applied, a repeat of a key included.
    pub ingestion_deduplicates: bool,
    /// Field of a record that names it in the ledger (default `external_id`; records without it
    /// are named `records[i]`).
    pub ingestion_record_key: String,
    /// Maximum request body in bytes, 413 above (default 512000, at most 8 MiB).
    pub max_body_bytes: usize,
    /// Maximum records per ingestion batch, 413 above (default 500).
    pub max_records: usize,
    /// Most ledger entries kept (default unlimited). Long benchmarks of writes can bound the
    /// memory with it; effects beyond it are counted in [`crate::Stats::ledger_dropped`]. It
    /// bounds the ingestion endpoint's stored `Idempotency-Key`s too (the oldest forgotten first,
    /// as a store's retention forgets them: a repeat of a forgotten key is applied again).
    pub ledger_limit: Option<usize>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            clients: vec![ClientCredentials::new("demo-client", "demo-secret")],
            token_ttl: Duration::from_secs(86_400),
            rate_limit: Some((300, Duration::from_secs(60))),
            client_rate_limit: None,
            users: 1000,
            integrations: 1,
            faults: Faults::default(),
            faults_only_for: None,
            seed: 0,
            ratelimit_headers: true,
            ratelimit_headers_share: 1.0,
            code_variants: 0.5,
            retry_after_format: RetryAfterFormat::Seconds,
            actions: Actions::default(),
            ingestion_schema: default_ingestion_schema(),
            ingestion_path: DEFAULT_INGESTION_PATH.to_string(),
            ingestion_deduplicates: true,
            org_id: DEFAULT_ORG_ID.to_string(),
            ingestion_record_key: "external_id".to_string(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_records: DEFAULT_MAX_RECORDS,
            ledger_limit: None,
        }
    }
}

impl SimConfig {
    /// Listen on this address.
    pub fn addr(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Replace the accepted OAuth clients.
    pub fn clients(mut self, clients: Vec<ClientCredentials>) -> Self {
        self.clients = clients;
        self
    }

    /// Accept one more OAuth client.
    pub fn client(mut self, id: impl Into<String>, secret: impl Into<String>) -> Self {
        self.clients.push(ClientCredentials::new(id, secret));
        self
    }

    /// Token lifetime.
    pub fn token_ttl(mut self, ttl: Duration) -> Self {
        self.token_ttl = ttl;
        self
    }

    /// Per-token quota, `None` for unlimited.
    pub fn rate_limit(mut self, limit: Option<(u32, Duration)>) -> Self {
        self.rate_limit = limit;
        self
    }

    /// Per-OAuth-client quota across the client's tokens, `None` (the default) for none.
    pub fn client_rate_limit(mut self, limit: Option<(u32, Duration)>) -> Self {
        self.client_rate_limit = limit;
        self
    }

    /// Injects the probability faults only into the requests `target` names.
    pub fn faults_only_for(mut self, target: Option<crate::FaultTarget>) -> Self {
        self.faults_only_for = target;
        self
    }

    /// Number of seeded users.
    pub fn users(mut self, n: usize) -> Self {
        self.users = n;
        self
    }

    /// Number of seeded integrations.
    pub fn integrations(mut self, n: usize) -> Self {
        self.integrations = n;
        self
    }

    /// Faults to inject.
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// Seed for data and faults.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Send the `inin-ratelimit-*` headers or not.
    pub fn ratelimit_headers(mut self, on: bool) -> Self {
        self.ratelimit_headers = on;
        self
    }

    /// The share of answers that carry the `inin-ratelimit-*` headers (0 to 1).
    pub fn ratelimit_headers_share(mut self, share: f64) -> Self {
        self.ratelimit_headers_share = share;
        self
    }

    /// The share of answers in the real API's other words (0 to 1): see
    /// [`code_variants`](Self::code_variants).
    pub fn code_variants(mut self, share: f64) -> Self {
        self.code_variants = share;
        self
    }

    /// How `Retry-After` is written.
    pub fn retry_after_format(mut self, format: RetryAfterFormat) -> Self {
        self.retry_after_format = format;
        self
    }

    /// Replace the data actions.
    pub fn actions(mut self, actions: Actions) -> Self {
        self.actions = actions;
        self
    }

    /// Register one more data action.
    pub fn action(mut self, id: impl Into<String>, action: Action) -> Self {
        self.actions.insert(id, action);
        self
    }

    /// Replace the ingestion JSON Schema.
    pub fn ingestion_schema(mut self, schema: Value) -> Self {
        self.ingestion_schema = schema;
        self
    }

    /// Keep at most this many ledger entries (`None`: all).
    pub fn ledger_limit(mut self, limit: Option<usize>) -> Self {
        self.ledger_limit = limit;
        self
    }

    /// Serve ingestion on another path.
    pub fn ingestion_path(mut self, path: impl Into<String>) -> Self {
        self.ingestion_path = path.into();
        self
    }

    /// The organization's id (default [`DEFAULT_ORG_ID`]).
    pub fn org_id(mut self, id: impl Into<String>) -> Self {
        self.org_id = id.into();
        self
    }

    /// Whether the ingestion endpoint deduplicates by `Idempotency-Key` (default true); see
    /// [`ingestion_deduplicates`](Self::ingestion_deduplicates).
    pub fn ingestion_deduplicates(mut self, deduplicates: bool) -> Self {
        self.ingestion_deduplicates = deduplicates;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_and_lifetimes_refuse_what_overflows() {
        assert_eq!(
            parse_rate_limit("40/1"),
            Ok(Some((40, Duration::from_secs(1))))
        );
        for bad in [
            "0/60",
            "1/0",
            "4294967296/60",
            "5/31536001",
            "+5/60",
            "5/-1",
            "1.5/60",
            "5",
            "/",
        ] {
            let e = parse_rate_limit(bad).unwrap_err();
            assert!(e.contains("N/SECS"), "{bad}: {e}");
        }
        for bad in [
            "0",
            "18446744073709551615",
            "31536001",
            "-1",
            "1e3",
            "\u{a0}5",
            "",
        ] {
            let e = parse_token_ttl(bad).unwrap_err();
            assert!(e.contains("1 to"), "{bad}: {e}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(crate::fuzz_cases(4000)))]

        #[test]
        fn any_text_parses_or_says_why(s in "\\PC{0,32}", n in proptest::num::u64::ANY, w in proptest::num::u64::ANY) {
            for text in [s.clone(), format!("{n}/{w}"), n.to_string()] {
                match parse_rate_limit(&text) {
                    Ok(Some((n, w))) => proptest::prop_assert!(n >= 1 && !w.is_zero() && w <= crate::faults::MAX_DURATION),
                    Ok(None) => {}
                    Err(e) => proptest::prop_assert!(!e.is_empty()),
                }
                match parse_token_ttl(&text) {
                    Ok(d) => proptest::prop_assert!(!d.is_zero() && d <= crate::faults::MAX_DURATION),
                    Err(e) => proptest::prop_assert!(!e.is_empty()),
                }
            }
        }
    }
}
