//! Fault injection over any store: a [`Layer`] that fails every n-th operation, either before
//! it reaches the store or after the store applied it (the case a retry must not repeat) —
//! including, in that mode, an `apply_once` that committed its effect and record.
//! Wrap a store in it — under a server, inside `apply_once` — to prove that a failure at any
//! point loses nothing and applies nothing twice.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::{Error, Layer, Layered, Result};

/// When an injected fault strikes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMode {
    /// The operation never reaches the store.
    Before,
    /// The store applies the operation, then the caller gets an error instead of its result
    /// (a crash or a lost reply after the effect).
    After,
}

/// Fails every `every`-th operation (0 = none) with `Unavailable`. Clones share the plan.
#[derive(Clone, Debug)]
pub struct Faults(Arc<Plan>);

#[derive(Debug)]
struct Plan {
    mode: FaultMode,
    every: AtomicU64,
    calls: AtomicU64,
    injected: AtomicU64,
}

/// A store with faults injected: `Layered::with_layer(store, Faults::every(3, FaultMode::After))`.
pub type FaultyStore<S> = Layered<S, Faults>;

impl Faults {
    /// Fails every `every`-th operation (0 = none) in `mode`.
    pub fn every(every: u64, mode: FaultMode) -> Self {
        Faults(Arc::new(Plan {
            mode,
            every: AtomicU64::new(every),
            calls: AtomicU64::new(0),
            injected: AtomicU64::new(0),
        }))
    }

    /// Changes the period (0 stops the faults).
    pub fn set_every(&self, every: u64) {
        self.0.every.store(every, Ordering::SeqCst);
    }

    /// How many faults were injected so far.
    pub fn injected(&self) -> u64 {
        self.0.injected.load(Ordering::SeqCst)
    }
}

impl Layer for Faults {
    fn call<T>(&self, op: &'static str, inner: impl FnOnce() -> Result<T>) -> Result<T> {
        // Bookkeeping passes. Faults strike operations; in `After` mode they also strike
        // `apply_once` after it committed (a lost reply), which only a replay survives.
        let transaction = matches!(op, "apply_once" | "apply_atomically");
        if matches!(op, "expire_once_keys" | "stat")
            || (transaction && self.0.mode == FaultMode::Before)
        {
            return inner();
        }
        let plan = &self.0;
        let every = plan.every.load(Ordering::SeqCst);
        let n = plan.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if every == 0 || !n.is_multiple_of(every) {
            return inner();
        }
        plan.injected.fetch_add(1, Ordering::SeqCst);
        let injected = |when: &str| Error::Unavailable {
            message: format!("injected fault {when} {op} (call {n})"),
        };
        match plan.mode {
            FaultMode::Before => Err(injected("before")),
            FaultMode::After => {
                inner()?;
                Err(injected("after"))
            }
        }
    }
}
