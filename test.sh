#!/usr/bin/env bash
# Runs every test: the silo workspace, then the interop suite against the `vgi` crate
# (compat/, a workspace of its own). Ends with one line totalling every test binary.
set -euo pipefail
cd "$(dirname "$0")"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --workspace 2>&1 | tee -a "$log"
cargo test --manifest-path compat/Cargo.toml 2>&1 | tee -a "$log"
awk '/^ *Running / { pg = ($0 ~ /postgres/) }
     /SKIPPED: PostgreSQL/ { skipped = 1 }
     /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) { p += $(i-1); if (pg) q += $(i-1) } if ($(i) ~ /^failed/) f += $(i-1) } }
     END { printf "all tests: %d passed, %d failed; %d of them against PostgreSQL%s\n", p, f, q, skipped ? " (PostgreSQL tests SKIPPED: not installed)" : "" }' "$log"
