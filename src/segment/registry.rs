//! The set of defined segments. Immutable once built: a change makes a new registry that replaces
//! the old one, so readers hold an `Arc<Registry>` without locks.

use std::sync::Arc;

use foldhash::{HashMap, HashSet};

use crate::columnar::schema::AttrId;
use crate::error::{Error, Result};
use crate::segment::compile::Compiled;
use crate::segment::family::Family;
use crate::segment::rule::Rule;

/// Longest segment id, in bytes.
pub const MAX_SEGMENT_ID: usize = 64;
/// Longest segment name, in bytes.
pub const MAX_SEGMENT_NAME: usize = 200;
/// Longest description, in bytes.
pub const MAX_DESCRIPTION: usize = 2000;
/// Most account ids in one include or exclude list.
pub const MAX_ACCOUNTS: usize = 10_000;
/// Most segments.
pub const MAX_SEGMENTS: usize = 100_000;

/// A segment as defined: everything but its customer lists, which live in the shards' bitmaps.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SegmentDef {
    pub id: String,
    pub name: String,
    pub description: String,
    pub rule: Option<Rule>,
    pub include_accounts: Vec<String>,
    pub exclude_accounts: Vec<String>,
    pub allow_activities: bool,
}

/// A defined segment, compiled.
#[derive(Debug, Clone)]
pub struct SegmentEntry {
    pub slot: u32,
    pub def: SegmentDef,
    pub compiled: Option<Compiled>,
    /// Attributes whose change can change membership (the rule's, and `account_id` with account lists).
    pub attrs: Vec<AttrId>,
    /// Slots of the segments read through `in segment`.
    pub segments: Vec<u32>,
    /// The family this segment is a member of.
    pub family: Option<Arc<str>>,
}

/// A defined family, compiled.
#[derive(Debug, Clone)]
pub struct FamilyEntry {
    pub family: Family,
    /// The members' segment slots, in order.
    pub slots: Vec<u32>,
    /// The members' own rules, compiled (`None` for the catch-all).
    pub rules: Vec<Option<Compiled>>,
    /// When the family was last reclassified (RFM), microseconds since the epoch.
    pub reclassified_at: Option<i64>,
    /// What the last reclassification moved: (member left, if any; member entered; customers),
    /// by slot. In memory only.
    pub last_moves: Vec<(Option<u32>, u32, u64)>,
}

/// Every defined segment, by id and by slot, with an evaluation order.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    by_id: HashMap<String, u32>,
    slots: Vec<Option<Arc<SegmentEntry>>>,
    /// Slots ordered so that every segment comes after the segments it reads.
    order: Vec<u32>,
    families: Vec<Arc<FamilyEntry>>,
}

impl Registry {
    pub fn slot(&self, id: &str) -> Option<u32> {
        self.by_id.get(id).copied()
    }

    pub fn get(&self, slot: u32) -> Option<&Arc<SegmentEntry>> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<SegmentEntry>> {
        self.slot(id).and_then(|s| self.get(s))
    }

    /// Every segment, dependencies first.
    pub fn in_order(&self) -> impl Iterator<Item = &Arc<SegmentEntry>> {
        self.order.iter().filter_map(|&s| self.get(s))
    }

    /// Every family, in definition order.
    pub fn families(&self) -> &[Arc<FamilyEntry>] {
        &self.families
    }

    pub fn family(&self, id: &str) -> Option<&Arc<FamilyEntry>> {
        self.families.iter().find(|f| f.family.id == id)
    }

    /// A registry with family `entry` added or replaced (its member segments are added apart).
    pub fn with_family(&self, entry: FamilyEntry) -> Registry {
        let mut next = self.clone();
        next.families.retain(|f| f.family.id != entry.family.id);
        next.families.push(Arc::new(entry));
        next
    }

    /// A registry without family `id` and its member segments.
    pub fn without_family(&self, id: &str) -> Registry {
        let mut next = self.clone();
        if let Some(f) = self.family(id) {
            for &slot in &f.slots {
                next = next.without(slot);
            }
        }
        next.families.retain(|f| f.family.id != id);
        next
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// A free slot for a new segment.
    pub fn free_slot(&self) -> Result<u32> {
        if self.len() >= MAX_SEGMENTS {
            return Err(Error::ResourceExhausted(format!(
                "at most {MAX_SEGMENTS} segments"
            )));
        }
        Ok(self
            .slots
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.slots.len()) as u32)
    }

    /// A registry with `entry` added or replaced; refuses a cycle of `in segment` references.
    pub fn with(&self, entry: SegmentEntry) -> Result<Registry> {
        let mut next = self.clone();
        let slot = entry.slot as usize;
        if next.slots.len() <= slot {
            next.slots.resize(slot + 1, None);
        }
        next.by_id.insert(entry.def.id.clone(), entry.slot);
        next.slots[slot] = Some(Arc::new(entry));
        next.order = next.topological_order()?;
        Ok(next)
    }

    /// A registry without segment `slot`.
    pub fn without(&self, slot: u32) -> Registry {
        let mut next = self.clone();
        if let Some(Some(e)) = next.slots.get(slot as usize) {
            next.by_id.remove(&e.def.id);
        }
        if let Some(s) = next.slots.get_mut(slot as usize) {
            *s = None;
        }
        next.order.retain(|&s| s != slot);
        next
    }

    /// Ids of the segments whose rules read `slot`.
    pub fn readers_of(&self, slot: u32) -> Vec<String> {
        self.in_order()
            .filter(|e| e.segments.contains(&slot))
            .map(|e| e.def.id.clone())
            .collect()
    }

    /// `slot` and every segment that reads it, directly or not, in evaluation order.
    pub fn dependents(&self, slot: u32) -> Vec<u32> {
        self.closure(|e| e.slot == slot)
    }

    /// The segments `seed` picks and every segment that reads one of them, directly or not,
    /// in evaluation order.
    pub fn closure(&self, seed: impl Fn(&SegmentEntry) -> bool) -> Vec<u32> {
        let mut hit: HashSet<u32> = HashSet::default();
        let mut out = Vec::new();
        for e in self.in_order() {
            if seed(e) || e.segments.iter().any(|s| hit.contains(s)) {
                hit.insert(e.slot);
                out.push(e.slot);
            }
        }
        out
    }

    fn topological_order(&self) -> Result<Vec<u32>> {
        // Depth-first, reporting the first cycle found by segment ids.
        #[derive(Clone, Copy, PartialEq)]
        enum Mark {
            New,
            Active,
            Done,
        }
        let mut mark = vec![Mark::New; self.slots.len()];
        let mut order = Vec::with_capacity(self.by_id.len());
        let mut slots: Vec<u32> = self.by_id.values().copied().collect();
        slots.sort_unstable();
        fn visit(
            reg: &Registry,
            slot: u32,
            mark: &mut [Mark],
            path: &mut Vec<u32>,
            order: &mut Vec<u32>,
        ) -> Result<()> {
            match mark[slot as usize] {
                Mark::Done => return Ok(()),
                Mark::Active => {
                    let start = path.iter().position(|&s| s == slot).unwrap_or(0);
                    let mut ids: Vec<String> = path[start..]
                        .iter()
                        .filter_map(|&s| reg.get(s).map(|e| e.def.id.clone()))
                        .collect();
                    ids.push(reg.get(slot).map(|e| e.def.id.clone()).unwrap_or_default());
                    return Err(Error::invalid(
                        "rule",
                        format!("`in segment` references form a cycle: {}", ids.join(" -> ")),
                    ));
                }
                Mark::New => {}
            }
            mark[slot as usize] = Mark::Active;
            path.push(slot);
            if let Some(e) = reg.get(slot) {
                for &dep in &e.segments {
                    visit(reg, dep, mark, path, order)?;
                }
            }
            path.pop();
            mark[slot as usize] = Mark::Done;
            order.push(slot);
            Ok(())
        }
        let mut path = Vec::new();
        for slot in slots {
            visit(self, slot, &mut mark, &mut path, &mut order)?;
        }
        Ok(order)
    }
}

/// Checks a segment id: 1 to 64 bytes of letters, digits, `_`, `-` and `.`.
pub fn check_segment_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::invalid("segment_id", "must not be empty"));
    }
    if id.len() > MAX_SEGMENT_ID {
        return Err(Error::invalid(
            "segment_id",
            format!("longer than {MAX_SEGMENT_ID} bytes"),
        ));
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err(Error::invalid(
            "segment_id",
            format!("`{id}` may hold only letters, digits, '_', '-' and '.'"),
        ));
    }
    Ok(())
}

impl SegmentDef {
    /// Checks the fields that do not depend on other segments or customers.
    pub fn check(&self) -> Result<()> {
        check_segment_id(&self.id)?;
        if self.name.trim().is_empty() {
            return Err(Error::invalid("name", "must not be empty"));
        }
        if self.name.len() > MAX_SEGMENT_NAME {
            return Err(Error::invalid(
                "name",
                format!("longer than {MAX_SEGMENT_NAME} bytes"),
            ));
        }
        if self.description.len() > MAX_DESCRIPTION {
            return Err(Error::invalid(
                "description",
                format!("longer than {MAX_DESCRIPTION} bytes"),
            ));
        }
        for (field, list) in [
            ("include_account_ids", &self.include_accounts),
            ("exclude_account_ids", &self.exclude_accounts),
        ] {
            if list.len() > MAX_ACCOUNTS {
                return Err(Error::invalid(
                    field,
                    format!("more than {MAX_ACCOUNTS} accounts"),
                ));
            }
            for (i, a) in list.iter().enumerate() {
                crate::columnar::value::check_keyword(a).map_err(|e| e.within(&format!("{field}[{i}]")))?;
            }
        }
        Ok(())
    }
}
