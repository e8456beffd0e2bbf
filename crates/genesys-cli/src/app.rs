//! Running one job from start to end: open and check everything first (exit 2 before anything is
//! sent), stream, deliver, then report.

use std::path::Path;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::cli::Common;
use crate::error::{CliError, EXIT_INCOMPLETE, EXIT_OK};
use crate::fleet::Fleet;
use crate::input::{Format, Parse, Source};
use crate::job::{Deliver, Interrupt};
use crate::journal::{JobSpec, Journal, OpenMode};
use crate::passes::{FleetJob, Passes};
use crate::report::{FleetReport, Pace, Report, ReportFile, Verdict};
use crate::sinks::{Sinks, check_distinct, check_outputs_distinct};
use crate::tally::Tally;
use crate::telemetry::StackMetrics;

/// An input, checked: the file opened (and its CSV header checked), the output files and the
/// journal opened, all before anything is sent.
#[derive(Debug)]
pub(crate) struct Prepared<P> {
    pub(crate) parser: Arc<P>,
    pub(crate) source: Source,
    pub(crate) sinks: Sinks,
    pub(crate) input: std::path::PathBuf,
    pub(crate) journal: Option<Journal>,
    pub(crate) report: Option<ReportFile>,
    /// A fleet job (`--fleet-redis` with `--shard`): its journals are opened per shard.
    pub(crate) fleet: Option<FleetJob>,
    /// How long requests in flight may finish after a Ctrl-C: the attempt timeout the job's
    /// client has (`timeouts.attempt`).
    pub(crate) grace: std::time::Duration,
    /// Requests in flight at once, as the job's client has them.
    pub(crate) concurrency: usize,
}

/// Which job a run is, for its journal.
#[derive(Debug, Clone, Copy)]
pub(crate) struct JobKind<'a> {
    /// The subcommand, e.g. `users patch`.
    pub(crate) command: &'a str,
    /// The data action, for `actions execute`.
    pub(crate) action_id: Option<&'a str>,
    /// Records per unit.
    pub(crate) chunk_size: usize,
    /// Whether the job keeps a journal (bulk jobs do; one execution does not).
    pub(crate) journaled: bool,
    /// The hash of the records' schema (`ingest`): part of what the job is.
    pub(crate) schema: Option<&'a str>,
    /// What `--shard` splits the input by when not by line: `user id` for `users patch`.
    pub(crate) shard_by: Option<&'a str>,
    /// The endpoint's path, for a job that names one (`ingest --path`): with the API, what
    /// the job writes to.
    pub(crate) endpoint: Option<&'a str>,
}

/// The files a job writes, with the flags that name them.
fn outputs(common: &Common) -> Vec<(&'static str, &Path)> {
    [
        ("--failed", &common.failed),
        ("--unknown", &common.unknown),
        ("--quarantine", &common.quarantine),
        ("--report", &common.report),
        ("--journal", &common.journal),
    ]
    .into_iter()
    .filter_map(|(flag, path)| Some((flag, path.as_deref()?)))
    .collect()
}

/// Refuses an output that is `read`, a file the job reads before [`prepare`] (the schema).
pub(crate) fn check_outputs_spare(
    common: &Common,
    read: &Path,
    what: &str,
) -> Result<(), CliError> {
    for (flag, path) in outputs(common) {
        crate::sinks::check_not_over(read, what, path, flag)?;
    }
    Ok(())
}

/// Opens `input` for `parser`, the fleet job's record, the output files and the journal, or
/// says why not (exit 2). Nothing is sent before this has succeeded.
pub(crate) async fn prepare<P: Parse>(
    common: &Common,
    input: &Path,
    format: Format,
    parser: P,
    kind: JobKind<'_>,
) -> Result<Prepared<P>, CliError> {
    let source = Source::open(input, format, &parser)?;
    let outputs = outputs(common);
    for (flag, path) in &outputs {
        check_distinct(input, path, flag)?;
        if let Some(config) = &common.config {
            crate::sinks::check_not_over(config, "the configuration file", path, flag)?;
        }
    }
    check_outputs_distinct(&outputs)?;
    let fleet = match (&common.fleet_redis, common.shard) {
        (Some(url), Some(shard)) if kind.journaled => {
            if common.no_journal {
                return Err(CliError::usage(
                    "a fleet job (--fleet-redis with --shard) keeps a journal: drop --no-journal",
                ));
            }
            if common.fresh {
                return Err(CliError::usage(
                    "--fresh with a fleet job: a late worker would start it over again; to run \
                     the same input again as a new job, give every worker the same new \
                     --fleet-run LABEL",
                ));
            }
            let spec = JobSpec::new(kind.command, input, kind.action_id, kind.chunk_size)?
                .with_schema(kind.schema.map(str::to_owned))
                .with_shard_by(kind.shard_by)
                .with_run(common.fleet_run.clone());
            source.check_still_at(input)?;
            let organization = crate::deliver::token_organization(common).await?;
            let (jobs, jobs_before) =
                crate::deliver::fleet_job_keys(common, kind.endpoint, organization.as_deref());
            let key = format!("{jobs}:{}", spec.fleet_identity());
            // Where an earlier gcx recorded the same job: under its own prefix, or with its
            // shards split by line.
            let mut earlier: Vec<String> = jobs_before
                .iter()
                .map(|before| format!("{before}:{}", spec.fleet_identity()))
                .collect();
            if let Some(by_line) = spec.fleet_identity_by_line() {
                earlier.extend(
                    std::iter::once(&jobs)
                        .chain(&jobs_before)
                        .map(|prefix| format!("{prefix}:{by_line}")),
                );
            }
            let lease = common
                .fleet_lease
                .map_or(crate::fleet::DEFAULT_LEASE, std::time::Duration::from_secs);
            let fleet = Fleet::open(url, key, earlier, shard.count, lease)
                .await
                .map_err(|e| {
                    CliError::usage(format!(
                        "--fleet-redis {}: {e}; a fleet job keeps its state in Redis (nothing \
                         was sent)",
                        crate::deliver::redact_url(url)
                    ))
                })?;
            let spec = spec.with_job(fleet.job());
            Some(FleetJob { fleet, spec, shard })
        }
        _ => None,
    };
    let report = common
        .report
        .as_deref()
        .map(ReportFile::create)
        .transpose()?;
    // Read once: the API the journal names, the grace after a Ctrl-C, the concurrency.
    let settings = crate::settings::load(common)?;
    let journal = if kind.journaled && !common.no_journal && fleet.is_none() {
        let target = [
            crate::deliver::api_target(common, settings.profile.as_ref()),
            kind.endpoint.map(str::to_owned),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
        let spec = JobSpec::new(kind.command, input, kind.action_id, kind.chunk_size)?
            .with_schema(kind.schema.map(str::to_owned))
            .with_shard_by(kind.shard_by)
            .with_shard(common.shard)
            .with_target(Some(target).filter(|t| !t.is_empty()));
        // Hashed by its path after it was opened: the same file, or the job would be another's.
        source.check_still_at(input)?;
        let (path, mode) = match &common.journal {
            Some(path) if common.fresh => (path.clone(), OpenMode::Fresh),
            Some(path) => (path.clone(), OpenMode::Resume),
            None => (
                crate::journal::default_path(&spec)?,
                if common.fresh {
                    OpenMode::Fresh
                } else {
                    OpenMode::ResumeUnfinished
                },
            ),
        };
        Some(Journal::open(&path, &spec, mode)?)
    } else {
        None
    };
    let sinks = Sinks::open(
        common.failed.as_deref(),
        common.unknown.as_deref(),
        common.quarantine.as_deref(),
        source.format(),
        source.header(),
    )?;
    if let Some(j) = &journal
        && !common.quiet
    {
        if j.past.resumed() {
            say!(
                "gcx: resuming from the journal {} ({} unit(s) delivered earlier are skipped; \
                 --fresh starts over)",
                j.path.display(),
                j.past.done_units
            );
        } else {
            say!(
                "gcx: journal {} (after a crash, the same command resumes from it)",
                j.path.display()
            );
        }
    }
    let grace = settings.layered.config().timeouts.attempt.0;
    let concurrency = crate::deliver::job_concurrency(common, &settings.layered);
    Ok(Prepared {
        parser: Arc::new(parser),
        source,
        sinks,
        input: input.to_owned(),
        journal,
        report,
        fleet,
        grace,
        concurrency,
    })
}

/// Builds the job's client (which checks the credentials) once the job is prepared; when that
/// fails, nothing was sent, and a journal this run created is removed.
pub(crate) async fn connect<P>(
    builder: genesys_client::GenesysClientBuilder,
    common: &Common,
    prepared: &mut Prepared<P>,
) -> Result<(crate::departures::WatchedClient, Option<Pace>), CliError> {
    match crate::deliver::build_client(builder, common).await {
        Ok(built) => Ok(built),
        Err(e) => {
            if let Some(journal) = prepared.journal.take() {
                journal.discard().await;
            }
            Err(e)
        }
    }
}

/// What a run leaves for [`finish`]: its tally, journal and report file.
#[derive(Debug)]
pub(crate) struct Ran {
    pub(crate) tally: Tally,
    pub(crate) journal: Option<Journal>,
    pub(crate) report: Option<ReportFile>,
    /// A fleet worker's part, and its own shard's journal (closed already).
    pub(crate) fleet: Option<(FleetReport, Option<std::path::PathBuf>)>,
    /// The policy store's versions the job ran, and what it decided about a canary.
    pub(crate) policy: Option<crate::policy::watch::PolicyReport>,
}

/// Runs a prepared job: one pass over the input, or a fleet worker's passes.
pub(crate) async fn execute<P, D>(
    common: &Common,
    prepared: Prepared<P>,
    deliver: Arc<D>,
    chunk_size: usize,
    retry_unknown: bool,
    interrupts: mpsc::UnboundedReceiver<Interrupt>,
) -> Ran
where
    P: Parse,
    D: Deliver<Item = P::Item>,
{
    let Prepared {
        parser,
        source,
        mut sinks,
        input,
        journal,
        report,
        fleet,
        grace,
        concurrency,
    } = prepared;
    let passes = Passes {
        common,
        parser,
        input: &input,
        format: source.format(),
        deliver,
        chunk_size,
        retry_unknown,
        grace,
        concurrency,
    };
    match fleet {
        None => {
            let tally = passes
                .one(
                    source,
                    &mut sinks,
                    journal.as_ref(),
                    common.shard,
                    interrupts,
                )
                .await;
            Ran {
                tally,
                journal,
                report,
                fleet: None,
                policy: None,
            }
        }
        Some(job) => {
            let ran = passes.fleet(&job, source, &mut sinks, interrupts).await;
            let mut tally = ran.tally;
            if let Err(e) = sinks.flush()
                && tally.output_error.is_none()
            {
                tally.output_error = Some(format!("writing an output file failed: {e}"));
            }
            Ran {
                tally,
                journal: None,
                report,
                fleet: Some((ran.report, ran.journal)),
                policy: None,
            }
        }
    }
}

/// Closes the journal, writes the report (atomically), prints the summary, and returns the
/// exit code.
pub(crate) async fn finish(
    common: &Common,
    command: &str,
    input: Option<&Path>,
    ran: Ran,
    stack: Option<StackMetrics>,
    pace: Option<Pace>,
    verdict: Option<Verdict>,
) -> Result<u8, CliError> {
    let Ran {
        mut tally,
        journal,
        report: report_file,
        fleet,
        policy,
    } = ran;
    let (fleet, fleet_journal) = fleet.unzip();
    let journal_path = journal
        .as_ref()
        .map(|j| j.path.clone())
        .or(fleet_journal.flatten());
    if let Some(j) = journal {
        let status = if tally.complete() {
            "complete"
        } else if tally.interrupted {
            "interrupted"
        } else {
            "incomplete"
        };
        if let Err(e) = j.close(status).await
            && tally.journal_error.is_none()
        {
            tally.journal_error = Some(e);
        }
    }
    let (totals, routes) = match stack {
        Some(StackMetrics { totals, routes }) => (Some(totals), routes),
        None => (None, Vec::new()),
    };
    let mut report = Report::new(
        command,
        input,
        &tally,
        totals,
        common.failed.as_deref(),
        common.unknown.as_deref(),
        common.quarantine.as_deref(),
        journal_path.as_deref(),
    );
    if let Some(v) = verdict {
        report = report.with_verdict(v);
    }
    report.pace = pace;
    report.fleet = fleet;
    report.policy = policy;
    report.routes = routes;
    if let Some(file) = report_file
        && let Err(e) = file.commit(&report)
    {
        // The summary still comes, and says the report is missing.
        report.exit_code = report.exit_code.max(EXIT_INCOMPLETE);
        report.output_error = Some(match report.output_error.take() {
            Some(before) => format!("{before}; {e}"),
            None => e.to_string(),
        });
    }
    if common.json {
        out!("{}", report.to_json());
        if !common.quiet {
            say_part!("{}", report.table());
        }
    } else if !common.quiet {
        out_part!("{}", report.table());
    } else if report.exit_code != EXIT_OK {
        say!(
            "gcx {command}: {} ({} delivered, {} failed, {} unknown, {} quarantined, {} not started)",
            report.status,
            report.counts.delivered,
            report.counts.failed,
            report.counts.unknown,
            report.counts.quarantined,
            report.counts.not_started
        );
    }
    Ok(report.exit_code)
}
