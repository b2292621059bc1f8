//! Wrapper stores: a [`Layer`] decides, for every call, what name the inner store sees and
//! what happens around the call, and [`Layered`] forwards the whole contract through it — once,
//! for every layer. [`PrefixStore`] (a multi-tenant server gives each tenant one, as
//! object_store's `PrefixStore` prefixes paths) is the first; the conformance kit's fault
//! injector is another. The kit runs through them to prove the contract holds on top.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;
use std::time::Duration;

use crate::storage::{Entry, KeyValue};
use crate::{Claim, DeadLetter, FunctionStorage, KeyRange, Result, Selection, StoreStats};

/// What a wrapper store does to each call.
pub trait Layer: Clone + Send + Sync {
    /// The name the inner store sees for a scope, a `gc_prefix` prefix or an `apply_once` key.
    fn name<'a>(&self, name: &'a [u8]) -> Cow<'a, [u8]> {
        Cow::Borrowed(name)
    }

    /// Runs `inner`, the call to the inner store named `op`, or refuses it; may change the
    /// outcome.
    fn call<T>(&self, op: &'static str, inner: impl FnOnce() -> Result<T>) -> Result<T> {
        let _ = op;
        inner()
    }
}

/// A store seen through a [`Layer`]. `S` is anything that dereferences to a store:
/// `Arc<dyn FunctionStorage>`, `&dyn FunctionStorage`. Inside `apply_once` the effect sees the
/// inner store's transaction through the same layer.
pub struct Layered<S, L> {
    inner: S,
    layer: L,
}

impl<S, L> Layered<S, L> {
    /// `inner` seen through `layer`.
    pub fn with_layer(inner: S, layer: L) -> Self {
        Layered { inner, layer }
    }

    /// The layer.
    pub fn layer(&self) -> &L {
        &self.layer
    }
}

impl<S, L: fmt::Debug> fmt::Debug for Layered<S, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layered")
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

/// Prefixes every scope name (and `apply_once` key).
#[derive(Clone)]
pub struct Prefix(Vec<u8>);

impl fmt::Debug for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Prefix({:?})", String::from_utf8_lossy(&self.0))
    }
}

impl Layer for Prefix {
    fn name<'a>(&self, name: &'a [u8]) -> Cow<'a, [u8]> {
        Cow::Owned([&self.0[..], name].concat())
    }
}

/// A store whose scopes (and `apply_once` keys) are `prefix` + the caller's name; `gc`
/// through it sweeps only its prefix. `stat` and `expire_once_keys` are the whole store's (a
/// server refuses `Stat` to tenants itself).
pub type PrefixStore<S> = Layered<S, Prefix>;

impl<S> Layered<S, Prefix> {
    /// `inner` seen through `prefix`. Pick prefixes that are not prefixes of each other
    /// (e.g. end them with a byte no name contains, as the server's `tenant:<name>\0` does).
    pub fn new(inner: S, prefix: impl Into<Vec<u8>>) -> Self {
        Layered::with_layer(inner, Prefix(prefix.into()))
    }

    /// The prefix.
    pub fn prefix(&self) -> &[u8] {
        &self.layer.0
    }
}

impl<'a, S, L> FunctionStorage for Layered<S, L>
where
    S: Deref<Target = dyn FunctionStorage + 'a> + Send + Sync,
    L: Layer + fmt::Debug,
{
    fn state_get(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.layer.call("state_get", || {
            self.inner.state_get(&self.layer.name(scope), ns, key)
        })
    }

    fn state_put(&self, scope: &[u8], ns: &[u8], key: &[u8], value: &[u8]) -> Result<()> {
        self.layer.call("state_put", || {
            self.inner
                .state_put(&self.layer.name(scope), ns, key, value)
        })
    }

    fn state_del(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<bool> {
        self.layer.call("state_del", || {
            self.inner.state_del(&self.layer.name(scope), ns, key)
        })
    }

    fn state_get_many(
        &self,
        scope: &[u8],
        ns: &[u8],
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>> {
        self.layer.call("state_get_many", || {
            self.inner.state_get_many(&self.layer.name(scope), ns, keys)
        })
    }

    fn state_put_many(&self, scope: &[u8], ns: &[u8], items: &[KeyValue]) -> Result<()> {
        self.layer.call("state_put_many", || {
            self.inner
                .state_put_many(&self.layer.name(scope), ns, items)
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
        self.layer.call("state_scan", || {
            self.inner
                .state_scan(&self.layer.name(scope), ns, range, reverse, limit)
        })
    }

    fn state_delete(&self, scope: &[u8], ns: &[u8], selection: &Selection) -> Result<u64> {
        self.layer.call("state_delete", || {
            self.inner
                .state_delete(&self.layer.name(scope), ns, selection)
        })
    }

    fn state_drain(&self, scope: &[u8], ns: &[u8]) -> Result<Vec<KeyValue>> {
        self.layer.call("state_drain", || {
            self.inner.state_drain(&self.layer.name(scope), ns)
        })
    }

    fn kv_get(&self, scope: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.layer
            .call("kv_get", || self.inner.kv_get(&self.layer.name(scope), key))
    }

    fn kv_put(&self, scope: &[u8], key: &[u8], value: &[u8]) -> Result<()> {
        self.layer.call("kv_put", || {
            self.inner.kv_put(&self.layer.name(scope), key, value)
        })
    }

    fn kv_del(&self, scope: &[u8], key: &[u8]) -> Result<()> {
        self.layer
            .call("kv_del", || self.inner.kv_del(&self.layer.name(scope), key))
    }

    fn append(&self, scope: &[u8], ns: &[u8], key: &[u8], value: &[u8]) -> Result<i64> {
        self.layer.call("append", || {
            self.inner.append(&self.layer.name(scope), ns, key, value)
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
        self.layer.call("scan", || {
            self.inner
                .scan(&self.layer.name(scope), ns, key, after_id, limit)
        })
    }

    fn counter_get(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<i64> {
        self.layer.call("counter_get", || {
            self.inner.counter_get(&self.layer.name(scope), ns, key)
        })
    }

    fn counter_add(&self, scope: &[u8], ns: &[u8], key: &[u8], delta: i64) -> Result<i64> {
        self.layer.call("counter_add", || {
            self.inner
                .counter_add(&self.layer.name(scope), ns, key, delta)
        })
    }

    fn counter_set(&self, scope: &[u8], ns: &[u8], key: &[u8], value: i64) -> Result<i64> {
        self.layer.call("counter_set", || {
            self.inner
                .counter_set(&self.layer.name(scope), ns, key, value)
        })
    }

    fn counter_delete(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<i64> {
        self.layer.call("counter_delete", || {
            self.inner.counter_delete(&self.layer.name(scope), ns, key)
        })
    }

    fn queue_push(&self, scope: &[u8], items: &[Vec<u8>]) -> Result<()> {
        self.layer.call("queue_push", || {
            self.inner.queue_push(&self.layer.name(scope), items)
        })
    }

    fn queue_pop(&self, scope: &[u8]) -> Result<Option<Vec<u8>>> {
        self.layer.call("queue_pop", || {
            self.inner.queue_pop(&self.layer.name(scope))
        })
    }

    fn queue_len(&self, scope: &[u8]) -> Result<u64> {
        self.layer.call("queue_len", || {
            self.inner.queue_len(&self.layer.name(scope))
        })
    }

    fn queue_clear(&self, scope: &[u8]) -> Result<u64> {
        self.layer.call("queue_clear", || {
            self.inner.queue_clear(&self.layer.name(scope))
        })
    }

    fn queue_claim(&self, scope: &[u8], lease: Duration) -> Result<Option<Claim>> {
        self.layer.call("queue_claim", || {
            self.inner.queue_claim(&self.layer.name(scope), lease)
        })
    }

    fn queue_ack(&self, scope: &[u8], claim_id: i64) -> Result<bool> {
        self.layer.call("queue_ack", || {
            self.inner.queue_ack(&self.layer.name(scope), claim_id)
        })
    }

    fn queue_release(&self, scope: &[u8], claim_id: i64) -> Result<bool> {
        self.layer.call("queue_release", || {
            self.inner.queue_release(&self.layer.name(scope), claim_id)
        })
    }

    fn queue_extend(&self, scope: &[u8], claim_id: i64, lease: Duration) -> Result<bool> {
        self.layer.call("queue_extend", || {
            self.inner
                .queue_extend(&self.layer.name(scope), claim_id, lease)
        })
    }

    fn queue_dead_letters(&self, scope: &[u8], limit: u64) -> Result<Vec<DeadLetter>> {
        self.layer.call("queue_dead_letters", || {
            self.inner
                .queue_dead_letters(&self.layer.name(scope), limit)
        })
    }

    fn clear(&self, scope: &[u8]) -> Result<u64> {
        self.layer
            .call("clear", || self.inner.clear(&self.layer.name(scope)))
    }

    fn gc_prefix(&self, scope_prefix: &[u8], ttl: Duration) -> Result<u64> {
        self.layer.call("gc_prefix", || {
            self.inner.gc_prefix(&self.layer.name(scope_prefix), ttl)
        })
    }

    fn apply_once(
        &self,
        key: &[u8],
        fingerprint: &[u8],
        apply: &mut dyn FnMut(&dyn FunctionStorage) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let layer = self.layer.clone();
        self.layer.call("apply_once", || {
            self.inner
                .apply_once(&self.layer.name(key), fingerprint, &mut |inner| {
                    apply(&Layered::with_layer(inner, layer.clone()))
                })
        })
    }

    fn apply_atomically(
        &self,
        apply: &mut dyn FnMut(&dyn FunctionStorage) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let layer = self.layer.clone();
        self.layer.call("apply_atomically", || {
            self.inner
                .apply_atomically(&mut |inner| apply(&Layered::with_layer(inner, layer.clone())))
        })
    }

    fn expire_once_keys(&self, age: Duration) -> Result<u64> {
        self.layer
            .call("expire_once_keys", || self.inner.expire_once_keys(age))
    }

    fn stat(&self) -> Result<StoreStats> {
        self.layer.call("stat", || self.inner.stat())
    }

    fn answers_in_microseconds(&self) -> bool {
        self.inner.answers_in_microseconds()
    }

    fn durable_frame_no(&self) -> Result<Option<u64>> {
        self.inner.durable_frame_no()
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
