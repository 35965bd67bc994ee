"""Intel VMX basic exit reasons.

Mirrors ``arch/x86/include/uapi/asm/vmx.h`` (``EXIT_REASON_*`` / ``VMX_EXIT_REASONS``), taken from
the ``kvm_exit`` print format of a 6.18 kernel. The basic reason is the low 16 bits of
``exit_reason``; the high bits are flags.
"""

from __future__ import annotations

__all__ = ["EXIT_REASONS", "FLAGS", "BASIC_REASON_MASK"]

BASIC_REASON_MASK = 0xFFFF

#: Flag bits above the basic reason that the kernel's print format names; other set bits are
#: shown as raw hex.
FLAGS = {
    0x80000000: "FAILED_VMENTRY",
}

EXIT_REASONS = {
    0x00: "EXCEPTION_NMI",
    0x01: "EXTERNAL_INTERRUPT",
    0x02: "TRIPLE_FAULT",
    0x03: "INIT_SIGNAL",
    0x04: "SIPI_SIGNAL",
    0x07: "INTERRUPT_WINDOW",
    0x08: "NMI_WINDOW",
    0x09: "TASK_SWITCH",
    0x0A: "CPUID",
    0x0C: "HLT",
    0x0D: "INVD",
    0x0E: "INVLPG",
    0x0F: "RDPMC",
    0x10: "RDTSC",
    0x12: "VMCALL",
    0x13: "VMCLEAR",
    0x14: "VMLAUNCH",
    0x15: "VMPTRLD",
    0x16: "VMPTRST",
    0x17: "VMREAD",
    0x18: "VMRESUME",
    0x19: "VMWRITE",
    0x1A: "VMOFF",
    0x1B: "VMON",
    0x1C: "CR_ACCESS",
    0x1D: "DR_ACCESS",
    0x1E: "IO_INSTRUCTION",
    0x1F: "MSR_READ",
    0x20: "MSR_WRITE",
    0x21: "INVALID_STATE",
    0x22: "MSR_LOAD_FAIL",
    0x24: "MWAIT_INSTRUCTION",
    0x25: "MONITOR_TRAP_FLAG",
    0x27: "MONITOR_INSTRUCTION",
    0x28: "PAUSE_INSTRUCTION",
    0x29: "MCE_DURING_VMENTRY",
    0x2B: "TPR_BELOW_THRESHOLD",
    0x2C: "APIC_ACCESS",
    0x2D: "EOI_INDUCED",
    0x2E: "GDTR_IDTR",
    0x2F: "LDTR_TR",
    0x30: "EPT_VIOLATION",
    0x31: "EPT_MISCONFIG",
    0x32: "INVEPT",
    0x33: "RDTSCP",
    0x34: "PREEMPTION_TIMER",
    0x35: "INVVPID",
    0x36: "WBINVD",
    0x37: "XSETBV",
    0x38: "APIC_WRITE",
    0x39: "RDRAND",
    0x3A: "INVPCID",
    0x3B: "VMFUNC",
    0x3C: "ENCLS",
    0x3D: "RDSEED",
    0x3E: "PML_FULL",
    0x3F: "XSAVES",
    0x40: "XRSTORS",
    0x43: "UMWAIT",
    0x44: "TPAUSE",
    0x4A: "BUS_LOCK",
    0x4B: "NOTIFY",
    0x4D: "TDCALL",
    0x54: "MSR_READ_IMM",
    0x55: "MSR_WRITE_IMM",
}
