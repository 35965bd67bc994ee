"""The live source: BPF programs from ``bpf/kvmexit.bpf.c`` through bcc.

bcc is imported only when a live source is opened, so the rest of the package works on hosts
without it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

from ..errors import BccMissing, HeadersMissing, KvmexitError, NotRoot
from ..layouts import TRACEFS_ROOTS, Layout
from ..model import HIST_SLOTS, KERNEL_FIELDS, STAT_FIELDS, ExitKey, ExitStats, Health, Snapshot, ThreadInfo
from ..names import NameResolver

__all__ = ["BpfProgram", "render_program", "LiveSource", "import_bcc", "PROGRAM_PREFIX"]

PROGRAM_PREFIX = "kvmexit_"
BPF_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "bpf")


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
    wakeup_ns_off: Optional[int] = None,
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
    defines += ["KVMEXIT_HIST_SLOTS=%d" % HIST_SLOTS, "KVMEXIT_VALUE_FIELDS=" + value_fields_c()]
    if wakeup and wakeup_ns_off is not None:  # kvmexit_wakeup_tp: the classic-tracepoint fallback
        defines.append("WAKEUP_NS_OFF=%d" % wakeup_ns_off)
    exit_kind = "tp" if "LAYOUT_X86" in layout.defines and not synthetic_x86 else "raw"
    attach = [(exit_kind, "kvm:kvm_exit", "kvmexit_exit"), (exit_kind, "kvm:kvm_entry", "kvmexit_entry")]
    if layout.trap_event:
        attach.append(("raw", "kvm:" + layout.trap_event, "kvmexit_trap"))
    if wakeup:
        attach.append(("raw", "kvm:kvm_vcpu_wakeup", "kvmexit_wakeup"))
    return BpfProgram(text=text, cflags=tuple("-D" + d for d in defines), attach=tuple(attach))


def value_fields_c() -> str:
    """The u64 fields of ``struct kvmexit_value``, generated from :data:`~kvmexit.model.STAT_FIELDS`."""
    return " ".join("u64 %s%s;" % (f.name, "[%d]" % f.words if f.words > 1 else "") for f in KERNEL_FIELDS)


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
        wakeup_ns_off: Optional[int] = None,
    ) -> None:
        self.layout = layout
        self.max_keys = max_keys
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
            wakeup_ns_off=wakeup_ns_off,
        )
        self._attach = attach
        #: How kvm_vcpu_wakeup is attached: "raw", "tracepoint" (fallback) or None (not at all).
        self.wakeup_attach: Optional[str] = None
        #: One-line notes on what this kernel could not do (printed when tracing starts).
        self.notes: List[str] = []
        self.bpf: Any = None
        self._batch: Optional[_BatchReader] = None
        #: False when this kernel has no kvm_vcpu_wakeup to attach to (HALT% is then unknown).
        self.halt_known = True
        self._threads: Dict[int, Tuple[Tuple[int, bytes], ThreadInfo]] = {}
        #: Open exits of threads that died before their entry, per key (abandoned).
        self._abandoned: Dict[ExitKey, int] = {}
        #: New-key notifications the perf buffer dropped (their VMs may then go unnamed).
        self.lost_events = 0

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
            self.bpf["new_keys"].open_perf_buffer(self._on_new_key, page_cnt=16, lost_cb=self._on_lost)
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
            if kind == "raw" and fn == "kvmexit_wakeup":
                self._attach_wakeup(tracepoint, fn)
                continue
            printed: List[str] = []
            try:
                with _c_stderr_to(printed):
                    if kind == "tp":
                        self.bpf.attach_tracepoint(tp=tracepoint, fn_name=fn)
                    else:
                        self.bpf.attach_raw_tracepoint(tp=tracepoint.split(":", 1)[1], fn_name=fn)
            except Exception as e:  # bcc raises bare Exception; libbcc printed the reason
                why = "; ".join(line for line in printed if line.strip()) or str(e)
                raise KvmexitError(
                    "cannot attach %s to %s%s: %s"
                    % (fn, tracepoint, " (raw tracepoint)" if kind == "raw" else "", why),
                    hint="nothing was left attached; check dmesg and that %s exists in events/" % tracepoint,
                ) from None
            for line in printed:  # warnings of an attach that worked are still shown
                print(line, file=sys.stderr)

    def _attach_wakeup(self, tracepoint: str, fn: str) -> None:
        """Raw tracepoint where the kernel allows it on kvm's; else the classic tracepoint (the
        raw one cannot attach to a module's tracepoint before 5.0); else HALT% is unknown."""
        if not self._tracepoint_exists(tracepoint):
            self.halt_known = False
            self.notes.append("halt time unknown: this kernel has no %s" % tracepoint)
            return
        printed: List[str] = []
        try:
            with _c_stderr_to(printed):
                self.bpf.attach_raw_tracepoint(tp=tracepoint.split(":", 1)[1], fn_name=fn)
            self.wakeup_attach = "raw"
            return
        except Exception as e:  # bcc raises bare Exception when the kernel refuses
            raw_error = "; ".join(line for line in printed if line.strip()) or str(e)
        if any(d.startswith("-DWAKEUP_NS_OFF=") for d in self.program.cflags):
            printed = []
            try:
                with _c_stderr_to(printed):
                    self.bpf.attach_tracepoint(tp=tracepoint, fn_name=fn + "_tp")
                self.wakeup_attach = "tracepoint"
                return
            except Exception as e:
                raw_error += "; as a tracepoint: %s" % ("; ".join(line for line in printed if line.strip()) or e)
        self.halt_known = False
        self.notes.append("halt time unknown: cannot attach to %s (%s)" % (tracepoint, raw_error))

    @staticmethod
    def _tracepoint_exists(tracepoint: str) -> bool:
        category, event = tracepoint.split(":", 1)
        return any(os.path.isdir(os.path.join(r, "events", category, event)) for r in TRACEFS_ROOTS)

    def _on_new_key(self, cpu: int, data: Any, size: int) -> None:
        """A thread's first exit of a kind: name its VM now, while the process surely runs
        (a short-lived VMM may be gone by the next snapshot)."""
        key = self.bpf["new_keys"].event(data)
        self.resolver.refresh(key.tgid)
        self._threads.pop(key.tid, None)

    def _on_lost(self, count: int) -> None:
        self.lost_events += count

    def poll(self, timeout_ms: int = 0) -> None:
        """Wait up to ``timeout_ms`` for new-key notifications and handle them."""
        self.bpf.perf_buffer_poll(timeout=timeout_ms)

    def wait(self, seconds: float) -> None:
        """Block for at most ``seconds``, handling notifications as they come."""
        self.poll(max(1, int(seconds * 1000)))

    def close(self) -> None:
        self._batch = None
        if self.bpf is not None:
            bpf, self.bpf = self.bpf, None
            bpf.cleanup()

    def __enter__(self) -> LiveSource:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading ---------------------------------------------------------------------------
    def health(self) -> Health:
        counters = self.bpf["counters"]  # per-CPU: one value per CPU for each index of kvmexit.h
        unpaired, start_full, stats_full = (sum(counters[counters.Key(i)]) for i in range(3))
        return Health(unpaired, start_full, stats_full, sum(self._abandoned.values()))

    def _thread(self, tgid: int, tid: int, comm: bytes) -> ThreadInfo:
        """Names of a thread, resolved once per (tgid, tid, kernel comm)."""
        cached = self._threads.get(tid)
        if cached is not None and cached[0] == (tgid, comm):
            return cached[1]
        info = self.resolver.thread(tgid, tid, comm.split(b"\0", 1)[0].decode("utf-8", "replace"))
        self._threads[tid] = ((tgid, comm), info)
        return info

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

    def _stats_items(self) -> List[Tuple[ExitKey, ExitStats, bytes]]:
        """(key, stats as the kernel keeps them, comm) for every entry of the stats map."""
        table = self.bpf["stats"]
        if self._batch is None:
            self._batch = _BatchReader(table, self.max_keys)
        raw = self._batch.read()
        if raw is None:  # kernel without batch lookups (before 5.6): one syscall per key
            return [
                (ExitKey(k.tgid, k.tid, k.code, k.detail), _stats_from_values(_leaf_values(v)), bytes(v.comm))
                for k, v in table.items()
            ]
        keys, values = raw
        return [
            (ExitKey(*k), _stats_from_values(v), v[-1])
            for k, v in zip(struct.iter_unpack(_KEY_FORMAT, keys), struct.iter_unpack(_VALUE_FORMAT, values))
        ]

    def snapshot(self) -> Snapshot:
        """Cumulative state. Nothing is cleared, so deltas between snapshots lose nothing.

        Maps cannot be read atomically. Statistics are read before open exits, so an exit that
        completes during the read is never counted twice; it may be missing from this snapshot
        and then shows up in the next one (deltas still add up exactly).
        """
        now = time.monotonic_ns() if hasattr(time, "monotonic_ns") else int(time.monotonic() * 1e9)
        self.poll(0)
        items = self._stats_items()
        opened = self._open_exits()
        health = self.health()  # after _open_exits, which finds the abandoned exits
        stats: Dict[ExitKey, ExitStats] = {}
        threads: Dict[int, ThreadInfo] = {}
        comms: Dict[int, bytes] = {}
        for key, st, comm in items:
            comms.setdefault(key.tid, comm)
            more_open, abandoned = opened.get(key, 0), self._abandoned.get(key, 0)
            if more_open or abandoned:
                st = st._replace(open=more_open, abandoned=abandoned)
            stats[key] = st
        for key in set(opened) | set(self._abandoned):
            if key not in stats:
                stats[key] = ExitStats(open=opened.get(key, 0), abandoned=self._abandoned.get(key, 0))
        for key in stats:
            if key.tid not in threads:
                # The kernel always knows the tgid; only trace files may not (ExitKey.tgid None).
                threads[key.tid] = self._thread(key.tgid or 0, key.tid, comms.get(key.tid, b""))
        return Snapshot(self.layout.arch, stats, health, threads, now, self.halt_known)


@contextmanager
def _c_stderr_to(lines: List[str]) -> Iterator[None]:
    """Collect what C code (libbcc) prints to file descriptor 2 meanwhile into ``lines``, so a
    failure becomes one line instead of libbcc's message followed by a traceback."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            lines.extend(tmp.read(4096).decode("utf-8", "replace").splitlines())


#: struct kvmexit_key and struct kvmexit_value (bpf/kvmexit.h), native byte order, no padding.
_KEY_FORMAT = "=4I"
_VALUE_FORMAT = "=%dQ16s" % sum(f.words for f in KERNEL_FIELDS)


class _BatchReader:
    """Reads a whole hash map with BPF_MAP_LOOKUP_BATCH (5.6+) into reused buffers."""

    def __init__(self, table: Any, capacity: int) -> None:
        self.table = table
        # MAX_KEYS as compiled: bcc before 0.2x has no max_entries on hash tables (Debian 11's 0.18)
        self.capacity = capacity
        self.key_size = ctypes.sizeof(table.Key)
        self.value_size = ctypes.sizeof(table.Leaf)
        if (struct.calcsize(_KEY_FORMAT), struct.calcsize(_VALUE_FORMAT)) != (self.key_size, self.value_size):
            raise AssertionError("bpf/kvmexit.h and the struct formats in live.py disagree")
        self.keys = (ctypes.c_char * (self.key_size * self.capacity))()
        self.values = (ctypes.c_char * (self.value_size * self.capacity))()
        self.supported = True

    def read(self) -> Optional[Tuple[memoryview, memoryview]]:
        if not self.supported:
            return None
        lookup_batch = getattr(import_bcc().libbcc.lib, "bpf_lookup_batch", None)
        if lookup_batch is None:  # libbcc older than 0.16
            self.supported = False
            return None
        fd = self.table.map_fd
        in_batch, out_batch = ctypes.c_uint32(0), ctypes.c_uint32(0)
        total = 0
        while total < self.capacity:
            count = ctypes.c_uint32(self.capacity - total)
            res = lookup_batch(
                fd,
                ctypes.byref(in_batch) if total else None,
                ctypes.byref(out_batch),
                ctypes.byref(self.keys, self.key_size * total),
                ctypes.byref(self.values, self.value_size * total),
                ctypes.byref(count),
            )
            err = ctypes.get_errno()
            total += count.value
            if res != 0:
                if err == errno.ENOENT or -res == errno.ENOENT:
                    break  # end of map
                if total == 0:
                    self.supported = False  # EINVAL/ENOTSUPP: no batch operations in this kernel
                    return None
                raise KvmexitError("reading the stats map failed: %s" % os.strerror(err or -res))
            in_batch.value = out_batch.value
        return (
            memoryview(self.keys)[: total * self.key_size],
            memoryview(self.values)[: total * self.value_size],
        )


def _leaf_values(v: Any) -> tuple:
    """A bcc Leaf as the tuple struct.unpack(_VALUE_FORMAT) gives."""
    out: List[Any] = []
    for f in KERNEL_FIELDS:
        value = getattr(v, f.name)
        out.extend(value if f.words > 1 else (value,))
    out.append(bytes(v.comm))
    return tuple(out)


def _decoder_source() -> str:
    """Python source of ``decode(v)``: the kernel's words (``_VALUE_FORMAT``) -> ExitStats.

    Generated once from STAT_FIELDS, positional and without loops: it runs 10^5 times per
    snapshot. min/max fields are None until the first pair; user-space fields take defaults."""
    args = []
    word = 0
    for f in STAT_FIELDS:
        if not f.words:
            args.append(repr(getattr(ExitStats(), f.name)))
        elif f.words > 1:
            args.append("v[%d:%d]" % (word, word + f.words))
        elif f.merge in ("min", "max"):
            args.append("(v[%d] if v[0] else None)" % word)
        else:
            args.append("v[%d]" % word)
        word += f.words
    if KERNEL_FIELDS[0].name != "pairs":
        raise AssertionError("the decoder expects pairs first")
    return "def decode(v):\n    return ExitStats(%s)\n" % ", ".join(args)


def _make_decoder() -> Any:
    scope: Dict[str, Any] = {"ExitStats": ExitStats}
    exec(_decoder_source(), scope)  # generated from STAT_FIELDS: no outside input
    return scope["decode"]


#: (words of struct kvmexit_value..., comm) -> ExitStats.
_stats_from_values = _make_decoder()
