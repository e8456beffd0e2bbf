//! A fleet job: N workers (`--shard I/N` with `--fleet-redis URL`) on one input share, through
//! Redis, what makes them one job rather than N:
//!
//! - the job's id, from which every unit's idempotency key is derived, so that a unit carries the
//!   same key whichever worker sends it;
//! - each unit's state: a mirror of the journal's entries, written only by the holder of the
//!   shard's lease;
//! - a lease per shard, renewed while its worker runs. A worker that has processed its shard does
//!   not leave: it takes over any shard whose lease expired (its worker died, or was cut off
//!   past its lease), resolves every unit from the shared state before applying anything, and
//!   exits once every shard is processed.
//!
//! Keys, all under `gcx:job:<api>:<client>:<job hash>` (the hash of the command, the input's
//! content, the action and the chunk size): the hash itself (`id`, `shards`, `begun:I`,
//! `done:I`), `<key>:lease:I` (the holder's token, living as long as the lease) and
//! `<key>:units:I` (input line → the unit's state code).
//!
//! Fencing: every write of a unit's state checks the lease in the same script. A worker that lost
//! its lease cannot record anything more, and so cannot send a unit that is never sent twice
//! (its start must be recorded before its request leaves).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How long a shard's lease lives without a renewal: past it, another worker takes the shard.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How long the job's record stays in Redis after its last change: a worker started later (a
/// re-run of the same command) finds the job complete and sends nothing.
const RECORD_LIFE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Unit states the mirror holds back while Redis cannot be written; past it, the mirror gives up
/// (units that are never sent twice are then not sent; the others go on).
const PENDING_MAX: usize = 100_000;

/// Entries per script call.
const BATCH: usize = 2048;

/// Opens the job's record, or joins it: `{'id', ID}`, or `{'shards', N}` when the job is split
/// otherwise.
static OPEN: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local n = redis.call('HGET', KEYS[1], 'shards')
if n and n ~= ARGV[2] then return {'shards', n, ''} end
if not n then
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'shards', ARGV[2])
  if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'redis', ARGV[4]) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {'id', redis.call('HGET', KEYS[1], 'id'), redis.call('HGET', KEYS[1], 'redis') or ''}
",
    )
});

/// Per shard (`KEYS[2..]` its lease): 2 done, 1 leased, 0 free.
static STATUS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local out = {}
for i = 2, #KEYS do
  if redis.call('HEXISTS', KEYS[1], 'done:' .. (i - 2)) == 1 then out[#out + 1] = 2
  elseif redis.call('EXISTS', KEYS[i]) == 1 then out[#out + 1] = 1
  else out[#out + 1] = 0 end
end
return out
",
    )
});

/// Takes shard `ARGV[3]`'s lease: -1 done, -2 held by another, -3 the record is not the job's
/// any more (`ARGV[5]`, its id), 1 first taken, 0 taken before.
static ACQUIRE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[5] then return -3 end
if redis.call('HEXISTS', KEYS[1], 'done:' .. ARGV[3]) == 1 then return -1 end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return -2 end
local first = redis.call('HSETNX', KEYS[1], 'begun:' .. ARGV[3], '1')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return first
",
    )
});

/// What a worker says when the job's record vanished under it.
const LOST_RECORD: &str = "the fleet job's record in Redis is gone or was replaced (expired, \
                           flushed, or Redis restarted without persistence): this worker stops \
                           rather than run the job again";

/// Extends the lease when it is still ours, and the record's life.
static RENEW: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
",
    )
});

/// Writes unit states (`ARGV[4..]`, pairs) when the lease is still ours and the record is still
/// the job's (`ARGV[3]`, its id).
static MIRROR: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[3], 'id') ~= ARGV[3] then return 0 end
for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
",
    )
});

/// Ends our lease on shard `ARGV[3]`, marking it done when `ARGV[4]` = 1.
static FINISH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[1], 'done:' .. ARGV[3], '1')
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
redis.call('DEL', KEYS[2])
return 1
",
    )
});

/// Where a shard stands for the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShardStatus {
    /// No worker holds it and it is not processed: the next worker to look takes it.
    Free,
    /// A live worker holds its lease.
    Leased,
    /// Processed: every unit settled (delivered, failed, unknown or quarantined).
    Done,
}

/// One job's record in Redis, as this worker sees it.
#[derive(Clone)]
pub(crate) struct Fleet {
    inner: Arc<Inner>,
}

struct Inner {
    conn: ConnectionManager,
    key: String,
    job: String,
    worker: String,
    shards: u32,
    lease: Duration,
    /// The `run_id` of the Redis server the job's record was made on (empty when INFO was
    /// refused then, or for a record of an earlier gcx): another one means Redis restarted.
    redis_run: String,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("job", &self.inner.job)
            .field("shards", &self.inner.shards)
            .field("lease", &self.inner.lease)
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// An id no other worker or job has: the clock, the process and a counter, hashed with the
/// process's random keys.
fn unique(what: &str) -> String {
    use std::hash::BuildHasher;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let seed = (what, std::process::id(), nanos, n);
    format!(
        "{:016x}",
        std::collections::hash_map::RandomState::new().hash_one(seed)
    )
}

fn redis_error(e: &redis::RedisError) -> String {
    format!("Redis: {e}")
}

/// The Redis server's `run_id` (`INFO server`), which changes at every start of the server;
/// empty when its `INFO` does not give one.
async fn redis_run(conn: &mut ConnectionManager) -> Result<String, String> {
    let server: String = redis::cmd("INFO")
        .arg("server")
        .query_async(conn)
        .await
        .map_err(|e| redis_error(&e))?;
    Ok(server
        .lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .map(|id| id.trim().to_owned())
        .unwrap_or_default())
}

impl Fleet {
    /// Opens the job's record under `key`, or joins the one the other workers opened.
    ///
    /// `earlier` is where an earlier gcx would have recorded the same job (under another name,
    /// or with its shards split otherwise): when Redis holds one, the job is refused.
    pub(crate) async fn open(
        url: &str,
        key: String,
        earlier: Vec<String>,
        shards: u32,
        lease: Duration,
    ) -> Result<Self, String> {
        let mut conn =
            genesys_tower::redis_conn::connect(url, "the fleet job", Duration::from_secs(2))?;
        for earlier in earlier.iter().filter(|earlier| **earlier != key) {
            let exists: bool = redis::cmd("EXISTS")
                .arg(earlier)
                .query_async(&mut conn)
                .await
                .map_err(|e| redis_error(&e))?;
            if exists {
                return Err(
                    "a fleet job on this input started by an earlier gcx (which named or split \
                     it otherwise) is recorded: finish it with that gcx, or run this one as a \
                     new job with the same new --fleet-run LABEL for every worker"
                        .to_owned(),
                );
            }
        }
        // Not every Redis lets a client read INFO (an ACL without @dangerous): only the jobs
        // that must tell a restart need it, and find out when they take a shard.
        let run = redis_run(&mut conn).await.unwrap_or_default();
        let (what, value, redis_run): (String, String, String) = OPEN
            .key(&key)
            .arg(unique("job"))
            .arg(shards)
            .arg(millis(RECORD_LIFE))
            .arg(&run)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| redis_error(&e))?;
        if what == "shards" {
            return Err(format!(
                "the fleet job on this input is split in {value} shards, not {shards}: start \
                 its workers with --shard I/{value}"
            ));
        }
        if value.len() != 16 || !value.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "the record {key} in Redis is not a gcx fleet job's; give the job another \
                 Redis (or database), or remove that key"
            ));
        }
        Ok(Fleet {
            inner: Arc::new(Inner {
                conn,
                key,
                job: value,
                worker: unique("worker"),
                shards,
                lease,
                redis_run,
            }),
        })
    }

    /// Whether the units' states the fleet recorded can be trusted to hold every write: not
    /// once the Redis server changed since the job's record was made, nor when the record does
    /// not say which server that was (a restart from a snapshot, or with `appendfsync everysec`, loses the last writes
    /// while the record survives; a promoted replica may lack them, whatever its settings), nor
    /// while
    /// it may evict keys (a `maxmemory` with a policy other than `noeviction`: the states'
    /// keys expire, so every policy may take them). The reason, when they cannot.
    pub(crate) async fn states_lost(&self) -> Result<Option<String>, String> {
        let mut conn = self.inner.conn.clone();
        if self.inner.redis_run.is_empty() {
            return Ok(Some(
                "the job's record does not say which Redis server it was made on (made when \
                 INFO was refused, or by an earlier gcx), so a restart since cannot be told"
                    .to_owned(),
            ));
        }
        let run = redis_run(&mut conn).await?;
        if run != self.inner.redis_run {
            return Ok(Some(
                "Redis restarted, or another server took its place, since this fleet job began \
                 (its run_id changed), and either may have lost the last writes before it (a \
                 restart from a snapshot, or with appendfsync everysec; a replica promoted \
                 before it had them)"
                    .to_owned(),
            ));
        }
        let memory: String = redis::cmd("INFO")
            .arg("memory")
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error(&e))?;
        let field = |name: &str| {
            memory.lines().find_map(|line| {
                line.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix(':'))
                    .map(str::trim)
            })
        };
        let limited = field("maxmemory").is_some_and(|max| max != "0");
        match field("maxmemory_policy") {
            Some(policy) if limited && policy != "noeviction" => Ok(Some(format!(
                "Redis may evict keys (maxmemory with maxmemory-policy {policy}), and an evicted \
                 state would read as never started"
            ))),
            _ => Ok(None),
        }
    }

    /// The job's id, shared by the fleet.
    pub(crate) fn job(&self) -> &str {
        &self.inner.job
    }

    /// How long a lease lives without a renewal.
    pub(crate) fn lease(&self) -> Duration {
        self.inner.lease
    }

    fn lease_key(&self, shard: u32) -> String {
        format!("{}:lease:{shard}", self.inner.key)
    }

    fn units_key(&self, shard: u32) -> String {
        format!("{}:units:{shard}", self.inner.key)
    }

    /// Where every shard stands.
    pub(crate) async fn status(&self) -> Result<Vec<ShardStatus>, String> {
        let mut script = STATUS.prepare_invoke();
        script.key(&self.inner.key);
        for i in 0..self.inner.shards {
            script.key(self.lease_key(i));
        }
        let codes: Vec<i64> = script
            .invoke_async(&mut self.inner.conn.clone())
            .await
            .map_err(|e| redis_error(&e))?;
        Ok(codes
            .into_iter()
            .map(|c| match c {
                2 => ShardStatus::Done,
                1 => ShardStatus::Leased,
                _ => ShardStatus::Free,
            })
            .collect())
    }

    /// Takes `shard`'s lease when it is free, and keeps it renewed until the lease is finished
    /// or dropped. A lease lost (Redis says another holds it, or it was not renewed in time)
    /// shows in its [`Fence`].
    pub(crate) async fn acquire(&self, shard: u32) -> Result<Option<Lease>, String> {
        let token = format!("{}-{}", self.inner.worker, unique("lease"));
        let fence = Fence::new();
        let asked = fence.now();
        let code: i64 = ACQUIRE
            .key(&self.inner.key)
            .key(self.lease_key(shard))
            .arg(&token)
            .arg(millis(self.inner.lease))
            .arg(shard)
            .arg(millis(RECORD_LIFE))
            .arg(&self.inner.job)
            .invoke_async(&mut self.inner.conn.clone())
            .await
            .map_err(|e| redis_error(&e))?;
        if code == -3 {
            return Err(LOST_RECORD.to_owned());
        }
        if code < 0 {
            return Ok(None);
        }
        fence.renewed(asked, self.inner.lease);
        let renewer = tokio::spawn(renew(
            self.clone(),
            self.lease_key(shard),
            token.clone(),
            fence.clone(),
        ));
        Ok(Some(Lease {
            fleet: self.clone(),
            shard,
            token,
            begun_before: code == 0,
            fence,
            renewer,
        }))
    }
}

/// Whether this worker may still act for a shard: its lease was not lost, and was renewed
/// recently enough that no other worker can have taken it, by both clocks. The monotonic clock
/// runs on while a process is paused (SIGSTOP), so a worker that wakes past its lease finds it
/// gone at once, before it sends anything more; but it stops while the machine sleeps (a laptop
/// closed), while Redis's clock, which ends the lease, runs on. The wall clock runs on then (or,
/// in a virtual machine paused and resumed, is set right after): a lease holds only while
/// neither clock says its time is up. A wall clock stepped forward past what is left of the
/// lease's three quarters ends it early, which is safe: the worker leaves the rest of the shard
/// to another pass.
#[derive(Debug, Clone)]
pub(crate) struct Fence {
    base: Instant,
    wall_base: SystemTime,
    lost: Arc<AtomicBool>,
    /// Milliseconds after `base` until which the lease surely holds.
    until_ms: Arc<AtomicU64>,
    /// Milliseconds after `wall_base` until which the lease surely holds.
    until_wall_ms: Arc<AtomicU64>,
}

/// When a renewal was asked, by both of a [`Fence`]'s clocks.
#[derive(Debug, Clone, Copy)]
struct Asked {
    ms: u64,
    wall_ms: u64,
}

impl Fence {
    fn new() -> Self {
        Fence {
            base: Instant::now(),
            wall_base: SystemTime::now(),
            lost: Arc::new(AtomicBool::new(false)),
            until_ms: Arc::new(AtomicU64::new(0)),
            until_wall_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn now(&self) -> Asked {
        // A wall clock stepped back before the fence was made reads as its making.
        let wall = SystemTime::now()
            .duration_since(self.wall_base)
            .unwrap_or_default();
        Asked {
            ms: millis(self.base.elapsed()),
            wall_ms: millis(wall),
        }
    }

    /// A renewal asked at `asked` succeeded: the lease holds for three quarters of its life
    /// from the asking (Redis counts its life from a moment after it).
    fn renewed(&self, asked: Asked, life: Duration) {
        let margin = millis(life) / 4 * 3;
        self.until_ms
            .fetch_max(asked.ms.saturating_add(margin), Ordering::SeqCst);
        // Stored, not raised: after a wall clock stepped back, a bound set before the step would
        // hold for as long as the step.
        self.until_wall_ms
            .store(asked.wall_ms.saturating_add(margin), Ordering::SeqCst);
    }

    /// The machine slept for `slept` (tests): the wall clock ran on, the monotonic one did not.
    #[cfg(test)]
    fn slept(&mut self, slept: Duration) {
        self.wall_base -= slept;
    }

    pub(crate) fn lose(&self) {
        self.lost.store(true, Ordering::SeqCst);
    }

    /// A lease that holds for an hour, unless lost.
    #[cfg(test)]
    pub(crate) fn holding() -> Self {
        let fence = Fence::new();
        fence.renewed(fence.now(), Duration::from_secs(4800));
        fence
    }

    /// The lease holds: the shard's units may be sent.
    pub(crate) fn holds(&self) -> bool {
        let now = self.now();
        !self.lost.load(Ordering::SeqCst)
            && now.ms < self.until_ms.load(Ordering::SeqCst)
            && now.wall_ms < self.until_wall_ms.load(Ordering::SeqCst)
    }

    fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
}

/// Renews a lease every third of its life until it is lost: refused by Redis, or not renewed
/// for a whole life (another worker may have taken the shard by then).
async fn renew(fleet: Fleet, key: String, token: String, fence: Fence) {
    let life = fleet.inner.lease;
    let mut conn = fleet.inner.conn.clone();
    loop {
        tokio::time::sleep(life / 3).await;
        let asked = fence.now();
        let renewed: Result<i64, _> = RENEW
            .key(&key)
            .key(&fleet.inner.key)
            .arg(&token)
            .arg(millis(life))
            .arg(millis(RECORD_LIFE))
            .invoke_async(&mut conn)
            .await;
        match renewed {
            Ok(1) => fence.renewed(asked, life),
            Ok(_) => break,
            Err(e) if !fence.holds() => {
                tracing::warn!(error = %e, "the shard's lease could not be renewed");
                break;
            }
            Err(e) => tracing::debug!(error = %e, "renewing the shard's lease"),
        }
    }
    fence.lose();
}

/// This worker's hold on one shard.
pub(crate) struct Lease {
    fleet: Fleet,
    /// The shard held.
    pub(crate) shard: u32,
    token: String,
    /// A worker held this shard before (it may have applied some of it).
    pub(crate) begun_before: bool,
    fence: Fence,
    renewer: JoinHandle<()>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("shard", &self.shard)
            .field("begun_before", &self.begun_before)
            .field("lost", &self.lost())
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// The lease was lost: this worker must send nothing more of the shard.
    pub(crate) fn lost(&self) -> bool {
        self.fence.lost()
    }

    /// What says whether the lease still holds, for the engine to check before each unit.
    pub(crate) fn fence(&self) -> Fence {
        self.fence.clone()
    }

    /// Calls `each(line, state code)` for every unit state the fleet recorded for the shard.
    pub(crate) async fn states(&self, mut each: impl FnMut(u64, u8)) -> Result<(), String> {
        let mut conn = self.fleet.inner.conn.clone();
        let key = self.fleet.units_key(self.shard);
        let mut cursor = 0u64;
        loop {
            let (next, pairs): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                .arg(&key)
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(|e| redis_error(&e))?;
            for (line, code) in pairs {
                // Anything else was not written by gcx: ignored rather than trusted.
                if let (Ok(line), Ok(code)) = (line.parse::<u64>(), code.parse::<u8>()) {
                    each(line, code);
                }
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// A writer of the shard's unit states, fenced by this lease.
    pub(crate) fn mirror(&self) -> Mirror {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = Mirrored {
            conn: self.fleet.inner.conn.clone(),
            lease_key: self.fleet.lease_key(self.shard),
            units_key: self.fleet.units_key(self.shard),
            job_key: self.fleet.inner.key.clone(),
            job: self.fleet.inner.job.clone(),
            token: self.token.clone(),
        };
        tokio::spawn(task.run(rx));
        Mirror { tx }
    }

    /// Ends the lease: the shard is marked done when `processed` (every unit settled), else
    /// left for the next worker (at once, not after the lease's life).
    pub(crate) async fn finish(self, processed: bool) -> Result<(), String> {
        self.renewer.abort();
        if self.lost() {
            return Err("the shard's lease was lost".into());
        }
        let code: i64 = FINISH
            .key(&self.fleet.inner.key)
            .key(self.fleet.lease_key(self.shard))
            .arg(&self.token)
            .arg(millis(RECORD_LIFE))
            .arg(self.shard)
            .arg(if processed { "1" } else { "0" })
            .invoke_async(&mut self.fleet.inner.conn.clone())
            .await
            .map_err(|e| redis_error(&e))?;
        if code == 1 {
            Ok(())
        } else {
            Err("the shard's lease was taken by another worker".into())
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

enum MirrorMsg {
    Set(u64, u8),
    Flush(oneshot::Sender<Result<(), String>>),
}

/// Writes a shard's unit states to Redis, in order, batched; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Mirror {
    tx: mpsc::UnboundedSender<MirrorMsg>,
}

impl std::fmt::Debug for MirrorMsg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MirrorMsg::Set(line, code) => write!(f, "Set({line}, {code})"),
            MirrorMsg::Flush(_) => f.write_str("Flush"),
        }
    }
}

impl Mirror {
    /// The unit at `line` is now in the state `code`.
    pub(crate) fn set(&self, line: u64, code: u8) {
        let _ = self.tx.send(MirrorMsg::Set(line, code));
    }

    /// Waits until every state set so far is in Redis under this worker's lease.
    pub(crate) async fn flush(&self) -> Result<(), String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(MirrorMsg::Flush(tx))
            .map_err(|_| "the fleet's mirror stopped".to_owned())?;
        rx.await
            .unwrap_or_else(|_| Err("the fleet's mirror stopped".into()))
    }
}

struct Mirrored {
    conn: ConnectionManager,
    lease_key: String,
    units_key: String,
    job_key: String,
    job: String,
    token: String,
}

impl Mirrored {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<MirrorMsg>) {
        // The last state of each unit not yet written: written again after a failure, so a
        // flush answers Ok only when everything before it is in Redis.
        let mut pending: HashMap<u64, u8> = HashMap::new();
        let mut broken: Option<String> = None;
        let mut last_error = String::new();
        while let Some(first) = rx.recv().await {
            let mut waiters = Vec::new();
            let mut take = |msg: MirrorMsg, pending: &mut HashMap<u64, u8>| match msg {
                MirrorMsg::Set(line, code) => {
                    pending.insert(line, code);
                }
                MirrorMsg::Flush(w) => waiters.push(w),
            };
            take(first, &mut pending);
            while let Ok(msg) = rx.try_recv() {
                take(msg, &mut pending);
            }
            if broken.is_none() && !pending.is_empty() {
                match self.write(&pending).await {
                    Ok(true) => pending.clear(),
                    Ok(false) => {
                        broken = Some(
                            "this worker lost the shard's lease (another worker took it over), or the \
                             job's record in Redis is gone"
                                .into(),
                        );
                    }
                    Err(e) => {
                        last_error = e;
                        if pending.len() > PENDING_MAX {
                            broken = Some(format!(
                                "the fleet's unit states could not be written to Redis \
                                 ({last_error})"
                            ));
                        }
                    }
                }
            }
            if broken.is_some() {
                pending.clear();
            }
            let result = match (&broken, pending.is_empty()) {
                (Some(b), _) => Err(b.clone()),
                (None, true) => Ok(()),
                (None, false) => Err(format!(
                    "the unit's state could not be written to Redis ({last_error})"
                )),
            };
            for w in waiters {
                let _ = w.send(result.clone());
            }
        }
        // The job closed the mirror: one last write of what is pending.
        if broken.is_none() && !pending.is_empty() {
            let _ = self.write(&pending).await;
        }
    }

    /// Writes `pending` under the lease: `Ok(false)` when the lease is no longer ours.
    async fn write(&mut self, pending: &HashMap<u64, u8>) -> Result<bool, String> {
        // In the order of the input: a batch cut short leaves an entity's later lines, never
        // its earlier ones, at their older state (sent again, rather than skipped).
        let mut entries: Vec<(&u64, &u8)> = pending.iter().collect();
        entries.sort_unstable_by_key(|(line, _)| **line);
        for batch in entries.chunks(BATCH) {
            let mut script = MIRROR.prepare_invoke();
            script
                .key(&self.lease_key)
                .key(&self.units_key)
                .key(&self.job_key)
                .arg(&self.token)
                .arg(millis(RECORD_LIFE))
                .arg(&self.job);
            for (line, code) in batch {
                script.arg(**line).arg(**code);
            }
            let ok: i64 = script
                .invoke_async(&mut self.conn)
                .await
                .map_err(|e| redis_error(&e))?;
            if ok != 1 {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine that sleeps (a laptop closed, a virtual machine paused) stops the monotonic
    /// clock, not Redis's, which ends the lease: a worker that wakes past its lease must not
    /// take it for held.
    #[test]
    fn a_lease_does_not_hold_once_the_machine_slept_past_it() {
        let mut fence = Fence::new();
        fence.renewed(fence.now(), Duration::from_secs(30));
        assert!(fence.holds());
        fence.slept(Duration::from_secs(20));
        assert!(fence.holds(), "within three quarters of its life");
        fence.slept(Duration::from_secs(3));
        assert!(
            !fence.holds(),
            "past three quarters of its life, by the wall clock"
        );
        fence.renewed(fence.now(), Duration::from_secs(30));
        assert!(fence.holds(), "renewed after the wake");
    }
}
