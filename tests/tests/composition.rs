//! The four layers dropped into an existing service, through genesys-tower's public API only:
//! over a hyper-util client built for `Full<Bytes>`, a `service_fn` taking `Request<String>` and
//! an axum `Router`; among tower-http's timeout and trace layers, `tower::buffer`, and boxed as a
//! `BoxCloneSyncService` shared by 100 tasks. The response types are written out: each layer
//! hands back the body type of the service below it.

use std::convert::Infallible;
use std::future::pending;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use bytes::Bytes;
use genesys_tower::auth::{AuthLayer, Token, TokenSource, token_source_fn};
use genesys_tower::concurrency::ConcurrencyLayer;
use genesys_tower::idempotency::{IdempotencyKey, IdempotencyLayer};
use genesys_tower::retry::{RetryInfo, RetryLayer, RetryPolicy};
use genesys_tower::{Body, BoxError};
use http::header::AUTHORIZATION;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower::util::BoxCloneSyncService;
use tower::{ServiceBuilder, ServiceExt, service_fn};

fn tokens() -> impl TokenSource {
    token_source_fn(|| async { Ok(Token::new("t0k3n", Some(Duration::from_secs(3600)))) })
}

/// A policy that retries fast, so that tests on a real socket do not wait.
fn quick() -> RetryPolicy {
    RetryPolicy::builder()
        .base_delay(Duration::from_millis(1))
        .max_attempts(3)
        .build()
}

/// A handler of a local API: counts the POSTs it gets, answers 503 to the first one, then 201
/// with the idempotency key it saw; 401 without the bearer token.
#[derive(Clone, Default)]
struct Api {
    posts: Arc<AtomicUsize>,
}

impl Api {
    fn router(&self) -> Router {
        let api = self.clone();
        Router::new().route(
            "/things",
            post(move |headers: HeaderMap, body: Bytes| {
                let api = api.clone();
                async move { api.answer(&headers, &body) }
            }),
        )
    }

    fn answer(&self, headers: &HeaderMap, body: &[u8]) -> (StatusCode, String) {
        if headers
            .get(AUTHORIZATION)
            .is_none_or(|v| v != "Bearer t0k3n")
        {
            return (StatusCode::UNAUTHORIZED, String::new());
        }
        let n = self.posts.fetch_add(1, Ordering::SeqCst);
        if n == 0 {
            return (StatusCode::SERVICE_UNAVAILABLE, String::new());
        }
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let body = String::from_utf8_lossy(body);
        (StatusCode::CREATED, format!("{key} {body}"))
    }

    fn posts(&self) -> usize {
        self.posts.load(Ordering::SeqCst)
    }
}

/// Serves `router` on 127.0.0.1:0 and returns its base URL.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{addr}")
}

#[tokio::test]
async fn the_four_layers_over_an_existing_hyper_util_client_for_full_bytes() {
    let api = Api::default();
    let base = serve(api.router()).await;
    // The client as an application already has it: built for `Full<Bytes>` request bodies.
    let hyper: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();

    // Retry, auth and concurrency keep hyper's own response type.
    let three = ServiceBuilder::new()
        .layer(RetryLayer::new(quick()))
        .layer(AuthLayer::new(tokens()))
        .layer(ConcurrencyLayer::new(8))
        .service(hyper.clone());
    let request = Request::post(format!("{base}/things"))
        .header("idempotency-key", "k-1")
        .extension(genesys_tower::retry::RetrySafety::KeyHonoured)
        .body(Full::new(Bytes::from_static(b"one")))
        .unwrap();
    let response: Response<hyper::body::Incoming> = three.oneshot(request).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "the 503 was retried"
    );
    assert_eq!(RetryInfo::of(response.extensions()).attempts, 2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "k-1 one");

    // With the idempotency layer on top: it rebuilds stored responses from bytes, so hyper's
    // `Incoming` is turned into a `Body` under it, in one line.
    let four = ServiceBuilder::new()
        .layer(IdempotencyLayer::new())
        .map_response(|r: Response<hyper::body::Incoming>| r.map(Body::new))
        .layer(RetryLayer::new(quick()))
        .layer(AuthLayer::new(tokens()))
        .layer(ConcurrencyLayer::new(8))
        .service(hyper);
    let request = || {
        Request::post(format!("{base}/things"))
            .extension(IdempotencyKey::new("k-2"))
            .body(Full::new(Bytes::from_static(b"two")))
            .unwrap()
    };
    let first: Response<Body> = four.clone().oneshot(request()).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(first.into_body().collect_bytes().await.unwrap(), "k-2 two");
    let again: Response<Body> = four.oneshot(request()).await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(api.posts(), 3, "the repeat was answered from the store");
}

/// The same API as a `service_fn` taking and answering `String`s.
fn string_service(
    api: Api,
) -> impl tower::Service<
    Request<String>,
    Response = Response<String>,
    Error = Infallible,
    Future: Send + 'static,
> + Clone
+ Send
+ Sync
+ 'static {
    service_fn(move |req: Request<String>| {
        let api = api.clone();
        async move {
            let (status, body) = api.answer(req.headers(), req.body().as_bytes());
            let mut response = Response::new(body);
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn the_four_layers_over_a_service_fn_taking_strings() {
    let api = Api::default();
    let stack = ServiceBuilder::new()
        .layer(IdempotencyLayer::new())
        .layer(RetryLayer::new(RetryPolicy::default()))
        .layer(AuthLayer::new(tokens()))
        .layer(ConcurrencyLayer::new(8))
        .service(string_service(api.clone()));
    // The request type is inferred from the leaf: no turbofish for `ready`.
    let mut stack = stack;
    stack.ready().await.unwrap();
    let request = || {
        Request::post("http://api.test/things")
            .extension(IdempotencyKey::new("k-3"))
            .extension(genesys_tower::retry::RetrySafety::KeyHonoured)
            .body(String::from("three"))
            .unwrap()
    };
    let response: Response<String> = stack.clone().oneshot(request()).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.into_body(), "k-3 three");
    assert_eq!(api.posts(), 2);
    // A repeat is answered from the store, rebuilt as the leaf's own `String`.
    let again: Response<String> = stack.oneshot(request()).await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.into_body(), "k-3 three");
    assert_eq!(api.posts(), 2);
}

#[tokio::test(start_paused = true)]
async fn the_four_layers_over_an_axum_router() {
    let api = Api::default();
    let stack = ServiceBuilder::new()
        .layer(IdempotencyLayer::new())
        .layer(RetryLayer::new(RetryPolicy::default()))
        .layer(AuthLayer::new(tokens()))
        .layer(ConcurrencyLayer::new(8))
        .service(api.router());
    let request = Request::post("/things")
        .extension(IdempotencyKey::new("k-4"))
        .extension(genesys_tower::retry::RetrySafety::KeyHonoured)
        .body(axum::body::Body::from("four"))
        .unwrap();
    let response: Response<axum::body::Body> = stack.oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "k-4 four");
    assert_eq!(api.posts(), 2);
}

/// A server that counts every request, then never answers.
fn hanging_router(hits: Arc<AtomicUsize>) -> Router {
    let handler = move || {
        hits.fetch_add(1, Ordering::SeqCst);
        pending::<StatusCode>()
    };
    Router::new().route("/things", post(handler.clone()).get(handler))
}

#[tokio::test(start_paused = true)]
async fn a_post_under_tower_http_timeout_is_sent_once() {
    use tower_http::timeout::TimeoutLayer;

    let hits = Arc::new(AtomicUsize::new(0));
    let stack = ServiceBuilder::new()
        .layer(RetryLayer::new(RetryPolicy::default()))
        .layer(AuthLayer::new(tokens()))
        // A per-attempt timeout that answers with a 408 of its own making.
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(10),
        ))
        .layer(ConcurrencyLayer::new(8))
        .service(hanging_router(hits.clone()));

    let post = Request::post("/things")
        .body(axum::body::Body::from("{}"))
        .unwrap();
    let response = stack.clone().oneshot(post).await.unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    assert_eq!(RetryInfo::of(response.extensions()).attempts, 1);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the POST reached the server once"
    );

    // A GET may be sent again: it is idempotent.
    let get = Request::get("/things")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = stack.oneshot(get).await.unwrap();
    assert_eq!(response.status(), StatusCode::REQUEST_TIMEOUT);
    let attempts = RetryInfo::of(response.extensions()).attempts;
    assert!(attempts > 1);
    assert_eq!(hits.load(Ordering::SeqCst), 1 + attempts as usize);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boxed_as_box_clone_sync_service_and_shared_by_100_tasks() {
    let api = Api::default();
    // The first POST gets the 503 (retried); the other 99 go through.
    let stack: BoxCloneSyncService<Request<String>, Response<String>, BoxError> =
        BoxCloneSyncService::new(
            ServiceBuilder::new()
                .layer(IdempotencyLayer::new())
                .layer(RetryLayer::new(quick()))
                .layer(AuthLayer::new(tokens()))
                .layer(ConcurrencyLayer::new(16))
                .service(string_service(api.clone())),
        );
    let shared = Arc::new(stack.clone());
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let stack = if i % 2 == 0 {
                stack.clone()
            } else {
                (*shared).clone()
            };
            tokio::spawn(async move {
                let request = Request::post("http://api.test/things")
                    .extension(genesys_tower::retry::RetrySafety::KeyHonoured)
                    .body(format!("n{i}"))
                    .unwrap();
                stack.oneshot(request).await
            })
        })
        .collect();
    for task in tasks {
        let response = task.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    assert_eq!(api.posts(), 101);
}

#[tokio::test(start_paused = true)]
async fn with_tower_buffer_and_tower_http_trace() {
    use tower::buffer::BufferLayer;
    use tower_http::trace::TraceLayer;

    let api = Api::default();
    let stack = ServiceBuilder::new()
        .layer(TraceLayer::new_for_http())
        .layer(BufferLayer::<Request<axum::body::Body>>::new(64))
        .layer(IdempotencyLayer::new())
        .layer(RetryLayer::new(RetryPolicy::default()))
        .layer(AuthLayer::new(tokens()))
        .layer(ConcurrencyLayer::new(8))
        .service(api.router());
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let request = Request::post("/things")
                .extension(genesys_tower::retry::RetrySafety::KeyHonoured)
                .body(axum::body::Body::from(format!("n{i}")))
                .unwrap();
            stack.clone().oneshot(request)
        })
        .collect();
    for response in futures_util::future::join_all(calls).await {
        let response = response.unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    assert_eq!(api.posts(), 11);
}

#[test]
fn a_leaf_whose_body_cannot_be_replayed_is_refused_with_a_message_that_says_why() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/*.rs");
}
