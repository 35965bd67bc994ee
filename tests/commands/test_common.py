"""Options and output shared by the commands: argument checks, reason names, the emitter."""

from __future__ import annotations

import argparse
import io

import pytest

from kvmexit.commands.common import Emitter, add_filter_options, add_output_options, check_reasons, make_report
from kvmexit.errors import UsageError
from kvmexit.model import ExitKey, ExitStats, Snapshot
from kvmexit.reasons import is_reason_name, reason_names


def options(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_filter_options(parser)
    add_output_options(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    "arch, name",
    [("arm64", "WFx"), ("arm64", "wfx+SERROR"), ("arm64", "EC_0x2a"), ("arm64", "IRQ"), ("x86", "HLT"), ("x86", "npf")],
)
def test_names_the_reports_can_show_are_accepted(arch, name):
    assert is_reason_name(arch, name)
    check_reasons(arch, [name])


def test_every_table_name_is_a_reason_name():
    for arch in ("arm64", "x86"):
        names = reason_names(arch)
        assert len(names) > 40
        assert all(is_reason_name(arch, n) for n in names)


@pytest.mark.parametrize(
    "arch, name, hint",
    [
        ("arm64", "wfi", "did you mean WFx?"),
        ("arm64", "HLT", "arm64 reasons are named as in the REASON column"),
        ("x86", "WFx", "x86 reasons are named as in the REASON column"),
        ("x86", "EPT_VIOLATON", "did you mean EPT_VIOLATION"),
        ("arm64", "EC_0xzz", "arm64 reasons are named"),
    ],
)
def test_unknown_reasons_are_refused_with_close_names(arch, name, hint):
    with pytest.raises(UsageError) as e:
        check_reasons(arch, [name])
    assert str(e.value) == "argument --reason: no %s exit is named %r" % (arch, name)
    assert e.value.hint is not None and e.value.hint.startswith(hint)
    assert e.value.exit_code == 2


def test_an_idle_host_is_explained_once_then_when_it_changes():
    out = io.StringIO()
    args = options()
    emitter = Emitter(args, {"kind": "live"}, out=out)
    idle = make_report(Snapshot("arm64", {}), args)
    busy = make_report(Snapshot("arm64", {ExitKey(1, 2, 0, 0): ExitStats(pairs=1, total_ns=5)}), args)
    for why in ("no VMs are running", "no VMs are running", "no VMs are running", "2 VMs exist", "2 VMs exist"):
        emitter.emit(idle, why_empty=why)
    emitter.emit(busy)
    emitter.emit(idle, why_empty="2 VMs exist")
    lines = [line for line in out.getvalue().splitlines() if line.startswith("kvmexit:")]
    assert lines == [
        "kvmexit: no KVM exits traced (no VMs are running)",
        "kvmexit: no KVM exits traced (2 VMs exist)",
        "kvmexit: 1 exits: 1 paired, 0 open, 0 unfinished, 0 abandoned by exited threads; 0 unpaired entries; "
        "map full: 0 start, 0 stats",
        "kvmexit: no KVM exits traced (2 VMs exist)",
    ]


def test_sub_reasons_need_a_grouping_with_reason_and_a_source_that_traced_them():
    from kvmexit.commands.common import wants_sub
    from kvmexit.model import SubKey

    assert not wants_sub(options())
    assert wants_sub(options("--sub")) and wants_sub(options("--by", "sub"))
    for by in ("vcpu", "vm"):
        with pytest.raises(UsageError, match="no REASON to split"):
            wants_sub(options("--sub", "--by", by))
    key = ExitKey(1, 2, 2, 0x01)
    plain = Snapshot("arm64", {key: ExitStats(pairs=1, total_ns=5, min_ns=5, max_ns=5)})
    with pytest.raises(UsageError, match="no sub-reasons"):
        make_report(plain, options("--sub"))
    traced = Snapshot(
        "arm64",
        plain.stats,
        subs={SubKey(1, 2, 2, 0x01, 2): ExitStats(pairs=1, total_ns=5, min_ns=5, max_ns=5)},
        subs_known=True,
    )
    assert [(r.reason, r.sub) for r in make_report(traced, options("--sub")).rows] == [("WFx", "WFE")]
    assert [r.sub for r in make_report(traced, options()).rows] == [None]


def test_duration_ns_units():
    from kvmexit.commands.common import duration_ns

    assert [duration_ns(t) for t in ("750ns", "500us", "500\u00b5s", "2.5ms", "1s", "0ms")] == [
        750,
        500_000,
        500_000,
        2_500_000,
        1_000_000_000,
        0,
    ]
