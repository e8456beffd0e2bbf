//! Tests of `pacing`.
use super::*;
use http::HeaderValue;

fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(*k, HeaderValue::from_static(v));
    }
    map
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(crate::fuzz_cases(2000)))]

    #[test]
    fn any_header_values_are_observed_without_panic(
        values in proptest::collection::vec(proptest::collection::vec(0u8..=255, 0..48), 9),
    ) {
        let names = [
            "inin-ratelimit-allowed", "inin-ratelimit-count", "inin-ratelimit-reset",
            "ratelimit", "ratelimit-policy", "ratelimit-remaining", "ratelimit-reset",
            "ratelimit-limit", "retry-after",
        ];
        let mut map = HeaderMap::new();
        for (name, value) in names.iter().zip(&values) {
            if let Ok(value) = HeaderValue::from_bytes(value) {
                map.append(*name, value);
            }
        }
        let pacer = Pacer::new(
            Some(Rate { requests: u64::MAX, window: Duration::MAX }),
            true,
            u64::MAX,
            Duration::MAX,
        );
        pacer.observe(StatusCode::TOO_MANY_REQUESTS, &map);
        pacer.observe(StatusCode::OK, &map);
    }
}

fn header_value() -> impl proptest::strategy::Strategy<Value = String> {
    use proptest::prelude::*;
    prop_oneof![
        (0u64..100_000).prop_map(|n| n.to_string()),
        "[ \t]{0,2}[0-9]{1,20}[ \t]{0,2}",
        Just("Sun, 06 Nov 1994 08:49:37 GMT".to_owned()),
        Just("Sunday, 06-Nov-94 08:49:37 GMT".to_owned()),
        Just("Sun Nov  6 08:49:37 1994".to_owned()),
        "[-+ 0-9a-z;=,\"]{0,24}",
        "[a-z]{1,5}(;r=[0-9]{1,3})?(;t=[0-9]{1,4})?(, [a-z]{1,5};r=[0-9]{1,3};t=[0-9]{1,4})?",
        "\\PC{0,12}",
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(crate::fuzz_cases(3000)))]

    /// The retry layer and the pacer read the same 429 the same way: the pacer lets no
    /// request start before the retry layer's hint has passed, and (when no window it reads
    /// is spent) holds exactly that long.
    #[test]
    fn the_pacer_holds_exactly_the_retry_layers_hint(
        values in proptest::collection::vec(proptest::option::of(header_value()), 9),
    ) {
        let names = [
            "retry-after", "inin-ratelimit-allowed", "inin-ratelimit-count",
            "inin-ratelimit-reset", "ratelimit", "ratelimit-policy", "ratelimit-remaining",
            "ratelimit-reset", "ratelimit-limit",
        ];
        let mut map = HeaderMap::new();
        for (name, value) in names.iter().zip(&values) {
            if let Some(value) = value
                && let Ok(value) = HeaderValue::from_str(value)
            {
                map.append(*name, value);
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let (hint, spent, hold) = rt.block_on(async {
            let max_hold = Duration::from_secs(86_400);
            let pacer = Pacer::new(None, true, 0, max_hold);
            let now = Instant::now();
            pacer.observe(StatusCode::TOO_MANY_REQUESTS, &map);
            let hint = crate::headers::hint(&map, SystemTime::now(), true)
                .filter(|h| *h <= max_hold);
            let hints = RateLimitHints::parse(&map, SystemTime::now());
            let spent = hints
                .windows()
                .filter(|w| w.remaining == 0)
                .map(|w| w.reset)
                .max()
                .filter(|h| *h <= max_hold);
            let hold = match pacer.try_start() {
                Ok(()) => Duration::ZERO,
                Err(until) => until - now,
            };
            (hint, spent, hold)
        });
        let hint = hint.unwrap_or_default();
        proptest::prop_assert!(hold >= hint, "hold {hold:?} < hint {hint:?}");
        if spent.is_none() {
            proptest::prop_assert_eq!(hold, hint);
        } else {
            proptest::prop_assert_eq!(hold, hint.max(spent.unwrap_or_default()));
        }
    }
}

/// A server with a fixed-window quota per token, like the simulator's: the window starts
/// at the first request after the previous one ended.
struct FixedWindow {
    quota: u64,
    window: Duration,
    start: Option<Instant>,
    count: u64,
    /// Send the rate-limit headers on every n-th answer (1: all, 2: half).
    headers_every: u64,
    /// Send IETF `RateLimit` (remaining and reset only: no quota) instead of Genesys's.
    ietf: bool,
    answers: u64,
}

impl FixedWindow {
    fn new(quota: u64, window_secs: u64, headers_every: u64) -> Self {
        FixedWindow {
            quota,
            window: Duration::from_secs(window_secs),
            start: None,
            count: 0,
            headers_every,
            ietf: false,
            answers: 0,
        }
    }

    fn answer(&mut self, now: Instant) -> (StatusCode, HeaderMap) {
        if self.start.is_none_or(|s| now >= s + self.window) {
            self.start = Some(now);
            self.count = 0;
        }
        let end = self.start.unwrap() + self.window;
        let reset = (end - now)
            .as_nanos()
            .div_ceil(1_000_000_000)
            .max(1)
            .to_string();
        self.answers += 1;
        let mut h = HeaderMap::new();
        if self.count >= self.quota {
            h.insert("retry-after", HeaderValue::from_str(&reset).unwrap());
            return (StatusCode::TOO_MANY_REQUESTS, h);
        }
        self.count += 1;
        if self.headers_every > 0 && self.answers.is_multiple_of(self.headers_every) {
            if self.ietf {
                let v = format!("\"q\";r={};t={reset}", self.quota - self.count);
                h.insert("ratelimit", HeaderValue::from_str(&v).unwrap());
            } else {
                h.insert("inin-ratelimit-allowed", HeaderValue::from(self.quota));
                h.insert("inin-ratelimit-count", HeaderValue::from(self.count));
                h.insert(
                    "inin-ratelimit-reset",
                    HeaderValue::from_str(&reset).unwrap(),
                );
            }
        }
        (StatusCode::OK, h)
    }
}

/// A client with as much work as it can send, one request at a time with no latency, for
/// `length` of the (paused) clock. Returns (delivered, 429s).
async fn run(pacer: &Pacer, server: &mut FixedWindow, length: Duration) -> (u64, u64) {
    let end = Instant::now() + length;
    let (mut ok, mut limited) = (0, 0);
    while Instant::now() < end {
        match pacer.try_start() {
            Err(until) => tokio::time::sleep_until(until.min(end)).await,
            Ok(()) => {
                let (status, headers) = server.answer(Instant::now());
                if status == StatusCode::OK {
                    ok += 1;
                } else {
                    limited += 1;
                }
                pacer.observe(status, &headers);
                // Requests take a little time; so does the client between them.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
    (ok, limited)
}

fn learning(configured: Option<(u64, u64)>) -> Pacer {
    Pacer::new(
        configured.map(|(requests, secs)| Rate {
            requests,
            window: Duration::from_secs(secs),
        }),
        true,
        ConcurrencyLayerDefaults::RESERVE,
        Duration::from_secs(180),
    )
}

struct ConcurrencyLayerDefaults;
impl ConcurrencyLayerDefaults {
    const RESERVE: u64 = 1;
}

#[tokio::test(start_paused = true)]
async fn a_one_second_window_is_inferred_with_headers_on_half_the_answers() {
    // 40 per 1 s; the client starts from the Genesys default of 300 per minute.
    let pacer = learning(Some((300, 60)));
    let mut server = FixedWindow::new(40, 1, 2);
    let (ok, limited) = run(&pacer, &mut server, Duration::from_secs(30)).await;
    let rate = pacer.rate().unwrap();
    assert_eq!(rate.window, Duration::from_secs(1), "{rate:?}");
    // The quota is 1200 in 30 s; 300/60 would have delivered 150.
    assert!(ok >= 1000, "{ok} delivered");
    assert!(limited * 20 < ok + limited, "{limited} 429s for {ok}");
}

/// The three `inin-ratelimit-*` fields of one answer.
fn inin(allowed: &'static str, count: &'static str, reset: &'static str) -> HeaderMap {
    headers(&[
        ("inin-ratelimit-allowed", allowed),
        ("inin-ratelimit-count", count),
        ("inin-ratelimit-reset", reset),
    ])
}

/// Runs `server` (40 a second) for 30 s through `pacer`, and returns the rate it learned: 40
/// per second.
async fn learned_in_30_s(pacer: &Pacer, server: &mut FixedWindow) -> Rate {
    run(pacer, server, Duration::from_secs(30)).await;
    let rate = pacer.rate().unwrap();
    assert_eq!(rate.window, Duration::from_secs(1), "{rate:?}");
    rate
}

#[tokio::test(start_paused = true)]
async fn a_reset_of_more_than_an_hour_does_not_stop_the_inference() {
    // One answer about a daily quota (its reset hours away), then a 40 per 1 s server.
    let pacer = learning(Some((300, 60)));
    pacer.observe(StatusCode::OK, &inin("300", "1", "7200"));
    let mut server = FixedWindow::new(40, 1, 2);
    let rate = learned_in_30_s(&pacer, &mut server).await;

    // The daily quota's answer once more, now that the second's window is known: its quota is
    // not taken for that window's.
    pacer.observe(StatusCode::OK, &inin("300", "2", "7000"));
    assert_eq!(pacer.rate().unwrap(), rate, "not 300 per second");
}

#[tokio::test(start_paused = true)]
async fn another_limiters_longer_window_does_not_stretch_this_one_for_good() {
    // A 40 per 1 s server, learned; then one answer of another limiter (1000 an hour, 3000 s
    // to its reset), then the 40 per second server again.
    let pacer = learning(Some((300, 60)));
    let mut server = FixedWindow::new(40, 1, 2);
    learned_in_30_s(&pacer, &mut server).await;
    pacer.observe(StatusCode::OK, &inin("1000", "1", "3000"));
    run(&pacer, &mut server, Duration::from_secs(30)).await;
    let rate = pacer.rate().unwrap();
    assert_eq!(
        rate.window,
        Duration::from_secs(1),
        "40 a second read as 40 per 3000 s: {rate:?}"
    );
    // The same with the other limiter's window as an IETF item, which names no quota, next to
    // the 40 a second's own fields.
    pacer.observe(
        StatusCode::OK,
        &headers(&[
            ("inin-ratelimit-allowed", "40"),
            ("inin-ratelimit-count", "1"),
            ("inin-ratelimit-reset", "1"),
            ("ratelimit", "\"hourly\";r=999;t=3000"),
        ]),
    );
    run(&pacer, &mut server, Duration::from_secs(30)).await;
    let rate = pacer.rate().unwrap();
    assert_eq!(rate.window, Duration::from_secs(1), "{rate:?}");
}

#[tokio::test(start_paused = true)]
async fn a_minute_window_is_inferred_too() {
    let pacer = learning(None);
    let mut server = FixedWindow::new(300, 60, 2);
    let (ok, limited) = run(&pacer, &mut server, Duration::from_secs(300)).await;
    assert_eq!(pacer.rate().unwrap().window, Duration::from_secs(60));
    // The quota is 1500 in 300 s.
    assert!(ok >= 1200, "{ok} delivered");
    assert!(limited * 20 < ok + limited, "{limited} 429s for {ok}");
}

#[tokio::test(start_paused = true)]
async fn the_rate_rises_while_the_server_has_room() {
    // Configured 20 per s; the server allows 100 per s and says how many remain (IETF, no
    // quota given): additive increase finds the room.
    let pacer = learning(Some((20, 1)));
    let mut server = FixedWindow::new(100, 1, 1);
    server.ietf = true;
    run(&pacer, &mut server, Duration::from_secs(20)).await;
    let raised = pacer.rate().unwrap().requests;
    assert!(raised >= 40, "{raised}");
    let (ok, _) = run(&pacer, &mut server, Duration::from_secs(5)).await;
    assert!(ok >= 5 * 40, "{ok}");
}

#[tokio::test(start_paused = true)]
async fn a_429_halves_the_rate_but_not_below_what_was_delivered() {
    // Configured far too fast and no headers at all: only 429s tell. The rate is cut, once
    // per window, until the 429s stop.
    let pacer = learning(Some((200, 1)));
    let mut server = FixedWindow::new(30, 1, 0);
    run(&pacer, &mut server, Duration::from_secs(10)).await;
    let cut = pacer.rate().unwrap().requests;
    assert!((25..=50).contains(&cut), "{cut}");
    let (ok, limited) = run(&pacer, &mut server, Duration::from_secs(10)).await;
    assert!(ok >= 250, "{ok}");
    assert!(limited * 10 < ok, "{limited} 429s for {ok}");

    // A window that delivered 40 without a 429 is a floor: one 429 does not halve below it.
    let pacer = learning(Some((40, 1)));
    let mut server = FixedWindow::new(40, 1, 0);
    run(&pacer, &mut server, Duration::from_millis(1500)).await;
    let mut h = HeaderMap::new();
    h.insert("retry-after", HeaderValue::from_static("1"));
    pacer.observe(StatusCode::TOO_MANY_REQUESTS, &h);
    assert_eq!(pacer.rate().unwrap().requests, 40);
}

#[tokio::test(start_paused = true)]
async fn a_ceiling_is_never_passed_whatever_the_server_says() {
    // The server allows 40 per s and says so; the user capped the client at 10 per s.
    let pacer = Pacer::with_ceiling(
        None,
        Some(Rate {
            requests: 10,
            window: Duration::from_secs(1),
        }),
        true,
        1,
        Duration::from_secs(180),
    );
    let mut server = FixedWindow::new(40, 1, 1);
    let (ok, limited) = run(&pacer, &mut server, Duration::from_secs(10)).await;
    assert_eq!(limited, 0);
    assert!((95..=110).contains(&ok), "{ok}");
}

#[tokio::test(start_paused = true)]
async fn huge_values_do_not_overflow() {
    let pacer = Pacer::new(
        Some(Rate {
            requests: 1,
            window: Duration::MAX,
        }),
        true,
        0,
        Duration::MAX,
    );
    assert!(pacer.try_start().is_ok());
    assert!(pacer.try_start().is_err());
    pacer.observe(
        StatusCode::TOO_MANY_REQUESTS,
        &headers(&[("retry-after", "18446744073709551615")]),
    );
    assert!(pacer.try_start().is_err());
}

#[tokio::test(start_paused = true)]
async fn a_policy_sets_the_rate_and_a_plus_sign_is_not_a_number() {
    let pacer = Pacer::new(None, true, 0, Duration::from_secs(180));
    pacer.observe(
        StatusCode::TOO_MANY_REQUESTS,
        &headers(&[("retry-after", "+5"), ("ratelimit-policy", "2;w=+1")]),
    );
    // Neither `+5` nor `w=+1` is read: no hold, no rate.
    assert!(pacer.try_start().is_ok());
    assert!(pacer.try_start().is_ok());
    assert!(pacer.try_start().is_ok());
    pacer.observe(
        StatusCode::OK,
        &headers(&[("ratelimit-policy", "\"a\";q=2;w=1")]),
    );
    assert!(pacer.try_start().is_ok());
    assert!(pacer.try_start().is_ok());
    assert!(pacer.try_start().is_err());
}

/// A daily policy published next to a short one leaves the short one to learn: the slowest
/// policy is taken among those a pacer can pace.
#[tokio::test(start_paused = true)]
async fn a_daily_policy_does_not_hide_the_short_one_next_to_it() {
    let pacer = Pacer::new(None, true, 0, Duration::from_secs(180));
    pacer.observe(
        StatusCode::OK,
        &headers(&[("ratelimit-policy", "\"d\";q=10000;w=86400, \"s\";q=2;w=1")]),
    );
    assert!(pacer.try_start().is_ok());
    assert!(pacer.try_start().is_ok());
    assert!(
        pacer.try_start().is_err(),
        "the 2 per second policy was not learned"
    );
}

/// A pacer with nothing to pace lets starts through without its lock, and still holds them the
/// moment a response says to, and only for as long as it says.
#[tokio::test(start_paused = true)]
async fn a_quiet_pacer_still_holds_on_the_servers_word_and_only_then() {
    let pacer = Pacer::new(None, true, 0, Duration::from_secs(180));
    assert!(pacer.quiet.load(Ordering::Relaxed));
    assert!(pacer.try_start().is_ok());
    pacer.observe(
        StatusCode::TOO_MANY_REQUESTS,
        &headers(&[("retry-after", "2")]),
    );
    assert!(!pacer.quiet.load(Ordering::Relaxed));
    let until = pacer.try_start().unwrap_err();
    assert_eq!(until - Instant::now(), Duration::from_secs(2));
    tokio::time::advance(Duration::from_millis(1999)).await;
    assert!(pacer.try_start().is_err());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(pacer.try_start().is_ok());
    // The hold is over and no rate was learned: quiet again, and every start goes through.
    assert!(pacer.quiet.load(Ordering::Relaxed));
    for _ in 0..1000 {
        assert!(pacer.try_start().is_ok());
    }
    // A quota learned from the server ends the quiet for good.
    pacer.observe(
        StatusCode::OK,
        &headers(&[("ratelimit-policy", "\"a\";q=2;w=1")]),
    );
    assert!(!pacer.quiet.load(Ordering::Relaxed));
    assert!(pacer.try_start().is_ok());
    assert!(pacer.try_start().is_ok());
    assert!(pacer.try_start().is_err());
}

/// A configured rate or a ceiling is never quiet.
#[test]
fn a_pacer_with_a_rate_is_never_quiet() {
    let rate = Rate {
        requests: 5,
        window: Duration::from_secs(1),
    };
    let max_hold = Duration::from_secs(180);
    assert!(
        !Pacer::new(Some(rate), true, 0, max_hold)
            .quiet
            .load(Ordering::Relaxed)
    );
    assert!(
        !Pacer::new(Some(rate), false, 0, max_hold)
            .quiet
            .load(Ordering::Relaxed)
    );
    let ceiling = Pacer::with_ceiling(None, Some(rate), true, 0, max_hold);
    assert!(!ceiling.quiet.load(Ordering::Relaxed));
}

/// A pacer at a fixed rate of `requests` per `window`, learning nothing.
fn fixed(requests: u64, window: Duration) -> Pacer {
    Pacer::new(
        Some(Rate { requests, window }),
        false,
        0,
        Duration::from_secs(180),
    )
}

/// Starts that `pacer` lets through, at the instants and on the shards of `steps` (each a
/// shard and the time since the previous step).
fn starts_let_through(pacer: &Pacer, steps: &[(usize, Duration)]) -> Vec<Instant> {
    starts_from(pacer, Instant::now(), steps)
}

fn starts_from(pacer: &Pacer, mut now: Instant, steps: &[(usize, Duration)]) -> Vec<Instant> {
    let mut started = Vec::new();
    for &(shard, after) in steps {
        now += after;
        if pacer.try_start_at(now, shard).is_ok() {
            started.push(now);
        }
    }
    started
}

/// The most starts any window of length `window` holds (a start at `s` is in the windows
/// that end in `[s, s + window)`, as the pacer counts).
fn most_in_a_window(starts: &[Instant], window: Duration) -> usize {
    let mut most = 0;
    let mut first = 0;
    for (i, &end) in starts.iter().enumerate() {
        while starts[first] + window <= end {
            first += 1;
        }
        most = most.max(i + 1 - first);
    }
    most
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(crate::fuzz_cases(300)))]

    /// Threads that take their starts in batches (far from the limit) never start more than
    /// the rate allows in any window, however they interleave and whatever their pace.
    #[test]
    fn batches_of_starts_never_pass_the_rate_in_any_window(
        requests in 1u64..3000,
        window_us in 100u64..20_000,
        threads in 1usize..SHARDS + 2,
        pace_us in 1u64..300,
        steps in proptest::collection::vec((0usize..64, 0u64..1000), 1..4000),
    ) {
        let window = Duration::from_micros(window_us);
        let pacer = fixed(requests, window);
        let steps: Vec<_> = steps
            .into_iter()
            .map(|(shard, permille)| (shard % threads, Duration::from_micros(pace_us * permille / 500)))
            .collect();
        let started = starts_let_through(&pacer, &steps);
        let most = most_in_a_window(&started, window);
        proptest::prop_assert!(most as u64 <= requests, "{most} starts in a window of {window:?}, rate {requests}");
    }
}

/// One busy thread gets the whole rate: its batches are all used, so none is lost to the log.
#[test]
fn a_busy_thread_gets_every_start_of_the_window() {
    let pacer = fixed(5000, Duration::from_secs(1));
    let step = (0, Duration::from_micros(10));
    let start = Instant::now();
    let mut started = starts_from(&pacer, start, &vec![step; 1000]);
    // Far from the limit, the thread took its starts in batches.
    assert_eq!(pacer.lanes[0].0.lock().unwrap().size, MAX_BATCH);
    started.extend(starts_from(&pacer, started[999], &vec![step; 5000]));
    assert_eq!(started.len(), 5000);
}

/// A thread that starts less often than a batch's lease records each start on its own, at its
/// own instant: nothing of the rate is spent on starts that were never made.
#[test]
fn a_seldom_thread_records_each_start_on_its_own() {
    let pacer = fixed(10_000, Duration::from_secs(60));
    let steps = vec![(3, LEASE + Duration::from_micros(1)); 200];
    let started = starts_let_through(&pacer, &steps);
    assert_eq!(started.len(), 200);
    let state = pacer.lock();
    assert_eq!(state.starts.len(), 200);
    assert_eq!(state.starts.instants(), started);
}

/// A hold the server asks for stops every thread at once, even one with starts of a batch left.
#[tokio::test(start_paused = true)]
async fn a_hold_voids_the_starts_threads_took_ahead() {
    let pacer = Pacer::new(
        Some(Rate {
            requests: 100_000,
            window: Duration::from_secs(1),
        }),
        true,
        0,
        Duration::from_secs(180),
    );
    let now = Instant::now();
    for _ in 0..64 {
        assert!(pacer.try_start_at(now, 0).is_ok());
    }
    assert!(
        pacer.lanes[0].0.lock().unwrap().left > 0,
        "a batch is in use"
    );
    pacer.observe(
        StatusCode::TOO_MANY_REQUESTS,
        &headers(&[("retry-after", "2")]),
    );
    assert_eq!(
        pacer.try_start_at(now, 0),
        Err(now + Duration::from_secs(2))
    );
}

/// A batch's unused starts are not lost to the window: a shard that stops in the middle of one
/// leaves them for the others once its lease has lapsed.
#[test]
fn the_unused_starts_of_a_lapsed_batch_go_back_to_the_window() {
    let pacer = fixed(1000, Duration::from_secs(1));
    let start = Instant::now();
    // 16 calls take batches of 1, 2, 4 and 7 (room for 128 batches of 7), used up, then one
    // more of 7, of which two are used.
    let burst = starts_from(&pacer, start, &vec![(0, Duration::from_micros(10)); 16]);
    assert_eq!(burst.len(), 16);
    assert_eq!(pacer.lock().starts.len(), 21);
    // Another shard, after the lease: every start of the window is there for it.
    let rush = starts_from(
        &pacer,
        burst[15] + LEASE,
        &vec![(1, Duration::from_micros(10)); 2000],
    );
    assert_eq!(burst.len() + rush.len(), 1000);
    assert_eq!(pacer.lock().starts.len(), 1000);
}

/// Every family of fields the pacer reads is seen on an answer that is not a 429 (the check of
/// each header's name before any parsing lets them all through), and other headers are not.
#[test]
fn each_family_of_rate_limit_fields_is_read_on_a_200() {
    let exhausted: [&[(&'static str, &'static str)]; 3] = [
        &[("ratelimit", "default;r=0;t=5")],
        &[("ratelimit-remaining", "0"), ("ratelimit-reset", "5")],
        &[
            ("inin-ratelimit-allowed", "300"),
            ("inin-ratelimit-count", "300"),
            ("inin-ratelimit-reset", "5"),
        ],
    ];
    for fields in exhausted {
        let pacer = Pacer::new(None, true, 0, Duration::from_secs(180));
        let mut map = headers(&[("date", "Sun, 06 Nov 1994 08:49:37 GMT")]);
        map.extend(headers(fields));
        pacer.observe(StatusCode::OK, &map);
        assert!(pacer.try_start().is_err(), "{fields:?}: no hold");
    }
    let pacer = Pacer::new(None, true, 0, Duration::from_secs(180));
    pacer.observe(
        StatusCode::OK,
        &headers(&[
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("content-length", "0"),
            ("x-ratelimit-remaining", "0"),
            ("rate", "0"),
            ("inin-correlation-id", "0"),
        ]),
    );
    assert!(pacer.quiet.load(Ordering::Relaxed));
    assert!(pacer.try_start().is_ok());
}

#[cfg(feature = "retry")]
#[tokio::test(start_paused = true)]
async fn a_start_counts_at_the_clock_read_its_call_lends() {
    let pacer = fixed(1, Duration::from_secs(1));
    let now = Instant::now();
    assert!(pacer.try_start().is_ok(), "a start now fills the window");
    // A call whose clock read, lent to the layers below it, is two seconds later starts in a
    // window of its own.
    let later = now + Duration::from_secs(2);
    assert!(crate::time::lend(later, || pacer.try_start()).is_ok());
    // Without a lend, a start reads the clock: the window of now is full.
    assert!(pacer.try_start().is_err());
}
