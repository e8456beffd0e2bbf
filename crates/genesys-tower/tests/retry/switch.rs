//! `PolicySwitch`: a canary on an exact share of the calls, a live change that leaves calls in
//! flight on their policy, outcomes counted per version, and requests tagged with it.

use super::*;
use genesys_tower::retry::PolicySwitch;
use http::HeaderName;

fn policy(version: &str, attempts: u32) -> RetryPolicy {
    RetryPolicy::builder()
        .version(version)
        .max_attempts(attempts)
        .base_delay(Duration::from_millis(100))
        .build()
}

/// A leaf that fails (503) every attempt tagged `canary`, and records the tags it saw.
fn leaf(
    seen: Arc<Mutex<Vec<String>>>,
) -> impl Service<
    Request<Body>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |req: Request<Body>| {
        let seen = seen.clone();
        async move {
            let tag = req
                .headers()
                .get("x-policy-version")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let status = if tag == "canary" { 503 } else { 200 };
            seen.lock().unwrap().push(tag);
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .body(Body::empty())
                    .unwrap(),
            )
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_canary_runs_its_exact_share_and_its_outcomes_are_counted_apart() {
    let switch = PolicySwitch::new(
        policy("stable", 2),
        Some(HeaderName::from_static("x-policy-version")),
    );
    switch.set(policy("stable", 2), Some((policy("canary", 3), 0.25)));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy("unused", 1)).switch(switch.clone()))
        .service(leaf(seen.clone()));
    for _ in 0..100 {
        let req = Request::get("http://api.example/x")
            .body(Body::empty())
            .unwrap();
        let _ = svc.ready().await.unwrap().call(req).await;
    }
    let outcomes = switch.outcomes();
    assert_eq!(
        outcomes["canary"].calls, 25,
        "exactly a quarter of the calls"
    );
    assert_eq!(outcomes["canary"].succeeded, 0);
    assert_eq!(outcomes["stable"].calls, 75);
    assert_eq!(outcomes["stable"].success_rate(), 1.0);
    assert!(
        !outcomes.contains_key("unused"),
        "the layer's own policy is not used"
    );
    // The canary's 3 attempts each, the stable calls' one: every attempt tagged.
    let seen = seen.lock().unwrap();
    assert_eq!(seen.iter().filter(|t| *t == "canary").count(), 75);
    assert_eq!(seen.iter().filter(|t| *t == "stable").count(), 75);
}

#[tokio::test(start_paused = true)]
async fn a_live_change_leaves_the_call_in_flight_on_its_policy() {
    let switch = PolicySwitch::new(
        policy("v1", 3),
        Some(HeaderName::from_static("x-policy-version")),
    );
    // Tags go out while a canary runs (a canary of no share here).
    switch.set(policy("v1", 3), Some((policy("never", 1), 0.0)));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let attempts = Arc::new(Mutex::new(0u32));
    let counted = attempts.clone();
    let inner = leaf(seen.clone());
    // Fails twice, then answers: the call retries under v1 while v2 takes over.
    let flaky = tower::service_fn(move |req: Request<Body>| {
        let mut inner = inner.clone();
        let counted = counted.clone();
        async move {
            let n = {
                let mut a = counted.lock().unwrap();
                *a += 1;
                *a
            };
            let res = inner.call(req).await?;
            Ok::<_, Infallible>(if n <= 2 {
                Response::builder().status(503).body(Body::empty()).unwrap()
            } else {
                res
            })
        }
    });
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy("unused", 1)).switch(switch.clone()))
        .service(flaky);
    let req = Request::get("http://api.example/x")
        .body(Body::empty())
        .unwrap();
    let call = tokio::spawn(svc.clone().oneshot(req));
    // While the first call waits between attempts, v2 becomes the policy.
    tokio::time::sleep(Duration::from_millis(10)).await;
    switch.set(policy("v2", 1), Some((policy("never", 1), 0.0)));
    let response = call.await.unwrap().unwrap();
    assert_eq!(response.status(), 200, "v1's three attempts, not v2's one");
    let req = Request::get("http://api.example/x")
        .body(Body::empty())
        .unwrap();
    let _ = svc.oneshot(req).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), ["v1", "v1", "v1", "v2"]);
    let outcomes = switch.outcomes();
    assert_eq!((outcomes["v1"].calls, outcomes["v2"].calls), (1, 1));
}
