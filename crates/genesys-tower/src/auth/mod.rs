//! Bearer token injection with a cached token and one single-flight refresh on 401.
//!
//! [`AuthLayer`] takes tokens from a [`TokenSource`] (an OAuth client, a file, a closure through
//! [`token_source_fn`]), caches the current one for every clone of the service, and puts it in
//! each request as `Authorization: Bearer <token>`, marked sensitive so that HTTP/2 header
//! compression and well-behaved loggers leave it out.
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use genesys_tower::auth::{AuthLayer, Token, token_source_fn};
//! use http::{Request, Response, header::AUTHORIZATION};
//! use tower::{ServiceBuilder, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), genesys_tower::BoxError> {
//! let source = token_source_fn(|| async {
//!     Ok(Token::new("t0k3n", Some(Duration::from_secs(86_400))))
//! });
//! let api = service_fn(|req: Request<String>| async move {
//!     let auth = req.headers()[AUTHORIZATION].to_str().unwrap_or_default().to_owned();
//!     Ok::<_, Infallible>(Response::new(auth))
//! });
//! let client = ServiceBuilder::new()
//!     .layer(AuthLayer::new(source).only_to("https://api.example.com".parse()?))
//!     .service(api);
//!
//! let request = Request::get("https://api.example.com/api/v2/users/me").body(String::new())?;
//! let response = client.oneshot(request).await?;
//! assert_eq!(response.into_body(), "Bearer t0k3n");
//! # Ok(())
//! # }
//! ```
//!
//! # When the token is refreshed
//!
//! A token is fetched when there is none yet, when the cached one expires within the refresh
//! margin, and when a request that carried it is answered 401. The margin is
//! [`refresh_margin`](AuthLayer::refresh_margin) (60 s by default) **but at most a fifth of the
//! token's lifetime**: a 24 h token is refreshed 60 s before it expires, a 5-minute token 60 s
//! before, and a 5 s test token 1 s before (not on every request). A token without an expiry is
//! only refreshed after a 401.
//!
//! While a token is being refreshed before its expiry, other requests keep using the current
//! one; once it has expired (or was refused), they wait for the new one.
//!
//! # Single flight
//!
//! However many requests find the token missing or expired, or see a 401, at the same moment,
//! exactly one of them calls [`TokenSource::fetch`] and the others wait for its outcome. A
//! failure is shared the same way: every waiter gets a clone of the same [`Error`], and so does
//! every request during a pause after it (1 s after a first failure, doubling with each failure
//! in a row up to 10 s): the source is tried again by the first request after the pause, never
//! in a loop, and a source that fails at once (a revoked secret) is not called by every request
//! that comes. If the refresh of a token that has not expired yet fails, the old token keeps
//! serving until it expires.
//!
//! A fetch that gives no token within [`fetch_timeout`](AuthLayer::fetch_timeout) (60 s by
//! default) fails the same way, with an error that says so: a source that never answers does
//! not hold every request that needs a token for as long as their callers wait.
//!
//! # On 401
//!
//! A 401 drops the token *that request carried* from the cache (tokens are compared by value:
//! when another request already replaced it, the newer token is kept and used), fetches a new
//! one once for everyone, and re-sends the request once with it: at once, without backoff, and
//! without counting as a retry of the retry layer. A second 401 is returned to the caller as it
//! is. A 401 is also returned as it is when the new token has the same value as the refused one,
//! or when the body cannot be re-sent.
//!
//! Re-sending needs the body again: a body in memory is cloned cheaply; a streaming body is read
//! into memory first, up to [`replay_limit`](AuthLayer::replay_limit) (1 MiB by default).
//! A larger one is sent as it streams, once.
//!
//! # Where the token goes
//!
//! By default the token goes with every request. With [`only_to`](AuthLayer::only_to) it goes
//! only to the given bases (scheme, host, port, path prefix; hosts compared case-insensitively,
//! default ports filled in); a request to any other host is **sent without the token** (not
//! refused), and a 401 from it is not acted upon. So a pre-signed upload URL on another host
//! works, and never sees the token. A request whose URI has no host (as in front of a router or a
//! client that adds the base URL) is judged by its `Host` header, or by its path when it has
//! none.
//!
//! # tower manners
//!
//! [`Auth`] is `Clone` (the token cache and counters are shared behind `Arc`s) and needs the
//! inner service to be `Clone`: `poll_ready` polls the inner service, and the request goes to
//! that ready service, so what it reserved (a concurrency permit, say) is what the request uses.
//! With the token at hand and the body in memory (the common case), `call` sends at once and its
//! future is the inner service's own, not boxed; otherwise the ready service goes into the
//! response future with the request (a fresh clone left in its place) and is called once the
//! token is there. The re-send after a 401 waits for readiness again, on a clone. The token is
//! fetched inside the response future, never in `poll_ready`, so a failing token source fails
//! that call, not the service.
//!
//! A token source must not send its own requests through the service that this layer wraps
//! (or through a concurrency limit that it shares): the requests waiting for the token may hold
//! every permit. Give it a client of its own.
//!
//! # Secrets
//!
//! `Debug` of the layer, the service and [`Token`] print the token as `[redacted]`; tracing
//! events (on each fetch, at debug level, and on failures, at warn) never carry it; errors
//! carry the token source's error, which must not hold secrets either.

pub(crate) mod cache;
mod error;
mod future;
mod layer;
#[cfg(feature = "redis")]
mod redis;
mod scope;
mod source_fn;
mod token;

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;

pub use self::error::Error;
pub use self::future::ResponseFuture;
pub use self::layer::AuthLayer;
#[cfg(feature = "redis")]
pub use self::redis::RedisTokenCache;
pub use self::source_fn::{TokenSourceFn, token_source_fn};
pub use token::{Token, TokenSource};

use self::cache::Cache;
pub(crate) use self::future::Resend;
use crate::body::{self, Body, ReplayBody};
use crate::per_thread::{Handle, PerThread};
use crate::spare;
use crate::{BoxError, NotSent};

/// Everything a call needs, shared by every clone: one handle per call (a reference count of
/// the calling thread's copy, see [`PerThread`]), taken for a possible re-send after a 401. A
/// clone must share whatever a call changes (the token cache, the source, the counters, the
/// spare's cell); a test names each field.
pub(crate) struct Shared<S, T> {
    /// The layer's configuration, with the token cache and the counters.
    config: AuthLayer<T>,
    /// What a re-send after a 401 goes on: a clone of the inner service made once, cloned
    /// again only when a 401 calls for the re-send. Filled when the layer wraps the service,
    /// and after `get_mut` by the next call, from its inner service before it sends (as the
    /// spare always was here: unlike the retry layer's, which is made after the send, so that a
    /// reservation the send used is not in it).
    spare: Arc<OnceLock<spare::Shared<S>>>,
}

impl<S, T> Shared<S, T> {
    fn new(config: AuthLayer<T>) -> Self {
        Shared {
            config,
            spare: Arc::default(),
        }
    }
}

// Not derived: neither the service nor the token source need be `Clone`.
impl<S, T> Clone for Shared<S, T> {
    fn clone(&self) -> Self {
        Shared {
            config: self.config.clone(),
            spare: self.spare.clone(),
        }
    }
}

impl<S: Clone, T> Shared<S, T> {
    /// Makes sure the spare is there, from `inner` if it is not (a load once it is).
    fn fill_spare(&self, inner: &S) {
        self.spare.get_or_init(|| spare::shared(inner));
    }
}

/// Prints whether a token is cached and when it expires, never its value.
struct RedactedToken<'a>(&'a Cache);

impl fmt::Debug for RedactedToken<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.peek() {
            None => f.write_str("None"),
            Some(expires_at) => f
                .debug_struct("Token")
                .field("value", &"[redacted]")
                .field("expires_at", &expires_at)
                .finish(),
        }
    }
}

/// Adds a bearer token to each request and re-sends once after a 401 with a fresh token. Made
/// by [`AuthLayer`]; see the [module docs](self).
pub struct Auth<S, T> {
    inner: S,
    shared: Arc<PerThread<Shared<S, T>>>,
}

impl<S: Clone, T: TokenSource> Auth<S, T> {
    /// Wraps `inner` with tokens from `source` and the defaults of [`AuthLayer`]; the same as
    /// `AuthLayer::new(source).layer(inner)`.
    pub fn new(inner: S, source: T) -> Self {
        AuthLayer::new(source).layer(inner)
    }
}

impl<S: Clone, T> Auth<S, T> {
    pub(crate) fn from_shared(inner: S, shared: Arc<PerThread<Shared<S, T>>>) -> Self {
        shared.fill_spare(&inner);
        Auth { inner, shared }
    }
}

impl<S, T> Auth<S, T> {
    /// The inner service and the layer's shared state.
    #[cfg(all(feature = "retry", feature = "idempotency"))]
    pub(crate) fn into_parts(self) -> (S, Arc<PerThread<Shared<S, T>>>) {
        (self.inner, self.shared)
    }
}

impl<S, T> Auth<S, T> {
    /// A reference to the inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// A mutable reference to the inner service.
    pub fn get_mut(&mut self) -> &mut S {
        // A re-send after a 401 takes a clone of the inner service as it is after the change:
        // this service and the clones made from it from now on share a new, empty spare.
        self.shared = Arc::new(PerThread::new(Shared::new(self.shared.config.clone())));
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, T: TokenSource> Shared<S, T> {
    pub(crate) fn in_scope(&self, parts: &http::request::Parts) -> bool {
        self.config.scopes.is_empty() || self.config.scopes.iter().any(|s| s.contains(parts))
    }

    /// The cached token and its header value, when one is at hand and not due for refresh at
    /// `now` (without waiting).
    #[cfg(all(feature = "retry", feature = "idempotency"))]
    pub(crate) fn token_at_hand(&self, now: tokio::time::Instant) -> Option<cache::Cached> {
        self.config.cache.current_at(self.config.margin, now)
    }

    /// Puts the token in the request's head, and keeps what sending it again after a 401 needs
    /// (when its body can be sent again): the layer's spare service, the head, a copy of the
    /// body. For the slow path: the fast path does the same in `ResponseFuture::send`, inside
    /// the future's own construction (sharing this code made the fast path measurably slower,
    /// about 90 instructions a call).
    fn authorize(
        this: &Handle<Self>,
        parts: &mut http::request::Parts,
        body: &Body,
        token: cache::Cached,
    ) -> Option<Resend<S, T>> {
        // The copy for a re-send is taken before the token goes in: a head without headers of
        // its own is copied without an allocation, and a re-send puts its own token in anyway.
        let resend = body.try_clone().map(|body| Resend {
            parts: parts.clone(),
            body,
            shared: this.clone(),
            token: token.token,
        });
        parts.headers.insert(AUTHORIZATION, token.header);
        resend
    }

    /// The slow path: waits for a token, reads a streaming body into memory so that it can be
    /// sent again, sends, and sends once more after a 401.
    async fn send<B, ResBody>(
        this: Handle<Self>,
        mut service: S,
        mut parts: http::request::Parts,
        body: Body,
    ) -> Result<Response<ResBody>, BoxError>
    where
        S: Service<Request<B>, Response = Response<ResBody>> + Clone,
        S::Error: Into<BoxError>,
        B: ReplayBody,
    {
        let token = this
            .config
            .cache
            .token(
                &*this.config.source,
                this.config.margin,
                this.config.fetch_timeout,
                &this.config.metrics,
                None,
            )
            .await
            .map_err(NotSent::new)?;
        let body = if body.is_replayable() || this.config.replay_limit == 0 {
            body
        } else {
            body.buffer(this.config.replay_limit).await?
        };
        let resend = Self::authorize(&this, &mut parts, &body, token);
        let request = Request::from_parts(parts, body::rebuild::<B>(body)?);
        let response = service.call(request).await.map_err(Into::into)?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        match resend {
            Some(resend) => resend.after_401::<B, ResBody>(response).await,
            None => {
                tracing::debug!(
                    "401 for a request whose body cannot be sent again: returned as is"
                );
                Ok(response)
            }
        }
    }
}

impl<S: Clone, T: TokenSource> Resend<S, T> {
    /// After a 401: a new token (fetched once for everyone), and the request once more with it;
    /// or the 401 as it is, when the source gives the same token again.
    pub(crate) async fn after_401<B, ResBody>(
        self,
        response: Response<ResBody>,
    ) -> Result<Response<ResBody>, BoxError>
    where
        S: Service<Request<B>, Response = Response<ResBody>>,
        S::Error: Into<BoxError>,
        B: ReplayBody,
    {
        let Resend {
            mut parts,
            body,
            shared,
            token,
        } = self;
        // Filled before the call that made this re-send's copy.
        let Some(spare) = shared.spare.get() else {
            tracing::debug!("401, and no service to send the request again on: returned as is");
            return Ok(response);
        };
        let fresh = shared
            .config
            .cache
            .token(
                &*shared.config.source,
                shared.config.margin,
                shared.config.fetch_timeout,
                &shared.config.metrics,
                Some(&token),
            )
            .await
            .map_err(NotSent::new)?;
        if fresh.token.same_value(&token) {
            tracing::debug!("401, and the token source gave the same token again: returned as is");
            return Ok(response);
        }
        // The refused response is dropped unread, so that the re-send is not held up by a slow
        // body. A client such as hyper may then close that connection instead of reusing it: a
        // new connection on a path taken once per token lifetime.
        drop(response);
        shared.config.metrics.record_unauthorized_refresh();
        // The retry layer's attempt span, when there is one above, says the token was refreshed.
        tracing::Span::current().record("auth.token_refreshed", true);
        tracing::debug!("401: sending the request again with a new token");
        parts.headers.insert(AUTHORIZATION, fresh.header);
        let body = body::rebuild::<B>(body)?;
        let mut service = spare::take(spare);
        service
            .ready()
            .await
            .map_err(Into::into)?
            .call(Request::from_parts(parts, body))
            .await
            .map_err(Into::into)
    }
}

impl<S, T, B, ResBody> Service<Request<B>> for Auth<S, T>
where
    // First, so that a body the layer cannot replay is named in the compiler's error.
    B: ReplayBody,
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    T: TokenSource,
    ResBody: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = BoxError;
    type Future = ResponseFuture<S, B, T>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (parts, body) = request.into_parts();
        if !self.shared.in_scope(&parts) {
            // Not for this token: sent as it came, body untouched.
            return ResponseFuture::direct(self.inner.call(Request::from_parts(parts, body)), None);
        }
        let body = body.into_replay();
        // The common case: a token at hand and nothing to buffer. The ready service takes the
        // request at once; a 401 is sent again on a clone of the layer's spare.
        if (body.is_replayable() || self.shared.config.replay_limit == 0)
            && let Some(token) = self.shared.config.cache.current(self.shared.config.margin)
        {
            let copy = body.try_clone();
            return match body::rebuild::<B>(body) {
                Ok(body) => {
                    if copy.is_some() {
                        self.shared.fill_spare(&self.inner);
                    }
                    ResponseFuture::send(&mut self.inner, &self.shared, parts, body, token, copy)
                }
                Err(e) => ResponseFuture::boxed(std::future::ready(Err(e.into()))),
            };
        }
        // The ready service goes with the request; a fresh clone waits for the next poll_ready.
        self.shared.fill_spare(&self.inner);
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        ResponseFuture::boxed(Shared::send(self.shared.handle(), ready, parts, body))
    }
}

impl<S: Clone, T> Clone for Auth<S, T> {
    fn clone(&self) -> Self {
        Auth {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, T> fmt::Debug for Auth<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("inner", &self.inner)
            .field("source", &std::any::type_name::<T>())
            .field("token", &RedactedToken(&self.shared.config.cache))
            .field("refresh_margin", &self.shared.config.margin)
            .finish()
    }
}

#[cfg(test)]
mod shared_tests {
    use super::*;

    /// A thread's copy of the layer's state shares everything a call changes with the state
    /// and every other copy: each field is named, so a new one must say how it is shared.
    #[test]
    fn a_threads_copy_of_the_state_shares_everything_a_call_changes() {
        let source = token_source_fn(|| async { Ok(Token::new("t", None)) });
        let config = AuthLayer::new(source).only_to("https://api.example.test".parse().unwrap());
        let state = PerThread::new(Shared::<(), _>::new(config));
        let copy = state.handle_in(1);
        let Shared { config, spare } = &**copy;
        let AuthLayer {
            source,
            cache,
            margin,
            metrics,
            scopes,
            replay_limit,
            fetch_timeout,
        } = config;
        assert!(
            Arc::ptr_eq(source, &state.config.source),
            "the token source"
        );
        assert!(Arc::ptr_eq(cache, &state.config.cache), "the token cache");
        assert!(metrics.is_same(&state.config.metrics), "the counters");
        assert!(Arc::ptr_eq(scopes, &state.config.scopes), "the scopes");
        assert_eq!(
            (*margin, *replay_limit, *fetch_timeout),
            (
                state.config.margin,
                state.config.replay_limit,
                state.config.fetch_timeout
            ),
            "values no call changes"
        );
        assert!(Arc::ptr_eq(spare, &state.spare), "the spare's cell");
    }
}
