//! Customer ids to positions, in about 10 bytes a customer, read without locks.
//!
//! A `HashMap<String, u32>` costs 50 bytes and more a customer (the string, its heap block, the
//! entry). The replica keeps no id at all: an open-addressing table of 64-bit slots, each the low
//! 32 bits of the id's 64-bit hash (its fingerprint) beside its position, placed by the high 32
//! bits. A lookup hashes the id, probes from its place and takes the first slot with its
//! fingerprint. A known id is always found; an unknown id is taken for a known one only if a slot
//! it probes holds its 32-bit fingerprint: about one lookup in a billion for the table's short
//! probes (measured in `benches/replica.rs`).
//!
//! One writer (the follow thread) inserts and removes with atomic stores; readers load slots
//! with acquire loads and never wait. The table never grows in place: the writer builds a bigger
//! one beside it (placing each slot again from the high hash bits it keeps by position, 4 bytes a
//! customer, writer only) and the replica swaps it in.

use std::sync::atomic::Ordering;

use crate::words::Words;

const EMPTY: u64 = 0;
/// A removed entry: probes go past it.
const GONE: u64 = u64::MAX;
/// Slots per entry at most, before the table is rebuilt bigger.
const MAX_LOAD: f64 = 0.85;
/// Slots per entry when built.
const LOAD: f64 = 0.7;

/// The 64-bit hash of an id: high half places it, low half is its fingerprint (never 0).
#[inline]
pub fn hash(id: &str) -> (u32, u32) {
    let h = xxhash_rust::xxh3::xxh3_64(id.as_bytes());
    let fp = (h as u32).max(1);
    ((h >> 32) as u32, fp)
}

#[derive(Debug)]
pub struct IdTable {
    slots: Words,
}

impl IdTable {
    /// A table sized for `entries`.
    pub fn with_entries(entries: usize) -> IdTable {
        let n = ((entries as f64 / LOAD) as usize).max(16);
        IdTable {
            slots: Words::zeroed(n),
        }
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Whether `entries` (live and removed) fit without a rebuild.
    pub fn fits(&self, entries: usize) -> bool {
        (entries as f64) <= self.slots.len() as f64 * MAX_LOAD
    }

    #[inline]
    fn place(&self, high: u32) -> usize {
        // Lemire's multiply-shift: a place in 0..len without a division.
        ((u64::from(high) * self.slots.len() as u64) >> 32) as usize
    }

    /// The position of `id`, if the table holds it.
    #[inline]
    pub fn get(&self, id: &str) -> Option<u32> {
        let (high, fp) = hash(id);
        let n = self.slots.len();
        let mut i = self.place(high);
        loop {
            // SAFETY of the index: `i < n` always (`place` < n, wrapped below).
            let w = self.slots[i].load(Ordering::Acquire);
            if w == EMPTY {
                return None;
            }
            if w != GONE && (w >> 32) as u32 == fp {
                return Some(w as u32);
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
    }

    /// Inserts `position` for an id hashed to `(high, fp)`. Writer only; the table must fit one
    /// more entry.
    pub fn insert(&self, high: u32, fp: u32, position: u32) {
        let n = self.slots.len();
        let mut i = self.place(high);
        loop {
            let w = self.slots[i].load(Ordering::Relaxed);
            if w == EMPTY || w == GONE {
                self.slots[i].store((u64::from(fp) << 32) | u64::from(position), Ordering::Release);
                return;
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
    }

    /// Removes the entry at `position`, placed by `high`. Writer only. Whether it was there.
    pub fn remove(&self, high: u32, position: u32) -> bool {
        let n = self.slots.len();
        let mut i = self.place(high);
        loop {
            let w = self.slots[i].load(Ordering::Relaxed);
            if w == EMPTY {
                return false;
            }
            if w != GONE && w as u32 == position {
                self.slots[i].store(GONE, Ordering::Release);
                return true;
            }
            i += 1;
            if i == n {
                i = 0;
            }
        }
    }

    /// A bigger table holding the same entries (without the removed ones), sized for `entries`;
    /// `high[position]` gives each entry's place. Writer only.
    pub fn rebuilt(&self, entries: usize, high: &[u32]) -> IdTable {
        let next = IdTable::with_entries(entries);
        for slot in self.slots.iter() {
            let w = slot.load(Ordering::Relaxed);
            if w != EMPTY && w != GONE {
                let position = w as u32;
                next.insert(high[position as usize], (w >> 32) as u32, position);
            }
        }
        next
    }

    /// Heap bytes.
    pub fn bytes(&self) -> usize {
        self.slots.len() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_it_holds_and_forgets_what_it_removed() {
        let t = IdTable::with_entries(1000);
        let mut high = vec![0u32; 1000];
        for p in 0..1000u32 {
            let (h, fp) = hash(&format!("C{p:09}"));
            high[p as usize] = h;
            t.insert(h, fp, p);
        }
        for p in 0..1000u32 {
            assert_eq!(t.get(&format!("C{p:09}")), Some(p));
        }
        assert_eq!(t.get("C999999999"), None);
        for p in (0..1000u32).step_by(2) {
            assert!(t.remove(high[p as usize], p));
        }
        assert!(!t.remove(high[0], 0), "removed twice");
        let bigger = t.rebuilt(5000, &high);
        for table in [&t, &bigger] {
            for p in 0..1000u32 {
                let want = (p % 2 == 1).then_some(p);
                assert_eq!(table.get(&format!("C{p:09}")), want, "{p}");
            }
        }
        assert!(bigger.capacity() > t.capacity());
    }
}
