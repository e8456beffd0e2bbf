//! Tests of the concurrency layer: in-flight limit, reject mode, pacing and learning from the
//! server, all on a paused tokio clock.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use genesys_tower::concurrency::{ConcurrencyLayer, Error};
use genesys_tower::error::find;
use genesys_tower::{BoxError, Metrics};
use http::{Request, Response, StatusCode};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_test::mock;

type Starts = Arc<Mutex<Vec<Instant>>>;

/// An inner service that records when each call starts and answers after `latency`.
fn recording(
    latency: Duration,
) -> (
    impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future = impl Send>
    + Clone
    + Send
    + 'static,
    Starts,
) {
    let starts: Starts = Arc::default();
    let log = starts.clone();
    let svc = service_fn(move |_req: Request<()>| {
        log.lock().unwrap().push(Instant::now());
        async move {
            tokio::time::sleep(latency).await;
            Ok::<_, Infallible>(Response::new(()))
        }
    });
    (svc, starts)
}

#[tokio::test(start_paused = true)]
async fn a_thousand_calls_never_exceed_the_limit() {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let (now, max) = (in_flight.clone(), max_seen.clone());
    let inner = service_fn(move |_req: Request<()>| {
        let (now, max) = (now.clone(), max.clone());
        async move {
            let current = now.fetch_add(1, SeqCst) + 1;
            max.fetch_max(current, SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            now.fetch_sub(1, SeqCst);
            Ok::<_, Infallible>(Response::new(()))
        }
    });
    let svc = ConcurrencyLayer::new(7).layer(inner);

    let tasks: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(svc.clone().oneshot(Request::new(()))))
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert_eq!(
        max_seen.load(SeqCst),
        7,
        "the limit is reached and never passed"
    );
    assert_eq!(svc.available_permits(), 7, "every permit came back");
}

#[tokio::test(start_paused = true)]
async fn poll_ready_reserves_the_permit_that_call_uses() {
    let (mut a, mut handle) =
        mock::spawn_layer::<Request<()>, Response<()>, _>(ConcurrencyLayer::new(1));
    let mut b = mock::Spawn::new(a.get_ref().clone());
    handle.allow(2);

    assert!(a.poll_ready().is_ready());
    assert!(
        b.poll_ready().is_pending(),
        "the only permit is reserved by a"
    );

    let response = a.call(Request::new(()));
    let (_request, send) = handle.next_request().await.unwrap();
    send.send_response(Response::new(()));
    response.await.unwrap();

    assert!(b.is_woken(), "the released permit wakes the waiter");
    assert!(b.poll_ready().is_ready());
}

/// A permit is given back however the call ends: a ready service dropped without a call, a
/// call dropped before its answer, a call answered, a call failed. None is lost, none is given
/// back twice.
#[tokio::test(start_paused = true)]
async fn every_permit_comes_back_whether_a_call_is_dropped_answered_or_failed() {
    let (mut svc, mut handle) =
        mock::spawn_layer::<Request<()>, Response<()>, _>(ConcurrencyLayer::new(2));
    handle.allow(10);
    let available = |svc: &mock::Spawn<_>| {
        let svc: &genesys_tower::concurrency::Concurrency<_> = svc.get_ref();
        svc.available_permits()
    };

    // Ready, then dropped without a call.
    let mut ready = mock::Spawn::new(svc.get_ref().clone());
    assert!(ready.poll_ready().is_ready());
    assert_eq!(available(&svc), 1);
    drop(ready);
    assert_eq!(
        available(&svc),
        2,
        "a ready service dropped gives its permit back"
    );

    // A call dropped before its answer.
    assert!(svc.poll_ready().is_ready());
    let pending = svc.call(Request::new(()));
    assert_eq!(available(&svc), 1);
    drop(pending);
    assert_eq!(available(&svc), 2, "a call dropped gives its permit back");
    let _dropped = handle.next_request().await.unwrap();

    // Two calls answered, one after the other and both at once.
    for _ in 0..2 {
        assert!(svc.poll_ready().is_ready());
        let call = svc.call(Request::new(()));
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(Response::new(()));
        call.await.unwrap();
        assert_eq!(available(&svc), 2, "an answered call gives its permit back");
    }
    // A call the service below fails.
    assert!(svc.poll_ready().is_ready());
    let call = svc.call(Request::new(()));
    let (_, send) = handle.next_request().await.unwrap();
    send.send_error("connection reset");
    assert!(call.await.is_err());
    assert_eq!(available(&svc), 2, "a failed call gives its permit back");

    let mut other = mock::Spawn::new(svc.get_ref().clone());
    assert!(svc.poll_ready().is_ready());
    assert!(other.poll_ready().is_ready());
    let (a, b) = (svc.call(Request::new(())), other.call(Request::new(())));
    assert_eq!(available(&svc), 0);
    for _ in 0..2 {
        let (_, send) = handle.next_request().await.unwrap();
        send.send_response(Response::new(()));
    }
    a.await.unwrap();
    b.await.unwrap();
    assert_eq!(available(&svc), 2, "no permit lost, none given back twice");
}

/// A future polled once more after its answer says so, rather than polling the finished
/// future below (which an `async` block answers with a panic).
#[tokio::test]
async fn a_future_polled_after_its_answer_gives_an_error() {
    let mut svc = ConcurrencyLayer::new(1).layer(service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(Response::new(()))
    }));
    let mut future = std::pin::pin!(svc.ready().await.unwrap().call(Request::new(())));
    let first = std::future::poll_fn(|cx| future.as_mut().poll(cx)).await;
    assert!(first.is_ok());
    let again = std::future::poll_fn(|cx| future.as_mut().poll(cx)).await;
    let e = again.unwrap_err();
    assert!(e.to_string().contains("polled after it completed"), "{e}");
    assert_eq!(svc.available_permits(), 1, "the permit came back once");
}

#[tokio::test(start_paused = true)]
async fn reject_mode_refuses_at_once_with_overloaded() {
    let metrics = Metrics::new();
    let (inner, starts) = recording(Duration::from_secs(10));
    let svc = ConcurrencyLayer::new(2)
        .reject_when_full()
        .metrics(metrics.clone())
        .layer(inner);

    let busy: Vec<_> = (0..2)
        .map(|_| tokio::spawn(svc.clone().oneshot(Request::new(()))))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(starts.lock().unwrap().len(), 2);

    let before = Instant::now();
    let err = svc.clone().oneshot(Request::new(())).await.unwrap_err();
    assert_eq!(
        before.elapsed(),
        Duration::ZERO,
        "no waiting in reject mode"
    );
    assert!(
        matches!(find::<Error>(&*err), Some(Error::Overloaded)),
        "{err}"
    );
    assert!(err.to_string().contains("not sent"));
    assert_eq!(
        starts.lock().unwrap().len(),
        2,
        "the refused call never reached the service"
    );
    assert_eq!(metrics.snapshot().concurrency_rejections, 1);

    for task in busy {
        task.await.unwrap().unwrap();
    }
    svc.clone()
        .oneshot(Request::new(()))
        .await
        .expect("permits are free again");
}

#[tokio::test(start_paused = true)]
async fn pacing_spreads_starts_over_windows() {
    let metrics = Metrics::new();
    let (inner, starts) = recording(Duration::from_millis(50));
    let svc = ConcurrencyLayer::new(1000)
        .pacing(100, Duration::from_secs(60))
        .metrics(metrics.clone())
        .layer(inner);

    let begin = Instant::now();
    let tasks: Vec<_> = (0..300)
        .map(|_| tokio::spawn(svc.clone().oneshot(Request::new(()))))
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert!(
        begin.elapsed() >= Duration::from_secs(120),
        "{:?}",
        begin.elapsed()
    );

    let mut starts = starts.lock().unwrap().clone();
    starts.sort();
    assert_eq!(starts.len(), 300);
    for (i, &start) in starts.iter().enumerate() {
        let in_window = starts[i..]
            .iter()
            .take_while(|&&s| s < start + Duration::from_secs(60))
            .count();
        assert!(
            in_window <= 100,
            "{in_window} starts in the window from {i}"
        );
    }
    assert_eq!(metrics.snapshot().pacing_waits, 200);
}

/// An inner service that answers the first call with `first` and later calls with 200.
fn answering_first_with(
    first: Response<()>,
) -> (
    impl Service<Request<()>, Response = Response<()>, Error = Infallible, Future = impl Send>
    + Clone
    + Send
    + 'static,
    Starts,
) {
    let starts: Starts = Arc::default();
    let log = starts.clone();
    let first = Arc::new(Mutex::new(Some(first)));
    let svc = service_fn(move |_req: Request<()>| {
        log.lock().unwrap().push(Instant::now());
        let response = first.lock().unwrap().take().unwrap_or_default();
        async move { Ok::<_, Infallible>(response) }
    });
    (svc, starts)
}

async fn second_start_after(first: Response<()>) -> Duration {
    second_start_with(ConcurrencyLayer::new(10), first).await
}

/// The wait before a second request through `layer`, after `first` answered the first one.
async fn second_start_with(layer: ConcurrencyLayer, first: Response<()>) -> Duration {
    let (inner, starts) = answering_first_with(first);
    let svc = layer.layer(inner);
    svc.clone().oneshot(Request::new(())).await.unwrap();
    svc.clone().oneshot(Request::new(())).await.unwrap();
    let starts = starts.lock().unwrap();
    starts[1] - starts[0]
}

#[tokio::test(start_paused = true)]
async fn genesys_headers_saying_the_window_is_spent_hold_the_next_request() {
    let response = Response::builder()
        .header("inin-ratelimit-allowed", "300")
        .header("inin-ratelimit-count", "300")
        .header("inin-ratelimit-reset", "30")
        .body(())
        .unwrap();
    assert_eq!(second_start_after(response).await, Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn ietf_headers_saying_the_window_is_spent_hold_the_next_request() {
    let response = Response::builder()
        .header("ratelimit", "\"default\";r=0;t=30")
        .body(())
        .unwrap();
    assert_eq!(second_start_after(response).await, Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn a_window_with_room_left_holds_nothing() {
    let response = Response::builder()
        .header("inin-ratelimit-allowed", "300")
        .header("inin-ratelimit-count", "6")
        .header("inin-ratelimit-reset", "38")
        .body(())
        .unwrap();
    assert_eq!(second_start_after(response).await, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_holds_new_requests() {
    let response = Response::builder()
        .status(StatusCode::TOO_MANY_REQUESTS)
        .header("retry-after", "7")
        .body(())
        .unwrap();
    assert_eq!(second_start_after(response).await, Duration::from_secs(7));
}

/// The wait after a 429 with `Retry-After: retry_after`, through a layer whose `max_hold` is 60 s.
async fn second_start_after_429_with_max_hold_60s(retry_after: &str) -> Duration {
    let first = Response::builder()
        .status(StatusCode::TOO_MANY_REQUESTS)
        .header("retry-after", retry_after)
        .body(())
        .unwrap();
    let layer = ConcurrencyLayer::new(10).max_hold(Duration::from_secs(60));
    second_start_with(layer, first).await
}

#[tokio::test(start_paused = true)]
async fn a_hold_up_to_max_hold_is_waited_out() {
    let wait = second_start_after_429_with_max_hold_60s("60").await;
    assert_eq!(wait, Duration::from_secs(60));
}

/// A daily quota's Retry-After is not waited out by every later call: the layer lets them go,
/// and the retry layer above ends each at once with the hint.
#[tokio::test(start_paused = true)]
async fn a_hold_beyond_max_hold_is_not_waited_out() {
    let wait = second_start_after_429_with_max_hold_60s("86400").await;
    assert_eq!(wait, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_hold_also_stops_requests_already_waiting_for_a_slot() {
    // Pacing 1 per 10 s; the first response says the server's window is spent for 45 s.
    let (inner, starts) = answering_first_with(
        Response::builder()
            .header("ratelimit", "\"default\";r=0;t=45")
            .body(())
            .unwrap(),
    );
    let metrics = Metrics::new();
    let svc = ConcurrencyLayer::new(10)
        .pacing(1, Duration::from_secs(10))
        .metrics(metrics.clone())
        .layer(inner);
    let first = tokio::spawn(svc.clone().oneshot(Request::new(())));
    let second = tokio::spawn(svc.clone().oneshot(Request::new(())));
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    let starts = starts.lock().unwrap();
    assert_eq!(starts[1] - starts[0], Duration::from_secs(45));
    assert_eq!(
        metrics.snapshot().pacing_waits,
        1,
        "one request waited, counted once"
    );
}

#[tokio::test(start_paused = true)]
async fn a_published_policy_lowers_the_rate() {
    let (inner, starts) = answering_first_with(
        Response::builder()
            .header("ratelimit-policy", "\"default\";q=2;w=10")
            .body(())
            .unwrap(),
    );
    let svc = ConcurrencyLayer::new(10)
        .pacing(300, Duration::from_secs(60))
        .layer(inner);
    for _ in 0..5 {
        svc.clone().oneshot(Request::new(())).await.unwrap();
    }
    let starts = starts.lock().unwrap();
    let t0 = starts[0];
    let offsets: Vec<_> = starts.iter().map(|s| (*s - t0).as_secs()).collect();
    assert_eq!(offsets, [0, 0, 10, 10, 20]);
}

#[tokio::test(start_paused = true)]
async fn learning_can_be_switched_off() {
    let (inner, starts) = answering_first_with(
        Response::builder()
            .status(StatusCode::TOO_MANY_REQUESTS)
            .header("retry-after", "7")
            .body(())
            .unwrap(),
    );
    let svc = ConcurrencyLayer::new(10)
        .learn_from_responses(false)
        .layer(inner);
    svc.clone().oneshot(Request::new(())).await.unwrap();
    svc.clone().oneshot(Request::new(())).await.unwrap();
    let starts = starts.lock().unwrap();
    assert_eq!(starts[1], starts[0]);
}

#[tokio::test(start_paused = true)]
async fn inner_errors_pass_through_as_box_errors() {
    let inner = service_fn(|_req: Request<()>| async {
        Err::<Response<()>, BoxError>("connection refused".into())
    });
    let svc = ConcurrencyLayer::new(1).layer(inner);
    let err = svc.clone().oneshot(Request::new(())).await.unwrap_err();
    assert_eq!(err.to_string(), "connection refused");
    assert_eq!(
        svc.available_permits(),
        1,
        "a failed call gives its permit back"
    );
}

#[tokio::test(start_paused = true)]
async fn under_the_retry_layer_no_permit_is_held_during_backoff() {
    use genesys_tower::Body;
    use genesys_tower::retry::{Jitter, RetryLayer, RetryPolicy};
    use tower::ServiceBuilder;

    // The first call is answered 503; the retry layer then waits 10 s before its next attempt.
    let starts: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let log = starts.clone();
    let inner = service_fn(move |req: Request<Body>| {
        let mut log = log.lock().unwrap();
        let status = if log.is_empty() {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        log.push((Instant::now(), req.uri().path().to_owned()));
        async move {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        }
    });
    let policy = RetryPolicy::builder()
        .base_delay(Duration::from_secs(10))
        .jitter(Jitter::None)
        .no_budget()
        .build();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .layer(ConcurrencyLayer::new(1))
        .service(inner);

    let begin = Instant::now();
    let first = tokio::spawn(
        svc.clone()
            .oneshot(Request::get("/a").body(Body::empty()).unwrap()),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let second = svc
        .clone()
        .oneshot(Request::get("/b").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);

    let starts: Vec<_> = starts
        .lock()
        .unwrap()
        .iter()
        .map(|(at, path)| ((*at - begin).as_secs(), path.clone()))
        .collect();
    assert_eq!(
        starts,
        [(0, "/a".into()), (1, "/b".into()), (10, "/a".into())],
        "/b went out while /a slept in backoff with the only permit free"
    );
}

#[tokio::test(start_paused = true)]
async fn services_from_one_layer_share_the_limit() {
    let (inner, starts) = recording(Duration::from_secs(10));
    let metrics = Metrics::new();
    let layer = ConcurrencyLayer::new(1);
    let waiting = layer.clone().layer(inner.clone());
    // Same limit, counted elsewhere, and refusing rather than waiting.
    let refusing = layer
        .metrics(metrics.clone())
        .reject_when_full()
        .layer(inner);

    let busy = tokio::spawn(waiting.clone().oneshot(Request::new(())));
    tokio::task::yield_now().await;
    assert_eq!(starts.lock().unwrap().len(), 1);
    let err = refusing
        .clone()
        .oneshot(Request::new(()))
        .await
        .unwrap_err();
    assert!(find::<Error>(&*err).is_some());
    assert_eq!(metrics.snapshot().concurrency_rejections, 1);

    busy.await.unwrap().unwrap();
    refusing.clone().oneshot(Request::new(())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_holds_across_threads() {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_seen = Arc::new(AtomicUsize::new(0));
    let (now, max) = (in_flight.clone(), max_seen.clone());
    let inner = service_fn(move |_req: Request<()>| {
        let (now, max) = (now.clone(), max.clone());
        async move {
            let current = now.fetch_add(1, SeqCst) + 1;
            max.fetch_max(current, SeqCst);
            for _ in 0..3 {
                tokio::task::yield_now().await;
            }
            now.fetch_sub(1, SeqCst);
            Ok::<_, Infallible>(Response::new(()))
        }
    });
    let svc = ConcurrencyLayer::new(4).layer(inner);
    let tasks: Vec<_> = (0..1000)
        .map(|_| tokio::spawn(svc.clone().oneshot(Request::new(()))))
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    assert!(max_seen.load(SeqCst) <= 4);
    assert_eq!(svc.available_permits(), 4);
}

#[test]
fn the_service_and_its_future_can_cross_threads() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    fn send_future<S: Service<R>, R>(_: &S)
    where
        S::Future: Send,
    {
    }
    let (inner, _) = recording(Duration::ZERO);
    let svc = ConcurrencyLayer::new(1).layer(inner);
    send_sync(&svc);
    send_future::<_, Request<()>>(&svc);
}
