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

impl TempStore {
    /// A fresh SQLite store that reads a manual clock (the kit's waits advance it), with
    /// values up to 65 MiB; and the clock.
    pub fn sqlite_clocked() -> (TempStore, silo::Clock) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("state.db");
        let clock = silo::Clock::manual_now();
        let options = silo::StoreOptions {
            max_value_bytes: 65 << 20,
            clock: clock.clone(),
            ..silo::StoreOptions::default()
        };
        let store = Arc::new(silo::SqliteStorage::open(&path, options).expect("open sqlite"));
        let url = silo::sqlite_url(&path).expect("a URL");
        (TempStore { store, url, dir }, clock)
    }
}

impl TempStore {
    /// A fresh `fs:` store in a temporary directory; `query` is the URL query, possibly empty.
    pub fn fs(query: &str) -> TempStore {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut url = format!("fs://{}/store", dir.path().display());
        if !query.is_empty() {
            url = format!("{url}?{query}");
        }
        let store = silo::open(&url).expect("open fs store");
        TempStore { store, url, dir }
    }

    /// A fresh `fs:` store on a manual clock, with values up to 65 MiB; and the clock.
    pub fn fs_clocked() -> (TempStore, silo::Clock) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("store");
        let clock = silo::Clock::manual_now();
        let options = silo::StoreOptions {
            max_value_bytes: 65 << 20,
            clock: clock.clone(),
            ..silo::StoreOptions::default()
        };
        let store = Arc::new(
            silo::fs::FsStorage::open(&path, options, silo::fs::FsTuning::default())
                .expect("open fs"),
        );
        let url = format!("fs://{}", path.display());
        (TempStore { store, url, dir }, clock)
    }
}

impl Deref for TempStore {
    type Target = dyn FunctionStorage;
    fn deref(&self) -> &Self::Target {
        &*self.store
    }
}
