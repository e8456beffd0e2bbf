//! The stacks the benchmarks measure, built the way `genesys-client` builds its default stack
//! (outermost first: idempotency, retry with a total deadline, auth, per-attempt timeout,
//! concurrency with pacing), but without type erasure so the layers' own cost is what is seen.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use genesys_tower::auth::{AuthLayer, Token, TokenSource, token_source_fn};
use genesys_tower::concurrency::ConcurrencyLayer;
use genesys_tower::idempotency::IdempotencyLayer;
use genesys_tower::retry::{RetryLayer, RetryPolicy};
use genesys_tower::stack::StackLayer;
use genesys_tower::{Body, BoxError, Metrics};
use http::header::AUTHORIZATION;
use http::{HeaderValue, Request, Response};
use tower::ServiceBuilder;
use tower::timeout::TimeoutLayer;
use tower::util::BoxCloneSyncService;
use tower_service::Service;

/// A token source that hands out the same long-lived token: after the first request, the auth
/// layer answers from its cache, which is the steady state being measured.
pub fn static_token() -> impl TokenSource + Clone {
    token_source_fn(|| async { Ok(Token::new("bench-token", Some(Duration::from_secs(3600)))) })
}

/// The leaf of the overhead benchmark: answers every request at once with a small body.
pub fn instant_service()
-> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send + 'static>
+ Clone
+ Send
+ 'static {
    tower::service_fn(|_req: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::from_bytes(Bytes::from_static(
            b"{\"ok\":true}",
        ))))
    })
}

/// Pacing that never binds (a million requests per millisecond): the pacing bookkeeping runs on
/// every request but never makes one wait.
pub const NON_BINDING_PACING: (u64, Duration) = (1_000_000, Duration::from_millis(1));

/// The timeout on each attempt of the full stack.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(30);

/// The concurrency layer of the full stack: `max_in_flight` permits and non-binding pacing.
pub fn concurrency(max_in_flight: usize, metrics: &Metrics) -> ConcurrencyLayer {
    ConcurrencyLayer::new(max_in_flight)
        .pacing(NON_BINDING_PACING.0, NON_BINDING_PACING.1)
        .metrics(metrics.clone())
}

/// The retry policy of the full stack: the defaults plus the client's 5-minute total deadline.
pub fn retry_policy() -> RetryPolicy {
    RetryPolicy::builder()
        .deadline(Duration::from_secs(300))
        .build()
}

/// The whole stack over `leaf` as the client builds it: the idempotency, retry and auth layers
/// and the timeout as one [`Stack`](genesys_tower::stack::Stack), over the concurrency layer,
/// every layer counting into `metrics`. The leaf answers a [`Body`], as the client's does
/// (it maps its hyper client's body once, at the bottom).
pub fn full_stack<S>(
    leaf: S,
    concurrency: ConcurrencyLayer,
    metrics: &Metrics,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = BoxError, Future: Send + 'static>
+ Clone
+ Send
+ 'static
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    let l = Layers::new(metrics);
    ServiceBuilder::new()
        .layer(l.stack())
        .layer(concurrency)
        .service(leaf)
}

/// The same roles as [`full_stack`], as the layers composed one over the other (what the
/// client built before its [`Stack`](genesys_tower::stack::Stack)), for comparison.
pub fn layered_stack<S, ResB>(
    leaf: S,
    concurrency: ConcurrencyLayer,
    metrics: &Metrics,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = BoxError, Future: Send + 'static>
+ Clone
+ Send
+ 'static
where
    S: Service<Request<Body>, Response = Response<ResB>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let l = Layers::new(metrics);
    ServiceBuilder::new()
        .layer(l.idempotency())
        // The idempotency layer keeps the leaf's response body type; it was `Body` before.
        .map_response(|r: Response<ResB>| r.map(Body::new))
        .layer(l.retry())
        .layer(l.auth())
        .layer(l.timeout())
        .layer(concurrency)
        .service(leaf)
}

/// This crate's layers as the client configures them, counting into one [`Metrics`]: the
/// pieces [`full_stack`] and the ablations build their stacks from.
#[derive(Debug, Clone)]
pub struct Layers {
    metrics: Metrics,
}

impl Layers {
    /// The layers, counting into `metrics`.
    pub fn new(metrics: &Metrics) -> Layers {
        Layers {
            metrics: metrics.clone(),
        }
    }

    /// The idempotency layer.
    pub fn idempotency(&self) -> IdempotencyLayer {
        IdempotencyLayer::new().metrics(self.metrics.clone())
    }

    /// The mapping of the response body to a [`Body`] that the idempotency layer needs above
    /// the others (it keeps the body type of the service below).
    pub fn body(&self) -> tower::util::MapResponseLayer<fn(Response<Body>) -> Response<Body>> {
        tower::util::MapResponseLayer::new(|r: Response<Body>| r.map(Body::new))
    }

    /// The retry layer, with [`retry_policy`].
    pub fn retry(&self) -> RetryLayer {
        RetryLayer::new(retry_policy()).metrics(self.metrics.clone())
    }

    /// The auth layer, with [`static_token`].
    pub fn auth(&self) -> AuthLayer<impl TokenSource + Clone + use<>> {
        AuthLayer::new(static_token()).metrics(self.metrics.clone())
    }

    /// The idempotency, retry and auth layers and the timeout, as one service.
    pub fn stack(&self) -> StackLayer<impl TokenSource + Clone + use<>> {
        self.whole(StackLayer::new(self.retry(), self.auth()))
    }

    /// `stack` (the retry and auth layers) with the idempotency layer and the timeout that
    /// [`stack`](Self::stack) adds.
    pub fn whole<T>(&self, stack: StackLayer<T>) -> StackLayer<T> {
        stack
            .idempotency(self.idempotency())
            .attempt_timeout(ATTEMPT_TIMEOUT)
    }

    /// tower's timeout, per attempt.
    pub fn timeout(&self) -> TimeoutLayer {
        TimeoutLayer::new(ATTEMPT_TIMEOUT)
    }

    /// The concurrency layer with non-binding pacing, as in [`full_stack`].
    pub fn concurrency(&self) -> ConcurrencyLayer {
        concurrency(64, &self.metrics)
    }

    /// The concurrency layer without pacing.
    pub fn unpaced(&self) -> ConcurrencyLayer {
        ConcurrencyLayer::new(64).metrics(self.metrics.clone())
    }
}

/// A type-erased stack, as a shared client usually is.
pub type Erased = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// The names [`without`] knows: the full stack with one layer left out.
pub const LEAVE_ONE_OUT: &[&str] = &[
    "without idempotency",
    "without retry",
    "without auth",
    "without the timeout",
    "without concurrency",
    "without pacing",
];

/// The full stack over `leaf` with the layer that `name` (one of [`LEAVE_ONE_OUT`] or
/// [`STACK_WITHOUT`]) names left out, the others in the client's order, type-erased; `None` for
/// another name. What a layer costs in the company of the others is not what it costs alone: a
/// layer's future holds everything below it, and a clone of the stack below is as deep as the
/// stack.
pub fn without<S>(name: &str, leaf: S, metrics: &Metrics) -> Option<Erased>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let l = Layers::new(metrics);
    // The layers, outermost first, over `leaf`.
    macro_rules! erased {
        ($($layer:expr),+) => {
            BoxCloneSyncService::new(ServiceBuilder::new()$(.layer($layer))+.service(leaf.clone()))
        };
    }
    if let Some(layers) = crate::leave_one_out!(name, l, erased) {
        return Some(layers);
    }
    let stack = StackLayer::new(l.retry(), l.auth());
    let whole = l.whole(stack.clone());
    Some(match name {
        "stack without idempotency" => {
            erased!(stack.attempt_timeout(ATTEMPT_TIMEOUT), l.concurrency())
        }
        "stack without the timeout" => erased!(stack.idempotency(l.idempotency()), l.concurrency()),
        "stack without pacing" => erased!(whole, l.unpaced()),
        "stack without concurrency" => erased!(whole),
        _ => return None,
    })
}

/// The full stack with the layer that `$name` (one of [`LEAVE_ONE_OUT`]) names left out, from
/// the [`Layers`] `$l`, built by the macro `$build` (given the layers, outermost first):
/// `Some` of what it builds, or `None` for another name. One list for every bench, boxed or not.
#[macro_export]
macro_rules! leave_one_out {
    ($name:expr, $l:ident, $build:ident) => {
        match $name {
            "without idempotency" => Some($build!(
                $l.body(),
                $l.retry(),
                $l.auth(),
                $l.timeout(),
                $l.concurrency()
            )),
            "without retry" => Some($build!(
                $l.idempotency(),
                $l.body(),
                $l.auth(),
                $l.timeout(),
                $l.concurrency()
            )),
            "without auth" => Some($build!(
                $l.idempotency(),
                $l.body(),
                $l.retry(),
                $l.timeout(),
                $l.concurrency()
            )),
            "without the timeout" => Some($build!(
                $l.idempotency(),
                $l.body(),
                $l.retry(),
                $l.auth(),
                $l.concurrency()
            )),
            "without concurrency" => Some($build!(
                $l.idempotency(),
                $l.body(),
                $l.retry(),
                $l.auth(),
                $l.timeout()
            )),
            "without pacing" => Some($build!(
                $l.idempotency(),
                $l.body(),
                $l.retry(),
                $l.auth(),
                $l.timeout(),
                $l.unpaced()
            )),
            _ => None,
        }
    };
}

/// More names [`without`] knows: the full stack as the client builds it (one
/// [`Stack`](genesys_tower::stack::Stack) over the concurrency layer) with one role taken out.
/// What a role costs inside the `Stack`, where the roles share one future, is not what its
/// layer costs composed with the others. The retry and auth roles are the `Stack` itself: they
/// have no row.
pub const STACK_WITHOUT: &[&str] = &[
    "stack without idempotency",
    "stack without the timeout",
    "stack without pacing",
    "stack without concurrency",
];

/// tower's own retry policy in the role of this stack's: 5xx and errors, 3 retries, a
/// replayable body.
#[derive(Debug, Clone)]
pub struct SimpleRetry(u32);

impl Default for SimpleRetry {
    fn default() -> Self {
        SimpleRetry(3)
    }
}

impl tower::retry::Policy<Request<Body>, Response<Body>, BoxError> for SimpleRetry {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _req: &mut Request<Body>,
        result: &mut Result<Response<Body>, BoxError>,
    ) -> Option<Self::Future> {
        let failed = match result {
            Ok(response) => response.status().is_server_error(),
            Err(_) => true,
        };
        (failed && self.0 > 0).then(|| {
            self.0 -= 1;
            std::future::ready(())
        })
    }

    fn clone_request(&mut self, req: &Request<Body>) -> Option<Request<Body>> {
        let body = req.body().try_clone()?;
        let mut clone = Request::new(body);
        *clone.method_mut() = req.method().clone();
        *clone.uri_mut() = req.uri().clone();
        *clone.headers_mut() = req.headers().clone();
        Some(clone)
    }
}

/// tower's own middleware in the roles of this stack's (the peer the loopback and in-memory
/// benchmarks compare with): tower's `Retry` with [`SimpleRetry`], tower-http's
/// `SetRequestHeader` for a bearer token, `Timeout` and `GlobalConcurrencyLimit`.
pub fn tower_stack<S>(
    leaf: S,
) -> impl Service<Request<Body>, Response = Response<Body>, Error = BoxError, Future: Send + 'static>
+ Clone
+ Send
+ Sync
+ 'static
where
    S: Service<Request<Body>, Response = Response<Body>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
{
    ServiceBuilder::new()
        .layer(tower::retry::RetryLayer::new(SimpleRetry::default()))
        .layer(bearer_header())
        .layer(TimeoutLayer::new(ATTEMPT_TIMEOUT))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(64))
        .service(leaf)
}

/// The bearer header as tower-http sets it: the auth role in [`tower_stack`], and what the
/// loopback benchmark's baseline puts on the wire.
pub fn bearer_header() -> tower_http::set_header::SetRequestHeaderLayer<HeaderValue> {
    tower_http::set_header::SetRequestHeaderLayer::overriding(
        AUTHORIZATION,
        HeaderValue::from_static("Bearer bench-token"),
    )
}

/// Times `n` sequential calls of `method` on `svc` (a request built per call, as the caller
/// would) and returns nanoseconds per call.
pub async fn time_calls<S>(mut svc: S, method: http::Method, n: u32) -> f64
where
    S: Service<Request<Body>>,
    S::Error: std::fmt::Debug,
{
    use tower::ServiceExt;
    let start = std::time::Instant::now();
    for _ in 0..n {
        let body = if method == http::Method::GET {
            Body::empty()
        } else {
            Body::from(r#"{"version":3,"title":"Agent"}"#)
        };
        let mut req = Request::new(body);
        *req.method_mut() = method.clone();
        *req.uri_mut() = http::Uri::from_static("http://api.example.test/api/v2/users/42");
        let ready = svc.ready().await.expect("ready");
        std::hint::black_box(ready.call(req).await.expect("a response"));
    }
    start.elapsed().as_nanos() as f64 / f64::from(n.max(1))
}
