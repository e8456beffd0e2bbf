//! Bodies that never end, declare a terabyte, stall or drip, from the simulator: every call
//! fails within its attempt timeout, with the bytes read bounded (counted by the leaf, on a
//! paused clock).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use genesys_client::{Body, GenesysClient, GenesysError};
use genesys_sim::{Faults, SimConfig, SimHandle, Simulator};
use http::Request;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::time::Instant;

/// A response body that counts the bytes it hands out.
struct Counting {
    inner: Incoming,
    read: Arc<AtomicUsize>,
}

impl http_body::Body for Counting {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            self.read.fetch_add(data.len(), Ordering::SeqCst);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

async fn sim(faults: &str) -> SimHandle {
    Simulator::spawn(
        SimConfig::default()
            .users(2)
            .faults(faults.parse::<Faults>().unwrap()),
    )
    .await
    .unwrap()
}

/// A client over a counting hyper leaf, one attempt per call.
fn client(
    sim: &SimHandle,
    configure: impl FnOnce(genesys_client::GenesysClientBuilder) -> genesys_client::GenesysClientBuilder,
) -> (GenesysClient, Arc<AtomicUsize>) {
    let read = Arc::new(AtomicUsize::new(0));
    let hyper: Client<HttpConnector, Body> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let counter = read.clone();
    let leaf = tower::service_fn(move |req: Request<Body>| {
        let hyper = hyper.clone();
        let read = counter.clone();
        async move {
            let response = hyper.request(req).await?;
            Ok::<_, hyper_util::client::legacy::Error>(
                response.map(|inner| Counting { inner, read }),
            )
        }
    });
    let builder = GenesysClient::builder()
        .base_url(sim.base_url())
        .client_credentials("demo-client", "demo-secret")
        .retry_policy(
            GenesysClient::retry_policy_builder()
                .max_attempts(1)
                .build(),
        )
        .no_pacing()
        .service(leaf);
    (configure(builder).build().unwrap(), read)
}

#[tokio::test(start_paused = true)]
async fn an_endless_body_fails_at_the_limit_and_is_not_retried() {
    let sim = sim("endless-body=1").await;
    let limit = 256 * 1024;
    let (client, read) = client(&sim, |b| {
        b.max_response_body(limit).retry_policy(
            GenesysClient::retry_policy_builder()
                .max_attempts(4)
                .build(),
        )
    });
    let id = sim.user_ids()[0].clone();
    let err = client.get_user(&id).await.unwrap_err();
    assert!(
        matches!(err, GenesysError::ResponseTooLarge { limit: l, .. } if l == limit),
        "{err}"
    );
    assert!(err.to_string().contains("limit"), "{err}");
    // Memory bounded: the limit and at most one read buffer more.
    let read = read.load(Ordering::SeqCst);
    assert!(read <= limit + 512 * 1024, "{read} bytes read");
    // Not retried, although the policy allows 4 attempts.
    assert_eq!(sim.stats().count("GET /api/v2/users/{userId}", 200), 1);
}

#[tokio::test(start_paused = true)]
async fn a_declared_terabyte_fails_before_the_body_is_read() {
    let sim = sim("huge-body=1").await;
    let (client, read) = client(&sim, |b| b);
    let token_body = read.load(Ordering::SeqCst);
    let id = sim.user_ids()[0].clone();
    let err = client.get_user(&id).await.unwrap_err();
    assert!(
        matches!(err, GenesysError::ResponseTooLarge { .. }),
        "{err}"
    );
    // Nothing but the token answer (and at most what came in with the headers).
    assert!(read.load(Ordering::SeqCst) - token_body < 64 * 1024);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_body_fails_within_the_attempt_timeout() {
    let sim = sim("stall-body=1").await;
    let (c, _) = client(&sim, |b| b.attempt_timeout(Duration::from_secs(10)));
    let id = sim.user_ids()[0].clone();
    let started = Instant::now();
    let err = c.get_user(&id).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(10) && took < Duration::from_secs(11),
        "{took:?}: {err}"
    );

    // A shorter idle timeout ends it sooner, with an error that says the body stalled.
    let (c, _) = client(&sim, |b| {
        b.attempt_timeout(Duration::from_secs(10))
            .body_idle_timeout(Duration::from_secs(2))
    });
    let started = Instant::now();
    let err = c.get_user(&id).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(3),
        "{took:?}: {err}"
    );
    assert!(format!("{err:?}").contains("Stalled"), "{err:?}");
}

#[tokio::test(start_paused = true)]
async fn a_dripping_body_fails_within_the_attempt_timeout() {
    // One byte every 5 s never trips the 30 s idle timeout; the attempt timeout covers the body.
    let sim = sim("drip-body=1").await;
    let (client, _) = client(&sim, |b| b.attempt_timeout(Duration::from_secs(12)));
    let id = sim.user_ids()[0].clone();
    let started = Instant::now();
    let err = client.get_user(&id).await.unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(12) && took < Duration::from_secs(13),
        "{took:?}: {err}"
    );
}

#[tokio::test(start_paused = true)]
async fn bodies_within_the_limits_are_unaffected() {
    let sim = sim("none").await;
    let (client, _) = client(&sim, |b| b.attempt_timeout(Duration::from_secs(5)));
    let id = sim.user_ids()[0].clone();
    assert_eq!(client.get_user(&id).await.unwrap().id, id);
}
