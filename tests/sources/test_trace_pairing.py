"""Pairing: the reader's inlined hot path equals the reference :class:`Pairer` (kernel rules)."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from kvmexit.model import HIST_SLOTS, bucket_bounds
from kvmexit.reasons import SERROR_FLAG
from kvmexit.sources.trace import Pairer, hist_slot, read_stream
from kvmexit.sources.trace.render import Event, entry_payload, exit_payload, render_line, trap_payload, wakeup_payload


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
@settings(max_examples=500)
def test_hist_slot_bucket_holds_the_value(v):
    lo, hi = bucket_bounds(hist_slot(v))
    assert lo <= v and (v <= hi or hist_slot(v) == HIST_SLOTS - 1)


def test_rules():
    p = Pairer()
    p.entry(5, 1)  # unpaired
    p.exit(10, 1, 2, 0x16)
    p.exit(20, 1, 0, 0)  # the first becomes unfinished
    p.wakeup(1, 3)
    p.wakeup(2, 99)  # no open exit on tid 2: ignored
    p.entry(30, 1)
    p.exit(40, 2, 2, 0)
    p.trap(2, 0x24)  # openEuler: class after the exit
    p.exit(50, 3, 0, 0)
    p.trap(3, 0x24)  # not a TRAP exit: unchanged
    snap = p.snapshot("arm64")
    by = {(k.tid, k.code, k.detail): v for k, v in snap.stats.items()}
    assert by[(1, 2, 0x16)].unfinished == 1
    assert by[(1, 0, 0)].pairs == 1 and by[(1, 0, 0)].total_ns == 10 and by[(1, 0, 0)].halt_ns == 3
    assert by[(2, 2, 0x24)].open == 1
    assert by[(3, 0, 0)].open == 1
    assert snap.health.unpaired_entries == 1
    assert snap.halt_known


def test_halt_time_is_unknown_without_wakeup_events():
    p = Pairer()
    p.exit(10, 1, 2, 0x01)
    p.entry(30, 1)
    assert not p.snapshot("arm64").halt_known


def test_trap_keeps_the_serror_flag():
    p = Pairer()
    p.exit(1, 1, 2, SERROR_FLAG)
    p.trap(1, 0x16)
    (key,) = p.snapshot("arm64").stats
    assert key.detail == 0x16 | SERROR_FLAG


# Random event sequences, rendered as ftrace text and read back, against the reference rules.
EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["exit", "entry", "wakeup", "trap"]),
        st.integers(min_value=1, max_value=3),  # tid
        st.sampled_from([(2, 0x16), (2, 0x01), (0, 0), (1, 0), (2, 0x24)]),
        st.integers(min_value=0, max_value=5_000_000),  # ns step
        st.integers(min_value=0, max_value=1 << 20),  # wakeup ns
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(EVENTS, st.sampled_from(["arm64", "arm64-openeuler-4.19", "arm64-openeuler-5.10"]))
def test_reader_equals_reference(events, layout):
    ref = Pairer()
    lines = []
    ts = 1_000_000_000
    for kind, tid, (ret, ec), step, ns in events:
        ts += step
        cpu = tid
        if kind == "exit":
            if layout != "arm64-openeuler-5.10":  # masked: class of traps only
                ref.exit(ts, tid, ret, ec if ret == 2 else 0, cpu)
                payload = exit_payload(layout, ret, ec)
            else:
                ref.exit(ts, tid, ret, 0, cpu)
                payload = exit_payload(layout, ret, ec, vcpu=tid)
            name = "kvm_exit"
        elif kind == "entry":
            ref.entry(ts, tid)
            name, payload = "kvm_entry", entry_payload(layout, tid)
        elif kind == "wakeup":
            ref.wakeup(tid, ns)
            name, payload = "kvm_vcpu_wakeup", wakeup_payload(ns)
        else:
            if layout == "arm64":
                continue
            # openEuler 4.19's kvm_exit carries the class: its kvm_trap_enter (here with any
            # class, even one that differs from the open exit's) must change nothing.
            if layout == "arm64-openeuler-5.10":
                ref.trap(tid, ec)
            name, payload = "kvm_trap_enter", trap_payload(tid, ec)
        lines.append(
            render_line(
                "ftrace", Event(ts, cpu, tid, 100, "CPU %d/KVM" % tid, name, payload), tgid_column=True, digits=9
            )
        )
    if not lines or not any(e[0] in ("exit", "entry") for e in events):
        return
    text = ("\n".join(lines) + "\n").encode()
    got = read_stream(io.BytesIO(text), layout=layout)
    want = ref.snapshot("arm64")
    assert {(k.tid, k.code, k.detail): v for k, v in got.snapshot.stats.items()} == {
        (k.tid, k.code, k.detail): v for k, v in want.stats.items()
    }
    assert got.snapshot.health.unpaired_entries == want.health.unpaired_entries


ABANDON_TRACE = b"""\
# tracer: nop
       CPU 0/KVM-136     [001] .....    18.196160: kvm_exit: TRAP: HSR_EC: 0x0016 (HVC64), PC: 0x0000000040000000
       CPU 0/KVM-136     [001] d....    18.196200: kvm_entry: PC: 0x0000000040000004
       CPU 0/KVM-136     [001] .....    18.196300: kvm_exit: TRAP: HSR_EC: 0x0024 (DABT_LOW), PC: 0x0000000040000008
       CPU 1/KVM-137     [000] .....    18.196310: kvm_exit: IRQ: HSR_EC: 0x0000 (UNKNOWN), PC: 0x0000000041000000
       CPU 0/KVM-136     [001] .....    18.197000: sched_process_exit: comm=CPU 0/KVM pid=136 prio=120 group_dead=0
            bash-200     [000] .....    18.197100: sched_process_exit: comm=bash pid=200 prio=120 group_dead=1
"""


def test_an_exit_open_when_its_thread_dies_is_abandoned():
    """sched_process_exit (kvmexit record records it) tells the offline reader what the live
    source sees in /proc: the thread died before its entry. Other threads' exits stay open."""
    from kvmexit.commands.common import make_report
    from kvmexit.views import format_health

    result = read_stream(io.BytesIO(ABANDON_TRACE), fmt="ftrace")
    from kvmexit.reasons import label

    rows = sorted(
        (k.tid, label("arm64", k.code, k.detail), s.exits, s.pairs, s.open, s.unfinished, s.abandoned)
        for k, s in result.snapshot.stats.items()
    )
    # (tid, reason, exits, pairs, open, unfinished, abandoned)
    assert rows == [(136, "DABT_LOW", 1, 0, 0, 0, 1), (136, "HVC64", 1, 1, 0, 0, 0), (137, "IRQ", 1, 0, 1, 0, 0)]
    assert result.snapshot.health.abandoned == 1
    args = type("A", (), {"by": "thread", "sort": "count", "top": None, "reasons": [], "vms": []})()
    line = format_health(make_report(result.snapshot, args))
    assert line.startswith("kvmexit: 3 exits: 1 paired, 1 open, 0 unfinished, 1 abandoned by exited threads;")


def test_without_thread_exits_the_same_exit_stays_open():
    trace = b"".join(line + b"\n" for line in ABANDON_TRACE.splitlines() if b"sched_process_exit" not in line)
    snap = read_stream(io.BytesIO(trace), fmt="ftrace").snapshot
    assert sum(s.open for s in snap.stats.values()) == 2
    assert sum(s.abandoned for s in snap.stats.values()) == 0
