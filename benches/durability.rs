//! Durability figures at scale: snapshot write and restart time for 10,000,000 customers with
//! 100 segments, and acknowledged single-customer upserts per second with the default fsync
//! mode (`always`, group commit) and 64 concurrent callers over gRPC.
//!
//! `cargo bench --bench durability` (SEGMENTD_BENCH_CUSTOMERS=N to change the 10,000,000 default;
//! SEGMENTD_BENCH_LOG=1 to see the engine's log lines, which time the restart's steps).
//! Uses a data directory under `target/`, on the same disk as the build.

#[path = "support/gen.rs"]
mod generator;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use segmentd::columnar::value::Value;
use segmentd::engine::Engine;
use segmentd::segment::registry::SegmentDef;
use segmentd::segment::text::parse;
use segmentd::store::input::{CustomerPatch, OrderIn};
use segmentd::store::{Store, no_log};
use segmentd::wal::FsyncMode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn build(store: &Store, n: usize) {
    let schema = store.schema();
    let id = |name: &str| schema.get(name).unwrap().id;
    let (gender, birth, city, vip) = (id("gender"), id("birth_date"), id("city"), id("vip"));
    let mut rng = generator::Rng::new(5);
    for start in (0..n).step_by(10_000) {
        let end = (start + 10_000).min(n);
        let patches: Vec<CustomerPatch> = (start..end)
            .map(|i| CustomerPatch {
                customer_id: format!("C{i:09}"),
                email: Some(format!("c{i}@example.com")),
                attrs: vec![
                    (
                        gender,
                        Some(Value::Keyword(if rng.chance(50) { "F" } else { "M" }.into())),
                    ),
                    (birth, Some(Value::Date(-10_957 + rng.below(65 * 365) as i32))),
                    (city, Some(Value::Keyword(format!("city-{}", rng.skewed(500))))),
                    (vip, Some(Value::Bool(rng.below(1000) == 0))),
                ],
            })
            .collect();
        store.upsert(&patches, &mut no_log).unwrap();
        let buyers: Vec<usize> = (start..end).filter(|_| rng.chance(60)).collect();
        let orders: Vec<OrderIn> = buyers
            .into_iter()
            .map(|i| OrderIn {
                order_id: format!("O{i}"),
                customer_id: format!("C{i:09}"),
                placed_at: 1_700_000_000_000_000 - rng.below(400) as i64 * 86_400_000_000,
                amount_minor: rng.below(200_000) as i64,
                promotion: rng.chance(30),
                categories: vec![],
                brands: vec![],
            })
            .collect();
        store.record_orders(&orders, &mut no_log).unwrap();
    }
    for s in 0..100 {
        let rule = match s % 5 {
            0 => format!(
                r#"gender = "F" and age between {} and {}"#,
                20 + s % 30,
                35 + s % 30
            ),
            1 => format!(
                "total_spent > {} and last_order_at within {}d",
                100 + s * 7,
                30 + s
            ),
            2 => format!(r#"city in ("city-{}", "city-{}")"#, s, s + 1),
            3 => format!(
                "order_count >= 1 and promo_order_count = 0 and age > {}",
                18 + s % 40
            ),
            _ => "vip or total_spent > 1800".to_string(),
        };
        store
            .create_segment(
                SegmentDef {
                    id: format!("s{s}"),
                    name: format!("segment {s}"),
                    rule: Some(parse(&rule).unwrap()),
                    ..Default::default()
                },
                &[],
                &[],
                &mut no_log,
            )
            .unwrap();
    }
}

fn main() {
    // SEGMENTD_BENCH_LOG=1: the engine's own log lines too (how the restart's time divides:
    // "snapshot loaded" and "recovered" give their seconds).
    if std::env::var_os("SEGMENTD_BENCH_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter("segmentd=info")
            .with_writer(std::io::stderr)
            .init();
    }
    let n: usize = std::env::var("SEGMENTD_BENCH_CUSTOMERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-durability");
    let _ = std::fs::remove_dir_all(&root);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // Snapshot write and restart at scale.
    {
        let data = root.join("scale");
        let engine = Engine::recovering();
        engine.recover(&data, FsyncMode::Always, 64 << 20).unwrap();
        let started = Instant::now();
        build(engine.store(), n);
        eprintln!(
            "built {n} customers and 100 segments in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        let info = rt.block_on(engine.snapshot()).unwrap().unwrap();
        println!(
            "snapshot: {n} customers, 100 segments: {:.2} s, {:.0} MiB",
            info.duration.as_secs_f64(),
            info.bytes as f64 / (1 << 20) as f64
        );
        engine.close().unwrap();
        drop(engine);
        let started = Instant::now();
        let again = Engine::recovering();
        again.recover(&data, FsyncMode::Always, 64 << 20).unwrap();
        println!(
            "restart to serving: {:.2} s ({} customers, {} segments)",
            started.elapsed().as_secs_f64(),
            again.store().customer_count(),
            again.store().registry().len()
        );
    }

    // Acknowledged single-customer upserts, fsync always, 64 callers over gRPC.
    rt.block_on(async {
        let data = root.join("upserts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = segmentd::config::Config::with_data_dir(data);
        tokio::spawn(segmentd::server::run(listener, config, std::future::pending()));
        let channel = loop {
            if let Ok(c) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .connect()
                .await
            {
                break c;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let done = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut tasks = Vec::new();
        for t in 0..64 {
            let (channel, done) = (channel.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut client = segmentd::api::pb::ingest_client::IngestClient::new(channel);
                let mut k = 0u64;
                while Instant::now() < deadline {
                    let mut c = generator::customer(t * 1_000_000 + k, 9);
                    c.email = None;
                    client
                        .upsert_customers(segmentd::api::pb::UpsertCustomersRequest::new(vec![c]))
                        .await
                        .unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                    k += 1;
                }
            }));
        }
        let started = Instant::now();
        for t in tasks {
            t.await.unwrap();
        }
        let secs = started.elapsed().as_secs_f64();
        let total = done.load(Ordering::Relaxed);
        println!(
            "acknowledged upserts (fsync always, 64 callers): {total} in {secs:.1} s = {:.0}/s",
            total as f64 / secs
        );
    });
    let _ = std::fs::remove_dir_all(&root);
}
