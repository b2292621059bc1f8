//! The conformance kit on the `fs:` backend: one fresh directory per check; again with tiny
//! segments and compaction thresholds, so seals and compactions happen inside every check;
//! through two tenants' prefixes; and on a manual clock.

mod common;

silo::conformance_tests!(common::TempStore::fs("max_value_bytes=68157440"));

#[test]
fn apply_once_applies_once() {
    let store = common::TempStore::fs("max_value_bytes=68157440");
    silo::conformance::apply_once_applies_once(&*store);
}

#[test]
fn apply_once_fails_atomically_at_every_step() {
    let store = common::TempStore::fs("");
    silo::conformance::apply_once_fails_atomically_at_every_step(&*store);
}

#[test]
fn gc_prefix_sweeps_only_its_prefix() {
    let store = common::TempStore::fs("max_value_bytes=68157440");
    silo::conformance::gc_prefix_sweeps_only_its_prefix(&*store);
}

/// Every check with 4 KiB segments and compaction from 16 KiB on: the index must come out
/// the same across seals, compactions and the reloads they cause.
mod compacting {
    silo::conformance_tests!(super::common::TempStore::fs(
        "max_value_bytes=68157440&segment_bytes=4096&compact_min_bytes=16384"
    ));

    #[test]
    fn apply_once_applies_once() {
        let store = super::common::TempStore::fs(
            "max_value_bytes=68157440&segment_bytes=4096&compact_min_bytes=16384",
        );
        silo::conformance::apply_once_applies_once(&*store);
    }
}

/// Every check again, twice per store, through two tenants' prefixes.
mod isolated {
    #[allow(unused_imports)]
    use super::*;
    silo::conformance_tests!(isolated super::common::TempStore::fs("max_value_bytes=68157440"));
}

/// Every check on a store with a manual clock: leases and sweeps without sleeping.
mod clocked {
    silo::conformance_tests!(clocked super::common::TempStore::fs_clocked());
}
