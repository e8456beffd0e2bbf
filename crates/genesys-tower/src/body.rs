//! A body type the layers can replay.
//!
//! Retrying a request, re-sending it after a 401 and fingerprinting it for idempotency all need the
//! request body more than once. The layers keep it as a [`Body`]: a body that is already in memory
//! is cloned by reference count (no copy), and a streaming body is read into memory up to a bound
//! by [`Body::buffer`]. A streaming body larger than the bound is sent once, as it came, and is
//! never replayed, so no part of it is ever sent twice.
//!
//! The service below a layer still gets the body type it takes: [`ReplayBody`] converts the
//! caller's body into a [`Body`] and rebuilds one for each attempt. [`Body`] is also a body type
//! of its own, for clients that want one type for every request; it is `Send + Sync`, so it can be
//! boxed with `BodyExt::boxed`.
//!
//! Any [`http_body::Body`] with `Bytes` data converts into [`Body`] with [`Body::new`]; a [`Body`]
//! passed to [`Body::new`] is taken as it is, without another layer of boxing.
//!
//! # Why the layers hand down the caller's body type
//!
//! A layer of this crate is a `Service<Request<B>>` over a `Service<Request<B>>`, as tower's own
//! `Retry` is: the request type is fixed by the service below, so a `ServiceBuilder` over an
//! existing client needs no adapter, type inference finds `B` from the client, and the stack
//! boxes under the request type the application already names. Replaying needs one thing from
//! `B`, written as the [`ReplayBody`] trait: a way into a [`Body`] (bounded buffering, shared by
//! every layer) and a way back for each attempt. It is a trait of this crate rather than
//! `B: From<Bytes>` because a body too long to replay must still be sent once as a stream, which
//! `From<Bytes>` cannot express, and because `String` (a common test and `service_fn` body) has no
//! `From<Bytes>`; a blanket implementation over `From<Bytes>` would also forbid implementing the
//! trait for `String`. A conversion layer (every stack handing [`Body`] down, with a line to map
//! it back) was the other option: it would give the client a body type other than the one the
//! caller sent, and every user would have to write that line.
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
use std::sync::{Mutex, PoisonError, TryLockError};
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
        // Boxed: trailers are rare, and a `Body` is moved through every layer's future.
        trailers: Option<Box<HeaderMap>>,
    },
    /// A streaming body: what was already read (`prefix`), then the rest. Sent once.
    Streaming {
        prefix: VecDeque<Frame<Bytes>>,
        rest: Rest,
    },
}

/// The unread rest of a streaming body, behind a `Mutex` so that [`Body`] is `Sync` while the
/// body it wraps need only be `Send`. Polling goes through `&mut` ([`Mutex::get_mut`]: no lock
/// is taken); only the `&self` queries `is_end_stream` and `size_hint` lock, and they answer
/// conservatively if the lock is ever contended.
struct Rest(Mutex<UnsyncBoxBody<Bytes, BoxError>>);

impl Rest {
    fn new(body: UnsyncBoxBody<Bytes, BoxError>) -> Self {
        Rest(Mutex::new(body))
    }

    fn get_mut(&mut self) -> &mut UnsyncBoxBody<Bytes, BoxError> {
        self.0.get_mut().unwrap_or_else(PoisonError::into_inner)
    }

    fn with<T>(&self, f: impl FnOnce(&UnsyncBoxBody<Bytes, BoxError>) -> T) -> Option<T> {
        match self.0.try_lock() {
            Ok(body) => Some(f(&body)),
            Err(TryLockError::Poisoned(body)) => Some(f(&body.into_inner())),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.with(http_body::Body::is_end_stream).unwrap_or(false)
    }

    fn size_hint(&self) -> SizeHint {
        self.with(http_body::Body::size_hint).unwrap_or_default()
    }
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
                    rest: Rest::new(body.map_err(Into::into).boxed_unsync()),
                },
            },
        }
    }

    /// An empty body.
    #[must_use]
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
        // Empty data frames read: they carry nothing and are not kept, and a stream of them is
        // read no further than one of bytes would be.
        let mut empties = 0usize;
        loop {
            // A body that has ended is kept in memory, even past the limit: it is already read
            // (a large `Full` body, say), so keeping it costs nothing more.
            let ended = http_body::Body::is_end_stream(rest.get_mut());
            if !ended && (len > limit || empties > limit) {
                break;
            }
            let frame = if ended {
                None
            } else {
                rest.get_mut().frame().await
            };
            match frame {
                None => return Ok(Body::from_frames(prefix, len)),
                Some(frame) => {
                    let frame = frame?;
                    match frame.data_ref() {
                        Some(data) if data.is_empty() => {
                            empties = empties.saturating_add(1);
                            continue;
                        }
                        Some(data) => len = len.saturating_add(data.len()),
                        None => {}
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
                    // Reserved once, for the whole body: per frame, a second reservation of
                    // `len` would double the buffer that the frozen body then keeps.
                    if data.capacity() == 0 {
                        data.reserve(len);
                    }
                    data.extend_from_slice(&bytes)
                }
                Err(frame) => trailers = frame.into_trailers().ok().map(Box::new),
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
        Ok(BodyExt::collect(self).await?.to_bytes())
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
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(*t))))
            }
            Inner::Streaming { prefix, rest } => {
                if let Some(frame) = prefix.pop_front() {
                    return Poll::Ready(Some(Ok(frame)));
                }
                Pin::new(rest.get_mut()).poll_frame(cx)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Full { data, trailers } => {
                data.as_ref().is_none_or(Bytes::is_empty) && trailers.is_none()
            }
            Inner::Streaming { prefix, rest } => prefix.is_empty() && rest.is_end_stream(),
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
                let hint = rest.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(hint.lower().saturating_add(read));
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper.saturating_add(read));
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

/// A body type that the retry, auth and idempotency layers can read into memory and rebuild,
/// so that they can send it again.
///
/// These layers take `http::Request<B>` and hand the service below the same `Request<B>`, so a
/// client built for `Full<Bytes>` gets `Full<Bytes>`, a `service_fn` taking `Request<String>`
/// gets `String`. To send a body more than once, a layer turns it into a [`Body`] with
/// [`into_replay`](ReplayBody::into_replay), reads it into memory up to its bound
/// ([`Body::buffer`]), and rebuilds a `B` for every attempt with
/// [`from_replay`](ReplayBody::from_replay). The client-side idempotency layer also needs its
/// *response* body to be a `ReplayBody`: it rebuilds stored responses from their bytes.
///
/// Implemented for [`Body`], [`Full<Bytes>`](http_body_util::Full), [`String`],
/// [`BoxBody`](http_body_util::combinators::BoxBody) and
/// [`UnsyncBoxBody`] over `Bytes`, and, with the
/// features of the same name, `axum::body::Body` and `reqwest::Body`. For a body type of your
/// own, implement it: two conversions. A body that does not implement it (hyper's `Incoming`,
/// say, which cannot be built from bytes) can be mapped to [`Body`] with [`Body::new`]
/// (`ServiceBuilder::map_response` / `map_request`).
///
/// ```
/// use bytes::Bytes;
/// use genesys_tower::body::{Body, ReplayBody};
/// use http_body_util::Full;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), genesys_tower::BoxError> {
/// let replay = Full::new(Bytes::from_static(b"{}")).into_replay().buffer(1024).await?;
/// let first = Full::<Bytes>::from_replay(replay.try_clone().unwrap()).unwrap();
/// let second = Full::<Bytes>::from_replay(replay).unwrap();
/// # drop((first, second));
/// # Ok(()) }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a body the genesys-tower layers can replay",
    label = "the layers cannot rebuild this `{Self}` for another attempt",
    note = "the retry, auth and idempotency layers may send a request more than once: they read \
            its body into memory (up to a bound) and rebuild it for each attempt, so the service \
            below must take a request body that implements `genesys_tower::body::ReplayBody` \
            (and the idempotency layer rebuilds stored responses, so its response body must too)",
    note = "`ReplayBody` is implemented for `genesys_tower::Body`, `http_body_util::Full<Bytes>`, \
            `String`, `BoxBody<Bytes, _>`, `UnsyncBoxBody<Bytes, _>`, and with the crate features \
            `axum` and `reqwest` for their body types; implement it for a body of your own, or \
            map the body to `genesys_tower::Body` (`genesys_tower::Body::new`)"
)]
pub trait ReplayBody: Sized + Send + 'static {
    /// Turns the body into a [`Body`] that the layer can [`buffer`](Body::buffer). A body that
    /// is already in memory should come back in memory (without a copy where it can).
    fn into_replay(self) -> Body;

    /// Builds the body for one attempt from a [`Body`]: in memory for a replayed body, or a
    /// stream (what was read, then the rest) for a body too long to replay, sent once.
    ///
    /// A type that can only hold a whole body in memory (`Full<Bytes>`, `String`) returns `None`
    /// for a stream; the layers then end the call with a [`NotReplayable`] error before sending
    /// anything.
    /// That happens only when a caller's streaming body is longer than the layer's bound and the
    /// service below cannot stream: a body that came as such a type is always in memory.
    fn from_replay(body: Body) -> Option<Self>;
}

/// The error of a layer that cannot rebuild a body as the type the other side takes (see
/// [`ReplayBody::from_replay`]).
///
/// For a request body (a stream too long to hold in memory, for a service below that takes only
/// whole bodies) nothing was sent. For a response body (the idempotency layer could not hand a
/// response back as the caller's type: longer than its response limit, or not valid for that
/// type) the request *was* sent, and the outcome is unknown to the caller; the error says which.
#[derive(Debug)]
pub struct NotReplayable {
    body_type: &'static str,
    response: bool,
}

impl NotReplayable {
    pub(crate) fn new<B>() -> Self {
        NotReplayable {
            body_type: std::any::type_name::<B>(),
            response: false,
        }
    }

    pub(crate) fn response<B>() -> Self {
        NotReplayable {
            body_type: std::any::type_name::<B>(),
            response: true,
        }
    }

    /// Whether it was a response body that could not be rebuilt (the request was sent).
    #[must_use]
    pub fn is_response(&self) -> bool {
        self.response
    }
}

impl fmt::Display for NotReplayable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.response {
            write!(
                f,
                "the response body cannot be handed back as `{}` (longer than the idempotency \
                 layer's response limit, or not valid for that type); the request may have been \
                 applied. Raise the layer's response_limit, or use a response body type that \
                 can stream",
                self.body_type
            )
        } else {
            write!(
                f,
                "the request body is a stream longer than the replay limit, and the service \
                 below takes `{}`, which holds a whole body in memory; nothing was sent. Raise \
                 the layer's replay limit, or give the service below a streaming body type",
                self.body_type
            )
        }
    }
}

impl std::error::Error for NotReplayable {}

/// Rebuilds a request body `B` from `body`, or says why it cannot.
pub(crate) fn rebuild<B: ReplayBody>(body: Body) -> Result<B, NotReplayable> {
    B::from_replay(body).ok_or_else(NotReplayable::new::<B>)
}

/// Rebuilds a response body `B` from `body`, or says why it cannot.
pub(crate) fn rebuild_response<B: ReplayBody>(body: Body) -> Result<B, NotReplayable> {
    B::from_replay(body).ok_or_else(NotReplayable::response::<B>)
}

impl ReplayBody for Body {
    fn into_replay(self) -> Body {
        self
    }

    fn from_replay(body: Body) -> Option<Self> {
        Some(body)
    }
}

impl ReplayBody for http_body_util::Full<Bytes> {
    fn into_replay(mut self) -> Body {
        // A `Full` yields its one data frame at once: take it without waiting or copying.
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match http_body::Body::poll_frame(Pin::new(&mut self), &mut cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => Body::from_bytes(data),
                Err(frame) => Body::from_frames(VecDeque::from([frame]), 0),
            },
            Poll::Ready(Some(Err(never))) => match never {},
            Poll::Ready(None) => Body::empty(),
            Poll::Pending => Body::new(self),
        }
    }

    fn from_replay(body: Body) -> Option<Self> {
        body.as_bytes().cloned().map(http_body_util::Full::new)
    }
}

impl ReplayBody for String {
    fn into_replay(self) -> Body {
        Body::from(self)
    }

    fn from_replay(body: Body) -> Option<Self> {
        let text = std::str::from_utf8(body.as_bytes()?).ok()?;
        Some(text.to_owned())
    }
}

impl<E> ReplayBody for http_body_util::combinators::BoxBody<Bytes, E>
where
    E: Into<BoxError> + From<BoxError> + 'static,
{
    fn into_replay(self) -> Body {
        Body::new(self)
    }

    fn from_replay(body: Body) -> Option<Self> {
        Some(body.map_err(E::from).boxed())
    }
}

impl<E> ReplayBody for UnsyncBoxBody<Bytes, E>
where
    E: Into<BoxError> + From<BoxError> + 'static,
{
    fn into_replay(self) -> Body {
        Body::new(self)
    }

    fn from_replay(body: Body) -> Option<Self> {
        Some(body.map_err(E::from).boxed_unsync())
    }
}

#[cfg(feature = "axum")]
impl ReplayBody for axum_core::body::Body {
    fn into_replay(self) -> Body {
        Body::new(self)
    }

    fn from_replay(body: Body) -> Option<Self> {
        Some(axum_core::body::Body::new(body))
    }
}

#[cfg(feature = "reqwest")]
impl ReplayBody for reqwest::Body {
    fn into_replay(self) -> Body {
        // A body reqwest holds in memory yields its `Bytes` in one frame: buffering it copies
        // nothing.
        Body::new(self)
    }

    fn from_replay(body: Body) -> Option<Self> {
        Some(match body.as_bytes() {
            Some(bytes) => reqwest::Body::from(bytes.clone()),
            None => reqwest::Body::wrap(body),
        })
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
mod tests;
