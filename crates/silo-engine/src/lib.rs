//! silo's storage engine (the `fs:` backend, SPEC roadmap step 5), built bottom-up.
//!
//! Its lowest layer is [`store`]: a byte image — read at an offset, append, write in place,
//! truncate, sync, and lock across processes — with a real file, an in-memory image that can
//! "lose power", and a fault-injecting wrapper. Everything above is written only against the
//! [`Store`] trait, so every crash and I/O failure can be replayed in tests. Processes of one
//! store coordinate through a [`Shared`] page: the writers' lock and a change counter.

pub mod dir;
pub mod frame;
pub mod shared;
pub mod store;

pub use dir::{Dir, FaultyDir, FileDir, MemDir};
pub use frame::{FrameLog, FrameRef, LogError, Recovery, decode_frames};
pub use shared::{Locked, MemShared, PageLock, Shared, SharedFile, Synced, sync_through};
pub use store::{FaultPlan, Faults, FaultyStore, FileStore, LockMode, MemStore, Store, StoreLock};
