"""``KVM_EXIT_*``: why ``KVM_RUN`` returned to the VMM (``kvm_userspace_exit``'s ``reason``).

Mirrors ``include/uapi/linux/kvm.h`` (Linux 6.1; 15 ``KVM_EXIT_DCR``, 19 ``KVM_EXIT_PAPR_HCALL``
and 20 ``KVM_EXIT_S390_UCONTROL`` are defined there under other headers' conditions and kept here).
``kvm_userspace_exit`` prints ``restart`` instead of the reason when ``errno`` is ``-EINTR`` and
``error`` for any other negative ``errno`` (``include/trace/events/kvm.h``).
"""

from __future__ import annotations

from typing import Dict

__all__ = ["EXIT_REASONS", "userspace_exit_name", "EINTR", "KVM_EXIT_MMIO"]

EINTR = 4
KVM_EXIT_MMIO = 6

EXIT_REASONS: Dict[int, str] = {
    0: "UNKNOWN",
    1: "EXCEPTION",
    2: "IO",
    3: "HYPERCALL",
    4: "DEBUG",
    5: "HLT",
    6: "MMIO",
    7: "IRQ_WINDOW_OPEN",
    8: "SHUTDOWN",
    9: "FAIL_ENTRY",
    10: "INTR",
    11: "SET_TPR",
    12: "TPR_ACCESS",
    13: "S390_SIEIC",
    14: "S390_RESET",
    15: "DCR",
    16: "NMI",
    17: "INTERNAL_ERROR",
    18: "OSI",
    19: "PAPR_HCALL",
    20: "S390_UCONTROL",
    21: "WATCHDOG",
    22: "S390_TSCH",
    23: "EPR",
    24: "SYSTEM_EVENT",
    25: "S390_STSI",
    26: "IOAPIC_EOI",
    27: "HYPERV",
    28: "ARM_NISV",
    29: "X86_RDMSR",
    30: "X86_WRMSR",
    31: "DIRTY_RING_FULL",
    32: "AP_RESET_HOLD",
    33: "X86_BUS_LOCK",
    34: "XEN",
    35: "RISCV_SBI",
    36: "RISCV_CSR",
    37: "NOTIFY",
}


def userspace_exit_name(reason: int, errno: int = 0) -> str:
    """``MMIO``, ``SYSTEM_EVENT``, ... as the tracepoint names it; ``restart``/``error`` for errno < 0."""
    if errno < 0:
        return "restart" if errno == -EINTR else "error"
    name = EXIT_REASONS.get(reason)
    return name if name is not None else "EXIT_%d" % reason
