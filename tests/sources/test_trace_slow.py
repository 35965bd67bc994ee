"""The slow-exit log from a trace (``report --slower-than``), on real captures: exactly the pairs
longer than the threshold, each with its thread, reason, duration, halted time and PC as the
trace's own lines give them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Dict, List, Tuple

import jsonschema
import pytest

from kvmexit.model import SlowExit, is_slower
from kvmexit.reasons import label
from kvmexit.sources.trace import read_trace
from kvmexit.sources.trace.slow import SlowLog
from kvmexit.views.slow import slow_document

ROOT = Path(__file__).resolve().parent.parent.parent
TRACES = ROOT / "tests" / "data" / "traces"
SLOW_SCHEMA = json.loads((ROOT / "src" / "kvmexit" / "schema" / "slow-v2.json").read_text())
REAL = TRACES / "arm64-6.1-e2e.trace"  # a real capture (tests/data/traces/README.md)

_LINE = re.compile(r"-(\d+)\s+\[\d+\] \S+\s+(\d+)\.(\d{6}): (kvm_exit|kvm_entry): (.*)$")


def naive_pairs(path: Path) -> List[Tuple[int, int, int, int]]:
    """(tid, exit ns, duration ns, pc) of every exit followed by an entry on its thread, read with
    a regex of the test's own: the truth the log is held to."""
    open_: Dict[int, Tuple[int, int]] = {}
    out = []
    for line in path.read_text().splitlines():
        m = _LINE.search(line)
        if not m:
            continue
        tid, ts = int(m.group(1)), int(m.group(2)) * 10**9 + int(m.group(3)) * 1000
        if m.group(4) == "kvm_exit":
            open_[tid] = (ts, int(m.group(5).rsplit("PC: ", 1)[1], 16))
        elif tid in open_:
            start, pc = open_.pop(tid)
            out.append((tid, start, ts - start, pc))
    return out


def slow_list(path: Path, threshold_ns: int, **options) -> Tuple[List[SlowExit], object]:
    got: List[SlowExit] = []
    result = read_trace(str(path), slow=SlowLog(threshold_ns, lambda arch, e: got.append(e)), **options)
    return got, result


@pytest.mark.parametrize("threshold_ns", [0, 50_000, 1_000_000, 2_600_000])
def test_exactly_the_pairs_above_the_threshold_in_trace_order(threshold_ns):
    got, _ = slow_list(REAL, threshold_ns)
    truth = [p for p in naive_pairs(REAL) if is_slower(p[2], threshold_ns)]
    assert [(e.tid, e.time_ns, e.duration_ns, e.pc) for e in got] == truth
    assert len(truth) > 0


def test_the_threshold_is_strict():
    longest = max(p[2] for p in naive_pairs(REAL))
    assert len(slow_list(REAL, longest)[0]) == 0
    (e,) = slow_list(REAL, longest - 1)[0]
    assert e.duration_ns == longest


def test_each_slow_exit_carries_its_reason_halt_and_names():
    got, result = slow_list(REAL, 2_000_000)
    snap = result.snapshot  # type: ignore[attr-defined]
    by_reason: Dict[str, int] = {}
    for e in got:
        by_reason[label("arm64", e.code, e.detail)] = by_reason.get(label("arm64", e.code, e.detail), 0) + 1
        assert e.thread.vcpu in (0, 1) and e.thread.comm.startswith("CPU ")
        assert e.tgid is None or e.tgid > 0
        if label("arm64", e.code, e.detail) == "WFx":
            assert e.halt_ns is not None and 0 < e.halt_ns < e.duration_ns  # a halted WFI
            assert (e.esr >> 26, e.esr_whole) == (0x01, False)  # the EC; no ISS in this trace
    # Every WFx pair above 2 ms is there: the report's own WFx rows have at least that many pairs.
    wfx_pairs = sum(s.pairs for k, s in snap.stats.items() if label("arm64", k.code, k.detail) == "WFx")
    assert 0 < by_reason["WFx"] <= wfx_pairs


def test_the_log_changes_nothing_in_the_report():
    _, with_log = slow_list(REAL, 0)
    without = read_trace(str(REAL))
    assert with_log.snapshot == without.snapshot  # type: ignore[attr-defined]


def test_x86_rip_and_exit_qualification_from_both_print_formats():
    for name in ("x86-vmx.synthetic.trace", "x86-vmx-old.synthetic.trace", "x86-vmx.synthetic.perf"):
        got, _ = slow_list(TRACES / name, 0)
        assert got, name
        for e in got:
            assert e.pc is not None and e.pc >> 32 == 0xFFFFFFFF, name
            assert e.esr == 0 and e.esr_whole, name
            doc = slow_document("x86", e)
            jsonschema.validate(doc, SLOW_SCHEMA)
            assert doc["exit_qualification"] == 0 and "esr" not in doc


def test_sub_reason_and_whole_esr_from_the_events_inside_the_exit():
    """The real sub-reason capture: each SYS64 exit's ESR comes from its kvm_handle_sys_reg (EC
    0x18 with the ISS) and its sub-reason is the one the report's sub-reason rows count."""
    from kvmexit.reasons.subreasons import sys64_sub
    from kvmexit.views.slow import sub_label

    got, _ = slow_list(TRACES / "arm64-6.1-subreasons.trace", 0)
    sys64 = [e for e in got if label("arm64", e.code, e.detail) == "SYS64"]
    assert len(sys64) > 20
    for e in sys64:
        assert e.esr_whole and e.esr >> 26 == 0x18 and e.sub == sys64_sub(e.esr)
    labels = {sub_label("arm64", e.code, e.detail, e.sub) for e in sys64}
    assert {"OSLAR_EL1 write", "OSLSR_EL1 read"} <= labels
    aborts = [e for e in got if label("arm64", e.code, e.detail) == "DABT_LOW"]
    assert aborts and all(e.esr_whole and e.esr >> 26 == 0x24 and e.sub for e in aborts)
