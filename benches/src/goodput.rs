//! The goodput experiment: a bulk job of user updates (a GET for the version, then a PATCH, per
//! user) against the simulator with a per-token quota of Q requests per second, run by several
//! client strategies. What a user of a bulk tool notices: how long the job takes compared with the
//! ideal `N / Q`, how many 429s it provoked, and how many attempts each request needed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::join_all;
use genesys_client::GenesysClient;
use genesys_sim::{Faults, SimConfig, SimHandle, Simulator, Stats};
use genesys_tower::Metrics;
use genesys_tower::concurrency::ConcurrencyLayer;
use genesys_tower::metrics::MetricsSnapshot;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

/// The OAuth client the simulator accepts by default.
const CLIENT_ID: &str = "demo-client";
const CLIENT_SECRET: &str = "demo-secret";

/// Requests in flight for every strategy: the seeds' semaphore of 10.
pub const IN_FLIGHT: usize = 10;

/// User jobs the `genesys-client` strategies keep open at once: as many as the seeds' semaphore
/// lets through, and as `gcx` does (one unit of work per permit), so every strategy works on the
/// same number of users at a time.
pub const OPEN_JOBS: usize = IN_FLIGHT;

/// How the job is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// `genesys-client`'s stack, with client-side pacing at the quota (Q per second).
    Paced,
    /// `genesys-client`'s stack without pacing: the concurrency layer neither paces nor learns
    /// from rate-limit headers, so only the retry layer reacts, to each 429 and its
    /// `Retry-After`.
    Reactive,
    /// `genesys-client`'s stack without configured pacing, but learning the quota from the
    /// `inin-ratelimit-*` headers (the layer's default when no rate is given).
    Learning,
    /// `genesys-client`'s stack paced at Q per window with learning off: a fixed
    /// `--rate-limit`, the rate the user knows is right.
    Fixed,
    /// `genesys-client` as built by default: pacing starts at 300 per 60 s and adapts to what
    /// the server says (the adaptive pacer, told nothing).
    Defaults,
    /// The seeds' strategy (seed 001, with seed 000's retry loop), re-implemented faithfully: a
    /// semaphore of 10 around each user's update, users processed in chunks of 50, each request
    /// through a retry loop that sleeps `Retry-After` on 429 and backs off on 5xx and network
    /// errors (0.5 s base, factor 2, 30 s cap, plus up to 10 % jitter, at most 5 retries), no
    /// pacing.
    Seeds,
}

impl Strategy {
    /// Every strategy, in the order of the report.
    pub const ALL: [Strategy; 6] = [
        Strategy::Paced,
        Strategy::Reactive,
        Strategy::Learning,
        Strategy::Fixed,
        Strategy::Defaults,
        Strategy::Seeds,
    ];

    /// The short name used on the command line (`--strategies`).
    pub fn key(self) -> &'static str {
        match self {
            Strategy::Paced => "paced",
            Strategy::Reactive => "reactive",
            Strategy::Learning => "learning",
            Strategy::Fixed => "fixed",
            Strategy::Defaults => "defaults",
            Strategy::Seeds => "seeds",
        }
    }

    /// The name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Paced => "genesys-tower stack, paced at Q/s",
            Strategy::Reactive => "genesys-tower stack, reacting to 429s only",
            Strategy::Learning => "genesys-tower stack, learning from rate-limit headers",
            Strategy::Fixed => "genesys-tower stack, fixed pacing at Q per window (learning off)",
            Strategy::Defaults => "genesys-client defaults (starts at 300/60, adapts)",
            Strategy::Seeds => "seeds' strategy (semaphore 10, sleep on 429)",
        }
    }
}

/// One experiment.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// Users to update (1500 in the report).
    pub users: usize,
    /// The quota: requests per window per token (100 in the report).
    pub quota: u32,
    /// The quota's window in seconds (1 in the report).
    pub window_secs: u64,
    /// The share of answers that carry the `inin-ratelimit-*` headers (1 in the report).
    pub headers_share: f64,
    /// Probability of a 502/503/504 on any API request (0 or 0.05 in the report).
    pub server_errors: f64,
    /// Seed of the simulator's faults.
    pub seed: u64,
}

impl Setup {
    /// Requests the job needs when nothing fails: a GET and a PATCH per user.
    pub fn ideal_requests(&self) -> u64 {
        2 * self.users as u64
    }

    /// The quota's window.
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.window_secs.max(1))
    }

    /// The ideal completion time, `N / Q`.
    pub fn ideal_time(&self) -> Duration {
        Duration::from_secs_f64(
            self.ideal_requests() as f64 * self.window_secs.max(1) as f64
                / f64::from(self.quota.max(1)),
        )
    }
}

/// What one run measured.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Wall time from the first request to the last answer.
    pub elapsed: Duration,
    /// Users updated.
    pub updated: u64,
    /// Users not updated (the strategy gave up on them).
    pub failed: u64,
    /// Logical requests the client made (each counted once, however many attempts it took).
    pub requests: u64,
    /// Requests the simulator answered on the users routes (every attempt).
    pub attempts: u64,
    /// 429 responses the simulator sent.
    pub rate_limited: u64,
    /// The stack's own counters (the `genesys-client` strategies only).
    pub metrics: Option<MetricsSnapshot>,
}

/// Runs the job once on a fresh simulator (fresh quota, fresh users).
pub async fn run(setup: Setup, strategy: Strategy) -> Result<Outcome, String> {
    let faults = Faults {
        server_error: setup.server_errors,
        ..Faults::default()
    };
    let sim = Simulator::spawn(
        SimConfig::default()
            .users(setup.users)
            .rate_limit(Some((setup.quota, setup.window())))
            .ratelimit_headers_share(setup.headers_share)
            .faults(faults)
            .seed(setup.seed),
    )
    .await
    .map_err(|e| format!("the simulator did not start: {e}"))?;
    let ids = sim.user_ids();
    let (elapsed, updated, requests, metrics) = match strategy {
        Strategy::Seeds => {
            let (elapsed, updated, requests) = seeds_job(&sim, &ids).await?;
            (elapsed, updated, requests, None)
        }
        _ => client_job(&sim, &ids, setup, strategy).await?,
    };
    let stats = sim.stats();
    sim.shutdown().await;
    Ok(Outcome {
        elapsed,
        updated,
        failed: ids.len() as u64 - updated,
        requests,
        attempts: users_route_responses(&stats),
        rate_limited: stats.rate_limited,
        metrics,
    })
}

fn users_route_responses(stats: &Stats) -> u64 {
    stats
        .requests
        .iter()
        .filter(|(route, _)| route.contains("/api/v2/users"))
        .flat_map(|(_, by_status)| by_status.values())
        .sum()
}

fn fields(i: usize) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("department".into(), Value::from(format!("Benchmarks {i}")));
    m
}

async fn client_job(
    sim: &SimHandle,
    ids: &[String],
    setup: Setup,
    strategy: Strategy,
) -> Result<(Duration, u64, u64, Option<MetricsSnapshot>), String> {
    let metrics = Metrics::new();
    let builder = GenesysClient::builder()
        .base_url(sim.base_url())
        .client_credentials(CLIENT_ID, CLIENT_SECRET)
        .max_in_flight(IN_FLIGHT)
        .metrics(metrics.clone());
    let builder = match strategy {
        Strategy::Paced => builder.pacing(u64::from(setup.quota), setup.window()),
        Strategy::Fixed => builder.concurrency_layer(
            ConcurrencyLayer::new(IN_FLIGHT)
                .pacing(u64::from(setup.quota), setup.window())
                .learn_from_responses(false),
        ),
        Strategy::Defaults => builder,
        Strategy::Reactive => {
            builder.concurrency_layer(ConcurrencyLayer::new(IN_FLIGHT).learn_from_responses(false))
        }
        _ => builder.no_pacing(),
    };
    let client = builder
        .build()
        .map_err(|e| format!("the client could not be built: {e}"))?;
    let start = Instant::now();
    let updated: u64 = futures_util::stream::iter(ids.iter().enumerate())
        .map(|(i, id)| {
            let client = client.clone();
            async move { u64::from(client.update_user(id, fields(i)).await.is_ok()) }
        })
        .buffer_unordered(OPEN_JOBS)
        .fold(0, |n, ok| async move { n + ok })
        .await;
    let elapsed = start.elapsed();
    let snapshot = metrics.snapshot();
    Ok((elapsed, updated, snapshot.requests, Some(snapshot)))
}

/// The seeds' retrying transport: one logical request, retried in a loop.
#[derive(Clone)]
struct SeedTransport {
    http: Client<HttpConnector, Full<Bytes>>,
    base: String,
    token: Arc<str>,
    requests: Arc<AtomicU64>,
}

/// The seeds' `max_retries`, `base_delay`, `backoff_factor` and `max_delay`.
const SEED_MAX_RETRIES: u32 = 5;
const SEED_BASE: f64 = 0.5;
const SEED_FACTOR: f64 = 2.0;
const SEED_MAX: f64 = 30.0;

impl SeedTransport {
    fn delay(retries: u32) -> Duration {
        let exponent = i32::try_from(retries.saturating_sub(1)).unwrap_or(i32::MAX);
        let delay = (SEED_BASE * SEED_FACTOR.powi(exponent)).min(SEED_MAX);
        let jitter = SmallRng::from_os_rng().random_range(0.0..=0.1 * delay);
        Duration::from_secs_f64(delay + jitter)
    }

    /// Sends until the answer is neither 429 nor 5xx, or retries run out (then the last status).
    async fn send(
        &self,
        method: &Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Bytes), String> {
        self.requests.fetch_add(1, Relaxed);
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let mut retries = 0;
        loop {
            let request = Request::builder()
                .method(method.clone())
                .uri(format!("{}{path}", self.base))
                .header(header::AUTHORIZATION, format!("Bearer {}", self.token))
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::ACCEPT, "application/json")
                .body(Full::new(body.clone()))
                .map_err(|e| e.to_string())?;
            match self.http.request(request).await {
                Ok(response) => {
                    let status = response.status();
                    let retry_after = response
                        .headers()
                        .get(header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<f64>().ok());
                    // Read the body either way, so the connection goes back to the pool (the
                    // Python original leaves retried responses unread; this is kinder to it).
                    let bytes = response
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
                        retries += 1;
                        if retries > SEED_MAX_RETRIES {
                            return Ok((status, bytes));
                        }
                        let delay = match retry_after {
                            Some(secs) if status == StatusCode::TOO_MANY_REQUESTS => {
                                Duration::try_from_secs_f64(secs)
                                    .unwrap_or_else(|_| Self::delay(retries))
                            }
                            _ => Self::delay(retries),
                        };
                        tokio::time::sleep(delay).await;
                        continue;
                    }
                    return Ok((status, bytes));
                }
                Err(e) => {
                    retries += 1;
                    if retries > SEED_MAX_RETRIES {
                        return Err(e.to_string());
                    }
                    tokio::time::sleep(Self::delay(retries)).await;
                }
            }
        }
    }

    /// GET the version, PATCH with it; any final status other than 2xx fails the user.
    async fn update_user(&self, id: &str, i: usize) -> bool {
        let path = format!("/api/v2/users/{id}");
        let Ok((status, body)) = self.send(&Method::GET, &path, None).await else {
            return false;
        };
        if !status.is_success() {
            return false;
        }
        let Some(version) = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|u| u.get("version").and_then(Value::as_u64))
        else {
            return false;
        };
        let mut patch = fields(i);
        patch.insert("version".into(), Value::from(version));
        matches!(
            self.send(&Method::PATCH, &path, Some(&Value::Object(patch))).await,
            Ok((status, _)) if status.is_success()
        )
    }
}

async fn seed_token(
    http: &Client<HttpConnector, Full<Bytes>>,
    base: &str,
) -> Result<String, String> {
    let form = format!(
        "grant_type=client_credentials&client_id={CLIENT_ID}&client_secret={CLIENT_SECRET}"
    );
    let request = Request::post(format!("{base}/oauth/token"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form)))
        .map_err(|e| e.to_string())?;
    let response = http
        .request(request)
        .await
        .map_err(|e| format!("token request failed: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("token request answered {status}"));
    }
    serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("access_token")?.as_str().map(str::to_owned))
        .ok_or_else(|| "the token answer has no access_token".to_owned())
}

async fn seeds_job(sim: &SimHandle, ids: &[String]) -> Result<(Duration, u64, u64), String> {
    let http = Client::builder(TokioExecutor::new()).build_http();
    let base = sim.base_url();
    let start = Instant::now();
    let token = seed_token(&http, &base).await?;
    let transport = SeedTransport {
        http,
        base,
        token: Arc::from(token),
        requests: Arc::new(AtomicU64::new(0)),
    };
    let semaphore = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut updated = 0;
    // The seed's complete example: chunks of 50, each gathered before the next starts.
    for (c, chunk) in ids.chunks(50).enumerate() {
        let results = join_all(chunk.iter().enumerate().map(|(j, id)| {
            let (transport, semaphore) = (transport.clone(), semaphore.clone());
            async move {
                let Ok(_permit) = semaphore.acquire().await else {
                    return false;
                };
                transport.update_user(id, c * 50 + j).await
            }
        }))
        .await;
        updated += results.into_iter().filter(|ok| *ok).count() as u64;
    }
    Ok((start.elapsed(), updated, transport.requests.load(Relaxed)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_strategy_updates_every_user_under_a_generous_quota() {
        let setup = Setup {
            users: 20,
            quota: 10_000,
            window_secs: 1,
            headers_share: 1.0,
            server_errors: 0.0,
            seed: 1,
        };
        for strategy in Strategy::ALL {
            let o = run(setup, strategy).await.unwrap();
            assert_eq!(o.updated, 20, "{strategy:?}: {o:?}");
            assert_eq!(o.requests, 40, "{strategy:?}: {o:?}");
            assert_eq!(o.attempts, 40, "{strategy:?}: {o:?}");
            assert_eq!(o.rate_limited, 0, "{strategy:?}: {o:?}");
        }
    }
}
