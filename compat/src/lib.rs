//! Helpers to run silo and the incumbent side by side: a vgi-style storage server built only
//! from the `vgi` crate's public API (`apply_op`, `StorageRequest`, `WIRE`) over any vgi
//! store, and an in-process `silo serve`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
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

/// A vgi-style storage server, behaving as `vgi-storage-server` does: `POST /rpc` decoded with
/// vgi's `WIRE`, applied with vgi's `apply_op` on `store` right in the async handler, replies
/// of keyed requests remembered in an in-memory map (cleared wholesale at 100,000 entries). It
/// differs in one respect: no 2 MB body limit, so the core suite's 64 MiB values can run.
pub fn vgi_server(store: Arc<dyn VgiStorage>) -> Running {
    let replies: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    run(move || {
        axum::Router::new().route(
            "/rpc",
            axum::routing::post(move |body: axum::body::Bytes| {
                let (store, replies) = (store.clone(), replies.clone());
                async move {
                    let Ok((request, _)) =
                        bincode::serde::decode_from_slice::<StorageRequest, _>(&body, WIRE)
                    else {
                        return (StatusCode::BAD_REQUEST, Vec::new());
                    };
                    if let Some(key) = &request.idempotency_key
                        && let Some(reply) = lock(&replies).get(key).cloned()
                    {
                        return (StatusCode::OK, reply);
                    }
                    let reply = apply_op(&*store, request.op);
                    let Ok(bytes) = bincode::serde::encode_to_vec(&reply, WIRE) else {
                        return (StatusCode::INTERNAL_SERVER_ERROR, Vec::new());
                    };
                    if let Some(key) = request.idempotency_key {
                        let mut map = lock(&replies);
                        if map.len() >= 100_000 {
                            map.clear();
                        }
                        map.insert(key, bytes.clone());
                    }
                    (StatusCode::OK, bytes)
                }
            })
            .layer(axum::extract::DefaultBodyLimit::disable()),
        )
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `silo serve` in-process over `store`.
pub fn silo_server(store: Arc<dyn silo::FunctionStorage>) -> Running {
    let config = silo_server::Config::new(store);
    run(move || silo_server::router(config))
}
