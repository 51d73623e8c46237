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
//!
//! `SEGMENTD_BENCH_RUNS=N` loads the same batches N times, each into a fresh server, and ends with
//! the median and the range: on a shared machine one run says little.

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
    // Started first so that its start-up is over before the clock runs (and out of the phase
    // benches/thread_times.py reads).
    let mut first_server = Some(Server::start());
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
                &segmentd::codec::columns::to_columns(&batch).expect("generated customers fit columns"),
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

    let runs: usize = std::env::var("SEGMENTD_BENCH_RUNS")
        .ok()
        .map(|v| v.parse().expect("SEGMENTD_BENCH_RUNS is a number of runs"))
        .unwrap_or(1)
        .max(1);
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("client")
        .enable_all()
        .build()
        .unwrap();
    let mut rates = Vec::with_capacity(runs);
    for run in 0..runs {
        let server = first_server.take().unwrap_or_else(Server::start);
        let batches = batches.clone();
        let form = form.as_str();
        let rate = client_rt.block_on(load(server.addr, batches, total, form, run == 0));
        rates.push(rate);
        server.stop();
    }
    if runs > 1 {
        rates.sort_by(f64::total_cmp);
        let median = if runs % 2 == 1 {
            rates[runs / 2]
        } else {
            (rates[runs / 2 - 1] + rates[runs / 2]) / 2.0
        };
        println!(
            "median of {runs} runs: {median:.0} customers/s (runs {:.0} to {:.0})",
            rates[0],
            rates[runs - 1]
        );
    }
}

/// A segmentd on its own two-thread runtime, with a temporary data directory.
struct Server {
    addr: std::net::SocketAddr,
    runtime: tokio::runtime::Runtime,
    stop: tokio::sync::oneshot::Sender<()>,
    stopped: tokio::task::JoinHandle<Result<(), segmentd::server::ServerError>>,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("server")
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = Config::with_data_dir(dir.path().join("data"));
        config.no_snapshot_on_shutdown = true;
        if let Ok(mode) = std::env::var("SEGMENTD_BENCH_FSYNC") {
            config.fsync = mode
                .parse()
                .expect("SEGMENTD_BENCH_FSYNC is always, never or interval=<ms>");
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = runtime.spawn(segmentd::server::run(listener, config, async {
            let _ = stopped.await;
        }));
        // Ready once it answers (recovery done).
        runtime.block_on(async {
            for _ in 0..1000 {
                if let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .connect()
                    .await
                    && AdminClient::new(channel).stats(pb::StatsRequest {}).await.is_ok()
                {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("segmentd did not start");
        });
        Server {
            addr,
            runtime,
            stop,
            stopped,
            _dir: dir,
        }
    }

    /// Shuts the server down and waits until it has (its threads gone, its files closed).
    fn stop(self) {
        let _ = self.stop.send(());
        self.runtime.block_on(self.stopped).unwrap().unwrap();
    }
}

/// Streams `batches` to the server at `addr` in one `LoadCustomers` call; prints and returns the
/// rate, and with `memory` the server's `Admin.Stats` afterwards.
async fn load(
    addr: std::net::SocketAddr,
    batches: Vec<pb::LoadCustomersRequest>,
    total: usize,
    form: &str,
    memory: bool,
) -> f64 {
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
    let encoding = match form {
        "send" => "messages encoded while sending",
        "rows" => "messages encoded beforehand",
        _ => "columns encoded beforehand",
    };
    let rate = total as f64 / secs;
    println!("load_customers ({encoding}): {total} customers in {secs:.3} s = {rate:.0} customers/s");
    if !memory {
        return rate;
    }
    let stats = AdminClient::new(channel)
        .stats(pb::StatsRequest {})
        .await
        .unwrap()
        .into_inner();
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
    rate
}
