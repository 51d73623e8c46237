//! TLS with client-certificate verification against a real server (test certificates in
//! tests/fixtures/tls).

use std::path::PathBuf;
use std::time::Duration;

use segmentd::api::pb::{self, admin_client::AdminClient};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tls")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

async fn stats(addr: std::net::SocketAddr, tls: Option<ClientTlsConfig>) -> Result<u64, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://localhost:{}", addr.port()))
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    AdminClient::new(channel)
        .stats(pb::StatsRequest {})
        .await
        .map(|r| r.into_inner().customers)
        .map_err(|s| format!("{s:?}"))
}

#[tokio::test]
async fn mutual_tls_round_trip_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = segmentd::config::Config::with_data_dir(dir.path().join("data"));
    config.fsync = segmentd::wal::FsyncMode::Never;
    config.tls_cert = Some(fixture("server.pem"));
    config.tls_key = Some(fixture("server.key"));
    config.tls_client_ca = Some(fixture("ca.pem"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(segmentd::server::run(listener, config, async {
        let _ = stopped.await;
    }));
    let trusted = || {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.pem")))
            .domain_name("localhost")
    };
    let with_identity = || trusted().identity(Identity::from_pem(read("client.pem"), read("client.key")));
    // Answers once recovered.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match stats(addr, Some(with_identity())).await {
            Ok(n) => {
                assert_eq!(n, 0);
                break;
            }
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Without a client certificate, or in plain text, no call gets through.
    assert!(stats(addr, Some(trusted())).await.is_err());
    assert!(stats(addr, None).await.is_err());
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
