//! The policy store in Redis, for a fleet on several machines: `--policy-store
//! redis://HOST:PORT[/DB][#NAME]`, keys under `gcx:policies[:NAME]`: `:state` (the state's
//! JSON), `:versions` (a hash of id to the version's JSON), `:audit` (a list, one entry per
//! item) and `:lock` (the one writer's token, with a life). A change is one script: it checks
//! the lock, appends the audit entry and sets the state together, so a crash leaves either
//! both or neither.

use std::time::{Duration, Instant};

use redis::{Commands, Connection};

/// How long a call to Redis may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The writer's lock lives this long (a writer that died frees it by then).
const LOCK_LIFE_MS: u64 = 30_000;

/// How long a writer waits for another's lock.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// The largest item read.
const ITEM_MAX: usize = 1024 * 1024;

const COMMIT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('RPUSH', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[3])
return 1
";

/// A string (`GET`, `ARGV[2]` empty) or a hash field (`HGET` of `ARGV[2]`), refused in Redis
/// when larger than `ARGV[1]` bytes: a damaged or foreign value is never sent to be read whole.
const READ: &str = r"
local v
if ARGV[2] == '' then v = redis.call('GET', KEYS[1]) else v = redis.call('HGET', KEYS[1], ARGV[2]) end
if not v then return nil end
if #v > tonumber(ARGV[1]) then return redis.error_reply('TOOLARGE an item larger than any the store writes') end
return v
";

/// The audit list's items `ARGV[1]` to `ARGV[2]`, refused in Redis when one is larger than
/// `ARGV[3]` bytes.
const AUDIT_PAGE: &str = r"
local items = redis.call('LRANGE', KEYS[1], ARGV[1], ARGV[2])
for _, v in ipairs(items) do
  if #v > tonumber(ARGV[3]) then
    return redis.error_reply('TOOLARGE an audit entry larger than any the store writes')
  end
end
return items
";

/// Audit entries read from Redis at a time.
const AUDIT_PAGE_LEN: usize = 256;

const UNLOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
";

/// A policy store in Redis.
#[derive(Debug, Clone)]
pub(crate) struct RedisStore {
    client: redis::Client,
    prefix: String,
    shown: String,
}

fn err(e: &redis::RedisError) -> String {
    format!("Redis: {e}")
}

impl RedisStore {
    /// The store a `redis://` or `rediss://` location names; `None` for anything else.
    pub(crate) fn parse(location: &str) -> Option<Result<Self, String>> {
        if !(location.starts_with("redis://") || location.starts_with("rediss://")) {
            return None;
        }
        let (url, name) = match location.split_once('#') {
            Some((url, name)) => (url, Some(name)),
            None => (location, None),
        };
        let prefix = match name {
            Some(n)
                if !n.is_empty()
                    && n.len() <= 64
                    && n.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) =>
            {
                format!("gcx:policies:{n}")
            }
            Some(n) => {
                return Some(Err(format!(
                    "`#{n}`: a store's name is 1 to 64 letters, digits, '-', '_' or '.'"
                )));
            }
            None => "gcx:policies".to_owned(),
        };
        // Shown without credentials.
        let host = url.rsplit_once('@').map_or(url, |(_, h)| h);
        let host = host
            .trim_start_matches("redis://")
            .trim_start_matches("rediss://");
        let scheme = url.split_once("://").map_or("redis", |(s, _)| s);
        let shown = format!("{scheme}://{host} ({prefix})");
        Some(
            redis::Client::open(url)
                .map(|client| RedisStore {
                    client,
                    prefix,
                    shown,
                })
                .map_err(|e| format!("invalid Redis URL: {e}")),
        )
    }

    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    fn key(&self, what: &str) -> String {
        format!("{}:{what}", self.prefix)
    }

    fn conn(&self) -> Result<Connection, String> {
        let conn = self
            .client
            .get_connection_with_timeout(TIMEOUT)
            .map_err(|e| err(&e))?;
        conn.set_read_timeout(Some(TIMEOUT)).map_err(|e| err(&e))?;
        conn.set_write_timeout(Some(TIMEOUT)).map_err(|e| err(&e))?;
        Ok(conn)
    }

    /// The value at `key` (its `field`, for a hash), within [`ITEM_MAX`].
    fn read(&self, key: &str, field: &str) -> Result<Option<Vec<u8>>, String> {
        redis::Script::new(READ)
            .key(key)
            .arg(ITEM_MAX)
            .arg(field)
            .invoke(&mut self.conn()?)
            .map_err(|e| err(&e))
    }

    /// The state's JSON, if any.
    pub(crate) fn state(&self) -> Result<Option<Vec<u8>>, String> {
        self.read(&self.key("state"), "")
    }

    /// Takes the writer's lock, waiting for another writer: its token.
    pub(crate) fn lock(&self) -> Result<String, String> {
        let mut conn = self.conn()?;
        let token = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        let start = Instant::now();
        loop {
            let taken: bool = redis::cmd("SET")
                .arg(self.key("lock"))
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(LOCK_LIFE_MS)
                .query::<Option<String>>(&mut conn)
                .map_err(|e| err(&e))?
                .is_some();
            if taken {
                return Ok(token);
            }
            if start.elapsed() >= LOCK_WAIT {
                return Err(format!(
                    "another writer has held the store's lock for {LOCK_WAIT:?}; try again"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Gives the lock back (only ours).
    pub(crate) fn unlock(&self, token: &str) {
        if let Ok(mut conn) = self.conn() {
            let _: Result<i64, _> = redis::Script::new(UNLOCK)
                .key(self.key("lock"))
                .arg(token)
                .invoke(&mut conn);
        }
    }

    /// Stores a version's JSON under its id, once.
    pub(crate) fn put_version(&self, id: &str, text: &str) -> Result<(), String> {
        let _: bool = self
            .conn()?
            .hset_nx(self.key("versions"), id, text)
            .map_err(|e| err(&e))?;
        Ok(())
    }

    /// A version's JSON.
    pub(crate) fn version(&self, id: &str) -> Result<Option<Vec<u8>>, String> {
        if id.is_empty() {
            // `READ` takes an empty field for a plain string.
            return Ok(None);
        }
        self.read(&self.key("versions"), id)
    }

    /// Every version's id.
    pub(crate) fn ids(&self) -> Result<Vec<String>, String> {
        self.conn()?
            .hkeys(self.key("versions"))
            .map_err(|e| err(&e))
    }

    /// The audit log's entries, in order.
    /// Read a page at a time, each item within [`ITEM_MAX`] (checked in Redis).
    pub(crate) fn audit(&self) -> Result<Vec<Vec<u8>>, String> {
        let mut conn = self.conn()?;
        let script = redis::Script::new(AUDIT_PAGE);
        let mut lines = Vec::new();
        loop {
            let page: Vec<Vec<u8>> = script
                .key(self.key("audit"))
                .arg(lines.len())
                .arg(lines.len() + AUDIT_PAGE_LEN - 1)
                .arg(ITEM_MAX)
                .invoke(&mut conn)
                .map_err(|e| err(&e))?;
            let last = page.len() < AUDIT_PAGE_LEN;
            lines.extend(page);
            if last {
                return Ok(lines);
            }
        }
    }

    /// Appends `entry` to the audit log and sets `state`, together, when `token` still holds
    /// the lock.
    pub(crate) fn commit(&self, token: &str, entry: &[u8], state: &[u8]) -> Result<(), String> {
        let done: i64 = redis::Script::new(COMMIT)
            .key(self.key("lock"))
            .key(self.key("audit"))
            .key(self.key("state"))
            .arg(token)
            .arg(entry)
            .arg(state)
            .invoke(&mut self.conn()?)
            .map_err(|e| err(&e))?;
        if done == 1 {
            Ok(())
        } else {
            Err(format!(
                "this change held the store's lock past its {} s life: nothing was written, try \
                 again",
                LOCK_LIFE_MS / 1000
            ))
        }
    }
}
