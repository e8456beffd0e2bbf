//! A Genesys Cloud Platform API client built on the [`genesys_tower`] layers.
//!
//! - [`Region`] and [`Endpoints`]: the eighteen public regions (API and login hosts), or any base
//!   URL (the simulator, a proxy).
//! - [`ClientCredentials`]: the OAuth client-credentials [`TokenSource`](genesys_tower::auth::TokenSource),
//!   with a retry loop of its own for the login host.
//! - [`GenesysError`]: the Genesys `ErrorBody` parsed, OAuth errors typed, and the outcomes the
//!   stack can end with (outcome unknown, Retry-After too long, deadline).
//! - [`GenesysClient`]: built by [`GenesysClient::builder`] over the whole default stack
//!   (idempotency keys, retries with a deadline, bearer tokens, per-attempt timeout, a concurrency
//!   limit with pacing, a pooled hyper client with rustls), with typed endpoint methods:
//!   - users: [`get_user`](GenesysClient::get_user), [`list_users`](GenesysClient::list_users)
//!     (a paged `Stream`), [`update_user`](GenesysClient::update_user) (GET the version, PATCH,
//!     re-read and re-apply on a version conflict);
//!   - data actions: [`execute_action`](GenesysClient::execute_action) and
//!     [`test_action`](GenesysClient::test_action), never replayed after an ambiguous failure;
//!   - ingestion: [`Ingestion`] (JSON Schema validation, chunks of 500 records and 512000 bytes,
//!     one stable `Idempotency-Key` per chunk);
//!   - integration config: [`get_integration_config`](GenesysClient::get_integration_config) and
//!     [`put_integration_config`](GenesysClient::put_integration_config);
//!   - organization limits: [`organization_limits`](GenesysClient::organization_limits).
//!
//! ```no_run
//! use genesys_client::{GenesysClient, Region};
//!
//! # async fn run() -> Result<(), genesys_client::GenesysError> {
//! let client = GenesysClient::builder()
//!     .region(Region::EuWest1)
//!     .client_credentials("my-client-id", "my-client-secret")
//!     .build()?;
//! let user = client.get_user("a8f2...").await?;
//! println!("{} is at version {}", user.name.unwrap_or_default(), user.version);
//! # Ok(()) }
//! ```
//!
//! Every knob of the stack is a method of [`GenesysClientBuilder`]; `docs/architecture.md` in the
//! repository explains the order of the layers.

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

pub mod builder;
mod classify;
pub mod client;
pub mod config;
pub mod data_actions;
mod defaults;
pub mod error;
pub mod ingestion;
pub mod integrations;
pub mod limits;
pub mod oauth;
pub mod proxy;
pub mod region;
mod routes;
mod service;
pub mod tls;
pub mod tokens;
pub mod users;

pub use builder::{GenesysClientBuilder, PacingSource};
pub use classify::GenesysClassifier;
pub use client::{ApiResponse, GenesysClient, HttpService};
pub use data_actions::{ActionTestResult, ExecuteOptions};
pub use error::{
    ApiError, ErrorBody, ErrorDetail, ErrorLimit, GenesysError, MESSAGE_MAX_CHARS, OAuthError,
    OAuthErrorKind,
};
pub use ingestion::{
    Chunk, ChunkFailure, ChunkOutcome, DEFAULT_INGESTION_PATH, IngestReport, Ingestion,
    IngestionBuilder, InvalidRecord, Prepared,
};
pub use integrations::IntegrationConfig;
pub use limits::{InvalidLimit, Limit, NamespaceLimits};
pub use oauth::{
    ClientCredentials, MAX_TOKEN_LIFETIME, MIN_TOKEN_LIFETIME, TokenError, TokenRetry,
};
pub use region::{Endpoints, InvalidUrl, ParseRegionError, Region};
pub use tokens::{NamedEntity, TokenInfo};
pub use users::{UpdateUserOptions, User, UsersPage};

/// Re-exported so that users of this crate need not depend on `genesys-tower` for the basics.
pub use genesys_tower::{self as tower_layers, Body, BoxError, Metrics};

/// The number of random inputs a property test runs: `default` (a few thousand, so that
/// `cargo test` stays fast), or `GENESYS_FUZZ_CASES` for a longer run.
#[cfg(test)]
pub(crate) fn fuzz_cases(default: u32) -> u32 {
    std::env::var("GENESYS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
