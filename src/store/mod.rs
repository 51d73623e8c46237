//! The customer store: dense ordinals, sharded typed columns, id and e-mail maps.
//!
//! Each customer gets a dense `u32` ordinal on first sight. Columns are split into shards of
//! 65,536 ordinals, the span of one roaring container, so evaluation can run shard by shard and a
//! write locks only the shard it changes.
//!
//! # Locks
//!
//! Order: `writer` → `schema` → `shards` (outer) → one shard. Writes are serialized by `writer`
//! (a batch is validated against a stable state, then applied); within it a write holds one
//! shard's write lock at a time, so readers of other shards never wait. Readers take only read
//! locks and never `writer`. No lock is held across an `.await`: the store is synchronous.

mod applier;
pub mod batch;
pub mod dedup;
pub mod family;
pub mod follow;
pub mod index;
pub mod input;
pub mod rfm;
pub mod segments;
pub mod shards;
pub mod timing;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{Mutex, RwLock};
use roaring::RoaringBitmap;

use crate::columnar::column::{self, Column};
use crate::columnar::schema::{AttrId, AttrType, Schema, purchase};
use crate::columnar::strings::StrColumn;
use crate::columnar::value::Value;
use crate::columnar::{dict, schema, table_bytes};
use crate::error::{Error, Result};
use crate::events::{Cause, Change, EventLog, Noted};
use crate::segment::SegShard;
use crate::segment::eval::Now;
use crate::segment::registry::Registry;
use crate::store::segments::{Changed, refresh_customer};
use crate::store::timing::TimeIndex;
use crate::time::{Clock, SystemClock};
use batch::{AttrColumn, ColumnBatch, ColumnValues, Rows};
use index::{IdIndex, KeyCase};
use input::{CustomerKey, CustomerPatch, OrderIn};

pub use crate::columnar::{SHARD_BITS, SHARD_SIZE, local, shard_of};

/// The columns of 65,536 consecutive ordinals.
#[derive(Debug, Default, Clone)]
pub struct Shard {
    /// Ordinals in use.
    pub live: RoaringBitmap,
    pub ids: StrColumn,
    pub emails: StrColumn,
    /// Indexed by [`AttrId`]; `None` until the attribute is first written in this shard.
    pub columns: Vec<Option<Column>>,
    /// Segment members and lists in this shard, indexed by segment slot.
    pub segments: Vec<SegShard>,
    /// Customers by day of each date or timestamp that a relative-time rule reads
    /// (see [`crate::store::timing`]); rebuilt after a restore.
    pub timed: Vec<TimeIndex>,
}

impl Shard {
    /// The column of `attr`, if any value was ever written here.
    pub fn column(&self, attr: AttrId) -> Option<&Column> {
        self.columns.get(usize::from(attr)).and_then(Option::as_ref)
    }

    /// A segment's state in this shard, if it was ever written here.
    pub fn segment(&self, slot: u32) -> Option<&SegShard> {
        self.segments.get(slot as usize)
    }

    /// A segment's state in this shard, created empty when missing.
    pub fn segment_mut(&mut self, slot: u32) -> &mut SegShard {
        let i = slot as usize;
        if self.segments.len() <= i {
            self.segments.resize_with(i + 1, SegShard::default);
        }
        &mut self.segments[i]
    }

    pub(crate) fn column_mut(&mut self, attr: AttrId, ty: AttrType) -> &mut Column {
        let i = usize::from(attr);
        if self.columns.len() <= i {
            self.columns.resize_with(i + 1, || None);
        }
        let live = &self.live;
        self.columns[i].get_or_insert_with(|| {
            let mut col = Column::new(ty);
            // A column first written once the shard is full (an attribute defined after a
            // load) keeps nothing that only helps while customers arrive at the end.
            if live.max().is_some_and(|m| local(m) == SHARD_SIZE - 1) {
                col.end_fill();
            }
            col
        })
    }

    /// Adds this shard's heap bytes to `parts`: ids, e-mails, each attribute, and the rest.
    fn add_heap_bytes(&self, parts: &mut MemoryParts) {
        parts.ids += self.ids.heap_bytes();
        parts.emails += self.emails.heap_bytes();
        parts.shards += column::bitmap_bytes(&self.live)
            + std::mem::size_of::<RwLock<Shard>>()
            + self.columns.capacity() * std::mem::size_of::<Option<Column>>();
        if parts.attrs.len() < self.columns.len() {
            parts.attrs.resize(self.columns.len(), 0);
        }
        for (i, col) in self.columns.iter().enumerate() {
            parts.attrs[i] += col.as_ref().map_or(0, Column::heap_bytes);
        }
    }
}

/// The logger of a write that needs no logging (tests, embedders without a log): no log
/// sequence, so its events are published at once.
pub fn no_log() -> Result<u64> {
    Ok(0)
}

/// A customer as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomerRecord {
    pub customer_id: String,
    pub email: Option<String>,
    /// Present attributes, in schema order.
    pub attrs: Vec<(Arc<str>, Value)>,
}

/// What an upsert did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UpsertOutcome {
    pub created: u64,
    pub updated: u64,
}

/// What recording orders did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OrdersOutcome {
    pub applied: u64,
    pub duplicates: u64,
    pub created_customer_ids: Vec<String>,
}

/// Counts and memory use.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct StoreStats {
    pub customers: u64,
    pub shards: u64,
    pub attributes: u64,
    pub segments: u64,
    pub orders_recorded: u64,
    pub bytes_used: u64,
    /// Where `bytes_used` goes, largest first.
    pub parts: Vec<(String, u64)>,
}

/// The state of the store at one log sequence, captured for a snapshot without stopping writes:
/// global state is copied at once; shards are copied one at a time, each before its first change.
#[derive(Debug)]
pub struct Cut {
    /// The last log sequence the cut reflects.
    pub sequence: u64,
    pub schema: Arc<Schema>,
    /// Values of each dictionary at the cut (dictionaries only grow).
    pub dict_lens: Vec<usize>,
    pub registry: Arc<Registry>,
    pub next_ordinal: u32,
    pub free: Vec<u32>,
    pub orders_seen: Vec<u128>,
    /// Order id keys restored from a version-1 snapshot, still held, and until when (µs).
    pub orders_seen_legacy: Vec<u128>,
    pub orders_seen_legacy_until: i64,
    pub orders: u64,
    /// Shards existing at the cut; `Some` once copied.
    pub shards: Vec<Option<Shard>>,
    /// Shards copied by writers and not yet taken by the snapshot writer.
    pub waiting: Vec<usize>,
}

/// Everything a snapshot holds, read back to restore into an empty store ([`Store::restore`]).
#[derive(Debug, Default)]
pub struct Restored {
    pub sequence: u64,
    pub next_ordinal: u32,
    pub free: Vec<u32>,
    pub orders: u64,
    pub orders_seen: Vec<u128>,
    /// Keys of a version-1 snapshot (the order id's hash alone), and until when they are held
    /// (`None`: read from a version-1 snapshot, a window from the restart).
    pub orders_seen_legacy: Vec<u128>,
    pub orders_seen_legacy_until: Option<i64>,
    /// Custom attributes in id order: (id, name, type, description).
    pub custom_attrs: Vec<(AttrId, String, AttrType, String)>,
    /// Dictionary values in code order, per attribute.
    pub dicts: Vec<(AttrId, Vec<String>)>,
    /// Segment definitions in dependency order, with their slots.
    pub segments: Vec<(u32, crate::segment::registry::SegmentDef)>,
    /// Families (their members are among `segments`), with their last reclassification.
    pub families: Vec<(crate::segment::family::Family, Option<i64>)>,
    pub shards: Vec<Shard>,
}

impl crate::segment::eval::ShardView for Shard {
    fn live(&self) -> &RoaringBitmap {
        &self.live
    }

    fn column(&self, attr: AttrId) -> Option<&Column> {
        Shard::column(self, attr)
    }

    fn segment(&self, slot: u32) -> Option<&SegShard> {
        Shard::segment(self, slot)
    }
}

/// Heap bytes by part, summed over shards.
#[derive(Debug, Default)]
struct MemoryParts {
    ids: usize,
    emails: usize,
    shards: usize,
    attrs: Vec<usize>,
}

/// State only the writer touches.
#[derive(Debug, Default)]
pub(crate) struct WriterState {
    next_ordinal: u32,
    /// Ordinals of erased customers, reused before new ones.
    free: Vec<u32>,
    /// 128-bit hashes of the order ids recorded within the dedup window: a retried order is
    /// not counted twice ([`dedup`]).
    orders_seen: dedup::OrderDedup,
    /// Membership changes of the write in progress, committed to the event log at its end.
    pub(crate) noted: Noted,
    /// Batches handed to the applier thread so far ([`applier`]).
    handed: u64,
    /// Those of them possibly not yet applied, oldest first: their keys are in the maps but
    /// perhaps not yet in the shards, so the writer's checks read them here.
    pending: applier::Pending,
}

/// All customers, in sharded columns.
pub struct Store {
    pub(crate) writer: Mutex<WriterState>,
    /// The thread finishing new customers' batches behind the writer, once started.
    applier: std::sync::OnceLock<applier::Applier>,
    schema: RwLock<Arc<Schema>>,
    /// Defined segments; replaced whole on every definition change.
    pub(crate) segments: arc_swap::ArcSwap<Registry>,
    pub(crate) shards: shards::ShardTable,
    pub(crate) clock: Arc<dyn Clock>,
    /// The time of the write in progress (`i64::MIN` when none is set): the time its log record
    /// carries, and when replayed, the record's time, so replay makes the same changes and events.
    write_time: std::sync::atomic::AtomicI64,
    /// Every membership change, in order.
    pub(crate) events: Arc<EventLog>,
    /// How long whole-segment and whole-family evaluations took.
    pub eval_seconds: prometheus::Histogram,
    /// Membership changes applied by time flips, in all.
    pub time_flips: AtomicU64,
    /// The log sequence of the last erasure (0: none since start): the next snapshot covering it
    /// removes every file that still holds the erased customer.
    pub(crate) erased_at: AtomicU64,
    /// The instant up to which time flips are applied (`i64::MIN`: not yet since the start).
    pub(crate) time_applied: std::sync::atomic::AtomicI64,
    /// A snapshot's cut in progress: shards not yet copied are copied before a write changes them.
    pub(crate) cut: Mutex<Option<Cut>>,
    cut_active: std::sync::atomic::AtomicBool,
    /// Threads for whole-segment evaluation; 0 means one per core.
    pub(crate) eval_threads: std::sync::atomic::AtomicUsize,
    ids: IdIndex,
    emails: IdIndex,
    customers: AtomicU64,
    orders: AtomicU64,
    /// What writes did, for followers, while one follows ([`crate::follow`]).
    follow: Arc<crate::follow::Feed>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// An empty store with the built-in schema.
    pub fn new() -> Store {
        Store::with_clock(Arc::new(SystemClock))
    }

    /// An empty store whose relative-time rules read `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Store {
        Store {
            writer: Mutex::new(WriterState::default()),
            applier: std::sync::OnceLock::new(),
            schema: RwLock::new(Arc::new(Schema::builtin())),
            segments: arc_swap::ArcSwap::from_pointee(Registry::default()),
            clock,
            write_time: std::sync::atomic::AtomicI64::new(i64::MIN),
            events: Arc::new(EventLog::default()),
            time_applied: std::sync::atomic::AtomicI64::new(i64::MIN),
            eval_seconds: crate::latency::histogram(
                "segmentd_evaluation_seconds",
                "Whole-segment and whole-family evaluations.",
            ),
            time_flips: AtomicU64::new(0),
            erased_at: AtomicU64::new(0),
            eval_threads: std::sync::atomic::AtomicUsize::new(0),
            cut: Mutex::new(None),
            cut_active: std::sync::atomic::AtomicBool::new(false),
            shards: shards::ShardTable::default(),
            ids: IdIndex::new(ID_KEYS),
            emails: IdIndex::new(EMAIL_KEYS),
            customers: AtomicU64::new(0),
            orders: AtomicU64::new(0),
            follow: Arc::default(),
        }
    }

    /// The current schema.
    pub fn schema(&self) -> Arc<Schema> {
        self.schema.read().clone()
    }

    /// The schema, for a writer replacing it (with the writer lock held).
    pub(crate) fn schema_mut(&self) -> parking_lot::RwLockWriteGuard<'_, Arc<Schema>> {
        self.schema.write()
    }

    /// The defined segments.
    pub fn registry(&self) -> Arc<Registry> {
        self.segments.load_full()
    }

    /// Takes the writer lock with every batch handed to the applier thread applied: every write
    /// but [`Store::upsert_columns_queued`]'s new customers starts here.
    pub(crate) fn lock_writer(&self) -> parking_lot::MutexGuard<'_, WriterState> {
        let mut w = self.writer.lock();
        self.settle(&mut w);
        w
    }

    /// The write lock of shard `i`, copying the shard first if a snapshot cut still needs it.
    /// Called by the writer with the writer lock held, or by the applier thread for it.
    pub(crate) fn write_shard(&self, i: usize) -> parking_lot::RwLockWriteGuard<'_, Shard> {
        self.copy_before_write(i);
        self.shards.get(i).write()
    }

    /// Copies shard `i` into the cut in progress, if any and not yet copied. Called before any
    /// change to the shard after the cut (by the writer, or by the applier thread, which writes
    /// only batches logged after a cut began: a cut begins with every handed batch written), so
    /// the copy is the state at the cut.
    pub(crate) fn copy_before_write(&self, i: usize) {
        if !self.cut_active.load(Ordering::Acquire) {
            return;
        }
        let mut cut = self.cut.lock();
        if let Some(c) = cut.as_mut()
            && i < c.shards.len()
            && c.shards[i].is_none()
        {
            c.shards[i] = Some(self.shards.get(i).read().clone());
            c.waiting.push(i);
        }
    }

    /// Starts a snapshot cut at log sequence `sequence` (the last record applied). Briefly
    /// holds the writer lock; `log_sequence` reads the log's last sequence under that lock.
    /// The event log is synced first, so it holds the events of every record the cut covers.
    pub fn begin_cut(&self, log_sequence: impl FnOnce() -> Result<u64>) -> Result<u64> {
        let w = self.lock_writer();
        self.events.sync()?;
        let schema = self.schema();
        let sequence = log_sequence()?;
        let (legacy, legacy_until) = w.orders_seen.legacy_keys();
        let cut = Cut {
            sequence,
            dict_lens: schema
                .attrs()
                .iter()
                .map(|a| a.dict.as_ref().map_or(0, |d| d.len()))
                .collect(),
            schema,
            registry: self.registry(),
            next_ordinal: w.next_ordinal,
            free: w.free.clone(),
            orders_seen: w.orders_seen.keys().collect(),
            orders_seen_legacy: legacy,
            orders_seen_legacy_until: legacy_until,
            orders: self.orders.load(Ordering::Acquire),
            shards: (0..self.shards.len()).map(|_| None).collect(),
            waiting: Vec::new(),
        };
        *self.cut.lock() = Some(cut);
        self.cut_active.store(true, Ordering::Release);
        Ok(sequence)
    }

    /// The next copied shard of the cut, copying shard `next` under the writer lock if no writer
    /// has; `None` when every shard is taken.
    pub fn take_cut_shard(&self, next: &mut usize) -> Option<(usize, Shard)> {
        loop {
            {
                let mut cut = self.cut.lock();
                let c = cut.as_mut()?;
                if let Some(i) = c.waiting.pop() {
                    let shard = c.shards[i].take().expect("a waiting shard is copied");
                    // Leave a marker so the shard is not copied twice.
                    c.shards[i] = Some(Shard::default());
                    return Some((i, shard));
                }
                while *next < c.shards.len() && c.shards[*next].is_some() {
                    *next += 1;
                }
                if *next >= c.shards.len() {
                    return None;
                }
            }
            let _w = self.lock_writer();
            self.copy_before_write(*next);
        }
    }

    /// Loads a snapshot into this (empty) store: schema, dictionaries, shards, segments, writer
    /// state; rebuilds the id and e-mail maps from the shards.
    pub fn restore(&self, r: Restored) -> Result<()> {
        let _w = self.lock_writer();
        let bad = |what: String| Error::DataLoss(format!("snapshot {}: {what}", r.sequence));
        {
            let mut schema = self.schema.write();
            for (id, name, ty, description) in &r.custom_attrs {
                let next = schema
                    .with_attribute(name, *ty, description)
                    .map_err(|e| bad(e.to_string()))?;
                if next.get(name).map(|a| a.id) != Some(*id) {
                    return Err(bad(format!("attribute `{name}` would get another id")));
                }
                *schema = Arc::new(next);
            }
        }
        let schema = self.schema();
        for (attr, values) in &r.dicts {
            let dict = (usize::from(*attr) < schema.len())
                .then(|| schema.attr(*attr).dict.clone())
                .flatten()
                .ok_or_else(|| bad(format!("dictionary for attribute {attr} without one")))?;
            for (code, v) in values.iter().enumerate() {
                // An empty value stands for one no customer held when the snapshot was written
                // (no keyword value is empty): its code stays taken, its text is gone.
                let got = if v.is_empty() {
                    dict.push_forgotten()
                } else {
                    dict.intern(v)
                };
                if got as usize != code {
                    return Err(bad(format!(
                        "dictionary of attribute {attr} has a repeated value"
                    )));
                }
            }
        }
        let customers: u64 = r.shards.iter().map(|s| s.live.len()).sum();
        if !r.shards.is_empty() {
            self.shards.ensure(r.shards.len() - 1);
        }
        // Install the shards, then rebuild the id and e-mail maps from them on every core (the
        // maps are concurrent).
        for (i, shard) in r.shards.into_iter().enumerate() {
            *self.shards.get(i).write() = shard;
        }
        self.rebuild_maps();
        let mut reg = Registry::default();
        for (slot, def) in r.segments {
            let entry = self
                .compile_entry(&reg, &schema, slot, def)
                .map_err(|e| bad(e.to_string()))?;
            reg = reg.with(entry).map_err(|e| bad(e.to_string()))?;
        }
        for (family, reclassified_at) in r.families {
            let id: Arc<str> = Arc::from(family.id.as_str());
            let mut slots = Vec::with_capacity(family.members.len());
            let mut rules = Vec::with_capacity(family.members.len());
            for m in &family.members {
                let e = reg.by_id(&m.segment_id).ok_or_else(|| {
                    bad(format!(
                        "family `{id}` names a missing segment `{}`",
                        m.segment_id
                    ))
                })?;
                let mut entry = (**e).clone();
                entry.family = Some(id.clone());
                slots.push(entry.slot);
                reg = reg.with(entry).map_err(|e| bad(e.to_string()))?;
                rules.push(
                    m.rule
                        .as_ref()
                        .map(|rule| crate::segment::compile::compile(rule, &schema, &|s| reg.slot(s)))
                        .transpose()
                        .map_err(|e| bad(e.to_string()))?,
                );
            }
            reg = reg.with_family(crate::segment::registry::FamilyEntry {
                family,
                slots,
                rules,
                reclassified_at,
                last_moves: Vec::new(),
            });
        }
        self.segments.store(Arc::new(reg));
        self.sync_time_indexes(&self.registry());
        let mut w = _w;
        w.next_ordinal = r.next_ordinal;
        w.free = r.free;
        w.orders_seen.restore(
            r.orders_seen,
            r.orders_seen_legacy,
            r.orders_seen_legacy_until,
            self.clock_micros(),
        );
        self.orders.store(r.orders, Ordering::Release);
        self.customers.store(customers, Ordering::Release);
        Ok(())
    }

    /// Rebuilds the id and e-mail maps from the shards. Keys are hashed and sorted by map shard on
    /// every core, then each map shard is filled by one thread under one lock: a rebuild of tens
    /// of millions of keys with the threads contending for shard locks took seconds.
    fn rebuild_maps(&self) {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        for (index, field) in [(&self.ids, 0), (&self.emails, 1)] {
            let tables = index.tables();
            // Per store shard, (hash, ordinal) pairs grouped by map table.
            let next = std::sync::atomic::AtomicUsize::new(0);
            let located: Mutex<Vec<Located>> = Mutex::new(Vec::new());
            std::thread::scope(|scope| {
                for _ in 0..threads {
                    scope.spawn(|| {
                        let mut mine = vec![Vec::new(); tables];
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= self.shards.len() {
                                break;
                            }
                            let shard = self.shards.get(i).read();
                            let strings = if field == 0 { &shard.ids } else { &shard.emails };
                            for ord in &shard.live {
                                if let Some(key) = strings.get(local(ord)) {
                                    let (h, b) = index.locate(key);
                                    mine[b].push((h, ord));
                                }
                            }
                        }
                        located.lock().push(mine);
                    });
                }
            });
            let located = located.into_inner();
            let next = std::sync::atomic::AtomicUsize::new(0);
            std::thread::scope(|scope| {
                for _ in 0..threads {
                    scope.spawn(|| {
                        loop {
                            let b = next.fetch_add(1, Ordering::Relaxed);
                            if b >= tables {
                                break;
                            }
                            let pairs = located.iter().flat_map(|per| per[b].iter().copied());
                            index.bulk_fill(b, pairs);
                        }
                    });
                }
            });
        }
    }

    /// Ends the cut; returns its global state (shards were handed out by `take_cut_shard`).
    pub fn end_cut(&self) -> Option<Cut> {
        self.cut_active.store(false, Ordering::Release);
        self.cut.lock().take()
    }

    /// Sets the threads used to evaluate a segment over all customers (0: one per core).
    /// Bounds the order dedup window: ids are remembered `window` after they were recorded, and
    /// at most about `max_ids` of them ([`dedup`]).
    pub fn set_order_dedup(&self, window: std::time::Duration, max_ids: usize) {
        let micros = i64::try_from(window.as_micros()).unwrap_or(i64::MAX);
        self.writer.lock().orders_seen.set_bounds(micros, max_ids);
    }

    pub fn set_eval_threads(&self, threads: usize) {
        self.eval_threads.store(threads, Ordering::Relaxed);
    }

    /// "Now" for relative-time rules: the time of the write in progress, else the clock's.
    pub fn now(&self) -> Now {
        match self.write_time.load(Ordering::Acquire) {
            i64::MIN => Now::at(self.clock.now_micros()),
            t => Now::at(t),
        }
    }

    /// The clock's time, in microseconds since the epoch.
    pub fn clock_micros(&self) -> i64 {
        self.clock.now_micros()
    }

    /// Fixes "now" for the write about to run (its log record carries the same time), or for
    /// the record being replayed; `None` when it is done.
    pub fn set_write_time(&self, time: Option<i64>) {
        self.write_time.store(time.unwrap_or(i64::MIN), Ordering::Release);
    }

    /// The membership event log.
    pub fn events(&self) -> &Arc<EventLog> {
        &self.events
    }

    /// Commits the changes a write noted as the events of log record `lsn`, naming segments by
    /// `reg` (the registry they were made under). Called with the writer lock held.
    pub(crate) fn commit_events(&self, lsn: u64, now: Now, noted: &mut Noted, reg: &Registry) {
        self.feed_entry(lsn, now.micros, noted, reg);
        self.events.commit(lsn, now.micros, noted, &|slot| {
            reg.get(slot).map(|e| Arc::from(e.def.id.as_str()))
        });
    }

    /// The id of the live customer at `ord`.
    pub fn id_at(&self, ord: u32) -> Option<Arc<str>> {
        if shard_of(ord) >= self.shards.len() {
            return None;
        }
        self.read_shard(ord, |s| s.ids.get(local(ord)).map(Arc::from))
    }

    /// Orders recorded (duplicates not counted).
    pub fn orders_recorded(&self) -> u64 {
        self.orders.load(Ordering::Acquire)
    }

    /// Number of customers.
    pub fn customer_count(&self) -> u64 {
        self.customers.load(Ordering::Acquire)
    }

    pub(crate) fn shard(&self, ord: u32) -> &RwLock<Shard> {
        self.shards.get(shard_of(ord))
    }

    /// Runs `f` on the shard of `ord` under its read lock.
    pub fn read_shard<R>(&self, ord: u32, f: impl FnOnce(&Shard) -> R) -> R {
        f(&self.shard(ord).read())
    }

    /// The ordinal of a customer named by id or e-mail.
    pub fn resolve(&self, key: &CustomerKey) -> Option<u32> {
        match key {
            CustomerKey::Id(id) => self.ordinal_of_id(id),
            CustomerKey::Email(email) => self.ordinal_of_email(email),
        }
    }

    /// The ordinal of customer `id`.
    pub fn ordinal_of_id(&self, id: &str) -> Option<u32> {
        self.ordinal_of_id_hashed(id, self.ids.hash(id))
    }

    /// [`Store::ordinal_of_id`] with the id's hash ([`KeyHashes`]) computed beforehand.
    fn ordinal_of_id_hashed(&self, id: &str, hash: u64) -> Option<u32> {
        self.ids.get_hashed(id, hash, |ord, key| self.holds_id(ord, key))
    }

    /// Whether customer `ord`'s id is `id`. An erased customer's id is cleared, so a matching
    /// id is a live customer.
    fn holds_id(&self, ord: u32, id: &str) -> bool {
        self.read_shard(ord, |s| s.ids.is(local(ord), id))
    }

    /// Whether customer `ord`'s e-mail is `normalized` ([`index::normalize_email`]).
    fn holds_email(&self, ord: u32, normalized: &str) -> bool {
        self.read_shard(ord, |s| email_is(&s.emails, local(ord), normalized))
    }

    /// The ordinal of the customer owning `email` (case-insensitive).
    pub fn ordinal_of_email(&self, email: &str) -> Option<u32> {
        self.ordinal_of_email_hashed(email, self.emails.hash(email))
    }

    /// [`Store::ordinal_of_email`] with the e-mail's hash ([`KeyHashes`]) computed beforehand.
    fn ordinal_of_email_hashed(&self, email: &str, hash: u64) -> Option<u32> {
        self.emails
            .get_hashed(email, hash, |ord, key| self.holds_email(ord, key))
    }

    /// Runs `f` with the shard and ordinal of customer `id`, under one shard read lock, or
    /// returns `None` for an unknown customer. The request-time path: one map probe, one lock.
    pub fn with_customer<R>(&self, id: &str, f: impl FnOnce(&Shard, u32) -> R) -> Option<R> {
        let mut f = Some(f);
        let mut out = None;
        self.ids.get(id, |ord, key| {
            let shard = self.shard(ord).read();
            if shard.ids.is(local(ord), key) {
                if let Some(f) = f.take() {
                    out = Some(f(&shard, ord));
                }
                true
            } else {
                false
            }
        });
        out
    }

    /// A customer with every present attribute.
    pub fn get_customer(&self, key: &CustomerKey) -> Result<CustomerRecord> {
        let ord = self.resolve(key).ok_or_else(|| not_found(key))?;
        let schema = self.schema();
        self.read_shard(ord, |shard| {
            let i = local(ord);
            let customer_id = shard.ids.get(i).ok_or_else(|| not_found(key))?.to_string();
            let email = shard.emails.get(i).map(str::to_string);
            let attrs = schema
                .attrs()
                .iter()
                .filter_map(|def| {
                    let value = shard.column(def.id)?.get(ord, def.ty, def.dict.as_deref())?;
                    Some((def.name.clone(), value))
                })
                .collect();
            Ok(CustomerRecord {
                customer_id,
                email,
                attrs,
            })
        })
    }

    /// Creates or merges a batch of customers, all or nothing: every check runs before anything
    /// is applied, and the first failure names the item (`customers[3].email`).
    ///
    /// `log` is called once the batch is known good and before anything changes (it writes the
    /// change to the write-ahead log); its error refuses the batch. Every write method takes one.
    pub fn upsert(
        &self,
        batch: &[CustomerPatch],
        log: &mut dyn FnMut() -> Result<u64>,
    ) -> Result<UpsertOutcome> {
        self.upsert_known(batch, &[], &KeyHashes::of(batch), log)
    }

    /// [`Store::upsert`] with the batch's dictionary codes looked up beforehand by
    /// [`known_codes`] and its keys hashed by [`KeyHashes::of`] (where the batch was parsed), so
    /// the writer thread skips that work.
    pub fn upsert_known(
        &self,
        batch: &[CustomerPatch],
        known: &[u32],
        hashes: &KeyHashes,
        log: &mut dyn FnMut() -> Result<u64>,
    ) -> Result<UpsertOutcome> {
        let mut own = None;
        let hashes = hashes.or_own(batch.len(), &mut own, || KeyHashes::of(batch));
        let mut w = self.lock_writer();
        let schema = self.schema();
        check_writable(&schema, batch)?;
        let plan = self.plan_upsert(
            batch.len(),
            |i| &batch[i].customer_id,
            |i| batch[i].email.as_deref(),
            hashes,
            &applier::Pending::default(),
        )?;
        let lsn = log()?;
        let reg = self.registry();
        let now = self.now();
        let mut changed: Vec<AttrId> = Vec::new();
        let mut outcome = UpsertOutcome::default();
        let ords = self.prepare_rows(&mut w, &plan, hashes, |i| batch[i].email.as_deref());
        let created = ords.iter().zip(&plan).filter(|(_, p)| p.existing.is_none());
        self.note_created(&mut w.noted, created.map(|(&o, _)| o));
        // Apply runs of items in the same shard under one lock hold, bounded so readers of that
        // shard wait at most for `MAX_RUN` customers.
        let mut known = known;
        for run in shard_runs(&ords) {
            let mut s = self.write_shard(shard_of(ords[run.start]));
            for k in run.clone() {
                let (patch, ord, new) = (&batch[k], ords[k], plan[k].existing.is_none());
                apply_patch(&mut s, &schema, ord, new, patch, &mut known);
                changed.clear();
                changed.extend(patch.attrs.iter().map(|(id, _)| *id));
                let what = if new {
                    Changed::All
                } else {
                    Changed::Attrs(&changed)
                };
                refresh_customer(&reg, &schema, &mut s, ord, what, now, &mut w.noted.changes, None);
            }
            let email = |k: usize| batch[k].email.as_deref().is_some_and(|e| !e.is_empty());
            self.map_run(hashes, run, &ords, &plan, email, &mut outcome);
        }
        self.customers.fetch_add(outcome.created, Ordering::AcqRel);
        self.commit_events(lsn, now, &mut w.noted, &reg);
        Ok(outcome)
    }

    /// [`Store::upsert_known`] of a batch given column by column ([`ColumnBatch::look_up_codes`]
    /// called where it was parsed): the same checks, outcome, log and events, with each run of
    /// customers in one shard written a column at a time.
    pub fn upsert_columns(
        &self,
        batch: &ColumnBatch,
        hashes: &KeyHashes,
        log: &mut dyn FnMut() -> Result<u64>,
    ) -> Result<UpsertOutcome> {
        let mut own = None;
        let hashes = hashes.or_own(batch.len(), &mut own, || KeyHashes::of_columns(batch));
        let w = self.lock_writer();
        let plan = self.plan_upsert(
            batch.len(),
            |i| batch.ids.get(i),
            |i| batch.email(i),
            hashes,
            &applier::Pending::default(),
        )?;
        self.upsert_planned(w, batch, hashes, &plan, log)
    }

    /// The rest of [`Store::upsert_columns`], once the batch is planned, with no batch pending
    /// on the applier thread.
    fn upsert_planned(
        &self,
        mut w: parking_lot::MutexGuard<'_, WriterState>,
        batch: &ColumnBatch,
        hashes: &KeyHashes,
        plan: &[Step],
        log: &mut dyn FnMut() -> Result<u64>,
    ) -> Result<UpsertOutcome> {
        let lsn = log()?;
        let schema = self.schema();
        let reg = self.registry();
        let now = self.now();
        let attrs = batch.attrs();
        let mut rows: Vec<Rows<'_>> = batch.columns.iter().map(|c| Rows::new(&c.missing)).collect();
        let mut outcome = UpsertOutcome::default();
        let ords = self.prepare_rows(&mut w, plan, hashes, |i| batch.email(i));
        let created = ords.iter().zip(plan).filter(|(_, p)| p.existing.is_none());
        self.note_created(&mut w.noted, created.map(|(&o, _)| o));
        let new = |k: usize| plan[k].existing.is_none();
        let written = Written {
            batch,
            ords: &ords,
            schema: &schema,
            reg: &reg,
            now,
            attrs: &attrs,
        };
        for run in shard_runs(&ords) {
            let mut s = self.write_shard(shard_of(ords[run.start]));
            written.run(&mut s, run.clone(), new, &mut rows, &mut w.noted.changes);
            self.map_run(
                hashes,
                run,
                &ords,
                plan,
                |k| batch.email(k).is_some(),
                &mut outcome,
            );
        }
        self.customers.fetch_add(outcome.created, Ordering::AcqRel);
        self.commit_events(lsn, now, &mut w.noted, &reg);
        Ok(outcome)
    }

    /// Maps rows `run` of a batch being applied (`ords` and `plan` its rows' ordinals and
    /// steps; `email(k)` whether row `k` sets an e-mail), and counts them. Called while their
    /// shard is still locked: a reader that finds a customer waits for the lock and then sees it
    /// whole.
    fn map_run(
        &self,
        hashes: &KeyHashes,
        run: std::ops::Range<usize>,
        ords: &[u32],
        plan: &[Step],
        email: impl Fn(usize) -> bool,
        outcome: &mut UpsertOutcome,
    ) {
        let new: Vec<(u64, u32)> = run
            .clone()
            .filter(|&k| plan[k].existing.is_none())
            .map(|k| (hashes.ids[k], ords[k]))
            .collect();
        outcome.created += new.len() as u64;
        outcome.updated += (run.len() - new.len()) as u64;
        self.ids.insert_many(new);
        let emails = run.filter(|&k| email(k));
        self.emails
            .insert_many(emails.map(|k| (hashes.emails[k], ords[k])));
    }

    /// Readies the maps and ordinals of a planned batch (`email(i)` as given to
    /// [`Store::plan_upsert`]): releases the e-mails that change, so one batch can move an e-mail
    /// between customers; makes room in the maps while no shard is locked (a growing map rereads
    /// stored keys); allocates the new customers' ordinals. Returns every row's ordinal.
    fn prepare_rows<'b>(
        &self,
        w: &mut WriterState,
        plan: &[Step],
        hashes: &KeyHashes,
        email: impl Fn(usize) -> Option<&'b str>,
    ) -> Vec<u32> {
        for (i, step) in plan.iter().enumerate() {
            if let (Some(ord), Some(_)) = (step.existing, email(i))
                && let Some(old) = self.read_shard(ord, |s| s.emails.get(local(ord)).map(str::to_string))
            {
                self.emails.remove(&old, ord);
            }
        }
        let created = hashes
            .ids
            .iter()
            .zip(plan)
            .filter(|(_, step)| step.existing.is_none());
        self.ids.reserve_hashed(created.map(|(&h, _)| h));
        let emails = (0..plan.len()).filter(|&i| email(i).is_some_and(|e| !e.is_empty()));
        self.emails.reserve_hashed(emails.map(|i| hashes.emails[i]));
        plan.iter()
            .map(|step| step.existing.unwrap_or_else(|| self.allocate(w)))
            .collect()
    }

    /// The checks of an upsert that depend on the store: duplicate ids in the batch, read-only
    /// attributes, e-mails owned by other customers.
    ///
    /// Customers of batches still `pending` on the applier thread are checked against those
    /// batches, their keys not being in the shards yet.
    fn plan_upsert<'b>(
        &self,
        n: usize,
        id: impl Fn(usize) -> &'b str,
        email_of: impl Fn(usize) -> Option<&'b str>,
        hashes: &KeyHashes,
        pending: &applier::Pending,
    ) -> Result<Vec<Step>> {
        let item = |i: usize| format!("customers[{i}]");
        let mut plan = Vec::with_capacity(n);
        let mut seen_ids = FirstRows::with_capacity(n);
        let id_candidates = self.ids.candidates(n, |i| Some(hashes.ids[i]));
        let id_owners = self.confirm(
            n,
            &id_candidates,
            pending,
            |s| &s.ids,
            |ids, at, row| ids.is(at, id(row)),
            |batch, k, row| batch.ids.get(k) == id(row),
        );
        for (i, existing) in id_owners.into_iter().enumerate() {
            let customer_id = id(i);
            if n > 1
                && let Some(first) = seen_ids.first(i, |j| hashes.ids[j], |j| id(j) == customer_id)
            {
                return Err(Error::invalid(
                    format!("{}.customer_id", item(i)),
                    format!("`{customer_id}` appears twice in the batch (also customers[{first}])"),
                ));
            }
            plan.push(Step { existing });
        }
        // E-mails: each may be claimed once, and only if free or released by its owner in this batch.
        let mut claims = FirstRows::with_capacity(n);
        let has_email = |i: usize| email_of(i).is_some_and(|e| !e.is_empty());
        let email_candidates = self
            .emails
            .candidates(n, |i| has_email(i).then(|| hashes.emails[i]));
        let email_owners = self.confirm(
            n,
            &email_candidates,
            pending,
            |s| &s.emails,
            |emails, at, row| email_of(row).is_some_and(|e| email_is(emails, at, &index::normalize_email(e))),
            |batch, k, row| match (batch.email(k), email_of(row)) {
                (Some(held), Some(given)) => index::normalize_email(held) == index::normalize_email(given),
                _ => false,
            },
        );
        for i in 0..n {
            let Some(email) = email_of(i).filter(|e| !e.is_empty()) else {
                continue;
            };
            let norm = index::normalize_email(email);
            let owner = email_owners[i];
            let same_email = |j: usize| email_of(j).is_some_and(|e| index::normalize_email(e) == norm);
            if let Some(first) = claims.first(i, |j| hashes.emails[j], same_email) {
                return Err(Error::invalid(
                    format!("{}.email", item(i)),
                    format!("`{email}` is also given to customers[{first}] in the batch"),
                ));
            }
            if let Some(owner) = owner.filter(|&o| plan[i].existing != Some(o)) {
                let released = plan.iter().enumerate().any(|(other, step)| {
                    step.existing == Some(owner)
                        && email_of(other).is_some_and(|e| index::normalize_email(e) != norm)
                });
                if !released {
                    let owner_id = match pending.find(owner) {
                        Some((batch, k)) => Some(batch.ids.get(k).to_string()),
                        None => self.read_shard(owner, |s| s.ids.get(local(owner)).map(str::to_string)),
                    };
                    return Err(Error::invalid(
                        format!("{}.email", item(i)),
                        format!(
                            "`{email}` belongs to another customer ({})",
                            owner_id.unwrap_or_default()
                        ),
                    ));
                }
            }
        }
        Ok(plan)
    }

    /// For each of a batch's `n` rows, the customer holding its key among the map's candidates
    /// (`(row, ordinal)` pairs): those for which `holds(column, local, row)`, on the strings
    /// `column` picks from the candidate's shard, or, for a customer of a `pending` batch,
    /// `holds_pending(batch, position, row)`. Candidates are taken by ordinal, one read lock per
    /// shard, the stored keys of those a few ahead fetched while one is compared.
    fn confirm(
        &self,
        n: usize,
        candidates: &[(u32, u32)],
        pending: &applier::Pending,
        column: impl Fn(&Shard) -> &StrColumn,
        holds: impl Fn(&StrColumn, usize, usize) -> bool,
        holds_pending: impl Fn(&ColumnBatch, usize, usize) -> bool,
    ) -> Vec<Option<u32>> {
        const AHEAD: usize = 4;
        let mut owners: Vec<Option<u32>> = vec![None; n];
        let mut order: Vec<usize> = Vec::with_capacity(candidates.len());
        for (k, &(row, ord)) in candidates.iter().enumerate() {
            match pending.find(ord) {
                Some((batch, at)) => {
                    if holds_pending(batch, at, row as usize) {
                        let owner = &mut owners[row as usize];
                        *owner = Some(owner.map_or(ord, |o| o.min(ord)));
                    }
                }
                None => order.push(k),
            }
        }
        order.sort_unstable_by_key(|&k| candidates[k].1);
        for group in order.chunk_by(|&a, &b| shard_of(candidates[a].1) == shard_of(candidates[b].1)) {
            let s = self.shard(candidates[group[0]].1).read();
            let strings = column(&s);
            for (j, &k) in group.iter().enumerate() {
                if let Some(&ahead) = group.get(j + 2 * AHEAD) {
                    strings.prefetch(local(candidates[ahead].1), 0);
                }
                if let Some(&ahead) = group.get(j + AHEAD) {
                    strings.prefetch(local(candidates[ahead].1), 1);
                }
                let (row, ord) = candidates[k];
                if holds(strings, local(ord), row as usize) {
                    // A key is held once; were it twice, the lower ordinal, as a probe by row.
                    let owner = &mut owners[row as usize];
                    *owner = Some(owner.map_or(ord, |o| o.min(ord)));
                }
            }
        }
        owners
    }

    fn allocate(&self, w: &mut WriterState) -> u32 {
        if let Some(ord) = w.free.pop() {
            return ord;
        }
        let ord = w.next_ordinal;
        w.next_ordinal = ord.checked_add(1).expect("fewer than 2^32 customers");
        if local(ord) == 0 {
            if let Some(full) = shard_of(ord).checked_sub(1) {
                // Not `write_shard`: the links are no part of a snapshot, so a cut in progress
                // needs no copy of the shard before they go.
                for col in self.shards.get(full).write().columns.iter_mut().flatten() {
                    col.end_fill();
                }
            }
            self.shards.ensure(shard_of(ord));
            let wanted = crate::store::timing::timed_attrs(&self.registry(), &self.schema());
            if !wanted.is_empty() {
                self.shards.get(shard_of(ord)).write().set_time_indexes(&wanted);
            }
        }
        ord
    }

    /// The log sequence of the last erasure since start (0: none).
    pub fn erased_at(&self) -> u64 {
        self.erased_at.load(Ordering::Acquire)
    }

    /// Erases a customer from every column, index and map; returns its id.
    pub fn delete(&self, key: &CustomerKey, log: &mut dyn FnMut() -> Result<u64>) -> Result<String> {
        let mut w = self.lock_writer();
        let ord = self.resolve(key).ok_or_else(|| not_found(key))?;
        let lsn = log()?;
        self.erased_at.fetch_max(lsn, Ordering::AcqRel);
        let shard = self.shard(ord);
        let (id, email) = {
            let s = shard.read();
            (
                s.ids.get(local(ord)).map(str::to_string).unwrap_or_default(),
                s.emails.get(local(ord)).map(str::to_string),
            )
        };
        let erased: Arc<str> = Arc::from(id.as_str());
        self.events.erasing(ord, erased.clone());
        // Unmap first: from here on no reader can reach the customer.
        self.ids.remove(&id, ord);
        if let Some(email) = &email {
            self.emails.remove(email, ord);
        }
        {
            let mut s = self.write_shard(shard_of(ord));
            let i = local(ord);
            s.untime(ord);
            for col in s.columns.iter_mut().flatten() {
                col.clear(ord);
            }
            for (slot, seg) in s.segments.iter_mut().enumerate() {
                if seg.members.remove(ord) {
                    w.noted
                        .changes
                        .push(Change::new(ord, slot as u32, false, Cause::Deletion));
                }
                seg.include.remove(ord);
                seg.exclude.remove(ord);
                seg.by_activity.remove(ord);
            }
            s.ids.clear(i);
            s.emails.clear(i);
            s.live.remove(ord);
        }
        w.free.push(ord);
        // Its order ids go with it: the same orders recorded again recreate it with them.
        w.orders_seen.forget_customer(ord);
        self.customers.fetch_sub(1, Ordering::AcqRel);
        w.noted.erased.push((ord, erased));
        self.commit_events(lsn, self.now(), &mut w.noted, &self.registry());
        Ok(id)
    }

    /// Records orders and updates purchase aggregates. Orders for unknown customers create them.
    /// Checked whole before anything is applied.
    pub fn record_orders(
        &self,
        orders: &[OrderIn],
        log: &mut dyn FnMut() -> Result<u64>,
    ) -> Result<OrdersOutcome> {
        for (i, order) in orders.iter().enumerate() {
            order.check().map_err(|e| e.within(&format!("orders[{i}]")))?;
        }
        let mut w = self.lock_writer();
        let lsn = log()?;
        let schema = self.schema();
        let reg = self.registry();
        let now = self.now();
        let mut outcome = OrdersOutcome::default();
        for order in orders {
            // A retry names the customer it was recorded for; a customer not (or no longer)
            // there has no order recorded.
            let known = self.ordinal_of_id(&order.customer_id);
            let retried = w.orders_seen.recorded_before_upgrade(&order.order_id, now.micros)
                || known
                    .is_some_and(|ord| !w.orders_seen.insert(dedup::key(ord, &order.order_id), now.micros));
            if retried {
                outcome.duplicates += 1;
                continue;
            }
            let (ord, new) = match known {
                Some(ord) => (ord, false),
                None => {
                    let ord = self.allocate(&mut w);
                    {
                        let mut s = self.write_shard(shard_of(ord));
                        s.live.insert(ord);
                        s.ids.set(local(ord), &order.customer_id);
                    }
                    self.ids.reserve([order.customer_id.as_str()]);
                    self.ids.insert(&order.customer_id, ord);
                    self.customers.fetch_add(1, Ordering::AcqRel);
                    outcome.created_customer_ids.push(order.customer_id.clone());
                    self.note_created(&mut w.noted, [ord]);
                    w.orders_seen.insert(dedup::key(ord, &order.order_id), now.micros);
                    (ord, true)
                }
            };
            let mut s = self.write_shard(shard_of(ord));
            apply_order(&mut s, &schema, ord, order);
            let what = if new {
                Changed::All
            } else {
                Changed::Attrs(&purchase::ALL)
            };
            refresh_customer(&reg, &schema, &mut s, ord, what, now, &mut w.noted.changes, None);
            outcome.applied += 1;
        }
        self.orders.fetch_add(outcome.applied, Ordering::AcqRel);
        self.commit_events(lsn, now, &mut w.noted, &reg);
        Ok(outcome)
    }

    /// Adds a custom attribute.
    pub fn define_attribute(
        &self,
        name: &str,
        ty: AttrType,
        description: &str,
        log: &mut dyn FnMut() -> Result<u64>,
    ) -> Result<Arc<Schema>> {
        // The writer lock keeps other schema changes out; readers keep reading the schema in
        // force while the change is logged (no lock is held across the log's I/O).
        let _w = self.lock_writer();
        let next = Arc::new(self.schema().with_attribute(name, ty, description)?);
        log()?;
        *self.schema.write() = next.clone();
        Ok(next)
    }

    /// Counts and estimated heap bytes.
    pub fn stats(&self) -> StoreStats {
        let schema = self.schema();
        let shards = self.shards.snapshot();
        let mut m = MemoryParts::default();
        for shard in &shards {
            shard.read().add_heap_bytes(&mut m);
        }
        m.shards += self.shards.heap_bytes();
        let order_dedup = {
            // Only the writer's own state is read: no need to wait for the applier thread.
            let w = self.writer.lock();
            m.shards += w.free.capacity() * 4;
            table_bytes(w.orders_seen.capacity(), 16)
        };
        let mut parts: Vec<(String, u64)> = vec![
            ("id_map".into(), self.ids.heap_bytes() as u64),
            ("email_map".into(), self.emails.heap_bytes() as u64),
            ("ids".into(), m.ids as u64),
            ("emails".into(), m.emails as u64),
            ("order_dedup".into(), order_dedup as u64),
            ("shards".into(), m.shards as u64),
            ("event_log".into(), self.events.heap_bytes() as u64),
        ];
        for def in schema.attrs() {
            let columns = m.attrs.get(usize::from(def.id)).copied().unwrap_or(0);
            let dict = def.dict.as_ref().map_or(0, |d| d.heap_bytes());
            if columns + dict > 0 {
                parts.push((format!("attribute:{}", def.name), (columns + dict) as u64));
            }
        }
        parts.sort_by_key(|p| std::cmp::Reverse(p.1));
        StoreStats {
            customers: self.customer_count(),
            shards: shards.len() as u64,
            attributes: schema.len() as u64,
            segments: self.registry().len() as u64,
            orders_recorded: self.orders.load(Ordering::Acquire),
            bytes_used: parts.iter().map(|p| p.1).sum(),
            parts,
        }
    }
}

/// `(hash, ordinal)` pairs of one thread, grouped by map table.
type Located = Vec<Vec<(u64, u32)>>;

/// Most customers applied under one hold of a shard's write lock.
const MAX_RUN: usize = 256;

/// The strings of a value that have dictionary codes: a keyword, or each item of a set.
fn coded_strings(value: &Value) -> &[String] {
    match value {
        Value::Keyword(s) => std::slice::from_ref(s),
        Value::Keywords(items) => items,
        _ => &[],
    }
}

/// How the id map compares its keys (byte for byte), and the e-mail map (case-insensitively):
/// the maps and [`KeyHashes`] hash alike.
const ID_KEYS: KeyCase = KeyCase::Sensitive;
const EMAIL_KEYS: KeyCase = KeyCase::Insensitive;

/// The hashes of a batch's customer ids and e-mails in the store's maps, computed where the
/// batch is parsed so that the writer thread hashes none of them.
#[derive(Debug, Clone, Default)]
pub struct KeyHashes {
    ids: Vec<u64>,
    /// 0 where a patch sets no e-mail.
    emails: Vec<u64>,
}

impl KeyHashes {
    /// These hashes when they are those of a batch of `n` customers; else `make()`'s, kept in
    /// `own` (as for the empty hashes `Store::upsert` passes).
    fn or_own<'a>(
        &'a self,
        n: usize,
        own: &'a mut Option<KeyHashes>,
        make: impl FnOnce() -> KeyHashes,
    ) -> &'a KeyHashes {
        if self.ids.len() == n && self.emails.len() == n {
            self
        } else {
            own.insert(make())
        }
    }

    /// The hashes of a batch given column by column.
    pub fn of_columns(batch: &ColumnBatch) -> KeyHashes {
        let email = |i: usize| batch.email(i).map_or(0, |e| index::key_hash(EMAIL_KEYS, e));
        KeyHashes {
            ids: batch.ids.iter().map(|id| index::key_hash(ID_KEYS, id)).collect(),
            emails: (0..batch.len()).map(email).collect(),
        }
    }

    pub fn of(batch: &[CustomerPatch]) -> KeyHashes {
        let email = |p: &CustomerPatch| match p.email.as_deref() {
            Some(e) if !e.is_empty() => index::key_hash(EMAIL_KEYS, e),
            _ => 0,
        };
        KeyHashes {
            ids: batch
                .iter()
                .map(|p| index::key_hash(ID_KEYS, &p.customer_id))
                .collect(),
            emails: batch.iter().map(email).collect(),
        }
    }
}

/// The dictionary code of every keyword string of `batch`, in order ([`dict::NO_CODE`] for
/// strings not yet in their dictionary), for [`Store::upsert_known`]. Reads the dictionaries
/// only: a batch refused later leaves them as they were.
pub fn known_codes(schema: &Schema, batch: &[CustomerPatch]) -> Vec<u32> {
    // Each dictionary's lock is taken once for the whole batch: the writer thread reads the same
    // dictionaries, and a lock word passed between cores for every string cost more than the
    // lookups themselves.
    let mut wanted: Vec<Vec<(u32, &str)>> = vec![Vec::new(); schema.len()];
    let mut len = 0u32;
    for patch in batch {
        for (attr, value) in &patch.attrs {
            let Some(value) = value else { continue };
            let strings = coded_strings(value);
            if schema.attr(*attr).dict.is_some() {
                let at = &mut wanted[usize::from(*attr)];
                at.extend(strings.iter().zip(len..).map(|(s, k)| (k, s.as_str())));
            }
            len += strings.len() as u32;
        }
    }
    let mut out = vec![dict::NO_CODE; len as usize];
    for (def, strings) in schema.attrs().iter().zip(&wanted) {
        if let (Some(dict), false) = (def.dict.as_deref(), strings.is_empty()) {
            dict.lookup_each(strings, |k, code| out[k as usize] = code);
        }
    }
    out
}

/// `known` holds the codes of this patch's keyword strings first (or is empty); they are taken
/// off its front.
fn apply_patch(
    s: &mut Shard,
    schema: &Schema,
    ord: u32,
    new: bool,
    patch: &CustomerPatch,
    known: &mut &[u32],
) {
    let i = local(ord);
    if new {
        s.live.insert(ord);
        s.ids.set(i, &patch.customer_id);
    }
    if let Some(email) = &patch.email {
        s.emails.set(i, email);
    }
    for (attr, value) in &patch.attrs {
        let def = schema.attr(*attr);
        let timed = !s.timed.is_empty();
        let old = if timed { s.time_day(*attr, ord) } else { None };
        match value {
            Some(v) => {
                let n = if known.is_empty() {
                    0
                } else {
                    coded_strings(v).len()
                };
                let (codes, rest) = known.split_at(n);
                *known = rest;
                s.column_mut(*attr, def.ty)
                    .set_known(ord, v, def.dict.as_deref(), codes);
            }
            None => {
                if let Some(Some(col)) = s.columns.get_mut(usize::from(*attr)) {
                    col.clear(ord);
                }
            }
        }
        if timed {
            s.retime(*attr, ord, old);
        }
    }
}

/// Whether the e-mail stored at `local` of `emails` is `normalized` ([`index::normalize_email`]).
fn email_is(emails: &StrColumn, local: usize, normalized: &str) -> bool {
    emails
        .get(local)
        .is_some_and(|stored| index::normalize_email(stored) == normalized)
}

/// The rows of a batch seen so far under a key (customer id, e-mail), found by the hashes
/// [`KeyHashes`] computed off the writer thread rather than by hashing each key again.
struct FirstRows {
    rows: hashbrown::HashTable<usize>,
}

impl FirstRows {
    fn with_capacity(n: usize) -> FirstRows {
        FirstRows {
            rows: hashbrown::HashTable::with_capacity(n),
        }
    }

    /// The first row seen with row `i`'s key (`hash(j)` row `j`'s key hash, `same(j)` whether
    /// row `j` has that key); else notes row `i` and returns `None`.
    fn first(
        &mut self,
        i: usize,
        hash: impl Fn(usize) -> u64,
        same: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        match self.rows.entry(hash(i), |&j| same(j), |&j| hash(j)) {
            hashbrown::hash_table::Entry::Occupied(e) => Some(*e.get()),
            hashbrown::hash_table::Entry::Vacant(e) => {
                e.insert(i);
                None
            }
        }
    }
}

/// The runs of consecutive rows whose ordinals lie in one shard, each applied under one lock
/// hold, bounded so readers of that shard wait at most for [`MAX_RUN`] customers.
fn shard_runs(ords: &[u32]) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
    let mut start = 0;
    std::iter::from_fn(move || {
        if start == ords.len() {
            return None;
        }
        let sh = shard_of(ords[start]);
        let mut end = start + 1;
        while end < ords.len() && end - start < MAX_RUN && shard_of(ords[end]) == sh {
            end += 1;
        }
        let run = start..end;
        start = end;
        Some(run)
    })
}

/// A batch given column by column being written to the shards, its rows' ordinals chosen.
struct Written<'a> {
    batch: &'a ColumnBatch,
    ords: &'a [u32],
    schema: &'a Schema,
    reg: &'a Registry,
    now: Now,
    /// The attributes the batch sets.
    attrs: &'a [AttrId],
}

impl Written<'_> {
    /// Writes rows `run` (all in shard `s`; `new(k)` whether row `k` is a new customer) a column
    /// at a time (`rows`: where each column is), then refreshes their segments, noting changes.
    fn run(
        &self,
        s: &mut Shard,
        run: std::ops::Range<usize>,
        new: impl Fn(usize) -> bool,
        rows: &mut [Rows<'_>],
        changes: &mut Vec<Change>,
    ) {
        let (batch, ords) = (self.batch, self.ords);
        let created: Vec<u32> = run.clone().filter(|&k| new(k)).map(|k| ords[k]).collect();
        column::insert_all(&mut s.live, &created);
        for k in run.clone() {
            let i = local(ords[k]);
            if new(k) {
                s.ids.set(i, batch.ids.get(k));
            }
            if let Some(email) = batch.email(k) {
                s.emails.set(i, email);
            }
        }
        let first = ords[run.start];
        let consecutive = ords[run.clone()].iter().zip(first..).all(|(&o, want)| o == want);
        for (column, rows) in batch.columns.iter().zip(rows) {
            let def = self.schema.attr(column.attr);
            apply_column(s, def, column, run.clone(), ords, consecutive, rows);
        }
        for k in run {
            let what = if new(k) {
                Changed::All
            } else {
                Changed::Attrs(self.attrs)
            };
            refresh_customer(self.reg, self.schema, s, ords[k], what, self.now, changes, None);
        }
    }
}

/// Writes one column's values for the rows of `run` (all in shard `s`, their ordinals
/// `consecutive` or not); `rows` has walked the column's earlier rows.
fn apply_column(
    s: &mut Shard,
    def: &schema::AttrDef,
    column: &AttrColumn,
    run: std::ops::Range<usize>,
    ords: &[u32],
    consecutive: bool,
    rows: &mut Rows<'_>,
) {
    let attr = def.id;
    let timed = s.timed.iter().any(|t| t.attr == attr);
    let dict = def.dict.as_deref();
    // New customers (consecutive ordinals after every value of the column) of a scalar column
    // no relative-time rule reads: values written, presence marked once for the run.
    let simple = !matches!(
        column.values,
        ColumnValues::Keywords { .. } | ColumnValues::Text(_)
    );
    let first = ords[run.start];
    if simple && !timed && consecutive && s.column_mut(attr, def.ty).is_after(first) {
        let col = s.column_mut(attr, def.ty);
        let mut given = Vec::with_capacity(run.len());
        let mut trues = Vec::new();
        for row in run {
            let Some(k) = rows.value_of(row) else { continue };
            let ord = ords[row];
            match &column.values {
                ColumnValues::Bool(v) => {
                    if v[k] {
                        trues.push(ord);
                    }
                }
                ColumnValues::I64(v) => col.put_i64(ord, v[k]),
                ColumnValues::F64(v) => col.put_f64(ord, v[k]),
                ColumnValues::I32(v) => col.put_i32(ord, v[k]),
                ColumnValues::Keyword(coded) => {
                    let dict = dict.expect("keyword column has a dictionary");
                    col.put_code(ord, coded.code(k, dict));
                }
                ColumnValues::Keywords { .. } | ColumnValues::Text(_) => unreachable!("not a scalar column"),
            }
            given.push(ord);
        }
        col.put_trues(&trues);
        col.mark_present(&given);
        return;
    }
    for row in run {
        let Some(k) = rows.value_of(row) else { continue };
        let ord = ords[row];
        let old = if timed { s.time_day(attr, ord) } else { None };
        let col = s.column_mut(attr, def.ty);
        match &column.values {
            ColumnValues::Bool(v) => col.set_bool(ord, v[k]),
            ColumnValues::I64(v) => col.set_i64(ord, v[k]),
            ColumnValues::F64(v) => col.set_f64(ord, v[k]),
            ColumnValues::I32(v) => col.set_i32(ord, v[k]),
            ColumnValues::Keyword(coded) => {
                let dict = dict.expect("keyword column has a dictionary");
                col.set_code(ord, coded.code(k, dict));
            }
            ColumnValues::Keywords { items, ends } => {
                let dict = dict.expect("keywords column has a dictionary");
                col.set_code_set(ord, batch::item_range(ends, k).map(|j| items.code(j, dict)));
            }
            ColumnValues::Text(v) => col.set_text(ord, v.get(k)),
        }
        if timed {
            s.retime(attr, ord, old);
        }
    }
}

/// Refuses a batch setting an attribute that only `RecordOrders` maintains.
fn check_writable(schema: &Schema, batch: &[CustomerPatch]) -> Result<()> {
    for (i, patch) in batch.iter().enumerate() {
        for (attr, _) in &patch.attrs {
            let def = schema.attr(*attr);
            if def.read_only {
                return Err(Error::invalid(
                    format!("customers[{i}].attributes[\"{}\"]", def.name),
                    "is maintained by RecordOrders and cannot be set",
                ));
            }
        }
    }
    Ok(())
}

/// A planned upsert item: the customer's ordinal if it exists.
struct Step {
    existing: Option<u32>,
}

fn not_found(key: &CustomerKey) -> Error {
    match key {
        CustomerKey::Id(id) => Error::NotFound(format!("customer `{id}` not found")),
        CustomerKey::Email(email) => Error::NotFound(format!("no customer with e-mail `{email}`")),
    }
}

/// The dedup key of an order id: 128 bits, so that distinct ids never collide in practice.
fn apply_order(s: &mut Shard, schema: &Schema, ord: u32, order: &OrderIn) {
    let i64_col = |s: &Shard, attr: AttrId| -> Option<i64> { s.column(attr).and_then(|c| c.get_i64(ord)) };
    let count = i64_col(s, purchase::ORDER_COUNT).unwrap_or(0) + 1;
    let total = i64_col(s, purchase::TOTAL_SPENT)
        .unwrap_or(0)
        .saturating_add(order.amount_minor);
    let promo = i64_col(s, purchase::PROMO_ORDER_COUNT).unwrap_or(0) + i64::from(order.promotion);
    let first = i64_col(s, purchase::FIRST_ORDER_AT).map_or(order.placed_at, |t| t.min(order.placed_at));
    let last = i64_col(s, purchase::LAST_ORDER_AT).map_or(order.placed_at, |t| t.max(order.placed_at));
    for (attr, x) in [
        (purchase::ORDER_COUNT, count),
        (purchase::TOTAL_SPENT, total),
        (purchase::AVG_ORDER_VALUE, total / count),
        (purchase::PROMO_ORDER_COUNT, promo),
        (purchase::FIRST_ORDER_AT, first),
        (purchase::LAST_ORDER_AT, last),
    ] {
        let old = if s.timed.is_empty() {
            None
        } else {
            s.time_day(attr, ord)
        };
        s.column_mut(attr, schema.attr(attr).ty).set_i64(ord, x);
        if !s.timed.is_empty() {
            s.retime(attr, ord, old);
        }
    }
    for (attr, items) in [
        (purchase::CATEGORIES_BOUGHT, &order.categories),
        (purchase::BRANDS_BOUGHT, &order.brands),
    ] {
        let def = schema.attr(attr);
        let dict = def.dict.as_deref().expect("keywords attribute has a dictionary");
        s.column_mut(attr, def.ty).add_keywords(ord, items, dict);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patch(id: &str, attrs: &[(&str, Value)], schema: &Schema) -> CustomerPatch {
        CustomerPatch {
            customer_id: id.into(),
            email: None,
            attrs: attrs
                .iter()
                .map(|(name, v)| (schema.get(name).unwrap().id, Some(v.clone())))
                .collect(),
        }
    }

    /// Defining an attribute logs it without holding the schema's lock: readers (every request
    /// that reads the schema) are not held up by the log's I/O.
    #[test]
    fn the_schema_stays_readable_while_an_attribute_is_logged() {
        let store = Arc::new(Store::new());
        let before = store.schema().len();
        let reader = store.clone();
        store
            .define_attribute("golf_handicap", AttrType::Float, "", &mut || {
                // Stands for the log's write: another thread reads the schema meanwhile.
                let reader = reader.clone();
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let _ = tx.send(reader.schema().len());
                });
                let seen = rx
                    .recv_timeout(std::time::Duration::from_secs(5))
                    .expect("the schema was locked while the change was logged");
                assert_eq!(seen, before, "the change shows only once logged");
                Ok(1)
            })
            .unwrap();
        assert_eq!(store.schema().len(), before + 1);
    }

    #[test]
    fn a_column_first_written_in_a_full_shard_keeps_no_links() {
        let mut s = Shard::default();
        s.live.insert_range(0..SHARD_SIZE as u32 - 1);
        assert!(
            s.column_mut(3, AttrType::Keyword).has_links(),
            "a shard still filling"
        );
        s.live.insert(SHARD_SIZE as u32 - 1);
        assert!(!s.column_mut(4, AttrType::Keyword).has_links(), "a full shard");
        assert!(
            s.column_mut(3, AttrType::Keyword).has_links(),
            "columns already there keep theirs"
        );
    }

    #[test]
    fn hashes_that_do_not_fit_the_batch_are_computed_again() {
        let store = Store::new();
        let schema = store.schema();
        let mut a = patch("a", &[], &schema);
        a.email = Some("A@x.fr".into());
        let b = patch("b", &[], &schema);
        let stale = KeyHashes::of(std::slice::from_ref(&b));
        let batch = [a, b];
        let out = store.upsert_known(&batch, &[], &stale, &mut no_log).unwrap();
        assert_eq!(out.created, 2);
        assert_eq!(store.ordinal_of_id("b"), Some(1));
        assert_eq!(store.ordinal_of_email("a@X.FR"), Some(0));
    }

    #[test]
    fn known_codes_follow_the_batch_order_across_dictionaries() {
        let store = Store::new();
        let schema = store.schema();
        let kw = |s: &str| Value::Keyword(s.into());
        let kws = |items: &[&str]| Value::Keywords(items.iter().map(|s| s.to_string()).collect());
        let seen = [patch(
            "a",
            &[("city", kw("Paris")), ("tags", kws(&["golf", "ski"]))],
            &schema,
        )];
        store.upsert(&seen, &mut no_log).unwrap();
        let batch = [
            patch(
                "b",
                &[
                    ("city", kw("Lyon")),
                    ("household_size", Value::Int(3)),
                    ("tags", kws(&["ski", "tennis", "golf"])),
                ],
                &schema,
            ),
            patch("c", &[("tags", kws(&[])), ("city", kw("Paris"))], &schema),
        ];
        let code = |attr: &str, s: &str| {
            let dict = schema.get(attr).unwrap().dict.clone().unwrap();
            dict.code(s).unwrap()
        };
        // Each patch's attributes in their order, each value's strings in theirs.
        let mut want = Vec::new();
        for p in &batch {
            for (attr, value) in &p.attrs {
                let def = schema.attr(*attr);
                for s in coded_strings(value.as_ref().unwrap()) {
                    want.push(match (def.name.as_ref(), s.as_ref()) {
                        (_, "Lyon" | "tennis") => dict::NO_CODE,
                        (name, s) => code(name, s),
                    });
                }
            }
        }
        assert_eq!(want.len(), 5);
        assert!(want.contains(&dict::NO_CODE) && want.iter().any(|&c| c != dict::NO_CODE));
        assert_eq!(known_codes(&schema, &batch), want);
    }
}
