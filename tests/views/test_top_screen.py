"""The top screen's state and lines, without curses or BPF (the tmux test drives the real one)."""

from __future__ import annotations

import dataclasses

from kvmexit.model import HIST_SLOTS, SPLIT_FIELDS, ExitKey, ExitStats, Snapshot, SubKey, ThreadInfo, hist_slot
from kvmexit.reasons import label
from kvmexit.reasons.subreasons import hvc_sub, sub_label
from kvmexit.views.top import DROP_ORDER, HELP, TopView

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


# -- sub-reasons, the split of the exit time and guest residency (issue 11) -------------------------

DABT = (2, 0x24)
PSCI_VERSION = hvc_sub(0x84000000)


def parts(pairs: int, ns: int, halt=0, guest=0, vmm=0, preempt=0, blocked=0) -> ExitStats:
    """``pairs`` exits of ``ns`` each, every one with the same parts (ns per exit)."""
    assert halt + vmm + preempt + blocked <= ns
    hist = [0] * HIST_SLOTS
    hist[hist_slot(ns)] = pairs
    return ExitStats(
        pairs=pairs,
        total_ns=pairs * ns,
        min_ns=ns,
        max_ns=ns,
        hist=tuple(hist),
        halt_ns=pairs * halt,
        guest_ns=pairs * guest,
        vmm_ns=pairs * vmm,
        preempt_ns=pairs * preempt,
        blocked_ns=pairs * blocked,
    )


def split_snap(t_ns: int = 0, scale: int = 1, **changes) -> Snapshot:
    """web01: vCPU 0 (tid 11) makes HVC64 calls, 60 of each 100 PSCI_VERSION; vCPU 1 (tid 12)
    halts in WFx and takes MMIO exits (DABT_LOW). Every part measured, unless ``changes`` say."""
    s = Snapshot(
        "arm64",
        {
            ExitKey(10, 11, *HVC): parts(100 * scale, 10_000, guest=90_000, vmm=1_000, preempt=2_000),
            ExitKey(10, 12, *WFX): parts(10 * scale, 1_000_000, halt=900_000, guest=50_000, preempt=50_000),
            ExitKey(10, 12, *DABT): parts(300 * scale, 50_000, guest=10_000, vmm=30_000, preempt=5_000, blocked=1_000),
        },
        threads={11: ThreadInfo("CPU 0/KVM", "web01", 0), 12: ThreadInfo("CPU 1/KVM", "web01", 1)},
        time_ns=t_ns,
        subs={
            SubKey(10, 11, *HVC, PSCI_VERSION): parts(60 * scale, 10_000, guest=90_000, vmm=1_000, preempt=2_000),
        },
        subs_known=True,
        unknown=frozenset(),
    )
    return dataclasses.replace(s, **changes)


def grid(view: TopView, width: int = 200):
    """The table as {header: [cells]} (cells have no spaces in these tests), and its lines."""
    lines = [t for t, _ in view.lines(width, 30)]
    start = next(i for i, t in enumerate(lines) if t.split() and t.split()[0] in ("VM", "REASON"))
    end = lines.index("", start)
    head = lines[start].split()
    body = [t.split() for t in lines[start + 1 : end]]
    assert all(len(r) == len(head) for r in body), lines
    return [dict(zip(head, r)) for r in body] or [dict.fromkeys(head)], lines[start:end]


def test_the_split_and_exit_share_columns_from_known_numbers():
    v = TopView(label, "reason")
    v.update(split_snap())
    v.key("c")
    rows, _ = grid(v)
    by = {r["REASON"]: r for r in rows}
    # DABT_LOW, per exit of 50 us: VMM 30, preempted 5, blocked 1, not halted: the kernel's 14 us
    assert {k: by["DABT_LOW"][k] for k in ("HALT%", "KERN%", "VMM%", "PREEMPT%", "BLOCKED%", "EXIT%")} == {
        "HALT%": "0%",
        "KERN%": "28%",
        "VMM%": "60%",
        "PREEMPT%": "10%",
        "BLOCKED%": "2%",
        "EXIT%": "83.3%",  # 50 / (50 + 10)
    }
    assert [by["WFx"][k] for k in ("HALT%", "KERN%", "VMM%", "PREEMPT%", "BLOCKED%", "EXIT%")] == [
        "90%",
        "5%",
        "0%",
        "5%",
        "0%",
        "95.2%",  # 1000 / 1050
    ]
    assert by["HVC64"]["KERN%"] == "70%" and by["HVC64"]["EXIT%"] == "10.0%"
    assert list(rows[0])[-1] == "TOTAL" and by["DABT_LOW"]["TOTAL"] == "300"


def test_the_split_in_interval_mode_is_the_intervals():
    v = TopView(label, "reason")
    v.update(split_snap(0))
    v.update(split_snap(2_000_000_000, scale=3))  # twice as many exits again, same parts each
    rows, _ = grid(v)
    by = {r["REASON"]: r for r in rows}
    assert by["DABT_LOW"]["EXITS/S"] == "300.0" and by["DABT_LOW"]["VMM%"] == "60%"
    assert by["WFx"]["EXIT%"] == "95.2%"


def test_unknown_parts_are_dashes_never_zero():
    v = TopView(label, "reason")
    v.update(split_snap(unknown=frozenset({"vmm_ns"})))  # no kvm_userspace_exit on this kernel
    v.key("c")
    by = {r["REASON"]: r for r in grid(v)[0]}
    assert by["DABT_LOW"]["VMM%"] == "-" and by["DABT_LOW"]["KERN%"] == "-"  # the kernel's is what is left
    assert by["DABT_LOW"]["PREEMPT%"] == "10%" and by["WFx"]["HALT%"] == "90%"

    v.update(split_snap(halt_known=False))  # no kvm_vcpu_wakeup
    by = {r["REASON"]: r for r in grid(v)[0]}
    assert by["WFx"]["HALT%"] == "-" and by["WFx"]["KERN%"] == "-" and by["WFx"]["PREEMPT%"] == "5%"

    v.update(split_snap(unknown=frozenset(SPLIT_FIELDS) | {"guest_ns"}))  # neither --split nor --guest
    head = list(grid(v)[0][0])
    assert head == ["REASON", "EXITS/S", "%EXITS", "%TIME", "AVG", "P99", "HALT%", "TOTAL"]
    v.key("t")
    assert "start top with --split" in v.lines(200, 30)[-1][0]
    v.key("g")
    assert "start top with --guest" in v.lines(200, 30)[-1][0]

    v.update(split_snap(unknown=frozenset(SPLIT_FIELDS)))  # --guest alone: EXIT% only
    assert list(grid(v)[0][0])[-2:] == ["EXIT%", "TOTAL"] and "KERN%" not in grid(v)[0][0]


def test_keys_hide_and_show_the_split_and_exit_share():
    v = TopView(label, "reason")
    v.update(split_snap())
    assert {"KERN%", "BLOCKED%", "EXIT%"} <= set(grid(v)[0][0])
    v.key("t")
    assert "KERN%" not in grid(v)[0][0] and "EXIT%" in grid(v)[0][0]
    v.key("g")
    assert "EXIT%" not in grid(v)[0][0] and "HALT%" in grid(v)[0][0]
    v.key("t")
    v.key("g")
    assert {"KERN%", "VMM%", "PREEMPT%", "BLOCKED%", "EXIT%"} <= set(grid(v)[0][0])


def test_sub_reasons_fold_and_unfold_under_each_reason():
    v = TopView(label, "reason", sub_label=sub_label, show_sub=True)
    v.update(split_snap())
    v.key("c")
    rows = grid(v)[0]
    assert [(r["REASON"], r["SUB"], r["TOTAL"]) for r in rows] == [
        ("DABT_LOW", "-", "300"),
        ("HVC64", "PSCI_VERSION", "60"),
        ("HVC64", "-", "40"),  # the rest of the reason's exits
        ("WFx", "-", "10"),
    ]
    assert "by reason + sub" in v.lines(200, 30)[0][0]
    v.key("u")  # folded: today's table
    assert [(r["REASON"], r["TOTAL"]) for r in grid(v)[0]] == [("DABT_LOW", "300"), ("HVC64", "100"), ("WFx", "10")]
    assert "SUB" not in grid(v)[0][0]
    v.key("5")  # per reason and sub-reason
    assert [(r["REASON"], r["SUB"], r["TOTAL"]) for r in grid(v)[0]][1:3] == [
        ("HVC64", "PSCI_VERSION", "60"),
        ("HVC64", "-", "40"),
    ]


def test_drill_from_a_vm_to_a_vcpu_to_a_reason_and_its_sub_reasons():
    v = TopView(label, "vm", sub_label=sub_label)
    v.update(split_snap())
    v.key("c")
    v.key("\n")  # web01's vCPUs
    assert [(r["VCPU"], r["TOTAL"]) for r in grid(v)[0]] == [("1", "310"), ("0", "100")]
    v.key("KEY_DOWN")
    v.key("\n")  # vCPU 0's reasons (folded)
    assert [(r["REASON"], r["TOTAL"]) for r in grid(v)[0]] == [("HVC64", "100")]
    v.key("\n")  # HVC64's sub-reasons, on this vCPU only
    rows = grid(v)[0]
    assert [(r["SUB"], r["TOTAL"], r["KERN%"], r["EXIT%"]) for r in rows] == [
        ("PSCI_VERSION", "60", "70%", "10.0%"),
        ("-", "40", "70%", "10.0%"),
    ]
    assert "view: all > web01 > vCPU 0 (tid 11) > HVC64" in [t for t, _ in v.lines(200, 30)]
    v.key("KEY_BACKSPACE")
    assert [r["REASON"] for r in grid(v)[0]] == ["HVC64"]


def test_without_sub_reasons_traced_the_keys_say_so():
    v = TopView(label, "reason")  # no sub_label: top ran without --sub
    v.update(split_snap(subs={}, subs_known=False))
    before = grid(v)[0]
    for k in ("u", "5"):
        v.key(k)
        assert v.lines(200, 30)[-1][0] == "sub-reasons are not traced: start top with --sub"
        assert grid(v)[0] == before
    v.key("\n")  # reasons have nothing below them
    assert grid(v)[0] == before and v.stack[-1].group_by == "reason"
    v.key("s")
    assert v.lines(200, 30)[-1][0] == HELP  # the message goes with the next key


def test_eighty_columns_keep_identity_split_and_exit_share():
    v = TopView(label, "thread", sub_label=sub_label, show_sub=True)
    v.update(split_snap(0))
    v.update(split_snap(1_000_000_000, scale=2))
    wide = list(grid(v, 200)[0][0])
    assert wide == [
        "VM", "VCPU", "TID", "REASON", "SUB", "EXITS/S", "%EXITS", "%TIME", "AVG", "P99", "HALT%",
        "KERN%", "VMM%", "PREEMPT%", "BLOCKED%", "EXIT%", "TOTAL",
    ]  # fmt: skip
    rows, lines = grid(v, 80)
    assert all(len(t) <= 79 for t in lines)  # curses cannot write the last cell
    head = list(rows[0])
    # short headers, one-space gaps, then DROP_ORDER until it fits (TGID is not in this grouping)
    assert head == ["VM", "VCPU", "REASON", "SUB", "%TIME", "AVG", "HALT%", "KERN%", "VMM%", "PRE%", "BLK%", "EXIT%"]
    assert {c for c in wide if c not in head and c not in ("PREEMPT%", "BLOCKED%")} == set(
        [c for c in DROP_ORDER if c in wide][:5]
    )
    psci = next(r for r in rows if r["SUB"] == "PSCI_VERSION")
    assert (psci["KERN%"], psci["PRE%"], psci["EXIT%"], psci["AVG"]) == ("70%", "20%", "10.0%", "10us")
    # by VM there is less to drop: only TGID, the first of DROP_ORDER
    v.key("1")
    rows, lines = grid(v, 80)
    assert all(len(t) <= 79 for t in lines)
    assert list(rows[0]) == [
        "VM", "EXITS/S", "%EXITS", "%TIME", "AVG", "P99", "HALT%", "KERN%", "VMM%", "PRE%", "BLK%", "EXIT%", "TOTAL",
    ]  # fmt: skip
    # the parts of the VM's 26 ms of exit time per interval: kernel 5.4 ms, VMM 9.1 ms, halted 9 ms, ...
    assert (rows[0]["EXITS/S"], rows[0]["KERN%"], rows[0]["VMM%"], rows[0]["HALT%"]) == ("410.0", "21%", "35%", "35%")
    # in totals mode EXITS/S (all "-" there) goes first
    v.key("c")
    rows, lines = grid(v, 80)
    assert "EXITS/S" not in rows[0] and "TGID" in rows[0]
