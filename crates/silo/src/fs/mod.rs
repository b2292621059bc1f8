//! `fs:///abs/dir` — silo's own log-structured backend (SPEC §5): the contract on top of the
//! engine in [`engine`]. Each operation reads the index, decides its records (ids, times,
//! preconditions) and commits them as one frame; reads resolve values with one positioned
//! read. Safe across threads and processes; `sync=full` fsyncs every commit, sharing one
//! fsync among the writers that wait for it (group commit).

mod engine;
pub mod history;
mod index;
#[cfg(test)]
mod live_tests;
mod record;

use std::cell::RefCell;
use std::path::Path;
use std::time::Duration;

use parking_lot::ReentrantMutex;
use silo_engine::{Dir, FileDir, Store, sync_through};

pub use engine::FsTuning;
use engine::{Committed, Engine, load_value};
use index::{Index, Item, Scope, ValRef};
use record::Rec;

use crate::options::{lease_millis, millis};
use crate::storage::{Entry, KeyValue, key_reused};
use crate::{
    Claim, DeadLetter, Error, FunctionStorage, KeyRange, Result, Selection, StoreOptions,
    StoreStats, SyncMode,
};

/// A store in a directory, on any [`Dir`] (a real one by default; tests use in-memory and
/// fault-injecting ones).
pub struct FsStore<D: Dir = FileDir> {
    options: StoreOptions,
    location: String,
    /// Reentrant so that the operations `apply_once` runs can take it again on its thread.
    engine: ReentrantMutex<RefCell<Engine<D>>>,
    /// The page shared with the store's other processes: its sync lock and record of how
    /// far the log is durable make one fsync serve every writer that waited for it.
    shared: D::Shared,
}

/// The `fs:` store on a real directory.
pub type FsStorage = FsStore<FileDir>;

impl<D: Dir> std::fmt::Debug for FsStore<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsStore")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl FsStore<FileDir> {
    /// Opens (creating, 0700) the store in the directory `path`.
    pub fn open(path: impl AsRef<Path>, options: StoreOptions, tuning: FsTuning) -> Result<Self> {
        let path = path.as_ref();
        let dir = FileDir::open(path).map_err(|e| {
            engine::io_error(
                "opening the store directory",
                &path.display().to_string(),
                e,
            )
        })?;
        Self::open_in(dir, options, tuning)
    }
}

impl<D: Dir> FsStore<D> {
    /// Opens (creating when empty) the store in `dir`.
    pub fn open_in(dir: D, options: StoreOptions, tuning: FsTuning) -> Result<Self> {
        let engine = Engine::open(dir, tuning, options.busy_timeout)?;
        Ok(FsStore {
            location: format!("fs://{}", engine.describe()),
            options,
            shared: engine.shared().clone(),
            engine: ReentrantMutex::new(RefCell::new(engine)),
        })
    }

    /// Rewrites the live state compactly now (it also runs on its own when the chain holds
    /// more dead bytes than live ones, or the log has outgrown the base: see [`FsTuning`]).
    pub fn compact(&self) -> Result<()> {
        let guard = self.engine.lock();
        let mut eng = guard.try_borrow_mut().map_err(|_| reentered())?;
        if eng.txn.is_some() {
            return Err(Error::invalid("compact cannot run inside apply_once"));
        }
        let _held = eng.lock_exclusive(self.options.busy_timeout)?;
        eng.catch_up(true)?;
        eng.compact()
    }

    /// Runs `f` on the index as of now (the open transaction's, inside `apply_once`).
    fn read<T>(&self, f: impl FnOnce(&Reader<'_, D>) -> Result<T>) -> Result<T> {
        let guard = self.engine.lock();
        let mut eng = guard.try_borrow_mut().map_err(|_| reentered())?;
        let eng = &mut *eng;
        let Some(txn) = eng.txn.as_mut() else {
            eng.catch_up(false)?;
            return f(&Reader {
                eng,
                index: &eng.index,
            });
        };
        txn.index_so_far(&eng.index)?;
        let eng = &*eng;
        let index = eng
            .txn
            .as_ref()
            .and_then(|t| t.working.as_ref())
            .unwrap_or(&eng.index);
        f(&Reader { eng, index })
    }

    /// Runs `f` as one committed frame: under the writers' lock, caught up, all or nothing.
    /// Inside `apply_once` it joins the open transaction instead.
    fn write<T>(&self, f: impl FnOnce(&mut Tx<'_, D>) -> Result<T>) -> Result<T> {
        let guard = self.engine.lock();
        let mut eng = guard.try_borrow_mut().map_err(|_| reentered())?;
        let joined = &mut *eng;
        if let Some(txn) = joined.txn.as_mut().filter(|t| t.held.is_some()) {
            txn.index_so_far(&joined.index)?;
            return run_tx(joined, &self.options, f);
        }
        let held = eng.lock_exclusive(self.options.busy_timeout)?;
        eng.catch_up(true)?;
        eng.begin(None);
        let outcome = run_tx(&mut eng, &self.options, f);
        let finished = match outcome {
            Ok(_) => {
                eng.stamp(self.options.clock.now_ms());
                eng.commit_and_maintain()
            }
            Err(_) => {
                eng.txn = None;
                (Ok(None), Ok(()))
            }
        };
        drop(held);
        drop(eng);
        drop(guard);
        self.settle(finished)?;
        outcome
    }

    /// After the locks are released: makes a committed frame durable, and logs a seal or
    /// compaction that failed after it (the write stands; see [`report_maintenance`]).
    fn settle(&self, (committed, maintained): engine::Finished<D::File>) -> Result<()> {
        if let Some(c) = committed? {
            self.make_durable(c)?;
        }
        report_maintenance(maintained);
        Ok(())
    }

    /// Under `sync=full`, fsyncs the segment up to `c.end` unless a concurrent writer's fsync,
    /// in this process or another, already covered it.
    fn make_durable(&self, c: Committed<D::File>) -> Result<()> {
        if self.options.sync != SyncMode::Full {
            return Ok(());
        }
        let done = sync_through(
            &self.shared,
            c.segment,
            c.end,
            self.options.busy_timeout,
            || {
                // Measured before syncing: everything appended up to it is covered.
                let end = c.file.len()?;
                c.file.sync()?;
                Ok(end)
            },
        )
        .map_err(|e| engine::io_error("syncing a commit", &self.location, e))?;
        if !done {
            return Err(Error::Unavailable {
                message: format!(
                    "another process held the sync lock of {} for longer than {:?} \
                     (busy_timeout_ms)",
                    self.location, self.options.busy_timeout
                ),
            });
        }
        Ok(())
    }

    /// `apply_once` and `apply_atomically`: the writers' lock held for the whole effect, its
    /// records and the reply's record committed as one frame.
    fn transact(
        &self,
        record: Option<(&[u8], &[u8])>,
        apply: &mut dyn FnMut(&dyn FunctionStorage) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let guard = self.engine.lock();
        {
            let mut eng = guard.try_borrow_mut().map_err(|_| reentered())?;
            if eng.txn.as_ref().is_some_and(|t| t.held.is_some()) {
                return Err(Error::invalid("apply_once cannot be nested"));
            }
            let held = eng.lock_exclusive(self.options.busy_timeout)?;
            eng.catch_up(true)?;
            if let Some((key, fingerprint)) = record
                && let Some(stored) = eng.index.once.get(key)
            {
                if !stored.fingerprint.is_empty() && stored.fingerprint != fingerprint {
                    return Err(key_reused());
                }
                return eng.load_value(stored.reply);
            }
            eng.begin(Some(held));
        }
        struct Rollback<'a, D: Dir>(&'a RefCell<Engine<D>>);
        impl<D: Dir> Drop for Rollback<'_, D> {
            fn drop(&mut self) {
                if let Ok(mut eng) = self.0.try_borrow_mut() {
                    eng.txn = None;
                }
            }
        }
        let rollback = Rollback(&guard);
        let reply = apply(self)?;
        let mut eng = guard.try_borrow_mut().map_err(|_| reentered())?;
        if let Some((key, fingerprint)) = record {
            let now = self.options.clock.now_ms();
            run_tx(&mut eng, &self.options, |tx| {
                tx.emit(&Rec::Once {
                    key,
                    fingerprint,
                    reply: &reply,
                    at: now,
                })
            })?;
        }
        let held = eng.txn.as_mut().and_then(|t| t.held.take());
        eng.stamp(self.options.clock.now_ms());
        let finished = eng.commit_and_maintain();
        drop(held);
        drop(eng);
        drop(rollback);
        drop(guard);
        self.settle(finished)?;
        Ok(reply)
    }
}

/// A seal or compaction after a committed write failed: the write stands (reporting it as
/// failed would tell a popper its item is still queued); the store retries at the next write
/// and rebuilds this process's view from the files first.
fn report_maintenance(outcome: Result<()>) {
    if let Err(e) = outcome {
        tracing::warn!(error = %e, "fs: sealing or compacting after a write failed; retried later");
    }
}

fn reentered() -> Error {
    Error::Backend {
        backend: "fs".into(),
        message: "an operation re-entered the store while it was in use (a silo bug)".into(),
    }
}

fn run_tx<D: Dir, T>(
    eng: &mut Engine<D>,
    options: &StoreOptions,
    f: impl FnOnce(&mut Tx<'_, D>) -> Result<T>,
) -> Result<T> {
    let Engine {
        txn,
        files,
        dir,
        index,
        ..
    } = eng;
    let Some(txn) = txn.as_mut() else {
        return Err(Error::Backend {
            backend: "fs".into(),
            message: "a write ran without a transaction (a silo bug)".into(),
        });
    };
    f(&mut Tx {
        txn,
        live: index,
        files,
        dir,
        now: options.clock.now_ms(),
        options,
    })
}

/// Read access to the index and the values it points at.
struct Reader<'a, D: Dir> {
    eng: &'a Engine<D>,
    index: &'a Index,
}

impl<D: Dir> Reader<'_, D> {
    fn value(&self, r: ValRef) -> Result<Vec<u8>> {
        self.eng.load_value(r)
    }

    fn scope(&self, scope: &[u8]) -> Option<&Scope> {
        self.index.scopes.get(scope)
    }
}

/// A write in progress: reads the transaction's index, emits records into its frame.
struct Tx<'a, D: Dir> {
    txn: &'a mut engine::Txn,
    /// The index as committed; a single operation decides from it (see [`engine::Txn`]).
    live: &'a Index,
    files: &'a [engine::OpenFile<D::File>],
    dir: &'a D,
    now: i64,
    options: &'a StoreOptions,
}

impl<D: Dir> Tx<'_, D> {
    fn index(&self) -> &Index {
        self.txn.working.as_ref().unwrap_or(self.live)
    }

    fn scope(&self, scope: &[u8]) -> Option<&Scope> {
        self.index().scopes.get(scope)
    }

    fn value(&self, r: ValRef) -> Result<Vec<u8>> {
        load_value(self.files, Some(self.txn), r, self.dir)
    }

    /// Adds a record to the frame. It is folded into an index only after the operation
    /// (see [`engine::Txn`]): an operation decides all its records from the state before it.
    fn emit(&mut self, rec: &Rec<'_, &[u8]>) -> Result<()> {
        self.txn.timed |= matches!(rec, Rec::Touch { .. } | Rec::Once { .. });
        self.txn.enc.push(rec);
        Ok(())
    }

    /// Marks the scope written now (creating it).
    fn touch(&mut self, scope: &[u8]) -> Result<()> {
        let now = self.now;
        self.emit(&Rec::Touch { scope, at: now })
    }

    /// Marks an existing scope written now; false when the scope does not exist.
    fn touch_existing(&mut self, scope: &[u8]) -> Result<bool> {
        if self.scope(scope).is_none() {
            return Ok(false);
        }
        self.touch(scope)?;
        Ok(true)
    }

    /// Buries the exhausted items in front of the next deliverable one; returns its id.
    fn next_visible(&mut self, scope: &[u8]) -> Result<Option<i64>> {
        let max_attempts = self.options.max_attempts;
        let Some(s) = self.scope(scope) else {
            return Ok(None);
        };
        let (buried, next) = s.next_visible(self.now, max_attempts);
        let now = self.now;
        for id in buried {
            self.emit(&Rec::Bury { scope, id, at: now })?;
        }
        Ok(next)
    }

    /// The next deliverable item of an existing scope (marking it written and burying the
    /// exhausted items in front), with its id.
    fn take_head(&mut self, scope: &[u8]) -> Result<Option<(i64, Item)>> {
        if !self.touch_existing(scope)? {
            return Ok(None);
        }
        let Some(id) = self.next_visible(scope)? else {
            return Ok(None);
        };
        Ok(self
            .scope(scope)
            .and_then(|s| s.queue.get(&id))
            .map(|item| (id, *item)))
    }

    /// Runs `f(item id)` when `claim_id` is a live lease of the scope, marking it written.
    fn with_live_claim(
        &mut self,
        scope: &[u8],
        claim_id: i64,
        f: impl FnOnce(&mut Self, i64) -> Result<()>,
    ) -> Result<bool> {
        let Some(item_id) = self
            .scope(scope)
            .and_then(|s| s.live_claim(claim_id, self.now))
        else {
            return Ok(false);
        };
        self.touch(scope)?;
        f(self, item_id)?;
        Ok(true)
    }
}

impl<D: Dir> FunctionStorage for FsStore<D> {
    fn state_get(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.read(|r| {
            match r
                .scope(scope)
                .and_then(|s| s.state.get(ns))
                .and_then(|m| m.get(key))
            {
                Some(v) => r.value(*v).map(Some),
                None => Ok(None),
            }
        })
    }

    fn state_put(&self, scope: &[u8], ns: &[u8], key: &[u8], value: &[u8]) -> Result<()> {
        self.options.check_path(scope, ns, key)?;
        self.options.check_value(value)?;
        self.write(|tx| {
            tx.touch(scope)?;
            tx.emit(&Rec::Put {
                scope,
                ns,
                key,
                value,
            })
        })
    }

    fn state_del(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<bool> {
        Ok(self.state_delete(scope, ns, &Selection::Keys(vec![key.to_vec()]))? > 0)
    }

    fn state_get_many(
        &self,
        scope: &[u8],
        ns: &[u8],
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>> {
        self.read(|r| {
            let map = r.scope(scope).and_then(|s| s.state.get(ns));
            keys.iter()
                .map(|k| match map.and_then(|m| m.get(k)) {
                    Some(v) => r.value(*v).map(Some),
                    None => Ok(None),
                })
                .collect()
        })
    }

    fn state_put_many(&self, scope: &[u8], ns: &[u8], items: &[KeyValue]) -> Result<()> {
        for (key, value) in items {
            self.options.check_path(scope, ns, key)?;
            self.options.check_value(value)?;
        }
        self.write(|tx| {
            tx.touch(scope)?;
            for (key, value) in items {
                tx.emit(&Rec::Put {
                    scope,
                    ns,
                    key,
                    value,
                })?;
            }
            Ok(())
        })
    }

    fn state_scan(
        &self,
        scope: &[u8],
        ns: &[u8],
        range: &KeyRange,
        reverse: bool,
        limit: u64,
    ) -> Result<Vec<KeyValue>> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        self.read(|r| {
            let Some(map) = r.scope(scope).and_then(|s| s.state.get(ns)) else {
                return Ok(Vec::new());
            };
            let iter = map.range::<_, [u8]>(range.bounds());
            let pair = |(k, v): (&Vec<u8>, &ValRef)| Ok((k.clone(), r.value(*v)?));
            if reverse {
                iter.rev().take(limit).map(pair).collect()
            } else {
                iter.take(limit).map(pair).collect()
            }
        })
    }

    fn state_delete(&self, scope: &[u8], ns: &[u8], selection: &Selection) -> Result<u64> {
        self.write(|tx| {
            if !tx.touch_existing(scope)? {
                return Ok(0);
            }
            let Some(map) = tx.scope(scope).and_then(|s| s.state.get(ns)).cloned() else {
                return Ok(0);
            };
            let doomed: Vec<Vec<u8>> = match selection {
                Selection::Keys(keys) => keys
                    .iter()
                    .filter(|k| map.contains_key(*k))
                    .cloned()
                    .collect(),
                Selection::Range(range) if range.is_empty() => Vec::new(),
                Selection::Range(range) => map
                    .range::<_, [u8]>(range.bounds())
                    .map(|(k, _)| k.clone())
                    .collect(),
                Selection::All => {
                    tx.emit(&Rec::DropNs { scope, ns })?;
                    return Ok(map.len() as u64);
                }
            };
            // A key listed twice is removed (and counted) once.
            let doomed: std::collections::BTreeSet<Vec<u8>> = doomed.into_iter().collect();
            for key in &doomed {
                tx.emit(&Rec::Del { scope, ns, key })?;
            }
            Ok(doomed.len() as u64)
        })
    }

    fn state_drain(&self, scope: &[u8], ns: &[u8]) -> Result<Vec<KeyValue>> {
        self.write(|tx| {
            if !tx.touch_existing(scope)? {
                return Ok(Vec::new());
            }
            let Some(map) = tx.scope(scope).and_then(|s| s.state.get(ns)).cloned() else {
                return Ok(Vec::new());
            };
            let pairs = map
                .iter()
                .map(|(k, v)| Ok((k.clone(), tx.value(*v)?)))
                .collect::<Result<Vec<_>>>()?;
            tx.emit(&Rec::DropNs { scope, ns })?;
            Ok(pairs)
        })
    }

    fn append(&self, scope: &[u8], ns: &[u8], key: &[u8], value: &[u8]) -> Result<i64> {
        self.options.check_path(scope, ns, key)?;
        self.options.check_value(value)?;
        self.write(|tx| {
            tx.touch(scope)?;
            let id = tx.index().seq.last_log_id + 1;
            tx.emit(&Rec::Append {
                scope,
                ns,
                key,
                id,
                value,
            })?;
            Ok(id)
        })
    }

    fn scan(
        &self,
        scope: &[u8],
        ns: &[u8],
        key: &[u8],
        after_id: i64,
        limit: u64,
    ) -> Result<Vec<Entry>> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        self.read(|r| {
            let Some(log) = r
                .scope(scope)
                .and_then(|s| s.logs.get(&(ns.to_vec(), key.to_vec())))
            else {
                return Ok(Vec::new());
            };
            // Ids are strictly increasing along the log: the first id above `after_id`.
            let start = match log.binary_search_by(|(id, _)| id.cmp(&after_id)) {
                Ok(at) => at + 1,
                Err(at) => at,
            };
            log.skip(start.min(log.len()))
                .iter()
                .take(limit)
                .map(|(id, v)| Ok((*id, r.value(*v)?)))
                .collect()
        })
    }

    fn counter_get(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<i64> {
        self.read(|r| Ok(r.scope(scope).and_then(|s| s.counter(ns, key)).unwrap_or(0)))
    }

    fn counter_add(&self, scope: &[u8], ns: &[u8], key: &[u8], delta: i64) -> Result<i64> {
        self.options.check_path(scope, ns, key)?;
        self.write(|tx| {
            let old = tx
                .scope(scope)
                .and_then(|s| s.counter(ns, key))
                .unwrap_or(0);
            let value = old.checked_add(delta).ok_or_else(|| {
                Error::invalid(format!(
                    "counter_add({delta}) would overflow the value {old}"
                ))
            })?;
            tx.touch(scope)?;
            tx.emit(&Rec::CounterSet {
                scope,
                ns,
                key,
                value,
            })?;
            Ok(value)
        })
    }

    fn counter_set(&self, scope: &[u8], ns: &[u8], key: &[u8], value: i64) -> Result<i64> {
        self.options.check_path(scope, ns, key)?;
        self.write(|tx| {
            let old = tx
                .scope(scope)
                .and_then(|s| s.counter(ns, key))
                .unwrap_or(0);
            tx.touch(scope)?;
            tx.emit(&Rec::CounterSet {
                scope,
                ns,
                key,
                value,
            })?;
            Ok(old)
        })
    }

    fn counter_delete(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<i64> {
        self.write(|tx| {
            if !tx.touch_existing(scope)? {
                return Ok(0);
            }
            let old = tx.scope(scope).and_then(|s| s.counter(ns, key));
            if old.is_some() {
                tx.emit(&Rec::CounterDel { scope, ns, key })?;
            }
            Ok(old.unwrap_or(0))
        })
    }

    fn queue_push(&self, scope: &[u8], items: &[Vec<u8>]) -> Result<()> {
        self.options.check_name("scope", scope)?;
        for item in items {
            self.options.check_value(item)?;
        }
        self.write(|tx| {
            tx.touch(scope)?;
            let last = tx.index().seq.last_item_id;
            for (id, value) in (last + 1..).zip(items) {
                tx.emit(&Rec::Item {
                    scope,
                    id,
                    value,
                    attempts: 0,
                    visible_at: 0,
                    claim: 0,
                })?;
            }
            Ok(())
        })
    }

    fn queue_pop(&self, scope: &[u8]) -> Result<Option<Vec<u8>>> {
        self.write(|tx| {
            let Some((id, item)) = tx.take_head(scope)? else {
                return Ok(None);
            };
            let value = tx.value(item.value)?;
            tx.emit(&Rec::Remove { scope, id })?;
            Ok(Some(value))
        })
    }

    fn queue_len(&self, scope: &[u8]) -> Result<u64> {
        self.read(|r| Ok(r.scope(scope).map_or(0, |s| s.queue.len() as u64)))
    }

    fn queue_clear(&self, scope: &[u8]) -> Result<u64> {
        self.write(|tx| {
            if !tx.touch_existing(scope)? {
                return Ok(0);
            }
            let dropped = tx
                .scope(scope)
                .map_or(0, |s| (s.queue.len() + s.dead.len()) as u64);
            tx.emit(&Rec::QueueClear { scope })?;
            Ok(dropped)
        })
    }

    fn queue_claim(&self, scope: &[u8], lease: Duration) -> Result<Option<Claim>> {
        let lease_ms = lease_millis(lease)?;
        self.write(|tx| {
            let Some((id, item)) = tx.take_head(scope)? else {
                return Ok(None);
            };
            let claim = tx.index().seq.last_claim_id + 1;
            let value = tx.value(item.value)?;
            let visible_at = tx.now.saturating_add(lease_ms);
            tx.emit(&Rec::Claim {
                scope,
                id,
                claim,
                visible_at,
            })?;
            Ok(Some(Claim {
                id: claim,
                value,
                attempt: item.attempts.saturating_add(1),
            }))
        })
    }

    fn queue_ack(&self, scope: &[u8], claim_id: i64) -> Result<bool> {
        self.write(|tx| {
            tx.with_live_claim(scope, claim_id, |tx, id| {
                tx.emit(&Rec::Remove { scope, id })
            })
        })
    }

    fn queue_release(&self, scope: &[u8], claim_id: i64) -> Result<bool> {
        self.write(|tx| {
            tx.with_live_claim(scope, claim_id, |tx, id| {
                tx.emit(&Rec::Release { scope, id })
            })
        })
    }

    fn queue_extend(&self, scope: &[u8], claim_id: i64, lease: Duration) -> Result<bool> {
        let lease_ms = lease_millis(lease)?;
        self.write(|tx| {
            let visible_at = tx.now.saturating_add(lease_ms);
            tx.with_live_claim(scope, claim_id, |tx, id| {
                tx.emit(&Rec::Extend {
                    scope,
                    id,
                    visible_at,
                })
            })
        })
    }

    fn queue_dead_letters(&self, scope: &[u8], limit: u64) -> Result<Vec<DeadLetter>> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        self.read(|r| {
            let Some(s) = r.scope(scope) else {
                return Ok(Vec::new());
            };
            s.dead
                .iter()
                .take(limit)
                .map(|d| {
                    Ok(DeadLetter {
                        value: r.value(d.value)?,
                        attempts: d.attempts,
                        dead_at_ms: d.at,
                    })
                })
                .collect()
        })
    }

    fn clear(&self, scope: &[u8]) -> Result<u64> {
        self.write(|tx| {
            let Some(entries) = tx.scope(scope).map(|s| s.entries()) else {
                return Ok(0);
            };
            tx.emit(&Rec::Clear { scope })?;
            Ok(entries)
        })
    }

    fn gc_prefix(&self, scope_prefix: &[u8], ttl: Duration) -> Result<u64> {
        self.write(|tx| {
            let cutoff = tx.now.saturating_sub(millis(ttl));
            let doomed: Vec<Vec<u8>> = tx
                .index()
                .scopes
                .iter()
                .filter(|(name, s)| name.starts_with(scope_prefix) && s.touched_ms < cutoff)
                .map(|(name, _)| name.clone())
                .collect();
            for scope in &doomed {
                tx.emit(&Rec::Clear { scope })?;
            }
            Ok(doomed.len() as u64)
        })
    }

    fn apply_once(
        &self,
        key: &[u8],
        fingerprint: &[u8],
        apply: &mut dyn FnMut(&dyn FunctionStorage) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        self.transact(Some((key, fingerprint)), apply)
    }

    fn apply_atomically(
        &self,
        apply: &mut dyn FnMut(&dyn FunctionStorage) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        self.transact(None, apply)
    }

    fn expire_once_keys(&self, age: Duration) -> Result<u64> {
        self.write(|tx| {
            let cutoff = tx.now.saturating_sub(millis(age));
            let expired = tx.index().once.values().filter(|r| r.at < cutoff).count() as u64;
            if expired > 0 {
                tx.emit(&Rec::ExpireOnce { cutoff })?;
            }
            Ok(expired)
        })
    }

    fn answers_in_microseconds(&self) -> bool {
        self.options.sync != SyncMode::Full
    }

    fn durable_frame_no(&self) -> Result<Option<u64>> {
        let guard = self.engine.lock();
        let eng = guard.try_borrow().map_err(|_| reentered())?;
        Ok(history::read_mark(&eng.dir)?.map(|m| m.shipped_through))
    }

    fn stat(&self) -> Result<StoreStats> {
        self.read(|r| {
            let mut stats = StoreStats {
                backend: "fs".into(),
                location: self.location.clone(),
                max_attempts: self.options.max_attempts,
                max_value_bytes: self.options.max_value_bytes as u64,
                scopes: r.index.scopes.len() as u64,
                bytes_on_disk: Some(r.eng.bytes_on_disk()),
                durable_frame_no: history::read_mark(&r.eng.dir)?.map(|m| m.shipped_through),
                ..StoreStats::default()
            };
            for s in r.index.scopes.values() {
                stats.state_entries += s.state.values().map(|m| m.len() as u64).sum::<u64>();
                stats.log_entries += s.logs.values().map(|l| l.len() as u64).sum::<u64>();
                stats.counters += s.counters.len() as u64;
                stats.queue_items += s.queue.len() as u64;
                stats.dead_letters += s.dead.len() as u64;
            }
            Ok(stats)
        })
    }
}
