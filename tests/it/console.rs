//! The console: its page on `--console-addr`, gRPC-Web on the gRPC port for the console's
//! origin only (and not at all without the console), and the calls made for it: sizes over
//! time and watching from now on.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use prost::Message;

use crate::common::*;
use segmentd::api::pb;
use tonic::Code;

/// One HTTP/1.1 request to `addr`; the response's status, headers and whole body.
async fn http(
    addr: SocketAddr,
    request: http::Request<Full<Bytes>>,
) -> hyper::Result<(u16, http::HeaderMap, Bytes)> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let response = send.send_request(request).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((parts.status.as_u16(), parts.headers, body))
}

fn get(addr: SocketAddr, path: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(path)
        .header("host", addr.to_string())
        .body(Full::default())
        .unwrap()
}

/// A gRPC-Web call of `method` with `message`, from a page of `origin`.
fn grpc_web(
    addr: SocketAddr,
    method: &str,
    message: &impl Message,
    origin: &str,
) -> http::Request<Full<Bytes>> {
    let payload = message.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    framed.extend_from_slice(&payload);
    http::Request::post(method)
        .header("host", addr.to_string())
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("origin", origin)
        .body(Full::new(Bytes::from(framed)))
        .unwrap()
}

/// The data frames and the trailers of a gRPC-Web response body.
fn frames(mut body: &[u8]) -> (Vec<Vec<u8>>, String) {
    let (mut data, mut trailers) = (Vec::new(), String::new());
    while body.len() >= 5 {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        let frame = body[5..5 + len].to_vec();
        if body[0] & 0x80 != 0 {
            trailers.push_str(&String::from_utf8(frame).unwrap());
        } else {
            data.push(frame);
        }
        body = &body[5 + len..];
    }
    (data, trailers)
}

#[tokio::test]
async fn the_console_page_is_served_with_the_grpc_url_and_a_strict_policy() {
    let console = free_local_addr();
    let server = TestServer::start_with(|c| c.console_addr = Some(console)).await;

    let (status, headers, body) = http(console, get(console, "/")).await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    let page = String::from_utf8(body.to_vec()).unwrap();
    let grpc = format!("http://{}", server.addr);
    assert!(
        page.contains(&format!(r#"<meta name="segmentd-grpc" content="{grpc}">"#)),
        "{page}"
    );
    assert!(page.contains(r#"<script type="module" src="/console.js">"#));
    let policy = headers["content-security-policy"].to_str().unwrap();
    assert!(
        policy.contains(&format!("connect-src 'self' {grpc};")),
        "{policy}"
    );
    assert!(policy.starts_with("default-src 'none'"), "{policy}");

    let (status, headers, script) = http(console, get(console, "/console.js")).await.unwrap();
    assert_eq!(
        (status, headers["content-type"].to_str().unwrap()),
        (200, "text/javascript; charset=utf-8")
    );
    assert!(script.len() > 10_000, "the built console, not a placeholder");
    let (status, headers, _) = http(console, get(console, "/console.css")).await.unwrap();
    assert_eq!(
        (status, headers["content-type"].to_str().unwrap()),
        (200, "text/css; charset=utf-8")
    );
    let (status, _, _) = http(console, get(console, "/admin")).await.unwrap();
    assert_eq!(status, 404);
}

#[tokio::test]
async fn grpc_web_answers_the_consoles_origin_and_only_it() {
    let console = free_local_addr();
    let server = TestServer::start_with(|c| c.console_addr = Some(console)).await;
    let origin = format!("http://{console}");

    // The browser's preflight: allowed for the console's origin (and its localhost name)...
    for allowed in [origin.clone(), format!("http://localhost:{}", console.port())] {
        let preflight = http::Request::options("/segmentd.v1.Admin/GetSchema")
            .header("host", server.addr.to_string())
            .header("origin", &allowed)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,x-grpc-web,x-user-agent",
            )
            .body(Full::default())
            .unwrap();
        let (status, headers, _) = http(server.addr, preflight).await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(headers["access-control-allow-origin"], allowed.as_str());
        let allowed_headers = headers["access-control-allow-headers"].to_str().unwrap();
        assert!(allowed_headers.contains("authorization"), "{allowed_headers}");
    }
    // ...not for another page.
    let other = http::Request::options("/segmentd.v1.Admin/GetSchema")
        .header("host", server.addr.to_string())
        .header("origin", "http://shop.example:8080")
        .header("access-control-request-method", "POST")
        .body(Full::default())
        .unwrap();
    let (_, headers, _) = http(server.addr, other).await.unwrap();
    assert!(
        headers.get("access-control-allow-origin").is_none(),
        "{headers:?}"
    );

    // A call: the same answer as over gRPC, the status in the trailers, readable by the page.
    let (status, headers, body) = http(
        server.addr,
        grpc_web(
            server.addr,
            "/segmentd.v1.Admin/GetSchema",
            &pb::GetSchemaRequest {},
            &origin,
        ),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/grpc-web+proto");
    assert_eq!(headers["access-control-allow-origin"], origin.as_str());
    let exposed = headers["access-control-expose-headers"].to_str().unwrap();
    assert!(
        exposed.contains("grpc-status") && exposed.contains("grpc-message"),
        "{exposed}"
    );
    let (data, trailers) = frames(&body);
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    let over_web = pb::GetSchemaResponse::decode(&data[0][..]).unwrap();
    let over_grpc = server
        .admin()
        .await
        .get_schema(pb::GetSchemaRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(over_web, over_grpc);

    // An error keeps its code and message.
    let (_, headers, body) = http(
        server.addr,
        grpc_web(
            server.addr,
            "/segmentd.v1.Segments/PreviewSegment",
            &pb::PreviewSegmentRequest {
                rule_text: "age >".into(),
                ..Default::default()
            },
            &origin,
        ),
    )
    .await
    .unwrap();
    // Trailers-only (in the headers) or in the body's trailer frame.
    let trailers = match headers.get("grpc-status") {
        Some(code) => format!(
            "grpc-status:{}\r\ngrpc-message:{}",
            code.to_str().unwrap(),
            headers.get("grpc-message").map_or("", |m| m.to_str().unwrap())
        ),
        None => frames(&body).1,
    };
    assert!(
        trailers.contains("grpc-status:3\r\n"),
        "INVALID_ARGUMENT: {trailers}"
    );
    assert!(trailers.contains("rule_text"), "the field named: {trailers}");
}

#[tokio::test]
async fn without_the_console_the_grpc_port_speaks_only_http2() {
    let server = TestServer::start().await;
    let answered = http(
        server.addr,
        grpc_web(
            server.addr,
            "/segmentd.v1.Admin/GetSchema",
            &pb::GetSchemaRequest {},
            "http://x",
        ),
    )
    .await;
    assert!(
        answered.is_err(),
        "HTTP/1.1 answered: {:?}",
        answered.map(|r| r.0)
    );
}

#[tokio::test]
async fn sizes_are_sampled_over_time_for_every_segment() {
    let server = TestServer::start_with(|c| c.size_sample_secs = 1).await;
    upsert(
        &server,
        (0..10)
            .map(|n| customer(&format!("c{n}"), None, &[("household_size", i(n))]))
            .collect(),
    )
    .await;
    create(&server, text_segment("big", "household_size >= 5"))
        .await
        .unwrap();
    let mut segments = server.segments().await;
    let history = |segments: &mut pb::segments_client::SegmentsClient<_>, ids: Vec<String>| {
        let mut s = segments.clone();
        async move {
            s.get_size_history(pb::GetSizeHistoryRequest { segment_ids: ids })
                .await
        }
    };
    // Two samples of `big`, a second apart; then one more customer shows in the next.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let h = history(&mut segments, vec![]).await.unwrap().into_inner();
        if h.histories
            .iter()
            .any(|s| s.segment_id == "big" && s.sizes.len() >= 2)
        {
            assert_eq!(h.interval.unwrap().seconds, 1);
            let big = h.histories.iter().find(|s| s.segment_id == "big").unwrap();
            assert!(big.sizes.iter().all(|&n| n == 5), "{big:?}");
            assert!(big.sizes.len() <= h.sample_times.len());
            assert!(h.sample_times.windows(2).all(|w| w[0].seconds <= w[1].seconds));
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not sampled: {h:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    upsert(&server, vec![customer("c10", None, &[("household_size", i(10))])]).await;
    loop {
        let h = history(&mut segments, vec!["big".into()])
            .await
            .unwrap()
            .into_inner();
        if h.histories[0].sizes.last() == Some(&6) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "not sampled: {h:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let err = history(&mut segments, vec!["big".into(), "nope".into()])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("segment_ids[1]"), "{}", err.message());
}

#[tokio::test]
async fn a_watch_from_latest_starts_after_the_newest_event() {
    let server = TestServer::start().await;
    upsert(
        &server,
        (0..5).map(|n| customer(&format!("c{n}"), None, &[])).collect(),
    )
    .await;
    let mut golfers = text_segment("golfers", "");
    golfers.rule_text.clear();
    golfers.allow_activities = true;
    golfers.include_customer_ids = vec!["c0".into(), "c1".into()];
    create(&server, golfers).await.unwrap();

    let mut stream = server
        .segments()
        .await
        .watch_memberships(pb::WatchMembershipsRequest {
            from_latest: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert!(first.events.is_empty());
    assert_eq!(first.last_sequence, 2, "after the two inclusions");
    server
        .activities()
        .await
        .add_to_segment(pb::AddToSegmentRequest {
            segment_id: "golfers".into(),
            customer_ids: vec!["c3".into()],
            activity_id: "a1".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let next = stream.message().await.unwrap().unwrap();
    assert_eq!(next.events.len(), 1);
    assert_eq!(
        (next.events[0].sequence, next.events[0].customer_id.as_str()),
        (3, "c3")
    );

    let err = server
        .segments()
        .await
        .watch_memberships(pb::WatchMembershipsRequest {
            from_latest: true,
            from_sequence: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("from_sequence"), "{}", err.message());
}
