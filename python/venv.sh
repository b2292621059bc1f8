#!/usr/bin/env bash
# Makes python/.venv: Python 3.13 with vgi-python (python/requirements.txt), for the tests that
# drive `silo serve` with vgi-python's own clients. Idempotent: an up-to-date venv is kept.
# Prints the venv's python on its last line.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
stamp="$venv/.requirements"
find_python() {
    for candidate in "${SILO_PYTHON313:-}" python3.13 "$HOME/.pyenv/versions/3.13"*/bin/python3.13 \
        /usr/local/bin/python3.13 /usr/bin/python3.13; do
        [ -n "$candidate" ] || continue
        if command -v "$candidate" >/dev/null 2>&1 \
            && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then
            command -v "$candidate"
            return 0
        fi
    done
    if command -v pyenv >/dev/null 2>&1; then
        pyenv install -s 3.13 >&2 && pyenv root >/dev/null && \
            ls -d "$(pyenv root)"/versions/3.13*/bin/python3.13 | tail -n 1 && return 0
    fi
    return 1
}
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$stamp" "$here/requirements.txt"; then
    echo "$venv/bin/python"
    exit 0
fi
python=$(find_python) || {
    echo "python/venv.sh: no Python 3.13 found (vgi-python needs >= 3.13); install one (pyenv install 3.13) or set SILO_PYTHON313" >&2
    exit 1
}
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt" >&2
cp "$here/requirements.txt" "$stamp"
echo "$venv/bin/python"
