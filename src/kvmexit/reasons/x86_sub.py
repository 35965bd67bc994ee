"""x86 sub-reason names: MSR indexes and control registers.

Mirrors, as of Linux 6.1: ``arch/x86/include/asm/msr-index.h`` (``MSR_*``, the common ones a guest
makes KVM emulate), ``arch/x86/include/uapi/asm/kvm_para.h`` (``MSR_KVM_*``, KVM's paravirtual
MSRs), ``arch/x86/include/asm/apicdef.h`` (x2APIC: ``APIC_BASE_MSR`` 0x800 + register offset / 16).
``kvm_cr`` traces the control register's number (0, 3, 4, 8). Anything else is named by its number.
"""

from __future__ import annotations

from typing import Dict

__all__ = ["MSRS", "msr_name", "cr_name"]

MSRS: Dict[int, str] = {
    0x00000010: "IA32_TSC",
    0x0000001B: "IA32_APICBASE",
    0x0000003A: "IA32_FEAT_CTL",
    0x0000003B: "IA32_TSC_ADJUST",
    0x00000048: "IA32_SPEC_CTRL",
    0x00000049: "IA32_PRED_CMD",
    0x0000008B: "IA32_UCODE_REV",
    0x000000CE: "PLATFORM_INFO",
    0x000000E1: "IA32_UMWAIT_CONTROL",
    0x000000E7: "IA32_MPERF",
    0x000000E8: "IA32_APERF",
    0x000000FE: "MTRRcap",
    0x0000010A: "IA32_ARCH_CAPABILITIES",
    0x0000010B: "IA32_FLUSH_CMD",
    0x00000174: "IA32_SYSENTER_CS",
    0x00000175: "IA32_SYSENTER_ESP",
    0x00000176: "IA32_SYSENTER_EIP",
    0x00000179: "IA32_MCG_CAP",
    0x0000017A: "IA32_MCG_STATUS",
    0x00000198: "IA32_PERF_STATUS",
    0x00000199: "IA32_PERF_CTL",
    0x000001A0: "IA32_MISC_ENABLE",
    0x000001B0: "IA32_ENERGY_PERF_BIAS",
    0x000001C4: "IA32_XFD",
    0x000001C5: "IA32_XFD_ERR",
    0x000001D9: "IA32_DEBUGCTLMSR",
    0x000001FC: "IA32_POWER_CTL",
    0x00000277: "IA32_CR_PAT",
    0x000002FF: "MTRRdefType",
    0x000006E0: "IA32_TSC_DEADLINE",
    0x00000D90: "IA32_BNDCFGS",
    0x00000DA0: "IA32_XSS",
    0xC0000080: "EFER",
    0xC0000081: "STAR",
    0xC0000082: "LSTAR",
    0xC0000083: "CSTAR",
    0xC0000084: "SYSCALL_MASK",
    0xC0000100: "FS_BASE",
    0xC0000101: "GS_BASE",
    0xC0000102: "KERNEL_GS_BASE",
    0xC0000103: "TSC_AUX",
    0x00000011: "KVM_WALL_CLOCK",
    0x00000012: "KVM_SYSTEM_TIME",
    0x4B564D00: "KVM_WALL_CLOCK_NEW",
    0x4B564D01: "KVM_SYSTEM_TIME_NEW",
    0x4B564D02: "KVM_ASYNC_PF_EN",
    0x4B564D03: "KVM_STEAL_TIME",
    0x4B564D04: "KVM_PV_EOI_EN",
    0x4B564D05: "KVM_POLL_CONTROL",
    0x4B564D06: "KVM_ASYNC_PF_INT",
    0x4B564D07: "KVM_ASYNC_PF_ACK",
    0x4B564D08: "KVM_MIGRATION_CONTROL",
}

#: x2APIC registers (``APIC_*`` offsets of apicdef.h) as MSRs ``0x800 + offset / 16``.
_APIC_OFFSETS = {
    0x20: "ID",
    0x30: "LVR",
    0x80: "TASKPRI",
    0xA0: "PROCPRI",
    0xB0: "EOI",
    0xD0: "LDR",
    0xF0: "SPIV",
    0x280: "ESR",
    0x2F0: "LVTCMCI",
    0x300: "ICR",
    0x320: "LVTT",
    0x330: "LVTTHMR",
    0x340: "LVTPC",
    0x350: "LVT0",
    0x360: "LVT1",
    0x370: "LVTERR",
    0x380: "TMICT",
    0x390: "TMCCT",
    0x3E0: "TDCR",
    0x3F0: "SELF_IPI",
}
MSRS.update({0x800 + (off >> 4): "X2APIC_" + name for off, name in _APIC_OFFSETS.items()})


def msr_name(index: int) -> str:
    """``EFER``, ``X2APIC_ICR``, ... or ``MSR_0x...``."""
    name = MSRS.get(index)
    return name if name is not None else "MSR_%#x" % index


def cr_name(cr: int) -> str:
    return "CR%d" % cr
