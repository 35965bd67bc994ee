"""Exit-reason decoding, one plain data table per architecture.

Every exit is reduced to two integers, ``(code, detail)``, the same in the kernel maps and in
trace files:

- arm64: ``code`` is the exception type (``ARM_EXCEPTION_CODE(ret)``), ``detail`` is the ESR
  exception class for TRAP exits (0 otherwise) with bit 31 set when an SError was pending;
- x86: ``code`` is ``exit_reason`` as traced, ``detail`` is the ``isa`` field (1 VMX, 2 SVM).

Unknown values are named by their number, never dropped.
"""

from __future__ import annotations

import re
from typing import Dict, List, Tuple

from . import arm64, svm, vmx

__all__ = [
    "ARCH_ARM64",
    "ARCH_X86",
    "ISA_VMX",
    "ISA_SVM",
    "label",
    "normalize_arm64",
    "reason_names",
    "is_reason_name",
    "ROW_REASONS",
    "ROW_KEY_SPACE",
]

ARCH_ARM64 = "arm64"
ARCH_X86 = "x86"
ISA_VMX = 1  # KVM_ISA_VMX
ISA_SVM = 2  # KVM_ISA_SVM

SERROR_FLAG = arm64.SERROR_PENDING_BIT


def normalize_arm64(ret: int, esr_ec: int) -> Tuple[int, int]:
    """Reduce a raw arm64 ``(ret, esr_ec)`` to ``(code, detail)``.

    Applies what the upstream tracepoint record does (mask the SError bit, zero a stale class
    on exits that are not traps) and keeps the SError flag. The BPF side does the same.
    """
    code, serror = arm64.split_ret(ret)
    ec = esr_ec & 0x3F if code == arm64.ARM_EXCEPTION_TRAP else 0
    return code, ec | (SERROR_FLAG if serror else 0)


def _label_arm64(code: int, detail: int) -> str:
    if code == arm64.ARM_EXCEPTION_TRAP:
        ec = detail & 0x3F
        name = arm64.EXCEPTION_CLASSES.get(ec, "EC_%#04x" % ec)
    else:
        name = arm64.EXCEPTION_TYPES.get(code, "EXC_%#x" % code)
    if detail & SERROR_FLAG:
        name += "+SERROR"
    return name


def _label_x86(code: int, isa: int) -> str:
    if isa == ISA_VMX:
        basic = code & vmx.BASIC_REASON_MASK
        name = vmx.EXIT_REASONS.get(basic, "VMX_%#x" % basic)
        flags = code & ~vmx.BASIC_REASON_MASK & 0xFFFFFFFF
        for bit, flag in vmx.FLAGS.items():
            if flags & bit:
                name += "+" + flag
                flags &= ~bit
        if flags:
            name += "+%#x" % flags
        return name
    if isa == ISA_SVM:
        return svm.EXIT_REASONS.get(code & 0xFFFFFFFF, "SVM_%#x" % code)
    return "ISA%d_%#x" % (isa, code)


def label(arch: str, code: int, detail: int) -> str:
    """The display name of an exit, for example ``IRQ``, ``WFx``, ``HLT`` or ``EC_0x2a``."""
    if arch == ARCH_ARM64:
        return _label_arm64(code, detail)
    if arch == ARCH_X86:
        return _label_x86(code, detail)
    raise ValueError("unknown architecture %r" % arch)


#: The shapes of names given to unknown values by :func:`label`.
_NUMBERED = {
    ARCH_ARM64: re.compile(r"(EC|EXC)_0x[0-9a-f]+\Z", re.IGNORECASE),
    ARCH_X86: re.compile(r"(VMX|SVM|ISA\d+)_0x[0-9a-f]+\Z", re.IGNORECASE),
}


def reason_names(arch: str) -> List[str]:
    """Every name :func:`label` can give a known exit of ``arch`` (without ``+`` flags)."""
    if arch == ARCH_ARM64:
        tables = [arm64.EXCEPTION_TYPES, arm64.EXCEPTION_CLASSES]
    elif arch == ARCH_X86:
        tables = [vmx.EXIT_REASONS, svm.EXIT_REASONS]
    else:
        raise ValueError("unknown architecture %r" % arch)
    return sorted({name for table in tables for name in table.values()})


def is_reason_name(arch: str, name: str) -> bool:
    """True if ``name`` (a ``--reason`` value: case-insensitive, flags after ``+`` ignored) can
    name an exit of ``arch``, including the numbered names of unknown values."""
    base = name.split("+", 1)[0]
    return base.lower() in {n.lower() for n in reason_names(arch)} or bool(_NUMBERED[arch].match(base))


def _by_name(table: Dict[int, str], names: Tuple[str, ...]) -> Tuple[int, ...]:
    codes = {v: k for k, v in table.items()}
    return tuple(codes[n] for n in names)


#: The exits whose statistics the kernel keeps in place in each thread's slot (one map lookup per
#: event); other (code, detail) pairs go to a keyed map, slower but never dropped. The frequent
#: exits of real hosts (each row costs every thread's slot the size of one statistics record).
_ARM64_ROW_CLASSES = ("WFx", "HVC64", "SMC64", "SYS64", "DABT_LOW", "IABT_LOW", "FP_ASIMD", "HVC32", "CP15_32")
_VMX_ROWS = (
    "EXTERNAL_INTERRUPT",
    "HLT",
    "EPT_VIOLATION",
    "EPT_MISCONFIG",
    "MSR_WRITE",
    "IO_INSTRUCTION",
    "PREEMPTION_TIMER",
    "INTERRUPT_WINDOW",
)
_SVM_ROWS = ("interrupt", "hlt", "npf", "msr", "io", "vintr", "pause", "cpuid")
ROW_REASONS: Dict[str, Tuple[Tuple[int, int], ...]] = {
    ARCH_ARM64: (
        (arm64.ARM_EXCEPTION_IRQ, 0),
        (arm64.ARM_EXCEPTION_EL1_SERROR, 0),
        (arm64.ARM_EXCEPTION_IL, 0),
        *((arm64.ARM_EXCEPTION_TRAP, ec) for ec in _by_name(arm64.EXCEPTION_CLASSES, _ARM64_ROW_CLASSES)),
    ),
    ARCH_X86: (
        *((code, ISA_VMX) for code in _by_name(vmx.EXIT_REASONS, _VMX_ROWS)),
        *((code, ISA_SVM) for code in _by_name(svm.EXIT_REASONS, _SVM_ROWS)),
    ),
}
#: (code, detail) pairs with code < codes and detail < details can have a row: the kernel's
#: reason_rows array is indexed by code * details + detail.
ROW_KEY_SPACE: Dict[str, Tuple[int, int]] = {ARCH_ARM64: (4, 64), ARCH_X86: (2048, 4)}
