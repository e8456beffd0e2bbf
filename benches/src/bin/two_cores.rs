//! What sharing a stack between two cores costs: the same in-memory calls made by one thread,
//! then by two threads at once on clones of one stack (a runtime each), in nanoseconds per call.
//! Every reference count, lock and counter the calls write is a cache line the two cores pass
//! back and forth; this is the part of the loopback benchmark's cost at 32 requests in flight
//! that a single-threaded in-memory benchmark does not see.
//!
//! ```text
//! cargo run --release -p benches --bin two_cores -- [--rounds N] [--calls N] [--leave-one-out]
//! ```
//!
//! Each round runs every stack once alone and once on two threads, in an order rotated round by
//! round; the table gives the medians over the rounds, and "added by the second core" is the
//! median of each round's difference. On a machine whose two cores are busy with other work the
//! two threads do not always run at once: read the medians, and compare stacks of one run only.

use std::time::Instant;

use benches::stack::{self, Erased, instant_service, time_calls};
use genesys_tower::{BoxError, Metrics};
use http::Method;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

/// Nanoseconds per call of `calls` GETs on each of `threads` clones of `svc`, at once.
fn run(svc: &Erased, threads: usize, calls: u32) -> f64 {
    let start = std::sync::Barrier::new(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let (svc, start) = (svc.clone(), &start);
                scope.spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a tokio runtime");
                    start.wait();
                    rt.block_on(time_calls(svc, Method::GET, calls))
                })
            })
            .collect();
        let ns: Vec<f64> = handles
            .into_iter()
            .map(|h| h.join().expect("a thread panicked"))
            .collect();
        ns.iter().sum::<f64>() / ns.len() as f64
    })
}

fn main() {
    let (mut rounds, mut calls, mut leave_one_out) = (15usize, 200_000u32, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = || {
            args.next()
                .and_then(|v| v.parse::<u32>().ok())
                .filter(|n| *n > 0)
                .unwrap_or_else(|| usage())
        };
        match arg.as_str() {
            "--rounds" => rounds = number() as usize,
            "--calls" => calls = number(),
            "--leave-one-out" => leave_one_out = true,
            _ => usage(),
        }
    }
    let metrics = Metrics::new();
    let mut stacks: Vec<(&str, Erased)> = vec![
        (
            "in-memory service alone",
            BoxCloneSyncService::new(instant_service().map_err(BoxError::from)),
        ),
        (
            "tower's own stack",
            BoxCloneSyncService::new(stack::tower_stack(instant_service())),
        ),
        (
            "genesys-tower stack",
            BoxCloneSyncService::new(stack::full_stack(
                instant_service(),
                stack::concurrency(64, &metrics),
                &metrics,
            )),
        ),
    ];
    if leave_one_out {
        for name in stack::LEAVE_ONE_OUT {
            let leaf = instant_service().map_err(BoxError::from);
            stacks.push((
                name,
                stack::without(name, leaf, &metrics).expect("a known name"),
            ));
        }
    }
    // Warm up: the allocator's caches, the token, the branch predictors.
    for (_, svc) in &stacks {
        run(svc, 2, calls / 4);
    }
    let (mut one, mut two) = (
        vec![Vec::new(); stacks.len()],
        vec![Vec::new(); stacks.len()],
    );
    let started = Instant::now();
    for round in 0..rounds {
        for k in 0..stacks.len() {
            let i = (k + round) % stacks.len();
            one[i].push(run(&stacks[i].1, 1, calls));
            two[i].push(run(&stacks[i].1, 2, calls));
        }
    }
    println!(
        "{rounds} rounds of {calls} GETs per thread, {:.0} s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "| stack | one thread, ns per call | two threads at once | added by the second core |"
    );
    println!("| --- | --- | --- | --- |");
    for (i, (name, _)) in stacks.iter().enumerate() {
        let added: Vec<f64> = one[i].iter().zip(&two[i]).map(|(a, b)| b - a).collect();
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} |",
            median(one[i].clone()),
            median(two[i].clone()),
            median(added)
        );
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn usage() -> ! {
    eprintln!("usage: two_cores [--rounds N] [--calls N] [--leave-one-out]");
    std::process::exit(2)
}
