//! Generates the gRPC code from `proto/` with the pure-Rust `protox` compiler (no system `protoc`),
//! and writes the encoded descriptor set that the reflection service serves.

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "proto/segmentd/v1/customer.proto",
    "proto/segmentd/v1/ingest.proto",
    "proto/segmentd/v1/admin.proto",
    "proto/segmentd/v1/segments.proto",
    "proto/segmentd/v1/membership.proto",
    "proto/segmentd/v1/activities.proto",
];

/// Write-ahead log records: messages only, no service, not served by reflection.
const WAL_PROTO: &str = "proto/segmentd/wal/v1/wal.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS.iter().chain([&WAL_PROTO]) {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("segmentd_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Small maps: a B-tree decodes faster than a SipHash map and encodes in a stable order.
        .btree_map(".segmentd.v1.Customer.attributes")
        // Customer batches are decoded lazily, straight into the store's patches (src/api/wire.rs).
        .extern_path(
            ".segmentd.v1.UpsertCustomersRequest",
            "crate::api::wire::CustomerBatch",
        )
        .extern_path(
            ".segmentd.v1.LoadCustomersRequest",
            "crate::api::wire::CustomerBatch",
        )
        .compile_fds(fds)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(protox::compile([WAL_PROTO], ["proto"])?)?;
    Ok(())
}
