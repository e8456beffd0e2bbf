//! A job's retry policies from the policy store, live: the stable version for every call, or
//! a canary on its share of them; the store watched while the job runs (a change made by a
//! person or another job is taken at once, for the calls that start after it); the canary
//! judged against the stable version by the calls' outcomes, and rolled back (or promoted)
//! automatically, in the store and in the audit log.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use genesys_client::config::Layered;
use genesys_tower::retry::{PolicySwitch, RetryPolicy, VersionOutcomes};
use http::HeaderName;
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::versions;
use crate::cli::Common;
use crate::settings::{self, Settings};
use crate::store::Canary;

/// The header a canary's calls (and the stable version's, while a canary runs) carry their
/// policy version in.
pub(crate) const VERSION_HEADER: &str = "x-policy-version";

/// Calls each version must have made before the canary is judged.
const MIN_CALLS: u64 = 20;

/// How often the store is read again and the canary judged.
const EVERY: Duration = Duration::from_secs(1);

/// The policies of a job, and the switch its client takes them from.
#[derive(Debug, Clone)]
pub(crate) struct Policies {
    pub(crate) switch: PolicySwitch,
    stable: Option<String>,
    canary: Option<Canary>,
}

/// The policy a layered configuration describes, named `version`.
fn policy(layered: &Layered, version: &str) -> RetryPolicy {
    let mut config = layered.config().clone();
    config.retry.version = version.to_owned();
    config.retry_policy()
}

fn plan(settings: &Settings) -> (RetryPolicy, Option<(RetryPolicy, f64)>) {
    let stable_name = settings.stable.as_deref().unwrap_or("default");
    let stable = policy(&settings.layered, stable_name);
    let canary = settings
        .canary
        .as_ref()
        .map(|(c, layered)| (policy(layered, &c.version), c.share));
    (stable, canary)
}

impl Policies {
    /// The job's policies from the store, or `None` when the store holds nothing (the job then
    /// runs the configuration's own policy, as it always did).
    pub(crate) fn from_settings(settings: &Settings) -> Option<Self> {
        if settings.stable.is_none() && settings.canary.is_none() {
            return None;
        }
        let (stable, canary) = plan(settings);
        let switch =
            PolicySwitch::new(stable.clone()).tag_requests(HeaderName::from_static(VERSION_HEADER));
        switch.set(stable, canary);
        Some(Policies {
            switch,
            stable: settings.stable.clone(),
            canary: settings.canary.as_ref().map(|(c, _)| c.clone()),
        })
    }
}

/// What the report says about the job's policies.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct PolicyReport {
    /// The stable version when the job ended.
    pub(crate) stable: Option<String>,
    /// The canary when the job ended, if one still ran.
    pub(crate) canary: Option<String>,
    /// Per version: calls, successes, mean time.
    pub(crate) outcomes: BTreeMap<String, Outcome>,
    /// What the job decided about a canary: `rolled back: ...` or `promoted: ...`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) decisions: Vec<String>,
}

/// How one version's calls ended.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Outcome {
    pub(crate) calls: u64,
    pub(crate) succeeded: u64,
    pub(crate) success_rate: f64,
    pub(crate) mean_ms: f64,
}

impl From<VersionOutcomes> for Outcome {
    fn from(o: VersionOutcomes) -> Self {
        Outcome {
            calls: o.calls,
            succeeded: o.succeeded,
            success_rate: (o.success_rate() * 10_000.0).round() / 10_000.0,
            mean_ms: (o.mean_time().as_secs_f64() * 10_000.0).round() / 10.0,
        }
    }
}

/// The watcher of a running job's policies.
pub(crate) struct Watcher {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    state: Arc<Mutex<Policies>>,
    report: Arc<Mutex<PolicyReport>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Watcher {
    /// Watches the store for `common`'s job while it runs.
    pub(crate) fn start(common: &Common, policies: Policies) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let state = Arc::new(Mutex::new(policies));
        let report = Arc::new(Mutex::new(PolicyReport::default()));
        let task = {
            let (common, state, report) = (common.clone(), state.clone(), report.clone());
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(EVERY) => {}
                        _ = stopped.changed() => break,
                    }
                    reload(&common, &state);
                    judge(&common, &state, &report);
                }
            })
        };
        Watcher {
            stop,
            task,
            state,
            report,
        }
    }

    /// Stops watching once the job is over: the canary is judged once more on every call the
    /// job made, and the report made.
    pub(crate) async fn finish(self, common: &Common) -> PolicyReport {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        judge(common, &self.state, &self.report);
        let policies = lock(&self.state).clone();
        let mut report = lock(&self.report).clone();
        report.stable = policies.stable;
        report.canary = policies.canary.map(|c| c.version);
        report.outcomes = policies
            .switch
            .outcomes()
            .into_iter()
            .map(|(version, o)| (version, Outcome::from(o)))
            .collect();
        report
    }
}

/// Takes a change of the store (made by a person, or another job) for the calls that start
/// from now on.
fn reload(common: &Common, state: &Mutex<Policies>) {
    let settings = match settings::load(common) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "the policy store could not be read again; the job keeps its policies");
            return;
        }
    };
    let mut current = lock(state);
    let canary = settings.canary.as_ref().map(|(c, _)| c.clone());
    if settings.stable == current.stable && canary == current.canary {
        return;
    }
    if settings.stable.is_none() && canary.is_none() {
        // The store was emptied: keep what runs rather than fall back mid-job.
        return;
    }
    tracing::info!(
        stable = settings.stable.as_deref().unwrap_or("default"),
        canary = canary.as_ref().map_or("none", |c| c.version.as_str()),
        "the policy store changed: new calls run the new policies"
    );
    let (stable, canary_plan) = plan(&settings);
    current.switch.set(stable, canary_plan);
    current.stable = settings.stable;
    current.canary = canary;
}

/// Judges the canary by the calls so far: rolled back when its success rate falls below its
/// ratio of the stable version's, promoted after its `promote_after` calls otherwise.
fn judge(common: &Common, state: &Mutex<Policies>, report: &Mutex<PolicyReport>) {
    let mut current = lock(state);
    let Some(canary) = current.canary.clone() else {
        return;
    };
    let outcomes = current.switch.outcomes();
    let stable_name = current.stable.clone().unwrap_or_else(|| "default".into());
    let (Some(s), Some(c)) = (outcomes.get(&stable_name), outcomes.get(&canary.version)) else {
        return;
    };
    if s.calls < MIN_CALLS || c.calls < MIN_CALLS {
        return;
    }
    let ratio = c.success_rate() / s.success_rate().max(f64::MIN_POSITIVE);
    let evidence = format!(
        "canary {} succeeded on {:.1} % of {} calls, stable {} on {:.1} % of {} (ratio {:.3}, \
         threshold {:.3}); mean time {:.0} ms against {:.0} ms",
        canary.version,
        c.success_rate() * 100.0,
        c.calls,
        stable_name,
        s.success_rate() * 100.0,
        s.calls,
        ratio,
        canary.rollback_below,
        c.mean_time().as_secs_f64() * 1000.0,
        s.mean_time().as_secs_f64() * 1000.0,
    );
    let promote = if ratio < canary.rollback_below {
        false
    } else if canary.promote_after.is_some_and(|n| c.calls >= n) {
        true
    } else {
        return;
    };
    let (stable_policy, _) = current.switch.current();
    match versions::decide_canary(common, &canary.version, promote, &evidence) {
        Ok(changed) => {
            if promote {
                let (_, canary_policy) = current.switch.current();
                if let Some((p, _)) = canary_policy {
                    current.switch.set(p, None);
                }
                current.stable = Some(canary.version.clone());
            } else {
                current.switch.set(stable_policy, None);
            }
            current.canary = None;
            let what = if promote { "promoted" } else { "rolled back" };
            let by = if changed {
                ""
            } else {
                " (by another run first)"
            };
            tracing::warn!(canary = %canary.version, "canary {what}{by}: {evidence}");
            lock(report)
                .decisions
                .push(format!("{what}{by}: {evidence}"));
        }
        Err(e) => {
            tracing::warn!(error = %e, "the canary's verdict could not be written to the store");
        }
    }
}
