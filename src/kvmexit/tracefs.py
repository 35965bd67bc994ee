"""A private tracefs instance: ``/sys/kernel/tracing/instances/kvmexit-PID-N``.

``kvmexit record`` traces into its own instance only, never the global buffer or another user's
instance, and removes it on every exit path (:meth:`Instance.remove` is idempotent).
"""

from __future__ import annotations

import errno
import os
import re
import time
from typing import Dict, List, Optional, Tuple

from .errors import KvmexitError

__all__ = ["Instance", "INSTANCE_PREFIX", "parse_cpu_stats", "remove_stale_instances", "stale_instances"]

INSTANCE_PREFIX = "kvmexit-"

_STAT = re.compile(r"^([a-z ]+):\s*(\d+)\s*$")


def parse_cpu_stats(text: str) -> Dict[str, int]:
    """``per_cpu/cpuN/stats`` as a dict: ``entries``, ``overrun``, ``dropped events``, ..."""
    out = {}
    for line in text.splitlines():
        m = _STAT.match(line.strip())
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


class Instance:
    """One tracefs instance created (and owned) by this process."""

    def __init__(self, tracefs: str, name: str) -> None:
        self.tracefs = tracefs
        self.name = name
        self.path = os.path.join(tracefs, "instances", name)
        self.enabled: List[str] = []
        self.removed = False

    @classmethod
    def create(cls, tracefs: str, prefix: str = INSTANCE_PREFIX) -> Instance:
        base = os.path.join(tracefs, "instances")
        if not os.path.isdir(base):
            raise KvmexitError("%s has no instances directory" % tracefs, hint="needs Linux 3.10+ tracefs")
        for n in range(100):
            name = "%s%d-%d" % (prefix, os.getpid(), n)
            try:
                os.mkdir(os.path.join(base, name))
            except FileExistsError:
                continue
            except OSError as e:
                raise KvmexitError("cannot create tracefs instance %s: %s" % (name, e.strerror)) from e
            return cls(tracefs, name)
        raise KvmexitError("cannot find a free tracefs instance name")

    def file(self, rel: str) -> str:
        return os.path.join(self.path, rel)

    def write(self, rel: str, value: str) -> None:
        with open(self.file(rel), "w") as f:
            f.write(value)

    def read(self, rel: str) -> str:
        with open(self.file(rel)) as f:
            return f.read()

    def has(self, rel: str) -> bool:
        return os.path.exists(self.file(rel))

    def enable_event(self, system: str, event: str) -> bool:
        """Enable ``system:event`` in this instance; ``False`` if the kernel has no such event."""
        rel = os.path.join("events", system, event, "enable")
        if not self.has(rel):
            return False
        self.write(rel, "1")
        self.enabled.append("%s:%s" % (system, event))
        return True

    def set_option(self, name: str, value: bool) -> bool:
        """Set an instance option; ``False`` where this kernel only has it globally."""
        rel = os.path.join("options", name)
        if not self.has(rel):
            return False
        self.write(rel, "1" if value else "0")
        return True

    def cpu_stats(self) -> Dict[int, Dict[str, int]]:
        out: Dict[int, Dict[str, int]] = {}
        base = self.file("per_cpu")
        try:
            cpus = sorted(os.listdir(base))
        except OSError:
            return out
        for d in cpus:
            if not d.startswith("cpu") or not d[3:].isdigit():
                continue
            try:
                with open(os.path.join(base, d, "stats")) as f:
                    out[int(d[3:])] = parse_cpu_stats(f.read())
            except OSError:
                continue
        return out

    def remove(self, timeout: float = 5.0) -> Optional[str]:
        """Stop tracing and remove the instance. Returns an error text instead of raising."""
        if self.removed:
            return None
        for rel in ("tracing_on", os.path.join("events", "enable")):
            try:
                self.write(rel, "0")
            except OSError:
                pass
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.rmdir(self.path)
                self.removed = True
                return None
            except FileNotFoundError:
                self.removed = True
                return None
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    return "cannot remove tracefs instance %s: %s" % (self.path, e.strerror)
                time.sleep(0.05)


_OWNED = re.compile(r"^%s(\d+)-\d+$" % re.escape(INSTANCE_PREFIX))


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: it exists
        return True
    return True


def stale_instances(tracefs: str) -> List[Tuple[str, int]]:
    """Instances named by :meth:`Instance.create` (``kvmexit-PID-N``) whose process is gone: a
    recorder killed by SIGKILL leaves its instance tracing. An instance whose pid runs (even a
    reused pid) is never listed: it may be another recorder's, working right now."""
    try:
        names = os.listdir(os.path.join(tracefs, "instances"))
    except OSError:
        return []
    out = []
    for name in sorted(names):
        m = _OWNED.match(name)
        if m is not None and not _process_exists(int(m.group(1))):
            out.append((name, int(m.group(1))))
    return out


def remove_stale_instances(tracefs: str) -> List[str]:
    """Remove the :func:`stale_instances`; one note per instance, removed or not."""
    notes = []
    for name, pid in stale_instances(tracefs):
        err = Instance(tracefs, name).remove()
        if err is None:
            notes.append("removed tracefs instance %s, left tracing by kvmexit process %d, which is gone" % (name, pid))
        else:
            notes.append("warning: instance %s of kvmexit process %d, which is gone: %s" % (name, pid, err))
    return notes
