//! Protobuf ↔ domain types, without tonic: the `segmentd.v1` messages, the hand-written
//! decoders of customer batches ([`wire`], [`columns`]; measured 5-12x faster than generic
//! decoding) and the conversions of every other message ([`convert`]). The API adapters and
//! log replay both read customer batches through here.

pub mod columns;
pub mod convert;
pub mod wire;

/// Generated `segmentd.v1` messages (`proto/segmentd/v1`); the services are in [`crate::api::pb`].
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/messages/segmentd.v1.rs"));

    /// Both customer-batch requests decode as [`CustomerBatch`](crate::codec::wire::CustomerBatch).
    pub use crate::codec::wire::CustomerBatch as UpsertCustomersRequest;
    pub use crate::codec::wire::CustomerBatch as LoadCustomersRequest;
}

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
