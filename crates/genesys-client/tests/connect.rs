//! The default leaf's connect timeout, against a listener whose accept queue is full (the kernel
//! then drops new connections' SYNs, as a firewall does) and against a proxy that never answers
//! a CONNECT: a connection that does not open is a connection failure, retried for any request
//! and never an unknown outcome.

mod common;

use std::time::Duration;

use genesys_client::proxy::Proxy;
use genesys_client::{GenesysClient, GenesysError};
use genesys_tower::auth::{Token, token_source_fn};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

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
    let client = client(&format!("http://{addr}"), Proxy::none());
    assert_connect_failure(&client).await;
    drop(listener);
}

#[tokio::test]
async fn a_proxy_that_never_answers_is_a_connect_failure_not_an_unknown_outcome() {
    // Takes connections, and never answers a CONNECT.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let client = client(
        "http://api.behind-proxy.test:9",
        Proxy::url(format!("http://{addr}")),
    );
    let err = assert_connect_failure(&client).await;
    assert!(
        err.to_string()
            .contains("no tunnel to api.behind-proxy.test:9 within"),
        "{err}"
    );
}

/// A client of `api` through `proxy`, with a token at hand, a connect timeout of 200 ms and
/// two attempts a call.
fn client(api: &str, proxy: Proxy) -> GenesysClient {
    common::quick_retries(
        GenesysClient::builder()
            .base_url(api)
            .token_source(token_source_fn(|| async {
                Ok(Token::new("t", Some(Duration::from_secs(3600))))
            }))
            .proxy(proxy)
            .connect_timeout(Duration::from_millis(200))
            // Longer than the connect timeout: the attempt's timeout would make the failure
            // ambiguous.
            .attempt_timeout(Duration::from_secs(20)),
    )
    .build()
    .unwrap()
}

/// A data action through `client` fails as a connection failure, retried once, never as one
/// that may have been applied.
async fn assert_connect_failure(client: &GenesysClient) -> GenesysError {
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
    err
}
