//! The state changes the server makes, as typed commands, and their one application to the store.
//!
//! Every change goes through [`Command::apply`]: a live write applies its command on the writer
//! thread with a [`Journal`] that appends the command's record to the log once the store has
//! checked it; recovery reads each log record back into a command ([`Command::decode`]) and
//! applies it at the record's time with a journal that only hands back the record's sequence.
//! Both make the same store calls, with the same checks, membership changes and events.
//!
//! Attributes are logged by name and rules in the text form (which parses back to the same tree),
//! so a record means the same thing whatever ids the schema or registry hands out on replay.

use std::sync::Arc;

use super::UpsertBatch;
use crate::codec::{columns, wire};
use crate::columnar::schema::{AttrType, Schema};
use crate::columnar::value::Value;
use crate::error::{Error, Result};
use crate::persist::pb::{self, record::Op};
use crate::segment::family::{Family, FamilyInfo, FamilyMember};
use crate::segment::registry::SegmentDef;
use crate::segment::rule::Rule;
use crate::segment::text;
use crate::store::batch::ColumnBatch;
use crate::store::input::{CustomerKey, CustomerPatch, OrderIn};
use crate::store::rfm::Reclassified;
use crate::store::segments::{ListOutcome, SegmentInfo, SegmentUpdate};
use crate::store::timing::Advance;
use crate::store::{KeyHashes, OrdersOutcome, Store, UpsertOutcome};
use crate::wal::{EncodedOp, record};

/// Where a command's record goes once the store has checked the command and before it changes
/// anything: the log, for a live write; nowhere, on replay (the record is the one being read).
/// Each call returns the record's sequence.
pub trait Journal {
    /// Appends the record `op` builds (built only if it is needed).
    fn append(&mut self, op: impl FnOnce() -> Op) -> Result<u64>;
    /// Appends a record encoded beforehand.
    fn append_encoded(&mut self, op: &EncodedOp) -> Result<u64>;
}

/// The journal of a replayed record: its sequence, already in the log.
pub struct Replayed(pub u64);

impl Journal for Replayed {
    fn append(&mut self, _: impl FnOnce() -> Op) -> Result<u64> {
        Ok(self.0)
    }

    fn append_encoded(&mut self, _: &EncodedOp) -> Result<u64> {
        Ok(self.0)
    }
}

/// What applying a command answers.
pub enum Applied {
    Upserted(UpsertOutcome),
    Orders(OrdersOutcome),
    /// The id of the erased customer.
    Deleted(String),
    Schema(Arc<Schema>),
    Segment(SegmentInfo),
    Listed(ListOutcome),
    Family(FamilyInfo),
    Reclassified(Reclassified),
    /// Membership changes the clock made.
    Flips(u64),
    Done,
}

/// The value of one kind of [`Applied`], or an internal error naming the command.
macro_rules! applied {
    ($out:expr, $variant:path) => {
        match $out {
            $variant(v) => Ok(v),
            _ => Err($crate::error::Error::Internal(format!(
                "a command answered other than {}",
                stringify!($variant)
            ))),
        }
    };
}
pub(crate) use applied;

/// One change to the server's state.
pub enum Command {
    /// Customers created or changed, all or nothing, prepared where they were parsed (with
    /// their record encoded there).
    UpsertBatch(UpsertBatch),
    /// Customers created or changed, all or nothing.
    Upsert(Vec<CustomerPatch>),
    /// Customers created or changed, given column by column.
    UpsertColumns(ColumnBatch),
    RecordOrders(Vec<OrderIn>),
    /// A customer erased.
    DeleteCustomer(CustomerKey),
    DefineAttribute {
        name: String,
        ty: AttrType,
        description: String,
    },
    CreateSegment {
        def: SegmentDef,
        include: Vec<String>,
        exclude: Vec<String>,
    },
    UpdateSegment {
        id: String,
        update: SegmentUpdate,
    },
    DeleteSegment(String),
    /// Customers added to (`add`) or removed from a segment's lists, by an activity or not.
    SetListed {
        segment_id: String,
        keys: Vec<CustomerKey>,
        add: bool,
        activity: Option<String>,
    },
    CreateFamily(Family),
    DeleteFamily(String),
    /// RFM reclassified as of a time (micros).
    Reclassify {
        as_of: i64,
    },
    /// The clock's due flips applied: those since `since` (micros), or every customer's.
    AdvanceTime {
        since: Option<i64>,
    },
}

impl Command {
    /// The command a logged operation stands for, read against `store`'s schema as it is at
    /// that point of the log.
    pub fn decode(store: &Store, op: Op) -> Result<Command> {
        Ok(match op {
            Op::Upsert(u) => {
                let schema = store.schema();
                let patches = u
                    .patches
                    .into_iter()
                    .map(|p| {
                        Ok(CustomerPatch {
                            customer_id: p.customer_id,
                            email: p.email,
                            attrs: p
                                .attrs
                                .into_iter()
                                .map(|a| {
                                    let def = schema.get(&a.name).ok_or_else(|| {
                                        Error::DataLoss(format!("unknown attribute `{}` in the log", a.name))
                                    })?;
                                    Ok((def.id, a.value.map(value_in).transpose()?))
                                })
                                .collect::<Result<_>>()?,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Command::Upsert(patches)
            }
            Op::UpsertCustomers(u) => {
                let schema = store.schema();
                let patches = wire::customer_patches(&schema, u.customers.iter().map(Vec::as_slice))
                    .map_err(|(i, e)| {
                        Error::DataLoss(format!("customer {i} of a logged batch cannot be read: {e}"))
                    })?;
                Command::Upsert(patches)
            }
            Op::UpsertColumns(bytes) => {
                let batch = columns::column_batch(&store.schema(), None, &bytes.into()).map_err(|e| {
                    Error::DataLoss(format!("a logged batch of customer columns cannot be read: {e}"))
                })?;
                Command::UpsertColumns(batch)
            }
            Op::Orders(o) => Command::RecordOrders(
                o.orders
                    .into_iter()
                    .map(|o| OrderIn {
                        order_id: o.order_id,
                        customer_id: o.customer_id,
                        placed_at: o.placed_at,
                        amount_minor: o.amount_minor,
                        promotion: o.promotion,
                        categories: o.categories,
                        brands: o.brands,
                    })
                    .collect(),
            ),
            Op::Delete(d) => Command::DeleteCustomer(key_in(
                d.key
                    .ok_or_else(|| Error::DataLoss("log delete without a key".into()))?,
            )?),
            Op::DefineAttribute(a) => Command::DefineAttribute {
                ty: AttrType::from_name(&a.r#type).ok_or_else(|| {
                    Error::DataLoss(format!("unknown attribute type `{}` in the log", a.r#type))
                })?,
                name: a.name,
                description: a.description,
            },
            Op::CreateSegment(c) => {
                let d = c
                    .def
                    .ok_or_else(|| Error::DataLoss("log segment without a definition".into()))?;
                Command::CreateSegment {
                    def: SegmentDef {
                        id: d.id,
                        name: d.name,
                        description: d.description,
                        rule: rule_in(d.rule_text)?,
                        include_accounts: d.include_accounts,
                        exclude_accounts: d.exclude_accounts,
                        allow_activities: d.allow_activities,
                    },
                    include: c.include_ids,
                    exclude: c.exclude_ids,
                }
            }
            Op::UpdateSegment(u) => Command::UpdateSegment {
                update: SegmentUpdate {
                    name: u.name,
                    description: u.description,
                    rule: u.rule.map(|r| rule_in(r.rule_text)).transpose()?,
                    include_ids: u.include_ids.map(|s| s.values),
                    exclude_ids: u.exclude_ids.map(|s| s.values),
                    include_accounts: u.include_accounts.map(|s| s.values),
                    exclude_accounts: u.exclude_accounts.map(|s| s.values),
                    allow_activities: u.allow_activities,
                },
                id: u.id,
            },
            Op::DeleteSegment(d) => Command::DeleteSegment(d.id),
            Op::SetListed(s) => Command::SetListed {
                keys: s.keys.into_iter().map(key_in).collect::<Result<Vec<_>>>()?,
                activity: s.activity.then_some(s.activity_id),
                segment_id: s.segment_id,
                add: s.add,
            },
            Op::CreateFamily(f) => Command::CreateFamily(Family {
                id: f.id,
                name: f.name,
                description: f.description,
                members: f
                    .members
                    .into_iter()
                    .map(|m| {
                        Ok(FamilyMember {
                            segment_id: m.segment_id,
                            name: m.name,
                            rule: rule_in(m.rule_text)?,
                        })
                    })
                    .collect::<Result<_>>()?,
                builtin: false,
            }),
            Op::DeleteFamily(d) => Command::DeleteFamily(d.id),
            Op::Reclassify(r) => Command::Reclassify {
                as_of: r.as_of_micros,
            },
            Op::AdvanceTime(t) => Command::AdvanceTime {
                since: t.since_micros,
            },
        })
    }

    /// Applies the command to `store`, all or nothing; `journal` takes its record once the
    /// store has checked it, before anything changes.
    pub fn apply(&mut self, store: &Store, journal: &mut impl Journal) -> Result<Applied> {
        Ok(match self {
            Command::UpsertBatch(batch) => Applied::Upserted(batch.apply(store, journal)?),
            Command::Upsert(patches) => {
                let schema = store.schema();
                let log = &mut || journal.append(|| record::upsert(&schema, patches));
                Applied::Upserted(store.upsert(patches, log)?)
            }
            Command::UpsertColumns(batch) => {
                // Replayed, its record already in the log; a live batch comes as an `UpsertBatch`
                // with its record made beforehand.
                let schema = store.schema();
                let log = &mut || journal.append(|| record::upsert(&schema, &batch.patches(&schema)));
                Applied::Upserted(store.upsert_columns(batch, &KeyHashes::of_columns(batch), log)?)
            }
            Command::RecordOrders(orders) => Applied::Orders(
                store.record_orders(orders, &mut || journal.append(|| record::orders(orders)))?,
            ),
            Command::DeleteCustomer(key) => {
                Applied::Deleted(store.delete(key, &mut || journal.append(|| record::delete(key)))?)
            }
            Command::DefineAttribute {
                name,
                ty,
                description,
            } => {
                let log = &mut || journal.append(|| record::define_attribute(name, *ty, description));
                Applied::Schema(store.define_attribute(name, *ty, description, log)?)
            }
            Command::CreateSegment {
                def,
                include,
                exclude,
            } => {
                let log = &mut || journal.append(|| record::create_segment(def, include, exclude));
                Applied::Segment(store.create_segment(def.clone(), include, exclude, log)?)
            }
            Command::UpdateSegment { id, update } => {
                let log = &mut || journal.append(|| record::update_segment(id, update));
                Applied::Segment(store.update_segment(id, update.clone(), log)?)
            }
            Command::DeleteSegment(id) => {
                store.delete_segment(id, &mut || journal.append(|| record::delete_segment(id)))?;
                Applied::Done
            }
            Command::SetListed {
                segment_id,
                keys,
                add,
                activity,
            } => {
                let activity = activity.as_deref();
                let log = &mut || journal.append(|| record::set_listed(segment_id, keys, *add, activity));
                Applied::Listed(store.set_listed(segment_id, keys, *add, activity, log)?)
            }
            Command::CreateFamily(family) => {
                let log = &mut || journal.append(|| record::create_family(family));
                Applied::Family(store.create_family(family.clone(), log)?)
            }
            Command::DeleteFamily(id) => {
                store.delete_family(id, &mut || journal.append(|| record::delete_family(id)))?;
                Applied::Done
            }
            Command::Reclassify { as_of } => {
                let log = &mut || journal.append(|| record::reclassify(*as_of));
                Applied::Reclassified(store.reclassify(*as_of, log)?)
            }
            Command::AdvanceTime { since } => {
                let how = since.map_or(Advance::Full, Advance::Since);
                let log = &mut || journal.append(|| record::advance_time(*since));
                Applied::Flips(store.advance_time(Some(how), log)?)
            }
        })
    }
}

impl Command {
    /// Drops the command once applied: a customer batch (thousands of strings) on the
    /// reclaimer thread, so that freeing it does not hold up the next write; anything else here.
    pub fn free(self) {
        match self {
            Command::UpsertBatch(_) | Command::Upsert(_) | Command::UpsertColumns(_) => {
                crate::priority::discard(self)
            }
            _ => drop(self),
        }
    }
}

/// Applies one logged record to the store, exactly as when it was first accepted: at the
/// record's time, making the same membership changes and events.
pub fn replay(store: &Store, record: pb::Record) -> Result<()> {
    let op = record
        .op
        .ok_or_else(|| Error::DataLoss(format!("record {} has no operation", record.sequence)))?;
    let sequence = record.sequence;
    store.set_write_time(Some(record.time_micros));
    let result =
        Command::decode(store, op).and_then(|mut c| c.apply(store, &mut Replayed(sequence)).map(drop));
    store.set_write_time(None);
    result
}

fn value_in(v: pb::Value) -> Result<Value> {
    use pb::value::Kind;
    Ok(
        match v
            .kind
            .ok_or_else(|| Error::DataLoss("log value without a kind".into()))?
        {
            Kind::BoolValue(b) => Value::Bool(b),
            Kind::IntValue(i) => Value::Int(i),
            Kind::FloatValue(f) => Value::Float(f),
            Kind::Money(m) => Value::Money(m),
            Kind::Date(d) => Value::Date(d),
            Kind::Timestamp(t) => Value::Timestamp(t),
            Kind::Keyword(s) => Value::Keyword(s),
            Kind::Keywords(l) => Value::Keywords(l.values),
            Kind::Text(s) => Value::Text(s),
        },
    )
}

fn key_in(k: pb::Key) -> Result<CustomerKey> {
    match k.key {
        Some(pb::key::Key::CustomerId(id)) => Ok(CustomerKey::Id(id)),
        Some(pb::key::Key::Email(e)) => Ok(CustomerKey::Email(e)),
        None => Err(Error::DataLoss("log key without id or e-mail".into())),
    }
}

fn rule_in(rule_text: Option<String>) -> Result<Option<Rule>> {
    rule_text.as_deref().map(text::parse).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{EncodedOp, record};

    /// Keeps the operation of every record a live write appends, as the log would.
    #[derive(Default)]
    struct Capture(Vec<Op>);

    impl Journal for Capture {
        fn append(&mut self, op: impl FnOnce() -> Op) -> Result<u64> {
            self.0.push(op());
            Ok(self.0.len() as u64)
        }

        fn append_encoded(&mut self, op: &EncodedOp) -> Result<u64> {
            self.0.push(record_holding(op).op.expect("an operation"));
            Ok(self.0.len() as u64)
        }
    }

    /// Commands applied live, then their records decoded and applied to a second store, leave the
    /// two stores alike: each kind of change makes a record that reads back as the command that
    /// made it. (The clock's flips need a clock that moved: `durability::time_replays_from_the_log_alone`
    /// replays them through a server, as it does every other kind.)
    #[test]
    fn every_command_reads_back_from_its_record_as_the_command_that_made_it() {
        use crate::columnar::value::Value;
        use crate::time::ManualClock;
        let clock = || Arc::new(ManualClock::new(1_700_000_000_000_000));
        let (live, replayed) = (Store::with_clock(clock()), Store::with_clock(clock()));
        let patch = |store: &Store, id: &str, attrs: &[(&str, Value)]| CustomerPatch {
            customer_id: id.into(),
            email: Some(format!("{id}@example.com")),
            attrs: attrs
                .iter()
                .map(|(n, v)| (store.schema().get(n).unwrap().id, Some(v.clone())))
                .collect(),
        };
        // Each command is made against the store it is applied to (attribute ids come from it).
        type Make<'a> = Box<dyn Fn(&Store) -> Command + 'a>;
        let commands: Vec<Make> = vec![
            Box::new(|_| Command::DefineAttribute {
                name: "loyalty".into(),
                ty: AttrType::Keyword,
                description: "tier".into(),
            }),
            Box::new(|s| {
                Command::Upsert(vec![
                    patch(
                        s,
                        "c1",
                        &[
                            ("vip", Value::Bool(true)),
                            ("loyalty", Value::Keyword("gold".into())),
                        ],
                    ),
                    patch(s, "c2", &[("gender", Value::Keyword("F".into()))]),
                    patch(s, "c3", &[("tags", Value::Keywords(vec!["golf".into()]))]),
                ])
            }),
            Box::new(|_| {
                Command::RecordOrders(vec![OrderIn {
                    order_id: "o1".into(),
                    customer_id: "c1".into(),
                    placed_at: 1_699_000_000_000_000,
                    amount_minor: 12_345,
                    promotion: true,
                    categories: vec!["golf".into()],
                    brands: vec!["acme".into()],
                }])
            }),
            Box::new(|_| Command::CreateSegment {
                def: SegmentDef {
                    id: "vips".into(),
                    name: "VIPs".into(),
                    rule: Some(text::parse(r#"vip or loyalty = "gold""#).unwrap()),
                    allow_activities: true,
                    ..Default::default()
                },
                include: vec!["c2".into()],
                exclude: vec![],
            }),
            Box::new(|_| Command::CreateSegment {
                def: SegmentDef {
                    id: "golfers".into(),
                    name: "Golfers".into(),
                    rule: Some(text::parse(r#"tags has_any ("golf") and not in segment "vips""#).unwrap()),
                    ..Default::default()
                },
                include: vec![],
                exclude: vec![],
            }),
            Box::new(|_| Command::UpdateSegment {
                id: "vips".into(),
                update: SegmentUpdate {
                    name: Some("Very important".into()),
                    exclude_ids: Some(vec!["c1".into()]),
                    ..Default::default()
                },
            }),
            Box::new(|_| Command::SetListed {
                segment_id: "vips".into(),
                keys: vec![CustomerKey::Email("c3@example.com".into())],
                add: true,
                activity: Some("spring".into()),
            }),
            Box::new(|_| {
                let member = |id: &str, rule: Option<&str>| FamilyMember {
                    segment_id: id.into(),
                    name: id.into(),
                    rule: rule.map(|r| text::parse(r).unwrap()),
                };
                Command::CreateFamily(Family {
                    id: "tiers".into(),
                    name: "Tiers".into(),
                    description: String::new(),
                    members: vec![
                        member("tier.gold", Some(r#"loyalty = "gold""#)),
                        member("tier.other", None),
                    ],
                    builtin: false,
                })
            }),
            Box::new(|_| Command::Reclassify {
                as_of: 1_700_000_000_000_000,
            }),
            Box::new(|_| Command::AdvanceTime { since: None }),
            Box::new(|_| Command::DeleteCustomer(CustomerKey::Id("c2".into()))),
            Box::new(|_| Command::DeleteSegment("golfers".into())),
        ];
        // Deleting a family is checked after the families are compared.
        let delete_family = || Command::DeleteFamily("tiers".into());
        let mut journal = Capture::default();
        for make in &commands {
            let before = journal.0.len();
            let mut command = make(&live);
            let idle_clock = matches!(command, Command::AdvanceTime { .. });
            command.apply(&live, &mut journal).unwrap();
            // One record per change; a clock that flips nothing (no rule reads it here) logs none.
            assert_eq!(journal.0.len() - before, usize::from(!idle_clock));
        }
        for (n, op) in journal.0.into_iter().enumerate() {
            let mut command = Command::decode(&replayed, op).unwrap();
            command.apply(&replayed, &mut Replayed(n as u64 + 1)).unwrap();
        }
        for id in ["c1", "c2", "c3"] {
            let key = CustomerKey::Id(id.into());
            assert_eq!(
                replayed.get_customer(&key).ok(),
                live.get_customer(&key).ok(),
                "{id}"
            );
        }
        let attrs = |s: &Store| -> Vec<(String, AttrType, String)> {
            let schema = s.schema();
            schema
                .attrs()
                .iter()
                .map(|a| (a.name.to_string(), a.ty, a.description.to_string()))
                .collect()
        };
        assert_eq!(attrs(&replayed), attrs(&live));
        assert_eq!(replayed.list_segments(), live.list_segments());
        assert_eq!(
            replayed.segment_info("vips", 100).unwrap(),
            live.segment_info("vips", 100).unwrap()
        );
        assert_eq!(replayed.list_families(), live.list_families());
        assert_eq!(
            live.list_families()
                .iter()
                .filter(|f| f.family.id == "tiers")
                .count(),
            1
        );
        let mut journal = Capture::default();
        delete_family().apply(&live, &mut journal).unwrap();
        let op = journal.0.pop().expect("a record");
        Command::decode(&replayed, op)
            .unwrap()
            .apply(&replayed, &mut Replayed(99))
            .unwrap();
        assert_eq!(replayed.list_families(), live.list_families());
        assert!(
            live.segment_info("tier.gold", 1).is_err(),
            "its members go with it"
        );
        // c1 matches but is excluded, c2 was included and erased, c3 was added by an activity.
        let vips = live.segment_info("vips", 100).unwrap();
        let lists = (vips.size, vips.exclude_ids, vips.include_ids);
        assert_eq!(lists, (1, vec!["c1".to_string()], vec!["c3".to_string()]));
    }

    /// A record (sequence 1) whose op field is `op`, encoded beforehand, read back as a message.
    fn record_holding(op: &EncodedOp) -> pb::Record {
        use prost::Message;
        let mut record = Vec::new();
        pb::Record {
            sequence: 1,
            time_micros: 5,
            op: None,
        }
        .encode(&mut record)
        .unwrap();
        record.extend_from_slice(op.as_bytes());
        pb::Record::decode(record.as_slice()).unwrap()
    }

    /// Customers c1 and c2 read the same from both stores, and ann@example.com is c1's.
    fn same_customers(replayed: &Store, direct: &Store) {
        for id in ["c1", "c2"] {
            let key = CustomerKey::Id(id.into());
            assert_eq!(
                replayed.get_customer(&key).unwrap(),
                direct.get_customer(&key).unwrap()
            );
        }
        assert_eq!(replayed.ordinal_of_email("ann@example.com"), Some(0));
    }

    #[test]
    fn customers_logged_as_received_replay_as_they_were_applied() {
        use crate::codec::pb as api;
        use prost::Message;
        let value = |kind| api::Value { kind: Some(kind) };
        let customers = [
            api::Customer {
                customer_id: "c1".into(),
                email: Some("Ann@Example.com".into()),
                attributes: [
                    (
                        "city".to_string(),
                        value(api::value::Kind::StringValue("Lyon".into())),
                    ),
                    ("household_size".to_string(), value(api::value::Kind::IntValue(3))),
                ]
                .into_iter()
                .collect(),
            },
            api::Customer {
                customer_id: "c2".into(),
                email: None,
                attributes: Default::default(),
            },
        ];
        let encoded: Vec<Vec<u8>> = customers.iter().map(Message::encode_to_vec).collect();
        let op = record::encode_upsert_customers(encoded.iter().map(Vec::as_slice));
        // The field decodes as the message it stands for.
        let record = record_holding(&op);
        let Some(Op::UpsertCustomers(u)) = &record.op else {
            panic!("not upsert_customers: {:?}", record.op)
        };
        assert_eq!(u.customers, encoded);

        let replayed = Store::new();
        replay(&replayed, record).unwrap();
        let direct = Store::new();
        let schema = direct.schema();
        let patches: Vec<CustomerPatch> = encoded
            .iter()
            .map(|c| crate::codec::wire::customer_patch(&schema, c).unwrap())
            .collect();
        direct.upsert(&patches, &mut crate::store::no_log).unwrap();
        same_customers(&replayed, &direct);

        // Bytes that are not a customer are data loss, not a panic.
        let bad = pb::Record {
            sequence: 2,
            time_micros: 5,
            op: Some(Op::UpsertCustomers(pb::UpsertCustomers {
                customers: vec![vec![0x0a, 0x05, b'x']],
            })),
        };
        let err = replay(&Store::new(), bad).unwrap_err().to_string();
        assert!(err.contains("customer 0 of a logged batch"), "{err}");
    }

    #[test]
    fn customer_columns_logged_as_received_replay_as_they_were_applied() {
        use crate::codec::pb as api;
        use api::attribute_column::Values;
        use prost::Message;
        let columns = api::CustomerColumns {
            customer_ids: vec!["c1".into(), "c2".into()],
            emails: vec!["ann@example.com".into(), String::new()],
            attributes: vec![
                api::AttributeColumn {
                    name: "household_size".into(),
                    missing: vec![0],
                    values: Some(Values::Ints(api::IntColumn { values: vec![4] })),
                },
                api::AttributeColumn {
                    name: "birth_date".into(),
                    missing: vec![],
                    values: Some(Values::Dates(api::IntColumn {
                        values: vec![-3_000, 7_000],
                    })),
                },
            ],
        };
        let bytes = columns.encode_to_vec();
        let op = record::encode_upsert_columns(&bytes);
        let record = record_holding(&op);
        assert_eq!(record.op, Some(Op::UpsertColumns(bytes.clone())));

        let replayed = Store::new();
        replay(&replayed, record).unwrap();
        let direct = Store::new();
        let patches = crate::codec::columns::column_patches(&direct.schema(), None, &columns).unwrap();
        direct.upsert(&patches, &mut crate::store::no_log).unwrap();
        same_customers(&replayed, &direct);

        // Bytes that are not customer columns are data loss, not a panic.
        let bad = pb::Record {
            sequence: 2,
            time_micros: 5,
            op: Some(Op::UpsertColumns(vec![0x0a, 0x05, b'x'])),
        };
        let err = replay(&Store::new(), bad).unwrap_err().to_string();
        assert!(err.contains("customer columns cannot be read"), "{err}");
    }
}
