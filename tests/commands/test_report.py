"""``kvmexit report``: the live tool's views from trace files, errors as one line."""

from __future__ import annotations

import csv
import gzip
import io
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from kvmexit.cli import main
from kvmexit.views import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parent.parent.parent
TRACES = ROOT / "tests" / "data" / "traces"
ARM = str(TRACES / "arm64-upstream.synthetic.trace")
SCHEMA = ROOT / "src" / "kvmexit" / "schema" / "report-v2.json"


def run(capsys, *args):
    rc = main(["report", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_table_has_the_live_columns(capsys):
    rc, out, err = run(capsys, ARM)
    assert rc == 0
    lines = out.splitlines()
    # the trace has sched_switch lines: preempted and blocked time are known (no kvm_userspace_exit:
    # VMM time is not, and so neither is the kernel's part)
    assert lines[0].split() == [
        "TGID", "TID", "VM", "VCPU", "REASON", "COUNT", "AVG", "MIN", "MAX", "P99", "HALT%", "PREEMPT%", "BLOCKED%",
        "EXIT%",
    ]  # fmt: skip
    assert lines[1].split()[:6] == ["1200", "1202", "-", "1", "IRQ", "5"]
    assert (
        "kvmexit: 26 exits: 23 paired, 2 open, 1 unfinished, 0 abandoned by exited threads; 1 unpaired entries" in out
    )
    assert err == ""


def test_by_sort_top(capsys):
    rc, out, _ = run(capsys, "--by", "vm", "--sort", "total", ARM)
    assert rc == 0
    rows = [line.split() for line in out.splitlines()[1:3]]
    # VM 1200: 19 pairs, 2712us, 2250us halted; VM 1300: 4 pairs, 62us, 45us halted. The vCPU
    # threads' sleeps (sched_switch S) are inside their halts: no preempted or other blocked time.
    assert [r[:10] for r in rows] == [
        ["1200", "-", "21", "143us", "3us", "1ms", "1ms", "83%", "0%", "0%"],
        ["1300", "-", "5", "15.5us", "4us", "50us", "50us", "73%", "0%", "0%"],
    ]
    rc, out, _ = run(capsys, "--by", "reason", "--top", "1", ARM)
    assert out.splitlines()[1].split()[:2] == ["IRQ", "8"]
    assert len([line for line in out.splitlines() if line.strip()]) == 3  # header, 1 row, health


def test_filters(capsys):
    _, out, _ = run(capsys, "-t", "1301", "--json", ARM)
    doc = json.loads(out)
    assert {r["tid"] for r in doc["rows"]} == {1301}
    _, out, _ = run(capsys, "-p", "1200", "--reason", "WFx", "--json", ARM)
    doc = json.loads(out)
    assert {(r["tid"], r["reason"], r["count"]) for r in doc["rows"]} == {(1201, "WFx", 3), (1202, "WFx", 2)}


def test_json_document_and_source(capsys):
    jsonschema = pytest.importorskip("jsonschema")
    _rc, out, err = run(capsys, "--json", ARM)
    doc = json.loads(out)
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))
    assert doc["source"]["kind"] == "trace"
    assert doc["source"]["path"] == ARM
    assert (doc["source"]["format"], doc["source"]["layout"], doc["source"]["arch"]) == ("ftrace", "arm64", "arm64")
    assert doc["totals"]["exits"] == 26 and doc["totals"]["unpaired_entries"] == 1
    assert "26 exits" in err  # the self-check goes to stderr in machine formats


def test_csv(capsys):
    _rc, out, _ = run(capsys, "--csv", ARM)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 11
    assert sum(int(r["count"]) for r in rows) == 26


def test_hist(capsys):
    _rc, out, _ = run(capsys, "--hist", "-t", "1202", "--reason", "WFx", ARM)
    assert "2 pairs" in out and "|****" in out


def test_format_forced(capsys):
    _rc, out, _ = run(capsys, "--format", "perf", "--json", str(TRACES / "arm64-upstream.synthetic.perf"))
    assert json.loads(out)["source"]["format"] == "perf"


def test_stdin_gzip():
    data = gzip.compress((TRACES / "x86-vmx.synthetic.trace").read_bytes())
    p = subprocess.run(
        [sys.executable, "-m", "kvmexit", "report", "--json", "-"],
        input=data,
        capture_output=True,
        cwd=str(ROOT / "src"),
        check=True,
    )
    doc = json.loads(p.stdout)
    assert doc["source"]["path"] == "<stdin>" and doc["source"]["compression"] == "gzip"
    assert doc["totals"]["exits"] == 27


def test_no_kvm_events_is_one_error_line(capsys, tmp_path):
    p = tmp_path / "empty.trace"
    p.write_text("# tracer: nop\nhello\n")
    rc, out, err = run(capsys, str(p))
    assert rc != 0 and out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("kvmexit report: error: no KVM exit/entry events")


def test_malformed_lines_summarised_in_one_line(capsys, tmp_path):
    lines = Path(ARM).read_text().splitlines()
    bad = lines[:20] + ["garbage %d" % i for i in range(7)] + lines[20:]
    p = tmp_path / "t"
    p.write_text("\n".join(bad) + "\n")
    rc, _out, err = run(capsys, str(p))
    assert rc == 0
    assert err.splitlines() == ["kvmexit report: 7 malformed lines skipped (line 21, 22, 23, 24, 25, ...)"]


def test_lost_events_are_reported(capsys):
    rc, _out, err = run(capsys, str(TRACES / "arm64-upstream-lost.synthetic.trace"))
    assert rc == 0
    assert err.splitlines() == [
        "kvmexit report: events lost on CPU 0 (3 events), CPU 2 (unknown number); pairing across the gap is "
        "unreliable: 1 open exit of thread 1201 closed as unfinished"
    ]


def test_example(capsys):
    rc, out, err = run(capsys, "--example", "--json")
    assert rc == 0
    assert err.splitlines()[0].startswith("kvmexit: showing the example trace shipped with kvmexit (real arm64")
    doc = json.loads(out)
    assert doc["source"]["example"] is True and doc["source"]["arch"] == "arm64"
    assert doc["totals"]["exits"] == 843  # tests/data/traces/README.md: the per-thread table
    assert {r["vm"] for r in doc["rows"]} == {"e2e-vm"}
    # WFI blocked the vCPUs: the shipped example shows WFx time as halt time.
    wfx = [r for r in doc["rows"] if r["reason"] == "WFx"]
    assert sorted(r["halt_ns"] for r in wfx) == [35141040, 74218272]


def test_report_example_is_callable_by_the_live_command(capsys):
    import argparse

    from kvmexit.commands.common import add_filter_options, add_output_options
    from kvmexit.commands.report import report_example

    parser = argparse.ArgumentParser()
    add_filter_options(parser)
    add_output_options(parser)
    args = parser.parse_args(["--by", "vm"])
    assert report_example(args, why="no KVM on this host") == 0
    out, err = capsys.readouterr()
    assert err.splitlines()[0].endswith("not this machine: no KVM on this host")
    assert "e2e-vm" in out


@pytest.mark.parametrize("args", [[], ["--example", "x"]])
def test_usage_errors(capsys, args):
    rc, _out, err = run(capsys, *args)
    assert rc != 0 and len(err.splitlines()) == 1


# -- the slow-exit log (--slower-than) ----------------------------------------------------------


def test_slower_than_lists_slow_exits_before_the_report_and_sums_up_on_stderr(capsys):
    rc, out, err = run(capsys, "--example", "--slower-than", "4ms")
    assert rc == 0
    slow = [line for line in out.splitlines() if line.startswith("slow exit: ")]
    # The example's two exits above 4 ms: an IRQ of 12.5 ms and a DABT_LOW of 4.19 ms.
    assert [line.split()[9:11] for line in slow] == [["IRQ", "sub"], ["DABT_LOW", "sub"]]
    assert "12.5ms" in slow[0] and "pc 0x40000000" in slow[0] and slow[0].endswith("esr -")
    assert "4.19ms" in slow[1] and slow[1].endswith("esr EC 0x24 (ISS unknown)")
    assert out.index("slow exit: ") < out.index("TGID")  # streamed while reading, report after
    assert "kvmexit report: slow-exit log: 2 exits slower than 4ms" in err


def test_slower_than_json_lines(capsys):
    rc, out, _err = run(capsys, "--example", "--slower-than", "4000us", "--json")
    assert rc == 0
    docs = [json.loads(line) for line in out.splitlines()]
    slow = [d for d in docs if d.get("schema") == "kvmexit-slow/2"]
    assert [(d["reason"], d["vm"], d["vcpu"], d["esr_ec"], d["esr"]) for d in slow] == [
        ("IRQ", "e2e-vm", 0, None, None),
        ("DABT_LOW", "e2e-vm", 0, 0x24, None),
    ]
    assert all(d["duration_ns"] > 4_000_000 and d["pc"] >= 0x40000000 for d in slow)
    # the example has no sched_switch or kvm_userspace_exit lines: its split is unknown, not 0
    assert all(d[f] is None for d in slow for f in ("kernel_ns", "vmm_ns", "preempt_ns", "blocked_ns"))
    schema = json.loads((SCHEMA.parent / "slow-v2.json").read_text())
    for d in slow:
        jsonschema.validate(d, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(dict(slow[0], duration_ns=-1), schema)
    with pytest.raises(jsonschema.ValidationError):  # /2 lines carry the split, null where unknown
        jsonschema.validate({k: v for k, v in slow[0].items() if k != "vmm_ns"}, schema)
    # A line of the old version (what kvmexit wrote before the split) still validates against its own.
    old = {k: v for k, v in slow[0].items() if not k.endswith(("kernel_ns", "vmm_ns", "preempt_ns", "blocked_ns"))}
    old["schema"] = "kvmexit-slow/1"
    jsonschema.validate(old, json.loads((SCHEMA.parent / "slow-v1.json").read_text()))
    assert docs[-1]["schema"] == SCHEMA_VERSION  # the report follows


@pytest.mark.parametrize(
    "value, why",
    [
        ("5", "has no unit"),
        ("fast", "has no unit"),
        ("1.5.2ms", "not a duration"),
        ("--slower-than=-3ms", "out of range"),
    ],
)
def test_slower_than_refuses_what_is_not_a_duration(value, why):
    option = [value] if value.startswith("--") else ["--slower-than", value]
    proc = subprocess.run(
        [sys.executable, "-m", "kvmexit", "report", "--example", *option], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert why in proc.stderr and "Traceback" not in proc.stderr


def test_slower_than_with_csv_is_one_error_line():
    proc = subprocess.run(
        [sys.executable, "-m", "kvmexit", "report", "--example", "--csv", "--slower-than", "1ms"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "--slower-than does not combine with --csv" in proc.stderr
