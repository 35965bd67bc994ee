"""VM names and vCPU indexes from procfs (and libvirt's pid files), with injectable roots."""

from __future__ import annotations

import glob
import os
import re
import time
from typing import Dict, Iterable, Optional

from .model import ThreadInfo

__all__ = ["vm_name_from_cmdline", "vcpu_from_comm", "NameResolver"]

#: How long "no such process" is remembered for a tgid.
MISS_SECONDS = 10.0

_VCPU_COMM = re.compile(r"^CPU (\d+)/KVM$")


def vm_name_from_cmdline(argv: Iterable[str]) -> Optional[str]:
    """The guest name from a QEMU command line: ``-name guest=NAME,...`` or ``-name NAME``."""
    args = list(argv)
    for i, arg in enumerate(args):
        if arg in ("-name", "--name") and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(("-name=", "--name=")):
            value = arg.split("=", 1)[1]
        else:
            continue
        # QEMU option syntax: "a,b=c"; a literal comma is written ",,".
        parts = value.replace(",,", "\0").split(",")
        parts = [p.replace("\0", ",") for p in parts]
        for p in parts:
            if p.startswith("guest="):
                return p[len("guest=") :]
        if "=" not in parts[0]:
            return parts[0]
    return None


def vcpu_from_comm(comm: str) -> Optional[int]:
    """The vCPU index from a QEMU thread name such as ``CPU 3/KVM``."""
    m = _VCPU_COMM.match(comm)
    return int(m.group(1)) if m else None


class NameResolver:
    """Resolves tgid/tid to names, caching per process while it lives."""

    def __init__(self, procfs: str = "/proc", libvirt_run: str = "/run/libvirt/qemu") -> None:
        self.procfs = procfs
        self.libvirt_run = libvirt_run
        self._vm: Dict[int, Optional[str]] = {}
        #: tgids with no process now, and when that was seen: pids are reused, so misses expire.
        self._gone: Dict[int, float] = {}
        self._comm: Dict[int, str] = {}

    def _read(self, *parts: str) -> Optional[bytes]:
        try:
            with open(os.path.join(self.procfs, *parts), "rb") as f:
                return f.read()
        except OSError:
            return None

    def _libvirt_domain(self, tgid: int) -> Optional[str]:
        for pidfile in glob.glob(os.path.join(self.libvirt_run, "*.pid")):
            try:
                with open(pidfile) as f:
                    if int(f.read().strip() or -1) == tgid:
                        return os.path.basename(pidfile)[: -len(".pid")]
            except (OSError, ValueError):
                continue
        return None

    def forget(self, tgid: int) -> None:
        """Drop what is known of ``tgid`` (its pid may have been reused)."""
        self._vm.pop(tgid, None)
        self._gone.pop(tgid, None)

    def refresh(self, tgid: int) -> Optional[str]:
        """Read ``tgid``'s name again (its pid may have been reused). A name already known is
        kept when the process is gone by now: a notification handled late must not erase it."""
        known = self._vm.get(tgid)
        self.forget(tgid)
        name = self.vm(tgid)
        if name is None and known is not None and self._read(str(tgid), "cmdline") is None:
            self._gone.pop(tgid, None)
            self._vm[tgid] = name = known
        return name

    def vm(self, tgid: int) -> Optional[str]:
        if tgid in self._vm:
            return self._vm[tgid]
        seen_gone = self._gone.get(tgid)
        if seen_gone is not None and time.monotonic() - seen_gone < MISS_SECONDS:
            return None
        raw = self._read(str(tgid), "cmdline")
        name = None
        if raw:
            argv = [a.decode("utf-8", "replace") for a in raw.rstrip(b"\0").split(b"\0")]
            name = vm_name_from_cmdline(argv)
        if name is None:
            name = self._libvirt_domain(tgid)
        if raw is None and name is None:
            self._gone[tgid] = time.monotonic()
            return None
        self._vm[tgid] = name
        return name

    def comm(self, tgid: int, tid: int, fallback: str = "") -> str:
        raw = self._read(str(tgid), "task", str(tid), "comm")
        if raw is not None:
            self._comm[tid] = raw.decode("utf-8", "replace").rstrip("\n")
        return self._comm.get(tid, fallback)

    def thread(self, tgid: int, tid: int, comm: str = "") -> ThreadInfo:
        """Names for one thread; ``comm`` (from the kernel or the trace) wins when given."""
        name = comm or self.comm(tgid, tid)
        return ThreadInfo(comm=name, vm=self.vm(tgid), vcpu=vcpu_from_comm(name))

    def alive(self, tgid: int, tid: int) -> bool:
        """Whether the thread still runs; a zombie waiting to be reaped counts as gone."""
        raw = self._read(str(tgid), "task", str(tid), "stat")
        if raw is None:
            return False
        # "pid (comm) S ...": comm may hold spaces and parentheses, so split at the last ')'.
        state = raw[raw.rfind(b")") + 2 : raw.rfind(b")") + 3]
        return state not in (b"Z", b"X", b"x")

    def prune(self, tgids: Iterable[int], tids: Iterable[int]) -> None:
        """Forget what is cached of processes and threads other than these (those that run and
        are traced), so the caches stay as large as that over days of churn, and a pid that
        comes back as another program is read afresh."""
        keep, keep_tids = set(tgids), set(tids)
        for tgid in [t for t in self._vm if t not in keep]:
            del self._vm[tgid]
        now = time.monotonic()
        for tgid in [t for t, seen in self._gone.items() if now - seen >= MISS_SECONDS]:
            del self._gone[tgid]
        for tid in [t for t in self._comm if t not in keep_tids]:
            del self._comm[tid]

    def cached(self) -> int:
        """Entries in the caches (for benchmarks)."""
        return len(self._vm) + len(self._gone) + len(self._comm)

    def tgids_of_vm(self, names: Iterable[str]) -> Dict[int, str]:
        """Running processes whose VM name is one of ``names``."""
        wanted = set(names)
        found = {}
        for entry in os.listdir(self.procfs):
            if entry.isdigit():
                vm = self.vm(int(entry))
                if vm in wanted:
                    found[int(entry)] = vm
        return found
