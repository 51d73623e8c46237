//! The fuzz targets' bodies (src/fuzzing.rs) on random and mutated inputs, on stable Rust: a
//! regression net for what `cargo fuzz` (fuzz/) finds, and a quick search for shallow panics.

use proptest::prelude::*;
use segmentd::fuzzing::{TARGETS, seeds};

/// A seed with a few bytes flipped, inserted or removed.
fn mutated(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds(target);
    (
        0..seeds.len().max(1),
        proptest::collection::vec((any::<u16>(), any::<u8>(), 0..3u8), 1..6),
    )
        .prop_map(move |(i, edits)| {
            let mut data = seeds.get(i).cloned().unwrap_or_default();
            for (at, byte, kind) in edits {
                let at = if data.is_empty() {
                    0
                } else {
                    usize::from(at) % data.len()
                };
                match kind {
                    0 if !data.is_empty() => data[at] ^= byte.max(1),
                    1 => data.insert(at, byte),
                    _ if !data.is_empty() => {
                        data.remove(at);
                    }
                    _ => data.push(byte),
                }
            }
            data
        })
}

fn run(target: &str, data: &[u8]) {
    let (_, f) = TARGETS.iter().find(|(n, _)| *n == target).expect("target");
    f(data);
}

#[test]
fn seeds_and_the_corpus_pass_every_target() {
    let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, f) in TARGETS {
        for seed in seeds(name) {
            f(&seed);
        }
        // The committed corpus, with every input a fuzzer once crashed on.
        for entry in std::fs::read_dir(corpus.join(name)).unwrap().flatten() {
            f(&std::fs::read(entry.path()).unwrap());
        }
    }
}

macro_rules! fuzz {
    ($name:ident, $target:literal, $cases:expr) => {
        proptest! {
            #![proptest_config(ProptestConfig { cases: $cases, failure_persistence: None, ..ProptestConfig::default() })]
            #[test]
            fn $name(data in prop_oneof![proptest::collection::vec(any::<u8>(), 0..256), mutated($target)]) {
                run($target, &data);
            }
        }
    };
}

fuzz!(rule_text_never_panics, "rule_text", 2000);
fuzz!(rule_tree_never_panics, "rule_tree", 2000);
fuzz!(customer_batch_never_panics, "customer_batch", 1000);
fuzz!(wal_tail_never_panics, "wal_tail", 1000);
fuzz!(snapshot_shard_never_panics, "snapshot_shard", 1000);
fuzz!(event_log_never_panics, "event_log", 1000);

/// Writes the seeds into `fuzz/corpus/<target>/` for `cargo fuzz` (run by hand:
/// `cargo test --test it write_seed_corpus -- --ignored`).
#[test]
#[ignore]
fn write_seed_corpus() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (name, _) in TARGETS {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, seed) in seeds(name).iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), seed).unwrap();
        }
    }
}
