//! In-process segment benches:
//! - full evaluation of `total_spent > 500 and gender = "F" and age < 40` over 10,000,000
//!   customers, on one thread and on two;
//! - a membership check (`Store::is_member`);
//! - a single-customer upsert with 200 rule segments defined.
//!
//! `cargo bench --bench segments` (SEGMENTD_BENCH_CUSTOMERS=N to change the 10,000,000 default).

#[path = "support/gen.rs"]
mod generator;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use segmentd::columnar::value::Value;
use segmentd::segment::registry::SegmentDef;
use segmentd::segment::text::parse;
use segmentd::store::input::{CustomerPatch, OrderIn};
use segmentd::store::{Store, no_log};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RULE: &str = r#"total_spent > 500 and gender = "F" and age < 40"#;

/// A store of `n` customers with gender, birth date and one order each.
fn build(n: usize) -> Store {
    let store = Store::new();
    let schema = store.schema();
    let (gender, birth) = (
        schema.get("gender").unwrap().id,
        schema.get("birth_date").unwrap().id,
    );
    let started = Instant::now();
    let mut rng = generator::Rng::new(7);
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let patches: Vec<CustomerPatch> = chunk
            .iter()
            .map(|&i| CustomerPatch {
                customer_id: format!("C{i:09}"),
                email: None,
                attrs: vec![
                    (
                        gender,
                        Some(Value::Keyword(if rng.chance(50) { "F" } else { "M" }.into())),
                    ),
                    (birth, Some(Value::Date(-10_957 + rng.below(65 * 365) as i32))),
                ],
            })
            .collect();
        store.upsert(&patches, &mut no_log).unwrap();
        let orders: Vec<OrderIn> = chunk
            .iter()
            .map(|&i| OrderIn {
                order_id: format!("O{i}"),
                customer_id: format!("C{i:09}"),
                placed_at: 1_700_000_000_000_000,
                amount_minor: rng.below(150_000) as i64,
                promotion: false,
                categories: vec![],
                brands: vec![],
            })
            .collect();
        store.record_orders(&orders, &mut no_log).unwrap();
    }
    eprintln!("built {n} customers in {:.1}s", started.elapsed().as_secs_f64());
    store
}

fn evaluation(c: &mut Criterion) {
    let n: usize = std::env::var("SEGMENTD_BENCH_CUSTOMERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    let store = build(n);
    let rule = parse(RULE).unwrap();
    let (count, _) = store.preview(&rule, None, 0).unwrap();
    eprintln!("{RULE}: {count} of {n} customers");
    let mut g = c.benchmark_group("evaluate");
    g.sample_size(20).measurement_time(Duration::from_secs(8));
    for threads in [1, 2] {
        store.set_eval_threads(threads);
        g.bench_function(format!("{n}_customers/{threads}_thread"), |b| {
            b.iter(|| black_box(store.preview(&rule, None, 0).unwrap()))
        });
    }
    g.finish();

    // Membership checks on the same store, against a materialized segment.
    store.set_eval_threads(0);
    store
        .create_segment(
            SegmentDef {
                id: "young_women".into(),
                name: "young women".into(),
                rule: Some(rule),
                ..Default::default()
            },
            &[],
            &[],
            &mut no_log,
        )
        .unwrap();
    let mut rng = generator::Rng::new(11);
    let ids: Vec<String> = (0..4096)
        .map(|_| format!("C{:09}", rng.below(n as u64)))
        .collect();
    let mut i = 0;
    c.bench_function("is_member", |b| {
        b.iter(|| {
            i = (i + 1) & 4095;
            black_box(store.is_member(&ids[i], "young_women").unwrap())
        })
    });
    c.bench_function("is_member/unknown_customer", |b| {
        b.iter(|| black_box(store.is_member("anonymous-shopper", "young_women").unwrap()))
    });
}

/// 200 rules over a mix of attributes, as a retailer's segment catalogue might hold.
fn catalogue(i: usize) -> String {
    match i % 8 {
        0 => format!(
            r#"gender = "F" and age between {} and {}"#,
            18 + i % 40,
            30 + i % 40
        ),
        1 => format!(
            "total_spent > {} and last_order_at within {}d",
            100 + i * 10,
            30 + i
        ),
        2 => format!(r#"city in ("city-{}", "city-{}") and registered"#, i, i + 1),
        3 => format!(r#"tags has_any ("golf", "ski") and household_size >= {}"#, i % 5),
        4 => format!(
            r#"country = "FR" and loyalty_tier = "gold" and age > {}"#,
            20 + i % 50
        ),
        5 => format!("order_count >= {} or promo_order_count > {}", i % 7, i % 3),
        6 => format!(r#"home_store = "store-{}" and email_opt_in"#, i % 400),
        _ => format!(r#"postal_code starts_with "{}" and not vip"#, i % 10),
    }
}

/// Generated customer `n` as a patch.
fn generated(schema: &segmentd::columnar::schema::Schema, n: u64) -> CustomerPatch {
    let g = generator::customer(n, 42);
    CustomerPatch {
        customer_id: g.customer_id,
        email: None,
        attrs: g
            .attributes
            .into_iter()
            .map(|(k, v)| {
                let def = schema.get(&k).unwrap();
                (def.id, segmentd::codec::convert::value_in(def, v).unwrap())
            })
            .collect(),
    }
}

fn upserts(c: &mut Criterion) {
    let store = Store::new();
    let schema = store.schema();
    let base: Vec<CustomerPatch> = (0..100_000u64).map(|n| generated(&schema, n)).collect();
    for chunk in base.chunks(10_000) {
        store.upsert(chunk, &mut no_log).unwrap();
    }
    for i in 0..200 {
        store
            .create_segment(
                SegmentDef {
                    id: format!("s{i}"),
                    name: format!("segment {i}"),
                    rule: Some(parse(&catalogue(i)).unwrap()),
                    ..Default::default()
                },
                &[],
                &[],
                &mut no_log,
            )
            .unwrap();
    }
    let (gender, city) = (schema.get("gender").unwrap().id, schema.get("city").unwrap().id);
    let mut rng = generator::Rng::new(3);
    let mut g = c.benchmark_group("upsert_one_customer_200_segments");
    g.bench_function("existing_gender_and_city", |b| {
        b.iter_batched(
            || {
                vec![CustomerPatch {
                    customer_id: format!("C{:09}", rng.below(100_000)),
                    email: None,
                    attrs: vec![
                        (
                            gender,
                            Some(Value::Keyword(if rng.chance(50) { "F" } else { "M" }.into())),
                        ),
                        (city, Some(Value::Keyword(format!("city-{}", rng.below(300))))),
                    ],
                }]
            },
            |batch| black_box(store.upsert(&batch, &mut no_log).unwrap()),
            BatchSize::SmallInput,
        )
    });
    let mut next = 100_000u64;
    g.bench_function("new_customer_all_segments", |b| {
        b.iter_batched(
            || {
                next += 1;
                vec![generated(&schema, next)]
            },
            |batch| black_box(store.upsert(&batch, &mut no_log).unwrap()),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

/// A predicate on a value held by a handful of customers of each shard (a postal code): such
/// values share the shard's rare-value index, so the evaluation passes over the shard's codes.
fn rare_value(c: &mut Criterion) {
    const N: usize = 1_000_000;
    let store = Store::new();
    let postal = store.schema().get("postal_code").unwrap().id;
    for chunk in (0..N).collect::<Vec<_>>().chunks(10_000) {
        let patches: Vec<CustomerPatch> = chunk
            .iter()
            .map(|&i| CustomerPatch {
                customer_id: format!("R{i:09}"),
                email: None,
                // 20,000 postal codes, each held by about 3 customers of a shard.
                attrs: vec![(postal, Some(Value::Keyword(format!("P{:05}", i % 20_000))))],
            })
            .collect();
        store.upsert(&patches, &mut no_log).unwrap();
    }
    let rule = parse(r#"postal_code = "P01234""#).unwrap();
    let (count, _) = store.preview(&rule, None, 0).unwrap();
    assert_eq!(count, (N / 20_000) as u64);
    store.set_eval_threads(1);
    c.bench_function("evaluate/rare_value/1000000_customers/1_thread", |b| {
        b.iter(|| black_box(store.preview(&rule, None, 0).unwrap()))
    });
    // A short list: four rare values.
    let list = parse(r#"postal_code in ("P00001", "P05000", "P10000", "P15000")"#).unwrap();
    let (count, _) = store.preview(&list, None, 0).unwrap();
    assert_eq!(count, (4 * N / 20_000) as u64);
    c.bench_function("evaluate/rare_value_list/1000000_customers/1_thread", |b| {
        b.iter(|| black_box(store.preview(&list, None, 0).unwrap()))
    });
    // A prefix: 1,000 rare values at once.
    let prefix = parse(r#"postal_code starts_with "P01""#).unwrap();
    let (count, _) = store.preview(&prefix, None, 0).unwrap();
    assert_eq!(count, (N / 20) as u64);
    c.bench_function("evaluate/rare_value_prefix/1000000_customers/1_thread", |b| {
        b.iter(|| black_box(store.preview(&prefix, None, 0).unwrap()))
    });
}

criterion_group!(benches, upserts, evaluation, rare_value);
criterion_main!(benches);
