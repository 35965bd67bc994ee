"""Shared fixtures and the privileged-tier gate.

Tests that need root, bcc, kernel headers and the kvm tracepoints use ``bpf_env``. They skip
with the missing prerequisite as the reason, and fail instead when KVMEXIT_REQUIRE_BPF=1 (CI),
so a broken set-up can never pass as a skip.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

DATA = Path(__file__).resolve().parent / "data"


def missing_bpf_prerequisite() -> str:
    """Empty when real BPF can run here, else why not."""
    if os.geteuid() != 0:
        return "not root"
    try:
        from kvmexit.sources.live import check_headers, import_bcc

        import_bcc()
        check_headers()
    except Exception as e:
        return str(e)
    from kvmexit.layouts import TRACEFS_ROOTS

    if not any(os.path.isdir(os.path.join(r, "events", "kvm", "kvm_exit")) for r in TRACEFS_ROOTS):
        return "kvm tracepoints absent (no kvm module, or tracefs not mounted)"
    return ""


@pytest.fixture(scope="session")
def bpf_env() -> None:
    why = missing_bpf_prerequisite()
    if why:
        if os.environ.get("KVMEXIT_REQUIRE_BPF") == "1":
            pytest.fail("KVMEXIT_REQUIRE_BPF=1 but BPF tests cannot run: " + why)
        pytest.skip("needs root, bcc, kernel headers and kvm tracepoints: " + why)


@pytest.fixture
def data_dir() -> Path:
    return DATA
