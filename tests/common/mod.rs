//! A real segmentd on 127.0.0.1:0 with a temporary data directory, and clients for it.
#![allow(dead_code)]

use std::net::SocketAddr;

use segmentd::api::pb::activities_client::ActivitiesClient;
use segmentd::api::pb::admin_client::AdminClient;
use segmentd::api::pb::ingest_client::IngestClient;
use segmentd::api::pb::membership_client::MembershipClient;
use segmentd::api::pb::segments_client::SegmentsClient;
use segmentd::api::pb::{self, value::Kind};
use segmentd::config::Config;
use tokio::sync::oneshot;
use tonic::transport::{Channel, Endpoint};

pub struct TestServer {
    pub addr: SocketAddr,
    /// The data directory.
    pub data: std::path::PathBuf,
    /// Owns the data directory's parent when the server made it.
    pub dir: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), segmentd::server::ServerError>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Starts a server after `tune` adjusts its configuration.
    pub async fn start_with(tune: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = Self::start_at(dir.path().join("data"), tune).await;
        server.dir = Some(dir);
        server
    }

    /// Starts a server on an existing (or new) data directory and waits until it serves.
    pub async fn start_at(data: std::path::PathBuf, tune: impl FnOnce(&mut Config)) -> TestServer {
        let server = Self::spawn_at(data, tune).await;
        server.wait_serving().await;
        server
    }

    /// Starts a server without waiting for recovery.
    pub async fn spawn_at(data: std::path::PathBuf, tune: impl FnOnce(&mut Config)) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::spawn_with(listener, data, tune)
    }

    /// Starts a server on `addr` (a restart on the port its clients reconnect to) and waits
    /// until it serves.
    pub async fn start_on(
        addr: SocketAddr,
        data: std::path::PathBuf,
        tune: impl FnOnce(&mut Config),
    ) -> TestServer {
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => panic!("bind {addr}: {e}"),
            }
        };
        let server = Self::spawn_with(listener, data, tune);
        server.wait_serving().await;
        server
    }

    fn spawn_with(
        listener: tokio::net::TcpListener,
        data: std::path::PathBuf,
        tune: impl FnOnce(&mut Config),
    ) -> TestServer {
        let mut config = Config::with_data_dir(data.clone());
        // Tests favour speed; durability tests that need fsync set it themselves.
        config.fsync = segmentd::wal::FsyncMode::Never;
        tune(&mut config);
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(segmentd::server::run(listener, config, async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            data,
            dir: None,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A handle to a server running elsewhere (another process), for its clients.
    pub fn external(addr: SocketAddr) -> TestServer {
        TestServer {
            addr,
            data: std::path::PathBuf::new(),
            dir: None,
            stop: None,
            task: None,
        }
    }

    /// Waits (up to 30 s) until health reports SERVING.
    pub async fn wait_serving(&self) {
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Ok(channel) = Endpoint::from_shared(format!("http://{}", self.addr))
                .unwrap()
                .connect()
                .await
            {
                let reply = HealthClient::new(channel)
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await;
                if reply.is_ok_and(|r| r.into_inner().status == 1) {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "server did not become SERVING"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub async fn channel(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect")
    }

    pub async fn ingest(&self) -> IngestClient<Channel> {
        IngestClient::new(self.channel().await)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    pub async fn admin(&self) -> AdminClient<Channel> {
        AdminClient::new(self.channel().await)
    }

    pub async fn segments(&self) -> SegmentsClient<Channel> {
        SegmentsClient::new(self.channel().await)
    }

    pub async fn membership(&self) -> MembershipClient<Channel> {
        MembershipClient::new(self.channel().await)
    }

    pub async fn activities(&self) -> ActivitiesClient<Channel> {
        ActivitiesClient::new(self.channel().await)
    }

    /// Stops the server and waits for it to finish.
    pub async fn stop(mut self) -> Result<(), segmentd::server::ServerError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.take().unwrap().await.expect("server task")
    }

    /// Waits for the server to end by itself (a failed recovery).
    pub async fn finished(mut self) -> Result<(), segmentd::server::ServerError> {
        let task = self.task.take().unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(30), task)
            .await
            .expect("server ends")
            .expect("server task")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub fn s(v: &str) -> pb::Value {
    pb::Value {
        kind: Some(Kind::StringValue(v.to_string())),
    }
}

pub fn i(v: i64) -> pb::Value {
    pb::Value {
        kind: Some(Kind::IntValue(v)),
    }
}

pub fn b(v: bool) -> pb::Value {
    pb::Value {
        kind: Some(Kind::BoolValue(v)),
    }
}

pub fn f(v: f64) -> pb::Value {
    pb::Value {
        kind: Some(Kind::DoubleValue(v)),
    }
}

pub fn date(year: i32, month: i32, day: i32) -> pb::Value {
    pb::Value {
        kind: Some(Kind::DateValue(pb::Date { year, month, day })),
    }
}

pub fn ts(seconds: i64) -> pb::Value {
    pb::Value {
        kind: Some(Kind::TimestampValue(prost_types::Timestamp { seconds, nanos: 0 })),
    }
}

pub fn list(items: &[&str]) -> pb::Value {
    pb::Value {
        kind: Some(Kind::ListValue(pb::StringList {
            values: items.iter().map(|s| s.to_string()).collect(),
        })),
    }
}

pub fn clear() -> pb::Value {
    pb::Value { kind: None }
}

/// A customer with an id, an optional e-mail and attributes.
pub fn customer(id: &str, email: Option<&str>, attrs: &[(&str, pb::Value)]) -> pb::Customer {
    pb::Customer {
        customer_id: id.to_string(),
        email: email.map(str::to_string),
        attributes: attrs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
    }
}

pub fn by_id(id: &str) -> pb::GetCustomerRequest {
    pb::GetCustomerRequest {
        key: Some(pb::get_customer_request::Key::CustomerId(id.to_string())),
    }
}

pub fn by_email(email: &str) -> pb::GetCustomerRequest {
    pb::GetCustomerRequest {
        key: Some(pb::get_customer_request::Key::Email(email.to_string())),
    }
}

pub fn delete_id(id: &str) -> pb::DeleteCustomerRequest {
    pb::DeleteCustomerRequest {
        key: Some(pb::delete_customer_request::Key::CustomerId(id.to_string())),
    }
}

pub fn order(id: &str, customer: &str, seconds: i64, amount: i64, promo: bool, cats: &[&str]) -> pb::Order {
    pb::Order {
        order_id: id.to_string(),
        customer_id: customer.to_string(),
        placed_at: Some(prost_types::Timestamp { seconds, nanos: 0 }),
        amount_minor: amount,
        promotion: promo,
        categories: cats.iter().map(|s| s.to_string()).collect(),
        brands: vec![],
    }
}

/// Reads a customer back.
pub async fn get(client: &mut IngestClient<Channel>, id: &str) -> Result<pb::Customer, tonic::Status> {
    Ok(client
        .get_customer(by_id(id))
        .await?
        .into_inner()
        .customer
        .unwrap())
}

/// The server's `Admin.Stats`.
pub async fn stats(server: &TestServer) -> pb::StatsResponse {
    server
        .admin()
        .await
        .stats(pb::StatsRequest {})
        .await
        .unwrap()
        .into_inner()
}

/// The number of customers the server holds.
pub async fn customer_count(server: &TestServer) -> u64 {
    stats(server).await.customers
}

/// A segment defined by its text rule.
pub fn text_segment(id: &str, rule_text: &str) -> pb::Segment {
    pb::Segment {
        segment_id: id.to_string(),
        name: id.to_string(),
        rule_text: rule_text.to_string(),
        ..Default::default()
    }
}

/// Creates a segment and returns it (with its size), or the error.
pub async fn create(server: &TestServer, segment: pb::Segment) -> Result<pb::Segment, tonic::Status> {
    Ok(server
        .segments()
        .await
        .create_segment(pb::CreateSegmentRequest {
            segment: Some(segment),
        })
        .await?
        .into_inner())
}

/// Whether `customer` is in `segment`, and whether the customer is known.
pub async fn is_member(server: &TestServer, customer: &str, segment: &str) -> (bool, bool) {
    let r = server
        .membership()
        .await
        .is_member(pb::IsMemberRequest {
            customer_id: customer.to_string(),
            segment_id: segment.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    (r.member, r.known_customer)
}

/// The size of a segment as the server reports it.
pub async fn size(server: &TestServer, segment: &str) -> u64 {
    server
        .segments()
        .await
        .get_segment(pb::GetSegmentRequest {
            segment_id: segment.to_string(),
        })
        .await
        .unwrap()
        .into_inner()
        .size
}

/// Upserts customers, panicking on error.
/// Records `orders`, failing the test if they are refused.
pub async fn record_orders(server: &TestServer, orders: Vec<pb::Order>) {
    server
        .ingest()
        .await
        .record_orders(pb::RecordOrdersRequest { orders })
        .await
        .unwrap();
}

pub async fn upsert(server: &TestServer, customers: Vec<pb::Customer>) {
    server
        .ingest()
        .await
        .upsert_customers(pb::UpsertCustomersRequest::new(customers))
        .await
        .unwrap();
}

/// Scrapes `/metrics` and parses every sample line (`name{labels} value`).
pub async fn scrape(addr: std::net::SocketAddr) -> std::collections::BTreeMap<String, f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).await.unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    let mut out = std::collections::BTreeMap::new();
    for line in body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (name, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {line}"));
        assert!(out.insert(name.to_string(), value).is_none(), "{name} twice");
    }
    out
}

/// Defines a custom `text` attribute.
pub async fn define_text(server: &TestServer, name: &str) {
    server
        .admin()
        .await
        .define_attribute(pb::DefineAttributeRequest {
            name: name.into(),
            r#type: pb::AttributeType::Text as i32,
            description: String::new(),
        })
        .await
        .unwrap();
}

/// A loopback address with a port free a moment ago (for a listener the server binds itself,
/// such as `--metrics-addr`).
pub fn free_local_addr() -> std::net::SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}
