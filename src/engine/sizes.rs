//! Segments' sizes over time: a sample of every segment's size at a fixed interval, the last 24
//! hours (at most [`MAX_SAMPLES`]) kept in memory, for the console and `GetSizeHistory`.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use parking_lot::Mutex;

/// Most samples kept, whatever the interval.
pub const MAX_SAMPLES: usize = 1440;

/// The default time between samples.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);

/// The sampled sizes.
#[derive(Debug)]
pub struct SizeHistory {
    inner: Mutex<Samples>,
}

#[derive(Debug)]
struct Samples {
    interval: Duration,
    /// When each sample was taken (microseconds since the epoch), oldest first.
    times: VecDeque<i64>,
    /// Each segment's sizes, aligned with the end of `times`.
    sizes: HashMap<String, VecDeque<u64>>,
}

/// What [`SizeHistory::read`] returns: the sample times and each segment's sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub interval: Duration,
    pub times: Vec<i64>,
    pub sizes: Vec<(String, Vec<u64>)>,
}

impl Default for SizeHistory {
    fn default() -> Self {
        SizeHistory::new(DEFAULT_INTERVAL)
    }
}

impl SizeHistory {
    pub fn new(interval: Duration) -> SizeHistory {
        SizeHistory {
            inner: Mutex::new(Samples {
                interval,
                times: VecDeque::new(),
                sizes: HashMap::new(),
            }),
        }
    }

    /// Sets the time between samples (before sampling starts).
    pub fn set_interval(&self, interval: Duration) {
        self.inner.lock().interval = interval.max(Duration::from_secs(1));
    }

    /// How many samples are kept: 24 hours' worth, at most [`MAX_SAMPLES`].
    fn capacity(interval: Duration) -> usize {
        let per_day = 86_400 / interval.as_secs().max(1);
        (per_day as usize).clamp(1, MAX_SAMPLES)
    }

    /// Records the sizes of every segment at `at`; segments no longer defined are forgotten.
    pub fn record(&self, at: i64, current: impl IntoIterator<Item = (String, u64)>) {
        let mut s = self.inner.lock();
        let keep = Self::capacity(s.interval);
        s.times.push_back(at);
        while s.times.len() > keep {
            s.times.pop_front();
        }
        let mut next: HashMap<String, VecDeque<u64>> = HashMap::new();
        for (id, size) in current {
            let mut sizes = s.sizes.remove(&id).unwrap_or_default();
            sizes.push_back(size);
            while sizes.len() > keep {
                sizes.pop_front();
            }
            next.insert(id, sizes);
        }
        s.sizes = next;
    }

    /// The samples of `ids` (every segment sampled when empty, by id); an id never sampled
    /// has no sizes yet.
    pub fn read(&self, ids: &[String]) -> Sampled {
        let s = self.inner.lock();
        let sizes = if ids.is_empty() {
            let mut all: Vec<(String, Vec<u64>)> = s
                .sizes
                .iter()
                .map(|(id, v)| (id.clone(), v.iter().copied().collect()))
                .collect();
            all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            all
        } else {
            ids.iter()
                .map(|id| {
                    let v = s.sizes.get(id).map(|v| v.iter().copied().collect());
                    (id.clone(), v.unwrap_or_default())
                })
                .collect()
        };
        Sampled {
            interval: s.interval,
            times: s.times.iter().copied().collect(),
            sizes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_defined_later_has_the_latest_samples_and_a_deleted_one_is_forgotten() {
        let h = SizeHistory::new(Duration::from_secs(3600));
        h.record(1, [("a".to_string(), 10)]);
        h.record(2, [("a".to_string(), 11), ("b".to_string(), 5)]);
        h.record(3, [("b".to_string(), 6)]);
        let r = h.read(&[]);
        assert_eq!(r.times, vec![1, 2, 3]);
        assert_eq!(r.sizes, vec![("b".to_string(), vec![5, 6])]);
        assert_eq!(h.read(&["a".to_string()]).sizes, vec![("a".to_string(), vec![])]);
    }

    #[test]
    fn a_day_is_kept_and_never_more_than_the_cap() {
        let h = SizeHistory::new(Duration::from_secs(3600));
        for t in 0..30 {
            h.record(t, [("a".to_string(), t as u64)]);
        }
        let r = h.read(&[]);
        assert_eq!(r.times.len(), 24);
        assert_eq!(r.sizes[0].1, (6..30).collect::<Vec<u64>>());
        assert_eq!(SizeHistory::capacity(Duration::from_secs(1)), MAX_SAMPLES);
    }
}
