//! The journal's writer: entries serialized into a shared buffer, drained, appended and synced by
//! a thread of its own.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::oneshot;

use super::{SYNC_EVERY, UnitState};
use crate::fleet::Mirror;

/// One journal line, as written.
#[derive(Debug, Serialize)]
pub(super) struct EntryOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) u: Option<u64>,
    pub(super) s: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) n: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) k: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) v: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) why: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) status: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) g: Option<u64>,
}

impl<'a> EntryOut<'a> {
    pub(super) fn new(u: Option<u64>, s: &'a str) -> Self {
        EntryOut {
            u,
            s,
            n: None,
            k: None,
            v: None,
            why: None,
            status: None,
            at: None,
            g: None,
        }
    }
}

/// Writes entries; cheap to clone, shared with the tasks that deliver units.
///
/// Entries are serialized into a shared buffer under a short lock; the writer thread takes the
/// buffer every [`DRAIN_EVERY`] (or at once when a sync is asked for), so the job pays neither an
/// allocation nor a thread wake-up per entry.
#[derive(Debug, Clone)]
pub(crate) struct JournalHandle {
    pub(super) shared: Arc<Shared>,
    /// A fleet job's record of unit states, written along with the journal.
    pub(super) mirror: Option<Mirror>,
    /// This run's generation (a fleet worker's), which the states it mirrors carry.
    pub(super) generation: u8,
}

type Waiter = oneshot::Sender<Result<(), String>>;

#[derive(Debug, Default)]
pub(super) struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// The first write error; once set, nothing more is written.
    pub(super) error: OnceLock<String>,
}

#[derive(Debug, Default)]
struct State {
    buf: Vec<u8>,
    waiters: Vec<Waiter>,
    closing: bool,
}

/// How often the writer thread takes what was buffered.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

impl JournalHandle {
    pub(super) fn send(&self, entry: &EntryOut<'_>) {
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
    pub(super) fn ask_sync(&self, close: bool) -> Option<oneshot::Receiver<Result<(), String>>> {
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
        self.mirror(line, UnitState::Started);
    }

    fn mirror(&self, line: u64, state: UnitState) {
        if let Some(m) = &self.mirror {
            m.set(line, super::Past::fleet_code(state, self.generation));
        }
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
        self.mirror(line, UnitState::Done);
    }

    /// The unit at `line` failed for sure: nothing was applied.
    pub(crate) fn failed(&self, line: u64, why: &str) {
        let mut e = EntryOut::new(Some(line), "failed");
        let why = super::cut_reason(why);
        e.why = Some(&why);
        self.send(&e);
        self.mirror(line, UnitState::Failed);
    }

    /// The outcome of the unit at `line` is unknown.
    pub(crate) fn unknown(&self, line: u64, why: &str) {
        let mut e = EntryOut::new(Some(line), "unknown");
        let why = super::cut_reason(why);
        e.why = Some(&why);
        self.send(&e);
        self.mirror(line, UnitState::Unknown);
    }

    /// Waits until every entry sent so far is on disk, and in a fleet job's record.
    pub(crate) async fn sync(&self) -> Result<(), String> {
        if let Some(e) = self.error() {
            return Err(e.to_owned());
        }
        let rx = self
            .ask_sync(false)
            .ok_or_else(|| "the journal is closed".to_owned())?;
        let (disk, fleet) = tokio::join!(
            async {
                rx.await
                    .unwrap_or_else(|_| Err("the journal's writer stopped".into()))
            },
            async {
                match &self.mirror {
                    Some(m) => m.flush().await,
                    None => Ok(()),
                }
            }
        );
        disk.and(fleet)
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

/// The writer thread: every [`DRAIN_EVERY`], or at once when a sync is asked for, takes the
/// buffered entries and appends them; syncs at most [`SYNC_EVERY`] after the first unsynced
/// entry, and at once for a waiter; stops after a close.
pub(super) fn writer(file: File, shared: &Shared) {
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
