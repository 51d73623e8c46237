//! The write-ahead log: every accepted change, in order, before its reply.
//!
//! # Format (version 1)
//!
//! Files `wal/<first sequence, 20 digits>.wal`, each starting with a header:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `SEGDWAL\0` |
//! | 8 | 4 | format version, u32 LE (1) |
//! | 12 | 8 | sequence of the file's first record, u64 LE |
//! | 20 | 4 | CRC32C of bytes 0..20, u32 LE |
//!
//! then records, each:
//!
//! | size | field |
//! |---|---|
//! | 4 | payload length, u32 LE |
//! | 4 | CRC32C of the payload, u32 LE |
//! | n | payload: a `segmentd.wal.v1.Record` protobuf (sequence, time, operation) |
//!
//! Sequences are contiguous across files. A file is rotated once it passes the configured size:
//! synced, then the next one started, so that recovery only ever finds a torn record at the end
//! of the last file. Every write waits meanwhile; so that this sync finds little to do, the sync
//! thread syncs the file ahead of time when it comes within [`PRESYNC_BYTES`] of the size, in
//! every fsync mode (a load writing about 100 MB/s of log waited 49, 50 and 184 ms at the
//! rotation without it, 18 to 22 ms with it).
//!
//! # Durability
//!
//! A write is validated, then its record is written (`write(2)`) under the store's writer lock,
//! then applied in memory. A failed write (disk full, permission lost) is cut back off the file
//! and the change refused with `UNAVAILABLE`: nothing is applied. The reply waits, per
//! [`FsyncMode`], for an `fdatasync` covering the record; one sync thread serves every waiting
//! write (group commit). A failed `fdatasync` leaves the disk's state unknown, so the log stops
//! taking writes until the server restarts and recovers from what the disk holds.
//!
//! The sync thread syncs when a write waits for it ([`Wal::request`], [`Wal::durable`]), not
//! whenever records are written: a stream acknowledged once at its end (`LoadCustomers`) is
//! synced once, not after every batch, each `fdatasync` of a growing file costing a journal
//! commit and a device flush besides its data. So that last sync finds little left to write,
//! the thread asks the kernel to start writing records back (`sync_file_range`, Linux) every
//! [`WRITEBACK_BYTES`] written.
//!
//! # Recovery
//!
//! Records are read file by file. The last file may end badly after a crash or a power cut: a
//! record cut short, several records whose pages never reached the disk, or zeros where the
//! file system allocated space it never wrote. As long as no valid record follows, that tail is
//! cut off with a warning naming the file, offset, bytes and reason (no write in it was
//! acknowledged). A bad record followed by a valid one, or any bad header or record in an
//! earlier file, stops start-up with an error naming the file and offsets.

pub mod record;

use std::fs::{self, OpenOptions};
use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use prost::Message;
use tokio::sync::watch;

use crate::disk::{self, Disk, File};
use crate::error::{Error, Result};
use crate::faults::Faults;
use crate::persist::pb;

const MAGIC: &[u8; 8] = b"SEGDWAL\0";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 24;
/// Largest record accepted on reading (a bound against garbage lengths).
const MAX_RECORD: usize = 512 * 1024 * 1024;
/// Bytes written and not yet synced after which the sync thread starts their writeback.
pub const WRITEBACK_BYTES: u64 = 8 << 20;
/// How far from its size limit a log file is synced ahead of its rotation (at most half the
/// limit).
pub const PRESYNC_BYTES: u64 = 16 << 20;

/// When a write's reply waits for its record to be on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// Every reply waits for an `fdatasync` covering its record; concurrent writes share one.
    Always,
    /// Replies do not wait; the log is synced every interval. A crash loses at most that long.
    Interval(Duration),
    /// Replies never wait for the disk: the server syncs a log file only as it closes it (and
    /// shortly before, in the background); the OS writes back the rest when it likes. A crash
    /// can lose anything not yet written back.
    Never,
}

/// The form `--fsync` takes: `always`, `interval=<ms>` or `never`.
impl std::fmt::Display for FsyncMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsyncMode::Always => f.write_str("always"),
            FsyncMode::Interval(d) => write!(f, "interval={}", d.as_millis()),
            FsyncMode::Never => f.write_str("never"),
        }
    }
}

impl std::str::FromStr for FsyncMode {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "always" => Ok(FsyncMode::Always),
            "never" => Ok(FsyncMode::Never),
            _ => {
                let ms = s
                    .strip_prefix("interval=")
                    .and_then(|v| v.strip_suffix("ms").unwrap_or(v).parse::<u64>().ok())
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| format!("`{s}`: expected always, interval=<ms> or never"))?;
                Ok(FsyncMode::Interval(Duration::from_millis(ms)))
            }
        }
    }
}

/// Sync progress shared with waiting writers.
#[derive(Debug, Clone, Default)]
struct Synced {
    sequence: u64,
    failed: Option<Arc<str>>,
}

struct Writer {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    offset: u64,
    /// Where the current file's writeback was last started, or its last sync.
    written_back: u64,
    /// Whether the current file was handed to the sync thread ahead of its rotation.
    presynced: bool,
    next_sequence: u64,
    failed: Option<Arc<str>>,
}

/// A record's operation encoded ahead of its append, so the encoding runs where the batch was
/// parsed rather than on the writer thread.
#[derive(Debug)]
pub struct EncodedOp(Vec<u8>);

impl EncodedOp {
    pub fn new(op: &pb::record::Op) -> EncodedOp {
        let mut bytes = Vec::with_capacity(op.encoded_len());
        op.encode(&mut bytes);
        EncodedOp(bytes)
    }

    /// Bytes already encoded as a `Record`'s `op` field.
    pub(crate) fn from_bytes(bytes: Vec<u8>) -> EncodedOp {
        EncodedOp(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// The open log.
pub struct Wal {
    writer: Mutex<Writer>,
    segment_bytes: u64,
    mode: FsyncMode,
    written: AtomicU64,
    /// The highest sequence a write waits to be durable ([`Wal::request`]).
    wanted: AtomicU64,
    bytes: AtomicU64,
    synced: watch::Sender<Synced>,
    wake: (Mutex<bool>, Condvar),
    /// Disk faults to inject (tests and drills).
    faults: Arc<Faults>,
    /// How long each fdatasync took.
    pub fsync: prometheus::Histogram,
}

fn file_name(first_sequence: u64) -> String {
    format!("{first_sequence:020}.wal")
}

fn header(first_sequence: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&first_sequence.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Unavailable(format!("write-ahead log: {what} {}: {e}", path.display()))
}

fn create_segment(dir: &Path, first_sequence: u64, disk: &Arc<Disk>) -> Result<(File, PathBuf)> {
    let path = dir.join(file_name(first_sequence));
    let mut file = match File::create_new(&path, disk) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Left by a run that wrote nothing (or whose only records were torn off): reuse it
            // if it holds no record; anything more would be records recovery did not see.
            let len = fs::metadata(&path)
                .map_err(|e| io_err("cannot inspect", &path, e))?
                .len();
            if len > HEADER_LEN as u64 {
                return Err(Error::DataLoss(format!(
                    "write-ahead log {} already holds records from sequence {first_sequence}",
                    path.display()
                )));
            }
            disk::remove_file(&path, disk).map_err(|e| io_err("cannot replace", &path, e))?;
            File::create_new(&path, disk).map_err(|e| io_err("cannot create", &path, e))?
        }
        Err(e) => return Err(io_err("cannot create", &path, e)),
    };
    file.write_all(&header(first_sequence))
        .and_then(|()| file.sync_data())
        .and_then(|()| disk::sync_dir(dir, disk))
        .map_err(|e| io_err("cannot write", &path, e))?;
    Ok((file, path))
}

impl Wal {
    /// Opens the log for appending, starting a new file at `next_sequence`.
    pub fn open(dir: &Path, next_sequence: u64, segment_bytes: u64, mode: FsyncMode) -> Result<Arc<Wal>> {
        Wal::open_with_faults(dir, next_sequence, segment_bytes, mode, Arc::default())
    }

    /// [`Wal::open`] with disk faults that tests and drills inject through `faults`.
    pub fn open_with_faults(
        dir: &Path,
        next_sequence: u64,
        segment_bytes: u64,
        mode: FsyncMode,
        faults: Arc<Faults>,
    ) -> Result<Arc<Wal>> {
        fs::create_dir_all(dir).map_err(|e| io_err("cannot create", dir, e))?;
        let (file, path) = create_segment(dir, next_sequence, faults.disk())?;
        let wal = Arc::new(Wal {
            writer: Mutex::new(Writer {
                dir: dir.to_path_buf(),
                file,
                path,
                offset: HEADER_LEN as u64,
                written_back: HEADER_LEN as u64,
                presynced: false,
                next_sequence,
                failed: None,
            }),
            segment_bytes: segment_bytes.max(HEADER_LEN as u64 + 1),
            mode,
            written: AtomicU64::new(next_sequence - 1),
            wanted: AtomicU64::new(next_sequence - 1),
            bytes: AtomicU64::new(0),
            synced: watch::Sender::new(Synced {
                sequence: next_sequence - 1,
                failed: None,
            }),
            wake: (Mutex::new(false), Condvar::new()),
            faults,
            fsync: crate::latency::histogram(
                "segmentd_wal_fsync_seconds",
                "Write-ahead log fdatasync calls.",
            ),
        });
        // In every mode: with `never` it only syncs files about to be rotated.
        let weak = Arc::downgrade(&wal);
        std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || sync_loop(weak))
            .map_err(|e| Error::Internal(format!("cannot start the log sync thread: {e}")))?;
        Ok(wal)
    }

    /// Appends one operation accepted at `time_micros`; returns its sequence. Called under the
    /// store's writer lock, after the change is validated and before it is applied.
    pub fn append(&self, op: pb::record::Op, time_micros: i64) -> Result<u64> {
        self.append_encoded(&EncodedOp::new(&op), time_micros)
    }

    /// [`Wal::append`] of an operation encoded beforehand (off the writer thread).
    pub fn append_encoded(&self, op: &EncodedOp, time_micros: i64) -> Result<u64> {
        self.append_with(time_micros, &op.0)
    }

    /// Frames a record: its sequence and time, then `op`, the bytes of its `op` field, written
    /// from where they are rather than copied behind the header (a batch's record is hundreds of
    /// kilobytes).
    fn append_with(&self, time_micros: i64, op: &[u8]) -> Result<u64> {
        let mut w = self.writer.lock();
        if let Some(why) = &w.failed {
            return Err(Error::Unavailable(format!("write-ahead log unavailable: {why}")));
        }
        let sequence = w.next_sequence;
        // Encode behind room for the length and checksum, then fill them in. Field order is free
        // in protobuf, so the `op` field may follow from another buffer.
        let header = pb::Record {
            sequence,
            time_micros,
            op: None,
        };
        let mut frame = Vec::with_capacity(8 + header.encoded_len());
        frame.extend_from_slice(&[0; 8]);
        header.encode(&mut frame).expect("a Vec grows as needed");
        let len = frame.len() - 8 + op.len();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&frame[8..]), op);
        frame[0..4].copy_from_slice(&(len as u32).to_le_bytes());
        frame[4..8].copy_from_slice(&crc.to_le_bytes());
        if w.offset >= self.segment_bytes {
            self.rotate(&mut w, sequence)?;
        }
        let injected = self.faults.take_append();
        let total = frame.len() + op.len();
        let written = if injected {
            // Write half the record, then fail, as a full disk would.
            let whole = [frame.as_slice(), op].concat();
            let _ = w.file.write_all(&whole[..total / 2]);
            Err(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "no space left on device (injected)",
            ))
        } else {
            w.file
                .write_all_vectored(&mut [IoSlice::new(&frame), IoSlice::new(op)])
        };
        if let Err(e) = written {
            // Cut the partial record back off so the file stays readable; refuse the change.
            let offset = w.offset;
            let cut = w.file.set_len(offset);
            let msg = io_err("cannot append to", &w.path, e);
            if let Err(cut) = cut {
                w.failed = Some(format!("cannot cut a failed append off {}: {cut}", w.path.display()).into());
            }
            return Err(msg);
        }
        w.offset += total as u64;
        w.next_sequence += 1;
        self.bytes.fetch_add(total as u64, Ordering::Relaxed);
        self.written.store(sequence, Ordering::Release);
        let writeback_due = w.offset - w.written_back >= WRITEBACK_BYTES;
        let presync_due =
            !w.presynced && w.offset + PRESYNC_BYTES.min(self.segment_bytes / 2) >= self.segment_bytes;
        w.presynced |= presync_due;
        drop(w);
        if presync_due {
            // Synced as a waiting write's record would be, by the sync thread.
            self.wanted.fetch_max(sequence, Ordering::AcqRel);
            self.wake_sync();
        } else if self.mode == FsyncMode::Always && writeback_due {
            self.wake_sync();
        }
        Ok(sequence)
    }

    fn wake_sync(&self) {
        let (lock, cv) = &self.wake;
        *lock.lock() = true;
        cv.notify_one();
    }

    /// Asks for record `sequence` to be synced (in [`FsyncMode::Always`]) without waiting: a
    /// write that will wait for its record calls this as soon as it is appended, so the sync
    /// runs while the write is applied. [`Wal::durable`] asks too.
    pub fn request(&self, sequence: u64) {
        if self.mode != FsyncMode::Always || self.synced.borrow().sequence >= sequence {
            return;
        }
        if self.wanted.fetch_max(sequence, Ordering::AcqRel) < sequence {
            self.wake_sync();
        }
    }

    /// Starts writing back what was written since the last sync or writeback start, once that
    /// is [`WRITEBACK_BYTES`] or more; returns whether it did. Sync thread only.
    fn start_writeback(&self) -> bool {
        let (file, from, to) = {
            let mut w = self.writer.lock();
            if w.failed.is_some() || w.offset - w.written_back < WRITEBACK_BYTES {
                return false;
            }
            let Ok(file) = w.file.try_clone() else {
                return false;
            };
            let range = (file, w.written_back, w.offset);
            w.written_back = w.offset;
            range
        };
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: `file` is an open descriptor owned here for the call; the range is within
            // what was written. A failure only means writeback starts later: the next sync
            // writes the range and reports any error.
            unsafe {
                libc::sync_file_range(
                    file.std().as_raw_fd(),
                    from as libc::off64_t,
                    (to - from) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
        #[cfg(not(target_os = "linux"))]
        let _ = (file, from, to);
        true
    }

    /// Closes the current file and starts the next at sequence `next`. Any failure fails the
    /// log: the closing sync may have lost written pages, and the new file or its directory
    /// entry may not be durable; retrying a failed fsync proves nothing (the kernel may already
    /// have dropped the dirty pages and cleared the error).
    fn rotate(&self, w: &mut Writer, next: u64) -> Result<()> {
        let rotated = self
            .sync_file(&w.file, &w.path)
            .and_then(|()| create_segment(&w.dir, next, self.faults.disk()));
        let (file, path) = match rotated {
            Ok(created) => created,
            Err(e) => {
                self.fail(w, format!("rotating {}: {e}", w.path.display()).into());
                return Err(e);
            }
        };
        w.file = file;
        w.path = path;
        w.offset = HEADER_LEN as u64;
        w.written_back = w.offset;
        w.presynced = false;
        Ok(())
    }

    /// Closes the current file and starts a new one if the current one holds records, so that
    /// every record written so far is in files that can be deleted whole. Returns the last
    /// sequence written, read under the same lock: every later record is in the new file.
    pub fn roll(&self) -> Result<u64> {
        let mut w = self.writer.lock();
        if let Some(why) = &w.failed {
            return Err(Error::Unavailable(format!("write-ahead log unavailable: {why}")));
        }
        let next = w.next_sequence;
        if w.offset > HEADER_LEN as u64 {
            self.rotate(&mut w, next)?;
            // Everything written is in closed, synced files now.
            self.synced.send_modify(|s| s.sequence = s.sequence.max(next - 1));
        }
        Ok(next - 1)
    }

    /// Waits until record `sequence` is as durable as the fsync mode promises.
    pub async fn durable(&self, sequence: u64) -> Result<()> {
        if self.mode != FsyncMode::Always {
            return Ok(());
        }
        self.request(sequence);
        let mut rx = self.synced.subscribe();
        let state = rx
            .wait_for(|s| s.sequence >= sequence || s.failed.is_some())
            .await
            .map_err(|_| Error::Unavailable("write-ahead log closed".into()))?;
        match &state.failed {
            Some(why) if state.sequence < sequence => {
                Err(Error::Unavailable(format!("write-ahead log sync failed: {why}")))
            }
            _ => Ok(()),
        }
    }

    /// Syncs everything written so far (clean shutdown, snapshots).
    pub fn sync(&self) -> Result<()> {
        let (file, upto, path) = {
            let mut w = self.writer.lock();
            w.written_back = w.offset;
            (
                w.file
                    .try_clone()
                    .map_err(|e| io_err("cannot reopen", &w.path, e))?,
                w.next_sequence - 1,
                w.path.clone(),
            )
        };
        match self.sync_file(&file, &path) {
            Ok(()) => {
                self.synced.send_modify(|s| s.sequence = s.sequence.max(upto));
                Ok(())
            }
            Err(e) => {
                self.fail(&mut self.writer.lock(), e.to_string().into());
                Err(e)
            }
        }
    }

    /// One fdatasync of a log file, timed; the caller fails the log if it fails.
    fn sync_file(&self, file: &File, path: &Path) -> Result<()> {
        let started = std::time::Instant::now();
        let synced = if self.faults.take_sync() {
            Err(std::io::Error::other("input/output error (injected)"))
        } else {
            file.sync_data()
        };
        self.fsync.observe(started.elapsed().as_secs_f64());
        synced.map_err(|e| io_err("cannot sync", path, e))
    }

    /// Fails the log for good: every later write is refused and waiting ones are told.
    fn fail(&self, w: &mut Writer, why: Arc<str>) {
        tracing::error!(error = %why, "write-ahead log failed; writes are refused until restart");
        w.failed = Some(why.clone());
        self.synced.send_modify(|s| s.failed = Some(why));
    }

    /// Resolves once the log has failed (a sync or rotation error): the server reports
    /// NOT_SERVING from then on.
    pub async fn failed(&self) -> Arc<str> {
        let mut rx = self.synced.subscribe();
        // The sender lives as long as the log: waiting cannot end otherwise.
        let why = rx
            .wait_for(|s| s.failed.is_some())
            .await
            .ok()
            .and_then(|s| s.failed.clone());
        why.unwrap_or_else(|| "write-ahead log closed".into())
    }

    /// Why the log failed, once it has (writes are refused from then on).
    pub fn failure(&self) -> Option<Arc<str>> {
        self.synced.borrow().failed.clone()
    }

    /// Makes the next `n` appends fail as a full disk would (fault injection).
    #[doc(hidden)]
    pub fn inject_append_failures(&self, n: u32) {
        self.faults.fail_appends(n);
    }

    /// The last sequence written.
    pub fn last_sequence(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Bytes appended since the log was opened.
    pub fn bytes_written(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Stops the sync thread after a last sync.
    pub fn close(&self) -> Result<()> {
        let r = self.sync();
        let (lock, cv) = &self.wake;
        *lock.lock() = true;
        cv.notify_one();
        r
    }
}

/// Syncs whenever records are waiting (always) or every interval; exits when the log is dropped.
fn sync_loop(wal: std::sync::Weak<Wal>) {
    loop {
        let Some(w) = wal.upgrade() else { return };
        let (synced, failed) = {
            let s = w.synced.borrow();
            (s.sequence, s.failed.is_some())
        };
        let due = match w.mode {
            FsyncMode::Interval(_) => w.written.load(Ordering::Acquire) > synced,
            // Records waiting (always) or a file about to be rotated.
            FsyncMode::Always | FsyncMode::Never => w.wanted.load(Ordering::Acquire) > synced,
        };
        if due && !failed {
            // A failure fails the log and is logged there.
            let _ = w.sync();
            continue;
        }
        if w.mode == FsyncMode::Always && w.start_writeback() {
            continue;
        }
        let wait = match w.mode {
            FsyncMode::Interval(d) => d,
            _ => Duration::from_millis(100),
        };
        let (lock, cv) = &w.wake;
        let mut woken = lock.lock();
        if !*woken {
            cv.wait_for(&mut woken, wait);
        }
        *woken = false;
        drop(woken);
        drop(w);
    }
}

/// What recovery read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReplayStats {
    pub files: usize,
    pub records: u64,
    pub bytes: u64,
    /// The last sequence found (0 when the log is empty).
    pub last_sequence: u64,
    /// Bytes of a torn final record that were cut off.
    pub torn_bytes: u64,
    /// Files not read because the snapshot holds all their records.
    pub skipped_files: usize,
}

/// WAL files of `dir`, oldest first, with their first sequence.
pub fn files(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::DataLoss(format!("cannot list {}: {e}", dir.display()))),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::DataLoss(format!("cannot list {}: {e}", dir.display())))?;
        let name = entry.file_name();
        let Some(seq) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        out.push((seq, entry.path()));
    }
    out.sort();
    Ok(out)
}

/// The record framed at the start of `rest` and its payload's length, or why there is none.
fn read_record(rest: &[u8]) -> std::result::Result<(pb::Record, usize), &'static str> {
    if rest.len() < 8 {
        return Err("record header cut short");
    }
    if rest[..8].iter().all(|&b| b == 0) {
        return Err("zeros where a record should begin");
    }
    let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
    if len > MAX_RECORD {
        return Err("implausible record length");
    }
    if rest.len() < 8 + len {
        return Err("record cut short");
    }
    let payload = &rest[8..8 + len];
    if crc32c::crc32c(payload) != crc {
        return Err("record checksum mismatch");
    }
    let record = pb::Record::decode(payload).map_err(|_| "undecodable record")?;
    if record.sequence == 0 {
        return Err("record without a sequence");
    }
    Ok((record, len))
}

/// The offset in `rest` (past its start) of the first valid record, if any: a damaged record
/// followed by a valid one is damage, not a torn tail. A scan of every offset, run only when the
/// last file ends badly.
fn next_valid_record(rest: &[u8]) -> Option<usize> {
    (1..rest.len().saturating_sub(8)).find(|&at| read_record(&rest[at..]).is_ok())
}

/// Reads every record after sequence `after`, in order, calling `apply` on each. Cuts a torn
/// final record off the last file; any other damage is an error naming the file and offset.
pub fn replay(
    dir: &Path,
    after: u64,
    mut apply: impl FnMut(pb::Record) -> Result<()>,
) -> Result<ReplayStats> {
    let files = files(dir)?;
    let mut stats = ReplayStats {
        last_sequence: after,
        ..Default::default()
    };
    let mut expected: Option<u64> = None;
    let mut expected_first_after = Some(after + 1);
    for (n, (first, path)) in files.iter().enumerate() {
        let last_file = n + 1 == files.len();
        // A file whose records a snapshot holds (they end where the next file begins) is not
        // read: after a snapshot at `after`, reading it would only be skipped record by record.
        if let Some((next_first, _)) = files.get(n + 1)
            && *next_first <= after + 1
        {
            stats.skipped_files += 1;
            expected = None;
            continue;
        }
        let data =
            fs::read(path).map_err(|e| Error::DataLoss(format!("cannot read {}: {e}", path.display())))?;
        let bad = |offset: usize, what: &str| {
            Error::DataLoss(format!(
                "write-ahead log {} at offset {offset}: {what}",
                path.display()
            ))
        };
        if data.len() < HEADER_LEN {
            if last_file && data.iter().all(|&b| b == 0) {
                continue; // created but its header never reached the disk
            }
            return Err(bad(0, "file shorter than its header"));
        }
        if &data[0..8] != MAGIC {
            return Err(bad(0, "not a segmentd log file (bad magic)"));
        }
        let version = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(bad(
                8,
                &format!("unknown format version {version} (this server reads {VERSION})"),
            ));
        }
        if u32::from_le_bytes(data[20..24].try_into().expect("4 bytes")) != crc32c::crc32c(&data[0..20]) {
            return Err(bad(20, "header checksum mismatch"));
        }
        let file_first = u64::from_le_bytes(data[12..20].try_into().expect("8 bytes"));
        if file_first != *first {
            return Err(bad(
                12,
                &format!("header says first sequence {file_first}, name says {first}"),
            ));
        }
        stats.files += 1;
        let mut offset = HEADER_LEN;
        while offset < data.len() {
            let rest = &data[offset..];
            let torn = |stats: &mut ReplayStats, why: &str| -> Result<()> {
                if !last_file {
                    return Err(bad(offset, why));
                }
                tracing::warn!(file = %path.display(), offset, bytes = rest.len(), reason = why, "cutting a torn record off the end of the write-ahead log");
                let f = OpenOptions::new().write(true).open(path).map_err(|e| {
                    Error::DataLoss(format!(
                        "cannot open {} to cut a torn record: {e}",
                        path.display()
                    ))
                })?;
                f.set_len(offset as u64)
                    .and_then(|()| f.sync_all())
                    .map_err(|e| {
                        Error::DataLoss(format!("cannot cut a torn record off {}: {e}", path.display()))
                    })?;
                stats.torn_bytes = rest.len() as u64;
                Ok(())
            };
            let (record, len) = match read_record(rest) {
                Ok(record) => record,
                // The last file's tail after a power cut: zeros (space allocated, never written),
                // records cut short, or pages that never reached the disk. Cut only if no valid
                // record follows: damage before valid records is not a torn tail.
                Err(why) if last_file => match next_valid_record(rest) {
                    None => {
                        torn(&mut stats, why)?;
                        break;
                    }
                    Some(at) => {
                        return Err(bad(
                            offset,
                            &format!("{why}, followed by a valid record at offset {}", offset + at),
                        ));
                    }
                },
                Err(why) => return Err(bad(offset, why)),
            };
            if let Some(want) = expected
                && record.sequence != want
            {
                return Err(bad(
                    offset,
                    &format!("sequence {} where {want} was expected", record.sequence),
                ));
            }
            expected = Some(record.sequence + 1);
            stats.records += 1;
            stats.bytes += (8 + len) as u64;
            stats.last_sequence = stats.last_sequence.max(record.sequence);
            if record.sequence > after {
                // The first record after a snapshot must follow it directly.
                if expected_first_after
                    .take()
                    .is_some_and(|want| record.sequence != want)
                {
                    return Err(bad(
                        offset,
                        &format!(
                            "records {} to {} are missing (the log resumes at {})",
                            after + 1,
                            record.sequence - 1,
                            record.sequence
                        ),
                    ));
                }
                let seq = record.sequence;
                apply(record).map_err(|e| bad(offset, &format!("record {seq} cannot be applied: {e}")))?;
            }
            offset += 8 + len;
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(name: &str) -> pb::record::Op {
        pb::record::Op::DeleteSegment(pb::DeleteSegment { id: name.into() })
    }

    fn names(dir: &Path, after: u64) -> Result<(Vec<String>, ReplayStats)> {
        let mut seen = Vec::new();
        let stats = replay(dir, after, |r| {
            if let Some(pb::record::Op::DeleteSegment(d)) = r.op {
                seen.push(d.id);
            }
            Ok(())
        })?;
        Ok((seen, stats))
    }

    #[test]
    fn append_rotate_and_replay() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), 1, 100, FsyncMode::Never).unwrap();
        for i in 0..20 {
            assert_eq!(wal.append(op(&format!("s{i}")), 0).unwrap(), i + 1);
        }
        wal.sync().unwrap();
        assert!(files(dir.path()).unwrap().len() > 3, "rotated");
        let (seen, stats) = names(dir.path(), 0).unwrap();
        assert_eq!(seen.len(), 20);
        assert_eq!(stats.last_sequence, 20);
        let (seen, _) = names(dir.path(), 15).unwrap();
        assert_eq!(seen, vec!["s15", "s16", "s17", "s18", "s19"]);
    }

    /// A failed sync while rotating fails the log: the write that rotated and every later one
    /// are refused, and [`Wal::failed`] resolves, though the next file could have been created.
    #[test]
    fn a_failed_sync_on_rotation_fails_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let limit = 64 << 10;
        let faults = Arc::new(Faults::default());
        let wal = Wal::open_with_faults(dir.path(), 1, limit, FsyncMode::Never, faults.clone()).unwrap();
        let kib = "x".repeat(1 << 10);
        // Past half the limit the sync thread syncs ahead; wait for it, so that the next sync is
        // the rotation's own.
        while wal.fsync.get_sample_count() == 0 {
            if wal.writer.lock().offset < limit / 2 + (4 << 10) {
                wal.append(op(&kib), 0).unwrap();
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        faults.fail_syncs(1);
        let err = loop {
            match wal.append(op(&kib), 0) {
                Ok(_) => assert_eq!(files(dir.path()).unwrap().len(), 1, "rotated without a sync"),
                Err(e) => break e,
            }
        };
        assert!(
            matches!(&err, Error::Unavailable(m) if m.contains("injected")),
            "{err}"
        );
        // No retry of the sync can make the lost pages durable: every later write is refused.
        for _ in 0..3 {
            let again = wal.append(op("later"), 0).unwrap_err();
            assert!(
                matches!(&again, Error::Unavailable(m) if m.contains("unavailable")),
                "{again}"
            );
        }
        let why = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(wal.failed());
        assert!(why.contains("rotating"), "{why}");
    }

    /// A file nearing its size limit is synced ahead of its rotation by the sync thread, even
    /// when no write waits for the disk, so the rotation's own sync (every write waits for it)
    /// finds little left; until then nothing is synced.
    #[test]
    fn a_file_is_synced_ahead_of_its_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let limit = 64 << 10;
        let wal = Wal::open(dir.path(), 1, limit, FsyncMode::Never).unwrap();
        let kib = "x".repeat(1 << 10);
        // Up to half the limit (the lead for so small a file): no sync.
        while wal.writer.lock().offset + (2 << 10) < limit / 2 {
            wal.append(op(&kib), 0).unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(
            wal.fsync.get_sample_count(),
            0,
            "nothing synced far from the limit"
        );
        // The append reaching it asks for a sync, done in the background.
        let reaching = loop {
            let seq = wal.append(op(&kib), 0).unwrap();
            if wal.writer.lock().offset >= limit / 2 {
                break seq;
            }
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while wal.synced.borrow().sequence < reaching {
            assert!(std::time::Instant::now() < deadline, "never synced ahead");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(files(dir.path()).unwrap().len(), 1, "not rotated yet");
        assert_eq!(wal.fsync.get_sample_count(), 1, "once for the file");
        // Rotated at the limit, every record kept.
        let mut seq = reaching;
        while files(dir.path()).unwrap().len() < 2 {
            seq = wal.append(op(&kib), 0).unwrap();
        }
        let (seen, stats) = names(dir.path(), 0).unwrap();
        assert_eq!((seen.len() as u64, stats.last_sequence), (seq, seq));
    }

    /// Records nobody waits for are not synced one by one: a stream's records are written
    /// back as they pile up and synced once, when its reply waits; a write waiting for its
    /// record gets a sync of its own.
    #[tokio::test]
    async fn the_log_syncs_when_a_write_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), 1, 1 << 30, FsyncMode::Always).unwrap();
        let big = "x".repeat(1 << 20);
        // More than WRITEBACK_BYTES: the sync thread starts writeback, but no sync.
        let n = WRITEBACK_BYTES / (1 << 20) + 4;
        for _ in 0..n {
            wal.append(op(&big), 0).unwrap();
        }
        // The sync thread starts their writeback (woken by the append that passed the mark)...
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while wal.writer.lock().written_back <= WRITEBACK_BYTES {
            assert!(std::time::Instant::now() < deadline, "writeback never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        // ... and, given more time, still syncs nothing.
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(wal.fsync.get_sample_count(), 0, "nothing waited, nothing synced");
        assert_eq!(wal.synced.borrow().sequence, 0);

        wal.durable(n).await.unwrap();
        assert_eq!(wal.fsync.get_sample_count(), 1, "one sync for the whole stream");
        assert_eq!(wal.synced.borrow().sequence, n);

        // A write asking for its sync as it appends, then waiting: synced at once.
        let seq = wal.append(op("one"), 0).unwrap();
        wal.request(seq);
        tokio::time::timeout(Duration::from_secs(10), wal.durable(seq))
            .await
            .expect("synced without more writes")
            .unwrap();
        assert_eq!(wal.fsync.get_sample_count(), 2);
        // Already durable: no sync asked.
        wal.durable(seq).await.unwrap();
        assert_eq!(wal.fsync.get_sample_count(), 2);
        let (seen, stats) = names(dir.path(), 0).unwrap();
        assert_eq!((seen.len() as u64, stats.last_sequence), (n + 1, n + 1));
    }

    #[test]
    fn records_encoded_beforehand_replay_whole_beside_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), 1, 1 << 20, FsyncMode::Never).unwrap();
        // A long operation written from its own buffer, between records framed in one.
        let long = "x".repeat(300_000);
        wal.append(op("a"), 0).unwrap();
        wal.append_encoded(&EncodedOp::new(&op(&long)), 7).unwrap();
        wal.append_encoded(&EncodedOp::new(&op("")), 8).unwrap();
        wal.append(op("b"), 0).unwrap();
        drop(wal);
        let (seen, stats) = names(dir.path(), 0).unwrap();
        assert_eq!(seen, vec!["a".to_string(), long, String::new(), "b".to_string()]);
        assert_eq!(stats.last_sequence, 4);
        assert_eq!(stats.torn_bytes, 0);
    }

    #[test]
    fn torn_tail_is_cut_and_middle_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), 1, 1 << 20, FsyncMode::Never).unwrap();
        for i in 0..5 {
            wal.append(op(&format!("s{i}")), 0).unwrap();
        }
        drop(wal);
        let (_, path) = files(dir.path()).unwrap().pop().unwrap();
        let full = fs::read(&path).unwrap();
        // Torn: the last record lost its final bytes.
        fs::write(&path, &full[..full.len() - 3]).unwrap();
        let (seen, stats) = names(dir.path(), 0).unwrap();
        assert_eq!(seen.len(), 4);
        assert!(stats.torn_bytes > 0);
        assert!(
            fs::read(&path).unwrap().len() < full.len() - 3,
            "cut back to the last good record"
        );
        // Corrupt middle record: an error naming the file and offset.
        let mut bad = full.clone();
        bad[HEADER_LEN + 10] ^= 0xff;
        fs::write(&path, &bad).unwrap();
        let e = names(dir.path(), 0).unwrap_err().to_string();
        assert!(
            e.contains(path.to_str().unwrap()) && e.contains("offset 24"),
            "{e}"
        );
        // Unknown version.
        let mut v2 = full.clone();
        v2[8] = 2;
        fs::write(&path, &v2).unwrap();
        let e = names(dir.path(), 0).unwrap_err().to_string();
        assert!(e.contains("unknown format version 2"), "{e}");
    }

    /// After a power cut the last file may end in zeros (space the file system allocated but
    /// never wrote) or in several damaged records: each is cut with a warning, as long as no valid
    /// record follows; one that does makes it damage, refused with the offsets.
    #[test]
    fn a_power_cut_tail_of_zeros_or_several_torn_records_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), 1, 1 << 20, FsyncMode::Never).unwrap();
        let mut ends = Vec::new();
        for i in 0..5 {
            wal.append(op(&format!("s{i}")), 0).unwrap();
            ends.push(wal.writer.lock().offset as usize);
        }
        drop(wal);
        let (_, path) = files(dir.path()).unwrap().pop().unwrap();
        let full = fs::read(&path).unwrap();

        // Zeros after the last record.
        let mut zeros = full.clone();
        zeros.extend(std::iter::repeat_n(0u8, 8192));
        fs::write(&path, &zeros).unwrap();
        let (seen, stats) = names(dir.path(), 0).unwrap();
        assert_eq!((seen.len(), stats.torn_bytes), (5, 8192));
        assert_eq!(fs::read(&path).unwrap(), full);

        // The fourth record damaged and the fifth half written: both cut.
        let mut torn = full[..ends[4] - 5].to_vec();
        torn[ends[2] + 9] ^= 0xff;
        fs::write(&path, &torn).unwrap();
        let (seen, stats) = names(dir.path(), 0).unwrap();
        assert_eq!(seen, vec!["s0", "s1", "s2"]);
        assert_eq!(stats.torn_bytes as usize, ends[4] - 5 - ends[2]);
        assert_eq!(fs::read(&path).unwrap(), full[..ends[2]]);

        // The fourth record damaged, the fifth whole: damage, named with both offsets.
        let mut damaged = full.clone();
        damaged[ends[2] + 9] ^= 0xff;
        fs::write(&path, &damaged).unwrap();
        let e = names(dir.path(), 0).unwrap_err().to_string();
        assert!(
            e.contains(&format!(
                "offset {}: record checksum mismatch, followed by a valid record at offset {}",
                ends[2], ends[3]
            )),
            "{e}"
        );
        assert_eq!(fs::read(&path).unwrap(), damaged, "nothing cut");
    }

    #[test]
    fn fsync_modes_parse() {
        assert_eq!("always".parse::<FsyncMode>(), Ok(FsyncMode::Always));
        assert_eq!(
            "interval=50".parse::<FsyncMode>(),
            Ok(FsyncMode::Interval(Duration::from_millis(50)))
        );
        assert_eq!(
            "interval=50ms".parse::<FsyncMode>(),
            Ok(FsyncMode::Interval(Duration::from_millis(50)))
        );
        assert!("sometimes".parse::<FsyncMode>().is_err());
    }
}
