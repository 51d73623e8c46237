//! The latency histograms' buckets, shared by the call metrics and the engine's own timings
//! (fsync, evaluations), so every latency series in `/metrics` compares bucket for bucket.

use prometheus::{Histogram, HistogramOpts};

/// Upper bounds of the latency buckets, in seconds.
pub const BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// A latency histogram with [`BUCKETS`].
pub fn histogram(name: &str, help: &str) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()))
        .expect("a valid histogram name")
}
