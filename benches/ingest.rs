//! In-process ingest benches, per batch of 1,000 generated customers (about 14 attributes each):
//! - `decode/generic`: decoding the request into `Customer` messages, then converting each to a
//!   patch (what generated code would do);
//! - `decode/wire`: what the server does, reading each encoded customer straight into a patch;
//! - `apply/new`: `Store::upsert` of 1,000 new customers into an empty store, no segments, no log;
//! - `apply/steady`: the same into a store already holding 200,000 customers, as during a bulk
//!   load (dictionaries warm, shards filling): what the writer thread does per batch;
//! - `decode/columns`: the same batch sent as `CustomerColumns` (as `segctl load` sends it), read
//!   into the batch the writer applies;
//! - `apply/steady_columns`: `Store::upsert_columns` of that form, in the store of `apply/steady`;
//! - `prepare/record` and `prepare/codes`: encoding the batch's write-ahead log record and looking
//!   up its dictionary codes, done where the batch is parsed rather than on the writer thread;
//!   `prepare/record_as_received`: the record a received batch gets, its customers' own bytes;
//! - `load/writer_columns`: the writer's share of loading 1,000,000 customers given as columns;
//! - `maps/grow`: an id map holding 458,752 keys grown to take as many more: every entry rehashed
//!   (from its key) into a table twice the size, as a bulk load's growing map does.
//!
//! `cargo bench --bench ingest`

#[path = "support/gen.rs"]
mod generator;

use std::hint::black_box;

use bytes::Bytes;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use prost::Message;
use segmentd::api::pb;
use segmentd::codec::{Limits, columns, convert};
use segmentd::store::KeyHashes;
use segmentd::store::input::CustomerPatch;
use segmentd::store::{Store, no_log};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: u64 = 1_000;

/// `repeated Customer customers = 1` decoded the generic way.
#[derive(Clone, PartialEq, prost::Message)]
struct GenericBatch {
    #[prost(message, repeated, tag = "1")]
    customers: Vec<pb::Customer>,
}

fn batch(from: u64) -> Vec<pb::Customer> {
    (from..from + BATCH).map(|n| generator::customer(n, 42)).collect()
}

fn decode(c: &mut Criterion) {
    let store = Store::new();
    let schema = store.schema();
    let limits = Limits::default();
    let encoded = Bytes::from(pb::LoadCustomersRequest::new(batch(0)).encode_to_vec());
    let mut group = c.benchmark_group("decode");
    group.bench_function("generic", |b| {
        b.iter(|| {
            let msg = GenericBatch::decode(black_box(encoded.clone())).unwrap();
            let patches: Vec<CustomerPatch> = msg
                .customers
                .into_iter()
                .map(|c| convert::customer_patch(&schema, c).unwrap())
                .collect();
            black_box(patches)
        })
    });
    group.bench_function("wire", |b| {
        b.iter(|| {
            let msg = pb::LoadCustomersRequest::decode(black_box(encoded.clone())).unwrap();
            black_box(msg.patches(&schema, &limits).unwrap())
        })
    });
    let columns = columns_request(0).encode_to_vec();
    group.bench_function("columns", |b| {
        b.iter(|| {
            let msg = pb::LoadCustomersRequest::decode(black_box(columns.as_slice())).unwrap();
            black_box(segmentd::engine::UpsertBatch::received(&schema, &msg, &limits).unwrap())
        })
    });
    group.finish();
}

/// A batch of 1,000 generated customers from `from` on, given column by column.
fn columns_request(from: u64) -> pb::LoadCustomersRequest {
    let columns = columns::to_columns(&batch(from)).expect("generated customers fit columns");
    pb::LoadCustomersRequest::from_columns(&columns)
}

fn apply(c: &mut Criterion) {
    let schema = Store::new().schema();
    let limits = Limits::default();
    let patches = pb::LoadCustomersRequest::new(batch(0))
        .patches(&schema, &limits)
        .unwrap();
    let mut group = c.benchmark_group("apply");
    group.bench_function("new", |b| {
        b.iter_batched(
            || (Store::new(), patches.clone()),
            |(store, patches)| {
                store.upsert(&patches, &mut no_log).unwrap();
                (store, patches)
            },
            BatchSize::PerIteration,
        )
    });
    let store = Store::new();
    let mut next = 0u64;
    let patches_from = |from: u64| {
        pb::LoadCustomersRequest::new(batch(from))
            .patches(&schema, &limits)
            .unwrap()
    };
    while next < 200_000 {
        store.upsert(&patches_from(next), &mut no_log).unwrap();
        next += BATCH;
    }
    group.bench_function("steady", |b| {
        b.iter_batched(
            || {
                next += BATCH;
                patches_from(next - BATCH)
            },
            |patches| {
                store.upsert(&patches, &mut no_log).unwrap();
                patches
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("steady_columns", |b| {
        b.iter_batched(
            || {
                next += BATCH;
                let msg = columns_request(next - BATCH).encode_to_vec();
                let msg = pb::LoadCustomersRequest::decode(msg.as_slice()).unwrap();
                let mut batch = msg.column_batch(&store.schema(), &limits).unwrap().unwrap();
                batch.look_up_codes(&store.schema());
                let hashes = KeyHashes::of_columns(&batch);
                (batch, hashes)
            },
            |(batch, hashes)| {
                store.upsert_columns(&batch, &hashes, &mut no_log).unwrap();
                (batch, hashes)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
    let mut group = c.benchmark_group("prepare");
    let received: Vec<Vec<u8>> = batch(0).iter().map(Message::encode_to_vec).collect();
    group.bench_function("record_as_received", |b| {
        b.iter(|| {
            black_box(segmentd::wal::record::encode_upsert_customers(
                black_box(&received).iter().map(Vec::as_slice),
            ))
        })
    });
    group.bench_function("codes", |b| {
        b.iter(|| black_box(segmentd::store::known_codes(&store.schema(), black_box(&patches))))
    });
    group.finish();
}

/// The writer's share of a whole bulk load: 1,000,000 customers (`SEGMENTD_BENCH_CUSTOMERS`)
/// applied with `Store::upsert_columns` to an empty store, batch after batch, timed around the
/// applies only (reading each batch, looking up its codes and hashing its keys are the request
/// threads' share). Unlike `apply/steady_columns`, it includes the maps' growth and every shard
/// filling, and runs on one thread with nothing else: the steadiest figure of what a load costs
/// the writer.
fn load(c: &mut Criterion) {
    let total: u64 = std::env::var("SEGMENTD_BENCH_CUSTOMERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let limits = Limits::default();
    let requests: Vec<pb::LoadCustomersRequest> = (0..total.div_ceil(BATCH))
        .map(|b| {
            let msg = columns_request(b * BATCH).encode_to_vec();
            pb::LoadCustomersRequest::decode(msg.as_slice()).unwrap()
        })
        .collect();
    let mut group = c.benchmark_group("load");
    group.sample_size(10);
    group.bench_function("writer_columns", |b| {
        b.iter_custom(|iters| {
            let mut applying = std::time::Duration::ZERO;
            for _ in 0..iters {
                let store = Store::new();
                for msg in &requests {
                    let mut batch = msg.column_batch(&store.schema(), &limits).unwrap().unwrap();
                    batch.look_up_codes(&store.schema());
                    let hashes = KeyHashes::of_columns(&batch);
                    let started = std::time::Instant::now();
                    store.upsert_columns(&batch, &hashes, &mut no_log).unwrap();
                    applying += started.elapsed();
                }
                assert_eq!(store.customer_count(), total);
            }
            applying
        })
    });
    group.finish();
}

/// An id map at the point of growing: its tables rebuilt at twice the size, entries rehashed from
/// the hashes recorded for their ordinals.
fn maps(c: &mut Criterion) {
    use segmentd::store::index::{IdIndex, KeyCase};
    // 7/8 of 2^19: 2^19 buckets (across the map's tables) full.
    let held = (1 << 19) / 8 * 7;
    let keys: Vec<String> = (0..2 * held).map(|n| format!("C{n:09}")).collect();
    let hashes: Vec<u64> = keys
        .iter()
        .map(|k| segmentd::store::index::key_hash(KeyCase::Sensitive, k))
        .collect();
    let mut group = c.benchmark_group("maps");
    group.sample_size(20);
    group.bench_function("grow", |b| {
        b.iter_batched(
            || {
                let idx = IdIndex::new(KeyCase::Sensitive);
                idx.reserve_hashed(hashes[..held].iter().copied());
                idx.insert_many(hashes[..held].iter().copied().zip(0..held as u32));
                idx
            },
            |idx| {
                idx.reserve_hashed(hashes[held..].iter().copied());
                idx
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, decode, apply, load, maps);
criterion_main!(benches);
