//! The replica client (`segmentd-replica`) against the issue's targets: a server in this process
//! with 10,000,000 customers and 20 segments (30% each), a replica following the 20.
//!
//! ```sh
//! cargo bench --bench replica                                   # 10,000,000 customers
//! SEGMENTD_BENCH_CUSTOMERS=1000000 cargo bench --bench replica  # quicker
//! ```
//!
//! Prints a table and one JSON line (`check_ns_p50`, `check_ns_p99`, `check20_ns_p50`,
//! `check20_ns_p99`, `fresh_ms_p50`, `fresh_ms_p99`, `bytes_per_customer`, `bootstrap_s`, ...).
//!
//! - **Checks**: one thread, customers drawn at random (known ones, the realistic case), each call
//!   timed alone with the processor's time-stamp counter (calibrated against the clock; the cost
//!   of reading it, measured on an empty call, is taken off).
//! - **Freshness**: 1,000 writes a second for 10 s, each moving a customer into or out of a
//!   followed segment; from the write's acknowledgment to the replica answering with it (a
//!   thread polls the replica for each write in flight).
//! - **Memory**: what the replica holds: the id table, the bitsets and the follow thread's
//!   per-customer data, by its own count (`Status::bytes`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use segmentd::api::pb;
use segmentd_replica::Replica;

const SEGMENTS: usize = 20;
/// Each segment holds customers whose `r` (0..1000) is in a window of 300: 30%.
const WINDOW: i64 = 300;

fn cid(i: usize) -> String {
    format!("C{i:09}")
}

fn sid(k: usize) -> String {
    format!("s{k:02}")
}

/// xorshift: the same customers every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn r_of(i: usize) -> i64 {
    ((i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54) as i64 % 1000
}

fn int(v: i64) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::IntValue(v)),
    }
}

fn customer(i: usize, r: i64) -> pb::Customer {
    pb::Customer {
        customer_id: cid(i),
        attributes: [("r".to_string(), int(r))].into_iter().collect(),
        ..Default::default()
    }
}

/// Time-stamp counter ticks, or nanoseconds of the clock where there is none.
#[inline]
fn ticks() -> u64 {
    #[cfg(target_arch = "x86_64")]
    unsafe {
        // SAFETY: rdtsc has no preconditions; the fences keep the timed call between the reads.
        core::arch::x86_64::_mm_lfence();
        let t = core::arch::x86_64::_rdtsc();
        core::arch::x86_64::_mm_lfence();
        t
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// Ticks per nanosecond.
fn calibrate() -> f64 {
    let (t0, i0) = (ticks(), Instant::now());
    std::thread::sleep(Duration::from_millis(200));
    (ticks() - t0) as f64 / i0.elapsed().as_nanos() as f64
}

/// Per-call nanoseconds of `f` over `n` calls, less the timer's own cost.
fn timed(n: usize, per_ns: f64, overhead: f64, mut f: impl FnMut(usize)) -> Histogram<u64> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000, 3).unwrap();
    for k in 0..n {
        let t0 = ticks();
        f(k);
        let t = (ticks() - t0) as f64 / per_ns - overhead;
        h.record(t.max(1.0) as u64).unwrap();
    }
    h
}

fn main() {
    let customers: usize = std::env::var("SEGMENTD_BENCH_CUSTOMERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    segmentd::alloc::tune();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let addr = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = segmentd::config::Config::with_data_dir(dir.path().join("data"));
        config.fsync = segmentd::wal::FsyncMode::Never;
        config.snapshot_interval_secs = 0;
        config.snapshot_wal_bytes = 0;
        config.no_snapshot_on_shutdown = true;
        tokio::spawn(segmentd::server::run(listener, config, std::future::pending()));
        addr
    });
    let channel = runtime.block_on(async {
        loop {
            if let Ok(c) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
            {
                let mut admin = pb::admin_client::AdminClient::new(c.clone());
                if admin.stats(pb::StatsRequest {}).await.is_ok() {
                    break c;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    // Set-up: `r` for each customer, 20 windows of it as segments.
    let started = Instant::now();
    runtime.block_on(async {
        pb::admin_client::AdminClient::new(channel.clone())
            .define_attribute(pb::DefineAttributeRequest {
                name: "r".into(),
                r#type: pb::AttributeType::Int as i32,
                description: "0..1000, for the bench's segments".into(),
            })
            .await
            .unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        std::thread::spawn(move || {
            for start in (0..customers).step_by(10_000) {
                let batch: Vec<pb::Customer> = (start..(start + 10_000).min(customers))
                    .map(|i| customer(i, r_of(i)))
                    .collect();
                let columns = segmentd::codec::columns::to_columns(&batch).unwrap();
                if tx
                    .blocking_send(pb::LoadCustomersRequest::from_columns(&columns))
                    .is_err()
                {
                    return;
                }
            }
        });
        pb::ingest_client::IngestClient::new(channel.clone())
            .max_encoding_message_size(64 << 20)
            .load_customers(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .unwrap();
        let mut segments = pb::segments_client::SegmentsClient::new(channel.clone());
        for k in 0..SEGMENTS {
            let lo = (k as i64 * 37) % (1000 - WINDOW);
            segments
                .create_segment(pb::CreateSegmentRequest {
                    segment: Some(pb::Segment {
                        segment_id: sid(k),
                        name: sid(k),
                        rule_text: format!("r >= {lo} and r < {}", lo + WINDOW),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap();
        }
    });
    eprintln!(
        "set-up: {customers} customers, {SEGMENTS} segments in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Bootstrap.
    let started = Instant::now();
    let replica = Arc::new(
        Replica::builder(format!("http://{addr}"))
            .segments((0..SEGMENTS).map(sid))
            .heartbeat(Duration::from_millis(10))
            .start()
            .unwrap(),
    );
    replica.wait_ready(Duration::from_secs(600)).unwrap();
    let bootstrap_s = started.elapsed().as_secs_f64();
    let status = replica.status();
    assert_eq!(status.customers as usize, customers);
    let bytes_per_customer = status.bytes as f64 / customers as f64;

    // Checks, from one thread.
    let per_ns = calibrate();
    let ids: Vec<String> = {
        let mut rng = Rng(0x5eed);
        (0..1_000_000)
            .map(|_| cid(rng.next() as usize % customers))
            .collect()
    };
    let segment_ids: Vec<String> = (0..SEGMENTS).map(sid).collect();
    let segs: Vec<&str> = segment_ids.iter().map(String::as_str).collect();
    let overhead = timed(1_000_000, per_ns, 0.0, |_| {}).value_at_quantile(0.5) as f64;
    let mut members = 0u64;
    // Warm: the first pass pages in the table and the bitsets.
    for id in &ids {
        members += u64::from(replica.is_member(id, segs[0]).unwrap() == Some(true));
    }
    let single = timed(ids.len(), per_ns, overhead, |k| {
        members += u64::from(replica.is_member(&ids[k], segs[k % SEGMENTS]).unwrap() == Some(true));
    });
    let mut out = [false; SEGMENTS];
    let twenty = timed(ids.len(), per_ns, overhead, |k| {
        members += u64::from(replica.check_into(&ids[k], &segs, &mut out).unwrap());
    });
    // The same over a hot set of 100,000 customers (their slots stay in the cache), as when a
    // few customers are most of the traffic.
    let hot: Vec<String> = ids[..100_000].to_vec();
    for id in &hot {
        members += u64::from(replica.is_member(id, segs[0]).unwrap() == Some(true));
    }
    let cached = timed(1_000_000, per_ns, overhead, |k| {
        members += u64::from(
            replica
                .is_member(&hot[k % hot.len()], segs[k % SEGMENTS])
                .unwrap()
                == Some(true),
        );
    });
    let unknown: Vec<String> = (0..100_000).map(|i| format!("X{i:09}")).collect();
    let misses = timed(unknown.len(), per_ns, overhead, |k| {
        members += u64::from(replica.is_member(&unknown[k], segs[0]).unwrap().is_some());
    });
    std::hint::black_box(members);

    // Freshness: 1,000 writes a second, each moving a customer across segment s00's window.
    let pending: Arc<std::sync::Mutex<Vec<(String, bool, Instant)>>> = Arc::default();
    let fresh = Arc::new(std::sync::Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
    ));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (replica, pending, fresh, done) = (replica.clone(), pending.clone(), fresh.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(std::sync::atomic::Ordering::Acquire) || !pending.lock().unwrap().is_empty() {
                let now = Instant::now();
                pending.lock().unwrap().retain(|(id, want, acked)| {
                    if replica.is_member(id, "s00").unwrap() == Some(*want) {
                        fresh
                            .lock()
                            .unwrap()
                            .record(now.duration_since(*acked).as_micros().max(1) as u64)
                            .unwrap();
                        false
                    } else {
                        true
                    }
                });
                std::thread::sleep(Duration::from_micros(100));
            }
        })
    };
    let writes = runtime.block_on(async {
        let mut ingest = pb::ingest_client::IngestClient::new(channel.clone());
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let until = Instant::now() + Duration::from_secs(10);
        let mut rng = Rng(0xF00D);
        let mut n = 0u64;
        while Instant::now() < until {
            tick.tick().await;
            let i = rng.next() as usize % customers;
            // s00 is r in [0, 300): in if it was out, out if it was in.
            let was_in = replica.is_member(&cid(i), "s00").unwrap() == Some(true);
            let r = if was_in { 500 } else { 100 };
            ingest
                .upsert_customers(pb::UpsertCustomersRequest::new(vec![customer(i, r)]))
                .await
                .unwrap();
            pending.lock().unwrap().push((cid(i), !was_in, Instant::now()));
            n += 1;
        }
        n
    });
    done.store(true, std::sync::atomic::Ordering::Release);
    poller.join().unwrap();
    let fresh = fresh.lock().unwrap().clone();

    let q = |h: &Histogram<u64>, p: f64| h.value_at_quantile(p);
    let ms = |us: u64| us as f64 / 1000.0;
    println!("| measure ({customers} customers, {SEGMENTS} segments followed) | p50 | p99 | target |");
    println!("|---|---|---|---|");
    println!(
        "| `is_member`, known customer, id lookup included | {} ns | {} ns | 100 ns / 300 ns |",
        q(&single, 0.5),
        q(&single, 0.99)
    );
    println!(
        "| `is_member`, known customer among 100,000 hot ones | {} ns | {} ns | |",
        q(&cached, 0.5),
        q(&cached, 0.99)
    );
    println!(
        "| `is_member`, unknown customer | {} ns | {} ns | |",
        q(&misses, 0.5),
        q(&misses, 0.99)
    );
    println!(
        "| `check` against 20 segments | {} ns | {} ns | 1,000 ns |",
        q(&twenty, 0.5),
        q(&twenty, 0.99)
    );
    println!(
        "| freshness at {:.0} writes/s, acknowledgment to the replica's answer | {:.2} ms | {:.2} ms | 20 ms / 100 ms |",
        writes as f64 / 10.0,
        ms(q(&fresh, 0.5)),
        ms(q(&fresh, 0.99))
    );
    println!("| memory | {bytes_per_customer:.1} bytes a customer | | 24 |");
    println!("| bootstrap from the running server | {bootstrap_s:.2} s | | 5 s |");
    println!(
        "{{\"customers\":{customers},\"segments\":{SEGMENTS},\"check_ns_p50\":{},\"check_ns_p99\":{},\"unknown_ns_p50\":{},\"hot_ns_p50\":{},\"check20_ns_p50\":{},\"check20_ns_p99\":{},\"fresh_ms_p50\":{:.3},\"fresh_ms_p99\":{:.3},\"writes_per_s\":{:.0},\"bytes_per_customer\":{bytes_per_customer:.2},\"bootstrap_s\":{bootstrap_s:.3}}}",
        q(&single, 0.5),
        q(&single, 0.99),
        q(&misses, 0.5),
        q(&cached, 0.5),
        q(&twenty, 0.5),
        q(&twenty, 0.99),
        ms(q(&fresh, 0.5)),
        ms(q(&fresh, 0.99)),
        writes as f64 / 10.0,
    );
    drop(replica);
    runtime.shutdown_timeout(Duration::from_secs(1));
}
