//! Health, reflection, the data-directory lock and metrics of a real server.

use crate::common::*;
use segmentd::config::Config;
use tokio_stream::StreamExt;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

#[tokio::test]
async fn health_reports_serving_for_the_server_and_each_service() {
    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "segmentd.v1.Ingest", "segmentd.v1.Admin"] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(reply.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let err = health
        .check(HealthCheckRequest {
            service: "segmentd.v1.Nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
}

#[tokio::test]
async fn reflection_lists_the_services() {
    let server = TestServer::start().await;
    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reply {reply:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in ["segmentd.v1.Ingest", "segmentd.v1.Admin", "grpc.health.v1.Health"] {
        assert!(names.contains(&expected), "{names:?}");
    }
}

#[tokio::test]
async fn a_second_server_cannot_share_the_data_dir() {
    let first = TestServer::start().await;
    // Let the first server take its lock.
    let _ = customer_count(&first).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = Config::with_data_dir(first.data.clone());
    let err = segmentd::server::run(listener, config, std::future::pending())
        .await
        .unwrap_err();
    assert!(
        matches!(err, segmentd::server::ServerError::DataDirLocked(_)),
        "{err}"
    );
    first.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_endpoint_serves_prometheus_text() {
    let metrics_addr = free_local_addr();
    let server = TestServer::start_with(|c| c.metrics_addr = Some(metrics_addr)).await;
    let mut ingest = server.ingest().await;
    ingest
        .upsert_customers(segmentd::api::pb::UpsertCustomersRequest::new(vec![
            customer("m1", None, &[]),
            customer("m2", None, &[]),
        ]))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(metrics_addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains("\nsegmentd_customers 2\n"), "{body}");
    assert!(body.contains("# TYPE segmentd_bytes_used gauge"), "{body}");
}

#[tokio::test]
async fn metrics_cover_requests_segments_events_log_and_snapshots() {
    let metrics_addr = free_local_addr();
    let server = TestServer::start_with(|c| {
        c.metrics_addr = Some(metrics_addr);
        c.fsync = segmentd::wal::FsyncMode::Always;
    })
    .await;
    upsert(
        &server,
        vec![
            customer("m1", None, &[("vip", b(true))]),
            customer("m2", None, &[]),
        ],
    )
    .await;
    create(&server, text_segment("vips", "vip")).await.unwrap();
    assert_eq!(is_member(&server, "m1", "vips").await, (true, true));
    let missing = server
        .membership()
        .await
        .is_member(segmentd::api::pb::IsMemberRequest {
            customer_id: "m1".into(),
            segment_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let mut watch = server
        .segments()
        .await
        .watch_memberships(segmentd::api::pb::WatchMembershipsRequest::default())
        .await
        .unwrap()
        .into_inner();
    watch.message().await.unwrap().unwrap();
    let mut follow = segmentd::api::pb::replication_client::ReplicationClient::new(server.channel().await)
        .follow(segmentd::api::pb::FollowRequest::default())
        .await
        .unwrap()
        .into_inner();
    follow.message().await.unwrap().unwrap();
    let snapshot = server
        .admin()
        .await
        .snapshot(segmentd::api::pb::SnapshotRequest {})
        .await
        .unwrap()
        .into_inner();
    // Every record the log holds, framed: its bytes since start.
    let wal_bytes: u64 = std::fs::read_dir(server.data.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len() - 24)
        .sum();

    let m = scrape(metrics_addr).await;
    let get = |k: &str| {
        *m.get(k)
            .unwrap_or_else(|| panic!("no {k} in {:#?}", m.keys().collect::<Vec<_>>()))
    };
    let call = |service: &str, method: &str, code: &str| {
        format!(
            "grpc_server_handled_total{{grpc_code=\"{code}\",grpc_method=\"{method}\",grpc_service=\"segmentd.v1.{service}\",grpc_type=\"unary\"}}"
        )
    };
    assert_eq!(get(&call("Ingest", "UpsertCustomers", "OK")), 1.0);
    assert_eq!(get(&call("Membership", "IsMember", "OK")), 1.0);
    assert_eq!(get(&call("Membership", "IsMember", "NotFound")), 1.0);
    let bucket = "grpc_server_handling_seconds_bucket{grpc_method=\"IsMember\",grpc_service=\"segmentd.v1.Membership\",grpc_type=\"unary\",le=\"+Inf\"}";
    assert_eq!(get(bucket), 2.0);
    assert_eq!(get("segmentd_segments"), 1.0);
    assert_eq!(get("segmentd_segment_members{segment=\"vips\"}"), 1.0);
    assert_eq!(get("segmentd_events_last_sequence"), 1.0);
    assert_eq!(get("segmentd_watchers"), 1.0);
    assert_eq!(get("segmentd_watcher_lag_events"), 0.0);
    assert_eq!(get("segmentd_followers"), 1.0);
    assert_eq!(get("segmentd_follow_buffer_items"), 0.0);
    assert_eq!(get("segmentd_wal_written_bytes_total"), wal_bytes as f64);
    assert_eq!(get("segmentd_wal_last_sequence"), snapshot.sequence as f64);
    // With fsync always, each acknowledged write waited for a sync.
    assert!(get("segmentd_wal_fsync_seconds_count") >= 2.0);
    // The segment was evaluated once, over every customer.
    assert_eq!(get("segmentd_evaluation_seconds_count"), 1.0);
    let age = get("segmentd_snapshot_age_seconds");
    assert!((0.0..30.0).contains(&age), "{age}");
    assert_eq!(get("segmentd_snapshot_bytes"), snapshot.bytes as f64);
    assert_eq!(get("segmentd_time_flips_total"), 0.0);
    drop(watch);
}

/// Calls `path` with an empty message and no token, returning the status code.
async fn call_path(channel: tonic::transport::Channel, path: &str) -> tonic::Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::try_from(path).unwrap();
    grpc.unary::<(), (), _>(tonic::Request::new(()), path, tonic_prost::ProstCodec::default())
        .await
        .unwrap_err()
        .code()
}

#[tokio::test]
async fn metrics_label_only_the_servers_methods_whatever_paths_callers_send() {
    let metrics_addr = free_local_addr();
    let server = TestServer::start_with(|c| {
        c.metrics_addr = Some(metrics_addr);
        c.tokens = Some("admin admin-token-0123456789".into());
    })
    .await;
    let before = scrape(metrics_addr).await;
    let channel = server.channel().await;
    // Junk paths, one with a quote, and a real method without a token: none authenticated.
    for i in 0..300 {
        let path = match i % 3 {
            0 => format!("/junk.Service{i}/Method"),
            1 => format!("/x\"y{i}/z"),
            _ => "/segmentd.v1.Membership/IsMember".to_string(),
        };
        let code = call_path(channel.clone(), &path).await;
        let expected = if i % 3 == 2 {
            tonic::Code::Unauthenticated
        } else {
            tonic::Code::Unimplemented
        };
        assert_eq!(code, expected, "{path}");
    }
    // `scrape` panics on any line that is not `name{labels} value`.
    let after = scrape(metrics_addr).await;
    let unknown = "grpc_server_handled_total{grpc_code=\"Unimplemented\",grpc_method=\"unknown\",grpc_service=\"unknown\",grpc_type=\"unknown\"}";
    assert_eq!(after[unknown], 200.0);
    let refused = "grpc_server_handled_total{grpc_code=\"Unauthenticated\",grpc_method=\"IsMember\",grpc_service=\"segmentd.v1.Membership\",grpc_type=\"unary\"}";
    assert_eq!(after[refused], 100.0);
    assert!(after.keys().all(|k| !k.contains("junk") && !k.contains("y1")));
    // Two counters and two histograms of 19 lines each (buckets, +Inf, sum, count), whatever the
    // number of paths.
    assert!(
        after.len() <= before.len() + 2 + 2 * 19,
        "{} series before, {} after",
        before.len(),
        after.len()
    );
    // The process's own series and the build.
    assert!(after.contains_key("process_cpu_seconds_total"));
    assert!(after["process_start_time_seconds"] > 1.7e9);
    assert!(after["process_resident_memory_bytes"] > 0.0);
    let build = format!(
        "segmentd_build_info{{commit=\"{}\",version=\"{}\"}}",
        env!("SEGMENTD_COMMIT"),
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(
        after.get(&build),
        Some(&1.0),
        "{:?}",
        after.keys().filter(|k| k.contains("build")).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn metrics_endpoint_times_out_a_client_that_never_sends_its_request() {
    use tokio::io::AsyncReadExt;
    let metrics_addr = free_local_addr();
    let _server = TestServer::start_with(|c| c.metrics_addr = Some(metrics_addr)).await;
    let mut idle = tokio::net::TcpStream::connect(metrics_addr).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    // The server closes the connection after its header timeout (10 s), well before 30 s.
    tokio::time::timeout(std::time::Duration::from_secs(30), idle.read_to_end(&mut buf))
        .await
        .expect("the server closed an idle connection")
        .ok();
    assert!(started.elapsed() >= std::time::Duration::from_secs(5));
    // Meanwhile and after, scrapes are served.
    assert!(scrape(metrics_addr).await.contains_key("segmentd_customers"));
}

#[tokio::test]
async fn overload_is_refused_fast_with_resource_exhausted_and_the_server_recovers() {
    let server = TestServer::start_with(|c| c.max_queued_writes = 2).await;
    // Forty callers at once, each with 5,000 customers: far more than two queued writes.
    let refused = overload(&server, "writes are queued").await;
    // A refusal does not wait for the queue (each accepted write takes milliseconds).
    assert!(
        refused[refused.len() / 2] < std::time::Duration::from_millis(500),
        "median refusal took {:?}",
        refused[refused.len() / 2]
    );
}

/// Queued writes are bounded by the bytes they hold too (`--max-queued-bytes`): with room for
/// one request of 5,000 customers, forty at once are refused but for what fits.
#[tokio::test]
async fn overload_by_bytes_is_refused_with_resource_exhausted() {
    let server = TestServer::start_with(|c| c.max_queued_bytes = 500_000).await;
    overload(&server, "bytes").await;
}

/// A queued write whose caller's `grpc-timeout` passes before its turn is dropped unapplied: the
/// caller hears of its deadline, the customer is never created (nothing is in the log either:
/// a restart from the log alone does not have it), the place in the queue comes back, and
/// `segmentd_writes_dropped_total` counts it. A write queued beside it with time to spare is
/// applied once the writer goes on.
#[tokio::test]
async fn a_queued_write_past_its_deadline_is_dropped_unapplied() {
    let faults = std::sync::Arc::new(segmentd::faults::Faults::default());
    let metrics_addr = free_local_addr();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let f = faults.clone();
    let config = move |c: &mut segmentd::config::Config| {
        c.faults = Some(f.clone());
        c.metrics_addr = Some(metrics_addr);
        c.no_snapshot_on_shutdown = true;
    };
    let server = TestServer::start_at(data.clone(), config.clone()).await;
    upsert(&server, vec![customer("before", None, &[])]).await;
    let metric = |m: &std::collections::BTreeMap<String, f64>, name: &str| m.get(name).copied().unwrap();
    assert_eq!(
        metric(&scrape(metrics_addr).await, "segmentd_writes_dropped_total"),
        0.0
    );

    // The writer stalls; one write with 300 ms to live and one with a minute queue behind it.
    faults.hold_writes();
    let call = |mut ingest: segmentd::api::pb::ingest_client::IngestClient<tonic::transport::Channel>,
                id: &'static str,
                timeout: std::time::Duration| async move {
        let batch = vec![customer(id, None, &[])];
        let mut request = tonic::Request::new(segmentd::api::pb::UpsertCustomersRequest::new(batch));
        // The deadline as the header alone: what the server does with it, not the client.
        let header = format!("{}m", timeout.as_millis());
        request
            .metadata_mut()
            .insert("grpc-timeout", header.parse().unwrap());
        ingest.upsert_customers(request).await
    };
    let hurried = tokio::spawn(call(
        server.ingest().await,
        "hurried",
        std::time::Duration::from_millis(300),
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while metric(&scrape(metrics_addr).await, "segmentd_queued_writes") < 1.0 {
        assert!(std::time::Instant::now() < deadline, "the write never queued");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let patient = tokio::spawn(call(
        server.ingest().await,
        "patient",
        std::time::Duration::from_secs(60),
    ));
    while metric(&scrape(metrics_addr).await, "segmentd_queued_writes") < 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the second write never queued"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // tonic callers see their deadline as CANCELLED "Timeout expired" (the channel enforces the
    // header it sends; the server does too, and both drop the call).
    let err = hurried.await.unwrap().unwrap_err();
    assert_eq!(
        (err.code(), err.message()),
        (tonic::Code::Cancelled, "Timeout expired"),
        "{err:?}"
    );
    // The server has given up on the call too before the writer goes on.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    faults.release_writes();
    patient.await.unwrap().unwrap();

    let mut ingest = server.ingest().await;
    assert_eq!(
        get(&mut ingest, "hurried").await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    get(&mut ingest, "patient").await.unwrap();
    let m = scrape(metrics_addr).await;
    assert_eq!(metric(&m, "segmentd_writes_dropped_total"), 1.0);
    assert_eq!(metric(&m, "segmentd_queued_writes"), 0.0);
    assert_eq!(customer_count(&server).await, 2);

    // Nothing of it reached the log: from the log alone, the same two customers.
    server.stop().await.unwrap();
    let server = TestServer::start_at(data, config).await;
    let mut ingest = server.ingest().await;
    assert_eq!(
        get(&mut ingest, "hurried").await.unwrap_err().code(),
        tonic::Code::NotFound
    );
    get(&mut ingest, "patient").await.unwrap();
    get(&mut ingest, "before").await.unwrap();
    assert_eq!(customer_count(&server).await, 2);
}

/// Forty callers at once, each upserting 5,000 customers: at least one is applied and at least
/// one refused with RESOURCE_EXHAUSTED whose message holds `why`; refused ones apply nothing and
/// writes go through once the load is gone. The refusals' durations, sorted.
async fn overload(server: &TestServer, why: &'static str) -> Vec<std::time::Duration> {
    let mut calls = Vec::new();
    for k in 0..40 {
        let mut ingest = server.ingest().await;
        calls.push(tokio::spawn(async move {
            let batch: Vec<_> = (0..5000)
                .map(|i| customer(&format!("o{k}-{i}"), None, &[]))
                .collect();
            let started = std::time::Instant::now();
            let r = ingest
                .upsert_customers(segmentd::api::pb::UpsertCustomersRequest::new(batch))
                .await;
            (r.map(drop), started.elapsed())
        }));
    }
    let mut ok = 0;
    let mut refused = Vec::new();
    for c in calls {
        match c.await.unwrap() {
            (Ok(()), _) => ok += 1,
            (Err(s), took) if s.code() == tonic::Code::ResourceExhausted => {
                assert!(s.message().contains(why), "{}", s.message());
                refused.push(took);
            }
            (Err(other), _) => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        ok >= 1 && !refused.is_empty(),
        "{ok} applied, {} refused",
        refused.len()
    );
    refused.sort();
    assert_eq!(
        customer_count(server).await,
        ok * 5000,
        "refused batches applied nothing"
    );
    // Once the load is gone, writes go through again.
    upsert(server, vec![customer("after", None, &[])]).await;
    assert_eq!(customer_count(server).await, ok * 5000 + 1);
    refused
}

#[tokio::test]
async fn every_call_has_a_request_id_in_its_reply() {
    let server = TestServer::start().await;
    let mut request = tonic::Request::new(segmentd::api::pb::StatsRequest {});
    request
        .metadata_mut()
        .insert("x-request-id", "checkout-42".parse().unwrap());
    let reply = server.admin().await.stats(request).await.unwrap();
    assert_eq!(reply.metadata().get("x-request-id").unwrap(), "checkout-42");
    let reply = server
        .admin()
        .await
        .stats(segmentd::api::pb::StatsRequest {})
        .await
        .unwrap();
    let id = reply
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{id}"
    );
    // Refusals carry it too.
    let err = server
        .membership()
        .await
        .is_member(segmentd::api::pb::IsMemberRequest {
            customer_id: "c".into(),
            segment_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert!(err.metadata().get("x-request-id").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_recovery_health_is_not_serving_and_data_calls_are_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log_only = |c: &mut segmentd::config::Config| c.no_snapshot_on_shutdown = true;
    let server = TestServer::start_at(data.clone(), log_only).await;
    // A log long enough that replaying it takes a while.
    let batches: Vec<segmentd::api::pb::LoadCustomersRequest> = (0..40)
        .map(|b| {
            segmentd::api::pb::LoadCustomersRequest::new(
                (0..10_000)
                    .map(|n| {
                        customer(
                            &format!("c{b}-{n}"),
                            None,
                            &[("vip", crate::common::b(n % 2 == 0))],
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    server
        .ingest()
        .await
        .load_customers(tokio_stream::iter(batches))
        .await
        .unwrap();
    server.stop().await.unwrap();

    let started = std::time::Instant::now();
    let server = TestServer::spawn_at(data, log_only).await;
    let channel = loop {
        if let Ok(c) = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
        {
            break c;
        }
    };
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    let mut admin = segmentd::api::pb::admin_client::AdminClient::new(channel);
    let call = admin.stats(segmentd::api::pb::StatsRequest {}).await;
    let info = admin
        .get_server_info(segmentd::api::pb::GetServerInfoRequest {})
        .await
        .expect("GetServerInfo answers while recovering")
        .into_inner();
    let asked_after = started.elapsed();
    assert_eq!(
        health, 2,
        "NOT_SERVING while recovering (asked after {asked_after:?})"
    );
    let status = call.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(
        info.state(),
        segmentd::api::pb::ServerState::Recovering,
        "{info:?}"
    );
    server.wait_serving().await;
    let info = admin
        .get_server_info(segmentd::api::pb::GetServerInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.state(), segmentd::api::pb::ServerState::Serving);
    assert!(info.last_sequence > 0, "{info:?}");
    assert_eq!(customer_count(&server).await, 400_000);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_connection_gets_at_most_max_concurrent_streams_calls_at_once() {
    use segmentd::api::pb;
    let server = TestServer::start_with(|c| c.max_concurrent_streams = 2).await;
    let channel = server.channel().await;
    let watch = || {
        let mut client = pb::segments_client::SegmentsClient::new(channel.clone());
        async move {
            client
                .watch_memberships(pb::WatchMembershipsRequest::default())
                .await
                .unwrap()
                .into_inner()
        }
    };
    // Two watches hold both streams of the connection open.
    let (first, _second) = (watch().await, watch().await);
    let mut admin = pb::admin_client::AdminClient::new(channel.clone());
    let stats = admin.stats(pb::StatsRequest {});
    tokio::pin!(stats);
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(500), &mut stats)
            .await
            .is_err(),
        "a third call on the connection must wait for a stream"
    );
    // One watch ends: the waiting call goes through.
    drop(first);
    tokio::time::timeout(std::time::Duration::from_secs(5), stats)
        .await
        .expect("the call proceeds once a stream is free")
        .unwrap();
}

#[tokio::test]
async fn get_server_info_names_the_build_the_directory_and_the_state() {
    use segmentd::api::pb;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let server = TestServer::start_with(|c| {
        c.fsync = "interval=25".parse().unwrap();
    })
    .await;
    let mut admin = server.admin().await;
    let info = admin
        .get_server_info(pb::GetServerInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    // The commit the test binary was built from is the server's: the same build script.
    assert!(
        info.commit == "unknown"
            || (info.commit.len() >= 12 && info.commit[..12].bytes().all(|b| b.is_ascii_hexdigit())),
        "{info:?}"
    );
    assert_eq!(info.data_dir, server.data.display().to_string());
    assert_eq!(info.role, "primary");
    assert_eq!(info.state(), pb::ServerState::Serving);
    assert_eq!(info.fsync, "interval=25");
    assert!(info.failure.is_empty());
    assert!(
        (before..=before + 60).contains(&info.started_at_unix_seconds),
        "{info:?}"
    );
    assert!(
        info.uptime_seconds >= 0.0 && info.uptime_seconds < 60.0,
        "{info:?}"
    );

    // Each acknowledged write moves the log's position.
    upsert(&server, vec![customer("c1", None, &[])]).await;
    let after = admin
        .get_server_info(pb::GetServerInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(
        after.last_sequence > info.last_sequence,
        "{info:?} then {after:?}"
    );
    assert!(after.uptime_seconds >= info.uptime_seconds);
    server.stop().await.unwrap();
}

#[test]
fn version_names_the_commit() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_segmentd"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let expected = format!("segmentd {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(text.starts_with(&expected), "{text}");
    assert!(text.trim_end().ends_with(')'), "{text}");
}
