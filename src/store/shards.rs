//! The table of shards: a fixed array of slots, each set once when its first ordinal is
//! allocated. Readers index it without taking any lock; the array itself never moves.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;

use crate::store::Shard;

/// Most shards: every `u32` ordinal has one.
const MAX_SHARDS: usize = 1 << (32 - crate::store::SHARD_BITS);

/// Shards by index, created in order and never removed.
pub struct ShardTable {
    slots: Box<[OnceLock<Arc<RwLock<Shard>>>]>,
    len: AtomicUsize,
}

impl Default for ShardTable {
    fn default() -> Self {
        ShardTable {
            slots: (0..MAX_SHARDS).map(|_| OnceLock::new()).collect(),
            len: AtomicUsize::new(0),
        }
    }
}

impl ShardTable {
    /// Shard `i`, which must exist (every allocated ordinal's shard does).
    #[inline]
    pub fn get(&self, i: usize) -> &Arc<RwLock<Shard>> {
        self.slots[i]
            .get()
            .expect("the shard of an allocated ordinal exists")
    }

    /// Number of shards.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Creates shards up to and including `i` (writer only).
    pub fn ensure(&self, i: usize) {
        for j in self.len()..=i {
            let _ = self.slots[j].set(Arc::new(RwLock::new(Shard::default())));
        }
        self.len.fetch_max(i + 1, Ordering::AcqRel);
    }

    /// Handles to every shard, for work that spans them all.
    pub fn snapshot(&self) -> Vec<Arc<RwLock<Shard>>> {
        (0..self.len()).map(|i| self.get(i).clone()).collect()
    }

    /// Heap bytes of the table itself.
    pub fn heap_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<OnceLock<Arc<RwLock<Shard>>>>()
    }
}
