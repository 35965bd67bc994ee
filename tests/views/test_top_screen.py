"""The top screen's state and lines, without curses or BPF (the tmux test drives the real one)."""

from __future__ import annotations

import dataclasses

from kvmexit.model import HIST_SLOTS, ExitKey, ExitStats, Snapshot, ThreadInfo
from kvmexit.reasons import label
from kvmexit.views.top import HELP, TopView

WFX, HVC = (2, 0x01), (2, 0x16)


def st(pairs: int, ns: int = 1000) -> ExitStats:
    hist = [0] * HIST_SLOTS
    hist[ns.bit_length()] = pairs
    return ExitStats(pairs=pairs, total_ns=pairs * ns, min_ns=ns, max_ns=ns, hist=tuple(hist))


def snap(t_ns: int, web_hvc: int, other_wfx: int) -> Snapshot:
    return Snapshot(
        "arm64",
        {
            ExitKey(10, 11, *HVC): st(web_hvc),
            ExitKey(10, 12, *WFX): st(2, 1_000_000),
            ExitKey(20, 21, *WFX): st(other_wfx),
        },
        threads={11: ThreadInfo("CPU 0/KVM", "web", 0), 12: ThreadInfo("CPU 1/KVM", "web", 1), 21: ThreadInfo("x")},
        time_ns=t_ns,
    )


def table(view: TopView):
    lines = [t for t, _ in view.lines(200, 30)]
    start = next(i for i, t in enumerate(lines) if t.split() and t.split()[0] in ("VM", "REASON"))
    return [t.split() for t in lines[start + 1 :] if t.strip() and t != HELP]


def test_rates_shares_and_totals():
    v = TopView(label)
    v.update(snap(0, 10, 5))
    v.update(snap(2_000_000_000, 30, 5))  # 20 HVC64 exits of web in 2 s; the other VM idle
    rows = table(v)
    assert [(r[0], r[2], r[3], r[-1]) for r in rows] == [("web", "10.0", "100.0", "32"), ("-", "0.0", "0.0", "5")]
    v.key("c")  # totals since start
    rows = table(v)
    assert [(r[0], r[3], r[-1]) for r in rows] == [("web", "86.5", "32"), ("-", "13.5", "5")]


def test_drill_into_a_vm_then_a_vcpu_and_back():
    v = TopView(label)
    v.update(snap(0, 10, 5))
    v.key("c")
    v.key("\n")
    assert [(r[1], r[-1]) for r in table(v)] == [("0", "10"), ("1", "2")]
    v.key("KEY_DOWN")
    v.key("\n")
    assert [(r[0], r[-1]) for r in table(v)] == [("WFx", "2")]
    assert any("view: all > web > vCPU 1 (tid 12)" in t for t, _ in v.lines(200, 30))
    v.key("\n")  # nothing below reasons
    v.key("KEY_BACKSPACE")
    v.key("KEY_BACKSPACE")
    v.key("KEY_BACKSPACE")  # already at the top
    assert [r[-1] for r in table(v)] == ["12", "5"]


def test_filters_typed_at_a_prompt_and_cleared():
    v = TopView(label)
    v.update(snap(0, 10, 5))
    v.key("c")
    for k in "rwfx\n":
        v.key(k)
    assert [(r[0], r[-1]) for r in table(v)] == [("-", "5"), ("web", "2")]
    for k in "fweb\n":
        v.key(k)
    assert [(r[0], r[-1]) for r in table(v)] == [("web", "2")]
    v.key("x")
    assert len(table(v)) == 2


def test_pause_keeps_the_numbers_and_sort_and_group_keys():
    v = TopView(label)
    v.update(snap(0, 10, 5))
    v.key("c")
    v.key(" ")
    v.update(snap(1, 99, 5))
    assert table(v)[0][-1] == "12" and "[PAUSED]" in v.lines(200, 30)[0][0]
    v.key(" ")
    v.update(snap(2, 99, 5))
    assert table(v)[0][-1] == "101"
    v.key("4")
    assert [r[0] for r in table(v)] == ["HVC64", "WFx"]
    v.key("s")  # by total time: WFx (2 x 1 ms) first
    assert v.sort == "total" and [r[0] for r in table(v)] == ["WFx", "HVC64"]
    assert v.key("q") is False


def test_lines_fit_the_terminal_and_help_comes_and_goes():
    v = TopView(label)
    v.update(dataclasses.replace(snap(0, 10, 5)))
    lines = v.lines(40, 8)
    assert len(lines) == 8 and all(len(t) <= 40 for t, _ in lines)
    assert lines[-1][0] == HELP[:40]
    v.key("?")
    assert v.lines(80, 30)[0][0] == "Keys:"
    v.key("z")
    assert v.lines(80, 30)[0][0].startswith("kvmexit top")
