//! Running one job from start to end: open and check everything first (exit 2 before anything is
//! sent), stream, deliver, then report.

use std::path::Path;
use std::sync::Arc;

use genesys_tower::metrics::MetricsSnapshot;
use tokio::sync::mpsc;

use crate::cli::Common;
use crate::error::{CliError, EXIT_OK};
use crate::input::{Format, Parse, Source};
use crate::job::{self, Deliver, Options, Sinks, Tally};
use crate::progress::Progress;
use crate::report::{Report, Verdict};

/// How many records the reader may run ahead of the senders, per unit in flight.
const READ_AHEAD_UNITS: usize = 2;

/// An input, checked: the file opened (and its CSV header checked), the output files distinct
/// from it.
#[derive(Debug)]
pub(crate) struct Prepared<P> {
    pub(crate) parser: Arc<P>,
    pub(crate) source: Source,
    pub(crate) sinks: Sinks,
    pub(crate) input: std::path::PathBuf,
}

/// Opens `input` for `parser`, and the output files, or says why not (exit 2).
pub(crate) fn prepare<P: Parse>(
    common: &Common,
    input: &Path,
    format: Format,
    parser: P,
) -> Result<Prepared<P>, CliError> {
    let source = Source::open(input, format, &parser)?;
    for (flag, path) in [
        ("--failed", &common.failed),
        ("--quarantine", &common.quarantine),
    ] {
        if let Some(path) = path {
            job::check_distinct(input, path, flag)?;
        }
    }
    if let Some(report) = &common.report {
        job::check_distinct(input, report, "--report")?;
    }
    let sinks = Sinks::open(
        common.failed.as_deref(),
        common.quarantine.as_deref(),
        source.format(),
        source.header(),
    )?;
    Ok(Prepared {
        parser: Arc::new(parser),
        source,
        sinks,
        input: input.to_owned(),
    })
}

/// Sends a unit on every Ctrl-C (and SIGTERM), from now on: installed before the job starts so
/// that an early Ctrl-C is not lost.
pub(crate) fn interrupts() -> mpsc::UnboundedReceiver<()> {
    let (tx, rx) = mpsc::unbounded_channel();
    let ctrl_c = tx.clone();
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if ctrl_c.send(()).is_err() {
                break;
            }
        }
    });
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            while term.recv().await.is_some() {
                if tx.send(()).is_err() {
                    break;
                }
            }
        }
    });
    rx
}

/// Runs a prepared job and returns its tally.
pub(crate) async fn execute<P, D>(
    common: &Common,
    prepared: Prepared<P>,
    deliver: Arc<D>,
    chunk_size: usize,
    interrupts: mpsc::UnboundedReceiver<()>,
) -> Tally
where
    P: Parse,
    D: Deliver<Item = P::Item>,
{
    let concurrency = concurrency(common);
    let progress = Progress::new(common.quiet, None);
    // Counting lines costs a read of the file: only worth it for a bar on a terminal.
    let counted = if !progress.is_bar() || matches!(prepared.source.format(), Format::Json) {
        None
    } else {
        let path = prepared.input.clone();
        Some(tokio::task::spawn_blocking(move || {
            crate::input::count_lines(&path)
        }))
    };
    let Prepared {
        parser,
        source,
        mut sinks,
        input: _,
    } = prepared;
    let has_header = source.header().is_some();
    let rx = source.stream(parser, concurrency * chunk_size * READ_AHEAD_UNITS);
    if let Some(counted) = counted
        && let Ok(Some(lines)) = counted.await
    {
        progress.set_total(lines.saturating_sub(u64::from(has_header)));
    }
    let tally = job::run(
        deliver,
        rx,
        interrupts,
        &mut sinks,
        &progress,
        Options {
            concurrency,
            chunk_size,
        },
    )
    .await;
    progress.finish();
    tally
}

/// The concurrency to use: `--concurrency` or 8.
pub(crate) fn concurrency(common: &Common) -> usize {
    common.concurrency.map_or(8, |n| n as usize)
}

/// Prints the summary, writes the report, and returns the exit code.
pub(crate) fn finish(
    common: &Common,
    command: &str,
    input: Option<&Path>,
    tally: &Tally,
    metrics: Option<MetricsSnapshot>,
    verdict: Option<Verdict>,
) -> Result<u8, CliError> {
    let mut report = Report::new(
        command,
        input,
        tally,
        metrics,
        common.failed.as_deref(),
        common.quarantine.as_deref(),
    );
    if let Some(v) = verdict {
        report = report.with_verdict(v);
    }
    if let Some(path) = &common.report {
        report.write(path)?;
    }
    if common.json {
        println!("{}", report.to_json());
        if !common.quiet {
            eprint!("{}", report.table());
        }
    } else if !common.quiet {
        print!("{}", report.table());
    } else if report.exit_code != EXIT_OK {
        eprintln!(
            "gcx {command}: {} ({} delivered, {} failed, {} quarantined, {} not started)",
            report.status,
            report.counts.delivered,
            report.counts.failed,
            report.counts.quarantined,
            report.counts.not_started
        );
    }
    Ok(report.exit_code)
}
