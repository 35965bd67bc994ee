"""Line grammars, format detection and payload decoding of text traces."""

from __future__ import annotations

import io

import pytest

from kvmexit.reasons import ISA_SVM, ISA_VMX, SERROR_FLAG, label
from kvmexit.sources.trace import Decoder, detect_format, detect_layout, read_stream
from kvmexit.sources.trace.formats import GRAMMARS, GROUPS, classify_other


def fields(fmt: str, line: bytes):
    rx = GRAMMARS[fmt]
    m = rx.match(line)
    assert m is not None, line
    return dict(zip(GROUPS, m.group(*[rx.groupindex[g] for g in GROUPS])))


@pytest.mark.parametrize(
    "fmt,line,comm,tid,tgid,cpu,sec,frac,event",
    [
        (
            "ftrace",
            b"       CPU 0/KVM-1234    [001] d..1.   512.123456: kvm_exit: IRQ: x\n",
            b"CPU 0/KVM",
            b"1234",
            None,
            b"001",
            b"512",
            b"123456",
            b"kvm_exit",
        ),
        (
            "ftrace",
            b" qemu-system-aar-77      (     70) [003] ....  9.000000001: kvm_entry: PC: 0x1\n",
            b"qemu-system-aar",
            b"77",
            b"70",
            b"003",
            b"9",
            b"000000001",
            b"kvm_entry",
        ),
        (
            "ftrace",
            b"          <idle>-0       (-------) [000] d..2.  2699.473327: sched_switch: a\n",
            b"<idle>",
            b"0",
            b"-------",
            b"000",
            b"2699",
            b"473327",
            b"sched_switch",
        ),
        (
            "ftrace",
            b"  kworker/0:1-12 [000] 123456789: kvm_exit: x\n",  # no irq-info, counter clock
            b"kworker/0:1",
            b"12",
            None,
            b"000",
            b"123456789",
            b"",
            b"kvm_exit",
        ),
        (
            "trace-cmd",
            b"vm:        CPU 0/KVM-1201  [000]   512.001201: kvm_entry:            vcpu 0\n",
            b"CPU 0/KVM",
            b"1201",
            None,
            b"000",
            b"512",
            b"001201",
            b"kvm_entry",
        ),
        (
            "perf",
            b"       CPU 0/KVM 1200/1201 [000]   512.001201000: kvm:kvm_entry: PC: 0x1\n",
            b"CPU 0/KVM",
            b"1201",
            b"1200",
            b"000",
            b"512",
            b"001201000",
            b"kvm_entry",
        ),
        (
            "perf",
            b"            perf 19377 [000]  2320.871217: sched:sched_wakeup: comm=x pid=18\n",
            b"perf",
            b"19377",
            None,
            b"000",
            b"2320",
            b"871217",
            b"sched_wakeup",
        ),
    ],
)
def test_grammars(fmt, line, comm, tid, tgid, cpu, sec, frac, event):
    f = fields(fmt, line)
    assert (f["comm"].strip(), f["tid"], f["tgid"], f["cpu"], f["sec"], f["frac"], f["event"]) == (
        comm,
        tid,
        tgid,
        cpu,
        sec,
        frac,
        event,
    )


@pytest.mark.parametrize(
    "line,expected",
    [
        (b"CPU:3 [LOST 12 EVENTS]\n", ("lost", (3, 12))),
        (b"CPU:1 [12 EVENTS DROPPED]\n", ("lost", (1, 12))),
        (b"CPU:1 [EVENTS DROPPED]\n", ("lost", (1, None))),
        (b"vm: CPU:2 [LOST 5 EVENTS]\n", ("lost", (2, 5))),
        (b"##### CPU 2 buffer started ####\n", ("lost", (2, None))),
        (b"# tracer: nop\n", ("ignored", None)),
        (b"\n", ("ignored", None)),
        (b"cpus=4\n", ("ignored", None)),
        (b"version = 7\n", ("ignored", None)),
        (b"CPU 1 is empty\n", ("ignored", None)),
        (b"hello world\n", ("malformed", None)),
        (b"\x00\xff\xfe", ("malformed", None)),
    ],
)
def test_other_lines(line, expected):
    assert classify_other(line) == expected


def test_format_detection():
    ft = [b"# tracer: nop\n", b"  a-1 [000] d..1. 1.000001: kvm_entry: PC: 0x1\n"]
    tc = [b"cpus=2\n", b"  a-1 [000]  1.000001: kvm_entry:   PC: 0x1\n"]
    tcb = [b"vm:     a-1 [000]  1.000001: kvm_entry:   PC: 0x1\n"] * 3
    pf = [b"  a  1 [000]  1.000001: kvm:kvm_entry: PC: 0x1\n"]
    assert detect_format(ft) == "ftrace"
    assert detect_format(tc) == "trace-cmd"
    assert detect_format(tcb) == "trace-cmd"
    assert detect_format(pf) == "perf"
    assert detect_format([b"garbage\n"]) is None


@pytest.mark.parametrize(
    "payload,code,detail",
    [
        (b"TRAP: HSR_EC: 0x0016 (HVC64), PC: 0xffff800008001234", 2, 0x16),
        (b"IRQ: HSR_EC: 0x0000 (UNKNOWN), PC: 0xffff800008001234", 0, 0),
        (b"SERROR: HSR_EC: 0x0000 (UNKNOWN), PC: 0x1", 1, 0),
        (b"ILLEGAL: HSR_EC: 0x0000 (UNKNOWN), PC: 0x1", 3, 0),
        (b"HYP_GONE: HSR_EC: 0x0000 (UNKNOWN), PC: 0x1", 0xBADCA11, 0),
        (b"0x7: HSR_EC: 0x0000 (UNKNOWN), PC: 0x1", 7, 0),  # unknown kept as a number
        (b"TRAP: HSR_EC: 0x003f (0x3f), PC: 0x1", 2, 0x3F),
    ],
)
def test_arm64_upstream(payload, code, detail):
    assert Decoder("arm64").exit(payload) == (code, detail)


@pytest.mark.parametrize(
    "payload,code,detail,name",
    [
        (b"0x2: HSR_EC: 0x0016 (HVC64), PC: 0x1234", 2, 0x16, "HVC64"),
        (b"TRAP: HSR_EC: 0x0016 (HVC64), PC: 0x1234", 1, 0, "EL1_SERROR"),  # 4.19's table: 1 = "TRAP"
        (b"IRQ: HSR_EC: 0x0024 (DABT_LOW), PC: 0x1234", 0, 0, "IRQ"),  # stale class dropped
        (b"0x80000002: HSR_EC: 0x0001 (WFx), PC: 0x1234", 2, 0x01 | SERROR_FLAG, "WFx+SERROR"),
        (b"0xffffffff80000000: HSR_EC: 0x0001 (WFx), PC: 0x1", 0, SERROR_FLAG, "IRQ+SERROR"),
    ],
)
def test_arm64_419(payload, code, detail, name):
    assert Decoder("arm64-4.19").exit(payload) == (code, detail)
    assert label("arm64", code, detail) == name


@pytest.mark.parametrize(
    "payload,code,detail",
    [
        # openEuler 4.19: masked record, table {0 IRQ, 1 SERROR, 2 TRAP, 0xbadca11 HYP_GONE}.
        (b"TRAP: HSR_EC: 0x0016 (HVC64), PC: 0xffff800008001234", 2, 0x16),
        (b"IRQ: HSR_EC: 0x0000 (UNKNOWN), PC: 0xffff800008001234", 0, 0),
        (b"SERROR: HSR_EC: 0x0000 (UNKNOWN), PC: 0x1", 1, 0),
        (b"HYP_GONE: HSR_EC: 0x0000 (UNKNOWN), PC: 0x1", 0xBADCA11, 0),
        (b"0x3: HSR_EC: 0x0000 (UNKNOWN), PC: 0x1", 3, 0),  # not in its table: a number
    ],
)
def test_arm64_openeuler_419(payload, code, detail):
    assert Decoder("arm64-openeuler-4.19").exit(payload) == (code, detail)


def test_trap_text_differs_between_the_419_layouts():
    text = b"TRAP: HSR_EC: 0x0016 (HVC64), PC: 0x1"
    assert Decoder("arm64-openeuler-4.19").exit(text) == (2, 0x16)  # upstream table: a trap
    assert Decoder("arm64-4.19").exit(text) == (1, 0)  # stale 4.19 table: an SError exit


def _oe419_lines(trap_ec: int) -> bytes:
    return (
        b"  CPU 0/KVM-7 [000] d..1. 1.000001: kvm_exit: TRAP: HSR_EC: 0x0016 (HVC64), PC: 0xffff800008001234\n"
        b"  CPU 0/KVM-7 [000] d..1. 1.000002: kvm_trap_enter: VCPU 0: HSR_EC=0x%04x (X)\n"
        b"  CPU 0/KVM-7 [000] d..1. 1.000005: kvm_entry: VCPU 0: PC=0xffff800008001238\n"
        b"  CPU 0/KVM-7 [000] d..1. 1.000010: kvm_trap_enter: VCPU 0: HSR_EC=0x0024 (DABT_LOW)\n"
        b"  CPU 0/KVM-7 [000] d..1. 1.000011: kvm_exit: IRQ: HSR_EC: 0x0000 (UNKNOWN), PC: 0xffff800008001234\n"
        b"  CPU 0/KVM-7 [000] d..1. 1.000012: kvm_trap_enter: VCPU 0: HSR_EC=0x0024 (DABT_LOW)\n"
        b"  CPU 0/KVM-7 [000] d..1. 1.000013: kvm_entry: VCPU 0: PC=0xffff800008001238\n" % trap_ec
    )


@pytest.mark.parametrize("trap_ec", [0x16, 0x24])
def test_openeuler_419_trap_enter_changes_nothing(trap_ec):
    """openEuler 4.19 also emits kvm_trap_enter; its kvm_exit already has the class, so the trap
    events (even a stray or contradicting one) neither change the layout nor any exit's key."""
    r = read_stream(io.BytesIO(_oe419_lines(trap_ec)))
    assert r.info.layout == "arm64-openeuler-4.19"
    got = {(k.code, k.detail): (v.pairs, v.total_ns) for k, v in r.snapshot.stats.items()}
    assert got == {(2, 0x16): (1, 4000), (0, 0): (1, 2000)}
    assert r.health.malformed == 0 and r.health.events == 7
    assert r.snapshot.health.unpaired_entries == 0


def test_openeuler_510_exit_and_trap():
    d = Decoder("arm64-openeuler-5.10")
    assert d.exit(b"VCPU 3: exit_type=TRAP, PC=0xffff800008001234") == (2, 0)
    assert d.exit(b"VCPU 3: exit_type=IRQ, PC=0xffff800008001234") == (0, 0)
    assert d.trap(b"VCPU 3: HSR_EC=0x0024 (DABT_LOW)") == 0x24


@pytest.mark.parametrize(
    "payload,code,isa",
    [
        (b"vcpu 0 reason EXTERNAL_INTERRUPT rip 0xffffffff81000000 info1 0x0 info2 0x0", 1, ISA_VMX),
        (b"vcpu 1 reason HLT rip 0x1 info1 0x0", 0x0C, ISA_VMX),
        (b"vcpu 1 reason INVALID_STATE FAILED_VMENTRY rip 0x1 info1 0x0", 0x80000021, ISA_VMX),
        (b"vcpu 0 reason npf rip 0x1 info1 0", 0x400, ISA_SVM),
        (b"vcpu 0 reason PF excp rip 0x1 info1 0", 0x4E, ISA_SVM),
        (b"reason HLT rip 0x1 info 0 0", 0x0C, ISA_VMX),  # old kernels, libtraceevent plugin
        (b"reason UNKNOWN (2147483681) rip 0x1 info 0 0", 0x80000021, ISA_VMX),
        (b"vcpu 0 reason 0x63 rip 0x1 info1 0", 0x63, ISA_VMX),
    ],
)
def test_x86(payload, code, isa):
    assert Decoder("x86").exit(payload) == (code, isa)


def test_x86_numbers_take_the_isa_of_named_reasons():
    d = Decoder("x86")
    d.exit(b"vcpu 0 reason hlt rip 0x1 info1 0")
    assert d.exit(b"vcpu 0 reason 0x1234 rip 0x1 info1 0") == (0x1234, ISA_SVM)


@pytest.mark.parametrize(
    "layout,payload",
    [
        ("arm64", b"TRAP: HSR_EC: 0x00"),  # truncated inside the reason
        ("arm64", b"FOO: HSR_EC: 0x0016 (HVC64), PC: 0x1"),
        ("arm64", b"garbage"),
        ("x86", b"vcpu 0 reason NOT_A_REASON rip 0x1 info"),
        ("x86", b"vcpu 0 reason HLT"),
        ("arm64-openeuler-5.10", b"VCPU 3: exit_type=BOGUS, PC=0x1"),
    ],
)
def test_undecodable(layout, payload):
    assert Decoder(layout).exit(payload) is None


def test_truncated_after_the_reason_still_decodes():
    assert Decoder("arm64").exit(b"TRAP: HSR_EC: 0x0016 (HVC64), PC: 0x") == (2, 0x16)


def test_wakeup():
    assert Decoder.wakeup(b"wait time 12345 ns, polling valid") == 12345
    assert Decoder.wakeup(b"poll time 7 ns, polling invalid") == 7
    assert Decoder.wakeup(b"nonsense") is None


def test_layout_detection():
    up = [(b"kvm_exit", b"TRAP: HSR_EC: 0x0016 (HVC64), PC: 0x1")]
    old = [(b"kvm_exit", b"0x2: HSR_EC: 0x0016 (HVC64), PC: 0x1")]
    stale = [(b"kvm_exit", b"IRQ: HSR_EC: 0x0016 (HVC64), PC: 0x1")]
    assert detect_layout(up) == "arm64"
    assert detect_layout(old) == "arm64-4.19"
    assert detect_layout(stale) == "arm64-4.19"
    vcpu_entry = (b"kvm_entry", b"VCPU 0: PC=0x1")
    trap = (b"kvm_trap_enter", b"VCPU 0: HSR_EC=0x0016 (HVC64)")
    # Raw-looking exits are mainline 4.19 whatever the entry prints; masked ones with a
    # "VCPU n:" entry are openEuler 4.19, whose kvm_trap_enter does not make them openEuler 5.10.
    assert detect_layout([*old, vcpu_entry]) == "arm64-4.19"
    assert detect_layout([*stale, vcpu_entry]) == "arm64-4.19"
    assert detect_layout([*up, vcpu_entry]) == "arm64-openeuler-4.19"
    assert detect_layout([vcpu_entry, *up, trap]) == "arm64-openeuler-4.19"
    assert detect_layout([*up, (b"kvm_entry", b"PC: 0x1")]) == "arm64"
    assert detect_layout([*up, (b"kvm_entry", b"vcpu 0, rip 0x1")]) == "arm64"  # not "VCPU n:"
    assert detect_layout([trap]) is None
    assert detect_layout([(b"kvm_exit", b"VCPU 0: exit_type=TRAP, PC=0x1")]) == "arm64-openeuler-5.10"
    assert detect_layout([(b"kvm_exit", b"vcpu 0 reason HLT rip 0x1")]) == "x86"
    assert detect_layout([(b"kvm_entry", b"PC: 0x1")]) is None


def test_layout_can_be_forced():
    text = b"  a-1 [000] d..1. 1.000001: kvm_exit: TRAP: HSR_EC: 0x0016 (HVC64), PC: 0x1\n"
    r = read_stream(io.BytesIO(text), layout="arm64-4.19")
    (key,) = r.snapshot.stats
    assert (key.code, key.detail) == (1, 0)  # SError exit, as 4.19 prints it
    r = read_stream(io.BytesIO(text))
    (key,) = r.snapshot.stats
    assert (key.code, key.detail) == (2, 0x16)


def test_timestamp_precisions_give_ns():
    lines = (
        b"  a-1 [000] d..1. 1.000001: kvm_exit: TRAP: HSR_EC: 0x0016 (HVC64), PC: 0x1\n"
        b"  a-1 [000] d..1. 1.000003500: kvm_entry: PC: 0x1\n"
    )
    r = read_stream(io.BytesIO(lines))
    (st,) = r.snapshot.stats.values()
    assert st.total_ns == 2500


def test_x86_a_cached_name_still_sets_the_isa():
    """The isa of a number is the last named reason's, whether that name was decoded or cached."""
    d = Decoder("x86")
    d.exit(b"vcpu 0 reason hlt rip 0x1 info1 0")
    d.exit(b"vcpu 0 reason HLT rip 0x1 info1 0")
    d.exit(b"vcpu 0 reason hlt rip 0x1 info1 0")  # from the cache
    assert d.exit(b"vcpu 0 reason 0x1234 rip 0x1 info1 0") == (0x1234, ISA_SVM)
    d.exit(b"vcpu 0 reason HLT rip 0x1 info1 0")  # from the cache
    assert d.exit(b"vcpu 0 reason 0x1234 rip 0x1 info1 0") == (0x1234, ISA_VMX)  # numbers are not cached
