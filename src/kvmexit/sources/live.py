"""The live source: BPF programs from ``bpf/kvmexit.bpf.c`` through bcc.

bcc is imported only when a live source is opened, so the rest of the package works on hosts
without it.
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Tuple

from ..errors import BccMissing, HeadersMissing, KvmexitError, NotRoot
from ..layouts import Layout
from ..model import HIST_SLOTS, ExitKey, ExitStats, Health, Snapshot, ThreadInfo
from ..names import NameResolver

__all__ = ["BpfProgram", "render_program", "LiveSource", "import_bcc", "PROGRAM_PREFIX"]

PROGRAM_PREFIX = "kvmexit_"
BPF_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "bpf")
_U64_MAX = (1 << 64) - 1


@dataclass(frozen=True)
class BpfProgram:
    """What is handed to bcc: the C text and the compile-time options."""

    text: str
    cflags: Tuple[str, ...]
    #: (kind, tracepoint, function): kind is "raw" or "tp".
    attach: Tuple[Tuple[str, str, str], ...]


def _read_source(name: str) -> str:
    with open(os.path.join(BPF_DIR, name)) as f:
        return f.read()


def render_program(
    layout: Layout,
    filter_tgids: bool = False,
    filter_tids: bool = False,
    max_threads: int = 16384,
    max_keys: int = 65536,
    synthetic_x86: bool = False,
    wakeup: bool = True,
) -> BpfProgram:
    """The program for a layout and options; pure, so it can be printed (``--ebpf``) and tested."""
    # kvmexit.h is inlined so bcc needs no include path into the installed package.
    text = _read_source("kvmexit.bpf.c").replace('#include "kvmexit.h"', _read_source("kvmexit.h"))
    defines = list(layout.defines)
    if synthetic_x86:
        defines.append("SYNTHETIC_X86")
    if filter_tgids:
        defines.append("FILTER_TGID")
    if filter_tids:
        defines.append("FILTER_TID")
    defines += ["MAX_THREADS=%d" % max_threads, "MAX_KEYS=%d" % max_keys]
    exit_kind = "tp" if "LAYOUT_X86" in layout.defines and not synthetic_x86 else "raw"
    attach = [(exit_kind, "kvm:kvm_exit", "kvmexit_exit"), (exit_kind, "kvm:kvm_entry", "kvmexit_entry")]
    if layout.trap_event:
        attach.append(("raw", "kvm:" + layout.trap_event, "kvmexit_trap"))
    if wakeup:
        attach.append(("raw", "kvm:kvm_vcpu_wakeup", "kvmexit_wakeup"))
    return BpfProgram(text=text, cflags=tuple("-D" + d for d in defines), attach=tuple(attach))


def import_bcc() -> Any:
    """bcc's module, named ``bcc`` upstream and on Debian, ``bpfcc`` on some distributions."""
    for name in ("bcc", "bpfcc"):
        try:
            return __import__(name)
        except ImportError:
            continue
    raise BccMissing(
        "the bcc Python module is not available to %s" % sys.executable,
        hint="apt-get install python3-bpfcc (Debian) or dnf install python3-bcc, and use the system python3",
    )


def check_privileges() -> None:
    if os.geteuid() != 0:
        raise NotRoot(
            "live tracing needs root (CAP_BPF and CAP_PERFMON)",
            hint="run with sudo, or use `kvmexit report` on a trace",
        )


def check_headers(release: Optional[str] = None) -> None:
    release = release or os.uname().release
    build = "/lib/modules/%s/build" % release
    if os.path.exists(os.path.join(build, "include")) or os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return
    raise HeadersMissing(
        "kernel headers for %s not found (bcc compiles against %s)" % (release, build),
        hint="install linux-headers-%s, or modprobe kheaders; or record with `kvmexit record` and report offline"
        % release,
    )


class LiveSource:
    """Attach on :meth:`open`, read cumulative :meth:`snapshot` objects, detach on :meth:`close`."""

    def __init__(
        self,
        layout: Layout,
        tgids: Iterable[int] = (),
        tids: Iterable[int] = (),
        max_threads: int = 16384,
        max_keys: int = 65536,
        resolver: Optional[NameResolver] = None,
        synthetic_x86: bool = False,
        attach: bool = True,
    ) -> None:
        self.layout = layout
        self.tgids = sorted(set(tgids))
        self.tids = sorted(set(tids))
        self.resolver = resolver or NameResolver()
        self.program = render_program(
            layout,
            filter_tgids=bool(self.tgids),
            filter_tids=bool(self.tids),
            max_threads=max_threads,
            max_keys=max_keys,
            synthetic_x86=synthetic_x86,
        )
        self._attach = attach
        self.bpf: Any = None
        #: Open exits of threads that died before their entry, per key; they count as unfinished.
        self._abandoned: Dict[ExitKey, int] = {}
        self._comms: Dict[int, str] = {}

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> LiveSource:
        bcc = import_bcc()
        try:
            self.bpf = bcc.BPF(text=self.program.text, cflags=list(self.program.cflags))
        except Exception as e:  # bcc raises bare Exception on compile errors
            raise KvmexitError(
                "BPF program failed to compile or load: %s" % e, hint="run with --ebpf to see the program"
            ) from e
        try:
            self._fill_filters()
            if self._attach:
                self._attach_all()
        except BaseException:
            self.close()
            raise
        return self

    def _fill_filters(self) -> None:
        one = ctypes.c_uint8(1)
        for name, ids in (("tgid_filter", self.tgids), ("tid_filter", self.tids)):
            if ids:
                table = self.bpf[name]
                for i in ids:
                    table[table.Key(i)] = one

    def _attach_all(self) -> None:
        for kind, tracepoint, fn in self.program.attach:
            if kind == "tp":
                self.bpf.attach_tracepoint(tp=tracepoint, fn_name=fn)
            elif fn == "kvmexit_wakeup" and not self._tracepoint_exists(tracepoint):
                continue  # optional: HALT% is then unknown (0)
            else:
                self.bpf.attach_raw_tracepoint(tp=tracepoint.split(":", 1)[1], fn_name=fn)

    @staticmethod
    def _tracepoint_exists(tracepoint: str) -> bool:
        category, event = tracepoint.split(":", 1)
        return any(
            os.path.isdir(os.path.join(r, "events", category, event))
            for r in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
        )

    def close(self) -> None:
        if self.bpf is not None:
            bpf, self.bpf = self.bpf, None
            bpf.cleanup()

    def __enter__(self) -> LiveSource:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------
    def health(self) -> Health:
        values = [sum(v) for _, v in sorted(self.bpf["counters"].items(), key=lambda kv: kv[0].value)]
        values += [0] * (3 - len(values))
        return Health(
            unpaired_entries=values[0],
            start_map_full=values[1],
            stats_map_full=values[2],
            abandoned=sum(self._abandoned.values()),
        )

    def sweep(self) -> None:
        """Remove the slots of exited threads (as every snapshot does)."""
        self._open_exits()

    def _open_exits(self) -> Dict[ExitKey, int]:
        """Exits still waiting for their entry. Slots of exited threads are removed; an exit
        still open there is counted as abandoned."""
        starts = self.bpf["starts"]
        opened: Dict[ExitKey, int] = {}
        for k, s in starts.items():
            key = ExitKey(s.tgid, k.value, s.code, s.detail)
            if self.resolver.alive(s.tgid, k.value):
                if s.ts:
                    opened[key] = opened.get(key, 0) + 1
                continue
            try:
                del starts[k]
            except KeyError:
                continue
            if s.ts:
                self._abandoned[key] = self._abandoned.get(key, 0) + 1
        return opened

    def snapshot(self) -> Snapshot:
        """Cumulative state. Nothing is cleared, so deltas between snapshots lose nothing.

        Maps cannot be read atomically. Statistics are read before open exits, so an exit that
        completes during the read is never counted twice; it may be missing from this snapshot
        and then shows up in the next one (deltas still add up exactly).
        """
        now = time.monotonic_ns() if hasattr(time, "monotonic_ns") else int(time.monotonic() * 1e9)
        health = self.health()
        leaves = [(ExitKey(k.tgid, k.tid, k.code, k.detail), v) for k, v in self.bpf["stats"].items()]
        opened = self._open_exits()
        stats: Dict[ExitKey, ExitStats] = {}
        threads: Dict[int, ThreadInfo] = {}
        for key, v in leaves:
            stats[key] = _stats_from_leaf(v, opened.get(key, 0), self._abandoned.get(key, 0))
            if key.tid not in threads:
                threads[key.tid] = self.resolver.thread(key.tgid, key.tid, v.comm.decode("utf-8", "replace"))
        for key in set(opened) | set(self._abandoned):
            if key in stats:
                continue
            stats[key] = ExitStats(open=opened.get(key, 0), unfinished=self._abandoned.get(key, 0))
            if key.tid not in threads:
                threads[key.tid] = self.resolver.thread(key.tgid, key.tid)
        return Snapshot(arch=self.layout.arch, stats=stats, health=health, threads=threads, time_ns=now)


def _stats_from_leaf(v: Any, open_exits: int, abandoned: int) -> ExitStats:
    pairs = v.pairs
    return ExitStats(
        pairs=pairs,
        unfinished=v.unfinished + abandoned,
        open=open_exits,
        total_ns=v.total_ns,
        min_ns=v.min_ns if pairs and v.min_ns != _U64_MAX else None,
        max_ns=v.max_ns if pairs else None,
        halt_ns=v.halt_ns,
        hist=tuple(v.hist[:HIST_SLOTS]),
    )
