//! Throughput over a real socket: a hyper server on 127.0.0.1, and three clients calling it at 1
//! and at 32 requests in flight: hyper-util's pooled client as it is, our full stack over that
//! same client, and the closest peer, reqwest with reqwest-middleware and reqwest-retry.
//! Every response body is read to the end, so connections are reused by all three.
//!
//! ```text
//! cargo bench -p benches --bench loopback
//! ```

use std::future::Future;
use std::time::{Duration, Instant};

use benches::loopback::{Server, hyper_client, hyper_leaf};
use benches::stack;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use genesys_tower::{Body, BoxError, Metrics};
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use reqwest_middleware::ClientWithMiddleware;
use reqwest_retry::RetryTransientMiddleware;
use reqwest_retry::policies::ExponentialBackoff;
use tokio::runtime::Runtime;
use tower::ServiceExt;
use tower_service::Service;

const PATH: &str = "/api/v2/users/42";

/// One client, cloned once per concurrent worker, making one GET and reading the body.
trait Caller: Clone + Send + 'static {
    fn get(&mut self) -> impl Future<Output = ()> + Send + '_;
}

#[derive(Clone)]
struct Raw {
    client: Client<HttpConnector, Body>,
    uri: Uri,
}

impl Caller for Raw {
    async fn get(&mut self) {
        let request = Request::get(self.uri.clone())
            .body(Body::empty())
            .expect("a valid request");
        let response = self.client.request(request).await.expect("raw GET");
        let body = response.into_body().collect().await.expect("raw body");
        std::hint::black_box(body);
    }
}

#[derive(Clone)]
struct Ours<S> {
    service: S,
    uri: Uri,
}

impl<S> Caller for Ours<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
{
    async fn get(&mut self) {
        let request = Request::get(self.uri.clone())
            .body(Body::empty())
            .expect("a valid request");
        let response = match self.service.ready().await {
            Ok(ready) => ready.call(request).await,
            Err(e) => Err(e),
        };
        let response = response.unwrap_or_else(|e| panic!("stack GET: {e}"));
        let body = response.into_body().collect().await.expect("stack body");
        std::hint::black_box(body);
    }
}

#[derive(Clone)]
struct Peer {
    client: ClientWithMiddleware,
    url: String,
}

impl Caller for Peer {
    async fn get(&mut self) {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .expect("reqwest GET");
        let body = response.bytes().await.expect("reqwest body");
        std::hint::black_box(body);
    }
}

/// Runs `iters` requests split over `in_flight` workers and returns the wall time.
async fn run<C: Caller>(caller: &C, in_flight: u64, iters: u64) -> Duration {
    let start = Instant::now();
    let workers: Vec<_> = (0..in_flight)
        .map(|w| {
            let mut caller = caller.clone();
            // Spread the remainder so that exactly `iters` requests are made.
            let n = iters / in_flight + u64::from(w < iters % in_flight);
            tokio::spawn(async move {
                for _ in 0..n {
                    caller.get().await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("a worker panicked");
    }
    start.elapsed()
}

fn loopback(c: &mut Criterion) {
    // Two workers: the machine's two cores, shared by the server and the clients.
    let rt: Runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let server = rt.block_on(Server::spawn()).expect("bind 127.0.0.1:0");
    let uri: Uri = server.url(PATH).parse().expect("a valid URI");

    let raw = Raw {
        client: hyper_client(),
        uri: uri.clone(),
    };
    let metrics = Metrics::new();
    let ours = rt.block_on(async {
        Ours {
            service: stack::full_stack(hyper_leaf(), stack::concurrency(64, &metrics), &metrics),
            uri: uri.clone(),
        }
    });
    let peer = Peer {
        client: reqwest_middleware::ClientBuilder::new(
            reqwest::Client::builder()
                .tcp_nodelay(true)
                .build()
                .expect("a reqwest client"),
        )
        .with(RetryTransientMiddleware::new_with_policy(
            ExponentialBackoff::builder().build_with_max_retries(3),
        ))
        .build(),
        url: server.url(PATH),
    };

    let mut group = c.benchmark_group("loopback");
    group.throughput(Throughput::Elements(1));
    for in_flight in [1u64, 32] {
        group.bench_with_input(
            BenchmarkId::new("hyper-util", in_flight),
            &in_flight,
            |b, &n| {
                b.to_async(&rt)
                    .iter_custom(|iters| run_owned(raw.clone(), n, iters));
            },
        );
        group.bench_with_input(
            BenchmarkId::new("genesys-tower stack", in_flight),
            &in_flight,
            |b, &n| {
                b.to_async(&rt)
                    .iter_custom(|iters| run_owned(ours.clone(), n, iters));
            },
        );
        group.bench_with_input(
            BenchmarkId::new("reqwest-middleware+retry", in_flight),
            &in_flight,
            |b, &n| {
                b.to_async(&rt)
                    .iter_custom(|iters| run_owned(peer.clone(), n, iters));
            },
        );
    }
    group.finish();
    drop(server);
}

async fn run_owned<C: Caller>(caller: C, in_flight: u64, iters: u64) -> Duration {
    run(&caller, in_flight, iters).await
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    targets = loopback
}
criterion_main!(benches);
