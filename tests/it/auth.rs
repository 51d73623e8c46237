//! Roles and tokens against a real server: each role allowed and refused per service, wrong and
//! missing tokens, open health and reflection, the loopback rule, and reloads on SIGHUP (which
//! never open a server).

use crate::common::*;
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
async fn codes(server: &TestServer, token: Option<&str>) -> [Code; 6] {
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
    let replication = segmentd::api::pb::replication_client::ReplicationClient::new(server.channel().await)
        .follow(with_token(pb::FollowRequest::default(), token))
        .await
        .map(drop);
    [
        code(membership),
        code(activities),
        code(ingest),
        code(segments),
        code(admin),
        code(replication),
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
    //                                      membership activities ingest segments admin replication
    assert_eq!(codes(&server, Some(ADMIN)).await, [Ok, Ok, Ok, Ok, Ok, Ok]);
    assert_eq!(codes(&server, Some(READER)).await, [Ok, No, No, No, No, Ok]);
    assert_eq!(codes(&server, Some(ACTIVITY)).await, [No, Ok, No, No, No, No]);
    assert_eq!(codes(&server, Some(LOADER)).await, [No, No, Ok, No, No, No]);
    assert_eq!(codes(&server, Some("not-a-token-0123456789")).await, [Who; 6]);
    assert_eq!(codes(&server, None).await, [Who; 6]);
    // Admin.GetSchema is every role's (the attribute names and types loads and rules use); the
    // rest of Admin stays the admin's, refusals naming the method.
    for token in [ADMIN, READER, ACTIVITY, LOADER] {
        let schema = server
            .admin()
            .await
            .get_schema(with_token(pb::GetSchemaRequest {}, Some(token)))
            .await
            .unwrap_or_else(|e| panic!("{token}: {e}"))
            .into_inner();
        assert!(
            schema.attributes.iter().any(|a| a.name == "total_spent"),
            "{token}"
        );
    }
    let mut admin = server.admin().await;
    for token in [READER, ACTIVITY, LOADER] {
        let refused = [
            admin
                .stats(with_token(pb::StatsRequest {}, Some(token)))
                .await
                .map(drop),
            admin
                .snapshot(with_token(pb::SnapshotRequest {}, Some(token)))
                .await
                .map(drop),
            admin
                .get_server_info(with_token(pb::GetServerInfoRequest {}, Some(token)))
                .await
                .map(drop),
            admin
                .define_attribute(with_token(
                    pb::DefineAttributeRequest {
                        name: "shoe_size".into(),
                        r#type: pb::AttributeType::Int as i32,
                        description: String::new(),
                    },
                    Some(token),
                ))
                .await
                .map(drop),
        ];
        for (r, method) in refused
            .into_iter()
            .zip(["Stats", "Snapshot", "GetServerInfo", "DefineAttribute"])
        {
            let e = r.expect_err(method);
            assert_eq!(e.code(), No, "{token} {method}");
            assert!(
                e.message().contains(&format!("segmentd.v1.Admin/{method}")),
                "{}",
                e.message()
            );
        }
    }
    let no_token = admin.get_schema(pb::GetSchemaRequest {}).await.unwrap_err();
    assert_eq!(no_token.code(), Who);
    // The refused definition changed nothing.
    let schema = admin
        .get_schema(with_token(pb::GetSchemaRequest {}, Some(ADMIN)))
        .await
        .unwrap()
        .into_inner();
    assert!(!schema.attributes.iter().any(|a| a.name == "shoe_size"));
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
    let _hup = HUP.lock().await;
    std::fs::write(
        &tokens,
        format!("admin {ADMIN}\nreader reader-token-NEW-0123456789\n"),
    )
    .unwrap();
    hangup();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while codes(&server, Some(READER)).await[0] != Who {
        assert!(std::time::Instant::now() < deadline, "tokens not reloaded");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(codes(&server, Some("reader-token-NEW-0123456789")).await[0], Ok);
}

/// SIGHUP reaches every server of this test process: the tests that send it take turns.
pub(crate) static HUP: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub(crate) fn hangup() {
    let pid = std::process::id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test]
async fn a_reload_never_opens_the_server_and_a_refused_one_is_counted() {
    let _hup = HUP.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    // A comment holding a comma after a token, and the scheme in upper case, are fine.
    std::fs::write(&tokens, format!("admin {ADMIN}   # shared laptop, old key\n")).unwrap();
    let metrics_addr = free_local_addr();
    let server = TestServer::start_with(|c| {
        c.tokens_file = Some(tokens.clone());
        c.metrics_addr = Some(metrics_addr);
    })
    .await;
    let mut upper = tonic::Request::new(pb::StatsRequest {});
    upper
        .metadata_mut()
        .insert("authorization", format!("BEARER {ADMIN}").parse().unwrap());
    server.admin().await.stats(upper).await.unwrap();
    let failures = "segmentd_tokens_reload_failures_total";
    let m = scrape(metrics_addr).await;
    assert_eq!(m[failures], 0.0);

    // An empty file, one of comments only, a bad one and a missing one: each reload is refused,
    // counted, and the admin token stays the only way in.
    let cases: [Option<&str>; 4] = [Some(""), Some("# all gone\n"), Some("admin short\n"), None];
    for (n, text) in cases.into_iter().enumerate() {
        match text {
            Some(text) => std::fs::write(&tokens, text).unwrap(),
            None => std::fs::remove_file(&tokens).unwrap(),
        }
        hangup();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while scrape(metrics_addr).await[failures] < (n + 1) as f64 {
            assert!(std::time::Instant::now() < deadline, "reload {n} not refused");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(codes(&server, None).await, [Code::Unauthenticated; 6], "{text:?}");
        assert_eq!(codes(&server, Some(ADMIN)).await[4], Code::Ok, "{text:?}");
    }
    // A good file is taken again.
    std::fs::write(&tokens, format!("reader {READER}\n")).unwrap();
    hangup();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // No segment exists: the reader's call gets past the token to NOT_FOUND.
    while codes(&server, Some(READER)).await[0] != Code::NotFound {
        assert!(std::time::Instant::now() < deadline, "tokens not reloaded");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(codes(&server, Some(ADMIN)).await[4], Code::Unauthenticated);
    assert_eq!(codes(&server, None).await[0], Code::Unauthenticated);
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
    assert!(
        err.contains("bad-tokens:1: the role is") && !err.contains("secret-token"),
        "{err}"
    );
    assert!(
        err.starts_with("tokens: ") && !err.contains("tokens: tokens"),
        "{err}"
    );
}

/// The real binary with tokens from `SEGMENTD_TOKENS` and logs at debug level, in `format`:
/// the tokens take effect, and nothing it logs holds a token, an e-mail or a customer's values,
/// whether the calls succeed or fail.
fn logs_hold_no_secrets(format: &str) {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let addr = free_local_addr();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_segmentd"))
        .args(["--listen", &addr.to_string(), "--data-dir"])
        .arg(dir.path().join("data"))
        .args(["--log-format", format])
        .env("SEGMENTD_TOKENS", format!("admin {ADMIN}, reader {READER}"))
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start segmentd");
    const EMAIL: &str = "very.private.person@example.com";
    const VALUE: &str = "privatevalue4711";
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let server = TestServer::external(addr);
        server.wait_serving().await;
        let mut ingest = server.ingest().await;
        let upsert = |token: Option<&str>, vip: pb::Value| {
            with_token(
                pb::UpsertCustomersRequest::new(vec![customer(
                    "private-1",
                    Some(EMAIL),
                    &[("tags", list(&[VALUE])), ("vip", vip)],
                )]),
                token,
            )
        };
        // The environment's tokens are in force: none and a reader's are refused, an admin's taken.
        let none = ingest.upsert_customers(upsert(None, b(true))).await.unwrap_err();
        assert_eq!(none.code(), Code::Unauthenticated);
        let reader = ingest
            .upsert_customers(upsert(Some(READER), b(true)))
            .await
            .unwrap_err();
        assert_eq!(reader.code(), Code::PermissionDenied);
        ingest
            .upsert_customers(upsert(Some(ADMIN), b(true)))
            .await
            .unwrap();
        // A refused value, a wrong token, a lookup by e-mail.
        let bad = ingest
            .upsert_customers(upsert(Some(ADMIN), s(VALUE)))
            .await
            .unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument);
        let wrong = ingest
            .upsert_customers(upsert(Some("not-a-token-but-long-enough"), b(true)))
            .await
            .unwrap_err();
        assert_eq!(wrong.code(), Code::Unauthenticated);
        ingest
            .get_customer(with_token(by_email(EMAIL), Some(ADMIN)))
            .await
            .unwrap();
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let mut logs = String::new();
    child.stdout.take().unwrap().read_to_string(&mut logs).unwrap();
    child.stderr.take().unwrap().read_to_string(&mut logs).unwrap();
    assert!(
        logs.lines().count() > 3,
        "{format}: too little logged to prove anything: {logs}"
    );
    for secret in [ADMIN, READER, EMAIL, VALUE, "not-a-token-but-long-enough"] {
        assert!(
            !logs.contains(secret),
            "{format}: the log holds {secret:?}:\n{logs}"
        );
    }
    if format == "json" {
        for line in logs.lines().filter(|l| !l.is_empty()) {
            assert!(line.starts_with('{') && line.ends_with('}'), "not JSON: {line}");
        }
    }
}

#[test]
fn tokens_from_the_environment_apply_and_text_logs_hold_no_secrets() {
    logs_hold_no_secrets("text");
}

#[test]
fn json_logs_hold_no_secrets() {
    logs_hold_no_secrets("json");
}
