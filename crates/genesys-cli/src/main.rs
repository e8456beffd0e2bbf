//! `gcx`: bulk Genesys Cloud jobs from the command line (user updates, ingestion, data actions),
//! and `gcx demo`, which runs the main job on an embedded simulator with faults switched on.
//!
//! Exit codes: 0 everything was delivered; 1 something failed, was quarantined or was not
//! started; 2 a usage or configuration error (nothing was sent). See `docs/cli.md`.

#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

// Printing that never panics. A job writes its progress and its summary to streams that may be
// pipes whose reader went away (`2>&1 | head`, a log shipper that restarted): Rust's own
// `println!` panics then, and a job would end mid-way, its requests in flight abandoned. A line
// that cannot be written is lost; the job goes on, and its files and journal say the rest. What
// stdout could not take for another reason than a reader gone (a full disk under `--json >
// out.json`) is said at the end, and the exit code is not 0.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        $crate::stdout_written(writeln!(std::io::stdout(), $($arg)*));
    }};
}
macro_rules! out_part {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        $crate::stdout_written(write!(std::io::stdout(), $($arg)*));
    }};
}
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
macro_rules! say_part {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

mod app;
mod cli;
mod deliver;
mod demo;
mod departures;
mod error;
mod fleet;
mod input;
mod job;
mod journal;
mod passes;
mod policy;
mod progress;
mod records;
mod report;
mod settings;
mod signals;
mod sinks;
mod store;
mod tally;
mod telemetry;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use clap::Parser;

use crate::cli::{ActionsCommand, Cli, Command, ConfigCommand, PolicyCommand, UsersCommand};
use crate::error::{CliError, EXIT_USAGE};
use crate::input::Format;
use crate::records::{ActionInputs, IngestRecords, UserRecords};
use crate::telemetry::Telemetry;

/// The first error writing to stdout, other than a reader gone.
static STDOUT_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// Keeps the first error of a write to stdout that was not a closed pipe.
fn stdout_written(result: std::io::Result<()>) {
    if let Err(e) = result
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        STDOUT_ERROR
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_or_insert_with(|| e.to_string());
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help and version to stdout with exit 0, usage errors with exit 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say!("gcx: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    #[cfg(feature = "otlp")]
    let otlp = match telemetry::otlp::configured()
        .then(|| telemetry::otlp::Otlp::start(runtime.handle().clone()))
        .transpose()
    {
        Ok(otlp) => otlp,
        Err(e) => {
            say!("gcx: {e}");
            return ExitCode::from(e.code());
        }
    };
    #[cfg(not(feature = "otlp"))]
    let otlp: Option<telemetry::Export> = None;
    init_tracing(cli.common.verbose, cli.common.quiet, otlp.as_ref());
    let code = runtime.block_on(run(cli, otlp.as_ref()));
    // The runtime's workers still run: the exporters' last requests go out on them.
    #[cfg(feature = "otlp")]
    if let Some(otlp) = otlp {
        otlp.shutdown();
    }
    // Flushed here, as at exit, so that a write error of its last bytes is seen too.
    stdout_written(std::io::Write::flush(&mut std::io::stdout()));
    let lost = STDOUT_ERROR
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    if let Some(e) = &lost {
        say!("gcx: what was printed on stdout was not all written: {e}");
    }
    match code {
        Ok(0) if lost.is_some() => ExitCode::from(error::EXIT_INCOMPLETE),
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            say!("gcx: {e}");
            ExitCode::from(e.code())
        }
    }
}

fn init_tracing(verbose: u8, quiet: bool, export: Option<&telemetry::Export>) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::{Layer as _, filter::LevelFilter};
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info,genesys_tower=debug,genesys_client=debug",
        (false, _) => "debug,genesys_tower=trace,genesys_client=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org).
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_filter(filter);
    // The exporter gets the stack's INFO spans (a call, its attempts) whatever the verbosity.
    let export = export.map(|e| {
        e.layer::<tracing_subscriber::Registry>()
            .with_filter(LevelFilter::INFO)
    });
    let _ = tracing_subscriber::registry()
        .with(export)
        .with(fmt)
        .try_init();
}

async fn run(cli: Cli, export: Option<&telemetry::Export>) -> Result<u8, CliError> {
    if let Command::Completions { shell } = &cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        // Written in memory first: clap_complete panics when its writer fails (a closed pipe,
        // `gcx completions bash | head -1`), which a write of ours only reports.
        let mut script = Vec::new();
        clap_complete::generate(*shell, &mut command, "gcx", &mut script);
        return match std::io::Write::write_all(&mut std::io::stdout().lock(), &script) {
            Ok(()) => Ok(0),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
            Err(e) => Err(CliError::runtime(format!(
                "cannot write the completions: {e}"
            ))),
        };
    }
    if let Command::Policy(PolicyCommand::Check(args)) = &cli.command {
        return policy::check(args, cli.common.json);
    }
    if let Command::Policy(command) = &cli.command {
        return policy::manage(command, &cli.common);
    }
    if let Command::Config(ConfigCommand::Show) = &cli.command {
        return deliver::show_config(&cli.common);
    }
    let telemetry = Telemetry::start(cli.common.metrics_addr, export).await?;
    let code = job(&cli, &telemetry).await;
    telemetry
        .stop(Duration::from_secs(cli.common.metrics_linger))
        .await;
    code
}

/// Runs the job a command names.
async fn job(cli: &Cli, telemetry: &Telemetry) -> Result<u8, CliError> {
    let common = &cli.common;
    match &cli.command {
        Command::Completions { .. } | Command::Policy(_) | Command::Config(_) => Ok(0),
        Command::Demo(args) => demo::run(common, args, telemetry).await,
        Command::Users(UsersCommand::Patch(args)) => {
            let (builder, policies) = deliver::client_builder(common)?;
            let format = Format::from_path(&args.input);
            let kind = app::JobKind {
                command: "users patch",
                action_id: None,
                chunk_size: 1,
                journaled: true,
                schema: None,
                shard_by: <deliver::Users as job::Deliver>::ENTITY,
                endpoint: None,
            };
            let mut prepared = app::prepare(common, &args.input, format, UserRecords, kind).await?;
            let (client, pace) = app::connect(builder, common, &mut prepared).await?;
            let watcher = policies.map(|p| policy::watch::Watcher::start(common, p));
            let deliver = Arc::new(deliver::Users(client.clone()));
            let mut ran =
                app::execute(common, prepared, deliver, 1, false, signals::interrupts()).await;
            if let Some(w) = watcher {
                ran.policy = Some(w.finish(common).await);
            }
            let metrics = client.metrics().snapshot();
            app::finish(
                common,
                kind.command,
                Some(&args.input),
                ran,
                Some(telemetry.stack(metrics)),
                pace,
                None,
            )
            .await
        }
        Command::Ingest(args) => {
            // Every refusal comes before `prepare`, which creates the output files.
            let path = args
                .path
                .clone()
                .unwrap_or_else(|| genesys_client::DEFAULT_INGESTION_PATH.to_owned());
            if !path.starts_with('/') {
                return Err(CliError::usage(format!(
                    "--path {path}: give the endpoint's path from the API root, e.g. /api/v2/..."
                )));
            }
            let (builder, policies) = deliver::client_builder(common)?;
            app::check_outputs_spare(common, &args.schema, "the schema")?;
            let records = IngestRecords::load(&args.schema)?;
            let format = Format::from_path(&args.input);
            let chunk_size = args.chunk_size as usize;
            let schema = records.schema_hash();
            let kind = app::JobKind {
                command: "ingest",
                action_id: None,
                chunk_size,
                journaled: true,
                schema: Some(&schema),
                shard_by: None,
                endpoint: Some(&path),
            };
            let mut prepared = app::prepare(common, &args.input, format, records, kind).await?;
            let (client, pace) = app::connect(builder, common, &mut prepared).await?;
            let watcher = policies.map(|p| policy::watch::Watcher::start(common, p));
            let deliver = deliver::Ingest {
                client: client.clone(),
                path: path.as_str().into(),
                // The default endpoint is the seed's, which deduplicates (as the simulator's
                // does), however it is named; another is taken not to unless they say so.
                deduplicates: args.endpoint_deduplicates
                    || path == genesys_client::DEFAULT_INGESTION_PATH,
            };
            let mut ran = app::execute(
                common,
                prepared,
                Arc::new(deliver),
                chunk_size,
                args.retry_unknown,
                signals::interrupts(),
            )
            .await;
            if let Some(w) = watcher {
                ran.policy = Some(w.finish(common).await);
            }
            let metrics = client.metrics().snapshot();
            app::finish(
                common,
                kind.command,
                Some(&args.input),
                ran,
                Some(telemetry.stack(metrics)),
                pace,
                None,
            )
            .await
        }
        Command::Actions(ActionsCommand::Execute(args)) => {
            let (builder, policies) = deliver::client_builder(common)?;
            let (input, format) = match (&args.input, &args.batch) {
                (Some(file), None) => (file, Format::Json),
                (None, Some(file)) => (file, Format::Jsonl),
                _ => {
                    return Err(CliError::usage(
                        "give exactly one of --input FILE.json (one execution) or --batch FILE.jsonl",
                    ));
                }
            };
            let kind = app::JobKind {
                command: "actions execute",
                action_id: Some(&args.action_id),
                chunk_size: 1,
                // One execution is one call with its own key: no job to resume.
                journaled: format == Format::Jsonl,
                schema: None,
                shard_by: None,
                endpoint: None,
            };
            let mut prepared = app::prepare(common, input, format, ActionInputs, kind).await?;
            let (client, pace) = app::connect(builder, common, &mut prepared).await?;
            let watcher = policies.map(|p| policy::watch::Watcher::start(common, p));
            let deliver = deliver::Actions {
                client: client.clone(),
                action_id: args.action_id.as_str().into(),
                key: args.idempotency_key.as_deref().map(Into::into),
                per_line_keys: format == Format::Jsonl,
                print_output: format == Format::Json && !common.json && !common.quiet,
            };
            let mut ran = app::execute(
                common,
                prepared,
                Arc::new(deliver),
                1,
                args.retry_unknown,
                signals::interrupts(),
            )
            .await;
            if let Some(w) = watcher {
                ran.policy = Some(w.finish(common).await);
            }
            let metrics = client.metrics().snapshot();
            app::finish(
                common,
                kind.command,
                Some(input),
                ran,
                Some(telemetry.stack(metrics)),
                pace,
                None,
            )
            .await
        }
    }
}
