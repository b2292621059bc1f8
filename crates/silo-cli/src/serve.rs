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
        return Ok(format!("sqlite://{path}"));
    }
    match std::env::var("SILO_STORAGE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        Some(url) => Ok(url),
        None => silo::default_url(),
    }
}

pub fn run(args: ServeArgs, store: Option<&str>) -> Result<(), String> {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SILO_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let url = store_url(store).map_err(|e| e.to_string())?;
    let store: Arc<dyn FunctionStorage> = silo::open(&url).map_err(|e| e.to_string())?;
    let auth = match (&args.token, &args.tokens) {
        (_, Some(file)) => Auth::from_tokens_file(file)?,
        (Some(token), None) if !token.is_empty() => Auth::Token(token.clone()),
        _ => Auth::Open,
    };
    let config = Config {
        store,
        auth,
        max_body_bytes: args.max_body_bytes,
        idempotency_window: Duration::from_secs(args.idempotency_window),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(async move {
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
        tracing::info!("silo serve listening on http://{local}, store {url}");
        silo_server::serve(listener, config, shutdown_signal())
            .await
            .map_err(|e| format!("server failed: {e}"))?;
        tracing::info!("silo serve stopped");
        Ok(())
    })
}

async fn shutdown_signal() {
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
    tracing::info!("shutting down: finishing requests in flight");
}
