//! Helpers to run silo and the incumbent side by side: a vgi-style storage server built only
//! from the `vgi` crate's public API (`apply_op`, `StorageRequest`, `WIRE`) over any vgi
//! store, and an in-process `silo serve`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;

use vgi::storage::FunctionStorage as VgiStorage;
use vgi::storage::http::{StorageRequest, WIRE, apply_op};

/// A server running in the background (silo-server's helper), stopped when dropped.
pub type Running = silo_server::Background;

/// A vgi-style storage server, behaving as `vgi-storage-server` does: `POST /rpc` decoded with
/// vgi's `WIRE`, applied with vgi's `apply_op` on `store` right in the async handler, replies
/// of keyed requests remembered in an in-memory map (cleared wholesale at 100,000 entries). It
/// differs in one respect: no 2 MB body limit, so the core suite's 64 MiB values can run.
pub fn vgi_server(store: Arc<dyn VgiStorage>) -> Running {
    let replies: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
    let router = axum::Router::new().route(
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
    );
    silo_server::spawn_router(router).expect("start the vgi-style server")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `silo serve` in-process over `store`.
pub fn silo_server(store: Arc<dyn silo::FunctionStorage>) -> Running {
    silo_server::spawn(silo_server::Config::new(store)).expect("start silo serve")
}
