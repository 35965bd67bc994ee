"""The slow-exit log's kernel side (--slower-than), for real through BPF_PROG_TEST_RUN: exits above
the threshold are sent with their PC and ESR, those below are not, and a full perf buffer's drops
are counted."""

from __future__ import annotations

import ctypes
import os
import threading
import time
from typing import List

import pytest
from test_live_bpf import EC_DABT_LOW, EC_HVC64, EC_SYS64, FORMATS, TRAP, Driver

from bpf_testrun import test_run_raw
from kvmexit.layouts import detect
from kvmexit.model import SlowExit, is_slower
from kvmexit.sources.live import LiveSource, render_program

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("bpf_env")]

#: Far above what an immediate exit -> entry takes through test runs, even on a loaded machine.
THRESHOLD_NS = 30_000_000
SLOW_SLEEP_S = 0.06


class SlowDriver(Driver):
    def __init__(self, layout_name: str = "arm64", **options) -> None:
        self.events: List[SlowExit] = []
        super().__init__(detect(FORMATS[layout_name]), on_slow=lambda arch, e: self.events.append(e), **options)
        raw = self.source.bpf.RAW_TRACEPOINT
        for _tp, fn in (("", "kvmexit_esr_sysreg"), ("", "kvmexit_esr_fault")):
            self.fds[fn] = self.source.bpf.load_func(fn, raw).fd

    def pair(self, ec: int, pc: int, seconds: float = 0.0, esr_event: tuple = ()) -> None:
        self.exit(TRAP, ec, pc)
        if esr_event:
            test_run_raw(self.fds[esr_event[0]], *esr_event[1:])
        if seconds:
            time.sleep(seconds)
        self.entry()


def test_only_exits_above_the_threshold_are_logged_with_pc_and_esr():
    d = SlowDriver(slow_ns=THRESHOLD_NS)
    try:
        tid = threading.get_native_id()
        d.pair(EC_HVC64, 0x4000_1000)  # fast
        d.pair(EC_HVC64, 0x4000_2000, SLOW_SLEEP_S)  # slow, EC only
        sys64_esr = (EC_SYS64 << 26) | (1 << 25) | 0x30_2C0D  # an MSR/MRS trap with its ISS
        d.pair(EC_SYS64, 0x4000_3000, SLOW_SLEEP_S, ("kvmexit_esr_sysreg", sys64_esr))
        abort_esr = (EC_DABT_LOW << 26) | (1 << 25) | 0x46
        d.pair(EC_DABT_LOW, 0x4000_4000, 0.0, ("kvmexit_esr_fault", 0x4000_4000, abort_esr, 0, 0x900_0000))  # fast
        d.pair(EC_HVC64, 0x4000_5000)  # fast
        d.source.poll(100)
        assert [(e.pc, e.detail) for e in d.events] == [(0x4000_2000, EC_HVC64), (0x4000_3000, EC_SYS64)]
        hvc, sys64 = d.events
        assert (hvc.tid, hvc.code, hvc.esr, hvc.esr_whole) == (tid, TRAP, EC_HVC64 << 26, False)
        assert (sys64.esr, sys64.esr_whole) == (sys64_esr, True)
        for e in d.events:
            assert is_slower(e.duration_ns, THRESHOLD_NS) and e.duration_ns >= SLOW_SLEEP_S * 1e9
            assert e.halt_ns == 0 and e.sub == 0
        assert abs(hvc.wall - time.time()) < 60
        assert (d.source.slow_seen, d.source.slow_lost) == (2, 0)
        # The log adds to the statistics, it takes nothing from them: every pair is counted.
        assert sum(s.pairs for s in d.snapshot().stats.values()) == 5
    finally:
        d.close()


def test_a_slow_exit_is_named_as_the_kernel_named_its_thread_even_after_the_thread_is_gone():
    """The event carries the slot's comm: read after the vCPU thread ended (a short-lived VMM, a
    loaded host), its line still says which vCPU it was, not '' from a /proc that has no thread."""
    libc = ctypes.CDLL(None, use_errno=True)
    d = SlowDriver(slow_ns=THRESHOLD_NS)
    try:
        tids: List[int] = []

        def vcpu() -> None:
            libc.prctl(15, b"CPU 3/KVM", 0, 0, 0)  # PR_SET_NAME, as QEMU names its vCPU threads
            tids.append(threading.get_native_id())
            d.pair(EC_HVC64, 0x4000_2000, SLOW_SLEEP_S)

        t = threading.Thread(target=vcpu)
        t.start()
        t.join()
        task = "/proc/%d/task/%d" % (os.getpid(), tids[0])
        for _ in range(100):  # join() returns before the kernel has reaped the thread
            if not os.path.exists(task):
                break
            time.sleep(0.01)
        assert not os.path.exists(task)
        d.source.poll(100)
        assert [(e.tid, e.thread.comm, e.thread.vcpu) for e in d.events] == [(tids[0], "CPU 3/KVM", 3)]
    finally:
        d.close()


def test_a_full_perf_buffer_drops_are_counted_not_silent():
    # Threshold 0: every pair is slow; one page per CPU holds a few dozen events, and nothing
    # reads the buffer while 400 are sent.
    d = SlowDriver(slow_ns=0, slow_pages=1)
    try:
        sent = 400

        def vcpu() -> None:
            os.sched_setaffinity(0, {cpu})  # one CPU, one buffer: this thread only
            for i in range(sent):
                d.pair(EC_HVC64, 0x1000 + 4 * i)

        def one_more() -> None:
            os.sched_setaffinity(0, {cpu})
            d.pair(EC_HVC64, 0x2000)

        cpu = min(os.sched_getaffinity(0))

        t = threading.Thread(target=vcpu)
        t.start()
        t.join()
        d.source.poll(50)
        # The kernel reports a gap with the next event that fits after it: send one more.
        t = threading.Thread(target=one_more)
        t.start()
        t.join()
        d.source.poll(50)
        assert d.source.slow_lost > 0
        assert d.source.slow_seen == len(d.events) > 1
        assert d.source.slow_seen + d.source.slow_lost == sent + 1
    finally:
        d.close()


@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize("options", [{}, {"split": True, "guest": True, "subreasons": True}], ids=["log", "all"])
def test_every_arm64_variant_with_the_log_passes_the_verifier(name, options):
    d = SlowDriver(name, slow_ns=1000, tids=[1], **options)
    d.close()


def test_default_program_has_none_of_it():
    layout = detect(FORMATS["arm64"])
    default = render_program(layout)
    assert not any("SLOW" in f for f in default.cflags)
    assert all(fn not in {a[2] for a in default.attach} for fn in ("kvmexit_esr_sysreg", "kvmexit_esr_fault"))
    logged = render_program(layout, slow_ns=5000)
    assert {"-DSLOW_LOG", "-DSLOW_NS=5000ULL", "-DEXIT_PC_ARG=2"} <= set(logged.cflags)


def test_synthetic_x86_sends_rip_and_exit_qualification():
    events: List[SlowExit] = []
    src = LiveSource(
        detect_x86(), attach=False, synthetic_x86=True, slow_ns=THRESHOLD_NS, on_slow=lambda arch, e: events.append(e)
    )
    src.open()
    try:
        raw = src.bpf.RAW_TRACEPOINT
        ex, en = src.bpf.load_func("kvmexit_exit", raw).fd, src.bpf.load_func("kvmexit_entry", raw).fd
        test_run_raw(ex, 48, 0, 0xFFFF_8000_0000_1234, 0x181)  # EPT_VIOLATION, rip, qualification
        time.sleep(SLOW_SLEEP_S)
        test_run_raw(en, 0)
        src.poll(100)
        assert [(e.code, e.pc, e.esr, e.esr_whole) for e in events] == [(48, 0xFFFF_8000_0000_1234, 0x181, True)]
    finally:
        src.close()


def detect_x86():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "data" / "formats" / "x86-6.18"
    return detect({ev: (root / ev / "format").read_text() for ev in ("kvm_exit", "kvm_entry")})
