"""Parsers for the raw material the arm64 guest scenarios bring back.

Used by test_arm64_kvm.py (host side) and save_reference.py.  Python 3.7.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from collections import Counter, defaultdict
from typing import Dict, List, Optional, Tuple

# kvm_exit's `ret` symbols as printed by the 6.1 tracepoint -> kvmexit labels.
_TYPE_LABELS = {"IRQ": "IRQ", "SERROR": "EL1_SERROR", "ILLEGAL": "IL", "IL": "IL", "HYP_GONE": "HYP_GONE"}

_LINE = re.compile(
    r"^\s*(?P<comm>.*?)-(?P<tid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(?P<cpu>\d+)\]\s+\S+\s+"
    r"(?P<ts>[\d.]+):\s+(?P<event>kvm_exit|kvm_entry|kvm_vcpu_wakeup):\s*(?P<body>.*)$"
)
_WAKEUP = re.compile(r"^(?:wait|poll) time (?P<ns>\d+) ns")
_EXIT = re.compile(r"^(?P<type>[A-Za-z_0-9]+): HSR_EC: 0x(?P<ec>[0-9a-f]+) \((?P<ecname>[^)]*)\)")
# x86 (5.10: "reason hlt rip 0x..."; 6.1: "vcpu 0 reason hlt rip 0x..."): SVM names as kvmexit's.
_X86_EXIT = re.compile(r"^(?:vcpu \d+ )?reason (?P<reason>.+?) rip 0x")
# SVM's npf: info2 (EXITINFO2) is the faulting guest-physical address.
_X86_NPF_GPA = re.compile(r"reason npf rip 0x[0-9a-f]+ info1 0x[0-9a-f]+ info2 0x(?P<gpa>[0-9a-f]+)")
#: e2evmm_x86.c: the MMIO stores' address (no memslot), and vCPU i's code page.
X86_MMIO_GPA = 0xE0000


def x86_code_gpa(vcpu: int) -> int:
    return 0x10000 * (vcpu + 1)


def exit_label(body: str) -> str:
    """kvmexit's reason label for one kvm_exit line body (arm64 5.10/6.1 or x86 SVM format)."""
    m = _EXIT.match(body)
    if not m:
        x = _X86_EXIT.match(body)
        if x:
            return x.group("reason")
        raise ValueError("unparsed kvm_exit body: %r" % body)
    if m.group("type") == "TRAP":
        return m.group("ecname")
    return _TYPE_LABELS.get(m.group("type"), m.group("type"))


class Ftrace:
    """Per-thread counts from the text of a tracefs `trace` file."""

    def __init__(self, text: str) -> None:
        self.exits: Dict[int, Counter] = defaultdict(Counter)
        self.pairs: Dict[int, Counter] = defaultdict(Counter)
        #: tid -> reason -> ns halted (kvm_vcpu_wakeup) inside exits that got their entry.
        self.halt_ns: Dict[int, Counter] = defaultdict(Counter)
        self.entries: Counter = Counter()
        #: x86: tid -> guest-physical address -> npf exits there.
        self.npf_gpa: Dict[int, Counter] = defaultdict(Counter)
        self.comms: Dict[int, str] = {}
        self.lines = 0
        self.entries_written: Optional[Tuple[int, int]] = None
        open_exit: Dict[int, str] = {}
        open_halt: Counter = Counter()
        for line in text.splitlines():
            if line.startswith("#"):
                m = re.search(r"entries-in-buffer/entries-written: (\d+)/(\d+)", line)
                if m:
                    self.entries_written = (int(m.group(1)), int(m.group(2)))
                continue
            m = _LINE.match(line)
            if not m:
                continue
            self.lines += 1
            tid = int(m.group("tid"))
            self.comms[tid] = m.group("comm").strip()
            event = m.group("event")
            if event == "kvm_exit":
                label = exit_label(m.group("body"))
                self.exits[tid][label] += 1
                if label == "npf":
                    g = _X86_NPF_GPA.search(m.group("body"))
                    if not g:
                        raise ValueError("npf exit without its address: %r" % m.group("body"))
                    self.npf_gpa[tid][int(g.group("gpa"), 16)] += 1
                open_exit[tid] = label
                open_halt[tid] = 0
            elif event == "kvm_vcpu_wakeup":
                w = _WAKEUP.match(m.group("body"))
                if not w:
                    raise ValueError("unparsed kvm_vcpu_wakeup body: %r" % m.group("body"))
                if tid in open_exit:  # kvmexit's rule: halt time counts inside an open exit
                    open_halt[tid] += int(w.group("ns"))
            elif event == "kvm_entry":
                self.entries[tid] += 1
                label = open_exit.pop(tid, None)
                if label is not None:
                    self.pairs[tid][label] += 1
                    self.halt_ns[tid][label] += open_halt.pop(tid, 0)

    def counts(self, tid: int) -> Dict[str, int]:
        return dict(self.exits.get(tid, {}))


def overruns(stats_text: str) -> int:
    """Sum of lost events over per_cpu/cpuN/stats ("overrun" and "dropped events")."""
    total = 0
    for line in stats_text.splitlines():
        m = re.match(r"^(overrun|dropped events):\s*(\d+)", line.strip())
        if m:
            total += int(m.group(2))
    return total


def parse_vmm(text: str) -> Tuple[Dict[int, Dict[str, int]], Dict[str, int]]:
    """E2EVMM lines -> ({vcpu index: fields}, {pid, wall_ns})."""
    vcpus: Dict[int, Dict[str, int]] = {}
    done: Dict[str, int] = {}
    for line in text.splitlines():
        if not line.startswith("E2EVMM "):
            continue
        fields = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
        if line.startswith("E2EVMM done"):
            done = {k: int(v) for k, v in fields.items()}
        else:
            d = {k: int(v) for k, v in fields.items()}
            vcpus[d["vcpu"]] = d
    return vcpus, done


def expected_traps(v: Dict[str, int]) -> Dict[str, int]:
    """Exits the guest code of e2evmm.c (arm64) or e2evmm_x86.c makes, exactly (WFx/hlt apart; x86's
    npf: see x86_npf_problems)."""
    if "out" in v:  # x86 SVM: io = OUT + the done doorbell; msr = a read and a write per round
        return {"io": v["out"] + 1, "cpuid": v["cpuid"], "msr": 2 * v.get("msr", 0)}
    return {"DABT_LOW": v["mmio"] + 1, "HVC64": v["hvc"], "SYS64": v["sys"], "IABT_LOW": 1}


def x86_npf_problems(npf_gpa: Counter, v: Dict[str, int]) -> List[str]:
    """x86 npf exits of one vCPU against e2evmm_x86.c's guest code: one per MMIO store at
    X86_MMIO_GPA, exactly; the first fetch from the vCPU's code page faults once, or a few times
    when KVM retries the fault (seen under load: twice at rip 0, 27 ms apart); nothing else."""
    code = x86_code_gpa(v["vcpu"])
    problems = []
    if npf_gpa[X86_MMIO_GPA] != v["mmio"]:
        problems.append("%d npf at the MMIO address, guest code %d" % (npf_gpa[X86_MMIO_GPA], v["mmio"]))
    if npf_gpa[code] < 1:
        problems.append("no npf on the code page %#x" % code)
    other = {hex(g): n for g, n in npf_gpa.items() if g not in (X86_MMIO_GPA, code)}
    if other:
        problems.append("npf elsewhere: %r" % other)
    return problems


#: e2evmm.c's DATA_BASE: vCPU i's fresh pages start at ARM64_DATA_BASE + i * 0x1000000.
ARM64_DATA_BASE = 0x50000000


def arm64_memory_fault_problems(fault_ipas: Counter, v: Dict[str, int]) -> List[str]:
    """arm64 stage-2 memory faults (DABT_LOW) of one vCPU against e2evmm.c's guest code: the first
    store to each of its fresh pages faults; the same page may fault again when KVM retries the
    fault (user_mem_abort() returns without mapping when an MMU notifier invalidation raced with
    it, and the guest repeats the store: seen once on arm64-5.10, 30 faults for 29 pages);
    nothing else faults."""
    page = v["page_size"]
    base = ARM64_DATA_BASE + v["vcpu"] * 0x1000000
    fresh = {base + i * page for i in range(v["pages"])}
    faulted = Counter()
    for ipa, n in fault_ipas.items():
        faulted[ipa - ipa % page] += n
    problems = []
    missing = sorted(fresh - set(faulted))
    if missing:
        problems.append("no fault on %d of %d fresh pages, first %#x" % (len(missing), len(fresh), missing[0]))
    other = {hex(p): n for p, n in faulted.items() if p not in fresh}
    if other:
        problems.append("memory faults elsewhere: %r" % other)
    return problems


class Arch:
    """What the tests expect of one host architecture's exits."""

    def __init__(self, host: str) -> None:
        self.x86 = host.startswith("x86")
        #: the exits the e2e VMM's guest code makes (the halt one last)
        self.traps = (
            ("io", "npf", "cpuid", "msr", "hlt") if self.x86 else ("DABT_LOW", "HVC64", "SYS64", "IABT_LOW", "WFx")
        )
        #: the halting exit and the spec field that counts it
        self.halt, self.halt_field = ("hlt", "hlt") if self.x86 else ("WFx", "wfi")
        #: exits the host's own interrupts cause, in varying number
        self.noise = {"interrupt", "nmi", "vintr", "pause"} if self.x86 else {"IRQ"}
        #: what the kernel logs once KVM is ready (arm64: VHE; x86: kvm_amd with nested paging)
        self.kvm_ready = "Nested Paging enabled" if self.x86 else "initialized successfully"


def perf_counts(text: str) -> Dict[str, Optional[int]]:
    """`perf stat -x,` output -> {event: count}; None where perf printed <not counted>."""
    out: Dict[str, Optional[int]] = {}
    for line in text.splitlines():
        parts = line.split(",")
        if len(parts) < 3 or line.startswith("#"):
            continue
        out[parts[2]] = int(parts[0]) if parts[0].isdigit() else None
    return out


def json_docs(text: str) -> List[dict]:
    """One or more JSON documents (one per line, or a single pretty-printed one)."""
    text = text.strip()
    if not text:
        return []
    try:
        return [json.loads(text)]
    except ValueError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def rows_by_thread(docs: List[dict]) -> Dict[int, Counter]:
    """Sum of row counts per tid and reason over all documents."""
    out: Dict[int, Counter] = defaultdict(Counter)
    for doc in docs:
        for row in doc.get("rows", []):
            out[int(row["tid"])][row["reason"]] += int(row["count"])
    return out


def parse_compat(text: str) -> Tuple[List[str], List[dict]]:
    """kvmexit-aarch64 table -> (header columns, rows). COMM may contain spaces."""
    header: List[str] = []
    rows: List[dict] = []
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "TGID":
            header = parts
            continue
        if not header or not parts[0].isdigit() or len(parts) < 5:
            continue
        rows.append(
            {
                "tgid": int(parts[0]),
                "tid": int(parts[1]),
                "comm": " ".join(parts[2:-3]),
                "reason": parts[-3],
                "count": int(parts[-2]),
                "avg": parts[-1],
            }
        )
    return header, rows


def bpf_progs(text: str) -> List[dict]:
    text = text.strip()
    return json.loads(text) if text else []


# --- sub-reasons: the kernel's own events inside each exit (docs/subreasons.md) ---------------

_ANY = re.compile(
    r"^\s*(?P<comm>.*?)-(?P<tid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(?P<cpu>\d+)\]\s+\S+\s+"
    r"(?P<ts>[\d.]+):\s+(?P<event>kvm_\w+):\s*(?P<body>.*)$"
)
_HVC = re.compile(r"^HVC at 0x[0-9a-f]+ \(r0: 0x(?P<r0>[0-9a-f]+), imm: 0x[0-9a-f]+\)$")
_HSR = re.compile(r"^HSR 0x(?P<esr>[0-9a-f]+)$")
_MMIO = re.compile(r"^mmio (?P<type>\S+) len (?P<len>\d+) gpa 0x(?P<gpa>[0-9a-f]+) val 0x[0-9a-f]+$")
_USER = re.compile(r"^reason (?P<name>\S+) \((?P<num>-?\d+)\)$")
_GUEST_FAULT = re.compile(r"^ipa 0x(?P<ipa>[0-9a-f]+), hsr 0x")
_WFX = re.compile(r"^guest executed wf(?P<k>[ie]) at: 0x[0-9a-f]+$")
# x86 (arch/x86/kvm/trace.h, 6.1): the I/O port, the MSR and the CPUID leaf an exit was for.
_PIO = re.compile(r"^pio_(?P<rw>read|write) at 0x(?P<port>[0-9a-f]+) size \d+ count \d+")
_MSR = re.compile(r"^msr_(?P<rw>read|write) (?P<index>[0-9a-f]+) = 0x[0-9a-f]+")
_CPUID = re.compile(r"^func (?P<func>[0-9a-f]+) ")
_CR = re.compile(r"^cr_(?P<rw>read|write) (?P<cr>[0-9a-f]+) = 0x")
_HCALL = re.compile(r"^nr 0x(?P<nr>[0-9a-f]+) ")
_FAST_MMIO = re.compile(r"^fast mmio at gpa 0x(?P<gpa>[0-9a-f]+)")
#: SVM's exits for control registers and hypercalls, as its kvm_exit prints them.
_X86_CR_EXITS = {"%s_cr%d" % (rw, n) for rw in ("read", "write") for n in range(16)} | {"cr0_sel_write"}
_X86_HCALL_EXITS = {"vmmcall", "hypercall"}


def sysreg_of_esr(esr: int) -> Tuple[Tuple[int, int, int, int, int], str]:
    """(Op0, Op1, CRn, CRm, Op2), "read"/"write" from an EC 0x18 ESR (Arm ARM ISS layout)."""
    enc = ((esr >> 20) & 3, (esr >> 14) & 7, (esr >> 10) & 15, (esr >> 1) & 15, (esr >> 17) & 7)
    return enc, ("read" if esr & 1 else "write")


class Exit:
    __slots__ = ("events", "label", "paired", "tid")

    def __init__(self, tid: int, label: str) -> None:
        self.tid = tid
        self.label = label
        self.events: List[Tuple[str, str]] = []
        self.paired = False

    def kinds(self) -> List[str]:
        return [e for e, _b in self.events]


class SubFtrace:
    """Every exit of a trace with the kvm events that fired inside it (same thread, before its entry)."""

    def __init__(self, text: str) -> None:
        self.exits: List[Exit] = []
        #: kvm events (not exit/entry/wakeup) on a thread with no open exit.
        self.outside: List[Tuple[int, str, str]] = []
        self.lines: List[Tuple[str, str]] = []  # (event, body) of every sub-reason event line
        open_exit: Dict[int, Exit] = {}
        for line in text.splitlines():
            m = _ANY.match(line)
            if not m:
                continue
            tid, event, body = int(m.group("tid")), m.group("event"), m.group("body")
            if event == "kvm_exit":
                e = Exit(tid, exit_label(body))
                self.exits.append(e)
                open_exit[tid] = e
            elif event == "kvm_entry":
                e = open_exit.pop(tid, None)
                if e is not None:
                    e.paired = True
            elif event == "kvm_vcpu_wakeup":
                continue
            else:
                self.lines.append((event, body))
                if tid in open_exit:
                    open_exit[tid].events.append((event, body))
                else:
                    self.outside.append((tid, event, body))

    def by_tid(self, tid: int) -> List[Exit]:
        return [e for e in self.exits if e.tid == tid]

    def hvc_functions(self, tid: int) -> Counter:
        out: Counter = Counter()
        for e in self.by_tid(tid):
            for ev, body in e.events:
                if ev == "kvm_hvc_arm64":
                    m = _HVC.match(body)
                    if not m:
                        raise ValueError("unparsed kvm_hvc_arm64: %r" % body)
                    out[int(m.group("r0"), 16)] += 1
        return out

    def sysregs(self, tid: int) -> Counter:
        out: Counter = Counter()
        for e in self.by_tid(tid):
            for ev, body in e.events:
                if ev == "kvm_handle_sys_reg":
                    m = _HSR.match(body)
                    if not m:
                        raise ValueError("unparsed kvm_handle_sys_reg: %r" % body)
                    out[sysreg_of_esr(int(m.group("esr"), 16))] += 1
        return out

    def abort_kinds(self, tid: int, label: str = "DABT_LOW") -> Counter:
        """Per exit of the class: user-mmio (kvm_mmio and a KVM_EXIT_MMIO user-space exit),
        kernel-mmio (kvm_mmio, no user-space exit), memory (kvm_guest_fault only), or other."""
        out: Counter = Counter()
        for e in self.by_tid(tid):
            if e.label != label:
                continue
            kinds = e.kinds()
            user_mmio = any(ev == "kvm_userspace_exit" and "KVM_EXIT_MMIO" in b for ev, b in e.events)
            if "kvm_guest_fault" not in kinds:
                out["other"] += 1
            elif "kvm_mmio" in kinds:
                out["user-mmio" if user_mmio else "kernel-mmio"] += 1
            else:
                out["memory"] += 1
        return out

    def memory_fault_ipas(self, tid: int, label: str = "DABT_LOW") -> Counter:
        """The faulting IPA (kvm_guest_fault) of each exit of the class abort_kinds calls memory."""
        out: Counter = Counter()
        for e in self.by_tid(tid):
            if e.label != label or "kvm_mmio" in e.kinds():
                continue
            for ev, body in e.events:
                if ev == "kvm_guest_fault":
                    m = _GUEST_FAULT.match(body)
                    if not m:
                        raise ValueError("unparsed kvm_guest_fault: %r" % body)
                    out[int(m.group("ipa"), 16)] += 1
                    break
        return out

    def mmio_addresses(self, tid: int) -> Counter:
        out: Counter = Counter()
        for e in self.by_tid(tid):
            for ev, body in e.events:
                if ev == "kvm_mmio":
                    m = _MMIO.match(body)
                    if not m:
                        raise ValueError("unparsed kvm_mmio: %r" % body)
                    out[(m.group("type"), int(m.group("gpa"), 16))] += 1
        return out

    def wfx_kinds(self, tid: int) -> Counter:
        out: Counter = Counter()
        for e in self.by_tid(tid):
            for ev, body in e.events:
                if ev == "kvm_wfx_arm64":
                    m = _WFX.match(body)
                    if not m:
                        raise ValueError("unparsed kvm_wfx_arm64: %r" % body)
                    out["wf" + m.group("k")] += 1
        return out

    def meanings(self, tid: int, paired_only: bool = False) -> Counter:
        """Per (class, what the kernel's events inside the exit say): how many exits, from the
        events alone (the first event of a kind decides; "-" when none says anything):
        ("wfi",) / ("wfe",); ("hvc", x0); ("sys", encoding, direction); ("memory",) /
        ("kernel-mmio", gpa) / ("user-mmio", gpa) for aborts and x86's npf; ("pio", rw, port),
        ("msr", rw, index), ("cpuid", leaf), ("cr", rw, n), ("hypercall", nr) on x86."""
        out: Counter = Counter()
        for e in self.by_tid(tid):
            if paired_only and not e.paired:
                continue
            out[e.label, self._meaning(e)] += 1
        return out

    @staticmethod
    def _meaning(e: Exit) -> tuple:
        first = {}
        for ev, body in e.events:
            first.setdefault(ev, body)
        if e.label == "WFx" and "kvm_wfx_arm64" in first:
            m = _WFX.match(first["kvm_wfx_arm64"])
            return ("wf" + m.group("k"),) if m else ("unparsed",)
        if e.label in ("HVC64", "HVC32") and "kvm_hvc_arm64" in first:
            m = _HVC.match(first["kvm_hvc_arm64"])
            return ("hvc", int(m.group("r0"), 16)) if m else ("unparsed",)
        if e.label == "SYS64" and "kvm_handle_sys_reg" in first:
            m = _HSR.match(first["kvm_handle_sys_reg"])
            return ("sys", *sysreg_of_esr(int(m.group("esr"), 16))) if m else ("unparsed",)
        if e.label in ("DABT_LOW", "IABT_LOW") and "kvm_guest_fault" in first:
            if "kvm_mmio" not in first:
                return ("memory",)
            return SubFtrace._mmio(e, first["kvm_mmio"])
        if e.label == "io" and "kvm_pio" in first:
            m = _PIO.match(first["kvm_pio"])
            return ("pio", m.group("rw"), int(m.group("port"), 16)) if m else ("unparsed",)
        if e.label == "msr" and "kvm_msr" in first:
            m = _MSR.match(first["kvm_msr"])
            return ("msr", m.group("rw"), int(m.group("index"), 16)) if m else ("unparsed",)
        if e.label == "cpuid" and "kvm_cpuid" in first:
            m = _CPUID.match(first["kvm_cpuid"])
            return ("cpuid", int(m.group("func"), 16)) if m else ("unparsed",)
        if e.label in _X86_CR_EXITS and "kvm_cr" in first:
            m = _CR.match(first["kvm_cr"])
            return ("cr", m.group("rw"), int(m.group("cr"), 16)) if m else ("unparsed",)
        if e.label in _X86_HCALL_EXITS and "kvm_hypercall" in first:
            m = _HCALL.match(first["kvm_hypercall"])
            return ("hypercall", int(m.group("nr"), 16)) if m else ("unparsed",)
        if e.label == "npf":  # x86: MMIO (the first address) if the kernel saw any, else a fault on memory
            mmio = next(((ev, b) for ev, b in e.events if ev in ("kvm_mmio", "kvm_fast_mmio")), None)
            if mmio is not None:
                return SubFtrace._mmio(e, mmio[1], fast=mmio[0] == "kvm_fast_mmio")
            if "kvm_page_fault" in first:
                return ("memory",)
        return ("-",)

    @staticmethod
    def _mmio(e: Exit, body: str, fast: bool = False) -> tuple:
        m = (_FAST_MMIO if fast else _MMIO).match(body)
        user = any(ev == "kvm_userspace_exit" and "KVM_EXIT_MMIO" in b for ev, b in e.events)
        return ("user-mmio" if user else "kernel-mmio", int(m.group("gpa"), 16)) if m else ("unparsed",)


def row_meaning(reason: str, sub_value: int) -> tuple:
    """What a kvmexit row's ``sub_value`` says, decoded by its documented layout
    (docs/subreasons.md), in the terms of :meth:`SubFtrace.meanings`."""
    if sub_value == 0:
        return ("-",)
    if reason == "WFx":
        return {1: ("wfi",), 2: ("wfe",)}.get(sub_value, ("bad", sub_value))
    if reason in ("HVC64", "HVC32") and sub_value >> 63:
        return ("hvc", sub_value & 0xFFFFFFFF)
    if reason == "SYS64" and sub_value >> 32 == 1:
        return ("sys", *sysreg_of_esr(sub_value & 0xFFFFFFFF))
    x86_seen = sub_value >> 62 == 1  # X86_SEEN, bit 63 clear
    low = sub_value & ((1 << 62) - 1)
    if reason == "io" and x86_seen and low >> 17 == 0:
        return ("pio", "write" if low >> 16 else "read", low & 0xFFFF)
    if reason == "msr" and x86_seen and low >> 33 == 0:
        return ("msr", "write" if low >> 32 else "read", low & 0xFFFFFFFF)
    if reason == "cpuid" and x86_seen and low >> 32 == 0:
        return ("cpuid", low)
    if reason in _X86_CR_EXITS and x86_seen and low >> 9 == 0:
        return ("cr", "write" if low >> 8 else "read", low & 0xFF)
    if reason in _X86_HCALL_EXITS and x86_seen:
        return ("hypercall", low)
    if reason in ("DABT_LOW", "IABT_LOW", "npf"):
        kind, addr = sub_value >> 56, sub_value & ((1 << 56) - 1)
        if kind == 1 and addr == 0:
            return ("memory",)
        if kind in (2, 3):
            return ("kernel-mmio" if kind == 2 else "user-mmio", addr)
    return ("bad", sub_value)


# --- preemption inside exits (the `hog` scenario) ----------------------------------------------

_SCHED = re.compile(
    r"^\s*.*?-(?P<tid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[\d+\]\s+\S+\s+(?P<ts>\d+)\.(?P<us>\d{6}):\s+"
    r"(?P<event>kvm_exit|kvm_entry|sched_switch):\s*(?P<body>.*)$"
)
_SWITCH = re.compile(r"prev_pid=(?P<prev>\d+) .*prev_state=(?P<state>\S+) ==> .*next_pid=(?P<next>\d+) ")


def preemptions(text: str) -> Dict[int, Tuple[int, int]]:
    """tid -> (times switched out runnable inside an open exit, ns until switched back in).

    From sched_switch: a thread switched out with prev_state R (or R+) while it has an exit open
    (after kvm_exit, before its kvm_entry) was preempted; the time runs until a sched_switch
    names it as next_pid.
    """
    open_exit: Dict[int, bool] = {}
    out_since: Dict[int, int] = {}
    result: Dict[int, List[int]] = defaultdict(lambda: [0, 0])
    for line in text.splitlines():
        m = _SCHED.match(line)
        if not m:
            continue
        ns = int(m.group("ts")) * 1_000_000_000 + int(m.group("us")) * 1000
        event = m.group("event")
        if event == "kvm_exit":
            open_exit[int(m.group("tid"))] = True
        elif event == "kvm_entry":
            open_exit.pop(int(m.group("tid")), None)
        else:
            s = _SWITCH.search(m.group("body"))
            if not s:
                raise ValueError("unparsed sched_switch: %r" % line)
            prev, nxt = int(s.group("prev")), int(s.group("next"))
            if s.group("state").startswith("R") and open_exit.get(prev):
                out_since[prev] = ns
                result[prev][0] += 1
            if nxt in out_since:
                result[nxt][1] += ns - out_since.pop(nxt)
    return {tid: (n, t) for tid, (n, t) in result.items()}


def _median(values: List[float]) -> float:
    s = sorted(values)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def format_cost(cost: dict, host_load: Dict[str, str]) -> str:
    """The cost scenario's figures (cost_driver.py's cost.json): per mode the vCPU's time per exit
    of the workload, the time tracing added per exit (median over rounds of the round's
    difference with the untraced run of the same round), and the ratio kvmexit/original."""
    exits = sum(int(n) for n in cost["spec"].split(":"))
    runs = cost["runs"]
    per_exit = {m: [r["run_ns"] / exits for r in rs] for m, rs in runs.items()}
    lines = [
        "cost: guest-visible cost of tracing, workload %s (%d exits per run, one vCPU), %d interleaved rounds"
        % (cost["spec"], exits, cost["rounds"])
    ]
    added: Dict[str, float] = {}
    for mode, values in per_exit.items():
        line = "  %-9s %9.1f ns per exit (median; rounds %s)" % (
            mode,
            _median(values),
            ", ".join("%.0f" % v for v in values),
        )
        if mode != "none":
            added[mode] = _median([v - b for v, b in zip(values, per_exit["none"])])
            line += "; added %.1f ns per exit" % added[mode]
        lines.append(line)
    if "original" in added and added["original"] > 0:
        lines.append("  ratio of added cost kvmexit/original: %.2fx" % (added["kvmexit"] / added["original"]))
    lines.append(
        "  host load average %s at boot, %s at the end (%s CPUs); guest load %s"
        % (
            host_load.get("host_loadavg_start", "?").split(" ")[:3],
            host_load.get("host_loadavg_end", "?").split(" ")[:3],
            host_load.get("host_cpus", "?"),
            cost.get("guest_loadavg"),
        )
    )
    return "\n".join(lines)


# --- guest residency and the split of the exit time (the `hog` scenario, issue 11) -------------

_SPLIT_LINE = re.compile(
    r"^\s*.*?-(?P<tid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[\d+\]\s+\S+\s+(?P<ts>\d+)\.(?P<us>\d{6}):\s+"
    r"(?P<event>kvm_exit|kvm_entry|kvm_vcpu_wakeup|kvm_userspace_exit|sched_switch):\s*(?P<body>.*)$"
)


class SplitTruth:
    """Per thread, from the kernel's own events (ftrace), written independently of kvmexit's
    pairing: time in the guest (kvm_entry -> next kvm_exit) and the off-CPU time of exits that got
    their entry, runnable (prev_state R or R+) or sleeping, outside halts: an interval that began
    inside a halt's window ([kvm_vcpu_wakeup - ns, kvm_vcpu_wakeup]) is the halt's, and so is the
    last interval before a wakeup if it was a sleep (the halt's own block: the kernel's clock
    reading at the halt's end and the trace's timestamp of the wakeup differ by microseconds,
    more than the halt's start precedes its block).
    Every interval of an exit is kept until its entry, so no history bound applies here.
    ``intervals[tid]`` counts the timed spans, for the tolerance of the µs timestamps. Guest time
    counts from an entry of a thread that has exited before (kvmexit keeps a thread's slot from its
    first exit: the stay in the guest before it is not measured)."""

    def __init__(self, text: str) -> None:
        self.guest_ns: Counter = Counter()
        self.preempt_ns: Counter = Counter()
        self.blocked_ns: Counter = Counter()
        self.intervals: Counter = Counter()
        #: exit -> entry time of the exits that got their entry (kvmexit's total_ns), per thread
        self.total_ns: Counter = Counter()
        #: (tid, kvm_exit ns) -> (duration, preempted, blocked) of each exit that got its entry
        self.per_exit: Dict[Tuple[int, int], Tuple[int, int, int]] = {}
        exit_ts: Dict[int, int] = {}
        last_entry: Dict[int, int] = {}
        open_exit: Dict[int, bool] = {}
        off: Dict[int, Tuple[int, bool]] = {}  # tid -> (switched out at, runnable)
        spans: Dict[int, List[Tuple[int, bool]]] = defaultdict(list)  # (start, runnable), ns
        lengths: Dict[int, List[int]] = defaultdict(list)
        halts: Dict[int, List[Tuple[int, int]]] = defaultdict(list)  # halt windows (start, end)
        for line in text.splitlines():
            m = _SPLIT_LINE.match(line)
            if not m:
                continue
            tid = int(m.group("tid"))
            ns = int(m.group("ts")) * 1_000_000_000 + int(m.group("us")) * 1000
            event = m.group("event")
            if event == "kvm_exit":
                if last_entry.get(tid) and not open_exit.get(tid):
                    self.guest_ns[tid] += ns - last_entry[tid]
                    self.intervals[tid] += 1
                last_entry[tid] = 0
                open_exit[tid] = True
                exit_ts[tid] = ns
                spans.pop(tid, None)
                lengths.pop(tid, None)
                halts.pop(tid, None)
            elif event == "kvm_entry":
                if tid in open_exit:  # guest time counts once the thread has exited (kvmexit's rule)
                    last_entry[tid] = ns
                if open_exit.get(tid, False):
                    open_exit[tid] = False  # closed; the thread stays known (it has exited)
                    self.total_ns[tid] += ns - exit_ts[tid]
                    intervals = [
                        (start, start + length, runnable)
                        for (start, runnable), length in zip(spans.pop(tid, []), lengths.pop(tid, []))
                    ]
                    windows = halts.pop(tid, [])
                    inside = set()
                    since = 0
                    for h, w in windows:
                        # began inside the window; or the last before the wakeup, a sleep: the halt's block
                        before = [i for i, (a, b, _) in enumerate(intervals) if since < b <= w]
                        inside.update(i for i in before if intervals[i][0] >= h)
                        if before and not intervals[before[-1]][2]:
                            inside.add(before[-1])
                        since = w
                    parts = [0, 0]  # this exit's preempted, blocked
                    for i, (a, b, runnable) in enumerate(intervals):
                        if i not in inside:
                            parts[0 if runnable else 1] += b - a
                            self.intervals[tid] += 1
                    # The documented clamp (docs/stats-layout.md): halt, then preempted, then blocked
                    # fill the exit's time and no more. The halt's length comes from the kernel's
                    # clock, the intervals from the trace's: they can overlap by milliseconds under
                    # emulation (seen: a 6.2 ms sleep that began 4.4 ms before its halt's start).
                    duration = ns - exit_ts[tid]
                    left = duration - min(sum(w - h for h, w in windows), duration)
                    preempted = min(parts[0], left)
                    blocked = min(parts[1], left - preempted)
                    self.preempt_ns[tid] += preempted
                    self.blocked_ns[tid] += blocked
                    self.per_exit[tid, exit_ts[tid]] = (duration, preempted, blocked)
            elif event == "kvm_vcpu_wakeup":
                w = _WAKEUP.match(m.group("body"))
                if w and open_exit.get(tid):
                    halts[tid].append((ns - int(w.group("ns")), ns))
            elif event == "sched_switch":
                s = _SWITCH.search(m.group("body"))
                if not s:
                    raise ValueError("unparsed sched_switch: %r" % line)
                prev, nxt = int(s.group("prev")), int(s.group("next"))
                if open_exit.get(prev):
                    off[prev] = (ns, s.group("state") in ("R", "R+"))
                if nxt in off:
                    start, runnable = off.pop(nxt)
                    if open_exit.get(nxt):
                        spans[nxt].append((start, runnable))
                        lengths[nxt].append(ns - start)


# --- where a second probe on the same tracepoint call read the clock (the `slow` scenario) -------

_EVENT_LINE = re.compile(
    r"^\s*.*?-(?P<tid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[\d+\]\s+(?P<flags>\S+)\s+(?P<s>\d+)\.(?P<us>\d{6}):\s+"
    r"(?P<event>\w+):\s*(?P<body>.*)$"
)
#: The guest PC of a kvm_exit line: arm64 "PC: 0x...", x86 "rip 0x...".
_EXIT_PC = re.compile(r"(?:PC: |rip )0x([0-9a-f]+)")
#: ftrace prints microseconds: an event's true time is in [printed, printed + 1 us).
US_NS = 1000
NEVER = 1 << 80


class PairBounds:
    """One exit -> entry pair of ftrace, and the interval in which any later probe on the same
    kvm_exit (resp. kvm_entry) call must have read the clock: from ftrace's own time (ftrace's probe
    runs first: see ProbeBounds) to the thread's next event in task context (after the tracepoint
    call returned, so after every probe on it), each to the microsecond ftrace prints."""

    __slots__ = ("after_guest", "entry_hi", "entry_lo", "exit_hi", "exit_lo", "pc", "reason", "tid")

    def __init__(self, tid: int, reason: str, pc: Optional[int], exit_lo: int, exit_hi: int, entry_lo: int) -> None:
        self.tid, self.reason, self.pc = tid, reason, pc
        self.exit_lo, self.exit_hi, self.entry_lo = exit_lo, exit_hi, entry_lo
        self.entry_hi = NEVER  # until the thread's next event is read
        #: the exit ends a stay in the guest that kvmexit times (an entry of a thread that has exited)
        self.after_guest = False

    @property
    def duration(self) -> int:
        return self.entry_lo - self.exit_lo  # ftrace's own (both stamps printed alike)

    @property
    def min_duration(self) -> int:
        """The shortest exit -> entry time another probe pair can have measured."""
        return self.entry_lo - self.exit_hi

    @property
    def max_duration(self) -> int:
        return self.entry_hi - self.exit_lo

    def holds(self, tid: int, reason: str, pc: Optional[int], exit_ns: int, entry_ns: int) -> bool:
        """Whether a probe pair's exit (thread, reason, PC, clock readings) is this one."""
        return (
            (tid, reason, pc) == (self.tid, self.reason, self.pc)
            and self.exit_lo <= exit_ns < self.exit_hi
            and self.entry_lo <= entry_ns < self.entry_hi
        )


class ProbeBounds:
    """Every exit -> entry pair of a trace with its PairBounds. Exact where a second tracer
    (kvmexit) attached to kvm_exit and kvm_entry after the ftrace instance enabled them: a
    tracepoint calls its probes in the order they were registered (equal priority), so kvmexit's
    clock reading on a call is never before ftrace's, and no later than the thread's next event in
    task context (events in hardirq or softirq context, flags h/s, can be stamped between the two
    probes and do not bound). How long after ftrace's it came is not known: under TCG the emulated
    CPU can stall between the two probes for as long as the real machine deschedules it, and its
    clock runs on meanwhile (kvm_entry fires with interrupts disabled, yet run r1 of 2026-12-02 saw
    kvmexit's reading 1.94 ms after ftrace's there)."""

    def __init__(self, text: str) -> None:
        self.pairs: List[PairBounds] = []
        #: tid -> how much longer than ftrace's (SplitTruth.guest_ns) a second observer's guest time
        #: can be, at most: each stay in the guest ends at a kvm_exit whose second probe read the
        #: clock before exit_hi, and begins at a kvm_entry whose second probe read it no earlier
        #: than ftrace's stamp. (No bound the other way: after kvm_entry the thread's next event is
        #: its next exit, so a stall between the two kvm_entry probes shortens it unseen.)
        self.guest_slack: Counter = Counter()
        #: tid -> its pairs by exit_lo, their exit_lo, and the running largest exit_hi (matching)
        self._by_tid: Dict[int, Tuple[List[PairBounds], List[int], List[int]]] = {}
        open_exit: Dict[int, PairBounds] = {}
        entered: Dict[int, bool] = {}  # tid -> in the guest after an entry kvmexit times from
        exited = set()  # threads that have exited once (kvmexit times guest stays from then on)
        #: pairs whose exit (resp. entry) still waits for the thread's next event
        wait_exit: Dict[int, PairBounds] = {}
        wait_entry: Dict[int, PairBounds] = {}
        for line in text.splitlines():
            m = _EVENT_LINE.match(line)
            if not m:
                continue
            flags = m.group("flags")
            if len(flags) > 2 and flags[2] in "hsH":  # interrupt context: may be between two probes
                continue
            tid = int(m.group("tid"))
            ns = int(m.group("s")) * 1_000_000_000 + int(m.group("us")) * US_NS
            event = m.group("event")
            p = wait_exit.pop(tid, None)
            if p is not None:
                self._bound_exit(p, ns + US_NS)
            p = wait_entry.pop(tid, None)
            if p is not None:
                p.entry_hi = ns + US_NS
            if event == "kvm_exit":
                body = m.group("body")
                pc_m = _EXIT_PC.search(body)
                p = PairBounds(tid, exit_label(body), int(pc_m.group(1), 16) if pc_m else None, ns, NEVER, 0)
                p.after_guest = entered.pop(tid, False)
                exited.add(tid)
                open_exit[tid] = p
                wait_exit[tid] = p
            elif event == "kvm_entry" and tid in open_exit:
                p = open_exit.pop(tid)
                p.entry_lo = ns
                self.pairs.append(p)
                wait_entry[tid] = p
                entered[tid] = True
            elif event == "kvm_entry" and tid in exited:  # an entry with no exit open (SplitTruth's rule)
                entered[tid] = True
        for p in wait_exit.values():  # no later event of the thread: nothing bounds it
            self._bound_exit(p, NEVER)

    def _bound_exit(self, p: PairBounds, hi: int) -> None:
        p.exit_hi = hi
        if p.after_guest:
            self.guest_slack[p.tid] += hi - p.exit_lo

    def matching(self, tid: int, reason: str, pc: Optional[int], exit_ns: int, duration_ns: int) -> List[PairBounds]:
        """The pairs that hold this probe pair (:meth:`PairBounds.holds`). Only the thread's pairs
        that began at or before ``exit_ns`` can, and of those only back to the last whose earlier
        pairs all closed their exit bound by then (a slow scenario logs 10,000-100,000 exits: one
        scan of every pair for each kept a CI run in these checks for over 20 minutes)."""
        index = self._by_tid.get(tid)
        if index is None:
            mine = sorted((p for p in self.pairs if p.tid == tid), key=lambda p: p.exit_lo)
            his: List[int] = []  # his[k]: the largest exit_hi of mine[0..k]
            for p in mine:
                his.append(max(his[-1], p.exit_hi) if his else p.exit_hi)
            index = self._by_tid[tid] = (mine, [p.exit_lo for p in mine], his)
        mine, los, his = index
        out = []
        k = bisect_right(los, exit_ns) - 1
        while k >= 0 and his[k] > exit_ns:
            if mine[k].holds(tid, reason, pc, exit_ns, exit_ns + duration_ns):
                out.append(mine[k])
            k -= 1
        return out[::-1]
