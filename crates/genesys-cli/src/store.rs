//! The policy store (`gcx policy apply`): versions of the stack's configuration in a directory,
//! named by the SHA-256 of their content; which one is stable and which one is a canary; and
//! the audit log.
//!
//! ```text
//! STORE/versions/<id>.json   a version: the settings it sets, canonical JSON (never edited)
//! STORE/state.json           {"stable", "canary", "history", "audit"}, replaced atomically
//! STORE/audit.jsonl          one hash-chained line per change
//! STORE/lock                 held by the one writer at a time
//! ```

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use self::audit::{Entry, GENESIS, canonical, sha256_hex};
use crate::cli::Common;
use crate::error::CliError;

pub(crate) mod audit;
mod redis;

use self::redis::RedisStore;

/// The store's directory: `--policy-store`, else `$XDG_STATE_HOME/gcx/policies`, else
/// `~/.local/state/gcx/policies`.
pub(crate) fn store_dir(common: &Common, env: impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(dir) = &common.policy_store {
        return Some(dir.clone());
    }
    let env = |name: &str| env(name).filter(|v| !v.is_empty());
    env("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".local").join("state")))
        .map(|base| base.join("gcx").join("policies"))
}

/// Hex digits of a version's id (of its SHA-256).
const ID_LEN: usize = 16;

/// The largest state or version file read.
const FILE_MAX: u64 = 1024 * 1024;

/// A canary: a version a share of the calls runs, watched against the stable one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Canary {
    pub(crate) version: String,
    /// The share of calls (0 to 1, exclusive of 0).
    pub(crate) share: f64,
    /// The canary is rolled back when its success rate falls below this ratio of the stable
    /// version's.
    pub(crate) rollback_below: f64,
    /// When it started, seconds since the Unix epoch.
    pub(crate) since: u64,
    /// Promoted automatically once it has run this many calls without being rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) promote_after: Option<u64>,
    /// Rolled back when its calls take longer than the stable version's by more than this, in
    /// milliseconds, on average.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) max_added_latency_ms: Option<u64>,
}

/// Where the audit log ends, as the state knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct AuditHead {
    pub(crate) seq: u64,
    pub(crate) hash: String,
    /// The log's length in bytes after that entry.
    #[serde(default)]
    pub(crate) len: u64,
}

impl Default for AuditHead {
    fn default() -> Self {
        AuditHead {
            seq: 0,
            hash: GENESIS.to_owned(),
            len: 0,
        }
    }
}

/// Which versions are current.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct State {
    pub(crate) stable: Option<String>,
    pub(crate) canary: Option<Canary>,
    /// The stable versions before this one, oldest first: what `rollback` returns to.
    #[serde(default)]
    pub(crate) history: Vec<String>,
    #[serde(default)]
    pub(crate) audit: AuditHead,
}

/// A policy store in a directory.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    dir: PathBuf,
    /// A store in Redis (`--policy-store redis://...`) instead of the directory.
    redis: Option<RedisStore>,
}

fn redis_error(store: &RedisStore, e: &str) -> CliError {
    CliError::usage(format!(
        "the policy store {}: {e}; check --policy-store",
        store.shown()
    ))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn io(path: &Path, e: &dyn std::fmt::Display) -> CliError {
    CliError::usage(format!(
        "the policy store: {}: {e}; check --policy-store",
        path.display()
    ))
}

fn read_small(path: &Path) -> Result<Option<Vec<u8>>, CliError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path, &e)),
    };
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, FILE_MAX + 1), &mut bytes)
        .map_err(|e| io(path, &e))?;
    if bytes.len() as u64 > FILE_MAX {
        return Err(io(path, &"larger than any file the store writes"));
    }
    Ok(Some(bytes))
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, synced, renamed over it,
/// and the directory synced.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    // A name no other writer uses (hosts sharing the directory may share process ids), made
    // new (never following a link left there).
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = path.with_extension(format!("tmp.{}.{nanos}", std::process::id()));
    let written = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok::<(), std::io::Error>(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(|e| io(path, &e))
}

/// The store's one writer: holds `STORE/lock` (or the lock in Redis) until dropped.
pub(crate) struct Writer<'a> {
    store: &'a Store,
    _lock: Option<File>,
    token: Option<String>,
    pub(crate) state: State,
}

impl Drop for Writer<'_> {
    fn drop(&mut self) {
        if let (Some(redis), Some(token)) = (&self.store.redis, &self.token) {
            redis.unlock(token);
        }
    }
}

impl Store {
    /// The store at `location`: a directory (made when missing), or `redis://...`.
    pub(crate) fn open(location: &Path) -> Result<Self, CliError> {
        if let Some(redis) = RedisStore::parse(&location.to_string_lossy()) {
            let redis = redis.map_err(|e| CliError::usage(format!("--policy-store: {e}")))?;
            return Ok(Store {
                dir: location.to_owned(),
                redis: Some(redis),
            });
        }
        std::fs::create_dir_all(location.join("versions")).map_err(|e| io(location, &e))?;
        Ok(Store {
            dir: location.to_owned(),
            redis: None,
        })
    }

    /// The store at `location` if there is one (nothing is made; a store in Redis is taken
    /// as there, and read).
    pub(crate) fn existing(location: &Path) -> Option<Self> {
        if let Some(redis) = RedisStore::parse(&location.to_string_lossy()) {
            return redis.ok().map(|redis| Store {
                dir: location.to_owned(),
                redis: Some(redis),
            });
        }
        location.join("state.json").is_file().then(|| Store {
            dir: location.to_owned(),
            redis: None,
        })
    }

    /// Where the store is, for messages (without credentials).
    pub(crate) fn shown(&self) -> String {
        match &self.redis {
            Some(r) => r.shown().to_owned(),
            None => self.dir.display().to_string(),
        }
    }

    /// An error about `name`, a part of the store (a file of its directory, or the same part
    /// of a store in Redis), named as [`shown`](Self::shown) names the store: a Redis URL's
    /// credentials are never in the message.
    fn damaged(&self, name: &str, e: &dyn std::fmt::Display) -> CliError {
        let place = match &self.redis {
            Some(r) => format!("{} ({name})", r.shown()),
            None => self.dir.join(name).display().to_string(),
        };
        CliError::usage(format!(
            "the policy store: {place}: {e}; check --policy-store"
        ))
    }

    fn audit_path(&self) -> PathBuf {
        self.dir.join("audit.jsonl")
    }

    /// The current state (the empty state when nothing was applied yet).
    pub(crate) fn state(&self) -> Result<State, CliError> {
        let bytes = match &self.redis {
            Some(r) => r.state().map_err(|e| redis_error(r, &e))?,
            None => read_small(&self.dir.join("state.json"))?,
        };
        match bytes {
            None => Ok(State::default()),
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                self.damaged("state.json", &format!("not a policy store's state ({e})"))
            }),
        }
    }

    /// Takes the store's lock (waiting for another writer) and reads the state.
    pub(crate) fn writer(&self) -> Result<Writer<'_>, CliError> {
        if let Some(r) = &self.redis {
            let token = r.lock().map_err(|e| redis_error(r, &e))?;
            let mut writer = Writer {
                store: self,
                _lock: None,
                token: Some(token),
                state: State::default(),
            };
            writer.state = self.state()?;
            return Ok(writer);
        }
        let path = self.dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io(&path, &e))?;
        lock.lock().map_err(|e| io(&path, &e))?;
        let state = self.state()?;
        Ok(Writer {
            store: self,
            _lock: Some(lock),
            token: None,
            state,
        })
    }

    /// Stores a version (the settings `tree` sets) and returns its id; the same content is the
    /// same version, stored once.
    pub(crate) fn put_version(&self, tree: &Value) -> Result<String, CliError> {
        let text = canonical(tree);
        let id: String = sha256_hex(text.as_bytes())[..ID_LEN].to_owned();
        if let Some(r) = &self.redis {
            r.put_version(&id, &text).map_err(|e| redis_error(r, &e))?;
            return Ok(id);
        }
        let path = self.dir.join("versions").join(format!("{id}.json"));
        if !path.exists() {
            write_atomic(&path, text.as_bytes())?;
        }
        Ok(id)
    }

    /// A version by its id, a prefix of it, `stable` or `canary`: its full id and settings.
    pub(crate) fn version(&self, name: &str) -> Result<(String, Value), CliError> {
        let state = self.state()?;
        let id = match name {
            "stable" => state.stable.clone().ok_or_else(|| {
                CliError::usage("the policy store has no stable version yet: gcx policy apply FILE")
            })?,
            "canary" => state
                .canary
                .as_ref()
                .map(|c| c.version.clone())
                .ok_or_else(|| CliError::usage("the policy store has no canary"))?,
            prefix => self.resolve(prefix)?,
        };
        let name = format!("versions/{id}.json");
        let bytes = match &self.redis {
            Some(r) => r.version(&id).map_err(|e| redis_error(r, &e))?,
            None => read_small(&self.dir.join(&name))?,
        };
        let bytes = bytes.ok_or_else(|| self.damaged(&name, &"the version's file is missing"))?;
        if sha256_hex(&bytes)[..ID_LEN] != id {
            return Err(self.damaged(&name, &"its content does not match its id (edited)"));
        }
        let tree = serde_json::from_slice(&bytes).map_err(|e| self.damaged(&name, &e))?;
        Ok((id, tree))
    }

    fn resolve(&self, prefix: &str) -> Result<String, CliError> {
        if prefix.len() < 4 || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(CliError::usage(format!(
                "`{prefix}` is not a version: give `stable`, `canary`, or at least 4 hex digits \
                 of an id (gcx policy history lists them)"
            )));
        }
        let dir = self.dir.join("versions");
        let ids: Vec<String> = match &self.redis {
            Some(r) => r.ids().map_err(|e| redis_error(r, &e))?,
            None => {
                let mut ids = Vec::new();
                for entry in std::fs::read_dir(&dir).map_err(|e| io(&dir, &e))? {
                    let name = entry.map_err(|e| io(&dir, &e))?.file_name();
                    if let Some(id) = name.to_string_lossy().strip_suffix(".json") {
                        ids.push(id.to_owned());
                    }
                }
                ids
            }
        };
        let mut found = Vec::new();
        for id in ids {
            if id.starts_with(&prefix.to_ascii_lowercase()) {
                found.push(id);
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(CliError::usage(format!(
                "no version {prefix} in the policy store"
            ))),
            n => Err(CliError::usage(format!(
                "{prefix} names {n} versions: give more of its id"
            ))),
        }
    }

    /// Every audit entry, after checking the chain.
    pub(crate) fn audit(&self) -> Result<Vec<Entry>, String> {
        let state = self.state().map_err(|e| e.to_string())?;
        let head = (state.audit.seq, state.audit.hash.as_str());
        match &self.redis {
            Some(r) => audit::verify_lines(r.audit()?.into_iter().map(Ok), head),
            None => audit::verify(&self.audit_path(), head),
        }
    }
}

impl Writer<'_> {
    /// Records `entry` in the audit log and writes the new state: in a directory, the log
    /// first (a crash between the two leaves a log one entry ahead, which `audit verify`
    /// reports and the next change cuts off); in Redis, both in one script.
    pub(crate) fn commit(mut self, entry: Entry) -> Result<Entry, CliError> {
        // The sequence is read from the store's state: a damaged one must not wrap it to 0.
        let Some(seq) = self.state.audit.seq.checked_add(1) else {
            return Err(CliError::usage(
                "the policy store's audit log is at its last sequence number: its state is \
                 damaged; run gcx policy audit verify, and restore the store from a copy",
            ));
        };
        let entry = Entry { at: now(), ..entry }.seal(seq, &self.state.audit.hash);
        if let (Some(r), Some(token)) = (&self.store.redis, &self.token) {
            let line = serde_json::to_vec(&entry).map_err(|e| redis_error(r, &e.to_string()))?;
            self.state.audit = AuditHead {
                seq: entry.seq,
                hash: entry.hash.clone(),
                len: 0,
            };
            let state =
                serde_json::to_vec(&self.state).map_err(|e| redis_error(r, &e.to_string()))?;
            r.commit(token, &line, &state)
                .map_err(|e| redis_error(r, &e))?;
            return Ok(entry);
        }
        let path = self.store.audit_path();
        let known = match self.state.audit {
            // A state written before it kept the log's length: the log up to its last entry.
            AuditHead { seq, len: 0, .. } if seq > 0 => {
                audit::end_of(&path, seq).map_err(|e| io(&path, &e))?
            }
            AuditHead { len, .. } => len,
        };
        let len = audit::append(&path, known, &entry).map_err(|e| io(&path, &e))?;
        self.state.audit = AuditHead {
            seq: entry.seq,
            hash: entry.hash.clone(),
            len,
        };
        let bytes = serde_json::to_vec_pretty(&self.state).map_err(|e| io(&path, &e))?;
        write_atomic(&self.store.dir.join("state.json"), &bytes)?;
        Ok(entry)
    }
}

/// An unsealed entry for `commit`.
pub(crate) fn entry(actor: &str, action: &str) -> Entry {
    Entry {
        seq: 0,
        at: 0,
        actor: actor.to_owned(),
        action: action.to_owned(),
        version: None,
        from: None,
        share: None,
        rollback_below: None,
        reason: None,
        prev: String::new(),
        hash: String::new(),
    }
}
