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
    let sim = Simulator::spawn(config("revoke-every=30s", 1))
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
