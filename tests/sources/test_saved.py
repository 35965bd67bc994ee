"""Saved JSON reports read back: validated, added up over intervals, equal to what was written."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmexit.commands.report import EXAMPLE_NAMES, EXAMPLE_TRACE
from kvmexit.model import ExitKey, build_report, delta
from kvmexit.reasons import label
from kvmexit.sources.saved import BadReport, load_report, parse_report
from kvmexit.sources.trace import read_trace
from kvmexit.views import report_document

pytest.importorskip("jsonschema")


@pytest.fixture(scope="module")
def example():
    return read_trace(EXAMPLE_TRACE, names_path=EXAMPLE_NAMES)


def dumps(*docs) -> bytes:
    return "".join(json.dumps(d) + "\n" for d in docs).encode()


@pytest.mark.parametrize("group_by", ["thread", "vcpu", "vm", "reason"])
def test_a_saved_report_reads_back_to_the_same_document(example, group_by):
    source = example.info.source()
    doc = report_document(build_report(example.snapshot, label, group_by), source, None)
    saved = parse_report(dumps(doc))
    assert saved.group_by == group_by
    assert saved.seconds == pytest.approx(example.snapshot.time_ns / 1e9)
    again = report_document(replace(saved.report, rows=build_report_rows(saved, group_by)), saved.source, None)
    assert again == doc


def build_report_rows(saved, group_by):
    """The loaded rows in the order the original report had (by count)."""
    from kvmexit.model import SORT_KEYS

    return sorted(saved.report.rows, key=SORT_KEYS["count"])


def test_a_report_by_thread_gives_back_the_snapshot_for_every_grouping(example, tmp_path):
    doc = report_document(build_report(example.snapshot, label), example.info.source(), None)
    path = tmp_path / "a.json"
    path.write_bytes(dumps(doc))
    saved = load_report(str(path))
    assert saved.snapshot is not None
    assert dict(saved.snapshot.stats) == dict(example.snapshot.stats)
    for group_by in ("vcpu", "vm", "reason"):
        want = report_document(build_report(example.snapshot, label, group_by), {}, None)
        got = report_document(build_report(saved.snapshot, label, group_by), {}, None)
        assert got == want


def test_interval_documents_add_up_to_the_run(example):
    """-i --json: the deltas of each interval add up to the cumulative snapshot."""
    snap = example.snapshot
    keys = sorted(snap.stats)
    first = replace(snap, stats={k: snap.stats[k] for k in keys[: len(keys) // 2]}, time_ns=0)
    docs = []
    for index, (cur, prev) in enumerate([(first, replace(snap, stats={})), (snap, first)]):
        d = delta(cur, prev) if index else cur
        interval = {"index": index, "start": "s%d" % index, "end": "e%d" % index, "seconds": 1.5}
        docs.append(report_document(build_report(d, label), {"kind": "live", "arch": "arm64"}, interval))
    saved = parse_report(dumps(*docs))
    assert saved.seconds == 3.0
    assert len(saved.intervals) == 2 and len(saved.interval_rows) == 2
    assert saved.snapshot is not None
    assert {k: v for k, v in saved.snapshot.stats.items()} == {
        ExitKey(k.tgid, k.tid, k.code, k.detail): v for k, v in snap.stats.items()
    }


def test_several_reports_without_intervals_are_refused(example):
    doc = report_document(build_report(example.snapshot, label), example.info.source(), None)
    with pytest.raises(BadReport, match="several documents without intervals"):
        parse_report(dumps(doc, doc))


@pytest.mark.parametrize(
    "text,message",
    [
        (b"", "no JSON report"),
        (b"{", "not JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[1, 2]", 'no "schema" field'),
        (b'{"schema": "kvmexit/3"}', "'kvmexit/3' is not one this kvmexit reads"),
        (b'{"schema": "kvmexit/../x"}', "is not one this kvmexit reads"),
        (b'{"schema": "kvmexit/1"}', "not a valid kvmexit/1 report"),
        (b'{"schema": "kvmexit/2"}', "not a valid kvmexit/2 report"),
        (b"[" * 100000 + b"]" * 100000, 'nested too deeply|not a|no "schema"'),
    ],
)
def test_bad_files_are_one_clear_error(text, message):
    with pytest.raises(BadReport, match=message):
        parse_report(text, "f.json")


def test_inconsistent_rows_are_refused(example):
    doc = report_document(build_report(example.snapshot, label), example.info.source(), None)
    doc["rows"][0]["count"] += 1
    with pytest.raises(BadReport, match="not pairs \\+ unfinished \\+ open"):
        parse_report(dumps(doc))
    doc["rows"][0]["count"] -= 1
    doc["rows"][0]["hist"][0][2] += 1
    with pytest.raises(BadReport, match="histogram holds"):
        parse_report(dumps(doc))


def test_a_report_of_an_older_kvmexit_without_seconds_loads(example):
    doc = report_document(build_report(example.snapshot, label), example.info.source(), None)
    del doc["seconds"]
    saved = parse_report(dumps(doc))
    assert saved.seconds is None and saved.snapshot is not None


SEED = None


def seed_doc() -> bytes:
    global SEED
    if SEED is None:
        snap = read_trace(EXAMPLE_TRACE, names_path=EXAMPLE_NAMES).snapshot
        SEED = json.dumps(report_document(build_report(snap, label), {"kind": "trace", "arch": "arm64"}, None))
    return SEED.encode()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pos=st.integers(min_value=0), junk=st.binary(max_size=12), how=st.integers(min_value=0, max_value=2))
def test_mutated_reports_never_raise_anything_but_bad_report(pos, junk, how):
    data = seed_doc()
    pos %= len(data) + 1
    if how == 0:
        data = data[:pos]
    elif how == 1:
        data = data[:pos] + junk + data[pos:]
    else:
        data = data[:pos] + junk + data[pos + len(junk) :]
    try:
        parse_report(data)
    except BadReport:
        pass


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    doc=st.fixed_dictionaries(
        {"schema": st.just("kvmexit/1")},
        optional={k: JSON_VALUES for k in ("source", "interval", "seconds", "group_by", "rows", "totals")},
    )
)
def test_arbitrary_json_never_raises_anything_but_bad_report(doc):
    try:
        parse_report(json.dumps(doc).encode())
    except BadReport:
        pass


NUMERIC_FIELDS = ("count", "pairs", "open", "unfinished", "total_ns", "min_ns", "max_ns", "halt_ns", "tgid", "tid")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    edits=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=11),
            st.sampled_from((*NUMERIC_FIELDS, "hist", "reason", "vcpu")),
            st.none() | st.integers(min_value=-3, max_value=10**12) | st.lists(st.lists(st.integers(), max_size=4)),
        ),
        min_size=1,
        max_size=3,
    )
)
def test_edited_values_load_or_are_one_bad_report(edits):
    doc = json.loads(seed_doc())
    for index, name, value in edits:
        doc["rows"][index % len(doc["rows"])][name] = value
    try:
        saved = parse_report(json.dumps(doc).encode())
    except BadReport:
        return
    assert sum(r.count for r in saved.report.rows) == sum(r["count"] for r in doc["rows"])


def test_without_jsonschema_the_error_names_it(monkeypatch, example):
    import sys

    import kvmexit.sources.saved as saved

    doc = report_document(build_report(example.snapshot, label), example.info.source(), None)
    monkeypatch.setitem(sys.modules, "jsonschema", None)
    monkeypatch.setattr(saved, "_VALIDATORS", {})
    with pytest.raises(BadReport, match="needs the jsonschema module") as e:
        parse_report(dumps(doc))
    assert e.value.hint is not None and "python3-jsonschema" in e.value.hint


def test_an_unknown_tgid_reads_back_as_unknown(data_dir):
    result = read_trace(str(data_dir / "traces" / "arm64-4.19.synthetic.trace"), use_names=False)
    assert {k.tgid for k in result.snapshot.stats} == {None}
    doc = report_document(build_report(result.snapshot, label), result.info.source(), None)
    saved = parse_report(dumps(doc))
    assert saved.snapshot is not None and dict(saved.snapshot.stats) == dict(result.snapshot.stats)
    assert report_document(build_report(saved.snapshot, label), result.info.source(), None) == doc


def test_guest_time_and_the_split_read_back_and_old_documents_leave_them_unknown(example):
    """Schema 2 carries guest time and the split (null where not measured); a schema 1 document,
    which has neither, reads back with them unknown, never as 0."""
    snap = example.snapshot
    key = sorted(snap.stats)[0]
    measured = snap.stats[key]._replace(guest_ns=7000, vmm_ns=30, preempt_ns=20, blocked_ns=10, halt_ns=0)
    snap = replace(snap, stats={key: measured}, unknown=frozenset())
    doc = report_document(build_report(snap, label), example.info.source(), None)
    row = doc["rows"][0]
    assert (row["guest_ns"], row["vmm_ns"], row["preempt_ns"], row["blocked_ns"]) == (7000, 30, 20, 10)
    assert row["kernel_ns"] == measured.total_ns - 60
    assert row["exit_share"] == pytest.approx(measured.total_ns / (measured.total_ns + 7000))
    saved = parse_report(dumps(doc))
    assert saved.snapshot is not None and saved.snapshot.unknown == frozenset()
    assert saved.snapshot.stats[key] == measured
    # the default live run: guest time measured, the split not
    unsplit = replace(snap, unknown=frozenset(("vmm_ns", "preempt_ns", "blocked_ns")))
    doc = report_document(build_report(unsplit, label), example.info.source(), None)
    assert doc["rows"][0]["vmm_ns"] is None and doc["rows"][0]["kernel_ns"] is None
    assert doc["totals"]["guest_ns"] == 7000 and doc["totals"]["preempt_ns"] is None
    assert parse_report(dumps(doc)).report.unknown == unsplit.unknown
    # schema 1: as an older kvmexit wrote it
    old = json.loads(json.dumps(doc))
    old["schema"] = "kvmexit/1"
    del old["by_sub"]
    for part in [*old["rows"], old["totals"]]:
        for f in ("guest_ns", "exit_share", "kernel_ns", "vmm_ns", "preempt_ns", "blocked_ns"):
            del part[f]
        for f in ("sub", "sub_value", "sub_map_full"):  # schema 2's sub-reasons
            part.pop(f, None)
    saved = parse_report(dumps(old))
    assert {"guest_ns", "vmm_ns", "preempt_ns", "blocked_ns"} <= saved.report.unknown
    assert saved.snapshot is not None and saved.snapshot.stats[key].guest_ns == 0
    # schema 2 as kvmexit wrote it before guest time and the split: read, with them unknown
    early = json.loads(json.dumps(doc))
    for part in [*early["rows"], early["totals"]]:
        for f in ("guest_ns", "exit_share", "kernel_ns", "vmm_ns", "preempt_ns", "blocked_ns"):
            del part[f]
    assert {"guest_ns", "vmm_ns"} <= parse_report(dumps(early)).report.unknown
