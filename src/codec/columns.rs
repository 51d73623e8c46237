//! `CustomerColumns`: a batch of customers given column by column, read in place into the
//! [`ColumnBatch`] the writer applies.
//!
//! A column names its attribute once for the whole batch, so the work per value is the value's
//! own check; the result means what the same customers sent as `Customer` messages mean (each value
//! passes the checks [`convert::value_in`] makes: the same input checks and ranges, the same
//! messages; the property tests in `api::wire` compare the two). Strings are not copied: they stay
//! spans of the received bytes. Errors about one customer name its row as `customers[i]`, errors
//! about a whole column name it as `columns.attributes[j]`.

use bytes::Bytes;
use prost::encoding::{self, DecodeContext, WireType};

use crate::codec::pb::{self, attribute_column::Values, value::Kind};
use crate::codec::tags::{attribute_column, column_values, columns, string_column, string_list};
use crate::codec::wire::{Malformed, delimited};
use crate::codec::{Limits, convert};
use crate::columnar::schema::{AttrDef, AttrType, MAX_ATTRIBUTES, Schema};
use crate::error::{Error, Result};
use crate::store::batch::{AttrColumn, Coded, ColumnBatch, ColumnValues, Strs};
use crate::store::input;
use crate::time;

/// Every customer of `columns` as a patch checked against `schema`, or the first failure; the
/// number of customers is checked against `limits` first (for tests: the server reads the
/// received bytes with [`column_batch`]).
#[cfg(test)]
pub(crate) fn column_patches(
    schema: &Schema,
    limits: Option<&Limits>,
    columns: &pb::CustomerColumns,
) -> Result<Vec<input::CustomerPatch>> {
    use prost::Message;
    let bytes = Bytes::from(columns.encode_to_vec());
    Ok(column_batch(schema, limits, &bytes)?.patches(schema))
}

/// An encoded `CustomerColumns` checked against `schema` into the batch the writer applies, or
/// the first failure; the number of customers is checked against `limits` first. Its strings stay
/// in `bytes`.
pub fn column_batch(schema: &Schema, limits: Option<&Limits>, bytes: &Bytes) -> Result<ColumnBatch> {
    let max = limits.map_or(usize::MAX, |l| l.max_batch);
    let Read {
        ids,
        emails,
        attributes,
    } = read(bytes, max).map_err(|e| match e {
        Malformed::TooMany { field, max } => Error::invalid(
            format!("columns.{field}"),
            format!("more than the limit of {max} per message"),
        ),
        e => Error::invalid("columns", format!("malformed CustomerColumns message: {e}")),
    })?;
    let n = ids.len();
    if let Some(limits) = limits {
        limits.check_batch("columns.customer_ids", n)?;
    }
    if !emails.is_empty() && emails.len() != n {
        return Err(Error::invalid(
            "columns.emails",
            format!(
                "{} e-mails for {n} customers (give none or one per customer)",
                emails.len()
            ),
        ));
    }
    // Columns in attribute order, as the batch keeps them.
    let mut resolved: Vec<(&AttrDef, usize, RawColumn<'_>)> = Vec::with_capacity(attributes.len());
    for (j, column) in attributes.into_iter().enumerate() {
        let field = || format!("columns.attributes[{j}]");
        let def = schema
            .get(column.name)
            .ok_or_else(|| Error::invalid(field(), schema.unknown(column.name)))?;
        if let Some((_, first, _)) = resolved.iter().find(|(d, _, _)| d.id == def.id) {
            return Err(Error::invalid(
                field(),
                format!(
                    "attribute `{}` has another column (columns.attributes[{first}])",
                    def.name
                ),
            ));
        }
        if def.read_only {
            return Err(Error::invalid(
                field(),
                format!(
                    "attribute `{}` is maintained by RecordOrders and cannot be set",
                    def.name
                ),
            ));
        }
        check_shape(def, n, &column).map_err(|e| e.within(&field()))?;
        resolved.push((def, j, column));
    }
    resolved.sort_unstable_by_key(|(def, _, _)| def.id);

    for (i, customer_id) in ids.iter().enumerate() {
        let within = |e: Error| e.within(&format!("customers[{i}]"));
        input::check_customer_id(customer_id).map_err(within)?;
        if i < emails.len() && !emails.get(i).is_empty() {
            input::check_email(emails.get(i)).map_err(within)?;
        }
    }
    let mut out = ColumnBatch {
        ids,
        emails,
        columns: Vec::with_capacity(resolved.len()),
    };
    for (def, j, column) in resolved {
        let values = column_values(
            def,
            j,
            &column.missing,
            column.values.expect("the shape check found values"),
        )?;
        out.columns.push(AttrColumn {
            attr: def.id,
            missing: column.missing,
            values,
        });
    }
    Ok(out)
}

/// A column's values checked as `Value` messages holding them are; an error names the row of the
/// first bad one (or, for a distinct string no row picks, the string: column `j`).
fn column_values(def: &AttrDef, j: usize, missing: &[u32], values: RawValues) -> Result<ColumnValues> {
    let within = |k: usize, e: Error| {
        let row = nth_present(missing, k);
        e.within(&format!("customers[{row}].attributes[\"{}\"]", def.name))
    };
    let check_all = |n: usize, check: &dyn Fn(usize) -> Result<()>| {
        (0..n).try_for_each(|k| check(k).map_err(|e| within(k, e)))
    };
    Ok(match (def.ty, values) {
        (AttrType::Bool, RawValues::Bools(v)) => ColumnValues::Bool(v),
        (AttrType::Int | AttrType::Money, RawValues::Ints(v)) => ColumnValues::I64(v),
        (AttrType::Timestamp, RawValues::Timestamps(v)) => {
            check_all(v.len(), &|k| timestamp(v[k]).map(drop))?;
            ColumnValues::I64(v)
        }
        (AttrType::Float, RawValues::Doubles(v)) => {
            check_all(v.len(), &|k| finite(v[k]))?;
            ColumnValues::F64(v)
        }
        (AttrType::Float, RawValues::Ints(v)) => ColumnValues::F64(v.into_iter().map(|v| v as f64).collect()),
        (AttrType::Date, RawValues::Dates(v)) => {
            let mut days = Vec::with_capacity(v.len());
            for (k, &d) in v.iter().enumerate() {
                days.push(date(d).map_err(|e| within(k, e))?);
            }
            ColumnValues::I32(days)
        }
        (AttrType::Keyword, RawValues::Strings(v)) => {
            check_strings(&v, j, &within, input::check_keyword)?;
            ColumnValues::Keyword(v)
        }
        (AttrType::Text, RawValues::Strings(v)) => {
            check_strings(&v, j, &within, text)?;
            ColumnValues::Text(if v.picks.is_empty() {
                v.strings
            } else {
                v.strings.pick(&v.picks)
            })
        }
        (AttrType::Keywords, RawValues::Lists { mut items, mut ends }) => {
            let mut start = 0;
            for (k, &end) in ends.iter().enumerate() {
                input::check_keyword_list((start..end as usize).map(|j| items.get(j)))
                    .map_err(|e| within(k, e))?;
                start = end as usize;
            }
            // As a `Value` message's list: each set sorted, without repeats.
            items.sort_sets(&mut ends);
            ColumnValues::Keywords {
                items: Coded::plain(items),
                ends,
            }
        }
        (_, values) => unreachable!(
            "the shape check let {} through for {}",
            values.kind_name(),
            def.ty.name()
        ),
    })
}

/// Checks a column's strings: each distinct one once when they are dictionary-encoded, after
/// every value's position among them. An error names the first value with a bad string
/// (`within`), or the string itself in column `j` when no value picks one.
fn check_strings(
    v: &Coded,
    j: usize,
    within: &dyn Fn(usize, Error) -> Error,
    check: impl Fn(&str) -> Result<()>,
) -> Result<()> {
    if v.picks.is_empty() {
        return (0..v.strings.len()).try_for_each(|k| check(v.strings.get(k)).map_err(|e| within(k, e)));
    }
    let distinct = v.strings.len();
    if let Some(k) = v.picks.iter().position(|&p| p as usize >= distinct) {
        return Err(within(
            k,
            Error::invalid(
                "",
                format!(
                    "index {} is past the {distinct} strings of columns.attributes[{j}].strings.values",
                    v.picks[k]
                ),
            ),
        ));
    }
    let mut bad: Vec<(u32, Error)> = (0..distinct)
        .filter_map(|d| check(v.strings.get(d)).err().map(|e| (d as u32, e)))
        .collect();
    if bad.is_empty() {
        return Ok(());
    }
    let first = v
        .picks
        .iter()
        .enumerate()
        .find_map(|(k, p)| bad.iter().position(|(d, _)| d == p).map(|at| (k, at)));
    Err(match first {
        Some((k, at)) => within(k, bad.swap_remove(at).1),
        None => {
            let (d, e) = bad.swap_remove(0);
            e.within(&format!("columns.attributes[{j}].strings.values[{d}]"))
        }
    })
}

/// A `CustomerColumns` message read in place: its strings are spans of the received bytes.
struct Read<'a> {
    ids: Strs,
    emails: Strs,
    attributes: Vec<RawColumn<'a>>,
}

/// An `AttributeColumn` as read.
struct RawColumn<'a> {
    name: &'a str,
    missing: Vec<u32>,
    values: Option<RawValues>,
}

/// The `values` of an `AttributeColumn`, by field.
enum RawValues {
    Bools(Vec<bool>),
    Ints(Vec<i64>),
    Doubles(Vec<f64>),
    Dates(Vec<i64>),
    Timestamps(Vec<i64>),
    /// One string per value, or distinct strings and the value's picks among them.
    Strings(Coded),
    /// Value `k` is `items[ends[k - 1]..ends[k]]`.
    Lists {
        items: Strs,
        ends: Vec<u32>,
    },
}

impl RawValues {
    /// The empty values of oneof field `tag` (`bools` to `lists`).
    fn empty(tag: u32, buf: &Bytes) -> RawValues {
        match tag {
            attribute_column::BOOLS => RawValues::Bools(Vec::new()),
            attribute_column::INTS => RawValues::Ints(Vec::new()),
            attribute_column::DOUBLES => RawValues::Doubles(Vec::new()),
            attribute_column::DATES => RawValues::Dates(Vec::new()),
            attribute_column::TIMESTAMPS => RawValues::Timestamps(Vec::new()),
            attribute_column::STRINGS => RawValues::Strings(Coded::plain(Strs::over(buf.clone()))),
            _ => RawValues::Lists {
                items: Strs::over(buf.clone()),
                ends: Vec::new(),
            },
        }
    }

    /// The oneof field it was read from.
    fn tag(&self) -> u32 {
        match self {
            RawValues::Bools(_) => attribute_column::BOOLS,
            RawValues::Ints(_) => attribute_column::INTS,
            RawValues::Doubles(_) => attribute_column::DOUBLES,
            RawValues::Dates(_) => attribute_column::DATES,
            RawValues::Timestamps(_) => attribute_column::TIMESTAMPS,
            RawValues::Strings(_) => attribute_column::STRINGS,
            RawValues::Lists { .. } => attribute_column::LISTS,
        }
    }

    fn len(&self) -> usize {
        match self {
            RawValues::Bools(v) => v.len(),
            RawValues::Ints(v) | RawValues::Dates(v) | RawValues::Timestamps(v) => v.len(),
            RawValues::Doubles(v) => v.len(),
            RawValues::Strings(v) => v.len(),
            RawValues::Lists { ends, .. } => ends.len(),
        }
    }

    /// The `values` field's name.
    fn kind_name(&self) -> &'static str {
        match self {
            RawValues::Bools(_) => "bools",
            RawValues::Ints(_) => "ints",
            RawValues::Doubles(_) => "doubles",
            RawValues::Dates(_) => "dates",
            RawValues::Timestamps(_) => "timestamps",
            RawValues::Strings(_) => "strings",
            RawValues::Lists { .. } => "lists",
        }
    }

    /// Merges one occurrence of its field (a `BoolColumn`, `IntColumn`, ... message): repeated
    /// values add up, as protobuf merges a message field given twice.
    /// No more than `max` values (and list items per value allowed) are taken: see [`read`].
    fn merge(&mut self, bytes: &Bytes, mut msg: &[u8], max: usize) -> std::result::Result<(), Malformed> {
        let ctx = DecodeContext::default;
        const FIELD: &str = "attributes.values";
        while !msg.is_empty() {
            let (tag, wire_type) = encoding::decode_key(&mut msg)?;
            if let (RawValues::Strings(v), string_column::INDEXES) = (&mut *self, tag) {
                reserve_packed(&mut v.picks, wire_type, msg, 1, max, FIELD)?;
                encoding::uint32::merge_repeated(wire_type, &mut v.picks, &mut msg, ctx())?;
                continue;
            }
            // `values` is field 1 of every kind's message (`string_column::VALUES` too).
            if tag != column_values::VALUES {
                encoding::skip_field(wire_type, tag, &mut msg, ctx())?;
                continue;
            }
            match self {
                RawValues::Bools(v) => {
                    reserve_packed(v, wire_type, msg, 1, max, FIELD)?;
                    encoding::bool::merge_repeated(wire_type, v, &mut msg, ctx())?
                }
                RawValues::Ints(v) | RawValues::Dates(v) | RawValues::Timestamps(v) => {
                    reserve_packed(v, wire_type, msg, 1, max, FIELD)?;
                    encoding::int64::merge_repeated(wire_type, v, &mut msg, ctx())?
                }
                RawValues::Doubles(v) => {
                    reserve_packed(v, wire_type, msg, 8, max, FIELD)?;
                    encoding::double::merge_repeated(wire_type, v, &mut msg, ctx())?
                }
                RawValues::Strings(v) => {
                    encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
                    if v.strings.len() >= max {
                        return Err(Malformed::TooMany { field: FIELD, max });
                    }
                    v.strings.push(span(bytes, delimited(&mut msg)?))?;
                }
                RawValues::Lists { items, ends } => {
                    encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
                    if ends.len() >= max {
                        return Err(Malformed::TooMany { field: FIELD, max });
                    }
                    let mut list = delimited(&mut msg)?;
                    let max_items = max.saturating_mul(input::MAX_LIST_ITEMS);
                    while !list.is_empty() {
                        let (tag, wire_type) = encoding::decode_key(&mut list)?;
                        if tag == string_list::VALUES {
                            encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
                            if items.len() >= max_items {
                                return Err(Malformed::TooMany {
                                    field: FIELD,
                                    max: max_items,
                                });
                            }
                            items.push(span(bytes, delimited(&mut list)?))?;
                        } else {
                            encoding::skip_field(wire_type, tag, &mut list, ctx())?;
                        }
                    }
                    ends.push(u32::try_from(items.len()).map_err(|_| Malformed::Truncated)?);
                }
            }
        }
        Ok(())
    }
}

/// Reads an encoded `CustomerColumns` as protobuf decoding would (unknown fields skipped,
/// repeated scalars packed or not, a `values` field given twice merged when of the same kind and
/// replaced when not, the last `name` kept), its strings left in `bytes`.
///
/// No field may hold more than `max` items (customers, a column's values or missing rows), nor
/// the message more columns than attributes can exist: any valid message fits, and a crafted
/// one is refused before its items are decoded, so what it makes the server hold is bounded by
/// the limits rather than by its size (a packed 1-byte integer decodes to 8).
fn read(bytes: &Bytes, max: usize) -> std::result::Result<Read<'_>, Malformed> {
    let mut out = Read {
        ids: Strs::over(bytes.clone()),
        emails: Strs::over(bytes.clone()),
        attributes: Vec::new(),
    };
    let mut buf: &[u8] = bytes;
    while !buf.is_empty() {
        let (tag, wire_type) = encoding::decode_key(&mut buf)?;
        match tag {
            columns::CUSTOMER_IDS | columns::EMAILS => {
                encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
                let (to, field) = if tag == columns::CUSTOMER_IDS {
                    (&mut out.ids, "customer_ids")
                } else {
                    (&mut out.emails, "emails")
                };
                if to.len() >= max {
                    return Err(Malformed::TooMany { field, max });
                }
                to.push(span(bytes, delimited(&mut buf)?))?;
            }
            columns::ATTRIBUTES => {
                encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
                if out.attributes.len() >= MAX_ATTRIBUTES {
                    return Err(Malformed::TooMany {
                        field: "attributes",
                        max: MAX_ATTRIBUTES,
                    });
                }
                let column = read_column(bytes, delimited(&mut buf)?, max)?;
                out.attributes.push(column);
            }
            _ => encoding::skip_field(wire_type, tag, &mut buf, DecodeContext::default())?,
        }
    }
    Ok(out)
}

fn read_column<'a>(
    bytes: &Bytes,
    mut msg: &'a [u8],
    max: usize,
) -> std::result::Result<RawColumn<'a>, Malformed> {
    let mut column = RawColumn {
        name: "",
        missing: Vec::new(),
        values: None,
    };
    while !msg.is_empty() {
        let (tag, wire_type) = encoding::decode_key(&mut msg)?;
        match tag {
            attribute_column::NAME => {
                encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
                column.name = std::str::from_utf8(delimited(&mut msg)?).map_err(|_| Malformed::NotUtf8)?;
            }
            attribute_column::MISSING => {
                reserve_packed(&mut column.missing, wire_type, msg, 1, max, "attributes.missing")?;
                encoding::uint32::merge_repeated(
                    wire_type,
                    &mut column.missing,
                    &mut msg,
                    DecodeContext::default(),
                )?
            }
            attribute_column::BOOLS..=attribute_column::LISTS => {
                encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
                let field = delimited(&mut msg)?;
                let values = match &mut column.values {
                    Some(v) if v.tag() == tag => v,
                    other => other.insert(RawValues::empty(tag, bytes)),
                };
                values.merge(bytes, field, max)?;
            }
            _ => encoding::skip_field(wire_type, tag, &mut msg, DecodeContext::default())?,
        }
    }
    Ok(column)
}

/// Before a repeated scalar field at the start of `msg` is merged into `v`: refuses it if `v` would
/// then hold more than `max` items, and for a field long enough to, reserves room for exactly what
/// it adds (so a vector never doubles past what the message holds). `width` is the bytes of a
/// fixed-width item (8 for a double), 1 for a varint (counted by its last bytes).
fn reserve_packed<T>(
    v: &mut Vec<T>,
    wire_type: WireType,
    msg: &[u8],
    width: usize,
    max: usize,
    field: &'static str,
) -> std::result::Result<(), Malformed> {
    if wire_type != WireType::LengthDelimited {
        return if v.len() < max {
            Ok(())
        } else {
            Err(Malformed::TooMany { field, max })
        };
    }
    let mut peek = msg;
    let packed = delimited(&mut peek)?;
    // An item takes at least `width` bytes: a field that cannot exceed the limit (every field
    // of a valid batch, measured: counting them cost a columns batch 8%) is merged as it is.
    if v.len().saturating_add(packed.len() / width) <= max {
        return Ok(());
    }
    let adds = if width == 1 {
        packed.iter().filter(|&&b| b < 0x80).count()
    } else {
        packed.len() / width
    };
    if v.len().saturating_add(adds) > max {
        return Err(Malformed::TooMany { field, max });
    }
    v.reserve_exact(adds);
    Ok(())
}

/// Where `part` (a slice of `bytes`) lies in it.
fn span(bytes: &Bytes, part: &[u8]) -> std::ops::Range<usize> {
    let start = part.as_ptr() as usize - bytes.as_ptr() as usize;
    start..start + part.len()
}

/// The row of the `k`th value of a column whose rows `missing` have none.
fn nth_present(missing: &[u32], k: usize) -> usize {
    let mut row = k;
    for &m in missing {
        if m as usize <= row {
            row += 1;
        } else {
            break;
        }
    }
    row
}

/// `customers` given column by column, meaning what they mean as messages; `None` when that
/// cannot be said in columns: a value that clears an attribute, an e-mail removed with `""`, an
/// attribute given as two kinds (ints and doubles) or an invalid date or timestamp.
pub fn to_columns(customers: &[pb::Customer]) -> Option<pb::CustomerColumns> {
    let mut out = pb::CustomerColumns {
        customer_ids: customers.iter().map(|c| c.customer_id.clone()).collect(),
        ..Default::default()
    };
    if customers.iter().any(|c| c.email.is_some()) {
        for c in customers {
            match c.email.as_deref() {
                Some("") => return None,
                email => out.emails.push(email.unwrap_or_default().to_string()),
            }
        }
    }
    let mut index: std::collections::BTreeMap<&str, usize> = Default::default();
    for (row, c) in customers.iter().enumerate() {
        for (name, value) in &c.attributes {
            let j = *index.entry(name).or_insert_with(|| {
                out.attributes.push(pb::AttributeColumn {
                    name: name.clone(),
                    ..Default::default()
                });
                out.attributes.len() - 1
            });
            let column = &mut out.attributes[j];
            let filled = column.missing.len() + values_len(column.values.as_ref());
            column.missing.extend(filled as u32..row as u32);
            push_value(&mut column.values, value.kind.clone()?)?;
        }
    }
    for column in &mut out.attributes {
        let filled = column.missing.len() + values_len(column.values.as_ref());
        column.missing.extend(filled as u32..customers.len() as u32);
        if let Some(Values::Strings(strings)) = &mut column.values {
            dictionary_encode(strings);
        }
    }
    Some(out)
}

/// Gives each distinct string of a column once, with every value's position among them, when
/// that takes fewer bytes (see `StringColumn`).
pub fn dictionary_encode(column: &mut pb::StringColumn) {
    use prost::encoding::encoded_len_varint;
    if !column.indexes.is_empty() {
        return;
    }
    let mut position: std::collections::HashMap<&str, u32> = Default::default();
    let mut distinct: Vec<&str> = Vec::new();
    let indexes: Vec<u32> = column
        .values
        .iter()
        .map(|v| {
            *position.entry(v).or_insert_with(|| {
                distinct.push(v);
                distinct.len() as u32 - 1
            })
        })
        .collect();
    let field = |s: &&str| 1 + encoded_len_varint(s.len() as u64) + s.len();
    let plain: usize = column.values.iter().map(|v| field(&v.as_str())).sum();
    let packed: usize = indexes.iter().map(|&i| encoded_len_varint(u64::from(i))).sum();
    let encoded = distinct.iter().map(field).sum::<usize>() + 1 + encoded_len_varint(packed as u64) + packed;
    if encoded < plain {
        let distinct: Vec<String> = distinct.into_iter().map(str::to_string).collect();
        column.values = distinct;
        column.indexes = indexes;
    }
}

fn values_len(values: Option<&Values>) -> usize {
    match values {
        None => 0,
        Some(Values::Bools(c)) => c.values.len(),
        Some(Values::Ints(c) | Values::Dates(c) | Values::Timestamps(c)) => c.values.len(),
        Some(Values::Doubles(c)) => c.values.len(),
        Some(Values::Strings(c)) => c.values.len(),
        Some(Values::Lists(c)) => c.values.len(),
    }
}

/// Appends one value to a column, which takes the kind of its first value; `None` when the value
/// is of another kind or is not a valid date or timestamp.
fn push_value(values: &mut Option<Values>, kind: Kind) -> Option<()> {
    let values = values.get_or_insert_with(|| match &kind {
        Kind::BoolValue(_) => Values::Bools(Default::default()),
        Kind::IntValue(_) => Values::Ints(Default::default()),
        Kind::DoubleValue(_) => Values::Doubles(Default::default()),
        Kind::StringValue(_) => Values::Strings(Default::default()),
        Kind::DateValue(_) => Values::Dates(Default::default()),
        Kind::TimestampValue(_) => Values::Timestamps(Default::default()),
        Kind::ListValue(_) => Values::Lists(Default::default()),
    });
    match (values, kind) {
        (Values::Bools(c), Kind::BoolValue(v)) => c.values.push(v),
        (Values::Ints(c), Kind::IntValue(v)) => c.values.push(v),
        (Values::Doubles(c), Kind::DoubleValue(v)) => c.values.push(v),
        (Values::Strings(c), Kind::StringValue(v)) => c.values.push(v),
        (Values::Lists(c), Kind::ListValue(v)) => c.values.push(v),
        (Values::Dates(c), Kind::DateValue(d)) => c.values.push(i64::from(convert::date_in(&d).ok()?)),
        (Values::Timestamps(c), Kind::TimestampValue(t)) => c.values.push(convert::timestamp_in(&t).ok()?),
        _ => return None,
    }
    Some(())
}

/// Checks that a column's values fit its attribute's type and that it gives one value for each
/// row it does not list as missing.
fn check_shape(def: &AttrDef, n: usize, column: &RawColumn<'_>) -> Result<()> {
    let Some(values) = &column.values else {
        return Err(Error::invalid("values", "no values given"));
    };
    let (kind, count) = (values.kind_name(), values.len());
    if !accepted(def.ty).contains(&kind) {
        return Err(Error::invalid(
            "values",
            format!(
                "attribute `{}` is {}: expected {}, got {kind}",
                def.name,
                def.ty.name(),
                accepted(def.ty).join(" or ")
            ),
        ));
    }
    let mut previous: Option<u32> = None;
    for (k, &row) in column.missing.iter().enumerate() {
        if row as usize >= n || previous.is_some_and(|p| p >= row) {
            return Err(Error::invalid(
                format!("missing[{k}]"),
                format!("row {row} is not ascending within the {n} customers"),
            ));
        }
        previous = Some(row);
    }
    let wanted = n - column.missing.len();
    if count != wanted {
        return Err(Error::invalid(
            "values",
            format!(
                "{count} values for {n} customers with {} missing (expected {wanted})",
                column.missing.len()
            ),
        ));
    }
    Ok(())
}

/// The `values` fields a column of an attribute of type `ty` may use.
fn accepted(ty: AttrType) -> &'static [&'static str] {
    match ty {
        AttrType::Bool => &["bools"],
        AttrType::Int | AttrType::Money => &["ints"],
        AttrType::Float => &["doubles", "ints"],
        AttrType::Date => &["dates"],
        AttrType::Timestamp => &["timestamps"],
        AttrType::Keyword | AttrType::Text => &["strings"],
        AttrType::Keywords => &["lists"],
    }
}

/// A float as `Value` messages take it.
fn finite(x: f64) -> Result<()> {
    if x.is_finite() {
        Ok(())
    } else {
        Err(Error::invalid("", "must be a finite number"))
    }
}

/// A text as `Value` messages take it.
fn text(s: &str) -> Result<()> {
    if s.len() > input::MAX_TEXT {
        return Err(Error::invalid(
            "",
            format!("longer than {} bytes", input::MAX_TEXT),
        ));
    }
    Ok(())
}

fn date(days: i64) -> Result<i32> {
    let first = time::days_from_civil(time::MIN_YEAR, 1, 1).expect("valid date");
    let last = time::days_from_civil(time::MAX_YEAR, 12, 31).expect("valid date");
    match i32::try_from(days) {
        Ok(d) if (first..=last).contains(&d) => Ok(d),
        _ => Err(Error::invalid(
            "",
            format!("{days} days since 1970-01-01 is outside years 1 to 9999"),
        )),
    }
}

fn timestamp(micros: i64) -> Result<i64> {
    if (time::MIN_TIMESTAMP_MICROS..=time::MAX_TIMESTAMP_MICROS).contains(&micros) {
        Ok(micros)
    } else {
        Err(Error::invalid(
            "",
            format!("{micros} microseconds since the epoch is outside years 1 to 9999"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::columnar::value::Value;

    fn ints(values: Vec<i64>) -> Option<Values> {
        Some(Values::Ints(pb::IntColumn { values }))
    }

    fn strings(values: &[&str]) -> Option<Values> {
        Some(Values::Strings(pb::StringColumn {
            values: values.iter().map(|s| s.to_string()).collect(),
            indexes: vec![],
        }))
    }

    fn column(name: &str, missing: Vec<u32>, values: Option<Values>) -> pb::AttributeColumn {
        pb::AttributeColumn {
            name: name.into(),
            missing,
            values,
        }
    }

    fn batch(attributes: Vec<pb::AttributeColumn>) -> pb::CustomerColumns {
        pb::CustomerColumns {
            customer_ids: vec!["a".into(), "b".into(), "c".into()],
            emails: vec!["a@x.fr".into(), String::new(), "c@x.fr".into()],
            attributes,
        }
    }

    fn error(columns: pb::CustomerColumns) -> String {
        let schema = Schema::builtin();
        column_patches(&schema, None, &columns).unwrap_err().to_string()
    }

    #[test]
    fn missing_rows_keep_their_value_and_attributes_come_sorted() {
        let schema = Schema::builtin();
        let patches = column_patches(
            &schema,
            None,
            &batch(vec![
                column("household_size", vec![1], ints(vec![2, 4])),
                column("gender", vec![0, 2], strings(&["F"])),
            ]),
        )
        .unwrap();
        let id = |name: &str| schema.get(name).unwrap().id;
        assert_eq!(patches[0].email.as_deref(), Some("a@x.fr"));
        assert_eq!(patches[1].email, None);
        assert_eq!(
            patches[0].attrs,
            vec![(id("household_size"), Some(Value::Int(2)))]
        );
        let mut b = vec![(id("gender"), Some(Value::Keyword("F".into())))];
        b.sort_by_key(|(id, _)| *id);
        assert_eq!(patches[1].attrs, b);
        assert_eq!(
            patches[2].attrs,
            vec![(id("household_size"), Some(Value::Int(4)))]
        );
    }

    #[test]
    fn errors_name_the_column_or_the_customer() {
        let e = error(batch(vec![column("shoe_size", vec![], ints(vec![1, 2, 3]))]));
        assert!(
            e.contains("columns.attributes[0]") && e.contains("unknown attribute `shoe_size`"),
            "{e}"
        );
        let e = error(batch(vec![column(
            "household_size",
            vec![],
            strings(&["1", "2", "3"]),
        )]));
        assert!(
            e.contains("columns.attributes[0].values") && e.contains("expected ints, got strings"),
            "{e}"
        );
        let e = error(batch(vec![column("household_size", vec![], ints(vec![1, 2]))]));
        assert!(
            e.contains("columns.attributes[0].values") && e.contains("2 values for 3 customers"),
            "{e}"
        );
        let e = error(batch(vec![column("household_size", vec![2, 1], ints(vec![1]))]));
        assert!(e.contains("columns.attributes[0].missing[1]"), "{e}");
        let e = error(batch(vec![column("household_size", vec![3], ints(vec![1, 2]))]));
        assert!(e.contains("columns.attributes[0].missing[0]"), "{e}");
        let e = error(batch(vec![column("household_size", vec![], None)]));
        assert!(e.contains("no values given"), "{e}");
        let e = error(batch(vec![
            column("gender", vec![], strings(&["F", "M", "F"])),
            column("gender", vec![], strings(&["F", "M", "F"])),
        ]));
        assert!(
            e.contains("columns.attributes[1]") && e.contains("(columns.attributes[0])"),
            "{e}"
        );
        let long = "x".repeat(input::MAX_KEYWORD + 1);
        let e = error(batch(vec![column("gender", vec![0], strings(&["F", &long]))]));
        assert!(e.contains("customers[2].attributes[\"gender\"]"), "{e}");
        let e = error(batch(vec![column(
            "birth_date",
            vec![],
            Some(Values::Dates(pb::IntColumn {
                values: vec![0, 1, 3_000_000],
            })),
        )]));
        assert!(
            e.contains("customers[2].attributes[\"birth_date\"]") && e.contains("outside years"),
            "{e}"
        );
        let mut bad_email = batch(vec![]);
        bad_email.emails[2] = "not an e-mail".into();
        assert!(error(bad_email).contains("customers[2].email"));
        let mut short = batch(vec![]);
        short.emails.pop();
        assert!(error(short).contains("columns.emails"));
        let mut empty_id = batch(vec![]);
        empty_id.customer_ids[1].clear();
        assert!(error(empty_id).contains("customers[1].customer_id"));
    }

    fn dictionary(values: &[&str], indexes: Vec<u32>) -> Option<Values> {
        Some(Values::Strings(pb::StringColumn {
            values: values.iter().map(|s| s.to_string()).collect(),
            indexes,
        }))
    }

    #[test]
    fn dictionary_encoded_strings_mean_their_plain_values() {
        let schema = Schema::builtin();
        let plain = column_patches(
            &schema,
            None,
            &batch(vec![
                column("country", vec![], strings(&["FR", "DE", "FR"])),
                column("organization", vec![1], strings(&["Acme", "Acme"])),
            ]),
        )
        .unwrap();
        let encoded = batch(vec![
            column("country", vec![], dictionary(&["DE", "FR"], vec![1, 0, 1])),
            column("organization", vec![1], dictionary(&["Acme"], vec![0, 0])),
        ]);
        assert_eq!(column_patches(&schema, None, &encoded).unwrap(), plain);
        // to_columns picks the shorter form for each column.
        let mut c = pb::StringColumn {
            values: ["FR", "DE", "FR", "FR"].map(String::from).to_vec(),
            indexes: vec![],
        };
        dictionary_encode(&mut c);
        assert_eq!(
            (c.values, c.indexes),
            (vec!["FR".into(), "DE".into()], vec![0, 1, 0, 0])
        );
        let mut c = pb::StringColumn {
            values: ["75001", "75002", "75003"].map(String::from).to_vec(),
            indexes: vec![],
        };
        dictionary_encode(&mut c);
        assert!(c.indexes.is_empty() && c.values.len() == 3);
    }

    #[test]
    fn dictionary_errors_name_the_customer_or_the_string() {
        let e = error(batch(vec![column(
            "country",
            vec![],
            dictionary(&["FR", "DE"], vec![0, 2, 1]),
        )]));
        assert!(
            e.contains("customers[1].attributes[\"country\"]")
                && e.contains("index 2 is past the 2 strings of columns.attributes[0].strings.values"),
            "{e}"
        );
        let long = "x".repeat(input::MAX_KEYWORD + 1);
        // The first customer whose string is bad is named, whichever string it is.
        let e = error(batch(vec![column(
            "country",
            vec![0],
            dictionary(&["FR", &long, ""], vec![2, 1]),
        )]));
        assert!(e.contains("customers[1].attributes[\"country\"]"), "{e}");
        let e = error(batch(vec![column(
            "country",
            vec![],
            dictionary(&["FR", &long], vec![0, 0, 0]),
        )]));
        assert!(
            e.contains("columns.attributes[0].strings.values[1]") && !e.contains("customers["),
            "{e}"
        );
        // Indexes count as values.
        let e = error(batch(vec![column(
            "country",
            vec![],
            dictionary(&["FR"], vec![0, 0]),
        )]));
        assert!(e.contains("2 values for 3 customers"), "{e}");
    }

    #[test]
    fn the_batch_limit_counts_customers() {
        let schema = Schema::builtin();
        let limits = Limits { max_batch: 2 };
        let e = column_patches(&schema, Some(&limits), &batch(vec![])).unwrap_err();
        assert!(e.to_string().contains("columns.customer_ids"), "{e}");
    }
}
