use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::Uri;
use tower_layer::Layer;

use super::cache::Cache;
use super::scope::Scope;
use super::{Auth, Shared, TokenSource};
use crate::Metrics;
use crate::body::DEFAULT_REPLAY_LIMIT;
use crate::per_thread::PerThread;

/// Adds a bearer token to every request and refreshes it once on 401. See the
/// [module docs](super) for the rules.
///
/// Every service this layer makes, and every clone of those, shares one token cache, and so do
/// clones of the layer and layers derived from it with its setters: build one layer per
/// credential.
///
/// ```
/// use std::time::Duration;
/// use genesys_tower::auth::{AuthLayer, Token, token_source_fn};
///
/// let layer = AuthLayer::new(token_source_fn(|| async {
///     Ok(Token::new("t0k3n", Some(Duration::from_secs(86_400))))
/// }))
/// .refresh_margin(Duration::from_secs(120))
/// .only_to("https://api.mypurecloud.ie".parse().unwrap());
/// assert!(!format!("{layer:?}").contains("t0k3n"));
/// ```
pub struct AuthLayer<T> {
    pub(super) source: Arc<T>,
    pub(super) cache: Arc<Cache>,
    pub(super) margin: Duration,
    pub(super) metrics: Metrics,
    pub(super) scopes: Arc<[Scope]>,
    pub(super) replay_limit: usize,
    pub(super) fetch_timeout: Option<Duration>,
}

impl<T: TokenSource> AuthLayer<T> {
    /// The default [`refresh_margin`](Self::refresh_margin): 60 s.
    pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(60);

    /// The default [`fetch_timeout`](Self::fetch_timeout): 60 s.
    pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(60);

    /// Takes tokens from `source`; the token is sent to every host until
    /// [`only_to`](Self::only_to) says otherwise.
    pub fn new(source: T) -> Self {
        AuthLayer {
            source: Arc::new(source),
            cache: Arc::default(),
            margin: Self::DEFAULT_REFRESH_MARGIN,
            metrics: Metrics::new(),
            scopes: Arc::from([]),
            replay_limit: DEFAULT_REPLAY_LIMIT,
            fetch_timeout: Some(Self::DEFAULT_FETCH_TIMEOUT),
        }
    }
}

impl<T> AuthLayer<T> {
    /// Fetch a new token this long before the cached one expires (default
    /// [`DEFAULT_REFRESH_MARGIN`](Self::DEFAULT_REFRESH_MARGIN)), but never earlier than at four
    /// fifths of the token's lifetime: the margin used is at most a fifth of the lifetime.
    #[must_use]
    pub fn refresh_margin(mut self, margin: Duration) -> Self {
        self.margin = margin;
        self
    }

    /// Counts token fetches (every call of the token source, failed or not) and 401 re-sends
    /// into `metrics` (share the handle with other layers to read the whole stack at once).
    #[must_use]
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The counters this layer feeds: the handle given to [`metrics`](Self::metrics), or the
    /// layer's own.
    #[must_use]
    pub fn metrics_handle(&self) -> &Metrics {
        &self.metrics
    }

    /// Sends the token only to requests under `base` (scheme, host, port and path prefix);
    /// requests elsewhere go out unchanged, without the token. Call it again to allow more
    /// bases. See [the module docs](super#where-the-token-goes).
    #[must_use]
    pub fn only_to(mut self, base: Uri) -> Self {
        let mut scopes = self.scopes.to_vec();
        scopes.push(Scope::new(&base));
        self.scopes = scopes.into();
        self
    }

    /// A call of the token source that has not given a token after this long (default
    /// [`DEFAULT_FETCH_TIMEOUT`](AuthLayer::DEFAULT_FETCH_TIMEOUT)) fails, as a failed fetch
    /// does: every request waiting for it gets an [`Error`](super::Error) that says so, and the
    /// first request after the pause that follows a failure calls the source again. Without it,
    /// a source that never answers would hold every request that needs a token for as long as
    /// the caller waits.
    ///
    /// A source that waits or retries on its own (an OAuth client with a retry loop, a cache
    /// shared by a fleet that waits for another process's fetch) needs at least its own bound
    /// here, or [`no_fetch_timeout`](Self::no_fetch_timeout) when it has one. The timeout needs
    /// the runtime's time driver (`enable_time`, which `#[tokio::main]` and `enable_all` turn
    /// on); on a runtime without it, use `no_fetch_timeout`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use genesys_tower::auth::{AuthLayer, Token, token_source_fn};
    ///
    /// let layer = AuthLayer::new(token_source_fn(|| async { Ok(Token::new("t0k3n", None)) }))
    ///     .fetch_timeout(Duration::from_secs(10));
    /// assert!(format!("{layer:?}").contains("fetch_timeout: Some(10s)"));
    /// ```
    #[must_use]
    pub fn fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = Some(timeout);
        self
    }

    /// No time limit on the token source: for a source that bounds its own time.
    #[must_use]
    pub fn no_fetch_timeout(mut self) -> Self {
        self.fetch_timeout = None;
        self
    }

    /// Streaming request bodies up to this many bytes are read into memory before sending so
    /// that they can be re-sent after a 401 (default 1 MiB, `0` never buffers). Bodies already
    /// in memory are always replayable.
    #[must_use]
    pub fn replay_limit(mut self, limit: usize) -> Self {
        self.replay_limit = limit;
        self
    }
}

impl<S: Clone, T> Layer<S> for AuthLayer<T> {
    type Service = Auth<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth::from_shared(inner, Arc::new(PerThread::new(Shared::new(self.clone()))))
    }
}

impl<T> Clone for AuthLayer<T> {
    fn clone(&self) -> Self {
        AuthLayer {
            source: self.source.clone(),
            cache: self.cache.clone(),
            margin: self.margin,
            metrics: self.metrics.clone(),
            scopes: self.scopes.clone(),
            replay_limit: self.replay_limit,
            fetch_timeout: self.fetch_timeout,
        }
    }
}

impl<T> fmt::Debug for AuthLayer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthLayer")
            .field("source", &std::any::type_name::<T>())
            .field("token", &super::RedactedToken(&self.cache))
            .field("refresh_margin", &self.margin)
            .field("only_to", &self.scopes)
            .field("replay_limit", &self.replay_limit)
            .field("fetch_timeout", &self.fetch_timeout)
            .finish()
    }
}
