//! What each layer costs in the company of the others, counted in instructions and atomic
//! operations: N calls of one method through one stack over an in-memory service, for a counter
//! that the machine's load does not move (callgrind, under `scripts/layer-instructions.sh`).
//! Each stack is built unboxed, as its users would build it.
//!
//! ```text
//! cargo build --release -p benches --bin layer_cost
//! scripts/layer-instructions.sh            # every stack below, GET and PATCH, as a table
//! target/release/layer_cost STACK N [get|patch]
//! ```
//!
//! `STACK` is `raw` (the in-memory service alone), `ours` (this crate's full stack, as the client
//! builds it), `tower` (tower's own middleware in the same roles, the peer of issue 14), or
//! either stack with one layer left out: `ours-without-idempotency`, `-retry`, `-auth`,
//! `-the-timeout`, `-concurrency` or `-pacing` (the concurrency layer kept, its pacing off;
//! the rows of `benches::stack::LEAVE_ONE_OUT`, the idempotency layer's response body
//! mapping kept when the layer is left out), and
//! `tower-without-retry`, `-header`, `-timeout` or `-limit`. The instructions of one call are
//! the difference between two counts at two values of N, over their difference; the process
//! prints nothing else than the nanoseconds per call, which mean little under a counter.

use benches::stack::{self, SimpleRetry, instant_service, time_calls};
use genesys_tower::{BoxError, Metrics};
use http::Method;
use tower::ServiceBuilder;
use tower::util::MapErrLayer;

/// The names `STACK` may take.
const STACKS: &[&str] = &[
    "raw",
    "ours",
    "ours-layers",
    "ours-without-idempotency",
    "ours-without-retry",
    "ours-without-auth",
    "ours-without-the-timeout",
    "ours-without-concurrency",
    "ours-without-pacing",
    "retry-only",
    "auth-only",
    "tower",
    "tower-without-retry",
    "tower-without-header",
    "tower-without-timeout",
    "tower-without-limit",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(name), Some(n)) = (
        args.first().filter(|s| STACKS.contains(&s.as_str())),
        args.get(1)
            .and_then(|s| s.parse::<u32>().ok())
            .filter(|n| *n > 0),
    ) else {
        usage()
    };
    let method = match args.get(2).map(String::as_str) {
        None | Some("get") => Method::GET,
        Some("patch") => Method::PATCH,
        Some(_) => usage(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let metrics = Metrics::new();
    // This crate's layers, as `stack::full_stack` configures them.
    let l = stack::Layers::new(&metrics);
    // tower's, as `stack::tower_stack` configures them, over a leaf whose errors are boxed.
    let t_retry = || tower::retry::RetryLayer::new(SimpleRetry::default());
    let t_header = stack::bearer_header;
    let t_limit = || tower::limit::GlobalConcurrencyLimitLayer::new(64);
    let boxed = || MapErrLayer::new(BoxError::from);
    // The layers, outermost first, over the in-memory service; measured unboxed.
    macro_rules! measure {
        ($($layer:expr),+) => {
            rt.block_on(time_calls(
                ServiceBuilder::new()$(.layer($layer))+.service(instant_service()),
                method,
                n,
            ))
        };
    }
    let ns = match name.as_str() {
        "raw" => rt.block_on(time_calls(instant_service(), method, n)),
        "ours" => rt.block_on(time_calls(
            stack::full_stack(instant_service(), l.concurrency(), &metrics),
            method,
            n,
        )),
        "ours-layers" => rt.block_on(time_calls(
            stack::layered_stack(instant_service(), l.concurrency(), &metrics),
            method,
            n,
        )),
        "retry-only" => measure!(l.retry()),
        "auth-only" => measure!(l.auth()),
        "tower" => rt.block_on(time_calls(stack::tower_stack(instant_service()), method, n)),
        "tower-without-retry" => measure!(t_header(), l.timeout(), t_limit(), boxed()),
        "tower-without-header" => measure!(t_retry(), l.timeout(), t_limit(), boxed()),
        "tower-without-timeout" => measure!(t_retry(), t_header(), t_limit(), boxed()),
        "tower-without-limit" => measure!(t_retry(), t_header(), l.timeout(), boxed()),
        other => {
            // "ours-without-the-timeout" names the row "without the timeout".
            let row = other
                .strip_prefix("ours-")
                .unwrap_or(other)
                .replace('-', " ");
            benches::leave_one_out!(row.as_str(), l, measure).unwrap_or_else(|| usage())
        }
    };
    println!("{ns:.0} ns per call");
}

fn usage() -> ! {
    eprintln!(
        "usage: layer_cost STACK N [get|patch]\nSTACK: {}",
        STACKS.join(", ")
    );
    std::process::exit(2)
}
