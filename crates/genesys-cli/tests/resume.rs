//! Bulk jobs that survive a crash: the `gcx` process is really killed (SIGKILL) or interrupted
//! twice (two SIGINTs) mid-job against a simulator with faults, then the same command is run
//! again on the same journal; the simulator's ledger shows every user patched exactly once,
//! every ingested record applied once and every data action executed at most once, and the
//! actions not executed are listed as unknown.
#![cfg(unix)]

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use genesys_sim::{SimHandle, Simulator};
use serde_json::{Value, json};

/// Faults on every job: 5xx, resets before and after the server applied the effect, and some
/// latency so that kills land mid-job.
const FAULTS: &str = "5xx=0.04,reset-before=0.02,reset-after=0.02,latency=2ms..10ms";

/// Waits until the ledger holds at least `n` effects.
async fn wait_ledger(sim: &SimHandle, n: usize) {
    let start = Instant::now();
    while sim.ledger_len() < n {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no progress: {} effects",
            sim.ledger_len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Starts `cmd` and kills it with SIGKILL once the ledger holds `n` effects.
async fn kill_at(sim: &SimHandle, mut cmd: Command, n: usize) {
    let mut child: Child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ledger(sim, n).await;
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert_eq!(status.code(), None, "killed by a signal, not finished");
}

/// Starts `cmd`, and once the ledger holds `n` effects and one more request has arrived, sends
/// two Ctrl-C 30 ms apart (the
/// second abandons what is in flight); returns what the process printed.
async fn interrupt_twice_at(sim: &SimHandle, mut cmd: Command, n: usize) -> std::process::Output {
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ledger(sim, n).await;
    // Then a request that arrives after that: it is in flight (the simulator holds each for
    // its latency) when the interrupts come, however late this task saw the ledger move.
    let arrived = || sim.stats().faults.get("latency").copied().unwrap_or(0);
    let seen = arrived();
    let start = Instant::now();
    while arrived() <= seen {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no request arrives"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    interrupt(child.id());
    tokio::time::sleep(Duration::from_millis(30)).await;
    interrupt(child.id());
    child.wait_with_output().unwrap()
}

/// Executions of the echo action per input `n`, from the ledger.
fn executions(sim: &SimHandle, inputs: usize) -> Vec<usize> {
    let by_hash: HashMap<String, usize> = (0..inputs)
        .map(|n| (fnv1a(json!({ "n": n }).to_string().as_bytes()), n))
        .collect();
    let mut counts = vec![0; inputs];
    for e in sim.ledger() {
        if let Some(n) = by_hash.get(&e.payload_hash) {
            counts[*n] += 1;
        }
    }
    counts
}

fn unknown_inputs(path: &Path) -> HashSet<usize> {
    if !path.exists() {
        return HashSet::new();
    }
    jsonl(path)
        .iter()
        .map(|v| v["n"].as_u64().unwrap() as usize)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_patch_killed_at_several_points_then_resumed_patches_every_user_once() {
    let n = 300;
    let sim = Simulator::spawn(config(n).faults(FAULTS.parse().unwrap()))
        .await
        .unwrap();
    let d = dir("kill_users");
    let (lines, wanted) = user_lines(&sim, n);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let journal = d.join("users.journal");
    let run = || {
        let mut cmd = gcx(&sim);
        cmd.args(["users", "patch", "--concurrency", "8", "--input"])
            .arg(&input)
            .arg("--journal")
            .arg(&journal);
        cmd
    };
    for at in [1, 100, 220] {
        kill_at(&sim, run(), at).await;
    }
    let report = d.join("report.json");
    let out = run().arg("--report").arg(&report).output().unwrap();
    assert_exit(&out, 0);
    let r = read_json(&report);
    assert_eq!(r["counts"]["delivered"], n);
    // How much of the killed runs' work reached the journal depends on how far its writer got
    // before each SIGKILL (a loaded machine delays it), so only the invariant is asserted: some
    // of it was skipped, and below, every user was patched exactly once.
    let earlier = r["counts"]["delivered_earlier"].as_u64().unwrap();
    assert!(
        earlier > 0 && earlier < n as u64,
        "the earlier runs' work is skipped: {}",
        r["counts"]
    );
    for (id, title) in wanted {
        assert_eq!(sim.user(&id).unwrap()["title"], json!(title));
        assert_eq!(patches(&sim, &id), 1, "user {id} patched exactly once");
    }
}

/// Five lines about each user, one after another in the input, through the faults and three
/// SIGKILLs: once resumed to the end, every user holds its last line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_patch_with_several_lines_a_user_killed_and_resumed_ends_at_each_last_line() {
    let n = 30;
    let sim = Simulator::spawn(config(n).faults(FAULTS.parse().unwrap()))
        .await
        .unwrap();
    let d = dir("kill_users_in_order");
    let ids = sim.user_ids();
    let mut lines = String::new();
    for id in &ids {
        for round in 0..5 {
            let update = json!({"user_id": id, "updates": {"title": format!("Title {round}")}});
            lines.push_str(&format!("{update}\n"));
        }
    }
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let journal = d.join("users.journal");
    let run = || {
        let mut cmd = users_patch(&sim, &input);
        cmd.args(["--concurrency", "8", "--journal"]).arg(&journal);
        cmd
    };
    for at in [20, 60, 100] {
        kill_at(&sim, run(), at).await;
    }
    let report = d.join("report.json");
    let out = run().arg("--report").arg(&report).output().unwrap();
    assert_exit(&out, 0);
    assert_eq!(read_json(&report)["counts"]["delivered"], 5 * n);
    for id in &ids {
        assert_eq!(
            sim.user(id).unwrap()["title"],
            json!("Title 4"),
            "user {id}: the last line holds"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_killed_at_several_points_then_resumed_applies_every_record_once() {
    let sim = Simulator::spawn(config(1).faults(FAULTS.parse().unwrap()))
        .await
        .unwrap();
    let d = dir("kill_ingest");
    let records = 2000;
    let (input, schema) = ingest_input(&d, "records.jsonl", 0..records);
    let journal = d.join("ingest.journal");
    let run = || {
        let mut cmd = gcx(&sim);
        cmd.args([
            "ingest",
            "--chunk-size",
            "10",
            "--concurrency",
            "4",
            "--input",
        ])
        .arg(&input)
        .arg("--schema")
        .arg(&schema)
        .arg("--journal")
        .arg(&journal);
        cmd
    };
    for at in [10, 700, 1400] {
        kill_at(&sim, run(), at).await;
    }
    let mut out = run().arg("--json").output().unwrap();
    // Under the faults a chunk may fail for good (every attempt's connection reset): nothing of
    // it was applied, it is listed as failed, and the same command again delivers it, as its
    // summary tells the user.
    for _ in 0..2 {
        if out.status.code() == Some(1) {
            let r: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(r["counts"]["unknown"], 0, "{}", r["counts"]);
            out = run().arg("--json").output().unwrap();
        }
    }
    assert_exit(&out, 0);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["counts"]["delivered"], records);
    for i in 0..records {
        assert_eq!(
            sim.ledger_count_for(&format!("TXN-{i}")),
            1,
            "record TXN-{i} applied exactly once"
        );
    }
}

/// `gcx actions execute echo --concurrency 4 --batch INPUT` against `sim`.
fn batch_of_actions(sim: &SimHandle, input: &Path) -> Command {
    let mut cmd = gcx(sim);
    cmd.args([
        "actions",
        "execute",
        "echo",
        "--concurrency",
        "4",
        "--batch",
    ])
    .arg(input);
    cmd
}

/// A paced job of six data actions, stopped by signals: see [`Paced::start`].
struct Paced {
    sim: SimHandle,
    inputs: usize,
    input: std::path::PathBuf,
    journal: std::path::PathBuf,
    report: std::path::PathBuf,
    /// What the run printed on stderr.
    stderr: std::path::PathBuf,
}

impl Paced {
    async fn new(test: &str) -> Paced {
        let sim = Simulator::spawn(config(1)).await.unwrap();
        let d = dir(test);
        let inputs = 6;
        let lines: String = (0..inputs)
            .map(|n| format!("{}\n", json!({ "n": n })))
            .collect();
        Paced {
            sim,
            inputs,
            input: write(&d.join("batch.jsonl"), lines.as_bytes()),
            journal: d.join("actions.journal"),
            report: d.join("report.json"),
            stderr: d.join("stderr.txt"),
        }
    }

    /// What the run printed on stderr so far.
    fn printed(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The job's command, journaled, with its report.
    fn run(&self) -> Command {
        let mut cmd = batch_of_actions(&self.sim, &self.input);
        cmd.arg("--journal")
            .arg(&self.journal)
            .arg("--report")
            .arg(&self.report);
        cmd
    }

    /// Starts the job at two requests a minute (the first checks the credentials): the first
    /// execution goes, and the others in flight wait for pacing. The grace after a stop is the
    /// attempt timeout, 10 s here (far below the pacing's wait; an attempt timeout is also what
    /// each request has, which a loaded machine must not reach). SIGHUP is `hangup` in the
    /// process, as a shell (`SIG_DFL`) or `nohup` (`SIG_IGN`) leaves it. Returns once the first
    /// execution ran and three more are in flight.
    async fn start(&self, hangup: libc::sighandler_t) -> Child {
        let mut cmd = self.run();
        cmd.args(["--rate-limit", "2/60"])
            .env("GCX_TIMEOUTS_ATTEMPT", "10s")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.stderr).unwrap());
        hangup_as(&mut cmd, hangup);
        let child = cmd.spawn().unwrap();
        wait_ledger(&self.sim, 1).await;
        // And the three after it in flight, waiting for pacing: their starts are on disk before
        // they may leave (however slowly this machine read the input to them).
        let started = Instant::now();
        loop {
            let journal = std::fs::read_to_string(&self.journal).unwrap_or_default();
            if journal.matches(r#""s":"start""#).count() >= 4 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "{journal}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        child
    }

    /// What a stopped run left: nothing unknown (what waited for pacing had not left), every
    /// record delivered or not started, and those stopped in flight listed as not sent; then
    /// the same command again executes each input once.
    fn stopped_then_resumed(&self, status: std::process::ExitStatus) {
        assert_eq!(status.code(), Some(1), "records not sent");
        let r = read_json(&self.report);
        let c = &r["counts"];
        assert_eq!(
            c["unknown"], 0,
            "nothing that waited for pacing is unknown: {c}"
        );
        let delivered = c["delivered"].as_u64().unwrap();
        assert_eq!(delivered, self.sim.ledger_len() as u64);
        assert_eq!(
            delivered + c["not_started"].as_u64().unwrap(),
            self.inputs as u64,
            "{c}"
        );
        let stopped = r["failures"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["reason"] == "not sent: interrupted before its request left")
            .count();
        assert!(stopped > 0, "executions stopped in flight are listed: {r}");

        let out = self.run().output().unwrap();
        assert_exit(&out, 0);
        assert_eq!(
            executions(&self.sim, self.inputs),
            vec![1; self.inputs],
            "each executed once"
        );
    }
}

/// A job of data actions stopped by SIGTERM (a scheduler's) while some of its executions wait
/// for pacing: once the grace runs out, those whose request had not left are listed as not
/// sent, never as unknown, and the same command again executes each of them once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_stopped_while_waiting_for_pacing_are_sent_by_the_next_run() {
    let job = Paced::new("term_paced_actions").await;
    let mut child = job.start(libc::SIG_DFL).await;
    signal(child.id(), "TERM");
    job.stopped_then_resumed(child.wait().unwrap());
}

/// A terminal that closes often sends SIGHUP twice (the shell passes its own on, then the
/// kernel sends one as the session ends), and a session manager may then stop what the session
/// left with SIGTERM: neither is a second Ctrl-C, which would abandon the executions in flight
/// as unknown; they finish within the grace.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hangup_then_another_or_a_sigterm_lets_the_executions_in_flight_finish() {
    for second in ["HUP", "TERM"] {
        // The executions alone are held (they alone carry a JSON body).
        let json_body = genesys_sim::FaultTarget::parse("header:content-type=application/json");
        let sim = Simulator::spawn(
            config(1)
                .faults("latency=1s..1s".parse().unwrap())
                .faults_only_for(Some(json_body.unwrap())),
        )
        .await
        .unwrap();
        let d = dir(&format!("hup_then_{second}"));
        let lines: String = (0..4).map(|n| format!("{}\n", json!({ "n": n }))).collect();
        let input = write(&d.join("batch.jsonl"), lines.as_bytes());
        let report = d.join("report.json");
        let mut cmd = batch_of_actions(&sim, &input);
        cmd.arg("--report")
            .arg(&report)
            .env("GCX_TIMEOUTS_ATTEMPT", "30s")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        hangup_as(&mut cmd, libc::SIG_DFL);
        let mut child = cmd.spawn().unwrap();
        // The four executions, held by the simulator.
        let arrived = || sim.stats().faults.get("latency").copied().unwrap_or(0);
        let start = Instant::now();
        while arrived() < 4 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{} arrived",
                arrived()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        signal(child.id(), "HUP");
        tokio::time::sleep(Duration::from_millis(50)).await;
        signal(child.id(), second);
        child.wait().unwrap();
        let c = read_json(&report)["counts"].clone();
        assert_eq!(
            (c["delivered"].as_u64(), c["unknown"].as_u64()),
            (Some(4), Some(0)),
            "SIGHUP, then SIG{second}: {c}"
        );
        assert_eq!(sim.ledger_len(), 4);
    }
}

/// Sets what SIGHUP does in the process `cmd` starts: `SIG_DFL`, as a shell leaves it, or
/// `SIG_IGN`, as `nohup` does (whatever the test process's own is).
fn hangup_as(cmd: &mut Command, hangup: libc::sighandler_t) {
    // SAFETY: `signal` is async-signal-safe, as what runs between fork and exec must be.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, move || {
            libc::signal(libc::SIGHUP, hangup);
            Ok(())
        });
    }
}

/// SIGHUP (the ssh session or the terminal went away) stops the job as an interrupt does, with
/// its report and lists written; under `nohup`, which ignores it, the job runs on.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hangup_stops_the_job_as_sigterm_does_unless_it_runs_under_nohup() {
    let job = Paced::new("hup_paced_actions").await;
    let mut child = job.start(libc::SIG_DFL).await;
    signal(child.id(), "HUP");
    job.stopped_then_resumed(child.wait().unwrap());
    assert!(
        job.printed().contains("interrupted: finishing"),
        "{}",
        job.printed()
    );

    let job = Paced::new("nohup_paced_actions").await;
    let mut child = job.start(libc::SIG_IGN).await;
    signal(child.id(), "HUP");
    // A stop taken says so at once; a job under nohup says nothing, and runs on.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!job.printed().contains("interrupted"), "{}", job.printed());
    assert!(
        child.try_wait().unwrap().is_none(),
        "a job under nohup runs on after SIGHUP"
    );
    signal(child.id(), "TERM");
    job.stopped_then_resumed(child.wait().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_killed_at_several_points_never_run_twice_and_the_rest_are_listed_unknown() {
    let sim = Simulator::spawn(config(1).faults(FAULTS.parse().unwrap()))
        .await
        .unwrap();
    let d = dir("kill_actions");
    let inputs = 600;
    let concurrency = 8;
    let lines: String = (0..inputs)
        .map(|n| format!("{}\n", json!({ "n": n })))
        .collect();
    let input = write(&d.join("batch.jsonl"), lines.as_bytes());
    let journal = d.join("actions.journal");
    let unknown = d.join("unknown.jsonl");
    let run = || {
        let mut cmd = gcx(&sim);
        cmd.args([
            "actions",
            "execute",
            "echo",
            "--concurrency",
            "8",
            "--batch",
        ])
        .arg(&input)
        .arg("--journal")
        .arg(&journal);
        cmd
    };
    for at in [5, 200, 400] {
        kill_at(&sim, run(), at).await;
    }
    let report = d.join("report.json");
    let out = run()
        .arg("--unknown")
        .arg(&unknown)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    let r = read_json(&report);
    let c = &r["counts"];
    let counts = executions(&sim, inputs);
    for (n, times) in counts.iter().enumerate() {
        assert!(*times <= 1, "action input {n} executed {times} times");
    }
    let listed = unknown_inputs(&unknown);
    // Lines are numbered from 1; input n is on line n + 1.
    let failed: HashSet<usize> = r["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["line"].as_u64().unwrap() as usize - 1)
        .collect();
    let not_executed: HashSet<usize> = (0..inputs).filter(|n| counts[*n] == 0).collect();
    let accounted: HashSet<usize> = listed.union(&failed).copied().collect();
    assert!(
        not_executed.is_subset(&accounted),
        "every action not executed is listed as unknown, or failed for a re-run: \
         {not_executed:?} vs {listed:?} and {failed:?}"
    );
    assert!(
        failed.is_disjoint(&listed),
        "a failure is definite, never unknown"
    );
    for n in &failed {
        assert_eq!(counts[*n], 0, "a failed action {n} did not run");
    }
    // Three kills leave at most the actions in flight each; the faults that lose an answer
    // add theirs: a reset (the client cannot tell one before the action from one after it)
    // and a 502 or 504 (a gateway's answer, which may come after the action ran).
    let stats = sim.stats();
    let lost_answers = stats.fault_count("reset-after")
        + stats.fault_count("reset-before")
        + stats.fault_count("5xx");
    assert!(
        listed.len() as u64 <= 3 * concurrency + lost_answers,
        "{} unknown, {lost_answers} answers lost to faults",
        listed.len()
    );
    assert_eq!(c["unknown"].as_u64().unwrap() as usize, listed.len(), "{c}");
    assert_eq!(
        c["delivered"].as_u64().unwrap()
            + c["unknown"].as_u64().unwrap()
            + c["failed"].as_u64().unwrap(),
        inputs as u64,
        "{c}"
    );
    assert_eq!(
        out.status.code(),
        Some(if listed.is_empty() { 0 } else { 1 })
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !listed.is_empty() {
        assert!(stdout.contains("--retry-unknown"), "{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ctrl_c_record_in_flight_actions_as_unknown_and_a_resume_never_runs_them_again() {
    // Slow actions: several are in flight when the two interrupts come.
    let sim = Simulator::spawn(config(1).faults("latency=300ms..300ms".parse().unwrap()))
        .await
        .unwrap();
    let d = dir("two_ctrl_c");
    let inputs = 40;
    let lines: String = (0..inputs)
        .map(|n| format!("{}\n", json!({ "n": n })))
        .collect();
    let input = write(&d.join("batch.jsonl"), lines.as_bytes());
    let (journal, failed, unknown, report) = (
        d.join("j.journal"),
        d.join("failed.jsonl"),
        d.join("unknown.jsonl"),
        d.join("r.json"),
    );
    let mut cmd = batch_of_actions(&sim, &input);
    cmd.arg("--journal")
        .arg(&journal)
        .arg("--failed")
        .arg(&failed)
        .arg("--unknown")
        .arg(&unknown)
        .arg("--report")
        .arg(&report);
    let out = interrupt_twice_at(&sim, cmd, 4).await;
    assert_eq!(out.status.code(), Some(1));
    let r = read_json(&report);
    let c = &r["counts"];
    let in_flight = unknown_inputs(&unknown);
    assert!(
        !in_flight.is_empty() && in_flight.len() <= 4,
        "the actions in flight are unknown: {c}"
    );
    assert_eq!(c["unknown"].as_u64().unwrap() as usize, in_flight.len());
    let not_started: HashSet<usize> = unknown_inputs(&failed);
    assert!(
        not_started.is_disjoint(&in_flight),
        "never in the failed file with the records not started"
    );
    assert_eq!(
        c["delivered"].as_u64().unwrap() as usize + in_flight.len() + not_started.len(),
        inputs,
        "{c}"
    );

    // Let the abandoned executions land, then resume.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = batch_of_actions(&sim, &input)
        .arg("--journal")
        .arg(&journal)
        .arg("--json")
        .output()
        .unwrap();
    assert_exit(&out, 1);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        r["counts"]["unknown"].as_u64().unwrap() as usize,
        in_flight.len()
    );
    let counts = executions(&sim, inputs);
    for (n, times) in counts.iter().enumerate() {
        assert!(*times <= 1, "action input {n} executed {times} times");
        if !in_flight.contains(&n) {
            assert_eq!(*times, 1, "action input {n} executed once");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ctrl_c_then_a_resume_patch_every_user_exactly_once() {
    let n = 40;
    let sim = Simulator::spawn(config(n).faults("latency=150ms..150ms".parse().unwrap()))
        .await
        .unwrap();
    let d = dir("two_ctrl_c_users");
    let (lines, wanted) = user_lines(&sim, n);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let (journal, unknown) = (d.join("j.journal"), d.join("unknown.jsonl"));
    let run = || {
        let mut cmd = gcx(&sim);
        cmd.args(["users", "patch", "--concurrency", "4", "--input"])
            .arg(&input)
            .arg("--journal")
            .arg(&journal);
        cmd
    };
    let report = d.join("report.json");
    let mut cmd = run();
    cmd.arg("--unknown")
        .arg(&unknown)
        .arg("--report")
        .arg(&report);
    let out = interrupt_twice_at(&sim, cmd, 4).await;
    assert_eq!(out.status.code(), Some(1));
    // A user whose PATCH had left is unknown; one that was still being read, not sent.
    let stopped_unsent = read_json(&report)["failures"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["reason"] == "not sent: interrupted before its request left")
        .count();
    assert!(
        !jsonl(&unknown).is_empty() || stopped_unsent > 0,
        "the users in flight are recorded as unknown, or as not sent"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let out = run().output().unwrap();
    assert_exit(&out, 0);
    for (id, title) in wanted {
        assert_eq!(sim.user(&id).unwrap()["title"], json!(title));
        assert_eq!(patches(&sim, &id), 1, "user {id} patched exactly once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ctrl_c_then_a_resume_ingest_every_record_exactly_once() {
    let sim = Simulator::spawn(config(1).faults("latency=300ms..300ms".parse().unwrap()))
        .await
        .unwrap();
    let d = dir("two_ctrl_c_ingest");
    let records = 60;
    let (input, schema) = ingest_input(&d, "records.jsonl", 0..records);
    let (journal, unknown) = (d.join("j.journal"), d.join("unknown.jsonl"));
    let run = || {
        let mut cmd = gcx(&sim);
        cmd.args([
            "ingest",
            "--chunk-size",
            "5",
            "--concurrency",
            "2",
            "--input",
        ])
        .arg(&input)
        .arg("--schema")
        .arg(&schema)
        .arg("--journal")
        .arg(&journal);
        cmd
    };
    let mut cmd = run();
    cmd.arg("--unknown").arg(&unknown);
    let out = interrupt_twice_at(&sim, cmd, 5).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        !jsonl(&unknown).is_empty(),
        "the chunks in flight are recorded as unknown"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = run().output().unwrap();
    assert_exit(&out, 0);
    for i in 0..records {
        assert_eq!(
            sim.ledger_count_for(&format!("TXN-{i}")),
            1,
            "record TXN-{i} applied exactly once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_paths_that_cannot_be_written_exit_2_before_anything_is_sent() {
    let sim = Simulator::spawn(config(5)).await.unwrap();
    let d = dir("bad_outputs");
    let (lines, _) = user_lines(&sim, 5);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let missing = d.join("no-such-dir");
    for flag in [
        "--report",
        "--failed",
        "--unknown",
        "--quarantine",
        "--journal",
    ] {
        let out = users_patch(&sim, &input)
            .arg(flag)
            .arg(missing.join("out"))
            .output()
            .unwrap();
        assert_exit(&out, 2);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(flag), "{flag}: {stderr}");
        assert_eq!(sim.ledger_len(), 0, "{flag}: nothing sent");
    }
    // A journal that is not one is refused too.
    let out = users_patch(&sim, &input)
        .args(["--journal", "/dev/full"])
        .output()
        .unwrap();
    assert_exit(&out, 2);
    assert_eq!(sim.ledger_len(), 0);
    // A report named as a directory, existing or not: refused before anything is sent, not
    // when the report is moved into place at the end.
    for report in [format!("{}/", missing.display()), d.display().to_string()] {
        let out = users_patch(&sim, &input)
            .args(["--report", &report])
            .output()
            .unwrap();
        assert_exit(&out, 2);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("a directory"), "{report}: {stderr}");
        assert_eq!(sim.ledger_len(), 0, "{report}: nothing sent");
    }
    // An output over a file the job reads (the configuration here) is refused, and the file
    // is left as it was.
    let config_file = write(&d.join("gcx.toml"), b"[retry]\nmax_attempts = 3\n");
    let out = users_patch(&sim, &input)
        .arg("--config")
        .arg(&config_file)
        .arg("--quarantine")
        .arg(&config_file)
        .output()
        .unwrap();
    assert_exit(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("the configuration file"));
    assert_eq!(
        std::fs::read_to_string(&config_file).unwrap(),
        "[retry]\nmax_attempts = 3\n"
    );
    assert_eq!(sim.ledger_len(), 0);
}

/// An output over the ingestion schema is refused before the schema is read, and the schema
/// is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_over_the_schema_is_refused() {
    let sim = Simulator::spawn(config(1)).await.unwrap();
    let d = dir("output_over_schema");
    let (input, schema) = ingest_input(&d, "records.jsonl", 0..3);
    let before = std::fs::read(&schema).unwrap();
    let out = ingest(&sim, &input, &schema, &d.join("report.json"), &schema)
        .output()
        .unwrap();
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("is the schema"), "{stderr}");
    assert_eq!(std::fs::read(&schema).unwrap(), before);
    assert_eq!(sim.ledger_len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_an_honest_non_zero_exit() {
    let sim = Simulator::spawn(config(3)).await.unwrap();
    let d = dir("full_disk");
    let (mut lines, _) = user_lines(&sim, 3);
    lines.push_str("{\"user_id\": \"no-such-user\", \"updates\": {\"title\": \"x\"}}\n");
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let out = users_patch(&sim, &input)
        .args(["--failed", "/dev/full"])
        .output()
        .unwrap();
    assert_exit(&out, 1);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("output error"), "{stdout}");
    assert!(
        !stdout.contains("re-run only the items not delivered with --input /dev/full"),
        "{stdout}"
    );
    assert!(stdout.contains("could not be written whole"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_of_another_input_is_refused_with_what_differs() {
    let sim = Simulator::spawn(config(4)).await.unwrap();
    let d = dir("other_input");
    let (lines, _) = user_lines(&sim, 4);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let journal = d.join("j.journal");
    let out = users_patch(&sim, &input)
        .arg("--journal")
        .arg(&journal)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let before = sim.ledger_len();
    write(&input, lines.replace("Title 0", "Title zero").as_bytes());
    let out = users_patch(&sim, &input)
        .arg("--journal")
        .arg(&journal)
        .output()
        .unwrap();
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the input's content"), "{stderr}");
    assert!(stderr.contains("--fresh"), "{stderr}");
    let out = gcx(&sim)
        .args(["actions", "execute", "echo", "--batch"])
        .arg(&input)
        .arg("--journal")
        .arg(&journal)
        .output()
        .unwrap();
    assert_exit(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("the command"));
    assert_eq!(sim.ledger_len(), before, "nothing sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_command_resumes_from_the_default_journal() {
    let sim = Simulator::spawn(config(60).faults("latency=20ms..20ms".parse().unwrap()))
        .await
        .unwrap();
    let d = dir("default_journal");
    let (lines, wanted) = user_lines(&sim, 60);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let state = d.join("state");
    let run = || {
        let mut cmd = gcx(&sim);
        cmd.env("GCX_STATE_DIR", &state)
            .args(["users", "patch", "--concurrency", "2", "--input"])
            .arg(&input);
        cmd
    };
    kill_at(&sim, run(), 10).await;
    let journals: Vec<_> = std::fs::read_dir(&state).unwrap().collect();
    assert_eq!(journals.len(), 1, "one default journal");
    let out = run().output().unwrap();
    assert_exit(&out, 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("resuming from the journal"), "{stderr}");
    for (id, _) in &wanted {
        assert_eq!(patches(&sim, id), 1, "user {id} patched exactly once");
    }
    // A finished job's default journal starts over: the same command applies it again.
    let out = run().output().unwrap();
    assert_exit(&out, 0);
    for (id, _) in &wanted {
        assert_eq!(patches(&sim, id), 2, "user {id}: a new job");
    }
}

/// A journal is the record of what one API received: the same job run against another API
/// with that journal is refused, rather than skip what the first API got as delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_is_not_resumed_against_another_api() {
    let staging = Simulator::spawn(config(1)).await.unwrap();
    let production = Simulator::spawn(config(1)).await.unwrap();
    let d = dir("journal_other_api");
    let (input, schema) = ingest_input(&d, "records.jsonl", 0..20);
    let journal = d.join("ingest.journal");
    let run = |sim: &SimHandle| {
        ingest_journaled(sim, &input, &schema, &journal)
            .args(["--chunk-size", "5"])
            .output()
            .unwrap()
    };
    assert_exit(&run(&staging), 0);
    assert_eq!(staging.ledger_len(), 20);
    let out = run(&production);
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the API it writes to"), "{stderr}");
    assert!(stderr.contains(&staging.base_url()), "{stderr}");
    assert_eq!(production.ledger_len(), 0);
    // Its own journal delivers everything there.
    let out = ingest_journaled(&production, &input, &schema, &journal)
        .args(["--chunk-size", "5", "--fresh"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert_eq!(production.ledger_len(), 20);
}

/// A finished job's default journal is replaced by the next run of the same command, also when
/// the input file now holds another batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_default_journal_gives_way_to_the_next_batch_in_the_same_file() {
    let sim = Simulator::spawn(config(1)).await.unwrap();
    let d = dir("next_batch_same_file");
    let (input, schema) = ingest_input(&d, "records.jsonl", 0..10);
    let run = || {
        gcx(&sim)
            .args(["ingest", "--chunk-size", "5", "--input"])
            .arg(&input)
            .arg("--schema")
            .arg(&schema)
            .output()
            .unwrap()
    };
    assert_exit(&run(), 0);
    // The next batch, written over the first.
    ingest_input(&d, "records.jsonl", 10..25);
    assert_exit(&run(), 0);
    assert_eq!(sim.ledger_len(), 25);
}

/// The default journal's directory is absolute, or the job does not start: a relative one would
/// name another directory from wherever the same command is run again, which would then not
/// find the journal and send everything again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_state_directory_is_refused() {
    let sim = Simulator::spawn(config(2)).await.unwrap();
    let d = dir("relative_state");
    let (lines, _) = user_lines(&sim, 2);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let out = users_patch(&sim, &input)
        .env("GCX_STATE_DIR", "state")
        .current_dir(&d)
        .output()
        .unwrap();
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("GCX_STATE_DIR is state, a relative path"),
        "{stderr}"
    );
    let out = users_patch(&sim, &input)
        .env_remove("GCX_STATE_DIR")
        .env_remove("XDG_STATE_HOME")
        .env_remove("HOME")
        .current_dir(&d)
        .output()
        .unwrap();
    assert_exit(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("HOME is not set"));
    assert_eq!(sim.ledger_len(), 0, "nothing sent");
    assert!(!d.join("state").exists() && !d.join(".gcx").exists());
}
