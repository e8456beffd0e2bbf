//! The server layer when its process, its handler or its store fails: a claim is renewed while
//! its handler works, an abandoned claim is never run a second time, and an answer the store
//! could not take is kept until it can. On a paused clock, over the memory store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use genesys_tower::idempotency::server::ServerIdempotencyLayer;
use genesys_tower::idempotency::{
    Claim, ClaimOptions, ClaimToken, Fingerprint, IdempotencyStore, MemoryStore, StoreError,
    StoreFuture, StoredResponse,
};
use http::StatusCode;
use tokio::sync::Notify;

use super::{Handler, json, order, send, send_owned};

const LEASE: Duration = Duration::from_secs(3);
const RETENTION: Duration = Duration::from_secs(3600);

fn layer() -> ServerIdempotencyLayer {
    ServerIdempotencyLayer::new()
        .lock_ttl(LEASE)
        .retention(RETENTION)
}

#[tokio::test(start_paused = true)]
async fn a_handler_slower_than_its_lease_keeps_the_key_and_runs_once() {
    let handler = Handler {
        delay: LEASE * 5,
        ..Handler::default()
    };
    let app = handler.router(layer());
    let first = tokio::spawn(send_owned(app.clone(), order(Some("k"), "{}")));
    // Three leases into the run: the lease was renewed, the key is still in flight.
    tokio::time::sleep(LEASE * 3).await;
    let repeat = send(&app, order(Some("k"), "{}")).await;
    assert_eq!(repeat.status(), StatusCode::CONFLICT);
    assert_eq!(
        json(repeat).await["error"],
        "idempotency_request_in_progress"
    );

    let first = first.await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first = json(first).await;
    let replay = send(&app, order(Some("k"), "{}")).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(json(replay).await, first);
    assert_eq!(handler.runs(), 1);
}

/// Starts a request whose handler never finishes, then drops it, as a server that died
/// mid-request: the claim is left without an owner.
async fn abandon(handler: &Handler, app: &axum::Router) {
    let runs = handler.runs();
    let doomed = tokio::spawn(send_owned(app.clone(), order(Some("k"), "{}")));
    while handler.runs() == runs {
        tokio::task::yield_now().await;
    }
    doomed.abort();
    let _ = doomed.await;
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_request_is_outcome_unknown_and_never_runs_again_until_its_retention_ends() {
    let gate = Arc::new(Notify::new());
    let handler = Handler {
        gate: Some(gate.clone()),
        ..Handler::default()
    };
    let app = handler.router(layer());
    abandon(&handler, &app).await;
    let abandoned = tokio::time::Instant::now();

    let early = send(&app, order(Some("k"), "{}")).await;
    assert_eq!(
        early.status(),
        StatusCode::CONFLICT,
        "within the lease: in flight"
    );
    assert_eq!(
        json(early).await["error"],
        "idempotency_request_in_progress"
    );

    // Past the lease, and for the whole retention: the first run may have had its effect.
    for after in [LEASE * 2, RETENTION / 2, RETENTION - LEASE] {
        tokio::time::sleep_until(abandoned + after).await;
        let unknown = send(&app, order(Some("k"), "{}")).await;
        assert_eq!(unknown.status(), StatusCode::CONFLICT);
        assert!(unknown.headers().get("retry-after").is_none());
        let body = json(unknown).await;
        assert_eq!(body["error"], "idempotency_outcome_unknown");
        let message = body["message"].as_str().unwrap();
        assert!(message.contains("new key"), "{message}");
    }
    // The same key with another body is still a misuse, not an unknown.
    let other = send(&app, order(Some("k"), "{\"n\":2}")).await;
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(handler.runs(), 1, "never run a second time");

    // Past the lease and the retention, the key is forgotten like any other.
    tokio::time::sleep(RETENTION).await;
    gate.notify_one();
    assert_eq!(
        send(&app, order(Some("k"), "{}")).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(handler.runs(), 2);
}

#[tokio::test(start_paused = true)]
async fn with_rerun_abandoned_the_key_runs_again_once_the_lease_ends() {
    let gate = Arc::new(Notify::new());
    let handler = Handler {
        gate: Some(gate.clone()),
        ..Handler::default()
    };
    let app = handler.router(layer().rerun_abandoned(true));
    abandon(&handler, &app).await;
    tokio::time::sleep(LEASE / 2).await;
    assert_eq!(
        send(&app, order(Some("k"), "{}")).await.status(),
        StatusCode::CONFLICT
    );
    tokio::time::sleep(LEASE).await;
    gate.notify_one();
    assert_eq!(
        send(&app, order(Some("k"), "{}")).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(handler.runs(), 2);
}

/// A memory store that can be switched off, as a connection to Redis that drops, and whose
/// releases take `release_delay` to reach it.
#[derive(Clone, Default)]
struct Switchable {
    store: MemoryStore,
    down: Arc<AtomicBool>,
    release_delay: Duration,
}

impl Switchable {
    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(SeqCst) {
            Err(StoreError::new("connection reset"))
        } else {
            Ok(())
        }
    }
}

impl IdempotencyStore for Switchable {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        fingerprint: Fingerprint,
        options: ClaimOptions,
    ) -> StoreFuture<'a, Claim> {
        Box::pin(async move {
            self.check()?;
            self.store.claim(key, fingerprint, options).await
        })
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        token: &'a ClaimToken,
        options: ClaimOptions,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            self.check()?;
            self.store.renew(key, token, options).await
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: &'a ClaimToken,
        response: StoredResponse,
        retention: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            self.check()?;
            self.store.complete(key, token, response, retention).await
        })
    }

    fn release<'a>(&'a self, key: &'a str, token: &'a ClaimToken) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            tokio::time::sleep(self.release_delay).await;
            self.check()?;
            self.store.release(key, token).await
        })
    }
}

/// A handler during which the store goes down (the connection dropped as the answer was about
/// to be stored).
fn handler_that_loses_the_store() -> (Handler, Switchable) {
    let store = Switchable::default();
    let gate = Arc::new(Notify::new());
    let down = store.down.clone();
    let opener = gate.clone();
    tokio::spawn(async move {
        // The handler starts waiting on the gate; the store goes down; the handler finishes.
        tokio::time::sleep(Duration::from_millis(10)).await;
        down.store(true, SeqCst);
        opener.notify_one();
    });
    let handler = Handler {
        gate: Some(gate),
        ..Handler::default()
    };
    (handler, store)
}

#[tokio::test(start_paused = true)]
async fn an_answer_the_store_could_not_take_is_stored_when_it_comes_back() {
    let (handler, store) = handler_that_loses_the_store();
    let app = handler.router(layer().store(store.clone()));

    let first = send(&app, order(Some("k"), "{}")).await;
    assert_eq!(
        first.status(),
        StatusCode::CREATED,
        "the caller gets its answer"
    );
    let first = json(first).await;
    let meanwhile = send(&app, order(Some("k"), "{}")).await;
    assert_eq!(meanwhile.status(), StatusCode::SERVICE_UNAVAILABLE);

    // The store comes back a minute later: the answer kept in the background lands.
    tokio::time::sleep(Duration::from_secs(60)).await;
    store.down.store(false, SeqCst);
    tokio::time::sleep(Duration::from_secs(61)).await;
    let replay = send(&app, order(Some("k"), "{}")).await;
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(json(replay).await, first);
    assert_eq!(handler.runs(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_answer_lost_for_good_leaves_the_key_outcome_unknown_not_runnable() {
    let (handler, store) = handler_that_loses_the_store();
    let app = handler.router(layer().store(store.clone()));
    assert_eq!(
        send(&app, order(Some("k"), "{}")).await.status(),
        StatusCode::CREATED
    );
    // Down for longer than the layer keeps an answer waiting for it.
    tokio::time::sleep(Duration::from_secs(1800)).await;
    store.down.store(false, SeqCst);
    let repeat = send(&app, order(Some("k"), "{}")).await;
    assert_eq!(repeat.status(), StatusCode::CONFLICT);
    assert_eq!(json(repeat).await["error"], "idempotency_outcome_unknown");
    assert_eq!(handler.runs(), 1);
}

/// A tower service (not an axum handler, whose errors are answers) that does its work, then
/// fails without an answer on its first run when `fail_after_work`, answers `body_fails_with`
/// and a body that fails halfway on its first run when set, is not ready on its first call
/// when `not_ready_first`, or refuses it when `refuse_first`; later runs answer 201.
#[derive(Clone, Default)]
struct Failing {
    runs: Arc<std::sync::atomic::AtomicUsize>,
    readiness_asked: Arc<std::sync::atomic::AtomicUsize>,
    fail_after_work: bool,
    body_fails_with: Option<StatusCode>,
    not_ready_first: bool,
    /// The first call is refused with a `NotSent` error, as a load shedder refuses.
    refuse_first: bool,
    /// Not ready at the first ask (tower's load shedder above it then refuses the call).
    busy_first: bool,
}

impl tower::Service<http::Request<genesys_tower::Body>> for Failing {
    type Response = http::Response<genesys_tower::Body>;
    type Error = genesys_tower::BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        let asked = self.readiness_asked.fetch_add(1, SeqCst);
        if self.not_ready_first && asked == 0 {
            return std::task::Poll::Ready(Err("the database pool is closed".into()));
        }
        if self.busy_first && asked == 0 {
            return std::task::Poll::Pending;
        }
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: http::Request<genesys_tower::Body>) -> Self::Future {
        if self.refuse_first && self.readiness_asked.load(SeqCst) == 1 {
            let refused = genesys_tower::NotSent::new("overloaded: the request was not run");
            return Box::pin(async move { Err(refused.into()) });
        }
        let run = self.runs.fetch_add(1, SeqCst);
        let fail = self.fail_after_work && run == 0;
        let body_fails_with = self.body_fails_with.filter(|_| run == 0);
        Box::pin(async move {
            if fail {
                return Err("the connection to the database dropped after the write".into());
            }
            if let Some(status) = body_fails_with {
                let frames: Vec<Result<http_body::Frame<bytes::Bytes>, genesys_tower::BoxError>> = vec![
                    Ok(http_body::Frame::data(bytes::Bytes::from_static(
                        b"{\"id\":",
                    ))),
                    Err("the result stream broke".into()),
                ];
                let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                let mut response = http::Response::new(genesys_tower::Body::new(body));
                *response.status_mut() = status;
                return Ok(response);
            }
            let mut response = http::Response::new(genesys_tower::Body::from("{\"id\":1}"));
            *response.status_mut() = StatusCode::CREATED;
            Ok(response)
        })
    }
}

/// A server stack as these tests call it: the layer over a [`Failing`] service.
trait Server:
    tower::Service<
        http::Request<genesys_tower::Body>,
        Response = http::Response<genesys_tower::Body>,
        Error = genesys_tower::BoxError,
    > + Clone
{
}

impl<S> Server for S where
    S: tower::Service<
            http::Request<genesys_tower::Body>,
            Response = http::Response<genesys_tower::Body>,
            Error = genesys_tower::BoxError,
        > + Clone
{
}

/// Sends a POST of `{}` with the Idempotency-Key `key` to `service`.
async fn call_failing<S>(
    service: &S,
    key: &str,
) -> Result<http::Response<genesys_tower::Body>, genesys_tower::BoxError>
where
    S: Server,
{
    use tower::ServiceExt;
    let request = http::Request::post("/orders")
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(genesys_tower::Body::from("{}"))
        .unwrap();
    service.clone().oneshot(request).await
}

/// Sends a request with key `k` that `service` refuses before `inner`'s handler runs, then the
/// same key again: the key was freed at once, so the retry runs the handler. Returns the
/// refusal.
async fn refused_then_run<S>(service: &S, inner: &Failing) -> genesys_tower::BoxError
where
    S: Server,
{
    let error = call_failing(service, "k").await.unwrap_err();
    assert_eq!(inner.runs.load(SeqCst), 0);
    // Nothing ran: the retry runs the handler at once.
    let retried = call_failing(service, "k").await.unwrap();
    assert_eq!(retried.status(), StatusCode::CREATED, "after {error}");
    assert_eq!(inner.runs.load(SeqCst), 1);
    error
}

async fn error_code(response: http::Response<genesys_tower::Body>) -> String {
    use http_body_util::BodyExt;
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    body["error"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_fails_after_it_started_leaves_its_key_outcome_unknown_not_runnable() {
    use tower::Layer;
    let inner = Failing {
        fail_after_work: true,
        ..Failing::default()
    };
    let service = layer().layer(inner.clone());
    let error = call_failing(&service, "k").await.unwrap_err();
    assert!(
        error.to_string().contains("dropped after the write"),
        "{error}"
    );
    let failed = tokio::time::Instant::now();

    // The caller retries at once: the first run may have had its effect.
    let early = call_failing(&service, "k").await.unwrap();
    assert_eq!(early.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(early).await, "idempotency_request_in_progress");
    tokio::time::sleep_until(failed + LEASE * 2).await;
    let later = call_failing(&service, "k").await.unwrap();
    assert_eq!(later.status(), StatusCode::CONFLICT);
    assert_eq!(error_code(later).await, "idempotency_outcome_unknown");
    assert_eq!(inner.runs.load(SeqCst), 1, "never run a second time");

    // Another key runs as usual.
    let other = call_failing(&service, "k2").await.unwrap();
    assert_eq!(other.status(), StatusCode::CREATED);
}

#[tokio::test(start_paused = true)]
async fn with_rerun_abandoned_a_handler_that_failed_runs_again_once_the_lease_ends() {
    use tower::Layer;
    let inner = Failing {
        fail_after_work: true,
        ..Failing::default()
    };
    let service = layer().rerun_abandoned(true).layer(inner.clone());
    call_failing(&service, "k").await.unwrap_err();
    let early = call_failing(&service, "k").await.unwrap();
    assert_eq!(error_code(early).await, "idempotency_request_in_progress");
    tokio::time::sleep(LEASE * 2).await;
    let again = call_failing(&service, "k").await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(inner.runs.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_handler_never_ready_or_refused_as_not_sent_frees_its_key_at_once() {
    use tower::Layer;
    let never_ready = Failing {
        not_ready_first: true,
        ..Failing::default()
    };
    let refused = Failing {
        refuse_first: true,
        ..Failing::default()
    };
    for (inner, says) in [(never_ready, "pool is closed"), (refused, "overloaded")] {
        let service = layer().layer(inner.clone());
        let error = refused_then_run(&service, &inner).await;
        assert!(error.to_string().contains(says), "{error}");
    }
}

/// The caller hangs up while the key of a request that did not run is being released (a
/// refusal as `NotSent`, an answer that says nothing was processed): the release goes on
/// without it, and a retry runs.
#[tokio::test(start_paused = true)]
async fn a_key_being_freed_when_its_caller_hangs_up_is_still_freed() {
    use tower::Layer;
    let refused = Failing {
        refuse_first: true,
        ..Failing::default()
    };
    let not_processed = Failing {
        body_fails_with: Some(StatusCode::BAD_REQUEST),
        ..Failing::default()
    };
    for inner in [refused, not_processed] {
        let store = Switchable {
            release_delay: Duration::from_millis(500),
            ..Switchable::default()
        };
        let service = layer().store(store).layer(inner.clone());
        let hung_up =
            tokio::time::timeout(Duration::from_millis(100), call_failing(&service, "k")).await;
        assert!(hung_up.is_err(), "dropped while the key is released");
        // Past the lease: a key left to it would be outcome unknown by now.
        tokio::time::sleep(LEASE * 2).await;
        let retried = call_failing(&service, "k").await.unwrap();
        assert_eq!(retried.status(), StatusCode::CREATED);
    }
}

#[tokio::test(start_paused = true)]
async fn a_request_shed_by_towers_load_shedder_frees_its_key_at_once() {
    use tower::Layer;
    let inner = Failing {
        busy_first: true,
        ..Failing::default()
    };
    let service = layer().layer(
        tower::ServiceBuilder::new()
            .load_shed()
            .service(inner.clone()),
    );
    let error = refused_then_run(&service, &inner).await;
    assert!(error.is::<tower::load_shed::error::Overloaded>(), "{error}");
}

#[tokio::test(start_paused = true)]
async fn an_answer_whose_body_fails_holds_its_key_unless_it_says_nothing_was_processed() {
    use http_body_util::BodyExt;
    use tower::Layer;
    for (status, held) in [
        (StatusCode::CREATED, true),
        (StatusCode::BAD_REQUEST, false),
    ] {
        let inner = Failing {
            body_fails_with: Some(status),
            ..Failing::default()
        };
        let service = layer().layer(inner.clone());
        let first = call_failing(&service, "k").await.unwrap();
        assert_eq!(first.status(), status);
        assert!(
            first.into_body().collect().await.is_err(),
            "the failure is passed on"
        );
        if held {
            let early = call_failing(&service, "k").await.unwrap();
            assert_eq!(error_code(early).await, "idempotency_request_in_progress");
            tokio::time::sleep(LEASE * 2).await;
        }
        let repeat = call_failing(&service, "k").await.unwrap();
        if held {
            assert_eq!(repeat.status(), StatusCode::CONFLICT, "after {status}");
            assert_eq!(error_code(repeat).await, "idempotency_outcome_unknown");
            assert_eq!(inner.runs.load(SeqCst), 1);
        } else {
            assert_eq!(repeat.status(), StatusCode::CREATED, "after {status}");
            assert_eq!(inner.runs.load(SeqCst), 2);
        }
    }
}

/// A memory store too small for a retention's worth of answers drops the oldest to make room,
/// and keeps their keys: a retry with one is told its request was processed, never run again.
#[tokio::test(start_paused = true)]
async fn a_key_whose_answer_was_dropped_for_room_is_never_run_again() {
    let store = MemoryStore::with_capacity(1_000);
    let handler = Handler::default();
    let app = handler.router(layer().store(store.clone()));
    for i in 0..40 {
        let response = send(&app, order(Some(&format!("k{i}")), "{}")).await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    assert!(
        store.completed_len() < 40,
        "some answers were dropped for room"
    );
    let again = send(&app, order(Some("k0"), "{}")).await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert_eq!(json(again).await["error"], "idempotency_response_evicted");
    assert_eq!(handler.runs(), 40, "k0 ran once");
}
