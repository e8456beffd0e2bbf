//! `gcx policy check FILE`: checks a stack configuration and previews what its retry policy
//! will do, before it ships.

use std::fmt::Write as _;

use genesys_client::config::StackConfig;
use genesys_tower::retry::Backoff;
use serde::Serialize;

use crate::cli::PolicyCheckArgs;

mod plot;
mod versions;
pub(crate) mod watch;

use crate::error::{CliError, EXIT_OK};
pub(crate) use versions::run as manage;

/// Schedules sampled per preview.
const SAMPLES: u64 = 10_000;

/// The preview of one retry.
#[derive(Debug, Serialize)]
struct RetryDelay {
    /// The retry's number (1 is the first retry, the second attempt).
    retry: u32,
    min_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// What `policy check` prints, and `--json` writes.
#[derive(Debug, Serialize)]
struct Preview {
    file: String,
    valid: bool,
    version: String,
    max_attempts: u32,
    /// The statuses retried (429 and 5xx).
    retried_statuses: Vec<u16>,
    /// Whether 500, 502 and 504 are replayed only for requests safe to send twice.
    ambiguous_gateway_errors: bool,
    /// The per-route safety rules, in order: `METHOD ROUTE: SAFETY`.
    route_rules: Vec<String>,
    delays: Vec<RetryDelay>,
    /// The longest a failing call can take: every attempt timing out and every wait at its
    /// sampled maximum.
    worst_case_s: f64,
    deadline_s: f64,
    worst_case_within_deadline: bool,
    /// Retries per call during a full outage, in the long run: attempts allow `max_attempts - 1`,
    /// the budget allows `retry_ratio` per call plus `min_per_sec` per client.
    retries_per_failed_call: f64,
    clients: u32,
    call_rate_per_client: f64,
    /// Requests per second the fleet sends to the destination during a full outage.
    outage_request_rate: f64,
    destination_rate: Option<f64>,
    /// `outage_request_rate / destination_rate`.
    outage_load_vs_destination: Option<f64>,
    /// The fleet's request rate over time from the start of a full outage (answers that fail
    /// at once, the worst case for the destination): `[seconds, requests per second]`.
    outage_rate_over_time: Vec<[f64; 2]>,
}

/// Points of the rate-over-time curve.
const CURVE_POINTS: usize = 120;

pub(crate) fn check(args: &PolicyCheckArgs, json: bool) -> Result<u8, CliError> {
    let config = StackConfig::from_path(&args.file).map_err(|e| {
        CliError::usage(format!(
            "{} is not a valid configuration:\n{e}",
            args.file.display()
        ))
    })?;
    let preview = preview(&config, args);
    if let Some(path) = &args.plot {
        std::fs::write(path, plot::svg(&preview)).map_err(|e| {
            CliError::usage(format!("--plot {}: cannot be written: {e}", path.display()))
        })?;
    }
    if json {
        out!(
            "{}",
            serde_json::to_string(&preview).unwrap_or_else(|_| "{}".to_owned())
        );
    } else {
        out_part!("{}", table(&preview));
    }
    Ok(EXIT_OK)
}

fn preview(config: &StackConfig, args: &PolicyCheckArgs) -> Preview {
    let r = &config.retry;
    let retries = r.max_attempts.saturating_sub(1);
    // Sample whole schedules, as calls would draw them: retry n's delay depends on retry n-1's
    // under decorrelated jitter.
    let mut by_retry: Vec<Vec<f64>> = vec![Vec::with_capacity(SAMPLES as usize); retries as usize];
    // When each retry leaves, counted from the call's start, with answers that fail at once.
    let mut offsets: Vec<Vec<f64>> = vec![Vec::with_capacity(SAMPLES as usize); retries as usize];
    for i in 0..SAMPLES {
        let mut backoff = Backoff::new(r.base_delay.0, r.factor, r.max_delay.0)
            .jitter(r.jitter.jitter())
            .seed(args.seed.wrapping_add(i));
        let mut at = 0.0;
        for (samples, offset) in by_retry.iter_mut().zip(&mut offsets) {
            let delay = backoff.next_delay().as_secs_f64();
            at += delay;
            samples.push(delay * 1000.0);
            offset.push(at);
        }
    }
    for o in &mut offsets {
        o.sort_by(f64::total_cmp);
    }
    let delays: Vec<RetryDelay> = by_retry
        .into_iter()
        .enumerate()
        .map(|(n, mut v)| {
            v.sort_by(f64::total_cmp);
            let q = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
            RetryDelay {
                retry: u32::try_from(n + 1).unwrap_or(u32::MAX),
                min_ms: q(0.0),
                p50_ms: q(0.5),
                p99_ms: q(0.99),
                max_ms: q(1.0),
            }
        })
        .collect();
    let waits_s: f64 = delays.iter().map(|d| d.max_ms / 1000.0).sum();
    let worst_case_s =
        waits_s + f64::from(r.max_attempts) * config.timeouts.attempt.0.as_secs_f64();
    let deadline_s = r.deadline.0.as_secs_f64();

    let rate = args.call_rate;
    let by_attempts = f64::from(retries);
    let retries_per_failed_call = if r.budget.enabled && rate > 0.0 {
        by_attempts.min(r.budget.retry_ratio + f64::from(r.budget.min_per_sec) / rate)
    } else {
        by_attempts
    };
    let outage_request_rate = f64::from(args.clients) * rate * (1.0 + retries_per_failed_call);
    // Calls start at a steady rate; at time t after the outage began, retry k of the calls
    // started t - offset_k earlier leaves, for every call whose offset_k is at most t. The
    // budget scales the retries to what it allows in the long run.
    let scale = if by_attempts > 0.0 {
        retries_per_failed_call / by_attempts
    } else {
        0.0
    };
    let horizon = offsets
        .last()
        .and_then(|o| o.last().copied())
        .unwrap_or(0.0)
        .clamp(1.0, deadline_s.max(1.0));
    let outage_rate_over_time = (0..=CURVE_POINTS)
        .map(|i| {
            let t = horizon * 1.1 * i as f64 / CURVE_POINTS as f64;
            let leaving: f64 = offsets
                .iter()
                .map(|o| o.partition_point(|x| *x <= t) as f64 / o.len().max(1) as f64)
                .sum();
            [t, f64::from(args.clients) * rate * (1.0 + scale * leaving)]
        })
        .collect();
    Preview {
        file: args.file.display().to_string(),
        valid: true,
        version: r.version.clone(),
        max_attempts: r.max_attempts,
        retried_statuses: {
            let classifier = config.classifier();
            std::iter::once(429)
                .chain(500..=599)
                .filter(|&s| {
                    http::StatusCode::from_u16(s).is_ok_and(|status| classifier.retries(status))
                })
                .collect()
        },
        ambiguous_gateway_errors: r.ambiguous_gateway_errors,
        route_rules: r
            .routes
            .iter()
            .map(|rule| {
                let safety = serde_json::to_value(rule.safety)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                format!("{} {}: {safety}", rule.method, rule.route)
            })
            .collect(),
        delays,
        worst_case_s,
        deadline_s,
        worst_case_within_deadline: worst_case_s <= deadline_s,
        retries_per_failed_call,
        clients: args.clients,
        call_rate_per_client: rate,
        outage_request_rate,
        destination_rate: args.destination_rate,
        outage_load_vs_destination: args
            .destination_rate
            .filter(|d| *d > 0.0)
            .map(|d| outage_request_rate / d),
        outage_rate_over_time,
    }
}

fn table(p: &Preview) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{}: valid (policy {}, {} attempts)",
        p.file, p.version, p.max_attempts
    );
    let statuses: Vec<String> = p.retried_statuses.iter().map(u16::to_string).collect();
    let _ = writeln!(
        s,
        "  retried: {}{}; 408 and failures after sending only when safe to send twice",
        if statuses.is_empty() {
            "no status".to_owned()
        } else {
            statuses.join(", ")
        },
        if p.ambiguous_gateway_errors {
            " (500, 502 and 504 as ambiguous)"
        } else {
            ""
        }
    );
    for rule in &p.route_rules {
        let _ = writeln!(s, "  route   {rule}");
    }
    let _ = writeln!(
        s,
        "  retry   min        p50        p99        max      (delay before it, {SAMPLES} sampled schedules)"
    );
    for d in &p.delays {
        let _ = writeln!(
            s,
            "  {:<5}   {:<10} {:<10} {:<10} {}",
            d.retry,
            ms(d.min_ms),
            ms(d.p50_ms),
            ms(d.p99_ms),
            ms(d.max_ms)
        );
    }
    let _ = writeln!(
        s,
        "  worst case for a failing call: {:.1} s (every attempt timing out, every wait at its \
         longest) against a deadline of {:.0} s: {}",
        p.worst_case_s,
        p.deadline_s,
        if p.worst_case_within_deadline {
            "within"
        } else {
            "the deadline ends such a call first"
        }
    );
    let _ = writeln!(
        s,
        "  during a full outage: {:.2} retries per call; {} client(s) at {} calls/s send {:.1} \
         requests/s",
        p.retries_per_failed_call, p.clients, p.call_rate_per_client, p.outage_request_rate
    );
    if let (Some(d), Some(load)) = (p.destination_rate, p.outage_load_vs_destination) {
        let _ = writeln!(
            s,
            "  against a destination limit of {d} requests/s: {:.2}x, {}",
            load,
            if load <= 1.0 {
                "within the limit"
            } else {
                "over the limit: lower retry.max_attempts or retry.budget.retry_ratio, or \
                 fewer clients"
            }
        );
    }
    s
}

fn ms(v: f64) -> String {
    if v >= 1000.0 {
        format!("{:.2} s", v / 1000.0)
    } else {
        format!("{v:.0} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(file: &str) -> PolicyCheckArgs {
        PolicyCheckArgs {
            file: file.into(),
            clients: 10,
            call_rate: 5.0,
            destination_rate: Some(40.0),
            seed: 7,
            plot: None,
        }
    }

    #[test]
    fn the_plot_draws_every_retry_and_the_outage_rate_against_the_limit() {
        let config = StackConfig::from_toml("[retry]\nmax_attempts = 5\n").unwrap();
        let p = preview(&config, &args("p.toml"));
        // The rate starts at the calls alone and climbs to the long-run rate as retries join.
        let first = p.outage_rate_over_time[0][1];
        let last = p.outage_rate_over_time.last().unwrap()[1];
        assert!((first - 50.0).abs() < 1e-9, "{first}");
        assert!((last - p.outage_request_rate).abs() < 1e-6, "{last}");
        assert!(
            p.outage_rate_over_time
                .windows(2)
                .all(|w| w[1][1] >= w[0][1]),
            "never falls"
        );
        let svg = plot::svg(&p);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches(r#"class="retry""#).count(), 4);
        assert_eq!(svg.matches(r#"class="limit""#).count(), 1);
        let points = svg
            .split(r#"points=""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap();
        assert_eq!(points.split(' ').count(), CURVE_POINTS + 1);
        assert!(!svg.contains("NaN") && !svg.contains("inf"), "{svg}");
    }

    #[test]
    fn the_preview_follows_the_schedule_and_the_budget() {
        let config = StackConfig::from_toml(
            "[retry]\nmax_attempts = 4\nbase_delay = \"1s\"\nfactor = 2.0\nmax_delay = \"3s\"\njitter = \"none\"\ndeadline = \"5m\"\n[timeouts]\nattempt = \"10s\"",
        )
        .unwrap();
        let p = preview(&config, &args("x.toml"));
        let p50: Vec<f64> = p.delays.iter().map(|d| d.p50_ms).collect();
        assert_eq!(p50, [1000.0, 2000.0, 3000.0], "capped at 3 s, no jitter");
        assert!((p.worst_case_s - (6.0 + 40.0)).abs() < 1e-9);
        assert!(p.worst_case_within_deadline);
        // The budget (0.2 per call, 1 per second) bounds retries: 0.2 + 1/5 = 0.4 per call.
        assert!((p.retries_per_failed_call - 0.4).abs() < 1e-9);
        assert!((p.outage_request_rate - 10.0 * 5.0 * 1.4).abs() < 1e-9);
        assert!((p.outage_load_vs_destination.unwrap() - 70.0 / 40.0).abs() < 1e-9);
    }

    #[test]
    fn full_jitter_stays_under_the_exponential_delay() {
        let config = StackConfig::from_toml("[retry]\nmax_attempts = 3\n").unwrap();
        let p = preview(&config, &args("x.toml"));
        assert!(p.delays[0].max_ms <= 500.0 && p.delays[0].min_ms >= 0.0);
        assert!(p.delays[1].max_ms <= 1000.0 && p.delays[1].p50_ms > p.delays[0].p50_ms);
    }
}
