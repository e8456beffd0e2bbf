//! Idempotency: the client-side layer over a recording service, and the server-side layer in an
//! axum router, driven with `oneshot`. Time-based behaviour runs on a paused clock.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use futures_util::future::join_all;
use genesys_tower::concurrency::ConcurrencyLayer;
use genesys_tower::idempotency::server::ServerIdempotencyLayer;
use genesys_tower::idempotency::{
    Claim, ClaimOptions, ClaimToken, Error, Fingerprint, IdempotencyKey, IdempotencyLayer,
    IdempotencyStore, MemoryStore, StoreError, StoreFuture, StoredResponse,
};
use genesys_tower::{Body, BoxError, Metrics};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::Notify;
use tower::{Layer, Service, ServiceExt, service_fn};

// ---------------------------------------------------------------------------------------------
// Client side.

/// One request as the service below the layer saw it: method, key, body.
type Call = (Method, Option<String>, Bytes);

/// What the service below the layer saw: one entry per call.
#[derive(Clone, Default)]
struct Seen {
    calls: Arc<Mutex<Vec<Call>>>,
}

impl Seen {
    fn count(&self) -> usize {
        self.calls.lock().unwrap().len()
    }

    fn keys(&self) -> Vec<Option<String>> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.1.clone())
            .collect()
    }

    async fn record(&self, req: Request<Body>) -> Call {
        let key = req
            .headers()
            .get("idempotency-key")
            .map(|v| v.to_str().unwrap().to_owned());
        let method = req.method().clone();
        let body = req.into_body().collect_bytes().await.unwrap();
        self.calls
            .lock()
            .unwrap()
            .push((method.clone(), key.clone(), body.clone()));
        (method, key, body)
    }
}

/// A service that answers with the given statuses in turn (the last one repeats), after `delay`,
/// with a body that names the call.
fn scripted(
    seen: &Seen,
    statuses: &[u16],
    delay: Duration,
) -> impl Service<
    Request<Body>,
    Response = Response<Body>,
    Error = BoxError,
    Future = impl Future<Output = Result<Response<Body>, BoxError>> + Send,
> + Clone
+ Send
+ 'static {
    let seen = seen.clone();
    let statuses: Arc<Vec<u16>> = Arc::new(statuses.to_vec());
    service_fn(move |req: Request<Body>| {
        let seen = seen.clone();
        let statuses = statuses.clone();
        async move {
            let n = seen.count();
            seen.record(req).await;
            tokio::time::sleep(delay).await;
            let status = statuses[n.min(statuses.len() - 1)];
            let response = Response::builder()
                .status(status)
                .header("x-call", n.to_string())
                .body(Body::from(format!("call {n}")))
                .unwrap();
            Ok::<_, BoxError>(response)
        }
    })
}

fn request(method: Method, body: &'static str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri("/orders")
        .body(Body::from(body))
        .unwrap()
}

fn keyed(key: &str, body: &'static str) -> Request<Body> {
    let mut req = request(Method::POST, body);
    req.extensions_mut().insert(IdempotencyKey::new(key));
    req
}

async fn text(response: Response<Body>) -> String {
    let bytes = response.into_body().collect_bytes().await.unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn post_and_patch_get_a_uuid_key_and_get_does_not() {
    let seen = Seen::default();
    let svc = IdempotencyLayer::new().layer(scripted(&seen, &[200], Duration::ZERO));

    let post = svc
        .clone()
        .oneshot(request(Method::POST, "a"))
        .await
        .unwrap();
    let patch = svc
        .clone()
        .oneshot(request(Method::PATCH, "b"))
        .await
        .unwrap();
    svc.clone().oneshot(request(Method::GET, "")).await.unwrap();
    svc.clone()
        .oneshot(request(Method::PUT, "c"))
        .await
        .unwrap();

    let keys = seen.keys();
    for key in &keys[..2] {
        let key = key.as_deref().expect("POST and PATCH carry a key");
        let uuid = uuid::Uuid::parse_str(key).expect("the key is a UUID");
        assert_eq!(uuid.get_version_num(), 4);
    }
    assert_ne!(keys[0], keys[1], "each logical call has its own key");
    assert_eq!(keys[2], None, "GET is idempotent already");
    assert_eq!(keys[3], None, "PUT is idempotent already");
    // The caller learns the key that was used from the response.
    let used = post.extensions().get::<IdempotencyKey>().unwrap();
    assert_eq!(Some(used.as_str()), keys[0].as_deref());
    assert!(patch.extensions().get::<IdempotencyKey>().is_some());
}

#[tokio::test]
async fn the_callers_key_is_kept() {
    let seen = Seen::default();
    let svc = IdempotencyLayer::new().layer(scripted(&seen, &[200], Duration::ZERO));

    let mut with_header = request(Method::POST, "a");
    with_header
        .headers_mut()
        .insert("idempotency-key", "from-header".parse().unwrap());
    svc.clone().oneshot(with_header).await.unwrap();
    svc.clone()
        .oneshot(keyed("from-extension", "b"))
        .await
        .unwrap();

    assert_eq!(
        seen.keys(),
        [
            Some("from-header".to_owned()),
            Some("from-extension".to_owned())
        ]
    );
}

#[tokio::test]
async fn every_attempt_below_carries_the_same_key() {
    // A stand-in for a retry layer: sends the request it gets three times.
    let seen = Seen::default();
    let calls_from_layer = Arc::new(AtomicUsize::new(0));
    let below = {
        let seen = seen.clone();
        let calls_from_layer = calls_from_layer.clone();
        service_fn(move |req: Request<Body>| {
            let seen = seen.clone();
            calls_from_layer.fetch_add(1, SeqCst);
            async move {
                let (parts, body) = req.into_parts();
                for _ in 0..3 {
                    let copy = body
                        .try_clone()
                        .expect("the layer hands down a replayable body");
                    seen.record(Request::from_parts(parts.clone(), copy)).await;
                }
                Ok::<_, BoxError>(Response::new(Body::empty()))
            }
        })
    };
    let svc = IdempotencyLayer::new().layer(below);
    svc.oneshot(request(Method::POST, "{}")).await.unwrap();

    assert_eq!(
        calls_from_layer.load(SeqCst),
        1,
        "the layer calls below once"
    );
    let keys = seen.keys();
    assert_eq!(keys.len(), 3);
    assert!(keys[0].is_some());
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
}

#[tokio::test]
async fn a_repeat_is_answered_from_the_store_without_a_call() {
    let seen = Seen::default();
    let metrics = Metrics::new();
    let svc = IdempotencyLayer::new()
        .metrics(metrics.clone())
        .layer(scripted(&seen, &[201], Duration::ZERO));

    let first = svc
        .clone()
        .oneshot(keyed("k1", "{\"qty\":1}"))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    assert_eq!(text(first).await, "call 0");

    let again = svc
        .clone()
        .oneshot(keyed("k1", "{\"qty\":1}"))
        .await
        .unwrap();
    assert_eq!(seen.count(), 1, "the repeat did not reach the service");
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.headers()["x-call"], "0");
    assert_eq!(text(again).await, "call 0");
    assert_eq!(metrics.snapshot().idempotent_replays, 1);
}

#[tokio::test(start_paused = true)]
async fn twenty_concurrent_calls_with_one_key_make_one_call() {
    let seen = Seen::default();
    let metrics = Metrics::new();
    let svc = IdempotencyLayer::new()
        .metrics(metrics.clone())
        .layer(scripted(&seen, &[200], Duration::from_secs(2)));

    let calls = (0..20).map(|_| svc.clone().oneshot(keyed("same", "{}")));
    let responses = join_all(calls).await;

    assert_eq!(seen.count(), 1);
    for response in responses {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(text(response).await, "call 0");
    }
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.idempotent_joins, 19);
    assert_eq!(snapshot.idempotent_replays, 0);
}

#[tokio::test]
async fn the_same_key_with_another_body_is_refused_before_sending() {
    let seen = Seen::default();
    let svc = IdempotencyLayer::new().layer(scripted(&seen, &[200], Duration::ZERO));

    svc.clone()
        .oneshot(keyed("k", "{\"qty\":1}"))
        .await
        .unwrap();
    let err = svc
        .clone()
        .oneshot(keyed("k", "{\"qty\":2}"))
        .await
        .unwrap_err();

    assert_eq!(seen.count(), 1, "nothing was sent for the second body");
    match err.downcast_ref::<Error>() {
        Some(Error::KeyReused { key }) => assert_eq!(key, "k"),
        other => panic!("expected KeyReused, got {other:?} ({err})"),
    }
    assert!(err.to_string().contains("use a new key"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn another_body_is_refused_while_the_first_is_in_flight() {
    let seen = Seen::default();
    let svc = IdempotencyLayer::new().layer(scripted(&seen, &[200], Duration::from_secs(5)));

    let first = tokio::spawn(svc.clone().oneshot(keyed("k", "one")));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let err = svc.clone().oneshot(keyed("k", "two")).await.unwrap_err();
    assert!(matches!(
        err.downcast_ref::<Error>(),
        Some(Error::KeyReused { .. })
    ));
    first.await.unwrap().unwrap();
    assert_eq!(seen.count(), 1);
}

#[tokio::test]
async fn transient_statuses_are_not_stored() {
    // 401 and 403 too: a refused credential says nothing of the operation, and a stored one
    // would answer the key for its whole retention, long after the credential is fixed.
    for transient in [503, 429, 408, 409, 500, 401, 403] {
        let seen = Seen::default();
        let svc = IdempotencyLayer::new().layer(scripted(&seen, &[transient, 200], Duration::ZERO));

        let first = svc.clone().oneshot(keyed("k", "{}")).await.unwrap();
        assert_eq!(first.status().as_u16(), transient);
        let second = svc.clone().oneshot(keyed("k", "{}")).await.unwrap();
        assert_eq!(second.status(), StatusCode::OK, "after {transient}");
        assert!(second.headers().get("idempotent-replayed").is_none());
        let third = svc.clone().oneshot(keyed("k", "{}")).await.unwrap();
        assert_eq!(third.headers()["idempotent-replayed"], "true");
        assert_eq!(seen.count(), 2, "after {transient}");
        // Both calls used the caller's key.
        assert!(seen.keys().iter().all(|k| k.as_deref() == Some("k")));
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_slower_than_its_lease_keeps_its_key_and_a_repeat_waits_for_it() {
    let seen = Seen::default();
    // A lease of 1 s, a call of 5 s (its retries, their waits): renewed while it runs.
    let svc = IdempotencyLayer::new()
        .lock_ttl(Duration::from_secs(1))
        .layer(scripted(&seen, &[201], Duration::from_secs(5)));
    let first = tokio::spawn(svc.clone().oneshot(keyed("slow", "{}")));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let repeat = svc.clone().oneshot(keyed("slow", "{}")).await.unwrap();
    let first = first.await.unwrap().unwrap();
    assert_eq!(seen.count(), 1, "the repeat ran the request a second time");
    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(repeat.status(), StatusCode::CREATED);
    assert_eq!(text(repeat).await, "call 0");
}

#[tokio::test]
async fn final_client_errors_are_stored() {
    let seen = Seen::default();
    let svc = IdempotencyLayer::new().layer(scripted(&seen, &[422, 200], Duration::ZERO));
    svc.clone().oneshot(keyed("k", "{}")).await.unwrap();
    let again = svc.clone().oneshot(keyed("k", "{}")).await.unwrap();
    assert_eq!(again.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(seen.count(), 1);
}

#[tokio::test]
async fn an_error_below_releases_the_key() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let below = {
        let attempts = attempts.clone();
        service_fn(move |_req: Request<Body>| {
            let n = attempts.fetch_add(1, SeqCst);
            async move {
                if n == 0 {
                    Err::<Response<Body>, BoxError>("connection reset".into())
                } else {
                    Ok(Response::new(Body::from("ok")))
                }
            }
        })
    };
    let svc = IdempotencyLayer::new().layer(below);
    let err = svc.clone().oneshot(keyed("k", "{}")).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "connection reset",
        "errors below pass through"
    );
    let ok = svc.clone().oneshot(keyed("k", "{}")).await.unwrap();
    assert_eq!(text(ok).await, "ok");
    assert_eq!(attempts.load(SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn joined_calls_send_again_when_the_first_gets_a_transient_status() {
    let seen = Seen::default();
    let svc = IdempotencyLayer::new().layer(scripted(&seen, &[503, 200], Duration::from_secs(1)));
    let responses = join_all((0..5).map(|_| svc.clone().oneshot(keyed("k", "{}")))).await;
    let statuses: Vec<u16> = responses
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    // One call got the 503; one of the others took the key over and got the 200 the rest share.
    assert_eq!(seen.count(), 2);
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 1);
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 4);
}

#[tokio::test]
async fn a_response_past_the_bound_is_passed_through_not_stored() {
    let seen = Seen::default();
    let svc =
        IdempotencyLayer::new()
            .response_limit(4)
            .layer(scripted(&seen, &[200], Duration::ZERO));
    let first = svc.clone().oneshot(keyed("k", "{}")).await.unwrap();
    assert_eq!(
        text(first).await,
        "call 0",
        "the whole body reaches the caller"
    );
    let second = svc.clone().oneshot(keyed("k", "{}")).await.unwrap();
    assert_eq!(text(second).await, "call 1");
    assert_eq!(seen.count(), 2);
}

#[tokio::test]
async fn clones_share_one_store_and_another_layer_may_share_it_too() {
    let seen = Seen::default();
    let store = MemoryStore::new();
    let a =
        IdempotencyLayer::new()
            .store(store.clone())
            .layer(scripted(&seen, &[200], Duration::ZERO));
    let b = IdempotencyLayer::new()
        .store(Arc::new(store.clone()) as Arc<dyn IdempotencyStore>)
        .layer(scripted(&seen, &[200], Duration::ZERO));
    a.oneshot(keyed("k", "{}")).await.unwrap();
    let replay = b.oneshot(keyed("k", "{}")).await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(seen.count(), 1);
    assert_eq!(store.completed_len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_call_dropped_midway_frees_its_key() {
    let seen = Seen::default();
    let store = MemoryStore::new();
    let svc = IdempotencyLayer::new().store(store.clone()).layer(scripted(
        &seen,
        &[200],
        Duration::from_secs(60),
    ));
    let timed_out = tokio::time::timeout(
        Duration::from_secs(1),
        svc.clone().oneshot(keyed("k", "{}")),
    )
    .await;
    assert!(timed_out.is_err());
    tokio::task::yield_now().await;
    assert_eq!(store.in_flight_len(), 0, "the key was released");
}

/// A service that counts its clones, around `inner`.
#[derive(Debug)]
struct CountingClones<S> {
    inner: S,
    clones: Arc<AtomicUsize>,
}

impl<S: Clone> Clone for CountingClones<S> {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, SeqCst);
        CountingClones {
            inner: self.inner.clone(),
            clones: self.clones.clone(),
        }
    }
}

impl<S: Service<R>, R> Service<R> for CountingClones<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: R) -> S::Future {
        self.inner.call(req)
    }
}

#[tokio::test]
async fn a_request_the_layer_sends_as_it_is_goes_to_a_ready_service_below_without_a_clone_of_it() {
    // A client whose clone is costly (a deep stack: every layer's reference counts) pays for
    // none when the layer has nothing to look up: a GET, and a POST with a key of its own.
    let seen = Seen::default();
    let clones = Arc::new(AtomicUsize::new(0));
    let mut svc = IdempotencyLayer::new().layer(CountingClones {
        inner: scripted(&seen, &[200], Duration::ZERO),
        clones: clones.clone(),
    });
    for method in [Method::GET, Method::POST, Method::GET] {
        let response = svc
            .ready()
            .await
            .unwrap()
            .call(request(method.clone(), "{}"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.extensions().get::<IdempotencyKey>().is_some(),
            method == Method::POST,
            "the key of the layer's own is named on the response"
        );
    }
    assert_eq!(seen.count(), 3);
    assert_eq!(clones.load(SeqCst), 0, "the service below was never cloned");
    // A key of the caller's goes through the store, on a clone.
    svc.ready()
        .await
        .unwrap()
        .call(keyed("k", "{}"))
        .await
        .unwrap();
    assert_eq!(clones.load(SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_service_below_that_is_not_ready_is_waited_for_and_nothing_it_reserved_stays_with_the_layer()
 {
    // One permit below. A GET holds it; a second GET on the same service finds the stack below
    // not ready and must wait for the permit, in its own future; one dropped while it waits
    // must not leave its place in the permit's queue to the layer, or the next call would wait
    // behind a waiter that no one polls.
    let gate = Arc::new(Notify::new());
    let sent = Arc::new(AtomicUsize::new(0));
    let below = {
        let (gate, sent) = (gate.clone(), sent.clone());
        service_fn(move |_req: Request<Body>| {
            let (gate, sent) = (gate.clone(), sent.clone());
            async move {
                if sent.fetch_add(1, SeqCst) == 0 {
                    gate.notified().await;
                }
                Ok::<_, BoxError>(Response::new(Body::from("ok")))
            }
        })
    };
    let mut svc = IdempotencyLayer::new().layer(ConcurrencyLayer::new(1).layer(below));
    let get = || request(Method::GET, "");
    let first = svc.ready().await.unwrap().call(get());
    let first = tokio::spawn(first);
    tokio::task::yield_now().await;
    assert_eq!(sent.load(SeqCst), 1, "the first GET holds the one permit");

    // Made while the permit is taken, then dropped without ever being polled to the end.
    let dropped = svc.ready().await.unwrap().call(get());
    drop(dropped);
    // Made while the permit is taken, and awaited.
    let waiting = tokio::spawn(svc.ready().await.unwrap().call(get()));
    tokio::task::yield_now().await;
    assert_eq!(sent.load(SeqCst), 1, "the second GET waits for the permit");

    gate.notify_one();
    let within = Duration::from_secs(5);
    let first = tokio::time::timeout(within, first)
        .await
        .expect("the first GET ends");
    assert_eq!(first.unwrap().unwrap().status(), StatusCode::OK);
    let waiting = tokio::time::timeout(within, waiting)
        .await
        .expect("the waiting GET is sent once the permit is free");
    assert_eq!(waiting.unwrap().unwrap().status(), StatusCode::OK);
    let last = tokio::time::timeout(within, svc.ready().await.unwrap().call(get()))
        .await
        .expect("a later GET finds the permit free");
    assert_eq!(last.unwrap().status(), StatusCode::OK);
    assert_eq!(sent.load(SeqCst), 3);
}

/// A store that lost its records (or holds an abandoned claim) for every key.
struct CannotVouch(Claim);

impl IdempotencyStore for CannotVouch {
    fn claim<'a>(&'a self, _: &'a str, _: Fingerprint, _: ClaimOptions) -> StoreFuture<'a, Claim> {
        let claim = match self.0 {
            Claim::Lost => Claim::Lost,
            _ => Claim::Abandoned,
        };
        Box::pin(async move { Ok(claim) })
    }

    fn renew<'a>(
        &'a self,
        _: &'a str,
        _: &'a ClaimToken,
        _: ClaimOptions,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async { Ok(false) })
    }

    fn complete<'a>(
        &'a self,
        _: &'a str,
        _: &'a ClaimToken,
        _: StoredResponse,
        _: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async { Ok(false) })
    }

    fn release<'a>(&'a self, _: &'a str, _: &'a ClaimToken) -> StoreFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// When the store cannot vouch for a caller's key (records lost, a claim abandoned), only a
/// request whose target deduplicates by key is sent, with its key; any other is not sent, and
/// the caller learns that the outcome of the earlier call is unknown.
#[tokio::test]
async fn a_key_the_store_cannot_vouch_for_is_sent_only_to_a_target_that_deduplicates() {
    use genesys_tower::retry::RetrySafety;
    for claim in [Claim::Lost, Claim::Abandoned] {
        let seen = Seen::default();
        let layer = IdempotencyLayer::new().store(CannotVouch(claim));
        let svc = layer.layer(scripted(&seen, &[201], Duration::ZERO));
        let err = svc.clone().oneshot(keyed("k1", "{}")).await.unwrap_err();
        let e = genesys_tower::error::find::<Error>(&*err)
            .unwrap_or_else(|| panic!("the layer's own error: {err}"));
        assert!(matches!(e, Error::OutcomeUnknown { .. }), "{e}");
        assert!(e.to_string().contains("nothing was sent"), "{e}");
        assert_eq!(seen.count(), 0, "not sent");

        let mut req = keyed("k1", "{}");
        req.extensions_mut().insert(RetrySafety::KeyHonoured);
        let response = svc.oneshot(req).await.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(
            seen.keys(),
            vec![Some("k1".to_owned())],
            "sent with its key"
        );
    }
}

/// A memory store whose completions take 10 s (a slow round trip to a remote store).
struct SlowToComplete(MemoryStore);

impl IdempotencyStore for SlowToComplete {
    fn claim<'a>(
        &'a self,
        key: &'a str,
        f: Fingerprint,
        o: ClaimOptions,
    ) -> StoreFuture<'a, Claim> {
        self.0.claim(key, f, o)
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        t: &'a ClaimToken,
        o: ClaimOptions,
    ) -> StoreFuture<'a, bool> {
        self.0.renew(key, t, o)
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        token: &'a ClaimToken,
        response: StoredResponse,
        retention: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(10)).await;
            self.0.complete(key, token, response, retention).await
        })
    }

    fn release<'a>(&'a self, key: &'a str, t: &'a ClaimToken) -> StoreFuture<'a, ()> {
        self.0.release(key, t)
    }
}

/// A call dropped while its answer is being stored (its caller gave up) still stores it: a
/// repeat with the key is answered from the store, not sent again.
#[tokio::test(start_paused = true)]
async fn an_answer_being_stored_when_the_call_is_dropped_is_stored_still() {
    let seen = Seen::default();
    let layer = IdempotencyLayer::new().store(SlowToComplete(MemoryStore::new()));
    let svc = layer.layer(scripted(&seen, &[201], Duration::ZERO));
    let first = tokio::time::timeout(
        Duration::from_secs(1),
        svc.clone().oneshot(keyed("k1", "{}")),
    );
    assert!(first.await.is_err(), "dropped while its answer was stored");
    tokio::time::sleep(Duration::from_secs(20)).await;
    let repeat = svc.oneshot(keyed("k1", "{}")).await.unwrap();
    assert_eq!(repeat.status(), StatusCode::CREATED);
    assert_eq!(text(repeat).await, "call 0", "the first call's answer");
    assert_eq!(seen.count(), 1, "sent once");
}

// ---------------------------------------------------------------------------------------------
// Server side.

#[derive(Clone, Default)]
struct Handler {
    runs: Arc<AtomicUsize>,
    /// When set, the handler waits for it before answering.
    gate: Option<Arc<Notify>>,
    /// Statuses to answer in turn (the last repeats); 201 when empty.
    statuses: Arc<Vec<u16>>,
    /// How long the handler takes.
    delay: Duration,
}

impl Handler {
    fn runs(&self) -> usize {
        self.runs.load(SeqCst)
    }

    fn router(&self, layer: ServerIdempotencyLayer) -> Router {
        let this = self.clone();
        Router::new()
            .route(
                "/orders",
                post(move |body: Bytes| {
                    let this = this.clone();
                    async move {
                        let n = this.runs.fetch_add(1, SeqCst);
                        if let Some(gate) = &this.gate {
                            gate.notified().await;
                        }
                        tokio::time::sleep(this.delay).await;
                        let status = this
                            .statuses
                            .get(n.min(this.statuses.len().saturating_sub(1)))
                            .copied()
                            .unwrap_or(201);
                        Response::builder()
                            .status(status)
                            .header("x-order-id", format!("order-{n}"))
                            .header("content-type", "application/json")
                            .body(axum::body::Body::from(format!(
                                "{{\"run\":{n},\"echo\":{}}}",
                                String::from_utf8_lossy(&body)
                            )))
                            .unwrap()
                    }
                }),
            )
            .route("/other", post(|| async { "other" }))
            .layer(layer)
    }
}

fn order(key: Option<&str>, body: impl Into<String>) -> Request<axum::body::Body> {
    let mut builder = Request::post("/orders").header("content-type", "application/json");
    if let Some(key) = key {
        builder = builder.header("idempotency-key", key);
    }
    builder.body(axum::body::Body::from(body.into())).unwrap()
}

async fn json(response: axum::response::Response) -> serde_json::Value {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

async fn send(app: &Router, req: Request<axum::body::Body>) -> axum::response::Response {
    app.clone().oneshot(req).await.unwrap()
}

#[tokio::test]
async fn a_required_key_that_is_missing_gives_400() {
    let handler = Handler::default();
    let app = handler.router(ServerIdempotencyLayer::new().require_key(true));
    let response = send(&app, order(None, "{}")).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body = json(response).await;
    assert_eq!(body["error"], "idempotency_key_missing");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("requires an Idempotency-Key")
    );
    assert_eq!(handler.runs(), 0);
}

#[tokio::test]
async fn an_optional_key_that_is_missing_passes_through() {
    let handler = Handler::default();
    let app = handler.router(ServerIdempotencyLayer::new());
    assert_eq!(
        send(&app, order(None, "{}")).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(
        send(&app, order(None, "{}")).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(handler.runs(), 2);
}

#[tokio::test]
async fn keys_longer_than_255_characters_give_400() {
    let handler = Handler::default();
    let app = handler.router(ServerIdempotencyLayer::new().require_key(true));
    let longest = "k".repeat(255);
    let too_long = "k".repeat(256);
    assert_eq!(
        send(&app, order(Some(&longest), "{}")).await.status(),
        StatusCode::CREATED
    );
    let response = send(&app, order(Some(&too_long), "{}")).await;
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(json(response).await["error"], "idempotency_key_invalid");
    assert_eq!(handler.runs(), 1);
}

#[tokio::test]
async fn a_repeat_gets_the_original_status_headers_and_body() {
    let handler = Handler::default();
    let metrics = Metrics::new();
    let app = handler.router(ServerIdempotencyLayer::new().metrics(metrics.clone()));
    let first = send(&app, order(Some("k1"), "{\"qty\":1}")).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_body = json(first).await;

    let again = send(&app, order(Some("k1"), "{\"qty\":1}")).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["x-order-id"], "order-0");
    assert_eq!(again.headers()["content-type"], "application/json");
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(json(again).await, first_body);
    assert_eq!(handler.runs(), 1);
    assert_eq!(metrics.snapshot().idempotent_replays, 1);
}

#[tokio::test]
async fn the_same_key_with_another_payload_gives_422() {
    let handler = Handler::default();
    let app = handler.router(ServerIdempotencyLayer::new());
    send(&app, order(Some("k"), "{\"qty\":1}")).await;
    let response = send(&app, order(Some("k"), "{\"qty\":2}")).await;
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(json(response).await["error"], "idempotency_key_reused");
    // Another path with the same key is another payload too.
    let other = Request::post("/other")
        .header("idempotency-key", "k")
        .body(axum::body::Body::from("{\"qty\":1}"))
        .unwrap();
    assert_eq!(
        send(&app, other).await.status(),
        StatusCode::UNPROCESSABLE_ENTITY
    );
    assert_eq!(handler.runs(), 1);
}

#[tokio::test]
async fn the_same_key_in_flight_gives_409_then_the_response() {
    let gate = Arc::new(Notify::new());
    let handler = Handler {
        gate: Some(gate.clone()),
        ..Handler::default()
    };
    let app = handler.router(ServerIdempotencyLayer::new());
    let first = tokio::spawn(send_owned(app.clone(), order(Some("k"), "{}")));
    while handler.runs() == 0 {
        tokio::task::yield_now().await;
    }

    let conflict = send(&app, order(Some("k"), "{}")).await;
    assert_eq!(conflict.status(), StatusCode::CONFLICT);
    assert_eq!(conflict.headers()["retry-after"], "1");
    assert_eq!(
        json(conflict).await["error"],
        "idempotency_request_in_progress"
    );

    gate.notify_one();
    assert_eq!(first.await.unwrap().status(), StatusCode::CREATED);
    let replay = send(&app, order(Some("k"), "{}")).await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(handler.runs(), 1);
}

async fn send_owned(app: Router, req: Request<axum::body::Body>) -> axum::response::Response {
    app.oneshot(req).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn in_wait_mode_concurrent_repeats_share_one_run() {
    let handler = Handler {
        delay: Duration::from_secs(2),
        ..Handler::default()
    };
    let metrics = Metrics::new();
    let app = handler.router(
        ServerIdempotencyLayer::new()
            .wait_in_flight(Duration::from_secs(10))
            .metrics(metrics.clone()),
    );
    let responses =
        join_all((0..10).map(|_| send_owned(app.clone(), order(Some("k"), "{}")))).await;
    assert_eq!(handler.runs(), 1);
    let mut bodies = Vec::new();
    for response in responses {
        assert_eq!(response.status(), StatusCode::CREATED);
        bodies.push(json(response).await);
    }
    assert!(bodies.iter().all(|b| *b == bodies[0]));
    assert_eq!(metrics.snapshot().idempotent_joins, 9);
}

#[tokio::test(start_paused = true)]
async fn in_wait_mode_a_wait_past_the_timeout_gives_409() {
    let handler = Handler {
        delay: Duration::from_secs(20),
        ..Handler::default()
    };
    let app = handler.router(ServerIdempotencyLayer::new().wait_in_flight(Duration::from_secs(5)));
    let first = tokio::spawn(send_owned(app.clone(), order(Some("k"), "{}")));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = tokio::time::Instant::now();
    let waited = send(&app, order(Some("k"), "{}")).await;
    assert_eq!(waited.status(), StatusCode::CONFLICT);
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(first.await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(handler.runs(), 1);
}

#[tokio::test]
async fn validation_failures_and_conflicts_are_not_stored() {
    for rejected in [400, 409, 422, 429, 503] {
        let handler = Handler {
            statuses: Arc::new(vec![rejected, 201]),
            ..Handler::default()
        };
        let app = handler.router(ServerIdempotencyLayer::new());
        let first = send(&app, order(Some("k"), "{}")).await;
        assert_eq!(first.status().as_u16(), rejected);
        let retried = send(&app, order(Some("k"), "{}")).await;
        assert_eq!(retried.status(), StatusCode::CREATED, "after {rejected}");
        assert!(retried.headers().get("idempotent-replayed").is_none());
        assert_eq!(handler.runs(), 2, "after {rejected}");
    }
}

#[tokio::test]
async fn a_500_is_stored_and_replayed() {
    let handler = Handler {
        statuses: Arc::new(vec![500, 201]),
        ..Handler::default()
    };
    let app = handler.router(ServerIdempotencyLayer::new());
    send(&app, order(Some("k"), "{}")).await;
    let again = send(&app, order(Some("k"), "{}")).await;
    assert_eq!(again.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(handler.runs(), 1);
}

#[tokio::test]
async fn get_requests_pass_through() {
    let runs = Arc::new(AtomicUsize::new(0));
    let app = {
        let runs = runs.clone();
        Router::new()
            .route(
                "/orders",
                axum::routing::get(move || {
                    runs.fetch_add(1, SeqCst);
                    async { "list" }
                }),
            )
            .layer(ServerIdempotencyLayer::new().require_key(true))
    };
    for _ in 0..2 {
        let req = Request::get("/orders")
            .header("idempotency-key", "k")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = send(&app, req).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get("idempotent-replayed").is_none());
    }
    assert_eq!(runs.load(SeqCst), 2);
}

#[tokio::test]
async fn the_key_can_come_from_the_body() {
    let handler = Handler::default();
    let app = handler.router(ServerIdempotencyLayer::new().require_key(true).key_from(
        |_, body| {
            let json: serde_json::Value = serde_json::from_slice(body).ok()?;
            Some(json.get("idempotency_key")?.as_str()?.to_owned())
        },
    ));
    let body = "{\"idempotency_key\":\"evt-1\",\"input_payload\":{}}";
    assert_eq!(
        send(&app, order(None, body)).await.status(),
        StatusCode::CREATED
    );
    let again = send(&app, order(None, body)).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(handler.runs(), 1);
}

/// A key from the body is held to what a header key may be: a line break or a byte past
/// ASCII is refused, and the handler does not run.
#[tokio::test]
async fn a_key_from_the_body_must_be_visible_ascii() {
    let handler = Handler::default();
    let app = handler.router(ServerIdempotencyLayer::new().require_key(true).key_from(
        |_, body| {
            let json: serde_json::Value = serde_json::from_slice(body).ok()?;
            Some(json.get("idempotency_key")?.as_str()?.to_owned())
        },
    ));
    for key in ["evt\\n1", "evt\\u00e91", "evt\\u00001"] {
        let body = format!("{{\"idempotency_key\":\"{key}\"}}");
        let response = send(&app, order(None, body)).await;
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{key}");
        assert_eq!(json(response).await["error"], "idempotency_key_invalid");
    }
    assert_eq!(handler.runs(), 0);
}

#[tokio::test]
async fn scopes_keep_clients_apart() {
    let handler = Handler::default();
    let app = handler.router(
        ServerIdempotencyLayer::new()
            .scope(|head| Some(head.headers.get("x-client")?.to_str().ok()?.to_owned())),
    );
    for client in ["alice", "bob", "alice"] {
        let mut req = order(Some("k"), "{}");
        req.headers_mut()
            .insert("x-client", client.parse().unwrap());
        send(&app, req).await;
    }
    assert_eq!(handler.runs(), 2);
}

/// A request without a scope (no client named) cannot reach a scoped client's answers by
/// spelling the store's key for them: its keys live in a namespace of their own.
#[tokio::test]
async fn a_key_without_a_scope_cannot_spell_a_scoped_one() {
    let handler = Handler::default();
    let app = handler.router(
        ServerIdempotencyLayer::new()
            .scope(|head| Some(head.headers.get("x-client")?.to_str().ok()?.to_owned())),
    );
    let mut alices = order(Some("k1"), "{}");
    alices
        .headers_mut()
        .insert("x-client", "alice".parse().unwrap());
    let first = json(send(&app, alices).await).await;
    // Alice's key, as the store would write it with her scope, sent without a client.
    let forged = json(send(&app, order(Some("5:alice:k1"), "{}")).await).await;
    assert_eq!(handler.runs(), 2, "the forged key ran as a key of its own");
    assert_ne!(first["run"], forged["run"], "no replay of alice's answer");
}

/// A store that is always down.
struct DownStore;

impl IdempotencyStore for DownStore {
    fn claim<'a>(&'a self, _: &'a str, _: Fingerprint, _: ClaimOptions) -> StoreFuture<'a, Claim> {
        Box::pin(async { Err(StoreError::new("connection refused")) })
    }

    fn renew<'a>(
        &'a self,
        _: &'a str,
        _: &'a ClaimToken,
        _: ClaimOptions,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async { Err(StoreError::new("connection refused")) })
    }

    fn complete<'a>(
        &'a self,
        _: &'a str,
        _: &'a ClaimToken,
        _: StoredResponse,
        _: Duration,
    ) -> StoreFuture<'a, bool> {
        Box::pin(async { Err(StoreError::new("connection refused")) })
    }

    fn release<'a>(&'a self, _: &'a str, _: &'a ClaimToken) -> StoreFuture<'a, ()> {
        Box::pin(async { Err(StoreError::new("connection refused")) })
    }
}

#[tokio::test]
async fn a_store_outage_gives_503_unless_failing_open() {
    let handler = Handler::default();
    let app = handler.router(ServerIdempotencyLayer::new().store(DownStore));
    let response = send(&app, order(Some("k"), "{}")).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = json(response).await;
    assert_eq!(body["error"], "idempotency_store_unavailable");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("idempotency store unavailable: connection refused")
    );
    assert_eq!(handler.runs(), 0);

    let open = handler.router(
        ServerIdempotencyLayer::new()
            .store(DownStore)
            .fail_open(true),
    );
    assert_eq!(
        send(&open, order(Some("k"), "{}")).await.status(),
        StatusCode::CREATED
    );
    assert_eq!(handler.runs(), 1);
}

#[tokio::test]
async fn a_store_outage_on_the_client_is_an_error_and_nothing_is_sent() {
    let seen = Seen::default();
    let svc =
        IdempotencyLayer::new()
            .store(DownStore)
            .layer(scripted(&seen, &[200], Duration::ZERO));
    let err = svc.oneshot(keyed("k", "{}")).await.unwrap_err();
    assert!(
        matches!(err.downcast_ref::<Error>(), Some(Error::Store(_))),
        "{err}"
    );
    assert_eq!(seen.count(), 0);
}

/// A key the layer made up is known to no one else: the call does not touch the store at all,
/// so even a store that is down does not stop it. Keys stay unique across threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_the_layers_own_needs_no_store_and_is_unique() {
    let seen = Seen::default();
    let svc =
        IdempotencyLayer::new()
            .store(DownStore)
            .layer(scripted(&seen, &[200], Duration::ZERO));
    let calls: Vec<_> = (0..200)
        .map(|_| tokio::spawn(svc.clone().oneshot(request(Method::POST, "a"))))
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    let keys: std::collections::HashSet<String> =
        seen.keys().into_iter().map(|k| k.expect("a key")).collect();
    assert_eq!(keys.len(), 200, "200 calls, 200 distinct keys");
    for key in &keys {
        assert_eq!(uuid::Uuid::parse_str(key).unwrap().get_version_num(), 4);
    }
}

#[tokio::test]
async fn the_handler_sees_the_key() {
    let app = Router::new()
        .route(
            "/orders",
            post(|req: Request<axum::body::Body>| async move {
                req.extensions()
                    .get::<IdempotencyKey>()
                    .map(|k| k.to_string())
                    .unwrap_or_default()
            }),
        )
        .layer(ServerIdempotencyLayer::new());
    let response = send(&app, order(Some("abc"), "{}")).await;
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "abc");
}

#[allow(dead_code)]
fn _assert_store_is_object_safe(_: &dyn IdempotencyStore) {}

#[tokio::test]
async fn bodies_past_the_limit() {
    let handler = Handler::default();
    let app = handler.router(ServerIdempotencyLayer::new().body_limit(8));
    let big = "{\"data\":\"0123456789\"}";
    // With a key, the body must be fingerprinted: too large is refused.
    let response = send(&app, order(Some("k"), big)).await;
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json(response).await["error"], "request_body_too_large");
    assert_eq!(handler.runs(), 0);
    // Without a key on a route that does not require one, the layer stays out of the way.
    let response = send(&app, order(None, big)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(json(response).await["echo"]["data"], "0123456789");
}

#[tokio::test]
async fn a_response_past_the_limit_is_not_stored_by_the_server() {
    let handler = Handler::default();
    let app = handler.router(ServerIdempotencyLayer::new().response_limit(8));
    let first = send(&app, order(Some("k"), "{}")).await;
    assert_eq!(
        json(first).await["run"],
        0,
        "the caller gets the whole response"
    );
    let second = send(&app, order(Some("k"), "{}")).await;
    assert_eq!(json(second).await["run"], 1);
}

#[tokio::test]
async fn keys_that_are_not_visible_ascii_or_sent_twice_give_400() {
    let handler = Handler::default();
    let app = handler.router(ServerIdempotencyLayer::new());
    let mut twice = order(Some("a"), "{}");
    twice
        .headers_mut()
        .append("idempotency-key", "b".parse().unwrap());
    assert_eq!(send(&app, twice).await.status(), StatusCode::BAD_REQUEST);
    let mut odd = order(None, "{}");
    odd.headers_mut().insert(
        "idempotency-key",
        http::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
    );
    assert_eq!(send(&app, odd).await.status(), StatusCode::BAD_REQUEST);
    assert_eq!(handler.runs(), 0);
}

#[tokio::test]
async fn client_and_server_layers_together_make_a_lost_response_harmless() {
    // The server: a handler guarded by the server-side layer.
    let handler = Handler::default();
    let server = handler.router(ServerIdempotencyLayer::new().require_key(true));

    // Between them, a link that loses the first response after the server has processed the
    // request, and a stand-in for a retry layer that sends the same request again.
    let sent_keys = Arc::new(Mutex::new(Vec::new()));
    let link = {
        let sent_keys = sent_keys.clone();
        service_fn(move |req: Request<Body>| {
            let server = server.clone();
            let sent_keys = sent_keys.clone();
            async move {
                let (parts, body) = req.into_parts();
                let mut response = None;
                for attempt in 0..2 {
                    let copy = body.try_clone().expect("a replayable body");
                    let req = Request::from_parts(parts.clone(), copy);
                    sent_keys
                        .lock()
                        .unwrap()
                        .push(req.headers()["idempotency-key"].clone());
                    let answer = server.clone().oneshot(req).await?;
                    if attempt == 1 {
                        response = Some(answer);
                    } // attempt 0: the response is lost on the way back
                }
                Ok::<_, Infallible>(response.expect("the second attempt answered"))
            }
        })
    };
    let client = IdempotencyLayer::new().layer(link);

    let response = client
        .clone()
        .oneshot(request(Method::POST, "{\"qty\":1}"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        response.headers()["idempotent-replayed"],
        "true",
        "the server replayed"
    );
    assert_eq!(handler.runs(), 1, "the effect happened once");
    let keys = sent_keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0], keys[1], "both attempts carried the same key");
}

mod stored_response {
    use super::*;
    use http::{HeaderMap, HeaderValue};
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = StoredResponse::decode(&bytes);
        }

        #[test]
        fn encode_round_trips(
            status in 100u16..600,
            body in proptest::collection::vec(any::<u8>(), 0..512),
            values in proptest::collection::vec(proptest::collection::vec(0x20u8..0xff, 0..16), 0..4),
        ) {
            let mut headers = HeaderMap::new();
            for (i, value) in values.iter().enumerate() {
                if let Ok(value) = HeaderValue::from_bytes(value) {
                    headers.append(format!("x-h{i}").parse::<http::HeaderName>().unwrap(), value);
                }
            }
            let status = StatusCode::from_u16(status).unwrap();
            let stored = StoredResponse::new(status, headers, Bytes::from(body));
            prop_assert_eq!(StoredResponse::decode(&stored.encode()).unwrap(), stored);
        }
    }
}

mod server_faults;

/// A service below that is ready only once `ready` is set, then counts its runs.
#[derive(Clone)]
struct Gated {
    ready: Arc<std::sync::atomic::AtomicBool>,
    runs: Arc<AtomicUsize>,
}

impl Service<Request<Body>> for Gated {
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Body>, BoxError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        if self.ready.load(SeqCst) {
            std::task::Poll::Ready(Ok(()))
        } else {
            // Asked again by the test's next call, not woken.
            let _ = cx;
            std::task::Poll::Pending
        }
    }

    fn call(&mut self, _req: Request<Body>) -> Self::Future {
        let n = self.runs.fetch_add(1, SeqCst);
        Box::pin(async move {
            let mut response = Response::new(Body::from(format!("run {n}")));
            *response.status_mut() = StatusCode::CREATED;
            Ok(response)
        })
    }
}

fn server_request(key: &str) -> Request<Body> {
    Request::post("/orders")
        .header("idempotency-key", key)
        .body(Body::from("{}"))
        .unwrap()
}

/// A call dropped before its handler started (the service below was not ready, and the client
/// went away) ran nothing: its key is released, and a repeat runs, rather than being told for
/// the whole retention that the outcome is unknown.
#[tokio::test(start_paused = true)]
async fn a_call_dropped_before_its_handler_started_frees_its_key() {
    let gated = Gated {
        ready: Arc::default(),
        runs: Arc::default(),
    };
    let svc = ServerIdempotencyLayer::new().layer(gated.clone());
    let first = tokio::time::timeout(
        Duration::from_secs(1),
        svc.clone().oneshot(server_request("k1")),
    );
    assert!(
        first.await.is_err(),
        "still waiting for the service below: dropped"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    gated.ready.store(true, SeqCst);
    let repeat = svc.oneshot(server_request("k1")).await.unwrap();
    assert_eq!(
        repeat.status(),
        StatusCode::CREATED,
        "{:?}",
        text(repeat).await
    );
    assert_eq!(gated.runs.load(SeqCst), 1);
}

/// A call dropped while its answer was being stored (its client went away) still stores it: a
/// repeat gets that answer, not "outcome unknown".
#[tokio::test(start_paused = true)]
async fn a_server_answer_being_stored_when_the_call_is_dropped_is_stored_still() {
    let gated = Gated {
        ready: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        runs: Arc::default(),
    };
    let svc = ServerIdempotencyLayer::new()
        .store(SlowToComplete(MemoryStore::new()))
        .store_timeout(Duration::from_secs(30))
        .layer(gated.clone());
    let first = tokio::time::timeout(
        Duration::from_secs(1),
        svc.clone().oneshot(server_request("k1")),
    );
    assert!(first.await.is_err(), "dropped while its answer was stored");
    tokio::time::sleep(Duration::from_secs(20)).await;
    let repeat = svc.oneshot(server_request("k1")).await.unwrap();
    assert_eq!(repeat.status(), StatusCode::CREATED);
    assert_eq!(text(repeat).await, "run 0", "the first run's answer");
    assert_eq!(gated.runs.load(SeqCst), 1);
}
