//! Property test: for random customers, rule trees and writes, every materialized segment bitmap
//! equals a naive per-customer evaluation of the same rules over a plain model of the customers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use proptest::prelude::*;
use segmentd::segment::registry::SegmentDef;
use segmentd::segment::rule::{CmpOp, Literal, Pred, PredOp, Rule, TextOp};
use segmentd::store::input::{CustomerKey, CustomerPatch};
use segmentd::store::value::Value;
use segmentd::store::{Store, no_log};
use segmentd::time::{ManualClock, days_from_civil};

const IDS: usize = 10;
const TODAY: (i32, i32, i32) = (2024, 6, 15);

fn today() -> i32 {
    days_from_civil(TODAY.0, TODAY.1, TODAY.2).unwrap()
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

fn value_for(name: &'static str) -> BoxedStrategy<Option<Value>> {
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
        "birth_date" => (today() - 60 * 366..today()).prop_map(Value::Date).boxed(),
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

fn attrs() -> impl Strategy<Value = Vec<(&'static str, Option<Value>)>> {
    proptest::sample::subsequence(NAMES.to_vec(), 0..NAMES.len()).prop_flat_map(|names| {
        names
            .into_iter()
            .map(|n| value_for(n).prop_map(move |v| (n, v)))
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
        (cmp, 0i64..60).prop_map(|(op, n)| pred("age", PredOp::Cmp(op, Literal::Int(n)))),
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

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..IDS, attrs()).prop_map(|(i, a)| Op::Upsert(i, a)),
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

fn age(birth: i32) -> i64 {
    segmentd::segment::eval::age(birth, today())
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

/// The naive evaluator: straight from the rule tree and the model's values.
fn naive(
    rule: &Rule,
    c: &Attrs,
    segs: &[(String, ModelSegment)],
    id: usize,
    model: &HashMap<usize, Attrs>,
) -> bool {
    match rule {
        Rule::And(v) => v.iter().all(|r| naive(r, c, segs, id, model)),
        Rule::Or(v) => v.iter().any(|r| naive(r, c, segs, id, model)),
        Rule::Not(r) => !naive(r, c, segs, id, model),
        Rule::Pred(p) => {
            if let PredOp::InSegment(sid) = &p.op {
                return segs
                    .iter()
                    .find(|(n, _)| n == sid)
                    .is_some_and(|(_, s)| member(s, segs, id, model));
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
                Value::Int(age(*d))
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

fn member(
    s: &ModelSegment,
    segs: &[(String, ModelSegment)],
    id: usize,
    model: &HashMap<usize, Attrs>,
) -> bool {
    let Some(c) = model.get(&id) else { return false };
    let account = match c.get("account_id") {
        Some(Value::Keyword(a)) => Some(a.as_str()),
        _ => None,
    };
    if s.exclude.contains(&id) {
        return false;
    }
    s.include.contains(&id)
        || account.is_some_and(|a| s.accounts.contains(&a))
        || naive(&s.rule, c, segs, id, model)
}

fn cid(i: usize) -> String {
    format!("c{i}")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, ..ProptestConfig::default() })]

    #[test]
    fn materialized_segments_equal_naive_evaluation(ops in proptest::collection::vec(op(), 1..30)) {
        let clock = Arc::new(ManualClock::new(i64::from(today()) * 86_400_000_000 + 43_200_000_000));
        let store = Store::with_clock(clock);
        let schema = store.schema();
        let mut model: HashMap<usize, Attrs> = HashMap::new();
        let mut segs: Vec<(String, ModelSegment)> = Vec::new();
        // Memberships rebuilt from the event stream alone, and the last event read.
        let mut followed: BTreeSet<(String, String)> = BTreeSet::new();
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
                        let update = segmentd::segment::ops::SegmentUpdate { rule: Some(Some(rule.clone())), ..Default::default() };
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
            for (sid, s) in &segs {
                let mut size = 0;
                for i in 0..IDS {
                    let want = member(s, &segs, i, &model);
                    size += u64::from(want);
                    let got = store.is_member(&cid(i), sid).unwrap();
                    prop_assert_eq!(got, model.contains_key(&i).then_some(want), "segment {} customer {} after {:?}", sid, i, op);
                }
                prop_assert_eq!(store.segment_info(sid, 100).unwrap().size, size, "size of {}", sid);
            }
            // Every change is one event: folding them gives the memberships.
            let page = store.events().read(seen, &[], usize::MAX, usize::MAX, &|o| store.id_at(o)).unwrap();
            for e in page.events {
                prop_assert_eq!(e.sequence, seen + 1, "no gaps");
                seen = e.sequence;
                let key = (e.segment_id.to_string(), e.customer_id.to_string());
                prop_assert_eq!(followed.contains(&key), !e.entered, "{:?} repeats the state, after {:?}", e, op);
                if e.entered { followed.insert(key); } else { followed.remove(&key); }
            }
            for (sid, s) in &segs {
                for i in 0..IDS {
                    let want = model.contains_key(&i) && member(s, &segs, i, &model);
                    prop_assert_eq!(followed.contains(&(sid.clone(), cid(i))), want, "events of {} for {} after {:?}", sid, i, op);
                }
            }
        }
    }
}
