//! The applier thread: a bulk load's new customers written to the shards behind the writer.
//!
//! One thread, the writer, runs every write in order. For a batch of a `LoadCustomers` stream
//! whose customers are all new, about half of its work (writing their columns, indexing their
//! keyword values, refreshing their segments) needs nothing the next batch's checks read: the
//! writer checks the batch, logs it, gives its customers ordinals and maps their ids and e-mails,
//! then hands the rest to the applier thread and goes on with the next batch while the applier
//! writes this one, so the two halves run on two cores.
//!
//! What readers see does not change: a customer is written whole under its shard's lock, and its
//! id and e-mail are written in the same hold as its columns, so a lookup that finds the
//! customer in a map but not yet in the shard does not find it (the map only gives candidates,
//! confirmed against the shard's key). The writer's own checks of the next batches read the keys
//! of customers handed over but maybe not written yet from the batches themselves (`Pending`).
//! Every other write (an update, a delete, an order, a segment, a snapshot's cut) first waits
//! until every batch handed over is written ([`Store::lock_writer`]), so it runs on a store as if
//! each write had been applied whole in log order; membership events are committed by the applier
//! in log order too.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{SyncSender, TrySendError};

use parking_lot::{Condvar, Mutex};

use crate::columnar::schema::Schema;
use crate::error::Result;
use crate::events::Noted;
use crate::segment::eval::Now;
use crate::segment::registry::Registry;
use crate::store::batch::{ColumnBatch, Rows};
use crate::store::{KeyHashes, Store, UpsertOutcome, WriterState, Written, shard_of, shard_runs};

/// Batches the writer may hand over before it waits for the applier: enough to ride out a
/// batch that takes the applier longer, few enough that the checks of later batches look
/// through few pending ones.
const QUEUE: usize = 4;

/// A batch of new customers, checked, logged, given ordinals and mapped, for the applier to
/// write.
pub(crate) struct Fresh {
    /// Its place among the batches handed over (from 1).
    seq: u64,
    batch: ColumnBatch,
    /// Each row's ordinal.
    ords: Vec<u32>,
    /// `(ordinal, row)` pairs by ordinal.
    by_ord: Vec<(u32, u32)>,
    /// Its log record's sequence.
    lsn: u64,
    now: Now,
    reg: Arc<Registry>,
    schema: Arc<Schema>,
}

impl std::fmt::Debug for Fresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fresh")
            .field("seq", &self.seq)
            .field("customers", &self.ords.len())
            .field("lsn", &self.lsn)
            .finish()
    }
}

/// Batches handed to the applier and perhaps not yet written, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Pending(VecDeque<Arc<Fresh>>);

impl Pending {
    /// The pending batch holding new customer `ord`, and its row there.
    pub(crate) fn find(&self, ord: u32) -> Option<(&ColumnBatch, usize)> {
        self.0.iter().rev().find_map(|f| {
            let (first, last) = (f.by_ord.first()?.0, f.by_ord.last()?.0);
            if !(first..=last).contains(&ord) {
                return None;
            }
            let at = f.by_ord.binary_search_by_key(&ord, |&(o, _)| o).ok()?;
            Some((&f.batch, f.by_ord[at].1 as usize))
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The applier thread's queue, and how far it got.
pub(crate) struct Applier {
    queue: SyncSender<Arc<Fresh>>,
    /// The last batch written (batches are written in the order handed over).
    written: Mutex<u64>,
    progress: Condvar,
}

impl Applier {
    fn written(&self) -> u64 {
        *self.written.lock()
    }

    fn mark_written(&self, seq: u64) {
        *self.written.lock() = seq;
        self.progress.notify_all();
    }

    /// Waits until the batches handed over up to `seq` are written.
    fn wait_for(&self, seq: u64) {
        let mut written = self.written.lock();
        while *written < seq {
            self.progress.wait(&mut written);
        }
    }
}

impl Store {
    /// Starts the applier thread, so that [`Store::upsert_columns_queued`] hands new customers'
    /// writing over to it. Without it, that writes them at once. The thread ends with the store.
    pub fn start_applier(self: &Arc<Self>) {
        let (queue, batches) = std::sync::mpsc::sync_channel::<Arc<Fresh>>(QUEUE);
        let applier = Applier {
            queue,
            written: Mutex::new(0),
            progress: Condvar::new(),
        };
        if self.applier.set(applier).is_err() {
            return;
        }
        let store = Arc::downgrade(self);
        let started = std::thread::Builder::new().name("applier".into()).spawn(move || {
            crate::priority::bulk_thread();
            let mut noted = Noted::default();
            // Ends when the store, and so the queue's sender, is dropped.
            while let Ok(fresh) = batches.recv() {
                let Some(store) = store.upgrade() else { break };
                let wrote = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    store.write_fresh(&fresh, &mut noted)
                }));
                if wrote.is_err() {
                    noted.clear();
                    tracing::error!(lsn = fresh.lsn, "writing a batch of new customers panicked");
                }
                // Marked even after a panic: writes waiting for it must not wait forever.
                if let Some(applier) = store.applier.get() {
                    applier.mark_written(fresh.seq);
                }
                // Freed here: a batch given as columns is a few buffers, not a string each.
            }
        });
        if let Err(e) = started {
            tracing::warn!(
                "could not start the applier thread ({e}); new customers are written by the writer"
            );
        }
    }

    /// Waits until every batch handed to the applier is written. Called with the writer lock
    /// held: nothing is handed over meanwhile.
    pub(crate) fn settle(&self, w: &mut WriterState) {
        if w.pending.is_empty() {
            return;
        }
        if let Some(applier) = self.applier.get() {
            applier.wait_for(w.handed);
        }
        w.pending.0.clear();
    }

    /// Forgets the pending batches already written.
    fn prune(&self, w: &mut WriterState) {
        let Some(applier) = self.applier.get() else { return };
        if w.pending.is_empty() {
            return;
        }
        let written = applier.written();
        while w.pending.0.front().is_some_and(|f| f.seq <= written) {
            w.pending.0.pop_front();
        }
    }

    /// [`Store::upsert_columns`] for a batch a `LoadCustomers` stream sends: the same checks,
    /// outcome, log record and events. When every customer of the batch is new and the applier
    /// thread runs, they are written by that thread once this returns (see the module's
    /// documentation); any other write, and [`Store::wait_written`], waits for that.
    pub fn upsert_columns_queued(
        &self,
        batch: ColumnBatch,
        hashes: &KeyHashes,
        log: &mut dyn FnMut() -> Result<u64>,
    ) -> Result<UpsertOutcome> {
        let Some(applier) = self.applier.get() else {
            return self.upsert_columns(&batch, hashes, log);
        };
        let mut own = None;
        let hashes = hashes.or_own(batch.len(), &mut own, || KeyHashes::of_columns(&batch));
        let mut w = self.writer.lock();
        self.prune(&mut w);
        let plan = self.plan_upsert(
            batch.len(),
            |i| batch.ids.get(i),
            |i| batch.email(i),
            hashes,
            &w.pending,
        )?;
        if batch.is_empty() || plan.iter().any(|step| step.existing.is_some()) {
            self.settle(&mut w);
            return self.upsert_planned(w, &batch, hashes, &plan, log);
        }
        let lsn = log()?;
        let (now, reg, schema) = (self.now(), self.registry(), self.schema());
        let ords = self.prepare_rows(&mut w, &plan, hashes, |i| batch.email(i));
        let mut outcome = UpsertOutcome::default();
        let email = |k: usize| batch.email(k).is_some();
        self.map_run(hashes, 0..batch.len(), &ords, &plan, email, &mut outcome);
        let mut by_ord: Vec<(u32, u32)> = ords.iter().copied().zip(0..).collect();
        if !by_ord.is_sorted() {
            by_ord.sort_unstable();
        }
        w.handed += 1;
        let fresh = Arc::new(Fresh {
            seq: w.handed,
            batch,
            ords,
            by_ord,
            lsn,
            now,
            reg,
            schema,
        });
        w.pending.0.push_back(fresh.clone());
        let fresh = match applier.queue.try_send(fresh) {
            Ok(()) => return Ok(outcome),
            Err(TrySendError::Full(fresh)) => match applier.queue.send(fresh) {
                Ok(()) => return Ok(outcome),
                Err(e) => e.0,
            },
            Err(TrySendError::Disconnected(fresh)) => fresh,
        };
        // The applier thread is gone (it could not start): write here, in order.
        applier.wait_for(fresh.seq - 1);
        self.write_fresh(&fresh, &mut w.noted);
        applier.mark_written(fresh.seq);
        Ok(outcome)
    }

    /// Waits until every batch handed to the applier thread so far is written: what a write
    /// acknowledged before this returns is then visible to every reader.
    pub fn wait_written(&self) {
        drop(self.lock_writer());
    }

    /// Writes a batch of new customers to the shards, a run of customers of one shard per lock
    /// hold, and commits its membership events.
    fn write_fresh(&self, f: &Fresh, noted: &mut Noted) {
        let attrs = f.batch.attrs();
        let mut rows: Vec<Rows<'_>> = f.batch.columns.iter().map(|c| Rows::new(&c.missing)).collect();
        let written = Written {
            batch: &f.batch,
            ords: &f.ords,
            schema: &f.schema,
            reg: &f.reg,
            now: f.now,
            attrs: &attrs,
        };
        for run in shard_runs(&f.ords) {
            let mut s = self.write_shard(shard_of(f.ords[run.start]));
            written.run(&mut s, run, |_| true, &mut rows, &mut noted.changes);
        }
        self.customers.fetch_add(f.ords.len() as u64, Ordering::AcqRel);
        self.note_created(noted, f.ords.iter().copied());
        self.commit_events(f.lsn, f.now, noted, &f.reg);
    }
}
