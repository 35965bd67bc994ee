"""Guest residency and the split of the exit time (issue 11), in the kernel: the programs of
``bpf/kvmexit.bpf.c`` driven with BPF_PROG_TEST_RUN, the maps read back by the live source.

``bpf_ktime_get_ns()`` and ``time.monotonic_ns()`` read the same clock (CLOCK_MONOTONIC), so each
part is checked against bounds taken around the events that delimit it: its true value lies
between the gap of the inner and of the outer clock readings.
"""

from __future__ import annotations

import threading
import time
from typing import Dict, List, Tuple

import pytest
from test_live_bpf import (
    EC_DABT_LOW,
    EC_HVC64,
    EC_SYS64,
    EC_WFX,
    FORMATS,
    IRQ,
    TRAP,
    Driver,
    in_thread,
    live_layout,
    snapshot_once_reaped,
)

from bpf_testrun import test_run_raw
from kvmexit.layouts import detect
from kvmexit.model import SPLIT_FIELDS, ExitStats, Snapshot, kernel_ns
from kvmexit.reasons import label

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("bpf_env")]

MS = 1_000_000
TASK_INTERRUPTIBLE = 1


class Clock:
    """Clock readings around events: ``mark(name, fn)`` runs fn between two readings."""

    def __init__(self) -> None:
        self.at: Dict[str, Tuple[int, int]] = {}

    def mark(self, name: str, fn, *args) -> None:
        before = time.monotonic_ns()
        fn(*args)
        self.at[name] = (before, time.monotonic_ns())

    def gap(self, a: str, b: str) -> Tuple[int, int]:
        """(least, most) time from event a to event b."""
        return self.at[b][0] - self.at[a][1], self.at[b][1] - self.at[a][0]


def within(value: int, bounds: Tuple[int, int]) -> bool:
    return bounds[0] <= value <= bounds[1]


def rows_of(snap: Snapshot, tid: int) -> Dict[str, ExitStats]:
    return {label(snap.arch, k.code, k.detail): s for k, s in snap.stats.items() if k.tid == tid}


@pytest.fixture
def split():
    d = Driver(detect(FORMATS["arm64"]), split=True, guest=True)
    yield d
    d.close()


def halt_ns_since(start: int, margin: int = 4 * MS) -> int:
    """kvm_vcpu_wakeup's ns for a halt that began at ``start``: the program takes the window as
    ending when it runs, a little after this reading, so the window is widened by ``margin``
    (less than the time the tests leave between an interval before a halt and its start)."""
    return time.monotonic_ns() - start + margin


class Events:
    """The split's events for one driver (task keys are opaque: any distinct u64 per thread)."""

    def __init__(self, d: Driver) -> None:
        self.d = d

    def uexit(self) -> None:
        test_run_raw(self.d.fds["kvmexit_uexit"], 6, 0)  # KVM_EXIT_MMIO, errno 0

    def switch(self, preempt: int, prev: int, nxt: int, prev_state: int) -> None:
        test_run_raw(self.d.fds["kvmexit_switch"], preempt, prev, nxt, prev_state)

    def switch_in_from_another_thread(self, task: int) -> None:
        """``task`` comes back on CPU: sched_switch runs on the CPU's previous task, not on it."""
        t = threading.Thread(target=self.switch, args=(0, 0xDEAD0000, task, 0))
        t.start()
        t.join()


# -- guest residency (--guest) ---------------------------------------------------------------------


def test_guest_time_runs_from_an_entry_to_the_next_exit_and_goes_to_that_exits_row():
    d = Driver(detect(FORMATS["arm64"]), guest=True)
    c = Clock()

    def body():
        d.arm64_exit(TRAP, EC_DABT_LOW)  # the thread's first exit: no entry before it, no guest time
        c.mark("entry1", d.entry)
        time.sleep(0.02)
        c.mark("exit2", d.arm64_exit, TRAP, EC_HVC64)
        c.mark("entry2", d.entry)
        time.sleep(0.01)
        c.mark("exit3", d.arm64_exit, TRAP, EC_SYS64)  # unfinished: another exit comes first
        d.arm64_exit(IRQ, 0)  # no entry since the last exit: no guest time for it
        d.entry()

    try:
        tid = in_thread(body)
        rows = rows_of(d.snapshot(), tid)
        assert rows["DABT_LOW"].guest_ns == 0
        assert within(rows["HVC64"].guest_ns, c.gap("entry1", "exit2"))
        assert rows["HVC64"].guest_ns >= 20 * MS
        assert rows["SYS64"].unfinished == 1 and within(rows["SYS64"].guest_ns, c.gap("entry2", "exit3"))
        assert rows["IRQ"].guest_ns == 0
        assert "guest_ns" not in d.snapshot().unknown
    finally:
        d.close()


def test_an_abandoned_exit_keeps_its_guest_time():
    d = Driver(detect(FORMATS["arm64"]), guest=True)
    c = Clock()

    def body():
        d.arm64_exit(TRAP, EC_DABT_LOW)
        c.mark("entry", d.entry)
        time.sleep(0.01)
        c.mark("exit", d.arm64_exit, TRAP, EC_HVC64)  # the thread then ends: abandoned

    try:
        tid = in_thread(body)
        snap = snapshot_once_reaped(d)
        rows = rows_of(snap, tid)
        assert rows["HVC64"].abandoned == 1 and within(rows["HVC64"].guest_ns, c.gap("entry", "exit"))
    finally:
        d.close()


def test_guest_time_is_opt_in_and_unknown_not_zero_without_it():
    d = Driver(detect(FORMATS["arm64"]))
    try:
        assert "-DKVMEXIT_GUEST" not in d.source.program.cflags
        tid = in_thread(lambda: (d.arm64_exit(TRAP, EC_HVC64), d.entry(), d.arm64_exit(TRAP, EC_HVC64), d.entry()))
        snap = d.snapshot()
        assert rows_of(snap, tid)["HVC64"].guest_ns == 0 and "guest_ns" in snap.unknown
    finally:
        d.close()


# -- the split (--split) --------------------------------------------------------------------------


def test_split_is_off_by_default_and_unknown_then():
    d = Driver(detect(FORMATS["arm64"]))
    try:
        assert "kvmexit_switch" not in d.fds and "-DKVMEXIT_SPLIT" not in d.source.program.cflags
        assert set(SPLIT_FIELDS) <= d.snapshot().unknown
    finally:
        d.close()


def test_vmm_and_preempted_time_of_an_exit_that_went_to_user_space(split):
    ev = Events(split)
    c = Clock()
    task = 0x1000_0001

    def body():
        c.mark("exit", split.arm64_exit, TRAP, EC_DABT_LOW)
        c.mark("uexit", ev.uexit)
        time.sleep(0.01)  # the VMM emulates (on CPU)
        c.mark("out", ev.switch, 1, task, 0xDEAD0000, 0)  # preempted
        time.sleep(0.02)
        c.mark("in", ev.switch_in_from_another_thread, task)
        time.sleep(0.005)
        c.mark("entry", split.entry)

    tid = in_thread(body)
    snap = split.snapshot()
    st = rows_of(snap, tid)["DABT_LOW"]
    assert not (set(SPLIT_FIELDS) & snap.unknown)
    assert within(st.preempt_ns, c.gap("out", "in")) and st.preempt_ns >= 20 * MS
    lo, hi = c.gap("uexit", "entry")
    off_lo, off_hi = c.gap("out", "in")
    assert lo - off_hi <= st.vmm_ns <= hi - off_lo and st.vmm_ns >= 15 * MS
    assert st.blocked_ns == 0 and st.halt_ns == 0
    assert within(st.total_ns, c.gap("exit", "entry"))
    assert 0 <= kernel_ns(st) <= c.gap("exit", "uexit")[1] + (hi - lo) + (off_hi - off_lo)


def test_sleeping_inside_a_halt_is_halted_outside_it_blocked(split):
    ev = Events(split)
    c = Clock()
    task = 0x1000_0002

    def body():
        # WFx: the thread sleeps inside the halt, which kvm_vcpu_wakeup reports afterwards.
        split.arm64_exit(TRAP, EC_WFX)
        time.sleep(0.01)
        c.mark("halt", lambda: None)
        c.mark("out", ev.switch, 0, task, 0xDEAD0000, TASK_INTERRUPTIBLE)
        time.sleep(0.02)
        c.mark("in", ev.switch_in_from_another_thread, task)
        c.mark("wakeup", lambda: split.wakeup(halt_ns_since(c.at["halt"][0])))
        split.entry()
        # DABT: the thread sleeps outside any halt (a page-fault read, say): blocked.
        split.arm64_exit(TRAP, EC_DABT_LOW)
        c.mark("out2", ev.switch, 0, task, 0xDEAD0000, TASK_INTERRUPTIBLE)
        time.sleep(0.01)
        c.mark("in2", ev.switch_in_from_another_thread, task)
        split.entry()

    tid = in_thread(body)
    rows = rows_of(split.snapshot(), tid)
    wfx, dabt = rows["WFx"], rows["DABT_LOW"]
    assert wfx.halt_ns >= 20 * MS and wfx.blocked_ns == 0 and wfx.preempt_ns == 0
    assert within(dabt.blocked_ns, c.gap("out2", "in2")) and dabt.preempt_ns == 0 and dabt.vmm_ns == 0
    for st in (wfx, dabt):
        assert kernel_ns(st) >= 0


def test_preempted_before_a_halt_stays_preempted(split):
    """An interval before the halt's window (preempted on the way to it) is not part of the halt;
    the sleep inside it is."""
    ev = Events(split)
    c = Clock()
    task = 0x1000_0003

    def body():
        split.arm64_exit(TRAP, EC_WFX)
        c.mark("out", ev.switch, 1, task, 0xDEAD0000, 0)
        time.sleep(0.01)
        c.mark("in", ev.switch_in_from_another_thread, task)
        time.sleep(0.01)
        c.mark("halt", lambda: None)
        ev.switch(0, task, 0xDEAD0000, TASK_INTERRUPTIBLE)
        time.sleep(0.01)
        ev.switch_in_from_another_thread(task)
        split.wakeup(halt_ns_since(c.at["halt"][0]))
        split.entry()

    tid = in_thread(body)
    st = rows_of(split.snapshot(), tid)["WFx"]
    assert within(st.preempt_ns, c.gap("out", "in")) and st.blocked_ns == 0
    assert st.halt_ns >= 10 * MS and kernel_ns(st) >= 0


def test_parts_never_exceed_the_exit_time(split):
    """Whatever the events say, each pair's parts stay within its time, so the kernel's part (the
    rest) is never negative: here a halt reported longer than the exit, inside a VMM window."""
    ev = Events(split)

    def body():
        split.arm64_exit(TRAP, EC_HVC64)
        ev.uexit()
        time.sleep(0.002)
        split.wakeup(10_000 * MS)  # 10 s: impossible, yet parts must still add up
        split.entry()

    tid = in_thread(body)
    st = rows_of(split.snapshot(), tid)["HVC64"]
    assert st.halt_ns == st.total_ns and kernel_ns(st) == 0
    assert st.vmm_ns == st.preempt_ns == st.blocked_ns == 0


def test_other_threads_switches_are_ignored(split):
    """sched_switch fires for every task of the host: only threads with an open exit are followed."""
    ev = Events(split)

    def body():
        ev.switch(1, 0x2000_0001, 0x2000_0002, 0)  # no exit open on this thread
        split.arm64_exit(TRAP, EC_HVC64)
        split.entry()
        ev.switch(0, 0x2000_0001, 0x2000_0002, TASK_INTERRUPTIBLE)  # between exits: guest time

    tid = in_thread(body)
    st = rows_of(split.snapshot(), tid)["HVC64"]
    assert st.preempt_ns == st.blocked_ns == st.vmm_ns == 0
    assert split.source.bpf["offcpu"].items() == []


def test_split_attaches_here_raw_where_sched_switch_has_prev_state():
    from kvmexit.layouts import find_tracefs, switch_offsets
    from kvmexit.sources.live import LiveSource

    offsets = switch_offsets(find_tracefs())
    assert offsets is not None, "sched_switch has no prev_pid/prev_state/next_pid record fields"
    src = LiveSource(live_layout(), split=True, switch_offsets=offsets).open()
    try:
        raw = {k.decode() if isinstance(k, bytes) else k for k in src.bpf.raw_tracepoint_fds}
        classic = {k.decode() if isinstance(k, bytes) else k for k in src.bpf.tracepoint_fds}
        assert "sched_switch" in raw or "sched:sched_switch" in classic, (raw, classic)
        assert not (set(SPLIT_FIELDS) & src.snapshot().unknown), src.notes
        # the classic-tracepoint variant (kernels before 5.18) passes the verifier too
        assert src.bpf.load_func("kvmexit_switch_tp", src.bpf.TRACEPOINT).fd > 0
        assert src.bpf.load_func("kvmexit_uexit_tp", src.bpf.TRACEPOINT).fd > 0
    finally:
        src.close()


def test_a_split_event_refused_makes_its_parts_unknown_in_one_line():
    from kvmexit.sources.live import LiveSource

    src = LiveSource(live_layout(), split=True, attach=False).open()
    real_raw, real_tp = src.bpf.attach_raw_tracepoint, src.bpf.attach_tracepoint
    refused: List[str] = []

    def raw(tp, fn_name):
        if tp == "sched_switch":
            refused.append(tp)
            raise Exception("Failed to attach BPF to raw tracepoint")
        return real_raw(tp=tp, fn_name=fn_name)

    src.bpf.attach_raw_tracepoint = raw
    src.bpf.attach_tracepoint = real_tp
    try:
        src._attach_all()  # no record offsets given: no classic fallback for sched_switch
        unknown = src.snapshot().unknown
        assert refused and {"preempt_ns", "blocked_ns"} <= unknown and "vmm_ns" not in unknown
        assert len(src.notes) == 1 and "\n" not in src.notes[0]
        assert src.notes[0].startswith("preempt_ns and blocked_ns unknown: cannot attach to sched:sched_switch")
    finally:
        src.close()


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_arm64_layout_compiles_the_split_and_passes_the_verifier(name):
    from kvmexit.sources.live import LiveSource

    src = LiveSource(detect(FORMATS[name]), attach=False, split=True, guest=True, switch_offsets=(24, 32, 56)).open()
    try:
        for fn in ("kvmexit_switch", "kvmexit_uexit"):
            assert src.bpf.load_func(fn, src.bpf.RAW_TRACEPOINT).fd > 0
        for fn in ("kvmexit_switch_tp", "kvmexit_uexit_tp"):
            assert src.bpf.load_func(fn, src.bpf.TRACEPOINT).fd > 0
    finally:
        src.close()


def test_a_sub_reasons_record_gets_its_pairs_guest_time_and_parts_too():
    """With --sub, a pair with a sub-reason is recorded a second time under it: with the same
    guest time and split as in its reason's row, so sub-reason rows show EXIT% and the split."""
    d = Driver(detect(FORMATS["arm64"]), split=True, guest=True, subreasons=True)
    ev = Events(d)
    c = Clock()
    try:

        def body():
            d.arm64_exit(TRAP, EC_HVC64)
            c.mark("entry", d.entry)
            time.sleep(0.01)
            c.mark("exit", d.arm64_exit, TRAP, EC_HVC64)
            test_run_raw(d.fds["kvmexit_sub_hvc"], 0x1000, 0x84000000, 0)  # PSCI_VERSION
            ev.switch(1, 0x3000_0001, 0xDEAD0000, 0)
            time.sleep(0.01)
            ev.switch_in_from_another_thread(0x3000_0001)
            d.entry()

        tid = in_thread(body)
        snap = d.snapshot()
        subs = [st for k, st in snap.subs.items() if k.tid == tid]
        assert len(subs) == 1 and subs[0].pairs == 1
        row = rows_of(snap, tid)["HVC64"]
        assert within(subs[0].guest_ns, c.gap("entry", "exit")) and subs[0].guest_ns == row.guest_ns
        assert subs[0].preempt_ns == row.preempt_ns >= 10 * MS
    finally:
        d.close()


def test_the_last_sleep_before_a_wakeup_is_the_halts_own_block(split):
    """A sleep whose start seems to precede the halt's window (the kernel's clock reading at the
    halt's end and the program's differ) is still the halt's when it is the last interval before
    the wakeup; a preemption there is not."""
    ev = Events(split)
    task = 0x1000_0004

    def body():
        split.arm64_exit(TRAP, EC_WFX)
        ev.switch(0, task, 0xDEAD0000, TASK_INTERRUPTIBLE)
        time.sleep(0.02)
        ev.switch_in_from_another_thread(task)
        split.wakeup(5 * MS)  # the window seems to begin 15 ms after the sleep did
        split.entry()
        split.arm64_exit(TRAP, EC_WFX)
        ev.switch(1, task, 0xDEAD0000, 0)
        time.sleep(0.02)
        ev.switch_in_from_another_thread(task)
        time.sleep(0.01)  # on CPU, then a halt of 5 ms: the preemption is before it
        split.wakeup(5 * MS)
        split.entry()

    tid = in_thread(body)
    st = rows_of(split.snapshot(), tid)["WFx"]
    assert st.blocked_ns == 0 and st.preempt_ns >= 20 * MS


# -- the slow-exit log with the split (--slower-than with --split) -----------------------------------


def _slow_driver(**options):
    from kvmexit.model import SlowExit

    got: List[SlowExit] = []
    d = Driver(detect(FORMATS["arm64"]), slow_ns=5 * MS, on_slow=lambda arch, e: got.append(e), **options)
    return d, got


def test_a_slow_exit_carries_its_split_the_same_as_its_row():
    """--split with --slower-than: the logged exit's parts are the ones its row gets (one pair here,
    so equal), inside the bounds of the events that delimit them, and add up to its duration."""
    d, got = _slow_driver(split=True)
    ev = Events(d)
    c = Clock()
    task = 0x1000_0005
    try:

        def body():
            c.mark("exit", d.arm64_exit, TRAP, EC_DABT_LOW)
            c.mark("uexit", ev.uexit)
            time.sleep(0.01)  # the VMM emulates (on CPU)
            c.mark("out", ev.switch, 1, task, 0xDEAD0000, 0)  # preempted
            time.sleep(0.02)
            c.mark("in", ev.switch_in_from_another_thread, task)
            c.mark("out2", ev.switch, 0, task, 0xDEAD0000, TASK_INTERRUPTIBLE)  # sleeps in the VMM
            time.sleep(0.01)
            c.mark("in2", ev.switch_in_from_another_thread, task)
            c.mark("entry", d.entry)
            d.arm64_exit(TRAP, EC_HVC64)  # fast: not logged
            d.entry()

        tid = in_thread(body)
        d.source.poll(100)
        (e,) = got
        st = rows_of(d.snapshot(), tid)["DABT_LOW"]
        assert (e.vmm_ns, e.preempt_ns, e.blocked_ns, e.halt_ns) == (st.vmm_ns, st.preempt_ns, st.blocked_ns, 0)
        assert e.duration_ns == st.total_ns and e.kernel_ns == kernel_ns(st) >= 0
        assert e.kernel_ns + e.vmm_ns + e.halt_ns + e.preempt_ns + e.blocked_ns == e.duration_ns
        assert within(e.preempt_ns, c.gap("out", "in")) and within(e.blocked_ns, c.gap("out2", "in2"))
        lo, hi = c.gap("uexit", "entry")
        off_lo = c.gap("out", "in")[0] + c.gap("out2", "in2")[0]
        off_hi = c.gap("out", "in")[1] + c.gap("out2", "in2")[1]
        assert lo - off_hi <= e.vmm_ns <= hi - off_lo and e.vmm_ns >= 10 * MS
    finally:
        d.close()


def test_a_slow_halt_is_clamped_like_its_row():
    """A halt reported longer than the exit: the log's halted time is the row's (within the
    duration), and the kernel's part is 0, not negative."""
    d, got = _slow_driver(split=True)
    try:

        def body():
            d.arm64_exit(TRAP, EC_WFX)
            time.sleep(0.01)
            d.wakeup(10_000 * MS)
            d.entry()

        tid = in_thread(body)
        d.source.poll(100)
        (e,) = got
        st = rows_of(d.snapshot(), tid)["WFx"]
        assert e.halt_ns == st.halt_ns == e.duration_ns and e.kernel_ns == 0
        assert (e.vmm_ns, e.preempt_ns, e.blocked_ns) == (0, 0, 0)  # measured, and none here
    finally:
        d.close()


def test_without_split_the_slow_exits_split_is_unknown_not_zero():
    d, got = _slow_driver()
    try:
        assert "-DKVMEXIT_SPLIT" not in d.source.program.cflags
        in_thread(lambda: (d.arm64_exit(TRAP, EC_DABT_LOW), time.sleep(0.01), d.entry()))
        d.source.poll(100)
        (e,) = got
        assert (e.vmm_ns, e.preempt_ns, e.blocked_ns, e.kernel_ns) == (None, None, None, None)
        assert e.halt_ns == 0 and not e.split_known
    finally:
        d.close()


def test_a_part_whose_event_is_missing_is_unknown_in_the_slow_log_too():
    """--split where sched_switch could not be attached: preempted and blocked are unknown in each
    logged exit (and so the kernel's part), VMM time is still measured."""
    d, got = _slow_driver(split=True)
    try:
        d.source.unknown.update(("preempt_ns", "blocked_ns"))  # what _attach_split does on a refusal
        in_thread(lambda: (d.arm64_exit(TRAP, EC_DABT_LOW), Events(d).uexit(), time.sleep(0.01), d.entry()))
        d.source.poll(100)
        (e,) = got
        assert e.preempt_ns is None and e.blocked_ns is None and e.kernel_ns is None
        assert e.vmm_ns is not None and e.vmm_ns >= 10 * MS
    finally:
        d.close()
