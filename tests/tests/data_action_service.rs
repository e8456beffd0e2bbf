//! Seed 003's data action service (`examples::data_action_service`) against the simulator.
//!
//! The Redis tests use a real Redis (`REDIS_URL`, default `redis://127.0.0.1:6379`), each under a
//! key prefix of its own, with answers kept for a minute only. Each service instance is a router
//! of its own, with its own `GenesysClient` (its own token) and its own `RedisStore` (its own
//! connection): what two processes behind a load balancer would have.
//!
//! The crash case (a handler that dies mid-request leaves its key in flight, then "outcome
//! unknown", never run again) and Redis's own faults (killed, restarted without persistence,
//! paused) are proved on the layer itself, in genesys-tower's `tests/idempotency_redis`.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use examples::data_action_service::{BODY_LIMIT, DataActionService, ROUTE, client_builder};
use genesys_sim::{Action, ActionFailure, Faults, SimConfig, SimHandle};
use genesys_tower::idempotency::{IdempotencyStore, MemoryStore, RedisStore};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tests::{CLIENT_ID, CLIENT_SECRET, spawn};
use tower::ServiceExt;

const ACTION: &str = "count";
const EXECUTE: &str = "POST /api/v2/integrations/actions/{actionId}/execute";

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn unique_prefix(test: &str) -> String {
    format!(
        "genesys-tests:data-action-service:{test}:{}:",
        uuid::Uuid::new_v4().simple()
    )
}

fn redis(prefix: &str) -> RedisStore {
    RedisStore::open(&redis_url())
        .expect("a valid REDIS_URL")
        .prefix(prefix)
}

/// A simulator whose action `count` numbers its executions and answers its input with the
/// number, so that each caller's answer says which execution it came from.
async fn simulator(faults: &str) -> SimHandle {
    let executions = Arc::new(AtomicU64::new(0));
    let count = Action::custom(move |input| {
        Ok(json!({ "execution": executions.fetch_add(1, SeqCst), "input": input }))
    });
    spawn(
        SimConfig::default()
            .users(0)
            .action(ACTION, count)
            .action(
                "reject",
                Action::Fail(ActionFailure {
                    status: 400,
                    code: "bad.request".into(),
                    message: "contactId is required".into(),
                }),
            )
            .faults(faults.parse::<Faults>().expect("a valid fault spec")),
    )
    .await
}

/// One service instance: its own client (and token) against `sim`, and `store`.
fn instance(sim: &SimHandle, store: impl IdempotencyStore) -> Router {
    let client = client_builder()
        .base_url(sim.base_url())
        .client_credentials(CLIENT_ID, CLIENT_SECRET)
        .build()
        .expect("a client for the simulator");
    DataActionService::new(client)
        .store(store)
        .default_action_id(ACTION)
        .retention(Duration::from_secs(60))
        .router()
}

/// Where the request carries its key.
#[derive(Clone, Copy)]
enum KeyIn {
    Body,
    Header,
}

fn invoke(key: Option<(&str, KeyIn)>, input: &Value) -> Request<Body> {
    let mut body = json!({ "input_payload": input });
    let mut request = Request::post(ROUTE).header("content-type", "application/json");
    match key {
        Some((key, KeyIn::Body)) => body["idempotency_key"] = json!(key),
        Some((key, KeyIn::Header)) => request = request.header("idempotency-key", key),
        None => {}
    }
    request.body(Body::from(body.to_string())).unwrap()
}

struct Answer {
    status: StatusCode,
    replayed: bool,
    retry_after: Option<u64>,
    bytes: Vec<u8>,
    json: Value,
}

async fn send(app: &Router, request: Request<Body>) -> Answer {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok()?.parse().ok());
    let bytes = response
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        replayed,
        retry_after,
        bytes,
        json,
    }
}

fn input_for(key: &str) -> Value {
    json!({ "contactId": format!("c-{key}"), "newStatus": "resolved" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_redis_run_each_of_20_keys_once_for_200_callers() {
    // Latency, so that callers of a key really overlap with its execution.
    let sim = simulator("latency=20ms..80ms").await;
    let prefix = unique_prefix("two-instances");
    let a = instance(&sim, redis(&prefix));
    let b = instance(&sim, redis(&prefix));

    let calls = (0..200).map(|i| {
        let key = format!("key-{}", i % 20);
        let app = if i % 2 == 0 { a.clone() } else { b.clone() };
        // Half the callers send the key in the body (seed 003's shape), half in the header.
        let key_in = if i % 4 < 2 {
            KeyIn::Body
        } else {
            KeyIn::Header
        };
        tokio::spawn(async move {
            let answer = send(&app, invoke(Some((&key, key_in)), &input_for(&key))).await;
            (key, answer)
        })
    });
    let mut by_key: HashMap<String, Vec<Answer>> = HashMap::new();
    for call in futures_util::future::join_all(calls).await {
        let (key, answer) = call.unwrap();
        assert_eq!(
            answer.status,
            StatusCode::OK,
            "{key}: {}",
            String::from_utf8_lossy(&answer.bytes)
        );
        by_key.entry(key).or_default().push(answer);
    }

    // The simulator ran the action exactly 20 times, once per key's payload.
    let ledger = sim.ledger_for(ACTION);
    assert_eq!(ledger.len(), 20, "one execution per key");
    let payloads: BTreeSet<_> = ledger.iter().map(|e| &e.payload_hash).collect();
    assert_eq!(payloads.len(), 20, "each execution for a different key");

    let mut executions = BTreeSet::new();
    assert_eq!(by_key.len(), 20);
    for (key, answers) in &by_key {
        assert_eq!(answers.len(), 10);
        let first = &answers[0];
        assert!(
            answers.iter().all(|a| a.bytes == first.bytes),
            "every caller of {key} gets the same answer"
        );
        let fresh = answers.iter().filter(|a| !a.replayed).count();
        assert_eq!(fresh, 1, "{key}: one original answer, the rest replays");
        let body = &first.json;
        assert_eq!(body["status"], "completed");
        assert_eq!(body["idempotency_key"], key.as_str());
        assert_eq!(body["action_id"], ACTION);
        assert_eq!(
            body["output"]["input"],
            input_for(key),
            "{key}: the answer of its own execution"
        );
        executions.insert(body["output"]["execution"].as_u64().unwrap());
    }
    assert_eq!(
        executions,
        (0..20).collect::<BTreeSet<u64>>(),
        "the 20 answers are the 20 executions"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_with_another_payload_is_422_on_either_instance_and_runs_nothing() {
    let sim = simulator("").await;
    let prefix = unique_prefix("reuse");
    let a = instance(&sim, redis(&prefix));
    let b = instance(&sim, redis(&prefix));
    let key = Some(("order-42", KeyIn::Body));

    let first = send(&a, invoke(key, &json!({"contactId": "c-1"}))).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(sim.ledger_len(), 1);

    for app in [&a, &b] {
        let changed = send(app, invoke(key, &json!({"contactId": "c-2"}))).await;
        assert_eq!(changed.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(changed.json["error"], "idempotency_key_reused");
    }
    // Another action under the same key is another request too.
    let mut other_action = invoke(None, &Value::Null);
    *other_action.body_mut() = Body::from(
        json!({"idempotency_key": "order-42", "action_id": "echo",
               "input_payload": {"contactId": "c-1"}})
        .to_string(),
    );
    let changed = send(&b, other_action).await;
    assert_eq!(changed.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(sim.ledger_len(), 1, "nothing ran for the misused key");

    // The first payload again, with the key in the header this time and its fields reordered:
    // the same request, answered from the store.
    let mut same = Request::post(ROUTE)
        .header("idempotency-key", "order-42")
        .body(Body::from(r#"{ "input_payload": { "contactId": "c-1" } }"#))
        .unwrap();
    same.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    let again = send(&b, same).await;
    assert_eq!(again.status, StatusCode::OK);
    assert!(again.replayed);
    assert_eq!(again.bytes, first.bytes);
    assert_eq!(sim.ledger_len(), 1);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_conflicting_key_is_400_and_runs_nothing() {
    let sim = simulator("").await;
    let app = instance(&sim, redis(&unique_prefix("missing")));

    let missing = send(&app, invoke(None, &json!({"contactId": "c-1"}))).await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.json["error"], "idempotency_key_missing");
    let message = missing.json["message"].as_str().unwrap();
    assert!(
        message.contains("Idempotency-Key header") && message.contains("\"idempotency_key\""),
        "{message}"
    );

    let mut both = invoke(Some(("k-1", KeyIn::Header)), &Value::Null);
    *both.body_mut() = Body::from(
        json!({"idempotency_key": "k-2", "input_payload": {"contactId": "c-1"}}).to_string(),
    );
    let conflicting = send(&app, both).await;
    assert_eq!(conflicting.status, StatusCode::BAD_REQUEST);
    assert_eq!(conflicting.json["error"], "idempotency_key_mismatch");

    let no_input = Request::post(ROUTE)
        .header("idempotency-key", "k-3")
        .body(Body::from(r#"{"input":{"contactId":"c-1"}}"#))
        .unwrap();
    let malformed = send(&app, no_input).await;
    assert_eq!(malformed.status, StatusCode::BAD_REQUEST);
    assert_eq!(malformed.json["error"], "invalid_request");

    assert_eq!(sim.ledger_len(), 0);
    assert_eq!(sim.stats().count(EXECUTE, 200), 0);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unreachable_is_503_runs_nothing_and_stores_nothing() {
    let sim = simulator("").await;
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
    let app = instance(&sim, down);
    let key = Some(("k", KeyIn::Body));
    let input = json!({"contactId": "c-1"});

    let refused = send(&app, invoke(key, &input)).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.json["error"], "idempotency_store_unavailable");
    let message = refused.json["message"].as_str().unwrap();
    assert!(
        message.contains("redis") && message.contains("not processed"),
        "{message}"
    );
    assert_eq!(sim.ledger_len(), 0, "no execution without the store");

    // Nothing was stored under the prefix: an instance on the real Redis runs the key afresh.
    let healthy = instance(&sim, redis(&prefix));
    let answer = send(&healthy, invoke(key, &input)).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(!answer.replayed);
    assert_eq!(sim.ledger_len(), 1);
    sim.shutdown().await;
}

/// The caller hangs up while the action runs (a client timeout): the call goes on, its answer is
/// stored, and the caller's retry gets it; the action runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_hangs_up_does_not_cancel_the_call_and_its_retry_gets_the_answer() {
    let sim = simulator("latency=300ms").await;
    let app = instance(&sim, MemoryStore::new());
    let input = json!({"contactId": "c-1"});
    let key = Some(("hang-up", KeyIn::Body));

    let gave_up =
        tokio::time::timeout(Duration::from_millis(50), send(&app, invoke(key, &input))).await;
    assert!(gave_up.is_err(), "the caller hung up before the answer");
    // The retry waits for the call still running, then gets its answer.
    let retry = send(&app, invoke(key, &input)).await;
    assert_eq!(retry.status, StatusCode::OK, "{}", retry.json);
    assert!(retry.replayed);
    assert_eq!(sim.ledger_len(), 1, "the action ran once");
    sim.shutdown().await;
}

/// A Redis server of this test's own, on a free port, that the test can stop.
struct PrivateRedis {
    child: std::process::Child,
    url: String,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on the PATH (`.ci/run` installs it)");
        let url = format!("redis://127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return PrivateRedis { child, url };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("redis-server did not start on port {port}");
    }

    fn stop(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Redis stops while the service runs (its connection was up): every request gets 503, a repeat
/// of a key that already ran included, and nothing runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopping_mid_run_is_503_and_runs_nothing_more() {
    let sim = simulator("").await;
    let mut redis = PrivateRedis::start();
    let store = RedisStore::open(&redis.url).unwrap().prefix("stop-test:");
    let app = instance(&sim, store);
    let input = json!({"contactId": "c-1"});

    let first = send(&app, invoke(Some(("k1", KeyIn::Body)), &input)).await;
    assert_eq!(first.status, StatusCode::OK);
    let replay = send(&app, invoke(Some(("k1", KeyIn::Header)), &input)).await;
    assert!(replay.replayed && replay.bytes == first.bytes);
    assert_eq!(sim.ledger_len(), 1);

    redis.stop();
    for (key, what) in [("k1", "a key that ran"), ("k2", "a new key")] {
        let answer = send(&app, invoke(Some((key, KeyIn::Body)), &input)).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{what}");
        assert_eq!(
            answer.json["error"], "idempotency_store_unavailable",
            "{what}"
        );
        let message = answer.json["message"].as_str().unwrap();
        assert!(message.contains("not processed"), "{what}: {message}");
    }
    assert_eq!(sim.ledger_len(), 1, "nothing ran while the store was down");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_genesys_4xx_is_422_with_its_code_and_is_not_stored() {
    let sim = simulator("").await;
    let app = instance(&sim, MemoryStore::new());
    let request = || {
        let mut request = invoke(None, &Value::Null);
        *request.body_mut() = Body::from(
            json!({"idempotency_key": "k", "action_id": "reject", "input_payload": {}}).to_string(),
        );
        request
    };

    for attempt in 1..=2 {
        let answer = send(&app, request()).await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(!answer.replayed, "not stored: a retry asks Genesys again");
        let body = &answer.json;
        assert_eq!(body["error"], "genesys_rejected");
        assert_eq!(body["action_may_have_run"], false);
        assert_eq!(body["genesys"]["status"], 400);
        assert_eq!(body["genesys"]["code"], "bad.request");
        assert_eq!(body["genesys"]["message"], "contactId is required");
        assert!(body["genesys"]["correlation_id"].as_str().is_some());
        assert_eq!(sim.stats().count(EXECUTE, 400), attempt);
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn an_outcome_unknown_is_504_that_says_so_and_is_replayed_without_running_again() {
    // The simulator applies the action, then resets the connection: the client cannot know.
    let sim = simulator("reset-after=1").await;
    let app = instance(&sim, MemoryStore::new());
    let key = Some(("k", KeyIn::Header));
    let input = json!({"contactId": "c-1"});

    let first = send(&app, invoke(key, &input)).await;
    assert_eq!(first.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(first.json["error"], "outcome_unknown");
    assert_eq!(first.json["action_may_have_run"], true);
    assert!(
        first.json["message"]
            .as_str()
            .unwrap()
            .contains("may have run"),
        "{}",
        first.json
    );
    assert_eq!(sim.ledger_len(), 1, "it did run");

    let again = send(&app, invoke(key, &input)).await;
    assert_eq!(again.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(again.replayed);
    assert_eq!(again.bytes, first.bytes);
    assert_eq!(sim.ledger_len(), 1, "a retry never runs it twice");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_long_rate_limit_is_503_with_retry_after_and_is_not_stored() {
    let sim = simulator("long-retry-after=1").await;
    let app = instance(&sim, MemoryStore::new());
    let key = Some(("k", KeyIn::Body));
    let input = json!({"contactId": "c-1"});

    for attempt in 1..=2 {
        let answer = send(&app, invoke(key, &input)).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(answer.json["error"], "genesys_rate_limited");
        assert_eq!(answer.json["action_may_have_run"], false);
        let wait = answer.retry_after.expect("a Retry-After");
        assert!((181..=3600).contains(&wait), "{wait}");
        assert!(!answer.replayed);
        assert_eq!(sim.stats().fault_count("long-retry-after"), attempt);
    }
    assert_eq!(sim.ledger_len(), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn refused_credentials_are_502_and_run_nothing() {
    let sim = simulator("").await;
    let client = client_builder()
        .base_url(sim.base_url())
        .client_credentials(CLIENT_ID, "not-the-secret")
        .build()
        .unwrap();
    let app = DataActionService::new(client)
        .default_action_id(ACTION)
        .router();

    let answer = send(
        &app,
        invoke(Some(("k", KeyIn::Body)), &json!({"contactId": "c-1"})),
    )
    .await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
    assert_eq!(answer.json["error"], "genesys_auth_failed");
    assert_eq!(answer.json["action_may_have_run"], false);
    assert!(
        !answer.bytes.windows(14).any(|w| w == b"not-the-secret"),
        "the secret is never shown"
    );
    assert_eq!(sim.ledger_len(), 0);
    sim.shutdown().await;
}

/// The body limit is on what the caller sent: a body of exactly the limit, its key in a header,
/// runs (the canonical rewrite that adds the action id does not push it over), and one byte more
/// is refused with 413 before anything runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_of_exactly_the_limit_runs_and_one_byte_more_is_413() {
    let executions = Arc::new(AtomicU64::new(0));
    let count = {
        let executions = executions.clone();
        Action::custom(move |_input| Ok(json!({ "execution": executions.fetch_add(1, SeqCst) })))
    };
    let mut config = SimConfig::default().users(0).action(ACTION, count);
    // Room for the forwarded payload: the simulator's own limit is not under test here.
    config.max_body_bytes = 4 * BODY_LIMIT;
    let sim = spawn(config).await;
    let app = instance(&sim, MemoryStore::new());
    let sized = |len: usize, key: &str| {
        let (head, tail) = (r#"{"input_payload":{"pad":""#, r#""}}"#);
        let pad = "x".repeat(len - head.len() - tail.len());
        let body = format!("{head}{pad}{tail}");
        assert_eq!(body.len(), len);
        Request::post(ROUTE)
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(Body::from(body))
            .unwrap()
    };

    let at_limit = send(&app, sized(BODY_LIMIT, "at-limit")).await;
    assert_eq!(
        at_limit.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&at_limit.bytes)
    );
    assert_eq!(executions.load(SeqCst), 1);

    let over = send(&app, sized(BODY_LIMIT + 1, "over-limit")).await;
    assert_eq!(over.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(over.json["error"], "request_body_too_large");
    assert_eq!(
        executions.load(SeqCst),
        1,
        "nothing ran for the body over the limit"
    );
}
