//! `gcx policy check --plot FILE.svg`: the preview as a picture, written by hand (two charts
//! of lines and boxes do not need a plotting library): the delay before each retry, and the
//! fleet's request rate over time during a full outage against the destination's limit.

use std::fmt::Write as _;

use super::Preview;

const WIDTH: f64 = 760.0;
const PANEL: f64 = 260.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 80.0;

/// Escapes text for SVG.
fn text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round upper bound for an axis: 1, 2 or 5 times a power of ten, at least `v`.
fn nice(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|c| *c >= v)
        .unwrap_or(10.0 * p)
}

fn axes(s: &mut String, top: f64, title: &str, x_label: &str, y_label: &str, y_max: f64) {
    let bottom = top + PANEL;
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="{}" font-size="15" font-weight="bold">{}</text>"##,
        top - 12.0,
        text(title)
    );
    let _ = writeln!(
        s,
        r##"<line x1="{LEFT}" y1="{top}" x2="{LEFT}" y2="{bottom}" stroke="#333"/><line x1="{LEFT}" y1="{bottom}" x2="{}" y2="{bottom}" stroke="#333"/>"##,
        WIDTH - RIGHT
    );
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let y = bottom - PANEL * f64::from(i) / 4.0;
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            short(v)
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"##,
        (LEFT + WIDTH - RIGHT) / 2.0,
        bottom + 34.0,
        text(x_label)
    );
    let _ = writeln!(
        s,
        r##"<text x="16" y="{:.1}" font-size="12" text-anchor="middle" transform="rotate(-90 16 {:.1})">{}</text>"##,
        top + PANEL / 2.0,
        top + PANEL / 2.0,
        text(y_label)
    );
}

fn short(v: f64) -> String {
    if v >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// The picture of a preview.
pub(super) fn svg(p: &Preview) -> String {
    let height = TOP + 2.0 * PANEL + GAP + 50.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif">"##
    );
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="white"/>"##);

    // 1. The delay before each retry: min to max (a line), p50 to p99 (a box), p50 (a mark).
    let y_max = nice(p.delays.iter().map(|d| d.max_ms).fold(0.0, f64::max));
    axes(
        &mut s,
        TOP,
        &format!(
            "{}: delay before each retry ({} attempts; min-max line, p50-p99 box)",
            p.version, p.max_attempts
        ),
        "retry",
        "delay (ms)",
        y_max,
    );
    let n = p.delays.len().max(1) as f64;
    let step = (WIDTH - LEFT - RIGHT) / n;
    let y = |v: f64| TOP + PANEL - PANEL * (v / y_max).clamp(0.0, 1.0);
    for (i, d) in p.delays.iter().enumerate() {
        let x = LEFT + step * (i as f64 + 0.5);
        let w = (step * 0.4).min(40.0);
        let _ = writeln!(
            s,
            r##"<g class="retry"><line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#4a6fa5"/><rect x="{:.1}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="#9db4d6" stroke="#4a6fa5"/><line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#1d3557" stroke-width="2"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text></g>"##,
            y(d.min_ms),
            y(d.max_ms),
            x - w / 2.0,
            y(d.p99_ms),
            (y(d.p50_ms) - y(d.p99_ms)).max(1.0),
            x - w / 2.0,
            y(d.p50_ms),
            x + w / 2.0,
            y(d.p50_ms),
            TOP + PANEL + 16.0,
            d.retry
        );
    }

    // 2. The fleet's request rate over time during a full outage.
    let top = TOP + PANEL + GAP;
    let peak = p
        .outage_rate_over_time
        .iter()
        .map(|[_, r]| *r)
        .fold(0.0, f64::max);
    let y_max = nice(peak.max(p.destination_rate.unwrap_or(0.0)) * 1.1);
    let t_max = p
        .outage_rate_over_time
        .last()
        .map_or(1.0, |[t, _]| *t)
        .max(f64::MIN_POSITIVE);
    axes(
        &mut s,
        top,
        &format!(
            "{} client(s) at {} calls/s: requests/s during a full outage",
            p.clients, p.call_rate_per_client
        ),
        &format!("seconds since the outage began (0 to {t_max:.1})"),
        "requests/s",
        y_max,
    );
    let x = |t: f64| LEFT + (WIDTH - LEFT - RIGHT) * (t / t_max).clamp(0.0, 1.0);
    let y = |v: f64| top + PANEL - PANEL * (v / y_max).clamp(0.0, 1.0);
    let points: Vec<String> = p
        .outage_rate_over_time
        .iter()
        .map(|[t, r]| format!("{:.1},{:.1}", x(*t), y(*r)))
        .collect();
    let _ = writeln!(
        s,
        r##"<polyline class="rate" points="{}" fill="none" stroke="#c0392b" stroke-width="2"/>"##,
        points.join(" ")
    );
    if let Some(limit) = p.destination_rate {
        let _ = writeln!(
            s,
            r##"<line class="limit" x1="{LEFT}" y1="{:.1}" x2="{}" y2="{:.1}" stroke="#2c3e50" stroke-dasharray="6 4"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">destination limit {}</text>"##,
            y(limit),
            WIDTH - RIGHT,
            y(limit),
            WIDTH - RIGHT,
            y(limit) - 5.0,
            short(limit)
        );
    }
    s.push_str("</svg>\n");
    s
}
