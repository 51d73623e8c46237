//! Bulk work yields the CPU to request-time calls.
//!
//! Threads doing bulk work (the writer, decoding big load batches) lower their own scheduling
//! priority, so that on a busy machine the async workers answering `IsMember` run first and
//! membership latency holds while a bulk load runs.

use std::cell::Cell;

/// The nice value bulk threads take (0 is normal, 19 the lowest priority).
const BULK_NICE: i32 = 10;

thread_local! {
    static LOWERED: Cell<bool> = const { Cell::new(false) };
}

/// Lowers the calling thread's priority, once per thread (Linux; elsewhere nothing).
pub fn bulk_thread() {
    if LOWERED.with(|l| l.replace(true)) {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: gettid has no preconditions; setpriority on our own thread id only changes this
    // thread's nice value, and a failure (not permitted) leaves it as it was.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        if libc::setpriority(libc::PRIO_PROCESS, tid, BULK_NICE) != 0 {
            tracing::debug!("could not lower a bulk thread's priority");
        }
    }
}

/// Frees `value` on a bulk-priority thread of its own rather than the caller's: the writer
/// thread hands over a batch once applied, so freeing its thousands of strings does not hold up
/// the next batch. Frees at once if that thread cannot be started.
pub fn discard<T: Send + 'static>(value: T) {
    type Garbage = Box<dyn Send>;
    static RECLAIMER: std::sync::OnceLock<Option<std::sync::mpsc::Sender<Garbage>>> =
        std::sync::OnceLock::new();
    let sender = RECLAIMER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Garbage>();
        std::thread::Builder::new()
            .name("reclaimer".into())
            .spawn(move || {
                bulk_thread();
                // Each value is dropped as it is received.
                for garbage in rx {
                    drop(garbage);
                }
            })
            .ok()
            .map(|_| tx)
    });
    if let Some(tx) = sender {
        // A send fails only if the thread is gone; the value then comes back and drops here.
        let _ = tx.send(Box::new(value));
    }
}
