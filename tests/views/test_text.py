from __future__ import annotations

from kvmexit.model import build_report
from kvmexit.reasons import label
from kvmexit.views import format_duration, format_health, format_hist, format_table
from test_model import SNAP, snapshot


def test_durations_are_short_and_exact_enough():
    assert format_duration(None) == "-"
    assert format_duration(812) == "812ns"
    assert format_duration(12_345) == "12.3us"
    assert format_duration(4_560_000) == "4.56ms"
    assert format_duration(250_000_000) == "250ms"
    assert format_duration(1_234_000_000) == "1.23s"
    assert format_duration(3_600e9) == "3600s"


def test_thread_table_has_the_documented_columns():
    text = format_table(build_report(SNAP, label, "thread"))
    lines = text.splitlines()
    assert lines[0].split() == [
        "TGID", "TID", "VM", "VCPU", "REASON", "COUNT", "AVG", "MIN", "MAX", "P99", "HALT%", "EXIT%"
    ]  # fmt: skip
    # no guest time in SNAP: its exits took all of the time that was measured
    assert lines[1].split() == [
        "100",
        "101",
        "vm-a",
        "0",
        "WFx",
        "10",
        "100ns",
        "50ns",
        "200ns",
        "200ns",
        "90%",
        "100.0%",
    ]
    assert len(lines) == 5
    # no bytes reprs, ever
    assert "b'" not in text


def test_reason_table_drops_thread_columns():
    lines = format_table(build_report(SNAP, label, "reason")).splitlines()
    assert lines[0].split()[0] == "REASON"
    assert "TID" not in lines[0]


def test_row_without_pairs_shows_dashes():
    from kvmexit.model import ExitKey, ExitStats

    rep = build_report(snapshot({ExitKey(1, 2, 0, 0): ExitStats(open=2)}), label)
    assert format_table(rep).splitlines()[1].split()[-7:] == ["2", "-", "-", "-", "-", "-", "-"]


def test_histogram_covers_used_buckets_only():
    row = build_report(SNAP, label, "thread").rows[0]
    text = format_hist(row)
    lines = text.splitlines()
    assert lines[0].startswith("100 101 vm-a WFx: 10 pairs, stddev ")
    assert [ln.split()[0] for ln in lines[2:]] == ["48", "56", "64", "80", "96", "112", "128", "160", "192"]
    assert all("|" in ln for ln in lines[1:])


def test_health_line_accounts_for_everything():
    rep = build_report(SNAP, label)
    assert format_health(rep) == (
        "kvmexit: 24 exits: 21 paired, 1 open, 2 unfinished, 0 abandoned by exited threads; 0 unpaired entries; "
        "map full: 0 start, 0 stats"
    )


def test_health_line_says_why_nothing_was_traced():
    rep = build_report(snapshot({}), label)
    assert format_health(rep, "no VMs are running") == "kvmexit: no KVM exits traced (no VMs are running)"


def test_halt_share_is_unknown_when_halts_were_not_traced():
    from dataclasses import replace

    known = format_table(build_report(SNAP, label)).splitlines()[1].split()[-2]
    unknown = format_table(build_report(replace(SNAP, halt_known=False), label)).splitlines()[1].split()[-2]
    assert (known, unknown) == ("90%", "-")


def test_exit_share_and_split_columns():
    """EXIT% = exit time / (exit + guest time); with the split measured, each part's share of the
    exit time, the kernel's being what the others leave (here 1000 - 500 - 200 - 100 - 50 = 150)."""
    from kvmexit.model import ExitKey, ExitStats

    st = ExitStats(pairs=2, total_ns=1000, min_ns=400, max_ns=600, halt_ns=500, guest_ns=3000, vmm_ns=200)
    st = st._replace(preempt_ns=100, blocked_ns=50)
    snap = snapshot({ExitKey(1, 101, 2, 0x24): st})
    snap = snap.__class__(**{**snap.__dict__, "unknown": frozenset()})  # everything measured
    lines = format_table(build_report(snap, label)).splitlines()
    assert lines[0].split()[-6:] == ["HALT%", "KERN%", "VMM%", "PREEMPT%", "BLOCKED%", "EXIT%"]
    assert lines[1].split()[-6:] == ["50%", "15%", "20%", "10%", "5%", "25.0%"]
    # without the split (the default live run), its columns are not shown; EXIT% still is
    unsplit = snapshot({ExitKey(1, 101, 2, 0x24): st})
    unsplit = unsplit.__class__(**{**unsplit.__dict__, "unknown": frozenset(("vmm_ns", "preempt_ns", "blocked_ns"))})
    lines = format_table(build_report(unsplit, label)).splitlines()
    assert lines[0].split()[-2:] == ["HALT%", "EXIT%"] and lines[1].split()[-2:] == ["50%", "25.0%"]
    # a part whose event was missing is unknown: shown as "-", and so is the kernel's part
    partial = unsplit.__class__(**{**unsplit.__dict__, "unknown": frozenset(("vmm_ns",))})
    lines = format_table(build_report(partial, label)).splitlines()
    assert lines[0].split()[-4:] == ["HALT%", "PREEMPT%", "BLOCKED%", "EXIT%"]
    # guest time not measured (a trace without it): no EXIT%
    blind = unsplit.__class__(
        **{**unsplit.__dict__, "unknown": frozenset(("guest_ns", "vmm_ns", "preempt_ns", "blocked_ns"))}
    )
    assert format_table(build_report(blind, label)).splitlines()[0].split()[-1] == "HALT%"
