"""``kvmexit record``: capture kvm exits with tracefs only (no bcc), for ``kvmexit report``.

Creates a private tracefs instance, enables kvm:kvm_exit and kvm:kvm_entry (and
kvm:kvm_trap_enter / kvm:kvm_vcpu_wakeup where the kernel has them), streams the instance's
``trace_pipe`` to the output file while tracing (so the ring buffer is drained, not overrun),
and removes the instance on every exit path. The global buffer and other instances are never
touched. Next to the trace it writes ``FILE.names.json``: the layout, the kvm format files, and
tgid -> VM name / tid -> thread name at record time.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import select
import signal
import sys
import time
from typing import IO, Any, Dict, List, Optional

from ..errors import KvmexitError, NotRoot
from ..layouts import detect, find_tracefs, read_formats
from ..names import NameResolver, vcpu_from_comm
from ..sources.trace.reader import NAMES_SUFFIX
from ..tracefs import Instance
from .common import positive_float, positive_int

__all__ = ["DESCRIPTION", "EPILOG", "prepare_parser", "run", "find_vm_processes", "names_document"]

DESCRIPTION = "Record KVM exits with tracefs (no bcc needed) for kvmexit report."
EPILOG = """\
examples:
  kvmexit record -o vm.trace 30           record 30 seconds (Ctrl-C stops earlier)
  kvmexit record -o vm.trace.gz           compressed; stop with Ctrl-C or SIGTERM
  kvmexit report vm.trace                 then report, with VM names from vm.trace.names.json
"""

KVM_EVENTS = ("kvm_exit", "kvm_entry", "kvm_trap_enter", "kvm_vcpu_wakeup")
#: Thread exits: an exit still open when its thread dies is *abandoned*, as the live tool counts
#: it, not open (rare events: one per thread exit on the host).
THREAD_EXIT = ("sched", "sched_process_exit")


def prepare_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--output",
        default="kvmexit.trace",
        metavar="FILE",
        help="trace file (default: kvmexit.trace; .gz compresses; - for stdout)",
    )
    parser.add_argument(
        "duration", nargs="?", type=positive_float, help="seconds to record, as for kvmexit (default: until Ctrl-C)"
    )
    parser.add_argument(
        "-d",
        "--duration",
        dest="duration_option",
        type=positive_float,
        metavar="SECONDS",
        help="the same, as an option",
    )
    parser.add_argument(
        "--buffer-size",
        type=positive_int,
        default=8192,
        metavar="KB",
        help="per-CPU ring buffer size of the instance (default: 8192)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    parser.add_argument("--no-names", action="store_true", help="do not write FILE.names.json")
    parser.add_argument(
        "--event",
        action="append",
        default=[],
        metavar="SYSTEM:EVENT",
        help="also record this tracepoint (repeatable; report counts it as a non-kvm event)",
    )


def find_vm_processes(procfs: str = "/proc") -> List[int]:
    """Processes holding a KVM VM file descriptor (``anon_inode:kvm-vm``)."""
    out: List[int] = []
    try:
        pids = [p for p in os.listdir(procfs) if p.isdigit()]
    except OSError:
        return out
    for pid in pids:
        fd_dir = os.path.join(procfs, pid, "fd")
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(os.path.join(fd_dir, fd)) == "anon_inode:kvm-vm":
                    out.append(int(pid))
                    break
            except OSError:
                continue
    return out


def names_document(resolver: NameResolver, tgids: List[int], procfs: str = "/proc") -> Dict[str, Any]:
    """``vms`` (tgid -> name) and ``threads`` (tid -> tgid, comm, vcpu) of the VM processes now."""
    vms: Dict[str, Optional[str]] = {}
    threads: Dict[str, Dict[str, Any]] = {}
    for tgid in tgids:
        vms[str(tgid)] = resolver.vm(tgid)
        try:
            tids = [int(t) for t in os.listdir(os.path.join(procfs, str(tgid), "task")) if t.isdigit()]
        except OSError:
            continue
        for tid in tids:
            comm = resolver.comm(tgid, tid)
            threads[str(tid)] = {"tgid": tgid, "comm": comm, "vcpu": vcpu_from_comm(comm)}
    return {"vms": vms, "threads": threads}


class _Stop:
    def __init__(self) -> None:
        self.signal: Optional[int] = None

    def __call__(self, signum: int, frame: Any) -> None:
        self.signal = signum


def _open_output(path: str, force: bool) -> IO[bytes]:
    if path == "-":
        return sys.stdout.buffer
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o644)
    except FileExistsError as e:
        raise KvmexitError("%s already exists" % path, hint="use --force to overwrite, or -o another file") from e
    except OSError as e:
        raise KvmexitError("cannot create %s: %s" % (path, e.strerror)) from e
    raw = os.fdopen(fd, "wb")
    if path.endswith(".gz"):
        return gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6)  # type: ignore[return-value]
    return raw


def run(args: argparse.Namespace, tracefs: Optional[str] = None, procfs: str = "/proc") -> int:
    if os.geteuid() != 0:
        raise NotRoot("recording needs root (tracefs)", hint="run with sudo")
    if args.duration_option is not None:
        if args.duration is not None:
            raise KvmexitError("give the duration once, as an argument or with -d")
        args.duration = args.duration_option
    extra = []
    for spec in args.event:
        system, sep, event = spec.partition(":")
        if not sep or not system or not event or "/" in spec:
            raise KvmexitError("bad --event %r" % spec, hint="SYSTEM:EVENT, e.g. sched:sched_switch")
        extra.append((system, event))
    root = tracefs or find_tracefs()
    formats = read_formats(root, KVM_EVENTS)
    layout = detect(formats)  # raises when kvm_exit/kvm_entry are missing
    if args.output != "-" and not args.force and os.path.exists(args.output):
        raise KvmexitError("%s already exists" % args.output, hint="use --force to overwrite, or -o another file")
    resolver = NameResolver(procfs=procfs)
    vm_tgids = set(find_vm_processes(procfs))
    out = _open_output(args.output, args.force)
    stop = _Stop()
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    inst: Optional[Instance] = None
    fd = -1
    written = 0
    lost: Dict[int, Dict[str, int]] = {}
    notes: List[str] = []
    started = time.monotonic()
    names: Dict[str, Any] = names_document(resolver, sorted(vm_tgids), procfs)
    try:
        inst = Instance.create(root)
        inst.write("buffer_size_kb", str(args.buffer_size))
        if not inst.set_option("record-tgid", True):
            notes.append("tgids not in the trace (record-tgid is global on this kernel); the names file maps them")
        enabled = [e for e in KVM_EVENTS if inst.enable_event("kvm", e)]
        if inst.enable_event(*THREAD_EXIT):
            enabled.append("%s:%s" % THREAD_EXIT)
        for system, event in extra:
            if not inst.enable_event(system, event):
                raise KvmexitError("no tracepoint %s:%s" % (system, event))
        header = "# kvmexit record: layout=%s kernel=%s events=%s instance=%s\n" % (
            layout.name,
            platform.release(),
            ",".join(enabled + ["%s:%s" % e for e in extra]),
            inst.name,
        )
        out.write(header.encode())
        inst.write("tracing_on", "1")
        fd = os.open(inst.file("trace_pipe"), os.O_RDONLY | os.O_NONBLOCK)
        deadline = started + args.duration if args.duration is not None else None
        last_scan = started
        while stop.signal is None:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            wait = 0.2 if deadline is None else max(0.0, min(0.2, deadline - now))
            try:
                ready, _, _ = select.select([fd], [], [], wait)
            except InterruptedError:
                continue
            if ready:
                written += _drain(fd, out)
            if now - last_scan > 5.0:
                last_scan = now
                vm_tgids.update(find_vm_processes(procfs))
                _merge_names(names, names_document(resolver, sorted(vm_tgids), procfs))
        inst.write("tracing_on", "0")
        written += _drain(fd, out)
        lost = {c: s for c, s in inst.cpu_stats().items() if s.get("overrun") or s.get("dropped events")}
    finally:
        if fd >= 0:
            os.close(fd)
        err = inst.remove() if inst is not None else None
        for s, h in old.items():
            signal.signal(s, h)
        try:
            if out is not sys.stdout.buffer:
                out.close()
            else:
                out.flush()
        except OSError:
            pass
        if err:
            print("kvmexit record: warning: %s" % err, file=sys.stderr)
    vm_tgids.update(find_vm_processes(procfs))
    _merge_names(names, names_document(resolver, sorted(vm_tgids), procfs))
    seconds = time.monotonic() - started
    if args.output != "-" and not args.no_names:
        doc = {
            "kvmexit_names": 1,
            "layout": layout.name,
            "arch": layout.arch,
            "kernel": platform.release(),
            "formats": formats,
            "vms": names["vms"],
            "threads": names["threads"],
            "lost": {str(c): s for c, s in lost.items()},
            "seconds": round(seconds, 3),
        }
        with open(args.output + NAMES_SUFFIX, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
    for note in notes:
        print("kvmexit record: " + note, file=sys.stderr)
    why = " (%s)" % signal.Signals(stop.signal).name if stop.signal is not None else ""
    msg = "kvmexit record: %d bytes in %.1fs%s to %s" % (written, seconds, why, args.output)
    if lost:
        msg += "; EVENTS LOST: " + ", ".join(
            "CPU %d overrun %d dropped %d" % (c, s.get("overrun", 0), s.get("dropped events", 0))
            for c, s in sorted(lost.items())
        )
        msg += " (try a larger --buffer-size)"
    else:
        msg += "; no events lost"
    print(msg, file=sys.stderr)
    return 0


def _drain(fd: int, out: IO[bytes]) -> int:
    n = 0
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return n
        except InterruptedError:
            continue
        if not chunk:
            return n
        out.write(chunk)
        n += len(chunk)


def _merge_names(into: Dict[str, Any], new: Dict[str, Any]) -> None:
    for k, v in new["vms"].items():
        if v is not None or k not in into["vms"]:
            into["vms"][k] = v
    into["threads"].update(new["threads"])
