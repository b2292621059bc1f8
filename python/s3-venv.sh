#!/usr/bin/env bash
# Makes python/.s3venv: moto's S3 server (python/s3-requirements.txt), a loopback S3-compatible
# server for tests. Idempotent: an up-to-date venv is kept. Progress goes to stderr; the last line
# printed is the venv's moto_server, to start as `moto_server -H 127.0.0.1 -p PORT`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.s3venv"
reqs="$here/s3-requirements.txt"
stamp="$venv/.requirements"
server="$venv/bin/moto_server"
# moto 5.2 needs Python >= 3.10.
find_python() {
    for candidate in "${SILO_S3_PYTHON:-}" python3 python3.13 python3.12 python3.11 python3.10 \
        "$HOME"/.pyenv/versions/3.1[0-9]*/bin/python3 /usr/local/bin/python3 /usr/bin/python3; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}
if [ -x "$server" ] && [ -f "$stamp" ] && cmp -s "$stamp" "$reqs" \
    && "$venv/bin/python" -c '' 2>/dev/null; then
    echo "$server"
    exit 0
fi
python=$(find_python) || {
    echo "python/s3-venv.sh: no Python >= 3.10 with venv/ensurepip found (moto needs >= 3.10); install one or set SILO_S3_PYTHON" >&2
    exit 1
}
echo "python/s3-venv.sh: making $venv with $python ($("$python" -V 2>&1))" >&2
rm -rf "$venv"
"$python" -m venv "$venv" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$reqs" >&2
cp "$reqs" "$stamp"
echo "$server"
