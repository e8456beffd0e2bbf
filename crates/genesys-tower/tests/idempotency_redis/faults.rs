//! The Redis store under the faults a real Redis has: killed and restarted with and without
//! persistence, paused (SIGSTOP) with claims queued, killed as an answer is being stored. Each
//! test runs a `redis-server` process of its own and does these things to it for real; the
//! ledger (runs per key) must never show a key run twice, and no request may wait past its
//! deadline.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use genesys_tower::idempotency::RedisStore;
use genesys_tower::idempotency::server::ServerIdempotencyLayer;
use http::StatusCode;
use tower::ServiceExt;

use super::{Instance, RETENTION, body, invoke};

/// A `redis-server` of the test's own, on a free port, in a directory of its own.
pub(crate) struct PrivateRedis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    persistent: bool,
}

impl PrivateRedis {
    /// Without persistence (`--save "" --appendonly no`): a restart loses everything.
    pub(crate) fn volatile() -> Self {
        Self::start(false)
    }

    /// With the settings the docs ask for: `appendonly yes`, `appendfsync always`.
    pub(crate) fn durable() -> Self {
        Self::start(true)
    }

    fn start(persistent: bool) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!(
            "genesys-tower-redis-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = PrivateRedis {
            child: None,
            port,
            dir,
            persistent,
        };
        redis.restart();
        redis
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again), on the same port and directory.
    pub(crate) fn restart(&mut self) {
        assert!(self.child.is_none(), "kill it first");
        let mut command = Command::new("redis-server");
        command
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--save", "", "--maxmemory-policy", "noeviction"]);
        if self.persistent {
            command.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            command.args(["--appendonly", "no"]);
        }
        let child = command
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on the PATH (`.ci/run` installs it)");
        self.child = Some(child);
        for _ in 0..250 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    /// SIGKILL: no chance to save anything.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// SIGSTOP: the server keeps its connections and answers nothing.
    pub(crate) fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT: the server runs what queued up while it was paused.
    pub(crate) fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.resume();
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn layer(store: RedisStore) -> ServerIdempotencyLayer {
    ServerIdempotencyLayer::new()
        .store(store)
        .require_key(true)
        .retention(RETENTION)
        .lock_ttl(Duration::from_secs(2))
        .store_timeout(Duration::from_millis(600))
}

fn store(redis: &PrivateRedis) -> RedisStore {
    RedisStore::open(&redis.url())
        .unwrap()
        .prefix("faults:")
        .loss_quarantine(RETENTION)
}

async fn answer(app: &Router, key: &str) -> (StatusCode, serde_json::Value, bool) {
    // A guard against a hang, far above the store timeout: not a measure of speed.
    let response = tokio::time::timeout(
        Duration::from_secs(30),
        app.clone().oneshot(invoke(key, "{}")),
    )
    .await
    .expect("an answer within the store timeout, not a hang")
    .unwrap();
    let status = response.status();
    let replayed = response.headers().contains_key("idempotent-replayed");
    let json = serde_json::from_slice(&body(response).await).unwrap_or_default();
    (status, json, replayed)
}

/// The first call on a connection that Redis's restart broke fails (503, nothing run) while the
/// store reconnects; a caller retries it, as this does.
async fn answer_after_restart(app: &Router, key: &str) -> (StatusCode, serde_json::Value, bool) {
    for _ in 0..20 {
        let answer = answer(app, key).await;
        if answer.1["error"] != "idempotency_store_unavailable" {
            return answer;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the store did not reconnect to the restarted Redis");
}

/// An instance over `redis`, its store's connection up: it answered a request.
async fn answering(redis: &PrivateRedis) -> (Instance, Router) {
    let instance = Instance {
        name: "a",
        ..Instance::default()
    };
    let app = instance.router(layer(store(redis)));
    assert_eq!(answer(&app, "before").await.0, StatusCode::CREATED);
    (instance, app)
}

fn keys(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("key-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_persistence_refuses_the_lost_keys_instead_of_running_them_again() {
    let mut redis = PrivateRedis::volatile();
    let instance = Instance {
        name: "a",
        ..Instance::default()
    };
    let store_a = store(&redis);
    let app = instance.router(layer(store_a.clone()));
    for key in keys(40) {
        assert_eq!(answer(&app, &key).await.0, StatusCode::CREATED);
    }

    redis.kill();
    redis.restart();

    for key in keys(40) {
        let (status, json, _) = answer_after_restart(&app, &key).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{key}: {json}");
        assert_eq!(json["error"], "idempotency_store_lost", "{key}");
    }
    assert_eq!(instance.total_runs(), 40, "none of the 40 ran again");

    // A process that starts after the loss learns of it from Redis: a new key is refused too,
    // because it cannot be told from a lost one.
    let late = Instance {
        name: "late",
        ..Instance::default()
    };
    let late_app = late.router(layer(store(&redis)));
    assert_eq!(
        answer_after_restart(&late_app, "key-7").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        answer_after_restart(&late_app, "new").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(late.total_runs(), 0);

    // An operator who checked lifts the quarantine: keys run again, once.
    store_a.end_quarantine().await.unwrap();
    assert_eq!(
        answer_after_restart(&late_app, "new").await.0,
        StatusCode::CREATED
    );
    let (status, _, replayed) = answer_after_restart(&app, "new").await;
    assert_eq!((status, replayed), (StatusCode::CREATED, true));
    assert_eq!(late.total_runs() + instance.total_runs(), 41);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loss_seen_first_by_a_new_process_is_still_caught_by_one_that_knew_the_epoch() {
    let mut redis = PrivateRedis::volatile();
    let instance = Instance {
        name: "a",
        ..Instance::default()
    };
    let app = instance.router(layer(store(&redis)));
    assert_eq!(
        answer_after_restart(&app, "done-before").await.0,
        StatusCode::CREATED
    );
    redis.kill();
    redis.restart();

    // A process started after the restart cannot know: its first key runs.
    let fresh = Instance {
        name: "fresh",
        ..Instance::default()
    };
    let fresh_app = fresh.router(layer(store(&redis)));
    assert_eq!(
        answer_after_restart(&fresh_app, "first").await.0,
        StatusCode::CREATED
    );
    // The process that knew the old epoch sees a new one, and starts the quarantine for all.
    let (status, json, _) = answer_after_restart(&app, "done-before").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
    assert_eq!(
        answer_after_restart(&fresh_app, "done-before").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(instance.total_runs(), 1);
    assert_eq!(fresh.total_runs(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_persistence_replays_every_answer() {
    let mut redis = PrivateRedis::durable();
    assert!(
        store(&redis)
            .durability()
            .await
            .unwrap()
            .problems()
            .is_empty()
    );
    let instance = Instance {
        name: "a",
        ..Instance::default()
    };
    let app = instance.router(layer(store(&redis)));
    let mut first = Vec::new();
    for key in keys(40) {
        let (status, json, _) = answer(&app, &key).await;
        assert_eq!(status, StatusCode::CREATED);
        first.push(json);
    }

    redis.kill();
    redis.restart();

    for (key, first) in keys(40).iter().zip(&first) {
        let (status, json, replayed) = answer_after_restart(&app, key).await;
        assert_eq!((status, replayed), (StatusCode::CREATED, true), "{key}");
        assert_eq!(&json, first);
    }
    assert_eq!(instance.total_runs(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_queued_while_redis_was_paused_lock_no_key_once_it_resumes() {
    let redis = PrivateRedis::volatile();
    let (instance, app) = answering(&redis).await;

    redis.pause();
    let during = futures_util::future::join_all(keys(20).into_iter().map(|key| {
        let app = app.clone();
        async move { answer(&app, &key).await }
    }))
    .await;
    for (status, json, _) in &during {
        assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{json}");
        assert_eq!(json["error"], "idempotency_store_unavailable");
    }
    redis.resume();
    // Redis now runs the 20 claims that queued up while it was paused, past their deadline.
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();

    // Retried at once, every key runs: none is locked by a claim its caller gave up on.
    for key in keys(20) {
        let (status, json, _) = answer(&app, &key).await;
        assert_eq!(status, StatusCode::CREATED, "{key}: {json}");
    }
    assert_eq!(instance.total_runs(), 21);
}

/// A renewal held up in a paused Redis past its deadline does nothing, but the claim is still
/// the handler's: the heartbeat goes on, and a repeat while the handler runs is told the
/// request is in progress, not that its outcome is unknown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_late_through_a_pause_does_not_give_the_claim_up() {
    let redis = PrivateRedis::volatile();
    let instance = Instance {
        name: "a",
        delay: Duration::from_secs(6),
        ..Instance::default()
    };
    // Renewed every 100 ms; a renewal is late 1 s after it was sent, and given up at 2 s (the
    // store's own wait for an answer too).
    let app = instance.router(
        layer(store(&redis))
            .lock_ttl(Duration::from_millis(300))
            .store_timeout(Duration::from_secs(2)),
    );
    let first = tokio::spawn({
        let app = app.clone();
        async move { answer(&app, "slow").await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A renewal sent now is answered in about 1.5 s: past its deadline, before the timeout.
    redis.pause();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.resume();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The repeat goes to another instance, which knows only what Redis says.
    let other = Instance {
        name: "b",
        ..Instance::default()
    }
    .router(layer(store(&redis)));
    let (status, json, _) = answer(&other, "slow").await;
    assert_eq!(status, StatusCode::CONFLICT, "{json}");
    assert_eq!(json["error"], "idempotency_request_in_progress", "{json}");
    let (status, json, _) = first.await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{json}");
    assert_eq!(instance.total_runs(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_being_stored_as_redis_dies_is_stored_when_it_comes_back() {
    for durable in [true, false] {
        let redis = Arc::new(Mutex::new(if durable {
            PrivateRedis::durable()
        } else {
            PrivateRedis::volatile()
        }));
        let runs = Arc::new(Mutex::new(0_usize));
        let layer = layer(store(&redis.lock().unwrap()));
        let app = {
            let (redis, runs) = (redis.clone(), runs.clone());
            Router::new()
                .route(
                    "/invoke-data-action",
                    post(move || {
                        let (redis, runs) = (redis.clone(), runs.clone());
                        async move {
                            *runs.lock().unwrap() += 1;
                            // The action is done; Redis dies before its answer is stored.
                            redis.lock().unwrap().kill();
                            (StatusCode::CREATED, "the action's answer")
                        }
                    }),
                )
                .layer(layer)
        };

        let (status, _, _) = answer(&app, "k").await;
        assert_eq!(status, StatusCode::CREATED, "the caller gets its answer");
        let (status, json, _) = answer(&app, "k").await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "Redis is down: {json}"
        );

        redis.lock().unwrap().restart();
        // Until the answer kept in the background lands, repeats are refused, never run.
        let mut replayed = false;
        for _ in 0..240 {
            let (status, json, was_replayed) = answer(&app, "k").await;
            if was_replayed {
                assert_eq!(status, StatusCode::CREATED);
                replayed = true;
                break;
            }
            assert!(
                [StatusCode::SERVICE_UNAVAILABLE, StatusCode::CONFLICT].contains(&status),
                "durable={durable}: {status} {json}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(
            replayed,
            "durable={durable}: the answer reached Redis once it was back"
        );
        assert_eq!(*runs.lock().unwrap(), 1, "durable={durable}: ran once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durability_names_the_settings_that_fall_short() {
    let redis = PrivateRedis::volatile();
    let problems = store(&redis).durability().await.unwrap().problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("appendonly yes"), "{problems:?}");

    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for (name, value) in [
        ("appendonly", "yes"),
        ("appendfsync", "everysec"),
        ("maxmemory-policy", "allkeys-lru"),
    ] {
        let _: String = redis::cmd("CONFIG")
            .arg("SET")
            .arg(name)
            .arg(value)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let problems = store(&redis).durability().await.unwrap().problems();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems[0].contains("appendfsync always"), "{problems:?}");
    assert!(problems[1].contains("noeviction"), "{problems:?}");
}

/// A server call dropped (its client hung up) while its claim is on its way to a paused Redis:
/// the claim is made once Redis resumes, within its deadline, but its answer reaches no one. The
/// store releases it: the retry runs at once, rather than waiting out the lease and then being
/// told the outcome is unknown, though the handler never ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_caller_hung_up_before_its_answer_leaves_no_lock() {
    let redis = PrivateRedis::volatile();
    let instance = Instance {
        name: "a",
        ..Instance::default()
    };
    // A claim's deadline of 10 s (half the store timeout): made when Redis resumes, however
    // slow the machine, so that its answer surely reaches no one.
    let app = instance.router(layer(store(&redis)).store_timeout(Duration::from_secs(20)));
    assert_eq!(answer(&app, "before").await.0, StatusCode::CREATED);

    redis.pause();
    let hung_up = tokio::time::timeout(
        Duration::from_millis(100),
        app.clone().oneshot(invoke("k", "{}")),
    )
    .await;
    assert!(hung_up.is_err(), "no answer while Redis is paused");
    redis.resume();
    let (status, json, _) = answer(&app, "k").await;
    assert_eq!(status, StatusCode::CREATED, "{json}");
    assert_eq!(instance.total_runs(), 2, "the key ran once");
}

/// The client layer's claim, sent without a deadline, made by a paused Redis after its caller
/// gave up: released as soon as Redis runs it, so the repeat is sent, not held for the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_claim_given_up_during_a_pause_leaves_no_lock() {
    use genesys_tower::idempotency::{IdempotencyKey, IdempotencyLayer};
    use genesys_tower::{Body, BoxError};
    use tower::{Layer, service_fn};

    let redis = PrivateRedis::volatile();
    let sent = Arc::new(Mutex::new(0usize));
    let counted = sent.clone();
    let client = IdempotencyLayer::new()
        .store(store(&redis))
        .retention(RETENTION)
        .layer(service_fn(move |_req: http::Request<Body>| {
            *counted.lock().unwrap() += 1;
            async move {
                let mut response = http::Response::new(Body::from("created"));
                *response.status_mut() = StatusCode::CREATED;
                Ok::<_, BoxError>(response)
            }
        }));
    let order = |key: &str| {
        let mut request = http::Request::post("/orders")
            .body(Body::from("{\"qty\":1}"))
            .unwrap();
        request.extensions_mut().insert(IdempotencyKey::new(key));
        request
    };
    // The store's connection is up before the pause.
    let before = client.clone().oneshot(order("order-6")).await.unwrap();
    assert_eq!(before.status(), StatusCode::CREATED);

    redis.pause();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(100),
        client.clone().oneshot(order("order-7")),
    )
    .await;
    assert!(gave_up.is_err(), "no answer while Redis is paused");
    redis.resume();
    // A guard against a hang, far below the layer's 5-minute lease: not a measure of speed.
    let repeat = tokio::time::timeout(Duration::from_secs(30), client.oneshot(order("order-7")))
        .await
        .expect("the repeat is not held by the abandoned claim")
        .unwrap();
    assert_eq!(repeat.status(), StatusCode::CREATED);
    assert_eq!(*sent.lock().unwrap(), 2, "order-7 sent once");
}
