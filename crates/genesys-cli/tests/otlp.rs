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

/// `gcx users patch` of `users` of `sim`'s users, from a file in `d`, with `env` set.
async fn patch_exporting(
    sim: &genesys_sim::SimHandle,
    d: &std::path::Path,
    users: usize,
    env: &[(&'static str, String)],
) -> std::process::Output {
    let (lines, _) = user_lines(sim, users);
    let input = write(&d.join("users.jsonl"), lines.as_bytes());
    let mut cmd = gcx(sim);
    cmd.envs(env.iter().map(|(name, value)| (*name, value.as_str())))
        .args(["users", "patch", "--quiet", "--input"])
        .arg(&input);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
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
    let out = patch_exporting(
        &sim,
        &d,
        10,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_SERVICE_NAME", "gcx-under-test".to_owned()),
        ],
    )
    .await;
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

/// A proxy that tunnels every `CONNECT` to the same port on 127.0.0.1, and records what each
/// asked for.
async fn tunnel_proxy() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let asked: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if inbound.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let target = head
                    .split_whitespace()
                    .nth(1)
                    .unwrap_or_default()
                    .to_owned();
                seen.lock().unwrap().push(target.clone());
                let Some(port) = target
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
                else {
                    return;
                };
                let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                else {
                    return;
                };
                let established = b"HTTP/1.1 200 Connection established\r\n\r\n";
                if inbound.write_all(established).await.is_ok() {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, asked)
}

/// Behind a proxy (`http_proxy`), the export goes through it, as the API's requests do: a
/// collector reached only through it gets the spans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_export_goes_through_the_proxy_the_environment_names() {
    let sim = Simulator::spawn(config(2)).await.unwrap();
    let (endpoint, received) = collector().await;
    let port = endpoint.rsplit(':').next().unwrap().to_owned();
    let (proxy, asked) = tunnel_proxy().await;
    let d = dir("otlp_proxy");
    // A name, not a loopback address: reached through the proxy (the simulator, on loopback,
    // is reached directly).
    let collector = format!("http://collector.behind-proxy.test:{port}");
    let out = patch_exporting(
        &sim,
        &d,
        2,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", collector),
            ("http_proxy", format!("http://{proxy}")),
        ],
    )
    .await;
    assert_exit(&out, 0);
    let traces = received
        .lock()
        .unwrap()
        .iter()
        .filter(|(path, _)| path == "/v1/traces")
        .count();
    assert!(traces > 0, "no trace export through the proxy");
    let asked = asked.lock().unwrap().clone();
    assert!(
        asked
            .iter()
            .all(|target| *target == format!("collector.behind-proxy.test:{port}")),
        "{asked:?}"
    );
}
