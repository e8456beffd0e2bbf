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
//! Per variant: the median time to finish against the ideal (API requests / Q), the share of
//! requests answered 429, the tokens fetched, and whether every user was patched exactly once.
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
}

async fn run(o: &Options, variant: &str, dir: &Path) -> Result<Run, String> {
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
    let input = dir.join("users.jsonl");
    let lines: String = ids
        .iter()
        .enumerate()
        .map(|(i, id)| format!("{{\"user_id\":\"{id}\",\"updates\":{{\"title\":\"T{i}\"}}}}\n"))
        .collect();
    std::fs::write(&input, lines).map_err(|e| format!("{}: {e}", input.display()))?;

    let pace = match variant {
        "split" => format!("{}/1", o.quota / o.workers),
        _ => format!("{}/1", o.quota),
    };
    let start = Instant::now();
    let mut children = Vec::new();
    for i in 0..o.workers {
        let mut cmd = Command::new(&o.gcx);
        cmd.args([
            "users",
            "patch",
            "--no-journal",
            "--quiet",
            "--concurrency",
            "8",
        ])
        .args([
            "--rate-limit",
            &pace,
            "--shard",
            &format!("{i}/{}", o.workers),
        ])
        .args(["--base-url", &sim.base_url()])
        .arg("--input")
        .arg(&input)
        .env("GENESYS_CLIENT_ID", "demo-client")
        .env("GENESYS_CLIENT_SECRET", "demo-secret")
        .env_remove("GCX_FLEET_REDIS")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
        if variant == "shared" {
            cmd.args(["--fleet-redis", &o.redis]);
        }
        children.push(
            cmd.spawn()
                .map_err(|e| format!("cannot run {}: {e}", o.gcx.display()))?,
        );
    }
    for mut child in children {
        let status = child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("a {variant} worker exited with {status}"));
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
    };
    sim.shutdown().await;
    Ok(run)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
    let mut results: Vec<Vec<Run>> = VARIANTS.iter().map(|_| Vec::new()).collect();
    for round in 0..o.rounds {
        for k in 0..VARIANTS.len() {
            let v = (round + k) % VARIANTS.len();
            match runtime.block_on(run(&o, VARIANTS[v], &dir)) {
                Ok(r) => {
                    eprintln!(
                        "round {round}: {:<6} {:>6.2} s, {} requests, {} 429s",
                        VARIANTS[v],
                        r.elapsed.as_secs_f64(),
                        r.api_requests,
                        r.rate_limited
                    );
                    results[v].push(r);
                }
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "## {} workers, {} users, one quota of {} requests a second ({} rounds, median)\n",
        o.workers, o.users, o.quota, o.rounds
    );
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
            if runs.iter().all(|r| r.exactly_once) {
                "yes".to_owned()
            } else {
                "NO".to_owned()
            },
        ]);
    }
    print!("{table}");
    ExitCode::SUCCESS
}
