//! The stores every silo-arrow test runs on: memory, sqlite and fs, each in its own temporary
//! directory (kept alive by the returned guard).

use std::sync::Arc;

use silo::FunctionStorage;

pub fn stores() -> Vec<(&'static str, Arc<dyn FunctionStorage>, tempfile::TempDir)> {
    let dir = || tempfile::tempdir().unwrap();
    let (a, b, c) = (dir(), dir(), dir());
    vec![
        ("memory", silo::open("memory:").unwrap(), a),
        (
            "sqlite",
            silo::open(&format!("sqlite://{}/s.db", b.path().display())).unwrap(),
            b,
        ),
        (
            "fs",
            silo::open(&format!("fs://{}/fs", c.path().display())).unwrap(),
            c,
        ),
    ]
}
