//! The gRPC adapters: the only place that knows tonic. Each handler validates the request,
//! converts it to domain types, calls the engine and converts the answer back.

pub mod activities;
pub mod admin;
pub mod ingest;
pub mod load_rows;
pub mod membership;
pub mod replication;
pub mod rules;
pub mod segments;
pub mod status;

/// The `segmentd.v1` messages ([`crate::codec::pb`]) and the services generated over them.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    pub use crate::codec::pb::*;
    include!(concat!(env!("OUT_DIR"), "/services/segmentd.v1.rs"));
}

/// The encoded descriptor set of every proto, served by reflection.
pub use crate::codec::FILE_DESCRIPTOR_SET;

/// `UNAVAILABLE` until recovery has replayed the data directory: data calls wait for it.
pub fn ready(engine: &crate::engine::Engine) -> Result<(), tonic::Status> {
    if engine.is_ready() {
        Ok(())
    } else {
        Err(tonic::Status::unavailable(
            "segmentd is recovering its data; retry shortly",
        ))
    }
}
