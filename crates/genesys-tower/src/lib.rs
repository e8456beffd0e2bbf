//! Composable [tower] middleware that makes HTTP API calls survive rate limits, expired tokens,
//! transient server failures and duplicate submissions.
//!
//! The layers, outermost first in the recommended stack:
//!
//! - [`idempotency`]: a stable `Idempotency-Key` for every non-idempotent call, a response store,
//!   and the server-side twin for axum and any tower HTTP server;
//! - [`retry`]: policy-driven classification, exponential backoff with jitter, `Retry-After` as a
//!   floor, a retry budget and a total deadline;
//! - [`auth`]: bearer token injection, cached with a margin, one single-flight refresh on 401;
//! - [`concurrency`]: a shared in-flight limit and client-side pacing learned from rate-limit
//!   headers.
//!
//! Each works alone in any [`tower::ServiceBuilder`] over any `Service<http::Request<B>>`: a
//! hyper-util client, a `tower::service_fn`, an axum `Router`. Nothing in this crate is specific to
//! one API; the Genesys Cloud endpoints live in the `genesys-client` crate.
//!
//! [tower]: https://docs.rs/tower

#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

pub mod auth;
pub mod body;
pub mod concurrency;
pub mod idempotency;
pub mod metrics;
pub mod retry;

pub use body::Body;
pub use metrics::Metrics;

/// The error type of every service in this crate: any error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
