//! A batch of customers given column by column, as the writer applies it.
//!
//! A bulk load sends each attribute once per batch with its values packed by type. Turning that
//! back into one [`CustomerPatch`] per customer costs a vector and a [`Value`] per cell, and
//! the writer would look each attribute up again for every customer. A [`ColumnBatch`] keeps the
//! values typed and packed: the writer takes a column's state once per run of customers of one
//! shard and sets plain numbers and dictionary codes.

use bytes::Bytes;

use crate::columnar::dict::{Dict, NO_CODE};
use crate::columnar::schema::{AttrId, AttrType, Schema};
use crate::columnar::value::Value;
use crate::store::input::CustomerPatch;

/// Strings held as spans of one shared buffer (a received request): reading a batch copies
/// none of them, and dropping it frees one buffer.
#[derive(Clone, Default)]
pub struct Strs {
    buf: Bytes,
    /// Start and end of each string in `buf`; every span is valid UTF-8.
    spans: Vec<(u32, u32)>,
}

impl Strs {
    /// No strings yet, spans of `buf` to come.
    pub fn over(buf: Bytes) -> Strs {
        Strs {
            buf,
            spans: Vec::new(),
        }
    }

    /// Strings copied into a buffer of their own.
    pub fn of<S: AsRef<str>>(strings: impl IntoIterator<Item = S>) -> Strs {
        let mut buf = Vec::new();
        let mut spans = Vec::new();
        for s in strings {
            let start = buf.len();
            buf.extend_from_slice(s.as_ref().as_bytes());
            spans.push((span_end(start), span_end(buf.len())));
        }
        Strs {
            buf: buf.into(),
            spans,
        }
    }

    /// Appends the string at `range` of the buffer, if it is UTF-8. ASCII, the usual case, is
    /// told a word at a time; the general check steps through short strings a byte at a time.
    pub fn push(&mut self, range: std::ops::Range<usize>) -> std::result::Result<(), std::str::Utf8Error> {
        let bytes = &self.buf[range.clone()];
        if !bytes.is_ascii() {
            std::str::from_utf8(bytes)?;
        }
        self.spans.push((span_end(range.start), span_end(range.end)));
        Ok(())
    }

    /// String `i`.
    #[inline]
    pub fn get(&self, i: usize) -> &str {
        let (start, end) = self.spans[i];
        let bytes = &self.buf[start as usize..end as usize];
        // SAFETY: every span was checked to be UTF-8 when pushed (or copied from a `&str` by
        // `Strs::of`), and `buf` is immutable. Checking again on every read cost a third of the
        // time spent reading a batch.
        unsafe { std::str::from_utf8_unchecked(bytes) }
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &str> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// The strings at `picks` (positions in these), over the same buffer.
    pub fn pick(&self, picks: &[u32]) -> Strs {
        Strs {
            buf: self.buf.clone(),
            spans: picks.iter().map(|&p| self.spans[p as usize]).collect(),
        }
    }

    /// Sorts each set of strings (set `k` ends before `ends[k]`) and drops repeats within it,
    /// moving the sets up over the room repeats leave; `ends` follow.
    pub fn sort_sets(&mut self, ends: &mut [u32]) {
        let buf = &self.buf;
        let text = |&(start, end): &(u32, u32)| &buf[start as usize..end as usize];
        let (mut start, mut kept) = (0, 0);
        for end in ends.iter_mut() {
            let set = &mut self.spans[start..*end as usize];
            set.sort_unstable_by(|a, b| text(a).cmp(text(b)));
            let first_kept = kept;
            for i in start..*end as usize {
                if kept == first_kept || text(&self.spans[kept - 1]) != text(&self.spans[i]) {
                    self.spans[kept] = self.spans[i];
                    kept += 1;
                }
            }
            start = *end as usize;
            *end = span_end(kept);
        }
        self.spans.truncate(kept);
    }
}

/// A buffer position as a span bound (buffers hold one request, far below 4 GiB).
fn span_end(at: usize) -> u32 {
    u32::try_from(at).expect("a batch's buffer is under 4 GiB")
}

impl PartialEq for Strs {
    fn eq(&self, other: &Strs) -> bool {
        self.iter().eq(other.iter())
    }
}

impl std::fmt::Debug for Strs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// Customers column by column, checked: every id and e-mail is valid, every value fits its
/// attribute's type, and no column is of a read-only attribute.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ColumnBatch {
    pub ids: Strs,
    /// One per customer, or none when the batch sets no e-mail; an empty one keeps the
    /// customer's.
    pub emails: Strs,
    /// At most one per attribute, in attribute order.
    pub columns: Vec<AttrColumn>,
}

/// One attribute's values.
#[derive(Debug, Clone, PartialEq)]
pub struct AttrColumn {
    pub attr: AttrId,
    /// The rows (positions in the batch) without a value, ascending: they keep theirs.
    pub missing: Vec<u32>,
    /// One value for each other row, in row order.
    pub values: ColumnValues,
}

/// A column's values, typed as the store keeps them.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnValues {
    Bool(Vec<bool>),
    /// `int`, `money` and `timestamp` (microseconds).
    I64(Vec<i64>),
    F64(Vec<f64>),
    /// `date`: days since the epoch.
    I32(Vec<i32>),
    Keyword(Coded),
    /// `keywords`: value `k` is `items[ends[k - 1]..ends[k]]` (sorted, no duplicates; none removes
    /// the value).
    Keywords {
        items: Coded,
        ends: Vec<u32>,
    },
    /// The empty text removes the value.
    Text(Strs),
}

/// Strings of a dictionary-encoded attribute, with their codes once looked up.
#[derive(Debug, Clone, Default)]
pub struct Coded {
    /// One per value, or, with `picks`, the distinct strings the values pick from.
    pub strings: Strs,
    /// Empty, or one per value: the position of its string in `strings`.
    pub picks: Vec<u32>,
    /// Empty until [`ColumnBatch::look_up_codes`]; then one per string of `strings`,
    /// [`NO_CODE`] for a string not in the dictionary then.
    pub codes: Vec<u32>,
}

impl Coded {
    /// Strings given one per value.
    pub fn plain(strings: Strs) -> Coded {
        Coded {
            strings,
            ..Coded::default()
        }
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        if self.picks.is_empty() {
            self.strings.len()
        } else {
            self.picks.len()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The position in `strings` of value `k`'s string.
    #[inline]
    fn at(&self, k: usize) -> usize {
        if self.picks.is_empty() {
            k
        } else {
            self.picks[k] as usize
        }
    }

    /// Value `k`'s string.
    #[inline]
    pub fn string(&self, k: usize) -> &str {
        self.strings.get(self.at(k))
    }

    /// The code of value `k`'s string, interned when it was not known.
    #[inline]
    pub fn code(&self, k: usize, dict: &Dict) -> u32 {
        let at = self.at(k);
        match self.codes.get(at) {
            Some(&code) if code != NO_CODE => code,
            _ => dict.intern(self.strings.get(at)),
        }
    }
}

/// Values compare by their strings, however they were given.
impl PartialEq for Coded {
    fn eq(&self, other: &Coded) -> bool {
        self.len() == other.len() && (0..self.len()).all(|k| self.string(k) == other.string(k))
    }
}

impl ColumnBatch {
    /// Number of customers.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The e-mail row `i` sets, if any.
    pub fn email(&self, i: usize) -> Option<&str> {
        (i < self.emails.len())
            .then(|| self.emails.get(i))
            .filter(|e| !e.is_empty())
    }

    /// The attributes the batch sets.
    pub fn attrs(&self) -> Vec<AttrId> {
        self.columns.iter().map(|c| c.attr).collect()
    }

    /// Looks up the dictionary code of every keyword string (off the writer thread, which then
    /// only interns the new ones), each distinct string of a dictionary-encoded column once.
    /// Reads the dictionaries only.
    pub fn look_up_codes(&mut self, schema: &Schema) {
        for column in &mut self.columns {
            let Some(dict) = schema.attr(column.attr).dict.as_deref() else {
                continue;
            };
            let coded = match &mut column.values {
                ColumnValues::Keyword(coded) | ColumnValues::Keywords { items: coded, .. } => coded,
                _ => continue,
            };
            let wanted: Vec<(usize, &str)> = coded.strings.iter().enumerate().collect();
            let mut codes = vec![NO_CODE; wanted.len()];
            dict.lookup_each(&wanted, |k, code| codes[k] = code);
            coded.codes = codes;
        }
    }

    /// The same customers as patches (what they mean one by one).
    pub fn patches(&self, schema: &Schema) -> Vec<CustomerPatch> {
        let mut out: Vec<CustomerPatch> = self
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| CustomerPatch {
                customer_id: id.to_string(),
                email: self.email(i).map(str::to_string),
                attrs: Vec::with_capacity(self.columns.len()),
            })
            .collect();
        for column in &self.columns {
            let ty = schema.attr(column.attr).ty;
            let mut rows = Rows::new(&column.missing);
            for (i, patch) in out.iter_mut().enumerate() {
                if let Some(k) = rows.value_of(i) {
                    patch.attrs.push((column.attr, Some(column.values.value(k, ty))));
                }
            }
        }
        out
    }
}

impl ColumnValues {
    /// Value `k` as a [`Value`] of an attribute of type `ty`.
    pub fn value(&self, k: usize, ty: AttrType) -> Value {
        match self {
            ColumnValues::Bool(v) => Value::Bool(v[k]),
            ColumnValues::I64(v) => match ty {
                AttrType::Money => Value::Money(v[k]),
                AttrType::Timestamp => Value::Timestamp(v[k]),
                _ => Value::Int(v[k]),
            },
            ColumnValues::F64(v) => Value::Float(v[k]),
            ColumnValues::I32(v) => Value::Date(v[k]),
            ColumnValues::Keyword(coded) => Value::Keyword(coded.string(k).to_string()),
            ColumnValues::Keywords { items, ends } => {
                Value::Keywords(item_range(ends, k).map(|j| items.string(j).to_string()).collect())
            }
            ColumnValues::Text(v) => Value::Text(v.get(k).to_string()),
        }
    }
}

/// The items of `keywords` value `k`.
#[inline]
pub fn item_range(ends: &[u32], k: usize) -> std::ops::Range<usize> {
    let start = if k == 0 { 0 } else { ends[k - 1] as usize };
    start..ends[k] as usize
}

/// Walks a column's rows in order, telling which value each has: rows must be asked for in
/// ascending order.
#[derive(Debug)]
pub struct Rows<'a> {
    missing: &'a [u32],
    /// Values handed out so far.
    next_value: usize,
}

impl<'a> Rows<'a> {
    pub fn new(missing: &'a [u32]) -> Rows<'a> {
        Rows {
            missing,
            next_value: 0,
        }
    }

    /// The index of row `row`'s value, `None` for a missing row.
    #[inline]
    pub fn value_of(&mut self, row: usize) -> Option<usize> {
        if let Some((&first, rest)) = self.missing.split_first()
            && first as usize == row
        {
            self.missing = rest;
            return None;
        }
        self.next_value += 1;
        Some(self.next_value - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::segment::registry::SegmentDef;
    use crate::store::input::CustomerKey;
    use crate::store::{KeyHashes, Store, no_log};
    use crate::time::ManualClock;
    use proptest::prelude::*;
    use std::sync::Arc;

    #[test]
    fn strs_take_ascii_and_utf8_and_refuse_the_rest() {
        let mut buf = "customer-0001zoë@exämple.fr".as_bytes().to_vec();
        buf.extend_from_slice(b"\xff\xfeabc\xc3");
        let mut strs = Strs::over(buf.into());
        strs.push(0..13).unwrap();
        strs.push(13..29).unwrap();
        assert!(strs.push(29..34).is_err(), "bytes that are not UTF-8");
        assert!(strs.push(31..35).is_err(), "a sequence cut short");
        strs.push(31..34).unwrap();
        assert_eq!(
            strs.iter().collect::<Vec<_>>(),
            ["customer-0001", "zoë@exämple.fr", "abc"]
        );
    }

    /// 2026-01-01T00:00:00Z.
    const NOW: i64 = 1_767_225_600_000_000;
    const DAY: i64 = 86_400_000_000;

    /// A store with a float and a text attribute, and segments over every kind of column,
    /// one of them relative to the clock (so writes move customers in its time index).
    fn store() -> (Store, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(NOW));
        let s = Store::with_clock(clock.clone());
        s.define_attribute("score", AttrType::Float, "", &mut no_log)
            .unwrap();
        s.define_attribute("note", AttrType::Text, "", &mut no_log)
            .unwrap();
        let rules = [
            ("women", r#"gender = "F""#),
            ("recent", "registered_at within 30d"),
            ("tagged", r#"tags has_any ("a", "b")"#),
            ("big", "household_size > 2 and score >= 0.5 and vip"),
            ("young", "birth_date > 2000-01-01 and note is set"),
        ];
        for (id, rule) in rules {
            let def = SegmentDef {
                id: id.into(),
                name: id.into(),
                rule: Some(crate::segment::text::parse(rule).unwrap()),
                ..SegmentDef::default()
            };
            s.create_segment(def, &[], &[], &mut no_log).unwrap();
        }
        s.advance_time(None, &mut no_log).unwrap();
        (s, clock)
    }

    fn values(attr: &'static str, n: usize) -> BoxedStrategy<(&'static str, ColumnValues)> {
        let strings = |re: &'static str| prop::collection::vec(re, n);
        match attr {
            "gender" => (strings("[FMX]"), any::<bool>())
                .prop_map(|(v, distinct)| ColumnValues::Keyword(coded(v, distinct)))
                .boxed(),
            "note" => strings("[a-z]{0,2}")
                .prop_map(|v| ColumnValues::Text(Strs::of(v)))
                .boxed(),
            "vip" => prop::collection::vec(any::<bool>(), n)
                .prop_map(ColumnValues::Bool)
                .boxed(),
            "household_size" => prop::collection::vec(0..5i64, n)
                .prop_map(ColumnValues::I64)
                .boxed(),
            "registered_at" => prop::collection::vec(NOW - 60 * DAY..NOW, n)
                .prop_map(ColumnValues::I64)
                .boxed(),
            "score" => prop::collection::vec(0.0..1.0f64, n)
                .prop_map(ColumnValues::F64)
                .boxed(),
            "birth_date" => prop::collection::vec(10_000..12_000i32, n)
                .prop_map(ColumnValues::I32)
                .boxed(),
            _ => prop::collection::vec(prop::collection::btree_set("[a-c]", 0..3), n)
                .prop_map(|sets| keywords(sets.iter().map(|set| set.iter().cloned().collect())))
                .boxed(),
        }
        .prop_map(move |v| (attr, v))
        .boxed()
    }

    /// Ids, e-mails, and columns by name with the rows they miss (their values there unused).
    type Drawn = (
        Vec<String>,
        Vec<Option<String>>,
        Vec<(&'static str, Vec<bool>, ColumnValues)>,
    );

    /// A batch of `n` customers among ids c0..c9 (so some exist already), some giving e-mails
    /// among a few (so e-mails move between customers), each column missing on some rows.
    fn batch(n: usize) -> impl Strategy<Value = Drawn> {
        let attrs = [
            "gender",
            "note",
            "vip",
            "household_size",
            "registered_at",
            "score",
            "birth_date",
            "tags",
        ];
        let ids = prop::sample::subsequence((0..10).collect::<Vec<u32>>(), n).prop_shuffle();
        let emails = prop::option::of(prop::collection::vec(prop::option::of(0..4u32), n));
        let columns =
            prop::sample::subsequence(attrs.to_vec(), 0..=attrs.len()).prop_flat_map(move |names| {
                names
                    .into_iter()
                    .map(|a| (prop::collection::vec(prop::bool::weighted(0.3), n), values(a, n)))
                    .collect::<Vec<_>>()
            });
        (ids, emails, columns).prop_map(|(ids, emails, columns)| {
            (
                ids.iter().map(|i| format!("c{i}")).collect(),
                emails
                    .map(|e| e.into_iter().map(|e| e.map(|k| format!("m{k}@x.fr"))).collect())
                    .unwrap_or_default(),
                columns
                    .into_iter()
                    .map(|(missing, (a, v))| (a, missing, v))
                    .collect(),
            )
        })
    }

    /// The batch the strategy describes: a column's values for its missing rows are dropped.
    fn column_batch(s: &Store, (ids, emails, columns): Drawn) -> ColumnBatch {
        let schema = s.schema();
        let mut columns: Vec<AttrColumn> = columns
            .into_iter()
            .map(|(name, missing, values)| {
                let def = schema.get(name).unwrap();
                let missing_rows: Vec<u32> = (0..ids.len() as u32).filter(|&r| missing[r as usize]).collect();
                let keep = |r: &usize| !missing[*r];
                let ty = def.ty;
                let kept: Vec<Value> = (0..ids.len()).filter(keep).map(|r| values.value(r, ty)).collect();
                AttrColumn {
                    attr: def.id,
                    missing: missing_rows,
                    values: from_values(&kept, &values),
                }
            })
            .collect();
        columns.sort_by_key(|c| c.attr);
        ColumnBatch {
            ids: Strs::of(ids),
            emails: Strs::of(emails.into_iter().map(Option::unwrap_or_default)),
            columns,
        }
    }

    /// `kept` packed again in the form of `like`.
    fn from_values(kept: &[Value], like: &ColumnValues) -> ColumnValues {
        match like {
            ColumnValues::Bool(_) => {
                ColumnValues::Bool(kept.iter().map(|v| matches!(v, Value::Bool(true))).collect())
            }
            ColumnValues::I64(_) => ColumnValues::I64(
                kept.iter()
                    .map(|v| match v {
                        Value::Int(x) | Value::Money(x) | Value::Timestamp(x) => *x,
                        _ => unreachable!(),
                    })
                    .collect(),
            ),
            ColumnValues::F64(_) => ColumnValues::F64(
                kept.iter()
                    .map(|v| {
                        if let Value::Float(x) = v {
                            *x
                        } else {
                            unreachable!()
                        }
                    })
                    .collect(),
            ),
            ColumnValues::I32(_) => ColumnValues::I32(
                kept.iter()
                    .map(|v| {
                        if let Value::Date(x) = v {
                            *x
                        } else {
                            unreachable!()
                        }
                    })
                    .collect(),
            ),
            ColumnValues::Keyword(like) => ColumnValues::Keyword(coded(
                kept.iter()
                    .map(|v| {
                        let Value::Keyword(x) = v else { unreachable!() };
                        x.clone()
                    })
                    .collect(),
                !like.picks.is_empty(),
            )),
            ColumnValues::Text(_) => ColumnValues::Text(Strs::of(kept.iter().map(|v| {
                if let Value::Text(x) = v {
                    x.clone()
                } else {
                    unreachable!()
                }
            }))),
            ColumnValues::Keywords { .. } => keywords(kept.iter().map(|v| {
                let Value::Keywords(set) = v else { unreachable!() };
                set.clone()
            })),
        }
    }

    /// `keywords` values, each a sorted set.
    fn keywords(sets: impl Iterator<Item = Vec<String>>) -> ColumnValues {
        let mut strings = Vec::new();
        let mut ends = Vec::new();
        for set in sets {
            strings.extend(set);
            ends.push(strings.len() as u32);
        }
        ColumnValues::Keywords {
            items: Coded::plain(Strs::of(strings)),
            ends,
        }
    }

    /// Keyword values given one per value, or each distinct one once when `distinct` (and
    /// there are any).
    fn coded(values: Vec<String>, distinct: bool) -> Coded {
        if !distinct || values.is_empty() {
            return Coded::plain(Strs::of(values));
        }
        let mut strings: Vec<&str> = Vec::new();
        let picks = values
            .iter()
            .map(|v| match strings.iter().position(|s| s == v) {
                Some(at) => at as u32,
                None => {
                    strings.push(v);
                    strings.len() as u32 - 1
                }
            })
            .collect();
        Coded {
            strings: Strs::of(strings),
            picks,
            codes: Vec::new(),
        }
    }

    /// Every customer, e-mail owner and membership of `a` and `b` agree.
    fn same_state(a: &Store, b: &Store) -> std::result::Result<(), TestCaseError> {
        prop_assert_eq!(a.customer_count(), b.customer_count());
        for i in 0..10 {
            let key = CustomerKey::Id(format!("c{i}"));
            prop_assert_eq!(a.get_customer(&key).ok(), b.get_customer(&key).ok());
            for seg in ["women", "recent", "tagged", "big", "young"] {
                prop_assert_eq!(
                    a.is_member(&format!("c{i}"), seg).unwrap(),
                    b.is_member(&format!("c{i}"), seg).unwrap(),
                    "c{} in {}",
                    i,
                    seg
                );
            }
        }
        for k in 0..4 {
            let email = format!("m{k}@x.fr");
            prop_assert_eq!(
                a.ordinal_of_email(&email).and_then(|o| a.id_at(o)),
                b.ordinal_of_email(&email).and_then(|o| b.id_at(o))
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Batches applied column by column leave the store as the same customers applied one
        /// by one as patches: values, e-mails, segment memberships, refusals. So do the same
        /// batches handed to a store's applier thread, several pending at once (new customers
        /// of one batch updated, or their e-mails claimed, by the next ones).
        #[test]
        fn columns_apply_as_their_patches(
            batches in prop::collection::vec(((1..7usize).prop_flat_map(batch), prop::option::of(0..10u32)), 1..6),
        ) {
            let ((by_columns, clock_a), (by_patches, clock_b)) = (store(), store());
            let (queued, clock_q) = store();
            let queued = Arc::new(queued);
            queued.start_applier();
            for (b, erase) in batches {
                // An erased customer's ordinal is given to the next one created.
                if let Some(i) = erase {
                    let key = CustomerKey::Id(format!("c{i}"));
                    let a = by_columns.delete(&key, &mut no_log).is_ok();
                    prop_assert_eq!(a, by_patches.delete(&key, &mut no_log).is_ok());
                    prop_assert_eq!(a, queued.delete(&key, &mut no_log).is_ok());
                }
                let mut columns = column_batch(&by_columns, b);
                let patches = columns.patches(&by_patches.schema());
                columns.look_up_codes(&by_columns.schema());
                let hashes = KeyHashes::of_columns(&columns);
                let a = by_columns.upsert_columns(&columns, &hashes, &mut no_log);
                let q = queued.upsert_columns_queued(columns, &hashes, &mut no_log);
                let b = by_patches.upsert(&patches, &mut no_log);
                match (&a, &q) {
                    (Ok(a), Ok(q)) => prop_assert_eq!(a, q),
                    (Err(a), Err(q)) => prop_assert_eq!(a.to_string(), q.to_string()),
                    (a, q) => prop_assert!(false, "columns {a:?} but queued {q:?}"),
                }
                match (a, b) {
                    (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
                    (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
                    (a, b) => prop_assert!(false, "columns {a:?} but patches {b:?}"),
                }
                same_state(&by_columns, &by_patches)?;
            }
            queued.wait_written();
            same_state(&by_columns, &queued)?;
            // Customers leave `recent` through the time index the writes kept.
            for (s, clock) in [(&by_columns, &clock_a), (&by_patches, &clock_b), (&*queued, &clock_q)] {
                clock.advance(20 * DAY);
                s.advance_time(None, &mut no_log).unwrap();
            }
            same_state(&by_columns, &by_patches)?;
            same_state(&by_columns, &queued)?;
        }
    }
}
