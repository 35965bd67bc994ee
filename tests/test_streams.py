"""Closed and failing standard streams: one error line and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
KVMEXIT = "%s -m kvmexit" % sys.executable


def shell(command: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``command`` in sh, with KVMEXIT standing for the command, so redirections like ``>&-``
    close the streams the way a user's shell does."""
    return subprocess.run(
        ["sh", "-c", command.replace("KVMEXIT", KVMEXIT)], capture_output=True, text=True, env=ENV, timeout=timeout
    )


def last_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def test_report_with_stdout_closed():
    # stderr is kept on a pipe: the note goes there, then the error.
    line = last_error_line(shell("KVMEXIT report --example >&-"))
    assert line.startswith("kvmexit report: error: standard output is closed")


def test_live_with_stdout_closed_refuses_before_tracing():
    line = last_error_line(shell("KVMEXIT 2 >&-"))
    assert line.startswith("kvmexit: error: standard output is closed: the report would go nowhere")


def test_report_of_stdin_with_stdin_closed():
    line = last_error_line(shell("KVMEXIT report - <&-"))
    assert line.startswith("kvmexit report: error: standard input is closed")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
@pytest.mark.parametrize("fmt", [(), ("--json",), ("--csv",), ("--hist",)])
def test_report_to_a_full_device(fmt):
    line = last_error_line(shell("KVMEXIT report --example %s > /dev/full" % " ".join(fmt)))
    assert line == "kvmexit report: error: cannot write to standard output: No space left on device"


def test_stderr_closed_or_full_still_reports():
    for redirect in ("2>&-", "2>/dev/full"):
        proc = shell("KVMEXIT report --example --top 1 %s" % redirect)
        assert proc.returncode == 0
        assert proc.stdout.splitlines()[0].split()[:2] == ["TGID", "TID"]


def test_a_reader_that_stops_early_is_not_an_error():
    # `true` exits before kvmexit writes: every write meets a closed pipe (EPIPE).
    proc = shell("(KVMEXIT report --example --hist; echo rc=$? >&2) | true")
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "rc=0"


@pytest.mark.usefixtures("bpf_env")
def test_record_to_closed_stdout():
    line = last_error_line(shell("KVMEXIT record -o - 1 >&-"))
    assert line.startswith("kvmexit record: error: standard output is closed")


@pytest.mark.usefixtures("bpf_env")
def test_live_to_a_full_device():
    proc = shell("KVMEXIT 0.3 > /dev/full")
    line = last_error_line(proc)
    assert line == "kvmexit: error: cannot write to standard output: No space left on device"
    assert proc.stderr.startswith("kvmexit: tracing")  # it traced, then failed to write the report
