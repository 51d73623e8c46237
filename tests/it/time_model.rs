//! Property test: as a manual clock moves by random steps (seconds to years) and customers change,
//! applying the due time flips leaves every time-dependent segment equal to the model's own
//! evaluation of its rule at the new time (plain values per customer, ages and birthdays from the
//! tests' calendar), and the `time` events fold into the same memberships.

use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;
use segmentd::columnar::value::Value;
use segmentd::events::Cause;
use segmentd::segment::registry::SegmentDef;
use segmentd::segment::text::parse;
use segmentd::store::input::CustomerPatch;
use segmentd::store::input::OrderIn;
use segmentd::store::{Store, no_log};
use segmentd::time::{Clock, MICROS_PER_DAY, ManualClock};

use crate::calendar::{age, civil, days, days_to_birthday};

const CUSTOMERS: usize = 24;
const SEC: i64 = 1_000_000;

const DAY: i64 = MICROS_PER_DAY;

fn start() -> i64 {
    i64::from(days(2024, 2, 27)) * DAY + 13 * 3600 * SEC
}

/// What the model holds of a customer.
#[derive(Debug, Clone, Default)]
struct Customer {
    /// Days from 1970-01-01.
    birth: i32,
    last_order: Option<i64>,
    orders: u32,
    registered: Option<i64>,
    joined: Option<i32>,
    vip: bool,
}

/// The model's reading of one rule for a customer at `now` (micros).
type Oracle = fn(&Customer, i64) -> bool;

/// The day of `now` (micros), counted from 1970-01-01.
fn day_of(now: i64) -> i32 {
    now.div_euclid(DAY) as i32
}

fn age_at(c: &Customer, now: i64) -> i64 {
    let t = civil(day_of(now));
    age(civil(c.birth), (t.0, t.1, t.2))
}

/// Whole days since the last order (negative for one in the future).
fn days_since(c: &Customer, now: i64) -> Option<i64> {
    c.last_order.map(|t| (now - t).div_euclid(DAY))
}

/// `within` a span: from `span` before now up to now, both ends included.
fn within(t: Option<i64>, now: i64, span: i64) -> bool {
    t.is_some_and(|t| now - span <= t && t <= now)
}

/// Rules reading the clock, each alone and combined, with the model's reading of each.
const RULES: &[(&str, Oracle)] = &[
    ("last_order_at within 90d", |c, now| {
        within(c.last_order, now, 90 * DAY)
    }),
    ("last_order_at within 36h", |c, now| {
        within(c.last_order, now, 36 * 3600 * SEC)
    }),
    ("not last_order_at within 30d and order_count >= 1", |c, now| {
        !within(c.last_order, now, 30 * DAY) && c.orders >= 1
    }),
    ("days_since_last_order between 7 and 20", |c, now| {
        days_since(c, now).is_some_and(|d| (7..=20).contains(&d))
    }),
    ("days_since_last_order > 60", |c, now| {
        days_since(c, now).is_some_and(|d| d > 60)
    }),
    ("age >= 40", |c, now| age_at(c, now) >= 40),
    ("age between 18 and 25", |c, now| {
        (18..=25).contains(&age_at(c, now))
    }),
    ("birthday within 7 days", |c, now| {
        days_to_birthday(civil(c.birth), day_of(now)) <= 7
    }),
    ("birthday within 0 days", |c, now| {
        days_to_birthday(civil(c.birth), day_of(now)) == 0
    }),
    ("registered_at within 10 days", |c, now| {
        within(c.registered, now, 10 * DAY)
    }),
    ("joined_on within 3 days", |c, now| {
        c.joined.is_some_and(|d| day_of(now) - 3 <= d && d <= day_of(now))
    }),
    (r#"age < 30 or in segment "s0""#, |c, now| {
        age_at(c, now) < 30 || c.vip
    }),
];

#[derive(Debug, Clone)]
enum Op {
    /// Move the clock forward.
    Advance(i64),
    /// A customer's last order (micros from the current time, negative: in the past).
    Order(usize, i64),
    /// A customer's birth date (days from 1970-01-01).
    Born(usize, i32),
    /// A customer's registration (days from today).
    Registered(usize, i32),
    /// A customer's `vip` flag, which segment `s0` reads.
    Vip(usize, bool),
}

/// A birth date (days from 1970-01-01): a leap day, a day near the start's (February 27, 2024:
/// a leap day two days later), or any day of 80 years.
fn birth() -> impl Strategy<Value = i32> {
    prop_oneof![
        (1948..2021i32).prop_map(|y| days(y - y % 4, 2, 29)),
        (1945..2021i32, -3..10i32).prop_map(|(y, shift)| days(y, 2, 27) + shift),
        days(1944, 1, 1)..days(2024, 1, 1),
    ]
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
        1 => (0..CUSTOMERS, birth()).prop_map(|(c, d)| Op::Born(c, d)),
        1 => (0..CUSTOMERS, -30..5i32).prop_map(|(c, d)| Op::Registered(c, d)),
        1 => (0..CUSTOMERS, any::<bool>()).prop_map(|(c, v)| Op::Vip(c, v)),
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
        births in proptest::collection::vec(birth(), CUSTOMERS),
        orders in proptest::collection::vec(-200 * 86_400 * SEC..0, CUSTOMERS),
        ops in proptest::collection::vec(op(), 1..25),
    ) {
        let clock = Arc::new(ManualClock::new(start()));
        let store = Store::with_clock(clock.clone());
        store
            .define_attribute("joined_on", segmentd::columnar::schema::AttrType::Date, "", &mut no_log)
            .unwrap();
        let schema = store.schema();
        let attr = |name: &str| schema.get(name).unwrap().id;
        let today = || day_of(clock.now_micros());
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
        let mut model = vec![Customer::default(); CUSTOMERS];
        for i in 0..CUSTOMERS {
            store.upsert(&[patch(i, vec![("birth_date", Value::Date(births[i]))])], &mut no_log).unwrap();
            store.record_orders(&[order(i, start() + orders[i])], &mut no_log).unwrap();
            model[i] = Customer {
                birth: births[i],
                last_order: Some(start() + orders[i]),
                orders: 1,
                ..Customer::default()
            };
        }
        // "s0" first: the last rule reads it.
        let mut segments: Vec<(String, &str, Oracle)> = vec![("s0".to_string(), "vip", |c, _| c.vip)];
        for (k, &r) in rules.iter().enumerate() {
            segments.push((format!("t{k}"), RULES[r].0, RULES[r].1));
        }
        for (id, rule, _) in &segments {
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
                    let at = clock.now_micros() + t;
                    store.record_orders(&[order(*i, at)], &mut no_log).unwrap();
                    let c = &mut model[*i];
                    c.last_order = Some(c.last_order.map_or(at, |l| l.max(at)));
                    c.orders += 1;
                }
                Op::Born(i, d) => {
                    store.upsert(&[patch(*i, vec![("birth_date", Value::Date(*d))])], &mut no_log).unwrap();
                    model[*i].birth = *d;
                }
                Op::Registered(i, d) => {
                    let at = clock.now_micros() + i64::from(*d) * DAY + 7 * SEC;
                    let attrs = vec![("registered_at", Value::Timestamp(at)), ("joined_on", Value::Date(today() + d))];
                    store.upsert(&[patch(*i, attrs)], &mut no_log).unwrap();
                    model[*i].registered = Some(at);
                    model[*i].joined = Some(today() + d);
                }
                Op::Vip(i, v) => {
                    store.upsert(&[patch(*i, vec![("vip", Value::Bool(*v))])], &mut no_log).unwrap();
                    model[*i].vip = *v;
                }
            }
            let now = clock.now_micros();
            for (id, rule, oracle) in &segments {
                let want: BTreeSet<String> =
                    (0..CUSTOMERS).filter(|&i| oracle(&model[i], now)).map(|i| format!("c{i}")).collect();
                prop_assert_eq!(&members(&store, id), &want, "segment {} ({}) after {:?}", id, rule, op);
                // A preview at the same instant reads the same customers.
                let (_, sample) = store.preview(&parse(rule).unwrap(), Some(now), 1000).unwrap();
                prop_assert_eq!(&sample.into_iter().collect::<BTreeSet<_>>(), &want, "preview of {}", rule);
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
            for (id, _, _) in &segments {
                let from_events: BTreeSet<String> =
                    followed.iter().filter(|(s, _)| s == id).map(|(_, c)| c.clone()).collect();
                prop_assert_eq!(&from_events, &members(&store, id), "events of {}", id);
            }
        }
    }
}
