//! A body type the layers can replay.
//!
//! Retrying a request, re-sending it after a 401 and fingerprinting it for idempotency all need the
//! request body more than once. [`Body`] is the one body type every layer of this crate hands to the
//! service below it: a body that is already in memory is cloned by reference count (no copy), and a
//! streaming body is read into memory up to a bound by [`Body::buffer`]. A streaming body larger than
//! the bound is sent once, as it came, and is never replayed, so no part of it is ever sent twice.
//!
//! Any [`http_body::Body`] with `Bytes` data converts into [`Body`] with [`Body::new`]; a [`Body`]
//! passed to [`Body::new`] is taken as it is, without another layer of boxing.
//!
//! ```
//! use genesys_tower::body::Body;
//!
//! let body = Body::from("{\"name\":\"Ada\"}");
//! let copy = body.try_clone().expect("bodies in memory are replayable");
//! assert_eq!(copy.as_bytes().unwrap().as_ref(), b"{\"name\":\"Ada\"}");
//! ```

use std::any::Any;
use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;

use crate::BoxError;

/// The default bound for buffering a streaming body so that it can be replayed: 1 MiB.
pub const DEFAULT_REPLAY_LIMIT: usize = 1024 * 1024;

/// A request or response body that can be replayed when it is held in memory.
pub struct Body {
    inner: Inner,
}

enum Inner {
    /// The whole body in memory: replayable. `data` is taken when polled.
    Full {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    /// A streaming body: what was already read (`prefix`), then the rest. Sent once.
    Streaming {
        prefix: VecDeque<Frame<Bytes>>,
        rest: UnsyncBoxBody<Bytes, BoxError>,
    },
}

impl Body {
    /// Wraps any body whose data is [`Bytes`]. A [`Body`] is returned as it is.
    pub fn new<B>(body: B) -> Self
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        match try_downcast::<Body, B>(body) {
            Ok(body) => body,
            Err(body) => Body {
                inner: Inner::Streaming {
                    prefix: VecDeque::new(),
                    rest: body.map_err(Into::into).boxed_unsync(),
                },
            },
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self::from_bytes(Bytes::new())
    }

    /// A body held in memory.
    pub fn from_bytes(bytes: Bytes) -> Self {
        Body {
            inner: Inner::Full {
                data: Some(bytes),
                trailers: None,
            },
        }
    }

    /// The body's bytes, when it is held in memory and has not been read yet.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match &self.inner {
            Inner::Full { data, .. } => data.as_ref(),
            Inner::Streaming { .. } => None,
        }
    }

    /// Whether [`try_clone`](Body::try_clone) would succeed.
    pub fn is_replayable(&self) -> bool {
        self.as_bytes().is_some()
    }

    /// A copy of the body, when it is held in memory. The copy shares the bytes (no copy is made).
    pub fn try_clone(&self) -> Option<Body> {
        match &self.inner {
            Inner::Full {
                data: Some(data),
                trailers,
            } => Some(Body {
                inner: Inner::Full {
                    data: Some(data.clone()),
                    trailers: trailers.clone(),
                },
            }),
            _ => None,
        }
    }

    /// Reads a streaming body into memory, up to `limit` bytes, so that it can be replayed.
    ///
    /// A body already in memory is returned at once, whatever its size. A streaming body that ends
    /// within `limit` bytes comes back in memory (replayable). One that goes past `limit` comes back
    /// as a body that yields what was read and then the rest of the stream, exactly once: it is not
    /// replayable, and nothing of it is lost.
    pub async fn buffer(self, limit: usize) -> Result<Body, BoxError> {
        let (mut prefix, mut rest) = match self.inner {
            full @ Inner::Full { .. } => return Ok(Body { inner: full }),
            Inner::Streaming { prefix, rest } => (prefix, rest),
        };
        // Frames already read count against the limit too.
        let mut len: usize = prefix
            .iter()
            .filter_map(|f| f.data_ref().map(Bytes::len))
            .sum();
        loop {
            // A body that has ended is kept in memory, even past the limit: it is already read
            // (a large `Full` body, say), so keeping it costs nothing more.
            let ended = http_body::Body::is_end_stream(&rest);
            if !ended && len > limit {
                break;
            }
            let frame = if ended { None } else { rest.frame().await };
            match frame {
                None => return Ok(Body::from_frames(prefix, len)),
                Some(frame) => {
                    let frame = frame?;
                    if let Some(data) = frame.data_ref() {
                        len = len.saturating_add(data.len());
                    }
                    prefix.push_back(frame);
                }
            }
        }
        Ok(Body {
            inner: Inner::Streaming { prefix, rest },
        })
    }

    fn from_frames(frames: VecDeque<Frame<Bytes>>, len: usize) -> Body {
        let count = frames.iter().filter(|f| f.is_data()).count();
        let mut data = BytesMut::new();
        let mut single = None;
        let mut trailers = None;
        for frame in frames {
            match frame.into_data() {
                // One data frame: keep its `Bytes` as it is, without a copy.
                Ok(bytes) if count == 1 => single = Some(bytes),
                Ok(bytes) => {
                    data.reserve(len);
                    data.extend_from_slice(&bytes)
                }
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        Body {
            inner: Inner::Full {
                data: Some(single.unwrap_or_else(|| data.freeze())),
                trailers,
            },
        }
    }

    /// Reads the whole body into memory and returns its bytes.
    pub async fn collect_bytes(self) -> Result<Bytes, BoxError> {
        match self.buffer(usize::MAX).await?.inner {
            Inner::Full { data, .. } => Ok(data.unwrap_or_default()),
            Inner::Streaming { .. } => unreachable!("an unbounded buffer always ends in memory"),
        }
    }
}

impl Default for Body {
    fn default() -> Self {
        Body::empty()
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Bodies may carry credentials (an OAuth form, say): show their shape, never their content.
        match &self.inner {
            Inner::Full { data, .. } => f
                .debug_struct("Body")
                .field("in_memory_len", &data.as_ref().map(Bytes::len))
                .finish(),
            Inner::Streaming { .. } => f.debug_struct("Body").field("streaming", &true).finish(),
        }
    }
}

impl http_body::Body for Body {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().inner {
            Inner::Full { data, trailers } => {
                if let Some(data) = data.take().filter(|d| !d.is_empty()) {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                *data = None;
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            Inner::Streaming { prefix, rest } => {
                if let Some(frame) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                Pin::new(rest).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full { data, trailers } => {
                data.as_ref().is_none_or(Bytes::is_empty) && trailers.is_none()
            }
            Inner::Streaming { prefix, rest } => {
                prefix.is_empty() && http_body::Body::is_end_stream(rest)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Inner::Streaming { prefix, rest } => {
                let read: u64 = prefix
                    .iter()
                    .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
                    .sum();
                let hint = http_body::Body::size_hint(rest);
                let mut out = SizeHint::new();
                out.set_lower(hint.lower() + read);
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper + read);
                }
                out
            }
        }
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Self {
        Body::from_bytes(bytes)
    }
}

impl From<Vec<u8>> for Body {
    fn from(bytes: Vec<u8>) -> Self {
        Body::from_bytes(bytes.into())
    }
}

impl From<String> for Body {
    fn from(s: String) -> Self {
        Body::from_bytes(s.into())
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Body::from_bytes(Bytes::from_static(s.as_bytes()))
    }
}

impl From<&'static [u8]> for Body {
    fn from(s: &'static [u8]) -> Self {
        Body::from_bytes(Bytes::from_static(s))
    }
}

impl From<()> for Body {
    fn from(_: ()) -> Self {
        Body::empty()
    }
}

fn try_downcast<T: 'static, K: 'static>(k: K) -> Result<T, K> {
    let mut k = Some(k);
    if let Some(k) = <dyn Any>::downcast_mut::<Option<T>>(&mut k) {
        Ok(k.take().expect("the option was just filled"))
    } else {
        Err(k.expect("the option was just filled"))
    }
}

#[cfg(test)]
mod tests {
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

    #[tokio::test]
    async fn stream_past_limit_is_sent_once_and_whole() {
        let body = stream(&["ab", "cd", "ef", "gh"]).buffer(3).await.unwrap();
        assert!(!body.is_replayable());
        assert!(body.try_clone().is_none());
        assert_eq!(body.collect_bytes().await.unwrap(), "abcdefgh");
    }
}
