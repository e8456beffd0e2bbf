//! The Redis store with a real Redis (`REDIS_URL`, default `redis://127.0.0.1:6379`): two
//! independent server instances sharing one Redis, a crash mid-request, and Redis down; in
//! `faults`, private `redis-server` processes killed, restarted and paused.
//!
//! Every test writes under a prefix of its own, so runs never see each other's keys; records are
//! kept for a minute only. Lock expiry is Redis's own clock, so that one test sleeps for real,
//! with wide margins.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use genesys_tower::idempotency::server::ServerIdempotencyLayer;
use genesys_tower::idempotency::{
    Claim, Fingerprint, IdempotencyStore, RedisStore, StoredResponse,
};
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::Notify;
use tower::ServiceExt;

mod faults;

const RETENTION: Duration = Duration::from_secs(60);

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn unique_prefix(test: &str) -> String {
    format!(
        "genesys-tower-test:{test}:{}:",
        uuid::Uuid::new_v4().simple()
    )
}

fn store(prefix: &str) -> RedisStore {
    RedisStore::open(&redis_url())
        .expect("a valid REDIS_URL")
        .prefix(prefix)
}

/// One server instance: its own store (its own Redis connection) and its own handler.
#[derive(Clone, Default)]
struct Instance {
    name: &'static str,
    /// Runs per key, on this instance.
    runs: Arc<Mutex<HashMap<String, usize>>>,
    /// Executions across every instance (shared), to number them.
    executions: Arc<AtomicUsize>,
    delay: Duration,
    /// When set, the handler signals it started, then never finishes (a crash mid-request).
    hang: Option<Arc<Notify>>,
}

impl Instance {
    fn total_runs(&self) -> usize {
        self.runs.lock().unwrap().values().sum()
    }

    fn router(&self, layer: ServerIdempotencyLayer) -> Router {
        let this = self.clone();
        Router::new()
            .route(
                "/invoke-data-action",
                post(move |req: Request<axum::body::Body>| {
                    let this = this.clone();
                    async move {
                        let key = req.headers()["idempotency-key"].to_str().unwrap().to_owned();
                        *this.runs.lock().unwrap().entry(key.clone()).or_default() += 1;
                        if let Some(started) = &this.hang {
                            started.notify_one();
                            std::future::pending::<()>().await;
                        }
                        let execution = this.executions.fetch_add(1, SeqCst);
                        tokio::time::sleep(this.delay).await;
                        (
                            StatusCode::CREATED,
                            [("x-instance", this.name)],
                            format!(
                                "{{\"key\":\"{key}\",\"execution\":{execution},\"instance\":\"{}\"}}",
                                this.name
                            ),
                        )
                    }
                }),
            )
            .layer(layer)
    }
}

fn invoke(key: &str, payload: &str) -> Request<axum::body::Body> {
    Request::post("/invoke-data-action")
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(axum::body::Body::from(payload.to_owned()))
        .unwrap()
}

async fn body(response: axum::response::Response) -> Bytes {
    response.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_run_each_key_exactly_once() {
    let prefix = unique_prefix("two-instances");
    let executions = Arc::new(AtomicUsize::new(0));
    let instance = |name| Instance {
        name,
        executions: executions.clone(),
        delay: Duration::from_millis(100),
        ..Instance::default()
    };
    let (a, b) = (instance("a"), instance("b"));
    // Wait mode: a request that finds its key in flight on either instance waits for the
    // response, so every one of the 200 callers gets an answer without retrying.
    let layer = |store| {
        ServerIdempotencyLayer::new()
            .store(store)
            .require_key(true)
            .retention(RETENTION)
            .wait_in_flight(Duration::from_secs(30))
    };
    let app_a = a.router(layer(store(&prefix)));
    let app_b = b.router(layer(store(&prefix)));

    let calls = (0..200).map(|i| {
        let key = format!("key-{}", i % 20);
        let app = if i % 2 == 0 {
            app_a.clone()
        } else {
            app_b.clone()
        };
        tokio::spawn(async move {
            let payload = format!("{{\"input_payload\":{{\"id\":\"{key}\"}}}}");
            let response = app.oneshot(invoke(&key, &payload)).await.unwrap();
            let replayed = response.headers().contains_key("idempotent-replayed");
            (key, response.status(), replayed, body(response).await)
        })
    });
    let mut by_key: HashMap<String, Vec<(bool, Bytes)>> = HashMap::new();
    for call in futures_util::future::join_all(calls).await {
        let (key, status, replayed, body) = call.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{key}: {body:?}");
        by_key.entry(key).or_default().push((replayed, body));
    }

    assert_eq!(executions.load(SeqCst), 20, "one execution per key");
    assert_eq!(a.total_runs() + b.total_runs(), 20);
    assert_eq!(by_key.len(), 20);
    for (key, answers) in &by_key {
        assert_eq!(answers.len(), 10);
        let first = &answers[0].1;
        assert!(
            answers.iter().all(|(_, body)| body == first),
            "every caller of {key} gets its execution's response"
        );
        let json: serde_json::Value = serde_json::from_slice(first).unwrap();
        assert_eq!(json["key"], key.as_str());
        let fresh = answers.iter().filter(|(replayed, _)| !replayed).count();
        assert_eq!(fresh, 1, "{key}: one original response, the rest replays");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_handlers_key_is_held_as_outcome_unknown_or_taken_over_if_asked() {
    for rerun in [false, true] {
        let prefix = unique_prefix("crash");
        let lock = Duration::from_secs(1);
        let layer = |store| {
            ServerIdempotencyLayer::new()
                .store(store)
                .lock_ttl(lock)
                .retention(RETENTION)
                .rerun_abandoned(rerun)
        };
        let started = Arc::new(Notify::new());
        let crashing = Instance {
            name: "a",
            hang: Some(started.clone()),
            ..Instance::default()
        };
        let healthy = Instance {
            name: "b",
            ..Instance::default()
        };
        let app_a = crashing.router(layer(store(&prefix)));
        let app_b = healthy.router(layer(store(&prefix)));

        // Instance a claims the key, starts the handler, and dies mid-request.
        let doomed = tokio::spawn(app_a.oneshot(invoke("k", "{}")));
        started.notified().await;
        doomed.abort();
        let _ = doomed.await;

        // Well within the lease: the key is in flight.
        let early = app_b.clone().oneshot(invoke("k", "{}")).await.unwrap();
        assert_eq!(early.status(), StatusCode::CONFLICT);
        assert_eq!(healthy.total_runs(), 0);

        // Well past the lease: the first run may have had its effect. Held, it is answered
        // "outcome unknown" and never run again; with rerun_abandoned, it runs again, once.
        tokio::time::sleep(lock * 2).await;
        let late = app_b.clone().oneshot(invoke("k", "{}")).await.unwrap();
        if rerun {
            assert_eq!(late.status(), StatusCode::CREATED);
            let replay = app_b.oneshot(invoke("k", "{}")).await.unwrap();
            assert_eq!(replay.headers()["idempotent-replayed"], "true");
            assert_eq!(healthy.total_runs(), 1);
        } else {
            assert_eq!(late.status(), StatusCode::CONFLICT);
            let json: serde_json::Value = serde_json::from_slice(&body(late).await).unwrap();
            assert_eq!(json["error"], "idempotency_outcome_unknown");
            assert_eq!(healthy.total_runs(), 0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_lock_expired_cannot_store_over_the_one_that_took_over() {
    let prefix = unique_prefix("takeover");
    let store = store(&prefix);
    let fp = Fingerprint::of(&Method::POST, &"/x".parse().unwrap(), b"{}");
    let lock = Duration::from_millis(300);

    let Claim::Acquired(old) = store.claim("k", fp, lock.into()).await.unwrap() else {
        panic!("a new key is acquired");
    };
    assert!(matches!(
        store.claim("k", fp, lock.into()).await.unwrap(),
        Claim::InFlight
    ));
    tokio::time::sleep(lock * 4).await;
    let Claim::Acquired(new) = store
        .claim("k", fp, Duration::from_secs(30).into())
        .await
        .unwrap()
    else {
        panic!("an expired lock is taken over");
    };
    let response = |text: &'static str| {
        StoredResponse::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(text.as_bytes()),
        )
    };
    assert!(
        !store
            .complete("k", &old, response("old"), RETENTION)
            .await
            .unwrap()
    );
    store.release("k", &old).await.unwrap();
    assert!(matches!(
        store.claim("k", fp, lock.into()).await.unwrap(),
        Claim::InFlight
    ));
    assert!(
        store
            .complete("k", &new, response("new"), RETENTION)
            .await
            .unwrap()
    );
    match store.claim("k", fp, lock.into()).await.unwrap() {
        Claim::Completed(r) => assert_eq!(r.body().as_ref(), b"new"),
        other => panic!("expected the new owner's response, got {other:?}"),
    }
    let other = Fingerprint::of(&Method::POST, &"/x".parse().unwrap(), b"{\"x\":1}");
    assert!(matches!(
        store.claim("k", other, lock.into()).await.unwrap(),
        Claim::Mismatch
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_agree_on_replays_and_payload_mismatches() {
    let prefix = unique_prefix("agree");
    let (a, b) = (
        Instance {
            name: "a",
            ..Instance::default()
        },
        Instance {
            name: "b",
            ..Instance::default()
        },
    );
    let layer = |store| {
        ServerIdempotencyLayer::new()
            .store(store)
            .retention(RETENTION)
    };
    let app_a = a.router(layer(store(&prefix)));
    let app_b = b.router(layer(store(&prefix)));

    let first = app_a.oneshot(invoke("k", "{\"n\":1}")).await.unwrap();
    let first_body = body(first).await;
    let replay = app_b
        .clone()
        .oneshot(invoke("k", "{\"n\":1}"))
        .await
        .unwrap();
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["x-instance"], "a", "the original headers");
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(body(replay).await, first_body);

    let changed = app_b.oneshot(invoke("k", "{\"n\":2}")).await.unwrap();
    assert_eq!(changed.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(a.total_runs() + b.total_runs(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_gives_503_runs_nothing_and_stores_nothing() {
    // A port nobody listens on: bind one, then let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let prefix = unique_prefix("down");
    let down = RedisStore::open(&format!("redis://127.0.0.1:{port}"))
        .unwrap()
        .prefix(prefix.clone());
    let instance = Instance {
        name: "a",
        ..Instance::default()
    };
    let app = instance.router(
        ServerIdempotencyLayer::new()
            .store(down.clone())
            .require_key(true),
    );

    let response = app.oneshot(invoke("k", "{}")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let json: serde_json::Value = serde_json::from_slice(&body(response).await).unwrap();
    assert_eq!(json["error"], "idempotency_store_unavailable");
    let message = json["message"].as_str().unwrap();
    assert!(
        message.starts_with("idempotency store unavailable: redis:"),
        "{message}"
    );
    assert!(message.contains("not processed"), "{message}");
    assert_eq!(instance.total_runs(), 0);

    // Nothing reached the real Redis under that prefix: the key is new there.
    let fp = Fingerprint::of(
        &Method::POST,
        &"/invoke-data-action".parse().unwrap(),
        b"{}",
    );
    let real = store(&prefix);
    assert!(matches!(
        real.claim("k", fp, Duration::from_secs(1).into())
            .await
            .unwrap(),
        Claim::Acquired(_)
    ));

    // Failing open: the handler runs without idempotency.
    let open = instance.router(ServerIdempotencyLayer::new().store(down).fail_open(true));
    let response = open.oneshot(invoke("k", "{}")).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(instance.total_runs(), 1);
}

/// The client layer over a Redis store: a caller-supplied key repeated from another process is
/// answered from the store, and the service is called once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_repeat_from_another_process_is_answered_from_redis() {
    use genesys_tower::idempotency::{IdempotencyKey, IdempotencyLayer};
    use genesys_tower::{Body, BoxError};
    use tower::{Layer, service_fn};

    let prefix = unique_prefix("client");
    let calls = Arc::new(AtomicUsize::new(0));
    let process = || {
        let calls = calls.clone();
        IdempotencyLayer::new()
            .store(store(&prefix))
            .retention(RETENTION)
            .layer(service_fn(move |_req: Request<Body>| {
                let n = calls.fetch_add(1, SeqCst);
                async move {
                    let mut response = http::Response::new(Body::from(format!("created {n}")));
                    *response.status_mut() = StatusCode::CREATED;
                    Ok::<_, BoxError>(response)
                }
            }))
    };
    let order = || {
        let mut request = Request::post("/orders")
            .body(Body::from("{\"qty\":1}"))
            .unwrap();
        request
            .extensions_mut()
            .insert(IdempotencyKey::new("order-42"));
        request
    };
    let (a, b) = (process(), process());
    let first = a.oneshot(order()).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let again = b.oneshot(order()).await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let body = again.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"created 0");
    assert_eq!(calls.load(SeqCst), 1, "one call for the two processes");
}
