//! Client code for every segmentd service, generated from the server's `proto/` with the
//! pure-Rust `protox` compiler (no system `protoc`).

const PROTOS: &[&str] = &[
    "customer.proto",
    "ingest.proto",
    "admin.proto",
    "segments.proto",
    "membership.proto",
    "activities.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = "../../proto";
    let files: Vec<String> = PROTOS.iter().map(|p| format!("{root}/segmentd/v1/{p}")).collect();
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure()
        .build_server(false)
        // Attributes in a stable (name) order when printed.
        .btree_map(".segmentd.v1.Customer.attributes")
        // Customers are sent column by column, written straight from file rows (src/wire.rs).
        .extern_path(".segmentd.v1.LoadCustomersRequest", "crate::wire::EncodedColumns")
        .compile_fds(protox::compile(&files, [root])?)?;
    Ok(())
}
