//! Helpers shared by the integration tests: temporary stores and child worker processes.
#![allow(dead_code)]

use std::ops::Deref;
use std::sync::Arc;

use silo::FunctionStorage;

/// A store in a temporary directory that lives as long as the guard.
pub struct TempStore {
    pub store: Arc<dyn FunctionStorage>,
    pub url: String,
    pub dir: tempfile::TempDir,
}

impl TempStore {
    /// A fresh SQLite store; `query` is the URL query (options), possibly empty.
    pub fn sqlite(query: &str) -> TempStore {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut url = format!("sqlite://{}/state.db", dir.path().display());
        if !query.is_empty() {
            url = format!("{url}?{query}");
        }
        let store = silo::open(&url).expect("open sqlite store");
        TempStore { store, url, dir }
    }
}

impl Deref for TempStore {
    type Target = dyn FunctionStorage;
    fn deref(&self) -> &Self::Target {
        &*self.store
    }
}
