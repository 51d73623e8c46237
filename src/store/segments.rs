//! Segment operations on the store: define, evaluate, keep current on writes, answer membership.
//!
//! A definition change takes the store's writer lock (so no customer write interleaves), evaluates
//! the segment over every shard in parallel, installs each shard's result under that shard's write
//! lock, and only then publishes the new registry: a reader never sees a half-evaluated segment.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::RwLock;
use roaring::RoaringBitmap;

use crate::columnar::schema::{AttrId, Schema};
use crate::error::{Error, Result};
use crate::events::{Cause, Change, concat_changes};
use crate::segment::compile::{Compiled, Expr, compile};
use crate::segment::eval::{BoundExpr, Now, bind, eval_one, eval_shard, shard_part};
use crate::segment::registry::{Registry, SegmentDef, SegmentEntry};
use crate::segment::rule::{Pred, Rule};
use crate::store::input::CustomerKey;
use crate::store::{SHARD_BITS, Shard, Store, local, shard_of};

/// What a write changed about a customer, to pick the segments to re-evaluate.
#[derive(Debug, Clone, Copy)]
pub enum Changed<'a> {
    /// A new customer: every segment.
    All,
    /// These attributes.
    Attrs(&'a [AttrId]),
    /// The include/exclude lists of this segment.
    Lists(u32),
    /// The clock moved: the segments whose rules read it.
    Time,
}

/// Most customer ids returned in a segment's include or exclude list by `segment_info`.
pub const MAX_LISTED_IDS: usize = 10_000;

/// A segment with its size and lists, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentInfo {
    pub def: SegmentDef,
    pub size: u64,
    pub include_ids: Vec<String>,
    pub exclude_ids: Vec<String>,
    pub include_count: u64,
    pub exclude_count: u64,
    /// The family the segment is a member of.
    pub family: Option<String>,
}

/// Changes to a segment; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SegmentUpdate {
    pub name: Option<String>,
    pub description: Option<String>,
    /// `Some(None)` removes the rule (the segment becomes a container).
    pub rule: Option<Option<Rule>>,
    pub include_ids: Option<Vec<String>>,
    pub exclude_ids: Option<Vec<String>>,
    pub include_accounts: Option<Vec<String>>,
    pub exclude_accounts: Option<Vec<String>>,
    pub allow_activities: Option<bool>,
}

/// What an activity or a member load did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOutcome {
    /// Customers whose include/exclude state changed.
    pub changed: u64,
    /// Customers already in the asked-for state.
    pub unchanged: u64,
    /// Ids and e-mails that name no customer.
    pub unknown: Vec<String>,
}

/// Why a customer is, or is not, a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    ExcludedCustomer,
    ExcludedByActivity,
    ExcludedAccount,
    IncludedCustomer,
    IncludedByActivity,
    IncludedAccount,
    Rule,
    NoMatch,
}

/// One predicate of an explanation.
#[derive(Debug, Clone, PartialEq)]
pub struct PredicateResult {
    /// The predicate in the text form.
    pub predicate: String,
    pub attribute: String,
    /// The customer's value, in the text form; `None` when missing.
    pub value: Option<String>,
    pub held: bool,
}

/// An explanation of one customer's membership.
#[derive(Debug, Clone, PartialEq)]
pub struct Explanation {
    pub member: bool,
    pub decision: Decision,
    pub rule_matched: Option<bool>,
    pub predicates: Vec<PredicateResult>,
}

/// The customer's B2B account, for account include/exclude lists.
fn account_of(s: &Shard, ord: u32, schema: &Schema) -> Option<Arc<str>> {
    let def = schema.get("account_id")?;
    let code = s.column(def.id)?.keyword_code(ord)?;
    Some(def.dict.as_ref()?.value(code))
}

fn decide(e: &SegmentEntry, s: &Shard, ord: u32, schema: &Schema, now: Now) -> (Decision, Option<bool>) {
    let lists = s.segment(e.slot);
    let account = if e.def.include_accounts.is_empty() && e.def.exclude_accounts.is_empty() {
        None
    } else {
        account_of(s, ord, schema)
    };
    let in_list = |list: &[String]| account.as_deref().is_some_and(|a| list.iter().any(|x| x == a));
    let rule = || {
        e.compiled
            .as_ref()
            .map(|c| eval_one(&c.expr, s, ord, schema, now))
    };
    let by_activity = lists.is_some_and(|l| l.by_activity.contains(ord));
    if lists.is_some_and(|l| l.exclude.contains(ord)) {
        let d = if by_activity {
            Decision::ExcludedByActivity
        } else {
            Decision::ExcludedCustomer
        };
        return (d, rule());
    }
    if in_list(&e.def.exclude_accounts) {
        return (Decision::ExcludedAccount, rule());
    }
    if lists.is_some_and(|l| l.include.contains(ord)) {
        let d = if by_activity {
            Decision::IncludedByActivity
        } else {
            Decision::IncludedCustomer
        };
        return (d, rule());
    }
    if in_list(&e.def.include_accounts) {
        return (Decision::IncludedAccount, rule());
    }
    match rule() {
        Some(true) => (Decision::Rule, Some(true)),
        other => (Decision::NoMatch, other),
    }
}

fn is_member_decision(d: Decision) -> bool {
    matches!(
        d,
        Decision::IncludedCustomer
            | Decision::IncludedByActivity
            | Decision::IncludedAccount
            | Decision::Rule
    )
}

/// The cause of a membership change made by a customer's write, from what decided it.
fn cause_of(d: Decision) -> Cause {
    match d {
        Decision::ExcludedCustomer => Cause::Exclude,
        Decision::IncludedCustomer => Cause::Include,
        Decision::ExcludedByActivity | Decision::IncludedByActivity => Cause::Activity,
        Decision::ExcludedAccount | Decision::IncludedAccount => Cause::Account,
        Decision::Rule | Decision::NoMatch => Cause::Rule,
    }
}

/// Re-evaluates, for customer `ord` of shard `s`, every segment `changed` can affect (and the
/// segments reading those through `in segment`), in dependency order. Called under the shard's
/// write lock by every write. Notes each membership change in `noted`, with the cause that
/// decided it, or `direct` for the segment whose lists changed (`Changed::Lists`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn refresh_customer(
    reg: &Registry,
    schema: &Schema,
    s: &mut Shard,
    ord: u32,
    changed: Changed<'_>,
    now: Now,
    noted: &mut Vec<Change>,
    direct: Option<Cause>,
) {
    let mut moved: Vec<u32> = Vec::new();
    if reg.is_empty() {
        return;
    }
    let start = noted.len();
    for e in reg.in_order() {
        let affected = match changed {
            Changed::All => true,
            Changed::Attrs(attrs) => e.attrs.iter().any(|a| attrs.contains(a)),
            Changed::Lists(slot) => e.slot == slot,
            Changed::Time => e.compiled.as_ref().is_some_and(|c| c.time_dependent),
        } || e.segments.iter().any(|d| moved.contains(d));
        if !affected {
            continue;
        }
        let decision = decide(e, s, ord, schema, now).0;
        let member = is_member_decision(decision);
        let seg = s.segment_mut(e.slot);
        if seg.members.contains(ord) != member {
            if member {
                seg.members.insert(ord);
            } else {
                seg.members.remove(ord);
            }
            moved.push(e.slot);
            let cause = match (changed, direct) {
                (Changed::Lists(slot), Some(c)) if slot == e.slot => c,
                (Changed::Time, _) => Cause::Time,
                _ => cause_of(decision),
            };
            noted.push(Change::new(ord, e.slot, member, cause));
        }
    }
    if !reg.families().is_empty() && noted.len() - start >= 2 {
        pair_moves(reg, noted, start);
    }
}

/// Joins a customer's exit from one member of a family and entry into another (noted from
/// `start` on) into one move.
fn pair_moves(reg: &Registry, noted: &mut Vec<Change>, start: usize) {
    let family = |slot: u32| reg.get(slot).and_then(|e| e.family.clone());
    let mut k = start;
    while k < noted.len() {
        let c = noted[k];
        if c.entered
            && c.from_slot.is_none()
            && let Some(f) = family(c.slot)
            && let Some(j) = (start..noted.len()).find(|&j| {
                let x = noted[j];
                !x.entered && x.ord == c.ord && family(x.slot).as_deref() == Some(&*f)
            })
        {
            noted[k].from_slot = Some(noted[j].slot);
            noted.remove(j);
            if j < k {
                k -= 1;
            }
        }
        k += 1;
    }
}

/// Runs `f` on every shard, spread over `threads` threads (0: one per core).
pub(crate) fn for_each_shard(
    shards: &[Arc<RwLock<Shard>>],
    threads: usize,
    f: impl Fn(usize, &RwLock<Shard>) + Sync,
) {
    let threads = if threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        threads
    }
    .min(shards.len());
    if threads <= 1 {
        for (i, s) in shards.iter().enumerate() {
            f(i, s);
        }
        return;
    }
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(s) = shards.get(i) else { break };
                    f(i, s);
                }
            });
        }
    });
}

/// Customers of one shard whose `attr` value is one of `codes`.
fn keyword_bitmap(s: &Shard, attr: AttrId, codes: &[u32]) -> RoaringBitmap {
    s.column(attr).map(|c| c.with_codes(codes)).unwrap_or_default()
}

/// The members of one shard: `(rule ∪ include ∪ included accounts) \ (exclude ∪ excluded accounts)`.
fn shard_members(
    s: &Shard,
    base: u32,
    slot: u32,
    bound: Option<&BoundExpr>,
    accounts: &(AttrId, Vec<u32>, Vec<u32>),
) -> RoaringBitmap {
    let mut m = bound.map(|b| eval_shard(b, s, base)).unwrap_or_default();
    let (attr, incl, excl) = accounts;
    if let Some(lists) = s.segment(slot) {
        m |= &lists.include;
        m -= &lists.exclude;
    }
    if !incl.is_empty() {
        m |= keyword_bitmap(s, *attr, incl);
        if let Some(lists) = s.segment(slot) {
            m -= &lists.exclude;
        }
    }
    if !excl.is_empty() {
        m -= keyword_bitmap(s, *attr, excl);
    }
    m
}

/// The changes between a shard's `old` members of segment `slot` and its current ones, each with
/// the list, account or rule that made it.
fn membership_changes(
    s: &Shard,
    slot: u32,
    old: &RoaringBitmap,
    accounts: &(AttrId, Vec<u32>, Vec<u32>),
) -> Vec<Change> {
    let Some(seg) = s.segment(slot) else {
        return Vec::new();
    };
    if seg.members == *old {
        return Vec::new();
    }
    let (attr, incl, excl) = accounts;
    let in_accounts = |codes: &[u32]| (!codes.is_empty()).then(|| keyword_bitmap(s, *attr, codes));
    let (acc_in, acc_out) = (in_accounts(incl), in_accounts(excl));
    let mut out = Vec::new();
    for ord in &seg.members - old {
        let cause = if seg.include.contains(ord) {
            if seg.by_activity.contains(ord) {
                Cause::Activity
            } else {
                Cause::Include
            }
        } else if acc_in.as_ref().is_some_and(|b| b.contains(ord)) {
            Cause::Account
        } else {
            Cause::Rule
        };
        out.push((ord, true, cause));
    }
    for ord in old - &seg.members {
        let cause = if seg.exclude.contains(ord) {
            if seg.by_activity.contains(ord) {
                Cause::Activity
            } else {
                Cause::Exclude
            }
        } else if acc_out.as_ref().is_some_and(|b| b.contains(ord)) {
            Cause::Account
        } else {
            Cause::Rule
        };
        out.push((ord, false, cause));
    }
    out.sort_unstable_by_key(|c| c.0);
    out.into_iter()
        .map(|(ord, entered, cause)| Change::new(ord, slot, entered, cause))
        .collect()
}

impl Store {
    /// Evaluates `entry` over every shard and installs the members (and, when given, new
    /// include/exclude lists). Called with the writer lock held. Returns the membership changes,
    /// in ordinal order.
    pub(crate) fn evaluate_segment(
        &self,
        entry: &SegmentEntry,
        lists: Option<(&RoaringBitmap, &RoaringBitmap)>,
        schema: &Schema,
        now: Now,
    ) -> Vec<Change> {
        let started = std::time::Instant::now();
        let shards = self.shards.snapshot();
        let bound = entry.compiled.as_ref().map(|c| bind(&c.expr, schema, now));
        let accounts = account_codes(entry, schema);
        let found = parking_lot::Mutex::new(Vec::new());
        for_each_shard(&shards, self.eval_threads.load(Ordering::Relaxed), |i, shard| {
            let base = (i as u32) << SHARD_BITS;
            self.copy_before_write(i);
            let mut s = shard.write();
            if let Some((include, exclude)) = lists {
                let seg = s.segment_mut(entry.slot);
                seg.include = shard_part(include, base);
                seg.exclude = shard_part(exclude, base);
                seg.by_activity &= &(&seg.include | &seg.exclude);
            }
            let members = shard_members(&s, base, entry.slot, bound.as_ref(), &accounts);
            let old = std::mem::replace(&mut s.segment_mut(entry.slot).members, members);
            let changes = membership_changes(&s, entry.slot, &old, &accounts);
            if !changes.is_empty() {
                found.lock().push((i, changes));
            }
        });
        let mut found = found.into_inner();
        found.sort_unstable_by_key(|f| f.0);
        self.eval_seconds.observe(started.elapsed().as_secs_f64());
        concat_changes(found)
    }

    pub(crate) fn compile_entry(
        &self,
        reg: &Registry,
        schema: &Schema,
        slot: u32,
        def: SegmentDef,
    ) -> Result<SegmentEntry> {
        def.check()?;
        let compiled: Option<Compiled> = match &def.rule {
            Some(rule) => Some(compile(rule, schema, &|id| reg.slot(id))?),
            None => None,
        };
        let mut attrs = compiled.as_ref().map(|c| c.attrs.clone()).unwrap_or_default();
        if !def.include_accounts.is_empty() || !def.exclude_accounts.is_empty() {
            let account = schema
                .get("account_id")
                .ok_or_else(|| Error::Internal("built-in attribute `account_id` is missing".into()))?;
            attrs.push(account.id);
            attrs.sort_unstable();
            attrs.dedup();
        }
        let segments = compiled.as_ref().map(|c| c.segments.clone()).unwrap_or_default();
        Ok(SegmentEntry {
            slot,
            def,
            compiled,
            attrs,
            segments,
            family: None,
        })
    }

    /// Ordinals of customer ids, refusing unknown ones by index.
    fn resolve_list(&self, field: &str, ids: &[String]) -> Result<RoaringBitmap> {
        let mut out = RoaringBitmap::new();
        for (i, id) in ids.iter().enumerate() {
            crate::store::input::check_customer_id(id).map_err(|e| e.within(&format!("{field}[{i}]")))?;
            let ord = self
                .ordinal_of_id(id)
                .ok_or_else(|| Error::invalid(format!("{field}[{i}]"), format!("unknown customer `{id}`")))?;
            out.insert(ord);
        }
        Ok(out)
    }

    /// Defines a segment and evaluates it over every customer before returning.
    pub fn create_segment(
        &self,
        def: SegmentDef,
        include: &[String],
        exclude: &[String],
        log: &mut dyn FnMut() -> Result<u64>,
    ) -> Result<SegmentInfo> {
        let _w = self.lock_writer();
        let schema = self.schema();
        let reg = self.registry();
        if reg.slot(&def.id).is_some() {
            return Err(Error::AlreadyExists(format!(
                "segment `{}` already exists",
                def.id
            )));
        }
        let slot = reg.free_slot()?;
        let entry = self.compile_entry(&reg, &schema, slot, def)?;
        let include = self.resolve_list("include_customer_ids", include)?;
        let exclude = self.resolve_list("exclude_customer_ids", exclude)?;
        let next = reg.with(entry.clone())?;
        let lsn = log()?;
        let now = self.now();
        let mut w = _w;
        w.noted.changes = self.evaluate_segment(&entry, Some((&include, &exclude)), &schema, now);
        self.segments.store(Arc::new(next));
        self.sync_time_indexes(&self.registry());
        self.commit_events(lsn, now, &mut w.noted, &self.registry());
        drop(w);
        self.segment_info(&entry.def.id, MAX_LISTED_IDS)
    }

    /// Changes a segment; re-evaluates it, and every segment reading it, before returning.
    pub fn update_segment(
        &self,
        id: &str,
        update: SegmentUpdate,
        log: &mut dyn FnMut() -> Result<u64>,
    ) -> Result<SegmentInfo> {
        let _w = self.lock_writer();
        let schema = self.schema();
        let reg = self.registry();
        let old = reg
            .by_id(id)
            .ok_or_else(|| Error::NotFound(format!("segment `{id}` not found")))?
            .clone();
        crate::store::family::refuse_member(&old)?;
        let SegmentUpdate {
            name,
            description,
            rule,
            include_ids,
            exclude_ids,
            include_accounts,
            exclude_accounts,
            allow_activities,
        } = update;
        let mut def = old.def.clone();
        def.name = name.unwrap_or(def.name);
        def.description = description.unwrap_or(def.description);
        def.rule = rule.unwrap_or(def.rule);
        def.include_accounts = include_accounts.unwrap_or(def.include_accounts);
        def.exclude_accounts = exclude_accounts.unwrap_or(def.exclude_accounts);
        def.allow_activities = allow_activities.unwrap_or(def.allow_activities);
        let entry = self.compile_entry(&reg, &schema, old.slot, def)?;
        let lists = match (include_ids, exclude_ids) {
            (None, None) => None,
            (inc, exc) => {
                let current = |pick: fn(&crate::segment::SegShard) -> &RoaringBitmap| {
                    let mut all = RoaringBitmap::new();
                    for s in self.shards.snapshot().iter() {
                        if let Some(seg) = s.read().segment(old.slot) {
                            all |= pick(seg);
                        }
                    }
                    all
                };
                let include = match inc {
                    Some(ids) => self.resolve_list("include_customer_ids", &ids)?,
                    None => current(|s| &s.include),
                };
                let exclude = match exc {
                    Some(ids) => self.resolve_list("exclude_customer_ids", &ids)?,
                    None => current(|s| &s.exclude),
                };
                Some((include, exclude))
            }
        };
        let next = reg.with(entry.clone())?;
        let lsn = log()?;
        let now = self.now();
        let lists_ref = lists.as_ref().map(|(i, e)| (i, e));
        let mut w = _w;
        let mut changes = self.evaluate_segment(&entry, lists_ref, &schema, now);
        // Segments reading this one change with it.
        let dependents: Vec<u32> = next
            .dependents(entry.slot)
            .into_iter()
            .filter(|&s| s != entry.slot)
            .collect();
        changes.extend(self.evaluate_slots(&next, &dependents, &schema, now, None));
        self.segments.store(Arc::new(next));
        self.sync_time_indexes(&self.registry());
        w.noted.changes = changes;
        self.commit_events(lsn, now, &mut w.noted, &self.registry());
        drop(w);
        self.segment_info(id, MAX_LISTED_IDS)
    }

    /// Deletes a segment; refused while other segments read it.
    pub fn delete_segment(&self, id: &str, log: &mut dyn FnMut() -> Result<u64>) -> Result<()> {
        let _w = self.lock_writer();
        let reg = self.registry();
        let slot = reg
            .slot(id)
            .ok_or_else(|| Error::NotFound(format!("segment `{id}` not found")))?;
        if let Some(e) = reg.get(slot) {
            crate::store::family::refuse_member(e)?;
        }
        let readers = reg.readers_of(slot);
        if !readers.is_empty() {
            return Err(Error::FailedPrecondition(format!(
                "segment `{id}` is read by `in segment` in: {}",
                readers.join(", ")
            )));
        }
        let lsn = log()?;
        self.segments.store(Arc::new(reg.without(slot)));
        self.sync_time_indexes(&self.registry());
        let mut w = _w;
        self.clear_segments(&[slot], &mut w.noted.changes);
        // Named by the registry the segment was still in.
        self.commit_events(lsn, self.now(), &mut w.noted, &reg);
        Ok(())
    }

    /// Empties deleted segments' state in every shard, noting each member's exit. Called with the
    /// writer lock held.
    pub(crate) fn clear_segments(&self, slots: &[u32], noted: &mut Vec<Change>) {
        for i in 0..self.shards.len() {
            let mut s = self.write_shard(i);
            for &slot in slots {
                if let Some(seg) = s.segments.get_mut(slot as usize) {
                    let members = std::mem::take(seg).members;
                    noted.extend(
                        members
                            .iter()
                            .map(|ord| Change::new(ord, slot, false, Cause::Deletion)),
                    );
                }
            }
        }
    }

    /// Members of segment `slot` in every shard, counted.
    pub fn segment_size(&self, slot: u32) -> u64 {
        self.shards
            .snapshot()
            .iter()
            .map(|s| s.read().segment(slot).map_or(0, |seg| seg.members.len()))
            .sum()
    }

    fn ids_of(
        &self,
        slot: u32,
        pick: fn(&crate::segment::SegShard) -> &RoaringBitmap,
        max: usize,
    ) -> (Vec<String>, u64) {
        let mut ids = Vec::new();
        let mut count = 0;
        for shard in self.shards.snapshot().iter() {
            let s = shard.read();
            let Some(seg) = s.segment(slot) else { continue };
            let bm = pick(seg);
            count += bm.len();
            for ord in bm.iter().take(max.saturating_sub(ids.len())) {
                if let Some(id) = s.ids.get(local(ord)) {
                    ids.push(id.to_string());
                }
            }
        }
        (ids, count)
    }

    /// A segment with its size and (at most `max_ids` of) its listed customers.
    pub fn segment_info(&self, id: &str, max_ids: usize) -> Result<SegmentInfo> {
        let reg = self.registry();
        let e = reg
            .by_id(id)
            .ok_or_else(|| Error::NotFound(format!("segment `{id}` not found")))?;
        let (include_ids, include_count) = self.ids_of(e.slot, |s| &s.include, max_ids);
        let (exclude_ids, exclude_count) = self.ids_of(e.slot, |s| &s.exclude, max_ids);
        Ok(SegmentInfo {
            def: e.def.clone(),
            size: self.segment_size(e.slot),
            include_ids,
            exclude_ids,
            include_count,
            exclude_count,
            family: e.family.as_deref().map(str::to_string),
        })
    }

    /// Every segment with its size, by id.
    pub fn list_segments(&self) -> Vec<(SegmentDef, u64)> {
        let reg = self.registry();
        let mut out: Vec<_> = reg
            .in_order()
            .map(|e| (e.def.clone(), self.segment_size(e.slot)))
            .collect();
        out.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        out
    }

    fn slot_of(reg: &Registry, id: &str) -> Result<u32> {
        reg.slot(id)
            .ok_or_else(|| Error::NotFound(format!("segment `{id}` not found")))
    }

    /// Whether customer `customer_id` is in segment `segment_id`; `None` for an unknown customer.
    pub fn is_member(&self, customer_id: &str, segment_id: &str) -> Result<Option<bool>> {
        let reg = self.segments.load();
        let slot = Self::slot_of(&reg, segment_id)?;
        Ok(self.with_customer(customer_id, |s, ord| {
            s.segment(slot).is_some_and(|seg| seg.members.contains(ord))
        }))
    }

    /// Memberships of one customer in several segments, in the order asked.
    pub fn check_memberships(&self, customer_id: &str, segment_ids: &[String]) -> Result<Option<Vec<bool>>> {
        let reg = self.segments.load();
        let slots = segment_ids
            .iter()
            .map(|id| Self::slot_of(&reg, id))
            .collect::<Result<Vec<_>>>()?;
        Ok(self.with_customer(customer_id, |s, ord| {
            slots
                .iter()
                .map(|&slot| s.segment(slot).is_some_and(|seg| seg.members.contains(ord)))
                .collect()
        }))
    }

    /// Every customer against every segment: the answers customer by customer, and which
    /// customers are known.
    pub fn batch_check(
        &self,
        customer_ids: &[String],
        segment_ids: &[String],
    ) -> Result<(Vec<bool>, Vec<bool>)> {
        let reg = self.segments.load();
        let slots = segment_ids
            .iter()
            .map(|id| Self::slot_of(&reg, id))
            .collect::<Result<Vec<_>>>()?;
        let mut member = Vec::with_capacity(customer_ids.len() * slots.len());
        let mut known = Vec::with_capacity(customer_ids.len());
        for id in customer_ids {
            let found = self.with_customer(id, |s, ord| {
                member.extend(
                    slots
                        .iter()
                        .map(|&slot| s.segment(slot).is_some_and(|seg| seg.members.contains(ord))),
                );
            });
            if found.is_none() {
                member.extend(std::iter::repeat_n(false, slots.len()));
            }
            known.push(found.is_some());
        }
        Ok((member, known))
    }

    /// Ids of every segment the customer is in, sorted; `None` for an unknown customer.
    pub fn customer_segments(&self, customer_id: &str) -> Option<Vec<String>> {
        let reg = self.segments.load();
        let mut ids = self.with_customer(customer_id, |s, ord| {
            s.segments
                .iter()
                .enumerate()
                .filter(|(_, seg)| seg.members.contains(ord))
                .filter_map(|(slot, _)| reg.get(slot as u32).map(|e| e.def.id.clone()))
                .collect::<Vec<_>>()
        })?;
        ids.sort_unstable();
        Some(ids)
    }

    /// Puts customers on a segment's include list (`add`) or exclude list (`!add`), taking them
    /// off the other: for the marketing activity `activity` (refused by segments that do not
    /// allow activities), or a member load.
    pub fn set_listed(
        &self,
        segment_id: &str,
        keys: &[CustomerKey],
        add: bool,
        activity: Option<&str>,
        log: &mut dyn FnMut() -> Result<u64>,
    ) -> Result<ListOutcome> {
        let mut w = self.lock_writer();
        let reg = self.registry();
        let e = reg
            .by_id(segment_id)
            .ok_or_else(|| Error::NotFound(format!("segment `{segment_id}` not found")))?;
        crate::store::family::refuse_member(e)?;
        if activity.is_some() && !e.def.allow_activities {
            return Err(Error::FailedPrecondition(format!(
                "segment `{segment_id}` does not allow activities (allow_activities is false)"
            )));
        }
        let lsn = log()?;
        let schema = self.schema();
        let now = self.now();
        let mut out = ListOutcome::default();
        let cause = if activity.is_some() {
            Cause::Activity
        } else {
            Cause::MemberLoad
        };
        w.noted.activity = activity.map(Arc::from);
        for key in keys {
            let Some(ord) = self.resolve(key) else {
                out.unknown.push(match key {
                    CustomerKey::Id(s) | CustomerKey::Email(s) => s.clone(),
                });
                continue;
            };
            let mut s = self.write_shard(shard_of(ord));
            let seg = s.segment_mut(e.slot);
            let changed = if add {
                seg.include.insert(ord) | seg.exclude.remove(ord)
            } else {
                seg.exclude.insert(ord) | seg.include.remove(ord)
            };
            if activity.is_some() {
                seg.by_activity.insert(ord);
            } else {
                seg.by_activity.remove(ord);
            }
            if changed {
                out.changed += 1;
                let lists = Changed::Lists(e.slot);
                refresh_customer(
                    &reg,
                    &schema,
                    &mut s,
                    ord,
                    lists,
                    now,
                    &mut w.noted.changes,
                    Some(cause),
                );
            } else {
                out.unchanged += 1;
            }
        }
        self.commit_events(lsn, now, &mut w.noted, &reg);
        Ok(out)
    }

    /// Evaluates a rule without saving it: the number of matching customers and up to
    /// `sample` of their ids. `as_of` sets "now" for relative-time predicates.
    pub fn preview(&self, rule: &Rule, as_of: Option<i64>, sample: usize) -> Result<(u64, Vec<String>)> {
        let schema = self.schema();
        let reg = self.registry();
        let compiled = compile(rule, &schema, &|id| reg.slot(id))?;
        let now = as_of.map_or_else(|| self.now(), Now::at);
        let bound = bind(&compiled.expr, &schema, now);
        let shards = self.shards.snapshot();
        let counts: Vec<parking_lot::Mutex<(u64, Vec<String>)>> =
            (0..shards.len()).map(|_| Default::default()).collect();
        for_each_shard(&shards, self.eval_threads.load(Ordering::Relaxed), |i, shard| {
            let s = shard.read();
            let bits = eval_shard(&bound, &*s, (i as u32) << SHARD_BITS);
            let ids = bits
                .iter()
                .take(sample)
                .filter_map(|o| s.ids.get(local(o)).map(str::to_string))
                .collect();
            *counts[i].lock() = (bits.len(), ids);
        });
        let mut total = 0;
        let mut ids = Vec::new();
        for c in counts {
            let (n, mut some) = c.into_inner();
            total += n;
            some.truncate(sample.saturating_sub(ids.len()));
            ids.append(&mut some);
        }
        Ok((total, ids))
    }

    /// Why customer `customer_id` is or is not in segment `segment_id`.
    pub fn explain(&self, customer_id: &str, segment_id: &str) -> Result<Explanation> {
        let reg = self.registry();
        let schema = self.schema();
        let now = self.now();
        let e = reg
            .by_id(segment_id)
            .ok_or_else(|| Error::NotFound(format!("segment `{segment_id}` not found")))?;
        self.with_customer(customer_id, |s, ord| {
            let (decision, rule_matched) = decide(e, s, ord, &schema, now);
            let mut predicates = Vec::new();
            if let (Some(rule), Some(c)) = (&e.def.rule, &e.compiled) {
                explain_walk(rule, &c.expr, s, ord, &schema, now, &mut predicates);
            }
            Explanation {
                member: s.segment(e.slot).is_some_and(|seg| seg.members.contains(ord)),
                decision,
                rule_matched,
                predicates,
            }
        })
        .ok_or_else(|| Error::NotFound(format!("customer `{customer_id}` not found")))
    }

    /// Pairwise intersection sizes of segments, as `(i, j, count)` for `i <= j`.
    pub fn overlap(&self, segment_ids: &[String]) -> Result<Vec<(usize, usize, u64)>> {
        let reg = self.segments.load();
        let slots = segment_ids
            .iter()
            .map(|id| Self::slot_of(&reg, id))
            .collect::<Result<Vec<_>>>()?;
        drop(reg);
        let n = slots.len();
        let mut counts = vec![0u64; n * n];
        for shard in self.shards.snapshot().iter() {
            let s = shard.read();
            for i in 0..n {
                let Some(a) = s.segment(slots[i]) else { continue };
                for j in i..n {
                    if let Some(b) = s.segment(slots[j]) {
                        counts[i * n + j] += a.members.intersection_len(&b.members);
                    }
                }
            }
        }
        Ok((0..n)
            .flat_map(|i| (i..n).map(move |j| (i, j)))
            .map(|(i, j)| (i, j, counts[i * n + j]))
            .collect())
    }

    /// Members of a segment from ordinal `from` on, at most `limit` of them, with their e-mail and
    /// the attributes `fields`, and the ordinal to continue from (`None` at the end). Export pages
    /// through a segment with this, one shard read lock at a time, in constant memory.
    pub fn export_page(
        &self,
        segment_id: &str,
        from: u32,
        limit: usize,
        fields: &[AttrId],
    ) -> Result<(Vec<crate::store::CustomerRecord>, Option<u32>)> {
        let slot = Self::slot_of(&self.segments.load(), segment_id)?;
        let schema = self.schema();
        let shards = self.shards.snapshot();
        let mut out = Vec::with_capacity(limit.min(4096));
        let mut shard_index = shard_of(from);
        let mut from = from;
        while shard_index < shards.len() {
            let s = shards[shard_index].read();
            if let Some(seg) = s.segment(slot) {
                for ord in seg.members.range(from..) {
                    if out.len() == limit {
                        return Ok((out, Some(ord)));
                    }
                    let i = local(ord);
                    out.push(crate::store::CustomerRecord {
                        customer_id: s.ids.get(i).unwrap_or_default().to_string(),
                        email: s.emails.get(i).map(str::to_string),
                        attrs: fields
                            .iter()
                            .filter_map(|&a| {
                                let def = schema.attr(a);
                                let v = s.column(a)?.get(ord, def.ty, def.dict.as_deref())?;
                                Some((def.name.clone(), v))
                            })
                            .collect(),
                    });
                }
            }
            shard_index += 1;
            from = (shard_index as u32) << SHARD_BITS;
        }
        Ok((out, None))
    }
}

fn account_codes(entry: &SegmentEntry, schema: &Schema) -> (AttrId, Vec<u32>, Vec<u32>) {
    let Some(def) = schema.get("account_id") else {
        return (0, Vec::new(), Vec::new());
    };
    let dict = def.dict.as_deref();
    let codes =
        |list: &[String]| -> Vec<u32> { list.iter().filter_map(|a| dict.and_then(|d| d.code(a))).collect() };
    (
        def.id,
        codes(&entry.def.include_accounts),
        codes(&entry.def.exclude_accounts),
    )
}

fn explain_walk(
    rule: &Rule,
    expr: &Expr,
    s: &Shard,
    ord: u32,
    schema: &Schema,
    now: Now,
    out: &mut Vec<PredicateResult>,
) {
    match (rule, expr) {
        (Rule::And(rs), Expr::And(es)) | (Rule::Or(rs), Expr::Or(es)) => {
            for (r, e) in rs.iter().zip(es) {
                explain_walk(r, e, s, ord, schema, now, out);
            }
        }
        (Rule::Not(r), Expr::Not(e)) => explain_walk(r, e, s, ord, schema, now, out),
        (Rule::Pred(p), e) => out.push(PredicateResult {
            predicate: crate::segment::text::print(rule),
            attribute: p.attr.clone(),
            value: value_text(p, s, ord, schema),
            held: eval_one(e, s, ord, schema, now),
        }),
        _ => {}
    }
}

/// The customer's value read by predicate `p`, in the text form.
fn value_text(p: &Pred, s: &Shard, ord: u32, schema: &Schema) -> Option<String> {
    use crate::columnar::value::Value;
    use crate::segment::rule::Literal;
    use crate::segment::text::literal_text;
    let (name, derived) = match p.attr.as_str() {
        "age" | "birthday" => ("birth_date", true),
        "days_since_last_order" => ("last_order_at", true),
        "" => return None,
        other => (other, false),
    };
    let def = schema.get(name)?;
    let v = s.column(def.id)?.get(ord, def.ty, def.dict.as_deref())?;
    let text = match v {
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => literal_text(&Literal::Float(f)),
        Value::Money(m) => format!("{}.{:02}", m.div_euclid(100), m.rem_euclid(100)),
        Value::Date(d) => literal_text(&Literal::Date(d)),
        Value::Timestamp(t) => literal_text(&Literal::Timestamp(t)),
        Value::Keyword(k) | Value::Text(k) => literal_text(&Literal::Str(k)),
        Value::Keywords(ks) => format!(
            "({})",
            ks.iter()
                .map(|k| literal_text(&Literal::Str(k.clone())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Some(if derived {
        format!("{} = {text}", name)
    } else {
        text
    })
}
