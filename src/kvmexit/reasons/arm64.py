"""arm64 exit decoding tables.

Mirrors the kernel's own definitions:
- exception types: ``arch/arm64/include/asm/kvm_asm.h`` (``ARM_EXCEPTION_*``,
  ``ARM_EXIT_WITH_SERROR_BIT``);
- exception classes: ``arch/arm64/include/asm/esr.h`` (``ESR_ELx_EC_*``), as of 6.x
  (including PAC, OTHER, BTI, FPAC, SME, MOPS and GCS).
"""

from __future__ import annotations

from typing import Tuple

__all__ = [
    "EXCEPTION_TYPES",
    "EXCEPTION_CLASSES",
    "ARM_EXCEPTION_TRAP",
    "SERROR_PENDING_BIT",
    "split_ret",
]

#: ``ARM_EXIT_WITH_SERROR_BIT``: set in ``ret`` when an SError was pending at exit.
SERROR_PENDING_BIT = 1 << 31

ARM_EXCEPTION_IRQ = 0
ARM_EXCEPTION_EL1_SERROR = 1
ARM_EXCEPTION_TRAP = 2
ARM_EXCEPTION_IL = 3
ARM_EXCEPTION_HYP_GONE = 0xBADCA11  # HVC_STUB_ERR

EXCEPTION_TYPES = {
    ARM_EXCEPTION_IRQ: "IRQ",
    ARM_EXCEPTION_EL1_SERROR: "EL1_SERROR",
    ARM_EXCEPTION_TRAP: "TRAP",
    ARM_EXCEPTION_IL: "IL",
    ARM_EXCEPTION_HYP_GONE: "HYP_GONE",
}

EXCEPTION_CLASSES = {
    0x00: "UNKNOWN",
    0x01: "WFx",
    0x03: "CP15_32",
    0x04: "CP15_64",
    0x05: "CP14_MR",
    0x06: "CP14_LS",
    0x07: "FP_ASIMD",
    0x08: "CP10_ID",
    0x09: "PAC",
    0x0A: "OTHER",
    0x0C: "CP14_64",
    0x0D: "BTI",
    0x0E: "ILL",
    0x11: "SVC32",
    0x12: "HVC32",
    0x13: "SMC32",
    0x15: "SVC64",
    0x16: "HVC64",
    0x17: "SMC64",
    0x18: "SYS64",
    0x19: "SVE",
    0x1A: "ERET",
    0x1C: "FPAC",
    0x1D: "SME",
    0x1F: "IMP_DEF",
    0x20: "IABT_LOW",
    0x21: "IABT_CUR",
    0x22: "PC_ALIGN",
    0x24: "DABT_LOW",
    0x25: "DABT_CUR",
    0x26: "SP_ALIGN",
    0x27: "MOPS",
    0x28: "FP_EXC32",
    0x2C: "FP_EXC64",
    0x2D: "GCS",
    0x2F: "SERROR",
    0x30: "BREAKPT_LOW",
    0x31: "BREAKPT_CUR",
    0x32: "SOFTSTP_LOW",
    0x33: "SOFTSTP_CUR",
    0x34: "WATCHPT_LOW",
    0x35: "WATCHPT_CUR",
    0x38: "BKPT32",
    0x3A: "VECTOR32",
    0x3C: "BRK64",
}


def split_ret(ret: int) -> Tuple[int, bool]:
    """Split a raw ``ret`` into (exception code, SError pending), as ``ARM_EXCEPTION_CODE``."""
    ret &= 0xFFFFFFFF
    return ret & ~SERROR_PENDING_BIT, bool(ret & SERROR_PENDING_BIT)
