//! The policy store from the command line: versions applied, promoted and rolled back, what
//! jobs then run, the diff, and an audit log whose hash chain catches an edited, removed or
//! cut-off line.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

fn gcx_store(store: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gcx"));
    cmd.env("GCX_POLICY_STORE", store)
        .env("XDG_CONFIG_HOME", store.join("no-config"))
        .env_remove("GCX_CONFIG")
        .env_remove("GCX_PROFILE")
        .env("USER", "ops-alice")
        .env("GENESYS_CLIENT_ID", "demo-client")
        .env("GENESYS_CLIENT_SECRET", "demo-secret");
    cmd
}

fn run(store: &Path, args: &[&str]) -> std::process::Output {
    gcx_store(store).args(args).output().unwrap()
}

fn shown_setting(store: &Path, key: &str) -> Value {
    let out = run(store, &["config", "show", "--json"]);
    assert_exit(&out, 0);
    setting(&serde_json::from_slice(&out.stdout).unwrap(), key)
}

#[test]
fn versions_are_applied_promoted_rolled_back_and_audited() {
    let d = dir("policy_store");
    let store = d.join("store");
    let v1 = write(&d.join("v1.toml"), b"[retry]\nmax_attempts = 3\n");
    let v2 = write(
        &d.join("v2.toml"),
        b"[retry]\nmax_attempts = 6\nfactor = 3.0\n",
    );
    let bad = write(&d.join("bad.toml"), b"[retry]\nmax_attempts = 60\n");

    // A bad version never reaches the store.
    let out = run(&store, &["policy", "apply", bad.to_str().unwrap()]);
    assert_exit(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("retry.max_attempts"));
    // A canary needs a stable version to be compared with.
    let out = run(
        &store,
        &["policy", "apply", "--canary", "10%", v2.to_str().unwrap()],
    );
    assert_exit(&out, 2);

    assert_exit(
        &run(
            &store,
            &["policy", "apply", v1.to_str().unwrap(), "--reason", "first"],
        ),
        0,
    );
    let s = shown_setting(&store, "retry.max_attempts");
    assert_eq!(s["value"], 3);
    assert_eq!(s["from"]["kind"], "policy");
    // The same content again: nothing to do, no audit entry.
    assert_exit(&run(&store, &["policy", "apply", v1.to_str().unwrap()]), 0);

    let out = run(
        &store,
        &[
            "policy",
            "apply",
            "--canary",
            "25%",
            "--rollback-below",
            "0.9",
            v2.to_str().unwrap(),
        ],
    );
    assert_exit(&out, 0);
    // The stable version still rules what is not the canary's share.
    assert_eq!(shown_setting(&store, "retry.max_attempts")["value"], 3);
    let out = run(&store, &["--json", "policy", "status"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["canary"]["share"], 0.25);
    assert_eq!(status["canary"]["rollback_below"], 0.9);
    // One canary at a time.
    assert_exit(
        &run(
            &store,
            &["policy", "apply", "--canary", "5%", v1.to_str().unwrap()],
        ),
        2,
    );

    let out = run(&store, &["policy", "diff", "stable", "canary"]);
    assert_exit(&out, 0);
    let diff = String::from_utf8_lossy(&out.stdout);
    assert!(diff.contains("retry.max_attempts: 3 -> 6"), "{diff}");
    assert!(diff.contains("retry.factor: 2.0 -> 3.0"), "{diff}");
    assert!(!diff.contains("retry.base_delay"), "{diff}");

    assert_exit(
        &run(&store, &["policy", "promote", "--actor", "ops-bob"]),
        0,
    );
    assert_eq!(shown_setting(&store, "retry.max_attempts")["value"], 6);
    assert_exit(
        &run(
            &store,
            &["policy", "rollback", "--reason", "too many retries"],
        ),
        0,
    );
    assert_eq!(shown_setting(&store, "retry.max_attempts")["value"], 3);
    // Nothing before the first version.
    assert_exit(&run(&store, &["policy", "rollback"]), 2);

    let out = run(&store, &["--json", "policy", "history"]);
    assert_exit(&out, 0);
    let entries: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let actions: Vec<(&str, &str)> = entries
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("apply", "ops-alice"),
            ("canary", "ops-alice"),
            ("promote", "ops-bob"),
            ("rollback", "ops-alice")
        ]
    );
    assert_eq!(entries[3]["reason"], "too many retries");
    let out = run(&store, &["policy", "audit", "verify"]);
    assert_exit(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact: 4 entries"));

    // An edited line is found, with its number.
    let log = store.join("audit.jsonl");
    let original = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, original.replace("ops-bob", "ops-eve")).unwrap();
    let out = run(&store, &["policy", "audit", "verify"]);
    assert_exit(&out, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 3"), "{stderr}");
    // So is a removed one, and one cut off the end.
    let lines: Vec<&str> = original.lines().collect();
    std::fs::write(&log, format!("{}\n{}\n{}\n", lines[0], lines[2], lines[3])).unwrap();
    let out = run(&store, &["policy", "audit", "verify"]);
    assert_exit(&out, 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));
    std::fs::write(&log, format!("{}\n{}\n{}\n", lines[0], lines[1], lines[2])).unwrap();
    let out = run(&store, &["policy", "audit", "verify"]);
    assert_exit(&out, 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cut off"));
    // History refuses a damaged log rather than show it.
    assert_exit(&run(&store, &["policy", "history"]), 2);

    // A change that died between the log and the state left a line the state does not know
    // of: verify says so, and the next change cuts it off.
    std::fs::write(&log, &original).unwrap();
    assert_exit(&run(&store, &["policy", "audit", "verify"]), 0);
    std::fs::write(&log, format!("{original}{}\n", lines[3])).unwrap();
    assert_exit(&run(&store, &["policy", "audit", "verify"]), 1);
    assert_exit(&run(&store, &["policy", "apply", v2.to_str().unwrap()]), 0);
    let out = run(&store, &["policy", "audit", "verify"]);
    assert_exit(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact: 5 entries"));

    // A canary tries a retry policy only.
    let wide = write(
        &d.join("wide.toml"),
        b"[retry]\nmax_attempts = 5\n[concurrency]\nlimit = 3\n",
    );
    let out = run(
        &store,
        &["policy", "apply", "--canary", "10%", wide.to_str().unwrap()],
    );
    assert_exit(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("[retry] only"));
}

#[test]
fn a_damaged_audit_sequence_is_refused_not_wrapped() {
    let d = dir("policy_store_seq");
    let store = d.join("store");
    let v1 = write(&d.join("v1.toml"), b"[retry]\nmax_attempts = 3\n");
    let v2 = write(&d.join("v2.toml"), b"[retry]\nmax_attempts = 4\n");
    assert_exit(&run(&store, &["policy", "apply", v1.to_str().unwrap()]), 0);
    // The state's sequence number at its last value, as a damaged or edited file may have it.
    let path = store.join("state.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    state["audit"]["seq"] = Value::from(u64::MAX);
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    let out = run(&store, &["policy", "apply", v2.to_str().unwrap()]);
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("audit log is at its last sequence number"),
        "{stderr}"
    );
}

fn status(store: &Path) -> Value {
    let out = run(store, &["--json", "policy", "status"]);
    assert_exit(&out, 0);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A state written before the state kept the log's length: the next change appends after the
/// log's entries, as it did then, rather than cut the log to nothing.
#[test]
fn a_state_without_the_logs_length_keeps_the_log() {
    let d = dir("policy_store_len");
    let store = d.join("store");
    let v1 = write(&d.join("v1.toml"), b"[retry]\nmax_attempts = 3\n");
    let v2 = write(&d.join("v2.toml"), b"[retry]\nmax_attempts = 4\n");
    let v3 = write(&d.join("v3.toml"), b"[retry]\nmax_attempts = 5\n");
    assert_exit(&run(&store, &["policy", "apply", v1.to_str().unwrap()]), 0);
    assert_exit(&run(&store, &["policy", "apply", v2.to_str().unwrap()]), 0);
    let path = store.join("state.json");
    let mut state: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    state["audit"].as_object_mut().unwrap().remove("len");
    std::fs::write(&path, serde_json::to_vec(&state).unwrap()).unwrap();
    assert_exit(&run(&store, &["policy", "apply", v3.to_str().unwrap()]), 0);
    let out = run(&store, &["policy", "audit", "verify"]);
    assert_exit(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact: 3 entries"));
}

/// An `--actor` longer than an audit line can hold is refused, and the log stays readable.
#[test]
fn an_actor_too_long_for_the_log_is_refused() {
    let d = dir("policy_store_actor");
    let store = d.join("store");
    let v1 = write(&d.join("v1.toml"), b"[retry]\nmax_attempts = 3\n");
    let actor = "a".repeat(70_000);
    let out = run(
        &store,
        &["policy", "apply", "--actor", &actor, v1.to_str().unwrap()],
    );
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("at most 200 characters"), "{stderr}");
    assert_exit(&run(&store, &["policy", "apply", v1.to_str().unwrap()]), 0);
    assert_exit(&run(&store, &["policy", "audit", "verify"]), 0);
}

/// A simulator of `n` users whose `faults` hit only the calls tagged with policy `version`.
async fn sim_failing_for(n: usize, faults: &str, version: &str) -> genesys_sim::SimHandle {
    genesys_sim::Simulator::spawn(
        config(n)
            .faults(faults.parse().unwrap())
            .faults_only_for(Some(genesys_sim::FaultTarget::Header(
                http::HeaderName::from_static("x-policy-version"),
                version.to_owned(),
            ))),
    )
    .await
    .unwrap()
}

/// `gcx users patch` over every user of `sim` with the policies of `store` (and `args`):
/// its report.
fn patch_all(
    sim: &genesys_sim::SimHandle,
    store: &Path,
    d: &Path,
    n: usize,
    args: &[&str],
) -> Value {
    let (lines, _) = user_lines(sim, n);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let report = d.join("report.json");
    let out = gcx(sim)
        .args(["users", "patch", "--rate-limit", "10000/1"])
        .args(args)
        .arg("--policy-store")
        .arg(store)
        .arg("--input")
        .arg(&input)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert!(out.status.code().is_some(), "{out:?}");
    read_json(&report)
}

/// A canary on a quarter of the calls, against a simulator whose faults hit the canary's calls
/// only (they carry its version in a header): the job rolls it back by itself, in the store
/// and the audit log. A healthy canary is promoted after its calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_and_a_healthy_one_promoted_by_the_job() {
    let d = dir("policy_canary");
    let store = d.join("store");
    let v1 = write(&d.join("v1.toml"), b"[retry]\nmax_attempts = 3\n");
    // The canary gives up at once: on a flaky route, it does worse than the stable version.
    let v2 = write(&d.join("v2.toml"), b"[retry]\nmax_attempts = 1\n");
    let v3 = write(&d.join("v3.toml"), b"[retry]\nmax_attempts = 4\n");
    assert_exit(&run(&store, &["policy", "apply", v1.to_str().unwrap()]), 0);
    let out = run(
        &store,
        &["policy", "apply", "--canary", "25%", v2.to_str().unwrap()],
    );
    assert_exit(&out, 0);
    let canary = status(&store)["canary"]["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let stable = status(&store)["stable"].as_str().unwrap().to_owned();

    let n = 200;
    let sim = sim_failing_for(n, "5xx=0.5", &canary).await;
    let r = patch_all(&sim, &store, &d, n, &["--concurrency", "8"]);
    let policy = &r["policy"];
    let decision = policy["decisions"][0].as_str().unwrap_or_default();
    assert!(decision.starts_with("rolled back"), "{policy}");
    assert!(
        policy["outcomes"][&canary]["calls"].as_u64().unwrap() >= 20,
        "{policy}"
    );
    assert_eq!(policy["outcomes"][&stable]["success_rate"], 1.0, "{policy}");
    assert!(policy["canary"].is_null(), "{policy}");
    // In the store and its audit log, by gcx itself, with the evidence.
    let now = status(&store);
    assert!(now["canary"].is_null(), "{now}");
    assert_eq!(now["stable"], stable.as_str());
    let out = run(&store, &["--json", "policy", "history"]);
    let entries: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let last = entries.last().unwrap();
    assert_eq!(last["action"], "rollback");
    assert_eq!(last["actor"], "gcx (automatic)");
    assert_eq!(last["from"], canary.as_str());
    assert!(
        last["reason"].as_str().unwrap().contains("succeeded on"),
        "{last}"
    );
    assert_exit(&run(&store, &["policy", "audit", "verify"]), 0);
    // The simulator's faults hit the canary's calls only.
    assert!(sim.stats().fault_count("5xx") > 0);

    // A healthy canary (the faults still target the old one) is promoted after 30 calls.
    let out = run(
        &store,
        &[
            "policy",
            "apply",
            "--canary",
            "25%",
            "--promote-after",
            "30",
            v3.to_str().unwrap(),
        ],
    );
    assert_exit(&out, 0);
    let healthy = status(&store)["canary"]["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = patch_all(&sim, &store, &d, n, &["--fresh"]);
    assert_eq!(r["exit_code"], 0, "{}", r["counts"]);
    let decision = r["policy"]["decisions"][0].as_str().unwrap_or_default();
    assert!(decision.starts_with("promoted"), "{}", r["policy"]);
    assert_eq!(status(&store)["stable"], healthy.as_str());
    let out = run(&store, &["--json", "policy", "history"]);
    let entries: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(entries.last().unwrap()["action"], "promote");
}

/// A version applied while a job runs: the calls that start after it run it, the job does not
/// stop, and its report counts the calls of both versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_applied_mid_job_is_taken_live() {
    use genesys_sim::Simulator;
    let d = dir("policy_live");
    let store = d.join("store");
    let v1 = write(&d.join("v1.toml"), b"[retry]\nmax_attempts = 3\n");
    let v2 = write(&d.join("v2.toml"), b"[retry]\nmax_attempts = 5\n");
    assert_exit(&run(&store, &["policy", "apply", v1.to_str().unwrap()]), 0);
    let first = status(&store)["stable"].as_str().unwrap().to_owned();
    let n = 60;
    let sim = Simulator::spawn(config(n)).await.unwrap();
    let (lines, _) = user_lines(&sim, n);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let report = d.join("report.json");
    // 120 requests at 20 a second: the job lasts 6 s at least.
    let child = gcx(&sim)
        .args(["users", "patch", "--rate-limit", "20/1", "--policy-store"])
        .arg(&store)
        .arg("--input")
        .arg(&input)
        .arg("--report")
        .arg(&report)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while sim.ledger_len() < 10 {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(60),
            "no progress"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_exit(&run(&store, &["policy", "apply", v2.to_str().unwrap()]), 0);
    let second = status(&store)["stable"].as_str().unwrap().to_owned();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let r = read_json(&report);
    let outcomes = &r["policy"]["outcomes"];
    let calls = |v: &str| outcomes[v]["calls"].as_u64().unwrap_or(0);
    assert!(calls(&first) >= 20, "{outcomes}");
    assert!(calls(&second) >= 20, "{outcomes}");
    // A GET and a PATCH per user, and the limits read that checks the credentials first.
    assert_eq!(
        calls(&first) + calls(&second),
        2 * n as u64 + 1,
        "{outcomes}"
    );
    assert_eq!(r["policy"]["stable"], second.as_str());
}

/// A canary whose calls succeed but take longer (the server asks its calls to wait) is rolled
/// back on its added latency when a bound is set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_adds_latency_is_rolled_back() {
    let d = dir("policy_latency");
    let store = d.join("store");
    let v1 = write(&d.join("v1.toml"), b"[retry]\nmax_attempts = 3\n");
    let v2 = write(&d.join("v2.toml"), b"[retry]\nmax_attempts = 6\n");
    assert_exit(&run(&store, &["policy", "apply", v1.to_str().unwrap()]), 0);
    let out = run(
        &store,
        &[
            "policy",
            "apply",
            "--canary",
            "50%",
            "--rollback-below",
            "0.5",
            "--max-added-latency",
            "300ms",
            v2.to_str().unwrap(),
        ],
    );
    assert_exit(&out, 0);
    let canary = status(&store)["canary"]["version"]
        .as_str()
        .unwrap()
        .to_owned();
    let n = 40;
    // Half the canary's calls are told to come back in 1 to 3 s: they succeed, later.
    let sim = sim_failing_for(n, "503-retry-after=0.5", &canary).await;
    let r = patch_all(&sim, &store, &d, n, &["--concurrency", "16"]);
    let decision = r["policy"]["decisions"][0].as_str().unwrap_or_default();
    assert!(decision.starts_with("rolled back"), "{}", r["policy"]);
    assert!(
        decision.contains("ms added against at most 300 ms"),
        "{decision}"
    );
    assert!(status(&store)["canary"].is_null());
}

/// The same store in Redis, for a fleet on several machines: versions, canary, promotion and
/// the audit chain, and what a job would run.
#[test]
fn a_store_in_redis_keeps_versions_and_the_audit_chain() {
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let store_url = format!("{redis}#test-{nanos}");
    let store = Path::new(&store_url);
    let d = dir("policy_redis");
    let v1 = write(&d.join("v1.toml"), b"[retry]\nmax_attempts = 3\n");
    let v2 = write(&d.join("v2.toml"), b"[retry]\nmax_attempts = 5\n");
    assert_exit(&run(store, &["policy", "apply", v1.to_str().unwrap()]), 0);
    assert_exit(
        &run(
            store,
            &["policy", "apply", "--canary", "20%", v2.to_str().unwrap()],
        ),
        0,
    );
    let s = status(store);
    assert_eq!(s["canary"]["share"], 0.2, "{s}");
    assert!(
        s["store"]
            .as_str()
            .unwrap()
            .contains(&format!("gcx:policies:test-{nanos}"))
    );
    assert_eq!(shown_setting(store, "retry.max_attempts")["value"], 3);
    assert_exit(
        &run(store, &["policy", "promote", "--reason", "looks good"]),
        0,
    );
    assert_eq!(shown_setting(store, "retry.max_attempts")["value"], 5);
    let out = run(store, &["--json", "policy", "history"]);
    assert_exit(&out, 0);
    let entries: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[2]["reason"], "looks good");
    let out = run(store, &["policy", "audit", "verify"]);
    assert_exit(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("intact: 3 entries"));
}

/// A store in Redis whose URL holds a password: a damaged state (or version) is reported
/// with the store named as `policy status` names it, never with the password.
#[test]
fn a_damaged_store_in_redis_is_reported_without_its_password() {
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let host = redis.trim_start_matches("redis://");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    // Redis takes any password for a user without one (`nopass`), as its default user is
    // unless the server asks for one.
    let store_url = format!("redis://default:s3cr3t-pw@{host}#leak-{nanos}");
    let store = Path::new(&store_url);
    let mut conn = redis::Client::open(redis.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    // A field this gcx does not know (a newer gcx's, or an edit): not a state it can read.
    let _: () = redis::cmd("SET")
        .arg(format!("gcx:policies:leak-{nanos}:state"))
        .arg(r#"{"bogus":1}"#)
        .query(&mut conn)
        .unwrap();
    for args in [&["policy", "status"][..], &["policy", "history"][..]] {
        let out = run(store, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(
            stderr.contains("not a policy store's state"),
            "{args:?}: {stderr}"
        );
        assert!(
            stderr.contains(&format!("leak-{nanos}")),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("s3cr3t"), "{args:?}: {stderr}");
    }
    let _: () = redis::cmd("DEL")
        .arg(format!("gcx:policies:leak-{nanos}:state"))
        .query(&mut conn)
        .unwrap();
}

/// An audit log that is not one (here a file without end) is refused at its first line, not
/// read whole first.
#[test]
fn an_endless_audit_log_is_refused_at_its_first_line() {
    let store = dir("audit_endless").join("store");
    std::fs::create_dir_all(&store).unwrap();
    std::os::unix::fs::symlink("/dev/zero", store.join("audit.jsonl")).unwrap();
    let mut child = gcx_store(&store)
        .args(["policy", "audit", "verify"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A bound for a hang: the first 64 KiB are refused at once.
    let start = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > std::time::Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("still reading after a minute");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert_exit(&out, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 1"), "{stderr}");
}

/// Items in a Redis store larger than any gcx writes (a damaged or foreign value) are refused
/// in Redis, not read whole first: the state, and an audit entry deep in the list (read a
/// page at a time).
#[test]
fn oversized_items_in_a_redis_store_are_refused_unread() {
    let redis = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut conn = redis::Client::open(redis.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let huge = vec![b'x'; 2 << 20];

    let state_store = format!("{redis}#huge-state-{nanos}");
    let _: () = redis::cmd("SET")
        .arg(format!("gcx:policies:huge-state-{nanos}:state"))
        .arg(&huge)
        .query(&mut conn)
        .unwrap();
    let out = run(Path::new(&state_store), &["policy", "status"]);
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("larger than any the store writes"),
        "{stderr}"
    );

    let audit_store = format!("{redis}#huge-audit-{nanos}");
    let audit_key = format!("gcx:policies:huge-audit-{nanos}:audit");
    for _ in 0..399 {
        let _: () = redis::cmd("RPUSH")
            .arg(&audit_key)
            .arg("{}")
            .query(&mut conn)
            .unwrap();
    }
    let _: () = redis::cmd("RPUSH")
        .arg(&audit_key)
        .arg(&huge)
        .query(&mut conn)
        .unwrap();
    let out = run(Path::new(&audit_store), &["policy", "audit", "verify"]);
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("an audit entry larger than any the store writes"),
        "{stderr}"
    );
    let _: () = redis::cmd("DEL")
        .arg(format!("gcx:policies:huge-state-{nanos}:state"))
        .arg(&audit_key)
        .query(&mut conn)
        .unwrap();
}
