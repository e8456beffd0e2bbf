//! A retry policy changed live, and a canary: [`PolicySwitch`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use http::HeaderName;

use super::RetryPolicy;

/// Which [`RetryPolicy`] each call runs, changed while the service runs: a stable policy and,
/// optionally, a canary that runs an exact share of the calls. A call keeps the policy it
/// started with, whatever changes while it is in flight. The switch counts, per policy
/// [version](RetryPolicy::version), the calls that ended and how: what a canary is judged by.
///
/// ```
/// use genesys_tower::retry::{PolicySwitch, RetryLayer, RetryPolicy};
///
/// let stable = RetryPolicy::builder().version("v1").build();
/// let switch = PolicySwitch::new(stable.clone(), None);
/// let layer = RetryLayer::new(stable.clone()).switch(switch.clone());
/// // Later, without a restart: a tenth of the calls try v2.
/// let canary = RetryPolicy::builder().version("v2").max_attempts(6).build();
/// switch.set(stable, Some((canary, 0.1)));
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct PolicySwitch {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    plan: RwLock<Arc<Plan>>,
    calls: AtomicU64,
    outcomes: Mutex<HashMap<String, VersionOutcomes>>,
    tag: Option<HeaderName>,
}

#[derive(Debug)]
struct Plan {
    stable: RetryPolicy,
    canary: Option<(RetryPolicy, f64)>,
}

/// How the calls of one policy version ended.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct VersionOutcomes {
    /// Calls that ended.
    pub calls: u64,
    /// Of those, calls that ended with a response other than a 5xx or a 429.
    pub succeeded: u64,
    /// The calls' total time, attempts and waits included.
    pub total_time: Duration,
}

impl VersionOutcomes {
    /// The share of calls that succeeded (1 with no call).
    #[must_use]
    pub fn success_rate(&self) -> f64 {
        if self.calls == 0 {
            1.0
        } else {
            self.succeeded as f64 / self.calls as f64
        }
    }

    /// The calls' mean time.
    #[must_use]
    pub fn mean_time(&self) -> Duration {
        self.total_time
            .checked_div(u32::try_from(self.calls).unwrap_or(u32::MAX))
            .unwrap_or_default()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PolicySwitch {
    /// Whether `other` is the same switch (one plan, one count of calls and outcomes).
    #[cfg(test)]
    pub(super) fn is_same(&self, other: &PolicySwitch) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Every call runs `stable` until [`set`](Self::set) says otherwise. With `tag`, while a
    /// canary runs, every attempt carries the version of its call's policy in that request
    /// header (for the server's logs, or a test's fault injection); with no canary, nothing.
    #[must_use]
    pub fn new(stable: RetryPolicy, tag: Option<HeaderName>) -> Self {
        PolicySwitch {
            inner: Arc::new(Inner {
                plan: RwLock::new(Arc::new(Plan {
                    stable,
                    canary: None,
                })),
                calls: AtomicU64::new(0),
                outcomes: Mutex::new(HashMap::new()),
                tag,
            }),
        }
    }

    fn plan(&self) -> Arc<Plan> {
        self.inner
            .plan
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// From the next call on: `stable`, and `canary`'s policy on its share of the calls (0 to
    /// 1; out of range or not a number is brought within).
    pub fn set(&self, stable: RetryPolicy, canary: Option<(RetryPolicy, f64)>) {
        let canary = canary.map(|(p, share)| {
            let share = if share.is_nan() {
                0.0
            } else {
                share.clamp(0.0, 1.0)
            };
            (p, share)
        });
        *self
            .inner
            .plan
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(Plan { stable, canary });
    }

    /// The stable policy, and the canary's with its share.
    #[must_use]
    pub fn current(&self) -> (RetryPolicy, Option<(RetryPolicy, f64)>) {
        let plan = self.plan();
        (plan.stable.clone(), plan.canary.clone())
    }

    /// The policy of the next call, and the header to tag it with (while a canary runs): the
    /// canary's on exactly its share of the calls (call `n` is the canary's when
    /// `floor((n + 1) * share)` passes `floor(n * share)`).
    pub(crate) fn pick(&self) -> (RetryPolicy, Option<&HeaderName>) {
        let plan = self.plan();
        match &plan.canary {
            Some((canary, share)) => {
                let n = self.inner.calls.fetch_add(1, Ordering::Relaxed) as f64;
                let policy = if ((n + 1.0) * share).floor() > (n * share).floor() {
                    canary.clone()
                } else {
                    plan.stable.clone()
                };
                (policy, self.inner.tag.as_ref())
            }
            None => (plan.stable.clone(), None),
        }
    }

    pub(crate) fn record(&self, version: &str, succeeded: bool, took: Duration) {
        let mut outcomes = lock(&self.inner.outcomes);
        let o = outcomes.entry(version.to_owned()).or_default();
        o.calls += 1;
        o.succeeded += u64::from(succeeded);
        o.total_time = o.total_time.saturating_add(took);
    }

    /// How the calls of each policy version ended so far.
    #[must_use]
    pub fn outcomes(&self) -> HashMap<String, VersionOutcomes> {
        lock(&self.inner.outcomes).clone()
    }
}
