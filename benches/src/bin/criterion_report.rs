//! Turns the criterion results of the `overhead` and `loopback` benches into markdown tables
//! with the figures the targets are stated in: added time per request over the raw service, and
//! throughput relative to raw hyper-util.
//!
//! ```text
//! cargo bench -p benches --bench overhead --bench loopback
//! cargo run --release -p benches --bin criterion_report [-- target/criterion]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use benches::Table;
use serde_json::Value;

/// One benchmark's estimate: nanoseconds per iteration (one request), with its 95 % interval.
#[derive(Debug, Clone, Copy)]
struct Estimate {
    point: f64,
    lower: f64,
    upper: f64,
}

/// The targets of issue 14, in ns added per request: each layer alone, and the full stack on a
/// GET and on a PATCH.
const LAYER_TARGET_NS: f64 = 300.0;
const STACK_GET_TARGET_NS: f64 = 1000.0;
const STACK_PATCH_TARGET_NS: f64 = 2000.0;

fn read(dir: &Path) -> BTreeMap<String, Estimate> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            if path.file_name().is_some_and(|n| n == "new") {
                if let Some((id, e)) = estimate(&path) {
                    out.insert(id, e);
                }
            } else if path
                .file_name()
                .is_some_and(|n| n != "base" && n != "report")
            {
                stack.push(path);
            }
        }
    }
    out
}

fn estimate(new: &Path) -> Option<(String, Estimate)> {
    let bench: Value =
        serde_json::from_str(&std::fs::read_to_string(new.join("benchmark.json")).ok()?).ok()?;
    let est: Value =
        serde_json::from_str(&std::fs::read_to_string(new.join("estimates.json")).ok()?).ok()?;
    let id = bench.get("full_id")?.as_str()?.to_owned();
    // The slope of the linear sampling is criterion's headline figure; the mean otherwise.
    let e = est
        .get("slope")
        .filter(|s| !s.is_null())
        .or_else(|| est.get("mean"))?;
    let ci = e.get("confidence_interval")?;
    Some((
        id,
        Estimate {
            point: e.get("point_estimate")?.as_f64()?,
            lower: ci.get("lower_bound")?.as_f64()?,
            upper: ci.get("upper_bound")?.as_f64()?,
        },
    ))
}

fn ns(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{:.2} µs", v / 1000.0)
    } else {
        format!("{v:.0} ns")
    }
}

fn main() -> ExitCode {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("target"))
                .join("criterion")
        });
    let results = read(&dir);
    if results.is_empty() {
        eprintln!(
            "no criterion results under {}: run `cargo bench -p benches` first, or pass the \
             criterion directory",
            dir.display()
        );
        return ExitCode::FAILURE;
    }

    if let Some(raw) = results.get("overhead/raw").copied() {
        println!("## Overhead per request over an in-memory service (no retry taken)\n");
        let mut t = Table::new([
            "service",
            "time per request [95 % CI]",
            "added over raw",
            "target",
            "within",
        ]);
        let mut rows: Vec<(&str, Estimate)> = results
            .iter()
            .filter_map(|(id, e)| Some((id.strip_prefix("overhead/")?, *e)))
            .collect();
        // Raw first, single layers next, the full stack last.
        rows.sort_by_key(|(name, _)| {
            (
                name.starts_with("full stack"),
                *name != "raw",
                name.to_string(),
            )
        });
        for (name, e) in rows {
            let added = e.point - raw.point;
            let target = if name == "raw" {
                None
            } else if name == "full stack PATCH" {
                Some(STACK_PATCH_TARGET_NS)
            } else if name.starts_with("full stack") {
                Some(STACK_GET_TARGET_NS)
            } else {
                Some(LAYER_TARGET_NS)
            };
            t.row([
                name.to_owned(),
                format!("{} [{} – {}]", ns(e.point), ns(e.lower), ns(e.upper)),
                if target.is_some() {
                    ns(added)
                } else {
                    "-".to_owned()
                },
                target.map_or("-".to_owned(), ns),
                target.map_or("-".to_owned(), |b| {
                    if added <= b {
                        "yes".to_owned()
                    } else {
                        "**no**".to_owned()
                    }
                }),
            ]);
        }
        println!("{t}");
    }

    let loopback: Vec<(&str, &str, Estimate)> = results
        .iter()
        .filter_map(|(id, e)| {
            let rest = id.strip_prefix("loopback/")?;
            let (client, n) = rest.rsplit_once('/')?;
            Some((client, n, *e))
        })
        .collect();
    if !loopback.is_empty() {
        println!("## Loopback throughput (hyper server on 127.0.0.1, bodies read to the end)\n");
        let mut t = Table::new([
            "client",
            "in flight",
            "time per request [95 % CI]",
            "requests/s",
            "throughput vs hyper-util",
        ]);
        let mut rows = loopback.clone();
        rows.sort_by_key(|(client, n, _)| {
            (
                n.parse::<u32>().unwrap_or(0),
                *client != "hyper-util",
                client.to_string(),
            )
        });
        for (client, n, e) in rows {
            let raw = loopback
                .iter()
                .find(|(c, m, _)| *c == "hyper-util" && *m == n)
                .map(|(_, _, r)| r.point);
            t.row([
                client.to_owned(),
                n.to_owned(),
                format!("{} [{} – {}]", ns(e.point), ns(e.lower), ns(e.upper)),
                format!("{:.0}", 1e9 / e.point),
                raw.map_or("-".to_owned(), |r| format!("{:.1} %", 100.0 * r / e.point)),
            ]);
        }
        println!("{t}");
    }
    ExitCode::SUCCESS
}
