//! The accept loop: at most `max_connections` connections at once, each served by hyper as
//! HTTP/1.1 (with a header deadline that also ends idle keep-alive connections) or, when the
//! client opens with HTTP/2's preface, as cleartext HTTP/2 (h2c, "prior knowledge": many
//! requests in flight on one connection); TCP_NODELAY; a graceful shutdown that lets requests
//! in flight finish.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::App;

/// How long shutdown waits for requests in flight before it gives up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// A connection's slot and its place in the `silo_connections` gauge, given back when the
/// connection's task ends, however it ends.
struct OpenConnection {
    app: Arc<App>,
    _slot: OwnedSemaphorePermit,
}

impl OpenConnection {
    fn new(app: Arc<App>, slot: OwnedSemaphorePermit) -> Self {
        app.metrics.connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection { app, _slot: slot }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.app.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    app: Arc<App>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = app.config.limits;
    let slots = Arc::new(Semaphore::new(
        limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    let mut http = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    // Streams of one connection are requests like any others: the request slots bound them
    // together; this bounds what one connection may open at once. A connection that stops
    // answering pings is closed.
    http.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(
            u32::try_from(limits.max_concurrent_requests.max(1)).unwrap_or(u32::MAX),
        )
        .keep_alive_interval(Some(limits.header_timeout))
        .keep_alive_timeout(limits.header_timeout);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: transient; back off, keep serving.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(
            http.serve_connection(TokioIo::new(stream), service)
                .into_owned(),
        );
        let open = OpenConnection::new(app.clone(), slot);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection ended: {e}");
            }
            drop(open);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {SHUTDOWN_GRACE:?}; stopping anyway");
    }
    Ok(())
}
