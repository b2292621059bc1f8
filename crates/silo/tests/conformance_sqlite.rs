//! The conformance kit on the `sqlite:` backend, one fresh database file per check.

mod common;

silo::conformance_tests!(common::TempStore::sqlite("max_value_bytes=68157440"));

#[test]
fn apply_once_applies_once() {
    let store = common::TempStore::sqlite("max_value_bytes=68157440");
    silo::conformance::apply_once_applies_once(&*store);
}

/// On SQLite the reply is stored in the effect's transaction, so an apply that fails after a
/// write leaves no trace, and a panicking apply neither.
#[test]
fn apply_once_failure_rolls_back_its_effects() {
    let store = common::TempStore::sqlite("");
    let mut half_done = |st: &dyn silo::FunctionStorage| -> silo::Result<Vec<u8>> {
        st.queue_push(b"s", &[b"effect".to_vec()])?;
        Err(silo::Error::invalid("failed after the write"))
    };
    assert!(store.apply_once(b"k", &mut half_done).is_err());
    assert_eq!(
        store.queue_len(b"s").unwrap(),
        0,
        "the failed apply's write rolled back"
    );

    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut boom = |st: &dyn silo::FunctionStorage| -> silo::Result<Vec<u8>> {
            st.kv_put(b"s", b"k", b"v")?;
            panic!("worker bug");
        };
        let _ = store.apply_once(b"k2", &mut boom);
    }));
    assert!(panicked.is_err());
    assert_eq!(
        store.kv_get(b"s", b"k").unwrap(),
        None,
        "the panicking apply rolled back"
    );
    store.kv_put(b"s", b"after", b"ok").unwrap();
    let reopened = silo::open(&store.url).unwrap();
    assert_eq!(
        reopened.kv_get(b"s", b"after").unwrap(),
        Some(b"ok".to_vec()),
        "later writes commit"
    );
}

#[test]
fn gc_prefix_sweeps_only_its_prefix() {
    let store = common::TempStore::sqlite("max_value_bytes=68157440");
    silo::conformance::gc_prefix_sweeps_only_its_prefix(&*store);
}
