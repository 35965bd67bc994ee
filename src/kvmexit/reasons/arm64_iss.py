"""Decoding of an arm64 ESR's syndrome (ISS) for the exits kvmexit explains.

Mirrors ``arch/arm64/include/asm/esr.h`` (Linux 6.1): ``ESR_ELx_EC_SHIFT`` 26, ``ESR_ELx_IL`` bit 25,
``ESR_ELx_ISS_MASK`` bits 24:0; the ``ESR_ELx_SYS64_ISS_*`` fields of a trapped MSR/MRS
(EC 0x18: Op0 21:20, Op2 19:17, Op1 16:14, CRn 13:10, Rt 9:5, CRm 4:1, direction 0 with
``ESR_ELx_SYS64_ISS_DIR_READ`` = 1); the data abort fields ``ESR_ELx_ISV`` 24, ``ESR_ELx_SAS``
23:22, ``ESR_ELx_SSE`` 21, ``ESR_ELx_SRT`` 20:16, ``ESR_ELx_SF`` 15, ``ESR_ELx_AR`` 14,
``ESR_ELx_FnV`` 10, ``ESR_ELx_EA`` 9, ``ESR_ELx_CM`` 8, ``ESR_ELx_S1PTW`` 7, ``ESR_ELx_WNR`` 6,
``ESR_ELx_FSC`` 5:0 (``ESR_ELx_FSC_TYPE`` 0x3c: ``FSC_FAULT`` 0x04 translation, ``FSC_ACCESS``
0x08 access flag, ``FSC_PERM`` 0x0c permission); the WFx ISS ``ESR_ELx_WFx_ISS_TI`` 1:0
(0 WFI, 1 WFE, 2 WFIT, 3 WFET).

System register names come from :mod:`kvmexit.reasons.arm64_sysregs` (generated from the kernel's
``sysreg.h``); an encoding it does not know is named as the assembler would accept it,
``S3_0_C4_C0_0``.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

from .arm64_sysregs import SYSREGS

__all__ = [
    "esr_ec",
    "SysregAccess",
    "decode_sys64",
    "sysreg_name",
    "DataAbort",
    "decode_abort",
    "FAULT_TYPES",
    "WFX_KINDS",
    "wfx_kind",
]

EC_SHIFT = 26
IL_BIT = 1 << 25
ISS_MASK = IL_BIT - 1

#: ``ESR_ELx_FSC_TYPE`` values (fault status codes without the level bits) KVM handles.
FAULT_TYPES = {0x04: "translation", 0x08: "access", 0x0C: "permission"}

#: ``ESR_ELx_WFx_ISS_TI``: which wait instruction trapped.
WFX_KINDS = {0: "WFI", 1: "WFE", 2: "WFIT", 3: "WFET"}


def esr_ec(esr: int) -> int:
    """``ESR_ELx_EC(esr)``: the exception class."""
    return (esr >> EC_SHIFT) & 0x3F


def wfx_kind(esr: int) -> str:
    return WFX_KINDS[esr & 3]


class SysregAccess(NamedTuple):
    """A trapped MSR/MRS (EC 0x18): the register's encoding, Rt and whether it was a write."""

    op0: int
    op1: int
    crn: int
    crm: int
    op2: int
    rt: int
    is_write: bool

    @property
    def encoding(self) -> Tuple[int, int, int, int, int]:
        return (self.op0, self.op1, self.crn, self.crm, self.op2)


def decode_sys64(esr: int) -> SysregAccess:
    """The ``ESR_ELx_SYS64_ISS_*`` fields of an ESR (or of its ISS alone)."""
    return SysregAccess(
        op0=(esr >> 20) & 0x3,
        op1=(esr >> 14) & 0x7,
        crn=(esr >> 10) & 0xF,
        crm=(esr >> 1) & 0xF,
        op2=(esr >> 17) & 0x7,
        rt=(esr >> 5) & 0x1F,
        is_write=not (esr & 1),
    )


def sysreg_name(op0: int, op1: int, crn: int, crm: int, op2: int) -> str:
    """The kernel's name of a system register, or ``S<op0>_<op1>_C<crn>_C<crm>_<op2>``."""
    name = SYSREGS.get((op0, op1, crn, crm, op2))
    if name is not None:
        return name
    return "S%d_%d_C%d_C%d_%d" % (op0, op1, crn, crm, op2)


class DataAbort(NamedTuple):
    """The syndrome of a data or instruction abort from a lower EL (EC 0x24 / 0x20)."""

    isv: bool  #: instruction syndrome valid: SAS/SSE/SRT/SF/AR mean something
    size: Optional[int]  #: access size in bytes (1 << SAS) when ISV
    is_write: bool  #: WnR (for a stage-1 page table walk, S1PTW, this says nothing of the access)
    s1ptw: bool
    cache_op: bool  #: CM: a cache maintenance instruction
    external: bool  #: EA
    fsc: int  #: fault status code (type and level)

    @property
    def fault_type(self) -> str:
        """``translation``, ``access``, ``permission`` or ``FSC_0x..``."""
        return FAULT_TYPES.get(self.fsc & 0x3C, "FSC_%#04x" % self.fsc)


def decode_abort(esr: int) -> DataAbort:
    isv = bool(esr & (1 << 24))
    return DataAbort(
        isv=isv,
        size=(1 << ((esr >> 22) & 3)) if isv else None,
        is_write=bool(esr & (1 << 6)),
        s1ptw=bool(esr & (1 << 7)),
        cache_op=bool(esr & (1 << 8)),
        external=bool(esr & (1 << 9)),
        fsc=esr & 0x3F,
    )
