//! Domain operations → write-ahead log records ([`crate::engine::command`] reads them back).
//!
//! Attributes are logged by name and rules in the text form (which parses back to the same tree),
//! so a record means the same thing whatever ids the schema or registry hands out on replay.

use crate::persist::pb::{self, record::Op};
use crate::segment::family::Family;
use crate::segment::ops::SegmentUpdate;
use crate::segment::registry::SegmentDef;
use crate::segment::text;
use crate::store::input::{CustomerKey, CustomerPatch, OrderIn};
use crate::store::schema::{AttrType, Schema};
use crate::store::value::Value;

fn value_out(v: &Value) -> pb::Value {
    use pb::value::Kind;
    let kind = match v {
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Int(i) => Kind::IntValue(*i),
        Value::Float(f) => Kind::FloatValue(*f),
        Value::Money(m) => Kind::Money(*m),
        Value::Date(d) => Kind::Date(*d),
        Value::Timestamp(t) => Kind::Timestamp(*t),
        Value::Keyword(s) => Kind::Keyword(s.clone()),
        Value::Keywords(items) => Kind::Keywords(pb::StringList {
            values: items.clone(),
        }),
        Value::Text(s) => Kind::Text(s.clone()),
    };
    pb::Value { kind: Some(kind) }
}

fn key_out(k: &CustomerKey) -> pb::Key {
    pb::Key {
        key: Some(match k {
            CustomerKey::Id(id) => pb::key::Key::CustomerId(id.clone()),
            CustomerKey::Email(e) => pb::key::Key::Email(e.clone()),
        }),
    }
}

pub fn upsert(schema: &Schema, batch: &[CustomerPatch]) -> Op {
    Op::Upsert(pb::Upsert {
        patches: batch
            .iter()
            .map(|p| pb::Patch {
                customer_id: p.customer_id.clone(),
                email: p.email.clone(),
                attrs: p
                    .attrs
                    .iter()
                    .map(|(id, v)| pb::Attr {
                        name: schema.attr(*id).name.to_string(),
                        value: v.as_ref().map(value_out),
                    })
                    .collect(),
            })
            .collect(),
    })
}

/// The `upsert` field of a record for `batch`, written straight from the patches: the same bytes
/// as encoding [`upsert`]'s message, without building it (no string is copied twice).
pub fn encode_upsert(schema: &Schema, batch: &[CustomerPatch]) -> crate::wal::EncodedOp {
    let patch_lens: Vec<usize> = batch.iter().map(|p| direct::patch_len(schema, p)).collect();
    let upsert_len: usize = patch_lens.iter().map(|&n| direct::field_len(1, n)).sum();
    let mut out = Vec::with_capacity(direct::field_len(3, upsert_len));
    direct::header(3, upsert_len, &mut out);
    for (p, &len) in batch.iter().zip(&patch_lens) {
        direct::header(1, len, &mut out);
        direct::patch(schema, p, &mut out);
    }
    debug_assert_eq!(out.len(), out.capacity());
    crate::wal::EncodedOp::from_bytes(out)
}

/// The `upsert_customers` field of a record for a batch of customers given as the encoded
/// `Customer` messages they were received as: the log keeps the request's own bytes, so logging a
/// batch is a copy rather than an encoding.
pub fn encode_upsert_customers<'a>(
    customers: impl Iterator<Item = &'a [u8]> + Clone,
) -> crate::wal::EncodedOp {
    let inner: usize = customers.clone().map(|c| direct::field_len(1, c.len())).sum();
    let mut out = Vec::with_capacity(direct::field_len(15, inner));
    direct::header(15, inner, &mut out);
    for c in customers {
        direct::header(1, c.len(), &mut out);
        out.extend_from_slice(c);
    }
    debug_assert_eq!(out.len(), out.capacity());
    crate::wal::EncodedOp::from_bytes(out)
}

/// The `upsert_columns` field of a record for a batch of customers received as the encoded
/// `CustomerColumns` message `columns`: the log keeps the request's own bytes.
pub fn encode_upsert_columns(columns: &[u8]) -> crate::wal::EncodedOp {
    let mut out = Vec::with_capacity(direct::field_len(16, columns.len()));
    direct::header(16, columns.len(), &mut out);
    out.extend_from_slice(columns);
    crate::wal::EncodedOp::from_bytes(out)
}

/// Protobuf encoding of the log's `Patch`, `Attr` and `Value` by hand (see [`encode_upsert`]).
mod direct {
    use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

    use crate::store::input::CustomerPatch;
    use crate::store::schema::Schema;
    use crate::store::value::Value;

    /// Bytes of a length-delimited field holding `len` bytes.
    pub fn field_len(tag: u32, len: usize) -> usize {
        key_len(tag) + encoded_len_varint(len as u64) + len
    }

    pub fn header(tag: u32, len: usize, out: &mut Vec<u8>) {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(len as u64, out);
    }

    fn string(tag: u32, s: &str, out: &mut Vec<u8>) {
        header(tag, s.len(), out);
        out.extend_from_slice(s.as_bytes());
    }

    fn varint(tag: u32, v: u64, out: &mut Vec<u8>) {
        encode_key(tag, WireType::Varint, out);
        encode_varint(v, out);
    }

    /// The `Value` message's bytes (its one `kind` field).
    fn value_len(v: &Value) -> usize {
        let varint_len = |tag: u32, v: u64| key_len(tag) + encoded_len_varint(v);
        match v {
            Value::Bool(b) => varint_len(1, u64::from(*b)),
            Value::Int(i) => varint_len(2, *i as u64),
            Value::Float(_) => key_len(3) + 8,
            Value::Money(m) => varint_len(4, *m as u64),
            Value::Date(d) => varint_len(5, i64::from(*d) as u64),
            Value::Timestamp(t) => varint_len(6, *t as u64),
            Value::Keyword(s) => field_len(7, s.len()),
            Value::Keywords(items) => field_len(8, items.iter().map(|s| field_len(1, s.len())).sum()),
            Value::Text(s) => field_len(9, s.len()),
        }
    }

    fn value(v: &Value, out: &mut Vec<u8>) {
        match v {
            Value::Bool(b) => varint(1, u64::from(*b), out),
            Value::Int(i) => varint(2, *i as u64, out),
            Value::Float(f) => {
                encode_key(3, WireType::SixtyFourBit, out);
                out.extend_from_slice(&f.to_le_bytes());
            }
            Value::Money(m) => varint(4, *m as u64, out),
            Value::Date(d) => varint(5, i64::from(*d) as u64, out),
            Value::Timestamp(t) => varint(6, *t as u64, out),
            Value::Keyword(s) => string(7, s, out),
            Value::Keywords(items) => {
                header(8, items.iter().map(|s| field_len(1, s.len())).sum(), out);
                for s in items {
                    string(1, s, out);
                }
            }
            Value::Text(s) => string(9, s, out),
        }
    }

    fn attr_len(name: &str, v: Option<&Value>) -> usize {
        let name = if name.is_empty() {
            0
        } else {
            field_len(1, name.len())
        };
        name + v.map_or(0, |v| field_len(2, value_len(v)))
    }

    pub fn patch_len(schema: &Schema, p: &CustomerPatch) -> usize {
        let id = if p.customer_id.is_empty() {
            0
        } else {
            field_len(1, p.customer_id.len())
        };
        let email = p.email.as_ref().map_or(0, |e| field_len(2, e.len()));
        let attrs: usize = p
            .attrs
            .iter()
            .map(|(a, v)| field_len(3, attr_len(&schema.attr(*a).name, v.as_ref())))
            .sum();
        id + email + attrs
    }

    pub fn patch(schema: &Schema, p: &CustomerPatch, out: &mut Vec<u8>) {
        if !p.customer_id.is_empty() {
            string(1, &p.customer_id, out);
        }
        if let Some(e) = &p.email {
            string(2, e, out);
        }
        for (a, v) in &p.attrs {
            let name = &schema.attr(*a).name;
            header(3, attr_len(name, v.as_ref()), out);
            if !name.is_empty() {
                string(1, name, out);
            }
            if let Some(v) = v {
                header(2, value_len(v), out);
                value(v, out);
            }
        }
    }
}

pub fn orders(orders: &[OrderIn]) -> Op {
    Op::Orders(pb::Orders {
        orders: orders
            .iter()
            .map(|o| pb::Order {
                order_id: o.order_id.clone(),
                customer_id: o.customer_id.clone(),
                placed_at: o.placed_at,
                amount_minor: o.amount_minor,
                promotion: o.promotion,
                categories: o.categories.clone(),
                brands: o.brands.clone(),
            })
            .collect(),
    })
}

pub fn delete(key: &CustomerKey) -> Op {
    Op::Delete(pb::Delete {
        key: Some(key_out(key)),
    })
}

pub fn define_attribute(name: &str, ty: AttrType, description: &str) -> Op {
    Op::DefineAttribute(pb::DefineAttribute {
        name: name.into(),
        r#type: ty.name().into(),
        description: description.into(),
    })
}

fn def_out(def: &SegmentDef) -> pb::SegmentDef {
    pb::SegmentDef {
        id: def.id.clone(),
        name: def.name.clone(),
        description: def.description.clone(),
        rule_text: def.rule.as_ref().map(text::print),
        include_accounts: def.include_accounts.clone(),
        exclude_accounts: def.exclude_accounts.clone(),
        allow_activities: def.allow_activities,
    }
}

pub fn create_segment(def: &SegmentDef, include: &[String], exclude: &[String]) -> Op {
    Op::CreateSegment(pb::CreateSegment {
        def: Some(def_out(def)),
        include_ids: include.to_vec(),
        exclude_ids: exclude.to_vec(),
    })
}

pub fn update_segment(id: &str, u: &SegmentUpdate) -> Op {
    let strings = |v: &Option<Vec<String>>| {
        v.as_ref().map(|values| pb::OptionalStrings {
            values: values.clone(),
        })
    };
    Op::UpdateSegment(pb::UpdateSegment {
        id: id.into(),
        name: u.name.clone(),
        description: u.description.clone(),
        rule: u.rule.as_ref().map(|r| pb::RuleChange {
            rule_text: r.as_ref().map(text::print),
        }),
        include_ids: strings(&u.include_ids),
        exclude_ids: strings(&u.exclude_ids),
        include_accounts: strings(&u.include_accounts),
        exclude_accounts: strings(&u.exclude_accounts),
        allow_activities: u.allow_activities,
    })
}

pub fn delete_segment(id: &str) -> Op {
    Op::DeleteSegment(pb::DeleteSegment { id: id.into() })
}

pub fn set_listed(segment_id: &str, keys: &[CustomerKey], add: bool, activity: Option<&str>) -> Op {
    Op::SetListed(pb::SetListed {
        segment_id: segment_id.into(),
        keys: keys.iter().map(key_out).collect(),
        add,
        activity: activity.is_some(),
        activity_id: activity.unwrap_or_default().into(),
    })
}

pub fn create_family(f: &Family) -> Op {
    Op::CreateFamily(pb::CreateFamily {
        id: f.id.clone(),
        name: f.name.clone(),
        description: f.description.clone(),
        members: f
            .members
            .iter()
            .map(|m| pb::FamilyMember {
                segment_id: m.segment_id.clone(),
                name: m.name.clone(),
                rule_text: m.rule.as_ref().map(text::print),
            })
            .collect(),
    })
}

pub fn delete_family(id: &str) -> Op {
    Op::DeleteFamily(pb::DeleteFamily { id: id.into() })
}

pub fn reclassify(as_of: i64) -> Op {
    Op::Reclassify(pb::Reclassify { as_of_micros: as_of })
}

pub fn advance_time(since: Option<i64>) -> Op {
    Op::AdvanceTime(pb::AdvanceTime { since_micros: since })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::EncodedOp;

    #[test]
    fn direct_upsert_encoding_matches_the_message() {
        let schema = Schema::builtin()
            .with_attribute("score", AttrType::Float, "")
            .unwrap()
            .with_attribute("notes", AttrType::Text, "")
            .unwrap()
            .with_attribute("spend", AttrType::Money, "")
            .unwrap();
        let id = |name: &str| schema.get(name).unwrap().id;
        let values = vec![
            (id("vip"), Some(Value::Bool(true))),
            (id("sms_opt_in"), Some(Value::Bool(false))),
            (id("household_size"), Some(Value::Int(-3))),
            (id("household_size"), Some(Value::Int(0))),
            (id("score"), Some(Value::Float(-0.5))),
            (id("spend"), Some(Value::Money(123_456_789_012))),
            (id("birth_date"), Some(Value::Date(-4000))),
            (id("registered_at"), Some(Value::Timestamp(1_700_000_000_000_000))),
            (id("city"), Some(Value::Keyword("Lyon".into()))),
            (id("city"), Some(Value::Keyword(String::new()))),
            (
                id("tags"),
                Some(Value::Keywords(vec!["golf".into(), "ski".into()])),
            ),
            (id("tags"), Some(Value::Keywords(vec![]))),
            (id("notes"), Some(Value::Text("é".repeat(200)))),
            (id("region"), None),
        ];
        let batch = [
            CustomerPatch {
                customer_id: "c1".into(),
                email: Some("a@example.com".into()),
                attrs: values.clone(),
            },
            CustomerPatch {
                customer_id: "c2".into(),
                email: Some(String::new()),
                attrs: vec![],
            },
            CustomerPatch {
                customer_id: "c3".repeat(60),
                email: None,
                attrs: values.into_iter().rev().collect(),
            },
        ];
        for batch in [&batch[..], &[]] {
            let expected = EncodedOp::new(&upsert(&schema, batch));
            assert_eq!(encode_upsert(&schema, batch).as_bytes(), expected.as_bytes());
        }
    }
}
