//! The store's side of families ([`crate::segment::family`]): evaluating a whole family in one
//! pass, creating, deleting and listing families.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use roaring::RoaringBitmap;

use crate::columnar::schema::Schema;
use crate::error::{Error, Result};
use crate::events::{Cause, Change, concat_changes};
use crate::segment::compile::compile;
use crate::segment::eval::{BoundExpr, Now, bind, eval_shard};
use crate::segment::family::{Family, FamilyInfo};
use crate::segment::registry::{FamilyEntry, Registry, SegmentEntry};
use crate::store::segments::for_each_shard;
use crate::store::{SHARD_BITS, SHARD_SIZE, Store, local};

impl Store {
    /// Evaluates a whole family in one pass over each shard (each member's rule once, first match
    /// wins, the rest to the catch-all) and installs its members. Called with the writer lock held.
    /// Returns the changes: an entry into a member, from the member left when it is a move.
    pub(crate) fn evaluate_family(
        &self,
        fe: &FamilyEntry,
        schema: &Schema,
        now: Now,
        cause: Cause,
    ) -> Vec<Change> {
        let started = std::time::Instant::now();
        let shards = self.shards.snapshot();
        let bound: Vec<Option<BoundExpr>> = fe
            .rules
            .iter()
            .map(|c| c.as_ref().map(|c| bind(&c.expr, schema, now)))
            .collect();
        let found = parking_lot::Mutex::new(Vec::new());
        for_each_shard(&shards, self.eval_threads.load(Ordering::Relaxed), |i, shard| {
            let base = (i as u32) << SHARD_BITS;
            self.copy_before_write(i);
            let mut s = shard.write();
            let mut covered = RoaringBitmap::new();
            let mut news = Vec::with_capacity(bound.len());
            for b in &bound {
                let m = match b {
                    Some(b) => {
                        let mut r = eval_shard(b, &*s, base);
                        r -= &covered;
                        covered |= &r;
                        r
                    }
                    None => &s.live - &covered,
                };
                news.push(m);
            }
            let olds: Vec<RoaringBitmap> = fe
                .slots
                .iter()
                .zip(news)
                .map(|(&slot, new)| std::mem::replace(&mut s.segment_mut(slot).members, new))
                .collect();
            // The member each customer was in, by local ordinal (u8::MAX: none).
            let mut was = vec![
                u8::MAX;
                if olds.iter().all(RoaringBitmap::is_empty) {
                    0
                } else {
                    SHARD_SIZE
                }
            ];
            for (j, old) in olds.iter().enumerate() {
                for ord in old {
                    was[local(ord)] = j as u8;
                }
            }
            // Member by member (ordinal order within each): deterministic, so replay agrees.
            let mut changes = Vec::new();
            for (k, &slot) in fe.slots.iter().enumerate() {
                let Some(seg) = s.segment(slot) else { continue };
                for ord in &seg.members - &olds[k] {
                    let from = was
                        .get(local(ord))
                        .filter(|&&j| j != u8::MAX)
                        .map(|&j| fe.slots[usize::from(j)]);
                    changes.push(Change {
                        from_slot: from,
                        ..Change::new(ord, slot, true, cause)
                    });
                }
            }
            if !changes.is_empty() {
                found.lock().push((i, changes));
            }
        });
        let mut found = found.into_inner();
        found.sort_unstable_by_key(|f| f.0);
        self.eval_seconds.observe(started.elapsed().as_secs_f64());
        concat_changes(found)
    }

    /// Defines a family: its members become segments, evaluated before returning.
    pub fn create_family(&self, family: Family, log: &mut dyn FnMut() -> Result<u64>) -> Result<FamilyInfo> {
        let mut w = self.lock_writer();
        family.check()?;
        let schema = self.schema();
        let reg = self.registry();
        if reg.family(&family.id).is_some() {
            return Err(Error::AlreadyExists(format!(
                "family `{}` already exists",
                family.id
            )));
        }
        let id = family.id.clone();
        let next = self.install_family(&reg, &schema, family)?;
        let lsn = log()?;
        let now = self.now();
        let fe = next.family(&id).expect("just added").clone();
        w.noted.changes = self.evaluate_family(&fe, &schema, now, Cause::Rule);
        self.segments.store(Arc::new(next));
        let reg = self.registry();
        self.sync_time_indexes(&reg);
        self.commit_events(lsn, now, &mut w.noted, &reg);
        drop(w);
        self.family_info(&id)
    }

    /// A registry with `family` and its member segments added (compiled, not evaluated). Called
    /// with the writer lock held; errors name the member.
    pub(crate) fn install_family(&self, reg: &Registry, schema: &Schema, family: Family) -> Result<Registry> {
        let last = family.catch_all();
        let field = |i: usize| {
            if i == last {
                "catch_all".to_string()
            } else {
                format!("members[{i}]")
            }
        };
        for (i, m) in family.members.iter().enumerate() {
            if reg.slot(&m.segment_id).is_some() {
                return Err(Error::AlreadyExists(format!(
                    "{}: segment `{}` already exists",
                    field(i),
                    m.segment_id
                )));
            }
        }
        let rules = family
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.rule
                    .as_ref()
                    .map(|r| compile(r, schema, &|id| reg.slot(id)))
                    .transpose()
                    .map_err(|e| e.within(&field(i)))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut next = reg.clone();
        let mut slots = Vec::with_capacity(family.members.len());
        let family_id: Arc<str> = Arc::from(family.id.as_str());
        for k in 0..family.members.len() {
            let slot = next.free_slot()?;
            let mut entry = self
                .compile_entry(&next, schema, slot, family.member_def(k))
                .map_err(|e| e.within(&field(k)))?;
            entry.family = Some(family_id.clone());
            next = next.with(entry)?;
            slots.push(slot);
        }
        Ok(next.with_family(FamilyEntry {
            family,
            slots,
            rules,
            reclassified_at: None,
            last_moves: Vec::new(),
        }))
    }

    /// Deletes a family and its member segments; refused for the built-in one and while other
    /// segments read a member.
    pub fn delete_family(&self, id: &str, log: &mut dyn FnMut() -> Result<u64>) -> Result<()> {
        let mut w = self.lock_writer();
        let reg = self.registry();
        let fe = reg
            .family(id)
            .ok_or_else(|| Error::NotFound(format!("family `{id}` not found")))?
            .clone();
        if fe.family.builtin {
            return Err(Error::FailedPrecondition(format!(
                "family `{id}` is built in and cannot be deleted"
            )));
        }
        for &slot in &fe.slots {
            let readers: Vec<String> = reg
                .readers_of(slot)
                .into_iter()
                .filter(|r| !fe.family.members.iter().any(|m| &m.segment_id == r))
                .collect();
            if !readers.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "member `{}` of family `{id}` is read by `in segment` in: {}",
                    reg.get(slot).map(|e| e.def.id.as_str()).unwrap_or_default(),
                    readers.join(", ")
                )));
            }
        }
        let lsn = log()?;
        self.segments.store(Arc::new(reg.without_family(id)));
        self.sync_time_indexes(&self.registry());
        self.clear_segments(&fe.slots, &mut w.noted.changes);
        self.commit_events(lsn, self.now(), &mut w.noted, &reg);
        Ok(())
    }

    /// A family with its members' sizes.
    pub fn family_info(&self, id: &str) -> Result<FamilyInfo> {
        let reg = self.registry();
        let fe = reg
            .family(id)
            .ok_or_else(|| Error::NotFound(format!("family `{id}` not found")))?;
        Ok(FamilyInfo {
            family: fe.family.clone(),
            sizes: fe.slots.iter().map(|&s| self.segment_size(s)).collect(),
            reclassified_at: fe.reclassified_at,
            last_moves: fe
                .last_moves
                .iter()
                .filter_map(|&(from, to, n)| {
                    let id = |slot| reg.get(slot).map(|e| e.def.id.clone());
                    Some((from.and_then(id), id(to)?, n))
                })
                .collect(),
        })
    }

    /// Every family, by id.
    pub fn list_families(&self) -> Vec<FamilyInfo> {
        let reg = self.registry();
        let mut out: Vec<FamilyInfo> = reg
            .families()
            .iter()
            .filter_map(|f| self.family_info(&f.family.id).ok())
            .collect();
        out.sort_by(|a, b| a.family.id.cmp(&b.family.id));
        out
    }
}

impl Store {
    /// Evaluates the segments `slots` whole, in order, a family member through its whole family
    /// (once). Changes made by rules take `cause` when given. Called with the writer lock held.
    pub(crate) fn evaluate_slots(
        &self,
        reg: &Registry,
        slots: &[u32],
        schema: &Schema,
        now: Now,
        cause: Option<Cause>,
    ) -> Vec<Change> {
        let mut done: Vec<Arc<str>> = Vec::new();
        let mut changes = Vec::new();
        for &slot in slots {
            let Some(e) = reg.get(slot) else { continue };
            match &e.family {
                Some(f) => {
                    if done.contains(f) {
                        continue;
                    }
                    done.push(f.clone());
                    if let Some(fe) = reg.family(f) {
                        changes.extend(self.evaluate_family(fe, schema, now, cause.unwrap_or(Cause::Rule)));
                    }
                }
                None => {
                    changes.extend(self.evaluate_segment(e, None, schema, now).into_iter().map(
                        |c| match cause {
                            Some(cause) if c.cause == Cause::Rule => Change { cause, ..c },
                            _ => c,
                        },
                    ))
                }
            }
        }
        changes
    }
}

/// Refuses changing a family member's definition or lists directly.
pub fn refuse_member(entry: &SegmentEntry) -> Result<()> {
    match &entry.family {
        Some(f) => Err(Error::FailedPrecondition(format!(
            "segment `{}` is a member of family `{f}`: its membership follows the family's rules",
            entry.def.id
        ))),
        None => Ok(()),
    }
}
