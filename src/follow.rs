//! The follow feed: what each write did to customers and memberships, kept in memory for the
//! replicas following the server (`Replication.Follow`).
//!
//! The membership event log ([`crate::events`]) says who entered and left which segment, but a
//! replica also needs to know which customers exist, so it can tell an unknown customer from a
//! non-member: customers created by a write enter no event unless they enter a segment, and an
//! erased customer's ordinal is reused. The feed adds both, write by write, in log order.
//!
//! It costs nothing until a follower asks for it: the store fills an entry only while the feed
//! is *armed*, which the first follower does when it takes its snapshot (under the writer lock, so
//! the snapshot and the feed meet at one sequence). With no follower left for [`IDLE_GRACE`], the
//! feed is disarmed and emptied. Every arming starts a new *epoch*: a position is a sequence
//! within an epoch, so a follower whose epoch is gone (a restart, a disarmed feed) or whose
//! position fell out of the feed's bound is given a fresh snapshot, never a gap.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::segment::registry::Registry;

/// Items (customers created or erased, membership changes) the feed holds by default, about
/// 16 bytes each.
pub const DEFAULT_MAX_ITEMS: usize = 4_000_000;

/// How long the feed stays armed after its last follower left, so a follower reconnecting after
/// a dropped connection resumes where it was instead of taking a new snapshot.
pub const IDLE_GRACE: Duration = Duration::from_secs(60);

/// One write's effect, as a follower applies it.
#[derive(Debug, Default)]
pub struct Entry {
    /// Its place in the feed's epoch, from 1 without gaps.
    pub sequence: u64,
    /// The write-ahead log record it came from (0 without a log).
    pub log_sequence: u64,
    pub time_micros: i64,
    /// Customers the write erased, by ordinal (applied first: an ordinal erased here may be
    /// given to a customer created by a later write).
    pub erased: Vec<u32>,
    /// Customers the write created: ordinal and id.
    pub created: Vec<(u32, Arc<str>)>,
    /// Membership changes: ordinal, index into `segment_ids`, entered.
    pub changes: Vec<(u32, u32, bool)>,
    /// The segments `changes` name.
    pub segment_ids: Vec<Arc<str>>,
    /// Every segment's id after the write, when the write changed which segments exist.
    pub segments: Option<Arc<[Arc<str>]>>,
}

impl Entry {
    fn items(&self) -> usize {
        1 + self.erased.len() + self.created.len() + self.changes.len()
    }
}

/// Where a follower stands: a sequence within an epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub epoch: u64,
    pub sequence: u64,
}

/// What [`Feed::after`] finds for a position.
#[derive(Debug)]
pub enum Next {
    /// The entries after the position, oldest first (none: the follower is current).
    Entries(Vec<Arc<Entry>>),
    /// The feed no longer holds what follows the position: take a new snapshot.
    Gone,
}

#[derive(Debug, Default)]
struct Inner {
    epoch: u64,
    entries: VecDeque<Arc<Entry>>,
    items: usize,
    /// The sequence the next entry gets.
    next: u64,
    /// The oldest sequence a follower can still resume after (entries before it were dropped).
    floor: u64,
    /// The registry's segment ids as of the last entry, to see when they change, and the
    /// registry they were read from.
    segments: Option<Arc<[Arc<str>]>>,
    registry: Option<Arc<Registry>>,
    idle_since: Option<Instant>,
}

/// The feed, shared by the store (which fills it) and the followers' streams (which read it).
#[derive(Debug)]
pub struct Feed {
    armed: AtomicBool,
    followers: AtomicUsize,
    max_items: AtomicUsize,
    inner: Mutex<Inner>,
    /// The last sequence published, for followers waiting for the next entry.
    published: tokio::sync::watch::Sender<u64>,
}

impl Default for Feed {
    fn default() -> Self {
        Feed {
            armed: AtomicBool::new(false),
            followers: AtomicUsize::new(0),
            max_items: AtomicUsize::new(DEFAULT_MAX_ITEMS),
            inner: Mutex::new(Inner::default()),
            published: tokio::sync::watch::channel(0).0,
        }
    }
}

/// A follower's registration; the feed counts it until dropped.
#[derive(Debug)]
pub struct Following {
    feed: Arc<Feed>,
}

impl Drop for Following {
    fn drop(&mut self) {
        if self.feed.followers.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.feed.inner.lock().idle_since = Some(Instant::now());
        }
    }
}

impl Feed {
    /// Whether writes should fill entries: a follower is (or was lately) following.
    #[inline]
    pub fn armed(&self) -> bool {
        self.armed.load(Ordering::Relaxed)
    }

    /// Bounds the items held; older entries are dropped first.
    pub fn set_max_items(&self, n: usize) {
        self.max_items.store(n.max(1), Ordering::Relaxed);
    }

    /// Registers a follower (counted until the returned value is dropped).
    pub fn follow(self: &Arc<Self>) -> Following {
        self.followers.fetch_add(1, Ordering::AcqRel);
        self.inner.lock().idle_since = None;
        Following { feed: self.clone() }
    }

    /// Followers connected now.
    pub fn followers(&self) -> usize {
        self.followers.load(Ordering::Acquire)
    }

    /// Arms the feed if it is not, and returns the position a snapshot taken now stands at.
    /// Called with the store's writer lock held, so that no write falls between the snapshot
    /// and the feed.
    pub fn arm(&self, registry: &Arc<Registry>, segments: Arc<[Arc<str>]>) -> Position {
        let mut inner = self.inner.lock();
        if !self.armed.load(Ordering::Acquire) {
            use std::hash::BuildHasher;
            let epoch =
                std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now()) | 1;
            *inner = Inner {
                epoch,
                next: 1,
                floor: 0,
                segments: Some(segments),
                registry: Some(registry.clone()),
                ..Inner::default()
            };
            self.armed.store(true, Ordering::Release);
        }
        Position {
            epoch: inner.epoch,
            sequence: inner.next - 1,
        }
    }

    /// Appends a write's entry, unless it holds nothing and the segments did not change (its
    /// `sequence` and `segments` are set here; `registry` is the segment registry after
    /// the write, and `segments` lists its ids, asked only when the registry changed). Called by
    /// the store in log order.
    pub fn push(
        &self,
        mut entry: Entry,
        registry: &Arc<Registry>,
        segments: impl FnOnce() -> Arc<[Arc<str>]>,
    ) {
        let sequence = {
            let mut inner = self.inner.lock();
            if self.followers.load(Ordering::Acquire) == 0
                && inner.idle_since.is_some_and(|t| t.elapsed() >= IDLE_GRACE)
            {
                // Nobody followed for a while: stop paying for the feed.
                self.armed.store(false, Ordering::Release);
                *inner = Inner::default();
                return;
            }
            // Held, not just compared by address, so a new registry never takes an old one's.
            if !inner.registry.as_ref().is_some_and(|r| Arc::ptr_eq(r, registry)) {
                inner.registry = Some(registry.clone());
                let now = segments();
                if inner.segments.as_deref() != Some(&*now) {
                    entry.segments = Some(now.clone());
                    inner.segments = Some(now);
                }
            }
            if entry.items() == 1 && entry.segments.is_none() {
                return;
            }
            entry.sequence = inner.next;
            inner.next += 1;
            inner.items += entry.items();
            inner.entries.push_back(Arc::new(entry));
            let max = self.max_items.load(Ordering::Relaxed);
            while inner.items > max && inner.entries.len() > 1 {
                let old = inner.entries.pop_front().expect("more than one entry");
                inner.items -= old.items();
                inner.floor = old.sequence;
            }
            inner.next - 1
        };
        self.published.send_replace(sequence);
    }

    /// The entries after `position`, at most `max_items` items' worth (at least one entry).
    pub fn after(&self, position: Position, max_items: usize) -> Next {
        let inner = self.inner.lock();
        if !self.armed() || position.epoch != inner.epoch || position.sequence < inner.floor {
            return Next::Gone;
        }
        if position.sequence >= inner.next {
            // A position from the future of this epoch: not one this feed gave.
            return Next::Gone;
        }
        let Some(first) = inner.entries.front().map(|e| e.sequence) else {
            return Next::Entries(Vec::new());
        };
        let skip = (position.sequence + 1).saturating_sub(first) as usize;
        let mut out = Vec::new();
        let mut items = 0;
        for e in inner.entries.iter().skip(skip) {
            if !out.is_empty() && items + e.items() > max_items {
                break;
            }
            items += e.items();
            out.push(e.clone());
        }
        Next::Entries(out)
    }

    /// The last sequence published in the current epoch.
    pub fn last(&self) -> Position {
        let inner = self.inner.lock();
        Position {
            epoch: inner.epoch,
            sequence: inner.next.saturating_sub(1),
        }
    }

    /// Notified at each entry published.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// Items held now.
    pub fn items(&self) -> usize {
        self.inner.lock().items
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Arc<[Arc<str>]> {
        v.iter().map(|s| Arc::from(*s)).collect()
    }

    fn entry(changes: usize) -> Entry {
        Entry {
            changes: (0..changes as u32).map(|o| (o, 0, true)).collect(),
            segment_ids: vec![Arc::from("s")],
            ..Entry::default()
        }
    }

    #[test]
    fn positions_resume_within_an_epoch_and_fall_out_of_the_bound() {
        let feed = Arc::new(Feed::default());
        let (r1, r2) = (Arc::new(Registry::default()), Arc::new(Registry::default()));
        assert!(!feed.armed());
        let _f = feed.follow();
        let start = feed.arm(&r1, ids(&["s"]));
        assert_eq!(start.sequence, 0);
        feed.push(entry(3), &r1, || ids(&["s"]));
        feed.push(entry(2), &r2, || ids(&["s", "t"]));
        let Next::Entries(all) = feed.after(start, usize::MAX) else {
            panic!("gone")
        };
        assert_eq!(all.iter().map(|e| e.sequence).collect::<Vec<_>>(), [1, 2]);
        assert!(all[0].segments.is_none(), "the segments did not change");
        assert_eq!(all[1].segments.as_deref().map(<[_]>::len), Some(2));
        // Paged by items, at least one entry a page.
        let Next::Entries(page) = feed.after(start, 1) else {
            panic!("gone")
        };
        assert_eq!(page.len(), 1);
        let Next::Entries(none) = feed.after(feed.last(), 10) else {
            panic!("gone")
        };
        assert!(none.is_empty());
        // Another epoch, or a position the feed never gave: a new snapshot.
        assert!(matches!(
            feed.after(
                Position {
                    epoch: start.epoch ^ 2,
                    sequence: 1
                },
                10
            ),
            Next::Gone
        ));
        assert!(matches!(
            feed.after(
                Position {
                    epoch: start.epoch,
                    sequence: 9
                },
                10
            ),
            Next::Gone
        ));
        // Over the bound, the oldest entries go, and positions before them with them.
        feed.set_max_items(5);
        feed.push(entry(3), &r2, || ids(&["s", "t"]));
        assert!(matches!(feed.after(start, 10), Next::Gone));
        let Next::Entries(kept) = feed.after(
            Position {
                epoch: start.epoch,
                sequence: 2,
            },
            10,
        ) else {
            panic!("gone")
        };
        assert_eq!(kept.len(), 1);
    }

    #[test]
    fn arming_twice_keeps_the_epoch() {
        let feed = Arc::new(Feed::default());
        let r1 = Arc::new(Registry::default());
        let a = feed.arm(&r1, ids(&[]));
        feed.push(entry(1), &r1, || ids(&[]));
        // Nothing to say: no entry.
        feed.push(Entry::default(), &r1, || ids(&[]));
        let b = feed.arm(&r1, ids(&[]));
        assert_eq!((a.epoch, b.sequence), (b.epoch, 1));
    }
}
