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
use tokio::net::{TcpListener, TcpStream};
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

/// The first bytes of a cleartext HTTP/2 connection ("prior knowledge", RFC 9113 §3.3).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Waits until the first bytes tell HTTP/1.1 from HTTP/2: the whole preface, or a byte that
/// departs from it. False when the peer closes or fails first.
async fn protocol_decided(stream: &TcpStream) -> bool {
    let mut first = [0u8; H2_PREFACE.len()];
    loop {
        match stream.peek(&mut first).await {
            Ok(0) | Err(_) => return false,
            Ok(n) if n == first.len() || first[..n] != H2_PREFACE[..n] => return true,
            // Part of the preface so far: `peek` would answer at once again, so wait a little.
            Ok(_) => tokio::time::sleep(Duration::from_millis(2)).await,
        }
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
    let http = Arc::new(http);
    let graceful = GracefulShutdown::new();
    // Tells connections still deciding which protocol they speak that the server stops.
    let (stop, stopping) = tokio::sync::watch::channel(false);
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
        let watcher = graceful.watcher();
        let (http, mut stopping) = (http.clone(), stopping.clone());
        let open = OpenConnection::new(app.clone(), slot);
        tokio::spawn(async move {
            // hyper's auto builder reads the first bytes, to tell HTTP/2's preface from
            // HTTP/1.1, with no deadline of its own: the header deadline covers that wait too,
            // so a connection that sends nothing (or half a preface) is closed in time.
            let decided = tokio::select! {
                decided = tokio::time::timeout(limits.header_timeout, protocol_decided(&stream)) => {
                    matches!(decided, Ok(true))
                }
                _ = stopping.wait_for(|stop| *stop) => false,
            };
            if decided {
                let connection = http.serve_connection(TokioIo::new(stream), service);
                if let Err(e) = watcher.watch(connection.into_owned()).await {
                    tracing::debug!("connection ended: {e}");
                }
            }
            drop(open);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight after {SHUTDOWN_GRACE:?}; stopping anyway");
    }
    Ok(())
}
