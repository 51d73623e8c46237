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

type Running = (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), segmentd::server::ServerError>>,
);

/// A server verifying client certificates, given `handshake_secs` to complete a TLS handshake;
/// its address, its stop signal and its task.
async fn mutual_tls_server(dir: &std::path::Path, handshake_secs: u64) -> Running {
    tls_server(dir, handshake_secs, true).await
}

/// A TLS server, verifying client certificates when `client_ca`.
async fn tls_server(dir: &std::path::Path, handshake_secs: u64, client_ca: bool) -> Running {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = segmentd::config::Config::with_data_dir(dir.join("data"));
    config.fsync = segmentd::wal::FsyncMode::Never;
    config.tls_cert = Some(fixture("server.pem"));
    config.tls_key = Some(fixture("server.key"));
    config.tls_client_ca = client_ca.then(|| fixture("ca.pem"));
    config.tls_handshake_timeout_secs = handshake_secs;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(segmentd::server::run(listener, config, async {
        let _ = stopped.await;
    }));
    (addr, stop, server)
}

fn trusted() -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .domain_name("localhost")
}

fn with_identity() -> ClientTlsConfig {
    trusted().identity(Identity::from_pem(read("client.pem"), read("client.key")))
}

/// Waits until the server answers a client with a certificate.
async fn until_answering(addr: std::net::SocketAddr) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match stats(addr, Some(with_identity())).await {
            Ok(n) => {
                assert_eq!(n, 0);
                return;
            }
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn mutual_tls_round_trip_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop, server) = mutual_tls_server(dir.path(), 10).await;
    until_answering(addr).await;
    // Without a client certificate, or in plain text, no call gets through.
    // Without a certificate the server ends the handshake with TLS 1.3's certificate_required.
    let no_cert = stats(addr, Some(trusted())).await.unwrap_err();
    assert!(no_cert.contains("CertificateRequired"), "{no_cert}");
    // Plain text never reaches a service: the connection is dropped under it.
    let plain = stats(addr, None).await.unwrap_err();
    assert!(plain.contains("transport error"), "{plain}");
    // A certificate from another CA: refused in the handshake as one it cannot trust.
    let stranger = trusted().identity(Identity::from_pem(read("stranger.pem"), read("stranger.key")));
    let refused = stats(addr, Some(stranger)).await.unwrap_err();
    assert!(
        refused.contains("UnknownCA") || refused.contains("BadCertificate"),
        "{refused}"
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn tls_without_client_certificates_serves_any_client_that_trusts_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop, server) = tls_server(dir.path(), 10, false).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while let Err(e) = stats(addr, Some(trusted())).await {
        assert!(std::time::Instant::now() < deadline, "{e}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A client certificate is not asked for, and one sent does no harm.
    assert_eq!(stats(addr, Some(with_identity())).await, Ok(0));
    // A client that does not trust the server's CA stops in the handshake; plain text too.
    let untrusting = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("stranger.pem")))
        .domain_name("localhost");
    let err = stats(addr, Some(untrusting)).await.unwrap_err();
    assert!(
        err.contains("invalid peer certificate") || err.contains("UnknownIssuer"),
        "{err}"
    );
    assert!(stats(addr, None).await.unwrap_err().contains("transport error"));
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// A connection that does not complete its handshake in time is closed: one that says nothing,
/// and one that announces a long handshake record and stops (a stalled or hostile peer).
/// Meanwhile the server goes on answering others.
#[tokio::test]
async fn stalled_handshakes_are_closed_after_the_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop, server) = mutual_tls_server(dir.path(), 1).await;
    until_answering(addr).await;
    let started = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A handshake record header announcing 16,384 bytes, then 5 of them.
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x40, 0x00, 1, 0, 0x3f, 0xfc, 3])
        .await
        .unwrap();
    assert_eq!(
        stats(addr, Some(with_identity())).await,
        Ok(0),
        "others are served"
    );
    for (name, conn) in [("silent", &mut silent), ("partial", &mut partial)] {
        let mut buf = [0u8; 64];
        let closed = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "{name} connection still open after 10 s");
    }
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "closed after {waited:?}, before the 1 s timeout"
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
