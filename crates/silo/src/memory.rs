//! `memory:` — the in-process backend. Everything lives in one mutex-guarded map of scopes;
//! it is the reference the other backends are checked against, and it is not shared across
//! processes.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::options::{millis, now_millis};
use crate::storage::{Entry, KeyValue};
use crate::{
    Claim, DeadLetter, Error, FunctionStorage, KeyRange, Result, Selection, StoreOptions,
    StoreStats,
};

/// The in-process store.
#[derive(Debug, Default)]
pub struct MemoryStorage {
    options: StoreOptions,
    inner: Mutex<Inner>,
    /// `apply_once` replies by key, with their creation time; its lock is held across the
    /// whole check-apply-record so that concurrent retries of one key apply once.
    once: Mutex<HashMap<Vec<u8>, OnceReply>>,
}

/// A stored `apply_once` reply and when it was stored (ms since the epoch).
type OnceReply = (Vec<u8>, i64);

#[derive(Debug, Default)]
struct Inner {
    scopes: HashMap<Vec<u8>, Scope>,
    seq: Sequences,
}

/// Store-wide sequences, so ids are never reused, even after a scope is cleared.
#[derive(Debug, Default)]
struct Sequences {
    last_log_id: i64,
    last_item_id: i64,
    last_claim_id: i64,
}

#[derive(Debug, Default)]
struct Scope {
    touched_ms: i64,
    state: HashMap<Vec<u8>, BTreeMap<Vec<u8>, Vec<u8>>>,
    logs: HashMap<(Vec<u8>, Vec<u8>), Vec<Entry>>,
    counters: HashMap<(Vec<u8>, Vec<u8>), i64>,
    queue: BTreeMap<i64, Item>,
    /// claim id → item id, for the items currently claimed.
    claims: HashMap<i64, i64>,
    dead: Vec<DeadLetter>,
}

#[derive(Debug)]
struct Item {
    value: Vec<u8>,
    attempts: u32,
    /// Claimed until this time; 0 when never claimed or released.
    visible_at_ms: i64,
    claim: Option<i64>,
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
            inner: Mutex::default(),
            once: Mutex::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied operation behind: every
        // operation validates before it mutates. So a poisoned lock is still consistent.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the scope's data, creating the scope and marking it written.
    fn write<T>(&self, scope: &[u8], f: impl FnOnce(&mut Scope, &mut Sequences) -> T) -> T {
        let mut guard = self.lock();
        let Inner { scopes, seq } = &mut *guard;
        if !scopes.contains_key(scope) {
            scopes.insert(scope.to_vec(), Scope::default());
        }
        let data = scopes.get_mut(scope).expect("scope inserted above");
        data.touched_ms = now_millis();
        f(data, seq)
    }

    /// Runs `f` on the scope's data if the scope exists.
    fn read<T>(&self, scope: &[u8], f: impl FnOnce(&Scope) -> T) -> Option<T> {
        self.lock().scopes.get(scope).map(f)
    }

    fn check_lease(lease: Duration) -> Result<i64> {
        let ms = millis(lease);
        if ms <= 0 {
            return Err(Error::invalid("a lease must be at least 1 millisecond"));
        }
        Ok(ms)
    }
}

impl Scope {
    /// The id of the oldest item that may be delivered now, dead-lettering exhausted ones.
    fn next_visible(&mut self, now: i64, max_attempts: u32) -> Option<i64> {
        loop {
            let (&id, item) = self
                .queue
                .iter()
                .find(|(_, item)| item.visible_at_ms <= now)?;
            if item.attempts < max_attempts {
                return Some(id);
            }
            let item = self.queue.remove(&id)?;
            if let Some(claim) = item.claim {
                self.claims.remove(&claim);
            }
            self.dead.push(DeadLetter {
                value: item.value,
                attempts: item.attempts,
                dead_at_ms: now,
            });
        }
    }

    /// The item a live claim refers to.
    fn live_claim(&mut self, claim_id: i64, now: i64) -> Option<(i64, &mut Item)> {
        let item_id = *self.claims.get(&claim_id)?;
        let item = self.queue.get_mut(&item_id)?;
        (item.claim == Some(claim_id) && item.visible_at_ms > now).then_some((item_id, item))
    }
}

impl FunctionStorage for MemoryStorage {
    fn state_get(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .read(scope, |s| s.state.get(ns).and_then(|m| m.get(key)).cloned())
            .flatten())
    }

    fn state_put(&self, scope: &[u8], ns: &[u8], key: &[u8], value: &[u8]) -> Result<()> {
        self.options.check_path(scope, ns, key)?;
        self.options.check_value(value)?;
        self.write(scope, |s, _| {
            s.state
                .entry(ns.to_vec())
                .or_default()
                .insert(key.to_vec(), value.to_vec());
        });
        Ok(())
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
                .map(|k| map.and_then(|m| m.get(k)).cloned())
                .collect()
        });
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
                map.insert(key.clone(), value.clone());
            }
        });
        Ok(())
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
            let iter = map.range::<[u8], _>(range.bounds());
            let pair = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
            if reverse {
                iter.rev().take(limit).map(pair).collect()
            } else {
                iter.take(limit).map(pair).collect()
            }
        });
        Ok(found.unwrap_or_default())
    }

    fn state_delete(&self, scope: &[u8], ns: &[u8], selection: &Selection) -> Result<u64> {
        let mut guard = self.lock();
        let Some(data) = guard.scopes.get_mut(scope) else {
            return Ok(0);
        };
        data.touched_ms = now_millis();
        let Some(map) = data.state.get_mut(ns) else {
            return Ok(0);
        };
        let removed = match selection {
            Selection::Keys(keys) => keys.iter().filter(|k| map.remove(*k).is_some()).count(),
            Selection::Range(range) => {
                let before = map.len();
                map.retain(|k, _| !range.contains(k));
                before - map.len()
            }
            Selection::All => std::mem::take(map).len(),
        };
        Ok(removed as u64)
    }

    fn state_drain(&self, scope: &[u8], ns: &[u8]) -> Result<Vec<KeyValue>> {
        let mut guard = self.lock();
        let Some(data) = guard.scopes.get_mut(scope) else {
            return Ok(Vec::new());
        };
        data.touched_ms = now_millis();
        Ok(data
            .state
            .remove(ns)
            .map(|m| m.into_iter().collect())
            .unwrap_or_default())
    }

    fn append(&self, scope: &[u8], ns: &[u8], key: &[u8], value: &[u8]) -> Result<i64> {
        self.options.check_path(scope, ns, key)?;
        self.options.check_value(value)?;
        Ok(self.write(scope, |s, seq| {
            seq.last_log_id += 1;
            let id = seq.last_log_id;
            s.logs
                .entry((ns.to_vec(), key.to_vec()))
                .or_default()
                .push((id, value.to_vec()));
            id
        }))
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
            let start = log.partition_point(|(id, _)| *id <= after_id);
            log[start..].iter().take(limit).cloned().collect()
        });
        Ok(found.unwrap_or_default())
    }

    fn counter_get(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<i64> {
        let found = self.read(scope, |s| {
            s.counters.get(&(ns.to_vec(), key.to_vec())).copied()
        });
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
        })
    }

    fn counter_set(&self, scope: &[u8], ns: &[u8], key: &[u8], value: i64) -> Result<i64> {
        self.options.check_path(scope, ns, key)?;
        Ok(self.write(scope, |s, _| {
            s.counters
                .insert((ns.to_vec(), key.to_vec()), value)
                .unwrap_or(0)
        }))
    }

    fn counter_delete(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<i64> {
        let mut guard = self.lock();
        let Some(data) = guard.scopes.get_mut(scope) else {
            return Ok(0);
        };
        data.touched_ms = now_millis();
        Ok(data
            .counters
            .remove(&(ns.to_vec(), key.to_vec()))
            .unwrap_or(0))
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
                        value: value.clone(),
                        attempts: 0,
                        visible_at_ms: 0,
                        claim: None,
                    },
                );
            }
        });
        Ok(())
    }

    fn queue_pop(&self, scope: &[u8]) -> Result<Option<Vec<u8>>> {
        let max_attempts = self.options.max_attempts;
        let mut guard = self.lock();
        let Some(data) = guard.scopes.get_mut(scope) else {
            return Ok(None);
        };
        data.touched_ms = now_millis();
        let Some(id) = data.next_visible(data.touched_ms, max_attempts) else {
            return Ok(None);
        };
        let item = data.queue.remove(&id);
        if let Some(claim) = item.as_ref().and_then(|i| i.claim) {
            data.claims.remove(&claim);
        }
        Ok(item.map(|i| i.value))
    }

    fn queue_len(&self, scope: &[u8]) -> Result<u64> {
        Ok(self.read(scope, |s| s.queue.len() as u64).unwrap_or(0))
    }

    fn queue_clear(&self, scope: &[u8]) -> Result<u64> {
        let mut guard = self.lock();
        let Some(data) = guard.scopes.get_mut(scope) else {
            return Ok(0);
        };
        data.touched_ms = now_millis();
        let dropped = data.queue.len() + data.dead.len();
        data.queue.clear();
        data.claims.clear();
        data.dead.clear();
        Ok(dropped as u64)
    }

    fn queue_claim(&self, scope: &[u8], lease: Duration) -> Result<Option<Claim>> {
        let lease_ms = Self::check_lease(lease)?;
        let max_attempts = self.options.max_attempts;
        let mut guard = self.lock();
        let Inner { scopes, seq } = &mut *guard;
        let Some(data) = scopes.get_mut(scope) else {
            return Ok(None);
        };
        let now = now_millis();
        data.touched_ms = now;
        let Some(id) = data.next_visible(now, max_attempts) else {
            return Ok(None);
        };
        seq.last_claim_id += 1;
        let claim_id = seq.last_claim_id;
        let Some(item) = data.queue.get_mut(&id) else {
            return Ok(None);
        };
        let stale = item.claim.replace(claim_id);
        item.attempts += 1;
        item.visible_at_ms = now.saturating_add(lease_ms);
        let claim = Claim {
            id: claim_id,
            value: item.value.clone(),
            attempt: item.attempts,
        };
        if let Some(stale) = stale {
            data.claims.remove(&stale);
        }
        data.claims.insert(claim_id, id);
        Ok(Some(claim))
    }

    fn queue_ack(&self, scope: &[u8], claim_id: i64) -> Result<bool> {
        let mut guard = self.lock();
        let Some(data) = guard.scopes.get_mut(scope) else {
            return Ok(false);
        };
        let now = now_millis();
        let Some((item_id, _)) = data.live_claim(claim_id, now) else {
            return Ok(false);
        };
        data.touched_ms = now;
        data.queue.remove(&item_id);
        data.claims.remove(&claim_id);
        Ok(true)
    }

    fn queue_release(&self, scope: &[u8], claim_id: i64) -> Result<bool> {
        let mut guard = self.lock();
        let Some(data) = guard.scopes.get_mut(scope) else {
            return Ok(false);
        };
        let now = now_millis();
        let Some((_, item)) = data.live_claim(claim_id, now) else {
            return Ok(false);
        };
        item.visible_at_ms = 0;
        item.claim = None;
        data.touched_ms = now;
        data.claims.remove(&claim_id);
        Ok(true)
    }

    fn queue_extend(&self, scope: &[u8], claim_id: i64, lease: Duration) -> Result<bool> {
        let lease_ms = Self::check_lease(lease)?;
        let mut guard = self.lock();
        let Some(data) = guard.scopes.get_mut(scope) else {
            return Ok(false);
        };
        let now = now_millis();
        let Some((_, item)) = data.live_claim(claim_id, now) else {
            return Ok(false);
        };
        item.visible_at_ms = now.saturating_add(lease_ms);
        data.touched_ms = now;
        Ok(true)
    }

    fn queue_dead_letters(&self, scope: &[u8], limit: u64) -> Result<Vec<DeadLetter>> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Ok(self
            .read(scope, |s| s.dead.iter().take(limit).cloned().collect())
            .unwrap_or_default())
    }

    fn clear(&self, scope: &[u8]) -> Result<()> {
        self.lock().scopes.remove(scope);
        Ok(())
    }

    fn gc_prefix(&self, scope_prefix: &[u8], ttl: Duration) -> Result<u64> {
        let cutoff = now_millis().saturating_sub(millis(ttl));
        let mut guard = self.lock();
        let before = guard.scopes.len();
        guard
            .scopes
            .retain(|name, s| !name.starts_with(scope_prefix) || s.touched_ms >= cutoff);
        Ok((before - guard.scopes.len()) as u64)
    }

    fn apply_once(
        &self,
        key: &[u8],
        apply: &mut dyn FnMut(&dyn FunctionStorage) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let mut once = self.once.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((reply, _)) = once.get(key) {
            return Ok(reply.clone());
        }
        let reply = apply(self)?;
        once.insert(key.to_vec(), (reply.clone(), now_millis()));
        Ok(reply)
    }

    fn expire_once_keys(&self, age: Duration) -> Result<u64> {
        let cutoff = now_millis().saturating_sub(millis(age));
        let mut once = self.once.lock().unwrap_or_else(|p| p.into_inner());
        let before = once.len();
        once.retain(|_, (_, created)| *created >= cutoff);
        Ok((before - once.len()) as u64)
    }

    fn stat(&self) -> Result<StoreStats> {
        let guard = self.lock();
        let mut stats = StoreStats {
            backend: "memory".into(),
            location: "memory:".into(),
            max_attempts: self.options.max_attempts,
            max_value_bytes: self.options.max_value_bytes as u64,
            scopes: guard.scopes.len() as u64,
            ..StoreStats::default()
        };
        for s in guard.scopes.values() {
            stats.state_entries += s.state.values().map(|m| m.len() as u64).sum::<u64>();
            stats.log_entries += s.logs.values().map(|l| l.len() as u64).sum::<u64>();
            stats.counters += s.counters.len() as u64;
            stats.queue_items += s.queue.len() as u64;
            stats.dead_letters += s.dead.len() as u64;
        }
        Ok(stats)
    }
}
