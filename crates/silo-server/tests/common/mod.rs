//! Test servers: `silo_server::serve` on a runtime of its own, on a temporary SQLite store,
//! stopped (gracefully) when dropped.
#![allow(dead_code)]

use std::ops::Deref;
use std::sync::Arc;

use silo::FunctionStorage;
use silo::http::{HttpOptions, HttpStorage};
use silo_server::Config;

/// A server in the background; `TestServer::start` panics if it cannot start.
pub type TestServer = silo_server::Background;

pub fn start(config: Config) -> TestServer {
    silo_server::spawn(config).expect("start a test server")
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
        Self::on(sqlite_url(query))
    }

    /// A server over a fresh `fs:` store and an http client of it.
    pub fn fs(query: &str) -> HttpStore {
        let dir = tempfile::tempdir().unwrap();
        let mut url = format!("fs://{}/store", dir.path().display());
        if !query.is_empty() {
            url = format!("{url}?{query}");
        }
        Self::on((dir, url))
    }

    fn on((dir, store_url): (tempfile::TempDir, String)) -> HttpStore {
        let server = start(Config::new(silo::open(&store_url).unwrap()));
        let client = Arc::new(HttpStorage::new(&server.url(), HttpOptions::default()).unwrap());
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

/// POSTs a raw body to `url`'s `/rpc` (with a bearer token when given): the status and the
/// body as text.
pub fn post(url: &str, token: Option<&str>, body: &[u8]) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent.post(format!("{url}/rpc"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let mut resp = req.send(body).unwrap();
    let status = resp.status().as_u16();
    let text = String::from_utf8_lossy(&resp.body_mut().read_to_vec().unwrap()).into_owned();
    (status, text)
}
