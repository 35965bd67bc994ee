"""``--vm NAME`` learned as VMs appear: which processes the kernel's tgid filter admits.

The kernel traces a process it has no verdict for (a VM started after kvmexit) provisionally;
its first exit notifies user space, which reads the name here and writes ALLOW or DENY into the
kernel's ``tgid_filter``. So nothing of a named VM is lost (its first exits are kept), and
nothing foreign is counted: the exits a foreign process made before its DENY are removed from
the maps by the live source and counted in :attr:`VmFilter.excluded`, by why:

- ``other``: a process whose VM name is not one of the names given (or that has none);
- ``unnamed``: a process that had ended before its name could be read (it cannot be shown to
  be one of the VMs asked for).

A verdict belongs to one process, told apart from a later one with the same pid by its start
time (``/proc/PID/stat``); the kernel drops its copy when the process's leader exits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Tuple

from ..names import NameResolver

__all__ = ["Verdict", "VmFilter", "process_start"]


def process_start(procfs: str, tgid: int) -> Optional[Tuple[bytes, int]]:
    """(state, start time in clock ticks since boot) of a process, or None when it is gone."""
    try:
        with open(os.path.join(procfs, str(tgid), "stat"), "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # "pid (comm) S ppid ...": comm may hold spaces and parentheses; starttime is field 22.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    #: The judged process's start time (None: judged after it had ended).
    start: Optional[int]
    why: str  # "named", "pinned", "other" or "unnamed"


class VmFilter:
    """Verdicts per tgid for the VM names asked for; ``pinned`` tgids (``-p``) are always in."""

    def __init__(self, names: Iterable[str], pinned: Iterable[int], resolver: NameResolver) -> None:
        self.names = frozenset(names)
        self.pinned = frozenset(pinned)
        self.resolver = resolver
        self._verdicts: Dict[int, Verdict] = {}
        #: Exits traced provisionally, then removed: by why (see the module's docstring).
        self.excluded: Dict[str, int] = {"other": 0, "unnamed": 0}

    def __len__(self) -> int:
        return len(self._verdicts)

    def judge(self, tgid: int) -> Tuple[Verdict, bool]:
        """The verdict for the process ``tgid`` now, and whether it is new and its process
        runs (so the kernel should be given it)."""
        if tgid in self.pinned:
            return Verdict(True, None, "pinned"), False
        stat = process_start(self.resolver.procfs, tgid)
        start = stat[1] if stat is not None else None
        known = self._verdicts.get(tgid)
        if known is not None and (start is None or known.start == start):
            return known, False
        if known is not None:  # the pid was reused: a new process, judged by its own name
            self.resolver.forget(tgid)
        name = self.resolver.vm(tgid)
        if name is not None:
            verdict = Verdict(name in self.names, start, "named" if name in self.names else "other")
        elif stat is None:
            verdict = Verdict(False, None, "unnamed")
        else:
            verdict = Verdict(False, start, "other")
        self._verdicts[tgid] = verdict
        return verdict, stat is not None and stat[0] not in (b"Z", b"X", b"x")

    def exclude(self, verdict: Verdict, exits: int) -> None:
        self.excluded[verdict.why if verdict.why in self.excluded else "other"] += exits

    def expire(self, present: Iterable[int]) -> None:
        """Forget verdicts of processes that are gone and have nothing left in the kernel's maps
        (``present``: tgids seen there): the set stays as large as the processes that exit."""
        keep = set(present)
        for tgid, verdict in list(self._verdicts.items()):
            if tgid in keep:
                continue
            stat = process_start(self.resolver.procfs, tgid)
            if stat is None or (verdict.start is not None and stat[1] != verdict.start):
                del self._verdicts[tgid]
