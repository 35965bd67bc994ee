"""Render kvm events as each tool prints them: ftrace, trace-cmd report, perf script.

Used to build synthetic fixtures and benchmark inputs, and to check that the three renderings
of one capture give identical numbers. The payloads follow each layout's kernel ``TP_printk``
(see :mod:`.decode`); line shapes follow what the tools print (checked against real
``trace-cmd report`` and ``perf script`` output of other events on a 6.18 kernel).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

from ...reasons import ISA_SVM, arm64, svm, vmx

__all__ = ["Event", "render_line", "exit_payload", "entry_payload", "trap_payload", "wakeup_payload"]


class Event(NamedTuple):
    ts_ns: int
    cpu: int
    tid: int
    tgid: Optional[int]
    comm: str
    name: str  # kvm_exit, kvm_entry, kvm_trap_enter, kvm_vcpu_wakeup, or any other
    payload: str


_ARM_PRINT_UPSTREAM = dict(arm64.EXCEPTION_TYPES)
_ARM_PRINT_UPSTREAM[arm64.ARM_EXCEPTION_EL1_SERROR] = "SERROR"
_ARM_PRINT_UPSTREAM[arm64.ARM_EXCEPTION_IL] = "ILLEGAL"
_ARM_PRINT_419 = {0: "IRQ", 1: "TRAP"}
#: openEuler 4.19's ``kvm_arm_exception_type`` (upstream style, no ILLEGAL yet).
_ARM_PRINT_EULER_419 = {0: "IRQ", 1: "SERROR", 2: "TRAP", arm64.ARM_EXCEPTION_HYP_GONE: "HYP_GONE"}


def _ec_name(ec: int) -> str:
    return arm64.EXCEPTION_CLASSES.get(ec, "0x%x" % ec)


def exit_payload(
    layout: str, ret: int, ec: int = 0, vcpu: int = 0, pc: int = 0xFFFF800008001234, isa: int = 1, style: str = "kernel"
) -> str:
    """The ``kvm_exit`` text for raw ``ret``/``ec`` (arm64) or ``exit_reason``/``isa`` (x86).

    ``style`` for x86: ``kernel`` (6.x), ``old`` (``reason %s rip 0x%lx info %llx %llx``) or
    ``plugin`` (libtraceevent's kvm plugin, as perf/trace-cmd print it).
    """
    if layout in ("arm64", "arm64-openeuler-4.19"):
        # Masked record: ARM_EXCEPTION_CODE(ret), esr_ec only on traps.
        code = ret & 0x7FFFFFFF
        ec = ec if code == arm64.ARM_EXCEPTION_TRAP else 0
        if layout == "arm64":
            name = _ARM_PRINT_UPSTREAM.get(code, "0x%x" % code)
            return "%s: HSR_EC: 0x%04x (%s), PC: 0x%016x" % (name, ec, _ec_name(ec), pc)
        name = _ARM_PRINT_EULER_419.get(code, "0x%x" % code)
        return "%s: HSR_EC: 0x%04x (%s), PC: 0x%08x" % (name, ec, _ec_name(ec), pc)
    if layout == "arm64-4.19":
        name = _ARM_PRINT_419.get(ret, "0x%x" % (ret & 0xFFFFFFFF))
        return "%s: HSR_EC: 0x%04x (%s), PC: 0x%08x" % (name, ec, _ec_name(ec), pc)
    if layout == "arm64-openeuler-5.10":
        code = ret & 0x7FFFFFFF
        return "VCPU %d: exit_type=%s, PC=0x%016x" % (vcpu, _ARM_PRINT_UPSTREAM.get(code, "0x%x" % code), pc)
    if layout == "x86":
        if isa == ISA_SVM:
            name = svm.EXIT_REASONS.get(ret, "0x%x" % ret)
            flags = ""
        else:
            basic = ret & 0xFFFF
            name = vmx.EXIT_REASONS.get(basic, "0x%x" % basic)
            flags = " FAILED_VMENTRY" if ret & 0x80000000 else ""
        if style == "plugin":
            table = svm.EXIT_REASONS if isa == ISA_SVM else vmx.EXIT_REASONS
            pname = table.get(ret)
            return "reason %s rip 0x%x info %x %x" % (pname if pname else "UNKNOWN (%d)" % ret, pc, 0, 0)
        if style == "old":
            return "reason %s%s rip 0x%x info %x %x" % (name, flags, pc, 0, 0)
        return (
            "vcpu %d reason %s%s rip 0x%x info1 0x%016x info2 0x%016x intr_info 0x%08x error_code 0x%08x "
            "requests 0x%016x" % (vcpu, name, flags, pc, 0, 0, 0, 0, 0)
        )
    raise ValueError(layout)


def entry_payload(layout: str, vcpu: int = 0, pc: int = 0xFFFF800008001238) -> str:
    if layout == "arm64":
        return "PC: 0x%016x" % pc
    if layout == "arm64-4.19":
        return "PC: 0x%08x" % pc
    if layout == "arm64-openeuler-4.19":
        return "VCPU %d: PC=0x%08x" % (vcpu, pc)
    if layout == "arm64-openeuler-5.10":
        return "VCPU %d: PC=0x%016x" % (vcpu, pc)
    return "vcpu %d, rip 0x%x intr_info 0x00000000 error_code 0x00000000" % (vcpu, pc)


def trap_payload(vcpu: int, ec: int) -> str:
    """``kvm_trap_enter`` (openEuler 4.19 and 5.10+, same print format)."""
    return "VCPU %d: HSR_EC=0x%04x (%s)" % (vcpu, ec, _ec_name(ec))


def wakeup_payload(ns: int, waited: bool = True) -> str:
    return "%s time %d ns, polling valid" % ("wait" if waited else "poll", ns)


def render_line(fmt: str, ev: Event, tgid_column: bool = False, digits: int = 6, buffer: str = "") -> str:
    """One line of ``fmt`` (``ftrace``, ``trace-cmd`` or ``perf``) for ``ev``."""
    sec, ns = divmod(ev.ts_ns, 1000000000)
    frac = "%09d" % ns
    ts = "%5d.%s" % (sec, frac[:digits])
    if fmt == "ftrace":
        tg = ""
        if tgid_column:
            tg = "(%7s) " % (ev.tgid if ev.tgid is not None else "-------")
        return "%16s-%-7d %s[%03d] d..1. %s: %s: %s" % (ev.comm, ev.tid, tg, ev.cpu, ts, ev.name, ev.payload)
    if fmt == "trace-cmd":
        pad = " " * max(1, 21 - len(ev.name))
        prefix = buffer + ": " if buffer else ""
        return "%s%16s-%-5d [%03d] %s: %s:%s%s" % (prefix, ev.comm, ev.tid, ev.cpu, ts, ev.name, pad, ev.payload)
    if fmt == "perf":
        who = "%d/%d" % (ev.tgid, ev.tid) if tgid_column and ev.tgid is not None else "%d" % ev.tid
        sys_ = "kvm" if ev.name.startswith("kvm_") else "sched"
        return "%16s %6s [%03d] %s: %s:%s: %s" % (ev.comm, who, ev.cpu, ts, sys_, ev.name, ev.payload)
    raise ValueError(fmt)
