//! `RedisTokenCache` with a real Redis (`REDIS_URL`, default `redis://127.0.0.1:6379`): three
//! auth stacks, each with its own login source and Redis connection (as three processes have),
//! fetch one token between them, and one more for all of them when the API refuses it; without
//! Redis each fetches its own.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use futures_util::future::join_all;
use genesys_tower::auth::{AuthLayer, RedisTokenCache, Token, token_source_fn};
use http::{Request, Response, StatusCode};
use tower::{Layer, ServiceExt, service_fn};

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn unique_key(test: &str) -> String {
    format!(
        "genesys-tower-test:token:{test}:{}",
        uuid::Uuid::new_v4().simple()
    )
}

/// A login source that counts its fetches (shared by the fleet's processes, to count them all)
/// and numbers its tokens.
fn login(fetches: Arc<AtomicUsize>) -> impl genesys_tower::auth::TokenSource {
    token_source_fn(move || {
        let fetches = fetches.clone();
        async move {
            let n = fetches.fetch_add(1, SeqCst);
            // A little time at the login host, so that the processes overlap.
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(Token::new(
                format!("token-{n}"),
                Some(Duration::from_secs(3600)),
            ))
        }
    })
}

/// An API that accepts only tokens not in `refused`, answering 401 otherwise.
fn api(
    refused: &'static [&'static str],
) -> impl tower::Service<
    Request<genesys_tower::Body>,
    Response = Response<genesys_tower::Body>,
    Error = Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    service_fn(move |req: Request<genesys_tower::Body>| async move {
        let auth = req.headers()["authorization"].to_str().unwrap().to_owned();
        let mut response = Response::new(genesys_tower::Body::from(auth.clone()));
        if refused.iter().any(|t| auth.ends_with(t)) {
            *response.status_mut() = StatusCode::UNAUTHORIZED;
        }
        Ok::<_, Infallible>(response)
    })
}

async fn call(
    service: &(
         impl tower::Service<
        Request<genesys_tower::Body>,
        Response = Response<genesys_tower::Body>,
        Error = genesys_tower::BoxError,
    > + Clone
     ),
) -> StatusCode {
    let request = Request::get("/api/v2/users")
        .body(genesys_tower::Body::empty())
        .unwrap();
    service.clone().oneshot(request).await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_fetch_one_token_and_one_more_when_it_is_refused() {
    let key = unique_key("fleet");
    let fetches = Arc::new(AtomicUsize::new(0));
    let process = |refused| {
        let cache =
            RedisTokenCache::open(&redis_url(), key.clone(), login(fetches.clone())).unwrap();
        AuthLayer::new(cache).layer(api(refused))
    };
    let fleet = [process(&[]), process(&[]), process(&[])];
    let calls = fleet.iter().flat_map(|p| (0..5).map(move |_| call(p)));
    assert!(join_all(calls).await.iter().all(|s| *s == StatusCode::OK));
    assert_eq!(fetches.load(SeqCst), 1, "one token for the fleet");

    // Three more processes, to which the API refuses token-0: each gets it from Redis, gets a
    // 401, asks for a new token, and the fleet fetches one between them.
    let refusing = [
        process(&["token-0"]),
        process(&["token-0"]),
        process(&["token-0"]),
    ];
    let calls = refusing.iter().flat_map(|p| (0..3).map(move |_| call(p)));
    let statuses = join_all(calls).await;
    assert!(
        statuses.iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(
        fetches.load(SeqCst),
        2,
        "one more token for the whole fleet"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_process_fetches_its_own() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let fetches = Arc::new(AtomicUsize::new(0));
    let cache = RedisTokenCache::open(
        &format!("redis://127.0.0.1:{port}"),
        "token:down",
        login(fetches.clone()),
    )
    .unwrap();
    let cache = Arc::new(cache);
    let service = AuthLayer::new(cache.clone()).layer(api(&[]));
    assert_eq!(call(&service).await, StatusCode::OK);
    assert_eq!(fetches.load(SeqCst), 1);
    assert!(cache.is_degraded());
    assert!(!format!("{cache:?}").contains("token-0"));
}

/// A lock time past the clock's range is taken as the longest allowed: no panic, a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_lock_time_is_taken_within_bounds() {
    let fetches = Arc::new(AtomicUsize::new(0));
    let cache = RedisTokenCache::open(
        &redis_url(),
        unique_key("absurd-lock-ttl"),
        login(fetches.clone()),
    )
    .unwrap()
    .lock_ttl(Duration::MAX);
    assert!(format!("{cache:?}").contains("3600s"), "{cache:?}");
    let service = AuthLayer::new(cache).layer(api(&[]));
    assert_eq!(call(&service).await, StatusCode::OK);
    assert_eq!(fetches.load(SeqCst), 1);
}

/// A shared token's lifetime is its key's own time to live, which no process's clock skews: a
/// record written by a process whose clock runs an hour ahead (or a forged one) is not taken as
/// living an hour longer than it does, nor one whose clock runs behind as expired. A record with an expiry on a key
/// that never expires is not one the cache wrote: the process fetches its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_tokens_lifetime_is_its_keys_time_to_live() {
    use genesys_tower::auth::TokenSource;

    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let hour_ahead = format!("{}\nskewed", now_ms + 3_600_000);

    let key = unique_key("skewed-expiry");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(&hour_ahead)
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let fetches = Arc::new(AtomicUsize::new(0));
    let cache = RedisTokenCache::open(&redis_url(), key.clone(), login(fetches.clone())).unwrap();
    let token = cache.fetch().await.unwrap();
    assert_eq!(token.secret(), "skewed");
    let lifetime = token.lifetime().unwrap();
    assert!(lifetime <= Duration::from_secs(60), "{lifetime:?}");
    assert_eq!(fetches.load(SeqCst), 0);

    // Stored by a process whose clock runs an hour behind this one's: the key's minute holds,
    // and the token is not taken as expired (which had this process fetch another for all).
    let key = unique_key("behind-expiry");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(format!("{}\nbehind", now_ms - 3_600_000))
        .arg("PX")
        .arg(60_000)
        .query_async(&mut conn)
        .await
        .unwrap();
    let cache = RedisTokenCache::open(&redis_url(), key.clone(), login(fetches.clone())).unwrap();
    let token = cache.fetch().await.unwrap();
    assert_eq!(token.secret(), "behind");
    let lifetime = token.lifetime().unwrap();
    assert!(lifetime > Duration::from_secs(50), "{lifetime:?}");
    assert_eq!(fetches.load(SeqCst), 0);

    let key = unique_key("persistent-expiry");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(&hour_ahead)
        .query_async(&mut conn)
        .await
        .unwrap();
    let cache = RedisTokenCache::open(&redis_url(), key.clone(), login(fetches.clone())).unwrap();
    let token = cache.fetch().await.unwrap();
    assert_eq!(token.secret(), "token-0");
    assert_eq!(fetches.load(SeqCst), 1);
}
