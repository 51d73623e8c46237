//! The messages of the server's own files: log records, the event log's batches. Internal (not
//! part of the gRPC API) and a leaf: the log, the snapshots and the event log share them without
//! importing each other.

/// Generated `segmentd.wal.v1` messages (`proto/segmentd/wal/v1/wal.proto`).
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/segmentd.wal.v1.rs"));
}
