//! The file layer under the write-ahead log, the snapshots and the event log.
//!
//! In service it is the operating system's, call for call. Tests can make it remember what each
//! file and directory held at its last sync ([`Disk::simulating_power_loss`], also through
//! `Faults`) and then cut the power ([`Disk::power_cut`]), as LazyFS does for Jepsen: every later call fails as a dead
//! machine's would, and whatever was not synced is dropped from the disk: files are cut back to
//! the length their last `fdatasync` covered, files created since their directory's last sync
//! are deleted, and renames since then are undone. Deletions are taken as durable at once (the
//! model keeps no copy of a deleted file's bytes), which only ever makes it lose less.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{IoSlice, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

/// What a file held and what its last sync made durable.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    len: u64,
    synced: u64,
}

/// A directory entry not yet made durable by a sync of its directory.
#[derive(Debug)]
enum Entry {
    Created(PathBuf),
    Renamed { from: PathBuf, to: PathBuf },
}

/// The file layer: the operating system's, or the same with a power-loss model.
#[derive(Debug, Default)]
pub struct Disk {
    power: Option<Mutex<Power>>,
}

impl Disk {
    /// A layer that remembers what every file held at its last sync, so that
    /// [`Disk::power_cut`] can drop the rest.
    pub fn simulating_power_loss() -> Disk {
        Disk {
            power: Some(Mutex::default()),
        }
    }

    /// Cuts the power: every later file operation fails, and what was not synced is dropped
    /// from the disk. Does nothing unless built by [`Disk::simulating_power_loss`]; a second
    /// cut drops nothing more.
    pub fn power_cut(&self) -> PowerCut {
        self.power
            .as_ref()
            .map(|p| {
                let mut p = p.lock();
                if p.dead { PowerCut::default() } else { p.cut() }
            })
            .unwrap_or_default()
    }

    /// Plans the cut for the `nth` (from 1) operation that `matches`, as it is about to run: it
    /// fails, and so does everything after it.
    pub fn cut_power_at(&self, nth: usize, matches: impl Fn(Op, &Path) -> bool + Send + 'static) {
        if let Some(p) = &self.power {
            p.lock().plan = Some(Plan {
                left: nth.max(1),
                matches: Box::new(matches),
            });
        }
    }

    /// What the planned cut dropped, once it happened.
    pub fn planned_cut(&self) -> Option<PowerCut> {
        self.power.as_ref().and_then(|p| p.lock().report.clone())
    }
}

/// The kinds of operation the layer performs, for placing a cut ([`Disk::cut_power_at`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Write,
    Sync,
    Rename,
    Remove,
}

type Matches = Box<dyn Fn(Op, &Path) -> bool + Send>;

/// A cut planned for the `left`-th operation that `matches`.
struct Plan {
    left: usize,
    matches: Matches,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan").field("left", &self.left).finish()
    }
}

/// The power-loss model: files written through the layer and directory entries not yet synced.
#[derive(Debug, Default)]
struct Power {
    dead: bool,
    files: HashMap<PathBuf, Tracked>,
    entries: Vec<Entry>,
    plan: Option<Plan>,
    /// What the planned cut dropped, once it happened.
    report: Option<PowerCut>,
}

/// What a simulated power cut dropped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PowerCut {
    /// Files cut back to their synced length.
    pub files_cut: usize,
    /// Bytes those files lost.
    pub bytes_dropped: u64,
    /// Files deleted and renames undone because their directory was never synced after them.
    pub entries_undone: usize,
}

impl Power {
    fn track(&mut self, path: &Path, len: u64) -> &mut Tracked {
        self.files
            .entry(path.to_path_buf())
            .or_insert(Tracked { len, synced: len })
    }

    /// Re-keys every tracked path under `from` to the same place under `to`.
    fn moved(&mut self, from: &Path, to: &Path) {
        let moved: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| p.starts_with(from))
            .cloned()
            .collect();
        for p in moved {
            let t = self.files.remove(&p).expect("listed");
            let rest = p.strip_prefix(from).expect("under from");
            self.files.insert(to.join(rest), t);
        }
    }

    fn forget(&mut self, path: &Path) {
        self.files.retain(|p, _| !p.starts_with(path));
    }

    /// Drops what was not synced (see the module's documentation).
    fn cut(&mut self) -> PowerCut {
        self.dead = true;
        let mut report = PowerCut::default();
        for entry in std::mem::take(&mut self.entries).into_iter().rev() {
            report.entries_undone += 1;
            match entry {
                Entry::Created(path) => {
                    let _ = fs::remove_dir_all(&path).or_else(|_| fs::remove_file(&path));
                    self.forget(&path);
                }
                Entry::Renamed { from, to } => {
                    let _ = fs::rename(&to, &from);
                    self.moved(&to, &from);
                }
            }
        }
        for (path, t) in &self.files {
            let Ok(meta) = fs::metadata(path) else { continue };
            if meta.len() > t.synced {
                report.files_cut += 1;
                report.bytes_dropped += meta.len() - t.synced;
                let cut = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .and_then(|f| f.set_len(t.synced));
                if let Err(e) = cut {
                    tracing::error!(path = %path.display(), error = %e, "power cut: cannot drop unsynced bytes");
                }
            }
        }
        report
    }
}

fn dead() -> std::io::Error {
    std::io::Error::other("input/output error (the power was cut)")
}

/// Runs `op`, an operation of kind `kind` on `path`, under the power model when `disk`
/// simulates power loss (refused once the power is cut, or when it is the operation a planned
/// cut waits for), or directly.
fn modelled<T>(
    disk: &Disk,
    kind: Op,
    path: &Path,
    op: impl FnOnce(Option<&mut Power>) -> std::io::Result<T>,
) -> std::io::Result<T> {
    match &disk.power {
        None => op(None),
        Some(power) => {
            let mut power = power.lock();
            if power.dead {
                return Err(dead());
            }
            if let Some(plan) = &mut power.plan
                && (plan.matches)(kind, path)
            {
                plan.left -= 1;
                if plan.left == 0 {
                    power.plan = None;
                    power.report = Some(power.cut());
                    return Err(dead());
                }
            }
            op(Some(&mut power))
        }
    }
}

/// A file opened through the layer.
#[derive(Debug)]
pub struct File {
    file: fs::File,
    path: PathBuf,
    disk: Arc<Disk>,
}

impl File {
    /// Creates `path`, failing if it exists, for appending.
    pub fn create_new(path: &Path, disk: &Arc<Disk>) -> std::io::Result<File> {
        File::create_with(path, disk, OpenOptions::new().create_new(true).append(true))
    }

    /// Creates `path` or empties it, for writing.
    pub fn create(path: &Path, disk: &Arc<Disk>) -> std::io::Result<File> {
        File::create_with(
            path,
            disk,
            OpenOptions::new().create(true).truncate(true).write(true),
        )
    }

    fn create_with(path: &Path, disk: &Arc<Disk>, options: &OpenOptions) -> std::io::Result<File> {
        let file = modelled(disk, Op::Create, path, |power| {
            let existed = power.is_some() && path.exists();
            let file = options.open(path)?;
            if let Some(power) = power {
                let t = power.track(path, 0);
                // Emptied without a sync: what it held before may be gone too.
                *t = Tracked { len: 0, synced: 0 };
                if !existed {
                    power.entries.push(Entry::Created(path.to_path_buf()));
                }
            }
            Ok(file)
        })?;
        Ok(File::opened(file, path, disk))
    }

    /// Opens an existing `path` for writing in place (cutting it short).
    pub fn open_write(path: &Path, disk: &Arc<Disk>) -> std::io::Result<File> {
        let file = modelled(disk, Op::Write, path, |power| {
            let file = OpenOptions::new().write(true).open(path)?;
            if let Some(power) = power {
                power.track(path, file.metadata()?.len());
            }
            Ok(file)
        })?;
        Ok(File::opened(file, path, disk))
    }

    fn opened(file: fs::File, path: &Path, disk: &Arc<Disk>) -> File {
        File {
            file,
            path: path.to_path_buf(),
            disk: disk.clone(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The operating system's file, for calls that change nothing on disk.
    pub fn std(&self) -> &fs::File {
        &self.file
    }

    pub fn try_clone(&self) -> std::io::Result<File> {
        Ok(File {
            file: self.file.try_clone()?,
            path: self.path.clone(),
            disk: self.disk.clone(),
        })
    }

    /// Writes all of `buf` at the end of what was written.
    pub fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        // Borrowed apart, so the log's appends clone nothing.
        let File { file, path, disk } = self;
        modelled(disk, Op::Write, path, |power| {
            let written = file.write_all(buf);
            if let Some(power) = power {
                // Count a partial write too: those bytes may be on disk.
                if let Ok(meta) = file.metadata() {
                    power.track(path, 0).len = meta.len();
                }
            }
            written
        })
    }

    /// Writes every byte of `bufs` in order (`write_vectored` may write only part of them).
    pub fn write_all_vectored(&mut self, mut bufs: &mut [IoSlice<'_>]) -> std::io::Result<()> {
        let File { file, path, disk } = self;
        modelled(disk, Op::Write, path, |mut power| {
            IoSlice::advance_slices(&mut bufs, 0);
            while !bufs.is_empty() {
                match file.write_vectored(bufs) {
                    Ok(0) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::WriteZero,
                            "the file took no more bytes",
                        ));
                    }
                    Ok(n) => {
                        if let Some(power) = power.as_deref_mut() {
                            power.track(path, 0).len += n as u64;
                        }
                        IoSlice::advance_slices(&mut bufs, n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
    }

    /// Moves where the next write lands (after a failed write was cut off).
    pub fn seek_to(&mut self, offset: u64) -> std::io::Result<()> {
        std::io::Seek::seek(&mut self.file, std::io::SeekFrom::Start(offset)).map(|_| ())
    }

    /// Cuts the file (or extends it with zeros) to `len` bytes.
    pub fn set_len(&self, len: u64) -> std::io::Result<()> {
        modelled(&self.disk, Op::Write, &self.path, |power| {
            self.file.set_len(len)?;
            if let Some(power) = power {
                let t = power.track(&self.path, len);
                t.len = len;
                t.synced = t.synced.min(len);
            }
            Ok(())
        })
    }

    /// `fdatasync`: everything written before the call is durable once it returns. The model's
    /// lock is not held across the call (it may take tens of milliseconds).
    pub fn sync_data(&self) -> std::io::Result<()> {
        let upto = modelled(&self.disk, Op::Sync, &self.path, |power| {
            Ok(power.map(|p| p.track(&self.path, 0).len))
        })?;
        self.file.sync_data()?;
        if let (Some(upto), Some(power)) = (upto, &self.disk.power) {
            let mut power = power.lock();
            if power.dead {
                return Err(dead());
            }
            if let Some(t) = power.files.get_mut(&self.path) {
                t.synced = t.synced.max(upto.min(t.len));
            }
        }
        Ok(())
    }
}

/// Fsyncs a directory so that files created, renamed or deleted in it survive a crash.
pub fn sync_dir(dir: &Path, disk: &Disk) -> std::io::Result<()> {
    let durable = |e: &Entry| match e {
        Entry::Created(p) => p.parent() == Some(dir),
        Entry::Renamed { to, .. } => to.parent() == Some(dir),
    };
    let before = modelled(disk, Op::Sync, dir, |power| {
        Ok(power.map(|p| p.entries.iter().filter(|e| durable(e)).count()))
    })?;
    fs::File::open(dir)?.sync_all()?;
    if let (Some(mut n), Some(power)) = (before, &disk.power) {
        // The entries made before the call are durable now.
        power.lock().entries.retain(|e| {
            let keep = !(n > 0 && durable(e));
            n -= usize::from(!keep);
            keep
        });
    }
    Ok(())
}

/// Renames `from` (a file or a directory) to `to`.
pub fn rename(from: &Path, to: &Path, disk: &Disk) -> std::io::Result<()> {
    modelled(disk, Op::Rename, from, |power| {
        fs::rename(from, to)?;
        if let Some(power) = power {
            power.moved(from, to);
            power.entries.push(Entry::Renamed {
                from: from.to_path_buf(),
                to: to.to_path_buf(),
            });
        }
        Ok(())
    })
}

/// Deletes the file `path`.
pub fn remove_file(path: &Path, disk: &Disk) -> std::io::Result<()> {
    remove_with(path, disk, |p| fs::remove_file(p))
}

/// Deletes the directory `path` and everything in it.
pub fn remove_dir_all(path: &Path, disk: &Disk) -> std::io::Result<()> {
    remove_with(path, disk, |p| fs::remove_dir_all(p))
}

fn remove_with(path: &Path, disk: &Disk, remove: fn(&Path) -> std::io::Result<()>) -> std::io::Result<()> {
    modelled(disk, Op::Remove, path, |power| {
        remove(path)?;
        if let Some(power) = power {
            power.forget(path);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_power_cut_keeps_what_was_synced_and_drops_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::simulating_power_loss());
        let synced_dir = dir.path().join("a");
        fs::create_dir(&synced_dir).unwrap();
        let mut kept = File::create_new(&synced_dir.join("kept"), &disk).unwrap();
        kept.write_all(b"durable").unwrap();
        kept.sync_data().unwrap();
        sync_dir(&synced_dir, &disk).unwrap();
        kept.write_all(b" and lost").unwrap();
        // Created and synced, but its directory never was.
        let mut orphan = File::create_new(&dir.path().join("orphan"), &disk).unwrap();
        orphan.write_all(b"x").unwrap();
        orphan.sync_data().unwrap();
        // Renamed without a sync of the directory: undone.
        let renamed = dir.path().join("renamed");
        rename(&synced_dir, &renamed, &disk).unwrap();

        let report = disk.power_cut();
        assert_eq!(
            report,
            PowerCut {
                files_cut: 1,
                bytes_dropped: 9,
                entries_undone: 2
            }
        );
        assert_eq!(fs::read(synced_dir.join("kept")).unwrap(), b"durable");
        assert!(!dir.path().join("orphan").exists());
        assert!(!renamed.exists());
        let refused = kept.write_all(b"after").unwrap_err();
        assert!(refused.to_string().contains("power was cut"), "{refused}");
        assert!(File::create(&dir.path().join("new"), &disk).is_err());
        assert_eq!(disk.power_cut(), PowerCut::default(), "nothing more to drop");
    }

    #[test]
    fn a_planned_cut_lands_on_the_operation_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::simulating_power_loss());
        disk.cut_power_at(2, |op, path| op == Op::Write && path.ends_with("f"));
        let mut f = File::create_new(&dir.path().join("f"), &disk).unwrap();
        f.write_all(b"one").unwrap();
        f.sync_data().unwrap();
        assert!(disk.planned_cut().is_none());
        assert!(
            f.write_all(b"two").is_err(),
            "the second write is where the power goes"
        );
        assert_eq!(
            disk.planned_cut(),
            Some(PowerCut {
                files_cut: 0,
                bytes_dropped: 0,
                entries_undone: 1
            })
        );
        assert!(!dir.path().join("f").exists(), "its directory was never synced");
    }

    #[test]
    fn without_the_model_the_layer_is_the_operating_systems() {
        let dir = tempfile::tempdir().unwrap();
        let disk = Arc::new(Disk::default());
        let mut f = File::create_new(&dir.path().join("f"), &disk).unwrap();
        f.write_all_vectored(&mut [IoSlice::new(b"ab"), IoSlice::new(b"cd")])
            .unwrap();
        f.set_len(3).unwrap();
        assert_eq!(disk.power_cut(), PowerCut::default());
        assert_eq!(fs::read(dir.path().join("f")).unwrap(), b"abc");
    }
}
