//! The policy store's audit log: one JSON line per change (apply, promote, rollback, manual or
//! automatic), each carrying the SHA-256 of the line before it, so that an edited, inserted or
//! removed line breaks the chain; the store's state keeps the last line's hash and number, so
//! that lines cut off the end are found too.

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The hash before the first entry.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The longest line read back.
const LINE_MAX: u64 = 64 * 1024;

/// One change of the store. Numbers that are not integers are written as text (`"0.1000"`), so
/// that the hash of a line read back is the hash it was written with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Entry {
    /// 1 for the first entry, then one more per entry.
    pub(crate) seq: u64,
    /// Seconds since the Unix epoch.
    pub(crate) at: u64,
    /// Who: `--actor`, else the OS user; `gcx (automatic)` for an automatic rollback.
    pub(crate) actor: String,
    /// `apply`, `canary`, `promote` or `rollback`.
    pub(crate) action: String,
    /// The version the change made current (stable, or canary for `canary`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) version: Option<String>,
    /// The version it replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) from: Option<String>,
    /// A canary's share of the calls (0 to 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) share: Option<String>,
    /// A canary's success-rate ratio below which it is rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) rollback_below: Option<String>,
    /// Why, as the actor said (or the evidence, for an automatic rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reason: Option<String>,
    /// The hash of the entry before (or [`GENESIS`]).
    pub(crate) prev: String,
    /// The SHA-256 of this entry with `hash` empty, in canonical JSON.
    pub(crate) hash: String,
}

/// JSON with every object's keys sorted: the same value, the same bytes.
pub(crate) fn canonical(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                let mut out = serde_json::Map::new();
                for k in keys {
                    out.insert(k.clone(), sorted(&map[k]));
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

/// The SHA-256 of `bytes`, in hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Entry {
    /// The entry's own hash: of its canonical JSON with `hash` empty.
    fn compute_hash(&self) -> String {
        let mut unsigned = self.clone();
        unsigned.hash = String::new();
        let value = serde_json::to_value(&unsigned).unwrap_or_default();
        sha256_hex(canonical(&value).as_bytes())
    }

    /// Seals the entry after the one whose hash is `prev`.
    pub(crate) fn seal(mut self, seq: u64, prev: &str) -> Self {
        self.seq = seq;
        self.prev = prev.to_owned();
        self.hash = self.compute_hash();
        self
    }
}

/// Appends a sealed entry after the log's first `len` bytes (what the store's state knows of:
/// anything after them is the remains of a change that did not finish, and is cut off) and
/// syncs it to disk. Returns the log's new length.
pub(crate) fn append(path: &Path, len: u64, entry: &Entry) -> std::io::Result<u64> {
    let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)?;
    file.set_len(len)?;
    file.seek(SeekFrom::Start(len))?;
    file.write_all(&line)?;
    file.sync_all()?;
    Ok(len + line.len() as u64)
}

/// Where the log in a file ends after its first `entries` lines: the length of the log a
/// state knows of when that state predates the length it keeps now (it kept the last entry's
/// number only). Fewer lines than that: the file's length.
pub(crate) fn end_of(path: &Path, entries: u64) -> std::io::Result<u64> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut reader = BufReader::new(file);
    let mut end = 0u64;
    for _ in 0..entries {
        let mut buf = Vec::new();
        let n = (&mut reader).take(LINE_MAX).read_until(b'\n', &mut buf)?;
        if n == 0 || buf.last() != Some(&b'\n') {
            // The end of the file, or a line too long for an entry: cut there at the latest.
            end = end.saturating_add(n as u64);
            break;
        }
        end = end.saturating_add(n as u64);
    }
    Ok(end)
}

/// Reads the log in a file: every entry, or the first line that breaks the chain (its number
/// and what is wrong). `head` is what the store's state says the last entry is (number, hash).
pub(crate) fn verify(path: &Path, head: (u64, &str)) -> Result<Vec<Entry>, String> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && head.0 == 0 => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut reader = BufReader::new(file);
    // Read as they are checked: a log that goes wrong is not read past its first bad line (a
    // file that never ends, say, stops at its first 64 KiB).
    let lines = std::iter::from_fn(|| {
        let mut buf = Vec::new();
        match (&mut reader).take(LINE_MAX).read_until(b'\n', &mut buf) {
            Ok(0) => None,
            Ok(_) => Some(Ok(buf)),
            Err(e) => Some(Err(format!("cannot read {}: {e}", path.display()))),
        }
    });
    verify_lines(lines, head)
}

/// Checks the chain of `lines` (one entry each) against `head`.
pub(crate) fn verify_lines(
    lines: impl IntoIterator<Item = Result<Vec<u8>, String>>,
    head: (u64, &str),
) -> Result<Vec<Entry>, String> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut prev = GENESIS.to_owned();
    for buf in lines {
        let buf = buf?;
        let line = entries.len() + 1;
        let entry: Entry = serde_json::from_slice(buf.trim_ascii_end())
            .map_err(|e| format!("line {line}: not an audit entry ({e})"))?;
        if entry.seq != line as u64 {
            return Err(format!(
                "line {line}: entry number {} where {line} was expected (a line was removed \
                 or inserted)",
                entry.seq
            ));
        }
        if entry.prev != prev {
            return Err(format!(
                "line {line}: it does not follow the line before (a line was removed, inserted \
                 or edited)"
            ));
        }
        if entry.compute_hash() != entry.hash {
            return Err(format!(
                "line {line}: its content does not match its hash (edited)"
            ));
        }
        prev.clone_from(&entry.hash);
        entries.push(entry);
    }
    let (seq, hash) = head;
    let last = entries
        .last()
        .map_or((0, GENESIS), |e| (e.seq, e.hash.as_str()));
    if last != (seq, hash) {
        return Err(format!(
            "the log ends at entry {} but the store's state says {seq} (lines were cut off the \
             end, or the state was edited)",
            last.0
        ));
    }
    Ok(entries)
}
