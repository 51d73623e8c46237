//! Property test: as a manual clock moves by random steps (seconds to years) and customers change,
//! applying the due time flips leaves every time-dependent segment equal to a fresh evaluation of
//! its rule at the new time, and the `time` events fold into the same memberships.

use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;
use segmentd::events::Cause;
use segmentd::segment::registry::SegmentDef;
use segmentd::segment::text::parse;
use segmentd::store::input::CustomerPatch;
use segmentd::store::input::OrderIn;
use segmentd::store::value::Value;
use segmentd::store::{Store, no_log};
use segmentd::time::{Clock, MICROS_PER_DAY, ManualClock, days_from_civil};

const CUSTOMERS: usize = 24;
const SEC: i64 = 1_000_000;

fn start() -> i64 {
    i64::from(days_from_civil(2024, 2, 27).unwrap()) * MICROS_PER_DAY + 13 * 3600 * SEC
}

/// Rules reading the clock, each alone and combined.
const RULES: &[&str] = &[
    "last_order_at within 90d",
    "last_order_at within 36h",
    "not last_order_at within 30d and order_count >= 1",
    "days_since_last_order between 7 and 20",
    "days_since_last_order > 60",
    "age >= 40",
    "age between 18 and 25",
    "birthday within 7 days",
    "birthday within 0 days",
    "registered_at within 10 days",
    "joined_on within 3 days",
    r#"age < 30 or in segment "s0""#,
];

#[derive(Debug, Clone)]
enum Op {
    /// Move the clock forward.
    Advance(i64),
    /// A customer's last order (micros from the current time, negative: in the past).
    Order(usize, i64),
    /// A customer's birth date or registration date (days from today).
    Born(usize, i32),
    Registered(usize, i32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop_oneof![
            1..120 * SEC,
            1..3 * 86_400 * SEC,
            1..400 * 86_400 * SEC,
            Just(86_400 * SEC),
        ]
        .prop_map(Op::Advance),
        2 => (0..CUSTOMERS, -200 * 86_400 * SEC..2 * 86_400 * SEC).prop_map(|(c, t)| Op::Order(c, t)),
        1 => (0..CUSTOMERS, -80 * 366..0i32).prop_map(|(c, d)| Op::Born(c, d)),
        1 => (0..CUSTOMERS, -30..5i32).prop_map(|(c, d)| Op::Registered(c, d)),
    ]
}

fn members(store: &Store, segment: &str) -> BTreeSet<String> {
    (0..CUSTOMERS)
        .map(|i| format!("c{i}"))
        .filter(|id| store.is_member(id, segment).unwrap() == Some(true))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 120, ..ProptestConfig::default() })]

    #[test]
    fn applied_time_flips_equal_fresh_evaluation(
        rules in proptest::collection::vec(0..RULES.len(), 1..5),
        births in proptest::collection::vec(-80 * 366..0i32, CUSTOMERS),
        orders in proptest::collection::vec(-200 * 86_400 * SEC..0, CUSTOMERS),
        ops in proptest::collection::vec(op(), 1..25),
    ) {
        let clock = Arc::new(ManualClock::new(start()));
        let store = Store::with_clock(clock.clone());
        store
            .define_attribute("joined_on", segmentd::store::schema::AttrType::Date, "", &mut no_log)
            .unwrap();
        let schema = store.schema();
        let attr = |name: &str| schema.get(name).unwrap().id;
        let today = || (clock.now_micros()).div_euclid(MICROS_PER_DAY) as i32;
        let patch = |i: usize, attrs: Vec<(&str, Value)>| CustomerPatch {
            customer_id: format!("c{i}"),
            email: None,
            attrs: attrs.into_iter().map(|(n, v)| (attr(n), Some(v))).collect(),
        };
        let mut order_id = 0;
        let mut order = |i: usize, at: i64| {
            order_id += 1;
            OrderIn {
                order_id: format!("o{order_id}"),
                customer_id: format!("c{i}"),
                placed_at: at,
                amount_minor: 100,
                promotion: false,
                categories: vec![],
                brands: vec![],
            }
        };
        for i in 0..CUSTOMERS {
            store.upsert(&[patch(i, vec![("birth_date", Value::Date(today() + births[i]))])], &mut no_log).unwrap();
            store.record_orders(&[order(i, start() + orders[i])], &mut no_log).unwrap();
        }
        // "s0" first: the last rule reads it.
        let mut segments = vec![("s0".to_string(), "vip".to_string())];
        for (k, &r) in rules.iter().enumerate() {
            segments.push((format!("t{k}"), RULES[r].to_string()));
        }
        for (id, rule) in &segments {
            let def = SegmentDef { id: id.clone(), name: id.clone(), rule: Some(parse(rule).unwrap()), ..Default::default() };
            store.create_segment(def, &[], &[], &mut no_log).unwrap();
        }
        store.advance_time(None, &mut no_log).unwrap();
        // The memberships so far, from their events.
        let mut followed: BTreeSet<(String, String)> = BTreeSet::new();
        let setup = store.events().read(0, &[], usize::MAX, usize::MAX, &|o| store.id_at(o)).unwrap();
        for e in setup.events {
            let key = (e.segment_id.to_string(), e.customer_id.to_string());
            if e.entered { followed.insert(key); } else { followed.remove(&key); }
        }
        let mut seen = setup.last;
        for op in &ops {
            match op {
                Op::Advance(d) => {
                    clock.advance(*d);
                    store.advance_time(None, &mut no_log).unwrap();
                }
                Op::Order(i, t) => {
                    store.record_orders(&[order(*i, clock.now_micros() + t)], &mut no_log).unwrap();
                }
                Op::Born(i, d) => {
                    store.upsert(&[patch(*i, vec![("birth_date", Value::Date(today() + d))])], &mut no_log).unwrap();
                }
                Op::Registered(i, d) => {
                    let at = clock.now_micros() + i64::from(*d) * MICROS_PER_DAY + 7 * SEC;
                    let attrs = vec![("registered_at", Value::Timestamp(at)), ("joined_on", Value::Date(today() + d))];
                    store.upsert(&[patch(*i, attrs)], &mut no_log).unwrap();
                }
            }
            let now = clock.now_micros();
            for (id, rule) in &segments {
                let (_, sample) = store.preview(&parse(rule).unwrap(), Some(now), 1000).unwrap();
                let fresh: BTreeSet<String> = sample.into_iter().collect();
                prop_assert_eq!(&members(&store, id), &fresh, "segment {} ({}) after {:?}", id, rule, op);
            }
            let page = store.events().read(seen, &[], usize::MAX, usize::MAX, &|o| store.id_at(o)).unwrap();
            for e in page.events {
                seen = e.sequence;
                if matches!(op, Op::Advance(_)) {
                    prop_assert_eq!(e.cause, Cause::Time, "{:?}", e);
                }
                let key = (e.segment_id.to_string(), e.customer_id.to_string());
                prop_assert_eq!(followed.contains(&key), !e.entered, "{:?} repeats the state", e);
                if e.entered { followed.insert(key); } else { followed.remove(&key); }
            }
            for (id, _) in &segments {
                let from_events: BTreeSet<String> =
                    followed.iter().filter(|(s, _)| s == id).map(|(_, c)| c.clone()).collect();
                prop_assert_eq!(&from_events, &members(&store, id), "events of {}", id);
            }
        }
    }
}
