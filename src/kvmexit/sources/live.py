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
from typing import Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple

from ..errors import BccMissing, HeadersMissing, KvmexitError, NotRoot
from ..layouts import TRACEFS_ROOTS, Layout
from ..model import (
    HIST_SLOTS,
    HIST_SUB_BITS,
    KERNEL_FIELDS,
    SPLIT_FIELDS,
    STAT_FIELDS,
    ExitKey,
    ExitStats,
    Health,
    SlowExit,
    Snapshot,
    SubKey,
    ThreadInfo,
    hist_slot,
    merge_all,
)
from ..names import NameResolver
from ..reasons import ROW_KEY_SPACE, ROW_REASONS
from ..reasons.subreasons import bpf_defines as sub_defines
from . import Source
from .vmfilter import Verdict, VmFilter

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
    learn_tgids: bool = False,
    max_threads: int = 16384,
    max_keys: int = 65536,
    synthetic_x86: bool = False,
    wakeup: bool = True,
    wakeup_ns_off: Optional[int] = None,
    test_hooks: bool = False,
    subreasons: bool = False,
    max_sub_keys: int = 65536,
    slow_ns: Optional[int] = None,
    guest: bool = False,
    split: bool = False,
    switch_offsets: Optional[Tuple[int, int, int]] = None,
) -> BpfProgram:
    """The program for a layout and options; pure, so it can be printed (``--ebpf``) and tested.

    ``learn_tgids`` (``--vm``): the tgid filter admits processes it has no verdict for yet, until
    user space judges them (FILTER_LEARN in kvmexit.bpf.c).

    ``slow_ns``: compile in the slow-exit log, for pairs longer than that many ns."""
    # kvmexit.h is inlined so bcc needs no include path into the installed package.
    text = _read_source("kvmexit.bpf.c").replace('#include "kvmexit.h"', _read_source("kvmexit.h"))
    defines = list(layout.defines)
    if synthetic_x86:
        defines.append("SYNTHETIC_X86")
    if filter_tgids or learn_tgids:
        defines.append("FILTER_TGID")
    if learn_tgids:
        defines.append("FILTER_LEARN")
    if filter_tids:
        defines.append("FILTER_TID")
    if test_hooks:
        defines.append("KVMEXIT_TEST_HOOKS")
    if slow_ns is not None:
        defines += ["SLOW_LOG", "SLOW_NS=%dULL" % slow_ns, *layout.slow_defines]
    if guest:  # guest residency (issue 11): opt-in, it costs the default path ~1-3% (README Overhead)
        defines.append("KVMEXIT_GUEST")
    if split:  # where the exit time went (issue 11): opt-in, sched_switch fires host-wide
        defines.append("KVMEXIT_SPLIT")
        if switch_offsets is not None:  # sched_switch's record: prev_pid, prev_state, next_pid
            defines += [
                "SWITCH_PREV_PID_OFF=%d" % switch_offsets[0],
                "SWITCH_PREV_STATE_OFF=%d" % switch_offsets[1],
                "SWITCH_NEXT_PID_OFF=%d" % switch_offsets[2],
            ]
    defines += ["MAX_THREADS=%d" % max_threads, "MAX_KEYS=%d" % max_keys]
    if entry_cache(subreasons, slow_ns, guest, split):
        defines += ["KVMEXIT_ENTRY_CACHE", "MAX_CPUS=%d" % possible_cpus()]
        if resident_rows(layout, learn_tgids):
            defines.append("KVMEXIT_RESIDENT")
    codes, details = ROW_KEY_SPACE[layout.arch]
    defines += [
        "KVMEXIT_HIST_SUB_BITS=%d" % HIST_SUB_BITS,
        "KVMEXIT_HIST_SLOTS=%d" % HIST_SLOTS,
        "KVMEXIT_VALUE_FIELDS=" + value_fields_c(),
        "KVMEXIT_NR_ROWS=%d" % len(ROW_REASONS[layout.arch]),
        "RKEY_CODES=%d" % codes,
        "RKEY_DETAILS=%d" % details,
    ]
    if subreasons:
        defines += ["KVMEXIT_SUB", "MAX_SUB_KEYS=%d" % max_sub_keys, *sub_defines(layout.arch)]
    if wakeup and wakeup_ns_off is not None:  # kvmexit_wakeup_tp: the classic-tracepoint fallback
        defines.append("WAKEUP_NS_OFF=%d" % wakeup_ns_off)
    exit_kind = "tp" if "LAYOUT_X86" in layout.defines and not synthetic_x86 else "raw"
    attach = [(exit_kind, "kvm:kvm_exit", "kvmexit_exit"), (exit_kind, "kvm:kvm_entry", "kvmexit_entry")]
    if layout.trap_event:
        attach.append(("raw", "kvm:" + layout.trap_event, "kvmexit_trap"))
    if wakeup:
        attach.append(("raw", "kvm:kvm_vcpu_wakeup", "kvmexit_wakeup"))
    if learn_tgids:
        attach.append(("raw", "sched:sched_process_exit", "kvmexit_proc_exit"))
    if subreasons:
        attach += [("raw", "kvm:" + event, fn) for event, fn in SUB_PROGRAMS[layout.arch]]
    if slow_ns is not None and layout.arch == "arm64":
        attach += [(_OPTIONAL, tp, fn) for tp, fn in SLOW_ESR_EVENTS]
    if split:
        attach.append(("raw", "kvm:kvm_userspace_exit", "kvmexit_uexit"))
        attach.append(("raw", "sched:sched_switch", "kvmexit_switch"))
    return BpfProgram(text=text, cflags=tuple("-D" + d for d in defines), attach=tuple(attach))


def entry_cache(subreasons: bool, slow_ns: Optional[int], guest: bool, split: bool) -> bool:
    """Whether the program pairs through the entry cache (KVMEXIT_ENTRY_CACHE, kvmexit.bpf.c):
    the default path only; the opt-in paths pair at kvm_entry in the thread's slot."""
    return not (subreasons or slow_ns is not None or guest or split)


def resident_rows(layout: Layout, learn_tgids: bool) -> bool:
    """Whether a thread owning its CPU's rows pairs there without a hash lookup (KVMEXIT_RESIDENT,
    with the entry cache): not where an exit's reason comes later (kvm_trap_enter) or where user
    space removes a refused process's exits from the slots (``--vm``)."""
    return not layout.trap_event and not learn_tgids


def possible_cpus() -> int:
    """CPU ids this kernel can ever use (bpf_get_smp_processor_id() is below it): the exit cache's size."""
    try:
        with open("/sys/devices/system/cpu/possible") as f:
            text = f.read().strip()
        return 1 + max(int(part.split("-")[-1]) for part in text.split(","))
    except (OSError, ValueError):
        return max(os.cpu_count() or 1, 1024)


#: The sub-reason programs (KVMEXIT_SUB) per architecture: (kvm event, function). Each event's
#: TP_PROTO arguments on 4.19, 5.10 and 6.1 are in docs/subreasons.md; a kernel without one of
#: them traces the others (a note says which).
SUB_PROGRAMS: Dict[str, Tuple[Tuple[str, str], ...]] = {
    "arm64": (
        ("kvm_wfx_arm64", "kvmexit_sub_wfx"),
        ("kvm_hvc_arm64", "kvmexit_sub_hvc"),
        ("kvm_handle_sys_reg", "kvmexit_sub_sysreg"),
        ("kvm_guest_fault", "kvmexit_sub_fault"),
        ("kvm_mmio", "kvmexit_sub_mmio"),
        ("kvm_userspace_exit", "kvmexit_sub_user"),
    ),
    "x86": (
        ("kvm_msr", "kvmexit_sub_msr"),
        ("kvm_pio", "kvmexit_sub_pio"),
        ("kvm_cr", "kvmexit_sub_cr"),
        ("kvm_hypercall", "kvmexit_sub_hypercall"),
        ("kvm_cpuid", "kvmexit_sub_cpuid"),
        ("kvm_mmio", "kvmexit_sub_mmio"),
        ("kvm_fast_mmio", "kvmexit_sub_fast_mmio"),
        ("kvm_page_fault", "kvmexit_sub_page_fault"),
        ("kvm_userspace_exit", "kvmexit_sub_user"),
    ),
}


#: Attach kind of a program whose tracepoint may be missing (the feature is then noted, not refused).
_OPTIONAL = "raw-optional"
#: arm64 events that carry the whole ESR of the open exit, for the slow-exit log.
SLOW_ESR_EVENTS = (("kvm:kvm_handle_sys_reg", "kvmexit_esr_sysreg"), ("kvm:kvm_guest_fault", "kvmexit_esr_fault"))
#: Pages per CPU of the slow-exit log's perf buffer (a power of two); more pages, fewer drops.
SLOW_PAGES = 64


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


class LiveSource(Source):
    """Attach on :meth:`open`, read cumulative :meth:`snapshot` objects, detach on :meth:`close`."""

    def __init__(
        self,
        layout: Layout,
        tgids: Iterable[int] = (),
        tids: Iterable[int] = (),
        max_threads: int = 16384,
        max_keys: int = 65536,
        resolver: Optional[NameResolver] = None,
        vms: Iterable[str] = (),
        synthetic_x86: bool = False,
        attach: bool = True,
        wakeup_ns_off: Optional[int] = None,
        subreasons: bool = False,
        max_sub_keys: int = 65536,
        slow_ns: Optional[int] = None,
        on_slow: Optional[Callable[[str, SlowExit], None]] = None,
        slow_pages: int = SLOW_PAGES,
        guest: bool = False,
        split: bool = False,
        switch_offsets: Optional[Tuple[int, int, int]] = None,
    ) -> None:
        """``slow_ns``: also log every exit longer than that (``on_slow`` gets (arch, exit), as
        :meth:`poll` reads them; drops are counted in :attr:`slow_lost`)."""
        self.layout = layout
        #: Sub-reasons are traced (KVMEXIT_SUB): snapshots carry ``subs``.
        self.subreasons = subreasons
        self.max_sub_keys = max_sub_keys
        self.max_keys = max_keys
        self.max_threads = max_threads
        self.tgids = sorted(set(tgids))
        self.tids = sorted(set(tids))
        self.resolver = resolver or NameResolver()
        #: --vm: verdicts on processes as they appear (None: no VM names given).
        self.vm_filter: Optional[VmFilter] = None
        vms = sorted(set(vms))
        if vms:
            self.vm_filter = VmFilter(vms, self.tgids, self.resolver)
        self.program = render_program(
            layout,
            filter_tgids=bool(self.tgids),
            filter_tids=bool(self.tids),
            learn_tgids=bool(vms),
            max_threads=max_threads,
            max_keys=max_keys,
            synthetic_x86=synthetic_x86,
            wakeup_ns_off=wakeup_ns_off,
            subreasons=subreasons,
            max_sub_keys=max_sub_keys,
            slow_ns=slow_ns,
            guest=guest,
            split=split,
            switch_offsets=switch_offsets,
        )
        self.slow_ns = slow_ns
        #: The program pairs through the entry cache (its pending pairs are read with the slots).
        self.entry_cache = entry_cache(subreasons, slow_ns, guest, split)
        #: Threads owning their CPU's rows keep pairs there (KVMEXIT_RESIDENT, read with the slots).
        self.resident = self.entry_cache and resident_rows(layout, bool(vms))
        #: MAX_CPUS as compiled: exit_cache[_cpus + cpu] is a CPU's resident record.
        self._cpus = possible_cpus()
        self._on_slow = on_slow
        self._slow_pages = slow_pages
        #: Slow exits the perf buffer dropped (it was full: user space did not keep up).
        self.slow_lost = 0
        #: Slow exits received.
        self.slow_seen = 0
        #: Seconds to add to a CLOCK_MONOTONIC time to get Unix time (for the log's timestamps).
        self._wall_offset = time.time() - time.monotonic()
        self._attach = attach
        #: Sub-reason events attached (the others are missing from this kernel: see notes).
        self.sub_events: List[str] = []
        #: ExitStats fields this run does not measure (their 0 means unknown).
        self.unknown = set() if split else set(SPLIT_FIELDS)
        if not guest:
            self.unknown.add("guest_ns")
        #: How kvm_vcpu_wakeup is attached: "raw", "tracepoint" (fallback) or None (not at all).
        self.wakeup_attach: Optional[str] = None
        #: One-line notes on what this kernel could not do (printed when tracing starts).
        self.notes: List[str] = []
        self.bpf: Any = None
        self._batch: Dict[str, _BatchReader] = {}
        #: Which (code, detail) each row of a thread's slot holds (reason_rows, set at open).
        self.rows = ROW_REASONS[layout.arch]
        #: Statistics kept in the slots of threads that have exited (slots are freed; nothing lost).
        self._retired: Dict[ExitKey, ExitStats] = {}
        #: Names of those threads as they were when they exited (their ids may be reused).
        self._retired_threads: Dict[Tuple[int, int], ThreadInfo] = {}
        #: False when this kernel has no kvm_vcpu_wakeup to attach to (HALT% is then unknown).
        self.halt_known = True
        self._threads: Dict[int, Tuple[Tuple[int, bytes], ThreadInfo]] = {}
        #: Open exits of threads that died before their entry, per key (abandoned).
        self._abandoned: Dict[ExitKey, int] = {}
        self._abandoned_subs: Dict[SubKey, int] = {}
        #: Their guest time, per sub-reason (the reason's is in _retired): the rows add up.
        self._abandoned_sub_guest: Dict[SubKey, int] = {}
        #: New-key notifications the perf buffer dropped (their VMs may then go unnamed).
        self.lost_events = 0
        self._sub_raw: List[Tuple[bytes, bytes]] = []

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
            self._fill_rows()
            self._fill_filters()
            self.bpf["new_keys"].open_perf_buffer(self._on_new_key, page_cnt=16, lost_cb=self._on_lost)
            if self.slow_ns is not None:
                self.bpf["slow_exits"].open_perf_buffer(
                    self._on_slow_event, page_cnt=self._slow_pages, lost_cb=self._on_slow_lost
                )
            if self._attach:
                self._attach_all()
        except BaseException:
            self.close()
            raise
        return self

    def _fill_rows(self) -> None:
        table = self.bpf["reason_rows"]
        details = ROW_KEY_SPACE[self.layout.arch][1]
        for i, (code, detail) in enumerate(self.rows):
            table[table.Key(code * details + detail)] = ctypes.c_uint32(i + 1)

    def _fill_filters(self) -> None:
        one = ctypes.c_uint8(1)
        for name, ids in (("tgid_filter", self.tgids), ("tid_filter", self.tids)):
            if ids:
                table = self.bpf[name]
                for i in ids:
                    table[table.Key(i)] = one
        vf = self.vm_filter
        if vf is not None:
            running = self.resolver.tgids_of_vm(vf.names)
            for tgid in sorted(running):
                self._admit(tgid)
            missing = sorted(vf.names - set(running.values()))
            if missing:
                self.notes.append(
                    "no VM named %s runs yet: traced from its first exit when it starts" % ", ".join(missing)
                )

    def _admit(self, tgid: int) -> Verdict:
        """--vm: the verdict on process ``tgid``, given to the kernel when it is new."""
        vf = self.vm_filter
        assert vf is not None
        verdict, fresh = vf.judge(tgid)
        if fresh:
            table = self.bpf["tgid_filter"]
            try:
                table[table.Key(tgid)] = ctypes.c_uint8(_TGID_ALLOW if verdict.allowed else _TGID_DENY)
            except Exception:  # the filter map is full: its exits are still removed here
                pass
        return verdict

    def _attach_all(self) -> None:
        for kind, tracepoint, fn in self.program.attach:
            if kind == "raw" and fn == "kvmexit_wakeup":
                self._attach_wakeup(tracepoint, fn)
                continue
            if fn.startswith("kvmexit_sub_"):
                self._attach_sub(tracepoint, fn)
                continue
            if kind == _OPTIONAL:
                self._attach_optional(tracepoint, fn)
                continue
            if fn in _SPLIT_PARTS:
                self._attach_split(tracepoint, fn)
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

    def _attach_sub(self, tracepoint: str, fn: str) -> None:
        """A sub-reason event: where this kernel lacks it or refuses a raw tracepoint on it
        (before 5.0 on a module's tracepoint), the others still work; one note says which."""
        if not self._tracepoint_exists(tracepoint):
            self.notes.append("sub-reasons: this kernel has no %s (those exits show -)" % tracepoint)
            return
        printed: List[str] = []
        try:
            with _c_stderr_to(printed):
                self.bpf.attach_raw_tracepoint(tp=tracepoint.split(":", 1)[1], fn_name=fn)
        except Exception as e:  # bcc raises bare Exception when the kernel refuses
            why = "; ".join(line for line in printed if line.strip()) or str(e)
            self.notes.append("sub-reasons: cannot attach to %s (%s; those exits show -)" % (tracepoint, why))
            return
        self.sub_events.append(tracepoint)

    def _attach_optional(self, tracepoint: str, fn: str) -> None:
        """A raw tracepoint that adds detail (the slow-exit log's ESR): without it, a note."""
        printed: List[str] = []
        try:
            if not self._tracepoint_exists(tracepoint):
                raise KvmexitError("this kernel has no %s" % tracepoint)
            with _c_stderr_to(printed):
                self.bpf.attach_raw_tracepoint(tp=tracepoint.split(":", 1)[1], fn_name=fn)
        except Exception as e:  # bcc raises bare Exception when the kernel refuses
            why = "; ".join(line for line in printed if line.strip()) or str(e)
            self.notes.append("slow-exit log: no ESR ISS from %s (%s)" % (tracepoint, why))

    def _attach_split(self, tracepoint: str, fn: str) -> None:
        """The split's events: the raw tracepoint, else the classic one (a module's tracepoint
        before 5.0; sched_switch's raw prototype before 5.18 lacks prev_state), else the parts
        that need it are unknown (a note says why), never 0."""
        why = "this kernel has no %s" % tracepoint
        if self._tracepoint_exists(tracepoint):
            printed: List[str] = []
            try:
                with _c_stderr_to(printed):
                    self.bpf.attach_raw_tracepoint(tp=tracepoint.split(":", 1)[1], fn_name=fn)
                return
            except Exception as e:  # bcc raises bare Exception when the kernel refuses
                why = "; ".join(line for line in printed if line.strip()) or str(e)
            if fn != "kvmexit_switch" or any(d.startswith("-DSWITCH_PREV_STATE_OFF=") for d in self.program.cflags):
                printed = []
                try:
                    with _c_stderr_to(printed):
                        self.bpf.attach_tracepoint(tp=tracepoint, fn_name=fn + "_tp")
                    return
                except Exception as e:
                    why += "; as a tracepoint: %s" % ("; ".join(line for line in printed if line.strip()) or e)
        lost = _SPLIT_PARTS[fn]
        self.unknown.update(lost)
        self.notes.append("%s unknown: cannot attach to %s (%s)" % (" and ".join(lost), tracepoint, why))

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
        if self.vm_filter is not None:
            self._admit(key.tgid)

    def _on_lost(self, count: int) -> None:
        self.lost_events += count

    def _on_slow_event(self, cpu: int, data: Any, size: int) -> None:
        e = self.bpf["slow_exits"].event(data)
        self.slow_seen += 1
        if self._on_slow is None:
            return
        x86 = self.layout.arch != "arm64"
        unknown = self.unknown
        self._on_slow(
            self.layout.arch,
            SlowExit(
                time_ns=e.ts,
                tgid=e.tgid,
                tid=e.tid,
                code=e.code,
                detail=e.detail,
                duration_ns=e.duration_ns,
                halt_ns=e.halt_ns if self.halt_known else None,
                pc=e.pc if (not x86 or any(d.startswith("X86_RIP_OFF") for d in self.layout.slow_defines)) else None,
                esr=e.esr if (e.esr_known or not x86) else None,
                esr_whole=bool(e.esr_known),
                sub=e.sub,
                thread=self._thread(e.tgid, e.tid, bytes(e.comm)),
                wall=self._wall_offset + e.ts / 1e9,
                # --split: the pair's parts (their 0 without it, or without their event, is unknown)
                vmm_ns=None if "vmm_ns" in unknown else e.vmm_ns,
                preempt_ns=None if "preempt_ns" in unknown else e.preempt_ns,
                blocked_ns=None if "blocked_ns" in unknown else e.blocked_ns,
            ),
        )

    def _on_slow_lost(self, count: int) -> None:
        self.slow_lost += count

    def poll(self, timeout_ms: int = 0) -> None:
        """Wait up to ``timeout_ms`` for new-key notifications and handle them."""
        self.bpf.perf_buffer_poll(timeout=timeout_ms)

    def wait(self, seconds: float) -> None:
        """Block for at most ``seconds``, handling notifications as they come."""
        self.poll(max(1, int(seconds * 1000)))

    def close(self) -> None:
        self._batch = {}
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
        unpaired, start_full, stats_full, sub_full = (sum(counters[counters.Key(i)]) for i in range(4))
        return Health(unpaired, start_full, stats_full, sum(self._abandoned.values()), sub_full)

    def _thread(self, tgid: int, tid: int, comm: bytes) -> ThreadInfo:
        """Names of a thread, resolved once per (tgid, tid, kernel comm); ``comm`` as the kernel
        keeps it (NUL-padded) or as a perf event's field gives it (cut at the NUL)."""
        comm = comm.split(b"\0", 1)[0]
        cached = self._threads.get(tid)
        if cached is not None and cached[0] == (tgid, comm):
            return cached[1]
        info = self.resolver.thread(tgid, tid, comm.decode("utf-8", "replace"))
        self._threads[tid] = ((tgid, comm), info)
        return info

    def sweep(self) -> None:
        """Free the slots of exited threads (as every snapshot does)."""
        self._thread_slots()

    def _read(self, name: str, value_size: int) -> List[Tuple[bytes, bytes]]:
        """(key bytes, value bytes) of every entry of a hash map: batch syscalls where the
        kernel has them (5.6+), else one per key."""
        table = self.bpf[name]
        reader = self._batch.get(name)
        if reader is None:
            capacity = {"threads": self.max_threads, "sub_stats": self.max_sub_keys}.get(name, self.max_keys)
            reader = self._batch[name] = _BatchReader(table, capacity, value_size)
        raw = reader.read()
        if raw is None:
            return [(_bytes_of(k), _bytes_of(v)) for k, v in table.items()]
        return raw

    def _thread_slots(
        self,
    ) -> Tuple[Dict[ExitKey, ExitStats], Dict[ExitKey, int], Dict[int, bytes], Dict[SubKey, int]]:
        """Statistics kept in threads' slots, open exits (also per sub-reason), and comms (of the
        threads that run). Slots of exited threads are removed; their statistics are kept here
        (retired), with their names as they were, and an exit still open there counts as abandoned."""
        threads = self.bpf["threads"]
        stats: Dict[ExitKey, ExitStats] = {}
        opened: Dict[ExitKey, int] = {}
        opened_subs: Dict[SubKey, int] = {}
        comms: Dict[int, bytes] = {}
        judged: Dict[int, Verdict] = {}  # once per process per read: a judgement reads /proc
        rows = self.rows
        slot_size = _ROWS_SIZE * len(rows) + _THREAD_TAIL.size + (_SLOW_TAIL_SIZE if self.slow_ns is not None else 0)
        # In the kernel's order of writes, so that a pair is counted once or not yet: a resident
        # pair is folded into its CPU's rows after its record is no longer closed, a record's pair
        # into the slot's row after the slot no longer shows it open.
        owned = self._owned_rows()
        cache = self._exit_cache()
        for kb, vb in self._read("threads", slot_size):
            (tid,) = _TID.unpack(kb)
            tail = _THREAD_TAIL.unpack_from(vb, _ROWS_SIZE * len(rows))
            alive = self.resolver.alive(tail[5], tid)  # tail[5]: the tgid
            ident = tail[5] << 32 | tid  # its pid_tgid
            if not alive:
                # Read it again: the thread may have made its last exits after the batch read and
                # before it ended (seen in a test under load: 31 exits lost with the first read).
                # Gone now, it writes its slot, CPU record and rows no more.
                again = self._slot_bytes(threads, tid)
                if again is None:
                    continue  # deleted meanwhile (another read of the maps retired it)
                owned.update(self._owned_rows(ident))
                cache, vb = self._exit_cache(), again
                tail = _THREAD_TAIL.unpack_from(vb, _ROWS_SIZE * len(rows))
            comm, ts, halt, sub, _addr, tgid, code, detail = tail[:8]
            guest = tail[14]  # guest_ns of the open exit
            pending = None  # the open exit's entry, seen by the kernel but not in a row yet
            if tail[11]:  # resident: the open exit is in its CPU's resident record, if still the slot's
                ts = 0
                record = self._resident_record(cache, tail[10], ident)
                if record and record.gen == tail[12]:
                    code, detail = record.code, record.detail
                    if record.state == _CPU_CLOSED:
                        pending = _one_pair(record.entry_ts - record.exit_ts, record.halt_ns)
                    elif record.state == _CPU_OPEN:
                        ts = record.exit_ts
            elif ts and self.entry_cache:
                record = cache.get(tail[10])
                if record and record.id == ident and record.state == _CPU_CLOSED and record.entry_ts >= ts:
                    pending = _one_pair(record.entry_ts - ts, halt)
                elif tail[15] >= ts:  # mail_ts
                    pending = _one_pair(tail[15] - ts, halt)
            if self.vm_filter is not None:
                verdict = judged.get(tgid) or judged.setdefault(tgid, self._admit(tgid))
                if not verdict.allowed:  # traced before its verdict: removed, and counted
                    exits = sum(sum(_PAIRS_UNFINISHED.unpack_from(vb, i * _ROWS_SIZE)) for i in range(len(rows)))
                    self._remove("threads", threads.Key(tid), verdict, exits + (1 if ts else 0))
                    continue
            sub_key = SubKey(tgid, tid, code, detail, sub) if ts and sub and self.subreasons else None
            mine = stats if alive else {}
            own_cpus = owned.pop(ident, [])
            self._add_rows(mine, tgid, tid, [vb] + [block for _cpu, block in own_cpus])
            key = ExitKey(tgid, tid, code, detail)
            if pending is not None:  # a pair: its row's (or, for a keyed reason, merged with the keyed map's)
                mine[key] = pending if key not in mine else merge_all((mine[key], pending))
                ts = 0
            if alive:
                comms[tid] = comm
                if ts:
                    opened[key] = opened.get(key, 0) + 1
                if sub_key is not None:
                    opened_subs[sub_key] = opened_subs.get(sub_key, 0) + 1
                continue
            try:
                del threads[threads.Key(tid)]
            except KeyError:
                pass  # gone already: what was read is its last state
            self._retired_threads[tgid, tid] = self._thread(tgid, tid, comm)  # named while known
            self._threads.pop(tid, None)
            self._retire(mine)
            self._release_rows(ident, [cpu for cpu, _block in own_cpus])
            if ts:
                self._abandoned[key] = self._abandoned.get(key, 0) + 1
                if guest:  # the abandoned exit's guest time, as a closed exit's (pairing.py alike)
                    old = self._retired.get(key, ExitStats())
                    self._retired[key] = old._replace(guest_ns=old.guest_ns + guest)
            if sub_key is not None:
                self._abandoned_subs[sub_key] = self._abandoned_subs.get(sub_key, 0) + 1
                if guest:
                    self._abandoned_sub_guest[sub_key] = self._abandoned_sub_guest.get(sub_key, 0) + guest
        for ident, own_cpus in owned.items():  # rows of an owner whose slot was not read
            tgid, tid = ident >> 32, ident & 0xFFFFFFFF
            alive = self.resolver.alive(tgid, tid)
            if not alive:  # gone: its rows and records, read again, are final
                own_cpus = self._owned_rows(ident).get(ident, own_cpus)
                cache = self._exit_cache()
            mine = stats if alive else {}
            self._add_rows(mine, tgid, tid, [block for _cpu, block in own_cpus])
            for cpu, _block in own_cpus:  # its last pair or open exit, in a CPU's resident record
                record = self._resident_record(cache, cpu, ident)
                if record is None:
                    continue
                key = ExitKey(tgid, tid, record.code, record.detail)
                if record.state == _CPU_CLOSED:
                    pair = _one_pair(record.entry_ts - record.exit_ts, record.halt_ns)
                    mine[key] = pair if key not in mine else merge_all((mine[key], pair))
                elif record.state == _CPU_OPEN:
                    counts = opened if alive else self._abandoned
                    counts[key] = counts.get(key, 0) + 1
            if not alive:
                self._retire(mine)
                self._release_rows(ident, [cpu for cpu, _block in own_cpus])
        return stats, opened, comms, opened_subs

    def _add_rows(self, stats: Dict[ExitKey, ExitStats], tgid: int, tid: int, blocks: List[bytes]) -> None:
        """Add one thread's rows (blocks of len(self.rows) values: its slot's, its CPUs') to stats."""
        for block in blocks:
            for i, (rcode, rdetail) in enumerate(self.rows):
                v = _VALUE.unpack_from(block, i * _ROWS_SIZE)
                if v[0] or v[1]:  # pairs or unfinished
                    key = ExitKey(tgid, tid, rcode, rdetail)
                    st = _stats_from_values(v)
                    stats[key] = st if key not in stats else merge_all((stats[key], st))

    def _retire(self, stats: Dict[ExitKey, ExitStats]) -> None:
        """Keep an ended thread's statistics (its slot and rows are freed)."""
        for k, st in stats.items():
            old = self._retired.get(k)
            self._retired[k] = st if old is None else merge_all((old, st))

    def _resident_record(self, cache: Dict[int, _CpuRecord], cpu: int, ident: int) -> Optional[_CpuRecord]:
        """CPU ``cpu``'s resident record (from :meth:`_exit_cache`) if it is thread ``ident``'s and
        was not killed since it was written (the exit taken back into the slot, or migrated)."""
        record = cache.get(self._cpus + cpu)
        return record if record and record.id == ident and record.gen == record.kills else None

    def _owned_rows(self, only: Optional[int] = None) -> Dict[int, List[Tuple[int, bytes]]]:
        """KVMEXIT_RESIDENT: pid_tgid -> [(cpu, the rows of that CPU it owns)], of every owner
        or only of ``only``."""
        if not self.resident:
            return {}
        owners, table = self.bpf["cpu_owner"], self.bpf["cpu_rows"]
        nr = len(self.rows)
        out: Dict[int, List[Tuple[int, bytes]]] = {}
        for k, v in owners.items():
            if v.value and (only is None or v.value == only):
                cpu = k.value
                block = b"".join(_bytes_of(table[table.Key(cpu * nr + i)]) for i in range(nr))
                out.setdefault(v.value, []).append((cpu, block))
        return out

    def _release_rows(self, ident: int, cpus: List[int]) -> None:
        """Free the rows of CPUs an ended thread owned (read and retired): zeroed, then unowned,
        so the next thread to exit there may own them."""
        if not cpus:
            return
        owners, table = self.bpf["cpu_owner"], self.bpf["cpu_rows"]
        nr = len(self.rows)
        zero = table.Leaf()
        for cpu in cpus:
            if owners[owners.Key(cpu)].value != ident:
                continue
            for i in range(nr):
                table[table.Key(cpu * nr + i)] = zero
            owners[owners.Key(cpu)] = owners.Leaf(0)

    @staticmethod
    def _slot_bytes(threads: Any, tid: int) -> Optional[bytes]:
        """One thread's slot as it is now, or None when it is not in the map."""
        try:
            return _bytes_of(threads[threads.Key(tid)])
        except KeyError:
            return None

    def _exit_cache(self) -> Dict[int, _CpuRecord]:
        """exit_cache (KVMEXIT_ENTRY_CACHE): index (a CPU; MAX_CPUS + a CPU for a resident
        record) -> the record, if it holds an exit."""
        if not self.entry_cache:
            return {}
        out = {}
        for k, v in self.bpf["exit_cache"].items():
            if v.state:
                out[k.value] = _CpuRecord(*_CPU_RECORD.unpack(_bytes_of(v)))
        return out

    def _keyed_items(self) -> List[Tuple[ExitKey, ExitStats]]:
        """(key, stats) of the keyed map: reasons without a row in the threads' slots."""
        items = [
            (ExitKey(*_KEY.unpack(kb)), _stats_from_values(_VALUE.unpack(vb)))
            for kb, vb in self._read("stats", _VALUE.size)
        ]
        if self.vm_filter is None:
            return items
        kept = []
        stats = self.bpf["stats"]
        judged: Dict[int, Verdict] = {}  # once per process per read: a judgement reads /proc
        for key, st in items:
            tgid = key.tgid or 0
            verdict = judged.get(tgid) or judged.setdefault(tgid, self._admit(tgid))
            if verdict.allowed:
                kept.append((key, st))
            else:
                self._remove("stats", stats.Key(*key), verdict, st.pairs + st.unfinished)
        return kept

    def _remove(self, name: str, key: Any, verdict: Verdict, exits: int) -> None:
        """Remove what a process the filter refused put in a map before its verdict."""
        assert self.vm_filter is not None
        try:
            del self.bpf[name][key]
        except KeyError:
            pass  # gone already
        self.vm_filter.exclude(verdict, exits)

    def _sub_items(self, opened: Dict[SubKey, int]) -> Dict[SubKey, ExitStats]:
        """The sub-reason map (read before the slots, like the keyed map), with open and abandoned
        exits that have a sub-reason."""
        subs = {SubKey(*_SUB_KEY.unpack(kb)): _stats_from_values(_VALUE.unpack(vb)) for kb, vb in self._sub_raw}
        if self.vm_filter is not None:  # a refused process's exits are removed (and counted) with its rows
            table = self.bpf["sub_stats"]
            for key in [k for k in subs if not self._admit(k.tgid or 0).allowed]:
                del subs[key]
                try:
                    del table[table.Key(key.tgid, key.tid, key.code, key.detail, key.sub)]
                except KeyError:
                    pass
        for key in set(opened) | set(self._abandoned_subs):
            st = subs.get(key, ExitStats())
            subs[key] = st._replace(
                open=opened.get(key, 0),
                abandoned=self._abandoned_subs.get(key, 0),
                guest_ns=st.guest_ns + self._abandoned_sub_guest.get(key, 0),
            )
        return subs

    def snapshot(self) -> Snapshot:
        """Cumulative state. Nothing is cleared, so deltas between snapshots lose nothing.

        Maps cannot be read atomically. Statistics are read before open exits, so an exit that
        completes during the read is never counted twice; it may be missing from this snapshot
        and then shows up in the next one (deltas still add up exactly).
        """
        now = time.monotonic_ns() if hasattr(time, "monotonic_ns") else int(time.monotonic() * 1e9)
        self.poll(0)
        # Sub-reasons first: a pair is added to its row before its sub-reason record, so these
        # never exceed the rows read after them (the rest of a row is never negative).
        self._sub_raw = self._read("sub_stats", _VALUE.size) if self.subreasons else []
        keyed = self._keyed_items()
        in_slots, opened, comms, opened_subs = self._thread_slots()
        health = self.health()  # after _thread_slots, which finds the abandoned exits
        stats: Dict[ExitKey, ExitStats] = dict(in_slots)
        for key, st in keyed:
            stats[key] = st if key not in stats else merge_all((stats[key], st))
        for key, st in self._retired.items():
            stats[key] = st if key not in stats else merge_all((stats[key], st))
        for key in set(opened) | set(self._abandoned):
            st = stats.get(key, ExitStats())
            stats[key] = st._replace(open=opened.get(key, 0), abandoned=self._abandoned.get(key, 0))
        if self.vm_filter is not None:
            in_kernel = [k for k, _ in keyed] + list(in_slots) + list(opened)  # not the retired totals
            self.vm_filter.expire({k.tgid or 0 for k in in_kernel})
        threads: Dict[int, ThreadInfo] = {}
        retired = self._retired_threads
        for key in stats:
            # The kernel always knows the tgid; only trace files may not (ExitKey.tgid None).
            if key.tid not in threads and (key.tgid or 0, key.tid) not in retired:
                threads[key.tid] = self._thread(key.tgid or 0, key.tid, comms.get(key.tid, b""))
        # Name caches hold what runs, no more (days of churn; a reused pid is read afresh).
        self._threads = {tid: v for tid, v in self._threads.items() if tid in comms}
        self.resolver.prune({ident[0] for ident, _info in self._threads.values()}, comms)
        subs = self._sub_items(opened_subs) if self.subreasons else {}
        return Snapshot(
            self.layout.arch,
            stats,
            health,
            threads,
            now,
            self.halt_known,
            dict(retired),
            subs=subs,
            subs_known=self.subreasons,
            unknown=frozenset(self.unknown),
        )


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


#: struct kvmexit_key, struct kvmexit_value and struct kvmexit_thread (bpf/kvmexit.h), native
#: byte order, no padding; the value's words come from model.KERNEL_FIELDS.
_KEY = struct.Struct("=4I")
_TID = struct.Struct("=I")
_VALUE_FORMAT = "=%dQ" % sum(f.words for f in KERNEL_FIELDS)
_VALUE = struct.Struct(_VALUE_FORMAT)
_ROWS_SIZE = _VALUE.size
#: After the rows: comm, ts, halt_ns, sub, sub_addr, tgid, code, detail, row, sub_seen, cpu,
#: resident, gen, entry_ts, guest_ns, mail_ts, and struct kvmexit_split (12 u64, 2 u32).
_THREAD_TAIL = struct.Struct("=16s4Q8I3Q12Q2I")
#: struct kvmexit_cpu (bpf/kvmexit.h), and the states of a record: open, and closed (its entry came).
_CPU_RECORD = struct.Struct("=4Q6I")
_CPU_OPEN, _CPU_CLOSED = 1, 2


class _CpuRecord(NamedTuple):
    id: int
    exit_ts: int
    entry_ts: int
    halt_ns: int
    state: int
    gen: int
    kills: int
    row: int
    code: int
    detail: int


#: Word index of each field of struct kvmexit_value.
_WORD = {}
for _f in KERNEL_FIELDS:
    _WORD[_f.name] = sum(g.words for g in KERNEL_FIELDS[: KERNEL_FIELDS.index(_f)])


def _one_pair(delta: int, halt_ns: int) -> ExitStats:
    """The statistics of one pair, as the kernel's add_pair would record it (a pending pair of the
    entry cache, folded by user space)."""
    words = [0] * sum(f.words for f in KERNEL_FIELDS)
    for name, value in (("pairs", 1), ("total_ns", delta), ("min_ns", delta), ("max_ns", delta), ("halt_ns", halt_ns)):
        words[_WORD[name]] = value
    square = delta * delta
    words[_WORD["sumsq"]] = square & 0xFFFFFFFFFFFFFFFF
    words[_WORD["sumsq"] + 1] = square >> 64
    words[_WORD["hist"] + hist_slot(delta)] = 1
    return _stats_from_values(tuple(words))  # type: ignore[no-any-return]


#: struct kvmexit_sub_key: tgid, tid, code, detail, sub.
_SUB_KEY = struct.Struct("=4IQ")
#: The first two words of a row: pairs and unfinished (model.STAT_FIELDS' order).
_PAIRS_UNFINISHED = struct.Struct("=2Q")
#: Verdicts of tgid_filter (bpf/kvmexit.h).
_TGID_ALLOW, _TGID_DENY = 1, 2
#: With the slow-exit log, the slot ends with pc, esr, esr_known, pad2 (not decoded here).
_SLOW_TAIL_SIZE = struct.calcsize("=2Q2I")
#: The split's programs, and the parts each one's event is needed for.
_SPLIT_PARTS = {"kvmexit_uexit": ("vmm_ns",), "kvmexit_switch": ("preempt_ns", "blocked_ns")}


def _bytes_of(c: Any) -> bytes:
    """The bytes of a bcc key or leaf (a ctypes object)."""
    return ctypes.string_at(ctypes.addressof(c), ctypes.sizeof(c))


class _BatchReader:
    """Reads a whole hash map with BPF_MAP_LOOKUP_BATCH (5.6+), in chunks of reused buffers
    (a few MB at most: a thread's slot is kilobytes)."""

    def __init__(self, table: Any, capacity: int, value_size: int) -> None:
        self.table = table
        # MAX_KEYS as compiled: bcc before 0.2x has no max_entries on hash tables (Debian 11's 0.18)
        self.capacity = capacity
        self.key_size = ctypes.sizeof(table.Key)
        self.value_size = ctypes.sizeof(table.Leaf)
        if value_size != self.value_size:
            raise AssertionError("bpf/kvmexit.h and the struct formats in live.py disagree")
        self.chunk = min(self.capacity, max(256, (4 << 20) // self.value_size))
        self.keys = (ctypes.c_char * (self.key_size * self.chunk))()
        self.values = (ctypes.c_char * (self.value_size * self.chunk))()
        self.supported = True

    def read(self) -> Optional[List[Tuple[bytes, bytes]]]:
        if not self.supported:
            return None
        lookup_batch = getattr(import_bcc().libbcc.lib, "bpf_lookup_batch", None)
        if lookup_batch is None:  # libbcc older than 0.16
            self.supported = False
            return None
        fd = self.table.map_fd
        in_batch, out_batch = ctypes.c_uint32(0), ctypes.c_uint32(0)
        out: List[Tuple[bytes, bytes]] = []
        ks, vs = self.key_size, self.value_size
        first = True
        while True:
            count = ctypes.c_uint32(self.chunk)
            res = lookup_batch(
                fd,
                None if first else ctypes.byref(in_batch),
                ctypes.byref(out_batch),
                ctypes.byref(self.keys),
                ctypes.byref(self.values),
                ctypes.byref(count),
            )
            err = ctypes.get_errno()
            keys = ctypes.string_at(self.keys, count.value * ks)
            values = ctypes.string_at(self.values, count.value * vs)
            out.extend((keys[i * ks : (i + 1) * ks], values[i * vs : (i + 1) * vs]) for i in range(count.value))
            if res != 0:
                if err == errno.ENOENT or -res == errno.ENOENT:
                    break  # end of map
                if first and not out:
                    self.supported = False  # EINVAL/ENOTSUPP: no batch operations in this kernel
                    return None
                raise KvmexitError("reading a BPF map failed: %s" % os.strerror(err or -res))
            first = False
            in_batch.value = out_batch.value
        return out


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
    if [f.name for f in KERNEL_FIELDS[:2]] != ["pairs", "unfinished"]:
        raise AssertionError("the decoder and _PAIRS_UNFINISHED expect pairs and unfinished first")
    return "def decode(v):\n    return ExitStats(%s)\n" % ", ".join(args)


def _make_decoder() -> Any:
    scope: Dict[str, Any] = {"ExitStats": ExitStats}
    exec(_decoder_source(), scope)  # generated from STAT_FIELDS: no outside input
    return scope["decode"]


#: (words of struct kvmexit_value...) -> ExitStats.
_stats_from_values = _make_decoder()
