"""The slow-exit log (``--slower-than``): one line, or one JSON object, per exit, as it comes."""

from __future__ import annotations

import time
from typing import Any, Dict, Optional

from ..model import SlowExit
from ..reasons import label
from ..reasons.arm64 import ARM_EXCEPTION_TRAP
from ..reasons.subreasons import label_arm64, label_x86
from .text import format_duration, printable

__all__ = [
    "SLOW_SCHEMA",
    "SLOW_SCHEMA_FILES",
    "format_slow",
    "slow_document",
    "format_slow_lost",
    "slow_schema",
    "sub_label",
]

#: The ``schema`` member of each JSON line of the log (a report's documents are ``kvmexit/2``).
#: ``kvmexit-slow/2`` (schema/slow-v2.json) adds the split of the duration to ``kvmexit-slow/1``
#: (schema/slow-v1.json), which lines written before it still validate against.
SLOW_SCHEMA = "kvmexit-slow/2"
#: Schema name -> its file under kvmexit/schema/.
SLOW_SCHEMA_FILES = {"kvmexit-slow/1": "slow-v1.json", "kvmexit-slow/2": "slow-v2.json"}


def sub_label(arch: str, code: int, detail: int, sub: int) -> str:
    """The sub-reason's name under the exit's reason (``-``: none seen)."""
    if arch == "arm64":
        return label_arm64(detail & 0x3F if code == ARM_EXCEPTION_TRAP else -1, sub)
    return label_x86(label(arch, code, detail), sub)


def _stamp(e: SlowExit) -> str:
    """Local wall-clock time with microseconds where known, else the source's own seconds."""
    if e.wall is None:
        return "%d.%06d" % divmod(e.time_ns // 1000, 1000000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(e.wall)) + ".%06d" % int(e.wall % 1 * 1e6)


def _esr_text(arch: str, e: SlowExit) -> str:
    if e.esr is None or (arch == "arm64" and e.code != ARM_EXCEPTION_TRAP):
        return "-"  # arm64: only a trap has an ESR
    if arch == "arm64" and not e.esr_whole:
        return "EC %#x (ISS unknown)" % (e.esr >> 26 & 0x3F)
    return "%#x" % e.esr


def _split_text(e: SlowExit) -> str:
    """``(halted H)``; with the split (``--split``), every part of the duration, which add up to it:
    ``(kernel K, vmm V, halted H, preempted P, blocked B)``."""
    if not e.split_known:
        return "(halted %s)" % format_duration(e.halt_ns)
    return "(kernel %s, vmm %s, halted %s, preempted %s, blocked %s)" % tuple(
        format_duration(v) for v in (e.kernel_ns, e.vmm_ns, e.halt_ns, e.preempt_ns, e.blocked_ns)
    )


def format_slow(arch: str, e: SlowExit) -> str:
    """``TIME vm NAME vcpu N tid N REASON [SUB] DURATION (halted H) pc 0x.. esr 0x..``, the
    parenthesis holding the whole split with ``--split``; ``-`` marks what the source does not know."""
    t = e.thread
    parts = [
        _stamp(e),
        "vm %s" % printable(t.vm) if t.vm else "vm -",
        "vcpu %s" % ("-" if t.vcpu is None else t.vcpu),
        "tid %d" % e.tid,
        label(arch, e.code, e.detail),
        "sub %s" % printable(sub_label(arch, e.code, e.detail, e.sub)),
        format_duration(e.duration_ns),
        _split_text(e),
        "pc %s" % ("-" if e.pc is None else "%#x" % e.pc),
        "%s %s" % ("esr" if arch == "arm64" else "qual", _esr_text(arch, e)),
    ]
    return "slow exit: " + " ".join(parts)


def slow_document(arch: str, e: SlowExit) -> Dict[str, Any]:
    """One JSON line of the log; unknown values are null."""
    t = e.thread
    doc: Dict[str, Any] = {
        "schema": SLOW_SCHEMA,
        "time": e.wall,
        "time_ns": e.time_ns,
        "tgid": e.tgid,
        "tid": e.tid,
        "comm": t.comm,
        "vm": t.vm,
        "vcpu": t.vcpu,
        "reason": label(arch, e.code, e.detail),
        "code": e.code,
        "detail": e.detail,
        "sub": e.sub,
        "sub_reason": sub_label(arch, e.code, e.detail, e.sub),
        "duration_ns": e.duration_ns,
        "halt_ns": e.halt_ns,
        "kernel_ns": e.kernel_ns,
        "vmm_ns": e.vmm_ns,
        "preempt_ns": e.preempt_ns,
        "blocked_ns": e.blocked_ns,
        "pc": e.pc,
    }
    if arch == "arm64":
        trap = e.esr is not None and e.code == ARM_EXCEPTION_TRAP
        doc["esr"] = e.esr if trap and e.esr_whole else None
        doc["esr_ec"] = e.esr >> 26 & 0x3F if trap else None  # type: ignore[operator]
    else:
        doc["exit_qualification"] = e.esr
    return doc


def slow_schema(name: str) -> Dict[str, Any]:
    """The JSON schema of a log line's ``schema`` member (``kvmexit-slow/1`` or ``/2``)."""
    import json
    import os

    if name not in SLOW_SCHEMA_FILES:
        raise ValueError("not a kvmexit slow-exit log schema: %r" % (name,))
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "schema", SLOW_SCHEMA_FILES[name])
    with open(path) as f:
        return json.load(f)  # type: ignore[no-any-return]


def format_slow_lost(lost: int, total: Optional[int] = None) -> str:
    """The line that says slow exits were dropped (the perf buffer was full)."""
    return "kvmexit: slow-exit log: %d exits lost (perf buffer full)%s" % (
        lost,
        "" if total is None else ", %d in all so far" % total,
    )
