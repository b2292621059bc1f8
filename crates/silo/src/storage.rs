//! The `FunctionStorage` contract (SPEC §3) and the plain data types its operations take and
//! return. Every backend implements this one trait; the conformance kit checks it.

use std::fmt;
use std::ops::Bound;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Result;

/// A log entry or queue item as stored: its id and its bytes.
pub type Entry = (i64, Vec<u8>);

/// A state pair as stored: key and value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// A half-open key range `[start, end)` over memcmp-ordered keys; `None` leaves that end open.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRange {
    /// Inclusive lower bound; `None` = from the first key.
    #[serde(with = "serde_bytes")]
    pub start: Option<Vec<u8>>,
    /// Exclusive upper bound; `None` = to the last key.
    #[serde(with = "serde_bytes")]
    pub end: Option<Vec<u8>>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> Self {
        KeyRange::default()
    }

    /// `[start, end)`.
    pub fn new(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> Self {
        KeyRange {
            start: Some(start.into()),
            end: Some(end.into()),
        }
    }

    /// Every key that begins with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        KeyRange {
            start: Some(prefix.to_vec()),
            end: prefix_successor(prefix),
        }
    }

    /// True when `key` lies inside the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        self.start.as_deref().is_none_or(|s| key >= s)
            && self.end.as_deref().is_none_or(|e| key < e)
    }

    /// True when no key can lie inside the range (`start >= end`).
    pub fn is_empty(&self) -> bool {
        matches!((&self.start, &self.end), (Some(s), Some(e)) if s >= e)
    }

    /// The range as `std::ops::Bound`s, for `BTreeMap::range`.
    pub fn bounds(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        (
            self.start
                .as_deref()
                .map_or(Bound::Unbounded, Bound::Included),
            self.end
                .as_deref()
                .map_or(Bound::Unbounded, Bound::Excluded),
        )
    }
}

/// The smallest byte string greater than every string starting with `prefix`, or `None` when
/// there is none (the prefix is empty or all `0xff`).
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The most elements one list in a request may hold (queue items, keys, pairs). Checked
/// while decoding, before anything is allocated for them, so a small body cannot expand
/// into millions of empty values.
pub const MAX_LIST_LEN: usize = 1 << 20;

/// Deserializes a sequence of at most [`MAX_LIST_LEN`] elements.
pub(crate) fn bounded_list<'de, D, T>(d: D) -> std::result::Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Visit<T>(std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visit<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of at most {MAX_LIST_LEN} elements")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> std::result::Result<Vec<T>, A::Error> {
            let len = seq.size_hint().unwrap_or(0);
            if len > MAX_LIST_LEN {
                return Err(serde::de::Error::custom(format!(
                    "a list of {len} elements, over the limit of {MAX_LIST_LEN}; split the request"
                )));
            }
            // Capped: the length prefix may lie; the body's size bounds the rest.
            let mut out = Vec::with_capacity(len.min(1 << 12));
            while let Some(item) = seq.next_element()? {
                if out.len() == MAX_LIST_LEN {
                    return Err(serde::de::Error::custom("a list longer than its length"));
                }
                out.push(item);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Visit(std::marker::PhantomData))
}

/// The error for an idempotency key presented again with a different request.
pub(crate) fn key_reused() -> crate::Error {
    crate::Error::Conflict {
        message: "this idempotency key was already used for a different request; \
                  send each new request with a new key"
            .into(),
    }
}

/// Which state entries `state_delete` removes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Selection {
    /// These keys (missing ones are ignored).
    Keys(#[serde(deserialize_with = "bounded_list")] Vec<Vec<u8>>),
    /// Every key inside the range.
    Range(KeyRange),
    /// The whole namespace.
    #[default]
    All,
}

/// A queue item taken with a lease by [`FunctionStorage::queue_claim`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The lease id: pass it to `queue_ack`, `queue_release` or `queue_extend`. A new claim of
    /// the same item (after expiry) gets a new id, so a consumer that lost its lease cannot
    /// ack someone else's delivery.
    pub id: i64,
    /// The item's bytes.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// 1 on the first delivery, +1 on each redelivery.
    pub attempt: u32,
}

/// An item that exhausted its delivery attempts and was set aside.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The item's bytes.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// How many times it was claimed before it was set aside.
    pub attempts: u32,
    /// When it was set aside, in milliseconds since the Unix epoch.
    pub dead_at_ms: i64,
}

/// A summary of a store, for `silo stat` and the server's metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    /// Backend name (`memory`, `sqlite`, …).
    pub backend: String,
    /// Where the data lives (a path, a URL), for humans.
    pub location: String,
    /// Scopes with any state.
    pub scopes: u64,
    /// State entries (all namespaces).
    pub state_entries: u64,
    /// Log entries (all logs).
    pub log_entries: u64,
    /// Counters.
    pub counters: u64,
    /// Queue items not yet acknowledged (waiting or claimed).
    pub queue_items: u64,
    /// Items set aside after too many attempts.
    pub dead_letters: u64,
    /// Bytes used on disk, when the backend knows.
    pub bytes_on_disk: Option<u64>,
    /// Claims of one item before it is dead-lettered.
    pub max_attempts: u32,
    /// Largest value the store accepts, in bytes.
    pub max_value_bytes: u64,
    /// For a replicated `fs:` store, the last frame known to be in object storage. Not on
    /// the wire (the server shows it in `/v1/info` and `/metrics`), so that clients and
    /// servers of other versions still read each other's stats.
    #[serde(skip)]
    pub durable_frame_no: Option<u64>,
}

/// Durable, cross-process state for pooled worker processes (SPEC §3).
///
/// Names (`scope`, `ns`, `key`) are opaque byte strings: any bytes, including empty. Every
/// operation either does all it says or returns an error; none logs and drops a write.
/// Implementations are `Send + Sync`; all but `memory` are safe across OS processes.
pub trait FunctionStorage: Send + Sync + fmt::Debug {
    // ----- state: key/value per (scope, ns), ordered by key bytes -----

    /// The value at `(scope, ns, key)`, or `None`.
    fn state_get(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Sets `(scope, ns, key)` to `value`, replacing any previous value.
    fn state_put(&self, scope: &[u8], ns: &[u8], key: &[u8], value: &[u8]) -> Result<()>;

    /// Removes `(scope, ns, key)`; returns whether it existed.
    fn state_del(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<bool>;

    /// Values for `keys`, in the same order, in one round trip.
    fn state_get_many(
        &self,
        scope: &[u8],
        ns: &[u8],
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>>;

    /// Sets every pair atomically: all are stored or none. A key given twice keeps the last value.
    fn state_put_many(&self, scope: &[u8], ns: &[u8], items: &[KeyValue]) -> Result<()>;

    /// Pairs whose key lies in `range`, in key order (descending when `reverse`), at most `limit`.
    fn state_scan(
        &self,
        scope: &[u8],
        ns: &[u8],
        range: &KeyRange,
        reverse: bool,
        limit: u64,
    ) -> Result<Vec<KeyValue>>;

    /// Removes the selected entries atomically; returns how many existed.
    fn state_delete(&self, scope: &[u8], ns: &[u8], selection: &Selection) -> Result<u64>;

    /// Removes and returns every pair of the namespace, in key order, atomically: two
    /// concurrent drains never both see one pair.
    fn state_drain(&self, scope: &[u8], ns: &[u8]) -> Result<Vec<KeyValue>>;

    /// `state_get` with the empty namespace (the incumbent's `kv_get`).
    fn kv_get(&self, scope: &[u8], key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.state_get(scope, b"", key)
    }

    /// `state_put` with the empty namespace (the incumbent's `kv_put`).
    fn kv_put(&self, scope: &[u8], key: &[u8], value: &[u8]) -> Result<()> {
        self.state_put(scope, b"", key, value)
    }

    /// `state_del` with the empty namespace (the incumbent's `kv_del`); idempotent.
    fn kv_del(&self, scope: &[u8], key: &[u8]) -> Result<()> {
        self.state_del(scope, b"", key).map(drop)
    }

    // ----- logs: append-only per (scope, ns, key) -----

    /// Appends `value`; returns its id (≥ 1, strictly increasing within the log, across
    /// processes).
    fn append(&self, scope: &[u8], ns: &[u8], key: &[u8], value: &[u8]) -> Result<i64>;

    /// Entries with id > `after_id`, ascending, at most `limit` (`u64::MAX` = all). An
    /// `after_id` ≤ 0 reads from the start.
    fn scan(
        &self,
        scope: &[u8],
        ns: &[u8],
        key: &[u8],
        after_id: i64,
        limit: u64,
    ) -> Result<Vec<Entry>>;

    // ----- counters: i64 per (scope, ns, key); a missing counter reads 0 -----

    /// The counter's value (0 when missing).
    fn counter_get(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<i64>;

    /// Adds `delta` atomically and returns the new value; overflow is an error, not a wrap.
    fn counter_add(&self, scope: &[u8], ns: &[u8], key: &[u8], delta: i64) -> Result<i64>;

    /// Sets the counter; returns the previous value (0 when missing).
    fn counter_set(&self, scope: &[u8], ns: &[u8], key: &[u8], value: i64) -> Result<i64>;

    /// Removes the counter; returns the value it had (0 when missing).
    fn counter_delete(&self, scope: &[u8], ns: &[u8], key: &[u8]) -> Result<i64>;

    // ----- queue: FIFO per scope, each item delivered to exactly one consumer -----

    /// Appends `items` in order, atomically (all or none). Many pushers may push at once.
    fn queue_push(&self, scope: &[u8], items: &[Vec<u8>]) -> Result<()>;

    /// Removes and returns the oldest visible item (claim + ack in one atomic step).
    fn queue_pop(&self, scope: &[u8]) -> Result<Option<Vec<u8>>>;

    /// Items not yet acknowledged: waiting plus claimed (dead letters excluded).
    fn queue_len(&self, scope: &[u8]) -> Result<u64>;

    /// Drops every item of the queue, claimed and dead-lettered ones included; returns how
    /// many were dropped.
    fn queue_clear(&self, scope: &[u8]) -> Result<u64>;

    /// Takes the oldest visible item for `lease`. It stays stored until acked; when the lease
    /// expires it becomes visible again with `attempt + 1`. An item already claimed
    /// `max_attempts` times is moved to the dead-letter list instead of being delivered.
    fn queue_claim(&self, scope: &[u8], lease: Duration) -> Result<Option<Claim>>;

    /// Removes a claimed item; false when the lease was lost (expired, released, or acked).
    fn queue_ack(&self, scope: &[u8], claim_id: i64) -> Result<bool>;

    /// Gives a claimed item back at once; false when the lease was already lost.
    fn queue_release(&self, scope: &[u8], claim_id: i64) -> Result<bool>;

    /// Extends a live lease to `lease` from now (a heartbeat); false when it was lost.
    fn queue_extend(&self, scope: &[u8], claim_id: i64, lease: Duration) -> Result<bool>;

    /// Up to `limit` dead letters of the scope, oldest first.
    fn queue_dead_letters(&self, scope: &[u8], limit: u64) -> Result<Vec<DeadLetter>>;

    // ----- lifecycle -----

    /// Drops everything of the scope: state, logs, counters, queue and dead letters; returns
    /// how many entries it dropped (state pairs + log entries + counters + queue items, claimed
    /// ones included, + dead letters). The http client against the `vgi` crate's server, which
    /// clears without counting, answers 0.
    fn clear(&self, scope: &[u8]) -> Result<u64>;

    /// Drops every scope not written for longer than `ttl`; returns how many were dropped.
    fn gc(&self, ttl: Duration) -> Result<u64> {
        self.gc_prefix(b"", ttl)
    }

    /// `gc` restricted to the scopes whose name starts with `scope_prefix` (a server sweeps
    /// one tenant's scopes this way).
    fn gc_prefix(&self, scope_prefix: &[u8], ttl: Duration) -> Result<u64>;

    /// Runs `apply` (one operation on this store) at most once per `key`: the first call
    /// stores `apply`'s reply, with `fingerprint` (a digest of the request), in the same
    /// transaction as its effect; a later call with the same key and fingerprint returns
    /// that reply without applying anything, and one with another fingerprint fails with
    /// [`Error::Conflict`](crate::Error::Conflict). A failed or panicking `apply` stores
    /// nothing and leaves no effect. `apply` must run its operations on the store it is
    /// given, on the calling thread. Backends that cannot do this return
    /// [`Error::Unsupported`](crate::Error::Unsupported).
    fn apply_once(
        &self,
        key: &[u8],
        fingerprint: &[u8],
        apply: &mut dyn FnMut(&dyn FunctionStorage) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let _ = (key, fingerprint, apply);
        Err(crate::Error::unsupported("apply_once", "this backend"))
    }

    /// Runs `apply` (operations on the store it is given, on the calling thread) as one atomic
    /// unit, with no record: when it fails or panics, none of its writes remain. (A server runs
    /// an unkeyed drain this way, so a reply it cannot send undoes the drain.) Backends that
    /// cannot do this return [`Error::Unsupported`](crate::Error::Unsupported).
    fn apply_atomically(
        &self,
        apply: &mut dyn FnMut(&dyn FunctionStorage) -> Result<Vec<u8>>,
    ) -> Result<Vec<u8>> {
        let _ = apply;
        Err(crate::Error::unsupported(
            "apply_atomically",
            "this backend",
        ))
    }

    /// Forgets `apply_once` keys older than `age`; returns how many were forgotten.
    fn expire_once_keys(&self, age: Duration) -> Result<u64> {
        let _ = age;
        Ok(0)
    }

    /// Counts of what the store holds.
    fn stat(&self) -> Result<StoreStats>;

    /// Whether operations complete in microseconds on the calling thread: an in-process or
    /// local-file store that neither crosses a network nor waits for an fsync per commit
    /// (`sync=full`). A server runs such a store's point operations on its async reactor and
    /// every other store's on a blocking pool — the default, always safe: a network client
    /// must not block a reactor thread (the `postgres` client cannot even run on one), and
    /// writes waiting for a flush should wait together.
    fn answers_in_microseconds(&self) -> bool {
        false
    }

    /// For a store whose history is shipped to object storage (a replicated `fs:` store), the
    /// last frame known to be there; `None` for every other store. Cheap: a server reports it
    /// in `/v1/info`.
    fn durable_frame_no(&self) -> Result<Option<u64>> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_range_covers_exactly_the_prefix() {
        let r = KeyRange::prefix(b"ab");
        assert!(r.contains(b"ab"));
        assert!(r.contains(b"ab\xff\xff"));
        assert!(!r.contains(b"ac"));
        assert!(!r.contains(b"aa\xff"));
        assert_eq!(KeyRange::prefix(b"a\xff").end, Some(b"b".to_vec()));
        assert_eq!(KeyRange::prefix(b"\xff\xff").end, None);
        assert!(KeyRange::prefix(b"").contains(b"") && KeyRange::prefix(b"").contains(b"\xff"));
    }

    #[test]
    fn empty_range_detected() {
        assert!(KeyRange::new("b", "a").is_empty());
        assert!(KeyRange::new("a", "a").is_empty());
        assert!(!KeyRange::new("a", "b").is_empty());
        assert!(!KeyRange::all().is_empty());
    }
}
