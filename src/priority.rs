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

/// Values waiting for the reclaimer at most; past that, the caller frees its own.
const RECLAIM_QUEUE: usize = 64;

/// Frees `value` on a bulk-priority thread of its own rather than the caller's: the writer
/// thread hands over a batch once applied, so freeing its thousands of strings does not hold up
/// the next batch. Frees at once, on the caller, when the reclaimer is `RECLAIM_QUEUE` values
/// behind (memory waiting to be freed stays bounded) or could not be started.
pub fn discard<T: Send + 'static>(value: T) {
    type Garbage = Box<dyn Send>;
    static RECLAIMER: std::sync::OnceLock<Option<std::sync::mpsc::SyncSender<Garbage>>> =
        std::sync::OnceLock::new();
    let sender = RECLAIMER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Garbage>(RECLAIM_QUEUE);
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
        // A value refused (queue full, thread gone) comes back in the error and drops here.
        let _ = tx.try_send(Box::new(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reports the thread it is dropped on.
    struct Tell(std::sync::mpsc::Sender<Option<String>>);

    impl Drop for Tell {
        fn drop(&mut self) {
            let _ = self.0.send(std::thread::current().name().map(str::to_string));
        }
    }

    #[test]
    fn discarded_values_are_freed_on_the_reclaimer_or_at_once() {
        let (tx, rx) = std::sync::mpsc::channel();
        // More than the queue holds: every value is dropped exactly once, somewhere.
        let n = RECLAIM_QUEUE * 4;
        for _ in 0..n {
            discard(Tell(tx.clone()));
        }
        drop(tx);
        let threads: Vec<Option<String>> = (0..n)
            .map_while(|_| rx.recv_timeout(std::time::Duration::from_secs(10)).ok())
            .collect();
        assert_eq!(threads.len(), n);
        assert!(
            threads.iter().any(|t| t.as_deref() == Some("reclaimer")),
            "{threads:?}"
        );
    }
}
