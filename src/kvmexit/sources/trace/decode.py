"""Decoding of the ``kvm_exit`` / ``kvm_trap_enter`` / ``kvm_vcpu_wakeup`` payloads of text traces.

A text trace holds what the kernel's ``TP_printk`` made of the record, so each layout of
:mod:`kvmexit.layouts` is decoded from its print format (kernel source named per layout):

- ``arm64`` (upstream 5.x-6.x, ``arch/arm64/kvm/trace_arm.h``)::

      kvm_exit: TRAP: HSR_EC: 0x0016 (HVC64), PC: 0xffff800008001234
      kvm_exit: IRQ: HSR_EC: 0x0000 (UNKNOWN), PC: ...

  The record already masks the SError bit and zeroes the class of non-trap exits, so the text
  cannot show a pending SError. Type names come from ``kvm_arm_exception_type`` in
  ``asm/kvm_asm.h`` (``IRQ``, ``SERROR``, ``TRAP``, ``ILLEGAL``, ``HYP_GONE``).
- ``arm64-openeuler-4.19`` (openEuler's 4.19 ``virt/kvm/arm/trace.h``): the same masked
  ``kvm_exit`` text and type names as ``arm64`` (its table is ``{0, "IRQ"}, {1, "SERROR"},
  {2, "TRAP"}, {0xbadca11, "HYP_GONE"}``, ``PC: 0x%08lx``), with ``kvm_entry: VCPU 0: PC=0x...``
  and a ``kvm_trap_enter: VCPU 0: HSR_EC=0x0016 (HVC64)`` per trap exit. ``kvm_exit`` already
  carries the class, so ``kvm_trap_enter`` adds nothing and is not applied (as on the BPF side).
- ``arm64-4.19`` (mainline 4.19 and earlier, ``virt/kvm/arm/trace.h``): same text, but
  ``idx``/``exit_reason`` are stored raw and the type table of 4.19's ``asm/kvm_arm.h`` is
  ``{0, "IRQ"}, {1, "TRAP"}``. So ``TRAP`` there means code 1 (an SError exit), a real trap
  (code 2) prints as ``0x2`` and an exit with the SError bit as ``0x80000002`` or
  ``0xffffffff80000002``; the stale class of non-trap exits is printed too. Everything is
  recoverable: the numbers go through :func:`kvmexit.reasons.normalize_arm64` like the BPF side.
- ``arm64-openeuler-5.10``: ``kvm_exit: VCPU 0: exit_type=TRAP, PC=0x...`` (no class) and
  ``kvm_trap_enter: VCPU 0: HSR_EC=0x0016 (HVC64)`` while the trap is handled.
- ``x86`` (``arch/x86/kvm/trace.h``): ``vcpu 0 reason EXTERNAL_INTERRUPT rip 0x... info1 ...``;
  VMX names are upper case with flags appended (`` FAILED_VMENTRY``), SVM names lower case (some
  with a space, ``PF excp``); unknown values print as hex. Older kernels print
  ``reason %s rip 0x%lx info %llx %llx``; libtraceevent's kvm plugin (``perf script``,
  ``trace-cmd report``) prints ``reason NAME rip 0x... info ...`` or ``reason UNKNOWN (N)``.

Names are mapped back through the tables of :mod:`kvmexit.reasons` (inverted here), never a
second table; the only extra spellings are the kernel print names listed above.
"""

from __future__ import annotations

import re
from typing import Dict, Iterable, Optional, Tuple

from ...errors import UnsupportedLayout
from ...reasons import ARCH_ARM64, ARCH_X86, ISA_SVM, ISA_VMX, arm64, normalize_arm64, svm, vmx

__all__ = ["Decoder", "IsaUnknown", "LAYOUTS", "detect_layout", "arch_of"]

LAYOUTS = ("arm64", "arm64-4.19", "arm64-openeuler-4.19", "arm64-openeuler-5.10", "x86")

#: Upstream print names (``kvm_arm_exception_type`` of ``asm/kvm_asm.h``): the table's own names
#: plus the two spellings the kernel prints differently.
_ARM_TYPES_UPSTREAM: Dict[bytes, int] = {v.encode(): k for k, v in arm64.EXCEPTION_TYPES.items()}
_ARM_TYPES_UPSTREAM[b"SERROR"] = arm64.ARM_EXCEPTION_EL1_SERROR
_ARM_TYPES_UPSTREAM[b"ILLEGAL"] = arm64.ARM_EXCEPTION_IL
#: 4.19's ``asm/kvm_arm.h`` print table: code 1 is printed "TRAP".
_ARM_TYPES_419: Dict[bytes, int] = {b"IRQ": arm64.ARM_EXCEPTION_IRQ, b"TRAP": arm64.ARM_EXCEPTION_EL1_SERROR}

_VMX_BY_NAME: Dict[str, int] = {v: k for k, v in vmx.EXIT_REASONS.items()}
_VMX_FLAG_BY_NAME: Dict[str, int] = {v: k for k, v in vmx.FLAGS.items()}
_SVM_BY_NAME: Dict[str, int] = {v: k for k, v in svm.EXIT_REASONS.items()}
_SVM_BY_NAME.setdefault("invalid_guest_state", 0xFFFFFFFF)  # { -1, "invalid_guest_state" }

_HSR = re.compile(rb"^(\S+): HSR_EC: 0x([0-9a-fA-F]{1,16}) \(")
_EULER_EXIT = re.compile(rb"^VCPU \d{1,20}: exit_type=(\S+)$")
_EULER_ENTRY = re.compile(rb"^VCPU \d{1,20}: ")
_EULER_TRAP = re.compile(rb"HSR_EC=0x([0-9a-fA-F]{1,16})(?![0-9a-fA-F])")
_X86 = re.compile(rb"^(?:vcpu \d{1,20},? )?reason (.+)$")
_UNKNOWN = re.compile(r"^UNKNOWN \((\d{1,20})\)$")
_WAKE = re.compile(rb"time (\d{1,20}) ns")
#: The slow-exit log's extras of a kvm_exit payload: the guest PC, and on x86 info1 (the exit
#: qualification), printed ``info1 0x%016llx`` (5.x+) or ``info %llx %llx`` (4.19).
_PC_ARM64 = re.compile(rb"PC[:=] ?0x([0-9a-fA-F]{1,16})(?![0-9a-fA-F])")
_RIP_X86 = re.compile(
    rb" rip 0x([0-9a-fA-F]{1,16})(?![0-9a-fA-F])(?: info1? (?:0x)?([0-9a-fA-F]{1,16})(?![0-9a-fA-F]))?"
)

_CACHE_MAX = 1 << 16

# Every number is a bounded digit run (20 decimal or 16 hex digits hold a u64): a longer one makes
# the line malformed instead of reaching ``int`` (Python refuses more than 4,300 decimal digits).


class IsaUnknown(Exception):
    """An x86 reason printed as a number before any named one, by a decoder whose isa is ``None``
    (the reader of one part of a file: :mod:`.parallel`; the isa is the previous part's)."""


def arch_of(layout: str) -> str:
    if layout not in LAYOUTS:
        raise UnsupportedLayout("unknown layout %r" % layout, hint="one of " + ", ".join(LAYOUTS))
    return ARCH_X86 if layout == "x86" else ARCH_ARM64


def _int(text: bytes) -> Optional[int]:
    """A decimal or ``0x`` number of at most 20 digits (a longer one is not a value a kernel prints)."""
    if len(text) > 20:
        return None
    try:
        return int(text, 16) if text[:2] in (b"0x", b"0X") else int(text)
    except ValueError:
        return None


class Decoder:
    """Payload decoder for one layout, with a cache keyed by the reason part of the payload."""

    def __init__(self, layout: str) -> None:
        self.layout = layout
        self.arch = arch_of(layout)
        self.cache: Dict[bytes, Tuple[int, int]] = {}
        #: x86: the isa of the last named reason, for values printed as numbers (``None``: unknown,
        #: see :class:`IsaUnknown`).
        self.isa: Optional[int] = ISA_VMX
        self._named = True  # whether the last _x86 result came from a name (only those are cached)
        if layout == "x86":
            self._exit = self._x86
            self._cut = b" rip "
            self.exit = self._exit_x86  # type: ignore[method-assign]
        elif layout == "arm64-openeuler-5.10":
            self._exit = self._euler
            self._cut = b", PC=0x"
        else:
            self._exit = self._arm64
            self._cut = b", PC: 0x"
        #: Only mainline 4.19 prints with its stale table; openEuler 4.19 has the upstream one.
        self._types = _ARM_TYPES_419 if layout == "arm64-4.19" else _ARM_TYPES_UPSTREAM
        #: Whether ``kvm_trap_enter`` names the class of the open exit (its ``kvm_exit`` has none).
        self.trap_sets_class = layout == "arm64-openeuler-5.10"

    def exit(self, payload: bytes) -> Optional[Tuple[int, int]]:
        """``(code, detail)`` of a ``kvm_exit`` payload; ``None`` if it cannot be read."""
        i = payload.find(self._cut)
        if i < 0:
            return None  # foreign, or truncated before the reason was complete
        key = payload[:i]
        hit = self.cache.get(key)
        if hit is not None:
            return hit
        val = self._exit(key.lstrip())  # trace-cmd pads the payload
        if val is not None and len(self.cache) < _CACHE_MAX:
            self.cache[key] = val
        return val

    def _exit_x86(self, payload: bytes) -> Optional[Tuple[int, int]]:
        """:meth:`exit` on x86: a named reason (cached) also sets :attr:`isa`, even from the cache,
        and a number (never cached) takes it, so the result depends on the last named reason
        only, not on which names were seen first."""
        i = payload.find(b" rip ")
        if i < 0:
            return None
        key = payload[:i]
        hit = self.cache.get(key)
        if hit is not None:
            self.isa = hit[1]
            return hit
        val = self._x86(key.lstrip())
        if val is not None and self._named and len(self.cache) < _CACHE_MAX:
            self.cache[key] = val
        return val

    def _arm64(self, key: bytes) -> Optional[Tuple[int, int]]:
        m = _HSR.match(key)
        if m is None:
            return None
        name, ec_hex = m.group(1, 2)
        ret = self._types.get(name)
        if ret is None:
            ret = _int(name)
            if ret is None or not name.startswith(b"0x"):
                return None
        return normalize_arm64(ret, int(ec_hex, 16))

    def _euler(self, key: bytes) -> Optional[Tuple[int, int]]:
        m = _EULER_EXIT.match(key)
        if m is None:
            return None
        name = m.group(1)
        ret = _ARM_TYPES_UPSTREAM.get(name)
        if ret is None:
            ret = _int(name) if name.startswith(b"0x") else None
            if ret is None:
                return None
        # The class arrives with kvm_trap_enter; until then the exit is TRAP with class 0.
        return normalize_arm64(ret, 0)

    def _x86(self, key: bytes) -> Optional[Tuple[int, int]]:
        m = _X86.match(key)
        if m is None:
            return None
        text = m.group(1).decode("ascii", "replace")
        self._named = True
        code = _SVM_BY_NAME.get(text)
        if code is not None:
            self.isa = ISA_SVM
            return code, ISA_SVM
        head, _, rest = text.partition(" ")
        code = _VMX_BY_NAME.get(head)
        if code is not None:
            for flag in rest.split():
                bit = _VMX_FLAG_BY_NAME.get(flag)
                if bit is None:
                    bit = _int(flag.encode())
                    if bit is None or not flag.startswith("0x"):
                        return None
                code |= bit
            self.isa = ISA_VMX
            return code & 0xFFFFFFFF, ISA_VMX
        # A number: the kernel prints unknown values in hex, the kvm plugin as UNKNOWN (decimal).
        u = _UNKNOWN.match(text)
        if u is not None:
            value: Optional[int] = int(u.group(1))
        elif head.startswith("0x") and not rest:
            value = _int(head.encode())
        else:
            value = None
        if value is None:
            return None
        # Not cached: its isa is whatever the named reasons of this trace say.
        self._named = False
        if self.isa is None:
            raise IsaUnknown(text)
        return value & 0xFFFFFFFF, self.isa

    def pc_and_qualification(self, payload: bytes) -> Tuple[Optional[int], Optional[int]]:
        """The guest PC of a ``kvm_exit`` payload and, on x86, the exit qualification (info1);
        ``None`` for what it does not show."""
        if self.arch == ARCH_X86:
            m = _RIP_X86.search(payload)
            if m is None:
                return None, None
            return int(m.group(1), 16), int(m.group(2), 16) if m.group(2) else None
        m = _PC_ARM64.search(payload)
        return (int(m.group(1), 16) if m else None), None

    def trap(self, payload: bytes) -> Optional[int]:
        m = _EULER_TRAP.search(payload)
        return int(m.group(1), 16) if m else None

    @staticmethod
    def wakeup(payload: bytes) -> Optional[int]:
        m = _WAKE.search(payload)
        return int(m.group(1)) if m else None


def detect_layout(samples: Iterable[Tuple[bytes, bytes]]) -> Optional[str]:
    """Guess the layout from ``(event, payload)`` samples of the first lines; ``None`` if no exits.

    openEuler 5.10 is recognised by ``exit_type=`` in ``kvm_exit`` (``kvm_trap_enter`` alone
    proves nothing: openEuler 4.19 emits it too). Upstream and 4.19 arm64 print the same shape;
    mainline 4.19 (raw) is recognised by a type printed as a number (real traps print ``0x2``
    there) or by a stale class on an ``IRQ`` exit, whatever its ``kvm_entry`` looks like. A masked
    (upstream-looking) trace whose ``kvm_entry`` prints ``VCPU n:`` is openEuler 4.19.
    """
    arm_up = arm_419 = euler = x86 = False
    entry_vcpu = False
    for event, payload in samples:
        if event == b"kvm_entry":
            if _EULER_ENTRY.match(payload):
                entry_vcpu = True
            continue
        if event != b"kvm_exit":
            continue
        if b"exit_type=" in payload:
            euler = True
        elif _X86.match(payload):
            x86 = True
        else:
            m = _HSR.match(payload)
            if m is None:
                continue
            name, ec = m.group(1, 2)
            if name.startswith(b"0x") or (name == b"IRQ" and int(ec, 16) != 0):
                arm_419 = True
            else:
                arm_up = True
    if x86:
        return "x86"
    if euler:
        return "arm64-openeuler-5.10"
    if arm_419:
        return "arm64-4.19"
    if arm_up:
        return "arm64-openeuler-4.19" if entry_vcpu else "arm64"
    return None
