"""The Prometheus collector on hand-made snapshots (no BPF): families, labels, buckets."""

from __future__ import annotations

import math

import pytest

prometheus_client = pytest.importorskip("prometheus_client", reason="prometheus_client not installed")

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from kvmexit import model  # noqa: E402
from kvmexit.model import HIST_SLOTS, ExitKey, ExitStats, Health, Snapshot, ThreadInfo, bucket_bounds, hist_slot  # noqa: E402
from kvmexit.reasons import label  # noqa: E402
from kvmexit.views import prometheus as view  # noqa: E402


def stats(durations, unfinished=0, open_=0, halt=0) -> ExitStats:
    hist = [0] * HIST_SLOTS
    for d in durations:
        hist[hist_slot(d)] += 1
    return ExitStats(
        pairs=len(durations),
        unfinished=unfinished,
        open=open_,
        total_ns=sum(durations),
        min_ns=min(durations) if durations else None,
        max_ns=max(durations) if durations else None,
        halt_ns=halt,
        hist=tuple(hist),
    )


WFX, HVC = (2, 0x01), (2, 0x16)  # arm64 (code, detail): trap with its exception class

SNAP = Snapshot(
    arch="arm64",
    stats={
        ExitKey(100, 101, *WFX): stats([1_500, 3_000_000], halt=2_000_000),
        ExitKey(100, 101, *HVC): stats([700, 900, 5_000], unfinished=1),
        ExitKey(100, 102, *HVC): stats([2_000], open_=1),
        ExitKey(200, 201, *HVC): stats([40_000]),
        # a second thread of vCPU 0 of web01 (a vCPU re-created): same labels without --per-thread
        ExitKey(100, 103, *HVC): stats([10]),
    },
    health=Health(unpaired_entries=3, start_map_full=4, stats_map_full=5, abandoned=1),
    threads={
        101: ThreadInfo("CPU 0/KVM", "web01", 0),
        102: ThreadInfo("CPU 1/KVM", "web01", 1),
        103: ThreadInfo("CPU 0/KVM", "web01", 0),
        201: ThreadInfo("worker", None, None),
    },
)


def scrape(snapshot=SNAP, per_thread=False, lost=0, sub_label=None):
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(
        view.ExitCollector(lambda: snapshot, label, per_thread, lambda: lost, {"arch": "arm64"}, sub_label=sub_label)
    )
    text = prometheus_client.generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def lbl(vm, vcpu, reason, **more):
    return tuple(sorted(dict(vm=vm, vcpu=vcpu, reason=reason, **more).items()))


def test_counters_per_vm_vcpu_reason():
    got = scrape()
    assert got["kvmexit_exits_total", lbl("web01", "0", "WFx")] == 2
    assert got["kvmexit_exits_total", lbl("web01", "0", "HVC64")] == 4 + 1  # two threads merged
    assert got["kvmexit_exits_total", lbl("web01", "1", "HVC64")] == 2  # one open
    assert got["kvmexit_exits_total", lbl("tgid-200", "", "HVC64")] == 1  # unnamed, no vCPU name
    assert got["kvmexit_exit_seconds_total", lbl("web01", "0", "WFx")] == 3_001_500 / 1e9
    assert got["kvmexit_halted_seconds_total", lbl("web01", "0", "WFx")] == 2_000_000 / 1e9
    assert got["kvmexit_exit_duration_seconds_count", lbl("web01", "0", "HVC64")] == 4
    assert got["kvmexit_exit_duration_seconds_sum", lbl("web01", "0", "HVC64")] == 6_610 / 1e9
    series = {labels for name, labels in got if name == "kvmexit_exits_total"}
    assert len(series) == 4


def test_histogram_buckets_are_cumulative_kernel_buckets():
    got = scrape()
    buckets = {
        dict(labels)["le"]: v
        for (name, labels), v in got.items()
        if name == "kvmexit_exit_duration_seconds_bucket"
        and ("vm", "web01") in labels
        and ("vcpu", "0") in labels
        and ("reason", "HVC64") in labels
    }
    durations = [700, 900, 5_000, 10]
    les = sorted(float(le) for le in buckets)
    assert les[-1] == math.inf
    expected_edges = [*sorted({bucket_bounds(s)[1] / 1000000000.0 for s in range(HIST_SLOTS - 1)}), math.inf]
    assert les == expected_edges
    for le, count in buckets.items():
        assert count == sum(1 for d in durations if d / 1e9 <= float(le)), le


def test_bucket_edges_follow_the_models_bucket_function(monkeypatch):
    """Edges are derived, never hard-coded: a finer bucket function gives finer edges."""
    monkeypatch.setattr(view, "HIST_SLOTS", 6)
    monkeypatch.setattr(view, "bucket_bounds", lambda slot: (slot * 10, slot * 10 + 9))
    assert view.bucket_edges() == [(0, 9e-9), (1, 19e-9), (2, 29e-9), (3, 39e-9), (4, 49e-9), (5, math.inf)]
    assert model.bucket_bounds(3) != (30, 39)


def test_slots_sharing_an_upper_bound_make_one_bucket():
    edges = view.bucket_edges()
    uppers = [u for _, u in edges]
    assert uppers == sorted(set(uppers))
    assert edges[-1] == (HIST_SLOTS - 1, math.inf)
    assert [s for s, _ in edges] == sorted(s for s, _ in edges)


def test_health_metrics():
    got = scrape(lost=7)
    assert got["kvmexit_unpaired_entries_total", ()] == 3
    assert got["kvmexit_map_full_total", (("map", "start"),)] == 4
    assert got["kvmexit_map_full_total", (("map", "stats"),)] == 5
    assert got["kvmexit_abandoned_exits_total", ()] == 1
    assert got["kvmexit_unfinished_exits_total", ()] == 1
    assert got["kvmexit_lost_events_total", ()] == 7
    assert got["kvmexit_open_exits", ()] == 1
    assert got["kvmexit_halt_traced", ()] == 1
    assert got["kvmexit_tracing_info", (("arch", "arm64"),)] == 1


def test_per_thread_labels_only_when_asked():
    got = scrape(per_thread=True)
    assert got["kvmexit_exits_total", lbl("web01", "0", "HVC64", tgid="100", tid="101")] == 4
    assert got["kvmexit_exits_total", lbl("web01", "0", "HVC64", tgid="100", tid="103")] == 1
    assert not any("tid" in dict(labels) for _, labels in scrape())


def test_halted_seconds_absent_when_halts_are_not_traced():
    import dataclasses

    got = scrape(dataclasses.replace(SNAP, halt_known=False))
    assert not any(name == "kvmexit_halted_seconds_total" for name, _ in got)
    assert got["kvmexit_halt_traced", ()] == 0


def test_sub_reason_label_only_when_asked():
    from dataclasses import replace

    from kvmexit.model import SubKey
    from kvmexit.reasons.subreasons import hvc_sub, sub_label

    psci = hvc_sub(0x84000000)
    snap = replace(
        SNAP,
        subs={SubKey(100, 101, *HVC, psci): stats([700, 900]), SubKey(100, 103, *HVC, psci): stats([10])},
        subs_known=True,
    )
    assert not any("sub_reason" in dict(labels) for _, labels in scrape(snap))
    got = scrape(snap, sub_label=sub_label)
    assert got["kvmexit_exits_total", lbl("web01", "0", "HVC64", sub_reason="PSCI_VERSION")] == 3
    assert got["kvmexit_exits_total", lbl("web01", "0", "HVC64", sub_reason="-")] == 2  # 5,000 ns + unfinished
    assert got["kvmexit_exits_total", lbl("web01", "0", "WFx", sub_reason="-")] == 2


# -- guest residency and the split of the exit time (issue 11) -------------------------------------


def with_split(st: ExitStats, guest: int, vmm: int, preempt: int, blocked: int) -> ExitStats:
    assert st.halt_ns + vmm + preempt + blocked <= st.total_ns  # as the kernel charges them
    return st._replace(guest_ns=guest, vmm_ns=vmm, preempt_ns=preempt, blocked_ns=blocked)


SPLIT_SNAP = Snapshot(
    arch="arm64",
    stats={
        # web01 vCPU 0: WFx (mostly halted) and HVC64 on two threads (merged under one label set)
        ExitKey(100, 101, *WFX): with_split(stats([1_500, 3_000_000], halt=2_000_000), 7_000, 0, 400_000, 1_000),
        ExitKey(100, 101, *HVC): with_split(stats([700, 900, 5_000], unfinished=1), 90_000, 3_000, 1_000, 0),
        ExitKey(100, 103, *HVC): with_split(stats([10]), 11, 2, 0, 3),
        ExitKey(200, 201, *HVC): with_split(stats([40_000]), 1_000_000, 30_000, 0, 5_000),
    },
    threads=SNAP.threads,
    unknown=frozenset(),
)


def split_rows(got, name):
    """{(vm, vcpu, reason, part): value} of one metric."""
    out = {}
    for (n, labels), v in got.items():
        if n == name:
            d = dict(labels)
            out[d["vm"], d["vcpu"], d["reason"], d.get("part")] = v
    return out


def test_guest_seconds_and_the_parts_of_the_exit_time_per_label_set():
    got = scrape(SPLIT_SNAP)
    guest = split_rows(got, "kvmexit_guest_seconds_total")
    assert guest == {
        ("web01", "0", "WFx", None): 7_000 / 1e9,
        ("web01", "0", "HVC64", None): 90_011 / 1e9,  # two threads of vCPU 0, summed
        ("tgid-200", "", "HVC64", None): 1_000_000 / 1e9,
    }
    parts = split_rows(got, "kvmexit_exit_part_seconds_total")
    # the kernel's part is what the others leave: total - halt - vmm - preempt - blocked
    assert parts == {
        ("web01", "0", "WFx", "kernel"): (3_001_500 - 2_000_000 - 0 - 400_000 - 1_000) / 1e9,
        ("web01", "0", "WFx", "vmm"): 0.0,
        ("web01", "0", "WFx", "halt"): 2_000_000 / 1e9,
        ("web01", "0", "WFx", "preempt"): 400_000 / 1e9,
        ("web01", "0", "WFx", "blocked"): 1_000 / 1e9,
        ("web01", "0", "HVC64", "kernel"): (6_610 - 0 - 3_002 - 1_000 - 3) / 1e9,
        ("web01", "0", "HVC64", "vmm"): 3_002 / 1e9,
        ("web01", "0", "HVC64", "halt"): 0.0,
        ("web01", "0", "HVC64", "preempt"): 1_000 / 1e9,
        ("web01", "0", "HVC64", "blocked"): 3 / 1e9,
        ("tgid-200", "", "HVC64", "kernel"): (40_000 - 30_000 - 5_000) / 1e9,
        ("tgid-200", "", "HVC64", "vmm"): 30_000 / 1e9,
        ("tgid-200", "", "HVC64", "halt"): 0.0,
        ("tgid-200", "", "HVC64", "preempt"): 0.0,
        ("tgid-200", "", "HVC64", "blocked"): 5_000 / 1e9,
    }
    seconds = split_rows(got, "kvmexit_exit_seconds_total")
    for (vm, vcpu, reason, _), total in seconds.items():  # summed over part: the exit time
        assert math.isclose(sum(v for k, v in parts.items() if k[:3] == (vm, vcpu, reason)), total, rel_tol=1e-12)
    # the same labels as the exit-time counters, plus part
    assert {k[:3] for k in parts} == {k[:3] for k in seconds} == {k[:3] for k in guest}


def test_parts_not_measured_are_absent_never_zero():
    import dataclasses

    got = scrape(dataclasses.replace(SPLIT_SNAP, unknown=frozenset({"vmm_ns"})))  # no kvm_userspace_exit
    parts = split_rows(got, "kvmexit_exit_part_seconds_total")
    assert {k[3] for k in parts} == {"halt", "preempt", "blocked"}  # no vmm, so no kernel either
    assert parts["web01", "0", "WFx", "preempt"] == 400_000 / 1e9

    got = scrape(dataclasses.replace(SPLIT_SNAP, halt_known=False))  # no kvm_vcpu_wakeup
    assert {k[3] for k in split_rows(got, "kvmexit_exit_part_seconds_total")} == {"vmm", "preempt", "blocked"}

    no_split = dataclasses.replace(SPLIT_SNAP, unknown=frozenset(model.SPLIT_FIELDS))  # --guest alone
    got = scrape(no_split)
    assert not split_rows(got, "kvmexit_exit_part_seconds_total")
    assert split_rows(got, "kvmexit_guest_seconds_total")["web01", "0", "WFx", None] == 7_000 / 1e9

    got = scrape(dataclasses.replace(no_split, unknown=no_split.unknown | {"guest_ns"}))  # neither
    assert not any(name.startswith(("kvmexit_guest_", "kvmexit_exit_part_")) for name, _ in got)
    assert got["kvmexit_exits_total", lbl("web01", "0", "WFx")] == 2  # the rest as before


def test_parts_with_sub_reasons_add_up_per_sub_reason():
    from dataclasses import replace

    from kvmexit.model import SubKey
    from kvmexit.reasons.subreasons import hvc_sub, sub_label

    psci = hvc_sub(0x84000000)
    sub = with_split(stats([700, 900]), 50_000, 1_000, 500, 0)
    snap = replace(SPLIT_SNAP, subs={SubKey(100, 101, *HVC, psci): sub}, subs_known=True)
    got = scrape(snap, sub_label=sub_label)
    part = "kvmexit_exit_part_seconds_total"
    assert got[part, lbl("web01", "0", "HVC64", sub_reason="PSCI_VERSION", part="vmm")] == 1_000 / 1e9
    assert got[part, lbl("web01", "0", "HVC64", sub_reason="PSCI_VERSION", part="kernel")] == 100 / 1e9
    # the rest of vCPU 0's HVC64: thread 101's other exit and thread 103's, parts subtracted exactly
    assert got[part, lbl("web01", "0", "HVC64", sub_reason="-", part="vmm")] == 2_002 / 1e9
    assert got[part, lbl("web01", "0", "HVC64", sub_reason="-", part="preempt")] == 500 / 1e9
    assert got["kvmexit_guest_seconds_total", lbl("web01", "0", "HVC64", sub_reason="-")] == 40_011 / 1e9
