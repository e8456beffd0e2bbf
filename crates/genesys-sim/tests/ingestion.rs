//! The seed's ingestion endpoint: schema validation, limits, and Idempotency-Key replays.

mod common;

use common::{api, token};
use genesys_sim::{SimConfig, Simulator};
use serde_json::{Value, json};

const PATH: &str = "/api/v2/dataexchange/ingestion";

fn record(i: usize) -> Value {
    json!({
        "external_id": format!("TXN-{i:05}"),
        "timestamp": "2023-10-15T14:30:00Z",
        "channel": "voice",
        "duration_seconds": 142,
        "customer_segment": "enterprise"
    })
}

#[tokio::test]
async fn accepts_a_bare_array_and_a_records_object() {
    let sim = Simulator::spawn(SimConfig::default().users(1))
        .await
        .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;

    let r = api(
        &base,
        &t,
        "POST",
        PATH,
        &json!([record(1), record(2)]).to_string(),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["recordCount"], 2);
    let r = api(
        &base,
        &t,
        "POST",
        PATH,
        &json!({"records": [record(3)]}).to_string(),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);

    assert_eq!(sim.ledger_len(), 3);
    let e = &sim.ledger_for("TXN-00002")[0];
    assert_eq!(e.route, PATH);
    assert_eq!(e.method, "POST");
    assert_eq!(e.idempotency_key, None);
}

#[tokio::test]
async fn invalid_records_get_422_with_per_record_details_and_nothing_applies() {
    let sim = Simulator::spawn(SimConfig::default().users(1))
        .await
        .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    let mut missing = record(2);
    missing.as_object_mut().unwrap().remove("timestamp");
    let mut wrong_type = record(3);
    wrong_type["duration_seconds"] = json!("long");
    let body = json!([record(1), missing, wrong_type]).to_string();

    let r = api(&base, &t, "POST", PATH, &body, &[]).await.unwrap();
    let b = r.error_body(422, "unprocessable.entity");
    let details = b["details"].as_array().unwrap();
    assert_eq!(details.len(), 2, "{b}");
    assert_eq!(details[0]["fieldName"], "records[1].timestamp");
    assert_eq!(details[0]["entityId"], "TXN-00002");
    assert_eq!(details[1]["fieldName"], "records[2].duration_seconds");
    assert_eq!(details[1]["entityId"], "TXN-00003");
    assert_eq!(b["errors"].as_array().unwrap().len(), 2);
    assert_eq!(b["errors"][0]["contextId"], b["contextId"]);
    assert_eq!(sim.ledger_len(), 0);

    let r = api(&base, &t, "POST", PATH, r#"{"rows": []}"#, &[])
        .await
        .unwrap();
    r.error_body(400, "bad.request");
}

#[tokio::test]
async fn batches_over_500_records_or_512000_bytes_get_413() {
    let sim = Simulator::spawn(SimConfig::default().users(1))
        .await
        .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;

    let ok: Vec<Value> = (0..500).map(record).collect();
    let r = api(&base, &t, "POST", PATH, &Value::Array(ok).to_string(), &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);

    let too_many: Vec<Value> = (0..501).map(record).collect();
    let r = api(
        &base,
        &t,
        "POST",
        PATH,
        &Value::Array(too_many).to_string(),
        &[],
    )
    .await
    .unwrap();
    let b = r.error_body(413, "request.entity.too.large");
    assert_eq!(b["limit"]["value"], 500);

    let mut big = record(1);
    big["notes"] = json!("x".repeat(512_001));
    let r = api(&base, &t, "POST", PATH, &json!([big]).to_string(), &[])
        .await
        .unwrap();
    let b = r.error_body(413, "request.entity.too.large");
    assert_eq!(b["limit"]["key"], "request.bytes.max");
    assert_eq!(b["limit"]["value"], 512_000);
    assert_eq!(sim.ledger_len(), 500);
}

#[tokio::test]
async fn idempotency_key_replays_the_stored_response_and_applies_nothing() {
    let sim = Simulator::spawn(SimConfig::default().users(1))
        .await
        .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    let body = json!([record(1), record(2)]).to_string();
    let key = [("idempotency-key", "batch-0001")];

    let first = api(&base, &t, "POST", PATH, &body, &key).await.unwrap();
    assert_eq!(first.status, 200);
    let again = api(&base, &t, "POST", PATH, &body, &key).await.unwrap();
    assert_eq!(again.status, 200);
    assert_eq!(again.body, first.body, "the stored response is replayed");
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(sim.ledger_len(), 2, "the repeat applied nothing");
    assert!(
        sim.ledger()
            .iter()
            .all(|e| e.idempotency_key.as_deref() == Some("batch-0001"))
    );

    // The same key with another body is refused, as the IETF draft says.
    let other = json!([record(3)]).to_string();
    let r = api(&base, &t, "POST", PATH, &other, &key).await.unwrap();
    r.error_body(422, "idempotency.key.reused");

    // Without a key, a repeat applies again.
    api(&base, &t, "POST", PATH, &body, &[]).await.unwrap();
    assert_eq!(sim.ledger_count_for("TXN-00001"), 2);
}

#[tokio::test]
async fn schema_and_path_can_be_replaced() {
    let schema =
        json!({"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}}});
    let sim = Simulator::spawn(
        SimConfig::default()
            .users(1)
            .ingestion_schema(schema)
            .ingestion_path("/ingest"),
    )
    .await
    .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    let r = api(
        &base,
        &t,
        "POST",
        "/ingest",
        r#"[{"id": 7}, {"id": "x"}]"#,
        &[],
    )
    .await
    .unwrap();
    r.error_body(422, "unprocessable.entity");
    let r = api(&base, &t, "POST", "/ingest", r#"[{"id": 7}]"#, &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(sim.ledger_count_for("records[0]"), 1);
    let r = api(&base, &t, "POST", PATH, r#"[{"id": 7}]"#, &[])
        .await
        .unwrap();
    r.error_body(404, "not.found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_repeats_of_one_key_apply_once() {
    let sim = Simulator::spawn(SimConfig::default().users(1))
        .await
        .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    let body = json!([record(1), record(2), record(3)]).to_string();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (base, t, body) = (base.clone(), t.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            api(
                &base,
                &t,
                "POST",
                PATH,
                &body,
                &[("idempotency-key", "shared")],
            )
            .await
            .unwrap()
        }));
    }
    let mut bodies = Vec::new();
    for task in tasks {
        let r = task.await.unwrap();
        assert_eq!(r.status, 200);
        bodies.push(r.body);
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "every caller sees the one response"
    );
    assert_eq!(sim.ledger_len(), 3, "applied exactly once");
}

/// An `Idempotency-Key` longer than 255 bytes is refused before anything is applied, rather
/// than copied into every ledger entry of the batch.
#[tokio::test]
async fn an_idempotency_key_too_long_is_refused() {
    let sim = Simulator::spawn(SimConfig::default()).await.unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    let batch = serde_json::to_string(&(0..3).map(record).collect::<Vec<_>>()).unwrap();
    let key = "k".repeat(256);
    // One byte too many is refused, and nothing applied; at the limit, the batch goes in.
    for (len, status, applied) in [(256, 400, 0), (255, 200, 3)] {
        let r = api(
            &base,
            &t,
            "POST",
            PATH,
            &batch,
            &[("idempotency-key", &key[..len])],
        )
        .await
        .unwrap();
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
        if status == 400 {
            r.error_body(400, "bad.request");
        }
        assert_eq!(sim.ledger_len(), applied);
    }
}
