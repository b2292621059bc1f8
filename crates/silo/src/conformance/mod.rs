//! The conformance kit: one public function per behaviour of the [`FunctionStorage`]
//! contract, each taking `&dyn FunctionStorage`. Every backend runs all of them through
//! [`conformance_tests!`](crate::conformance_tests), so a behaviour is specified once.
//!
//! A check panics with a message naming the broken promise; that is how it reports to the
//! test harness. Checks use their own scopes but `gc_drops_only_stale_scopes` sweeps the whole
//! store, so give each check a fresh store (the macro does).

use std::cell::RefCell;
use std::time::Duration;

use crate::{Clock, Error, FunctionStorage, KeyRange, PrefixStore, Selection};

pub mod faults;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod processes;

thread_local! {
    /// The clock of the store under test on this thread, set by [`run_clocked`].
    static CLOCK: RefCell<Clock> = RefCell::new(Clock::system());
}

/// Lets `d` pass for the store under test: advances its manual clock, or sleeps when it reads
/// the system's.
fn wait(d: Duration) {
    if !CLOCK.with(|c| c.borrow().advance(d)) {
        std::thread::sleep(d);
    }
}

fn v(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

/// `kv_*` overwrite, read and idempotent delete; they are state calls with the empty namespace.
pub fn kv_roundtrip(s: &dyn FunctionStorage) {
    let sc = b"kv";
    assert_eq!(s.kv_get(sc, b"k").unwrap(), None, "missing key reads None");
    s.kv_put(sc, b"k", b"v1").unwrap();
    assert_eq!(s.kv_get(sc, b"k").unwrap(), Some(v("v1")));
    s.kv_put(sc, b"k", b"v2").unwrap();
    assert_eq!(s.kv_get(sc, b"k").unwrap(), Some(v("v2")), "put overwrites");
    assert_eq!(
        s.state_get(sc, b"", b"k").unwrap(),
        Some(v("v2")),
        "kv is state with ns \"\""
    );
    s.state_put(sc, b"", b"k2", b"x").unwrap();
    assert_eq!(s.kv_get(sc, b"k2").unwrap(), Some(v("x")));
    s.kv_del(sc, b"k").unwrap();
    s.kv_del(sc, b"k").unwrap();
    assert_eq!(s.kv_get(sc, b"k").unwrap(), None, "deleted key reads None");
    assert!(
        s.state_del(sc, b"", b"k2").unwrap(),
        "state_del reports an existing key"
    );
    assert!(
        !s.state_del(sc, b"", b"k2").unwrap(),
        "state_del reports a missing key"
    );
}

/// The same key in different namespaces and scopes names different values.
pub fn state_namespaces_are_isolated(s: &dyn FunctionStorage) {
    s.state_put(b"ns-a", b"one", b"k", b"a1").unwrap();
    s.state_put(b"ns-a", b"two", b"k", b"a2").unwrap();
    s.state_put(b"ns-b", b"one", b"k", b"b1").unwrap();
    assert_eq!(s.state_get(b"ns-a", b"one", b"k").unwrap(), Some(v("a1")));
    assert_eq!(s.state_get(b"ns-a", b"two", b"k").unwrap(), Some(v("a2")));
    assert_eq!(s.state_get(b"ns-b", b"one", b"k").unwrap(), Some(v("b1")));
    assert_eq!(s.state_get(b"ns-b", b"two", b"k").unwrap(), None);
    assert_eq!(s.state_delete(b"ns-a", b"one", &Selection::All).unwrap(), 1);
    assert_eq!(s.state_get(b"ns-a", b"two", b"k").unwrap(), Some(v("a2")));
    assert_eq!(s.state_get(b"ns-b", b"one", b"k").unwrap(), Some(v("b1")));
}

/// `state_get_many` is parallel to its keys; `state_put_many` stores all pairs, the last of
/// a repeated key winning, and stores none when one pair is refused.
pub fn state_batches(s: &dyn FunctionStorage) {
    let sc = b"batch";
    let items: Vec<_> = (0..100u32)
        .map(|i| (i.to_be_bytes().to_vec(), i.to_le_bytes().to_vec()))
        .collect();
    s.state_put_many(sc, b"n", &items).unwrap();
    let mut keys: Vec<Vec<u8>> = items.iter().map(|(k, _)| k.clone()).collect();
    keys.insert(50, b"missing".to_vec());
    let got = s.state_get_many(sc, b"n", &keys).unwrap();
    assert_eq!(got.len(), keys.len(), "one answer per key");
    assert_eq!(got[50], None, "missing key in the middle reads None");
    assert_eq!(got[0], Some(0u32.to_le_bytes().to_vec()));
    assert_eq!(got[100], Some(99u32.to_le_bytes().to_vec()));
    assert_eq!(
        s.state_get_many(b"no-such-scope", b"n", &keys[..2])
            .unwrap(),
        vec![None, None]
    );
    assert!(s.state_get_many(sc, b"n", &[]).unwrap().is_empty());

    s.state_put_many(sc, b"dup", &[(v("k"), v("first")), (v("k"), v("last"))])
        .unwrap();
    assert_eq!(
        s.state_get(sc, b"dup", b"k").unwrap(),
        Some(v("last")),
        "last duplicate wins"
    );

    let bad = vec![(v("ok"), v("fine")), (v("big"), over_the_limit(s))];
    let err = s.state_put_many(sc, b"atomic", &bad).unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput { .. }),
        "oversized value: {err}"
    );
    assert_eq!(
        s.state_get(sc, b"atomic", b"ok").unwrap(),
        None,
        "a refused batch stores nothing"
    );
}

/// A value one byte over the store's `max_value_bytes`.
fn over_the_limit(s: &dyn FunctionStorage) -> Vec<u8> {
    let limit = s.stat().unwrap().max_value_bytes;
    let size = usize::try_from(limit + 1).unwrap_or(usize::MAX);
    assert!(
        size <= 512 << 20,
        "the kit needs a store with max_value_bytes ≤ 512 MiB, got {limit}"
    );
    vec![1u8; size]
}

fn keys_of(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<Vec<u8>> {
    pairs.iter().map(|(k, _)| k.clone()).collect()
}

/// `state_scan` orders by key bytes (memcmp), honours half-open ranges with open ends,
/// reverse order and limits.
pub fn state_scan_ranges(s: &dyn FunctionStorage) {
    let sc = b"scan";
    let keys: Vec<Vec<u8>> = vec![
        v(""),
        b"\x00".to_vec(),
        v("a"),
        v("ab"),
        v("b"),
        b"b\x00".to_vec(),
        v("c"),
        b"\xff".to_vec(),
    ];
    // Insert out of order so insertion order cannot pass for key order.
    for k in keys.iter().rev() {
        s.state_put(sc, b"r", k, &[k.len() as u8]).unwrap();
    }
    s.state_put(sc, b"other", b"a", b"x").unwrap();
    let scan =
        |r: KeyRange, rev: bool, lim: u64| keys_of(&s.state_scan(sc, b"r", &r, rev, lim).unwrap());

    assert_eq!(
        scan(KeyRange::all(), false, u64::MAX),
        keys,
        "full scan in memcmp order"
    );
    let mut reversed = keys.clone();
    reversed.reverse();
    assert_eq!(
        scan(KeyRange::all(), true, u64::MAX),
        reversed,
        "reverse scan"
    );
    assert_eq!(
        scan(KeyRange::new("a", "b"), false, u64::MAX),
        vec![v("a"), v("ab")],
        "[a, b) half-open"
    );
    assert_eq!(
        scan(
            KeyRange {
                start: Some(v("b")),
                end: None
            },
            false,
            u64::MAX
        ),
        vec![v("b"), b"b\x00".to_vec(), v("c"), b"\xff".to_vec()],
        "open end"
    );
    assert_eq!(
        scan(
            KeyRange {
                start: None,
                end: Some(v("a"))
            },
            false,
            u64::MAX
        ),
        vec![v(""), b"\x00".to_vec()],
        "open start"
    );
    assert_eq!(scan(KeyRange::all(), false, 3), keys[..3].to_vec(), "limit");
    assert_eq!(
        scan(KeyRange::new("a", "c"), true, 2),
        vec![b"b\x00".to_vec(), v("b")],
        "reverse + limit"
    );
    assert_eq!(
        scan(KeyRange::all(), false, 0),
        Vec::<Vec<u8>>::new(),
        "limit 0"
    );
    assert!(
        scan(KeyRange::new("c", "a"), false, u64::MAX).is_empty(),
        "inverted range is empty"
    );
    assert_eq!(
        scan(KeyRange::prefix(b"b"), false, u64::MAX),
        vec![v("b"), b"b\x00".to_vec()]
    );
    let pairs = s
        .state_scan(sc, b"r", &KeyRange::new("ab", "ac"), false, 10)
        .unwrap();
    assert_eq!(
        pairs,
        vec![(v("ab"), vec![2u8])],
        "values come with their keys"
    );
    assert!(
        s.state_scan(b"nothing-here", b"r", &KeyRange::all(), false, 10)
            .unwrap()
            .is_empty()
    );
}

/// `state_delete` by keys, by range and whole namespace, counting only what existed.
pub fn state_delete_selections(s: &dyn FunctionStorage) {
    let sc = b"del";
    let fill = || {
        let items: Vec<_> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|k| (v(k), v(k)))
            .collect();
        s.state_put_many(sc, b"d", &items).unwrap();
    };
    fill();
    let keys = Selection::Keys(vec![v("a"), v("zz"), v("c")]);
    assert_eq!(
        s.state_delete(sc, b"d", &keys).unwrap(),
        2,
        "missing keys are not counted"
    );
    assert_eq!(
        keys_of(&s.state_scan(sc, b"d", &KeyRange::all(), false, 99).unwrap()),
        vec![v("b"), v("d"), v("e")]
    );
    assert_eq!(
        s.state_delete(sc, b"d", &Selection::Range(KeyRange::new("b", "e")))
            .unwrap(),
        2
    );
    assert_eq!(
        keys_of(&s.state_scan(sc, b"d", &KeyRange::all(), false, 99).unwrap()),
        vec![v("e")],
        "end excluded"
    );
    fill();
    let open_end = Selection::Range(KeyRange {
        start: Some(v("d")),
        end: None,
    });
    assert_eq!(s.state_delete(sc, b"d", &open_end).unwrap(), 2);
    assert_eq!(s.state_delete(sc, b"d", &Selection::All).unwrap(), 3);
    assert!(
        s.state_scan(sc, b"d", &KeyRange::all(), false, 99)
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.state_delete(sc, b"d", &Selection::All).unwrap(), 0);
    assert_eq!(
        s.state_delete(b"never-written", b"d", &Selection::All)
            .unwrap(),
        0
    );
}

/// `state_drain` returns every pair in key order and leaves the namespace empty; a second
/// drain gets nothing.
pub fn state_drain_takes_everything_once(s: &dyn FunctionStorage) {
    let sc = b"drain";
    for k in ["m", "a", "z", "b"] {
        s.state_put(sc, b"g", k.as_bytes(), k.as_bytes()).unwrap();
    }
    s.state_put(sc, b"keep", b"k", b"v").unwrap();
    let drained = s.state_drain(sc, b"g").unwrap();
    assert_eq!(
        keys_of(&drained),
        vec![v("a"), v("b"), v("m"), v("z")],
        "drain in key order"
    );
    assert_eq!(drained[0].1, v("a"));
    assert!(
        s.state_drain(sc, b"g").unwrap().is_empty(),
        "second drain is empty"
    );
    assert_eq!(
        s.state_get(sc, b"keep", b"k").unwrap(),
        Some(v("v")),
        "other namespace untouched"
    );
}

/// Log ids are ≥ 1 and strictly increasing; scans honour the cursor, the limit and
/// `after_id` ≤ 0 as "from the start"; logs are separate by (scope, ns, key).
pub fn log_ordering_and_cursors(s: &dyn FunctionStorage) {
    let sc = b"log";
    let mut ids = Vec::new();
    for i in 0..50u32 {
        ids.push(s.append(sc, b"ns", b"k", &i.to_le_bytes()).unwrap());
        if i % 10 == 0 {
            s.append(sc, b"ns", b"other", b"x").unwrap();
        }
    }
    assert!(ids[0] >= 1, "ids start at 1 or above");
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids strictly increase: {ids:?}"
    );
    let all = s.scan(sc, b"ns", b"k", -1, u64::MAX).unwrap();
    assert_eq!(all.len(), 50);
    assert_eq!(all.iter().map(|e| e.0).collect::<Vec<_>>(), ids);
    assert_eq!(all[7].1, 7u32.to_le_bytes().to_vec());
    assert_eq!(
        s.scan(sc, b"ns", b"k", 0, u64::MAX).unwrap(),
        all,
        "after_id 0 reads from the start"
    );
    let page = s.scan(sc, b"ns", b"k", ids[9], 5).unwrap();
    assert_eq!(
        page.iter().map(|e| e.0).collect::<Vec<_>>(),
        ids[10..15].to_vec(),
        "cursor + limit"
    );
    assert!(
        s.scan(sc, b"ns", b"k", ids[49], 5).unwrap().is_empty(),
        "nothing after the last id"
    );
    assert!(
        s.scan(sc, b"ns", b"k", -1, 0).unwrap().is_empty(),
        "limit 0"
    );
    assert_eq!(
        s.scan(sc, b"ns", b"other", -1, u64::MAX).unwrap().len(),
        5,
        "logs are separate"
    );
    assert!(
        s.scan(sc, b"other-ns", b"k", -1, u64::MAX)
            .unwrap()
            .is_empty()
    );
    // Paging with the cursor visits every entry exactly once.
    let (mut cursor, mut seen) = (-1, Vec::new());
    loop {
        let page = s.scan(sc, b"ns", b"k", cursor, 7).unwrap();
        let Some(last) = page.last() else { break };
        cursor = last.0;
        seen.extend(page.into_iter().map(|e| e.0));
    }
    assert_eq!(seen, ids);
}

/// Counters: missing reads 0, add returns the new value, set and delete return the old one,
/// overflow is an error that changes nothing.
pub fn counters_basic(s: &dyn FunctionStorage) {
    let sc = b"ctr";
    assert_eq!(s.counter_get(sc, b"n", b"c").unwrap(), 0);
    assert_eq!(s.counter_add(sc, b"n", b"c", 5).unwrap(), 5);
    assert_eq!(s.counter_add(sc, b"n", b"c", -7).unwrap(), -2);
    assert_eq!(s.counter_get(sc, b"n", b"c").unwrap(), -2);
    assert_eq!(
        s.counter_set(sc, b"n", b"c", 40).unwrap(),
        -2,
        "set returns the old value"
    );
    assert_eq!(s.counter_get(sc, b"n", b"c").unwrap(), 40);
    assert_eq!(s.counter_set(sc, b"n", b"fresh", 1).unwrap(), 0);
    s.counter_set(sc, b"n", b"max", i64::MAX).unwrap();
    let err = s.counter_add(sc, b"n", b"max", 1).unwrap_err();
    assert!(
        matches!(err, Error::InvalidInput { .. }),
        "overflow is refused: {err}"
    );
    assert_eq!(
        s.counter_get(sc, b"n", b"max").unwrap(),
        i64::MAX,
        "failed add changed nothing"
    );
    assert_eq!(s.counter_delete(sc, b"n", b"c").unwrap(), 40);
    assert_eq!(s.counter_delete(sc, b"n", b"c").unwrap(), 0);
    assert_eq!(s.counter_get(sc, b"n", b"c").unwrap(), 0);
    assert_eq!(
        s.state_get(sc, b"n", b"fresh").unwrap(),
        None,
        "counters are not state"
    );
}

/// 8 threads adding at once lose no update.
pub fn counters_concurrent_adds(s: &dyn FunctionStorage) {
    const THREADS: i64 = 8;
    const ADDS: i64 = 250;
    std::thread::scope(|t| {
        for _ in 0..THREADS {
            t.spawn(|| {
                for _ in 0..ADDS {
                    s.counter_add(b"ctr-mt", b"", b"hits", 1).unwrap();
                }
            });
        }
    });
    assert_eq!(
        s.counter_get(b"ctr-mt", b"", b"hits").unwrap(),
        THREADS * ADDS,
        "no lost update"
    );
}

/// Nothing written in one scope is visible in another.
pub fn scopes_are_isolated(s: &dyn FunctionStorage) {
    s.kv_put(b"iso-a", b"k", b"a").unwrap();
    s.append(b"iso-a", b"n", b"l", b"a").unwrap();
    s.counter_add(b"iso-a", b"n", b"c", 1).unwrap();
    s.queue_push(b"iso-a", &[v("a")]).unwrap();
    assert_eq!(s.kv_get(b"iso-b", b"k").unwrap(), None);
    assert!(
        s.scan(b"iso-b", b"n", b"l", -1, u64::MAX)
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.counter_get(b"iso-b", b"n", b"c").unwrap(), 0);
    assert_eq!(s.queue_pop(b"iso-b").unwrap(), None);
    assert_eq!(s.queue_len(b"iso-b").unwrap(), 0);
    // Prefixes of each other are still different scopes.
    assert_eq!(s.kv_get(b"iso-", b"k").unwrap(), None);
    assert_eq!(s.kv_get(b"iso-a\x00", b"k").unwrap(), None);
    assert_eq!(s.queue_pop(b"iso-a").unwrap(), Some(v("a")));
}

/// `clear` drops state, logs, counters, the queue and dead letters of one scope only, and
/// answers how many entries it dropped.
pub fn clear_drops_the_whole_scope(s: &dyn FunctionStorage) {
    for sc in [&b"clr"[..], b"clr-keep"] {
        s.kv_put(sc, b"k", b"v").unwrap();
        s.state_put(sc, b"ns", b"k", b"v").unwrap();
        s.state_put(sc, b"ns", b"k2", b"v").unwrap();
        s.append(sc, b"n", b"l", b"e").unwrap();
        s.append(sc, b"n", b"l", b"f").unwrap();
        s.append(sc, b"m", b"l", b"e").unwrap();
        s.counter_add(sc, b"n", b"c", 3).unwrap();
        s.queue_push(sc, &[v("1"), v("2")]).unwrap();
    }
    assert!(
        s.queue_claim(b"clr", Duration::from_secs(60))
            .unwrap()
            .is_some()
    );
    assert_eq!(
        s.clear(b"clr").unwrap(),
        9,
        "3 state pairs + 3 log entries + 1 counter + 2 queue items (one claimed)"
    );
    assert_eq!(s.kv_get(b"clr", b"k").unwrap(), None);
    assert_eq!(s.state_get(b"clr", b"ns", b"k").unwrap(), None);
    assert!(s.scan(b"clr", b"n", b"l", -1, u64::MAX).unwrap().is_empty());
    assert_eq!(s.counter_get(b"clr", b"n", b"c").unwrap(), 0);
    assert_eq!(
        s.queue_pop(b"clr").unwrap(),
        None,
        "clear empties the queue"
    );
    assert_eq!(s.queue_len(b"clr").unwrap(), 0);
    assert_eq!(
        s.kv_get(b"clr-keep", b"k").unwrap(),
        Some(v("v")),
        "other scope untouched"
    );
    assert_eq!(s.queue_len(b"clr-keep").unwrap(), 2);
    assert_eq!(s.clear(b"clr").unwrap(), 0, "nothing left to drop");
    assert_eq!(s.clear(b"never-existed").unwrap(), 0);
    // A cleared scope is usable again.
    s.kv_put(b"clr", b"k", b"again").unwrap();
    assert_eq!(s.kv_get(b"clr", b"k").unwrap(), Some(v("again")));
}

/// `gc(ttl)` drops exactly the scopes unwritten for longer than `ttl` (resolution: 1 s).
pub fn gc_drops_only_stale_scopes(s: &dyn FunctionStorage) {
    s.kv_put(b"gc-stale", b"k", b"v").unwrap();
    s.append(b"gc-stale", b"n", b"l", b"v").unwrap();
    s.queue_push(b"gc-stale", &[v("q")]).unwrap();
    s.kv_put(b"gc-fresh", b"k", b"v").unwrap();
    assert_eq!(
        s.gc(Duration::from_secs(3600)).unwrap(),
        0,
        "nothing is an hour old"
    );
    wait(Duration::from_millis(2100));
    s.kv_put(b"gc-fresh", b"k", b"v2").unwrap();
    assert_eq!(
        s.gc(Duration::from_millis(1500)).unwrap(),
        1,
        "exactly the stale scope goes"
    );
    assert_eq!(s.kv_get(b"gc-stale", b"k").unwrap(), None);
    assert!(
        s.scan(b"gc-stale", b"n", b"l", -1, u64::MAX)
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.queue_pop(b"gc-stale").unwrap(), None);
    assert_eq!(
        s.kv_get(b"gc-fresh", b"k").unwrap(),
        Some(v("v2")),
        "fresh scope stays"
    );
    assert_eq!(
        s.gc(Duration::from_secs(3600)).unwrap(),
        0,
        "a sweep drops nothing twice"
    );
}

/// The queue is FIFO across pushes; pop on empty is None; len and queue_clear count items.
pub fn queue_fifo(s: &dyn FunctionStorage) {
    let sc = b"fifo";
    assert_eq!(s.queue_pop(sc).unwrap(), None);
    s.queue_push(sc, &[v("1"), v("2"), v("3")]).unwrap();
    s.queue_push(sc, &[]).unwrap();
    s.queue_push(sc, &[v("4"), Vec::new()]).unwrap();
    assert_eq!(s.queue_len(sc).unwrap(), 5);
    for want in ["1", "2", "3", "4", ""] {
        assert_eq!(s.queue_pop(sc).unwrap(), Some(v(want)), "FIFO order");
    }
    assert_eq!(s.queue_pop(sc).unwrap(), None);
    assert_eq!(s.queue_len(sc).unwrap(), 0);
    s.queue_push(sc, &[v("a"), v("b")]).unwrap();
    assert_eq!(s.queue_clear(sc).unwrap(), 2);
    assert_eq!(s.queue_pop(sc).unwrap(), None);
    s.queue_push(sc, &[v("after-clear")]).unwrap();
    assert_eq!(s.queue_pop(sc).unwrap(), Some(v("after-clear")));
}

/// Concurrent poppers get every item exactly once.
pub fn queue_concurrent_pops(s: &dyn FunctionStorage) {
    const ITEMS: u32 = 2000;
    let items: Vec<Vec<u8>> = (0..ITEMS).map(|i| i.to_le_bytes().to_vec()).collect();
    s.queue_push(b"mt-pop", &items).unwrap();
    let popped: Vec<Vec<u32>> = std::thread::scope(|t| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                t.spawn(|| {
                    let mut got = Vec::new();
                    while let Some(item) = s.queue_pop(b"mt-pop").unwrap() {
                        let bytes: [u8; 4] =
                            item.as_slice().try_into().expect("4-byte item intact");
                        got.push(u32::from_le_bytes(bytes));
                    }
                    got
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    for got in &popped {
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "each popper sees FIFO order"
        );
    }
    let mut all: Vec<u32> = popped.into_iter().flatten().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..ITEMS).collect::<Vec<_>>(),
        "every item exactly once"
    );
}

/// Leases: a claimed item is hidden until acked, released or expired; an expired lease
/// redelivers with attempt + 1 and its old claim can no longer ack; extend keeps it hidden.
pub fn queue_leases(s: &dyn FunctionStorage) {
    let sc = b"lease";
    let lease = Duration::from_millis(400);
    s.queue_push(sc, &[v("job-1"), v("job-2")]).unwrap();
    let c1 = s.queue_claim(sc, lease).unwrap().expect("an item to claim");
    assert_eq!((c1.value.as_slice(), c1.attempt), (&b"job-1"[..], 1));
    assert_eq!(s.queue_len(sc).unwrap(), 2, "a claimed item still counts");
    let c2 = s.queue_claim(sc, lease).unwrap().expect("the second item");
    assert_eq!(c2.value, v("job-2"), "a claimed item is skipped");
    assert_ne!(c1.id, c2.id);
    assert_eq!(
        s.queue_claim(sc, lease).unwrap(),
        None,
        "everything is claimed"
    );
    assert_eq!(
        s.queue_pop(sc).unwrap(),
        None,
        "pop does not see claimed items"
    );

    assert!(s.queue_ack(sc, c2.id).unwrap(), "ack within the lease");
    assert!(
        !s.queue_ack(sc, c2.id).unwrap(),
        "a second ack finds nothing"
    );
    assert!(
        !s.queue_ack(b"other-scope", c1.id).unwrap(),
        "a claim belongs to its scope"
    );

    wait(lease + Duration::from_millis(200));
    let again = s
        .queue_claim(sc, lease)
        .unwrap()
        .expect("expired lease redelivers");
    assert_eq!((again.value.as_slice(), again.attempt), (&b"job-1"[..], 2));
    assert_ne!(again.id, c1.id, "a redelivery is a new claim");
    assert!(
        !s.queue_ack(sc, c1.id).unwrap(),
        "ack after expiry returns false"
    );
    assert!(
        !s.queue_release(sc, c1.id).unwrap(),
        "release after expiry returns false"
    );
    assert!(
        !s.queue_extend(sc, c1.id, lease).unwrap(),
        "extend after expiry returns false"
    );

    assert!(
        s.queue_release(sc, again.id).unwrap(),
        "release within the lease"
    );
    let third = s
        .queue_claim(sc, lease)
        .unwrap()
        .expect("released item is visible at once");
    assert_eq!(third.attempt, 3);
    assert!(
        s.queue_extend(sc, third.id, Duration::from_secs(5))
            .unwrap()
    );
    wait(lease + Duration::from_millis(200));
    assert_eq!(
        s.queue_claim(sc, lease).unwrap(),
        None,
        "extend keeps the item hidden"
    );
    assert!(
        s.queue_ack(sc, third.id).unwrap(),
        "extended lease can still ack"
    );
    assert_eq!(s.queue_len(sc).unwrap(), 0);
    assert!(matches!(
        s.queue_claim(sc, Duration::ZERO),
        Err(Error::InvalidInput { .. })
    ));
}

/// An item claimed `max_attempts` times goes to the dead-letter list instead of being
/// delivered again, by claim or by pop.
pub fn queue_dead_letters(s: &dyn FunctionStorage) {
    let sc = b"dlq";
    let max = s.stat().unwrap().max_attempts;
    s.queue_push(sc, &[v("poison"), v("fine")]).unwrap();
    for attempt in 1..=max {
        let c = s
            .queue_claim(sc, Duration::from_secs(30))
            .unwrap()
            .expect("poison item");
        assert_eq!((c.value.as_slice(), c.attempt), (&b"poison"[..], attempt));
        assert!(s.queue_release(sc, c.id).unwrap());
    }
    let next = s
        .queue_claim(sc, Duration::from_secs(30))
        .unwrap()
        .expect("the healthy item");
    assert_eq!(
        next.value,
        v("fine"),
        "the exhausted item is not delivered again"
    );
    let dead = s.queue_dead_letters(sc, 10).unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].value.as_slice(), dead[0].attempts),
        (&b"poison"[..], max)
    );
    assert_eq!(
        s.queue_len(sc).unwrap(),
        1,
        "dead letters are not queue items"
    );
    assert!(s.queue_ack(sc, next.id).unwrap());

    s.queue_push(sc, &[v("popped-poison")]).unwrap();
    for _ in 0..max {
        let c = s
            .queue_claim(sc, Duration::from_secs(30))
            .unwrap()
            .expect("item");
        assert!(s.queue_release(sc, c.id).unwrap());
    }
    assert_eq!(
        s.queue_pop(sc).unwrap(),
        None,
        "pop skips exhausted items too"
    );
    assert_eq!(s.queue_dead_letters(sc, 10).unwrap().len(), 2);
    assert_eq!(s.queue_dead_letters(sc, 1).unwrap().len(), 1, "limit");
    assert_eq!(
        s.queue_clear(sc).unwrap(),
        2,
        "queue_clear drops dead letters too"
    );
    assert!(s.queue_dead_letters(sc, 10).unwrap().is_empty());
}

/// Names are opaque bytes: empty, NUL, `/`, `..`, invalid UTF-8 and 64 KiB names work in
/// every position and never collide with each other.
pub fn adversarial_names(s: &dyn FunctionStorage) {
    let long = vec![b'k'; 64 << 10];
    let names: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"\x00".to_vec(),
        b"a\x00b".to_vec(),
        b"/".to_vec(),
        b"..".to_vec(),
        b"../../etc/passwd".to_vec(),
        b"\xff\xfe\x80".to_vec(),
        b"a/b".to_vec(),
        b"a".to_vec(),
        b"%2e%2e".to_vec(),
        long.clone(),
    ];
    for (i, name) in names.iter().enumerate() {
        let tag = (i as u32).to_le_bytes();
        s.state_put(name, name, name, &tag).unwrap();
        s.append(name, name, name, &tag).unwrap();
        s.counter_add(name, name, name, i as i64 + 1).unwrap();
        s.queue_push(name, &[tag.to_vec()]).unwrap();
    }
    // Concatenation-ambiguous triples must stay distinct.
    s.state_put(b"a", b"/b", b"c", b"one").unwrap();
    s.state_put(b"a/", b"b", b"c", b"two").unwrap();
    for (i, name) in names.iter().enumerate() {
        let tag = (i as u32).to_le_bytes().to_vec();
        assert_eq!(
            s.state_get(name, name, name).unwrap(),
            Some(tag.clone()),
            "state name #{i}"
        );
        let log = s.scan(name, name, name, -1, u64::MAX).unwrap();
        assert_eq!(log.len(), 1, "log name #{i}");
        assert_eq!(log[0].1, tag);
        assert_eq!(
            s.counter_get(name, name, name).unwrap(),
            i as i64 + 1,
            "counter name #{i}"
        );
        assert_eq!(s.queue_pop(name).unwrap(), Some(tag), "queue name #{i}");
    }
    assert_eq!(s.state_get(b"a", b"/b", b"c").unwrap(), Some(v("one")));
    assert_eq!(s.state_get(b"a/", b"b", b"c").unwrap(), Some(v("two")));
    s.clear(b"..").unwrap();
    assert_eq!(s.state_get(b"..", b"..", b"..").unwrap(), None);
    assert!(
        s.state_get(b"/", b"/", b"/").unwrap().is_some(),
        "clearing `..` touched nothing else"
    );
    assert!(s.state_get(&long, &long, &long).unwrap().is_some());
}

/// Values from 0 bytes to 64 MiB come back intact from state, logs and the queue.
pub fn value_sizes(s: &dyn FunctionStorage) {
    let sc = b"sizes";
    for size in [0usize, 1, 100, 64 << 10, 1 << 20, 64 << 20] {
        let value: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        s.kv_put(sc, b"k", &value).unwrap();
        assert!(
            s.kv_get(sc, b"k").unwrap() == Some(value.clone()),
            "state value of {size} bytes"
        );
        let id = s.append(sc, b"n", b"l", &value).unwrap();
        let got = s.scan(sc, b"n", b"l", id - 1, 1).unwrap();
        assert!(
            got.len() == 1 && got[0].1 == value,
            "log value of {size} bytes"
        );
        s.queue_push(sc, std::slice::from_ref(&value)).unwrap();
        assert!(
            s.queue_pop(sc).unwrap() == Some(value),
            "queue value of {size} bytes"
        );
    }
}

/// A value over the store's `max_value_bytes` is refused with `InvalidInput` by every write,
/// and nothing is stored.
pub fn oversized_values_rejected(s: &dyn FunctionStorage) {
    let limit = s.stat().unwrap().max_value_bytes;
    let Ok(size) = usize::try_from(limit + 1) else {
        panic!("max_value_bytes {limit} does not fit in memory here")
    };
    assert!(
        size <= 512 << 20,
        "the kit needs a store with max_value_bytes ≤ 512 MiB, got {limit}"
    );
    let big = vec![1u8; size];
    let sc = b"oversized";
    let refused = |r: crate::Result<()>, what: &str| match r {
        Err(Error::InvalidInput { .. }) => {}
        other => panic!("{what} with a value over the limit: {other:?}"),
    };
    refused(s.kv_put(sc, b"k", &big), "kv_put");
    refused(s.append(sc, b"n", b"l", &big).map(drop), "append");
    refused(s.queue_push(sc, &[v("small"), big]), "queue_push");
    assert_eq!(s.kv_get(sc, b"k").unwrap(), None);
    assert!(s.scan(sc, b"n", b"l", -1, u64::MAX).unwrap().is_empty());
    assert_eq!(s.queue_len(sc).unwrap(), 0, "a refused push stores nothing");
}

/// `gc_prefix` sweeps only stale scopes under the prefix. (Local backends; a server's
/// client sweeps by tenant instead.)
pub fn gc_prefix_sweeps_only_its_prefix(s: &dyn FunctionStorage) {
    s.kv_put(b"tenant-a/1", b"k", b"v").unwrap();
    s.kv_put(b"tenant-a/2", b"k", b"v").unwrap();
    s.kv_put(b"tenant-b/1", b"k", b"v").unwrap();
    s.kv_put(b"tenant-", b"k", b"v").unwrap();
    wait(Duration::from_millis(1100));
    assert_eq!(
        s.gc_prefix(b"tenant-a/", Duration::from_millis(500))
            .unwrap(),
        2
    );
    assert_eq!(s.kv_get(b"tenant-a/1", b"k").unwrap(), None);
    assert!(
        s.kv_get(b"tenant-b/1", b"k").unwrap().is_some(),
        "other prefix untouched"
    );
    assert!(
        s.kv_get(b"tenant-", b"k").unwrap().is_some(),
        "a shorter name is not under the prefix"
    );
    assert_eq!(s.gc_prefix(b"\xff\xff", Duration::ZERO).unwrap(), 0);
}

/// `apply_once` applies an operation once per key and replays its reply; the same key with
/// another request's fingerprint is a `Conflict`; a failed or panicking apply leaves no
/// effect and is not remembered; concurrent calls with one key apply once; expired keys are
/// forgotten. (Only for backends that serve as a server's store: memory, sqlite, postgres.)
pub fn apply_once_applies_once(s: &dyn FunctionStorage) {
    let sc = b"once";
    let fp = b"fingerprint-of-push";
    let mut push = |st: &dyn FunctionStorage| {
        st.queue_push(sc, &[v("item")])?;
        Ok(st.queue_len(sc)?.to_le_bytes().to_vec())
    };
    let first = s.apply_once(b"key-1", fp, &mut push).unwrap();
    let again = s.apply_once(b"key-1", fp, &mut push).unwrap();
    assert_eq!(first, again, "a retry gets the original reply");
    assert_eq!(s.queue_len(sc).unwrap(), 1, "the retry applied nothing");
    let reused = s.apply_once(b"key-1", b"another request", &mut push);
    assert!(
        matches!(reused, Err(Error::Conflict { .. })),
        "a key reused for another request is a conflict: {reused:?}"
    );
    assert_eq!(s.queue_len(sc).unwrap(), 1, "the conflict applied nothing");
    assert_eq!(
        s.apply_once(b"key-2", fp, &mut push).unwrap(),
        2u64.to_le_bytes().to_vec()
    );

    // Each operation of one apply sees the writes of the ones before it (a batch relies on it).
    let mut several = |st: &dyn FunctionStorage| -> crate::Result<Vec<u8>> {
        let first = st.append(b"once-seq", b"", b"k", b"a")?;
        let second = st.append(b"once-seq", b"", b"k", b"b")?;
        assert!(second > first, "the second append's id follows the first's");
        st.counter_add(b"once-seq", b"", b"c", 2)?;
        assert_eq!(
            st.counter_add(b"once-seq", b"", b"c", 3)?,
            5,
            "adds accumulate"
        );
        st.kv_put(b"once-seq", b"k", b"v1")?;
        assert_eq!(
            st.kv_get(b"once-seq", b"k")?,
            Some(v("v1")),
            "a put is read back"
        );
        st.queue_push(b"once-seq", &[v("pushed")])?;
        assert_eq!(
            st.queue_pop(b"once-seq")?,
            Some(v("pushed")),
            "a push is popped"
        );
        st.kv_put(b"once-seq", b"k", b"v2")?;
        Ok(second.to_le_bytes().to_vec())
    };
    s.apply_once(b"key-several", fp, &mut several).unwrap();
    assert_eq!(s.kv_get(b"once-seq", b"k").unwrap(), Some(v("v2")));
    assert_eq!(s.counter_get(b"once-seq", b"", b"c").unwrap(), 5);
    assert_eq!(s.queue_len(b"once-seq").unwrap(), 0);
    let log = s.scan(b"once-seq", b"", b"k", 0, 10).unwrap();
    assert_eq!(
        log.iter().map(|e| e.1.clone()).collect::<Vec<_>>(),
        [v("a"), v("b")]
    );

    // A failure after the effect's writes: every write of it is undone.
    let mut half_done = |st: &dyn FunctionStorage| -> crate::Result<Vec<u8>> {
        st.queue_push(sc, &[v("ghost")])?;
        st.kv_put(b"once-other", b"k", b"ghost")?;
        st.counter_add(sc, b"", b"ghost", 5)?;
        Err(Error::invalid("failed after writing"))
    };
    assert!(s.apply_once(b"key-3", fp, &mut half_done).is_err());
    assert_eq!(
        s.queue_len(sc).unwrap(),
        2,
        "a failed apply's push rolled back"
    );
    assert_eq!(s.kv_get(b"once-other", b"k").unwrap(), None, "its put too");
    assert_eq!(s.counter_get(sc, b"", b"ghost").unwrap(), 0, "its add too");
    assert_eq!(
        s.apply_once(b"key-3", fp, &mut push).unwrap(),
        3u64.to_le_bytes().to_vec(),
        "a failure is not remembered"
    );

    // A panic in the middle of the effect: undone as well, and the store stays usable.
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut boom = |st: &dyn FunctionStorage| -> crate::Result<Vec<u8>> {
            st.kv_put(sc, b"boom", b"v")?;
            panic!("a bug in the effect");
        };
        let _ = s.apply_once(b"key-4", fp, &mut boom);
    }));
    assert!(panicked.is_err());
    assert_eq!(
        s.kv_get(sc, b"boom").unwrap(),
        None,
        "the panicking apply rolled back"
    );
    s.kv_put(sc, b"after", b"ok").unwrap();
    assert_eq!(s.kv_get(sc, b"after").unwrap(), Some(v("ok")));

    std::thread::scope(|t| {
        for _ in 0..4 {
            t.spawn(|| {
                let mut add = |st: &dyn FunctionStorage| {
                    Ok(st.counter_add(sc, b"", b"c", 1)?.to_le_bytes().to_vec())
                };
                s.apply_once(b"key-concurrent", fp, &mut add).unwrap()
            });
        }
    });
    assert_eq!(
        s.counter_get(sc, b"", b"c").unwrap(),
        1,
        "concurrent retries apply once"
    );

    wait(Duration::from_millis(50));
    assert!(s.expire_once_keys(Duration::from_millis(10)).unwrap() >= 4);
    s.apply_once(b"key-1", fp, &mut push).unwrap();
    assert_eq!(s.queue_len(sc).unwrap(), 4, "an expired key applies again");
}

/// Every operation that changes a scope refreshes its touch time, so `gc` never sweeps a
/// scope that workers are still draining: pops, claims, acks, releases, extends, deletes,
/// drains, counter deletes, queue clears and dead-lettering included. (One wait of 2.2 s:
/// backends may record touch times to the second.)
pub fn every_change_touches_its_scope(s: &dyn FunctionStorage) {
    let lease = Duration::from_secs(600);
    type Change = fn(&dyn FunctionStorage, &[u8], i64);
    let changes: [(&str, Change); 13] = [
        ("state_del", |s, sc, _| {
            s.state_del(sc, b"n", b"k").unwrap();
        }),
        ("state_delete", |s, sc, _| {
            s.state_delete(sc, b"n", &Selection::All).unwrap();
        }),
        ("state_drain", |s, sc, _| {
            s.state_drain(sc, b"n").unwrap();
        }),
        ("kv_del", |s, sc, _| s.kv_del(sc, b"k").unwrap()),
        ("counter_delete", |s, sc, _| {
            s.counter_delete(sc, b"n", b"c").unwrap();
        }),
        ("queue_pop", |s, sc, _| {
            s.queue_pop(sc).unwrap();
        }),
        ("queue_claim", |s, sc, _| {
            s.queue_claim(sc, Duration::from_secs(1)).unwrap();
        }),
        ("queue_ack", |s, sc, claim| {
            assert!(s.queue_ack(sc, claim).unwrap());
        }),
        ("queue_release", |s, sc, claim| {
            assert!(s.queue_release(sc, claim).unwrap());
        }),
        ("queue_extend", |s, sc, claim| {
            assert!(s.queue_extend(sc, claim, Duration::from_secs(600)).unwrap());
        }),
        ("queue_clear", |s, sc, _| {
            s.queue_clear(sc).unwrap();
        }),
        ("counter_add", |s, sc, _| {
            s.counter_add(sc, b"n", b"c", 1).unwrap();
        }),
        ("append", |s, sc, _| {
            s.append(sc, b"n", b"log", b"v").unwrap();
        }),
    ];
    let scope = |name: &str| format!("touch-{name}").into_bytes();
    let mut claims = Vec::new();
    for (name, _) in &changes {
        let sc = scope(name);
        s.state_put(&sc, b"alive", b"marker", b"v").unwrap();
        s.state_put(&sc, b"n", b"k", b"v").unwrap();
        s.kv_put(&sc, b"k", b"v").unwrap();
        s.counter_add(&sc, b"n", b"c", 1).unwrap();
        s.queue_push(&sc, &[v("a"), v("b")]).unwrap();
        let claim = s
            .queue_claim(&sc, lease)
            .unwrap()
            .expect("an item to claim");
        claims.push(claim.id);
    }
    s.kv_put(b"touch-untouched", b"k", b"v").unwrap();
    wait(Duration::from_millis(2200));
    for ((name, change), claim) in changes.iter().zip(&claims) {
        change(s, &scope(name), *claim);
    }
    assert_eq!(
        s.gc(Duration::from_millis(1500)).unwrap(),
        1,
        "only the untouched scope is an orphan"
    );
    assert_eq!(s.kv_get(b"touch-untouched", b"k").unwrap(), None);
    for (name, _) in &changes {
        assert!(
            s.state_get(&scope(name), b"alive", b"marker")
                .unwrap()
                .is_some(),
            "{name} refreshed its scope's touch time, so gc kept it"
        );
    }
}

/// Drains racing each other and a writer: every pair written is drained exactly once or is
/// still there at the end, never handed to two drains.
pub fn state_drains_race_without_sharing(s: &dyn FunctionStorage) {
    let sc = b"drain-race";
    let total = 400u32;
    let drained: Vec<Vec<(Vec<u8>, Vec<u8>)>> = std::thread::scope(|t| {
        let writer = t.spawn(|| {
            for i in 0..total {
                s.state_put(sc, b"g", &i.to_be_bytes(), &i.to_le_bytes())
                    .unwrap();
            }
        });
        let drainers: Vec<_> = (0..3)
            .map(|_| {
                t.spawn(|| {
                    let mut got = Vec::new();
                    for _ in 0..60 {
                        got.extend(s.state_drain(sc, b"g").unwrap());
                        std::thread::yield_now();
                    }
                    got
                })
            })
            .collect();
        writer.join().unwrap();
        drainers.into_iter().map(|d| d.join().unwrap()).collect()
    });
    let mut seen = std::collections::HashSet::new();
    for (key, value) in drained.into_iter().flatten() {
        let i = u32::from_be_bytes(key.as_slice().try_into().expect("a 4-byte key"));
        assert_eq!(value, i.to_le_bytes(), "pair {i} intact");
        assert!(seen.insert(i), "pair {i} was drained twice");
    }
    for (key, _) in s.state_drain(sc, b"g").unwrap() {
        let i = u32::from_be_bytes(key.as_slice().try_into().expect("a 4-byte key"));
        assert!(seen.insert(i), "pair {i} was drained and is still there");
    }
    assert_eq!(
        seen.len(),
        total as usize,
        "every pair drained exactly once"
    );
}

/// At the lease-expiry boundary an ack with the old lease races a new claim: never both own
/// the item. Either the ack wins (true) and no one can claim the item again, or the old
/// lease is lost (false) and the item is delivered again (attempt 2), to the racing claim or
/// to a later one; it is never lost.
pub fn lease_expiry_has_one_owner(s: &dyn FunctionStorage) {
    let sc = b"lease-boundary";
    let lease = Duration::from_millis(40);
    for round in 0..12u64 {
        s.queue_push(sc, &[round.to_le_bytes().to_vec()]).unwrap();
        let first = s.queue_claim(sc, lease).unwrap().expect("an item to claim");
        // Land on both sides of the expiry across rounds.
        wait(lease + Duration::from_millis(round % 4 * 4) - Duration::from_millis(6));
        let (acked, reclaimed) = std::thread::scope(|t| {
            let ack = t.spawn(|| s.queue_ack(sc, first.id).unwrap());
            let claim = t.spawn(|| s.queue_claim(sc, Duration::from_secs(60)).unwrap());
            (ack.join().unwrap(), claim.join().unwrap())
        });
        let reclaimed = match (acked, reclaimed) {
            // The claim ran just before the expiry, the ack just after: the item is waiting.
            (false, None) => {
                wait(lease);
                s.queue_claim(sc, Duration::from_secs(60)).unwrap()
            }
            (_, other) => other,
        };
        match (acked, reclaimed) {
            (true, None) => {}
            (false, Some(again)) => {
                assert_eq!(
                    again.value,
                    round.to_le_bytes(),
                    "round {round}: the same item"
                );
                assert_eq!(again.attempt, 2, "round {round}: a redelivery");
                assert!(
                    !s.queue_ack(sc, first.id).unwrap(),
                    "the old lease stays dead"
                );
                assert!(s.queue_ack(sc, again.id).unwrap());
            }
            other => panic!("round {round}: ack and re-claim both or neither won: {other:?}"),
        }
        assert_eq!(
            s.queue_len(sc).unwrap(),
            0,
            "round {round}: the item is gone once"
        );
    }
}

/// An effect of several operations (a push, a put, a claim, an append, an add) that fails
/// after any number of them — by an error or by a panic — leaves no trace, and its retry under
/// the same key then applies all of it once. (A claim that survived a failed effect would
/// hide the work item for a minute, and the next effect's claim would find nothing.)
pub fn apply_once_fails_atomically_at_every_step(s: &dyn FunctionStorage) {
    const STEPS: usize = 6;
    let sc = b"once-steps";
    s.queue_push(sc, &[v("work")]).unwrap();
    let effect = |st: &dyn FunctionStorage, fail_at: Option<usize>, panic: bool| {
        let step = |n: usize| -> crate::Result<()> {
            if fail_at == Some(n) {
                if panic {
                    panic!("injected panic before step {n}");
                }
                return Err(Error::Unavailable {
                    message: format!("injected failure before step {n}"),
                });
            }
            Ok(())
        };
        step(0)?;
        st.queue_push(sc, &[v("pushed")])?;
        step(1)?;
        st.state_put(sc, b"n", b"k", b"put")?;
        step(2)?;
        let claimed = st.queue_claim(sc, Duration::from_secs(60))?;
        if claimed.map(|c| c.value) != Some(v("work")) {
            return Err(Error::invalid(
                "the work item was not claimable: a claim leaked",
            ));
        }
        step(3)?;
        st.append(sc, b"n", b"log", b"appended")?;
        step(4)?;
        st.counter_add(sc, b"n", b"c", 1)?;
        step(5)?;
        Ok(b"done".to_vec())
    };
    let untouched = |when: &str| {
        assert_eq!(s.queue_len(sc).unwrap(), 1, "{when}: no push");
        assert_eq!(s.state_get(sc, b"n", b"k").unwrap(), None, "{when}: no put");
        assert!(
            s.scan(sc, b"n", b"log", 0, u64::MAX).unwrap().is_empty(),
            "{when}: no append"
        );
        assert_eq!(s.counter_get(sc, b"n", b"c").unwrap(), 0, "{when}: no add");
    };
    for fail_at in 0..STEPS {
        for panic in [false, true] {
            let key = format!("steps-{fail_at}-{panic}");
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                s.apply_once(key.as_bytes(), b"fp", &mut |st| {
                    effect(st, Some(fail_at), panic)
                })
            }));
            match outcome {
                Ok(Err(Error::Unavailable { .. })) => assert!(!panic),
                Ok(other) => panic!("step {fail_at}: expected the injected failure, got {other:?}"),
                Err(_) => assert!(panic, "step {fail_at}: only the injected panic unwinds"),
            }
            untouched(&format!("failed before step {fail_at} (panic: {panic})"));
        }
    }
    // The retry applies everything, once.
    let mut full = |st: &dyn FunctionStorage| effect(st, None, false);
    assert_eq!(
        s.apply_once(b"steps-2-false", b"fp", &mut full).unwrap(),
        v("done")
    );
    assert_eq!(
        s.apply_once(b"steps-2-false", b"fp", &mut full).unwrap(),
        v("done")
    );
    assert_eq!(s.counter_get(sc, b"n", b"c").unwrap(), 1, "applied once");
    assert_eq!(s.scan(sc, b"n", b"log", 0, u64::MAX).unwrap().len(), 1);
    assert_eq!(
        s.queue_len(sc).unwrap(),
        2,
        "the work item (claimed) and the pushed one"
    );
}

/// `stat` counts what the store holds.
pub fn stat_counts(s: &dyn FunctionStorage) {
    let before = s.stat().unwrap();
    s.kv_put(b"stat", b"k", b"v").unwrap();
    s.append(b"stat", b"n", b"l", b"v").unwrap();
    s.counter_add(b"stat", b"n", b"c", 1).unwrap();
    s.queue_push(b"stat", &[v("a"), v("b")]).unwrap();
    let after = s.stat().unwrap();
    assert!(!after.backend.is_empty());
    assert_eq!(after.scopes, before.scopes + 1);
    assert_eq!(after.state_entries, before.state_entries + 1);
    assert_eq!(after.log_entries, before.log_entries + 1);
    assert_eq!(after.counters, before.counters + 1);
    assert_eq!(after.queue_items, before.queue_items + 2);
}

/// Core only (the nine operations of the incumbent protocol): `kv_*` overwrite, read and
/// idempotent delete.
pub fn core_kv_roundtrip(s: &dyn FunctionStorage) {
    let sc = b"core-kv";
    assert_eq!(s.kv_get(sc, b"k").unwrap(), None);
    s.kv_put(sc, b"k", b"v1").unwrap();
    s.kv_put(sc, b"k", b"v2").unwrap();
    assert_eq!(s.kv_get(sc, b"k").unwrap(), Some(v("v2")), "put overwrites");
    assert_eq!(
        s.kv_get(b"core-kv-other", b"k").unwrap(),
        None,
        "scopes are separate"
    );
    s.kv_del(sc, b"k").unwrap();
    s.kv_del(sc, b"k").unwrap();
    assert_eq!(s.kv_get(sc, b"k").unwrap(), None);
}

/// Core only: FIFO across pushes, `None` when empty, scopes separate.
pub fn core_queue_fifo(s: &dyn FunctionStorage) {
    let sc = b"core-fifo";
    assert_eq!(s.queue_pop(sc).unwrap(), None);
    s.queue_push(sc, &[v("1"), v("2")]).unwrap();
    s.queue_push(sc, &[v("3"), Vec::new()]).unwrap();
    s.queue_push(b"core-fifo-other", &[v("x")]).unwrap();
    for want in ["1", "2", "3", ""] {
        assert_eq!(s.queue_pop(sc).unwrap(), Some(v(want)), "FIFO order");
    }
    assert_eq!(s.queue_pop(sc).unwrap(), None);
    assert_eq!(s.queue_pop(b"core-fifo-other").unwrap(), Some(v("x")));
}

/// Core only: `clear` drops the scope's kv, logs and queue, and nothing else.
pub fn core_clear(s: &dyn FunctionStorage) {
    for sc in [&b"core-clr"[..], b"core-clr-keep"] {
        s.kv_put(sc, b"k", b"v").unwrap();
        s.append(sc, b"n", b"l", b"e").unwrap();
        s.queue_push(sc, &[v("q")]).unwrap();
    }
    s.clear(b"core-clr").unwrap();
    assert_eq!(s.kv_get(b"core-clr", b"k").unwrap(), None);
    assert!(
        s.scan(b"core-clr", b"n", b"l", -1, u64::MAX)
            .unwrap()
            .is_empty()
    );
    assert_eq!(s.queue_pop(b"core-clr").unwrap(), None);
    assert_eq!(s.kv_get(b"core-clr-keep", b"k").unwrap(), Some(v("v")));
    assert_eq!(
        s.scan(b"core-clr-keep", b"n", b"l", -1, u64::MAX)
            .unwrap()
            .len(),
        1
    );
    assert_eq!(s.queue_pop(b"core-clr-keep").unwrap(), Some(v("q")));
}

/// Core only: opaque names (empty, NUL, `/`, `..`, invalid UTF-8, 64 KiB) round-trip and
/// never collide.
pub fn core_adversarial_names(s: &dyn FunctionStorage) {
    let names: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"\x00".to_vec(),
        b"/".to_vec(),
        b"..".to_vec(),
        b"../x".to_vec(),
        b"\xff\xfe".to_vec(),
        vec![b'k'; 64 << 10],
    ];
    for (i, name) in names.iter().enumerate() {
        let tag = (i as u32).to_le_bytes().to_vec();
        s.kv_put(name, name, &tag).unwrap();
        s.append(name, name, name, &tag).unwrap();
        s.queue_push(name, std::slice::from_ref(&tag)).unwrap();
    }
    for (i, name) in names.iter().enumerate() {
        let tag = (i as u32).to_le_bytes().to_vec();
        assert_eq!(
            s.kv_get(name, name).unwrap(),
            Some(tag.clone()),
            "kv name #{i}"
        );
        let log = s.scan(name, name, name, -1, u64::MAX).unwrap();
        assert_eq!(log.len(), 1, "log name #{i}");
        assert_eq!(log[0].1, tag);
        assert_eq!(s.queue_pop(name).unwrap(), Some(tag), "queue name #{i}");
    }
}

/// Runs a check on a store (what [`conformance_tests!`](crate::conformance_tests) does per
/// check).
pub fn run(store: &dyn FunctionStorage, check: fn(&dyn FunctionStorage)) {
    check(store);
}

/// Runs a check on a store that reads `clock` (a [`Clock::manual`] one): the check's waits
/// advance the clock instead of sleeping.
pub fn run_clocked(store: &dyn FunctionStorage, clock: &Clock, check: fn(&dyn FunctionStorage)) {
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CLOCK.with(|c| *c.borrow_mut() = Clock::system());
        }
    }
    CLOCK.with(|c| *c.borrow_mut() = clock.clone());
    let _reset = Reset;
    check(store);
}

/// Runs a check twice on one store, through two tenants' [`PrefixStore`]s: the second run
/// passes only if nothing of the first (data, sweeps, idempotency keys) leaked across the
/// prefix, for every operation the check uses.
pub fn run_isolated(store: &dyn FunctionStorage, check: fn(&dyn FunctionStorage)) {
    check(&PrefixStore::new(store, b"tenant:first\0".to_vec()));
    check(&PrefixStore::new(store, b"tenant:second\0".to_vec()));
}

/// Generates one `#[test]` per check that uses only the nine core operations, for stores
/// and servers that implement no more (the incumbent's).
#[macro_export]
macro_rules! core_conformance_tests {
    ($factory:expr) => {
        $crate::conformance_tests!(@each $factory, run;
            core_kv_roundtrip, core_queue_fifo, core_clear, core_adversarial_names,
            log_ordering_and_cursors, queue_concurrent_pops, value_sizes);
    };
}

/// Generates one `#[test]` per conformance check. `$factory` is an expression evaluated
/// afresh for each test; it must yield something that dereferences to
/// `dyn FunctionStorage` (an `Arc<dyn FunctionStorage>`, or a guard that also owns a temp
/// directory). The store must accept values of 64 MiB and refuse larger ones at
/// `max_value_bytes` (use `?max_value_bytes=68157440`, 65 MiB).
///
/// `conformance_tests!(isolated $factory)` runs every check twice on each store, through two
/// tenants' prefixes ([`run_isolated`](crate::conformance::run_isolated)).
/// `conformance_tests!(clocked $factory)` takes a factory yielding `(store, clock)` where the
/// store reads the [`Clock::manual`](crate::Clock::manual) `clock`: waits for leases and
/// sweeps advance it instead of sleeping.
///
/// `conformance_tests!(twice $factory)` takes a factory yielding two views of one store (e.g.
/// two tenants' clients of one server) and runs every check on the first, then on the second.
#[macro_export]
macro_rules! conformance_tests {
    (clocked $factory:expr) => {
        $crate::conformance_tests!(@all $factory, clocked);
    };
    (twice $factory:expr) => {
        $crate::conformance_tests!(@all $factory, twice);
    };
    (isolated $factory:expr) => {
        $crate::conformance_tests!(@all $factory, run_isolated);
    };
    ($factory:expr) => {
        $crate::conformance_tests!(@all $factory, run);
    };
    // A factory that returns `Option`: `None` (a server not installed here; the factory says
    // so loudly) passes every check without running it.
    (maybe $factory:expr) => {
        $crate::conformance_tests!(@all $factory, maybe_run);
    };
    (maybe clocked $factory:expr) => {
        $crate::conformance_tests!(@all $factory, maybe_clocked);
    };
    (maybe isolated $factory:expr) => {
        $crate::conformance_tests!(@all $factory, maybe_run_isolated);
    };
    (@all $factory:expr, $runner:ident) => {
        $crate::conformance_tests!(@each $factory, $runner;
            kv_roundtrip, state_namespaces_are_isolated, state_batches, state_scan_ranges,
            state_delete_selections, state_drain_takes_everything_once,
            state_drains_race_without_sharing, log_ordering_and_cursors,
            counters_basic, counters_concurrent_adds, scopes_are_isolated,
            clear_drops_the_whole_scope, gc_drops_only_stale_scopes, queue_fifo,
            queue_concurrent_pops, queue_leases, lease_expiry_has_one_owner, queue_dead_letters,
            adversarial_names, value_sizes, oversized_values_rejected, stat_counts,
            every_change_touches_its_scope);
    };
    (@each $factory:expr, clocked; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                let (store, clock) = $factory;
                $crate::conformance::run_clocked(&*store, &clock, $crate::conformance::$check);
            }
        )*
    };
    (@each $factory:expr, maybe_clocked; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                let Some((store, clock)) = $factory else { return };
                $crate::conformance::run_clocked(&*store, &clock, $crate::conformance::$check);
            }
        )*
    };
    (@each $factory:expr, maybe_run; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                let Some(store) = $factory else { return };
                $crate::conformance::run(&*store, $crate::conformance::$check);
            }
        )*
    };
    (@each $factory:expr, maybe_run_isolated; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                let Some(store) = $factory else { return };
                $crate::conformance::run_isolated(&*store, $crate::conformance::$check);
            }
        )*
    };
    (@each $factory:expr, twice; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                let (first, second) = $factory;
                $crate::conformance::run(&*first, $crate::conformance::$check);
                $crate::conformance::run(&*second, $crate::conformance::$check);
            }
        )*
    };
    (@each $factory:expr, $runner:ident; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                let store = $factory;
                $crate::conformance::$runner(&*store, $crate::conformance::$check);
            }
        )*
    };
}
