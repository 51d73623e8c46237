//! The integration tests, in one binary (each test binary links the whole crate: one link
//! instead of a dozen). Each module is one area, against a real server on an ephemeral port
//! where it needs one. `tests/decode_bounds.rs` stays apart: it counts the process's
//! allocations.

#[path = "../common/mod.rs"]
mod common;

mod calendar;
mod console;

mod auth;
mod durability;
mod events;
mod families;
mod fuzzing;
mod ingest;
mod replica;
mod replication;
mod resp;
mod segments;
mod segments_model;
mod server;
mod store_model;
mod time_model;
mod tls;
