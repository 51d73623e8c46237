//! Protobuf ↔ domain conversions. Field paths in errors are relative to the message converted;
//! callers prefix them (`customers[3]`) with [`Error::within`].

use crate::codec::pb;
use crate::codec::pb::value::Kind;
use crate::columnar::schema::{AttrDef, AttrType, Schema};
use crate::columnar::value::Value;
use crate::error::{Error, Result};
use crate::store::CustomerRecord;
use crate::store::input::{self, CustomerKey, CustomerPatch, OrderIn};
use crate::time;

/// A customer message as a patch, checked against the schema.
pub fn customer_patch(schema: &Schema, customer: pb::Customer) -> Result<CustomerPatch> {
    let pb::Customer {
        customer_id,
        email,
        attributes,
    } = customer;
    input::check_customer_id(&customer_id)?;
    if let Some(email) = email.as_deref().filter(|e| !e.is_empty()) {
        input::check_email(email)?;
    }
    let mut attrs = Vec::with_capacity(attributes.len());
    for (name, value) in attributes {
        let field = || format!("attributes[\"{name}\"]");
        let def = schema
            .get(&name)
            .ok_or_else(|| Error::invalid(field(), schema.unknown(&name)))?;
        let value = value_in(def, value).map_err(|e| e.within(&field()))?;
        attrs.push((def.id, value));
    }
    // Deterministic application order (and deterministic first error on replays).
    attrs.sort_unstable_by_key(|(id, _)| *id);
    Ok(CustomerPatch {
        customer_id,
        email,
        attrs,
    })
}

/// A protobuf value as a value of attribute `def`; `None` clears the attribute.
pub fn value_in(def: &AttrDef, value: pb::Value) -> Result<Option<Value>> {
    let Some(kind) = value.kind else {
        return Ok(None);
    };
    let mismatch = |got: &str| {
        Error::invalid(
            "",
            format!(
                "attribute `{}` takes `{}`, got `{got}`",
                def.name,
                expected_kind(def.ty)
            ),
        )
    };
    let v = match (def.ty, kind) {
        (AttrType::Bool, Kind::BoolValue(b)) => Value::Bool(b),
        (AttrType::Int, Kind::IntValue(i)) => Value::Int(i),
        (AttrType::Float, Kind::DoubleValue(f)) => {
            if !f.is_finite() {
                return Err(Error::invalid("", "must be a finite number"));
            }
            Value::Float(f)
        }
        (AttrType::Float, Kind::IntValue(i)) => Value::Float(i as f64),
        (AttrType::Money, Kind::IntValue(i)) => Value::Money(i),
        (AttrType::Date, Kind::DateValue(d)) => Value::Date(date_in(&d)?),
        (AttrType::Timestamp, Kind::TimestampValue(t)) => Value::Timestamp(timestamp_in(&t)?),
        (AttrType::Keyword, Kind::StringValue(s)) => {
            input::check_keyword(&s)?;
            Value::Keyword(s)
        }
        (AttrType::Keywords, Kind::ListValue(list)) => {
            input::check_keyword_list(list.values.iter())?;
            let mut items = list.values;
            items.sort_unstable();
            items.dedup();
            Value::Keywords(items)
        }
        (AttrType::Text, Kind::StringValue(s)) => {
            if s.len() > input::MAX_TEXT {
                return Err(Error::invalid(
                    "",
                    format!("longer than {} bytes", input::MAX_TEXT),
                ));
            }
            Value::Text(s)
        }
        (_, kind) => return Err(mismatch(kind_name(&kind))),
    };
    Ok(Some(v))
}

fn expected_kind(ty: AttrType) -> &'static str {
    match ty {
        AttrType::Bool => "bool_value",
        AttrType::Int | AttrType::Money => "int_value",
        AttrType::Float => "double_value",
        AttrType::Date => "date_value",
        AttrType::Timestamp => "timestamp_value",
        AttrType::Keyword | AttrType::Text => "string_value",
        AttrType::Keywords => "list_value",
    }
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::BoolValue(_) => "bool_value",
        Kind::IntValue(_) => "int_value",
        Kind::DoubleValue(_) => "double_value",
        Kind::StringValue(_) => "string_value",
        Kind::DateValue(_) => "date_value",
        Kind::TimestampValue(_) => "timestamp_value",
        Kind::ListValue(_) => "list_value",
    }
}

/// A `Date` message as days since the epoch.
pub fn date_in(d: &pb::Date) -> Result<i32> {
    time::days_from_civil(d.year, d.month, d.day).ok_or_else(|| {
        Error::invalid(
            "",
            format!(
                "invalid date {:04}-{:02}-{:02}: {}",
                d.year,
                d.month,
                d.day,
                time::no_such_date(d.year, d.month, d.day)
            ),
        )
    })
}

/// A `Timestamp` message as microseconds since the epoch.
pub fn timestamp_in(t: &prost_types::Timestamp) -> Result<i64> {
    time::micros_from_parts(t.seconds, t.nanos)
        .ok_or_else(|| Error::invalid("", "timestamp outside years 1 to 9999 or nanos outside 0..1e9"))
}

pub fn date_out(days: i32) -> pb::Date {
    let (year, month, day) = time::civil_from_days(days);
    pb::Date { year, month, day }
}

pub fn timestamp_out(micros: i64) -> prost_types::Timestamp {
    let (seconds, nanos) = time::parts_from_micros(micros);
    prost_types::Timestamp { seconds, nanos }
}

/// A domain value as a protobuf value.
pub fn value_out(value: Value) -> pb::Value {
    let kind = match value {
        Value::Bool(b) => Kind::BoolValue(b),
        Value::Int(i) | Value::Money(i) => Kind::IntValue(i),
        Value::Float(f) => Kind::DoubleValue(f),
        Value::Date(d) => Kind::DateValue(date_out(d)),
        Value::Timestamp(t) => Kind::TimestampValue(timestamp_out(t)),
        Value::Keyword(s) | Value::Text(s) => Kind::StringValue(s),
        Value::Keywords(values) => Kind::ListValue(pb::StringList { values }),
    };
    pb::Value { kind: Some(kind) }
}

/// A stored customer as a protobuf message.
pub fn customer_out(record: CustomerRecord) -> pb::Customer {
    let CustomerRecord {
        customer_id,
        email,
        attrs,
    } = record;
    pb::Customer {
        customer_id,
        email,
        attributes: attrs
            .into_iter()
            .map(|(name, v)| (name.to_string(), value_out(v)))
            .collect(),
    }
}

/// An order message as a domain order.
pub fn order_in(order: pb::Order) -> Result<OrderIn> {
    let pb::Order {
        order_id,
        customer_id,
        placed_at,
        amount_minor,
        promotion,
        categories,
        brands,
    } = order;
    let placed_at = placed_at
        .as_ref()
        .ok_or_else(|| Error::invalid("placed_at", "is required"))
        .and_then(|t| timestamp_in(t).map_err(|e| e.within("placed_at")))?;
    let order = OrderIn {
        order_id,
        customer_id,
        placed_at,
        amount_minor,
        promotion,
        categories,
        brands,
    };
    order.check()?;
    Ok(order)
}

/// The `key` oneof of get and delete requests.
pub fn customer_key_get(key: Option<pb::get_customer_request::Key>) -> Result<CustomerKey> {
    use pb::get_customer_request::Key;
    match key {
        Some(Key::CustomerId(id)) => Ok(CustomerKey::Id(id)),
        Some(Key::Email(email)) => Ok(CustomerKey::Email(email)),
        None => Err(Error::invalid("key", "one of customer_id or email is required")),
    }
}

pub fn customer_key_delete(key: Option<pb::delete_customer_request::Key>) -> Result<CustomerKey> {
    use pb::delete_customer_request::Key;
    match key {
        Some(Key::CustomerId(id)) => Ok(CustomerKey::Id(id)),
        Some(Key::Email(email)) => Ok(CustomerKey::Email(email)),
        None => Err(Error::invalid("key", "one of customer_id or email is required")),
    }
}

/// Checks a customer key's shape before it is looked up.
pub fn check_key(key: &CustomerKey) -> Result<()> {
    match key {
        CustomerKey::Id(id) => input::check_customer_id(id),
        CustomerKey::Email(email) => input::check_email(email),
    }
}

pub fn attr_type_in(ty: i32) -> Result<AttrType> {
    use pb::AttributeType as T;
    Ok(match T::try_from(ty) {
        Ok(T::Bool) => AttrType::Bool,
        Ok(T::Int) => AttrType::Int,
        Ok(T::Float) => AttrType::Float,
        Ok(T::Money) => AttrType::Money,
        Ok(T::Date) => AttrType::Date,
        Ok(T::Timestamp) => AttrType::Timestamp,
        Ok(T::Keyword) => AttrType::Keyword,
        Ok(T::Keywords) => AttrType::Keywords,
        Ok(T::Text) => AttrType::Text,
        Ok(T::Unspecified) | Err(_) => return Err(Error::invalid("type", "an attribute type is required")),
    })
}

pub fn attribute_out(def: &AttrDef) -> pb::Attribute {
    use pb::AttributeType as T;
    let ty = match def.ty {
        AttrType::Bool => T::Bool,
        AttrType::Int => T::Int,
        AttrType::Float => T::Float,
        AttrType::Money => T::Money,
        AttrType::Date => T::Date,
        AttrType::Timestamp => T::Timestamp,
        AttrType::Keyword => T::Keyword,
        AttrType::Keywords => T::Keywords,
        AttrType::Text => T::Text,
    };
    pb::Attribute {
        name: def.name.to_string(),
        r#type: ty as i32,
        description: def.description.to_string(),
        builtin: def.builtin,
        read_only: def.read_only,
    }
}
