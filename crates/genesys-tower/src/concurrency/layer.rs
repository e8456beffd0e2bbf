use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower_layer::Layer;

use super::Concurrency;
use super::Shared;
use super::limit::Limit;
use super::pacing::{Pacer, Rate};
use super::shared::SharedPacer;
use crate::Metrics;
use crate::per_thread::PerThread;

/// Applies a shared in-flight limit and client-side pacing to a service. See the
/// [module docs](super) for the rules.
///
/// Every service this layer makes, and every clone of those, shares one limit: the limit belongs
/// to the layer, as with tower's `GlobalConcurrencyLimitLayer`. Build one layer per quota (per
/// API token, say). Clones of the layer share it too, and so do layers derived with
/// [`metrics`](Self::metrics) or [`reject_when_full`](Self::reject_when_full) (a rejecting view
/// of the same limit); [`pacing`](Self::pacing), [`max_rate`](Self::max_rate),
/// [`learn_from_responses`](Self::learn_from_responses),
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
    limit: Arc<Limit>,
    pacer: Arc<Pacer>,
    fleet: Option<Arc<dyn SharedPacer>>,
}

#[derive(Debug, Clone)]
struct Config {
    max_in_flight: usize,
    reject: bool,
    pacing: Option<Rate>,
    ceiling: Option<Rate>,
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
    /// A `max_in_flight` of 0 is taken as 1, and one above the limit's maximum
    /// (`usize::MAX >> 3`) as that maximum, with a warning: this never panics.
    pub fn new(max_in_flight: usize) -> Self {
        let wanted = max_in_flight;
        let max_in_flight = wanted.clamp(1, Limit::MAX_PERMITS);
        if max_in_flight != wanted {
            tracing::warn!(
                requested = wanted,
                used = max_in_flight,
                "ConcurrencyLayer::new: max_in_flight must be between 1 and {}; using {max_in_flight}",
                Limit::MAX_PERMITS
            );
        }
        let config = Config {
            max_in_flight,
            reject: false,
            pacing: None,
            ceiling: None,
            learn: true,
            reserve: Self::DEFAULT_RESERVE,
            max_hold: Self::DEFAULT_MAX_HOLD,
            metrics: Metrics::new(),
        };
        ConcurrencyLayer {
            limit: Arc::new(Limit::new(max_in_flight)),
            pacer: Arc::new(Self::new_pacer(&config)),
            fleet: None,
            config,
        }
    }

    fn new_pacer(config: &Config) -> Pacer {
        Pacer::with_ceiling(
            config.pacing,
            config.ceiling,
            config.learn,
            config.reserve,
            config.max_hold,
        )
    }

    /// Changes a setting that the pacer reads: the pacer starts afresh.
    fn with_pacer(mut self, change: impl FnOnce(&mut Config)) -> Self {
        change(&mut self.config);
        self.pacer = Arc::new(Self::new_pacer(&self.config));
        self
    }

    /// Refuses a call at once with [`Error::Overloaded`](super::Error::Overloaded) when every
    /// permit is in use, instead of waiting for one.
    #[must_use]
    pub fn reject_when_full(mut self) -> Self {
        self.config.reject = true;
        self
    }

    /// At most `requests` calls start in any period of `window` (a sliding window; see the
    /// [module docs](super#pacing)). Genesys Cloud allows 300 per 60 s per token.
    ///
    /// With learning from responses on (the default) this is where pacing starts: the server's
    /// own quota and answers then move it (see the
    /// [module docs](super#adaptive-pacing-the-servers-quota-is-a-hint-not-a-ceiling)). Switch
    /// learning off to make it a fixed ceiling.
    ///
    /// A rate of less than one request per window (`requests` of 0, or a zero `window`) cannot
    /// be paced: it is ignored with a warning and the layer keeps its pacing as it was. Use
    /// [`try_pacing`](Self::try_pacing) to get the refusal as an error instead.
    #[must_use]
    pub fn pacing(self, requests: u64, window: Duration) -> Self {
        match PacingRate::new(requests, window) {
            Ok(rate) => self.with_pacer(|c| c.pacing = Some(rate.0)),
            Err(e) => {
                tracing::warn!(
                    requests,
                    window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
                    "{e}; pacing left as it was"
                );
                self
            }
        }
    }

    /// Same as [`pacing`](Self::pacing), but a rate below one request per window is refused with
    /// an error that says why.
    ///
    /// ```
    /// use std::time::Duration;
    /// use genesys_tower::concurrency::ConcurrencyLayer;
    ///
    /// assert!(ConcurrencyLayer::new(4).try_pacing(0, Duration::from_secs(60)).is_err());
    /// assert!(ConcurrencyLayer::new(4).try_pacing(300, Duration::from_secs(60)).is_ok());
    /// ```
    pub fn try_pacing(self, requests: u64, window: Duration) -> Result<Self, InvalidRate> {
        let rate = PacingRate::new(requests, window)?;
        Ok(self.with_pacer(|c| c.pacing = Some(rate.0)))
    }

    /// A rate the pacer never exceeds, whatever the server says (by default none: what the
    /// server allows is the limit). Use it for a limit of your own, such as a share of a quota
    /// that other clients use too; [`pacing`](Self::pacing) is only where pacing starts. Without
    /// [`pacing`](Self::pacing), pacing starts at the ceiling. A rate below one request per
    /// window is ignored with a warning.
    ///
    /// ```
    /// use std::time::Duration;
    /// use genesys_tower::concurrency::ConcurrencyLayer;
    ///
    /// // Never more than 100 per minute, even when the server allows 300.
    /// let layer = ConcurrencyLayer::new(8).max_rate(100, Duration::from_secs(60));
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn max_rate(self, requests: u64, window: Duration) -> Self {
        match PacingRate::new(requests, window) {
            Ok(rate) => self.with_pacer(|c| c.ceiling = Some(rate.0)),
            Err(e) => {
                tracing::warn!(
                    requests,
                    window_ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
                    "{e}; no ceiling set"
                );
                self
            }
        }
    }

    /// Whether to learn from rate-limit headers and 429 responses (on by default).
    #[must_use]
    pub fn learn_from_responses(self, learn: bool) -> Self {
        self.with_pacer(|c| c.learn = learn)
    }

    /// New requests are held until the window resets when the server says at most this many
    /// requests remain in it (default [`DEFAULT_RESERVE`](Self::DEFAULT_RESERVE)).
    #[must_use]
    pub fn rate_limit_reserve(self, remaining: u64) -> Self {
        self.with_pacer(|c| c.reserve = remaining)
    }

    /// The longest the layer holds new requests on the server's word (default
    /// [`DEFAULT_MAX_HOLD`](Self::DEFAULT_MAX_HOLD)). A longer reset or `Retry-After` (a daily
    /// quota) sets no hold at all: rather than stall every call for it, requests go on to the
    /// server, and the retry layer ends each at once with an error that carries the hint.
    #[must_use]
    pub fn max_hold(self, max: Duration) -> Self {
        self.with_pacer(|c| c.max_hold = max)
    }

    /// Paces starts with other processes too: after this process's own pacing, each request
    /// takes its start from `pacer`, a quota shared by a fleet (`RedisPacer`, feature `redis`),
    /// which also sees every response to share what it says about the quota.
    #[must_use]
    pub fn shared_pacing(mut self, pacer: impl SharedPacer) -> Self {
        self.fleet = Some(Arc::new(pacer));
        self
    }

    /// Counts pacing waits and rejections into `metrics` (share the handle with other layers to
    /// read the whole stack at once).
    #[must_use]
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.config.metrics = metrics;
        self
    }

    /// The counters this layer feeds: the handle given to [`metrics`](Self::metrics), or the
    /// layer's own.
    #[must_use]
    pub fn metrics_handle(&self) -> &Metrics {
        &self.config.metrics
    }
}

/// A checked pacing rate.
struct PacingRate(Rate);

impl PacingRate {
    fn new(requests: u64, window: Duration) -> Result<Self, InvalidRate> {
        if requests == 0 || window.is_zero() {
            return Err(InvalidRate { requests, window });
        }
        Ok(PacingRate(Rate { requests, window }))
    }
}

/// A pacing rate below one request per window, refused by
/// [`ConcurrencyLayer::try_pacing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidRate {
    requests: u64,
    window: Duration,
}

impl fmt::Display for InvalidRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a pacing rate needs at least 1 request in a window longer than 0, got {} per {:?}",
            self.requests, self.window
        )
    }
}

impl std::error::Error for InvalidRate {}

impl<S> Layer<S> for ConcurrencyLayer {
    type Service = Concurrency<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let shared = Shared {
            limit: self.limit.clone(),
            max_in_flight: self.config.max_in_flight,
            reject: self.config.reject,
            pacer: self.pacer.clone(),
            fleet: self.fleet.clone(),
            metrics: self.config.metrics.clone(),
        };
        Concurrency::from_shared(inner, Arc::new(PerThread::new(shared)))
    }
}

impl fmt::Debug for ConcurrencyLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLayer")
            .field("max_in_flight", &self.config.max_in_flight)
            .field("reject_when_full", &self.config.reject)
            .field("pacing", &self.config.pacing)
            .field("max_rate", &self.config.ceiling)
            .field("learn_from_responses", &self.config.learn)
            .field("rate_limit_reserve", &self.config.reserve)
            .field("max_hold", &self.config.max_hold)
            .field("shared_pacing", &self.fleet)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_numbers_never_panic() {
        let layer = ConcurrencyLayer::new(0);
        assert_eq!(layer.config.max_in_flight, 1);
        let layer = ConcurrencyLayer::new(usize::MAX);
        assert_eq!(layer.config.max_in_flight, Limit::MAX_PERMITS);
        // Less than one request per window: ignored (pacing), refused with a message (try_pacing).
        let layer = ConcurrencyLayer::new(2).pacing(0, Duration::from_secs(60));
        assert_eq!(layer.config.pacing, None);
        let layer = layer.pacing(5, Duration::ZERO);
        assert_eq!(layer.config.pacing, None);
        let err = ConcurrencyLayer::new(2)
            .try_pacing(0, Duration::from_secs(60))
            .unwrap_err();
        assert!(err.to_string().contains("at least 1 request"), "{err}");
        let layer = ConcurrencyLayer::new(2).pacing(u64::MAX, Duration::MAX);
        assert!(layer.config.pacing.is_some());
    }
}
