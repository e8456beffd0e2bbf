//! RetryLayer: what a user of the layer would notice, on a paused clock.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::future::join_all;
use genesys_tower::error::find;
use genesys_tower::metrics::Metrics;
use genesys_tower::retry::{
    Backoff, DefaultClassifier, Error, ErrorKind, Jitter, RetryBudget, RetryInfo, RetryLayer,
    RetryPolicy, RetrySafety, headers,
};
use genesys_tower::{Body, BoxError, NotSent};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::StreamBody;
use proptest::prelude::*;
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

// ---------------------------------------------------------------------------------------------
// A scripted server: answers each attempt from a script, records what it received and when.

#[derive(Clone)]
enum Step {
    Status(u16, Vec<(&'static str, String)>),
    Fail(fn() -> BoxError),
    /// Answer 200 after this long (for timeouts below the retry layer).
    Slow(Duration),
}

fn status(code: u16) -> Step {
    Step::Status(code, Vec::new())
}

fn status_with(code: u16, name: &'static str, value: impl Into<String>) -> Step {
    Step::Status(code, vec![(name, value.into())])
}

fn reset() -> BoxError {
    io::Error::new(io::ErrorKind::ConnectionReset, "connection reset by peer").into()
}

fn refused() -> BoxError {
    io::Error::new(io::ErrorKind::ConnectionRefused, "connection refused").into()
}

#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    key: Option<HeaderValue>,
    body: Bytes,
}

#[derive(Clone, Default)]
struct Server {
    script: Arc<Mutex<VecDeque<Step>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// What to answer once the script is spent.
    then: Option<u16>,
}

impl Server {
    fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        Server {
            script: Arc::new(Mutex::new(steps.into_iter().collect())),
            ..Default::default()
        }
    }

    /// Answers every request with `code`.
    fn always(code: u16) -> Self {
        Server {
            then: Some(code),
            ..Default::default()
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn gaps(&self) -> Vec<Duration> {
        let seen = self.seen();
        seen.windows(2).map(|w| w[1].at - w[0].at).collect()
    }
}

impl Service<Request<Body>> for Server {
    type Response = Response<String>;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<String>, BoxError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let at = Instant::now();
            let key = req.headers().get("idempotency-key").cloned();
            let body = req.into_body().collect_bytes().await?;
            this.seen.lock().unwrap().push(Seen { at, key, body });
            let step = this.script.lock().unwrap().pop_front();
            let step = step.unwrap_or_else(|| status(this.then.unwrap_or(200)));
            match step {
                Step::Status(code, headers) => {
                    let mut res = Response::builder().status(code);
                    for (name, value) in headers {
                        res = res.header(name, value);
                    }
                    Ok(res.body(format!("status {code}"))?)
                }
                Step::Fail(error) => Err(error()),
                Step::Slow(delay) => {
                    tokio::time::sleep(delay).await;
                    Ok(Response::new("slow".to_owned()))
                }
            }
        })
    }
}

/// A policy without randomness or budget, so that delays are exact: 500 ms, 1 s, 2 s.
fn exact() -> genesys_tower::retry::RetryPolicyBuilder {
    RetryPolicy::builder()
        .jitter(Jitter::None)
        .retry_after_spread(0.0, Duration::ZERO)
        .no_budget()
}

async fn send(
    policy: RetryPolicy,
    server: &Server,
    req: Request<Body>,
) -> (Result<Response<String>, BoxError>, Metrics) {
    let metrics = Metrics::new();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy).metrics(metrics.clone()))
        .service(server.clone());
    (svc.oneshot(req).await, metrics)
}

fn get() -> Request<Body> {
    Request::get("http://api.test/users")
        .body(Body::empty())
        .unwrap()
}

fn post(body: &'static str) -> Request<Body> {
    Request::post("http://api.test/ingest")
        .body(Body::from(body))
        .unwrap()
}

fn retry_error(result: Result<Response<String>, BoxError>) -> Box<Error> {
    match result {
        Ok(res) => panic!("expected an error, got {}", res.status()),
        Err(e) => e
            .downcast::<Error>()
            .unwrap_or_else(|e| panic!("not a retry::Error: {e}")),
    }
}

/// The final response's `RetryInfo`, as (attempts, waited).
fn info(res: &Response<String>) -> (u32, Duration) {
    let info = RetryInfo::of(res.extensions());
    // Only a retried call's response carries the extension, or one that may hide an applied
    // request.
    assert_eq!(
        res.extensions().get::<RetryInfo>().is_some(),
        info.attempts > 1 || !info.waited.is_zero() || info.maybe_applied,
        "RetryInfo on a retried or ambiguous response only"
    );
    (info.attempts, info.waited)
}

// ---------------------------------------------------------------------------------------------
// Delays

#[tokio::test(start_paused = true)]
async fn exponential_schedule_without_jitter_is_exact() {
    let server = Server::always(503);
    let (res, metrics) = send(exact().build(), &server, get()).await;
    let res = res.unwrap();
    // Attempts exhausted on a response: the last response is returned as it is.
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.gaps(), [500, 1000, 2000].map(Duration::from_millis));
    assert_eq!(info(&res), (4, Duration::from_millis(3500)));
    let snap = metrics.snapshot();
    assert_eq!(
        (snap.requests, snap.attempts, snap.retries.server_error),
        (1, 4, 3)
    );
}

#[tokio::test(start_paused = true)]
async fn seeded_full_jitter_schedule_is_exact_on_the_paused_clock() {
    let policy = RetryPolicy::builder().seed(42).no_budget().build();
    // Timers tick in whole milliseconds: the layer rounds each delay up to one.
    let expected: Vec<Duration> = policy.backoff().take(3).map(ceil_ms).collect();
    // The same schedule, built by hand, for the benches' sake.
    let by_hand: Vec<Duration> =
        Backoff::new(Duration::from_millis(500), 2.0, Duration::from_secs(30))
            .seed(42)
            .take(3)
            .collect();
    assert_eq!(
        expected,
        by_hand.into_iter().map(ceil_ms).collect::<Vec<_>>()
    );
    assert!(
        expected
            .iter()
            .zip([500, 1000, 2000])
            .all(|(d, max)| *d <= Duration::from_millis(max))
    );

    let server = Server::always(503);
    let (res, _) = send(policy, &server, get()).await;
    assert_eq!(server.gaps(), expected);
    assert_eq!(info(&res.unwrap()).1, expected.iter().sum::<Duration>());
}

fn ceil_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_nanos().div_ceil(1_000_000) as u64)
}

#[tokio::test(start_paused = true)]
async fn delays_are_capped() {
    let policy = exact()
        .max_attempts(6)
        .base_delay(Duration::from_secs(1))
        .factor(10.0)
        .max_delay(Duration::from_secs(30))
        .build();
    let server = Server::always(502);
    let _ = send(policy, &server, get()).await;
    assert_eq!(server.gaps(), [1, 10, 30, 30, 30].map(Duration::from_secs));
}

#[tokio::test(start_paused = true)]
async fn retry_after_seconds_is_a_floor() {
    let server = Server::new([status_with(429, "retry-after", "7"), status(200)]);
    let (res, metrics) = send(exact().build(), &server, get()).await;
    let res = res.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(server.gaps(), [Duration::from_secs(7)]);
    assert_eq!(info(&res), (2, Duration::from_secs(7)));
    let snap = metrics.snapshot();
    assert_eq!(snap.rate_limited_responses, 1);
    assert_eq!(snap.retries.rate_limited, 1);
}

#[tokio::test(start_paused = true)]
async fn retry_after_floor_gets_a_small_spread() {
    // Default spread: up to 10 % of the hint, at most 1 s, above the floor.
    let policy = RetryPolicy::builder().no_budget().seed(3).build();
    for (hint, most) in [(4, 400), (60, 1000)] {
        let server = Server::new([status_with(503, "retry-after", hint.to_string())]);
        let _ = send(policy.clone(), &server, get()).await;
        let gap = server.gaps()[0];
        let floor = Duration::from_secs(hint);
        assert!(
            gap >= floor && gap <= floor + Duration::from_millis(most),
            "{gap:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_http_date_is_a_floor() {
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(10));
    let server = Server::new([status_with(503, "retry-after", date), status(200)]);
    let (res, _) = send(exact().build(), &server, get()).await;
    assert_eq!(res.unwrap().status(), StatusCode::OK);
    // The date has whole seconds: the wait is the 10 s less the part of a second already gone.
    let gap = server.gaps()[0];
    assert!(
        gap > Duration::from_secs(8) && gap <= Duration::from_secs(10),
        "{gap:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn past_http_date_counts_as_zero() {
    let server = Server::new([
        status_with(503, "retry-after", "Sun, 06 Nov 1994 08:49:37 GMT"),
        status(200),
    ]);
    let (res, _) = send(exact().build(), &server, get()).await;
    assert_eq!(res.unwrap().status(), StatusCode::OK);
    assert_eq!(server.gaps(), [Duration::from_millis(500)]); // the backoff alone
}

#[tokio::test(start_paused = true)]
async fn rate_limit_headers_are_hints_on_429_only() {
    let server = Server::new([
        status_with(429, "ratelimit", "\"default\";r=0;t=12"),
        status_with(429, "inin-ratelimit-reset", "20"),
        status_with(503, "inin-ratelimit-reset", "40"),
        status(200),
    ]);
    let (res, _) = send(exact().build(), &server, get()).await;
    assert_eq!(res.unwrap().status(), StatusCode::OK);
    // On the 503 the window reset is no hint: the backoff (2 s) applies.
    assert_eq!(server.gaps(), [12, 20, 2].map(Duration::from_secs));
}

#[tokio::test(start_paused = true)]
async fn hint_over_max_retry_after_ends_the_call_at_once() {
    let start = Instant::now();
    let server = Server::new([status_with(429, "retry-after", "3600")]);
    let (res, metrics) = send(exact().build(), &server, get()).await;
    let err = retry_error(res);
    assert_eq!(err.kind(), ErrorKind::RetryAfterTooLong);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
    assert_eq!(err.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    assert_eq!(err.attempts(), 1);
    assert!(err.to_string().contains("3600 s"), "{err}");
    assert_eq!(Instant::now(), start, "no wait at all");
    assert_eq!(server.seen().len(), 1);
    assert_eq!(metrics.snapshot().retries.total(), 0);
}

#[tokio::test(start_paused = true)]
async fn hint_beyond_the_deadline_ends_the_call_at_once() {
    let start = Instant::now();
    let server = Server::new([status_with(503, "retry-after", "30")]);
    let policy = exact().deadline(Duration::from_secs(10)).build();
    let err = retry_error(send(policy, &server, get()).await.0);
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    assert_eq!(err.limit(), Some(Duration::from_secs(10)));
    assert_eq!(Instant::now(), start);
}

#[tokio::test(start_paused = true)]
async fn no_attempt_starts_after_the_deadline() {
    let start = Instant::now();
    let server = Server::always(503);
    // 500 ms, then 1 s: the next delay (2 s) would end at 3.5 s, past the 3 s deadline.
    let policy = exact().deadline(Duration::from_secs(3)).build();
    let err = retry_error(send(policy, &server, get()).await.0);
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
    assert_eq!(err.attempts(), 3);
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(Instant::now() - start, Duration::from_millis(1500));
    assert!(
        server
            .seen()
            .iter()
            .all(|s| s.at - start <= Duration::from_secs(3))
    );
}

/// A server that answers slowly with `Retry-After: 0` does not carry the call past its
/// deadline: the hint does not shorten the backoff, and an answer that comes after the deadline
/// ends the call.
#[tokio::test(start_paused = true)]
async fn a_zero_hint_does_not_carry_a_call_past_its_deadline() {
    let start = Instant::now();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let seen = sent.clone();
    let server = tower::service_fn(move |_req: Request<Body>| {
        seen.lock().unwrap().push(Instant::now());
        async {
            tokio::time::sleep(Duration::from_secs(4)).await;
            let mut response = Response::new(String::new());
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("0"));
            Ok::<_, Infallible>(response)
        }
    });
    let policy = exact().deadline(Duration::from_secs(3)).build();
    let err = retry_error(RetryLayer::new(policy).layer(server).oneshot(get()).await);
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
    assert_eq!(err.attempts(), 1);
    assert_eq!(Instant::now() - start, Duration::from_secs(4));
    assert_eq!(sent.lock().unwrap().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_retry_waiting_for_a_permit_gives_up_at_the_deadline() {
    use genesys_tower::concurrency::ConcurrencyLayer;

    let start = Instant::now();
    // The call's first attempt gets a 503; meanwhile another caller takes the only permit of
    // the concurrency limit below, and keeps it for a minute.
    let server = Server::new([status(503), Step::Slow(Duration::from_secs(60))]);
    let limited = ConcurrencyLayer::new(1).layer(server.clone());
    let policy = exact().deadline(Duration::from_secs(3)).build();
    let retried = RetryLayer::new(policy).layer(limited.clone());
    let call = tokio::spawn(retried.oneshot(get()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.seen().len(), 1, "the first attempt was answered");
    let other = tokio::spawn(limited.oneshot(get()));

    let err = retry_error(call.await.unwrap());
    assert_eq!(err.kind(), ErrorKind::DeadlineExceeded);
    assert_eq!(err.attempts(), 1);
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert_eq!(
        Instant::now() - start,
        Duration::from_secs(3),
        "ended at the deadline"
    );
    assert_eq!(
        server.seen().len(),
        2,
        "no attempt started after the deadline"
    );
    assert!(other.await.unwrap().is_ok());
}

// ---------------------------------------------------------------------------------------------
// Budget

async fn outage(policy: RetryPolicy) -> genesys_tower::metrics::MetricsSnapshot {
    let server = Server::always(503);
    let metrics = Metrics::new();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy).metrics(metrics.clone()))
        .service(server);
    let calls = (0..1000).map(|_| svc.clone().oneshot(get()));
    for res in join_all(calls).await {
        assert_eq!(res.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    }
    metrics.snapshot()
}

#[tokio::test(start_paused = true)]
async fn budget_stops_retries_in_an_outage() {
    let without = outage(RetryPolicy::builder().no_budget().build()).await;
    assert_eq!(without.retries.total(), 3000);

    let with = outage(RetryPolicy::default()).await;
    // At most the burst (100), 0.2 per request (200), and 1 per second of outage (a few).
    let retries = with.retries.total();
    assert!((250..=310).contains(&retries), "{retries} retries");
    assert_eq!(with.attempts, 1000 + retries);
    assert!(
        with.budget_refusals >= 690,
        "{} refusals",
        with.budget_refusals
    );
}

#[tokio::test(start_paused = true)]
async fn budget_is_shared_by_clones_and_refused_error_is_wrapped() {
    let policy = exact()
        .budget(
            RetryBudget::new()
                .max_tokens(1)
                .min_per_sec(0)
                .retry_ratio(0.0),
        )
        .build();
    let server = Server::new([Step::Fail(reset), status(200), Step::Fail(reset)]);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .service(server.clone());
    // The first call spends the only token.
    let res = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(info(&res).0, 2);
    // A clone finds the budget spent: the reset comes back, wrapped, not retried.
    let err = retry_error(svc.clone().oneshot(get()).await);
    assert_eq!(err.kind(), ErrorKind::BudgetExhausted);
    let source = std::error::Error::source(&*err).unwrap();
    assert_eq!(
        source.downcast_ref::<io::Error>().unwrap().kind(),
        io::ErrorKind::ConnectionReset
    );
    assert_eq!(svc.get_ref().seen().len(), 3);
}

// ---------------------------------------------------------------------------------------------
// Classification and replay safety

/// A call whose earlier attempt may have been applied says so however it ends: with the last
/// attempt's answer (in its `RetryInfo`) or with the layer's error. A call whose attempts all
/// got answers, or were never sent, does not.
#[tokio::test(start_paused = true)]
async fn an_attempt_that_may_have_been_applied_is_reported_however_the_call_ends() {
    let policy = || exact().max_attempts(3).build();
    let server = Server::new([Step::Fail(reset), status(503), status(503)]);
    let res = send(policy(), &server, get()).await.0.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        RetryInfo::of(res.extensions()).maybe_applied,
        "the reset may have applied it"
    );

    let server = Server::new([Step::Fail(reset), Step::Fail(reset), Step::Fail(reset)]);
    let err = retry_error(send(policy(), &server, get()).await.0);
    assert_eq!(
        err.kind(),
        genesys_tower::retry::ErrorKind::AttemptsExhausted
    );
    assert!(err.may_have_been_applied());
    assert!(
        !err.is_outcome_unknown(),
        "the kind stays what ended the call"
    );
    assert!(err.to_string().contains("may have been applied"), "{err}");

    let server = Server::new([status(503), status(503), status(503)]);
    let res = send(policy(), &server, get()).await.0.unwrap();
    assert!(
        !RetryInfo::of(res.extensions()).maybe_applied,
        "answered every time"
    );

    let server = Server::new([
        Step::Fail(refused),
        Step::Fail(refused),
        Step::Fail(refused),
    ]);
    let err = retry_error(send(policy(), &server, get()).await.0);
    assert!(
        !err.may_have_been_applied(),
        "never reached the server: {err}"
    );

    // A later attempt's error that is never retried (here, a request the layers below did not
    // send) still ends a call whose outcome is unknown.
    fn not_sent() -> BoxError {
        genesys_tower::NotSent::new("token source down").into()
    }
    let server = Server::new([Step::Fail(reset), Step::Fail(not_sent)]);
    let err = retry_error(send(policy(), &server, get()).await.0);
    assert!(
        err.is_outcome_unknown() && err.may_have_been_applied(),
        "{err}"
    );
    assert!(err.to_string().contains("token source down"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn ambiguous_post_without_key_is_not_retried() {
    let server = Server::new([Step::Fail(reset), status(201)]);
    let (res, metrics) = send(exact().build(), &server, post("{\"n\":1}")).await;
    let err = retry_error(res);
    assert!(err.is_outcome_unknown());
    assert_eq!(err.attempts(), 1);
    assert!(
        err.to_string().contains("may or may not have been applied"),
        "{err}"
    );
    assert!(
        err.to_string().contains("connection reset by peer"),
        "{err}"
    );
    assert_eq!(server.seen().len(), 1);
    assert_eq!(metrics.snapshot().retries.total(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_post_our_own_layers_did_not_send_is_not_an_unknown_outcome() {
    use genesys_tower::auth::{self, AuthLayer, token_source_fn};
    use genesys_tower::concurrency::{self, ConcurrencyLayer};
    use std::sync::atomic::{AtomicU32, Ordering};

    // A token source that fails: the request was never sent, so the caller must learn that,
    // once, not "may or may not have been applied" after a round of backoff.
    let fetches = Arc::new(AtomicU32::new(0));
    let source = {
        let fetches = fetches.clone();
        token_source_fn(move || {
            fetches.fetch_add(1, Ordering::SeqCst);
            async { Err::<auth::Token, BoxError>("login host down".into()) }
        })
    };
    let server = Server::always(200);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(exact().build()))
        .layer(AuthLayer::new(source))
        .service(server.clone());
    let err = svc.oneshot(post("{}")).await.unwrap_err();
    assert!(
        err.is::<NotSent>(),
        "the auth layer's error as it came: {err:?}"
    );
    let auth_err =
        find::<auth::Error>(&*err).unwrap_or_else(|| panic!("the auth error itself, got: {err}"));
    assert!(auth_err.is_token_source());
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        1,
        "not retried with backoff"
    );
    assert!(server.seen().is_empty());

    // A request shed by a full concurrency limit was not sent either.
    let slow = Server::new([Step::Slow(Duration::from_secs(10))]);
    let limited = ServiceBuilder::new()
        .layer(RetryLayer::new(exact().build()))
        .layer(ConcurrencyLayer::new(1).reject_when_full())
        .service(slow.clone());
    let first = tokio::spawn(limited.clone().oneshot(post("{}")));
    tokio::task::yield_now().await;
    let err = limited.oneshot(post("{}")).await.unwrap_err();
    assert_eq!(
        find::<concurrency::Error>(&*err),
        Some(&concurrency::Error::Overloaded),
        "{err}"
    );
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(slow.seen().len(), 1);
}

/// A layer of the user's own that says "not sent" (a circuit breaker, a load shedder) is heard:
/// its error comes back as it is, after one call, never as an unknown outcome, never retried.
#[tokio::test(start_paused = true)]
async fn a_users_own_not_sent_error_is_final_and_not_an_unknown_outcome() {
    let calls = Arc::new(Mutex::new(0u32));
    let counted = calls.clone();
    let breaker = tower::service_fn(move |_req: Request<Body>| {
        *counted.lock().unwrap() += 1;
        async { Err::<Response<String>, _>(NotSent::new(io::Error::other("circuit open"))) }
    });
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(exact().build()))
        .service(breaker);
    let err = svc.oneshot(post("{}")).await.unwrap_err();
    assert!(err.is::<NotSent>(), "returned as it came: {err:?}");
    assert_eq!(err.to_string(), "circuit open");
    assert_eq!(*calls.lock().unwrap(), 1, "not retried");

    // Without the mark the same error after a POST is a possible duplicate: outcome unknown.
    let plain = tower::service_fn(|_req: Request<Body>| async {
        Err::<Response<String>, _>(io::Error::other("circuit open"))
    });
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(exact().build()))
        .service(plain);
    let err = retry_error(svc.oneshot(post("{}")).await);
    assert!(err.is_outcome_unknown());
}

#[tokio::test(start_paused = true)]
async fn a_key_alone_does_not_make_a_post_replayable() {
    let server = Server::new([Step::Fail(reset)]);
    let mut req = post("{}");
    req.headers_mut()
        .insert("idempotency-key", HeaderValue::from_static("k-1"));
    let err = retry_error(send(exact().build(), &server, req).await.0);
    assert!(err.is_outcome_unknown());
}

#[tokio::test(start_paused = true)]
async fn keyed_post_to_a_target_that_honours_keys_is_retried_with_the_same_key() {
    for by_extension in [true, false] {
        let server = Server::new([Step::Fail(reset), Step::Fail(reset), status(201)]);
        let mut req = post("{\"n\":1}");
        req.headers_mut()
            .insert("idempotency-key", HeaderValue::from_static("8e0f-key"));
        let policy = if by_extension {
            req.extensions_mut().insert(RetrySafety::KeyHonoured);
            exact().build()
        } else {
            exact()
                .honours_idempotency_keys(|req| req.uri.path() == "/ingest")
                .build()
        };
        let (res, metrics) = send(policy, &server, req).await;
        assert_eq!(res.unwrap().status(), StatusCode::CREATED);
        let seen = server.seen();
        assert_eq!(seen.len(), 3);
        assert!(seen.iter().all(|s| s.key.as_ref().unwrap() == "8e0f-key"));
        assert!(seen.iter().all(|s| s.body == "{\"n\":1}"));
        assert_eq!(metrics.snapshot().retries.ambiguous, 2);
    }
}

#[tokio::test(start_paused = true)]
async fn ambiguous_get_is_retried() {
    let server = Server::new([Step::Fail(reset), status(200)]);
    let (res, metrics) = send(exact().build(), &server, get()).await;
    assert_eq!(info(&res.unwrap()).0, 2);
    assert_eq!(metrics.snapshot().retries.ambiguous, 1);
}

#[tokio::test(start_paused = true)]
async fn per_attempt_timeout_below_is_ambiguous() {
    // RetryLayer above a per-attempt timeout: the first attempt times out, the GET is retried.
    let server = Server::new([Step::Slow(Duration::from_secs(60)), status(200)]);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(exact().build()))
        .timeout(Duration::from_secs(5))
        .service(server.clone());
    let res = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(info(&res).0, 2);

    // The same timeout on a POST: outcome unknown, with the timeout as its source.
    let server = Server::new([Step::Slow(Duration::from_secs(60))]);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(exact().build()))
        .timeout(Duration::from_secs(5))
        .service(server);
    let err = retry_error(svc.oneshot(post("{}")).await);
    assert!(err.is_outcome_unknown());
    let source = std::error::Error::source(&*err).unwrap();
    assert!(source.is::<tower::timeout::error::Elapsed>());
}

#[tokio::test(start_paused = true)]
async fn marks_override_the_method() {
    // A conditional PATCH marked idempotent is replayed.
    let server = Server::new([Step::Fail(reset), status(200)]);
    let mut req = Request::patch("http://api.test/users/1")
        .body(Body::from("{\"version\":3}"))
        .unwrap();
    req.extensions_mut().insert(RetrySafety::Idempotent);
    assert_eq!(
        info(&send(exact().build(), &server, req).await.0.unwrap()).0,
        2
    );

    // A GET marked unsafe is not.
    let server = Server::new([Step::Fail(reset)]);
    let mut req = get();
    req.extensions_mut().insert(RetrySafety::Unsafe);
    assert!(retry_error(send(exact().build(), &server, req).await.0).is_outcome_unknown());
}

#[tokio::test(start_paused = true)]
async fn the_policys_safety_rule_wins_over_the_requests_own_mark() {
    // An operator's rule: PATCHes to users are conditional (safe); anything under /actions is
    // never replayed, whatever the code marked.
    let policy = || {
        exact()
            .safety(|req| {
                if req.uri.path().starts_with("/actions") {
                    Some(RetrySafety::Unsafe)
                } else if req.method == http::Method::PATCH {
                    Some(RetrySafety::Idempotent)
                } else {
                    None
                }
            })
            .build()
    };
    let server = Server::new([Step::Fail(reset), status(200)]);
    let req = Request::patch("http://api.test/users/1")
        .body(Body::from("{\"version\":3}"))
        .unwrap();
    assert_eq!(info(&send(policy(), &server, req).await.0.unwrap()).0, 2);

    // The code said idempotent; the rule says no: one attempt, the outcome unknown.
    let server = Server::new([Step::Fail(reset), status(200)]);
    let mut req = Request::get("http://api.test/actions/7")
        .body(Body::empty())
        .unwrap();
    req.extensions_mut().insert(RetrySafety::Idempotent);
    assert!(retry_error(send(policy(), &server, req).await.0).is_outcome_unknown());
    assert_eq!(server.seen().len(), 1);

    // Where the rule says nothing, the request's own mark stands.
    let server = Server::new([Step::Fail(reset)]);
    let mut req = get();
    req.extensions_mut().insert(RetrySafety::Unsafe);
    assert!(retry_error(send(policy(), &server, req).await.0).is_outcome_unknown());
}

#[tokio::test(start_paused = true)]
async fn the_retried_statuses_can_be_chosen() {
    let classifier = DefaultClassifier::new()
        .retry_statuses([
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::INSUFFICIENT_STORAGE,
        ])
        .unwrap();
    let policy = exact().classifier(classifier).build();
    let server = Server::new([status(507), status(429), status(201)]);
    let (res, metrics) = send(policy.clone(), &server, post("{}")).await;
    assert_eq!(info(&res.unwrap()).0, 3);
    assert_eq!(metrics.snapshot().retries.total(), 2);
    // 503 is no longer on the list: the caller gets it after one attempt.
    let server = Server::new([status(503), status(200)]);
    let (res, _) = send(policy, &server, get()).await;
    assert_eq!(res.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(server.seen().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn refused_connection_is_retried_even_for_a_post() {
    let server = Server::new([Step::Fail(refused), status(201)]);
    let mut req = post("{}");
    req.extensions_mut().insert(RetrySafety::Unsafe);
    let (res, metrics) = send(exact().build(), &server, req).await;
    assert_eq!(res.unwrap().status(), StatusCode::CREATED);
    assert_eq!(metrics.snapshot().retries.connect, 1);
}

#[tokio::test(start_paused = true)]
async fn status_retries_apply_to_posts() {
    let server = Server::new([status(503), status(429), status(201)]);
    let (res, _) = send(exact().build(), &server, post("{}")).await;
    assert_eq!(info(&res.unwrap()).0, 3);
}

#[tokio::test(start_paused = true)]
async fn client_errors_are_never_retried() {
    for code in [400, 401, 403, 404, 409, 422] {
        let server = Server::always(code);
        let (res, _) = send(exact().build(), &server, get()).await;
        let res = res.unwrap();
        assert_eq!(res.status().as_u16(), code);
        assert_eq!(info(&res), (1, Duration::ZERO));
        assert_eq!(server.seen().len(), 1, "{code}");
    }
}

#[tokio::test(start_paused = true)]
async fn status_408_is_ambiguous_a_post_gets_it_back_once() {
    // A 408 may come from a timeout middleware below the retry layer after the server applied
    // the request: a POST without a key the target honours is not sent again.
    let server = Server::new([status(408), status(200)]);
    let (res, metrics) = send(exact().build(), &server, post("{}")).await;
    let res = res.unwrap();
    assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(info(&res), (1, Duration::ZERO));
    assert!(
        RetryInfo::of(res.extensions()).maybe_applied,
        "returned as it is, and said to be possibly applied"
    );
    assert_eq!(server.seen().len(), 1);
    assert_eq!(metrics.snapshot().retries.total(), 0);
}

#[tokio::test(start_paused = true)]
async fn status_408_is_retried_for_requests_safe_to_replay() {
    let server = Server::new([status(408), status(200)]);
    let (res, metrics) = send(exact().build(), &server, get()).await;
    assert_eq!(info(&res.unwrap()).0, 2);
    assert_eq!(metrics.snapshot().retries.request_timeout, 1);

    let server = Server::new([status(408), status(201)]);
    let mut request = post("{}");
    request.extensions_mut().insert(RetrySafety::Idempotent);
    let (res, _) = send(exact().build(), &server, request).await;
    assert_eq!(res.unwrap().status(), StatusCode::CREATED);
    assert_eq!(server.seen().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn status_500_only_when_enabled() {
    let server = Server::new([status(500), status(200)]);
    let (res, _) = send(exact().build(), &server, get()).await;
    assert_eq!(res.unwrap().status(), StatusCode::INTERNAL_SERVER_ERROR);

    let server = Server::new([status(500), status(200)]);
    let policy = exact()
        .classifier(DefaultClassifier::new().retry_500(true))
        .build();
    let (res, _) = send(policy, &server, get()).await;
    assert_eq!(info(&res.unwrap()).0, 2);
}

#[tokio::test(start_paused = true)]
async fn gateway_errors_can_be_treated_as_ambiguous() {
    let policy = exact()
        .classifier(DefaultClassifier::new().ambiguous_gateway_errors(true))
        .build();
    let server = Server::new([status(504), status(201)]);
    let (res, _) = send(policy.clone(), &server, post("{}")).await;
    assert_eq!(res.unwrap().status(), StatusCode::GATEWAY_TIMEOUT);
    let server = Server::new([status(504), status(200)]);
    let (res, _) = send(policy, &server, get()).await;
    assert_eq!(res.unwrap().status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn exhausted_attempts_wrap_the_last_error() {
    let server = Server::new((0..4).map(|_| Step::Fail(reset)));
    let err = retry_error(send(exact().build(), &server, get()).await.0);
    assert_eq!(err.kind(), ErrorKind::AttemptsExhausted);
    assert_eq!(err.attempts(), 4);
    assert!(std::error::Error::source(&*err).is_some());
    // The message carries the last error's own text, not just "the last attempt failed".
    assert!(
        err.to_string().contains("connection reset by peer"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// Bodies

fn stream(chunks: &'static [&'static str]) -> Body {
    let frames = chunks
        .iter()
        .map(|c| Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(c.as_bytes()))));
    Body::new(StreamBody::new(futures_util::stream::iter(frames)))
}

#[tokio::test(start_paused = true)]
async fn streaming_body_over_the_limit_is_sent_once_and_not_retried() {
    let server = Server::new([status(503), status(200)]);
    let policy = exact().replay_limit(8).build();
    let req = Request::put("http://api.test/blob")
        .body(stream(&["0123456789", "abcdefghij", "KLMNOPQRST"]))
        .unwrap();
    let (res, _) = send(policy, &server, req).await;
    let res = res.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(info(&res).0, 1);
    let seen = server.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, "0123456789abcdefghijKLMNOPQRST");
}

#[tokio::test(start_paused = true)]
async fn streaming_body_within_the_limit_is_replayed_whole() {
    let server = Server::new([status(503), status(200)]);
    let req = Request::put("http://api.test/blob")
        .body(stream(&["0123456789", "abcdefghij"]))
        .unwrap();
    let (res, _) = send(exact().build(), &server, req).await;
    assert_eq!(info(&res.unwrap()).0, 2);
    assert!(
        server
            .seen()
            .iter()
            .all(|s| s.body == "0123456789abcdefghij")
    );
}

#[tokio::test(start_paused = true)]
async fn the_service_below_gets_its_own_body_type_on_every_attempt() {
    use http_body_util::{BodyExt, Full};
    use std::sync::atomic::{AtomicU32, Ordering};

    // A leaf built for `Full<Bytes>`, as a hyper-util client is: no conversion on either side.
    let calls = Arc::new(AtomicU32::new(0));
    let leaf = {
        let calls = calls.clone();
        tower::service_fn(move |req: Request<Full<Bytes>>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let body = req.into_body().collect().await?.to_bytes();
                assert_eq!(body, "full");
                let status = if n == 0 { 503 } else { 200 };
                Ok::<_, BoxError>(Response::builder().status(status).body(Full::new(body))?)
            }
        })
    };
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(exact().build()))
        .service(leaf);
    let req = Request::post("http://api.test/x")
        .header("idempotency-key", "k")
        .extension(RetrySafety::KeyHonoured)
        .body(Full::new(Bytes::from_static(b"full")))
        .unwrap();
    let res: Response<Full<Bytes>> = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_long_stream_for_a_service_that_takes_only_whole_bodies_is_refused_unsent() {
    use genesys_tower::body::{NotReplayable, ReplayBody};
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A body type that can only be rebuilt from bytes in memory.
    struct Whole(Body);

    impl http_body::Body for Whole {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
            std::pin::Pin::new(&mut self.0).poll_frame(cx)
        }
    }

    impl ReplayBody for Whole {
        fn into_replay(self) -> Body {
            self.0
        }

        fn from_replay(body: Body) -> Option<Self> {
            body.is_replayable().then_some(Whole(body))
        }
    }

    let calls = Arc::new(AtomicU32::new(0));
    let leaf = {
        let calls = calls.clone();
        tower::service_fn(move |_req: Request<Whole>| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, BoxError>(Response::new(String::new())) }
        })
    };
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(exact().replay_limit(4).build()))
        .service(leaf);

    // Within the limit: read into memory, rebuilt for the attempt.
    let short = Request::put("http://api.test/blob")
        .body(Whole(stream(&["ab", "cd"])))
        .unwrap();
    svc.clone().oneshot(short).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Past it: the service cannot take a stream, so nothing is sent and the error says why.
    let long = Request::put("http://api.test/blob")
        .body(Whole(stream(&["0123456789", "abcdefghij"])))
        .unwrap();
    let err = svc.oneshot(long).await.unwrap_err();
    assert!(err.is::<NotReplayable>(), "{err}");
    assert!(err.to_string().contains("nothing was sent"), "{err}");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------------
// tower manners

#[tokio::test(start_paused = true)]
async fn each_attempt_waits_for_the_inner_service_to_be_ready() {
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<String>>();
    let policy = exact().build();
    let mut svc = tower::Layer::layer(&RetryLayer::new(policy), mock);
    handle.allow(1);
    ServiceExt::<Request<Body>>::ready(&mut svc).await.unwrap();
    let call = tokio::spawn(svc.call(get()));

    let (_, reply) = handle.next_request().await.unwrap();
    reply.send_response(Response::builder().status(503).body(String::new()).unwrap());
    // Long past the backoff: the retry waits for capacity, and sends nothing meanwhile.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(handle.poll_request().is_pending());

    handle.allow(1);
    let (req, reply) = handle.next_request().await.unwrap();
    assert_eq!(req.method(), Method::GET);
    reply.send_response(Response::new("ok".to_owned()));
    let res = call.await.unwrap().unwrap();
    assert_eq!(info(&res).0, 2);
}

#[test]
fn retry_error_is_a_box_error() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Error>();
    assert_send_sync::<genesys_tower::retry::Retry<Server>>();
}

// ---------------------------------------------------------------------------------------------
// Properties

proptest! {
    #[test]
    fn header_parsers_never_panic(value in proptest::collection::vec(any::<u8>(), 0..64), secs in any::<u64>()) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(secs % (1 << 40));
        let _ = headers::parse_retry_after(&value, now);
        if let Ok(text) = std::str::from_utf8(&value) {
            let _ = headers::parse_ratelimit(text);
        }
        if let Ok(v) = HeaderValue::from_bytes(&value) {
            let mut map = http::HeaderMap::new();
            for name in ["retry-after", "ratelimit", "ratelimit-reset", "inin-ratelimit-reset"] {
                map.append(name, v.clone());
            }
            let _ = headers::hint(&map, now, true);
        }
    }

    #[test]
    fn header_parsers_never_panic_on_plausible_text(
        value in r#"[0-9 ,;="a-zA-Z:\-\\]{0,40}"#,
    ) {
        let _ = headers::parse_retry_after(value.as_bytes(), SystemTime::now());
        let _ = headers::parse_ratelimit(&value);
    }

    #[test]
    fn delta_seconds_round_trip(secs in any::<u32>()) {
        let parsed = headers::parse_retry_after(secs.to_string().as_bytes(), SystemTime::now());
        prop_assert_eq!(parsed, Some(Duration::from_secs(secs.into())));
    }

    #[test]
    fn backoff_delays_stay_within_zero_and_cap(
        base_ms in 0u64..100_000,
        factor in prop_oneof![Just(f64::NAN), Just(f64::INFINITY), -10.0f64..100.0],
        cap_ms in 0u64..1_000_000,
        mode in prop_oneof![Just(Jitter::None), Just(Jitter::Full), Just(Jitter::Equal), Just(Jitter::Decorrelated)],
        seed in any::<u64>(),
    ) {
        let cap = Duration::from_millis(cap_ms);
        let backoff = Backoff::new(Duration::from_millis(base_ms), factor, cap).jitter(mode).seed(seed);
        for delay in backoff.take(80) {
            prop_assert!(delay <= cap, "{:?} > {:?}", delay, cap);
        }
    }

    #[test]
    fn each_jitter_mode_stays_within_its_own_bounds(
        base_ms in 1u64..10_000,
        factor in 1.0f64..4.0,
        cap_ms in 1u64..100_000,
        seed in any::<u64>(),
    ) {
        let (base, cap) = (Duration::from_millis(base_ms), Duration::from_millis(cap_ms));
        let schedule = |mode| Backoff::new(base, factor, cap).jitter(mode).seed(seed).take(40);
        // Without jitter the schedule is d(n) = min(cap, base * factor^n), and never shrinks.
        let exact: Vec<Duration> = schedule(Jitter::None).collect();
        prop_assert_eq!(exact[0], base.min(cap));
        prop_assert!(exact.windows(2).all(|w| w[0] <= w[1]), "{:?}", exact);
        for (d, full) in exact.iter().zip(schedule(Jitter::Full)) {
            prop_assert!(full <= *d, "full {:?} above {:?}", full, d);
        }
        for (d, equal) in exact.iter().zip(schedule(Jitter::Equal)) {
            prop_assert!(equal >= *d / 2 && equal <= *d, "equal {:?} outside [{:?}/2, {:?}]", equal, d, d);
        }
        for delay in schedule(Jitter::Decorrelated) {
            prop_assert!(delay >= base.min(cap) && delay <= cap, "decorrelated {:?}", delay);
        }
        // Full jitter is spread over [0, d], not stuck at either end: over 400 draws of a
        // schedule that starts at its cap, the mean is well inside.
        let capped = Backoff::new(cap, 2.0, cap).jitter(Jitter::Full).seed(seed).take(400);
        let mean = capped.map(|d| d.as_secs_f64()).sum::<f64>() / 400.0;
        let ratio = mean / cap.as_secs_f64();
        prop_assert!((0.35..0.65).contains(&ratio), "mean / cap = {}", ratio);
    }
}

// ---------------------------------------------------------------------------------------------
// Over real services

#[tokio::test]
async fn hyper_util_connect_failure_is_retried_even_for_a_post() {
    // A port that nobody listens on: every attempt is refused before anything is sent.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Body>();
    let metrics = Metrics::new();
    let policy = exact()
        .max_attempts(3)
        .base_delay(Duration::from_millis(1))
        .build();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy).metrics(metrics.clone()))
        .service(client);
    let req = Request::post(format!("http://{addr}/ingest"))
        .body(Body::from("{}"))
        .unwrap();
    let err = svc.oneshot(req).await.unwrap_err();
    let err = err.downcast::<Error>().unwrap();
    assert_eq!(err.kind(), ErrorKind::AttemptsExhausted);
    assert_eq!(err.attempts(), 3);
    assert_eq!(metrics.snapshot().retries.connect, 2);
}

#[tokio::test(start_paused = true)]
async fn wraps_an_axum_router() {
    use std::sync::atomic::{AtomicU32, Ordering};
    let calls = Arc::new(AtomicU32::new(0));
    let counter = calls.clone();
    let router = axum::Router::new().route(
        "/users",
        axum::routing::get(move || {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            async move {
                if n < 2 {
                    StatusCode::SERVICE_UNAVAILABLE
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(exact().build()))
        .service(router);
    let res = svc.oneshot(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let info = RetryInfo::of(res.extensions());
    assert_eq!(
        (info.attempts, info.waited),
        (3, Duration::from_millis(1500))
    );
    assert_eq!(calls.load(Ordering::Relaxed), 3);
}

#[tokio::test(start_paused = true)]
async fn retried_response_bodies_are_drained_during_the_wait() {
    use futures_util::StreamExt;
    use std::sync::atomic::{AtomicU32, Ordering};
    let chunks_read = Arc::new(AtomicU32::new(0));
    let calls = Arc::new(AtomicU32::new(0));
    let read = chunks_read.clone();
    let svc = tower::service_fn(move |_req: Request<Body>| {
        let read = read.clone();
        let n = calls.fetch_add(1, Ordering::Relaxed);
        async move {
            let chunks = futures_util::stream::iter(0..3).map(move |_| {
                read.fetch_add(1, Ordering::Relaxed);
                Ok::<_, Infallible>(http_body::Frame::data(Bytes::from_static(b"error")))
            });
            let status = if n == 0 { 503 } else { 200 };
            let res = Response::builder()
                .status(status)
                .body(StreamBody::new(chunks));
            Ok::<_, Infallible>(res.unwrap())
        }
    });
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(exact().build()))
        .service(svc);
    let res = svc.oneshot(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // The 503's body was read to its end (so its connection could be reused); the final
    // response's body is the caller's, unread.
    assert_eq!(chunks_read.load(Ordering::Relaxed), 3);
}

// ---------------------------------------------------------------------------------------------
// Bodies too large

/// Retries every status: the layer must still never re-send after a 413.
struct RetryEverything;

impl genesys_tower::retry::Classify for RetryEverything {
    fn classify_response(
        &self,
        _: &http::request::Parts,
        _: StatusCode,
        _: &http::HeaderMap,
    ) -> genesys_tower::retry::Classification {
        genesys_tower::retry::Classification::Retry(
            genesys_tower::metrics::RetryReason::ServerError,
        )
    }

    fn classify_error(
        &self,
        _: &http::request::Parts,
        _: &(dyn std::error::Error + 'static),
    ) -> genesys_tower::retry::Classification {
        genesys_tower::retry::Classification::Retry(
            genesys_tower::metrics::RetryReason::ServerError,
        )
    }
}

#[tokio::test(start_paused = true)]
async fn a_413_is_never_resent_whatever_the_classifier() {
    for policy in [exact().build(), exact().classifier(RetryEverything).build()] {
        let server = Server::always(413);
        let (res, _) = send(policy, &server, post(r#"{"big":true}"#)).await;
        let res = res.unwrap();
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(server.seen().len(), 1);
        assert_eq!(info(&res), (1, Duration::ZERO));
    }
}

#[tokio::test(start_paused = true)]
async fn a_response_body_over_the_limit_is_not_retried() {
    use genesys_tower::read_body::{Error as BodyError, ReadBodyLayer};
    let server = Server::always(200);
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(exact().build()))
        .layer(ReadBodyLayer::new().max_success_body(4))
        .service(server.clone());
    let err = svc.oneshot(get()).await.unwrap_err();
    assert!(
        err.downcast_ref::<BodyError>()
            .is_some_and(BodyError::is_too_large),
        "{err}"
    );
    assert_eq!(server.seen().len(), 1);
}

mod switch;

/// The scripted [`Server`] with state of its own, copied by `Clone` as a derived `Clone` copies
/// it (not shared between clones, unlike the script): a success's body (what `get_mut` changes),
/// and a reservation taken in `poll_ready` and used up by `call`, as a concurrency limit's permit
/// is; `checks` counts the reservations taken.
#[derive(Clone)]
struct Instance {
    server: Server,
    answer: &'static str,
    reserved: bool,
    checks: Arc<std::sync::atomic::AtomicUsize>,
}

impl Instance {
    fn new(server: Server, answer: &'static str) -> Self {
        Instance {
            server,
            answer,
            reserved: false,
            checks: Arc::default(),
        }
    }
}

impl Service<Request<Body>> for Instance {
    type Response = Response<String>;
    type Error = BoxError;
    type Future = <Server as Service<Request<Body>>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        if !self.reserved {
            self.checks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.reserved = true;
        }
        self.server.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        assert!(self.reserved, "called without a reservation");
        self.reserved = false;
        let (answer, response) = (self.answer, self.server.call(req));
        Box::pin(async move {
            let mut response = response.await?;
            if response.status().is_success() {
                *response.body_mut() = answer.to_owned();
            }
            Ok(response)
        })
    }
}

#[tokio::test(start_paused = true)]
async fn a_first_try_answer_carries_no_retry_info_and_reads_as_one_attempt() {
    let mut svc = RetryLayer::new(exact().build()).layer(Instance::new(Server::always(200), "ok"));
    let res = svc.ready().await.unwrap().call(get()).await.unwrap();
    assert!(res.extensions().get::<RetryInfo>().is_none());
    assert_eq!(info(&res), (1, Duration::ZERO));
}

#[tokio::test(start_paused = true)]
async fn retries_go_to_the_inner_service_as_changed_through_get_mut() {
    let server = Server::new([status(503), status(200), status(503)]);
    let mut svc = RetryLayer::new(exact().build()).layer(Instance::new(server.clone(), "before"));
    svc.get_mut().answer = "after";
    // The first attempt fails: the retry is sent on a clone of the inner service, which must be
    // the service as it is now, not as it was when the layer wrapped it.
    let res = svc.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(info(&res).0, 2);
    assert_eq!(res.into_body(), "after");
    // Clones share the change.
    let mut clone = svc.clone();
    let res = clone.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(res.into_body(), "after");
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_get_mut_waits_for_readiness_of_its_own() {
    let inner = Instance::new(Server::new([status(503), status(200)]), "ok");
    let checks = inner.checks.clone();
    let mut svc = RetryLayer::new(exact().build()).layer(inner);
    // After `get_mut` the spare is made again from the inner service, at the next call: from
    // the service as that call left it (reservation used), not as `poll_ready` left it.
    let _ = svc.get_mut();
    let res = svc.ready().await.unwrap().call(get()).await.unwrap();
    assert_eq!(info(&res).0, 2);
    let checks = checks.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(checks, 2, "each attempt took a reservation of its own");
}
