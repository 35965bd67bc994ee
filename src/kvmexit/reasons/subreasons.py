"""The sub-reason of an exit as one 64-bit number, and its display name.

What the kernel's events inside an exit say (``docs/subreasons.md``) is reduced to one ``u64``
per exit, computed the same way from raw tracepoint arguments (BPF) and from text traces, so that
it can be part of the statistics key. 0 means no sub-reason event was seen (the class says all
there is, or the events were not traced): it is shown as ``-``, never as a made-up name.

arm64, by exception class:

- ``WFx``: 1 WFI, 2 WFE (``kvm_wfx_arm64``'s ``is_wfe`` + 1).
- ``HVC64``/``HVC32``: ``kvm_hvc_arm64``'s ``r0``, the function id, named by
  :mod:`kvmexit.reasons.arm64_calls`: ``HVC_SEEN | w0`` (SMCCC ids are 32-bit; id 0 is a real
  call, so the flag tells it from "no event"). KVM compares all 64 bits of x0, so an x0 with any of
  bits 63:32 set is no function KVM knows: it gets ``HVC_HIGH`` and is shown as
  ``FN_0x<w0>+high`` (its upper half is not kept in the key).
- ``SYS64``: the ESR's ``ISS`` masked to the register and direction,
  ``ESR_ELx_SYS64_ISS_SYS_MASK | ESR_ELx_SYS64_ISS_DIR_MASK`` (Rt dropped), from
  ``kvm_handle_sys_reg``; bit 32 set so that a write to encoding 0 is not 0.
- ``DABT_LOW``/``IABT_LOW``: the kind in bits 63:56 (1 stage-2 memory fault: ``kvm_guest_fault``
  only; 2 MMIO handled in the kernel: ``kvm_mmio``; 3 MMIO handled in the VMM: ``kvm_mmio`` then
  ``kvm_userspace_exit`` with ``KVM_EXIT_MMIO``) and, for MMIO, the guest physical address in
  bits 55:0 (a device is found by its address).
"""

from __future__ import annotations

from typing import List, Sequence

from .arm64_calls import function_name
from .arm64_iss import decode_sys64, sysreg_name
from .x86_sub import cr_name, msr_name

__all__ = [
    "NONE",
    "WFI",
    "WFE",
    "HVC_SEEN",
    "HVC_HIGH",
    "SYS64_SEEN",
    "hvc_sub",
    "sys64_sub",
    "ABORT_MEMORY",
    "ABORT_KERNEL_MMIO",
    "ABORT_USER_MMIO",
    "abort_sub",
    "label_arm64",
    "X86_SEEN",
    "msr_sub",
    "pio_sub",
    "cr_sub",
    "hypercall_sub",
    "cpuid_sub",
    "label_x86",
    "CLASS_NONE",
    "CLASS_WFX",
    "CLASS_HVC",
    "CLASS_SYS64",
    "CLASS_ABORT",
    "CLASS_MSR",
    "CLASS_IO",
    "CLASS_CR",
    "CLASS_HYPERCALL",
    "CLASS_CPUID",
    "CLASS_FAULT",
    "arm64_ec",
    "sub_class",
    "bpf_defines",
    "sub_label",
]

NONE = 0
WFI = 1
WFE = 2

HVC_SEEN = 1 << 63
HVC_HIGH = 1 << 62

SYS64_SEEN = 1 << 32
_SYS64_MASK = 0x3FFC1F  # Op0 21:20, Op2 19:17, Op1 16:14, CRn 13:10, CRm 4:1, direction 0 (Rt 9:5 dropped)

ABORT_MEMORY = 1
ABORT_KERNEL_MMIO = 2
ABORT_USER_MMIO = 3
_KIND_SHIFT = 56
_ADDR_MASK = (1 << _KIND_SHIFT) - 1
_ABORT_NAMES = {ABORT_MEMORY: "memory", ABORT_KERNEL_MMIO: "mmio-kernel", ABORT_USER_MMIO: "mmio-vmm"}

#: ESR exception classes (reasons.arm64.EXCEPTION_CLASSES) with a sub-reason.
_EC_WFX, _EC_HVC32, _EC_HVC64, _EC_SYS64, _EC_IABT_LOW, _EC_DABT_LOW = 0x01, 0x12, 0x16, 0x18, 0x20, 0x24


def hvc_sub(r0: int) -> int:
    return HVC_SEEN | (HVC_HIGH if r0 >> 32 else 0) | (r0 & 0xFFFFFFFF)


def sys64_sub(esr: int) -> int:
    return SYS64_SEEN | (esr & _SYS64_MASK)


def abort_sub(kind: int, gpa: int = 0) -> int:
    """``kind`` one of the ``ABORT_*``; the address is kept for MMIO only."""
    addr = gpa & _ADDR_MASK if kind in (ABORT_KERNEL_MMIO, ABORT_USER_MMIO) else 0
    return (kind << _KIND_SHIFT) | addr


def label_arm64(ec: int, sub: int) -> str:
    """The sub-reason's name under the exit class ``ec``: ``WFI``, ``PSCI_CPU_ON``,
    ``ICC_SGI1R_EL1 write``, ``mmio-vmm 0x9000000``, ``memory``; ``-`` when there is none.
    A value that does not fit its class is shown as a number, never dropped."""
    if sub == NONE:
        return "-"
    if ec == _EC_WFX and sub in (WFI, WFE):
        return "WFI" if sub == WFI else "WFE"
    if ec in (_EC_HVC64, _EC_HVC32) and sub & HVC_SEEN and not sub & ~(HVC_SEEN | HVC_HIGH | 0xFFFFFFFF):
        if sub & HVC_HIGH:
            return "FN_%#x+high" % (sub & 0xFFFFFFFF)
        return function_name(sub & 0xFFFFFFFF)
    if ec == _EC_SYS64 and sub & SYS64_SEEN and not sub & ~(SYS64_SEEN | _SYS64_MASK):
        acc = decode_sys64(sub)
        return "%s %s" % (sysreg_name(*acc.encoding), "write" if acc.is_write else "read")
    if ec in (_EC_DABT_LOW, _EC_IABT_LOW):
        name = _ABORT_NAMES.get(sub >> _KIND_SHIFT)
        if name is not None:
            addr = sub & _ADDR_MASK
            return name if sub >> _KIND_SHIFT == ABORT_MEMORY else "%s %#x" % (name, addr)
    return "SUB_%#x" % sub


# --- x86 (VMX and SVM) --------------------------------------------------------------------------
#
# By the exit's name (reasons.label): MSR_READ/MSR_WRITE/msr: ``X86_SEEN | write << 32 | index``
# (``kvm_msr``); IO_INSTRUCTION/io: ``X86_SEEN | write << 16 | port`` (``kvm_pio``);
# CR_ACCESS and the SVM CR exits: ``X86_SEEN | write << 8 | cr`` (``kvm_cr``); VMCALL/vmmcall:
# ``X86_SEEN | nr`` (``kvm_hypercall``, nr below 2^62); CPUID/cpuid: ``X86_SEEN | function``
# (``kvm_cpuid``); EPT_VIOLATION, EPT_MISCONFIG, npf: the abort kinds above (``kvm_mmio`` or
# ``kvm_fast_mmio``: MMIO with its address, in the VMM with ``KVM_EXIT_MMIO``; ``kvm_page_fault``
# alone: memory).

X86_SEEN = 1 << 62
X86_MSR = frozenset({"MSR_READ", "MSR_WRITE", "msr"})
X86_IO = frozenset({"IO_INSTRUCTION", "io"})
_SVM_CR = {"%s_cr%d" % (rw, n) for rw in ("read", "write") for n in range(16)}
X86_CR = frozenset({"CR_ACCESS", "cr0_sel_write"} | _SVM_CR)
X86_HYPERCALL = frozenset({"VMCALL", "vmmcall", "hypercall"})  # SVM_EXIT_REASONS names VMMCALL "hypercall"
X86_CPUID = frozenset({"CPUID", "cpuid"})
X86_FAULT = frozenset({"EPT_VIOLATION", "EPT_MISCONFIG", "npf"})


def msr_sub(is_write: bool, index: int) -> int:
    return X86_SEEN | (int(is_write) << 32) | (index & 0xFFFFFFFF)


def pio_sub(is_write: bool, port: int) -> int:
    return X86_SEEN | (int(is_write) << 16) | (port & 0xFFFF)


def cr_sub(is_write: bool, cr: int) -> int:
    return X86_SEEN | (int(is_write) << 8) | (cr & 0xFF)


def hypercall_sub(nr: int) -> int:
    return X86_SEEN | (nr & (X86_SEEN - 1))


def cpuid_sub(function: int) -> int:
    return X86_SEEN | (function & 0xFFFFFFFF)


def label_x86(exit_name: str, sub: int) -> str:
    """``EFER write``, ``port 0x3f8 write``, ``CR4 write``, ``hypercall 0x5``, ``leaf 0x40000001``,
    ``mmio-kernel 0xfee00300``, ``memory``; ``-`` for none; a misfit is a number."""
    if sub == NONE:
        return "-"
    base = exit_name.split("+", 1)[0]
    seen = bool(sub & X86_SEEN) and not sub >> 63
    low = sub & ~X86_SEEN
    rw = "write" if low >> 32 & 1 else "read"
    if base in X86_MSR and seen and low >> 33 == 0:
        return "%s %s" % (msr_name(low & 0xFFFFFFFF), rw)
    if base in X86_IO and seen and low >> 17 == 0:
        return "port %#x %s" % (low & 0xFFFF, "write" if low >> 16 else "read")
    if base in X86_CR and seen and low >> 9 == 0:
        return "%s %s" % (cr_name(low & 0xFF), "write" if low >> 8 else "read")
    if base in X86_HYPERCALL and seen:
        return "hypercall %#x" % low
    if base in X86_CPUID and seen and low >> 32 == 0:
        return "leaf %#x" % low
    if base in X86_FAULT:
        name = _ABORT_NAMES.get(sub >> _KIND_SHIFT)
        if name is not None:
            return name if sub >> _KIND_SHIFT == ABORT_MEMORY else "%s %#x" % (name, sub & _ADDR_MASK)
    return "SUB_%#x" % sub


# --- Which exits have a sub-reason, and the constants of the kernel's copy of the rule ----------
#
# The BPF programs (``bpf/kvmexit.bpf.c``, ``KVMEXIT_SUB``) compute the same u64 as
# ``sources/trace/subdecode.exit_sub_*`` from the raw tracepoints' arguments. They get every
# constant and every "which exits" test from here, as compile-time defines.

CLASS_NONE = 0
CLASS_WFX = 1
CLASS_HVC = 2
CLASS_SYS64 = 3
CLASS_ABORT = 4  # arm64 DABT_LOW / IABT_LOW
CLASS_MSR = 5
CLASS_IO = 6
CLASS_CR = 7
CLASS_HYPERCALL = 8
CLASS_CPUID = 9
CLASS_FAULT = 10  # x86 EPT_VIOLATION / EPT_MISCONFIG / npf

_ARM64_TRAP = 2  # reasons.arm64.ARM_EXCEPTION_TRAP
_ARM64_CLASSES = {
    _EC_WFX: CLASS_WFX,
    _EC_HVC32: CLASS_HVC,
    _EC_HVC64: CLASS_HVC,
    _EC_SYS64: CLASS_SYS64,
    _EC_IABT_LOW: CLASS_ABORT,
    _EC_DABT_LOW: CLASS_ABORT,
}
_X86_CLASSES = (
    (X86_MSR, CLASS_MSR),
    (X86_IO, CLASS_IO),
    (X86_CR, CLASS_CR),
    (X86_HYPERCALL, CLASS_HYPERCALL),
    (X86_CPUID, CLASS_CPUID),
    (X86_FAULT, CLASS_FAULT),
)


def arm64_ec(code: int, detail: int) -> int:
    """The exception class an arm64 key ``(code, detail)`` gives the rule (0 for a non-trap)."""
    return detail & 0x3F if code == _ARM64_TRAP else 0


def sub_class(arch: str, code: int, detail: int) -> int:
    """Which sub-reason events can classify an exit of key ``(code, detail)`` (``CLASS_*``)."""
    if arch == "arm64":
        return _ARM64_CLASSES.get(arm64_ec(code, detail), CLASS_NONE) if code == _ARM64_TRAP else CLASS_NONE
    from . import label  # the package imports this module's siblings first

    base = label(arch, code, detail).split("+", 1)[0]
    for names, cls in _X86_CLASSES:
        if base in names:
            return cls
    return CLASS_NONE


def _c_set(var: str, values: Sequence[int]) -> str:
    """A C test of ``var`` against a set of integers, as ranges."""
    parts, vals = [], sorted(set(values))
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        if i == j:
            parts.append("%s == %#x" % (var, vals[i]))
        else:
            parts.append("(%s >= %#x && %s <= %#x)" % (var, vals[i], var, vals[j]))
        i = j + 1
    return "(%s)" % (" || ".join(parts) or "0")


def bpf_defines(arch: str) -> List[str]:
    """The ``-D`` defines of the kernel's sub-reason programs for ``arch``: the encoding's
    constants and, per class, a test ``SUB_IS_<CLASS>(code, detail)`` on the exit's key."""
    from .kvm_run import KVM_EXIT_MMIO

    out = [
        "SUB_KIND_SHIFT=%d" % _KIND_SHIFT,
        "SUB_ADDR_MASK=%#xULL" % _ADDR_MASK,
        "SUB_ABORT_MEMORY=%d" % ABORT_MEMORY,
        "SUB_ABORT_KERNEL_MMIO=%d" % ABORT_KERNEL_MMIO,
        "SUB_ABORT_USER_MMIO=%d" % ABORT_USER_MMIO,
        "SUB_KVM_EXIT_MMIO=%d" % KVM_EXIT_MMIO,
    ]
    if arch == "arm64":
        out += [
            "SUB_WFI=%d" % WFI,
            "SUB_WFE=%d" % WFE,
            "SUB_HVC_SEEN=%#xULL" % HVC_SEEN,
            "SUB_HVC_HIGH=%#xULL" % HVC_HIGH,
            "SUB_SYS64_SEEN=%#xULL" % SYS64_SEEN,
            "SUB_SYS64_MASK=%#x" % _SYS64_MASK,
        ]
        for cls, name in ((CLASS_WFX, "WFX"), (CLASS_HVC, "HVC"), (CLASS_SYS64, "SYS64"), (CLASS_ABORT, "ABORT")):
            ecs = [ec for ec, c in _ARM64_CLASSES.items() if c == cls]
            out.append("SUB_IS_%s(c,d)=((c) == %d && %s)" % (name, _ARM64_TRAP, _c_set("((d) & 0x3f)", ecs)))
        return out
    from . import ISA_SVM, ISA_VMX, svm, vmx

    out.append("SUB_X86_SEEN=%#xULL" % X86_SEEN)
    for names, cls in _X86_CLASSES:
        vmx_codes = [c for c, n in vmx.EXIT_REASONS.items() if n in names]
        svm_codes = [c for c, n in svm.EXIT_REASONS.items() if n in names]
        name = {v: k for k, v in globals().items() if k.startswith("CLASS_")}[cls][len("CLASS_") :]
        out.append(
            "SUB_IS_%s(c,d)=(((d) == %d && %s) || ((d) == %d && %s))"
            % (name, ISA_VMX, _c_set("((c) & 0xffff)", vmx_codes), ISA_SVM, _c_set("(c)", svm_codes))
        )
    return out


def sub_label(arch: str, code: int, detail: int, sub: int) -> str:
    """The name of sub-reason ``sub`` of an exit of key ``(code, detail)``: ``-`` for none."""
    if arch == "arm64":
        return label_arm64(arm64_ec(code, detail), sub)
    from . import label

    return label_x86(label(arch, code, detail), sub)
