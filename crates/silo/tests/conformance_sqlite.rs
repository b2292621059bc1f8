//! The conformance kit on the `sqlite:` backend, one fresh database file per check.

mod common;

silo::conformance_tests!(common::TempStore::sqlite("max_value_bytes=68157440"));
