//! OAuth client credentials: both credential styles, the OAuth error shape, and what happens to
//! API calls with missing, invalid, expired and revoked tokens.

mod common;

use std::time::Duration;

use common::{api, basic, send, token, token_answer};
use genesys_sim::{SimConfig, Simulator};

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");

#[tokio::test]
async fn basic_header_and_form_body_both_get_a_token() {
    let sim = Simulator::spawn(SimConfig::default().users(3).code_variants(0.0))
        .await
        .unwrap();
    let base = sim.base_url();

    let r = token_answer(&base).await;
    assert_eq!(r.status, 200);
    let b = r.json();
    assert_eq!(b["token_type"], "bearer");
    assert_eq!(b["expires_in"], 86400);
    assert!(b["access_token"].as_str().unwrap().len() >= 32);
    assert!(r.header("inin-correlation-id").is_some());

    // Seed 001's style: credentials in the form body.
    let r = send(
        &base,
        "POST",
        "/oauth/token",
        &[FORM],
        "grant_type=client_credentials&client_id=demo-client&client_secret=demo-secret",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let t = r.json()["access_token"].as_str().unwrap().to_string();
    let r = api(&base, &t, "GET", "/api/v2/users?pageSize=1", "", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(sim.stats().tokens_issued, 2);
}

/// The token type's case is not promised: on the variants' share, `Bearer`.
#[tokio::test]
async fn the_token_type_is_spelled_both_ways() {
    for (share, spelled) in [(0.0, "bearer"), (1.0, "Bearer")] {
        let sim = Simulator::spawn(SimConfig::default().users(1).code_variants(share))
            .await
            .unwrap();
        let r = token_answer(&sim.base_url()).await;
        assert_eq!(r.json()["token_type"], spelled);
    }
}

#[tokio::test]
async fn token_errors_use_the_oauth_shape() {
    let sim = Simulator::spawn(SimConfig::default().users(1))
        .await
        .unwrap();
    let base = sim.base_url();
    let check = |r: &common::Resp, status: u16, error: &str| {
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
        let b = r.json();
        assert_eq!(b["error"], error);
        assert!(b["description"].is_string());
        assert_eq!(b["description"], b["error_description"]);
    };

    let wrong = basic("demo-client", "nope");
    let r = send(
        &base,
        "POST",
        "/oauth/token",
        &[("authorization", &wrong), FORM],
        "grant_type=client_credentials",
    )
    .await
    .unwrap();
    check(&r, 401, "invalid_client");
    assert!(r.header("www-authenticate").is_some());

    let r = send(
        &base,
        "POST",
        "/oauth/token",
        &[FORM],
        "grant_type=client_credentials&client_id=demo-client&client_secret=nope",
    )
    .await
    .unwrap();
    check(&r, 400, "invalid_client");

    let r = send(
        &base,
        "POST",
        "/oauth/token",
        &[FORM],
        "grant_type=client_credentials",
    )
    .await
    .unwrap();
    check(&r, 401, "invalid_client");

    let ok = basic("demo-client", "demo-secret");
    let r = send(
        &base,
        "POST",
        "/oauth/token",
        &[("authorization", &ok), FORM],
        "",
    )
    .await
    .unwrap();
    check(&r, 400, "invalid_request");

    let r = send(
        &base,
        "POST",
        "/oauth/token",
        &[("authorization", &ok), FORM],
        "grant_type=password",
    )
    .await
    .unwrap();
    check(&r, 400, "unsupported_grant_type");
    assert_eq!(sim.stats().tokens_issued, 0);
}

#[tokio::test]
async fn missing_and_invalid_tokens_get_401_error_bodies() {
    let sim = Simulator::spawn(SimConfig::default().code_variants(0.0).users(1))
        .await
        .unwrap();
    let base = sim.base_url();
    let r = send(&base, "GET", "/api/v2/users", &[], "").await.unwrap();
    let b = r.error_body(401, "authentication.required");
    assert_eq!(b["contextId"], r.header("inin-correlation-id").unwrap());

    let r = api(&base, "not-a-token", "GET", "/api/v2/users", "", &[])
        .await
        .unwrap();
    r.error_body(401, "bad.credentials");
}

#[tokio::test(start_paused = true)]
async fn expired_tokens_get_401() {
    let sim = Simulator::spawn(
        SimConfig::default()
            .code_variants(0.0)
            .users(1)
            .token_ttl(Duration::from_secs(300)),
    )
    .await
    .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    tokio::time::advance(Duration::from_secs(299)).await;
    assert_eq!(
        api(&base, &t, "GET", "/api/v2/users", "", &[])
            .await
            .unwrap()
            .status,
        200
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    let r = api(&base, &t, "GET", "/api/v2/users", "", &[])
        .await
        .unwrap();
    r.error_body(401, "bad.credentials");
}

#[tokio::test]
async fn revoked_tokens_get_401_and_a_new_token_works() {
    let sim = Simulator::spawn(SimConfig::default().code_variants(0.0).users(1))
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
    assert_eq!(sim.revoke_tokens(), 1);
    let r = api(&base, &t, "GET", "/api/v2/users", "", &[])
        .await
        .unwrap();
    r.error_body(401, "bad.credentials");
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
async fn other_clients_can_be_configured() {
    let sim = Simulator::spawn(
        SimConfig::default()
            .users(1)
            .client("ops", "s3cret:with:colons"),
    )
    .await
    .unwrap();
    let r = send(
        &sim.base_url(),
        "POST",
        "/oauth/token",
        &[("authorization", &basic("ops", "s3cret:with:colons")), FORM],
        "grant_type=client_credentials",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    // Secrets never show in Debug.
    assert!(!format!("{:?}", sim.config()).contains("s3cret"));
}

/// With every answer in the real API's other words: a missing token is `bad.credentials`, an
/// invalid one `authentication.required`, a spent quota `too.many.requests.retry.after`, a
/// stale version a 400 with the conflict's message. And a token request without its form
/// `Content-Type` is refused, as the real endpoint documents.
#[tokio::test]
async fn the_real_apis_other_words_for_the_same_answers() {
    let sim = Simulator::spawn(
        SimConfig::default()
            .users(1)
            .code_variants(1.0)
            .rate_limit(Some((3, Duration::from_secs(60)))),
    )
    .await
    .unwrap();
    let base = sim.base_url();
    let r = send(&base, "GET", "/api/v2/users", &[], "").await.unwrap();
    r.error_body(401, "bad.credentials");
    let r = api(&base, "not-a-token", "GET", "/api/v2/users", "", &[])
        .await
        .unwrap();
    r.error_body(401, "authentication.required");
    let t = token(&base).await;
    let id = sim.user_ids()[0].clone();
    let stale = serde_json::json!({"version": 999, "name": "N"}).to_string();
    let r = api(
        &base,
        &t,
        "PATCH",
        &format!("/api/v2/users/{id}"),
        &stale,
        &[],
    )
    .await
    .unwrap();
    let body = r.error_body(400, "bad.request");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("does not match the current version"),
        "{body}"
    );
    for _ in 0..2 {
        api(&base, &t, "GET", "/api/v2/users", "", &[])
            .await
            .unwrap();
    }
    let r = api(&base, &t, "GET", "/api/v2/users", "", &[])
        .await
        .unwrap();
    r.error_body(429, "too.many.requests.retry.after");

    let r = send(
        &base,
        "POST",
        "/oauth/token",
        &[("authorization", &basic("demo-client", "demo-secret"))],
        "grant_type=client_credentials",
    )
    .await
    .unwrap();
    assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"], "invalid_request");
}
