#!/bin/bash
# Emulated-arm64 KVM end-to-end test of kvmexit, in one command:
# installs host packages (apt), builds or reuses the cached arm64 guest images
# (/var/cache/kvmexit-arm64), boots the emulated host once to run every guest
# scenario against the working tree's src/kvmexit, and runs the pytest checks
# in tests/arm64 with KVMEXIT_REQUIRE_ARM64=1 (fail, never skip).
# Extra arguments go to pytest.  See tests/arm64/README.md.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
start=$(date +%s)
rc=0
bash "$here/../tests/arm64/harness.sh" all "$@" || rc=$?
echo "arm64-harness: finished in $(( $(date +%s) - start ))s (rc=$rc)" >&2
exit "$rc"
