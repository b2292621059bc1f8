//! `silo serve`: the VGI storage wire protocol over HTTP on any local silo store.
//!
//! A drop-in for the `vgi` crate's `vgi-storage-server`: `POST /rpc` speaks its bincode
//! protocol byte for byte, so `VGI_WORKER_SHARED_STORAGE=http` workers use it unchanged; silo's
//! extended operations ride on the same endpoint. Store work runs on tokio's blocking pool,
//! never on the reactor. A request with an idempotency key is applied once, durably: the key
//! and reply are stored in the effect's transaction (`FunctionStorage::apply_once`).

mod auth;
mod background;
mod metrics;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Serialize;
use silo::wire::{self, ErrorKind, OP_NAMES, StorageRequest};
use silo::{Error, FunctionStorage};
use tokio::net::TcpListener;

pub use auth::{Auth, Tenant, tenant_prefix};
pub use background::{Background, spawn, spawn_router};
pub use metrics::Metrics;
use metrics::Rejection;

/// Largest idempotency key accepted, in bytes.
const MAX_IDEMPOTENCY_KEY: usize = 512;

/// What a server runs with.
#[derive(Clone)]
pub struct Config {
    /// The store every request goes to.
    pub store: Arc<dyn FunctionStorage>,
    /// Who may call.
    pub auth: Auth,
    /// Largest request body; larger ones get 413.
    pub max_body_bytes: usize,
    /// How long an idempotency key (and its reply) is kept for retries.
    pub idempotency_window: Duration,
}

impl Config {
    /// A server over `store` with the defaults: no auth, 320 MiB bodies (a 256 MiB value and
    /// its envelope), a 10-minute idempotency window.
    pub fn new(store: Arc<dyn FunctionStorage>) -> Self {
        Config {
            store,
            auth: Auth::Open,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            idempotency_window: Duration::from_secs(600),
        }
    }
}

/// The default largest request body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 320 << 20;

struct App {
    config: Config,
    metrics: Metrics,
}

/// The HTTP routes over `config`.
pub fn router(config: Config) -> Router {
    let limit = config.max_body_bytes;
    let app = Arc::new(App {
        config,
        metrics: Metrics::default(),
    });
    Router::new()
        .route("/rpc", post(rpc).layer(DefaultBodyLimit::max(limit)))
        .route("/health", get(|| async { "ok" }))
        .route("/metrics", get(metrics_text))
        .route("/v1/info", get(info))
        .with_state(app)
}

/// Serves `config` on `listener` until `shutdown` resolves, then finishes in-flight requests.
/// Also sweeps expired idempotency keys in the background.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sweeper = tokio::spawn(sweep_idempotency_keys(
        config.store.clone(),
        config.idempotency_window,
    ));
    let result = axum::serve(listener, router(config))
        .with_graceful_shutdown(shutdown)
        .await;
    sweeper.abort();
    result
}

async fn sweep_idempotency_keys(store: Arc<dyn FunctionStorage>, window: Duration) {
    let every = (window / 10).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::time::sleep(every).await;
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.expire_once_keys(window)).await {
            Ok(Ok(n)) if n > 0 => tracing::debug!(expired = n, "idempotency keys swept"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("sweeping idempotency keys failed: {e}"),
            Err(e) => tracing::warn!("the idempotency sweeper panicked: {e}"),
        }
    }
}

fn error_response(e: &Error) -> Response {
    let kind = ErrorKind::of(e);
    let status = StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [("x-silo-error", kind.name())], e.to_string()).into_response()
}

fn unauthorized() -> Response {
    let e = Error::Unauthorized {
        message: "missing or wrong bearer token".into(),
    };
    error_response(&e)
}

impl App {
    fn authorize(&self, headers: &HeaderMap) -> Option<Vec<u8>> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes);
        let prefix = self.config.auth.scope_prefix(presented);
        if prefix.is_none() {
            self.metrics.reject(Rejection::Unauthorized);
        }
        prefix
    }

    /// Applies one request (on a blocking thread) and encodes the reply.
    fn execute(&self, prefix: &[u8], request: StorageRequest) -> silo::Result<Vec<u8>> {
        let store = &*self.config.store;
        let Some(key) = request.idempotency_key else {
            return wire::encode(&wire::apply(store, prefix, request.op)?);
        };
        let mut once_key = prefix.to_vec();
        once_key.extend_from_slice(key.as_bytes());
        let mut op = Some(request.op);
        store.apply_once(&once_key, &mut |store| {
            let op = op
                .take()
                .ok_or_else(|| Error::invalid("apply_once ran one request twice"))?;
            wire::encode(&wire::apply(store, prefix, op)?)
        })
    }
}

async fn rpc(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(prefix) = app.authorize(&headers) else {
        return unauthorized();
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            app.metrics.reject(Rejection::TooLarge);
            let message = format!(
                "request body over the server's limit of {} bytes (silo serve --max-body-bytes)",
                app.config.max_body_bytes
            );
            let mut response = error_response(&Error::invalid(message));
            *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
            return response;
        }
        Err(rejection) => {
            app.metrics.reject(Rejection::Undecodable);
            return error_response(&Error::invalid(format!(
                "cannot read the body: {rejection}"
            )));
        }
    };
    let request: StorageRequest = match wire::decode(&body) {
        Ok(r) => r,
        Err(e) => {
            app.metrics.reject(Rejection::Undecodable);
            return error_response(&e);
        }
    };
    if request
        .idempotency_key
        .as_ref()
        .is_some_and(|k| k.len() > MAX_IDEMPOTENCY_KEY)
    {
        app.metrics.reject(Rejection::Undecodable);
        return error_response(&Error::invalid(format!(
            "idempotency key longer than {MAX_IDEMPOTENCY_KEY} bytes"
        )));
    }
    let op = request.op.index();
    let started = Instant::now();
    let worker = app.clone();
    let outcome = tokio::task::spawn_blocking(move || worker.execute(&prefix, request)).await;
    let response = match outcome {
        Ok(Ok(reply)) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], reply).into_response()
        }
        Ok(Err(e)) => {
            if !matches!(e, Error::InvalidInput { .. }) {
                tracing::warn!(op = OP_NAMES[op], "request failed: {e}");
            }
            error_response(&e)
        }
        Err(join) => {
            tracing::error!(op = OP_NAMES[op], "request handler panicked: {join}");
            error_response(&Error::Backend {
                backend: "silo server".into(),
                message: "the request handler panicked; see the server log".into(),
            })
        }
    };
    app.metrics
        .record(op, started.elapsed(), response.status().is_success());
    response
}

#[derive(Serialize)]
struct Info {
    server: &'static str,
    version: &'static str,
    ops: &'static [&'static str],
    max_body_bytes: usize,
    multi_tenant: bool,
}

async fn info(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if app.authorize(&headers).is_none() {
        return unauthorized();
    }
    let info = Info {
        server: "silo",
        version: env!("CARGO_PKG_VERSION"),
        ops: &OP_NAMES,
        max_body_bytes: app.config.max_body_bytes,
        multi_tenant: !app.config.auth.is_single_tenant(),
    };
    match serde_json::to_string(&info) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn metrics_text(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if app.authorize(&headers).is_none() {
        return unauthorized();
    }
    // Store-wide counts would leak across tenants; a multi-tenant server omits them.
    let stats = if app.config.auth.is_single_tenant() {
        let store = app.config.store.clone();
        tokio::task::spawn_blocking(move || store.stat())
            .await
            .ok()
            .and_then(Result::ok)
    } else {
        None
    };
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(stats.as_ref()),
    )
        .into_response()
}
