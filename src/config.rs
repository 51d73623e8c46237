//! Server configuration: command-line flags, each also read from a `SEGMENTD_*` variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};

use crate::wal::FsyncMode;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// segmentd: customer segmentation over gRPC, with every segment an always-current bitmap.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "segmentd",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("SEGMENTD_COMMIT"), ")"),
    after_help = "Examples:\n  segmentd\n  segmentd --listen 0.0.0.0:50051 --data-dir /var/lib/segmentd --log-format json\n  SEGMENTD_METRICS_ADDR=127.0.0.1:9090 segmentd"
)]
pub struct Config {
    /// Address the gRPC server listens on.
    #[arg(long, env = "SEGMENTD_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Directory holding the server's data; created if missing and locked against a second server.
    #[arg(long, env = "SEGMENTD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Log format. The level comes from RUST_LOG (default `info`).
    #[arg(long, env = "SEGMENTD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// File of `role token` lines (roles: reader, activity, loader, admin; a token may be given
    /// as `sha256:<hex>`), read again on SIGHUP. Without tokens every call is open and the server
    /// listens on loopback only.
    #[arg(long, env = "SEGMENTD_TOKENS_FILE")]
    pub tokens_file: Option<PathBuf>,

    /// Tokens as `role token` pairs separated by commas, from the environment (on the command
    /// line they would show in process lists).
    #[arg(long, env = "SEGMENTD_TOKENS", hide_env_values = true, hide = true)]
    pub tokens: Option<String>,

    /// PEM certificate chain: serve gRPC over TLS (with --tls-key).
    #[arg(long, env = "SEGMENTD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "SEGMENTD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates: clients must present a certificate signed by one (mutual TLS).
    #[arg(long, env = "SEGMENTD_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Seconds a client has to complete its TLS handshake; a connection still silent or short
    /// of a handshake then is closed (a stalled or hostile peer holds nothing for long).
    #[arg(long, env = "SEGMENTD_TLS_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub tls_handshake_timeout_secs: u64,

    /// Allow listening on a non-loopback address without tokens (every call open to anyone who
    /// can reach it).
    #[arg(long, env = "SEGMENTD_INSECURE")]
    pub insecure: bool,

    /// Address of the Prometheus metrics endpoint (HTTP GET /metrics); off when not given.
    #[arg(long, env = "SEGMENTD_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,

    /// Address answering the Redis protocol's membership checks (`SISMEMBER`, `SMISMEMBER`,
    /// `SCARD`, with `AUTH` taking a reader token); off when not given.
    #[arg(long, env = "SEGMENTD_RESP_ADDR")]
    pub resp_addr: Option<SocketAddr>,

    /// Address serving the web console (HTTP GET /); off when not given. While it is on, the
    /// gRPC port also answers gRPC-Web (HTTP/1.1) calls from the console's origin.
    #[arg(long, env = "SEGMENTD_CONSOLE_ADDR")]
    pub console_addr: Option<SocketAddr>,

    /// Origins (`scheme://host:port`, comma-separated) whose pages may call the gRPC port through
    /// gRPC-Web: the console's public address behind a proxy. Default: the console's address
    /// itself (and `localhost` for a loopback one; any host on its port for 0.0.0.0).
    #[arg(
        long,
        env = "SEGMENTD_CONSOLE_ORIGIN",
        value_delimiter = ',',
        requires = "console_addr"
    )]
    pub console_origin: Vec<String>,

    /// Writes that may wait for the writer thread; past it, writes are refused at once with
    /// RESOURCE_EXHAUSTED (load shedding) instead of queuing without bound.
    #[arg(long, env = "SEGMENTD_MAX_QUEUED_WRITES", default_value_t = crate::engine::DEFAULT_MAX_QUEUED_WRITES)]
    pub max_queued_writes: usize,

    /// Most bytes the queued writes may hold (a request counts six times its size: the message
    /// and what decoding keeps of it); past it a write is refused with RESOURCE_EXHAUSTED, unless
    /// it would be alone.
    #[arg(long, env = "SEGMENTD_MAX_QUEUED_BYTES", default_value_t = crate::engine::DEFAULT_MAX_QUEUED_BYTES)]
    pub max_queued_bytes: usize,

    /// Hours an order id is remembered after it was recorded, so that a retried order is not
    /// counted twice; an order retried later counts again.
    #[arg(long, env = "SEGMENTD_ORDER_DEDUP_WINDOW_HOURS", default_value_t = crate::store::dedup::DEFAULT_WINDOW_HOURS)]
    pub order_dedup_window_hours: u64,

    /// Most order ids remembered for deduplication (about 35 bytes each); past it the oldest
    /// are forgotten before the window ends.
    #[arg(long, env = "SEGMENTD_ORDER_DEDUP_MAX_IDS", default_value_t = crate::store::dedup::DEFAULT_MAX_IDS)]
    pub order_dedup_max_ids: usize,

    /// Concurrent HTTP/2 streams (calls) per connection.
    #[arg(long, env = "SEGMENTD_MAX_STREAMS", default_value_t = 1024)]
    pub max_concurrent_streams: u32,

    /// Most items (customers, orders) accepted in one message.
    #[arg(long, env = "SEGMENTD_MAX_BATCH", default_value_t = 10_000)]
    pub max_batch: usize,

    /// When a write's reply waits for the disk: `always` (an fdatasync covers every acknowledged
    /// write; concurrent writes share one), `interval=<ms>` (synced every interval: a crash may
    /// lose that long of acknowledged writes), or `never` (the OS decides: a crash may lose any
    /// acknowledged write not yet written back).
    #[arg(long, env = "SEGMENTD_FSYNC", default_value = "always")]
    pub fsync: FsyncMode,

    /// Size at which a write-ahead log file is closed and a new one started, in bytes.
    #[arg(long, env = "SEGMENTD_WAL_SEGMENT_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub wal_segment_bytes: u64,

    /// Seconds between snapshots when there were writes (0: no timed snapshots).
    #[arg(long, env = "SEGMENTD_SNAPSHOT_INTERVAL_SECS", default_value_t = 3600)]
    pub snapshot_interval_secs: u64,

    /// Log bytes written since the last snapshot that trigger the next one (0: off).
    #[arg(long, env = "SEGMENTD_SNAPSHOT_WAL_BYTES", default_value_t = 1 << 30)]
    pub snapshot_wal_bytes: u64,

    /// Skip the snapshot a clean shutdown normally writes (faster stop; the next start replays
    /// more log).
    #[arg(long, env = "SEGMENTD_NO_SNAPSHOT_ON_SHUTDOWN")]
    pub no_snapshot_on_shutdown: bool,

    /// Threads evaluating a segment over all customers (0: one per core).
    #[arg(long, env = "SEGMENTD_EVAL_THREADS", default_value_t = 0)]
    pub eval_threads: usize,

    /// Membership events kept for watchers and history: the newest this many...
    #[arg(long, env = "SEGMENTD_EVENT_RETENTION_EVENTS", default_value_t = crate::events::DEFAULT_MAX_EVENTS)]
    pub event_retention_events: u64,

    /// ...and none older than this many seconds (default 30 days).
    #[arg(long, env = "SEGMENTD_EVENT_RETENTION_SECS", default_value_t = crate::events::DEFAULT_MAX_AGE_SECS)]
    pub event_retention_secs: u64,

    /// Seconds a watcher (WatchMemberships) or an export (ExportSegment) may leave its buffer
    /// full before its stream ends with ABORTED (a watcher's names the sequence to resume from).
    #[arg(long, env = "SEGMENTD_WATCH_STALL_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub watch_stall_secs: u64,

    /// Changes kept in memory for replicas (`Replication.Follow`) while one follows: customers
    /// created or erased and membership changes, about 16 bytes each. A replica further behind
    /// takes a new snapshot.
    #[arg(long, env = "SEGMENTD_FOLLOW_BUFFER_ITEMS", default_value_t = crate::follow::DEFAULT_MAX_ITEMS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub follow_buffer_items: usize,

    /// Milliseconds between applications of time flips (a relative-time rule such as
    /// `last_order_at within 90d` changing its answer as the clock moves). A flip is applied at
    /// most this long after its instant.
    #[arg(long, env = "SEGMENTD_TIME_TICK_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    pub time_tick_ms: u64,

    /// Hours between scheduled RFM reclassifications (0: on demand only). The first runs as soon
    /// as orders exist; `Segments.Reclassify` runs one at any time.
    #[arg(long, env = "SEGMENTD_RECLASSIFY_INTERVAL_HOURS", default_value_t = 720)]
    pub reclassify_interval_hours: u64,

    /// Seconds between samples of every segment's size (`Segments.GetSizeHistory`, the
    /// console's size over time); the last 24 hours are kept in memory, at most 1,440 samples.
    #[arg(long, env = "SEGMENTD_SIZE_SAMPLE_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub size_sample_secs: u64,

    /// The clock relative-time rules read (tests set a manual one); the system clock otherwise.
    #[arg(skip)]
    pub clock: Option<std::sync::Arc<dyn crate::time::Clock>>,

    /// Disk faults to inject into the log (tests and drills; no flag).
    #[arg(skip)]
    pub faults: Option<std::sync::Arc<crate::faults::Faults>>,

    /// Largest request message accepted, in bytes.
    #[arg(long, env = "SEGMENTD_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_message_bytes: usize,
}

impl Config {
    /// How long membership events are kept.
    pub fn event_retention(&self) -> crate::events::Retention {
        crate::events::Retention {
            max_events: self.event_retention_events,
            max_age_micros: i64::try_from(self.event_retention_secs.saturating_mul(1_000_000))
                .unwrap_or(i64::MAX),
        }
    }

    /// The defaults, with `data_dir` set: what tests and embedders start from.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.into(),
            log_format: LogFormat::Text,
            metrics_addr: None,
            resp_addr: None,
            console_addr: None,
            console_origin: Vec::new(),
            tokens_file: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            tls_handshake_timeout_secs: 10,
            tokens: None,
            insecure: false,
            max_batch: 10_000,
            max_queued_writes: crate::engine::DEFAULT_MAX_QUEUED_WRITES,
            max_queued_bytes: crate::engine::DEFAULT_MAX_QUEUED_BYTES,
            order_dedup_window_hours: crate::store::dedup::DEFAULT_WINDOW_HOURS,
            order_dedup_max_ids: crate::store::dedup::DEFAULT_MAX_IDS,
            max_concurrent_streams: 1024,
            eval_threads: 0,
            fsync: FsyncMode::Always,
            snapshot_interval_secs: 3600,
            snapshot_wal_bytes: 1 << 30,
            no_snapshot_on_shutdown: false,
            wal_segment_bytes: 64 * 1024 * 1024,
            max_message_bytes: 64 * 1024 * 1024,
            time_tick_ms: 1000,
            watch_stall_secs: 60,
            follow_buffer_items: crate::follow::DEFAULT_MAX_ITEMS,
            reclassify_interval_hours: 720,
            size_sample_secs: 300,
            clock: None,
            faults: None,
            event_retention_events: crate::events::DEFAULT_MAX_EVENTS,
            event_retention_secs: crate::events::DEFAULT_MAX_AGE_SECS,
        }
    }
}
