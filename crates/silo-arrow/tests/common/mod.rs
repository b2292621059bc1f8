//! The stores every silo-arrow test runs on: memory, sqlite, fs, and http (a `silo serve` in
//! this process over an fs store), each with its own temporary directory; the returned guard
//! keeps the directory and the server alive.

use std::any::Any;
use std::sync::Arc;

use silo::FunctionStorage;

/// A store's name, the store, and what keeps it alive.
pub type TestStore = (&'static str, Arc<dyn FunctionStorage>, Box<dyn Any>);

pub fn stores() -> Vec<TestStore> {
    let dir = || tempfile::tempdir().unwrap();
    let (a, b, c, d) = (dir(), dir(), dir(), dir());
    let served = silo::open(&format!("fs://{}/fs", d.path().display())).unwrap();
    let server = silo_server::spawn(silo_server::Config::new(served)).unwrap();
    let http = silo::open(&server.url()).unwrap();
    vec![
        ("memory", silo::open("memory:").unwrap(), Box::new(a)),
        (
            "sqlite",
            silo::open(&format!("sqlite://{}/s.db", b.path().display())).unwrap(),
            Box::new(b),
        ),
        (
            "fs",
            silo::open(&format!("fs://{}/fs", c.path().display())).unwrap(),
            Box::new(c),
        ),
        ("http", http, Box::new((server, d))),
    ]
}
