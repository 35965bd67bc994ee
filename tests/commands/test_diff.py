"""``kvmexit diff A B``: traces and saved reports, matched rows, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kvmexit.cli import main
from kvmexit.commands.report import EXAMPLE_TRACE

ROOT = Path(__file__).resolve().parent.parent.parent
TRACES = ROOT / "tests" / "data" / "traces"
DIFF_SCHEMA = ROOT / "src" / "kvmexit" / "schema" / "diff-v1.json"
jsonschema = pytest.importorskip("jsonschema")


def run(capsys, *args):
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def save(capsys, tmp_path, name, *args):
    rc, out, _ = run(capsys, "report", "--json", *args)
    assert rc == 0
    path = tmp_path / name
    path.write_text(out)
    return str(path)


def test_a_trace_against_its_own_saved_report_changes_nothing(capsys, tmp_path):
    saved = save(capsys, tmp_path, "a.json", "--example")
    rc, out, err = run(capsys, "diff", "--json", EXAMPLE_TRACE, saved)
    assert rc == 0, err
    doc = json.loads(out)
    jsonschema.validate(doc, json.loads(DIFF_SCHEMA.read_text()))
    assert len(doc["rows"]) == 12 and {r["status"] for r in doc["rows"]} == {"both"}
    assert all(r["exits_per_s"]["rel"] == 0 and not r["rate_changed"] for r in doc["rows"])
    assert {r["verdict"] for r in doc["rows"]} == {"within noise"}
    # matched on VM name and vCPU index: the example's names file is found next to the .gz
    assert {(r["vm"], r["vcpu"]) for r in doc["rows"]} == {("e2e-vm", 0), ("e2e-vm", 1)}
    assert doc["a"]["exits"] == doc["b"]["exits"] == 843


def test_text_table_and_method_line(capsys, tmp_path):
    saved = save(capsys, tmp_path, "a.json", "--example")
    rc, out, _ = run(capsys, "diff", "--top", "2", EXAMPLE_TRACE, saved)
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].startswith("A: %s (trace, arm64, 0.146s, 843 exits)" % EXAMPLE_TRACE)
    assert lines[3].split()[:4] == ["VM", "VCPU", "REASON", "EXITS/s"]
    assert lines[4].split()[:3] == ["e2e-vm", "0", "DABT_LOW"]
    assert lines[6].startswith("all")
    assert "(10 more rows; --top)" in out
    assert "Mann-Whitney" in out and "Poisson" in out


def test_grouped_reports_compare_at_their_grouping_or_coarser(capsys, tmp_path):
    by_vcpu = save(capsys, tmp_path, "v.json", "--example", "--by", "vcpu")
    rc, out, err = run(capsys, "diff", by_vcpu, EXAMPLE_TRACE)
    assert rc == 1 and out == ""
    assert err.strip().endswith("(hint: diff --by vcpu or --by vm, or save the report grouped by thread (the default))")
    assert len(err.splitlines()) == 1
    rc, out, _ = run(capsys, "diff", "--json", "--by", "vm", by_vcpu, EXAMPLE_TRACE)
    assert rc == 0
    assert [(r["vm"], r["exits"]["a"], r["exits"]["b"]) for r in json.loads(out)["rows"]] == [("e2e-vm", 843, 843)]


def test_different_architectures_do_not_compare(capsys):
    rc, out, err = run(capsys, "diff", EXAMPLE_TRACE, str(TRACES / "x86-vmx.synthetic.trace"))
    assert rc == 1 and out == "" and "different architectures do not compare" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    "content,message",
    [
        (b'{"schema": "kvmexit/7"}', "report schema 'kvmexit/7' is not one this kvmexit reads"),
        (b'{"schema": "kvmexit/1", "rows": []}', "not a valid kvmexit/1 report"),
        (b"{not json", "not JSON"),
        (b"hello\n", "no KVM exit/entry events"),
    ],
)
def test_bad_inputs_are_one_line(capsys, tmp_path, content, message):
    bad = tmp_path / "bad"
    bad.write_bytes(content)
    rc, out, err = run(capsys, "diff", str(bad), EXAMPLE_TRACE)
    assert rc == 1 and out == ""
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_stdin_and_bad_alpha_are_refused(capsys):
    rc, _, err = run(capsys, "diff", "-", EXAMPLE_TRACE)
    assert rc == 1 and "reads files, not standard input" in err
    with pytest.raises(SystemExit):
        main(["diff", "--alpha", "1.5", EXAMPLE_TRACE, EXAMPLE_TRACE])
