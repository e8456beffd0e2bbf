//! Seed 003's data action service: `POST /invoke-data-action` runs a Genesys Cloud data action
//! once per idempotency key, whatever its callers retry.
//!
//! ```text
//! cargo run -p examples --example data_action_service              # Redis at REDIS_URL
//! cargo run -p examples --example data_action_service -- --memory  # one process, no Redis
//! ```
//!
//! Options: `--memory` (in-memory idempotency store instead of Redis), `--addr HOST:PORT`
//! (default `127.0.0.1:3000`; port 0 picks a free one).
//!
//! Environment:
//! - `REDIS_URL` (default `redis://127.0.0.1:6379`): the store shared by every instance;
//! - `GENESYS_CLIENT_ID`, `GENESYS_CLIENT_SECRET`, `GENESYS_REGION` (`us-east-1`,
//!   `mypurecloud.ie`, ...): a real org; without them the service starts an embedded simulator;
//! - `DATA_ACTION_ID`: the action run when a request names none (the simulator's `echo` by
//!   default; no default with a real org).
//!
//! The service itself (routes, statuses, what is stored) is
//! `examples::data_action_service`; `docs/data_action_service.md` shows how to call it.

use std::error::Error;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use examples::data_action_service::{DataActionService, ROUTE, client_builder};
use genesys_client::Region;
use genesys_sim::{ECHO_ACTION_ID, SimConfig, Simulator};
use genesys_tower::idempotency::{MemoryStore, RedisStore};
use tracing_subscriber::EnvFilter;

const USAGE: &str = "usage: data_action_service [--memory] [--addr HOST:PORT]";
const REDIS_PREFIX: &str = "data-action-service:idempotency:";

struct Args {
    memory: bool,
    addr: SocketAddr,
}

impl Args {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
        let mut parsed = Args {
            memory: false,
            addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
        };
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--memory" => parsed.memory = true,
                "--addr" => {
                    let value = args
                        .next()
                        .ok_or(format!("--addr needs HOST:PORT\n{USAGE}"))?;
                    parsed.addr = value
                        .parse()
                        .map_err(|e| format!("--addr {value:?}: {e} (expected HOST:PORT)"))?;
                }
                "-h" | "--help" => return Err(USAGE.to_owned()),
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        Ok(parsed)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn Error>> {
    let args = Args::parse(std::env::args().skip(1))?;
    let default_action = std::env::var("DATA_ACTION_ID")
        .ok()
        .filter(|a| !a.is_empty());

    // A real org when its three variables are set, the embedded simulator otherwise.
    let mut simulator = None;
    let mut service = match genesys_from_env()? {
        Some((id, secret, region)) => {
            println!("Genesys Cloud: {} ({region})", region.api_base_url());
            let client = client_builder()
                .region(region)
                .client_credentials(id, secret)
                .build()?;
            let service = DataActionService::new(client);
            match default_action {
                Some(action) => service.default_action_id(action),
                None => {
                    println!("no DATA_ACTION_ID: every request must name its \"action_id\"");
                    service
                }
            }
        }
        None => {
            let sim = Simulator::spawn(SimConfig::default()).await?;
            println!(
                "Genesys Cloud: embedded simulator at {} (set GENESYS_CLIENT_ID, \
                 GENESYS_CLIENT_SECRET and GENESYS_REGION for a real org)",
                sim.base_url()
            );
            let client = client_builder()
                .base_url(sim.base_url())
                .client_credentials("demo-client", "demo-secret")
                .build()?;
            simulator = Some(sim);
            DataActionService::new(client)
                .default_action_id(default_action.unwrap_or_else(|| ECHO_ACTION_ID.to_owned()))
        }
    };

    if args.memory {
        println!("idempotency store: memory (this process only)");
        service = service.store(MemoryStore::new());
    } else {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        check_redis(&url).await?;
        println!(
            "idempotency store: Redis at {}, keys under {REDIS_PREFIX:?}",
            redact(&url)
        );
        service = service.store(RedisStore::open(&url)?.prefix(REDIS_PREFIX));
    }

    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr} (POST {ROUTE}); Ctrl-C stops");
    println!(
        "try: curl -s http://{addr}{ROUTE} -H 'content-type: application/json' \
         -d '{{\"idempotency_key\":\"evt-1\",\"input_payload\":{{\"contactId\":\"c-1\"}}}}'"
    );
    axum::serve(listener, service.router())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    if let Some(sim) = simulator {
        sim.shutdown().await;
    }
    println!("stopped");
    Ok(())
}

/// The org's credentials and region, when all three variables are set.
fn genesys_from_env() -> Result<Option<(String, String, Region)>, String> {
    let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    let names = [
        "GENESYS_CLIENT_ID",
        "GENESYS_CLIENT_SECRET",
        "GENESYS_REGION",
    ];
    match names.map(var) {
        [Some(id), Some(secret), Some(region)] => {
            let region = region.parse::<Region>().map_err(|e| e.to_string())?;
            Ok(Some((id, secret, region)))
        }
        [None, None, None] => Ok(None),
        values => {
            let missing: Vec<&str> = names
                .iter()
                .zip(&values)
                .filter(|(_, v)| v.is_none())
                .map(|(n, _)| *n)
                .collect();
            Err(format!(
                "{} not set: set all three of {} for a real org, or none for the simulator",
                missing.join(", "),
                names.join(", ")
            ))
        }
    }
}

/// Fails early, with what to do, when Redis cannot be reached: otherwise every request would
/// get 503.
async fn check_redis(url: &str) -> Result<(), String> {
    let unreachable = |e: &dyn std::fmt::Display| {
        format!(
            "Redis at {} is not reachable ({e}): start it (redis-server), set REDIS_URL, or run \
             with --memory",
            redact(url)
        )
    };
    let client = redis::Client::open(url).map_err(|e| format!("invalid REDIS_URL: {e}"))?;
    let ping = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(Duration::from_secs(2), ping).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(unreachable(&e)),
        Err(_) => Err(unreachable(&"no answer within 2 s")),
    }
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}
