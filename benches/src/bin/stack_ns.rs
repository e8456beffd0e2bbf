//! Nanoseconds per request through the full stack over an in-memory service, GET and PATCH: a
//! small figure to compare two builds of the stack (two commits) run alternately, process by
//! process, round by round.
//!
//! ```text
//! cargo run --release -p benches --bin stack_ns -- [--iters N]
//! ```
//!
//! Prints one line: `get_ns=<median> patch_ns=<median>` over 7 batches of N calls (default
//! 50,000), GET and PATCH batches alternating.
//!
//! Self-contained on purpose (it repeats `stack::time_calls`): the same file builds at an older
//! commit, whose library may not have that helper yet.

use std::time::Instant;

use benches::stack::{self, instant_service};
use genesys_tower::{Body, Metrics};
use http::{Method, Request};
use tower::{Service, ServiceExt};

fn main() {
    let mut iters: u32 = 50_000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--iters" => {
                iters = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| usage("--iters takes a positive number"));
            }
            other => usage(&format!("unknown argument {other}")),
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let metrics = Metrics::new();
    let svc = stack::full_stack(
        instant_service(),
        stack::concurrency(64, &metrics),
        &metrics,
    );
    let (get, patch) = rt.block_on(async move {
        let mut svc = svc;
        let mut run = async |method: &Method, n: u32| -> f64 {
            let start = Instant::now();
            for _ in 0..n {
                let body = if *method == Method::GET {
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
            start.elapsed().as_nanos() as f64 / f64::from(n)
        };
        // Warm up: the pools, the caches, the branch predictors.
        run(&Method::GET, iters / 5).await;
        run(&Method::PATCH, iters / 5).await;
        let (mut get, mut patch) = (Vec::new(), Vec::new());
        for _ in 0..7 {
            get.push(run(&Method::GET, iters).await);
            patch.push(run(&Method::PATCH, iters).await);
        }
        (median(get), median(patch))
    });
    println!("get_ns={get:.0} patch_ns={patch:.0}");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn usage(message: &str) -> ! {
    eprintln!("stack_ns: {message}\nusage: stack_ns [--iters N]");
    std::process::exit(2)
}
