//! The conformance kit on the `memory:` backend.

silo::conformance_tests!(silo::open("memory:?max_value_bytes=68157440").unwrap());
