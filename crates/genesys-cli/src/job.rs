//! The job engine: takes records from the input channel, groups them into units (one record, or
//! a chunk for ingestion), keeps at most `concurrency` units in flight, and accounts for every
//! record: delivered, failed (with the reason, written to the failed file), outcome unknown
//! (written to the unknown file), quarantined, or not started because the run was interrupted
//! (also written to the failed file). With a journal, a job killed at any moment is resumed by
//! the same command. Nothing is lost and nothing is applied twice.
//!
//! Delivery itself is behind [`Deliver`], so the engine is tested with a fake and wired to the
//! real client by the commands.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::{Id, JoinSet};

use crate::input::{Input, Meta, Quarantined, Record};
use crate::journal::{Journal, JournalHandle, UnitState};
use crate::progress::Progress;
use crate::sinks::Sinks;
use crate::tally::{Failure, LISTED_MAX, QuarantineEntry, Tally};

/// What the engine may do with a unit whose earlier attempt has an unknown outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replay {
    /// Sending it again is safe: the deliverer resolves it (a user is read back first; an
    /// ingestion chunk carries the same key, which the endpoint deduplicates).
    Safe,
    /// Never sent again automatically (a data action runs again if sent again): its start is on
    /// disk before its request leaves, and an unknown outcome is listed, not replayed.
    Never,
}

/// What the deliverer is told about the unit it sends.
#[derive(Debug, Clone)]
pub(crate) struct UnitCtx {
    /// The line of the unit's first record.
    pub(crate) line: u64,
    /// The unit's idempotency key: the same in every run of the job.
    pub(crate) key: String,
    /// True when an earlier run may have applied this unit: resolve before applying.
    pub(crate) resumed: bool,
    /// The job's journal, for notes such as the version a user is patched with.
    pub(crate) journal: Option<JournalHandle>,
}

/// Why a unit was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Undelivered {
    /// It failed, and nothing was applied: safe to send again.
    Failed(String),
    /// It may have been applied: the outcome is unknown.
    Unknown(String),
    /// It was not sent at all (its start could not be recorded).
    NotSent(String),
    /// The login host refused the credentials: nothing was sent, and nothing more can be. The
    /// whole job stops.
    CredentialsRefused(String),
}

impl Undelivered {
    /// A failure from the client, sorted by whether its outcome is known.
    pub(crate) fn from_error(e: &genesys_client::GenesysError) -> Self {
        // A 401 that outlived the stack's one re-send with a fresh token: the credentials (or a
        // ready token) do not work, for this record or any other.
        let refused = match e {
            genesys_client::GenesysError::OAuth(oauth) => oauth.is_bad_credentials(),
            _ => e.status() == Some(http::StatusCode::UNAUTHORIZED),
        };
        if refused {
            Undelivered::CredentialsRefused(e.to_string())
        } else if e.is_outcome_unknown() {
            Undelivered::Unknown(e.to_string())
        } else {
            Undelivered::Failed(e.to_string())
        }
    }
}

/// Delivers one unit of work: one record, or one chunk of records sent in one request.
pub(crate) trait Deliver: Send + Sync + 'static {
    /// What one record becomes once parsed.
    type Item: Send + 'static;

    /// Whether a unit whose outcome is unknown may be sent again.
    const REPLAY: Replay;

    /// Sends `items` (one request for the whole unit). On `Err`, every item of the unit counts
    /// as the error says.
    fn deliver(
        &self,
        unit: UnitCtx,
        items: Vec<Self::Item>,
    ) -> impl Future<Output = Result<(), Undelivered>> + Send;
}

/// Tuning of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Options {
    /// Units in flight at once.
    pub(crate) concurrency: usize,
    /// Records per unit.
    pub(crate) chunk_size: usize,
    /// Send units again whose earlier outcome is unknown, even when [`Replay::Never`].
    pub(crate) retry_unknown: bool,
    /// After a first interrupt, how long units in flight may take to finish (the client's
    /// attempt timeout); past it they are abandoned as outcome unknown, like after a second.
    pub(crate) grace: Duration,
}

type Unit = Vec<Meta>;

/// The job's journal as the engine sees it: earlier runs' states and the writer.
pub(crate) struct JobJournal<'a> {
    pub(crate) journal: &'a Journal,
    pub(crate) handle: JournalHandle,
}

struct Engine<'a> {
    sinks: &'a mut Sinks,
    progress: &'a Progress,
    journal: Option<JobJournal<'a>>,
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

    fn list(&mut self, meta: &Meta, reason: &str) {
        if self.tally.failures.len() < LISTED_MAX {
            self.tally.failures.push(Failure {
                line: meta.line,
                id: meta.key.clone(),
                reason: reason.to_owned(),
            });
        }
    }

    fn fail(&mut self, metas: &[Meta], reason: &str) {
        if let (Some(j), Some(first)) = (&self.journal, metas.first()) {
            j.handle.failed(first.line, reason);
        }
        for meta in metas {
            let r = self.sinks.write_failed(&meta.raw);
            self.io(r);
            self.tally.failed += 1;
            self.list(meta, reason);
        }
    }

    fn unknown(&mut self, metas: &[Meta], reason: &str, journal: bool) {
        if journal && let (Some(j), Some(first)) = (&self.journal, metas.first()) {
            j.handle.unknown(first.line, reason);
        }
        for meta in metas {
            let r = self.sinks.write_unknown(&meta.raw);
            self.io(r);
            self.tally.unknown += 1;
            if self.tally.unknowns.len() < LISTED_MAX {
                self.tally.unknowns.push(Failure {
                    line: meta.line,
                    id: meta.key.clone(),
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

    /// Records the end of a unit that was sent.
    fn settle(&mut self, metas: &[Meta], result: Result<(), Undelivered>, took: Duration) {
        let first = metas.first().map_or(0, |m| m.line);
        match result {
            Ok(()) => {
                if let Some(j) = &self.journal {
                    j.handle.done(first);
                }
                self.tally.latencies.record(took);
                self.tally.delivered += metas.len() as u64;
            }
            Err(Undelivered::Failed(reason)) => self.fail(metas, &reason),
            Err(Undelivered::Unknown(reason)) => self.unknown(metas, &reason, true),
            Err(Undelivered::NotSent(reason)) => {
                for meta in metas {
                    self.not_started(meta);
                    self.list(meta, &reason);
                }
            }
            Err(Undelivered::CredentialsRefused(reason)) => {
                for meta in metas {
                    self.not_started(meta);
                }
                if self.tally.credentials_refused.is_none() {
                    self.progress.note(&format!(
                        "{reason}: stopping the job (nothing more is sent)"
                    ));
                    self.tally.credentials_refused = Some(reason);
                }
            }
        }
    }

    /// The journal could not be written: a resume would not be safe past this point, so the
    /// run stops taking work (like a first Ctrl-C) and says why.
    fn journal_broken(&mut self) -> bool {
        let Some(e) = self.journal.as_ref().and_then(|j| j.handle.error()) else {
            return false;
        };
        if self.tally.journal_error.is_none() {
            self.tally.journal_error = Some(e.to_owned());
            self.progress.note(&format!(
                "{e}: stopping (records not started go to the failed file)"
            ));
        }
        true
    }

    fn tick(&self) {
        self.progress.update(&self.tally);
    }
}

/// What the engine decided for a unit it just formed.
enum Decision {
    Send { resumed: bool },
    Skip,
    ListUnknown,
}

fn decide<D: Deliver>(
    journal: Option<&JobJournal<'_>>,
    line: u64,
    retry_unknown: bool,
) -> Decision {
    let Some(j) = journal else {
        return Decision::Send { resumed: false };
    };
    let past = &j.journal.past;
    match past.state(line) {
        UnitState::Done => Decision::Skip,
        UnitState::Started | UnitState::Unknown if D::REPLAY == Replay::Never && !retry_unknown => {
            Decision::ListUnknown
        }
        // For a unit that may be resent, a missing start entry proves nothing (starts are not
        // synced one by one), so everything of a resumed job is resolved before it is applied.
        _ => Decision::Send {
            resumed: past.resumed(),
        },
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Runs one job to the end of its input or to an interrupt, and returns the tally.
///
/// `interrupts` yields once per Ctrl-C: the first stops taking new work (records not started go
/// to the failed file) and lets what is in flight finish within `options.grace`; the second (or
/// the end of the grace) abandons what is in flight and records it as outcome unknown (the
/// unknown file), never as not started.
///
/// With a journal, every unit's start and outcome is journaled; units an earlier run delivered
/// are skipped, and units whose earlier outcome is unknown are resolved ([`Replay::Safe`]) or
/// listed as unknown ([`Replay::Never`], unless `retry_unknown`).
pub(crate) async fn run<D: Deliver>(
    deliver: Arc<D>,
    mut input: mpsc::Receiver<Input<D::Item>>,
    mut interrupts: mpsc::UnboundedReceiver<()>,
    sinks: &mut Sinks,
    progress: &Progress,
    journal: Option<&Journal>,
    options: Options,
) -> Tally {
    let start = Instant::now();
    let concurrency = options.concurrency.max(1);
    let chunk_size = options.chunk_size.max(1);
    let mut engine = Engine {
        sinks,
        progress,
        journal: journal.map(|journal| JobJournal {
            journal,
            handle: journal.handle(),
        }),
        tally: Tally::default(),
    };
    let mut set: JoinSet<(Result<(), Undelivered>, Duration)> = JoinSet::new();
    let mut in_flight: HashMap<Id, Unit> = HashMap::new();
    let mut pending_items: Vec<D::Item> = Vec::with_capacity(chunk_size);
    let mut pending_metas: Unit = Vec::with_capacity(chunk_size);
    let mut input_done = false;
    let mut interrupts_open = true;
    let mut interrupt_count = 0u32;
    let mut stopping = false;
    let mut grace_ends: Option<tokio::time::Instant> = None;

    // Forms a unit: skipped (delivered earlier), listed as unknown, or sent.
    let dispatch = |engine: &mut Engine<'_>,
                    set: &mut JoinSet<_>,
                    in_flight: &mut HashMap<Id, Unit>,
                    items: Vec<D::Item>,
                    metas: Unit| {
        let Some(line) = metas.first().map(|m| m.line) else {
            return;
        };
        match decide::<D>(engine.journal.as_ref(), line, options.retry_unknown) {
            Decision::Skip => {
                engine.tally.delivered += metas.len() as u64;
                engine.tally.delivered_earlier += metas.len() as u64;
            }
            Decision::ListUnknown => {
                let reason = "outcome unknown in an earlier run; not executed again \
                              (check it, then re-run with --retry-unknown to execute it)";
                // Journaled as unknown once, so the journal says it plainly.
                let started = engine
                    .journal
                    .as_ref()
                    .is_some_and(|j| j.journal.past.state(line) == UnitState::Started);
                engine.unknown(&metas, reason, started);
            }
            Decision::Send { resumed } => {
                let key = engine
                    .journal
                    .as_ref()
                    .map_or_else(|| format!("gcx-{line}"), |j| j.journal.key(line));
                let handle = engine.journal.as_ref().map(|j| j.handle.clone());
                if let Some(h) = &handle {
                    h.start(line, metas.len(), &key);
                }
                let ctx = UnitCtx {
                    line,
                    key,
                    resumed,
                    journal: handle,
                };
                let d = deliver.clone();
                let task = set.spawn(async move {
                    if D::REPLAY == Replay::Never
                        && let Some(h) = &ctx.journal
                        && let Err(e) = h.sync().await
                    {
                        let why = format!("not sent: the journal could not record its start ({e})");
                        return (Err(Undelivered::NotSent(why)), Duration::ZERO);
                    }
                    let t = Instant::now();
                    let r = d.deliver(ctx, items).await;
                    (r, t.elapsed())
                });
                in_flight.insert(task.id(), metas);
                engine.tally.requests += 1;
            }
        }
    };

    loop {
        if input_done && set.is_empty() {
            break;
        }
        if !stopping && (engine.journal_broken() || engine.tally.credentials_refused.is_some()) {
            stopping = true;
            for meta in std::mem::take(&mut pending_metas) {
                engine.not_started(&meta);
            }
            pending_items.clear();
        }
        let taking = !input_done && (stopping || set.len() < concurrency);
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
                    stopping = true;
                    grace_ends = Some(tokio::time::Instant::now() + options.grace);
                    let resume = engine.journal.as_ref().map_or(String::new(), |j| {
                        format!("; the journal {} resumes the rest", j.journal.path.display())
                    });
                    engine.progress.note(&format!(
                        "interrupted: finishing {} request(s) in flight; records not started go to the failed file{resume} \
                         (Ctrl-C again to stop now)",
                        set.len()
                    ));
                    for meta in std::mem::take(&mut pending_metas) {
                        engine.not_started(&meta);
                    }
                    pending_items.clear();
                } else {
                    engine.progress.note("stopping now: requests in flight are recorded as outcome unknown");
                    set.abort_all();
                    grace_ends = None;
                }
            }
            () = sleep_until(grace_ends), if grace_ends.is_some() && !set.is_empty() => {
                engine.progress.note(&format!(
                    "{} request(s) still in flight after {:?}: recorded as outcome unknown",
                    set.len(),
                    options.grace
                ));
                set.abort_all();
                grace_ends = None;
            }
            joined = set.join_next_with_id(), if !set.is_empty() => {
                let Some(joined) = joined else { continue };
                match joined {
                    Ok((id, (result, took))) => {
                        let metas = in_flight.remove(&id).unwrap_or_default();
                        engine.settle(&metas, result, took);
                    }
                    Err(e) => {
                        let metas = in_flight.remove(&e.id()).unwrap_or_default();
                        let reason = if e.is_cancelled() {
                            engine.tally.aborted_in_flight += metas.len() as u64;
                            "interrupted while in flight: the outcome is unknown".to_owned()
                        } else {
                            format!("delivery task failed, the outcome is unknown: {e}")
                        };
                        engine.unknown(&metas, &reason, true);
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
                            dispatch(&mut engine, &mut set, &mut in_flight, items, metas);
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
                        if stopping {
                            engine.not_started(&meta);
                        } else {
                            pending_metas.push(meta);
                            pending_items.push(item);
                            if pending_metas.len() >= chunk_size {
                                let items = std::mem::replace(&mut pending_items, Vec::with_capacity(chunk_size));
                                let metas = std::mem::replace(&mut pending_metas, Vec::with_capacity(chunk_size));
                                dispatch(&mut engine, &mut set, &mut in_flight, items, metas);
                                engine.tick();
                            }
                        }
                    }
                }
            }
        }
    }
    let r = engine.sinks.flush();
    engine.io(r);
    engine.journal_broken();
    engine.tally.elapsed = start.elapsed();
    engine.tally
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::{Format, Raw};
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
        const REPLAY: Replay = Replay::Never;
        async fn deliver(&self, _unit: UnitCtx, items: Vec<u64>) -> Result<(), Undelivered> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.units.lock().unwrap().push(items.clone());
            if items.iter().any(|i| i % 2 == 1) {
                Err(Undelivered::Failed(format!("odd: {items:?}")))
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
        let mut sinks =
            Sinks::open(Some(&failed), None, Some(&quarantine), Format::Jsonl, None).unwrap();
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
            None,
            Options {
                concurrency: 3,
                chunk_size: 1,
                retry_unknown: false,
                grace: Duration::from_secs(60),
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
        let mut sinks =
            Sinks::open(Some(&failed), None, Some(&quarantine), Format::Jsonl, None).unwrap();
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
            retry_unknown: false,
            grace: Duration::from_secs(60),
        };
        let tally = run(
            Arc::new(Fake::default()),
            rx,
            irx,
            &mut sinks,
            &Progress::hidden(),
            None,
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
            None,
            Options {
                concurrency: 1,
                chunk_size: 2,
                retry_unknown: false,
                grace: Duration::from_secs(60),
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
        let mut sinks = Sinks::open(Some(&failed), None, None, Format::Jsonl, None).unwrap();
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
            None,
            Options {
                concurrency: 2,
                chunk_size: 1,
                retry_unknown: false,
                grace: Duration::from_secs(60),
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
            None,
            Options {
                concurrency: 1,
                chunk_size: 1,
                retry_unknown: false,
                grace: Duration::from_secs(60),
            },
        )
        .await;
        assert_eq!((tally.failed, tally.unknown), (0, 1), "never as failed");
        assert_eq!(tally.aborted_in_flight, 1);
        assert!(tally.unknowns[0].reason.contains("outcome is unknown"));
        assert_eq!(tally.not_started, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_units_that_outlast_the_grace_are_unknown() {
        let (tx, rx) = mpsc::channel(2);
        let (itx, irx) = mpsc::unbounded_channel();
        let fake = Arc::new(Fake {
            delay: Duration::from_secs(600),
            ..Fake::default()
        });
        tokio::spawn(async move {
            for n in 1..=4u64 {
                tx.send(record(n * 2)).await.unwrap();
            }
        });
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            itx.send(()).unwrap();
        });
        let started = tokio::time::Instant::now();
        let tally = run(
            fake,
            rx,
            irx,
            &mut Sinks::default(),
            &Progress::hidden(),
            None,
            Options {
                concurrency: 2,
                chunk_size: 1,
                retry_unknown: false,
                grace: Duration::from_secs(30),
            },
        )
        .await;
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(31),
            "1 s, then the grace"
        );
        assert_eq!((tally.unknown, tally.not_started), (2, 2));
        assert_eq!(tally.delivered, 0);
    }

    /// Refuses the credentials from the third unit on.
    #[derive(Default)]
    struct Refusing(AtomicUsize);

    impl Deliver for Refusing {
        type Item = u64;
        const REPLAY: Replay = Replay::Safe;
        async fn deliver(&self, _unit: UnitCtx, _items: Vec<u64>) -> Result<(), Undelivered> {
            if self.0.fetch_add(1, Ordering::SeqCst) >= 2 {
                Err(Undelivered::CredentialsRefused("invalid_client".into()))
            } else {
                Ok(())
            }
        }
    }

    #[tokio::test]
    async fn refused_credentials_stop_the_whole_job() {
        let (tx, rx) = mpsc::channel(2);
        let (_itx, irx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            for n in 1..=50u64 {
                let _ = tx.send(record(n)).await;
            }
        });
        let refusing = Arc::new(Refusing::default());
        let tally = run(
            refusing.clone(),
            rx,
            irx,
            &mut Sinks::default(),
            &Progress::hidden(),
            None,
            Options {
                concurrency: 1,
                chunk_size: 1,
                retry_unknown: false,
                grace: Duration::from_secs(60),
            },
        )
        .await;
        assert_eq!(refusing.0.load(Ordering::SeqCst), 3, "nothing more is sent");
        assert_eq!(tally.delivered, 2);
        assert_eq!(tally.not_started, 48);
        assert!(tally.credentials_refused.is_some());
        assert!(!tally.complete());
    }

    /// Records each unit it is given with its key and whether it was told to resolve first.
    #[derive(Default)]
    struct Recorder<const NEVER: bool> {
        seen: Mutex<Vec<(u64, String, bool)>>,
    }

    impl<const NEVER: bool> Deliver for Recorder<NEVER> {
        type Item = u64;
        const REPLAY: Replay = if NEVER { Replay::Never } else { Replay::Safe };
        async fn deliver(&self, unit: UnitCtx, items: Vec<u64>) -> Result<(), Undelivered> {
            self.seen
                .lock()
                .unwrap()
                .push((items[0], unit.key.clone(), unit.resumed));
            match items[0] {
                3 => Err(Undelivered::Unknown("reset after sending".into())),
                4 => Err(Undelivered::Failed("404".into())),
                _ => Ok(()),
            }
        }
    }

    async fn run_journaled<D: Deliver<Item = u64>>(
        d: Arc<D>,
        journal: &Journal,
        lines: u64,
        retry_unknown: bool,
    ) -> Tally {
        let (tx, rx) = mpsc::channel(4);
        let (_itx, irx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            for n in 1..=lines {
                tx.send(record(n)).await.unwrap();
            }
        });
        run(
            d,
            rx,
            irx,
            &mut Sinks::default(),
            &Progress::hidden(),
            Some(journal),
            Options {
                concurrency: 2,
                chunk_size: 1,
                retry_unknown,
                grace: Duration::from_secs(60),
            },
        )
        .await
    }

    fn job_spec(name: &str) -> (crate::journal::JobSpec, std::path::PathBuf) {
        let input = temp(&format!("{name}.jsonl"));
        std::fs::write(&input, "1\n2\n3\n4\n5\n").unwrap();
        let spec = crate::journal::JobSpec::new("actions execute", &input, Some("a"), 1).unwrap();
        (spec, temp(&format!("{name}.journal")))
    }

    #[tokio::test]
    async fn a_resumed_job_skips_what_was_delivered_and_never_replays_an_unknown_action() {
        use crate::journal::OpenMode;
        let (spec, path) = job_spec("resume-never");
        let journal = Journal::open(&path, &spec, OpenMode::Fresh).unwrap();
        let first = Arc::new(Recorder::<true>::default());
        let tally = run_journaled(first.clone(), &journal, 5, false).await;
        assert_eq!((tally.delivered, tally.unknown, tally.failed), (3, 1, 1));
        journal.close("incomplete").await.unwrap();
        let keys: Vec<String> = first
            .seen
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.1.clone())
            .collect();

        let journal = Journal::open(&path, &spec, OpenMode::Resume).unwrap();
        let second = Arc::new(Recorder::<true>::default());
        let tally = run_journaled(second.clone(), &journal, 5, false).await;
        let seen = second.seen.lock().unwrap().clone();
        assert_eq!(
            seen.iter().map(|s| s.0).collect::<Vec<_>>(),
            vec![4],
            "only the definite failure is sent again"
        );
        assert!(keys.contains(&seen[0].1), "with the same key as before");
        assert_eq!((tally.delivered, tally.delivered_earlier), (3, 3));
        assert_eq!(tally.unknown, 1, "the unknown one is listed again");
        assert!(tally.unknowns[0].reason.contains("--retry-unknown"));
        journal.close("incomplete").await.unwrap();

        let journal = Journal::open(&path, &spec, OpenMode::Resume).unwrap();
        let third = Arc::new(Recorder::<true>::default());
        run_journaled(third.clone(), &journal, 5, true).await;
        let sent: Vec<u64> = third.seen.lock().unwrap().iter().map(|s| s.0).collect();
        assert!(sent.contains(&3), "--retry-unknown sends it: {sent:?}");
        journal.close("incomplete").await.unwrap();
    }

    #[tokio::test]
    async fn a_resumed_job_resolves_units_that_may_be_resent() {
        use crate::journal::OpenMode;
        let (spec, path) = job_spec("resume-safe");
        let journal = Journal::open(&path, &spec, OpenMode::Fresh).unwrap();
        let first = Arc::new(Recorder::<false>::default());
        run_journaled(first.clone(), &journal, 5, false).await;
        assert!(
            first.seen.lock().unwrap().iter().all(|s| !s.2),
            "nothing to resolve at first"
        );
        // Killed after the last sync, before its end was written.
        journal.handle().sync().await.unwrap();
        drop(journal);
        let journal = Journal::open(&path, &spec, OpenMode::Resume).unwrap();
        let second = Arc::new(Recorder::<false>::default());
        let tally = run_journaled(second.clone(), &journal, 5, false).await;
        let mut seen = second.seen.lock().unwrap().clone();
        seen.sort();
        assert_eq!(
            seen.iter().map(|s| (s.0, s.2)).collect::<Vec<_>>(),
            vec![(3, true), (4, true)],
            "the unknown and the failed one are sent, told to resolve first"
        );
        assert_eq!(tally.delivered_earlier, 3);
        journal.close("incomplete").await.unwrap();
    }
}
