"""The kernel side, for real: compile, verify, attach, and drive the pairing logic of every
layout through this kernel with BPF_PROG_TEST_RUN, then read the real maps back.

x86's production programs are perf-tracepoint programs, which BPF_PROG_TEST_RUN cannot run; the
x86 pairing is driven through the same C compiled with SYNTHETIC_X86 (a raw tracepoint taking
exit_reason and isa as arguments). The production x86 variant is compiled, verified and attached.
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, Tuple

import pytest

from bpf_testrun import test_run_raw
from kvmexit.layouts import Layout, detect
from kvmexit.model import ExitKey, Snapshot, hist_slot
from kvmexit.reasons import label

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("bpf_env")]

COMMON = (
    "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n"
    "\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n"
    "\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n"
    "\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n"
)


def fmt(*fields: Tuple[str, int, int]) -> str:
    body = "".join("\tfield:%s;\toffset:%d;\tsize:%d;\tsigned:0;\n" % f for f in fields)
    return "name: x\nID: 1\nformat:\n" + COMMON + body + '\nprint fmt: ""\n'


FORMATS: Dict[str, Dict[str, str]] = {
    "arm64": {
        "kvm_exit": fmt(("int ret", 8, 4), ("unsigned int esr_ec", 12, 4), ("unsigned long vcpu_pc", 16, 8)),
        "kvm_entry": fmt(("unsigned long vcpu_pc", 8, 8)),
    },
    "arm64-4.19": {
        "kvm_exit": fmt(("int idx", 8, 4), ("unsigned int exit_reason", 12, 4), ("unsigned long vcpu_pc", 16, 8)),
        "kvm_entry": fmt(("unsigned long vcpu_pc", 8, 8)),
    },
    "arm64-openeuler-5.10": {
        "kvm_exit": fmt(("unsigned int vcpu_id", 8, 4), ("int ret", 12, 4), ("unsigned long vcpu_pc", 16, 8)),
        "kvm_entry": fmt(("unsigned int vcpu_id", 8, 4), ("unsigned long vcpu_pc", 16, 8)),
        "kvm_trap_enter": fmt(("unsigned int vcpu_id", 8, 4), ("unsigned int esr_ec", 12, 4)),
    },
}

TRAP, IRQ = 2, 0
SERROR = 1 << 31
EC_WFX, EC_HVC64, EC_SYS64, EC_DABT_LOW = 0x01, 0x16, 0x18, 0x24


def live_layout() -> Layout:
    from kvmexit.commands.live import detect_layout

    return detect_layout(None)


class Driver:
    """Loads a layout's programs without attaching and feeds them synthetic events."""

    def __init__(self, layout: Layout, **options) -> None:
        from kvmexit.sources.live import LiveSource

        self.layout = layout
        synthetic = layout.arch == "x86"
        self.source = LiveSource(layout, attach=False, synthetic_x86=synthetic, **options).open()
        bpf = self.source.bpf
        raw = bpf.RAW_TRACEPOINT
        self.fds = {
            fn: bpf.load_func(fn, raw).fd for kind, _, fn in self.source.program.attach if kind == "raw" or synthetic
        }

    def exit(self, *args: int) -> None:
        test_run_raw(self.fds["kvmexit_exit"], *args)

    def arm64_exit(self, ret: int, ec: int) -> None:
        """Arguments in the layout's raw-tracepoint order."""
        if self.layout.name == "arm64-openeuler-5.10":
            self.exit(0, ret & 0xFFFFFFFF, 0x1000)
        else:
            self.exit(ret & 0xFFFFFFFF, ec, 0x1000)

    def trap(self, ec: int) -> None:
        test_run_raw(self.fds["kvmexit_trap"], 0, ec)

    def entry(self) -> None:
        test_run_raw(self.fds["kvmexit_entry"], 0x1000)

    def wakeup(self, ns: int) -> None:
        test_run_raw(self.fds["kvmexit_wakeup"], ns, 1, 1)

    def snapshot(self) -> Snapshot:
        return self.source.snapshot()

    def close(self) -> None:
        self.source.close()


@pytest.fixture
def arm64():
    d = Driver(detect(FORMATS["arm64"]))
    yield d
    d.close()


def by_label(snap: Snapshot, tid: int) -> Dict[str, Tuple[int, int, int, int]]:
    """{label: (exits, pairs, open, unfinished)} for one thread."""
    out = {}
    for k, s in snap.stats.items():
        if k.tid == tid:
            out[label(snap.arch, k.code, k.detail)] = (s.exits, s.pairs, s.open, s.unfinished)
    return out


def snapshot_once_reaped(source):
    """A snapshot taken once an ended thread's open exit shows as abandoned (the kernel reaps the
    task a moment after the thread ends), or after 5 s."""
    deadline = time.monotonic() + 5
    snap = source.snapshot()
    while snap.health.abandoned == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
        snap = source.snapshot()
    return snap


def in_thread(fn, *args):
    """Run fn in a new thread (a new tid for bpf_get_current_pid_tgid) and return that tid."""
    box = {}

    def body():
        box["tid"] = threading.get_native_id()
        fn(*args)

    t = threading.Thread(target=body)
    t.start()
    t.join()
    return box["tid"]


# -- compile, verify, attach --------------------------------------------------------------------


def prog_names() -> str:
    return subprocess.run(["bpftool", "prog", "list"], capture_output=True, text=True, check=True).stdout


def kvmexit_programs_after_release(timeout: float = 5.0) -> str:
    """The kernel frees a closed program after an RCU grace period, so poll briefly."""
    deadline = time.monotonic() + timeout
    while True:
        left = [ln for ln in prog_names().splitlines() if "kvmexit_" in ln]
        if not left or time.monotonic() > deadline:
            return "\n".join(left)
        time.sleep(0.05)


def test_production_program_attaches_here_and_detaches_cleanly():
    from kvmexit.sources.live import LiveSource

    layout = live_layout()
    before = bpf_descriptors_of_this_process()
    src = LiveSource(layout).open()
    try:
        listing = prog_names()
        assert "kvmexit_exit" in listing and "kvmexit_entry" in listing
        assert new_descriptors(before)
    finally:
        src.close()
    # This process's programs and attachments only: other processes may trace at the same time.
    assert new_descriptors(before) == set()


@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize("filters", [False, True])
def test_every_arm64_variant_compiles_and_passes_the_verifier(name, filters):
    opts = {"tgids": [1], "tids": [1], "vms": ["vm"]} if filters else {}  # --vm: FILTER_LEARN
    d = Driver(detect(FORMATS[name]), **opts)
    try:
        assert set(d.fds) >= {"kvmexit_exit", "kvmexit_entry", "kvmexit_wakeup"}
        assert ("kvmexit_proc_exit" in d.fds) == filters
        if name == "arm64-openeuler-5.10":
            assert "kvmexit_trap" in d.fds
    finally:
        d.close()


def test_x86_tracepoint_variant_loads_as_tracepoint_program():
    from kvmexit.sources.live import LiveSource

    src = LiveSource(live_layout(), attach=False).open()
    try:
        for fn in ("kvmexit_exit", "kvmexit_entry"):
            assert src.bpf.load_func(fn, src.bpf.TRACEPOINT).fd > 0
    finally:
        src.close()


# -- pairing, through the real kernel -----------------------------------------------------------


def test_irq_and_trap_are_told_apart_despite_a_stale_class(arm64):
    tid = threading.get_native_id()
    arm64.arm64_exit(IRQ, EC_HVC64)  # raw esr_ec is stale on IRQ exits
    arm64.entry()
    for _ in range(3):
        arm64.arm64_exit(TRAP, EC_WFX)
        arm64.entry()
    arm64.arm64_exit(SERROR | TRAP, EC_DABT_LOW)
    arm64.entry()
    got = by_label(arm64.snapshot(), tid)
    assert got == {"IRQ": (1, 1, 0, 0), "WFx": (3, 3, 0, 0), "DABT_LOW+SERROR": (1, 1, 0, 0)}


def test_unpaired_entries_open_exits_and_unfinished_exits(arm64):
    tid = threading.get_native_id()
    arm64.entry()  # no exit before it
    arm64.entry()
    arm64.arm64_exit(TRAP, EC_SYS64)
    arm64.arm64_exit(TRAP, EC_HVC64)  # the SYS64 exit never saw its entry
    arm64.entry()
    arm64.arm64_exit(TRAP, EC_WFX)  # still open when the snapshot is taken
    snap = arm64.snapshot()
    assert by_label(snap, tid) == {"SYS64": (1, 0, 0, 1), "HVC64": (1, 1, 0, 0), "WFx": (1, 0, 1, 0)}
    assert snap.health.unpaired_entries == 2
    sys64 = next(s for k, s in snap.stats.items() if k.tid == tid and k.detail == EC_SYS64)
    assert sys64.min_ns is None and sys64.total_ns == 0  # no time from an exit without entry


def test_times_are_measured_from_exit_to_entry(arm64):
    tid = threading.get_native_id()
    for pause in (0.002, 0.05):  # far apart, so a loaded machine cannot swap them
        arm64.arm64_exit(TRAP, EC_HVC64)
        time.sleep(pause)
        arm64.entry()
    st = next(s for k, s in arm64.snapshot().stats.items() if k.tid == tid)
    assert st.pairs == 2
    assert 2_000_000 <= st.min_ns < 50_000_000 <= st.max_ns < 10_000_000_000
    assert st.total_ns == st.min_ns + st.max_ns
    assert sum(st.hist) == 2
    assert st.hist[hist_slot(st.min_ns)] >= 1 and st.hist[hist_slot(st.max_ns)] >= 1


def test_halt_time_reported_by_kvm_vcpu_wakeup_is_kept(arm64):
    tid = threading.get_native_id()
    arm64.arm64_exit(TRAP, EC_WFX)
    arm64.wakeup(5000)
    arm64.wakeup(7000)
    arm64.entry()
    arm64.wakeup(1_000_000)  # outside any exit: ignored
    st = next(s for k, s in arm64.snapshot().stats.items() if k.tid == tid)
    assert st.halt_ns == 12000


def test_threads_are_kept_apart(arm64):
    def vcpu(n_wfx, n_hvc):
        for _ in range(n_wfx):
            arm64.arm64_exit(TRAP, EC_WFX)
            arm64.entry()
        for _ in range(n_hvc):
            arm64.arm64_exit(TRAP, EC_HVC64)
            arm64.entry()

    tids = [in_thread(vcpu, 3, 5), in_thread(vcpu, 7, 0), in_thread(vcpu, 0, 11)]
    snap = arm64.snapshot()
    assert by_label(snap, tids[0]) == {"WFx": (3, 3, 0, 0), "HVC64": (5, 5, 0, 0)}
    assert by_label(snap, tids[1]) == {"WFx": (7, 7, 0, 0)}
    assert by_label(snap, tids[2]) == {"HVC64": (11, 11, 0, 0)}


def test_open_exit_of_an_exited_thread_is_abandoned_not_leaked(arm64):
    tid = in_thread(arm64.arm64_exit, TRAP, EC_WFX)  # the thread exits with its exit open
    snap = snapshot_once_reaped(arm64)
    assert snap.health.abandoned == 1
    assert by_label(snap, tid) == {"WFx": (1, 0, 0, 0)}  # (exits, pairs, open, unfinished)
    assert [s.abandoned for k, s in snap.stats.items() if k.tid == tid] == [1]
    assert len(arm64.source.bpf["threads"]) == 0
    assert arm64.snapshot().health.abandoned == 1  # counted once


def test_thread_churn_leaves_no_slots_behind(arm64):
    def short_lived_vcpu():
        arm64.arm64_exit(TRAP, EC_HVC64)
        arm64.entry()

    tids = [in_thread(short_lived_vcpu) for _ in range(40)]
    deadline = time.monotonic() + 5
    while len(arm64.source.bpf["threads"]) and time.monotonic() < deadline:
        arm64.source.sweep()
        time.sleep(0.02)
    assert len(arm64.source.bpf["threads"]) == 0
    snap = arm64.snapshot()
    assert snap.health.abandoned == 0
    assert sum(s.pairs for k, s in snap.stats.items() if k.tid in tids) == 40


def test_full_start_map_is_counted():
    d = Driver(detect(FORMATS["arm64"]), max_threads=2)
    try:
        gate = threading.Event()
        exited = threading.Semaphore(0)

        def hold_open():
            d.arm64_exit(TRAP, EC_WFX)
            exited.release()
            gate.wait(10)

        threads = [threading.Thread(target=hold_open) for _ in range(3)]
        for t in threads:
            t.start()
        for _ in threads:
            assert exited.acquire(timeout=10)
        snap = d.snapshot()
        gate.set()
        for t in threads:
            t.join()
        assert snap.health.start_map_full == 1
        assert sum(s.open for s in snap.stats.values()) == 2
    finally:
        d.close()


def test_full_stats_map_is_counted():
    d = Driver(detect(FORMATS["arm64"]), max_keys=2)
    try:
        # Classes without a row in the threads' slots go to the keyed map, the one that can fill.
        for ec in (0x0C, 0x0D, 0x0E, 0x0E):
            d.arm64_exit(TRAP, ec)
            d.entry()
        snap = d.snapshot()
        assert snap.health.stats_map_full == 2
        assert sum(s.pairs for s in snap.stats.values()) == 2
    finally:
        d.close()


def test_interval_deltas_lose_nothing(arm64):
    from kvmexit.model import delta

    stop = threading.Event()
    sent = []

    def vcpu():
        n = 0
        while not stop.is_set():
            arm64.arm64_exit(TRAP, EC_HVC64)
            arm64.entry()
            n += 1
        sent.append(n)

    prev = arm64.snapshot()
    t = threading.Thread(target=vcpu)
    t.start()
    seen = 0
    for _ in range(8):
        time.sleep(0.05)
        cur = arm64.snapshot()
        seen += sum(s.exits for s in delta(cur, prev).stats.values())
        prev = cur
    stop.set()
    t.join()
    final = arm64.snapshot()
    seen += sum(s.exits for s in delta(final, prev).stats.values())
    assert sent[0] > 100
    assert seen == sent[0] == sum(s.exits for s in final.stats.values())


def test_tid_filter_is_applied_in_the_kernel():
    me = threading.get_native_id()
    d = Driver(detect(FORMATS["arm64"]), tids=[me])
    try:

        def other():
            d.arm64_exit(TRAP, EC_WFX)
            d.entry()

        other_tid = in_thread(other)
        d.arm64_exit(TRAP, EC_HVC64)
        d.entry()
        snap = d.snapshot()
        assert {k.tid for k in snap.stats} == {me}
        assert other_tid != me
    finally:
        d.close()


def test_openeuler_class_comes_from_kvm_trap_enter():
    d = Driver(detect(FORMATS["arm64-openeuler-5.10"]))
    try:
        tid = threading.get_native_id()
        for _ in range(2):
            d.arm64_exit(TRAP, 0)
            d.trap(EC_SYS64)
            d.entry()
        d.arm64_exit(IRQ, 0)
        d.trap(EC_HVC64)  # cannot happen for an IRQ exit; must not rename it
        d.entry()
        d.arm64_exit(SERROR | TRAP, 0)
        d.trap(EC_DABT_LOW)
        d.entry()
        assert by_label(d.snapshot(), tid) == {
            "SYS64": (2, 2, 0, 0),
            "IRQ": (1, 1, 0, 0),
            "DABT_LOW+SERROR": (1, 1, 0, 0),
        }
    finally:
        d.close()


def test_arm64_419_raw_record_is_masked_like_upstream():
    d = Driver(detect(FORMATS["arm64-4.19"]))
    try:
        tid = threading.get_native_id()
        d.arm64_exit(IRQ, EC_DABT_LOW)  # stale class
        d.entry()
        d.arm64_exit(SERROR | 1, 0)  # EL1_SERROR with the pending bit
        d.entry()
        assert by_label(d.snapshot(), tid) == {"IRQ": (1, 1, 0, 0), "EL1_SERROR+SERROR": (1, 1, 0, 0)}
    finally:
        d.close()


def test_x86_pairing_keeps_isa_and_failed_vmentry():
    layout = detect(
        {
            "kvm_exit": fmt(("unsigned int exit_reason", 8, 4), ("unsigned long guest_rip", 16, 8), ("u32 isa", 24, 4)),
            "kvm_entry": fmt(("unsigned int vcpu_id", 8, 4)),
        }
    )
    d = Driver(layout)
    try:
        tid = threading.get_native_id()
        for _ in range(3):
            d.exit(12, 1)  # VMX HLT
            d.entry()
        d.exit(0x80000021, 1)
        d.entry()
        d.exit(0x78, 2)  # SVM hlt
        d.entry()
        assert by_label(d.snapshot(), tid) == {
            "HLT": (3, 3, 0, 0),
            "INVALID_STATE+FAILED_VMENTRY": (1, 1, 0, 0),
            "hlt": (1, 1, 0, 0),
        }
    finally:
        d.close()


def test_comm_is_recorded_by_the_kernel(arm64):
    import ctypes

    libc = ctypes.CDLL(None)

    def named():
        libc.prctl(15, b"CPU 5/KVM", 0, 0, 0)  # PR_SET_NAME
        arm64.arm64_exit(TRAP, EC_WFX)
        arm64.entry()

    tid = in_thread(named)
    snap = arm64.snapshot()
    (key,) = [k for k in snap.stats if k.tid == tid]
    info = snap.thread_of(key)
    assert (info.comm, info.vcpu) == ("CPU 5/KVM", 5)


def test_snapshot_keys_are_typed(arm64):
    arm64.arm64_exit(TRAP, EC_WFX)
    arm64.entry()
    assert all(isinstance(k, ExitKey) for k in arm64.snapshot().stats)


def test_vm_name_is_kept_after_a_short_lived_vmm_exits(arm64):
    """The name is taken when the kernel first sees the thread, not at report time."""
    import sys

    ex, en = arm64.fds["kvmexit_exit"], arm64.fds["kvmexit_entry"]
    code = (
        "import sys; sys.path.insert(0, %r); from bpf_testrun import test_run_raw; "
        "test_run_raw(%d, 2, 0x16, 0); test_run_raw(%d, 0); print('done', flush=True); sys.stdin.read()"
    ) % (str(Path(__file__).resolve().parent.parent), ex, en)
    child = subprocess.Popen(
        [sys.executable, "-c", code, "-name", "guest=short-vm,debug-threads=on"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        pass_fds=(ex, en),
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "done"
        arm64.source.poll(100)  # what the live loop does while it waits
    finally:
        child.communicate("", timeout=10)
    snap = arm64.snapshot()
    (key,) = [k for k in snap.stats if k.tgid == child.pid]
    assert snap.thread_of(key).vm == "short-vm"


def test_per_key_reads_of_old_kernels_give_the_same_snapshot(arm64):
    """Kernels before 5.6 have no batch lookups: the one-syscall-per-key path must agree."""
    for ret, ec in ((TRAP, EC_WFX), (IRQ, 0), (TRAP, EC_HVC64), (TRAP, EC_HVC64), (TRAP, 0x0C)):
        arm64.arm64_exit(ret, ec)  # 0x0C has no row in the threads' slots: the keyed map
        arm64.entry()
    batched = arm64.snapshot()
    assert arm64.source._batch and all(r.supported for r in arm64.source._batch.values())
    for reader in arm64.source._batch.values():
        reader.supported = False
    per_key = arm64.snapshot()
    assert per_key.stats == batched.stats and len(per_key.stats) == 4
    assert per_key.threads == batched.threads


# -- living beside perf -------------------------------------------------------------------------

X86_FORMATS = {
    "kvm_exit": fmt(("unsigned int exit_reason", 8, 4), ("unsigned long guest_rip", 16, 8), ("u32 isa", 24, 4)),
    "kvm_entry": fmt(("unsigned int vcpu_id", 8, 4)),
}


@pytest.mark.parametrize("name", [*sorted(FORMATS), "x86-synthetic"])
def test_every_raw_program_passes_the_event_on(name):
    """Raw tracepoints ignore the return value, but one rule for every program keeps the classic
    tracepoint variant (below) from drifting back to 0."""
    d = Driver(detect(X86_FORMATS if name == "x86-synthetic" else FORMATS[name]))
    try:
        for fn, fd in d.fds.items():
            assert test_run_raw(fd, 0, 0, 0) == 1, fn
    finally:
        d.close()


def perf_count(event: str, calls: int) -> int:
    """What ``perf stat -e event`` counts for a child making ``calls`` getpriority() calls."""
    workload = "import os\nfor _ in range(%d): os.getpriority(os.PRIO_PROCESS, 0)" % calls
    proc = subprocess.run(
        ["perf", "stat", "-x,", "-e", event, "--", "python3", "-c", workload],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    line = [ln for ln in proc.stderr.splitlines() if event in ln][-1]
    return int(line.split(",")[0])


def test_classic_tracepoint_programs_leave_perf_its_events():
    """perf_trace_run_bpf_submit hands a classic tracepoint's event to perf only if the BPF program
    returned non-zero: kvmexit's x86 programs must not blind perf kvm stat and kvm_stat. kvm_exit
    never fires here, so the production x86 programs are attached to syscall tracepoints that do
    (getpriority: its record is long enough for the kvm_exit offsets the program reads), and perf
    counts them with and without the programs attached."""
    import shutil

    from kvmexit.sources.live import LiveSource

    if not shutil.which("perf"):
        pytest.skip("perf not installed (Debian: linux-perf)")
    event, calls = "syscalls:sys_enter_getpriority", 1009
    before = perf_count(event, calls)
    assert before >= calls
    src = LiveSource(detect(X86_FORMATS), attach=False).open()
    try:
        tracepoint_programs = [fn for kind, _, fn in src.program.attach if kind == "tp"]
        assert tracepoint_programs == ["kvmexit_exit", "kvmexit_entry"]
        for fn, tp in zip(tracepoint_programs, (event, "syscalls:sys_exit_getpriority")):
            src.bpf.attach_tracepoint(tp=tp, fn_name=fn)
        during = perf_count(event, calls)
        during_exit = perf_count("syscalls:sys_exit_getpriority", calls)
    finally:
        src.close()
    assert during == before
    assert during_exit >= calls


def test_kernel_record_is_generated_from_the_one_field_table(arm64):
    """struct kvmexit_value as bcc compiled it has exactly model.KERNEL_FIELDS."""
    from kvmexit.model import KERNEL_FIELDS

    leaf = arm64.source.bpf["stats"].Leaf
    assert [f[0] for f in leaf._fields_] == [f.name for f in KERNEL_FIELDS]
    for f in KERNEL_FIELDS:
        assert getattr(leaf, f.name).size == 8 * f.words


# -- a failed attach ----------------------------------------------------------------------------


def bpf_descriptors_of_this_process() -> set:
    """This process's open BPF programs, links and perf events (attachments), as (fd, kind):
    scoped to this process, unlike bpftool's list, which shows other helpers' programs too.
    Compare with :func:`new_descriptors`: earlier tests' objects may be closed meanwhile."""
    import os

    kinds = ("anon_inode:bpf-prog", "anon_inode:bpf-link", "anon_inode:[perf_event]")
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink("/proc/self/fd/" + fd)
        except OSError:
            continue
        if target in kinds:
            out.add((int(fd), target))
    return out


def new_descriptors(before: set) -> set:
    return bpf_descriptors_of_this_process() - before


def test_a_failed_attach_is_one_line_and_leaves_nothing_attached(capfd):
    import dataclasses

    from kvmexit.errors import KvmexitError
    from kvmexit.sources.live import LiveSource

    before = bpf_descriptors_of_this_process()
    control = LiveSource(live_layout()).open()
    try:  # the check below sees attached programs at all
        assert "anon_inode:bpf-prog" in {kind for _, kind in new_descriptors(before)}
    finally:
        control.close()
    assert new_descriptors(before) == set()
    src = LiveSource(live_layout())
    bad = (*src.program.attach[:1], ("raw", "kvm:no_such_event", "kvmexit_entry"))
    src.program = dataclasses.replace(src.program, attach=bad)
    with pytest.raises(KvmexitError) as e:
        src.open()
    message = str(e.value)
    assert message.startswith("cannot attach kvmexit_entry to kvm:no_such_event (raw tracepoint): ")
    assert "\n" not in message and "nothing was left attached" in (e.value.hint or "")
    assert src.bpf is None
    assert capfd.readouterr().err == ""  # libbcc's own message went into the one line
    assert new_descriptors(before) == set()


# -- abandoned exits: live and offline alike ------------------------------------------------------


def test_a_dead_threads_open_exit_is_abandoned_live_and_offline_alike(arm64):
    """The same events through the kernel programs and through the offline rules: a thread that
    dies with an exit open (the VMM thread returned to user space and exited) is *abandoned*
    in both, and the snapshot that finds it says so in its health too."""
    from kvmexit.sources.trace.pairing import Pairer, Thread

    pairer = Pairer("arm64")

    def vcpu_that_dies():
        tid = threading.get_native_id()
        arm64.arm64_exit(TRAP, EC_HVC64)
        pairer.exit(1, Thread(tid), (TRAP, EC_HVC64))
        arm64.entry()
        pairer.entry(2, Thread(tid))
        arm64.arm64_exit(TRAP, EC_DABT_LOW)  # the last exit: user space ends the thread
        pairer.exit(3, Thread(tid), (TRAP, EC_DABT_LOW))

    dead = in_thread(vcpu_that_dies)
    pairer.thread_exit(4, Thread(dead))  # what sched_process_exit tells the offline reader
    alive = threading.get_native_id()
    arm64.arm64_exit(IRQ, 0)  # stays open: this thread lives on
    pairer.exit(5, Thread(alive), (IRQ, 0))

    def totals(snap):
        mine = [s for k, s in snap.stats.items() if k.tid in (dead, alive)]
        return tuple(sum(getattr(s, f) for s in mine) for f in ("pairs", "open", "unfinished", "abandoned"))

    deadline = time.monotonic() + 5
    snap = arm64.snapshot()
    while totals(snap)[3] == 0 and time.monotonic() < deadline:  # until the task is reaped
        time.sleep(0.02)
        snap = arm64.snapshot()
    offline = pairer.snapshot("arm64")
    assert totals(snap) == totals(offline) == (1, 1, 0, 1)  # pairs, open, unfinished, abandoned
    assert snap.health.abandoned == offline.health.abandoned == 1  # in the same snapshot


def _refuse_raw_wakeup(src, also_tracepoint: bool = False) -> None:
    """Make this kernel behave like one before 5.0, where a raw tracepoint cannot attach to a
    module's tracepoint (x86's kvm is a module): bcc raises a bare Exception."""
    real_raw, real_tp = src.bpf.attach_raw_tracepoint, src.bpf.attach_tracepoint

    def raw(tp, fn_name):
        if tp == "kvm_vcpu_wakeup":
            raise Exception("Failed to attach BPF to raw tracepoint")
        return real_raw(tp=tp, fn_name=fn_name)

    def classic(tp, fn_name):
        if also_tracepoint and tp == "kvm:kvm_vcpu_wakeup":
            raise Exception("Failed to attach BPF to tracepoint")
        return real_tp(tp=tp, fn_name=fn_name)

    src.bpf.attach_raw_tracepoint, src.bpf.attach_tracepoint = raw, classic


def _attached(fds) -> set:
    """Tracepoint names in one of bcc's attachment records (bytes keys in bcc 0.26)."""
    return {k.decode() if isinstance(k, bytes) else k for k in fds}


def _wakeup_offset() -> int:
    from kvmexit.layouts import find_tracefs, read_formats, wakeup_ns_offset

    off = wakeup_ns_offset(read_formats(find_tracefs(), ("kvm_vcpu_wakeup",)))
    if off is None:
        pytest.fail("this kernel has no kvm:kvm_vcpu_wakeup with a u64 ns field")
    return off


def test_wakeup_falls_back_to_the_classic_tracepoint_where_raw_is_refused():
    from kvmexit.sources.live import LiveSource

    src = LiveSource(live_layout(), attach=False, wakeup_ns_off=_wakeup_offset()).open()
    try:
        _refuse_raw_wakeup(src)
        src._attach_all()
        assert src.wakeup_attach == "tracepoint" and src.halt_known and src.notes == []
        # bcc's own record of this process's attachments (other processes may trace too)
        assert "kvm:kvm_vcpu_wakeup" in _attached(src.bpf.tracepoint_fds)
        assert "kvm_vcpu_wakeup" not in _attached(src.bpf.raw_tracepoint_fds)
    finally:
        src.close()


def test_wakeup_refused_both_ways_makes_halt_time_unknown_in_one_line():
    from kvmexit.sources.live import LiveSource

    src = LiveSource(live_layout(), attach=False, wakeup_ns_off=_wakeup_offset()).open()
    try:
        _refuse_raw_wakeup(src, also_tracepoint=True)
        src._attach_all()
        assert src.wakeup_attach is None and not src.halt_known
        assert len(src.notes) == 1 and "\n" not in src.notes[0]
        assert src.notes[0].startswith("halt time unknown: cannot attach to kvm:kvm_vcpu_wakeup")
        # the rest is attached: exits are still counted
        assert "kvm:kvm_exit" in _attached(src.bpf.tracepoint_fds) | _attached(src.bpf.raw_tracepoint_fds)
        assert "kvm:kvm_vcpu_wakeup" not in _attached(src.bpf.tracepoint_fds)
    finally:
        src.close()


# -- the histogram and the sum of squares, against their Python twins -----------------------------


@pytest.fixture(scope="module")
def hooks():
    from kvmexit.sources.live import import_bcc, render_program

    bcc = import_bcc()
    prog = render_program(detect(FORMATS["arm64"]), test_hooks=True)
    b = bcc.BPF(text=prog.text, cflags=list(prog.cflags))
    raw = bcc.BPF.RAW_TRACEPOINT
    yield b, b.load_func("kvmexit_test_hist", raw).fd, b.load_func("kvmexit_test_square", raw).fd
    b.cleanup()


def test_hist_slot_twin_matches_the_kernel_at_every_bucket_edge(hooks):
    import random

    from kvmexit.model import HIST_SLOTS, bucket_bounds, hist_slot

    _, hist_fd, _ = hooks
    values = {0, 1, 2, 3, 2**63, 2**64 - 1}
    for slot in range(HIST_SLOTS):
        lo, hi = bucket_bounds(slot)
        values |= {lo, hi, hi + 1, max(lo - 1, 0)}
    rng = random.Random(7)
    values |= {rng.randrange(1 << rng.randrange(1, 64)) for _ in range(300)}
    for v in sorted(values):
        assert test_run_raw(hist_fd, v) == hist_slot(v), v


def test_sum_of_squares_is_exact_beyond_64_bits(hooks):
    from kvmexit.model import ExitStats

    b, _, square_fd = hooks
    samples = [0, 1, 999, 2**32 - 1, 2**32, 3 * 10**9, 10**10, 2**40 + 12345, 2**63 + 5, 2**64 - 1]
    for v in samples:
        test_run_raw(square_fd, v)
    out = b["test_out"][b["test_out"].Key(0)]
    got = ExitStats(sumsq=(out.sumsq[0], out.sumsq[1])).sumsq_ns2
    assert got % (1 << 128) == sum(v * v for v in samples) % (1 << 128)
    assert sum(v * v for v in samples[:8]) > 1 << 64  # the high word was needed
