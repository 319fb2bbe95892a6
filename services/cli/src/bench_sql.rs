pub(crate) async fn run(_args: BenchSqlArgs) -> anyhow::Result<std::process::ExitCode> { todo!() }
#[derive(Debug, clap::Args)] pub struct BenchSqlArgs {}
