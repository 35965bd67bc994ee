"""The e2e judges' own helpers (tests/arm64/e2e_results.py) on a real capture, without an emulated host."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import e2e_results as er

TRACE = Path(__file__).resolve().parents[1] / "data" / "traces" / "arm64-6.1-subreasons.trace"
# tests/data/traces/README.md: vCPU 0 (tid 136) stored to 29 fresh pages, vCPU 1 (tid 137) to 31.
SPEC = {136: {"vcpu": 0, "pages": 29, "page_size": 4096}, 137: {"vcpu": 1, "pages": 31, "page_size": 4096}}


def _faults():
    sub = er.SubFtrace(TRACE.read_text())
    return {tid: sub.memory_fault_ipas(tid) for tid in SPEC}, sub


def test_memory_faults_of_the_capture_are_its_fresh_pages_once_each():
    faults, sub = _faults()
    for tid, v in SPEC.items():
        assert sum(faults[tid].values()) == sub.abort_kinds(tid)["memory"] == v["pages"]
        assert not er.arm64_memory_fault_problems(faults[tid], v)


def test_a_retried_fault_passes_a_missing_or_foreign_one_does_not():
    faults, _sub = _faults()
    ipas, v = faults[136], SPEC[136]
    retried = ipas + Counter({0x50003000: 1})
    assert not er.arm64_memory_fault_problems(retried, v)
    missing = ["no fault on 1 of 30 fresh pages, first 0x5001d000"]
    assert er.arm64_memory_fault_problems(ipas, dict(v, pages=30)) == missing
    foreign = ipas + Counter({0x51000000: 1})
    assert er.arm64_memory_fault_problems(foreign, v) == ["memory faults elsewhere: {'0x51000000': 1}"]
