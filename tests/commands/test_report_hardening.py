"""``kvmexit report`` on hostile or incomplete input (issue 10): one line on stderr, never a
traceback; unknown values shown as unknown."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from pathlib import Path

from kvmexit.cli import main

ROOT = Path(__file__).resolve().parent.parent.parent
TRACES = ROOT / "tests" / "data" / "traces"
ARM = TRACES / "arm64-upstream.synthetic.trace"
#: perf script without -F +pid: no tgid anywhere, and no names file.
NO_TGID = str(TRACES / "x86-vmx.synthetic.perf")


def run(capsys, *args):
    rc = main(["report", *args])
    out, err = capsys.readouterr()
    return rc, out, err


# -- 7: an unknown tgid is unknown, not process 0 ------------------------------------------------------


def test_unknown_tgid_is_null_in_json(capsys):
    rc, out, _ = run(capsys, "--json", NO_TGID)
    assert rc == 0
    rows = json.loads(out)["rows"]
    assert rows and {r["tgid"] for r in rows} == {None}


def test_unknown_tgid_is_a_dash_in_the_table(capsys):
    for by in ("thread", "vcpu", "vm"):
        rc, out, _ = run(capsys, "--by", by, NO_TGID)
        assert rc == 0
        body = out.splitlines()[1:]
        rows = [line.split() for line in body if line and not line.startswith("kvmexit:")]
        assert rows and {r[0] for r in rows} == {"-"}, (by, out)


def test_unknown_tgid_is_empty_in_csv(capsys):
    rc, out, _ = run(capsys, "--csv", NO_TGID)
    assert rc == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows and {r["tgid"] for r in rows} == {""}


# -- 1-5 at the command line: one line, a non-zero exit only when nothing is usable --------------------


def test_whitespace_file_is_one_error_line(capsys, tmp_path):
    p = tmp_path / "s.trace"
    p.write_bytes(b" " * 100000 + b"\n")
    rc, out, err = run(capsys, str(p))
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and "no KVM exit/entry events" in err and "1 ignored" in err


def test_bad_lines_are_counted_with_their_numbers(capsys, tmp_path):
    lines = ARM.read_bytes().splitlines(keepends=True)
    bad = lines[20].replace(b"512.0", b"512.0" + b"0" * 20)
    p = tmp_path / "t.trace"
    p.write_bytes(b"".join(lines[:20]) + bad + b"x" * (2 << 20) + b"\n" + b"".join(lines[20:]))
    rc, out, err = run(capsys, str(p))
    assert rc == 0 and "TGID" in out
    assert err == "kvmexit report: 2 malformed lines skipped (line 21, 22); 1 of them longer than 1024 KiB\n"


# -- 20: CSV's time column is the trace's time, not the time the report ran ----------------------------


def csv_times(capsys, *args):
    rc, out, _ = run(capsys, "--csv", *args)
    assert rc == 0
    return {r["time"] for r in csv.DictReader(io.StringIO(out))}


def test_csv_time_is_when_the_recording_ended(capsys, tmp_path):
    p = tmp_path / "vm.trace"
    p.write_bytes(ARM.read_bytes())
    ended = 1700000000.25  # what kvmexit record writes into the names file
    (tmp_path / "vm.trace.names.json").write_text(json.dumps({"started": ended - 30, "ended": ended}))
    os.utime(p, (1600000000, 1600000000))
    want = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(ended))
    assert csv_times(capsys, str(p)) == {want}


def test_csv_time_without_names_file_is_the_file_time(capsys, tmp_path):
    p = tmp_path / "vm.trace"
    p.write_bytes(ARM.read_bytes())
    os.utime(p, (1600000000, 1600000000))
    assert csv_times(capsys, str(p)) == {time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(1600000000))}


def test_csv_time_on_stdin_is_unknown(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(ARM.read_bytes())))
    assert csv_times(capsys, "-") == {""}
