//! RFM reclassification: recency, frequency and monetary value scored 1 to 5 by quintiles over the
//! customers with at least one order, written to `rfm_r`, `rfm_f`, `rfm_m`, then the built-in `rfm`
//! family (and every segment reading the scores) re-evaluated, each move an event.
//!
//! R ranks days since the last order (fewer scores higher), F `order_count`, M `total_spent`.
//! **Tie rule:** a value's score is `1 + floor(5 * s / N)`, where `s` is the number of scored
//! customers with a strictly smaller value (for R, a strictly longer time since the last order) and
//! `N` the number scored. Equal values always share a score, so a tie never splits across
//! quintiles: it stays whole in the quintile where its first customer falls, and the quintiles
//! after it are smaller by as much. Computed from four order statistics per measure (selection,
//! not a sort), so one pass scores tens of millions of customers.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::columnar::column::ColumnData;
use crate::columnar::schema::{AttrId, AttrType, RFM_SCORES, purchase};
use crate::error::{Error, Result};
use crate::events::Cause;
use crate::segment::family::{RFM_FAMILY, rfm_family};
use crate::store::segments::for_each_shard;
use roaring::RoaringBitmap;

use crate::store::{Shard, Store, local};
use crate::time::MICROS_PER_DAY;

/// What a reclassification did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reclassified {
    /// Customers with at least one order, scored.
    pub scored: u64,
    /// Membership changes in the family (moves between members, and first placements).
    pub changes: u64,
    /// Per measure (R in days since the last order, F in orders, M in minor units): the four
    /// values at which the score steps up, lowest score first.
    pub thresholds: [[i64; 4]; 3],
    pub as_of: i64,
}

/// The score of `v`: `1 + #{k : v > s_k}` for the order statistics `s`.
fn score(v: i64, s: &[i64; 4]) -> i64 {
    1 + s.iter().filter(|&&t| v > t).count() as i64
}

/// The values at sorted positions `ceil(k·n/5) - 1` for k = 1..4 (selection, in place).
fn order_statistics(values: &mut [i64]) -> [i64; 4] {
    let n = values.len();
    let mut out = [i64::MAX; 4];
    if n == 0 {
        return out;
    }
    let mut lo = 0;
    for (k, o) in out.iter_mut().enumerate() {
        let pos = ((k + 1) * n).div_ceil(5) - 1;
        let (_, v, _) = values[lo..].select_nth_unstable(pos - lo);
        *o = *v;
        lo = pos;
    }
    out
}

/// The raw values and presence of a number column in one shard.
fn numbers(s: &Shard, attr: AttrId) -> Option<(&[i64], &RoaringBitmap)> {
    let col = s.column(attr)?;
    match &col.data {
        ColumnData::I64(v) => Some((v, &col.present)),
        _ => None,
    }
}

/// Customers of one shard and their recency, frequency and monetary values, in ordinal order.
type Measures = (RoaringBitmap, [Vec<i64>; 3]);

/// The customers of a shard with at least one order (live, with a last order time), and their
/// recency, frequency and monetary values in ordinal order.
fn measures(s: &Shard, as_of: i64) -> Measures {
    let (Some((counts, has_count)), Some((lasts, has_last))) = (
        numbers(s, purchase::ORDER_COUNT),
        numbers(s, purchase::LAST_ORDER_AT),
    ) else {
        return Default::default();
    };
    let spent = numbers(s, purchase::TOTAL_SPENT);
    let mut present = has_count & has_last;
    present &= &s.live;
    let mut values: [Vec<i64>; 3] = Default::default();
    let mut none = RoaringBitmap::new();
    for v in values.iter_mut() {
        v.reserve(present.len() as usize);
    }
    for ord in &present {
        let l = local(ord);
        if counts[l] < 1 {
            none.insert(ord);
            continue;
        }
        values[0].push(recency(as_of, lasts[l]));
        values[1].push(counts[l]);
        values[2].push(spent.and_then(|(v, _)| v.get(l).copied()).unwrap_or(0));
    }
    present -= none;
    (present, values)
}

/// Recency as a value where larger is better: minus whole days since the last order.
fn recency(as_of: i64, last: i64) -> i64 {
    -(as_of - last).div_euclid(MICROS_PER_DAY)
}

impl Store {
    /// Scores every customer with orders as of `as_of` and re-evaluates the RFM family (created
    /// with its score attributes on the first run) and the segments reading the scores.
    pub fn reclassify(&self, as_of: i64, log: &mut dyn FnMut() -> Result<u64>) -> Result<Reclassified> {
        let mut w = self.lock_writer();
        let reg = self.registry();
        // What the first run adds: the score attributes and the family.
        let family = rfm_family();
        if reg.family(RFM_FAMILY).is_none()
            && let Some(taken) = family.members.iter().find(|m| reg.slot(&m.segment_id).is_some())
        {
            return Err(Error::FailedPrecondition(format!(
                "segment `{}` exists: the RFM family needs its id",
                taken.segment_id
            )));
        }
        let mut schema = (*self.schema()).clone();
        for name in RFM_SCORES {
            match schema.get(name) {
                Some(def) if def.ty != AttrType::Int => {
                    return Err(Error::FailedPrecondition(format!(
                        "attribute `{name}` is a {}, the RFM score needs an int",
                        def.ty.name()
                    )));
                }
                Some(_) => {}
                None => {
                    let what = match name {
                        "rfm_r" => "recency",
                        "rfm_f" => "frequency",
                        _ => "monetary value",
                    };
                    schema = schema.with_attribute(
                        name,
                        AttrType::Int,
                        &format!("RFM {what} score, 1 to 5 (Segments.Reclassify)"),
                    )?;
                }
            }
        }
        let schema = Arc::new(schema);
        // Everything that can fail comes before the log: a logged record always replays.
        let reg = match reg.family(RFM_FAMILY) {
            Some(_) => reg,
            None => Arc::new(self.install_family(&reg, &schema, family)?),
        };
        let lsn = log()?;
        *self.schema_mut() = schema.clone();
        let ids = RFM_SCORES.map(|n| schema.get(n).expect("defined above").id);
        let shards = self.shards.snapshot();
        let threads = self.eval_threads.load(Ordering::Relaxed);

        // The three measures of every customer with an order, per shard in ordinal order.
        let gathered = parking_lot::Mutex::new(Vec::new());
        for_each_shard(&shards, threads, |i, shard| {
            let s = shard.read();
            let m = measures(&s, as_of);
            gathered.lock().push((i, m));
        });
        let mut gathered = gathered.into_inner();
        gathered.sort_unstable_by_key(|g| g.0);
        let scored: u64 = gathered.iter().map(|(_, (b, _))| b.len()).sum();
        let mut stats = [[i64::MAX; 4]; 3];
        for (m, st) in stats.iter_mut().enumerate() {
            let mut all: Vec<i64> = Vec::with_capacity(scored as usize);
            for (_, (_, v)) in &gathered {
                all.extend_from_slice(&v[m]);
            }
            *st = order_statistics(&mut all);
        }

        // Write the scores: each score column replaced whole, shard by shard.
        let gathered: Vec<parking_lot::Mutex<Option<Measures>>> = {
            let mut by_shard: Vec<_> = (0..shards.len()).map(|_| parking_lot::Mutex::new(None)).collect();
            for (i, g) in gathered {
                by_shard[i] = parking_lot::Mutex::new(Some(g));
            }
            by_shard
        };
        for_each_shard(&shards, threads, |i, shard| {
            let Some((present, values)) = gathered[i].lock().take() else {
                return;
            };
            self.copy_before_write(i);
            let mut s = shard.write();
            for (m, &attr) in ids.iter().enumerate() {
                let col = s.column_mut(attr, AttrType::Int);
                col.replace_i64(present.clone(), values[m].iter().map(|&v| score(v, &stats[m])));
            }
        });

        // The family, and the other segments reading the scores (with their readers).
        let fe = reg.family(RFM_FAMILY).expect("installed above").clone();
        let now = self.now();
        let mut changes = self.evaluate_family(&fe, &schema, now, Cause::Reclassification);
        let readers: Vec<u32> = reg
            .closure(|e| fe.slots.contains(&e.slot) || e.attrs.iter().any(|a| ids.contains(a)))
            .into_iter()
            .filter(|s| !fe.slots.contains(s))
            .collect();
        changes.extend(self.evaluate_slots(&reg, &readers, &schema, now, Some(Cause::Reclassification)));
        let family_changes = changes.len() as u64;
        let mut entry = (*fe).clone();
        entry.reclassified_at = Some(as_of);
        entry.last_moves = moves(&changes, &fe.slots);
        let next = reg.with_family(entry);
        self.segments.store(Arc::new(next));
        w.noted.changes = changes;
        self.commit_events(lsn, now, &mut w.noted, &self.registry());
        Ok(Reclassified {
            scored,
            changes: family_changes,
            thresholds: [
                // Back to days since the last order, ascending scores.
                stats[0].map(|v| -v),
                stats[1],
                stats[2],
            ],
            as_of,
        })
    }
}

/// The entries into `members` among `changes`, counted by (member left, member entered),
/// largest first.
fn moves(changes: &[crate::events::Change], members: &[u32]) -> Vec<(Option<u32>, u32, u64)> {
    let mut counts: std::collections::HashMap<(Option<u32>, u32), u64> = Default::default();
    for c in changes.iter().filter(|c| c.entered && members.contains(&c.slot)) {
        *counts.entry((c.from_slot, c.slot)).or_default() += 1;
    }
    let mut out: Vec<_> = counts.into_iter().map(|((from, to), n)| (from, to, n)).collect();
    out.sort_unstable_by(|a, b| b.2.cmp(&a.2).then((a.0, a.1).cmp(&(b.0, b.1))));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_share_a_score_and_quintiles_follow_the_rule() {
        // 10 values; the tie of 3s spans positions 2..6.
        let values = [1, 2, 3, 3, 3, 3, 3, 8, 9, 10];
        let mut v = values.to_vec();
        let s = order_statistics(&mut v);
        let n = values.len() as i64;
        for &x in &values {
            let smaller = values.iter().filter(|&&y| y < x).count() as i64;
            assert_eq!(score(x, &s), 1 + 5 * smaller / n, "value {x}");
        }
        assert_eq!(score(3, &s), 2);
        assert_eq!(score(1, &s), 1);
        assert_eq!(score(10, &s), 5);
        assert_eq!(order_statistics(&mut []), [i64::MAX; 4]);
        assert_eq!(recency(10 * MICROS_PER_DAY, MICROS_PER_DAY + 1), -8);
    }
}
