//! `genesys-sim`: run the simulator until Ctrl-C.
//!
//! The first line on stdout is `listening on http://ADDR`; logs go to stderr (`RUST_LOG`).

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use genesys_sim::{ClientCredentials, Faults, SimConfig, Simulator};

/// A local Genesys Cloud: OAuth, users, data actions, ingestion, integration config and limits,
/// with a per-token quota, seeded faults and an effect ledger (GET /sim/ledger, GET /sim/stats).
#[derive(Debug, Parser)]
#[command(name = "genesys-sim", version)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,

    /// An accepted OAuth client as ID:SECRET (repeatable) [default: demo-client:demo-secret]
    #[arg(long = "client", value_name = "ID:SECRET", value_parser = ClientCredentials::parse)]
    clients: Vec<ClientCredentials>,

    /// Lifetime of issued tokens in seconds.
    #[arg(long, value_name = "SECS", default_value = "86400", value_parser = genesys_sim::parse_token_ttl)]
    token_ttl: Duration,

    /// Per-token quota as N/SECS (requests per fixed window), or `off`.
    #[arg(long, value_name = "N/SECS", default_value = "300/60", value_parser = parse_rate_limit)]
    rate_limit: RateLimit,

    /// Per-OAuth-client quota across all of the client's tokens, as N/SECS, or `off`: what a
    /// fleet of processes, each with its own token, shares.
    #[arg(long, value_name = "N/SECS", default_value = "off", value_parser = parse_rate_limit)]
    client_rate_limit: RateLimit,

    /// Number of seeded users.
    #[arg(long, value_name = "N", default_value_t = 1000, value_parser = parse_users)]
    users: usize,

    /// Faults to inject, e.g. 5xx=0.05,503-retry-after=0.01,reset-before=0.01,reset-after=0.01,latency=5ms..50ms,long-retry-after=0.001,revoke-every=30s
    #[arg(long, value_name = "SPEC", default_value = "none", value_parser = |s: &str| s.parse::<Faults>().map_err(|e| e.to_string()))]
    faults: Faults,

    /// Inject the probability faults only into these requests: header:NAME=VALUE (e.g. the
    /// policy version a client tags its calls with) or client:ID.
    #[arg(long, value_name = "TARGET", value_parser = genesys_sim::FaultTarget::parse)]
    faults_only_for: Option<genesys_sim::FaultTarget>,

    /// Seed for users, ids and faults.
    #[arg(long, value_name = "N", default_value_t = 0)]
    seed: u64,

    /// Do not send the inin-ratelimit-allowed/count/reset headers.
    #[arg(long)]
    no_ratelimit_headers: bool,

    /// The share of answers (0 to 1) that carry the inin-ratelimit-* headers (a seeded draw).
    #[arg(long, value_name = "SHARE", default_value = "1", value_parser = genesys_sim::parse_share)]
    ratelimit_headers_share: f64,

    /// The share of answers (0 to 1) in the real API's other words: a 429 coded
    /// too.many.requests.retry.after, the other 401 code, a stale version as a 400 (a seeded
    /// draw).
    #[arg(long, value_name = "SHARE", default_value = "0.5", value_parser = genesys_sim::parse_share)]
    code_variants: f64,

    /// How Retry-After is written on 429s and 503s: seconds, http-date or malformed.
    #[arg(long, value_name = "FORMAT", default_value = "seconds", value_parser = genesys_sim::RetryAfterFormat::parse)]
    retry_after_format: genesys_sim::RetryAfterFormat,

    /// Serve the ingestion endpoint on this path.
    #[arg(long, value_name = "PATH", default_value = genesys_sim::DEFAULT_INGESTION_PATH)]
    ingestion_path: String,

    /// The ingestion endpoint ignores Idempotency-Key and applies every request, a repeat
    /// included, as the API's real bulk endpoints do.
    #[arg(long)]
    ingestion_ignores_keys: bool,
}

#[derive(Debug, Clone, Copy)]
struct RateLimit(Option<(u32, Duration)>);

fn parse_users(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n <= genesys_sim::MAX_USERS => Ok(n),
        _ => Err(format!(
            "`{}` is not a number of users from 0 to {}",
            s.chars().take(40).collect::<String>(),
            genesys_sim::MAX_USERS
        )),
    }
}

fn parse_rate_limit(s: &str) -> Result<RateLimit, String> {
    genesys_sim::parse_rate_limit(s).map(RateLimit)
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let mut config = SimConfig::default()
        .addr(args.addr)
        .token_ttl(args.token_ttl)
        .rate_limit(args.rate_limit.0)
        .client_rate_limit(args.client_rate_limit.0)
        .users(args.users)
        .faults(args.faults)
        .faults_only_for(args.faults_only_for)
        .seed(args.seed)
        .ratelimit_headers(!args.no_ratelimit_headers)
        .ratelimit_headers_share(args.ratelimit_headers_share)
        .code_variants(args.code_variants)
        .retry_after_format(args.retry_after_format)
        .ingestion_path(args.ingestion_path)
        .ingestion_deduplicates(!args.ingestion_ignores_keys);
    if !args.clients.is_empty() {
        config = config.clients(args.clients);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("genesys-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let faults = config.faults.to_string();
        let sim = match Simulator::spawn(config).await {
            Ok(sim) => sim,
            Err(e) => {
                eprintln!("genesys-sim: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("listening on {}", sim.base_url());
        tracing::info!(faults = %faults, "ready; Ctrl-C stops");
        let _ = tokio::signal::ctrl_c().await;
        sim.shutdown().await;
        ExitCode::SUCCESS
    })
}
