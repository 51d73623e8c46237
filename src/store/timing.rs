//! Segments whose rules read the clock stay true as it moves.
//!
//! A relative-time predicate (`last_order_at within 90d`, `age >= 40`, `birthday within 7 days`,
//! `days_since_last_order > 30`, `registered_at within 1y`) flips for a customer at an instant fixed
//! by the customer's value: `last_order_at + 90 days`, the 40th birthday, and so on. So every shard
//! keeps, for each date or timestamp attribute that such a predicate reads, a time index: its
//! customers bucketed by day, ordered. The index orders customers by the instant each predicate on
//! that attribute flips for them, so the server knows, per customer and segment, when the next
//! flip is due without a timer each.
//!
//! Every second (`advance_time`), the window of values whose flip instant fell between the last
//! advance and now is looked up in the index, and only those customers are re-evaluated, with a
//! `time` event for each membership that changes. Birthdays flip at midnight UTC: the customers
//! born on the days entering or leaving the window are looked up year by year. After a start, the
//! first advance re-evaluates every time-dependent segment whole (the server may have been down
//! across any number of flips).
//!
//! An advance that has customers to look at is a write-ahead log record holding the instant it
//! started from; replay repeats it at the record's time and makes the same changes.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use roaring::RoaringBitmap;

use crate::columnar::column::ColumnData;
use crate::columnar::schema::{AttrId, AttrType, Schema};
use crate::error::Result;
use crate::events::Cause;
use crate::segment::compile::{Expr, Leaf, Relative};
use crate::segment::eval::{Bound, Now, bind_relative};
use crate::segment::registry::Registry;
use crate::store::segments::{Changed, refresh_customer};
use crate::store::{Shard, Store};
use crate::time::{self, MICROS_PER_DAY};

/// One attribute's customers in one shard, by the day of their value.
#[derive(Debug, Default, Clone)]
pub struct TimeIndex {
    pub attr: AttrId,
    /// A timestamp (microseconds) rather than a date (days).
    pub timestamp: bool,
    pub days: BTreeMap<i32, RoaringBitmap>,
}

impl TimeIndex {
    fn day(&self, value: i64) -> i32 {
        let day = if self.timestamp {
            value.div_euclid(MICROS_PER_DAY)
        } else {
            value
        };
        day.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32
    }
}

/// How far an advance of time looks back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advance {
    /// Flips due after this instant (microseconds since the epoch).
    Since(i64),
    /// Every customer of every time-dependent segment.
    Full,
}

/// The raw value of `ord` in a date or timestamp column.
fn raw(s: &Shard, attr: AttrId, ord: u32) -> Option<i64> {
    let col = s.column(attr)?;
    if !col.present.contains(ord) {
        return None;
    }
    let i = crate::store::local(ord);
    match &col.data {
        ColumnData::I64(v) => v.get(i).copied(),
        ColumnData::I32(v) => v.get(i).map(|&d| i64::from(d)),
        _ => None,
    }
}

impl Shard {
    /// The time-index day of `ord`'s value of `attr`, if `attr` is indexed and the value set.
    pub(crate) fn time_day(&self, attr: AttrId, ord: u32) -> Option<i32> {
        let idx = self.timed.iter().find(|t| t.attr == attr)?;
        raw(self, attr, ord).map(|v| idx.day(v))
    }

    /// Moves `ord` in `attr`'s time index from day `old` to the day of its current value.
    pub(crate) fn retime(&mut self, attr: AttrId, ord: u32, old: Option<i32>) {
        let new = self.time_day(attr, ord);
        if new == old {
            return;
        }
        let Some(idx) = self.timed.iter_mut().find(|t| t.attr == attr) else {
            return;
        };
        if let Some(d) = old
            && let Some(bm) = idx.days.get_mut(&d)
        {
            bm.remove(ord);
            if bm.is_empty() {
                idx.days.remove(&d);
            }
        }
        if let Some(d) = new {
            idx.days.entry(d).or_default().insert(ord);
        }
    }

    /// Takes `ord` out of every time index (before an erasure clears its columns).
    pub(crate) fn untime(&mut self, ord: u32) {
        for i in 0..self.timed.len() {
            let attr = self.timed[i].attr;
            if let Some(d) = self.time_day(attr, ord) {
                let idx = &mut self.timed[i];
                if let Some(bm) = idx.days.get_mut(&d) {
                    bm.remove(ord);
                    if bm.is_empty() {
                        idx.days.remove(&d);
                    }
                }
            }
        }
    }

    /// Keeps time indexes for exactly `wanted` (attribute, is timestamp), building new ones.
    pub(crate) fn set_time_indexes(&mut self, wanted: &[(AttrId, bool)]) {
        self.timed.retain(|t| wanted.iter().any(|w| w.0 == t.attr));
        for &(attr, timestamp) in wanted {
            if self.timed.iter().any(|t| t.attr == attr) {
                continue;
            }
            let mut idx = TimeIndex {
                attr,
                timestamp,
                days: BTreeMap::new(),
            };
            if let Some(col) = self.column(attr) {
                // Sorted by day, then ordinal: each day's bitmap is built from its run at once,
                // rather than a map lookup and a bitmap insert per customer.
                let mut by_day: Vec<(i32, u32)> = col
                    .present
                    .iter()
                    .filter_map(|ord| raw(self, attr, ord).map(|v| (idx.day(v), ord)))
                    .collect();
                by_day.sort_unstable();
                for run in by_day.chunk_by(|a, b| a.0 == b.0) {
                    let ords = RoaringBitmap::from_sorted_iter(run.iter().map(|&(_, ord)| ord))
                        .expect("ordinals sorted within a day");
                    idx.days.insert(run[0].0, ords);
                }
            }
            self.timed.push(idx);
        }
    }

    /// Customers whose value of `attr` lies in `lo..=hi`.
    fn in_value_range(&self, attr: AttrId, lo: i64, hi: i64, out: &mut RoaringBitmap) {
        let Some(idx) = self.timed.iter().find(|t| t.attr == attr) else {
            return;
        };
        if lo > hi {
            return;
        }
        let (first, last) = (idx.day(lo), idx.day(hi));
        for (&day, bm) in idx.days.range(first..=last) {
            let whole = if idx.timestamp {
                let start = i64::from(day) * MICROS_PER_DAY;
                lo <= start && start.saturating_add(MICROS_PER_DAY - 1) <= hi
            } else {
                true
            };
            if whole {
                *out |= bm;
            } else {
                for ord in bm {
                    if raw(self, attr, ord).is_some_and(|v| lo <= v && v <= hi) {
                        out.insert(ord);
                    }
                }
            }
        }
    }

    /// Customers born on a day whose month and day are among `dates` (any year), with Feb 29
    /// births counted on Feb 28 and Mar 1.
    fn born_on(&self, attr: AttrId, dates: &[(i32, i32)], out: &mut RoaringBitmap) {
        let Some(idx) = self.timed.iter().find(|t| t.attr == attr) else {
            return;
        };
        let (Some((&first, _)), Some((&last, _))) = (idx.days.first_key_value(), idx.days.last_key_value())
        else {
            return;
        };
        let (y0, y1) = (time::civil_from_days(first).0, time::civil_from_days(last).0);
        let leap_day = dates.iter().any(|&(m, d)| (m, d) == (2, 28) || (m, d) == (3, 1));
        for year in y0..=y1 {
            let extra = leap_day.then_some((2, 29));
            for &(m, d) in dates.iter().chain(extra.iter()) {
                if let Some(day) = time::days_from_civil(year, m, d)
                    && let Some(bm) = idx.days.get(&day)
                {
                    *out |= bm;
                }
            }
        }
    }
}

/// The relative-time leaves of `expr`.
fn relative_leaves<'a>(expr: &'a Expr, out: &mut Vec<&'a Relative>) {
    match expr {
        Expr::And(v) | Expr::Or(v) => v.iter().for_each(|e| relative_leaves(e, out)),
        Expr::Not(e) => relative_leaves(e, out),
        Expr::Leaf(Leaf::Relative(r)) => out.push(r),
        Expr::Leaf(_) | Expr::Never => {}
    }
}

/// The date and timestamp attributes the time-dependent segments of `reg` read relatively.
pub fn timed_attrs(reg: &Registry, schema: &Schema) -> Vec<(AttrId, bool)> {
    let mut out: Vec<(AttrId, bool)> = Vec::new();
    for e in reg.in_order() {
        let Some(c) = e.compiled.as_ref().filter(|c| c.time_dependent) else {
            continue;
        };
        let mut leaves = Vec::new();
        relative_leaves(&c.expr, &mut leaves);
        for r in leaves {
            let attr = r.attr();
            if !out.iter().any(|o| o.0 == attr) {
                out.push((attr, schema.attr(attr).ty == AttrType::Timestamp));
            }
        }
    }
    out.sort_unstable();
    out
}

/// The values whose answer can differ between two bindings of one range test: the sweep of
/// each bound.
fn sweeps(before: &[(i64, i64)], after: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    for (&(a0, b0), &(a1, b1)) in before.iter().zip(after) {
        out.push((a0.min(a1), a0.max(a1)));
        out.push((b0.min(b1), b0.max(b1)));
    }
    out
}

/// Customers of shard `s` for whom `rel` may answer differently at `to` than at `from`.
fn candidates(rel: &Relative, s: &Shard, from: Now, to: Now, out: &mut RoaringBitmap) {
    if let Relative::Birthday { attr, days } = rel {
        if from.today == to.today {
            return;
        }
        // Birthdays leaving the window (from today on) and entering it (at its far end).
        let span = i64::from(to.today) - i64::from(from.today);
        let mut dates = Vec::new();
        if !(0..=366).contains(&span) {
            for day in 0..366 {
                let (_, m, d) = time::civil_from_days(day);
                dates.push((m, d));
            }
        } else {
            for base in [from.today, from.today.saturating_add(*days)] {
                for day in base.saturating_sub(1)..=base.saturating_add(span as i32 + 1) {
                    let (_, m, d) = time::civil_from_days(day);
                    dates.push((m, d));
                }
            }
        }
        dates.sort_unstable();
        dates.dedup();
        s.born_on(*attr, &dates, out);
        return;
    }
    let ranges = |now: Now| -> (AttrId, Vec<(i64, i64)>) {
        match bind_relative(rel, now) {
            Bound::I64 { attr, test } => (attr, test.ranges),
            Bound::I32 { attr, test } => (
                attr,
                test.ranges
                    .iter()
                    .map(|&(a, b)| (i64::from(a), i64::from(b)))
                    .collect(),
            ),
            other => (other_attr(&other), Vec::new()),
        }
    };
    let (attr, before) = ranges(from);
    let (_, after) = ranges(to);
    for (lo, hi) in sweeps(&before, &after) {
        s.in_value_range(attr, lo, hi, out);
    }
}

fn other_attr(b: &Bound) -> AttrId {
    match b {
        Bound::Birthday { attr, .. } => *attr,
        _ => 0,
    }
}

impl Store {
    /// Keeps each shard's time indexes in step with the attributes `reg`'s rules read relatively.
    /// Called with the writer lock held, whenever the registry changes.
    pub(crate) fn sync_time_indexes(&self, reg: &Registry) {
        let wanted = timed_attrs(reg, &self.schema());
        let shards = self.shards.snapshot();
        // Each shard's indexes come from its own columns: shards in parallel (at a restart of
        // 10,000,000 customers this was the longest serial step, 1.6 s of CPU).
        let threads = self.eval_threads.load(Ordering::Relaxed);
        crate::store::segments::for_each_shard(&shards, threads, |i, shard| {
            let same = {
                let s = shard.read();
                s.timed.len() == wanted.len() && wanted.iter().all(|w| s.timed.iter().any(|t| t.attr == w.0))
            };
            if !same {
                self.copy_before_write(i);
                shard.write().set_time_indexes(&wanted);
            }
        });
    }

    /// The instant up to which time flips are applied; `None` before the first advance.
    pub fn time_applied(&self) -> Option<i64> {
        match self.time_applied.load(Ordering::Acquire) {
            i64::MIN => None,
            t => Some(t),
        }
    }

    /// Applies the time flips due between `how` (by default, where the last advance left off) and
    /// now: re-evaluates the customers whose relative-time predicates may have flipped, with a
    /// `time` event for each change. Logs only when there are customers to look at. Returns the
    /// number of membership changes.
    pub fn advance_time(&self, how: Option<Advance>, log: &mut dyn FnMut() -> Result<u64>) -> Result<u64> {
        let mut w = self.lock_writer();
        let now = self.now();
        let reg = self.registry();
        let schema = self.schema();
        let how = how.unwrap_or(match self.time_applied() {
            Some(t) => Advance::Since(t),
            None => Advance::Full,
        });
        // Segments that answer with the clock: their rule reads it, or they read one that does.
        let affected = reg.closure(|e| e.compiled.as_ref().is_some_and(|c| c.time_dependent));
        if affected.is_empty() {
            self.time_applied.store(now.micros, Ordering::Release);
            return Ok(0);
        }
        let (changes, lsn) = match how {
            Advance::Since(from) if from >= now.micros => return Ok(0),
            Advance::Since(from) => {
                let from = Now::at(from);
                let mut leaves = Vec::new();
                for e in affected.iter().filter_map(|&slot| reg.get(slot)) {
                    if let Some(c) = e.compiled.as_ref().filter(|c| c.time_dependent) {
                        relative_leaves(&c.expr, &mut leaves);
                    }
                }
                let mut due: Vec<(usize, RoaringBitmap)> = Vec::new();
                for i in 0..self.shards.len() {
                    let s = self.shards.get(i).read();
                    let mut cands = RoaringBitmap::new();
                    for rel in &leaves {
                        candidates(rel, &s, from, now, &mut cands);
                    }
                    cands &= &s.live;
                    if !cands.is_empty() {
                        due.push((i, cands));
                    }
                }
                if due.is_empty() {
                    self.time_applied.store(now.micros, Ordering::Release);
                    return Ok(0);
                }
                let lsn = log()?;
                let mut changes = Vec::new();
                for (i, cands) in due {
                    let mut s = self.write_shard(i);
                    for ord in &cands {
                        refresh_customer(&reg, &schema, &mut s, ord, Changed::Time, now, &mut changes, None);
                    }
                }
                (changes, lsn)
            }
            Advance::Full => {
                let lsn = log()?;
                let changes = self.evaluate_slots(&reg, &affected, &schema, now, Some(Cause::Time));
                (changes, lsn)
            }
        };
        let changed = changes.len() as u64;
        self.time_flips.fetch_add(changed, Ordering::Relaxed);
        w.noted.changes = changes;
        self.time_applied.store(now.micros, Ordering::Release);
        self.commit_events(lsn, now, &mut w.noted, &reg);
        Ok(changed)
    }
}
