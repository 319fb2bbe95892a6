//! Generates the envelope types from `proto/` with protox (a pure-Rust protobuf compiler), so
//! building needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "../../proto";
    let file = "terra/ingest/v1/envelope.proto";
    println!("cargo:rerun-if-changed={proto_root}/{file}");
    let descriptors = protox::compile([file], [proto_root])?;
    prost_build::Config::new()
        // bodies are shared, not copied, between the request, the envelope and the log
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
