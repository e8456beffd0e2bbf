//! A faithful local Genesys Cloud for tests, examples, benchmarks and demos.
//!
//! It serves, on one address, the OAuth client-credentials token endpoint and the Platform API
//! routes this workspace uses (users, data actions, the seed's ingestion endpoint, integration
//! config, organization limits) with the real service's error bodies, correlation ids,
//! per-token quota, `Retry-After` and `inin-ratelimit-*` headers. On top it injects seeded,
//! reproducible [`faults`] (5xx, 503 with `Retry-After`, latency, connection resets before
//! and *after* the effect was applied, token revocation, long `Retry-After`), and keeps an
//! effect ledger: every applied side effect by route, entity and idempotency key, so a test can
//! prove nothing was lost and nothing was applied twice.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use genesys_sim::{Faults, SimConfig, Simulator};
//!
//! let sim = Simulator::spawn(
//!     SimConfig::default()
//!         .users(10)
//!         .faults("5xx=0.05,reset-after=0.01".parse::<Faults>()?)
//!         .seed(42),
//! )
//! .await?;
//! let base = sim.base_url(); // POST {base}/oauth/token, GET {base}/api/v2/users, ...
//! # let _ = base;
//! let user = sim.user(&sim.user_ids()[0]).expect("seeded");
//! assert!(user["version"].as_u64().unwrap() >= 1);
//! assert_eq!(sim.ledger_len(), 0);
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The routes, the fault spec and what is simulated are described in `docs/simulator.md`.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

mod config;
mod conn;
mod data;
mod error;
pub mod faults;
mod routes;
mod server;
mod state;

pub use config::{
    Action, ActionFailure, Actions, ClientCredentials, DEFAULT_INGESTION_PATH,
    DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_RECORDS, DEFAULT_ORG_ID, ECHO_ACTION_ID, MAX_INTEGRATIONS,
    MAX_USERS, RetryAfterFormat, SimConfig, default_ingestion_schema, parse_rate_limit,
    parse_share, parse_token_ttl,
};
pub use data::{integration_id, user_id};
pub use error::SimError;
pub use faults::{FaultSpecError, FaultTarget, Faults};
pub use server::{SimHandle, Simulator};
pub use state::{LedgerEntry, Stats};

/// The number of random inputs a property test runs: `default` (a few thousand, so that
/// `cargo test` stays fast), or `GENESYS_FUZZ_CASES` for a longer run.
#[cfg(test)]
pub(crate) fn fuzz_cases(default: u32) -> u32 {
    std::env::var("GENESYS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
