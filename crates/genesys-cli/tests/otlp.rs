//! With the `otlp` feature and `OTEL_EXPORTER_OTLP_ENDPOINT` set, a gcx job sends its spans and
//! its metrics to the collector there (OTLP over HTTP, protobuf bodies), and no secret with them.
//!
//! ```text
//! cargo test -p genesys-cli --features otlp --test otlp
//! ```

#![cfg(feature = "otlp")]

mod common;

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use genesys_sim::Simulator;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// A collector that takes every export (path and body) and answers 200 with an empty body.
async fn collector() -> (String, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received: Received = Arc::default();
    let store = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let store = store.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let store = store.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        store.lock().unwrap().push((path, body.to_vec()));
                        let mut answer = Response::new(Full::new(Bytes::new()));
                        answer.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("application/x-protobuf"),
                        );
                        Ok::<_, Infallible>(answer)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{addr}"), received)
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_exports_its_spans_and_metrics_over_otlp() {
    let sim = Simulator::spawn(config(10).faults("5xx=0.2".parse().unwrap()))
        .await
        .unwrap();
    let (endpoint, received) = collector().await;
    let d = dir("otlp");
    let (lines, _) = user_lines(&sim, 10);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let out = tokio::task::spawn_blocking(move || {
        gcx(&sim)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)
            .env("OTEL_SERVICE_NAME", "gcx-under-test")
            .args(["users", "patch", "--quiet", "--input"])
            .arg(&input)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_exit(&out, 0);

    let received = received.lock().unwrap().clone();
    let traces: Vec<&Vec<u8>> = received
        .iter()
        .filter(|(path, _)| path == "/v1/traces")
        .map(|(_, body)| body)
        .collect();
    let metrics: Vec<&Vec<u8>> = received
        .iter()
        .filter(|(path, _)| path == "/v1/metrics")
        .map(|(_, body)| body)
        .collect();
    assert!(!traces.is_empty(), "no trace export: {received:?}");
    assert!(!metrics.is_empty(), "no metric export");
    let any = |bodies: &[&Vec<u8>], text: &str| bodies.iter().any(|b| contains(b, text));
    for text in [
        "gcx-under-test",
        "PATCH /api/v2/users/{userId}",
        "http.client.attempt",
        "url.template",
        "inin.correlation_id",
        "retry.reason",
    ] {
        assert!(any(&traces, text), "{text} in no trace export");
    }
    for text in [
        "genesys_tower_calls_total",
        "genesys_tower_attempts_total",
        "genesys_tower_call_duration_seconds",
        "/api/v2/users/{userId}",
    ] {
        assert!(any(&metrics, text), "{text} in no metric export");
    }
    for (_, body) in &received {
        for secret in ["demo-secret", "Bearer", "access_token"] {
            assert!(!contains(body, secret), "{secret} was exported");
        }
    }
}
