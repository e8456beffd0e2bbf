//! Seeded faults: rates within tolerance, reproducibility, and connection resets before and
//! after the effect.

mod common;

use std::time::Duration;

use common::{api, token};
use genesys_sim::{Faults, SimConfig, Simulator};
use serde_json::json;

fn config(spec: &str, seed: u64) -> SimConfig {
    SimConfig::default()
        .users(5)
        .rate_limit(None)
        .faults(spec.parse::<Faults>().unwrap())
        .seed(seed)
}

#[tokio::test]
async fn fault_rates_land_within_tolerance() {
    let sim = Simulator::spawn(config("5xx=0.1,503-retry-after=0.05", 7))
        .await
        .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    let path = format!("/api/v2/users/{}", sim.user_ids()[0]);
    let (mut plain, mut with_hint) = (0u32, 0u32);
    for _ in 0..2000 {
        let r = api(&base, &t, "GET", &path, "", &[]).await.unwrap();
        match (r.status, r.header("retry-after")) {
            (200, _) => {}
            (502..=504, None) => plain += 1,
            (503, Some(s)) => {
                assert!((1..=3).contains(&s.parse::<u64>().unwrap()));
                r.error_body(503, "service.unavailable");
                with_hint += 1;
            }
            (s, h) => panic!("unexpected {s} {h:?}"),
        }
    }
    // Binomial(2000, 0.1): mean 200, sd 13.4; (2000, 0.05): mean 100, sd 9.7.
    assert!((150..=250).contains(&plain), "5xx: {plain}");
    assert!(
        (65..=135).contains(&with_hint),
        "503-retry-after: {with_hint}"
    );
    let stats = sim.stats();
    assert_eq!(stats.fault_count("5xx"), u64::from(plain));
    assert_eq!(stats.fault_count("503-retry-after"), u64::from(with_hint));
}

/// Every exclusive fault at once, on a route with a side effect: each lands near its rate, the
/// statistics count what the client saw, and the ledger holds the successes plus exactly the
/// resets that came after the effect.
#[tokio::test]
async fn every_fault_rate_lands_within_tolerance_and_the_ledger_agrees() {
    const N: u32 = 3000;
    let spec = "5xx=0.1,500=0.05,503-retry-after=0.05,reset-before=0.05,reset-after=0.05,\
                long-retry-after=0.05";
    let sim = Simulator::spawn(config(spec, 21)).await.unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    let path = format!(
        "/api/v2/integrations/actions/{}/execute",
        genesys_sim::ECHO_ACTION_ID
    );
    let (mut ok, mut s500, mut s5xx, mut hinted, mut long, mut resets) = (0, 0, 0, 0, 0, 0);
    for i in 0..N {
        let body = json!({ "call": i }).to_string();
        let Ok(r) = api(&base, &t, "POST", &path, &body, &[]).await else {
            resets += 1;
            continue;
        };
        let after = r.header("retry-after").map(|s| s.parse::<u64>().unwrap());
        match (r.status, after) {
            (200, _) => ok += 1,
            (500, None) => s500 += 1,
            (502..=504, None) => s5xx += 1,
            (503, Some(1..=3)) => hinted += 1,
            (429, Some(181..=3600)) => {
                // The newer code for a Retry-After the client is told to honour.
                r.error_body(429, "too.many.requests.retry.after");
                long += 1;
            }
            (s, h) => panic!("unexpected {s} with Retry-After {h:?}"),
        }
    }
    // Binomial(3000, p): p = 0.1 gives mean 300, sd 16.4; p = 0.05 mean 150, sd 11.9.
    // Tolerance: five standard deviations, so a fixed seed passes and a wrong rate cannot.
    let within = |n: u32, p: f64| {
        let mean = f64::from(N) * p;
        let sd = (mean * (1.0 - p)).sqrt();
        (f64::from(n) - mean).abs() <= 5.0 * sd
    };
    assert!(within(s5xx, 0.1), "5xx: {s5xx}");
    assert!(within(s500, 0.05), "500: {s500}");
    assert!(within(hinted, 0.05), "503-retry-after: {hinted}");
    assert!(within(long, 0.05), "long-retry-after: {long}");
    assert!(within(resets, 0.1), "resets before and after: {resets}");
    assert!(within(ok, 0.65), "successes: {ok}");

    let stats = sim.stats();
    assert_eq!(stats.fault_count("5xx"), u64::from(s5xx));
    assert_eq!(stats.fault_count("500"), u64::from(s500));
    assert_eq!(stats.fault_count("503-retry-after"), u64::from(hinted));
    assert_eq!(stats.fault_count("long-retry-after"), u64::from(long));
    let (before, after) = (
        stats.fault_count("reset-before"),
        stats.fault_count("reset-after"),
    );
    assert_eq!(before + after, u64::from(resets));
    assert!(
        within(before as u32, 0.05) && within(after as u32, 0.05),
        "{before} {after}"
    );
    // Only successes and resets after the effect applied anything.
    assert_eq!(sim.ledger().len() as u64, u64::from(ok) + after);
}

async fn statuses(seed: u64) -> Vec<u16> {
    let sim = Simulator::spawn(config("5xx=0.3,500=0.1", seed))
        .await
        .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    let mut out = Vec::new();
    for _ in 0..100 {
        out.push(
            api(&base, &t, "GET", "/api/v2/users", "", &[])
                .await
                .unwrap()
                .status,
        );
    }
    out
}

#[tokio::test]
async fn the_same_seed_gives_the_same_faults() {
    let a = statuses(11).await;
    assert_eq!(a, statuses(11).await);
    assert_ne!(a, statuses(12).await);
    assert!(a.contains(&500) && a.iter().any(|s| (502..=504).contains(s)));
}

#[tokio::test]
async fn reset_after_applies_the_effect_but_the_client_gets_no_response() {
    let sim = Simulator::spawn(config("reset-after=1", 1)).await.unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    let id = sim.user_ids()[0].clone();
    let version = sim.user(&id).unwrap()["version"].as_u64().unwrap();
    let body = json!({"version": version, "title": "Reset After"}).to_string();

    let r = api(
        &base,
        &t,
        "PATCH",
        &format!("/api/v2/users/{id}"),
        &body,
        &[],
    )
    .await;
    assert!(r.is_err(), "the client must see an error, got {r:?}");
    assert_eq!(sim.ledger_count_for(&id), 1, "the effect was applied");
    assert_eq!(sim.user(&id).unwrap()["version"], version + 1);
    assert_eq!(sim.stats().fault_count("reset-after"), 1);

    let r = api(
        &base,
        &t,
        "POST",
        "/api/v2/integrations/actions/echo/execute",
        "{}",
        &[],
    )
    .await;
    assert!(r.is_err());
    assert_eq!(sim.ledger_count_for("echo"), 1);
}

/// A gateway that gave up waiting: the effect is in the ledger, and the caller gets a 504 as
/// from a failure before it.
#[tokio::test]
async fn gateway_after_applies_the_effect_and_answers_504() {
    let sim = Simulator::spawn(config("504-after=1", 1)).await.unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    let r = api(
        &base,
        &t,
        "POST",
        "/api/v2/integrations/actions/echo/execute",
        "{}",
        &[],
    )
    .await
    .unwrap();
    r.error_body(504, "gateway.timeout");
    assert_eq!(sim.ledger_count_for("echo"), 1, "the action ran");
    assert_eq!(sim.stats().fault_count("504-after"), 1);
}

#[tokio::test]
async fn reset_before_applies_nothing() {
    let sim = Simulator::spawn(config("reset-before=1", 1)).await.unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    let id = sim.user_ids()[0].clone();
    let before = sim.user(&id).unwrap();
    let body = json!({"version": before["version"], "title": "Never"}).to_string();
    let r = api(
        &base,
        &t,
        "PATCH",
        &format!("/api/v2/users/{id}"),
        &body,
        &[],
    )
    .await;
    assert!(r.is_err(), "the client must see an error, got {r:?}");
    assert_eq!(sim.ledger_len(), 0);
    assert_eq!(sim.user(&id).unwrap(), before);
    assert_eq!(sim.stats().fault_count("reset-before"), 1);
}

#[tokio::test]
async fn long_retry_after_is_beyond_180_seconds() {
    let sim = Simulator::spawn(config("long-retry-after=1", 1))
        .await
        .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    let r = api(&base, &t, "GET", "/api/v2/users", "", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 429);
    r.error_body(429, "too.many.requests.retry.after");
    let s: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!(s > 180, "{s}");
}

#[tokio::test(start_paused = true)]
async fn latency_delays_on_the_tokio_clock() {
    let sim = Simulator::spawn(config("latency=20ms..40ms", 1))
        .await
        .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    let start = tokio::time::Instant::now();
    let r = api(&base, &t, "GET", "/api/v2/users", "", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(20) && waited <= Duration::from_millis(41),
        "{waited:?}"
    );
    assert_eq!(sim.stats().fault_count("latency"), 1);
}

#[tokio::test(start_paused = true)]
async fn revoke_every_revokes_all_tokens_periodically() {
    let sim = Simulator::spawn(config("revoke-every=30s", 1).code_variants(0.0))
        .await
        .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    assert_eq!(
        api(&base, &t, "GET", "/api/v2/users", "", &[])
            .await
            .unwrap()
            .status,
        200
    );
    tokio::time::sleep(Duration::from_secs(31)).await;
    let r = api(&base, &t, "GET", "/api/v2/users", "", &[])
        .await
        .unwrap();
    r.error_body(401, "bad.credentials");
    assert_eq!(sim.stats().fault_count("revoke"), 1);
    let t = token(&base).await;
    assert_eq!(
        api(&base, &t, "GET", "/api/v2/users", "", &[])
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test]
async fn token_endpoint_faults_are_separate() {
    let sim = Simulator::spawn(config("5xx=1", 1)).await.unwrap();
    // API faults never hit /oauth/token: a token is still issued.
    let t = token(&sim.base_url()).await;
    assert_eq!(
        api(&sim.base_url(), &t, "GET", "/api/v2/users", "", &[])
            .await
            .unwrap()
            .status
            / 100,
        5
    );
    let sim = Simulator::spawn(config("token-5xx=1", 1)).await.unwrap();
    let r = common::send(
        &sim.base_url(),
        "POST",
        "/oauth/token",
        &[],
        "grant_type=client_credentials",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "temporarily_unavailable");
}
