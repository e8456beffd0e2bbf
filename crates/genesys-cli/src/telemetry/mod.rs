//! gcx's metrics: the stack's labelled metrics recorded in a Prometheus recorder, served on
//! `--metrics-addr` while a job runs, summed per route for the report, and with the `otlp`
//! feature sent to an OpenTelemetry collector too.

#[cfg(feature = "otlp")]
pub(crate) mod otlp;

/// What exports spans and metrics beyond the process: OTLP with the `otlp` feature, nothing
/// without it.
#[cfg(feature = "otlp")]
pub(crate) type Export = otlp::Otlp;
/// What exports spans and metrics beyond the process: OTLP with the `otlp` feature, nothing
/// without it.
#[cfg(not(feature = "otlp"))]
pub(crate) type Export = NoExport;

/// Without the `otlp` feature there is no exporter: this type has no value.
#[cfg(not(feature = "otlp"))]
#[derive(Debug)]
pub(crate) enum NoExport {}

#[cfg(not(feature = "otlp"))]
impl NoExport {
    #[allow(clippy::extra_unused_type_parameters)] // the same call as the `otlp` feature's
    pub(crate) fn layer<S>(&self) -> tracing_subscriber::layer::Identity {
        match *self {}
    }
}

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use genesys_tower::metrics::MetricsSnapshot;
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::error::CliError;

/// The latency histograms' bucket bounds, in seconds: a loopback call to a call held back by a
/// long `Retry-After`.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0,
];

/// How often the recorder's latency samples are folded into its histograms. The recorder
/// keeps every sample until then: folded only when `/metrics` was read, a job that nothing
/// scrapes would hold all of them (some 16 bytes a sample, several a record) to its end.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The recorder's handle, its upkeep, and the `/metrics` server when there is one.
#[derive(Debug)]
pub(crate) struct Telemetry {
    handle: PrometheusHandle,
    upkeep: JoinHandle<()>,
    server: Option<(SocketAddr, JoinHandle<()>)>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.upkeep.abort();
        if let Some((_, server)) = &self.server {
            server.abort();
        }
    }
}

/// Runs `upkeep` every [`UPKEEP_EVERY`], until aborted.
fn every_period(upkeep: impl Fn() + Send + 'static) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(UPKEEP_EVERY);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            upkeep();
        }
    })
}

impl Telemetry {
    /// Installs the recorder (once per process) and, with an address, serves it on
    /// `http://ADDR/metrics`. A port that cannot be bound is a usage error: nothing is sent.
    pub(crate) async fn start(
        addr: Option<SocketAddr>,
        export: Option<&Export>,
    ) -> Result<Telemetry, CliError> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), BUCKETS)
            .map_err(|e| CliError::runtime(format!("metrics: {e}")))?
            .build_recorder();
        let handle = recorder.handle();
        // A second job in the same process (tests) keeps the first recorder.
        #[cfg(feature = "otlp")]
        let installed = match export {
            Some(otlp) => metrics::set_global_recorder(otlp.recorder(recorder)).is_ok(),
            None => metrics::set_global_recorder(recorder).is_ok(),
        };
        #[cfg(not(feature = "otlp"))]
        let installed = {
            let _ = export;
            metrics::set_global_recorder(recorder).is_ok()
        };
        let handle = match installed {
            true => handle,
            false => {
                return Err(CliError::runtime(
                    "metrics: a recorder is installed already",
                ));
            }
        };
        let server = match addr {
            None => None,
            Some(addr) => {
                let listener = TcpListener::bind(addr).await.map_err(|e| {
                    CliError::usage(format!(
                        "--metrics-addr {addr}: cannot listen there ({e}); pick a free port, \
                         e.g. 127.0.0.1:9464"
                    ))
                })?;
                let bound = listener.local_addr().unwrap_or(addr);
                tracing::info!(%bound, "serving metrics on http://{bound}/metrics");
                Some((bound, tokio::spawn(serve(listener, handle.clone()))))
            }
        };
        let upkeep = every_period({
            let handle = handle.clone();
            move || handle.run_upkeep()
        });
        Ok(Telemetry {
            handle,
            upkeep,
            server,
        })
    }

    /// Where `/metrics` is served, if it is.
    pub(crate) fn addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().map(|(addr, _)| *addr)
    }

    /// The Prometheus text exposition of everything recorded so far.
    pub(crate) fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }

    /// The stack's totals and its metrics per route, for the report.
    pub(crate) fn stack(&self, totals: MetricsSnapshot) -> StackMetrics {
        StackMetrics {
            totals,
            routes: routes(&self.render()),
        }
    }

    /// Keeps serving `/metrics` for `linger` after the job (so that a scraper reads the final
    /// counts), or until Ctrl-C or SIGTERM (not at all after one stopped the job); then stops.
    pub(crate) async fn stop(mut self, linger: Duration) {
        let Some((addr, task)) = self.server.take() else {
            return;
        };
        // Before it says how to stop it: a signal from then on ends the linger.
        crate::signals::install();
        if !linger.is_zero() && !crate::signals::stop_was_asked() {
            say!(
                "gcx: serving the final metrics on http://{addr}/metrics for {}s (Ctrl-C or \
                 SIGTERM to stop)",
                linger.as_secs()
            );
            tokio::select! {
                () = tokio::time::sleep(linger) => {}
                () = crate::signals::stop_asked() => {}
            }
        }
        task.abort();
    }
}

/// The most connections served at once: a scraper needs one.
const MAX_CONNECTIONS: usize = 32;
/// How long a connection may take to send a request's head (or sit idle between two).
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Answers `GET /metrics` (and nothing else) on every connection.
async fn serve(listener: TcpListener, handle: PrometheusHandle) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Waits for a free slot first: idle or slow connections cannot use up the job's
        // descriptors.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, say: trying again at once would spin a core.
                tracing::debug!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let handle = handle.clone();
                async move { Ok::<_, Infallible>(answer(&req, &handle)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(slot);
        });
    }
}

fn answer(req: &Request<Incoming>, handle: &PrometheusHandle) -> Response<Full<Bytes>> {
    let (status, kind, body) = if req.uri().path() != "/metrics" {
        (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: the metrics are at /metrics\n".to_owned(),
        )
    } else if req.method() != http::Method::GET {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET /metrics\n".to_owned(),
        )
    } else {
        handle.run_upkeep();
        (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            handle.render(),
        )
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(kind) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

/// What the HTTP stack says about a job: its totals, and its metrics per route.
#[derive(Debug)]
pub(crate) struct StackMetrics {
    pub(crate) totals: MetricsSnapshot,
    pub(crate) routes: Vec<RouteMetrics>,
}

/// What the stack did on one route, from its metrics.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct RouteMetrics {
    pub(crate) method: String,
    pub(crate) route: String,
    /// Calls by outcome (`2xx`, `4xx`, `error`, ...).
    pub(crate) calls: BTreeMap<String, u64>,
    /// Attempts by outcome.
    pub(crate) attempts: BTreeMap<String, u64>,
    /// Retries by reason.
    pub(crate) retries: BTreeMap<String, u64>,
    /// 429 responses.
    pub(crate) rate_limited: u64,
    /// The calls' latency.
    pub(crate) latency: Histogram,
}

/// A latency histogram: cumulative counts per upper bound, in seconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub(crate) struct Histogram {
    pub(crate) count: u64,
    pub(crate) sum_seconds: f64,
    /// `(upper bound in seconds, calls at most that long)`, the last bound `+Inf`.
    pub(crate) buckets: Vec<(String, u64)>,
}

impl Histogram {
    /// The smallest bucket bound under which at least `q` of the calls fall (`q` in 0..=1).
    pub(crate) fn quantile_bound(&self, q: f64) -> Option<&str> {
        if self.count == 0 {
            return None;
        }
        // The rank, rounded up: the q-th call of `count`.
        let rank = (q * self.count as f64).ceil().max(1.0) as u64;
        self.buckets
            .iter()
            .find(|(_, n)| *n >= rank)
            .map(|(le, _)| le.as_str())
    }
}

/// One sample line of the exposition: name, labels, value.
fn sample(line: &str) -> Option<(&str, BTreeMap<&str, &str>, f64)> {
    let (head, value) = line.rsplit_once(' ')?;
    let value = value.parse::<f64>().ok()?;
    let (name, labels) = match head.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (head, ""),
    };
    let mut map = BTreeMap::new();
    // Our label values are route templates, methods, classes and reasons: no `",` inside.
    for pair in labels.split("\",").filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once("=\"")?;
        map.insert(k, v.trim_end_matches('"'));
    }
    Some((name, map, value))
}

/// Sums the stack's series per (method, route).
pub(crate) fn routes(text: &str) -> Vec<RouteMetrics> {
    use genesys_tower::metrics::names;
    let mut out: BTreeMap<(String, String), RouteMetrics> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, labels, value)) = sample(line) else {
            continue;
        };
        let (Some(method), Some(route)) = (labels.get("method"), labels.get("route")) else {
            continue;
        };
        let entry = out
            .entry(((*method).to_owned(), (*route).to_owned()))
            .or_insert_with(|| RouteMetrics {
                method: (*method).to_owned(),
                route: (*route).to_owned(),
                ..RouteMetrics::default()
            });
        let n = value as u64;
        let label = |k: &str| labels.get(k).map_or_else(String::new, |v| (*v).to_owned());
        let call_duration = names::CALL_DURATION;
        match name {
            _ if name == names::CALLS => *entry.calls.entry(label("outcome")).or_default() += n,
            _ if name == names::ATTEMPTS => {
                *entry.attempts.entry(label("outcome")).or_default() += n;
            }
            _ if name == names::RETRIES => *entry.retries.entry(label("reason")).or_default() += n,
            _ if name == names::RATE_LIMITED => entry.rate_limited += n,
            _ if name.strip_prefix(call_duration) == Some("_count") => entry.latency.count += n,
            _ if name.strip_prefix(call_duration) == Some("_sum") => {
                entry.latency.sum_seconds += value;
            }
            _ if name.strip_prefix(call_duration) == Some("_bucket") => {
                let le = label("le");
                match entry.latency.buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, count)) => *count += n,
                    None => entry.latency.buckets.push((le, n)),
                }
            }
            _ => {}
        }
    }
    let mut routes: Vec<RouteMetrics> = out.into_values().collect();
    for r in &mut routes {
        r.latency.buckets.sort_by(|a, b| {
            let bound = |s: &str| s.parse::<f64>().unwrap_or(f64::INFINITY);
            bound(&a.0).total_cmp(&bound(&b.0))
        });
    }
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The samples are folded in every few seconds, whether or not anything reads `/metrics`.
    #[tokio::test(start_paused = true)]
    async fn the_recorder_is_kept_up_without_a_scraper() {
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let task = every_period({
            let runs = runs.clone();
            move || {
                runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        tokio::time::sleep(UPKEEP_EVERY * 10 + UPKEEP_EVERY / 2).await;
        // At once, then every period.
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 11);
        task.abort();
    }

    const TEXT: &str = r#"# TYPE genesys_tower_calls_total counter
genesys_tower_calls_total{method="PATCH",route="/api/v2/users/{userId}",outcome="2xx",policy_version="default"} 9
genesys_tower_calls_total{method="PATCH",route="/api/v2/users/{userId}",outcome="4xx",policy_version="default"} 1
genesys_tower_attempts_total{method="PATCH",route="/api/v2/users/{userId}",outcome="5xx"} 3
genesys_tower_retries_total{method="PATCH",route="/api/v2/users/{userId}",reason="server_error",policy_version="default"} 3
genesys_tower_rate_limited_total{method="PATCH",route="/api/v2/users/{userId}"} 2
genesys_tower_calls_in_flight 0
genesys_tower_call_duration_seconds_bucket{method="PATCH",route="/api/v2/users/{userId}",outcome="2xx",policy_version="default",le="0.1"} 8
genesys_tower_call_duration_seconds_bucket{method="PATCH",route="/api/v2/users/{userId}",outcome="2xx",policy_version="default",le="1"} 9
genesys_tower_call_duration_seconds_bucket{method="PATCH",route="/api/v2/users/{userId}",outcome="2xx",policy_version="default",le="+Inf"} 9
genesys_tower_call_duration_seconds_bucket{method="PATCH",route="/api/v2/users/{userId}",outcome="4xx",policy_version="default",le="0.1"} 1
genesys_tower_call_duration_seconds_bucket{method="PATCH",route="/api/v2/users/{userId}",outcome="4xx",policy_version="default",le="1"} 1
genesys_tower_call_duration_seconds_bucket{method="PATCH",route="/api/v2/users/{userId}",outcome="4xx",policy_version="default",le="+Inf"} 1
genesys_tower_call_duration_seconds_sum{method="PATCH",route="/api/v2/users/{userId}",outcome="2xx",policy_version="default"} 1.5
genesys_tower_call_duration_seconds_count{method="PATCH",route="/api/v2/users/{userId}",outcome="2xx",policy_version="default"} 9
genesys_tower_call_duration_seconds_count{method="PATCH",route="/api/v2/users/{userId}",outcome="4xx",policy_version="default"} 1
"#;

    #[test]
    fn the_exposition_is_summed_per_route() {
        let routes = routes(TEXT);
        assert_eq!(routes.len(), 1);
        let r = &routes[0];
        assert_eq!(
            (r.method.as_str(), r.route.as_str()),
            ("PATCH", "/api/v2/users/{userId}")
        );
        assert_eq!(r.calls["2xx"], 9);
        assert_eq!(r.calls["4xx"], 1);
        assert_eq!(r.attempts["5xx"], 3);
        assert_eq!(r.retries["server_error"], 3);
        assert_eq!(r.rate_limited, 2);
        assert_eq!(r.latency.count, 10);
        assert_eq!(
            r.latency.buckets,
            [
                ("0.1".to_owned(), 9),
                ("1".to_owned(), 10),
                ("+Inf".to_owned(), 10)
            ]
        );
        assert_eq!(r.latency.quantile_bound(0.5), Some("0.1"));
        assert_eq!(r.latency.quantile_bound(0.99), Some("1"));
    }

    #[test]
    fn junk_lines_are_skipped() {
        assert!(routes("garbage\nname{unclosed 1\nx{a=\"b\"} notanumber\n").is_empty());
    }
}
