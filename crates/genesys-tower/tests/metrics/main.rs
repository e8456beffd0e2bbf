//! The labelled metrics through the `metrics` facade, read back from a recorder: what an
//! operator's Prometheus or OpenTelemetry pipeline receives.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use genesys_tower::metrics::{Metrics, Route, names};
use genesys_tower::retry::{Jitter, RetryLayer, RetryPolicy};
use genesys_tower::{Body, BoxError};
use http::{Request, Response, StatusCode};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::{ServiceBuilder, ServiceExt, service_fn};

type Snapshot = Vec<(String, Vec<(String, String)>, DebugValue)>;

/// Every metric recorded so far. Reading resets the recorder's values: read once per check.
fn read(snapshotter: &Snapshotter) -> Snapshot {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            (key.name().to_owned(), labels, value)
        })
        .collect()
}

/// The value of the metric `name` whose labels are exactly `labels`.
fn value<'a>(
    snapshot: &'a Snapshot,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<&'a DebugValue> {
    let mut wanted: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    wanted.sort();
    snapshot
        .iter()
        .find(|(n, l, _)| n == name && *l == wanted)
        .map(|(_, _, v)| v)
}

fn counter(snapshot: &Snapshot, name: &str, labels: &[(&str, &str)]) -> u64 {
    match value(snapshot, name, labels) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn calls_attempts_retries_and_latency_are_labelled_by_route_outcome_and_policy() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // The runtime is single-threaded: every poll sees this thread's recorder.
    let _guard = metrics::set_default_local_recorder(&recorder);

    // A 503, a 429 with Retry-After: 1, then a 200; later calls get a 404.
    let calls = Arc::new(AtomicU32::new(0));
    let server = {
        let calls = calls.clone();
        service_fn(move |_req: Request<Body>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let status = [503, 429, 200, 404][n.min(3) as usize];
            async move {
                Ok::<_, BoxError>(
                    Response::builder()
                        .status(status)
                        .header("retry-after", "1")
                        .body(String::new())
                        .unwrap(),
                )
            }
        })
    };
    let totals = Metrics::new();
    let policy = RetryPolicy::builder()
        .jitter(Jitter::None)
        .retry_after_spread(0.0, Duration::ZERO)
        .no_budget()
        .version("v7")
        .build();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy).metrics(totals.clone()))
        .service(server);

    let mut get = Request::get("http://api.test/api/v2/users/42")
        .body(Body::empty())
        .unwrap();
    get.extensions_mut()
        .insert(Route::new("/api/v2/users/{id}"));
    assert_eq!(
        svc.clone().oneshot(get).await.unwrap().status(),
        StatusCode::OK
    );
    // No route template: labelled `other`, never the raw path with its id.
    let untagged = Request::get("http://api.test/api/v2/users/43")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        svc.oneshot(untagged).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );

    let snapshot = read(&snapshotter);
    let users = ("route", "/api/v2/users/{id}");
    let get = ("method", "GET");
    let v7 = ("policy_version", "v7");
    assert_eq!(
        counter(
            &snapshot,
            names::CALLS,
            &[get, users, ("outcome", "2xx"), v7]
        ),
        1
    );
    assert_eq!(
        counter(
            &snapshot,
            names::CALLS,
            &[get, ("route", "other"), ("outcome", "4xx"), v7]
        ),
        1
    );
    for outcome in ["5xx", "4xx", "2xx"] {
        assert_eq!(
            counter(
                &snapshot,
                names::ATTEMPTS,
                &[get, users, ("outcome", outcome)]
            ),
            1,
            "attempts with outcome {outcome}"
        );
    }
    assert_eq!(counter(&snapshot, names::RATE_LIMITED, &[get, users]), 1);
    for reason in ["server_error", "rate_limited"] {
        assert_eq!(
            counter(
                &snapshot,
                names::RETRIES,
                &[get, users, ("reason", reason), v7]
            ),
            1,
            "retries for {reason}"
        );
    }
    // Both failures said `Retry-After: 1`, a floor above the backoff (500 ms, then 1 s): the
    // call took 2 s of (paused) time.
    match value(
        &snapshot,
        names::CALL_DURATION,
        &[get, users, ("outcome", "2xx"), v7],
    ) {
        Some(DebugValue::Histogram(samples)) => {
            assert_eq!(samples.len(), 1);
            assert!((samples[0].0 - 2.0).abs() < 0.01, "{samples:?}");
        }
        other => panic!("call duration: {other:?}"),
    }
    match value(
        &snapshot,
        names::ATTEMPT_DURATION,
        &[get, users, ("outcome", "5xx")],
    ) {
        Some(DebugValue::Histogram(samples)) => assert_eq!(samples.len(), 1),
        other => panic!("attempt duration: {other:?}"),
    }
    assert_eq!(
        value(&snapshot, names::CALLS_IN_FLIGHT, &[]),
        Some(&DebugValue::Gauge(0.0.into())),
        "every call left the in-flight gauge"
    );
    // The handle's unlabelled totals agree.
    let totals = totals.snapshot();
    assert_eq!(
        (totals.requests, totals.attempts, totals.retries.total()),
        (2, 4, 2)
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_cancelled_call_leaves_the_in_flight_gauge() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let never = service_fn(|_req: Request<Body>| async {
        std::future::pending::<Result<Response<String>, BoxError>>().await
    });
    let svc = tower::Layer::layer(&RetryLayer::new(RetryPolicy::default()), never);
    let call = tokio::spawn(
        svc.oneshot(
            Request::get("http://api.test/")
                .body(Body::empty())
                .unwrap(),
        ),
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    call.abort();
    let _ = call.await;
    let snapshot = read(&snapshotter);
    assert_eq!(
        value(&snapshot, names::CALLS_IN_FLIGHT, &[]),
        Some(&DebugValue::Gauge(0.0.into())),
        "counted in, then out when dropped"
    );
    assert!(
        !snapshot.iter().any(|(name, ..)| name == names::CALLS),
        "a cancelled call did not end: {snapshot:?}"
    );
}
