"""``kvmexit -i SECS --csv --log FILE``: a log kept for days (header once, flushed lines,
SIGHUP reopens for logrotate), as a unit and as the real command with exits driven through its
attached programs."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fake_kvm import FakeVmm, prog_fds_of, write_tracefs
from kvmexit.commands.logfile import LogFile
from kvmexit.errors import KvmexitError

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
EC_HVC64, EC_SYS64 = 0x16, 0x18


def test_each_line_is_on_disk_as_soon_as_it_is_written(tmp_path):
    log = LogFile(str(tmp_path / "a.csv"))
    assert log.at_start
    log.write("h\nline 1\n")
    assert (tmp_path / "a.csv").read_text() == "h\nline 1\n"  # before any close
    assert not log.at_start
    log.close()


def test_reopen_after_rotation_starts_a_new_file(tmp_path):
    path = tmp_path / "a.csv"
    log = LogFile(str(path))
    log.write("old\n")
    path.rename(tmp_path / "a.csv.1")
    log.write("still old\n")  # not reopened yet: goes to the moved file
    log.request_reopen()
    assert log.at_start
    log.write("new\n")
    log.close()
    assert (tmp_path / "a.csv.1").read_text() == "old\nstill old\n"
    assert path.read_text() == "new\n"


def test_appending_to_an_existing_log_needs_no_header(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("time,count\n1,2\n")
    log = LogFile(str(path))
    assert not log.at_start
    log.write("3,4\n")
    log.close()
    assert path.read_text() == "time,count\n1,2\n3,4\n"


def test_a_symlink_is_not_followed(tmp_path):
    target = tmp_path / "target"
    target.write_text("precious\n")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(KvmexitError, match="cannot open log"):
        LogFile(str(tmp_path / "link"))
    assert target.read_text() == "precious\n"


def test_bad_log_path_is_one_line_before_anything_is_loaded(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "kvmexit", "-i", "1", "--csv", "--log", str(tmp_path / "no" / "such" / "dir.csv")],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=60,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    bad = tmp_path / "no" / "such" / "dir.csv"
    assert (
        proc.stderr.strip()
        == "kvmexit: error: cannot open log %s: No such file or directory (hint: check --log FILE)" % bad
    )


def rows_of(path: Path):
    text = path.read_text()
    headers = [ln for ln in text.splitlines() if ln.startswith("time,")]
    return headers, list(csv.DictReader(io.StringIO(text)))


@pytest.mark.bpf
@pytest.mark.usefixtures("bpf_env")
def test_log_mode_with_logrotate(tmp_path):
    log = tmp_path / "kvmexit.csv"
    tracefs = write_tracefs(tmp_path / "tracefs")
    cmd = [sys.executable, "-m", "kvmexit", "--tracefs", str(tracefs), "-i", "0.3", "--csv", "--log", str(log)]

    # A first run starts the log with its header.
    first = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=ENV)
    assert first.stderr is not None and first.stderr.readline().startswith("kvmexit: tracing")
    FakeVmm(prog_fds_of(first.pid), [(0, EC_HVC64, 5, 0, 0)], "web01").close()
    time.sleep(1.0)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)
    assert first.returncode == 0

    # A restart appends: no second header.
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert proc.stderr is not None and proc.stderr.readline().startswith("kvmexit: tracing")
        fds = prog_fds_of(proc.pid)
        FakeVmm(fds, [(0, EC_SYS64, 7, 0, 0)], "web01").close()
        deadline = time.monotonic() + 20
        while sum(int(r["count"]) for r in rows_of(log)[1]) < 12 and time.monotonic() < deadline:
            time.sleep(0.1)  # each line is flushed: the log can be read while kvmexit runs
        headers, rows = rows_of(log)
        assert len(headers) == 1
        assert sum(int(r["count"]) for r in rows) == 12

        # logrotate: move the file, then SIGHUP; the next report starts a new file with its header.
        log.rename(tmp_path / "kvmexit.csv.1")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while not log.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        FakeVmm(fds, [(1, EC_HVC64, 11, 0, 0)], "web01").close()
        while sum(int(r["count"]) for r in rows_of(log)[1]) < 11 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None  # SIGHUP did not stop it
    finally:
        for fd in locals().get("fds", {}).values():
            os.close(fd)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    old_headers, old_rows = rows_of(tmp_path / "kvmexit.csv.1")
    new_headers, new_rows = rows_of(log)
    assert len(old_headers) == 1 and len(new_headers) == 1
    assert sum(int(r["count"]) for r in old_rows) == 12
    assert sum(int(r["count"]) for r in new_rows) == 11
    assert {r["reason"] for r in new_rows} == {"HVC64"} and {r["vcpu"] for r in new_rows} == {"1"}
