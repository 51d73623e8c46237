//! Wires the engine, the gRPC services, health, reflection and metrics, and serves until shutdown.

use std::fs::{self, File};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Status};
use tonic_health::ServingStatus;

use tokio::net::TcpListener;
use tonic::transport::Server;

use crate::api::activities::ActivitiesApi;
use crate::api::membership::MembershipApi;
use crate::api::pb::activities_server::ActivitiesServer;
use crate::api::pb::admin_server::AdminServer;
use crate::api::pb::ingest_server::IngestServer;
use crate::api::pb::membership_server::MembershipServer;
use crate::api::pb::replication_server::ReplicationServer;
use crate::api::pb::segments_server::SegmentsServer;
use crate::api::replication::ReplicationApi;
use crate::api::segments::SegmentsApi;
use crate::api::{FILE_DESCRIPTOR_SET, admin::AdminApi, ingest::IngestApi};
use crate::auth::Auth;
use crate::codec::Limits;
use crate::config::Config;
use crate::engine::Engine;
use crate::metrics::Metrics;

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
    #[error("TLS: {0}")]
    Tls(String),
    #[error("tokens: {0}")]
    Tokens(crate::error::Error),
    #[error(
        "{0} is not a loopback address and no tokens are configured: give --tokens-file (or SEGMENTD_TOKENS), or --insecure to serve it open"
    )]
    Insecure(String),
    #[error("redis protocol address {addr}: {source}")]
    Resp { addr: String, source: std::io::Error },
    #[error("console address {addr}: {source}")]
    Console { addr: String, source: std::io::Error },
    #[error("metrics address {addr}: {source}")]
    Metrics { addr: String, source: std::io::Error },
    #[error("{0}")]
    Internal(String),
    #[error("recovery failed: {0}")]
    Recovery(crate::error::Error),
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
    let engine = engine_for(&config);
    let limits = Limits {
        max_batch: config.max_batch,
    };
    crate::codec::wire::raise_decode_ceiling(config.max_batch);

    // Tokens: without them, only loopback (unless told otherwise).
    let auth = Arc::new(
        Auth::load(config.tokens_file.as_deref(), config.tokens.clone()).map_err(ServerError::Tokens)?,
    );

    let resp_metrics =
        crate::resp::RespMetrics::new().map_err(|e| ServerError::Internal(format!("metrics: {e}")))?;
    let mut extra: Vec<Box<dyn prometheus::core::Collector>> = vec![Box::new(auth.reload_failures().clone())];
    if config.resp_addr.is_some() {
        extra.extend(resp_metrics.collectors());
    }
    let metrics = Arc::new(
        Metrics::new(
            engine.clone(),
            &[
                FILE_DESCRIPTOR_SET,
                tonic_health::pb::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ],
            extra,
        )
        .map_err(|e| ServerError::Internal(format!("metrics: {e}")))?,
    );
    let metrics_server = match config.metrics_addr {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Metrics {
                    addr: addr.to_string(),
                    source,
                })?;
            tracing::info!(addr = %l.local_addr().unwrap_or(addr), "metrics on /metrics");
            Some(tokio::spawn(crate::metrics::serve(l, metrics.clone())))
        }
        None => None,
    };
    let loopback = listener
        .local_addr()
        .map(|a| a.ip().is_loopback())
        .unwrap_or(false);
    let tls = tls_config(&config)?;
    // Client certificates verified against a CA authenticate callers too.
    if !auth.enabled() && config.tls_client_ca.is_none() {
        let exposed = [
            Some(listener.local_addr().ok()).flatten().filter(|_| !loopback),
            config.resp_addr.filter(|a| !a.ip().is_loopback()),
        ];
        if let Some(addr) = exposed.into_iter().flatten().next()
            && !config.insecure
        {
            return Err(ServerError::Insecure(addr.to_string()));
        }
        tracing::warn!(
            "no tokens (--tokens-file, SEGMENTD_TOKENS): every call is open to whoever reaches the server"
        );
    }
    let resp_server = match config.resp_addr {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Resp {
                    addr: addr.to_string(),
                    source,
                })?;
            let tls = resp_tls(&config)?;
            tracing::info!(addr = %l.local_addr().unwrap_or(addr), tls = tls.is_some(), "redis protocol checks");
            Some(tokio::spawn(crate::resp::serve(
                l,
                engine.clone(),
                auth.clone(),
                tls,
                resp_metrics,
            )))
        }
        None => None,
    };
    // The console: its page on its own port, and gRPC-Web (with CORS for the page's origin) on
    // the gRPC port while it is on.
    let (console_server, grpc_web) = match config.console_addr {
        Some(addr) => {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Console {
                    addr: addr.to_string(),
                    source,
                })?;
            let bound = l.local_addr().unwrap_or(addr);
            let endpoint = crate::console::Endpoint {
                grpc: listener
                    .local_addr()
                    .map_err(|e| ServerError::Internal(format!("gRPC listener: {e}")))?,
                tls: tls.is_some(),
            };
            tracing::info!(addr = %bound, "console on http://{bound}/");
            let origins = crate::console::allowed_origins(bound, &config.console_origin);
            (
                Some(tokio::spawn(crate::httpd::serve(
                    l,
                    crate::console::router(endpoint),
                    "console",
                ))),
                Some((crate::console::cors(origins), tonic_web::GrpcWebLayer::new())),
            )
        }
        None => (None, None),
    };
    #[cfg(unix)]
    let reloader = tokio::spawn(reload_on_hangup(auth.clone()));
    let ingest = IngestServer::new(IngestApi::new(engine.clone(), limits))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let admin = AdminServer::new(AdminApi::new(
        engine.clone(),
        crate::api::admin::Process::starting(&config),
    ))
    .max_decoding_message_size(config.max_message_bytes)
    .max_encoding_message_size(config.max_message_bytes);
    let watch_stall = Duration::from_secs(config.watch_stall_secs);
    let segments = SegmentsServer::new(SegmentsApi::with_watch_stall(engine.clone(), watch_stall))
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    let membership = MembershipServer::new(MembershipApi::new(engine.clone()));
    let replication = ReplicationServer::new(ReplicationApi::new(engine.clone(), watch_stall))
        .max_encoding_message_size(config.max_message_bytes);
    let activities = ActivitiesServer::new(ActivitiesApi::new(engine.clone(), limits))
        .max_decoding_message_size(config.max_message_bytes);

    // NOT_SERVING until the log is replayed; data calls meanwhile get UNAVAILABLE.
    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::NotServing).await;
    let failure: Arc<Mutex<Option<crate::error::Error>>> = Arc::default();
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<()>();
    // Recovery, then (until shutdown aborts it) the wait for a failure of the log.
    let recovery = tokio::spawn(recover(
        engine.clone(),
        config.clone(),
        health.clone(),
        failure.clone(),
        failed_tx,
    ));
    let closing = engine.clone();
    // Snapshots, time flips and scheduled reclassification, until the server stops.
    let tasks = crate::engine::tasks::Tasks::start(
        &engine,
        crate::engine::tasks::Schedule {
            snapshot_interval: Duration::from_secs(config.snapshot_interval_secs),
            snapshot_wal_bytes: config.snapshot_wal_bytes,
            time_tick: Duration::from_millis(config.time_tick_ms),
            reclassify_every: Duration::from_secs(config.reclassify_interval_hours.saturating_mul(3600)),
            size_sample: Duration::from_secs(config.size_sample_secs),
        },
    );
    let shutdown = async move {
        // A recovery that succeeds drops the sender: only a sent failure stops the server.
        tokio::select! {
            () = shutdown => {},
            Ok(()) = failed_rx => {},
        }
        // Watch streams never end by themselves: tell them, so the graceful stop can finish.
        closing.begin_close();
    };

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let addr = listener.local_addr().ok();
    // Nagle off on every accepted connection (the builder's tcp_nodelay only covers listeners it
    // binds itself): a response written in more than one segment otherwise waited for the
    // client's delayed ACK, 40 ms.
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    tracing::info!(addr = ?addr, data_dir = %config.data_dir.display(), "segmentd serving");
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| ServerError::Tls(e.to_string()))?;
    }
    let (cors, grpc_web) = grpc_web.unzip();
    let result = builder
        .accept_http1(cors.is_some())
        .layer(tower::util::option_layer(cors))
        .layer(tower::util::option_layer(grpc_web))
        .layer(crate::metrics::requests::RecordLayer(metrics.requests().clone()))
        .tcp_nodelay(true)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .initial_stream_window_size(STREAM_WINDOW)
        .max_concurrent_streams(Some(config.max_concurrent_streams))
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(
            ingest,
            guard(engine.clone(), auth.clone(), SERVICES[0]),
        ))
        .add_service(InterceptedService::new(
            admin,
            // GetServerInfo answers while recovering: the other Admin calls check readiness
            // themselves. Any role may call GetSchema: each other method checks for admin.
            authenticate_only(auth.clone()),
        ))
        .add_service(InterceptedService::new(
            segments,
            guard(engine.clone(), auth.clone(), SERVICES[2]),
        ))
        .add_service(InterceptedService::new(
            membership,
            guard(engine.clone(), auth.clone(), SERVICES[3]),
        ))
        .add_service(InterceptedService::new(
            activities,
            guard(engine.clone(), auth.clone(), SERVICES[4]),
        ))
        .add_service(InterceptedService::new(
            replication,
            guard(engine.clone(), auth, SERVICES[5]),
        ))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    if let Some(m) = metrics_server {
        m.abort();
    }
    if let Some(r) = resp_server {
        r.abort();
    }
    if let Some(c) = console_server {
        c.abort();
    }
    recovery.abort();
    drop(tasks);
    #[cfg(unix)]
    reloader.abort();
    if let Some(e) = failure.lock().take() {
        return Err(ServerError::Recovery(e));
    }
    if engine.is_ready()
        && !config.no_snapshot_on_shutdown
        && let Err(e) = engine.snapshot().await
    {
        tracing::error!(error = %e, "snapshot at shutdown failed; the log still has every write");
    }
    if let Err(e) = engine.close() {
        tracing::error!(error = %e, "closing the write-ahead log");
    }
    tracing::info!("segmentd stopped");
    Ok(result?)
}

/// The engine `config` describes, recovering (not yet serving).
fn engine_for(config: &Config) -> Engine {
    let engine = match &config.clock {
        Some(clock) => Engine::recovering_with(Arc::new(crate::store::Store::with_clock(clock.clone()))),
        None => Engine::recovering(),
    };
    let engine = match &config.faults {
        Some(faults) => engine.with_faults(faults.clone()),
        None => engine,
    };
    engine.store().set_eval_threads(config.eval_threads);
    engine.store().set_order_dedup(
        Duration::from_secs(config.order_dedup_window_hours.saturating_mul(3600)),
        config.order_dedup_max_ids,
    );
    engine.store().events().set_retention(config.event_retention());
    engine.set_max_queued_writes(config.max_queued_writes);
    engine.feed().set_max_items(config.follow_buffer_items);
    engine.set_max_queued_bytes(config.max_queued_bytes);
    engine
}

/// Reloads the tokens at every SIGHUP; a refused reload keeps the tokens in force.
#[cfg(unix)]
async fn reload_on_hangup(auth: Arc<Auth>) {
    let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        match auth.reload() {
            Ok(n) => tracing::info!(tokens = n, "tokens reloaded"),
            Err(e) => tracing::error!(error = %e, "tokens not reloaded; the tokens in force stay"),
        }
    }
}

/// Recovers the data directory, applies the time flips due, then reports SERVING; afterwards
/// waits for the log to fail (NOT_SERVING until restart). A failed recovery is kept in
/// `failure` and stops the server through `failed`.
async fn recover(
    engine: Engine,
    config: Config,
    health: tonic_health::server::HealthReporter,
    failure: Arc<Mutex<Option<crate::error::Error>>>,
    failed: tokio::sync::oneshot::Sender<()>,
) {
    let e = engine.clone();
    let (fsync, segment_bytes) = (config.fsync, config.wal_segment_bytes);
    let recovered =
        tokio::task::spawn_blocking(move || e.recover(&config.data_dir, fsync, segment_bytes)).await;
    match recovered {
        Ok(Ok(_)) => {
            if let Err(e) = engine.open_for_calls().await {
                tracing::error!(error = %e, "applying the time flips due at start failed");
            }
            set_health(&health, ServingStatus::Serving).await;
            // A failed log refuses every write until restart: say so to load balancers.
            if let Some(wal) = engine.wal().cloned() {
                let why = wal.failed().await;
                tracing::error!(error = %why, "NOT_SERVING until restart: the write-ahead log failed");
                set_health(&health, ServingStatus::NotServing).await;
            }
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "recovery failed");
            *failure.lock() = Some(e);
            let _ = failed.send(());
        }
        Err(e) => {
            *failure.lock() = Some(crate::error::Error::Internal(format!("recovery task: {e}")));
            let _ = failed.send(());
        }
    }
}

/// Reports `status` for the server and each of its services.
async fn set_health(health: &tonic_health::server::HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    for name in SERVICES {
        health.set_service_status(name, status).await;
    }
}

/// The gRPC services behind the ready check, by full name (health reports each).
const SERVICES: [&str; 6] = [
    "segmentd.v1.Ingest",
    "segmentd.v1.Admin",
    "segmentd.v1.Segments",
    "segmentd.v1.Membership",
    "segmentd.v1.Activities",
    "segmentd.v1.Replication",
];

/// The server's TLS settings from `--tls-cert`, `--tls-key`, `--tls-client-ca` and
/// `--tls-handshake-timeout-secs`, if TLS is on.
fn tls_config(config: &Config) -> Result<Option<tonic::transport::ServerTlsConfig>, ServerError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let read =
        |p: &std::path::Path| fs::read(p).map_err(|e| ServerError::Tls(format!("{}: {e}", p.display())));
    let mut tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(read(cert)?, read(key)?))
        .timeout(Duration::from_secs(config.tls_handshake_timeout_secs));
    if let Some(ca) = &config.tls_client_ca {
        tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
    }
    Ok(Some(tls))
}

/// The TLS acceptor of the Redis protocol port: the gRPC port's certificate and key (and client
/// CA), when TLS is on.
fn resp_tls(config: &Config) -> Result<Option<tokio_rustls::TlsAcceptor>, ServerError> {
    use tokio_rustls::rustls::{self, pki_types::pem::PemObject};
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let tls = |what: &std::path::Path, e: &dyn std::fmt::Display| {
        ServerError::Tls(format!("{}: {e}", what.display()))
    };
    let chain = rustls::pki_types::CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| tls(cert, &e))?;
    let private = rustls::pki_types::PrivateKeyDer::from_pem_file(key).map_err(|e| tls(key, &e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ServerError::Tls(e.to_string()))?;
    let builder = match &config.tls_client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).map_err(|e| tls(ca, &e))? {
                roots.add(c.map_err(|e| tls(ca, &e))?).map_err(|e| tls(ca, &e))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| tls(ca, &e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let server = builder
        .with_single_cert(chain, private)
        .map_err(|e| tls(cert, &e))?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(server))))
}

/// Checks the caller's token for `service`, then that recovery is done.
fn guard(
    engine: Engine,
    auth: Arc<Auth>,
    service: &'static str,
) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |request| {
        auth.check(service, &request)?;
        crate::api::ready(&engine)?;
        Ok(request)
    }
}

/// Checks that the caller's token is one of the server's and marks the call with its role, for
/// the service's methods to check (`Admin`).
fn authenticate_only(auth: Arc<Auth>) -> impl Fn(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request| {
        let role = auth.authenticate(&request)?;
        request.extensions_mut().insert(crate::auth::Caller(role));
        Ok(request)
    }
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
