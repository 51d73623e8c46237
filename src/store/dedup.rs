//! The order ids recently recorded, so a retried order is not counted twice, within a bounded
//! window: remembering every order id forever cost 35 bytes an order (70 GB at two billion).
//!
//! Ids are kept in generations, each opened when the newest is a [`GENERATIONS`]th of the window
//! old or holds a [`GENERATIONS`]th of the most ids allowed; the oldest generation is dropped
//! when there are more than `GENERATIONS + 1`. So an id is remembered for at least the window
//! after it was recorded, unless more than the most ids allowed came after it within that time,
//! and the ids held never exceed the most allowed by more than a generation. An order retried
//! after it was forgotten is counted again. Generations are stamped with the write's time, so
//! replaying the log forgets what the live server forgot.
//!
//! A key is the customer's ordinal (32 bits) over 96 bits of the order id's hash: a retry names
//! the same customer, and erasing a customer forgets its order ids with it
//! ([`OrderDedup::forget_customer`]), so reloading the same files recreates the customer with
//! its orders. Keys of a version-1 snapshot hashed the order id alone: they are kept apart
//! ([`OrderDedup::recorded_before_upgrade`]) for one window after the restart.

use std::collections::VecDeque;

use foldhash::HashSet;

/// Generations the window is split into.
pub const GENERATIONS: usize = 8;

/// The default window: 7 days.
pub const DEFAULT_WINDOW_HOURS: u64 = 7 * 24;

const DEFAULT_WINDOW_MICROS: i64 = DEFAULT_WINDOW_HOURS as i64 * 3_600 * 1_000_000;

/// The default most ids remembered: 50,000,000 (about 1.7 GB).
pub const DEFAULT_MAX_IDS: usize = 50_000_000;

/// The key of `order_id` recorded for the customer at `ordinal`.
pub fn key(ordinal: u32, order_id: &str) -> u128 {
    const LOW_96: u128 = (1 << 96) - 1;
    (u128::from(ordinal) << 96) | (xxhash_rust::xxh3::xxh3_128(order_id.as_bytes()) & LOW_96)
}

/// The key of `order_id` in a version-1 snapshot.
pub fn legacy_key(order_id: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(order_id.as_bytes())
}

fn ordinal_of(key: u128) -> u32 {
    (key >> 96) as u32
}

/// The 128-bit keys of recently recorded order ids.
#[derive(Debug)]
pub struct OrderDedup {
    /// Newest first: when each generation opened (µs), and its keys.
    generations: VecDeque<(i64, HashSet<u128>)>,
    /// Keys restored from a version-1 snapshot ([`legacy_key`]), held until `legacy_until` (µs).
    legacy: HashSet<u128>,
    legacy_until: i64,
    window_micros: i64,
    max_ids: usize,
}

impl Default for OrderDedup {
    fn default() -> Self {
        OrderDedup::new(DEFAULT_WINDOW_MICROS, DEFAULT_MAX_IDS)
    }
}

impl OrderDedup {
    pub fn new(window_micros: i64, max_ids: usize) -> OrderDedup {
        OrderDedup {
            generations: VecDeque::new(),
            legacy: HashSet::default(),
            legacy_until: 0,
            window_micros: window_micros.max(GENERATIONS as i64),
            max_ids: max_ids.max(GENERATIONS),
        }
    }

    /// Changes the bounds; ids held stay until the generations holding them are dropped.
    pub fn set_bounds(&mut self, window_micros: i64, max_ids: usize) {
        self.window_micros = window_micros.max(GENERATIONS as i64);
        self.max_ids = max_ids.max(GENERATIONS);
    }

    /// Records `key` at `now` (µs); false if it was recorded within the window (a retry).
    pub fn insert(&mut self, key: u128, now: i64) -> bool {
        if self.generations.iter().any(|(_, keys)| keys.contains(&key)) {
            return false;
        }
        let slice = self.window_micros / GENERATIONS as i64;
        let per_generation = self.max_ids / GENERATIONS;
        let open_new = match self.generations.front() {
            None => true,
            Some((opened, keys)) => now.saturating_sub(*opened) >= slice || keys.len() >= per_generation,
        };
        if open_new {
            self.generations.push_front((now, HashSet::default()));
            while self.generations.len() > GENERATIONS + 1 {
                self.generations.pop_back();
            }
        }
        self.generations[0].1.insert(key)
    }

    /// Whether `order_id` was recorded before a restart from a version-1 snapshot, within the
    /// window since (those keys name no customer).
    pub fn recorded_before_upgrade(&mut self, order_id: &str, now: i64) -> bool {
        if self.legacy.is_empty() {
            return false;
        }
        if now >= self.legacy_until {
            self.legacy = HashSet::default();
            return false;
        }
        self.legacy.contains(&legacy_key(order_id))
    }

    /// Forgets every order id recorded for the customer at `ordinal` (erased): one pass over
    /// the keys held, on the writer: 2.0 ms a million keys in a release build
    /// (`forgetting_a_customer_costs_one_pass`), so 100 ms an erasure at the default most ids.
    /// Erasures are rare; an index of keys by customer would cost every order more memory.
    pub fn forget_customer(&mut self, ordinal: u32) {
        for (_, keys) in &mut self.generations {
            keys.retain(|k| ordinal_of(*k) != ordinal);
        }
    }

    /// Every key held, for a snapshot.
    pub fn keys(&self) -> impl Iterator<Item = u128> + '_ {
        self.generations.iter().flat_map(|(_, keys)| keys.iter().copied())
    }

    /// The keys of a version-1 snapshot still held, and until when (µs), for a snapshot.
    pub fn legacy_keys(&self) -> (Vec<u128>, i64) {
        (self.legacy.iter().copied().collect(), self.legacy_until)
    }

    /// Puts back the keys of a snapshot as one generation opened at `now` (the snapshot does
    /// not say when each was recorded: each is kept a window from the restart at least), and
    /// the version-1 keys it holds until `legacy_until` (read from a version-1 snapshot: a
    /// window from now; a later snapshot keeps the time, so restarts do not extend it).
    pub fn restore(
        &mut self,
        keys: impl IntoIterator<Item = u128>,
        legacy: impl IntoIterator<Item = u128>,
        legacy_until: Option<i64>,
        now: i64,
    ) {
        self.generations.clear();
        self.generations.push_front((now, keys.into_iter().collect()));
        self.legacy = legacy.into_iter().collect();
        self.legacy_until = legacy_until.unwrap_or_else(|| now.saturating_add(self.window_micros));
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.generations.iter().map(|(_, keys)| keys.len()).sum::<usize>() + self.legacy.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots allocated in all generations (for memory accounting).
    pub fn capacity(&self) -> usize {
        self.generations
            .iter()
            .map(|(_, keys)| keys.capacity())
            .sum::<usize>()
            + self.legacy.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600 * 1_000_000;

    #[test]
    fn a_retry_within_the_window_is_caught_and_one_after_it_counts() {
        let mut d = OrderDedup::new(8 * HOUR, 1_000);
        assert!(d.insert(1, 0));
        assert!(!d.insert(1, 7 * HOUR), "within the window");
        for h in 1..=20 {
            assert!(d.insert(100 + h as u128, h * HOUR));
        }
        assert!(d.insert(1, 21 * HOUR), "forgotten after the window");
        assert!(d.len() <= 9 + 1, "{}", d.len());
    }

    #[test]
    fn ids_are_remembered_for_at_least_the_window() {
        let mut d = OrderDedup::new(8 * HOUR, 1_000_000);
        for minute in 0..(30 * 60) {
            let now = minute * 60 * 1_000_000;
            assert!(d.insert(minute as u128, now));
            // Every id recorded within the last window is still held.
            let first_held = (minute - 8 * 60).max(0);
            assert!(!d.insert(first_held as u128, now), "minute {minute}");
        }
    }

    #[test]
    fn an_erased_customers_ids_are_forgotten_and_others_kept() {
        let mut d = OrderDedup::new(8 * HOUR, 1_000);
        assert!(d.insert(key(7, "o1"), 0));
        assert!(d.insert(key(8, "o2"), 0));
        assert!(
            d.insert(key(8, "o1"), 0),
            "the same order id for another customer"
        );
        assert!(!d.insert(key(7, "o1"), HOUR), "a retry");
        d.forget_customer(7);
        assert!(d.insert(key(7, "o1"), HOUR), "forgotten with the customer");
        assert!(!d.insert(key(8, "o2"), HOUR), "another customer's are kept");
    }

    #[test]
    fn version_1_keys_are_held_for_a_window_after_the_restart() {
        let mut d = OrderDedup::new(8 * HOUR, 1_000);
        d.restore([key(3, "new")], [legacy_key("old")], None, 10 * HOUR);
        assert!(d.recorded_before_upgrade("old", 17 * HOUR));
        assert!(!d.recorded_before_upgrade("other", 17 * HOUR));
        assert!(!d.insert(key(3, "new"), 17 * HOUR));
        // A restart from a later snapshot keeps the deadline instead of starting a new window.
        let (legacy, until) = d.legacy_keys();
        assert_eq!(until, 18 * HOUR);
        let mut again = OrderDedup::new(8 * HOUR, 1_000);
        again.restore([], legacy, Some(until), 17 * HOUR);
        assert!(again.recorded_before_upgrade("old", 17 * HOUR));
        assert!(
            !again.recorded_before_upgrade("old", 18 * HOUR),
            "the window has passed"
        );
        assert!(
            !d.recorded_before_upgrade("old", 18 * HOUR),
            "the window has passed"
        );
        assert_eq!(d.legacy_keys().0.len(), 0);
    }

    /// Not a check: how long one erasure's pass takes over a million keys (in a release build:
    /// `cargo test --release --lib forgetting -- --ignored --nocapture`).
    #[test]
    #[ignore]
    fn forgetting_a_customer_costs_one_pass() {
        let mut d = OrderDedup::new(8 * HOUR, 10_000_000);
        for i in 0..1_000_000u32 {
            d.insert(key(i, &i.to_string()), 0);
        }
        let started = std::time::Instant::now();
        d.forget_customer(42);
        let took = started.elapsed();
        println!(
            "forget_customer over {} keys: {took:?} ({:.1} ns a key)",
            d.len(),
            took.as_nanos() as f64 / d.len() as f64
        );
    }

    #[test]
    fn the_ids_held_stay_near_the_most_allowed() {
        let mut d = OrderDedup::new(1_000 * HOUR, 800);
        for k in 0..10_000u128 {
            assert!(d.insert(k, 0));
        }
        assert!(d.len() <= 800 + 100, "{}", d.len());
        assert!(!d.insert(9_999, 0), "the newest are held");
    }
}
