//! Health, reflection, the data-directory lock and metrics of a real server.

mod common;

use common::*;
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
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let metrics_addr = probe.local_addr().unwrap();
    drop(probe);
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
    conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains("\nsegmentd_customers 2\n"), "{body}");
    assert!(body.contains("# TYPE segmentd_bytes_used gauge"), "{body}");
}
