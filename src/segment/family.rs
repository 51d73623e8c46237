//! Families: an ordered list of member segments with rules that partition the customers. Each
//! customer belongs to exactly one member: the first whose rule matches, else the catch-all.
//!
//! Each member is an ordinary segment (usable by `IsMember`, `in segment`, exports, events) whose
//! rule is derived: member k holds `rule_k and not (rule_1 or ... or rule_k-1)`, the catch-all
//! `not (rule_1 or ... or rule_n)`. Members have no lists and take no activities, so the partition
//! holds. A whole family is evaluated in one pass (each rule once, first match wins), and a customer
//! moving between two members is one event naming both.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use roaring::RoaringBitmap;

use crate::columnar::schema::Schema;
use crate::error::{Error, Result};
use crate::events::{Cause, Change, concat_changes};
use crate::segment::compile::compile;
use crate::segment::eval::{BoundExpr, Now, bind, eval_shard};
use crate::segment::ops::for_each_shard;
use crate::segment::registry::{
    FamilyEntry, MAX_SEGMENT_NAME, Registry, SegmentDef, SegmentEntry, check_segment_id,
};
use crate::segment::rule::Rule;
use crate::store::{SHARD_BITS, SHARD_SIZE, Store, local};

/// Most members in a family, catch-all included.
pub const MAX_FAMILY_MEMBERS: usize = 50;

/// One member of a family.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyMember {
    pub segment_id: String,
    pub name: String,
    /// The member's own rule; `None` for the catch-all (the last member).
    pub rule: Option<Rule>,
}

/// A family as defined.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Family {
    pub id: String,
    pub name: String,
    pub description: String,
    /// In order; the last is the catch-all.
    pub members: Vec<FamilyMember>,
    /// Built in (RFM): defined by the server, refused to callers' changes.
    pub builtin: bool,
}

impl Family {
    /// Checks ids, names and the shape: at least one ruled member, then the catch-all.
    pub fn check(&self) -> Result<()> {
        check_segment_id(&self.id).map_err(|e| e.within_field("family_id"))?;
        if self.name.trim().is_empty() || self.name.len() > MAX_SEGMENT_NAME {
            return Err(Error::invalid(
                "name",
                format!("must be 1 to {MAX_SEGMENT_NAME} bytes"),
            ));
        }
        if self.members.len() < 2 || self.members.len() > MAX_FAMILY_MEMBERS {
            return Err(Error::invalid(
                "members",
                format!(
                    "a family has 1 to {} members with rules, then a catch-all",
                    MAX_FAMILY_MEMBERS - 1
                ),
            ));
        }
        let last = self.members.len() - 1;
        for (i, m) in self.members.iter().enumerate() {
            let field = if i == last {
                "catch_all".to_string()
            } else {
                format!("members[{i}]")
            };
            check_segment_id(&m.segment_id).map_err(|e| e.within(&field))?;
            if m.name.trim().is_empty() || m.name.len() > MAX_SEGMENT_NAME {
                return Err(Error::invalid(
                    format!("{field}.name"),
                    format!("must be 1 to {MAX_SEGMENT_NAME} bytes"),
                ));
            }
            if i != last && m.rule.is_none() {
                return Err(Error::invalid(format!("{field}.rule"), "is required"));
            }
            if let Some(first) = self.members[..i]
                .iter()
                .position(|o| o.segment_id == m.segment_id)
            {
                return Err(Error::invalid(
                    format!("{field}.segment_id"),
                    format!("`{}` is also members[{first}]", m.segment_id),
                ));
            }
        }
        Ok(())
    }

    /// Index of the catch-all member.
    pub fn catch_all(&self) -> usize {
        self.members.len() - 1
    }

    /// The rule member `k` holds as a segment: its own, minus every earlier member's.
    pub fn derived_rule(&self, k: usize) -> Rule {
        let earlier: Vec<Rule> = self.members[..k.min(self.catch_all())]
            .iter()
            .filter_map(|m| m.rule.clone())
            .collect();
        let none_earlier = || Rule::Not(Box::new(Rule::Or(earlier.clone())));
        match (&self.members[k].rule, earlier.is_empty()) {
            (Some(rule), true) => rule.clone(),
            (Some(rule), false) => Rule::And(vec![rule.clone(), none_earlier()]),
            (None, _) => none_earlier(),
        }
    }

    /// The segment definition of member `k`.
    pub fn member_def(&self, k: usize) -> SegmentDef {
        let m = &self.members[k];
        SegmentDef {
            id: m.segment_id.clone(),
            name: m.name.clone(),
            description: format!("Member {} of family `{}` ({})", k + 1, self.id, self.name),
            rule: Some(self.derived_rule(k)),
            ..SegmentDef::default()
        }
    }
}

/// The built-in RFM family: id `rfm`, members by score ranges, first match wins.
pub const RFM_FAMILY: &str = "rfm";

/// (segment id, name, rule over the scores) of the RFM members, in order.
pub const RFM_MEMBERS: &[(&str, &str, &str)] = &[
    (
        "rfm.champions",
        "Champions",
        "rfm_r >= 4 and rfm_f >= 4 and rfm_m >= 4",
    ),
    ("rfm.loyal", "Loyal", "rfm_r >= 3 and rfm_f >= 4"),
    (
        "rfm.potential-loyalist",
        "Potential loyalist",
        "rfm_r >= 4 and rfm_f between 2 and 3",
    ),
    ("rfm.new", "New", "rfm_r = 5 and rfm_f = 1"),
    ("rfm.promising", "Promising", "rfm_r = 4 and rfm_f = 1"),
    (
        "rfm.needs-attention",
        "Needs attention",
        "rfm_r = 3 and rfm_f between 2 and 3",
    ),
    ("rfm.about-to-sleep", "About to sleep", "rfm_r = 3 and rfm_f = 1"),
    (
        "rfm.cannot-lose-them",
        "Cannot lose them",
        "rfm_r <= 2 and rfm_f >= 4 and rfm_m >= 4",
    ),
    ("rfm.at-risk", "At risk", "rfm_r <= 2 and rfm_f >= 3"),
    ("rfm.hibernating", "Hibernating", "rfm_r = 2 and rfm_f <= 2"),
    ("rfm.lost", "Lost", "rfm_r = 1 and rfm_f <= 2"),
];

/// The catch-all of the RFM family: customers without orders (no scores).
pub const RFM_UNSCORED: (&str, &str) = ("rfm.unscored", "No orders yet");

/// The RFM family's definition.
pub fn rfm_family() -> Family {
    let mut members: Vec<FamilyMember> = RFM_MEMBERS
        .iter()
        .map(|(id, name, rule)| FamilyMember {
            segment_id: (*id).into(),
            name: (*name).into(),
            rule: Some(crate::segment::text::parse(rule).expect("built-in RFM rules parse")),
        })
        .collect();
    members.push(FamilyMember {
        segment_id: RFM_UNSCORED.0.into(),
        name: RFM_UNSCORED.1.into(),
        rule: None,
    });
    Family {
        id: RFM_FAMILY.into(),
        name: "RFM".into(),
        description: "Recency, frequency and monetary value in quintiles (Segments.Reclassify)".into(),
        members,
        builtin: true,
    }
}

// ---------------------------------------------------------------------------------------------
// On the store

/// A family with its members' sizes, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct FamilyInfo {
    pub family: Family,
    pub sizes: Vec<u64>,
    pub reclassified_at: Option<i64>,
}

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
                        let mut r = eval_shard(b, &s, base);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfm_members_cover_every_score_once_in_order() {
        // First match over every (R, F, M): every scored customer lands in a named member.
        let f = rfm_family();
        f.check().unwrap();
        let matches = |rule: &str, r: i64, fr: i64, m: i64| -> bool {
            // The rules only use =, <=, >=, between on the three scores: check them textually.
            rule.replace(" and rfm_", "|rfm_").split('|').all(|p| {
                let words: Vec<&str> = p.split_whitespace().collect();
                let v = match words[0] {
                    "rfm_r" => r,
                    "rfm_f" => fr,
                    _ => m,
                };
                match words[1] {
                    "=" => v == words[2].parse::<i64>().unwrap(),
                    "<=" => v <= words[2].parse::<i64>().unwrap(),
                    ">=" => v >= words[2].parse::<i64>().unwrap(),
                    "between" => {
                        v >= words[2].parse::<i64>().unwrap() && v <= words[4].parse::<i64>().unwrap()
                    }
                    other => panic!("operator {other}"),
                }
            })
        };
        for r in 1..=5 {
            for fr in 1..=5 {
                for m in 1..=5 {
                    assert!(
                        RFM_MEMBERS.iter().any(|(_, _, rule)| matches(rule, r, fr, m)),
                        "R{r} F{fr} M{m} matches no member"
                    );
                }
            }
        }
    }

    #[test]
    fn derived_rules_exclude_earlier_members() {
        let f = rfm_family();
        assert_eq!(f.derived_rule(0), f.members[0].rule.clone().unwrap());
        let Rule::And(parts) = f.derived_rule(2) else {
            panic!("member 3 is its rule and not the earlier ones")
        };
        assert_eq!(parts.len(), 2);
        let Rule::Not(earlier) = f.derived_rule(f.catch_all()) else {
            panic!("the catch-all is none of the others")
        };
        assert!(matches!(*earlier, Rule::Or(ref v) if v.len() == RFM_MEMBERS.len()));
        let mut bad = f.clone();
        bad.members[3].segment_id = "rfm.champions".into();
        assert!(
            bad.check()
                .unwrap_err()
                .to_string()
                .contains("members[3].segment_id")
        );
    }
}
