//! What the layers count, two ways.
//!
//! - **Through the [`metrics`](https://docs.rs/metrics) facade**, labelled, for Prometheus,
//!   OpenTelemetry or any recorder you install: every metric in the table below. With no
//!   recorder installed nothing is built or recorded: a layer checks once per call, at the cost
//!   of a thread-local read.
//! - **In a [`Metrics`] handle**, unlabelled totals read with [`Metrics::snapshot`], for tests,
//!   reports and the CLI. A handle is cheap to clone and shared: give the same handle to several
//!   layers (the `metrics` method on each layer) and read one [`MetricsSnapshot`] for the whole
//!   stack. Only the layers record into it.
//!
//! # The metrics
//!
//! | name | kind | labels | what |
//! | --- | --- | --- | --- |
//! | `genesys_tower_calls_total` | counter | `method`, `route`, `outcome`, `policy_version` | logical calls, counted when they end |
//! | `genesys_tower_call_duration_seconds` | histogram | `method`, `route`, `outcome`, `policy_version` | a call's time, all attempts and waits included |
//! | `genesys_tower_attempts_total` | counter | `method`, `route`, `outcome` | attempts sent |
//! | `genesys_tower_attempt_duration_seconds` | histogram | `method`, `route`, `outcome` | one attempt's time |
//! | `genesys_tower_retries_total` | counter | `method`, `route`, `reason`, `policy_version` | retries, by [`RetryReason`] |
//! | `genesys_tower_rate_limited_total` | counter | `method`, `route` | 429 responses |
//! | `genesys_tower_budget_refusals_total` | counter | `method`, `route`, `policy_version` | retries the budget refused |
//! | `genesys_tower_calls_in_flight` | gauge | none | calls under way in the retry layer |
//! | `genesys_tower_token_fetches_total` | counter | none | tokens fetched from the token source |
//! | `genesys_tower_token_refreshes_total` | counter | none | re-sends after a 401 with a fresh token |
//! | `genesys_tower_pacing_waits_total` | counter | none | requests held back by pacing |
//! | `genesys_tower_concurrency_rejections_total` | counter | none | requests shed by the concurrency limit |
//! | `genesys_tower_idempotent_replays_total` | counter | none | calls answered from an idempotency store |
//! | `genesys_tower_idempotent_joins_total` | counter | none | calls joined to one in flight with the same key |
//!
//! Labels stay few so that series stay few: `method` is the HTTP method; `route` is the
//! request's [`Route`] extension, a path template such as `/api/v2/users/{id}` (`other` when the
//! request has none: raw paths carry ids and would make a series per id); `outcome` is the status
//! class (`2xx` to `5xx`) or `error`; `reason` is a [`RetryReason`]; `policy_version` is the
//! retry policy's [version](crate::retry::RetryPolicyBuilder::version) (`default` unless set).
//!
//! ```
//! use genesys_tower::metrics::Metrics;
//!
//! let metrics = Metrics::new();
//! // ... give `metrics.clone()` to the layers, send requests ...
//! assert_eq!(metrics.snapshot().retries.total(), 0);
//! ```

mod export;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::Serialize;

use crate::per_thread::{SHARDS, shard};

pub(crate) use self::export::recording;
#[cfg(feature = "retry")]
pub(crate) use self::export::{CallMetrics, outcome_label};
pub use self::export::{Route, names};
pub use crate::reason::RetryReason;

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    attempts: AtomicU64,
    retries: [AtomicU64; 5],
    rate_limited_responses: AtomicU64,
    budget_refusals: AtomicU64,
    token_fetches: AtomicU64,
    unauthorized_refreshes: AtomicU64,
    idempotent_replays: AtomicU64,
    idempotent_joins: AtomicU64,
    pacing_waits: AtomicU64,
    concurrency_rejections: AtomicU64,
}

/// One copy of the counters, on cache lines of its own. A handle keeps one per shard: threads
/// count into their own copy, so that requests on several cores do not fight over one cache
/// line; a snapshot adds them up.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(Counters);

/// A shared set of counters. Clones share the same counters.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<[Shard; SHARDS]>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.snapshot(), f)
    }
}

/// Retries counted by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct RetriesByReason {
    /// Connection failures before the request was sent.
    pub connect: u64,
    /// Ambiguous failures of requests that were safe to send again.
    pub ambiguous: u64,
    /// 408 responses.
    pub request_timeout: u64,
    /// 429 responses.
    pub rate_limited: u64,
    /// Retried 5xx responses.
    pub server_error: u64,
}

impl RetriesByReason {
    /// All retries, whatever the reason.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.connect + self.ambiguous + self.request_timeout + self.rate_limited + self.server_error
    }
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Logical requests (one per call of the retry layer, however many attempts it took).
    pub requests: u64,
    /// Attempts sent to the service below the retry layer.
    pub attempts: u64,
    /// Retries, by reason.
    pub retries: RetriesByReason,
    /// 429 responses seen, retried or not.
    pub rate_limited_responses: u64,
    /// Retries refused because the retry budget was spent.
    pub budget_refusals: u64,
    /// Tokens fetched from the token source.
    pub token_fetches: u64,
    /// Requests re-sent once after a 401 with a fresh token.
    pub unauthorized_refreshes: u64,
    /// Calls answered from the idempotency store without calling the service.
    pub idempotent_replays: u64,
    /// Calls that joined a call in flight with the same idempotency key.
    pub idempotent_joins: u64,
    /// Requests held back by client-side pacing.
    pub pacing_waits: u64,
    /// Requests rejected because the concurrency limit was reached (reject mode).
    pub concurrency_rejections: u64,
}

macro_rules! counter {
    ($(#[$doc:meta] $name:ident => $field:ident $(, $facade:expr)?;)*) => {
        $(
            #[$doc]
            pub(crate) fn $name(&self) {
                self.shard().$field.fetch_add(1, Relaxed);
                $(
                    if recording() {
                        metrics::counter!($facade).increment(1);
                    }
                )?
            }
        )*
    };
}

impl Metrics {
    /// Whether `other` is a handle to the same counters.
    #[cfg(test)]
    pub(crate) fn is_same(&self, other: &Metrics) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    fn shard(&self) -> &Counters {
        &self.inner[shard()].0
    }

    /// A new set of counters, all zero.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    counter! {
        /// Counts one logical request.
        record_request => requests;
        /// Counts one attempt.
        record_attempt => attempts;
        /// Counts one 429 response.
        record_rate_limited_response => rate_limited_responses;
        /// Counts one retry refused by the budget.
        record_budget_refusal => budget_refusals;
        /// Counts one token fetched from the token source.
        record_token_fetch => token_fetches, names::TOKEN_FETCHES;
        /// Counts one re-send after a 401.
        record_unauthorized_refresh => unauthorized_refreshes, names::TOKEN_REFRESHES;
        /// Counts one call answered from the idempotency store.
        record_idempotent_replay => idempotent_replays, names::IDEMPOTENT_REPLAYS;
        /// Counts one call that joined another in flight with the same key.
        record_idempotent_join => idempotent_joins, names::IDEMPOTENT_JOINS;
        /// Counts one request held back by pacing.
        record_pacing_wait => pacing_waits, names::PACING_WAITS;
        /// Counts one request rejected by the concurrency limit.
        record_concurrency_rejection => concurrency_rejections, names::CONCURRENCY_REJECTIONS;
    }

    /// Counts one retry for `reason`.
    pub(crate) fn record_retry(&self, reason: RetryReason) {
        let i = match reason {
            RetryReason::Connect => 0,
            RetryReason::Ambiguous => 1,
            RetryReason::RequestTimeout => 2,
            RetryReason::RateLimited => 3,
            RetryReason::ServerError => 4,
        };
        self.shard().retries[i].fetch_add(1, Relaxed);
    }

    /// Reads every counter.
    #[must_use]
    pub fn snapshot(&self) -> MetricsSnapshot {
        let sum = |f: fn(&Counters) -> &AtomicU64| -> u64 {
            self.inner
                .iter()
                .map(|shard| f(&shard.0).load(Relaxed))
                .fold(0u64, u64::wrapping_add)
        };
        MetricsSnapshot {
            requests: sum(|c| &c.requests),
            attempts: sum(|c| &c.attempts),
            retries: RetriesByReason {
                connect: sum(|c| &c.retries[0]),
                ambiguous: sum(|c| &c.retries[1]),
                request_timeout: sum(|c| &c.retries[2]),
                rate_limited: sum(|c| &c.retries[3]),
                server_error: sum(|c| &c.retries[4]),
            },
            rate_limited_responses: sum(|c| &c.rate_limited_responses),
            budget_refusals: sum(|c| &c.budget_refusals),
            token_fetches: sum(|c| &c.token_fetches),
            unauthorized_refreshes: sum(|c| &c.unauthorized_refreshes),
            idempotent_replays: sum(|c| &c.idempotent_replays),
            idempotent_joins: sum(|c| &c.idempotent_joins),
            pacing_waits: sum(|c| &c.pacing_waits),
            concurrency_rejections: sum(|c| &c.concurrency_rejections),
        }
    }
}
