//! Customers and their memberships in one table, read without locks with one memory access.
//!
//! A check of a random customer among millions waits for memory (about 160 ns a miss on the
//! machine of BENCHMARKS.md); a design that looks the id up in one structure and the membership
//! in another waits twice. Here each customer is one slot of the table: a 64-bit word holding the
//! fingerprint of its id (the low 32 bits of the id's 64-bit hash) and its membership in the
//! first 32 followed segments, then one more word per 64 further segments. The slot is placed by
//! the high 32 bits of the hash (open addressing, linear probing). A check hashes the id, probes
//! from its place for its fingerprint and reads the segment's bit from the same word.
//!
//! No id is stored: a `HashMap<String, u32>` would cost 50 bytes and more a customer. A known id
//! is always found; an unknown id is taken for a known one only when a slot it probes holds its
//! 32-bit fingerprint: about one lookup in a billion for the table's short probes.
//!
//! One writer (the follow thread) changes slots with atomic stores and read-modify-writes;
//! readers load with acquire ordering and never wait. The table never grows in place: the writer
//! builds a bigger one beside it and the replica swaps it in. For that, and to find a customer's
//! slot from the position the server names it by, the writer keeps per position the slot and the
//! high hash bits (8 bytes a customer, writer only).

use std::sync::atomic::Ordering;

use crate::words::Words;

const EMPTY: u64 = 0;
/// A removed entry (fingerprint `u32::MAX`, never a live one's): probes go past it.
const GONE: u64 = (u32::MAX as u64) << 32;
/// Bits of the first word that hold memberships.
pub const FIRST_BITS: u32 = 32;
/// Entries per slot at most before the table is rebuilt bigger (removed ones count).
const MAX_LOAD: f64 = 0.85;
/// Entries per slot when built.
const LOAD: f64 = 0.7;

/// The 64-bit hash of an id: the high half places it, the low half is its fingerprint (never 0
/// or `u32::MAX`).
#[inline]
pub fn hash(id: &str) -> (u32, u32) {
    hash_bytes(id.as_bytes())
}

/// [`hash`] of an id's UTF-8 bytes.
#[inline]
pub fn hash_bytes(id: &[u8]) -> (u32, u32) {
    let h = xxhash_rust::xxh3::xxh3_64(id);
    let fp = (h as u32).clamp(1, u32::MAX - 1);
    ((h >> 32) as u32, fp)
}

/// Words a slot needs for `segments` membership bits.
pub fn stride_for(segments: usize) -> usize {
    1 + segments.saturating_sub(FIRST_BITS as usize).div_ceil(64)
}

/// Membership bits a slot of `stride` words holds.
pub fn bits_for(stride: usize) -> usize {
    FIRST_BITS as usize + (stride - 1) * 64
}

#[derive(Debug)]
pub struct Table {
    words: Words,
    stride: usize,
    slots: usize,
}

/// Where a membership bit lives in a slot: the word's offset and its mask.
#[inline]
pub fn locate(bit: u32) -> (usize, u64) {
    if bit < FIRST_BITS {
        (0, 1 << bit)
    } else {
        let b = bit - FIRST_BITS;
        (1 + (b / 64) as usize, 1 << (b % 64))
    }
}

impl Table {
    /// An empty table for `entries` customers and slots of `stride` words.
    pub fn with_entries(entries: usize, stride: usize) -> Table {
        let slots = ((entries as f64 / LOAD) as usize).max(16);
        Table {
            words: Words::zeroed(slots * stride),
            stride,
            slots,
        }
    }

    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Whether `entries` (live and removed) fit without a rebuild.
    pub fn fits(&self, entries: usize) -> bool {
        (entries as f64) <= self.slots as f64 * MAX_LOAD
    }

    #[inline]
    fn place(&self, high: u32) -> usize {
        // Lemire's multiply-shift: a place in 0..slots without a division.
        ((u64::from(high) * self.slots as u64) >> 32) as usize
    }

    /// Asks the processor for the cache line of `high`'s place ahead of an insert there (a
    /// hint: the misses of a run of inserts then overlap; nothing off x86-64).
    #[inline]
    pub fn prefetch(&self, high: u32) {
        #[cfg(target_arch = "x86_64")]
        {
            let at = self.place(high) * self.stride;
            let p = self.words[at..].as_ptr().cast::<i8>();
            // SAFETY: a prefetch is a hint and never faults; `p` is inside the table anyway.
            unsafe { core::arch::x86_64::_mm_prefetch(p, core::arch::x86_64::_MM_HINT_T0) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = high;
    }

    #[inline]
    fn word(&self, slot: usize, offset: usize) -> &std::sync::atomic::AtomicU64 {
        &self.words[slot * self.stride + offset]
    }

    /// The slot of `id`, and its first word as loaded, if the table holds it.
    #[inline]
    pub fn find(&self, id: &str) -> Option<(usize, u64)> {
        let (high, fp) = hash(id);
        let mut i = self.place(high);
        loop {
            let w = self.word(i, 0).load(Ordering::Acquire);
            if w == EMPTY {
                return None;
            }
            if (w >> 32) as u32 == fp {
                return Some((i, w));
            }
            i += 1;
            if i == self.slots {
                i = 0;
            }
        }
    }

    /// Whether the customer in `slot` (whose first word is `first`) is in the segment of `bit`.
    #[inline]
    pub fn has(&self, slot: usize, first: u64, bit: u32) -> bool {
        let (offset, mask) = locate(bit);
        let w = if offset == 0 {
            first
        } else {
            self.word(slot, offset).load(Ordering::Acquire)
        };
        w & mask != 0
    }

    /// Places an id hashed to `(high, fp)` with no membership; its slot. Writer only; the table
    /// must fit one more entry.
    pub fn insert(&self, high: u32, fp: u32) -> usize {
        self.insert_with(high, fp, &[])
    }

    /// Places an id hashed to `(high, fp)` with membership words `bits` (in the slot's layout,
    /// see [`locate`]; missing words are zero); its slot. Writer only; the table must fit one
    /// more entry.
    pub fn insert_with(&self, high: u32, fp: u32, bits: &[u64]) -> usize {
        let mut i = self.place(high);
        loop {
            let w = self.word(i, 0).load(Ordering::Relaxed);
            if w == EMPTY || w == GONE {
                for offset in 1..self.stride {
                    self.word(i, offset)
                        .store(bits.get(offset).copied().unwrap_or(0), Ordering::Relaxed);
                }
                let first = bits.first().map_or(0, |b| b & 0xFFFF_FFFF);
                self.word(i, 0)
                    .store((u64::from(fp) << 32) | first, Ordering::Release);
                return i;
            }
            i += 1;
            if i == self.slots {
                i = 0;
            }
        }
    }

    /// Removes the entry in `slot`. Writer only.
    pub fn remove(&self, slot: usize) {
        self.word(slot, 0).store(GONE, Ordering::Release);
        for offset in 1..self.stride {
            self.word(slot, offset).store(0, Ordering::Release);
        }
    }

    /// Sets or clears the membership `bit` of `slot`. Writer only.
    pub fn set(&self, slot: usize, bit: u32, member: bool) {
        let (offset, mask) = locate(bit);
        let w = self.word(slot, offset);
        if member {
            w.fetch_or(mask, Ordering::Release);
        } else {
            w.fetch_and(!mask, Ordering::Release);
        }
    }

    /// Clears `bit` in every slot (a membership bit given to a new segment). Writer only.
    pub fn clear_bit(&self, bit: u32) {
        let (offset, mask) = locate(bit);
        for slot in 0..self.slots {
            let w = self.word(slot, offset);
            if w.load(Ordering::Relaxed) & mask != 0 {
                w.fetch_and(!mask, Ordering::Release);
            }
        }
    }

    /// A table sized for `entries` with slots of `stride` words (at least this one's), holding
    /// this one's live entries: `slot_of[position]` says where each is and is updated, `high`
    /// gives each position's place. Writer only.
    pub fn rebuilt(&self, entries: usize, stride: usize, slot_of: &mut [u32], high: &[u32]) -> Table {
        let stride = stride.max(self.stride);
        let next = Table::with_entries(entries, stride);
        for (position, slot) in slot_of.iter_mut().enumerate() {
            if *slot == NONE {
                continue;
            }
            let old = *slot as usize;
            let first = self.word(old, 0).load(Ordering::Relaxed);
            let at = next.insert(high[position], (first >> 32) as u32);
            next.word(at, 0).store(first, Ordering::Relaxed);
            for offset in 1..self.stride {
                next.word(at, offset)
                    .store(self.word(old, offset).load(Ordering::Relaxed), Ordering::Relaxed);
            }
            *slot = at as u32;
        }
        next
    }

    /// Live customers with membership `bit`.
    pub fn count(&self, bit: u32) -> u64 {
        let (offset, mask) = locate(bit);
        (0..self.slots)
            .filter(|&slot| {
                let first = self.word(slot, 0).load(Ordering::Acquire);
                first != EMPTY && first != GONE && self.word(slot, offset).load(Ordering::Acquire) & mask != 0
            })
            .count() as u64
    }

    /// Heap bytes.
    pub fn bytes(&self) -> usize {
        self.words.len() * 8
    }
}

/// No slot: a position without a live customer.
pub const NONE: u32 = u32::MAX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_ids_and_memberships_across_removals_and_rebuilds() {
        for segments in [20, 100] {
            let stride = stride_for(segments);
            let t = Table::with_entries(1000, stride);
            let (mut slot_of, mut high) = (vec![NONE; 1000], vec![0u32; 1000]);
            for p in 0..1000u32 {
                let (h, fp) = hash(&format!("C{p:09}"));
                high[p as usize] = h;
                slot_of[p as usize] = t.insert(h, fp) as u32;
                t.set(slot_of[p as usize] as usize, p % segments as u32, true);
            }
            for p in (0..1000u32).step_by(2) {
                t.remove(slot_of[p as usize] as usize);
                slot_of[p as usize] = NONE;
            }
            let bigger = t.rebuilt(5000, stride, &mut slot_of, &high);
            for (table, check_slots) in [(&t, false), (&bigger, true)] {
                for p in 0..1000u32 {
                    let found = table.find(&format!("C{p:09}"));
                    if p % 2 == 0 {
                        assert_eq!(found, None, "{p}");
                        continue;
                    }
                    let (slot, first) = found.unwrap();
                    if check_slots {
                        assert_eq!(slot as u32, slot_of[p as usize]);
                    }
                    for bit in 0..segments as u32 {
                        assert_eq!(
                            table.has(slot, first, bit),
                            bit == p % segments as u32,
                            "{p} {bit}"
                        );
                    }
                }
            }
            assert_eq!(t.find("C999999999"), None);
        }
    }

    #[test]
    fn strides() {
        assert_eq!(
            (
                stride_for(0),
                stride_for(32),
                stride_for(33),
                stride_for(96),
                stride_for(97)
            ),
            (1, 1, 2, 2, 3)
        );
        assert_eq!(bits_for(2), 96);
    }
}
