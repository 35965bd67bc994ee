"""Offline ``report --sub`` on the real arm64 capture with the sub-reason events: per thread,
class and sub-reason, the rows' counts are the offline rule's (``test_trace_subevents_real``,
which holds that rule to the guest code), and they add up to the rows without ``--sub``."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

from kvmexit.model import build_report
from kvmexit.reasons import label
from kvmexit.reasons.subreasons import sub_label
from kvmexit.sources.trace import read_trace
from sources.test_trace_subevents_real import TRACE, _sub_counts

ROOT = Path(__file__).resolve().parents[2]


def test_report_rows_per_sub_reason_equal_the_rule_per_exit():
    snap = read_trace(str(TRACE)).snapshot
    assert snap.subs_known
    report = build_report(snap, label, by_sub=True, sub_label=sub_label)
    got: dict = {}
    for r in report.rows:
        got.setdefault(r.tid, Counter())[r.reason, r.sub] += r.count
    want = _sub_counts()
    assert set(got) == set(want)
    for tid in want:
        assert got[tid] == want[tid], tid
    plain = build_report(snap, label)
    assert report.totals == plain.totals
    for row in plain.rows:
        parts = [r for r in report.rows if (r.tid, r.reason) == (row.tid, row.reason)]
        assert sum(p.stats.pairs for p in parts) == row.stats.pairs
        assert sum(p.stats.total_ns for p in parts) == row.stats.total_ns


def test_report_command_shows_the_sub_column():
    p = subprocess.run(
        [sys.executable, "-m", "kvmexit", "report", str(TRACE), "--by", "sub", "--reason", "HVC64"],
        capture_output=True,
        text=True,
        cwd=str(ROOT / "src"),
    )
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split()[:3] == ["REASON", "SUB", "COUNT"]
    assert any(line.split()[:2] == ["HVC64", "PSCI_VERSION"] for line in lines[1:])


def test_a_trace_without_sub_reason_events_refuses_sub_in_one_line():
    from cli_checks import one_error_line

    example = ROOT / "src" / "kvmexit" / "data" / "example-arm64.trace.gz"
    p = subprocess.run(
        [sys.executable, "-m", "kvmexit", "report", str(example), "--sub"],
        capture_output=True,
        text=True,
        cwd=str(ROOT / "src"),
    )
    assert "--sub: this source has no sub-reasons" in one_error_line(p)
