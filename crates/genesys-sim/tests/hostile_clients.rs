//! What a careless or hostile client can do to the simulator: configurations it refuses,
//! connections it closes, tokens it forgets.

mod common;

use std::time::Duration;

use genesys_sim::{Faults, SimConfig, SimError, Simulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Values no quota, body limit or fault can work with are refused with what is allowed.
#[tokio::test]
async fn unworkable_settings_are_refused_with_what_is_allowed() {
    let refused = |config: SimConfig| async move {
        match Simulator::spawn(config).await {
            Err(SimError::Config(message)) => message,
            Err(other) => panic!("another error: {other}"),
            Ok(_) => panic!("accepted"),
        }
    };
    for limit in [(0, Duration::from_secs(60)), (5, Duration::ZERO)] {
        let message = refused(SimConfig::default().client_rate_limit(Some(limit))).await;
        assert!(message.contains("client rate limit"), "{message}");
    }
    let message = refused(SimConfig {
        max_body_bytes: 16 * 1024 * 1024,
        ..SimConfig::default()
    })
    .await;
    assert!(message.contains("at most 8388608 bytes"), "{message}");
    let err = "revoke-every=1us".parse::<Faults>().unwrap_err();
    assert!(err.to_string().contains("at least 1ms"), "{err}");
}

/// A connection that sends part of a request's head and stops is closed after 30 s, as a
/// real server does, rather than held for ever.
#[tokio::test(start_paused = true)]
async fn a_request_head_never_finished_is_disconnected() {
    let sim = Simulator::spawn(SimConfig::default().users(1))
        .await
        .unwrap();
    let mut stream = TcpStream::connect(sim.addr()).await.unwrap();
    stream
        .write_all(b"GET /api/v2/users HTTP/1.1\r\n")
        .await
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    // Closed, with or without a 408 first (a minute at most: a connection held for ever fails
    // the test rather than hang it).
    let closed = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the connection is still open after a minute"
    );
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(40),
        "{waited:?}"
    );
}

/// A request whose body stops coming is answered 408 after 30 s without any of it, and the
/// connection closed, rather than held for ever (the head alone has its own timeout).
#[tokio::test(start_paused = true)]
async fn a_request_body_never_finished_is_answered_and_disconnected() {
    let sim = Simulator::spawn(SimConfig::default().users(1))
        .await
        .unwrap();
    let mut stream = TcpStream::connect(sim.addr()).await.unwrap();
    stream
        .write_all(
            b"PATCH /api/v2/users/u1 HTTP/1.1\r\nhost: sim\r\ncontent-type: application/json\r\n\
              content-length: 10\r\n\r\n{\"",
        )
        .await
        .unwrap();
    let start = Instant::now();
    let mut answer = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(120), stream.read_to_end(&mut answer)).await;
    assert!(
        closed.is_ok(),
        "the connection is still open after two minutes"
    );
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_secs(30) && waited < Duration::from_secs(40),
        "{waited:?}"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request.timeout"), "{answer}");
}

/// Tokens no one presents again are not kept for ever: once they expire they no longer count
/// as live.
#[tokio::test(start_paused = true)]
async fn expired_tokens_are_not_live() {
    let sim = Simulator::spawn(
        SimConfig::default()
            .users(1)
            .token_ttl(Duration::from_secs(1)),
    )
    .await
    .unwrap();
    let base = sim.base_url();
    for _ in 0..40 {
        common::token(&base).await;
    }
    tokio::time::advance(Duration::from_secs(2)).await;
    common::token(&base).await;
    assert_eq!(sim.revoke_tokens(), 1);
}
