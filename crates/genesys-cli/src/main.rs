//! `gcx`: bulk Genesys Cloud jobs from the command line (user updates, ingestion, data actions),
//! and `gcx demo`, which runs the main job on an embedded simulator with faults switched on.
//!
//! Exit codes: 0 everything was delivered; 1 something failed, was quarantined or was not
//! started; 2 a usage or configuration error (nothing was sent). See `docs/cli.md`.

#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

mod app;
mod cli;
mod error;
mod input;
mod job;
mod progress;
mod records;
mod report;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::error::{CliError, EXIT_USAGE};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // clap prints help and version to stdout with exit 0, usage errors with exit 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_USAGE } else { 0 });
        }
    };
    init_tracing(cli.common.verbose, cli.common.quiet);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gcx: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("gcx: {e}");
            ExitCode::from(e.code())
        }
    }
}

fn init_tracing(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info,genesys_tower=debug,genesys_client=debug",
        (false, _) => "debug,genesys_tower=trace,genesys_client=trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

async fn run(cli: Cli) -> Result<u8, CliError> {
    match cli.command {
        Command::Demo(_) | Command::Users(_) | Command::Ingest(_) | Command::Actions(_) => Err(
            CliError::usage("this command is not wired to the client yet"),
        ),
    }
}
