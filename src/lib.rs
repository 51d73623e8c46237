//! segmentd: a customer-segmentation service. Every customer lives in sharded columnar memory;
//! the gRPC API loads customers and orders and answers questions about them.
//!
//! # Layout
//!
//! - [`server`]: `run(listener, config, shutdown)` wires services, health, reflection, metrics.
//! - [`config`]: command-line flags and `SEGMENTD_*` variables.
//! - [`api`]: the gRPC adapters, the only code that knows tonic: validate, convert, call the
//!   engine, convert back; [`api::status`] maps engine errors to gRPC codes in one place.
//! - [`codec`]: protobuf messages and domain types, both ways, without tonic (the hand-written
//!   customer-batch decoders among them).
//! - [`engine`]: the async facade over the store: every change a [`engine::command::Command`]
//!   applied on one writer thread, logged, then durable; recovery; the background tasks.
//! - [`wal`]: the write-ahead log (format, group commit, replay); [`snapshot`]: snapshots (format,
//!   consistent cut, retention); [`persist`]: the messages of the server's own files.
//! - [`store`]: dense ordinals, shards of 65,536 customers, id and e-mail maps ([`store::index`]),
//!   input checks ([`store::input`]), and the segment operations, families, RFM and time flips
//!   on them.
//! - [`segment`]: rules (tree, text parser and printer), compilation, evaluation over a shard's
//!   columns, the registry and family definitions.
//! - [`columnar`]: typed columns ([`columnar::column`]), value dictionaries ([`columnar::dict`]),
//!   string columns, the schema ([`columnar::schema`]) and values.
//! - [`events`]: membership events: the window in memory, the event log, watchers;
//!   [`follow`]: the feed replicas follow (customers created and erased, membership changes).
//! - [`console`]: the web console's page (embedded) and the gRPC port's CORS policy for it;
//!   [`httpd`]: the HTTP/1.1 servers of the console and `/metrics`.
//! - [`metrics`]: Prometheus text on `/metrics`: call metrics, process, build and engine state;
//!   [`latency`]: the latency buckets the engine's own histograms share with it.
//! - [`error`]: the engine's one error type.
//! - [`alloc`]: the allocator's tuning, for the binary and the benchmarks.
//! - [`faults`]: disk and load faults injected by tests and drills.
//! - [`time`]: calendar arithmetic for dates and timestamps.

pub mod alloc;
pub mod api;
pub mod auth;
pub mod codec;
pub mod columnar;
pub mod config;
pub mod console;
pub mod disk;
pub mod engine;
pub mod error;
pub mod events;
#[doc(hidden)]
pub mod faults;
pub mod follow;
pub mod fuzzing;
pub mod httpd;
pub mod latency;
#[cfg(test)]
mod layers;
pub mod metrics;
pub mod persist;
pub mod priority;
pub mod resp;
pub mod segment;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod time;
pub mod wal;
