//! The stack as a whole: a leaf of your own, the stack taken out, integrations and limits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use genesys_client::{Body, BoxError, GenesysError};
use genesys_sim::SimConfig;
use genesys_tower::retry::RetryInfo;
use http::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tests::{client_for, spawn};
use tower::{ServiceExt, service_fn};

/// Any HTTP client service can sit at the leaf; token requests go through it too.
#[tokio::test]
async fn an_existing_client_service_can_be_the_leaf() {
    let sim = spawn(SimConfig::default().users(3)).await;
    let seen = Arc::new(AtomicUsize::new(0));
    let hyper: Client<_, Body> = Client::builder(TokioExecutor::new()).build_http();
    let counted = {
        let seen = seen.clone();
        service_fn(move |req: Request<Body>| {
            seen.fetch_add(1, Ordering::SeqCst);
            let hyper = hyper.clone();
            async move { hyper.request(req).await.map_err(BoxError::from) }
        })
    };
    let client = client_for(&sim).service(counted).build().unwrap();
    let id = &sim.user_ids()[0];
    assert_eq!(&client.get_user(id).await.unwrap().id, id);
    assert_eq!(
        seen.load(Ordering::SeqCst),
        2,
        "one token request, one API request"
    );
    sim.shutdown().await;
}

/// The stack itself is a tower service to use elsewhere.
#[tokio::test]
async fn the_stack_can_be_taken_out_as_a_service() {
    let sim = spawn(SimConfig::default().users(1)).await;
    let id = sim.user_ids()[0].clone();
    let stack = client_for(&sim).build().unwrap().into_service();
    let response = stack
        .oneshot(
            Request::get(format!("{}/api/v2/users/{id}", sim.base_url()))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(RetryInfo::of(response.extensions()).attempts, 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn integration_config_is_read_and_written_with_its_version() {
    let sim = spawn(SimConfig::default().users(1)).await;
    let client = client_for(&sim).build().unwrap();
    let id = sim.integration_ids()[0].clone();
    let mut config = client.get_integration_config(&id).await.unwrap();
    let before = config.version;
    config.notes = Some("updated by the end-to-end test".into());
    let stored = client.put_integration_config(&id, &config).await.unwrap();
    assert_eq!(stored.version, before + 1);
    assert_eq!(
        stored.notes.as_deref(),
        Some("updated by the end-to-end test")
    );

    // The old version is stale now: another change on it is refused.
    config.notes = Some("a change on a stale version".into());
    let err = client
        .put_integration_config(&id, &config)
        .await
        .unwrap_err();
    assert!(err.api().is_some_and(|e| e.is_version_conflict()), "{err}");
    sim.shutdown().await;
}

/// The first PUT lands but its answer is lost (a reset): the retry layer replays it, the replay
/// meets a version conflict, and the client sees the config already holds what it sent: done,
/// one write, no error.
#[tokio::test]
async fn a_put_whose_answer_was_lost_is_resolved_by_reading_again() {
    let sim = spawn(SimConfig::default().users(1)).await;
    let hyper: Client<_, Body> = Client::builder(TokioExecutor::new()).build_http();
    let puts = Arc::new(AtomicUsize::new(0));
    let lossy = {
        let puts = puts.clone();
        service_fn(move |req: Request<Body>| {
            let (hyper, puts) = (hyper.clone(), puts.clone());
            async move {
                let put = req.method() == http::Method::PUT;
                let res = hyper.request(req).await.map_err(BoxError::from)?;
                if put && puts.fetch_add(1, Ordering::SeqCst) == 0 {
                    let lost = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
                    return Err(BoxError::from(lost));
                }
                Ok(res)
            }
        })
    };
    let client = client_for(&sim).service(lossy).build().unwrap();
    let id = sim.integration_ids()[0].clone();
    let mut config = client.get_integration_config(&id).await.unwrap();
    let before = config.version;
    config.notes = Some("written once".into());
    let stored = client.put_integration_config(&id, &config).await.unwrap();
    assert_eq!(stored.version, before + 1, "one write, not two");
    assert_eq!(stored.notes.as_deref(), Some("written once"));
    assert_eq!(
        puts.load(Ordering::SeqCst),
        2,
        "the lost PUT and its replay"
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn organization_limits_are_read_and_set_the_pacing() {
    let sim = spawn(
        SimConfig::default()
            .users(1)
            .rate_limit(Some((120, Duration::from_secs(60)))),
    )
    .await;
    let client = client_for(&sim).build().unwrap();
    let limits = client.organization_limits("platform.api").await.unwrap();
    assert_eq!(
        limits.value_of("client.credentials.token.rate.per.minute"),
        Some(120.0)
    );
    let builder = client_for(&sim).discover_limits().await.unwrap();
    assert_eq!(
        builder.pacing_setting(),
        Some((120, Duration::from_secs(60)))
    );

    let err = client
        .organization_limits("no.such.namespace")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("not.found"));

    // Wrong credentials end discovery with the cause.
    let err = client_for(&sim)
        .client_credentials("demo-client", "wrong")
        .discover_limits()
        .await
        .unwrap_err();
    assert!(matches!(err, GenesysError::OAuth(_)), "{err:?}");
    sim.shutdown().await;
}
