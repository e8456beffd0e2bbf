//! Ingestion end to end: validation, chunking, and exactly-once delivery through lost answers.

use std::collections::HashMap;
use std::time::Duration;

use genesys_client::ingestion::interaction_record_schema;
use genesys_sim::{DEFAULT_INGESTION_PATH, SimConfig};
use serde_json::{Value, json};
use tests::{client_for, spawn};

fn record(i: usize) -> Value {
    let channel = ["voice", "chat", "email"][i % 3];
    json!({
        "external_id": format!("TXN-{i:05}"),
        "timestamp": "2024-05-01T12:00:00Z",
        "channel": channel,
        "duration_seconds": i % 600,
        "customer_segment": "enterprise",
    })
}

/// 20,000 records (and 10 malformed ones) with 2 % of connections reset after the server applied
/// the chunk: the malformed ones come back with reasons, and the ledger holds each good record
/// exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_records_land_exactly_once_through_lost_answers() {
    const RECORDS: usize = 20_000;
    let sim = spawn(
        SimConfig::default()
            .users(1)
            .rate_limit(None)
            .faults("reset-after=0.02".parse().unwrap())
            .seed(3),
    )
    .await;
    let client = client_for(&sim)
        .pacing(1_000, Duration::from_secs(1))
        .build()
        .unwrap();
    let ingestion = client
        .ingestion()
        .schema(interaction_record_schema())
        // Small chunks, so that this many records make enough requests for faults to happen.
        .max_records(50)
        .concurrency(8)
        .build()
        .unwrap();

    let mut records: Vec<Value> = (0..RECORDS).map(record).collect();
    for i in 0..10 {
        let mut bad = record(RECORDS + i);
        bad["duration_seconds"] = json!("forty");
        records.insert(i * 1000, bad);
    }
    let report = ingestion.ingest(records).await;

    assert!(report.is_complete(), "failed chunks: {:?}", report.failed);
    assert_eq!(report.invalid.len(), 10);
    for invalid in &report.invalid {
        assert!(
            invalid
                .reasons
                .iter()
                .any(|r| r.contains("duration_seconds")),
            "{invalid:?}"
        );
    }
    assert_eq!(report.records_delivered(), RECORDS);
    assert!(sim.stats().fault_count("reset-after") > 0);
    assert!(
        report
            .delivered
            .iter()
            .any(|c| c.replayed || c.attempts > 1)
    );

    let mut seen: HashMap<String, usize> = HashMap::new();
    for e in sim.ledger() {
        if e.route == DEFAULT_INGESTION_PATH {
            *seen.entry(e.entity).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), RECORDS, "every record is in the ledger");
    assert!(
        seen.values().all(|&n| n == 1),
        "no record twice: {:?}",
        seen.iter()
            .filter(|(_, n)| **n > 1)
            .take(3)
            .collect::<Vec<_>>()
    );
    sim.shutdown().await;
}

/// Default chunking: at most 500 records and 512000 bytes per request, and the path is
/// configurable.
#[tokio::test]
async fn default_chunks_fit_the_documented_limits_on_a_configured_path() {
    let sim = spawn(
        SimConfig::default()
            .users(1)
            .rate_limit(None)
            .ingestion_path("/custom/ingest"),
    )
    .await;
    let client = client_for(&sim).build().unwrap();
    let ingestion = client
        .ingestion()
        .path("/custom/ingest")
        .schema(interaction_record_schema())
        .build()
        .unwrap();
    let prepared = ingestion.prepare((0..1_200).map(record).collect());
    assert_eq!(prepared.chunks.len(), 3);
    assert!(
        prepared
            .chunks
            .iter()
            .all(|c| c.records.len() <= 500 && c.body.len() <= 512_000)
    );
    let report = ingestion.ingest((0..1_200).map(record).collect()).await;
    assert!(report.is_complete(), "{:?}", report.failed);
    assert_eq!(sim.ledger_len(), 1_200);
    sim.shutdown().await;
}

/// A path of the caller's, not said to deduplicate by key, on an endpoint that does not (as the
/// API's real bulk endpoints do not): a chunk applied behind a gateway's 504 is never sent again,
/// and fails as may have been applied.
#[tokio::test]
async fn a_path_that_ignores_keys_never_gets_a_chunk_twice() {
    const PATH: &str = "/api/v2/bulk/records";
    let sim = spawn(
        SimConfig::default()
            .users(1)
            .rate_limit(None)
            .ingestion_path(PATH)
            .ingestion_deduplicates(false)
            .faults("504-after=1".parse().unwrap()),
    )
    .await;
    let client = client_for(&sim).build().unwrap();
    let ingestion = client
        .ingestion()
        .path(PATH)
        .schema(interaction_record_schema())
        .max_records(5)
        .build()
        .unwrap();
    let report = ingestion.ingest((0..10).map(record).collect()).await;
    assert_eq!(report.failed.len(), 2, "{:?}", report.delivered);
    for failure in &report.failed {
        assert!(failure.error.may_have_been_applied(), "{}", failure.error);
    }
    assert_eq!(sim.ledger_len(), 10, "each chunk applied once");
    assert_eq!(
        sim.stats().fault_count("504-after"),
        2,
        "no chunk sent twice"
    );
    sim.shutdown().await;
}
