//! Membership events: every entry into and exit from a segment, numbered from 1 without gaps.
//!
//! A write notes the changes it makes (customer ordinal, segment slot, direction, cause) while it
//! holds the writer lock and commits them as one batch tagged with its log record's sequence. A
//! batch is kept in memory (24 bytes an event, for the retention window) and appended to the event
//! log on disk (`events/` in the data directory). Watchers see a batch once its log record is
//! durable, so an event never announces a change a crash could take back.
//!
//! The event log is written to the OS at every batch and synced at every snapshot cut and clean
//! shutdown. A failed write keeps the batch (and the ones after it) in memory and writes them, in
//! order, at a later batch or the next sync; until then syncs fail, so snapshots wait. Recovery
//! loads it, then replays the write-ahead log: records after the event log's last batch make
//! their events again (replay runs each record at its own time, so it makes the same
//! ones). Because a snapshot cut syncs the event log first, the records a snapshot covers never hold
//! events the event log lacks. Batches for records the write-ahead log lost (a power cut before an
//! unacknowledged write reached the disk) are cut off the event log.
//!
//! Batches name segments and activities by number, declaring a name in the batch that first uses
//! it; each new file starts with a batch declaring every name known, so the files retention
//! leaves never need a deleted one.
//!
//! Events name customers by ordinal, and an erased customer's ordinal is reused: each erasure is
//! recorded with the customer id, and an event resolves to the id its ordinal had at that time.

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use foldhash::HashMap;
use parking_lot::{Mutex, RwLock};
use prost::Message;

use crate::disk::{self, Disk};
use crate::error::{Error, Result};
use crate::persist::pb::{EventBatch, Name};

/// Events kept by default.
pub const DEFAULT_MAX_EVENTS: u64 = 10_000_000;
/// Age after which events are dropped by default: 30 days.
pub const DEFAULT_MAX_AGE_SECS: u64 = 30 * 86_400;
/// Size at which an event log file is closed and the next one started.
const FILE_BYTES: u64 = 64 * 1024 * 1024;
const MAGIC: &[u8; 8] = b"SEGDEVT1";
const EXTENSION: &str = "events";

/// Why a membership changed. The numbers are those of `segmentd.v1.MembershipCause`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Cause {
    Rule = 1,
    Time = 2,
    Include = 3,
    Exclude = 4,
    Account = 5,
    Activity = 6,
    MemberLoad = 7,
    Reclassification = 8,
    Deletion = 9,
}

impl Cause {
    pub fn from_u8(v: u8) -> Option<Cause> {
        Some(match v {
            1 => Cause::Rule,
            2 => Cause::Time,
            3 => Cause::Include,
            4 => Cause::Exclude,
            5 => Cause::Account,
            6 => Cause::Activity,
            7 => Cause::MemberLoad,
            8 => Cause::Reclassification,
            9 => Cause::Deletion,
            _ => return None,
        })
    }
}

/// One membership change noted by a write, before it has a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub ord: u32,
    pub slot: u32,
    pub entered: bool,
    pub cause: Cause,
    /// A move within a family: the member segment the customer left for `slot`.
    pub from_slot: Option<u32>,
}

impl Change {
    pub fn new(ord: u32, slot: u32, entered: bool, cause: Cause) -> Change {
        Change {
            ord,
            slot,
            entered,
            cause,
            from_slot: None,
        }
    }
}

/// Per-shard change lists (in shard order) as one list, allocated once: growing a list of
/// millions by doubling spends most of its time faulting in fresh pages.
pub fn concat_changes(parts: Vec<(usize, Vec<Change>)>) -> Vec<Change> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.1.len()).sum());
    for (_, p) in parts {
        out.extend_from_slice(&p);
    }
    out
}

/// What one write noted, committed together as one batch.
#[derive(Debug, Default)]
pub struct Noted {
    pub changes: Vec<Change>,
    /// Customers the write erased: (ordinal, customer id).
    pub erased: Vec<(u32, Arc<str>)>,
    /// Customers the write created, by ordinal: noted only for the follow feed while it is
    /// armed ([`crate::follow`]); no event of their own.
    pub created: Vec<u32>,
    /// The marketing activity behind `Cause::Activity` changes.
    pub activity: Option<Arc<str>>,
}

impl Noted {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.erased.is_empty()
    }

    pub fn clear(&mut self) {
        // A whole-segment write can note millions: give that memory back.
        if self.changes.capacity() > 1 << 16 {
            self.changes = Vec::new();
        }
        self.changes.clear();
        self.erased.clear();
        self.created.clear();
        self.activity = None;
    }
}

/// A membership event as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub sequence: u64,
    pub time_micros: i64,
    pub segment_id: Arc<str>,
    pub customer_id: Arc<str>,
    pub entered: bool,
    pub cause: Cause,
    pub activity_id: Option<Arc<str>>,
    /// A move within a family: the member segment the customer left (the event stands for that
    /// exit and the entry into `segment_id`).
    pub from_segment_id: Option<Arc<str>>,
}

/// How long events are kept: the newest `max_events`, none older than `max_age_micros`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_events: u64,
    pub max_age_micros: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_events: DEFAULT_MAX_EVENTS,
            max_age_micros: DEFAULT_MAX_AGE_SECS as i64 * 1_000_000,
        }
    }
}

/// An event in memory.
#[derive(Debug, Clone, Copy)]
struct Stored {
    time: i64,
    ord: u32,
    segment: u32,
    /// The activity of an activity event, or the segment left by a move.
    aux: u32,
    flags: u8,
}

const MOVE: u8 = 1 << 5;

fn flags(entered: bool, cause: Cause, moved: bool) -> u8 {
    u8::from(entered) | ((cause as u8) << 1) | if moved { MOVE } else { 0 }
}

fn cause_of(flags: u8) -> Cause {
    Cause::from_u8((flags >> 1) & 0x0f).unwrap_or(Cause::Rule)
}

impl Stored {
    fn moved_from(&self) -> Option<u32> {
        (self.flags & MOVE != 0).then_some(self.aux)
    }

    /// The number of the activity that made this event, if an activity did.
    fn activity(&self) -> Option<u32> {
        (self.flags & MOVE == 0 && cause_of(self.flags) == Cause::Activity && self.aux != 0)
            .then_some(self.aux)
    }

    fn touches(&self, segments: &[u32]) -> bool {
        segments.contains(&self.segment) || self.moved_from().is_some_and(|s| segments.contains(&s))
    }
}

/// Interned names (segment ids, activity ids); number 0 is "none".
#[derive(Debug)]
struct Names {
    list: Vec<Arc<str>>,
    index: HashMap<Arc<str>, u32>,
    /// Numbers of forgotten names, given to new ones.
    free: Vec<u32>,
}

impl Default for Names {
    fn default() -> Self {
        Names {
            list: vec![Arc::from("")],
            index: HashMap::default(),
            free: Vec::new(),
        }
    }
}

impl Names {
    /// The number of `name`, and whether it is new (then a batch declares it).
    fn intern(&mut self, name: &Arc<str>) -> (u32, bool) {
        if let Some(&n) = self.index.get(name) {
            return (n, false);
        }
        let n = match self.free.pop() {
            Some(n) => {
                self.list[n as usize] = name.clone();
                n
            }
            None => {
                self.list.push(name.clone());
                self.list.len() as u32 - 1
            }
        };
        self.index.insert(name.clone(), n);
        (n, true)
    }

    /// Forgets every name whose number `used` does not hold; their numbers go to new names.
    fn forget_unused(&mut self, used: &[bool]) {
        let empty: Arc<str> = Arc::from("");
        for n in 1..self.list.len() {
            if !used.get(n).copied().unwrap_or(false) && !self.list[n].is_empty() {
                self.index.remove(&self.list[n]);
                self.list[n] = empty.clone();
                self.free.push(n as u32);
            }
        }
    }

    fn set(&mut self, number: u32, name: &str) -> Result<()> {
        let n = number as usize;
        if n == 0 || n > MAX_NAMES {
            return Err(Error::DataLoss(format!(
                "event log: name number {number} out of range"
            )));
        }
        if n > self.list.len() {
            // Files written before each file declared its names may rely on names declared in a
            // file retention deleted: the names between stay unknown (events naming them read
            // with an empty name) rather than the server refusing to start.
            tracing::warn!(
                number,
                known = self.list.len() - 1,
                "event log: names declared in a deleted file are unknown"
            );
            self.list.resize(n, Arc::from(""));
        }
        let name: Arc<str> = Arc::from(name);
        if n == self.list.len() {
            self.list.push(name.clone());
        } else {
            // A number given again to a new name (the old one was forgotten).
            let old = std::mem::replace(&mut self.list[n], name.clone());
            if self.index.get(&old) == Some(&number) {
                self.index.remove(&old);
            }
        }
        self.index.insert(name, number);
        Ok(())
    }

    fn get(&self, number: u32) -> Arc<str> {
        self.list
            .get(number as usize)
            .cloned()
            .unwrap_or_else(|| Arc::from(""))
    }
}

/// Where a loaded batch sits on disk, to cut it off if the write-ahead log lost its record.
#[derive(Debug, Clone, Copy)]
struct LoadedBatch {
    log_sequence: u64,
    first_sequence: u64,
    file: usize,
    offset: u64,
}

#[derive(Debug, Default)]
struct Inner {
    /// Sequence of `events[0]`; with no events, the next sequence.
    first: u64,
    events: VecDeque<Stored>,
    segments: Names,
    activities: Names,
    /// Erased customers by ordinal: (end, id), oldest first. Events before `end` that name the
    /// ordinal are that customer's.
    erased: HashMap<u32, Vec<(u64, Arc<str>)>>,
    erased_order: VecDeque<(u64, u32)>,
    /// Customers being erased by the write in progress (between the store forgetting the id
    /// and the batch being committed).
    erasing: HashMap<u32, Arc<str>>,
    /// Log sequence of the last committed batch.
    last_log_sequence: u64,
    /// Committed batches whose log record is not durable yet: (log sequence, last event sequence).
    undurable: VecDeque<(u64, u64)>,
    /// The last event sequence watchers may see.
    published: u64,
    retention: Retention,
    /// Events dropped since activity names were last swept.
    dropped_since_sweep: u64,
}

/// More names than any event log declares: segments and activities are numbered from 1, and
/// activity numbers are reused once no retained event names them (at most twice the events
/// retained are in use between two sweeps).
const MAX_NAMES: usize = 1 << 28;

/// Fewest dropped events between two sweeps of activity names.
const ACTIVITY_SWEEP_MIN: u64 = 4_096;

impl Inner {
    fn next(&self) -> u64 {
        self.first + self.events.len() as u64
    }

    /// A batch without events that declares every name known, written first in each new file:
    /// a name is otherwise declared once, in the batch that first used it, and retention deletes
    /// old files, so a file must not rely on an older one for its names.
    fn names_batch(&self, first_sequence: u64) -> EventBatch {
        let declare = |names: &Names| {
            names
                .list
                .iter()
                .enumerate()
                .skip(1)
                .filter(|(_, v)| !v.is_empty())
                .map(|(n, v)| Name {
                    number: n as u32,
                    value: v.to_string(),
                })
                .collect()
        };
        EventBatch {
            first_sequence,
            segments: declare(&self.segments),
            activities: declare(&self.activities),
            ..EventBatch::default()
        }
    }

    fn push_batch(&mut self, time: i64, stored: impl Iterator<Item = Stored>, erased: Vec<(u32, Arc<str>)>) {
        self.events.extend(stored);
        let end = self.next();
        for (ord, id) in erased {
            self.erased.entry(ord).or_default().push((end, id));
            self.erased_order.push_back((end, ord));
        }
        self.prune(time);
    }

    /// Drops events beyond the retention window, and erasures no retained event needs.
    fn prune(&mut self, now: i64) {
        let excess = (self.events.len() as u64).saturating_sub(self.retention.max_events) as usize;
        let mut drop = excess;
        let oldest = now.saturating_sub(self.retention.max_age_micros);
        while drop < self.events.len() && self.events[drop].time < oldest {
            drop += 1;
        }
        if drop > 0 {
            self.events.drain(..drop);
            self.first += drop as u64;
            // Activity ids live as long as an event names them: once retention has dropped as
            // many events as it holds (amortized, one pass over the retained), forget the
            // others, so distinct activity ids are bounded by retention, not kept forever.
            self.dropped_since_sweep += drop as u64;
            if self.dropped_since_sweep >= (self.events.len() as u64).max(ACTIVITY_SWEEP_MIN) {
                self.dropped_since_sweep = 0;
                let mut used = vec![false; self.activities.list.len()];
                for n in self.events.iter().filter_map(Stored::activity) {
                    if let Some(u) = used.get_mut(n as usize) {
                        *u = true;
                    }
                }
                self.activities.forget_unused(&used);
            }
        }
        while let Some(&(end, ord)) = self.erased_order.front() {
            if end > self.first {
                break;
            }
            self.erased_order.pop_front();
            if let Some(list) = self.erased.get_mut(&ord) {
                list.retain(|(e, _)| *e != end);
                if list.is_empty() {
                    self.erased.remove(&ord);
                }
            }
        }
    }

    /// The customer id ordinal `ord` had at event `sequence`.
    fn customer_id(&self, ord: u32, sequence: u64, current: &dyn Fn(u32) -> Option<Arc<str>>) -> Arc<str> {
        if let Some(list) = self.erased.get(&ord)
            && let Some((_, id)) = list.iter().find(|(end, _)| *end > sequence)
        {
            return id.clone();
        }
        if let Some(id) = current(ord) {
            return id;
        }
        // Being erased right now: the store has let go of the id, the batch is not in yet.
        self.erasing.get(&ord).cloned().unwrap_or_else(|| Arc::from(""))
    }

    fn event(&self, sequence: u64, e: &Stored, current: &dyn Fn(u32) -> Option<Arc<str>>) -> Event {
        let cause = cause_of(e.flags);
        let moved = e.moved_from();
        Event {
            sequence,
            time_micros: e.time,
            segment_id: self.segments.get(e.segment),
            customer_id: self.customer_id(e.ord, sequence, current),
            entered: e.flags & 1 == 1,
            cause,
            activity_id: (moved.is_none() && cause == Cause::Activity && e.aux != 0)
                .then(|| self.activities.get(e.aux)),
            from_segment_id: moved.map(|s| self.segments.get(s)),
        }
    }
}

/// The open event log file.
#[derive(Debug)]
struct Writer {
    dir: PathBuf,
    file: disk::File,
    path: PathBuf,
    bytes: u64,
    /// Set by a failed write, cleared once every pending batch is written.
    failed: Option<String>,
    /// Framed batches not yet written since a write failed, oldest first, with their first
    /// sequence: written in order once the disk takes them again, so the file never has a gap.
    pending: VecDeque<(u64, Vec<u8>)>,
    /// When writing the pending batches is tried next (a full disk is not hammered).
    retry_at: std::time::Instant,
}

/// How long after a failed event log write the next attempt waits.
const RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// One page of events read for a watcher.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Page {
    pub events: Vec<Event>,
    /// Every event up to this sequence was returned or filtered out.
    pub last: u64,
}

/// The membership events of the store.
#[derive(Debug)]
pub struct EventLog {
    inner: RwLock<Inner>,
    writer: Mutex<Option<Writer>>,
    /// Batches loaded from disk, until recovery has checked them against the write-ahead log.
    loaded: Mutex<(Vec<PathBuf>, Vec<LoadedBatch>)>,
    published: tokio::sync::watch::Sender<u64>,
    /// Failed attempts to write batches (`segmentd_event_log_write_failures_total`).
    write_failures: std::sync::atomic::AtomicU64,
    /// Disk faults to inject (tests and drills).
    faults: arc_swap::ArcSwap<crate::faults::Faults>,
    /// Size at which a file is closed and the next one started ([`FILE_BYTES`]; tests lower it).
    file_bytes: std::sync::atomic::AtomicU64,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog::new(Retention::default())
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Unavailable(format!("event log: {what} {}: {e}", path.display()))
}

fn file_name(first_sequence: u64) -> String {
    format!("{first_sequence:020}.{EXTENSION}")
}

/// Event log files of `dir`, oldest first, with their first sequence.
fn files(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err("cannot list", dir, e)),
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some(EXTENSION) {
            continue;
        }
        if let Some(seq) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((seq, path));
        }
    }
    out.sort();
    Ok(out)
}

/// The frame of one batch: `[len u32][crc32c u32][EventBatch]`.
fn frame(batch: &EventBatch) -> Vec<u8> {
    let len = batch.encoded_len();
    let mut out = Vec::with_capacity(8 + len);
    out.extend_from_slice(&[0; 8]);
    batch.encode(&mut out).expect("a Vec grows as needed");
    let crc = crc32c::crc32c(&out[8..]);
    out[0..4].copy_from_slice(&(len as u32).to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

impl EventLog {
    /// An empty, in-memory event log.
    pub fn new(retention: Retention) -> EventLog {
        EventLog {
            inner: RwLock::new(Inner {
                first: 1,
                retention,
                ..Inner::default()
            }),
            writer: Mutex::new(None),
            loaded: Mutex::new((Vec::new(), Vec::new())),
            published: tokio::sync::watch::Sender::new(0),
            write_failures: std::sync::atomic::AtomicU64::new(0),
            faults: arc_swap::ArcSwap::from_pointee(crate::faults::Faults::default()),
            file_bytes: std::sync::atomic::AtomicU64::new(FILE_BYTES),
        }
    }

    pub fn set_retention(&self, retention: Retention) {
        self.inner.write().retention = retention;
    }

    /// Loads the event log of `dir` (events, names, erasures) and opens it for appending.
    /// Loaded batches stay unpublished until [`EventLog::recovered`].
    pub fn open(&self, dir: &Path, now: i64) -> Result<()> {
        fs::create_dir_all(dir).map_err(|e| io_err("cannot create", dir, e))?;
        let found = files(dir)?;
        let mut inner = self.inner.write();
        let mut paths = Vec::new();
        let mut batches = Vec::new();
        let mut cut: Option<(usize, u64, String)> = None;
        'files: for (i, (first_in_name, path)) in found.iter().enumerate() {
            let mut data = Vec::new();
            File::open(path)
                .and_then(|mut f| f.read_to_end(&mut data))
                .map_err(|e| io_err("cannot read", path, e))?;
            paths.push(path.clone());
            if data.len() < MAGIC.len() || &data[..MAGIC.len()] != MAGIC {
                cut = Some((i, 0, "no event log header".into()));
                break;
            }
            let mut at = MAGIC.len();
            while at < data.len() {
                let bad = |why: &str| Some((i, at as u64, why.to_string()));
                if data.len() - at < 8 {
                    cut = bad("torn frame header");
                    break 'files;
                }
                let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
                let crc = u32::from_le_bytes(data[at + 4..at + 8].try_into().expect("4 bytes"));
                let Some(payload) = data.get(at + 8..at + 8 + len) else {
                    cut = bad("torn batch");
                    break 'files;
                };
                if crc32c::crc32c(payload) != crc {
                    cut = bad("checksum mismatch");
                    break 'files;
                }
                let Ok(batch) = EventBatch::decode(payload) else {
                    cut = bad("undecodable batch");
                    break 'files;
                };
                let expected = if inner.events.is_empty() && batches.is_empty() {
                    // The oldest retained file may start anywhere.
                    inner.first = batch.first_sequence;
                    batch.first_sequence
                } else {
                    inner.next()
                };
                if batch.first_sequence != expected
                    || batch.ordinals.len() != batch.segment_refs.len()
                    || batch.ordinals.len() != batch.flags.len()
                    || (at == MAGIC.len() && batch.first_sequence != *first_in_name)
                {
                    cut = bad("batch out of sequence");
                    break 'files;
                }
                batches.push(LoadedBatch {
                    log_sequence: batch.log_sequence,
                    first_sequence: batch.first_sequence,
                    file: i,
                    offset: at as u64,
                });
                Self::load_batch(&mut inner, batch)?;
                at += 8 + len;
            }
        }
        let disk = self.faults.load().disk().clone();
        if let Some((i, offset, why)) = cut {
            tracing::warn!(file = %found[i].1.display(), offset, why, "event log cut at a bad batch; later ones are rebuilt from the write-ahead log where it still holds them");
            Self::cut_files(&found, i, offset, &disk)?;
            paths.truncate(i + 1);
        }
        inner.prune(now);
        if inner.events.is_empty() && batches.is_empty() {
            inner.first = inner.first.max(1);
        }
        let next = inner.next();
        // Nothing is visible before recovery checks the batches against the write-ahead log.
        inner.published = next - 1;
        inner.undurable.clear();
        drop(inner);
        *self.loaded.lock() = (paths, batches);
        self.published.send_replace(next - 1);
        let file = Self::create_file(dir, next, &self.inner.read(), &disk)?;
        *self.writer.lock() = Some(file);
        self.remove_old_files(dir);
        Ok(())
    }

    /// Truncates file `i` of `found` at `offset` and deletes the files after it.
    fn cut_files(found: &[(u64, PathBuf)], i: usize, offset: u64, disk: &Arc<Disk>) -> Result<()> {
        let (_, path) = &found[i];
        if offset == 0 {
            disk::remove_file(path, disk).map_err(|e| io_err("cannot delete", path, e))?;
        } else {
            let f = disk::File::open_write(path, disk).map_err(|e| io_err("cannot open", path, e))?;
            f.set_len(offset)
                .and_then(|()| f.sync_data())
                .map_err(|e| io_err("cannot cut", path, e))?;
        }
        for (_, later) in &found[i + 1..] {
            disk::remove_file(later, disk).map_err(|e| io_err("cannot delete", later, e))?;
        }
        Ok(())
    }

    fn load_batch(inner: &mut Inner, batch: EventBatch) -> Result<()> {
        for n in &batch.segments {
            inner.segments.set(n.number, &n.value)?;
        }
        for n in &batch.activities {
            inner.activities.set(n.number, &n.value)?;
        }
        let time = batch.time_micros;
        let activity = batch.activity_ref;
        let mut moved_from = batch.moved_from.iter();
        let mut stored = Vec::with_capacity(batch.ordinals.len());
        for ((&ord, &segment), &flags) in batch
            .ordinals
            .iter()
            .zip(&batch.segment_refs)
            .zip(batch.flags.iter())
        {
            let aux = if flags & MOVE != 0 {
                *moved_from
                    .next()
                    .ok_or_else(|| Error::DataLoss("event log: a move without the segment it left".into()))?
            } else if cause_of(flags) == Cause::Activity {
                activity
            } else {
                0
            };
            stored.push(Stored {
                time,
                ord,
                segment,
                aux,
                flags,
            });
        }
        let stored = stored.into_iter();
        let erased = batch
            .erased
            .iter()
            .map(|n| (n.number, Arc::from(n.value.as_str())))
            .collect();
        inner.push_batch(time, stored, erased);
        inner.last_log_sequence = inner.last_log_sequence.max(batch.log_sequence);
        Ok(())
    }

    /// A new event log file whose batches begin at `first_sequence`, starting with the names
    /// `inner` knows.
    fn create_file(dir: &Path, first_sequence: u64, inner: &Inner, disk: &Arc<Disk>) -> Result<Writer> {
        let path = dir.join(file_name(first_sequence));
        let mut file = disk::File::create(&path, disk).map_err(|e| io_err("cannot create", &path, e))?;
        let names = frame(&inner.names_batch(first_sequence));
        file.write_all(MAGIC)
            .and_then(|()| file.write_all(&names))
            .and_then(|()| file.sync_data())
            .and_then(|()| disk::sync_dir(dir, disk))
            .map_err(|e| io_err("cannot write", &path, e))?;
        Ok(Writer {
            dir: dir.to_path_buf(),
            file,
            path,
            bytes: (MAGIC.len() + names.len()) as u64,
            failed: None,
            pending: VecDeque::new(),
            retry_at: std::time::Instant::now(),
        })
    }

    /// Deletes files holding only events older than the retention window.
    fn remove_old_files(&self, dir: &Path) {
        let first = self.inner.read().first;
        let Ok(found) = files(dir) else { return };
        let disk = self.faults.load().disk().clone();
        for pair in found.windows(2) {
            let ((_, path), (next_first, _)) = (&pair[0], &pair[1]);
            if *next_first <= first
                && let Err(e) = disk::remove_file(path, &disk)
            {
                tracing::warn!(path = %path.display(), error = %e, "cannot delete an old event log file");
            }
        }
    }

    /// Ends recovery: cuts off batches whose log record is past `last_log_sequence` (the write-ahead
    /// log lost them), then publishes everything.
    pub fn recovered(&self, last_log_sequence: u64) -> Result<()> {
        let (paths, batches) = std::mem::take(&mut *self.loaded.lock());
        if let Some(pos) = batches.iter().position(|b| b.log_sequence > last_log_sequence) {
            let b = batches[pos];
            let mut inner = self.inner.write();
            if inner.last_log_sequence > last_log_sequence && inner.next() > b.first_sequence {
                tracing::warn!(
                    from_sequence = b.first_sequence,
                    log_sequence = b.log_sequence,
                    "event log holds changes the write-ahead log lost; cutting them off"
                );
                let keep = b.first_sequence.saturating_sub(inner.first) as usize;
                inner.events.truncate(keep);
                inner
                    .erased
                    .values_mut()
                    .for_each(|l| l.retain(|(end, _)| *end <= b.first_sequence));
                inner.erased.retain(|_, l| !l.is_empty());
                inner.erased_order.retain(|(end, _)| *end <= b.first_sequence);
                inner.last_log_sequence = batches[..pos].last().map_or(0, |p| p.log_sequence);
                let next = inner.next();
                let mut writer = self.writer.lock();
                let dir = writer.as_ref().map(|w| w.dir.clone());
                let disk = self.faults.load().disk().clone();
                if let Some(w) = writer.take() {
                    let _ = disk::remove_file(&w.path, &disk);
                }
                let found: Vec<(u64, PathBuf)> = paths.iter().map(|p| (0, p.clone())).collect();
                Self::cut_files(&found, b.file, b.offset, &disk)?;
                if let Some(dir) = dir {
                    *writer = Some(Self::create_file(&dir, next, &inner, &disk)?);
                }
            }
        }
        let mut inner = self.inner.write();
        inner.undurable.clear();
        inner.published = inner.next() - 1;
        let published = inner.published;
        drop(inner);
        self.published.send_replace(published);
        Ok(())
    }

    /// The log sequence of the last batch committed; replayed records up to it make no events.
    pub fn last_log_sequence(&self) -> u64 {
        self.inner.read().last_log_sequence
    }

    /// Remembers that the write in progress erases `id` at `ord`, before the store lets go of it.
    pub fn erasing(&self, ord: u32, id: Arc<str>) {
        self.inner.write().erasing.insert(ord, id);
    }

    /// Commits what a write noted, as one batch for log record `log_sequence` (0 without a log:
    /// published at once). Segment slots are named by `segment_id`. Clears `noted`.
    pub fn commit(
        &self,
        log_sequence: u64,
        time: i64,
        noted: &mut Noted,
        segment_id: &dyn Fn(u32) -> Option<Arc<str>>,
    ) {
        if noted.is_empty() {
            noted.clear();
            return;
        }
        if log_sequence != 0 && log_sequence <= self.inner.read().last_log_sequence {
            // Replaying a record whose events the event log already holds.
            self.inner.write().erasing.clear();
            noted.clear();
            return;
        }
        let mut writer = self.writer.lock();
        let mut inner = self.inner.write();
        let first_sequence = inner.next();
        let mut batch = EventBatch {
            log_sequence,
            first_sequence,
            time_micros: time,
            ..EventBatch::default()
        };
        let activity = match &noted.activity {
            Some(a) => {
                let (n, new) = inner.activities.intern(a);
                if new {
                    batch.activities.push(Name {
                        number: n,
                        value: a.to_string(),
                    });
                }
                n
            }
            None => 0,
        };
        batch.activity_ref = activity;
        // Slots to segment numbers, looked up once per slot (slots are small and dense).
        let mut numbers: Vec<u32> = Vec::new();
        let mut number = |inner: &mut Inner, batch: &mut EventBatch, slot: u32| -> u32 {
            if let Some(&n) = numbers.get(slot as usize).filter(|&&n| n != u32::MAX) {
                return n;
            }
            let id = segment_id(slot).unwrap_or_else(|| Arc::from(""));
            let (n, new) = inner.segments.intern(&id);
            if new {
                batch.segments.push(Name {
                    number: n,
                    value: id.to_string(),
                });
            }
            if numbers.len() <= slot as usize {
                numbers.resize(slot as usize + 1, u32::MAX);
            }
            numbers[slot as usize] = n;
            n
        };
        let record = writer.is_some();
        // Straight into the retained events (one allocation, no intermediate copy).
        inner.events.reserve(noted.changes.len());
        for c in &noted.changes {
            let segment = number(&mut inner, &mut batch, c.slot);
            let from = c.from_slot.map(|s| number(&mut inner, &mut batch, s));
            let f = flags(c.entered, c.cause, from.is_some());
            let aux = match from {
                Some(s) => s,
                None if c.cause == Cause::Activity => activity,
                None => 0,
            };
            inner.events.push_back(Stored {
                time,
                ord: c.ord,
                segment,
                aux,
                flags: f,
            });
            if record {
                batch.ordinals.push(c.ord);
                batch.segment_refs.push(segment);
                batch.flags.push(f);
                if let Some(s) = from {
                    batch.moved_from.push(s);
                }
            }
        }
        batch.erased = noted
            .erased
            .iter()
            .map(|(ord, id)| Name {
                number: *ord,
                value: id.to_string(),
            })
            .collect();
        if let Some(w) = writer.as_mut() {
            w.pending.push_back((first_sequence, frame(&batch)));
            if w.failed.is_none() || std::time::Instant::now() >= w.retry_at {
                let _ = self.write_pending(w, &inner);
            }
        }
        drop(writer);
        for (ord, _) in &noted.erased {
            inner.erasing.remove(ord);
        }
        inner.push_batch(time, std::iter::empty(), std::mem::take(&mut noted.erased));
        inner.last_log_sequence = inner.last_log_sequence.max(log_sequence);
        let last = inner.next() - 1;
        if log_sequence == 0 {
            inner.published = last;
            drop(inner);
            self.published.send_replace(last);
        } else {
            inner.undurable.push_back((log_sequence, last));
        }
        noted.clear();
    }

    /// Writes the pending batches in order. A failure keeps them (and the ones after them)
    /// for the next attempt, at the next batch after [`RETRY_AFTER`] or the next sync, is
    /// logged once and counted; success after a failure says so.
    fn write_pending(&self, w: &mut Writer, inner: &Inner) -> Result<()> {
        let faults = self.faults.load();
        let file_bytes = self.file_bytes.load(std::sync::atomic::Ordering::Relaxed);
        while let Some(first_sequence) = w.pending.front().map(|p| p.0) {
            let data = std::mem::take(&mut w.pending[0].1);
            if let Err(e) = Self::append(w, first_sequence, &data, &faults, inner, file_bytes) {
                w.pending[0].1 = data;
                if w.failed.is_none() {
                    tracing::error!(error = %e, "event log write failed; the events are kept and written when the disk takes them, snapshots wait for them");
                }
                self.write_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                w.failed = Some(e.to_string());
                w.retry_at = std::time::Instant::now() + RETRY_AFTER;
                return Err(e);
            }
            w.pending.pop_front();
        }
        if w.failed.take().is_some() {
            tracing::info!("event log writes resumed; no event was lost");
        }
        Ok(())
    }

    fn append(
        w: &mut Writer,
        first_sequence: u64,
        data: &[u8],
        faults: &crate::faults::Faults,
        inner: &Inner,
        file_bytes: u64,
    ) -> Result<()> {
        if w.bytes >= file_bytes {
            w.file
                .sync_data()
                .map_err(|e| io_err("cannot sync", &w.path, e))?;
            let dir = w.dir.clone();
            let (pending, failed, retry_at) = (std::mem::take(&mut w.pending), w.failed.take(), w.retry_at);
            let next = Self::create_file(&dir, first_sequence, inner, faults.disk());
            let created = next.map(|n| *w = n);
            (w.pending, w.failed, w.retry_at) = (pending, failed, retry_at);
            created?;
        }
        let written = if faults.take_event_write() {
            Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "no space left on device (injected)",
            ))
        } else {
            w.file.write_all(data)
        };
        if let Err(e) = written {
            // Cut a partial batch off and write the next attempt where it began.
            let _ = w.file.set_len(w.bytes);
            let _ = w.file.seek_to(w.bytes);
            return Err(io_err("cannot append to", &w.path, e));
        }
        w.bytes += data.len() as u64;
        Ok(())
    }

    /// Event batches whose write failed (each attempt), since start.
    pub fn write_failures(&self) -> u64 {
        self.write_failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether event batches wait for the disk (a write failed and was not yet retried whole).
    pub fn write_failing(&self) -> bool {
        self.writer.lock().as_ref().is_some_and(|w| w.failed.is_some())
    }

    /// Sets the disk faults injected into event log writes (tests and drills).
    pub fn set_faults(&self, faults: Arc<crate::faults::Faults>) {
        self.faults.store(faults);
    }

    /// Makes the batches of log records up to `log_sequence` visible to watchers: their records
    /// are durable.
    pub fn durable(&self, log_sequence: u64) {
        let mut inner = self.inner.write();
        let mut published = None;
        while let Some(&(l, last)) = inner.undurable.front() {
            if l > log_sequence {
                break;
            }
            inner.undurable.pop_front();
            published = Some(last);
        }
        if let Some(last) = published {
            inner.published = inner.published.max(last);
            let p = inner.published;
            drop(inner);
            self.published.send_replace(p);
        }
    }

    /// Syncs the event log file (snapshot cuts, clean shutdown); an earlier failed write fails it,
    /// so a snapshot never covers log records whose events are missing here.
    pub fn sync(&self) -> Result<()> {
        let mut writer = self.writer.lock();
        let Some(w) = writer.as_mut() else { return Ok(()) };
        if w.failed.is_some() {
            // The lock order of commits: writer, then inner.
            let inner = self.inner.read();
            self.write_pending(w, &inner).map_err(|e| {
                Error::Unavailable(format!(
                    "event log: {} batches wait for the disk: {e}",
                    w.pending.len()
                ))
            })?;
        }
        w.file
            .sync_data()
            .map_err(|e| io_err("cannot sync", &w.path, e))?;
        let dir = w.dir.clone();
        drop(writer);
        self.remove_old_files(&dir);
        Ok(())
    }

    /// The last sequence watchers may read.
    pub fn published(&self) -> u64 {
        self.inner.read().published
    }

    /// Heap bytes of the retained events (24 an event) and their names.
    pub fn heap_bytes(&self) -> usize {
        let inner = self.inner.read();
        inner.events.capacity() * std::mem::size_of::<Stored>()
            + inner
                .segments
                .list
                .iter()
                .chain(&inner.activities.list)
                .map(|n| n.len() + 32)
                .sum::<usize>()
    }

    /// Whether an event ever named segment `id` (it may be deleted since).
    pub fn knows_segment(&self, id: &str) -> bool {
        self.inner.read().segments.index.contains_key(id)
    }

    /// The oldest sequence retained (the next one when none is).
    pub fn oldest(&self) -> u64 {
        self.inner.read().first
    }

    /// Waits for a sequence after `after` to be published.
    pub async fn wait_after(&self, after: u64) {
        let mut rx = self.published.subscribe();
        let _ = rx.wait_for(|p| *p > after).await;
    }

    /// Events after `after` (0: from the oldest retained) for segments `filter` (all when empty):
    /// at most `max` of them, looking at most at `max_scan`. `current` gives a live customer's id.
    pub fn read(
        &self,
        after: u64,
        filter: &[String],
        max: usize,
        max_scan: usize,
        current: &dyn Fn(u32) -> Option<Arc<str>>,
    ) -> Result<Page> {
        let inner = self.inner.read();
        let after = if after == 0 {
            inner.first.saturating_sub(1)
        } else {
            after
        };
        if after.saturating_add(1) < inner.first {
            return Err(Error::OutOfRange(format!(
                "from_sequence: events after {after} are no longer retained; the oldest retained is {} \
                 (watch from {} to read on from there)",
                inner.first,
                inner.first - 1
            )));
        }
        if after > inner.published {
            let next = inner.next();
            if after >= next {
                return Err(Error::OutOfRange(format!(
                    "from_sequence: {after} is past the last event ({})",
                    next - 1
                )));
            }
        }
        let wanted: Option<Vec<u32>> = (!filter.is_empty()).then(|| {
            filter
                .iter()
                .filter_map(|id| inner.segments.index.get(id.as_str()).copied())
                .collect()
        });
        let mut page = Page {
            events: Vec::new(),
            last: after,
        };
        let mut seq = after + 1;
        let end = inner.published.min(after.saturating_add(max_scan as u64));
        while seq <= end && page.events.len() < max {
            let e = &inner.events[(seq - inner.first) as usize];
            if wanted.as_ref().is_none_or(|w| e.touches(w)) {
                page.events.push(inner.event(seq, e, current));
            }
            page.last = seq;
            seq += 1;
        }
        Ok(page)
    }

    /// Every retained event of the customer `customer_id` (whose ordinal is `ord` if it exists),
    /// in segment `segment` (all when `None`), oldest first.
    pub fn history(
        &self,
        customer_id: &str,
        ord: Option<u32>,
        segment: Option<&str>,
        current: &dyn Fn(u32) -> Option<Arc<str>>,
    ) -> Vec<Event> {
        let inner = self.inner.read();
        // The spans of sequences in which an ordinal named this customer.
        let mut spans: Vec<(u32, u64, u64)> = Vec::new();
        for (&o, list) in &inner.erased {
            let mut start = 0;
            for (end, id) in list {
                if &**id == customer_id {
                    spans.push((o, start, *end));
                }
                start = *end;
            }
        }
        if let Some(o) = ord {
            let start = inner
                .erased
                .get(&o)
                .and_then(|l| l.last())
                .map_or(0, |(end, _)| *end);
            spans.push((o, start, u64::MAX));
        }
        let segment = match segment {
            Some(id) => match inner.segments.index.get(id) {
                Some(&n) => Some(n),
                None => return Vec::new(),
            },
            None => None,
        };
        let mut out = Vec::new();
        if spans.is_empty() {
            return out;
        }
        for (i, e) in inner.events.iter().enumerate() {
            let seq = inner.first + i as u64;
            if seq > inner.published {
                break;
            }
            if segment.is_some_and(|s| !e.touches(&[s])) {
                continue;
            }
            if spans
                .iter()
                .any(|&(o, start, end)| o == e.ord && seq >= start && seq < end)
            {
                out.push(inner.event(seq, e, current));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(map: &[(u32, &str)]) -> impl Fn(u32) -> Option<Arc<str>> {
        let map: Vec<(u32, Arc<str>)> = map.iter().map(|(o, s)| (*o, Arc::from(*s))).collect();
        move |ord| map.iter().find(|(o, _)| *o == ord).map(|(_, s)| s.clone())
    }

    fn segs(slot: u32) -> Option<Arc<str>> {
        Some(Arc::from(format!("seg{slot}")))
    }

    fn change(ord: u32, slot: u32, entered: bool) -> Change {
        Change::new(ord, slot, entered, Cause::Rule)
    }

    /// Retention deletes old files, and a name is declared in the batch that first used it: each
    /// new file declares every name first, so the files left always load (a restart at
    /// 10,000,000 customers failed with "name number 70 out of order").
    #[test]
    fn files_left_by_retention_hold_the_names_their_events_use() {
        let dir = tempfile::tempdir().unwrap();
        let retention = Retention {
            max_events: 50,
            max_age_micros: i64::MAX,
        };
        let log = EventLog::new(retention);
        log.file_bytes.store(300, std::sync::atomic::Ordering::Relaxed);
        log.open(dir.path(), 0).unwrap();
        log.recovered(0).unwrap();
        // Both segments named in the first batch only.
        let mut n = Noted {
            changes: vec![change(0, 1, true), change(1, 2, true)],
            ..Noted::default()
        };
        log.commit(1, 10, &mut n, &segs);
        for k in 0..200u32 {
            n.changes = vec![change(k % 7, 2, k % 2 == 0)];
            log.commit(2 + u64::from(k), 20, &mut n, &segs);
        }
        // A new segment, declared in a file far from the first.
        n.changes = vec![change(3, 3, true)];
        log.commit(300, 30, &mut n, &segs);
        log.sync().unwrap();
        let first_file = dir.path().join(file_name(1));
        assert!(!first_file.exists(), "retention deleted the first file");
        drop(log);

        let again = EventLog::new(retention);
        again.open(dir.path(), 40).unwrap();
        again.recovered(300).unwrap();
        let page = again.read(0, &[], 100, 100, &ids(&[])).unwrap();
        assert_eq!(page.events.len(), 50);
        assert!(
            page.events[..49].iter().all(|e| &*e.segment_id == "seg2"),
            "{page:?}"
        );
        assert_eq!(&*page.events[49].segment_id, "seg3");
    }

    #[test]
    fn reads_in_order_with_filter_and_resolves_reused_ordinals() {
        let log = EventLog::default();
        let mut n = Noted {
            changes: vec![change(0, 1, true), change(1, 2, true)],
            ..Noted::default()
        };
        log.commit(0, 10, &mut n, &segs);
        // Customer 0 ("a") is erased, and its ordinal reused by "c".
        log.erasing(0, Arc::from("a"));
        n.changes = vec![Change {
            cause: Cause::Deletion,
            ..change(0, 1, false)
        }];
        n.erased = vec![(0, Arc::from("a"))];
        log.commit(0, 20, &mut n, &segs);
        n.changes = vec![change(0, 1, true)];
        log.commit(0, 30, &mut n, &segs);
        let now = ids(&[(0, "c"), (1, "b")]);
        let all = log.read(0, &[], 100, 100, &now).unwrap();
        let got: Vec<(u64, &str, &str, bool)> = all
            .events
            .iter()
            .map(|e| (e.sequence, &*e.segment_id, &*e.customer_id, e.entered))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "seg1", "a", true),
                (2, "seg2", "b", true),
                (3, "seg1", "a", false),
                (4, "seg1", "c", true)
            ]
        );
        assert_eq!(all.last, 4);
        let one = log.read(1, &["seg1".into()], 1, 100, &now).unwrap();
        assert_eq!(one.events.len(), 1);
        assert_eq!((one.events[0].sequence, one.last), (3, 3));
        let history = log.history("a", None, None, &now);
        assert_eq!(history.iter().map(|e| e.sequence).collect::<Vec<_>>(), vec![1, 3]);
        let history = log.history("c", Some(0), Some("seg1"), &now);
        assert_eq!(history.iter().map(|e| e.sequence).collect::<Vec<_>>(), vec![4]);
        assert!(matches!(
            log.read(9, &[], 10, 10, &now),
            Err(Error::OutOfRange(_))
        ));
    }

    #[test]
    fn retention_drops_the_oldest_and_says_so() {
        let log = EventLog::new(Retention {
            max_events: 3,
            max_age_micros: i64::MAX,
        });
        let mut n = Noted::default();
        for i in 0..5 {
            n.changes = vec![change(i, 1, true)];
            log.commit(0, 1, &mut n, &segs);
        }
        assert_eq!(log.oldest(), 3);
        let err = log.read(1, &[], 10, 10, &|_| None).unwrap_err();
        assert!(
            matches!(&err, Error::OutOfRange(m) if m.contains("oldest retained is 3")),
            "{err}"
        );
        assert_eq!(log.read(2, &[], 10, 10, &|_| None).unwrap().events.len(), 3);
        assert_eq!(log.read(0, &[], 10, 10, &|_| None).unwrap().events[0].sequence, 3);
    }

    #[test]
    fn unpublished_until_durable_then_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::default();
        log.open(dir.path(), 0).unwrap();
        log.recovered(0).unwrap();
        let mut n = Noted {
            activity: Some(Arc::from("mail-42")),
            ..Noted::default()
        };
        n.changes = vec![Change {
            cause: Cause::Activity,
            ..change(7, 3, true)
        }];
        log.commit(5, 100, &mut n, &segs);
        n.changes = vec![change(8, 3, true)];
        log.commit(6, 200, &mut n, &segs);
        assert_eq!(log.published(), 0);
        log.durable(5);
        assert_eq!(log.published(), 1);
        log.durable(6);
        log.sync().unwrap();

        let again = EventLog::default();
        again.open(dir.path(), 0).unwrap();
        assert_eq!(again.last_log_sequence(), 6);
        assert_eq!(again.published(), 2, "loaded batches wait for recovery's check");
        // The write-ahead log ends at record 5: record 6's batch is cut off.
        again.recovered(5).unwrap();
        let page = again.read(0, &[], 10, 10, &ids(&[(7, "x")])).unwrap();
        assert_eq!(page.events.len(), 1);
        let e = &page.events[0];
        assert_eq!((e.sequence, e.time_micros, &*e.customer_id), (1, 100, "x"));
        assert_eq!(e.activity_id.as_deref(), Some("mail-42"));
        assert_eq!(e.cause, Cause::Activity);
        // The next batch continues at 2, and a third opening sees both.
        n.changes = vec![change(9, 4, false)];
        again.commit(6, 300, &mut n, &segs);
        again.durable(6);
        again.sync().unwrap();
        let third = EventLog::default();
        third.open(dir.path(), 0).unwrap();
        third.recovered(6).unwrap();
        let page = third.read(0, &[], 10, 10, &|_| None).unwrap();
        assert_eq!(
            page.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(&*page.events[1].segment_id, "seg4");
    }

    #[test]
    fn a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::default();
        log.open(dir.path(), 0).unwrap();
        log.recovered(0).unwrap();
        let mut n = Noted::default();
        for i in 1..=3 {
            n.changes = vec![change(i, 1, true)];
            log.commit(u64::from(i), 1, &mut n, &segs);
        }
        log.sync().unwrap();
        let (_, path) = files(dir.path()).unwrap().pop().unwrap();
        let len = fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
        let again = EventLog::default();
        again.open(dir.path(), 0).unwrap();
        again.recovered(3).unwrap();
        assert_eq!(again.last_log_sequence(), 2);
        assert_eq!(again.published(), 2);
    }
}
