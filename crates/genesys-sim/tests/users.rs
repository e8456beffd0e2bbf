//! Users: get, paged listing, and PATCH with the real version rules.

mod common;

use common::{api, token};
use genesys_sim::{SimConfig, Simulator, user_id};
use serde_json::json;

#[tokio::test]
async fn seeded_users_are_stable_and_listed_in_pages() {
    let sim = Simulator::spawn(SimConfig::default().users(30).seed(9))
        .await
        .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    assert_eq!(sim.user_ids()[3], user_id(9, 3));

    let r = api(
        &base,
        &t,
        "GET",
        "/api/v2/users?pageSize=25&pageNumber=2",
        "",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("inin-correlation-id").is_some());
    assert_eq!(r.header("inin-ratelimit-allowed"), Some("300"));
    let b = r.json();
    assert_eq!(b["total"], 30);
    assert_eq!(b["pageCount"], 2);
    assert_eq!(b["pageNumber"], 2);
    assert_eq!(b["entities"].as_array().unwrap().len(), 5);
    assert_eq!(b["entities"][0]["id"], user_id(9, 25));

    let id = user_id(9, 0);
    let r = api(&base, &t, "GET", &format!("/api/v2/users/{id}"), "", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let u = r.json();
    for field in [
        "name",
        "email",
        "title",
        "department",
        "state",
        "version",
        "selfUri",
    ] {
        assert!(!u[field].is_null(), "{field} missing in {u}");
    }
    assert_eq!(u, sim.user(&id).unwrap());

    let r = api(&base, &t, "GET", "/api/v2/users?pageSize=0", "", &[])
        .await
        .unwrap();
    r.error_body(400, "bad.request");
}

#[tokio::test]
async fn patch_follows_the_version_rules() {
    let sim = Simulator::spawn(SimConfig::default().users(3).code_variants(0.0))
        .await
        .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    let id = sim.user_ids()[1].clone();
    let path = format!("/api/v2/users/{id}");
    let version = sim.user(&id).unwrap()["version"].as_u64().unwrap();

    // Seed 001's request: no version. The real API answers 400.
    let r = api(&base, &t, "PATCH", &path, r#"{"email":"a@b.example"}"#, &[])
        .await
        .unwrap();
    let b = r.error_body(400, "bad.request");
    assert_eq!(b["details"][0]["fieldName"], "version");

    let r = api(
        &base,
        &t,
        "PATCH",
        &path,
        &json!({"version": version, "colour": "red"}).to_string(),
        &[],
    )
    .await
    .unwrap();
    let b = r.error_body(400, "bad.request");
    assert_eq!(b["details"][0]["fieldName"], "colour");

    let r = api(
        &base,
        &t,
        "PATCH",
        &path,
        &json!({"version": version + 5, "title": "Lead"}).to_string(),
        &[],
    )
    .await
    .unwrap();
    let b = r.error_body(409, "general.conflict");
    assert_eq!(
        b["message"],
        "The version supplied does not match the current version of the user"
    );

    let missing = format!("/api/v2/users/{}", user_id(12345, 0));
    let r = api(
        &base,
        &t,
        "PATCH",
        &missing,
        &json!({"version": 1, "title": "x"}).to_string(),
        &[],
    )
    .await
    .unwrap();
    r.error_body(404, "not.found");
    assert_eq!(sim.ledger_len(), 0, "no error applied anything");

    let r = api(
        &base,
        &t,
        "PATCH",
        &path,
        &json!({"version": version, "title": "Team Lead"}).to_string(),
        &[("idempotency-key", "k-1")],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let u = r.json();
    assert_eq!(u["version"], version + 1);
    assert_eq!(u["title"], "Team Lead");
    assert_eq!(sim.user(&id).unwrap(), u);
    let ledger = sim.ledger_for(&id);
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].route, "/api/v2/users/{userId}");
    assert_eq!(ledger[0].method, "PATCH");
    assert_eq!(ledger[0].idempotency_key.as_deref(), Some("k-1"));

    // The same PATCH again (a careless retry) now conflicts instead of applying twice.
    let r = api(
        &base,
        &t,
        "PATCH",
        &path,
        &json!({"version": version, "title": "Team Lead"}).to_string(),
        &[],
    )
    .await
    .unwrap();
    r.error_body(409, "general.conflict");
    assert_eq!(sim.ledger_count_for(&id), 1);
}

#[tokio::test]
async fn unknown_routes_and_methods_get_error_bodies() {
    let sim = Simulator::spawn(SimConfig::default().users(1))
        .await
        .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    let r = api(&base, &t, "GET", "/api/v2/nothing", "", &[])
        .await
        .unwrap();
    r.error_body(404, "not.found");
    let r = api(&base, &t, "DELETE", "/api/v2/users", "", &[])
        .await
        .unwrap();
    r.error_body(405, "method.not.allowed");
    assert_eq!(r.header("allow"), Some("GET"));
    let path = format!("/api/v2/users/{}", sim.user_ids()[0]);
    let r = api(&base, &t, "PUT", &path, "{}", &[]).await.unwrap();
    r.error_body(405, "method.not.allowed");
    assert_eq!(r.header("allow"), Some("GET, PATCH"));
    let stats = sim.stats();
    assert_eq!(stats.count("POST /oauth/token", 200), 1);
    assert_eq!(stats.status_count(404), 1);
    assert_eq!(stats.status_count(405), 2);
}
