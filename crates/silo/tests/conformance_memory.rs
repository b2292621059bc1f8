//! The conformance kit on the `memory:` backend.

silo::conformance_tests!(silo::open("memory:?max_value_bytes=68157440").unwrap());

#[test]
fn apply_once_applies_once() {
    let store = silo::open("memory:?max_value_bytes=68157440").unwrap();
    silo::conformance::apply_once_applies_once(&*store);
}

#[test]
fn apply_once_fails_atomically_at_every_step() {
    let store = silo::open("memory:").unwrap();
    silo::conformance::apply_once_fails_atomically_at_every_step(&*store);
}

#[test]
fn gc_prefix_sweeps_only_its_prefix() {
    let store = silo::open("memory:?max_value_bytes=68157440").unwrap();
    silo::conformance::gc_prefix_sweeps_only_its_prefix(&*store);
}

mod core_only {
    silo::core_conformance_tests!(silo::open("memory:").unwrap());
}

/// Every check again, twice per store, through two tenants' prefixes.
mod isolated {
    #[allow(unused_imports)]
    use super::*;
    silo::conformance_tests!(isolated silo::open("memory:?max_value_bytes=68157440").unwrap());
}

/// `apply_once` through two tenants' prefixes on one store: keys and effects stay apart.
#[test]
fn apply_once_is_isolated_by_prefix() {
    let store = silo::open("memory:").unwrap();
    silo::conformance::run_isolated(&*store, silo::conformance::apply_once_applies_once);
    silo::conformance::run_isolated(
        &*store,
        silo::conformance::apply_once_fails_atomically_at_every_step,
    );
}

/// Every check on a store with a manual clock: leases and sweeps without sleeping.
mod clocked {
    silo::conformance_tests!(clocked {
        let clock = silo::Clock::manual_now();
        let options = silo::StoreOptions {
            max_value_bytes: 65 << 20,
            clock: clock.clone(),
            ..silo::StoreOptions::default()
        };
        (std::sync::Arc::new(silo::MemoryStorage::with_options(options)), clock)
    });
}
