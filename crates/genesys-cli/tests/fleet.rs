//! A fleet of `gcx` workers on one job: three real processes split one input with `--shard I/N`
//! and share one quota, one token and the job's state through a real Redis (`--fleet-redis`,
//! `REDIS_URL`, default `redis://127.0.0.1:6379`), against a simulator whose quota is per OAuth
//! client, across tokens. One worker is killed (SIGKILL) mid-job and never restarted: another
//! takes its shard over once its lease expires, and the simulator's ledger shows every user
//! patched exactly once. A worker started again afterwards finds the job complete.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use genesys_sim::Simulator;
use serde_json::json;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Users' updates with titles no earlier run of the test used: the fleet's record in Redis is
/// keyed by the input's content.
fn unique_lines(sim: &genesys_sim::SimHandle, n: usize) -> (String, Vec<(String, String)>) {
    let nonce = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut out = String::new();
    let mut wanted = Vec::new();
    for (i, id) in sim.user_ids().into_iter().take(n).enumerate() {
        let title = format!("Title {i} of run {nonce}");
        out.push_str(&json!({"user_id": id, "updates": {"title": title}}).to_string());
        out.push('\n');
        wanted.push((id, title));
    }
    (out, wanted)
}

/// Worker `i` of 3 on `input`, holding its shard by a 2 s lease.
fn worker(
    sim: &genesys_sim::SimHandle,
    input: &std::path::Path,
    i: u32,
    report: &std::path::Path,
) -> std::process::Command {
    let mut cmd = gcx(sim);
    cmd.args([
        "users",
        "patch",
        "--concurrency",
        "4",
        "--rate-limit",
        "100/1",
        "--fleet-lease",
        "2",
    ])
    .args(["--shard", &format!("{i}/3"), "--fleet-redis", &redis_url()])
    .arg("--input")
    .arg(input)
    .arg("--report")
    .arg(report);
    cmd
}

fn spawn(mut cmd: std::process::Command) -> std::process::Child {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// The unit state codes the fleet recorded for `shard` of the job whose id is `job`.
async fn shard_codes(job: &str, shard: u32) -> Vec<u8> {
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let suffix = format!(":units:{shard}");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("gcx:job:*{suffix}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    for key in keys {
        let id: Option<String> = redis::cmd("HGET")
            .arg(key.trim_end_matches(&suffix))
            .arg("id")
            .query_async(&mut conn)
            .await
            .unwrap();
        if id.as_deref() == Some(job) {
            let codes: Vec<(String, u8)> = redis::cmd("HGETALL")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            return codes.into_iter().map(|(_, c)| c).collect();
        }
    }
    panic!("no record of shard {shard} of job {job} in Redis");
}

/// Waits until the simulator's ledger holds `n` entries.
async fn ledger_reaches(sim: &genesys_sim::SimHandle, n: usize) {
    let start = Instant::now();
    while sim.ledger_len() < n {
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn signal(child: &std::process::Child, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_shard_is_taken_over_and_every_user_is_patched_once() {
    let n = 120;
    // 100 requests a second for the client, whatever its tokens: three workers each pacing at
    // 100 a second on their own would get hundreds of 429s.
    let sim = Simulator::spawn(config(n).client_rate_limit(Some((100, Duration::from_secs(1)))))
        .await
        .unwrap();
    let d = dir("fleet");
    let (lines, wanted) = unique_lines(&sim, n);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let worker = |i: u32, report: &str| worker(&sim, &input, i, &d.join(report));
    let mut children: Vec<_> = (0..3)
        .map(|i| spawn(worker(i, &format!("report-{i}.json"))))
        .collect();
    // Worker 1 dies mid-job, and is not restarted.
    ledger_reaches(&sim, 60).await;
    children[1].kill().unwrap();
    assert_eq!(
        children[1].wait().unwrap().code(),
        None,
        "killed by a signal"
    );
    for i in [0, 2] {
        assert_eq!(children[i].wait().unwrap().code(), Some(0), "worker {i}");
    }

    let mut delivered = 0;
    let mut taken_over = Vec::new();
    for i in [0, 2] {
        let report = read_json(&d.join(format!("report-{i}.json")));
        let c = &report["counts"];
        assert_eq!(c["records"], n, "worker {i}: {c}");
        assert_eq!(
            c["delivered"].as_u64().unwrap() + c["other_shards"].as_u64().unwrap(),
            n as u64,
            "worker {i}: {c}"
        );
        delivered += c["delivered"].as_u64().unwrap();
        let fleet = &report["fleet"];
        assert_eq!(fleet["job_complete"], true, "worker {i}: {fleet}");
        assert!(
            fleet["processed"].as_array().unwrap().contains(&json!(i)),
            "worker {i}: {fleet}"
        );
        taken_over.extend(fleet["taken_over"].as_array().unwrap().iter().cloned());
        assert!(
            report["pace"]["source"]
                .as_str()
                .unwrap()
                .contains("shared through Redis"),
            "{}",
            report["pace"]
        );
    }
    assert_eq!(taken_over, vec![json!(1)], "one worker took shard 1 over");
    // The fleet's record of shard 1: every unit delivered, the taker's with a later generation
    // than the dead worker's (a state code's low 3 bits, then the generation).
    let job = read_json(&d.join("report-0.json"))["fleet"]["job"]
        .as_str()
        .unwrap()
        .to_owned();
    let codes = shard_codes(&job, 1).await;
    assert!(!codes.is_empty());
    assert!(codes.iter().all(|c| c & 7 == 2), "all delivered: {codes:?}");
    let generations: Vec<u8> = codes.iter().map(|c| c >> 3).collect();
    assert!(
        generations.iter().all(|g| (1..=2).contains(g)) && generations.contains(&2),
        "the taker's units carry generation 2: {generations:?}"
    );
    assert_eq!(
        delivered, n as u64,
        "the two live workers account for the whole job"
    );
    assert_eq!(
        sim.stats().tokens_issued,
        1,
        "one token for the fleet, the taker included"
    );
    for (id, title) in &wanted {
        assert_eq!(sim.user(id).unwrap()["title"], json!(title));
        assert_eq!(patches(&sim, id), 1, "user {id} patched exactly once");
    }

    // The dead worker started again: the job is complete, nothing is sent.
    let responses = sim.stats().total_responses;
    let out = worker(1, "report-late.json").output().unwrap();
    assert_exit(&out, 0);
    let report = read_json(&d.join("report-late.json"));
    assert_eq!(report["fleet"]["job_complete"], true, "{report}");
    assert_eq!(report["fleet"]["processed"], json!([]), "{report}");
    assert_eq!(report["counts"]["requests"], 0, "{report}");
    let sent = sim.stats().total_responses - responses;
    // At most the start's limits read: no user read or patched.
    assert!(sent <= 1, "a late worker sent {sent} requests");
    for (id, _) in &wanted {
        assert_eq!(patches(&sim, id), 1, "user {id} patched exactly once");
    }
    // --fresh would let a late worker start the job over again: refused, saying what to do.
    let out = worker(1, "report-fresh.json")
        .arg("--fresh")
        .output()
        .unwrap();
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--fleet-run LABEL"), "{stderr}");
}

/// A worker paused (SIGSTOP) past its lease mid-job: another takes its shard over; woken, the
/// paused worker sends nothing more of it, and no user is patched twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_paused_past_its_lease_sends_nothing_more_of_its_shard() {
    let n = 120;
    let sim = Simulator::spawn(config(n).client_rate_limit(Some((100, Duration::from_secs(1)))))
        .await
        .unwrap();
    let d = dir("fleet_paused");
    let (lines, wanted) = unique_lines(&sim, n);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let mut children: Vec<_> = (0..3)
        .map(|i| spawn(worker(&sim, &input, i, &d.join(format!("report-{i}.json")))))
        .collect();
    ledger_reaches(&sim, 60).await;
    signal(&children[1], "STOP");
    // Past its 2 s lease, and past the time the others need to take its shard over.
    tokio::time::sleep(Duration::from_secs(6)).await;
    signal(&children[1], "CONT");
    for (i, child) in children.iter_mut().enumerate() {
        assert_eq!(child.wait().unwrap().code(), Some(0), "worker {i}");
    }
    let paused = read_json(&d.join("report-1.json"));
    assert_eq!(paused["fleet"]["job_complete"], true, "{paused}");
    assert!(
        !paused["fleet"]["processed"]
            .as_array()
            .unwrap()
            .contains(&json!(1)),
        "the paused worker did not finish its shard: {paused}"
    );
    // Woken, it left the rest of its shard (a third of the input) to the taker: it neither
    // sent nor counted it.
    let c = &paused["counts"];
    assert_eq!(
        c["delivered"].as_u64().unwrap() + c["other_shards"].as_u64().unwrap(),
        n as u64,
        "{c}"
    );
    assert!(c["delivered"].as_u64().unwrap() < n as u64 / 3, "{c}");
    let taken: Vec<_> = [0, 2]
        .iter()
        .flat_map(|i| {
            read_json(&d.join(format!("report-{i}.json")))["fleet"]["taken_over"]
                .as_array()
                .unwrap()
                .clone()
        })
        .collect();
    assert_eq!(taken, vec![json!(1)], "one worker took shard 1 over");
    for (id, title) in &wanted {
        assert_eq!(sim.user(id).unwrap()["title"], json!(title));
        assert_eq!(patches(&sim, id), 1, "user {id} patched exactly once");
    }
}

/// Data actions are never executed twice (they do not deduplicate): a worker killed mid-job has
/// its shard taken over, the actions it may have run are listed as unknown by the taker, never
/// run again, and every action is executed once or listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_data_actions_are_taken_over_without_running_twice() {
    let sim = Simulator::spawn(config(1).client_rate_limit(Some((100, Duration::from_secs(1)))))
        .await
        .unwrap();
    let d = dir("fleet_actions");
    let inputs = 240;
    let (input, nonce) = action_batch(&d, inputs);
    let worker = |i: u32| {
        let mut cmd = gcx(&sim);
        cmd.args(["actions", "execute", "echo", "--concurrency", "4"])
            .args(["--rate-limit", "100/1", "--fleet-lease", "2"])
            .args(["--shard", &format!("{i}/3"), "--fleet-redis", &redis_url()])
            .arg("--batch")
            .arg(&input)
            .arg("--unknown")
            .arg(d.join(format!("unknown-{i}.jsonl")))
            .arg("--report")
            .arg(d.join(format!("report-{i}.json")));
        cmd
    };
    let mut children: Vec<_> = (0..3).map(|i| spawn(worker(i))).collect();
    ledger_reaches(&sim, inputs / 2).await;
    children[1].kill().unwrap();
    children[1].wait().unwrap();
    let mut listed = std::collections::HashSet::new();
    let mut taken = Vec::new();
    for i in [0, 2] {
        let code = children[i].wait().unwrap().code();
        let report = read_json(&d.join(format!("report-{i}.json")));
        taken.extend(report["fleet"]["taken_over"].as_array().unwrap().clone());
        assert_eq!(
            report["fleet"]["job_complete"], true,
            "worker {i}: {report}"
        );
        let c = &report["counts"];
        assert_eq!(c["failed"], 0, "worker {i}: {c}");
        // Exit 1 only for the actions listed as unknown.
        assert_eq!(
            code,
            Some(if c["unknown"] == 0 { 0 } else { 1 }),
            "worker {i}: {c}"
        );
        let unknown = d.join(format!("unknown-{i}.jsonl"));
        if unknown.exists() {
            for v in jsonl(&unknown) {
                listed.insert(v["n"].as_u64().unwrap() as usize);
            }
        }
    }
    assert_eq!(taken, vec![json!(1)], "one worker took shard 1 over");
    let mut executed = vec![0usize; inputs];
    for e in sim.ledger() {
        if let Some(n) = (0..inputs).find(|n| {
            e.payload_hash == fnv1a(json!({ "n": n, "run": nonce }).to_string().as_bytes())
        }) {
            executed[n] += 1;
        }
    }
    for (n, times) in executed.iter().enumerate() {
        assert!(*times <= 1, "action input {n} executed {times} times");
        assert!(
            *times == 1 || listed.contains(&n),
            "action input {n} neither executed nor listed as unknown"
        );
    }
    // Only the killed worker's actions in flight can be unknown.
    assert!(
        listed.len() <= 4,
        "{} listed as unknown: {listed:?}",
        listed.len()
    );
}

/// Two workers of one job that name its API differently (a trailing `/`): one job all the same.
/// The second, started once the first has done the whole input (its own shard, then the other,
/// which no worker held), finds the job complete and runs no action a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_that_spell_the_api_differently_are_one_job() {
    let sim = Simulator::spawn(config(1)).await.unwrap();
    let d = dir("fleet_spelling");
    let inputs = 20;
    let (input, nonce) = action_batch(&d, inputs);
    let worker = |i: u32, base_url: &str| {
        let mut cmd = gcx_at(base_url);
        cmd.args(["actions", "execute", "echo", "--fleet-lease", "2"])
            .args(["--shard", &format!("{i}/2"), "--fleet-redis", &redis_url()])
            .arg("--batch")
            .arg(&input)
            .arg("--report")
            .arg(d.join(format!("report-{i}.json")));
        cmd
    };
    let out = worker(0, &sim.base_url()).output().unwrap();
    assert_exit(&out, 0);
    assert_eq!(sim.ledger_count_for("echo"), inputs);
    let out = worker(1, &format!("{}/", sim.base_url())).output().unwrap();
    assert_exit(&out, 0);
    let report = read_json(&d.join("report-1.json"));
    assert_eq!(report["fleet"]["job_complete"], true, "{report}");
    assert_eq!(sim.ledger_count_for("echo"), inputs, "no action ran twice");

    // With ready tokens, the second worker's another: still the same job (a job resumed after
    // its token expired holds a new one).
    write(
        &input,
        action_inputs(inputs, &format!("{nonce}-token")).as_bytes(),
    );
    for i in 0..2 {
        let mut cmd = worker(i, &sim.base_url());
        cmd.env_remove("GENESYS_CLIENT_ID")
            .env_remove("GENESYS_CLIENT_SECRET")
            .env("GENESYSCLOUD_ACCESS_TOKEN", token(&sim));
        assert_exit(&cmd.output().unwrap(), 0);
    }
    assert_eq!(
        sim.ledger_count_for("echo"),
        2 * inputs,
        "no action ran twice"
    );
}

/// `n` inputs of the echo action in `d/batch.jsonl`, each naming a run no earlier test run
/// used (the fleet's record in Redis is keyed by the input's content): the file, and the run.
fn action_batch(d: &std::path::Path, n: usize) -> (std::path::PathBuf, String) {
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        .to_string();
    let input = write(&d.join("batch.jsonl"), action_inputs(n, &run).as_bytes());
    (input, run)
}

/// `n` inputs of the echo action, as JSONL, each naming `run`.
fn action_inputs(n: usize, run: &str) -> String {
    (0..n)
        .map(|n| format!("{}\n", json!({ "n": n, "run": run })))
        .collect()
}

/// A token of the simulator's, fetched with the demo client's credentials.
fn token(sim: &genesys_sim::SimHandle) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(sim.addr()).unwrap();
    let body = "grant_type=client_credentials";
    write!(
        stream,
        "POST /oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic \
         ZGVtby1jbGllbnQ6ZGVtby1zZWNyZXQ=\r\nContent-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (_, json) = answer.split_once("\r\n\r\n").unwrap();
    let json: serde_json::Value = serde_json::from_str(json).unwrap();
    json["access_token"].as_str().unwrap().to_owned()
}

/// A Redis that does not answer: a fleet job refuses to start (exit 2, nothing sent), rather
/// than run without the job's shared state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_job_without_its_redis_sends_nothing() {
    let sim = Simulator::spawn(config(2)).await.unwrap();
    let d = dir("fleet_no_redis");
    let (lines, _) = unique_lines(&sim, 2);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = gcx(&sim)
        .args(["users", "patch", "--shard", "0/2", "--fleet-redis"])
        .arg(format!("redis://127.0.0.1:{port}"))
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("a fleet job keeps its state in Redis"),
        "{stderr}"
    );
    assert_eq!(sim.stats().total_responses, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_does_not_exist_is_refused_before_anything_is_sent() {
    let sim = Simulator::spawn(config(1)).await.unwrap();
    let d = dir("fleet_bad_shard");
    let input = write(&d.join("users.jsonl"), b"");
    let out = gcx(&sim)
        .args(["users", "patch", "--shard", "3/3", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("I from 0 to N-1"), "{stderr}");
    assert_eq!(sim.stats().total_responses, 0);
}

/// A shard taken over after its worker died is read from the input again: if the file was
/// replaced meanwhile (a nightly export written over it), it is not the job's, and the
/// takeover is refused rather than skip its lines as delivered or send them under the job's
/// keys. Nothing is applied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_of_an_input_replaced_since_the_start_is_refused() {
    let n = 90;
    let sim = Simulator::spawn(config(n).client_rate_limit(Some((100, Duration::from_secs(1)))))
        .await
        .unwrap();
    let d = dir("fleet_replaced");
    let (lines, _) = unique_lines(&sim, n);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let worker = |i: u32| worker(&sim, &input, i, &d.join(format!("report-{i}.json")));
    let mut children: Vec<_> = (0..3).map(|i| spawn(worker(i))).collect();
    ledger_reaches(&sim, 30).await;
    children[1].kill().unwrap();
    children[1].wait().unwrap();
    // Replaced (renamed over, as an export tool does): the running workers keep reading the
    // file they opened; a takeover opens the new one.
    let other: String = lines.lines().rev().map(|l| format!("{l}\n")).collect();
    let fresh = write(&d.join("users.jsonl.new"), other.as_bytes());
    std::fs::rename(&fresh, &input).unwrap();
    let mut refused = 0;
    for i in [0, 2] {
        let code = children[i].wait().unwrap().code();
        let report = read_json(&d.join(format!("report-{i}.json")));
        let error = report["input_error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if error.contains("changed since this job started") {
            refused += 1;
            assert_eq!(code, Some(1), "worker {i}: {error}");
        }
        assert!(
            report["fleet"]["taken_over"].as_array().unwrap().is_empty(),
            "worker {i}: no shard taken over"
        );
    }
    assert!(refused >= 1, "a worker tried the takeover and refused it");
    for id in sim.user_ids() {
        assert!(patches(&sim, &id) <= 1, "user {id} patched at most once");
    }
}

/// A `redis-server` of the test's own, on a free port, keeping its snapshot (`SAVE`) in `dir`.
struct SnapshotRedis {
    child: Option<std::process::Child>,
    port: u16,
    dir: std::path::PathBuf,
}

impl SnapshotRedis {
    fn start(dir: std::path::PathBuf) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = SnapshotRedis {
            child: None,
            port,
            dir,
        };
        redis.restart();
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again), loading the last snapshot.
    fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH (`.ci/run` installs it)");
        self.child = Some(child);
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `SAVE`: a snapshot of what it holds now.
    async fn save(&self) {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let _: String = redis::cmd("SAVE").query_async(&mut conn).await.unwrap();
    }

    /// SIGKILL: what it took after its last snapshot is lost.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for SnapshotRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Redis killed (SIGKILL) mid-job with the job's first worker, and restarted from a snapshot,
/// which lost the states recorded after it: a worker takes no shard of a data action job then
/// (an execution recorded as started would read as never started, and run again), says why, and
/// no input runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restored_from_a_snapshot_stops_the_takeover_of_data_actions() {
    let sim = Simulator::spawn(config(1).faults("latency=50ms..50ms".parse().unwrap()))
        .await
        .unwrap();
    let d = dir("fleet_snapshot");
    let inputs = 40;
    let (input, nonce) = action_batch(&d, inputs);
    let mut redis = SnapshotRedis::start(d.join("redis"));
    let url = redis.url();
    let worker = |i: u32| {
        let mut cmd = gcx(&sim);
        cmd.args(["actions", "execute", "echo", "--concurrency", "1"])
            .args(["--fleet-lease", "2", "--shard", &format!("{i}/2")])
            .args(["--fleet-redis", &url])
            .arg("--batch")
            .arg(&input)
            .arg("--report")
            .arg(d.join(format!("report-{i}.json")));
        cmd
    };
    let mut first = spawn(worker(0));
    ledger_reaches(&sim, 4).await;
    redis.save().await;
    ledger_reaches(&sim, 10).await;
    redis.kill();
    first.kill().unwrap();
    first.wait().unwrap();
    redis.restart();

    let out = worker(1).output().unwrap();
    let mut executed = vec![0usize; inputs];
    for e in sim.ledger() {
        if let Some(n) = (0..inputs).find(|n| {
            e.payload_hash == fnv1a(json!({ "n": n, "run": nonce }).to_string().as_bytes())
        }) {
            executed[n] += 1;
        }
    }
    assert!(
        executed.iter().all(|times| *times <= 1),
        "an input ran twice: {executed:?}"
    );
    assert_exit(&out, 1);
    let report = read_json(&d.join("report-1.json"));
    let error = report["fleet_error"].as_str().unwrap_or_default();
    assert!(error.contains("Redis restarted"), "{report}");
}

/// A Redis that may evict the fleet's keys (a `maxmemory` with an evicting policy): a data action
/// job takes no shard, and says why, rather than read an evicted state as never started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_may_evict_takes_no_shard_of_data_actions() {
    let sim = Simulator::spawn(config(1)).await.unwrap();
    let d = dir("fleet_evicting");
    let (input, _) = action_batch(&d, 4);
    let redis = SnapshotRedis::start(d.join("redis"));
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for (name, value) in [("maxmemory", "64mb"), ("maxmemory-policy", "volatile-lru")] {
        let _: String = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let out = gcx(&sim)
        .args(["actions", "execute", "echo", "--shard", "0/1"])
        .args(["--fleet-redis", &redis.url(), "--batch"])
        .arg(&input)
        .arg("--report")
        .arg(d.join("report.json"))
        .output()
        .unwrap();
    assert_exit(&out, 1);
    let report = read_json(&d.join("report.json"));
    let error = report["fleet_error"].as_str().unwrap_or_default();
    assert!(error.contains("volatile-lru"), "{report}");
    assert_eq!(sim.ledger_len(), 0, "nothing ran");
}
