//! The client-side layers as one service: [`Stack`], made by [`StackLayer`].
//!
//! A `Stack` does what these layers do, composed in this order over the same service `C`:
//!
//! ```text
//! IdempotencyLayer (optional) → RetryLayer → AuthLayer → a per-attempt timeout (optional) → C
//! ```
//!
//! with the same rules, counters and shared state (it is built from the layers themselves), but
//! a call that goes the common way costs what one layer costs rather than four: a request with
//! its body in memory, a token at hand, no key of the caller's, answered at the first attempt.
//! Such a call is one future over `C`'s, with the request's head kept once (for a retry and for
//! a re-send after a 401 alike) where the layers keep a copy each, and no future of a layer
//! nested in another's.
//!
//! Every other call goes through the layers themselves, from wherever it leaves the common way:
//!
//! - a key of the caller's, a request without a token at hand (the first call, a refresh), a
//!   body that is a stream, a request outside the token's scope: the whole call, through the
//!   layers, on the service the stack made ready for it;
//! - a 401: the auth layer's re-send (one new token for every waiting call, the request once
//!   more), whose outcome the retry layer then judges as the attempt's;
//! - a retry: the retry layer's own attempts, waits and budget, each attempt through the auth
//!   layer and the timeout.
//!
//! The layers stay the way to compose the roles with others of your own (a layer between two
//! of them, another order); a `Stack` is for the composition above, which is the one
//! `genesys-client` builds. Its tests run the same scenarios through both and compare what a
//! caller sees.
//!
//! ```
//! use std::time::Duration;
//! use genesys_tower::auth::{AuthLayer, Token, token_source_fn};
//! use genesys_tower::idempotency::IdempotencyLayer;
//! use genesys_tower::retry::{RetryLayer, RetryPolicy};
//! use genesys_tower::stack::StackLayer;
//! use genesys_tower::{Body, BoxError};
//! use http::{Request, Response};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let tokens = token_source_fn(|| async { Ok(Token::new("t0k3n", Some(Duration::from_secs(3600)))) });
//! let stack = StackLayer::new(RetryLayer::new(RetryPolicy::default()), AuthLayer::new(tokens))
//!     .idempotency(IdempotencyLayer::new())
//!     .attempt_timeout(Duration::from_secs(30));
//! let api = service_fn(|req: Request<Body>| async move {
//!     assert_eq!(req.headers()["authorization"], "Bearer t0k3n");
//!     Ok::<_, BoxError>(Response::new(Body::from("{}")))
//! });
//! let response = stack.layer(api).oneshot(Request::get("http://api.test/").body(Body::empty())?).await?;
//! assert_eq!(response.status(), 200);
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use http::header::AUTHORIZATION;
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tokio::time::Instant;
use tower::ServiceExt;
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

use crate::BoxError;
use crate::auth::{self, Auth, AuthLayer, Resend, Token, TokenSource};
use crate::body::ReplayBody;
use crate::idempotency::{self, Idempotency, IdempotencyKey, IdempotencyLayer, Route};
use crate::per_thread::PerThread;
use crate::retry::{self, AfterFirst, Attempt, Call, Retry, RetryLayer};
use crate::timer::Timer;

type Boxed<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// Makes a [`Stack`]: the retry and auth layers, and optionally the idempotency layer above
/// them and a timeout on each attempt below them, as one service. See the
/// [module docs](self).
pub struct StackLayer<T> {
    idempotency: Option<IdempotencyLayer>,
    retry: RetryLayer,
    auth: AuthLayer<T>,
    attempt_timeout: Option<Duration>,
}

impl<T> StackLayer<T> {
    /// The retry layer over the auth layer.
    pub fn new(retry: RetryLayer, auth: AuthLayer<T>) -> Self {
        StackLayer {
            idempotency: None,
            retry,
            auth,
            attempt_timeout: None,
        }
    }

    /// With the idempotency layer above the retry layer.
    #[must_use]
    pub fn idempotency(mut self, layer: IdempotencyLayer) -> Self {
        self.idempotency = Some(layer);
        self
    }

    /// With a timeout on each attempt (and on the re-send after a 401), below the auth layer:
    /// what `tower::timeout::TimeoutLayer` would do there, with the same error
    /// (`tower::timeout::error::Elapsed`).
    #[must_use]
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.attempt_timeout = Some(timeout);
        self
    }
}

impl<T> Clone for StackLayer<T> {
    fn clone(&self) -> Self {
        StackLayer {
            idempotency: self.idempotency.clone(),
            retry: self.retry.clone(),
            auth: self.auth.clone(),
            attempt_timeout: self.attempt_timeout,
        }
    }
}

impl<T> fmt::Debug for StackLayer<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackLayer")
            .field("idempotency", &self.idempotency.is_some())
            .field("retry", &self.retry)
            .field("auth", &self.auth)
            .field("attempt_timeout", &self.attempt_timeout)
            .finish()
    }
}

impl<C, T> Layer<C> for StackLayer<T>
where
    C: Clone + Send + 'static,
    T: TokenSource,
{
    type Service = Stack<C, T>;

    fn layer(&self, inner: C) -> Stack<C, T> {
        let below_auth = AttemptTimeout {
            inner: inner.clone(),
            timeout: self.attempt_timeout,
        };
        // The layers' spare services (what a retry and a re-send after a 401 go on) are made
        // here, once, from a clone of `inner` that holds nothing: no call has to look for them.
        let (_, retry) = self.retry.layer(()).into_parts();
        let (auth, retry) = Retry::from_parts(self.auth.layer(below_auth), retry)
            .with_spare()
            .into_parts();
        let (_, auth) = auth.into_parts();
        Stack {
            inner,
            attempt_timeout: self.attempt_timeout,
            retry,
            auth,
            idempotency: self
                .idempotency
                .as_ref()
                .map(IdempotencyLayer::shared_config),
        }
    }
}

/// The client-side layers as one service. Made by [`StackLayer`]; see the [module docs](self).
pub struct Stack<C, T> {
    /// The service below, made ready by `poll_ready` for the next call.
    inner: C,
    attempt_timeout: Option<Duration>,
    retry: Arc<PerThread<retry::Shared>>,
    auth: Arc<PerThread<auth::Shared<AttemptTimeout<C>, T>>>,
    idempotency: Option<Arc<idempotency::Config>>,
}

impl<C: Clone, T> Clone for Stack<C, T> {
    fn clone(&self) -> Self {
        Stack {
            inner: self.inner.clone(),
            attempt_timeout: self.attempt_timeout,
            retry: self.retry.clone(),
            auth: self.auth.clone(),
            idempotency: self.idempotency.clone(),
        }
    }
}

impl<C: fmt::Debug, T> fmt::Debug for Stack<C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stack")
            .field("inner", &self.inner)
            .field("idempotency", &self.idempotency.is_some())
            .field("attempt_timeout", &self.attempt_timeout)
            .finish_non_exhaustive()
    }
}

impl<C: Clone, T> Stack<C, T> {
    /// The retry and auth layers and the timeout over `inner`, sharing the stack's state.
    fn layers_over(&self, inner: C) -> Retry<Auth<AttemptTimeout<C>, T>> {
        let below_auth = AttemptTimeout {
            inner,
            timeout: self.attempt_timeout,
        };
        Retry::from_parts(
            Auth::from_shared(below_auth, self.auth.clone()),
            self.retry.clone(),
        )
    }

    /// The service made ready for this call, a fresh clone left for the next (as in the layers
    /// themselves).
    fn take_ready(&mut self) -> C {
        let fresh = self.inner.clone();
        mem::replace(&mut self.inner, fresh)
    }
}

impl<C, T, B, R> Service<Request<B>> for Stack<C, T>
where
    // First, so that a body the stack cannot replay is named in the compiler's error.
    B: ReplayBody,
    R: ReplayBody + http_body::Body + Send + 'static,
    C: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
    T: TokenSource,
{
    type Response = Response<R>;
    type Error = BoxError;
    type Future = ResponseFuture<C, B, T>;

    /// With the idempotency layer, always ready, as that layer is (the service below is asked
    /// in `call`, and nothing below is held between calls); without it, ready when the service
    /// below is, as the retry layer is.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        if self.idempotency.is_some() {
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        // One clock read for the call's start, the token's expiry and the attempt's timer, lent
        // to a pacer below that starts the call in `poll_ready`.
        let now = Instant::now();
        // The idempotency layer's role: a key of the stack's own for a guarded method, in the
        // request's header; the caller's key goes through the layer itself.
        let key = match &self.idempotency {
            None => None,
            Some(config) => {
                let key = match idempotency::route(config, &mut request) {
                    Route::Pass => None,
                    Route::Generated(key) => Some(key),
                    Route::Keyed => return self.detour(Detour::Keyed(config.clone(), request)),
                };
                // As the idempotency layer does: the service below is asked here, with a waker
                // that wakes no one. Not ready at once, it goes with the call, which waits for
                // it with the caller's waker.
                let inner = &mut self.inner;
                match crate::time::lend(now, || {
                    inner.poll_ready(&mut Context::from_waker(Waker::noop()))
                }) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(e)) => return self.not_ready(e.into()),
                    Poll::Pending => return self.detour(Detour::NotReady(request, key)),
                }
                key
            }
        };
        let (parts, body) = request.into_parts();
        let body = body.into_replay();
        // The auth layer's role: a token at hand, for a request in its scope whose body can be
        // sent again after a 401.
        let token = match self.auth.in_scope(&parts) && body.is_replayable() {
            true => self.auth.token_at_hand(now),
            false => None,
        };
        let Some(token) = token else {
            return self.detour(Detour::WithoutToken(parts, body, key));
        };
        // The retry layer's role: the call, and its first attempt. The future is made first and
        // the call's state put straight into it, where it stays: no move of the call or of its
        // request head after it is made.
        let mut this = ResponseFuture {
            kind: Kind::First {
                future: None,
                attempt: None,
                call: None,
                key,
                token: None,
            },
            source: PhantomData,
        };
        let Kind::First {
            future,
            attempt: attempt_slot,
            call: call_slot,
            key,
            token: token_slot,
        } = &mut this.kind
        else {
            // Made as the first attempt just above: never taken.
            return ResponseFuture::failed(
                "the stack's future was not made as its first attempt".into(),
            );
        };
        let call = Call::begin(call_slot, &self.retry, parts, now);
        let (mut request, attempt) = match call.first_attempt::<B>(body) {
            Ok(first) => first,
            Err(e) => return ResponseFuture::unsent(call_slot, e, key.take()),
        };
        request.headers_mut().insert(AUTHORIZATION, token.header);
        // Sent in the attempt's span, as the retry layer sends (a service below may log in
        // `call`), with the timeout the layers' form puts below the auth layer.
        *future = Some({
            let _attempt = attempt.span.enter();
            Timed::new_at(self.inner.call(request), self.attempt_timeout, now)
        });
        *attempt_slot = Some(attempt);
        *token_slot = Some(token.token);
        this
    }
}

/// Where a call leaves the common way in [`Stack::call`] to go through the layers themselves.
enum Detour<B> {
    /// A key of the caller's: the whole call, the idempotency layer's store included.
    Keyed(Arc<idempotency::Config>, Request<B>),
    /// The service below is not ready yet: the call waits for it with the caller's waker.
    NotReady(Request<B>, Option<IdempotencyKey>),
    /// No token at hand, a request out of the token's scope, or a body that cannot be sent
    /// again: the call through the retry layer, on the service made ready for it.
    WithoutToken(http::request::Parts, crate::Body, Option<IdempotencyKey>),
}

impl<C, T> Stack<C, T>
where
    C: Clone + Send + 'static,
    T: TokenSource,
{
    /// A call off the common way, through the layers. Out of [`Stack::call`]'s line, so that
    /// the common way's code stays short, on few cache lines.
    #[cold]
    #[inline(never)]
    fn detour<B, R>(&mut self, detour: Detour<B>) -> ResponseFuture<C, B, T>
    where
        B: ReplayBody,
        R: ReplayBody + http_body::Body + Send + 'static,
        C: Service<Request<B>, Response = Response<R>>,
        C::Future: Send + 'static,
        C::Error: Into<BoxError>,
    {
        match detour {
            Detour::Keyed(config, request) => {
                let layers = self.layers_over(self.inner.clone());
                let mut layer = Idempotency::from_parts(layers, config);
                ResponseFuture::boxed(Box::pin(layer.call(request)))
            }
            Detour::NotReady(request, key) => {
                let waiting = self.take_ready();
                let layers = self.layers_over(waiting);
                ResponseFuture::boxed(Box::pin(async move {
                    with_key(layers.oneshot(request).await, key)
                }))
            }
            Detour::WithoutToken(parts, body, key) => {
                let ready = self.take_ready();
                let mut layers = self.layers_over(ready);
                let call = layers.call_replay::<B, R>(parts, body);
                ResponseFuture::boxed(Box::pin(async move { with_key(call.await, key) }))
            }
        }
    }

    /// The service below failed to get ready: the call fails with its error, and the next
    /// call gets a fresh clone of it.
    #[cold]
    #[inline(never)]
    fn not_ready<B>(&mut self, e: BoxError) -> ResponseFuture<C, B, T>
    where
        C: Service<Request<B>>,
        C::Response: Send + 'static,
    {
        self.inner = self.inner.clone();
        ResponseFuture::failed(e)
    }
}

/// `result`, with `key` named on its response when there is one (as the idempotency layer
/// does).
#[inline(always)]
fn with_key<R>(
    mut result: Result<Response<R>, BoxError>,
    key: Option<IdempotencyKey>,
) -> Result<Response<R>, BoxError> {
    name_key(&mut result, key);
    result
}

/// [`with_key`] in place: the common end, a GET without a key, moves nothing.
#[inline(always)]
fn name_key<R>(result: &mut Result<Response<R>, BoxError>, key: Option<IdempotencyKey>) {
    if let (Ok(response), Some(key)) = (result, key) {
        response.extensions_mut().insert(key);
    }
}

pin_project! {
    /// The response future of [`Stack`].
    pub struct ResponseFuture<C, B, T>
    where
        C: Service<Request<B>>,
    {
        #[pin]
        kind: Kind<C, B>,
        // The token source's type: a 401 reaches the auth layer's state through the call.
        source: PhantomData<fn() -> T>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<C, B>
    where
        C: Service<Request<B>>,
    {
        // The first attempt, in flight (`None` only while `Stack::call` makes it).
        First {
            #[pin]
            future: Option<Timed<C::Future>>,
            attempt: Option<Attempt>,
            call: Option<Call>,
            key: Option<IdempotencyKey>,
            // The token the attempt carries: after a 401, the one refused.
            token: Option<Token>,
        },
        // The rest of the call, or all of it.
        Boxed {
            future: Boxed<C::Response>,
        },
    }
}

impl<C, B, T> ResponseFuture<C, B, T>
where
    C: Service<Request<B>>,
{
    fn boxed(future: Boxed<C::Response>) -> Self {
        ResponseFuture {
            kind: Kind::Boxed { future },
            source: PhantomData,
        }
    }

    /// A call that failed before anything was sent.
    #[cold]
    #[inline(never)]
    fn failed(e: BoxError) -> Self
    where
        C::Response: Send + 'static,
    {
        ResponseFuture::boxed(Box::pin(std::future::ready(Err(e))))
    }
}

impl<C, B, T, R> ResponseFuture<C, B, T>
where
    C: Service<Request<B>, Response = Response<R>>,
    R: Send + 'static,
{
    /// The first attempt could not be made: the call ends with `e`, counted as the retry layer
    /// counts such an end.
    #[cold]
    #[inline(never)]
    fn unsent(call: &mut Option<Call>, e: BoxError, key: Option<IdempotencyKey>) -> Self {
        let result = match call.take() {
            Some(call) => call.finish(Err(e)),
            None => Err(e),
        };
        ResponseFuture::boxed(Box::pin(std::future::ready(with_key(result, key))))
    }
}

impl<C, B, T, R> Future for ResponseFuture<C, B, T>
where
    B: ReplayBody,
    R: ReplayBody + http_body::Body + Send + 'static,
    C: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
    T: TokenSource,
{
    type Output = Result<Response<R>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        loop {
            let rest: Boxed<Response<R>> = match kind.as_mut().project() {
                KindProj::Boxed { future } => return future.as_mut().poll(cx),
                KindProj::First {
                    future,
                    attempt,
                    call,
                    key,
                    token,
                } => {
                    let (Some(future), Some(attempt_ref), Some(call_ref)) =
                        (future.as_pin_mut(), attempt.as_ref(), call.as_ref())
                    else {
                        return Poll::Ready(Err(
                            "the stack's future was polled after it completed".into(),
                        ));
                    };
                    let mut outcome = {
                        let _call = call_ref.span.enter();
                        let _attempt = attempt_ref.span.enter();
                        ready!(future.poll(cx))
                    };
                    let Some(attempt) = attempt.take() else {
                        return Poll::Ready(Err("the stack's future lost its call".into()));
                    };
                    let key = key.take();
                    // Looked at in place: the common answer is not moved to be matched.
                    let unauthorized = outcome
                        .as_ref()
                        .is_ok_and(|response| response.status() == StatusCode::UNAUTHORIZED);
                    match outcome {
                        Ok(response) if unauthorized => {
                            let (Some(call), Some(token)) = (call.take(), token.take()) else {
                                return Poll::Ready(Err("the stack's future lost its call".into()));
                            };
                            Box::pin(after_401::<C, B, T, R>(call, attempt, token, response, key))
                        }
                        _ => match retry::judge_first(call, attempt, &outcome) {
                            // The common end: the outcome goes back from where it lies.
                            None => {
                                name_key(&mut outcome, key);
                                return Poll::Ready(outcome);
                            }
                            Some((attempt, decision)) => {
                                match retry::after_judged(call, attempt, decision, outcome) {
                                    AfterFirst::Done(result) => {
                                        return Poll::Ready(with_key(result, key));
                                    }
                                    AfterFirst::Retry { call, delay, last } => {
                                        match retry::rest_of_call::<Auth<AttemptTimeout<C>, T>, B, R>(
                                            call, delay, last,
                                        ) {
                                            Ok(rest) => {
                                                Box::pin(async move { with_key(rest.await, key) })
                                            }
                                            Err(e) => return Poll::Ready(Err(e)),
                                        }
                                    }
                                }
                            }
                        },
                    }
                }
            };
            kind.set(Kind::Boxed { future: rest });
        }
    }
}

/// After a 401 at the first attempt: the auth layer's re-send (a new token, the request once
/// more, from the head the call keeps), then what the retry layer makes of its outcome.
async fn after_401<C, B, T, R>(
    call: Call,
    attempt: Attempt,
    token: Token,
    response: Response<R>,
    key: Option<IdempotencyKey>,
) -> Result<Response<R>, BoxError>
where
    B: ReplayBody,
    R: http_body::Body + Send + 'static,
    C: Service<Request<B>, Response = Response<R>> + Clone + Send + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
    T: TokenSource,
{
    // The auth layer's state, through the service the retry layer keeps for the attempts after
    // a first (the auth layer over the timeout, made with the stack): a call holds it only
    // once a 401 asks for it.
    let outcome = match call.spare::<Auth<AttemptTimeout<C>, T>>() {
        Some(auth) => {
            let resend = Resend {
                parts: call.parts.clone(),
                body: call.body_copy().unwrap_or_default(),
                shared: auth.into_parts().1.handle(),
                token,
            };
            resend
                .after_401::<B, R>(response)
                .instrument(attempt.span.clone())
                .instrument(call.span.clone())
                .await
        }
        None => {
            tracing::debug!("401, and no service to send the request again on: returned as is");
            Ok(response)
        }
    };
    let mut slot = Some(call);
    let result = match retry::after_first(&mut slot, attempt, outcome) {
        AfterFirst::Done(result) => result,
        AfterFirst::Retry { call, delay, last } => {
            retry::rest_of_call::<Auth<AttemptTimeout<C>, T>, B, R>(call, delay, last)?.await
        }
    };
    with_key(result, key)
}

/// The service below the auth layer in the layers' form of the stack: `C` with the timeout on
/// each attempt, when there is one.
#[derive(Clone)]
pub(crate) struct AttemptTimeout<C> {
    inner: C,
    timeout: Option<Duration>,
}

impl<C, Req> Service<Req> for AttemptTimeout<C>
where
    C: Service<Req>,
    C::Error: Into<BoxError>,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Timed<C::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        Timed::new(self.inner.call(request), self.timeout)
    }
}

pin_project! {
    /// A future of the service below, ended by the attempt's timeout when there is one: polled
    /// first, then the timer, as `tower::timeout::Timeout` does.
    pub(crate) struct Timed<F> {
        #[pin]
        future: F,
        timer: Option<Timer>,
    }
}

impl<F> Timed<F> {
    fn new(future: F, timeout: Option<Duration>) -> Self {
        Timed {
            future,
            timer: timeout.map(|t| Timer::until(crate::time::from_now(t))),
        }
    }

    /// Timed from `start`, a clock read made when the call began.
    fn new_at(future: F, timeout: Option<Duration>, start: Instant) -> Self {
        Timed {
            future,
            timer: timeout.map(|t| Timer::until(crate::time::after(start, t))),
        }
    }
}

impl<F, R, E> Future for Timed<F>
where
    F: Future<Output = Result<R, E>>,
    E: Into<BoxError>,
{
    type Output = Result<R, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(outcome) = this.future.poll(cx) {
            return Poll::Ready(outcome.map_err(Into::into));
        }
        match this.timer {
            Some(timer) => {
                ready!(timer.poll_elapsed(cx));
                Poll::Ready(Err(tower::timeout::error::Elapsed::new().into()))
            }
            None => Poll::Pending,
        }
    }
}

impl<C, B, T> fmt::Debug for ResponseFuture<C, B, T>
where
    C: Service<Request<B>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match &self.kind {
            Kind::First { .. } => "first attempt",
            Kind::Boxed { .. } => "boxed",
        };
        f.debug_struct("ResponseFuture")
            .field("kind", &kind)
            .finish()
    }
}
