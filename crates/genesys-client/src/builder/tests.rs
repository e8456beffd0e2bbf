//! Tests of `builder`.
use super::*;

#[test]
fn builder_refuses_missing_pieces() {
    let err = GenesysClient::builder()
        .client_credentials("a", "b")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("region"), "{err}");
    let err = GenesysClient::builder()
        .region(Region::UsEast1)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("credentials"), "{err}");
    let dbg = format!(
        "{:?}",
        GenesysClient::builder().client_credentials("id", "hunter2")
    );
    assert!(!dbg.contains("hunter2"), "{dbg}");
}

#[test]
fn rates_below_one_per_window_are_refused_with_a_message() {
    let base = || {
        GenesysClient::builder()
            .base_url("http://127.0.0.1:1")
            .client_credentials("id", "secret")
    };
    let err = base()
        .pacing(0, Duration::from_secs(60))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("pacing"), "{err}");
    let err = base().max_rate(5, Duration::ZERO).build().unwrap_err();
    assert!(err.to_string().contains("max_rate"), "{err}");
    assert!(
        base()
            .max_rate(100, Duration::from_secs(60))
            .build()
            .is_ok()
    );
}

/// Never gives a token.
struct Hangs;

impl TokenSource for Hangs {
    async fn fetch(&self) -> Result<Token, genesys_tower::BoxError> {
        std::future::pending().await
    }
}

#[tokio::test(start_paused = true)]
async fn a_token_source_that_never_answers_fails_the_call_at_the_fetch_timeout() {
    let five = Duration::from_secs(5);
    for (builder, limit) in [
        (
            GenesysClient::builder().token_source(Hangs),
            AuthLayer::<Hangs>::DEFAULT_FETCH_TIMEOUT,
        ),
        (
            GenesysClient::builder()
                .token_source(Hangs)
                .token_fetch_timeout(five),
            five,
        ),
    ] {
        let client = builder.base_url("http://127.0.0.1:9").build().unwrap();
        let started = tokio::time::Instant::now();
        let err = client.get_user("u-1").await.unwrap_err();
        let waited = started.elapsed();
        assert!(
            err.to_string()
                .contains(&format!("no token within {limit:?}")),
            "{err}"
        );
        assert_eq!(waited, limit, "{err}");
    }
}

#[test]
fn client_credentials_are_given_the_longest_their_retry_loop_takes() {
    let minute = Duration::from_secs(60);
    // Four token requests of at most a minute, and three waits of at most a minute between.
    assert_eq!(token_fetch_bound(TokenRetry::default(), minute), 7 * minute);
    let once = TokenRetry {
        max_attempts: 0,
        ..TokenRetry::default()
    };
    assert_eq!(token_fetch_bound(once, minute), minute);
    let forever = TokenRetry {
        max_attempts: u32::MAX,
        ..TokenRetry::default()
    };
    assert_eq!(token_fetch_bound(forever, Duration::MAX), Duration::MAX);
}
