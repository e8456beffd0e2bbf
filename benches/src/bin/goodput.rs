//! The goodput report: a bulk job of user updates against the simulator under a quota of Q
//! requests per second, with and without 5 % 5xx faults, run by each strategy. Prints markdown.
//!
//! ```text
//! cargo run --release -p benches --bin goodput [-- --users 1500 --quota 100 --seed 7 --faults 0,0.05]
//! cargo run --release -p benches --bin goodput -- --quota 40 --window 1 --headers-share 0.5 \
//!     --faults 0 --strategies fixed,defaults,seeds
//! ```

use std::process::ExitCode;
use std::time::Duration;

use benches::Table;
use benches::goodput::{IN_FLIGHT, OPEN_JOBS, Setup, Strategy, run};

const USAGE: &str = "usage: goodput [--users N (default 1500)] [--quota Q requests per window (default 100)] \
                     [--window SECS (default 1)] [--headers-share P (default 1)] \
                     [--seed S (default 7)] [--faults RATES: comma-separated 5xx probabilities (default 0,0.05)] \
                     [--strategies paced,reactive,learning,fixed,defaults,seeds (default all)]";

fn main() -> ExitCode {
    let mut setup = Setup {
        users: 1500,
        quota: 100,
        window_secs: 1,
        headers_share: 1.0,
        server_errors: 0.0,
        seed: 7,
    };
    let mut fault_rates = vec![0.0, 0.05];
    let mut strategies: Vec<Strategy> = Strategy::ALL.to_vec();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let ok = match arg.as_str() {
            "--users" => args
                .next()
                .and_then(|v| v.parse().ok())
                .map(|v| setup.users = v),
            "--quota" => args
                .next()
                .and_then(|v| v.parse().ok())
                .map(|v| setup.quota = v),
            "--window" => args
                .next()
                .and_then(|v| v.parse().ok())
                .filter(|&v| v > 0)
                .map(|v| setup.window_secs = v),
            "--headers-share" => args
                .next()
                .and_then(|v| v.parse().ok())
                .filter(|v| (0.0..=1.0).contains(v))
                .map(|v| setup.headers_share = v),
            "--strategies" => args
                .next()
                .and_then(|v| {
                    v.split(',')
                        .map(|k| Strategy::ALL.into_iter().find(|s| s.key() == k))
                        .collect::<Option<Vec<_>>>()
                })
                .map(|v| strategies = v),
            "--seed" => args
                .next()
                .and_then(|v| v.parse().ok())
                .map(|v| setup.seed = v),
            "--faults" => args
                .next()
                .and_then(|v| parse_rates(&v))
                .map(|v| fault_rates = v),
            _ => None,
        };
        if ok.is_none() || setup.users == 0 || setup.quota == 0 {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("goodput: could not start a tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };

    println!(
        "## Goodput: {} user updates, quota {} requests per {} s per token (fixed window), \
         rate-limit headers on {:.0} % of answers, N = {} requests, ideal N/Q = {:.1} s\n",
        setup.users,
        setup.quota,
        setup.window_secs,
        setup.headers_share * 100.0,
        setup.ideal_requests(),
        setup.ideal_time().as_secs_f64()
    );
    println!(
        "Every strategy has at most {IN_FLIGHT} requests in flight; the genesys-tower strategies \
         work on {OPEN_JOBS} users at a time.\n"
    );
    let mut table = Table::new([
        "strategy",
        "5xx faults",
        "time",
        "time / ideal",
        "429s",
        "429s / requests",
        "attempts / request",
        "users failed",
    ]);
    let mut details = Table::new([
        "strategy",
        "5xx faults",
        "retries on 429",
        "retries on 5xx",
        "budget refusals",
        "pacing waits",
    ]);
    let mut failed_runs = false;
    for &server_errors in &fault_rates {
        for &strategy in &strategies {
            let setup = Setup {
                server_errors,
                ..setup
            };
            eprintln!(
                "running: {} with {:.0} % 5xx ...",
                strategy.name(),
                server_errors * 100.0
            );
            match runtime.block_on(run(setup, strategy)) {
                Ok(o) => {
                    let requests = o.requests.max(1) as f64;
                    table.row([
                        strategy.name().to_owned(),
                        format!("{:.0} %", server_errors * 100.0),
                        secs(o.elapsed),
                        format!(
                            "{:.3}x",
                            o.elapsed.as_secs_f64() / setup.ideal_time().as_secs_f64()
                        ),
                        o.rate_limited.to_string(),
                        format!("{:.2} %", 100.0 * o.rate_limited as f64 / requests),
                        format!("{:.3}", o.attempts as f64 / requests),
                        o.failed.to_string(),
                    ]);
                    if let Some(m) = o.metrics {
                        details.row([
                            strategy.name().to_owned(),
                            format!("{:.0} %", server_errors * 100.0),
                            m.retries.rate_limited.to_string(),
                            m.retries.server_error.to_string(),
                            m.budget_refusals.to_string(),
                            m.pacing_waits.to_string(),
                        ]);
                    }
                }
                Err(e) => {
                    failed_runs = true;
                    eprintln!("goodput: {} failed: {e}", strategy.name());
                    table.row([
                        strategy.name().to_owned(),
                        format!("{:.0} %", server_errors * 100.0),
                        format!("run failed: {e}"),
                    ]);
                }
            }
        }
    }
    println!("{table}");
    println!("### The genesys-tower stack's own counters\n");
    println!("{details}");
    if failed_runs {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn parse_rates(list: &str) -> Option<Vec<f64>> {
    list.split(',')
        .map(|r| {
            r.trim()
                .parse::<f64>()
                .ok()
                .filter(|p| (0.0..=1.0).contains(p))
        })
        .collect()
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}
