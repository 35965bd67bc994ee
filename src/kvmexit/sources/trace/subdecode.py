"""Decoding of the sub-reason events of text traces (see ``docs/subreasons.md``).

A text trace holds what the kernel's ``TP_printk`` made of each record; ``trace-cmd report`` and
``perf script`` print the same text through libtraceevent, or, for a format it cannot evaluate,
``[FAILED TO PARSE]`` followed by ``field=value`` pairs. Both are read here. The print formats
(Linux 4.19 to 6.1; source named per event):

arm64 (``arch/arm64/kvm/trace_handle_exit.h``, 4.19 ``arch/arm64/kvm/trace.h``)::

    kvm_wfx_arm64: guest executed wf%c at: 0x%016lx          (4.19: 0x%08lx)
    kvm_hvc_arm64: HVC at 0x%016lx (r0: 0x%016lx, imm: 0x%lx)
    kvm_handle_sys_reg: HSR 0x%08lx
    kvm_sys_access: PC: %lx %s (%d,%d,%d,%d,%d) %s           (5.x+; name or UNKN, read/write)

arm64 (``arch/arm64/kvm/trace_arm.h``, 4.19 ``virt/kvm/arm/trace.h``)::

    kvm_guest_fault: ipa %#llx, hsr %#08lx, hxfar %#08lx, pc %#016lx
    kvm_access_fault: IPA: %lx

common (``include/trace/events/kvm.h``)::

    kvm_mmio: mmio %s len %u gpa 0x%llx val 0x%llx           (unsatisfied-read, read, write)
    kvm_userspace_exit: reason %s (%d)                        (KVM_EXIT_MMIO (6), restart (4), error (14))

x86 (``arch/x86/kvm/trace.h``)::

    kvm_msr: msr_%s %x = 0x%llx%s                             (read/write, " (#GP)")
    kvm_pio: pio_%s at 0x%x size %d count %d val 0x%x %s
    kvm_cr: cr_%s %x = 0x%lx
    kvm_hypercall: nr 0x%lx a0 0x%lx a1 0x%lx a2 0x%lx a3 0x%lx
    kvm_cpuid: func %x idx %x rax %lx ...                     (4.19: func %x rax %lx ...)
    kvm_page_fault: vcpu %u rip 0x%lx address 0x%016llx error_code 0x%llx   (4.19: address %lx error_code %x)
    kvm_fast_mmio: fast mmio at gpa 0x%llx

``%#x`` prints 0 as ``0`` (no ``0x``), so numbers are read with an optional prefix. Anything that
does not match is ``None``: the caller counts it as malformed, never drops it silently.
"""

from __future__ import annotations

import re
from typing import Callable, Dict, NamedTuple, Optional, Sequence, Union

from ...reasons import subreasons
from ...reasons.kvm_run import KVM_EXIT_MMIO

__all__ = [
    "SUB_EVENTS",
    "Wfx",
    "Hvc",
    "SysReg",
    "SysAccess",
    "GuestFault",
    "AccessFault",
    "Mmio",
    "UserspaceExit",
    "Msr",
    "Pio",
    "Cr",
    "Hypercall",
    "Cpuid",
    "PageFault",
    "FastMmio",
    "SubEvent",
    "decode_sub",
    "exit_sub_arm64",
    "exit_sub_x86",
]


class Wfx(NamedTuple):
    pc: int
    is_wfe: bool


class Hvc(NamedTuple):
    pc: int
    r0: int
    imm: int


class SysReg(NamedTuple):
    esr: int


class SysAccess(NamedTuple):
    pc: int
    name: str  #: KVM's name, ``UNKN`` when its table has none
    op0: int
    op1: int
    crn: int
    crm: int
    op2: int
    is_write: bool


class GuestFault(NamedTuple):
    ipa: int
    esr: int
    far: int
    pc: int


class AccessFault(NamedTuple):
    ipa: int


#: ``kvm_trace_symbol_mmio``: KVM_TRACE_MMIO_READ_UNSATISFIED 0, READ 1, WRITE 2.
MMIO_TYPES = {b"unsatisfied-read": 0, b"read": 1, b"write": 2}


class Mmio(NamedTuple):
    type: int  #: 0 unsatisfied read (the exit goes on to emulate it), 1 completed read, 2 write
    len: int
    gpa: int
    val: int


class UserspaceExit(NamedTuple):
    reason: Optional[int]  #: ``KVM_EXIT_*``; None when the text shows the errno instead
    errno: int  #: 0, or the negative errno (-4 ``restart``, EINTR)


class Msr(NamedTuple):
    is_write: bool
    msr: int  #: ``ecx``: the MSR index
    data: int
    gp: bool


class Pio(NamedTuple):
    is_write: bool
    port: int
    size: int
    reps: int  #: string I/O repetitions (``count``)
    val: int


class Cr(NamedTuple):
    is_write: bool
    cr: int
    val: int


class Hypercall(NamedTuple):
    nr: int
    a0: int
    a1: int
    a2: int
    a3: int


class Cpuid(NamedTuple):
    function: int
    subleaf: Optional[int]  #: ``index``; None on kernels that do not trace it (4.19)


class PageFault(NamedTuple):
    address: int
    error_code: int


class FastMmio(NamedTuple):
    gpa: int


SubEvent = Union[
    Wfx,
    Hvc,
    SysReg,
    SysAccess,
    GuestFault,
    AccessFault,
    Mmio,
    UserspaceExit,
    Msr,
    Pio,
    Cr,
    Hypercall,
    Cpuid,
    PageFault,
    FastMmio,
]

_HEX = rb"(?:0[xX])?([0-9a-fA-F]+)"
_DEC = rb"(-?\d+)"


def _h(b: bytes) -> int:
    return int(b, 16)


_WFX = re.compile(rb"^guest executed wf([ie]) at: 0x([0-9a-fA-F]+)$")
_HVC = re.compile(rb"^HVC at 0x([0-9a-fA-F]+) \(r0: 0x([0-9a-fA-F]+), imm: 0x([0-9a-fA-F]+)\)$")
_HSR = re.compile(rb"^HSR 0x([0-9a-fA-F]+)$")
_SYS = re.compile(rb"^PC: ([0-9a-fA-F]+) (\S+) \((\d+),(\d+),(\d+),(\d+),(\d+)\) (read|write)$")
_FAULT = re.compile(rb"^ipa " + _HEX + rb", hsr " + _HEX + rb", hxfar " + _HEX + rb", pc " + _HEX + rb"$")
_ACCESS = re.compile(rb"^IPA: ([0-9a-fA-F]+)$")
_MMIO = re.compile(rb"^mmio (\S+) len (\d+) gpa 0x([0-9a-fA-F]+) val 0x([0-9a-fA-F]+)$")
_USER = re.compile(rb"^reason (\S+) \((-?\d+)\)$")
_MSR = re.compile(rb"^msr_(read|write) ([0-9a-fA-F]+) = 0x([0-9a-fA-F]+)( \(#GP\))?$")
_PIO = re.compile(
    rb"^pio_(read|write) at 0x([0-9a-fA-F]+) size (\d+) count (\d+) val 0x([0-9a-fA-F]+) ?(?:\(\.\.\.\))?$"
)
_CR = re.compile(rb"^cr_(read|write) ([0-9a-fA-F]+) = 0x([0-9a-fA-F]+)$")
_HCALL = re.compile(
    rb"^nr 0x([0-9a-fA-F]+) a0 0x([0-9a-fA-F]+) a1 0x([0-9a-fA-F]+) a2 0x([0-9a-fA-F]+) a3 0x([0-9a-fA-F]+)$"
)
_CPUID = re.compile(rb"^func ([0-9a-fA-F]+) (?:idx ([0-9a-fA-F]+) )?rax ")
_PF_NEW = re.compile(rb"^vcpu \d+ rip 0x[0-9a-fA-F]+ address 0x([0-9a-fA-F]+) error_code 0x([0-9a-fA-F]+)$")
_PF_OLD = re.compile(rb"^address ([0-9a-fA-F]+) error_code ([0-9a-fA-F]+)$")
_FAST = re.compile(rb"^fast mmio at gpa 0x([0-9a-fA-F]+)$")
_FAILED = b"[FAILED TO PARSE] "


def _wfx(p: bytes) -> Optional[SubEvent]:
    m = _WFX.match(p)
    return Wfx(_h(m.group(2)), m.group(1) == b"e") if m else None


def _hvc(p: bytes) -> Optional[SubEvent]:
    m = _HVC.match(p)
    return Hvc(_h(m.group(1)), _h(m.group(2)), _h(m.group(3))) if m else None


def _hsr(p: bytes) -> Optional[SubEvent]:
    m = _HSR.match(p)
    return SysReg(_h(m.group(1))) if m else None


def _sys(p: bytes) -> Optional[SubEvent]:
    m = _SYS.match(p)
    if not m:
        return None
    op0, op1, crn, crm, op2 = (int(x) for x in m.group(3, 4, 5, 6, 7))
    name = m.group(2).decode("ascii", "replace")
    return SysAccess(_h(m.group(1)), name, op0, op1, crn, crm, op2, m.group(8) == b"write")


def _fault(p: bytes) -> Optional[SubEvent]:
    m = _FAULT.match(p)
    return GuestFault(*(_h(g) for g in m.group(1, 2, 3, 4))) if m else None


def _access(p: bytes) -> Optional[SubEvent]:
    m = _ACCESS.match(p)
    return AccessFault(_h(m.group(1))) if m else None


def _mmio(p: bytes) -> Optional[SubEvent]:
    m = _MMIO.match(p)
    if not m:
        return None
    kind = MMIO_TYPES.get(m.group(1))
    if kind is None:  # __print_symbolic prints an unknown value as 0x%lx
        if not m.group(1).startswith(b"0x"):
            return None
        try:
            kind = _h(m.group(1)[2:])
        except ValueError:
            return None
    return Mmio(kind, int(m.group(2)), _h(m.group(3)), _h(m.group(4)))


def _user(p: bytes) -> Optional[SubEvent]:
    m = _USER.match(p)
    if not m:
        return None
    name, num = m.group(1), int(m.group(2))
    if name in (b"restart", b"error"):  # errno < 0: the kernel prints -errno, not the reason
        return UserspaceExit(None, -num)
    return UserspaceExit(num, 0)


def _msr(p: bytes) -> Optional[SubEvent]:
    m = _MSR.match(p)
    return Msr(m.group(1) == b"write", _h(m.group(2)), _h(m.group(3)), m.group(4) is not None) if m else None


def _pio(p: bytes) -> Optional[SubEvent]:
    m = _PIO.match(p)
    if not m:
        return None
    return Pio(m.group(1) == b"write", _h(m.group(2)), int(m.group(3)), int(m.group(4)), _h(m.group(5)))


def _cr(p: bytes) -> Optional[SubEvent]:
    m = _CR.match(p)
    return Cr(m.group(1) == b"write", _h(m.group(2)), _h(m.group(3))) if m else None


def _hcall(p: bytes) -> Optional[SubEvent]:
    m = _HCALL.match(p)
    return Hypercall(*(_h(g) for g in m.group(1, 2, 3, 4, 5))) if m else None


def _cpuid(p: bytes) -> Optional[SubEvent]:
    m = _CPUID.match(p)
    if not m:
        return None
    return Cpuid(_h(m.group(1)), _h(m.group(2)) if m.group(2) is not None else None)


def _pf(p: bytes) -> Optional[SubEvent]:
    m = _PF_NEW.match(p) or _PF_OLD.match(p)
    return PageFault(_h(m.group(1)), _h(m.group(2))) if m else None


def _fast(p: bytes) -> Optional[SubEvent]:
    m = _FAST.match(p)
    return FastMmio(_h(m.group(1))) if m else None


def _num(v: bytes) -> int:
    return int(v, 16) if v[:2] in (b"0x", b"0X") else int(v)


#: Event name -> (text decoder, constructor from ``[FAILED TO PARSE]`` fields by TP_STRUCT__entry name).
_FIELDS: Dict[bytes, Callable[[Dict[bytes, bytes]], SubEvent]] = {
    b"kvm_wfx_arm64": lambda f: Wfx(_num(f[b"vcpu_pc"]), _num(f[b"is_wfe"]) != 0),
    b"kvm_hvc_arm64": lambda f: Hvc(_num(f[b"vcpu_pc"]), _num(f[b"r0"]), _num(f[b"imm"])),
    b"kvm_handle_sys_reg": lambda f: SysReg(_num(f[b"hsr"])),
    b"kvm_guest_fault": lambda f: GuestFault(_num(f[b"ipa"]), _num(f[b"hsr"]), _num(f[b"hxfar"]), _num(f[b"vcpu_pc"])),
    b"kvm_access_fault": lambda f: AccessFault(_num(f[b"ipa"])),
    b"kvm_mmio": lambda f: Mmio(_num(f[b"type"]), _num(f[b"len"]), _num(f[b"gpa"]), _num(f[b"val"])),
    # with errno < 0 the kernel prints the errno, not the (possibly stale) reason: as the text
    b"kvm_userspace_exit": lambda f: UserspaceExit(
        _num(f[b"reason"]) if _num(f[b"errno"]) >= 0 else None, min(_num(f[b"errno"]), 0)
    ),
    b"kvm_sys_access": lambda f: SysAccess(
        _num(f[b"vcpu_pc"]),
        "UNKN",
        _num(f[b"Op0"]),
        _num(f[b"Op1"]),
        _num(f[b"CRn"]),
        _num(f[b"CRm"]),
        _num(f[b"Op2"]),
        _num(f[b"is_write"]) != 0,
    ),
}

SUB_EVENTS: Dict[bytes, Callable[[bytes], Optional[SubEvent]]] = {
    b"kvm_wfx_arm64": _wfx,
    b"kvm_hvc_arm64": _hvc,
    b"kvm_handle_sys_reg": _hsr,
    b"kvm_sys_access": _sys,
    b"kvm_guest_fault": _fault,
    b"kvm_access_fault": _access,
    b"kvm_mmio": _mmio,
    b"kvm_userspace_exit": _user,
    b"kvm_msr": _msr,
    b"kvm_pio": _pio,
    b"kvm_cr": _cr,
    b"kvm_hypercall": _hcall,
    b"kvm_cpuid": _cpuid,
    b"kvm_page_fault": _pf,
    b"kvm_fast_mmio": _fast,
}


def decode_sub(event: bytes, payload: bytes) -> Optional[SubEvent]:
    """The record of one sub-reason event's payload; ``None`` if the event or its text is unknown."""
    decode = SUB_EVENTS.get(event)
    if decode is None:
        return None
    payload = payload.rstrip(b"\r\n ")
    if payload.startswith(_FAILED):
        build = _FIELDS.get(event)
        if build is None:
            return None
        try:
            pairs = (word.partition(b"=") for word in payload[len(_FAILED) :].split())
            return build({k: v for k, eq, v in pairs if eq})
        except (KeyError, ValueError):
            return None
    try:
        return decode(payload)
    except ValueError:
        return None


def exit_sub_arm64(ec: int, records: Sequence[SubEvent]) -> int:
    """The sub-reason (:mod:`kvmexit.reasons.subreasons`) of one arm64 exit of class ``ec`` from
    the sub-reason events that fired inside it, in order. The first event of a kind decides."""
    if ec == 0x01:
        for r in records:
            if isinstance(r, Wfx):
                return subreasons.WFE if r.is_wfe else subreasons.WFI
    elif ec in (0x16, 0x12):
        for r in records:
            if isinstance(r, Hvc):
                return subreasons.hvc_sub(r.r0)
    elif ec == 0x18:
        for r in records:
            if isinstance(r, SysReg):
                return subreasons.sys64_sub(r.esr)
    elif ec in (0x24, 0x20):
        if not any(isinstance(r, GuestFault) for r in records):
            return subreasons.NONE
        mmio = next((r for r in records if isinstance(r, Mmio)), None)
        if mmio is None:
            return subreasons.abort_sub(subreasons.ABORT_MEMORY)
        user = any(isinstance(r, UserspaceExit) and r.reason == KVM_EXIT_MMIO for r in records)
        kind = subreasons.ABORT_USER_MMIO if user else subreasons.ABORT_KERNEL_MMIO
        return subreasons.abort_sub(kind, mmio.gpa)
    return subreasons.NONE


def exit_sub_x86(exit_name: str, records: Sequence[SubEvent]) -> int:
    """The sub-reason of one x86 exit named ``exit_name`` (VMX or SVM) from the events inside it."""
    base = exit_name.split("+", 1)[0]
    for r in records:
        if base in subreasons.X86_MSR and isinstance(r, Msr):
            return subreasons.msr_sub(r.is_write, r.msr)
        if base in subreasons.X86_IO and isinstance(r, Pio):
            return subreasons.pio_sub(r.is_write, r.port)
        if base in subreasons.X86_CR and isinstance(r, Cr):
            return subreasons.cr_sub(r.is_write, r.cr)
        if base in subreasons.X86_HYPERCALL and isinstance(r, Hypercall):
            return subreasons.hypercall_sub(r.nr)
        if base in subreasons.X86_CPUID and isinstance(r, Cpuid):
            return subreasons.cpuid_sub(r.function)
    if base in subreasons.X86_FAULT:
        mmio = next((r for r in records if isinstance(r, (Mmio, FastMmio))), None)
        if mmio is not None:
            user = any(isinstance(r, UserspaceExit) and r.reason == KVM_EXIT_MMIO for r in records)
            kind = subreasons.ABORT_USER_MMIO if user else subreasons.ABORT_KERNEL_MMIO
            return subreasons.abort_sub(kind, mmio.gpa)
        if any(isinstance(r, PageFault) for r in records):
            return subreasons.abort_sub(subreasons.ABORT_MEMORY)
    return subreasons.NONE
