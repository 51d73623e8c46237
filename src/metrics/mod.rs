//! Prometheus text exposition over a minimal HTTP/1.1 endpoint (`GET /metrics`).

pub mod requests;

use std::fmt::Write as _;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::engine::Engine;

/// Serves `/metrics` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, engine: Engine) {
    loop {
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(conn, &engine).await {
                tracing::debug!(error = %e, "metrics connection");
            }
        });
    }
}

async fn handle(mut conn: TcpStream, engine: &Engine) -> std::io::Result<()> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    // Read the request head; bodies are not expected.
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
        if len == buf.len() {
            return conn
                .write_all(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n")
                .await;
        }
        let n = conn.read(&mut buf[len..]).await?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body) = match (method, path) {
        ("GET", "/metrics") => ("200 OK", render(engine).await),
        ("GET", _) => ("404 Not Found", "not found: try /metrics\n".to_string()),
        _ => ("405 Method Not Allowed", String::new()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(response.as_bytes()).await?;
    conn.shutdown().await
}

/// The current metrics in Prometheus text format.
pub async fn render(engine: &Engine) -> String {
    let mut out = String::new();
    let Ok(s) = engine.stats().await else {
        return out;
    };
    let mut gauge = |name: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    };
    gauge("segmentd_customers", "Customers held.", s.customers);
    gauge("segmentd_shards", "Column shards of 65,536 ordinals.", s.shards);
    gauge("segmentd_attributes", "Attributes in the schema.", s.attributes);
    gauge(
        "segmentd_orders_recorded",
        "Distinct orders counted into aggregates.",
        s.orders_recorded,
    );
    gauge(
        "segmentd_bytes_used",
        "Estimated heap bytes held by customers.",
        s.bytes_used,
    );
    let store = engine.store();
    let reg = store.registry();
    gauge(
        "segmentd_segments",
        "Segments defined (family members included).",
        reg.len() as u64,
    );
    gauge(
        "segmentd_families",
        "Families defined.",
        reg.families().len() as u64,
    );
    // Sizes of the first segments by id (every one, up to MAX_SIZED).
    let _ = writeln!(
        out,
        "# HELP segmentd_segment_members Members of each segment (the first {MAX_SIZED} by id).\n# TYPE segmentd_segment_members gauge"
    );
    let mut ids: Vec<(&str, u32)> = reg.in_order().map(|e| (e.def.id.as_str(), e.slot)).collect();
    ids.sort_unstable();
    for (id, slot) in ids.into_iter().take(MAX_SIZED) {
        let _ = writeln!(
            out,
            "segmentd_segment_members{{segment=\"{}\"}} {}",
            label(id),
            store.segment_size(slot)
        );
    }
    let events = store.events();
    let mut gauge = |name: &str, help: &str, value: f64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
    };
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
    if let Some(wal) = engine.wal() {
        gauge(
            "segmentd_wal_bytes_written",
            "Write-ahead log bytes appended since start.",
            wal.bytes_written() as f64,
        );
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
    let _ = writeln!(
        out,
        "# HELP segmentd_time_flips_total Membership changes applied as the clock moved.\n# TYPE segmentd_time_flips_total counter\nsegmentd_time_flips_total {}",
        store.time_flips.load(std::sync::atomic::Ordering::Relaxed)
    );
    if let Some(at) = engine.reclassified_at() {
        let _ = writeln!(
            out,
            "# HELP segmentd_rfm_reclassified_timestamp_seconds When RFM was last reclassified (as_of).\n# TYPE segmentd_rfm_reclassified_timestamp_seconds gauge\nsegmentd_rfm_reclassified_timestamp_seconds {}",
            at as f64 / 1e6
        );
    }
    let histogram = |out: &mut String, name: &str, help: &str, h: &requests::Histogram| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        h.render(out, name, "");
    };
    histogram(
        &mut out,
        "segmentd_evaluation_seconds",
        "Whole-segment and whole-family evaluations.",
        &store.eval_seconds,
    );
    if let Some(wal) = engine.wal() {
        histogram(
            &mut out,
            "segmentd_wal_fsync_seconds",
            "Write-ahead log fdatasync calls.",
            &wal.fsync,
        );
    }
    engine.request_metrics().render(&mut out);
    out
}

/// Most segments whose size `/metrics` reports.
const MAX_SIZED: usize = 10_000;

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
