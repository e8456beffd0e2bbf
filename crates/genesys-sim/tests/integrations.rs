//! Integration config (GET/PUT with version) and organization limits.

mod common;

use common::{api, platform_limits, token};
use genesys_sim::{SimConfig, Simulator, integration_id};
use serde_json::json;

#[tokio::test]
async fn config_put_needs_the_current_version() {
    let sim = Simulator::spawn(SimConfig::default().users(1).seed(3))
        .await
        .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    let id = integration_id(3, 0);
    assert_eq!(sim.integration_ids(), vec![id.clone()]);
    let path = format!("/api/v2/integrations/{id}/config/current");

    let r = api(&base, &t, "GET", &path, "", &[]).await.unwrap();
    assert_eq!(r.status, 200);
    let cfg = r.json();
    assert_eq!(cfg["version"], 1);
    assert!(cfg["properties"]["eventFilter"].is_array());

    let mut props = cfg["properties"].clone();
    props["eventFilter"] = json!(["v2.users.{id}.presence", "v2.users.{id}.routingstatus"]);
    let r = api(
        &base,
        &t,
        "PUT",
        &path,
        &json!({"properties": props}).to_string(),
        &[],
    )
    .await
    .unwrap();
    r.error_body(400, "bad.request");
    let r = api(
        &base,
        &t,
        "PUT",
        &path,
        &json!({"version": 1, "retryPolicy": {}}).to_string(),
        &[],
    )
    .await
    .unwrap();
    r.error_body(400, "bad.request");
    let r = api(
        &base,
        &t,
        "PUT",
        &path,
        &json!({"version": 9, "properties": props}).to_string(),
        &[],
    )
    .await
    .unwrap();
    r.error_body(409, "general.conflict");

    let r = api(
        &base,
        &t,
        "PUT",
        &path,
        &json!({"version": 1, "properties": props}).to_string(),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["version"], 2);
    assert_eq!(sim.integration_config(&id).unwrap()["properties"], props);
    assert_eq!(sim.ledger_count_for(&id), 1);

    let r = api(
        &base,
        &t,
        "GET",
        "/api/v2/integrations/nope/config/current",
        "",
        &[],
    )
    .await
    .unwrap();
    r.error_body(404, "not.found");
}

#[tokio::test]
async fn limits_report_the_configured_values() {
    let sim = Simulator::spawn(
        SimConfig::default()
            .users(1)
            .rate_limit(Some((120, std::time::Duration::from_secs(60)))),
    )
    .await
    .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    let r = platform_limits(&base, &t).await;
    assert_eq!(r.status, 200);
    // The API's LimitsEntityListing: entities that each name their namespace, and paging.
    let body = r.json();
    assert_eq!(body["pageNumber"], 1);
    assert_eq!(body["total"], 2);
    let limits = body["entities"].clone();
    assert!(
        limits
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["namespace"] == "platform.api")
    );
    let value = |key: &str| {
        limits
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["key"] == key)
            .map(|l| l["value"].clone())
    };
    assert_eq!(
        value("client.credentials.token.rate.per.minute"),
        Some(json!(120))
    );
    assert_eq!(value("request.bytes.max"), Some(json!(512000)));
    let r = api(
        &base,
        &t,
        "GET",
        "/api/v2/organizations/limits/namespaces/nope",
        "",
        &[],
    )
    .await
    .unwrap();
    r.error_body(404, "not.found");
}
