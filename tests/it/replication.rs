//! `Replication.Follow` against a real server: a follower that applies the stream as a replica
//! would (a model kept here) answers as the server does, for every customer and segment, after
//! every kind of write, a server restart, a dropped connection and a fall out of the buffer.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use roaring::RoaringBitmap;
use segmentd::api::pb::{self, follow_response::Message, replication_client::ReplicationClient};
use tokio_stream::StreamExt;

use crate::common::*;
use crate::durability::{
    Change, EVERY_CHANGE, log_alone, log_alone_following, replay_base, replay_clock, replay_ids, write_change,
};

/// A replica as the stream describes it.
#[derive(Debug, Default)]
struct Replica {
    epoch: u64,
    sequence: u64,
    by_id: HashMap<String, u32>,
    by_ord: HashMap<u32, String>,
    segments: BTreeMap<String, RoaringBitmap>,
    in_snapshot: bool,
    /// Parts of a write sent as several messages, applied together.
    parts: Vec<pb::Changes>,
    snapshots: usize,
    heartbeats: usize,
    /// Why the stream ended, if it did.
    ended: Option<String>,
}

impl Replica {
    fn apply(&mut self, m: pb::FollowResponse) {
        match m.message.expect("a message") {
            Message::SnapshotStart(s) => {
                *self = Replica {
                    epoch: s.epoch,
                    sequence: s.sequence,
                    segments: s
                        .segment_ids
                        .into_iter()
                        .map(|id| (id, RoaringBitmap::new()))
                        .collect(),
                    in_snapshot: true,
                    snapshots: self.snapshots + 1,
                    heartbeats: self.heartbeats,
                    ..Replica::default()
                };
            }
            Message::SnapshotCustomers(c) => {
                assert!(self.in_snapshot);
                assert_eq!(c.ordinals.len(), c.id_lengths.len());
                let mut ids = Vec::new();
                let mut at = 0;
                for len in &c.id_lengths {
                    let end = at + *len as usize;
                    ids.push(String::from_utf8(c.customer_ids[at..end].to_vec()).expect("UTF-8 ids"));
                    at = end;
                }
                assert_eq!(at, c.customer_ids.len(), "lengths cover the ids");
                for (ord, id) in c.ordinals.into_iter().zip(ids) {
                    assert!(
                        self.by_ord.insert(ord, id.clone()).is_none(),
                        "ordinal {ord} twice"
                    );
                    self.by_id.insert(id, ord);
                }
            }
            Message::SnapshotMembers(m) => {
                assert!(self.in_snapshot);
                let part = RoaringBitmap::deserialize_from(&m.members[..]).expect("portable roaring");
                *self.segments.get_mut(&m.segment_id).expect("a followed segment") |= part;
            }
            Message::SnapshotEnd(e) => {
                assert!(self.in_snapshot);
                assert_eq!((e.epoch, e.sequence), (self.epoch, self.sequence));
                self.in_snapshot = false;
            }
            Message::Changes(c) => {
                assert!(!self.in_snapshot, "changes inside a snapshot");
                assert_eq!(c.epoch, self.epoch);
                assert_eq!(c.sequence, self.sequence + 1, "a gap or a repeat");
                let continued = c.continued;
                self.parts.push(c);
                if !continued {
                    for part in std::mem::take(&mut self.parts) {
                        self.apply_changes(part);
                    }
                    self.sequence += 1;
                }
            }
            Message::Heartbeat(h) => {
                assert!(self.parts.is_empty() && !self.in_snapshot);
                assert_eq!((h.epoch, h.sequence), (self.epoch, self.sequence));
                self.heartbeats += 1;
            }
        }
    }

    fn apply_changes(&mut self, c: pb::Changes) {
        assert_eq!(c.sequence, self.sequence + 1);
        for ord in c.erased {
            let id = self.by_ord.remove(&ord).expect("an erased customer was known");
            self.by_id.remove(&id);
            for members in self.segments.values_mut() {
                members.remove(ord);
            }
        }
        for (ord, id) in c.created.into_iter().zip(c.created_customer_ids) {
            assert!(
                !self.by_ord.contains_key(&ord),
                "position {ord} given while taken"
            );
            assert!(self.by_id.insert(id.clone(), ord).is_none(), "{id} created twice");
            self.by_ord.insert(ord, id);
        }
        if c.segment_ids_changed {
            for id in &c.segment_ids {
                self.segments.entry(id.clone()).or_default();
            }
        }
        for s in c.segments {
            let members = self
                .segments
                .get_mut(&s.segment_id)
                .unwrap_or_else(|| panic!("changes for `{}`, not followed", s.segment_id));
            for ord in s.exited {
                members.remove(ord);
            }
            for ord in s.entered {
                assert!(
                    self.by_ord.contains_key(&ord),
                    "{ord} entered `{}` unknown",
                    s.segment_id
                );
                members.insert(ord);
            }
        }
        if c.segment_ids_changed {
            self.segments.retain(|id, _| c.segment_ids.contains(id));
        }
    }

    /// `(member, known)` as the replica would answer.
    fn check(&self, customer: &str, segment: &str) -> (bool, bool) {
        match self.by_id.get(customer) {
            Some(&ord) => (self.segments[segment].contains(ord), true),
            None => (false, false),
        }
    }
}

/// A follower applying a stream to its replica in the background.
struct Follower {
    replica: Arc<Mutex<Replica>>,
    task: tokio::task::JoinHandle<()>,
}

impl Follower {
    async fn start(server: &TestServer, segments: &[&str]) -> Follower {
        Self::resume(server, segments, Arc::default()).await
    }

    /// Follows from where `replica` stands (its epoch and sequence; none: a fresh start).
    async fn resume(server: &TestServer, segments: &[&str], replica: Arc<Mutex<Replica>>) -> Follower {
        let (epoch, after_sequence) = {
            let mut r = replica.lock();
            r.ended = None;
            (r.epoch, r.sequence)
        };
        let mut stream = ReplicationClient::new(server.channel().await)
            .follow(pb::FollowRequest {
                segment_ids: segments.iter().map(|s| s.to_string()).collect(),
                epoch,
                after_sequence,
                heartbeat_millis: 10,
            })
            .await
            .expect("Follow")
            .into_inner();
        let r = replica.clone();
        let task = tokio::spawn(async move {
            loop {
                match stream.next().await {
                    Some(Ok(m)) => r.lock().apply(m),
                    Some(Err(e)) => {
                        r.lock().ended = Some(format!("{:?}: {}", e.code(), e.message()));
                        return;
                    }
                    None => {
                        r.lock().ended = Some("end of stream".into());
                        return;
                    }
                }
            }
        });
        Follower { replica, task }
    }

    /// Drops the connection; the replica stays as it was.
    fn drop_connection(self) -> Arc<Mutex<Replica>> {
        self.task.abort();
        self.replica
    }
}

/// Every segment the server defines.
async fn server_segments(server: &TestServer) -> Vec<String> {
    let mut ids: Vec<String> = server
        .segments()
        .await
        .list_segments(pb::ListSegmentsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .segments
        .into_iter()
        .map(|s| s.segment_id)
        .collect();
    ids.sort();
    ids
}

/// The differences between the server's answers and the replica's, for `customers` against
/// the replica's segments (which must be `expected`, or every segment when `None`).
async fn differences(
    server: &TestServer,
    replica: &Mutex<Replica>,
    customers: &[String],
    expected: Option<&[&str]>,
) -> Vec<String> {
    let segments = match expected {
        Some(ids) => ids.iter().map(|s| s.to_string()).collect(),
        None => server_segments(server).await,
    };
    let answer = server
        .membership()
        .await
        .batch_check_memberships(pb::BatchCheckMembershipsRequest {
            customer_ids: customers.to_vec(),
            segment_ids: segments.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let r = replica.lock();
    let mut diffs = Vec::new();
    let followed: Vec<&String> = r.segments.keys().collect();
    if followed != segments.iter().collect::<Vec<_>>() {
        diffs.push(format!("segments: replica {followed:?}, server {segments:?}"));
        return diffs;
    }
    if r.in_snapshot || !r.parts.is_empty() {
        diffs.push("mid-write".into());
        return diffs;
    }
    for (i, customer) in customers.iter().enumerate() {
        for (j, segment) in segments.iter().enumerate() {
            let server = (answer.member[i * segments.len() + j], answer.known_customer[i]);
            let ours = r.check(customer, segment);
            if ours != server {
                diffs.push(format!(
                    "{customer} in {segment}: replica {ours:?}, server {server:?}"
                ));
            }
        }
    }
    diffs
}

/// Waits until the replica answers as the server does (the server being quiet).
async fn agrees(
    server: &TestServer,
    replica: &Mutex<Replica>,
    customers: &[String],
    expected: Option<&[&str]>,
    when: &str,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let diffs = differences(server, replica, customers, expected).await;
        if diffs.is_empty() {
            return;
        }
        if let Some(why) = &replica.lock().ended {
            panic!("{when}: the stream ended ({why}) with {diffs:?}");
        }
        assert!(std::time::Instant::now() < deadline, "{when}: {diffs:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every kind of write while two replicas follow (every segment; two named ones): after each,
/// once quiet, both answer as the server does for every customer, including the erased and the
/// never seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_agree_with_the_server_after_every_kind_of_write() {
    let (t0, clock) = replay_clock();
    let server = TestServer::start_with(log_alone(clock.clone())).await;
    let mut customers = replay_ids();
    customers.push("never-seen".into());
    // A replica from an empty server, and one taken after the base.
    let all = Follower::start(&server, &[]).await;
    replay_base(&server, t0).await;
    let named = Follower::start(&server, &["vips", "recent"]).await;
    agrees(&server, &all.replica, &customers, None, "base").await;
    agrees(
        &server,
        &named.replica,
        &customers,
        Some(&["recent", "vips"]),
        "base",
    )
    .await;
    for change in EVERY_CHANGE {
        write_change(&server, change, &clock, t0).await;
        let when = format!("{change:?}");
        agrees(&server, &all.replica, &customers, None, &when).await;
        agrees(
            &server,
            &named.replica,
            &customers,
            Some(&["recent", "vips"]),
            &when,
        )
        .await;
    }
    for f in [&all, &named] {
        let r = f.replica.lock();
        assert_eq!(r.snapshots, 1, "one snapshot, then changes alone");
        assert!(r.heartbeats > 0);
    }
    // A followed segment deleted: no longer followed, the others go on.
    server
        .segments()
        .await
        .delete_segment(pb::DeleteSegmentRequest {
            segment_id: "recent".into(),
        })
        .await
        .unwrap();
    agrees(&server, &named.replica, &customers, Some(&["vips"]), "deleted").await;
    agrees(&server, &all.replica, &customers, None, "deleted").await;
    server.stop().await.unwrap();
}

/// A follower resumes after a dropped connection without a new snapshot; after a restart (a new
/// epoch) or once it fell out of the server's buffer, with one; it agrees with the server each
/// time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_resume_or_take_a_new_snapshot_never_a_gap() {
    let (t0, clock) = replay_clock();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tune = log_alone_following(clock.clone(), 200);
    let server = TestServer::start_at(data.clone(), tune.clone()).await;
    replay_base(&server, t0).await;
    let mut customers = replay_ids();
    customers.extend((0..300).map(|n| format!("bulk-{n}")));
    let follower = Follower::start(&server, &[]).await;
    agrees(&server, &follower.replica, &customers, None, "start").await;

    // Dropped, then resumed: the writes meanwhile arrive as changes.
    let replica = follower.drop_connection();
    write_change(&server, Change::Customers, &clock, t0).await;
    write_change(&server, Change::Erasure, &clock, t0).await;
    let follower = Follower::resume(&server, &[], replica).await;
    agrees(&server, &follower.replica, &customers, None, "resumed").await;
    assert_eq!(follower.replica.lock().snapshots, 1, "resumed without a snapshot");

    // Dropped while more is written than the buffer holds: a new snapshot.
    let replica = follower.drop_connection();
    for part in 0..3 {
        let bulk: Vec<pb::Customer> = (part * 100..part * 100 + 100)
            .map(|n| customer(&format!("bulk-{n}"), None, &[("vip", b(n % 3 == 0))]))
            .collect();
        upsert(&server, bulk).await;
    }
    let follower = Follower::resume(&server, &[], replica).await;
    agrees(&server, &follower.replica, &customers, None, "fell behind").await;
    assert_eq!(
        follower.replica.lock().snapshots,
        2,
        "fell out of the buffer: a new snapshot"
    );

    // The server restarts: the stream ends saying where to resume; the position belongs to an
    // epoch that is gone, so the follower gets a new snapshot.
    let replica = follower.replica.clone();
    server.stop().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while replica.lock().ended.is_none() {
        assert!(std::time::Instant::now() < deadline, "the stream did not end");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ended = replica.lock().ended.clone().unwrap();
    assert!(ended.contains("resume with epoch"), "{ended}");
    let server = TestServer::start_at(data, tune).await;
    write_change(&server, Change::Orders, &clock, t0).await;
    let follower = Follower::resume(&server, &[], replica).await;
    agrees(&server, &follower.replica, &customers, None, "restarted").await;
    assert_eq!(follower.replica.lock().snapshots, 3);
    write_change(&server, Change::Activities, &clock, t0).await;
    agrees(&server, &follower.replica, &customers, None, "after the restart").await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn follow_refuses_unknown_segments_and_bad_heartbeats() {
    let server = TestServer::start().await;
    create(&server, text_segment("vips", "vip")).await.unwrap();
    let mut client = ReplicationClient::new(server.channel().await);
    let refused = |segment_ids: Vec<&str>, heartbeat_millis: u32| pb::FollowRequest {
        segment_ids: segment_ids.into_iter().map(String::from).collect(),
        heartbeat_millis,
        ..Default::default()
    };
    let e = client.follow(refused(vec!["vips", "nope"], 0)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains("segment_ids[1]"), "{}", e.message());
    let e = client.follow(refused(vec!["Bad Id"], 0)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("segment_ids[0]"), "{}", e.message());
    let e = client.follow(refused(vec![], 5)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("heartbeat_millis"), "{}", e.message());
    // A position never given: a snapshot, not an error.
    let mut stream = client
        .follow(pb::FollowRequest {
            epoch: 12345,
            after_sequence: 99,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert!(
        matches!(first.message, Some(Message::SnapshotStart(_))),
        "{first:?}"
    );
    server.stop().await.unwrap();
}
