#!/usr/bin/env bash
# Makes a Python 3.13 venv with vgi-python, pinned. Idempotent: an up-to-date venv is kept.
# Prints the venv's python on its last line.
#   python/venv.sh          python/.venv from python/requirements.txt: vgi-python 0.47.0, whose
#                           remote storage client the tests of `silo serve --python` drive
#   python/venv.sh vgi031   python/.venv-vgi031 from python/requirements-vgi031.txt: vgi-python
#                           0.31.3, the newest whose worker protocol the `vgi` crate 0.22 accepts
#                           (the end-to-end test of the example VGI worker in compat/)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
case "${1:-}" in
    "") venv="$here/.venv"; reqs="$here/requirements.txt" ;;
    vgi031) venv="$here/.venv-vgi031"; reqs="$here/requirements-vgi031.txt" ;;
    *) echo "python/venv.sh: unknown flavour ${1:-} (none, or vgi031)" >&2; exit 2 ;;
esac
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
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$stamp" "$reqs"; then
    echo "$venv/bin/python"
    exit 0
fi
python=$(find_python) || {
    echo "python/venv.sh: no Python 3.13 found (vgi-python needs >= 3.13); install one (pyenv install 3.13) or set SILO_PYTHON313" >&2
    exit 1
}
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$reqs" >&2
cp "$reqs" "$stamp"
echo "$venv/bin/python"
