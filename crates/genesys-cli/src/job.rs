//! The job engine: takes records from the input channel, groups them into units (one record, or
//! a chunk for ingestion), keeps at most `concurrency` units in flight, and accounts for every
//! record: delivered, failed (with the reason, written to the failed file), quarantined, or not
//! started because the run was interrupted (also written to the failed file). Nothing is lost.
//!
//! Delivery itself is behind [`Deliver`], so the engine is tested with a fake and wired to the
//! real client by the commands.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::{Id, JoinSet};

use crate::error::CliError;
use crate::input::{Format, Input, Meta, Quarantined, Raw, Record};
use crate::progress::Progress;

/// Delivers one unit of work: one record, or one chunk of records sent in one request.
pub(crate) trait Deliver: Send + Sync + 'static {
    /// What one record becomes once parsed.
    type Item: Send + 'static;

    /// Sends `items` (one request for the whole unit). `Err` carries the reason for the report;
    /// every item of the unit then counts as failed.
    fn deliver(&self, items: Vec<Self::Item>) -> impl Future<Output = Result<(), String>> + Send;
}

/// Why an item ended in the failed file.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Failure {
    /// Line of the item in the input.
    pub(crate) line: u64,
    /// The entity (a user id), when the item names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<String>,
    /// What went wrong.
    pub(crate) reason: String,
}

/// A quarantined record as the report lists it (the raw text is in the quarantine file).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct QuarantineEntry {
    pub(crate) line: u64,
    pub(crate) reason: String,
}

/// Where failed and quarantined items are written as the job goes.
#[derive(Debug, Default)]
pub(crate) struct Sinks {
    failed: Option<FailedWriter>,
    quarantine: Option<BufWriter<File>>,
}

#[derive(Debug)]
enum FailedWriter {
    Lines(BufWriter<File>),
    Csv(Box<csv::Writer<File>>),
}

fn create(path: &Path, flag: &str) -> Result<File, CliError> {
    File::create(path).map_err(|e| {
        CliError::usage(format!(
            "cannot create {flag} file {}: {e}; choose a writable path",
            path.display()
        ))
    })
}

/// Refuses an output path that is the input itself: writing it would destroy the input.
pub(crate) fn check_distinct(input: &Path, output: &Path, flag: &str) -> Result<(), CliError> {
    let same = match (std::fs::canonicalize(input), std::fs::canonicalize(output)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Err(CliError::usage(format!(
            "{flag} {} is the input file; write to another file (e.g. {}.next) and re-run from it",
            output.display(),
            output.display()
        )));
    }
    Ok(())
}

impl Sinks {
    /// Opens the output files (truncating them) before anything is sent.
    pub(crate) fn open(
        failed: Option<&Path>,
        quarantine: Option<&Path>,
        format: Format,
        header: Option<&csv::ByteRecord>,
    ) -> Result<Self, CliError> {
        let failed = match failed {
            None => None,
            Some(path) => {
                let file = create(path, "--failed")?;
                Some(match (format, header) {
                    (Format::Csv, Some(header)) => {
                        let mut w = csv::WriterBuilder::new().flexible(true).from_writer(file);
                        w.write_byte_record(header).map_err(|e| {
                            CliError::usage(format!("cannot write {}: {e}", path.display()))
                        })?;
                        FailedWriter::Csv(Box::new(w))
                    }
                    _ => FailedWriter::Lines(BufWriter::new(file)),
                })
            }
        };
        let quarantine = match quarantine {
            None => None,
            Some(path) => Some(BufWriter::new(create(path, "--quarantine")?)),
        };
        Ok(Sinks { failed, quarantine })
    }

    fn write_failed(&mut self, raw: &Raw) -> std::io::Result<()> {
        match (&mut self.failed, raw) {
            (None, _) => Ok(()),
            (Some(FailedWriter::Lines(w)), Raw::Line(bytes)) => {
                w.write_all(bytes)?;
                w.write_all(b"\n")
            }
            (Some(FailedWriter::Csv(w)), Raw::Csv(rec)) => {
                w.write_byte_record(rec).map_err(Into::into)
            }
            // A CSV row into a line file cannot happen: the writer follows the input's format.
            (Some(FailedWriter::Lines(w)), raw @ Raw::Csv(_)) => {
                w.write_all(raw.lossy().as_bytes())?;
                w.write_all(b"\n")
            }
            (Some(FailedWriter::Csv(w)), Raw::Line(bytes)) => w
                .write_byte_record(&csv::ByteRecord::from(vec![bytes.as_slice()]))
                .map_err(Into::into),
        }
    }

    fn write_quarantine(&mut self, q: &Quarantined) -> std::io::Result<()> {
        if let Some(w) = &mut self.quarantine {
            serde_json::to_writer(&mut *w, q)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Flushes both files.
    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.failed {
            Some(FailedWriter::Lines(w)) => w.flush()?,
            Some(FailedWriter::Csv(w)) => w.flush()?,
            None => {}
        }
        if let Some(w) = &mut self.quarantine {
            w.flush()?;
        }
        Ok(())
    }
}

/// Latencies in a log-scale histogram: flat memory, percentiles within about 10 %.
#[derive(Debug, Clone)]
pub(crate) struct Latencies {
    buckets: Vec<u64>,
    count: u64,
    max: Duration,
    total: Duration,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            buckets: vec![0; 8 * 40],
            count: 0,
            max: Duration::ZERO,
            total: Duration::ZERO,
        }
    }
}

impl Latencies {
    fn bucket(us: u64) -> usize {
        // 8 buckets per doubling of the latency in microseconds.
        let us = us.max(1) as f64;
        ((us.log2() * 8.0) as usize).min(8 * 40 - 1)
    }

    pub(crate) fn record(&mut self, d: Duration) {
        self.buckets[Self::bucket(d.as_micros() as u64)] += 1;
        self.count += 1;
        self.total += d;
        self.max = self.max.max(d);
    }

    /// The `q` quantile (0..=1), as the upper bound of its bucket, capped at the maximum seen.
    pub(crate) fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let upper_us = 2f64.powf((i + 1) as f64 / 8.0);
                return Duration::from_micros(upper_us as u64).min(self.max);
            }
        }
        self.max
    }

    pub(crate) fn mean(&self) -> Duration {
        if self.count == 0 {
            Duration::ZERO
        } else {
            self.total / self.count as u32
        }
    }

    pub(crate) fn max(&self) -> Duration {
        self.max
    }
}

/// How many failures, and how many quarantined records, the report lists with their reasons.
/// Past it they are counted only, so that memory stays flat however much of the input goes
/// wrong; every one of them is still in the failed file and the quarantine file (with its
/// line and reason).
pub(crate) const LISTED_MAX: usize = 10_000;

/// What happened to every record.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) delivered: u64,
    pub(crate) failed: u64,
    pub(crate) quarantined: u64,
    pub(crate) not_started: u64,
    pub(crate) requests: u64,
    pub(crate) interrupted: bool,
    pub(crate) aborted_in_flight: u64,
    pub(crate) broken_input: Option<String>,
    pub(crate) output_error: Option<String>,
    pub(crate) failures: Vec<Failure>,
    pub(crate) quarantine: Vec<QuarantineEntry>,
    pub(crate) latencies: Latencies,
    pub(crate) elapsed: Duration,
}

impl Tally {
    /// Records read from the input (valid or not).
    pub(crate) fn records(&self) -> u64 {
        self.delivered + self.failed + self.quarantined + self.not_started
    }

    /// True when every record was delivered.
    pub(crate) fn complete(&self) -> bool {
        self.failed == 0
            && self.quarantined == 0
            && self.not_started == 0
            && self.broken_input.is_none()
            && self.output_error.is_none()
    }
}

/// Tuning of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// Units in flight at once.
    pub(crate) concurrency: usize,
    /// Records per unit.
    pub(crate) chunk_size: usize,
}

type Unit = Vec<Meta>;

struct Engine<'a> {
    sinks: &'a mut Sinks,
    progress: &'a Progress,
    tally: Tally,
}

impl Engine<'_> {
    fn io(&mut self, r: std::io::Result<()>) {
        if let Err(e) = r
            && self.tally.output_error.is_none()
        {
            self.tally.output_error = Some(format!("writing an output file failed: {e}"));
        }
    }

    fn fail(&mut self, metas: Unit, reason: &str) {
        for meta in metas {
            let r = self.sinks.write_failed(&meta.raw);
            self.io(r);
            self.tally.failed += 1;
            if self.tally.failures.len() < LISTED_MAX {
                self.tally.failures.push(Failure {
                    line: meta.line,
                    id: meta.key,
                    reason: reason.to_owned(),
                });
            }
        }
    }

    fn not_started(&mut self, meta: &Meta) {
        let r = self.sinks.write_failed(&meta.raw);
        self.io(r);
        self.tally.not_started += 1;
    }

    fn quarantine(&mut self, q: Quarantined) {
        let r = self.sinks.write_quarantine(&q);
        self.io(r);
        self.tally.quarantined += 1;
        if self.tally.quarantine.len() < LISTED_MAX {
            self.tally.quarantine.push(QuarantineEntry {
                line: q.line,
                reason: q.reason,
            });
        }
    }

    fn tick(&self) {
        self.progress.update(&self.tally);
    }
}

/// Runs one job to the end of its input or to an interrupt, and returns the tally.
///
/// `interrupts` yields once per Ctrl-C: the first stops taking new work (records not started go
/// to the failed file) and lets what is in flight finish; the second abandons what is in flight
/// and records it as failed with an unknown outcome.
pub(crate) async fn run<D: Deliver>(
    deliver: Arc<D>,
    mut input: mpsc::Receiver<Input<D::Item>>,
    mut interrupts: mpsc::UnboundedReceiver<()>,
    sinks: &mut Sinks,
    progress: &Progress,
    options: Options,
) -> Tally {
    let start = Instant::now();
    let concurrency = options.concurrency.max(1);
    let chunk_size = options.chunk_size.max(1);
    let mut engine = Engine {
        sinks,
        progress,
        tally: Tally::default(),
    };
    let mut set: JoinSet<(Result<(), String>, Duration)> = JoinSet::new();
    let mut in_flight: HashMap<Id, Unit> = HashMap::new();
    let mut pending_items: Vec<D::Item> = Vec::with_capacity(chunk_size);
    let mut pending_metas: Unit = Vec::with_capacity(chunk_size);
    let mut input_done = false;
    let mut interrupts_open = true;
    let mut interrupt_count = 0u32;

    let spawn = |set: &mut JoinSet<_>,
                 in_flight: &mut HashMap<Id, Unit>,
                 items: Vec<D::Item>,
                 metas: Unit| {
        let d = deliver.clone();
        let handle = set.spawn(async move {
            let t = Instant::now();
            let r = d.deliver(items).await;
            (r, t.elapsed())
        });
        in_flight.insert(handle.id(), metas);
    };

    loop {
        if input_done && set.is_empty() {
            break;
        }
        let taking = !input_done && (engine.tally.interrupted || set.len() < concurrency);
        tokio::select! {
            biased;
            signal = interrupts.recv(), if interrupts_open => {
                let Some(()) = signal else {
                    interrupts_open = false;
                    continue;
                };
                interrupt_count += 1;
                if interrupt_count == 1 {
                    engine.tally.interrupted = true;
                    engine.progress.note(&format!(
                        "interrupted: finishing {} request(s) in flight; records not started go to the failed file \
                         (Ctrl-C again to stop now)",
                        set.len()
                    ));
                    for meta in std::mem::take(&mut pending_metas) {
                        engine.not_started(&meta);
                    }
                    pending_items.clear();
                } else {
                    engine.progress.note("stopping now: requests in flight are recorded as failed (outcome unknown)");
                    set.abort_all();
                }
            }
            joined = set.join_next_with_id(), if !set.is_empty() => {
                let Some(joined) = joined else { continue };
                engine.tally.requests += 1;
                match joined {
                    Ok((id, (result, took))) => {
                        let metas = in_flight.remove(&id).unwrap_or_default();
                        match result {
                            Ok(()) => {
                                engine.tally.latencies.record(took);
                                engine.tally.delivered += metas.len() as u64;
                            }
                            Err(reason) => engine.fail(metas, &reason),
                        }
                    }
                    Err(e) => {
                        let metas = in_flight.remove(&e.id()).unwrap_or_default();
                        let reason = if e.is_cancelled() {
                            engine.tally.aborted_in_flight += metas.len() as u64;
                            "interrupted while in flight: the outcome is unknown".to_owned()
                        } else {
                            format!("delivery task failed: {e}")
                        };
                        engine.fail(metas, &reason);
                    }
                }
                engine.tick();
            }
            msg = input.recv(), if taking => {
                match msg {
                    None => {
                        input_done = true;
                        if !pending_metas.is_empty() {
                            let items = std::mem::take(&mut pending_items);
                            let metas = std::mem::take(&mut pending_metas);
                            spawn(&mut set, &mut in_flight, items, metas);
                        }
                    }
                    Some(Input::Quarantined(q)) => {
                        engine.quarantine(q);
                        engine.tick();
                    }
                    Some(Input::Broken(reason)) => {
                        engine.progress.note(&reason);
                        engine.tally.broken_input = Some(reason);
                    }
                    Some(Input::Record(Record { meta, item })) => {
                        if engine.tally.interrupted {
                            engine.not_started(&meta);
                        } else {
                            pending_metas.push(meta);
                            pending_items.push(item);
                            if pending_metas.len() >= chunk_size {
                                let items = std::mem::replace(&mut pending_items, Vec::with_capacity(chunk_size));
                                let metas = std::mem::replace(&mut pending_metas, Vec::with_capacity(chunk_size));
                                spawn(&mut set, &mut in_flight, items, metas);
                            }
                        }
                    }
                }
            }
        }
    }
    let r = engine.sinks.flush();
    engine.io(r);
    engine.tally.elapsed = start.elapsed();
    engine.tally
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::Raw;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Fails items whose value is odd; counts the most units seen in flight at once.
    #[derive(Default)]
    struct Fake {
        in_flight: AtomicUsize,
        max_in_flight: AtomicUsize,
        units: Mutex<Vec<Vec<u64>>>,
        delay: Duration,
    }

    impl Deliver for Fake {
        type Item = u64;
        async fn deliver(&self, items: Vec<u64>) -> Result<(), String> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.units.lock().unwrap().push(items.clone());
            if items.iter().any(|i| i % 2 == 1) {
                Err(format!("odd: {items:?}"))
            } else {
                Ok(())
            }
        }
    }

    fn record(n: u64) -> Input<u64> {
        Input::Record(Record {
            meta: Meta {
                line: n,
                key: Some(format!("u{n}")),
                raw: Raw::Line(format!("{{\"n\":{n}}}").into_bytes()),
            },
            item: n,
        })
    }

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("gcx-job-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[tokio::test(start_paused = true)]
    async fn every_record_is_accounted_for() {
        let failed = temp("failed1.jsonl");
        let quarantine = temp("q1.jsonl");
        let mut sinks = Sinks::open(Some(&failed), Some(&quarantine), Format::Jsonl, None).unwrap();
        let (tx, rx) = mpsc::channel(4);
        let (_itx, irx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            for n in 1..=20u64 {
                tx.send(record(n * 2)).await.unwrap();
            }
            tx.send(record(41)).await.unwrap();
            tx.send(Input::Quarantined(Quarantined {
                line: 42,
                reason: "malformed JSON".into(),
                raw: "{".into(),
            }))
            .await
            .unwrap();
        });
        let fake = Arc::new(Fake {
            delay: Duration::from_millis(10),
            ..Fake::default()
        });
        let tally = run(
            fake.clone(),
            rx,
            irx,
            &mut sinks,
            &Progress::hidden(),
            Options {
                concurrency: 3,
                chunk_size: 1,
            },
        )
        .await;
        assert_eq!(tally.delivered, 20);
        assert_eq!(tally.failed, 1);
        assert_eq!(tally.quarantined, 1);
        assert_eq!(tally.failures[0].line, 41);
        assert_eq!(tally.failures[0].id.as_deref(), Some("u41"));
        assert!(fake.max_in_flight.load(Ordering::SeqCst) <= 3);
        assert_eq!(std::fs::read_to_string(&failed).unwrap(), "{\"n\":41}\n");
        let q = std::fs::read_to_string(&quarantine).unwrap();
        assert!(
            q.contains("\"line\":42") && q.contains("malformed JSON"),
            "{q}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_listing_cap_records_are_counted_and_written_not_kept() {
        let (failed, quarantine) = (temp("failed-cap.jsonl"), temp("q-cap.jsonl"));
        let mut sinks = Sinks::open(Some(&failed), Some(&quarantine), Format::Jsonl, None).unwrap();
        let n = LISTED_MAX as u64 + 5;
        let (tx, rx) = mpsc::channel(64);
        let (_itx, irx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            for i in 0..n {
                tx.send(record(2 * i + 1)).await.unwrap();
                tx.send(Input::Quarantined(Quarantined {
                    line: 2 * i + 2,
                    reason: "malformed JSON".into(),
                    raw: "{".into(),
                }))
                .await
                .unwrap();
            }
        });
        let options = Options {
            concurrency: 8,
            chunk_size: 1,
        };
        let tally = run(
            Arc::new(Fake::default()),
            rx,
            irx,
            &mut sinks,
            &Progress::hidden(),
            options,
        )
        .await;
        drop(sinks);
        assert_eq!((tally.failed, tally.quarantined), (n, n));
        assert_eq!(tally.failures.len(), LISTED_MAX);
        assert_eq!(tally.quarantine.len(), LISTED_MAX);
        let lines = |p: &std::path::Path| std::fs::read_to_string(p).unwrap().lines().count();
        assert_eq!(
            lines(&failed) as u64,
            n,
            "every failed item is in the failed file"
        );
        assert_eq!(
            lines(&quarantine) as u64,
            n,
            "every quarantined record is in its file"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn chunks_fail_as_a_whole() {
        let mut sinks = Sinks::default();
        let (tx, rx) = mpsc::channel(4);
        let (_itx, irx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            for n in [2, 4, 6, 7, 8] {
                tx.send(record(n)).await.unwrap();
            }
        });
        let fake = Arc::new(Fake::default());
        let tally = run(
            fake.clone(),
            rx,
            irx,
            &mut sinks,
            &Progress::hidden(),
            Options {
                concurrency: 1,
                chunk_size: 2,
            },
        )
        .await;
        assert_eq!(
            *fake.units.lock().unwrap(),
            vec![vec![2, 4], vec![6, 7], vec![8]]
        );
        assert_eq!(tally.delivered, 3);
        assert_eq!(tally.failed, 2);
        assert_eq!(tally.requests, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn an_interrupt_finishes_in_flight_and_keeps_the_rest() {
        let failed = temp("failed2.jsonl");
        let mut sinks = Sinks::open(Some(&failed), None, Format::Jsonl, None).unwrap();
        let (tx, rx) = mpsc::channel(2);
        let (itx, irx) = mpsc::unbounded_channel();
        let fake = Arc::new(Fake {
            delay: Duration::from_secs(1),
            ..Fake::default()
        });
        tokio::spawn(async move {
            for n in 1..=10u64 {
                tx.send(record(n * 2)).await.unwrap();
            }
        });
        tokio::spawn(async move {
            // Two units of two are in flight by then.
            tokio::time::sleep(Duration::from_millis(500)).await;
            itx.send(()).unwrap();
        });
        let tally = run(
            fake.clone(),
            rx,
            irx,
            &mut sinks,
            &Progress::hidden(),
            Options {
                concurrency: 2,
                chunk_size: 1,
            },
        )
        .await;
        assert!(tally.interrupted);
        assert_eq!(tally.delivered, 2, "the two in flight finish");
        assert_eq!(tally.not_started, 8);
        assert_eq!(tally.records(), 10);
        let lines = std::fs::read_to_string(&failed).unwrap();
        assert_eq!(lines.lines().count(), 8);
        assert!(lines.contains("{\"n\":20}"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_second_interrupt_abandons_in_flight_as_failed() {
        let (tx, rx) = mpsc::channel(2);
        let (itx, irx) = mpsc::unbounded_channel();
        let fake = Arc::new(Fake {
            delay: Duration::from_secs(60),
            ..Fake::default()
        });
        tokio::spawn(async move {
            for n in 1..=3u64 {
                tx.send(record(n * 2)).await.unwrap();
            }
        });
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            itx.send(()).unwrap();
            itx.send(()).unwrap();
        });
        let tally = run(
            fake,
            rx,
            irx,
            &mut Sinks::default(),
            &Progress::hidden(),
            Options {
                concurrency: 1,
                chunk_size: 1,
            },
        )
        .await;
        assert_eq!(tally.failed, 1);
        assert_eq!(tally.aborted_in_flight, 1);
        assert!(tally.failures[0].reason.contains("outcome is unknown"));
        assert_eq!(tally.not_started, 2);
    }

    #[test]
    fn latency_quantiles_are_close() {
        let mut l = Latencies::default();
        for ms in 1..=100u64 {
            l.record(Duration::from_millis(ms));
        }
        let p50 = l.quantile(0.5).as_secs_f64() * 1000.0;
        assert!((45.0..=56.0).contains(&p50), "{p50}");
        assert_eq!(l.quantile(1.0), Duration::from_millis(100));
    }
}
