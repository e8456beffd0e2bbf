//! The fleet report: W `gcx users patch` processes (real OS processes, `--shard i/W`) share one
//! job and one quota of Q requests a second, which the simulator enforces per OAuth client
//! across the workers' tokens (as Genesys Cloud limits per client and per org). Three ways to run
//! the fleet, interleaved round by round (their order rotated every round), each on a fresh
//! simulator:
//!
//! - `shared`: every worker paces at Q through one Redis (`--fleet-redis`, GCRA in Redis);
//! - `alone`: every worker paces at Q on its own (what each process believes its quota is);
//! - `split`: every worker paces at Q/W on its own (the static split a user writes by hand).
//!
//! Two layouts of the job: one input split evenly with `--shard i/W`, and an input per worker
//! with uneven shares (worker i's proportional to i + 1, as pods' loads differ). Per variant:
//! the median time to finish against the ideal (API requests / Q), the share of requests
//! answered 429, the tokens fetched, whether every user was patched exactly once, and how many
//! workers gave up records.
//!
//! ```text
//! cargo build --release -p genesys-cli -p benches
//! target/release/fleet [--gcx PATH] [--redis URL] [--workers 4] [--users 400] [--quota 100] [--rounds 3]
//! ```
//!
//! `gcx` is looked up next to this binary unless `--gcx` is given; Redis is `REDIS_URL`, else
//! `redis://127.0.0.1:6379`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use benches::Table;
use genesys_sim::{SimConfig, Simulator};

const USAGE: &str = "usage: fleet [--gcx PATH] [--redis URL] [--workers W (default 4)] \
                     [--users U (default 400)] [--quota Q per second (default 100)] \
                     [--rounds R (default 3)]";

const VARIANTS: [&str; 3] = ["shared", "alone", "split"];

struct Options {
    gcx: PathBuf,
    redis: String,
    workers: u32,
    users: usize,
    quota: u32,
    rounds: usize,
}

fn options() -> Result<Options, String> {
    let here = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut o = Options {
        gcx: here.with_file_name("gcx"),
        redis: std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        workers: 4,
        users: 400,
        quota: 100,
        rounds: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or_else(|| USAGE.to_owned())?;
        let number = || value.parse::<u64>().ok().filter(|n| *n > 0).ok_or(USAGE);
        match arg.as_str() {
            "--gcx" => o.gcx = PathBuf::from(&value),
            "--redis" => o.redis = value.clone(),
            "--workers" => o.workers = u32::try_from(number()?).map_err(|_| USAGE)?,
            "--users" => o.users = usize::try_from(number()?).map_err(|_| USAGE)?,
            "--quota" => o.quota = u32::try_from(number()?).map_err(|_| USAGE)?,
            "--rounds" => o.rounds = usize::try_from(number()?).map_err(|_| USAGE)?,
            _ => return Err(USAGE.to_owned()),
        }
    }
    if o.workers > 64 || o.quota < o.workers {
        return Err(format!(
            "{USAGE}\n(at most 64 workers, and a quota of at least one each)"
        ));
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

struct Run {
    elapsed: Duration,
    api_requests: u64,
    rate_limited: u64,
    tokens: u64,
    exactly_once: bool,
    workers_failed: u32,
}

/// How the job is split among the workers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Layout {
    /// One input, `--shard i/W`: about equal shares (split by user id).
    Even,
    /// An input per worker, worker i's share proportional to i + 1.
    Uneven,
}

/// The workers' inputs: one file for all (even), or one each (uneven).
fn write_inputs(
    o: &Options,
    layout: Layout,
    ids: &[String],
    dir: &Path,
) -> Result<Vec<PathBuf>, String> {
    let line = |i: usize| {
        format!(
            "{{\"user_id\":\"{}\",\"updates\":{{\"title\":\"T{i}\"}}}}\n",
            ids[i]
        )
    };
    let write = |name: String, range: std::ops::Range<usize>| {
        let path = dir.join(name);
        let lines: String = range.map(line).collect();
        std::fs::write(&path, lines)
            .map(|()| path.clone())
            .map_err(|e| format!("{}: {e}", path.display()))
    };
    let w = o.workers as usize;
    match layout {
        Layout::Even => Ok(vec![write("users.jsonl".into(), 0..ids.len())?; w]),
        Layout::Uneven => {
            let total_weight = w * (w + 1) / 2;
            let mut start = 0;
            (0..w)
                .map(|k| {
                    let end = if k + 1 == w {
                        ids.len()
                    } else {
                        start + ids.len() * (k + 1) / total_weight
                    };
                    let path = write(format!("users-{k}.jsonl"), start..end);
                    start = end;
                    path
                })
                .collect()
        }
    }
}

async fn run(o: &Options, layout: Layout, variant: &str, dir: &Path) -> Result<Run, String> {
    let sim = Simulator::spawn(
        SimConfig::default()
            .users(o.users)
            .rate_limit(None)
            .client_rate_limit(Some((o.quota, Duration::from_secs(1))))
            .seed(7),
    )
    .await
    .map_err(|e| format!("simulator: {e}"))?;
    let ids = sim.user_ids();
    let inputs = write_inputs(o, layout, &ids, dir)?;
    let pace = match variant {
        "split" => format!("{}/1", o.quota / o.workers),
        _ => format!("{}/1", o.quota),
    };
    let start = Instant::now();
    let mut children = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let mut cmd = Command::new(&o.gcx);
        // A fleet job (shared pace, one input split by --shard) keeps journals: in a directory
        // of this run's own. The other variants keep none.
        let fleet_job = variant == "shared" && layout == Layout::Even;
        if fleet_job {
            let run = sim.base_url().replace([':', '/', '.'], "_");
            cmd.env("GCX_STATE_DIR", dir.join("state").join(run));
        } else {
            cmd.arg("--no-journal");
        }
        cmd.args(["users", "patch", "--quiet"])
            .args(["--concurrency", "8", "--rate-limit", &pace])
            .args(["--base-url", &sim.base_url()])
            .arg("--input")
            .arg(input)
            .env("GENESYS_CLIENT_ID", "demo-client")
            .env("GENESYS_CLIENT_SECRET", "demo-secret")
            .env_remove("GCX_FLEET_REDIS")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        if variant == "shared" {
            cmd.args(["--fleet-redis", &o.redis])
                .args(["--fleet-size", &o.workers.to_string()]);
        }
        if layout == Layout::Even {
            cmd.args(["--shard", &format!("{i}/{}", o.workers)]);
        }
        children.push(
            cmd.spawn()
                .map_err(|e| format!("cannot run {}: {e}", o.gcx.display()))?,
        );
    }
    // A worker that gave up on some records (retries spent on 429s) exits 1: a result of the
    // variant, shown in the table, not a failure of the benchmark.
    let mut workers_failed = 0;
    for mut child in children {
        let status = child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            workers_failed += 1;
        }
    }
    let elapsed = start.elapsed();
    let stats = sim.stats();
    let api_requests = stats
        .requests
        .iter()
        .filter(|(route, _)| !route.contains("/oauth/"))
        .flat_map(|(_, by_status)| by_status.values())
        .sum();
    let exactly_once = ids.iter().all(|id| {
        sim.ledger_for(id)
            .iter()
            .filter(|e| e.method == "PATCH")
            .count()
            == 1
    });
    let run = Run {
        elapsed,
        api_requests,
        rate_limited: stats.rate_limited,
        tokens: stats.tokens_issued,
        exactly_once,
        workers_failed,
    };
    sim.shutdown().await;
    Ok(run)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn print_table(o: &Options, results: &[Vec<Run>]) {
    let mut table = Table::new([
        "fleet",
        "time (s)",
        "ideal (s)",
        "time / ideal",
        "API requests",
        "429s",
        "429 share",
        "tokens fetched",
        "every user patched once",
        "workers that gave up records",
    ]);
    for (v, runs) in results.iter().enumerate() {
        let requests = median(runs.iter().map(|r| r.api_requests as f64).collect());
        let ideal = requests / f64::from(o.quota);
        let time = median(runs.iter().map(|r| r.elapsed.as_secs_f64()).collect());
        let limited = median(runs.iter().map(|r| r.rate_limited as f64).collect());
        let tokens = median(runs.iter().map(|r| r.tokens as f64).collect());
        table.row([
            VARIANTS[v].to_owned(),
            format!("{time:.2}"),
            format!("{ideal:.2}"),
            format!("{:.2}", time / ideal),
            format!("{requests:.0}"),
            format!("{limited:.0}"),
            format!("{:.1} %", 100.0 * limited / requests.max(1.0)),
            format!("{tokens:.0}"),
            format!(
                "{} of {} runs",
                runs.iter().filter(|r| r.exactly_once).count(),
                runs.len()
            ),
            format!(
                "{} in {} runs",
                runs.iter().map(|r| r.workers_failed).sum::<u32>(),
                runs.len()
            ),
        ]);
    }
    print!("{table}");
}

fn main() -> ExitCode {
    let o = match options() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let dir = std::env::temp_dir().join(format!("gcx-fleet-bench-{}", std::process::id()));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("{}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    let runtime = tokio::runtime::Runtime::new().expect("a Tokio runtime");
    let layouts = [
        (
            Layout::Even,
            "one input split with --shard i/W (about equal shares, by user id)",
        ),
        (
            Layout::Uneven,
            "an input per worker, worker i's share proportional to i + 1",
        ),
    ];
    for (layout, name) in layouts {
        let mut results: Vec<Vec<Run>> = VARIANTS.iter().map(|_| Vec::new()).collect();
        for round in 0..o.rounds {
            for k in 0..VARIANTS.len() {
                let v = (round + k) % VARIANTS.len();
                match runtime.block_on(run(&o, layout, VARIANTS[v], &dir)) {
                    Ok(r) => {
                        eprintln!(
                            "round {round}: {:<6} {:>6.2} s, {} requests, {} 429s, {} worker(s) \
                             gave up records",
                            VARIANTS[v],
                            r.elapsed.as_secs_f64(),
                            r.api_requests,
                            r.rate_limited,
                            r.workers_failed
                        );
                        results[v].push(r);
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        let _ = std::fs::remove_dir_all(&dir);
                        return ExitCode::FAILURE;
                    }
                }
            }
        }
        println!(
            "## {} workers, {} users, one quota of {} requests a second; {name} ({} rounds, \
             median)\n",
            o.workers, o.users, o.quota, o.rounds
        );
        print_table(&o, &results);
        println!();
    }
    let _ = std::fs::remove_dir_all(&dir);
    ExitCode::SUCCESS
}
