//! Test servers: `silo_server::serve` on a runtime of its own, on a temporary SQLite store,
//! stopped (gracefully) when dropped.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::thread::JoinHandle;

use silo::FunctionStorage;
use silo::http::{HttpOptions, HttpStorage};
use silo_server::Config;

pub struct TestServer {
    pub addr: SocketAddr,
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn start(config: Config) -> TestServer {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                silo_server::serve(listener, config, async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
            });
        });
        let addr = addr_rx.recv().unwrap();
        TestServer {
            addr,
            url: format!("http://{addr}"),
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A temporary SQLite store's URL and directory.
pub fn sqlite_url(query: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut url = format!("sqlite://{}/server.db", dir.path().display());
    if !query.is_empty() {
        url = format!("{url}?{query}");
    }
    (dir, url)
}

/// A server over a fresh SQLite store and an http client of it.
pub struct HttpStore {
    pub client: Arc<dyn FunctionStorage>,
    pub server: TestServer,
    pub store_url: String,
    pub dir: tempfile::TempDir,
}

impl HttpStore {
    pub fn new(query: &str) -> HttpStore {
        let (dir, store_url) = sqlite_url(query);
        let server = TestServer::start(Config::new(silo::open(&store_url).unwrap()));
        let client = Arc::new(HttpStorage::new(&server.url, HttpOptions::default()).unwrap());
        HttpStore {
            client,
            server,
            store_url,
            dir,
        }
    }
}

impl Deref for HttpStore {
    type Target = dyn FunctionStorage;
    fn deref(&self) -> &Self::Target {
        &*self.client
    }
}
