"""``kvmexit [duration]``: trace exits live with BPF and report, once or every interval."""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sys
import time
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from ..errors import KvmexitError, TracepointsMissing, UnsupportedArch, UsageError
from ..layouts import Layout, detect, find_tracefs, read_formats, switch_offsets, wakeup_ns_offset
from ..model import Snapshot, delta, paused_gc
from ..names import NameResolver
from .common import (
    PID_MAX_LIMIT,
    Emitter,
    SlowPrinter,
    add_filter_options,
    add_output_options,
    add_slow_option,
    bounded_int,
    check_reasons,
    describe_filters,
    make_report,
    positive_float,
    positive_int,
    require_stdout,
    wants_sub,
)
from .logfile import LogFile

__all__ = [
    "DESCRIPTION",
    "EPILOG",
    "StopRequest",
    "announce",
    "left_out",
    "open_live",
    "open_live_args",
    "prepare_parser",
    "run",
]

DESCRIPTION = (
    "Trace KVM VM exits with eBPF and report, per VM, vCPU thread and exit reason, how many there were "
    "and how long each took from kvm_exit to the next kvm_entry on the same thread."
)
EPILOG = """\
examples:
  kvmexit                       # trace until Ctrl-C, then report per thread and reason
  kvmexit 10                    # trace for 10 seconds
  kvmexit -i 1 -c 5             # five 1-second reports of what happened in each second
  kvmexit --vm web01 --by reason   # one guest, totals per exit reason
  kvmexit -p 4242 --reason WFx --hist   # one QEMU process, WFx only, with latency histograms
  kvmexit --by vm --sort total --top 5  # the five VMs that spend most time exited
  kvmexit --json 5 > exits.json # machine-readable (schema kvmexit/2)
  kvmexit -i 10 --csv >> exits.csv      # a CSV log, like kvm_stat -l
  kvmexit -i 10 --csv --log /var/log/kvmexit.csv   # kept for days: SIGHUP reopens it (logrotate)
  kvmexit report trace.txt      # the same report from a recorded trace (no bcc needed)
  kvmexit record -o trace.txt 30         # record with tracefs alone, for later `report`

columns: COUNT is exits seen; AVG, MIN, MAX and P99 are over exits whose entry was seen; P99 is
estimated from log-linear buckets (4 per power of two, interpolated): within 25% of the exact
value, offline as live; HALT% is the share of that time the vCPU was halted in the kernel
(WFI/WFE, HLT: guest idle time, not exit-handling cost). The closing line accounts for every exit.
"""

_SUPPORTED_MACHINES = {"aarch64": "arm64", "arm64": "arm64", "x86_64": "x86"}


#: Signals that end a run with its report, in every command: Ctrl-C, kill, and a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopRequest:
    """Once the programs are attached, SIGINT, SIGTERM and SIGHUP only set a flag: the run ends
    at its next wait and still prints its report, and a signal never cuts a map read in half."""

    def __init__(self) -> None:
        self.requested = False
        self._saved: Dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        for sig in STOP_SIGNALS:
            self._saved[sig] = signal.signal(sig, self._request)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)

    def _request(self, signum: int, frame: object) -> None:
        self.requested = True

    def sleep_until(
        self,
        deadline: Optional[float],
        tick: Optional[Callable[[], object]] = None,
        wait: Callable[[float], object] = time.sleep,
    ) -> bool:
        """Wait until the monotonic ``deadline`` (None: no end) or a stop request, whichever
        comes first; True if stopped. ``wait(seconds)`` blocks for at most that long (the live
        source handles its notifications meanwhile); ``tick`` runs every SWEEP_SECONDS."""
        next_tick = time.monotonic() + SWEEP_SECONDS
        while not self.requested:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            if tick is not None and now >= next_tick:
                tick()
                next_tick = now + SWEEP_SECONDS
            wait(min(0.05, deadline - now) if deadline is not None else 0.05)
        return True


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("duration", nargs="?", type=positive_float, help="seconds to trace (default: until Ctrl-C)")
    parser.add_argument(
        "-i", "--interval", type=positive_float, metavar="SECS", help="report every SECS seconds (deltas)"
    )
    parser.add_argument("-c", "--count", type=positive_int, metavar="N", help="with -i: stop after N reports")
    add_filter_options(parser)
    add_output_options(parser)
    parser.add_argument(
        "--log",
        metavar="FILE",
        help="append the reports to FILE, each line flushed; the CSV header only at the start of the file; "
        "SIGHUP reopens FILE (for logrotate)",
    )
    add_slow_option(parser)
    parser.add_argument(
        "--guest",
        action="store_true",
        help="also measure time in the guest (kvm_entry -> next kvm_exit) and show EXIT%%, the exit time's share of "
        "exit + guest time (adds ~1-3%% to the cost of an exit: see README Overhead)",
    )
    parser.add_argument(
        "--split",
        action="store_true",
        help="split each exit's time into kernel, VMM, halted, preempted and other blocked, with --guest (traces "
        "sched_switch, which fires for every context switch of the host: see README Overhead)",
    )
    g = add_map_options(parser)
    g.add_argument("--ebpf", action="store_true", help="print the BPF program and its defines, then exit")
    g.add_argument(
        "--fallback-example",
        action="store_true",
        help="if live tracing is impossible here or no exit occurs, report on the shipped arm64 example instead",
    )


def add_map_options(parser: argparse.ArgumentParser, sub: bool = True) -> argparse._ArgumentGroup:
    """The kernel maps' sizes (``sub``: with the sub-reason map's) and the tracefs mount point, for
    every command that traces live."""
    g = parser.add_argument_group("advanced")
    g.add_argument(
        "--max-threads",
        type=bounded_int(1, PID_MAX_LIMIT),
        default=16384,
        metavar="N",
        help="size of the per-thread open-exit map (default: 16384)",
    )
    g.add_argument(
        "--max-keys",
        type=bounded_int(1, MAX_KEYS_LIMIT, "the whole map is read into memory at every report"),
        default=65536,
        metavar="N",
        help="size of the (thread, reason) statistics map (default: 65536)",
    )
    if sub:
        g.add_argument(
            "--max-sub-keys",
            type=bounded_int(1, MAX_KEYS_LIMIT, "the whole map is read into memory at every report"),
            default=65536,
            metavar="N",
            help="with --sub: size of the (thread, reason, sub-reason) map (default: 65536)",
        )
    g.add_argument("--tracefs", help="tracefs mount point (default: auto)")
    return g


def check_machine(machine: Optional[str] = None) -> str:
    machine = machine or platform.machine()
    if machine not in _SUPPORTED_MACHINES:
        raise UnsupportedArch("unsupported architecture %s" % machine, hint="kvmexit supports aarch64 and x86_64 hosts")
    return _SUPPORTED_MACHINES[machine]


#: --max-keys bound: a stats entry is ~400 bytes, in the kernel and in each read buffer.
MAX_KEYS_LIMIT = 1 << 20


def detect_layout(tracefs: Optional[str]) -> Layout:
    if tracefs and not os.path.isdir(os.path.join(tracefs, "events")):
        raise TracepointsMissing(
            "no tracefs at %s (it has no events directory)" % tracefs,
            hint="give tracefs's mount point, usually /sys/kernel/tracing, or leave --tracefs out",
        )
    root = tracefs or find_tracefs()
    return detect(read_formats(root))


def open_live(
    resolver: NameResolver,
    tracefs: Optional[str] = None,
    pids: Sequence[int] = (),
    tids: Sequence[int] = (),
    vms: Sequence[str] = (),
    max_threads: int = 16384,
    max_keys: int = 65536,
    subreasons: bool = False,
    max_sub_keys: int = 65536,
    slow_ns: Optional[int] = None,
    on_slow: Optional[Callable[[str, Any], None]] = None,
    split: bool = False,
    guest: bool = False,
) -> Any:
    """Check every prerequisite in the order a user can fix them, then compile and attach."""
    from ..sources import live

    check_machine()
    live.check_privileges()
    layout = detect_layout(tracefs)
    live.import_bcc()
    live.check_headers()
    missing = ["-p %d" % p for p in pids if _tgid_of(resolver.procfs, p) != p]
    missing += ["-t %d" % t for t in tids if _tgid_of(resolver.procfs, t) is None]
    if missing:
        raise KvmexitError("no running process or thread matches %s" % " ".join(missing), hint="see ps -eLf")
    # --vm: VMs running now and those that start later (the kernel's filter learns them).
    root = tracefs or find_tracefs()
    wakeup_off = wakeup_ns_offset(read_formats(root, ("kvm_vcpu_wakeup",)))
    source = live.LiveSource(
        layout,
        tgids=pids,
        tids=tids,
        vms=vms,
        max_threads=max_threads,
        max_keys=max_keys,
        resolver=resolver,
        wakeup_ns_off=wakeup_off,
        subreasons=subreasons,
        max_sub_keys=max_sub_keys,
        slow_ns=slow_ns,
        on_slow=on_slow,
        split=split,
        guest=guest or split,
        switch_offsets=switch_offsets(root) if split else None,
    )
    return source.open()


def open_live_args(args: argparse.Namespace, **options: Any) -> Any:
    """:func:`open_live` with the filters and map sizes every live command parses
    (:func:`add_map_options`: ``--max-sub-keys`` only where the command has ``--sub``)."""
    return open_live(
        NameResolver(),
        args.tracefs,
        args.pids,
        args.tids,
        args.vms,
        args.max_threads,
        args.max_keys,
        max_sub_keys=getattr(args, "max_sub_keys", 65536),
        **options,
    )


def _tgid_of(procfs: str, task_id: int) -> Optional[int]:
    """The process of a running thread (any thread id works as a /proc entry), else None."""
    try:
        with open(os.path.join(procfs, str(task_id), "status"), "rb") as f:
            for line in f:
                if line.startswith(b"Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _why_empty(args: argparse.Namespace) -> str:
    if args.pids or args.tids or args.vms or args.reasons:
        return "no exit matched %s" % describe_filters(args)
    kvm_debugfs = "/sys/kernel/debug/kvm"
    try:
        vms = [d for d in os.listdir(kvm_debugfs) if "-" in d]
    except OSError:
        return "no VM ran an exit while tracing"
    if not vms:
        return "no VMs are running (%s lists none)" % kvm_debugfs
    return "%d VMs exist but kvm_exit never fired; this host's KVM may not use these tracepoints" % len(vms)


#: How often a long run removes the per-thread slots of exited threads.
SWEEP_SECONDS = 10.0


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t)) + ("%.3f" % (t % 1))[1:]


def run(args: argparse.Namespace) -> int:
    if args.ebpf:
        from ..sources.live import render_program

        program = render_program(
            detect_layout(args.tracefs),
            filter_tgids=bool(args.pids),
            filter_tids=bool(args.tids),
            learn_tgids=bool(args.vms),
            subreasons=wants_sub(args),
            max_sub_keys=args.max_sub_keys,
            slow_ns=args.slower_than,
            split=args.split,
            guest=args.guest or args.split,
        )
        print("// cflags: " + " ".join(program.cflags))
        print(program.text)
        return 0
    if args.count is not None and args.interval is None:
        raise UsageError("-c/--count needs -i/--interval")
    if args.fallback_example and args.interval is not None:
        raise UsageError("--fallback-example replaces one empty report: it does not combine with -i")
    if args.slower_than is not None and args.csv:
        raise UsageError("--slower-than does not combine with --csv", hint="use --json for machine-readable slow exits")
    check_reasons(check_machine(), args.reasons)
    log = LogFile(args.log) if args.log else None  # a bad path fails before anything is loaded
    if log is None:
        require_stdout()
    if args.html:  # before attaching: a page that cannot be written fails now, not after the run
        from ..views.html import check_writable, require_matplotlib

        require_matplotlib()
        check_writable(args.html, args.force)
    try:
        slow = SlowPrinter(args, log) if args.slower_than is not None else None
        try:
            source = open_live_args(
                args,
                subreasons=wants_sub(args),
                slow_ns=args.slower_than,
                on_slow=slow,
                split=args.split,
                guest=args.guest,
            )
        except KvmexitError as e:
            if args.fallback_example:
                return _fallback(args, "live tracing is not possible here: %s" % e)
            raise
        try:
            with StopRequest() as stop:
                # With a log, a hang-up means "logrotate moved the file", not "stop".
                previous = log.reopen_on_sighup() if log is not None else None
                try:
                    idle = _trace(source, args, stop, log, slow)
                    left_out(source)
                finally:
                    if previous is not None:
                        signal.signal(signal.SIGHUP, previous)
        finally:
            source.close()
    finally:
        if log is not None:
            log.close()
    if idle is not None:  # only with --fallback-example: nothing was printed for the live run
        return _fallback(args, "no KVM exit occurred while tracing live (%s)" % idle)
    return 0


def _fallback(args: argparse.Namespace, why: str) -> int:
    from .report import report_example

    return report_example(args, why)


def left_out(source: Any) -> None:
    """--vm: what was traced before a process's name was read, then left out (one line)."""
    vf = getattr(source, "vm_filter", None)
    if vf is None or not any(vf.excluded.values()):
        return
    print(
        "kvmexit: --vm: left out %d exits of other VMs and %d of processes that ended before their name "
        "could be read (traced until then)" % (vf.excluded["other"], vf.excluded["unnamed"]),
        file=sys.stderr,
    )


def announce(source: Any, duration: Optional[float]) -> None:
    """The ready line (tests and scripts wait for it): every program is attached."""
    until = "for %gs" % duration if duration else "Ctrl-C to end"
    layout = source.layout
    for note in getattr(source, "notes", ()):
        print("kvmexit: %s" % note, file=sys.stderr)
    print("kvmexit: tracing %s exits (layout %s), %s" % (layout.arch, layout.name, until), file=sys.stderr)
    sys.stderr.flush()


def _trace(
    source: Any, args: argparse.Namespace, stop: StopRequest, out: Any = None, slow: Optional[SlowPrinter] = None
) -> Optional[str]:
    """Run the tracing loop. With --fallback-example, a run that saw nothing prints nothing and
    returns why (the example is reported instead); else None. Reports go to ``out`` (a log) or
    standard output."""
    if slow is None:
        return _trace_loop(source, args, stop, out, source.wait)

    def wait(seconds: float) -> None:
        source.wait(seconds)  # slow exits are printed as the perf buffer is read
        slow.note_lost(source.slow_lost)

    try:
        return _trace_loop(source, args, stop, out, wait)
    finally:
        source.poll(0)
        slow.note_lost(source.slow_lost)
        print(slow.summary(), file=sys.stderr)


def _trace_loop(
    source: Any, args: argparse.Namespace, stop: StopRequest, out: Any, wait: Callable[[float], None]
) -> Optional[str]:
    emitter = Emitter(args, _source_info(source), out if out is not None else sys.stdout)
    start, start_mono = time.time(), time.monotonic()
    prev = source.snapshot()
    announce(source, args.duration)
    deadline = start_mono + args.duration if args.duration else None
    if args.interval is None:
        stop.sleep_until(deadline, source.sweep, wait)
        why = _emit_since(source, args, emitter, prev, start, 0, unless_idle=args.fallback_example)[2]
        emitter.close()
        return why
    prev_t, index = start, 0
    wake = start_mono
    while args.count is None or index < args.count:
        wake += args.interval
        stopped = stop.sleep_until(wake if deadline is None else min(wake, deadline), wait=wait)
        now_t = time.time()
        prev = _emit_since(source, args, emitter, prev, prev_t, index)[0]
        prev_t = now_t
        index += 1
        if stopped or (deadline is not None and time.monotonic() >= deadline):
            break
    emitter.close()
    return None


def _emit_since(
    source: Any,
    args: argparse.Namespace,
    emitter: Emitter,
    prev: Snapshot,
    prev_t: float,
    index: int,
    unless_idle: bool = False,
) -> Tuple[Snapshot, int, Optional[str]]:
    """Report what happened since ``prev`` (``unless_idle``: not if nothing did); returns the new
    snapshot, its number of exits, and, if ``unless_idle`` kept an idle report back, why nothing
    was traced (else None)."""
    now_t = time.time()
    with paused_gc():
        snap = source.snapshot()
        report = make_report(delta(snap, prev), args)
        idle = not report.totals.exits and not report.health.unpaired_entries
        why = _why_empty(args) if not report.totals.exits else None  # reads debugfs: only when needed
        if not (idle and unless_idle):
            emitter.emit(report, _interval(index, prev_t, now_t), why)
    return snap, report.totals.exits, why if idle and unless_idle else None


def _interval(index: int, start: float, end: float) -> Dict[str, Any]:
    return {"index": index, "start": _stamp(start), "end": _stamp(end), "seconds": round(end - start, 3)}


def _source_info(source: Any) -> Dict[str, Any]:
    return {
        "kind": "live",
        "arch": source.layout.arch,
        "layout": source.layout.name,
        "kernel": platform.release(),
        "host": platform.node(),
    }
