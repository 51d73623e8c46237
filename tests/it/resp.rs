//! The Redis protocol port (`--resp-addr`) against a real server: replies byte for byte
//! (pipelined, RESP2 and RESP3), the same answers as gRPC's `Membership`, tokens and their
//! reload, and `redis-cli` itself. Client libraries are tested from Python (redis-py, in
//! `clients/python`).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;
use segmentd::api::pb;

/// A server with the Redis port on, and its address.
async fn server_with_resp(tune: impl FnOnce(&mut segmentd::config::Config)) -> (TestServer, SocketAddr) {
    let resp = free_local_addr();
    let server = TestServer::start_with(|c| {
        c.resp_addr = Some(resp);
        tune(c);
    })
    .await;
    (server, resp)
}

/// A RESP request: an array of bulk strings.
fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    out
}

/// Sends `request` and reads exactly `expected`'s length of reply, which must be `expected`.
async fn exchange(stream: &mut TcpStream, request: &[u8], expected: &str) {
    stream.write_all(request).await.unwrap();
    let mut reply = vec![0u8; expected.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut reply))
        .await
        .unwrap_or_else(|_| panic!("no full reply to {:?}", String::from_utf8_lossy(request)))
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&reply),
        expected,
        "reply to {:?}",
        String::from_utf8_lossy(request)
    );
}

/// The reply to one command on a new connection, read until the server closes it after
/// `QUIT` (sent after the command).
async fn one_reply(addr: SocketAddr, args: &[&str]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut request = command(args);
    request.extend(command(&["QUIT"]));
    stream.write_all(&request).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    let reply = String::from_utf8(reply).unwrap();
    reply.strip_suffix("+OK\r\n").expect("QUIT answered").to_string()
}

/// golfers: c1, c3 (by rule) and c4 (included); c2 is not one; c9 is unknown.
async fn golfers(server: &TestServer) {
    upsert(
        server,
        ["c1", "c2", "c3", "c4"]
            .iter()
            .enumerate()
            .map(|(i, id)| customer(id, None, &[("vip", b(i % 2 == 0))]))
            .collect(),
    )
    .await;
    let mut segment = text_segment("golfers", "vip");
    segment.include_customer_ids = vec!["c4".into()];
    segment.allow_activities = true;
    create(server, segment).await.unwrap();
}

#[tokio::test]
async fn checks_answer_as_membership_does_pipelined_in_one_write() {
    let (server, addr) = server_with_resp(|_| {}).await;
    golfers(&server).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();

    // Five commands in one write: five replies, in order.
    let mut pipelined = Vec::new();
    for args in [
        &["SISMEMBER", "golfers", "c1"][..],
        &["sismember", "golfers", "c2"],
        &["SISMEMBER", "golfers", "c9"],
        &["SMISMEMBER", "golfers", "c1", "c2", "c3", "c4", "c9"],
        &["SCARD", "golfers"],
    ] {
        pipelined.extend(command(args));
    }
    exchange(
        &mut stream,
        &pipelined,
        ":1\r\n:0\r\n:0\r\n*5\r\n:1\r\n:0\r\n:1\r\n:1\r\n:0\r\n:3\r\n",
    )
    .await;
    // The same answers as gRPC's.
    for c in ["c1", "c2", "c3", "c4", "c9"] {
        let (member, _) = is_member(&server, c, "golfers").await;
        let reply = one_reply(addr, &["SISMEMBER", "golfers", c]).await;
        assert_eq!(reply, format!(":{}\r\n", u8::from(member)), "{c}");
    }
    assert_eq!(
        one_reply(addr, &["SCARD", "golfers"]).await,
        format!(":{}\r\n", size(&server, "golfers").await)
    );

    // A change through the activity engine shows at once.
    server
        .activities()
        .await
        .remove_from_segment(pb::RemoveFromSegmentRequest {
            segment_id: "golfers".into(),
            customer_ids: vec!["c4".into()],
            activity_id: "a1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    exchange(
        &mut stream,
        &[
            command(&["SISMEMBER", "golfers", "c4"]),
            command(&["SCARD", "golfers"]),
        ]
        .concat(),
        ":0\r\n:2\r\n",
    )
    .await;
    server.stop().await.unwrap();
}

#[tokio::test]
async fn bad_commands_get_errors_that_say_what_is_supported_and_change_nothing() {
    let (server, addr) = server_with_resp(|_| {}).await;
    golfers(&server).await;
    let cases: &[(&[&str], &str)] = &[
        (
            &["SISMEMBER", "nobody-here", "c1"],
            "-ERR no such segment 'nobody-here'\r\n",
        ),
        (
            &["SCARD", "nobody-here"],
            "-ERR no such segment 'nobody-here'\r\n",
        ),
        (
            &["SISMEMBER", "golfers"],
            "-ERR wrong number of arguments for 'sismember' command\r\n",
        ),
        (
            &["SMISMEMBER", "golfers"],
            "-ERR wrong number of arguments for 'smismember' command\r\n",
        ),
        (
            &["SCARD", "golfers", "x"],
            "-ERR wrong number of arguments for 'scard' command\r\n",
        ),
        (
            &["SISMEMBER", "golfers", ""],
            "-ERR customer_id: must not be empty\r\n",
        ),
        (&["SELECT", "1"], "-ERR segmentd has one database, 0\r\n"),
        (&["HELLO", "4"], "-NOPROTO unsupported protocol version\r\n"),
    ];
    for (args, expected) in cases {
        assert_eq!(&one_reply(addr, args).await, expected, "{args:?}");
    }
    let refused = one_reply(addr, &["SADD", "golfers", "c2"]).await;
    assert!(
        refused.starts_with("-ERR unknown command 'SADD': segmentd answers SISMEMBER, SMISMEMBER, SCARD"),
        "{refused}"
    );
    assert_eq!(size(&server, "golfers").await, 3, "nothing changed");

    // The usual connection commands.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    exchange(&mut stream, &command(&["PING"]), "+PONG\r\n").await;
    exchange(&mut stream, &command(&["PING", "hi"]), "$2\r\nhi\r\n").await;
    exchange(&mut stream, &command(&["ECHO", "x y"]), "$3\r\nx y\r\n").await;
    exchange(&mut stream, &command(&["CLIENT", "GETNAME"]), "$-1\r\n").await;
    exchange(
        &mut stream,
        &command(&["CLIENT", "SETNAME", "promo-7"]),
        "+OK\r\n",
    )
    .await;
    exchange(&mut stream, &command(&["CLIENT", "GETNAME"]), "$7\r\npromo-7\r\n").await;
    exchange(
        &mut stream,
        &command(&["CLIENT", "SETINFO", "LIB-NAME", "x"]),
        "+OK\r\n",
    )
    .await;
    exchange(&mut stream, &command(&["SELECT", "0"]), "+OK\r\n").await;

    // HELLO 3 answers a map; after it, a missing name is RESP3's null.
    let hello = format!(
        "%7\r\n$6\r\nserver\r\n$8\r\nsegmentd\r\n$7\r\nversion\r\n${}\r\n{}\r\n$5\r\nproto\r\n:3\r\n",
        env!("CARGO_PKG_VERSION").len(),
        env!("CARGO_PKG_VERSION")
    );
    stream
        .write_all(&command(&["HELLO", "3", "SETNAME", "x"]))
        .await
        .unwrap();
    let mut reply = vec![0u8; hello.len()];
    stream.read_exact(&mut reply).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&reply), hello);
    // The rest of the map (id, mode, role, modules), then the next reply.
    let mut rest = Vec::new();
    while !rest.ends_with(b"$7\r\nmodules\r\n*0\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        rest.push(byte[0]);
    }
    exchange(&mut stream, &command(&["CLIENT", "GETNAME"]), "$1\r\nx\r\n").await;

    // Not an array of bulk strings: a protocol error, and the connection is closed.
    stream.write_all(b"+PING\r\n").await.unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.unwrap();
    assert_eq!(
        reply,
        "-Protocol error: a command is an array of bulk strings\r\n"
    );
    server.stop().await.unwrap();
}

#[tokio::test]
async fn tokens_are_required_checked_by_role_and_withdrawn_on_reload() {
    const ADMIN: &str = "admin-token-0123456789";
    const READER: &str = "reader-token-0123456789";
    const LOADER: &str = "loader-token-0123456789";
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!("admin {ADMIN}\nreader {READER}\nloader {LOADER}\n"),
    )
    .unwrap();
    let (server, addr) = server_with_resp(|c| c.tokens_file = Some(tokens.clone())).await;
    let not_found = "-ERR no such segment 'golfers'\r\n";

    let mut stream = TcpStream::connect(addr).await.unwrap();
    exchange(
        &mut stream,
        &command(&["SCARD", "golfers"]),
        "-NOAUTH Authentication required.\r\n",
    )
    .await;
    exchange(
        &mut stream,
        &command(&["PING"]),
        "-NOAUTH Authentication required.\r\n",
    )
    .await;
    exchange(
        &mut stream,
        &command(&["AUTH", "reader-token-WRONG-456789"]),
        "-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    )
    .await;
    exchange(
        &mut stream,
        &command(&["AUTH", LOADER]),
        "-NOPERM the `loader` role may not check memberships (a `reader` or `admin` token may)\r\n",
    )
    .await;
    exchange(
        &mut stream,
        &command(&["SCARD", "golfers"]),
        "-NOAUTH Authentication required.\r\n",
    )
    .await;
    // A reader, with a user name (Redis 6's form), then the check runs.
    exchange(&mut stream, &command(&["AUTH", "default", READER]), "+OK\r\n").await;
    exchange(&mut stream, &command(&["SCARD", "golfers"]), not_found).await;
    // HELLO's AUTH, on a second connection; an admin token serves too.
    let mut admin = TcpStream::connect(addr).await.unwrap();
    admin
        .write_all(&command(&["HELLO", "2", "AUTH", "x", ADMIN]))
        .await
        .unwrap();
    let mut head = [0u8; 4];
    admin.read_exact(&mut head).await.unwrap();
    assert_eq!(
        &head, b"*14\r",
        "RESP2's HELLO: a flat array of 7 names and values"
    );

    // The reader's token withdrawn: the connection that used it is refused at its next command.
    let _hup = crate::auth::HUP.lock().await;
    std::fs::write(&tokens, format!("admin {ADMIN}\n")).unwrap();
    crate::auth::hangup();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        stream.write_all(&command(&["SCARD", "golfers"])).await.unwrap();
        let mut reply = vec![0u8; 6];
        stream.read_exact(&mut reply).await.unwrap();
        if reply == b"-NOAUT" {
            let mut rest = Vec::new();
            while !rest.ends_with(b"\r\n") {
                let mut byte = [0u8; 1];
                stream.read_exact(&mut byte).await.unwrap();
                rest.push(byte[0]);
            }
            assert_eq!(
                String::from_utf8_lossy(&rest),
                "H Authentication required: this connection's token is no longer accepted.\r\n"
            );
            break;
        }
        // Not reloaded yet: the rest of the not-found error.
        let mut rest = vec![0u8; not_found.len() - 6];
        stream.read_exact(&mut rest).await.unwrap();
        assert!(std::time::Instant::now() < deadline, "tokens not reloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_non_loopback_resp_address_without_tokens_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = segmentd::config::Config::with_data_dir(dir.path().join("data"));
    config.resp_addr = Some("0.0.0.0:0".parse().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = segmentd::server::run(listener, config, std::future::pending())
        .await
        .expect_err("refused");
    assert!(
        err.to_string().contains("0.0.0.0:0 is not a loopback address"),
        "{err}"
    );
}

/// `redis-cli`, the Redis project's own client, against the port. It comes from Debian's
/// `redis-tools`; CI installs it and sets `SEGMENTD_REQUIRE_REDIS_CLI` so that its absence
/// fails there rather than skipping.
#[tokio::test]
async fn redis_cli_checks_memberships() {
    let present = std::process::Command::new("redis-cli")
        .arg("--version")
        .output()
        .is_ok();
    if !present {
        assert!(
            std::env::var_os("SEGMENTD_REQUIRE_REDIS_CLI").is_none(),
            "redis-cli is required (apt-get install redis-tools)"
        );
        eprintln!("redis-cli not installed: skipped (apt-get install redis-tools)");
        return;
    }
    let (server, addr) = server_with_resp(|_| {}).await;
    golfers(&server).await;
    let cli = move |args: &[&str]| {
        let port = addr.port().to_string();
        let out = std::process::Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let (a, b) = tokio::task::spawn_blocking(move || {
        (
            [
                cli(&["SISMEMBER", "golfers", "c1"]),
                cli(&["SISMEMBER", "golfers", "c2"]),
                cli(&["SMISMEMBER", "golfers", "c3", "c9", "c4"]),
                cli(&["SCARD", "golfers"]),
                cli(&["PING"]),
                cli(&["SISMEMBER", "nope", "c1"]),
            ],
            cli(&["-3", "HELLO", "3"]),
        )
    })
    .await
    .unwrap();
    assert_eq!(a[0], "1\n");
    assert_eq!(a[1], "0\n");
    assert_eq!(a[2], "1\n0\n1\n");
    assert_eq!(a[3], "3\n");
    assert_eq!(a[4], "PONG\n");
    assert_eq!(a[5].trim_end(), "ERR no such segment 'nope'");
    assert!(b.contains("segmentd"), "{b}");
    server.stop().await.unwrap();
}
