//! The job engine: takes records from the input channel, groups them into units (one record, or
//! a chunk for ingestion), keeps at most `concurrency` units in flight, and accounts for every
//! record: delivered, failed (with the reason, written to the failed file), outcome unknown
//! (written to the unknown file), quarantined, or not started because the run was interrupted
//! (also written to the failed file). With a journal, a job killed at any moment is resumed by
//! the same command. Nothing is lost and nothing is applied twice.
//!
//! Delivery itself is behind [`Deliver`], so the engine is tested with a fake and wired to the
//! real client by the commands.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::{Id, JoinSet};

use crate::cli::Shard;
use crate::departures::Departures;
use crate::input::{Input, InputRx, Meta, Quarantined, Record};
use crate::journal::{Journal, JournalHandle, UnitState};
use crate::progress::Progress;
use crate::sinks::Sinks;
use crate::tally::{Failure, LISTED_MAX, QuarantineEntry, Tally};

pub(crate) use crate::signals::Interrupt;

/// After SIGTERM, the longest units in flight may take to finish: within the 30 s Kubernetes
/// leaves by default before its SIGKILL, with time left to write the report and the lists.
pub(crate) const TERM_GRACE: Duration = Duration::from_secs(20);

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

/// What every unit of a run shares while the login host is down: when the outage began (as the
/// units saw it: the first that found no token, until one gets a token again), and whether the
/// job is stopping, so that a unit waiting for a token gives up at once, unsent.
#[derive(Debug)]
pub(crate) struct Gate {
    stop: tokio::sync::watch::Sender<bool>,
    outage_since: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            stop: tokio::sync::watch::channel(false).0,
            outage_since: std::sync::Mutex::new(None),
        }
    }
}

impl Gate {
    /// The job is stopping: units waiting for a token give up.
    pub(crate) fn stop(&self) {
        self.stop
            .send_if_modified(|stopped| !std::mem::replace(stopped, true));
    }

    pub(crate) fn stopped(&self) -> bool {
        *self.stop.borrow()
    }

    /// Resolves once the job is stopping.
    pub(crate) async fn stopping(&self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|stopped| *stopped).await;
    }

    /// When the login host was first found down in the outage under way (`now` if this is
    /// the first to find it).
    pub(crate) fn outage_since(&self, now: tokio::time::Instant) -> tokio::time::Instant {
        *self
            .outage_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert(now)
    }

    /// A token was had: the outage, if any, is over.
    pub(crate) fn outage_over(&self) {
        *self
            .outage_since
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
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
    /// What the run's units share while the login host is down.
    pub(crate) gate: Arc<Gate>,
    /// A fleet shard's lease: nothing may leave once it no longer surely holds.
    pub(crate) fence: Option<crate::fleet::Fence>,
}

impl UnitCtx {
    /// Whether the unit may still be sent after a wait: not once the job is stopping (it was
    /// not sent: listed as not started), nor once a fleet shard's lease lapsed (left to the
    /// worker that takes the shard over).
    pub(crate) fn may_send(&self) -> Result<(), Undelivered> {
        if self.gate.stopped() {
            return Err(Undelivered::NotSent(
                "not sent: the job stopped while this waited for the login host".to_owned(),
            ));
        }
        self.lease_holds()
    }

    /// Whether a fleet shard's lease still surely holds (always, outside a fleet): once it
    /// does not, nothing more of the unit may leave; it is left to the worker that takes the
    /// shard over.
    pub(crate) fn lease_holds(&self) -> Result<(), Undelivered> {
        if self.fence.as_ref().is_some_and(|f| !f.holds()) {
            return Err(Undelivered::LeftToFleet);
        }
        Ok(())
    }
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
    /// It was not sent: the fleet shard's lease lapsed before it could leave, and the unit is
    /// left to the worker that takes the shard over.
    LeftToFleet,
    /// The login host refused the credentials: nothing was sent, and nothing more can be. The
    /// whole job stops.
    CredentialsRefused(String),
    /// The proxy on the way refused the tunnel (its credentials, or its rules): nothing was
    /// sent, and nothing more can be. The whole job stops.
    ProxyRefused(String),
    /// Turned away for [`TURNED_AWAY_MAX`](crate::deliver::TURNED_AWAY_MAX), or asked to wait
    /// longer than that: no token to be had (the login host unavailable all along), or the API
    /// asking to wait. Nothing was applied. The whole job stops, for the same command to resume.
    Unavailable(String),
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
        // The proxy's credentials, or its rules: asked again for every record, it would refuse
        // each (and may lock the account after a few wrong passwords).
        let proxy_refused = e.is_proxy_refusal();
        if e.may_have_been_applied() {
            // Applied, or perhaps: never "safe to send again", nor "not applied" for a refusal
            // that came after an attempt that may have been.
            Undelivered::Unknown(e.to_string())
        } else if proxy_refused {
            Undelivered::ProxyRefused(e.to_string())
        } else if refused {
            Undelivered::CredentialsRefused(e.to_string())
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

    /// [`REPLAY`](Self::REPLAY) for this deliverer, when it depends on what it sends to (an
    /// ingestion endpoint that deduplicates by key, or one that does not).
    fn replay(&self) -> Replay {
        Self::REPLAY
    }

    /// Whether every request this deliverer sends goes through a
    /// [`Watch`](crate::departures::Watch), so that a unit stopped in flight with no request
    /// [in doubt](crate::departures::Departures::in_doubt) was surely not applied and is listed
    /// as not sent. Without it (the default), such a unit is recorded as outcome unknown.
    fn watches_departures(&self) -> bool {
        false
    }

    /// What a record is about (`user id`), when units about the same entity (the key of their
    /// first record, compared without regard to ASCII case) must go one after another in the
    /// input's order, each once the one before has ended, so that the last line about an
    /// entity is the one that holds. Units about different entities still go at once, up to
    /// the concurrency, and `--shard` splits such a job by entity rather than by line.
    const ENTITY: Option<&'static str> = None;

    /// The most bytes one unit's request body may hold (the API's `request.bytes.max`), when
    /// its size depends on its records: a chunk that would be larger goes as several requests,
    /// and a record too large on its own is quarantined.
    const MAX_UNIT_BYTES: Option<usize> = None;

    /// The bytes `item` adds to its unit's request body, with [`MAX_UNIT_BYTES`](Self::MAX_UNIT_BYTES).
    fn wire_size(_item: &Self::Item) -> usize {
        0
    }

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
    /// This worker's share of the input (`--shard I/N`): other units are left to the others.
    pub(crate) shard: Option<Shard>,
}

type Unit = Vec<Meta>;

/// The `[` and `]` around a unit's records in its request body.
const BODY_BRACKETS: usize = 2;

/// The entity a record is about, for [`Deliver::ENTITY`].
fn entity<D: Deliver>(meta: &Meta) -> Option<String> {
    D::ENTITY?;
    meta.key.as_ref().map(|k| k.to_ascii_lowercase())
}

/// Whether a record is `shard`'s: by its entity's hash when it has one that orders it, else by
/// its line.
fn owns<D: Deliver>(shard: Shard, meta: &Meta) -> bool {
    match entity::<D>(meta) {
        Some(entity) => shard.owns_hash(crate::journal::fnv1a(entity.as_bytes())),
        None => shard.owns(meta.line),
    }
}

/// The entity a unit is about: its first record's.
fn unit_entity<D: Deliver>(metas: &[Meta]) -> Option<String> {
    entity::<D>(metas.first()?)
}

/// For each entity with a unit in flight, the units about it that wait for their turn, in the
/// input's order (each with whether it is resumed). An entry goes when the last of them ends,
/// so the map holds no more than the units in flight and waiting.
type Waiting<I> = HashMap<String, VecDeque<(Vec<I>, Unit, bool)>>;

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
    /// Without a journal, what names this run in its units' keys: unique per run, as a
    /// journal's job id is per job, so that no two runs send the same key for different work.
    run_id: String,
}

impl Engine<'_> {
    fn io(&mut self, r: std::io::Result<()>) {
        if let Err(e) = r
            && self.tally.output_error.is_none()
        {
            self.tally.output_error = Some(format!("writing an output file failed: {e}"));
        }
    }

    /// Lists `meta` among the failures with `reason` (`not_started`: a record not started),
    /// while there is room.
    fn list(&mut self, meta: &Meta, reason: &str, not_started: bool) {
        if self.tally.failures.len() < LISTED_MAX {
            self.tally.failures.push(Failure {
                line: meta.line,
                id: meta.key.clone(),
                reason: reason.to_owned(),
                not_started,
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
            self.list(meta, reason, false);
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
                    not_started: false,
                });
            }
        }
    }

    fn not_started(&mut self, meta: &Meta) {
        let r = self.sinks.write_failed(&meta.raw);
        self.io(r);
        self.tally.not_started += 1;
    }

    fn quarantine(&mut self, mut q: Quarantined) {
        // Kept for the report, up to `LISTED_MAX` of them: never the size of a record.
        if let std::borrow::Cow::Owned(cut) = crate::journal::cut_reason(&q.reason) {
            q.reason = cut;
        }
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
                // Surely not applied: the next run (or the fleet's taker) sends it.
                if let Some(j) = &self.journal {
                    j.handle.failed(first, &reason);
                }
                for meta in metas {
                    self.not_started(meta);
                    self.list(meta, &reason, true);
                }
            }
            Err(Undelivered::LeftToFleet) => {
                if let Some(j) = &self.journal {
                    j.handle.failed(
                        first,
                        "not sent: the shard's lease lapsed before it could leave",
                    );
                }
                self.tally.fenced = true;
                self.tally.other_shards += metas.len() as u64;
            }
            Err(Undelivered::CredentialsRefused(reason)) => {
                self.stops(metas, "the credentials were refused", &reason);
                self.tally.credentials_refused.get_or_insert(reason);
            }
            Err(Undelivered::ProxyRefused(reason)) => {
                self.stops(metas, "the proxy refused the tunnel", &reason);
                if self.tally.credentials_refused.is_none() {
                    self.tally.proxy_refused = true;
                    self.tally.credentials_refused = Some(reason);
                }
            }
            Err(Undelivered::Unavailable(reason)) => {
                self.stops(metas, "turned away by the login host or the API", &reason);
                self.tally.unavailable.get_or_insert(reason);
            }
        }
    }

    /// Refused at the door (a 401, or no token at all): nothing was applied, and the journal
    /// says so, so that a resume sends it again rather than list it unknown. The first such
    /// end stops the job.
    fn stops(&mut self, metas: &[Meta], why: &str, reason: &str) {
        if let (Some(j), Some(first)) = (&self.journal, metas.first()) {
            j.handle.failed(first.line, &format!("not applied: {why}"));
        }
        for meta in metas {
            self.not_started(meta);
        }
        if self.tally.stopped_by().is_none() {
            self.progress.note(&format!(
                "{reason}: stopping the job (nothing more is sent)"
            ));
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

    /// True once the journal's fleet lease no longer surely holds (it stays so for the pass).
    fn fenced(&mut self) -> bool {
        if !self.tally.fenced && self.journal.as_ref().is_some_and(|j| !j.journal.holds()) {
            self.tally.fenced = true;
            self.progress.note(
                "this worker's hold on its shard lapsed (paused, or cut off from Redis): the \
                 rest of the shard is left to the worker that takes it over",
            );
        }
        self.tally.fenced
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

fn decide(
    journal: Option<&JobJournal<'_>>,
    line: u64,
    replay: Replay,
    retry_unknown: bool,
) -> Decision {
    let Some(j) = journal else {
        return Decision::Send { resumed: false };
    };
    let past = &j.journal.past;
    match past.state(line) {
        UnitState::Done => Decision::Skip,
        UnitState::Started | UnitState::Unknown if replay == Replay::Never && !retry_unknown => {
            Decision::ListUnknown
        }
        // For a unit that may be resent, a missing start entry proves nothing (starts are not
        // synced one by one), so everything of a resumed job is resolved before it is applied.
        _ => Decision::Send {
            resumed: past.resumed(),
        },
    }
}

/// The units the engine has taken on and not yet settled.
struct Units<I> {
    /// The units in flight, each a task.
    set: JoinSet<(Result<(), Undelivered>, Duration)>,
    /// The records of each task's unit, and whether a request of it left.
    in_flight: HashMap<Id, (Unit, Departures)>,
    /// Units waiting for their turn behind one about the same entity.
    waiting: Waiting<I>,
    /// Units in `waiting`: they count against the concurrency, as units in flight do.
    queued: usize,
    /// On a resume, what the lines read so far say of each entity's order: see [`reorder`].
    order: HashMap<u64, Order>,
}

impl<I> Default for Units<I> {
    fn default() -> Self {
        Units {
            set: JoinSet::new(),
            in_flight: HashMap::new(),
            waiting: HashMap::new(),
            queued: 0,
            order: HashMap::new(),
        }
    }
}

impl<I> Units<I> {
    /// Units in flight or waiting.
    fn taken(&self) -> usize {
        self.set.len() + self.queued
    }
}

/// What the lines about one entity read so far say of their order, on a resume.
#[derive(Debug, Clone, Copy, Default)]
struct Order {
    /// One of them goes again in this run: every later line goes after it.
    this_run: bool,
    /// The highest generation among those delivered earlier (0: none, or only the job's first
    /// run's, which sent them in order).
    latest: u8,
}

/// On a resume of a job that keeps each entity's lines in order, the decision for a unit about
/// `entity` at `line`, given the lines about it before: one delivered earlier goes again, told
/// to resolve first, when a line before it goes again in this run or went in a later run than
/// it did (a higher generation). So the last line about an entity holds whatever runs it took.
fn reorder(
    decision: Decision,
    entity: &str,
    past: &crate::journal::Past,
    line: u64,
    order: &mut HashMap<u64, Order>,
) -> Decision {
    use crate::journal::MAX_GENERATION;
    // Kept by a hash of the entity, not its name: a few bytes per user a resume must order.
    // Two users whose names share a hash are ordered as one, which only sends a line again
    // that could have been skipped (these units are safe to send again).
    let entity = crate::journal::fnv1a(entity.as_bytes());
    match decision {
        Decision::Skip => {
            let generation = past.generation(line);
            let before = order.get(&entity).copied().unwrap_or_default();
            // At the top of the count, two runs cannot be told apart: sent again.
            let again = before.this_run
                || before.latest > generation
                || (before.latest >= MAX_GENERATION && generation >= MAX_GENERATION);
            if again {
                order.entry(entity).or_default().this_run = true;
                return Decision::Send { resumed: true };
            }
            // The job's first run sent every entity's lines in order: nothing to keep.
            if generation > 1 {
                let o = order.entry(entity).or_default();
                o.latest = o.latest.max(generation);
            }
            Decision::Skip
        }
        Decision::Send { .. } => {
            if matches!(
                past.state(line),
                UnitState::Started | UnitState::Failed | UnitState::Unknown
            ) {
                order.entry(entity).or_default().this_run = true;
            }
            decision
        }
        Decision::ListUnknown => decision,
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
/// An id for a run without a journal: its process and its start, to the nanosecond.
fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = format!("run|{}|{nanos}", std::process::id());
    format!("{:016x}", crate::journal::fnv1a(seed.as_bytes()))
}

pub(crate) async fn run<D: Deliver>(
    deliver: Arc<D>,
    input: impl Into<InputRx<D::Item>>,
    mut interrupts: mpsc::UnboundedReceiver<Interrupt>,
    sinks: &mut Sinks,
    progress: &Progress,
    journal: Option<&Journal>,
    options: Options,
) -> Tally {
    let mut input = input.into();
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
        run_id: run_id(),
    };
    let mut units = Units::<D::Item>::default();
    let mut pending_items: Vec<D::Item> = Vec::with_capacity(chunk_size);
    let mut pending_metas: Unit = Vec::with_capacity(chunk_size);
    // Records of the chunk being formed, and the bytes of the request being formed.
    let mut grouped = 0usize;
    let mut pending_bytes = BODY_BRACKETS;
    let mut input_done = false;
    let mut interrupts_open = true;
    let mut interrupt_count = 0u32;
    // The first interrupt was a hangup, and no SIGTERM came since.
    let mut hung_up = false;
    let mut stopping = false;
    let mut grace_ends: Option<tokio::time::Instant> = None;
    let mut grace = options.grace;
    let gate = Arc::new(Gate::default());
    let replay = deliver.replay();
    let watched = deliver.watches_departures();
    // What the notes of a stop say of the units in flight that had sent nothing.
    let unsent_too = if watched {
        " (those that had not left yet, as not sent)"
    } else {
        ""
    };

    // Sends a unit: its start journaled, then its request, in a task of its own.
    let send = |engine: &mut Engine<'_>,
                units: &mut Units<D::Item>,
                items: Vec<D::Item>,
                metas: Unit,
                resumed: bool| {
        let Some(line) = metas.first().map(|m| m.line) else {
            return;
        };
        let key = engine.journal.as_ref().map_or_else(
            || format!("gcx-{}-{line}", engine.run_id),
            |j| j.journal.key(line),
        );
        let handle = engine.journal.as_ref().map(|j| j.handle.clone());
        let fence = engine.journal.as_ref().and_then(|j| j.journal.fence());
        if let Some(h) = &handle {
            h.start(line, metas.len(), &key);
        }
        let ctx = UnitCtx {
            line,
            key,
            resumed,
            journal: handle,
            gate: gate.clone(),
            fence: fence.clone(),
        };
        let d = deliver.clone();
        let departures = Departures::default();
        let counted = departures.clone();
        let task = units.set.spawn(async move {
            if replay == Replay::Never
                && let Some(h) = &ctx.journal
                && let Err(e) = h.sync().await
            {
                let why = format!("not sent: the journal could not record its start ({e})");
                return (Err(Undelivered::NotSent(why)), Duration::ZERO);
            }
            // The last moment to find a fleet lease lapsed (paused since the dispatch, or while
            // the start was recorded): nothing has left yet.
            if let Err(e) = ctx.may_send() {
                return (Err(e), Duration::ZERO);
            }
            let t = Instant::now();
            let r = counted.scope(d.deliver(ctx, items)).await;
            (r, t.elapsed())
        });
        units.in_flight.insert(task.id(), (metas, departures));
        engine.tally.requests += 1;
    };

    // Forms a unit: skipped (delivered earlier), listed as unknown, not started (stopping),
    // sent, or set to wait for a unit about the same entity still in flight.
    let dispatch = |engine: &mut Engine<'_>,
                    units: &mut Units<D::Item>,
                    items: Vec<D::Item>,
                    metas: Unit,
                    stopping: bool| {
        let Some(line) = metas.first().map(|m| m.line) else {
            return;
        };
        if !stopping && engine.fenced() {
            // A fleet shard whose lease no longer surely holds: another worker has it.
            engine.tally.other_shards += metas.len() as u64;
            return;
        }
        let entity = unit_entity::<D>(&metas);
        let mut decision = decide(engine.journal.as_ref(), line, replay, options.retry_unknown);
        if let (Some(e), Some(j)) = (&entity, &engine.journal)
            && replay == Replay::Safe
        {
            decision = reorder(decision, e, &j.journal.past, line, &mut units.order);
        }
        // Stopping, what would be sent is listed as not started (in the input's order, a line
        // delivered earlier after one that goes again included), unless an earlier run may have
        // applied it: that is listed as unknown, for the same command to resume. What an earlier
        // run delivered is still said so. Listed as not started, either would be sent again by
        // a re-run of the failed records, a new job with keys of its own.
        if stopping && let Decision::Send { .. } = decision {
            let past = engine.journal.as_ref().map(|j| j.journal.past.state(line));
            if let Some(state @ (UnitState::Started | UnitState::Unknown)) = past {
                let reason = "outcome unknown in an earlier run, and this run stopped before \
                              it was resolved: run the same command again to resume it";
                engine.unknown(&metas, reason, state == UnitState::Started);
                return;
            }
            for meta in &metas {
                engine.not_started(meta);
            }
            return;
        }
        match decision {
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
            Decision::Send { resumed } => match entity.map(|e| units.waiting.entry(e)) {
                Some(Entry::Occupied(mut turn)) => {
                    turn.get_mut().push_back((items, metas, resumed));
                    units.queued += 1;
                }
                Some(Entry::Vacant(free)) => {
                    free.insert(VecDeque::new());
                    send(engine, units, items, metas, resumed);
                }
                None => send(engine, units, items, metas, resumed),
            },
        }
    };

    // A unit ended: the next one about its entity goes, or, when the job is stopping, is listed
    // as not started with every other one waiting for it.
    let next_turn =
        |engine: &mut Engine<'_>, units: &mut Units<D::Item>, ended: &[Meta], stopping: bool| {
            let Some(entity) = unit_entity::<D>(ended) else {
                return;
            };
            let Some(mut turn) = units.waiting.remove(&entity) else {
                return;
            };
            let stopping =
                stopping || engine.tally.stopped_by().is_some() || engine.journal_broken();
            while let Some((items, metas, resumed)) = turn.pop_front() {
                units.queued -= 1;
                // In the order `dispatch` judges a unit in.
                if stopping {
                    for meta in &metas {
                        engine.not_started(meta);
                    }
                } else if engine.fenced() {
                    // A fleet shard whose lease no longer surely holds: the taker sends them.
                    engine.tally.other_shards += metas.len() as u64;
                } else {
                    // Its turn: the rest wait behind it.
                    units.waiting.insert(entity, turn);
                    send(engine, units, items, metas, resumed);
                    return;
                }
            }
        };

    loop {
        if input_done && units.set.is_empty() {
            break;
        }
        if !stopping && (engine.journal_broken() || engine.tally.stopped_by().is_some()) {
            // The unit being formed, and every one after it, is listed as not started.
            stopping = true;
        }
        if stopping {
            // Units waiting for the login host give up, unsent.
            gate.stop();
        }
        let taking = !input_done && (stopping || units.taken() < concurrency);
        tokio::select! {
            biased;
            signal = interrupts.recv(), if interrupts_open => {
                let Some(signal) = signal else {
                    interrupts_open = false;
                    continue;
                };
                // A terminal that closes often hangs up twice (the shell passes its SIGHUP on,
                // then the kernel sends one as the session ends): the second is no order to
                // abandon what is in flight.
                if signal == Interrupt::Hangup && interrupt_count > 0 {
                    continue;
                }
                // Nor is a SIGTERM after a hangup (a session manager stopping what the closed
                // session left running): it only shortens the grace to what SIGTERM gives,
                // since a SIGKILL may follow it.
                if signal == Interrupt::Term && hung_up {
                    hung_up = false;
                    let term_ends = tokio::time::Instant::now() + options.grace.min(TERM_GRACE);
                    if let Some(ends) = grace_ends.as_mut() {
                        *ends = (*ends).min(term_ends);
                    }
                    continue;
                }
                hung_up = signal == Interrupt::Hangup && interrupt_count == 0;
                interrupt_count += 1;
                if interrupt_count == 1 {
                    engine.tally.interrupted = true;
                    stopping = true;
                    grace = match signal {
                        // No SIGKILL follows a hangup: the whole grace, as after Ctrl-C.
                        Interrupt::CtrlC | Interrupt::Hangup => options.grace,
                        Interrupt::Term => options.grace.min(TERM_GRACE),
                    };
                    grace_ends = Some(tokio::time::Instant::now() + grace);
                    let resume = engine.journal.as_ref().map_or(String::new(), |j| {
                        format!("; the journal {} resumes the rest", j.journal.path.display())
                    });
                    engine.progress.note(&format!(
                        "interrupted: finishing {} request(s) in flight; records not started go to the failed file{resume} \
                         (Ctrl-C again to stop now)",
                        units.set.len()
                    ));
                } else {
                    engine.progress.note(&format!(
                        "stopping now: requests in flight are recorded as outcome unknown{}",
                        unsent_too
                    ));
                    units.set.abort_all();
                    grace_ends = None;
                }
            }
            () = sleep_until(grace_ends), if grace_ends.is_some() && !units.set.is_empty() => {
                engine.progress.note(&format!(
                    "{} request(s) still in flight after {:?}: recorded as outcome unknown{}",
                    units.set.len(),
                    grace,
                    unsent_too
                ));
                units.set.abort_all();
                grace_ends = None;
            }
            joined = units.set.join_next_with_id(), if !units.set.is_empty() => {
                let Some(joined) = joined else { continue };
                match joined {
                    Ok((id, (result, took))) => {
                        let (metas, _) = units.in_flight.remove(&id).unwrap_or_default();
                        engine.settle(&metas, result, took);
                        next_turn(&mut engine, &mut units, &metas, stopping);
                    }
                    Err(e) => {
                        let (metas, departures) = units.in_flight.remove(&e.id()).unwrap_or_default();
                        if e.is_cancelled() && watched && !departures.in_doubt() {
                            // Stopped before anything that could change data left: surely not
                            // applied, and sent by the next run.
                            let why = "not sent: interrupted before its request left";
                            engine.settle(&metas, Err(Undelivered::NotSent(why.to_owned())), Duration::ZERO);
                        } else {
                            let reason = if e.is_cancelled() {
                                engine.tally.aborted_in_flight += metas.len() as u64;
                                "interrupted while in flight: the outcome is unknown".to_owned()
                            } else {
                                format!("delivery task failed, the outcome is unknown: {e}")
                            };
                            engine.unknown(&metas, &reason, true);
                        }
                        next_turn(&mut engine, &mut units, &metas, stopping);
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
                            // Input that broke off mid-chunk: the chunk is not sent short. Its
                            // records are listed as not started, and a resume sends the whole
                            // chunk (journaled, a short one would stand for all of it).
                            let cut_short = engine.tally.broken_input.is_some();
                            dispatch(&mut engine, &mut units, items, metas, stopping || cut_short);
                        }
                    }
                    // With --shard I/N, a line is this worker's when its number modulo N is I
                    // (or, for a job that keeps each entity's lines in order, the hash of its
                    // entity), whatever the chunk size: every worker splits the input alike.
                    Some(Input::Quarantined(q)) if options.shard.is_some_and(|s| !s.owns(q.line)) => {
                        engine.tally.other_shards += 1;
                    }
                    Some(Input::Record(Record { meta, .. })) if options.shard.is_some_and(|s| !owns::<D>(s, &meta)) => {
                        engine.tally.other_shards += 1;
                    }
                    Some(Input::Quarantined(_)) if engine.fenced() => {
                        engine.tally.other_shards += 1;
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
                        // A chunk is `chunk_size` records, whatever their size: the same chunks
                        // in every run. One whose request would pass the API's size limit goes
                        // as several requests, each a unit of its own.
                        grouped += 1;
                        let mut fits = true;
                        if let Some(max) = D::MAX_UNIT_BYTES {
                            let size = D::wire_size(&item);
                            if size.saturating_add(BODY_BRACKETS) > max && engine.fenced() {
                                // Quarantined by the worker that holds the shard.
                                fits = false;
                                engine.tally.other_shards += 1;
                            } else if size.saturating_add(BODY_BRACKETS) > max {
                                fits = false;
                                let reason = format!(
                                    "this record is {size} bytes as JSON, and a request to the API \
                                     takes at most {max}: it cannot be sent, even alone"
                                );
                                let raw = meta.raw.lossy();
                                engine.quarantine(Quarantined { line: meta.line, reason, raw });
                                engine.tick();
                            } else {
                                if !pending_metas.is_empty() && pending_bytes + size + 1 > max {
                                    let items = std::mem::take(&mut pending_items);
                                    let metas = std::mem::take(&mut pending_metas);
                                    dispatch(&mut engine, &mut units, items, metas, stopping);
                                    pending_bytes = BODY_BRACKETS;
                                }
                                // A comma before every record but the first.
                                pending_bytes += size + usize::from(!pending_metas.is_empty());
                            }
                        }
                        if fits {
                            pending_metas.push(meta);
                            pending_items.push(item);
                        }
                        if grouped >= chunk_size {
                            grouped = 0;
                            pending_bytes = BODY_BRACKETS;
                            if !pending_metas.is_empty() {
                                let items = std::mem::replace(&mut pending_items, Vec::with_capacity(chunk_size));
                                let metas = std::mem::replace(&mut pending_metas, Vec::with_capacity(chunk_size));
                                dispatch(&mut engine, &mut units, items, metas, stopping);
                            }
                            engine.tick();
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
mod tests;
