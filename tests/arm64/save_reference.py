"""Store one harness run's real arm64 capture as test data for the rest of the suite.

    python3 tests/arm64/save_reference.py RUN_DIR [SCENARIO]

RUN_DIR is what `tests/arm64/harness.sh run RUN_DIR HOST` wrote (the pytest
fixture keeps runs under /var/cache/kvmexit-arm64/runs/).  Writes
tests/data/traces/HOST-e2e.trace (the ftrace instance text of SCENARIO, by
default `live`; `workload` is the same VMM run without kvmexit attached),
its provenance (tests/data/traces/README.md for arm64-6.1, HOST-e2e.md for the
other hosts) and tests/data/formats/HOST/.
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import e2e_results as er  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))


def read(*parts: str) -> str:
    with open(os.path.join(*parts)) as f:
        return f.read()


def qemu_command() -> str:
    """The qemu-system-aarch64 invocation of harness.sh, as written there."""
    lines = read(HERE, "harness.sh").splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("qemu-system-aarch64"))
    out = []
    for line in lines[start:]:
        out.append(line.strip())
        if not line.rstrip().endswith("\\"):
            break
    return "\n".join(out)


def main(run_dir: str, scenario: str = "live") -> int:
    res = os.path.join(run_dir, "results")
    host = read(run_dir, "host").strip() if os.path.exists(os.path.join(run_dir, "host")) else "arm64-6.1"
    meta = json.loads(read(res, "meta", "meta.json"))
    trace = read(res, scenario, "trace")
    if len(trace) > 1024 * 1024:
        print("trace is over 1 MB; use a smaller workload", file=sys.stderr)
        return 1
    ft = er.Ftrace(trace)
    vcpus, done = er.parse_vmm(read(res, scenario, "vmm.out"))
    cmd_file = os.path.join(res, scenario, "cmd")
    cmd = read(cmd_file).strip() if os.path.exists(cmd_file) else "no kvmexit"
    tdir = os.path.join(REPO, "tests", "data", "traces")
    os.makedirs(tdir, exist_ok=True)
    with open(os.path.join(tdir, "%s-e2e.trace" % host), "w") as f:
        f.write(trace)
    for ev in ("kvm_exit", "kvm_entry", "kvm_vcpu_wakeup"):
        if not os.path.exists(os.path.join(res, "formats", ev, "format")):
            continue
        d = os.path.join(REPO, "tests", "data", "formats", host, ev)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "format"), "w") as f:
            f.write(read(res, "formats", ev, "format"))

    rows = []
    for idx in sorted(vcpus):
        v = vcpus[idx]
        tid = v["tid"]
        counts = ft.counts(tid)
        exp = er.expected_traps(v)
        for reason in sorted(counts):
            if reason in exp:
                why = "guest code: exactly %d" % exp[reason]
            elif reason == "WFx":
                why = "guest code: at most %d (%d wfi)" % (v["wfi"], v["wfi"])
            elif reason == "hlt":
                why = "guest code: exactly %d" % v["hlt"]
            elif reason == "npf":
                why = "guest code: %d MMIO stores + the code page's first fetch (retried under load)" % v["mmio"]
            else:
                why = "host interrupts, varies per run"
            rows.append(
                "| %d | %d | CPU %d/KVM | %s | %d | %d | %d | %s |"
                % (idx, tid, idx, reason, counts[reason], ft.pairs[tid][reason], ft.halt_ns[tid][reason], why)
            )
    qemu = qemu_command()
    text = """# Real kernel traces

## `{host}-e2e.trace` (captured)

The `trace` file of a tracefs instance (`/sys/kernel/tracing/instances/kvmexit-e2e`, events
`kvm:kvm_exit`, `kvm:kvm_entry` and `kvm:kvm_vcpu_wakeup`, `buffer_size_kb` 16384, no lost events: every
`per_cpu/cpuN/stats` overrun 0, entries-in-buffer == entries-written) recorded inside an emulated
arm64 host by the arm64 harness (`scripts/arm64-harness.sh`, scenario `{scenario}`, with
`{cmd}` attached at the same time). Written by `tests/arm64/save_reference.py`.

- Guest kernel: Debian `{uname}` (package linux-image-{uname}:arm64), KVM in VHE mode
  ("kvm [1]: VHE mode initialized successfully"), 2 vCPUs of the emulated host.
- Emulated host (x86_64 Debian 12 host, QEMU 7.2 TCG):

```
{qemu}
```

- Workload: `tests/arm64/vmm/e2evmm.c`, a tiny KVM VMM, process {pid} run as
  `e2evmm -name guest=e2e-vm,debug-threads=on {spec0} {spec1}` (MMIO:HVC:SYS:WFI per vCPU): one VM,
  two vCPU threads named `CPU 0/KVM` and `CPU 1/KVM`. Each vCPU runs from its own memslot:
  MMIO x 32-bit store to a GPA without memslot (TRAP DABT_LOW, KVM_EXIT_MMIO), HVC x `hvc #0` with
  x0=0 (TRAP HVC64, handled in the kernel), SYS x `mrs x1, id_aa64pfr0_el1` (TRAP SYS64), WFI x `wfi`
  (TRAP WFx; the VMM wakes the thread with a signal), then one store to a "done" doorbell GPA
  (one more DABT_LOW, after which the thread never re-enters: that exit has no kvm_entry). The first
  instruction fetch of each vCPU is a stage-2 fault (IABT_LOW). IRQ exits come from host
  interrupts and signals and vary per run; ftrace prints a stale EC for them (label by exception
  type, not EC). A trapped WFI needs no pending interrupt on the emulated CPU (QEMU's WFI helper
  returns early when the CPU has work), so WFx can be below the number of `wfi` executed.
- {lines} event lines. Per thread (kvm_exit lines; "paired" = exits followed by a kvm_entry on the
  same thread; "halt ns" = the `kvm_vcpu_wakeup` times inside those paired exits):

| vCPU | tid | comm | reason | exits | paired | halt ns | expected |
|---|---|---|---|---|---|---|---|
{rows}

Other files in this directory are synthetic (see their own headers and `tests/data/formats/README.md`).
""".format(
        host=host,
        scenario=scenario,
        cmd=cmd.replace("python3 -m ", ""),
        uname=meta["uname"],
        qemu=qemu,
        pid=done.get("pid"),
        spec0=meta["conf"]["VCPU0"],
        spec1=meta["conf"]["VCPU1"],
        lines=ft.lines,
        rows="\n".join(rows),
    )
    readme = "README.md"
    if host != "arm64-6.1":  # its own provenance file, linked from README.md by hand
        readme = "%s-e2e.md" % host
        text = text.replace("# Real kernel traces\n\n", "", 1)
        text = text.replace("\nOther files in this directory", "\nSee README.md; other files in this directory")
    with open(os.path.join(tdir, readme), "w") as f:
        f.write(text)
    print("wrote %s/%s-e2e.trace (%d lines), %s, formats/%s from %s" % (tdir, host, ft.lines, readme, host, run_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
