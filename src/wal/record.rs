//! Domain operations → write-ahead log records ([`crate::engine::command`] reads them back).
//!
//! Attributes are logged by name and rules in the text form (which parses back to the same tree),
//! so a record means the same thing whatever ids the schema or registry hands out on replay.

use crate::columnar::schema::{AttrType, Schema};
use crate::columnar::value::Value;
use crate::persist::pb::{self, record::Op};
use crate::segment::family::Family;
use crate::segment::registry::SegmentDef;
use crate::segment::text;
use crate::store::input::{CustomerKey, CustomerPatch, OrderIn};
use crate::store::segments::SegmentUpdate;

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

/// The `upsert_customers` field of a record for a batch of customers given as the encoded
/// `Customer` messages they were received as: the log keeps the request's own bytes, so logging a
/// batch is a copy rather than an encoding.
pub fn encode_upsert_customers<'a>(
    customers: impl Iterator<Item = &'a [u8]> + Clone,
) -> crate::wal::EncodedOp {
    let inner: usize = customers.clone().map(|c| field_len(1, c.len())).sum();
    let mut out = Vec::with_capacity(field_len(15, inner));
    header(15, inner, &mut out);
    for c in customers {
        header(1, c.len(), &mut out);
        out.extend_from_slice(c);
    }
    debug_assert_eq!(out.len(), out.capacity());
    crate::wal::EncodedOp::from_bytes(out)
}

/// The `upsert_columns` field of a record for a batch of customers received as the encoded
/// `CustomerColumns` message `columns`: the log keeps the request's own bytes.
pub fn encode_upsert_columns(columns: &[u8]) -> crate::wal::EncodedOp {
    let mut out = Vec::with_capacity(field_len(16, columns.len()));
    header(16, columns.len(), &mut out);
    out.extend_from_slice(columns);
    crate::wal::EncodedOp::from_bytes(out)
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

/// Bytes of a length-delimited field holding `len` bytes.
fn field_len(tag: u32, len: usize) -> usize {
    prost::encoding::key_len(tag) + prost::encoding::encoded_len_varint(len as u64) + len
}

/// A length-delimited field's key and length.
fn header(tag: u32, len: usize, out: &mut Vec<u8>) {
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, out);
    prost::encoding::encode_varint(len as u64, out);
}
