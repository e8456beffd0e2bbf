//! Where the idempotency layer's time goes on a POST or PATCH: each step of its path, timed alone
//! over many calls, against the in-memory store. Prints a markdown table.
//!
//! ```text
//! cargo run --release -p benches --bin store_cost [-- --calls 200000]
//! ```
//!
//! The steps are the ones the layer takes for a call without a caller key: draw a UUID v4 key,
//! fingerprint method, path and body, claim the key in the store, and store the final response.
//! The bare moka figures show how much of the store's cost is its cache.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use benches::Table;
use bytes::Bytes;
use genesys_tower::idempotency::{
    Claim, Fingerprint, IdempotencyStore, MemoryStore, StoredResponse,
};
use http::{HeaderMap, Method, StatusCode, Uri};

const USAGE: &str = "usage: store_cost [--calls N (default 200000)]";

fn per_call(calls: u32, f: impl FnOnce()) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed() / calls
}

fn ns(d: Duration) -> String {
    format!("{} ns", d.as_nanos())
}

fn main() -> ExitCode {
    let mut calls: u32 = 200_000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next().and_then(|v| v.parse().ok())) {
            ("--calls", Some(n)) if n > 0 => calls = n,
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let uri: Uri = "http://api.test/api/v2/users/1"
        .parse()
        .expect("a valid URI");
    let body = br#"{"title":"Team Lead","version":3}"#;
    let keys: Vec<String> = (0..calls).map(|i| format!("key-{i}")).collect();
    let fingerprint = Fingerprint::of(&Method::PATCH, &uri, body);
    let response = || {
        StoredResponse::new(
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from_static(b"{\"ok\":true}"),
        )
    };

    let uuid = per_call(calls, || {
        for _ in 0..calls {
            std::hint::black_box(uuid::Uuid::new_v4().to_string());
        }
    });
    let fingerprinting = per_call(calls, || {
        for _ in 0..calls {
            std::hint::black_box(Fingerprint::of(&Method::PATCH, &uri, body));
        }
    });
    let store = MemoryStore::new();
    let claim_complete = per_call(calls, || {
        runtime.block_on(async {
            for key in &keys {
                let claim = store
                    .claim(key, fingerprint, Duration::from_secs(30).into())
                    .await;
                let Ok(Claim::Acquired(token)) = claim else {
                    panic!("a new key is acquired");
                };
                let stored = store.complete(key, &token, response(), Duration::from_secs(3600));
                assert!(stored.await.expect("the memory store does not fail"));
            }
        })
    });
    // Least recently used first, as the store's own cache evicts.
    let cache: moka::sync::Cache<String, u64> = moka::sync::Cache::builder()
        .max_capacity(u64::from(calls) * 2)
        .eviction_policy(moka::policy::EvictionPolicy::lru())
        .build();
    let moka_insert = per_call(calls, || {
        for key in &keys {
            cache.insert(key.clone(), 1);
        }
    });
    let moka_get = per_call(calls, || {
        for key in &keys {
            std::hint::black_box(cache.get(key));
        }
    });

    println!(
        "## The idempotency layer's steps on a POST or PATCH ({calls} calls each, one thread)\n"
    );
    let mut table = Table::new(["step", "time per call"]);
    table.row(["UUID v4 key, as text", &ns(uuid)]);
    table.row([
        "fingerprint (method, path, 33-byte body)",
        &ns(fingerprinting),
    ]);
    table.row(["MemoryStore: claim, then complete", &ns(claim_complete)]);
    table.row(["of which a bare moka insert", &ns(moka_insert)]);
    table.row(["and a bare moka get", &ns(moka_get)]);
    println!("{table}");
    ExitCode::SUCCESS
}
