//! The `terra-bench` binary. Everything lives in the library; see `terra_bench::cli`.

/// The product binary's allocator (mimalloc, see `services/cli/src/main.rs`), so that what is
/// measured in this process (the bare server, the projectors, the query service) compares with
/// what `terra-ingest` does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    terra_bench::main()
}
