//! Faults injected for tests and drills (`Config::faults`): the engine, its log and its event log
//! consult one shared [`Faults`], each taking the failures meant for it. The file layer
//! ([`crate::disk`]) consults it too, for its power-loss model.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Faults to inject: the next `n` log appends fail as a full disk would, the next `n` fsyncs
/// as a failing disk would, the next `n` event log writes, or the next `n` writes are refused as
/// if the server were busy; or the writer thread stalls, as behind a slow write, until released.
#[derive(Debug, Default)]
pub struct Faults {
    appends: AtomicU32,
    syncs: AtomicU32,
    event_writes: AtomicU32,
    busy: AtomicU32,
    /// While set, the writer thread waits before each write (read without the lock first; set
    /// and cleared under `hold`, which `released` waits on).
    held: AtomicBool,
    hold: parking_lot::Mutex<()>,
    released: parking_lot::Condvar,
    /// The file layer under the log, snapshots and event log.
    disk: std::sync::Arc<crate::disk::Disk>,
}

impl Faults {
    /// Faults whose file layer remembers what every file held at its last sync, so that
    /// [`Faults::power_cut`] can drop the rest (see [`crate::disk`]).
    pub fn simulating_power_loss() -> Faults {
        Faults {
            disk: std::sync::Arc::new(crate::disk::Disk::simulating_power_loss()),
            ..Faults::default()
        }
    }

    /// Cuts the power: every later file operation fails, and what was not synced is dropped
    /// from the disk. Does nothing unless built by [`Faults::simulating_power_loss`].
    pub fn power_cut(&self) -> crate::disk::PowerCut {
        self.disk.power_cut()
    }

    /// The file layer the log, the snapshots and the event log write through.
    pub fn disk(&self) -> &std::sync::Arc<crate::disk::Disk> {
        &self.disk
    }

    /// Makes the next `n` appends fail (half the record written, then `ENOSPC`).
    pub fn fail_appends(&self, n: u32) {
        self.appends.store(n, Ordering::Release);
    }

    /// Makes the next `n` fdatasync calls of log files fail (`EIO`).
    pub fn fail_syncs(&self, n: u32) {
        self.syncs.store(n, Ordering::Release);
    }

    /// Makes the next `n` writes of event log batches fail (`ENOSPC`).
    pub fn fail_event_writes(&self, n: u32) {
        self.event_writes.store(n, Ordering::Release);
    }

    /// Makes the next `n` writes refused as if the server were busy (RESOURCE_EXHAUSTED), as
    /// when every place in the write queue is taken.
    pub fn refuse_writes(&self, n: u32) {
        self.busy.store(n, Ordering::Release);
    }

    /// Stalls the writer thread before its next write, as a long write ahead in the queue
    /// would, until [`Faults::release_writes`]: writes queue up meanwhile.
    pub fn hold_writes(&self) {
        let _hold = self.hold.lock();
        self.held.store(true, Ordering::Release);
    }

    /// Lets the writer thread go on after [`Faults::hold_writes`].
    pub fn release_writes(&self) {
        let _hold = self.hold.lock();
        self.held.store(false, Ordering::Release);
        self.released.notify_all();
    }

    /// Waits while writes are held (on the writer thread, before each write).
    pub(crate) fn wait_while_writes_held(&self) {
        if !self.held.load(Ordering::Acquire) {
            return;
        }
        let mut hold = self.hold.lock();
        while self.held.load(Ordering::Acquire) {
            self.released.wait(&mut hold);
        }
    }

    /// Whether an injected append failure is due (and takes it).
    pub(crate) fn take_append(&self) -> bool {
        Faults::take(&self.appends)
    }

    /// Whether an injected fsync failure is due (and takes it).
    pub(crate) fn take_sync(&self) -> bool {
        Faults::take(&self.syncs)
    }

    /// Whether an injected refusal of a write is due (and takes it).
    pub(crate) fn take_busy(&self) -> bool {
        Faults::take(&self.busy)
    }

    /// Whether an injected event log write failure is due (and takes it).
    pub(crate) fn take_event_write(&self) -> bool {
        Faults::take(&self.event_writes)
    }

    /// Takes one injected failure from `counter`, if any is left.
    fn take(counter: &AtomicU32) -> bool {
        counter.load(Ordering::Relaxed) > 0
            && counter
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_ok()
    }
}
