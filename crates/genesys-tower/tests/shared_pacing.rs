//! `RedisPacer` with a real Redis (`REDIS_URL`, default `redis://127.0.0.1:6379`): several
//! independent stacks (each with its own pacer and connection, as separate processes have) under
//! one quota; a 429 seen by one holding the others; and the local fallback when Redis is gone.
//!
//! Redis's clock is real, so these tests run on the real clock. They assert lower bounds only
//! (the fleet never started faster than its quota allows), which a slow machine cannot break.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use genesys_tower::concurrency::{ConcurrencyLayer, RedisPacer};
use http::{Request, Response, StatusCode};
use tower::{Layer, ServiceExt, service_fn};

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn unique_key(test: &str) -> String {
    format!(
        "genesys-tower-test:pacing:{test}:{}",
        uuid::Uuid::new_v4().simple()
    )
}

type Starts = Arc<Mutex<Vec<Instant>>>;

/// Sends `n` requests at once through a concurrency layer over a leaf that records when each
/// started and answers `status` (with `Retry-After: 2` on a 429).
async fn send_all(layer: ConcurrencyLayer, n: usize, starts: Starts, status: StatusCode) {
    let leaf = service_fn(move |_req: Request<()>| {
        let starts = starts.clone();
        async move {
            starts.lock().unwrap().push(Instant::now());
            let mut response = Response::new(());
            *response.status_mut() = status;
            if status == StatusCode::TOO_MANY_REQUESTS {
                response
                    .headers_mut()
                    .insert("retry-after", http::HeaderValue::from_static("2"));
            }
            Ok::<_, Infallible>(response)
        }
    });
    let service = layer.layer(leaf);
    let calls = (0..n).map(|_| service.clone().oneshot(Request::new(())));
    for result in join_all(calls).await {
        result.expect("the call goes through");
    }
}

fn span(starts: &Starts) -> Duration {
    let starts = starts.lock().unwrap();
    let first = starts.iter().min().unwrap();
    let last = starts.iter().max().unwrap();
    *last - *first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_together_never_exceed_the_one_quota() {
    let key = unique_key("fleet");
    // 20 a second for the whole fleet: one start every 50 ms.
    let per_process = 10;
    let starts: Starts = Arc::default();
    let processes = (0..3).map(|_| {
        let pacer = RedisPacer::open(&redis_url(), key.clone(), 20, Duration::from_secs(1))
            .unwrap()
            .expected_processes(3);
        // Each process alone would let its 10 go at once: its own limit is no brake.
        let layer = ConcurrencyLayer::new(per_process).shared_pacing(pacer);
        send_all(layer, per_process, starts.clone(), StatusCode::OK)
    });
    join_all(processes).await;

    assert_eq!(starts.lock().unwrap().len(), 30);
    // 30 starts at one per 50 ms take at least 29 intervals (less a little for the jitter
    // between Redis handing out a start and the leaf recording it).
    let span = span(&starts);
    assert!(
        span >= Duration::from_millis(29 * 50 * 9 / 10),
        "the fleet started 30 requests in {span:?}: faster than 20 a second"
    );
}

/// How long a process of `pacer`'s fleet waits to start after another was answered 429 with
/// `Retry-After: 2`.
async fn held_after_a_429(pacer: impl Fn() -> RedisPacer) -> Duration {
    let a = ConcurrencyLayer::new(1).shared_pacing(pacer());
    send_all(a, 1, Arc::default(), StatusCode::TOO_MANY_REQUESTS).await;
    let answered = Instant::now();
    // The hint is shared in the background: give it a moment to land.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let b = ConcurrencyLayer::new(1).shared_pacing(pacer());
    let starts: Starts = Arc::default();
    send_all(b, 1, starts.clone(), StatusCode::OK).await;
    let started = starts.lock().unwrap()[0];
    started - answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_seen_by_one_process_holds_the_others() {
    let key = unique_key("hold");
    let pacer =
        || RedisPacer::open(&redis_url(), key.clone(), 1000, Duration::from_secs(1)).unwrap();
    let waited = held_after_a_429(pacer).await;
    assert!(
        waited >= Duration::from_millis(1800),
        "another process started {waited:?} after a 429 with Retry-After: 2"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_a_daily_hint_holds_no_one() {
    let key = unique_key("daily");
    let pacer =
        || RedisPacer::open(&redis_url(), key.clone(), 1000, Duration::from_secs(1)).unwrap();
    // A daily quota spent: a hint of two hours, past the longest hold. Waiting it out would
    // stall every call of the fleet, then meet the same 429.
    let daily = service_fn(|_req: Request<()>| async {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        response
            .headers_mut()
            .insert("retry-after", http::HeaderValue::from_static("7200"));
        Ok::<_, Infallible>(response)
    });
    let a = ConcurrencyLayer::new(1).shared_pacing(pacer()).layer(daily);
    a.oneshot(Request::new(())).await.unwrap();
    // The hint would be shared in the background: give it a moment to land.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let b = ConcurrencyLayer::new(1).shared_pacing(pacer());
    let starts: Starts = Arc::default();
    let sent = send_all(b, 1, starts.clone(), StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(60), sent)
        .await
        .expect("another process was held for the daily quota's hint");
    assert_eq!(starts.lock().unwrap().len(), 1);

    // The fleet's hold works under that key (Redis is there): a short hint holds the others.
    let waited = held_after_a_429(pacer).await;
    assert!(
        waited >= Duration::from_millis(1800),
        "not held by a 429 with Retry-After: 2 ({waited:?}): is Redis there?"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_process_paces_alone_at_its_share_never_unpaced() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let pacer = RedisPacer::open(
        &format!("redis://127.0.0.1:{port}"),
        "pacing:down",
        20,
        Duration::from_secs(1),
    )
    .unwrap()
    .expected_processes(4);
    let layer = ConcurrencyLayer::new(16).shared_pacing(pacer.clone());
    let starts: Starts = Arc::default();
    send_all(layer, 12, starts.clone(), StatusCode::OK).await;

    assert!(pacer.is_degraded());
    // Its share is 5 a second (20 among 4): 12 starts need three windows.
    let span = span(&starts);
    assert!(
        span >= Duration::from_millis(1800),
        "12 starts in {span:?} at a share of 5 a second"
    );
}

#[tokio::test]
async fn a_rate_of_nothing_is_refused_with_a_message() {
    let err = RedisPacer::open(&redis_url(), "k", 0, Duration::from_secs(1)).unwrap_err();
    assert!(err.to_string().contains("at least 1 request"), "{err}");
    let err = RedisPacer::open("not a url", "k", 5, Duration::from_secs(1)).unwrap_err();
    assert!(err.to_string().contains("invalid Redis URL"), "{err}");
}

/// Redis's clock and the key's reservation (`tat`), in µs.
async fn reserved_ahead(url: &str, key: &str) -> Duration {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let tat: Option<u64> = redis::cmd("HGET")
        .arg(key)
        .arg("tat")
        .query_async(&mut conn)
        .await
        .unwrap();
    Duration::from_micros(tat.unwrap_or(0).saturating_sub(secs * 1_000_000 + micros))
}

/// Callers who give up waiting (here, 90 who each wait 20 ms for a start about 3 s apart)
/// leave no reservation more than the horizon ahead: the queue does not grow with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_who_give_up_never_push_the_queue_past_the_horizon() {
    use genesys_tower::concurrency::SharedPacer;
    let key = unique_key("give-up");
    let pacer = RedisPacer::open(&redis_url(), key.clone(), 1, Duration::from_secs(3)).unwrap();
    for _ in 0..90 {
        let _ = tokio::time::timeout(Duration::from_millis(20), pacer.acquire()).await;
    }
    assert!(!pacer.is_degraded(), "Redis answered");
    let ahead = reserved_ahead(&redis_url(), &key).await;
    // The horizon (180 s) and one interval (3 s over the headroom), nothing like 90 starts.
    assert!(
        ahead <= Duration::from_secs(184),
        "reserved {ahead:?} ahead"
    );
    assert!(
        ahead >= Duration::from_secs(100),
        "the queue did build up: {ahead:?}"
    );
}

/// Writes `fields` into a fresh pacing key (the times made from Redis's clock now, in µs),
/// then sends 3 requests through a pacer on it: they must go at the fleet's pace, within a
/// minute (a bound for a hang, not a measure of speed: they take tens of milliseconds, or the
/// second of hold left), and leave no reservation a minute ahead.
async fn the_fleet_goes_on_after(test: &str, fields: impl Fn(u64) -> Vec<(&'static str, u64)>) {
    let key = unique_key(test);
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let mut hset = redis::cmd("HSET");
    hset.arg(&key);
    for (field, value) in fields(secs * 1_000_000 + micros) {
        hset.arg(field).arg(value);
    }
    let _: () = hset.query_async(&mut conn).await.unwrap();
    let fleet = RedisPacer::open(&redis_url(), key.clone(), 100, Duration::from_secs(1)).unwrap();
    let starts: Starts = Arc::default();
    let layer = ConcurrencyLayer::new(4).shared_pacing(fleet);
    tokio::time::timeout(
        Duration::from_secs(60),
        send_all(layer, 3, starts.clone(), StatusCode::OK),
    )
    .await
    .unwrap_or_else(|_| panic!("{test}: the fleet is held"));
    assert_eq!(starts.lock().unwrap().len(), 3);
    assert!(reserved_ahead(&redis_url(), &key).await < Duration::from_secs(60));
}

/// A reservation or a hold far past anything the fleet writes (a damaged key, another writer)
/// is not waited for: the fleet goes on at its pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reserved_for_days_does_not_stall_the_fleet() {
    the_fleet_goes_on_after("damaged", |now| {
        let days_ahead = now + 10 * 86_400 * 1_000_000;
        vec![("tat", days_ahead), ("hold_until", days_ahead)]
    })
    .await;
}

/// Redis's clock stepped back ten minutes since the fleet last wrote (an NTP step, a resumed
/// virtual machine, a failover to another host): the fleet's reservations and hold, written
/// on the clock before the step, are not waited out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_back_of_the_redis_clock_does_not_stall_the_fleet() {
    the_fleet_goes_on_after("clock-step", |now| {
        // What the fleet wrote a moment before the step, on the clock of then: ten minutes
        // ahead of the clock of now.
        let then = now + 600 * 1_000_000;
        vec![
            ("at", then),
            ("tat", then + 10_000),
            ("hold_until", then + 1_000_000),
        ]
    })
    .await;
}

/// The interval a pacer under `key` learned from the server, as shared in Redis (`None`: none).
async fn shared_interval(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<u64> {
    redis::cmd("HGET")
        .arg(key)
        .arg("interval")
        .query_async(conn)
        .await
        .unwrap()
}

/// Waits up to 2 s for the interval learned under `key` to be in Redis.
async fn shared_within(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> Option<u64> {
    for _ in 0..40 {
        if let Some(interval) = shared_interval(conn, key).await {
            return Some(interval);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// A slower quota the server publishes is shared with the fleet, and shared again once Redis
/// has forgotten it (its period ran out, Redis restarted, or the first write was lost) while
/// the server still says so: the fleet does not go back to the faster configured rate for
/// good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quota_learned_from_the_server_is_shared_again_once_redis_forgot_it() {
    let key = unique_key("learned");
    let pacer = RedisPacer::open(&redis_url(), key.clone(), 1000, Duration::from_secs(1))
        .unwrap()
        .learned_for(Duration::from_secs(1));
    let leaf = service_fn(|_req: Request<()>| async {
        let mut response = Response::new(());
        response.headers_mut().insert(
            "ratelimit-policy",
            http::HeaderValue::from_static("\"p\";q=10;w=1"),
        );
        Ok::<_, Infallible>(response)
    });
    let service = ConcurrencyLayer::new(1).shared_pacing(pacer).layer(leaf);
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();

    // 10 a second at the default headroom of 0.95. The second time, Redis has forgotten it
    // (a quarter of the period before): the next answer shares it again.
    for wait in [Duration::ZERO, Duration::from_millis(300)] {
        tokio::time::sleep(wait).await;
        service.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(shared_within(&mut conn, &key).await, Some(105_263));
        let _: () = redis::cmd("DEL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
}
