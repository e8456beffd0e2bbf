//! `Stack` against the layers it stands for: every scenario runs through the layers composed
//! (idempotency, retry, auth, tower's timeout) and through a `Stack` made from the same layers,
//! each over its own copy of a scripted API, and what a caller and the API see must be the
//! same: the answer, the attempts, the tokens and keys each request carried, the token fetches.
//! All on a paused tokio clock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use genesys_tower::auth::{AuthLayer, Token, TokenSource};
use genesys_tower::concurrency::{Concurrency, ConcurrencyLayer};
use genesys_tower::idempotency::{IDEMPOTENCY_KEY, IdempotencyKey, IdempotencyLayer};
use genesys_tower::retry::{RetryInfo, RetryLayer, RetryPolicy};
use genesys_tower::stack::StackLayer;
use genesys_tower::{Body, BoxError};
use http::header::AUTHORIZATION;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};

const HOUR: Duration = Duration::from_secs(3600);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// Hands out `token-1`, `token-2`, ... and counts its fetches; or, `failing`, refuses.
#[derive(Default)]
struct Source {
    fetches: AtomicUsize,
    failing: bool,
}

impl TokenSource for Source {
    async fn fetch(&self) -> Result<Token, BoxError> {
        let n = self.fetches.fetch_add(1, SeqCst) + 1;
        if self.failing {
            return Err("invalid_client: the client id or secret is wrong".into());
        }
        Ok(Token::new(format!("token-{n}"), Some(HOUR)))
    }
}

/// How the auth layer of a scenario is set up.
#[derive(Clone, Copy, Default)]
struct Setup {
    /// The token source refuses every fetch.
    failing_source: bool,
    /// The token goes only to this base.
    only_to: Option<&'static str>,
}

impl Setup {
    fn auth(self, source: Arc<Source>) -> AuthLayer<Arc<Source>> {
        let layer = AuthLayer::new(source);
        match self.only_to {
            Some(base) => layer.only_to(base.parse().unwrap()),
            None => layer,
        }
    }
}

/// What the API does with its n-th request (from 1).
#[derive(Clone, Copy, Debug)]
enum Act {
    Answer(u16),
    /// Answers with this status after one pending poll (the attempt takes its timer).
    AnswerAfterAWait(u16),
    /// Answers 401 unless the request carries `token-N` with N at least this.
    RefuseTokensBefore(usize),
    /// Never answers: only the attempt's timeout ends it.
    Hang,
    /// Fails as a connection error would.
    Fail,
}

type Script = fn(usize) -> Act;

/// `at` for the `n`-th request when it is one of `ns`, `otherwise` for the others.
fn at_requests(n: usize, ns: &[usize], at: Act, otherwise: Act) -> Act {
    if ns.contains(&n) { at } else { otherwise }
}

/// One request as the API saw it.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    method: Method,
    token: Option<String>,
    key: Option<String>,
    body: Bytes,
}

/// A service of requests of a `Body`, boxed: the API, and the clients over it.
type Client = BoxCloneService<Request<Body>, Response<Body>, BoxError>;

/// A call's answer as a caller sees it: the status, the attempts and the number of the key the
/// response names; or the error's message.
type Answer = Result<(u16, u32, Option<usize>), String>;

fn api(script: Script) -> (Client, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let log = seen.clone();
    let service = service_fn(move |req: Request<Body>| {
        let log = log.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await?.to_bytes();
            let header = |name| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v: &http::HeaderValue| v.to_str().ok())
                    .map(str::to_owned)
            };
            let token = header(AUTHORIZATION).map(|t| t.trim_start_matches("Bearer ").to_owned());
            let n = {
                let mut log = log.lock().unwrap();
                log.push(Seen {
                    method: parts.method.clone(),
                    token: token.clone(),
                    key: header(IDEMPOTENCY_KEY),
                    body,
                });
                log.len()
            };
            let status = match script(n) {
                Act::Answer(status) => status,
                Act::AnswerAfterAWait(status) => {
                    tokio::task::yield_now().await;
                    status
                }
                Act::RefuseTokensBefore(min) => {
                    let number = token
                        .as_deref()
                        .and_then(|t| t.strip_prefix("token-"))
                        .and_then(|n| n.parse::<usize>().ok())
                        .unwrap_or(0);
                    if number >= min { 200 } else { 401 }
                }
                Act::Hang => {
                    std::future::pending::<()>().await;
                    unreachable!()
                }
                Act::Fail => return Err(BoxError::from("connection reset")),
            };
            let mut response = Response::new(Body::from(format!("answer {n}")));
            *response.status_mut() = StatusCode::from_u16(status)?;
            Ok::<_, BoxError>(response)
        }
    });
    (BoxCloneService::new(service), seen)
}

fn policy() -> RetryPolicy {
    RetryPolicy::builder().max_attempts(3).build()
}

/// The layers composed, over `C`.
fn layered<C>(inner: C, auth: AuthLayer<Arc<Source>>, idempotency: &IdempotencyLayer) -> Client
where
    C: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    C::Future: Send + 'static,
{
    BoxCloneService::new(
        ServiceBuilder::new()
            .layer(idempotency.clone())
            .layer(RetryLayer::new(policy()))
            .layer(auth)
            .layer(tower::timeout::TimeoutLayer::new(ATTEMPT_TIMEOUT))
            .service(inner),
    )
}

/// A `Stack` of the same layers, over `C`.
fn stacked<C>(inner: C, auth: AuthLayer<Arc<Source>>, idempotency: &IdempotencyLayer) -> Client
where
    C: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    C::Future: Send + 'static,
{
    BoxCloneService::new(
        StackLayer::new(RetryLayer::new(policy()), auth)
            .idempotency(idempotency.clone())
            .attempt_timeout(ATTEMPT_TIMEOUT)
            .layer(inner),
    )
}

/// What a caller and the API saw of a run of calls. Keys are numbered in the order they
/// first appear (their values are random).
#[derive(Debug, PartialEq)]
struct Observed {
    /// Per call: the status and attempts, or the error's message; and whether the response
    /// names the key its requests carried.
    answers: Vec<Answer>,
    requests: Vec<(Method, Option<String>, Option<usize>, Bytes)>,
    fetches: usize,
}

fn numbered(keys: &mut HashMap<String, usize>, key: &str) -> usize {
    let next = keys.len();
    *keys.entry(key.to_owned()).or_insert(next)
}

async fn observe(
    mut client: Client,
    calls: &[fn() -> Request<Body>],
    seen: &Mutex<Vec<Seen>>,
    source: &Source,
) -> Observed {
    let mut keys = HashMap::new();
    let mut answers = Vec::new();
    for call in calls {
        let answer = client.ready().await.unwrap().call(call()).await;
        answers.push(match answer {
            Ok(response) => {
                let key = response
                    .extensions()
                    .get::<IdempotencyKey>()
                    .map(|k| numbered(&mut keys, k.as_str()));
                Ok((
                    response.status().as_u16(),
                    RetryInfo::of(response.extensions()).attempts,
                    key,
                ))
            }
            Err(e) => Err(e.to_string()),
        });
    }
    let requests = seen
        .lock()
        .unwrap()
        .iter()
        .map(|s| {
            let key = s.key.as_deref().map(|k| numbered(&mut keys, k));
            (s.method.clone(), s.token.clone(), key, s.body.clone())
        })
        .collect();
    Observed {
        answers,
        requests,
        fetches: source.fetches.load(SeqCst),
    }
}

/// Runs `calls` through the layers and through a `Stack`, each over its own API following
/// `script`, and checks that both saw the same; returns what they saw.
async fn same_through_both(script: Script, calls: &[fn() -> Request<Body>]) -> Observed {
    same_through_both_with(Setup::default(), script, calls).await
}

/// [`same_through_both`] with the auth layer set up as `setup` says.
async fn same_through_both_with(
    setup: Setup,
    script: Script,
    calls: &[fn() -> Request<Body>],
) -> Observed {
    let run = |stack: bool| async move {
        let (api, seen) = api(script);
        let source = Arc::new(Source {
            failing: setup.failing_source,
            ..Source::default()
        });
        let idempotency = IdempotencyLayer::new();
        let auth = setup.auth(source.clone());
        let client = if stack {
            stacked(api, auth, &idempotency)
        } else {
            layered(api, auth, &idempotency)
        };
        observe(client, calls, &seen, &source).await
    };
    let through_layers = run(false).await;
    let through_stack = run(true).await;
    assert_eq!(
        through_stack, through_layers,
        "the stack and the layers differ"
    );
    through_layers
}

fn get() -> Request<Body> {
    Request::get("http://api.test/users/1")
        .body(Body::empty())
        .unwrap()
}

fn patch() -> Request<Body> {
    Request::patch("http://api.test/users/1")
        .body(Body::from(r#"{"name":"Ada"}"#))
        .unwrap()
}

fn patch_with_key() -> Request<Body> {
    Request::patch("http://api.test/users/1")
        .header(IDEMPOTENCY_KEY, "callers-key")
        .body(Body::from(r#"{"name":"Ada"}"#))
        .unwrap()
}

fn post_stream() -> Request<Body> {
    let chunks = futures_util::stream::iter(
        ["a", "b", "c"].map(|c| Ok::<_, BoxError>(http_body::Frame::data(Bytes::from(c)))),
    );
    Request::post("http://api.test/records")
        .body(Body::new(StreamBody::new(chunks)))
        .unwrap()
}

fn token(n: usize) -> Option<String> {
    Some(format!("token-{n}"))
}

#[tokio::test(start_paused = true)]
async fn gets_answered_at_once_carry_the_one_token_fetched() {
    let seen = same_through_both(|_| Act::Answer(200), &[get, get, get]).await;
    assert_eq!(seen.answers, vec![Ok((200, 1, None)); 3]);
    assert!(seen.requests.iter().all(|r| r.1 == token(1)));
    assert_eq!(seen.fetches, 1);
}

#[tokio::test(start_paused = true)]
async fn a_503_is_retried_with_the_same_head() {
    let seen =
        same_through_both(|n| Act::Answer(if n == 2 { 503 } else { 200 }), &[get, get]).await;
    assert_eq!(seen.answers, vec![Ok((200, 1, None)), Ok((200, 2, None))]);
    assert_eq!(seen.requests.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_401_is_sent_again_once_with_a_new_token_and_is_not_a_retry() {
    // The first call fetches token-1; the API refuses it from the second request on.
    let seen = same_through_both(
        |n| at_requests(n, &[1], Act::Answer(200), Act::RefuseTokensBefore(2)),
        &[get, get, get],
    )
    .await;
    assert_eq!(seen.answers, vec![Ok((200, 1, None)); 3]);
    let tokens: Vec<_> = seen.requests.iter().map(|r| r.1.clone()).collect();
    assert_eq!(tokens, vec![token(1), token(1), token(2), token(2)]);
    assert_eq!(seen.fetches, 2);
}

#[tokio::test(start_paused = true)]
async fn a_401_to_the_new_token_too_is_returned_as_is() {
    let seen = same_through_both(
        |n| at_requests(n, &[1], Act::Answer(200), Act::RefuseTokensBefore(100)),
        &[get, get],
    )
    .await;
    assert_eq!(seen.answers, vec![Ok((200, 1, None)), Ok((401, 1, None))]);
    assert_eq!(seen.requests.len(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_patch_keeps_its_key_across_attempts_and_the_response_names_it() {
    let seen = same_through_both(
        |n| Act::Answer(if n == 2 { 503 } else { 200 }),
        &[patch, patch],
    )
    .await;
    assert_eq!(
        seen.answers,
        vec![Ok((200, 1, Some(0))), Ok((200, 2, Some(1)))]
    );
    let keys: Vec<_> = seen.requests.iter().map(|r| r.2).collect();
    assert_eq!(keys, vec![Some(0), Some(1), Some(1)]);
}

#[tokio::test(start_paused = true)]
async fn a_401_on_a_retried_patch_keeps_the_key_and_the_body() {
    let seen = same_through_both(
        |n| match n {
            1 => Act::Answer(200),
            2 => Act::Answer(503),
            _ => Act::RefuseTokensBefore(2),
        },
        &[get, patch],
    )
    .await;
    assert_eq!(seen.answers[1], Ok((200, 2, Some(0))));
    let patches: Vec<_> = seen.requests[1..]
        .iter()
        .map(|r| (r.1.clone(), r.2, r.3.clone()))
        .collect();
    let body = Bytes::from(r#"{"name":"Ada"}"#);
    assert_eq!(
        patches,
        vec![
            (token(1), Some(0), body.clone()),
            (token(1), Some(0), body.clone()),
            (token(2), Some(0), body),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn an_attempt_that_hangs_ends_at_its_timeout_and_is_retried() {
    let seen = same_through_both(
        |n| if n == 2 { Act::Hang } else { Act::Answer(200) },
        &[get, get],
    )
    .await;
    assert_eq!(seen.answers[1], Ok((200, 2, None)));
}

#[tokio::test(start_paused = true)]
async fn a_connection_error_is_judged_the_same() {
    let seen = same_through_both(
        |n| at_requests(n, &[2, 4], Act::Fail, Act::Answer(200)),
        &[get, get, patch],
    )
    .await;
    assert_eq!(seen.answers[1], Ok((200, 2, None)));
    // A PATCH whose request may have reached the server is not sent again blind.
    assert!(seen.answers[2].is_err(), "{:?}", seen.answers[2]);
    assert_eq!(seen.requests.len(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_callers_key_is_claimed_and_its_repeat_answered_from_the_store() {
    let seen = same_through_both(|_| Act::Answer(200), &[patch_with_key, patch_with_key]).await;
    assert_eq!(
        seen.requests.len(),
        1,
        "the repeat is answered from the store"
    );
    assert!(seen.answers.iter().all(|a| matches!(a, Ok((200, _, _)))));
}

#[tokio::test(start_paused = true)]
async fn a_streamed_body_is_sent_whole() {
    let seen = same_through_both(|_| Act::Answer(200), &[post_stream, get]).await;
    assert_eq!(seen.requests[0].3, Bytes::from("abc"));
    assert_eq!(seen.fetches, 1);
}

/// Over a limit of one request in flight, every way through the stack gives its permit back:
/// the common way, a retry, a 401, a caller's key, a stream, a failure.
#[tokio::test(start_paused = true)]
async fn over_a_limit_of_one_every_call_gives_its_permit_back() {
    let (api, _seen) = api(|n| match n % 5 {
        0 => Act::Answer(503),
        1 => Act::RefuseTokensBefore(n / 5 + 1),
        2 => Act::Fail,
        _ => Act::Answer(200),
    });
    let limit = ConcurrencyLayer::new(1);
    let limited = limit.layer(api);
    let source = Arc::new(Source::default());
    let mut client = stacked(
        limited.clone(),
        AuthLayer::new(source),
        &IdempotencyLayer::new(),
    );
    for call in [
        get,
        patch,
        patch_with_key,
        post_stream,
        get,
        get,
        patch,
        get,
        get,
        post_stream,
    ] {
        let _ = client.ready().await.unwrap().call(call()).await;
    }
    drop(client);
    assert_eq!(limited.available_permits(), 1);
}

type MakeClient = fn(Client, AuthLayer<Arc<Source>>, &IdempotencyLayer) -> Client;

/// Both forms, named.
const FORMS: [(&str, MakeClient); 2] = [("layers", layered), ("stack", stacked)];

/// A client made by `make` over a limit of one request in flight, on an API that answers 200:
/// with the limited service (to take its permit) and what the API saw.
fn over_one_permit(make: MakeClient) -> (Client, Concurrency<Client>, Arc<Mutex<Vec<Seen>>>) {
    let (api, seen) = api(|_| Act::Answer(200));
    let limited = ConcurrencyLayer::new(1).layer(api);
    let client = make(
        BoxCloneService::new(limited.clone()),
        AuthLayer::new(Arc::new(Source::default())),
        &IdempotencyLayer::new(),
    );
    (client, limited, seen)
}

/// A clone of `limited` holding its only permit, until it is dropped.
async fn take_the_permit(limited: &Concurrency<Client>) -> Concurrency<Client> {
    let mut holder = limited.clone();
    ServiceExt::<Request<Body>>::ready(&mut holder)
        .await
        .unwrap();
    holder
}

/// A repeat of a caller's key is answered from the store without asking the service below:
/// not even a permit, when the only one is taken.
#[tokio::test(start_paused = true)]
async fn a_repeat_of_a_callers_key_needs_no_permit() {
    for (form, make) in FORMS {
        let (mut client, limited, seen) = over_one_permit(make);
        let first = client.ready().await.unwrap().call(patch_with_key()).await;
        assert_eq!(first.unwrap().status(), 200, "{form}");
        // Held to the end of the iteration.
        let _holder = take_the_permit(&limited).await;
        let repeat = tokio::time::timeout(Duration::from_secs(60), async {
            client.ready().await?.call(patch_with_key()).await
        })
        .await;
        let repeat = repeat.unwrap_or_else(|_| panic!("{form}: the repeat waited for a permit"));
        assert_eq!(repeat.unwrap().status(), 200, "{form}");
        assert_eq!(
            seen.lock().unwrap().len(),
            1,
            "{form}: the repeat was not sent"
        );
    }
}

/// With the idempotency layer, the service is ready at once and a call waits for a permit in
/// its future, holding nothing in between; it goes on when the permit comes back.
#[tokio::test(start_paused = true)]
async fn a_call_waits_for_its_permit_in_its_future() {
    for (form, make) in FORMS {
        let (mut client, limited, seen) = over_one_permit(make);
        // The token fetched, the permit given back.
        client.ready().await.unwrap().call(get()).await.unwrap();
        let holder = take_the_permit(&limited).await;
        let ready = tokio::time::timeout(Duration::from_secs(60), client.ready()).await;
        let ready = ready.unwrap_or_else(|_| panic!("{form}: not ready while a permit is taken"));
        let call = tokio::spawn(ready.unwrap().call(patch()));
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert!(!call.is_finished(), "{form}: sent without a permit");
        drop(holder);
        let answer = call.await.unwrap().unwrap();
        assert_eq!(answer.status(), 200, "{form}");
        assert_eq!(seen.lock().unwrap().len(), 2, "{form}");
        assert_eq!(limited.available_permits(), 1, "{form}");
    }
}

fn get_elsewhere() -> Request<Body> {
    Request::get("http://elsewhere.test/status")
        .body(Body::empty())
        .unwrap()
}

/// A request to a host outside the token's scope goes out without the token, and its 401
/// comes back as it is; the API's own requests still carry it.
#[tokio::test(start_paused = true)]
async fn outside_the_tokens_scope_no_token_goes_and_a_401_comes_back() {
    let setup = Setup {
        only_to: Some("http://api.test/"),
        ..Setup::default()
    };
    let seen = same_through_both_with(
        setup,
        |n| at_requests(n, &[2], Act::Answer(401), Act::Answer(200)),
        &[get, get_elsewhere, get],
    )
    .await;
    assert_eq!(
        seen.answers,
        vec![Ok((200, 1, None)), Ok((401, 1, None)), Ok((200, 1, None))]
    );
    let tokens: Vec<_> = seen.requests.iter().map(|r| r.1.clone()).collect();
    assert_eq!(tokens, vec![token(1), None, token(1)]);
}

/// A token source that refuses: nothing is sent, and the caller gets the same error from both.
#[tokio::test(start_paused = true)]
async fn a_refusing_token_source_sends_nothing() {
    let setup = Setup {
        failing_source: true,
        ..Setup::default()
    };
    let seen = same_through_both_with(setup, |_| Act::Answer(200), &[get, patch]).await;
    assert!(seen.requests.is_empty(), "{:?}", seen.requests);
    assert!(
        seen.answers
            .iter()
            .all(|a| a.as_ref().is_err_and(|e| e.contains("invalid_client"))),
        "{:?}",
        seen.answers
    );
}

/// Each attempt gets its whole timeout, counted from its own start, though its timer may be one
/// an earlier attempt used (set then for an earlier deadline); and the time an attempt waits
/// for an answer is the same through the stack and through tower's timeout.
#[tokio::test(start_paused = true)]
async fn each_attempt_has_its_whole_timeout_from_its_own_start() {
    for stack in [false, true] {
        let (api, seen) = api(|n| {
            if n == 1 {
                Act::AnswerAfterAWait(200)
            } else {
                Act::Hang
            }
        });
        let auth = AuthLayer::new(Arc::new(Source::default()));
        let retry = RetryLayer::new(RetryPolicy::builder().max_attempts(1).build());
        let mut client = match stack {
            true => BoxCloneService::new(
                StackLayer::new(retry, auth)
                    .attempt_timeout(ATTEMPT_TIMEOUT)
                    .layer(api),
            ),
            false => BoxCloneService::new(
                ServiceBuilder::new()
                    .layer(retry)
                    .layer(auth)
                    .layer(tower::timeout::TimeoutLayer::new(ATTEMPT_TIMEOUT))
                    .service(api),
            ),
        };
        let first = client.ready().await.unwrap().call(get()).await;
        assert_eq!(first.unwrap().status(), 200);
        // The first attempt's deadline passes while the second waits for its answer.
        tokio::time::sleep(ATTEMPT_TIMEOUT * 3 / 5).await;
        let start = tokio::time::Instant::now();
        let second = client.ready().await.unwrap().call(get()).await;
        let waited = start.elapsed();
        let e = second.expect_err("the API never answers the second request");
        // The stack's own error, or the retry layer's, whose source is the attempt's.
        let elapsed =
            |e: &(dyn std::error::Error + 'static)| e.is::<tower::timeout::error::Elapsed>();
        assert!(
            elapsed(&*e) || std::error::Error::source(&*e).is_some_and(elapsed),
            "stack {stack}: {e}"
        );
        assert!(
            waited >= ATTEMPT_TIMEOUT && waited <= ATTEMPT_TIMEOUT + Duration::from_millis(2),
            "stack {stack}: waited {waited:?} for a timeout of {ATTEMPT_TIMEOUT:?}"
        );
        assert_eq!(seen.lock().unwrap().len(), 2);
    }
}
