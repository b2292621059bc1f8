//! `silo serve`: the VGI storage wire protocol over HTTP on any local silo store.
//!
//! A drop-in for the `vgi` crate's `vgi-storage-server`: `POST /rpc` speaks its bincode
//! protocol byte for byte, so `VGI_WORKER_SHARED_STORAGE=http` workers use it unchanged; silo's
//! extended operations ride on the same endpoint. Store work runs on tokio's blocking pool,
//! never on the reactor. A request with an idempotency key is applied once, durably: the key,
//! a fingerprint of the request and the reply are stored in the effect's transaction
//! (`FunctionStorage::apply_once`).
//!
//! The server protects itself before it trusts a caller: the token is checked from the
//! headers before any body byte is read; bodies, items per request, replies, concurrent
//! requests, in-flight body bytes and open connections are bounded ([`Limits`]); slow and idle
//! connections time out.

mod auth;
mod background;
mod connections;
mod metrics;
pub mod python;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use serde::Serialize;
use silo::wire::{self, ErrorKind, OP_NAMES, StorageOp, StorageRequest};
use silo::{Error, FunctionStorage, PrefixStore, Selection};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

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
    /// Bounds on what callers may make the server hold.
    pub limits: Limits,
    /// The orphan sweep: scopes untouched for `ttl` are dropped every `every`; `None` = off.
    pub orphan_sweep: Option<OrphanSweep>,
    /// Run point operations (one key, one item; small bodies) on the task that read the
    /// request instead of handing them to the blocking pool: microsecond operations then cost
    /// no thread hand-off. Turn it off for stores whose writes wait for a disk flush
    /// (`sync=full`), so that many requests wait for, and share, one fsync.
    pub inline_point_ops: bool,
}

/// The largest request body whose point operation runs inline (see
/// [`Config::inline_point_ops`]).
const INLINE_MAX_BODY: usize = 16 << 10;

/// Whether `op` touches a bounded handful of entries: one key, one item, one claim — or the
/// keys and items its body lists, which the body's size bounds (inline operations have bodies
/// of at most [`INLINE_MAX_BODY`]). Scans, drains and clears touch what the store holds, not
/// what the request carries. Listed exhaustively so that a new operation is classified when
/// it is added.
fn is_point_op(op: &StorageOp) -> bool {
    match op {
        StorageOp::KvGet { .. }
        | StorageOp::KvPut { .. }
        | StorageOp::KvDel { .. }
        | StorageOp::Append { .. }
        | StorageOp::QueuePop { .. }
        | StorageOp::StateGet { .. }
        | StorageOp::StatePut { .. }
        | StorageOp::StateDel { .. }
        | StorageOp::CounterGet { .. }
        | StorageOp::CounterAdd { .. }
        | StorageOp::CounterSet { .. }
        | StorageOp::CounterDelete { .. }
        | StorageOp::QueueLen { .. }
        | StorageOp::QueueClaim { .. }
        | StorageOp::QueueAck { .. }
        | StorageOp::QueueRelease { .. }
        | StorageOp::QueueExtend { .. }
        | StorageOp::QueuePush { .. }
        | StorageOp::StateGetMany { .. }
        | StorageOp::StatePutMany { .. } => true,
        StorageOp::Scan { .. }
        | StorageOp::Clear { .. }
        | StorageOp::ClearCounted { .. }
        | StorageOp::Gc { .. }
        | StorageOp::StateScan { .. }
        | StorageOp::StateDelete { .. }
        | StorageOp::StateDrain { .. }
        | StorageOp::QueueClear { .. }
        | StorageOp::QueueDeadLetters { .. }
        | StorageOp::Sweep { .. }
        | StorageOp::Stat { .. }
        | StorageOp::Batch { .. } => false,
    }
}

/// How often the server sweeps orphaned scopes, and which scopes are orphans.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrphanSweep {
    /// Scopes untouched for longer than this are dropped.
    pub ttl: Duration,
    /// Time between sweeps (the first runs at start-up, as the incumbent's does).
    pub every: Duration,
}

impl OrphanSweep {
    /// Sweeps for `ttl`, every tenth of it (at least every second, at most hourly).
    pub fn for_ttl(ttl: Duration) -> Self {
        OrphanSweep {
            ttl,
            every: (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600)),
        }
    }
}

/// Bounds on what callers may make the server hold. Excess work waits up to `queue_wait`
/// for room, then gets `503` with `Retry-After`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Requests being read or executed at once.
    pub max_concurrent_requests: usize,
    /// Request body bytes held at once, over all requests (a request reserves its
    /// `Content-Length`, or `max_body_bytes` when it sends none).
    pub max_inflight_bytes: usize,
    /// How long a request waits for a slot or for body bytes before `503`.
    pub queue_wait: Duration,
    /// Deadline for a request's header, counted from when the server starts waiting for it,
    /// so it is also how long an idle keep-alive connection is kept.
    pub header_timeout: Duration,
    /// Deadline for reading a request's body once its header arrived.
    pub body_timeout: Duration,
    /// Open connections; more wait in the listen backlog.
    pub max_connections: usize,
    /// Elements in one request's lists (queue items, keys, pairs).
    pub max_items: usize,
    /// Largest reply body. A read whose reply would be larger fails with a clear error (page
    /// with a limit); a write whose reply would be larger (a drain) is rolled back.
    pub max_reply_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_concurrent_requests: 256,
            max_inflight_bytes: 1 << 30,
            queue_wait: Duration::from_secs(1),
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            max_connections: 1024,
            max_items: 100_000,
            max_reply_bytes: 512 << 20,
        }
    }
}

impl Config {
    /// A server over `store` with the defaults: no auth, 320 MiB bodies (a 256 MiB value and
    /// its envelope), a 10-minute idempotency window, default [`Limits`], the orphan sweep
    /// off (`silo serve` turns it on), point operations inline when the store answers in
    /// microseconds ([`FunctionStorage::answers_in_microseconds`]).
    pub fn new(store: Arc<dyn FunctionStorage>) -> Self {
        Config {
            inline_point_ops: store.answers_in_microseconds(),
            store,
            auth: Auth::Open,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            idempotency_window: Duration::from_secs(600),
            limits: Limits::default(),
            orphan_sweep: None,
        }
    }
}

/// The default largest request body.
pub const DEFAULT_MAX_BODY_BYTES: usize = 320 << 20;

struct App {
    config: Config,
    metrics: Metrics,
    requests: Arc<Semaphore>,
    body_bytes: Arc<Semaphore>,
}

/// The caller's scope prefix, set by the auth layer for the handlers behind it.
#[derive(Clone)]
struct Caller {
    prefix: Vec<u8>,
}

fn app(config: Config) -> Arc<App> {
    let limits = config.limits;
    Arc::new(App {
        requests: Arc::new(Semaphore::new(
            limits
                .max_concurrent_requests
                .clamp(1, Semaphore::MAX_PERMITS),
        )),
        body_bytes: Arc::new(Semaphore::new(inflight_budget(&limits))),
        config,
        metrics: Metrics::default(),
    })
}

/// The in-flight byte budget: at least one byte, at most what one reservation can take.
fn inflight_budget(limits: &Limits) -> usize {
    limits
        .max_inflight_bytes
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize))
}

/// The HTTP routes over `config`.
pub fn router(config: Config) -> Router {
    routes(app(config))
}

fn routes(app: Arc<App>) -> Router {
    Router::new()
        .route("/rpc", post(rpc))
        .route("/metrics", get(metrics_text))
        .route("/v1/info", get(info))
        // Runs before any handler touches the body.
        .route_layer(middleware::from_fn_with_state(app.clone(), authenticate))
        .merge(python::routes(app.clone()))
        .route("/health", get(|| async { "ok" }))
        .with_state(app)
}

/// Serves `config` on `listener` until `shutdown` resolves, then finishes in-flight requests.
/// Also sweeps expired idempotency keys and, when configured, orphaned scopes.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = app(config);
    let mut chores = vec![tokio::spawn(sweep_idempotency_keys(app.clone()))];
    if let Some(sweep) = app.config.orphan_sweep {
        chores.push(tokio::spawn(sweep_orphans(app.clone(), sweep)));
    }
    let result = connections::serve(listener, routes(app.clone()), app, shutdown).await;
    for chore in chores {
        chore.abort();
    }
    result
}

async fn sweep_idempotency_keys(app: Arc<App>) {
    let window = app.config.idempotency_window;
    let every = (window / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
    loop {
        tokio::time::sleep(every).await;
        let store = app.config.store.clone();
        match tokio::task::spawn_blocking(move || store.expire_once_keys(window)).await {
            Ok(Ok(n)) if n > 0 => tracing::debug!(expired = n, "idempotency keys swept"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("sweeping idempotency keys failed: {e}"),
            Err(e) => tracing::warn!("the idempotency sweeper panicked: {e}"),
        }
    }
}

/// Drops orphaned scopes at start-up and then every `sweep.every`.
async fn sweep_orphans(app: Arc<App>, sweep: OrphanSweep) {
    loop {
        let store = app.config.store.clone();
        let outcome = tokio::task::spawn_blocking(move || store.gc(sweep.ttl)).await;
        let m = &app.metrics;
        match outcome {
            Ok(Ok(n)) => {
                m.sweeps.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                m.swept_scopes
                    .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                if n > 0 {
                    tracing::info!(scopes = n, "orphan sweep dropped scopes");
                }
            }
            Ok(Err(e)) => {
                m.sweep_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!("the orphan sweep failed: {e}");
            }
            Err(e) => {
                m.sweep_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!("the orphan sweeper panicked: {e}");
            }
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        m.last_sweep_unix
            .store(now, std::sync::atomic::Ordering::Relaxed);
        tokio::time::sleep(sweep.every).await;
    }
}

fn error_response(e: &Error) -> Response {
    let kind = ErrorKind::of(e);
    let status = StatusCode::from_u16(kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [("x-silo-error", kind.name())], e.to_string()).into_response()
}

/// An error answer with a status other than its kind's (413, 408).
fn error_with_status(status: StatusCode, e: &Error) -> Response {
    let mut response = error_response(e);
    *response.status_mut() = status;
    response
}

/// The auth layer: the token is checked from the headers alone, before the body is read.
async fn authenticate(State(app): State<Arc<App>>, mut request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    match app.config.auth.scope_prefix(presented) {
        Some(prefix) => {
            request.extensions_mut().insert(Caller { prefix });
            next.run(request).await
        }
        None => {
            app.metrics.reject(Rejection::Unauthorized);
            error_response(&Error::Unauthorized {
                message: "missing or wrong bearer token".into(),
            })
        }
    }
}

/// The number of list elements a request carries.
fn items_of(op: &StorageOp) -> usize {
    match op {
        StorageOp::QueuePush { items, .. } => items.0.len(),
        StorageOp::StateGetMany { keys, .. } => keys.0.len(),
        StorageOp::StatePutMany { items, .. } => items.0.len(),
        StorageOp::StateDelete {
            selection: Selection::Keys(keys),
            ..
        } => keys.len(),
        // Each operation counts, and so do the lists inside it.
        StorageOp::Batch { ops } => ops.0.iter().map(|op| 1 + items_of(op)).sum(),
        _ => 0,
    }
}

/// Whether `op` reads across tenants (store-wide counts), alone or inside a batch.
fn is_store_wide(op: &StorageOp) -> bool {
    match op {
        StorageOp::Stat {} => true,
        StorageOp::Batch { ops } => ops.0.iter().any(is_store_wide),
        _ => false,
    }
}

/// The encoded operation inside a request body: what follows the idempotency key. Its
/// digest is the request's fingerprint, so a key reused for another request is caught.
fn op_bytes<'a>(body: &'a [u8], key: &str) -> &'a [u8] {
    // `Some` tag, `u64` length, the key's bytes.
    body.get(1 + 8 + key.len()..).unwrap_or_default()
}

impl App {
    /// Applies one request (on a blocking thread) and encodes the reply.
    fn execute(
        &self,
        prefix: &[u8],
        reply_limit: usize,
        body: &[u8],
        request: StorageRequest,
    ) -> silo::Result<Vec<u8>> {
        let store = &*self.config.store;
        if !prefix.is_empty() {
            if is_store_wide(&request.op) {
                return Err(Error::Unauthorized {
                    message: "Stat covers every tenant; it needs the server's admin token".into(),
                });
            }
            let tenant = PrefixStore::new(store, prefix.to_vec());
            return self.execute_on(&tenant, reply_limit, body, request);
        }
        self.execute_on(store, reply_limit, body, request)
    }

    fn execute_on(
        &self,
        store: &dyn FunctionStorage,
        limit: usize,
        body: &[u8],
        request: StorageRequest,
    ) -> silo::Result<Vec<u8>> {
        let encode_bounded = |reply: &wire::StorageReply| -> silo::Result<Vec<u8>> {
            let bytes = wire::encode(reply)?;
            if bytes.len() > limit {
                return Err(reply_too_large(bytes.len(), limit));
            }
            Ok(bytes)
        };
        let Some(key) = request.idempotency_key.as_deref() else {
            // A drain's reply is its data: when it cannot be sent, the drain must not happen,
            // so it runs where a failure rolls it back (keyed requests always do). A batch is
            // all or nothing.
            if matches!(
                request.op,
                StorageOp::StateDrain { .. } | StorageOp::Batch { .. }
            ) {
                let mut op = Some(request.op);
                return store.apply_atomically(&mut |store| {
                    let op = op
                        .take()
                        .ok_or_else(|| Error::invalid("one request was applied twice"))?;
                    encode_bounded(&wire::apply(store, op)?)
                });
            }
            return encode_bounded(&wire::apply(store, request.op)?);
        };
        let fingerprint = blake3::hash(op_bytes(body, key));
        let mut op = Some(request.op);
        store.apply_once(key.as_bytes(), fingerprint.as_bytes(), &mut |store| {
            let op = op
                .take()
                .ok_or_else(|| Error::invalid("apply_once ran one request twice"))?;
            encode_bounded(&wire::apply(store, op)?)
        })
    }
}

/// How the reply-size error begins, so the handler can count it (it comes back through the
/// store's `apply_once` as a plain `InvalidInput`).
const REPLY_TOO_LARGE: &str = "the reply would be";

fn reply_too_large(len: usize, limit: usize) -> Error {
    Error::invalid(format!(
        "{REPLY_TOO_LARGE} {len} bytes, over the server's limit of {limit} \
         (silo serve --max-reply-bytes); read in pages with a smaller limit"
    ))
}

fn is_reply_too_large(e: &Error) -> bool {
    matches!(e, Error::InvalidInput { message } if message.starts_with(REPLY_TOO_LARGE))
}

/// Why a request was turned away before its operation ran: the status, the error, and whether
/// the caller should come back shortly (`Retry-After`). Each protocol renders it its own way.
struct Refusal {
    status: StatusCode,
    error: Error,
    retry_after: bool,
}

impl Refusal {
    fn new(status: StatusCode, error: Error) -> Self {
        Refusal {
            status,
            error,
            retry_after: false,
        }
    }

    /// `503`: the server is full; the caller should come back shortly.
    fn overloaded(what: &str) -> Self {
        Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: Error::Unavailable {
                message: format!("the server is busy ({what}); retry shortly"),
            },
            retry_after: true,
        }
    }

    fn too_large(max_body: usize) -> Self {
        let message = format!(
            "request body over the server's limit of {max_body} bytes (silo serve --max-body-bytes)"
        );
        Refusal::new(StatusCode::PAYLOAD_TOO_LARGE, Error::invalid(message))
    }

    /// The VGI wire's rendering: the error kind's answer with this status.
    fn into_wire_response(self) -> Response {
        let mut response = error_with_status(self.status, &self.error);
        if self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A request let in: its caller's scope prefix, its body, the reply limit that applies, and
/// the request slot and body bytes it holds until its work ends.
struct Admitted {
    prefix: Vec<u8>,
    body: axum::body::Bytes,
    reply_limit: usize,
    held: (
        tokio::sync::OwnedSemaphorePermit,
        tokio::sync::OwnedSemaphorePermit,
    ),
}

/// Lets a request in, for any protocol: a request slot, a reservation of its body's bytes,
/// then its body, read within the body deadline and the body limit. Counts what it refuses.
async fn admit(app: &Arc<App>, request: Request) -> Result<Admitted, Refusal> {
    let prefix = match request.extensions().get::<Caller>() {
        Some(caller) => caller.prefix.clone(),
        None => {
            return Err(Refusal::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                Error::invalid("no caller (a server bug)"),
            ));
        }
    };
    let max_body = app.config.max_body_bytes;
    let declared = declared_length(request.headers());
    if declared.is_some_and(|n| n > max_body) {
        app.metrics.reject(Rejection::TooLarge);
        return Err(Refusal::too_large(max_body));
    }
    let limits = app.config.limits;
    // The client's own reply limit, when it sends one: the reply is checked against the
    // smaller limit inside the operation's transaction, so a write whose reply the client
    // would refuse is rolled back rather than lost on the way.
    let reply_limit = request
        .headers()
        .get(wire::MAX_REPLY_HEADER)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .map_or(limits.max_reply_bytes, |client| {
            usize::try_from(client)
                .map_or(limits.max_reply_bytes, |c| c.min(limits.max_reply_bytes))
        });
    // Owned permits travel with the work into the blocking pool: a client that hangs up
    // drops this future, not the work, and the work keeps its slot until it ends.
    let slot = tokio::time::timeout(limits.queue_wait, app.requests.clone().acquire_owned());
    let Ok(Ok(slot)) = slot.await else {
        app.metrics.reject(Rejection::Overloaded);
        return Err(Refusal::overloaded(
            "every request slot is taken; silo serve --max-concurrent-requests",
        ));
    };
    // Reserve the body's bytes before reading them: the declared length, or the most a body
    // may be when the caller streams it without one (capped at the whole budget).
    let reserve = declared
        .unwrap_or(max_body)
        .clamp(1, inflight_budget(&limits));
    let permits = u32::try_from(reserve).unwrap_or(u32::MAX);
    let bytes = tokio::time::timeout(
        limits.queue_wait,
        app.body_bytes.clone().acquire_many_owned(permits),
    );
    let Ok(Ok(bytes)) = bytes.await else {
        app.metrics.reject(Rejection::Overloaded);
        return Err(Refusal::overloaded(
            "too many request bytes in flight; silo serve --max-inflight-bytes",
        ));
    };
    let body = http_body_util::Limited::new(request.into_body(), max_body);
    let body = match tokio::time::timeout(limits.body_timeout, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e))
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            app.metrics.reject(Rejection::TooLarge);
            return Err(Refusal::too_large(max_body));
        }
        Ok(Err(e)) => {
            app.metrics.reject(Rejection::Undecodable);
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                Error::invalid(format!("cannot read the body: {e}")),
            ));
        }
        Err(_) => {
            app.metrics.reject(Rejection::Timeout);
            return Err(Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                Error::invalid(format!(
                    "the body did not arrive within {:?} (silo serve --body-timeout-ms)",
                    limits.body_timeout
                )),
            ));
        }
    };
    Ok(Admitted {
        prefix,
        body,
        reply_limit,
        held: (slot, bytes),
    })
}

/// Runs `job` inline (catching a panic) or on the blocking pool; a panic comes back as its
/// message.
async fn run_job<T: Send + 'static>(
    inline: bool,
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    if inline {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).map_err(|panic| {
            panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into())
        })
    } else {
        tokio::task::spawn_blocking(job)
            .await
            .map_err(|join| join.to_string())
    }
}

async fn rpc(State(app): State<Arc<App>>, request: Request) -> Response {
    let Admitted {
        prefix,
        body,
        reply_limit,
        held,
    } = match admit(&app, request).await {
        Ok(admitted) => admitted,
        Err(refusal) => return refusal.into_wire_response(),
    };
    let limits = app.config.limits;
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
    let items = items_of(&request.op);
    if items > limits.max_items {
        app.metrics.reject(Rejection::TooManyItems);
        return error_with_status(
            StatusCode::PAYLOAD_TOO_LARGE,
            &Error::invalid(format!(
                "{} carries {items} items, over the server's limit of {} \
                 (silo serve --max-items); split it into several requests",
                request.op.name(),
                limits.max_items
            )),
        );
    }
    let op = request.op.index();
    let started = Instant::now();
    let inline =
        app.config.inline_point_ops && body.len() <= INLINE_MAX_BODY && is_point_op(&request.op);
    let worker = app.clone();
    let job = move || {
        let _held = held;
        worker.execute(&prefix, reply_limit, &body, request)
    };
    let outcome = run_job(inline, job).await;
    let response = match outcome {
        Ok(Ok(reply)) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], reply).into_response()
        }
        Ok(Err(e)) => {
            if is_reply_too_large(&e) {
                app.metrics.reject(Rejection::ReplyTooLarge);
            } else if !matches!(e, Error::InvalidInput { .. } | Error::Conflict { .. }) {
                tracing::warn!(op = OP_NAMES[op], "request failed: {e}");
            }
            error_response(&e)
        }
        Err(panic) => {
            tracing::error!(op = OP_NAMES[op], "request handler panicked: {panic}");
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

fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

#[derive(Serialize)]
struct Info {
    server: &'static str,
    version: &'static str,
    ops: &'static [&'static str],
    max_body_bytes: usize,
    max_items: usize,
    max_reply_bytes: usize,
    multi_tenant: bool,
    /// A replicated `fs:` store's last frame in object storage (single-tenant servers only:
    /// it counts every tenant's writes).
    #[serde(skip_serializing_if = "Option::is_none")]
    durable_frame_no: Option<u64>,
}

async fn info(State(app): State<Arc<App>>) -> Response {
    let durable_frame_no = if app.config.auth.is_single_tenant() {
        let store = app.config.store.clone();
        tokio::task::spawn_blocking(move || store.durable_frame_no())
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
    } else {
        None
    };
    let info = Info {
        durable_frame_no,
        server: "silo",
        version: env!("CARGO_PKG_VERSION"),
        ops: OP_NAMES,
        max_body_bytes: app.config.max_body_bytes,
        max_items: app.config.limits.max_items,
        max_reply_bytes: app.config.limits.max_reply_bytes,
        multi_tenant: !app.config.auth.is_single_tenant(),
    };
    match serde_json::to_string(&info) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
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
