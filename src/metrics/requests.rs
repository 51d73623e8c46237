//! Calls counted and timed per gRPC method and status code, recorded by a tower layer around
//! every service, under the names and labels of grpc-ecosystem's interceptors so their dashboards
//! work as they are: `grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}` and
//! the histogram `grpc_server_handling_seconds{grpc_type,grpc_service,grpc_method}`.
//!
//! Only the methods the server defines get labels of their own (read from the compiled
//! descriptors); any other path, whoever sends it and before any token is checked, counts as
//! `grpc_service="unknown",grpc_method="unknown"`, so the series stay bounded.
//!
//! The status is the `grpc-status` of the response headers: every refusal of a unary call and
//! every stream that fails before its first message carries it there ("trailers-only"); a call
//! without it is counted as OK. The latency runs to the response headers: the whole call for a
//! unary one, the time to the first message for a stream.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

/// gRPC status names by code, as grpc-go spells them (the `grpc_code` label).
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// Every known method's series, found by request path.
#[derive(Debug)]
pub struct RequestMetrics {
    /// `/package.Service/Method` to its index in `methods`.
    by_path: HashMap<String, usize, foldhash::fast::RandomState>,
    /// The known methods, then the one that stands for every unknown path.
    methods: Vec<Method>,
    handled: IntCounterVec,
    handling: HistogramVec,
}

/// One method's labels, its latency histogram and its per-code counters, each made on first use
/// so that methods never called and codes never returned add no series.
#[derive(Debug)]
struct Method {
    labels: [String; 3],
    handling: OnceLock<Histogram>,
    handled: [OnceLock<IntCounter>; CODES.len()],
}

impl RequestMetrics {
    /// The methods of the services in the encoded descriptor sets, registered in `registry`.
    pub fn new(descriptor_sets: &[&[u8]], registry: &Registry) -> prometheus::Result<RequestMetrics> {
        let labels = ["grpc_type", "grpc_service", "grpc_method"];
        let handled = IntCounterVec::new(
            Opts::new(
                "grpc_server_handled_total",
                "gRPC calls completed, by status code.",
            ),
            &[labels[0], labels[1], labels[2], "grpc_code"],
        )?;
        let handling = HistogramVec::new(
            HistogramOpts::new(
                "grpc_server_handling_seconds",
                "gRPC call latency to the response headers (a stream's first message).",
            )
            .buckets(crate::latency::BUCKETS.to_vec()),
            &labels,
        )?;
        registry.register(Box::new(handled.clone()))?;
        registry.register(Box::new(handling.clone()))?;
        let mut names = Vec::new();
        for set in descriptor_sets {
            let set = <prost_types::FileDescriptorSet as prost::Message>::decode(*set)
                .map_err(|e| prometheus::Error::Msg(format!("descriptor set: {e}")))?;
            for file in &set.file {
                for service in &file.service {
                    let service_name = format!("{}.{}", file.package(), service.name());
                    for m in &service.method {
                        let kind = match (m.client_streaming(), m.server_streaming()) {
                            (false, false) => "unary",
                            (true, false) => "client_stream",
                            (false, true) => "server_stream",
                            (true, true) => "bidi_stream",
                        };
                        names.push([kind.to_string(), service_name.clone(), m.name().to_string()]);
                    }
                }
            }
        }
        names.push(["unknown".into(), "unknown".into(), "unknown".into()]);
        let mut by_path = HashMap::default();
        let mut methods = Vec::with_capacity(names.len());
        for labels in names {
            let path = format!("/{}/{}", labels[1], labels[2]);
            if labels[1] != "unknown" {
                by_path.insert(path, methods.len());
            }
            methods.push(Method {
                labels,
                handling: OnceLock::new(),
                handled: Default::default(),
            });
        }
        Ok(RequestMetrics {
            by_path,
            methods,
            handled,
            handling,
        })
    }

    /// The index of the method at `path`, or of the one standing for unknown paths.
    fn index(&self, path: &str) -> usize {
        self.by_path.get(path).copied().unwrap_or(self.methods.len() - 1)
    }

    fn record(&self, method: &Method, code: usize, seconds: f64) {
        let [kind, service, name] = &method.labels;
        method
            .handling
            .get_or_init(|| self.handling.with_label_values(&[kind, service, name]))
            .observe(seconds);
        method.handled[code]
            .get_or_init(|| {
                self.handled
                    .with_label_values(&[kind.as_str(), service, name, CODES[code]])
            })
            .inc();
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
        let metrics = self.metrics.clone();
        // The caller's request id (x-request-id), or a new one: in every log line of the call
        // and in the reply's headers.
        let id = request
            .headers()
            .get(REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_string)
            .unwrap_or_else(new_request_id);
        let path = request.uri().path();
        let index = metrics.index(path);
        let span = tracing::info_span!("call", request_id = %id, method = %path);
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
                Err(_) => 14, // Unavailable
            };
            metrics.record(&metrics.methods[index], code, started.elapsed().as_secs_f64());
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_methods_have_their_labels_and_every_other_path_is_one_series() {
        let registry = Registry::new();
        let m = RequestMetrics::new(&[crate::api::FILE_DESCRIPTOR_SET], &registry).unwrap();
        let method = |path: &str| &m.methods[m.index(path)];
        let is_member = method("/segmentd.v1.Membership/IsMember");
        assert_eq!(is_member.labels, ["unary", "segmentd.v1.Membership", "IsMember"]);
        let watch = method("/segmentd.v1.Segments/WatchMemberships");
        assert_eq!(watch.labels[0], "server_stream");
        for junk in ["/x", "/segmentd.v1.Membership/Nope", "/\"\n", ""] {
            assert_eq!(method(junk).labels, ["unknown", "unknown", "unknown"], "{junk:?}");
        }
        m.record(method("/a"), 16, 0.001);
        m.record(method("/b"), 16, 0.001);
        let handled = registry
            .gather()
            .into_iter()
            .find(|f| f.name() == "grpc_server_handled_total")
            .unwrap();
        assert_eq!(handled.get_metric().len(), 1);
        assert_eq!(handled.get_metric()[0].get_counter().get_value(), 2.0);
    }
}
