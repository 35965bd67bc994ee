"""``kvmexit diff A B``: traces and saved reports, matched rows, one-line errors."""

from __future__ import annotations

import json
import re
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
    assert lines[0].startswith("A: %s (trace, arm64, 6.1.0-56-arm64, 0.146s, 843 exits)" % EXAMPLE_TRACE)
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


AB = {n: str(TRACES / ("arm64-6.1-ab-%s.trace.gz" % n)) for n in ("a", "b", "a2")}
#: Trap counts set by the guest code (tests/data/traces/README.md): A -> B.
GUEST_CODE = {
    ("e2e-vm", 0, "DABT_LOW"): (201, 21),
    ("e2e-vm", 0, "HVC64"): (150, 600),
    ("e2e-vm", 0, "SYS64"): (100, 100),
    ("e2e-vm", 0, "IABT_LOW"): (1, 1),
    ("e2e-vm", 1, "DABT_LOW"): (81, 81),
    ("e2e-vm", 1, "HVC64"): (60, 60),
    ("e2e-vm", 1, "SYS64"): (170, 170),
    ("e2e-vm", 1, "IABT_LOW"): (1, 1),
}


def json_rows(doc):
    """Per (vm, vcpu, reason): count and total_ns summed over threads, from a saved report."""
    out = {}
    for r in doc["rows"]:
        key = (r["vm"], r["vcpu"], r["reason"])
        count, total = out.get(key, (0, 0))
        out[key] = (count + r["count"], total + r["total_ns"])
    return out


def sign(x):
    return (x > 0) - (x < 0)


@pytest.mark.parametrize("a", ["a", "example"])
def test_two_real_captures_show_the_changed_reasons_as_the_json_reports_do(capsys, tmp_path, a):
    """Acceptance: a diff of two real arm64 captures (A: the shipped example, or A of the same boot
    as B), checked row by row against the two runs' own `kvmexit report --json`."""
    a_args = ["--example"] if a == "example" else [AB["a"]]
    doc_a = json.loads(run(capsys, "report", "--json", *a_args)[1])
    doc_b = json.loads(run(capsys, "report", "--json", AB["b"])[1])
    saved_a, saved_b = tmp_path / "a.json", tmp_path / "b.json"
    saved_a.write_text(json.dumps(doc_a))
    saved_b.write_text(json.dumps(doc_b))
    trace_a = EXAMPLE_TRACE if a == "example" else AB["a"]
    rc, out, err = run(capsys, "diff", "--json", trace_a, AB["b"])
    assert rc == 0, err
    diff = json.loads(out)
    assert json.loads(run(capsys, "diff", "--json", str(saved_a), str(saved_b))[1])["rows"] == diff["rows"]
    ra, rb = json_rows(doc_a), json_rows(doc_b)
    sa, sb = doc_a["seconds"], doc_b["seconds"]
    assert {(r["vm"], r["vcpu"], r["reason"]) for r in diff["rows"]} == set(ra) | set(rb)
    for r in diff["rows"]:
        key = (r["vm"], r["vcpu"], r["reason"])
        (na, ta), (nb, tb) = ra.get(key, (0, 0)), rb.get(key, (0, 0))
        assert r["exits"]["a"] == na and r["exits"]["b"] == nb
        assert r["exits_per_s"]["a"] == pytest.approx(na / sa) and r["exits_per_s"]["b"] == pytest.approx(nb / sb)
        assert r["time_per_s_ns"]["a"] == pytest.approx(ta / sa) and r["time_per_s_ns"]["b"] == pytest.approx(tb / sb)
        assert sign(r["exits_per_s"]["abs"]) == sign(nb / sb - na / sa)
        if na:
            assert r["exits_per_s"]["rel"] == pytest.approx((nb / sb) / (na / sa) - 1)
    changes = [abs(r["time_per_s_ns"]["abs"]) for r in diff["rows"]]
    assert changes == sorted(changes, reverse=True)
    # The changed guest code, with its sign and size: 201 -> 21 MMIO and 150 -> 600 HVC exits on vCPU 0.
    rows = {(r["vm"], r["vcpu"], r["reason"]): r for r in diff["rows"]}
    mmio, hvc = rows["e2e-vm", 0, "DABT_LOW"], rows["e2e-vm", 0, "HVC64"]
    assert (mmio["exits"]["a"], mmio["exits"]["b"]) == (201, 21)
    assert (hvc["exits"]["a"], hvc["exits"]["b"]) == (150, 600)
    assert mmio["exits_per_s"]["abs"] < 0 and mmio["rate_changed"]


def test_a_fixed_workload_compared_by_counts_shows_exactly_the_changed_guest_code(capsys):
    rc, out, _ = run(capsys, "diff", "--json", "--counts", AB["a"], AB["b"])
    assert rc == 0
    diff = json.loads(out)
    assert diff["per_second"] is False
    rows = {(r["vm"], r["vcpu"], r["reason"]): r for r in diff["rows"]}
    for key, (na, nb) in GUEST_CODE.items():
        r = rows[key]
        assert (r["exits"]["a"], r["exits"]["b"]) == (na, nb)
        assert r["rate_changed"] == (na != nb), key  # beyond noise exactly where the guest code changed
        assert r["verdict"].startswith("count") == (na != nb)
    assert rows["e2e-vm", 0, "DABT_LOW"]["exits"]["rel"] == pytest.approx(21 / 201 - 1)
    assert rows["e2e-vm", 0, "HVC64"]["exits"]["rel"] == pytest.approx(3.0)
    rc, out, _ = run(capsys, "diff", "--counts", AB["a"], AB["b"])
    line = next(x for x in out.splitlines() if x.split()[:3] == ["e2e-vm", "0", "HVC64"])
    assert "150 -> 600 (+300%)" in line and line.endswith("count+latency")


def test_the_same_guest_code_twice_changes_no_count(capsys):
    """A and A2 ran the same code in the same boot: no trap count moves; only IRQs (host
    interrupts) may, and exit times with the emulator's speed on a loaded machine."""
    rc, out, _ = run(capsys, "diff", "--json", "--counts", AB["a"], AB["a2"])
    assert rc == 0
    rows = {(r["vm"], r["vcpu"], r["reason"]): r for r in json.loads(out)["rows"]}
    for key, (na, _) in GUEST_CODE.items():
        assert rows[key]["exits"]["a"] == rows[key]["exits"]["b"] == na
        assert not rows[key]["rate_changed"]


def test_the_diff_page_embeds_the_json_and_renders(capsys, tmp_path):
    pytest.importorskip("matplotlib", reason="--html needs matplotlib")  # CI: test_html fails without it
    from browser import render
    from kvmexit.views.html import DIFF_TITLES

    page = tmp_path / "d.html"
    rc, out, err = run(capsys, "diff", "--json", "--counts", "--html", str(page), AB["a"], AB["b"])
    assert rc == 0, err
    text = page.read_text()
    m = re.search(r'<script type="application/json" id="kvmexit-report">(.*?)</script>', text, re.S)
    assert m is not None and json.loads(m.group(1)) == json.loads(out)
    dom, console = render(page, "--dump-dom")
    assert console == []
    for title in DIFF_TITLES.values():
        assert title in dom
    assert "e2e-vm vCPU 0 HVC64 [count+latency]" in dom and ">A: 150<" in text and ">B: 600<" in text
    rc, _, err = run(capsys, "diff", "--html", str(page), AB["a"], AB["b"])
    assert rc == 1 and "already exists" in err
