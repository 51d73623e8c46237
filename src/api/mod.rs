//! The gRPC adapters: the only place that knows tonic. Each handler validates the request,
//! converts it to domain types, calls the engine and converts the answer back.

pub mod activities;
pub mod admin;
pub mod columns;
pub mod convert;
pub mod ingest;
pub mod membership;
pub mod rules;
pub mod segments;
pub mod status;
pub mod wire;

/// Code generated from `proto/segmentd/v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("segmentd.v1");

    /// Both customer-batch requests decode as [`CustomerBatch`](crate::api::wire::CustomerBatch).
    pub use crate::api::wire::CustomerBatch as UpsertCustomersRequest;
    pub use crate::api::wire::CustomerBatch as LoadCustomersRequest;
}

/// The encoded descriptor set of every proto, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/segmentd_descriptor.bin"));

/// Request limits enforced by the adapters.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most items (customers, orders) in one message.
    pub max_batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_batch: 10_000 }
    }
}

impl Limits {
    /// Refuses a batch longer than `max_batch`, naming the field.
    pub fn check_batch(&self, field: &str, len: usize) -> Result<(), crate::error::Error> {
        if len > self.max_batch {
            return Err(crate::error::Error::invalid(
                field,
                format!(
                    "{len} items, more than the limit of {} per message",
                    self.max_batch
                ),
            ));
        }
        Ok(())
    }
}
