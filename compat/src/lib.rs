//! Helpers to run silo and the incumbent side by side: a vgi-style storage server built only
//! from the `vgi` crate's public API (`apply_op`, `StorageRequest`, `WIRE`) over any vgi
//! store, and an in-process `silo serve`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use vgi::storage::FunctionStorage as VgiStorage;
use vgi::storage::http::{StorageRequest, WIRE, apply_op};

/// A server on a runtime of its own, stopped when dropped.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(router: impl FnOnce() -> axum::Router + Send + 'static) -> Running {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            addr_tx
                .send(listener.local_addr().expect("addr"))
                .expect("report addr");
            let _ = axum::serve(listener, router())
                .with_graceful_shutdown(async {
                    let _ = stop_rx.await;
                })
                .await;
        });
    });
    let addr = addr_rx.recv().expect("server address");
    Running {
        addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    }
}

/// A vgi-style storage server: `POST /rpc` decoded with vgi's `WIRE`, applied with vgi's
/// `apply_op` on `store` (on the blocking pool), reply encoded with `WIRE`. Like the
/// incumbent, it keeps no idempotency state of its own.
pub fn vgi_server(store: Arc<dyn VgiStorage>) -> Running {
    run(move || {
        axum::Router::new().route(
            "/rpc",
            axum::routing::post(move |body: axum::body::Bytes| {
                let store = store.clone();
                async move {
                    let reply = tokio::task::spawn_blocking(move || {
                        let (request, _): (StorageRequest, usize) =
                            bincode::serde::decode_from_slice(&body, WIRE).ok()?;
                        let reply = apply_op(&*store, request.op);
                        bincode::serde::encode_to_vec(&reply, WIRE).ok()
                    })
                    .await
                    .ok()
                    .flatten();
                    match reply {
                        Some(bytes) => (axum::http::StatusCode::OK, bytes),
                        None => (axum::http::StatusCode::BAD_REQUEST, Vec::new()),
                    }
                }
            })
            .layer(axum::extract::DefaultBodyLimit::disable()),
        )
    })
}

/// `silo serve` in-process over `store`.
pub fn silo_server(store: Arc<dyn silo::FunctionStorage>) -> Running {
    let config = silo_server::Config::new(store);
    run(move || silo_server::router(config))
}
