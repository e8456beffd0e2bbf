//! GET /sim/ledger and GET /sim/stats mirror the handle's views.

mod common;

use common::{api, send, token};
use genesys_sim::{LedgerEntry, SimConfig, Simulator, Stats};
use serde_json::json;

#[tokio::test]
async fn ledger_and_stats_over_http_match_the_handle() {
    let sim = Simulator::spawn(SimConfig::default().users(2))
        .await
        .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    let id = sim.user_ids()[0].clone();
    let v = sim.user(&id).unwrap()["version"].clone();
    let r = api(
        &base,
        &t,
        "PATCH",
        &format!("/api/v2/users/{id}"),
        &json!({"version": v, "name": "N"}).to_string(),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let cid = r.header("inin-correlation-id").unwrap().to_string();

    let ledger: Vec<LedgerEntry> = serde_json::from_slice(
        &send(&base, "GET", "/sim/ledger", &[], "")
            .await
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(ledger, sim.ledger());
    assert_eq!(ledger[0].correlation_id, cid);
    assert_eq!(ledger[0].entity, id);
    assert_eq!(ledger[0].payload_hash.len(), 16);

    let stats: Stats = serde_json::from_slice(
        &send(&base, "GET", "/sim/stats", &[], "")
            .await
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(stats.count("PATCH /api/v2/users/{userId}", 200), 1);
    assert_eq!(stats.count("POST /oauth/token", 200), 1);
    assert_eq!(stats.tokens_issued, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_ledger_limit_bounds_memory_and_counts_what_it_dropped() {
    let sim = Simulator::spawn(SimConfig::default().users(1).ledger_limit(Some(2)))
        .await
        .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    for _ in 0..3 {
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
        assert_eq!(r.status, 200);
    }
    assert_eq!(sim.ledger_len(), 2);
    assert_eq!(sim.stats().ledger_dropped, 1);
}
