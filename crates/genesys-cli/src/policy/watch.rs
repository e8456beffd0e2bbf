//! A job's retry policies from the policy store, live: the stable version for every call, or
//! a canary on its share of them; the store watched while the job runs (a change made by a
//! person or another job is taken at once, for the calls that start after it); the canary
//! judged against the stable version by the calls' outcomes, and rolled back (or promoted)
//! automatically, in the store and in the audit log.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use genesys_client::config::Layered;
use genesys_tower::retry::{PolicySwitch, RetryBudget, RetryPolicy, VersionOutcomes};
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
    /// One retry budget for every version the job runs: a canary retries out of the same
    /// budget as the stable version, and a change of version does not refill it.
    budget: Option<Arc<RetryBudget>>,
    /// The outcomes when the running canary started in this job: it is judged on what came
    /// after, the stable version alike.
    baseline: HashMap<String, VersionOutcomes>,
    /// Canaries this job rolled back without the store knowing (it could not be written).
    refused: Vec<String>,
}

/// The policy a layered configuration describes, named `version`, retrying out of `budget`.
fn policy(layered: &Layered, version: &str, budget: Option<&Arc<RetryBudget>>) -> RetryPolicy {
    let mut config = layered.config().clone();
    config.retry.version = version.to_owned();
    let builder = config.retry_policy_builder();
    match budget {
        Some(b) => builder.shared_budget(b.clone()),
        None => builder,
    }
    .build()
}

fn plan(
    settings: &Settings,
    budget: Option<&Arc<RetryBudget>>,
) -> (RetryPolicy, Option<(RetryPolicy, f64)>) {
    let stable_name = settings.stable.as_deref().unwrap_or("default");
    let stable = policy(&settings.layered, stable_name, budget);
    let canary = settings
        .canary
        .as_ref()
        .map(|(c, layered)| (policy(layered, &c.version, budget), c.share));
    (stable, canary)
}

impl Policies {
    /// The job's policies from the store, or `None` when the store holds nothing (the job then
    /// runs the configuration's own policy, as it always did).
    pub(crate) fn from_settings(settings: &Settings) -> Option<Self> {
        if settings.stable.is_none() && settings.canary.is_none() {
            return None;
        }
        let budget = settings.layered.config().retry_budget().map(Arc::new);
        let (stable, canary) = plan(settings, budget.as_ref());
        let switch = PolicySwitch::new(
            stable.clone(),
            Some(HeaderName::from_static(VERSION_HEADER)),
        );
        switch.set(stable, canary);
        Some(Policies {
            switch,
            stable: settings.stable.clone(),
            canary: settings.canary.as_ref().map(|(c, _)| c.clone()),
            budget,
            baseline: HashMap::new(),
            refused: Vec::new(),
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
                let last_error = Arc::new(Mutex::new(None));
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(EVERY) => {}
                        _ = stopped.changed() => break,
                    }
                    // Files and the store's lock: off the runtime's threads.
                    let (common, state, report, last_error) = (
                        common.clone(),
                        state.clone(),
                        report.clone(),
                        last_error.clone(),
                    );
                    let _ = tokio::task::spawn_blocking(move || {
                        reload(&common, &state, &mut lock(&last_error));
                        judge(&common, &state, &report);
                    })
                    .await;
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
        let (c, state, report) = (common.clone(), self.state.clone(), self.report.clone());
        let _ = tokio::task::spawn_blocking(move || judge(&c, &state, &report)).await;
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
/// from now on. Only the store's state is read each time; the settings are read again when it
/// changed. Only the retry policy changes live: the other settings a version sets (limits,
/// timeouts) apply from the next job on.
fn reload(common: &Common, state: &Mutex<Policies>, last_error: &mut Option<String>) {
    let Some(store) = crate::store::store_dir(common, |n| std::env::var(n).ok())
        .and_then(|dir| crate::store::Store::existing(&dir))
    else {
        return;
    };
    let Ok(now) = store.state() else {
        return;
    };
    {
        let current = lock(state);
        let canary = now
            .canary
            .as_ref()
            .filter(|c| !current.refused.contains(&c.version));
        if now.stable == current.stable && canary == current.canary.as_ref() {
            return;
        }
        if now.stable.is_none() && now.canary.is_none() {
            // The store was emptied: keep what runs rather than fall back mid-job.
            return;
        }
    }
    let settings = match settings::load(common) {
        Ok(s) => s,
        Err(e) => {
            // Said once per problem, not every second.
            let text = e.to_string();
            if last_error.as_deref() != Some(text.as_str()) {
                tracing::warn!(error = %text, "the policy store changed but could not be read; the job keeps its policies");
                *last_error = Some(text);
            }
            return;
        }
    };
    *last_error = None;
    let mut current = lock(state);
    let canary = settings
        .canary
        .as_ref()
        .map(|(c, _)| c.clone())
        .filter(|c| !current.refused.contains(&c.version));
    tracing::info!(
        stable = settings.stable.as_deref().unwrap_or("default"),
        canary = canary.as_ref().map_or("none", |c| c.version.as_str()),
        "the policy store changed: new calls run the new policies"
    );
    let (stable, canary_plan) = plan(&settings, current.budget.as_ref());
    let canary_plan = canary_plan.filter(|_| canary.is_some());
    if canary.is_some() && canary != current.canary {
        current.baseline = current.switch.outcomes();
    }
    current.switch.set(stable, canary_plan);
    current.stable = settings.stable;
    current.canary = canary;
}

/// Failed canary calls needed before a rollback: a few unlucky calls are not a verdict.
const MIN_FAILURES: u64 = 5;

fn since(now: Option<&VersionOutcomes>, before: Option<&VersionOutcomes>) -> VersionOutcomes {
    let (Some(now), before) = (now, before) else {
        return VersionOutcomes::default();
    };
    let mut o = *now;
    if let Some(b) = before {
        o.calls = o.calls.saturating_sub(b.calls);
        o.succeeded = o.succeeded.saturating_sub(b.succeeded);
        o.total_time = o.total_time.saturating_sub(b.total_time);
    }
    o
}

/// Judges the canary by the calls since it started in this job: rolled back when its success
/// rate falls below its ratio of the stable version's (with at least [`MIN_CALLS`] calls and
/// [`MIN_FAILURES`] failures), promoted after its `promote_after` calls otherwise. With too
/// few stable calls to compare with (a canary on nearly every call), the canary is held to
/// its ratio on its own.
fn judge(common: &Common, state: &Mutex<Policies>, report: &Mutex<PolicyReport>) {
    let mut current = lock(state);
    let Some(canary) = current.canary.clone() else {
        return;
    };
    let outcomes = current.switch.outcomes();
    let stable_name = current.stable.clone().unwrap_or_else(|| "default".into());
    let s = since(
        outcomes.get(&stable_name),
        current.baseline.get(&stable_name),
    );
    let c = since(
        outcomes.get(&canary.version),
        current.baseline.get(&canary.version),
    );
    if c.calls < MIN_CALLS {
        return;
    }
    let stable_rate = if s.calls >= MIN_CALLS {
        s.success_rate()
    } else {
        1.0
    };
    let ratio = c.success_rate() / stable_rate.max(f64::MIN_POSITIVE);
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
    let failures = c.calls - c.succeeded;
    let added_ms = (c.mean_time().as_secs_f64() - s.mean_time().as_secs_f64()) * 1000.0;
    let too_slow = canary
        .max_added_latency_ms
        .is_some_and(|max| s.calls >= MIN_CALLS && added_ms > max as f64);
    let worse = (ratio < canary.rollback_below && failures >= MIN_FAILURES) || too_slow;
    let promote = if worse {
        false
    } else if canary.promote_after.is_some_and(|n| c.calls >= n) {
        true
    } else {
        return;
    };
    let evidence = match canary.max_added_latency_ms {
        Some(max) => format!("{evidence}; {added_ms:.0} ms added against at most {max} ms"),
        None => evidence,
    };
    let what = if promote { "promoted" } else { "rolled back" };
    let (stable_policy, canary_policy) = current.switch.current();
    let verdict = match versions::decide_canary(common, &canary.version, promote, &evidence) {
        Ok(true) => format!("{what}: {evidence}"),
        // Another run (or a person) decided first. The canary stops here now: its verdict is
        // the store's, which the next reload takes (a promotion, there, runs it again as the
        // stable version; a rollback leaves the store as this job now runs, so that reload
        // finds nothing to change).
        Ok(false) => {
            current.switch.set(stable_policy, None);
            current.canary = None;
            lock(report).decisions.push(format!(
                "the store's canary {} was decided by another run first; this job's evidence: {evidence}",
                canary.version
            ));
            return;
        }
        Err(e) if !promote => {
            // Never keep running a canary judged worse, store or not.
            current.refused.push(canary.version.clone());
            format!(
                "rolled back in this job only (the store could not be written: {e}): {evidence}"
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "the canary's promotion could not be written to the store");
            return;
        }
    };
    if promote {
        if let Some((p, _)) = canary_policy {
            current.switch.set(p, None);
        }
        current.stable = Some(canary.version.clone());
    } else {
        current.switch.set(stable_policy, None);
    }
    current.canary = None;
    tracing::warn!(canary = %canary.version, "canary {verdict}");
    lock(report).decisions.push(verdict);
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use genesys_tower::retry::RetryLayer;
    use genesys_tower::{Body, BoxError};
    use http::{Request, Response, StatusCode};
    use serde_json::json;
    use tower::{Layer, ServiceExt, service_fn};

    use super::*;
    use crate::cli::Cli;
    use crate::store::{self, Store};

    /// A canary that another run (or a person) rolled back between this job's reading of the
    /// store and its verdict stops running in this job: its calls go to the stable version.
    #[tokio::test]
    async fn a_canary_decided_by_another_run_first_stops_running_here() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!("gcx-watch-{}-{nanos}", std::process::id()));
        let common = Cli::try_parse_from([
            "gcx",
            "--policy-store",
            dir.to_str().unwrap(),
            "config",
            "show",
        ])
        .unwrap()
        .common;
        let store = Store::open(&dir).unwrap();
        let stable = store
            .put_version(&json!({"retry": {"max_attempts": 3}}))
            .unwrap();
        let canary = store
            .put_version(&json!({"retry": {"max_attempts": 2}}))
            .unwrap();
        let mut writer = store.writer().unwrap();
        writer.state.stable = Some(stable.clone());
        writer.state.canary = Some(Canary {
            version: canary.clone(),
            share: 0.5,
            rollback_below: 0.9,
            since: 0,
            promote_after: None,
            max_added_latency_ms: None,
        });
        writer.commit(store::entry("test", "apply")).unwrap();
        let settings = settings::load(&common).unwrap();
        let state = Mutex::new(Policies::from_settings(&settings).unwrap());
        let report = Mutex::new(PolicyReport::default());

        // The canary's calls fail (a 500 is not retried), the stable version's succeed.
        let switch = lock(&state).switch.clone();
        let version = canary.clone();
        let api = service_fn(move |req: Request<Body>| {
            let failing = req.headers()[VERSION_HEADER] == version.as_str();
            async move {
                let mut response = Response::new(Body::empty());
                if failing {
                    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                }
                Ok::<_, BoxError>(response)
            }
        });
        let client = RetryLayer::new(RetryPolicy::default())
            .switch(switch.clone())
            .layer(api);
        for _ in 0..200 {
            let request = Request::get("http://api.test/")
                .body(Body::empty())
                .unwrap();
            client.clone().oneshot(request).await.unwrap();
        }

        // Another run rolls the canary back first.
        let mut writer = store.writer().unwrap();
        writer.state.canary = None;
        writer
            .commit(store::entry("another run", "rollback"))
            .unwrap();
        judge(&common, &state, &report);
        reload(&common, &state, &mut None);
        assert!(switch.current().1.is_none(), "the canary still runs");
        assert!(
            lock(&report).decisions[0].contains("decided by another run first"),
            "{:?}",
            lock(&report).decisions
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
