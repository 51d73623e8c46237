//! Concurrent external key → ordinal maps (customer ids, e-mails).
//!
//! Each customer costs one 8-byte entry: the map is keyed by a 32-bit hash of the key and holds
//! the ordinal; the key itself lives once, in the shard's string column, and a lookup confirms the
//! match there. A key whose 32-bit hash is already taken by another key goes to a small overflow
//! map keyed by the full string (about `n² / 2³³` keys at `n` customers: ~116 at one million).

use std::borrow::Cow;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;

/// Hashes a `u32` that is already a hash: one multiply spreads it over 64 bits, so both dashmap's
/// shard choice (high bits) and hashbrown's buckets get well-mixed bits.
#[derive(Default, Clone, Copy)]
pub struct SpreadHasher(u64);

impl Hasher for SpreadHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type Spread = BuildHasherDefault<SpreadHasher>;

/// How keys compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyCase {
    /// Byte for byte (customer ids).
    Sensitive,
    /// Case-insensitively (e-mails).
    Insensitive,
}

/// A concurrent key → ordinal map that stores no key bytes of its own.
pub struct IdIndex {
    case: KeyCase,
    primary: DashMap<u32, u32, Spread>,
    overflow: DashMap<Box<str>, u32>,
    overflow_len: AtomicUsize,
}

impl IdIndex {
    pub fn new(case: KeyCase) -> Self {
        IdIndex {
            case,
            primary: DashMap::with_hasher(Spread::default()),
            overflow: DashMap::new(),
            overflow_len: AtomicUsize::new(0),
        }
    }

    /// The form of `key` that is hashed and compared.
    pub fn normalize<'a>(&self, key: &'a str) -> Cow<'a, str> {
        match self.case {
            KeyCase::Sensitive => Cow::Borrowed(key),
            KeyCase::Insensitive => normalize_email(key),
        }
    }

    fn hash(normalized: &str) -> u32 {
        let h = xxhash_rust::xxh3::xxh3_64(normalized.as_bytes());
        (h ^ (h >> 32)) as u32
    }

    /// The ordinal of `key`. `holds(ordinal, normalized_key)` confirms that the ordinal's stored
    /// key equals the normalized key (the map itself keeps only hashes).
    pub fn get(&self, key: &str, mut holds: impl FnMut(u32, &str) -> bool) -> Option<u32> {
        let key = self.normalize(key);
        let h = Self::hash(&key);
        if let Some(ord) = self.primary.get(&h).map(|e| *e)
            && holds(ord, &key)
        {
            return Some(ord);
        }
        if self.overflow_len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let ord = self.overflow.get(key.as_ref()).map(|e| *e)?;
        holds(ord, &key).then_some(ord)
    }

    /// Maps `key` to `ordinal`. The caller guarantees `key` is not mapped (the store's writer
    /// checks with [`IdIndex::get`] first and is the only one inserting).
    pub fn insert(&self, key: &str, ordinal: u32) {
        let key = self.normalize(key);
        let h = Self::hash(&key);
        match self.primary.entry(h) {
            dashmap::Entry::Vacant(slot) => {
                slot.insert(ordinal);
            }
            dashmap::Entry::Occupied(_) => {
                self.overflow.insert(Box::from(key.as_ref()), ordinal);
                self.overflow_len.fetch_add(1, Ordering::Release);
            }
        }
    }

    /// Removes the mapping `key` → `ordinal`.
    pub fn remove(&self, key: &str, ordinal: u32) {
        let key = self.normalize(key);
        let h = Self::hash(&key);
        if self.primary.remove_if(&h, |_, &o| o == ordinal).is_some() {
            return;
        }
        if self.overflow.remove(key.as_ref()).is_some() {
            self.overflow_len.fetch_sub(1, Ordering::Release);
        }
    }

    /// Makes room for `additional` more keys at once (a bulk rebuild), instead of growing and
    /// rehashing step by step.
    pub fn reserve(&self, additional: usize) {
        use std::hash::BuildHasher;
        let shards = self.primary.shards();
        let each = additional.div_ceil(shards.len());
        let hasher = self.primary.hasher();
        for shard in shards {
            shard.write().reserve(each, |(key, _)| hasher.hash_one(key));
        }
    }

    /// The hash `key` is mapped by, and the map shard holding it (for [`IdIndex::bulk_fill`]).
    pub fn locate(&self, key: &str) -> (u32, usize) {
        let h = Self::hash(&self.normalize(key));
        (h, self.primary.determine_map(&h))
    }

    /// Number of map shards.
    pub fn map_shards(&self) -> usize {
        self.primary.shards().len()
    }

    /// Fills map shard `shard` with `(hash, ordinal)` pairs located by [`IdIndex::locate`], under
    /// one lock. Used to rebuild the maps from a snapshot with one thread per map shard (no lock
    /// contention). Returns the ordinals whose hash was already taken: the caller maps those with
    /// [`IdIndex::insert`], which puts them in the overflow map.
    pub fn bulk_fill(&self, shard: usize, pairs: impl IntoIterator<Item = (u32, u32)>) -> Vec<u32> {
        use std::hash::BuildHasher;
        let hasher = self.primary.hasher();
        let mut table = self.primary.shards()[shard].write();
        let mut taken = Vec::new();
        for (h, ord) in pairs {
            let hash = hasher.hash_one(h);
            if table.find(hash, |(k, _)| *k == h).is_some() {
                taken.push(ord);
            } else {
                table.insert(hash, (h, dashmap::SharedValue::new(ord)), |(k, _)| {
                    hasher.hash_one(k)
                });
            }
        }
        taken
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.primary.len() + self.overflow_len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate heap bytes: 8-byte entries plus a control byte per bucket.
    pub fn heap_bytes(&self) -> usize {
        let overflow: usize = self.overflow.iter().map(|e| e.key().len() + 16 + 24 + 1).sum();
        let tables: usize = self
            .primary
            .shards()
            .iter()
            .map(|shard| crate::store::table_bytes(shard.read().capacity(), 8))
            .sum();
        tables + overflow
    }
}

/// Lower-cases an e-mail for comparison, without allocating when it already is.
pub fn normalize_email(email: &str) -> Cow<'_, str> {
    if email.bytes().any(|b| b.is_ascii_uppercase() || !b.is_ascii()) {
        Cow::Owned(email.to_lowercase())
    } else {
        Cow::Borrowed(email)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn colliding_hashes_go_to_overflow_and_stay_reachable() {
        // Find two keys with the same 32-bit hash by brute force over a small space.
        let mut seen: HashMap<u32, String> = HashMap::new();
        let (a, b) = (0u64..)
            .find_map(|i| {
                let k = format!("k{i}");
                let h = IdIndex::hash(&k);
                seen.insert(h, k.clone()).map(|prev| (prev, k))
            })
            .unwrap();
        let keys = [a.clone(), b.clone()];
        let holds = |o: u32, k: &str| keys[o as usize] == k;
        let idx = IdIndex::new(KeyCase::Sensitive);
        idx.insert(&a, 0);
        idx.insert(&b, 1);
        assert_eq!(idx.len(), 2);
        assert_eq!(idx.get(&a, holds), Some(0));
        assert_eq!(idx.get(&b, holds), Some(1));
        idx.remove(&a, 0);
        assert_eq!(idx.get(&a, holds), None);
        assert_eq!(idx.get(&b, holds), Some(1));
        idx.remove(&b, 1);
        assert!(idx.is_empty());
    }

    #[test]
    fn bulk_fill_hands_back_taken_hashes_for_the_overflow() {
        let mut seen: HashMap<u32, String> = HashMap::new();
        let (a, b) = (0u64..)
            .find_map(|i| {
                let k = format!("k{i}");
                seen.insert(IdIndex::hash(&k), k.clone()).map(|prev| (prev, k))
            })
            .unwrap();
        let keys = [a.clone(), b.clone(), "other".to_string()];
        let idx = IdIndex::new(KeyCase::Sensitive);
        let mut by_shard: HashMap<usize, Vec<(u32, u32)>> = HashMap::new();
        for (ord, k) in keys.iter().enumerate() {
            let (h, shard) = idx.locate(k);
            by_shard.entry(shard).or_default().push((h, ord as u32));
        }
        let mut taken = Vec::new();
        for (shard, pairs) in by_shard {
            taken.extend(idx.bulk_fill(shard, pairs));
        }
        assert_eq!(taken, vec![1], "the second key of the colliding pair");
        idx.insert(&b, 1);
        let holds = |o: u32, k: &str| keys[o as usize] == k;
        assert_eq!(idx.get(&a, holds), Some(0));
        assert_eq!(idx.get(&b, holds), Some(1));
        assert_eq!(idx.get("other", holds), Some(2));
        assert_eq!(idx.len(), 3);
    }

    #[test]
    fn emails_compare_case_insensitively() {
        let idx = IdIndex::new(KeyCase::Insensitive);
        idx.insert("Ann@Example.com", 7);
        let holds = |o: u32, k: &str| o == 7 && k == "ann@example.com";
        assert_eq!(idx.get("ANN@example.COM", holds), Some(7));
        assert_eq!(idx.get("bob@example.com", holds), None);
    }
}
