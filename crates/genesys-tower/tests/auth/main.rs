//! Tests of the auth layer: single-flight refresh, 401 handling, failing sources, the margin
//! rule, secrets and scope, all on a paused tokio clock.

use std::convert::Infallible;
use std::error::Error as _;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use genesys_tower::auth::{self, AuthLayer, Token, TokenSource};
use genesys_tower::concurrency::ConcurrencyLayer;
use genesys_tower::error::find;
use genesys_tower::{Body, BoxError, Metrics, NotSent};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(86_400);

/// A token source that counts its fetches and hands out `token-1`, `token-2`, ...
struct Source {
    fetches: AtomicUsize,
    lifetime: Duration,
    latency: Duration,
    fail: AtomicBool,
}

#[derive(Debug)]
struct CredentialsRejected;

impl fmt::Display for CredentialsRejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid_client: the client id or secret is wrong")
    }
}

impl std::error::Error for CredentialsRejected {}

impl Source {
    fn new(lifetime: Duration, latency: Duration) -> Arc<Self> {
        Arc::new(Source {
            fetches: AtomicUsize::new(0),
            lifetime,
            latency,
            fail: AtomicBool::new(false),
        })
    }

    fn fetches(&self) -> usize {
        self.fetches.load(SeqCst)
    }
}

impl TokenSource for Source {
    async fn fetch(&self) -> Result<Token, BoxError> {
        let n = self.fetches.fetch_add(1, SeqCst) + 1;
        tokio::time::sleep(self.latency).await;
        if self.fail.load(SeqCst) {
            return Err(CredentialsRejected.into());
        }
        Ok(Token::new(format!("token-{n}"), Some(self.lifetime)))
    }
}

/// One request as the API saw it.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    authorization: Option<HeaderValue>,
    body: Bytes,
}

impl Seen {
    fn token(&self) -> Option<&str> {
        self.authorization
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
    }
}

/// A fake API that accepts one token value (`"*"`: any; `None`: none) and records every request.
#[derive(Clone, Default)]
struct Api {
    accepted: Arc<Mutex<Option<String>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Api {
    fn accepting(token: &str) -> Self {
        let api = Api::default();
        api.accept(Some(token));
        api
    }

    fn accept(&self, token: Option<&str>) {
        *self.accepted.lock().unwrap() = token.map(str::to_owned);
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn service(
        &self,
        latency: Duration,
    ) -> impl Service<
        Request<Body>,
        Response = Response<Body>,
        Error = Infallible,
        Future = impl Send + 'static,
    > + Clone
    + Send
    + 'static {
        let api = self.clone();
        service_fn(move |req: Request<Body>| {
            let api = api.clone();
            async move {
                let at = Instant::now();
                let authorization = req.headers().get(AUTHORIZATION).cloned();
                let body = req.into_body().collect_bytes().await.unwrap();
                let seen = Seen {
                    at,
                    authorization,
                    body,
                };
                let ok = match (seen.token(), api.accepted.lock().unwrap().as_deref()) {
                    (Some(_), Some("*")) => true,
                    (Some(got), Some(want)) => got == want,
                    _ => false,
                };
                api.seen.lock().unwrap().push(seen);
                tokio::time::sleep(latency).await;
                let status = if ok {
                    StatusCode::OK
                } else {
                    StatusCode::UNAUTHORIZED
                };
                let mut response = Response::new(Body::empty());
                *response.status_mut() = status;
                Ok::<_, Infallible>(response)
            }
        })
    }
}

fn get(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_hundred_requests_at_expiry_fetch_one_token() {
    let source = Source::new(HOUR, Duration::from_millis(200));
    let api = Api::accepting("token-1");
    let metrics = Metrics::new();
    let svc = AuthLayer::new(source.clone())
        .metrics(metrics.clone())
        .layer(api.service(Duration::from_millis(10)));

    let first = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(source.fetches(), 1);

    tokio::time::sleep(HOUR).await;
    api.accept(Some("token-2"));
    let tasks: Vec<_> = (0..100)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/"))))
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(source.fetches(), 2, "one fetch for the hundred");
    assert_eq!(metrics.snapshot().token_fetches, 2);
    let seen = api.seen();
    assert_eq!(seen.len(), 101, "nobody was sent with the expired token");
    assert!(seen[1..].iter().all(|s| s.token() == Some("token-2")));
}

#[tokio::test(start_paused = true)]
async fn a_401_storm_makes_one_refresh_and_every_request_succeeds() {
    let source = Source::new(DAY, Duration::from_millis(200));
    let api = Api::accepting("token-1");
    let metrics = Metrics::new();
    let svc = AuthLayer::new(source.clone())
        .metrics(metrics.clone())
        .layer(api.service(Duration::from_millis(50)));
    svc.clone().oneshot(get("/")).await.unwrap();

    // The server revokes token-1 behind the client's back.
    api.accept(Some("token-2"));
    let tasks: Vec<_> = (0..50)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/"))))
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().status(), StatusCode::OK);
    }

    assert_eq!(source.fetches(), 2, "one refresh for fifty 401s");
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.token_fetches, 2);
    assert_eq!(
        snapshot.unauthorized_refreshes, 50,
        "each request re-sent once"
    );
    let seen = api.seen();
    assert_eq!(seen.len(), 1 + 50 + 50);
    let refused = seen.iter().filter(|s| s.token() == Some("token-1")).count();
    assert_eq!(refused, 1 + 50);
}

#[tokio::test(start_paused = true)]
async fn a_second_401_is_returned_as_it_is() {
    let source = Source::new(DAY, Duration::ZERO);
    let api = Api::default(); // refuses every token
    let metrics = Metrics::new();
    let svc = AuthLayer::new(source.clone())
        .metrics(metrics.clone())
        .layer(api.service(Duration::ZERO));

    let response = svc.oneshot(get("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let tokens: Vec<_> = api
        .seen()
        .iter()
        .map(|s| s.token().unwrap().to_owned())
        .collect();
    assert_eq!(tokens, ["token-1", "token-2"], "sent once, re-sent once");
    assert_eq!(source.fetches(), 2);
    assert_eq!(metrics.snapshot().unauthorized_refreshes, 1);
}

#[tokio::test(start_paused = true)]
async fn a_late_401_for_an_old_token_uses_the_newer_one_without_fetching() {
    let source = Source::new(DAY, Duration::ZERO);
    let api = Api::accepting("token-1");
    let slow = api.service(Duration::from_secs(5));
    let svc = AuthLayer::new(source.clone()).layer(slow);
    svc.clone().oneshot(get("/")).await.unwrap();

    // A slow request leaves with token-1; meanwhile the server moves to token-2 and a fast
    // request gets it.
    let slow_call = tokio::spawn(svc.clone().oneshot(get("/slow")));
    tokio::time::sleep(Duration::from_secs(1)).await;
    api.accept(Some("token-2"));
    svc.clone().oneshot(get("/fast")).await.unwrap();
    assert_eq!(source.fetches(), 2);

    // The slow one's 401 (for token-1) must not throw token-2 away.
    let response = slow_call.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        source.fetches(),
        2,
        "no refresh: a newer token was there already"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_source_gives_one_error_naming_the_cause_to_every_waiter() {
    let source = Source::new(DAY, Duration::from_millis(300));
    source.fail.store(true, SeqCst);
    let api = Api::accepting("token-2");
    let svc = AuthLayer::new(source.clone()).layer(api.service(Duration::ZERO));

    let tasks: Vec<_> = (0..20)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/"))))
        .collect();
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        let auth_err = find::<auth::Error>(&*err).expect("an auth::Error");
        assert!(err.is::<NotSent>(), "marked as not sent: {err:?}");
        assert!(auth_err.is_token_source());
        assert!(err.to_string().contains("invalid_client"), "{err}");
        assert!(
            auth_err
                .source()
                .is_some_and(|cause| cause.is::<CredentialsRejected>())
        );
    }
    assert_eq!(source.fetches(), 1, "the waiters shared the one failure");
    assert!(api.seen().is_empty(), "nothing was sent without a token");

    // The first call after the pause tries again, and succeeds once the source does.
    source.fail.store(false, SeqCst);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let response = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(source.fetches(), 2);
}

/// A source that fails at once (a revoked secret) is not called by every request that comes:
/// after a failure, its error answers for a pause that doubles with each failure in a row.
#[tokio::test(start_paused = true)]
async fn after_a_failed_fetch_the_source_rests_for_a_pause_that_doubles() {
    let source = Source::new(DAY, Duration::ZERO);
    source.fail.store(true, SeqCst);
    let api = Api::accepting("*");
    let svc = AuthLayer::new(source.clone()).layer(api.service(Duration::ZERO));
    let start = Instant::now();
    // A request every 100 ms for 10 s: fetched at 0, 1, 3 and 7 s.
    while start.elapsed() < Duration::from_secs(10) {
        let err = svc.clone().oneshot(get("/")).await.unwrap_err();
        assert!(err.to_string().contains("invalid_client"), "{err}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(source.fetches(), 4, "the source was not left to rest");
    // Working again: the first request after the pause gets a token, and the pause is over.
    source.fail.store(false, SeqCst);
    tokio::time::sleep(Duration::from_secs(8)).await;
    let response = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(source.fetches(), 5);
    assert_eq!(api.seen().len(), 1, "nothing was sent without a token");
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_before_expiry_keeps_the_old_token_serving() {
    let source = Source::new(DAY, Duration::ZERO);
    let api = Api::accepting("token-1");
    let svc = AuthLayer::new(source.clone()).layer(api.service(Duration::ZERO));
    svc.clone().oneshot(get("/")).await.unwrap();

    tokio::time::sleep(DAY - Duration::from_secs(30)).await;
    source.fail.store(true, SeqCst);
    let response = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(source.fetches(), 2, "the refresh was tried");
}

#[tokio::test(start_paused = true)]
async fn a_short_token_is_not_refetched_on_every_request() {
    let source = Source::new(Duration::from_secs(5), Duration::ZERO);
    let api = Api::accepting("*");
    let svc = AuthLayer::new(source.clone()).layer(api.service(Duration::ZERO));

    // A fifth of 5 s is 1 s: token-1 serves for 4 s.
    for _ in 0..39 {
        svc.clone().oneshot(get("/")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(source.fetches(), 1);
    tokio::time::sleep(Duration::from_millis(200)).await; // 4.1 s
    svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(source.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_day_token_is_refreshed_sixty_seconds_before_expiry() {
    let source = Source::new(DAY, Duration::ZERO);
    let api = Api::accepting("*");
    let svc = AuthLayer::new(source.clone()).layer(api.service(Duration::ZERO));
    svc.clone().oneshot(get("/")).await.unwrap();

    tokio::time::sleep(DAY - Duration::from_secs(61)).await;
    svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(source.fetches(), 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(source.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn others_keep_the_valid_token_while_one_refreshes_it() {
    let source = Source::new(DAY, Duration::from_secs(1));
    let api = Api::accepting("token-1");
    let svc = AuthLayer::new(source.clone()).layer(api.service(Duration::ZERO));
    svc.clone().oneshot(get("/")).await.unwrap();
    api.accept(Some("*"));

    tokio::time::sleep(DAY - Duration::from_secs(30)).await;
    let start = Instant::now();
    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/"))))
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let seen = api.seen();
    let waited: Vec<_> = seen[1..].iter().filter(|s| s.at > start).collect();
    assert_eq!(waited.len(), 1, "only the request that fetched waited");
    assert_eq!(waited[0].token(), Some("token-2"));
    assert_eq!(source.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_header_is_sensitive_and_debug_never_shows_the_token() {
    let source = Source::new(DAY, Duration::ZERO);
    let api = Api::accepting("token-1");
    let layer = AuthLayer::new(source.clone());
    let svc = layer.layer(api.service(Duration::ZERO));
    svc.clone().oneshot(get("/")).await.unwrap();

    let header = api.seen()[0].authorization.clone().unwrap();
    assert_eq!(header, "Bearer token-1");
    assert!(header.is_sensitive());
    let request = Request::get("/")
        .header(AUTHORIZATION, header)
        .body(())
        .unwrap();

    let printed = [
        format!("{layer:?}"),
        format!("{:?}", Token::new("token-1", Some(DAY))),
        format!("{request:?}"),
    ];
    for text in printed {
        assert!(!text.contains("token-1"), "{text}");
    }
    assert!(format!("{layer:?}").contains("[redacted]"));
}

#[tokio::test(start_paused = true)]
async fn auth_debug_is_redacted() {
    #[derive(Debug, Clone)]
    struct Leaf;
    impl Service<Request<Body>> for Leaf {
        type Response = Response<Body>;
        type Error = Infallible;
        type Future = std::future::Ready<Result<Response<Body>, Infallible>>;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Infallible>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<Body>) -> Self::Future {
            std::future::ready(Ok(Response::new(Body::empty())))
        }
    }
    let source = Source::new(DAY, Duration::ZERO);
    let svc = AuthLayer::new(source).layer(Leaf);
    svc.clone().oneshot(get("/")).await.unwrap();
    let text = format!("{svc:?}");
    assert!(
        text.contains("[redacted]") && !text.contains("token-1"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_token_is_not_sent_to_another_host() {
    let source = Source::new(DAY, Duration::ZERO);
    let api = Api::accepting("token-1");
    let svc = AuthLayer::new(source.clone())
        .only_to("https://api.example.com/api".parse().unwrap())
        .layer(api.service(Duration::ZERO));

    for uri in [
        "https://uploads.example.net/api/v2/x",
        "http://api.example.com/api/v2/x",
        "https://api.example.com:8443/api/v2/x",
        "https://api.example.com/apiv2",
        "https://api.example.com.evil.test/api/v2/x",
    ] {
        let response = svc.clone().oneshot(get(uri)).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{uri}");
    }
    assert_eq!(source.fetches(), 0, "no token needed, none fetched");
    assert!(api.seen().iter().all(|s| s.authorization.is_none()));
    assert_eq!(api.seen().len(), 5, "a 401 from elsewhere is not re-sent");

    for uri in [
        "https://API.example.com/api/v2/x",
        "https://api.example.com:443/api",
    ] {
        let response = svc.clone().oneshot(get(uri)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{uri}");
    }
    let relative = Request::get("/api/v2/users")
        .header("host", "api.example.com")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        svc.clone().oneshot(relative).await.unwrap().status(),
        StatusCode::OK
    );
    let elsewhere = Request::get("/api/v2/users")
        .header("host", "other.example.com")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        svc.clone().oneshot(elsewhere).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
}

fn streaming(chunks: &'static [&'static str]) -> Body {
    let frames = chunks
        .iter()
        .map(|c| Ok::<_, BoxError>(http_body::Frame::data(Bytes::from_static(c.as_bytes()))));
    Body::new(StreamBody::new(futures_util::stream::iter(frames)))
}

#[tokio::test(start_paused = true)]
async fn a_streaming_body_within_the_limit_is_re_sent_whole() {
    let source = Source::new(DAY, Duration::ZERO);
    let api = Api::accepting("token-1");
    let svc = AuthLayer::new(source.clone()).layer(api.service(Duration::ZERO));
    svc.clone().oneshot(get("/")).await.unwrap();
    api.accept(Some("token-2"));

    let request = Request::post("/").body(streaming(&["ab", "cd"])).unwrap();
    let response = svc.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let bodies: Vec<_> = api.seen()[1..].iter().map(|s| s.body.clone()).collect();
    assert_eq!(bodies, ["abcd", "abcd"]);
}

#[tokio::test(start_paused = true)]
async fn a_body_past_the_limit_is_sent_once_and_its_401_returned() {
    let source = Source::new(DAY, Duration::ZERO);
    let api = Api::accepting("token-1");
    let svc = AuthLayer::new(source.clone())
        .replay_limit(3)
        .layer(api.service(Duration::ZERO));
    svc.clone().oneshot(get("/")).await.unwrap();
    api.accept(Some("token-2"));

    let request = Request::post("/")
        .body(streaming(&["ab", "cd", "ef"]))
        .unwrap();
    let response = svc.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let seen = api.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body, "abcdef", "sent whole, once");
}

#[tokio::test(start_paused = true)]
async fn the_re_send_after_a_401_gives_the_service_its_own_body_type() {
    use std::sync::Mutex;

    // A leaf taking `String`s, that refuses `token-1`.
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let leaf = {
        let bodies = bodies.clone();
        tower::service_fn(move |req: Request<String>| {
            let token = req.headers()[http::header::AUTHORIZATION]
                .to_str()
                .unwrap_or_default()
                .to_owned();
            bodies.lock().unwrap().push(req.into_body());
            let status = if token == "Bearer token-1" { 401 } else { 200 };
            async move { Ok::<_, BoxError>(Response::builder().status(status).body(String::new())?) }
        })
    };
    let svc = AuthLayer::new(Source::new(DAY, Duration::ZERO)).layer(leaf);
    let request = Request::post("/").body(String::from("{\"a\":1}")).unwrap();
    let response: Response<String> = svc.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(*bodies.lock().unwrap(), ["{\"a\":1}", "{\"a\":1}"]);
}

#[tokio::test(start_paused = true)]
async fn composes_with_the_concurrency_layer() {
    let source = Source::new(DAY, Duration::ZERO);
    let api = Api::accepting("token-1");
    let svc = ServiceBuilder::new()
        .layer(AuthLayer::new(source))
        .layer(ConcurrencyLayer::new(2))
        .service(api.service(Duration::ZERO));
    let request = Request::post("/")
        .body(Body::new(http_body_util::Full::new(Bytes::from_static(
            b"{}",
        ))))
        .unwrap();
    let response = svc.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let _ = response.into_body().collect().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn under_the_retry_layer_the_re_send_is_not_a_retry() {
    use genesys_tower::retry::{RetryInfo, RetryLayer, RetryPolicy};

    let source = Source::new(DAY, Duration::ZERO);
    let api = Api::accepting("token-1");
    let metrics = Metrics::new();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryPolicy::default()).metrics(metrics.clone()))
        .layer(AuthLayer::new(source.clone()).metrics(metrics.clone()))
        .service(api.service(Duration::ZERO));
    svc.clone().oneshot(get("/")).await.unwrap();
    api.accept(Some("token-2"));

    let begin = Instant::now();
    let response = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        begin.elapsed(),
        Duration::ZERO,
        "re-sent at once, no backoff"
    );
    assert_eq!(RetryInfo::of(response.extensions()).attempts, 1);
    let snapshot = metrics.snapshot();
    assert_eq!(snapshot.retries.total(), 0);
    assert_eq!(snapshot.unauthorized_refreshes, 1);
    assert_eq!(snapshot.token_fetches, 2);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_fetch_leaves_the_next_waiter_to_fetch() {
    let source = Source::new(DAY, Duration::from_secs(1));
    let api = Api::accepting("*");
    let svc = AuthLayer::new(source.clone()).layer(api.service(Duration::ZERO));

    let first = tokio::spawn(svc.clone().oneshot(get("/")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = tokio::spawn(svc.clone().oneshot(get("/")));
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.abort(); // drops the request that was fetching

    let response = second.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        source.fetches(),
        2,
        "the waiter fetched after the fetcher went away"
    );
}

/// Never answers its first call; answers the next ones at once.
#[derive(Default)]
struct HangsOnce(AtomicUsize);

impl TokenSource for HangsOnce {
    async fn fetch(&self) -> Result<Token, BoxError> {
        if self.0.fetch_add(1, SeqCst) == 0 {
            std::future::pending::<()>().await;
        }
        Ok(Token::new("token-2", Some(DAY)))
    }
}

#[tokio::test(start_paused = true)]
async fn a_source_that_never_answers_fails_its_waiters_at_the_fetch_timeout() {
    let source = Arc::new(HangsOnce::default());
    let api = Api::accepting("token-2");
    let svc = AuthLayer::new(source.clone())
        .fetch_timeout(Duration::from_secs(5))
        .layer(api.service(Duration::ZERO));
    let started = Instant::now();
    let tasks: Vec<_> = (0..10)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/"))))
        .collect();
    for task in tasks {
        let err = task.await.unwrap().unwrap_err();
        assert!(err.is::<NotSent>(), "marked as not sent: {err:?}");
        assert!(find::<auth::Error>(&*err).is_some_and(auth::Error::is_token_source));
        assert!(err.to_string().contains("no token within 5s"), "{err}");
    }
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(source.0.load(SeqCst), 1, "the waiters shared the one fetch");
    assert!(api.seen().is_empty(), "nothing was sent without a token");
    // The first request after the pause calls the source again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let response = svc.clone().oneshot(get("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(source.0.load(SeqCst), 2);

    // The default is a minute; without a limit, the request waits for as long as its caller.
    let hangs = Arc::new(HangsOnce::default());
    let by_default = AuthLayer::new(hangs.clone()).layer(api.service(Duration::ZERO));
    let started = Instant::now();
    assert!(by_default.oneshot(get("/")).await.is_err());
    assert_eq!(
        started.elapsed(),
        AuthLayer::<HangsOnce>::DEFAULT_FETCH_TIMEOUT
    );
    let unbounded = AuthLayer::new(Arc::new(HangsOnce::default()))
        .no_fetch_timeout()
        .layer(api.service(Duration::ZERO));
    let waited = tokio::time::timeout(HOUR, unbounded.oneshot(get("/"))).await;
    assert!(waited.is_err(), "still waiting after an hour");
}

#[tokio::test(start_paused = true)]
async fn a_token_that_cannot_be_a_header_is_an_error() {
    let source = auth::token_source_fn(|| async { Ok(Token::new("bad\ntoken", Some(DAY))) });
    let api = Api::accepting("*");
    let svc = AuthLayer::new(source).layer(api.service(Duration::ZERO));
    let err = svc.oneshot(get("/")).await.unwrap_err();
    let err = find::<auth::Error>(&*err).unwrap();
    assert!(err.is_invalid_token());
    assert!(!err.to_string().contains("bad"), "{err}");
    assert!(api.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight_holds_across_threads() {
    let source = Source::new(DAY, Duration::from_millis(20));
    let api = Api::accepting("token-1");
    let svc = AuthLayer::new(source.clone()).layer(api.service(Duration::ZERO));
    let tasks: Vec<_> = (0..200)
        .map(|_| tokio::spawn(svc.clone().oneshot(get("/"))))
        .collect();
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    assert_eq!(source.fetches(), 1);
}

/// Each request reads the token from its thread's own copy: a token replaced on one thread
/// is the one another thread, which still holds a copy of the old one, sends from then on.
#[test]
fn a_token_replaced_on_one_thread_is_sent_from_every_other_thread_after() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let source = Source::new(DAY, Duration::ZERO);
    let api = Api::accepting("token-1");
    let svc = AuthLayer::new(source.clone()).layer(api.service(Duration::ZERO));
    // A second thread that lives through the test, sending a request for each path it is given.
    let (paths, requests) = std::sync::mpsc::channel::<&'static str>();
    let (answers, statuses) = std::sync::mpsc::channel();
    let worker = std::thread::spawn({
        let svc = svc.clone();
        move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            for path in requests {
                let status = rt
                    .block_on(svc.clone().oneshot(get(path)))
                    .unwrap()
                    .status();
                answers.send(status).unwrap();
            }
        }
    });
    let on_worker = |path| {
        paths.send(path).unwrap();
        statuses.recv().unwrap()
    };
    let here = |path| {
        rt.block_on(svc.clone().oneshot(get(path)))
            .unwrap()
            .status()
    };

    // Both threads send token-1, and keep a copy of it.
    assert_eq!(here("/a"), StatusCode::OK);
    assert_eq!(on_worker("/w1"), StatusCode::OK);
    // The server moves to token-2: the 401 on this thread replaces the token.
    api.accept(Some("token-2"));
    assert_eq!(here("/b"), StatusCode::OK);
    // The worker's copy is of token-1: its next request must go out with token-2 at once.
    assert_eq!(on_worker("/w2"), StatusCode::OK);
    drop(paths);
    worker.join().unwrap();

    let tokens: Vec<_> = api
        .seen()
        .iter()
        .map(|s| s.token().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        tokens,
        ["token-1", "token-1", "token-1", "token-2", "token-2"],
        "after the 401 on /b and its re-send, no request went out with the replaced token"
    );
    assert_eq!(source.fetches(), 2, "one refresh, for the 401");
}

/// Seven layers, each with its own source and token, called in turn on one thread (which keeps
/// a copy of each one's token): each sends its own token, every time.
#[tokio::test(start_paused = true)]
async fn many_layers_on_one_thread_each_send_their_own_token() {
    struct Named(String);
    impl TokenSource for Named {
        async fn fetch(&self) -> Result<Token, BoxError> {
            Ok(Token::new(self.0.clone(), Some(DAY)))
        }
    }
    let api = Api::accepting("*");
    let mut services: Vec<_> = (0..7)
        .map(|i| AuthLayer::new(Named(format!("layer-{i}"))).layer(api.service(Duration::ZERO)))
        .collect();
    for round in 0..3 {
        for (i, svc) in services.iter_mut().enumerate() {
            let response = svc.ready().await.unwrap().call(get("/")).await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::OK,
                "round {round}, layer {i}"
            );
        }
    }
    let tokens: Vec<_> = api
        .seen()
        .iter()
        .map(|s| s.token().unwrap_or_default().to_owned())
        .collect();
    let expected: Vec<_> = (0..3)
        .flat_map(|_| (0..7).map(|i| format!("layer-{i}")))
        .collect();
    assert_eq!(tokens, expected);
}

#[test]
fn the_layer_and_service_can_cross_threads() {
    fn send_sync<T: Send + Sync>(_: &T) {}
    let layer = AuthLayer::new(Source::new(DAY, Duration::ZERO));
    send_sync(&layer);
    send_sync(&layer.layer(Api::default().service(Duration::ZERO)));
}

#[tokio::test(start_paused = true)]
async fn a_base_without_scheme_matches_the_host_on_default_ports() {
    let source = Source::new(DAY, Duration::ZERO);
    let api = Api::accepting("token-1");
    let svc = AuthLayer::new(source.clone())
        .only_to("api.example.com".parse().unwrap())
        .layer(api.service(Duration::ZERO));
    for (uri, status) in [
        ("https://api.example.com/x", StatusCode::OK),
        ("http://api.example.com/x", StatusCode::OK),
        ("https://api.example.com:8443/x", StatusCode::UNAUTHORIZED),
        ("https://login.example.com/x", StatusCode::UNAUTHORIZED),
    ] {
        let response = svc.clone().oneshot(get(uri)).await.unwrap();
        assert_eq!(response.status(), status, "{uri}");
    }
}
