//! The membership event stream against a real server: causes, order, resuming without gaps or
//! duplicates across a restart, retention, history, and a stalled watcher.

use std::time::{Duration, Instant};

use crate::common::*;
use segmentd::api::pb::{self, MembershipCause as C};
use tonic::Code;

type Stream = tonic::Streaming<pb::WatchMembershipsResponse>;

async fn watch(server: &TestServer, from: u64, segments: &[&str]) -> Result<Stream, tonic::Status> {
    Ok(server
        .segments()
        .await
        .watch_memberships(pb::WatchMembershipsRequest {
            from_sequence: from,
            segment_ids: segments.iter().map(|s| s.to_string()).collect(),
            from_latest: false,
        })
        .await?
        .into_inner())
}

/// Reads events until `n` have arrived (within 10 s).
async fn take(stream: &mut Stream, n: usize) -> Vec<pb::MembershipEvent> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while out.len() < n {
        let msg = tokio::time::timeout_at(deadline.into(), stream.message())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} events arrived: {out:?}", out.len()))
            .expect("stream ok")
            .expect("stream open");
        out.extend(msg.events);
    }
    out
}

/// (segment, customer, entered, cause) of each event.
fn brief(events: &[pb::MembershipEvent]) -> Vec<(String, String, bool, C)> {
    events
        .iter()
        .map(|e| (e.segment_id.clone(), e.customer_id.clone(), e.entered, e.cause()))
        .collect()
}

fn ev(segment: &str, customer: &str, entered: bool, cause: C) -> (String, String, bool, C) {
    (segment.into(), customer.into(), entered, cause)
}

fn assert_contiguous(events: &[pb::MembershipEvent], first: u64) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.sequence,
            first + i as u64,
            "sequences run without gaps: {events:?}"
        );
    }
}

#[tokio::test]
async fn every_change_is_an_event_with_its_cause() {
    let server = TestServer::start().await;
    upsert(
        &server,
        vec![
            customer(
                "c1",
                Some("c1@example.com"),
                &[("gender", s("M")), ("account_id", s("acme"))],
            ),
            customer("c2", None, &[("gender", s("F"))]),
        ],
    )
    .await;
    let mut stream = watch(&server, 0, &[]).await.unwrap();
    create(&server, text_segment("men", r#"gender = "M""#))
        .await
        .unwrap();
    let mut golfers = text_segment("golfers", "");
    golfers.allow_activities = true;
    golfers.include_account_ids = vec!["acme".into()];
    create(&server, golfers).await.unwrap();
    // The rule: c2 becomes a man.
    upsert(&server, vec![customer("c2", None, &[("gender", s("M"))])]).await;
    // A marketing activity, then a member load.
    server
        .activities()
        .await
        .add_to_segment(pb::AddToSegmentRequest {
            segment_id: "golfers".into(),
            customer_ids: vec!["c2".into()],
            activity_id: "mail-7".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    server
        .ingest()
        .await
        .load_segment_members(tokio_stream::iter([pb::LoadSegmentMembersRequest {
            segment_id: "golfers".into(),
            emails: vec!["c1@example.com".into()],
            mode: pb::MemberMode::Exclude as i32,
            ..Default::default()
        }]))
        .await
        .unwrap();
    // An exclude list through UpdateSegment, then the erasure of c2.
    server
        .segments()
        .await
        .update_segment(pb::UpdateSegmentRequest {
            segment: Some(pb::Segment {
                segment_id: "men".into(),
                exclude_customer_ids: vec!["c1".into()],
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["exclude_customer_ids".into()],
            }),
        })
        .await
        .unwrap();
    server
        .ingest()
        .await
        .delete_customer(delete_id("c2"))
        .await
        .unwrap();

    let events = take(&mut stream, 8).await;
    assert_contiguous(&events, 1);
    assert_eq!(
        brief(&events),
        vec![
            ev("men", "c1", true, C::Rule),
            ev("golfers", "c1", true, C::Account),
            ev("men", "c2", true, C::Rule),
            ev("golfers", "c2", true, C::Activity),
            ev("golfers", "c1", false, C::MemberLoad),
            ev("men", "c1", false, C::Exclude),
            ev("men", "c2", false, C::Deletion),
            ev("golfers", "c2", false, C::Deletion),
        ]
    );
    assert_eq!(events[3].activity_id, "mail-7");
    assert!(events.iter().all(|e| e.time.is_some()));

    // History: the erased c2 still has its retained history, by segment or all of it.
    let history = |customer: &str, segment: &str| {
        let server = &server;
        let (customer, segment) = (customer.to_string(), segment.to_string());
        async move {
            server
                .segments()
                .await
                .get_membership_history(pb::GetMembershipHistoryRequest {
                    customer_id: customer,
                    segment_id: segment,
                })
                .await
        }
    };
    let h = history("c2", "golfers").await.unwrap().into_inner();
    assert_eq!(
        brief(&h.events),
        vec![
            ev("golfers", "c2", true, C::Activity),
            ev("golfers", "c2", false, C::Deletion)
        ]
    );
    assert_eq!(h.oldest_retained_sequence, 1);
    assert_eq!(history("c1", "").await.unwrap().into_inner().events.len(), 4);
    assert_eq!(history("nobody", "").await.unwrap_err().code(), Code::NotFound);
    assert_eq!(history("c1", "no-such").await.unwrap_err().code(), Code::NotFound);
    let bad = history("", "").await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("customer_id"), "{}", bad.message());

    // A filtered watch from the start sees only its segment's events.
    let mut men = watch(&server, 0, &["men"]).await.unwrap();
    let only = take(&mut men, 4).await;
    assert_eq!(
        only.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        vec![1, 3, 6, 7]
    );
}

#[tokio::test]
async fn resuming_from_the_last_sequence_has_no_gaps_or_duplicates_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start_at(data.clone(), |c| c.fsync = segmentd::wal::FsyncMode::Always).await;
    create(&server, text_segment("vip", "vip")).await.unwrap();
    let batch = |from: usize, to: usize, vip: bool| {
        (from..to)
            .map(|i| customer(&format!("c{i}"), None, &[("vip", b(vip))]))
            .collect::<Vec<_>>()
    };
    upsert(&server, batch(0, 50, true)).await;
    let mut stream = watch(&server, 0, &[]).await.unwrap();
    let first = take(&mut stream, 30).await;
    let last_seen = first[29].sequence;
    drop(stream);
    upsert(&server, batch(0, 20, false)).await;
    // A snapshot in between: its cut must not lose events the log covered.
    server
        .admin()
        .await
        .snapshot(pb::SnapshotRequest {})
        .await
        .unwrap();
    upsert(&server, batch(50, 60, true)).await;
    server.stop().await.unwrap();

    let server = TestServer::start_at(data.clone(), |_| {}).await;
    upsert(&server, batch(60, 65, true)).await;
    let mut stream = watch(&server, last_seen, &[]).await.unwrap();
    let rest = take(&mut stream, 50 - 30 + 20 + 10 + 5).await;
    assert_contiguous(&rest, last_seen + 1);
    let mut all = first[..30].to_vec();
    all.extend(rest);
    // Folding every event gives exactly the current members.
    let mut members = std::collections::BTreeSet::new();
    for e in &all {
        assert_eq!(
            members.insert(e.customer_id.clone()),
            e.entered,
            "{e:?} repeats the state"
        );
        if !e.entered {
            members.remove(&e.customer_id);
        }
    }
    assert_eq!(members.len() as u64, size(&server, "vip").await);
    assert_eq!(members.len(), 50 - 20 + 10 + 5);
    // Nothing more is waiting.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.message())
            .await
            .is_err()
    );
    drop(dir);
}

#[tokio::test]
async fn a_sequence_past_retention_is_out_of_range_naming_the_oldest() {
    let server = TestServer::start_with(|c| c.event_retention_events = 10).await;
    create(&server, text_segment("vip", "vip")).await.unwrap();
    let many: Vec<_> = (0..25)
        .map(|i| customer(&format!("c{i}"), None, &[("vip", b(true))]))
        .collect();
    upsert(&server, many).await;
    let err = watch(&server, 3, &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    assert!(
        err.message().contains("oldest retained is 16"),
        "{}",
        err.message()
    );
    let err = watch(&server, 99, &[]).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);
    // From 0: everything retained; from just before the oldest: the same.
    let mut all = watch(&server, 0, &[]).await.unwrap();
    assert_eq!(take(&mut all, 10).await[0].sequence, 16);
    let mut edge = watch(&server, 15, &[]).await.unwrap();
    assert_eq!(take(&mut edge, 10).await[9].sequence, 25);
    let bad = watch(&server, 0, &["not valid!"]).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().contains("segment_ids[0]"), "{}", bad.message());
}

/// Writes `rounds` flips of `n` customers between in and out of `vip` (2·n events a round) and
/// returns how long they took.
async fn flip(server: &TestServer, n: usize, rounds: usize) -> Duration {
    let started = Instant::now();
    for r in 0..rounds {
        let batch: Vec<_> = (0..n)
            .map(|i| customer(&format!("c{i}"), None, &[("vip", b(r % 2 == 0))]))
            .collect();
        upsert(server, batch).await;
    }
    started.elapsed()
}

#[tokio::test]
async fn a_stalled_watcher_does_not_slow_writers_and_resumes_without_gaps() {
    let server = TestServer::start().await;
    create(&server, text_segment("vip", "vip")).await.unwrap();
    // Warm up, then time writes with nobody watching.
    flip(&server, 5000, 2).await;
    let alone = flip(&server, 5000, 20).await;
    // A watcher that reads one message and stops; the writes make far more events than its
    // buffer and the HTTP/2 window hold (100,000 events, several MB).
    let mut stalled = watch(&server, 0, &[]).await.unwrap();
    let first = stalled.message().await.unwrap().unwrap();
    let watched = flip(&server, 5000, 20).await;
    assert!(
        watched < alone * 3 + Duration::from_secs(1),
        "writes took {watched:?} with a stalled watcher, {alone:?} without"
    );
    // Reading again, it gets every event in order.
    let total = 5000 * 42;
    let mut got = first.events;
    got.extend(take(&mut stalled, total - got.len()).await);
    assert_eq!(got.len(), total);
    assert_contiguous(&got, 1);
}

#[tokio::test]
async fn time_moves_customers_in_and_out_with_time_events() {
    use segmentd::time::{Clock, ManualClock, days_from_civil};
    const DAY: i64 = 86_400;
    // 2026-03-10 12:00 UTC.
    let t0 = i64::from(days_from_civil(2026, 3, 10).unwrap()) * DAY + 12 * 3600;
    let clock = std::sync::Arc::new(ManualClock::new(t0 * 1_000_000));
    let server = TestServer::start_with(|c| {
        c.clock = Some(clock.clone());
        c.time_tick_ms = 50;
    })
    .await;
    // c1 last ordered 89 days ago; c2's birthday is in 3 days.
    server
        .ingest()
        .await
        .record_orders(pb::RecordOrdersRequest {
            orders: vec![order("o1", "c1", t0 - 89 * DAY, 5000, false, &[])],
        })
        .await
        .unwrap();
    upsert(
        &server,
        vec![customer("c2", None, &[("birth_date", date(1990, 3, 13))])],
    )
    .await;
    create(&server, text_segment("recent", "last_order_at within 90 days"))
        .await
        .unwrap();
    create(&server, text_segment("birthday", "birthday within 2 days"))
        .await
        .unwrap();
    assert_eq!(is_member(&server, "c1", "recent").await, (true, true));
    assert_eq!(is_member(&server, "c2", "birthday").await, (false, true));
    let mut stream = watch(&server, 0, &[]).await.unwrap();
    assert_eq!(
        brief(&take(&mut stream, 1).await),
        vec![ev("recent", "c1", true, C::Rule)]
    );

    // Day 90 passes for c1; c2's birthday comes within 2 days.
    clock.advance((DAY + 1) * 1_000_000);
    let moved = take(&mut stream, 2).await;
    assert_eq!(
        brief(&moved),
        vec![
            ev("recent", "c1", false, C::Time),
            ev("birthday", "c2", true, C::Time)
        ]
    );
    assert!(moved.iter().all(|e| e.time.as_ref().unwrap().seconds >= t0 + DAY));
    assert_eq!(is_member(&server, "c1", "recent").await, (false, true));
    assert_eq!(is_member(&server, "c2", "birthday").await, (true, true));

    // The birthday passes: the window closes.
    clock.advance(3 * DAY * 1_000_000);
    let closed = take(&mut stream, 1).await;
    assert_eq!(brief(&closed), vec![ev("birthday", "c2", false, C::Time)]);
    assert_eq!(is_member(&server, "c2", "birthday").await, (false, true));
    // The exit is stamped with the server's clock of the flip: after the entries, by the time the
    // clock now shows.
    let at = closed[0].time.as_ref().unwrap().seconds;
    let entered = moved
        .iter()
        .map(|e| e.time.as_ref().unwrap().seconds)
        .max()
        .unwrap();
    assert!(
        entered < at && at <= clock.now_micros() / 1_000_000,
        "entered {entered}, left {at}, clock {}",
        clock.now_micros() / 1_000_000
    );
}

#[tokio::test]
async fn a_watcher_that_stops_reading_is_told_where_to_resume() {
    let server = TestServer::start_with(|c| c.watch_stall_secs = 1).await;
    create(&server, text_segment("vip", "vip")).await.unwrap();
    let mut stalled = watch(&server, 0, &[]).await.unwrap();
    // 100,000 events: far more than the watcher's buffer and HTTP/2 window hold.
    flip(&server, 5000, 20).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Reading again: what was buffered, in order, then ABORTED naming the last sequence read.
    let mut last = 0;
    let err = loop {
        match stalled.message().await {
            Ok(Some(m)) => {
                for e in &m.events {
                    assert_eq!(e.sequence, last + 1);
                    last = e.sequence;
                }
            }
            Ok(None) => panic!("the stream ended without saying where to resume"),
            Err(status) => break status,
        }
    };
    assert_eq!(err.code(), Code::Aborted);
    assert!(
        err.message()
            .contains(&format!("resume with from_sequence {last}")),
        "{} (last read {last})",
        err.message()
    );
    assert!(last < 100_000, "the server kept a bounded buffer ({last} events)");
    let mut resumed = watch(&server, last, &[]).await.unwrap();
    assert_eq!(take(&mut resumed, 1).await[0].sequence, last + 1);
}

/// A failed event log write is retried, not given up: the batches wait in memory, snapshots wait
/// for them (refused with UNAVAILABLE meanwhile, then taken), the failures are counted, and
/// after a restart from a snapshot that covers them, every event is still there.
#[tokio::test]
async fn event_log_write_failures_are_retried_and_snapshots_resume() {
    let faults = std::sync::Arc::new(segmentd::faults::Faults::default());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let metrics_addr = free_local_addr();
    let f = faults.clone();
    let server = TestServer::start_at(data.clone(), move |c| {
        c.faults = Some(f);
        c.metrics_addr = Some(metrics_addr);
        c.no_snapshot_on_shutdown = true;
    })
    .await;
    create(&server, text_segment("vips", "vip")).await.unwrap();
    upsert(&server, vec![customer("a", None, &[("vip", b(true))])]).await;
    // Three attempts fail: the write of b's event, then two snapshots' retries.
    faults.fail_event_writes(3);
    upsert(&server, vec![customer("b", None, &[("vip", b(true))])]).await;
    upsert(&server, vec![customer("c", None, &[("vip", b(true))])]).await;
    let m = scrape(metrics_addr).await;
    assert_eq!(m["segmentd_event_log_failing"], 1.0);
    let mut admin = server.admin().await;
    for _ in 0..2 {
        let err = admin.snapshot(pb::SnapshotRequest {}).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{}", err.message());
        assert!(err.message().contains("event log"), "{}", err.message());
    }
    admin.snapshot(pb::SnapshotRequest {}).await.unwrap();
    let m = scrape(metrics_addr).await;
    assert_eq!(m["segmentd_event_log_write_failures_total"], 3.0);
    assert_eq!(m["segmentd_event_log_failing"], 0.0);
    upsert(&server, vec![customer("d", None, &[("vip", b(true))])]).await;
    server.stop().await.unwrap();

    let server = TestServer::start_at(data, |_| {}).await;
    let mut stream = watch(&server, 0, &[]).await.unwrap();
    let events = take(&mut stream, 4).await;
    assert_contiguous(&events, 1);
    assert_eq!(
        brief(&events),
        ["a", "b", "c", "d"].map(|c| ev("vips", c, true, C::Rule))
    );
    server.stop().await.unwrap();
}

/// Positions at the edges answer cleanly: past the end (up to 2^64-1) is OUT_OF_RANGE naming the
/// last sequence, the last sequence itself waits for what comes next, and 0 and 1 start at the
/// oldest retained.
#[tokio::test]
async fn watching_from_edge_positions_answers_cleanly() {
    let server = TestServer::start().await;
    create(&server, text_segment("vips", "vip")).await.unwrap();
    upsert(&server, vec![customer("a", None, &[("vip", b(true))])]).await;
    for from in [u64::MAX, u64::MAX - 1, 1 << 63, 2] {
        let err = match watch(&server, from, &[]).await {
            Err(status) => status,
            Ok(mut stream) => stream.message().await.unwrap_err(),
        };
        assert_eq!(err.code(), Code::OutOfRange, "{from}: {}", err.message());
        assert!(err.message().contains('1'), "{from}: {}", err.message());
    }
    for from in [0, 1] {
        let mut stream = watch(&server, from, &[]).await.unwrap();
        upsert(
            &server,
            vec![customer(&format!("b{from}"), None, &[("vip", b(true))])],
        )
        .await;
        // From 0: a, then b0. From 1 (after a): b0, then b1.
        let events = take(&mut stream, 2).await;
        assert_eq!(events[0].sequence, from + 1);
        assert_eq!(events[1].customer_id, format!("b{from}"));
    }
}

/// Activity ids are kept as long as a retained event names them: thousands of distinct ones
/// under a small retention leave the event log's memory bounded, and the retained events still
/// name their activities, before and after a restart.
#[tokio::test]
async fn activity_ids_are_forgotten_with_the_events_that_named_them() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tune = |c: &mut segmentd::config::Config| c.event_retention_events = 100;
    let server = TestServer::start_at(data.clone(), tune).await;
    upsert(&server, vec![customer("c1", None, &[])]).await;
    let mut golfers = text_segment("golfers", "");
    golfers.allow_activities = true;
    create(&server, golfers).await.unwrap();
    let event_log_bytes = |s: pb::StatsResponse| {
        s.memory
            .iter()
            .find(|m| m.name == "event_log")
            .map_or(0, |m| m.bytes)
    };
    let mut activities = server.activities().await;
    let mut after_first = 0;
    for k in 0..3_000 {
        let request = pb::AddToSegmentRequest {
            segment_id: "golfers".into(),
            customer_ids: vec!["c1".into()],
            activity_id: format!("campaign-{k:05}-{}", "x".repeat(40)),
            ..Default::default()
        };
        activities.add_to_segment(request).await.unwrap();
        activities
            .remove_from_segment(pb::RemoveFromSegmentRequest {
                segment_id: "golfers".into(),
                customer_ids: vec!["c1".into()],
                activity_id: format!("campaign-{k:05}-{}", "x".repeat(40)),
                ..Default::default()
            })
            .await
            .unwrap();
        if k == 499 {
            after_first = event_log_bytes(stats(&server).await);
        }
    }
    let bytes = event_log_bytes(stats(&server).await);
    // 2,500 more distinct ids (about 90 bytes each with their entry) did not add up.
    assert!(bytes < after_first + 100_000, "{after_first} -> {bytes}");
    let check = |events: Vec<pb::MembershipEvent>| {
        assert_eq!(events.len(), 100);
        for e in &events {
            let k: usize = e.activity_id.get(9..14).unwrap().parse().unwrap();
            assert!(k >= 2_950, "{e:?}");
        }
    };
    let mut stream = watch(&server, 0, &[]).await.unwrap();
    check(take(&mut stream, 100).await);
    drop(stream);
    server.stop().await.unwrap();
    let server = TestServer::start_at(data, tune).await;
    let mut stream = watch(&server, 0, &[]).await.unwrap();
    check(take(&mut stream, 100).await);
}

#[tokio::test]
async fn events_older_than_the_retention_age_are_dropped_and_stay_dropped_after_a_restart() {
    use segmentd::time::ManualClock;
    const DAY: i64 = 86_400;
    let clock = std::sync::Arc::new(ManualClock::new(1_780_000_000 * 1_000_000));
    let tune = |c: &mut segmentd::config::Config| {
        c.clock = Some(clock.clone());
        c.event_retention_secs = DAY as u64;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start_at(data.clone(), tune).await;
    create(&server, text_segment("vips", "vip")).await.unwrap();
    upsert(&server, vec![customer("old", None, &[("vip", b(true))])]).await;
    clock.advance(2 * DAY * 1_000_000);
    upsert(&server, vec![customer("new", None, &[("vip", b(true))])]).await;
    let mut segs = server.segments().await;
    let history = |id: &str| pb::GetMembershipHistoryRequest {
        customer_id: id.into(),
        segment_id: String::new(),
    };
    let old = segs
        .get_membership_history(history("old"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        old.events.is_empty() && old.oldest_retained_sequence == 2,
        "{old:?}"
    );
    let new = segs
        .get_membership_history(history("new"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(new.events.iter().map(|e| e.sequence).collect::<Vec<_>>(), vec![2]);
    server.stop().await.unwrap();
    // After a restart the dropped events do not come back from the log.
    let server = TestServer::start_at(data, tune).await;
    let mut segs = server.segments().await;
    let old = segs
        .get_membership_history(history("old"))
        .await
        .unwrap()
        .into_inner();
    assert!(
        old.events.is_empty() && old.oldest_retained_sequence == 2,
        "{old:?}"
    );
}

#[tokio::test]
async fn a_filtered_watch_reports_its_position_alone_and_shutdown_ends_it_naming_where_to_resume() {
    let server = TestServer::start().await;
    create(&server, text_segment("vips", "vip")).await.unwrap();
    create(&server, text_segment("women", r#"gender = "F""#))
        .await
        .unwrap();
    let mut stream = watch(&server, 0, &["women"]).await.unwrap();
    // Three events, none in `women`: the watcher hears only how far it has got.
    upsert(
        &server,
        (0..3)
            .map(|n| customer(&format!("m{n}"), None, &[("vip", b(true)), ("gender", s("M"))]))
            .collect(),
    )
    .await;
    let position = loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("a position report")
            .unwrap()
            .unwrap();
        assert!(msg.events.is_empty(), "filtered out: {msg:?}");
        if msg.last_sequence == 3 {
            break msg.last_sequence;
        }
    };
    // One event it wants, then shutdown: it ends UNAVAILABLE naming the sequence to resume from.
    upsert(&server, vec![customer("w", None, &[("gender", s("F"))])]).await;
    let got = take(&mut stream, 1).await;
    assert_eq!(
        (got[0].sequence, got[0].customer_id.as_str()),
        (position + 1, "w")
    );
    let stop = tokio::spawn(server.stop());
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("the stream ends")
        {
            Ok(Some(msg)) => assert!(msg.events.is_empty(), "{msg:?}"),
            Ok(None) => panic!("the stream ended without saying where to resume"),
            Err(status) => break status,
        }
    };
    assert_eq!(end.code(), tonic::Code::Unavailable, "{end:?}");
    assert!(
        end.message()
            .ends_with(&format!("resume with from_sequence {}", position + 1)),
        "{end:?}"
    );
    stop.await.unwrap().unwrap();
}

#[tokio::test]
async fn time_that_passed_while_down_moves_members_at_recovery_and_a_flip_lands_within_the_tick() {
    use segmentd::time::ManualClock;
    const DAY: i64 = 86_400;
    let t0 = 1_780_000_000i64;
    let clock = std::sync::Arc::new(ManualClock::new(t0 * 1_000_000));
    let tune = |c: &mut segmentd::config::Config| {
        c.clock = Some(clock.clone());
        c.time_tick_ms = 100;
        c.no_snapshot_on_shutdown = true;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = TestServer::start_at(data.clone(), tune).await;
    let orders = vec![
        order("o1", "soon", t0 - 89 * DAY, 100, false, &[]),
        order("o2", "later", t0 - 80 * DAY, 100, false, &[]),
    ];
    record_orders(&server, orders).await;
    create(&server, text_segment("recent", "last_order_at within 90 days"))
        .await
        .unwrap();
    assert_eq!(size(&server, "recent").await, 2);
    server.stop().await.unwrap();

    // Two days pass while the server is down: `soon` is out as soon as it serves again.
    clock.advance(2 * DAY * 1_000_000);
    let server = TestServer::start_at(data, tune).await;
    assert_eq!(is_member(&server, "soon", "recent").await, (false, true));
    assert_eq!(is_member(&server, "later", "recent").await, (true, true));
    let mut stream = watch(&server, 0, &["recent"]).await.unwrap();
    let events = take(&mut stream, 3).await;
    assert_eq!(
        brief(&events[2..]),
        vec![ev("recent", "soon", false, C::Time)],
        "the exit is an event like any other"
    );
    // Running: a flip is applied at the next tick (100 ms), not later.
    clock.advance(9 * DAY * 1_000_000);
    let started = Instant::now();
    let flipped = take(&mut stream, 1).await;
    assert_eq!(brief(&flipped), vec![ev("recent", "later", false, C::Time)]);
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
    server.stop().await.unwrap();
}
