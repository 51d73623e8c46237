//! RFM reclassification over 10,000,000 customers with orders, in process: the first run (which
//! creates the family and places every customer) and a run a month later (scores move, customers
//! move between members). Target: at most 2 s.
//!
//! `cargo bench --bench rfm` (SEGMENTD_BENCH_CUSTOMERS=N to change the 10,000,000 default).

use std::sync::Arc;
use std::time::Instant;

use segmentd::store::input::OrderIn;
use segmentd::store::{Store, no_log};
use segmentd::time::{MICROS_PER_DAY, ManualClock};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let n: usize = std::env::var("SEGMENTD_BENCH_CUSTOMERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let now = 1_780_000_000 * 1_000_000i64;
    let clock = Arc::new(ManualClock::new(now));
    let store = Store::with_clock(clock.clone());
    let started = Instant::now();
    // One to four orders a customer, over two years, heavy-tailed amounts.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut id = 0u64;
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let mut orders = Vec::with_capacity(chunk.len() * 2);
        for &i in chunk {
            let count = 1 + next() % 4;
            for _ in 0..count {
                id += 1;
                let r = next();
                orders.push(OrderIn {
                    order_id: format!("o{id}"),
                    customer_id: format!("c{i}"),
                    placed_at: now - (r % 730) as i64 * MICROS_PER_DAY,
                    amount_minor: 500 + ((r >> 20) % 1000) as i64 * ((r >> 40) % 20 + 1) as i64,
                    promotion: false,
                    categories: vec![],
                    brands: vec![],
                });
            }
        }
        store.record_orders(&orders, &mut no_log).unwrap();
    }
    println!(
        "built {n} customers with {id} orders in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let run = |label: &str| {
        let started = Instant::now();
        let r = store.reclassify(clock_now(&clock), &mut no_log).unwrap();
        println!(
            "RFM reclassification ({label}): {} customers scored, {} membership changes in {:.3} s (target: at most 2 s)",
            r.scored,
            r.changes,
            started.elapsed().as_secs_f64()
        );
    };
    run("first run: family created, everyone placed");
    for month in 1..=2 {
        // A month passes; a tenth of the customers order again.
        clock.advance(30 * MICROS_PER_DAY);
        let at = clock_now(&clock);
        for chunk in (0..n).step_by(10).collect::<Vec<_>>().chunks(10_000) {
            let orders: Vec<OrderIn> = chunk
                .iter()
                .map(|&i| {
                    id += 1;
                    OrderIn {
                        order_id: format!("o{id}"),
                        customer_id: format!("c{}", (i + month * 3) % n),
                        placed_at: at,
                        amount_minor: 5000,
                        promotion: false,
                        categories: vec![],
                        brands: vec![],
                    }
                })
                .collect();
            store.record_orders(&orders, &mut no_log).unwrap();
        }
        run(&format!("month {month}: a tenth ordered again"));
    }
}

fn clock_now(clock: &ManualClock) -> i64 {
    use segmentd::time::Clock;
    clock.now_micros()
}
