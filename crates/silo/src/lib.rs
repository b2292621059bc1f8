//! # silo — durable, cross-process state for pooled worker processes
//!
//! DuckDB's VGI protocol runs user functions in pools of worker processes; one query's pieces
//! (the sink and source of a buffering function, an aggregate's per-group state, a parallel
//! scan's work queue) land in different processes and must share state that outlives each of
//! them. silo is that state layer: one contract, [`FunctionStorage`], and interchangeable
//! backends built from one URL by [`open`].
//!
//! ```
//! # fn main() -> silo::Result<()> {
//! let dir = tempfile::tempdir().expect("temp dir");
//! let store = silo::open(&format!("sqlite://{}/state.db", dir.path().display()))?;
//!
//! store.kv_put(b"query-42", b"group:7", b"partial sum")?;
//! let id = store.append(b"query-42", b"batches", b"sink", b"arrow ipc bytes")?;
//! store.queue_push(b"query-42", &[b"partition 0".to_vec(), b"partition 1".to_vec()])?;
//!
//! assert_eq!(store.kv_get(b"query-42", b"group:7")?.as_deref(), Some(&b"partial sum"[..]));
//! assert_eq!(store.scan(b"query-42", b"batches", b"sink", 0, u64::MAX)?[0].0, id);
//! assert_eq!(store.queue_pop(b"query-42")?.as_deref(), Some(&b"partition 0"[..]));
//! store.clear(b"query-42")?;
//! # Ok(())
//! # }
//! ```

#[cfg(feature = "conformance")]
pub mod conformance;
mod error;
#[cfg(feature = "fs")]
pub mod fs;
#[cfg(feature = "http")]
pub mod http;
mod layer;
mod memory;
mod open;
mod options;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
mod storage;
#[cfg(feature = "wire")]
pub mod wire;

pub use error::{Error, Result};

/// This library's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub use layer::{Layer, Layered, Prefix, PrefixStore};
pub use memory::MemoryStorage;
pub use open::{
    DEFAULT_ORPHAN_TTL, EnvConfig, default_fs_path, default_sqlite_path, default_url, from_env,
    fs_dir, open, redact_url, sqlite_url,
};
pub use options::{Clock, StoreOptions, SyncMode};
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStorage;
pub use storage::{
    Claim, DeadLetter, Entry, FunctionStorage, KeyRange, KeyValue, MAX_LIST_LEN, Selection,
    StoreStats,
};
