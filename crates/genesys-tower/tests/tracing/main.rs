//! What the layers log: an event per attempt with its status, delay and reason, and never a
//! secret. A test binary of its own, so that no other test registers the event call sites first
//! (tracing caches each call site's interest process-wide).

use std::io;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use genesys_tower::auth::{AuthLayer, Token, token_source_fn};
use genesys_tower::retry::{Jitter, RetryLayer, RetryPolicy};
use genesys_tower::{Body, BoxError};
use http::{Request, Response, StatusCode};
use tower::{ServiceBuilder, ServiceExt, service_fn};

/// Logs into a buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn each_attempt_is_logged_with_its_status_delay_and_reason_and_no_secret() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer({
            let logs = logs.clone();
            move || logs.clone()
        })
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let fetches = Arc::new(AtomicU32::new(0));
    let source = {
        let fetches = fetches.clone();
        token_source_fn(move || {
            let i = fetches.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok::<_, BoxError>(Token::new(
                    format!("s3cr3t-token-{i}"),
                    Some(Duration::from_secs(3600)),
                ))
            }
        })
    };
    // A 503, then a 401 (the token is refreshed and the request sent again), then a 200.
    let calls = Arc::new(AtomicU32::new(0));
    let server = {
        let calls = calls.clone();
        service_fn(move |req: Request<Body>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            assert!(req.headers()["authorization"].is_sensitive());
            let status = [503, 401, 200][n.min(2) as usize];
            async move {
                Ok::<_, BoxError>(
                    Response::builder()
                        .status(status)
                        .body(String::new())
                        .unwrap(),
                )
            }
        })
    };
    let policy = RetryPolicy::builder()
        .jitter(Jitter::None)
        .retry_after_spread(0.0, Duration::ZERO)
        .no_budget()
        .build();
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(policy))
        .layer(AuthLayer::new(source))
        .service(server);
    let res = svc
        .oneshot(
            Request::get("http://api.test/x")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        2,
        "a fetch, a refresh after the 401"
    );

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let retried = text
        .lines()
        .find(|l| l.contains("attempt failed; retrying"))
        .unwrap_or_else(|| panic!("no retry event in:\n{text}"));
    for field in ["attempt=1", "status=503", "delay_ms=500", "reason="] {
        assert!(retried.contains(field), "{field} missing from: {retried}");
    }
    assert!(text.contains("attempt done attempt=2 status=200"), "{text}");
    assert!(text.contains("401: sending the request again"), "{text}");
    assert!(
        !text.contains("s3cr3t"),
        "a token reached the logs:\n{text}"
    );
}
