"""``kvmexit record``: capture kvm exits with tracefs only (no bcc), for ``kvmexit report``.

Creates a private tracefs instance, enables kvm:kvm_exit and kvm:kvm_entry (and
kvm:kvm_trap_enter / kvm:kvm_vcpu_wakeup where the kernel has them), streams the instance's
``trace_pipe`` to the output file while tracing (so the ring buffer is drained, not overrun),
and removes the instance on every exit path. The global buffer and other live instances are never
touched; instances left by kvmexit processes that died (SIGKILL) are removed, saying so. Next to the
trace it writes ``FILE.names.json``: the layout, the kvm format files, tgid -> VM name / tid ->
thread name at record time, and the wall-clock start and end.

Both files are created exclusively and never through a symbolic link (``--force`` replaces a
regular file, never a link). The header is flushed at once and the trace every second, so a
recording killed by SIGKILL is readable up to then. A write error is one line: what was recorded is
kept as ``FILE.partial``; a set-up refused by the kernel leaves no file.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import select
import signal
import stat
import sys
import time
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import KvmexitError, NotRoot
from ..layouts import detect, find_tracefs, read_formats
from ..names import NameResolver, vcpu_from_comm
from ..sources.live import SUB_PROGRAMS
from ..sources.trace.reader import NAMES_SUFFIX
from ..tracefs import Instance, remove_stale_instances
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
#: Program starts: a VMM is named from /proc as soon as its exec is read from the trace, so one
#: that lives under a second is named too (the scan of /proc every SCAN_SECONDS would miss it).
PROCESS_EXEC = ("sched", "sched_process_exec")
SCAN_SECONDS = 5.0
_EXEC_PID = re.compile(rb"sched_process_exec: filename=.*? pid=(\d+) old_pid=")


class ExecWatch:
    """Picks the pids of ``sched_process_exec`` lines out of the trace as it is drained."""

    def __init__(self) -> None:
        self._tail = b""
        self.pids: List[int] = []

    def feed(self, chunk: bytes) -> None:
        data = self._tail + chunk
        cut = data.rfind(b"\n") + 1
        self._tail = data[cut:][-4096:]  # a line cut by the read; a runaway one is not kept whole
        if b"sched_process_exec" in data[:cut]:
            self.pids.extend(int(m.group(1)) for m in _EXEC_PID.finditer(data, 0, cut))

    def take(self) -> List[int]:
        pids, self.pids = self.pids, []
        return pids


def name_new_processes(names: Dict[str, Any], resolver: NameResolver, pids: List[int], procfs: str) -> None:
    """Name the processes that were just exec'd, while they run; the names of QEMU's guests
    only (``-name``, libvirt), so other programs leave no entry. A pid reused by a new guest
    takes that guest's name."""
    for pid in pids:
        resolver.forget(pid)
        if resolver.vm(pid) is None:
            resolver.forget(pid)  # not a guest (or gone already): nothing to keep
            continue
        new = names_document(resolver, [pid], procfs)
        names["vms"].update(new["vms"])
        names["threads"].update(new["threads"])


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
        "--sub",
        action="store_true",
        help="also record the sub-reason events (kvm_hvc_arm64, kvm_mmio, ...: report --sub)",
    )
    parser.add_argument(
        "--event",
        action="append",
        default=[],
        metavar="SYSTEM:EVENT",
        help="also record this tracepoint (repeatable; report counts it as a non-kvm event)",
    )
    parser.add_argument(
        "--split",
        action="store_true",
        help="also record sched:sched_switch and kvm:kvm_userspace_exit, on the monotonic clock, so that report "
        "splits each exit's time (kernel, VMM, halted, preempted, other blocked), as kvmexit --split does",
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


def check_target(path: str, force: bool) -> None:
    """Refuse an output path before anything is recorded: a symbolic link (even with ``--force``:
    in a shared directory another user may have planted it), an existing file without ``--force``,
    and anything that is not a regular file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise KvmexitError("cannot use %s: %s" % (path, e.strerror)) from e
    if stat.S_ISLNK(st.st_mode):
        raise KvmexitError("%s is a symbolic link: not written through" % path, hint="remove it, or -o another file")
    if not force:
        raise KvmexitError("%s already exists" % path, hint="use --force to overwrite, or -o another file")
    if not stat.S_ISREG(st.st_mode):
        raise KvmexitError("%s is not a regular file" % path, hint="-o - writes to standard output")


def create_exclusive(path: str, force: bool) -> int:
    """A new file at ``path``, mode 0644 (less if the umask says so), created with
    ``O_EXCL|O_NOFOLLOW``: never through a symlink, never over a file that appeared meanwhile.
    With ``force`` an existing regular file is removed first."""
    check_target(path, force)
    if force:
        try:
            os.unlink(path)  # a regular file (checked); swapped for a link since, the link goes
        except FileNotFoundError:
            pass
        except OSError as e:
            raise KvmexitError("cannot replace %s: %s" % (path, e.strerror)) from e
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags, 0o644)
    except FileExistsError as e:
        raise KvmexitError("%s appeared while kvmexit was starting" % path, hint="-o another file") from e
    except OSError as e:
        raise KvmexitError("cannot create %s: %s" % (path, e.strerror)) from e


def keep_partial(path: str) -> str:
    """Rename a recording cut short by an error to ``PATH.partial`` (or ``.partial.N``), never over
    another file; returns the name it has now."""
    for n in range(100):
        target = path + ".partial" + ("" if n == 0 else ".%d" % n)
        try:
            os.link(path, target)  # fails when target exists: nothing is clobbered
        except FileExistsError:
            continue
        except OSError:
            return path
        try:
            os.unlink(path)
        except OSError:
            pass
        return target
    return path


class _OutputFailed(Exception):
    """A write to the output failed (told apart from tracefs errors, which are not the output's)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _Output:
    """The trace being written: a file created exclusively, or standard output (``-``)."""

    def __init__(self, path: str, force: bool) -> None:
        self.path = path
        self.bytes = 0  # written by kvmexit, before compression
        self.header_written = False
        self.raw: Optional[IO[bytes]] = None
        self._last_flush = time.monotonic()
        if path == "-":
            self.stream: IO[bytes] = sys.stdout.buffer
            return
        self.raw = os.fdopen(create_exclusive(path, force), "wb")
        if path.endswith(".gz"):
            self.stream = gzip.GzipFile(fileobj=self.raw, mode="wb", compresslevel=6)  # type: ignore[assignment]
        else:
            self.stream = self.raw

    def write(self, data: bytes) -> None:
        try:
            self.stream.write(data)
        except OSError as e:
            raise _OutputFailed(e) from e
        self.bytes += len(data)

    def flush(self, every: float = 0.0) -> None:
        """Flush (gzip: a sync point), so that a recording killed now is readable up to here."""
        now = time.monotonic()
        if now - self._last_flush >= every:
            try:
                self.stream.flush()
            except OSError as e:
                raise _OutputFailed(e) from e
            self._last_flush = now

    def close(self) -> None:
        """Close, raising what the final flush meets (a full disk often shows only here)."""
        try:
            if self.raw is None:
                self.stream.flush()
                return
            try:
                self.stream.close()  # gzip: writes its trailer into raw
            finally:
                self.raw.close()
        except OSError as e:
            raise _OutputFailed(e) from e

    def abandon(self) -> Optional[str]:
        """After an error: close without raising, keep what was recorded as ``PATH.partial``, or
        remove the file when not even the header was written. Returns the name kept."""
        if self.raw is None:
            return None
        for f in (self.stream, self.raw):
            try:
                f.close()
            except (OSError, ValueError):
                pass
        self.raw = None
        if not self.header_written:
            try:
                os.unlink(self.path)
            except OSError:
                pass
            return None
        return keep_partial(self.path)


def _write_error(what: str, e: OSError, kept: Optional[str]) -> KvmexitError:
    msg = "cannot write %s: %s" % (what, e.strerror or e)
    msg += "; what was recorded is kept in %s" % kept if kept else "; nothing was kept"
    return KvmexitError(msg, hint="free some space, or -o a file elsewhere")


#: What --split records: the events of the split of the exit time (issue 11).
SPLIT_EVENTS = (("sched", "sched_switch"), ("kvm", "kvm_userspace_exit"))


def _setup(
    inst: Instance,
    buffer_kb: int,
    extra: List[Tuple[str, str]],
    notes: List[str],
    sub_events: Sequence[str] = (),
    split: bool = False,
) -> List[str]:
    """Configure the instance; a refusal (no memory for the buffer, no such event) is one line."""
    try:
        inst.write("buffer_size_kb", str(buffer_kb))
    except OSError as e:
        raise KvmexitError(
            "cannot give the tracefs instance %d KB per CPU: %s" % (buffer_kb, e.strerror),
            hint="a smaller --buffer-size",
        ) from e
    try:
        if not inst.set_option("record-tgid", True):
            notes.append("tgids not in the trace (record-tgid is global on this kernel); the names file maps them")
        enabled = [e for e in KVM_EVENTS if inst.enable_event("kvm", e)]
        for event in sub_events:  # --sub: those this kernel has (the others' exits show -)
            if inst.enable_event("kvm", event):
                enabled.append(event)
            else:
                notes.append("sub-reasons: this kernel has no kvm:%s (those exits show -)" % event)
        for system, name in (THREAD_EXIT, PROCESS_EXEC):
            if inst.enable_event(system, name):
                enabled.append("%s:%s" % (system, name))
        if split:
            # kvm_vcpu_wakeup's halt time is measured on the monotonic clock (ktime_get), as the
            # kernel side's windows are: the trace's timestamps must be on it too to place
            # off-CPU intervals inside or outside a halt (trace_clock "local" drifts from it).
            try:
                inst.write("trace_clock", "mono")
            except OSError as e:
                notes.append("trace_clock mono refused (%s): halts placed on the default clock" % e.strerror)
            for system, event in SPLIT_EVENTS:
                if system == "kvm" and event in enabled:
                    continue  # --sub records it already (kvm_userspace_exit): named once
                if inst.enable_event(system, event):
                    enabled.append("%s:%s" % (system, event))
                else:
                    notes.append("no %s:%s here: report shows the parts it gives as unknown" % (system, event))
        for system, event in extra:
            if not inst.enable_event(system, event):
                raise KvmexitError(
                    "no tracepoint %s:%s" % (system, event), hint="see %s" % os.path.join(inst.tracefs, "events")
                )
    except OSError as e:
        raise KvmexitError("cannot set up the tracefs instance %s: %s" % (inst.name, e.strerror)) from e
    return enabled + ["%s:%s" % e for e in extra]


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
    names_path = None if args.output == "-" or args.no_names else args.output + NAMES_SUFFIX
    if args.output != "-":
        check_target(args.output, args.force)
    if names_path is not None:
        check_target(names_path, args.force)
    for note in remove_stale_instances(root):
        print("kvmexit record: " + note, file=sys.stderr)
    resolver = NameResolver(procfs=procfs)
    vm_tgids = set(find_vm_processes(procfs))
    stop = _Stop()
    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    inst: Optional[Instance] = None
    out: Optional[_Output] = None
    fd = -1
    lost: Dict[int, Dict[str, int]] = {}
    notes: List[str] = []
    started = time.monotonic()
    started_wall = time.time()
    names: Dict[str, Any] = names_document(resolver, sorted(vm_tgids), procfs)
    try:
        inst = Instance.create(root)
        sub_events = [e for e, _fn in SUB_PROGRAMS[layout.arch]] if getattr(args, "sub", False) else []
        events = _setup(inst, args.buffer_size, extra, notes, sub_events, args.split)
        # Only now, with the instance ready, is the output created: a refused set-up leaves none.
        out = _Output(args.output, args.force)
        header = "# kvmexit record: layout=%s kernel=%s events=%s instance=%s\n" % (
            layout.name,
            platform.release(),
            ",".join(events),
            inst.name,
        )
        try:
            out.write(header.encode())
            out.flush()  # at once: a recording killed later is still readable
        except _OutputFailed as e:
            raise _write_error(args.output, e.error, out.abandon()) from e.error
        out.header_written = True
        inst.write("tracing_on", "1")
        fd = os.open(inst.file("trace_pipe"), os.O_RDONLY | os.O_NONBLOCK)
        deadline = started + args.duration if args.duration is not None else None
        last_scan = started
        execs = ExecWatch()
        try:
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
                    _drain(fd, out, execs.feed)
                    out.flush(every=1.0)
                    name_new_processes(names, resolver, execs.take(), procfs)
                if now - last_scan > SCAN_SECONDS:
                    last_scan = now
                    vm_tgids.update(find_vm_processes(procfs))
                    _merge_names(names, names_document(resolver, sorted(vm_tgids), procfs))
            inst.write("tracing_on", "0")
            _drain(fd, out, execs.feed)
            name_new_processes(names, resolver, execs.take(), procfs)
            lost = {c: s for c, s in inst.cpu_stats().items() if s.get("overrun") or s.get("dropped events")}
            out.close()
        except _OutputFailed as e:
            raise _write_error("the trace to " + args.output, e.error, out.abandon()) from e.error
    finally:
        if fd >= 0:
            os.close(fd)
        err = inst.remove() if inst is not None else None
        for s, h in old.items():
            signal.signal(s, h)
        if out is not None and out.raw is not None and sys.exc_info()[0] is not None:
            out.abandon()  # any other error: keep what was recorded, named as partial
        if err:
            print("kvmexit record: warning: %s" % err, file=sys.stderr)
    vm_tgids.update(find_vm_processes(procfs))
    _merge_names(names, names_document(resolver, sorted(vm_tgids), procfs))
    seconds = time.monotonic() - started
    if names_path is not None:
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
            # Wall-clock time (Unix seconds) of the start and end: report's CSV time column.
            "started": round(started_wall, 3),
            "ended": round(started_wall + seconds, 3),
        }
        write_names(names_path, doc, args.force)
    for note in notes:
        print("kvmexit record: " + note, file=sys.stderr)
    why = " (%s)" % signal.Signals(stop.signal).name if stop.signal is not None else ""
    msg = "kvmexit record: %d bytes in %.1fs%s to %s" % (out.bytes, seconds, why, args.output)
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


def write_names(path: str, doc: Dict[str, Any], force: bool) -> None:
    """The names side file, created like the trace. On a write error it is removed (half a JSON
    document is of no use) and the error says that the trace itself is complete."""
    fd = create_exclusive(path, force)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1, sort_keys=True)
    except OSError as e:
        try:
            os.unlink(path)
        except OSError:
            pass
        raise KvmexitError(
            "cannot write %s: %s; the trace itself is complete" % (path, e.strerror or e),
            hint="free some space, or report with --no-names",
        ) from e


def _drain(fd: int, out: _Output, seen: Optional[Callable[[bytes], None]] = None) -> None:
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return
        except InterruptedError:
            continue
        if not chunk:
            return
        out.write(chunk)
        if seen is not None:
            seen(chunk)


def _merge_names(into: Dict[str, Any], new: Dict[str, Any]) -> None:
    for k, v in new["vms"].items():
        if v is not None or k not in into["vms"]:
            into["vms"][k] = v
    into["threads"].update(new["threads"])
