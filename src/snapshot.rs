//! Snapshots: the whole store at one log sequence, so start-up loads it and replays only the
//! log after it, and old log files can be deleted.
//!
//! # Format (version 1; `meta.bin` version 2)
//!
//! A directory `snapshots/<sequence, 20 digits>/`, written as `snapshots/.tmp-<sequence>`, each
//! file fsynced, the directory fsynced, renamed into place and the parent fsynced:
//!
//! | file | content |
//! |---|---|
//! | `MANIFEST` | text: `segmentd-snapshot 1`, `sequence <n>`, then `file <name> <bytes> <crc32c hex>` per file |
//! | `meta.bin` | magic `SEGDMETA`, version; sequence; next ordinal and free ordinals; order count and the 128-bit keys of the order ids recently recorded (version 2: the customer's ordinal over 96 bits of the order id's hash; version 1: the order id's hash alone), then (version 2) the version-1 keys still held and until when (µs); custom attributes; dictionary values in code order (empty: no customer held it); segment definitions (rules as text) in dependency order with their slots |
//! | `shard-<n>.bin` | magic `SEGDSHRD`, version, shard index; live bitmap; the id and e-mail columns (u32 offsets, then bytes holding each string behind a varint length); each column (presence bitmap, then values: dense vectors, dictionary codes and the bitmaps of common values (the index of rare values is rebuilt from the codes), or strings); each segment's members, include, exclude and activity bitmaps |
//!
//! Integers are little-endian; strings and lists are length-prefixed (u32); bitmaps are in the
//! portable roaring format, length-prefixed. Reading checks the manifest, every file's size and
//! checksum, magic and version, and fails with the file and offset, never a panic.
//!
//! # Retention
//!
//! The two newest snapshots are kept. Log files are deleted only when every record in them is
//! covered by the older of the two, so a damaged newest snapshot falls back to the previous one
//! plus the log. Nothing is deleted before the new snapshot's files read back with the sizes and
//! checksums of its manifest.
//!
//! # Erasure
//!
//! A snapshot taken after a `DeleteCustomer` rolls the log at its cut, so the records it covers
//! lie in whole files; once it is written and verified, the older snapshot and every log file it
//! covers are deleted. Dictionaries are written without the values no live customer holds (an
//! empty string keeps the code), and erased ids and e-mails were zeroed in the shards, so no file
//! but the event log (customer ids only) names the customer.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use roaring::RoaringBitmap;

use crate::columnar::column::{Codes, Column, ColumnData};
use crate::columnar::schema::AttrType;
use crate::disk::{self, Disk, File};
use crate::error::{Error, Result};
use crate::segment::SegShard;
use crate::segment::family::{Family, FamilyMember};
use crate::segment::registry::SegmentDef;
use crate::segment::text;
use crate::store::{Cut, Restored, Shard, Store, local};
use crate::wal;

const VERSION: u32 = 1;
/// `meta.bin`'s version: 2 keys order ids by customer (version 1 is read too).
const META_VERSION: u32 = 2;
const META_MAGIC: &[u8; 8] = b"SEGDMETA";
const SHARD_MAGIC: &[u8; 8] = b"SEGDSHRD";
const MANIFEST_HEADER: &str = "segmentd-snapshot 1";

/// What a snapshot wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotInfo {
    pub sequence: u64,
    pub path: PathBuf,
    pub bytes: u64,
    pub duration: Duration,
}

// ---------------------------------------------------------------------------------------------
// Encoding

struct Out(Vec<u8>);

impl Out {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).expect("fewer than 2^32 items"));
    }
    fn str(&mut self, s: &str) {
        self.len(s.len());
        self.0.extend_from_slice(s.as_bytes());
    }
    fn opt_str(&mut self, s: Option<&str>) {
        match s {
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
            None => self.u8(0),
        }
    }
    fn strs(&mut self, v: &[String]) {
        self.len(v.len());
        for s in v {
            self.str(s);
        }
    }
    fn bitmap(&mut self, b: &RoaringBitmap) {
        self.len(b.serialized_size());
        b.serialize_into(&mut self.0)
            .expect("writing to a Vec cannot fail");
    }
}

struct In<'a> {
    data: &'a [u8],
    pos: usize,
    file: &'a str,
}

impl<'a> In<'a> {
    fn bad(&self, what: &str) -> Error {
        Error::DataLoss(format!(
            "snapshot file {} at offset {}: {what}",
            self.file, self.pos
        ))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.data.len() - self.pos < n {
            return Err(self.bad("unexpected end of file"));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn len(&mut self) -> Result<usize> {
        let n = self.u32()? as usize;
        if n > self.data.len() - self.pos && n > (1 << 28) {
            return Err(self.bad("implausible length"));
        }
        Ok(n)
    }
    fn str(&mut self) -> Result<String> {
        self.str_ref().map(str::to_string)
    }
    fn str_ref(&mut self) -> Result<&'a str> {
        let n = self.len()?;
        let b = self.take(n)?;
        std::str::from_utf8(b).map_err(|_| self.bad("string is not UTF-8"))
    }
    fn opt_str(&mut self) -> Result<Option<String>> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.str()?)),
            _ => Err(self.bad("bad optional-string flag")),
        }
    }
    fn strs(&mut self) -> Result<Vec<String>> {
        let n = self.len()?;
        (0..n).map(|_| self.str()).collect()
    }
    fn bitmap(&mut self) -> Result<RoaringBitmap> {
        let n = self.len()?;
        let b = self.take(n)?;
        RoaringBitmap::deserialize_from(b).map_err(|e| self.bad(&format!("bad bitmap: {e}")))
    }
    /// Checks the magic and that the version is one of `versions`; returns the version.
    fn header(&mut self, magic: &[u8; 8], versions: &[u32]) -> Result<u32> {
        if self.take(8)? != magic {
            return Err(self.bad("bad magic"));
        }
        let v = self.u32()?;
        if !versions.contains(&v) {
            return Err(self.bad(&format!(
                "unknown format version {v} (this server reads {versions:?})"
            )));
        }
        Ok(v)
    }
}

fn encode_shard(index: usize, s: &mut Shard) -> Vec<u8> {
    let mut o = Out(Vec::with_capacity(1 << 20));
    o.0.extend_from_slice(SHARD_MAGIC);
    o.u32(VERSION);
    o.u32(index as u32);
    o.bitmap(&s.live);
    for strings in [&s.ids, &s.emails] {
        let (starts, bytes) = strings.raw_parts();
        o.len(starts.len());
        starts
            .iter()
            .for_each(|x| o.0.extend_from_slice(&x.to_le_bytes()));
        o.len(bytes.len());
        o.0.extend_from_slice(&bytes);
    }
    let columns: Vec<(usize, &Column)> = s
        .columns
        .iter()
        .enumerate()
        .filter_map(|(i, c)| Some((i, c.as_ref()?)))
        .collect();
    o.len(columns.len());
    for (attr, col) in columns {
        o.u16(attr as u16);
        o.bitmap(&col.present);
        let by_value = |o: &mut Out, m: &foldhash::HashMap<u32, RoaringBitmap>| {
            let mut codes: Vec<_> = m.keys().copied().collect();
            codes.sort_unstable();
            o.len(codes.len());
            for c in codes {
                o.u32(c);
                o.bitmap(&m[&c]);
            }
        };
        match &col.data {
            ColumnData::Bool(trues) => {
                o.u8(0);
                o.bitmap(trues);
            }
            ColumnData::I64(v) => {
                o.u8(1);
                o.len(v.len());
                v.iter().for_each(|x| o.0.extend_from_slice(&x.to_le_bytes()));
            }
            ColumnData::F64(v) => {
                o.u8(2);
                o.len(v.len());
                v.iter().for_each(|x| o.0.extend_from_slice(&x.to_le_bytes()));
            }
            ColumnData::I32(v) => {
                o.u8(3);
                o.len(v.len());
                v.iter().for_each(|x| o.0.extend_from_slice(&x.to_le_bytes()));
            }
            ColumnData::Keyword {
                codes, by_value: m, ..
            } => {
                o.u8(4);
                match codes {
                    Codes::U8(v) => {
                        o.u8(1);
                        o.len(v.len());
                        o.0.extend_from_slice(v);
                    }
                    Codes::U16(v) => {
                        o.u8(2);
                        o.len(v.len());
                        v.iter().for_each(|x| o.0.extend_from_slice(&x.to_le_bytes()));
                    }
                    Codes::U32(v) => {
                        o.u8(4);
                        o.len(v.len());
                        v.iter().for_each(|x| o.0.extend_from_slice(&x.to_le_bytes()));
                    }
                }
                by_value(&mut o, m);
            }
            ColumnData::Keywords { by_value: m } => {
                o.u8(5);
                by_value(&mut o, m);
            }
            ColumnData::Text(strings) => {
                o.u8(6);
                o.len(col.present.len() as usize);
                for ord in &col.present {
                    o.u32(ord);
                    o.str(strings.get(local(ord)).unwrap_or_default());
                }
            }
        }
    }
    o.len(s.segments.len());
    for seg in &s.segments {
        o.bitmap(&seg.members);
        o.bitmap(&seg.include);
        o.bitmap(&seg.exclude);
        o.bitmap(&seg.by_activity);
    }
    o.0
}

fn decode_shard(file: &str, data: &[u8], expect_index: usize) -> Result<Shard> {
    let mut r = In { data, pos: 0, file };
    r.header(SHARD_MAGIC, &[VERSION])?;
    let index = r.u32()? as usize;
    if index != expect_index {
        return Err(r.bad(&format!("holds shard {index}, expected {expect_index}")));
    }
    let mut s = Shard {
        live: r.bitmap()?,
        ..Default::default()
    };
    if s.live
        .max()
        .is_some_and(|ord| (ord as usize) >> crate::store::SHARD_BITS != index)
    {
        return Err(r.bad("live customer outside the shard"));
    }
    let mut strings = Vec::with_capacity(2);
    for _ in 0..2 {
        let n = r.len()?;
        let raw = r.take(n * 4)?;
        let starts: Vec<u32> = raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        let n = r.len()?;
        let bytes = r.take(n)?.to_vec();
        strings
            .push(crate::columnar::strings::StrColumn::from_raw_parts(starts, bytes).map_err(|e| r.bad(&e))?);
    }
    s.emails = strings.pop().expect("two columns");
    s.ids = strings.pop().expect("two columns");
    let n = r.len()?;
    for _ in 0..n {
        let attr = r.u16()? as usize;
        let present = r.bitmap()?;
        let tag = r.u8()?;
        let by_value = |r: &mut In<'_>| -> Result<foldhash::HashMap<u32, RoaringBitmap>> {
            let n = r.len()?;
            let mut m = foldhash::HashMap::default();
            for _ in 0..n {
                let code = r.u32()?;
                m.insert(code, r.bitmap()?);
            }
            Ok(m)
        };
        macro_rules! vec_of {
            ($t:ty, $size:expr) => {{
                let n = r.len()?;
                let raw = r.take(n * $size)?;
                raw.chunks_exact($size)
                    .map(|c| <$t>::from_le_bytes(c.try_into().expect("sized chunk")))
                    .collect::<Vec<$t>>()
            }};
        }
        let data = match tag {
            0 => ColumnData::Bool(r.bitmap()?),
            1 => ColumnData::I64(vec_of!(i64, 8)),
            2 => ColumnData::F64(vec_of!(f64, 8)),
            3 => ColumnData::I32(vec_of!(i32, 4)),
            4 => {
                let codes = match r.u8()? {
                    1 => {
                        let n = r.len()?;
                        Codes::U8(r.take(n)?.to_vec())
                    }
                    2 => Codes::U16(vec_of!(u16, 2)),
                    4 => Codes::U32(vec_of!(u32, 4)),
                    _ => return Err(r.bad("bad code width")),
                };
                let mut common = by_value(&mut r)?;
                let rare = crate::columnar::column::Rare::rebuild(&present, &codes, &mut common);
                ColumnData::Keyword {
                    codes,
                    by_value: common,
                    rare,
                }
            }
            5 => ColumnData::Keywords {
                by_value: by_value(&mut r)?,
            },
            6 => {
                let n = r.len()?;
                let mut strings = crate::columnar::strings::StrColumn::default();
                for _ in 0..n {
                    let ord = r.u32()?;
                    let v = r.str()?;
                    strings.set(local(ord), &v);
                }
                ColumnData::Text(strings)
            }
            other => return Err(r.bad(&format!("unknown column kind {other}"))),
        };
        if s.columns.len() <= attr {
            s.columns.resize_with(attr + 1, || None);
        }
        s.columns[attr] = Some(Column { present, data });
    }
    let n = r.len()?;
    for _ in 0..n {
        s.segments.push(SegShard {
            members: r.bitmap()?,
            include: r.bitmap()?,
            exclude: r.bitmap()?,
            by_activity: r.bitmap()?,
        });
    }
    if r.pos != data.len() {
        return Err(r.bad("trailing bytes"));
    }
    Ok(s)
}

/// The dictionary codes that live customers of the cut hold, per attribute: a value no one holds
/// is written as an empty string (no keyword value is empty), so an erased or replaced value does
/// not outlive its last holder on disk.
#[derive(Default)]
struct UsedCodes(foldhash::HashMap<usize, RoaringBitmap>);

impl UsedCodes {
    fn add(&mut self, s: &Shard) {
        for (attr, col) in s.columns.iter().enumerate() {
            let Some(col) = col else { continue };
            match &col.data {
                ColumnData::Keyword { codes, .. } => {
                    let used = self.0.entry(attr).or_default();
                    for ord in &col.present {
                        if let Some(code) = codes.get(local(ord)) {
                            used.insert(code);
                        }
                    }
                }
                ColumnData::Keywords { by_value } => {
                    let used = self.0.entry(attr).or_default();
                    for (&code, holders) in by_value {
                        if !holders.is_disjoint(&s.live) {
                            used.insert(code);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn holds(&self, attr: usize, code: u32) -> bool {
        self.0.get(&attr).is_some_and(|b| b.contains(code))
    }
}

fn encode_meta(cut: &Cut, used: &UsedCodes) -> Vec<u8> {
    let mut o = Out(Vec::new());
    o.0.extend_from_slice(META_MAGIC);
    o.u32(META_VERSION);
    o.u64(cut.sequence);
    o.u32(cut.next_ordinal);
    o.len(cut.free.len());
    cut.free.iter().for_each(|&f| o.u32(f));
    o.u64(cut.orders);
    for keys in [&cut.orders_seen, &cut.orders_seen_legacy] {
        o.len(keys.len());
        keys.iter().for_each(|k| o.0.extend_from_slice(&k.to_le_bytes()));
    }
    o.u64(cut.orders_seen_legacy_until as u64);
    let custom: Vec<_> = cut.schema.attrs().iter().filter(|a| !a.builtin).collect();
    o.len(custom.len());
    for a in custom {
        o.u16(a.id);
        o.str(&a.name);
        o.str(a.ty.name());
        o.str(&a.description);
    }
    let dicts: Vec<_> = cut.schema.attrs().iter().filter(|a| a.dict.is_some()).collect();
    o.len(dicts.len());
    for a in dicts {
        let dict = a.dict.as_ref().expect("filtered");
        let n = cut.dict_lens[usize::from(a.id)];
        o.u16(a.id);
        o.len(n);
        for code in 0..n as u32 {
            if used.holds(usize::from(a.id), code) {
                o.str(&dict.value(code));
            } else {
                o.str("");
            }
        }
    }
    let segments: Vec<_> = cut.registry.in_order().collect();
    o.len(segments.len());
    for e in segments {
        let d = &e.def;
        o.u32(e.slot);
        o.str(&d.id);
        o.str(&d.name);
        o.str(&d.description);
        o.opt_str(d.rule.as_ref().map(text::print).as_deref());
        o.strs(&d.include_accounts);
        o.strs(&d.exclude_accounts);
        o.u8(u8::from(d.allow_activities));
    }
    // Families, after the segments (a snapshot without this section has none).
    let families = cut.registry.families();
    o.len(families.len());
    for fe in families {
        let f = &fe.family;
        o.str(&f.id);
        o.str(&f.name);
        o.str(&f.description);
        o.u8(u8::from(f.builtin));
        o.u8(u8::from(fe.reclassified_at.is_some()));
        o.u64(fe.reclassified_at.unwrap_or(0) as u64);
        o.len(f.members.len());
        for m in &f.members {
            o.str(&m.segment_id);
            o.str(&m.name);
            o.opt_str(m.rule.as_ref().map(text::print).as_deref());
        }
    }
    o.0
}

fn decode_meta(file: &str, data: &[u8]) -> Result<Restored> {
    let mut r = In { data, pos: 0, file };
    let version = r.header(META_MAGIC, &[1, META_VERSION])?;
    let mut out = Restored {
        sequence: r.u64()?,
        next_ordinal: r.u32()?,
        ..Default::default()
    };
    let n = r.len()?;
    out.free = (0..n).map(|_| r.u32()).collect::<Result<_>>()?;
    out.orders = r.u64()?;
    let keys = |r: &mut In| -> Result<Vec<u128>> {
        let n = r.len()?;
        let raw = r.take(n * 16)?;
        Ok(raw
            .chunks_exact(16)
            .map(|c| u128::from_le_bytes(c.try_into().expect("16 bytes")))
            .collect())
    };
    if version == 1 {
        out.orders_seen_legacy = keys(&mut r)?;
    } else {
        out.orders_seen = keys(&mut r)?;
        out.orders_seen_legacy = keys(&mut r)?;
        out.orders_seen_legacy_until = Some(r.u64()? as i64);
    }
    let n = r.len()?;
    for _ in 0..n {
        let id = r.u16()?;
        let name = r.str()?;
        let ty = r.str()?;
        let ty = AttrType::from_name(&ty).ok_or_else(|| r.bad(&format!("unknown attribute type `{ty}`")))?;
        out.custom_attrs.push((id, name, ty, r.str()?));
    }
    let n = r.len()?;
    for _ in 0..n {
        let attr = r.u16()?;
        let values = r.strs()?;
        out.dicts.push((attr, values));
    }
    let n = r.len()?;
    for _ in 0..n {
        let slot = r.u32()?;
        let id = r.str()?;
        let name = r.str()?;
        let description = r.str()?;
        let rule = r
            .opt_str()?
            .map(|t| text::parse(&t))
            .transpose()
            .map_err(|e| r.bad(&e.to_string()))?;
        out.segments.push((
            slot,
            SegmentDef {
                id,
                name,
                description,
                rule,
                include_accounts: r.strs()?,
                exclude_accounts: r.strs()?,
                allow_activities: r.u8()? == 1,
            },
        ));
    }
    if r.pos < data.len() {
        let n = r.len()?;
        for _ in 0..n {
            let id = r.str()?;
            let name = r.str()?;
            let description = r.str()?;
            let builtin = r.u8()? == 1;
            let reclassified = r.u8()? == 1;
            let at = r.u64()? as i64;
            let members = r.len()?;
            let mut family = Family {
                id,
                name,
                description,
                members: Vec::with_capacity(members),
                builtin,
            };
            for _ in 0..members {
                let segment_id = r.str()?;
                let name = r.str()?;
                let rule = r
                    .opt_str()?
                    .map(|t| text::parse(&t))
                    .transpose()
                    .map_err(|e| r.bad(&e.to_string()))?;
                family.members.push(FamilyMember {
                    segment_id,
                    name,
                    rule,
                });
            }
            out.families.push((family, reclassified.then_some(at)));
        }
    }
    if r.pos != data.len() {
        return Err(r.bad("trailing bytes"));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Writing

fn write_file(dir: &Path, name: &str, data: &[u8], disk: &Arc<Disk>) -> Result<(String, u64, u32)> {
    let path = dir.join(name);
    let io =
        |e: std::io::Error| Error::Unavailable(format!("snapshot: cannot write {}: {e}", path.display()));
    let mut f = File::create(&path, disk).map_err(io)?;
    f.write_all(data).and_then(|()| f.sync_data()).map_err(io)?;
    Ok((name.to_string(), data.len() as u64, crc32c::crc32c(data)))
}

fn snapshots_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("snapshots")
}

/// Snapshot directories, newest first.
fn list(data_dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = snapshots_dir(data_dir);
    let mut out = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::DataLoss(format!("cannot list {}: {e}", dir.display()))),
    };
    for entry in entries.flatten() {
        if let Some(seq) = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
            out.push((seq, entry.path()));
        }
    }
    out.sort_by_key(|s| std::cmp::Reverse(s.0));
    Ok(out)
}

/// Writes a snapshot of `store` as of the log's last sequence, without stopping reads and
/// holding the writer lock only a shard copy at a time, through the file layer `disk`. Then
/// applies retention.
pub fn take(
    store: &Store,
    wal: Option<&wal::Wal>,
    data_dir: &Path,
    disk: &Arc<Disk>,
) -> Result<SnapshotInfo> {
    take_with(store, wal, data_dir, disk, || {})
}

/// [`take`], running `after_cut` once the cut is taken and before any shard is copied (tests use
/// it to write into the window the cut must exclude).
fn take_with(
    store: &Store,
    wal: Option<&wal::Wal>,
    data_dir: &Path,
    disk: &Arc<Disk>,
    after_cut: impl FnOnce(),
) -> Result<SnapshotInfo> {
    let started = Instant::now();
    let root = snapshots_dir(data_dir);
    fs::create_dir_all(&root)
        .map_err(|e| Error::Unavailable(format!("snapshot: {}: {e}", root.display())))?;
    // An erasure since the newest snapshot: this one must let every older file go, so the log
    // is rolled at the cut and what precedes it lies in whole files.
    let newest = list(data_dir)?.first().map_or(0, |s| s.0);
    let erasing = store.erased_at() > newest;
    let sequence = store.begin_cut(|| match wal {
        Some(w) if erasing => w.roll(),
        Some(w) => Ok(w.last_sequence()),
        None => Ok(0),
    })?;
    // Always end the cut, or writers would keep copying shards.
    struct EndCut<'a>(&'a Store);
    impl Drop for EndCut<'_> {
        fn drop(&mut self) {
            self.0.end_cut();
        }
    }
    let guard = EndCut(store);
    after_cut();
    let final_dir = root.join(format!("{sequence:020}"));
    if final_dir.exists() {
        drop(guard);
        return Ok(SnapshotInfo {
            sequence,
            bytes: dir_bytes(&final_dir),
            path: final_dir,
            duration: started.elapsed(),
        });
    }
    let tmp = root.join(format!(".tmp-{sequence}"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(|e| Error::Unavailable(format!("snapshot: {}: {e}", tmp.display())))?;
    // Shards are copied one at a time (under the writer lock), then encoded, written and synced
    // by several threads at once.
    let files = parking_lot::Mutex::new(Vec::new());
    let used = parking_lot::Mutex::new(UsedCodes::default());
    let failed = parking_lot::Mutex::new(None);
    let next = parking_lot::Mutex::new(0usize);
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 4);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    if failed.lock().is_some() {
                        return;
                    }
                    let Some((i, shard)) = store.take_cut_shard(&mut next.lock()) else {
                        return;
                    };
                    let mut shard = shard;
                    let data = encode_shard(i, &mut shard);
                    used.lock().add(&shard);
                    drop(shard);
                    match write_file(&tmp, &format!("shard-{i:05}.bin"), &data, disk) {
                        Ok(f) => files.lock().push(f),
                        Err(e) => *failed.lock() = Some(e),
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner() {
        return Err(e);
    }
    let mut files = files.into_inner();
    let cut = store
        .end_cut()
        .ok_or_else(|| Error::Internal("snapshot cut vanished".into()))?;
    drop(guard);
    files.push(write_file(
        &tmp,
        "meta.bin",
        &encode_meta(&cut, &used.into_inner()),
        disk,
    )?);
    files.sort();
    let mut manifest = format!("{MANIFEST_HEADER}\nsequence {sequence}\n");
    for (name, bytes, crc) in &files {
        manifest.push_str(&format!("file {name} {bytes} {crc:08x}\n"));
    }
    write_file(&tmp, "MANIFEST", manifest.as_bytes(), disk)?;
    let sync = |p: &Path| {
        disk::sync_dir(p, disk)
            .map_err(|e| Error::Unavailable(format!("snapshot: sync {}: {e}", p.display())))
    };
    sync(&tmp)?;
    disk::rename(&tmp, &final_dir, disk).map_err(|e| Error::Unavailable(format!("snapshot: rename: {e}")))?;
    sync(&root)?;
    let info = SnapshotInfo {
        sequence,
        bytes: files.iter().map(|f| f.1).sum::<u64>() + manifest.len() as u64,
        path: final_dir,
        duration: started.elapsed(),
    };
    retain(data_dir, erasing.then_some(sequence), disk)?;
    Ok(info)
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|e| {
            e.flatten()
                .filter_map(|f| f.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Keeps the two newest snapshots and the log back to the older of them, once the newest reads
/// back whole; nothing is deleted otherwise. After an erasure (`erased`: the new snapshot's
/// sequence, which the log was rolled at), only the new snapshot and the log after it are kept,
/// so that no file holds what was erased.
fn retain(data_dir: &Path, erased: Option<u64>, disk: &Disk) -> Result<()> {
    let snaps = list(data_dir)?;
    let Some((newest, newest_path)) = snaps.first() else {
        return Ok(());
    };
    verify(newest_path)?;
    let keep = if erased.is_some() { 1 } else { 2 };
    for (_, path) in snaps.iter().skip(keep) {
        if let Err(e) = disk::remove_dir_all(path, disk) {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete an old snapshot");
        }
    }
    let covered = match erased {
        Some(sequence) => sequence.min(*newest),
        None => match snaps.get(1) {
            Some(&(older, _)) => older,
            None => return Ok(()),
        },
    };
    let wal_dir = data_dir.join("wal");
    let files = wal::files(&wal_dir)?;
    // A file's records end where the next file begins; the last file is never deleted.
    for pair in files.windows(2) {
        let ((_, path), (next_first, _)) = (&pair[0], &pair[1]);
        if next_first - 1 <= covered
            && let Err(e) = disk::remove_file(path, disk)
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete a covered log file");
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reading

/// Reads a snapshot's files back and checks them against its manifest (sizes and checksums)
/// without decoding them: retention deletes nothing older until this holds.
fn verify(path: &Path) -> Result<()> {
    let (_, entries) = manifest(path)?;
    for listed in &entries {
        read_listed(path, listed).map_err(|e| {
            Error::DataLoss(format!(
                "snapshot check: {e}; older snapshots and the log are kept"
            ))
        })?;
    }
    Ok(())
}

/// A file a manifest lists: its name, and the size and checksum it must have.
struct Listed {
    name: String,
    bytes: String,
    crc: String,
}

/// The sequence and files of the snapshot at `path`, from its manifest.
fn manifest(path: &Path) -> Result<(u64, Vec<Listed>)> {
    let manifest_path = path.join("MANIFEST");
    let manifest = fs::read_to_string(&manifest_path)
        .map_err(|e| Error::DataLoss(format!("{}: {e}", manifest_path.display())))?;
    let bad = |what: &str| Error::DataLoss(format!("{}: {what}", manifest_path.display()));
    let mut lines = manifest.lines();
    match lines.next() {
        Some(MANIFEST_HEADER) => {}
        Some(other) if other.starts_with("segmentd-snapshot ") => {
            return Err(bad(&format!(
                "unknown format version `{other}` (this server reads 1)"
            )));
        }
        _ => return Err(bad("not a snapshot manifest")),
    }
    let sequence: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("sequence "))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("missing sequence"))?;
    let mut entries = Vec::new();
    for line in lines {
        let parts: Vec<_> = line.split(' ').collect();
        let ["file", name, bytes, crc] = parts.as_slice() else {
            return Err(bad(&format!("bad line `{line}`")));
        };
        entries.push(Listed {
            name: name.to_string(),
            bytes: bytes.to_string(),
            crc: crc.to_string(),
        });
    }
    if entries.is_empty() {
        return Err(bad("lists no file"));
    }
    Ok((sequence, entries))
}

/// The bytes of a listed file of the snapshot at `path`, once their size and checksum match.
fn read_listed(path: &Path, listed: &Listed) -> Result<Vec<u8>> {
    let file = path.join(&listed.name);
    let data = fs::read(&file).map_err(|e| Error::DataLoss(format!("{}: {e}", file.display())))?;
    if listed.bytes.parse::<u64>().ok() != Some(data.len() as u64) {
        return Err(Error::DataLoss(format!(
            "{}: size differs from the manifest",
            file.display()
        )));
    }
    if u32::from_str_radix(&listed.crc, 16).ok() != Some(crc32c::crc32c(&data)) {
        return Err(Error::DataLoss(format!("{}: checksum mismatch", file.display())));
    }
    Ok(data)
}

fn read_one(path: &Path) -> Result<Restored> {
    let (sequence, entries) = manifest(path)?;
    let manifest_path = path.join("MANIFEST");
    let bad = |what: &str| Error::DataLoss(format!("{}: {what}", manifest_path.display()));
    enum Part {
        Meta(Box<Restored>),
        Shard(usize, Box<Shard>),
    }
    let read_part = |listed: &Listed| -> Result<Part> {
        let data = read_listed(path, listed)?;
        let name = &listed.name;
        let fname = path.join(name).display().to_string();
        if name == "meta.bin" {
            Ok(Part::Meta(Box::new(decode_meta(&fname, &data)?)))
        } else if let Some(i) = name
            .strip_prefix("shard-")
            .and_then(|n| n.strip_suffix(".bin"))
            .and_then(|n| n.parse::<usize>().ok())
        {
            Ok(Part::Shard(i, Box::new(decode_shard(&fname, &data, i)?)))
        } else {
            Err(bad(&format!("unknown file `{name}`")))
        }
    };
    // Files are read, checked and decoded on every core.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let parts = parking_lot::Mutex::new(Vec::with_capacity(entries.len()));
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(entry) = entries.get(k) else { return };
                    let part = read_part(entry);
                    parts.lock().push(part);
                }
            });
        }
    });
    let mut meta = None;
    let mut shards = Vec::new();
    for part in parts.into_inner() {
        match part? {
            Part::Meta(m) => meta = Some(*m),
            Part::Shard(i, s) => shards.push((i, *s)),
        }
    }
    let mut out: Restored = meta.ok_or_else(|| bad("no meta.bin"))?;
    if out.sequence != sequence {
        return Err(bad("meta.bin and the manifest disagree on the sequence"));
    }
    shards.sort_by_key(|(i, _)| *i);
    for (n, (i, _)) in shards.iter().enumerate() {
        if *i != n {
            return Err(bad(&format!("shard {n} is missing")));
        }
    }
    out.shards = shards.into_iter().map(|(_, s)| s).collect();
    Ok(out)
}

/// The newest usable snapshot, falling back to older ones with a warning; `None` without any.
/// Also removes temporary directories of interrupted snapshots.
pub fn load(data_dir: &Path) -> Result<Option<Restored>> {
    if let Ok(entries) = fs::read_dir(snapshots_dir(data_dir)) {
        for e in entries.flatten() {
            if e.file_name().to_str().is_some_and(|n| n.starts_with(".tmp-")) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    let snaps = list(data_dir)?;
    let mut errors = Vec::new();
    for (seq, path) in &snaps {
        match read_one(path) {
            Ok(r) => {
                if !errors.is_empty() {
                    tracing::warn!(sequence = seq, "recovering from an older snapshot plus the log");
                }
                return Ok(Some(r));
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "snapshot unusable; trying the previous one");
                errors.push(e.to_string());
            }
        }
    }
    if errors.is_empty() {
        Ok(None)
    } else if snaps.len() < 2 {
        // With fewer than two snapshots the log was never trimmed: replay it whole.
        tracing::warn!("no usable snapshot; replaying the whole log");
        Ok(None)
    } else {
        Err(Error::DataLoss(format!(
            "no usable snapshot: {}",
            errors.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::columnar::value::Value;
    use crate::store::input::{CustomerKey, CustomerPatch, OrderIn};
    use crate::store::no_log;

    fn order(id: &str, customer: &str, amount: i64) -> OrderIn {
        OrderIn {
            order_id: id.into(),
            customer_id: customer.into(),
            placed_at: 1_700_000_000_000_000,
            amount_minor: amount,
            promotion: false,
            categories: vec!["golf".into()],
            brands: vec![],
        }
    }

    /// Writes that land after the cut, on shards not yet copied, stay out of the snapshot.
    #[test]
    fn the_cut_excludes_writes_made_while_copying() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new();
        let schema = store.schema();
        let gender = schema.get("gender").unwrap().id;
        let patch = |id: &str, g: &str| CustomerPatch {
            customer_id: id.into(),
            email: Some(format!("{id}@example.com")),
            attrs: vec![(gender, Some(Value::Keyword(g.into())))],
        };
        store
            .upsert(&[patch("a", "F"), patch("b", "M")], &mut no_log)
            .unwrap();
        store
            .record_orders(&[order("o1", "a", 500)], &mut no_log)
            .unwrap();
        let info = take_with(&store, None, dir.path(), &Arc::default(), || {
            store
                .record_orders(&[order("o2", "a", 700)], &mut no_log)
                .unwrap();
            store
                .upsert(&[patch("c", "X"), patch("b", "F")], &mut no_log)
                .unwrap();
            store.delete(&CustomerKey::Id("a".into()), &mut no_log).unwrap();
        })
        .unwrap();
        assert_eq!(info.sequence, 0);
        let restored = load(dir.path()).unwrap().expect("a snapshot");
        let fresh = Store::new();
        fresh.restore(restored).unwrap();
        let a = fresh.get_customer(&CustomerKey::Id("a".into())).unwrap();
        let total = a
            .attrs
            .iter()
            .find(|(n, _)| n.as_ref() == "total_spent")
            .map(|(_, v)| v.clone());
        assert_eq!(total, Some(Value::Money(500)), "only the order before the cut");
        let b = fresh
            .get_customer(&CustomerKey::Email("B@example.com".into()))
            .unwrap();
        assert_eq!(b.attrs, vec![("gender".into(), Value::Keyword("M".into()))]);
        assert!(fresh.get_customer(&CustomerKey::Id("c".into())).is_err());
        assert_eq!(fresh.customer_count(), 2);
        // The live store has all of it.
        assert!(store.get_customer(&CustomerKey::Id("a".into())).is_err());
        assert_eq!(store.customer_count(), 2);
    }
}
