//! Helpers shared by the end-to-end tests of `gcx`: the built binary against a simulator
//! spawned in the test process.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use genesys_sim::{SimConfig, SimHandle};
use serde_json::{Value, json};

/// A fresh directory for one test's files.
pub fn dir(test: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("gcx-cli")
        .join(test);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn write(path: &Path, bytes: &[u8]) -> PathBuf {
    std::fs::File::create(path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
    path.to_owned()
}

pub fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

pub fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Where this test process's default journals go: never shared with another run of the tests.
pub fn state_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("gcx-state")
        .join(std::process::id().to_string())
}

/// `gcx` with the simulator's credentials in the environment and its URL as `--base-url`.
pub fn gcx(sim: &SimHandle) -> Command {
    gcx_at(&sim.base_url())
}

/// [`gcx`] with the API at `base_url`.
pub fn gcx_at(base_url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gcx"));
    cmd.env("GCX_STATE_DIR", state_dir())
        .env("GENESYS_CLIENT_ID", "demo-client")
        .env("GENESYS_CLIENT_SECRET", "demo-secret")
        .env_remove("RUST_LOG")
        // Never the machine's own configuration.
        .env("XDG_CONFIG_HOME", state_dir().join("no-config"))
        .env_remove("GCX_CONFIG")
        .env_remove("GCX_PROFILE")
        .env("GCX_POLICY_STORE", state_dir().join("no-policies"))
        .args(["--base-url", base_url])
        .stdin(Stdio::null());
    // Never the machine's own proxy or certificate authorities.
    for name in PROXY_VARIABLES {
        cmd.env_remove(name);
    }
    cmd.env_remove("SSL_CERT_FILE");
    cmd
}

/// The variables that name a proxy, as gcx reads them.
pub const PROXY_VARIABLES: [&str; 8] = [
    "ALL_PROXY",
    "all_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// Asserts gcx's exit code, showing its stderr when it is not the one expected.
#[track_caller]
pub fn assert_exit(out: &std::process::Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// No quota, so tests are not slowed by pacing.
pub fn config(users: usize) -> SimConfig {
    SimConfig::default().users(users).rate_limit(None).seed(3)
}

pub fn user_lines(sim: &SimHandle, n: usize) -> (String, Vec<(String, String)>) {
    let mut out = String::new();
    let mut wanted = Vec::new();
    for (i, id) in sim.user_ids().into_iter().take(n).enumerate() {
        let title = format!("Title {i}");
        out.push_str(&json!({"user_id": id, "updates": {"title": title}}).to_string());
        out.push('\n');
        wanted.push((id, title));
    }
    (out, wanted)
}

pub fn patches(sim: &SimHandle, id: &str) -> usize {
    sim.ledger_for(id)
        .iter()
        .filter(|e| e.method == "PATCH")
        .count()
}

/// Sends SIGINT (a Ctrl-C) to `pid`.
pub fn interrupt(pid: u32) {
    signal(pid, "INT");
}

/// Sends signal `name` (`INT`, `TERM`) to `pid`.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The setting `key` of `gcx config show --json`'s output.
#[track_caller]
pub fn setting(shown: &Value, key: &str) -> Value {
    shown["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == key)
        .cloned()
        .unwrap_or_else(|| panic!("{key} in {shown}"))
}

/// FNV-1a 64 in hex, as the simulator's ledger hashes payloads.
pub fn fnv1a(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The simulator's ingestion schema, in `d`.
pub fn ingest_schema(d: &Path) -> PathBuf {
    write(
        &d.join("schema.json"),
        genesys_sim::default_ingestion_schema()
            .to_string()
            .as_bytes(),
    )
}

/// Seed 000's records with the ids `TXN-<i>` for `i` in `ids`, as JSONL in `d/file`, and the
/// simulator's schema in `d`: (the input, the schema).
pub fn ingest_input(d: &Path, file: &str, ids: std::ops::Range<usize>) -> (PathBuf, PathBuf) {
    let schema = ingest_schema(d);
    let mut lines = String::new();
    for i in ids {
        let rec = json!({
            "external_id": format!("TXN-{i}"),
            "timestamp": "2023-10-15T14:30:00Z",
            "channel": "voice",
            "duration_seconds": 60,
            "customer_segment": "enterprise"
        });
        lines.push_str(&rec.to_string());
        lines.push('\n');
    }
    (write(&d.join(file), lines.as_bytes()), schema)
}

/// `gcx ingest --json` of `input` against `schema`, with its report and quarantine files.
pub fn ingest(sim: &SimHandle, input: &Path, schema: &Path, report: &Path, q: &Path) -> Command {
    let mut cmd = gcx(sim);
    cmd.args(["ingest", "--json", "--input"])
        .arg(input)
        .arg("--schema")
        .arg(schema)
        .arg("--report")
        .arg(report)
        .arg("--quarantine")
        .arg(q);
    cmd
}

/// `gcx ingest` of `input` against `schema`, with `journal` as its journal.
pub fn ingest_journaled(sim: &SimHandle, input: &Path, schema: &Path, journal: &Path) -> Command {
    let mut cmd = gcx(sim);
    cmd.args(["ingest", "--input"])
        .arg(input)
        .arg("--schema")
        .arg(schema)
        .arg("--journal")
        .arg(journal);
    cmd
}

/// `gcx users patch --input INPUT` against `sim`.
pub fn users_patch(sim: &SimHandle, input: &Path) -> Command {
    let mut cmd = gcx(sim);
    cmd.args(["users", "patch", "--input"]).arg(input);
    cmd
}
