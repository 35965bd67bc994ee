"""``--vm NAME`` learns VMs that start after kvmexit, in the kernel's filter: real programs driven
through BPF_PROG_TEST_RUN by fake VMM processes (tests/fake_kvm.py) named like QEMU guests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import pytest

from fake_kvm import ARM64_FORMATS, FakeVmm
from kvmexit.layouts import detect
from kvmexit.model import Snapshot
from kvmexit.reasons import label

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("bpf_env")]

EC_WFX, EC_HVC64, EC_SYS64 = 0x01, 0x16, 0x18
PLAN = [(0, EC_HVC64, 7, 0, 0), (1, EC_SYS64, 5, 0, 0)]
PLAN_EXITS = 12
OTHER_PLAN = [(0, EC_WFX, 11, 0, 0)]


class Learning:
    """kvmexit's programs loaded with ``--vm later-vm`` (no such VM runs), not attached to kvm;
    sched_process_exit is attached, as kvmexit does with --vm."""

    def __init__(self) -> None:
        from kvmexit.sources.live import LiveSource

        self.source = LiveSource(detect(dict(ARM64_FORMATS)), vms=["later-vm"], attach=False).open()
        bpf = self.source.bpf
        self.fds = {
            fn: bpf.load_func(fn, bpf.RAW_TRACEPOINT).fd for fn in ("kvmexit_exit", "kvmexit_entry", "kvmexit_wakeup")
        }
        bpf.attach_raw_tracepoint(tp="sched_process_exit", fn_name="kvmexit_proc_exit")

    def verdicts(self) -> Dict[int, int]:
        table = self.source.bpf["tgid_filter"]
        return {k.value: v.value for k, v in table.items()}

    def tgids_in_maps(self) -> set:
        bpf = self.source.bpf
        slots = {v.tgid for v in bpf["threads"].values()}
        return slots | {k.tgid for k in bpf["stats"].keys()}

    def close(self) -> None:
        self.source.close()


@pytest.fixture
def learning():
    d = Learning()
    yield d
    d.close()


def counts(snap: Snapshot, tgid: int) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for k, s in snap.stats.items():
        if k.tgid == tgid:
            name = label(snap.arch, k.code, k.detail)
            out[name] = out.get(name, 0) + s.exits
    return out


def test_a_vm_started_later_is_traced_from_its_first_exit_and_another_is_not(learning):
    assert any("no VM named later-vm runs yet" in n for n in learning.source.notes)
    vm = FakeVmm(learning.fds, PLAN, "later-vm")
    other = FakeVmm(learning.fds, OTHER_PLAN, "other-vm")
    try:
        # Both sent everything before kvmexit read a name: traced provisionally so far.
        assert {vm.pid, other.pid} <= learning.tgids_in_maps()
        learning.source.poll(100)  # the live loop: new-thread notifications, names, verdicts
        assert learning.verdicts() == {vm.pid: 1, other.pid: 2}
        snap = learning.source.snapshot()
        # Nothing of the named VM lost (its first exits came before its verdict) ...
        assert counts(snap, vm.pid) == {"HVC64": 7, "SYS64": 5}
        assert {snap.thread_of(k).vm for k in snap.stats} == {"later-vm"}
        # ... nothing of the other counted, and what it made before its verdict is counted as left out.
        assert counts(snap, other.pid) == {}
        assert other.pid not in learning.tgids_in_maps()
        assert learning.source.vm_filter.excluded == {"other": 11, "unnamed": 0}
        # Once judged, the kernel keeps the other out by itself and keeps the VM in.
        vm.again()
        other.again()
        assert other.pid not in learning.tgids_in_maps()
        snap = learning.source.snapshot()
        assert counts(snap, vm.pid) == {"HVC64": 14, "SYS64": 10}
        assert learning.source.vm_filter.excluded == {"other": 11, "unnamed": 0}
    finally:
        vm.close()
        other.close()
    # A process's verdict ends with it (its pid may come back as another program).
    deadline = time.monotonic() + 5
    while learning.verdicts() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert learning.verdicts() == {}


def test_a_process_gone_before_its_name_was_read_is_left_out_and_counted(learning):
    ex, en = learning.fds["kvmexit_exit"], learning.fds["kvmexit_entry"]
    code = (
        "import sys; sys.path.insert(0, %r); from bpf_testrun import test_run_raw\n"
        "for _ in range(3):\n    test_run_raw(%d, 2, 0x16, 0); test_run_raw(%d, 0)\n"
    ) % (str(Path(__file__).resolve().parent.parent), ex, en)
    # Named like the VM asked for, but it has ended before kvmexit could read that name.
    subprocess.run([sys.executable, "-c", code, "-name", "guest=later-vm"], pass_fds=(ex, en), check=True)
    snap = learning.source.snapshot()
    assert snap.stats == {}
    assert learning.source.vm_filter.excluded == {"other": 0, "unnamed": 3}


def test_program_with_vm_names_learns_and_without_does_not():
    from kvmexit.sources.live import render_program

    layout = detect(dict(ARM64_FORMATS))
    learn = render_program(layout, learn_tgids=True)
    assert {"-DFILTER_TGID", "-DFILTER_LEARN"} <= set(learn.cflags)
    assert ("raw", "sched:sched_process_exit", "kvmexit_proc_exit") in learn.attach
    pids_only = render_program(layout, filter_tgids=True)
    assert "-DFILTER_LEARN" not in pids_only.cflags
    assert all(fn != "kvmexit_proc_exit" for _, _, fn in pids_only.attach)


def _wait_threads_gone(pid: int, timeout: float = 5.0) -> None:
    """Until the process has only its main thread left: Python's join() returns before the
    kernel has taken an ended thread out of /proc (CI saw one still there once, under load)."""
    deadline = time.monotonic() + timeout
    while len(os.listdir("/proc/%d/task" % pid)) > 1:
        assert time.monotonic() < deadline, "threads of %d did not end" % pid
        time.sleep(0.01)


def test_name_caches_hold_only_what_runs_and_exited_threads_keep_their_names():
    """Days of churn: the tid/tgid name caches shrink back when processes exit, while the rows of
    exited threads keep the names they had (a reused tid or pid must not rename them)."""
    from kvmexit.sources.live import LiveSource

    source = LiveSource(detect(dict(ARM64_FORMATS)), attach=False).open()
    try:
        bpf = source.bpf
        fds = {
            fn: bpf.load_func(fn, bpf.RAW_TRACEPOINT).fd for fn in ("kvmexit_exit", "kvmexit_entry", "kvmexit_wakeup")
        }
        first = FakeVmm(fds, [(i, EC_HVC64, 2, 0, 0) for i in range(8)], "churn-vm")
        source.poll(100)
        _wait_threads_gone(first.pid)
        snap = source.snapshot()  # its vCPU threads have exited: their rows keep their names
        assert {snap.thread_of(k).vm for k in snap.stats} == {"churn-vm"}
        assert source.resolver.cached() == 0 and len(source._threads) == 0
        first.close()
        second = FakeVmm(fds, [(0, EC_SYS64, 3, 0, 0)], "next-vm")
        try:
            source.poll(100)
            snap = source.snapshot()
            names = {(snap.thread_of(k).vm, snap.thread_of(k).vcpu) for k in snap.stats}
            assert names == {("churn-vm", i) for i in range(8)} | {("next-vm", 0)}
            # What is cached: at most the VMM that runs and its vCPU thread (it may not be reaped yet).
            assert source.resolver.cached() <= 2 and len(source._threads) <= 1
        finally:
            second.close()
        snap = source.snapshot()
        assert source.resolver.cached() == 0 and len(source._threads) == 0
        assert len(snap.retired_threads) == 9
    finally:
        source.close()


def test_a_vm_that_lives_a_fifth_of_a_second_is_named_and_kept(learning):
    """A VMM that exits by itself 0.2 s after its exits, while the live loop waits as it does
    (50 ms at a time, handling notifications): named from its first exit's notification, so
    --vm keeps its exits and the report names them after it is gone."""
    ex, en = learning.fds["kvmexit_exit"], learning.fds["kvmexit_entry"]
    code = (
        "import sys, time; sys.path.insert(0, %r); from bpf_testrun import test_run_raw\n"
        "for _ in range(5):\n    test_run_raw(%d, 2, 0x16, 0); test_run_raw(%d, 0)\n"
        "time.sleep(0.2)\n"
    ) % (str(Path(__file__).resolve().parent.parent), ex, en)
    brief = subprocess.Popen([sys.executable, "-c", code, "-name", "guest=later-vm"], pass_fds=(ex, en))
    while brief.poll() is None:
        learning.source.wait(0.05)
    snap = learning.source.snapshot()
    assert {snap.thread_of(k).vm for k in snap.stats} == {"later-vm"}
    assert sum(s.exits for k, s in snap.stats.items() if k.tgid == brief.pid) == 5
    assert learning.source.vm_filter.excluded == {"other": 0, "unnamed": 0}
