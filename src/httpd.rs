//! The small HTTP/1.1 servers beside gRPC (`/metrics`, the console): an axum router served with
//! a deadline for the request head and for the whole connection, and a cap on connections.

use std::time::Duration;

use tokio::net::TcpListener;

/// How long a client may take to send its request head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one connection may stay open, whatever it does.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Connections served at once; more wait in the listen queue.
const MAX_CONNECTIONS: usize = 64;

/// Serves `router` on `listener` until the task is dropped; `what` names the server in logs.
pub async fn serve(listener: TcpListener, router: axum::Router, what: &'static str) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT);
            let served = http.serve_connection(hyper_util::rt::TokioIo::new(conn), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, served).await {
                Ok(Err(e)) => tracing::debug!(error = %e, "{what} connection"),
                Err(_) => tracing::debug!("{what} connection closed after {CONNECTION_TIMEOUT:?}"),
                Ok(Ok(())) => {}
            }
            drop(permit);
        });
    }
}
