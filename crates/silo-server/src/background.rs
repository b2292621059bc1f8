//! A server on a thread and runtime of its own, on a free loopback port, stopped gracefully
//! when dropped: for tests, benchmarks and programs that embed `silo serve`.

use std::future::Future;
use std::net::SocketAddr;
use std::thread::JoinHandle;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::Config;

/// A running background server.
pub struct Background {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `silo serve` over `config`, in the background on `127.0.0.1:<free port>`.
pub fn spawn(config: Config) -> std::io::Result<Background> {
    spawn_with(move |listener, stop| async move {
        if let Err(e) = crate::serve(listener, config, stop).await {
            tracing::error!("background server failed: {e}");
        }
    })
}

/// Any axum router, run the same way (a stand-in server in tests and benchmarks).
pub fn spawn_router(router: axum::Router) -> std::io::Result<Background> {
    spawn_with(move |listener, stop| async move {
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!("background server failed: {e}");
        }
    })
}

fn spawn_with<F, Fut>(run: F) -> std::io::Result<Background>
where
    F: FnOnce(TcpListener, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut
        + Send
        + 'static,
    Fut: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        runtime.block_on(async move {
            match TcpListener::from_std(std_listener) {
                Ok(listener) => {
                    let stop = Box::pin(async {
                        let _ = stop_rx.await;
                    });
                    run(listener, stop).await;
                }
                Err(e) => tracing::error!("cannot adopt the listener: {e}"),
            }
        });
    });
    Ok(Background {
        addr,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}
