//! Loopback throughput, the clients interleaved round by round: a hyper server on 127.0.0.1 and,
//! at 1 and at 32 requests in flight, hyper-util's pooled client as it is (raw), tower's own
//! middleware in the same roles (retry, a bearer header, a timeout, a concurrency limit), the
//! genesys-tower stack as the client builds it (a `Stack` over the concurrency layer), the same
//! roles as the layers composed one over the other, and reqwest with reqwest-middleware and
//! reqwest-retry. Each round runs
//! every client once, in an order rotated round by round, and each ratio is taken within its
//! round, so that the machine's load moves all clients alike.
//!
//! ```text
//! cargo run --release -p benches --bin loopback_interleaved -- [--rounds N] [--ablation]
//!     [--leave-one-out] [--stack-without] [--only CLIENT] [--in-flight 1|32] [--one-thread]
//!     [--json]
//! ```
//!
//! Per client and concurrency: the median over the rounds of its throughput as a share of raw's
//! (and the interquartile range), CPU time per request (the whole process, server included: the
//! same for every client, so differences are the client's) and heap allocations per request
//! (a counting global allocator, the server's included likewise). `--ablation` adds the stack
//! with one layer at a time, and the leaf alone with the bearer header (what every stack here
//! costs besides its layers: the leaf's body mapping, the type erasure, and one more header for
//! the server to parse); `--leave-one-out` adds the layers composed with one left out, and
//! `--stack-without` the stack as the client builds it with one role taken out.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

// `leaf()`: what every stack here wraps, the same hyper-util client, its response body made a
// `Body`.
use benches::loopback::{Server, hyper_client, hyper_leaf as leaf};
use benches::stack::{self, Erased};
use genesys_tower::{Body, BoxError, Metrics};
use http::{Request, Uri};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use reqwest_middleware::ClientWithMiddleware;
use reqwest_retry::RetryTransientMiddleware;
use reqwest_retry::policies::ExponentialBackoff;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};
use tower_service::Service;

/// Counts every allocation of the process.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded to the system allocator as it came; the counter is a side
// effect that allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `dealloc` is passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: the caller's contract for `realloc` is passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const PATH: &str = "/api/v2/users/42";

/// One way of making a GET and reading its body to the end.
#[derive(Clone)]
enum Caller {
    Raw(Box<Client<HttpConnector, Body>>, Uri),
    Stack(Erased, Uri),
    Reqwest(ClientWithMiddleware, String),
}

impl Caller {
    async fn get(&mut self) {
        {
            match self {
                Caller::Raw(client, uri) => {
                    let request = Request::get(uri.clone())
                        .body(Body::empty())
                        .expect("valid");
                    let response = client.request(request).await.expect("raw GET");
                    let body = response.into_body().collect().await.expect("raw body");
                    std::hint::black_box(body);
                }
                Caller::Stack(service, uri) => {
                    let request = Request::get(uri.clone())
                        .body(Body::empty())
                        .expect("valid");
                    let ready = service.ready().await.expect("ready");
                    let response = ready.call(request).await.expect("stack GET");
                    let body = response.into_body().collect().await.expect("stack body");
                    std::hint::black_box(body);
                }
                Caller::Reqwest(client, url) => {
                    let response = client.get(url.as_str()).send().await.expect("reqwest GET");
                    std::hint::black_box(response.bytes().await.expect("reqwest body"));
                }
            }
        }
    }
}

/// What one run of one client measured.
#[derive(Debug, Clone, Copy)]
struct Run {
    wall: Duration,
    cpu: Duration,
    allocations: u64,
}

fn process_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

async fn run(caller: &Caller, in_flight: u64, requests: u64) -> Run {
    let (allocations, cpu, start) = (ALLOCATIONS.load(Relaxed), process_cpu(), Instant::now());
    let workers: Vec<_> = (0..in_flight)
        .map(|w| {
            let mut caller = caller.clone();
            let n = requests / in_flight + u64::from(w < requests % in_flight);
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
    Run {
        wall: start.elapsed(),
        cpu: process_cpu().saturating_sub(cpu),
        allocations: ALLOCATIONS.load(Relaxed) - allocations,
    }
}

fn tower_stack() -> Erased {
    BoxCloneSyncService::new(stack::tower_stack(leaf()))
}

fn our_stack() -> Erased {
    let metrics = Metrics::new();
    BoxCloneSyncService::new(stack::full_stack(
        leaf(),
        stack::concurrency(64, &metrics),
        &metrics,
    ))
}

/// The same roles as the layers composed one over the other.
fn our_layers() -> Erased {
    let metrics = Metrics::new();
    BoxCloneSyncService::new(stack::layered_stack(
        leaf(),
        stack::concurrency(64, &metrics),
        &metrics,
    ))
}

/// The stack with one layer only, for the ablation.
fn one_layer(name: &str) -> Erased {
    let l = stack::Layers::new(&Metrics::new());
    match name {
        "retry only" => BoxCloneSyncService::new(l.retry().layer(leaf())),
        "auth only" => BoxCloneSyncService::new(l.auth().layer(leaf())),
        "idempotency only" => BoxCloneSyncService::new(l.idempotency().layer(leaf())),
        "concurrency only" => BoxCloneSyncService::new(l.unpaced().layer(leaf())),
        "concurrency+pacing only" => BoxCloneSyncService::new(l.concurrency().layer(leaf())),
        // What every stack here does besides its layers: the leaf's mapping, the erasure and the
        // bearer header on the wire (which the server parses), and nothing else.
        "the leaf alone, with the header" => {
            BoxCloneSyncService::new(stack::bearer_header().layer(leaf()))
        }
        "timeout only" => {
            BoxCloneSyncService::new(l.timeout().layer(leaf()).map_err(BoxError::from))
        }
        other => unreachable!("no layer {other}"),
    }
}

fn quantile(mut v: Vec<f64>, q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let (mut rounds, mut ablation, mut leave_one_out, mut json) = (20usize, false, false, false);
    let mut stack_without = false;
    let mut only: Option<String> = None;
    let mut in_flight_only: Option<u64> = None;
    let mut one_thread = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--rounds" => {
                rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| usage())
            }
            "--ablation" => ablation = true,
            "--leave-one-out" => leave_one_out = true,
            "--stack-without" => stack_without = true,
            // One client (and raw, to compare with), or raw alone: for a profiler.
            "--only" => only = Some(args.next().unwrap_or_else(|| usage())),
            // One of the two concurrencies only: for a profiler too.
            "--in-flight" => {
                in_flight_only = Some(
                    args.next()
                        .and_then(|v| v.parse().ok())
                        .filter(|n| [1, 32].contains(n))
                        .unwrap_or_else(|| usage()),
                )
            }
            "--json" => json = true,
            // Server and clients on one thread: for an instruction counter (valgrind), whose
            // counts on two threads move with the order it happens to run them in.
            "--one-thread" => one_thread = true,
            _ => usage(),
        }
    }
    // Two workers: the machine's two cores, shared by the server and the clients.
    let rt = match one_thread {
        true => tokio::runtime::Builder::new_current_thread(),
        false => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(2);
            builder
        }
    }
    .enable_all()
    .build()
    .expect("a tokio runtime");
    let server = rt.block_on(Server::spawn()).expect("bind 127.0.0.1:0");
    let uri: Uri = server.url(PATH).parse().expect("a valid URI");

    let mut clients: Vec<(String, Caller)> = rt.block_on(async {
        vec![
            (
                "raw hyper-util".to_owned(),
                Caller::Raw(Box::new(hyper_client()), uri.clone()),
            ),
            (
                "tower's own stack".to_owned(),
                Caller::Stack(tower_stack(), uri.clone()),
            ),
            (
                "genesys-tower stack".to_owned(),
                Caller::Stack(our_stack(), uri.clone()),
            ),
            (
                "genesys-tower layers".to_owned(),
                Caller::Stack(our_layers(), uri.clone()),
            ),
            (
                "reqwest-middleware+retry".to_owned(),
                Caller::Reqwest(
                    reqwest_middleware::ClientBuilder::new(
                        reqwest::Client::builder()
                            .tcp_nodelay(true)
                            .build()
                            .expect("a reqwest client"),
                    )
                    .with(RetryTransientMiddleware::new_with_policy(
                        ExponentialBackoff::builder().build_with_max_retries(3),
                    ))
                    .build(),
                    server.url(PATH),
                ),
            ),
        ]
    });
    if ablation {
        for name in [
            "the leaf alone, with the header",
            "retry only",
            "auth only",
            "idempotency only",
            "concurrency only",
            "concurrency+pacing only",
            "timeout only",
        ] {
            let caller = rt.block_on(async { Caller::Stack(one_layer(name), uri.clone()) });
            clients.push((name.to_owned(), caller));
        }
    }

    let lists = [
        (leave_one_out, stack::LEAVE_ONE_OUT),
        (stack_without, stack::STACK_WITHOUT),
    ];
    for name in lists
        .iter()
        .filter(|(on, _)| *on)
        .flat_map(|(_, names)| *names)
    {
        let caller = rt.block_on(async {
            let stack = stack::without(name, leaf(), &Metrics::new()).expect("a known name");
            Caller::Stack(stack, uri.clone())
        });
        clients.push(((*name).to_owned(), caller));
    }
    if let Some(only) = &only {
        clients.retain(|(name, _)| name == "raw hyper-util" || name == only);
        // `--only "raw hyper-util"` runs raw alone: a baseline for a profiler or a counter.
        if clients.len() < 2 && only != "raw hyper-util" {
            eprintln!("--only {only}: no such client");
            std::process::exit(2);
        }
    }
    let mut report = Vec::new();
    for (in_flight, requests) in [(1u64, 10_000u64), (32, 30_000)] {
        if in_flight_only.is_some_and(|only| only != in_flight) {
            continue;
        }
        // Warm up every client: connections, pools, caches.
        for (_, caller) in &clients {
            rt.block_on(run(caller, in_flight, requests / 4));
        }
        let mut results: Vec<Vec<Run>> = vec![Vec::new(); clients.len()];
        for round in 0..rounds {
            for k in 0..clients.len() {
                let i = (k + round) % clients.len();
                results[i].push(rt.block_on(run(&clients[i].1, in_flight, requests)));
            }
        }
        for (i, (name, _)) in clients.iter().enumerate() {
            let share: Vec<f64> = (0..rounds)
                .map(|r| results[0][r].wall.as_secs_f64() / results[i][r].wall.as_secs_f64())
                .collect();
            let per = |f: fn(&Run) -> f64| {
                quantile(results[i].iter().map(f).collect(), 0.5) / requests as f64
            };
            report.push(serde_json::json!({
                "client": name,
                "in_flight": in_flight,
                "throughput_vs_raw": quantile(share.clone(), 0.5),
                "throughput_vs_raw_p25": quantile(share.clone(), 0.25),
                "throughput_vs_raw_p75": quantile(share, 0.75),
                "requests_per_s": requests as f64
                    / quantile(results[i].iter().map(|r| r.wall.as_secs_f64()).collect(), 0.5),
                "cpu_us_per_request": per(|r| r.cpu.as_secs_f64() * 1e6),
                "allocations_per_request": per(|r| r.allocations as f64),
            }));
        }
    }
    drop(server);

    if json {
        println!("{}", serde_json::Value::Array(report));
        return;
    }
    println!(
        "| client | in flight | throughput vs raw (median) | IQR | requests/s | CPU µs per request | allocations per request |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for r in &report {
        println!(
            "| {} | {} | {:.1} % | {:.1} – {:.1} % | {:.0} | {:.1} | {:.1} |",
            r["client"].as_str().unwrap_or(""),
            r["in_flight"],
            r["throughput_vs_raw"].as_f64().unwrap_or(0.0) * 100.0,
            r["throughput_vs_raw_p25"].as_f64().unwrap_or(0.0) * 100.0,
            r["throughput_vs_raw_p75"].as_f64().unwrap_or(0.0) * 100.0,
            r["requests_per_s"].as_f64().unwrap_or(0.0),
            r["cpu_us_per_request"].as_f64().unwrap_or(0.0),
            r["allocations_per_request"].as_f64().unwrap_or(0.0),
        );
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: loopback_interleaved [--rounds N] [--ablation] [--leave-one-out] \
         [--stack-without] [--only CLIENT] [--in-flight 1|32] [--one-thread] [--json]"
    );
    std::process::exit(2)
}
