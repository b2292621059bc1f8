#!/usr/bin/env bash
# Runs every test: the silo workspace, then the interop suite against the `vgi` crate
# (compat/, a workspace of its own).
set -euo pipefail
cd "$(dirname "$0")"
cargo test --workspace
cargo test --manifest-path compat/Cargo.toml
