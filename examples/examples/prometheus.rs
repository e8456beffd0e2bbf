//! The stack's metrics in Prometheus, and its spans in the log: a recorder with an HTTP listener
//! (`metrics-exporter-prometheus`), a `tracing` subscriber that prints each call and attempt span
//! as it closes, then reads and updates users through injected faults.
//!
//! ```text
//! cargo run -p examples --example prometheus
//! # in another terminal, while it runs (EXAMPLE_LINGER=60 keeps it up a minute):
//! curl -s http://127.0.0.1:9464/metrics | grep genesys_tower_
//! ```
//!
//! `PROMETHEUS_ADDR` picks another address. Point a Prometheus at it (`scrape_configs:
//! - targets: ["127.0.0.1:9464"]`) and the table in `genesys_tower::metrics`'s docs says what
//! each series means; the simulator serves its own view on `/sim/metrics`.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use serde_json::{Map, Value};
use tracing_subscriber::fmt::format::FmtSpan;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = common::env("PROMETHEUS_ADDR")
        .as_deref()
        .unwrap_or("127.0.0.1:9464")
        .parse()?;
    // Histograms with buckets (rather than summaries) for the latency metrics, so that Prometheus
    // can aggregate them across processes.
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".to_owned()),
            &[0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
        )?
        .with_http_listener(addr)
        .install_recorder()?;
    // A span line per call and per attempt as it closes, with its fields (route, status, retry
    // reason and delay, correlation id): never a token.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "genesys_tower=info".into()),
        )
        .with_span_events(FmtSpan::CLOSE)
        .init();

    let target = common::connect(
        |sim| {
            sim.users(40)
                .faults("5xx=0.1,reset-before=0.02".parse().expect("a valid spec"))
                .seed(7)
        },
        |client| client.pacing(50, Duration::from_secs(1)),
    )
    .await?;
    let client = &target.client;
    println!("metrics on http://{addr}/metrics");

    let ids: Vec<String> = match &target.sim {
        Some(sim) => sim.user_ids().into_iter().take(20).collect(),
        None => Vec::new(),
    };
    for id in &ids {
        let user = client.get_user(id).await?;
        let mut fields = Map::new();
        fields.insert(
            "title".into(),
            Value::String(format!("{} (observed)", user.name.unwrap_or_default())),
        );
        client.update_user(id, &fields).await?;
    }

    println!("\nwhat a scrape of http://{addr}/metrics returns now (genesys_tower_ series):");
    for line in handle
        .render()
        .lines()
        .filter(|l| l.starts_with("genesys_tower_") && !l.contains("_bucket"))
    {
        println!("  {line}");
    }
    if let Some(secs) = common::env("EXAMPLE_LINGER").and_then(|s| s.parse().ok()) {
        println!("serving the metrics for {secs} s more");
        tokio::time::sleep(Duration::from_secs(secs)).await;
    }
    target.close().await;
    Ok(())
}
