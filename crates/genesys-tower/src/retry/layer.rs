use tower_layer::Layer;

use super::{PolicySwitch, Retry, RetryPolicy};
use crate::Metrics;

/// Wraps a service in [`Retry`] with a [`RetryPolicy`].
///
/// Every service this layer makes shares the policy's retry budget and the layer's [`Metrics`].
///
/// ```
/// use genesys_tower::Metrics;
/// use genesys_tower::retry::{RetryLayer, RetryPolicy};
///
/// let metrics = Metrics::new();
/// let layer = RetryLayer::new(RetryPolicy::default()).metrics(metrics.clone());
/// assert_eq!(layer.metrics_handle().snapshot().requests, 0);
/// ```
#[derive(Debug, Clone, Default)]
pub struct RetryLayer {
    policy: RetryPolicy,
    metrics: Metrics,
    switch: Option<PolicySwitch>,
}

impl RetryLayer {
    /// A layer that retries by `policy`, counting into a [`Metrics`] of its own (see
    /// [`metrics`](Self::metrics) to share one).
    #[must_use]
    pub fn new(policy: RetryPolicy) -> Self {
        RetryLayer {
            policy,
            metrics: Metrics::new(),
            switch: None,
        }
    }

    /// Takes each call's policy from `switch` (changed live, a canary on a share of the
    /// calls) instead of the layer's own.
    #[must_use]
    pub fn switch(mut self, switch: PolicySwitch) -> Self {
        self.switch = Some(switch);
        self
    }

    /// Counts requests, attempts, retries by reason, 429s and budget refusals into `metrics`.
    #[must_use]
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The counters this layer's services feed.
    #[must_use]
    pub fn metrics_handle(&self) -> &Metrics {
        &self.metrics
    }

    /// The policy.
    #[must_use]
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

impl<S: Clone> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, service: S) -> Retry<S> {
        let retry = Retry::new(service, self.policy.clone()).metrics(self.metrics.clone());
        match &self.switch {
            Some(switch) => retry.switch(switch.clone()),
            None => retry,
        }
    }
}
