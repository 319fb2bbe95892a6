//! `terra-bench`: the benchmarks of terra-ingest, apart from the product binary. Load
//! generators: they print numbers, they assert nothing.
//!
//! - `ingress` ([`ingress`]): the `terra-ingest ingress` binary under load, against a bare
//!   HTTP server (`bare-server`, hidden: this binary started again).
//! - `sql` ([`sql`], [`raw_load`]): the SQL projector against a raw bulk load of the same rows,
//!   then `terra-ingest standalone`'s 2xx-to-row latency.
//! - `objects` ([`objects`]): the object projector into a folder and an S3-compatible bucket.
//! - `query` ([`query`]): the gRPC query service over a loaded Postgres.
//! - `log-open` ([`log_open`]): the embedded log's open time at 1M and 10M records.
//! - `standalone` ([`standalone`], [`standalone_load`], [`corpus`], [`plot`]): the whole
//!   product on its defaults under distinct signed webhooks, each projection's lag per second
//!   (a report, a CSV and an SVG chart), beside the bare server's ceiling.
//!
//! Shared: the pre-filled log's mixed load ([`load`]), signed deliveries ([`deliveries`]) and
//! the `terra-ingest` binary as a child process ([`process`]).

pub mod cli;
mod corpus;
mod cpu;
mod deliveries;
mod ingress;
mod load;
mod log_open;
mod objects;
mod plot;
mod process;
mod query;
mod raw_load;
mod sql;
mod standalone;
mod standalone_load;
mod webhooks;
mod webhooks_phases;
mod webhooks_receiver;
mod webhooks_run;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    // as in terra-ingest: ring and aws-lc-rs are both linked, so name rustls's provider
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: failed to start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(cli::run(cli));
    runtime.shutdown_timeout(Duration::from_secs(2));
    result.unwrap_or_else(|err| {
        eprintln!("error: {err:#}");
        ExitCode::FAILURE
    })
}
