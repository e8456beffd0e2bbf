//! The job journal: an append-only JSONL file that records what happened to every unit of a bulk
//! job (one record, or one chunk of records sent in one request), so that a job killed at any
//! moment (SIGKILL, a reboot, an evicted pod) is resumed by running the same command again,
//! without applying anything twice.
//!
//! The first line is a [`Header`] naming the job (command, input content hash, action id, chunk
//! size, job id); each later line is one entry: `{"s":"run"}` when a run starts, then per unit
//! `{"u":LINE,"s":"start","n":N,"k":KEY}`, `{"u":LINE,"s":"read","v":VERSION}` (users: the
//! version the PATCH is sent with), and one of `{"u":LINE,"s":"done"}`,
//! `{"u":LINE,"s":"failed","why":...}` (a definite failure: nothing was applied) or
//! `{"u":LINE,"s":"unknown","why":...}`; `{"s":"gen","g":N}` when a fleet worker's run counts as
//! the `N`-th on its shard (not its number in this journal); `{"s":"end","status":...}` when a
//! run ends. `LINE` is the
//! line of the unit's first record in the input; the last entry of a unit wins.
//!
//! Entries are written by a thread of their own, batched, and synced to disk within
//! [`SYNC_EVERY`] (plus one drain of the writer, 20 ms); a unit whose request must never be sent twice waits for
//! [`JournalHandle::sync`] after its `start` entry, so its start is on disk before the request
//! leaves. A crash loses at most the entries of the last interval, and the resume treats a
//! unit without an outcome as possibly applied. A torn last line (the crash came mid-write) is
//! cut off on open.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::cli::Shard;
use crate::error::CliError;

/// The longest time an entry waits in memory before it is synced to disk.
pub(crate) const SYNC_EVERY: Duration = Duration::from_millis(100);

/// The format's version, in the header.
const VERSION: u32 = 1;

/// The longest reason kept in an entry, in characters.
const REASON_MAX: usize = 500;

/// `reason`, cut to [`REASON_MAX`] characters: for a journal entry, and for every reason a
/// job keeps or writes (a schema error can quote the whole record it refused).
pub(crate) fn cut_reason(reason: &str) -> std::borrow::Cow<'_, str> {
    match reason.char_indices().nth(REASON_MAX) {
        None => reason.into(),
        Some((i, _)) => format!("{}...", &reason[..i]).into(),
    }
}

/// The longest line read back: far above any entry gcx writes.
const LINE_MAX: u64 = 64 * 1024;

/// What a journal belongs to: a resumed run must be the same job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Header {
    /// Always `gcx-journal`.
    pub(crate) journal: String,
    /// The format's version.
    pub(crate) version: u32,
    /// The subcommand, e.g. `users patch`.
    pub(crate) command: String,
    /// The input file as given when the journal was made.
    pub(crate) input: String,
    /// `fnv1a64:` and the hash of the input's bytes.
    pub(crate) input_hash: String,
    /// The input's length in bytes.
    pub(crate) input_bytes: u64,
    /// The data action, for `actions execute`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) action_id: Option<String>,
    /// Records per unit.
    pub(crate) chunk_size: u64,
    /// The hash of the records' schema, for `ingest`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) schema: Option<String>,
    /// The worker's share of the input (`--shard I/N`), when sharded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) shard: Option<String>,
    /// The API the job writes to (its region or base URL, and the endpoint's path when the
    /// job names one): a journal of gcx before it kept it has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) target: Option<String>,
    /// The job's id: idempotency keys are derived from it and the unit's line.
    pub(crate) job: String,
}

/// What a new or resumed run of a job is: compared with the journal's header.
#[derive(Debug, Clone)]
pub(crate) struct JobSpec {
    pub(crate) command: String,
    pub(crate) input: PathBuf,
    pub(crate) input_hash: String,
    pub(crate) input_bytes: u64,
    pub(crate) action_id: Option<String>,
    pub(crate) chunk_size: u64,
    /// The hash of the records' schema, for `ingest`.
    pub(crate) schema: Option<String>,
    pub(crate) shard: Option<Shard>,
    /// What a shard splits the input by, when not by line (`user id` for `users patch`): part
    /// of what the job is, since it decides which worker has which line.
    pub(crate) shard_by: Option<String>,
    /// The job's id when it is given (a fleet job's, shared through Redis); else each new
    /// journal makes one.
    pub(crate) job: Option<String>,
    /// A fleet job's run label (`--fleet-run`): part of its identity.
    pub(crate) run: Option<String>,
    /// The API the job writes to: a journal of the same job against another API is refused
    /// (what it says was delivered was delivered there).
    pub(crate) target: Option<String>,
}

impl JobSpec {
    /// The same job, one worker's share of it (`--shard I/N`).
    pub(crate) fn with_shard(mut self, shard: Option<Shard>) -> Self {
        self.shard = shard;
        self
    }

    /// The same job, writing to `target` (the API, and the endpoint's path when the job names
    /// one).
    pub(crate) fn with_target(mut self, target: Option<String>) -> Self {
        self.target = target;
        self
    }

    /// The same job, its shards split by `by` (`user id`) rather than by line.
    pub(crate) fn with_shard_by(mut self, by: Option<&str>) -> Self {
        self.shard_by = by.map(str::to_owned);
        self
    }

    /// The worker's share as the journal names it: `I/N`, and what splits it when not lines.
    fn shard_text(&self) -> Option<String> {
        let shard = self.shard?;
        Some(match &self.shard_by {
            Some(by) => format!("{shard} by {by}"),
            None => shard.to_string(),
        })
    }

    /// The same job, its records checked against the schema of hash `schema`.
    pub(crate) fn with_schema(mut self, schema: Option<String>) -> Self {
        self.schema = schema;
        self
    }

    /// The same input as the fleet run `run` (`--fleet-run`).
    pub(crate) fn with_run(mut self, run: Option<String>) -> Self {
        self.run = run;
        self
    }

    /// The same job under the id the fleet shares.
    pub(crate) fn with_job(mut self, job: &str) -> Self {
        self.job = Some(job.to_owned());
        self
    }

    /// The fleet job's identity: the command, the input's content, the action and the chunk
    /// size (not the path, which differs between machines; not the shard).
    pub(crate) fn fleet_identity(&self) -> String {
        self.identity(self.shard_by.as_deref())
    }

    /// The fleet identity the same job had when its shards were split by line (gcx before the
    /// split by entity): a record under it is a job of an earlier gcx.
    pub(crate) fn fleet_identity_by_line(&self) -> Option<String> {
        self.shard_by.as_ref().map(|_| self.identity(None))
    }

    fn identity(&self, shard_by: Option<&str>) -> String {
        let identity = format!(
            "{}|{}|{}|{}|{}|{}",
            self.command,
            self.input_hash,
            self.input_bytes,
            self.action_id.as_deref().unwrap_or(""),
            self.chunk_size,
            self.schema.as_deref().unwrap_or("")
        );
        let identity = match shard_by {
            Some(by) => format!("{identity}|shards by {by}"),
            None => identity,
        };
        let identity = match &self.run {
            Some(run) => format!("{identity}|run {run}"),
            None => identity,
        };
        format!("{:016x}", fnv1a(identity.as_bytes()))
    }

    /// Describes the job on `input`, hashing its content (read once, in blocks).
    pub(crate) fn new(
        command: &str,
        input: &Path,
        action_id: Option<&str>,
        chunk_size: usize,
    ) -> Result<Self, CliError> {
        let (input_hash, input_bytes) = hash_file(input).map_err(|e| {
            CliError::usage(format!(
                "cannot read input {}: {e}; check the path given to --input",
                input.display()
            ))
        })?;
        Ok(JobSpec {
            command: command.to_owned(),
            input: input.to_owned(),
            input_hash,
            input_bytes,
            action_id: action_id.map(str::to_owned),
            chunk_size: chunk_size as u64,
            schema: None,
            shard: None,
            shard_by: None,
            job: None,
            run: None,
            target: None,
        })
    }

    fn header(&self) -> Header {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let seed = format!(
            "{}|{}|{:?}|{}|{}",
            self.command,
            self.input_hash,
            self.action_id,
            std::process::id(),
            nanos
        );
        Header {
            journal: "gcx-journal".into(),
            version: VERSION,
            command: self.command.clone(),
            input: self.input.display().to_string(),
            input_hash: self.input_hash.clone(),
            input_bytes: self.input_bytes,
            action_id: self.action_id.clone(),
            chunk_size: self.chunk_size,
            schema: self.schema.clone(),
            shard: self.shard_text(),
            target: self.target.clone(),
            job: self
                .job
                .clone()
                .unwrap_or_else(|| format!("{:016x}", fnv1a(seed.as_bytes()))),
        }
    }

    /// What differs between this job and the one `header` describes, for the error message.
    fn differences(&self, header: &Header) -> Vec<String> {
        let mut out = Vec::new();
        if header.command != self.command {
            out.push(format!(
                "the command (journal: `gcx {}`, now: `gcx {}`)",
                header.command, self.command
            ));
        }
        if header.input_hash != self.input_hash || header.input_bytes != self.input_bytes {
            out.push(format!(
                "the input's content (journal: {} of {} bytes, now: {} of {} bytes; the file \
                 changed since the journal was made)",
                header.input,
                header.input_bytes,
                self.input.display(),
                self.input_bytes
            ));
        }
        if header.action_id != self.action_id {
            out.push(format!(
                "the action id (journal: {}, now: {})",
                header.action_id.as_deref().unwrap_or("none"),
                self.action_id.as_deref().unwrap_or("none")
            ));
        }
        if header.chunk_size != self.chunk_size {
            out.push(format!(
                "--chunk-size (journal: {}, now: {})",
                header.chunk_size, self.chunk_size
            ));
        }
        if header.schema != self.schema {
            out.push(format!(
                "the schema's content (journal: {}, now: {}; which records form each chunk \
                 depends on it)",
                header.schema.as_deref().unwrap_or("none"),
                self.schema.as_deref().unwrap_or("none")
            ));
        }
        let shard = self.shard_text();
        if header.shard != shard {
            out.push(format!(
                "--shard (journal: {}, now: {})",
                header.shard.as_deref().unwrap_or("none"),
                shard.as_deref().unwrap_or("none")
            ));
        }
        // A journal of gcx before it kept the target says nothing about it.
        if let (Some(then), Some(now)) = (&header.target, &self.target)
            && then != now
        {
            out.push(format!(
                "the API it writes to (journal: {then}, now: {now}; what the journal says was \
                 delivered was delivered there)"
            ));
        }
        if let Some(job) = self.job.as_deref().filter(|j| *j != header.job) {
            out.push(format!(
                "the fleet job (journal: {}, now: {job}; the job's record in Redis was started \
                 over, or lost)",
                header.job
            ));
        }
        out
    }
}

/// FNV-1a 64: a stable, dependency-free hash (never Rust's per-process `Hash`).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_from(0xcbf2_9ce4_8422_2325, bytes)
}

fn fnv1a_from(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub(crate) fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut reader = BufReader::with_capacity(256 * 1024, File::open(path)?);
    let mut h = 0xcbf2_9ce4_8422_2325;
    let mut len = 0u64;
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        h = fnv1a_from(h, buf);
        len = len.saturating_add(buf.len() as u64);
        let n = buf.len();
        reader.consume(n);
    }
    Ok((format!("fnv1a64:{h:016x}"), len))
}

/// The state of one unit as the journal last recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UnitState {
    /// No entry: never started (or its start was lost in a crash, for units that may be resent).
    New,
    /// Started, no outcome recorded: the request may have been applied.
    Started,
    /// Delivered.
    Done,
    /// Failed for sure (nothing was applied): safe to send again.
    Failed,
    /// Outcome unknown: it may have been applied.
    Unknown,
}

impl UnitState {
    /// The state's code in the fleet's record.
    pub(crate) fn code(self) -> u8 {
        match self {
            UnitState::New => 0,
            UnitState::Started => 1,
            UnitState::Done => 2,
            UnitState::Failed => 3,
            UnitState::Unknown => 4,
        }
    }

    fn from_code(c: u8) -> Self {
        match c {
            1 => UnitState::Started,
            2 => UnitState::Done,
            3 => UnitState::Failed,
            4 => UnitState::Unknown,
            _ => UnitState::New,
        }
    }
}

/// The bits of a unit's byte in [`Past`] that hold its state; the others hold its generation.
const STATE_BITS: u8 = 0x07;
/// Where a unit's generation starts in its byte.
const GENERATION_SHIFT: u8 = 3;
/// The highest generation a unit's byte holds: runs past it count as this one.
pub(crate) const MAX_GENERATION: u8 = u8::MAX >> GENERATION_SHIFT;

/// The generation of the `n`-th run of a job (from 1), as a unit's byte holds it.
fn generation_of(n: u32) -> u8 {
    u8::try_from(n).map_or(MAX_GENERATION, |n| n.min(MAX_GENERATION))
}

/// What earlier runs of the job did: one byte per input line, flat in memory.
#[derive(Debug, Default)]
pub(crate) struct Past {
    states: Vec<u8>,
    /// Runs recorded before this one.
    pub(crate) runs: u32,
    /// How the last earlier run ended (`None`: it was killed before it could say).
    pub(crate) last_end: Option<String>,
    /// Units with each state, for the summary.
    pub(crate) done_units: u64,
    /// The journal existed before this run: whatever it says, an earlier run may have sent
    /// requests whose entries did not reach the disk.
    existed: bool,
    /// While reading the journal back: the generation of the run being read, which what it
    /// starts is marked with (its number in the journal, or what its `gen` entry says).
    generation: u8,
}

impl Past {
    /// The state of the unit that starts at `line`.
    pub(crate) fn state(&self, line: u64) -> UnitState {
        usize::try_from(line)
            .ok()
            .and_then(|i| self.states.get(i))
            .map_or(UnitState::New, |c| UnitState::from_code(*c & STATE_BITS))
    }

    /// The generation of the run that last started the unit at `line` (0: none did). Runs
    /// count from 1 in the order they ran, a fleet's workers on one shard included; from
    /// [`MAX_GENERATION`] on, runs are not told apart.
    pub(crate) fn generation(&self, line: u64) -> u8 {
        usize::try_from(line)
            .ok()
            .and_then(|i| self.states.get(i))
            .map_or(0, |c| c >> GENERATION_SHIFT)
    }

    /// The highest generation of any unit.
    pub(crate) fn max_generation(&self) -> u8 {
        self.states
            .iter()
            .map(|c| c >> GENERATION_SHIFT)
            .max()
            .unwrap_or(0)
    }

    /// True when this run continues an earlier one.
    pub(crate) fn resumed(&self) -> bool {
        self.existed
    }

    /// Adds what the fleet recorded for the unit at `line` (state `code`) to what this
    /// machine's journal says. Where they differ, the more cautious wins: delivered, then
    /// possibly applied (started, unknown), then failed for sure, then never started.
    pub(crate) fn overlay(&mut self, line: u64, code: u8, max_line: u64) {
        fn rank(s: UnitState) -> u8 {
            match s {
                UnitState::New => 0,
                UnitState::Failed => 1,
                UnitState::Started | UnitState::Unknown => 2,
                UnitState::Done => 3,
            }
        }
        let theirs = UnitState::from_code(code & STATE_BITS);
        let mine = self.state(line);
        if rank(theirs) > rank(mine)
            && self.set(line, theirs, max_line).is_ok()
            && theirs == UnitState::Done
        {
            self.done_units += 1;
        }
        // The later of the two starts, whichever state won.
        let theirs = code >> GENERATION_SHIFT;
        if theirs > self.generation(line) && line >= 1 && line <= max_line {
            self.started_in(line, theirs);
        }
    }

    /// Marks the unit at `line` (in the input, its byte there) as started by a run of
    /// `generation`.
    fn started_in(&mut self, line: u64, generation: u8) {
        if let Some(byte) = usize::try_from(line)
            .ok()
            .and_then(|i| self.states.get_mut(i))
        {
            *byte = (*byte & STATE_BITS) | (generation.min(MAX_GENERATION) << GENERATION_SHIFT);
        }
    }

    /// The state code the fleet's record keeps for a unit in `state`, written by a run of
    /// `generation`.
    pub(crate) fn fleet_code(state: UnitState, generation: u8) -> u8 {
        state.code() | (generation.min(MAX_GENERATION) << GENERATION_SHIFT)
    }

    /// Another worker may have applied part of this job: resolve before applying.
    pub(crate) fn mark_resumed(&mut self) {
        self.existed = true;
    }

    fn set(&mut self, line: u64, state: UnitState, max_line: u64) -> Result<(), String> {
        if line == 0 || line > max_line {
            return Err(format!("line {line} is outside the input (1..={max_line})"));
        }
        let i = usize::try_from(line).map_err(|_| format!("line {line} is too large"))?;
        if self.states.len() <= i {
            self.states.resize(i + 1, 0);
        }
        self.states[i] = state.code() | (self.states[i] & !STATE_BITS);
        Ok(())
    }
}

/// One journal line, as read back.
#[derive(Debug, Deserialize)]
struct EntryIn {
    #[serde(default)]
    u: Option<u64>,
    s: String,
    #[serde(default)]
    status: Option<String>,
    /// A `gen` entry's generation.
    #[serde(default)]
    g: Option<u64>,
}

/// How an existing journal is treated when it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpenMode {
    /// `--journal FILE`: an existing journal is resumed.
    Resume,
    /// The default journal: resumed unless its last run completed, then started over.
    ResumeUnfinished,
    /// `--fresh`: an existing journal is replaced.
    Fresh,
}

/// An open journal: what earlier runs did, and the handle this run writes with.
#[derive(Debug)]
pub(crate) struct Journal {
    pub(crate) path: PathBuf,
    pub(crate) header: Header,
    pub(crate) past: Past,
    handle: JournalHandle,
    thread: Option<JoinHandle<()>>,
    /// A fleet shard's lease, when the journal is one shard's of a fleet job.
    fence: Option<crate::fleet::Fence>,
}

mod writer;

pub(crate) use writer::JournalHandle;
use writer::{EntryOut, Shared, writer};

fn damaged(path: &Path, line: usize, what: &str) -> CliError {
    CliError::usage(format!(
        "the journal {} is damaged at line {line} ({what}); it cannot be resumed safely: \
         move it away and start over with --fresh, after checking which records were applied",
        path.display()
    ))
}

impl Journal {
    /// Opens (or creates) the journal at `path` for `spec`. An existing journal of another job
    /// is refused with what differs (exit 2).
    pub(crate) fn open(path: &Path, spec: &JobSpec, mode: OpenMode) -> Result<Self, CliError> {
        let exists = match std::fs::metadata(path) {
            Ok(m) if !m.is_file() => {
                return Err(CliError::usage(format!(
                    "the journal {} is not a regular file; give --journal a file path",
                    path.display()
                )));
            }
            // Empty, or only part of a first line: a run died while it wrote the header, and
            // nothing is sent before the header is on disk. A new journal, then.
            Ok(m) => !(m.len() == 0 || (m.len() < 64 * 1024 && !has_newline(path))),
            Err(_) => false,
        };
        // One run at a time: a second gcx on the same journal (the same command started twice,
        // or a paused run and its replacement) would interleave its entries with the first's.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| cannot(path, &e, exists && mode != OpenMode::Fresh))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(CliError::usage(format!(
                    "the journal {} is in use by another gcx run of this job (on this machine): \
                     wait for it to end, or stop it; do not start this job with another \
                     --journal or --fresh meanwhile, which would send everything again",
                    path.display()
                )));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(cannot(path, &e, exists && mode != OpenMode::Fresh));
            }
        }
        // A default journal whose job finished is replaced by the next run, whatever it was
        // (the same command on an input whose content changed since, a fleet job of an earlier
        // run); one that did not finish is refused by `read`, which names what differs.
        let stale = exists
            && mode == OpenMode::ResumeUnfinished
            && peek(path).is_some_and(|(_, complete)| complete);
        if exists && mode != OpenMode::Fresh && !stale {
            let (header, mut past, good_len) = read(path, spec)?;
            past.existed = true;
            let complete = past.last_end.as_deref() == Some("complete");
            if !(mode == OpenMode::ResumeUnfinished && complete) {
                // A torn last entry (the crash came mid-write) is cut off.
                file.set_len(good_len).map_err(|e| cannot(path, &e, true))?;
                file.seek(SeekFrom::End(0))
                    .map_err(|e| cannot(path, &e, true))?;
                return Ok(Self::start(path, header, past, file));
            }
        }
        let header = spec.header();
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)).map(drop))
            .map_err(|e| cannot(path, &e, false))?;
        let mut line = serde_json::to_vec(&header).map_err(|e| cannot(path, &e, false))?;
        line.push(b'\n');
        file.write_all(&line)
            .and_then(|()| file.sync_all())
            .map_err(|e| cannot(path, &e, false))?;
        // The new file's name must survive a crash too.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        Ok(Self::start(path, header, Past::default(), file))
    }

    fn start(path: &Path, header: Header, past: Past, file: File) -> Self {
        let shared = Arc::new(Shared::default());
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("gcx-journal".into())
            .spawn(move || writer(file, &thread_shared))
            .ok();
        let handle = JournalHandle {
            shared,
            mirror: None,
            generation: 1,
        };
        if thread.is_none() {
            let _ = handle
                .shared
                .error
                .set("the journal's writer thread could not start".into());
        }
        let mut run = EntryOut::new(None, "run");
        run.at = Some(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        );
        handle.send(&run);
        Journal {
            path: path.to_owned(),
            header,
            past,
            handle,
            thread,
            fence: None,
        }
    }

    /// Gives up a journal before anything was sent (the run stopped first: refused credentials,
    /// say): one this run created is removed, so that the next run does not take it for a job
    /// to resume; an earlier run's is kept as it is.
    pub(crate) async fn discard(self) {
        let path = self.path.clone();
        let created = !self.past.resumed();
        let _ = self.close("not started").await;
        if created {
            let _ = std::fs::remove_file(&path);
        }
    }

    /// Binds the journal to a fleet shard's lease: every unit's state is mirrored to the
    /// fleet's record as well, and units are sent only while `fence` holds.
    ///
    /// This run's generation follows every earlier one on the shard: this journal's runs', and
    /// those the fleet recorded (which [`Past::overlay`] has added). It says so in the journal
    /// (a `gen` entry) and in every state it mirrors, so that a worker that takes the shard over
    /// later knows which lines about an entity went after which.
    pub(crate) fn lease_to(&mut self, mirror: crate::fleet::Mirror, fence: crate::fleet::Fence) {
        let mine = generation_of(self.past.runs.saturating_add(1));
        let generation = mine.max(
            self.past
                .max_generation()
                .saturating_add(1)
                .min(MAX_GENERATION),
        );
        let mut entry = EntryOut::new(None, "gen");
        entry.g = Some(u64::from(generation));
        self.handle.send(&entry);
        self.handle.mirror = Some(mirror);
        self.handle.generation = generation;
        self.fence = Some(fence);
    }

    /// The fleet shard's lease this journal is bound to, if any.
    pub(crate) fn fence(&self) -> Option<crate::fleet::Fence> {
        self.fence.clone()
    }

    /// False once a fleet shard's lease no longer surely holds: nothing more may be sent.
    pub(crate) fn holds(&self) -> bool {
        self.fence.as_ref().is_none_or(crate::fleet::Fence::holds)
    }

    /// The handle to write entries with.
    pub(crate) fn handle(&self) -> JournalHandle {
        self.handle.clone()
    }

    /// The idempotency key of the unit starting at `line`: the same in every run of the job.
    pub(crate) fn key(&self, line: u64) -> String {
        format!("gcx-{}-{line}", self.header.job)
    }

    /// Writes the run's end, waits until everything is on disk and stops the writer. Returns
    /// the first write error of the run, if any.
    pub(crate) async fn close(mut self, status: &str) -> Result<(), String> {
        let mut end = EntryOut::new(None, "end");
        end.status = Some(status);
        self.handle.send(&end);
        let rx = self.handle.ask_sync(true);
        let synced = match rx {
            Some(rx) => rx
                .await
                .unwrap_or_else(|_| Err("the journal's writer stopped".into())),
            None => Err("the journal's writer stopped".into()),
        };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        match self.handle.error() {
            Some(e) => Err(e.to_owned()),
            None => synced,
        }
    }
}

impl Drop for Journal {
    /// A journal dropped without [`Journal::close`] (the run gave up) stops its writer: what
    /// was written reaches the disk, no end entry is written (a resume treats the run as
    /// killed), and the file is free for the next run.
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            drop(self.handle.ask_sync(true));
            let _ = t.join();
        }
    }
}

/// The journal at `path` cannot be written; `resuming`: it holds a job's progress, which a
/// journal elsewhere would not have.
fn cannot(path: &Path, e: &dyn std::fmt::Display, resuming: bool) -> CliError {
    if resuming {
        return CliError::usage(format!(
            "cannot write the journal {}: {e}; it holds this job's progress: make it writable \
             (free space, permissions, a file system that takes locks) and run the same command \
             again, or copy it to a writable place and pass the copy with --journal FILE; a new \
             journal would start the job over and send every record again",
            path.display()
        ));
    }
    CliError::usage(format!(
        "cannot write the journal {}: {e}; choose a writable path with --journal FILE",
        path.display()
    ))
}

/// A journal's job id, and whether its last run completed; `None` when it cannot be read.
fn peek(path: &Path) -> Option<(String, bool)> {
    let file = File::open(path).ok()?;
    let mut reader = BufReader::new(file);
    let mut first = Vec::new();
    (&mut reader)
        .take(LINE_MAX)
        .read_until(b'\n', &mut first)
        .ok()?;
    let header: Header = serde_json::from_slice(first.trim_ascii_end()).ok()?;
    let mut complete = false;
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut reader).take(LINE_MAX).read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if let Ok(entry) = serde_json::from_slice::<EntryIn>(line.trim_ascii_end()) {
                    match entry.s.as_str() {
                        "run" => complete = false,
                        "end" => complete = entry.status.as_deref() == Some("complete"),
                        _ => {}
                    }
                }
            }
        }
    }
    Some((header.job, complete))
}

/// Reads a journal: its header (checked against `spec`), the units' states, and the length of
/// its well-formed part.
fn read(path: &Path, spec: &JobSpec) -> Result<(Header, Past, u64), CliError> {
    let file = File::open(path).map_err(|e| {
        CliError::usage(format!(
            "cannot read the journal {}: {e}; check --journal",
            path.display()
        ))
    })?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut buf = Vec::new();
    let mut good_len = 0u64;
    let mut line_no = 0usize;
    let mut header: Option<Header> = None;
    let mut past = Past::default();
    let max_line = spec.input_bytes.saturating_add(1);
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(LINE_MAX)
            .read_until(b'\n', &mut buf)
            .map_err(|e| {
                CliError::usage(format!("cannot read the journal {}: {e}", path.display()))
            })?;
        if n as u64 == LINE_MAX && buf.last() != Some(&b'\n') {
            return Err(damaged(path, line_no + 1, "a line longer than any entry"));
        }
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.last() != Some(&b'\n') {
            // A torn last line: the crash came mid-write. Cut it off.
            break;
        }
        let text = &buf[..n - 1];
        let parsed: Result<(), String> = if header.is_none() {
            match serde_json::from_slice::<Header>(text) {
                Ok(h) if h.journal == "gcx-journal" && h.version == VERSION => {
                    let differs = spec.differences(&h);
                    if !differs.is_empty() {
                        return Err(CliError::usage(format!(
                            "the journal {} belongs to another job: {} differ{}. Resume with the \
                             same command and input, or start over with --fresh (or another \
                             --journal FILE)",
                            path.display(),
                            differs.join("; "),
                            if differs.len() == 1 { "s" } else { "" }
                        )));
                    }
                    header = Some(h);
                    Ok(())
                }
                Ok(h) => Err(format!(
                    "not a gcx journal of version {VERSION} (found `{}` version {})",
                    h.journal, h.version
                )),
                Err(e) => Err(format!("no journal header: {e}")),
            }
        } else {
            serde_json::from_slice::<EntryIn>(text)
                .map_err(|e| e.to_string())
                .and_then(|entry| apply(&mut past, &entry, max_line))
        };
        match parsed {
            Ok(()) => good_len += n as u64,
            // A garbled last line is what a crash mid-write can leave too: cut it off.
            Err(_) if header.is_some() && reader.fill_buf().map_or(true, <[u8]>::is_empty) => break,
            Err(e) => return Err(damaged(path, line_no, &e)),
        }
    }
    let Some(header) = header else {
        return Err(damaged(path, 1, "no header"));
    };
    Ok((header, past, good_len))
}

/// Whether the file at `path` holds a whole line (false when it cannot be read).
fn has_newline(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|bytes| bytes.contains(&b'\n'))
}

fn apply(past: &mut Past, entry: &EntryIn, max_line: u64) -> Result<(), String> {
    let state = match entry.s.as_str() {
        "run" => {
            past.runs = past.runs.saturating_add(1);
            past.last_end = None;
            past.generation = generation_of(past.runs);
            return Ok(());
        }
        // The run's generation, when it is not its number in this journal (a fleet worker's
        // run on a shard others worked on).
        "gen" => {
            if let Some(g) = entry.g {
                past.generation = generation_of(u32::try_from(g).unwrap_or(u32::MAX));
            }
            return Ok(());
        }
        "end" => {
            past.last_end = Some(entry.status.clone().unwrap_or_default());
            return Ok(());
        }
        "read" => return Ok(()),
        "start" => UnitState::Started,
        "done" => UnitState::Done,
        "failed" => UnitState::Failed,
        "unknown" => UnitState::Unknown,
        other => return Err(format!("unknown entry `{other}`")),
    };
    let line = entry
        .u
        .ok_or_else(|| format!("a `{}` entry without its line", entry.s))?;
    let before = past.state(line);
    past.set(line, state, max_line)?;
    // Which run started it: a line about an entity that a later run started went after the
    // earlier runs' lines about it.
    if state == UnitState::Started {
        past.started_in(line, past.generation);
    }
    if state == UnitState::Done && before != UnitState::Done {
        past.done_units += 1;
    } else if before == UnitState::Done && state != UnitState::Done {
        past.done_units = past.done_units.saturating_sub(1);
    }
    Ok(())
}

/// The default journal of a job: in `$GCX_STATE_DIR`, else `$XDG_STATE_HOME/gcx/journals`, else
/// `~/.local/state/gcx/journals`; named after the command and the input, so that running the
/// same command on the same file again finds it.
pub(crate) fn default_path(spec: &JobSpec) -> Result<PathBuf, CliError> {
    default_path_for(spec, None)
}

/// The default journal of a job, or of a takeover of another worker's shard (`takeover`, naming
/// the taker): a file apart from the one that worker, or another taker, keeps on this machine.
pub(crate) fn default_path_for(
    spec: &JobSpec,
    takeover: Option<&str>,
) -> Result<PathBuf, CliError> {
    // Only absolute directories: a relative one names another directory from wherever gcx is
    // started, and the same command run from there would not find its journal (it would be a
    // new job, sending everything again).
    let absolute = |d: std::ffi::OsString| Some(PathBuf::from(d)).filter(|d| d.is_absolute());
    let dir = if let Some(d) = std::env::var_os("GCX_STATE_DIR").filter(|d| !d.is_empty()) {
        absolute(d.clone()).ok_or_else(|| {
            CliError::usage(format!(
                "GCX_STATE_DIR is {}, a relative path: give an absolute one",
                PathBuf::from(d).display()
            ))
        })?
    } else if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        // Refused rather than ignored (as the XDG rules would have it): a journal an earlier
        // gcx kept there would not be found, and the job would start again from nothing.
        absolute(d.clone())
            .ok_or_else(|| {
                CliError::usage(format!(
                    "XDG_STATE_HOME is {}, a relative path: give an absolute one (or set \
                     GCX_STATE_DIR)",
                    PathBuf::from(d).display()
                ))
            })?
            .join("gcx")
            .join("journals")
    } else if let Some(home) = std::env::var_os("HOME").and_then(absolute) {
        home.join(".local")
            .join("state")
            .join("gcx")
            .join("journals")
    } else {
        return Err(CliError::usage(
            "no directory for the job's journal: HOME is not set (or not absolute); set \
             GCX_STATE_DIR to an absolute directory, or give --journal FILE",
        ));
    };
    std::fs::create_dir_all(&dir).map_err(|e| {
        CliError::usage(format!(
            "cannot create the journal directory {}: {e}; give --journal FILE (or set \
             GCX_STATE_DIR)",
            dir.display()
        ))
    })?;
    let canonical = std::fs::canonicalize(&spec.input).unwrap_or_else(|_| spec.input.clone());
    let shown = format!(
        "{}|{}|{}",
        spec.command,
        canonical.display(),
        spec.action_id.as_deref().unwrap_or("")
    );
    let mut rest = String::new();
    // Each worker of a sharded job has a journal of its own.
    // By `I/N` alone: a journal of the same shard split another way is found, and refused for
    // it, rather than passed by.
    if let Some(shard) = spec.shard {
        rest.push_str(&format!("|shard {shard}"));
    }
    if let Some(run) = &spec.run {
        rest.push_str(&format!("|run {run}"));
    }
    if let Some(taker) = takeover {
        rest.push_str(&format!("|takeover by {taker}"));
    }
    let stem: String = spec
        .input
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let named = |identity: &str| {
        dir.join(format!(
            "{}-{stem}-{:016x}.journal",
            spec.command.replace(' ', "-"),
            fnv1a(identity.as_bytes())
        ))
    };
    let journal = named(&format!("{shown}{rest}"));
    if canonical.to_str().is_some() {
        return Ok(journal);
    }
    // A path that is not UTF-8 shows its odd bytes as U+FFFD, and two such paths may show alike:
    // its bytes tell them apart. A journal an earlier gcx kept by the name alone is still found
    // (its header refuses it if it is another input's).
    let bytes: String = canonical
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let own = named(&format!("{shown}|bytes {bytes}{rest}"));
    // Only an unfinished one: its header then says whether it is this input's job, and refuses
    // it with what differs when it is not (this input's content changed, or another input
    // shown alike), as it did, rather than start this job over in silence.
    let earlier = !own.exists() && peek(&journal).is_some_and(|(_, complete)| !complete);
    Ok(if earlier { journal } else { own })
}

#[cfg(test)]
mod tests;
