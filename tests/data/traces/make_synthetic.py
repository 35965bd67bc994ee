#!/usr/bin/env python3
"""Write the SYNTHETIC trace fixtures of this directory (see SYNTHETIC.md).

Every fixture renders one scripted scenario (below) through one kernel layout's print format
(``kvmexit.sources.trace.render``, built from the kernels' ``TP_printk``) and one tool's line
format. The expected numbers in tests/sources/test_trace_fixtures.py follow from the scripts by
hand, not from the parser. Run from the repository root: ``python3 tests/data/traces/make_synthetic.py``.
"""

from __future__ import annotations

import os
import sys
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, os.pardir, os.pardir, os.pardir, "src"))

from kvmexit.sources.trace.render import (  # noqa: E402
    Event,
    entry_payload,
    exit_payload,
    render_line,
    trap_payload,
    wakeup_payload,
)

# Abstract reasons of the scenario and how each layout family encodes them.
#   arm64: (ret, ec); x86 VMX/SVM: exit_reason.
ARM = {
    "hvc": (2, 0x16),
    "wfx": (2, 0x01),
    "irq": (0, 0),
    "dabt": (2, 0x24),
    "sys": (2, 0x18),
    "hvc_serror": (0x80000002, 0x16),
    "serror": (1, 0),
}
VMX = {"hvc": 0x12, "wfx": 0x0C, "irq": 0x01, "dabt": 0x30, "sys": 0x20, "failed": 0x80000021}
SVM = {"hvc": 0x081, "wfx": 0x078, "irq": 0x060, "dabt": 0x400, "sys": 0x07C}

# Threads: tid -> (tgid, comm, cpu, vcpu index)
THREADS = {1201: (1200, "CPU 0/KVM", 0, 0), 1202: (1200, "CPU 1/KVM", 1, 1), 1301: (1300, "CPU 0/KVM", 2, 0)}

# Per-thread scripts: ("pair", reason, dur_us, [wakeup ns...]) | ("unfinished", reason)
# | ("open", reason) | ("unpaired",)
BASE: Dict[int, list] = {
    1201: [("unpaired",)]
    + [("pair", "hvc", 10, [])] * 4
    + [("pair", "wfx", 200, [150000])] * 3
    + [("pair", "irq", 5, [])] * 2
    + [("unfinished", "dabt")]
    + [("pair", "dabt", 20, [])] * 2
    + [("open", "sys")],
    1202: [("pair", "irq", 3, [])] * 5 + [("pair", "wfx", 1000, [900000])] * 2 + [("pair", "hvc", 7, [])],
    1301: [("pair", "sys", 4, [])] * 3 + [("pair", "wfx", 50, [40000, 5000])] + [("open", "irq")],
}


def variant(layout: str) -> Dict[int, list]:
    s = {t: list(v) for t, v in BASE.items()}
    if layout in ("arm64-4.19", "arm64-openeuler-4.19"):
        # arm64-4.19 (raw record): printed 0x80000002 and "TRAP" (4.19's stale table).
        # arm64-openeuler-4.19 (masked record): printed "TRAP ... HVC64" (SError bit masked off)
        # and "SERROR".
        s[1202][-1] = ("pair", "hvc_serror", 7, [])
        s[1301].insert(0, ("pair", "serror", 2, []))
    if layout == "x86-vmx":
        s[1301].insert(0, ("pair", "failed", 2, []))  # VMX flag FAILED_VMENTRY
    return s


def events(layout: str, x86_style: str = "kernel") -> List[Event]:
    """The merged event stream of the scenario for ``layout`` (arm64 names, x86-vmx, x86-svm)."""
    kernel_layout = "x86" if layout.startswith("x86") else layout
    out: List[Tuple[int, int, Event]] = []
    seq = 0
    for tid, script in variant(layout).items():
        tgid, comm, cpu, vcpu = THREADS[tid]
        t = 1_000_000_000 * 512 + tid * 1000  # ns; threads interleave

        def emit(name: str, payload: str, at: int, cpu=cpu, tid=tid, tgid=tgid, comm=comm) -> None:
            nonlocal seq
            seq += 1
            out.append((at, seq, Event(at, cpu, tid, tgid, comm, name, payload)))

        def exit_ev(reason: str, at: int, tid=tid, vcpu=vcpu, emit=emit) -> None:
            if layout.startswith("x86"):
                table = SVM if layout == "x86-svm" else VMX
                emit(
                    "kvm_exit",
                    exit_payload(
                        "x86",
                        table[reason],
                        vcpu=vcpu,
                        pc=0xFFFFFFFF81000000 + tid,
                        isa=2 if layout == "x86-svm" else 1,
                        style=x86_style,
                    ),
                    at,
                )
                return
            ret, ec = ARM[reason]
            emit("kvm_exit", exit_payload(kernel_layout, ret, ec, vcpu=vcpu), at)
            # Both openEuler kernels fire kvm_trap_enter in handle_trap_exceptions(), i.e. for
            # every trap exit (SError-flagged ones too).
            if kernel_layout in ("arm64-openeuler-4.19", "arm64-openeuler-5.10") and (ret & 0x7FFFFFFF) == 2:
                emit("kvm_trap_enter", trap_payload(vcpu, ec), at + 500)

        for step in script:
            kind = step[0]
            if kind == "unpaired":
                emit("kvm_entry", entry_payload(kernel_layout, vcpu), t)
                t += 3000
            elif kind == "pair":
                _, reason, dur_us, wakeups = step
                exit_ev(reason, t)
                for i, ns in enumerate(wakeups):
                    emit("kvm_vcpu_wakeup", wakeup_payload(ns), t + 1000 + i)
                emit("kvm_entry", entry_payload(kernel_layout, vcpu), t + dur_us * 1000)
                t += dur_us * 1000 + 7000
            elif kind == "unfinished":
                exit_ev(step[1], t)
                t += 4000  # the next step's exit follows with no entry between
            elif kind == "open":
                exit_ev(step[1], t)
                t += 1000
        # a foreign event on the same CPU
        emit(
            "sched_switch",
            "prev_comm=%s prev_pid=%d prev_prio=120 prev_state=S ==> next_comm=swapper/%d "
            "next_pid=0 next_prio=120" % (comm, tid, cpu),
            t + 100000,
        )
    out.sort(key=lambda x: (x[0], x[1]))
    return [e for _, _, e in out]


FTRACE_HEADER = """\
# tracer: nop
#
# entries-in-buffer/entries-written: {n}/{n}   #P:4
#
#                                _-----=> irqs-off/BH-disabled
#                               / _----=> need-resched
#                              | / _---=> hardirq/softirq
#                              || / _--=> preempt-depth
#                              ||| / _-=> migrate-disable
#                              |||| /     delay
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
"""


def write(name: str, lines: List[str]) -> None:
    with open(os.path.join(HERE, name), "w") as f:
        f.write("".join(line + "\n" for line in lines))


def ftrace(evs: List[Event], tgid: bool = False) -> List[str]:
    return FTRACE_HEADER.format(n=len(evs)).splitlines() + [render_line("ftrace", e, tgid_column=tgid) for e in evs]


def main() -> None:
    up = events("arm64")
    write("arm64-upstream.synthetic.trace", ftrace(up, tgid=True))
    write("arm64-4.19.synthetic.trace", ftrace(events("arm64-4.19")))
    write("arm64-openeuler-4.19.synthetic.trace", ftrace(events("arm64-openeuler-4.19")))
    write("arm64-openeuler-5.10.synthetic.trace", ftrace(events("arm64-openeuler-5.10"), tgid=True))
    write("x86-vmx.synthetic.trace", ftrace(events("x86-vmx"), tgid=True))
    write("x86-svm.synthetic.trace", ftrace(events("x86-svm")))
    write("x86-vmx-old.synthetic.trace", ftrace(events("x86-vmx", "old")))
    # The same arm64 capture as trace-cmd report and perf script would print it.
    write("arm64-upstream.synthetic.trace-cmd", ["cpus=4"] + [render_line("trace-cmd", e) for e in up])
    write("arm64-upstream.synthetic.perf", [render_line("perf", e, tgid_column=True, digits=9) for e in up])
    x = events("x86-vmx", "plugin")
    write(
        "x86-vmx.synthetic.trace-cmd", ["version = 7", "cpus=4"] + [render_line("trace-cmd", e, buffer="vm") for e in x]
    )
    write("x86-vmx.synthetic.perf", [render_line("perf", e) for e in x])
    # Ring-buffer loss: CPU 2's older events overwritten, CPU 0 loses events mid-way.
    lost: List[str] = FTRACE_HEADER.format(n=len(up)).splitlines()
    started = False
    marked = False
    for e in up:
        if e.cpu == 2 and not started:
            lost.append("##### CPU 2 buffer started ####")
            started = True
        lost.append(render_line("ftrace", e, tgid_column=True))
        # After 1201's 2nd WFx exit (cpu 0): the entry is "lost".
        if not marked and e.tid == 1201 and e.name == "kvm_exit" and "HSR_EC: 0x0001" in e.payload:
            lost.append("CPU:0 [LOST 3 EVENTS]")
            marked = True
    write("arm64-upstream-lost.synthetic.trace", lost)


if __name__ == "__main__":
    main()
