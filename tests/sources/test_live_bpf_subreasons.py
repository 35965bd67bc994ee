"""Sub-reasons in the kernel (KVMEXIT_SUB), for real: the programs on the events inside an exit
compute the same u64 as the offline rule (``subdecode.exit_sub_arm64`` / ``exit_sub_x86``), and
the pairs that have one are recorded a second time under it, with exact counts and times.

Driven with BPF_PROG_TEST_RUN: every event gets the raw tracepoint's arguments in TP_PROTO order
(docs/subreasons.md), including those the emulated arm64 host cannot produce (WFE: QEMU's TCG
does not trap it) and x86's (MSR, I/O port, CR, CPUID, hypercall, EPT violation / NPF).
"""

from __future__ import annotations

import threading
import time
from typing import Dict, List, Sequence, Tuple

import pytest

from bpf_testrun import test_run_raw
from kvmexit.layouts import detect
from kvmexit.model import ExitKey, Snapshot, SubKey
from kvmexit.reasons import subreasons
from kvmexit.sources.trace import subdecode as sd
from sources.test_live_bpf import (
    EC_DABT_LOW,
    EC_HVC64,
    EC_SYS64,
    EC_WFX,
    FORMATS,
    SERROR,
    TRAP,
    X86_FORMATS,
    in_thread,
    snapshot_once_reaped,
)

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("bpf_env")]

EC_HVC32, EC_IABT_LOW = 0x12, 0x20
NEG = (1 << 64) - 1  # an int argument of -1 as the raw tracepoint sees it (sign-extended)

#: Event record -> (program, raw tracepoint arguments in TP_PROTO order).
ARM64_PROGRAMS = {
    sd.Wfx: ("kvmexit_sub_wfx", lambda r: (r.pc, int(r.is_wfe))),
    sd.Hvc: ("kvmexit_sub_hvc", lambda r: (r.pc, r.r0, r.imm)),
    sd.SysReg: ("kvmexit_sub_sysreg", lambda r: (r.esr,)),
    sd.GuestFault: ("kvmexit_sub_fault", lambda r: (r.pc, r.esr, r.far, r.ipa)),
    sd.Mmio: ("kvmexit_sub_mmio", lambda r: (r.type, r.len, r.gpa, 0xFFFF000012345678)),
    sd.UserspaceExit: ("kvmexit_sub_user", lambda r: (6 if r.reason is None else r.reason, r.errno & NEG)),
}
X86_PROGRAMS = {
    sd.Msr: ("kvmexit_sub_msr", lambda r: (int(r.is_write), r.msr, r.data, int(r.gp))),
    sd.Pio: ("kvmexit_sub_pio", lambda r: (int(r.is_write), r.port, r.size, r.reps, 0xFFFF000012345678)),
    sd.Cr: ("kvmexit_sub_cr", lambda r: (int(r.is_write), r.cr, r.val)),
    sd.Hypercall: ("kvmexit_sub_hypercall", lambda r: (r.nr, r.a0, r.a1, r.a2, r.a3)),
    sd.Cpuid: ("kvmexit_sub_cpuid", lambda r: (r.function, r.subleaf or 0, 1, 2, 3, 4, 1, 0)),
    sd.Mmio: ("kvmexit_sub_mmio", lambda r: (r.type, r.len, r.gpa, 0xFFFF000012345678)),
    sd.FastMmio: ("kvmexit_sub_fast_mmio", lambda r: (r.gpa,)),
    # 6.1: (struct kvm_vcpu *, fault_address, error_code); only that it fired matters
    sd.PageFault: ("kvmexit_sub_page_fault", lambda r: (0xFFFF888000001000, r.address, r.error_code)),
    sd.UserspaceExit: ("kvmexit_sub_user", lambda r: (6 if r.reason is None else r.reason, r.errno & NEG)),
}


class SubDriver:
    def __init__(self, arch: str, **options) -> None:
        from kvmexit.sources.live import LiveSource

        self.arch = arch
        layout = detect(FORMATS["arm64"] if arch == "arm64" else X86_FORMATS)
        self.source = LiveSource(layout, attach=False, synthetic_x86=arch == "x86", subreasons=True, **options).open()
        bpf = self.source.bpf
        self.fds = {fn: bpf.load_func(fn, bpf.RAW_TRACEPOINT).fd for _, _, fn in self.source.program.attach}
        self.programs = ARM64_PROGRAMS if arch == "arm64" else X86_PROGRAMS

    def exit(self, code: int, detail: int) -> None:
        if self.arch == "arm64":
            test_run_raw(self.fds["kvmexit_exit"], code, detail, 0x1000)
        else:
            test_run_raw(self.fds["kvmexit_exit"], code, detail)

    def entry(self) -> None:
        test_run_raw(self.fds["kvmexit_entry"], 0x1000)

    def event(self, record) -> None:
        fn, args = self.programs[type(record)]
        assert test_run_raw(self.fds[fn], *args(record)) == 1  # the event is passed on

    def snapshot(self) -> Snapshot:
        return self.source.snapshot()

    def close(self) -> None:
        self.source.close()


@pytest.fixture(scope="module")
def arm64():
    d = SubDriver("arm64")
    yield d
    d.close()


@pytest.fixture(scope="module")
def x86():
    d = SubDriver("x86")
    yield d
    d.close()


def subs_of(snap: Snapshot, tid: int) -> Dict[Tuple[int, int, int], Tuple[int, int]]:
    """{(code, detail, sub): (exits, pairs)} of one thread's sub-reason records."""
    return {(k.code, k.detail, k.sub): (s.exits, s.pairs) for k, s in snap.subs.items() if k.tid == tid}


ESR_SGI1R_WRITE = (0x18 << 26) | (1 << 25) | (3 << 20) | (0 << 14) | (12 << 10) | (11 << 1) | (5 << 17) | (7 << 5)
ESR_DABT_WRITE = (0x24 << 26) | (1 << 25) | (1 << 24) | (1 << 6) | 0x7

#: (name, ec, events inside the exit): the offline rule gives the expected u64.
ARM64_CASES: List[Tuple[str, int, Sequence]] = [
    ("WFI", EC_WFX, [sd.Wfx(0x40001000, False)]),
    ("WFE", EC_WFX, [sd.Wfx(0x40001000, True)]),
    ("PSCI_CPU_ON", EC_HVC64, [sd.Hvc(0x40001000, 0xC4000003, 0)]),
    ("SMCCC_ARCH_WORKAROUND_1", EC_HVC64, [sd.Hvc(0x40001000, 0x80008000, 0)]),
    ("function id 0", EC_HVC64, [sd.Hvc(0x40001000, 0, 0)]),
    ("x0 with high bits", EC_HVC64, [sd.Hvc(0x40001000, 0x1_8400_0000, 0)]),
    ("HVC32", EC_HVC32, [sd.Hvc(0x1000, 0x84000000, 0)]),
    ("ICC_SGI1R_EL1 write", EC_SYS64, [sd.SysReg(ESR_SGI1R_WRITE)]),
    ("stage-2 memory fault", EC_DABT_LOW, [sd.GuestFault(0x48000000, ESR_DABT_WRITE, 0, 0x40001000)]),
    (
        "MMIO in the kernel",
        EC_DABT_LOW,
        [sd.GuestFault(0x080A0008, ESR_DABT_WRITE, 0, 0x1000), sd.Mmio(2, 4, 0x080A0008, 1)],
    ),
    (
        "MMIO in the VMM (read, completed at the next KVM_RUN)",
        EC_DABT_LOW,
        [
            sd.GuestFault(0x09000000, ESR_DABT_WRITE, 0, 0x1000),
            sd.Mmio(0, 4, 0x09000000, 0),
            sd.UserspaceExit(6, 0),
            sd.Mmio(1, 4, 0x09000000, 0x41),
        ],
    ),
    (
        "a restart (errno -EINTR) is not a user-space MMIO",
        EC_DABT_LOW,
        [
            sd.GuestFault(0x09000000, ESR_DABT_WRITE, 0, 0x1000),
            sd.Mmio(2, 4, 0x09000000, 0),
            sd.UserspaceExit(None, -4),
        ],
    ),
    ("kvm_mmio without kvm_guest_fault", EC_DABT_LOW, [sd.Mmio(2, 4, 0x09000000, 0)]),
    ("instruction abort", EC_IABT_LOW, [sd.GuestFault(0x40200000, 0x82000007, 0, 0x40200000)]),
    ("another class's event changes nothing", EC_WFX, [sd.Hvc(0x1000, 0x84000000, 0), sd.SysReg(ESR_SGI1R_WRITE)]),
    ("the first event of a kind decides", EC_HVC64, [sd.Hvc(0x1000, 0x84000000, 0), sd.Hvc(0x1000, 0xC4000003, 0)]),
    ("no event", EC_SYS64, []),
]


def run_case(d: SubDriver, code: int, detail: int, events: Sequence) -> int:
    def body():
        d.exit(code, detail)
        for r in events:
            d.event(r)
        time.sleep(0.001)
        d.entry()

    return in_thread(body)


@pytest.mark.parametrize("name,ec,events", ARM64_CASES, ids=[c[0] for c in ARM64_CASES])
def test_arm64_kernel_sub_reason_is_the_offline_rules(arm64, name, ec, events):
    tid = run_case(arm64, TRAP, ec, events)
    want = sd.exit_sub_arm64(ec, events)
    snap = arm64.snapshot()
    assert subs_of(snap, tid) == ({(TRAP, ec, want): (1, 1)} if want else {})
    # The reason's row stays whole, with or without a sub-reason.
    row = snap.stats[ExitKey(snap.stats and next(k.tgid for k in snap.stats if k.tid == tid), tid, TRAP, ec)]
    assert (row.exits, row.pairs) == (1, 1)


def test_arm64_names_of_the_kernel_values(arm64):
    """The names the views give to what the kernel recorded (spot checks of the shared encoding)."""
    got = {}
    for name, ec, events in ARM64_CASES[:8]:
        tid = run_case(arm64, TRAP, ec, events)
        ((key, _),) = [(k, s) for k, s in arm64.snapshot().subs.items() if k.tid == tid]
        got[name] = subreasons.label_arm64(key.detail & 0x3F, key.sub)
    assert got == {
        "WFI": "WFI",
        "WFE": "WFE",
        "PSCI_CPU_ON": "PSCI_CPU_ON64",
        "SMCCC_ARCH_WORKAROUND_1": "SMCCC_ARCH_WORKAROUND_1",
        "function id 0": "FN_0x0",
        "x0 with high bits": "FN_0x84000000+high",
        "HVC32": "PSCI_VERSION",
        "ICC_SGI1R_EL1 write": "ICC_SGI1R_EL1 write",
    }


def test_counts_and_times_are_exact_per_sub_reason(arm64):
    def body():
        for is_wfe, pause in [(True, 0.02)] * 3 + [(False, 0.002)] * 5:
            arm64.exit(TRAP, EC_WFX)
            arm64.event(sd.Wfx(0x1000, is_wfe))
            time.sleep(pause)
            arm64.entry()

    tid = in_thread(body)
    snap = arm64.snapshot()
    tgid = next(k.tgid for k in snap.stats if k.tid == tid)
    wfe = snap.subs[SubKey(tgid, tid, TRAP, EC_WFX, subreasons.WFE)]
    wfi = snap.subs[SubKey(tgid, tid, TRAP, EC_WFX, subreasons.WFI)]
    row = snap.stats[ExitKey(tgid, tid, TRAP, EC_WFX)]
    assert (wfe.pairs, wfi.pairs, row.pairs) == (3, 5, 8)
    assert wfe.min_ns >= 20_000_000 > wfi.max_ns
    assert wfe.total_ns + wfi.total_ns == row.total_ns
    assert tuple(a + b for a, b in zip(wfe.hist, wfi.hist)) == row.hist
    assert (min(wfe.min_ns, wfi.min_ns), max(wfe.max_ns, wfi.max_ns)) == (row.min_ns, row.max_ns)


def test_open_unfinished_and_serror_flagged_exits_keep_their_sub_reason(arm64):
    def body():
        arm64.exit(TRAP, EC_HVC64)
        arm64.event(sd.Hvc(0x1000, 0x84000000, 0))
        arm64.exit(TRAP | SERROR, EC_WFX)  # the HVC exit never saw its entry: unfinished
        arm64.event(sd.Wfx(0x1000, True))
        arm64.entry()
        arm64.exit(TRAP, EC_SYS64)
        arm64.event(sd.SysReg(ESR_SGI1R_WRITE))  # still open at the snapshot
        arm64.event(sd.Hvc(0x1000, 0, 0))  # another class's event: ignored

    # The thread has exited: its open exit is abandoned (not open) once the snapshot sees it.
    tid = in_thread(body)
    got = {
        (k.detail, k.sub): (s.pairs, s.unfinished, s.open + s.abandoned)
        for k, s in arm64.snapshot().subs.items()
        if k.tid == tid
    }
    assert got == {
        (EC_HVC64, subreasons.hvc_sub(0x84000000)): (0, 1, 0),
        (EC_WFX | SERROR, subreasons.WFE): (1, 0, 0),
        (EC_SYS64, subreasons.sys64_sub(ESR_SGI1R_WRITE)): (0, 0, 1),
    }


def test_events_outside_an_open_exit_change_nothing(arm64):
    def body():
        arm64.event(sd.Wfx(0x1000, True))  # before any exit: no slot yet
        arm64.exit(TRAP, EC_WFX)
        arm64.entry()
        arm64.event(sd.Wfx(0x1000, True))  # between entry and the next exit
        arm64.exit(TRAP, EC_WFX)
        arm64.entry()

    tid = in_thread(body)
    snap = arm64.snapshot()
    assert subs_of(snap, tid) == {}
    assert sum(s.pairs for k, s in snap.stats.items() if k.tid == tid) == 2


def test_full_sub_map_is_counted_and_the_rows_stay_whole():
    d = SubDriver("arm64", max_sub_keys=2)
    try:
        tid = threading.get_native_id()
        for r0 in (0x84000000, 0x84000001, 0x84000002, 0x84000003):
            d.exit(TRAP, EC_HVC64)
            d.event(sd.Hvc(0x1000, r0, 0))
            d.entry()
        snap = d.snapshot()
        assert sum(s.pairs for k, s in snap.subs.items() if k.tid == tid) == 2
        assert snap.health.sub_map_full == 2
        assert sum(s.pairs for k, s in snap.stats.items() if k.tid == tid) == 4
    finally:
        d.close()


# -- x86 (VMX and SVM) ---------------------------------------------------------------------------

VMX, SVM = 1, 2
X86_CASES = [
    ("VMX MSR_WRITE EFER", 32, VMX, [sd.Msr(True, 0xC0000080, 0xD01, False)]),
    ("VMX MSR_READ", 31, VMX, [sd.Msr(False, 0x1B, 0, False)]),
    ("SVM msr write", 0x7C, SVM, [sd.Msr(True, 0x6E0, 0, False)]),
    ("VMX IO_INSTRUCTION out 0x3f8", 30, VMX, [sd.Pio(True, 0x3F8, 1, 1, 0x41), sd.UserspaceExit(2, 0)]),
    ("SVM io in 0x70", 0x7B, SVM, [sd.Pio(False, 0x70, 1, 1, 0)]),
    ("VMX CR_ACCESS cr4 write", 28, VMX, [sd.Cr(True, 4, 0x3406E0)]),
    ("SVM write_cr0", 0x10, SVM, [sd.Cr(True, 0, 0x80050033)]),
    ("VMX CPUID leaf 0x40000001", 10, VMX, [sd.Cpuid(0x40000001, 0)]),
    ("SVM cpuid", 0x72, SVM, [sd.Cpuid(0xD, 1)]),
    ("VMX VMCALL", 18, VMX, [sd.Hypercall(5, 0, 1, 0, 0)]),
    ("SVM vmmcall", 0x81, SVM, [sd.Hypercall(12, 0, 0, 0, 0)]),
    ("EPT_VIOLATION memory", 48, VMX, [sd.PageFault(0x7F000000, 0x181)]),
    ("EPT_VIOLATION MMIO in the kernel", 48, VMX, [sd.PageFault(0xFEE00300, 0x182), sd.Mmio(2, 4, 0xFEE00300, 0)]),
    (
        "EPT_MISCONFIG MMIO in the VMM",
        49,
        VMX,
        [sd.PageFault(0xFEBF0000, 0x2), sd.Mmio(0, 4, 0xFEBF0000, 0), sd.UserspaceExit(6, 0)],
    ),
    ("EPT_MISCONFIG fast MMIO (ioeventfd)", 49, VMX, [sd.FastMmio(0xFEBF1000)]),
    ("NPF memory", 0x400, SVM, [sd.PageFault(0x100000, 0x6)]),
    ("NPF MMIO in the VMM", 0x400, SVM, [sd.Mmio(2, 4, 0xFED00000, 0), sd.UserspaceExit(6, 0)]),
    ("MSR event in an I/O exit changes nothing", 30, VMX, [sd.Msr(True, 0x10, 0, False)]),
    ("failed VM entry keeps its basic reason", 0x80000000 | 31, VMX, [sd.Msr(False, 0x10, 0, False)]),
]


@pytest.mark.parametrize("name,code,isa,events", X86_CASES, ids=[c[0] for c in X86_CASES])
def test_x86_kernel_sub_reason_is_the_offline_rules(x86, name, code, isa, events):
    from kvmexit.reasons import label

    tid = run_case(x86, code, isa, events)
    want = sd.exit_sub_x86(label("x86", code, isa), events)
    snap = x86.snapshot()
    assert subs_of(snap, tid) == ({(code, isa, want): (1, 1)} if want else {})
    if name.startswith(("VMX", "SVM", "EPT", "NPF")):
        assert want, "the case must exercise a sub-reason"


def test_default_program_has_no_sub_reason_part():
    """Sub-reasons are opt-in: the default program neither defines nor attaches them."""
    from kvmexit.sources.live import render_program

    prog = render_program(detect(FORMATS["arm64"]))
    assert not any(f.startswith(("-DKVMEXIT_SUB", "-DSUB_")) for f in prog.cflags)
    assert not any(fn.startswith("kvmexit_sub_") for _, _, fn in prog.attach)


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_every_arm64_variant_with_sub_reasons_passes_the_verifier(name):
    from kvmexit.sources.live import SUB_PROGRAMS, LiveSource

    src = LiveSource(detect(FORMATS[name]), attach=False, subreasons=True, tids=[1]).open()
    try:
        for _, fn in SUB_PROGRAMS["arm64"]:
            assert src.bpf.load_func(fn, src.bpf.RAW_TRACEPOINT).fd > 0
    finally:
        src.close()


def test_production_program_with_sub_reasons_attaches_here_and_detaches_cleanly():
    """On this host's kernel (x86): the tracepoint kvm_exit program beside the raw sub-reason
    programs; every sub-reason event this kernel has is attached, the others are noted."""
    from kvmexit.sources.live import SUB_PROGRAMS, LiveSource
    from sources.test_live_bpf import bpf_descriptors_of_this_process, live_layout, new_descriptors

    layout = live_layout()
    before = bpf_descriptors_of_this_process()
    src = LiveSource(layout, subreasons=True).open()
    try:
        events = ["kvm:" + e for e, _ in SUB_PROGRAMS[layout.arch]]
        missing = [e for e in events if not src._tracepoint_exists(e)]
        assert sorted(src.sub_events) == sorted(set(events) - set(missing))
        assert len([n for n in src.notes if n.startswith("sub-reasons:")]) == len(missing)
        assert src.snapshot().subs_known
    finally:
        src.close()
    assert new_descriptors(before) == set()


def test_an_abandoned_exits_guest_time_is_in_its_sub_reason_row_too():
    """With guest time (--guest/--split): an exit whose thread dies before its entry keeps the stay
    in the guest before it in its sub-reason's row as in its reason's, so the rows add up (as the
    offline engine, pairing.Pairer.thread_exit)."""
    d = SubDriver("arm64", guest=True)

    def body():
        d.exit(TRAP, EC_DABT_LOW)
        d.entry()
        time.sleep(0.01)
        d.exit(TRAP, EC_HVC64)  # the thread then ends: abandoned
        d.event(sd.Hvc(0x1000, 0x84000000, 0))

    try:
        tid = in_thread(body)
        snap = snapshot_once_reaped(d)
        tgid = next(k.tgid for k in snap.stats if k.tid == tid)
        row = snap.stats[ExitKey(tgid, tid, TRAP, EC_HVC64)]
        sub = snap.subs[SubKey(tgid, tid, TRAP, EC_HVC64, subreasons.hvc_sub(0x84000000))]
        assert row.abandoned == sub.abandoned == 1
        assert row.guest_ns >= 10_000_000 and sub.guest_ns == row.guest_ns
    finally:
        d.close()
