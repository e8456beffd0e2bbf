//! Reading response bodies whole, within a size limit and an idle timeout.
//!
//! [`ReadBodyLayer`] reads the body of every response of the service below into memory before it
//! hands the response up, so that everything above it (a per-attempt timeout, the retry layer)
//! sees one attempt end only when its body has been read:
//!
//! - **A size limit, checked while streaming.** A success (2xx) body is read up to
//!   [`max_success_body`](ReadBodyLayer::max_success_body) bytes (16 MiB by default). A larger
//!   one (a `Content-Length` above the limit, or a stream that goes past it) fails at once with
//!   [`Error::TooLarge`]: memory stays bounded by the limit, whatever the server sends. The retry
//!   layer's default classifier does not retry it: another attempt would get the same answer.
//! - **Error bodies are cut, not failed.** The body of any other status is only informational:
//!   it is read up to [`max_error_body`](ReadBodyLayer::max_error_body) bytes (64 KiB by default)
//!   and cut there, and the response goes on with its status, so a 429 or a 503 is still
//!   classified by its status (and an endless error page costs at most 64 KiB).
//! - **An idle timeout between chunks.** When no data arrives for
//!   [`idle_timeout`](ReadBodyLayer::idle_timeout) (30 s by default), a success body fails with
//!   [`Error::Stalled`] and an error body is cut where it stopped. A body that drips a byte every
//!   few seconds never trips it: put a per-attempt timeout (tower's `TimeoutLayer`) *above* this
//!   layer, and it covers the whole body.
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use genesys_tower::read_body::{Error, ReadBodyLayer};
//! use genesys_tower::{Body, BoxError};
//! use http::{Request, Response};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let server = service_fn(|_req: Request<Body>| async {
//!     Ok::<_, Infallible>(Response::new(Body::from(vec![b'x'; 2048])))
//! });
//! let client = ServiceBuilder::new()
//!     .layer(ReadBodyLayer::new().max_success_body(1024))
//!     .service(server);
//! let err: BoxError = client.oneshot(Request::new(Body::empty())).await.unwrap_err();
//! assert!(matches!(err.downcast_ref::<Error>(), Some(Error::TooLarge { limit: 1024, .. })));
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{Response, StatusCode, header};
use http_body::Body as _;
use http_body_util::BodyExt;
use tower_layer::Layer;
use tower_service::Service;

use crate::{Body, BoxError};

/// The default limit of a success body: 16 MiB.
pub const DEFAULT_MAX_SUCCESS_BODY: usize = 16 * 1024 * 1024;
/// The default limit of an error body (any status but 2xx): 64 KiB; the rest is cut.
pub const DEFAULT_MAX_ERROR_BODY: usize = 64 * 1024;
/// The default idle timeout between two chunks of a body: 30 s.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Reads response bodies whole, within limits. See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadBodyLayer {
    limits: Limits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limits {
    success: usize,
    error: usize,
    idle: Option<Duration>,
}

impl Default for ReadBodyLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl ReadBodyLayer {
    /// The default limits: 16 MiB for a success body, 64 KiB for an error body, 30 s idle.
    #[must_use]
    pub fn new() -> Self {
        ReadBodyLayer {
            limits: Limits {
                success: DEFAULT_MAX_SUCCESS_BODY,
                error: DEFAULT_MAX_ERROR_BODY,
                idle: Some(DEFAULT_IDLE_TIMEOUT),
            },
        }
    }

    /// The largest success (2xx) body, in bytes; a larger one is an [`Error::TooLarge`].
    #[must_use]
    pub fn max_success_body(mut self, bytes: usize) -> Self {
        self.limits.success = bytes;
        self
    }

    /// The most bytes kept of an error body (any other status); the rest is cut.
    #[must_use]
    pub fn max_error_body(mut self, bytes: usize) -> Self {
        self.limits.error = bytes;
        self
    }

    /// The longest wait for the next chunk of a body (`None`: no idle timeout).
    #[must_use]
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.limits.idle = timeout.filter(|t| !t.is_zero());
        self
    }
}

impl<S> Layer<S> for ReadBodyLayer {
    type Service = ReadBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ReadBody {
            inner,
            limits: self.limits,
        }
    }
}

/// Reads each response body whole, within limits. Made by [`ReadBodyLayer`].
#[derive(Debug, Clone)]
pub struct ReadBody<S> {
    inner: S,
    limits: Limits,
}

impl<S> ReadBody<S> {
    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// The response future of [`ReadBody`].
pub type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, BoxError>> + Send>>;

impl<S, Req, B> Service<Req> for ReadBody<S>
where
    S: Service<Req, Response = Response<B>>,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let future = self.inner.call(request);
        let limits = self.limits;
        Box::pin(async move {
            let response = future.await.map_err(Into::into)?;
            let (parts, body) = response.into_parts();
            let status = parts.status;
            let bytes = if status.is_success() {
                // A body that has ended already (the answer to a HEAD) has no length to check:
                // its `Content-Length` is the resource's, which was not sent.
                let declared = parts
                    .headers
                    .get(header::CONTENT_LENGTH)
                    .filter(|_| !body.is_end_stream())
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                if let Some(declared) = declared
                    && declared > limits.success as u64
                {
                    return Err(Error::TooLarge {
                        status,
                        limit: limits.success,
                        read: 0,
                    }
                    .into());
                }
                read_limited(body, status, limits.success, limits.idle).await?
            } else {
                read_cut(body, limits.error, limits.idle).await
            };
            Ok(Response::from_parts(parts, Body::from_bytes(bytes)))
        })
    }
}

/// Reads `body` whole: at most `limit` bytes, and no more than `idle` between two chunks.
///
/// A body whose size hint (its `Content-Length`) is above `limit` fails before anything is read;
/// a stream that goes past it fails as soon as it does, so no more than `limit` bytes (and one
/// chunk) are ever held. `status` is the response's, for the error.
pub async fn read_limited<B>(
    body: B,
    status: StatusCode,
    limit: usize,
    idle: Option<Duration>,
) -> Result<Bytes, Error>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    if body.size_hint().lower() > limit as u64 {
        return Err(Error::TooLarge {
            status,
            limit,
            read: 0,
        });
    }
    // Trust a declared length for at most 1 MiB of room up front: a server that declares 16 MiB
    // and sends nothing costs no more than that.
    let capacity = usize::try_from(body.size_hint().lower())
        .unwrap_or(limit)
        .min(limit)
        .min(1024 * 1024);
    let mut buf = BytesMut::with_capacity(capacity);
    loop {
        let frame = match next_frame(body.as_mut(), idle).await {
            Next::Frame(frame) => frame,
            Next::End => return Ok(buf.freeze()),
            Next::Idle(idle) => {
                return Err(Error::Stalled {
                    status,
                    idle,
                    read: buf.len(),
                });
            }
            Next::Error(source) => {
                return Err(Error::Broken {
                    status,
                    read: buf.len(),
                    source,
                });
            }
        };
        if let Ok(mut data) = frame.into_data() {
            let read = buf.len().saturating_add(data.remaining());
            if read > limit {
                return Err(Error::TooLarge {
                    status,
                    limit,
                    read,
                });
            }
            buf.put(&mut data);
        }
    }
}

/// Reads at most `limit` bytes of `body` and stops there, or where the body ends, breaks or
/// stalls: what was read is kept.
async fn read_cut<B>(body: B, limit: usize, idle: Option<Duration>) -> Bytes
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut buf = BytesMut::new();
    while buf.len() < limit {
        let Next::Frame(frame) = next_frame(body.as_mut(), idle).await else {
            break;
        };
        if let Ok(mut data) = frame.into_data() {
            let take = data.remaining().min(limit - buf.len());
            buf.put((&mut data).take(take));
        }
    }
    buf.freeze()
}

enum Next<D> {
    Frame(http_body::Frame<D>),
    End,
    Idle(Duration),
    Error(BoxError),
}

async fn next_frame<B>(mut body: Pin<&mut B>, idle: Option<Duration>) -> Next<B::Data>
where
    B: http_body::Body,
    B::Error: Into<BoxError>,
{
    let frame = match idle {
        Some(idle) => match tokio::time::timeout(idle, body.as_mut().frame()).await {
            Ok(frame) => frame,
            Err(_) => return Next::Idle(idle),
        },
        None => body.as_mut().frame().await,
    };
    match frame {
        None => Next::End,
        Some(Ok(frame)) => Next::Frame(frame),
        Some(Err(e)) => Next::Error(e.into()),
    }
}

/// A response body that could not be read whole.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The body is larger than the limit (its `Content-Length`, or what arrived). Not retried
    /// by the default classifier: another attempt would get the same answer.
    TooLarge {
        /// The response's status.
        status: StatusCode,
        /// The limit, in bytes.
        limit: usize,
        /// Bytes that had arrived when the limit was passed (0 when the `Content-Length` said so
        /// before anything was read).
        read: usize,
    },
    /// No data arrived for the idle timeout.
    Stalled {
        /// The response's status.
        status: StatusCode,
        /// The idle timeout.
        idle: Duration,
        /// Bytes read before the body stalled.
        read: usize,
    },
    /// The body broke off (a reset, a malformed chunk).
    Broken {
        /// The response's status.
        status: StatusCode,
        /// Bytes read before it broke.
        read: usize,
        /// What went wrong.
        source: BoxError,
    },
}

impl Error {
    /// The status of the response whose body could not be read.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Error::TooLarge { status, .. }
            | Error::Stalled { status, .. }
            | Error::Broken { status, .. } => *status,
        }
    }

    /// Whether the body was larger than the limit.
    #[must_use]
    pub fn is_too_large(&self) -> bool {
        matches!(self, Error::TooLarge { .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::TooLarge { status, limit, .. } => write!(
                f,
                "the response body (HTTP {}) is larger than the limit of {limit} bytes; it was not \
                 read (raise the limit if such bodies are expected)",
                status.as_u16()
            ),
            Error::Stalled { status, idle, read } => write!(
                f,
                "the response body (HTTP {}) stalled: no data for {} ms after {read} bytes",
                status.as_u16(),
                idle.as_millis()
            ),
            Error::Broken {
                status,
                read,
                source,
            } => write!(
                f,
                "the response body (HTTP {}) broke off after {read} bytes: {source}",
                status.as_u16()
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Broken { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests;
