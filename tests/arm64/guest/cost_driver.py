"""Guest-visible cost of tracing, inside the emulated KVM host (scenario cost; issue 7).

Compiles both tracers once with bcc, then runs the same many-cheap-exits workload (an HVC loop in
the e2e VMM) in interleaved rounds with nothing attached, the original kvmexit-aarch64.py's logic
attached (bench/original_kvmexit_aarch64.bpf.c on classic tracepoints, the original's attach
type), and kvmexit's production programs attached (raw tracepoints); each round attaches its
tracer's programs and detaches them after. Writes cost.json: per mode the vCPU thread's time in
its KVM_RUN loop (the VMM's run_ns) and wall time, per round.

Usage (by scenarios.py): python3 cost_driver.py OUTDIR ROUNDS SPEC
Python 3.7 syntax (runs on Debian 11's and 12's python3).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

GUEST = os.path.dirname(os.path.abspath(__file__))
VMM = os.path.join(GUEST, "e2evmm")
ORIGINAL = os.path.join(GUEST, "original_kvmexit_aarch64.bpf.c")
TRACEFS = "/sys/kernel/tracing"
MODES = ("none", "original", "kvmexit")
_RUN_NS = re.compile(r"^E2EVMM vcpu=0 .*run_ns=(\d+)$", re.M)


def say(msg):
    sys.stdout.write("E2E: cost: %s\n" % msg)
    sys.stdout.flush()


def bpftool_progs():
    for exe in ("bpftool", "/usr/sbin/bpftool"):
        try:
            p = subprocess.run([exe, "-j", "prog", "list"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if p.returncode == 0:
            return p.stdout
    return ""


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def has_field(event, name):
    try:
        field_offset(event, name)
        return True
    except SystemExit:
        return False


def field_offset(event, name):
    """Offset of a field in a kvm event's record (its format file)."""
    with open(os.path.join(TRACEFS, "events", "kvm", event, "format")) as f:
        for line in f:
            m = re.search(r"field:[^;]*\b%s;\s*offset:(\d+);" % name, line)
            if m:
                return int(m.group(1))
    raise SystemExit("no field %s in kvm:%s" % (name, event))


class Tracer:
    """One tracer's loaded programs, attached for a round and detached after it."""

    def __init__(self, bpf, attach):
        self.bpf = bpf
        self.attach_list = attach  # (kind, "kvm:event", fn)

    def attach(self):
        for kind, tp, fn in self.attach_list:
            if kind == "raw":
                self.bpf.attach_raw_tracepoint(tp=tp.split(":", 1)[1], fn_name=fn)
            else:
                self.bpf.attach_tracepoint(tp=tp, fn_name=fn)

    def detach(self):
        for kind, tp, _fn in self.attach_list:
            if kind == "raw":
                self.bpf.detach_raw_tracepoint(tp=tp.split(":", 1)[1])
            else:
                self.bpf.detach_tracepoint(tp=tp)


def load_tracers():
    from bcc import BPF

    from kvmexit.commands.live import detect_layout
    from kvmexit.sources.live import LiveSource

    t0 = time.time()
    ours = LiveSource(detect_layout(None), attach=False).open()
    kvmexit = Tracer(ours.bpf, [a for a in ours.program.attach])
    say("kvmexit compiled in %.1fs" % (time.time() - t0))
    t0 = time.time()
    with open(ORIGINAL) as f:
        text = f.read()
    if not has_field("kvm_exit", "esr_ec"):  # the original is for arm64's kvm_exit only
        say("original: not on this host (kvm_exit has no esr_ec)")
        return {"none": None, "kvmexit": kvmexit}, ours
    orig_bpf = BPF(text=text, cflags=["-DORIG_EC_OFF=%d" % field_offset("kvm_exit", "esr_ec")])
    original = Tracer(orig_bpf, [("tp", "kvm:kvm_exit", "orig_exit"), ("tp", "kvm:kvm_entry", "orig_entry")])
    say("original compiled in %.1fs" % (time.time() - t0))
    return {"none": None, "original": original, "kvmexit": kvmexit}, ours


def run_workload(outdir, tag, spec):
    t0 = time.time()
    p = subprocess.run(
        [VMM, "-name", "guest=cost-vm,debug-threads=on", spec], capture_output=True, text=True, timeout=600
    )
    wall = time.time() - t0
    write(os.path.join(outdir, tag + ".out"), p.stdout)
    write(os.path.join(outdir, tag + ".err"), p.stderr + "\nrc=%d\nwall_s=%.6f\n" % (p.returncode, wall))
    m = _RUN_NS.search(p.stdout)
    if p.returncode != 0 or m is None:
        say("%s rc=%d: no result" % (tag, p.returncode))
        return None
    return {"run_ns": int(m.group(1)), "wall_s": wall}


def main():
    outdir, rounds, spec = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    write(os.path.join(outdir, "bpftool_before.json"), bpftool_progs())
    tracers, ours = load_tracers()
    runs = {m: [] for m in tracers}
    run_workload(outdir, "warmup", spec)
    order = [m for m in MODES if m in tracers]
    try:
        for r in range(rounds):
            order = order[1:] + order[:1]  # rotate: no mode always first or after another
            for mode in order:
                tracer = tracers[mode]
                if tracer is not None:
                    tracer.attach()
                try:
                    if mode == "kvmexit" and r == 0:
                        write(os.path.join(outdir, "bpftool_attached.json"), bpftool_progs())
                    res = run_workload(outdir, "%s%d" % (mode, r), spec)
                finally:
                    if tracer is not None:
                        tracer.detach()
                runs[mode].append(res)
                say("round %d %s: %s" % (r, mode, res))
        # Both tracers really saw the exits of their rounds (exits seen, by each one's own count).
        seen = {
            "kvmexit": sum(s.exits for s in ours.snapshot().stats.values()),
        }
        if "original" in tracers:
            seen["original"] = sum(e.count for t in tracers["original"].bpf["orig_threads"].values() for e in t.ec)
    finally:
        ours.close()
        for t in tracers.values():
            if t is not None and t.bpf is not ours.bpf:
                t.bpf.cleanup()
    with open("/proc/loadavg") as f:
        guest_load = f.read().split()[:3]
    write(
        os.path.join(outdir, "cost.json"),
        json.dumps({"spec": spec, "rounds": rounds, "runs": runs, "guest_loadavg": guest_load, "seen": seen}),
    )
    write(os.path.join(outdir, "bpftool_after.json"), bpftool_progs())


if __name__ == "__main__":
    main()
