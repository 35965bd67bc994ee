"""Guest residency and the split of the exit time offline (issue 11): the pairing engine on
ftrace text, by the kernel side's rules (``split_*`` in bpf/kvmexit.bpf.c, docs/stats-layout.md).

Timestamps here are whole microseconds, so every expected figure is exact."""

from __future__ import annotations

import io
import re
from typing import Dict, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmexit.model import SPLIT_FIELDS, ExitStats, build_report, kernel_ns
from kvmexit.reasons import label
from kvmexit.sources.trace import read_stream
from kvmexit.sources.trace.pairing import Switch, decode_switch

US = 1000
VCPU, OTHER = 501, 777
VCPU_COMM = "CPU 0/KVM"

EXIT = {
    "DABT": "TRAP: HSR_EC: 0x0024 (DABT_LOW), PC: 0x0000000040000104",
    "WFX": "TRAP: HSR_EC: 0x0001 (WFx), PC: 0x0000000040000038",
    "HVC": "TRAP: HSR_EC: 0x0016 (HVC64), PC: 0x0000000040000040",
}


class Trace:
    """ftrace lines for one vCPU thread (and whoever runs when it is off CPU)."""

    def __init__(self) -> None:
        self.lines: List[str] = ["# tracer: nop", "#"]

    def _line(self, us: int, tid: int, comm: str, event: str, body: str) -> None:
        self.lines.append(
            "%16s-%-7d [000] .....  %d.%06d: %s: %s" % (comm, tid, us // 1_000_000, us % 1_000_000, event, body)
        )

    def exit(self, us: int, kind: str) -> None:
        self._line(us, VCPU, VCPU_COMM, "kvm_exit", EXIT[kind])

    def entry(self, us: int) -> None:
        self._line(us, VCPU, VCPU_COMM, "kvm_entry", "PC: 0x0000000040000104")

    def uexit(self, us: int) -> None:
        self._line(us, VCPU, VCPU_COMM, "kvm_userspace_exit", "reason KVM_EXIT_MMIO (6)")

    def wakeup(self, us: int, ns: int) -> None:
        self._line(us, VCPU, VCPU_COMM, "kvm_vcpu_wakeup", "wait time %d ns, polling valid" % ns)

    def out(self, us: int, state: str) -> None:
        """The vCPU thread switched out (prev_state as ftrace prints it)."""
        self._line(
            us,
            VCPU,
            VCPU_COMM,
            "sched_switch",
            "prev_comm=%s prev_pid=%d prev_prio=120 prev_state=%s ==> next_comm=hog next_pid=%d next_prio=120"
            % (VCPU_COMM, VCPU, state, OTHER),
        )

    def back(self, us: int) -> None:
        """The vCPU thread switched back in (the line is the other task's)."""
        self._line(
            us,
            OTHER,
            "hog",
            "sched_switch",
            "prev_comm=hog prev_pid=%d prev_prio=120 prev_state=R+ ==> next_comm=%s next_pid=%d next_prio=120"
            % (OTHER, VCPU_COMM, VCPU),
        )

    def read(self, **kw):
        return read_stream(io.BytesIO(("\n".join(self.lines) + "\n").encode()), **kw)


def rows(result) -> Dict[str, ExitStats]:
    snap = result.snapshot
    return {label(snap.arch, k.code, k.detail): s for k, s in snap.stats.items() if k.tid == VCPU}


def test_guest_time_is_entry_to_next_exit_charged_to_that_exit():
    t = Trace()
    t.exit(1000, "DABT")  # first exit: no guest time before it
    t.entry(1010)
    t.exit(1110, "HVC")  # 100 us in the guest
    t.entry(1115)
    t.exit(1145, "WFX")  # 30 us
    t.exit(1200, "DABT")  # WFX unfinished; no entry since the last exit: no guest time
    t.entry(1300)
    got = rows(t.read())
    assert got["DABT_LOW"].guest_ns == 0
    assert got["HVC64"].guest_ns == 100 * US
    assert got["WFx"].guest_ns == 30 * US and got["WFx"].unfinished == 1
    result = t.read()
    assert "guest_ns" not in result.snapshot.unknown
    # without sched_switch or kvm_userspace_exit lines the split is unknown, never 0
    assert set(SPLIT_FIELDS) <= result.snapshot.unknown


def test_vmm_preempted_and_kernel_parts_add_up_exactly():
    t = Trace()
    t.exit(1000, "DABT")
    t.uexit(1020)  # kernel 20
    t.out(1050, "R+")  # VMM 30 on CPU
    t.back(1250)  # preempted 200
    t.entry(1300)  # VMM 50 more (back in KVM_RUN is approximated by the entry)
    result = t.read()
    st = rows(result)["DABT_LOW"]
    assert (st.total_ns, st.vmm_ns, st.preempt_ns, st.blocked_ns, st.halt_ns) == (
        300 * US,
        80 * US,
        200 * US,
        0,
        0,
    )
    assert kernel_ns(st) == 20 * US
    assert not (set(SPLIT_FIELDS) & result.snapshot.unknown)


def test_sleep_inside_a_halt_is_halt_time_and_outside_it_blocked():
    t = Trace()
    t.exit(1000, "WFX")
    t.out(1010, "S")  # the halt began at 1005 (wakeup at 1500 after 495 us)
    t.back(1490)
    t.wakeup(1500, 495 * US)
    t.out(1510, "R")  # preempted after the halt, on the way back to the guest
    t.back(1600)
    t.entry(1610)
    t.exit(2000, "DABT")
    t.out(2010, "D")  # sleeping outside any halt (a page-cache read, say)
    t.back(2110)
    t.entry(2120)
    got = rows(t.read())
    wfx, dabt = got["WFx"], got["DABT_LOW"]
    assert (wfx.halt_ns, wfx.preempt_ns, wfx.blocked_ns) == (495 * US, 90 * US, 0)
    assert kernel_ns(wfx) == 610 * US - 495 * US - 90 * US
    assert (dabt.blocked_ns, dabt.preempt_ns, kernel_ns(dabt)) == (100 * US, 0, 20 * US)


def test_preempted_before_a_halt_stays_preempted_the_sleep_in_it_is_the_halt():
    t = Trace()
    t.exit(1000, "WFX")
    t.out(1005, "R+")  # before the halt: preempted
    t.back(1100)
    t.out(1200, "S")  # inside the halt (it began at 1150)
    t.back(1400)
    t.wakeup(1450, 300 * US)
    t.entry(1460)
    st = rows(t.read())["WFx"]
    assert (st.preempt_ns, st.blocked_ns, st.halt_ns) == (95 * US, 0, 300 * US)
    assert kernel_ns(st) == 460 * US - 300 * US - 95 * US


def test_two_sleeps_inside_one_halt_are_both_halt_time():
    """A spurious wakeup inside kvm_vcpu_block: the thread sleeps twice in one halt."""
    t = Trace()
    t.exit(1000, "WFX")
    t.out(1010, "S")
    t.back(1100)
    t.out(1110, "S")
    t.back(1300)
    t.wakeup(1310, 305 * US)  # the halt began at 1005
    t.entry(1320)
    st = rows(t.read())["WFx"]
    assert (st.blocked_ns, st.preempt_ns, st.halt_ns, kernel_ns(st)) == (0, 0, 305 * US, 15 * US)


def test_the_sleep_just_before_a_wakeup_is_the_halts_own_block():
    """Without polling the halt's block begins microseconds after the halt's start, closer than
    the clocks of the kernel (ns) and of the observer (the wakeup's timestamp) agree: a last
    sleep that seems to begin just before the window is still the halt's; a preemption there is not."""
    t = Trace()
    t.exit(1000, "WFX")
    t.out(1010, "S")  # the window below seems to begin at 1012
    t.back(1400)
    t.wakeup(1412, 400 * US)
    t.entry(1420)
    t.exit(2000, "WFX")
    t.out(2010, "R+")  # preempted before the halt (it began at 2100)
    t.back(2050)
    t.wakeup(2400, 300 * US)
    t.entry(2410)
    st = rows(t.read())["WFx"]
    assert (st.blocked_ns, st.preempt_ns, st.halt_ns) == (0, 40 * US, 700 * US)


def test_parts_are_clamped_within_the_exit_time():
    """A halt reported longer than its exit (clock skew between the kernel's clock and the trace's)
    leaves no negative kernel part: halt first, within the pair's time."""
    t = Trace()
    t.exit(1000, "WFX")
    t.uexit(1001)
    t.wakeup(1100, 200 * US)
    t.entry(1100)
    st = rows(t.read())["WFx"]
    assert st.halt_ns == 100 * US and kernel_ns(st) == 0 and st.vmm_ns == 0


def test_switches_of_other_threads_and_between_exits_count_nothing():
    t = Trace()
    t.back(900)  # the vCPU thread comes on CPU with no exit open
    t.exit(1000, "HVC")
    t.entry(1010)
    t.out(1020, "R+")  # in the guest's time: not an exit's
    t.back(1100)
    t.exit(1200, "HVC")
    t.entry(1210)
    st = rows(t.read())["HVC64"]
    assert st.preempt_ns == st.blocked_ns == st.vmm_ns == 0
    assert st.guest_ns == 190 * US  # entry 1010 -> exit 1200, off CPU for part of it


def test_pid_filter_still_sees_the_other_tasks_switching_the_vcpu_back_in():
    """-t keeps one thread's kvm events; the sched_switch that brings it back is another task's
    line, and still counts (the kernel's program sees every switch too)."""
    t = Trace()
    t.exit(1000, "DABT")
    t.out(1010, "R+")
    t.back(1210)
    t.entry(1220)
    st = rows(t.read(tids=[VCPU]))["DABT_LOW"]
    assert st.preempt_ns == 200 * US


@pytest.mark.parametrize(
    "payload, want",
    [
        (
            b"prev_comm=CPU 0/KVM prev_pid=142 prev_prio=120 prev_state=R+ ==> next_comm=python3 next_pid=140 "
            b"next_prio=120",
            Switch(142, True, 140),
        ),
        (
            b"prev_comm=CPU 0/KVM prev_pid=142 prev_prio=120 prev_state=S ==> next_comm=swapper/0 next_pid=0 "
            b"next_prio=120",
            Switch(142, False, 0),
        ),
        (
            b"prev_comm=a b prev_pid=1 prev_prio=120 prev_state=R ==> next_comm=c d next_pid=2 next_prio=120",
            Switch(1, True, 2),
        ),
        (
            b"prev_comm=x prev_pid=1 prev_prio=120 prev_state=D|W ==> next_comm=y next_pid=2 next_prio=100",
            Switch(1, False, 2),
        ),
        (b"CPU 0/KVM:142 [120] R+ ==> python3:140 [120]", Switch(142, True, 140)),  # trace-cmd's plugin
        (b"CPU 0/KVM:142 [120] S ==> swapper/1:0 [120]", Switch(142, False, 0)),
        (b"no arrow here", None),
        (b"prev_comm=x prev_pid=z prev_prio=120 prev_state=R ==> next_comm=y next_pid=2 next_prio=120", None),
        (b" ==> ", None),
    ],
)
def test_sched_switch_payloads(payload, want):
    assert decode_switch(payload) == want


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_sched_switch_decoder_never_raises(payload):
    got = decode_switch(payload)
    assert got is None or isinstance(got, Switch)


def test_sched_switch_decoder_is_linear_on_hostile_lines():
    """Comms may hold spaces and arrows; the decoder splits from the right and never backtracks, so
    a 3 MB line of them is one pass (a backtracking pattern would not end; no timing here)."""
    payload = b"prev_comm=" + b" ==> prev_pid=1" * 200_000 + b" prev_pid=1 prev_prio=1 prev_state=R ==> next_pid=2"
    assert decode_switch(payload) is None  # the next part has no comm: malformed
    arrows = b"prev_comm=" + b" ==> prev_pid=1" * 200_000 + b" prev_pid=1 prev_prio=1 prev_state=R"
    assert decode_switch(arrows + b" ==> next_comm=x ==> y next_pid=2 next_prio=1") is None  # an arrow in next_comm
    assert decode_switch(arrows + b" ==> next_comm=x y next_pid=2 next_prio=1") == Switch(1, True, 2)


def test_report_shows_the_split_from_a_trace_that_has_its_events():
    t = Trace()
    t.exit(1000, "DABT")
    t.uexit(1020)
    t.out(1050, "R+")
    t.back(1250)
    t.entry(1300)
    t.exit(1400, "WFX")
    t.wakeup(1480, 50 * US)
    t.entry(1500)
    report = build_report(t.read().snapshot, label)
    from kvmexit.views import format_table

    header = format_table(report).splitlines()[0].split()
    assert header[-6:] == ["HALT%", "KERN%", "VMM%", "PREEMPT%", "BLOCKED%", "EXIT%"]


def test_real_hog_capture_equals_the_kernels_own_accounting(data_dir):
    """The hog scenario's real capture (tests/data/traces/README.md): per vCPU thread, the report's
    preempted, blocked and guest time equal the harness's own reading of the same events
    (tests/arm64/e2e_results.SplitTruth, written apart from the engine: every interval kept, halts
    by their windows), and every row's parts add up to its exit time."""
    import gzip
    import sys

    sys.path.insert(0, str(data_dir.parent / "arm64"))
    try:
        import e2e_results
    finally:
        sys.path.pop(0)
    from kvmexit.sources.trace import read_trace

    path = data_dir / "traces" / "arm64-6.1-hog.trace.gz"
    truth = e2e_results.SplitTruth(gzip.open(str(path), "rt").read())
    result = read_trace(str(path))
    assert not (set(SPLIT_FIELDS) | {"guest_ns"}) & result.snapshot.unknown
    per_tid: Dict[int, Dict[str, int]] = {}
    for key, stats in result.snapshot.stats.items():
        t = per_tid.setdefault(key.tid, {"preempt_ns": 0, "blocked_ns": 0, "guest_ns": 0})
        for f in t:
            t[f] += getattr(stats, f)
        parts = (kernel_ns(stats), stats.halt_ns, stats.vmm_ns, stats.preempt_ns, stats.blocked_ns)
        assert min(parts) >= 0 and sum(parts) == stats.total_ns
    assert set(truth.preempt_ns) == {137, 138}
    for tid in (137, 138):
        assert per_tid[tid] == {
            "preempt_ns": truth.preempt_ns[tid],
            "blocked_ns": truth.blocked_ns[tid],
            "guest_ns": truth.guest_ns[tid],
        }, tid
        assert truth.preempt_ns[tid] > 100_000_000  # the hog really preempted it


# -- the slow-exit log's split (report --slower-than on a trace with the split's events) ------------


def _slow(result_reader, threshold_ns: int = 0):
    from kvmexit.sources.trace.slow import SlowLog

    got: list = []
    result = result_reader(slow=SlowLog(threshold_ns, lambda arch, e: got.append(e)))
    return got, result


def test_a_slow_exit_carries_the_split_its_row_gets():
    t = Trace()
    t.exit(400, "WFX")
    t.out(410, "S")
    t.back(470)
    t.wakeup(480, 75 * US)  # the halt began at 405: the sleep is its own
    t.entry(500)
    t.exit(1000, "DABT")
    t.uexit(1020)  # kernel 20
    t.out(1050, "R+")  # VMM 30 on CPU
    t.back(1250)  # preempted 200
    t.out(1260, "D")  # VMM 10 more, then blocked 40 (a page-cache read in the VMM, say)
    t.back(1300)
    t.entry(1340)  # VMM 40 more
    t.exit(1400, "HVC")
    t.entry(1450)  # 50 us: not above the threshold
    got, result = _slow(t.read, 90 * US)
    wfx, dabt = got
    assert (dabt.duration_ns, dabt.vmm_ns, dabt.preempt_ns, dabt.blocked_ns, dabt.halt_ns, dabt.kernel_ns) == (
        340 * US,
        80 * US,
        200 * US,
        40 * US,
        0,
        20 * US,
    )
    # the WFx exit came before the trace's first kvm_userspace_exit: its VMM part is unknown
    assert (wfx.duration_ns, wfx.halt_ns, wfx.vmm_ns, wfx.preempt_ns, wfx.blocked_ns, wfx.kernel_ns) == (
        100 * US,
        75 * US,
        None,
        0,
        0,
        None,
    )
    row = rows(result)["DABT_LOW"]
    assert (row.vmm_ns, row.preempt_ns, row.blocked_ns, kernel_ns(row)) == (
        dabt.vmm_ns,
        dabt.preempt_ns,
        dabt.blocked_ns,
        dabt.kernel_ns,
    )


def test_before_the_traces_first_split_events_a_slow_exits_parts_are_unknown_not_zero():
    """The log is written as the trace is read: a part is known from its event's first line on (as
    halted time from the first kvm_vcpu_wakeup), so an exit before it says -, null."""
    import jsonschema

    from kvmexit.views.slow import format_slow, slow_document, slow_schema

    t = Trace()
    t.exit(1000, "HVC")
    t.entry(1100)  # no sched_switch, kvm_userspace_exit or wakeup yet
    t.exit(1200, "DABT")
    t.out(1210, "R+")
    t.back(1260)
    t.entry(1300)  # a switch seen: preempted and blocked known, VMM not yet
    t.exit(1400, "DABT")
    t.uexit(1410)
    t.entry(1500)
    got, _ = _slow(t.read)
    first, second, third = got
    assert (first.vmm_ns, first.preempt_ns, first.blocked_ns, first.kernel_ns) == (None, None, None, None)
    assert (second.preempt_ns, second.blocked_ns, second.vmm_ns, second.kernel_ns) == (50 * US, 0, None, None)
    assert (third.preempt_ns, third.blocked_ns, third.vmm_ns) == (0, 0, 90 * US)
    assert third.halt_ns is None and third.kernel_ns is None  # no kvm_vcpu_wakeup in this trace
    assert "(halted -) pc" in format_slow("arm64", first)
    assert "(kernel -, vmm -, halted -, preempted 50us, blocked 0ns) pc" in format_slow("arm64", second)
    for e in got:
        doc = slow_document("arm64", e)
        jsonschema.validate(doc, slow_schema(doc["schema"]))
    assert slow_document("arm64", second)["vmm_ns"] is None and slow_document("arm64", second)["preempt_ns"] == 50 * US


def test_real_hog_capture_each_slow_exits_split_equals_the_kernels_own_events(data_dir):
    """On the hog scenario's real capture, every pair (threshold 0) is logged with preempted and
    blocked time equal to the harness's own reading of that exit's sched_switch lines
    (e2e_results.SplitTruth.per_exit, written apart from the engine), all parts known and adding
    up to its duration; per thread they sum to the report's rows."""
    import gzip
    import sys

    import jsonschema

    from kvmexit.sources.trace import read_trace
    from kvmexit.views.slow import format_slow, slow_document, slow_schema

    sys.path.insert(0, str(data_dir.parent / "arm64"))
    try:
        import e2e_results
    finally:
        sys.path.pop(0)
    path = data_dir / "traces" / "arm64-6.1-hog.trace.gz"
    truth = e2e_results.SplitTruth(gzip.open(str(path), "rt").read())
    got, result = _slow(lambda **kw: read_trace(str(path), **kw))
    assert len(got) == len(truth.per_exit) > 100
    sums: Dict[int, Dict[str, int]] = {}
    preempted = known = 0
    text = gzip.open(str(path), "rt").read()
    first = {  # the trace's first line of each event (the log knows its part from there on)
        ev: min(
            int(m.group(1)) * 10**9 + int(m.group(2)) * 1000 for m in re.finditer(r" (\d+)\.(\d{6}): %s:" % ev, text)
        )
        for ev in ("sched_switch", "kvm_userspace_exit", "kvm_vcpu_wakeup")
    }
    for e in got:
        duration, preempt, blocked = truth.per_exit[e.tid, e.time_ns]
        entry = e.time_ns + e.duration_ns
        assert (e.preempt_ns is None, e.vmm_ns is None, e.halt_ns is None) == tuple(
            entry < first[ev] for ev in ("sched_switch", "kvm_userspace_exit", "kvm_vcpu_wakeup")
        ), e
        assert (e.duration_ns, e.preempt_ns, e.blocked_ns) == (duration, preempt, blocked), e
        s = sums.setdefault(e.tid, {"vmm_ns": 0, "preempt_ns": 0, "blocked_ns": 0, "halt_ns": 0})
        for f in s:
            s[f] += getattr(e, f) or 0  # unknown before its event's first line: no such time there
        doc = slow_document("arm64", e)
        jsonschema.validate(doc, slow_schema(doc["schema"]))
        assert ("(kernel " in format_slow("arm64", e)) == (e.preempt_ns is not None)
        if e.kernel_ns is None:
            continue
        assert e.kernel_ns >= 0 and e.kernel_ns + e.vmm_ns + e.halt_ns + e.preempt_ns + e.blocked_ns == e.duration_ns
        known += 1
        preempted += e.preempt_ns > 0
    assert preempted > 10 and known > 100  # the hog preempted many
    for tid, s in sums.items():
        rows_of_tid = [st for k, st in result.snapshot.stats.items() if k.tid == tid]
        assert s == {f: sum(getattr(st, f) for st in rows_of_tid) for f in s}, tid


def test_a_record_header_listing_the_split_events_makes_them_known_from_the_start(data_dir):
    """`kvmexit record --split` names the events it enabled in its header: the log then knows every
    part from the first exit on (an exit before the first sched_switch had none), and the report's
    parts too (as live --split knows them from attaching, even where none fired)."""
    import gzip

    from kvmexit.sources.trace import read_stream

    text = gzip.open(str(data_dir / "traces" / "arm64-6.1-hog.trace.gz"), "rb").read()
    header = (
        b"# kvmexit record: layout=arm64 kernel=6.1.0-18-arm64 events=kvm_exit,kvm_entry,kvm_vcpu_wakeup,"
        b"sched:sched_process_exit,sched:sched_switch,kvm:kvm_userspace_exit instance=kvmexit-1\n"
    )
    got, result = _slow(lambda **kw: read_stream(io.BytesIO(header + text), **kw))
    plain, _ = _slow(lambda **kw: read_stream(io.BytesIO(text), **kw))
    assert len(got) == len(plain) > 100
    for e, p in zip(got, plain):
        assert e.kernel_ns is not None and e.kernel_ns >= 0, e
        assert e.kernel_ns + e.vmm_ns + e.halt_ns + e.preempt_ns + e.blocked_ns == e.duration_ns
        for f in ("halt_ns", "vmm_ns", "preempt_ns", "blocked_ns"):  # where both know, the same
            assert getattr(p, f) is None or getattr(p, f) == getattr(e, f), (f, e, p)
    assert not set(SPLIT_FIELDS) & result.snapshot.unknown and result.snapshot.halt_known
    # Without sched_switch in its list (record without --split) and no line of it: unknown.
    bare = b"# kvmexit record: layout=arm64 kernel=6.1.0 events=kvm_exit,kvm_entry instance=x\n"
    t = Trace()
    t.exit(1000, "HVC")
    t.entry(1100)
    snap = read_stream(io.BytesIO(bare + ("\n".join(t.lines) + "\n").encode())).snapshot
    assert set(SPLIT_FIELDS) <= snap.unknown and not snap.halt_known


def test_an_abandoned_exits_guest_time_is_in_its_sub_reason_row_too():
    """The stay in the guest before an exit whose thread then dies (abandoned) is charged to the
    exit's row and, when the exit has a sub-reason, to that sub-reason's row too (as an unfinished
    exit's is), so that the sub-reason rows and the rest add up to the reason's row in guest time as
    well. (Seen on the emulated hosts: `report --sub` of the hog scenario's `kvmexit record` lost
    the stay before each vCPU's last, "done", MMIO exit.)"""
    from kvmexit.reasons.subreasons import sub_label

    t = Trace()
    t.exit(1000, "DABT")
    t.entry(1010)
    t.exit(1110, "HVC")  # 100 us in the guest; the thread dies before its entry
    t._line(1111, VCPU, VCPU_COMM, "kvm_hvc_arm64", "HVC at 0x0000000040000040 (r0: 0x84000000, imm: 0x0)")
    t._line(1200, VCPU, VCPU_COMM, "sched_process_exit", "comm=%s pid=%d prio=120 group_dead=0" % (VCPU_COMM, VCPU))
    result = t.read()
    assert rows(result)["HVC64"].abandoned == 1 and rows(result)["HVC64"].guest_ns == 100 * US
    report = build_report(result.snapshot, label, by_sub=True, sub_label=sub_label)
    hvc = [(r.sub, r.stats.abandoned, r.stats.guest_ns) for r in report.rows if r.reason == "HVC64"]
    assert hvc == [("PSCI_VERSION", 1, 100 * US)]
