//! Families and the built-in RFM family against a real server: the partition, moves as one
//! event naming both members, protection of members, quintiles under the tie rule, downgrades
//! between reclassifications, the schedule, and a restart.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use segmentd::api::pb::{self, MembershipCause as C};
use segmentd::time::{ManualClock, days_from_civil};
use tonic::Code;

const DAY: i64 = 86_400;

fn member(id: &str, rule: &str) -> pb::FamilyMember {
    pb::FamilyMember {
        segment_id: id.into(),
        name: id.into(),
        rule_text: rule.into(),
        ..Default::default()
    }
}

fn value_family() -> pb::Family {
    pb::Family {
        family_id: "value".into(),
        name: "Value tiers".into(),
        members: vec![
            member("value.big", "total_spent >= 1000"),
            member("value.mid", "total_spent >= 100"),
        ],
        catch_all: Some(member("value.small", "")),
        ..Default::default()
    }
}

async fn create_family(server: &TestServer, family: pb::Family) -> Result<pb::Family, tonic::Status> {
    Ok(server
        .segments()
        .await
        .create_family(pb::CreateFamilyRequest { family: Some(family) })
        .await?
        .into_inner())
}

async fn families(server: &TestServer) -> Vec<pb::Family> {
    server
        .segments()
        .await
        .list_families(pb::ListFamiliesRequest {})
        .await
        .unwrap()
        .into_inner()
        .families
}

/// Every event after `after` (waits until the stream has nothing more for 300 ms).
async fn events_after(server: &TestServer, after: u64) -> Vec<pb::MembershipEvent> {
    let mut stream = server
        .segments()
        .await
        .watch_memberships(pb::WatchMembershipsRequest {
            from_sequence: after,
            segment_ids: vec![],
            from_latest: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(300), stream.message())
        .await
        .map(|m| m.unwrap())
    {
        out.extend(msg.events);
    }
    out
}

#[tokio::test]
async fn a_family_partitions_customers_and_a_move_is_one_event() {
    let server = TestServer::start().await;
    // c0 spends nothing, c1 150, c2 2000.
    upsert(&server, vec![customer("c0", None, &[])]).await;
    record_orders(
        &server,
        vec![
            order("o1", "c1", 1_700_000_000, 15_000, false, &[]),
            order("o2", "c2", 1_700_000_000, 200_000, false, &[]),
        ],
    )
    .await;
    let f = create_family(&server, value_family()).await.unwrap();
    let sizes: Vec<u64> = f.members.iter().map(|m| m.size).collect();
    assert_eq!(sizes, vec![1, 1]);
    assert_eq!(f.catch_all.as_ref().unwrap().size, 1);
    assert_eq!(is_member(&server, "c2", "value.big").await, (true, true));
    assert_eq!(is_member(&server, "c1", "value.mid").await, (true, true));
    assert_eq!(is_member(&server, "c0", "value.small").await, (true, true));
    // A member is a segment like any other: readable by rules, reporting its family.
    create(
        &server,
        text_segment("big-men", r#"in segment "value.big" and gender = "M""#),
    )
    .await
    .unwrap();
    let got = server
        .segments()
        .await
        .get_segment(pb::GetSegmentRequest {
            segment_id: "value.mid".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.family_id, "value");
    assert!(got.rule_text.contains("not"), "derived rule: {}", got.rule_text);

    // c1 spends 900 more: mid -> big, one event naming both.
    let before = server
        .segments()
        .await
        .watch_memberships(pb::WatchMembershipsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap()
        .events
        .last()
        .unwrap()
        .sequence;
    record_orders(
        &server,
        vec![order("o3", "c1", 1_700_000_100, 90_000, false, &[])],
    )
    .await;
    let moved = events_after(&server, before).await;
    assert_eq!(moved.len(), 1, "{moved:?}");
    let e = &moved[0];
    assert_eq!(
        (
            e.customer_id.as_str(),
            e.segment_id.as_str(),
            e.from_segment_id.as_str(),
            e.entered,
            e.cause()
        ),
        ("c1", "value.big", "value.mid", true, C::Rule)
    );
    // A watcher of the member left sees the move too.
    let mut mid = server
        .segments()
        .await
        .watch_memberships(pb::WatchMembershipsRequest {
            from_sequence: before,
            segment_ids: vec!["value.mid".into()],
            from_latest: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        mid.message().await.unwrap().unwrap().events[0].sequence,
        e.sequence
    );

    // Members follow the family: no direct changes, no activities.
    let err = server
        .segments()
        .await
        .update_segment(pb::UpdateSegmentRequest {
            segment: Some(text_segment("value.mid", "vip")),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("family `value`"), "{}", err.message());
    let err = server
        .segments()
        .await
        .delete_segment(pb::DeleteSegmentRequest {
            segment_id: "value.small".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    // Bad definitions name the field; nothing is created.
    let mut bad = value_family();
    bad.family_id = "other".into();
    bad.members[1].rule_text = String::new();
    let err = create_family(&server, bad).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("family.members[1].rule_text"),
        "{}",
        err.message()
    );
    let mut taken = value_family();
    taken.family_id = "other".into();
    let err = create_family(&server, taken).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(families(&server).await.len(), 1);

    // Deleting: refused while read, then every member leaves.
    let delete = |id: &str| {
        let id = id.to_string();
        let server = &server;
        async move {
            server
                .segments()
                .await
                .delete_family(pb::DeleteFamilyRequest { family_id: id })
                .await
        }
    };
    assert_eq!(
        delete("value").await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    server
        .segments()
        .await
        .delete_segment(pb::DeleteSegmentRequest {
            segment_id: "big-men".into(),
        })
        .await
        .unwrap();
    delete("value").await.unwrap();
    assert!(families(&server).await.is_empty());
    assert_eq!(delete("value").await.unwrap_err().code(), Code::NotFound);
}

/// Waits (up to 10 s) for the RFM family to have been reclassified; returns when (seconds).
async fn reclassified(server: &TestServer) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(f) = families(server).await.into_iter().find(|f| f.family_id == "rfm")
            && let Some(t) = f.reclassified_at
        {
            return t.seconds;
        }
        assert!(Instant::now() < deadline, "no scheduled reclassification");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A score under the tie rule: 1 + floor(5 * (values strictly worse) / n).
fn expected_score(v: i64, all: &[i64]) -> i64 {
    let smaller = all.iter().filter(|&&x| x < v).count() as i64;
    1 + 5 * smaller / all.len() as i64
}

#[tokio::test]
async fn rfm_scores_by_quintiles_places_everyone_once_and_reports_downgrades() {
    let t0 = i64::from(days_from_civil(2026, 6, 1).unwrap()) * DAY;
    let clock = Arc::new(ManualClock::new(t0 * 1_000_000));
    let server = TestServer::start_with(|c| c.clock = Some(clock.clone())).await;
    // 120 customers with orders (ties on purpose: few distinct counts and amounts), 30 without.
    let mut all = Vec::new();
    let mut n = 0;
    for i in 0..120i64 {
        for k in 0..(1 + i % 4) {
            n += 1;
            let at = t0 - (i * 7 % 200) * DAY - k * DAY;
            all.push(order(
                &format!("o{n}"),
                &format!("c{i}"),
                at,
                1000 * (1 + i % 6),
                false,
                &[],
            ));
        }
    }
    record_orders(&server, all).await;
    upsert(
        &server,
        (0..30).map(|i| customer(&format!("n{i}"), None, &[])).collect(),
    )
    .await;
    let r = server
        .segments()
        .await
        .reclassify(pb::ReclassifyRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.scored, 120);
    assert_eq!(r.thresholds.as_ref().unwrap().frequency.len(), 4);

    // Every customer with orders is in exactly one named member; the others in the catch-all.
    let rfm = families(&server)
        .await
        .into_iter()
        .find(|f| f.family_id == "rfm")
        .unwrap();
    assert!(rfm.builtin && rfm.reclassified_at.is_some());
    let named: u64 = rfm.members.iter().map(|m| m.size).sum();
    assert_eq!((named, rfm.catch_all.as_ref().unwrap().size), (120, 30));
    // The first run placed everyone: its moves come from no member, one per member's size.
    assert!(rfm.last_moves.iter().all(|m| m.from_segment_id.is_empty()));
    let placed: BTreeMap<&str, u64> = rfm
        .last_moves
        .iter()
        .map(|m| (m.to_segment_id.as_str(), m.count))
        .collect();
    for m in rfm.members.iter().chain(rfm.catch_all.as_ref()) {
        assert_eq!(
            placed.get(m.segment_id.as_str()).copied().unwrap_or(0),
            m.size,
            "{}",
            m.segment_id
        );
    }
    let mut ingest = server.ingest().await;
    let mut measures: BTreeMap<String, [i64; 3]> = BTreeMap::new();
    let mut scores: BTreeMap<String, [i64; 3]> = BTreeMap::new();
    for i in 0..120 {
        let id = format!("c{i}");
        let c = get(&mut ingest, &id).await.unwrap();
        let int = |name: &str| match c.attributes[name].kind {
            Some(pb::value::Kind::IntValue(v)) => v,
            ref other => panic!("{name}: {other:?}"),
        };
        let last = match &c.attributes["last_order_at"].kind {
            Some(pb::value::Kind::TimestampValue(t)) => t.seconds,
            other => panic!("{other:?}"),
        };
        measures.insert(
            id.clone(),
            [
                -(t0 - last).div_euclid(DAY),
                int("order_count"),
                int("total_spent"),
            ],
        );
        scores.insert(id.clone(), [int("rfm_r"), int("rfm_f"), int("rfm_m")]);
        let memberships = server
            .membership()
            .await
            .get_customer_segments(pb::GetCustomerSegmentsRequest {
                customer_id: id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .segment_ids;
        let in_rfm: Vec<_> = memberships.iter().filter(|s| s.starts_with("rfm.")).collect();
        assert_eq!(in_rfm.len(), 1, "{id}: {memberships:?}");
        assert_ne!(in_rfm[0], "rfm.unscored");
    }
    for m in 0..3 {
        let column: Vec<i64> = measures.values().map(|v| v[m]).collect();
        for (id, v) in &measures {
            assert_eq!(scores[id][m], expected_score(v[m], &column), "{id} measure {m}");
        }
        // Each score holds the customers whose rank falls in its fifth, ties kept whole.
        let per_score: BTreeSet<i64> = scores.values().map(|s| s[m]).collect();
        assert!(per_score.len() >= 3, "scores spread: {per_score:?}");
    }
    // The scores are read-only.
    let err = server
        .ingest()
        .await
        .upsert_customers(pb::UpsertCustomersRequest::new(vec![customer(
            "c1",
            None,
            &[("rfm_r", i(5))],
        )]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // c0 is a champion now; a year without orders while others buy makes it a downgrade.
    let champion = rfm
        .members
        .iter()
        .find(|m| m.segment_id == "rfm.champions")
        .unwrap();
    assert!(champion.size > 0);
    let who = scores
        .iter()
        .find(|(id, _)| {
            let s = &scores[*id];
            s[0] >= 4 && s[1] >= 4 && s[2] >= 4
        })
        .map(|(id, _)| id.clone())
        .expect("a champion");
    let last_seq = events_after(&server, 0).await.last().unwrap().sequence;
    clock.advance(365 * DAY * 1_000_000);
    let others: Vec<pb::Order> = (0..120)
        .filter(|i| format!("c{i}") != who)
        .map(|i| {
            order(
                &format!("late{i}"),
                &format!("c{i}"),
                t0 + 364 * DAY,
                100,
                false,
                &[],
            )
        })
        .collect();
    record_orders(&server, others).await;
    server
        .segments()
        .await
        .reclassify(pb::ReclassifyRequest::default())
        .await
        .unwrap();
    let events = events_after(&server, last_seq).await;
    // The family's last moves are this run's events, counted by (member left, member entered).
    let mut counted: BTreeMap<(String, String), u64> = BTreeMap::new();
    for e in events
        .iter()
        .filter(|e| e.cause() == C::Reclassification && e.entered)
    {
        *counted
            .entry((e.from_segment_id.clone(), e.segment_id.clone()))
            .or_default() += 1;
    }
    let rfm = families(&server)
        .await
        .into_iter()
        .find(|f| f.family_id == "rfm")
        .unwrap();
    let reported: BTreeMap<(String, String), u64> = rfm
        .last_moves
        .iter()
        .map(|m| ((m.from_segment_id.clone(), m.to_segment_id.clone()), m.count))
        .collect();
    assert_eq!(reported, counted);
    assert!(
        rfm.last_moves.windows(2).all(|w| w[0].count >= w[1].count),
        "largest first"
    );
    assert!(reported.keys().any(|(from, _)| from == "rfm.champions"));
    let moves: Vec<_> = events
        .into_iter()
        .filter(|e| e.customer_id == who && e.cause() == C::Reclassification)
        .collect();
    assert_eq!(moves.len(), 1, "{moves:?}");
    assert_eq!(moves[0].from_segment_id, "rfm.champions");
    assert!(moves[0].entered && moves[0].segment_id != "rfm.champions");
}

#[tokio::test]
async fn reclassification_runs_on_its_schedule_and_families_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let t0 = 1_780_000_000i64;
    let clock = Arc::new(ManualClock::new(t0 * 1_000_000));
    let tune = |c: &mut segmentd::config::Config| {
        c.clock = Some(clock.clone());
        c.time_tick_ms = 50;
        c.reclassify_interval_hours = 1;
    };
    // The first stop writes no snapshot, so the first restart reads the log alone.
    let server = TestServer::start_at(data.clone(), |c| {
        tune(c);
        c.no_snapshot_on_shutdown = true;
    })
    .await;
    record_orders(&server, vec![order("o1", "a", t0 - DAY, 500, false, &[])]).await;
    create_family(&server, value_family()).await.unwrap();
    // Nothing before an interval has passed since the tick loop first saw orders. Witnesses
    // show the loop's passes: each applies time flips, then starts a reclassification if one is
    // due. `w0` leaves `recent` at t0 + 5 s: once it is out, a pass at t0 + 10 s has seen the
    // orders, so the schedule's anchor is at most t0 + 10 s. `w2` leaves at t0 + 3,050 s and
    // `w3` at t0 + 3,150 s: once `w3` is out, the pass at t0 + 3,100 s has run whole.
    record_orders(
        &server,
        vec![
            order("w0", "w0", t0 - 90 * DAY + 5, 500, false, &[]),
            order("w2", "w2", t0 - 90 * DAY + 3050, 500, false, &[]),
            order("w3", "w3", t0 - 90 * DAY + 3150, 500, false, &[]),
        ],
    )
    .await;
    create(&server, text_segment("recent", "last_order_at within 90 days"))
        .await
        .unwrap();
    for (id, to) in [("w0", 10), ("w2", 3100), ("w3", 3200)] {
        clock.set((t0 + to) * 1_000_000);
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_member(&server, id, "recent").await.0 {
            assert!(Instant::now() < deadline, "the tick loop did not move {id}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert!(families(&server).await.iter().all(|f| f.family_id != "rfm"));
    // An interval after the latest possible anchor, the run comes.
    clock.set((t0 + 3610) * 1_000_000);
    let first = reclassified(&server).await;
    assert_eq!(first, t0 + 3610);
    clock.advance(3600 * 1_000_000);
    let deadline = Instant::now() + Duration::from_secs(10);
    while reclassified(&server).await == first {
        assert!(Instant::now() < deadline, "no second scheduled run");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = families(&server).await;
    // Once from the log alone, once from a snapshot.
    server.stop().await.unwrap();
    assert!(
        !data.join("snapshots").exists() || std::fs::read_dir(data.join("snapshots")).unwrap().count() == 0
    );
    let server = TestServer::start_at(data.clone(), |c| {
        tune(c);
        c.reclassify_interval_hours = 0;
        c.no_snapshot_on_shutdown = true;
    })
    .await;
    assert_eq!(families(&server).await, before);
    assert_eq!(is_member(&server, "a", "value.small").await, (true, true));
    server.stop().await.unwrap();
    let server = TestServer::start_at(data, |c| {
        tune(c);
        c.reclassify_interval_hours = 0;
    })
    .await;
    server
        .admin()
        .await
        .snapshot(pb::SnapshotRequest {})
        .await
        .unwrap();
    server.stop().await.unwrap();
    let dir_again = dir.path().join("data");
    let server = TestServer::start_at(dir_again, |c| {
        tune(c);
        c.reclassify_interval_hours = 0;
    })
    .await;
    assert_eq!(families(&server).await, before);
    let err = server
        .segments()
        .await
        .delete_family(pb::DeleteFamilyRequest {
            family_id: "rfm".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}
