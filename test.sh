#!/usr/bin/env bash
# Runs every test: the silo workspace (with vgi-python's own clients driving `silo serve`, from
# the venv python/venv.sh makes), then the interop suite against the `vgi` crate (compat/, a
# workspace of its own). Ends with one line totalling every test binary.
set -euo pipefail
cd "$(dirname "$0")"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Python 3.13 + vgi-python for python_clients.rs; without it those tests say SKIPPED (or fail,
# with SILO_REQUIRE_PYTHON=1).
if python=$(python/venv.sh | tail -n 1); then
    export SILO_PYTHON="$python"
else
    echo "test.sh: python/venv.sh failed: the vgi-python tests will be skipped" >&2
fi
# vgi-python 0.31.3 (the release whose worker protocol the `vgi` crate 0.22 accepts) for the
# end-to-end test of the example VGI worker in compat/ (compat/tests/worker_e2e.rs).
if python=$(python/venv.sh vgi031 | tail -n 1); then
    export SILO_PYTHON_VGI031="$python"
else
    echo "test.sh: python/venv.sh vgi031 failed: the example worker's end-to-end test will be skipped" >&2
fi
# moto's S3 server for the replication test against an S3-compatible target; without it that
# test says SKIPPED (or fails, with SILO_REQUIRE_S3=1).
if moto=$(python/s3-venv.sh | tail -n 1); then
    export SILO_MOTO_SERVER="$moto"
else
    echo "test.sh: python/s3-venv.sh failed: the S3 replication test will be skipped" >&2
fi
cargo test --workspace 2>&1 | tee -a "$log"
cargo test --manifest-path compat/Cargo.toml 2>&1 | tee -a "$log"
awk '/^ *Running / { pg = ($0 ~ /postgres/); py = ($0 ~ /python_clients|worker_e2e/) }
     /SKIPPED: PostgreSQL/ { skipped = 1 }
     /SKIPPED: vgi-python/ { pyskipped = 1 }
     /SKIPPED: S3/ { s3skipped = 1 }
     /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) { p += $(i-1); if (pg) q += $(i-1); if (py) y += $(i-1) } if ($(i) ~ /^failed/) f += $(i-1) } }
     END { printf "all tests: %d passed, %d failed; %d of them against PostgreSQL%s; %d driving silo serve or the example worker with vgi-python%s%s\n", p, f, q, skipped ? " (PostgreSQL tests SKIPPED: not installed)" : "", y, pyskipped ? " (SKIPPED: no venv)" : "", s3skipped ? "; the S3 replication test SKIPPED (no moto)" : "" }' "$log"
