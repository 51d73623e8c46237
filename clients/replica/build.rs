//! The `segmentd.v1.Replication` client, generated from the server's `proto/` with the pure-Rust
//! `protox` compiler (no system `protoc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = "../../proto";
    let file = format!("{root}/segmentd/v1/replication.proto");
    println!("cargo:rerun-if-changed={file}");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(protox::compile([&file], [root])?)?;
    Ok(())
}
