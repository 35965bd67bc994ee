"""Which kvm tracepoint layout this kernel has, detected from the tracefs ``format`` files.

Layouts (definitions and sources in ``docs/layouts.md``):

- ``arm64``: upstream (masked form, mainline since about 5.0-5.2, now
  ``arch/arm64/kvm/trace_arm.h``): ``kvm_exit(int ret, unsigned int esr_ec, unsigned long
  vcpu_pc)``; the record masks the SError bit of ``ret`` and zeroes ``esr_ec`` on exits that are
  not traps. ``kvm_entry(vcpu_pc)``.
- ``arm64-4.19``: mainline 4.19 and earlier (``virt/kvm/arm/trace.h``):
  ``kvm_exit(int idx, unsigned int exit_reason, unsigned long vcpu_pc)``, stored raw (SError bit
  set, class stale on IRQ exits). Its print table still names code 1 "TRAP".
- ``arm64-openeuler-4.19``: the masked ``kvm_exit`` with ``kvm_entry(vcpu_id, vcpu_pc)`` (and a
  ``kvm_trap_enter`` that is not needed, since ``kvm_exit`` carries the class).
- ``arm64-openeuler-5.10``: ``kvm_exit(vcpu_id, ret, vcpu_pc)`` without ``esr_ec``; the class
  comes from ``kvm_trap_enter(vcpu_id, esr_ec)``, which fires on the same thread between the exit
  and the next entry, for trap exits only.
- ``x86``: ``kvm_exit`` with ``exit_reason`` and ``isa`` (VMX or SVM), ``arch/x86/kvm/trace.h``;
  the same record offsets from 4.19 to 6.x.

The BPF side uses raw tracepoints on arm64, whose arguments are the same on the masked and the
raw kernels (masking happens only in the record), so it masks ``ret`` itself on every layout.
Raw-tracepoint argument positions equal the record's field order on all arm64 layouts above.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .errors import KvmexitError, TracepointsMissing, UnsupportedLayout
from .reasons import ARCH_ARM64, ARCH_X86

__all__ = [
    "Layout",
    "FieldInfo",
    "parse_format",
    "detect",
    "read_formats",
    "wakeup_ns_offset",
    "switch_offsets",
    "TRACEFS_ROOTS",
]

TRACEFS_ROOTS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")

_FIELD = re.compile(r"field:(?P<decl>[^;]+);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);")


@dataclass(frozen=True)
class FieldInfo:
    name: str
    offset: int
    size: int


@dataclass(frozen=True)
class Layout:
    name: str
    arch: str
    #: kvm_exit field holding the exception code/exit reason, and the one holding the class or isa.
    exit_code_field: str
    exit_detail_field: Optional[str]
    #: openEuler 5.10+: event and field that carry the ESR class of a trap exit.
    trap_event: Optional[str] = None
    trap_ec_field: Optional[str] = None
    #: Compile-time defines for bpf/kvmexit.bpf.c.
    defines: Tuple[str, ...] = ()
    #: Defines the slow-exit log adds (where kvm_exit has the guest PC, the exit qualification).
    slow_defines: Tuple[str, ...] = ()


def parse_format(text: str) -> List[FieldInfo]:
    """The non-common fields of a tracepoint ``format`` file, in record order."""
    fields = []
    for m in _FIELD.finditer(text):
        name = re.split(r"[\s*]", m.group("decl").strip().split("[")[0])[-1]
        if name.startswith("common_"):
            continue
        fields.append(FieldInfo(name, int(m.group("off")), int(m.group("size"))))
    return fields


def read_formats(tracefs: str, events: Tuple[str, ...] = ("kvm_exit", "kvm_entry", "kvm_trap_enter")) -> Dict[str, str]:
    """Format-file texts of the kvm events that exist under ``tracefs``."""
    out = {}
    for ev in events:
        path = os.path.join(tracefs, "events", "kvm", ev, "format")
        try:
            with open(path) as f:
                out[ev] = f.read()
        except FileNotFoundError:
            continue
        except PermissionError as e:
            raise KvmexitError("cannot read %s: %s" % (path, e.strerror), hint="run as root") from e
    return out


def wakeup_ns_offset(formats: Dict[str, str]) -> Optional[int]:
    """Record offset of ``kvm_vcpu_wakeup``'s ``ns`` (for the classic-tracepoint fallback)."""
    for field in parse_format(formats.get("kvm_vcpu_wakeup", "")):
        if field.name == "ns" and field.size == 8:
            return field.offset
    return None


def switch_offsets(tracefs: str) -> Optional[Tuple[int, int, int]]:
    """Record offsets of ``sched_switch``'s prev_pid, prev_state and next_pid (for the classic
    tracepoint, used where the raw one lacks prev_state: before 5.18), or None."""
    try:
        with open(os.path.join(tracefs, "events", "sched", "sched_switch", "format")) as f:
            fields = {fi.name: fi for fi in parse_format(f.read())}
    except OSError:
        return None
    want = (("prev_pid", 4), ("prev_state", 8), ("next_pid", 4))
    if any(name not in fields or fields[name].size != size for name, size in want):
        return None
    return fields["prev_pid"].offset, fields["prev_state"].offset, fields["next_pid"].offset


def find_tracefs(candidates: Tuple[str, ...] = TRACEFS_ROOTS) -> str:
    for root in candidates:
        if os.path.isdir(os.path.join(root, "events")):
            return root
        if os.path.isdir(root) and not os.access(root, os.R_OK | os.X_OK):
            raise KvmexitError("cannot read %s" % root, hint="run as root")
    raise TracepointsMissing(
        "tracefs is not mounted",
        hint="mount -t tracefs nodev /sys/kernel/tracing",
    )


def _names(fields: List[FieldInfo]) -> List[str]:
    return [f.name for f in fields]


def detect(formats: Dict[str, str]) -> Layout:
    """Choose the layout from the fields present. Raises typed errors for what is missing."""
    if "kvm_exit" not in formats or "kvm_entry" not in formats:
        raise TracepointsMissing(
            "kvm:kvm_exit/kvm:kvm_entry tracepoints not found",
            hint="load the kvm module (modprobe kvm_intel, kvm_amd, or use a KVM-enabled arm64 kernel)",
        )
    exit_fields = parse_format(formats["kvm_exit"])
    names = _names(exit_fields)
    entry_names = _names(parse_format(formats["kvm_entry"]))
    if "exit_reason" in names and "isa" in names:
        by = {f.name: f for f in exit_fields}
        return Layout(
            name="x86",
            arch=ARCH_X86,
            exit_code_field="exit_reason",
            exit_detail_field="isa",
            defines=(
                "LAYOUT_X86",
                "X86_REASON_OFF=%d" % by["exit_reason"].offset,
                "X86_ISA_OFF=%d" % by["isa"].offset,
            ),
            slow_defines=tuple(
                "%s=%d" % (define, by[name].offset)
                for define, name in (("X86_RIP_OFF", "guest_rip"), ("X86_INFO1_OFF", "info1"))
                if name in by and by[name].size == 8
            ),
        )
    # Every arm64 kvm_exit carries vcpu_pc (the slow-exit log's guest PC); its argument index:
    pc_arg = ("EXIT_PC_ARG=%d" % names.index("vcpu_pc"),) if "vcpu_pc" in names else ()
    exit_args_first = ("LAYOUT_ARM64", "EXIT_RET_ARG=0", "EXIT_EC_ARG=1")
    if names[:2] == ["ret", "esr_ec"]:
        name = "arm64-openeuler-4.19" if "vcpu_id" in entry_names else "arm64"
        return Layout(name, ARCH_ARM64, "ret", "esr_ec", defines=exit_args_first, slow_defines=pc_arg)
    if names[:2] == ["idx", "exit_reason"]:
        return Layout("arm64-4.19", ARCH_ARM64, "idx", "exit_reason", defines=exit_args_first, slow_defines=pc_arg)
    if names[:2] == ["vcpu_id", "ret"] and "esr_ec" not in names:
        trap = formats.get("kvm_trap_enter")
        trap_names = _names(parse_format(trap)) if trap else []
        if "esr_ec" not in trap_names:
            raise UnsupportedLayout(
                "kvm_exit has no esr_ec and kvm:kvm_trap_enter is missing",
                hint="this openEuler-style kernel needs kvm_trap_enter to name trap exits",
            )
        return Layout(
            "arm64-openeuler-5.10",
            ARCH_ARM64,
            "ret",
            None,
            trap_event="kvm_trap_enter",
            trap_ec_field="esr_ec",
            defines=(
                "LAYOUT_ARM64",
                "EXIT_RET_ARG=1",
                "EXIT_EC_ARG=-1",
                "TRAP_EC_ARG=%d" % trap_names.index("esr_ec"),
            ),
            slow_defines=pc_arg,
        )
    raise UnsupportedLayout(
        "unknown kvm_exit layout with fields %s" % ", ".join(names),
        hint="please report this kernel's events/kvm/kvm_exit/format",
    )
