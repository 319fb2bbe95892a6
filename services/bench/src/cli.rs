//! Command-line interface of `terra-bench`: one subcommand per benchmark, with the flags they
//! had as `terra-ingest bench …`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "terra-bench",
    version,
    about = "Benchmarks of terra-ingest (load generators; they print numbers, they assert nothing)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the ingress with signed fixture bodies and compare with a bare HTTP server.
    Ingress(crate::ingress::IngressArgs),
    /// Project a pre-filled log into Postgres and MySQL, against a raw bulk load of the same
    /// rows; then the ingress-to-row latency of standalone at a fixed request rate.
    Sql(crate::sql::SqlArgs),
    /// Project a pre-filled log into a folder and an S3-compatible bucket: objects/s, MB/s,
    /// peak memory.
    Objects(crate::objects::ObjectsArgs),
    /// ListPayloads and GetPayload throughput and latency over 1M payload rows in Postgres.
    Query(crate::query::QueryArgs),
    /// The webhook destination: a pre-filled log fanned out to 1 and 4 local endpoints, state
    /// in SQLite and Postgres; against the same POSTs sent directly; one endpoint down.
    Webhooks(crate::webhooks::WebhooksArgs),
    /// `terra-ingest standalone` on its defaults under distinct signed webhooks, at saturation
    /// and at a fixed rate: acked/s, latency, each projection's lag per second (report, CSV,
    /// SVG chart), time to catch up, peak RSS; the bare server's ceiling in the same run.
    Standalone(crate::standalone::StandaloneArgs),
    /// Open time of the embedded log at 1M and 10M records, with and without its indexes.
    LogOpen(crate::log_open::LogOpenArgs),
    /// (internal) The bare comparison server: reads each body and answers 200.
    #[command(hide = true)]
    BareServer {
        #[arg(long)]
        http_addr: String,
    },
}

pub(crate) async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Ingress(args) => crate::ingress::run(args).await,
        Command::Sql(args) => crate::sql::run(args).await,
        Command::Objects(args) => crate::objects::run(args).await,
        Command::Query(args) => crate::query::run(args).await,
        Command::LogOpen(args) => crate::log_open::run(args).await,
        Command::Webhooks(args) => crate::webhooks::run(args).await,
        Command::Standalone(args) => crate::standalone::run(args).await,
        Command::BareServer { http_addr } => crate::ingress::bare_server(&http_addr).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Cli;

    #[test]
    fn database_urls_never_print_through_debug() {
        const MARK: &str = "S3CR3T0123456789abcdef";
        let url = format!("postgres://app:{MARK}@db:5432/terra?sslpassword={MARK}");
        for args in [
            vec!["sql", "--postgres", &url, "--mysql", &url],
            vec!["query", "--postgres", &url],
            vec!["webhooks", "--postgres", &url],
        ] {
            let cli = Cli::try_parse_from(std::iter::once("terra-bench").chain(args.clone()))
                .unwrap_or_else(|e| panic!("{args:?}: {e}"));
            let debug = format!("{cli:?}");
            assert!(!debug.contains(MARK), "{args:?} prints a secret: {debug}");
        }
    }
}
