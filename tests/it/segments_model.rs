//! Property test: for random customers, rule trees and writes, every materialized segment bitmap
//! equals a naive per-customer evaluation of the same rules over a plain model of the customers.
//!
//! Besides the customers the writes change, every case holds a crowd whose keyword values sit
//! at and just under the count from which a shard keeps a value's own bitmap
//! ([`segmentd::columnar::column::COMMON`]), so a write can move a value from one form to the other.
//! One case in five also fills the first shard with customers that hold nothing, so the
//! customers the writes change sit in two shards. Ages come from the model's own calendar.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use proptest::prelude::*;
use segmentd::columnar::column::COMMON;
use segmentd::columnar::value::Value;
use segmentd::segment::registry::SegmentDef;
use segmentd::segment::rule::{CmpOp, Literal, Pred, PredOp, Rule, TextOp};
use segmentd::store::SHARD_SIZE;
use segmentd::store::input::{CustomerKey, CustomerPatch};
use segmentd::store::{Store, no_log};
use segmentd::time::ManualClock;

use crate::calendar::{Birth, age, civil, days, month_days};

/// Customers the writes change: `c0`..`c9`.
const IDS: usize = 10;
/// The model's stand-in for every customer that holds nothing (`b0`, `b1`, ...).
const BLANK: usize = usize::MAX;

/// Dates the tests run on: a plain one, the days around a leap day, the turn of a year.
const TODAYS: [(i32, u32, i32); 6] = [
    (2024, 6, 15),
    (2023, 2, 28),
    (2023, 3, 1),
    (2024, 2, 29),
    (2024, 12, 31),
    (2025, 1, 1),
];

fn birth(today: (i32, u32, i32)) -> impl Strategy<Value = Birth> {
    // Born on a leap day, on or next to today's day of the year, or on any day; in years that
    // make the ages rules compare (20 to 40) common.
    let years = 1986..2003i32;
    let leap_day = years.clone().prop_map(|y| Birth(y - y % 4, 2, 29));
    let near = (years.clone(), -1..=1i32).prop_map(move |(y, shift)| {
        let (_, m, d) = today;
        Birth(y, m, (d + shift).clamp(1, month_days(y, m)))
    });
    let any_day = (years, 1..=12u32, 1..=31i32).prop_map(|(y, m, d)| Birth(y, m, d.min(month_days(y, m))));
    prop_oneof![1 => leap_day, 3 => near, 2 => any_day]
}

type Attrs = BTreeMap<&'static str, Value>;

#[derive(Debug, Clone)]
enum Op {
    Upsert(usize, Vec<(&'static str, Option<Value>)>),
    Delete(usize),
    Define(Rule, Vec<usize>, Vec<usize>, Vec<&'static str>),
    Redefine(usize, Rule),
    Activity(usize, usize, bool),
}

fn value_for(name: &'static str, today: (i32, u32, i32)) -> BoxedStrategy<Option<Value>> {
    let v: BoxedStrategy<Value> = match name {
        "gender" => prop_oneof![Just("F"), Just("M"), Just("X")]
            .prop_map(|s| Value::Keyword(s.into()))
            .boxed(),
        "city" => prop_oneof![Just("Lyon"), Just("Paris"), Just("lille")]
            .prop_map(|s| Value::Keyword(s.into()))
            .boxed(),
        "account_id" => prop_oneof![Just("A1"), Just("A2")]
            .prop_map(|s| Value::Keyword(s.into()))
            .boxed(),
        "household_size" => (0i64..6).prop_map(Value::Int).boxed(),
        "vip" => any::<bool>().prop_map(Value::Bool).boxed(),
        "birth_date" => birth(today)
            .prop_map(|b| Value::Date(days(b.0, b.1, b.2)))
            .boxed(),
        "tags" => proptest::sample::subsequence(vec!["golf", "ski", "tennis"], 0..3)
            .prop_map(|v| Value::Keywords(v.into_iter().map(String::from).collect()))
            .boxed(),
        _ => unreachable!(),
    };
    prop_oneof![1 => Just(None), 5 => v.prop_map(Some)].boxed()
}

const NAMES: [&str; 7] = [
    "gender",
    "city",
    "account_id",
    "household_size",
    "vip",
    "birth_date",
    "tags",
];

fn attrs(today: (i32, u32, i32)) -> impl Strategy<Value = Vec<(&'static str, Option<Value>)>> {
    proptest::sample::subsequence(NAMES.to_vec(), 0..NAMES.len()).prop_flat_map(move |names| {
        names
            .into_iter()
            .map(|n| value_for(n, today).prop_map(move |v| (n, v)))
            .collect::<Vec<_>>()
    })
}

fn pred(attr: &str, op: PredOp) -> Rule {
    Rule::Pred(Pred {
        attr: attr.into(),
        op,
    })
}

fn leaf() -> impl Strategy<Value = Rule> {
    let cmp = prop_oneof![
        Just(CmpOp::Eq),
        Just(CmpOp::Ne),
        Just(CmpOp::Lt),
        Just(CmpOp::Le),
        Just(CmpOp::Gt),
        Just(CmpOp::Ge)
    ];
    let s = |v: &'static str| Literal::Str(v.into());
    prop_oneof![
        prop_oneof![Just("F"), Just("M"), Just("Z")]
            .prop_map(move |g| pred("gender", PredOp::Cmp(CmpOp::Eq, s(g)))),
        Just(pred("gender", PredOp::Cmp(CmpOp::Ne, s("F")))),
        any::<bool>().prop_map(move |negated| pred(
            "gender",
            PredOp::In {
                negated,
                values: vec![s("F"), s("X")]
            }
        )),
        (cmp.clone(), 0i64..6).prop_map(|(op, n)| pred("household_size", PredOp::Cmp(op, Literal::Int(n)))),
        (0i64..4, 2i64..6).prop_map(|(a, b)| pred(
            "household_size",
            PredOp::Between(Literal::Int(a), Literal::Int(b))
        )),
        Just(pred("vip", PredOp::IsTrue)),
        Just(pred("vip", PredOp::Cmp(CmpOp::Eq, Literal::Bool(false)))),
        (cmp, 19i64..41).prop_map(|(op, n)| pred("age", PredOp::Cmp(op, Literal::Int(n)))),
        any::<bool>().prop_map(|all| pred(
            "tags",
            PredOp::Has {
                all,
                values: vec!["golf".into(), "ski".into()]
            }
        )),
        prop_oneof![Just("gender"), Just("tags"), Just("vip"), Just("birth_date")].prop_flat_map(|a| any::<
            bool,
        >(
        )
        .prop_map(move |negated| pred(a, PredOp::IsSet { negated }))),
        any::<bool>().prop_map(|ignore_case| pred(
            "city",
            PredOp::Text {
                op: TextOp::StartsWith,
                value: if ignore_case { "l".into() } else { "L".into() },
                ignore_case
            }
        )),
        (0usize..3).prop_map(|i| pred("", PredOp::InSegment(format!("s{i}")))),
    ]
}

fn rule() -> impl Strategy<Value = Rule> {
    leaf().prop_recursive(3, 12, 3, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 1..3).prop_map(Rule::And),
            proptest::collection::vec(inner.clone(), 1..3).prop_map(Rule::Or),
            inner.prop_map(|r| Rule::Not(Box::new(r))),
        ]
    })
}

fn op(today: (i32, u32, i32)) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..IDS, attrs(today)).prop_map(|(i, a)| Op::Upsert(i, a)),
        1 => (0..IDS).prop_map(Op::Delete),
        2 => (
            rule(),
            proptest::collection::vec(0..IDS, 0..2),
            proptest::collection::vec(0..IDS, 0..2),
            proptest::sample::subsequence(vec!["A1", "A2"], 0..2)
        )
            .prop_map(|(r, inc, exc, acc)| Op::Define(r, inc, exc, acc)),
        1 => (0usize..4, rule()).prop_map(|(s, r)| Op::Redefine(s, r)),
        2 => (0usize..4, 0..IDS, any::<bool>()).prop_map(|(s, c, add)| Op::Activity(s, c, add)),
    ]
}

/// A segment as the model holds it.
#[derive(Debug, Clone)]
struct ModelSegment {
    rule: Rule,
    include: BTreeSet<usize>,
    exclude: BTreeSet<usize>,
    accounts: Vec<&'static str>,
}

fn lit_cmp(v: &Value, op: CmpOp, l: &Literal) -> bool {
    let ord = match (v, l) {
        (Value::Int(a), Literal::Int(b)) => a.cmp(b),
        (Value::Keyword(a), Literal::Str(b)) => a.as_str().cmp(b.as_str()),
        (Value::Bool(a), Literal::Bool(b)) => a.cmp(b),
        _ => return false,
    };
    match op {
        CmpOp::Eq => ord.is_eq(),
        CmpOp::Ne => ord.is_ne(),
        CmpOp::Lt => ord.is_lt(),
        CmpOp::Le => ord.is_le(),
        CmpOp::Gt => ord.is_gt(),
        CmpOp::Ge => ord.is_ge(),
    }
}

/// What the naive evaluator reads: the segments, the customers, the day.
struct World<'a> {
    segs: &'a [(String, ModelSegment)],
    model: &'a HashMap<usize, Attrs>,
    today: (i32, u32, i32),
}

/// The naive evaluator: straight from the rule tree and the model's values.
fn naive(rule: &Rule, c: &Attrs, id: usize, w: &World) -> bool {
    match rule {
        Rule::And(v) => v.iter().all(|r| naive(r, c, id, w)),
        Rule::Or(v) => v.iter().any(|r| naive(r, c, id, w)),
        Rule::Not(r) => !naive(r, c, id, w),
        Rule::Pred(p) => {
            if let PredOp::InSegment(sid) = &p.op {
                return w
                    .segs
                    .iter()
                    .find(|(n, _)| n == sid)
                    .is_some_and(|(_, s)| member(s, id, w));
            }
            let name = if p.attr == "age" {
                "birth_date"
            } else {
                p.attr.as_str()
            };
            let Some(v) = c.get(name) else {
                return matches!(p.op, PredOp::IsSet { negated: true });
            };
            let v = if p.attr == "age" {
                let Value::Date(d) = v else { unreachable!() };
                Value::Int(age(civil(*d), w.today))
            } else {
                v.clone()
            };
            match &p.op {
                PredOp::IsTrue => v == Value::Bool(true),
                PredOp::Cmp(op, l) => lit_cmp(&v, *op, l),
                PredOp::Between(a, b) => lit_cmp(&v, CmpOp::Ge, a) && lit_cmp(&v, CmpOp::Le, b),
                PredOp::In { negated, values } => {
                    values.iter().any(|l| lit_cmp(&v, CmpOp::Eq, l)) != *negated
                }
                PredOp::IsSet { negated } => !negated,
                PredOp::Has { all, values } => {
                    let Value::Keywords(items) = &v else { return false };
                    let has = |x: &String| items.contains(x);
                    if *all {
                        values.iter().all(has)
                    } else {
                        values.iter().any(has)
                    }
                }
                PredOp::Text {
                    value, ignore_case, ..
                } => {
                    let Value::Keyword(s) = &v else { return false };
                    if *ignore_case {
                        s.to_lowercase().starts_with(value.as_str())
                    } else {
                        s.starts_with(value.as_str())
                    }
                }
                _ => unreachable!(),
            }
        }
    }
}

fn member(s: &ModelSegment, id: usize, w: &World) -> bool {
    let Some(c) = w.model.get(&id) else { return false };
    let account = match c.get("account_id") {
        Some(Value::Keyword(a)) => Some(a.as_str()),
        _ => None,
    };
    if s.exclude.contains(&id) {
        return false;
    }
    s.include.contains(&id) || account.is_some_and(|a| s.accounts.contains(&a)) || naive(&s.rule, c, id, w)
}

/// The id of model customer `i`: `c` for those the writes change, `k` for the crowd.
fn cid(i: usize) -> String {
    if i < IDS { format!("c{i}") } else { format!("k{i}") }
}

fn kw(s: &str) -> Value {
    Value::Keyword(s.into())
}

fn kws(v: &[&str]) -> Value {
    Value::Keywords(v.iter().map(|s| s.to_string()).collect())
}

/// A group of the crowd: how many, and what each holds.
fn crowd_group(count: u32, attrs: &[(&'static str, Value)]) -> (u32, Attrs) {
    (count, attrs.iter().cloned().collect())
}

/// Writes the customers present before the case's writes, as the model holds them, and returns
/// the ids of the blank ones. `c0`..`c3` come first, then the first half of the crowd; with
/// `spread`, blank customers fill the first shard; then `c4`..`c7` and the rest of the crowd.
/// `c8` and `c9` are left for the writes to create.
fn populate(store: &Store, model: &mut HashMap<usize, Attrs>, spread: bool) -> Vec<String> {
    let schema = store.schema();
    let write = |id: String, attrs: &Attrs| {
        let attrs = attrs
            .iter()
            .map(|(n, v)| (schema.get(n).unwrap().id, Some(v.clone())))
            .collect();
        store
            .upsert(
                &[CustomerPatch {
                    customer_id: id,
                    email: None,
                    attrs,
                }],
                &mut no_log,
            )
            .unwrap();
    };
    let mut next = IDS;
    let mut crowd = |groups: Vec<(u32, Attrs)>, model: &mut HashMap<usize, Attrs>| {
        for (count, attrs) in groups {
            for _ in 0..count {
                write(cid(next), &attrs);
                model.insert(next, attrs.clone());
                next += 1;
            }
        }
    };
    let at = |i: usize, model: &mut HashMap<usize, Attrs>| {
        write(cid(i), &Attrs::new());
        model.insert(i, Attrs::new());
    };
    (0..4).for_each(|i| at(i, model));
    // One value held by COMMON customers of the shard, one by one fewer (a write can push it
    // over), one by more; likewise for the values of a keyword list.
    crowd(
        vec![
            crowd_group(
                COMMON + 8,
                &[
                    ("gender", kw("F")),
                    ("city", kw("Paris")),
                    ("tags", kws(&["golf", "ski"])),
                ],
            ),
            crowd_group(COMMON - 1, &[("gender", kw("M")), ("tags", kws(&["tennis"]))]),
            crowd_group(3, &[("account_id", kw("A2")), ("vip", Value::Bool(true))]),
        ],
        model,
    );
    let mut blanks = Vec::new();
    if spread {
        let first = store.customer_count() as usize;
        let ids: Vec<String> = (0..SHARD_SIZE - first).map(|n| format!("b{n}")).collect();
        for chunk in ids.chunks(8192) {
            let patches: Vec<CustomerPatch> = chunk
                .iter()
                .map(|id| CustomerPatch {
                    customer_id: id.clone(),
                    email: None,
                    attrs: Vec::new(),
                })
                .collect();
            store.upsert(&patches, &mut no_log).unwrap();
        }
        blanks = ids;
        model.insert(BLANK, Attrs::new());
    }
    (4..8).for_each(|i| at(i, model));
    crowd(
        vec![
            crowd_group(
                COMMON - 1,
                &[
                    ("gender", kw("X")),
                    ("city", kw("lille")),
                    ("tags", kws(&["ski"])),
                ],
            ),
            crowd_group(
                COMMON,
                &[
                    ("city", kw("Lyon")),
                    ("household_size", Value::Int(2)),
                    ("account_id", kw("A1")),
                ],
            ),
        ],
        model,
    );
    if spread {
        assert!(store.ordinal_of_id("c3").unwrap() < SHARD_SIZE as u32);
        assert!(store.ordinal_of_id("c4").unwrap() >= SHARD_SIZE as u32);
    }
    blanks
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]

    #[test]
    fn materialized_segments_equal_naive_evaluation(
        spread in proptest::bool::weighted(0.2),
        (today, ops) in proptest::sample::select(TODAYS.to_vec())
            .prop_flat_map(|today| (Just(today), proptest::collection::vec(op(today), 1..30))),
    ) {
        let noon = i64::from(days(today.0, today.1, today.2)) * 86_400_000_000 + 43_200_000_000;
        let store = Store::with_clock(Arc::new(ManualClock::new(noon)));
        let schema = store.schema();
        let mut model: HashMap<usize, Attrs> = HashMap::new();
        let blanks = populate(&store, &mut model, spread);
        let mut segs: Vec<(String, ModelSegment)> = Vec::new();
        // Memberships rebuilt from the event stream alone, and the last event read; blank
        // customers, all alike, are counted by segment.
        let mut followed: BTreeSet<(String, String)> = BTreeSet::new();
        let mut blank_members: HashMap<String, i64> = HashMap::new();
        let mut seen = 0;
        for op in &ops {
            match op {
                Op::Upsert(i, attrs) => {
                    let patch = CustomerPatch {
                        customer_id: cid(*i),
                        email: None,
                        attrs: attrs.iter().map(|(n, v)| (schema.get(n).unwrap().id, v.clone())).collect(),
                    };
                    store.upsert(&[patch], &mut no_log).unwrap();
                    let c = model.entry(*i).or_default();
                    for (n, v) in attrs {
                        match v {
                            Some(Value::Keywords(k)) if k.is_empty() => { c.remove(n); }
                            Some(Value::Keywords(k)) => {
                                let set: BTreeSet<String> = k.iter().cloned().collect();
                                c.insert(n, Value::Keywords(set.into_iter().collect()));
                            }
                            Some(v) => { c.insert(n, v.clone()); }
                            None => { c.remove(n); }
                        }
                    }
                }
                Op::Delete(i) => {
                    let ok = store.delete(&CustomerKey::Id(cid(*i)), &mut no_log).is_ok();
                    prop_assert_eq!(ok, model.remove(i).is_some());
                    for (_, s) in &mut segs {
                        s.include.remove(i);
                        s.exclude.remove(i);
                    }
                }
                Op::Define(rule, inc, exc, accounts) => {
                    let id = format!("s{}", segs.len());
                    let known = |v: &Vec<usize>| v.iter().all(|i| model.contains_key(i));
                    let refs_ok = rule.segment_refs().iter().all(|r| segs.iter().any(|(n, _)| n == r));
                    let inc_ids: Vec<String> = inc.iter().map(|i| cid(*i)).collect();
                    let exc_ids: Vec<String> = exc.iter().map(|i| cid(*i)).collect();
                    let def = SegmentDef {
                        id: id.clone(),
                        name: id.clone(),
                        rule: Some(rule.clone()),
                        include_accounts: accounts.iter().map(|a| a.to_string()).collect(),
                        allow_activities: true,
                        ..Default::default()
                    };
                    let res = store.create_segment(def, &inc_ids, &exc_ids, &mut no_log);
                    prop_assert_eq!(res.is_ok(), known(inc) && known(exc) && refs_ok, "{:?}", res);
                    if res.is_ok() {
                        segs.push((id, ModelSegment {
                            rule: rule.clone(),
                            include: inc.iter().copied().collect(),
                            exclude: exc.iter().copied().collect(),
                            accounts: accounts.clone(),
                        }));
                    }
                }
                Op::Redefine(s, rule) => {
                    if *s < segs.len() {
                        let id = segs[*s].0.clone();
                        let update = segmentd::store::segments::SegmentUpdate { rule: Some(Some(rule.clone())), ..Default::default() };
                        let res = store.update_segment(&id, update, &mut no_log);
                        // Refused: unknown references and cycles (a segment reading itself, directly or not).
                        let mut reads: Vec<String> = rule.segment_refs().iter().map(|r| r.to_string()).collect();
                        let mut cyclic = false;
                        let mut seen = BTreeSet::new();
                        let known = reads.iter().all(|r| segs.iter().any(|(n, _)| n == r));
                        while let Some(r) = reads.pop() {
                            if r == id { cyclic = true; break; }
                            if !seen.insert(r.clone()) { continue; }
                            if let Some((_, m)) = segs.iter().find(|(n, _)| *n == r) {
                                reads.extend(m.rule.segment_refs().iter().map(|x| x.to_string()));
                            }
                        }
                        prop_assert_eq!(res.is_ok(), known && !cyclic, "{:?}", res);
                        if res.is_ok() {
                            segs[*s].1.rule = rule.clone();
                        }
                    }
                }
                Op::Activity(s, c, add) => {
                    if *s < segs.len() {
                        let out = store.set_listed(&segs[*s].0, &[CustomerKey::Id(cid(*c))], *add, Some("act"), &mut no_log).unwrap();
                        if model.contains_key(c) {
                            let m = &mut segs[*s].1;
                            if *add { m.include.insert(*c); m.exclude.remove(c); } else { m.exclude.insert(*c); m.include.remove(c); }
                        } else {
                            prop_assert_eq!(out.unknown.len(), 1);
                        }
                    }
                }
            }
            let w = World { segs: &segs, model: &model, today };
            let blank_ids = [blanks.first(), blanks.last()];
            for (sid, s) in &segs {
                let mut size = 0;
                for i in (0..IDS).chain(model.keys().copied().filter(|&i| i >= IDS && i != BLANK)) {
                    let want = member(s, i, &w);
                    size += u64::from(want);
                    let got = store.is_member(&cid(i), sid).unwrap();
                    prop_assert_eq!(got, model.contains_key(&i).then_some(want), "segment {} customer {} after {:?}", sid, cid(i), op);
                }
                let blank = model.contains_key(&BLANK) && member(s, BLANK, &w);
                size += blanks.len() as u64 * u64::from(blank);
                for id in blank_ids.into_iter().flatten() {
                    prop_assert_eq!(store.is_member(id, sid).unwrap(), Some(blank), "segment {} customer {} after {:?}", sid, id, op);
                }
                prop_assert_eq!(store.segment_info(sid, 100).unwrap().size, size, "size of {}", sid);
            }
            // Every change is one event: folding them gives the memberships.
            let page = store.events().read(seen, &[], usize::MAX, usize::MAX, &|o| store.id_at(o)).unwrap();
            for e in page.events {
                prop_assert_eq!(e.sequence, seen + 1, "no gaps");
                seen = e.sequence;
                if e.customer_id.starts_with('b') {
                    *blank_members.entry(e.segment_id.to_string()).or_default() += if e.entered { 1 } else { -1 };
                    continue;
                }
                let key = (e.segment_id.to_string(), e.customer_id.to_string());
                prop_assert_eq!(followed.contains(&key), !e.entered, "{:?} repeats the state, after {:?}", e, op);
                if e.entered { followed.insert(key); } else { followed.remove(&key); }
            }
            for (sid, s) in &segs {
                for i in (0..IDS).chain(model.keys().copied().filter(|&i| i >= IDS && i != BLANK)) {
                    let want = model.contains_key(&i) && member(s, i, &w);
                    prop_assert_eq!(followed.contains(&(sid.clone(), cid(i))), want, "events of {} for {} after {:?}", sid, cid(i), op);
                }
                let blank = model.contains_key(&BLANK) && member(s, BLANK, &w);
                let want = blanks.len() as i64 * i64::from(blank);
                prop_assert_eq!(blank_members.get(sid).copied().unwrap_or(0), want, "events of {} for blank customers", sid);
            }
        }
    }
}

/// Ages on the days where calendars differ (leap days, the turn of a year, birthdays today),
/// for every day the tests run on: each `age` comparison's members are those the model's
/// calendar names.
#[test]
fn ages_on_edge_days_follow_the_models_calendar() {
    for today in TODAYS {
        let noon = i64::from(days(today.0, today.1, today.2)) * 86_400_000_000 + 43_200_000_000;
        let store = Store::with_clock(Arc::new(ManualClock::new(noon)));
        let birth_date = store.schema().get("birth_date").unwrap().id;
        let mut births = Vec::new();
        for y in 1990..=2001 {
            let (_, tm, td) = today;
            let mut edges = vec![(2, 28), (3, 1), (12, 31), (1, 1), (tm, td)];
            if month_days(y, 2) == 29 {
                edges.push((2, 29));
            }
            for (m, d) in edges {
                for shift in -1..=1 {
                    let day = days(y, m, d.min(month_days(y, m))) + shift;
                    births.push(civil(day));
                }
            }
        }
        let patches: Vec<CustomerPatch> = births
            .iter()
            .enumerate()
            .map(|(n, b)| CustomerPatch {
                customer_id: format!("p{n}"),
                email: None,
                attrs: vec![(birth_date, Some(Value::Date(days(b.0, b.1, b.2))))],
            })
            .collect();
        store.upsert(&patches, &mut no_log).unwrap();
        for n in 21..=35 {
            for op in [CmpOp::Eq, CmpOp::Ge, CmpOp::Lt] {
                let id = format!("age-{n}-{op:?}");
                let def = SegmentDef {
                    id: id.clone(),
                    name: id.clone(),
                    rule: Some(pred("age", PredOp::Cmp(op, Literal::Int(n)))),
                    ..Default::default()
                };
                store.create_segment(def, &[], &[], &mut no_log).unwrap();
                let mut size = 0;
                for (p, b) in births.iter().enumerate() {
                    let want = lit_cmp(&Value::Int(age(*b, today)), op, &Literal::Int(n));
                    size += u64::from(want);
                    let got = store.is_member(&format!("p{p}"), &id).unwrap();
                    assert_eq!(got, Some(want), "{id} for a birth on {b:?} on {today:?}");
                }
                assert_eq!(
                    store.segment_info(&id, 0).unwrap().size,
                    size,
                    "{id} on {today:?}"
                );
            }
        }
    }
}
