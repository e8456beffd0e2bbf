//! Tokens and errors end to end: single-flight refresh, wrong credentials, long Retry-After.

use std::time::Duration;

use genesys_client::{GenesysError, Metrics, OAuthErrorKind};
use genesys_sim::SimConfig;
use tests::{CLIENT_ID, client_for, spawn};

/// 100 requests released together once the token has expired cause exactly one token request;
/// so do 100 requests that all meet a revoked token (401).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_requests_at_expiry_or_revocation_fetch_one_token() {
    let ttl = Duration::from_secs(2);
    let sim = spawn(
        SimConfig::default()
            .users(100)
            .rate_limit(None)
            .token_ttl(ttl),
    )
    .await;
    let metrics = Metrics::new();
    let client = client_for(&sim)
        .no_pacing()
        .max_in_flight(100)
        .metrics(metrics.clone())
        .build()
        .unwrap();
    let ids = sim.user_ids();
    client.get_user(&ids[0]).await.unwrap();
    assert_eq!(sim.stats().tokens_issued, 1);

    let burst = |client: genesys_client::GenesysClient, ids: Vec<String>| async move {
        let tasks: Vec<_> = ids
            .into_iter()
            .map(|id| {
                let client = client.clone();
                tokio::spawn(async move { client.get_user(&id).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
    };

    // The token's whole lifetime passes: the next burst finds it expired.
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    burst(client.clone(), ids.clone()).await;
    assert_eq!(sim.stats().tokens_issued, 2);

    // Revoked under the client's feet: 100 requests see 401, one refresh serves them all.
    assert!(sim.revoke_tokens() >= 1);
    burst(client.clone(), ids.clone()).await;
    assert_eq!(sim.stats().tokens_issued, 3);
    assert_eq!(metrics.snapshot().token_fetches, 3);
    sim.shutdown().await;
}

#[tokio::test]
async fn wrong_credentials_fail_fast_naming_the_cause() {
    let sim = spawn(SimConfig::default().users(1)).await;
    let client = tests::client_for(&sim)
        .client_credentials(CLIENT_ID, "not-the-secret")
        .build()
        .unwrap();
    let err = client.get_user(&sim.user_ids()[0]).await.unwrap_err();
    match &err {
        GenesysError::OAuth(e) => {
            assert_eq!(e.error, OAuthErrorKind::InvalidClient);
            assert!(e.is_bad_credentials());
        }
        other => panic!("expected an OAuth error, got {other:?}"),
    }
    let shown = err.to_string();
    assert!(shown.contains("invalid_client"), "{shown}");
    assert!(shown.contains("client id and secret"), "{shown}");
    assert!(!shown.contains("not-the-secret") && !format!("{err:?}").contains("not-the-secret"));
    // One token request, no retry, and no API request at all.
    let stats = sim.stats();
    assert_eq!(stats.count("POST /oauth/token", 401), 1, "{stats:?}");
    assert_eq!(stats.total_responses, 1, "{stats:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn a_retry_after_above_the_maximum_ends_the_call_with_the_hint() {
    let sim = spawn(
        SimConfig::default()
            .users(1)
            .faults("long-retry-after=1".parse().unwrap()),
    )
    .await;
    let client = client_for(&sim).build().unwrap();
    let err = client.get_user(&sim.user_ids()[0]).await.unwrap_err();
    let hint = err.retry_after().expect("the error carries the hint");
    assert!(
        matches!(err, GenesysError::RetryAfterTooLong { .. }),
        "{err:?}"
    );
    assert!(hint > Duration::from_secs(180), "{hint:?}");
    assert!(
        err.to_string().contains(&format!("{}", hint.as_secs())),
        "{err}"
    );
    // Not retried: one API request.
    assert_eq!(sim.stats().status_count(429), 1, "{:?}", sim.stats());
    sim.shutdown().await;
}
