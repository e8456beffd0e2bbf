//! `gcx demo`: the main job (a bulk user update) on an embedded simulator with faults on, then
//! the simulator ledger's verdict: every update applied, none twice.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use genesys_client::GenesysClient;
use genesys_sim::{Faults, SimConfig, Simulator};
use genesys_tower::retry::RetryPolicy;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::app;
use crate::cli::{Common, DemoArgs};
use crate::deliver;
use crate::error::CliError;
use crate::input::{Format, Input, Meta, Raw, Record};
use crate::job::{self, Options};
use crate::progress::Progress;
use crate::records::UserUpdate;
use crate::report::ReportFile;
use crate::report::Verdict;
use crate::signals;
use crate::sinks::Sinks;
use crate::telemetry::Telemetry;

/// The simulator's quota per token: tight enough that the demo draws 429s.
const QUOTA: (u32, Duration) = (400, Duration::from_secs(1));
/// The simulator's token lifetime: short, so the run shows refreshes.
const TOKEN_TTL: Duration = Duration::from_secs(4);
/// Requests in flight in the demo unless `--concurrency` says otherwise.
const DEMO_CONCURRENCY: u32 = 32;

const DEPARTMENTS: [&str; 4] = ["Care", "Loyalty", "Escalations", "Partners"];

/// The fields the demo sets on user number `i`.
fn wanted(i: usize) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("title".into(), json!(format!("Demo Specialist {}", i + 1)));
    m.insert(
        "department".into(),
        json!(DEPARTMENTS[i % DEPARTMENTS.len()]),
    );
    m
}

/// Runs the demo; returns the exit code.
pub(crate) async fn run(
    common: &Common,
    args: &DemoArgs,
    telemetry: &Telemetry,
) -> Result<u8, CliError> {
    if common.region.is_some() || common.base_url.is_some() || common.login_url.is_some() {
        return Err(CliError::usage(
            "gcx demo runs its own simulator: drop --region/--base-url/--login-url (use them with \
             `gcx users patch` for a real org)",
        ));
    }
    let faults: Faults = args
        .faults
        .parse()
        .map_err(|e| CliError::usage(format!("--faults {}: {e}", args.faults)))?;
    let users = args.users as usize;
    // Output files first: a path that cannot be written is found out before anything runs.
    let report_file = common
        .report
        .as_deref()
        .map(ReportFile::create)
        .transpose()?;
    let sim = Simulator::spawn(
        SimConfig::default()
            .users(users)
            .faults(faults)
            .seed(args.seed)
            .rate_limit(Some(QUOTA))
            .token_ttl(TOKEN_TTL),
    )
    .await
    .map_err(|e| CliError::runtime(format!("cannot start the simulator: {e}")))?;

    let concurrency = common.concurrency.unwrap_or(DEMO_CONCURRENCY) as usize;
    let mut builder = GenesysClient::builder()
        .base_url(sim.base_url())
        .client_credentials("demo-client", "demo-secret")
        .max_in_flight(concurrency)
        .idempotency_store(crate::deliver::small_store())
        // A little more patience than the default (4 attempts): with thousands of calls and
        // faults on every route, a run should not end on one unlucky user.
        .retry_policy(
            RetryPolicy::builder()
                .max_attempts(6)
                .deadline(Duration::from_secs(60))
                .build(),
        )
        .user_agent(concat!("gcx/", env!("CARGO_PKG_VERSION")));
    // Without --rate-limit the demo leaves pacing to the server's 429s, to show them handled.
    builder = match common.rate_limit {
        // The user's own pace: where pacing starts, and a ceiling it never passes.
        Some(rate) => builder
            .pacing(u64::from(rate.requests), rate.window)
            .max_rate(u64::from(rate.requests), rate.window),
        None => builder.no_pacing(),
    };
    let client = crate::departures::WatchedClient::build(builder)
        .map_err(|e| CliError::runtime(format!("cannot set up the client: {e}")))?;

    if !common.quiet {
        say!(
            "gcx demo: simulator on {} with faults `{}`, quota {} requests per {} s per token, \
             tokens valid {} s; updating {users} users with {concurrency} in flight",
            sim.base_url(),
            args.faults,
            QUOTA.0,
            QUOTA.1.as_secs(),
            TOKEN_TTL.as_secs()
        );
        if let Some(addr) = telemetry.addr() {
            say!(
                "gcx demo: the client's metrics on http://{addr}/metrics, the simulator's on {}/sim/metrics",
                sim.base_url()
            );
        }
    }

    let ids = sim.user_ids();
    let mut sinks = Sinks::open(
        common.failed.as_deref(),
        common.unknown.as_deref(),
        common.quarantine.as_deref(),
        Format::Jsonl,
        None,
    )?;
    let (tx, rx) = mpsc::channel(concurrency * 2);
    let feed_ids = ids.clone();
    tokio::spawn(async move {
        for (i, id) in feed_ids.into_iter().enumerate() {
            let fields = wanted(i);
            let line = json!({"user_id": id, "updates": fields}).to_string();
            let record = Record {
                meta: Meta {
                    line: i as u64 + 1,
                    key: Some(id.clone()),
                    raw: Raw::Line(line.into_bytes()),
                },
                item: UserUpdate {
                    user_id: id,
                    fields,
                },
            };
            if tx.send(Input::Record(record)).await.is_err() {
                break;
            }
        }
    });
    let progress = Progress::new(common.quiet, Some(users as u64));
    let tally = job::run(
        Arc::new(deliver::Users(client.clone())),
        rx,
        signals::interrupts(),
        &mut sinks,
        &progress,
        // The demo's simulator lives and dies with the run: nothing to resume.
        None,
        Options {
            concurrency,
            chunk_size: 1,
            retry_unknown: false,
            grace: genesys_client::builder::DEFAULT_ATTEMPT_TIMEOUT,
            shard: None,
        },
    )
    .await;
    progress.finish();

    let verdict = verdict(&sim, &ids);
    let metrics = client.metrics().snapshot();
    let stats = sim.stats();
    let ran = app::Ran {
        tally,
        journal: None,
        report: report_file,
        fleet: None,
        policy: None,
    };
    let code = app::finish(
        common,
        "demo",
        None,
        ran,
        Some(telemetry.stack(metrics)),
        None,
        Some(verdict.clone()),
    )
    .await?;
    if !common.quiet {
        let out = format!(
            "  simulator      {} responses, {} tokens issued, {} 429s, faults: {}",
            stats.total_responses,
            stats.tokens_issued,
            stats.rate_limited,
            stats
                .faults
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let line = if verdict.ok {
            format!(
                "verdict: every update applied, none twice ({} users)",
                verdict.expected
            )
        } else {
            format!(
                "verdict: NOT OK: {} of {} users updated, {} missing, {} applied twice",
                verdict.applied, verdict.expected, verdict.missing, verdict.applied_twice
            )
        };
        if common.json {
            say!("{out}\n{line}");
        } else {
            out!("{out}\n{line}");
        }
    }
    sim.shutdown().await;
    Ok(code)
}

/// Compares the simulator's final state with what was asked, and counts PATCHes per user in the
/// ledger.
fn verdict(sim: &genesys_sim::SimHandle, ids: &[String]) -> Verdict {
    let mut patches: HashMap<String, u64> = HashMap::new();
    for entry in sim.ledger() {
        if entry.method == "PATCH" {
            *patches.entry(entry.entity).or_default() += 1;
        }
    }
    let mut applied = 0;
    let mut missing = 0;
    let mut twice = 0;
    for (i, id) in ids.iter().enumerate() {
        let ok = sim
            .user(id)
            .is_some_and(|user| wanted(i).iter().all(|(k, v)| user.get(k) == Some(v)));
        if ok {
            applied += 1;
        } else {
            missing += 1;
        }
        if patches.get(id).copied().unwrap_or(0) > 1 {
            twice += 1;
        }
    }
    Verdict {
        applied,
        missing,
        applied_twice: twice,
        expected: ids.len() as u64,
        ok: missing == 0 && twice == 0,
    }
}
