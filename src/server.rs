//! Wires the engine, the gRPC services, health, reflection and metrics, and serves until shutdown.

use std::fs::{self, File};
use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::api::activities::ActivitiesApi;
use crate::api::membership::MembershipApi;
use crate::api::pb::activities_server::ActivitiesServer;
use crate::api::pb::admin_server::AdminServer;
use crate::api::pb::ingest_server::IngestServer;
use crate::api::pb::membership_server::MembershipServer;
use crate::api::pb::segments_server::SegmentsServer;
use crate::api::segments::SegmentsApi;
use crate::api::{FILE_DESCRIPTOR_SET, Limits, admin::AdminApi, ingest::IngestApi};
use crate::config::Config;
use crate::engine::Engine;

/// HTTP/2 flow-control windows. h2 sizes its small-DATA-frame flood guard from the connection
/// window (half of it), so large windows let a client stream 100,000 one-customer messages
/// without being cut off with ENHANCE_YOUR_CALM, while the stream window bounds what one stream
/// can buffer.
const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("data directory {0} is in use by another segmentd")]
    DataDirLocked(String),
    #[error("metrics address {addr}: {source}")]
    Metrics { addr: String, source: std::io::Error },
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Serves gRPC on `listener` until `shutdown` completes, then drains in-flight calls.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let _lock = lock_data_dir(&config)?;
    let engine = Engine::new();
    engine.store().set_eval_threads(config.eval_threads);
    let limits = Limits {
        max_batch: config.max_batch,
    };

    let metrics = match config.metrics_addr {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Metrics {
                    addr: addr.to_string(),
                    source,
                })?;
            tracing::info!(addr = %l.local_addr().unwrap_or(addr), "metrics on /metrics");
            Some(tokio::spawn(crate::metrics::serve(l, engine.clone())))
        }
        None => None,
    };

    let ingest = IngestServer::new(IngestApi::new(engine.clone(), limits))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let admin = AdminServer::new(AdminApi::new(engine.clone()))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);

    let segments = SegmentsServer::new(SegmentsApi::new(engine.clone()))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let membership = MembershipServer::new(MembershipApi::new(engine.clone()));
    let activities = ActivitiesServer::new(ActivitiesApi::new(engine.clone(), limits))
        .max_decoding_message_size(config.max_message_bytes);

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<IngestServer<IngestApi>>().await;
    health.set_serving::<AdminServer<AdminApi>>().await;
    health.set_serving::<SegmentsServer<SegmentsApi>>().await;
    health.set_serving::<MembershipServer<MembershipApi>>().await;
    health.set_serving::<ActivitiesServer<ActivitiesApi>>().await;

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, data_dir = %config.data_dir.display(), "segmentd serving");
    let result = Server::builder()
        .tcp_nodelay(true)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_stream_window_size(STREAM_WINDOW)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(ingest)
        .add_service(admin)
        .add_service(segments)
        .add_service(membership)
        .add_service(activities)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await;
    if let Some(m) = metrics {
        m.abort();
    }
    tracing::info!("segmentd stopped");
    Ok(result?)
}

/// Creates the data directory and takes an exclusive lock on `LOCK` inside it, held while the
/// returned file lives, so two servers never share one directory.
fn lock_data_dir(config: &Config) -> Result<File, ServerError> {
    let dir = &config.data_dir;
    let err = |source| ServerError::DataDir {
        path: dir.display().to_string(),
        source,
    };
    fs::create_dir_all(dir).map_err(err)?;
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("LOCK"))
        .map_err(err)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(ServerError::DataDirLocked(dir.display().to_string())),
        Err(fs::TryLockError::Error(e)) => Err(err(e)),
    }
}
