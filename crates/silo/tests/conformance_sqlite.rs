//! The conformance kit on the `sqlite:` backend, one fresh database file per check.

mod common;

silo::conformance_tests!(common::TempStore::sqlite("max_value_bytes=68157440"));

#[test]
fn apply_once_applies_once() {
    let store = common::TempStore::sqlite("max_value_bytes=68157440");
    silo::conformance::apply_once_applies_once(&*store);
}

#[test]
fn apply_once_fails_atomically_at_every_step() {
    let store = common::TempStore::sqlite("");
    silo::conformance::apply_once_fails_atomically_at_every_step(&*store);
}

#[test]
fn gc_prefix_sweeps_only_its_prefix() {
    let store = common::TempStore::sqlite("max_value_bytes=68157440");
    silo::conformance::gc_prefix_sweeps_only_its_prefix(&*store);
}

/// Concurrent writers, some of whose operations fail (an overflow): the failures change
/// nothing and neither lose nor fail the others' writes.
#[test]
fn concurrent_writers_with_failing_ones_lose_nothing() {
    let store = common::TempStore::sqlite("");
    store.counter_set(b"g", b"", b"max", i64::MAX).unwrap();
    std::thread::scope(|t| {
        for w in 0..8u8 {
            let store = &store;
            t.spawn(move || {
                for i in 0..150u32 {
                    if w % 4 == 0 && i % 10 == 0 {
                        let err = store.counter_add(b"g", b"", b"max", 1).unwrap_err();
                        assert!(matches!(err, silo::Error::InvalidInput { .. }), "{err}");
                    }
                    store.counter_add(b"g", b"", b"sum", 1).unwrap();
                    store
                        .kv_put(b"g", &[&[w][..], &i.to_be_bytes()].concat(), b"v")
                        .unwrap();
                }
            });
        }
    });
    assert_eq!(store.counter_get(b"g", b"", b"sum").unwrap(), 8 * 150);
    assert_eq!(store.counter_get(b"g", b"", b"max").unwrap(), i64::MAX);
    let reopened = silo::open(&store.url).unwrap();
    assert_eq!(
        reopened.stat().unwrap().state_entries,
        8 * 150,
        "every write committed"
    );
}

/// Every check again, twice per store, through two tenants' prefixes.
mod isolated {
    #[allow(unused_imports)]
    use super::*;
    silo::conformance_tests!(isolated super::common::TempStore::sqlite("max_value_bytes=68157440"));
}

/// `apply_once` through two tenants' prefixes on one store: keys and effects stay apart.
#[test]
fn apply_once_is_isolated_by_prefix() {
    let store = common::TempStore::sqlite("");
    silo::conformance::run_isolated(&*store, silo::conformance::apply_once_applies_once);
    silo::conformance::run_isolated(
        &*store,
        silo::conformance::apply_once_fails_atomically_at_every_step,
    );
}

/// Every check on a store with a manual clock: leases and sweeps without sleeping.
mod clocked {
    silo::conformance_tests!(clocked super::common::TempStore::sqlite_clocked());
}
