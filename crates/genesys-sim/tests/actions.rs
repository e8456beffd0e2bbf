//! Data actions: execute and test; Idempotency-Key is not honoured, like the real service.

mod common;

use common::{api, token};
use genesys_sim::{Action, ActionFailure, ECHO_ACTION_ID, SimConfig, Simulator};
use serde_json::json;

#[tokio::test]
async fn echo_records_every_execution_even_with_the_same_key() {
    let sim = Simulator::spawn(SimConfig::default().users(1))
        .await
        .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    let path = format!("/api/v2/integrations/actions/{ECHO_ACTION_ID}/execute");
    let input = json!({"customer": {"id": "c-1"}, "amount": 5}).to_string();
    for _ in 0..2 {
        let r = api(
            &base,
            &t,
            "POST",
            &path,
            &input,
            &[("idempotency-key", "same")],
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.json(), json!({"customer": {"id": "c-1"}, "amount": 5}));
    }
    let ledger = sim.ledger_for(ECHO_ACTION_ID);
    assert_eq!(ledger.len(), 2, "data actions do not deduplicate by key");
    assert_eq!(ledger[0].payload_hash, ledger[1].payload_hash);
    assert_eq!(ledger[1].idempotency_key.as_deref(), Some("same"));

    let r = api(
        &base,
        &t,
        "POST",
        &format!("{path}?flatten=true"),
        &input,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(r.json(), json!({"customer.id": "c-1", "amount": 5}));
}

#[tokio::test]
async fn test_route_reports_operations_and_configured_actions_work() {
    let failing = ActionFailure {
        status: 400,
        code: "bad.request".into(),
        message: "the remote endpoint refused the input".into(),
    };
    let sim = Simulator::spawn(
        SimConfig::default()
            .users(1)
            .action("lookup", Action::Static(json!({"found": true})))
            .action("broken", Action::Fail(failing)),
    )
    .await
    .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;

    let r = api(
        &base,
        &t,
        "POST",
        "/api/v2/integrations/actions/echo/test",
        r#"{"a":1}"#,
        &[],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    let b = r.json();
    assert_eq!(b["success"], true);
    assert_eq!(b["finalResult"], json!({"a": 1}));
    assert!(!b["operations"].as_array().unwrap().is_empty());

    let r = api(
        &base,
        &t,
        "POST",
        "/api/v2/integrations/actions/lookup/execute",
        "{}",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(r.json(), json!({"found": true}));

    let r = api(
        &base,
        &t,
        "POST",
        "/api/v2/integrations/actions/broken/execute",
        "{}",
        &[],
    )
    .await
    .unwrap();
    // A failing action answers the data-action error shape, not the platform's ErrorBody.
    assert_eq!(r.status, 400);
    let b = r.json();
    assert_eq!(b["errorCode"], "bad.request");
    assert_eq!(b["status"], 400);
    assert_eq!(b["userMessage"], "the remote endpoint refused the input");
    assert_eq!(b["details"][0]["errorCode"], "bad.request");
    assert!(!b["correlationId"].as_str().unwrap().is_empty());
    assert!(b.get("code").is_none() && b.get("message").is_none());
    let r = api(
        &base,
        &t,
        "POST",
        "/api/v2/integrations/actions/broken/test",
        "{}",
        &[],
    )
    .await
    .unwrap();
    assert_eq!(r.json()["success"], false);
    assert_eq!(sim.ledger_count_for("broken"), 0);

    let r = api(
        &base,
        &t,
        "POST",
        "/api/v2/integrations/actions/nope/execute",
        "{}",
        &[],
    )
    .await
    .unwrap();
    r.error_body(404, "not.found");
    let r = api(
        &base,
        &t,
        "POST",
        "/api/v2/integrations/actions/echo/execute",
        "[1]",
        &[],
    )
    .await
    .unwrap();
    r.error_body(400, "bad.request");
}

/// A flattened answer whose keys would spell a deep path once per leaf is refused with a 400,
/// rather than built: a body under the limit cannot make the simulator build gigabytes.
#[tokio::test]
async fn a_flattened_answer_too_large_is_refused() {
    let sim = Simulator::spawn(SimConfig::default().users(1))
        .await
        .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    // 20 levels of 1,000-character keys over 400 leaves: about 8 MB of keys once flattened.
    let key = "k".repeat(1_000);
    let leaves: serde_json::Map<String, serde_json::Value> =
        (0..400).map(|i| (format!("l{i}"), json!(i))).collect();
    let mut input = serde_json::Value::Object(leaves);
    for _ in 0..20 {
        input = json!({ key.clone(): input });
    }
    let path = format!("/api/v2/integrations/actions/{ECHO_ACTION_ID}/execute?flatten=true");
    let r = api(&base, &t, "POST", &path, &input.to_string(), &[])
        .await
        .unwrap();
    r.error_body(400, "bad.request");
    assert!(r.body.len() < 4096, "{} bytes", r.body.len());
}
