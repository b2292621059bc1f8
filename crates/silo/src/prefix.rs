//! `PrefixStore`: a view of a store in which every scope name is prefixed, as object_store's
//! `PrefixStore` prefixes paths. A multi-tenant server gives each tenant one, so a tenant's
//! scopes, sweeps and idempotency keys can never touch another's; the conformance kit runs
//! through it to prove that for every operation.

use std::fmt;
use std::ops::Deref;
use std::time::Duration;

use crate::storage::{Entry, KeyValue};
use crate::{Claim, DeadLetter, FunctionStorage, KeyRange, Result, Selection, StoreStats};

/// A store whose scopes (and `apply_once` keys) are `prefix` + the caller's name.
///
/// `S` is anything that dereferences to a store: `Arc<dyn FunctionStorage>`, `&dyn
/// FunctionStorage`. `stat` and `expire_once_keys` are the whole store's (a server refuses
/// `Stat` to tenants itself).
pub struct PrefixStore<S> {
    inner: S,
    prefix: Vec<u8>,
}

impl<S> PrefixStore<S> {
    /// `inner` seen through `prefix`. Pick prefixes that are not prefixes of each other
    /// (e.g. end them with a byte no name contains, as the server's `tenant:<name>\0` does).
    pub fn new(inner: S, prefix: impl Into<Vec<u8>>) -> Self {
        PrefixStore {
            inner,
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    fn scoped(&self, scope: &[u8]) -> Vec<u8> {
        [&self.prefix[..], scope].concat()
    }
}

impl<S> fmt::Debug for PrefixStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrefixStore")
            .field("prefix", &String::from_utf8_lossy(&self.prefix))
            .finish_non_exhaustive()
    }
}

impl<'a, S> FunctionStorage for PrefixStore<S>
where
    S: Deref<Target = dyn FunctionStorage + 'a> + Send + Sync,
{
    fn state_get(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.state_get(&self.scoped(scope), ns, key)
    }

    fn state_put(&self, scope: &[u8], ns: &[u8], key: &[u8], value: &[u8]) -> Result<()> {
        self.inner.state_put(&self.scoped(scope), ns, key, value)
    }

    fn state_del(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<bool> {
        self.inner.state_del(&self.scoped(scope), ns, key)
    }

    fn state_get_many(
        &self,
        scope: &[u8],
        ns: &[u8],
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>> {
        self.inner.state_get_many(&self.scoped(scope), ns, keys)
    }

    fn state_put_many(&self, scope: &[u8], ns: &[u8], items: &[KeyValue]) -> Result<()> {
        self.inner.state_put_many(&self.scoped(scope), ns, items)
    }

    fn state_scan(
        &self,
        scope: &[u8],
        ns: &[u8],
        range: &KeyRange,
        reverse: bool,
        limit: u64,
    ) -> Result<Vec<KeyValue>> {
        self.inner
            .state_scan(&self.scoped(scope), ns, range, reverse, limit)
    }

    fn state_delete(&self, scope: &[u8], ns: &[u8], selection: &Selection) -> Result<u64> {
        self.inner.state_delete(&self.scoped(scope), ns, selection)
    }

    fn state_drain(&self, scope: &[u8], ns: &[u8]) -> Result<Vec<KeyValue>> {
        self.inner.state_drain(&self.scoped(scope), ns)
    }

    fn kv_get(&self, scope: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.kv_get(&self.scoped(scope), key)
    }

    fn kv_put(&self, scope: &[u8], key: &[u8], value: &[u8]) -> Result<()> {
        self.inner.kv_put(&self.scoped(scope), key, value)
    }

    fn kv_del(&self, scope: &[u8], key: &[u8]) -> Result<()> {
        self.inner.kv_del(&self.scoped(scope), key)
    }

    fn append(&self, scope: &[u8], ns: &[u8], key: &[u8], value: &[u8]) -> Result<i64> {
        self.inner.append(&self.scoped(scope), ns, key, value)
    }

    fn scan(
        &self,
        scope: &[u8],
        ns: &[u8],
        key: &[u8],
        after_id: i64,
        limit: u64,
    ) -> Result<Vec<Entry>> {
        self.inner
            .scan(&self.scoped(scope), ns, key, after_id, limit)
    }

    fn counter_get(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<i64> {
        self.inner.counter_get(&self.scoped(scope), ns, key)
    }

    fn counter_add(&self, scope: &[u8], ns: &[u8], key: &[u8], delta: i64) -> Result<i64> {
        self.inner.counter_add(&self.scoped(scope), ns, key, delta)
    }

    fn counter_set(&self, scope: &[u8], ns: &[u8], key: &[u8], value: i64) -> Result<i64> {
        self.inner.counter_set(&self.scoped(scope), ns, key, value)
    }

    fn counter_delete(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<i64> {
        self.inner.counter_delete(&self.scoped(scope), ns, key)
    }

    fn queue_push(&self, scope: &[u8], items: &[Vec<u8>]) -> Result<()> {
        self.inner.queue_push(&self.scoped(scope), items)
    }

    fn queue_pop(&self, scope: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.queue_pop(&self.scoped(scope))
    }

    fn queue_len(&self, scope: &[u8]) -> Result<u64> {
        self.inner.queue_len(&self.scoped(scope))
    }

    fn queue_clear(&self, scope: &[u8]) -> Result<u64> {
        self.inner.queue_clear(&self.scoped(scope))
    }

    fn queue_claim(&self, scope: &[u8], lease: Duration) -> Result<Option<Claim>> {
        self.inner.queue_claim(&self.scoped(scope), lease)
    }

    fn queue_ack(&self, scope: &[u8], claim_id: i64) -> Result<bool> {
        self.inner.queue_ack(&self.scoped(scope), claim_id)
    }

    fn queue_release(&self, scope: &[u8], claim_id: i64) -> Result<bool> {
        self.inner.queue_release(&self.scoped(scope), claim_id)
    }

    fn queue_extend(&self, scope: &[u8], claim_id: i64, lease: Duration) -> Result<bool> {
        self.inner
            .queue_extend(&self.scoped(scope), claim_id, lease)
    }

    fn queue_dead_letters(&self, scope: &[u8], limit: u64) -> Result<Vec<DeadLetter>> {
        self.inner.queue_dead_letters(&self.scoped(scope), limit)
    }

    fn clear(&self, scope: &[u8]) -> Result<()> {
        self.inner.clear(&self.scoped(scope))
    }

    fn gc_prefix(&self, scope_prefix: &[u8], ttl: Duration) -> Result<u64> {
        self.inner.gc_prefix(&self.scoped(scope_prefix), ttl)
    }

    fn apply_once(
        &self,
        key: &[u8],
        fingerprint: &[u8],
        apply: &mut dyn FnMut(&dyn FunctionStorage) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let prefix = self.prefix.clone();
        self.inner
            .apply_once(&self.scoped(key), fingerprint, &mut |inner| {
                apply(&PrefixStore::new(inner, prefix.clone()))
            })
    }

    fn expire_once_keys(&self, age: Duration) -> Result<u64> {
        self.inner.expire_once_keys(age)
    }

    fn stat(&self) -> Result<StoreStats> {
        self.inner.stat()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::MemoryStorage;

    #[test]
    fn prefixes_fence_scopes_sweeps_and_idempotency_keys() {
        let store: Arc<dyn FunctionStorage> = Arc::new(MemoryStorage::new());
        let a = PrefixStore::new(store.clone(), b"tenant:a\0".to_vec());
        let b = PrefixStore::new(store.clone(), b"tenant:b\0".to_vec());
        a.kv_put(b"s", b"k", b"v").unwrap();
        assert_eq!(
            store.kv_get(b"tenant:a\0s", b"k").unwrap(),
            Some(b"v".to_vec())
        );
        assert_eq!(b.kv_get(b"s", b"k").unwrap(), None);
        store.kv_put(b"other", b"k", b"v").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(b.gc(Duration::ZERO).unwrap(), 0, "b sweeps only b");
        assert_eq!(a.gc(Duration::ZERO).unwrap(), 1, "a sweeps its own scope");
        assert!(store.kv_get(b"other", b"k").unwrap().is_some());

        let mut add = |st: &dyn FunctionStorage| {
            Ok(st.counter_add(b"s", b"", b"c", 1)?.to_le_bytes().to_vec())
        };
        a.apply_once(b"K", b"fp", &mut add).unwrap();
        b.apply_once(b"K", b"fp", &mut add).unwrap();
        a.apply_once(b"K", b"fp", &mut add).unwrap();
        assert_eq!(
            a.counter_get(b"s", b"", b"c").unwrap(),
            1,
            "the effect ran in a's scope"
        );
        assert_eq!(
            b.counter_get(b"s", b"", b"c").unwrap(),
            1,
            "b's K is another key"
        );
    }
}
