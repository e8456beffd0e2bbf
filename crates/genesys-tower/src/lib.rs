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
//! # The four composed over a hyper-util client
//!
//! In the order `docs/architecture.md` explains (outermost first): idempotency keys, then the
//! retry layer (whose policy holds the total deadline), then auth, then a per-attempt timeout,
//! then the concurrency limit with pacing, then the client. The layers take `http::Request<B>`
//! with the body type your client takes and hand the same type down: a client built for
//! `Full<Bytes>` keeps getting `Full<Bytes>`. The retry, auth and idempotency layers may send a
//! body more than once, so `B` must be a [`ReplayBody`](body::ReplayBody) (`Full<Bytes>`,
//! `String`, [`Body`], axum's and reqwest's bodies with their features, ...). Responses keep
//! the client's body type too, except that the idempotency layer rebuilds stored responses from
//! bytes, so its response body must be a `ReplayBody` as well: hyper's `Incoming` is not, and
//! one `map_response` line turns it into a [`Body`].
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use genesys_tower::auth::{AuthLayer, Token, token_source_fn};
//! use genesys_tower::concurrency::ConcurrencyLayer;
//! use genesys_tower::idempotency::IdempotencyLayer;
//! use genesys_tower::retry::{RetryLayer, RetryPolicy};
//! use genesys_tower::{Body, BoxError, Metrics};
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use hyper_util::client::legacy::Client;
//! use hyper_util::rt::TokioExecutor;
//! use tower::timeout::TimeoutLayer;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # async fn run() -> Result<(), BoxError> {
//! let metrics = Metrics::new();
//! let tokens = token_source_fn(|| async {
//!     // Fetch the token from your login host or vault.
//!     Ok(Token::new("the-token", Some(Duration::from_secs(3600))))
//! });
//! // An existing client, built for `Full<Bytes>` request bodies.
//! let hyper: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
//! let client = ServiceBuilder::new()
//!     .layer(IdempotencyLayer::new().metrics(metrics.clone()))
//!     // Stored responses are rebuilt from bytes: hyper's `Incoming` becomes a `Body`.
//!     .map_response(|r: http::Response<hyper::body::Incoming>| r.map(Body::new))
//!     .layer(
//!         RetryLayer::new(
//!             RetryPolicy::builder()
//!                 .deadline(Duration::from_secs(60))
//!                 .build(),
//!         )
//!         .metrics(metrics.clone()),
//!     )
//!     .layer(AuthLayer::new(tokens).metrics(metrics.clone()))
//!     .layer(TimeoutLayer::new(Duration::from_secs(10)))
//!     .layer(ConcurrencyLayer::new(32).metrics(metrics.clone()))
//!     .service(hyper);
//!
//! let request = http::Request::post("http://127.0.0.1:8080/api/v2/things")
//!     .body(Full::new(Bytes::from_static(br#"{"name":"x"}"#)))?;
//! let response = client.clone().oneshot(request).await?;
//! println!("{} after {} attempts", response.status(), metrics.snapshot().attempts);
//! # Ok(()) }
//! ```
//!
//! # Wrapping an existing service
//!
//! Any `Service<http::Request<B>>` with a [`ReplayBody`](body::ReplayBody) `B` can be the leaf:
//! your own client type, a [`tower::service_fn`], an axum `Router` in a test. [`concurrency`]
//! takes any `http::Request<B>`, whatever its body.
//!
//! ```
//! use std::convert::Infallible;
//!
//! use genesys_tower::retry::{RetryLayer, RetryPolicy};
//! use http::{Request, Response, StatusCode};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // An existing service: answers 503 once, then 200.
//! let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
//! let existing = service_fn(move |_req: Request<String>| {
//!     let n = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
//!     let status = if n == 0 { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
//!     async move { Ok::<_, Infallible>(Response::builder().status(status).body(String::new()).unwrap()) }
//! });
//! let policy = RetryPolicy::builder()
//!     .base_delay(std::time::Duration::from_millis(1))
//!     .build();
//! let svc = ServiceBuilder::new()
//!     .layer(RetryLayer::new(policy))
//!     .service(existing);
//! let response = svc.oneshot(Request::get("/").body(String::new()).unwrap()).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! # }
//! ```
//!
//! # Features
//!
//! One feature per middleware, all on by default (`full`), so a user who needs one layer
//! compiles one layer and its dependencies:
//!
//! | feature | what it brings | extra dependencies |
//! | --- | --- | --- |
//! | `retry` | [`retry`] | `rand` |
//! | `auth` | [`auth`] | none |
//! | `concurrency` | [`concurrency`] | none |
//! | `idempotency` | [`idempotency`] (client side, in-memory store) | `uuid`, `moka`, `serde_json` |
//! | `idempotency-server` | [`idempotency::server`] | `futures-util` |
//! | `redis` | `idempotency::RedisStore`, `auth::RedisTokenCache`, `concurrency::RedisPacer` | `redis` |
//! | `hyper-util` (default) | connect errors of hyper-util's client recognised as safe to retry | `hyper-util` |
//! | `axum`, `reqwest` | [`ReplayBody`](body::ReplayBody) for their body types | `axum-core`, `reqwest` |
//!
//! [`body`], [`headers`], [`read_body`], [`metrics`] and [`error`] are always there.
//! `genesys-tower = { version = "0.1", default-features = false, features = ["retry"] }` builds
//! the retry layer alone; CI builds every feature alone.
//!
//! [tower]: https://docs.rs/tower

#![cfg_attr(docsrs, feature(doc_cfg))]
// Helpers shared by the layers (body rebuilding, deadlines) go unused when some layers are left
// out; the default build, with every layer, still reports dead code.
#![cfg_attr(not(feature = "full"), allow(dead_code))]
#![forbid(unsafe_code)]
#![warn(
    missing_docs,
    missing_debug_implementations,
    unreachable_pub,
    rust_2018_idioms
)]

#[cfg(feature = "auth")]
#[cfg_attr(docsrs, doc(cfg(feature = "auth")))]
pub mod auth;
pub mod body;
#[cfg(feature = "concurrency")]
#[cfg_attr(docsrs, doc(cfg(feature = "concurrency")))]
pub mod concurrency;
pub mod error;
pub mod headers;
#[cfg(feature = "idempotency")]
#[cfg_attr(docsrs, doc(cfg(feature = "idempotency")))]
pub mod idempotency;
pub mod metrics;
mod per_thread;
pub mod read_body;
mod reason;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis_conn;
#[cfg(feature = "retry")]
#[cfg_attr(docsrs, doc(cfg(feature = "retry")))]
pub mod retry;
mod spare;
#[cfg(all(feature = "retry", feature = "auth", feature = "idempotency"))]
#[cfg_attr(
    docsrs,
    doc(cfg(all(feature = "retry", feature = "auth", feature = "idempotency")))
)]
pub mod stack;
mod time;
#[cfg(all(feature = "retry", feature = "auth", feature = "idempotency"))]
mod timer;

pub use body::Body;
pub use error::NotSent;

/// Every code example of `docs/architecture.md` runs as a doctest of this crate.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/architecture.md")]
mod architecture_md {}
pub use metrics::Metrics;

/// The error type of every service in this crate: any error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The number of random inputs a property test runs: `default` (a few thousand, so that
/// `cargo test` stays fast), or `GENESYS_FUZZ_CASES` for a longer run.
#[cfg(test)]
pub(crate) fn fuzz_cases(default: u32) -> u32 {
    std::env::var("GENESYS_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
