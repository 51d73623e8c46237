//! The columnar layer under the store and the rule evaluator: typed columns of 65,536
//! customers ([`column`]), value dictionaries ([`dict`]), string columns ([`strings`]), the
//! schema of attributes ([`schema`]) and values ([`value`]). It knows nothing of customers'
//! ids, segments or the log.

pub mod column;
pub mod dict;
pub mod schema;
pub mod strings;
pub mod value;

/// log2 of the ordinals in one shard.
pub const SHARD_BITS: u32 = 16;
/// Ordinals in one shard: one roaring container.
pub const SHARD_SIZE: usize = 1 << SHARD_BITS;

/// The shard holding ordinal `ord`.
#[inline]
pub fn shard_of(ord: u32) -> usize {
    (ord >> SHARD_BITS) as usize
}

/// The position of `ord` inside its shard.
#[inline]
pub fn local(ord: u32) -> usize {
    (ord as usize) & (SHARD_SIZE - 1)
}

/// Asks the processor to fetch the cache line at `ptr` ahead of a read. A hint only: it reads
/// nothing and never faults, so any address, even a wrong guess, is safe.
#[inline]
pub fn prefetch<T>(ptr: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing and never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch(ptr.cast::<i8>(), std::arch::x86_64::_MM_HINT_T0);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = ptr;
}

/// Heap bytes of a hash table (hashbrown, as in std, foldhash and dashmap) holding `capacity`
/// entries of `entry` bytes before it grows: its buckets (capacity is 7/8 of them) with one control
/// byte each, plus a group of control bytes.
pub fn table_bytes(capacity: usize, entry: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 7 {
        capacity + 1
    } else {
        capacity / 7 * 8
    };
    buckets * (entry + 1) + 16
}
