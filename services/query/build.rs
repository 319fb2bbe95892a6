//! Generates the query API and the webhook deliveries API (servers and clients) from `proto/` with protox, so building needs
//! no `protoc`, and keeps the encoded descriptor set for server reflection.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "../../proto";
    let files = [
        "terra/ingest/v1/query.proto",
        "terra/ingest/v1/deliveries.proto",
    ];
    for file in files {
        println!("cargo:rerun-if-changed={proto_root}/{file}");
    }
    let descriptors = protox::compile(files, [proto_root])?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("query_descriptor.bin"),
        prost::Message::encode_to_vec(&descriptors),
    )?;
    tonic_prost_build::configure()
        // bodies are handed to the stream without a copy
        .bytes(".")
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
