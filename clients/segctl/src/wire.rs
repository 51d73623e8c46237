//! Customer rows written straight into the bytes of a `CustomerColumns` message, the `columns` of a
//! `LoadCustomersRequest`. A batch sent column by column names each attribute once, where
//! `Customer` messages repeat every name in every row: about a third of the bytes to send, and the
//! cheapest form for the server to read and log. Cells are encoded from the file's text as they are
//! read, without a `String` or a `Value` per cell.

use std::collections::HashMap;

use crate::tags::{attribute_column, batch, column_values, columns, string_column, string_list};
use bytes::{Buf, BufMut};
use foldhash::fast::RandomState;
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

/// `LoadCustomersRequest` as segctl sends it: field 2, an encoded `CustomerColumns`, and on the
/// stream's first message the load's options.
#[derive(Clone, Default, PartialEq)]
pub struct EncodedColumns(pub Vec<u8>, pub LoadOptions);

/// `LoadCustomersRequest.validate_only` and `max_bad_rows`.
#[derive(Clone, Copy, Default, PartialEq, Debug)]
pub struct LoadOptions {
    pub validate_only: bool,
    pub max_bad_rows: u32,
}

impl std::fmt::Debug for EncodedColumns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncodedColumns({} bytes)", self.0.len())
    }
}

impl Message for EncodedColumns {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        encoding::bytes::encode(batch::COLUMNS, &self.0, buf);
        if self.1.validate_only {
            encoding::bool::encode(batch::VALIDATE_ONLY, &true, buf);
        }
        if self.1.max_bad_rows != 0 {
            encoding::uint32::encode(batch::MAX_BAD_ROWS, &self.1.max_bad_rows, buf);
        }
    }

    /// Kept as bytes; segctl never receives this message.
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag == batch::COLUMNS {
            encoding::bytes::merge(wire_type, &mut self.0, buf, ctx)
        } else {
            encoding::skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        encoding::bytes::encoded_len(batch::COLUMNS, &self.0)
            + if self.1.validate_only {
                encoding::bool::encoded_len(batch::VALIDATE_ONLY, &true)
            } else {
                0
            }
            + if self.1.max_bad_rows != 0 {
                encoding::uint32::encoded_len(batch::MAX_BAD_ROWS, &self.1.max_bad_rows)
            } else {
                0
            }
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

/// A checked cell, borrowing the file's text where it can.
#[derive(Debug, Clone, PartialEq)]
pub enum Typed<'a> {
    Bool(bool),
    Int(i64),
    Double(f64),
    /// Days since 1970-01-01.
    Date(i64),
    /// Microseconds since the epoch.
    Timestamp(i64),
    Str(std::borrow::Cow<'a, str>),
    List(Vec<std::borrow::Cow<'a, str>>),
}

impl Typed<'_> {
    /// The `AttributeColumn.values` field holding this kind.
    fn field(&self) -> u32 {
        match self {
            Typed::Bool(_) => attribute_column::BOOLS,
            Typed::Int(_) => attribute_column::INTS,
            Typed::Double(_) => attribute_column::DOUBLES,
            Typed::Date(_) => attribute_column::DATES,
            Typed::Timestamp(_) => attribute_column::TIMESTAMPS,
            Typed::Str(_) => attribute_column::STRINGS,
            Typed::List(_) => attribute_column::LISTS,
        }
    }
}

/// One attribute's column being written.
struct Column {
    /// The `values` field (3 to 9), from the first value's kind.
    field: u32,
    slot: usize,
    missing: Vec<u32>,
    /// Packed numbers (fields 3 to 7), or the encoded entries of field 1: lists, or each
    /// distinct string once.
    values: Vec<u8>,
    count: u32,
    /// Strings: each distinct one's position among them, its entry in `values`, and each
    /// value's position (sent as `indexes` when that takes fewer bytes than the strings).
    distinct: HashMap<Box<str>, u32, RandomState>,
    entries: Vec<std::ops::Range<usize>>,
    picks: Vec<u32>,
    /// Strings written one per value from now on: most were distinct so far (postal codes,
    /// names), and looking each one up would cost more than it saves.
    plain: bool,
}

/// Values a string column gets before it is judged: written one per value when more than half
/// of them were distinct.
const JUDGED_AFTER: usize = 64;

impl Column {
    /// Adds a string value.
    fn push_str(&mut self, s: &str) {
        if self.plain {
            string_field(string_column::VALUES, s, &mut self.values);
            return;
        }
        let pick = match self.distinct.get(s) {
            Some(&pick) => pick,
            None => {
                let start = self.values.len();
                string_field(string_column::VALUES, s, &mut self.values);
                self.entries.push(start..self.values.len());
                let pick = self.entries.len() as u32 - 1;
                self.distinct.insert(s.into(), pick);
                pick
            }
        };
        self.picks.push(pick);
        if self.picks.len() == JUDGED_AFTER && 2 * self.entries.len() > JUDGED_AFTER {
            self.values = self.one_per_value();
            self.plain = true;
            self.distinct = HashMap::default();
            self.entries = Vec::new();
            self.picks = Vec::new();
        }
    }

    /// The `values` field's content: the strings given one per value or dictionary-encoded,
    /// whichever is shorter; the entries written otherwise.
    fn content(&self) -> std::borrow::Cow<'_, [u8]> {
        if self.field != attribute_column::STRINGS || self.plain {
            return self.values.as_slice().into();
        }
        let plain: usize = self.picks.iter().map(|&p| self.entries[p as usize].len()).sum();
        let packed: usize = self
            .picks
            .iter()
            .map(|&p| encoding::encoded_len_varint(u64::from(p)))
            .sum();
        if self.values.len() + field_len(string_column::INDEXES, packed) < plain {
            let mut out = Vec::with_capacity(self.values.len() + field_len(string_column::INDEXES, packed));
            out.extend_from_slice(&self.values);
            encoding::encode_key(string_column::INDEXES, WireType::LengthDelimited, &mut out);
            encoding::encode_varint(packed as u64, &mut out);
            for &p in &self.picks {
                encoding::encode_varint(u64::from(p), &mut out);
            }
            out.into()
        } else {
            self.one_per_value().into()
        }
    }

    /// The string entries, one per value.
    fn one_per_value(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.values.len() * 2);
        for &p in &self.picks {
            out.extend_from_slice(&self.values[self.entries[p as usize].clone()]);
        }
        out
    }
}

/// Writes rows into one `CustomerColumns` at a time.
pub struct ColumnsWriter {
    /// Attribute names by slot.
    names: Vec<String>,
    rows: u32,
    ids: Vec<u8>,
    emails: Vec<u8>,
    /// Rows the `emails` bytes cover (all given or none: rows without one get "").
    email_rows: u32,
    columns: Vec<Column>,
    column_of: Vec<Option<usize>>,
}

impl ColumnsWriter {
    /// A writer for attributes named by slot in `names`.
    pub fn new(names: Vec<String>) -> Self {
        let slots = names.len();
        ColumnsWriter {
            names,
            rows: 0,
            ids: Vec::new(),
            emails: Vec::new(),
            email_rows: 0,
            columns: Vec::new(),
            column_of: vec![None; slots],
        }
    }

    /// Adds a checked row: its values by attribute slot. A slot's values keep the kind its
    /// attribute's type gives them, so a column holds one kind.
    pub fn push(&mut self, customer_id: &str, email: Option<&str>, values: &[(usize, Typed<'_>)]) {
        let row = self.rows;
        string_field(columns::CUSTOMER_IDS, customer_id, &mut self.ids);
        if let Some(email) = email {
            while self.email_rows < row {
                string_field(columns::EMAILS, "", &mut self.emails);
                self.email_rows += 1;
            }
            string_field(columns::EMAILS, email, &mut self.emails);
            self.email_rows += 1;
        }
        for (slot, value) in values {
            let j = *self.column_of[*slot].get_or_insert_with(|| {
                self.columns.push(Column {
                    field: value.field(),
                    slot: *slot,
                    missing: Vec::new(),
                    values: Vec::new(),
                    count: 0,
                    distinct: HashMap::default(),
                    entries: Vec::new(),
                    picks: Vec::new(),
                    plain: false,
                });
                self.columns.len() - 1
            });
            let column = &mut self.columns[j];
            debug_assert_eq!(column.field, value.field(), "one kind per column");
            let filled = column.missing.len() as u32 + column.count;
            column.missing.extend(filled..row);
            column.count += 1;
            let out = &mut column.values;
            match value {
                Typed::Bool(b) => out.push(u8::from(*b)),
                Typed::Int(v) | Typed::Date(v) | Typed::Timestamp(v) => {
                    encoding::encode_varint(*v as u64, out)
                }
                Typed::Double(v) => out.extend_from_slice(&v.to_le_bytes()),
                Typed::Str(s) => column.push_str(s),
                Typed::List(items) => {
                    let len: usize = items
                        .iter()
                        .map(|s| field_len(string_list::VALUES, s.len()))
                        .sum();
                    encoding::encode_key(column_values::VALUES, WireType::LengthDelimited, out);
                    encoding::encode_varint(len as u64, out);
                    for item in items {
                        string_field(string_list::VALUES, item, out);
                    }
                }
            }
        }
        self.rows += 1;
    }

    /// The rows written so far as an encoded `CustomerColumns`; the writer starts afresh.
    pub fn take(&mut self) -> Vec<u8> {
        let rows = self.rows;
        if self.email_rows > 0 {
            while self.email_rows < rows {
                string_field(columns::EMAILS, "", &mut self.emails);
                self.email_rows += 1;
            }
        }
        let mut out = Vec::with_capacity(
            self.ids.len()
                + self.emails.len()
                + self.columns.iter().map(|c| c.values.len() + 64).sum::<usize>(),
        );
        out.append(&mut self.ids);
        out.append(&mut self.emails);
        let mut missing = Vec::new();
        for mut column in self.columns.drain(..) {
            let filled = column.missing.len() as u32 + column.count;
            column.missing.extend(filled..rows);
            missing.clear();
            for &m in &column.missing {
                encoding::encode_varint(u64::from(m), &mut missing);
            }
            let name = &self.names[column.slot];
            let packed = column.field <= attribute_column::TIMESTAMPS;
            let content = column.content();
            let values_len = if packed {
                field_len(column_values::VALUES, content.len())
            } else {
                content.len()
            };
            let mut len = field_len(attribute_column::NAME, name.len()) + field_len(column.field, values_len);
            if !missing.is_empty() {
                len += field_len(attribute_column::MISSING, missing.len());
            }
            encoding::encode_key(columns::ATTRIBUTES, WireType::LengthDelimited, &mut out);
            encoding::encode_varint(len as u64, &mut out);
            string_field(attribute_column::NAME, name, &mut out);
            if !missing.is_empty() {
                bytes_field(attribute_column::MISSING, &missing, &mut out);
            }
            encoding::encode_key(column.field, WireType::LengthDelimited, &mut out);
            encoding::encode_varint(values_len as u64, &mut out);
            if packed {
                bytes_field(column_values::VALUES, &content, &mut out);
            } else {
                out.extend_from_slice(&content);
            }
        }
        self.column_of.fill(None);
        self.rows = 0;
        self.email_rows = 0;
        out
    }
}

fn field_len(tag: u32, len: usize) -> usize {
    encoding::key_len(tag) + encoding::encoded_len_varint(len as u64) + len
}

fn string_field(tag: u32, s: &str, out: &mut Vec<u8>) {
    bytes_field(tag, s.as_bytes(), out);
}

fn bytes_field(tag: u32, b: &[u8], out: &mut Vec<u8>) {
    encoding::encode_key(tag, WireType::LengthDelimited, out);
    encoding::encode_varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::{self, attribute_column::Values};
    use std::borrow::Cow;

    #[test]
    fn rows_become_columns_with_missing_rows() {
        let names: Vec<String> = [
            "gender",
            "household_size",
            "birth_date",
            "tags",
            "vip",
            "score",
            "seen",
        ]
        .map(String::from)
        .to_vec();
        let mut w = ColumnsWriter::new(names);
        for round in 0..2 {
            w.push("a", None, &[(1, Typed::Int(-2)), (4, Typed::Bool(true))]);
            w.push(
                "b",
                Some("b@x.fr"),
                &[
                    (0, Typed::Str(Cow::Borrowed("F"))),
                    (2, Typed::Date(-3)),
                    (3, Typed::List(vec![Cow::Borrowed("golf"), Cow::Borrowed("ski")])),
                    (5, Typed::Double(1.5)),
                    (6, Typed::Timestamp(1_700_000_000_000_000)),
                ],
            );
            w.push("c", None, &[(1, Typed::Int(5)), (4, Typed::Bool(false))]);
            let decoded = pb::CustomerColumns::decode(w.take().as_slice()).unwrap();
            let column = |name: &str, missing: Vec<u32>, values: Values| pb::AttributeColumn {
                name: name.into(),
                missing,
                values: Some(values),
            };
            let expected = pb::CustomerColumns {
                customer_ids: vec!["a".into(), "b".into(), "c".into()],
                emails: vec![String::new(), "b@x.fr".into(), String::new()],
                attributes: vec![
                    column(
                        "household_size",
                        vec![1],
                        Values::Ints(pb::IntColumn { values: vec![-2, 5] }),
                    ),
                    column(
                        "vip",
                        vec![1],
                        Values::Bools(pb::BoolColumn {
                            values: vec![true, false],
                        }),
                    ),
                    column(
                        "gender",
                        vec![0, 2],
                        Values::Strings(pb::StringColumn {
                            values: vec!["F".into()],
                            indexes: vec![],
                        }),
                    ),
                    column(
                        "birth_date",
                        vec![0, 2],
                        Values::Dates(pb::IntColumn { values: vec![-3] }),
                    ),
                    column(
                        "tags",
                        vec![0, 2],
                        Values::Lists(pb::ListColumn {
                            values: vec![pb::StringList {
                                values: vec!["golf".into(), "ski".into()],
                            }],
                        }),
                    ),
                    column(
                        "score",
                        vec![0, 2],
                        Values::Doubles(pb::DoubleColumn { values: vec![1.5] }),
                    ),
                    column(
                        "seen",
                        vec![0, 2],
                        Values::Timestamps(pb::IntColumn {
                            values: vec![1_700_000_000_000_000],
                        }),
                    ),
                ],
            };
            assert_eq!(decoded, expected, "round {round}");
        }
        // No e-mail given at all: none sent.
        w.push("d", None, &[]);
        let decoded = pb::CustomerColumns::decode(w.take().as_slice()).unwrap();
        assert!(decoded.emails.is_empty() && decoded.attributes.is_empty());
        // The request carries them as its `columns` field.
        let request = EncodedColumns(decoded.encode_to_vec(), LoadOptions::default());
        #[derive(Clone, PartialEq, prost::Message)]
        struct Generic {
            #[prost(message, repeated, tag = "1")]
            customers: Vec<pb::Customer>,
            #[prost(message, optional, tag = "2")]
            columns: Option<pb::CustomerColumns>,
        }
        let generic = Generic::decode(request.encode_to_vec().as_slice()).unwrap();
        assert_eq!(generic.columns, Some(decoded));
    }

    #[test]
    fn repeated_strings_come_dictionary_encoded_and_distinct_ones_plain() {
        let names: Vec<String> = ["country", "postal_code", "city"].map(String::from).to_vec();
        let mut w = ColumnsWriter::new(names);
        let countries = ["FR", "DE", "FR", "FR", "DE", "ES", "FR", "FR"];
        let code = |n: usize| format!("{:05}", 75000 + n);
        // Distinct at first, then one value over and over: judged after 64 values.
        let city = |n: usize| {
            if n < 40 {
                format!("city-{n}")
            } else {
                "Paris".to_string()
            }
        };
        for n in 0..100 {
            w.push(
                &format!("c{n}"),
                None,
                &[
                    (0, Typed::Str(Cow::Borrowed(countries[n % 8]))),
                    (1, Typed::Str(Cow::Owned(code(n)))),
                    (2, Typed::Str(Cow::Owned(city(n)))),
                ],
            );
        }
        let decoded = pb::CustomerColumns::decode(w.take().as_slice()).unwrap();
        let strings = |name: &str| {
            let column = decoded.attributes.iter().find(|c| c.name == name).unwrap();
            match column.values.clone() {
                Some(Values::Strings(s)) => s,
                other => panic!("{other:?}"),
            }
        };
        let country = strings("country");
        assert_eq!(country.values, ["FR", "DE", "ES"]);
        let expected: Vec<u32> = (0..100)
            .map(|n| match countries[n % 8] {
                "FR" => 0,
                "DE" => 1,
                _ => 2,
            })
            .collect();
        assert_eq!(country.indexes, expected);
        let codes = strings("postal_code");
        assert!(codes.indexes.is_empty());
        assert_eq!(codes.values, (0..100).map(code).collect::<Vec<_>>());
        // Judged after 40 distinct values of 64: one per value, though the rest repeat.
        let cities = strings("city");
        assert!(cities.indexes.is_empty());
        assert_eq!(cities.values, (0..100).map(city).collect::<Vec<_>>());
        // The next batch starts afresh.
        w.push("d", None, &[(2, Typed::Str(Cow::Borrowed("Paris")))]);
        w.push("e", None, &[(2, Typed::Str(Cow::Borrowed("Paris")))]);
        w.push("f", None, &[(2, Typed::Str(Cow::Borrowed("Paris")))]);
        let decoded = pb::CustomerColumns::decode(w.take().as_slice()).unwrap();
        assert_eq!(
            decoded.attributes[0].values,
            Some(Values::Strings(pb::StringColumn {
                values: vec!["Paris".into()],
                indexes: vec![0, 0, 0],
            }))
        );
    }
}
