//! Time-aware segments, in process:
//! - 1,000,000 customers whose `last_order_at within 90 days` expires in the same second: how long
//!   applying those flips takes (target: within that second);
//! - `Store::is_member` latency with no time-dependent segment, and with three whose flips are
//!   pending for every customer (target: unchanged).
//!
//! `cargo bench --bench timing` (SEGMENTD_BENCH_CUSTOMERS=N to change the 1,000,000 default).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use segmentd::columnar::value::Value;
use segmentd::segment::registry::SegmentDef;
use segmentd::segment::text::parse;
use segmentd::store::input::{CustomerPatch, OrderIn};
use segmentd::store::{Store, no_log};
use segmentd::time::{MICROS_PER_DAY, ManualClock};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SEC: i64 = 1_000_000;

fn define(store: &Store, id: &str, rule: &str) {
    let def = SegmentDef {
        id: id.into(),
        name: id.into(),
        rule: Some(parse(rule).unwrap()),
        ..SegmentDef::default()
    };
    store.create_segment(def, &[], &[], &mut no_log).unwrap();
}

/// `n` customers, each with one order placed at `placed_at(i)` and a birth date.
fn build(clock: Arc<ManualClock>, n: usize, placed_at: impl Fn(usize) -> i64) -> Store {
    let store = Store::with_clock(clock);
    let birth = store.schema().get("birth_date").unwrap().id;
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let patches: Vec<CustomerPatch> = chunk
            .iter()
            .map(|&i| CustomerPatch {
                customer_id: format!("c{i}"),
                email: None,
                attrs: vec![(birth, Some(Value::Date(3000 + (i % 20_000) as i32)))],
            })
            .collect();
        store.upsert(&patches, &mut no_log).unwrap();
        let orders: Vec<OrderIn> = chunk
            .iter()
            .map(|&i| OrderIn {
                order_id: format!("o{i}"),
                customer_id: format!("c{i}"),
                placed_at: placed_at(i),
                amount_minor: 1000,
                promotion: false,
                categories: vec![],
                brands: vec![],
            })
            .collect();
        store.record_orders(&orders, &mut no_log).unwrap();
    }
    store
}

/// Median nanoseconds of one `is_member` over `rounds` rounds of `calls` calls.
fn is_member_ns(store: &Store, n: usize, segment: &str) -> f64 {
    let ids: Vec<String> = (0..4096).map(|i| format!("c{}", (i * 7919) % n)).collect();
    let (rounds, calls) = (9, 200_000);
    let mut per_call: Vec<f64> = (0..rounds)
        .map(|_| {
            let started = Instant::now();
            for k in 0..calls {
                black_box(store.is_member(&ids[k % ids.len()], segment).unwrap());
            }
            started.elapsed().as_nanos() as f64 / calls as f64
        })
        .collect();
    per_call.sort_by(f64::total_cmp);
    per_call[rounds / 2]
}

fn main() {
    let n: usize = std::env::var("SEGMENTD_BENCH_CUSTOMERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let now = 1_780_000_000 * SEC;

    // Expiries: every last order was placed 90 days before `now`, within one second.
    let clock = Arc::new(ManualClock::new(now - 2 * SEC));
    let placed = now - 90 * MICROS_PER_DAY - SEC;
    let store = build(clock.clone(), n, |i| placed + (i as i64 % 1000) * 997);
    define(&store, "recent", "last_order_at within 90 days");
    store.advance_time(None, &mut no_log).unwrap();
    let before = store.segment_info("recent", 0).unwrap().size;
    let mut runs = Vec::new();
    // The flips are due within the second before `now`: apply them at `now`.
    clock.set(now);
    let started = Instant::now();
    let changed = store.advance_time(None, &mut no_log).unwrap();
    runs.push(started.elapsed());
    let after = store.segment_info("recent", 0).unwrap().size;
    assert_eq!(
        (before, after, changed),
        (n as u64, 0, n as u64),
        "every customer expired"
    );
    println!(
        "time expiries: {changed} customers due in the same second applied in {:.3} s (target: within 1 s)",
        runs[0].as_secs_f64()
    );
    drop(store);

    // IsMember with and without pending time flips, side by side.
    let clock = Arc::new(ManualClock::new(now));
    let spread = |i: usize| now - (i as i64 % 200) * MICROS_PER_DAY - (i as i64 % 86_400) * SEC;
    let plain = build(clock.clone(), n, spread);
    define(&plain, "big", "total_spent >= 10");
    let timed = build(clock.clone(), n, spread);
    define(&timed, "big", "total_spent >= 10");
    define(&timed, "recent", "last_order_at within 90 days");
    define(&timed, "lapsing", "days_since_last_order between 60 and 120");
    define(&timed, "birthday", "birthday within 7 days");
    timed.advance_time(None, &mut no_log).unwrap();
    let mut plain_ns = Vec::new();
    let mut timed_ns = Vec::new();
    for _ in 0..3 {
        plain_ns.push(is_member_ns(&plain, n, "big"));
        timed_ns.push(is_member_ns(&timed, n, "big"));
        // Time keeps moving for the timed store, as the ticker would move it.
        clock.advance(SEC);
        timed.advance_time(None, &mut no_log).unwrap();
    }
    plain_ns.sort_by(f64::total_cmp);
    timed_ns.sort_by(f64::total_cmp);
    println!(
        "is_member: {:.1} ns without time-dependent segments, {:.1} ns with 3 whose flips are pending \
         for {n} customers (ratio {:.2})",
        plain_ns[1],
        timed_ns[1],
        timed_ns[1] / plain_ns[1]
    );
    black_box(Duration::ZERO);
}
