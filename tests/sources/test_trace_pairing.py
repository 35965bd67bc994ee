"""Pairing: the reader's inlined hot path equals the reference :class:`Pairer` (kernel rules)."""

from __future__ import annotations

import io

from hypothesis import given, settings
from hypothesis import strategies as st

from kvmexit.model import HIST_SLOTS, bucket_bounds
from kvmexit.reasons import SERROR_FLAG
from kvmexit.sources.trace import Pairer, Thread, hist_slot, read_stream
from kvmexit.sources.trace.render import Event, entry_payload, exit_payload, render_line, trap_payload, wakeup_payload


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
@settings(max_examples=500)
def test_hist_slot_bucket_holds_the_value(v):
    lo, hi = bucket_bounds(hist_slot(v))
    assert lo <= v and (v <= hi or hist_slot(v) == HIST_SLOTS - 1)


def test_rules():
    p = Pairer("arm64-openeuler-5.10")
    p.entry(5, Thread(1))  # unpaired
    p.exit(10, Thread(1), (2, 0x16))
    p.exit(20, Thread(1), (0, 0))  # the first becomes unfinished
    p.wakeup(21, Thread(1), 3)
    p.wakeup(22, Thread(2), 99)  # no open exit on tid 2: ignored
    p.entry(30, Thread(1))
    p.exit(40, Thread(2), (2, 0))
    p.trap(41, Thread(2), 0x24)  # openEuler: class after the exit
    p.exit(50, Thread(3), (0, 0))
    p.trap(51, Thread(3), 0x24)  # not a TRAP exit: unchanged
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
    p.exit(10, Thread(1), (2, 0x01))
    p.entry(30, Thread(1))
    assert not p.snapshot("arm64").halt_known


def test_trap_keeps_the_serror_flag():
    p = Pairer("arm64-openeuler-5.10")
    p.exit(1, Thread(1), (2, SERROR_FLAG))
    p.trap(2, Thread(1), 0x16)
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
    ref = Pairer(layout)
    lines = []
    ts = 1_000_000_000
    for kind, tid, (ret, ec), step, ns in events:
        ts += step
        cpu = tid
        if kind == "exit":
            if layout != "arm64-openeuler-5.10":  # masked: class of traps only
                ref.exit(ts, Thread(tid, cpu=cpu), (ret, ec if ret == 2 else 0))
                payload = exit_payload(layout, ret, ec)
            else:
                ref.exit(ts, Thread(tid, cpu=cpu), (ret, 0))
                payload = exit_payload(layout, ret, ec, vcpu=tid)
            name = "kvm_exit"
        elif kind == "entry":
            ref.entry(ts, Thread(tid))
            name, payload = "kvm_entry", entry_payload(layout, tid)
        elif kind == "wakeup":
            ref.wakeup(ts, Thread(tid), ns)
            name, payload = "kvm_vcpu_wakeup", wakeup_payload(ns)
        else:
            if layout == "arm64":
                continue
            # openEuler 4.19's kvm_exit carries the class: its kvm_trap_enter (here with any
            # class, even one that differs from the open exit's) must change nothing.
            ref.trap(ts, Thread(tid), ec)
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


def test_an_event_is_one_table_entry_and_one_rule(monkeypatch):
    """How a new event joins (the module docstring of pairing): an EVENTS entry naming a rule and
    a decoder; the reader then dispatches it, in ftrace and perf spellings, counting it as another
    event; a payload its decoder refuses is a malformed line. Other events than kvm's reach their
    rule whatever -p/-t keep (a sched_switch names two threads: the line's, going off CPU, and the
    next one); the rule decides what concerns the kept threads."""
    from kvmexit.sources.trace import EVENTS
    from kvmexit.sources.trace import Event as EngineEvent

    class Engine(Pairer):
        def switch(self, ts, thread, next_pid):
            self.seen.append((ts, thread.tid, next_pid))

    def next_pid(payload):
        _, _, pid = payload.rpartition(b"next_pid=")
        return int(pid) if pid.isdigit() else None

    monkeypatch.setitem(EVENTS, ("sched", "sched_switch"), EngineEvent("switch", next_pid, kvm=False))
    ts = 1_000_000_000
    for fmt in ("ftrace", "perf"):
        lines = []
        for i, (tid, payload) in enumerate([(1, "next_pid=7"), (2, "next_pid=8"), (1, "garbage"), (1, "next_pid=9")]):
            ev = Event(ts + i * 1000, 0, tid, 100, "CPU %d/KVM" % tid, "sched_switch", payload)
            lines.append(render_line(fmt, ev, tgid_column=True, digits=9))
        lines.append(
            render_line(
                fmt,
                Event(ts + 9000, 0, 1, 100, "CPU 1/KVM", "kvm_exit", exit_payload("arm64", 2, 0x16)),
                tgid_column=True,
                digits=9,
            )
        )
        engine = Engine()
        engine.seen = []
        r = read_stream(io.BytesIO(("\n".join(lines) + "\n").encode()), fmt=fmt, tids=[1], engine=engine)
        assert engine.seen == [(ts, 1, 7), (ts + 1000, 2, 8), (ts + 3000, 1, 9)]
        assert (r.health.other_events, r.health.malformed, r.health.events) == (3, 1, 1)


@given(st.integers(min_value=0, max_value=(1 << 64) - 1))
@settings(max_examples=500)
def test_the_bulk_bucket_is_hist_slot(v):
    """The engine adds pairs up in bulk (bisect over the buckets' lower bounds): same buckets."""
    from kvmexit.sources.trace.pairing import _bucket_plus_1

    assert _bucket_plus_1(v) - 1 == hist_slot(v)


@given(st.lists(st.integers(min_value=-(10**12), max_value=10**12), min_size=1, max_size=50))
@settings(max_examples=200)
def test_pending_pairs_add_up_as_one_by_one(durations):
    """Pairs added in bulk (add_pending) equal pairs added one at a time by the kernel's rule:
    count, total, min, max, squares, buckets; a negative time counts as 0 ns and is reported."""
    from kvmexit.sources.trace.pairing import (
        A_HIST,
        A_MAX,
        A_MIN,
        A_PAIRS,
        A_PENDING,
        A_SUMSQ,
        A_TOTAL,
        add_pending,
        new_acc,
    )

    acc = new_acc()
    acc[A_PENDING].extend(durations)
    negative = add_pending(acc)
    clamped = [max(d, 0) for d in durations]
    hist = [0] * HIST_SLOTS
    for d in clamped:
        hist[hist_slot(d)] += 1
    assert negative == sum(d < 0 for d in durations)
    assert (acc[A_PAIRS], acc[A_TOTAL], acc[A_MIN], acc[A_MAX]) == (
        len(clamped),
        sum(clamped),
        min(clamped),
        max(clamped),
    )
    assert acc[A_SUMSQ][0] == sum(d * d for d in clamped) and acc[A_HIST] == hist and acc[A_PENDING] == []
