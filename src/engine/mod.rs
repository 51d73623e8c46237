//! The engine: the store behind an async facade, with its write-ahead log.
//!
//! Store calls are synchronous and may take milliseconds (a batch of thousands of customers, a
//! segment evaluated over every customer), so writes run on one writer thread (they are serialized
//! by the store anyway) and long reads on the blocking pool; the async runtime stays free for
//! request-time reads. Every write is logged at the moment the store has validated
//! it, and its reply waits until the log is as durable as the fsync mode promises.

pub mod command;
pub mod sizes;
pub mod tasks;

use command::{Applied, Command, Journal, applied};

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::codec::Limits;
use crate::codec::wire::{CustomerBatch, Received};
use crate::columnar::schema::{AttrId, AttrType, Schema};
use crate::error::{Error, Result};
use crate::events::{Event, Page};
use crate::segment::family::{Family, FamilyInfo};
use crate::segment::registry::SegmentDef;
use crate::segment::rule::Rule;
use crate::snapshot::{self, SnapshotInfo};
use crate::store::batch::ColumnBatch;
use crate::store::input::{CustomerKey, CustomerPatch, OrderIn};
use crate::store::rfm::Reclassified;
use crate::store::segments::{Explanation, ListOutcome, MAX_LISTED_IDS, SegmentInfo, SegmentUpdate};
use crate::store::{CustomerRecord, KeyHashes, OrdersOutcome, Store, StoreStats, UpsertOutcome};
use crate::wal::{self, FsyncMode, ReplayStats, Wal};

/// The failure of one batch in a sequence: its index in the sequence and the error.
#[derive(Debug)]
pub struct BatchFailure {
    pub index: usize,
    pub error: Error,
}

/// Writes a store call's record to the log when the store asks, remembering its sequence.
pub struct Logger<'a> {
    wal: Option<&'a Wal>,
    last: Option<u64>,
    /// The write's time, which its record carries.
    time: i64,
    /// Whether the write's caller waits for its records to be durable as soon as it is applied:
    /// their sync is then asked for at once, to run while the write is applied.
    awaited: bool,
}

/// Records go to the log (sequence 0 without one).
impl Journal for Logger<'_> {
    fn append(&mut self, op: impl FnOnce() -> crate::persist::pb::record::Op) -> Result<u64> {
        self.append_with(|wal, time| wal.append(op(), time))
    }

    fn append_encoded(&mut self, op: &wal::EncodedOp) -> Result<u64> {
        self.append_with(|wal, time| wal.append_encoded(op, time))
    }
}

impl Logger<'_> {
    fn append_with(&mut self, append: impl FnOnce(&Wal, i64) -> Result<u64>) -> Result<u64> {
        match self.wal {
            Some(wal) => {
                let seq = append(wal, self.time)?;
                if self.awaited {
                    wal.request(seq);
                }
                self.last = Some(seq);
                Ok(seq)
            }
            None => Ok(0),
        }
    }
}

/// A batch of customers made ready for the writer thread: its patches, and its log record
/// encoded where the batch was parsed, so the one writer thread only appends it.
pub struct UpsertBatch {
    rows: BatchRows,
    record: wal::EncodedOp,
    /// Hashes of its ids and e-mails, computed where it was parsed.
    hashes: KeyHashes,
    /// Whether new customers given column by column may be left to the store's applier thread
    /// to write ([`Store::upsert_columns_queued`]): a load stream's batches, acknowledged once
    /// [`Engine::written`].
    queue: bool,
}

/// The customers of an [`UpsertBatch`], in the form they came in.
enum BatchRows {
    /// With the dictionary codes of their keyword strings, looked up where they were parsed.
    Patches {
        patches: Vec<CustomerPatch>,
        known: Vec<u32>,
    },
    /// Column by column, codes looked up too.
    Columns(ColumnBatch),
}

impl UpsertBatch {
    /// A batch whose log record was made beforehand: `record` must replay as `patches` (the
    /// customers as received, from which `patches` were read against `schema`).
    pub fn with_record(schema: &Schema, patches: Vec<CustomerPatch>, record: wal::EncodedOp) -> UpsertBatch {
        let known = crate::store::known_codes(schema, &patches);
        let hashes = KeyHashes::of(&patches);
        UpsertBatch {
            rows: BatchRows::Patches { patches, known },
            record,
            hashes,
            queue: false,
        }
    }

    /// A customer batch as received from a caller: its rows read against `schema` and the
    /// log record that holds it as received.
    pub fn received(schema: &Schema, msg: &CustomerBatch, limits: &Limits) -> Result<UpsertBatch> {
        Ok(match msg.received(schema, limits)? {
            (Received::Patches(patches), record) => UpsertBatch::with_record(schema, patches, record),
            (Received::Columns(columns), record) => UpsertBatch::columns(schema, columns, record),
        })
    }

    /// A batch given column by column, checked against `schema`; `record` must replay as it.
    pub fn columns(schema: &Schema, mut columns: ColumnBatch, record: wal::EncodedOp) -> UpsertBatch {
        columns.look_up_codes(schema);
        let hashes = KeyHashes::of_columns(&columns);
        UpsertBatch {
            rows: BatchRows::Columns(columns),
            record,
            hashes,
            queue: false,
        }
    }

    /// Applies the batch on the writer thread, all or nothing, appending its record (see
    /// `queue`: the caller then waits for [`Store::wait_written`] before acknowledging them).
    ///
    /// A batch handed over is taken out of `self`; the caller frees the rest.
    fn apply(&mut self, s: &Store, journal: &mut impl Journal) -> Result<UpsertOutcome> {
        let UpsertBatch {
            rows,
            record,
            hashes,
            queue,
        } = self;
        let queue = *queue;
        let mut append = || journal.append_encoded(record);
        match rows {
            BatchRows::Patches { patches, known } => s.upsert_known(patches, known, hashes, &mut append),
            BatchRows::Columns(columns) if queue => {
                s.upsert_columns_queued(std::mem::take(columns), hashes, &mut append)
            }
            BatchRows::Columns(columns) => s.upsert_columns(columns, hashes, &mut append),
        }
    }

    pub fn len(&self) -> usize {
        match &self.rows {
            BatchRows::Patches { patches, .. } => patches.len(),
            BatchRows::Columns(columns) => columns.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Writes that may wait for the writer thread by default; more are refused with
/// RESOURCE_EXHAUSTED.
pub const DEFAULT_MAX_QUEUED_WRITES: usize = 256;

/// A write's place in the writer's queue, given back when dropped.
pub struct WritePermit {
    queued: Arc<std::sync::atomic::AtomicUsize>,
    /// The bytes this write holds, counted in `held`.
    bytes: usize,
    held: Arc<std::sync::atomic::AtomicUsize>,
}

impl Drop for WritePermit {
    fn drop(&mut self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
        self.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// The default most bytes queued writes may hold: 1 GiB.
pub const DEFAULT_MAX_QUEUED_BYTES: usize = 1 << 30;

/// What a request holds while it is decoded and applied, per byte received: the received
/// message and what decoding keeps of it stay within six times its size (the bound the decoding
/// test checks).
pub const HELD_PER_BYTE: usize = 6;

/// A write to run on the writer thread.
type Job = Box<dyn FnOnce(&Store) + Send>;

/// The thread that runs every write, one after another: writes are serialized by the store
/// anyway, and one thread draining a queue avoids many pool threads contending for the lock.
fn writer_thread(store: Arc<Store>) -> std::sync::mpsc::Sender<Job> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("writer".into())
        .spawn(move || {
            crate::priority::bulk_thread();
            // Ends when every engine handle (and so every sender) is gone.
            while let Ok(job) = rx.recv() {
                // A bug in one write must not stop every later one; its caller gets an error.
                if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(&store))).is_err() {
                    tracing::error!("a write panicked on the writer thread");
                }
            }
        })
        .expect("start the writer thread");
    tx
}

/// Shared handle to everything the server holds.
#[derive(Clone)]
pub struct Engine {
    store: Arc<Store>,
    writer: std::sync::mpsc::Sender<Job>,
    wal: Arc<OnceLock<Arc<Wal>>>,
    ready: Arc<AtomicBool>,
    data_dir: Arc<OnceLock<PathBuf>>,
    /// One snapshot at a time; holds when the last one finished and the log bytes then.
    snapshots: Arc<tokio::sync::Mutex<(Instant, u64)>>,
    /// Set when the server begins to shut down: endless streams (watchers) end.
    closing: Arc<tokio::sync::watch::Sender<bool>>,
    /// When this server first saw orders with no RFM yet: the first scheduled run counts from it.
    schedule_anchor: Arc<parking_lot::Mutex<Option<i64>>>,
    /// Writes queued for or running on the writer thread, and the most allowed.
    queued: Arc<std::sync::atomic::AtomicUsize>,
    max_queued: Arc<std::sync::atomic::AtomicUsize>,
    /// Bytes the queued writes hold, and the most allowed.
    held_bytes: Arc<std::sync::atomic::AtomicUsize>,
    max_held_bytes: Arc<std::sync::atomic::AtomicUsize>,
    /// Queued writes dropped unapplied because their caller had gone by their turn.
    dropped_writes: Arc<std::sync::atomic::AtomicU64>,
    /// The last snapshot written: when, how long it took, its bytes.
    last_snapshot: Arc<parking_lot::Mutex<Option<(Instant, f64, u64)>>>,
    /// Each connected watcher's position (the last sequence handed to it).
    watchers: Arc<dashmap::DashMap<u64, Arc<std::sync::atomic::AtomicU64>>>,
    next_watcher: Arc<std::sync::atomic::AtomicU64>,
    /// Disk faults injected into the log it opens (tests and drills).
    faults: Arc<crate::faults::Faults>,
    /// Segments' sizes sampled over time.
    sizes: Arc<sizes::SizeHistory>,
}

/// A watcher's registration: its position, removed when the watch ends.
pub struct WatcherSlot {
    engine: Engine,
    id: u64,
    pub position: Arc<std::sync::atomic::AtomicU64>,
}

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        self.engine.watchers.remove(&self.id);
    }
}

impl Default for Engine {
    fn default() -> Self {
        Engine::with_store(Arc::new(Store::new()))
    }
}

impl Engine {
    /// An in-memory engine with no log, ready at once (tests, benches, embedders).
    pub fn new() -> Engine {
        Engine::default()
    }

    /// An in-memory engine over an existing store.
    pub fn with_store(store: Arc<Store>) -> Engine {
        store.start_applier();
        Engine {
            writer: writer_thread(store.clone()),
            store,
            wal: Arc::new(OnceLock::new()),
            ready: Arc::new(AtomicBool::new(true)),
            data_dir: Arc::new(OnceLock::new()),
            snapshots: Arc::new(tokio::sync::Mutex::new((Instant::now(), 0))),
            closing: Arc::new(tokio::sync::watch::Sender::new(false)),
            schedule_anchor: Arc::default(),
            queued: Arc::default(),
            max_queued: Arc::new(std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_QUEUED_WRITES)),
            held_bytes: Arc::default(),
            max_held_bytes: Arc::new(std::sync::atomic::AtomicUsize::new(DEFAULT_MAX_QUEUED_BYTES)),
            dropped_writes: Arc::default(),
            last_snapshot: Arc::default(),
            watchers: Arc::default(),
            next_watcher: Arc::default(),
            faults: Arc::default(),
            sizes: Arc::default(),
        }
    }

    /// The same engine with `faults` injected into its log, event log and write admission
    /// (before [`Engine::recover`]).
    pub fn with_faults(mut self, faults: Arc<crate::faults::Faults>) -> Engine {
        self.faults = faults;
        self
    }

    /// Sets how many writes may wait for the writer thread before more are refused.
    pub fn set_max_queued_writes(&self, n: usize) {
        self.max_queued.store(n.max(1), Ordering::Relaxed);
    }

    /// Writes queued for or running on the writer thread.
    pub fn queued_writes(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Queued writes dropped unapplied since start because their caller had gone (cancelled,
    /// or past its deadline) by their turn.
    pub fn dropped_writes(&self) -> u64 {
        self.dropped_writes.load(Ordering::Relaxed)
    }

    /// The last snapshot written by this process: (when, seconds it took, bytes).
    pub fn last_snapshot(&self) -> Option<(Instant, f64, u64)> {
        *self.last_snapshot.lock()
    }

    /// Registers a watcher starting at `position`; it is forgotten when the slot is dropped.
    pub fn watcher(&self, position: u64) -> WatcherSlot {
        let id = self.next_watcher.fetch_add(1, Ordering::Relaxed);
        let position = Arc::new(std::sync::atomic::AtomicU64::new(position));
        self.watchers.insert(id, position.clone());
        WatcherSlot {
            engine: self.clone(),
            id,
            position,
        }
    }

    /// Connected watchers, and how many published events the furthest behind has yet to get.
    pub fn watcher_lag(&self) -> (usize, u64) {
        let published = self.store.events().published();
        let min = self
            .watchers
            .iter()
            .map(|w| w.value().load(Ordering::Relaxed))
            .min();
        (
            self.watchers.len(),
            min.map_or(0, |m| published.saturating_sub(m)),
        )
    }

    /// Tells endless streams that the server is shutting down.
    pub fn begin_close(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves once the server begins to shut down.
    pub async fn closing(&self) {
        let mut rx = self.closing.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// An engine that refuses calls until [`Engine::recover`] has run.
    pub fn recovering() -> Engine {
        Engine::recovering_with(Arc::new(Store::new()))
    }

    /// [`Engine::recovering`] over `store` (one with its own clock, say).
    pub fn recovering_with(store: Arc<Store>) -> Engine {
        let e = Engine::with_store(store);
        e.ready.store(false, Ordering::Release);
        e
    }

    /// Segments' sizes sampled over time ([`Engine::sample_sizes`]).
    pub fn size_history(&self) -> &sizes::SizeHistory {
        &self.sizes
    }

    /// Records every segment's size now in the size history.
    pub fn sample_sizes(&self) {
        let reg = self.store.registry();
        // Counted before the history's lock is taken: readers of it do not wait for the counts.
        let sizes: Vec<(String, u64)> = reg
            .in_order()
            .map(|e| (e.def.id.clone(), self.store.segment_size(e.slot)))
            .collect();
        self.sizes.record(self.store.clock_micros(), sizes);
    }

    /// Whether recovery is done and calls are served.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Loads the newest usable snapshot of `data_dir`, replays the log after it, then opens the
    /// log for appending. Blocking. Calls are let in by [`Engine::open_for_calls`].
    pub fn recover(&self, data_dir: &Path, mode: FsyncMode, segment_bytes: u64) -> Result<ReplayStats> {
        let started = Instant::now();
        let _ = self.data_dir.set(data_dir.to_path_buf());
        let after = match snapshot::load(data_dir)? {
            Some(restored) => {
                let sequence = restored.sequence;
                let read = started.elapsed();
                self.store.restore(restored)?;
                tracing::info!(
                    sequence,
                    seconds = started.elapsed().as_secs_f64(),
                    read_seconds = read.as_secs_f64(),
                    "snapshot loaded"
                );
                sequence
            }
            None => 0,
        };
        let events = self.store.events();
        events.set_faults(self.faults.clone());
        events.open(&data_dir.join("events"), self.store.now().micros)?;
        let dir = data_dir.join("wal");
        let dir = dir.as_path();
        let stats = wal::replay(dir, after, |rec| command::replay(&self.store, rec))?;
        events.recovered(stats.last_sequence)?;
        let log = Wal::open_with_faults(
            dir,
            stats.last_sequence + 1,
            segment_bytes,
            mode,
            self.faults.clone(),
        )?;
        let _ = self.wal.set(log);
        tracing::info!(
            files = stats.files,
            skipped_files = stats.skipped_files,
            records = stats.records,
            bytes = stats.bytes,
            torn_bytes = stats.torn_bytes,
            last_sequence = stats.last_sequence,
            customers = self.store.customer_count(),
            segments = self.store.registry().len(),
            seconds = started.elapsed().as_secs_f64(),
            "recovered"
        );
        Ok(stats)
    }

    /// Writes a snapshot now (one at a time); `None` for an engine without a data directory.
    pub async fn snapshot(&self) -> Result<Option<SnapshotInfo>> {
        let Some(dir) = self.data_dir.get().cloned() else {
            return Ok(None);
        };
        let mut last = self.snapshots.lock().await;
        let (store, wal, disk) = (
            self.store.clone(),
            self.wal.get().cloned(),
            self.faults.disk().clone(),
        );
        let info = tokio::task::spawn_blocking(move || snapshot::take(&store, wal.as_deref(), &dir, &disk))
            .await
            .map_err(|e| Error::Internal(format!("snapshot task failed: {e}")))??;
        *last = (Instant::now(), self.wal.get().map_or(0, |w| w.bytes_written()));
        *self.last_snapshot.lock() = Some((Instant::now(), info.duration.as_secs_f64(), info.bytes));
        tracing::info!(
            sequence = info.sequence,
            bytes = info.bytes,
            seconds = info.duration.as_secs_f64(),
            path = %info.path.display(),
            "snapshot written"
        );
        Ok(Some(info))
    }

    /// Whether a snapshot is due: `interval` passed with writes since the last, or `wal_bytes`
    /// of log written since the last (zero turns a trigger off).
    pub async fn snapshot_due(&self, interval: std::time::Duration, wal_bytes: u64) -> bool {
        let Some(wal) = self.wal.get() else { return false };
        let (at, bytes_then) = *self.snapshots.lock().await;
        let since = wal.bytes_written().saturating_sub(bytes_then);
        (!interval.is_zero() && at.elapsed() >= interval && since > 0)
            || (wal_bytes > 0 && since >= wal_bytes)
    }

    /// Syncs the logs for a clean shutdown.
    pub fn close(&self) -> Result<()> {
        let events = self.store.events().sync();
        match self.wal.get() {
            Some(wal) => wal.close().and(events),
            None => events,
        }
    }

    /// The log, once recovery opened it.
    pub fn wal(&self) -> Option<&Arc<Wal>> {
        self.wal.get()
    }

    /// A follower's snapshot (see [`Store::follow_snapshot`]). Blocking: writes wait for it.
    pub fn follow_snapshot(&self, segment_ids: &[String]) -> Result<crate::store::follow::FollowSnapshot> {
        let wal = self.wal().cloned();
        self.store()
            .follow_snapshot(segment_ids, &|| wal.as_ref().map_or(0, |w| w.last_sequence()))
    }

    /// The follow feed replicas read ([`crate::follow`]).
    pub fn feed(&self) -> &Arc<crate::follow::Feed> {
        self.store().feed()
    }

    /// The store, for synchronous reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    // Request-time checks: answered in place on the caller's task (no queue, no blocking
    // thread), each a bitmap lookup under one shard's read lock.

    /// Whether customer `customer_id` is in segment `segment_id`; `None` for an unknown customer.
    #[inline]
    pub fn is_member(&self, customer_id: &str, segment_id: &str) -> Result<Option<bool>> {
        self.store.is_member(customer_id, segment_id)
    }

    /// One customer against several segments, in the order asked; `None` for an unknown customer.
    #[inline]
    pub fn check_memberships(&self, customer_id: &str, segment_ids: &[String]) -> Result<Option<Vec<bool>>> {
        self.store.check_memberships(customer_id, segment_ids)
    }

    /// Every customer against every segment, customer by customer, and which customers are known.
    #[inline]
    pub fn batch_check(
        &self,
        customer_ids: &[String],
        segment_ids: &[String],
    ) -> Result<(Vec<bool>, Vec<bool>)> {
        self.store.batch_check(customer_ids, segment_ids)
    }

    /// The segments customer `customer_id` is in; `None` for an unknown customer.
    #[inline]
    pub fn customer_segments(&self, customer_id: &str) -> Option<Vec<String>> {
        self.store.customer_segments(customer_id)
    }

    /// The segment definitions in force.
    pub fn registry(&self) -> Arc<crate::segment::registry::Registry> {
        self.store.registry()
    }

    /// The number of members of segment `segment_id`.
    pub fn segment_size(&self, segment_id: &str) -> Result<u64> {
        let slot = self
            .store
            .registry()
            .slot(segment_id)
            .ok_or_else(|| Error::NotFound(format!("segment `{segment_id}` not found")))?;
        Ok(self.store.segment_size(slot))
    }

    /// The sequence of the last membership event published to watchers.
    pub fn events_published(&self) -> u64 {
        self.store.events().published()
    }

    pub fn schema(&self) -> Arc<Schema> {
        self.store.schema()
    }

    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Store) -> T + Send + 'static) -> Result<T> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| Error::Internal(format!("store task failed: {e}")))
    }

    /// Applies `command` on the writer thread, then waits for its record to be durable.
    async fn write(&self, command: Command) -> Result<Applied> {
        self.write_made(self.admit()?, move |_| command).await
    }

    /// [`Engine::write`] of the command `make` builds on the writer thread (from the state the
    /// command applies to: the clock's last flips, the time), in the place `permit` holds.
    async fn write_made(
        &self,
        permit: WritePermit,
        make: impl FnOnce(&Store) -> Command + Send + 'static,
    ) -> Result<Applied> {
        let (out, last) = self
            .apply_queued(
                move |s, log| {
                    let mut command = make(s);
                    let out = command.apply(s, log);
                    command.free();
                    out
                },
                permit,
                true,
            )
            .await?;
        self.durable(last).await?;
        out
    }

    /// A place among the writes the server takes on at once, or RESOURCE_EXHAUSTED when they
    /// are all taken: under overload a write is refused at once rather than waiting behind an
    /// ever longer line. Taken before a request's batch is even parsed, so a refusal costs next
    /// to nothing.
    pub fn admit(&self) -> Result<WritePermit> {
        self.admit_holding(0)
    }

    /// [`Engine::admit`] for a write that holds `bytes` while it waits and runs: refused too
    /// when the queued writes would hold more than `--max-queued-bytes`, unless it would be
    /// alone (a write larger than the budget still runs on an idle server).
    pub fn admit_holding(&self, bytes: usize) -> Result<WritePermit> {
        let max = self.max_queued.load(Ordering::Relaxed);
        let max_bytes = self.max_held_bytes.load(Ordering::Relaxed);
        let permit = self.admit_always(bytes);
        if permit.queued.load(Ordering::Acquire) > max || self.faults.take_busy() {
            return Err(Error::ResourceExhausted(format!(
                "the server is busy: {max} writes are queued; retry with backoff"
            )));
        }
        let held = permit.held.load(Ordering::Acquire);
        if held > max_bytes && held > bytes {
            return Err(Error::ResourceExhausted(format!(
                "the server is busy: queued writes hold {held} bytes, more than {max_bytes}; \
                 retry with backoff"
            )));
        }
        Ok(permit)
    }

    /// Sets the most bytes queued writes may hold (`--max-queued-bytes`).
    pub fn set_max_queued_bytes(&self, n: usize) {
        self.max_held_bytes.store(n.max(1), Ordering::Relaxed);
    }

    /// A place among the writes whatever the load (the server's own writes: time flips).
    fn admit_always(&self, bytes: usize) -> WritePermit {
        self.queued.fetch_add(1, Ordering::AcqRel);
        self.held_bytes.fetch_add(bytes, Ordering::AcqRel);
        WritePermit {
            queued: self.queued.clone(),
            bytes,
            held: self.held_bytes.clone(),
        }
    }

    /// Queues a write on the writer thread and returns once it is applied, with the sequence
    /// of its last record; it is acknowledged only after [`Engine::durable`] of that sequence.
    /// `awaited`: the caller waits for that at once (its sync is asked for as its records are
    /// appended); a stream applying batch after batch, acknowledged at its end, does not. A
    /// write whose caller has gone by the time its turn comes (the request was cancelled or its
    /// deadline passed) is dropped unapplied: nobody would be told it happened.
    async fn apply_queued<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store, &mut Logger<'_>) -> Result<T> + Send + 'static,
        permit: WritePermit,
        awaited: bool,
    ) -> Result<(Result<T>, Option<u64>)> {
        let wal = self.wal.get().cloned();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (faults, dropped) = (self.faults.clone(), self.dropped_writes.clone());
        let job: Job = Box::new(move |s| {
            faults.wait_while_writes_held();
            if tx.is_closed() {
                dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let time = s.clock_micros();
            let mut logger = Logger {
                wal: wal.as_deref(),
                last: None,
                time,
                awaited,
            };
            // One time for the whole write: its rules' "now", its events and its record.
            struct Reset<'a>(&'a Store);
            impl Drop for Reset<'_> {
                fn drop(&mut self) {
                    self.0.set_write_time(None);
                }
            }
            s.set_write_time(Some(time));
            let _reset = Reset(s);
            let out = f(s, &mut logger);
            // The place is free once the write is done, before its caller hears of it.
            drop(permit);
            let _ = tx.send((out, logger.last));
        });
        self.writer
            .send(job)
            .map_err(|_| Error::Unavailable("the writer thread has stopped".into()))?;
        rx.await
            .map_err(|_| Error::Internal("a write panicked on the writer thread".into()))
    }

    /// Waits until the log record `sequence` (from a write applied on the writer thread) is durable. The store logs
    /// only once a change is validated, so every logged record is applied.
    /// Its membership events are published to watchers then.
    pub async fn durable(&self, sequence: Option<u64>) -> Result<()> {
        match (self.wal.get(), sequence) {
            (Some(wal), Some(seq)) => {
                wal.durable(seq).await?;
                self.store.events().durable(seq);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Upserts one batch, all or nothing.
    pub async fn upsert(&self, batch: Vec<CustomerPatch>) -> Result<UpsertOutcome> {
        applied!(self.write(Command::Upsert(batch)).await?, Applied::Upserted)
    }

    /// [`Engine::upsert`] of a batch prepared after taking its place with [`Engine::admit`].
    pub async fn upsert_admitted(&self, permit: WritePermit, batch: UpsertBatch) -> Result<UpsertOutcome> {
        let out = self
            .write_made(permit, move |_| Command::UpsertBatch(batch))
            .await?;
        applied!(out, Applied::Upserted)
    }

    /// Upserts several batches in order, each all or nothing, stopping at the first that fails.
    /// Returns once they are checked and logged, with the total of the batches applied, the
    /// failure if any, and the log sequence to pass to [`Engine::durable`] before acknowledging
    /// them; batches of new customers may still be being written by the store's applier thread
    /// until [`Engine::written`] returns, which the acknowledgement waits for too.
    pub async fn upsert_batches(
        &self,
        batches: Vec<UpsertBatch>,
    ) -> Result<(UpsertOutcome, Option<BatchFailure>, Option<u64>)> {
        let (out, last) = self
            .apply_queued(
                move |s, log| {
                    let mut total = UpsertOutcome::default();
                    let mut failure = None;
                    let mut batches: Vec<Command> = batches
                        .into_iter()
                        .map(|mut b| {
                            b.queue = true;
                            Command::UpsertBatch(b)
                        })
                        .collect();
                    for (index, batch) in batches.iter_mut().enumerate() {
                        match batch.apply(s, log).and_then(|o| applied!(o, Applied::Upserted)) {
                            Ok(o) => {
                                total.created += o.created;
                                total.updated += o.updated;
                            }
                            Err(error) => {
                                failure = Some(BatchFailure { index, error });
                                break;
                            }
                        }
                    }
                    crate::priority::discard(batches);
                    Ok((total, failure))
                },
                // Acknowledged at the stream's end: its batches are not synced one by one.
                self.admit()?,
                false,
            )
            .await?;
        let (total, failure) = out?;
        Ok((total, failure, last))
    }

    /// Waits until the customers of every batch [`Engine::upsert_batches`] applied so far are
    /// written, so that every reader sees them.
    pub async fn written(&self) -> Result<()> {
        let (out, _) = self
            .apply_queued(
                |s, _| {
                    s.wait_written();
                    Ok(())
                },
                self.admit_always(0),
                false,
            )
            .await?;
        out
    }

    pub async fn delete(&self, key: CustomerKey) -> Result<String> {
        applied!(self.write(Command::DeleteCustomer(key)).await?, Applied::Deleted)
    }

    pub async fn record_orders(&self, orders: Vec<OrderIn>) -> Result<OrdersOutcome> {
        applied!(self.write(Command::RecordOrders(orders)).await?, Applied::Orders)
    }

    pub fn get_customer(&self, key: &CustomerKey) -> Result<CustomerRecord> {
        self.store.get_customer(key)
    }

    pub async fn define_attribute(
        &self,
        name: String,
        ty: AttrType,
        description: String,
    ) -> Result<Arc<Schema>> {
        let command = Command::DefineAttribute {
            name,
            ty,
            description,
        };
        applied!(self.write(command).await?, Applied::Schema)
    }

    /// Ends recovery: applies the time flips due while the server was down (re-evaluating every
    /// time-dependent segment), then lets calls in, so that no answer is stale by more than a
    /// tick. The flips failing (a failed log) is reported, and calls are let in regardless.
    pub async fn open_for_calls(&self) -> Result<()> {
        let flipped = self.advance_time().await;
        self.ready.store(true, Ordering::Release);
        flipped.map(|_| ())
    }

    /// Applies the time flips due since the last advance (every customer's, the first time
    /// after a start); returns the number of membership changes.
    pub async fn advance_time(&self) -> Result<u64> {
        let out = self
            .write_made(self.admit_always(0), |s| Command::AdvanceTime {
                since: s.time_applied(),
            })
            .await?;
        applied!(out, Applied::Flips)
    }

    pub async fn create_family(&self, family: Family) -> Result<FamilyInfo> {
        applied!(self.write(Command::CreateFamily(family)).await?, Applied::Family)
    }

    pub async fn delete_family(&self, id: String) -> Result<()> {
        self.write(Command::DeleteFamily(id)).await.map(drop)
    }

    pub async fn list_families(&self) -> Result<Vec<FamilyInfo>> {
        self.blocking(|s| s.list_families()).await
    }

    /// Scores RFM as of `as_of` (now when `None`) and re-evaluates what reads the scores.
    pub async fn reclassify(&self, as_of: Option<i64>) -> Result<Reclassified> {
        let out = self
            .write_made(self.admit()?, move |s| Command::Reclassify {
                as_of: as_of.unwrap_or_else(|| s.now().micros),
            })
            .await?;
        applied!(out, Applied::Reclassified)
    }

    /// Whether a scheduled reclassification is due: `every` passed since the last one, or, before
    /// the first, since this server first saw orders; never when `every` is zero.
    pub fn reclassify_due(&self, every: std::time::Duration) -> bool {
        if every.is_zero() {
            return false;
        }
        let now = self.store.now().micros;
        let since = match self.reclassified_at() {
            Some(at) => at,
            None if self.store.orders_recorded() == 0 => return false,
            None => *self.schedule_anchor.lock().get_or_insert(now),
        };
        now.saturating_sub(since) >= every.as_micros() as i64
    }

    /// When the RFM family was last reclassified; `None` before the first time.
    pub fn reclassified_at(&self) -> Option<i64> {
        self.store
            .registry()
            .family(crate::segment::family::RFM_FAMILY)
            .and_then(|f| f.reclassified_at)
    }

    pub async fn stats(&self) -> Result<StoreStats> {
        self.blocking(|s| s.stats()).await
    }

    pub async fn create_segment(
        &self,
        def: SegmentDef,
        include: Vec<String>,
        exclude: Vec<String>,
    ) -> Result<SegmentInfo> {
        let command = Command::CreateSegment {
            def,
            include,
            exclude,
        };
        applied!(self.write(command).await?, Applied::Segment)
    }

    pub async fn update_segment(&self, id: String, update: SegmentUpdate) -> Result<SegmentInfo> {
        applied!(
            self.write(Command::UpdateSegment { id, update }).await?,
            Applied::Segment
        )
    }

    pub async fn delete_segment(&self, id: String) -> Result<()> {
        self.write(Command::DeleteSegment(id)).await.map(drop)
    }

    pub async fn segment_info(&self, id: String) -> Result<SegmentInfo> {
        self.blocking(move |s| s.segment_info(&id, MAX_LISTED_IDS))
            .await?
    }

    pub async fn list_segments(&self) -> Result<Vec<(SegmentDef, u64)>> {
        self.blocking(|s| s.list_segments()).await
    }

    pub async fn preview(&self, rule: Rule, as_of: Option<i64>, sample: usize) -> Result<(u64, Vec<String>)> {
        self.blocking(move |s| s.preview(&rule, as_of, sample)).await?
    }

    pub async fn overlap(&self, ids: Vec<String>) -> Result<Vec<(usize, usize, u64)>> {
        self.blocking(move |s| s.overlap(&ids)).await?
    }

    /// Puts customers on a segment's include (`add`) or exclude list, for the marketing
    /// activity `activity` or a member load (`None`).
    pub async fn set_listed(
        &self,
        segment_id: String,
        keys: Vec<CustomerKey>,
        add: bool,
        activity: Option<String>,
    ) -> Result<ListOutcome> {
        let command = Command::SetListed {
            segment_id,
            keys,
            add,
            activity,
        };
        applied!(self.write(command).await?, Applied::Listed)
    }

    pub async fn export_page(
        &self,
        id: String,
        from: u32,
        limit: usize,
        fields: Vec<AttrId>,
    ) -> Result<(Vec<CustomerRecord>, Option<u32>)> {
        self.blocking(move |s| s.export_page(&id, from, limit, &fields))
            .await?
    }

    pub fn explain(&self, customer_id: &str, segment_id: &str) -> Result<Explanation> {
        self.store.explain(customer_id, segment_id)
    }

    /// Membership events after `after` for segments `filter` (all when empty); see
    /// [`EventLog::read`](crate::events::EventLog::read).
    pub fn read_events(&self, after: u64, filter: &[String], max: usize, max_scan: usize) -> Result<Page> {
        let store = &self.store;
        store
            .events()
            .read(after, filter, max, max_scan, &|ord| store.id_at(ord))
    }

    /// Waits until an event after `after` is published.
    pub async fn events_after(&self, after: u64) {
        self.store.events().wait_after(after).await
    }

    /// A customer's retained membership events (in `segment_id` only, when given), oldest first,
    /// with the oldest sequence retained.
    pub async fn membership_history(
        &self,
        customer_id: String,
        segment_id: Option<String>,
    ) -> Result<(Vec<Event>, u64)> {
        self.blocking(move |s| {
            let events = s.events();
            if let Some(id) = &segment_id
                && s.registry().slot(id).is_none()
                && !events.knows_segment(id)
            {
                return Err(Error::NotFound(format!("segment `{id}` not found")));
            }
            let ord = s.ordinal_of_id(&customer_id);
            let history = events.history(&customer_id, ord, segment_id.as_deref(), &|o| s.id_at(o));
            if ord.is_none() && history.is_empty() {
                return Err(Error::NotFound(format!(
                    "customer `{customer_id}` not found (and no retained event names it)"
                )));
            }
            Ok((history, events.oldest()))
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::columnar::value::Value;

    fn patch(id: &str) -> CustomerPatch {
        CustomerPatch {
            customer_id: id.into(),
            email: None,
            attrs: vec![(3, Some(Value::Keyword("F".into())))],
        }
    }

    /// A queued write whose caller has gone (cancelled, or past its deadline) is not applied, and
    /// gives its place back.
    #[tokio::test]
    async fn a_write_whose_caller_has_gone_is_dropped() {
        let engine = Engine::new();
        let (release, blocked) = std::sync::mpsc::channel::<()>();
        engine
            .writer
            .send(Box::new(move |_| {
                let _ = blocked.recv();
            }))
            .unwrap();
        let queued = {
            let engine = engine.clone();
            tokio::spawn(async move { engine.upsert(vec![patch("gone")]).await })
        };
        while engine.queued_writes() == 0 {
            tokio::task::yield_now().await;
        }
        queued.abort();
        assert!(queued.await.unwrap_err().is_cancelled());
        release.send(()).unwrap();
        engine.upsert(vec![patch("after")]).await.unwrap();
        assert!(engine.store().ordinal_of_id("gone").is_none());
        assert!(engine.store().ordinal_of_id("after").is_some());
        assert_eq!(engine.queued_writes(), 0);
    }

    /// Admission counts the bytes queued writes hold: past the budget a write is refused, unless
    /// it would be alone, and the bytes come back when a write ends.
    #[test]
    fn admission_counts_the_bytes_queued_writes_hold() {
        let engine = Engine::new();
        engine.set_max_queued_bytes(1_000_000);
        let first = engine.admit_holding(600_000).unwrap();
        let err = engine.admit_holding(600_000).err().expect("over the budget");
        assert!(
            matches!(&err, Error::ResourceExhausted(m) if m.contains("1200000 bytes")),
            "{err}"
        );
        assert!(engine.admit_holding(300_000).is_ok(), "within the budget");
        drop(first);
        assert_eq!(engine.held_bytes.load(Ordering::Relaxed), 0);
        // Alone, a write larger than the budget runs.
        let big = engine.admit_holding(5_000_000).unwrap();
        assert!(engine.admit_holding(1).is_err());
        drop(big);
        assert_eq!(engine.queued_writes(), 0);
    }

    /// A full disk refuses the write with UNAVAILABLE, applies nothing, leaves the log readable,
    /// and writes resume when the disk has room again.
    #[tokio::test]
    async fn a_failed_append_refuses_the_write_and_applies_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::recovering();
        engine.recover(dir.path(), FsyncMode::Always, 1 << 20).unwrap();
        engine.upsert(vec![patch("before")]).await.unwrap();
        engine.wal().unwrap().inject_append_failures(1);
        let err = engine.upsert(vec![patch("refused")]).await.unwrap_err();
        assert!(
            matches!(&err, Error::Unavailable(m) if m.contains("no space left")),
            "{err}"
        );
        assert!(
            engine.store().ordinal_of_id("refused").is_none(),
            "nothing applied"
        );
        assert_eq!(engine.store().customer_count(), 1);
        // Reads go on; writes resume.
        assert!(engine.get_customer(&CustomerKey::Id("before".into())).is_ok());
        engine.upsert(vec![patch("after")]).await.unwrap();
        engine.close().unwrap();

        let again = Engine::recovering();
        let stats = again.recover(dir.path(), FsyncMode::Always, 1 << 20).unwrap();
        assert_eq!(stats.records, 2);
        assert!(again.store().ordinal_of_id("before").is_some());
        assert!(again.store().ordinal_of_id("after").is_some());
        assert!(again.store().ordinal_of_id("refused").is_none());
    }

    /// Events the process never wrote out are made again from the log on restart, with the
    /// same sequences, customers and times.
    #[tokio::test]
    async fn lost_events_are_rebuilt_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::recovering();
        engine.recover(dir.path(), FsyncMode::Always, 1 << 20).unwrap();
        let def = SegmentDef {
            id: "women".into(),
            name: "women".into(),
            rule: Some(crate::segment::text::parse(r#"gender = "F""#).unwrap()),
            ..SegmentDef::default()
        };
        engine.create_segment(def, vec![], vec![]).await.unwrap();
        engine.upsert(vec![patch("a"), patch("b")]).await.unwrap();
        engine.delete(CustomerKey::Id("a".into())).await.unwrap();
        let before = engine.read_events(0, &[], 100, 100).unwrap().events;
        assert_eq!(before.len(), 3);
        engine.close().unwrap();
        // As if the process died before the event log reached the disk.
        for f in std::fs::read_dir(dir.path().join("events")).unwrap() {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(f.unwrap().path())
                .unwrap();
            f.set_len(8).unwrap();
        }
        let again = Engine::recovering();
        again.recover(dir.path(), FsyncMode::Always, 1 << 20).unwrap();
        let after = again.read_events(0, &[], 100, 100).unwrap().events;
        assert_eq!(after, before);
        assert_eq!(&*after[2].customer_id, "a", "the erased customer keeps its id");
    }
}
