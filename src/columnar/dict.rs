//! Value dictionaries of `keyword` and `keywords` attributes: each distinct string gets a dense
//! `u32` code, shared by every shard, so columns hold small codes and bitmaps are kept per code.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::HashTable;
use parking_lot::RwLock;

/// Stands for a value that had no code when it was looked up.
pub const NO_CODE: u32 = u32::MAX;

/// A string ↔ code dictionary. Codes are never reused, so a code read once stays valid.
#[derive(Debug, Default)]
pub struct Dict {
    inner: RwLock<DictInner>,
}

#[derive(Debug, Default)]
struct DictInner {
    /// Codes by value. A slot holds its value's first bytes, so a lookup compares them where
    /// it finds the slot; only values longer than [`INLINE`] bytes are read from `values` too.
    /// (Comparing against the values themselves, scattered over the heap, was most of a bulk
    /// load's dictionary lookups.)
    table: HashTable<Slot>,
    values: Vec<Arc<str>>,
    bytes: usize,
    hasher: foldhash::fast::RandomState,
}

/// Values up to this many bytes are held whole in their slot.
const INLINE: usize = 15;

/// A value's code, and its length (or `LONG`) and first [`INLINE`] bytes, zero-padded.
#[derive(Debug, Clone, Copy)]
struct Slot {
    head: [u8; INLINE + 1],
    code: u32,
}

/// `head[0]` of a value longer than [`INLINE`] bytes.
const LONG: u8 = u8::MAX;

/// The slot head of `value`.
#[inline]
fn head(value: &str) -> [u8; INLINE + 1] {
    let bytes = value.as_bytes();
    let mut head = [0u8; INLINE + 1];
    let n = bytes.len().min(INLINE);
    head[0] = if bytes.len() <= INLINE {
        bytes.len() as u8
    } else {
        LONG
    };
    head[1..=n].copy_from_slice(&bytes[..n]);
    head
}

impl DictInner {
    #[inline]
    fn hash(&self, value: &str) -> u64 {
        self.hasher.hash_one(value)
    }

    #[inline]
    fn find(&self, value: &str) -> Option<u32> {
        let want = head(value);
        let long = want[0] == LONG;
        self.table
            .find(self.hash(value), |slot| {
                slot.head == want && (!long || *self.values[slot.code as usize] == *value)
            })
            .map(|slot| slot.code)
    }
}

impl Dict {
    /// The code of `value`, if it was ever seen.
    pub fn code(&self, value: &str) -> Option<u32> {
        self.inner.read().find(value)
    }

    /// Calls `found(key, code)` for each `(key, value)` whose value has a code, under one hold
    /// of the lock.
    pub fn lookup_each<K: Copy>(&self, values: &[(K, &str)], mut found: impl FnMut(K, u32)) {
        let inner = self.inner.read();
        for &(key, value) in values {
            if let Some(code) = inner.find(value) {
                found(key, code);
            }
        }
    }

    /// The code of `value`, adding it when new.
    pub fn intern(&self, value: &str) -> u32 {
        if let Some(code) = self.code(value) {
            return code;
        }
        let mut inner = self.inner.write();
        if let Some(code) = inner.find(value) {
            return code;
        }
        let code = u32::try_from(inner.values.len()).expect("fewer than 2^32 distinct values");
        let hash = inner.hash(value);
        let DictInner {
            table,
            values,
            hasher,
            ..
        } = &mut *inner;
        table.insert_unique(
            hash,
            Slot {
                head: head(value),
                code,
            },
            |slot| hasher.hash_one(&*values[slot.code as usize]),
        );
        values.push(Arc::from(value));
        inner.bytes += value.len();
        code
    }

    /// Takes the next code for a value that is forgotten: it is never found by a lookup and
    /// reads as an empty string. (A snapshot drops the values no customer holds.)
    pub fn push_forgotten(&self) -> u32 {
        let mut inner = self.inner.write();
        let code = u32::try_from(inner.values.len()).expect("fewer than 2^32 distinct values");
        inner.values.push(Arc::from(""));
        code
    }

    /// The string of `code`.
    pub fn value(&self, code: u32) -> Arc<str> {
        self.inner.read().values[code as usize].clone()
    }

    /// Codes of every value for which `f` holds (a scan of the dictionary).
    pub fn codes_where(&self, f: impl Fn(&str) -> bool) -> Vec<u32> {
        let inner = self.inner.read();
        (0..inner.values.len() as u32)
            .filter(|&c| f(&inner.values[c as usize]))
            .collect()
    }

    /// Number of distinct values.
    pub fn len(&self) -> usize {
        self.inner.read().values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate heap bytes.
    pub fn heap_bytes(&self) -> usize {
        let inner = self.inner.read();
        // Each value: its bytes, an Arc header, a slot in `values` and one in the table.
        inner.bytes
            + inner.values.capacity() * 16
            + inner.values.len() * 16
            + crate::columnar::table_bytes(inner.table.capacity(), std::mem::size_of::<Slot>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_short_and_long_keep_their_codes() {
        let dict = Dict::default();
        let prefix = "exactly-fifteen";
        assert_eq!(prefix.len(), INLINE);
        let mut values: Vec<String> = vec![
            "".into(),
            "F".into(),
            prefix.into(),
            format!("{prefix}!"),
            format!("{prefix}?"),
            format!("{prefix}!!"),
            "Zoë Île-de-France, 12ème arrondissement".into(),
        ];
        values.extend((0..5000).map(|i| format!("postal-{i:05}")));
        values.extend((0..500).map(|i| format!("{prefix}-long-{i}")));
        let codes: Vec<u32> = values.iter().map(|v| dict.intern(v)).collect();
        assert_eq!(
            codes,
            (0..values.len() as u32).collect::<Vec<_>>(),
            "new values get the next code"
        );
        for (v, &c) in values.iter().zip(&codes) {
            assert_eq!(dict.intern(v), c, "{v}");
            assert_eq!(dict.code(v), Some(c), "{v}");
            assert_eq!(&*dict.value(c), v.as_str());
        }
        for absent in ["M", "exactly-fiftee", "exactly-fifteen!?", "postal-5000", "zoë"] {
            assert_eq!(dict.code(absent), None, "{absent}");
        }
        let wanted: Vec<(usize, &str)> = vec![(0, "F"), (1, "nope"), (2, &values[5])];
        let mut found = Vec::new();
        dict.lookup_each(&wanted, |k, c| found.push((k, c)));
        assert_eq!(found, [(0, codes[1]), (2, codes[5])]);
        assert_eq!(dict.len(), values.len());
    }
}
