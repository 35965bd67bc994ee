"""Guest side of the e2e harness: runs inside the emulated (arm64 or x86) KVM host.

Runs every scenario in sequence and writes raw material (VMM output, kvmexit
output, the ftrace instance's trace text, bpftool listings) to
/mnt/work/results/<scenario>/; the host-side pytest tests judge it.
Progress goes to the serial console as lines starting with "E2E:".
Python 3.7 syntax (runs on Debian 11's and 12's python3, the project targets 3.7).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

WORK = "/mnt/work"
GUEST = os.path.join(WORK, "guest")
RESULTS = os.path.join(WORK, "results")
PYDIR = os.path.join(WORK, "py")
VMM = os.path.join(GUEST, "e2evmm")
TRACEFS = "/sys/kernel/tracing"
INSTANCE = os.path.join(TRACEFS, "instances", "kvmexit-e2e")
READY = "kvmexit: tracing"
ATTACH_TIMEOUT = 900
#: --slower-than of scenario slow (tests/arm64/test_arm64_kvm.py holds the list to ftrace).
SLOW_THRESHOLD = "1ms"
STOP_TIMEOUT = 180


def say(msg):
    sys.stdout.write("E2E: %s\n" % msg)
    sys.stdout.flush()


def read_conf(path):
    conf = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.split("#", 1)[0].strip()
                if "=" in line:
                    k, v = line.split("=", 1)
                    conf[k.strip()] = v.strip()
    return conf


CONF = read_conf(os.path.join(GUEST, "scenario.conf"))
ENV = read_conf(os.path.join(GUEST, "env.conf"))


def write(path, text):
    d = os.path.dirname(path)
    if d and not os.path.isdir(d):
        os.makedirs(d)
    with open(path, "w") as f:
        f.write(text)


def run(cmd, timeout=120, cpus=None):
    """Run cmd; with cpus, pinned to those CPUs (all its threads: sched_setaffinity before exec)."""
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=pin)
        return p.returncode, p.stdout, p.stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        return -1, "", str(e)


def bpftool_progs():
    """bpftool prog list as JSON text ('' when bpftool is unavailable)."""
    for exe in ("bpftool", "/usr/sbin/bpftool"):
        rc, out, _err = run([exe, "-j", "prog", "list"], timeout=60)
        if rc == 0:
            return out
    return ""


#: The kernel's own events that say what an exit was (docs/subreasons.md): arm64's, then x86's
#: (an instance enables those its kernel has).
SUB_EVENTS = (
    "kvm_wfx_arm64",
    "kvm_hvc_arm64",
    "kvm_handle_sys_reg",
    "kvm_sys_access",
    "kvm_guest_fault",
    "kvm_access_fault",
    "kvm_mmio",
    "kvm_userspace_exit",
    "kvm_pio",
    "kvm_msr",
    "kvm_cpuid",
    "kvm_cr",
    "kvm_hypercall",
    "kvm_fast_mmio",
    "kvm_page_fault",
)


class Ftrace:
    """kvm:kvm_exit + kvm:kvm_entry (+ kvm:kvm_vcpu_wakeup: halt time; sched:sched_process_exit:
    which threads died, as kvmexit record records it) in a private tracefs instance."""

    def __init__(self, instance=INSTANCE, extra=(), clock=None, buffer_kb=16384):
        self.instance = instance
        if not os.path.isdir(instance):
            os.mkdir(instance)
        if clock:  # e.g. "mono": BPF's bpf_ktime_get_ns clock, comparable across CPUs
            self._w("trace_clock", clock)
        self._w("buffer_size_kb", str(buffer_kb))
        self._w("tracing_on", "0")
        for ev in ("kvm_exit", "kvm_entry", "kvm_vcpu_wakeup", "sched/sched_process_exit", *extra):
            ev = ev if "/" in ev else "kvm/" + ev  # "sched/sched_switch"
            if os.path.exists(os.path.join(instance, "events", ev)):
                self._w("events/%s/enable" % ev, "1")

    def _w(self, rel, val):
        with open(os.path.join(self.instance, rel), "w") as f:
            f.write(val)

    def start(self):
        self._w("trace", "")  # O_TRUNC clears the buffer (and the stats)
        self._w("tracing_on", "1")

    def stop(self, outdir):
        self._w("tracing_on", "0")
        with open(os.path.join(self.instance, "trace")) as f:
            text = f.read()
        write(os.path.join(outdir, "trace"), text)
        stats = []
        cpus = sorted(os.listdir(os.path.join(self.instance, "per_cpu")))
        for cpu in cpus:
            with open(os.path.join(self.instance, "per_cpu", cpu, "stats")) as f:
                stats.append("[%s]\n%s" % (cpu, f.read()))
        write(os.path.join(outdir, "ftrace_stats"), "\n".join(stats))
        return text


def vmm_args(specs=None, name="e2e-vm"):
    specs = specs or [CONF["VCPU0"], CONF["VCPU1"]]
    return [VMM, "-name", "guest=%s,debug-threads=on" % name, *specs]


def perf_exe():
    """perf where the rootfs has it (the x86 host: linux-perf), else None."""
    for exe in ("/usr/bin/perf",):
        if os.path.exists(exe) and run([exe, "--version"], timeout=60)[0] == 0:
            return exe
    return None


def run_vmm(outdir, tag="vmm", specs=None, cpus=None, perf=False, name="e2e-vm"):
    """Run the VMM; with perf, under `perf stat` counting kvm_exit/kvm_entry (to perf.csv)."""
    cmd = vmm_args(specs, name)
    exe = perf_exe() if perf else None
    if exe:
        csv = os.path.join(outdir, "perf.csv")
        cmd = [exe, "stat", "-x,", "-o", csv, "-e", "kvm:kvm_exit", "-e", "kvm:kvm_entry", "--", *cmd]
    t0 = time.time()
    rc, out, err = run(cmd, timeout=300, cpus=cpus)
    wall = time.time() - t0
    write(os.path.join(outdir, tag + ".out"), out)
    write(os.path.join(outdir, tag + ".err"), err + "\nrc=%d\nwall_s=%.6f\n" % (rc, wall))
    say("%s rc=%d wall=%.3fs" % (tag, rc, wall))
    return rc, wall


class Kvmexit:
    """A kvmexit process; start() waits for the 'kvmexit: tracing' marker."""

    def __init__(self, outdir, args, module="kvmexit", ready=READY):
        self.outdir = outdir
        self.args = args
        self.ready_marker = ready
        if module == "kvmexit" and ENV.get("KVMEXIT_E2E_TOOL") == "mini":
            module = "mini_kvmexit"  # harness development only
        self.module = module
        self.proc = None
        self.ready = threading.Event()
        self.attach_s = None
        self.err_lines = []

    def start(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = PYDIR + ":" + GUEST
        env["PYTHONUNBUFFERED"] = "1"
        cmd = ["python3", "-m", self.module, *self.args]
        write(os.path.join(self.outdir, "cmd"), " ".join(cmd) + "\n")
        self.out = open(os.path.join(self.outdir, "kvmexit.out"), "w")
        t0 = time.time()
        # scenario.conf KVMEXIT_NICE: kvmexit's priority (x86: one emulated CPU, README "Live, a VM is named")
        nice = int(CONF.get("KVMEXIT_NICE", "0"))
        self.proc = subprocess.Popen(
            cmd,
            stdout=self.out,
            stderr=subprocess.PIPE,
            universal_newlines=True,
            env=env,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )
        t = threading.Thread(target=self._stderr_reader)
        t.daemon = True
        t.start()
        deadline = time.time() + ATTACH_TIMEOUT
        while time.time() < deadline:
            if self.ready.wait(1.0):
                break
            if self.proc.poll() is not None:
                break
        if self.ready.is_set():
            self.attach_s = time.time() - t0
            say("%s attached after %.1fs" % (self.module, self.attach_s))
            return True
        say("%s did not attach (rc=%s)" % (self.module, self.proc.poll()))
        self.stop()
        for line in self.err_lines[-5:]:  # the reason, on the serial console too
            say("  %s" % line.rstrip()[:300])
        return False

    def _stderr_reader(self):
        for line in self.proc.stderr:
            self.err_lines.append(line)
            if line.startswith(self.ready_marker):
                self.ready.set()

    def stop(self, sig=signal.SIGINT):
        rc = self.proc.poll()
        if rc is None:
            self.proc.send_signal(sig)
            try:
                rc = self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
                self.err_lines.append("e2e: killed after %ds\n" % STOP_TIMEOUT)
        time.sleep(0.5)  # let the stderr reader drain
        self.out.close()
        write(
            os.path.join(self.outdir, "kvmexit.err"),
            "".join(self.err_lines) + "\ne2e: rc=%s attach_s=%s\n" % (rc, self.attach_s),
        )
        write(os.path.join(self.outdir, "rc"), "%s\n" % rc)
        say("%s exited rc=%s" % (self.module, rc))
        return rc


#: Where a scenario's `kvmexit record` writes (its names file: RECORD_FILE.names.json).
RECORD_FILE = "record.trace"
RECORD_READY_TIMEOUT = 300


class Recorder:
    """`kvmexit record -o OUTDIR/record.trace ARGS` (tracefs only, no bcc), beside live kvmexit and
    the reference ftrace instance: started before the VMM, stopped with SIGINT after it (record's
    own stop: it drains its instance, writes the names file and says whether events were lost).
    Its stderr goes to record.err, its exit status to record.rc."""

    def __init__(self, outdir, args):
        self.outdir = outdir
        self.args = list(args)
        self.path = os.path.join(outdir, RECORD_FILE)
        self.proc = None

    def start(self):
        """True once the trace's header is written: record writes it after its instance's events
        are enabled (a new instance traces from its creation), so from then on nothing is missed."""
        env = dict(os.environ, PYTHONPATH=PYDIR, PYTHONUNBUFFERED="1")
        cmd = ["python3", "-m", "kvmexit", "record", "-o", self.path, *self.args]
        write(os.path.join(self.outdir, "record.cmd"), " ".join(cmd) + "\n")
        self.err = open(os.path.join(self.outdir, "record.err"), "w")
        t0 = time.time()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.err, env=env)
        while time.time() - t0 < RECORD_READY_TIMEOUT and self.proc.poll() is None:
            if os.path.exists(self.path):
                with open(self.path) as f:
                    if f.readline().endswith("\n"):
                        say("record tracing after %.1fs" % (time.time() - t0))
                        return True
            time.sleep(0.2)
        say("record did not start (rc=%s)" % self.proc.poll())
        self.stop()
        return False

    def stop(self):
        rc = self.proc.poll()
        if rc is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                rc = self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
                self.err.write("e2e: killed after %ds\n" % STOP_TIMEOUT)
        self.err.close()
        write(os.path.join(self.outdir, "record.rc"), "%s\n" % rc)
        say("record exited rc=%s" % rc)
        return rc


def traced_scenario(
    name, args, module="kvmexit", ftrace=None, specs=None, cpus=None, around=None, vmm=None, record=None
):
    """Attach kvmexit, run the VMM (e2evmm, or vmm(outdir)) under ftrace, stop kvmexit with SIGINT.
    With record (a list of `kvmexit record` options, e.g. ["--sub"]), `kvmexit record` of the same
    run too (Recorder: record.trace, record.err, record.rc in the scenario's directory)."""
    outdir = os.path.join(RESULTS, name)
    os.makedirs(outdir)
    say("scenario %s: %s %s" % (name, module, " ".join(args)))
    write(os.path.join(outdir, "bpftool_before.json"), bpftool_progs())
    k = Kvmexit(outdir, args, module)
    if not k.start():
        write(os.path.join(outdir, "attach_failed"), "1\n")
        write(os.path.join(outdir, "bpftool_after.json"), bpftool_progs())
        return
    write(os.path.join(outdir, "bpftool_attached.json"), bpftool_progs())
    recorder = Recorder(outdir, record) if record is not None else None
    if recorder is not None and not recorder.start():
        write(os.path.join(outdir, "record_failed"), "1\n")
        recorder = None
    with around(outdir) if around else contextlib.nullcontext():
        if ftrace is not None:
            ftrace.start()
        if vmm is not None:
            vmm(outdir)
        else:
            run_vmm(outdir, specs=specs, cpus=cpus, perf=(name == "live"))
        if ftrace is not None:
            ftrace.stop(outdir)
    if recorder is not None:
        recorder.stop()
    time.sleep(1.5)  # at least one more interval tick for -i 1
    k.stop()
    time.sleep(1)
    write(os.path.join(outdir, "bpftool_after.json"), bpftool_progs())


def scenario_abandon(ftrace):
    """The VMM killed while its vCPUs run (a crashed or killed QEMU): each vCPU thread dies with
    an exit open, which kvmexit must count as abandoned, live and from the trace alike."""
    outdir = os.path.join(RESULTS, "abandon")
    os.makedirs(outdir)
    say("scenario abandon: kvmexit --json, VMM killed mid-run")
    write(os.path.join(outdir, "bpftool_before.json"), bpftool_progs())
    k = Kvmexit(outdir, ["--json"])
    if not k.start():
        write(os.path.join(outdir, "attach_failed"), "1\n")
        write(os.path.join(outdir, "bpftool_after.json"), bpftool_progs())
        return
    write(os.path.join(outdir, "bpftool_attached.json"), bpftool_progs())
    ftrace.start()
    specs = [CONF.get("ABANDON_VCPU0", "1000000:0:0:0"), CONF.get("ABANDON_VCPU1", "0:1000000:0:0")]
    vmm = subprocess.Popen(vmm_args(specs), stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    time.sleep(float(CONF.get("ABANDON_AFTER_S", "3")))
    vmm.kill()
    out, err = vmm.communicate()
    write(os.path.join(outdir, "vmm.out"), out)
    write(os.path.join(outdir, "vmm.err"), err + "\nrc=%d\n" % vmm.returncode)
    say("abandon: VMM pid %d killed, rc=%d" % (vmm.pid, vmm.returncode))
    time.sleep(0.5)  # the threads' exits reach the trace
    ftrace.stop(outdir)
    time.sleep(1.5)
    k.stop()
    time.sleep(1)
    write(os.path.join(outdir, "bpftool_after.json"), bpftool_progs())


def scenario_meta():
    outdir = os.path.join(RESULTS, "meta")
    os.makedirs(outdir)
    _rc, dmesg, _ = run(["dmesg"])
    write(os.path.join(outdir, "dmesg"), dmesg)
    info = {
        "uname": os.uname()[2],
        "kvm_dev": os.path.exists("/dev/kvm"),
        "kvm_dmesg": [line for line in dmesg.splitlines() if "kvm" in line.lower()][:20],
        "python": sys.version.split()[0],
        "kvmexit_present": os.path.isdir(os.path.join(PYDIR, "kvmexit")),
        "conf": CONF,
        "tool": ENV.get("KVMEXIT_E2E_TOOL", "kvmexit"),
    }
    _rc, out, _err = run(["dpkg-query", "-W", "python3-bpfcc", "bpftool", "linux-headers-%s" % os.uname()[2]])
    info["packages"] = out.split("\n")
    write(os.path.join(outdir, "meta.json"), json.dumps(info, indent=2, sort_keys=True))
    fmt_dir = os.path.join(RESULTS, "formats")
    os.makedirs(fmt_dir)
    for ev in ("kvm_exit", "kvm_entry", "kvm_vcpu_wakeup", *SUB_EVENTS):
        src = os.path.join(TRACEFS, "events", "kvm", ev, "format")
        if os.path.exists(src):
            with open(src) as f:
                write(os.path.join(fmt_dir, ev, "format"), f.read())
    say("meta: %s kvm=%s" % (info["uname"], info["kvm_dev"]))
    return info


def compat_module():
    """kvmexit.compat_aarch64 per the CLI contract; the package has it under commands/."""
    if os.path.exists(os.path.join(PYDIR, "kvmexit", "compat_aarch64.py")):
        return "kvmexit.compat_aarch64"
    return "kvmexit.commands.compat_aarch64"


def scenario_cost():
    """Guest-visible cost: an HVC loop (COST_SPEC) in interleaved rounds with nothing, the original
    tool's logic and kvmexit attached (cost_driver.py; the host side prints the ratio)."""
    outdir = os.path.join(RESULTS, "cost")
    os.makedirs(outdir)
    if CONF.get("COST_SKIP"):  # the reason this host does not measure it (scenario-x86.conf)
        write(os.path.join(outdir, "skipped"), CONF["COST_SKIP"] + "\n")
        return
    rounds = CONF.get("COST_ROUNDS", "5")
    spec = CONF["COST_SPEC"]
    env = dict(os.environ, PYTHONPATH=PYDIR + ":" + GUEST, PYTHONUNBUFFERED="1")
    say("scenario cost: %s rounds of %s" % (rounds, spec))
    try:
        p = subprocess.run(
            ["python3", os.path.join(GUEST, "cost_driver.py"), outdir, rounds, spec],
            stdout=sys.stdout,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=3 * ATTACH_TIMEOUT,
        )
        write(os.path.join(outdir, "driver.err"), p.stderr + "\nrc=%d\n" % p.returncode)
    except subprocess.TimeoutExpired as e:
        write(os.path.join(outdir, "driver.err"), "timeout: %s\n" % e)
    if not os.path.exists(os.path.join(outdir, "bpftool_after.json")):
        write(os.path.join(outdir, "bpftool_after.json"), bpftool_progs())


def scenario_ab(ftrace, specs_b):
    """A second workload (B) and the first one again (A2), under ftrace in the same boot, for
    `kvmexit diff` (KVMEXIT_E2E_B="MMIO:HVC:SYS:WFI MMIO:HVC:SYS:WFI")."""
    for name, specs in (("workload-b", specs_b), ("workload-a2", None)):
        outdir = os.path.join(RESULTS, name)
        os.makedirs(outdir)
        ftrace.start()
        run_vmm(outdir, specs=specs)
        ftrace.stop(outdir)


def scenario_subreasons():
    """Known sub-reasons (scenario.conf SUB_VCPU*: PSCI/SMCCC calls, sysreg reads and writes,
    vGIC MMIO, fresh pages; scenario-x86.conf: I/O ports, MSR reads and writes, CPUID, MMIO and
    nested page faults) under kvmexit --sub and an ftrace instance with the sub-reason events, and
    `kvmexit record --sub` of the same run."""
    ftrace = Ftrace(INSTANCE + "-sub", SUB_EVENTS)
    traced_scenario(
        "subreasons",
        ["--json", "--by", "thread", "--sub"],
        ftrace=ftrace,
        specs=[CONF["SUB_VCPU0"], CONF["SUB_VCPU1"]],
        record=["--sub"],
    )


class Hog:
    """A busy loop pinned to one CPU (a runnable competitor for the vCPU threads pinned there)."""

    def __init__(self, cpu, outdir):
        self.cpu = cpu
        self.outdir = outdir
        self.proc = None

    def __enter__(self):
        code = "import os\nos.sched_setaffinity(0, {%d})\nwhile True:\n    pass\n" % self.cpu
        self.proc = subprocess.Popen([sys.executable, "-c", code])
        write(os.path.join(self.outdir, "hog_pid"), "%d\n" % self.proc.pid)
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        self.proc.kill()
        self.proc.wait()


def scenario_hog():
    """The standard workload with the VMM pinned to CPU 0 next to a CPU hog on CPU 0: vCPU threads
    are preempted inside exits; ftrace records sched:sched_switch with the kvm events. kvmexit
    runs with --split (guest time and the split of the exit time, issue 11); ftrace on the
    monotonic clock, as kvmexit record --split records (halt windows are measured on it), and
    `kvmexit record --split --sub` of the same run."""
    ftrace = Ftrace(INSTANCE + "-hog", ("sched/sched_switch", *SUB_EVENTS), clock="mono")
    args = ["--json", "--by", "thread", "--split"]
    traced_scenario("hog", args, ftrace=ftrace, cpus={0}, around=lambda d: Hog(0, d), record=["--split", "--sub"])


EXPORTER_LISTEN = "127.0.0.1:9479"


def loopback_up():
    """Bring up lo (init.sh does not; the rootfs has no ip(8)): SIOCGIFFLAGS, then SIOCSIFFLAGS with IFF_UP."""
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifr = fcntl.ioctl(s, 0x8913, struct.pack("16sH22x", b"lo", 0))
        flags = struct.unpack("16sH22x", ifr)[1]
        fcntl.ioctl(s, 0x8914, struct.pack("16sH22x", b"lo", flags | 0x1))


def scrape(outdir, tag):
    """GET /metrics of the exporter on loopback, kept as metrics-<tag>.txt."""
    import urllib.request

    try:
        with urllib.request.urlopen("http://%s/metrics" % EXPORTER_LISTEN, timeout=120) as r:
            write(os.path.join(outdir, "metrics-%s.txt" % tag), r.read().decode())
        say("exporter: scraped (%s)" % tag)
    except OSError as e:
        write(os.path.join(outdir, "scrape-%s.failed" % tag), "%r\n" % e)
        say("exporter: scrape %s failed: %r" % (tag, e))


def scenario_exporter(ftrace):
    """`kvmexit exporter --vm e2e-vm`, started while no VM runs: another VM (other-vm) runs
    first, then e2e-vm, both under ftrace; /metrics is scraped after each. The exporter must
    learn e2e-vm as it starts, count every one of its exits, and none of other-vm's."""
    outdir = os.path.join(RESULTS, "exporter")
    os.makedirs(outdir)
    loopback_up()
    args = ["exporter", "--listen", EXPORTER_LISTEN, "--vm", "e2e-vm"]
    say("scenario exporter: kvmexit %s" % " ".join(args))
    write(os.path.join(outdir, "bpftool_before.json"), bpftool_progs())
    k = Kvmexit(outdir, args, ready="kvmexit exporter: tracing")
    if not k.start():
        write(os.path.join(outdir, "attach_failed"), "1\n")
        write(os.path.join(outdir, "bpftool_after.json"), bpftool_progs())
        return
    write(os.path.join(outdir, "bpftool_attached.json"), bpftool_progs())
    ftrace.start()
    run_vmm(outdir, tag="other", name="other-vm")
    time.sleep(1)
    scrape(outdir, "other")
    run_vmm(outdir)
    ftrace.stop(outdir)
    time.sleep(1)
    scrape(outdir, "final")
    k.stop(signal.SIGTERM)
    time.sleep(1)
    write(os.path.join(outdir, "bpftool_after.json"), bpftool_progs())


#: The `qemu` scenario: Debian's QEMU (-accel kvm -cpu host, two vCPUs) boots this host's own
#: kernel (harness.sh copies it to nested-vmlinuz) to an initramfs whose init (vmm/nested_init.c)
#: prints QEMU_MARKER and powers off.
QEMU_VM = "qemu-vm"
QEMU_MARKER = "KVMEXIT-NESTED-INIT: powering off"
QEMU_TIMEOUT = int(ENV.get("KVMEXIT_E2E_QEMU_TIMEOUT", "900"))


def qemu_cmd(console):
    common = [
        "-accel", "kvm", "-cpu", "host", "-smp", "2", "-m", "256",
        "-name", "guest=%s,debug-threads=on" % QEMU_VM,
        "-nodefaults", "-display", "none", "-no-reboot", "-serial", "file:" + console,
        "-kernel", os.path.join(GUEST, "nested-vmlinuz"), "-initrd", os.path.join(GUEST, "nested-initrd.gz"),
    ]  # fmt: skip
    if ENV.get("ARCH") == "amd64":
        return [
            "qemu-system-x86_64",
            *common,
            "-append",
            "console=ttyS0 panic=-1 " + ENV.get("KVMEXIT_E2E_QEMU_LOG", "quiet"),
        ]
    return ["qemu-system-aarch64", "-M", "virt,gic-version=3", *common, "-append", "console=ttyAMA0 panic=-1 quiet"]


def run_qemu(outdir):
    """Boot the nested guest to its power-off; QEMU's pid goes to vmm.pid (the rows' tgid)."""
    cmd = qemu_cmd(os.path.join(outdir, "console.log"))
    write(os.path.join(outdir, "qemu_cmd"), " ".join(cmd) + "\n")
    t0 = time.time()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    write(os.path.join(outdir, "vmm.pid"), "%d\n" % p.pid)
    try:
        out, err = p.communicate(timeout=QEMU_TIMEOUT)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        err += "\ne2e: killed after %ds" % QEMU_TIMEOUT
    wall = time.time() - t0
    write(os.path.join(outdir, "vmm.out"), out)
    write(os.path.join(outdir, "vmm.err"), err + "\nrc=%d\nwall_s=%.6f\n" % (p.returncode, wall))
    say("qemu rc=%d wall=%.3fs" % (p.returncode, wall))


def scenario_qemu():
    """The real guest's boot under kvmexit --sub --split, and an ftrace instance with the kernel's
    own events that say what each exit was and where its time went (the sub-reason events,
    sched_switch), on the monotonic clock as kvmexit record --sub --split records them."""
    exe = qemu_cmd("")[0]
    if shutil.which(exe) is None:  # the host's rootfs has no QEMU (harness.sh QEMU_PKG)
        write(os.path.join(RESULTS, "qemu", "skipped"), "%s is not in the %s rootfs\n" % (exe, ENV.get("HOST")))
        return
    extra = ("sched/sched_switch", *SUB_EVENTS)
    ftrace = Ftrace(INSTANCE + "-qemu", extra, clock="mono", buffer_kb=32768)
    args = ["--json", "--by", "thread", "--sub", "--split"]
    traced_scenario("qemu", args, ftrace=ftrace, vmm=run_qemu)


def scenario_slow():
    """The slow-exit log live with the split, under an ftrace instance on the mono clock: the clock
    of BPF's timestamps, one for all CPUs (the default per-CPU clock skews durations that span
    CPUs). The instance's events inside exits (the sub-reason events, sched_switch) bound when
    kvmexit's probe on the same kvm_exit read the clock (e2e_results.ProbeBounds): the instance
    enables them before kvmexit attaches, so its probes run first. 64 MiB per CPU: on the x86
    host (one CPU) the 16 MiB default held about 300,000 of these events and overran in two runs
    of three."""
    ftrace = Ftrace(INSTANCE + "-slow", ("sched/sched_switch", *SUB_EVENTS), clock="mono", buffer_kb=65536)
    traced_scenario("slow", ["--json", "--slower-than", SLOW_THRESHOLD, "--split"], ftrace=ftrace)


def _read_tail(path):
    with open(path) as f:
        return " ".join(f.read().split()[-3:])


def scenario_stress(seconds, with_kvmexit):
    """Harness development (KVMEXIT_E2E_ONLY=stress): the long exit runs that hung or crashed the
    emulated x86 host, over and over for `seconds`, without (or with) kvmexit attached; each round
    is logged on the serial console, so a hang or a panic shows where it happened."""
    outdir = os.path.join(RESULTS, "stress")
    os.makedirs(outdir)
    k = None
    if with_kvmexit:
        k = Kvmexit(outdir, ["--json"])
        if not k.start():
            return
    log = []
    if ENV.get("KVMEXIT_E2E_STRESS_QEMU") == "1":  # the nested QEMU boot first
        run_qemu(outdir)
        log.append("qemu: " + _read_tail(os.path.join(outdir, "vmm.err")))
        say("stress qemu: " + log[-1])
        os.sync()
    t_end = time.time() + seconds
    i = 0
    while time.time() < t_end:
        i += 1
        t0 = time.time()
        rc1, w1 = run_vmm(outdir, tag="long", specs=[CONF.get("COST_SPEC", "0:0:20000:0")])
        specs = [CONF.get("ABANDON_VCPU0", "1000000:0:0:0"), CONF.get("ABANDON_VCPU1", "0:1000000:0:0")]
        vmm = subprocess.Popen(vmm_args(specs), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(float(CONF.get("ABANDON_AFTER_S", "3")))
        vmm.kill()
        vmm.communicate()
        rc3, w3 = run_vmm(outdir, tag="std")
        took = (i, rc1, w1, vmm.returncode, rc3, w3, time.time() - t0)
        line = "round %d: long rc=%d %.1fs, abandon rc=%d, std rc=%d %.1fs, total %.1fs" % took
        log.append(line)
        say("stress " + line)
        write(os.path.join(outdir, "rounds"), "\n".join(log) + "\n")
        os.sync()
    if k is not None:
        k.stop()


def main():
    if os.path.isdir(RESULTS):
        shutil.rmtree(RESULTS)
    os.makedirs(RESULTS)
    t0 = time.time()
    info = scenario_meta()
    steps = []
    if not info["kvm_dev"]:
        write(os.path.join(RESULTS, "no_kvm"), "1\n")
    else:
        ftrace = Ftrace()
        # The workload alone under ftrace: the harness's own self-check.
        outdir = os.path.join(RESULTS, "workload")
        os.makedirs(outdir)
        ftrace.start()
        run_vmm(outdir, perf=True)
        ftrace.stop(outdir)
        if ENV.get("KVMEXIT_E2E_B"):
            scenario_ab(ftrace, ENV["KVMEXIT_E2E_B"].split())
        if ENV.get("KVMEXIT_E2E_ONLY", "") == "stress":  # harness development
            secs = float(ENV.get("KVMEXIT_E2E_STRESS_S", "600"))
            steps = [("stress", lambda: scenario_stress(secs, ENV.get("KVMEXIT_E2E_STRESS_KVMEXIT") == "1"))]
        elif ENV.get("KVMEXIT_E2E_ONLY", "") == "subreasons":  # harness development
            steps = [("subreasons", scenario_subreasons), ("hog", scenario_hog)]
        elif ENV.get("KVMEXIT_E2E_ONLY", "") != "ftrace":
            steps = [
                ("live", lambda: traced_scenario("live", ["--json", "--by", "thread"], ftrace=ftrace)),
                ("interval", lambda: traced_scenario("interval", ["-i", "1", "--json"], ftrace=ftrace)),
                ("compat", lambda: traced_scenario("compat", [], module=compat_module(), ftrace=ftrace)),
                ("abandon", lambda: scenario_abandon(ftrace)),
                ("cost", scenario_cost),
                ("subreasons", scenario_subreasons),
                ("hog", scenario_hog),
                ("exporter", lambda: scenario_exporter(ftrace)),
                ("qemu", scenario_qemu),
                # The slow-exit log, live, against the same run's ftrace capture.
                ("slow", scenario_slow),
            ]
    if ENV.get("ARCH") == "amd64":
        # kvmexit-aarch64 is for arm64 hosts only.
        steps = [s for s in steps if s[0] != "compat"]
    only = ENV.get("KVMEXIT_E2E_SCENARIOS", "").split(",")  # development: e.g. "abandon"
    for name, fn in steps:
        if only != [""] and name not in only:
            continue
        try:
            fn()
        except Exception as e:  # record and go on with the next scenario
            say("scenario %s crashed: %r" % (name, e))
            write(os.path.join(RESULTS, name + ".crash"), repr(e) + "\n")
        os.sync()  # each scenario's results survive a later timeout
    write(os.path.join(RESULTS, "guest_seconds"), "%.1f\n" % (time.time() - t0))
    write(os.path.join(RESULTS, "done"), "1\n")
    say("all scenarios done in %.1fs" % (time.time() - t0))


if __name__ == "__main__":
    main()
