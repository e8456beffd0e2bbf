use super::*;
use http_body_util::{Full, StreamBody};

fn stream(chunks: &[&'static str]) -> Body {
    let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
        .iter()
        .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
        .collect();
    Body::new(StreamBody::new(futures_util::stream::iter(frames)))
}

#[tokio::test]
async fn full_body_is_replayed_without_copy() {
    let bytes = Bytes::from_static(b"hello");
    let body = Body::new(Full::new(bytes.clone())).buffer(2).await.unwrap();
    // Past the limit, but already whole in memory: still replayable.
    let copy = body.try_clone().unwrap();
    assert_eq!(copy.as_bytes().unwrap().as_ptr(), bytes.as_ptr());
    assert_eq!(body.collect_bytes().await.unwrap(), "hello");
}

/// Empty data frames without end, every other poll pending (as frames that come over a
/// connection), counting the frames handed out.
struct EmptyFrames(std::sync::Arc<std::sync::atomic::AtomicUsize>, bool);

impl http_body::Body for EmptyFrames {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.1 = !self.1;
        if self.1 {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Poll::Ready(Some(Ok(Frame::data(Bytes::new()))))
    }
}

#[tokio::test]
async fn a_stream_of_empty_frames_is_read_no_further_than_the_limit() {
    let read = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let body = Body::new(EmptyFrames(read.clone(), false));
    let buffered = tokio::time::timeout(std::time::Duration::from_secs(10), body.buffer(1024))
        .await
        .expect("empty frames were read without end");
    let body = buffered.unwrap();
    assert!(
        !body.is_replayable(),
        "a stream past the limit is not replayable"
    );
    assert_eq!(read.load(std::sync::atomic::Ordering::Relaxed), 1025);
}

#[tokio::test]
async fn body_passed_twice_is_not_boxed_again() {
    let body = Body::new(Body::from("abc"));
    assert!(body.is_replayable());
}

#[tokio::test]
async fn stream_within_limit_becomes_replayable() {
    let body = stream(&["ab", "cd", "ef"]).buffer(6).await.unwrap();
    assert_eq!(body.as_bytes().unwrap(), "abcdef");
}

#[test]
fn body_is_send_and_sync_so_it_boxes() {
    fn send_sync<T: Send + Sync + 'static>() {}
    send_sync::<Body>();
    let _boxed: http_body_util::combinators::BoxBody<Bytes, BoxError> = Body::empty().boxed();
}

#[tokio::test]
async fn replay_bodies_round_trip() {
    let full = Full::new(Bytes::from_static(b"full"));
    let replay = full.into_replay();
    assert!(
        replay.is_replayable(),
        "a Full body is taken in memory, unboxed"
    );
    let again = Full::<Bytes>::from_replay(replay).unwrap();
    assert_eq!(again.collect().await.unwrap().to_bytes(), "full");

    let text = String::from_replay(String::from("text").into_replay()).unwrap();
    assert_eq!(text, "text");
    assert!(String::from_replay(Body::from_bytes(Bytes::from_static(b"\xff"))).is_none());

    // A stream past the limit: streaming types take it, whole-body types refuse it.
    let long = stream(&["ab", "cd", "ef"]).buffer(1).await.unwrap();
    assert!(rebuild::<Full<Bytes>>(long).is_err());
    let long = stream(&["ab", "cd", "ef"]).buffer(1).await.unwrap();
    let boxed = rebuild::<UnsyncBoxBody<Bytes, BoxError>>(long).unwrap();
    assert_eq!(boxed.collect().await.unwrap().to_bytes(), "abcdef");
}

#[cfg(feature = "axum")]
#[tokio::test]
async fn axum_bodies_replay_and_stream() {
    let replay = axum_core::body::Body::from("axum").into_replay();
    let replay = replay.buffer(1024).await.unwrap();
    let again = axum_core::body::Body::from_replay(replay).unwrap();
    assert_eq!(again.collect().await.unwrap().to_bytes(), "axum");
    let long = stream(&["ab", "cd", "ef"]).buffer(1).await.unwrap();
    let streamed = axum_core::body::Body::from_replay(long).unwrap();
    assert_eq!(streamed.collect().await.unwrap().to_bytes(), "abcdef");
}

#[cfg(feature = "reqwest")]
#[tokio::test]
async fn reqwest_bodies_replay_and_stream() {
    let replay = reqwest::Body::from("reqwest").into_replay();
    let replay = replay.buffer(1024).await.unwrap();
    assert!(replay.is_replayable());
    let again = reqwest::Body::from_replay(replay).unwrap();
    assert_eq!(again.as_bytes(), Some(&b"reqwest"[..]));
    let long = stream(&["ab", "cd", "ef"]).buffer(1).await.unwrap();
    let streamed = reqwest::Body::from_replay(long).unwrap();
    assert_eq!(streamed.collect().await.unwrap().to_bytes(), "abcdef");
}

#[tokio::test]
async fn stream_past_limit_is_sent_once_and_whole() {
    let body = stream(&["ab", "cd", "ef", "gh"]).buffer(3).await.unwrap();
    assert!(!body.is_replayable());
    assert!(body.try_clone().is_none());
    assert_eq!(body.collect_bytes().await.unwrap(), "abcdefgh");
}
