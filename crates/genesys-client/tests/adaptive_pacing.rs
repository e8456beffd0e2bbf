//! A users job against quotas the client was not told about, on a paused clock: the pacer
//! infers the window from the server's headers (on every answer, or on half of them), reaches
//! the requested state with few 429s, and finishes close to N/Q.

use std::sync::Arc;
use std::time::Duration;

use genesys_client::{GenesysClient, Metrics};
use genesys_sim::{RetryAfterFormat, SimConfig, Simulator};
use serde_json::{Map, Value};
use tokio::time::Instant;

struct Outcome {
    took: Duration,
    requests: u64,
    rate_limited: u64,
}

/// Renames `users` users (a GET and a PATCH each) against a quota of `quota` per `window`,
/// with the rate-limit headers on `share` of the answers; the client starts from its default
/// pacing (300 per 60 s) and learns the rest.
async fn users_job(users: usize, quota: u32, window: Duration, share: f64) -> Outcome {
    users_job_with(users, quota, window, share, |c| c).await
}

async fn users_job_with(
    users: usize,
    quota: u32,
    window: Duration,
    share: f64,
    configure: impl FnOnce(SimConfig) -> SimConfig,
) -> Outcome {
    let sim = Simulator::spawn(configure(
        SimConfig::default()
            .users(users)
            .rate_limit(Some((quota, window)))
            .ratelimit_headers_share(share)
            .seed(5),
    ))
    .await
    .unwrap();
    let metrics = Metrics::new();
    let client = Arc::new(
        GenesysClient::builder()
            .base_url(sim.base_url())
            .client_credentials("demo-client", "demo-secret")
            .max_in_flight(16)
            .metrics(metrics.clone())
            .build()
            .unwrap(),
    );
    let started = Instant::now();
    let tasks: Vec<_> = sim
        .user_ids()
        .into_iter()
        .map(|id| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut fields = Map::new();
                fields.insert("title".into(), Value::String(format!("renamed {id}")));
                client.update_user(&id, fields).await.map(|u| (id, u))
            })
        })
        .collect();
    for task in tasks {
        let (id, user) = task.await.unwrap().unwrap();
        assert_eq!(user.other["title"], Value::String(format!("renamed {id}")));
    }
    let took = started.elapsed();
    for id in sim.user_ids() {
        assert_eq!(
            sim.user(&id).unwrap()["title"],
            Value::String(format!("renamed {id}")),
            "the requested state"
        );
    }
    let stats = sim.stats();
    let requests = stats.status_count(200) + stats.status_count(429);
    sim.shutdown().await;
    Outcome {
        took,
        requests,
        rate_limited: stats.rate_limited,
    }
}

fn check(outcome: &Outcome, quota: u32, window: Duration) {
    // N/Q: the requests the job needs, over the quota's rate.
    let ideal = window.mul_f64(outcome.requests as f64 / f64::from(quota));
    assert!(
        outcome.took <= ideal.mul_f64(1.3) + Duration::from_secs(1),
        "took {:?} for {} requests; N/Q is {ideal:?}",
        outcome.took,
        outcome.requests
    );
    assert!(
        outcome.rate_limited * 20 < outcome.requests,
        "{} 429s of {} requests",
        outcome.rate_limited,
        outcome.requests
    );
}

#[tokio::test(start_paused = true)]
async fn a_one_second_window_with_headers_on_half_the_answers() {
    let quota = 40;
    let window = Duration::from_secs(1);
    let outcome = users_job(150, quota, window, 0.5).await;
    check(&outcome, quota, window);
}

#[tokio::test(start_paused = true)]
async fn a_one_second_window_with_headers_on_every_answer() {
    let quota = 40;
    let window = Duration::from_secs(1);
    let outcome = users_job(150, quota, window, 1.0).await;
    check(&outcome, quota, window);
}

#[tokio::test(start_paused = true)]
async fn a_minute_window_with_headers_on_half_the_answers() {
    let quota = 100;
    let window = Duration::from_secs(60);
    let outcome = users_job(150, quota, window, 0.5).await;
    check(&outcome, quota, window);
}

#[tokio::test(start_paused = true)]
async fn retry_after_as_a_date_or_malformed_and_a_flaky_login_host() {
    // The login host answers 503 a third of the time; Retry-After comes as an HTTP-date, then
    // as something no parser accepts (the client falls back to the rate-limit headers and its
    // backoff). The job still reaches the requested state.
    for format in [RetryAfterFormat::HttpDate, RetryAfterFormat::Malformed] {
        let quota = 40;
        let window = Duration::from_secs(1);
        let outcome = users_job_with(100, quota, window, 0.5, |c| {
            c.retry_after_format(format)
                .faults("token-5xx=0.3".parse().unwrap())
        })
        .await;
        check(&outcome, quota, window);
    }
}
