//! The memory report: `gcx users patch` on 100,000 and on 1,000,000 input lines against an
//! embedded simulator, and the peak resident set (VmHWM) of the `gcx` process for each. A job
//! that streams its input in bounded memory has the same peak for both. Then the journal's cost:
//! the first input run with and without its journal (`--no-journal`), the two variants
//! interleaved round by round (their order swapped every round), and the median ratio of their
//! times.
//!
//! ```text
//! cargo build --release -p genesys-cli -p benches
//! target/release/memory [--gcx PATH] [--lines 100000,1000000] [--users 10000] [--concurrency 16] [--rounds 5]
//! ```
//!
//! `gcx` is looked up next to this binary unless `--gcx` is given.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use benches::Table;
use benches::table::thousands;
use genesys_sim::{SimConfig, Simulator};
use serde_json::Value;

const USAGE: &str = "usage: memory [--gcx PATH] [--lines N,N,... (default 100000,1000000)] \
                     [--users U (default 10000)] [--concurrency C (default 16)] \
                     [--rounds R (default 5; 0 skips the journal's cost)]";

struct Options {
    gcx: PathBuf,
    lines: Vec<u64>,
    users: usize,
    concurrency: u32,
    rounds: usize,
}

fn options() -> Result<Options, String> {
    let here = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut o = Options {
        gcx: here.with_file_name("gcx"),
        lines: vec![100_000, 1_000_000],
        users: 10_000,
        concurrency: 16,
        rounds: 5,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or_else(|| USAGE.to_owned())?;
        match arg.as_str() {
            "--gcx" => o.gcx = PathBuf::from(value),
            "--lines" => {
                o.lines = value
                    .split(',')
                    .map(|n| n.trim().parse::<u64>().ok().filter(|n| *n > 0))
                    .collect::<Option<_>>()
                    .ok_or_else(|| USAGE.to_owned())?;
            }
            "--users" => o.users = value.parse().map_err(|_| USAGE.to_owned())?,
            "--concurrency" => o.concurrency = value.parse().map_err(|_| USAGE.to_owned())?,
            "--rounds" => o.rounds = value.parse().map_err(|_| USAGE.to_owned())?,
            _ => return Err(USAGE.to_owned()),
        }
    }
    if o.users == 0 || o.concurrency == 0 {
        return Err(USAGE.to_owned());
    }
    if !o.gcx.is_file() {
        return Err(format!(
            "no gcx binary at {}: build it with `cargo build --release -p genesys-cli`, or pass \
             --gcx PATH",
            o.gcx.display()
        ));
    }
    Ok(o)
}

/// JSONL in seed 001's shape, cycling over the simulator's users. With far more users than
/// requests in flight, no two lines for the same user are ever in flight together.
fn write_input(path: &Path, lines: u64, ids: &[String]) -> std::io::Result<()> {
    let mut out = BufWriter::new(File::create(path)?);
    for i in 0..lines {
        let id = &ids[(i % ids.len() as u64) as usize];
        writeln!(
            out,
            r#"{{"user_id":"{id}","updates":{{"department":"Dept {i}"}}}}"#
        )?;
    }
    out.flush()
}

/// The `VmHWM` line of `/proc/<pid>/status`, in KiB.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

struct Measured {
    peak_kib: u64,
    elapsed: Duration,
    delivered: Option<u64>,
    success: bool,
}

/// Where the journal goes: `Some(path)` (started over each run), or none (`--no-journal`).
fn run_gcx(
    o: &Options,
    base_url: &str,
    input: &Path,
    journal: Option<&Path>,
) -> Result<Measured, String> {
    let start = Instant::now();
    let mut cmd = Command::new(&o.gcx);
    match journal {
        Some(path) => cmd.arg("--journal").arg(path).arg("--fresh"),
        None => cmd.arg("--no-journal"),
    };
    let mut child = cmd
        .args(["users", "patch", "--input"])
        .arg(input)
        .args(["--base-url", base_url, "--quiet", "--json"])
        .args(["--concurrency", &o.concurrency.to_string()])
        // The client paces at 300 a minute by default; this job measures memory, not manners.
        .args(["--rate-limit", "1000000/1"])
        .env("GENESYS_CLIENT_ID", "demo-client")
        .env("GENESYS_CLIENT_SECRET", "demo-secret")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", o.gcx.display()))?;
    let pid = child.id();
    let stdout = child.stdout.take();
    // Read stdout on a thread so a full pipe never blocks the child.
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(mut out) = stdout {
            let _ = std::io::Read::read_to_string(&mut out, &mut s);
        }
        s
    });
    // VmHWM only grows; the last value read before the process exits is its peak (to within
    // what it allocates in its last 20 ms, which is shutting down).
    let mut peak = 0;
    let status = loop {
        if let Some(kib) = vm_hwm_kib(pid) {
            peak = peak.max(kib);
        }
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for gcx failed: {e}")),
        }
    };
    let elapsed = start.elapsed();
    let out = reader.join().unwrap_or_default();
    let delivered = serde_json::from_str::<Value>(out.trim())
        .ok()
        .and_then(|v| v.pointer("/counts/delivered").and_then(Value::as_u64));
    Ok(Measured {
        peak_kib: peak,
        elapsed,
        delivered,
        success: status.success(),
    })
}

fn main() -> ExitCode {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("memory: could not start a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let sim = match runtime.block_on(Simulator::spawn(
        SimConfig::default().users(o.users).rate_limit(None),
    )) {
        Ok(sim) => sim,
        Err(e) => {
            eprintln!("memory: the simulator did not start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ids = sim.user_ids();
    let dir = std::env::temp_dir();

    println!(
        "## Memory: peak RSS of `gcx users patch` (JSONL input, {} distinct users, concurrency \
         {}, simulator in the measuring process, no quota, no faults)\n",
        thousands(o.users as u64),
        o.concurrency
    );
    let mut table = Table::new([
        "input lines",
        "input size",
        "delivered",
        "time",
        "journal size",
        "peak RSS (VmHWM)",
        "ratio to the first",
    ]);
    let mut cost_input: Option<(PathBuf, u64)> = None;
    let mut first: Option<u64> = None;
    let mut ok = true;
    for &lines in &o.lines {
        let input = dir.join(format!("gcx-memory-{}-{lines}.jsonl", std::process::id()));
        if let Err(e) = write_input(&input, lines, &ids) {
            eprintln!("memory: cannot write {}: {e}", input.display());
            return ExitCode::FAILURE;
        }
        let size = std::fs::metadata(&input).map(|m| m.len()).unwrap_or(0);
        eprintln!("running gcx on {lines} lines ...");
        let journal = input.with_extension("journal");
        let result = run_gcx(&o, &sim.base_url(), &input, Some(&journal));
        let journal_size = std::fs::metadata(&journal).map(|m| m.len()).unwrap_or(0);
        let _ = std::fs::remove_file(&journal);
        if lines == o.lines[0] && o.rounds > 0 {
            cost_input = Some((input.clone(), lines));
        } else {
            let _ = std::fs::remove_file(&input);
        }
        match result {
            Ok(m) => {
                ok &= m.success && m.delivered == Some(lines);
                let base = *first.get_or_insert(m.peak_kib);
                table.row([
                    thousands(lines),
                    format!("{:.1} MiB", size as f64 / (1024.0 * 1024.0)),
                    m.delivered.map_or("?".to_owned(), thousands),
                    format!("{:.1} s", m.elapsed.as_secs_f64()),
                    format!("{:.1} MiB", journal_size as f64 / (1024.0 * 1024.0)),
                    format!("{:.1} MiB", m.peak_kib as f64 / 1024.0),
                    format!("{:.2}", m.peak_kib as f64 / base.max(1) as f64),
                ]);
            }
            Err(e) => {
                eprintln!("memory: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!("{table}");
    if let Some((input, lines)) = cost_input {
        ok &= journal_cost(&o, &sim.base_url(), &input, lines);
        let _ = std::fs::remove_file(&input);
    }
    runtime.block_on(sim.shutdown());
    if ok {
        ExitCode::SUCCESS
    } else {
        eprintln!("memory: gcx did not deliver every line (see above)");
        ExitCode::FAILURE
    }
}

/// The journal's cost on throughput: the same job with and without its journal, interleaved
/// round by round; prints each round and the median ratio with its interquartile range.
fn journal_cost(o: &Options, base_url: &str, input: &Path, lines: u64) -> bool {
    println!(
        "\n## The journal's cost: `gcx users patch` on {} lines, with and without `--no-journal`, \
         {} rounds, the order swapped every round\n",
        thousands(lines),
        o.rounds
    );
    let journal = input.with_extension("journal");
    let mut table = Table::new(["round", "with journal", "without", "ratio (with / without)"]);
    let mut ratios = Vec::new();
    let mut ok = true;
    for round in 0..o.rounds {
        let mut with = None;
        let mut without = None;
        for journaled in [round % 2 == 0, round % 2 == 1] {
            eprintln!("round {}: journal {journaled} ...", round + 1);
            match run_gcx(o, base_url, input, journaled.then_some(journal.as_path())) {
                Ok(m) => {
                    ok &= m.success && m.delivered == Some(lines);
                    if journaled {
                        with = Some(m.elapsed);
                    } else {
                        without = Some(m.elapsed);
                    }
                }
                Err(e) => {
                    eprintln!("memory: {e}");
                    return false;
                }
            }
        }
        let (Some(with), Some(without)) = (with, without) else {
            return false;
        };
        let ratio = with.as_secs_f64() / without.as_secs_f64().max(1e-9);
        ratios.push(ratio);
        table.row([
            (round + 1).to_string(),
            format!("{:.2} s", with.as_secs_f64()),
            format!("{:.2} s", without.as_secs_f64()),
            format!("{ratio:.3}"),
        ]);
    }
    let _ = std::fs::remove_file(&journal);
    ratios.sort_by(f64::total_cmp);
    let at = |q: f64| ratios[((ratios.len() - 1) as f64 * q).round() as usize];
    println!("{table}");
    println!(
        "median ratio {:.3} (interquartile range {:.3} to {:.3})",
        at(0.5),
        at(0.25),
        at(0.75)
    );
    ok
}
