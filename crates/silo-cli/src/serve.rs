//! `silo serve`: opens the store, binds, prints `PORT:<n>`, and runs the server until SIGINT
//! or SIGTERM.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use silo::FunctionStorage;
use silo_server::{Auth, Config};

use crate::cli::ServeArgs;

/// The store `silo serve` uses (see `silo serve --help`).
fn store_url(explicit: Option<&str>) -> silo::Result<String> {
    if let Some(url) = explicit {
        return Ok(url.to_string());
    }
    if let Some(path) = std::env::var("VGI_STORAGE_DB")
        .ok()
        .filter(|p| !p.is_empty())
    {
        if !path.starts_with('/') {
            return Err(silo::Error::config(format!(
                "VGI_STORAGE_DB={path:?} must be an absolute path"
            )));
        }
        return silo::sqlite_url(std::path::Path::new(&path));
    }
    match std::env::var("SILO_STORAGE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        Some(url) => Ok(url),
        None => silo::default_url(),
    }
}

/// Why `silo serve` stopped: a bad command line or setting (exit 2), or a failure (exit 3).
pub enum ServeError {
    Usage(String),
    Failed(String),
}

impl From<String> for ServeError {
    fn from(e: String) -> Self {
        ServeError::Failed(e)
    }
}

fn store_error(e: silo::Error) -> ServeError {
    match e {
        silo::Error::Config { .. } | silo::Error::InvalidInput { .. } => {
            ServeError::Usage(e.to_string())
        }
        other => ServeError::Failed(other.to_string()),
    }
}

/// Logs to stderr at `SILO_LOG` (default `info`): `silo serve`, `silo replicate`, `silo restore`.
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SILO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
}

pub fn run(args: ServeArgs, store: Option<&str>) -> Result<(), ServeError> {
    init_logging();
    let url = store_url(store).map_err(store_error)?;
    let auth = match (&args.token, &args.tokens) {
        (_, Some(file)) => Auth::from_tokens_file(file).map_err(ServeError::Usage)?,
        (Some(token), None) if token.is_empty() => {
            return Err(ServeError::Usage(
                "the token is empty (--token or VGI_STORAGE_TOKEN), which would leave the \
                 server open to anyone; set a long random token, or unset it to serve without \
                 auth on loopback"
                    .into(),
            ));
        }
        (Some(token), None) => Auth::Token(token.clone()),
        (None, None) => Auth::Open,
    };
    let store: Arc<dyn FunctionStorage> = silo::open(&url).map_err(store_error)?;
    let orphan_ttl = Duration::from_secs(args.orphan_ttl);
    let orphan_sweep = (!args.no_orphan_sweep).then(|| match args.sweep_every {
        Some(secs) => silo_server::OrphanSweep {
            ttl: orphan_ttl,
            every: Duration::from_secs(secs.max(1)),
        },
        None => silo_server::OrphanSweep::for_ttl(orphan_ttl),
    });
    let limits = silo_server::Limits {
        max_concurrent_requests: args.max_concurrent_requests,
        max_inflight_bytes: args.max_inflight_bytes.max(args.max_body_bytes),
        queue_wait: Duration::from_millis(args.queue_wait_ms),
        header_timeout: Duration::from_millis(args.header_timeout_ms.max(1)),
        body_timeout: Duration::from_millis(args.body_timeout_ms.max(1)),
        max_connections: args.max_connections,
        max_items: args.max_items,
        max_reply_bytes: args.max_reply_bytes,
    };
    // The shipper starts before the server, so a bad target is refused before any write.
    let shipping = match &args.replicate {
        Some(to) => {
            Some(crate::replicate::Background::start(&url, to, &args.ship).map_err(store_error)?)
        }
        None => None,
    };
    let config = Config {
        inline_point_ops: store.answers_in_microseconds(),
        store,
        auth,
        max_body_bytes: args.max_body_bytes,
        idempotency_window: Duration::from_secs(args.idempotency_window),
        limits,
        orphan_sweep,
    };
    raise_fd_limit(limits.max_connections);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let served = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.bind)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.bind))?;
        let local = listener
            .local_addr()
            .map_err(|e| format!("cannot read the bound address: {e}"))?;
        if matches!(config.auth, Auth::Open) && !local.ip().is_loopback() {
            tracing::warn!(
                "listening on {local} with no token: anyone who can reach it can read and \
                 change the store; pass --token or --tokens"
            );
        }
        // Supervisors read this line to learn the port.
        let mut stdout = std::io::stdout();
        writeln!(stdout, "PORT:{}", local.port())
            .and_then(|()| stdout.flush())
            .map_err(|e| format!("cannot write the PORT line: {e}"))?;
        tracing::info!(
            "silo serve listening on http://{local}, store {}",
            silo::redact_url(&url)
        );
        let stopping = async {
            shutdown_signal().await;
            tracing::info!("shutting down: finishing requests in flight");
        };
        silo_server::serve(listener, config, stopping)
            .await
            .map_err(|e| format!("server failed: {e}"))?;
        tracing::info!("silo serve stopped");
        Ok(())
    });
    if let Some(shipping) = shipping {
        // What the last requests wrote is shipped before the process ends.
        shipping.finish();
    }
    served
}

/// Raises the soft open-file limit toward the hard one, so that `--max-connections` clients
/// (plus the store's files) fit; warns when they cannot.
fn raise_fd_limit(connections: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        let want = (connections as libc::rlim_t).saturating_add(64);
        if limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    if (limit.rlim_cur as usize) < connections.saturating_add(64) {
        tracing::warn!(
            "the open-file limit ({}) is below --max-connections ({connections}) plus the \
             store's files; raise `ulimit -n` or lower --max-connections",
            limit.rlim_cur
        );
    }
}

/// Returns at SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot watch SIGTERM ({e}); stop with SIGINT");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
