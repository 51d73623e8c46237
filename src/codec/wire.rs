//! The customer batches of `UpsertCustomers` and `LoadCustomers`, decoded without building
//! `Customer` messages.
//!
//! Both requests are `repeated Customer customers = 1`. Generic decoding would build a
//! `BTreeMap<String, Value>` per customer (a node and a key string per attribute) only to look each
//! name up in the schema and drop it. Here the request keeps each customer's encoded bytes (slices of
//! the received buffer, no copy), and [`CustomerBatch::patches`] reads them straight into
//! [`CustomerPatch`]es: attribute names are looked up as borrowed `&str`, and only the values the
//! store keeps are allocated. The wire format is unchanged, so every client works as before.
//!
//! Semantics follow protobuf's: unknown fields are skipped, a repeated scalar field keeps its last
//! value, a map key given twice keeps its last value, and values decode exactly as `Value` does.

use bytes::{Buf, BufMut, Bytes};
use prost::encoding::{self, DecodeContext, WireType};
use prost::{DecodeError, Message};

use crate::codec::tags::{self, batch, customer, map_entry, value};
use crate::codec::{Limits, columns, convert, pb};
use crate::columnar::schema::{AttrDef, Schema};
use crate::error::{Error, Result};
use crate::store::batch::ColumnBatch;
use crate::store::input::{self, CustomerPatch};

/// `UpsertCustomersRequest` and `LoadCustomersRequest`: a batch of customers.
///
/// A sender fills it with messages ([`CustomerBatch::new`]); a receiver gets each customer as its
/// encoded bytes and converts them with [`CustomerBatch::patches`].
#[derive(Clone, Default, PartialEq)]
pub struct CustomerBatch {
    /// Customers to encode.
    messages: Vec<pb::Customer>,
    /// Customers as received, one encoded `Customer` each.
    encoded: Vec<Bytes>,
    /// The `columns` field: an encoded `CustomerColumns` (kept as bytes until parsed, and logged
    /// as they are): its first occurrence as received, the next ones appended together (a message
    /// field given twice merges: its encodings concatenated), and the customer ids they hold.
    /// Joining each occurrence to the whole so far as it arrived was quadratic in a message
    /// repeating the field, and a handle per occurrence held several times its bytes.
    columns: Option<Bytes>,
    more_columns: Vec<u8>,
    column_ids: usize,
    /// `columns` and `more_columns` joined, once, when there are both.
    joined: std::sync::OnceLock<Bytes>,
    /// Customers past [`decode_ceiling`] in this message: counted, not kept.
    overflow: usize,
    /// `LoadCustomersRequest.validate_only` (an `UpsertCustomersRequest` has no such field).
    pub validate_only: bool,
    /// `LoadCustomersRequest.max_bad_rows`.
    pub max_bad_rows: u32,
}

/// The most customers one decoded message keeps: the largest `--max-batch` of the process's
/// servers. Past it a message's customers are only counted (and the batch refused by its
/// size), so a message of tiny customers cannot make the decoder hold 16 times its size in
/// handles first.
static DECODE_CEILING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Raises the decode ceiling to `max_batch` (the server calls this with its limit).
pub fn raise_decode_ceiling(max_batch: usize) {
    DECODE_CEILING.fetch_max(max_batch, std::sync::atomic::Ordering::Relaxed);
}

fn decode_ceiling() -> usize {
    match DECODE_CEILING.load(std::sync::atomic::Ordering::Relaxed) {
        0 => Limits::default().max_batch,
        n => n,
    }
}

/// A customer batch's rows as read against the schema, in the form they came in.
pub enum Received {
    /// Customer messages, as patches.
    Patches(Vec<CustomerPatch>),
    /// The `columns` field, column by column.
    Columns(ColumnBatch),
}

impl CustomerBatch {
    pub fn new(customers: Vec<pb::Customer>) -> Self {
        CustomerBatch {
            messages: customers,
            ..CustomerBatch::default()
        }
    }

    /// A batch of customers encoded beforehand, each one `Customer` message's bytes (as a bulk
    /// loader writes them straight from its input): sending it only copies the bytes.
    pub fn from_encoded(customers: Vec<Bytes>) -> Self {
        CustomerBatch {
            encoded: customers,
            ..CustomerBatch::default()
        }
    }

    /// A batch of customers given column by column (the `columns` field), encoded here once: the
    /// cheapest form to send and to apply.
    pub fn from_columns(columns: &pb::CustomerColumns) -> Self {
        CustomerBatch {
            columns: Some(columns.encode_to_vec().into()),
            column_ids: columns.customer_ids.len(),
            ..CustomerBatch::default()
        }
    }

    /// Number of customers in the batch.
    pub fn len(&self) -> usize {
        self.messages.len() + self.encoded.len() + self.overflow + self.column_ids
    }

    /// The `columns` field as one encoded message, if the batch has it.
    fn columns_bytes(&self) -> Option<&Bytes> {
        let first = self.columns.as_ref()?;
        if self.more_columns.is_empty() {
            return Some(first);
        }
        Some(
            self.joined
                .get_or_init(|| [first.as_ref(), &self.more_columns].concat().into()),
        )
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The customers given as messages (decoding the received ones); not those of `columns`.
    pub fn customers(&self) -> std::result::Result<Vec<pb::Customer>, DecodeError> {
        let mut out = self.messages.clone();
        for bytes in &self.encoded {
            out.push(pb::Customer::decode(bytes.as_ref())?);
        }
        Ok(out)
    }

    /// The `columns` field, decoded; `None` when the batch has none.
    pub fn columns(&self) -> std::result::Result<Option<pb::CustomerColumns>, DecodeError> {
        self.columns_bytes()
            .map(|bytes| pb::CustomerColumns::decode(bytes.as_ref()))
            .transpose()
    }

    /// The batch's customers read against `schema`, and a log record holding their bytes as
    /// received (replay reads them again the same way).
    pub fn received(&self, schema: &Schema, limits: &Limits) -> Result<(Received, crate::wal::EncodedOp)> {
        if let Some(bytes) = self.columns_bytes() {
            let columns = self.checked_columns(bytes, schema, limits)?;
            let record = crate::wal::record::encode_upsert_columns(bytes);
            return Ok((Received::Columns(columns), record));
        }
        let patches = self.patches(schema, limits)?;
        let messages: Vec<Vec<u8>> = self.messages.iter().map(Message::encode_to_vec).collect();
        let customers = messages
            .iter()
            .map(Vec::as_slice)
            .chain(self.encoded.iter().map(|b| b.as_ref()));
        let record = crate::wal::record::encode_upsert_customers(customers);
        Ok((Received::Patches(patches), record))
    }

    /// Every customer as a patch checked against `schema`, or the first failure naming its item
    /// (`customers[3].email`); the batch size is checked against `limits` first.
    pub fn patches(&self, schema: &Schema, limits: &Limits) -> Result<Vec<CustomerPatch>> {
        if let Some(bytes) = self.columns_bytes() {
            return Ok(self.checked_columns(bytes, schema, limits)?.patches(schema));
        }
        limits.check_batch("customers", self.len())?;
        let mut out = Vec::with_capacity(self.len());
        for (i, c) in self.messages.iter().enumerate() {
            let patch = convert::customer_patch(schema, c.clone());
            out.push(patch.map_err(|e| e.within(&format!("customers[{i}]")))?);
        }
        let first = self.messages.len();
        let read = customer_patches(schema, self.encoded.iter().map(|b| b.as_ref()));
        out.extend(read.map_err(|(i, e)| e.within(&format!("customers[{}]", first + i)))?);
        Ok(out)
    }
}

impl CustomerBatch {
    /// The customers given as `columns`, checked against `schema` and `limits`; `None` when the
    /// batch gives them as messages.
    pub fn column_batch(&self, schema: &Schema, limits: &Limits) -> Result<Option<ColumnBatch>> {
        self.columns_bytes()
            .map(|bytes| self.checked_columns(bytes, schema, limits))
            .transpose()
    }

    /// The `columns` field (`bytes`) checked against `schema` and `limits`.
    fn checked_columns(&self, bytes: &Bytes, schema: &Schema, limits: &Limits) -> Result<ColumnBatch> {
        if !self.messages.is_empty() || !self.encoded.is_empty() || self.overflow > 0 {
            return Err(Error::invalid(
                "columns",
                "a request gives its customers as `customers` or as `columns`, not both",
            ));
        }
        columns::column_batch(schema, Some(limits), bytes)
    }
}

/// Encoded `Customer`s read one after another as [`customer_patch`] reads one (names checked
/// against the previous customer's first), or the index of the first that fails with its error.
pub fn customer_patches<'a>(
    schema: &Schema,
    customers: impl IntoIterator<Item = &'a [u8]>,
) -> std::result::Result<Vec<CustomerPatch>, (usize, Error)> {
    let mut scratch = Scratch::default();
    customers
        .into_iter()
        .enumerate()
        .map(|(i, bytes)| scratch.customer_patch(schema, bytes).map_err(|e| (i, e)))
        .collect()
}

impl From<Vec<pb::Customer>> for CustomerBatch {
    fn from(customers: Vec<pb::Customer>) -> Self {
        CustomerBatch::new(customers)
    }
}

impl std::fmt::Debug for CustomerBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CustomerBatch")
            .field("customers", &self.len())
            .finish()
    }
}

impl Message for CustomerBatch {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        for c in &self.messages {
            encoding::message::encode(batch::CUSTOMERS, c, buf);
        }
        for bytes in &self.encoded {
            encoding::bytes::encode(batch::CUSTOMERS, bytes, buf);
        }
        if let Some(bytes) = &self.columns {
            encoding::bytes::encode(batch::COLUMNS, bytes, buf);
        }
        if !self.more_columns.is_empty() {
            encoding::bytes::encode(batch::COLUMNS, &self.more_columns, buf);
        }
        if self.validate_only {
            encoding::bool::encode(batch::VALIDATE_ONLY, &self.validate_only, buf);
        }
        if self.max_bad_rows != 0 {
            encoding::uint32::encode(batch::MAX_BAD_ROWS, &self.max_bad_rows, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> std::result::Result<(), DecodeError> {
        match tag {
            batch::CUSTOMERS => {
                // Zero-copy when the buffer is `Bytes`-backed, as tonic's is.
                let mut customer = Bytes::new();
                encoding::bytes::merge(wire_type, &mut customer, buf, ctx)?;
                if self.encoded.len() < decode_ceiling() {
                    self.encoded.push(customer);
                } else {
                    self.overflow += 1;
                }
            }
            batch::COLUMNS => {
                let mut more = Bytes::new();
                encoding::bytes::merge(wire_type, &mut more, buf, ctx)?;
                self.column_ids += count_fields(&more, tags::columns::CUSTOMER_IDS);
                self.joined = std::sync::OnceLock::new();
                match &self.columns {
                    None => self.columns = Some(more),
                    Some(_) => self.more_columns.extend_from_slice(&more),
                }
            }
            batch::VALIDATE_ONLY => encoding::bool::merge(wire_type, &mut self.validate_only, buf, ctx)?,
            batch::MAX_BAD_ROWS => encoding::uint32::merge(wire_type, &mut self.max_bad_rows, buf, ctx)?,
            _ => encoding::skip_field(wire_type, tag, buf, ctx)?,
        }
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        encoding::message::encoded_len_repeated(1, &self.messages)
            + self
                .encoded
                .iter()
                .map(|b| encoding::bytes::encoded_len(1, b))
                .sum::<usize>()
            + self
                .columns
                .as_ref()
                .map_or(0, |b| encoding::bytes::encoded_len(2, b))
            + if self.more_columns.is_empty() {
                0
            } else {
                encoding::bytes::encoded_len(2, &self.more_columns)
            }
            + if self.validate_only {
                encoding::bool::encoded_len(batch::VALIDATE_ONLY, &self.validate_only)
            } else {
                0
            }
            + if self.max_bad_rows != 0 {
                encoding::uint32::encoded_len(batch::MAX_BAD_ROWS, &self.max_bad_rows)
            } else {
                0
            }
    }

    fn clear(&mut self) {
        *self = CustomerBatch::default();
    }
}

/// How many times field `tag` occurs at the top level of an encoded message (the customers of an
/// encoded `CustomerColumns` before it is decoded); a malformed message counts what precedes the
/// fault, and decoding it later reports the fault.
fn count_fields(mut buf: &[u8], tag: u32) -> usize {
    let mut count = 0;
    while !buf.is_empty() {
        let Ok((t, wire_type)) = encoding::decode_key(&mut buf) else {
            break;
        };
        count += usize::from(t == tag);
        if encoding::skip_field(wire_type, t, &mut buf, DecodeContext::default()).is_err() {
            break;
        }
    }
    count
}

/// One encoded `Customer` as a patch checked against `schema`: the same result, and the same
/// checks, as decoding the message and converting it with [`convert::customer_patch`].
pub fn customer_patch(schema: &Schema, buf: &[u8]) -> Result<CustomerPatch> {
    Scratch::default().customer_patch(schema, buf)
}

/// What decoding the customers of one batch reuses from one customer to the next: buffers, and
/// the attributes the previous customer named (a loader sends the same names in the same order,
/// so a byte comparison usually replaces a lookup by name).
#[derive(Default)]
struct Scratch<'a, 's> {
    /// (name, encoded Value) in wire order.
    entries: Vec<(&'a [u8], &'a [u8])>,
    /// Entries with their attribute, sorted by attribute.
    resolved: Vec<(&'s AttrDef, &'a [u8])>,
    /// The previous customer's names and their attributes, in wire order.
    names: Vec<(&'a [u8], &'s AttrDef)>,
}

impl<'a, 's> Scratch<'a, 's> {
    fn customer_patch(&mut self, schema: &'s Schema, mut buf: &'a [u8]) -> Result<CustomerPatch> {
        let malformed = |e: Malformed| Error::invalid("", format!("malformed Customer message: {e}"));
        let mut customer_id: &[u8] = b"";
        let mut email: Option<&[u8]> = None;
        self.entries.clear();
        while !buf.is_empty() {
            let (tag, wire_type) = encoding::decode_key(&mut buf).map_err(|e| malformed(e.into()))?;
            match tag {
                customer::CUSTOMER_ID | customer::EMAIL | customer::ATTRIBUTES => {
                    encoding::check_wire_type(WireType::LengthDelimited, wire_type)
                        .map_err(|e| malformed(e.into()))?;
                    let field = delimited(&mut buf).map_err(malformed)?;
                    match tag {
                        customer::CUSTOMER_ID => customer_id = field,
                        customer::EMAIL => email = Some(field),
                        _ => self.entries.push(map_entry(field).map_err(malformed)?),
                    }
                }
                _ => encoding::skip_field(wire_type, tag, &mut buf, DecodeContext::default())
                    .map_err(|e| malformed(e.into()))?,
            }
        }
        let customer_id = utf8(customer_id, "customer_id")?;
        input::check_customer_id(customer_id)?;
        let email = email.map(|e| utf8(e, "email")).transpose()?;
        if let Some(email) = email.filter(|e| !e.is_empty()) {
            input::check_email(email)?;
        }
        // Resolved names in attribute order, wire order among repeats; a key given again later
        // wins, as in a decoded map, so only the last of a run is converted.
        self.resolved.clear();
        for (k, &(name, value)) in self.entries.iter().enumerate() {
            let def = match self.names.get(k) {
                Some(&(before, def)) if before == name => def,
                _ => {
                    let name = utf8(name, "attributes")?;
                    let def = schema.get(name).ok_or_else(|| {
                        Error::invalid(format!("attributes[\"{name}\"]"), schema.unknown(name))
                    })?;
                    self.names.truncate(k);
                    self.names.push((name.as_bytes(), def));
                    def
                }
            };
            self.resolved.push((def, value));
        }
        self.resolved.sort_by_key(|(def, _)| def.id);
        let mut attrs = Vec::with_capacity(self.resolved.len());
        for (k, &(def, value)) in self.resolved.iter().enumerate() {
            if self
                .resolved
                .get(k + 1)
                .is_some_and(|(next, _)| next.id == def.id)
            {
                continue;
            }
            let field = || format!("attributes[\"{}\"]", def.name);
            let value = decode_value(value)
                .map_err(|e| Error::invalid(field(), format!("malformed Value message: {e}")))?;
            attrs.push((
                def.id,
                convert::value_in(def, value).map_err(|e| e.within(&field()))?,
            ));
        }
        Ok(CustomerPatch {
            customer_id: customer_id.to_owned(),
            email: email.map(str::to_owned),
            attrs,
        })
    }
}

/// An encoded `Value`. One scalar field (the usual message: a bool, an integer, a double or a
/// string) is read directly; anything else goes through the generated decoder, which applies
/// protobuf's rules for repeated and merged fields.
fn decode_value(buf: &[u8]) -> std::result::Result<pb::Value, DecodeError> {
    use pb::value::Kind;
    let mut rest = buf;
    if let Ok((tag, wire_type)) = encoding::decode_key(&mut rest) {
        let kind = match (tag, wire_type) {
            (value::BOOL_VALUE, WireType::Varint) => encoding::decode_varint(&mut rest)
                .ok()
                .map(|v| Kind::BoolValue(v != 0)),
            (value::INT_VALUE, WireType::Varint) => encoding::decode_varint(&mut rest)
                .ok()
                .map(|v| Kind::IntValue(v as i64)),
            (value::DOUBLE_VALUE, WireType::SixtyFourBit) if rest.len() >= 8 => {
                let (bits, after) = rest.split_at(8);
                rest = after;
                Some(Kind::DoubleValue(f64::from_le_bytes(
                    bits.try_into().expect("8 bytes"),
                )))
            }
            (value::STRING_VALUE, WireType::LengthDelimited) => delimited(&mut rest)
                .ok()
                .and_then(|s| std::str::from_utf8(s).ok())
                .map(|s| Kind::StringValue(s.to_owned())),
            _ => None,
        };
        if let Some(kind) = kind
            && rest.is_empty()
        {
            return Ok(pb::Value { kind: Some(kind) });
        }
    }
    pb::Value::decode(buf)
}

/// Why an encoded message could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Malformed {
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("a field's length runs past the end of its message")]
    Truncated,
    #[error("a string is not UTF-8")]
    NotUtf8,
    /// More items in one field than any valid message holds: refused before they are decoded.
    #[error("{field}: more than the limit of {max} per message")]
    TooMany { field: &'static str, max: usize },
}

impl From<std::str::Utf8Error> for Malformed {
    fn from(_: std::str::Utf8Error) -> Malformed {
        Malformed::NotUtf8
    }
}

/// A map entry's key and encoded value; a missing key is "" and a missing value is empty.
fn map_entry(mut buf: &[u8]) -> std::result::Result<(&[u8], &[u8]), Malformed> {
    let (mut key, mut value): (&[u8], &[u8]) = (b"", b"");
    while !buf.is_empty() {
        let (tag, wire_type) = encoding::decode_key(&mut buf)?;
        match tag {
            map_entry::KEY | map_entry::VALUE => {
                encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
                let field = delimited(&mut buf)?;
                if tag == map_entry::KEY {
                    key = field;
                } else {
                    value = field;
                }
            }
            _ => encoding::skip_field(wire_type, tag, &mut buf, DecodeContext::default())?,
        }
    }
    Ok((key, value))
}

/// A length-delimited field's bytes, borrowed.
pub(crate) fn delimited<'a>(buf: &mut &'a [u8]) -> std::result::Result<&'a [u8], Malformed> {
    let len = encoding::decode_varint(buf)?;
    if len > buf.len() as u64 {
        return Err(Malformed::Truncated);
    }
    let (field, rest) = buf.split_at(len as usize);
    *buf = rest;
    Ok(field)
}

fn utf8<'a>(bytes: &'a [u8], field: &str) -> Result<&'a str> {
    std::str::from_utf8(bytes).map_err(|_| Error::invalid(field, "is not valid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::columnar::schema::Schema;
    use std::collections::BTreeMap;

    fn value(kind: pb::value::Kind) -> pb::Value {
        pb::Value { kind: Some(kind) }
    }

    fn sample() -> pb::Customer {
        use pb::value::Kind;
        pb::Customer {
            customer_id: "C-1".into(),
            email: Some("ann@example.com".into()),
            attributes: BTreeMap::from([
                ("gender".to_string(), value(Kind::StringValue("F".into()))),
                (
                    "birth_date".to_string(),
                    value(Kind::DateValue(pb::Date {
                        year: 1990,
                        month: 2,
                        day: 3,
                    })),
                ),
                (
                    "tags".to_string(),
                    value(Kind::ListValue(pb::StringList {
                        values: vec!["ski".into(), "golf".into(), "ski".into()],
                    })),
                ),
                ("household_size".to_string(), value(Kind::IntValue(3))),
                ("city".to_string(), pb::Value { kind: None }),
            ]),
        }
    }

    fn through_wire(customers: Vec<pb::Customer>) -> CustomerBatch {
        let bytes = CustomerBatch::new(customers).encode_to_vec();
        CustomerBatch::decode(Bytes::from(bytes)).unwrap()
    }

    #[test]
    fn columns_come_alone_and_merge_when_repeated() {
        let schema = Schema::builtin();
        let limits = Limits::default();
        // A value that clears an attribute cannot be said in columns.
        assert_eq!(columns::to_columns(&[sample()]), None);
        let mut one = sample();
        one.attributes.clear();
        let first = columns::to_columns(&[one]).unwrap();
        let second = pb::CustomerColumns {
            customer_ids: vec!["C-2".into()],
            emails: vec![String::new()],
            ..Default::default()
        };
        // Two `columns` fields in one message read as one, as protobuf merges message fields.
        let mut bytes = CustomerBatch::from_columns(&first).encode_to_vec();
        bytes.extend(CustomerBatch::from_columns(&second).encode_to_vec());
        let merged = CustomerBatch::decode(bytes.as_slice()).unwrap();
        assert_eq!(merged.len(), 2);
        let patches = merged.patches(&schema, &limits).unwrap();
        assert_eq!(
            patches.iter().map(|p| p.customer_id.as_str()).collect::<Vec<_>>(),
            ["C-1", "C-2"]
        );
        // Customers given both ways are refused, naming the field.
        let mut both = CustomerBatch::new(vec![sample()]).encode_to_vec();
        both.extend(CustomerBatch::from_columns(&second).encode_to_vec());
        let both = CustomerBatch::decode(both.as_slice()).unwrap();
        let err = both.patches(&schema, &limits).unwrap_err().to_string();
        assert!(err.contains("columns") && err.contains("not both"), "{err}");
        // Bytes that are not a CustomerColumns message are refused, not a panic.
        let mut bad = Vec::new();
        encoding::bytes::encode(2, &vec![0x0a, 0x09, b'x'], &mut bad);
        let bad = CustomerBatch::decode(bad.as_slice()).unwrap();
        let err = bad.patches(&schema, &limits).unwrap_err().to_string();
        assert!(err.contains("malformed CustomerColumns"), "{err}");
    }

    #[test]
    fn decodes_like_messages() {
        let schema = Schema::builtin();
        let limits = Limits::default();
        let received = through_wire(vec![sample(), sample()]);
        assert_eq!(received.len(), 2);
        assert!(received.messages.is_empty());
        let expected = convert::customer_patch(&schema, sample()).unwrap();
        assert_eq!(
            received.patches(&schema, &limits).unwrap(),
            vec![expected.clone(), expected]
        );
        assert_eq!(received.customers().unwrap(), vec![sample(), sample()]);
    }

    #[test]
    fn each_customer_names_its_own_attributes() {
        // Same position, same length, different attribute: the name is compared, not assumed.
        let schema = Schema::builtin();
        let with = |id: &str, name: &str, kind: pb::value::Kind| pb::Customer {
            customer_id: id.into(),
            email: None,
            attributes: BTreeMap::from([(name.to_string(), value(kind))])
                .into_iter()
                .collect(),
        };
        let customers = vec![
            with("a", "city", pb::value::Kind::StringValue("Paris".into())),
            with(
                "b",
                "tags",
                pb::value::Kind::ListValue(pb::StringList {
                    values: vec!["golf".into()],
                }),
            ),
            with("c", "city", pb::value::Kind::StringValue("Lyon".into())),
        ];
        let expected: Vec<CustomerPatch> = customers
            .iter()
            .map(|c| convert::customer_patch(&schema, c.clone()).unwrap())
            .collect();
        let patches = through_wire(customers)
            .patches(&schema, &Limits::default())
            .unwrap();
        assert_eq!(patches, expected);
    }

    #[test]
    fn later_map_keys_win_and_unknown_fields_are_skipped() {
        let schema = Schema::builtin();
        let entry = |key: &str, v: i64| {
            let mut e = Vec::new();
            encoding::string::encode(1, &key.to_string(), &mut e);
            encoding::message::encode(2, &value(pb::value::Kind::IntValue(v)), &mut e);
            e
        };
        let mut buf = Vec::new();
        encoding::string::encode(1, &"C-1".to_string(), &mut buf);
        encoding::bytes::encode(3, &entry("household_size", 2), &mut buf);
        encoding::uint64::encode(9, &7, &mut buf);
        encoding::bytes::encode(3, &entry("household_size", 5), &mut buf);
        let patch = customer_patch(&schema, &buf).unwrap();
        let def = schema.get("household_size").unwrap();
        assert_eq!(
            patch.attrs,
            vec![(def.id, Some(crate::columnar::value::Value::Int(5)))]
        );
        assert_eq!(patch.email, None);
    }

    #[test]
    fn errors_name_the_item_and_field() {
        let schema = Schema::builtin();
        let mut bad = sample();
        bad.attributes
            .insert("shoe_size".into(), value(pb::value::Kind::IntValue(42)));
        let batch = through_wire(vec![sample(), bad]);
        let err = batch
            .patches(&schema, &Limits::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("customers[1].attributes[\"shoe_size\"]"), "{err}");

        let err = customer_patch(&schema, &[0x0a, 0x05, b'a'])
            .unwrap_err()
            .to_string();
        assert!(err.contains("malformed Customer message"), "{err}");
        let err = customer_patch(&schema, &[0x0a, 0x01, 0xff])
            .unwrap_err()
            .to_string();
        assert!(err.contains("customer_id"), "{err}");

        let limits = Limits { max_batch: 1 };
        let err = batch.patches(&schema, &limits).unwrap_err().to_string();
        assert!(err.contains("customers"), "{err}");
    }

    mod props {
        use super::*;
        use pb::value::Kind;
        use proptest::prelude::*;

        fn kind() -> impl Strategy<Value = Option<Kind>> {
            prop_oneof![
                Just(None),
                any::<bool>().prop_map(|b| Some(Kind::BoolValue(b))),
                any::<i64>().prop_map(|i| Some(Kind::IntValue(i))),
                any::<f64>().prop_map(|f| Some(Kind::DoubleValue(f))),
                "[a-zA-Z ]{0,8}".prop_map(|s| Some(Kind::StringValue(s))),
                (0..3000i32, 0..14i32, 0..33i32)
                    .prop_map(|(year, month, day)| Some(Kind::DateValue(pb::Date { year, month, day }))),
                (any::<i64>(), -5..1_000_000_005i32).prop_map(|(seconds, nanos)| Some(Kind::TimestampValue(
                    prost_types::Timestamp {
                        seconds: seconds % 300_000_000_000,
                        nanos
                    }
                ))),
                prop::collection::vec("[a-c]{0,3}", 0..5)
                    .prop_map(|values| Some(Kind::ListValue(pb::StringList { values }))),
            ]
        }

        fn customer() -> impl Strategy<Value = pb::Customer> {
            let names = prop::sample::select(vec![
                "gender",
                "birth_date",
                "tags",
                "household_size",
                "city",
                "vip",
                "registered_at",
                "total_spent",
                "nickname",
                "",
            ]);
            (
                "[a-z0-9-]{0,5}",
                prop::option::of(prop_oneof![
                    Just(String::new()),
                    "[a-z]{1,3}@[a-z]{1,3}\\.fr",
                    "[a-z@.]{1,6}"
                ]),
                prop::collection::btree_map(names.prop_map(str::to_string), kind(), 0..6),
            )
                .prop_map(|(customer_id, email, attrs)| pb::Customer {
                    customer_id,
                    email,
                    attributes: attrs
                        .into_iter()
                        .map(|(k, kind)| (k, pb::Value { kind }))
                        .collect(),
                })
        }

        /// Customers whose values mostly fit the built-in attributes' types.
        fn typed_customer() -> impl Strategy<Value = pb::Customer> {
            let attr = prop_oneof![
                4 => "[A-Z]{1,2}".prop_map(|s| ("gender", Kind::StringValue(s))),
                4 => (1900..2030i32, 1..13i32, 1..29i32).prop_map(|(year, month, day)| {
                    ("birth_date", Kind::DateValue(pb::Date { year, month, day }))
                }),
                4 => prop::collection::vec("[a-c]{1,3}", 0..4)
                    .prop_map(|values| ("tags", Kind::ListValue(pb::StringList { values }))),
                4 => any::<i64>().prop_map(|i| ("household_size", Kind::IntValue(i))),
                4 => any::<bool>().prop_map(|b| ("vip", Kind::BoolValue(b))),
                4 => (-60_000_000_000i64..250_000_000_000, 0..1_000_000_000i32).prop_map(|(seconds, nanos)| {
                    ("registered_at", Kind::TimestampValue(prost_types::Timestamp { seconds, nanos }))
                }),
                1 => Just(("total_spent", Kind::IntValue(5))),
            ];
            (
                prop_oneof![29 => "[a-z0-9]{1,4}", 1 => Just(String::new())],
                prop::option::of(prop_oneof![
                    29 => "[a-z]{1,3}@[a-z]{1,3}\\.fr",
                    1 => Just("bad".to_string())
                ]),
                prop::collection::vec(attr, 0..5),
            )
                .prop_map(|(customer_id, email, attrs)| pb::Customer {
                    customer_id,
                    email,
                    attributes: attrs
                        .into_iter()
                        .map(|(k, kind)| (k.to_string(), pb::Value { kind: Some(kind) }))
                        .collect(),
                })
        }

        /// `columns` encoded another way, by `ways`: 0 splits each column's values over two
        /// occurrences of their field, 1 encodes `missing` unpacked, 2 gives each column a name
        /// before its own, 3 gives each column values of another kind before its own, 4 and 5 add
        /// unknown fields (to the batch, to each column).
        fn reencode(columns: &pb::CustomerColumns, ways: &[u8]) -> Vec<u8> {
            use pb::attribute_column::Values;
            let has = |w: u8| ways.contains(&w);
            let mut out = Vec::new();
            if has(4) {
                encoding::uint64::encode(15, &7, &mut out);
            }
            for id in &columns.customer_ids {
                encoding::string::encode(1, id, &mut out);
            }
            for email in &columns.emails {
                encoding::string::encode(2, email, &mut out);
            }
            for column in &columns.attributes {
                let mut c = Vec::new();
                if has(2) {
                    encoding::string::encode(1, &"not-an-attribute".to_string(), &mut c);
                }
                encoding::string::encode(1, &column.name, &mut c);
                if has(5) {
                    encoding::bytes::encode(12, &vec![1u8, 2, 3], &mut c);
                }
                if has(1) {
                    for m in &column.missing {
                        encoding::uint32::encode(2, m, &mut c);
                    }
                } else {
                    encoding::uint32::encode_packed(2, &column.missing, &mut c);
                }
                let values = column.values.clone().expect("to_columns gives values");
                if has(3) {
                    let other = match values {
                        Values::Bools(_) => Values::Ints(pb::IntColumn { values: vec![1] }),
                        _ => Values::Bools(pb::BoolColumn { values: vec![true] }),
                    };
                    other.encode(&mut c);
                }
                if has(0) {
                    let (first, second) = split(values);
                    first.encode(&mut c);
                    second.encode(&mut c);
                } else {
                    values.encode(&mut c);
                }
                encoding::bytes::encode(3, &c, &mut out);
            }
            out
        }

        /// A column's values as two halves.
        fn split(
            values: pb::attribute_column::Values,
        ) -> (pb::attribute_column::Values, pb::attribute_column::Values) {
            use pb::attribute_column::Values;
            fn halves<T: Clone>(v: &[T]) -> (Vec<T>, Vec<T>) {
                let (a, b) = v.split_at(v.len() / 2);
                (a.to_vec(), b.to_vec())
            }
            match values {
                Values::Bools(c) => {
                    let (a, b) = halves(&c.values);
                    (
                        Values::Bools(pb::BoolColumn { values: a }),
                        Values::Bools(pb::BoolColumn { values: b }),
                    )
                }
                Values::Ints(c) => {
                    let (a, b) = halves(&c.values);
                    (
                        Values::Ints(pb::IntColumn { values: a }),
                        Values::Ints(pb::IntColumn { values: b }),
                    )
                }
                Values::Dates(c) => {
                    let (a, b) = halves(&c.values);
                    (
                        Values::Dates(pb::IntColumn { values: a }),
                        Values::Dates(pb::IntColumn { values: b }),
                    )
                }
                Values::Timestamps(c) => {
                    let (a, b) = halves(&c.values);
                    (
                        Values::Timestamps(pb::IntColumn { values: a }),
                        Values::Timestamps(pb::IntColumn { values: b }),
                    )
                }
                Values::Doubles(c) => {
                    let (a, b) = halves(&c.values);
                    (
                        Values::Doubles(pb::DoubleColumn { values: a }),
                        Values::Doubles(pb::DoubleColumn { values: b }),
                    )
                }
                // Occurrences merge: the strings and the indexes add up.
                Values::Strings(c) if !c.indexes.is_empty() => {
                    let (a, b) = halves(&c.indexes);
                    (
                        Values::Strings(pb::StringColumn {
                            values: c.values,
                            indexes: a,
                        }),
                        Values::Strings(pb::StringColumn {
                            values: vec![],
                            indexes: b,
                        }),
                    )
                }
                Values::Strings(c) => {
                    let (a, b) = halves(&c.values);
                    (
                        Values::Strings(pb::StringColumn {
                            values: a,
                            indexes: vec![],
                        }),
                        Values::Strings(pb::StringColumn {
                            values: b,
                            indexes: vec![],
                        }),
                    )
                }
                Values::Lists(c) => {
                    let (a, b) = halves(&c.values);
                    (
                        Values::Lists(pb::ListColumn { values: a }),
                        Values::Lists(pb::ListColumn { values: b }),
                    )
                }
            }
        }

        proptest! {
            #[test]
            fn columns_mean_what_messages_mean(
                cs in prop::collection::vec(prop_oneof![29 => typed_customer(), 1 => customer()], 0..12),
            ) {
                let schema = Schema::builtin();
                let limits = Limits::default();
                let rows = through_wire(cs.clone()).patches(&schema, &limits);
                // Through the wire too: the batch keeps the field's bytes and counts its customers.
                let Some(columns) = columns::to_columns(&cs) else {
                    return Ok(());
                };
                let sent = CustomerBatch::from_columns(&columns);
                let received = CustomerBatch::decode(sent.encode_to_vec().as_slice()).unwrap();
                prop_assert_eq!(received.len(), cs.len());
                prop_assert_eq!(received.columns().unwrap(), Some(columns));
                // A column of a read-only attribute is refused here; the same value in a
                // message is refused by the store, when the batch is applied.
                let read_only = |patches: &[CustomerPatch]| {
                    patches.iter().flat_map(|p| &p.attrs).any(|(a, _)| schema.attr(*a).read_only)
                };
                match (received.patches(&schema, &limits), rows) {
                    (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                    (Err(_), Err(_)) => {}
                    (Err(e), Ok(b)) if read_only(&b) => {
                        prop_assert!(e.to_string().contains("maintained by RecordOrders"), "{}", e);
                    }
                    (a, b) => prop_assert!(false, "columns {a:?} but rows {b:?}"),
                }
            }

            /// The columns reader reads any encoding as protobuf decoding does: the same
            /// message encoded another way (values split over repeated occurrences of their
            /// field, scalars unpacked, a name or a values field of another kind given first,
            /// unknown fields) reads as its canonical encoding does.
            #[test]
            fn columns_read_any_encoding_as_protobuf_does(
                cs in prop::collection::vec(typed_customer(), 1..8),
                ways in prop::collection::vec(0..6u8, 1..6),
            ) {
                let schema = Schema::builtin();
                let Some(columns) = columns::to_columns(&cs) else {
                    return Ok(());
                };
                let canonical = Bytes::from(columns.encode_to_vec());
                let other = Bytes::from(reencode(&columns, &ways));
                // Protobuf itself reads the other encoding as the same message.
                prop_assert_eq!(&pb::CustomerColumns::decode(other.clone()).unwrap(), &columns);
                let a = columns::column_batch(&schema, None, &canonical);
                let b = columns::column_batch(&schema, None, &other);
                match (a, b) {
                    (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                    (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
                    (a, b) => prop_assert!(false, "canonical {a:?} but other {b:?}"),
                }
            }

            #[test]
            fn columns_reader_refuses_what_protobuf_refuses(bytes in prop::collection::vec(any::<u8>(), 0..96)) {
                let schema = Schema::builtin();
                let read = columns::column_batch(&schema, None, &Bytes::from(bytes.clone()));
                match pb::CustomerColumns::decode(bytes.as_slice()) {
                    Err(_) => prop_assert!(read.is_err()),
                    Ok(msg) => {
                        let canonical = columns::column_batch(&schema, None, &Bytes::from(msg.encode_to_vec()));
                        match (canonical, read) {
                            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                            (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
                            (a, b) => prop_assert!(false, "canonical {a:?} but read {b:?}"),
                        }
                    }
                }
            }

            #[test]
            fn same_result_as_decoding_then_converting(c in customer()) {
                let schema = Schema::builtin();
                let wire = customer_patch(&schema, &c.encode_to_vec());
                let generic = convert::customer_patch(&schema, c);
                match (wire, generic) {
                    (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                    (Err(_), Err(_)) => {}
                    (a, b) => prop_assert!(false, "wire {a:?} but generic {b:?}"),
                }
            }

            #[test]
            fn batches_agree_with_converting_each(cs in prop::collection::vec(customer(), 1..8)) {
                // Customers decoded one after another reuse the names the previous one gave.
                let schema = Schema::builtin();
                let limits = Limits::default();
                let wire = through_wire(cs.clone()).patches(&schema, &limits);
                let generic: Result<Vec<CustomerPatch>> = cs
                    .into_iter()
                    .map(|c| convert::customer_patch(&schema, c))
                    .collect();
                match (wire, generic) {
                    (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                    (Err(_), Err(_)) => {}
                    (a, b) => prop_assert!(false, "wire {a:?} but generic {b:?}"),
                }
            }

            #[test]
            fn arbitrary_bytes_never_panic_and_agree(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
                let schema = Schema::builtin();
                let wire = customer_patch(&schema, &bytes);
                if let Ok(c) = pb::Customer::decode(bytes.as_slice())
                    && let Ok(expected) = convert::customer_patch(&schema, c)
                {
                    prop_assert_eq!(wire.unwrap(), expected);
                }
            }
        }
    }
}
