"""Text decoding of the sub-reason events (kvm_hvc_arm64, kvm_guest_fault, kvm_msr, ...).

The lines marked "TP_printk" are written here from the kernel's print format with values chosen
for the test (see the docstring of ``subdecode``); lines from real captures are in
``tests/data/traces`` and checked in ``test_trace_subevents_real``.
"""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmexit.sources.trace import subdecode as sd

CASES = [
    # arm64, 6.1 TP_printk
    (b"kvm_wfx_arm64", b"guest executed wfi at: 0x0000000040000040", sd.Wfx(0x40000040, False)),
    (b"kvm_wfx_arm64", b"guest executed wfe at: 0xffff800008001234", sd.Wfx(0xFFFF800008001234, True)),
    # 4.19 prints the PC with 0x%08lx
    (b"kvm_wfx_arm64", b"guest executed wfi at: 0x40000040", sd.Wfx(0x40000040, False)),
    (
        b"kvm_hvc_arm64",
        b"HVC at 0x0000000040000018 (r0: 0x0000000084000000, imm: 0x0)",
        sd.Hvc(0x40000018, 0x84000000, 0),
    ),
    (b"kvm_handle_sys_reg", b"HSR 0x62300029", sd.SysReg(0x62300029)),
    (
        b"kvm_sys_access",
        b"PC: 40000028 ID_AA64PFR0_EL1 (3,0,0,4,0) read",
        sd.SysAccess(0x40000028, "ID_AA64PFR0_EL1", 3, 0, 0, 4, 0, False),
    ),
    (
        b"kvm_sys_access",
        b"PC: 40000028 UNKN (3,7,15,15,7) write",
        sd.SysAccess(0x40000028, "UNKN", 3, 7, 15, 15, 7, True),
    ),
    (
        b"kvm_guest_fault",
        b"ipa 0x9000000, hsr 0x93940046, hxfar 0x9000000, pc 0x0000000040000004",
        sd.GuestFault(0x9000000, 0x93940046, 0x9000000, 0x40000004),
    ),
    # %#08lx of 0 prints 00000000 (no 0x)
    (
        b"kvm_guest_fault",
        b"ipa 0x40000000, hsr 0x82000006, hxfar 00000000, pc 0x0000000040000000",
        sd.GuestFault(0x40000000, 0x82000006, 0, 0x40000000),
    ),
    (b"kvm_access_fault", b"IPA: 40001000", sd.AccessFault(0x40001000)),
    (b"kvm_mmio", b"mmio write len 4 gpa 0x9000000 val 0xc8", sd.Mmio(2, 4, 0x9000000, 0xC8)),
    (b"kvm_mmio", b"mmio unsatisfied-read len 4 gpa 0x8000004 val 0x0", sd.Mmio(0, 4, 0x8000004, 0)),
    (b"kvm_mmio", b"mmio read len 4 gpa 0x8000004 val 0x43b", sd.Mmio(1, 4, 0x8000004, 0x43B)),
    (b"kvm_mmio", b"mmio 0x7 len 4 gpa 0x8000004 val 0x43b", sd.Mmio(7, 4, 0x8000004, 0x43B)),
    (b"kvm_userspace_exit", b"reason KVM_EXIT_MMIO (6)", sd.UserspaceExit(6, 0)),
    (b"kvm_userspace_exit", b"reason KVM_EXIT_SYSTEM_EVENT (24)", sd.UserspaceExit(24, 0)),
    (b"kvm_userspace_exit", b"reason restart (4)", sd.UserspaceExit(None, -4)),
    (b"kvm_userspace_exit", b"reason error (14)", sd.UserspaceExit(None, -14)),
    (b"kvm_userspace_exit", b"reason 0x2a (42)", sd.UserspaceExit(42, 0)),
    # x86, 6.1 TP_printk
    (b"kvm_msr", b"msr_write 830 = 0x2000000fd", sd.Msr(True, 0x830, 0x2000000FD, False)),
    (b"kvm_msr", b"msr_read 1a0 = 0x0 (#GP)", sd.Msr(False, 0x1A0, 0, True)),
    (b"kvm_pio", b"pio_write at 0x3f8 size 1 count 1 val 0x41 ", sd.Pio(True, 0x3F8, 1, 1, 0x41)),
    (b"kvm_pio", b"pio_read at 0x1f0 size 2 count 256 val 0xffff (...)", sd.Pio(False, 0x1F0, 2, 256, 0xFFFF)),
    (b"kvm_cr", b"cr_write 4 = 0x3606f0", sd.Cr(True, 4, 0x3606F0)),
    (b"kvm_hypercall", b"nr 0x5 a0 0x0 a1 0x1 a2 0x0 a3 0x0", sd.Hypercall(5, 0, 1, 0, 0)),
    (b"kvm_cpuid", b"func 40000001 idx 0 rax 1 rbx 0 rcx 0 rdx 0, cpuid entry found", sd.Cpuid(0x40000001, 0)),
    (b"kvm_cpuid", b"func d rax 7 rbx 340 rcx 340 rdx 0, cpuid entry found", sd.Cpuid(0xD, None)),
    (
        b"kvm_page_fault",
        b"vcpu 1 rip 0xffffffff81000000 address 0x00000000fee00300 error_code 0x182",
        sd.PageFault(0xFEE00300, 0x182),
    ),
    (b"kvm_page_fault", b"address fee00300 error_code 182", sd.PageFault(0xFEE00300, 0x182)),
    (b"kvm_fast_mmio", b"fast mmio at gpa 0xfe003000", sd.FastMmio(0xFE003000)),
    # libtraceevent's fallback when it cannot evaluate a print format (trace-cmd report, perf script)
    (
        b"kvm_sys_access",
        b"[FAILED TO PARSE] vcpu_pc=1073741864 is_write=0 name=0xffff80000915a1c8 Op0=3 Op1=0 CRn=0 CRm=4 Op2=0",
        sd.SysAccess(0x40000028, "UNKN", 3, 0, 0, 4, 0, False),
    ),
    (b"kvm_hvc_arm64", b"[FAILED TO PARSE] vcpu_pc=0x40000018 r0=0x84000000 imm=0", sd.Hvc(0x40000018, 0x84000000, 0)),
]


@pytest.mark.parametrize("event,payload,want", CASES)
def test_decode(event, payload, want):
    assert sd.decode_sub(event, payload) == want
    assert sd.decode_sub(event, payload + b"\n") == want


@pytest.mark.parametrize(
    "event,payload",
    [
        (b"kvm_wfx_arm64", b"guest executed wfx at: 0x1"),
        (b"kvm_hvc_arm64", b"HVC at 0x40000018 (r0: 0x84000000"),  # truncated
        (b"kvm_handle_sys_reg", b"HSR "),
        (b"kvm_mmio", b"mmio bogus len 4 gpa 0x1 val 0x0"),
        (b"kvm_mmio", b"mmio 0xzz len 4 gpa 0x1 val 0x0"),
        (b"kvm_guest_fault", b"ipa 0x1, hsr 0x2"),
        (b"kvm_userspace_exit", b"reason KVM_EXIT_MMIO"),
        (b"kvm_sys_access", b"[FAILED TO PARSE] vcpu_pc=1"),
        (b"kvm_msr", b"[FAILED TO PARSE] write=1 ecx=0x830"),  # no fallback for x86 fields
        (b"kvm_exit", b"TRAP: HSR_EC: 0x0016 (HVC64), PC: 0x0"),  # not a sub-reason event
    ],
)
def test_unreadable_is_none(event, payload):
    assert sd.decode_sub(event, payload) is None


EVENTS = st.sampled_from(sorted(sd.SUB_EVENTS))
SEEDS = st.sampled_from([p for _e, p, _w in CASES])


@settings(max_examples=400, deadline=None)
@given(
    EVENTS,
    st.one_of(
        SEEDS, st.binary(max_size=120), st.builds(lambda a, b: a[: len(a) // 2] + b, SEEDS, st.binary(max_size=20))
    ),
)
def test_hostile_payloads_never_raise(event, payload):
    got = sd.decode_sub(event, payload)
    assert got is None or type(got).__name__ in sd.__all__


def test_linear_time_on_long_payloads():
    # Catastrophic backtracking would make this take minutes; a linear matcher takes milliseconds.
    worst = 0.0
    for event in sd.SUB_EVENTS:
        for filler in (b"0" * 200_000, b" " * 200_000, b"0x" * 100_000, b"a=" * 100_000):
            t0 = time.perf_counter()
            sd.decode_sub(event, b"PC: " + filler)
            sd.decode_sub(event, b"[FAILED TO PARSE] " + filler)
            worst = max(worst, time.perf_counter() - t0)
    assert worst < 1.0, worst


# --- the sub-reason of one exit from the events inside it ---------------------------------------


def _recs(*lines):
    out = []
    for event, payload in lines:
        rec = sd.decode_sub(event, payload)
        assert rec is not None, payload
        out.append(rec)
    return out


def test_arm64_exit_rule():
    from kvmexit.reasons.subreasons import label_arm64

    def name(ec, *lines):
        return label_arm64(ec, sd.exit_sub_arm64(ec, _recs(*lines)))

    wfe = (b"kvm_wfx_arm64", b"guest executed wfe at: 0xffff800008001234")
    assert name(0x01, wfe) == "WFE"  # TCG never traps WFE: only fixtures cover it
    assert name(0x01) == "-"
    assert name(0x16, (b"kvm_hvc_arm64", b"HVC at 0x0 (r0: 0x0000000084000008, imm: 0x0)")) == "PSCI_SYSTEM_OFF"
    assert name(0x18, (b"kvm_handle_sys_reg", b"HSR 0x62300029")) == "ID_AA64PFR0_EL1 read"
    fault = (b"kvm_guest_fault", b"ipa 0x9000000, hsr 0x93940046, hxfar 0x9000000, pc 0x0000000040000004")
    write = (b"kvm_mmio", b"mmio write len 4 gpa 0x9000000 val 0x0")
    assert name(0x24, fault, write, (b"kvm_userspace_exit", b"reason KVM_EXIT_MMIO (6)")) == "mmio-vmm 0x9000000"
    assert name(0x24, fault, write) == "mmio-kernel 0x9000000"
    assert name(0x24, fault) == "memory"
    assert name(0x24) == "-"  # no kvm_guest_fault: a synchronous external abort, or not traced
    assert name(0x24, fault, write, (b"kvm_userspace_exit", b"reason restart (4)")) == "mmio-kernel 0x9000000"


def test_x86_exit_rule():
    from kvmexit.reasons.subreasons import label_x86

    def name(exit_name, *lines):
        return label_x86(exit_name, sd.exit_sub_x86(exit_name, _recs(*lines)))

    assert name("MSR_WRITE", (b"kvm_msr", b"msr_write 830 = 0x2000000fd")) == "X2APIC_ICR write"
    assert name("msr", (b"kvm_msr", b"msr_read c0000080 = 0xd01")) == "EFER read"
    assert name("IO_INSTRUCTION", (b"kvm_pio", b"pio_write at 0x3f8 size 1 count 1 val 0x41 ")) == "port 0x3f8 write"
    assert name("write_cr4", (b"kvm_cr", b"cr_write 4 = 0x3606f0")) == "CR4 write"
    assert name("CR_ACCESS", (b"kvm_cr", b"cr_read 3 = 0x1000")) == "CR3 read"
    assert name("VMCALL", (b"kvm_hypercall", b"nr 0x5 a0 0x0 a1 0x1 a2 0x0 a3 0x0")) == "hypercall 0x5"
    assert (
        name("cpuid", (b"kvm_cpuid", b"func 40000001 idx 0 rax 1 rbx 0 rcx 0 rdx 0, cpuid entry found"))
        == "leaf 0x40000001"
    )
    pf = (b"kvm_page_fault", b"vcpu 1 rip 0xffffffff81000000 address 0x00000000fee00300 error_code 0x182")
    mmio = (b"kvm_mmio", b"mmio write len 4 gpa 0xfee00300 val 0x0")
    assert name("EPT_VIOLATION", pf, mmio) == "mmio-kernel 0xfee00300"
    assert name("npf", pf) == "memory"
    assert name("EPT_MISCONFIG", (b"kvm_fast_mmio", b"fast mmio at gpa 0xfe003000")) == "mmio-kernel 0xfe003000"
    assert (
        name("EPT_VIOLATION", pf, mmio, (b"kvm_userspace_exit", b"reason KVM_EXIT_MMIO (6)")) == "mmio-vmm 0xfee00300"
    )
    # An event of another kind does not name the exit.
    assert name("HLT", (b"kvm_msr", b"msr_write 830 = 0x1")) == "-"
    assert name("MSR_READ") == "-"


def test_x86_labels_of_misfits_are_numbers():
    from kvmexit.reasons import subreasons as sr

    odd = sr.X86_SEEN | (3 << 40)
    assert sr.label_x86("MSR_READ", odd) == "SUB_%#x" % odd
    assert sr.label_x86("cpuid", 1 << 63) == "SUB_%#x" % (1 << 63)
