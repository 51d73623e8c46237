//! Bulk-load throughput: streams pre-generated batches of 1,000 customers through
//! `Ingest.LoadCustomers` to a server on loopback, then reports customers per second and the
//! server's own `Admin.Stats` bytes per customer.
//!
//! `cargo bench --bench load` (SEGMENTD_BENCH_CUSTOMERS=N to change the 1,000,000 default).
//! Client and server run in this process on separate runtimes, sharing the machine's cores.
//!
//! The batches are generated and encoded before the clock starts, as a bulk loader reading a file
//! sends them: column by column (`CustomerColumns`, as `segctl load` does), the figure being the
//! server's ingest rate. `SEGMENTD_BENCH_ENCODE` picks another form: `rows` sends each batch as
//! `Customer` messages encoded beforehand, `send` encodes the messages while sending, as a client
//! holding `Customer` messages does. `SEGMENTD_BENCH_FSYNC` sets the server's `--fsync` (default
//! `always`).

#[path = "support/gen.rs"]
mod generator;

use std::time::Instant;

use bytes::Bytes;
use prost::Message;

use segmentd::api::pb::{self, admin_client::AdminClient, ingest_client::IngestClient};
use segmentd::config::Config;

const BATCH: usize = 1_000;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    segmentd::alloc::tune();
    let total: usize = std::env::var("SEGMENTD_BENCH_CUSTOMERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("server")
        .enable_all()
        .build()
        .unwrap();
    let listener = server_rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = Config::with_data_dir(dir.path().join("data"));
    if let Ok(mode) = std::env::var("SEGMENTD_BENCH_FSYNC") {
        config.fsync = mode
            .parse()
            .expect("SEGMENTD_BENCH_FSYNC is always, never or interval=<ms>");
    }
    server_rt.spawn(segmentd::server::run(listener, config, std::future::pending()));

    eprint!("generating {total} customers in batches of {BATCH}... ");
    let started = Instant::now();
    let customers: Vec<Vec<pb::Customer>> = (0..total.div_ceil(BATCH))
        .map(|b| {
            (b * BATCH..((b + 1) * BATCH).min(total))
                .map(|n| generator::customer(n as u64, 42))
                .collect()
        })
        .collect();
    let attrs: usize = customers.iter().flatten().map(|c| c.attributes.len()).sum();
    let form = std::env::var("SEGMENTD_BENCH_ENCODE").unwrap_or_else(|_| "columns".into());
    let batches: Vec<pb::LoadCustomersRequest> = customers
        .into_iter()
        .map(|batch| match form.as_str() {
            "send" => pb::LoadCustomersRequest::new(batch),
            "rows" => pb::LoadCustomersRequest::from_encoded(
                batch.iter().map(|c| Bytes::from(c.encode_to_vec())).collect(),
            ),
            "columns" => pb::LoadCustomersRequest::from_columns(
                &segmentd::api::columns::to_columns(&batch).expect("generated customers fit columns"),
            ),
            other => panic!("SEGMENTD_BENCH_ENCODE is columns, rows or send, not `{other}`"),
        })
        .collect();
    let bytes: usize = batches.iter().map(Message::encoded_len).sum();
    eprintln!(
        "{:.1}s, {:.1} attributes and {:.1} bytes per customer",
        started.elapsed().as_secs_f64(),
        attrs as f64 / total as f64,
        bytes as f64 / total as f64
    );

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("client")
        .enable_all()
        .build()
        .unwrap();
    client_rt.block_on(async move {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .initial_connection_window_size(32 << 20)
            .initial_stream_window_size(8 << 20)
            .connect()
            .await
            .unwrap();
        let mut ingest = IngestClient::new(channel.clone()).max_encoding_message_size(64 << 20);
        let started = Instant::now();
        let reply = ingest
            .load_customers(tokio_stream::iter(batches))
            .await
            .unwrap()
            .into_inner();
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(reply.created as usize, total);
        let stats = AdminClient::new(channel)
            .stats(pb::StatsRequest {})
            .await
            .unwrap()
            .into_inner();
        let encoding = match form.as_str() {
            "send" => "messages encoded while sending",
            "rows" => "messages encoded beforehand",
            _ => "columns encoded beforehand",
        };
        println!(
            "load_customers ({encoding}): {total} customers in {secs:.3} s = {:.0} customers/s",
            total as f64 / secs
        );
        println!(
            "memory: {} customers, {:.1} MiB, {:.1} bytes per customer",
            stats.customers,
            stats.bytes_used as f64 / (1 << 20) as f64,
            stats.bytes_per_customer
        );
        for part in stats.memory.iter().take(12) {
            println!(
                "  {:<28} {:>7.1} bytes per customer",
                part.name,
                part.bytes as f64 / stats.customers.max(1) as f64
            );
        }
    });
}
