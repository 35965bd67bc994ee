"""x86 (AMD SVM) sub-reasons of a real capture (``tests/data/traces/x86-6.1-svm-subreasons.trace``,
see the traces README): kvmexit's offline report ``--sub`` against the known work of the guest
that made them, and every sub-reason line decoded."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from kvmexit.model import build_report
from kvmexit.reasons import label
from kvmexit.reasons.subreasons import sub_label
from kvmexit.sources.trace import read_trace
from kvmexit.sources.trace import subdecode as sd

TRACE = Path(__file__).resolve().parent.parent / "data" / "traces" / "x86-6.1-svm-subreasons.trace"
LINE = re.compile(rb"^\s*.*?-(\d+)\s+\[\d+\]\s+\S+\s+[\d.]+:\s+(kvm_\w+):\s(.*)$")

#: e2evmm_x86's E2EVMM lines of that run (OUT:MMIO:CPUID:HLT:MSR 23:11:7:5:13 and 5:3:17:3:29).
GUEST = {
    148: dict(out=23, mmio=11, cpuid=7, hlt=5, msr=13),
    149: dict(out=5, mmio=3, cpuid=17, hlt=3, msr=29),
}


@pytest.fixture(scope="module")
def rows():
    report = build_report(read_trace(str(TRACE)).snapshot, label, by_sub=True, sub_label=sub_label)
    out = {tid: Counter() for tid in GUEST}
    for r in report.rows:
        assert r.tid in GUEST, "a row of a thread the VMM did not run: %r" % r.tid
        out[r.tid][r.reason, r.sub] += r.count
    return out


@pytest.mark.parametrize("tid", sorted(GUEST))
def test_sub_reasons_equal_the_guest_code(rows, tid):
    """Every exit the guest code made, under its port, MSR and direction, leaf, MMIO address; the
    code page's first fetch a nested page fault on memory; HLT and the host's interrupts have none."""
    g = GUEST[tid]
    assert rows[tid] == Counter(
        {
            ("io", "port 0x510 write"): g["out"],
            ("io", "port 0x511 write"): 1,
            ("msr", "IA32_UCODE_REV read"): g["msr"],
            ("msr", "IA32_UCODE_REV write"): g["msr"],
            ("cpuid", "leaf 0x0"): g["cpuid"],
            ("npf", "mmio-vmm 0xe0000"): g["mmio"],
            ("npf", "memory"): 1,
            ("hlt", "-"): g["hlt"],
            # kicks that landed while the guest ran (their number varies by run: this capture's)
            ("interrupt", "-"): {148: 2, 149: 1}[tid],
        }
    )


def test_every_sub_reason_line_decodes():
    seen: Counter = Counter()
    for raw in TRACE.read_bytes().splitlines():
        m = LINE.match(raw)
        if m and m.group(2) in sd.SUB_EVENTS:
            assert sd.decode_sub(m.group(2), m.group(3)) is not None, raw
            seen[m.group(2)] += 1
    assert set(seen) == {b"kvm_pio", b"kvm_msr", b"kvm_cpuid", b"kvm_mmio", b"kvm_page_fault", b"kvm_userspace_exit"}
