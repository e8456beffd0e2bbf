//! Tests of `job`.
use super::*;
use crate::input::{Format, Raw};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Fails items whose value is odd; counts the most units seen in flight at once.
#[derive(Default)]
struct Fake {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    units: Mutex<Vec<Vec<u64>>>,
    delay: Duration,
    /// Sends as a watched client does: its request leaves after this wait (for pacing, say),
    /// then takes `delay`.
    leaves_after: Option<Duration>,
}

impl Deliver for Fake {
    type Item = u64;
    const REPLAY: Replay = Replay::Never;
    fn watches_departures(&self) -> bool {
        self.leaves_after.is_some()
    }
    async fn deliver(&self, _unit: UnitCtx, items: Vec<u64>) -> Result<(), Undelivered> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        if let Some(wait) = self.leaves_after {
            tokio::time::sleep(wait).await;
            crate::departures::leave();
        }
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
            shard: None,
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

/// Answers even items as not sent (as when the journal cannot record their start), and fails
/// odd ones.
struct NotSentOrFailed;

impl Deliver for NotSentOrFailed {
    type Item = u64;
    const REPLAY: Replay = Replay::Never;
    async fn deliver(&self, _unit: UnitCtx, items: Vec<u64>) -> Result<(), Undelivered> {
        match items.iter().all(|i| i % 2 == 0) {
            true => Err(Undelivered::NotSent("not sent: the journal is full".into())),
            false => Err(Undelivered::Failed(format!("odd: {items:?}"))),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn failures_past_the_listing_cap_are_counted_when_records_not_started_fill_it() {
    let mut sinks = Sinks::open(None, None, None, Format::Jsonl, None).unwrap();
    // The listing fills with records not started, then 5 fail.
    let n = LISTED_MAX as u64;
    let inputs = (1..=n)
        .map(|i| record(2 * i))
        .chain((0..5).map(|i| record(2 * i + 1)));
    let tally = run_inputs(Arc::new(NotSentOrFailed), inputs, &mut sinks, 1).await;
    assert_eq!((tally.not_started, tally.failed), (n, 5));
    assert_eq!(tally.failures.len(), LISTED_MAX, "listed with their reason");
    assert_eq!(
        tally.failures_not_listed(),
        5,
        "failed, not listed, and not counted"
    );
}

/// Runs `inputs` as a job of chunks of one, `concurrency` at a time, through `deliver`.
async fn run_inputs<D: Deliver<Item = u64>>(
    deliver: Arc<D>,
    inputs: impl IntoIterator<Item = Input<u64>, IntoIter: Send + 'static>,
    sinks: &mut Sinks,
    concurrency: usize,
) -> Tally {
    let (tx, rx) = mpsc::channel(64);
    let (_itx, irx) = mpsc::unbounded_channel();
    let inputs = inputs.into_iter();
    tokio::spawn(async move {
        for input in inputs {
            tx.send(input).await.unwrap();
        }
    });
    let options = Options {
        concurrency,
        chunk_size: 1,
        retry_unknown: false,
        grace: Duration::from_secs(60),
        shard: None,
    };
    let progress = Progress::hidden();
    run(deliver, rx, irx, sinks, &progress, None, options).await
}

#[tokio::test(start_paused = true)]
async fn past_the_listing_cap_records_are_counted_and_written_not_kept() {
    let (failed, quarantine) = (temp("failed-cap.jsonl"), temp("q-cap.jsonl"));
    let mut sinks =
        Sinks::open(Some(&failed), None, Some(&quarantine), Format::Jsonl, None).unwrap();
    let n = LISTED_MAX as u64 + 5;
    let inputs = (0..n).flat_map(|i| {
        [
            record(2 * i + 1),
            Input::Quarantined(Quarantined {
                line: 2 * i + 2,
                reason: "malformed JSON".into(),
                raw: "{".into(),
            }),
        ]
    });
    let tally = run_inputs(Arc::new(Fake::default()), inputs, &mut sinks, 8).await;
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
            shard: None,
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

/// `records` even records for a [`Fake`] that takes `delay` a unit, and `signals` sent `at`
/// after the start.
fn interrupted(
    records: u64,
    delay: Duration,
    at: Duration,
    signals: &[Interrupt],
) -> (
    Arc<Fake>,
    mpsc::Receiver<Input<u64>>,
    mpsc::UnboundedReceiver<Interrupt>,
) {
    let (tx, rx) = mpsc::channel(2);
    let (itx, irx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        for n in 1..=records {
            tx.send(record(n * 2)).await.unwrap();
        }
    });
    let signals = signals.to_vec();
    tokio::spawn(async move {
        tokio::time::sleep(at).await;
        for signal in signals {
            itx.send(signal).unwrap();
        }
    });
    let fake = Arc::new(Fake {
        delay,
        ..Fake::default()
    });
    (fake, rx, irx)
}

#[tokio::test(start_paused = true)]
async fn an_interrupt_finishes_in_flight_and_keeps_the_rest() {
    let failed = temp("failed2.jsonl");
    let mut sinks = Sinks::open(Some(&failed), None, None, Format::Jsonl, None).unwrap();
    // Two units of two are in flight when it comes.
    let (fake, rx, irx) = interrupted(
        10,
        Duration::from_secs(1),
        Duration::from_millis(500),
        &[Interrupt::CtrlC],
    );
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
            shard: None,
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

/// A run of `fake` over `rx`, a record a unit, `concurrency` of them at once, with `grace` after
/// a first interrupt, no journal and no files.
async fn run_units(
    fake: Arc<Fake>,
    rx: mpsc::Receiver<Input<u64>>,
    irx: mpsc::UnboundedReceiver<Interrupt>,
    concurrency: usize,
    grace: Duration,
) -> Tally {
    let options = Options {
        concurrency,
        chunk_size: 1,
        retry_unknown: false,
        grace,
        shard: None,
    };
    let progress = Progress::hidden();
    run(
        fake,
        rx,
        irx,
        &mut Sinks::default(),
        &progress,
        None,
        options,
    )
    .await
}

#[tokio::test(start_paused = true)]
async fn a_second_interrupt_abandons_in_flight_as_failed() {
    let (fake, rx, irx) = interrupted(
        3,
        Duration::from_secs(60),
        Duration::from_secs(1),
        &[Interrupt::CtrlC, Interrupt::CtrlC],
    );
    let tally = run_units(fake, rx, irx, 1, Duration::from_secs(60)).await;
    assert_eq!((tally.failed, tally.unknown), (0, 1), "never as failed");
    assert_eq!(tally.aborted_in_flight, 1);
    assert!(tally.unknowns[0].reason.contains("outcome is unknown"));
    assert_eq!(tally.not_started, 2);
}

/// Units in flight past the grace after a first interrupt are abandoned as unknown: the whole
/// grace after Ctrl-C, at most [`TERM_GRACE`] after SIGTERM (a scheduler's SIGKILL follows it).
#[tokio::test(start_paused = true)]
async fn in_flight_units_that_outlast_the_grace_are_unknown() {
    for (signal, grace, ends_after) in [
        (Interrupt::CtrlC, 30, 30),
        (Interrupt::Term, 60, TERM_GRACE.as_secs()),
        (Interrupt::Term, 10, 10),
    ] {
        let (fake, rx, irx) = interrupted(
            4,
            Duration::from_secs(600),
            Duration::from_secs(1),
            &[signal],
        );
        let started = tokio::time::Instant::now();
        let tally = run_units(fake, rx, irx, 2, Duration::from_secs(grace)).await;
        assert_eq!(
            started.elapsed(),
            Duration::from_secs(1 + ends_after),
            "{signal:?}, grace {grace} s: 1 s, then the grace"
        );
        assert_eq!((tally.unknown, tally.not_started), (2, 2));
        assert_eq!(tally.delivered, 0);
    }
}

/// A unit stopped in flight by the end of the grace is listed as not sent when its request had
/// not left yet (it waited for pacing, say), so that the next run sends it; one whose request
/// left is unknown, never sent again without a look.
#[tokio::test(start_paused = true)]
async fn units_stopped_before_their_request_left_are_not_sent() {
    for (leaves_after, unknown, not_started) in [(600, 0, 4), (0, 2, 2)] {
        let (fake, rx, irx) = interrupted(
            4,
            Duration::from_secs(600),
            Duration::from_secs(1),
            &[Interrupt::CtrlC],
        );
        let fake = Arc::new(Fake {
            delay: fake.delay,
            leaves_after: Some(Duration::from_secs(leaves_after)),
            ..Fake::default()
        });
        let tally = run_units(fake, rx, irx, 2, Duration::from_secs(30)).await;
        assert_eq!(
            (tally.unknown, tally.not_started, tally.delivered),
            (unknown, not_started, 0),
            "leaving after {leaves_after} s"
        );
        let reasons: Vec<&str> = tally.failures.iter().map(|f| f.reason.as_str()).collect();
        match unknown {
            0 => assert_eq!(
                reasons, ["not sent: interrupted before its request left"; 2],
                "the two stopped in flight are listed, not-started"
            ),
            _ => assert!(reasons.is_empty(), "{reasons:?}"),
        }
    }
}

/// From the third unit on, refuses the credentials (`true`), or finds the login host
/// unavailable for too long (`false`).
#[derive(Default)]
struct Refusing<const REFUSED: bool>(AtomicUsize);

impl<const REFUSED: bool> Deliver for Refusing<REFUSED> {
    type Item = u64;
    const REPLAY: Replay = Replay::Safe;
    async fn deliver(&self, _unit: UnitCtx, _items: Vec<u64>) -> Result<(), Undelivered> {
        if self.0.fetch_add(1, Ordering::SeqCst) < 2 {
            Ok(())
        } else if REFUSED {
            Err(Undelivered::CredentialsRefused("invalid_client".into()))
        } else {
            Err(Undelivered::Unavailable("no access token".into()))
        }
    }
}

async fn run_refusing<const REFUSED: bool>() -> (usize, Tally) {
    let (tx, rx) = mpsc::channel(2);
    let (_itx, irx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        for n in 1..=50u64 {
            let _ = tx.send(record(n)).await;
        }
    });
    let refusing = Arc::new(Refusing::<REFUSED>::default());
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
            shard: None,
        },
    )
    .await;
    (refusing.0.load(Ordering::SeqCst), tally)
}

#[tokio::test]
async fn refused_credentials_stop_the_whole_job() {
    let (sent, tally) = run_refusing::<true>().await;
    assert_eq!(sent, 3, "nothing more is sent");
    assert_eq!(tally.delivered, 2);
    assert_eq!(tally.not_started, 48);
    assert!(tally.credentials_refused.is_some());
    assert!(!tally.complete());
}

/// No token for too long, the login host unavailable: the job stops as for refused
/// credentials, the rest not started, for the same command to resume.
#[tokio::test]
async fn a_login_host_down_too_long_stops_the_whole_job() {
    let (sent, tally) = run_refusing::<false>().await;
    assert_eq!(sent, 3, "nothing more is sent");
    assert_eq!(tally.delivered, 2);
    assert_eq!(tally.not_started, 48);
    assert!(tally.unavailable.is_some() && tally.credentials_refused.is_none());
    assert!(!tally.complete() && !tally.settled());
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
            shard: None,
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

#[tokio::test(start_paused = true)]
async fn a_quarantine_reason_is_kept_cut_however_long_it_came() {
    let quarantine = temp("q-long.jsonl");
    let mut sinks = Sinks::open(None, None, Some(&quarantine), Format::Jsonl, None).unwrap();
    let long = Input::Quarantined(Quarantined {
        line: 1,
        reason: format!("schema: {} is not valid", "x".repeat(1 << 20)),
        raw: "{}".into(),
    });
    let tally = run_inputs(Arc::new(Fake::default()), [long], &mut sinks, 1).await;
    sinks.flush().unwrap();
    assert_eq!(tally.quarantined, 1);
    let kept = &tally.quarantine[0].reason;
    assert!(kept.len() < 600, "a reason of {} bytes kept", kept.len());
    assert!(
        kept.starts_with("schema: xxx") && kept.ends_with("..."),
        "{kept}"
    );
    let written = std::fs::read_to_string(&quarantine).unwrap();
    assert!(
        written.len() < 1000,
        "a reason of {} bytes written",
        written.len()
    );
}

/// Runs the 30 even records 2..=60 (in chunks of `chunk_size`) and two invalid lines as worker
/// `index` of 3; returns its tally and the items it delivered.
async fn run_shard(index: u32, chunk_size: usize) -> (Tally, Vec<u64>) {
    let mut sinks = Sinks::open(None, None, None, Format::Jsonl, None).unwrap();
    let (tx, rx) = mpsc::channel(4);
    let (_itx, irx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        for n in 1..=30u64 {
            tx.send(record(n * 2)).await.unwrap();
        }
        for line in [61, 62] {
            let bad = Quarantined {
                line,
                reason: "malformed JSON".into(),
                raw: "{".into(),
            };
            tx.send(Input::Quarantined(bad)).await.unwrap();
        }
    });
    let fake = Arc::new(Fake::default());
    let options = Options {
        concurrency: 4,
        chunk_size,
        retry_unknown: false,
        grace: Duration::from_secs(60),
        shard: Some(Shard { index, count: 3 }),
    };
    let tally = run(
        fake.clone(),
        rx,
        irx,
        &mut sinks,
        &Progress::hidden(),
        None,
        options,
    )
    .await;
    let items = fake.units.lock().unwrap().concat();
    (tally, items)
}

#[tokio::test(start_paused = true)]
async fn three_shards_deliver_every_record_once_between_them() {
    for chunk_size in [1, 4] {
        let mut delivered = Vec::new();
        let mut quarantined = 0;
        for index in 0..3 {
            let (tally, items) = run_shard(index, chunk_size).await;
            assert_eq!(tally.records(), 32, "every worker accounts for every line");
            assert_eq!(tally.delivered as usize, items.len());
            assert!(tally.other_shards > 0);
            quarantined += tally.quarantined;
            delivered.extend(items);
        }
        delivered.sort_unstable();
        let all: Vec<u64> = (1..=30).map(|n| n * 2).collect();
        assert_eq!(delivered, all, "chunks of {chunk_size}: each record once");
        assert_eq!(quarantined, 2, "each invalid line reported by one worker");
    }
}

/// A data action stopped on its third unit with what the function gives (nothing applied).
struct StoppedAtThree(fn() -> Undelivered);

impl Deliver for StoppedAtThree {
    type Item = u64;
    const REPLAY: Replay = Replay::Never;
    async fn deliver(&self, _unit: UnitCtx, items: Vec<u64>) -> Result<(), Undelivered> {
        match items[0] {
            3 => Err((self.0)()),
            _ => Ok(()),
        }
    }
}

/// Refused at the door (a 401).
fn refused() -> Undelivered {
    Undelivered::CredentialsRefused("invalid_client".into())
}

/// A journaled run of five units of [`StoppedAtThree`] with `stop`, its journal closed: the
/// job's spec, its journal's path and the tally.
async fn stopped_at_three(
    name: &str,
    stop: fn() -> Undelivered,
) -> (crate::journal::JobSpec, std::path::PathBuf, Tally) {
    let (spec, path) = job_spec(name);
    let journal = Journal::open(&path, &spec, crate::journal::OpenMode::Fresh).unwrap();
    let tally = run_journaled(Arc::new(StoppedAtThree(stop)), &journal, 5, false).await;
    journal.close("incomplete").await.unwrap();
    (spec, path, tally)
}

#[tokio::test]
async fn a_unit_refused_for_its_credentials_is_sent_again_on_resume_not_listed_unknown() {
    use crate::journal::OpenMode;
    let (spec, path, tally) = stopped_at_three("resume-refused", refused).await;
    assert!(tally.credentials_refused.is_some());

    let journal = Journal::open(&path, &spec, OpenMode::Resume).unwrap();
    let second = Arc::new(Recorder::<true>::default());
    let tally = run_journaled(second.clone(), &journal, 5, false).await;
    let sent: Vec<u64> = second.seen.lock().unwrap().iter().map(|s| s.0).collect();
    // Listed unknown from the first run, it would not have been sent (an action is never
    // sent again after an unknown outcome without --retry-unknown).
    assert!(
        sent.contains(&3),
        "the refused unit is sent again: {sent:?}"
    );
    assert!(tally.credentials_refused.is_none());
    journal.close("incomplete").await.unwrap();
}

/// Takes 30 ms for the item 1 and none for the others; records the order units end in.
#[derive(Default)]
struct PerEntity<const IN_ORDER: bool> {
    ended: Mutex<Vec<u64>>,
}

impl<const IN_ORDER: bool> Deliver for PerEntity<IN_ORDER> {
    type Item = u64;
    const REPLAY: Replay = Replay::Safe;
    const ENTITY: Option<&'static str> = if IN_ORDER { Some("user") } else { None };
    async fn deliver(&self, _unit: UnitCtx, items: Vec<u64>) -> Result<(), Undelivered> {
        if items[0] == 1 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        self.ended.lock().unwrap().push(items[0]);
        Ok(())
    }
}

/// Runs `records` (line, entity, item) through `d` without a journal, with a Ctrl-C after
/// `interrupt`, if any; returns the tally.
async fn run_records<D: Deliver<Item = u64>>(
    d: Arc<D>,
    records: impl IntoIterator<Item = (u64, Option<&str>, u64)>,
    (chunk_size, concurrency): (usize, usize),
    shard: Option<Shard>,
    interrupt: Option<Duration>,
    journal: Option<&Journal>,
) -> Tally {
    let records: Vec<_> = records.into_iter().collect();
    let (tx, rx) = mpsc::channel(records.len().max(1));
    for (line, key, item) in records {
        let meta = Meta {
            line,
            key: key.map(str::to_owned),
            raw: Raw::Line(format!("{{\"n\":{line}}}").into_bytes()),
        };
        tx.try_send(Input::Record(Record { meta, item })).unwrap();
    }
    drop(tx);
    let (itx, irx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        if let Some(after) = interrupt {
            tokio::time::sleep(after).await;
            let _ = itx.send(Interrupt::CtrlC);
        }
        // Held open until then: a closed channel is not an interrupt.
        std::future::pending::<()>().await;
    });
    let options = Options {
        concurrency,
        chunk_size,
        retry_unknown: false,
        grace: Duration::from_secs(60),
        shard,
    };
    run(
        d,
        rx,
        irx,
        &mut Sinks::default(),
        &Progress::hidden(),
        journal,
        options,
    )
    .await
}

/// Runs `lines` (line, entity) as worker `shard`, if any; returns its tally and the order its
/// units ended in.
async fn run_per_entity<const IN_ORDER: bool>(
    lines: &[(u64, &str)],
    shard: Option<Shard>,
) -> (Tally, Vec<u64>) {
    let d = Arc::new(PerEntity::<IN_ORDER>::default());
    let records = lines.iter().map(|&(line, key)| (line, Some(key), line));
    let tally = run_records(d.clone(), records, (1, 4), shard, None, None).await;
    let ended = d.ended.lock().unwrap().clone();
    (tally, ended)
}

#[tokio::test(start_paused = true)]
async fn lines_about_one_entity_go_in_their_order_and_others_do_not_wait() {
    // Lines 1, 2 and 4 are about one user (its id spelled in two cases), line 3 about another.
    let lines = [(1, "u-a"), (2, "U-A"), (3, "u-b"), (4, "u-a")];
    let (tally, ended) = run_per_entity::<true>(&lines, None).await;
    assert_eq!(tally.delivered, 4);
    // Line 3 does not wait for line 1's slow answer.
    assert_eq!(ended, [3, 1, 2, 4]);
    // Without the rule, lines 2 and 4 end before line 1, which would then hold.
    let (_, ended) = run_per_entity::<false>(&lines, None).await;
    assert_eq!(ended, [2, 3, 4, 1]);
}

#[tokio::test(start_paused = true)]
async fn shards_split_a_job_in_order_by_entity_and_every_line_is_sent_once() {
    let entities = ["u-a", "u-b", "u-c", "u-d", "u-e", "u-f", "u-g"];
    let lines: Vec<(u64, &str)> = (1..=42u64)
        .map(|line| (line, entities[(line % 7) as usize]))
        .collect();
    let mut all = Vec::new();
    for index in 0..3 {
        let shard = Shard { index, count: 3 };
        let (tally, ended) = run_per_entity::<true>(&lines, Some(shard)).await;
        assert_eq!(tally.delivered + tally.other_shards, 42);
        for entity in entities {
            let mine: Vec<u64> = ended
                .iter()
                .copied()
                .filter(|&l| lines[l as usize - 1].1 == entity)
                .collect();
            // A worker has all of an entity's lines, in their order, or none.
            assert!(mine.is_empty() || mine.len() == 6, "{entity}: {mine:?}");
            assert!(mine.is_sorted(), "{entity}: {mine:?}");
        }
        all.extend(ended);
    }
    all.sort_unstable();
    assert_eq!(all, (1..=42).collect::<Vec<u64>>(), "every line once");
}

/// Items are their own size in bytes; a unit's body holds at most 20.
#[derive(Default)]
struct SizeLimited {
    units: Mutex<Vec<Vec<u64>>>,
}

impl Deliver for SizeLimited {
    type Item = u64;
    const REPLAY: Replay = Replay::Safe;
    const MAX_UNIT_BYTES: Option<usize> = Some(20);
    fn wire_size(item: &u64) -> usize {
        *item as usize
    }
    async fn deliver(&self, _unit: UnitCtx, items: Vec<u64>) -> Result<(), Undelivered> {
        self.units.lock().unwrap().push(items);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_chunk_too_large_for_one_request_goes_as_several_and_keeps_its_bounds() {
    // Records of 5 bytes but line 5, of 30: chunks of 4 records are lines 1-4 and 5-8, and 9.
    let sizes = [5, 5, 5, 5, 30, 5, 5, 5, 5];
    let records = (1..).zip(sizes).map(|(line, size)| (line, None, size));
    let d = Arc::new(SizeLimited::default());
    let tally = run_records(d.clone(), records, (4, 1), None, None, None).await;
    // [5,5,5] is 2 + 15 + 2 commas = 19 bytes; a fourth would make 25.
    let units = d.units.lock().unwrap().clone();
    assert_eq!(units, [vec![5, 5, 5], vec![5], vec![5, 5, 5], vec![5]]);
    assert_eq!((tally.delivered, tally.quarantined), (8, 1));
    assert_eq!(tally.quarantine[0].line, 5);
    assert!(tally.quarantine[0].reason.contains("at most 20"));
    assert_eq!(tally.requests, 4);
}

/// [`SizeLimited`]'s limit, each unit 10 ms in flight, counting the units in flight at once.
#[derive(Default)]
struct SlowSizeLimited {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    delivered: AtomicUsize,
}

impl Deliver for SlowSizeLimited {
    type Item = u64;
    const REPLAY: Replay = Replay::Safe;
    const MAX_UNIT_BYTES: Option<usize> = SizeLimited::MAX_UNIT_BYTES;
    fn wire_size(item: &u64) -> usize {
        SizeLimited::wire_size(item)
    }
    async fn deliver(&self, _unit: UnitCtx, items: Vec<u64>) -> Result<(), Undelivered> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(10)).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.delivered.fetch_add(items.len(), Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn the_pieces_of_a_split_chunk_count_against_the_concurrency() {
    // Records of 15 bytes: each goes alone (two would be 33 bytes), so a chunk of 10 is 10
    // requests; at most 2 in flight, whatever the chunk.
    let records = (1..=30).map(|line| (line, None, 15));
    let d = Arc::new(SlowSizeLimited::default());
    let tally = run_records(d.clone(), records, (10, 2), None, None, None).await;
    assert_eq!(tally.delivered, 30);
    assert_eq!(d.delivered.load(Ordering::SeqCst), 30);
    assert_eq!(tally.requests, 30);
    let max = d.max_in_flight.load(Ordering::SeqCst);
    assert!(max <= 2, "{max} units in flight with a concurrency of 2");
}

#[tokio::test(start_paused = true)]
async fn an_interrupt_lists_a_unit_waiting_for_its_turn_as_not_started() {
    // Line 1 is in flight for 30 ms at the interrupt, line 2 waits for it.
    let records = [
        (1, Some("u-a"), 1),
        (2, Some("u-a"), 2),
        (3, Some("u-b"), 3),
    ];
    let d = Arc::new(PerEntity::<true>::default());
    let ctrl_c = Some(Duration::from_millis(10));
    let tally = run_records(d.clone(), records, (1, 4), None, ctrl_c, None).await;
    assert_eq!(*d.ended.lock().unwrap(), [3, 1], "line 2 was never sent");
    assert_eq!(
        (tally.delivered, tally.not_started, tally.unknown),
        (2, 1, 0)
    );
}

/// About one user; fails the item 1 while `fail` is set; records what it is given.
#[derive(Default)]
struct OneUser {
    fail: AtomicBool,
    seen: Mutex<Vec<(u64, bool)>>,
}

impl Deliver for OneUser {
    type Item = u64;
    const REPLAY: Replay = Replay::Safe;
    const ENTITY: Option<&'static str> = Some("user");
    async fn deliver(&self, unit: UnitCtx, items: Vec<u64>) -> Result<(), Undelivered> {
        self.seen.lock().unwrap().push((items[0], unit.resumed));
        match items[0] == 1 && self.fail.load(Ordering::SeqCst) {
            true => Err(Undelivered::Failed("503".into())),
            false => Ok(()),
        }
    }
}

/// One run of the first `lines` of `records` through a [`OneUser`] on the journal at `path`: a
/// fresh journal where line 1 fails when `fail`, else a resume. Returns the tally and the units
/// it was given (line, told to resolve first).
async fn one_user_run(
    job: &(crate::journal::JobSpec, std::path::PathBuf),
    records: [(u64, Option<&'static str>, u64); 3],
    fail: bool,
    lines: usize,
) -> (Tally, Vec<(u64, bool)>) {
    one_user_pass(job, records, !fail, fail, lines).await
}

/// [`one_user_run`], a resume (`resume`) or on a fresh journal, line 1 failing when `fail`.
async fn one_user_pass(
    (spec, path): &(crate::journal::JobSpec, std::path::PathBuf),
    records: [(u64, Option<&'static str>, u64); 3],
    resume: bool,
    fail: bool,
    lines: usize,
) -> (Tally, Vec<(u64, bool)>) {
    use crate::journal::OpenMode;
    let mode = if resume {
        OpenMode::Resume
    } else {
        OpenMode::Fresh
    };
    let journal = Journal::open(path, spec, mode).unwrap();
    let d = Arc::new(OneUser::default());
    d.fail.store(fail, Ordering::SeqCst);
    let some = records.into_iter().take(lines);
    let tally = run_records(d.clone(), some, (1, 4), None, None, Some(&journal)).await;
    journal.close("incomplete").await.unwrap();
    let seen = d.seen.lock().unwrap().clone();
    (tally, seen)
}

/// Line 1 failed and line 2, about the same user, was delivered after it. A resume sends line 1
/// again, and so line 2 after it (told to resolve first): the last line still holds.
#[tokio::test]
async fn a_resume_that_sends_an_earlier_line_about_a_user_sends_the_later_ones_again() {
    let job = job_spec("resume-in-order");
    let records = [
        (1, Some("u-a"), 1),
        (2, Some("U-A"), 2),
        (3, Some("u-b"), 3),
    ];
    let (tally, _) = one_user_run(&job, records, true, 3).await;
    assert_eq!((tally.delivered, tally.failed), (2, 1));
    let (tally, seen) = one_user_run(&job, records, false, 3).await;
    assert_eq!(seen, [(1, true), (2, true)]);
    assert_eq!((tally.delivered, tally.delivered_earlier), (3, 1));
}

/// Lines 1 and 2 about one user, line 3 about another.
const TWO_USERS: [(u64, Option<&str>, u64); 3] = [
    (1, Some("u-a"), 1),
    (2, Some("u-a"), 2),
    (3, Some("u-b"), 3),
];

/// The lines [`one_user_pass`] of the first `lines` of [`TWO_USERS`] sends.
async fn sent(
    job: &(crate::journal::JobSpec, std::path::PathBuf),
    resume: bool,
    fail: bool,
    lines: usize,
) -> Vec<u64> {
    let (_, seen) = one_user_pass(job, TWO_USERS, resume, fail, lines).await;
    seen.into_iter().map(|s| s.0).collect()
}

/// A resume sends line 1 again and is killed before line 2, about the same user, goes again.
/// The next resume finds both delivered, and still sends line 2 again, since line 1 went after
/// it; the one after that sends nothing.
#[tokio::test]
async fn a_resume_cut_short_after_an_earlier_line_went_again_leaves_the_later_ones_to_the_next() {
    let job = job_spec("resume-in-order-cut");
    assert_eq!(sent(&job, false, true, 3).await, [1, 3, 2], "line 1 fails");
    // Killed once line 1 went again: line 2 was not even read.
    assert_eq!(sent(&job, true, false, 1).await, [1]);
    assert_eq!(
        sent(&job, true, false, 3).await,
        [2],
        "line 1 went after line 2"
    );
    assert!(sent(&job, true, false, 3).await.is_empty());
}

/// Two resumes send line 1 again: the first fails it once more and sends line 2 after it, the
/// second delivers it and is killed before line 2. Line 1 now went after line 2 again, though
/// both went in resumes: the next resume sends line 2 again.
#[tokio::test]
async fn a_second_resume_cut_short_after_an_earlier_line_leaves_the_later_ones_to_the_next() {
    let job = job_spec("resume-in-order-twice");
    assert_eq!(sent(&job, false, true, 3).await, [1, 3, 2]);
    assert_eq!(
        sent(&job, true, true, 3).await,
        [1, 2],
        "line 1 fails again, line 2 goes after it"
    );
    assert_eq!(sent(&job, true, false, 1).await, [1]);
    assert_eq!(
        sent(&job, true, false, 3).await,
        [2],
        "line 1 went after line 2"
    );
    assert!(sent(&job, true, false, 3).await.is_empty());
}

/// The same cut-short resume in a fleet, where a worker takes the shard over: its journal is
/// new, and what it knows of the earlier runs is what they mirrored to the fleet's record. The
/// resume's mirror says that it sent line 1 again, so the taker sends line 2 again after it.
#[tokio::test]
async fn a_takeover_after_a_resume_cut_short_sends_the_later_lines_again() {
    use crate::journal::{OpenMode, Past, UnitState};
    let (spec, _) = job_spec("takeover-in-order");
    let taker = temp("takeover-in-order.taker.journal");
    let mut journal = Journal::open(&taker, &spec, OpenMode::Fresh).unwrap();
    // The shard's first run: line 1 failed, lines 3 and 2 delivered. Its resume: line 1
    // delivered, and killed before line 2 went again.
    let mirrored = [
        (1, Past::fleet_code(UnitState::Done, 2)),
        (2, Past::fleet_code(UnitState::Done, 1)),
        (3, Past::fleet_code(UnitState::Done, 1)),
    ];
    for (line, code) in mirrored {
        journal.past.overlay(line, code, 6);
    }
    journal.past.mark_resumed();
    let d = Arc::new(OneUser::default());
    let tally = run_records(d.clone(), TWO_USERS, (1, 4), None, None, Some(&journal)).await;
    journal.close("incomplete").await.unwrap();
    assert_eq!(
        *d.seen.lock().unwrap(),
        [(2, true)],
        "line 1 went after line 2"
    );
    assert_eq!((tally.delivered, tally.delivered_earlier), (3, 2));
}

/// Fails line 1 (nothing applied), leaves line 5's outcome unknown, delivers the others; safe
/// to send again (as `ingest` and `users patch` are) or not (as a data action is).
struct FailsOneLosesFive<const SAFE: bool>;

impl<const SAFE: bool> Deliver for FailsOneLosesFive<SAFE> {
    type Item = u64;
    const REPLAY: Replay = if SAFE { Replay::Safe } else { Replay::Never };
    async fn deliver(&self, _unit: UnitCtx, items: Vec<u64>) -> Result<(), Undelivered> {
        match items[0] {
            1 => Err(Undelivered::Failed("refused".into())),
            5 => Err(Undelivered::Unknown("connection reset".into())),
            _ => Ok(()),
        }
    }
}

/// Takes 2 s over each unit.
struct Slow<const SAFE: bool>;

impl<const SAFE: bool> Deliver for Slow<SAFE> {
    type Item = u64;
    const REPLAY: Replay = if SAFE { Replay::Safe } else { Replay::Never };
    async fn deliver(&self, _unit: UnitCtx, _items: Vec<u64>) -> Result<(), Undelivered> {
        tokio::time::sleep(Duration::from_secs(2)).await;
        Ok(())
    }
}

/// A resume interrupted while it sends the line an earlier run failed: the lines that run
/// delivered are counted delivered earlier and the one it left unknown listed unknown (a unit
/// safe to send again included: the stop came before it was resolved). None is listed as not
/// started: a re-run of the failed records (a new job, with keys of its own) would apply them
/// again.
///
/// On the real clock: the journal syncs a data action's start on a blocking thread, during
/// which a paused clock would jump to the end of the grace.
#[tokio::test]
async fn an_interrupted_resume_lists_as_not_started_only_what_was_never_delivered() {
    resume_interrupted::<false>("resume-interrupted-never").await;
    resume_interrupted::<true>("resume-interrupted-safe").await;
}

async fn resume_interrupted<const SAFE: bool>(name: &str) {
    use crate::journal::OpenMode;
    let input = temp(&format!("{name}.jsonl"));
    std::fs::write(&input, "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n").unwrap();
    let command = if SAFE { "ingest" } else { "actions execute" };
    let spec = crate::journal::JobSpec::new(command, &input, Some("a"), 1).unwrap();
    let path = temp(&format!("{name}.journal"));
    let records = || (1..=10u64).map(|n| (n, None, n));
    let journal = Journal::open(&path, &spec, OpenMode::Fresh).unwrap();
    let d = Arc::new(FailsOneLosesFive::<SAFE>);
    let tally = run_records(d, records(), (1, 1), None, None, Some(&journal)).await;
    assert_eq!((tally.delivered, tally.unknown, tally.failed), (8, 1, 1));
    journal.close("incomplete").await.unwrap();

    // Line 1 goes again, and takes 2 s: the interrupt comes while it is in flight (on a
    // machine too slow to send it within 200 ms, before it is sent: then it is not started).
    let journal = Journal::open(&path, &spec, OpenMode::Resume).unwrap();
    let interrupt = Some(Duration::from_millis(200));
    let d = Arc::new(Slow::<SAFE>);
    let tally = run_records(d, records(), (1, 1), None, interrupt, Some(&journal)).await;
    assert!(tally.interrupted);
    assert_eq!(tally.delivered_earlier, 8, "safe: {SAFE}");
    assert_eq!(tally.unknown, 1, "safe: {SAFE}: {:?}", tally.unknowns);
    assert_eq!(tally.unknowns[0].line, 5);
    assert_eq!(
        tally.delivered - tally.delivered_earlier + tally.not_started,
        1
    );
    journal.close("incomplete").await.unwrap();
}

/// The tunnel refused by the proxy.
fn proxy_refused() -> Undelivered {
    Undelivered::ProxyRefused("the proxy answered 407".into())
}

/// A proxy's refusal stops the job as refused credentials do, and the report says it was the
/// proxy (an operator would otherwise rotate the OAuth secret).
#[tokio::test]
async fn a_tunnel_the_proxy_refused_stops_the_job_reported_as_the_proxys() {
    let (_, _, tally) = stopped_at_three("proxy-refused", proxy_refused).await;
    assert!(tally.proxy_refused);
    assert_eq!(tally.stopped_by(), Some("the proxy answered 407"));
    let report =
        crate::report::Report::new("users patch", None, &tally, None, None, None, None, None);
    assert_eq!(report.status, "proxy refused");
    assert_eq!(report.exit_code, crate::error::EXIT_USAGE);
}
