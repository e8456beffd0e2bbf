//! What the stack's spans and metrics cost on the happy path: the full stack over an in-memory
//! service with no recorder and no subscriber, with a Prometheus recorder installed, and with a
//! `tracing` subscriber that builds every span.
//!
//! ```text
//! cargo run --release -p benches --bin observability_cost -- [--rounds N] [--iters N]
//! ```
//!
//! Each variant runs in a process of its own (`tracing` caches per call site whether anyone
//! listens, so variants in one process would see each other's choice), the three processes
//! rotated round by round; each ratio is taken within its round. A child prints
//! `get_ns=<median> patch_ns=<median>` for `--variant NAME`.

use std::process::Command;

use benches::stack::{self, instant_service};
use genesys_tower::Metrics;
use http::Method;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

const VARIANTS: [(&str, &str); 3] = [
    ("bare", "no recorder, no subscriber"),
    ("recorder", "Prometheus recorder installed"),
    ("spans", "tracing subscriber at INFO (every span built)"),
];

fn main() {
    let (mut rounds, mut iters, mut variant) = (10u32, 20_000u32, None::<String>);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        let number = value
            .as_deref()
            .and_then(|v| v.parse::<u32>().ok())
            .filter(|n| *n > 0);
        match (arg.as_str(), number) {
            ("--rounds", Some(n)) => rounds = n,
            ("--iters", Some(n)) => iters = n,
            ("--variant", _) if value.is_some() => variant = value,
            _ => {
                eprintln!("usage: observability_cost [--rounds N] [--iters N] [--variant NAME]");
                std::process::exit(2);
            }
        }
    }
    match variant {
        Some(name) => child(&name, iters),
        None => parent(rounds, iters),
    }
}

/// Runs the variants in child processes, rotated round by round, and prints the table.
fn parent(rounds: u32, iters: u32) {
    let exe = std::env::current_exe().expect("the binary's path");
    // [round][variant] = (get ns, patch ns)
    let mut results: Vec<[(f64, f64); 3]> = Vec::new();
    for round in 0..rounds as usize {
        let mut row = [(0.0, 0.0); 3];
        for k in 0..3 {
            let v = (k + round) % 3;
            let out = Command::new(&exe)
                .args(["--variant", VARIANTS[v].0, "--iters", &iters.to_string()])
                .output()
                .expect("the child runs");
            let text = String::from_utf8_lossy(&out.stdout);
            let field = |name: &str| {
                text.split_whitespace()
                    .find_map(|kv| kv.strip_prefix(name))
                    .and_then(|n| n.parse::<f64>().ok())
                    .unwrap_or_else(|| panic!("no {name} in {text:?}"))
            };
            row[v] = (field("get_ns="), field("patch_ns="));
        }
        results.push(row);
    }
    println!(
        "| method | variant | ns per request (median of rounds) | ratio to bare (median) | IQR of the ratio |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for (m, method) in ["GET", "PATCH"].iter().enumerate() {
        let pick = |r: &(f64, f64)| if m == 0 { r.0 } else { r.1 };
        for (v, (_, name)) in VARIANTS.iter().enumerate() {
            let ns = quantile(results.iter().map(|r| pick(&r[v])).collect(), 0.5);
            let ratios: Vec<f64> = results.iter().map(|r| pick(&r[v]) / pick(&r[0])).collect();
            println!(
                "| {method} | {name} | {ns:.0} | {:.3} | {:.3} – {:.3} |",
                quantile(ratios.clone(), 0.5),
                quantile(ratios.clone(), 0.25),
                quantile(ratios, 0.75)
            );
        }
    }
}

/// One variant: sets it up, then times batches of GET and PATCH calls.
fn child(variant: &str, iters: u32) {
    match variant {
        "bare" => {}
        "recorder" => {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .expect("a recorder");
        }
        "spans" => tracing_subscriber::registry()
            .with(tracing_subscriber::filter::LevelFilter::INFO)
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink))
            .init(),
        other => {
            eprintln!("unknown variant {other}");
            std::process::exit(2);
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let metrics = Metrics::new();
    let svc = stack::full_stack(
        instant_service(),
        stack::concurrency(64, &metrics),
        &metrics,
    );
    let (get, patch) = rt.block_on(async move {
        stack::time_calls(svc.clone(), Method::GET, iters / 5).await;
        stack::time_calls(svc.clone(), Method::PATCH, iters / 5).await;
        let (mut get, mut patch) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            get.push(stack::time_calls(svc.clone(), Method::GET, iters).await);
            patch.push(stack::time_calls(svc.clone(), Method::PATCH, iters).await);
        }
        (quantile(get, 0.5), quantile(patch, 0.5))
    });
    println!("get_ns={get:.0} patch_ns={patch:.0}");
}

fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}
