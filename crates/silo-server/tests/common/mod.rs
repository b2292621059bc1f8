//! Test servers: `silo_server::serve` on a runtime of its own, on a temporary SQLite store,
//! stopped (gracefully) when dropped.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

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

/// How long any answer the server owes may take before the test gives up on it.
pub const PROMPT: Duration = Duration::from_secs(5);

/// One HTTP response: its status, raw head and body.
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Reply {
    /// A header's value (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.head, self.text())
    }
}

/// A connection to `server` whose reads and writes give up after [`PROMPT`].
pub fn connect(server: &TestServer) -> TcpStream {
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(PROMPT)).unwrap();
    stream.set_write_timeout(Some(PROMPT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Reads one response (head, then a `Content-Length` body); panics when none arrives within
/// the socket's read timeout or the connection closes first.
pub fn read_reply(stream: &mut TcpStream) -> Reply {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) => panic!(
                "the connection closed before a response head arrived; got {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!(
                "no response head ({e}); got {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).expect("an ASCII response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP status line: {head:?}"));
    let mut reply = Reply {
        status,
        head,
        body: buf[head_end..].to_vec(),
    };
    let length: usize = reply
        .header("content-length")
        .unwrap_or_else(|| panic!("no Content-Length in {:?}", reply.head))
        .parse()
        .unwrap();
    while reply.body.len() < length {
        match stream.read(&mut chunk) {
            Ok(0) => panic!("the connection closed inside the body: {reply:?}"),
            Ok(n) => reply.body.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("the body did not arrive ({e}): {reply:?}"),
        }
    }
    assert!(reply.head.starts_with("HTTP/1.1 "), "{reply:?}");
    reply
}

/// Sends `bytes` on a new connection and reads the answer.
pub fn send(server: &TestServer, bytes: &[u8]) -> Reply {
    let mut stream = connect(server);
    stream.write_all(bytes).unwrap();
    read_reply(&mut stream)
}
