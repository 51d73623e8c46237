//! Value dictionaries of `keyword` and `keywords` attributes: each distinct string gets a dense
//! `u32` code, shared by every shard, so columns hold small codes and bitmaps are kept per code.

use foldhash::HashMap;
use std::sync::Arc;

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
    codes: HashMap<Arc<str>, u32>,
    values: Vec<Arc<str>>,
    bytes: usize,
}

impl Dict {
    /// The code of `value`, if it was ever seen.
    pub fn code(&self, value: &str) -> Option<u32> {
        self.inner.read().codes.get(value).copied()
    }

    /// Calls `found(key, code)` for each `(key, value)` whose value has a code, under one hold
    /// of the lock.
    pub fn lookup_each<K: Copy>(&self, values: &[(K, &str)], mut found: impl FnMut(K, u32)) {
        let inner = self.inner.read();
        for &(key, value) in values {
            if let Some(&code) = inner.codes.get(value) {
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
        if let Some(&code) = inner.codes.get(value) {
            return code;
        }
        let code = u32::try_from(inner.values.len()).expect("fewer than 2^32 distinct values");
        let value: Arc<str> = Arc::from(value);
        inner.bytes += value.len();
        inner.values.push(value.clone());
        inner.codes.insert(value, code);
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
        // Each value: its bytes, an Arc header, a slot in `values` and one in the map.
        inner.bytes
            + inner.values.capacity() * 16
            + inner.values.len() * 16
            + crate::store::table_bytes(inner.codes.capacity(), 24)
    }
}
