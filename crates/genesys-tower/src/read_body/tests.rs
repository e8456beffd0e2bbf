use super::*;
use http::Request;
use http_body::{Frame, SizeHint};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tower::{Layer, ServiceBuilder, ServiceExt, service_fn};

/// A body of `chunk`-byte frames that never ends (or declares `declared` bytes), counting
/// what was handed out.
struct Endless {
    chunk: usize,
    served: Arc<AtomicUsize>,
    declared: Option<u64>,
}

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.served.fetch_add(self.chunk, Ordering::SeqCst);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; self.chunk])))))
    }

    fn size_hint(&self) -> SizeHint {
        self.declared
            .map_or_else(SizeHint::new, SizeHint::with_exact)
    }
}

/// One chunk, then nothing ever again.
struct Stalls(Option<Bytes>);

impl http_body::Body for Stalls {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.0.take() {
            Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
            None => Poll::Pending,
        }
    }
}

type Leaf = tower::util::BoxCloneService<Request<()>, Response<Endless>, std::convert::Infallible>;

fn endless(status: u16, declared: Option<u64>, served: Arc<AtomicUsize>) -> ReadBody<Leaf> {
    let svc = service_fn(move |_req: Request<()>| {
        let served = served.clone();
        async move {
            let mut r = Response::new(Endless {
                chunk: 8 * 1024,
                served,
                declared,
            });
            *r.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok::<_, std::convert::Infallible>(r)
        }
    });
    ServiceBuilder::new()
        .layer(ReadBodyLayer::new().max_success_body(1 << 20))
        .service(Leaf::new(svc))
}

#[tokio::test]
async fn an_endless_success_body_fails_with_memory_bounded() {
    let served = Arc::new(AtomicUsize::new(0));
    let err = endless(200, None, served.clone())
        .oneshot(Request::new(()))
        .await
        .unwrap_err();
    let err = err.downcast_ref::<Error>().unwrap();
    assert!(err.is_too_large(), "{err}");
    // At most the limit and one chunk were read.
    assert!(served.load(Ordering::SeqCst) <= (1 << 20) + 8 * 1024);
}

#[tokio::test]
async fn a_declared_huge_body_fails_before_reading() {
    let served = Arc::new(AtomicUsize::new(0));
    let err = endless(200, Some(1_000_000_000_000), served.clone())
        .oneshot(Request::new(()))
        .await
        .unwrap_err();
    assert!(err.downcast_ref::<Error>().unwrap().is_too_large());
    assert_eq!(served.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_answer_to_a_head_is_not_judged_by_the_length_it_declares() {
    // A HEAD's answer names the resource's length and sends no body.
    let svc = service_fn(|_req: Request<()>| async {
        let response = Response::builder()
            .header(header::CONTENT_LENGTH, "1000000000")
            .body(String::new())
            .unwrap();
        Ok::<_, std::convert::Infallible>(response)
    });
    let response = ReadBodyLayer::new()
        .max_success_body(1 << 20)
        .layer(svc)
        .oneshot(Request::new(()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.body().as_bytes().is_some_and(Bytes::is_empty));
}

#[tokio::test]
async fn an_endless_error_body_is_cut_and_keeps_its_status() {
    let served = Arc::new(AtomicUsize::new(0));
    let response = endless(503, None, served.clone())
        .oneshot(Request::new(()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = response.into_body().collect_bytes().await.unwrap();
    assert_eq!(body.len(), DEFAULT_MAX_ERROR_BODY);
    assert!(served.load(Ordering::SeqCst) <= DEFAULT_MAX_ERROR_BODY + 8 * 1024);
}

#[tokio::test(start_paused = true)]
async fn a_stalled_body_fails_after_the_idle_timeout() {
    let svc = service_fn(|_req: Request<()>| async {
        Ok::<_, std::convert::Infallible>(Response::new(Stalls(Some(Bytes::from_static(
            b"{\"half\":",
        )))))
    });
    let started = tokio::time::Instant::now();
    let err = ServiceBuilder::new()
        .layer(ReadBodyLayer::new().idle_timeout(Some(Duration::from_secs(5))))
        .service(svc)
        .oneshot(Request::new(()))
        .await
        .unwrap_err();
    match err.downcast_ref::<Error>() {
        Some(Error::Stalled { read: 8, idle, .. }) => {
            assert_eq!(*idle, Duration::from_secs(5))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(started.elapsed(), Duration::from_secs(5));
}
