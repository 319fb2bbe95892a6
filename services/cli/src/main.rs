//! The `terra-ingest` binary. Everything lives in the library; see `terra_ingest::cli`.

fn main() -> std::process::ExitCode {
    terra_ingest::main()
}
