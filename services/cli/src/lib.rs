//! `terra-ingest`: one binary with every service (`standalone`, `ingress`, `project sql`,
//! `project objects`, `query`) and the operator tools (`migrate`, `rebuild`, `send`,
//! `verify`, `deliveries`).

pub mod cli;
pub mod deliveries;
mod log_lines;
mod project;
mod query;
mod send;
mod serve;
pub mod settings;
mod telemetry;
mod verify;
mod webhooks;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

/// Entry point of the binary.
pub fn main() -> ExitCode {
    // the matches too: the settings layers read from them which flags were given
    let matches = cli::Cli::command().get_matches();
    let cli = match cli::Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    // ring (tonic, sqlx, reqwest) and aws-lc-rs (the AWS SDK) are both linked, so rustls
    // cannot pick a process-wide provider by itself: name it before any TLS is set up
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: failed to start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(cli::run(cli, &matches));
    // every service has drained by now; do not wait on idle blocking-pool threads
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
