//! The bodies of the fuzz targets (`fuzz/`), here so that the regression tests run them on
//! stable Rust too. Each takes arbitrary bytes and must never panic: bad input is an error.

use std::io::Write;

use prost::Message;

use crate::api::pb;
use crate::columnar::schema::Schema;
use crate::events::{Change, EventLog, Noted, Retention};
use crate::segment::rule::Rule;
use crate::store::input::CustomerPatch;
use crate::store::{Store, no_log};
use crate::wal::{FsyncMode, Wal};

/// A directory removed when dropped (the crate has no temp-file dependency outside tests).
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new() -> TempDir {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "segmentd-fuzz-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The rule text parser: anything that parses prints back to text that parses to the same rule.
pub fn rule_text(data: &[u8]) {
    let Ok(src) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(rule) = crate::segment::text::parse(src) {
        let printed = crate::segment::text::print(&rule);
        let again = crate::segment::text::parse(&printed)
            .unwrap_or_else(|e| panic!("`{printed}` (printed from `{src}`) does not parse: {e}"));
        assert_eq!(again, rule, "`{src}` printed as `{printed}`");
        let _ = crate::segment::compile::compile(&rule, &Schema::builtin(), &|_| None);
    }
}

/// A rule tree from the wire: decoded, converted, compiled; printed as text, it reads back as
/// the same rule, up to what text cannot tell apart (an `and` of one operand is that operand;
/// an `and` inside an `and` is one list, `or` likewise).
pub fn rule_tree(data: &[u8]) {
    let Ok(rule) = pb::Rule::decode(data) else { return };
    if let Ok(rule) = crate::api::rules::rule_in(rule) {
        let _ = crate::segment::compile::compile(&rule, &Schema::builtin(), &|_| None);
        let printed = crate::segment::text::print(&rule);
        let again = crate::segment::text::parse(&printed)
            .unwrap_or_else(|e| panic!("{printed:?} does not parse: {e}"));
        assert_eq!(flat(again), flat(rule), "printed as {printed:?}");
    }
}

/// `rule` with one-operand `and`/`or` replaced by their operand and nested lists of the same
/// kind merged.
fn flat(rule: Rule) -> Rule {
    fn merge(items: Vec<Rule>, and: bool) -> Vec<Rule> {
        let mut out = Vec::with_capacity(items.len());
        for item in items.into_iter().map(flat) {
            match item {
                Rule::And(inner) if and => out.extend(inner),
                Rule::Or(inner) if !and => out.extend(inner),
                other => out.push(other),
            }
        }
        out
    }
    let one = |mut items: Vec<Rule>, wrap: fn(Vec<Rule>) -> Rule| {
        if items.len() == 1 {
            items.pop().expect("one")
        } else {
            wrap(items)
        }
    };
    match rule {
        Rule::And(items) => one(merge(items, true), Rule::And),
        Rule::Or(items) => one(merge(items, false), Rule::Or),
        Rule::Not(inner) => Rule::Not(Box::new(flat(*inner))),
        pred => pred,
    }
}

/// A customer batch from the wire, read straight into patches, then applied to a store.
pub fn customer_batch(data: &[u8]) {
    let Ok(batch) = crate::codec::wire::CustomerBatch::decode(data) else {
        return;
    };
    let store = Store::new();
    let limits = crate::codec::Limits::default();
    if let Ok(patches) = batch.patches(&store.schema(), &limits) {
        let patches: Vec<CustomerPatch> = patches;
        let _ = store.upsert(&patches, &mut no_log);
    }
}

/// A write-ahead log whose first record is good and whose tail is `data`: replay must stop with
/// an error or cut a torn tail, never panic.
pub fn wal_tail(data: &[u8]) {
    let dir = TempDir::new();
    let wal = Wal::open(dir.path(), 1, 1 << 20, FsyncMode::Never).expect("open");
    wal.append(crate::wal::record::delete_segment("s"), 0)
        .expect("append");
    wal.close().expect("close");
    drop(wal);
    let file = std::fs::read_dir(dir.path())
        .expect("list")
        .flatten()
        .map(|e| e.path())
        .next()
        .expect("a log file");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .and_then(|mut f| f.write_all(data))
        .expect("append bytes");
    let _ = crate::wal::replay(dir.path(), 0, |_| Ok(()));
}

/// A snapshot whose shard file is `data` (with a manifest that vouches for it): loading must
/// refuse it or restore it, never panic.
pub fn snapshot_shard(data: &[u8]) {
    let dir = TempDir::new();
    let store = Store::new();
    let schema = store.schema();
    let gender = schema.get("gender").expect("gender").id;
    store
        .upsert(
            &[CustomerPatch {
                customer_id: "c1".into(),
                email: Some("c1@example.com".into()),
                attrs: vec![(gender, Some(crate::columnar::value::Value::Keyword("F".into())))],
            }],
            &mut no_log,
        )
        .expect("upsert");
    let info = crate::snapshot::take(&store, None, dir.path(), &Default::default()).expect("snapshot");
    let shard = info.path.join("shard-00000.bin");
    std::fs::write(&shard, data).expect("write shard");
    // Vouch for the new bytes so the decoder, not the checksum, meets them.
    let manifest = info.path.join("MANIFEST");
    let text = std::fs::read_to_string(&manifest).expect("manifest");
    let fixed: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("file shard-00000.bin ") {
                format!("file shard-00000.bin {} {:08x}", data.len(), crc32c::crc32c(data))
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&manifest, fixed.join("\n") + "\n").expect("write manifest");
    if let Ok(Some(restored)) = crate::snapshot::load(dir.path()) {
        let _ = Store::new().restore(restored);
    }
}

/// An event log file whose batches after a good one are `data`: opening must cut or refuse
/// them, never panic.
pub fn event_log(data: &[u8]) {
    let dir = TempDir::new();
    let log = EventLog::new(Retention::default());
    log.open(dir.path(), 0).expect("open");
    let mut noted = Noted {
        changes: vec![Change::new(1, 0, true, crate::events::Cause::Rule)],
        ..Noted::default()
    };
    log.commit(1, 0, &mut noted, &|_| Some(std::sync::Arc::from("s")));
    log.sync().expect("sync");
    drop(log);
    let file = std::fs::read_dir(dir.path())
        .expect("list")
        .flatten()
        .map(|e| e.path())
        .min()
        .expect("an event file");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&file)
        .and_then(|mut f| f.write_all(data))
        .expect("append bytes");
    let again = EventLog::new(Retention::default());
    if again.open(dir.path(), 0).is_ok() {
        let _ = again.recovered(u64::MAX);
        let _ = again.read(0, &[], 100, 100, &|_| None);
    }
}

/// Good inputs to start from, per target: mutating them reaches deeper than random bytes.
pub fn seeds(target: &str) -> Vec<Vec<u8>> {
    let rules = [
        r#"registered and gender = "M" and age > 40"#,
        r#"total_spent >= 1000 and last_order_at within 90 days and not in segment "staff""#,
        r#"(city in ("Lyon", "Paris") or tags has_all ("golf")) and email_opt_in = true"#,
        r#"birthday within 7d and registered_at < 2024-01-01T00:00:00Z and x is not set"#,
    ];
    match target {
        "rule_text" => rules.iter().map(|r| r.as_bytes().to_vec()).collect(),
        "rule_tree" => rules
            .iter()
            .map(|r| {
                crate::api::rules::rule_out(&crate::segment::text::parse(r).expect("seed")).encode_to_vec()
            })
            .collect(),
        "customer_batch" => {
            let mut attributes = std::collections::BTreeMap::new();
            attributes.insert(
                "gender".to_string(),
                pb::Value {
                    kind: Some(pb::value::Kind::StringValue("F".into())),
                },
            );
            let customers = vec![pb::Customer {
                customer_id: "c1".into(),
                email: Some("c1@example.com".into()),
                attributes,
            }];
            let columns = crate::codec::columns::to_columns(&customers).expect("fits columns");
            vec![
                crate::codec::wire::CustomerBatch::new(customers).encode_to_vec(),
                crate::codec::wire::CustomerBatch::from_columns(&columns).encode_to_vec(),
            ]
        }
        "wal_tail" => vec![vec![0; 8], b"\x10\0\0\0abcdabcdabcdabcdabcd".to_vec()],
        "snapshot_shard" => {
            let dir = TempDir::new();
            let store = Store::new();
            let patch = CustomerPatch {
                customer_id: "c1".into(),
                email: Some("c1@example.com".into()),
                attrs: vec![],
            };
            store.upsert(&[patch], &mut no_log).expect("upsert");
            let info =
                crate::snapshot::take(&store, None, dir.path(), &Default::default()).expect("snapshot");
            vec![std::fs::read(info.path.join("shard-00000.bin")).expect("shard")]
        }
        "event_log" => vec![vec![0; 8], vec![1, 0, 0, 0, 0, 0, 0, 0, 0]],
        _ => Vec::new(),
    }
}

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// Every target by name.
pub const TARGETS: [(&str, Target); 6] = [
    ("rule_text", rule_text),
    ("rule_tree", rule_tree),
    ("customer_batch", customer_batch),
    ("wal_tail", wal_tail),
    ("snapshot_shard", snapshot_shard),
    ("event_log", event_log),
];
