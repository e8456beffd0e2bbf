//! `gcx` end to end: the built binary against a simulator spawned in this test process.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use genesys_sim::Simulator;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_patch_delivers_everything_through_faults() {
    let sim = Simulator::spawn(config(30).faults("5xx=0.05,reset-after=0.03".parse().unwrap()))
        .await
        .unwrap();
    let d = dir("patch_all");
    let (lines, wanted) = user_lines(&sim, 30);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let report = d.join("report.json");
    let out = users_patch(&sim, &input)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let r = read_json(&report);
    assert_eq!(r["status"], "complete");
    assert_eq!(r["counts"]["delivered"], 30);
    assert_eq!(r["counts"]["failed"], 0);
    assert!(
        r["http"]["attempts"].as_u64().unwrap() >= 60,
        "a GET and a PATCH per user"
    );
    assert!(r["http"]["token_fetches"].as_u64().unwrap() >= 1);
    for (id, title) in wanted {
        assert_eq!(sim.user(&id).unwrap()["title"], json!(title));
        assert_eq!(patches(&sim, &id), 1, "user {id} patched once");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("delivered      30"), "{stdout}");
}

/// An input whose name is not UTF-8 (a Latin-1 file name): the job runs and its report is
/// written, the name's odd bytes shown as U+FFFD. The report was refused at the end of the job,
/// its failures lost with it.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_whose_name_is_not_utf8_gets_its_report() {
    use std::os::unix::ffi::OsStrExt;
    let sim = Simulator::spawn(config(2)).await.unwrap();
    let d = dir("not_utf8_input");
    let (lines, _) = user_lines(&sim, 2);
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9.jsonl");
    let input = write(&d.join(name), lines.as_bytes());
    let report = d.join("report.json");
    for json in [false, true] {
        let mut cmd = users_patch(&sim, &input);
        cmd.arg("--report").arg(&report);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert_exit(&out, 0);
        let r = read_json(&report);
        assert_eq!(r["counts"]["records"], 2, "{r}");
        let shown = r["input"].as_str().unwrap();
        assert!(shown.ends_with("caf\u{fffd}.jsonl"), "{shown}");
        if json {
            let printed: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(printed["input"], shown);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_about_one_user_are_applied_in_their_order() {
    // Answers that take from 1 to 40 ms: a later line about a user, sent at once, would often
    // land before an earlier one.
    let sim = Simulator::spawn(config(8).faults("latency=1ms..40ms".parse().unwrap()))
        .await
        .unwrap();
    let d = dir("patch_in_order");
    let ids = sim.user_ids();
    let mut lines = String::new();
    for round in 0..5 {
        for id in &ids {
            let update = json!({"user_id": id, "updates": {"title": format!("Title {round}")}});
            lines.push_str(&format!("{update}\n"));
        }
    }
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let report = d.join("report.json");
    let out = users_patch(&sim, &input)
        .args(["--concurrency", "16"])
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert_eq!(read_json(&report)["counts"]["delivered"], 40);
    for id in &ids {
        assert_eq!(
            sim.user(id).unwrap()["title"],
            json!("Title 4"),
            "user {id}: the last line holds"
        );
        assert_eq!(patches(&sim, id), 5, "user {id}: each line applied once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_report_counts_429s_retries_and_token_refreshes() {
    // A quota of 20 requests a second without rate-limit headers to learn from, and 1-second
    // tokens: a run of 30 users (60 requests) cannot finish without 429s and new tokens.
    let sim = Simulator::spawn(
        config(30)
            .rate_limit(Some((20, Duration::from_secs(1))))
            .ratelimit_headers(false)
            .token_ttl(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    let d = dir("report_http");
    let (lines, _) = user_lines(&sim, 30);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let report = d.join("report.json");
    let out = gcx(&sim)
        .args([
            "users",
            "patch",
            "--concurrency",
            "8",
            "--rate-limit",
            "1000/1",
            "--input",
        ])
        .arg(&input)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let r = read_json(&report);
    let http = &r["http"];
    let stats = sim.stats();
    assert!(stats.rate_limited > 0, "the quota was hit");
    assert_eq!(http["rate_limited_responses"], stats.rate_limited);
    assert_eq!(
        http["retries_by_reason"]["rate_limited"],
        stats.rate_limited
    );
    assert_eq!(http["token_fetches"], stats.tokens_issued);
    assert!(http["token_refreshes"].as_u64().unwrap() >= 1, "{http}");
    assert!(r["durations"]["elapsed_ms"].as_f64().unwrap() > 0.0);
    assert!(r["failures"].as_array().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_quarantined_with_their_line_and_the_run_goes_on() {
    let sim = Simulator::spawn(config(5)).await.unwrap();
    let d = dir("quarantine");
    let ids = sim.user_ids();
    let mut input = Vec::new();
    writeln!(
        input,
        "{}",
        json!({"user_id": ids[0], "updates": {"title": "A"}})
    )
    .unwrap();
    writeln!(input, "{{\"user_id\": \"broken").unwrap();
    writeln!(input).unwrap();
    input.extend_from_slice(b"{\"user_id\": \"\xff\xfe\", \"updates\": {}}\n");
    writeln!(input, "{}", json!({"user_id": ids[1]})).unwrap();
    writeln!(
        input,
        "{}",
        json!({"user_id": "no-such-user", "updates": {"title": "B"}})
    )
    .unwrap();
    writeln!(
        input,
        "{}",
        json!({"id": ids[2], "updates": {"title": "C"}})
    )
    .unwrap();
    let input = write(&d.join("users.jsonl"), &input);
    let (report, quarantine, failed) = (d.join("r.json"), d.join("q.jsonl"), d.join("f.jsonl"));
    let out = users_patch(&sim, &input)
        .arg("--report")
        .arg(&report)
        .arg("--quarantine")
        .arg(&quarantine)
        .arg("--failed")
        .arg(&failed)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let q = jsonl(&quarantine);
    let lines: Vec<u64> = q.iter().map(|e| e["line"].as_u64().unwrap()).collect();
    assert_eq!(lines, vec![2, 4, 5]);
    assert!(
        q[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("malformed JSON")
    );
    assert!(q[0]["raw"].as_str().unwrap().contains("broken"));
    assert!(q[1]["reason"].as_str().unwrap().contains("UTF-8"));
    assert!(q[2]["reason"].as_str().unwrap().contains("updates"));

    let r = read_json(&report);
    assert_eq!(r["counts"]["delivered"], 2);
    assert_eq!(r["counts"]["quarantined"], 3);
    assert_eq!(r["counts"]["failed"], 1);
    assert_eq!(r["failures"][0]["line"], 6);
    assert_eq!(r["failures"][0]["id"], "no-such-user");
    assert!(
        r["failures"][0]["reason"].as_str().unwrap().contains("404"),
        "{}",
        r["failures"][0]
    );
    assert_eq!(r["quarantined"][1]["line"], 4);
    // The failed file holds the failed line exactly as it was written.
    let failed_text = std::fs::read_to_string(&failed).unwrap();
    assert_eq!(failed_text.lines().count(), 1);
    assert!(failed_text.contains("no-such-user"));
    assert_eq!(sim.user(&ids[2]).unwrap()["title"], "C");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_order_mark_from_a_spreadsheet_export_is_not_part_of_the_header() {
    let sim = Simulator::spawn(config(1)).await.unwrap();
    let d = dir("bom");
    let id = &sim.user_ids()[0];
    let csv = format!("\u{feff}user_id,title\n{id},Lead\n");
    let input = write(&d.join("users.csv"), csv.as_bytes());
    let out = users_patch(&sim, &input).output().unwrap();
    assert_exit(&out, 0);
    assert_eq!(sim.user(id).unwrap()["title"], "Lead");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_rows_and_a_failed_csv_keep_the_header() {
    let sim = Simulator::spawn(config(3)).await.unwrap();
    let d = dir("csv");
    let ids = sim.user_ids();
    let csv = format!(
        "user_id,title,department\n{},Lead,Care\nmissing-user,X,Y\n{},,Loyalty\n",
        ids[0], ids[1]
    );
    let input = write(&d.join("users.csv"), csv.as_bytes());
    let failed = d.join("failed.csv");
    let out = users_patch(&sim, &input)
        .arg("--failed")
        .arg(&failed)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(sim.user(&ids[0]).unwrap()["title"], "Lead");
    assert_eq!(sim.user(&ids[1]).unwrap()["department"], "Loyalty");
    assert_eq!(
        std::fs::read_to_string(&failed).unwrap(),
        "user_id,title,department\nmissing-user,X,Y\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_variable_gcx_cannot_use_is_exit_2_naming_it_and_nothing_is_sent() {
    let sim = Simulator::spawn(config(1)).await.unwrap();
    let stderr = patch_through_proxy(
        gcx(&sim).env("ALL_PROXY", "socks5://gcx:s3cret@proxy.example:1080"),
        "proxy-variable",
    );
    assert!(stderr.contains("ALL_PROXY"), "{stderr}");
    assert!(stderr.contains("socks5://"), "{stderr}");
    assert_eq!(sim.stats().total_responses, 0, "nothing sent: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_refuses_the_tunnel_is_exit_2_after_one_try() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let sim = Simulator::spawn(config(1)).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut head = [0u8; 1024];
            let _ = stream.read(&mut head).await;
            let _ = stream
                .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
                .await;
        }
    });
    // A name, not a loopback address: reached through the proxy. Asked once, whether the
    // start reads the org's limits (refused there) or checks the credentials after building
    // the client (--rate-limit).
    let api = format!("http://api.behind-proxy.test:{}", sim.addr().port());
    for (run, flags) in [(0, &[][..]), (1, &["--rate-limit", "100/1"][..])] {
        let stderr = patch_through_proxy(
            gcx_at(&api)
                .env("http_proxy", format!("http://gcx:s3cret@{proxy}"))
                .args(flags),
            &format!("proxy-refuses-{run}"),
        );
        assert!(stderr.contains("407"), "{stderr}");
        assert_eq!(
            asked.swap(0, std::sync::atomic::Ordering::SeqCst),
            1,
            "{flags:?}: {stderr}"
        );
    }
}

/// Runs `gcx users patch` on one line with `gcx` (a proxy set): it must exit 2, naming the
/// proxy and not its password (`s3cret`). Its stderr.
fn patch_through_proxy(gcx: &mut std::process::Command, test: &str) -> String {
    let d = dir(test);
    let input = write(
        &d.join("u.jsonl"),
        b"{\"user_id\":\"x\",\"updates\":{\"title\":\"t\"}}\n\
          {\"user_id\":\"y\",\"updates\":{\"title\":\"t\"}}\n\
          {\"user_id\":\"z\",\"updates\":{\"title\":\"t\"}}\n",
    );
    let out = gcx
        .args(["users", "patch", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_exit(&out, 2);
    assert!(stderr.to_lowercase().contains("proxy"), "{stderr}");
    assert!(!stderr.contains("s3cret"), "{stderr}");
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_errors_exit_2_before_anything_is_sent() {
    let sim = Simulator::spawn(config(1)).await.unwrap();
    let d = dir("config");
    let input = write(
        &d.join("u.jsonl"),
        b"{\"user_id\":\"x\",\"updates\":{\"title\":\"t\"}}\n",
    );

    let out = gcx(&sim)
        .env_remove("GENESYS_CLIENT_SECRET")
        .args(["users", "patch", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("GENESYS_CLIENT_SECRET"));

    let out = gcx(&sim)
        .args(["users", "patch", "--input"])
        .arg(d.join("nope.jsonl"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot open input"));

    let csv = write(&d.join("u.csv"), b"id,title\nx,y\n");
    let out = gcx(&sim)
        .args(["users", "patch", "--input"])
        .arg(&csv)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user_id column"));

    let schema = write(&d.join("s.json"), br#"{"type": "nonsense"}"#);
    let out = gcx(&sim)
        .args(["ingest", "--input"])
        .arg(&input)
        .arg("--schema")
        .arg(&schema)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid JSON Schema"));

    let out = users_patch(&sim, &input)
        .arg("--failed")
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    let out = gcx(&sim).args(["users", "patch"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "clap usage error");

    assert_eq!(sim.stats().total_responses, 0, "nothing was sent");
}

/// Two output flags that name one file are refused before anything is sent: each would
/// truncate and overwrite what the other wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_outputs_in_one_file_are_refused() {
    let sim = Simulator::spawn(config(2)).await.unwrap();
    let d = dir("same_outputs");
    let (lines, _) = user_lines(&sim, 2);
    let input = write(&d.join("u.jsonl"), lines.as_bytes());
    for (a, b) in [("--failed", "--unknown"), ("--report", "--journal")] {
        let out = users_patch(&sim, &input)
            .arg(a)
            .arg(d.join("out.jsonl"))
            .arg(b)
            // The same file, spelled another way.
            .arg(d.join(".").join("out.jsonl"))
            .output()
            .unwrap();
        assert_exit(&out, 2);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(a) && stderr.contains(b), "{stderr}");
    }
    assert!(sim.ledger().is_empty(), "nothing sent");
    // Two outputs thrown away are not one file written twice.
    let out = users_patch(&sim, &input)
        .args(["--failed", "/dev/null", "--unknown", "/dev/null"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_credentials_exit_2_before_any_record_is_sent() {
    // With the org's pacing and with a pace of the user's own: the same single refusal.
    for pacing in [&[][..], &["--rate-limit", "40/1"][..]] {
        let sim = Simulator::spawn(config(2)).await.unwrap();
        let d = dir("refused");
        let (lines, _) = user_lines(&sim, 2);
        let input = write(&d.join("refused-users.jsonl"), lines.as_bytes());
        let report = d.join("report.json");
        let out = gcx(&sim)
            .env("GENESYS_CLIENT_SECRET", "not-the-secret")
            .args(["users", "patch", "--input"])
            .arg(&input)
            .arg("--report")
            .arg(&report)
            .args(pacing)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{pacing:?}: {stderr}");
        assert!(stderr.contains("invalid_client"), "says why: {stderr}");
        assert!(
            stderr.contains("GENESYSCLOUD_OAUTHCLIENT_ID"),
            "says what to check: {stderr}"
        );
        assert!(!stderr.contains("not-the-secret"), "never shows the secret");
        let journals = std::fs::read_dir(state_dir())
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().to_string_lossy().contains("-refused-users-"))
                    .count()
            })
            .unwrap_or(0);
        assert_eq!(journals, 0, "no journal left for a job that never started");
        let stats = sim.stats();
        assert_eq!(stats.tokens_issued, 0);
        let token_requests: u64 = stats
            .requests
            .get("POST /oauth/token")
            .map_or(0, |m| m.values().sum());
        assert!(
            token_requests <= 3,
            "{pacing:?}: {token_requests} token requests"
        );
        assert_eq!(
            stats.total_responses, token_requests,
            "only the token request reached the simulator: {stats:?}"
        );
        assert!(sim.ledger().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_input_says_so() {
    let sim = Simulator::spawn(config(1)).await.unwrap();
    let d = dir("empty");
    let input = write(&d.join("u.jsonl"), b"\n\n");
    let out = users_patch(&sim, &input).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no records"));
}

/// A stream (`--input /dev/stdin` fed by a pipe) is refused before anything is sent: gcx reads
/// its input more than once, and each reading would get a part of the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piped_input_is_refused_before_anything_is_sent() {
    let sim = Simulator::spawn(config(400)).await.unwrap();
    // More than one read buffer's worth of records.
    let (lines, _) = user_lines(&sim, 400);
    let lines = lines.repeat(4);
    assert!(lines.len() > 64 * 1024);
    let mut child = gcx(&sim)
        .args(["users", "patch", "--input", "/dev/stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // gcx may exit before it has read it all: a broken pipe is expected.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(lines.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not a regular file") && stderr.contains("save"),
        "{stderr}"
    );
    assert!(sim.ledger().is_empty(), "nothing sent");
}

/// One action document, read once and journaled nowhere, may come from a pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_action_document_may_come_from_a_pipe() {
    let sim = Simulator::spawn(config(1)).await.unwrap();
    let mut child = gcx(&sim)
        .args(["actions", "execute", "echo", "--input", "/dev/stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"{"orderId": "7"}"#)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_exit(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"orderId\":\"7\""));
    assert_eq!(sim.ledger_len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_validates_quarantines_and_sends_chunks() {
    let sim = Simulator::spawn(config(1)).await.unwrap();
    let d = dir("ingest");
    let schema = ingest_schema(&d);
    let mut input = String::new();
    for i in 0..23 {
        let mut rec = json!({
            "external_id": format!("TXN-{i}"),
            "timestamp": "2023-10-15T14:30:00Z",
            "channel": "voice",
            "duration_seconds": 60 + i,
            "customer_segment": "enterprise"
        });
        if i == 7 {
            rec["duration_seconds"] = json!("long");
        }
        input.push_str(&rec.to_string());
        input.push('\n');
    }
    let input = write(&d.join("records.jsonl"), input.as_bytes());
    let (report, quarantine) = (d.join("r.json"), d.join("q.jsonl"));
    let out = ingest(&sim, &input, &schema, &report, &quarantine)
        .args(["--chunk-size", "5"])
        .output()
        .unwrap();
    assert_exit(&out, 1);
    let summary: Value =
        serde_json::from_slice(&out.stdout).expect("--json prints one JSON document");
    assert_eq!(summary["counts"]["delivered"], 22);
    assert_eq!(summary["counts"]["quarantined"], 1);
    assert_eq!(
        summary["counts"]["requests"], 5,
        "22 records in chunks of 5"
    );
    let q = jsonl(&quarantine);
    assert_eq!(q[0]["line"], 8);
    assert!(
        q[0]["reason"]
            .as_str()
            .unwrap()
            .contains("/duration_seconds")
    );
    assert_eq!(sim.ledger_len(), 22, "every valid record ingested once");
    assert_eq!(read_json(&report)["counts"]["delivered"], 22);
}

/// Records of 2 KB: 300 of them make a chunk of 600 KB, past the API's 512,000 bytes a request.
/// The chunk goes as two requests, and a record too large to be sent even alone is quarantined
/// with the reason. A second run of the same command finds everything done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_past_the_apis_size_limit_goes_as_several_requests() {
    let sim = Simulator::spawn(config(1)).await.unwrap();
    let d = dir("ingest_bytes");
    let schema = ingest_schema(&d);
    let mut input = String::new();
    for i in 0..301 {
        let segment = if i == 150 { 600_000 } else { 2_000 };
        let rec = json!({
            "external_id": format!("TXN-{i}"),
            "timestamp": "2023-10-15T14:30:00Z",
            "channel": "voice",
            "duration_seconds": 60,
            "customer_segment": "x".repeat(segment)
        });
        input.push_str(&format!("{rec}\n"));
    }
    let input = write(&d.join("records.jsonl"), input.as_bytes());
    let (report, quarantine) = (d.join("r.json"), d.join("q.jsonl"));
    let run = || {
        ingest(&sim, &input, &schema, &report, &quarantine)
            .output()
            .unwrap()
    };
    let out = run();
    assert_exit(&out, 1);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let counts = &summary["counts"];
    assert_eq!(counts["delivered"], 300, "{counts}");
    assert_eq!(counts["failed"], 0, "{counts}");
    assert_eq!(counts["requests"], 2, "one chunk, two requests: {counts}");
    let q = jsonl(&quarantine);
    assert_eq!(q.len(), 1);
    assert_eq!(q[0]["line"], 151);
    let reason = q[0]["reason"].as_str().unwrap();
    assert!(reason.contains("at most 512000"), "{reason}");
    assert_eq!(sim.ledger_len(), 300, "every other record ingested once");

    let out = run();
    assert_exit(&out, 1);
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["counts"]["requests"], 0, "{summary}");
    assert_eq!(summary["counts"]["delivered"], 300, "{summary}");
    assert_eq!(sim.ledger_len(), 300);
}

/// A user's line or an action's input too large for one request (the API takes at most
/// 512,000 bytes) is quarantined with its size, not sent to be refused with a 413 and listed
/// failed, which a re-run of the failed file would send again to the same end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_line_or_an_action_input_too_large_to_send_is_quarantined() {
    let sim = Simulator::spawn(config(2)).await.unwrap();
    let d = dir("too_large_single");
    let ids = sim.user_ids();
    let lines = format!(
        "{}\n{}\n",
        json!({"user_id": ids[0], "updates": {"title": "x".repeat(600_000)}}),
        json!({"user_id": ids[1], "updates": {"title": "Lead"}}),
    );
    let batch = format!(
        "{}\n{}\n",
        json!({"n": 1}),
        json!({"note": "x".repeat(600_000)})
    );
    let users_input = write(&d.join("users.jsonl"), lines.as_bytes());
    let actions_input = write(&d.join("actions.jsonl"), batch.as_bytes());
    let users = users_patch(&sim, &users_input);
    let mut actions = gcx(&sim);
    actions
        .args(["actions", "execute", "echo", "--batch"])
        .arg(&actions_input);
    for (what, mut cmd) in [("users patch", users), ("actions execute", actions)] {
        let q = d.join(format!("{}.q.jsonl", what.replace(' ', "_")));
        let out = cmd
            .arg("--json")
            .arg("--quarantine")
            .arg(&q)
            .output()
            .unwrap();
        assert_exit(&out, 1);
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
        let counts = &summary["counts"];
        assert_eq!(counts["delivered"], 1, "{what}: {counts}");
        assert_eq!(counts["failed"], 0, "{what}: {counts}");
        assert_eq!(counts["quarantined"], 1, "{what}: {counts}");
        let q = jsonl(&q);
        assert_eq!(
            q[0]["line"],
            if what == "users patch" { 1 } else { 2 },
            "{what}"
        );
        let reason = q[0]["reason"].as_str().unwrap();
        assert!(reason.contains("at most 512000"), "{what}: {reason}");
    }
    assert_eq!(patches(&sim, &ids[0]), 0, "the large line was sent");
    assert_eq!(patches(&sim, &ids[1]), 1);
}

/// Two runs without a journal send keys of their own: the endpoint, which drops a repeat of a
/// key it has seen, ingests the second file too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_without_a_journal_never_share_a_key() {
    let sim = Simulator::spawn(config(1)).await.unwrap();
    let d = dir("no_journal_keys");
    for (file, first) in [("a.jsonl", 0), ("b.jsonl", 100)] {
        let (input, schema) = ingest_input(&d, file, first..first + 6);
        let out = gcx(&sim)
            .args(["ingest", "--no-journal", "--chunk-size", "3", "--input"])
            .arg(&input)
            .arg("--schema")
            .arg(&schema)
            .output()
            .unwrap();
        assert_exit(&out, 0);
    }
    assert_eq!(
        sim.ledger_len(),
        12,
        "both files ingested, every record once"
    );
}

/// Input that breaks off mid-chunk (here a CSV quote never closed, past the 16 MiB a row may
/// hold) sends its whole chunks; the short one is listed as not started, never sent short.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_broken_off_mid_chunk_lists_the_short_chunk_as_not_started() {
    let sim = Simulator::spawn(config(1)).await.unwrap();
    let d = dir("broken_chunk");
    let schema = ingest_schema(&d);
    let mut csv = String::from("external_id,timestamp,channel,duration_seconds,customer_segment\n");
    for i in 0..7 {
        csv.push_str(&format!(
            "TXN-{i},2023-10-15T14:30:00Z,voice,60,enterprise\n"
        ));
    }
    let mut bytes = csv.into_bytes();
    bytes.extend_from_slice(b"TXN-7,\"never closed");
    bytes.resize(bytes.len() + 17 * 1024 * 1024, b'x');
    let input = write(&d.join("records.csv"), &bytes);
    let (report, failed) = (d.join("r.json"), d.join("failed.csv"));
    let out = gcx(&sim)
        .args(["ingest", "--chunk-size", "5", "--input"])
        .arg(&input)
        .arg("--schema")
        .arg(&schema)
        .arg("--report")
        .arg(&report)
        .arg("--failed")
        .arg(&failed)
        .output()
        .unwrap();
    assert_exit(&out, 1);
    let c = read_json(&report)["counts"].clone();
    assert_eq!(c["delivered"], 5, "{c}");
    assert_eq!(c["not_started"], 2, "{c}");
    assert_eq!(sim.ledger_len(), 5, "the whole chunk only");
    let failed = std::fs::read_to_string(&failed).unwrap();
    assert!(
        failed.contains("TXN-5") && failed.contains("TXN-6"),
        "{failed}"
    );
}

/// A chunk whose every attempt was reset after the endpoint applied it ends with the retry
/// layer giving up: it may have been applied, so it is listed unknown (a resume sends it with
/// the same key), never failed (a re-run of the failed file would send it with a new key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_that_may_have_been_applied_before_the_retries_gave_up_is_unknown() {
    let sim = Simulator::spawn(config(1).faults("reset-after=1".parse().unwrap()))
        .await
        .unwrap();
    let d = dir("gave_up_unknown");
    let (input, schema) = ingest_input(&d, "records.jsonl", 0..4);
    let (report, failed) = (d.join("r.json"), d.join("failed.jsonl"));
    let out = gcx(&sim)
        .args(["ingest", "--chunk-size", "2", "--input"])
        .arg(&input)
        .arg("--schema")
        .arg(&schema)
        .arg("--report")
        .arg(&report)
        .arg("--failed")
        .arg(&failed)
        .output()
        .unwrap();
    assert_exit(&out, 1);
    let c = read_json(&report)["counts"].clone();
    assert_eq!(c["unknown"], 4, "{c}");
    assert_eq!(c["failed"], 0, "{c}");
    assert!(
        jsonl(&failed).is_empty(),
        "nothing listed as safe to send again"
    );
    assert_eq!(
        sim.ledger_len(),
        4,
        "each chunk applied once, under its key"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_execute_once_and_in_batches() {
    let sim = Simulator::spawn(config(1)).await.unwrap();
    let d = dir("actions");
    let one = write(&d.join("in.json"), br#"{"orderId": "42"}"#);
    let out = gcx(&sim)
        .args([
            "actions",
            "execute",
            "echo",
            "--idempotency-key",
            "order-42",
            "--input",
        ])
        .arg(&one)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"orderId\":\"42\""));
    assert_eq!(sim.ledger_len(), 1);
    assert_eq!(sim.ledger()[0].idempotency_key.as_deref(), Some("order-42"));

    let batch = write(&d.join("b.jsonl"), b"{\"n\":1}\n{\"n\":2}\n[3]\n");
    let report = d.join("r.json");
    let out = gcx(&sim)
        .args(["actions", "execute", "no-such-action", "--batch"])
        .arg(&batch)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let r = read_json(&report);
    assert_eq!(r["counts"]["failed"], 2);
    assert_eq!(r["counts"]["quarantined"], 1);
    assert!(r["failures"][0]["reason"].as_str().unwrap().contains("404"));
}

/// An action that ran, answered by a gateway's 504 or by a body too large to read, is listed
/// unknown, never "failed, safe to send again": a re-run of the command does not run it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_that_ran_behind_a_504_or_an_unreadable_answer_are_unknown_and_never_run_again() {
    let faults = "504-after=0.5,endless-body=0.5".parse().unwrap();
    let sim = Simulator::spawn(config(1).faults(faults)).await.unwrap();
    let d = dir("actions_applied");
    let batch = write(
        &d.join("b.jsonl"),
        b"{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n{\"n\":4}\n{\"n\":5}\n{\"n\":6}\n",
    );
    let (report, unknown, failed) = (d.join("r.json"), d.join("u.jsonl"), d.join("f.jsonl"));
    let run = || {
        gcx(&sim)
            .args(["actions", "execute", "echo", "--batch"])
            .arg(&batch)
            .arg("--report")
            .arg(&report)
            .arg("--unknown")
            .arg(&unknown)
            .arg("--failed")
            .arg(&failed)
            .output()
            .unwrap()
    };
    let out = run();
    assert_exit(&out, 1);
    let stats = sim.stats();
    assert!(
        stats.fault_count("504-after") > 0 && stats.fault_count("endless-body") > 0,
        "both faults drawn"
    );
    assert_eq!(sim.ledger_count_for("echo"), 6, "every action ran once");
    let r = read_json(&report);
    assert_eq!(r["counts"]["unknown"], 6, "{r}");
    assert_eq!(r["counts"]["failed"], 0, "{r}");
    assert_eq!(jsonl(&unknown).len(), 6);
    assert!(
        jsonl(&failed).is_empty(),
        "nothing listed as safe to send again"
    );

    // The same command again: the job resumes, and runs none of them a second time.
    let out = run();
    assert_exit(&out, 1);
    assert_eq!(sim.ledger_count_for("echo"), 6, "no action ran twice");
    assert_eq!(read_json(&report)["counts"]["unknown"], 6);
}

/// An endpoint of the caller's that does not deduplicate by key (the API's real bulk endpoints
/// do not): a chunk it applied behind a gateway's 504 is listed unknown, never sent again by the
/// retries nor by a re-run of the command; `--retry-unknown` sends it again, once asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_to_an_endpoint_that_ignores_keys_never_sends_an_unknown_chunk_again() {
    const PATH: &str = "/api/v2/bulk/records";
    let sim = Simulator::spawn(
        config(1)
            .ingestion_path(PATH)
            .ingestion_deduplicates(false)
            .faults("504-after=1".parse().unwrap()),
    )
    .await
    .unwrap();
    let d = dir("ingest_no_dedup");
    let (input, schema) = ingest_input(&d, "records.jsonl", 0..10);
    let (report, quarantine, unknown) = (d.join("r.json"), d.join("q.jsonl"), d.join("u.jsonl"));
    let run = |extra: &[&str]| {
        ingest(&sim, &input, &schema, &report, &quarantine)
            .args(["--chunk-size", "5", "--path", PATH, "--unknown"])
            .arg(&unknown)
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert_exit(&out, 1);
    let counts = &read_json(&report)["counts"];
    assert_eq!(counts["unknown"], 10, "{counts}");
    assert_eq!(counts["requests"], 2, "{counts}");
    assert_eq!(
        sim.ledger_len(),
        10,
        "each chunk applied once, never retried"
    );
    assert_eq!(jsonl(&unknown).len(), 10);

    // The same command again: the job resumes, and sends neither chunk.
    let out = run(&[]);
    assert_exit(&out, 1);
    assert_eq!(read_json(&report)["counts"]["unknown"], 10);
    assert_eq!(sim.ledger_len(), 10, "no chunk sent again");

    // Asked to: both go again, once each.
    let out = run(&["--retry-unknown"]);
    assert_exit(&out, 1);
    assert_eq!(sim.ledger_len(), 20, "both chunks sent again, once");
}

/// The same endpoint, said to deduplicate (`--endpoint-deduplicates`): a chunk lost behind a
/// reset is sent again with its key by the stack's retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_to_an_endpoint_said_to_deduplicate_retries_a_lost_chunk_with_its_key() {
    const PATH: &str = "/api/v2/my/ingestion";
    let sim = Simulator::spawn(
        config(1)
            .ingestion_path(PATH)
            .faults("reset-after=0.3".parse().unwrap()),
    )
    .await
    .unwrap();
    let d = dir("ingest_dedup");
    let (input, schema) = ingest_input(&d, "records.jsonl", 0..40);
    let (report, quarantine) = (d.join("r.json"), d.join("q.jsonl"));
    let out = ingest(&sim, &input, &schema, &report, &quarantine)
        // One at a time: the requests, and so the simulator's seeded draws, come in one order.
        .args(["--chunk-size", "5", "--concurrency", "1", "--path", PATH])
        .arg("--endpoint-deduplicates")
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert!(
        sim.stats().fault_count("reset-after") > 0,
        "a chunk was lost"
    );
    assert_eq!(read_json(&report)["counts"]["delivered"], 40);
    assert_eq!(sim.ledger_len(), 40, "every record once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_leaves_a_complete_report_and_a_rerun_delivers_the_rest() {
    // Slow responses, few in flight: the run is still going when it is interrupted.
    let sim = Simulator::spawn(config(40).faults("latency=100ms..100ms".parse().unwrap()))
        .await
        .unwrap();
    let d = dir("ctrl_c");
    let (lines, wanted) = user_lines(&sim, 40);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let (report, failed) = (d.join("r.json"), d.join("failed.jsonl"));
    let mut child = users_patch(&sim, &input)
        .args(["--concurrency", "2"])
        .arg("--report")
        .arg(&report)
        .arg("--failed")
        .arg(&failed)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Interrupt once some updates have landed.
    let start = Instant::now();
    while sim.ledger_len() < 3 {
        assert!(start.elapsed() < Duration::from_secs(30), "no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    interrupt(child.id());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));

    let r = read_json(&report);
    assert_eq!(r["interrupted"], true);
    assert_eq!(r["status"], "interrupted");
    let c = &r["counts"];
    let (delivered, failed_n, not_started) = (
        c["delivered"].as_u64().unwrap(),
        c["failed"].as_u64().unwrap(),
        c["not_started"].as_u64().unwrap(),
    );
    assert_eq!(
        delivered + failed_n + not_started,
        40,
        "every record accounted for: {c}"
    );
    assert!(not_started > 0, "{c}");
    let rest = std::fs::read_to_string(&failed).unwrap();
    assert_eq!(rest.lines().count() as u64, failed_n + not_started);

    // The same command on the failed file delivers the rest.
    let report2 = d.join("r2.json");
    let out = gcx(&sim)
        .args(["users", "patch", "--concurrency", "8", "--input"])
        .arg(&failed)
        .arg("--report")
        .arg(&report2)
        .arg("--failed")
        .arg(d.join("failed-2.jsonl"))
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert_eq!(
        read_json(&report2)["counts"]["delivered"],
        failed_n + not_started
    );
    for (id, title) in wanted {
        assert_eq!(sim.user(&id).unwrap()["title"], json!(title));
        assert_eq!(patches(&sim, &id), 1, "user {id} patched exactly once");
    }
}

#[test]
fn demo_runs_and_prints_the_verdict() {
    let out = Command::new(env!("CARGO_BIN_EXE_gcx"))
        .env_remove("GENESYS_CLIENT_ID")
        .env_remove("GENESYS_CLIENT_SECRET")
        .args(["demo", "--users", "300", "--json"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("verdict: every update applied, none twice (300 users)"),
        "{stderr}"
    );
    // The faults were really there and the stack really dealt with them.
    let r: serde_json::Value = serde_json::from_str(&stdout).expect("--json prints the report");
    assert_eq!(r["verdict"]["ok"], true, "{r}");
    assert_eq!(r["verdict"]["applied"], 300);
    assert_eq!(r["verdict"]["applied_twice"], 0);
    assert_eq!(r["counts"]["delivered"], 300);
    let retries = &r["http"]["retries_by_reason"];
    assert!(retries["server_error"].as_u64().unwrap() > 0, "{retries}");
    assert!(
        r["http"]["attempts"].as_u64().unwrap() > 600,
        "more attempts than the 600 requests: {r}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn genesys_environment_names_a_ready_token_and_plain_logs() {
    let sim = Simulator::spawn(config(3)).await.unwrap();
    let d = dir("env_names");
    let (lines, _) = user_lines(&sim, 3);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    // Genesys's own variable names, and logs without colour codes when stderr is a file.
    let out = gcx(&sim)
        .env_remove("GENESYS_CLIENT_ID")
        .env_remove("GENESYS_CLIENT_SECRET")
        .env("GENESYSCLOUD_OAUTHCLIENT_ID", "demo-client")
        .env("GENESYSCLOUD_OAUTHCLIENT_SECRET", "demo-secret")
        .args(["-v", "users", "patch", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DEBUG"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "no ANSI codes in a file: {stderr}"
    );

    // A ready token that the API refuses stops the job at once, with exit 2.
    let before = sim.ledger_len();
    let out = gcx(&sim)
        .env_remove("GENESYS_CLIENT_ID")
        .env_remove("GENESYS_CLIENT_SECRET")
        .env("GENESYSCLOUD_ACCESS_TOKEN", "not-a-token")
        .args(["users", "patch", "--fresh", "--concurrency", "1", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert_exit(&out, 2);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("credentials refused"), "{stdout}");
    assert!(
        !stdout.contains("not-a-token")
            && !String::from_utf8_lossy(&out.stderr).contains("not-a-token")
    );
    assert_eq!(sim.ledger_len(), before, "nothing applied");
}

#[test]
fn completions_are_printed_for_a_shell() {
    let out = Command::new(env!("CARGO_BIN_EXE_gcx"))
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let script = String::from_utf8_lossy(&out.stdout);
    assert!(
        script.contains("gcx") && script.contains("--journal"),
        "{script}"
    );
}

/// `gcx completions bash | head -1`: the reader goes away after a line; gcx ends quietly, as
/// any command whose output is cut short should (clap_complete panicked on the closed pipe).
#[test]
fn completions_cut_short_by_their_reader_end_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gcx"))
        .args(["completions", "bash"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    // The script is larger than the pipe holds: gcx is still writing when the pipe closes.
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    assert_exit(&out, 0);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summary_says_which_pace_and_where_it_came_from() {
    let sim = Simulator::spawn(config(2).rate_limit(Some((240, Duration::from_secs(60)))))
        .await
        .unwrap();
    let d = dir("pace");
    let (lines, _) = user_lines(&sim, 2);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let out = gcx(&sim)
        .args(["users", "patch", "--json", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        r["pace"]["requests"], 240,
        "the org's limit, from the real listing shape"
    );
    assert_eq!(r["pace"]["window_s"], 60.0);
    assert!(
        r["pace"]["source"]
            .as_str()
            .unwrap()
            .contains("org's own limit")
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("pace           240 per 60 s"));
    let out = gcx(&sim)
        .args([
            "users",
            "patch",
            "--json",
            "--fresh",
            "--rate-limit",
            "50/1",
            "--input",
        ])
        .arg(&input)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["pace"]["source"], "--rate-limit");
}

/// A quota of 40 per second that only half the answers speak of, and a limits endpoint that
/// gives it per minute (2400 per 60 s, as the real key names it): the job learns the window from
/// the headers, finishes, and draws few 429s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_under_a_one_second_quota_it_was_not_told_about_finishes_with_few_429s() {
    let sim = Simulator::spawn(
        config(100)
            .rate_limit(Some((40, Duration::from_secs(1))))
            .ratelimit_headers_share(0.5),
    )
    .await
    .unwrap();
    let d = dir("one_second_quota");
    let (lines, wanted) = user_lines(&sim, 100);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let out = gcx(&sim)
        .args(["users", "patch", "--json", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let stats = sim.stats();
    assert!(
        stats.rate_limited * 20 < stats.total_responses,
        "429s under 5 %: {} of {}",
        stats.rate_limited,
        stats.total_responses
    );
    for (id, title) in wanted {
        assert_eq!(sim.user(&id).unwrap()["title"], json!(title));
    }
}

#[test]
fn policy_check_previews_a_valid_file_and_lists_every_problem_of_a_bad_one() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/configuration.example.toml"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_gcx"))
        .args(["policy", "check", example, "--json", "--clients", "20"])
        .args(["--call-rate", "5", "--destination-rate", "50"])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let preview: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(preview["max_attempts"], 4);
    assert_eq!(preview["delays"].as_array().unwrap().len(), 3);
    assert!(preview["delays"][2]["max_ms"].as_f64().unwrap() <= 2000.0);
    assert!(preview["outage_load_vs_destination"].as_f64().unwrap() > 1.0);
    assert_eq!(
        preview["retried_statuses"],
        serde_json::json!([429, 502, 503, 504])
    );
    assert_eq!(
        preview["route_rules"],
        serde_json::json!(["POST /api/v2/integrations/actions/{actionId}/execute: unsafe"])
    );
    // The same as text: what is retried, and each route's rule.
    let out = Command::new(env!("CARGO_BIN_EXE_gcx"))
        .args(["policy", "check", example])
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("retried: 429, 502, 503, 504;"), "{text}");
    assert!(
        text.contains("route   POST /api/v2/integrations/actions/{actionId}/execute: unsafe"),
        "{text}"
    );

    let d = dir("policy_check_bad");
    let bad = write(
        &d.join("bad.toml"),
        b"[retry]\nmax_attempts = 0\nmax_delay = \"10ms\"\n[concurrency]\nlimit = 0\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_gcx"))
        .args(["policy", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for problem in [
        "retry.max_attempts: 0 is outside 1 to 10",
        "retry.max_delay: 10ms is below retry.base_delay (500ms)",
        "concurrency.limit: 0 is outside 1 to 1024",
    ] {
        assert!(stderr.contains(problem), "{problem} missing from: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_sets_the_jobs_retry_policy() {
    // One attempt per call, against a simulator that fails 30 % of the answers: no retries, so
    // some users are not patched and the job says so (exit 1); a bad file is exit 2 first.
    let sim = Simulator::spawn(config(30).faults("5xx=0.3".parse().unwrap()))
        .await
        .unwrap();
    let d = dir("config_file");
    let (lines, _) = user_lines(&sim, 30);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let cfg = write(
        &d.join("gcx.toml"),
        b"[retry]\nmax_attempts = 1\nversion = \"no-retries\"\n",
    );
    let report = d.join("report.json");
    let out = gcx(&sim)
        .args(["users", "patch", "--quiet", "--config"])
        .arg(&cfg)
        .arg("--input")
        .arg(&input)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert_exit(&out, 1);
    let r = read_json(&report);
    assert_eq!(r["http"]["retries"], 0, "{}", r["http"]);
    assert!(r["counts"]["failed"].as_u64().unwrap() > 0);
    assert_eq!(
        r["routes"][0]["calls"].as_object().map(|m| m.is_empty()),
        Some(false)
    );

    let bad = write(&d.join("bad.toml"), b"[retry]\nmax_atempts = 1\n");
    let out = gcx(&sim)
        .args(["users", "patch", "--config"])
        .arg(&bad)
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert_exit(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_atempts"));
}

#[test]
fn config_show_says_where_every_setting_came_from_and_never_shows_the_secret() {
    let d = dir("config_show");
    let file = write(
        &d.join("stack.toml"),
        b"[retry]\nmax_attempts = 3\nbase_delay = \"200ms\"\n[concurrency]\nlimit = 4\n",
    );
    let out = Command::new(env!("CARGO_BIN_EXE_gcx"))
        .args([
            "config",
            "show",
            "--json",
            "--concurrency",
            "12",
            "--config",
        ])
        .arg(&file)
        .env("GCX_RETRY_BASE_DELAY", "300ms")
        .env("GCX_CONCURRENCY_LIMIT", "6")
        .env("GENESYS_CLIENT_ID", "my-client")
        .env("GENESYS_CLIENT_SECRET", "very-secret-value")
        .env_remove("GCX_CONFIG")
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("very-secret-value"), "{stdout}");
    let shown: Value = serde_json::from_str(&stdout).unwrap();
    let setting = |key: &str| setting(&shown, key);
    assert_eq!(setting("retry.max_attempts")["value"], 3);
    assert_eq!(setting("retry.max_attempts")["from"]["kind"], "file");
    assert_eq!(setting("retry.base_delay")["value"], "300ms");
    assert_eq!(
        setting("retry.base_delay")["from"]["name"],
        "GCX_RETRY_BASE_DELAY"
    );
    assert_eq!(setting("concurrency.limit")["value"], 12);
    assert_eq!(
        setting("concurrency.limit")["from"]["name"],
        "--concurrency"
    );
    assert_eq!(setting("retry.factor")["from"]["kind"], "default");
    assert!(shown["credentials"].as_str().unwrap().contains("my-client"));

    // A bad value in the environment: exit 2, naming the variable and the bound.
    let out = Command::new(env!("CARGO_BIN_EXE_gcx"))
        .args(["config", "show"])
        .env("GCX_RETRY_MAX_ATTEMPTS", "60")
        .env_remove("GCX_CONFIG")
        .output()
        .unwrap();
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("GCX_RETRY_MAX_ATTEMPTS") && stderr.contains("1 to 10"),
        "{stderr}"
    );
}

/// A profile of the configuration file names where to connect and the variables holding the
/// credentials: a job runs on it alone, and `config show` says which layer every value came
/// from (flag > environment > profile > file > default), never the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_connects_a_job_and_config_show_names_every_layer() {
    let sim = Simulator::spawn(config(3)).await.unwrap();
    let d = dir("profiles");
    let file = write(
        &d.join("config.toml"),
        format!(
            "[concurrency]\nlimit = 4\n[retry]\nmax_attempts = 3\nbase_delay = \"200ms\"\n\
             [profiles.sim]\nbase_url = \"{}\"\nclient_id = \"demo-client\"\n\
             client_secret_env = \"SIM_SECRET\"\n\
             [profiles.sim.concurrency]\nlimit = 8\n[profiles.sim.retry]\nmax_attempts = 5\n",
            sim.base_url()
        )
        .as_bytes(),
    );
    let gcx_alone = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_gcx"));
        cmd.env("GCX_STATE_DIR", state_dir())
            .env("XDG_CONFIG_HOME", d.join("home"))
            .env("SIM_SECRET", "demo-secret")
            .env("GCX_CONFIG", &file)
            .env("GCX_PROFILE", "sim")
            .env_remove("GENESYS_CLIENT_ID")
            .env_remove("GENESYS_CLIENT_SECRET")
            .env_remove("GENESYSCLOUD_OAUTHCLIENT_ID")
            .env_remove("GENESYSCLOUD_OAUTHCLIENT_SECRET")
            .env_remove("GENESYSCLOUD_REGION")
            .env_remove("GENESYSCLOUD_ACCESS_TOKEN")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    };
    let (lines, wanted) = user_lines(&sim, 3);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let out = gcx_alone()
        .args(["users", "patch", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    for (id, title) in &wanted {
        assert_eq!(sim.user(id).unwrap()["title"], json!(title));
    }

    let out = gcx_alone()
        .args(["config", "show", "--json", "--concurrency", "16"])
        .env("GCX_RETRY_BASE_DELAY", "300ms")
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("demo-secret"), "{stdout}");
    let shown: Value = serde_json::from_str(&stdout).unwrap();
    let setting = |key: &str| setting(&shown, key);
    assert_eq!(setting("concurrency.limit")["value"], 16);
    assert_eq!(
        setting("concurrency.limit")["from"]["name"],
        "--concurrency"
    );
    assert_eq!(setting("retry.base_delay")["value"], "300ms");
    assert_eq!(setting("retry.base_delay")["from"]["kind"], "env");
    assert_eq!(setting("retry.max_attempts")["value"], 5);
    assert_eq!(
        setting("retry.max_attempts")["from"],
        json!({"kind": "profile", "name": "sim"})
    );
    assert_eq!(setting("retry.factor")["from"]["kind"], "default");
    assert_eq!(shown["profile"], "sim");
    assert_eq!(shown["connection"][0]["key"], "base_url");
    assert_eq!(shown["connection"][0]["from"], "profile sim");
    let credentials = shown["credentials"].as_str().unwrap();
    assert!(
        credentials.contains("demo-client") && credentials.contains("SIM_SECRET"),
        "{credentials}"
    );

    // The profile's secret variable unset: exit 2, naming it, before anything is sent.
    let responses = sim.stats().total_responses;
    let out = gcx_alone()
        .env_remove("SIM_SECRET")
        .args(["users", "patch", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("SIM_SECRET is not set"), "{stderr}");
    assert_eq!(sim.stats().total_responses, responses);
}

/// A job refused before it runs (here, a journal of another job) leaves no temporary report
/// file behind, and a demo of more users than the simulator can hold is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_job_leaves_no_temporary_report_and_a_huge_demo_is_refused() {
    let sim = Simulator::spawn(config(2)).await.unwrap();
    let d = dir("refused_report");
    let (input, schema) = ingest_input(&d, "records.jsonl", 0..5);
    let journal = d.join("job.journal");
    let out = ingest_journaled(&sim, &input, &schema, &journal)
        .output()
        .unwrap();
    assert_exit(&out, 0);
    let (users, _) = user_lines(&sim, 2);
    let users = write(&d.join("users.jsonl"), users.as_bytes());
    let out = users_patch(&sim, &users)
        .arg("--journal")
        .arg(&journal)
        .arg("--report")
        .arg(d.join("r.json"))
        .output()
        .unwrap();
    assert_exit(&out, 2);
    let left: Vec<_> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".r.json"))
        .collect();
    assert!(left.is_empty(), "{left:?}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gcx"))
        .args(["demo", "--users", "5000000"])
        .output()
        .unwrap();
    assert_exit(&out, 2);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--users"));
}

/// The login host down for a while in the middle of a job (tokens revoked meanwhile, so every
/// request needs a new one): the job waits for it and then delivers everything, rather than
/// fail the records that came up during the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waits_out_a_login_outage() {
    let sim = Simulator::spawn(config(120).faults("latency=2ms..6ms".parse().unwrap()))
        .await
        .unwrap();
    let d = dir("login_outage");
    let (lines, wanted) = user_lines(&sim, 120);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let report = d.join("report.json");
    let mut child = users_patch(&sim, &input)
        .args(["--concurrency", "4", "--report"])
        .arg(&report)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    until("the first patches", || sim.ledger_len() >= 10).await;
    sim.set_login_down(true);
    sim.revoke_tokens();
    // Several token requests refused: every unit in flight has met the outage.
    until("the outage to be met", || {
        sim.stats().faults.get("login-down").copied().unwrap_or(0) >= 4
    })
    .await;
    let during = sim.ledger_len();
    sim.set_login_down(false);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let r = read_json(&report);
    assert_eq!(status.code(), Some(0), "{}", r["counts"]);
    assert_eq!(r["status"], "complete");
    assert_eq!(r["counts"]["delivered"], 120);
    assert_eq!(r["counts"]["failed"], 0);
    assert!(
        sim.ledger_len() > during,
        "the job went on after the outage"
    );
    for (id, title) in wanted {
        assert_eq!(sim.user(&id).unwrap()["title"], json!(title));
        assert_eq!(patches(&sim, &id), 1, "user {id} patched once");
    }
}

/// The login host down when a job starts: nothing is sent, and the job says the login host is
/// unavailable (exit 1), not that the credentials are wrong (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_starts_while_the_login_host_is_down_blames_no_credentials() {
    let sim = Simulator::spawn(config(3)).await.unwrap();
    sim.set_login_down(true);
    let d = dir("login_down_at_start");
    let (lines, _) = user_lines(&sim, 3);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    for rate in [None, Some("100/60")] {
        let mut cmd = users_patch(&sim, &input);
        if let Some(rate) = rate {
            cmd.args(["--rate-limit", rate]);
        }
        let out = cmd.output().unwrap();
        assert_exit(&out, 1);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("the login host is unavailable"), "{stderr}");
        assert!(!stderr.contains("check the client id"), "{stderr}");
    }
    assert_eq!(sim.ledger_len(), 0, "nothing applied");
}

/// A job whose stderr (or stdout) is a pipe nobody reads any more (`2>&1 | head`, a log
/// shipper that went away) finishes as it would have, its report written: a line it cannot
/// print is lost, not the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_output_stream_does_not_end_the_job() {
    let sim = Simulator::spawn(config(20)).await.unwrap();
    let d = dir("closed_streams");
    let (lines, wanted) = user_lines(&sim, 20);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    for (i, json) in [true, false].into_iter().enumerate() {
        let report = d.join(format!("report-{i}.json"));
        let mut cmd = users_patch(&sim, &input);
        cmd.args(["--fresh", "--report"]).arg(&report);
        if json {
            // The summary's table goes to stderr, the JSON to stdout.
            cmd.arg("--json");
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Both read ends closed before the job writes anything.
        drop(child.stdout.take());
        drop(child.stderr.take());
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(0), "json {json}");
        let r = read_json(&report);
        assert_eq!(r["counts"]["delivered"], 20, "json {json}");
    }
    for (id, title) in wanted {
        assert_eq!(sim.user(&id).unwrap()["title"], json!(title));
    }
}

/// Stdout that cannot take what the job prints (a full disk under `--json > out.json`): the
/// job still runs to its end, and says so with a non-zero exit rather than exit 0 with its
/// JSON lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_summary_that_could_not_be_written_is_not_exit_0() {
    let sim = Simulator::spawn(config(3)).await.unwrap();
    let d = dir("stdout_full");
    let (lines, _) = user_lines(&sim, 3);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = users_patch(&sim, &input)
        .args(["--json", "--report"])
        .arg(d.join("report.json"))
        .stdout(full)
        .output()
        .unwrap();
    assert_exit(&out, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not all written"), "{stderr}");
    assert_eq!(read_json(&d.join("report.json"))["counts"]["delivered"], 3);
}

/// Waits until `done`, two minutes at most.
async fn until(what: &str, done: impl Fn() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "waited too long for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A profile's login host goes with the profile's API: `--base-url` naming another API takes
/// that API's own login host, and the profile's is never asked for a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profiles_login_host_stays_with_the_profiles_api() {
    let here = Simulator::spawn(config(2)).await.unwrap();
    let profiles = Simulator::spawn(config(2)).await.unwrap();
    let d = dir("profile_login");
    let file = write(
        &d.join("config.toml"),
        format!(
            "[profiles.other]\nbase_url = \"{0}\"\nlogin_url = \"{0}\"\n",
            profiles.base_url()
        )
        .as_bytes(),
    );
    let (lines, wanted) = user_lines(&here, 2);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    // `gcx` names `here` with --base-url; the profile names the other simulator.
    let out = users_patch(&here, &input)
        .env("GCX_CONFIG", &file)
        .env("GCX_PROFILE", "other")
        .output()
        .unwrap();
    assert_exit(&out, 0);
    assert_eq!(
        profiles.stats().tokens_issued,
        0,
        "no token from the profile's login host"
    );
    for (id, title) in wanted {
        assert_eq!(here.user(&id).unwrap()["title"], json!(title));
    }
}
