//! Prometheus text exposition over a minimal HTTP/1.1 endpoint (`GET /metrics`).

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
    out
}
