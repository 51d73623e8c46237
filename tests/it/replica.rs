//! The `segmentd-replica` client against a real server: after every kind of write, a dropped
//! connection, a fall out of the server's buffer and a restart, once quiet, it answers as the
//! server does for every customer and segment.

use std::sync::Arc;
use std::time::Duration;

use segmentd::api::pb;
use segmentd_replica::{Error, Replica};

use crate::common::*;
use crate::durability::{
    EVERY_CHANGE, log_alone_following, replay_base, replay_clock, replay_ids, write_change,
};

/// A TCP proxy between the replica and the server, whose connections the test can cut.
struct Proxy {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<u64>,
    /// While true, new connections are closed at once.
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    async fn start(upstream: std::net::SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cuts, refuse) = (cut.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if refuse.load(std::sync::atomic::Ordering::Acquire) {
                    continue;
                }
                let mut cut = cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy { addr, cut, closed }
    }

    /// Cuts every connection, and refuses new ones until [`Proxy::open`].
    fn cut(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::Release);
        self.cut.send_modify(|n| *n += 1);
    }

    fn open(&self) {
        self.closed.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// The differences between the server's answers and the replica's, for `customers` against
/// `segments` (every server segment when `None`, which the replica must follow exactly).
async fn differences(
    server: &TestServer,
    replica: &Replica,
    customers: &[String],
    segments: Option<&[&str]>,
) -> Vec<String> {
    let mut diffs = Vec::new();
    let all = segments.is_none();
    let segments: Vec<String> = match segments {
        Some(ids) => ids.iter().map(|s| s.to_string()).collect(),
        None => {
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
    };
    let followed: Vec<String> = replica.status().segments.iter().map(|s| s.to_string()).collect();
    if followed != segments {
        diffs.push(format!("segments: replica {followed:?}, server {segments:?}"));
        return diffs;
    }
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
    let ids: Vec<&str> = segments.iter().map(String::as_str).collect();
    for (i, customer) in customers.iter().enumerate() {
        let server: Vec<bool> = answer.member[i * ids.len()..(i + 1) * ids.len()].to_vec();
        let known = answer.known_customer[i];
        match replica.check(customer, &ids) {
            Ok(ours) => {
                let want = known.then(|| server.clone());
                if ours != want {
                    diffs.push(format!("{customer}: replica {ours:?}, server {want:?}"));
                }
            }
            Err(e) => diffs.push(format!("{customer}: {e}")),
        }
        for (j, segment) in ids.iter().enumerate() {
            let one = replica.is_member(customer, segment);
            let want = known.then_some(server[j]);
            if one != Ok(want) {
                diffs.push(format!(
                    "{customer} in {segment}: replica {one:?}, server {want:?}"
                ));
            }
        }
        if all {
            let of = replica.segments_of(customer).unwrap();
            let want = known.then(|| {
                ids.iter()
                    .zip(&server)
                    .filter(|(_, m)| **m)
                    .map(|(s, _)| s.to_string())
                    .collect::<Vec<_>>()
            });
            let of = of.map(|v| v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            if of != want {
                diffs.push(format!("{customer}: segments_of {of:?}, server {want:?}"));
            }
        }
    }
    diffs
}

async fn agrees(
    server: &TestServer,
    replica: &Replica,
    customers: &[String],
    segments: Option<&[&str]>,
    when: &str,
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let diffs = differences(server, replica, customers, segments).await;
        if diffs.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{when}: {diffs:#?}\n{:?}",
            replica.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn ready(replica: &Arc<Replica>) {
    let r = replica.clone();
    tokio::task::spawn_blocking(move || r.wait_ready(Duration::from_secs(20)))
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replica_agrees_with_the_server_through_every_write_a_cut_a_fall_behind_and_a_restart() {
    let (t0, clock) = replay_clock();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let tune = log_alone_following(clock.clone(), 500);
    let server = TestServer::start_at(data.clone(), tune.clone()).await;
    let proxy = Proxy::start(server.addr).await;
    replay_base(&server, t0).await;
    let mut customers = replay_ids();
    customers.push("never-seen".into());
    customers.extend((0..900).map(|n| format!("bulk-{n}")));

    let all = Arc::new(
        Replica::builder(format!("http://{}", proxy.addr))
            .heartbeat(Duration::from_millis(20))
            .start()
            .unwrap(),
    );
    let named = Arc::new(
        Replica::builder(format!("http://{}", server.addr))
            .segments(["vips", "recent"])
            .heartbeat(Duration::from_millis(20))
            .start()
            .unwrap(),
    );
    ready(&all).await;
    ready(&named).await;
    assert_eq!(
        named.is_member("c00", "golf"),
        Err(Error::UnknownSegment("golf".into()))
    );
    for change in EVERY_CHANGE {
        write_change(&server, change, &clock, t0).await;
        let when = format!("{change:?}");
        agrees(&server, &all, &customers, None, &when).await;
        agrees(&server, &named, &customers, Some(&["recent", "vips"]), &when).await;
    }
    assert_eq!(all.status().snapshots, 1);
    assert!(all.status().staleness.is_some_and(|s| s < Duration::from_secs(5)));

    // A dropped connection: resumed from the position, no new snapshot.
    proxy.cut();
    upsert(&server, vec![customer("bulk-0", None, &[("vip", b(true))])]).await;
    proxy.open();
    agrees(&server, &all, &customers, None, "resumed").await;
    let status = all.status();
    assert_eq!(status.snapshots, 1, "{status:?}");
    assert!(status.reconnects >= 1, "{status:?}");

    // Cut off while more is written than the server's buffer holds: a new snapshot.
    proxy.cut();
    for part in 0..3 {
        let bulk: Vec<pb::Customer> = (part * 300..part * 300 + 300)
            .map(|n| customer(&format!("bulk-{n}"), None, &[("vip", b(n % 3 == 0))]))
            .collect();
        upsert(&server, bulk).await;
    }
    proxy.open();
    agrees(&server, &all, &customers, None, "fell behind").await;
    assert_eq!(all.status().snapshots, 2);

    // A restart on the same port: the named replica reconnects to a new epoch, a new snapshot.
    let addr = server.addr;
    server.stop().await.unwrap();
    let server = TestServer::start_on(addr, data, tune).await;
    upsert(
        &server,
        vec![customer("after-restart", None, &[("vip", b(true))])],
    )
    .await;
    customers.push("after-restart".into());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while named.status().snapshots < 2 {
        assert!(std::time::Instant::now() < deadline, "{:?}", named.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agrees(
        &server,
        &named,
        &customers,
        Some(&["recent", "vips"]),
        "restarted",
    )
    .await;
    assert_eq!(named.is_member("after-restart", "vips"), Ok(Some(true)));
    assert_eq!(named.status().snapshots, 2, "{:?}", named.status());
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_replica_refuses_to_answer_when_asked_to() {
    let server = TestServer::start().await;
    create(&server, text_segment("vips", "vip")).await.unwrap();
    upsert(&server, vec![customer("a", None, &[("vip", b(true))])]).await;
    let proxy = Proxy::start(server.addr).await;
    let replica = Arc::new(
        Replica::builder(format!("http://{}", proxy.addr))
            .heartbeat(Duration::from_millis(20))
            .max_staleness(Duration::from_millis(300))
            .start()
            .unwrap(),
    );
    ready(&replica).await;
    // Fresh from its snapshot: it answers at once, before any heartbeat.
    assert_eq!(replica.is_member("a", "vips"), Ok(Some(true)));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while replica.is_member("a", "vips") != Ok(Some(true)) {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            replica.is_member("a", "vips")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(replica.is_member("nobody", "vips"), Ok(None));
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(500)).await;
    match replica.is_member("a", "vips") {
        Err(Error::Stale { staleness, max }) => assert!(staleness > max),
        other => panic!("expected stale, got {other:?}"),
    }
    proxy.open();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while replica.is_member("a", "vips") != Ok(Some(true)) {
        assert!(std::time::Instant::now() < deadline, "{:?}", replica.status());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.stop().await.unwrap();
}

#[test]
fn a_replica_without_a_server_says_why_it_is_not_ready() {
    let addr = free_local_addr();
    let replica = Replica::builder(format!("http://{addr}"))
        .connect_timeout(Duration::from_millis(200))
        .start()
        .unwrap();
    match replica.wait_ready(Duration::from_millis(600)) {
        Err(Error::NotReady { last_error: Some(e) }) => assert!(e.contains("connect"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(replica.is_member("a", "b"), Err(Error::NotReady { .. })));
    assert!(matches!(
        Replica::builder("not a uri").start(),
        Err(Error::Config(_))
    ));
}

/// Past 32 segments a customer's memberships take more words of the replica's table: created
/// and deleted segments, the table widened while followed, bits of deleted segments reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_segments_created_and_deleted_while_followed() {
    let server = TestServer::start().await;
    let customers: Vec<String> = (0..200).map(|n| format!("m{n}")).collect();
    server
        .admin()
        .await
        .define_attribute(pb::DefineAttributeRequest {
            name: "level".into(),
            r#type: pb::AttributeType::Int as i32,
            description: String::new(),
        })
        .await
        .unwrap();
    upsert(
        &server,
        (0..200)
            .map(|n| customer(&format!("m{n}"), None, &[("level", i(n % 90))]))
            .collect(),
    )
    .await;
    for k in 0..30 {
        create(
            &server,
            text_segment(&format!("a{k:02}"), &format!("level >= {k}")),
        )
        .await
        .unwrap();
    }
    let replica = Arc::new(
        Replica::builder(format!("http://{}", server.addr))
            .heartbeat(Duration::from_millis(20))
            .start()
            .unwrap(),
    );
    ready(&replica).await;
    agrees(&server, &replica, &customers, None, "30 segments").await;
    // Past 32, then 96: wider slots, taken while following.
    for k in 30..100 {
        create(
            &server,
            text_segment(&format!("a{k:02}"), &format!("level < {k}")),
        )
        .await
        .unwrap();
    }
    agrees(&server, &replica, &customers, None, "100 segments").await;
    // Deleted ones free their bits; new ones take them and start from their own members.
    let mut segs = server.segments().await;
    for k in (0..100).step_by(3) {
        segs.delete_segment(pb::DeleteSegmentRequest {
            segment_id: format!("a{k:02}"),
        })
        .await
        .unwrap();
    }
    for k in 0..20 {
        create(
            &server,
            text_segment(&format!("b{k:02}"), &format!("level = {k}")),
        )
        .await
        .unwrap();
    }
    upsert(&server, vec![customer("m1", None, &[("level", i(89))])]).await;
    agrees(&server, &replica, &customers, None, "reused bits").await;
    assert_eq!(replica.status().snapshots, 1);
    assert_eq!(replica.size("b05").unwrap(), 3);
    server.stop().await.unwrap();
}
