//! The conformance kit on the `memory:` backend.

silo::conformance_tests!(silo::open("memory:?max_value_bytes=68157440").unwrap());

#[test]
fn apply_once_applies_once() {
    let store = silo::open("memory:?max_value_bytes=68157440").unwrap();
    silo::conformance::apply_once_applies_once(&*store);
}

#[test]
fn gc_prefix_sweeps_only_its_prefix() {
    let store = silo::open("memory:?max_value_bytes=68157440").unwrap();
    silo::conformance::gc_prefix_sweeps_only_its_prefix(&*store);
}

mod core_only {
    silo::core_conformance_tests!(silo::open("memory:").unwrap());
}
