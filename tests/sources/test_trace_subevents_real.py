"""Sub-reason events of a real capture (``tests/data/traces/arm64-6.1-subreasons.trace``) decoded
by kvmexit, against the known work of the guest that made them (see the traces README)."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from kvmexit.reasons import arm64_calls, arm64_iss
from kvmexit.sources.trace import subdecode as sd

DATA = Path(__file__).resolve().parent.parent / "data"
TRACE = DATA / "traces" / "arm64-6.1-subreasons.trace"
LINE = re.compile(rb"^\s*.*?-(\d+)\s+\[\d+\]\s+\S+\s+[\d.]+:\s+(kvm_\w+):\s(.*)$")

#: e2evmm's E2EVMM lines of that run: vcpu 0 (tid 136) and vcpu 1 (tid 137).
GUEST = {
    136: dict(mmio=23, hvc=11, sys=7, wfi=5, calls=13, sysrw=17, gic=19, pages=29, vcpu=0),
    137: dict(mmio=5, hvc=3, sys=2, wfi=3, calls=11, sysrw=7, gic=5, pages=31, vcpu=1),
}
CALL_NAMES = [
    "PSCI_VERSION",
    "PSCI_FEATURES",
    "PSCI_AFFINITY_INFO64",
    "SMCCC_VERSION",
    "SMCCC_ARCH_FEATURES",
    "KVM_FEATURES",
    "TRNG_VERSION",
    "FN_0x8400ffff",
]


@pytest.fixture(scope="module")
def records():
    out = defaultdict(list)
    for raw in TRACE.read_bytes().splitlines():
        m = LINE.match(raw)
        if not m or m.group(2) not in sd.SUB_EVENTS:
            continue
        rec = sd.decode_sub(m.group(2), m.group(3))
        assert rec is not None, raw
        out[int(m.group(1))].append(rec)
    assert set(out) == set(GUEST)
    return out


def test_every_kind_is_present(records):
    kinds = {type(r).__name__ for recs in records.values() for r in recs}
    assert kinds == {"Wfx", "Hvc", "SysReg", "SysAccess", "GuestFault", "Mmio", "UserspaceExit"}


@pytest.mark.parametrize("tid", sorted(GUEST))
def test_hypercalls_by_name(records, tid):
    g = GUEST[tid]
    got = Counter(arm64_calls.function_name(r.r0) for r in records[tid] if isinstance(r, sd.Hvc))
    want = Counter({name: g["calls"] for name in CALL_NAMES})
    want["FN_0x0"] = g["hvc"]
    assert got == want


@pytest.mark.parametrize("tid", sorted(GUEST))
def test_system_registers_by_name_and_direction(records, tid):
    g = GUEST[tid]
    got = Counter()
    for r in records[tid]:
        if isinstance(r, sd.SysReg):
            acc = arm64_iss.decode_sys64(r.esr)
            got[(arm64_iss.sysreg_name(*acc.encoding), "write" if acc.is_write else "read")] += 1
    assert got == Counter(
        {("ID_AA64PFR0_EL1", "read"): g["sys"], ("OSLAR_EL1", "write"): g["sysrw"], ("OSLSR_EL1", "read"): g["sysrw"]}
    )
    # KVM's own names (kvm_sys_access) are the same registers, with the SYS_ of its SYS_DESC().
    kvm = Counter((r.name, r.is_write) for r in records[tid] if isinstance(r, sd.SysAccess))
    assert kvm == Counter({("SYS_" + n, d == "write"): c for (n, d), c in got.items()})


@pytest.mark.parametrize("tid", sorted(GUEST))
def test_aborts_from_their_syndrome(records, tid):
    g = GUEST[tid]
    kinds = Counter()
    for r in records[tid]:
        if not isinstance(r, sd.GuestFault):
            continue
        ab = arm64_iss.decode_abort(r.esr)
        ec = arm64_iss.esr_ec(r.esr)
        if ec == 0x20:
            kinds["IABT", ab.fault_type] += 1
        elif 0x09000000 <= r.ipa < 0x09002000:  # the VMM's doorbells: 32-bit stores
            assert ab.isv and ab.is_write and ab.size == 4
            kinds["user-mmio"] += 1
        elif 0x08000000 <= r.ipa < 0x08100000:  # vGIC: GICD_TYPER (32-bit), GICR_TYPER (64-bit) loads
            assert ab.isv and not ab.is_write and ab.size in (4, 8)
            kinds["vgic", ab.size] += 1
        else:
            assert ab.is_write and ab.fault_type == "translation"
            kinds["page"] += 1
    assert kinds == Counter(
        {
            ("IABT", "translation"): 1,
            "user-mmio": g["mmio"] + 1,
            ("vgic", 4): g["gic"],
            ("vgic", 8): g["gic"],
            "page": g["pages"],
        }
    )


@pytest.mark.parametrize("tid", sorted(GUEST))
def test_mmio_and_user_space_exits(records, tid):
    g = GUEST[tid]
    mmio = Counter((r.type, r.gpa) for r in records[tid] if isinstance(r, sd.Mmio))
    redist = 0x080A0000 + g["vcpu"] * 0x20000 + 8
    assert mmio == Counter(
        {
            (2, 0x09000000): g["mmio"],
            (2, 0x09001000): 1,
            (0, 0x08000004): g["gic"],
            (1, 0x08000004): g["gic"],
            (0, redist): g["gic"],
            (1, redist): g["gic"],
        }
    )
    user = Counter(r for r in records[tid] if isinstance(r, sd.UserspaceExit))
    assert user[sd.UserspaceExit(6, 0)] == g["mmio"] + 1  # every VMM MMIO went out as KVM_EXIT_MMIO
    assert set(user) <= {sd.UserspaceExit(6, 0), sd.UserspaceExit(None, -4)}  # else: signal kicks


def test_wfx_are_wfi(records):
    for tid in GUEST:
        wfx = [r for r in records[tid] if isinstance(r, sd.Wfx)]
        assert wfx and not any(r.is_wfe for r in wfx)
        assert len(wfx) <= GUEST[tid]["wfi"]


#: The TP_printk formats subdecode reads, as the captured 6.1 format files print them.
PRINT_FMTS = {
    "kvm_wfx_arm64": '"guest executed wf%c at: 0x%016lx"',
    "kvm_hvc_arm64": '"HVC at 0x%016lx (r0: 0x%016lx, imm: 0x%lx)"',
    "kvm_handle_sys_reg": '"HSR 0x%08lx"',
    "kvm_sys_access": '"PC: %lx %s (%d,%d,%d,%d,%d) %s"',
    "kvm_guest_fault": '"ipa %#llx, hsr %#08lx, hxfar %#08lx, pc %#016lx"',
    "kvm_access_fault": '"IPA: %lx"',
    "kvm_mmio": '"mmio %s len %u gpa 0x%llx val 0x%llx"',
    "kvm_userspace_exit": '"reason %s (%d)"',
}


@pytest.mark.parametrize("event,fmt", sorted(PRINT_FMTS.items()))
def test_captured_print_formats(event, fmt):
    text = (DATA / "formats" / "arm64-6.1" / event / "format").read_text()
    line = next(x for x in text.splitlines() if x.startswith("print fmt: "))
    assert line[len("print fmt: ") :].startswith(fmt + ",")


EXIT = re.compile(rb"^(\w+): HSR_EC: 0x([0-9a-f]+) \(")


def _sub_counts():
    """Per tid: Counter of (class, sub-reason name) by kvmexit's rule (exit_sub_arm64) over the
    events inside each exit of the capture (open exits at the end included, as kvmexit counts them)."""
    from kvmexit.reasons import arm64, subreasons

    counts = defaultdict(Counter)
    open_exit = {}

    def close(tid):
        ec, recs = open_exit.pop(tid)
        cls = arm64.EXCEPTION_CLASSES.get(ec, "IRQ") if ec is not None else "IRQ"
        counts[tid][cls, subreasons.label_arm64(ec if ec is not None else -1, sd.exit_sub_arm64(ec or 0, recs))] += 1

    for raw in TRACE.read_bytes().splitlines():
        m = LINE.match(raw)
        if not m:
            continue
        tid, event, body = int(m.group(1)), m.group(2), m.group(3)
        if event == b"kvm_exit":
            if tid in open_exit:
                close(tid)
            e = EXIT.match(body)
            assert e, raw
            open_exit[tid] = (int(e.group(2), 16) if e.group(1) == b"TRAP" else None, [])
        elif event == b"kvm_entry":
            if tid in open_exit:
                close(tid)
        elif event in sd.SUB_EVENTS and tid in open_exit:
            open_exit[tid][1].append(sd.decode_sub(event, body))
    for tid in list(open_exit):
        close(tid)
    return counts


@pytest.mark.parametrize("tid", sorted(GUEST))
def test_per_thread_sub_reason_counts_equal_the_guest_code(tid):
    """kvmexit's offline rule gives, per thread, exactly the sub-reasons the guest made."""
    g = GUEST[tid]
    got = _sub_counts()[tid]
    redist = 0x080A0000 + g["vcpu"] * 0x20000 + 8
    want = Counter({("HVC64", name): g["calls"] for name in CALL_NAMES})
    want["HVC64", "FN_0x0"] = g["hvc"]
    want["SYS64", "ID_AA64PFR0_EL1 read"] = g["sys"]
    want["SYS64", "OSLAR_EL1 write"] = g["sysrw"]
    want["SYS64", "OSLSR_EL1 read"] = g["sysrw"]
    want["DABT_LOW", "mmio-vmm 0x9000000"] = g["mmio"]
    want["DABT_LOW", "mmio-vmm 0x9001000"] = 1
    want["DABT_LOW", "mmio-kernel 0x8000004"] = g["gic"]
    want["DABT_LOW", "mmio-kernel %#x" % redist] = g["gic"]
    want["DABT_LOW", "memory"] = g["pages"]
    want["IABT_LOW", "memory"] = 1
    wfi = got["WFx", "WFI"]
    assert 0 < wfi <= g["wfi"]
    want["WFx", "WFI"] = wfi
    irq = got["IRQ", "-"]
    want["IRQ", "-"] = irq
    print("\ntid %d: %s" % (tid, dict(sorted(got.items()))))
    assert got == want


def test_the_pairing_engine_records_pairs_by_sub_reason():
    """The engine (the reader's dispatch of the sub-reason events) records each pair with a
    sub-reason a second time under it, as the kernel's sub-reason map does: per thread, those
    pairs and the exits still open at the end are the rule's counts above, to the exit."""
    from kvmexit.reasons import arm64, subreasons
    from kvmexit.sources.trace import Pairer, read_stream

    engine = Pairer()
    with open(TRACE, "rb") as f:
        read_stream(f, engine=engine)
    got = defaultdict(Counter)

    def count(tid, detail, sub, n):
        ec = detail & 0x3F
        got[tid][arm64.EXCEPTION_CLASSES[ec], subreasons.label_arm64(ec, sub)] += n

    for (tid, _code, detail, sub), acc in engine.sub_stats.items():
        count(tid, detail, sub, acc[0])  # acc[0]: pairs
    still_open = 0
    for start in engine.open_exits().values():  # the last exit of each thread: the power-off doorbell
        key, records = start[1], start[4]
        count(key[0], key[2], engine._sub(key, records), 1)
        still_open += 1
    assert still_open == 2
    for tid, counts in _sub_counts().items():
        assert got[tid] == Counter({k: v for k, v in counts.items() if k[0] != "IRQ"}), tid
