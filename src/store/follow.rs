//! What the store gives followers ([`crate::follow`]): a snapshot of customers and segment
//! members at one position of the feed, and each write's entry, filled while the feed is armed.

use std::sync::Arc;

use roaring::RoaringBitmap;

use crate::columnar::{local, shard_of};
use crate::error::{Error, Result};
use crate::events::Noted;
use crate::follow::{Entry, Position};
use crate::segment::registry::Registry;
use crate::store::Store;

/// Customers and members at one position of the feed.
#[derive(Debug)]
pub struct FollowSnapshot {
    pub position: Position,
    /// The write-ahead log's last sequence at the snapshot.
    pub log_sequence: u64,
    /// Live customers' ordinals, ascending, and their ids, concatenated (`id_ends[i]` is where
    /// the `i`th ends in `ids`).
    pub ordinals: Vec<u32>,
    pub ids: String,
    pub id_ends: Vec<u32>,
    /// Each followed segment's id and members, a bitmap per shard holding any.
    pub segments: Vec<(Arc<str>, Vec<RoaringBitmap>)>,
}

/// Every segment's id, sorted.
pub(crate) fn segment_ids(reg: &Registry) -> Arc<[Arc<str>]> {
    let mut ids: Vec<Arc<str>> = reg.in_order().map(|e| Arc::from(e.def.id.as_str())).collect();
    ids.sort_unstable();
    ids.into()
}

impl Store {
    /// The follow feed.
    pub fn feed(&self) -> &Arc<crate::follow::Feed> {
        &self.follow
    }

    /// Arms the feed and captures, at the position it starts from, every live customer and the
    /// members of `segment_ids` (every segment when empty; an unknown one is `NOT_FOUND`).
    /// Writes wait meanwhile (the writer lock is held); reads go on.
    pub fn follow_snapshot(
        &self,
        segment_ids: &[String],
        log_sequence: &dyn Fn() -> u64,
    ) -> Result<FollowSnapshot> {
        let _w = self.lock_writer();
        let reg = self.registry();
        let all = self::segment_ids(&reg);
        let followed: Vec<(Arc<str>, u32)> = if segment_ids.is_empty() {
            all.iter()
                .filter_map(|id| Some((id.clone(), reg.slot(id)?)))
                .collect()
        } else {
            segment_ids
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    reg.slot(id)
                        .map(|slot| (Arc::from(id.as_str()), slot))
                        .ok_or_else(|| Error::NotFound(format!("segment_ids[{i}]: segment `{id}` not found")))
                })
                .collect::<Result<_>>()?
        };
        let position = self.follow.arm(&reg, all);
        let customers = self.customer_count() as usize;
        let mut snap = FollowSnapshot {
            position,
            log_sequence: log_sequence(),
            ordinals: Vec::with_capacity(customers),
            ids: String::new(),
            id_ends: Vec::with_capacity(customers),
            segments: followed.iter().map(|(id, _)| (id.clone(), Vec::new())).collect(),
        };
        for shard in self.shards.snapshot() {
            let s = shard.read();
            for ord in s.live.iter() {
                if let Some(id) = s.ids.get(local(ord)) {
                    snap.ids.push_str(id);
                    snap.ordinals.push(ord);
                    snap.id_ends.push(snap.ids.len() as u32);
                }
            }
            for (k, (_, slot)) in followed.iter().enumerate() {
                if let Some(seg) = s.segment(*slot)
                    && !seg.members.is_empty()
                {
                    snap.segments[k].1.push(seg.members.clone());
                }
            }
        }
        Ok(snap)
    }

    /// Notes the customers a write creates, for the feed (nothing unless it is armed).
    #[inline]
    pub(crate) fn note_created(&self, noted: &mut Noted, ords: impl IntoIterator<Item = u32>) {
        if self.follow.armed() {
            noted.created.extend(ords);
        }
    }

    /// Appends a write's entry to the feed, if armed: what `noted` holds, segments named by
    /// `reg`, at log record `lsn`. Called with the writer lock held (or by the applier for it),
    /// in log order, before the events are committed (which clears `noted`).
    pub(crate) fn feed_entry(&self, lsn: u64, time_micros: i64, noted: &Noted, reg: &Registry) {
        if !self.follow.armed() {
            return;
        }
        let mut entry = Entry {
            log_sequence: lsn,
            time_micros,
            erased: noted.erased.iter().map(|(ord, _)| *ord).collect(),
            ..Entry::default()
        };
        // Created customers' ids, a shard lock per run of one shard.
        let mut created = noted.created.clone();
        created.sort_unstable();
        let mut i = 0;
        while i < created.len() {
            let shard = shard_of(created[i]);
            let s = self.shards.get(shard).read();
            while i < created.len() && shard_of(created[i]) == shard {
                let ord = created[i];
                if let Some(id) = s.ids.get(local(ord)) {
                    entry.created.push((ord, Arc::from(id)));
                }
                i += 1;
            }
        }
        // Segments by slot, each named once.
        let mut index: Vec<u32> = Vec::new();
        let mut named = |slot: u32, entry: &mut Entry| -> Option<u32> {
            let at = slot as usize;
            if index.len() <= at {
                index.resize(at + 1, u32::MAX);
            }
            if index[at] == u32::MAX {
                let e = reg.get(slot)?;
                index[at] = entry.segment_ids.len() as u32;
                entry.segment_ids.push(Arc::from(e.def.id.as_str()));
            }
            Some(index[at])
        };
        for c in &noted.changes {
            // A move within a family is one change: out of `from_slot`, into `slot`.
            if let Some(from) = c.from_slot
                && let Some(k) = named(from, &mut entry)
            {
                entry.changes.push((c.ord, k, false));
            }
            if let Some(k) = named(c.slot, &mut entry) {
                entry.changes.push((c.ord, k, c.entered));
            }
        }
        let after = self.registry();
        self.follow.push(entry, &after, || segment_ids(&after));
    }
}
