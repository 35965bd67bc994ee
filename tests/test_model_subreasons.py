"""Rows split by sub-reason: the parts add up to their reason's row, and the views show them."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmexit.model import ExitKey, ExitStats, Snapshot, SubKey, ThreadInfo, build_report, delta, hist_slot, merge_all
from kvmexit.reasons import label, subreasons
from kvmexit.reasons.subreasons import sub_label
from kvmexit.views import format_csv, format_table, report_document
from test_model import HIST_SLOTS

SCHEMA = json.loads((Path(__file__).resolve().parents[1] / "src/kvmexit/schema/report-v2.json").read_text())
SOURCE = {"kind": "live", "arch": "arm64", "layout": "arm64", "kernel": "6.1.0"}

TRAP = 2
WFX, HVC64, SYS64, DABT = 0x01, 0x16, 0x18, 0x24
ESR_SGI1R_WRITE = (0x18 << 26) | (3 << 20) | (5 << 17) | (12 << 10) | (11 << 1)


def acc(times, unfinished=0, open_=0) -> ExitStats:
    """The statistics of pairs of these times, as the kernel keeps them."""
    h = [0] * HIST_SLOTS
    for t in times:
        h[hist_slot(t)] += 1
    sq = sum(t * t for t in times)
    return ExitStats(
        pairs=len(times),
        unfinished=unfinished,
        open=open_,
        total_ns=sum(times),
        min_ns=min(times) if times else None,
        max_ns=max(times) if times else None,
        sumsq=(sq & (2**64 - 1), sq >> 64),
        hist=tuple(h),
    )


def snapshot_of(exits, tgid=100, tid=101) -> Snapshot:
    """exits: [(detail, sub, ns)] of one thread, all TRAP exits."""
    rows, subs = {}, {}
    for detail, sub, ns in exits:
        rows.setdefault(ExitKey(tgid, tid, TRAP, detail), []).append(ns)
        if sub:
            subs.setdefault(SubKey(tgid, tid, TRAP, detail, sub), []).append(ns)
    return Snapshot(
        "arm64",
        {k: acc(v) for k, v in rows.items()},
        threads={tid: ThreadInfo("CPU 0/KVM", "vm1", 0)},
        subs={k: acc(v) for k, v in subs.items()},
        subs_known=True,
    )


HVC_ON = subreasons.hvc_sub(0xC4000003)
HVC_VER = subreasons.hvc_sub(0x84000000)
SNAP = snapshot_of(
    [(WFX, subreasons.WFI, 3000)] * 4
    + [(WFX, subreasons.WFE, 900)]
    + [(HVC64, HVC_ON, 50), (HVC64, HVC_ON, 70), (HVC64, HVC_VER, 20), (HVC64, 0, 10)]
    + [(SYS64, subreasons.sys64_sub(ESR_SGI1R_WRITE), 40)] * 3
    + [(DABT, subreasons.abort_sub(subreasons.ABORT_USER_MMIO, 0x9000000), 400)] * 2
    + [(DABT, subreasons.abort_sub(subreasons.ABORT_MEMORY), 700)]
)


def report(snap=SNAP, **kw):
    return build_report(snap, label, sub_label=sub_label, **kw)


def test_rows_split_by_sub_reason_with_their_names():
    rows = {(r.reason, r.sub): (r.count, r.stats.total_ns) for r in report(by_sub=True).rows}
    assert rows == {
        ("WFx", "WFI"): (4, 12000),
        ("WFx", "WFE"): (1, 900),
        ("HVC64", "PSCI_CPU_ON64"): (2, 120),
        ("HVC64", "PSCI_VERSION"): (1, 20),
        ("HVC64", "-"): (1, 10),  # the HVC exit without an event
        ("SYS64", "ICC_SGI1R_EL1 write"): (3, 120),
        ("DABT_LOW", "mmio-vmm 0x9000000"): (2, 800),
        ("DABT_LOW", "memory"): (1, 700),
    }


def test_without_the_split_the_tables_are_unchanged():
    plain = report()
    assert not plain.by_sub and all(r.sub is None for r in plain.rows)
    assert "SUB" not in format_table(plain).splitlines()[0]
    whole = build_report(Snapshot("arm64", SNAP.stats, threads=SNAP.threads), label)
    assert [(r.reason, r.count, r.stats) for r in plain.rows] == [(r.reason, r.count, r.stats) for r in whole.rows]
    assert plain.totals == report(by_sub=True).totals


def test_the_rest_of_a_row_has_min_and_max_only_where_they_can_be_told():
    rows = {r.sub: r for r in report(by_sub=True, reasons=["HVC64"]).rows}
    rest = rows["-"]
    assert (rest.stats.pairs, rest.stats.min_ns, rest.stats.max_ns) == (1, 10, None)  # 10 < every sub's min


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([WFX, HVC64]), st.sampled_from([0, 1, 2]), st.integers(1, 10**7)),
        min_size=1,
        max_size=40,
    )
)
def test_parts_add_up_to_the_reason_row_exactly(exits):
    snap = snapshot_of(
        [(d, {0: 0, 1: subreasons.WFI, 2: subreasons.WFE}[s] if d == WFX else s << 63, ns) for d, s, ns in exits]
    )
    split = report(snap, by_sub=True)
    for key, whole in snap.stats.items():
        name = label("arm64", key.code, key.detail)
        parts = [r.stats for r in split.rows if r.reason == name]
        merged = merge_all(parts)
        assert (merged.pairs, merged.total_ns, merged.sumsq, merged.hist) == (
            whole.pairs,
            whole.total_ns,
            whole.sumsq,
            whole.hist,
        )
        assert (merged.min_ns, merged.max_ns) == (whole.min_ns, whole.max_ns)  # exact from the parts
        for p in parts:  # a known MIN/MAX is a real one of that part
            assert p.min_ns is None or p.min_ns >= whole.min_ns
            assert p.max_ns is None or p.max_ns <= whole.max_ns


def test_by_sub_grouping_folds_threads_and_keeps_sub_reasons():
    two = Snapshot(
        "arm64",
        {**SNAP.stats, **snapshot_of([(WFX, subreasons.WFI, 1000)], tid=102).stats},
        threads=SNAP.threads,
        subs={**SNAP.subs, **snapshot_of([(WFX, subreasons.WFI, 1000)], tid=102).subs},
        subs_known=True,
    )
    rows = {(r.reason, r.sub): r.count for r in report(two, group_by="sub").rows}
    assert rows[("WFx", "WFI")] == 5 and ("WFx", "-") not in rows


def test_groupings_without_reason_cannot_be_split():
    for g in ("vcpu", "vm"):
        with pytest.raises(ValueError):
            report(group_by=g, by_sub=True)


def test_interval_deltas_of_sub_reasons_add_up():
    first = snapshot_of([(WFX, subreasons.WFI, 100)] * 2)
    second = snapshot_of([(WFX, subreasons.WFI, 100)] * 5 + [(WFX, subreasons.WFE, 50)])
    d = delta(second, first)
    assert {k.sub: s.pairs for k, s in d.subs.items()} == {subreasons.WFI: 3, subreasons.WFE: 1}
    assert d.subs_known


def test_text_json_and_csv_show_the_sub_reason():
    rep = report(by_sub=True, sort="reason")
    table = format_table(rep).splitlines()
    assert table[0].split()[:6] == ["TGID", "TID", "VM", "VCPU", "REASON", "SUB"]
    assert any("ICC_SGI1R_EL1 write" in line and "SYS64" in line for line in table)
    doc = report_document(rep, SOURCE, None)
    jsonschema.validate(json.loads(json.dumps(doc)), SCHEMA)
    assert doc["by_sub"] is True
    by = {(r["reason"], r["sub"]): r["sub_value"] for r in doc["rows"]}
    assert by[("HVC64", "PSCI_CPU_ON64")] == HVC_ON and by[("HVC64", "-")] == 0
    csv_lines = format_csv(rep, time="t").splitlines()
    assert csv_lines[0].split(",")[-1] == "sub"
    assert any(",WFx," in line and line.endswith(",WFE") for line in csv_lines[1:])


def test_saved_v2_report_split_by_sub_reads_back_as_its_reason_rows():
    from kvmexit.sources.saved import parse_report

    split = report_document(report(by_sub=True), SOURCE, None)
    plain = report_document(report(), SOURCE, None)
    a = parse_report(json.dumps(split).encode())
    b = parse_report(json.dumps(plain).encode())
    assert a.snapshot is not None and b.snapshot is not None
    assert a.snapshot.stats == b.snapshot.stats


def test_unknown_sub_reasons_are_numbers():
    snap = snapshot_of([(HVC64, (1 << 63) | 0x12345678, 10), (SYS64, (1 << 32) | 0x3FFC1F, 10), (WFX, 7, 10)])
    names = {r.sub for r in report(snap, by_sub=True).rows}
    assert names == {"FN_0x12345678", "S3_7_C15_C15_7 read", "SUB_0x7"}  # ISS direction 1: read


def test_a_full_sub_reason_map_is_said_in_the_closing_line():
    from dataclasses import replace

    from kvmexit.model import Health
    from kvmexit.views import format_health

    assert "sub-reason" not in format_health(report(by_sub=True))
    full = report(replace(SNAP, health=Health(sub_map_full=3)), by_sub=True)
    assert format_health(full).endswith("map full: 0 start, 0 stats, 3 sub-reason (in their reason's - row)")
