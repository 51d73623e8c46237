//! Segments: rules, their text form, evaluation and always-current member bitmaps.

use roaring::RoaringBitmap;

pub mod compile;
pub mod eval;
pub mod family;
pub mod rule;
pub mod text;

/// One segment's state in one shard.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SegShard {
    /// Current members: `(rule ∪ include ∪ included accounts) \ (exclude ∪ excluded accounts)`.
    pub members: RoaringBitmap,
    /// Customers put on the include list (by definition, activities or member loads).
    pub include: RoaringBitmap,
    /// Customers put on the exclude list.
    pub exclude: RoaringBitmap,
    /// Customers whose place on either list was set by a marketing activity (for explanations).
    pub by_activity: RoaringBitmap,
}
pub mod registry;
