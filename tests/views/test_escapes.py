"""Names chosen by whoever runs a guest never reach a terminal raw (issue 10, item 6).

A VM name from QEMU's ``-name`` (read from /proc by names.py), from a names file, or a thread name
can hold terminal escape sequences. The text views escape them; JSON keeps the exact string.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from kvmexit.cli import main
from kvmexit.model import ExitKey, ExitStats, Snapshot, ThreadInfo, build_report
from kvmexit.names import NameResolver
from kvmexit.reasons import label
from kvmexit.views import format_csv, format_hist, format_table, printable, report_document

EVIL = "\x1b]0;owned\x07\x1b[2J\x9b31m\u202eevil"
TRACES = Path(__file__).resolve().parent.parent / "data" / "traces"


def raw_control(text: str) -> bool:
    return any(not c.isprintable() and c != "\n" for c in text)


def test_printable_escapes_only_what_is_not_printable():
    assert printable("web-01 CPU 0/KVM é") == "web-01 CPU 0/KVM é"
    assert printable(EVIL) == "\\x1b]0;owned\\x07\\x1b[2J\\x9b31m\\u202eevil"


def snap_with(vm: str, comm: str) -> Snapshot:
    st = ExitStats(pairs=1, total_ns=100, min_ns=100, max_ns=100, hist=(0,) * 7 + (1,) + (0,) * 32)
    return Snapshot("arm64", {ExitKey(4242, 4243, 2, 0x16): st}, threads={4243: ThreadInfo(comm, vm, 0)})


def test_vm_name_from_qemu_command_line_is_escaped_in_the_table(tmp_path):
    proc = tmp_path / "proc"
    (proc / "4242" / "task" / "4243").mkdir(parents=True)
    argv = [b"qemu-system-aarch64", b"-name", b"guest=" + EVIL.encode() + b",debug-threads=on"]
    (proc / "4242" / "cmdline").write_bytes(b"\0".join(argv) + b"\0")
    (proc / "4242" / "task" / "4243" / "comm").write_bytes(b"CPU 0/KVM\x1b[8m\n")
    info = NameResolver(procfs=str(proc), libvirt_run=str(tmp_path / "none")).thread(4242, 4243)
    assert info.vm == EVIL  # the source keeps the exact name
    report = build_report(snap_with(info.vm, info.comm), label)
    for by in ("thread", "vm"):
        text = format_table(build_report(snap_with(info.vm, info.comm), label, by))
        assert not raw_control(text) and "\\x1b]0;owned" in text
    assert not raw_control(format_hist(report.rows[0]))
    doc = report_document(report, {"kind": "test"})
    assert doc["rows"][0]["vm"] == EVIL and doc["rows"][0]["comm"] == "CPU 0/KVM\x1b[8m"
    assert EVIL in json.loads(json.dumps(doc))["rows"][0]["vm"]


def test_csv_escapes_for_a_terminal_only():
    report = build_report(snap_with(EVIL, "x\x1by"), label)
    exact = next(iter(csv.DictReader(io.StringIO(format_csv(report)))))
    assert exact["vm"] == EVIL and exact["comm"] == "x\x1by"
    shown = format_csv(report, escape=True)
    assert not raw_control(shown) and "\\x1b" in shown


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_vm_name_from_a_names_file(tmp_path, capsys, fmt):
    p = tmp_path / "t.trace"
    p.write_bytes((TRACES / "arm64-upstream.synthetic.trace").read_bytes())
    (tmp_path / "t.trace.names.json").write_text(json.dumps({"vms": {"1200": EVIL}}))
    assert main(["report", str(p)] + (["--json"] if fmt == "json" else [])) == 0
    out = capsys.readouterr().out
    if fmt == "json":
        assert {r["vm"] for r in json.loads(out)["rows"]} >= {EVIL}
    else:
        assert not raw_control(out) and "\\u202eevil" in out
