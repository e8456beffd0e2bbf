//! The default leaf's TCP connect timeout, against a listener whose accept queue is full (the
//! kernel then drops new connections' SYNs, as a firewall does): a connection that does not open
//! is a connection failure, retried for any request and never an unknown outcome.

use std::time::Duration;

use genesys_client::{GenesysClient, GenesysError};
use genesys_tower::auth::{Token, token_source_fn};
use tokio::net::{TcpSocket, TcpStream};

#[tokio::test]
async fn a_connection_that_never_opens_is_a_connect_failure_not_an_unknown_outcome() {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    // Never accepted: once its queue is full, the kernel answers no new connection.
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut queued = Vec::new();
    loop {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) if queued.len() < 16 => queued.push(stream),
            Ok(Ok(_)) => panic!("the listener's queue never filled"),
            _ => break,
        }
    }
    let client = GenesysClient::builder()
        .base_url(format!("http://{addr}"))
        .login_url(format!("http://{addr}"))
        .token_source(token_source_fn(|| async {
            Ok(Token::new("t", Some(Duration::from_secs(3600))))
        }))
        .connect_timeout(Duration::from_millis(200))
        // Longer than the connect timeout: the attempt's timeout would make the failure
        // ambiguous.
        .attempt_timeout(Duration::from_secs(20))
        .retry_policy(
            GenesysClient::retry_policy_builder()
                .max_attempts(2)
                .base_delay(Duration::from_millis(1))
                .build(),
        )
        .no_pacing()
        .build()
        .unwrap();
    let err = client
        .execute_action("echo", &serde_json::json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, GenesysError::Transport { .. }),
        "a connection failure: {err}"
    );
    assert!(!err.may_have_been_applied(), "{err}");
    let retries = client.metrics().snapshot().retries.connect;
    assert_eq!(
        retries, 1,
        "retried as a connection failure, safe for any request"
    );
    drop(listener);
}
