//! `memory:` — the in-process backend. Everything lives in one map of scopes behind one
//! reentrant lock; it is the reference the other backends are checked against, and it is not
//! shared across processes.
//!
//! The maps are persistent (`imbl`): cloning the whole store is O(1), which is how
//! `apply_once` takes a snapshot before its effect and puts it back when the effect fails,
//! without copying any data. Values are shared `Arc<[u8]>` so that the copy-on-write of a
//! map node never copies value bytes.

use std::cell::{Cell, RefCell, RefMut};
use std::sync::Arc;
use std::time::Duration;

use imbl::{HashMap, OrdMap, Vector};
use parking_lot::{ReentrantMutex, ReentrantMutexGuard};

use crate::options::{lease_millis, millis};
use crate::storage::{Entry, KeyValue};
use crate::{
    Claim, DeadLetter, Error, FunctionStorage, KeyRange, Result, Selection, StoreOptions,
    StoreStats,
};

/// Bytes shared between a snapshot and the live store.
type Val = Arc<[u8]>;

/// A log: `(id, value)` in id order.
type Log = Vector<(i64, Val)>;

/// The in-process store.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    options: StoreOptions,
    /// Reentrant so that the operations `apply_once` runs can take it again on the thread
    /// that holds it for the whole check-apply-record.
    inner: ReentrantMutex<Store>,
}

#[derive(Debug, Default)]
struct Store {
    data: RefCell<Inner>,
    /// Set while `apply_once` runs on the thread holding the lock.
    in_apply_once: Cell<bool>,
}

#[derive(Clone, Debug, Default)]
struct Inner {
    scopes: HashMap<Vec<u8>, Scope>,
    seq: Sequences,
    /// `apply_once` records by key.
    once: HashMap<Vec<u8>, OnceRecord>,
}

/// A stored `apply_once` reply, the fingerprint of the request it answered, and when it was
/// stored (ms since the epoch).
#[derive(Clone, Debug)]
struct OnceRecord {
    reply: Val,
    fingerprint: Val,
    created_ms: i64,
}

/// Store-wide sequences, so ids are never reused, even after a scope is cleared.
#[derive(Clone, Debug, Default)]
struct Sequences {
    last_log_id: i64,
    last_item_id: i64,
    last_claim_id: i64,
}

#[derive(Clone, Debug, Default)]
struct Scope {
    touched_ms: i64,
    state: HashMap<Vec<u8>, OrdMap<Vec<u8>, Val>>,
    logs: HashMap<(Vec<u8>, Vec<u8>), Log>,
    counters: HashMap<(Vec<u8>, Vec<u8>), i64>,
    queue: OrdMap<i64, Item>,
    /// claim id → item id, for the items currently claimed.
    claims: HashMap<i64, i64>,
    dead: Vector<DeadLetter>,
}

#[derive(Clone, Debug)]
struct Item {
    value: Val,
    attempts: u32,
    /// Claimed until this time; 0 when never claimed or released.
    visible_at_ms: i64,
    claim: Option<i64>,
}

/// Puts a snapshot back unless disarmed: `apply_once`'s rollback on error and on panic.
struct Rollback<'a> {
    store: &'a Store,
    snapshot: Option<Inner>,
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        self.store.in_apply_once.set(false);
        if let (Some(snapshot), Ok(mut data)) =
            (self.snapshot.take(), self.store.data.try_borrow_mut())
        {
            *data = snapshot;
        }
    }
}

impl MemoryStorage {
    /// An empty store with default options.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with `options`.
    pub fn with_options(options: StoreOptions) -> Self {
        MemoryStorage {
            options,
            inner: ReentrantMutex::default(),
        }
    }

    /// Runs `f` with the store's data; the lock is reentrant, the borrow is not, and no
    /// operation calls another while it holds the borrow.
    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> Result<T> {
        let guard: ReentrantMutexGuard<'_, Store> = self.inner.lock();
        let mut data: RefMut<'_, Inner> =
            guard.data.try_borrow_mut().map_err(|_| Error::Backend {
                backend: "memory".into(),
                message: "an operation re-entered the store while it was in use (a silo bug)"
                    .into(),
            })?;
        Ok(f(&mut data))
    }

    /// Runs `f` on the scope's data, creating the scope and marking it written.
    fn write<T>(&self, scope: &[u8], f: impl FnOnce(&mut Scope, &mut Sequences) -> T) -> Result<T> {
        self.with(|inner| {
            let Inner { scopes, seq, .. } = inner;
            let data = scopes.entry(scope.to_vec()).or_default();
            data.touched_ms = self.options.clock.now_ms();
            f(data, seq)
        })
    }

    /// Runs `f` on the scope's data if the scope exists, marking it written.
    fn change<T>(
        &self,
        scope: &[u8],
        f: impl FnOnce(&mut Scope, &mut Sequences, i64) -> T,
    ) -> Result<Option<T>> {
        self.with(|inner| {
            let Inner { scopes, seq, .. } = inner;
            let data = scopes.get_mut(scope)?;
            let now = self.options.clock.now_ms();
            data.touched_ms = now;
            Some(f(data, seq, now))
        })
    }

    /// Runs `f` on the scope's data if the scope exists.
    fn read<T>(&self, scope: &[u8], f: impl FnOnce(&Scope) -> T) -> Result<Option<T>> {
        self.with(|inner| inner.scopes.get(scope).map(f))
    }

    /// Runs `apply` with every other caller locked out, putting the snapshot taken before it
    /// back when it fails or panics; with a `(key, fingerprint)` record, replays or refuses a
    /// recorded key first and records the reply with the effect.
    fn transact(
        &self,
        record: Option<(&[u8], &[u8])>,
        apply: &mut dyn FnMut(&dyn FunctionStorage) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let guard = self.inner.lock();
        if guard.in_apply_once.get() {
            return Err(Error::invalid("apply_once cannot be nested"));
        }
        let snapshot = {
            let data = guard.data.try_borrow().map_err(|_| Error::Backend {
                backend: "memory".into(),
                message: "apply_once re-entered the store while it was in use (a silo bug)".into(),
            })?;
            if let Some(stored) = record.and_then(|(key, _)| data.once.get(key)) {
                return replay(stored, record.map_or(&[][..], |(_, fp)| fp));
            }
            data.clone()
        };
        guard.in_apply_once.set(true);
        let mut rollback = Rollback {
            store: &guard,
            snapshot: Some(snapshot),
        };
        let reply = apply(self)?;
        if let Some((key, fingerprint)) = record {
            self.with(|inner| {
                inner.once.insert(
                    key.to_vec(),
                    OnceRecord {
                        reply: Val::from(&reply[..]),
                        fingerprint: Val::from(fingerprint),
                        created_ms: self.options.clock.now_ms(),
                    },
                );
            })?;
        }
        rollback.snapshot = None;
        drop(rollback);
        Ok(reply)
    }

    /// Runs `f(scope, item id, now)` when `claim_id` is a live lease of the scope, marking the
    /// scope written; returns whether it was.
    fn with_live_claim(
        &self,
        scope: &[u8],
        claim_id: i64,
        f: impl FnOnce(&mut Scope, i64, i64),
    ) -> Result<bool> {
        self.with(|inner| {
            let Some(s) = inner.scopes.get_mut(scope) else {
                return false;
            };
            let now = self.options.clock.now_ms();
            let Some(item_id) = s.live_claim(claim_id, now) else {
                return false;
            };
            s.touched_ms = now;
            f(s, item_id, now);
            true
        })
    }
}

impl Scope {
    /// How many entries the scope holds: state pairs, log entries, counters, queue items
    /// (claimed ones included) and dead letters. What `clear` answers.
    pub(crate) fn entries(&self) -> u64 {
        let state: usize = self.state.values().map(|m| m.len()).sum();
        let logs: usize = self.logs.values().map(|l| l.len()).sum();
        (state + logs + self.counters.len() + self.queue.len() + self.dead.len()) as u64
    }

    /// The id of the oldest item that may be delivered now, dead-lettering exhausted ones.
    fn next_visible(&mut self, now: i64, max_attempts: u32) -> Option<i64> {
        loop {
            // The head is visible unless it is claimed: look at it before walking the queue.
            let (&id, item) = match self.queue.get_min() {
                Some((id, item)) if item.visible_at_ms <= now => (id, item),
                _ => self
                    .queue
                    .iter()
                    .find(|(_, item)| item.visible_at_ms <= now)?,
            };
            if item.attempts < max_attempts {
                return Some(id);
            }
            let item = self.queue.remove(&id)?;
            if let Some(claim) = item.claim {
                self.claims.remove(&claim);
            }
            self.dead.push_back(DeadLetter {
                value: item.value.to_vec(),
                attempts: item.attempts,
                dead_at_ms: now,
            });
        }
    }

    /// The id of the item a live claim refers to.
    fn live_claim(&self, claim_id: i64, now: i64) -> Option<i64> {
        let item_id = *self.claims.get(&claim_id)?;
        let item = self.queue.get(&item_id)?;
        (item.claim == Some(claim_id) && item.visible_at_ms > now).then_some(item_id)
    }
}

impl FunctionStorage for MemoryStorage {
    fn state_get(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .read(scope, |s| {
                s.state.get(ns).and_then(|m| m.get(key)).map(|v| v.to_vec())
            })?
            .flatten())
    }

    fn state_put(&self, scope: &[u8], ns: &[u8], key: &[u8], value: &[u8]) -> Result<()> {
        self.options.check_path(scope, ns, key)?;
        self.options.check_value(value)?;
        self.write(scope, |s, _| {
            s.state
                .entry(ns.to_vec())
                .or_default()
                .insert(key.to_vec(), Val::from(value));
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
        let found = self.read(scope, |s| {
            let map = s.state.get(ns);
            keys.iter()
                .map(|k| map.and_then(|m| m.get(k)).map(|v| v.to_vec()))
                .collect()
        })?;
        Ok(found.unwrap_or_else(|| vec![None; keys.len()]))
    }

    fn state_put_many(&self, scope: &[u8], ns: &[u8], items: &[KeyValue]) -> Result<()> {
        for (key, value) in items {
            self.options.check_path(scope, ns, key)?;
            self.options.check_value(value)?;
        }
        self.write(scope, |s, _| {
            let map = s.state.entry(ns.to_vec()).or_default();
            for (key, value) in items {
                map.insert(key.clone(), Val::from(&value[..]));
            }
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
        let found = self.read(scope, |s| {
            let Some(map) = s.state.get(ns) else {
                return Vec::new();
            };
            let iter = map.range::<_, [u8]>(range.bounds());
            let pair = |(k, v): (&Vec<u8>, &Val)| (k.clone(), v.to_vec());
            if reverse {
                iter.rev().take(limit).map(pair).collect()
            } else {
                iter.take(limit).map(pair).collect()
            }
        })?;
        Ok(found.unwrap_or_default())
    }

    fn state_delete(&self, scope: &[u8], ns: &[u8], selection: &Selection) -> Result<u64> {
        let removed = self.change(scope, |s, _, _| {
            let Some(map) = s.state.get_mut(ns) else {
                return 0;
            };
            match selection {
                Selection::Keys(keys) => keys.iter().filter(|k| map.remove(*k).is_some()).count(),
                Selection::Range(range) if range.is_empty() => 0,
                Selection::Range(range) => {
                    let doomed: Vec<Vec<u8>> = map
                        .range::<_, [u8]>(range.bounds())
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in &doomed {
                        map.remove(k);
                    }
                    doomed.len()
                }
                Selection::All => std::mem::take(map).len(),
            }
        })?;
        Ok(removed.unwrap_or(0) as u64)
    }

    fn state_drain(&self, scope: &[u8], ns: &[u8]) -> Result<Vec<KeyValue>> {
        let drained = self.change(scope, |s, _, _| {
            s.state
                .remove(ns)
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.to_vec())).collect())
                .unwrap_or_default()
        })?;
        Ok(drained.unwrap_or_default())
    }

    fn append(&self, scope: &[u8], ns: &[u8], key: &[u8], value: &[u8]) -> Result<i64> {
        self.options.check_path(scope, ns, key)?;
        self.options.check_value(value)?;
        self.write(scope, |s, seq| {
            seq.last_log_id += 1;
            let id = seq.last_log_id;
            s.logs
                .entry((ns.to_vec(), key.to_vec()))
                .or_default()
                .push_back((id, Val::from(value)));
            id
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
        let found = self.read(scope, |s| {
            let Some(log) = s.logs.get(&(ns.to_vec(), key.to_vec())) else {
                return Vec::new();
            };
            // Ids are strictly increasing along the log: the first id above `after_id`.
            let start = match log.binary_search_by(|(id, _)| id.cmp(&after_id)) {
                Ok(at) => at + 1,
                Err(at) => at,
            };
            // `Vector::skip` is O(log n); an iterator's skip would walk every earlier entry.
            log.skip(start.min(log.len()))
                .iter()
                .take(limit)
                .map(|(id, v)| (*id, v.to_vec()))
                .collect()
        })?;
        Ok(found.unwrap_or_default())
    }

    fn counter_get(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<i64> {
        let found = self.read(scope, |s| {
            s.counters.get(&(ns.to_vec(), key.to_vec())).copied()
        })?;
        Ok(found.flatten().unwrap_or(0))
    }

    fn counter_add(&self, scope: &[u8], ns: &[u8], key: &[u8], delta: i64) -> Result<i64> {
        self.options.check_path(scope, ns, key)?;
        self.write(scope, |s, _| {
            let slot = s.counters.entry((ns.to_vec(), key.to_vec())).or_insert(0);
            *slot = slot.checked_add(delta).ok_or_else(|| {
                Error::invalid(format!(
                    "counter_add({delta}) would overflow the value {slot}"
                ))
            })?;
            Ok(*slot)
        })?
    }

    fn counter_set(&self, scope: &[u8], ns: &[u8], key: &[u8], value: i64) -> Result<i64> {
        self.options.check_path(scope, ns, key)?;
        self.write(scope, |s, _| {
            s.counters
                .insert((ns.to_vec(), key.to_vec()), value)
                .unwrap_or(0)
        })
    }

    fn counter_delete(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<i64> {
        let old = self.change(scope, |s, _, _| {
            s.counters.remove(&(ns.to_vec(), key.to_vec())).unwrap_or(0)
        })?;
        Ok(old.unwrap_or(0))
    }

    fn queue_push(&self, scope: &[u8], items: &[Vec<u8>]) -> Result<()> {
        self.options.check_name("scope", scope)?;
        for item in items {
            self.options.check_value(item)?;
        }
        self.write(scope, |s, seq| {
            for value in items {
                seq.last_item_id += 1;
                s.queue.insert(
                    seq.last_item_id,
                    Item {
                        value: Val::from(&value[..]),
                        attempts: 0,
                        visible_at_ms: 0,
                        claim: None,
                    },
                );
            }
        })
    }

    fn queue_pop(&self, scope: &[u8]) -> Result<Option<Vec<u8>>> {
        let max_attempts = self.options.max_attempts;
        let popped = self.change(scope, |s, _, now| {
            let id = s.next_visible(now, max_attempts)?;
            let item = s.queue.remove(&id)?;
            if let Some(claim) = item.claim {
                s.claims.remove(&claim);
            }
            Some(item.value.to_vec())
        })?;
        Ok(popped.flatten())
    }

    fn queue_len(&self, scope: &[u8]) -> Result<u64> {
        Ok(self.read(scope, |s| s.queue.len() as u64)?.unwrap_or(0))
    }

    fn queue_clear(&self, scope: &[u8]) -> Result<u64> {
        let dropped = self.change(scope, |s, _, _| {
            let dropped = s.queue.len() + s.dead.len();
            s.queue = OrdMap::new();
            s.claims = HashMap::new();
            s.dead = Vector::new();
            dropped as u64
        })?;
        Ok(dropped.unwrap_or(0))
    }

    fn queue_claim(&self, scope: &[u8], lease: Duration) -> Result<Option<Claim>> {
        let lease_ms = lease_millis(lease)?;
        let max_attempts = self.options.max_attempts;
        let claim = self.change(scope, |s, seq, now| {
            let id = s.next_visible(now, max_attempts)?;
            seq.last_claim_id += 1;
            let claim_id = seq.last_claim_id;
            let item = s.queue.get_mut(&id)?;
            let stale = item.claim.replace(claim_id);
            item.attempts += 1;
            item.visible_at_ms = now.saturating_add(lease_ms);
            let claim = Claim {
                id: claim_id,
                value: item.value.to_vec(),
                attempt: item.attempts,
            };
            if let Some(stale) = stale {
                s.claims.remove(&stale);
            }
            s.claims.insert(claim_id, id);
            Some(claim)
        })?;
        Ok(claim.flatten())
    }

    fn queue_ack(&self, scope: &[u8], claim_id: i64) -> Result<bool> {
        self.with_live_claim(scope, claim_id, |s, item_id, _| {
            s.queue.remove(&item_id);
            s.claims.remove(&claim_id);
        })
    }

    fn queue_release(&self, scope: &[u8], claim_id: i64) -> Result<bool> {
        self.with_live_claim(scope, claim_id, |s, item_id, _| {
            if let Some(item) = s.queue.get_mut(&item_id) {
                item.visible_at_ms = 0;
                item.claim = None;
            }
            s.claims.remove(&claim_id);
        })
    }

    fn queue_extend(&self, scope: &[u8], claim_id: i64, lease: Duration) -> Result<bool> {
        let lease_ms = lease_millis(lease)?;
        self.with_live_claim(scope, claim_id, |s, item_id, now| {
            if let Some(item) = s.queue.get_mut(&item_id) {
                item.visible_at_ms = now.saturating_add(lease_ms);
            }
        })
    }

    fn queue_dead_letters(&self, scope: &[u8], limit: u64) -> Result<Vec<DeadLetter>> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Ok(self
            .read(scope, |s| s.dead.iter().take(limit).cloned().collect())?
            .unwrap_or_default())
    }

    fn clear(&self, scope: &[u8]) -> Result<u64> {
        self.with(|inner| inner.scopes.remove(scope).map_or(0, |s| s.entries()))
    }

    fn gc_prefix(&self, scope_prefix: &[u8], ttl: Duration) -> Result<u64> {
        let cutoff = self.options.clock.now_ms().saturating_sub(millis(ttl));
        self.with(|inner| {
            let before = inner.scopes.len();
            inner
                .scopes
                .retain(|name, s| !name.starts_with(scope_prefix) || s.touched_ms >= cutoff);
            (before - inner.scopes.len()) as u64
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
        let cutoff = self.options.clock.now_ms().saturating_sub(millis(age));
        self.with(|inner| {
            let before = inner.once.len();
            inner.once.retain(|_, record| record.created_ms >= cutoff);
            (before - inner.once.len()) as u64
        })
    }

    fn answers_in_microseconds(&self) -> bool {
        true
    }

    fn stat(&self) -> Result<StoreStats> {
        self.with(|inner| {
            let mut stats = StoreStats {
                backend: "memory".into(),
                location: "memory:".into(),
                max_attempts: self.options.max_attempts,
                max_value_bytes: self.options.max_value_bytes as u64,
                scopes: inner.scopes.len() as u64,
                ..StoreStats::default()
            };
            for s in inner.scopes.values() {
                stats.state_entries += s.state.values().map(|m| m.len() as u64).sum::<u64>();
                stats.log_entries += s.logs.values().map(|l| l.len() as u64).sum::<u64>();
                stats.counters += s.counters.len() as u64;
                stats.queue_items += s.queue.len() as u64;
                stats.dead_letters += s.dead.len() as u64;
            }
            stats
        })
    }
}

/// The stored reply of an `apply_once` key, if the request is the one it answered.
fn replay(record: &OnceRecord, fingerprint: &[u8]) -> Result<Vec<u8>> {
    if record.fingerprint.is_empty() || *record.fingerprint == *fingerprint {
        return Ok(record.reply.to_vec());
    }
    Err(crate::storage::key_reused())
}
