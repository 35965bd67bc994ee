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
    assert lines[0].split() == ["TGID", "TID", "VM", "VCPU", "REASON", "COUNT", "AVG", "MIN", "MAX", "P99", "HALT%"]
    assert lines[1].split() == ["100", "101", "vm-a", "0", "WFx", "10", "100ns", "50ns", "200ns", "200ns", "90%"]
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
    assert format_table(rep).splitlines()[1].split()[-6:] == ["2", "-", "-", "-", "-", "-"]


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

    known = format_table(build_report(SNAP, label)).splitlines()[1].split()[-1]
    unknown = format_table(build_report(replace(SNAP, halt_known=False), label)).splitlines()[1].split()[-1]
    assert (known, unknown) == ("90%", "-")
