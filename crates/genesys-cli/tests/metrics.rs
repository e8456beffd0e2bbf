//! `--metrics-addr`: the stack's metrics scraped from a running gcx job, and at the end the
//! client's counts equal to the simulator's own `/sim/metrics`, route by route.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use genesys_sim::Simulator;

/// A free port on 127.0.0.1 (bound, then released for gcx to take).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET path` on `addr` over a plain HTTP/1.1 connection; the body, if the answer is 200.
fn get(addr: &str, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// Sums the samples of `name` by the values of the labels `by`.
fn sum_by(text: &str, name: &str, by: &[&str]) -> BTreeMap<Vec<String>, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((head, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, labels) = head.split_once('{').unwrap_or((head, "}"));
        if metric != name {
            continue;
        }
        let labels: BTreeMap<&str, &str> = labels
            .trim_end_matches('}')
            .split("\",")
            .filter_map(|p| p.split_once("=\""))
            .map(|(k, v)| (k, v.trim_end_matches('"')))
            .collect();
        let key = by
            .iter()
            .map(|k| labels.get(k).copied().unwrap_or("").to_owned())
            .collect();
        *out.entry(key).or_default() += value.parse::<f64>().unwrap() as u64;
    }
    out
}

/// PATCH calls that ended 2xx on the users route.
fn patched(text: &str) -> u64 {
    let calls = sum_by(
        text,
        "genesys_tower_calls_total",
        &["method", "route", "outcome"],
    );
    let key = ["PATCH", "/api/v2/users/{userId}", "2xx"]
        .map(str::to_owned)
        .to_vec();
    calls.get(&key).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_during_the_job_and_the_final_counts_equal_the_simulators() {
    // A quota of 20 requests a second that the answers do not announce, and some 503s: the job
    // takes a few seconds and draws 429s and retries.
    let users = 60;
    let sim = Simulator::spawn(
        config(users)
            .rate_limit(Some((20, Duration::from_secs(1))))
            .ratelimit_headers(false)
            .faults("5xx=0.05".parse().unwrap()),
    )
    .await
    .unwrap();
    let d = dir("metrics_scrape");
    let (lines, _) = user_lines(&sim, users);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = gcx(&sim)
        .args([
            "users",
            "patch",
            "--concurrency",
            "8",
            "--rate-limit",
            "1000/1",
            "--metrics-addr",
            &addr,
            "--metrics-linger",
            "120",
            "--quiet",
            "--input",
        ])
        .arg(&input)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // While the job runs, its metrics are served and move.
    let started = Instant::now();
    let mut live = None;
    while started.elapsed() < Duration::from_secs(60) {
        if let Some(text) = get(&addr, "/metrics") {
            let done: u64 = sum_by(&text, "genesys_tower_calls_total", &[])
                .values()
                .sum();
            if done > 0 && done < users as u64 {
                live = Some(done);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let live = live.expect("a scrape while the job ran, with some calls done and some not");

    // The job ends; gcx lingers with the final counts.
    let mut last = String::new();
    while started.elapsed() < Duration::from_secs(120) {
        if let Some(text) = get(&addr, "/metrics") {
            let in_flight = sum_by(&text, "genesys_tower_calls_in_flight", &[]);
            let done: u64 = sum_by(&text, "genesys_tower_calls_total", &[])
                .values()
                .sum();
            last = text;
            if done >= users as u64 && in_flight.values().all(|n| *n == 0) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    interrupt(child.id());
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");

    let client = last;
    let server = get(sim.base_url().trim_start_matches("http://"), "/sim/metrics")
        .expect("the simulator's metrics");
    assert_eq!(
        patched(&client),
        users as u64,
        "every user patched once (a live scrape saw {live})"
    );

    // Requests: every attempt the client counted is a response the simulator counted, on
    // the same route (no fault here drops a connection).
    let attempts = sum_by(
        &client,
        "genesys_tower_attempts_total",
        &["method", "route"],
    );
    let responses = sum_by(&server, "genesys_sim_responses_total", &["method", "route"]);
    let api_responses: BTreeMap<_, _> = responses
        .into_iter()
        .filter(|(k, _)| k[1].starts_with("/api/"))
        .collect();
    assert_eq!(
        attempts, api_responses,
        "client attempts vs simulator responses"
    );

    // 429s: the client saw exactly those the simulator gave.
    let client_429: u64 = sum_by(&client, "genesys_tower_rate_limited_total", &[])
        .values()
        .sum();
    let server_429: u64 = sum_by(&server, "genesys_sim_rate_limited_total", &[])
        .values()
        .sum();
    assert!(server_429 > 0, "the quota was hit");
    assert_eq!(client_429, server_429);

    // Retries by reason add up to the failed attempts.
    let retries: u64 = sum_by(&client, "genesys_tower_retries_total", &[])
        .values()
        .sum();
    let failed_attempts: u64 = sum_by(&client, "genesys_tower_attempts_total", &["outcome"])
        .iter()
        .filter(|(k, _)| k[0] != "2xx")
        .map(|(_, n)| n)
        .sum();
    assert_eq!(retries, failed_attempts);
    // The latency histogram counts every call.
    let histogram: u64 = sum_by(&client, "genesys_tower_call_duration_seconds_count", &[])
        .values()
        .sum();
    let calls: u64 = sum_by(&client, "genesys_tower_calls_total", &[])
        .values()
        .sum();
    assert_eq!(histogram, calls);
}

/// Connections that never send a request are closed after the header timeout (10 s), and more
/// of them than the endpoint serves at once only delay a scrape until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_do_not_stop_a_scrape() {
    let sim = Simulator::spawn(config(1)).await.unwrap();
    let d = dir("metrics_idle");
    let (lines, _) = user_lines(&sim, 1);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = gcx(&sim)
        .args(["users", "patch", "--metrics-addr", &addr])
        .args(["--metrics-linger", "120", "--quiet", "--input"])
        .arg(&input)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while get(&addr, "/metrics").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no metrics endpoint"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // More idle connections than the endpoint serves at once.
    let mut idle: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let first = &mut idle[0];
    first
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut buf = [0u8; 16];
    let read = first
        .read(&mut buf)
        .expect("an idle connection is closed by the server, not left open");
    assert_eq!(read, 0, "closed without an answer");
    let scraped = Instant::now();
    while get(&addr, "/metrics").is_none() {
        assert!(
            scraped.elapsed() < Duration::from_secs(60),
            "no scrape past the idle ones"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// `gcx users patch` of `input` with the final metrics kept an hour, once it says it serves them.
fn lingering(sim: &genesys_sim::SimHandle, input: &std::path::Path) -> std::process::Child {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = gcx(sim)
        .args(["users", "patch", "--metrics-addr", &addr])
        .args(["--metrics-linger", "3600", "--input"])
        .arg(input)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("serving the final metrics") {
        line.clear();
        let read = std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
        assert!(read > 0, "gcx ended before its linger");
    }
    child
}

/// Sends `child` a SIGTERM and waits for it to end; `hang` if it does not within a minute (a
/// guard against a hang, far below the lingers here: not a measure of speed).
async fn terminate(child: &mut std::process::Child, hang: &str) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("{hang}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGTERM (a scheduler stopping the job) ends the wait that keeps the final metrics served, as
/// Ctrl-C does: the process exits with the job's code, not when the linger runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_the_linger() {
    let sim = Simulator::spawn(config(1)).await.unwrap();
    let d = dir("metrics_sigterm");
    let (lines, _) = user_lines(&sim, 1);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let mut child = lingering(&sim, &input);
    let status = terminate(&mut child, "SIGTERM did not end the linger").await;
    assert_eq!(status.code(), Some(0));
}

/// The SIGTERM that stops a job (a scheduler's, which sends one) ends it with its report, and
/// no linger after it waits for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_during_the_job_ends_it_without_a_linger() {
    let sim = Simulator::spawn(config(20).faults("latency=200ms..200ms".parse().unwrap()))
        .await
        .unwrap();
    let d = dir("metrics_sigterm_job");
    let (lines, _) = user_lines(&sim, 20);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let report = d.join("report.json");
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = gcx(&sim)
        .args(["users", "patch", "--concurrency", "1"])
        .args(["--metrics-addr", &addr, "--metrics-linger", "3600"])
        .args(["--quiet", "--report"])
        .arg(&report)
        .arg("--input")
        .arg(&input)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while sim.ledger_len() == 0 {
        assert!(started.elapsed() < Duration::from_secs(60), "no progress");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = terminate(&mut child, "the job did not end after SIGTERM").await;
    assert_eq!(status.code(), Some(1), "records not started");
    let counts = &read_json(&report)["counts"];
    assert!(counts["not_started"].as_u64().unwrap() > 0, "{counts}");
}

/// A job that never starts (its input is missing: exit 2) still lingers, and a SIGTERM ends the
/// linger with that exit code, not the signal's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_the_linger_of_a_job_that_never_started() {
    let sim = Simulator::spawn(config(1)).await.unwrap();
    let d = dir("metrics_sigterm_usage");
    let mut child = lingering(&sim, &d.join("missing.jsonl"));
    let status = terminate(&mut child, "SIGTERM did not end the linger").await;
    assert_eq!(status.code(), Some(2));
}
