"""arm64 hypercall function ids (what a guest puts in x0 before ``hvc #0`` or a trapped ``smc``).

Mirrors, as of Linux 6.1:

- PSCI 0.2, 1.0 and 1.1 (Arm DEN0022): ``include/uapi/linux/psci.h`` (``PSCI_0_2_FN_*``,
  ``PSCI_0_2_FN64_*``, ``PSCI_1_0_FN*``, ``PSCI_1_1_FN*``);
- KVM's pre-SMCCC PSCI 0.1 ids: ``arch/arm64/include/uapi/asm/kvm.h`` (``KVM_PSCI_FN_*``);
- SMCCC architecture calls (Arm DEN0028), KVM's vendor hypervisor services, paravirtualised time
  (Arm DEN0057A) and the TRNG (Arm DEN0098): ``include/linux/arm-smccc.h``.

KVM's handler (``arch/arm64/kvm/hypercalls.c``) compares the whole of x0 with these 32-bit ids,
so a value with any of bits 63:32 set is no known function; it is named by its number.
"""

from __future__ import annotations

from typing import Dict

__all__ = ["FUNCTIONS", "function_name", "SMCCC_OWNERS"]

_PSCI_BASE = 0x84000000  # PSCI_0_2_FN_BASE
_PSCI_64 = 0x40000000  # PSCI_0_2_64BIT
_KVM_PSCI_BASE = 0x95C1BA5E  # KVM_PSCI_FN_BASE


def _call(fast: int, smc64: int, owner: int, func: int) -> int:
    """``ARM_SMCCC_CALL_VAL(type, calling_convention, owner, func_num)``."""
    return (fast << 31) | (smc64 << 30) | ((owner & 0x3F) << 24) | (func & 0xFFFF)


#: ``ARM_SMCCC_OWNER_*``: the service a call id belongs to (bits 29:24).
SMCCC_OWNERS: Dict[int, str] = {
    0: "ARCH",
    1: "CPU",
    2: "SIP",
    3: "OEM",
    4: "STANDARD",
    5: "STANDARD_HYP",
    6: "VENDOR_HYP",
}

_PSCI_32 = {
    0: "PSCI_VERSION",
    1: "PSCI_CPU_SUSPEND",
    2: "PSCI_CPU_OFF",
    3: "PSCI_CPU_ON",
    4: "PSCI_AFFINITY_INFO",
    5: "PSCI_MIGRATE",
    6: "PSCI_MIGRATE_INFO_TYPE",
    7: "PSCI_MIGRATE_INFO_UP_CPU",
    8: "PSCI_SYSTEM_OFF",
    9: "PSCI_SYSTEM_RESET",
    10: "PSCI_FEATURES",
    11: "PSCI_CPU_FREEZE",
    12: "PSCI_CPU_DEFAULT_SUSPEND",
    13: "PSCI_NODE_HW_STATE",
    14: "PSCI_SYSTEM_SUSPEND",
    15: "PSCI_SET_SUSPEND_MODE",
    16: "PSCI_STAT_RESIDENCY",
    17: "PSCI_STAT_COUNT",
    18: "PSCI_SYSTEM_RESET2",
    19: "PSCI_MEM_PROTECT",
    20: "PSCI_MEM_PROTECT_CHECK_RANGE",
}
#: The functions psci.h defines with the SMC64 convention (``PSCI_0_2_FN64_*``, ``PSCI_1_x_FN64_*``).
_PSCI_64_NUMS = (1, 3, 4, 5, 7, 12, 13, 14, 16, 17, 18, 20)

#: Function id -> name. Names are the kernel's macro names without their version prefix; the
#: SMC64 forms of PSCI end in ``64`` (``PSCI_CPU_ON64``).
FUNCTIONS: Dict[int, str] = {}
FUNCTIONS.update({_PSCI_BASE + n: name for n, name in _PSCI_32.items()})
FUNCTIONS.update({_PSCI_BASE + _PSCI_64 + n: _PSCI_32[n] + "64" for n in _PSCI_64_NUMS})
FUNCTIONS.update(
    {
        _KVM_PSCI_BASE + 0: "KVM_PSCI_CPU_SUSPEND",
        _KVM_PSCI_BASE + 1: "KVM_PSCI_CPU_OFF",
        _KVM_PSCI_BASE + 2: "KVM_PSCI_CPU_ON",
        _KVM_PSCI_BASE + 3: "KVM_PSCI_MIGRATE",
        _call(1, 0, 0, 0): "SMCCC_VERSION",
        _call(1, 0, 0, 1): "SMCCC_ARCH_FEATURES",
        _call(1, 0, 0, 2): "SMCCC_ARCH_SOC_ID",
        _call(1, 0, 0, 0x8000): "SMCCC_ARCH_WORKAROUND_1",
        _call(1, 0, 0, 0x7FFF): "SMCCC_ARCH_WORKAROUND_2",
        _call(1, 0, 0, 0x3FFF): "SMCCC_ARCH_WORKAROUND_3",
        _call(1, 0, 6, 0xFF01): "VENDOR_HYP_CALL_UID",
        _call(1, 0, 6, 0): "KVM_FEATURES",
        _call(1, 0, 6, 1): "KVM_PTP",
        _call(1, 1, 5, 0x20): "HV_PV_TIME_FEATURES",
        _call(1, 1, 5, 0x21): "HV_PV_TIME_ST",
        _call(1, 0, 4, 0x50): "TRNG_VERSION",
        _call(1, 0, 4, 0x51): "TRNG_FEATURES",
        _call(1, 0, 4, 0x52): "TRNG_GET_UUID",
        _call(1, 0, 4, 0x53): "TRNG_RND32",
        _call(1, 1, 4, 0x53): "TRNG_RND64",
    }
)


def function_name(r0: int) -> str:
    """The name of the function id in x0, or ``FN_0x...`` (its number) when it is none of the above."""
    name = FUNCTIONS.get(r0)
    return name if name is not None else "FN_%#x" % r0
