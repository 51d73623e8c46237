//! Roles and tokens against a real server: each role allowed and refused per service, wrong and
//! missing tokens, open health and reflection, the loopback rule, and a reload on SIGHUP.

mod common;

use common::*;
use segmentd::api::pb;
use tonic::Code;
use tonic::metadata::MetadataValue;

const ADMIN: &str = "admin-token-0123456789";
const READER: &str = "reader-token-0123456789";
const ACTIVITY: &str = "activity-token-0123456789";
const LOADER: &str = "loader-token-0123456789";

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(t) = token {
        r.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {t}")).unwrap(),
        );
    }
    r
}

/// The status code of one call to each service with `token` (Ok as `Code::Ok`).
async fn codes(server: &TestServer, token: Option<&str>) -> [Code; 5] {
    let code = |r: Result<(), tonic::Status>| r.map_or_else(|s| s.code(), |()| Code::Ok);
    let membership = server
        .membership()
        .await
        .is_member(with_token(
            pb::IsMemberRequest {
                customer_id: "c1".into(),
                segment_id: "golfers".into(),
            },
            token,
        ))
        .await
        .map(drop);
    let activities = server
        .activities()
        .await
        .add_to_segment(with_token(
            pb::AddToSegmentRequest {
                segment_id: "golfers".into(),
                customer_ids: vec!["c1".into()],
                activity_id: "a1".into(),
                ..Default::default()
            },
            token,
        ))
        .await
        .map(drop);
    let ingest = server
        .ingest()
        .await
        .get_customer(with_token(by_id("c1"), token))
        .await
        .map(drop);
    let segments = server
        .segments()
        .await
        .list_segments(with_token(pb::ListSegmentsRequest {}, token))
        .await
        .map(drop);
    let admin = server
        .admin()
        .await
        .stats(with_token(pb::StatsRequest {}, token))
        .await
        .map(drop);
    [
        code(membership),
        code(activities),
        code(ingest),
        code(segments),
        code(admin),
    ]
}

#[tokio::test]
async fn each_role_reaches_its_services_only() {
    let dir = tempfile::tempdir().unwrap();
    let hashed = {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(READER.as_bytes()))
    };
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("admin {ADMIN}\nreader sha256:{hashed}\nactivity {ACTIVITY}\nloader {LOADER}\n"),
    )
    .unwrap();
    let server = TestServer::start_with(|c| c.tokens_file = Some(tokens.clone())).await;
    // Set-up as admin: a customer and a segment open to activities.
    server
        .ingest()
        .await
        .upsert_customers(with_token(
            pb::UpsertCustomersRequest::new(vec![customer("c1", None, &[])]),
            Some(ADMIN),
        ))
        .await
        .unwrap();
    let mut golfers = text_segment("golfers", "");
    golfers.allow_activities = true;
    server
        .segments()
        .await
        .create_segment(with_token(
            pb::CreateSegmentRequest {
                segment: Some(golfers),
            },
            Some(ADMIN),
        ))
        .await
        .unwrap();

    use Code::{Ok, PermissionDenied as No, Unauthenticated as Who};
    //                                      membership activities ingest segments admin
    assert_eq!(codes(&server, Some(ADMIN)).await, [Ok, Ok, Ok, Ok, Ok]);
    assert_eq!(codes(&server, Some(READER)).await, [Ok, No, No, No, No]);
    assert_eq!(codes(&server, Some(ACTIVITY)).await, [No, Ok, No, No, No]);
    assert_eq!(codes(&server, Some(LOADER)).await, [No, No, Ok, No, No]);
    assert_eq!(codes(&server, Some("not-a-token-0123456789")).await, [Who; 5]);
    assert_eq!(codes(&server, None).await, [Who; 5]);
    // The refusals name no token.
    let err = server
        .segments()
        .await
        .list_segments(with_token(pb::ListSegmentsRequest {}, Some(READER)))
        .await
        .unwrap_err();
    assert!(
        !err.message().contains(READER) && err.message().contains("reader"),
        "{}",
        err.message()
    );

    // Health stays open (the server answered wait_serving without a token); so does reflection.
    let mut reflection = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
        server.channel().await,
    );
    let request = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());

    // A new file, then SIGHUP: the reader's token is gone, a new one works.
    std::fs::write(
        &tokens,
        format!("admin {ADMIN}\nreader reader-token-NEW-0123456789\n"),
    )
    .unwrap();
    let pid = std::process::id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while codes(&server, Some(READER)).await[0] != Who {
        assert!(std::time::Instant::now() < deadline, "tokens not reloaded");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(codes(&server, Some("reader-token-NEW-0123456789")).await[0], Ok);
}

#[tokio::test]
async fn without_tokens_only_loopback_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let config = segmentd::config::Config::with_data_dir(dir.path().join("data"));
    let err = segmentd::server::run(listener, config.clone(), std::future::pending())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--insecure"), "{err}");

    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut open = config;
    open.insecure = true;
    open.data_dir = dir.path().join("data2");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(segmentd::server::run(listener, open, async {
        let _ = stopped.await;
    }));
    let server = TestServer::external(format!("127.0.0.1:{port}").parse().unwrap());
    server.wait_serving().await;
    assert_eq!(customer_count(&server).await, 0);
    let _ = stop.send(());
    task.await.unwrap().unwrap();

    // A bad tokens file stops the start with a message that repeats no token.
    let bad = dir.path().join("bad-tokens");
    std::fs::write(&bad, "superuser secret-token-0123456789\n").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut config = segmentd::config::Config::with_data_dir(dir.path().join("data3"));
    config.tokens_file = Some(bad);
    let err = segmentd::server::run(listener, config, std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("entry 1") && !err.contains("secret-token"), "{err}");
}
