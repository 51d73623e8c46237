//! `segmentd-replica`: segment membership inside the calling process.
//!
//! A [`Replica`] follows a segmentd server (`Replication.Follow`, role `reader`): it takes a
//! snapshot of the customers and of the segments it follows, then applies every change as the
//! server commits it, and answers [`Replica::is_member`], [`Replica::check`] and
//! [`Replica::segments_of`] from its own memory, synchronously, without locks and without a
//! network call. It tells an unknown customer (`Ok(None)`) from a non-member (`Ok(Some(false))`).
//!
//! ```no_run
//! use std::time::Duration;
//! let replica = segmentd_replica::Replica::builder("http://127.0.0.1:50051")
//!     .token("reader-token-0123456789")
//!     .segments(["golfers", "vip"])
//!     .max_staleness(Duration::from_secs(2))
//!     .start()?;
//! replica.wait_ready(Duration::from_secs(30))?;
//! if replica.is_member("C000000042", "golfers")? == Some(true) {
//!     // show the golf promotion
//! }
//! # Ok::<(), segmentd_replica::Error>(())
//! ```
//!
//! **Guarantees.** Changes are applied in the server's commit order, each write whole before the
//! next position is reported; a snapshot replaces the previous state at once (a reader sees the
//! old state or the new one, never a mix). Within one write, a reader may see some of its
//! changes before the rest. After a dropped connection the replica reconnects with backoff and
//! resumes from its position; when the server cannot resume it (it restarted, or the replica fell
//! behind its buffer), it sends a new snapshot: never a gap. The position only moves forward
//! within a server's epoch. With [`Builder::max_staleness`], a replica that has not heard from
//! the server (a heartbeat, every [`Builder::heartbeat`] while current) for longer refuses to
//! answer ([`Error::Stale`]) rather than answer from old data.
//!
//! **Memory.** About 11.5 bytes a customer for the table of ids and memberships (no id is
//! stored, and up to 32 segments' memberships share the id's word: see [`table`]), 8 more for
//! the follow thread's per-customer data, and 11.5 more per 64 segments beyond 32.
//!
//! The reads need no async runtime; the replica runs its own thread (a single-threaded tokio
//! runtime) for the connection.

mod follow;
pub mod table;
mod words;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use foldhash::HashMap;

use crate::table::Table;

/// The generated `segmentd.v1` Replication client and messages.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("segmentd.v1");
}

/// Why the replica did not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// No snapshot yet (see [`Replica::wait_ready`]); `last_error` says why, if the connection failed.
    NotReady { last_error: Option<String> },
    /// The segment is not followed (not asked for, or deleted on the server).
    UnknownSegment(String),
    /// Nothing heard from the server for longer than [`Builder::max_staleness`].
    Stale { staleness: Duration, max: Duration },
    /// The builder's settings cannot work (an address that does not parse, a token with
    /// characters a header cannot hold, a thread that cannot start).
    Config(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::NotReady { last_error: None } => f.write_str("the replica has no snapshot yet"),
            Error::NotReady { last_error: Some(e) } => {
                write!(f, "the replica has no snapshot yet (last error: {e})")
            }
            Error::UnknownSegment(id) => write!(f, "segment `{id}` is not followed"),
            Error::Stale { staleness, max } => write!(
                f,
                "the replica last heard from the server {:.3} s ago (at most {:.3} s allowed)",
                staleness.as_secs_f64(),
                max.as_secs_f64()
            ),
            Error::Config(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for Error {}

/// What the replica answers from: swapped whole when a snapshot lands, or when the table or
/// the set of segments must change shape.
#[derive(Debug)]
pub(crate) struct State {
    table: Arc<Table>,
    /// Followed segments, sorted, with their membership bit in the table's slots.
    segments: Box<[(Arc<str>, u32)]>,
    by_id: HashMap<Arc<str>, u32>,
}

impl State {
    fn new(table: Arc<Table>, mut segments: Vec<(Arc<str>, u32)>) -> State {
        segments.sort_by(|a, b| a.0.cmp(&b.0));
        let by_id = segments.iter().cloned().collect();
        State {
            table,
            segments: segments.into(),
            by_id,
        }
    }

    #[inline]
    fn bit(&self, segment_id: &str) -> Result<u32, Error> {
        match self.by_id.get(segment_id) {
            Some(&bit) => Ok(bit),
            None => Err(Error::UnknownSegment(segment_id.to_owned())),
        }
    }
}

/// Where the replica stands, and how fresh it is.
#[derive(Debug, Clone, Default)]
pub struct Status {
    /// Whether a snapshot has landed.
    pub ready: bool,
    /// Whether the stream is connected now.
    pub connected: bool,
    /// The server epoch and the last sequence applied.
    pub epoch: u64,
    pub sequence: u64,
    /// The server's write-ahead log sequence of the last change applied (or of the snapshot).
    pub log_sequence: u64,
    /// Time since the replica last knew it had every change (the last heartbeat), if it ever did.
    pub staleness: Option<Duration>,
    /// How far behind the server the last change applied was, by the server's clock against
    /// this machine's (0 once a heartbeat says the replica is current).
    pub lag: Duration,
    pub snapshots: u64,
    pub reconnects: u64,
    pub last_error: Option<String>,
    pub customers: u64,
    pub segments: Vec<Arc<str>>,
    /// Heap bytes the replica holds: the table readers use and the follow thread's
    /// per-customer data.
    pub bytes: u64,
}

/// What the follow thread shares with readers.
#[derive(Debug)]
pub(crate) struct Shared {
    state: ArcSwapOption<State>,
    start: Instant,
    /// Microseconds after `start` of the last heartbeat (0: none yet).
    current_at: AtomicU64,
    max_staleness: Option<Duration>,
    stop: AtomicBool,
    /// The follow thread's progress, for [`Replica::status`] (not on the read path).
    progress: std::sync::Mutex<Progress>,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct Progress {
    connected: bool,
    epoch: u64,
    sequence: u64,
    log_sequence: u64,
    /// Server time of the last change applied, and whether a heartbeat came since.
    change_micros: i64,
    current: bool,
    snapshots: u64,
    reconnects: u64,
    last_error: Option<String>,
    customers: u64,
    /// Heap bytes the follow thread keeps beside the readers' structures.
    writer_bytes: u64,
}

impl Shared {
    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How to reach the server and what to follow.
#[derive(Debug, Clone)]
pub struct Builder {
    pub(crate) addr: String,
    pub(crate) token: Option<String>,
    pub(crate) segments: Vec<String>,
    pub(crate) tls_ca: Option<Vec<u8>>,
    pub(crate) tls_domain: Option<String>,
    pub(crate) max_staleness: Option<Duration>,
    pub(crate) heartbeat: Duration,
    pub(crate) connect_timeout: Duration,
}

impl Builder {
    /// A bearer token with the `reader` role (or `admin`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The segments to follow (default: every segment, including those created later).
    pub fn segments<S: Into<String>>(mut self, ids: impl IntoIterator<Item = S>) -> Self {
        self.segments = ids.into_iter().map(Into::into).collect();
        self
    }

    /// Verify the server's certificate against this PEM CA (TLS is used when set), optionally
    /// expecting `domain` in it (default: the address's host).
    pub fn tls_ca(mut self, pem: impl Into<Vec<u8>>, domain: Option<String>) -> Self {
        self.tls_ca = Some(pem.into());
        self.tls_domain = domain;
        self
    }

    /// Refuse to answer ([`Error::Stale`]) when the last heartbeat is older than this. Off by
    /// default: the replica answers from what it has.
    pub fn max_staleness(mut self, max: Duration) -> Self {
        self.max_staleness = Some(max);
        self
    }

    /// How often the server confirms the replica is current (default 100 ms; 10 ms to 60 s).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every;
        self
    }

    /// How long a connection attempt may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Starts following on a thread of its own; returns at once (see [`Replica::wait_ready`]).
    pub fn start(self) -> Result<Replica, Error> {
        let endpoint = follow::endpoint(&self)?;
        let shared = Arc::new(Shared {
            state: ArcSwapOption::empty(),
            start: Instant::now(),
            current_at: AtomicU64::new(0),
            max_staleness: self.max_staleness,
            stop: AtomicBool::new(false),
            progress: Default::default(),
        });
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("segmentd-replica".into())
                .spawn(move || follow::run(shared, self, endpoint, stop_rx))
                .map_err(|e| Error::Config(format!("cannot start the follow thread: {e}")))?
        };
        Ok(Replica {
            shared,
            stop: stop_tx,
            thread: std::sync::Mutex::new(Some(thread)),
        })
    }
}

/// A replica of a segmentd server's segment membership. Reads are `&self`, lock-free and
/// synchronous; share it across threads behind an `Arc`.
#[derive(Debug)]
pub struct Replica {
    shared: Arc<Shared>,
    stop: tokio::sync::watch::Sender<bool>,
    /// The follow thread, until [`Replica::close`] (or the drop) joins it.
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.close();
    }
}

impl Replica {
    /// Settings for a replica of the server at `addr` (`http://host:port`, or `https://` with
    /// [`Builder::tls_ca`]).
    pub fn builder(addr: impl Into<String>) -> Builder {
        Builder {
            addr: addr.into(),
            token: None,
            segments: Vec::new(),
            tls_ca: None,
            tls_domain: None,
            max_staleness: None,
            heartbeat: Duration::from_millis(100),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// Blocks until the first snapshot has landed, at most `timeout`.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.shared.state.load().is_some() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::NotReady {
                    last_error: self.shared.progress().last_error.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[inline]
    fn state(&self) -> Result<arc_swap::Guard<Option<Arc<State>>>, Error> {
        let state = self.shared.state.load();
        if state.is_none() {
            return Err(Error::NotReady {
                last_error: self.shared.progress().last_error.clone(),
            });
        }
        if let Some(max) = self.shared.max_staleness {
            let staleness = self.staleness().unwrap_or(Duration::MAX);
            if staleness > max {
                return Err(Error::Stale { staleness, max });
            }
        }
        Ok(state)
    }

    /// Time since the last heartbeat, if one came.
    fn staleness(&self) -> Option<Duration> {
        match self.shared.current_at.load(Ordering::Acquire) {
            0 => None,
            at => Some(
                self.shared
                    .start
                    .elapsed()
                    .saturating_sub(Duration::from_micros(at)),
            ),
        }
    }

    /// Whether the customer is in the segment: `None` for a customer the server does not know.
    #[inline]
    pub fn is_member(&self, customer_id: &str, segment_id: &str) -> Result<Option<bool>, Error> {
        let guard = self.state()?;
        let state = guard.as_ref().expect("checked by state()");
        let bit = state.bit(segment_id)?;
        Ok(state
            .table
            .find(customer_id)
            .map(|(slot, first)| state.table.has(slot, first, bit)))
    }

    /// The customer against several segments, in order: `None` for an unknown customer.
    pub fn check(&self, customer_id: &str, segment_ids: &[&str]) -> Result<Option<Vec<bool>>, Error> {
        let mut out = vec![false; segment_ids.len()];
        Ok(self
            .check_into(customer_id, segment_ids, &mut out)?
            .then_some(out))
    }

    /// [`Replica::check`] into `out` (as long as `segment_ids`), without allocating; whether the
    /// customer is known.
    pub fn check_into(
        &self,
        customer_id: &str,
        segment_ids: &[&str],
        out: &mut [bool],
    ) -> Result<bool, Error> {
        let guard = self.state()?;
        let state = guard.as_ref().expect("checked by state()");
        let found = state.table.find(customer_id);
        for (slot, id) in out.iter_mut().zip(segment_ids) {
            let bit = state.bit(id)?;
            *slot = found.is_some_and(|(s, first)| state.table.has(s, first, bit));
        }
        Ok(found.is_some())
    }

    /// Every followed segment the customer is in, sorted: `None` for an unknown customer.
    pub fn segments_of(&self, customer_id: &str) -> Result<Option<Vec<Arc<str>>>, Error> {
        let guard = self.state()?;
        let state = guard.as_ref().expect("checked by state()");
        Ok(state.table.find(customer_id).map(|(slot, first)| {
            state
                .segments
                .iter()
                .filter(|(_, bit)| state.table.has(slot, first, *bit))
                .map(|(id, _)| id.clone())
                .collect()
        }))
    }

    /// A followed segment's members (a pass over the whole table: not for the request path).
    pub fn size(&self, segment_id: &str) -> Result<u64, Error> {
        let guard = self.state()?;
        let state = guard.as_ref().expect("checked by state()");
        Ok(state.table.count(state.bit(segment_id)?))
    }

    /// Stops following and waits for the follow thread to end. Checks go on answering from the
    /// last state (with [`Builder::max_staleness`], `Stale` once it is exceeded). Dropping the
    /// replica does the same.
    pub fn close(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.stop.send_replace(true);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    /// Where the replica stands.
    pub fn status(&self) -> Status {
        let p = self.shared.progress().clone();
        let state = self.shared.state.load();
        let lag = if p.current || p.change_micros == 0 {
            Duration::ZERO
        } else {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64);
            Duration::from_micros(now.saturating_sub(p.change_micros).max(0) as u64)
        };
        Status {
            ready: state.is_some(),
            connected: p.connected,
            epoch: p.epoch,
            sequence: p.sequence,
            log_sequence: p.log_sequence,
            staleness: self.staleness(),
            lag,
            snapshots: p.snapshots,
            reconnects: p.reconnects,
            last_error: p.last_error,
            customers: p.customers,
            segments: state
                .as_ref()
                .map(|s| s.segments.iter().map(|(id, _)| id.clone()).collect())
                .unwrap_or_default(),
            bytes: p.writer_bytes + state.as_ref().map_or(0, |s| s.table.bytes() as u64),
        }
    }
}
