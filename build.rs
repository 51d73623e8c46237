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
    "proto/segmentd/v1/replication.proto",
];

/// Write-ahead log records: messages only, no service, not served by reflection.
const WAL_PROTO: &str = "proto/segmentd/wal/v1/wal.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    commit();
    for proto in PROTOS.iter().chain([&WAL_PROTO]) {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["proto"])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("segmentd_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    // The messages, with no service: `src/codec/` (tonic-free) includes them.
    let messages = out.join("messages");
    fs::create_dir_all(&messages)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .out_dir(&messages)
        // Small maps: a B-tree decodes faster than a SipHash map and encodes in a stable order.
        .btree_map(".segmentd.v1.Customer.attributes")
        // Customer batches are decoded lazily, straight into the store's patches (src/codec/wire.rs).
        .extern_path(
            ".segmentd.v1.UpsertCustomersRequest",
            "crate::codec::wire::CustomerBatch",
        )
        .extern_path(
            ".segmentd.v1.LoadCustomersRequest",
            "crate::codec::wire::CustomerBatch",
        )
        .compile_fds(fds.clone())?;
    // The services alone, over those messages: `src/api/` (the only code that knows tonic).
    let services = out.join("services");
    fs::create_dir_all(&services)?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .out_dir(&services)
        .extern_path(".segmentd.v1", "crate::codec::pb")
        .compile_fds(fds)?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        .compile_fds(protox::compile([WAL_PROTO], ["proto"])?)?;
    Ok(())
}

/// Sets `SEGMENTD_COMMIT` for `segmentd_build_info`: the variable if the build sets it (an image
/// built without `.git`), else the checkout's commit, else `unknown`.
fn commit() {
    println!("cargo:rerun-if-env-changed=SEGMENTD_COMMIT");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .map(|s| s.trim().to_string())
    };
    // Rebuild when HEAD moves: HEAD itself, the branch it points at, and the packed refs.
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        let dir = PathBuf::from(dir);
        let branch = git(&["symbolic-ref", "-q", "HEAD"]);
        // Only files that exist: cargo reruns on every build for one that does not.
        for file in ["HEAD", "packed-refs"].into_iter().chain(branch.as_deref()) {
            let path = dir.join(file);
            if path.exists() {
                println!("cargo:rerun-if-changed={}", path.display());
            }
        }
    }
    let commit = env::var("SEGMENTD_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=SEGMENTD_COMMIT={commit}");
}
