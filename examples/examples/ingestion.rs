//! Ingestion (seed 000's endpoint): validate records against a JSON Schema, send them in chunks
//! of at most 500 records and 512000 bytes, each with its own Idempotency-Key, so that a retry
//! after a lost answer is not applied twice.
//!
//! ```text
//! cargo run -p examples --example ingestion
//! ```
//!
//! `/api/v2/dataexchange/ingestion` is not part of the public Genesys Cloud API: on a real org the
//! example only runs when `GENESYS_INGESTION_PATH` names an endpoint of that shape.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use genesys_client::ingestion::interaction_record_schema;
use serde_json::{Value, json};

fn record(i: usize) -> Value {
    let channel = ["voice", "chat", "email"][i % 3];
    let segment = ["enterprise", "smb"][i % 2];
    json!({
        "external_id": format!("TXN-{i:05}"),
        "timestamp": "2024-05-01T12:00:00Z",
        "channel": channel,
        "duration_seconds": (i * 7) % 900,
        "customer_segment": segment,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let target = common::connect(
        |sim| {
            sim.users(1)
                .rate_limit(None)
                .faults("reset-after=0.05,5xx=0.05".parse().expect("a valid spec"))
                .seed(3)
        },
        |client| client.pacing(200, Duration::from_secs(1)),
    )
    .await?;
    let path = match (target.is_real(), common::env("GENESYS_INGESTION_PATH")) {
        (_, Some(path)) => path,
        (false, None) => genesys_client::DEFAULT_INGESTION_PATH.to_owned(),
        (true, None) => {
            println!(
                "set GENESYS_INGESTION_PATH: the seed's ingestion endpoint is not in the public API"
            );
            return Ok(());
        }
    };
    let ingestion = target
        .client
        .ingestion()
        .path(path)
        .schema(interaction_record_schema())
        .max_records(100)
        .build()?;

    let mut records: Vec<Value> = (0..5_000).map(record).collect();
    records[10]["duration_seconds"] = json!("about a minute");
    records[20]
        .as_object_mut()
        .expect("an object")
        .remove("channel");
    let report = ingestion.ingest(records).await;

    for invalid in &report.invalid {
        println!(
            "left out record {}: {}",
            invalid.index,
            invalid.reasons.join("; ")
        );
    }
    let retried = report.delivered.iter().filter(|c| c.attempts > 1).count();
    let replayed = report.delivered.iter().filter(|c| c.replayed).count();
    println!(
        "{} records delivered in {} chunks ({retried} retried, {replayed} answered as replays), {} chunks failed",
        report.records_delivered(),
        report.delivered.len(),
        report.failed.len()
    );
    for failure in &report.failed {
        println!(
            "chunk {} ({}) failed: {}",
            failure.index, failure.key, failure.error
        );
    }
    if let Some(sim) = &target.sim {
        let ledger = sim.ledger();
        let distinct: HashSet<_> = ledger.iter().map(|e| e.entity.as_str()).collect();
        println!(
            "the simulator applied {} records, {} distinct: none twice",
            ledger.len(),
            distinct.len()
        );
    }
    target.close().await;
    Ok(())
}
