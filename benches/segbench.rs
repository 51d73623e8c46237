//! segbench: segmentd's load generator, with a bare tonic floor and Redis and DuckDB beside it.
//!
//! Starts segmentd on loopback with `--customers` customers in 20 segments (each customer in a
//! segment with probability 30%), and a *floor* server: the same tonic transport and the same
//! `Membership` service, whose handler does one bitmap lookup. Every workload runs against both,
//! so segmentd is reported as a ratio to the floor measured in the same run. With `--redis`, the
//! same memberships are loaded into Redis sets (a `redis-server` on PATH, started on a free port)
//! and the same workloads run against it. With `--duckdb`, the same rule is timed over the same
//! `--rule-customers` customers in DuckDB (Python module `duckdb`) and in segmentd's evaluator.
//!
//! Workloads (each for `--seconds`):
//! - `is-member` with 1 and `--concurrency` calls in flight over `--channels` connections;
//! - `check-20`: one customer against 20 segments (segmentd `CheckMemberships`, Redis 20 pipelined
//!   `SISMEMBER`);
//! - `customer-segments`;
//! - `batch`: `BatchCheckMemberships`, 500 customers x 20 segments a call.
//!
//! `is-member` and `check-20` also run as the same Redis commands against segmentd's Redis
//! protocol port (`--resp-addr`).
//!
//! Latencies go into HDR histograms (microseconds); the table gives calls/s, checks/s,
//! p50/p90/p99/p99.9, and the server's CPU seconds per 1,000,000 checks, read from the
//! scheduler's per-thread counters (`/proc/.../task/*/schedstat`) over each run: the threads of
//! the server runtime for segmentd and the floor (the client runs on a runtime of its own, with
//! its own threads), every thread of `redis-server` for Redis. On a 2-core machine the client
//! and the server compete for the cores, so throughput ratios mostly measure the client; the
//! CPU per check is the fair comparison.
//!
//! `cargo bench --bench segbench -- [--customers N] [--seconds S] [--workload NAME] [--redis] [--duckdb]`;
//! `benches/compare.sh` installs Redis and DuckDB and runs everything.

#[path = "support/gen.rs"]
mod generator;

use std::future::Future;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use roaring::RoaringBitmap;
use segmentd::api::pb::{
    self,
    ingest_client::IngestClient,
    membership_client::MembershipClient,
    membership_server::{Membership, MembershipServer},
    segments_client::SegmentsClient,
};
use segmentd::config::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SEGMENTS: usize = 20;
const BATCH_CUSTOMERS: usize = 500;
/// Alternating rounds per workload and system (the floor and segmentd).
const ROUNDS: usize = 5;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "segbench",
    about = "segmentd's load generator (see benches/segbench.rs)"
)]
struct Args {
    /// Customers loaded into segmentd (and Redis).
    #[arg(long, default_value_t = 200_000)]
    customers: usize,
    /// Seconds per workload and system.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Calls in flight for the concurrent workloads.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Connections the concurrent calls are spread over.
    #[arg(long, default_value_t = 4)]
    channels: usize,
    /// Also run against Redis (`redis-server` on PATH).
    #[arg(long)]
    redis: bool,
    /// Also time a rule in DuckDB against segmentd's evaluator.
    #[arg(long)]
    duckdb: bool,
    /// Customers for the rule comparison.
    #[arg(long, default_value_t = 10_000_000)]
    rule_customers: usize,
    /// Also measure IsMember (1 in flight) idle and while this many new customers stream in
    /// through LoadCustomers (0: skip).
    #[arg(long, default_value_t = 0)]
    during_load: usize,
    /// Run only the workloads whose name starts with this (e.g. `check-20`, `is-member`);
    /// repeatable. All of them by default.
    #[arg(long = "workload", value_name = "NAME")]
    workloads: Vec<String>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// Whether customer `i` is in segment `k`: 30%, deterministic.
fn member(i: usize, k: usize) -> bool {
    let mut x = (i as u64) << 8 | k as u64;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x % 10 < 3
}

fn cid(i: usize) -> String {
    format!("c{i}")
}

fn sid(k: usize) -> String {
    format!("s{k}")
}

// ---------------------------------------------------------------------------------------------
// The floor: the same service over the same transport, one bitmap lookup per check.

struct Floor {
    sets: Vec<RoaringBitmap>,
}

impl Floor {
    fn contains(&self, customer: &str, segment: &str) -> Result<bool, Status> {
        let k: usize = segment[1..].parse().map_err(|_| Status::not_found("segment"))?;
        let set = self.sets.get(k).ok_or_else(|| Status::not_found("segment"))?;
        Ok(customer[1..].parse::<u32>().is_ok_and(|i| set.contains(i)))
    }
}

#[tonic::async_trait]
impl Membership for Floor {
    async fn is_member(
        &self,
        r: Request<pb::IsMemberRequest>,
    ) -> Result<Response<pb::IsMemberResponse>, Status> {
        let r = r.get_ref();
        Ok(Response::new(pb::IsMemberResponse {
            member: self.contains(&r.customer_id, &r.segment_id)?,
            known_customer: true,
        }))
    }

    async fn check_memberships(
        &self,
        r: Request<pb::CheckMembershipsRequest>,
    ) -> Result<Response<pb::CheckMembershipsResponse>, Status> {
        let r = r.get_ref();
        Ok(Response::new(pb::CheckMembershipsResponse {
            member: r
                .segment_ids
                .iter()
                .map(|s| self.contains(&r.customer_id, s))
                .collect::<Result<_, _>>()?,
            known_customer: true,
        }))
    }

    async fn get_customer_segments(
        &self,
        r: Request<pb::GetCustomerSegmentsRequest>,
    ) -> Result<Response<pb::GetCustomerSegmentsResponse>, Status> {
        let r = r.get_ref();
        let mut ids = Vec::new();
        for k in 0..self.sets.len() {
            if self.contains(&r.customer_id, &sid(k))? {
                ids.push(sid(k));
            }
        }
        Ok(Response::new(pb::GetCustomerSegmentsResponse {
            segment_ids: ids,
            known_customer: true,
        }))
    }

    async fn batch_check_memberships(
        &self,
        r: Request<pb::BatchCheckMembershipsRequest>,
    ) -> Result<Response<pb::BatchCheckMembershipsResponse>, Status> {
        let r = r.get_ref();
        let mut member = Vec::with_capacity(r.customer_ids.len() * r.segment_ids.len());
        for c in &r.customer_ids {
            for s in &r.segment_ids {
                member.push(self.contains(c, s)?);
            }
        }
        Ok(Response::new(pb::BatchCheckMembershipsResponse {
            member,
            known_customer: vec![true; r.customer_ids.len()],
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Running a workload

#[derive(Clone, Copy, Debug, PartialEq)]
enum Workload {
    IsMember,
    Check20,
    CustomerSegments,
    Batch,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::IsMember => "is-member",
            Workload::Check20 => "check-20",
            Workload::CustomerSegments => "customer-segments",
            Workload::Batch => "batch (500 x 20)",
        }
    }

    fn checks_per_call(self) -> u64 {
        match self {
            Workload::IsMember => 1,
            Workload::Check20 | Workload::CustomerSegments => SEGMENTS as u64,
            Workload::Batch => (BATCH_CUSTOMERS * SEGMENTS) as u64,
        }
    }
}

/// What one run measured.
struct Measured {
    calls: u64,
    seconds: f64,
    latency: Histogram<u64>,
    /// CPU time the server's threads spent over the run (nanoseconds), when known.
    server_cpu_ns: Option<u64>,
}

impl Measured {
    fn merge(&mut self, other: Measured) {
        self.calls += other.calls;
        self.seconds += other.seconds;
        self.latency.add(other.latency).unwrap();
        self.server_cpu_ns = self.server_cpu_ns.zip(other.server_cpu_ns).map(|(a, b)| a + b);
    }

    fn per_second(&self) -> f64 {
        self.calls as f64 / self.seconds
    }
}

/// Where a server's CPU time is read: threads of this process by name, or a whole process.
#[derive(Clone, Copy)]
enum Cpu {
    /// This process's threads whose name starts with the given prefix (the server runtime's).
    Threads(&'static str),
    Process(u32),
}

impl Cpu {
    /// CPU time so far (nanoseconds), summed over the threads' `schedstat` (time on a CPU, in
    /// nanoseconds, as the scheduler counts it: finer than `stat`'s clock ticks).
    fn nanos(self) -> Option<u64> {
        let dir = match self {
            Cpu::Threads(_) => "/proc/self/task".to_string(),
            Cpu::Process(pid) => format!("/proc/{pid}/task"),
        };
        let mut total = 0;
        for task in std::fs::read_dir(dir).ok()? {
            let path = task.ok()?.path();
            if let Cpu::Threads(prefix) = self {
                let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
                if !comm.starts_with(prefix) {
                    continue;
                }
            }
            let stat = std::fs::read_to_string(path.join("schedstat")).unwrap_or_default();
            total += stat
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0);
        }
        Some(total)
    }

    /// `run`, with the server's CPU time over it.
    async fn over(self, run: impl Future<Output = Measured>) -> Measured {
        let before = self.nanos();
        let mut m = run.await;
        m.server_cpu_ns = before.zip(self.nanos()).map(|(b, a)| a.saturating_sub(b));
        m
    }
}

/// The server runtime's threads (segmentd's and the floor's, which never run at once).
const SERVERS: Cpu = Cpu::Threads("servers");

/// xorshift, one per task.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Runs `call` from `inflight` tasks for `seconds`; each task gets its own state from `make`,
/// which each call takes and hands back.
async fn drive<S, F, Fut>(inflight: usize, seconds: f64, make: impl Fn(usize) -> S, call: F) -> Measured
where
    S: Send + 'static,
    F: Fn(S, &mut Rng) -> Fut + Send + Sync + Copy + 'static,
    Fut: Future<Output = S> + Send,
{
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..inflight)
        .map(|t| {
            let mut state = Some(make(t));
            tokio::spawn(async move {
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (t as u64 + 1));
                let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                let mut calls = 0u64;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    state = Some(call(state.take().expect("handed back"), &mut rng).await);
                    h.record((t0.elapsed().as_micros() as u64).max(1)).unwrap();
                    calls += 1;
                }
                (calls, h)
            })
        })
        .collect();
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut calls = 0;
    for t in tasks {
        let (c, h) = t.await.unwrap();
        calls += c;
        latency.add(h).unwrap();
    }
    Measured {
        calls,
        seconds: started.elapsed().as_secs_f64(),
        latency,
        server_cpu_ns: None,
    }
}

async fn grpc(
    channels: &[Channel],
    workload: Workload,
    inflight: usize,
    seconds: f64,
    customers: usize,
) -> Measured {
    let segment_ids: Vec<String> = (0..SEGMENTS).map(sid).collect();
    let make = |t: usize| {
        (
            MembershipClient::new(channels[t % channels.len()].clone()),
            segment_ids.clone(),
            customers,
        )
    };
    match workload {
        Workload::IsMember => {
            drive(inflight, seconds, make, |(mut c, segs, n), rng| {
                let req = pb::IsMemberRequest {
                    customer_id: cid(rng.below(n)),
                    segment_id: sid(rng.below(SEGMENTS)),
                };
                async move {
                    c.is_member(req).await.unwrap();
                    (c, segs, n)
                }
            })
            .await
        }
        Workload::Check20 => {
            drive(inflight, seconds, make, |(mut c, segs, n), rng| {
                let req = pb::CheckMembershipsRequest {
                    customer_id: cid(rng.below(n)),
                    segment_ids: segs.clone(),
                };
                async move {
                    c.check_memberships(req).await.unwrap();
                    (c, segs, n)
                }
            })
            .await
        }
        Workload::CustomerSegments => {
            drive(inflight, seconds, make, |(mut c, segs, n), rng| {
                let req = pb::GetCustomerSegmentsRequest {
                    customer_id: cid(rng.below(n)),
                };
                async move {
                    c.get_customer_segments(req).await.unwrap();
                    (c, segs, n)
                }
            })
            .await
        }
        Workload::Batch => {
            drive(inflight, seconds, make, |(mut c, segs, n), rng| {
                let req = pb::BatchCheckMembershipsRequest {
                    customer_ids: (0..BATCH_CUSTOMERS).map(|_| cid(rng.below(n))).collect(),
                    segment_ids: segs.clone(),
                };
                async move {
                    c.batch_check_memberships(req).await.unwrap();
                    (c, segs, n)
                }
            })
            .await
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Redis, spoken in RESP over one connection per task

struct Resp {
    stream: BufReader<TcpStream>,
    out: Vec<u8>,
}

impl Resp {
    async fn connect(addr: SocketAddr) -> std::io::Result<Resp> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Resp {
            stream: BufReader::new(stream),
            out: Vec::new(),
        })
    }

    fn command(&mut self, parts: &[&[u8]]) {
        self.out
            .extend_from_slice(format!("*{}\r\n", parts.len()).as_bytes());
        for p in parts {
            self.out.extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
            self.out.extend_from_slice(p);
            self.out.extend_from_slice(b"\r\n");
        }
    }

    /// Sends the queued commands and reads `n` integer or status replies.
    async fn flush(&mut self, n: usize) -> std::io::Result<Vec<i64>> {
        self.stream.get_mut().write_all(&self.out).await?;
        self.out.clear();
        let mut replies = Vec::with_capacity(n);
        let mut line = Vec::new();
        for _ in 0..n {
            line.clear();
            loop {
                let b = self.stream.read_u8().await?;
                line.push(b);
                if line.ends_with(b"\r\n") {
                    break;
                }
            }
            let text = std::str::from_utf8(&line[1..line.len() - 2]).unwrap_or("");
            match line[0] {
                b':' => replies.push(text.parse().unwrap_or(0)),
                b'+' => replies.push(0),
                _ => {
                    return Err(std::io::Error::other(format!(
                        "redis: {}",
                        String::from_utf8_lossy(&line)
                    )));
                }
            }
        }
        Ok(replies)
    }
}

/// A Redis server on a free loopback port, stopped when dropped.
struct RedisServer {
    child: Child,
    addr: SocketAddr,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_redis() -> RedisServer {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = RedisServer {
        child: Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (benches/compare.sh installs it)"),
        addr: format!("127.0.0.1:{port}").parse().unwrap(),
    };
    for _ in 0..100 {
        if let Ok(mut c) = Resp::connect(server.addr).await {
            c.command(&[b"PING"]);
            if c.flush(1).await.is_ok() {
                return server;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(server);
    panic!("redis-server did not answer");
}

async fn redis(
    addr: SocketAddr,
    workload: Workload,
    inflight: usize,
    seconds: f64,
    customers: usize,
) -> Measured {
    let mut conns = Vec::new();
    for _ in 0..inflight {
        conns.push(Some(Resp::connect(addr).await.unwrap()));
    }
    let conns = Arc::new(std::sync::Mutex::new(conns));
    let make = |t: usize| (conns.lock().unwrap()[t].take().unwrap(), customers);
    match workload {
        Workload::IsMember => {
            drive(inflight, seconds, make, |(mut c, n), rng| {
                let (customer, segment) = (cid(rng.below(n)), sid(rng.below(SEGMENTS)));
                c.command(&[b"SISMEMBER", segment.as_bytes(), customer.as_bytes()]);
                async move {
                    c.flush(1).await.unwrap();
                    (c, n)
                }
            })
            .await
        }
        _ => {
            drive(inflight, seconds, make, |(mut c, n), rng| {
                let customer = cid(rng.below(n));
                for k in 0..SEGMENTS {
                    c.command(&[b"SISMEMBER", sid(k).as_bytes(), customer.as_bytes()]);
                }
                async move {
                    c.flush(SEGMENTS).await.unwrap();
                    (c, n)
                }
            })
            .await
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Set-up

async fn load_segmentd(channel: Channel, customers: usize) {
    let mut ingest = IngestClient::new(channel.clone()).max_encoding_message_size(64 << 20);
    let batches: Vec<pb::LoadCustomersRequest> = (0..customers)
        .collect::<Vec<_>>()
        .chunks(1000)
        .map(|c| {
            pb::LoadCustomersRequest::new(
                c.iter()
                    .map(|&i| pb::Customer {
                        customer_id: cid(i),
                        ..Default::default()
                    })
                    .collect(),
            )
        })
        .collect();
    ingest.load_customers(tokio_stream::iter(batches)).await.unwrap();
    let mut segments = SegmentsClient::new(channel);
    for k in 0..SEGMENTS {
        segments
            .create_segment(pb::CreateSegmentRequest {
                segment: Some(pb::Segment {
                    segment_id: sid(k),
                    name: sid(k),
                    ..Default::default()
                }),
            })
            .await
            .unwrap();
        let members: Vec<String> = (0..customers).filter(|&i| member(i, k)).map(cid).collect();
        let requests: Vec<pb::LoadSegmentMembersRequest> = members
            .chunks(10_000)
            .map(|c| pb::LoadSegmentMembersRequest {
                segment_id: sid(k),
                customer_ids: c.to_vec(),
                mode: pb::MemberMode::Include as i32,
                ..Default::default()
            })
            .collect();
        ingest
            .load_segment_members(tokio_stream::iter(requests))
            .await
            .unwrap();
    }
}

async fn load_redis(addr: SocketAddr, customers: usize) {
    let mut c = Resp::connect(addr).await.unwrap();
    for k in 0..SEGMENTS {
        let members: Vec<String> = (0..customers).filter(|&i| member(i, k)).map(cid).collect();
        for chunk in members.chunks(1000) {
            let segment = sid(k);
            let mut parts: Vec<&[u8]> = vec![b"SADD", segment.as_bytes()];
            parts.extend(chunk.iter().map(|m| m.as_bytes()));
            c.command(&parts);
            c.flush(1).await.unwrap();
        }
    }
}

async fn connect(addr: SocketAddr, n: usize) -> Vec<Channel> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .tcp_nodelay(true)
                .initial_connection_window_size(16 << 20)
                .initial_stream_window_size(4 << 20)
                .connect()
                .await
                .unwrap(),
        );
    }
    out
}

/// IsMember latency idle, then while `n` new customers (with attributes) stream in.
///
/// The measuring client is one thread running both the calls and their connection (a
/// current-thread runtime of its own), so a call's latency is the server's answer plus one
/// thread's wait for a core, not also hand-offs between client threads competing for the same two
/// cores as the load.
async fn during_load(addr: SocketAddr, n: usize, customers: usize) {
    // Column by column and encoded beforehand, as the bulk loader (`segctl load`) sends them (see
    // benches/load.rs).
    let batches: Vec<pb::LoadCustomersRequest> = (0..n)
        .collect::<Vec<_>>()
        .chunks(1000)
        .map(|c| {
            let customers: Vec<pb::Customer> = c
                .iter()
                .map(|&i| generator::customer(i as u64 + 10_000_000, 7))
                .collect();
            pb::LoadCustomersRequest::from_columns(
                &segmentd::codec::columns::to_columns(&customers).expect("generated customers fit columns"),
            )
        })
        .collect();
    // 0: measuring idle, 1: the load runs, 2: it ended.
    let (phase_tx, mut phase) = tokio::sync::watch::channel(0u8);
    let (idle_done_tx, idle_done_rx) = tokio::sync::oneshot::channel::<()>();
    let measurer = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut client = MembershipClient::new(connect(addr, 1).await.remove(0));
            let mut rng = Rng(42);
            let mut histograms = [
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
            ];
            let idle_until = Instant::now() + Duration::from_secs(3);
            let mut idle_done = Some(idle_done_tx);
            loop {
                let now = *phase.borrow();
                let during = match now {
                    0 if Instant::now() < idle_until => 0,
                    0 => {
                        // Idle measured: let the load start, and wait for it.
                        if let Some(done) = idle_done.take() {
                            let _ = done.send(());
                        }
                        phase.wait_for(|&p| p > 0).await.unwrap();
                        continue;
                    }
                    1 => 1,
                    _ => break,
                };
                let t0 = Instant::now();
                client
                    .is_member(pb::IsMemberRequest {
                        customer_id: cid(rng.below(customers)),
                        segment_id: sid(rng.below(SEGMENTS)),
                    })
                    .await
                    .unwrap();
                histograms[during]
                    .record((t0.elapsed().as_micros() as u64).max(1))
                    .unwrap();
            }
            histograms
        })
    });
    idle_done_rx.await.unwrap();
    // The loader gets a runtime (and threads) of its own, as a separate loading process would.
    let loader_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("loader")
        .enable_all()
        .build()
        .unwrap();
    let load_channel = loader_rt
        .spawn(async move { connect(addr, 1).await.remove(0) })
        .await
        .unwrap();
    let started = Instant::now();
    phase_tx.send(1).unwrap();
    let load = loader_rt.spawn(async move {
        IngestClient::new(load_channel)
            .max_encoding_message_size(64 << 20)
            .load_customers(tokio_stream::iter(batches))
            .await
            .unwrap();
        Instant::now()
    });
    let ended = load.await.unwrap();
    phase_tx.send(2).unwrap();
    let [idle, busy] = tokio::task::spawn_blocking(move || measurer.join().unwrap())
        .await
        .unwrap();
    loader_rt.shutdown_background();
    let secs = (ended - started).as_secs_f64();
    println!();
    println!("| IsMember, 1 in flight | calls | p50 µs | p90 µs | p99 µs | p99.9 µs |");
    println!("|---|---|---|---|---|---|");
    for (label, h) in [("idle", &idle), ("during the load", &busy)] {
        println!(
            "| {label} | {} | {} | {} | {} | {} |",
            h.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999)
        );
    }
    println!(
        "| load: {n} customers through LoadCustomers in {secs:.1} s ({:.0}/s) | | | | | |",
        n as f64 / secs
    );
}

// ---------------------------------------------------------------------------------------------
// The rule comparison

const RULE: &str = r#"spent > 500 and gender = "F" and age < 40"#;

/// Times `RULE` over `n` customers in segmentd's evaluator (in process) and in DuckDB (Python),
/// on the same data; returns (segmentd ms, duckdb ms, matches).
fn rule_comparison(n: usize) -> (f64, f64, u64) {
    use segmentd::columnar::schema::AttrType;
    use segmentd::columnar::value::Value;
    use segmentd::store::input::CustomerPatch;
    use segmentd::store::{Store, no_log};

    let today = segmentd::time::now_micros().div_euclid(segmentd::time::MICROS_PER_DAY) as i32;
    let row = |i: usize| {
        let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^= x >> 31;
        let gender = if x.is_multiple_of(2) { "F" } else { "M" };
        let birth = today - 18 * 365 - ((x >> 8) % (60 * 365)) as i32;
        let spent = ((x >> 24) % 200_000) as i64; // cents
        (gender, birth, spent)
    };
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("customers.csv");
    {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(std::fs::File::create(&csv).unwrap());
        writeln!(w, "id,gender,birth_date,spent").unwrap();
        for i in 0..n {
            let (g, b, s) = row(i);
            let (y, m, d) = segmentd::time::civil_from_days(b);
            writeln!(w, "{i},{g},{y:04}-{m:02}-{d:02},{:.2}", s as f64 / 100.0).unwrap();
        }
    }
    let store = Store::new();
    store
        .define_attribute("spent", AttrType::Money, "", &mut no_log)
        .unwrap();
    let schema = store.schema();
    let (gender, birth, spent) = (
        schema.get("gender").unwrap().id,
        schema.get("birth_date").unwrap().id,
        schema.get("spent").unwrap().id,
    );
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let patches: Vec<CustomerPatch> = chunk
            .iter()
            .map(|&i| {
                let (g, b, s) = row(i);
                CustomerPatch {
                    customer_id: format!("r{i}"),
                    email: None,
                    attrs: vec![
                        (gender, Some(Value::Keyword(g.into()))),
                        (birth, Some(Value::Date(b))),
                        (spent, Some(Value::Money(s))),
                    ],
                }
            })
            .collect();
        store.upsert(&patches, &mut no_log).unwrap();
    }
    let rule = segmentd::segment::text::parse(RULE).unwrap();
    let mut ours = Vec::new();
    let mut count = 0;
    for _ in 0..7 {
        let t = Instant::now();
        count = store.preview(&rule, None, 0).unwrap().0;
        ours.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ours.sort_by(f64::total_cmp);
    drop(store);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/duckdb_rule.py");
    let python = std::env::var("SEGBENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(python)
        .arg(script)
        .arg(&csv)
        .output()
        .expect("python3 with duckdb (benches/compare.sh installs it)");
    assert!(
        out.status.success(),
        "duckdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut fields = text.split_whitespace();
    let duck_ms: f64 = fields.next().unwrap().parse().unwrap();
    let duck_count: u64 = fields.next().unwrap().parse().unwrap();
    assert_eq!(duck_count, count, "DuckDB and segmentd agree on the matches");
    (ours[ours.len() / 2], duck_ms, count)
}

// ---------------------------------------------------------------------------------------------

/// The workload against an in-process replica, one thread, for `seconds`: latency in
/// nanoseconds (each call timed with the clock, whose ~25 ns are included).
fn in_process(replica: &segmentd_replica::Replica, w: Workload, seconds: f64, customers: usize) -> Measured {
    let segments: Vec<String> = (0..SEGMENTS).map(sid).collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    let ids: Vec<String> = {
        let mut rng = Rng(7);
        (0..100_000).map(|_| cid(rng.below(customers))).collect()
    };
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
    let mut out = [false; SEGMENTS];
    let (mut calls, mut hits) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed().as_secs_f64() < seconds {
        for id in &ids {
            let t = Instant::now();
            hits += match w {
                Workload::Check20 => u64::from(replica.check_into(id, &segs, &mut out).unwrap()),
                _ => u64::from(replica.is_member(id, segs[calls as usize % SEGMENTS]).unwrap() == Some(true)),
            };
            latency.record(t.elapsed().as_nanos().max(1) as u64).unwrap();
            calls += 1;
        }
    }
    std::hint::black_box(hits);
    Measured {
        calls,
        seconds: start.elapsed().as_secs_f64(),
        latency,
        server_cpu_ns: None,
    }
}

fn row(workload: &str, inflight: usize, system: &str, m: &Measured, checks: u64, vs: Option<(&str, f64)>) {
    let q = |p: f64| m.latency.value_at_quantile(p);
    let ratio = vs.map(|(name, r)| format!("{r:.2}x {name}")).unwrap_or_default();
    // Server CPU seconds per 1,000,000 checks.
    let cpu = m
        .server_cpu_ns
        .map(|ns| format!("{:.2}", ns as f64 / 1e9 / (m.calls * checks) as f64 * 1e6))
        .unwrap_or_default();
    println!(
        "| {workload} | {inflight} | {system} | {:.0} | {:.0} | {} | {} | {} | {} | {cpu} | {ratio} |",
        m.per_second(),
        m.per_second() * checks as f64,
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999)
    );
}

fn main() {
    segmentd::alloc::tune();
    let args = Args::parse();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("servers")
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let resp_addr: SocketAddr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let (seg_addr, floor_addr) = server_rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let seg_addr = listener.local_addr().unwrap();
        let mut config = Config::with_data_dir(dir.path().join("data"));
        config.resp_addr = Some(resp_addr);
        config.fsync = segmentd::wal::FsyncMode::Never;
        config.reclassify_interval_hours = 0;
        tokio::spawn(segmentd::server::run(listener, config, std::future::pending()));
        let sets = (0..SEGMENTS)
            .map(|k| {
                (0..args.customers as u32)
                    .filter(|&i| member(i as usize, k))
                    .collect()
            })
            .collect();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let floor_addr = listener.local_addr().unwrap();
        tokio::spawn(
            Server::builder()
                .tcp_nodelay(true)
                .initial_connection_window_size(32 * 1024 * 1024)
                .initial_stream_window_size(2 * 1024 * 1024)
                .add_service(MembershipServer::new(Floor { sets }))
                .serve_with_incoming(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                ),
        );
        (seg_addr, floor_addr)
    });
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("client")
        .enable_all()
        .build()
        .unwrap();
    client_rt.block_on(async {
        // segmentd answers once recovery is done.
        let seg = loop {
            if let Ok(c) = Endpoint::from_shared(format!("http://{seg_addr}")).unwrap().connect().await {
                let mut admin = segmentd::api::pb::admin_client::AdminClient::new(c.clone());
                if admin.stats(pb::StatsRequest {}).await.is_ok() {
                    break c;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let t = Instant::now();
        load_segmentd(seg, args.customers).await;
        eprintln!("segmentd: {} customers in {SEGMENTS} segments loaded in {:.1} s", args.customers, t.elapsed().as_secs_f64());
        let redis_server = if args.redis {
            let r = start_redis().await;
            let t = Instant::now();
            load_redis(r.addr, args.customers).await;
            eprintln!("redis: the same sets loaded in {:.1} s", t.elapsed().as_secs_f64());
            Some(r)
        } else {
            None
        };
        // A replica of the 20 segments inside this process (segmentd-replica), for the
        // in-process rows.
        let replica = {
            let r = segmentd_replica::Replica::builder(format!("http://{seg_addr}"))
                .segments((0..SEGMENTS).map(sid))
                .start()
                .unwrap();
            let t = Instant::now();
            let r = tokio::task::spawn_blocking(move || {
                r.wait_ready(Duration::from_secs(120)).map(|()| r)
            })
            .await
            .unwrap()
            .unwrap();
            eprintln!("replica: ready in {:.2} s", t.elapsed().as_secs_f64());
            Arc::new(r)
        };
        let seg_channels = connect(seg_addr, args.channels).await;
        let floor_channels = connect(floor_addr, args.channels).await;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        println!(
            "segbench: {} customers, {SEGMENTS} segments (30% each), {} s a run, {cpus} cores shared by servers and client",
            args.customers, args.seconds
        );
        println!();
        println!(
            "| workload | in flight | system | calls/s | checks/s | p50 µs | p90 µs | p99 µs | p99.9 µs | server CPU s per 1M checks | ratio |"
        );
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        let runs = [
            (Workload::IsMember, 1),
            (Workload::IsMember, args.concurrency),
            (Workload::Check20, 1),
            (Workload::Check20, args.concurrency),
            (Workload::CustomerSegments, args.concurrency),
            (Workload::Batch, 4),
        ];
        let wanted = |w: Workload| {
            args.workloads.is_empty() || args.workloads.iter().any(|n| w.name().starts_with(n.as_str()))
        };
        for (w, inflight) in runs.into_iter().filter(|&(w, _)| wanted(w)) {
            // Alternate short rounds of the floor and segmentd, so that the machine's drift
            // (it is shared and noisy) falls on both alike.
            let round = args.seconds / ROUNDS as f64;
            let mut floor = SERVERS.over(grpc(&floor_channels, w, inflight, round, args.customers)).await;
            let mut ours = SERVERS.over(grpc(&seg_channels, w, inflight, round, args.customers)).await;
            for _ in 1..ROUNDS {
                floor.merge(SERVERS.over(grpc(&floor_channels, w, inflight, round, args.customers)).await);
                ours.merge(SERVERS.over(grpc(&seg_channels, w, inflight, round, args.customers)).await);
            }
            let checks = w.checks_per_call();
            row(w.name(), inflight, "floor (bare tonic)", &floor, checks, None);
            let vs_floor = if inflight == 1 {
                // Latency: segmentd's p50 over the floor's (lower is better).
                ("floor p50", ours.latency.value_at_quantile(0.5) as f64 / floor.latency.value_at_quantile(0.5) as f64)
            } else {
                ("floor throughput", ours.per_second() / floor.per_second())
            };
            row(w.name(), inflight, "segmentd", &ours, checks, Some(vs_floor));
            if matches!(w, Workload::IsMember | Workload::Check20) {
                // The same commands to segmentd's Redis protocol port and (with --redis) to
                // Redis, alternating.
                let label = if w == Workload::Check20 { "(20 pipelined SISMEMBER)" } else { "(SISMEMBER)" };
                let mut resp = SERVERS.over(redis(resp_addr, w, inflight, round, args.customers)).await;
                let mut theirs = match &redis_server {
                    Some(r) => Some(Cpu::Process(r.child.id()).over(redis(r.addr, w, inflight, round, args.customers)).await),
                    None => None,
                };
                for _ in 1..ROUNDS {
                    resp.merge(SERVERS.over(redis(resp_addr, w, inflight, round, args.customers)).await);
                    if let (Some(r), Some(t)) = (&redis_server, theirs.as_mut()) {
                        t.merge(Cpu::Process(r.child.id()).over(redis(r.addr, w, inflight, round, args.customers)).await);
                    }
                }
                row(w.name(), inflight, &format!("segmentd RESP {label}"), &resp, checks, None);
                if let Some(theirs) = theirs {
                    row(w.name(), inflight, &format!("redis {label}"), &theirs, checks, None);
                    let cpu = |m: &Measured| m.server_cpu_ns.unwrap_or(0) as f64 / m.calls as f64;
                    println!(
                        "| | | segmentd / redis | gRPC {:.2}x, RESP {:.2}x calls/s (higher is better) | | gRPC {:.2}x, RESP {:.2}x p50 (lower is better) | | | | gRPC {:.2}x, RESP {:.2}x server CPU (lower is better) | |",
                        ours.per_second() / theirs.per_second(),
                        resp.per_second() / theirs.per_second(),
                        ours.latency.value_at_quantile(0.5) as f64 / theirs.latency.value_at_quantile(0.5) as f64,
                        resp.latency.value_at_quantile(0.5) as f64 / theirs.latency.value_at_quantile(0.5) as f64,
                        cpu(&ours) / cpu(&theirs),
                        cpu(&resp) / cpu(&theirs),
                    );
                }
                if inflight == 1 {
                    let (r, seconds, n) = (replica.clone(), args.seconds, args.customers);
                    let m = tokio::task::spawn_blocking(move || in_process(&r, w, seconds, n))
                        .await
                        .unwrap();
                    let q = |p: f64| m.latency.value_at_quantile(p) as f64 / 1000.0;
                    println!(
                        "| {} | 1 | replica (in process) | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | 0 (no call) |  |",
                        w.name(),
                        m.per_second(),
                        m.per_second() * checks as f64,
                        q(0.5),
                        q(0.9),
                        q(0.99),
                        q(0.999)
                    );
                }
            }
        }
        drop(replica);
        if args.during_load > 0 {
            during_load(seg_addr, args.during_load, args.customers).await;
        }
    });
    drop(client_rt);
    drop(server_rt);
    if args.duckdb {
        let (ours, duck, matches) = rule_comparison(args.rule_customers);
        println!();
        println!(
            "| rule over {} customers | median ms | matches |",
            args.rule_customers
        );
        println!("|---|---|---|");
        println!("| segmentd (`{RULE}`, 2 threads) | {ours:.1} | {matches} |");
        println!("| DuckDB (same rule in SQL) | {duck:.1} | {matches} |");
        println!("| DuckDB / segmentd | {:.2}x | |", duck / ours);
    }
}
