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

use std::collections::VecDeque;

use foldhash::HashSet;

/// Generations the window is split into.
pub const GENERATIONS: usize = 8;

/// The default window: 7 days.
pub const DEFAULT_WINDOW_HOURS: u64 = 7 * 24;

const DEFAULT_WINDOW_MICROS: i64 = DEFAULT_WINDOW_HOURS as i64 * 3_600 * 1_000_000;

/// The default most ids remembered: 50,000,000 (about 1.7 GB).
pub const DEFAULT_MAX_IDS: usize = 50_000_000;

/// The 128-bit keys of recently recorded order ids.
#[derive(Debug)]
pub struct OrderDedup {
    /// Newest first: when each generation opened (µs), and its keys.
    generations: VecDeque<(i64, HashSet<u128>)>,
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

    /// Every key held, for a snapshot.
    pub fn keys(&self) -> impl Iterator<Item = u128> + '_ {
        self.generations.iter().flat_map(|(_, keys)| keys.iter().copied())
    }

    /// Puts back the keys of a snapshot as one generation opened at `now` (the snapshot does
    /// not say when each was recorded: each is kept a window from the restart at least).
    pub fn restore(&mut self, keys: impl IntoIterator<Item = u128>, now: i64) {
        self.generations.clear();
        self.generations.push_front((now, keys.into_iter().collect()));
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.generations.iter().map(|(_, keys)| keys.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots allocated in all generations (for memory accounting).
    pub fn capacity(&self) -> usize {
        self.generations.iter().map(|(_, keys)| keys.capacity()).sum()
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
    fn the_ids_held_stay_near_the_most_allowed() {
        let mut d = OrderDedup::new(1_000 * HOUR, 800);
        for k in 0..10_000u128 {
            assert!(d.insert(k, 0));
        }
        assert!(d.len() <= 800 + 100, "{}", d.len());
        assert!(!d.insert(9_999, 0), "the newest are held");
    }
}
