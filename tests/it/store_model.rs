//! Property test: random upsert / delete / order sequences leave the store equal to a naive model.
//!
//! Every case starts with a crowd whose keyword values sit at and just under the count from which
//! a shard keeps a value's own bitmap ([`segmentd::columnar::column::COMMON`]); one case in five also
//! fills the first shard with customers that hold nothing, so the customers the writes change sit
//! in two shards.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use proptest::prelude::*;
use segmentd::columnar::column::COMMON;
use segmentd::columnar::value::Value;
use segmentd::store::input::{CustomerKey, CustomerPatch, OrderIn};
use segmentd::store::{SHARD_SIZE, Store, no_log};

const IDS: usize = 12;
const EMAILS: usize = 6;

/// One upserted customer: id index, e-mail change (keep / remove / set index), attribute changes.
type Item = (usize, Option<Option<usize>>, Vec<(&'static str, Option<Value>)>);

#[derive(Debug, Clone)]
enum Op {
    Upsert(Vec<Item>),
    Delete(usize),
    Orders(Vec<(usize, usize, i64, bool, Vec<&'static str>)>),
}

fn value_for(name: &'static str) -> BoxedStrategy<Option<Value>> {
    let v: BoxedStrategy<Value> = match name {
        "gender" => prop_oneof![Just("F"), Just("M"), Just("X")]
            .prop_map(|s| Value::Keyword(s.into()))
            .boxed(),
        "household_size" => (0i64..6).prop_map(Value::Int).boxed(),
        "vip" => any::<bool>().prop_map(Value::Bool).boxed(),
        "birth_date" => (-20_000i32..20_000).prop_map(Value::Date).boxed(),
        "tags" => proptest::sample::subsequence(vec!["golf", "ski", "tennis", "run"], 0..4)
            .prop_map(|v| Value::Keywords(v.into_iter().map(String::from).collect()))
            .boxed(),
        _ => unreachable!(),
    };
    prop_oneof![1 => Just(None), 4 => v.prop_map(Some)].boxed()
}

fn attrs() -> impl Strategy<Value = Vec<(&'static str, Option<Value>)>> {
    proptest::sample::subsequence(
        vec!["gender", "household_size", "vip", "birth_date", "tags"],
        0..5,
    )
    .prop_flat_map(|names| {
        names
            .into_iter()
            .map(|n| value_for(n).prop_map(move |v| (n, v)))
            .collect::<Vec<_>>()
    })
}

fn op() -> impl Strategy<Value = Op> {
    let email =
        prop_oneof![2 => Just(None), 1 => Just(Some(None)), 3 => (0..EMAILS).prop_map(|e| Some(Some(e)))];
    let item = (0..IDS, email, attrs());
    let order = (
        0..IDS,
        0usize..25,
        0i64..10_000,
        any::<bool>(),
        proptest::sample::subsequence(vec!["golf", "ski"], 0..2),
    );
    prop_oneof![
        5 => proptest::collection::vec(item, 1..4).prop_map(Op::Upsert),
        2 => (0..IDS).prop_map(Op::Delete),
        3 => proptest::collection::vec(order, 1..4).prop_map(Op::Orders),
    ]
}

fn id(n: usize) -> String {
    format!("cust-{n}")
}

/// E-mails differ only in case for the same index, to exercise case-insensitive comparison.
fn email(n: usize, upper: bool) -> String {
    let e = format!("person{n}@example.com");
    if upper { e.to_uppercase() } else { e }
}

#[derive(Debug, Default, Clone)]
struct ModelCustomer {
    email: Option<usize>,
    attrs: BTreeMap<&'static str, Value>,
    orders: Vec<(i64, i64, bool)>,
    categories: BTreeSet<&'static str>,
}

#[derive(Debug, Default)]
struct Model {
    customers: HashMap<usize, ModelCustomer>,
    /// (customer, order id) recorded: an order id is remembered for its customer, and
    /// forgotten with the customer.
    orders_seen: HashSet<(usize, usize)>,
}

impl Model {
    fn email_owner(&self, e: usize) -> Option<usize> {
        self.customers
            .iter()
            .find(|(_, c)| c.email == Some(e))
            .map(|(&id, _)| id)
    }

    /// Whether the batch is refused; if not, applies it.
    fn upsert(&mut self, batch: &[Item]) -> bool {
        let ids: HashSet<usize> = batch.iter().map(|(i, _, _)| *i).collect();
        if ids.len() != batch.len() {
            return false;
        }
        // The e-mail each customer has after the batch.
        let mut after: HashMap<usize, Option<usize>> =
            self.customers.iter().map(|(&id, c)| (id, c.email)).collect();
        for (i, e, _) in batch {
            if let Some(e) = e {
                after.insert(*i, *e);
            }
        }
        let mut claimed = HashSet::new();
        for (_, e, _) in batch {
            if let Some(Some(e)) = e
                && !claimed.insert(*e)
            {
                return false;
            }
        }
        let mut owners: HashMap<usize, usize> = HashMap::new();
        for (id, e) in &after {
            if let Some(e) = e
                && owners.insert(*e, *id).is_some()
            {
                return false;
            }
        }
        for (i, e, attrs) in batch {
            let c = self.customers.entry(*i).or_default();
            if let Some(e) = e {
                c.email = *e;
            }
            for (name, v) in attrs {
                match v {
                    Some(Value::Keywords(items)) if items.is_empty() => {
                        c.attrs.remove(name);
                    }
                    Some(Value::Keywords(items)) => {
                        let set: BTreeSet<String> = items.iter().cloned().collect();
                        c.attrs.insert(name, Value::Keywords(set.into_iter().collect()));
                    }
                    Some(v) => {
                        c.attrs.insert(name, v.clone());
                    }
                    None => {
                        c.attrs.remove(name);
                    }
                }
            }
        }
        true
    }

    fn expected(&self, n: usize) -> Option<(Option<usize>, BTreeMap<String, Value>)> {
        let c = self.customers.get(&n)?;
        let mut attrs: BTreeMap<String, Value> =
            c.attrs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        if !c.orders.is_empty() {
            let count = c.orders.len() as i64;
            let total: i64 = c.orders.iter().map(|o| o.1).sum();
            attrs.insert("order_count".into(), Value::Int(count));
            attrs.insert("total_spent".into(), Value::Money(total));
            attrs.insert("avg_order_value".into(), Value::Money(total / count));
            attrs.insert(
                "promo_order_count".into(),
                Value::Int(c.orders.iter().filter(|o| o.2).count() as i64),
            );
            attrs.insert(
                "first_order_at".into(),
                Value::Timestamp(c.orders.iter().map(|o| o.0).min().unwrap()),
            );
            attrs.insert(
                "last_order_at".into(),
                Value::Timestamp(c.orders.iter().map(|o| o.0).max().unwrap()),
            );
            if !c.categories.is_empty() {
                attrs.insert(
                    "categories_bought".into(),
                    Value::Keywords(c.categories.iter().map(|s| s.to_string()).collect()),
                );
            }
        }
        Some((c.email, attrs))
    }
}

/// Customers present before the case's writes, which the writes never name.
struct Crowd {
    /// Each crowd customer's id and values.
    held: Vec<(String, BTreeMap<String, Value>)>,
    /// Customers that hold nothing.
    blanks: usize,
}

/// Writes `cust-0`..`cust-5` (holding nothing; the model has them), then the crowd, then with
/// `spread` blank customers up to the end of the first shard; the writes create the other ids
/// after them.
fn populate(store: &Store, model: &mut Model, spread: bool) -> Crowd {
    let schema = store.schema();
    let patch = |id: String, attrs: &[(&str, Value)]| CustomerPatch {
        customer_id: id,
        email: None,
        attrs: attrs
            .iter()
            .map(|(n, v)| (schema.get(n).unwrap().id, Some(v.clone())))
            .collect(),
    };
    for i in 0..IDS / 2 {
        store.upsert(&[patch(id(i), &[])], &mut no_log).unwrap();
        model.customers.insert(i, ModelCustomer::default());
    }
    let kw = |s: &str| Value::Keyword(s.into());
    let tags = |v: &[&str]| Value::Keywords(v.iter().map(|s| s.to_string()).collect());
    let groups: [(u32, Vec<(&str, Value)>); 3] = [
        (
            COMMON + 8,
            vec![("gender", kw("F")), ("tags", tags(&["golf", "ski"]))],
        ),
        (COMMON - 1, vec![("gender", kw("M")), ("tags", tags(&["tennis"]))]),
        (
            COMMON - 1,
            vec![
                ("gender", kw("X")),
                ("tags", tags(&["run"])),
                ("household_size", Value::Int(3)),
            ],
        ),
    ];
    let mut held = Vec::new();
    for (g, (count, attrs)) in groups.iter().enumerate() {
        for n in 0..*count {
            let cid = format!("crowd-{g}-{n}");
            store.upsert(&[patch(cid.clone(), attrs)], &mut no_log).unwrap();
            held.push((
                cid,
                attrs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            ));
        }
    }
    let mut blanks = 0;
    if spread {
        blanks = SHARD_SIZE - store.customer_count() as usize;
        let patches: Vec<CustomerPatch> = (0..blanks).map(|n| patch(format!("blank-{n}"), &[])).collect();
        for chunk in patches.chunks(8192) {
            store.upsert(chunk, &mut no_log).unwrap();
        }
    }
    Crowd { held, blanks }
}

fn check(store: &Store, model: &Model, crowd: &Crowd) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        store.customer_count() as usize,
        model.customers.len() + crowd.held.len() + crowd.blanks
    );
    // The crowd keeps its values whatever the writes did to the forms they are held in.
    for (cid, attrs) in crowd.held.iter().step_by(7) {
        let rec = store.get_customer(&CustomerKey::Id(cid.clone())).unwrap();
        let got: BTreeMap<String, Value> = rec.attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        prop_assert_eq!(&got, attrs, "{}", cid);
    }
    for n in 0..IDS {
        let got = store.get_customer(&CustomerKey::Id(id(n))).ok();
        let want = model.expected(n);
        match (got, want) {
            (None, None) => {}
            (Some(rec), Some((email_n, attrs))) => {
                prop_assert_eq!(rec.customer_id, id(n));
                prop_assert_eq!(
                    rec.email.map(|e| e.to_lowercase()),
                    email_n.map(|e| email(e, false))
                );
                let got: BTreeMap<String, Value> =
                    rec.attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                prop_assert_eq!(got, attrs, "customer {}", n);
            }
            (got, want) => prop_assert!(false, "customer {n}: store {got:?}, model {want:?}"),
        }
    }
    for e in 0..EMAILS {
        let owner = store
            .resolve(&CustomerKey::Email(email(e, true)))
            .and_then(|ord| {
                store.read_shard(ord, |s| {
                    s.ids.get(segmentd::store::local(ord)).map(str::to_string)
                })
            });
        prop_assert_eq!(owner, model.email_owner(e).map(id), "owner of e-mail {}", e);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_naive_model(
        spread in proptest::bool::weighted(0.2),
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let store = Store::new();
        let schema = store.schema();
        let mut model = Model::default();
        let crowd = populate(&store, &mut model, spread);
        for (step, op) in ops.iter().enumerate() {
            match op {
                Op::Upsert(batch) => {
                    let patches: Vec<CustomerPatch> = batch
                        .iter()
                        .map(|(i, e, attrs)| CustomerPatch {
                            customer_id: id(*i),
                            email: e.map(|e| e.map_or(String::new(), |e| email(e, step % 2 == 0))),
                            attrs: attrs.iter().map(|(n, v)| (schema.get(n).unwrap().id, v.clone())).collect(),
                        })
                        .collect();
                    let ok = store.upsert(&patches, &mut no_log).is_ok();
                    prop_assert_eq!(ok, model.upsert(batch), "step {}: {:?}", step, op);
                }
                Op::Delete(i) => {
                    let ok = store.delete(&CustomerKey::Id(id(*i)), &mut no_log).is_ok();
                    prop_assert_eq!(ok, model.customers.remove(i).is_some());
                    model.orders_seen.retain(|(c, _)| c != i);
                }
                Op::Orders(orders) => {
                    let ins: Vec<OrderIn> = orders
                        .iter()
                        .map(|(c, o, amount, promo, cats)| OrderIn {
                            order_id: format!("order-{o}"),
                            customer_id: id(*c),
                            placed_at: (*o as i64) * 1_000_000_000 + amount,
                            amount_minor: *amount,
                            promotion: *promo,
                            categories: cats.iter().map(|s| s.to_string()).collect(),
                            brands: vec![],
                        })
                        .collect();
                    let out = store.record_orders(&ins, &mut no_log).unwrap();
                    let mut applied = 0;
                    for ((c, o, amount, promo, cats), order) in orders.iter().zip(&ins) {
                        if model.orders_seen.insert((*c, *o)) {
                            applied += 1;
                            let m = model.customers.entry(*c).or_default();
                            m.orders.push((order.placed_at, *amount, *promo));
                            m.categories.extend(cats.iter().copied());
                        }
                    }
                    prop_assert_eq!(out.applied, applied);
                }
            }
            check(&store, &model, &crowd)?;
        }
    }
}
