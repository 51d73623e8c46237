//! Prometheus metrics on `GET /metrics`, encoded by the `prometheus` crate and served over HTTP/1.1
//! by hyper and axum with timeouts, on an address of its own (`--metrics-addr`).
//!
//! Counters and histograms updated as things happen (calls, token reloads, fsyncs, evaluations)
//! live in their owners; the engine's state (customers, segments, the log, snapshots) is read at
//! scrape time into gauges made for that scrape, so nothing else has to remember to update them.

pub mod requests;

use std::sync::Arc;

use prometheus::core::Collector;
use prometheus::proto::MetricFamily;
use prometheus::{Encoder, IntCounter, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;

use crate::engine::Engine;
use requests::RequestMetrics;

/// Most segments whose size `/metrics` reports.
const MAX_SIZED: usize = 10_000;

/// The server's metrics: the registry of what is recorded as it happens, and the engine whose
/// state is read at scrape time.
pub struct Metrics {
    registry: Registry,
    requests: Arc<RequestMetrics>,
    engine: Engine,
}

impl Metrics {
    /// Registers the call metrics of the methods in `descriptor_sets`, the process's own series,
    /// `segmentd_build_info` and `extra` (collectors owned elsewhere, such as the token reloads'
    /// counter).
    pub fn new(
        engine: Engine,
        descriptor_sets: &[&[u8]],
        extra: Vec<Box<dyn Collector>>,
    ) -> prometheus::Result<Metrics> {
        let registry = Registry::new();
        let requests = Arc::new(RequestMetrics::new(descriptor_sets, &registry)?);
        #[cfg(target_os = "linux")]
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let build = IntGaugeVec::new(
            Opts::new(
                "segmentd_build_info",
                "The running build: always 1, its version and commit as labels.",
            ),
            &["version", "commit"],
        )?;
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("SEGMENTD_COMMIT")])
            .set(1);
        registry.register(Box::new(build))?;
        for collector in extra {
            registry.register(collector)?;
        }
        Ok(Metrics {
            registry,
            requests,
            engine,
        })
    }

    /// The call metrics, for the server's recording layer.
    pub fn requests(&self) -> &Arc<RequestMetrics> {
        &self.requests
    }

    /// Every metric in the Prometheus text format.
    pub async fn render(&self) -> String {
        let mut families = self.registry.gather();
        match self.engine.stats().await {
            Ok(stats) => families.extend(engine_families(&self.engine, &stats)),
            Err(e) => tracing::warn!(error = %e, "metrics: engine state not read"),
        }
        // The encoder refuses a family without samples (no segments yet, say).
        families.retain(|f| !f.get_metric().is_empty());
        families.sort_by(|a, b| a.name().cmp(b.name()));
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %e, "metrics: encoding failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The engine's state as metric families, read now.
fn engine_families(engine: &Engine, s: &crate::store::StoreStats) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    let mut gauge = |name: &str, help: &str, value: f64| {
        let g = prometheus::Gauge::new(name, help).expect("a valid gauge name");
        g.set(value);
        out.extend(g.collect());
    };
    gauge("segmentd_customers", "Customers held.", s.customers as f64);
    gauge(
        "segmentd_shards",
        "Column shards of 65,536 ordinals.",
        s.shards as f64,
    );
    gauge(
        "segmentd_attributes",
        "Attributes in the schema.",
        s.attributes as f64,
    );
    gauge(
        "segmentd_orders_recorded",
        "Distinct orders counted into aggregates.",
        s.orders_recorded as f64,
    );
    gauge(
        "segmentd_bytes_used",
        "Estimated heap bytes held by customers.",
        s.bytes_used as f64,
    );
    let store = engine.store();
    let reg = store.registry();
    gauge(
        "segmentd_segments",
        "Segments defined (family members included).",
        reg.len() as f64,
    );
    gauge(
        "segmentd_families",
        "Families defined.",
        reg.families().len() as f64,
    );
    let events = store.events();
    gauge(
        "segmentd_events_last_sequence",
        "Sequence of the last membership event published to watchers.",
        events.published() as f64,
    );
    gauge(
        "segmentd_events_oldest_sequence",
        "Oldest membership event retained.",
        events.oldest() as f64,
    );
    gauge(
        "segmentd_event_log_failing",
        "1 while event batches wait for the disk (snapshots wait for them too).",
        if events.write_failing() { 1.0 } else { 0.0 },
    );
    gauge(
        "segmentd_queued_writes",
        "Writes queued for or running on the writer thread (refused past --max-queued-writes).",
        engine.queued_writes() as f64,
    );
    let (watchers, lag) = engine.watcher_lag();
    gauge(
        "segmentd_watchers",
        "Connected WatchMemberships streams.",
        watchers as f64,
    );
    gauge(
        "segmentd_watcher_lag_events",
        "Published events the furthest-behind watcher has yet to receive.",
        lag as f64,
    );
    let feed = engine.feed();
    gauge(
        "segmentd_followers",
        "Connected Replication.Follow streams.",
        feed.followers() as f64,
    );
    gauge(
        "segmentd_follow_buffer_items",
        "Changes held for followers (bounded by --follow-buffer-items; 0 while none follows).",
        feed.items() as f64,
    );
    if let Some(wal) = engine.wal() {
        gauge(
            "segmentd_wal_last_sequence",
            "Sequence of the last write-ahead log record.",
            wal.last_sequence() as f64,
        );
    }
    match engine.last_snapshot() {
        Some((at, seconds, bytes)) => {
            gauge(
                "segmentd_snapshot_age_seconds",
                "Seconds since the last snapshot this process wrote.",
                at.elapsed().as_secs_f64(),
            );
            gauge(
                "segmentd_snapshot_duration_seconds",
                "How long the last snapshot took.",
                seconds,
            );
            gauge(
                "segmentd_snapshot_bytes",
                "Size of the last snapshot.",
                bytes as f64,
            );
        }
        None => gauge(
            "segmentd_snapshot_age_seconds",
            "Seconds since the last snapshot this process wrote (-1: none yet).",
            -1.0,
        ),
    }
    if let Some(at) = engine.reclassified_at() {
        gauge(
            "segmentd_rfm_reclassified_timestamp_seconds",
            "When RFM was last reclassified (as_of).",
            at as f64 / 1e6,
        );
    }
    let mut counter = |name: &str, help: &str, value: u64| {
        let c = IntCounter::new(name, help).expect("a valid counter name");
        c.inc_by(value);
        out.extend(c.collect());
    };
    counter(
        "segmentd_event_log_write_failures_total",
        "Failed attempts to write membership events to the event log (each is retried).",
        events.write_failures(),
    );
    counter(
        "segmentd_writes_dropped_total",
        "Queued writes dropped unapplied: their caller had gone (cancelled, or past its deadline) by their turn.",
        engine.dropped_writes(),
    );
    counter(
        "segmentd_time_flips_total",
        "Membership changes applied as the clock moved.",
        store.time_flips.load(std::sync::atomic::Ordering::Relaxed),
    );
    if let Some(wal) = engine.wal() {
        counter(
            "segmentd_wal_written_bytes_total",
            "Write-ahead log bytes appended since start.",
            wal.bytes_written(),
        );
        out.extend(wal.fsync.collect());
    }
    out.extend(store.eval_seconds.collect());
    // Sizes of the first segments by id (every one, up to MAX_SIZED).
    let sizes = IntGaugeVec::new(
        Opts::new(
            "segmentd_segment_members",
            format!("Members of each segment (the first {MAX_SIZED} by id)."),
        ),
        &["segment"],
    )
    .expect("a valid gauge name");
    let mut ids: Vec<(&str, u32)> = reg.in_order().map(|e| (e.def.id.as_str(), e.slot)).collect();
    ids.sort_unstable();
    for (id, slot) in ids.into_iter().take(MAX_SIZED) {
        sizes
            .with_label_values(&[id])
            .set(store.segment_size(slot) as i64);
    }
    out.extend(sizes.collect());
    out
}

/// Serves `/metrics` on `listener` until the task is dropped: HTTP/1.1 with a deadline for the
/// request head and for the whole connection ([`crate::httpd::serve`]).
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    use axum::routing::get;
    let router = axum::Router::new()
        .route(
            "/metrics",
            get(
                |axum::extract::State(m): axum::extract::State<Arc<Metrics>>| async move {
                    (
                        [(http::header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                        m.render().await,
                    )
                },
            ),
        )
        .fallback(|| async { (http::StatusCode::NOT_FOUND, "not found: try /metrics\n") })
        .with_state(metrics);
    crate::httpd::serve(listener, router, "metrics").await;
}
