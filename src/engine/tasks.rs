//! The engine's background loops: snapshots on a timer and after enough log bytes, time flips
//! every tick, and RFM reclassification on its schedule. Each waits until recovery is done
//! ([`Engine::is_ready`]); they stop when [`Tasks`] is dropped.

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::Engine;

/// When the loops act (`--snapshot-interval-secs`, `--snapshot-wal-bytes`, `--time-tick-ms`,
/// `--reclassify-interval-hours`; a zero interval turns its trigger off).
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub snapshot_interval: Duration,
    pub snapshot_wal_bytes: u64,
    pub time_tick: Duration,
    pub reclassify_every: Duration,
    /// Between samples of the segments' sizes.
    pub size_sample: Duration,
}

/// How often the snapshot triggers are checked.
const SNAPSHOT_CHECK: Duration = Duration::from_secs(5);

/// How long a failed scheduled reclassification waits before it is tried again.
const RECLASSIFY_RETRY: Duration = Duration::from_secs(3600);

/// The running loops; dropping this stops them.
pub struct Tasks {
    handles: Vec<JoinHandle<()>>,
}

impl Tasks {
    /// Starts the loops on the current runtime.
    pub fn start(engine: &Engine, schedule: Schedule) -> Tasks {
        Tasks {
            handles: vec![
                tokio::spawn(snapshots(engine.clone(), schedule)),
                tokio::spawn(time(engine.clone(), schedule)),
                tokio::spawn(sizes(engine.clone(), schedule.size_sample)),
            ],
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        for handle in &self.handles {
            handle.abort();
        }
    }
}

/// Samples every segment's size as soon as recovery is done, then every `interval`.
async fn sizes(engine: Engine, interval: Duration) {
    engine.size_history().set_interval(interval);
    while !engine.is_ready() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut tick = tokio::time::interval(interval.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let e = engine.clone();
        // Reading a size counts a bitmap: off the async threads for many segments.
        let _ = tokio::task::spawn_blocking(move || e.sample_sizes()).await;
    }
}

/// Takes a snapshot whenever one is due (by time or by log bytes since the last).
async fn snapshots(engine: Engine, schedule: Schedule) {
    let mut tick = tokio::time::interval(SNAPSHOT_CHECK);
    loop {
        tick.tick().await;
        if engine.is_ready()
            && engine
                .snapshot_due(schedule.snapshot_interval, schedule.snapshot_wal_bytes)
                .await
            && let Err(e) = engine.snapshot().await
        {
            tracing::error!(error = %e, "snapshot failed");
        }
    }
}

/// Applies the time flips due at every tick (relative-time rules change their answer as the
/// clock moves), and reclassifies RFM when its schedule says.
async fn time(engine: Engine, schedule: Schedule) {
    let mut tick = tokio::time::interval(schedule.time_tick);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed_at: Option<Instant> = None;
    loop {
        tick.tick().await;
        if !engine.is_ready() {
            continue;
        }
        if let Err(e) = engine.advance_time().await {
            tracing::error!(error = %e, "applying time flips failed");
        }
        // A failed run is retried an hour later, not every tick.
        let retry = failed_at.is_none_or(|t| t.elapsed() >= RECLASSIFY_RETRY);
        if retry && engine.reclassify_due(schedule.reclassify_every) {
            match engine.reclassify(None).await {
                Ok(r) => {
                    failed_at = None;
                    tracing::info!(
                        scored = r.scored,
                        changes = r.changes,
                        "scheduled RFM reclassification"
                    );
                }
                Err(e) => {
                    failed_at = Some(Instant::now());
                    tracing::error!(error = %e, "scheduled RFM reclassification failed; retrying in an hour");
                }
            }
        }
    }
}
