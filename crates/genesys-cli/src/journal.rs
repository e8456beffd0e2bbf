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
//! `{"u":LINE,"s":"unknown","why":...}`; `{"s":"end","status":...}` when a run ends. `LINE` is the
//! line of the unit's first record in the input; the last entry of a unit wins.
//!
//! Entries are written by a thread of their own, batched, and synced to disk at least every
//! [`SYNC_EVERY`]; a unit whose request must never be sent twice waits for
//! [`JournalHandle::sync`] after its `start` entry, so its start is on disk before the request
//! leaves. A crash loses at most the entries of the last interval, and the resume treats a
//! unit without an outcome as possibly applied. A torn last line (the crash came mid-write) is
//! cut off on open.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::error::CliError;

/// The longest time an entry waits in memory before it is synced to disk.
pub(crate) const SYNC_EVERY: Duration = Duration::from_millis(100);

/// The format's version, in the header.
const VERSION: u32 = 1;

/// The longest reason kept in an entry, in characters.
const REASON_MAX: usize = 500;

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
}

impl JobSpec {
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
            job: format!("{:016x}", fnv1a(seed.as_bytes())),
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

fn hash_file(path: &Path) -> std::io::Result<(String, u64)> {
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
    fn code(self) -> u8 {
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
}

impl Past {
    /// The state of the unit that starts at `line`.
    pub(crate) fn state(&self, line: u64) -> UnitState {
        usize::try_from(line)
            .ok()
            .and_then(|i| self.states.get(i))
            .map_or(UnitState::New, |c| UnitState::from_code(*c))
    }

    /// True when this run continues an earlier one.
    pub(crate) fn resumed(&self) -> bool {
        self.existed
    }

    fn set(&mut self, line: u64, state: UnitState, max_line: u64) -> Result<(), String> {
        if line == 0 || line > max_line {
            return Err(format!("line {line} is outside the input (1..={max_line})"));
        }
        let i = usize::try_from(line).map_err(|_| format!("line {line} is too large"))?;
        if self.states.len() <= i {
            self.states.resize(i + 1, 0);
        }
        self.states[i] = state.code();
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
}

/// One journal line, as written.
#[derive(Debug, Serialize)]
struct EntryOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    u: Option<u64>,
    s: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    n: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    k: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    v: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    why: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    at: Option<u64>,
}

impl<'a> EntryOut<'a> {
    fn new(u: Option<u64>, s: &'a str) -> Self {
        EntryOut {
            u,
            s,
            n: None,
            k: None,
            v: None,
            why: None,
            status: None,
            at: None,
        }
    }
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
}

/// Writes entries; cheap to clone, shared with the tasks that deliver units.
///
/// Entries are serialized into a shared buffer under a short lock; the writer thread takes the
/// buffer every [`DRAIN_EVERY`] (or at once when a sync is asked for), so the job pays neither an
/// allocation nor a thread wake-up per entry.
#[derive(Debug, Clone)]
pub(crate) struct JournalHandle {
    shared: Arc<Shared>,
}

type Waiter = oneshot::Sender<Result<(), String>>;

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// The first write error; once set, nothing more is written.
    error: OnceLock<String>,
}

#[derive(Debug, Default)]
struct State {
    buf: Vec<u8>,
    waiters: Vec<Waiter>,
    closing: bool,
}

/// How often the writer thread takes what was buffered.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

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
            Ok(_) => true,
            Err(_) => false,
        };
        if exists && mode != OpenMode::Fresh {
            let (header, mut past, good_len) = read(path, spec)?;
            past.existed = true;
            let complete = past.last_end.as_deref() == Some("complete");
            if !(mode == OpenMode::ResumeUnfinished && complete) {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path)
                    .map_err(|e| cannot(path, &e))?;
                // A torn last entry (the crash came mid-write) is cut off.
                file.set_len(good_len).map_err(|e| cannot(path, &e))?;
                let mut file = file;
                file.seek(SeekFrom::End(0)).map_err(|e| cannot(path, &e))?;
                return Ok(Self::start(path, header, past, file));
            }
        }
        let header = spec.header();
        let mut file = File::create(path).map_err(|e| cannot(path, &e))?;
        let mut line = serde_json::to_vec(&header).map_err(|e| cannot(path, &e))?;
        line.push(b'\n');
        file.write_all(&line)
            .and_then(|()| file.sync_all())
            .map_err(|e| cannot(path, &e))?;
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
        let handle = JournalHandle { shared };
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
        }
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

fn cannot(path: &Path, e: &dyn std::fmt::Display) -> CliError {
    CliError::usage(format!(
        "cannot write the journal {}: {e}; choose a writable path with --journal FILE",
        path.display()
    ))
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

fn apply(past: &mut Past, entry: &EntryIn, max_line: u64) -> Result<(), String> {
    let state = match entry.s.as_str() {
        "run" => {
            past.runs = past.runs.saturating_add(1);
            past.last_end = None;
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
    if state == UnitState::Done && before != UnitState::Done {
        past.done_units += 1;
    } else if before == UnitState::Done && state != UnitState::Done {
        past.done_units = past.done_units.saturating_sub(1);
    }
    Ok(())
}

impl JournalHandle {
    fn send(&self, entry: &EntryOut<'_>) {
        if self.shared.error.get().is_some() {
            return;
        }
        let mut state = lock(&self.shared.state);
        let before = state.buf.len();
        if serde_json::to_writer(&mut state.buf, entry).is_ok() {
            state.buf.push(b'\n');
        } else {
            state.buf.truncate(before);
        }
    }

    /// Asks the writer for a sync (and, with `close`, to stop after it); `None` when the writer
    /// is gone.
    fn ask_sync(&self, close: bool) -> Option<oneshot::Receiver<Result<(), String>>> {
        let (tx, rx) = oneshot::channel();
        let mut state = lock(&self.shared.state);
        if state.closing {
            return None;
        }
        state.waiters.push(tx);
        state.closing |= close;
        drop(state);
        self.shared.wake.notify_one();
        Some(rx)
    }

    /// The unit starting at `line` (`records` records) is about to be sent with `key`.
    pub(crate) fn start(&self, line: u64, records: usize, key: &str) {
        let mut e = EntryOut::new(Some(line), "start");
        e.n = Some(records as u64);
        e.k = Some(key);
        self.send(&e);
    }

    /// The user of the unit at `line` is patched with `version`.
    pub(crate) fn read_version(&self, line: u64, version: u64) {
        let mut e = EntryOut::new(Some(line), "read");
        e.v = Some(version);
        self.send(&e);
    }

    /// The unit at `line` was delivered.
    pub(crate) fn done(&self, line: u64) {
        self.send(&EntryOut::new(Some(line), "done"));
    }

    /// The unit at `line` failed for sure: nothing was applied.
    pub(crate) fn failed(&self, line: u64, why: &str) {
        let mut e = EntryOut::new(Some(line), "failed");
        let why = cut(why);
        e.why = Some(&why);
        self.send(&e);
    }

    /// The outcome of the unit at `line` is unknown.
    pub(crate) fn unknown(&self, line: u64, why: &str) {
        let mut e = EntryOut::new(Some(line), "unknown");
        let why = cut(why);
        e.why = Some(&why);
        self.send(&e);
    }

    /// Waits until every entry sent so far is on disk.
    pub(crate) async fn sync(&self) -> Result<(), String> {
        if let Some(e) = self.error() {
            return Err(e.to_owned());
        }
        let rx = self
            .ask_sync(false)
            .ok_or_else(|| "the journal is closed".to_owned())?;
        rx.await
            .unwrap_or_else(|_| Err("the journal's writer stopped".into()))
    }

    /// The first error writing the journal, if any.
    pub(crate) fn error(&self) -> Option<&str> {
        self.shared.error.get().map(String::as_str)
    }
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn cut(s: &str) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(REASON_MAX) {
        None => s.into(),
        Some((i, _)) => format!("{}...", &s[..i]).into(),
    }
}

/// The writer thread: every [`DRAIN_EVERY`], or at once when a sync is asked for, takes the
/// buffered entries and appends them; syncs at most [`SYNC_EVERY`] after the first unsynced
/// entry, and at once for a waiter; stops after a close.
fn writer(file: File, shared: &Shared) {
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    let mut spare: Vec<u8> = Vec::new();
    let mut dirty_since: Option<Instant> = None;
    loop {
        let (mut buf, waiters, closing) = {
            let mut state = lock(&shared.state);
            if state.waiters.is_empty() && !state.closing {
                state = shared
                    .wake
                    .wait_timeout(state, DRAIN_EVERY)
                    .map_or_else(|e| e.into_inner().0, |(s, _)| s);
            }
            let buf = std::mem::replace(&mut state.buf, std::mem::take(&mut spare));
            (buf, std::mem::take(&mut state.waiters), state.closing)
        };
        if !buf.is_empty() && shared.error.get().is_none() {
            if let Err(e) = out.write_all(&buf) {
                let _ = shared.error.set(format!("writing the journal failed: {e}"));
            }
            dirty_since.get_or_insert_with(Instant::now);
        }
        buf.clear();
        spare = buf;
        let due = dirty_since.is_some_and(|t| t.elapsed() >= SYNC_EVERY);
        if (due || !waiters.is_empty() || closing) && dirty_since.take().is_some() {
            let synced = out.flush().and_then(|()| out.get_ref().sync_data());
            if let Err(e) = synced {
                let _ = shared.error.set(format!("syncing the journal failed: {e}"));
            }
        }
        let result = match shared.error.get() {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        };
        for w in waiters {
            let _ = w.send(result.clone());
        }
        if closing {
            return;
        }
    }
}

/// The default journal of a job: in `$GCX_STATE_DIR`, else `$XDG_STATE_HOME/gcx/journals`, else
/// `~/.local/state/gcx/journals`; named after the command and the input, so that running the
/// same command on the same file again finds it.
pub(crate) fn default_path(spec: &JobSpec) -> Result<PathBuf, CliError> {
    let dir = if let Some(d) = std::env::var_os("GCX_STATE_DIR").filter(|d| !d.is_empty()) {
        PathBuf::from(d)
    } else if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        PathBuf::from(d).join("gcx").join("journals")
    } else if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        PathBuf::from(home)
            .join(".local")
            .join("state")
            .join("gcx")
            .join("journals")
    } else {
        PathBuf::from(".gcx").join("journals")
    };
    std::fs::create_dir_all(&dir).map_err(|e| {
        CliError::usage(format!(
            "cannot create the journal directory {}: {e}; give --journal FILE (or set \
             GCX_STATE_DIR)",
            dir.display()
        ))
    })?;
    let canonical = std::fs::canonicalize(&spec.input).unwrap_or_else(|_| spec.input.clone());
    let identity = format!(
        "{}|{}|{}",
        spec.command,
        canonical.display(),
        spec.action_id.as_deref().unwrap_or("")
    );
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
    Ok(dir.join(format!(
        "{}-{stem}-{:016x}.journal",
        spec.command.replace(' ', "-"),
        fnv1a(identity.as_bytes())
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gcx-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    fn spec(input: &Path) -> JobSpec {
        JobSpec::new("users patch", input, None, 1).unwrap()
    }

    #[tokio::test]
    async fn states_survive_a_reopen_and_the_last_entry_wins() {
        let input = temp("in1.jsonl");
        std::fs::write(&input, "a\nb\nc\nd\n").unwrap();
        let path = temp("j1.journal");
        let j = Journal::open(&path, &spec(&input), OpenMode::Fresh).unwrap();
        let h = j.handle();
        h.start(1, 1, &j.key(1));
        h.done(1);
        h.start(2, 1, &j.key(2));
        h.start(3, 1, &j.key(3));
        h.unknown(3, "reset");
        h.start(4, 1, &j.key(4));
        h.failed(4, "404");
        h.sync().await.unwrap();
        let key1 = j.key(1);
        drop(h);
        // Killed: no end entry.
        drop(j);
        let j = Journal::open(&path, &spec(&input), OpenMode::Resume).unwrap();
        assert_eq!(j.key(1), key1, "the same keys in a resumed run");
        assert!(j.past.resumed());
        assert_eq!(j.past.last_end, None);
        assert_eq!(j.past.state(1), UnitState::Done);
        assert_eq!(j.past.state(2), UnitState::Started);
        assert_eq!(j.past.state(3), UnitState::Unknown);
        assert_eq!(j.past.state(4), UnitState::Failed);
        assert_eq!(j.past.state(5), UnitState::New);
        j.close("complete").await.unwrap();
        // A completed default journal starts over; an explicit one is resumed.
        let j = Journal::open(&path, &spec(&input), OpenMode::ResumeUnfinished).unwrap();
        assert!(!j.past.resumed());
        assert_eq!(j.past.state(1), UnitState::New);
        assert_ne!(j.key(1), key1, "a new job");
    }

    #[tokio::test]
    async fn a_torn_last_line_is_cut_off_and_damage_elsewhere_refused() {
        let input = temp("in2.jsonl");
        std::fs::write(&input, "a\nb\n").unwrap();
        let path = temp("j2.journal");
        let j = Journal::open(&path, &spec(&input), OpenMode::Fresh).unwrap();
        j.handle().done(1);
        j.close("interrupted").await.unwrap();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{\"u\":2,\"s\":\"do").unwrap();
        drop(f);
        let j = Journal::open(&path, &spec(&input), OpenMode::Resume).unwrap();
        assert_eq!(j.past.state(1), UnitState::Done);
        assert_eq!(j.past.state(2), UnitState::New);
        j.handle().done(2);
        j.close("complete").await.unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.lines()
                .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
            "{text}"
        );

        let text = text.replacen("{\"u\":1,\"s\":\"done\"}", "{\"u\":1,\"s\":", 1);
        std::fs::write(&path, text).unwrap();
        let err = Journal::open(&path, &spec(&input), OpenMode::Resume).unwrap_err();
        assert!(err.to_string().contains("damaged at line"), "{err}");
    }

    #[tokio::test]
    async fn another_job_is_refused_with_what_differs() {
        let input = temp("in3.jsonl");
        std::fs::write(&input, "a\n").unwrap();
        let path = temp("j3.journal");
        Journal::open(&path, &spec(&input), OpenMode::Fresh)
            .unwrap()
            .close("incomplete")
            .await
            .unwrap();
        std::fs::write(&input, "a\nb\n").unwrap();
        let other = JobSpec::new("ingest", &input, None, 500).unwrap();
        let err = Journal::open(&path, &other, OpenMode::Resume).unwrap_err();
        let msg = err.to_string();
        assert_eq!(err.code(), 2);
        for what in [
            "the command",
            "the input's content",
            "--chunk-size",
            "--fresh",
        ] {
            assert!(msg.contains(what), "{what}: {msg}");
        }
    }

    #[test]
    fn an_entry_past_the_input_is_damage() {
        let mut past = Past::default();
        assert!(past.set(0, UnitState::Done, 10).is_err());
        assert!(past.set(11, UnitState::Done, 10).is_err());
        past.set(10, UnitState::Done, 10).unwrap();
        assert_eq!(past.state(10), UnitState::Done);
    }
}
