//! The `terra-ingest` binary. Everything lives in the library; see `terra_ingest::cli`.

/// mimalloc: the request paths (HTTP, gRPC, sqlx rows, protobuf) allocate many small short-lived
/// buffers across threads, where glibc's malloc spent a fifth of the query benchmark's CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    terra_ingest::main()
}
