//! The command line: every subcommand and flag, parsed by clap.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Bulk Genesys Cloud jobs that survive rate limits, expired tokens and flaky servers.
///
/// Credentials come from GENESYSCLOUD_OAUTHCLIENT_ID and GENESYSCLOUD_OAUTHCLIENT_SECRET (or
/// GENESYS_CLIENT_ID and GENESYS_CLIENT_SECRET: an OAuth client-credentials client), or
/// GENESYSCLOUD_ACCESS_TOKEN (a ready token); the region from --region or GENESYSCLOUD_REGION.
/// Try `gcx demo` first: it needs no account.
#[derive(Debug, Parser)]
#[command(name = "gcx", version, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) common: Common,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags every job takes.
#[derive(Debug, Clone, Args)]
pub(crate) struct Common {
    /// Genesys Cloud region: a name such as `us-east-1`, `eu-west-1`, or its domain
    /// such as `mypurecloud.ie`.
    #[arg(
        long,
        global = true,
        conflicts_with = "base_url",
        value_name = "REGION"
    )]
    pub(crate) region: Option<String>,

    /// API base URL (for a proxy or a simulator); OAuth goes to the same base unless
    /// --login-url is given.
    #[arg(long, global = true, value_name = "URL")]
    pub(crate) base_url: Option<String>,

    /// OAuth base URL, when it differs from the API's.
    #[arg(long, global = true, value_name = "URL")]
    pub(crate) login_url: Option<String>,

    /// gcx's configuration: the stack's settings (retry policy, limits, timeouts) and named
    /// profiles; a TOML file, or JSON by its extension; see docs/configuration.md. Default:
    /// ~/.config/gcx/config.toml (under $XDG_CONFIG_HOME) when it exists. The environment and
    /// the flags win over it.
    #[arg(long, global = true, value_name = "FILE", env = "GCX_CONFIG")]
    pub(crate) config: Option<PathBuf>,

    /// The policy store: versions of the stack's configuration applied with `gcx policy
    /// apply`, whose stable version (and canary) jobs run. Default:
    /// $XDG_STATE_HOME/gcx/policies, else ~/.local/state/gcx/policies.
    /// A store in Redis is `redis://...#NAME` (its password, if any, is never shown).
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "GCX_POLICY_STORE",
        hide_env_values = true
    )]
    pub(crate) policy_store: Option<PathBuf>,

    /// Use the profile NAME of the configuration file ([profiles.NAME]): its region, its
    /// credentials' source and its settings, over the file's own.
    #[arg(long, global = true, value_name = "NAME", env = "GCX_PROFILE")]
    pub(crate) profile: Option<String>,

    /// Requests in flight at once (default 8; 32 for the demo).
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub(crate) concurrency: Option<u32>,

    /// Client-side pacing: at most N requests per SECS seconds, e.g. `300/60` (a ceiling the
    /// pacing never passes; without it the pacing starts at the org's limit and adapts to what
    /// the server says).
    #[arg(long, global = true, value_name = "N/SECS", value_parser = parse_rate)]
    pub(crate) rate_limit: Option<Rate>,

    /// Share pacing with the other workers of one job (or any gcx on the same org and client)
    /// through the Redis at URL: together they stay under the one quota (--rate-limit, or the
    /// org's limit), a 429 seen by one holds all, and a worker that cannot reach Redis paces
    /// alone at its share (the quota / --fleet-size).
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "GCX_FLEET_REDIS",
        hide_env_values = true
    )]
    pub(crate) fleet_redis: Option<String>,

    /// How many workers share the quota (default: N of --shard I/N, else 1): a worker that
    /// cannot reach --fleet-redis paces at the quota divided by this.
    #[arg(long, global = true, value_name = "N", requires = "fleet_redis",
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub(crate) fleet_size: Option<u32>,

    /// With --fleet-redis and --shard: how long a worker's hold on its shard lasts without a
    /// renewal, in seconds (default 30); past it, another worker takes the shard over.
    #[arg(long, global = true, value_name = "SECS", hide = true, requires = "fleet_redis",
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub(crate) fleet_lease: Option<u64>,

    /// With --fleet-redis and --shard: the run's label, part of the fleet job's identity. A
    /// fleet job that completed is never run again by the same command (a late worker finds it
    /// complete); give every worker the same new LABEL to run the same input again as a new job.
    #[arg(long, global = true, value_name = "LABEL", requires = "fleet_redis",
          value_parser = parse_label)]
    pub(crate) fleet_run: Option<String>,

    /// Take only this worker's share of the input: the records whose line number modulo N is
    /// I (I from 0 to N-1), so that N workers started with 0/N to (N-1)/N on the same input
    /// deliver each record exactly once between them. Each worker keeps its own journal;
    /// resume a worker with the same command and the same I/N. With --fleet-redis, the workers
    /// are one job: each holds its shard by a lease in Redis, records every unit's state there,
    /// and stays until every shard is processed, taking over the shard of a worker that died.
    #[arg(long, global = true, value_name = "I/N", value_parser = parse_shard)]
    pub(crate) shard: Option<Shard>,

    /// Serve the HTTP stack's metrics (Prometheus text: calls, attempts, retries, 429s,
    /// latency histograms, per route) on http://ADDR/metrics while the job runs, e.g.
    /// `127.0.0.1:9464`.
    #[arg(long, global = true, value_name = "ADDR")]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,

    /// After the job, keep serving --metrics-addr for SECS seconds (or until Ctrl-C or
    /// SIGTERM; not at all after one stopped the job), so that a scraper reads the final
    /// counts.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 0, requires = "metrics_addr",
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub(crate) metrics_linger: u64,

    /// Write a JSON report (counts, durations, retries, every failure) to FILE.
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) report: Option<PathBuf>,

    /// Write the items that were not delivered to FILE, in the input's own format, so the
    /// same command can re-run just those.
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) failed: Option<PathBuf>,

    /// Write the items whose outcome is unknown (they may have been applied: a connection lost
    /// after the request was sent, a second Ctrl-C) to FILE, in the input's own format.
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) unknown: Option<PathBuf>,

    /// The job's journal: what happened to every record, synced to disk as the job goes. If
    /// FILE exists, the job resumes from it (delivered records are skipped, unknown outcomes are
    /// resolved safely). Default: a file per command and input in $GCX_STATE_DIR, else
    /// $XDG_STATE_HOME/gcx/journals, else ~/.local/state/gcx/journals; an unfinished one is
    /// resumed by running the same command again.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        conflicts_with = "no_journal"
    )]
    pub(crate) journal: Option<PathBuf>,

    /// Start over: replace the journal instead of resuming from it.
    #[arg(long, global = true)]
    pub(crate) fresh: bool,

    /// Keep no journal (a crash then cannot be resumed safely).
    #[arg(long, global = true)]
    pub(crate) no_journal: bool,

    /// Write invalid records (JSONL: line, reason, raw) to FILE.
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) quarantine: Option<PathBuf>,

    /// More logging (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub(crate) verbose: u8,

    /// No progress and no summary table; errors only.
    #[arg(short, long, global = true)]
    pub(crate) quiet: bool,

    /// Print the summary as JSON on stdout (the table goes to stderr).
    #[arg(long, global = true)]
    pub(crate) json: bool,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run a bulk user update on an embedded simulator with faults switched on.
    Demo(DemoArgs),
    /// User jobs.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Validate records against a JSON Schema and ingest them in chunks.
    Ingest(IngestArgs),
    /// Data action jobs.
    #[command(subcommand)]
    Actions(ActionsCommand),
    /// Retry policies: check a configuration file and preview what it will do.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// The stack's configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a completion script for a shell, e.g. `gcx completions bash > /etc/bash_completion.d/gcx`.
    Completions {
        /// The shell: bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// `gcx config ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Print every setting of the stack as a job would use it, and where each came from: a
    /// flag, the environment (`GCX_<SECTION>_<KEY>`), the --config file, or the default; and
    /// which credentials would be used (the secret never shown). Exit 2 with every problem.
    Show,
}

/// `gcx policy ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Check a stack configuration (TOML, or JSON by its extension): exit 2 with every problem,
    /// else preview the retry delays, the worst case against the deadline and the load a fleet
    /// sends during a full outage.
    Check(PolicyCheckArgs),
    /// Store FILE as a new version in the policy store (--policy-store): the stable version
    /// jobs run, or with --canary a canary a share of the calls runs, rolled back
    /// automatically when it does worse than the stable one. Recorded in the audit log.
    Apply(PolicyApplyArgs),
    /// Make the canary the stable version.
    Promote(PolicyChangeArgs),
    /// Drop the canary; without one, return to the stable version before this one.
    Rollback(PolicyChangeArgs),
    /// The stable version and the canary.
    Status,
    /// Every change, from the audit log (checked first).
    History,
    /// What two versions set differently: ids (or 4+ hex digits of one), `stable`, `canary`.
    Diff {
        /// The first version.
        a: String,
        /// The second version.
        b: String,
    },
    /// The audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
}

/// `gcx policy audit ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check the audit log's hash chain: exit 0 when intact, 1 with the first line that was
    /// edited, inserted or removed.
    Verify,
}

/// Who changes the store, and why.
#[derive(Debug, Args)]
pub(crate) struct PolicyChangeArgs {
    /// Who makes the change, for the audit log (default: the OS user); at most 200
    /// characters.
    #[arg(long, value_name = "NAME", value_parser = parse_actor)]
    pub(crate) actor: Option<String>,

    /// Why, for the audit log.
    #[arg(long, value_name = "TEXT")]
    pub(crate) reason: Option<String>,
}

/// `gcx policy apply FILE`.
#[derive(Debug, Args)]
pub(crate) struct PolicyApplyArgs {
    /// The configuration file (TOML, or JSON by its extension): the settings the version sets.
    pub(crate) file: PathBuf,

    /// Run the version on this share of the calls only, e.g. `10%` or `0.1`, next to the stable
    /// version.
    #[arg(long, value_name = "SHARE", value_parser = parse_share)]
    pub(crate) canary: Option<f64>,

    /// With --canary: roll the canary back when its success rate falls below this ratio of the
    /// stable version's (0 to 1).
    #[arg(long, value_name = "RATIO", default_value_t = 0.98, requires = "canary",
          value_parser = parse_ratio)]
    pub(crate) rollback_below: f64,

    /// With --canary: roll the canary back when its calls take longer than the stable
    /// version's by more than this on average, e.g. `500ms` or `2s` (default: latency is
    /// reported, not judged).
    #[arg(long, value_name = "DURATION", requires = "canary", value_parser = parse_latency)]
    pub(crate) max_added_latency: Option<Duration>,

    /// With --canary: promote the canary automatically once it has run N calls without doing
    /// worse than the stable version (default: promoted by hand, `gcx policy promote`).
    #[arg(long, value_name = "N", requires = "canary",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) promote_after: Option<u64>,

    #[command(flatten)]
    pub(crate) change: PolicyChangeArgs,
}

fn parse_share(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let v = match t.strip_suffix('%') {
        Some(p) => p.trim().parse::<f64>().map(|p| p / 100.0),
        None => t.parse::<f64>(),
    };
    match v {
        Ok(v) if v > 0.0 && v < 1.0 => Ok(v),
        _ => Err(format!(
            "`{s}` is not a share above 0 and below 100 %: write e.g. 10% or 0.1"
        )),
    }
}

fn parse_latency(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (number, unit) = match t.strip_suffix("ms") {
        Some(n) => (n, 1u64),
        None => match t.strip_suffix('s') {
            Some(n) => (n, 1000),
            None => (t, 1),
        },
    };
    match number.trim().parse::<u64>() {
        Ok(n) if n > 0 && n.saturating_mul(unit) <= 3_600_000 => {
            Ok(Duration::from_millis(n * unit))
        }
        _ => Err(format!(
            "`{s}` is not a duration of 1 ms to 1 hour: write e.g. 500ms or 2s"
        )),
    }
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v <= 1.0 => Ok(v),
        _ => Err(format!(
            "`{s}` is not a ratio above 0 and at most 1, e.g. 0.98"
        )),
    }
}

/// `gcx policy check FILE`.
#[derive(Debug, Args)]
pub(crate) struct PolicyCheckArgs {
    /// The configuration file.
    pub(crate) file: PathBuf,

    /// Clients (processes, pods) that run this policy against the same destination.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) clients: u32,

    /// Calls per second each client makes.
    #[arg(long, default_value_t = 10.0, value_name = "R", value_parser = positive)]
    pub(crate) call_rate: f64,

    /// Requests per second the destination allows, to compare the outage load with.
    #[arg(long, value_name = "R", value_parser = positive)]
    pub(crate) destination_rate: Option<f64>,

    /// The seed of the sampled schedules (the same seed, the same preview).
    #[arg(long, default_value_t = 1, value_name = "S")]
    pub(crate) seed: u64,

    /// Also draw the preview as an SVG picture: the delay before each retry (min, p50, p99,
    /// max) and the request rate the fleet sends over time during a full outage.
    #[arg(long, value_name = "FILE.svg")]
    pub(crate) plot: Option<PathBuf>,
}

fn positive(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 1e9 => Ok(v),
        _ => Err(format!("`{s}` is not a number above 0 (and at most 1e9)")),
    }
}

/// `gcx demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// How many users to create and update (1 to 1,000,000: the simulator holds them all in
    /// memory).
    #[arg(long, default_value_t = 2000, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub(crate) users: u32,

    /// Faults the simulator injects, e.g. `5xx=0.05,reset-before=0.01,reset-after=0.01`.
    #[arg(
        long,
        default_value = "5xx=0.05,reset-before=0.01,reset-after=0.01",
        value_name = "SPEC"
    )]
    pub(crate) faults: String,

    /// Seed for the simulator's faults (the same seed gives the same faults).
    #[arg(long, default_value_t = 7)]
    pub(crate) seed: u64,
}

/// `gcx users ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum UsersCommand {
    /// Patch users from JSONL (`{"user_id": "...", "updates": {...}}`) or CSV (a `user_id`
    /// column plus one column per field). The user's current version is read for you.
    Patch(InputArgs),
}

/// `--input FILE`, format from the extension.
#[derive(Debug, Args)]
pub(crate) struct InputArgs {
    /// Input file: `.csv` is read as CSV with a header row, anything else as JSONL.
    #[arg(long, value_name = "FILE")]
    pub(crate) input: PathBuf,
}

/// `gcx ingest`.
#[derive(Debug, Args)]
pub(crate) struct IngestArgs {
    /// Records: JSONL (one object a line) or CSV with a header row.
    #[arg(long, value_name = "FILE")]
    pub(crate) input: PathBuf,

    /// JSON Schema every record must satisfy; invalid records are quarantined, not sent.
    #[arg(long, value_name = "SCHEMA.json")]
    pub(crate) schema: PathBuf,

    /// Records per request.
    #[arg(long, default_value_t = 500, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub(crate) chunk_size: u32,

    /// Ingestion endpoint path (the seed's endpoint is not part of the public API: point this
    /// at your own).
    #[arg(long, value_name = "P")]
    pub(crate) path: Option<String>,

    /// The endpoint at --path deduplicates requests by their Idempotency-Key (a repeated key is
    /// answered from its store, never applied twice), as the default endpoint does. Then a
    /// chunk whose outcome is unknown (a connection lost after the request left, a gateway's
    /// 502) is sent again with its key, by the retries and by a resumed job. Without it, as for
    /// the API's real bulk endpoints (none honours the key), such a chunk is never sent again
    /// automatically: it is listed as unknown (--unknown FILE), for you to check.
    #[arg(long)]
    pub(crate) endpoint_deduplicates: bool,

    /// On a resumed job whose endpoint does not deduplicate, send again the chunks whose
    /// earlier outcome is unknown (they may have been applied: check them first). Without it
    /// they are listed, never sent again.
    #[arg(long)]
    pub(crate) retry_unknown: bool,
}

/// `gcx actions ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum ActionsCommand {
    /// Execute a data action once (--input) or once per line (--batch).
    Execute(ExecuteArgs),
}

/// `gcx actions execute`.
#[derive(Debug, Args)]
pub(crate) struct ExecuteArgs {
    /// The data action's id.
    pub(crate) action_id: String,

    /// One JSON object: the action's input.
    #[arg(
        long,
        value_name = "FILE.json",
        conflicts_with = "batch",
        required_unless_present = "batch"
    )]
    pub(crate) input: Option<PathBuf>,

    /// JSONL: one action input a line, one execution each.
    #[arg(long, value_name = "FILE.jsonl")]
    pub(crate) batch: Option<PathBuf>,

    /// Idempotency key for the call; with --batch each line gets `KEY-<hash of the line>`.
    /// Visible ASCII, at most 200 characters (a server refuses a longer key).
    #[arg(long, value_name = "K", value_parser = parse_idempotency_key)]
    pub(crate) idempotency_key: Option<String>,

    /// On a resumed --batch, execute again the lines whose earlier outcome is unknown (they
    /// may have run already: check them first). Without it they are listed, never re-executed.
    #[arg(long, requires = "batch")]
    pub(crate) retry_unknown: bool,
}

/// `I/N`: this worker takes the records whose line number modulo N is I (for a job that keeps
/// each entity's lines in order, whose entity's hash modulo N is I).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shard {
    pub(crate) index: u32,
    pub(crate) count: u32,
}

impl Shard {
    /// Whether the record on input line `line` is this worker's.
    pub(crate) fn owns(self, line: u64) -> bool {
        line % u64::from(self.count) == u64::from(self.index)
    }

    /// Whether the records with this hash of their entity are this worker's: every line about
    /// one user goes to one worker, which applies them in their order.
    pub(crate) fn owns_hash(self, hash: u64) -> bool {
        hash % u64::from(self.count) == u64::from(self.index)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

fn parse_shard(s: &str) -> Result<Shard, String> {
    let usage = || {
        format!("`{s}` is not I/N: write e.g. `0/4` for the first of 4 workers (I from 0 to N-1)")
    };
    let (i, n) = s.split_once('/').ok_or_else(usage)?;
    let index: u32 = i.trim().parse().map_err(|_| usage())?;
    let count: u32 = n.trim().parse().map_err(|_| usage())?;
    if count == 0 || count > 10_000 || index >= count {
        return Err(format!(
            "`{s}`: N must be 1 to 10000 and I from 0 to N-1 (worker {index} of {count} does not exist)"
        ));
    }
    Ok(Shard { index, count })
}

fn parse_label(s: &str) -> Result<String, String> {
    if s.is_empty()
        || s.len() > 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "`{s}`: a label is 1 to 64 letters, digits, '-', '_' or '.', e.g. 2026-12-02.2"
        ));
    }
    Ok(s.to_owned())
}

/// `N/SECS`: at most `requests` per `window`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rate {
    pub(crate) requests: u32,
    pub(crate) window: Duration,
}

/// Requests in flight at once for a job when nothing sets it.
pub(crate) const DEFAULT_CONCURRENCY: usize = 8;

/// The longest `--actor`, in characters: an audit line stays far below the longest line the
/// log is read back with.
pub(crate) const ACTOR_MAX: usize = 200;

/// The longest `--idempotency-key`, in characters: with the suffix `--batch` adds, a key stays
/// within what servers take (255).
const IDEMPOTENCY_KEY_MAX: usize = 200;

fn parse_idempotency_key(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > IDEMPOTENCY_KEY_MAX || !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "an idempotency key is 1 to {IDEMPOTENCY_KEY_MAX} visible ASCII characters"
        ));
    }
    Ok(s.to_owned())
}

fn parse_actor(s: &str) -> Result<String, String> {
    if s.chars().count() > ACTOR_MAX {
        return Err(format!("at most {ACTOR_MAX} characters"));
    }
    Ok(s.to_owned())
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    let usage = || format!("`{s}` is not N/SECS: write e.g. `300/60` for 300 requests a minute");
    let (n, secs) = s.split_once('/').ok_or_else(usage)?;
    let requests: u32 = n.trim().parse().map_err(|_| usage())?;
    let secs = secs.trim().trim_end_matches('s');
    let secs: f64 = secs.parse().map_err(|_| usage())?;
    if requests == 0 || !secs.is_finite() || !(0.001..=86_400.0).contains(&secs) {
        return Err(format!(
            "`{s}`: N must be at least 1 and SECS between 0.001 and 86400"
        ));
    }
    Ok(Rate {
        requests,
        window: Duration::from_secs_f64(secs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn shards() {
        assert_eq!(parse_shard("1/4").unwrap(), Shard { index: 1, count: 4 });
        for bad in ["4/4", "0/0", "x/2", "1", "-1/3", "1/10001"] {
            let e = parse_shard(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        let shard = Shard { index: 2, count: 3 };
        assert!(shard.owns(2) && shard.owns(5) && !shard.owns(3));
    }

    #[test]
    fn rates() {
        assert_eq!(
            parse_rate("300/60").unwrap(),
            Rate {
                requests: 300,
                window: Duration::from_secs(60)
            }
        );
        assert_eq!(parse_rate("600/1s").unwrap().window, Duration::from_secs(1));
        assert!(parse_rate("0/1").is_err());
        assert!(parse_rate("10").is_err());
        assert!(parse_rate("10/-1").is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(2000))]

        /// Any `--rate-limit` text is a rate or a message saying what to write; never a panic.
        #[test]
        fn any_rate_parses_or_says_why(s in "\\PC{0,24}", n in proptest::prelude::any::<u64>(), secs in proptest::prelude::any::<f64>()) {
            for text in [s, format!("{n}/{secs}"), format!("{n}/{secs}s")] {
                match parse_rate(&text) {
                    Ok(rate) => {
                        proptest::prop_assert!(rate.requests >= 1);
                        proptest::prop_assert!(!rate.window.is_zero());
                    }
                    Err(reason) => proptest::prop_assert!(!reason.is_empty()),
                }
            }
        }
    }

    #[test]
    fn flags_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "gcx",
            "users",
            "patch",
            "--input",
            "u.jsonl",
            "--concurrency",
            "4",
            "--json",
        ])
        .unwrap();
        assert_eq!(cli.common.concurrency, Some(4));
        assert!(cli.common.json);
    }
}
