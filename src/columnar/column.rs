//! Typed attribute columns of one shard.
//!
//! Every column has a presence bitmap (a predicate on a missing value is false). Numbers live in
//! dense vectors indexed by local ordinal, grown on first write; `keyword` columns hold a
//! dictionary code per customer (1, 2 or 4 bytes, widened as the dictionary grows) and a bitmap per
//! value held by at least [`COMMON`] customers of the shard, rarer values sharing one index;
//! `keywords` columns hold only a bitmap per value. Bitmaps hold global ordinals, so a
//! shard's bitmap is one roaring container and shard results combine without rewriting.

use foldhash::{HashMap, HashMapExt};

use roaring::RoaringBitmap;

use crate::columnar::dict::{Dict, NO_CODE};
use crate::columnar::schema::AttrType;
use crate::columnar::strings::StrColumn;
use crate::columnar::value::Value;
use crate::columnar::{SHARD_SIZE, local};

/// Length to grow a dense vector to so that `local` fits: doubling, capped at the shard size.
pub fn grown_len(local: usize) -> usize {
    (local + 1).next_power_of_two().clamp(256, SHARD_SIZE)
}

fn slot<T: Copy + Default>(values: &mut Vec<T>, local: usize) -> &mut T {
    if local >= values.len() {
        let len = grown_len(local);
        values.reserve_exact(len - values.len());
        values.resize(len, T::default());
    }
    &mut values[local]
}

/// Dictionary codes, stored as `code + 1` (0 = absent) in the narrowest width that fits.
#[derive(Debug, Clone)]
pub enum Codes {
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
}

impl Codes {
    /// Number of codes held (up to the shard's last customer with one).
    fn len(&self) -> usize {
        match self {
            Codes::U8(v) => v.len(),
            Codes::U16(v) => v.len(),
            Codes::U32(v) => v.len(),
        }
    }

    /// The code at `local`, if one is set there.
    pub fn get(&self, local: usize) -> Option<u32> {
        let stored = match self {
            Codes::U8(v) => v.get(local).map(|&c| u32::from(c)),
            Codes::U16(v) => v.get(local).map(|&c| u32::from(c)),
            Codes::U32(v) => v.get(local).copied(),
        };
        stored.filter(|&c| c != 0).map(|c| c - 1)
    }

    fn set(&mut self, local: usize, code: Option<u32>) {
        let stored = code.map_or(0, |c| c + 1);
        match self {
            Codes::U8(v) if stored > u32::from(u8::MAX) => {
                *self = Codes::U16(v.iter().map(|&c| u16::from(c)).collect());
                self.set(local, code);
            }
            Codes::U16(v) if stored > u32::from(u16::MAX) => {
                *self = Codes::U32(v.iter().map(|&c| u32::from(c)).collect());
                self.set(local, code);
            }
            Codes::U8(v) => *slot(v, local) = stored as u8,
            Codes::U16(v) => *slot(v, local) = stored as u16,
            Codes::U32(v) => *slot(v, local) = stored,
        }
    }

    /// The ordinals (from `base`, the shard's first) whose code is `code`: one tight pass over
    /// the codes.
    fn holding(&self, code: u32, base: u32) -> RoaringBitmap {
        let stored = code + 1;
        match self {
            Codes::U8(v) => {
                u8::try_from(stored).map_or_else(|_| RoaringBitmap::new(), |s| matching(v, base, |c| c == s))
            }
            Codes::U16(v) => {
                u16::try_from(stored).map_or_else(|_| RoaringBitmap::new(), |s| matching(v, base, |c| c == s))
            }
            Codes::U32(v) => matching(v, base, |c| c == stored),
        }
    }

    /// The ordinals (from `base`) whose code is in `set`: one pass over the codes, a bitset
    /// test each (stored codes index it directly; 0, no value, is never in it).
    fn holding_any(&self, set: &CodeSet, base: u32) -> RoaringBitmap {
        match self {
            Codes::U8(v) => matching(v, base, |c| set.has_stored(c.into())),
            Codes::U16(v) => matching(v, base, |c| set.has_stored(c.into())),
            Codes::U32(v) => matching(v, base, |c| set.has_stored(c)),
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Codes::U8(v) => v.capacity(),
            Codes::U16(v) => v.capacity() * 2,
            Codes::U32(v) => v.capacity() * 4,
        }
    }
}

/// The ordinals (from `base`, the shard's first) of the stored codes `v` for which `hit` holds.
/// Eight codes to a byte of match bits, over fixed-size chunks and branch-free, so the compiler
/// turns it into vector compares (about 8 µs per 65,536 codes against one code; iterator chunks
/// of unknown length took 38).
fn matching<T: Copy>(v: &[T], base: u32, hit: impl Fn(T) -> bool) -> RoaringBitmap {
    let byte = |chunk: &[T]| {
        chunk
            .iter()
            .enumerate()
            .fold(0u8, |b, (j, &c)| b | (u8::from(hit(c)) << j))
    };
    let mut bits: Vec<u8> = Vec::with_capacity(v.len().div_ceil(8));
    let mut chunks = v.chunks_exact(8);
    for chunk in &mut chunks {
        let chunk: &[T; 8] = chunk.try_into().expect("chunks of 8");
        bits.push(byte(chunk));
    }
    if !chunks.remainder().is_empty() {
        bits.push(byte(chunks.remainder()));
    }
    RoaringBitmap::from_lsb0_bytes(base, &bits)
}

/// Inserts `ords` into `bm`: consecutive ascending ordinals after the bitmap's last value as one
/// range, other ascending ones after it by appending, anything else (in any order) value by value.
pub fn insert_all(bm: &mut RoaringBitmap, ords: &[u32]) {
    let Some(&first) = ords.first() else {
        return;
    };
    if bm.max().is_none_or(|max| max < first) {
        if ords.iter().zip(first..).all(|(&o, want)| o == want) {
            bm.insert_range(first..first + ords.len() as u32);
            return;
        }
        // Stops at the first ordinal out of order, the ones before it inserted.
        if bm.append(ords.iter().copied()).is_ok() {
            return;
        }
    }
    bm.extend(ords.iter().copied());
}

/// Inserts `ord` into `bm`, a bitmap of one shard's ordinals (one container). An array
/// container (at most 4,096 values) takes an ordinal past its last as a push: a bulk load's
/// new customers skip the binary search an insert does. A bitmap container sets a bit either
/// way (its push would first look for its last bit).
#[inline]
fn add_one(bm: &mut RoaringBitmap, ord: u32) {
    if bm.len() > 4096 || bm.try_push(ord).is_err() {
        bm.insert(ord);
    }
}

/// A set of dictionary codes as a bitset over their stored form (`code + 1`).
struct CodeSet {
    words: Vec<u64>,
}

impl CodeSet {
    fn new(codes: &[u32]) -> CodeSet {
        let top = codes.iter().max().map_or(0, |&c| c as usize + 1);
        let mut words = vec![0u64; top / 64 + 1];
        for &c in codes {
            let stored = c as usize + 1;
            words[stored / 64] |= 1 << (stored % 64);
        }
        CodeSet { words }
    }

    /// Whether stored code `stored` (0: no value) is in the set.
    #[inline]
    fn has_stored(&self, stored: u32) -> bool {
        let s = stored as usize;
        self.words.get(s / 64).is_some_and(|w| w >> (s % 64) & 1 == 1)
    }

    fn contains(&self, code: u32) -> bool {
        self.has_stored(code + 1)
    }
}

/// The storage of a column, by attribute type.
#[derive(Debug, Clone)]
pub enum ColumnData {
    /// Customers whose value is `true`.
    Bool(RoaringBitmap),
    /// `int`, `money` and `timestamp`.
    I64(Vec<i64>),
    F64(Vec<f64>),
    /// `date`: days since the epoch.
    I32(Vec<i32>),
    /// Values held by at least [`COMMON`] customers of the shard have a bitmap in `by_value`;
    /// customers with rarer values are in `rare`.
    Keyword {
        codes: Codes,
        by_value: HashMap<u32, RoaringBitmap>,
        rare: Rare,
    },
    Keywords {
        by_value: HashMap<u32, RoaringBitmap>,
    },
    Text(StrColumn),
}

/// One attribute's values in one shard.
#[derive(Debug, Clone)]
pub struct Column {
    /// Customers that have a value.
    pub present: RoaringBitmap,
    pub data: ColumnData,
}

impl Column {
    pub fn new(ty: AttrType) -> Column {
        let data = match ty {
            AttrType::Bool => ColumnData::Bool(RoaringBitmap::new()),
            AttrType::Int | AttrType::Money | AttrType::Timestamp => ColumnData::I64(Vec::new()),
            AttrType::Float => ColumnData::F64(Vec::new()),
            AttrType::Date => ColumnData::I32(Vec::new()),
            AttrType::Keyword => ColumnData::Keyword {
                codes: Codes::U8(Vec::new()),
                by_value: HashMap::new(),
                rare: Rare::default(),
            },
            AttrType::Keywords => ColumnData::Keywords {
                by_value: HashMap::new(),
            },
            AttrType::Text => ColumnData::Text(StrColumn::default()),
        };
        Column {
            present: RoaringBitmap::new(),
            data,
        }
    }

    /// Sets the value of ordinal `ord`. The value's type matches the column (checked on input);
    /// `dict` is the attribute's dictionary for keyword types.
    pub fn set(&mut self, ord: u32, value: &Value, dict: Option<&Dict>) {
        self.set_known(ord, value, dict, &[]);
    }

    /// [`Column::set`] with the dictionary codes of the value's strings (one for a `keyword`, one
    /// per item for `keywords`) looked up beforehand, off the writer thread: [`NO_CODE`] for a
    /// string that had none then, and an empty slice when nothing was looked up.
    pub fn set_known(&mut self, ord: u32, value: &Value, dict: Option<&Dict>, known: &[u32]) {
        let code_of = |k: usize, s: &str, dict: &Dict| match known.get(k) {
            Some(&code) if code != NO_CODE => code,
            _ => dict.intern(s),
        };
        match value {
            Value::Bool(b) => self.set_bool(ord, *b),
            Value::Int(x) | Value::Money(x) | Value::Timestamp(x) => self.set_i64(ord, *x),
            Value::Float(x) => self.set_f64(ord, *x),
            Value::Date(x) => self.set_i32(ord, *x),
            Value::Keyword(s) => {
                let dict = dict.expect("keyword column has a dictionary");
                self.set_code(ord, code_of(0, s, dict));
            }
            Value::Keywords(items) => {
                let dict = dict.expect("keywords column has a dictionary");
                let codes = items.iter().enumerate().map(|(k, s)| code_of(k, s, dict));
                self.set_code_set(ord, codes);
            }
            Value::Text(s) => self.set_text(ord, s),
        }
    }

    /// Sets a `bool` value.
    pub fn set_bool(&mut self, ord: u32, b: bool) {
        let ColumnData::Bool(trues) = &mut self.data else {
            unreachable!("a bool for column {:?}", self.data)
        };
        if b {
            add_one(trues, ord);
        } else {
            trues.remove(ord);
        }
        add_one(&mut self.present, ord);
    }

    /// Sets an `int`, `money` or `timestamp` value.
    pub fn set_i64(&mut self, ord: u32, x: i64) {
        let ColumnData::I64(v) = &mut self.data else {
            unreachable!("an i64 for column {:?}", self.data)
        };
        *slot(v, local(ord)) = x;
        add_one(&mut self.present, ord);
    }

    /// Sets a `float` value.
    pub fn set_f64(&mut self, ord: u32, x: f64) {
        let ColumnData::F64(v) = &mut self.data else {
            unreachable!("an f64 for column {:?}", self.data)
        };
        *slot(v, local(ord)) = x;
        add_one(&mut self.present, ord);
    }

    /// Sets a `date` value (days since the epoch).
    pub fn set_i32(&mut self, ord: u32, x: i32) {
        let ColumnData::I32(v) = &mut self.data else {
            unreachable!("a date for column {:?}", self.data)
        };
        *slot(v, local(ord)) = x;
        add_one(&mut self.present, ord);
    }

    /// Sets a `keyword` value by its dictionary code.
    pub fn set_code(&mut self, ord: u32, code: u32) {
        let ColumnData::Keyword {
            codes,
            by_value,
            rare,
        } = &mut self.data
        else {
            unreachable!("a keyword for column {:?}", self.data)
        };
        let i = local(ord);
        if let Some(old) = codes.get(i) {
            if old == code {
                return;
            }
            rare.remove(by_value, old, ord);
        }
        codes.set(i, Some(code));
        rare.add(by_value, codes, code, ord);
        add_one(&mut self.present, ord);
    }

    /// Sets a `keywords` value by its items' dictionary codes; no items removes the value.
    pub fn set_code_set(&mut self, ord: u32, items: impl IntoIterator<Item = u32>) {
        let ColumnData::Keywords { by_value } = &mut self.data else {
            unreachable!("keywords for column {:?}", self.data)
        };
        if self.present.contains(ord) {
            for bm in by_value.values_mut() {
                bm.remove(ord);
            }
            by_value.retain(|_, bm| !bm.is_empty());
        }
        let mut any = false;
        for code in items {
            add_one(by_value.entry(code).or_default(), ord);
            any = true;
        }
        if any {
            add_one(&mut self.present, ord);
        } else {
            self.present.remove(ord);
        }
    }

    /// Sets a `text` value; the empty text removes the value.
    pub fn set_text(&mut self, ord: u32, s: &str) {
        if s.is_empty() {
            self.clear(ord);
            return;
        }
        let ColumnData::Text(strings) = &mut self.data else {
            unreachable!("a text for column {:?}", self.data)
        };
        strings.set(local(ord), s);
        add_one(&mut self.present, ord);
    }

    /// Whether customers from `first` on hold no value here and come after every customer that
    /// does: a run of them can be filled with the `put_*` setters and [`Column::mark_present`].
    pub fn is_after(&self, first: u32) -> bool {
        self.present.max().is_none_or(|max| max < first)
    }

    /// `bool` values of customers [`Column::is_after`] the column: those of `ords` (ascending)
    /// whose value is `true`, inserted at once; presence is left to [`Column::mark_present`].
    pub fn put_trues(&mut self, ords: &[u32]) {
        if let ColumnData::Bool(trues) = &mut self.data {
            insert_all(trues, ords);
        }
    }

    /// The value of a customer [`Column::is_after`] the column, without marking it present.
    #[inline]
    pub fn put_i64(&mut self, ord: u32, x: i64) {
        if let ColumnData::I64(v) = &mut self.data {
            *slot(v, local(ord)) = x;
        }
    }

    /// See [`Column::put_i64`].
    #[inline]
    pub fn put_f64(&mut self, ord: u32, x: f64) {
        if let ColumnData::F64(v) = &mut self.data {
            *slot(v, local(ord)) = x;
        }
    }

    /// See [`Column::put_i64`].
    #[inline]
    pub fn put_i32(&mut self, ord: u32, x: i32) {
        if let ColumnData::I32(v) = &mut self.data {
            *slot(v, local(ord)) = x;
        }
    }

    /// See [`Column::put_i64`]: a `keyword` value by its code.
    #[inline]
    pub fn put_code(&mut self, ord: u32, code: u32) {
        if let ColumnData::Keyword {
            codes,
            by_value,
            rare,
        } = &mut self.data
        {
            codes.set(local(ord), Some(code));
            rare.add(by_value, codes, code, ord);
        }
    }

    /// The shard is full: drops what only helps while customers arrive at its end.
    pub fn end_fill(&mut self) {
        if let ColumnData::Keyword { rare, .. } = &mut self.data {
            rare.end_fill();
        }
    }

    /// Whether the column keeps links between the rare holders of a value.
    #[cfg(test)]
    pub(crate) fn has_links(&self) -> bool {
        matches!(&self.data, ColumnData::Keyword { rare, .. } if rare.links.is_some())
    }

    /// Marks customers `ords` (ascending, given values by the `put_*` setters) present.
    pub fn mark_present(&mut self, ords: &[u32]) {
        insert_all(&mut self.present, ords);
    }

    /// Adds values to a `keywords` set (purchase categories and brands).
    pub fn add_keywords(&mut self, ord: u32, items: &[String], dict: &Dict) {
        if let ColumnData::Keywords { by_value } = &mut self.data {
            for s in items {
                add_one(by_value.entry(dict.intern(s)).or_default(), ord);
            }
            if !items.is_empty() {
                add_one(&mut self.present, ord);
            }
        }
    }

    /// Removes the value of `ord`.
    pub fn clear(&mut self, ord: u32) {
        if !self.present.remove(ord) {
            return;
        }
        let i = local(ord);
        match &mut self.data {
            ColumnData::Bool(trues) => {
                trues.remove(ord);
            }
            // Dense values stay behind the presence bitmap; zero them so nothing lingers.
            ColumnData::I64(v) => v[i] = 0,
            ColumnData::F64(v) => v[i] = 0.0,
            ColumnData::I32(v) => v[i] = 0,
            ColumnData::Keyword {
                codes,
                by_value,
                rare,
            } => {
                if let Some(old) = codes.get(i) {
                    rare.remove(by_value, old, ord);
                }
                codes.set(i, None);
            }
            ColumnData::Keywords { by_value } => {
                for bm in by_value.values_mut() {
                    bm.remove(ord);
                }
                by_value.retain(|_, bm| !bm.is_empty());
            }
            ColumnData::Text(strings) => strings.clear(i),
        }
    }

    /// Customers whose value is one of `wanted`: the union of their per-value bitmaps, and the
    /// rare customers holding them (empty for a column that is not `keyword`).
    pub fn with_codes(&self, wanted: &[u32]) -> RoaringBitmap {
        let mut acc = RoaringBitmap::new();
        if let ColumnData::Keyword {
            codes,
            by_value,
            rare,
        } = &self.data
        {
            let mut rare_wanted = Vec::new();
            for code in wanted {
                if let Some(bm) = by_value.get(code) {
                    acc |= bm;
                } else if rare.counts.holds(*code) {
                    rare_wanted.push(*code);
                }
            }
            if !rare_wanted.is_empty() {
                acc |= rare.with_codes(codes, &rare_wanted);
            }
        }
        acc
    }

    /// The dictionary code of `ord` in a `keyword` column.
    pub fn keyword_code(&self, ord: u32) -> Option<u32> {
        match &self.data {
            ColumnData::Keyword { codes, .. } => codes.get(local(ord)),
            _ => None,
        }
    }

    /// The raw `i64` of `ord` (int, money, timestamp), if present.
    pub fn get_i64(&self, ord: u32) -> Option<i64> {
        match &self.data {
            ColumnData::I64(v) if self.present.contains(ord) => Some(v[local(ord)]),
            _ => None,
        }
    }

    /// Replaces a whole number column of one shard: `values` for the ordinals of `present`, in
    /// order; every other value becomes absent.
    pub fn replace_i64(&mut self, present: RoaringBitmap, values: impl IntoIterator<Item = i64>) {
        if let ColumnData::I64(v) = &mut self.data {
            if let Some(max) = present.max() {
                slot(v, local(max));
            }
            for (ord, x) in present.iter().zip(values) {
                v[local(ord)] = x;
            }
            self.present = present;
        }
    }

    /// The value of `ord` as a typed [`Value`].
    pub fn get(&self, ord: u32, ty: AttrType, dict: Option<&Dict>) -> Option<Value> {
        if !self.present.contains(ord) {
            return None;
        }
        let i = local(ord);
        Some(match (&self.data, ty) {
            (ColumnData::Bool(trues), _) => Value::Bool(trues.contains(ord)),
            (ColumnData::I64(v), AttrType::Money) => Value::Money(v[i]),
            (ColumnData::I64(v), AttrType::Timestamp) => Value::Timestamp(v[i]),
            (ColumnData::I64(v), _) => Value::Int(v[i]),
            (ColumnData::F64(v), _) => Value::Float(v[i]),
            (ColumnData::I32(v), _) => Value::Date(v[i]),
            (ColumnData::Keyword { codes, .. }, _) => {
                let dict = dict?;
                Value::Keyword(dict.value(codes.get(i)?).to_string())
            }
            (ColumnData::Keywords { by_value }, _) => {
                let dict = dict?;
                let mut items: Vec<String> = by_value
                    .iter()
                    .filter(|(_, bm)| bm.contains(ord))
                    .map(|(&code, _)| dict.value(code).to_string())
                    .collect();
                items.sort_unstable();
                Value::Keywords(items)
            }
            (ColumnData::Text(strings), _) => Value::Text(strings.get(i)?.to_string()),
        })
    }

    /// Approximate heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        let bitmaps = |m: &HashMap<u32, RoaringBitmap>| -> usize {
            m.values().map(bitmap_bytes).sum::<usize>() + crate::columnar::table_bytes(m.capacity(), 32)
        };
        bitmap_bytes(&self.present)
            + match &self.data {
                ColumnData::Bool(b) => bitmap_bytes(b),
                ColumnData::I64(v) => v.capacity() * 8,
                ColumnData::F64(v) => v.capacity() * 8,
                ColumnData::I32(v) => v.capacity() * 4,
                ColumnData::Keyword {
                    codes,
                    by_value,
                    rare,
                } => codes.heap_bytes() + bitmaps(by_value) + rare.heap_bytes(),
                ColumnData::Keywords { by_value } => bitmaps(by_value),
                ColumnData::Text(s) => s.heap_bytes(),
            }
    }
}

/// The first ordinal of `ord`'s shard.
fn shard_base(ord: u32) -> u32 {
    ord - local(ord) as u32
}

/// Customers of a value need this many in a shard before the value gets a bitmap of its own.
pub const COMMON: u32 = 32;
/// Rare values looked up by a pass over the codes comparing with each, rather than one pass
/// testing a bitset of them all: a bitset pass costs about four comparing passes (its lookups do
/// not vectorize).
const FEW_CODES: usize = 4;

/// Rare values' customers are picked from the shard's rare customers, rather than found by a
/// pass over the codes, when those are fewer than one in this many codes (a pass over the codes
/// costs about a sixteenth of picking through the rare customers, per code).
const SPARSE_RARE: u64 = 16;

/// The customers of a shard whose `keyword` value is rare there (fewer than [`COMMON`] of them
/// have it): one bitmap for all of them, found again through their codes, with a count per value.
/// With a bitmap per value, a column like postal codes, where most values have one or two
/// customers in a shard, cost 74 bytes a customer; this way, 28 (codes included).
///
/// While a shard fills, each rare holder also links to the previous holder of its value, so a
/// value reaching [`COMMON`] holders finds them in [`COMMON`] steps instead of a pass over the
/// shard's codes (a bulk load of the bench's generated customers promotes over 800 cities a
/// shard, each pass up to 65,536 codes). The links cost two bytes a customer, and go when the shard is full
/// ([`Rare::end_fill`]) or a rare holder is removed.
#[derive(Debug, Clone)]
pub struct Rare {
    members: RoaringBitmap,
    counts: Tallies,
    /// Indexed by local ordinal: the previous rare holder of the same value (meaningless for
    /// a value's first holder). `None` once dropped: promotions then pass over the codes.
    links: Option<Vec<u16>>,
}

/// A rare value's holders in a shard: how many, and the last one added (local ordinal; the
/// head of its holders' links while those are kept).
#[derive(Debug, Clone, Copy)]
struct Tally {
    count: u16,
    last: u16,
}

impl Default for Rare {
    fn default() -> Rare {
        Rare {
            members: RoaringBitmap::new(),
            counts: Tallies::default(),
            links: Some(Vec::new()),
        }
    }
}

impl Rare {
    /// Indexes customer `ord` under `code`, already stored in `codes`; a value reaching
    /// [`COMMON`] customers moves to a bitmap of its own.
    fn add(&mut self, by_value: &mut HashMap<u32, RoaringBitmap>, codes: &Codes, code: u32, ord: u32) {
        if let Some(bm) = by_value.get_mut(&code) {
            add_one(bm, ord);
            return;
        }
        add_one(&mut self.members, ord);
        let i = local(ord);
        let at = i as u16;
        let tally = self.counts.entry(code, at);
        if let Some(links) = &mut self.links {
            *slot(links, i) = tally.last;
        }
        tally.count += 1;
        tally.last = at;
        if u32::from(tally.count) >= COMMON {
            self.counts.drop_value(code);
            // Its holders are all among the rare customers (`ord` with them).
            let own = match &self.links {
                Some(links) => holders_linked(links, at, shard_base(ord)),
                None => self.with_codes(codes, &[code]),
            };
            debug_assert_eq!(own.len(), u64::from(COMMON), "holders of {code}");
            debug_assert!(
                own.iter().all(|o| codes.get(local(o)) == Some(code)),
                "holders of {code}"
            );
            self.members -= &own;
            by_value.insert(code, own);
        }
    }

    /// Unindexes customer `ord` from `code`.
    fn remove(&mut self, by_value: &mut HashMap<u32, RoaringBitmap>, code: u32, ord: u32) {
        if let Some(bm) = by_value.get_mut(&code) {
            bm.remove(ord);
            if bm.is_empty() {
                by_value.remove(&code);
            }
            return;
        }
        if !self.members.remove(ord) {
            return;
        }
        // A holder leaving would break its value's links.
        self.links = None;
        self.counts.release(code);
    }

    /// Drops the links between holders: the shard is full, no more customers arrive at its end.
    pub fn end_fill(&mut self) {
        self.links = None;
    }

    /// The rare customers whose code is one of `wanted`: picked from the rare customers when
    /// they are few next to the codes; else found by passes over the codes, one comparing with
    /// each code for up to [`FEW_CODES`] of them, or one testing a bitset of them all.
    fn with_codes(&self, codes: &Codes, wanted: &[u32]) -> RoaringBitmap {
        let Some(first) = self.members.min() else {
            return RoaringBitmap::new();
        };
        if self.members.len() * SPARSE_RARE < codes.len() as u64 {
            let set = CodeSet::new(wanted);
            let matching = self
                .members
                .iter()
                .filter(|&ord| codes.get(local(ord)).is_some_and(|c| set.contains(c)));
            return RoaringBitmap::from_sorted_iter(matching).expect("a bitmap iterates in order");
        }
        if wanted.len() <= FEW_CODES {
            return wanted
                .iter()
                .map(|&c| codes.holding(c, shard_base(first)))
                .fold(RoaringBitmap::new(), |a, b| a | b);
        }
        codes.holding_any(&CodeSet::new(wanted), shard_base(first))
    }

    /// The index of rare values for customers `present` with `codes`, next to the bitmaps of
    /// `by_value` (snapshots hold only those). Bitmaps of values held by fewer than [`COMMON`]
    /// customers are folded in.
    pub fn rebuild(
        present: &RoaringBitmap,
        codes: &Codes,
        by_value: &mut HashMap<u32, RoaringBitmap>,
    ) -> Rare {
        by_value.retain(|_, bm| bm.len() >= u64::from(COMMON));
        let mut rare = Rare::default();
        for ord in present {
            if let Some(code) = codes.get(local(ord))
                && !by_value.contains_key(&code)
            {
                rare.members.insert(ord);
                let at = local(ord) as u16;
                rare.counts.entry(code, at).count += 1;
            }
        }
        rare.links = None;
        rare
    }

    fn heap_bytes(&self) -> usize {
        bitmap_bytes(&self.members)
            + self.counts.heap_bytes()
            + self.links.as_ref().map_or(0, |l| l.capacity() * 2)
    }
}

/// The rare values' tallies by code: in a vector indexed by code while that is no more than a
/// few times the number of values held (the usual case: a shard holds most of a column's
/// values), else in a hash table. A bulk load's keyword indexing was mostly cache misses in hash
/// tables, this one the largest; the vector is a quarter of its size and takes one access.
#[derive(Debug, Clone)]
enum Tallies {
    /// Indexed by code; a zero count holds nothing.
    Dense { tallies: Vec<Tally>, held: usize },
    /// With the highest code held since it became a table.
    Sparse { table: HashMap<u32, Tally>, top: u32 },
}

impl Default for Tallies {
    fn default() -> Tallies {
        Tallies::Dense {
            tallies: Vec::new(),
            held: 0,
        }
    }
}

/// Codes a dense vector may cover whatever it holds (16 KiB).
const DENSE_FLOOR: usize = 4096;
/// Slots per value held up to which a vector replaces a table (a slot takes 4 bytes, a table
/// about 10 to 20 a value); a vector grows to twice that before it becomes a table again.
const DENSE_PER_HELD: usize = 4;

const NO_TALLY: Tally = Tally { count: 0, last: 0 };

impl Tallies {
    /// The tally of `code`, added (count 0, last holder `at`) when it has none.
    #[inline]
    fn entry(&mut self, code: u32, at: u16) -> &mut Tally {
        let c = code as usize;
        if let Tallies::Dense { tallies, held } = self
            && c >= tallies.len()
            && c + 1 > DENSE_FLOOR.max(2 * DENSE_PER_HELD * (*held + 1))
        {
            let top = tallies.len().saturating_sub(1) as u32;
            let table = tallies
                .iter()
                .enumerate()
                .filter(|(_, t)| t.count > 0)
                .map(|(c, t)| (c as u32, *t))
                .collect();
            *self = Tallies::Sparse { table, top };
        }
        if let Tallies::Sparse { table, top } = self
            && table.len() % 64 == 63
            && !table.contains_key(&code)
            && ((*top).max(code) as usize) < DENSE_FLOOR.max(DENSE_PER_HELD * (table.len() + 1))
        {
            let mut tallies = vec![NO_TALLY; (*top).max(code) as usize + 1];
            for (&c, &t) in table.iter() {
                tallies[c as usize] = t;
            }
            *self = Tallies::Dense {
                tallies,
                held: table.len(),
            };
        }
        match self {
            Tallies::Dense { tallies, held } => {
                if c >= tallies.len() {
                    tallies.resize(c + 1, NO_TALLY);
                }
                let t = &mut tallies[c];
                if t.count == 0 {
                    *held += 1;
                    t.last = at;
                }
                t
            }
            Tallies::Sparse { table, top } => {
                *top = (*top).max(code);
                table.entry(code).or_insert(Tally { count: 0, last: at })
            }
        }
    }

    /// One holder of `code` fewer (none if it has no tally).
    fn release(&mut self, code: u32) {
        match self {
            Tallies::Dense { tallies, held } => {
                if let Some(t) = tallies.get_mut(code as usize)
                    && t.count > 0
                {
                    t.count -= 1;
                    if t.count == 0 {
                        *held -= 1;
                    }
                }
            }
            Tallies::Sparse { table, .. } => {
                if let Some(t) = table.get_mut(&code) {
                    t.count -= 1;
                    if t.count == 0 {
                        table.remove(&code);
                    }
                }
            }
        }
    }

    /// Forgets `code`'s tally: its holders moved to a bitmap of their own.
    fn drop_value(&mut self, code: u32) {
        match self {
            Tallies::Dense { tallies, held } => {
                if let Some(t) = tallies.get_mut(code as usize)
                    && t.count > 0
                {
                    *t = NO_TALLY;
                    *held -= 1;
                }
            }
            Tallies::Sparse { table, .. } => {
                table.remove(&code);
            }
        }
    }

    /// Whether some customer holds `code` among the rare values.
    fn holds(&self, code: u32) -> bool {
        match self {
            Tallies::Dense { tallies, .. } => tallies.get(code as usize).is_some_and(|t| t.count > 0),
            Tallies::Sparse { table, .. } => table.contains_key(&code),
        }
    }

    /// Number of values held.
    #[cfg(test)]
    fn len(&self) -> usize {
        match self {
            Tallies::Dense { held, .. } => *held,
            Tallies::Sparse { table, .. } => table.len(),
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            Tallies::Dense { tallies, .. } => tallies.capacity() * std::mem::size_of::<Tally>(),
            Tallies::Sparse { table, .. } => crate::columnar::table_bytes(table.capacity(), 8),
        }
    }
}

/// The [`COMMON`] holders of a value linked from `last` (local ordinals of the shard starting
/// at `base`).
fn holders_linked(links: &[u16], last: u16, base: u32) -> RoaringBitmap {
    let mut held = [0u16; COMMON as usize];
    let mut at = last;
    for h in &mut held {
        *h = at;
        at = links[usize::from(at)];
    }
    held.sort_unstable();
    RoaringBitmap::from_sorted_iter(held.iter().map(|&h| base + u32::from(h)))
        .expect("distinct holders in order")
}

/// Approximate heap bytes of a bitmap: its serialized size is its container payload, plus the
/// container headers the in-memory form keeps.
pub fn bitmap_bytes(bm: &RoaringBitmap) -> usize {
    if bm.is_empty() {
        0
    } else {
        bm.serialized_size() + 32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_all_inserts_any_order_as_extend_does() {
        let cases: [&[u32]; 7] = [
            &[],
            &[10, 11, 12, 13],
            &[10, 12, 13],
            &[13, 12, 11, 10],
            &[10, 14, 11, 13],
            &[3, 4, 5],
            &[70_000, 70_001, 5],
        ];
        for before in [vec![], vec![7u32], vec![2, 9, 20]] {
            for ords in cases {
                let mut got: RoaringBitmap = before.iter().copied().collect();
                let mut want = got.clone();
                insert_all(&mut got, ords);
                want.extend(ords.iter().copied());
                assert_eq!(got, want, "{before:?} + {ords:?}");
            }
        }
    }

    #[test]
    fn keyword_codes_widen_and_bitmaps_follow() {
        let dict = Dict::default();
        let mut col = Column::new(AttrType::Keyword);
        for i in 0..300u32 {
            col.set(i, &Value::Keyword(format!("v{i}")), Some(&dict));
        }
        assert!(matches!(
            &col.data,
            ColumnData::Keyword {
                codes: Codes::U16(_),
                ..
            }
        ));
        assert_eq!(
            col.get(299, AttrType::Keyword, Some(&dict)),
            Some(Value::Keyword("v299".into()))
        );
        col.set(5, &Value::Keyword("v7".into()), Some(&dict));
        let code = |v: &str| dict.code(v).unwrap();
        assert_eq!(col.with_codes(&[code("v7")]).iter().collect::<Vec<_>>(), [5, 7]);
        assert!(col.with_codes(&[code("v5")]).is_empty());
        col.clear(5);
        assert_eq!(col.get(5, AttrType::Keyword, Some(&dict)), None);
    }

    #[test]
    fn many_rare_values_are_found_over_the_codes_or_the_rare_customers() {
        let dict = Dict::default();
        // Dense: every customer rare, about 12 to a value (a pass over all codes). Sparse: one
        // customer in 50 rare, 2 or 3 to a value, the rest common (a pass over the rare ones).
        for sparse in [false, true] {
            let mut col = Column::new(AttrType::Keyword);
            let value = |i: u32| match sparse {
                false => format!("v{}", i % 400),
                true if i.is_multiple_of(50) => format!("v{}", (i / 50) % 40),
                true => "common".to_string(),
            };
            for i in 0..5000u32 {
                col.set(i, &Value::Keyword(value(i)), Some(&dict));
            }
            for i in (0..5000u32).step_by(13) {
                col.clear(i);
            }
            let ColumnData::Keyword { by_value, rare, .. } = &col.data else {
                unreachable!()
            };
            assert_eq!(rare.members.len() * SPARSE_RARE < 5000, sparse);
            // One value and a few (passes comparing with each), many (a pass testing a bitset).
            for n in [1, 3, 20] {
                let wanted: Vec<String> = (0..n).map(|k| format!("v{}", k * 2)).collect();
                let codes: Vec<u32> = wanted.iter().map(|v| dict.code(v).unwrap()).collect();
                assert!(codes.iter().all(|c| !by_value.contains_key(c)), "all rare");
                let want: Vec<u32> = (0..5000u32)
                    .filter(|&i| {
                        matches!(col.get(i, AttrType::Keyword, Some(&dict)),
                            Some(Value::Keyword(v)) if wanted.contains(&v))
                    })
                    .collect();
                assert!(!want.is_empty());
                let got: Vec<u32> = col.with_codes(&codes).iter().collect();
                assert_eq!(got, want, "sparse: {sparse}, {n} values");
            }
        }
    }

    #[test]
    fn add_one_inserts_in_any_order_as_insert_does() {
        let mut ords: Vec<u32> = (70_000..80_000).step_by(2).collect();
        ords.extend([70_001, 69_999, 79_998, 80_000, 75_000, 70_003]);
        ords.extend((80_001..90_000).step_by(3));
        let (mut a, mut b) = (RoaringBitmap::new(), RoaringBitmap::new());
        for &o in &ords {
            add_one(&mut a, o);
            b.insert(o);
            assert_eq!(a.len(), b.len(), "after {o}");
        }
        assert_eq!(a, b);
    }

    #[test]
    fn linked_holders_are_promoted_as_a_pass_over_the_codes_finds_them() {
        // Two columns given the same values, one keeping its holders' links and one not. First
        // customers arrive at the end only; then some are given another value on the way (which
        // drops the links). Values of every frequency; both promote the same customers.
        let dict = Dict::default();
        let mut linked = Column::new(AttrType::Keyword);
        let mut scanned = Column::new(AttrType::Keyword);
        scanned.end_fill();
        let mut model: std::collections::BTreeMap<u32, String> = Default::default();
        let mut r = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = |n: u64| {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            r % n
        };
        let base = 3 * crate::columnar::SHARD_SIZE as u32;
        let same = |linked: &Column, scanned: &Column, model: &std::collections::BTreeMap<u32, String>| {
            for (col, name) in [(linked, "linked"), (scanned, "scanned")] {
                for code in 0..dict.len() as u32 {
                    let v = dict.value(code);
                    let want: Vec<u32> = model.iter().filter(|(_, m)| **m == *v).map(|(&o, _)| o).collect();
                    assert_eq!(
                        col.with_codes(&[code]).iter().collect::<Vec<_>>(),
                        want,
                        "{name} {v}"
                    );
                }
            }
            let (ColumnData::Keyword { by_value: a, .. }, ColumnData::Keyword { by_value: b, .. }) =
                (&linked.data, &scanned.data)
            else {
                unreachable!()
            };
            assert_eq!(a, b, "the same values promoted with the same customers");
            a.len()
        };
        for i in 0..6000u32 {
            let ord = base + i;
            let v = format!("v{}", next(40).min(next(40)) * next(5));
            for col in [&mut linked, &mut scanned] {
                if col.is_after(ord) {
                    col.put_code(ord, dict.intern(&v));
                    col.mark_present(&[ord]);
                } else {
                    col.set(ord, &Value::Keyword(v.clone()), Some(&dict));
                }
            }
            model.insert(ord, v);
            if i == 2999 {
                let ColumnData::Keyword { rare, .. } = &linked.data else {
                    unreachable!()
                };
                assert!(rare.links.is_some());
                let promoted = same(&linked, &scanned, &model);
                assert!(promoted > 10, "values were promoted: {promoted}");
            }
            if i >= 3000 && i % 97 == 0 {
                let back = base + next(u64::from(i) + 1) as u32;
                let again = format!("v{}", next(3) * 50);
                for col in [&mut linked, &mut scanned] {
                    col.set(back, &Value::Keyword(again.clone()), Some(&dict));
                }
                model.insert(back, again);
            }
        }
        let ColumnData::Keyword { rare, .. } = &linked.data else {
            unreachable!()
        };
        assert!(
            rare.links.is_none(),
            "a rare holder given another value drops the links"
        );
        same(&linked, &scanned, &model);
    }

    #[test]
    fn a_fresh_column_promotes_through_links_until_the_shard_is_full() {
        let dict = Dict::default();
        let mut col = Column::new(AttrType::Keyword);
        for ord in 0..1000u32 {
            col.put_code(ord, dict.intern(&format!("v{}", ord % 20)));
        }
        col.mark_present(&(0..1000).collect::<Vec<_>>());
        let ColumnData::Keyword { by_value, rare, .. } = &col.data else {
            unreachable!()
        };
        assert_eq!(by_value.len(), 20, "every value reached {COMMON}");
        assert!(rare.links.as_ref().is_some_and(|l| l.len() >= 1000));
        let v3 = dict.code("v3").unwrap();
        assert_eq!(
            by_value[&v3].iter().collect::<Vec<_>>(),
            (3..1000).step_by(20).collect::<Vec<_>>()
        );
        let before = col.heap_bytes();
        col.end_fill();
        assert!(
            col.heap_bytes() + 2000 <= before,
            "the links' memory is given back"
        );
        col.put_code(1000, dict.intern("v3"));
        col.mark_present(&[1000]);
        assert!(col.with_codes(&[v3]).contains(1000));
    }

    #[test]
    fn a_value_among_few_rare_customers_is_promoted_from_them() {
        let dict = Dict::default();
        let mut col = Column::new(AttrType::Keyword);
        // 3,000 customers, nearly all with one common value: the rare ones are few next to the
        // codes, so "x" reaching COMMON is picked from them.
        let xs: Vec<u32> = (0..3000u32).step_by(100).collect();
        for i in 0..3000u32 {
            let v = if xs.contains(&i) { "x" } else { "common" };
            col.set(i, &Value::Keyword(v.into()), Some(&dict));
        }
        // One of them moved away before the promotion, one rare customer of another value.
        col.set(xs[3], &Value::Keyword("common".into()), Some(&dict));
        col.set(7, &Value::Keyword("y".into()), Some(&dict));
        let x = dict.code("x").unwrap();
        for i in [3001, 3002, 3003] {
            let ColumnData::Keyword { by_value, .. } = &col.data else {
                unreachable!()
            };
            assert!(!by_value.contains_key(&x), "x is still rare");
            col.set(i, &Value::Keyword("x".into()), Some(&dict));
        }
        let want: Vec<u32> = xs
            .iter()
            .copied()
            .filter(|&i| i != xs[3])
            .chain([3001, 3002, 3003])
            .collect();
        assert_eq!(want.len() as u32, COMMON);
        let ColumnData::Keyword { by_value, rare, .. } = &col.data else {
            unreachable!()
        };
        assert_eq!(by_value[&x].iter().collect::<Vec<_>>(), want);
        assert_eq!(
            rare.members.iter().collect::<Vec<_>>(),
            vec![7],
            "only y stays rare"
        );
    }

    /// Tallies kept in a vector or a table, switching as codes spread out and values gather,
    /// count as a plain map does, after every step and in either form.
    #[test]
    fn tallies_count_as_a_map_in_either_form() {
        use std::collections::HashMap as Model;
        let mut tallies = Tallies::default();
        let mut model: Model<u32, (u16, u16)> = Model::new();
        let mut forms = Vec::new();
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        // (codes drawn from 0..codes, steps): a dictionary of 3,000 values; a few values spread
        // over 200,000 codes; then many values over them.
        let phases: [(u64, usize); 3] = [(3_000, 20_000), (200_000, 2_000), (200_000, 200_000)];
        for (i, &(codes, steps)) in phases.iter().enumerate() {
            for step in 0..steps {
                let code = u32::try_from(next(codes)).unwrap();
                let at = u16::try_from(step % 65_536).unwrap();
                match next(10) {
                    0..=6 => {
                        let t = tallies.entry(code, at);
                        t.count += 1;
                        t.last = at;
                        let m = model.entry(code).or_insert((0, at));
                        m.0 += 1;
                        m.1 = at;
                    }
                    7 | 8 => {
                        tallies.release(code);
                        if let Some(m) = model.get_mut(&code) {
                            m.0 -= 1;
                            if m.0 == 0 {
                                model.remove(&code);
                            }
                        }
                    }
                    _ => {
                        tallies.drop_value(code);
                        model.remove(&code);
                    }
                }
                assert_eq!(
                    tallies.holds(code),
                    model.contains_key(&code),
                    "phase {i} step {step}"
                );
                assert_eq!(tallies.len(), model.len(), "phase {i} step {step}");
            }
            forms.push(matches!(tallies, Tallies::Dense { .. }));
            for (&code, &(count, last)) in &model {
                let t = tallies.entry(code, 0);
                assert_eq!((t.count, t.last), (count, last), "code {code}");
            }
        }
        assert_eq!(
            forms,
            [true, false, true],
            "dense, then a table, then dense again"
        );
    }

    /// Values move between the shared index of rare values and bitmaps of their own as they
    /// gain customers; lookups and a rebuild (as after a snapshot) agree with the codes.
    #[test]
    fn rare_values_share_an_index_and_common_ones_get_bitmaps() {
        let dict = Dict::default();
        let mut col = Column::new(AttrType::Keyword);
        let value = |i: u32| {
            if i.is_multiple_of(3) {
                "common".to_string()
            } else {
                format!("rare{}", i % 50)
            }
        };
        for i in 0..300u32 {
            col.set(i, &Value::Keyword(value(i)), Some(&dict));
        }
        // Some customers change value, some lose it.
        for i in (0..300u32).step_by(7) {
            col.set(i, &Value::Keyword("late".into()), Some(&dict));
        }
        for i in (0..300u32).step_by(11) {
            col.clear(i);
        }
        let expected = |v: &str| -> Vec<u32> {
            (0..300u32)
                .filter(|&i| col.get(i, AttrType::Keyword, Some(&dict)) == Some(Value::Keyword(v.into())))
                .collect()
        };
        let ColumnData::Keyword {
            codes,
            by_value,
            rare,
        } = &col.data
        else {
            unreachable!()
        };
        let code = |v: &str| dict.code(v).unwrap();
        assert!(
            by_value.contains_key(&code("common")),
            "common values have a bitmap"
        );
        assert!(by_value.contains_key(&code("late")), "promoted at {COMMON}");
        assert!(!by_value.contains_key(&code("rare1")) && rare.counts.holds(code("rare1")));
        let mut rebuilt_map = by_value.clone();
        let rebuilt = Rare::rebuild(&col.present, codes, &mut rebuilt_map);
        assert_eq!(rebuilt.members, rare.members);
        let again = Column {
            present: col.present.clone(),
            data: ColumnData::Keyword {
                codes: codes.clone(),
                by_value: rebuilt_map,
                rare: rebuilt,
            },
        };
        for v in ["common", "late", "rare1", "rare2", "rare49"] {
            let want = expected(v);
            assert_eq!(col.with_codes(&[code(v)]).iter().collect::<Vec<_>>(), want, "{v}");
            assert_eq!(
                again.with_codes(&[code(v)]).iter().collect::<Vec<_>>(),
                want,
                "{v}"
            );
        }
        let both: Vec<u32> = col.with_codes(&[code("common"), code("rare2")]).iter().collect();
        let mut want = [expected("common"), expected("rare2")].concat();
        want.sort_unstable();
        assert_eq!(both, want);
        // Emptied values leave nothing behind.
        for i in 0..300u32 {
            col.clear(i);
        }
        let ColumnData::Keyword { by_value, rare, .. } = &col.data else {
            unreachable!()
        };
        assert!(by_value.is_empty() && rare.members.is_empty() && rare.counts.len() == 0);
    }

    #[test]
    fn keywords_replace_whole_set() {
        let dict = Dict::default();
        let mut col = Column::new(AttrType::Keywords);
        col.set(
            1,
            &Value::Keywords(vec!["golf".into(), "ski".into()]),
            Some(&dict),
        );
        col.set(1, &Value::Keywords(vec!["tennis".into()]), Some(&dict));
        assert_eq!(
            col.get(1, AttrType::Keywords, Some(&dict)),
            Some(Value::Keywords(vec!["tennis".into()]))
        );
        col.add_keywords(1, &["golf".into()], &dict);
        assert_eq!(
            col.get(1, AttrType::Keywords, Some(&dict)),
            Some(Value::Keywords(vec!["golf".into(), "tennis".into()]))
        );
    }
}
