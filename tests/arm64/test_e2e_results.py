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


# tests/data/traces/README.md: one WFx exit whose sleep began 4.4 ms before its halt's start.
HALT_OVERLAP = TRACE.parent / "arm64-5.10-halt-overlap.trace"


def test_split_truth_clamps_the_parts_to_the_exit_time_as_documented():
    truth = er.SplitTruth(HALT_OVERLAP.read_text())
    duration, preempted, blocked = truth.per_exit[194, 265202176000]
    assert duration == truth.total_ns[194] == 46855000
    halt = 25537600
    assert preempted == 15958000  # after the halt: R+ at .232391 until .248349
    assert blocked == duration - halt - preempted == 5359400  # the sleep of 6216000, clamped
    assert (truth.preempt_ns[194], truth.blocked_ns[194]) == (preempted, blocked)


def test_probe_bounds_matching_equals_a_scan_of_every_pair():
    """The indexed lookup finds exactly the pairs a scan of every pair finds: for each pair's own
    stamps and for probe times around them (before, inside and after its bounds, other threads)."""
    bounds = er.ProbeBounds(TRACE.read_text())
    assert len(bounds.pairs) > 100
    probes = []
    for p in bounds.pairs:
        for shift in (-1, 0, 1, 500, 20_000, 3_000_000):
            probes.append((p.tid, p.reason, p.pc, p.exit_lo + shift, p.entry_lo - p.exit_lo))
        probes.append((p.tid ^ 1, p.reason, p.pc, p.exit_lo, p.entry_lo - p.exit_lo))
    found = 0
    for tid, reason, pc, exit_ns, duration in probes:
        scan = [p for p in bounds.pairs if p.holds(tid, reason, pc, exit_ns, exit_ns + duration)]
        got = bounds.matching(tid, reason, pc, exit_ns, duration)
        assert [id(p) for p in got] == [id(p) for p in scan], (tid, reason, pc, exit_ns, duration)
        found += len(got)
    assert found >= len(bounds.pairs)  # each pair's own stamps at least
