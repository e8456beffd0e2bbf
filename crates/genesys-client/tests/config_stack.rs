//! A configuration's `[retry]` statuses and per-route safety, as a user of the client sees them
//! against the simulator: what is retried, and what is never sent twice.

use genesys_client::config::StackConfig;
use genesys_client::{GenesysClient, GenesysError};
use genesys_sim::{Faults, SimConfig, SimHandle, Simulator};
use http::Request;

/// A simulator where every API request meets `faults`.
async fn sim(faults: &str) -> SimHandle {
    Simulator::spawn(
        SimConfig::default()
            .users(1)
            .faults(faults.parse::<Faults>().unwrap())
            .seed(3),
    )
    .await
    .unwrap()
}

fn client(sim: &SimHandle, config: &str) -> GenesysClient {
    build(sim, config).unwrap()
}

/// A client with the configuration `config` (which must be valid), or why it cannot be built.
fn build(sim: &SimHandle, config: &str) -> Result<GenesysClient, GenesysError> {
    let config = StackConfig::from_toml(config).unwrap_or_else(|e| panic!("{e}"));
    GenesysClient::builder()
        .base_url(sim.base_url())
        .client_credentials("demo-client", "demo-secret")
        .config(&config)
        .build()
}

/// A GET of the simulator's one user, through the client's stack.
async fn get_user(client: &GenesysClient, sim: &SimHandle) -> Result<u16, GenesysError> {
    let id = sim.user_ids().remove(0);
    let request = Request::get(format!("/api/v2/users/{id}"))
        .body(genesys_client::Body::empty())
        .unwrap();
    client.call(request).await.map(|r| r.status.as_u16())
}

/// Short delays and no budget, so that every call makes its four attempts quickly; `retry`
/// adds keys to `[retry]`, `rest` adds tables after it.
fn fast(retry: &str, rest: &str) -> String {
    format!(
        "profile = \"test\"\n[retry]\nbase_delay = \"1ms\"\nmax_delay = \"5ms\"\n{retry}\n\
         [retry.budget]\nenabled = false\n{rest}"
    )
}

#[tokio::test]
async fn statuses_left_off_the_list_are_returned_after_one_attempt() {
    // Every answer a 502, 503 or 504: the default retries them, four attempts in all.
    let sim = sim("5xx=1").await;
    let default = client(&sim, &fast("", ""));
    let err = get_user(&default, &sim).await.unwrap_err();
    assert!(matches!(err, GenesysError::Api(_)), "{err}");
    assert_eq!(sim.stats().fault_count("5xx"), 4);

    // With only 429 listed, the caller gets the first 5xx at once.
    let only_429 = client(&sim, &fast("statuses = [429]", ""));
    let err = get_user(&only_429, &sim).await.unwrap_err();
    assert!(matches!(err, GenesysError::Api(_)), "{err}");
    assert_eq!(sim.stats().fault_count("5xx"), 5, "one attempt more");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_route_made_unsafe_by_configuration_is_never_replayed_after_a_reset() {
    // The server does the work, then the connection breaks: the outcome is unknown.
    let sim = sim("reset-after=1").await;
    // A GET is idempotent: the default replays it.
    let default = client(&sim, &fast("", ""));
    assert!(get_user(&default, &sim).await.is_err());
    assert_eq!(sim.stats().fault_count("reset-after"), 4);

    // The operator says this route must not run twice: one attempt, and the caller is told
    // the outcome is unknown.
    let unsafe_route = client(
        &sim,
        &fast(
            "",
            "[[retry.routes]]\nmethod = \"GET\"\nroute = \"/api/v2/users/{userId}\"\n\
             safety = \"unsafe\"\n",
        ),
    );
    let err = get_user(&unsafe_route, &sim).await.unwrap_err();
    assert!(
        matches!(err, GenesysError::OutcomeUnknown { .. }),
        "{err:?}"
    );
    assert_eq!(sim.stats().fault_count("reset-after"), 5);

    // A rule for another route, or another method, leaves this one alone.
    let elsewhere = client(
        &sim,
        &fast(
            "",
            "[[retry.routes]]\nmethod = \"PATCH\"\nroute = \"/api/v2/users/{userId}\"\n\
             safety = \"unsafe\"\n[[retry.routes]]\nmethod = \"*\"\nroute = \"/api/v2/users\"\n\
             safety = \"unsafe\"\n",
        ),
    );
    assert!(get_user(&elsewhere, &sim).await.is_err());
    assert_eq!(sim.stats().fault_count("reset-after"), 9);
    sim.shutdown().await;
}

/// The Redis every test that needs one uses (CI starts it).
const REDIS: &str = "redis://127.0.0.1:6379";

#[cfg(feature = "redis")]
#[tokio::test]
async fn a_redis_store_named_by_configuration_answers_another_clients_repeat() {
    let sim = sim("").await;
    let config = format!("[idempotency]\nstore = \"{REDIS}\"\nretention = \"10m\"\n");
    let first = client(&sim, &config);
    let second = client(&sim, &config);
    let key = format!("config-store-{}", uuid_ish());
    let path = format!(
        "/api/v2/integrations/actions/{}/execute",
        genesys_sim::ECHO_ACTION_ID
    );
    let post = || {
        Request::post(&path)
            .header("idempotency-key", &key)
            .header("content-type", "application/json")
            .body(genesys_client::Body::from(r#"{"order": 42}"#))
            .unwrap()
    };
    let a = first.call(post()).await.unwrap();
    // Another client, with its own memory: the repeat is answered from Redis, not sent.
    let b = second.call(post()).await.unwrap();
    assert_eq!(a.body, b.body);
    assert_eq!(b.headers["idempotent-replayed"], "true");
    let executed = sim
        .stats()
        .count("POST /api/v2/integrations/actions/{actionId}/execute", 200);
    assert_eq!(executed, 1, "the action ran once");
    sim.shutdown().await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn a_redis_store_whose_password_variable_is_unset_is_refused_when_built() {
    let sim = sim("").await;
    let config = format!(
        "[idempotency]\nstore = \"{REDIS}\"\nstore_password_env = \"GENESYS_TEST_UNSET_PASSWORD\"\n"
    );
    let err = build(&sim, &config).unwrap_err().to_string();
    assert!(
        err.contains("GENESYS_TEST_UNSET_PASSWORD, which is not set"),
        "{err}"
    );
    sim.shutdown().await;
}

#[cfg(not(feature = "redis"))]
#[tokio::test]
async fn without_the_redis_feature_a_redis_store_is_refused_when_built() {
    let sim = sim("").await;
    let config = format!("[idempotency]\nstore = \"{REDIS}\"\n");
    let err = build(&sim, &config).unwrap_err().to_string();
    assert!(
        err.contains("enable genesys-client's `redis` feature"),
        "{err}"
    );
    sim.shutdown().await;
}

/// A key no earlier run used: the process id and the time.
#[cfg(feature = "redis")]
fn uuid_ish() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}
