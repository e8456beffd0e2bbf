//! Shared simulator state: tokens and quotas, entities, the effect ledger, statistics.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::config::{INGESTION_TEMPLATE, SimConfig};
use crate::data::{Users, integration_id, lock, seeded_integration};
use crate::error::SimError;
use crate::faults::MAX_DURATION;

/// One applied side effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LedgerEntry {
    /// Position in the ledger, from 0.
    pub seq: u64,
    /// The route template, e.g. `/api/v2/users/{userId}`.
    pub route: String,
    /// The HTTP method, e.g. `PATCH`.
    pub method: String,
    /// The entity the effect applies to: a user id, an action id, an integration id, or an
    /// ingested record's key (its `external_id` by default).
    pub entity: String,
    /// The request's `Idempotency-Key`, if it carried one (recorded even where not honoured).
    pub idempotency_key: Option<String>,
    /// FNV-1a 64 of the payload (the request body, or the record for ingestion), in hex.
    pub payload_hash: String,
    /// The request's correlation id.
    pub correlation_id: String,
    /// When, in milliseconds since the simulator started (tokio clock, so a paused clock counts).
    pub elapsed_ms: u64,
    /// When, as an HTTP date (wall clock).
    pub time: String,
}

/// Request statistics. Route keys are `METHOD /template` such as `PATCH /api/v2/users/{userId}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Responses sent, by route and status (a reset connection sends none: see `faults`).
    pub requests: BTreeMap<String, BTreeMap<u16, u64>>,
    /// All responses sent.
    pub total_responses: u64,
    /// Tokens issued by `/oauth/token`.
    pub tokens_issued: u64,
    /// 429s given because a token's quota was used up (long-retry-after faults not included).
    pub rate_limited: u64,
    /// Effects applied but not kept because the ledger was full (see `SimConfig::ledger_limit`).
    pub ledger_dropped: u64,
    /// Faults injected, by kind (`5xx`, `500`, `503-retry-after`, `reset-before`, `reset-after`,
    /// `long-retry-after`, `latency`, `token-5xx`, `revoke`).
    pub faults: BTreeMap<String, u64>,
}

impl Stats {
    /// Responses with this status on this route (`"GET /api/v2/users/{userId}"`).
    pub fn count(&self, route: &str, status: u16) -> u64 {
        self.requests
            .get(route)
            .and_then(|m| m.get(&status))
            .copied()
            .unwrap_or(0)
    }

    /// Responses with this status on every route.
    pub fn status_count(&self, status: u16) -> u64 {
        self.requests.values().filter_map(|m| m.get(&status)).sum()
    }

    /// Faults of this kind injected.
    pub fn fault_count(&self, kind: &str) -> u64 {
        self.faults.get(kind).copied().unwrap_or(0)
    }

    /// The statistics in the Prometheus text exposition format, as served on `/sim/metrics`:
    /// `genesys_sim_responses_total` by `method`, `route` (the same templates as the client's
    /// `route` label) and `status`, then the 429s given for quota, tokens issued, faults by
    /// kind and ledger entries dropped.
    pub fn prometheus(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let mut family = |name: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        };
        family(
            "genesys_sim_responses_total",
            "Responses the simulator sent, by route and status.",
        );
        let mut lines = String::new();
        for (route, statuses) in &self.requests {
            let (method, template) = route.split_once(' ').unwrap_or(("", route));
            for (status, n) in statuses {
                let _ = writeln!(
                    lines,
                    "genesys_sim_responses_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                    escape(method),
                    escape(template)
                );
            }
        }
        let mut out = format!("{out}{lines}");
        let mut single = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        single(
            "genesys_sim_rate_limited_total",
            "429s given because a token's quota was used up.",
            self.rate_limited,
        );
        single(
            "genesys_sim_tokens_issued_total",
            "Tokens issued by /oauth/token.",
            self.tokens_issued,
        );
        single(
            "genesys_sim_ledger_dropped_total",
            "Effects applied but not kept because the ledger was full.",
            self.ledger_dropped,
        );
        let _ = writeln!(
            out,
            "# HELP genesys_sim_faults_total Faults injected, by kind.\n# TYPE genesys_sim_faults_total counter"
        );
        for (kind, n) in &self.faults {
            let _ = writeln!(
                out,
                "genesys_sim_faults_total{{kind=\"{}\"}} {n}",
                escape(kind)
            );
        }
        out
    }
}

/// A route: its index in the simulator's route table (`routes::ROUTES`), or [`Route::OTHER`] for
/// a request that no route matched. Statistics are kept per route without a global lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route(u8);

impl Route {
    /// A request that no route matched.
    pub(crate) const OTHER: Route = Route(u8::MAX);

    /// The route at `index` in the route table.
    pub(crate) fn at(index: usize) -> Route {
        Route(u8::try_from(index).unwrap_or(u8::MAX))
    }
}

/// The name of each route of the table, by index: `(method, template)`; the template
/// [`INGESTION_TEMPLATE`] stands for the configured ingestion path.
pub(crate) type RouteNames = Vec<(&'static str, &'static str)>;

const STATUS_SLOTS: usize = 600;

/// Lock-free counters behind [`Stats`].
pub(crate) struct StatsInner {
    names: RouteNames,
    by_route_status: Vec<AtomicU64>,
    pub(crate) tokens_issued: AtomicU64,
    pub(crate) rate_limited: AtomicU64,
    ledger_dropped: AtomicU64,
    faults: Mutex<BTreeMap<&'static str, u64>>,
}

impl StatsInner {
    fn new(names: RouteNames) -> Self {
        Self {
            by_route_status: (0..(names.len() + 1) * STATUS_SLOTS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            names,
            tokens_issued: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            ledger_dropped: AtomicU64::new(0),
            faults: Mutex::new(BTreeMap::new()),
        }
    }

    /// The slot of `route`: its index, or the last one for [`Route::OTHER`].
    fn slot(&self, route: Route) -> usize {
        usize::from(route.0).min(self.names.len())
    }

    /// The `(method, template)` of `route`.
    fn name(&self, route: Route, ingestion_path: &str) -> (&'static str, String) {
        match self.names.get(usize::from(route.0)) {
            Some((m, t)) if *t == INGESTION_TEMPLATE => (m, ingestion_path.to_owned()),
            Some((m, t)) => (m, (*t).to_owned()),
            None => ("*", "(unmatched)".to_owned()),
        }
    }

    pub(crate) fn record(&self, route: Route, status: u16) {
        let s = (status as usize).min(STATUS_SLOTS - 1);
        self.by_route_status[self.slot(route) * STATUS_SLOTS + s].fetch_add(1, Relaxed);
    }

    pub(crate) fn fault(&self, kind: &'static str) {
        *lock(&self.faults).entry(kind).or_insert(0) += 1;
    }

    fn snapshot(&self, ingestion_path: &str) -> Stats {
        let mut stats = Stats::default();
        for i in 0..=self.names.len() {
            let route = Route::at(i.min(usize::from(u8::MAX)));
            let mut per = BTreeMap::new();
            for s in 0..STATUS_SLOTS {
                let n = self.by_route_status[i * STATUS_SLOTS + s].load(Relaxed);
                if n > 0 {
                    per.insert(s as u16, n);
                    stats.total_responses += n;
                }
            }
            if !per.is_empty() {
                let (m, t) = self.name(route, ingestion_path);
                stats.requests.insert(format!("{m} {t}"), per);
            }
        }
        stats.tokens_issued = self.tokens_issued.load(Relaxed);
        stats.rate_limited = self.rate_limited.load(Relaxed);
        stats.ledger_dropped = self.ledger_dropped.load(Relaxed);
        stats.faults = lock(&self.faults)
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        stats
    }
}

/// What a token may do right now.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Quota {
    pub(crate) allowed: u32,
    pub(crate) count: u32,
    /// Seconds until the window resets, rounded up.
    pub(crate) reset_secs: u64,
}

#[derive(Debug)]
pub(crate) enum TokenCheck {
    Ok(Arc<str>, Option<Quota>),
    Unknown,
    Expired,
    Limited(Quota),
}

struct TokenEntry {
    client: Arc<str>,
    expires_at: Instant,
    window: Window,
}

/// A fixed window's count of requests.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    start: Instant,
    count: u32,
}

impl Window {
    fn new(now: Instant) -> Self {
        Window {
            start: now,
            count: 0,
        }
    }

    /// Counts a request against `allowed` per `length`: `Ok` with the quota after it, or
    /// `Err` when the window is spent.
    fn take(&mut self, now: Instant, allowed: u32, length: Duration) -> Result<Quota, Quota> {
        let mut end = after(self.start, length);
        if now >= end {
            *self = Window::new(now);
            end = after(now, length);
        }
        let reset_secs = ceil_secs(end.saturating_duration_since(now));
        if self.count >= allowed {
            return Err(Quota {
                allowed,
                count: self.count,
                reset_secs,
            });
        }
        self.count += 1;
        Ok(Quota {
            allowed,
            count: self.count,
            reset_secs,
        })
    }
}

/// Per-OAuth-client windows, across the client's tokens.
#[derive(Default)]
pub(crate) struct ClientQuotas {
    windows: Mutex<HashMap<Arc<str>, Window>>,
}

impl ClientQuotas {
    /// Counts a request of `client` against `limit`.
    pub(crate) fn take(&self, client: &Arc<str>, limit: (u32, Duration)) -> Result<Quota, Quota> {
        let now = Instant::now();
        let mut windows = lock(&self.windows);
        windows
            .entry(client.clone())
            .or_insert_with(|| Window::new(now))
            .take(now, limit.0, limit.1)
    }
}

const TOKEN_SHARDS: usize = 16;

/// Issued tokens, sharded so concurrent callers rarely share a lock.
pub(crate) struct Tokens {
    shards: Vec<Mutex<HashMap<String, TokenEntry>>>,
}

fn shard_of(token: &str) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    token.hash(&mut h);
    (h.finish() as usize) % TOKEN_SHARDS
}

fn ceil_secs(d: Duration) -> u64 {
    let n = d.as_nanos();
    u64::try_from(n.div_ceil(1_000_000_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

/// `at + d`, saturating at about thirty years ahead (the configuration refuses longer durations,
/// so this only guards against a change that forgets to).
fn after(at: Instant, d: Duration) -> Instant {
    const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);
    at.checked_add(d.min(FAR)).unwrap_or(at)
}

impl Tokens {
    fn new() -> Self {
        Self {
            shards: (0..TOKEN_SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    pub(crate) fn insert(&self, token: String, client: Arc<str>, ttl: Duration) {
        let now = Instant::now();
        let mut shard = lock(&self.shards[shard_of(&token)]);
        // Tokens no one presents again are dropped here: each time a shard doubles, what has
        // expired goes (so that a client that fetches a token per call grows nothing).
        if shard.len() >= 16 && shard.len().is_power_of_two() {
            shard.retain(|_, entry| now < entry.expires_at);
        }
        shard.insert(
            token,
            TokenEntry {
                client,
                expires_at: after(now, ttl),
                window: Window::new(now),
            },
        );
    }

    /// Authenticates a token and counts the request against its quota.
    pub(crate) fn check(&self, token: &str, limit: Option<(u32, Duration)>) -> TokenCheck {
        let now = Instant::now();
        let mut shard = lock(&self.shards[shard_of(token)]);
        let Some(entry) = shard.get_mut(token) else {
            return TokenCheck::Unknown;
        };
        if now >= entry.expires_at {
            shard.remove(token);
            return TokenCheck::Expired;
        }
        let Some((allowed, window)) = limit else {
            return TokenCheck::Ok(entry.client.clone(), None);
        };
        match entry.window.take(now, allowed, window) {
            Ok(quota) => TokenCheck::Ok(entry.client.clone(), Some(quota)),
            Err(quota) => TokenCheck::Limited(quota),
        }
    }

    /// Forgets every token; returns how many were live.
    pub(crate) fn revoke_all(&self) -> usize {
        let now = Instant::now();
        self.shards
            .iter()
            .map(|s| {
                let mut s = lock(s);
                let n = s.values().filter(|entry| now < entry.expires_at).count();
                s.clear();
                n
            })
            .sum()
    }
}

/// A completed ingestion, kept for replays of its `Idempotency-Key`.
pub(crate) struct Stored {
    pub(crate) payload_hash: u64,
    pub(crate) status: u16,
    pub(crate) body: Bytes,
}

/// The ingestion endpoint's keys and their answers, per OAuth client, in the order they were
/// stored: with [`SimConfig::ledger_limit`], at most that many are kept (the oldest forgotten
/// first, as a real store's retention forgets them), so that a long benchmark's memory stays
/// bounded here as in the ledger.
#[derive(Default)]
pub(crate) struct KeyStore {
    answers: HashMap<(Arc<str>, String), Stored>,
    order: std::collections::VecDeque<(Arc<str>, String)>,
}

impl KeyStore {
    pub(crate) fn get(&self, slot: &(Arc<str>, String)) -> Option<&Stored> {
        self.answers.get(slot)
    }

    /// Stores `answer` under `slot` (new), forgetting the oldest past `limit`.
    pub(crate) fn insert(
        &mut self,
        slot: (Arc<str>, String),
        answer: Stored,
        limit: Option<usize>,
    ) {
        if self.answers.insert(slot.clone(), answer).is_none() {
            self.order.push_back(slot);
        }
        while limit.is_some_and(|n| self.answers.len() > n) {
            let Some(oldest) = self.order.pop_front() else {
                break;
            };
            self.answers.remove(&oldest);
        }
    }

    /// How many keys are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.answers.len()
    }
}

/// Everything the handlers share.
pub(crate) struct Shared {
    pub(crate) cfg: SimConfig,
    pub(crate) clients: HashMap<String, String>,
    pub(crate) tokens: Tokens,
    pub(crate) client_quotas: ClientQuotas,
    pub(crate) users: Users,
    pub(crate) integrations: HashMap<String, Mutex<Map<String, Value>>>,
    pub(crate) integration_ids: Vec<String>,
    pub(crate) ledger: Mutex<Vec<LedgerEntry>>,
    pub(crate) stats: StatsInner,
    pub(crate) idempotency: Mutex<KeyStore>,
    pub(crate) schema: jsonschema::Validator,
    pub(crate) api_seq: AtomicU64,
    pub(crate) token_seq: AtomicU64,
    /// Set by [`SimHandle::set_login_down`](crate::SimHandle::set_login_down): every token
    /// request is answered 503 meanwhile.
    pub(crate) login_down: std::sync::atomic::AtomicBool,
    started: Instant,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// What a ledger entry is made of, before it gets its position and time.
pub(crate) struct Effect<'a> {
    pub(crate) route: Route,
    pub(crate) entity: String,
    pub(crate) idempotency_key: Option<&'a str>,
    pub(crate) payload: &'a [u8],
    pub(crate) correlation_id: &'a str,
}

impl Shared {
    pub(crate) fn new(cfg: SimConfig, routes: RouteNames) -> Result<Self, SimError> {
        if let Some((n, w)) = cfg.rate_limit
            && (n == 0 || w.is_zero())
        {
            return Err(SimError::Config(
                "the rate limit needs at least 1 request in a window longer than 0".into(),
            ));
        }
        if let Some((_, w)) = cfg.rate_limit
            && w > MAX_DURATION
        {
            return Err(SimError::Config(format!(
                "the rate limit window must be at most {} s (365 days)",
                MAX_DURATION.as_secs()
            )));
        }
        if let Some((n, w)) = cfg.client_rate_limit
            && (n == 0 || w.is_zero() || w > MAX_DURATION)
        {
            return Err(SimError::Config(format!(
                "the client rate limit needs at least 1 request in a window longer than 0 and \
                 at most {} s (365 days)",
                MAX_DURATION.as_secs()
            )));
        }
        if cfg.max_body_bytes > crate::config::DRAIN_CAP {
            return Err(SimError::Config(format!(
                "the largest request body must be at most {} bytes, got {}",
                crate::config::DRAIN_CAP,
                cfg.max_body_bytes
            )));
        }
        if cfg.token_ttl.is_zero() || cfg.token_ttl > MAX_DURATION {
            return Err(SimError::Config(format!(
                "the token lifetime must be longer than 0 and at most {} s (365 days)",
                MAX_DURATION.as_secs()
            )));
        }
        cfg.faults
            .validate()
            .map_err(|e| SimError::Config(e.to_string()))?;
        if cfg.users > crate::config::MAX_USERS {
            return Err(SimError::Config(format!(
                "at most {} users can be seeded, got {}",
                crate::config::MAX_USERS,
                cfg.users
            )));
        }
        if cfg.integrations > crate::config::MAX_INTEGRATIONS {
            return Err(SimError::Config(format!(
                "at most {} integrations can be seeded, got {}",
                crate::config::MAX_INTEGRATIONS,
                cfg.integrations
            )));
        }
        if !(0.0..=1.0).contains(&cfg.ratelimit_headers_share) {
            return Err(SimError::Config(format!(
                "the share of answers with rate-limit headers must be between 0 and 1, got {}",
                cfg.ratelimit_headers_share
            )));
        }
        if !(0.0..=1.0).contains(&cfg.code_variants) {
            return Err(SimError::Config(format!(
                "the share of answers in other words must be between 0 and 1, got {}",
                cfg.code_variants
            )));
        }
        if cfg.clients.is_empty() {
            return Err(SimError::Config(
                "at least one OAuth client is needed".into(),
            ));
        }
        if !cfg.ingestion_path.starts_with('/') {
            return Err(SimError::Config(format!(
                "the ingestion path must start with `/`, got `{}`",
                cfg.ingestion_path
            )));
        }
        let schema = jsonschema::validator_for(&cfg.ingestion_schema)
            .map_err(|e| SimError::Schema(e.to_string()))?;
        let integration_ids: Vec<String> = (0..cfg.integrations)
            .map(|i| integration_id(cfg.seed, i))
            .collect();
        let integrations = integration_ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), Mutex::new(seeded_integration(id, i))))
            .collect();
        Ok(Self {
            clients: cfg
                .clients
                .iter()
                .map(|c| (c.id.clone(), c.secret.clone()))
                .collect(),
            tokens: Tokens::new(),
            client_quotas: ClientQuotas::default(),
            users: Users::seeded(cfg.seed, cfg.users),
            integrations,
            integration_ids,
            ledger: Mutex::new(Vec::new()),
            stats: StatsInner::new(routes),
            idempotency: Mutex::new(KeyStore::default()),
            schema,
            api_seq: AtomicU64::new(0),
            token_seq: AtomicU64::new(0),
            login_down: std::sync::atomic::AtomicBool::new(false),
            started: Instant::now(),
            cfg,
        })
    }

    pub(crate) fn record(&self, e: Effect<'_>) {
        let (method, route) = self.stats.name(e.route, &self.cfg.ingestion_path);
        let elapsed_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut ledger = lock(&self.ledger);
        if self.cfg.ledger_limit.is_some_and(|max| ledger.len() >= max) {
            self.stats.ledger_dropped.fetch_add(1, Relaxed);
            return;
        }
        let seq = ledger.len() as u64;
        ledger.push(LedgerEntry {
            seq,
            route,
            method: method.to_string(),
            entity: e.entity,
            idempotency_key: e.idempotency_key.map(str::to_string),
            payload_hash: format!("{:016x}", fnv1a(e.payload)),
            correlation_id: e.correlation_id.to_string(),
            elapsed_ms,
            time: httpdate::fmt_http_date(SystemTime::now()),
        });
    }

    pub(crate) fn stats(&self) -> Stats {
        self.stats.snapshot(&self.cfg.ingestion_path)
    }
}

/// A label value escaped for the text exposition format.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// FNV-1a, 64 bit: a stable hash (unlike std's) so ledgers compare across runs.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod key_store_tests {
    use super::*;

    /// With a ledger limit, the ingestion keys are bounded too, the oldest forgotten first.
    #[test]
    fn keys_past_the_limit_are_forgotten_oldest_first() {
        let answer = || Stored {
            payload_hash: 0,
            status: 200,
            body: Bytes::new(),
        };
        let client: Arc<str> = Arc::from("c");
        let slot = |i: usize| (client.clone(), format!("k{i}"));
        let mut bounded = KeyStore::default();
        let mut unbounded = KeyStore::default();
        for i in 0..100 {
            bounded.insert(slot(i), answer(), Some(10));
            unbounded.insert(slot(i), answer(), None);
        }
        assert_eq!(bounded.len(), 10);
        assert!(bounded.get(&slot(89)).is_none() && bounded.get(&slot(90)).is_some());
        assert_eq!(unbounded.len(), 100);
    }
}
