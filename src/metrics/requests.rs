//! Request counts and latency histograms per gRPC method and status code, recorded by a tower
//! layer around every service.
//!
//! The status is the `grpc-status` of the response headers: every refusal of a unary call and
//! every stream that fails before its first message carries it there ("trailers-only"); a call
//! without it is counted as OK. The latency runs to the response headers: the whole call for a
//! unary one, the time to the first message for a stream.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use dashmap::DashMap;

/// Upper bounds of the latency buckets, in seconds.
pub const BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// A Prometheus histogram with fixed buckets, updated without locks.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative), then the overflow.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn record(&self, seconds: f64) {
        let i = BUCKETS
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Writes `name_bucket`, `name_sum` and `name_count` lines with `labels` (`k="v",...` or "").
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        cumulative += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}");
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{braces} {}",
            self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9
        );
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// Every method's calls, by status code.
#[derive(Debug, Default)]
pub struct RequestMetrics {
    by_method: DashMap<String, Arc<PerMethod>>,
}

/// One method's latency histogram for each status code.
#[derive(Debug, Default)]
struct PerMethod {
    by_code: [Histogram; CODES.len()],
}

/// gRPC status names by code.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

impl RequestMetrics {
    /// The method's histograms, looked up without allocating once the method was seen.
    fn method(&self, method: &str) -> Arc<PerMethod> {
        if let Some(m) = self.by_method.get(method) {
            return m.clone();
        }
        self.by_method.entry(method.to_string()).or_default().clone()
    }

    /// `segmentd_request_seconds` (a histogram; its `_count` is the request count) per
    /// `method` and `code`.
    pub fn render(&self, out: &mut String) {
        let name = "segmentd_request_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} gRPC calls by method and status code: latency to the response headers.\n# TYPE {name} histogram"
        );
        let mut methods: Vec<_> = self
            .by_method
            .iter()
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        methods.sort_by(|a, b| a.0.cmp(&b.0));
        for (method, m) in methods {
            for (code, h) in CODES.iter().zip(&m.by_code) {
                if h.count() > 0 {
                    h.render(out, name, &format!("method=\"{method}\",code=\"{code}\""));
                }
            }
        }
    }
}

/// The header carrying a call's request id, both ways.
pub const REQUEST_ID: &str = "x-request-id";

/// A new request id: 16 hex digits, unique within the process and unlikely to repeat across
/// restarts.
fn new_request_id() -> String {
    static NEXT: std::sync::OnceLock<AtomicU64> = std::sync::OnceLock::new();
    let next = NEXT.get_or_init(|| {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        AtomicU64::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    });
    let n = next.fetch_add(1, Ordering::Relaxed);
    // Spread consecutive ids so they do not read as a counter.
    let mut x = n;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    format!("{x:016x}")
}

/// The layer that records every call into [`RequestMetrics`] and gives it a request id.
#[derive(Debug, Clone)]
pub struct RecordLayer(pub Arc<RequestMetrics>);

impl<S> tower_layer::Layer<S> for RecordLayer {
    type Service = Record<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Record {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Record<S> {
    inner: S,
    metrics: Arc<RequestMetrics>,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for Record<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = self.metrics.method(request.uri().path());
        // The caller's request id (x-request-id), or a new one: in every log line of the call
        // and in the reply's headers.
        let id = request
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_string)
            .unwrap_or_else(new_request_id);
        let span = tracing::info_span!("call", request_id = %id, method = %request.uri().path());
        let started = Instant::now();
        let future = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        Box::pin(async move {
            let mut response = tracing::Instrument::instrument(future, span).await;
            if let (Ok(r), Ok(v)) = (&mut response, http::HeaderValue::from_str(&id)) {
                r.headers_mut().insert(REQUEST_ID, v);
            }
            // Health and reflection calls are counted too: they are calls like any other.
            let code = match &response {
                Ok(r) => r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<usize>().ok())
                    .filter(|&c| c < CODES.len())
                    .unwrap_or(0),
                Err(_) => 14, // UNAVAILABLE
            };
            method.by_code[code].record(started.elapsed().as_secs_f64());
            response
        })
    }
}
