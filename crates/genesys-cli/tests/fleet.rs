//! A fleet of `gcx` workers on one job: three real processes split one input with `--shard I/N`
//! and share one quota through a real Redis (`--fleet-redis`, `REDIS_URL`, default
//! `redis://127.0.0.1:6379`), and one token, against a simulator whose quota is per OAuth
//! client, across tokens. One worker is killed (SIGKILL) mid-job and resumed with the same command; the
//! simulator's ledger shows every user patched exactly once.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use genesys_sim::Simulator;
use serde_json::json;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_split_one_job_under_one_quota_and_a_killed_one_resumes_its_share() {
    let n = 120;
    // 100 requests a second for the client, whatever its tokens: three workers each pacing at
    // 100 a second on their own would get hundreds of 429s.
    let sim = Simulator::spawn(config(n).client_rate_limit(Some((100, Duration::from_secs(1)))))
        .await
        .unwrap();
    let d = dir("fleet");
    let (lines, wanted) = user_lines(&sim, n);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let worker = |i: u32| {
        let mut cmd = gcx(&sim);
        cmd.args([
            "users",
            "patch",
            "--concurrency",
            "4",
            "--rate-limit",
            "100/1",
        ])
        .args(["--shard", &format!("{i}/3"), "--fleet-redis", &redis_url()])
        .arg("--input")
        .arg(&input)
        .arg("--report")
        .arg(d.join(format!("report-{i}.json")));
        cmd
    };

    let mut children: Vec<_> = (0..3)
        .map(|i| {
            worker(i)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    // Worker 1 dies mid-job.
    let start = Instant::now();
    while sim.ledger_len() < 60 {
        assert!(start.elapsed() < Duration::from_secs(120), "no progress");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    children[1].kill().unwrap();
    assert_eq!(
        children[1].wait().unwrap().code(),
        None,
        "killed by a signal"
    );
    for i in [0, 2] {
        assert_eq!(children[i].wait().unwrap().code(), Some(0), "worker {i}");
    }
    // The same command resumes worker 1's share from its journal.
    let out = worker(1).output().unwrap();
    assert_exit(&out, 0);

    let mut delivered = 0;
    for i in 0..3 {
        let report = read_json(&d.join(format!("report-{i}.json")));
        let c = &report["counts"];
        assert_eq!(c["records"], n, "worker {i}: {c}");
        assert_eq!(
            c["delivered"].as_u64().unwrap() + c["other_shards"].as_u64().unwrap(),
            n as u64,
            "worker {i}: {c}"
        );
        delivered += c["delivered"].as_u64().unwrap();
        assert!(
            report["pace"]["source"]
                .as_str()
                .unwrap()
                .contains("shared through Redis"),
            "{}",
            report["pace"]
        );
    }
    assert_eq!(delivered, n as u64, "the shares add up to the job");
    assert_eq!(
        sim.stats().tokens_issued,
        1,
        "one token for the fleet, the resumed worker included"
    );
    for (id, title) in wanted {
        assert_eq!(sim.user(&id).unwrap()["title"], json!(title));
        assert_eq!(patches(&sim, &id), 1, "user {id} patched exactly once");
    }
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
