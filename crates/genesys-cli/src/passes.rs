//! Passes over a job's input: one for a job run alone; for a fleet worker (`--fleet-redis` with
//! `--shard I/N`), one per shard it processes: its own first, then any shard whose worker
//! stopped renewing its lease, until every shard of the job is processed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{Notify, mpsc};

use crate::cli::{Common, Shard};
use crate::fleet::{Fleet, Lease, ShardStatus};
use crate::input::{Format, Parse, Source};
use crate::job::{self, Deliver, Interrupt, Options, Replay};
use crate::journal::{self, JobSpec, Journal, OpenMode};
use crate::progress::Progress;
use crate::report::FleetReport;
use crate::sinks::Sinks;
use crate::tally::Tally;

/// How many records the reader may run ahead of the senders, per unit in flight (and at most
/// [`crate::input::READ_AHEAD_BYTES`] of them).
const READ_AHEAD_UNITS: usize = 2;

/// A shard's states could not be read from Redis: nothing of it was done.
struct Unread(String);

/// What a worker says when a data action job's states in Redis may lack writes.
const UNTRUSTED: &str = "The states the fleet recorded may lack some, and an execution recorded \
                         as started may read as never started and run a second time. Check \
                         which of the job's inputs ran (the workers' reports and journals, the \
                         actions' own systems), then run those that did not as a new job \
                         (--fleet-run LABEL)";

/// How often a fleet worker waiting for the other shards looks at them again (at most).
const STATUS_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// What every pass of one run shares.
pub(crate) struct Passes<'a, P, D> {
    pub(crate) common: &'a Common,
    pub(crate) parser: Arc<P>,
    pub(crate) input: &'a Path,
    pub(crate) format: Format,
    pub(crate) deliver: Arc<D>,
    pub(crate) chunk_size: usize,
    pub(crate) retry_unknown: bool,
    /// How long requests in flight may finish after a Ctrl-C.
    pub(crate) grace: std::time::Duration,
    /// Requests in flight at once.
    pub(crate) concurrency: usize,
}

/// A fleet worker's job: the fleet's record, the job as its journals name it, and the worker's
/// own shard.
#[derive(Debug)]
pub(crate) struct FleetJob {
    pub(crate) fleet: Fleet,
    pub(crate) spec: JobSpec,
    pub(crate) shard: Shard,
}

/// What a fleet worker's passes leave.
#[derive(Debug)]
pub(crate) struct FleetRan {
    pub(crate) tally: Tally,
    pub(crate) report: FleetReport,
    /// The journal of the worker's own shard, when it processed it.
    pub(crate) journal: Option<PathBuf>,
}

impl<P, D> Passes<'_, P, D>
where
    P: Parse,
    D: Deliver<Item = P::Item>,
{
    /// One pass over `source`, taking the records of `shard` (all without one).
    pub(crate) async fn one(
        &self,
        source: Source,
        sinks: &mut Sinks,
        journal: Option<&Journal>,
        shard: Option<Shard>,
        interrupts: mpsc::UnboundedReceiver<Interrupt>,
    ) -> Tally {
        let concurrency = self.concurrency;
        let progress = Progress::new(self.common.quiet, None);
        // Counting lines costs a read of the file: only worth it for a bar on a terminal.
        if progress.is_bar() && !matches!(source.format(), Format::Json) {
            let path = self.input.to_owned();
            let has_header = source.header().is_some();
            if let Ok(Some(lines)) =
                tokio::task::spawn_blocking(move || crate::input::count_lines(&path)).await
            {
                progress.set_total(lines.saturating_sub(u64::from(has_header)));
            }
        }
        let rx = source.stream(
            self.parser.clone(),
            concurrency * self.chunk_size * READ_AHEAD_UNITS,
        );
        let tally = job::run(
            self.deliver.clone(),
            rx,
            interrupts,
            sinks,
            &progress,
            journal,
            Options {
                concurrency,
                chunk_size: self.chunk_size,
                retry_unknown: self.retry_unknown,
                grace: self.grace,
                shard,
            },
        )
        .await;
        progress.finish();
        tally
    }

    /// A fleet worker's run: its own shard, then any shard left by a worker that stopped, until
    /// every shard of the job is processed (or Ctrl-C, or the fleet's record out of reach for
    /// a lease's life).
    pub(crate) async fn fleet(
        &self,
        job: &FleetJob,
        first: Source,
        sinks: &mut Sinks,
        mut interrupts: mpsc::UnboundedReceiver<Interrupt>,
    ) -> FleetRan {
        // Ctrl-C goes to the pass under way; between passes it ends the worker.
        let current: Arc<Mutex<Option<mpsc::UnboundedSender<Interrupt>>>> = Arc::default();
        let user = Arc::new(AtomicBool::new(false));
        let woke = Arc::new(Notify::new());
        let forwarder = {
            let (current, user, woke) = (current.clone(), user.clone(), woke.clone());
            tokio::spawn(async move {
                while let Some(signal) = interrupts.recv().await {
                    // Under the lock that starts a pass: a pass either sees the flag before it
                    // starts, or gets the signal.
                    let current = lock(&current);
                    user.store(true, Ordering::SeqCst);
                    if let Some(tx) = current.as_ref() {
                        let _ = tx.send(signal);
                    }
                    drop(current);
                    woke.notify_one();
                }
            })
        };
        let fleet = &job.fleet;
        let (own, count) = (job.shard.index, job.shard.count);
        let mut ran = FleetRan {
            tally: Tally::default(),
            report: FleetReport {
                job: fleet.job().to_owned(),
                shards: count,
                shard: own,
                ..FleetReport::default()
            },
            journal: None,
        };
        let mut passes = Vec::new();
        let mut source = Some(first);
        let mut unreachable_since: Option<Instant> = None;
        let mut unread_since: Option<Instant> = None;
        let mut fleet_error = None;
        let mut said_waiting = false;
        // How often a worker with nothing to take looks at the shards again: soon enough that
        // it ends within a moment of the last shard's end (one script read in Redis each time),
        // while a stopped worker's shard is taken over once its lease runs out.
        let pause = (fleet.lease() / 3).min(STATUS_POLL);
        let wait = || async {
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = woke.notified() => {}
            }
        };
        while !user.load(Ordering::SeqCst) {
            let (tx, rx) = mpsc::unbounded_channel();
            let taken = match fleet.status().await {
                Ok(status) if status.iter().all(|s| *s == ShardStatus::Done) => {
                    ran.report.job_complete = true;
                    break;
                }
                Ok(status) => {
                    let free = (0..count)
                        .map(|k| (own + k) % count)
                        .find(|i| status.get(*i as usize) == Some(&ShardStatus::Free));
                    match free {
                        Some(i) => fleet.acquire(i).await,
                        None => Ok(None),
                    }
                }
                Err(e) => Err(e),
            };
            let lease = match taken {
                Ok(Some(lease)) => lease,
                Ok(None) => {
                    unreachable_since = None;
                    unread_since = None;
                    if !said_waiting && !self.common.quiet {
                        say!(
                            "gcx: waiting for the other workers' shards: a shard whose worker \
                             stops renewing its lease ({:?}) is taken over",
                            fleet.lease()
                        );
                        said_waiting = true;
                    }
                    wait().await;
                    continue;
                }
                Err(e) => {
                    let since = *unreachable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= fleet.lease() {
                        fleet_error = Some(format!(
                            "{e}; the fleet's record was out of reach for {:?}: the shards this \
                             worker did not process are left to the other workers (or to a \
                             re-run of the same command)",
                            since.elapsed()
                        ));
                        break;
                    }
                    wait().await;
                    continue;
                }
            };
            unreachable_since = None;
            {
                let mut current = lock(&current);
                if user.load(Ordering::SeqCst) {
                    drop(current);
                    let _ = lease.finish(false).await;
                    break;
                }
                *current = Some(tx);
            }
            let i = lease.shard;
            let source = match source.take() {
                Some(s) => Ok(s),
                // Opened again for a shard taken over, maybe hours later: its lines and keys
                // are the job's only while the file is the one the job started on (a nightly
                // export written over it would be skipped as delivered, or sent under its
                // keys and dropped as repeats).
                // Opened first, then hashed by its path, then checked to be the same file: a
                // file renamed over it in between is not read under the job's hash.
                None => match Source::open(self.input, self.format, &*self.parser) {
                    Ok(source) => match hash_apart(self.input).await {
                        Ok((hash, _)) if hash == job.spec.input_hash => {
                            source.check_still_at(self.input).map(|()| source)
                        }
                        Ok(_) => Err(crate::error::CliError::usage(format!(
                            "the input {} changed since this job started: the shard is not \
                             taken over (its lines would not be the job's)",
                            self.input.display()
                        ))),
                        Err(e) => Err(crate::error::CliError::usage(format!(
                            "cannot read the input {} again: {e}",
                            self.input.display()
                        ))),
                    },
                    Err(e) => Err(e),
                },
            };
            let (tally, path) = match source {
                Ok(source) => match self.shard_pass(job, lease, source, sinks, rx).await {
                    Ok(pass) => {
                        unread_since = None;
                        pass
                    }
                    // The shard's states out of reach: as the record out of reach, tried again
                    // until that has lasted a lease.
                    Err(Unread(e)) => {
                        *lock(&current) = None;
                        let since = *unread_since.get_or_insert_with(Instant::now);
                        if since.elapsed() >= fleet.lease() {
                            fleet_error = Some(format!(
                                "{e}; the shards' states were out of reach for {:?}: the shards \
                                 this worker did not process are left to the other workers (or \
                                 to a re-run of the same command)",
                                since.elapsed()
                            ));
                            break;
                        }
                        // Not as often as the shards are looked at: each try opens the shard's
                        // journal (a run more in it) and reads the input again.
                        tokio::select! {
                            () = tokio::time::sleep(fleet.lease() / 3) => {}
                            () = woke.notified() => {}
                        }
                        continue;
                    }
                },
                Err(e) => {
                    let _ = lease.finish(false).await;
                    let tally = Tally {
                        broken_input: Some(e.to_string()),
                        ..Tally::default()
                    };
                    (tally, None)
                }
            };
            *lock(&current) = None;
            if let Some((path, processed)) = path {
                if i == own {
                    ran.journal = Some(path);
                }
                if processed {
                    ran.report.processed.push(i);
                    if i != own {
                        ran.report.taken_over.push(i);
                    }
                }
            }
            // A pass that ended unsettled for a reason of its own (a journal or an output file
            // that cannot be written, refused credentials, a broken input), or that could not
            // trust the fleet's states, would end so again: the shard is left to the others. A
            // lapsed lease is not the worker's fault.
            let stop = (!tally.settled() && !tally.fenced) || tally.fleet_error.is_some();
            passes.push((i, tally));
            if stop {
                break;
            }
        }
        forwarder.abort();
        ran.tally = Tally::merge(passes);
        if user.load(Ordering::SeqCst) {
            ran.tally.interrupted = true;
        }
        // A pass's own (its shard's states out of reach, or not to be trusted) stays.
        ran.tally.fleet_error = fleet_error.or(ran.tally.fleet_error.take());
        ran
    }

    /// One pass over the shard `lease` holds: its journal on this machine, with what the fleet
    /// recorded for it laid over; every unit resolved first when a worker held the shard
    /// before. Returns the tally, and the journal's path with whether the shard was processed.
    async fn shard_pass(
        &self,
        job: &FleetJob,
        lease: Lease,
        source: Source,
        sinks: &mut Sinks,
        interrupts: mpsc::UnboundedReceiver<Interrupt>,
    ) -> Result<(Tally, Option<(PathBuf, bool)>), Unread> {
        let i = lease.shard;
        let shard = Shard {
            index: i,
            count: job.shard.count,
        };
        let takeover = i != job.shard.index;
        let spec = job.spec.clone().with_shard(Some(shard));
        let opened = self.open_journal(&spec, takeover.then_some(job.shard.index), job.fleet.job());
        let mut journal = match opened {
            Ok(j) => j,
            Err(e) => {
                let _ = lease.finish(false).await;
                let tally = Tally {
                    journal_error: Some(e.to_string()),
                    ..Tally::default()
                };
                return Ok((tally, None));
            }
        };
        let max_line = spec.input_bytes.saturating_add(1);
        let overlaid = lease
            .states(|line, code| journal.past.overlay(line, code, max_line))
            .await;
        if let Err(e) = overlaid {
            // Without the fleet's states, nothing of this shard is safe to send.
            let _ = lease.finish(false).await;
            journal.discard().await;
            return Err(Unread(format!("reading shard {shard}'s states: {e}")));
        }
        // A data action whose start the fleet recorded, in a write Redis then lost, would
        // read as never started and run again: no shard of such a job is taken while the
        // states read may lack writes (checked after they were read: a loss after it leaves
        // them whole).
        let untrusted = match self.deliver.replay() {
            Replay::Never => match job.fleet.states_lost().await {
                Ok(None) => None,
                Ok(Some(why)) => Some(format!("shard {shard} not taken: {why}. {UNTRUSTED}")),
                Err(e) => Some(format!(
                    "shard {shard} not taken: {e}; whether Redis lost writes could not be \
                     checked. {UNTRUSTED}"
                )),
            },
            Replay::Safe => None,
        };
        if let Some(error) = untrusted {
            // Without the fleet's states, nothing of this shard is safe to send.
            let _ = lease.finish(false).await;
            journal.discard().await;
            let tally = Tally {
                fleet_error: Some(error),
                ..Tally::default()
            };
            return Ok((tally, None));
        }
        // Every unit is resolved before it is applied, even on the shard's first run: a worker
        // cut off past its lease may still have units in flight when another takes the shard.
        journal.past.mark_resumed();
        journal.lease_to(lease.mirror(), lease.fence());
        if !self.common.quiet {
            if takeover {
                say!(
                    "gcx: taking over shard {shard} (its worker stopped renewing its lease): \
                     {} unit(s) it delivered are skipped, the others are checked before they \
                     are applied; journal {}",
                    journal.past.done_units,
                    journal.path.display()
                );
            } else {
                say!(
                    "gcx: shard {shard} of fleet job {}; journal {}",
                    job.fleet.job(),
                    journal.path.display()
                );
            }
        }
        let mut tally = self
            .one(source, sinks, Some(&journal), Some(shard), interrupts)
            .await;
        // Every unit's last state in Redis before the shard is marked done.
        if let Err(e) = journal.handle().sync().await {
            tracing::warn!(error = %e, shard = %shard, "the shard's last states were not all recorded");
        }
        let status = if tally.complete() && tally.settled() {
            "complete"
        } else if tally.interrupted {
            "interrupted"
        } else {
            "incomplete"
        };
        let path = journal.path.clone();
        if let Err(e) = journal.close(status).await
            && tally.journal_error.is_none()
        {
            tally.journal_error = Some(e);
        }
        let lost = lease.lost();
        let processed = tally.settled() && !lost;
        let finished = lease.finish(processed).await;
        if lost && !self.common.quiet {
            say!(
                "gcx: this worker lost shard {shard}'s lease (another worker took it over): it \
                 stopped sending that shard"
            );
        }
        Ok((tally, Some((path, processed && finished.is_ok()))))
    }

    /// The journal of shard `spec.shard` on this machine: the worker's own (`--journal FILE`,
    /// or the default), or, for a shard it takes over (`taker`: its own shard), one apart,
    /// named after the taker and this run of it: the fleet's record is what a takeover resumes
    /// from, this file only keeps this machine's account. A journal of another fleet job that
    /// finished starts over.
    fn open_journal(
        &self,
        spec: &JobSpec,
        taker: Option<u32>,
        job: &str,
    ) -> Result<Journal, crate::error::CliError> {
        let run = format!("{} pid {}", job, std::process::id());
        let path = match (&self.common.journal, taker) {
            (Some(path), None) => path.clone(),
            (Some(path), Some(taker)) => {
                let index = spec.shard.map_or(0, |s| s.index);
                let mut name = path.clone().into_os_string();
                name.push(format!(".shard-{index}.by-{taker}.{}", std::process::id()));
                PathBuf::from(name)
            }
            (None, None) => journal::default_path_for(spec, None)?,
            (None, Some(taker)) => {
                journal::default_path_for(spec, Some(&format!("{taker} ({run})")))?
            }
        };
        let mode = if self.common.journal.is_some() && taker.is_none() {
            OpenMode::Resume
        } else {
            OpenMode::ResumeUnfinished
        };
        Journal::open(&path, spec, mode)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The input's hash, read on a thread of its own: a large input takes a while.
async fn hash_apart(input: &Path) -> std::io::Result<(String, u64)> {
    let path = input.to_owned();
    tokio::task::spawn_blocking(move || crate::journal::hash_file(&path))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}
