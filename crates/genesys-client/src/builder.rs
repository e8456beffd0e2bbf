//! [`GenesysClientBuilder`]: the default stack of layers over a pooled hyper client, in one call;
//! each layer tunable or replaceable.
//!
//! The stack, outermost first (see the crate's design notes for why in this order):
//!
//! 1. [`IdempotencyLayer`]: one stable `Idempotency-Key` per POST/PATCH call, repeats answered
//!    from its store;
//! 2. [`RetryLayer`] with the [`RetryPolicy`]'s total deadline: classification, backoff with
//!    jitter, `Retry-After` as a floor, a retry budget;
//! 3. [`AuthLayer`] with the [`ClientCredentials`] token source: the bearer token on every
//!    attempt, one refresh on 401;
//! 4. a per-attempt timeout (what [`tower::timeout::TimeoutLayer`] does, with its error), which
//!    covers reading the body;
//! 5. [`ReadBodyLayer`]: every response body read whole, within limits (16 MiB for a success
//!    body, 64 KiB kept of an error body) and an idle timeout between chunks (30 s);
//! 6. [`ConcurrencyLayer`]: a limit on requests in flight and pacing (300 requests per 60 s by
//!    default, the Genesys limit per client-credentials token);
//! 7. the leaf: hyper-util's pooled client with rustls (https and http), or any service given to
//!    [`GenesysClientBuilder::service`].
//!
//! The first four run as one [`Stack`](genesys_tower::stack::Stack): the same layers and rules,
//! in one future for a call that goes the common way.
//!
//! ```no_run
//! use std::time::Duration;
//! use genesys_client::{GenesysClient, Region};
//! use genesys_tower::retry::RetryPolicy;
//!
//! # fn run() -> Result<(), genesys_client::GenesysError> {
//! let client = GenesysClient::builder()
//!     .region(Region::UsEast1)
//!     .client_credentials("id", "secret")
//!     .retry_policy(RetryPolicy::builder().max_attempts(6).deadline(Duration::from_secs(120)).build())
//!     .max_in_flight(8)
//!     .pacing(300, Duration::from_secs(60))
//!     .attempt_timeout(Duration::from_secs(20))
//!     .build()?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use genesys_tower::auth::{AuthLayer, Token, TokenSource};
use genesys_tower::concurrency::{ConcurrencyLayer, SharedPacer};
use genesys_tower::idempotency::{IdempotencyLayer, IdempotencyStore};
use genesys_tower::read_body::ReadBodyLayer;
use genesys_tower::retry::{PolicySwitch, RetryLayer, RetryPolicy};
use genesys_tower::stack::StackLayer;
use genesys_tower::{Body, BoxError, Metrics};
use http::{HeaderValue, Request, Response, Uri};
use tower::timeout::TimeoutLayer;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceBuilder, ServiceExt};

use crate::client::{ClientInner, GenesysClient};
use crate::error::GenesysError;
use crate::oauth::{ClientCredentials, TokenRetry};
use crate::proxy::{Proxy, ProxyConnector, Route};
use crate::region::{Endpoints, Region};
use crate::service::{HttpService, MAX_TOKEN_BODY};

pub use crate::defaults::{
    DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_BODY_IDLE_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, DEFAULT_DEADLINE,
    DEFAULT_MAX_ERROR_BODY, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_RESPONSE_BODY, DEFAULT_PACING,
};

/// Where a client's pacing setting came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PacingSource {
    /// The default, 300 requests per 60 s.
    Default,
    /// Set by [`GenesysClientBuilder::pacing`] or [`GenesysClientBuilder::no_pacing`].
    Explicit,
    /// Read from the org's limits by [`GenesysClientBuilder::discover_limits`].
    OrgLimit,
}

impl fmt::Display for PacingSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PacingSource::Default => "the default (the Genesys limit per token)",
            PacingSource::Explicit => "set by the caller",
            PacingSource::OrgLimit => "the org's own limit",
        })
    }
}

type TokenFuture = Pin<Box<dyn Future<Output = Result<Token, BoxError>> + Send>>;

type TokenWrap = Arc<dyn Fn(DynTokenSource) -> DynTokenSource + Send + Sync>;

/// A token source behind a trait object (the trait's futures are not object-safe as they are):
/// what [`GenesysClientBuilder::wrap_token_source`] hands over and takes back.
#[derive(Clone)]
pub struct DynTokenSource(Arc<dyn Fn() -> TokenFuture + Send + Sync>);

impl DynTokenSource {
    /// Boxes `source`.
    pub fn new<T: TokenSource>(source: T) -> Self {
        let source = Arc::new(source);
        DynTokenSource(Arc::new(move || {
            let source = source.clone();
            Box::pin(async move { source.fetch().await })
        }))
    }
}

impl TokenSource for DynTokenSource {
    fn fetch(&self) -> impl Future<Output = Result<Token, BoxError>> + Send {
        (self.0)()
    }
}

impl fmt::Debug for DynTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSource")
    }
}

#[derive(Clone)]
enum Auth {
    Credentials { id: String, secret: Secret },
    Source(DynTokenSource),
}

#[derive(Clone)]
struct Secret(Arc<str>);

/// Builds a [`GenesysClient`]; start with [`GenesysClient::builder`].
///
/// Every knob of every layer is reachable here: the simple ones as methods
/// ([`max_in_flight`](Self::max_in_flight), [`pacing`](Self::pacing), ...), and each layer as a
/// whole ([`retry_policy`](Self::retry_policy), [`idempotency_layer`](Self::idempotency_layer),
/// [`concurrency_layer`](Self::concurrency_layer)) for the rest.
#[derive(Clone)]
#[must_use]
pub struct GenesysClientBuilder {
    region: Option<Region>,
    base_url: Option<String>,
    login_url: Option<String>,
    auth: Option<Auth>,
    token_retry: TokenRetry,
    retry_policy: Option<RetryPolicy>,
    retry_switch: Option<PolicySwitch>,
    refresh_margin: Option<Duration>,
    token_fetch_timeout: Option<FetchTimeout>,
    attempt_timeout: Option<Duration>,
    connect_timeout: Duration,
    proxy: Proxy,
    root_certificates: Vec<Arc<[u8]>>,
    max_response_body: usize,
    max_error_body: usize,
    body_idle_timeout: Option<Duration>,
    max_in_flight: usize,
    pacing: Option<(u64, Duration)>,
    pacing_source: PacingSource,
    max_rate: Option<(u64, Duration)>,
    reject_when_full: bool,
    concurrency_layer: Option<ConcurrencyLayer>,
    shared_pacing: Option<Arc<dyn SharedPacer>>,
    wrap_token_source: Option<TokenWrap>,
    idempotency: bool,
    idempotency_layer: Option<IdempotencyLayer>,
    idempotency_store: Option<Arc<dyn IdempotencyStore>>,
    /// A Redis store named by a configuration (its URL, the variable of its password, and the
    /// retention), opened by `build`.
    idempotency_redis: Option<(String, Option<String>, Duration)>,
    metrics: Metrics,
    leaf: Option<HttpService>,
    user_agent: Option<HeaderValue>,
}

impl Default for GenesysClientBuilder {
    fn default() -> Self {
        GenesysClientBuilder {
            region: None,
            base_url: None,
            login_url: None,
            auth: None,
            token_retry: TokenRetry::default(),
            retry_policy: None,
            retry_switch: None,
            refresh_margin: None,
            token_fetch_timeout: None,
            attempt_timeout: Some(DEFAULT_ATTEMPT_TIMEOUT),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            proxy: Proxy::from_env(),
            root_certificates: Vec::new(),
            max_response_body: DEFAULT_MAX_RESPONSE_BODY,
            max_error_body: DEFAULT_MAX_ERROR_BODY,
            body_idle_timeout: Some(DEFAULT_BODY_IDLE_TIMEOUT),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            pacing: Some(DEFAULT_PACING),
            pacing_source: PacingSource::Default,
            max_rate: None,
            reject_when_full: false,
            concurrency_layer: None,
            shared_pacing: None,
            wrap_token_source: None,
            idempotency: true,
            idempotency_layer: None,
            idempotency_store: None,
            idempotency_redis: None,
            metrics: Metrics::new(),
            leaf: None,
            user_agent: None,
        }
    }
}

impl GenesysClientBuilder {
    /// The region to talk to (its API and login hosts).
    pub fn region(mut self, region: Region) -> Self {
        self.region = Some(region);
        self
    }

    /// A custom API base URL (the simulator, a proxy), instead of a region. Its login URL is the
    /// same URL with `api.` replaced by `login.`, or the same URL when the host does not start
    /// with `api.` (the simulator serves both); see [`login_url`](Self::login_url).
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// A login base URL of its own (`<login>/oauth/token` is where tokens come from).
    pub fn login_url(mut self, url: impl Into<String>) -> Self {
        self.login_url = Some(url.into());
        self
    }

    /// OAuth client credentials: tokens are fetched from the login host with them.
    pub fn client_credentials(
        mut self,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
    ) -> Self {
        self.auth = Some(Auth::Credentials {
            id: client_id.into(),
            secret: Secret(Arc::from(client_secret.into())),
        });
        self
    }

    /// Any other token source, instead of client credentials.
    pub fn token_source(mut self, source: impl TokenSource) -> Self {
        self.auth = Some(Auth::Source(DynTokenSource::new(source)));
        self
    }

    /// Wraps the token source the client is built with (client credentials, or the one given
    /// to [`token_source`](Self::token_source)), for instance in a cache shared by a fleet of
    /// processes (genesys-tower's `RedisTokenCache`, feature `redis`):
    ///
    /// ```no_run
    /// # use genesys_client::GenesysClient;
    /// # use genesys_client::builder::DynTokenSource;
    /// let builder = GenesysClient::builder()
    ///     .client_credentials("id", "secret")
    ///     .wrap_token_source(|login| {
    ///         // e.g. RedisTokenCache::open(url, key, login.clone()), falling back to `login`.
    ///         DynTokenSource::new(login)
    ///     });
    /// # drop(builder);
    /// ```
    pub fn wrap_token_source(
        mut self,
        wrap: impl Fn(DynTokenSource) -> DynTokenSource + Send + Sync + 'static,
    ) -> Self {
        self.wrap_token_source = Some(Arc::new(wrap));
        self
    }

    /// How token requests are retried (default [`TokenRetry::default`]).
    pub fn token_retry(mut self, retry: TokenRetry) -> Self {
        self.token_retry = retry;
        self
    }

    /// The retry policy (default: [`GenesysClient::retry_policy_builder`] as it is). Its deadline
    /// is the whole call's time budget. Start from [`GenesysClient::retry_policy_builder`] to keep
    /// the [`GenesysClassifier`](crate::GenesysClassifier), which does not retry a request whose
    /// token could not be had.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry_policy = Some(policy);
        self
    }

    /// Takes each call's retry policy from `switch`: changed live, and a canary on a share of
    /// the calls ([`PolicySwitch`]); [`retry_policy`](Self::retry_policy) is then not used.
    pub fn retry_switch(mut self, switch: PolicySwitch) -> Self {
        self.retry_switch = Some(switch);
        self
    }

    /// How long before its expiry a token is refreshed (the auth layer's default when unset; it
    /// never exceeds a fraction of the token's lifetime).
    pub fn refresh_margin(mut self, margin: Duration) -> Self {
        self.refresh_margin = Some(margin);
        self
    }

    /// How long the auth layer waits for the token source before the requests waiting for a
    /// token fail ([`AuthLayer::fetch_timeout`]). Unset, a source given to
    /// [`token_source`](Self::token_source) gets the auth layer's default (60 s), and client
    /// credentials the longest their retry loop takes (every token request within the attempt
    /// timeout, or a minute without one, and the waits between them: 7 minutes by default),
    /// and a minute more for what a [`wrap_token_source`](Self::wrap_token_source) wrapper
    /// waits for.
    pub fn token_fetch_timeout(mut self, timeout: Duration) -> Self {
        self.token_fetch_timeout = Some(FetchTimeout::After(timeout));
        self
    }

    /// No time limit on the token source in the auth layer
    /// ([`AuthLayer::no_fetch_timeout`]): for a source that bounds its own time, or a runtime
    /// without its time driver.
    pub fn no_token_fetch_timeout(mut self) -> Self {
        self.token_fetch_timeout = Some(FetchTimeout::Never);
        self
    }

    /// The timeout of one attempt (default [`DEFAULT_ATTEMPT_TIMEOUT`]). A timed-out attempt is
    /// an ambiguous failure: retried only when the request is safe to send twice.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }

    /// How long the default leaf waits for a TCP connection to the API or the login host
    /// (default [`DEFAULT_CONNECT_TIMEOUT`], 10 s), shared among the host's addresses. A
    /// connection that does not open in time (a firewall that drops it, an address that is
    /// gone) is a connection failure, retried for any request, since nothing was sent; without
    /// it the attempt's own timeout would end it as an ambiguous failure, whose outcome is
    /// unknown. Has no effect on a leaf given with [`service`](Self::service).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Which proxy the default leaf connects through (default [`Proxy::from_env`]: the
    /// `https_proxy`, `http_proxy`, `all_proxy` and `no_proxy` variables, as curl reads them,
    /// read by `build`).
    /// See [`proxy`](crate::proxy). Has no effect on a leaf given with
    /// [`service`](Self::service).
    pub fn proxy(mut self, proxy: Proxy) -> Self {
        self.proxy = proxy;
        self
    }

    /// Certificate authorities (PEM, one or more `-----BEGIN CERTIFICATE-----` blocks) the
    /// default leaf trusts besides the built-in ones and those of `SSL_CERT_FILE`: a network
    /// whose proxy inspects TLS signs every host's certificate with an authority of its own.
    /// Checked by `build`. See [`tls`](crate::tls). Has no effect on a leaf given with
    /// [`service`](Self::service).
    pub fn root_certificates_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_certificates.push(Arc::from(pem.into()));
        self
    }

    /// No per-attempt timeout.
    pub fn no_attempt_timeout(mut self) -> Self {
        self.attempt_timeout = None;
        self
    }

    /// The largest success body the client reads, in bytes (default
    /// [`DEFAULT_MAX_RESPONSE_BODY`], 16 MiB). The limit is checked while the body streams in
    /// (a `Content-Length` above it fails before anything is read): a larger body ends the call
    /// with [`GenesysError::ResponseTooLarge`] and is not retried.
    pub fn max_response_body(mut self, bytes: usize) -> Self {
        self.max_response_body = bytes;
        self
    }

    /// The most bytes kept of an error body (default [`DEFAULT_MAX_ERROR_BODY`], 64 KiB); the
    /// rest is not read, and the error keeps its status.
    pub fn max_error_body(mut self, bytes: usize) -> Self {
        self.max_error_body = bytes;
        self
    }

    /// The longest wait for the next chunk of a response body (default
    /// [`DEFAULT_BODY_IDLE_TIMEOUT`], 30 s). The per-attempt timeout covers the whole body as
    /// well, so a body that drips a byte now and then still ends within it.
    pub fn body_idle_timeout(mut self, timeout: Duration) -> Self {
        self.body_idle_timeout = Some(timeout);
        self
    }

    /// No idle timeout between body chunks (the per-attempt timeout still applies).
    pub fn no_body_idle_timeout(mut self) -> Self {
        self.body_idle_timeout = None;
        self
    }

    /// The most requests in flight at once (default [`DEFAULT_MAX_IN_FLIGHT`]).
    pub fn max_in_flight(mut self, max: usize) -> Self {
        self.max_in_flight = max.max(1);
        self
    }

    /// Client-side pacing: at most `requests` per `window` (default 300 per 60 s, the Genesys
    /// limit per client-credentials token; see
    /// [`discover_limits`](Self::discover_limits) to read your org's own).
    pub fn pacing(mut self, requests: u64, window: Duration) -> Self {
        self.pacing = Some((requests, window));
        self.pacing_source = PacingSource::Explicit;
        self
    }

    /// The pacing the client will be built with (`None`: no pacing), for instance after
    /// [`discover_limits`](Self::discover_limits).
    pub fn pacing_setting(&self) -> Option<(u64, Duration)> {
        self.pacing
    }

    /// Where the pacing setting came from.
    pub fn pacing_source(&self) -> PacingSource {
        self.pacing_source
    }

    /// A rate the client never exceeds, whatever the server allows (see
    /// [`ConcurrencyLayer::max_rate`]): [`pacing`](Self::pacing) is where pacing starts, and
    /// the server's own quota and answers move it, up to this ceiling when one is set.
    pub fn max_rate(mut self, requests: u64, window: Duration) -> Self {
        self.max_rate = Some((requests, window));
        self
    }

    /// No client-side pacing: only the server's 429s slow the client down.
    pub fn no_pacing(mut self) -> Self {
        self.pacing = None;
        self.pacing_source = PacingSource::Explicit;
        self
    }

    /// Reject a request at once with an error when the in-flight limit is reached, instead of
    /// waiting for a permit.
    pub fn reject_when_full(mut self) -> Self {
        self.reject_when_full = true;
        self
    }

    /// Paces with other processes too, under one quota (a `RedisPacer` of genesys-tower's
    /// `redis` feature): every request also takes its start from `pacer` (see
    /// [`ConcurrencyLayer::shared_pacing`]). Applies to the layer built from this builder's
    /// settings, not to one given with [`concurrency_layer`](Self::concurrency_layer).
    pub fn shared_pacing(mut self, pacer: impl SharedPacer) -> Self {
        self.shared_pacing = Some(Arc::new(pacer));
        self
    }

    /// A concurrency layer configured by hand; it replaces [`max_in_flight`](Self::max_in_flight),
    /// [`pacing`](Self::pacing), [`max_rate`](Self::max_rate) and
    /// [`reject_when_full`](Self::reject_when_full).
    pub fn concurrency_layer(mut self, layer: ConcurrencyLayer) -> Self {
        self.concurrency_layer = Some(layer);
        self
    }

    /// The store of the idempotency layer (default: its in-memory store).
    pub fn idempotency_store(mut self, store: impl IdempotencyStore) -> Self {
        self.idempotency_store = Some(Arc::new(store));
        self.idempotency_redis = None;
        self
    }

    /// An idempotency layer configured by hand (store, retention, methods, limits).
    pub fn idempotency_layer(mut self, layer: IdempotencyLayer) -> Self {
        self.idempotency_layer = Some(layer);
        self.idempotency_redis = None;
        self
    }

    /// Applies a [`StackConfig`](crate::config::StackConfig) (checked already when it was
    /// loaded): the retry policy (its statuses and per-route safety included), the refresh
    /// margin, the in-flight limit and what happens when it is full, the pacing ceiling, the
    /// timeouts, the body limits, and the idempotency layer (whether it is in, its methods,
    /// retention and lock time, and its store: a Redis store is opened by
    /// [`build`](Self::build), which needs this crate's `redis` feature for it). Settings made
    /// after this call win.
    pub fn config(mut self, config: &crate::config::StackConfig) -> Self {
        self = self
            .retry_policy(config.retry_policy())
            .refresh_margin(config.auth.refresh_margin.0)
            .attempt_timeout(config.timeouts.attempt.0)
            .body_idle_timeout(config.timeouts.body_idle.0)
            .max_response_body(usize::try_from(config.bodies.max_response).unwrap_or(usize::MAX))
            .max_error_body(usize::try_from(config.bodies.max_error).unwrap_or(usize::MAX))
            .max_in_flight(config.concurrency.limit as usize);
        if config.concurrency.when_full == crate::config::WhenFull::Reject {
            self = self.reject_when_full();
        }
        if let Some((requests, window)) = config.pacing_rate() {
            self = self.max_rate(requests, window);
        }
        self.idempotency = config.idempotency.enabled;
        // A configuration that leaves `[idempotency]` at its defaults keeps a layer or a store
        // set on this builder before.
        if config.idempotency != crate::config::IdempotencyConfig::default() {
            self.idempotency_layer = Some(config.idempotency_layer());
        }
        if let Some(url) = config.idempotency.redis_url() {
            self.idempotency_store = None;
            self.idempotency_redis = Some((
                url.to_owned(),
                config.idempotency.store_password_env.clone(),
                config.idempotency.retention.0,
            ));
        }
        self
    }

    /// Leaves the idempotency layer out of the stack: POSTs and PATCHes get no automatic
    /// `Idempotency-Key` (the ingestion endpoint still sets its own per chunk).
    pub fn no_idempotency(mut self) -> Self {
        self.idempotency = false;
        self
    }

    /// The counters every layer feeds (default: a new set, see [`GenesysClient::metrics`]). It
    /// replaces any handle set on a layer given to this builder.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Puts an existing HTTP client service at the leaf, instead of hyper: any
    /// `Service<Request<genesys_tower::Body>>` that answers `Response<B>` with a `Bytes` body
    /// (another hyper client, an axum `Router` in tests, a `tower::service_fn`). Token requests
    /// go through it too.
    pub fn service<S, B>(mut self, service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.leaf = Some(BoxCloneSyncService::new(
            service
                .map_response(|r: Response<B>| r.map(Body::new))
                .map_err(Into::into),
        ));
        self
    }

    /// Same as [`service`](Self::service).
    pub fn leaf<S, B>(self, service: S) -> Self
    where
        S: Service<Request<Body>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.service(service)
    }

    /// The `User-Agent` header sent with every request (default `genesys-client/<version>`).
    pub fn user_agent(mut self, agent: &str) -> Self {
        self.user_agent = HeaderValue::from_str(agent).ok();
        self
    }

    /// Sets the pacing read from the org's own limit ([`discover_limits`](Self::discover_limits)).
    pub(crate) fn org_pacing(&mut self, requests: u64, window: Duration) {
        self.pacing = Some((requests, window));
        self.pacing_source = PacingSource::OrgLimit;
    }

    fn endpoints(&self) -> Result<Endpoints, GenesysError> {
        let endpoints = match (&self.base_url, self.region) {
            (Some(url), _) => {
                Endpoints::custom(url).map_err(|e| GenesysError::Config(e.to_string()))?
            }
            (None, Some(region)) => Endpoints::from(region),
            (None, None) => {
                return Err(GenesysError::Config(
                    "no region or base URL: call .region(Region::...) or .base_url(\"http://...\")"
                        .into(),
                ));
            }
        };
        match &self.login_url {
            Some(login) => endpoints
                .with_login(login)
                .map_err(|e| GenesysError::Config(e.to_string())),
            None => Ok(endpoints),
        }
    }

    /// The HTTP client the default leaf is (hyper-util over rustls), with this builder's proxy,
    /// certificate authorities and connect timeout, and none of the client's layers: for other
    /// HTTP a program sends next to the API's (a telemetry exporter's), through the same network
    /// as the API's. Fails as [`build`](Self::build) does on a proxy or a certificate it cannot
    /// use. Needs a tokio runtime when it is used.
    pub fn http_service(&self) -> Result<HttpService, GenesysError> {
        hyper_leaf(
            self.connect_timeout,
            self.proxy.resolve()?,
            crate::tls::client_config(&self.root_certificates)?,
        )
    }

    /// Builds the client.
    ///
    /// Fails when no region or base URL, or no credentials, were given, or a URL is invalid.
    /// Needs a tokio runtime when the client is used (not when it is built).
    pub fn build(self) -> Result<GenesysClient, GenesysError> {
        let endpoints = self.endpoints()?;
        let leaf = match self.leaf.clone() {
            Some(leaf) => leaf,
            None => self.http_service()?,
        };
        // Token requests: the leaf with the per-attempt timeout over reading the whole (small)
        // answer, without pacing (another host).
        let token_http: HttpService = BoxCloneSyncService::new(
            ServiceBuilder::new()
                .option_layer(self.attempt_timeout.map(TimeoutLayer::new))
                .layer(
                    ReadBodyLayer::new()
                        .max_success_body(MAX_TOKEN_BODY)
                        .max_error_body(MAX_TOKEN_BODY)
                        .idle_timeout(self.body_idle_timeout),
                )
                .service(leaf.clone())
                .map_err(Into::into),
        );
        let (source, credentials) = match self.auth.clone() {
            Some(Auth::Credentials { id, secret }) => {
                let cc = ClientCredentials::new(endpoints.token_url(), id, &*secret.0, token_http)
                    .with_retry(self.token_retry);
                (DynTokenSource::new(cc.clone()), Some(cc))
            }
            Some(Auth::Source(s)) => (s, None),
            None => {
                return Err(GenesysError::Config(
                    "no credentials: call .client_credentials(id, secret) or .token_source(..)"
                        .into(),
                ));
            }
        };
        let source = match &self.wrap_token_source {
            Some(wrap) => wrap(source),
            None => source,
        };

        let metrics = self.metrics.clone();
        let policy = self
            .retry_policy
            .clone()
            .unwrap_or_else(|| GenesysClient::retry_policy_builder().build());
        // The bearer token goes to the API host only (never to a host a caller names by mistake).
        let api_base: Uri = endpoints
            .api_base_url()
            .parse()
            .map_err(|e| GenesysError::Config(format!("invalid API base URL: {e}")))?;
        let mut auth = AuthLayer::new(source)
            .metrics(metrics.clone())
            .only_to(api_base);
        if let Some(margin) = self.refresh_margin {
            auth = auth.refresh_margin(margin);
        }
        let a_minute = AuthLayer::<DynTokenSource>::DEFAULT_FETCH_TIMEOUT;
        auth = match (self.token_fetch_timeout, &credentials) {
            (Some(FetchTimeout::After(timeout)), _) => auth.fetch_timeout(timeout),
            (Some(FetchTimeout::Never), _) => auth.no_fetch_timeout(),
            // Client credentials take at most their retry loop's attempts (each within the
            // attempt timeout, or a minute without one) and waits; a minute more for what a
            // wrapper (a fleet's shared token) waits for.
            (None, Some(_)) => auth.fetch_timeout(
                token_fetch_bound(self.token_retry, self.attempt_timeout.unwrap_or(a_minute))
                    .saturating_add(a_minute),
            ),
            (None, None) => auth,
        };
        let concurrency = match self.concurrency_layer.clone() {
            Some(layer) => layer,
            None => {
                let mut layer = ConcurrencyLayer::new(self.max_in_flight);
                if let Some((n, window)) = self.pacing {
                    layer = layer
                        .try_pacing(n, window)
                        .map_err(|e| GenesysError::Config(format!("pacing: {e}")))?;
                }
                if let Some((n, window)) = self.max_rate {
                    if n == 0 || window.is_zero() {
                        return Err(GenesysError::Config(format!(
                            "max_rate: a rate needs at least 1 request in a window longer than 0, \
                             got {n} per {window:?}"
                        )));
                    }
                    layer = layer.max_rate(n, window);
                }
                if self.reject_when_full {
                    layer = layer.reject_when_full();
                }
                if let Some(pacer) = self.shared_pacing.clone() {
                    layer = layer.shared_pacing(pacer);
                }
                layer
            }
        }
        .metrics(metrics.clone());

        // Outermost first; the per-attempt timeout sits over reading the body (so that it covers
        // the whole attempt) and over the concurrency limit (so that a wait for a permit or for
        // pacing counts against the attempt's time too).
        let read_body = ReadBodyLayer::new()
            .max_success_body(self.max_response_body)
            .max_error_body(self.max_error_body)
            .idle_timeout(self.body_idle_timeout);
        let retry = RetryLayer::new(policy).metrics(metrics.clone());
        let retry = match &self.retry_switch {
            Some(switch) => retry.switch(switch.clone()),
            None => retry,
        };
        // The idempotency, retry and auth layers and the timeout as one service (the same
        // rules and state as the layers composed in that order, at the cost of one layer on a
        // call that goes the common way).
        let mut roles = StackLayer::new(retry, auth);
        if let Some(timeout) = self.attempt_timeout {
            roles = roles.attempt_timeout(timeout);
        }
        if self.idempotency {
            let mut layer = self.idempotency_layer.clone().unwrap_or_default();
            if let Some(store) = self.idempotency_store.clone() {
                layer = layer.store(store);
            }
            if let Some((url, password_env, retention)) = &self.idempotency_redis {
                layer = layer.store(open_redis_store(url, password_env.as_deref(), *retention)?);
            }
            roles = roles.idempotency(layer.metrics(metrics.clone()));
        }
        let stack: HttpService = BoxCloneSyncService::new(
            ServiceBuilder::new()
                .map_err(Into::<BoxError>::into)
                .layer(roles)
                .layer(read_body)
                .layer(concurrency)
                .service(leaf),
        );

        let user_agent = self.user_agent.clone().unwrap_or_else(|| {
            HeaderValue::from_static(concat!("genesys-client/", env!("CARGO_PKG_VERSION")))
        });
        Ok(GenesysClient {
            inner: Arc::new(ClientInner {
                stack,
                endpoints,
                metrics,
                credentials,
                user_agent,
            }),
        })
    }
}

/// The Redis idempotency store a configuration names, its password read from `password_env`.
#[cfg(feature = "redis")]
fn open_redis_store(
    url: &str,
    password_env: Option<&str>,
    retention: Duration,
) -> Result<genesys_tower::idempotency::RedisStore, GenesysError> {
    let url = match password_env {
        None => url.to_owned(),
        Some(name) => {
            let password = std::env::var(name).map_err(|_| {
                GenesysError::Config(format!(
                    "idempotency.store_password_env names {name}, which is not set: set it to \
                     the Redis password"
                ))
            })?;
            let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
            let password = percent_encoding::utf8_percent_encode(
                &password,
                percent_encoding::NON_ALPHANUMERIC,
            );
            format!("{scheme}://:{password}@{rest}")
        }
    };
    // The message names the store by the configuration's URL, which has no password. After a
    // loss of the store's data, keys stay quarantined as long as their answers were kept.
    genesys_tower::idempotency::RedisStore::open(&url)
        .map(|store| {
            store
                .loss_quarantine(retention.max(genesys_tower::idempotency::DEFAULT_LOSS_QUARANTINE))
        })
        .map_err(|e| {
            GenesysError::Config(format!(
                "idempotency.store: the Redis store cannot be opened: {e}"
            ))
        })
}

/// Without the `redis` feature, a configuration's Redis store is refused when the client is
/// built.
#[cfg(not(feature = "redis"))]
fn open_redis_store(
    url: &str,
    _password_env: Option<&str>,
    _retention: Duration,
) -> Result<genesys_tower::idempotency::MemoryStore, GenesysError> {
    Err(GenesysError::Config(format!(
        "idempotency.store is {url}, but this build has no Redis support: enable \
         genesys-client's `redis` feature"
    )))
}

impl fmt::Debug for GenesysClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let auth = match &self.auth {
            Some(Auth::Credentials { id, .. }) => format!("client_credentials({id}, [redacted])"),
            Some(Auth::Source(_)) => "token_source".to_owned(),
            None => "none".to_owned(),
        };
        f.debug_struct("GenesysClientBuilder")
            .field("region", &self.region)
            .field("base_url", &self.base_url)
            .field("login_url", &self.login_url)
            .field("auth", &auth)
            .field("retry_policy", &self.retry_policy)
            .field("retry_switch", &self.retry_switch)
            .field("refresh_margin", &self.refresh_margin)
            .field("token_fetch_timeout", &self.token_fetch_timeout)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("max_response_body", &self.max_response_body)
            .field("max_error_body", &self.max_error_body)
            .field("body_idle_timeout", &self.body_idle_timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("pacing", &self.pacing)
            .field("max_rate", &self.max_rate)
            .field("reject_when_full", &self.reject_when_full)
            .field("idempotency", &self.idempotency)
            .field("proxy", &self.proxy)
            .field("root_certificates", &self.root_certificates.len())
            .field("custom_leaf", &self.leaf.is_some())
            .finish_non_exhaustive()
    }
}

/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(20);

/// How often an HTTP/2 connection is pinged, and how long an answer may take before the
/// connection is given up.
const H2_PING_EVERY: Duration = Duration::from_secs(15);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// The default leaf: hyper-util's pooled client over rustls (ring, the roots of `tls`), http and
/// https, HTTP/1.1 and HTTP/2, through a proxy's tunnel when `proxy` routes a host through one.
fn hyper_leaf(
    connect_timeout: Duration,
    proxy: Option<Route>,
    tls: rustls::ClientConfig,
) -> Result<HttpService, GenesysError> {
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::{TokioExecutor, TokioTimer};

    let mut tcp = HttpConnector::new();
    // https URLs go through the TLS connector around it.
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(connect_timeout));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(ProxyConnector::new(tcp, proxy, connect_timeout));
    let client: Client<_, Body> = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        // Below the idle timeout of the servers and gateways in front of the API (often 30 to
        // 60 s): a connection they close while it idles is never picked for a request in the
        // instant the close is under way, which would fail it with its outcome unknown.
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        // One HTTP/2 connection carries every request to a host. Silently dead (a firewall or
        // NAT that dropped the flow, a laptop that changed networks), it would take each
        // attempt and its retries until the kernel gave up on it, a quarter of an hour later;
        // an HTTP/1 connection is dropped with its timed-out request. Pings find it dead in
        // seconds, and the next attempt opens another.
        .timer(TokioTimer::new())
        .http2_keep_alive_interval(H2_PING_EVERY)
        .http2_keep_alive_timeout(H2_PING_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .build(https);
    Ok(BoxCloneSyncService::new(
        client
            .map_response(|r: Response<hyper::body::Incoming>| r.map(Body::new))
            .map_err(BoxError::from),
    ))
}

impl GenesysClient {
    /// A builder with the default stack.
    pub fn builder() -> GenesysClientBuilder {
        GenesysClientBuilder::default()
    }

    /// The default retry policy, as a builder to change: [`RetryPolicy::builder`]'s defaults (4
    /// attempts, 500 ms base doubling to 30 s, full jitter, `Retry-After` up to 180 s, a retry
    /// budget) with the [`GenesysClassifier`](crate::GenesysClassifier) and a total deadline of
    /// [`DEFAULT_DEADLINE`].
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = genesys_client::GenesysClient::retry_policy_builder()
    ///     .max_attempts(6)
    ///     .deadline(Duration::from_secs(60))
    ///     .build();
    /// assert_eq!(policy.max_attempts(), 6);
    /// ```
    pub fn retry_policy_builder() -> genesys_tower::retry::RetryPolicyBuilder {
        RetryPolicy::builder()
            .classifier(crate::GenesysClassifier::new())
            .deadline(DEFAULT_DEADLINE)
    }
}

/// The auth layer's limit on the token source, when set.
#[derive(Debug, Clone, Copy)]
enum FetchTimeout {
    After(Duration),
    Never,
}

/// The longest a client-credentials fetch with `retry` takes, each token request within
/// `attempt`: every attempt, and the longest wait between two.
fn token_fetch_bound(retry: TokenRetry, attempt: Duration) -> Duration {
    let attempts = retry.max_attempts.max(1);
    let wait = retry.max_delay.max(retry.max_retry_after);
    attempt
        .saturating_mul(attempts)
        .saturating_add(wait.saturating_mul(attempts - 1))
}

#[cfg(test)]
mod tests;
