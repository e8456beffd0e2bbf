use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tower_layer::Layer;

use super::Concurrency;
use super::Shared;
use super::pacing::{Pacer, Rate};
use crate::Metrics;

/// Applies a shared in-flight limit and client-side pacing to a service. See the
/// [module docs](super) for the rules.
///
/// Every service this layer makes, and every clone of those, shares one limit: the limit belongs
/// to the layer, as with tower's `GlobalConcurrencyLimitLayer`. Build one layer per quota (per
/// API token, say). Clones of the layer share it too, and so do layers derived with
/// [`metrics`](Self::metrics) or [`reject_when_full`](Self::reject_when_full) (a rejecting view
/// of the same limit); [`pacing`](Self::pacing), [`learn_from_responses`](Self::learn_from_responses),
/// [`rate_limit_reserve`](Self::rate_limit_reserve) and [`max_hold`](Self::max_hold) keep the
/// in-flight limit but start a new pacing state.
///
/// ```
/// use std::time::Duration;
/// use genesys_tower::concurrency::ConcurrencyLayer;
///
/// // At most 10 requests in flight and 300 starts per minute, held back when the server says
/// // its window is spent.
/// let layer = ConcurrencyLayer::new(10).pacing(300, Duration::from_secs(60));
/// # let _ = layer;
/// ```
#[derive(Clone)]
pub struct ConcurrencyLayer {
    config: Config,
    semaphore: Arc<Semaphore>,
    pacer: Arc<Pacer>,
}

#[derive(Debug, Clone)]
struct Config {
    max_in_flight: usize,
    reject: bool,
    pacing: Option<Rate>,
    learn: bool,
    reserve: u64,
    max_hold: Duration,
    metrics: Metrics,
}

impl ConcurrencyLayer {
    /// The default for [`max_hold`](Self::max_hold): 180 s, the longest `Retry-After` the retry
    /// layer (and the Genesys SDKs) will wait by default.
    pub const DEFAULT_MAX_HOLD: Duration = Duration::from_secs(180);

    /// The default for [`rate_limit_reserve`](Self::rate_limit_reserve): 1.
    pub const DEFAULT_RESERVE: u64 = 1;

    /// At most `max_in_flight` calls of the inner service at once; callers beyond wait for a
    /// permit. No pacing, learning from rate-limit headers on.
    ///
    /// # Panics
    ///
    /// When `max_in_flight` is 0 or above tokio's semaphore limit (`usize::MAX >> 3`).
    pub fn new(max_in_flight: usize) -> Self {
        assert!(
            max_in_flight > 0,
            "ConcurrencyLayer::new: max_in_flight must be at least 1"
        );
        let config = Config {
            max_in_flight,
            reject: false,
            pacing: None,
            learn: true,
            reserve: Self::DEFAULT_RESERVE,
            max_hold: Self::DEFAULT_MAX_HOLD,
            metrics: Metrics::new(),
        };
        ConcurrencyLayer {
            semaphore: Arc::new(Semaphore::new(max_in_flight)),
            pacer: Arc::new(Self::new_pacer(&config)),
            config,
        }
    }

    fn new_pacer(config: &Config) -> Pacer {
        Pacer::new(config.pacing, config.learn, config.reserve, config.max_hold)
    }

    /// Changes a setting that the pacer reads: the pacer starts afresh.
    fn with_pacer(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut self.config);
        self.pacer = Arc::new(Self::new_pacer(&self.config));
        self
    }

    /// Refuses a call at once with [`Error::Overloaded`](super::Error::Overloaded) when every
    /// permit is in use, instead of waiting for one.
    pub fn reject_when_full(mut self) -> Self {
        self.config.reject = true;
        self
    }

    /// At most `requests` calls start in any period of `window` (a sliding window; see the
    /// [module docs](super#pacing)). Genesys Cloud allows 300 per 60 s per token.
    ///
    /// # Panics
    ///
    /// When `requests` is 0 or `window` is zero.
    pub fn pacing(self, requests: u64, window: Duration) -> Self {
        assert!(
            requests > 0 && !window.is_zero(),
            "ConcurrencyLayer::pacing: requests and window must be above zero"
        );
        self.with_pacer(|c| c.pacing = Some(Rate { requests, window }))
    }

    /// Whether to learn from rate-limit headers and 429 responses (on by default).
    pub fn learn_from_responses(self, learn: bool) -> Self {
        self.with_pacer(|c| c.learn = learn)
    }

    /// New requests are held until the window resets when the server says at most this many
    /// requests remain in it (default [`DEFAULT_RESERVE`](Self::DEFAULT_RESERVE)).
    pub fn rate_limit_reserve(self, remaining: u64) -> Self {
        self.with_pacer(|c| c.reserve = remaining)
    }

    /// The longest the layer holds new requests on the server's word (default
    /// [`DEFAULT_MAX_HOLD`](Self::DEFAULT_MAX_HOLD)). A longer reset or `Retry-After` (a daily
    /// quota) sets no hold at all: rather than stall every call for it, requests go on to the
    /// server, and the retry layer ends each at once with an error that carries the hint.
    pub fn max_hold(self, max: Duration) -> Self {
        self.with_pacer(|c| c.max_hold = max)
    }

    /// Counts pacing waits and rejections into `metrics` (share the handle with other layers to
    /// read the whole stack at once).
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.config.metrics = metrics;
        self
    }

    /// The counters this layer feeds: the handle given to [`metrics`](Self::metrics), or the
    /// layer's own.
    pub fn metrics_handle(&self) -> &Metrics {
        &self.config.metrics
    }
}

impl<S> Layer<S> for ConcurrencyLayer {
    type Service = Concurrency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let shared = Shared {
            semaphore: self.semaphore.clone(),
            max_in_flight: self.config.max_in_flight,
            reject: self.config.reject,
            pacer: self.pacer.clone(),
            metrics: self.config.metrics.clone(),
        };
        Concurrency::from_shared(inner, Arc::new(shared))
    }
}

impl fmt::Debug for ConcurrencyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLayer")
            .field("max_in_flight", &self.config.max_in_flight)
            .field("reject_when_full", &self.config.reject)
            .field("pacing", &self.config.pacing)
            .field("learn_from_responses", &self.config.learn)
            .field("rate_limit_reserve", &self.config.reserve)
            .field("max_hold", &self.config.max_hold)
            .finish()
    }
}
