//! The end of a run: the JSON report (`--report`, `--json`) and the summary table.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use genesys_tower::metrics::{MetricsSnapshot, RetriesByReason};
use serde::Serialize;

use crate::error::{CliError, EXIT_INCOMPLETE, EXIT_OK, EXIT_USAGE};
use crate::tally::{Failure, QuarantineEntry, Tally};
use crate::telemetry::RouteMetrics;

/// `path` as text, any bytes of it that are not UTF-8 replaced (U+FFFD): serde refuses such a
/// path, and would refuse the whole report with it, at the end of the job.
fn lossy_path<S: serde::Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match path {
        Some(path) => s.serialize_some(&path.to_string_lossy()),
        None => s.serialize_none(),
    }
}

/// The machine-readable account of one run.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// The subcommand, e.g. `users patch`.
    pub(crate) command: String,
    /// The input file.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "lossy_path")]
    pub(crate) input: Option<PathBuf>,
    /// `complete`, `incomplete` or `interrupted`.
    pub(crate) status: &'static str,
    /// The process exit code.
    pub(crate) exit_code: u8,
    /// What happened to the records.
    pub(crate) counts: Counts,
    /// Time spent.
    pub(crate) durations: Durations,
    /// What the HTTP stack did (retries, 429s, tokens).
    pub(crate) http: Http,
    /// Ctrl-C was pressed: records not started are in the failed file.
    pub(crate) interrupted: bool,
    /// The input could not be read to its end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) input_error: Option<String>,
    /// An output file could not be written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) output_error: Option<String>,
    /// The login host refused the credentials mid-job: the job stopped (exit 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) credentials_refused: Option<String>,
    /// Turned away for too long (no access token for 15 minutes, the login host unavailable, or
    /// the API asking to wait longer than what is left of them): the job stopped (exit 1), for
    /// the same command to resume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) unavailable: Option<String>,
    /// The journal could not be written: a resume is not safe past the last entry on disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) journal_error: Option<String>,
    /// A fleet job's record could not be reached: the worker left the rest to the fleet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fleet_error: Option<String>,
    /// The job's journal: the same command resumes from it.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "lossy_path")]
    pub(crate) journal: Option<PathBuf>,
    /// Where the failed items were written.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "lossy_path")]
    pub(crate) failed_file: Option<PathBuf>,
    /// Where the items whose outcome is unknown were written.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "lossy_path")]
    pub(crate) unknown_file: Option<PathBuf>,
    /// Where the quarantined records were written.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "lossy_path")]
    pub(crate) quarantine_file: Option<PathBuf>,
    /// Every failed item with its reason, up to the first 10,000 (items not started are counted,
    /// not listed, unless for a reason of their own: the journal could not record their start).
    pub(crate) failures: Vec<Failure>,
    /// Failed items past the first 10,000: counted here, listed in the failed file only.
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) failures_not_listed: u64,
    /// Every item whose outcome is unknown (it may have been applied), with the reason, up to
    /// the first 10,000.
    pub(crate) unknown: Vec<Failure>,
    /// Every quarantined record with its line and reason, up to the first 10,000.
    pub(crate) quarantined: Vec<QuarantineEntry>,
    /// Quarantined records past the first 10,000: in the quarantine file only.
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) quarantined_not_listed: u64,
    /// The client-side pace the job ran at, and where it came from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) pace: Option<Pace>,
    /// A fleet job's record (`--fleet-redis` with `--shard`): which shards this worker
    /// processed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) fleet: Option<FleetReport>,
    /// The policy store's versions the job ran (`gcx policy apply`), their calls' outcomes, and
    /// what the job decided about a canary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) policy: Option<crate::policy::watch::PolicyReport>,
    /// What the HTTP stack did per route (calls and attempts by outcome, retries by reason,
    /// 429s, the calls' latency histogram), from the same metrics `--metrics-addr` serves.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) routes: Vec<RouteMetrics>,
    /// The demo's verdict, for `gcx demo`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) verdict: Option<Verdict>,
}

/// Record counts. `records = delivered + failed + unknown + quarantined + not_started +
/// other_shards`.
#[derive(Debug, Serialize)]
pub(crate) struct Counts {
    pub(crate) records: u64,
    pub(crate) delivered: u64,
    /// Of `delivered`, the records an earlier run of the job delivered (from the journal).
    pub(crate) delivered_earlier: u64,
    pub(crate) failed: u64,
    /// Records whose outcome is unknown: they may have been applied.
    pub(crate) unknown: u64,
    pub(crate) quarantined: u64,
    pub(crate) not_started: u64,
    /// Records left to the other workers of a sharded job (`--shard I/N`).
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) other_shards: u64,
    /// Requests sent by the job (one per record, or one per chunk).
    pub(crate) requests: u64,
}

/// Durations in milliseconds.
#[derive(Debug, Serialize)]
pub(crate) struct Durations {
    pub(crate) elapsed_ms: f64,
    pub(crate) records_per_second: f64,
    /// Time per delivered unit (retries and waits included).
    pub(crate) unit_mean_ms: f64,
    pub(crate) unit_p50_ms: f64,
    pub(crate) unit_p95_ms: f64,
    pub(crate) unit_p99_ms: f64,
    pub(crate) unit_max_ms: f64,
}

/// Counters of the HTTP stack.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Http {
    /// Attempts sent (first tries and retries).
    pub(crate) attempts: u64,
    /// Retries by reason.
    pub(crate) retries_by_reason: RetriesByReason,
    /// All retries.
    pub(crate) retries: u64,
    /// 429 responses seen.
    pub(crate) rate_limited_responses: u64,
    /// Tokens fetched, the first one included.
    pub(crate) token_fetches: u64,
    /// Tokens fetched after the first (expiry or 401).
    pub(crate) token_refreshes: u64,
    /// Requests re-sent once after a 401 with a fresh token.
    pub(crate) refreshes_after_401: u64,
    /// Retries refused because the retry budget was spent.
    pub(crate) budget_refusals: u64,
    /// Requests held back by client-side pacing.
    pub(crate) pacing_waits: u64,
    /// Calls answered from the idempotency store.
    pub(crate) idempotent_replays: u64,
}

impl From<MetricsSnapshot> for Http {
    fn from(m: MetricsSnapshot) -> Self {
        Http {
            attempts: m.attempts,
            retries_by_reason: m.retries,
            retries: m.retries.total(),
            rate_limited_responses: m.rate_limited_responses,
            token_fetches: m.token_fetches,
            token_refreshes: m.token_fetches.saturating_sub(1),
            refreshes_after_401: m.unauthorized_refreshes,
            budget_refusals: m.budget_refusals,
            pacing_waits: m.pacing_waits,
            idempotent_replays: m.idempotent_replays,
        }
    }
}

/// The pace a job starts at: at most `requests` per `window_s` seconds (the pacer then adapts
/// to what the server says).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Pace {
    pub(crate) requests: u64,
    pub(crate) window_s: f64,
    /// `--rate-limit`, the org's own limit, or the default.
    pub(crate) source: String,
}

/// A fleet worker's part in its job.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct FleetReport {
    /// The fleet job's id (its units' idempotency keys derive from it).
    pub(crate) job: String,
    /// Shards the job is split in.
    pub(crate) shards: u32,
    /// This worker's own shard (`--shard I/N`).
    pub(crate) shard: u32,
    /// Shards this worker processed to the end: its own, and any it took over.
    pub(crate) processed: Vec<u32>,
    /// Of `processed`, the shards of other workers (theirs had stopped renewing their lease).
    pub(crate) taken_over: Vec<u32>,
    /// Every shard of the job was processed (by this worker or the others) when it ended.
    pub(crate) job_complete: bool,
}

/// What the simulator's ledger says about a demo run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Verdict {
    /// Users whose final state has every requested field.
    pub(crate) applied: u64,
    /// Users whose final state lacks a requested field.
    pub(crate) missing: u64,
    /// Users updated more than once in the ledger.
    pub(crate) applied_twice: u64,
    /// Users the job was asked to update.
    pub(crate) expected: u64,
    /// True when every update was applied and none twice.
    pub(crate) ok: bool,
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

impl Report {
    /// Builds the report of a finished job.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        command: &str,
        input: Option<&Path>,
        tally: &Tally,
        metrics: Option<MetricsSnapshot>,
        failed_file: Option<&Path>,
        unknown_file: Option<&Path>,
        quarantine_file: Option<&Path>,
        journal: Option<&Path>,
    ) -> Self {
        let complete = tally.complete();
        let secs = tally.elapsed.as_secs_f64();
        Report {
            command: command.to_owned(),
            input: input.map(Path::to_owned),
            status: if tally.proxy_refused {
                "proxy refused"
            } else if tally.credentials_refused.is_some() {
                "credentials refused"
            } else if tally.unavailable.is_some() {
                "unavailable"
            } else if tally.interrupted {
                "interrupted"
            } else if complete {
                "complete"
            } else {
                "incomplete"
            },
            exit_code: if tally.credentials_refused.is_some() {
                EXIT_USAGE
            } else if complete {
                EXIT_OK
            } else {
                EXIT_INCOMPLETE
            },
            counts: Counts {
                records: tally.records(),
                delivered: tally.delivered,
                delivered_earlier: tally.delivered_earlier,
                failed: tally.failed,
                unknown: tally.unknown,
                quarantined: tally.quarantined,
                not_started: tally.not_started,
                other_shards: tally.other_shards,
                requests: tally.requests,
            },
            durations: Durations {
                elapsed_ms: ms(tally.elapsed),
                records_per_second: if secs > 0.0 {
                    ((tally.records() - tally.other_shards) as f64 / secs * 10.0).round() / 10.0
                } else {
                    0.0
                },
                unit_mean_ms: ms(tally.latencies.mean()),
                unit_p50_ms: ms(tally.latencies.quantile(0.5)),
                unit_p95_ms: ms(tally.latencies.quantile(0.95)),
                unit_p99_ms: ms(tally.latencies.quantile(0.99)),
                unit_max_ms: ms(tally.latencies.max()),
            },
            http: metrics.map(Http::from).unwrap_or_default(),
            interrupted: tally.interrupted,
            input_error: tally.broken_input.clone(),
            output_error: tally.output_error.clone(),
            journal_error: tally.journal_error.clone(),
            credentials_refused: tally.credentials_refused.clone(),
            unavailable: tally.unavailable.clone(),
            fleet_error: tally.fleet_error.clone(),
            journal: journal.map(Path::to_owned),
            failed_file: failed_file.map(Path::to_owned),
            unknown_file: unknown_file.map(Path::to_owned),
            quarantine_file: quarantine_file.map(Path::to_owned),
            failures: tally.failures.clone(),
            unknown: tally.unknowns.clone(),
            failures_not_listed: tally.failures_not_listed(),
            quarantined: tally.quarantine.clone(),
            quarantined_not_listed: tally
                .quarantined
                .saturating_sub(tally.quarantine.len() as u64),
            pace: None,
            fleet: None,
            policy: None,
            routes: Vec::new(),
            verdict: None,
        }
    }

    /// Adds the demo's verdict (a failed verdict makes the run incomplete).
    pub(crate) fn with_verdict(mut self, verdict: Verdict) -> Self {
        if !verdict.ok {
            self.exit_code = EXIT_INCOMPLETE;
            self.status = "incomplete";
        }
        self.verdict = Some(verdict);
        self
    }

    /// The report as one line of JSON.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The human summary.
    pub(crate) fn table(&self) -> String {
        let c = &self.counts;
        let h = &self.http;
        let d = &self.durations;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "gcx {}: {} in {:.1} s",
            self.command,
            self.status,
            d.elapsed_ms / 1000.0
        );
        let row = |s: &mut String, k: &str, v: String| {
            let _ = writeln!(s, "  {k:<14} {v}");
        };
        row(&mut s, "records", c.records.to_string());
        if c.other_shards > 0 {
            row(
                &mut s,
                "other workers",
                format!("{} (left to the other shards)", c.other_shards),
            );
        }
        row(&mut s, "delivered", c.delivered.to_string());
        if c.delivered_earlier > 0 {
            row(
                &mut s,
                "  earlier",
                format!(
                    "{} (delivered by an earlier run, per the journal)",
                    c.delivered_earlier
                ),
            );
        }
        row(&mut s, "failed", c.failed.to_string());
        if c.unknown > 0 {
            row(
                &mut s,
                "unknown",
                format!("{} (may have been applied)", c.unknown),
            );
        }
        row(&mut s, "quarantined", c.quarantined.to_string());
        if c.not_started > 0 || self.interrupted {
            row(&mut s, "not started", c.not_started.to_string());
        }
        row(
            &mut s,
            "requests",
            format!("{} ({} attempts)", c.requests, h.attempts),
        );
        let r = &h.retries_by_reason;
        row(
            &mut s,
            "retries",
            format!(
                "{} (429: {}, 5xx: {}, ambiguous: {}, connect: {}, 408: {})",
                h.retries,
                r.rate_limited,
                r.server_error,
                r.ambiguous,
                r.connect,
                r.request_timeout
            ),
        );
        if let Some(p) = &self.pace {
            row(
                &mut s,
                "pace",
                format!("{} per {} s ({})", p.requests, p.window_s, p.source),
            );
        }
        if let Some(p) = &self.policy {
            let mut text = format!("stable {}", p.stable.as_deref().unwrap_or("default"));
            if let Some(c) = &p.canary {
                text.push_str(&format!(", canary {c}"));
            }
            for (version, o) in &p.outcomes {
                text.push_str(&format!(
                    "; {version}: {} of {} calls succeeded",
                    o.succeeded, o.calls
                ));
            }
            row(&mut s, "retry policy", text);
            for d in &p.decisions {
                row(&mut s, "canary", d.clone());
            }
        }
        if let Some(f) = &self.fleet {
            let list = |v: &[u32]| {
                if v.is_empty() {
                    return "none".to_owned();
                }
                v.iter().map(u32::to_string).collect::<Vec<_>>().join(", ")
            };
            let taken = if f.taken_over.is_empty() {
                String::new()
            } else {
                format!(", taken over: {}", list(&f.taken_over))
            };
            row(
                &mut s,
                "fleet job",
                format!(
                    "{} ({} shards; processed here: {}{taken}; job {})",
                    f.job,
                    f.shards,
                    list(&f.processed),
                    if f.job_complete {
                        "complete"
                    } else {
                        "not complete"
                    }
                ),
            );
        }
        row(
            &mut s,
            "429 responses",
            h.rate_limited_responses.to_string(),
        );
        row(
            &mut s,
            "tokens",
            format!(
                "{} fetched, {} refreshed after a 401",
                h.token_fetches, h.refreshes_after_401
            ),
        );
        row(
            &mut s,
            "throughput",
            format!("{:.0} records/s", d.records_per_second),
        );
        row(
            &mut s,
            "latency",
            format!(
                "p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms",
                d.unit_p50_ms, d.unit_p95_ms, d.unit_max_ms
            ),
        );
        for r in &self.routes {
            let calls: u64 = r.calls.values().sum();
            let attempts: u64 = r.attempts.values().sum();
            let retries: u64 = r.retries.values().sum();
            let bound = |q| {
                r.latency
                    .quantile_bound(q)
                    .map_or_else(|| "-".to_owned(), |b| format!("<= {b} s"))
            };
            let _ = writeln!(
                s,
                "  {} {}: {calls} calls, {attempts} attempts, {retries} retries, {} x 429, p50 {}, p99 {}",
                r.method,
                r.route,
                r.rate_limited,
                bound(0.5),
                bound(0.99)
            );
        }
        if let Some(v) = &self.verdict {
            row(
                &mut s,
                "ledger",
                format!(
                    "{} of {} users updated, {} missing, {} applied twice",
                    v.applied, v.expected, v.missing, v.applied_twice
                ),
            );
        }
        for f in self.failures.iter().take(5) {
            let _ = writeln!(s, "  failed: line {}: {}", f.line, f.reason);
        }
        let files_whole = self.output_error.is_none();
        if c.failed > 5 {
            let _ = writeln!(
                s,
                "  ... {} more failures (the report lists up to 10,000{})",
                c.failed - 5,
                match (&self.failed_file, files_whole) {
                    (Some(_), true) => "; the failed file has all",
                    _ => "",
                }
            );
        }
        for f in self.unknown.iter().take(5) {
            let _ = writeln!(s, "  unknown: line {}: {}", f.line, f.reason);
        }
        if c.unknown > 5 {
            let _ = writeln!(s, "  ... {} more with an unknown outcome", c.unknown - 5);
        }
        for q in self.quarantined.iter().take(5) {
            let _ = writeln!(s, "  quarantined: line {}: {}", q.line, q.reason);
        }
        if c.quarantined > 5 {
            let _ = writeln!(
                s,
                "  ... {} more quarantined records{}",
                c.quarantined - 5,
                match (&self.quarantine_file, files_whole) {
                    (Some(_), true) => " (the quarantine file has all, with reasons)",
                    _ => "",
                }
            );
        }
        if let Some(e) = &self.input_error {
            let _ = writeln!(s, "  input error: {e}");
        }
        if let Some(e) = &self.output_error {
            let _ = writeln!(
                s,
                "  output error: {e} (the files named below may be incomplete)"
            );
        }
        if let Some(e) = self
            .credentials_refused
            .as_ref()
            .or(self.unavailable.as_ref())
        {
            let _ = writeln!(s, "  stopped: {e}");
        }
        if let Some(e) = &self.fleet_error {
            let _ = writeln!(s, "  fleet error: {e}");
        }
        if let Some(e) = &self.journal_error {
            let _ = writeln!(
                s,
                "  journal error: {e} (fix the disk, then run the same command again to resume: \
                 what the journal did not record as ended is resolved as any resume does, a data \
                 action that may have run listed as unknown, never run again)"
            );
        }
        if let Some(j) = &self.journal {
            let _ = writeln!(s, "  journal        {}", j.display());
            if self.exit_code != EXIT_OK && self.journal_error.is_none() {
                let _ = writeln!(
                    s,
                    "  run the same command again to resume: delivered records are skipped{}",
                    if c.unknown > 0 && self.command == "actions execute" {
                        "; executions with an unknown outcome are listed, not run again, unless \
                         --retry-unknown"
                    } else {
                        ""
                    }
                );
            }
        }
        if c.unknown > 0 {
            match &self.unknown_file {
                Some(p) if files_whole => {
                    let _ = writeln!(
                        s,
                        "  the items with an unknown outcome are in {}: check them before sending \
                         them again",
                        p.display()
                    );
                }
                Some(_) => {}
                None => {
                    let _ = writeln!(
                        s,
                        "  add --unknown FILE to keep the items with an unknown outcome"
                    );
                }
            }
        }
        if c.failed + c.not_started > 0 {
            match &self.failed_file {
                Some(p) if !files_whole => {
                    let _ = writeln!(
                        s,
                        "  the failed file {} could not be written whole: use the journal or \
                         the report's failures",
                        p.display()
                    );
                }
                Some(p) => {
                    let _ = writeln!(
                        s,
                        "  or re-run only the items not delivered with --input {}",
                        p.display()
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        "  add --failed FILE to keep the items not delivered for a re-run"
                    );
                }
            }
        }
        if c.quarantined > 0 && self.quarantine_file.is_none() {
            let _ = writeln!(
                s,
                "  add --quarantine FILE to keep the invalid records with their reasons"
            );
        }
        if c.records == 0 && self.input_error.is_none() {
            let _ = writeln!(s, "  the input has no records: nothing to do");
        }
        s
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The report's file, created (as a temporary file beside it) before anything is sent, so that a
/// path that cannot be written is found out first; written and renamed into place at the end, so
/// the report is never half written. A path that exists and is not a regular file (a pipe,
/// `/dev/stdout`) is opened as it is and written at the end.
#[derive(Debug)]
pub(crate) struct ReportFile {
    path: PathBuf,
    /// The temporary file renamed onto `path`, if the report is written atomically.
    temp: Option<PathBuf>,
    file: File,
}

impl ReportFile {
    /// Creates the temporary file beside `path` (exit 2 when that is not possible).
    pub(crate) fn create(path: &Path) -> Result<Self, CliError> {
        let cannot = |e: std::io::Error| {
            CliError::usage(format!(
                "cannot create the --report file {}: {e}; choose a writable path",
                path.display()
            ))
        };
        if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(cannot)?;
            return Ok(ReportFile {
                path: path.to_owned(),
                temp: None,
                file,
            });
        }
        // `reports/` names a directory, not a file in it: refused here, before anything is sent,
        // rather than when the report is moved into place at the end.
        if path.as_os_str().to_string_lossy().ends_with('/') || path.is_dir() {
            return Err(CliError::usage(format!(
                "--report {}: a directory; give a file name, e.g. {}",
                path.display(),
                path.join("report.json").display()
            )));
        }
        let name = path.file_name().ok_or_else(|| {
            CliError::usage(format!(
                "--report {}: give a file name, e.g. report.json",
                path.display()
            ))
        })?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".{}.tmp", std::process::id()));
        let temp = path.with_file_name(temp_name);
        let file = File::create(&temp).map_err(cannot)?;
        Ok(ReportFile {
            path: path.to_owned(),
            temp: Some(temp),
            file,
        })
    }

    /// Writes `report` and renames it into place.
    pub(crate) fn commit(mut self, report: &Report) -> Result<(), CliError> {
        let mut written = serde_json::to_vec_pretty(report)
            .map_err(std::io::Error::other)
            .and_then(|json| self.file.write_all(&json));
        if let Some(temp) = &self.temp {
            written = written
                .and_then(|()| self.file.sync_all())
                .and_then(|()| std::fs::rename(temp, &self.path));
        }
        if written.is_ok() {
            // In place: nothing left for `drop` to remove.
            self.temp = None;
        }
        written.map_err(|e| {
            CliError::runtime(format!(
                "cannot write the report to {}: {e}",
                self.path.display()
            ))
        })
    }
}

impl Drop for ReportFile {
    /// A report never written (the job refused before it ran, or the write failed) leaves no
    /// temporary file behind.
    fn drop(&mut self) {
        if let Some(temp) = &self.temp {
            let _ = std::fs::remove_file(temp);
        }
    }
}
