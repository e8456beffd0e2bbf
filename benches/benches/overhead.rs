//! Overhead of each layer, and of the full stack, over an in-memory service that answers at once.
//! No retry is taken: this is the happy path every request pays for.
//!
//! ```text
//! cargo bench -p benches --bench overhead
//! ```

use std::hint::black_box;
use std::time::{Duration, Instant};

use benches::stack::{self, instant_service};
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, criterion_group, criterion_main};
use genesys_tower::auth::AuthLayer;
use genesys_tower::concurrency::ConcurrencyLayer;
use genesys_tower::idempotency::IdempotencyLayer;
use genesys_tower::retry::RetryLayer;
use genesys_tower::{Body, BoxError, Metrics};
use http::{Method, Request, Response, Uri};
use tokio::runtime::Runtime;
use tower::{Layer, ServiceExt};
use tower_service::Service;

const URI: &str = "http://api.example.test/api/v2/users/42";

fn request(method: &Method, uri: &Uri) -> Request<Body> {
    let body = if method == Method::GET {
        Body::empty()
    } else {
        Body::from(r#"{"version":3,"title":"Agent"}"#)
    };
    let mut req = Request::new(body);
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri.clone();
    req
}

/// Times `iters` sequential calls on one service (no clone per call, as a long-lived client
/// would use it), including building the request, which the raw service pays too.
fn bench_service<S, E>(
    g: &mut BenchmarkGroup<'_, WallTime>,
    rt: &Runtime,
    name: &str,
    method: Method,
    svc: S,
) where
    S: Service<Request<Body>, Response = Response<Body>, Error = E> + Clone + 'static,
    E: Into<BoxError>,
{
    let uri: Uri = URI.parse().expect("a valid URI");
    g.bench_function(name, |b| {
        b.to_async(rt).iter_custom(|iters| {
            let mut svc = svc.clone();
            let (method, uri) = (method.clone(), uri.clone());
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let ready = match svc.ready().await {
                        Ok(ready) => ready,
                        Err(e) => panic!("service not ready: {}", e.into()),
                    };
                    match ready.call(request(&method, &uri)).await {
                        Ok(response) => {
                            black_box(response);
                        }
                        Err(e) => panic!("call failed: {}", e.into()),
                    }
                }
                start.elapsed()
            }
        });
    });
}

fn overhead(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let leaf = instant_service();
    let metrics = Metrics::new();
    let mut group = c.benchmark_group("overhead");
    let g = &mut group;

    bench_service(g, &rt, "raw", Method::GET, leaf.clone());
    bench_service(
        g,
        &rt,
        "retry",
        Method::GET,
        RetryLayer::new(stack::retry_policy())
            .metrics(metrics.clone())
            .layer(leaf.clone()),
    );
    bench_service(
        g,
        &rt,
        "auth",
        Method::GET,
        AuthLayer::new(stack::static_token())
            .metrics(metrics.clone())
            .layer(leaf.clone()),
    );
    bench_service(
        g,
        &rt,
        "concurrency",
        Method::GET,
        ConcurrencyLayer::new(64)
            .metrics(metrics.clone())
            .layer(leaf.clone()),
    );
    bench_service(
        g,
        &rt,
        "concurrency+pacing",
        Method::GET,
        stack::concurrency(64, &metrics).layer(leaf.clone()),
    );
    bench_service(
        g,
        &rt,
        "idempotency GET",
        Method::GET,
        IdempotencyLayer::new()
            .metrics(metrics.clone())
            .layer(leaf.clone()),
    );
    bench_service(
        g,
        &rt,
        "idempotency PATCH",
        Method::PATCH,
        IdempotencyLayer::new()
            .metrics(metrics.clone())
            .layer(leaf.clone()),
    );
    bench_service(
        g,
        &rt,
        "full stack GET",
        Method::GET,
        stack::full_stack(leaf.clone(), stack::concurrency(64, &metrics), &metrics),
    );
    bench_service(
        g,
        &rt,
        "full stack PATCH",
        Method::PATCH,
        stack::full_stack(leaf, stack::concurrency(64, &metrics), &metrics),
    );
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = overhead
}
criterion_main!(benches);
