#!/usr/bin/env bash
# The whole test suite: set-up, lint, format, types, Python 3.7 compatibility, then pytest.
# In CI (CI=true) tests that need root/BPF/the arm64 harness fail instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
py=.venv/bin/python
echo "== ruff"; $py -m ruff check src tests bench && $py -m ruff format --check src tests bench
echo "== mypy"; $py -m mypy
echo "== vermin (Python 3.7)"; .venv/bin/vermin -q -t=3.7- --no-tips --violations --eval-annotations --backport dataclasses src/kvmexit
if [ "${CI:-}" = true ]; then export KVMEXIT_REQUIRE_BPF=1; fi
echo "== pytest"; $py -m pytest "$@"
