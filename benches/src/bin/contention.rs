//! The AWS contention experiment (optimistic-concurrency writers, one winner per round) driven by
//! genesys-tower's own backoff schedules in simulated time. Prints markdown tables.
//!
//! ```text
//! cargo run --release -p benches --bin contention [-- --runs 100 --seed 1]
//! ```

use std::process::ExitCode;
use std::time::Duration;

use benches::Table;
use benches::contention::{Outcome, Setup, Strategy};
use benches::table::thousands;
use genesys_tower::retry::Jitter;

/// The published-style figures at 100 clients (anchors: mean of 100 runs).
const ANCHORS: [(Strategy, u64, f64); 4] = [
    (Strategy::Backoff(Jitter::None), 1859, 63.5),
    (Strategy::Backoff(Jitter::Full), 795, 4.9),
    (Strategy::Backoff(Jitter::Equal), 812, 6.7),
    (Strategy::Backoff(Jitter::Decorrelated), 1003, 4.7),
];

const USAGE: &str = "usage: contention [--runs N (default 100)] [--seed S (default 1)]";

fn main() -> ExitCode {
    let mut runs: u32 = 100;
    let mut seed: u64 = 1;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        let parsed = match (arg.as_str(), value.as_deref()) {
            ("--runs", Some(v)) => v.parse().map(|v| runs = v).is_ok(),
            ("--seed", Some(v)) => v.parse().map(|v| seed = v).is_ok(),
            _ => false,
        };
        if !parsed {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    }

    let client_counts: Vec<usize> = (1..=19).map(|i| i * 10).collect();
    let results: Vec<(usize, Vec<Outcome>)> = client_counts
        .iter()
        .map(|&clients| {
            let row = Strategy::ALL
                .iter()
                .map(|&strategy| {
                    Setup {
                        clients,
                        strategy,
                        ..Setup::default()
                    }
                    .mean(runs, seed)
                })
                .collect();
            (clients, row)
        })
        .collect();

    println!("## Contention: {runs} runs per cell, base 5 ms, cap 2 s, network |N(10 ms, 2 ms)|\n");
    println!("### 100 clients, against the published re-run (anchors)\n");
    let mut headline = Table::new([
        "strategy",
        "calls (ours)",
        "time (ours)",
        "calls (anchor)",
        "time (anchor)",
    ]);
    let at_100 = &results
        .iter()
        .find(|(c, _)| *c == 100)
        .expect("100 is in 10..=190")
        .1;
    for (i, strategy) in Strategy::ALL.iter().enumerate() {
        let o = at_100[i];
        let (calls, time) = ANCHORS
            .iter()
            .find(|(s, _, _)| s == strategy)
            .map_or(("-".to_owned(), "-".to_owned()), |(_, c, t)| {
                (thousands(*c), format!("{t:.1} s"))
            });
        headline.row([
            strategy.to_string(),
            thousands(o.calls.round() as u64),
            secs(o.time),
            calls,
            time,
        ]);
    }
    println!("{headline}");

    let header: Vec<String> = std::iter::once("clients".to_owned())
        .chain(Strategy::ALL.iter().map(ToString::to_string))
        .collect();
    println!("### Calls (writes received by the server), mean per run\n");
    let mut calls = Table::new(header.clone());
    for (clients, row) in &results {
        calls.row(
            std::iter::once(clients.to_string())
                .chain(row.iter().map(|o| thousands(o.calls.round() as u64))),
        );
    }
    println!("{calls}");
    println!("### Time until every client is done, mean per run\n");
    let mut times = Table::new(header);
    for (clients, row) in &results {
        times.row(std::iter::once(clients.to_string()).chain(row.iter().map(|o| secs(o.time))));
    }
    println!("{times}");
    ExitCode::SUCCESS
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}
