//! Users end to end: many updates through faults, a quota and short-lived tokens.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, TryStreamExt};
use genesys_client::{GenesysClient, GenesysError, Metrics};
use genesys_sim::SimConfig;
use genesys_tower::retry::RetryBudget;
use serde_json::{Map, Value, json};
use tests::{client_for, spawn};

const PATCH_ROUTE: &str = "/api/v2/users/{userId}";

fn fields(name: String) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("name".into(), Value::String(name));
    m
}

/// 10,000 updates (1,000 users, 10 rounds each) with 5 % 5xx, 1 % connections reset before the
/// effect, a per-token quota of 1,500 per second that the client overruns (no rate-limit headers), and
/// tokens that live 5 s: every update lands once, as requested, with no failure, and a token is
/// fetched once per (early-refreshed) lifetime, not more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_updates_apply_exactly_once_through_faults_quota_and_expiry() {
    const USERS: usize = 1_000;
    const ROUNDS: usize = 10;
    let sim = spawn(
        SimConfig::default()
            .users(USERS)
            .token_ttl(Duration::from_secs(5))
            .rate_limit(Some((1_500, Duration::from_secs(1))))
            // Without the rate-limit headers the client cannot see the quota coming: it learns
            // from the 429s alone (a client must work with and without them).
            .ratelimit_headers(false)
            .faults("5xx=0.05,reset-before=0.01".parse().unwrap())
            .seed(11),
    )
    .await;
    let metrics = Metrics::new();
    let client = client_for(&sim)
        .retry_policy(
            GenesysClient::retry_policy_builder()
                .max_attempts(10)
                .base_delay(Duration::from_millis(20))
                .max_delay(Duration::from_secs(1))
                .budget(RetryBudget::new().retry_ratio(0.5))
                .deadline(Duration::from_secs(60))
                .build(),
        )
        .max_in_flight(32)
        // Faster than the server's quota, so that 429s happen and are handled.
        .pacing(2_600, Duration::from_secs(1))
        .metrics(metrics.clone())
        .build()
        .unwrap();

    let started = Instant::now();
    let ids = sim.user_ids();
    let mut tasks = Vec::new();
    for id in ids.iter().take(USERS) {
        let id = id.clone();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            for round in 0..ROUNDS {
                let wanted = format!("{id}-round-{round}");
                match client.update_user(&id, fields(wanted.clone())).await {
                    Ok(user) if user.name.as_deref() == Some(wanted.as_str()) => {}
                    Ok(user) => failures.push(format!("{id}: got {:?}", user.name)),
                    Err(e) => failures.push(format!("{id}: {e}")),
                }
            }
            failures
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        failures.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        failures.first()
    );

    // The final state is the last requested one, for every user.
    for id in ids.iter().take(USERS) {
        let user = sim.user(id).unwrap();
        assert_eq!(user["name"], json!(format!("{id}-round-{}", ROUNDS - 1)));
    }
    // Every update applied exactly once.
    let mut per_user: HashMap<String, usize> = HashMap::new();
    for e in sim.ledger() {
        if e.method == "PATCH" && e.route == PATCH_ROUTE {
            *per_user.entry(e.entity).or_default() += 1;
        }
    }
    assert_eq!(per_user.values().sum::<usize>(), USERS * ROUNDS);
    assert!(per_user.values().all(|&n| n == ROUNDS));

    let stats = sim.stats();
    assert!(stats.fault_count("5xx") > 0 && stats.fault_count("reset-before") > 0);
    assert!(stats.rate_limited > 0, "the quota never bit: {stats:?}");

    // One token per lifetime: refreshed a fifth of the lifetime early (every 4 s), never more
    // often, and the client fetched exactly what the server issued.
    let tokens = stats.tokens_issued;
    let lower = (elapsed.as_secs_f64() / 5.0).floor() as u64;
    let upper = (elapsed.as_secs_f64() / 4.0).ceil() as u64 + 1;
    assert!(
        (lower.max(1)..=upper).contains(&tokens),
        "{tokens} tokens in {elapsed:?} (expected {lower}..={upper})"
    );
    assert_eq!(metrics.snapshot().token_fetches, tokens);
    eprintln!(
        "{} updates in {elapsed:?}; {tokens} tokens; sim {stats:?}; client {:?}",
        USERS * ROUNDS,
        metrics.snapshot()
    );
    sim.shutdown().await;
}

/// A PATCH whose connection is reset after the server applied it is sent again (it carries the
/// version, so it cannot apply twice); the conflict that follows is resolved by reading the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_to_a_versioned_patch_is_resolved_by_reading_again() {
    let sim = spawn(
        SimConfig::default()
            .users(50)
            .rate_limit(None)
            .faults("reset-after=0.3".parse().unwrap())
            .seed(5),
    )
    .await;
    let client = client_for(&sim)
        .retry_policy(
            GenesysClient::retry_policy_builder()
                .max_attempts(8)
                .base_delay(Duration::from_millis(5))
                .max_delay(Duration::from_millis(50))
                .no_budget()
                .build(),
        )
        .no_pacing()
        .build()
        .unwrap();
    let ids = sim.user_ids();
    for id in &ids {
        let user = client
            .update_user(id, fields(format!("{id}-renamed")))
            .await
            .unwrap();
        assert_eq!(user.name.as_deref(), Some(format!("{id}-renamed").as_str()));
    }
    assert!(sim.stats().fault_count("reset-after") > 0);
    // Each update applied once, whatever the lost answers.
    for id in &ids {
        let patches = sim
            .ledger_for(id)
            .into_iter()
            .filter(|e| e.method == "PATCH")
            .count();
        assert_eq!(patches, 1, "user {id}");
    }
    sim.shutdown().await;
}

#[tokio::test]
async fn users_are_listed_page_by_page_and_missing_ones_are_typed() {
    let sim = spawn(SimConfig::default().users(250).rate_limit(None)).await;
    let client = client_for(&sim).no_pacing().build().unwrap();
    let users: Vec<_> = client.list_users(100).try_collect().await.unwrap();
    assert_eq!(users.len(), 250);
    let distinct: std::collections::HashSet<_> = users.iter().map(|u| u.id.as_str()).collect();
    assert_eq!(distinct.len(), 250);
    let pages: Vec<_> = client.list_user_pages(100).try_collect().await.unwrap();
    assert_eq!(pages.len(), 3);

    let err = client.get_user("no-such-user").await.unwrap_err();
    assert_eq!(err.status(), Some(http::StatusCode::NOT_FOUND));
    assert_eq!(err.code(), Some("not.found"));
    let api = err.api().unwrap();
    assert!(api.context_id().is_some());
    assert_eq!(api.context_id(), api.correlation_id());
    assert!(matches!(err, GenesysError::Api(_)));
    sim.shutdown().await;
}

/// Behind a cache that ignores the query string, every page asked for is answered with the
/// first one: the listing ends with an error that says so, rather than list the first page's
/// users over and over (or for ever).
#[tokio::test]
async fn a_listing_behind_a_cache_that_ignores_the_query_ends_with_an_error() {
    let sim = spawn(
        SimConfig::default()
            .users(250)
            .rate_limit(None)
            .faults("stale-page=1".parse().unwrap()),
    )
    .await;
    let client = client_for(&sim).no_pacing().build().unwrap();
    // At the default page size (25), page 1 is right, and page 2 comes back as page 1.
    let pages: Vec<_> = client.list_user_pages(25).collect().await;
    assert_eq!(pages.len(), 2, "{pages:?}");
    assert_eq!(pages[0].as_ref().unwrap().entities.len(), 25);
    let err = pages[1].as_ref().unwrap_err();
    assert!(matches!(err, GenesysError::Decode { .. }), "{err}");
    assert!(err.to_string().contains("page 2 of the users"), "{err}");
    // At another size, the first answer (of the default size) sets the size, and the second
    // is the first again.
    let result: Result<Vec<_>, _> = client.list_users(100).try_collect().await;
    let err = result.unwrap_err();
    assert!(err.to_string().contains("page 2 of the users"), "{err}");
    sim.shutdown().await;
}

/// `update_user` takes anything that serializes to an object: `json!`, a struct of the caller's;
/// anything else is refused before a request is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_user_takes_json_and_structs() {
    #[derive(serde::Serialize)]
    struct Change {
        title: &'static str,
        #[serde(rename = "acdAutoAnswer")]
        acd_auto_answer: bool,
    }
    let sim = spawn(SimConfig::default().users(2).rate_limit(None)).await;
    let client = client_for(&sim).no_pacing().build().unwrap();
    let ids = sim.user_ids();
    let user = client
        .update_user(&ids[0], json!({"title": "Lead"}))
        .await
        .unwrap();
    assert_eq!(user.other["title"], "Lead");
    let change = Change {
        title: "Chief",
        acd_auto_answer: true,
    };
    let user = client.update_user(&ids[1], &change).await.unwrap();
    assert_eq!(user.other["title"], "Chief");
    assert_eq!(user.other["acdAutoAnswer"], true);
    let before = sim.ledger_len();
    let err = client
        .update_user(&ids[0], ["not", "an", "object"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("JSON object"), "{err}");
    assert_eq!(sim.ledger_len(), before, "nothing sent");
    sim.shutdown().await;
}
