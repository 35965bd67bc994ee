#!/usr/bin/env bash
# The whole test suite: set-up, lint, format, types, Python 3.7 compatibility, the emulated arm64
# host's images, the offline tests under a real Python 3.7, then pytest (unit, fixture, in-kernel
# BPF, CLI, and arm64 KVM tests).
# In CI (CI=true) tests that need root, BPF or the emulated arm64 host fail instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
py=.venv/bin/python
echo "== ruff"
$py -m ruff check src tests bench
$py -m ruff format --check src tests bench
echo "== mypy"
$py -m mypy
echo "== vermin (Python 3.7)"
.venv/bin/vermin -q -t=3.7- --no-tips --violations --eval-annotations src/kvmexit
echo "== arm64 harness: host packages and cached images"
bash tests/arm64/harness.sh deps
bash tests/arm64/harness.sh build
if [ "${CI:-}" = true ]; then
    export KVMEXIT_REQUIRE_BPF=1 KVMEXIT_REQUIRE_ARM64=1 KVMEXIT_REQUIRE_HTML=1
fi
echo "== pytest under Python 3.7 (offline tests)"
scripts/py37.sh
echo "== pytest"
$py -m pytest "$@"
