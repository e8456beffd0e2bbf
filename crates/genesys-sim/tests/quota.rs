//! The per-token quota is a fixed window and exact: request N+1 gets 429 with a Retry-After
//! that ends the window, and the next window admits again. Runs on a paused clock.

mod common;

use std::time::Duration;

use common::{api, platform_limits, token};
use genesys_sim::{SimConfig, Simulator};

#[tokio::test(start_paused = true)]
async fn request_n_plus_one_gets_429_and_the_next_window_admits() {
    let sim = Simulator::spawn(
        SimConfig::default()
            .code_variants(0.0)
            .users(1)
            .rate_limit(Some((5, Duration::from_secs(60)))),
    )
    .await
    .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    for i in 1..=5 {
        let r = api(&base, &t, "GET", "/api/v2/users", "", &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("inin-ratelimit-allowed"), Some("5"));
        assert_eq!(
            r.header("inin-ratelimit-count"),
            Some(i.to_string().as_str())
        );
        assert_eq!(r.header("inin-ratelimit-reset"), Some("60"));
    }
    tokio::time::advance(Duration::from_millis(10_500)).await;
    let r = api(&base, &t, "GET", "/api/v2/users", "", &[])
        .await
        .unwrap();
    let b = r.error_body(429, "too.many.requests");
    assert_eq!(
        b["message"],
        "Rate limit exceeded the maximum [5] requests within [60] seconds"
    );
    let retry_after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    // 49.5 s are left in the window: the smallest whole number of seconds that ends it.
    assert_eq!(retry_after, 50);
    assert_eq!(r.header("inin-ratelimit-count"), Some("5"));

    // Other tokens have their own quota.
    let other = token(&base).await;
    assert_eq!(
        api(&base, &other, "GET", "/api/v2/users", "", &[])
            .await
            .unwrap()
            .status,
        200
    );

    tokio::time::advance(Duration::from_secs(retry_after - 1)).await;
    let r = api(&base, &t, "GET", "/api/v2/users", "", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 429, "still inside the window");
    assert_eq!(r.header("retry-after"), Some("1"));
    tokio::time::advance(Duration::from_secs(1)).await;
    let r = api(&base, &t, "GET", "/api/v2/users", "", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "the next window admits again");
    assert_eq!(r.header("inin-ratelimit-count"), Some("1"));
    assert_eq!(sim.stats().rate_limited, 2);
}

#[tokio::test(start_paused = true)]
async fn the_default_quota_is_300_per_minute() {
    let sim = Simulator::spawn(SimConfig::default().code_variants(0.0).users(1))
        .await
        .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    for _ in 0..300 {
        assert_eq!(
            api(&base, &t, "GET", "/api/v2/users?pageSize=1", "", &[])
                .await
                .unwrap()
                .status,
            200
        );
    }
    let r = api(&base, &t, "GET", "/api/v2/users?pageSize=1", "", &[])
        .await
        .unwrap();
    let b = r.error_body(429, "too.many.requests");
    assert_eq!(
        b["message"],
        "Rate limit exceeded the maximum [300] requests within [60] seconds"
    );
    let retry_after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after));
}

#[tokio::test]
async fn headers_can_be_switched_off_and_the_quota_removed() {
    let sim = Simulator::spawn(SimConfig::default().users(1).ratelimit_headers(false))
        .await
        .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    let r = api(&base, &t, "GET", "/api/v2/users", "", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.header("inin-ratelimit-allowed").is_none());
    assert!(r.header("inin-correlation-id").is_some());

    let sim = Simulator::spawn(SimConfig::default().users(1).rate_limit(None))
        .await
        .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    for _ in 0..400 {
        assert_eq!(
            api(&base, &t, "GET", "/api/v2/users?pageSize=1", "", &[])
                .await
                .unwrap()
                .status,
            200
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_one_second_window_with_headers_on_half_the_answers() {
    let sim = Simulator::spawn(
        SimConfig::default()
            .users(1)
            .rate_limit(Some((40, Duration::from_secs(1))))
            .ratelimit_headers_share(0.5)
            .seed(3),
    )
    .await
    .unwrap();
    let base = sim.base_url();
    let t = token(&base).await;
    let mut with_headers = 0;
    for _ in 0..40 {
        let r = api(&base, &t, "GET", "/api/v2/users?pageSize=1", "", &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        if let Some(reset) = r.header("inin-ratelimit-reset") {
            assert_eq!(reset, "1", "a 1-second window never resets later than 1 s");
            assert_eq!(r.header("inin-ratelimit-allowed"), Some("40"));
            with_headers += 1;
        }
    }
    assert!((10..=30).contains(&with_headers), "{with_headers} of 40");
    let r = api(&base, &t, "GET", "/api/v2/users?pageSize=1", "", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    let body = r.json();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("within [1] seconds")
    );
    // The limit's key names a rate per minute: its value is the limits endpoint's, 40 a
    // second being 2400 a minute.
    assert_eq!(
        body["limit"]["key"],
        "client.credentials.token.rate.per.minute"
    );
    assert_eq!(body["limit"]["value"], 2400);
    tokio::time::advance(Duration::from_secs(1)).await;
    let limits = platform_limits(&base, &t).await.json();
    let listed = limits["entities"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["key"] == body["limit"]["key"])
        .unwrap()
        .clone();
    assert_eq!(listed["value"], body["limit"]["value"]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_can_be_an_http_date_or_malformed() {
    for (format, check) in [
        (
            genesys_sim::RetryAfterFormat::HttpDate,
            (|v: &str| {
                let at = httpdate::parse_http_date(v).expect("an HTTP-date");
                let wait = at
                    .duration_since(std::time::SystemTime::now())
                    .unwrap_or_default();
                // Never earlier than the 60 s window; at most a second and a bit later.
                assert!(
                    wait >= Duration::from_secs(59) && wait <= Duration::from_secs(62),
                    "{wait:?}"
                );
            }) as fn(&str),
        ),
        (genesys_sim::RetryAfterFormat::Malformed, |v: &str| {
            assert_eq!(v, "60.0")
        }),
    ] {
        let sim = Simulator::spawn(
            SimConfig::default()
                .users(1)
                .rate_limit(Some((1, Duration::from_secs(60))))
                .retry_after_format(format),
        )
        .await
        .unwrap();
        let base = sim.base_url();
        let t = token(&base).await;
        assert_eq!(
            api(&base, &t, "GET", "/api/v2/users", "", &[])
                .await
                .unwrap()
                .status,
            200
        );
        let r = api(&base, &t, "GET", "/api/v2/users", "", &[])
            .await
            .unwrap();
        assert_eq!(r.status, 429);
        check(r.header("retry-after").unwrap());
    }
}

#[tokio::test(start_paused = true)]
async fn a_client_quota_is_shared_by_all_of_the_clients_tokens() {
    let sim = Simulator::spawn(
        SimConfig::default()
            .code_variants(0.0)
            .users(1)
            .rate_limit(Some((100, Duration::from_secs(60))))
            .client_rate_limit(Some((6, Duration::from_secs(60)))),
    )
    .await
    .unwrap();
    let base = sim.base_url();
    // Three processes, three tokens, one client.
    let tokens = [token(&base).await, token(&base).await, token(&base).await];
    for t in tokens.iter().cycle().take(6) {
        let r = api(&base, t, "GET", "/api/v2/users", "", &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    for t in &tokens {
        let r = api(&base, t, "GET", "/api/v2/users", "", &[])
            .await
            .unwrap();
        let b = r.error_body(429, "too.many.requests");
        assert_eq!(
            b["message"],
            "Rate limit exceeded the maximum [6] requests within [60] seconds"
        );
        assert_eq!(r.header("retry-after"), Some("60"));
    }
    assert_eq!(sim.stats().rate_limited, 3);
    tokio::time::advance(Duration::from_secs(60)).await;
    let r = api(&base, &tokens[0], "GET", "/api/v2/users", "", &[])
        .await
        .unwrap();
    assert_eq!(r.status, 200, "the next window admits again");
}
