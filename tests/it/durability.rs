//! Durability: restarts keep everything, acknowledged writes survive `kill -9`, and damaged logs
//! are handled as documented (torn tail cut, anything else refused with the file and offset).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use segmentd::api::pb;
use segmentd::wal::FsyncMode;

/// Everything observable about the data: segments with lists and members, customers, counts.
#[derive(Debug, PartialEq)]
struct State {
    segments: Vec<(pb::Segment, Vec<String>)>,
    customers: BTreeMap<String, Option<pb::Customer>>,
    counts: (u64, u64, u64),
}

async fn observe(server: &TestServer, ids: &[String]) -> State {
    let mut segs = server.segments().await;
    let list = segs
        .list_segments(pb::ListSegmentsRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut segments = Vec::new();
    for s in list.segments {
        let full = segs
            .get_segment(pb::GetSegmentRequest {
                segment_id: s.segment_id.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        let mut stream = segs
            .export_segment(pb::ExportSegmentRequest {
                segment_id: s.segment_id.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut members = Vec::new();
        while let Some(batch) = stream.message().await.unwrap() {
            members.extend(batch.customers.into_iter().map(|c| c.customer_id));
        }
        members.sort();
        segments.push((full, members));
    }
    let mut ingest = server.ingest().await;
    let mut customers = BTreeMap::new();
    for id in ids {
        customers.insert(id.clone(), get(&mut ingest, id).await.ok());
    }
    let stats = stats(server).await;
    State {
        segments,
        customers,
        counts: (stats.customers, stats.segments, stats.orders_recorded),
    }
}

/// Writes through every kind of logged change.
async fn populate(server: &TestServer) -> Vec<String> {
    let ids: Vec<String> = (0..300).map(|n| format!("k{n:03}")).collect();
    let customers = ids
        .iter()
        .enumerate()
        .map(|(n, id)| {
            customer(
                id,
                Some(&format!("{id}@example.com")),
                &[
                    ("gender", s(if n % 3 == 0 { "F" } else { "M" })),
                    ("household_size", i((n % 6) as i64)),
                    ("vip", b(n % 10 == 0)),
                    (
                        "birth_date",
                        date(1950 + (n % 50) as i32, 1 + (n % 12) as i32, 1 + (n % 28) as i32),
                    ),
                    (
                        "tags",
                        list(if n % 4 == 0 { &["golf"] } else { &["ski", "tennis"] }),
                    ),
                    ("account_id", s(&format!("acct-{}", n % 7))),
                ],
            )
        })
        .collect::<Vec<_>>();
    server
        .ingest()
        .await
        .load_customers(tokio_stream::iter(
            // Every other batch column by column: the log keeps both forms.
            customers
                .chunks(50)
                .enumerate()
                .map(|(k, c)| match k % 2 {
                    0 => pb::LoadCustomersRequest::new(c.to_vec()),
                    _ => pb::LoadCustomersRequest::from_columns(
                        &segmentd::codec::columns::to_columns(c).unwrap(),
                    ),
                })
                .collect::<Vec<_>>(),
        ))
        .await
        .unwrap();
    let mut admin = server.admin().await;
    admin
        .define_attribute(pb::DefineAttributeRequest {
            name: "golf_handicap".into(),
            r#type: pb::AttributeType::Float as i32,
            description: "Handicap".into(),
        })
        .await
        .unwrap();
    upsert(
        server,
        vec![customer(
            "k001",
            None,
            &[("golf_handicap", f(11.5)), ("tags", clear())],
        )],
    )
    .await;
    let mut ingest = server.ingest().await;
    ingest
        .record_orders(pb::RecordOrdersRequest {
            orders: vec![
                order("o1", "k002", 1_700_000_000, 150_000, true, &["golf"]),
                order("o2", "k003", 1_700_000_100, 20_000, false, &["ski"]),
                order("o1", "k002", 1_700_000_000, 150_000, true, &["golf"]),
                order("o3", "new-from-orders", 1_700_000_200, 99_000, false, &[]),
            ],
        })
        .await
        .unwrap();
    ingest.delete_customer(delete_id("k004")).await.unwrap();
    let mut golf = text_segment("golf", r#"tags has_any ("golf")"#);
    golf.exclude_customer_ids = vec!["k008".into()];
    create(server, golf).await.unwrap();
    create(
        server,
        text_segment("golf_women", r#"in segment "golf" and gender = "F""#),
    )
    .await
    .unwrap();
    let mut b2b = text_segment("b2b", "total_spent > 1000");
    b2b.include_account_ids = vec!["acct-3".into()];
    create(server, b2b).await.unwrap();
    let mut container = text_segment("golfers", "");
    container.allow_activities = true;
    create(server, container).await.unwrap();
    create(server, text_segment("doomed", "vip")).await.unwrap();
    let mut acts = server.activities().await;
    acts.add_to_segment(pb::AddToSegmentRequest {
        segment_id: "golfers".into(),
        customer_ids: vec!["k010".into(), "k011".into(), "k012".into()],
        emails: vec!["k013@example.com".into()],
        activity_id: "web-1".into(),
    })
    .await
    .unwrap();
    acts.remove_from_segment(pb::RemoveFromSegmentRequest {
        segment_id: "golfers".into(),
        customer_ids: vec!["k011".into()],
        emails: vec![],
        activity_id: "web-2".into(),
    })
    .await
    .unwrap();
    ingest
        .load_segment_members(tokio_stream::iter(vec![pb::LoadSegmentMembersRequest {
            segment_id: "golfers".into(),
            emails: vec!["k020@example.com".into()],
            customer_ids: vec![],
            mode: pb::MemberMode::Include as i32,
        }]))
        .await
        .unwrap();
    let mut segs = server.segments().await;
    segs.update_segment(pb::UpdateSegmentRequest {
        segment: Some(text_segment(
            "golf",
            r#"tags has_any ("golf", "ski") and household_size > 1"#,
        )),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["rule_text".into()],
        }),
    })
    .await
    .unwrap();
    segs.delete_segment(pb::DeleteSegmentRequest {
        segment_id: "doomed".into(),
    })
    .await
    .unwrap();
    let mut all = ids;
    all.push("new-from-orders".into());
    all
}

#[tokio::test]
async fn restart_keeps_customers_orders_segments_lists_and_memberships() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // No snapshot at any stop: each restart replays the whole log.
    let log_only = |c: &mut segmentd::config::Config| c.no_snapshot_on_shutdown = true;
    let server = TestServer::start_at(data.clone(), |c| {
        c.fsync = FsyncMode::Always;
        c.no_snapshot_on_shutdown = true;
    })
    .await;
    let ids = populate(&server).await;
    let before = observe(&server, &ids).await;
    assert_eq!(before.counts, (300, 4, 3));
    assert!(before.segments.iter().all(|(s, m)| s.size as usize == m.len()));
    server.stop().await.unwrap();
    assert!(
        !data.join("snapshots").exists() || std::fs::read_dir(data.join("snapshots")).unwrap().count() == 0
    );

    let server = TestServer::start_at(data.clone(), log_only).await;
    let after = observe(&server, &ids).await;
    assert_eq!(after, before);
    // Writes continue after recovery and survive another restart.
    upsert(&server, vec![customer("after", None, &[("vip", b(true))])]).await;
    server.stop().await.unwrap();
    let server = TestServer::start_at(data, log_only).await;
    assert!(get(&mut server.ingest().await, "after").await.is_ok());
    assert_eq!(observe(&server, &ids).await.segments, before.segments);
}

fn last_wal_file(data: &Path) -> PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(data.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal") && std::fs::metadata(p).unwrap().len() > 24)
        .collect();
    files.sort();
    files.pop().expect("a log file with records")
}

/// Customers `a` (a vip) and `b` and the segment `vips`, written by a server on `data` that then
/// stops; returns the last log file and its length.
async fn two_customers_then_stop(data: &Path, tune: fn(&mut segmentd::config::Config)) -> (PathBuf, usize) {
    let server = TestServer::start_at(data.to_path_buf(), tune).await;
    upsert(
        &server,
        vec![customer("a", None, &[("vip", b(true))]), customer("b", None, &[])],
    )
    .await;
    create(&server, text_segment("vips", "vip")).await.unwrap();
    server.stop().await.unwrap();
    let path = last_wal_file(data);
    let len = std::fs::metadata(&path).unwrap().len() as usize;
    (path, len)
}

#[tokio::test]
async fn a_torn_final_record_is_cut_and_everything_before_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (path, good) = two_customers_then_stop(&data, |c| c.no_snapshot_on_shutdown = true).await;
    // A crash in the middle of an append: a length and checksum, then half a payload.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9]);
    std::fs::write(&path, &bytes).unwrap();

    let server = TestServer::start_at(data.clone(), |c| c.no_snapshot_on_shutdown = true).await;
    assert_eq!(is_member(&server, "a", "vips").await, (true, true));
    assert_eq!(customer_count(&server).await, 2);
    assert_eq!(
        std::fs::metadata(&path).unwrap().len() as usize,
        good,
        "cut back to the last whole record"
    );
    upsert(&server, vec![customer("c", None, &[])]).await;
    server.stop().await.unwrap();
    let server = TestServer::start_at(data, |_| {}).await;
    assert_eq!(customer_count(&server).await, 3);
}

/// A power cut can leave the last log file ending in zeros (space allocated, never written) after
/// its records: start-up cuts them with a warning and replays every record before them, from the
/// log alone (no snapshot was written).
#[tokio::test]
async fn a_log_ending_in_zeros_after_a_power_cut_opens_with_every_record() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let no_snapshot = |c: &mut segmentd::config::Config| c.no_snapshot_on_shutdown = true;
    let (path, good) = two_customers_then_stop(&data, no_snapshot).await;
    assert!(
        !data.join("snapshots").exists() || std::fs::read_dir(data.join("snapshots")).unwrap().count() == 0
    );
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.extend(std::iter::repeat_n(0u8, 64 << 10));
    std::fs::write(&path, &bytes).unwrap();

    let server = TestServer::start_at(data.clone(), no_snapshot).await;
    assert_eq!(is_member(&server, "a", "vips").await, (true, true));
    assert_eq!(customer_count(&server).await, 2);
    assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, good);
    server.stop().await.unwrap();
}

/// Start-up does not read the log files whose records the loaded snapshot holds: a damaged one
/// (kept for the older snapshot) does not stop it, and the log after the snapshot is replayed.
#[tokio::test]
async fn recovery_skips_the_log_files_the_snapshot_covers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tune = |c: &mut segmentd::config::Config| {
        c.no_snapshot_on_shutdown = true;
        c.wal_segment_bytes = 4096;
    };
    let server = TestServer::start_at(data.clone(), tune).await;
    let ids: Vec<String> = (0..600).map(|i| format!("c{i:03}")).collect();
    for (n, batch) in ids.chunks(10).enumerate() {
        upsert(&server, batch.iter().map(|id| customer(id, None, &[])).collect()).await;
        if n == 20 || n == 40 {
            take_snapshot(&server).await;
        }
    }
    server.stop().await.unwrap();
    let snapshots: Vec<u64> = std::fs::read_dir(data.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    let newest = *snapshots.iter().max().unwrap();
    let files = wal_files(&data);
    let firsts: Vec<u64> = files
        .iter()
        .map(|p| p.file_stem().unwrap().to_str().unwrap().parse().unwrap())
        .collect();
    // A file the newest snapshot covers whole (kept for the older one): overwrite its records.
    let covered = (0..files.len() - 1)
        .find(|&i| firsts[i + 1] <= newest + 1)
        .expect("a log file covered by the newest snapshot");
    let mut bytes = std::fs::read(&files[covered]).unwrap();
    for b in &mut bytes[30..] {
        *b = 0x5a;
    }
    std::fs::write(&files[covered], &bytes).unwrap();

    let server = TestServer::start_at(data.clone(), tune).await;
    assert_eq!(customer_count(&server).await, 600);
    for id in ids.iter().step_by(41) {
        assert!(get(&mut server.ingest().await, id).await.is_ok(), "{id}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn damage_before_the_tail_or_an_unknown_version_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // No snapshot: the damaged records are the only copy, as after a crash.
    let server = TestServer::start_at(data.clone(), |c| c.no_snapshot_on_shutdown = true).await;
    for n in 0..5 {
        upsert(&server, vec![customer(&format!("c{n}"), None, &[])]).await;
    }
    server.stop().await.unwrap();
    let path = last_wal_file(&data);
    let original = std::fs::read(&path).unwrap();

    // A flipped byte inside the first record: not a torn tail, so start-up stops.
    let mut corrupt = original.clone();
    corrupt[24 + 12] ^= 0x55;
    std::fs::write(&path, &corrupt).unwrap();
    let server = TestServer::spawn_at(data.clone(), |_| {}).await;
    let err = server.finished().await.unwrap_err().to_string();
    assert!(
        err.contains(path.to_str().unwrap()) && err.contains("offset 24") && err.contains("checksum"),
        "{err}"
    );

    let mut v9 = original.clone();
    v9[8] = 9;
    std::fs::write(&path, &v9).unwrap();
    let err = TestServer::spawn_at(data.clone(), |_| {})
        .await
        .finished()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown format version 9"), "{err}");

    // Restored, the data is all there.
    std::fs::write(&path, &original).unwrap();
    let server = TestServer::start_at(data, |_| {}).await;
    assert_eq!(customer_count(&server).await, 5);
}

/// The real binary, killed with SIGKILL during concurrent acknowledged writes, load streams, log
/// rotations (64 KiB files) and snapshots (one every 100 ms of log); every writer's error is
/// recorded, and none may come before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_segmentd"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
                data.to_str().unwrap(),
            ])
            .args([
                "--fsync",
                "always",
                "--wal-segment-bytes",
                "65536",
                "--snapshot-wal-bytes",
                "200000",
            ])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start segmentd")
    };
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let external = |addr| TestServer::external(addr);
    let mut child = spawn();
    let server = external(addr);
    server.wait_serving().await;
    create(&server, text_segment("vips", "vip")).await.unwrap();
    let mut container = text_segment("picked", "");
    container.allow_activities = true;
    create(&server, container).await.unwrap();

    let acked: Arc<Mutex<Vec<(String, bool)>>> = Arc::default();
    let picked: Arc<Mutex<Vec<String>>> = Arc::default();
    let loaded: Arc<Mutex<Vec<String>>> = Arc::default();
    let killed = Arc::new(AtomicBool::new(false));
    let errors_before_kill: Arc<Mutex<Vec<String>>> = Arc::default();
    let failed = {
        let (killed, errors) = (killed.clone(), errors_before_kill.clone());
        move |what: String| {
            if !killed.load(Ordering::Acquire) {
                errors.lock().unwrap().push(what);
            }
        }
    };
    let mut tasks = Vec::new();
    for t in 0..6 {
        let (acked, picked, failed) = (acked.clone(), picked.clone(), failed.clone());
        let channel = server.channel().await;
        tasks.push(tokio::spawn(async move {
            let mut ingest = pb::ingest_client::IngestClient::new(channel.clone());
            let mut acts = pb::activities_client::ActivitiesClient::new(channel);
            for n in 0.. {
                let id = format!("t{t}-{n}");
                let vip = n % 3 == 0;
                let upsert = ingest
                    .upsert_customers(pb::UpsertCustomersRequest::new(vec![customer(
                        &id,
                        None,
                        &[("vip", b(vip))],
                    )]))
                    .await;
                if let Err(e) = upsert {
                    return failed(format!("upsert {id}: {e}"));
                }
                acked.lock().unwrap().push((id.clone(), vip));
                if n % 2 == 0 {
                    let add = acts
                        .add_to_segment(pb::AddToSegmentRequest {
                            segment_id: "picked".into(),
                            customer_ids: vec![id.clone()],
                            emails: vec![],
                            activity_id: "crash-test".into(),
                        })
                        .await;
                    if let Err(e) = add {
                        return failed(format!("add {id}: {e}"));
                    }
                    picked.lock().unwrap().push(id);
                }
            }
        }));
    }
    for t in 0..2 {
        let (loaded, failed, mut ingest) = (loaded.clone(), failed.clone(), server.ingest().await);
        tasks.push(tokio::spawn(async move {
            for n in 0.. {
                let ids: Vec<String> = (0..200).map(|c| format!("l{t}-{n}-{c}")).collect();
                let batches = ids
                    .chunks(50)
                    .map(|c| {
                        pb::LoadCustomersRequest::new(c.iter().map(|id| customer(id, None, &[])).collect())
                    })
                    .collect::<Vec<_>>();
                if let Err(e) = ingest.load_customers(tokio_stream::iter(batches)).await {
                    return failed(format!("load {t}-{n}: {e}"));
                }
                loaded.lock().unwrap().extend(ids);
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    killed.store(true, Ordering::Release);
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    for t in tasks {
        t.await.expect("writer task");
    }
    let errors = errors_before_kill.lock().unwrap().clone();
    assert!(errors.is_empty(), "errors before the kill: {errors:?}");
    let loaded = loaded.lock().unwrap().clone();
    let acked = acked.lock().unwrap().clone();
    let picked = picked.lock().unwrap().clone();
    assert!(
        acked.len() > 50,
        "only {} writes acknowledged before the kill",
        acked.len()
    );

    let mut child = spawn();
    server.wait_serving().await;
    let mut m = server.membership().await;
    for (id, vip) in &acked {
        let r = m
            .check_memberships(pb::CheckMembershipsRequest {
                customer_id: id.clone(),
                segment_ids: vec!["vips".into(), "picked".into()],
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.known_customer, "acknowledged customer {id} lost");
        assert_eq!(r.member[0], *vip, "{id}: vips must equal a fresh evaluation");
        if picked.contains(id) {
            assert!(r.member[1], "acknowledged activity for {id} lost");
        }
    }
    for (id, (known, ..)) in loaded.iter().zip(known_vip_picked(&server, &loaded).await) {
        assert!(known, "acknowledged load of {id} lost");
    }
    // The materialized segment equals a fresh evaluation of its rule.
    let fresh = server
        .segments()
        .await
        .preview_segment(pb::PreviewSegmentRequest {
            rule_text: "vip".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(size(&server, "vips").await, fresh);
    child.kill().unwrap();
    child.wait().unwrap();
}

async fn take_snapshot(server: &TestServer) -> pb::SnapshotResponse {
    server
        .admin()
        .await
        .snapshot(pb::SnapshotRequest {})
        .await
        .unwrap()
        .into_inner()
}

fn wal_files(data: &Path) -> Vec<PathBuf> {
    let mut f: Vec<_> = std::fs::read_dir(data.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    f.sort();
    f
}

#[tokio::test]
async fn snapshots_restore_with_the_log_after_them_and_trim_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start_at(data.clone(), |c| {
        c.wal_segment_bytes = 4096;
        c.no_snapshot_on_shutdown = true;
    })
    .await;
    let ids = populate(&server).await;
    let first = take_snapshot(&server).await;
    assert!(first.sequence > 10 && first.bytes > 0, "{first:?}");
    assert!(std::path::Path::new(&first.path).join("MANIFEST").exists());
    // More writes after the snapshot, which only the log has.
    upsert(
        &server,
        vec![
            customer("late", None, &[("vip", b(true))]),
            customer("k005", None, &[("vip", b(true))]),
        ],
    )
    .await;
    server
        .ingest()
        .await
        .delete_customer(delete_id("k006"))
        .await
        .unwrap();
    let before = observe(&server, &ids).await;
    let second = take_snapshot(&server).await;
    assert!(second.sequence > first.sequence);
    // Enough writes for several log files after each of the next snapshots.
    let later: Vec<String> = (0..400).map(|i| format!("later-{i:03}")).collect();
    for batch in later.chunks(10) {
        upsert(&server, batch.iter().map(|id| customer(id, None, &[])).collect()).await;
    }
    let third = take_snapshot(&server).await;
    let more: Vec<String> = (0..400).map(|i| format!("more-{i:03}")).collect();
    for batch in more.chunks(10) {
        upsert(&server, batch.iter().map(|id| customer(id, None, &[])).collect()).await;
    }
    let fourth = take_snapshot(&server).await;
    // No log file is left whose records the older kept snapshot (the third) all covers.
    let firsts: Vec<u64> = wal_files(&data)
        .iter()
        .map(|p| p.file_stem().unwrap().to_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        firsts.len() >= 2
            && firsts[0] <= third.sequence + 1
            && firsts.windows(2).all(|w| w[1] - 1 > third.sequence),
        "log files covered by the older kept snapshot ({}) are deleted: {firsts:?}",
        third.sequence
    );
    let kept: Vec<_> = std::fs::read_dir(data.join("snapshots"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    for gone in [&first.path, &second.path] {
        assert!(!std::path::Path::new(gone).exists());
    }
    assert!(std::path::Path::new(&third.path).exists());
    assert!(std::path::Path::new(&fourth.path).exists());
    // After the newest snapshot, only the log has these (no snapshot at shutdown).
    upsert(&server, vec![customer("after-fourth", None, &[("vip", b(true))])]).await;
    server.stop().await.unwrap();
    assert_eq!(std::fs::read_dir(data.join("snapshots")).unwrap().count(), 2);

    let server = TestServer::start_at(data.clone(), |_| {}).await;
    assert!(get(&mut server.ingest().await, "after-fourth").await.is_ok());
    let after = observe(&server, &ids).await;
    assert_eq!(after.segments, before.segments);
    assert_eq!(after.customers, before.customers);
    for id in later.iter().chain(&more).step_by(37) {
        assert!(get(&mut server.ingest().await, id).await.is_ok(), "{id}");
    }
    assert!(is_member(&server, "late", "golf").await.1, "known after restart");
}

#[tokio::test]
async fn a_damaged_newest_snapshot_falls_back_to_the_previous_one_and_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start_at(data.clone(), |c| c.no_snapshot_on_shutdown = true).await;
    let ids = populate(&server).await;
    take_snapshot(&server).await;
    upsert(&server, vec![customer("between", None, &[("vip", b(true))])]).await;
    let newest = take_snapshot(&server).await;
    upsert(&server, vec![customer("after", None, &[])]).await;
    let before = observe(&server, &ids).await;
    server.stop().await.unwrap();
    // Damage a shard file of the newest snapshot.
    let shard = std::path::Path::new(&newest.path).join("shard-00000.bin");
    let mut bytes = std::fs::read(&shard).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&shard, &bytes).unwrap();

    let server = TestServer::start_at(data, |_| {}).await;
    let after = observe(&server, &ids).await;
    assert_eq!(after, before);
    let mut ingest = server.ingest().await;
    assert!(get(&mut ingest, "between").await.is_ok() && get(&mut ingest, "after").await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_taken_during_concurrent_writes_restores_consistently() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start_at(data.clone(), |c| c.no_snapshot_on_shutdown = true).await;
    create(&server, text_segment("spenders", "total_spent >= 50"))
        .await
        .unwrap();
    let mut writers = Vec::new();
    for t in 0..4 {
        let channel = server.channel().await;
        writers.push(tokio::spawn(async move {
            let mut ingest = pb::ingest_client::IngestClient::new(channel);
            for n in 0..150 {
                let id = format!("w{t}-{n}");
                ingest
                    .upsert_customers(pb::UpsertCustomersRequest::new(vec![customer(
                        &id,
                        None,
                        &[("household_size", i(n))],
                    )]))
                    .await
                    .unwrap();
                // Orders are not idempotent without their dedup state: a torn cut would count twice.
                ingest
                    .record_orders(pb::RecordOrdersRequest {
                        orders: vec![order(
                            &format!("o-{id}"),
                            &id,
                            1_700_000_000,
                            1_000 * (n % 10),
                            false,
                            &["golf"],
                        )],
                    })
                    .await
                    .unwrap();
            }
        }));
    }
    let mut snaps = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(30)).await;
        snaps.push(take_snapshot(&server).await.sequence);
    }
    for w in writers {
        w.await.unwrap();
    }
    let ids: Vec<String> = (0..4)
        .flat_map(|t| (0..150).map(move |n| format!("w{t}-{n}")))
        .collect();
    let before = observe(&server, &ids).await;
    assert_eq!(before.counts.0, 600);
    server.stop().await.unwrap();
    assert!(snaps.windows(2).all(|w| w[0] <= w[1]), "{snaps:?}");
    // The log holds the segment, then 1,200 writes: the newest snapshot, the one the restart
    // loads, was cut among them (after the first, before the last), so the log after it replays.
    let last = 1 + 4 * 150 * 2;
    assert!(
        snaps[2] > 1 && snaps[2] < last,
        "the snapshots {snaps:?} did not land among the writes (1 to {last})"
    );

    let server = TestServer::start_at(data, |_| {}).await;
    let after = observe(&server, &ids).await;
    assert_eq!(after, before);
    let fresh = server
        .segments()
        .await
        .preview_segment(pb::PreviewSegmentRequest {
            rule_text: "total_spent >= 50".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .count;
    assert_eq!(size(&server, "spenders").await, fresh);
}

#[tokio::test]
async fn restarts_without_writes_in_between() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for round in 0..3 {
        let server = TestServer::start_at(data.clone(), |c| c.no_snapshot_on_shutdown = round == 1).await;
        assert_eq!(customer_count(&server).await, u64::from(round > 0));
        if round == 0 {
            upsert(&server, vec![customer("only", None, &[])]).await;
        }
        server.stop().await.unwrap();
    }
    // And from an empty data directory, twice.
    let empty = dir.path().join("empty");
    for _ in 0..2 {
        let server = TestServer::start_at(empty.clone(), |c| c.no_snapshot_on_shutdown = true).await;
        assert_eq!(customer_count(&server).await, 0);
        server.stop().await.unwrap();
    }
}

/// The health status the server reports for itself.
async fn health(server: &TestServer) -> i32 {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    HealthClient::new(server.channel().await)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// A failed fdatasync fails the log for good (the PostgreSQL lesson: a retried fsync can report
/// success for pages the kernel already dropped): the write waiting for it and every later one
/// get UNAVAILABLE, health turns NOT_SERVING, reads go on; after a restart, writes are taken
/// again and nothing acknowledged is missing.
#[tokio::test]
async fn a_failed_fsync_refuses_every_write_until_restart() {
    let faults = Arc::new(segmentd::faults::Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tune = |f: Option<Arc<segmentd::faults::Faults>>| {
        move |c: &mut segmentd::config::Config| {
            c.fsync = FsyncMode::Always;
            c.faults = f;
        }
    };
    let server = TestServer::start_at(data.clone(), tune(Some(faults.clone()))).await;
    upsert(&server, vec![customer("kept", None, &[])]).await;
    assert_eq!(health(&server).await, 1, "SERVING");
    faults.fail_syncs(1);
    let mut ingest = server.ingest().await;
    let err = ingest
        .upsert_customers(pb::UpsertCustomersRequest::new(vec![customer("lost", None, &[])]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{}", err.message());
    assert!(err.message().contains("sync"), "{}", err.message());
    // Syncs work again, but the log stays failed.
    for id in ["later-1", "later-2"] {
        let err = ingest
            .upsert_customers(pb::UpsertCustomersRequest::new(vec![customer(id, None, &[])]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable, "{}", err.message());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while health(&server).await != 2 {
        assert!(std::time::Instant::now() < deadline, "health never NOT_SERVING");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // GetServerInfo says why.
    let info = server
        .admin()
        .await
        .get_server_info(pb::GetServerInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.state(), pb::ServerState::Failed, "{info:?}");
    assert!(info.failure.contains("sync"), "{info:?}");
    // Reads go on. (The refused write's outcome is unknown, as with any failed commit: it was
    // applied before its sync failed, and its record may or may not have reached the disk.)
    let kept = server.ingest().await.get_customer(by_id("kept")).await;
    assert!(kept.unwrap().into_inner().customer.is_some(), "reads go on");
    server.stop().await.unwrap();

    let server = TestServer::start_at(data, tune(None)).await;
    assert_eq!(health(&server).await, 1);
    upsert(&server, vec![customer("after", None, &[])]).await;
    for id in ["kept", "after"] {
        let found = server.ingest().await.get_customer(by_id(id)).await;
        assert!(found.unwrap().into_inner().customer.is_some(), "{id}");
    }
    server.stop().await.unwrap();
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
            {
                found.push(path);
            }
        }
    }
    found
}

/// Erasure reaches the disk: once the first snapshot after a `DeleteCustomer` is written, no
/// file of the data directory holds the customer's e-mail, keyword values or text (the log
/// files it covers, the older snapshot and the dictionary entries no one holds are gone), and
/// a restart from that snapshot alone keeps everyone else.
#[tokio::test]
async fn an_erased_customer_is_in_no_file_once_the_next_snapshot_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let no_shutdown_snapshot = |c: &mut segmentd::config::Config| c.no_snapshot_on_shutdown = true;
    let server = TestServer::start_at(data.clone(), no_shutdown_snapshot).await;
    define_text(&server, "notes").await;
    const EMAIL: &str = "erased.person@example.org";
    const CITY: &str = "Zzyzxville-7731";
    const POSTAL: &str = "ZZ-99-erased";
    const NOTES: &str = "prefers the blue catalogue";
    let erased = |city: &str| {
        customer(
            "erase-me",
            Some(EMAIL),
            &[("city", s(city)), ("postal_code", s(POSTAL)), ("notes", s(NOTES))],
        )
    };
    // An older value, replaced before the erasure, must go too.
    upsert(
        &server,
        vec![
            erased("Oldtown-4410"),
            customer("stays", Some("stays@example.org"), &[("city", s("Paris"))]),
        ],
    )
    .await;
    create(&server, text_segment("paris", "city = \"Paris\""))
        .await
        .unwrap();
    // (A rule's own text is the marketer's, not the customer's: it names only a prefix here.)
    create(&server, text_segment("zzyzx", "city starts_with \"Zzyzx\""))
        .await
        .unwrap();
    take_snapshot(&server).await;
    upsert(&server, vec![erased(CITY)]).await;
    assert_eq!(is_member(&server, "erase-me", "zzyzx").await, (true, true));
    take_snapshot(&server).await;
    for needle in [EMAIL, CITY, POSTAL, NOTES] {
        assert!(
            !files_holding(&data, needle).is_empty(),
            "{needle} is on disk before the erasure"
        );
    }

    server
        .ingest()
        .await
        .delete_customer(pb::DeleteCustomerRequest {
            key: Some(pb::delete_customer_request::Key::Email(EMAIL.into())),
        })
        .await
        .unwrap();
    upsert(&server, vec![customer("after", None, &[("city", s("Paris"))])]).await;
    take_snapshot(&server).await;
    for needle in [EMAIL, CITY, POSTAL, NOTES, "Oldtown-4410"] {
        assert_eq!(files_holding(&data, needle), Vec::<PathBuf>::new(), "{needle}");
    }
    // Writes after the snapshot go on into the log.
    upsert(&server, vec![customer("later", None, &[("city", s("Paris"))])]).await;
    server.stop().await.unwrap();

    // The snapshot and the log after it hold everything else.
    let server = TestServer::start_at(data.clone(), no_shutdown_snapshot).await;
    assert_eq!(customer_count(&server).await, 3);
    for id in ["stays", "after", "later"] {
        assert_eq!(is_member(&server, id, "paris").await, (true, true), "{id}");
    }
    let gone = server.ingest().await.get_customer(by_id("erase-me")).await;
    assert_eq!(gone.unwrap_err().code(), tonic::Code::NotFound);
    // The forgotten value is a value like any other when it comes back.
    upsert(&server, vec![customer("newcomer", None, &[("city", s(CITY))])]).await;
    assert_eq!(is_member(&server, "newcomer", "zzyzx").await, (true, true));
    assert_eq!(is_member(&server, "stays", "zzyzx").await, (false, true));
    server.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Power loss: the file layer (`segmentd::disk`) drops whatever was not synced, as a machine
// losing power drops its page cache. `kill -9` above cannot tell `--fsync always` from
// `--fsync never`; these tests can.

/// What the writers had acknowledged when the power went, and the errors they saw.
#[derive(Debug, Default)]
struct Acked {
    /// Upserted customers and whether each is a vip.
    customers: Vec<(String, bool)>,
    /// Customers added to `picked` by an activity.
    picked: Vec<String>,
    /// Customers of load streams whose reply came back.
    loaded: Vec<String>,
    /// The batches of load streams that failed: each must be there whole or not at all.
    unacked_batches: Vec<Vec<String>>,
    orders: u64,
    snapshots: u64,
    /// Errors seen before the power went (none may be) and after.
    errors_before_cut: Vec<String>,
    errors_after_cut: usize,
}

/// A server on `data` whose file layer simulates power loss, with small log files (so that the
/// log rotates under the writers) when `small_files`.
async fn power_loss_server(
    data: &Path,
    fsync: FsyncMode,
    small_files: bool,
) -> (TestServer, Arc<segmentd::faults::Faults>) {
    let faults = Arc::new(segmentd::faults::Faults::simulating_power_loss());
    let server = TestServer::start_at(data.to_path_buf(), |c| {
        c.fsync = fsync;
        if small_files {
            c.wal_segment_bytes = 32 * 1024;
        }
        c.faults = Some(faults.clone());
    })
    .await;
    create(&server, text_segment("vips", "vip")).await.unwrap();
    let mut container = text_segment("picked", "");
    container.allow_activities = true;
    create(&server, container).await.unwrap();
    (server, faults)
}

/// Writers of every kind (upserts, activities, load streams, orders, and snapshots when
/// `snapshots`) run until the power goes: `cut_after` acknowledged upserts when given, else when
/// the cut planned through `faults` lands (within 30 s). Every error a writer sees is recorded
/// with whether the power had gone.
async fn write_until_power_cut(
    server: &TestServer,
    faults: &Arc<segmentd::faults::Faults>,
    cut_after: Option<usize>,
    snapshots: bool,
) -> Acked {
    use std::sync::atomic::{AtomicBool, Ordering};
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    // An error is expected once the power went (by hand or as planned), never before.
    let failed = {
        let (acked, stop, faults) = (acked.clone(), stop.clone(), faults.clone());
        move |what: String| {
            let mut a = acked.lock().unwrap();
            if stop.load(Ordering::Acquire) || faults.disk().planned_cut().is_some() {
                a.errors_after_cut += 1;
            } else {
                a.errors_before_cut.push(what);
            }
        }
    };
    let limit = Duration::from_secs(10);
    let mut tasks = Vec::new();
    for t in 0..3 {
        let (acked, stop, failed, channel) = (
            acked.clone(),
            stop.clone(),
            failed.clone(),
            server.channel().await,
        );
        tasks.push(tokio::spawn(async move {
            let mut ingest = pb::ingest_client::IngestClient::new(channel.clone());
            let mut acts = pb::activities_client::ActivitiesClient::new(channel);
            for n in 0.. {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let id = format!("u{t}-{n}");
                let vip = n % 3 == 0;
                let request = pb::UpsertCustomersRequest::new(vec![customer(&id, None, &[("vip", b(vip))])]);
                match tokio::time::timeout(limit, ingest.upsert_customers(request)).await {
                    Ok(Ok(_)) => acked.lock().unwrap().customers.push((id.clone(), vip)),
                    other => return failed(format!("upsert {id}: {other:?}")),
                }
                if n % 2 == 0 {
                    let add = pb::AddToSegmentRequest {
                        segment_id: "picked".into(),
                        customer_ids: vec![id.clone()],
                        emails: vec![],
                        activity_id: "power-test".into(),
                    };
                    match tokio::time::timeout(limit, acts.add_to_segment(add)).await {
                        Ok(Ok(_)) => acked.lock().unwrap().picked.push(id),
                        other => return failed(format!("add {id}: {other:?}")),
                    }
                }
            }
        }));
    }
    {
        let (acked, stop, failed, mut ingest) =
            (acked.clone(), stop.clone(), failed.clone(), server.ingest().await);
        tasks.push(tokio::spawn(async move {
            for n in 0.. {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let batches: Vec<Vec<String>> = (0..4)
                    .map(|k| (0..50).map(|c| format!("l{n}-{k}-{c}")).collect())
                    .collect();
                let requests = batches
                    .iter()
                    .map(|ids| {
                        pb::LoadCustomersRequest::new(ids.iter().map(|id| customer(id, None, &[])).collect())
                    })
                    .collect::<Vec<_>>();
                match tokio::time::timeout(limit, ingest.load_customers(tokio_stream::iter(requests))).await {
                    Ok(Ok(_)) => acked.lock().unwrap().loaded.extend(batches.into_iter().flatten()),
                    other => {
                        acked.lock().unwrap().unacked_batches.extend(batches);
                        return failed(format!("load {n}: {other:?}"));
                    }
                }
            }
        }));
    }
    {
        let (acked, stop, failed, mut ingest) =
            (acked.clone(), stop.clone(), failed.clone(), server.ingest().await);
        tasks.push(tokio::spawn(async move {
            for n in 0.. {
                if stop.load(Ordering::Acquire) {
                    return;
                }
                let request = pb::RecordOrdersRequest {
                    orders: vec![order(
                        &format!("p{n}"),
                        &format!("buyer-{}", n % 20),
                        1_700_000_000 + n,
                        1_000,
                        false,
                        &[],
                    )],
                };
                match tokio::time::timeout(limit, ingest.record_orders(request)).await {
                    Ok(Ok(_)) => acked.lock().unwrap().orders += 1,
                    other => return failed(format!("order {n}: {other:?}")),
                }
            }
        }));
    }
    if snapshots {
        let (acked, stop, failed, mut admin) =
            (acked.clone(), stop.clone(), failed.clone(), server.admin().await);
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                match tokio::time::timeout(limit, admin.snapshot(pb::SnapshotRequest {})).await {
                    Ok(Ok(_)) => acked.lock().unwrap().snapshots += 1,
                    other => return failed(format!("snapshot: {other:?}")),
                }
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        }));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let landed = match cut_after {
            Some(n) => acked.lock().unwrap().customers.len() >= n,
            None => faults.disk().planned_cut().is_some(),
        };
        if landed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the power cut never came: {:?}",
            acked.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Release);
    if cut_after.is_some() {
        faults.power_cut();
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    std::mem::take(&mut *acked.lock().unwrap())
}

/// Whether each of `ids` is known to `server`, and a member of `vips` and of `picked` (false for
/// both when the segments are missing).
async fn known_vip_picked(server: &TestServer, ids: &[String]) -> Vec<(bool, bool, bool)> {
    let mut m = server.membership().await;
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(1000) {
        let reply = m
            .batch_check_memberships(pb::BatchCheckMembershipsRequest {
                customer_ids: chunk.to_vec(),
                segment_ids: vec!["vips".into(), "picked".into()],
            })
            .await;
        match reply.map(|r| r.into_inner()) {
            Ok(r) => out.extend(
                (0..chunk.len()).map(|i| (r.known_customer[i], r.member[2 * i], r.member[2 * i + 1])),
            ),
            // The segments are missing: the customers may still be there.
            Err(_) => {
                let mut ingest = server.ingest().await;
                for id in chunk {
                    out.push((get(&mut ingest, id).await.is_ok(), false, false));
                }
            }
        }
    }
    out
}

/// Everything `acked` holds that the restarted `server` lacks, described.
async fn lost_after_restart(server: &TestServer, acked: &Acked) -> Vec<String> {
    let mut lost = Vec::new();
    let segments = list_segment_ids(server).await;
    for id in ["vips", "picked"] {
        if !segments.iter().any(|s| s == id) {
            lost.push(format!("segment {id}"));
        }
    }
    let ids: Vec<String> = acked.customers.iter().map(|c| c.0.clone()).collect();
    for ((id, vip), (known, in_vips, in_picked)) in
        acked.customers.iter().zip(known_vip_picked(server, &ids).await)
    {
        if !known {
            lost.push(format!("customer {id}"));
        } else if lost.is_empty() {
            assert_eq!(in_vips, *vip, "{id}: vips must equal a fresh evaluation");
            if acked.picked.contains(id) && !in_picked {
                lost.push(format!("activity adding {id}"));
            }
        }
    }
    for (id, (known, ..)) in acked
        .loaded
        .iter()
        .zip(known_vip_picked(server, &acked.loaded).await)
    {
        if !known {
            lost.push(format!("loaded customer {id}"));
        }
    }
    for batch in &acked.unacked_batches {
        let present = known_vip_picked(server, batch)
            .await
            .iter()
            .filter(|k| k.0)
            .count();
        assert!(
            present == 0 || present == batch.len(),
            "a batch half applied: {present} of {}",
            batch.len()
        );
    }
    let orders = stats(server).await.orders_recorded;
    if orders < acked.orders {
        lost.push(format!("{} of {} orders", acked.orders - orders, acked.orders));
    }
    // Events are rebuilt from the log where the event log lost them.
    let mut segs = server.segments().await;
    for id in acked.picked.iter().take(20) {
        let history = segs
            .get_membership_history(pb::GetMembershipHistoryRequest {
                customer_id: id.clone(),
                segment_id: "picked".into(),
            })
            .await;
        let entered = history.is_ok_and(|h| {
            h.into_inner().events.iter().any(|e| {
                e.entered && e.cause == pb::MembershipCause::Activity as i32 && e.activity_id == "power-test"
            })
        });
        if !entered {
            lost.push(format!("the event of {id} entering picked"));
        }
    }
    lost
}

/// Cuts the power as planned by `plan` under writers of every kind, then restarts on what the
/// disk kept: with `--fsync always`, nothing acknowledged may be missing.
async fn no_acknowledged_write_lost_when_the_power_goes(plan: impl FnOnce(&segmentd::disk::Disk)) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (server, faults) = power_loss_server(&data, FsyncMode::Always, true).await;
    plan(faults.disk());
    let acked = write_until_power_cut(&server, &faults, None, true).await;
    let cut = faults.disk().planned_cut().expect("the cut landed");
    let _ = server.stop().await;
    assert!(
        acked.errors_before_cut.is_empty(),
        "errors before the cut: {:?}",
        acked.errors_before_cut
    );
    assert!(
        acked.errors_after_cut > 0,
        "every writer stops at an error once the power is gone"
    );
    let server = TestServer::start_at(data, |_| {}).await;
    let lost = lost_after_restart(&server, &acked).await;
    assert!(lost.is_empty(), "lost after {cut:?}: {lost:?}");
    // The server takes writes again on what the disk kept.
    upsert(&server, vec![customer("after-the-cut", None, &[])]).await;
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_always_loses_nothing_acknowledged_when_the_power_goes_and_fsync_never_does() {
    for fsync in [FsyncMode::Always, FsyncMode::Never] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        // No snapshot nor rotation: with `never`, nothing syncs the log.
        let (server, faults) = power_loss_server(&data, fsync, false).await;
        let acked = write_until_power_cut(&server, &faults, Some(150), false).await;
        let _ = server.stop().await;
        assert!(
            acked.errors_before_cut.is_empty(),
            "{fsync:?}: errors before the cut: {:?}",
            acked.errors_before_cut
        );
        let server = TestServer::start_at(data, |_| {}).await;
        let lost = lost_after_restart(&server, &acked).await;
        match fsync {
            FsyncMode::Always => assert!(lost.is_empty(), "lost with --fsync always: {lost:?}"),
            // The same test sees the loss when acknowledgements do not wait for the disk.
            _ => assert!(
                !lost.is_empty(),
                "--fsync never lost nothing: the test cannot tell them apart"
            ),
        }
        server.stop().await.unwrap();
    }
}

async fn list_segment_ids(server: &TestServer) -> Vec<String> {
    let list = server
        .segments()
        .await
        .list_segments(pb::ListSegmentsRequest {})
        .await
        .unwrap();
    list.into_inner()
        .segments
        .into_iter()
        .map(|s| s.segment_id)
        .collect()
}

fn under(path: &Path, dir: &str) -> bool {
    path.components().any(|c| c.as_os_str() == dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_during_a_snapshot() {
    // The second snapshot's first file: its directory is neither complete nor renamed.
    no_acknowledged_write_lost_when_the_power_goes(|disk| {
        disk.cut_power_at(2, |op, path| {
            op == segmentd::disk::Op::Create && path.file_name().is_some_and(|n| n == "shard-00000.bin")
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_during_a_snapshot_rename() {
    no_acknowledged_write_lost_when_the_power_goes(|disk| {
        disk.cut_power_at(2, |op, path| {
            op == segmentd::disk::Op::Rename && under(path, "snapshots")
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_during_a_log_rotation() {
    // The third log file created since start: the rotation's new file.
    no_acknowledged_write_lost_when_the_power_goes(|disk| {
        disk.cut_power_at(3, |op, path| {
            op == segmentd::disk::Op::Create && path.extension().is_some_and(|e| e == "wal")
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_during_an_event_log_write() {
    no_acknowledged_write_lost_when_the_power_goes(|disk| {
        disk.cut_power_at(40, |op, path| {
            op == segmentd::disk::Op::Write && under(path, "events")
        })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cut_during_a_load_stream() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (server, faults) = power_loss_server(&data, FsyncMode::Always, true).await;
    let batch = |k: usize| -> Vec<String> { (0..50).map(|c| format!("s{k}-{c}")).collect() };
    let request = |ids: &[String]| {
        pb::LoadCustomersRequest::new(ids.iter().map(|id| customer(id, None, &[])).collect())
    };
    // One acknowledged stream, then one cut off after three of its batches were applied.
    let done: Vec<String> = (0..4).flat_map(batch).collect();
    server
        .ingest()
        .await
        .load_customers(tokio_stream::iter(
            done.chunks(50).map(request).collect::<Vec<_>>(),
        ))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut ingest = server.ingest().await;
    let open = tokio::spawn(async move {
        ingest
            .load_customers(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    for k in 4..7 {
        tx.send(request(&batch(k))).await.unwrap();
    }
    let mut ingest = server.ingest().await;
    while get(&mut ingest, "s6-49").await.is_err() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let cut = faults.power_cut();
    let _ = tx.send(request(&batch(7))).await;
    drop(tx);
    let reply = open.await.unwrap();
    assert!(
        reply.is_err(),
        "a stream the power cut off is not acknowledged: {reply:?}"
    );
    let _ = server.stop().await;

    let server = TestServer::start_at(data, |_| {}).await;
    let acked = Acked {
        loaded: done,
        unacked_batches: (4..8).map(batch).collect(),
        ..Acked::default()
    };
    let lost = lost_after_restart(&server, &acked).await;
    assert!(lost.is_empty(), "lost after {cut:?}: {lost:?}");
    server.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// Replay from the log alone: no snapshot is written, so the restart rebuilds every kind of change
// from its log records, and the whole observable state must come back identical.

/// Every kind of logged change.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Change {
    Customers,
    Loads,
    Orders,
    Erasure,
    Attributes,
    Segments,
    Lists,
    Activities,
    MemberLoads,
    Families,
    Reclassification,
    Time,
}

pub(crate) const DAY: i64 = 86_400;

/// Every customer id the changes below may create.
pub(crate) fn replay_ids() -> Vec<String> {
    let mut ids: Vec<String> = (0..40).map(|n| format!("c{n:02}")).collect();
    ids.extend((0..10).map(|n| format!("row-{n}")));
    ids.extend((0..10).map(|n| format!("col-{n}")));
    ids.extend(["n1", "n2", "buyer"].map(String::from));
    ids
}

/// The whole observable state: segments with members and lists, customers with their values,
/// counts, schema, families, and every customer's retained events.
#[derive(Debug, PartialEq)]
struct Dump {
    state: State,
    schema: pb::GetSchemaResponse,
    families: Vec<pb::Family>,
    events: BTreeMap<String, Option<Vec<pb::MembershipEvent>>>,
}

async fn dump(server: &TestServer) -> Dump {
    let ids = replay_ids();
    let state = observe(server, &ids).await;
    let schema = server
        .admin()
        .await
        .get_schema(pb::GetSchemaRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut segs = server.segments().await;
    let mut families = segs
        .list_families(pb::ListFamiliesRequest {})
        .await
        .unwrap()
        .into_inner()
        .families;
    // The last reclassification's moves are kept in memory only (a replay makes them again, a
    // snapshot does not keep them): not part of what the files hold.
    for f in &mut families {
        f.last_moves.clear();
    }
    let mut events = BTreeMap::new();
    for id in ids {
        let history = segs
            .get_membership_history(pb::GetMembershipHistoryRequest {
                customer_id: id.clone(),
                segment_id: String::new(),
            })
            .await
            .ok()
            .map(|h| h.into_inner().events);
        events.insert(id, history);
    }
    Dump {
        state,
        schema,
        families,
        events,
    }
}

/// Customers across every shard, segments reading them, and orders: what each change starts from.
pub(crate) async fn replay_base(server: &TestServer, t0: i64) {
    let customers = (0..40)
        .map(|n| {
            let id = format!("c{n:02}");
            customer(
                &id,
                Some(&format!("{id}@example.com")),
                &[
                    ("vip", b(n % 4 == 0)),
                    ("gender", s(if n % 3 == 0 { "F" } else { "M" })),
                    ("tags", list(if n % 5 == 0 { &["golf"] } else { &["ski"] })),
                    ("account_id", s(&format!("acct-{}", n % 5))),
                    ("birth_date", date(1980 + n % 20, 3, 12 + n % 3)),
                ],
            )
        })
        .collect();
    upsert(server, customers).await;
    let orders = (0..10)
        .map(|n| {
            order(
                &format!("b{n}"),
                &format!("c{n:02}"),
                t0 - (85 + n) * DAY,
                10_000 * (n + 1),
                n % 2 == 0,
                &["golf"],
            )
        })
        .collect();
    record_orders(server, orders).await;
    create(server, text_segment("vips", "vip")).await.unwrap();
    create(server, text_segment("golf", r#"tags has_any ("golf")"#))
        .await
        .unwrap();
    create(server, text_segment("recent", "last_order_at within 90 days"))
        .await
        .unwrap();
    let mut picked = text_segment("picked", "");
    picked.allow_activities = true;
    create(server, picked).await.unwrap();
}

pub(crate) async fn write_change(
    server: &TestServer,
    change: Change,
    clock: &segmentd::time::ManualClock,
    t0: i64,
) {
    let mut ingest = server.ingest().await;
    let mut segs = server.segments().await;
    match change {
        Change::Customers => {
            upsert(
                server,
                vec![
                    customer("c01", None, &[("vip", b(true)), ("tags", clear())]),
                    customer("c02", Some("new-c02@example.com"), &[("gender", s("F"))]),
                    customer("n1", Some("n1@example.com"), &[("vip", b(true))]),
                ],
            )
            .await
        }
        Change::Loads => {
            let rows: Vec<pb::Customer> = (0..10)
                .map(|n| customer(&format!("row-{n}"), None, &[("vip", b(n % 2 == 0))]))
                .collect();
            let mut cols: Vec<pb::Customer> = (0..10)
                .map(|n| customer(&format!("col-{n}"), None, &[("tags", list(&["golf"]))]))
                .collect();
            cols.push(customer("c03", None, &[("vip", b(true))]));
            ingest
                .load_customers(tokio_stream::iter(vec![
                    pb::LoadCustomersRequest::new(rows),
                    pb::LoadCustomersRequest::from_columns(
                        &segmentd::codec::columns::to_columns(&cols).unwrap(),
                    ),
                ]))
                .await
                .unwrap();
        }
        Change::Orders => {
            let orders = vec![
                order("x1", "c20", t0 - DAY, 250_000, true, &["ski", "golf"]),
                order("x1", "c20", t0 - DAY, 250_000, true, &["ski", "golf"]),
                order("x2", "buyer", t0 - 2 * DAY, 5_000, false, &[]),
            ];
            ingest
                .record_orders(pb::RecordOrdersRequest { orders })
                .await
                .unwrap();
        }
        Change::Erasure => {
            ingest.delete_customer(delete_id("c04")).await.unwrap();
            ingest
                .delete_customer(pb::DeleteCustomerRequest {
                    key: Some(pb::delete_customer_request::Key::Email("c05@example.com".into())),
                })
                .await
                .unwrap();
            // Takes an erased customer's place.
            upsert(server, vec![customer("n2", None, &[("vip", b(true))])]).await;
        }
        Change::Attributes => {
            server
                .admin()
                .await
                .define_attribute(pb::DefineAttributeRequest {
                    name: "golf_handicap".into(),
                    r#type: pb::AttributeType::Float as i32,
                    description: "Handicap".into(),
                })
                .await
                .unwrap();
            upsert(server, vec![customer("c06", None, &[("golf_handicap", f(12.5))])]).await;
            create(server, text_segment("good", "golf_handicap < 20"))
                .await
                .unwrap();
        }
        Change::Segments => {
            create(server, text_segment("women", r#"gender = "F""#))
                .await
                .unwrap();
            create(
                server,
                text_segment("golf_women", r#"in segment "golf" and in segment "women""#),
            )
            .await
            .unwrap();
            update(
                &mut segs,
                text_segment("golf", r#"tags has_any ("golf", "ski") and vip"#),
                &["rule_text"],
            )
            .await;
            segs.delete_segment(pb::DeleteSegmentRequest {
                segment_id: "golf_women".into(),
            })
            .await
            .unwrap();
        }
        Change::Lists => {
            let mut golf = text_segment("golf", "");
            golf.include_customer_ids = vec!["c07".into()];
            golf.exclude_customer_ids = vec!["c10".into()];
            golf.include_account_ids = vec!["acct-2".into()];
            update(
                &mut segs,
                golf,
                &[
                    "include_customer_ids",
                    "exclude_customer_ids",
                    "include_account_ids",
                ],
            )
            .await;
        }
        Change::Activities => {
            let mut acts = server.activities().await;
            acts.add_to_segment(pb::AddToSegmentRequest {
                segment_id: "picked".into(),
                customer_ids: vec!["c11".into(), "c12".into()],
                emails: vec!["c13@example.com".into()],
                activity_id: "mail-1".into(),
            })
            .await
            .unwrap();
            acts.remove_from_segment(pb::RemoveFromSegmentRequest {
                segment_id: "picked".into(),
                customer_ids: vec!["c12".into()],
                emails: vec![],
                activity_id: "mail-2".into(),
            })
            .await
            .unwrap();
        }
        Change::MemberLoads => {
            let load = |ids: &[&str], emails: &[&str], mode: pb::MemberMode| pb::LoadSegmentMembersRequest {
                segment_id: "vips".into(),
                customer_ids: ids.iter().map(|s| s.to_string()).collect(),
                emails: emails.iter().map(|s| s.to_string()).collect(),
                mode: mode as i32,
            };
            ingest
                .load_segment_members(tokio_stream::iter(vec![
                    load(&["c14", "c15"], &["c17@example.com"], pb::MemberMode::Include),
                    load(&["c16"], &[], pb::MemberMode::Exclude),
                ]))
                .await
                .unwrap();
        }
        Change::Families => {
            let member = |id: &str, rule: &str| pb::FamilyMember {
                segment_id: id.into(),
                name: id.into(),
                rule_text: rule.into(),
                ..Default::default()
            };
            for id in ["value", "doomed"] {
                segs.create_family(pb::CreateFamilyRequest {
                    family: Some(pb::Family {
                        family_id: id.into(),
                        name: id.into(),
                        members: vec![member(&format!("{id}.big"), "total_spent >= 500")],
                        catch_all: Some(member(&format!("{id}.small"), "")),
                        ..Default::default()
                    }),
                })
                .await
                .unwrap();
            }
            segs.delete_family(pb::DeleteFamilyRequest {
                family_id: "doomed".into(),
            })
            .await
            .unwrap();
        }
        Change::Reclassification => {
            segs.reclassify(pb::ReclassifyRequest::default()).await.unwrap();
            // Between runs, a customer whose orders age moves down a recency grade.
            advance_and_wait_for_flips(server, clock, 120 * DAY).await;
            segs.reclassify(pb::ReclassifyRequest::default()).await.unwrap();
        }
        Change::Time => {
            // c05..c09 ordered 90 to 94 days ago: each leaves `recent` as its 90 days pass.
            advance_and_wait_for_flips(server, clock, 3 * DAY).await;
        }
    }
}

/// Moves the clock `seconds` on and waits until the server has applied the flips (`recent`
/// shrinks), so that the state compared is the state at that time.
pub(crate) async fn advance_and_wait_for_flips(
    server: &TestServer,
    clock: &segmentd::time::ManualClock,
    seconds: i64,
) {
    let before = size(server, "recent").await;
    clock.advance(seconds * 1_000_000);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while size(server, "recent").await == before {
        assert!(std::time::Instant::now() < deadline, "no time flip");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn update(
    segs: &mut pb::segments_client::SegmentsClient<tonic::transport::Channel>,
    segment: pb::Segment,
    paths: &[&str],
) {
    segs.update_segment(pb::UpdateSegmentRequest {
        segment: Some(segment),
        update_mask: Some(prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }),
    })
    .await
    .unwrap();
}

/// Writes the base and `change` with no snapshot at any point, restarts, and compares the whole
/// state with what it was before the restart.
async fn replays_from_the_log_alone(change: Change) {
    let (t0, clock) = replay_clock();
    let tune = log_alone(clock.clone());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start_at(data.clone(), tune.clone()).await;
    replay_base(&server, t0).await;
    write_change(&server, change, &clock, t0).await;
    let before = dump(&server).await;
    server.stop().await.unwrap();
    let snapshots = std::fs::read_dir(data.join("snapshots")).map_or(0, |d| d.count());
    assert_eq!(snapshots, 0, "{change:?}: the restart must read the log alone");
    let server = TestServer::start_at(data, tune).await;
    let after = dump(&server).await;
    if after != before {
        assert_eq!(format!("{:#?}", after), format!("{:#?}", before), "{change:?}");
    }
    server.stop().await.unwrap();
}

macro_rules! replay_tests {
    ($($name:ident: $change:expr,)*) => {$(
        #[tokio::test]
        async fn $name() {
            replays_from_the_log_alone($change).await;
        }
    )*};
}

replay_tests! {
    customers_replay_from_the_log_alone: Change::Customers,
    loads_replay_from_the_log_alone: Change::Loads,
    orders_replay_from_the_log_alone: Change::Orders,
    erasure_replays_from_the_log_alone: Change::Erasure,
    attributes_replay_from_the_log_alone: Change::Attributes,
    segment_changes_replay_from_the_log_alone: Change::Segments,
    lists_replay_from_the_log_alone: Change::Lists,
    activities_replay_from_the_log_alone: Change::Activities,
    member_loads_replay_from_the_log_alone: Change::MemberLoads,
    families_replay_from_the_log_alone: Change::Families,
    reclassification_replays_from_the_log_alone: Change::Reclassification,
    time_replays_from_the_log_alone: Change::Time,
}

// ---------------------------------------------------------------------------------------------
// A data directory written by an earlier build: every later build must open it with everything.

/// `tests/fixtures/datadir-v1`: `data/` (a log of every kind of change, no snapshot, and its event
/// log), `clock` (the time it was left at, micros) and `dump.txt` (what the server then showed).
fn fixture_v1() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/datadir-v1")
}

/// Every kind of change, in an order in which each applies after the others.
pub(crate) const EVERY_CHANGE: [Change; 12] = [
    Change::Time,
    Change::Customers,
    Change::Loads,
    Change::Orders,
    Change::Attributes,
    Change::Segments,
    Change::Lists,
    Change::Activities,
    Change::MemberLoads,
    Change::Families,
    Change::Reclassification,
    Change::Erasure,
];

/// Where the replay tests start: 2026-03-10 (`t0`, seconds since the epoch) on a manual clock.
pub(crate) fn replay_clock() -> (i64, Arc<segmentd::time::ManualClock>) {
    let days = segmentd::time::days_from_civil(2026, 3, 10).unwrap();
    let t0 = i64::from(days) * DAY;
    (t0, Arc::new(segmentd::time::ManualClock::new(t0 * 1_000_000)))
}

/// [`log_alone`], with the changes kept for replicas bounded to `items`.
pub(crate) fn log_alone_following(
    clock: Arc<segmentd::time::ManualClock>,
    items: usize,
) -> impl Fn(&mut segmentd::config::Config) + Clone {
    let base = log_alone(clock);
    move |c: &mut segmentd::config::Config| {
        base(c);
        c.follow_buffer_items = items;
    }
}

/// A server on `clock` that writes no snapshot (at any time, or when it stops), ticks every
/// 20 ms and never reclassifies by itself: a restart reads the log alone.
pub(crate) fn log_alone(
    clock: Arc<segmentd::time::ManualClock>,
) -> impl Fn(&mut segmentd::config::Config) + Clone {
    move |c: &mut segmentd::config::Config| {
        c.clock = Some(clock.clone());
        c.time_tick_ms = 20;
        c.no_snapshot_on_shutdown = true;
        c.snapshot_interval_secs = 0;
        c.reclassify_interval_hours = 0;
    }
}

/// Copies every file of `from` into `to` (created), as an operator's `cp -r` would.
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Writes the fixture again (only when its format is meant to change, never to make the test
/// below pass): `cargo test --test it -- --ignored write_the_version_1_data_directory`.
#[tokio::test]
#[ignore]
async fn write_the_version_1_data_directory() {
    use segmentd::time::Clock;
    let (t0, clock) = replay_clock();
    let root = fixture_v1();
    let _ = std::fs::remove_dir_all(&root);
    let server = TestServer::start_at(root.join("data"), log_alone(clock.clone())).await;
    replay_base(&server, t0).await;
    for change in EVERY_CHANGE {
        write_change(&server, change, &clock, t0).await;
    }
    let dump = dump(&server).await;
    server.stop().await.unwrap();
    // The lock is the running server's, not part of what it wrote.
    let _ = std::fs::remove_file(root.join("data/LOCK"));
    std::fs::write(root.join("clock"), clock.now_micros().to_string()).unwrap();
    std::fs::write(root.join("dump.txt"), folded(&dump)).unwrap();
}

/// A data directory written by format version 1 (a log of every kind of change, no snapshot)
/// opens with everything it held, as the server showed it then; writes go on after it, and the
/// log of both builds opens again.
#[tokio::test]
async fn a_data_directory_written_by_format_version_1_opens_with_everything() {
    use segmentd::time::{Clock, ManualClock};
    let root = fixture_v1();
    let at: i64 = std::fs::read_to_string(root.join("clock"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let want = std::fs::read_to_string(root.join("dump.txt")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    copy_dir(&root.join("data"), &data);
    let clock = Arc::new(ManualClock::new(at));
    let server = TestServer::start_at(data.clone(), log_alone(clock.clone())).await;
    let got = folded(&dump(&server).await);
    assert!(got == want, "{}", first_difference(&got, &want));
    // Writes go on after the old records.
    upsert(&server, vec![customer("c01", None, &[("vip", b(false))])]).await;
    let changed = folded(&dump(&server).await);
    assert_ne!(changed, want);
    server.stop().await.unwrap();
    assert_eq!(clock.now_micros(), at);
    let server = TestServer::start_at(data, log_alone(clock)).await;
    let again = folded(&dump(&server).await);
    assert!(again == changed, "{}", first_difference(&again, &changed));
    server.stop().await.unwrap();
}

/// A dump as text, one line per item three levels deep (a customer's events, a segment): short
/// enough to keep beside the fixture, and a difference names its item.
fn folded(dump: &Dump) -> String {
    let mut out: Vec<String> = Vec::new();
    for line in format!("{dump:#?}").lines() {
        // A family's last moves are cleared by `dump` (memory only); the field itself came after
        // the fixture and is left out of the comparison.
        if line.trim() == "last_moves: []," {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        match out.last_mut() {
            Some(last) if indent >= 12 => {
                last.push_str(line.trim());
                last.push(' ');
            }
            _ => out.push(line.to_string()),
        }
    }
    out.join("\n") + "\n"
}

/// The first line where two dumps differ, around the first character that does.
fn first_difference(got: &str, want: &str) -> String {
    let (got, want): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
    let at = got
        .iter()
        .zip(&want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let (a, b) = (
        got.get(at).copied().unwrap_or(""),
        want.get(at).copied().unwrap_or(""),
    );
    let from = a
        .bytes()
        .zip(b.bytes())
        .position(|(x, y)| x != y)
        .unwrap_or(0)
        .saturating_sub(80);
    let part = |s: &str| s.get(from..).unwrap_or("").chars().take(240).collect::<String>();
    format!(
        "dumps differ at line {} of {} and {}\ngot:    ...{}\nwanted: ...{}",
        at + 1,
        got.len(),
        want.len(),
        part(a),
        part(b)
    )
}

/// Snapshots the server took by itself, written whole (temporary directories aside).
fn snapshots_on_disk(data: &Path) -> usize {
    std::fs::read_dir(data.join("snapshots")).map_or(0, |d| {
        d.flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .count()
    })
}

/// Waits (checks run every 5 s) until `server` has written a snapshot by itself.
async fn first_snapshot_after_writes(server: &TestServer) -> Duration {
    let started = std::time::Instant::now();
    let ids: Vec<String> = (0..2000).map(|n| format!("c{n}")).collect();
    for chunk in ids.chunks(500) {
        upsert(
            server,
            chunk
                .iter()
                .map(|id| customer(id, Some(&format!("{id}@example.com")), &[]))
                .collect(),
        )
        .await;
    }
    while snapshots_on_disk(&server.data) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no snapshot was taken"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_taken_after_enough_log_bytes_and_after_the_interval() {
    let by_bytes = TestServer::start_with(|c| {
        c.snapshot_interval_secs = 0;
        c.snapshot_wal_bytes = 32 * 1024;
    })
    .await;
    let by_time = TestServer::start_with(|c| {
        c.snapshot_interval_secs = 2;
        c.snapshot_wal_bytes = 0;
    })
    .await;
    // Neither trigger set: no snapshot however much is written.
    let never = TestServer::start_with(|c| {
        c.snapshot_interval_secs = 0;
        c.snapshot_wal_bytes = 0;
    })
    .await;
    let (bytes, time, _) = tokio::join!(
        first_snapshot_after_writes(&by_bytes),
        first_snapshot_after_writes(&by_time),
        async {
            let _ = tokio::time::timeout(Duration::from_secs(12), first_snapshot_after_writes(&never)).await;
        }
    );
    assert!(
        time >= Duration::from_secs(2),
        "the interval's snapshot came after {time:?}"
    );
    assert!(bytes < Duration::from_secs(12), "{bytes:?}");
    assert_eq!(snapshots_on_disk(&never.data), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fsync_interval_makes_a_write_durable_within_its_interval() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (server, faults) =
        power_loss_server(&data, FsyncMode::Interval(Duration::from_millis(50)), false).await;
    upsert(&server, vec![customer("synced", None, &[("vip", b(true))])]).await;
    // Five intervals later the sync thread has run; then the power goes.
    tokio::time::sleep(Duration::from_millis(250)).await;
    let cut = faults.power_cut();
    let _ = server.stop().await;
    let server = TestServer::start_at(data, |_| {}).await;
    assert_eq!(
        is_member(&server, "synced", "vips").await,
        (true, true),
        "lost after {cut:?}"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_torn_file_before_the_last_or_a_missing_file_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log_only = |c: &mut segmentd::config::Config| {
        c.no_snapshot_on_shutdown = true;
        c.wal_segment_bytes = 4096;
    };
    let server = TestServer::start_at(data.clone(), log_only).await;
    for n in 0..300 {
        upsert(
            &server,
            vec![customer(
                &format!("c{n}"),
                Some(&format!("c{n}@example.com")),
                &[],
            )],
        )
        .await;
    }
    server.stop().await.unwrap();
    let files: Vec<PathBuf> = wal_files(&data)
        .into_iter()
        .filter(|p| std::fs::metadata(p).unwrap().len() > 24)
        .collect();
    assert!(files.len() >= 3, "{files:?}");
    let middle = &files[1];
    let original = std::fs::read(middle).unwrap();

    // Torn, but followed by another file: records after the tear were acknowledged, so it is
    // damage, not an unfinished append.
    std::fs::write(middle, &original[..original.len() - 5]).unwrap();
    let err = TestServer::spawn_at(data.clone(), log_only)
        .await
        .finished()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(middle.to_str().unwrap()) && err.contains("record cut short"),
        "{err}"
    );

    // Gone altogether: the sequence jumps from one file to the one after.
    std::fs::remove_file(middle).unwrap();
    let err = TestServer::spawn_at(data.clone(), log_only)
        .await
        .finished()
        .await
        .unwrap_err()
        .to_string();
    let next = &files[2];
    let first = |p: &Path| p.file_stem().unwrap().to_str().unwrap().parse::<u64>().unwrap();
    assert!(
        err.contains(next.to_str().unwrap())
            && err.contains(&format!(
                "sequence {} where {} was expected",
                first(next),
                first(middle)
            )),
        "{err}"
    );

    std::fs::write(middle, &original).unwrap();
    let server = TestServer::start_at(data, log_only).await;
    assert_eq!(customer_count(&server).await, 300);
    server.stop().await.unwrap();
}

/// The backup procedure of docs/OPERATIONS.md: the directory `Admin.Snapshot` names, copied while
/// the server runs, restores everything acknowledged up to it; the log files copied after it add
/// the writes acknowledged since.
#[tokio::test]
async fn a_copied_snapshot_restores_and_the_copied_log_adds_what_followed() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_at(dir.path().join("live"), |_| {}).await;
    create(&server, text_segment("vips", "vip")).await.unwrap();
    upsert(
        &server,
        vec![
            customer("before-1", None, &[("vip", b(true))]),
            customer("before-2", None, &[("vip", b(false))]),
        ],
    )
    .await;
    let snap = server
        .admin()
        .await
        .snapshot(pb::SnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    let snapshot_dir = PathBuf::from(&snap.path);
    let name = snapshot_dir.file_name().unwrap().to_owned();
    // The backup: the snapshot's directory, copied while writes go on.
    let only_snapshot = dir.path().join("restored-snapshot");
    copy_dir(&snapshot_dir, &only_snapshot.join("snapshots").join(&name));
    upsert(&server, vec![customer("after", None, &[("vip", b(true))])]).await;
    // And the log since, copied after the snapshot.
    let with_log = dir.path().join("restored-with-log");
    copy_dir(&snapshot_dir, &with_log.join("snapshots").join(&name));
    copy_dir(&server.data.join("wal"), &with_log.join("wal"));
    server.stop().await.unwrap();

    let restored = TestServer::start_at(only_snapshot, |_| {}).await;
    assert_eq!(customer_count(&restored).await, 2);
    assert_eq!(is_member(&restored, "before-1", "vips").await, (true, true));
    assert_eq!(is_member(&restored, "after", "vips").await, (false, false));
    assert_eq!(size(&restored, "vips").await, 1);
    // It takes writes from there on.
    upsert(&restored, vec![customer("new", None, &[("vip", b(true))])]).await;
    assert_eq!(size(&restored, "vips").await, 2);
    restored.stop().await.unwrap();

    let restored = TestServer::start_at(with_log, |_| {}).await;
    assert_eq!(customer_count(&restored).await, 3);
    assert_eq!(is_member(&restored, "after", "vips").await, (true, true));
    assert_eq!(size(&restored, "vips").await, 2);
    restored.stop().await.unwrap();
}
