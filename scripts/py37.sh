#!/usr/bin/env bash
# Run the offline tests (no root, bcc or emulated host: -m "not bpf and not arm64") under a real
# Python 3.7, kvmexit's oldest supported Python, in .venv37 (pytest, hypothesis and jsonschema
# from PyPI at their last 3.7 releases, kvmexit editable). The interpreter: $KVMEXIT_PY37, else
# python3.7 on PATH, else pyenv's (this machine kind ships CPython 3.7.16 under ~/.pyenv; no
# registry these machines reach serves one: see README "Python 3.7").
# Without an interpreter it says so and exits 0, or 1 when CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."
is37() { "$1" -c 'import sys; assert sys.version_info[:2] == (3, 7)' 2>/dev/null; }
py37=${KVMEXIT_PY37:-}
if [ -z "$py37" ]; then
    # The first candidate that runs: pyenv's python3.7 shim is on PATH but fails without a pyenv
    # version selected, so it must not hide pyenv's own interpreter.
    for candidate in $(command -v python3.7 || true) \
        $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.7*/bin/python3.7 2>/dev/null | sort -V -r || true); do
        if is37 "$candidate"; then
            py37=$candidate
            break
        fi
    done
fi
if [ -z "$py37" ] || ! is37 "$py37"; then
    echo "py37: no Python 3.7 interpreter (set KVMEXIT_PY37)" >&2
    [ "${CI:-}" = true ] && exit 1
    exit 0
fi
if ! .venv37/bin/python -c 'import kvmexit, pytest, hypothesis, jsonschema' 2>/dev/null; then
    rm -rf .venv37
    "$py37" -m venv .venv37
    .venv37/bin/pip install -q --disable-pip-version-check pytest hypothesis jsonschema -e .
fi
.venv37/bin/python -c 'import sys; print("py37: " + sys.version.split()[0])'
# The skips of tests that need root, bcc, the emulated host or the doc generators (CI=true) are the
# main run's to turn into failures: this pass has none of those tools.
exec env -u CI -u KVMEXIT_REQUIRE_BPF -u KVMEXIT_REQUIRE_ARM64 -u KVMEXIT_REQUIRE_HTML \
    .venv37/bin/python -m pytest -q -p no:cacheprovider -m "not bpf and not arm64" tests "$@"
