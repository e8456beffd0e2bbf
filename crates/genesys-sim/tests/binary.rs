//! The `genesys-sim` binary: first stdout line, flags, refusal of bad specs, /sim endpoints.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{send, token};

const BIN: &str = env!("CARGO_BIN_EXE_genesys-sim");

#[test]
fn bad_flags_are_refused_with_what_is_allowed() {
    let out = Command::new(BIN)
        .args(["--faults", "boom=0.1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown fault `boom`") && err.contains("reset-after"),
        "{err}"
    );

    let out = Command::new(BIN)
        .args(["--rate-limit", "300"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("N/SECS"), "{err}");

    // Numbers that would overflow the clock are refused at parse time, with a message.
    for (flag, value, says) in [
        ("--token-ttl", "18446744073709551615", "token lifetime"),
        ("--token-ttl", "0", "token lifetime"),
        ("--faults", "latency=99999999999999999999999h", "at most"),
        ("--faults", "revoke-every=100000h", "at most"),
        ("--rate-limit", "10/99999999999", "N/SECS"),
        ("--users", "18446744073709551615", "number of users"),
    ] {
        let out = Command::new(BIN).args([flag, value]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(says) && !err.contains("panicked"),
            "{flag} {value}: {err}"
        );
    }

    let out = Command::new(BIN)
        .args(["--client", "nosecret"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ID:SECRET"));
}

#[tokio::test]
async fn prints_its_address_first_and_serves_the_sim_endpoints() {
    let mut child = Command::new(BIN)
        .args([
            "--addr",
            "127.0.0.1:0",
            "--users",
            "3",
            "--client",
            "demo-client:demo-secret",
            "--rate-limit",
            "10/60",
            "--faults",
            "latency=1ms",
            "--seed",
            "5",
            "--no-ratelimit-headers",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line
        .trim()
        .strip_prefix("listening on ")
        .expect(&line)
        .to_string();
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    let t = token(&base).await;
    let id = genesys_sim::user_id(5, 0);
    let r = common::api(&base, &t, "GET", &format!("/api/v2/users/{id}"), "", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("inin-ratelimit-allowed").is_none());

    let stats = send(&base, "GET", "/sim/stats", &[], "")
        .await
        .unwrap()
        .json();
    assert_eq!(stats["requests"]["GET /api/v2/users/{userId}"]["200"], 1);
    assert_eq!(stats["tokensIssued"], 1);
    let ledger = send(&base, "GET", "/sim/ledger", &[], "")
        .await
        .unwrap()
        .json();
    assert_eq!(ledger, serde_json::json!([]));

    child.kill().unwrap();
    child.wait().unwrap();
}
